//! The guest lab: provision kernels, build static test binaries, pack an initramfs,
//! boot QEMU, stream and judge the results.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Test names under a module called `mock` drive the kernel's mock IOMMU
/// (CONFIG_IOMMUFD_TEST). On 6.12 the mock does not attach while an emulated VT-d is
/// present, so there they run in a second boot without one.
const MOCK_MARK: &str = "mock::";
/// Test names under a module called `noiommu` need a device without an IOMMU in
/// VFIO's unsafe no-IOMMU mode (IOMMUFD_NOIOMMU, 7.x): on 7.x they run in a boot
/// without the emulated VT-d, with `vfio.enable_unsafe_noiommu_mode=1` and one edu
/// device. Elsewhere they run with the other tests (and see the command missing).
const NOIOMMU_MARK: &str = "noiommu::";
/// Test names under a module called `kvm` create KVM VMs in the guest (KVM on TCG's
/// emulated SVM); they run in a boot of their own, so that a guest kernel they
/// upset takes no other test with it.
const KVM_MARK: &str = "kvm::";
/// Test names under a module called `vtd` test VT-d itself: x86 boots only.
const VTD_MARK: &str = "vtd::";
/// Test names under a module called `smmuv3` test the emulated SMMUv3: arm64 only.
const SMMUV3_MARK: &str = "smmuv3::";
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Command-line options of `vmtest` and `test`.
#[derive(Debug, Default)]
pub struct Options {
    kernel: Option<String>,
    /// `--arch arm64`: the arm64 lab (emulated SMMUv3) instead of x86.
    arm64: bool,
    /// `demo --nested`: the demo attaches through nested translation.
    nested: bool,
    kernel_selftests: bool,
    shell: bool,
    timeout: Option<u64>,
    test_timeout: Option<u64>,
    verbose: bool,
    filters: Vec<String>,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut o = Options::default();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--kernel" => o.kernel = Some(it.next().ok_or("--kernel needs a value")?.clone()),
                "--kernel-selftests" => o.kernel_selftests = true,
                "--nested" => o.nested = true,
                "--arch" => match it.next().map(String::as_str) {
                    Some("arm64") => o.arm64 = true,
                    Some("x86_64") => o.arm64 = false,
                    other => return Err(format!("--arch wants arm64 or x86_64, not {other:?}")),
                },
                "--shell" => o.shell = true,
                "--verbose" => o.verbose = true,
                "--timeout" => {
                    let v = it.next().ok_or("--timeout needs a value")?;
                    o.timeout = Some(v.parse().map_err(|_| format!("bad --timeout {v}"))?);
                }
                "--test-timeout" => {
                    let v = it.next().ok_or("--test-timeout needs a value")?;
                    o.test_timeout =
                        Some(v.parse().map_err(|_| format!("bad --test-timeout {v}"))?);
                }
                f if f.starts_with("--") => return Err(format!("unknown option {f}")),
                f => o.filters.push(f.to_string()),
            }
        }
        Ok(o)
    }
}

/// Counts in cargo test's terms, summed over binaries and boots.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add(&mut self, o: Tally) {
        self.passed += o.passed;
        self.failed += o.failed;
        self.ignored += o.ignored;
    }
    fn closing_line(&self, started: Instant) -> String {
        format!(
            "test result: {}. {} passed; {} failed; {} ignored; 0 measured; 0 filtered out; finished in {:.2}s",
            if self.failed == 0 { "ok" } else { "FAILED" },
            self.passed,
            self.failed,
            self.ignored,
            started.elapsed().as_secs_f64()
        )
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn lab_dir() -> PathBuf {
    repo_root().join("xtask/lab")
}

fn run_checked(cmd: &mut Command, what: &str) -> Result<(), String> {
    let st = cmd.status().map_err(|e| format!("{what}: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({st})"))
    }
}

/// Installs QEMU, busybox-static and cpio from Debian's packages if missing.
fn ensure_host_tools() -> Result<(), String> {
    let mut missing = Vec::new();
    if which("qemu-system-x86_64").is_none() {
        missing.push("qemu-system-x86");
    }
    if !Path::new("/bin/busybox").exists() || !is_static("/bin/busybox") {
        missing.push("busybox-static");
    }
    if which("cpio").is_none() {
        missing.push("cpio");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run_checked(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    run_checked(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.exists())
}

fn is_static(path: &str) -> bool {
    Command::new("file")
        .arg(path)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("statically linked"))
        .unwrap_or(true)
}

/// A kernel to boot: where its artifacts are, which series it belongs to, and the
/// machine it boots on.
#[derive(Debug, Clone)]
struct Kernel {
    series: String,
    dir: PathBuf,
    machine: Machine,
}

/// The emulated machine: x86 (q35, VT-d, the system's QEMU) or arm64 (virt with
/// its SMMUv3, QEMU 10 unpacked into the lab cache by `arm64.sh`).
#[derive(Debug, Clone)]
enum Machine {
    X86,
    Arm64 { qemu: PathBuf, busybox: PathBuf },
}

/// The Rust target of the arm64 guest.
const ARM64_TARGET: &str = "aarch64-unknown-linux-gnu";

/// Provisions the arm64 lab (`arm64.sh`): its kernel, QEMU and busybox.
fn provision_arm64() -> Result<Kernel, String> {
    eprintln!("xtask: provisioning the arm64 lab (cached after the first build)");
    run_checked(
        Command::new("rustup").args(["target", "add", ARM64_TARGET]),
        "rustup target add",
    )?;
    let out = Command::new(lab_dir().join("arm64.sh"))
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("arm64.sh: {e}"))?;
    if !out.status.success() {
        return Err(format!("arm64.sh failed ({})", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let get = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| PathBuf::from(v.trim()))
            .ok_or(format!("arm64.sh did not say where its {key} is"))
    };
    Ok(Kernel {
        series: "7-arm64".into(),
        dir: get("kernel")?,
        machine: Machine::Arm64 {
            qemu: get("qemu")?,
            busybox: get("busybox")?,
        },
    })
}

fn provision_kernel(series: &str) -> Result<Kernel, String> {
    if Path::new(series).is_file() {
        let dir = Path::new(series)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        return Ok(Kernel {
            series: "custom".into(),
            dir,
            machine: Machine::X86,
        });
    }
    eprintln!("xtask: provisioning the {series} kernel (cached after the first build)");
    let out = Command::new(lab_dir().join("kernel.sh"))
        .arg(series)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("kernel.sh {series}: {e}"))?;
    if !out.status.success() {
        return Err(format!("kernel.sh {series} failed ({})", out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .ok_or("kernel.sh printed nothing")?
        .trim();
    Ok(Kernel {
        series: series.into(),
        dir: PathBuf::from(dir),
        machine: Machine::X86,
    })
}

/// A test executable and the lab tests in it selected for this run.
#[derive(Debug)]
struct TestBin {
    path: PathBuf,
    name: String,
    tests: Vec<String>,
}

/// A built test executable: its lab name ("crate" for unit tests, "crate-target"
/// otherwise; two can share one), what identifies it across targets, and its path.
struct TestExe {
    name: String,
    key: String,
    path: PathBuf,
}

/// Builds every test target of the workspace statically for `target`.
fn build_test_executables(target: &str) -> Result<Vec<TestExe>, String> {
    eprintln!("xtask: building static test binaries for the guest ({target})");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root())
        .args([
            "test",
            "--workspace",
            "--all-features",
            "--no-run",
            "--message-format=json-render-diagnostics",
        ])
        .args(["--target", target, "--exclude", "xtask"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .stderr(Stdio::inherit());
    if target == ARM64_TARGET {
        cmd.env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        );
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cargo test --no-run: {e}"))?;
    if !out.status.success() {
        return Err("building the guest test binaries failed".into());
    }
    let mut exes = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = v["executable"].as_str() else {
            continue;
        };
        let target = v["target"]["name"].as_str().unwrap_or("test");
        let package = v["package_id"].as_str().unwrap_or("");
        // "path+file:///.../crates/iommufd-uapi#0.1.0" -> "iommufd-uapi"
        let pkg = package
            .rsplit('/')
            .next()
            .unwrap_or("")
            .split('#')
            .next()
            .unwrap_or("");
        let kind = v["target"]["kind"][0].as_str().unwrap_or("");
        let name = if kind == "lib" {
            pkg.to_string()
        } else {
            format!("{pkg}-{target}")
        };
        exes.push(TestExe {
            name,
            key: format!("{pkg}/{kind}/{target}"),
            path: PathBuf::from(exe),
        });
    }
    Ok(exes)
}

/// Builds the workspace's tests statically for the guest and lists the lab tests
/// (the `#[ignore]`d ones) each holds. The list comes from the host's build (an
/// arm64 executable cannot run here to list itself; the tests are the same).
fn build_guest_tests(filters: &[String], arm64: bool) -> Result<Vec<TestBin>, String> {
    let mut bins = Vec::new();
    for TestExe {
        name,
        key,
        path: exe,
    } in build_test_executables(TARGET)?
    {
        let mut list = Command::new(&exe);
        list.args(["--list", "--ignored", "--format", "terse"])
            .args(filters);
        let listed = list
            .output()
            .map_err(|e| format!("{} --list: {e}", exe.display()))?;
        let tests: Vec<String> = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter_map(|l| l.strip_suffix(": test"))
            .map(str::to_string)
            .collect();
        if !tests.is_empty() {
            bins.push((
                key,
                TestBin {
                    path: exe,
                    name,
                    tests,
                },
            ));
        }
    }
    if arm64 {
        let cross: BTreeMap<String, PathBuf> = build_test_executables(ARM64_TARGET)?
            .into_iter()
            .map(|e| (e.key, e.path))
            .collect();
        for (key, b) in &mut bins {
            b.path = cross
                .get(key.as_str())
                .ok_or(format!("no {ARM64_TARGET} build of {}", b.name))?
                .clone();
        }
    }
    let bins = bins.into_iter().map(|(_, b)| b).collect();
    Ok(bins)
}

/// One program run in the guest: a name, an executable on the host, the guest
/// command line after it, and the libtest test it must report (for test binaries,
/// which run one test per process).
#[derive(Debug, Clone)]
struct Program {
    name: String,
    exe: PathBuf,
    args: String,
    test: Option<String>,
}

/// One boot of the guest: which kernel, with or without the emulated VT-d and its
/// devices, and what to run.
#[derive(Debug)]
struct Boot {
    label: String,
    kernel: Kernel,
    vtd: bool,
    /// No IOMMU, VFIO's unsafe no-IOMMU mode on, one edu device.
    noiommu: bool,
    programs: Vec<Program>,
}

/// The time limit of one lab test, unless `--test-timeout` says otherwise: long
/// enough for the slowest port of the kernel's selftests under TCG, short enough that
/// a hang leaves time for the rest of the boot.
const TEST_TIMEOUT: u64 = 300;

/// The hard time limit of one boot, unless `--timeout` says otherwise.
const BOOT_TIMEOUT: u64 = 1800;

/// Exit codes of busybox `timeout -s KILL` when the limit is reached.
const TIMED_OUT: [&str; 2] = ["124", "137"];

fn plan_boots(kernels: &[Kernel], bins: &[TestBin], selftests: bool) -> Vec<Boot> {
    let mut boots = Vec::new();
    for k in kernels {
        if selftests {
            let mut programs = Vec::new();
            for t in ["iommufd", "iommufd_fail_nth"] {
                programs.push(Program {
                    name: format!("selftest-{t}"),
                    exe: k.dir.join("selftests").join(t),
                    args: String::new(),
                    test: None,
                });
            }
            boots.push(Boot {
                label: format!("{}-selftests", k.series),
                kernel: k.clone(),
                vtd: true,
                noiommu: false,
                programs,
            });
            continue;
        }
        if let Machine::Arm64 { .. } = k.machine {
            // One boot: the emulated SMMUv3 and the mock IOMMU side by side. No KVM
            // tests (the arm64 guest has no KVM), no no-IOMMU boot, no VT-d tests.
            let programs = bins
                .iter()
                .flat_map(|b| {
                    b.tests
                        .iter()
                        .filter(|t| {
                            !t.starts_with(KVM_MARK)
                                && !t.contains(NOIOMMU_MARK)
                                && !t.starts_with(VTD_MARK)
                        })
                        .map(move |t| Program {
                            name: format!("{}::{t}", b.name),
                            exe: b.path.clone(),
                            args: format!("--ignored --test-threads=1 --exact {t}"),
                            test: Some(t.clone()),
                        })
                })
                .collect();
            boots.push(Boot {
                label: k.series.clone(),
                kernel: k.clone(),
                vtd: false,
                noiommu: false,
                programs,
            });
            continue;
        }
        let split_mock = k.series == "6.12";
        let split_noiommu = k.series != "6.12";
        let mut main = Vec::new();
        let mut mock = Vec::new();
        let mut noiommu = Vec::new();
        let mut kvm = Vec::new();
        for b in bins {
            let (k, rest): (Vec<_>, Vec<_>) = b
                .tests
                .iter()
                .filter(|t| !t.starts_with(SMMUV3_MARK))
                .partition(|t| t.starts_with(KVM_MARK));
            let (n, rest): (Vec<_>, Vec<_>) = rest
                .into_iter()
                .partition(|t| split_noiommu && t.contains(NOIOMMU_MARK));
            let (m, rest): (Vec<_>, Vec<_>) = rest
                .into_iter()
                .partition(|t| split_mock && t.contains(MOCK_MARK));
            // One process per test, under a time limit: a hang fails that test, and
            // the rest of the boot still runs.
            for (list, tests) in [
                (&mut main, rest),
                (&mut mock, m),
                (&mut noiommu, n),
                (&mut kvm, k),
            ] {
                for t in tests {
                    list.push(Program {
                        name: format!("{}::{t}", b.name),
                        exe: b.path.clone(),
                        args: format!("--ignored --test-threads=1 --exact {t}"),
                        test: Some(t.clone()),
                    });
                }
            }
        }
        if !main.is_empty() {
            boots.push(Boot {
                label: k.series.clone(),
                kernel: k.clone(),
                vtd: true,
                noiommu: false,
                programs: main,
            });
        }
        if !mock.is_empty() {
            boots.push(Boot {
                label: format!("{}-mock", k.series),
                kernel: k.clone(),
                vtd: false,
                noiommu: false,
                programs: mock,
            });
        }
        if !noiommu.is_empty() {
            boots.push(Boot {
                label: format!("{}-noiommu", k.series),
                kernel: k.clone(),
                vtd: false,
                noiommu: true,
                programs: noiommu,
            });
        }
        if !kvm.is_empty() {
            boots.push(Boot {
                label: format!("{}-kvm", k.series),
                kernel: k.clone(),
                vtd: true,
                noiommu: false,
                programs: kvm,
            });
        }
    }
    boots
}

fn make_initramfs(boot: &Boot, dir: &Path, test_timeout: u64) -> Result<PathBuf, String> {
    let root = dir.join("root");
    let _ = fs::remove_dir_all(&root);
    for d in ["bin", "sbin", "lab/bin", "proc", "sys", "dev", "tmp"] {
        fs::create_dir_all(root.join(d)).map_err(|e| format!("mkdir {d}: {e}"))?;
    }
    let copy = |from: &Path, to: &Path| {
        fs::copy(from, to)
            .map(|_| ())
            .map_err(|e| format!("copy {}: {e}", from.display()))
    };
    let (busybox, objcopy) = match &boot.kernel.machine {
        Machine::X86 => (Path::new("/bin/busybox"), "objcopy"),
        Machine::Arm64 { busybox, .. } => (busybox.as_path(), "aarch64-linux-gnu-objcopy"),
    };
    copy(busybox, &root.join("bin/busybox"))?;
    copy(&lab_dir().join("init.sh"), &root.join("init"))?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))
        .map_err(|e| format!("chmod init: {e}"))?;
    let mut plan = String::new();
    for p in &boot.programs {
        let base = p
            .exe
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or("bad executable name")?;
        let dest = root.join("lab/bin").join(base);
        if !dest.exists() {
            // Debug info is of no use in the guest and makes the initramfs several
            // times larger.
            let st = Command::new(objcopy)
                .arg("--strip-debug")
                .arg(&p.exe)
                .arg(&dest)
                .status();
            if !matches!(st, Ok(s) if s.success()) {
                copy(&p.exe, &dest)?;
            }
        }
        let limit = if p.test.is_some() {
            format!("timeout -s KILL {test_timeout} ")
        } else {
            String::new()
        };
        plan.push_str(&format!("{}\t{limit}/lab/bin/{base} {}\n", p.name, p.args));
    }
    fs::write(root.join("lab/plan"), plan).map_err(|e| format!("write plan: {e}"))?;
    let image = dir.join("initramfs.cpio");
    let cpio = format!(
        "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
        root.display(),
        image.display()
    );
    run_checked(Command::new("sh").args(["-c", &cpio]), "cpio")?;
    Ok(image)
}

fn qemu_command(boot: &Boot, initramfs: &Path, console: &Path, shell: bool) -> Command {
    if let Machine::Arm64 { qemu, .. } = &boot.kernel.machine {
        return qemu_arm64(boot, qemu, initramfs, console, shell);
    }
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-machine",
        "q35,kernel-irqchip=split",
        // Single-threaded TCG: the kernel patches its own code live (static keys,
        // from early boot on), and under multi-threaded TCG another vCPU can run
        // the patch's int3 after it is gone ("Oops: int3" in `__schedule`,
        // `sched_clock_cpu`, `ktime_get_update_offsets_now`: about one boot in 15).
        // The lab's tests are not CPU-bound: this costs about 5 % of a run.
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
    ]);
    c.args(["-m", "2G", "-smp", "2", "-display", "none", "-no-reboot"]);
    c.arg("-kernel").arg(boot.kernel.dir.join("bzImage"));
    c.arg("-initrd").arg(initramfs);
    let mut append = String::from("console=ttyS0 panic=-1 loglevel=6 rdinit=/init");
    if boot.vtd {
        append.push_str(" intel_iommu=on iommu=on");
        // The IOMMU device must come before the PCI devices it translates for.
        c.args(["-device", "intel-iommu,intremap=on,caching-mode=on"]);
        // Two edu devices in IOMMU groups of their own, at fixed addresses.
        c.args(["-device", "edu,addr=0x4", "-device", "edu,addr=0x5"]);
        // A conventional PCI bus behind a PCIe-to-PCI bridge: everything on it shares one
        // IOMMU group. An edu device beside a virtio-rng that keeps its kernel driver.
        c.args(["-device", "pcie-pci-bridge,id=pbr,addr=0x6"]);
        c.args([
            "-device",
            "edu,bus=pbr,addr=0x1",
            "-device",
            "virtio-rng-pci,bus=pbr,addr=0x2",
        ]);
    }
    if boot.noiommu {
        // No IOMMU at all: VFIO takes the edu device in its unsafe no-IOMMU mode.
        append.push_str(" intel_iommu=off vfio.enable_unsafe_noiommu_mode=1");
        c.args(["-device", "edu,addr=0x4"]);
    }
    serial_and_append(&mut c, console, shell, append);
    c
}

/// The two serial ports (the kernel console to a file, the tests' output to us, or
/// with `shell` a console to the terminal), and the kernel command line.
fn serial_and_append(c: &mut Command, console: &Path, shell: bool, mut append: String) {
    if shell {
        append.push_str(" lab.shell=1");
        c.args(["-serial", "mon:stdio"]);
        c.arg("-serial").arg(format!(
            "file:{}",
            console.with_extension("tests").display()
        ));
    } else {
        c.args(["-monitor", "none"]);
        c.arg("-serial").arg(format!("file:{}", console.display()));
        c.args(["-serial", "stdio"]);
    }
    c.arg("-append").arg(append);
}

/// The arm64 guest: QEMU's virt machine with its SMMUv3 (stage 1 and stage 2,
/// nested) in front of the PCIe root complex, and edu devices behind root ports:
/// two alone in their IOMMU groups, one sharing its group with a virtio-rng, as on
/// x86. There the sharing comes from a PCIe-to-PCI bridge; Linux's SMMUv3 driver
/// refuses devices whose stream IDs alias behind one, so here the two are
/// functions of one multifunction slot (no ACS between them: one group).
fn qemu_arm64(boot: &Boot, qemu: &Path, initramfs: &Path, console: &Path, shell: bool) -> Command {
    let usr = qemu.join("usr");
    let mut c = Command::new(usr.join("bin/qemu-system-aarch64"));
    // Its own modules and firmware: not the system QEMU's (another build).
    c.env("QEMU_MODULE_DIR", usr.join("lib/x86_64-linux-gnu/qemu"));
    c.arg("-L").arg(usr.join("share/qemu"));
    c.args([
        "-machine",
        "virt,iommu=smmuv3,gic-version=3",
        // Single-threaded TCG, as on x86 (see `qemu_command`).
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
        "-audio",
        "none",
        // No default virtio-net.
        "-nic",
        "none",
    ]);
    c.args(["-m", "2G", "-smp", "2", "-display", "none", "-no-reboot"]);
    c.arg("-kernel").arg(boot.kernel.dir.join("Image"));
    c.arg("-initrd").arg(initramfs);
    // The kernel patch of patches/arm64: a vIOMMU on an SMMU without S2FWB.
    let append = String::from(
        "console=ttyAMA0 panic=-1 loglevel=6 rdinit=/init arm_smmu_v3.lab_nesting_without_fwb=1",
    );
    for (i, port) in ["rp1", "rp2"].iter().enumerate() {
        c.arg("-device").arg(format!(
            "pcie-root-port,id={port},chassis={},slot={}",
            i + 1,
            i + 1
        ));
        c.arg("-device").arg(format!("edu,bus={port}"));
    }
    c.args([
        "-device",
        "pcie-root-port,id=rp3,chassis=3,slot=3",
        "-device",
        "edu,bus=rp3,addr=0.0,multifunction=on",
        "-device",
        "virtio-rng-pci,bus=rp3,addr=0.1",
    ]);
    serial_and_append(&mut c, console, shell, append);
    c
}

/// What one boot printed, judged.
#[derive(Debug, Default)]
struct BootResult {
    /// The guest's /init started (printed its kernel line).
    reached_init: bool,
    tally: Tally,
    status_ok: bool,
    failures: Vec<String>,
}

/// Judges a boot's output line by line against its plan: every planned program must
/// begin and end, and every planned test must report its own result line.
#[derive(Debug, Default)]
struct Judge {
    /// Program name -> the test it must report, for test programs.
    expected: BTreeMap<String, Option<String>>,
    /// Programs that began.
    begun: BTreeSet<String>,
    current: Option<String>,
    /// The current program printed a result total.
    counted: bool,
    /// The current program reported the test it was run for.
    reported: bool,
    test_timeout: u64,
    r: BootResult,
}

impl Judge {
    fn new(programs: &[Program], test_timeout: u64) -> Judge {
        Judge {
            expected: programs
                .iter()
                .map(|p| (p.name.clone(), p.test.clone()))
                .collect(),
            test_timeout,
            ..Judge::default()
        }
    }

    /// Reads one line of guest output.
    fn line(&mut self, line: &str) {
        let r = &mut self.r;
        if line.starts_with("@@lab kernel ") {
            r.reached_init = true;
        } else if let Some(name) = line.strip_prefix("@@lab begin ") {
            self.current = Some(name.to_string());
            self.begun.insert(name.to_string());
            self.counted = false;
            self.reported = false;
        } else if let Some(rest) = line.strip_prefix("@@lab end ") {
            let name = rest.split(' ').next().unwrap_or(rest);
            let rc = rest.rsplit("rc=").next().unwrap_or("1");
            let test = self.expected.get(name).cloned().flatten();
            if test.is_some() && TIMED_OUT.contains(&rc) {
                r.failures.push(format!(
                    "{name}: time limit of {} s reached; killed",
                    self.test_timeout
                ));
            } else if test.is_some() && !self.reported {
                r.failures
                    .push(format!("{name}: planned, but never reported (exit {rc})"));
            } else if rc != "0" {
                r.failures.push(format!("{name} exited with {rc}"));
            }
            // A planned test that did not report its line, or a program that crashed
            // before printing a total: one failure each.
            if (test.is_some() && !self.reported) || (rc != "0" && !self.counted) {
                r.tally.failed += 1;
            }
            self.current = None;
        } else if line == "@@lab status ok" {
            r.status_ok = true;
        } else if let Some(rest) = line.strip_prefix("test result: ") {
            self.counted = true;
            r.tally.add(parse_libtest_result(rest));
        } else if let Some(rest) = line.strip_prefix("# Totals: ") {
            // kselftest harness: "# Totals: pass:241 fail:0 xfail:0 xpass:0 skip:5 error:0"
            self.counted = true;
            let field = |k: &str| {
                rest.split_whitespace()
                    .find_map(|f| f.strip_prefix(k))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            r.tally.add(Tally {
                passed: field("pass:") + field("xfail:"),
                failed: field("fail:") + field("xpass:") + field("error:"),
                ignored: field("skip:"),
            });
        } else if let Some(rest) = line.strip_prefix("test ") {
            // "test NAME ... ok" / "... FAILED" / "... ignored[, reason]"
            if let Some((name, outcome)) = rest.split_once(" ... ") {
                let expected = self
                    .current
                    .as_ref()
                    .and_then(|c| self.expected.get(c))
                    .and_then(|t| t.as_deref());
                if expected == Some(name) {
                    self.reported = true;
                }
                if outcome == "FAILED" {
                    r.failures.push(format!(
                        "{}: {line}",
                        self.current.as_deref().unwrap_or("?")
                    ));
                }
            }
        } else if line.starts_with("#          FAIL  ") || line.starts_with("not ok ") {
            r.failures.push(format!(
                "{}: {}",
                self.current.as_deref().unwrap_or("?"),
                line.trim_start_matches('#').trim()
            ));
        }
    }

    /// The result, with every planned program that never began counted as failed.
    fn finish(mut self) -> BootResult {
        for name in self.expected.keys() {
            if !self.begun.contains(name) {
                self.r
                    .failures
                    .push(format!("{name}: planned, but never run"));
                self.r.tally.failed += 1;
            }
        }
        self.r
    }
}

/// "ok. 3 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 0.5s"
fn parse_libtest_result(s: &str) -> Tally {
    let mut t = Tally::default();
    for part in s.split(';') {
        let mut words = part.split_whitespace().rev();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else { continue };
        match what {
            "passed" => t.passed = n,
            "failed" => t.failed = n,
            "ignored" => t.ignored = n,
            _ => {}
        }
    }
    t
}

fn run_boot(boot: &Boot, opts: &Options) -> Result<BootResult, String> {
    let dir = repo_root().join("target/lab").join(&boot.label);
    fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    let test_timeout = opts.test_timeout.unwrap_or(TEST_TIMEOUT);
    let initramfs = make_initramfs(boot, &dir, test_timeout)?;
    let console = dir.join("console.log");
    let mut cmd = qemu_command(boot, &initramfs, &console, opts.shell);
    let names: Vec<&str> = boot.programs.iter().map(|p| p.name.as_str()).collect();
    eprintln!(
        "xtask: booting {} ({}, {}) to run {}",
        boot.label,
        fs::read_to_string(boot.kernel.dir.join("version"))
            .unwrap_or_default()
            .trim(),
        if matches!(boot.kernel.machine, Machine::Arm64 { .. }) {
            "arm64, emulated SMMUv3 + edu devices"
        } else if boot.vtd {
            "emulated VT-d + edu devices"
        } else if boot.noiommu {
            "no IOMMU: VFIO no-IOMMU mode, one edu device"
        } else {
            "no vIOMMU: kernel mock IOMMU"
        },
        names.join(", ")
    );
    if opts.shell {
        let st = cmd.status().map_err(|e| format!("qemu: {e}"))?;
        let tests = fs::read_to_string(console.with_extension("tests")).unwrap_or_default();
        let mut judge = Judge::new(&boot.programs, test_timeout);
        tests.lines().for_each(|l| judge.line(l));
        eprintln!(
            "xtask: qemu exited ({st}); test output is in {}",
            console.with_extension("tests").display()
        );
        return Ok(judge.finish());
    }

    let limit = Duration::from_secs(opts.timeout.unwrap_or(BOOT_TIMEOUT));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("qemu: {e}"))?;
    let stdout = child.stdout.take().ok_or("qemu stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let mut judge = Judge::new(&boot.programs, test_timeout);
    let mut out = std::io::stdout();
    let mut timed_out = false;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left.max(Duration::from_millis(1))) {
            Ok(line) => {
                let line = line.trim_end_matches('\r');
                let _ = writeln!(out, "{line}");
                judge.line(line);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_out = true;
                break;
            }
        }
    }
    if timed_out {
        let _ = child.kill();
    }
    let _ = child.wait();
    let cur = judge.current.clone();
    let mut r = judge.finish();
    if opts.verbose || !r.status_ok {
        let log = fs::read_to_string(&console).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let from = if opts.verbose {
            0
        } else {
            lines.len().saturating_sub(40)
        };
        eprintln!(
            "---- guest kernel log ({}), {} ----",
            console.display(),
            if opts.verbose { "all" } else { "last 40 lines" }
        );
        lines[from..].iter().for_each(|l| eprintln!("{l}"));
        eprintln!("----");
    }
    if timed_out {
        r.failures.push(format!(
            "{}: hard time limit of {} s reached; QEMU killed{}",
            boot.label,
            limit.as_secs(),
            cur.map(|c| format!(" while running {c}"))
                .unwrap_or_default()
        ));
        r.status_ok = false;
    } else if !r.status_ok && r.failures.is_empty() {
        r.failures.push(format!(
            "{}: the guest never said \"@@lab status ok\" (crash or panic?)",
            boot.label
        ));
    }
    if !r.status_ok && r.tally.failed == 0 {
        r.tally.failed = 1;
    }
    if r.reached_init {
        eprintln!(
            "xtask: {}: {} passed, {} failed, {} skipped in {:.1} s",
            boot.label,
            r.tally.passed,
            r.tally.failed,
            r.tally.ignored,
            start.elapsed().as_secs_f64()
        );
    } else {
        eprintln!(
            "xtask: {}: no test ran: the guest did not reach /init ({:.1} s)",
            boot.label,
            start.elapsed().as_secs_f64()
        );
    }
    Ok(r)
}

fn kernels_for(opts: &Options, default: &[&str]) -> Result<Vec<Kernel>, String> {
    let wanted: Vec<String> = match opts.kernel.as_deref() {
        None | Some("all") => default.iter().map(|s| s.to_string()).collect(),
        Some(k) => vec![k.to_string()],
    };
    if opts.arm64 {
        return Ok(vec![provision_arm64()?]);
    }
    wanted.iter().map(|k| provision_kernel(k)).collect()
}

fn run_boots(
    boots: &[Boot],
    opts: &Options,
    total: &mut Tally,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    if boots.is_empty() {
        return Err("nothing to run: no lab test matched".into());
    }
    for b in boots {
        let mut r = run_boot(b, opts)?;
        if !r.reached_init && !opts.shell {
            // Seen rarely under TCG: the kernel dies in early boot before /init runs.
            // That says nothing about the code under test; boot once more, and say so.
            let log = repo_root()
                .join("target/lab")
                .join(&b.label)
                .join("console.log");
            let kept = log.with_extension("log.first-attempt");
            let _ = fs::rename(&log, &kept);
            eprintln!(
                "xtask: {}: the guest died before /init ran (kernel log kept in {}); booting once more",
                b.label,
                kept.display()
            );
            r = run_boot(b, opts)?;
        }
        if !r.status_ok && !opts.shell && guest_panicked(&b.label) {
            // Seen about once in ten full 7.x runs since the lab creates KVM VMs in
            // the guest (KVM on TCG's emulated SVM): the guest kernel dies with a
            // corrupted RIP in code no test touches. Boot once more, and say so; a
            // test that crashes the kernel every time still fails.
            let log = repo_root()
                .join("target/lab")
                .join(&b.label)
                .join("console.log");
            let kept = log.with_extension("log.panicked");
            let _ = fs::rename(&log, &kept);
            eprintln!(
                "xtask: {}: the guest kernel panicked (kernel log kept in {}); \
                 booting once more and counting only that run",
                b.label,
                kept.display()
            );
            r = run_boot(b, opts)?;
        }
        total.add(r.tally);
        failures.extend(r.failures);
    }
    Ok(())
}

/// Whether the guest kernel of boot `label` panicked (its console log says so).
fn guest_panicked(label: &str) -> bool {
    let log = repo_root()
        .join("target/lab")
        .join(label)
        .join("console.log");
    fs::read_to_string(log).is_ok_and(|l| l.contains("Kernel panic - not syncing"))
}

fn report(total: Tally, failures: &[String], started: Instant) -> bool {
    if !failures.is_empty() {
        println!("\nfailures:");
        failures.iter().for_each(|f| println!("    {f}"));
    }
    println!("\n{}", total.closing_line(started));
    total.failed == 0 && failures.is_empty()
}

/// Collects what a vmtest run does, without the closing line.
fn vmtest_into(
    opts: &Options,
    total: &mut Tally,
    failures: &mut Vec<String>,
) -> Result<(), String> {
    ensure_host_tools()?;
    if opts.kernel_selftests {
        let kernels = kernels_for(opts, &["7"])?;
        if let Some(k) = kernels.iter().find(|k| !k.dir.join("selftests").is_dir()) {
            return Err(format!(
                "no kernel selftests were built for the {} kernel",
                k.series
            ));
        }
        return run_boots(&plan_boots(&kernels, &[], true), opts, total, failures);
    }
    // The kernels first: provisioning the arm64 lab also installs the cross tools
    // its tests are built with.
    let kernels = kernels_for(opts, &["7", "6.12"])?;
    let bins = build_guest_tests(&opts.filters, opts.arm64)?;
    let mut by_name = BTreeMap::new();
    for b in &bins {
        by_name.insert(b.name.clone(), b.tests.len());
    }
    eprintln!("xtask: lab tests selected: {by_name:?}");
    run_boots(&plan_boots(&kernels, &bins, false), opts, total, failures)
}

/// `cargo xtask vmtest`.
pub fn vmtest(opts: &Options) -> Result<bool, String> {
    let started = Instant::now();
    let (mut total, mut failures) = (Tally::default(), Vec::new());
    vmtest_into(opts, &mut total, &mut failures)?;
    Ok(report(total, &failures, started))
}

/// Builds one static executable with `cargo <args>` (a `--message-format=json`
/// build of target `name`) and returns its path.
fn build_static(args: &[&str], name: &str) -> Result<PathBuf, String> {
    build_static_for(args, name, TARGET)
}

/// [`build_static`] for `target`.
fn build_static_for(args: &[&str], name: &str, target: &str) -> Result<PathBuf, String> {
    eprintln!("xtask: building {name} for the guest ({target})");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(repo_root())
        .args(args)
        .args([
            "--target",
            target,
            "--message-format=json-render-diagnostics",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env(
            "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
            "aarch64-linux-gnu-gcc",
        )
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cargo {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!("building {name} failed"));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .ok_or(format!("cargo did not report the {name} executable"))
}

/// Runs one program (`exe args`) in a VT-d boot of each selected kernel (default
/// 7.x) and prints `<what>: ok` or `FAILED`.
fn run_program(
    opts: &Options,
    what: &str,
    name: &str,
    exe: &Path,
    args: String,
) -> Result<bool, String> {
    ensure_host_tools()?;
    let mut ok = true;
    for k in kernels_for(opts, &["7"])? {
        let boot = Boot {
            label: format!("{}-{what}", k.series),
            kernel: k,
            vtd: true,
            noiommu: false,
            programs: vec![Program {
                name: name.to_string(),
                exe: exe.to_path_buf(),
                args: args.clone(),
                test: None,
            }],
        };
        let r = run_boot(&boot, opts)?;
        r.failures
            .iter()
            .for_each(|f| eprintln!("xtask: {what}: {f}"));
        ok &= r.status_ok;
    }
    println!("\n{what}: {}", if ok { "ok" } else { "FAILED" });
    Ok(ok)
}

/// `cargo xtask demo`: the passthrough example, run the way a VMM would do it, in the
/// lab guest (emulated VT-d, edu devices bound to vfio-pci). Filters are the
/// example's arguments.
pub fn demo(opts: &Options) -> Result<bool, String> {
    let target = if opts.arm64 {
        // The cross tools come with the arm64 lab.
        provision_arm64()?;
        ARM64_TARGET
    } else {
        TARGET
    };
    let exe = build_static_for(
        &[
            "build",
            "--release",
            "-p",
            "iommufd-vfio",
            "--example",
            "passthrough",
        ],
        "passthrough",
        target,
    )?;
    let mut args = opts.filters.clone();
    if opts.nested {
        args.push("--nested".into());
    }
    run_program(opts, "demo", "passthrough", &exe, args.join(" "))
}

/// `cargo xtask bench`: the criterion benchmarks that need the kernel, in the lab
/// guest: `map_unmap` (typed map/unmap against raw ioctls), `invalidate` (batched
/// invalidation against one call per entry, on the mock IOMMU) and `guest_ram`
/// (a 16-region guest mapped by `GuestRamSync` against a map per region). Filters
/// go to criterion.
pub fn bench(opts: &Options) -> Result<bool, String> {
    let mut ok = true;
    for (package, bench) in [
        ("iommufd", "map_unmap"),
        ("iommufd", "invalidate"),
        ("iommufd-viommu", "guest_ram"),
    ] {
        let exe = build_static(
            &[
                "bench",
                "--no-run",
                "-p",
                package,
                "--features",
                "selftest",
                "--bench",
                bench,
            ],
            bench,
        )?;
        // Criterion benchmarks only with `--bench`; it writes under
        // ./target/criterion, which is the guest's /tmp (tmpfs). The guest's ttyS1
        // is a terminal to it: no colours or progress lines rewritten in place, the
        // host reads a pipe.
        let mut args = vec!["--bench", "--color", "never"];
        args.extend(opts.filters.iter().map(String::as_str));
        ok &= run_program(
            opts,
            "bench",
            &format!("bench-{bench}"),
            &exe,
            args.join(" "),
        )?;
    }
    Ok(ok)
}

/// `cargo xtask test`: host tests, the lab on both kernels, the kernel's selftests.
pub fn test_all(opts: &Options) -> Result<bool, String> {
    let started = Instant::now();
    let (mut total, mut failures) = (Tally::default(), Vec::new());

    eprintln!("xtask: host tests (cargo test --workspace --all-features)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut child = Command::new(cargo)
        .current_dir(repo_root())
        .args(["test", "--workspace", "--all-features"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo test: {e}"))?;
    let stdout = child.stdout.take().ok_or("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            total.add(parse_libtest_result(rest));
        } else if line.starts_with("test ") && line.ends_with(" ... FAILED") {
            failures.push(format!("host: {line}"));
        }
    }
    let st = child.wait().map_err(|e| format!("cargo test: {e}"))?;
    if !st.success() {
        failures.push(format!("host: cargo test exited with {st}"));
    }

    let lab = Options {
        timeout: opts.timeout,
        test_timeout: opts.test_timeout,
        ..Options::default()
    };
    vmtest_into(&lab, &mut total, &mut failures)?;
    let arm64 = Options { arm64: true, ..lab };
    vmtest_into(&arm64, &mut total, &mut failures)?;
    let selftests = Options {
        kernel_selftests: true,
        timeout: opts.timeout,
        ..Options::default()
    };
    vmtest_into(&selftests, &mut total, &mut failures)?;
    Ok(report(total, &failures, started))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_result_line() {
        let t = parse_libtest_result(
            "ok. 3 passed; 1 failed; 2 ignored; 0 measured; 5 filtered out; finished in 0.52s",
        );
        assert_eq!((t.passed, t.failed, t.ignored), (3, 1, 2));
    }

    fn program(name: &str, test: Option<&str>) -> Program {
        Program {
            name: name.into(),
            exe: PathBuf::from("/bin/true"),
            args: String::new(),
            test: test.map(Into::into),
        }
    }

    #[test]
    fn kselftest_totals_and_crash_accounting() {
        let plan = [program("selftest-iommufd", None), program("crashy", None)];
        let mut judge = Judge::new(&plan, 300);
        for l in [
            "@@lab begin selftest-iommufd",
            "# Totals: pass:241 fail:0 xfail:0 xpass:0 skip:5 error:0",
            "@@lab end selftest-iommufd rc=0",
            "@@lab begin crashy",
            "@@lab end crashy rc=139",
        ] {
            judge.line(l);
        }
        let r = judge.finish();
        assert_eq!(
            (r.tally.passed, r.tally.failed, r.tally.ignored),
            (241, 1, 5)
        );
        assert!(!r.status_ok);
        assert_eq!(r.failures, vec!["crashy exited with 139".to_string()]);
    }

    // Each planned test must report its own line; a hang is killed and named; a test
    // never started (the guest died) is a failure too.
    #[test]
    fn planned_tests_must_report() {
        let plan = [
            program("iommufd-ioas::a", Some("a")),
            program("iommufd-ioas::b", Some("b")),
            program("iommufd-ioas::c", Some("c")),
            program("iommufd-ioas::d", Some("d")),
            program("iommufd-ioas::e", Some("e")),
        ];
        let mut judge = Judge::new(&plan, 300);
        for l in [
            "@@lab kernel 7.3.4",
            "@@lab begin iommufd-ioas::a",
            "test a ... ok",
            "test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out; finished in 0.01s",
            "@@lab end iommufd-ioas::a rc=0",
            // The name filter matched nothing: 0 tests ran, exit 0.
            "@@lab begin iommufd-ioas::b",
            "test result: ok. 0 passed; 0 failed; 0 ignored; 0 measured; 10 filtered out; finished in 0.00s",
            "@@lab end iommufd-ioas::b rc=0",
            // Hung: killed by the time limit.
            "@@lab begin iommufd-ioas::c",
            "@@lab end iommufd-ioas::c rc=137",
            "@@lab begin iommufd-ioas::d",
            "test d ... FAILED",
            "test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 9 filtered out; finished in 0.01s",
            "@@lab end iommufd-ioas::d rc=101",
            "@@lab status fail",
        ] {
            judge.line(l);
        }
        let r = judge.finish();
        assert!(r.reached_init);
        assert_eq!((r.tally.passed, r.tally.failed), (1, 4), "{:?}", r.failures);
        let text = r.failures.join("\n");
        assert!(
            text.contains("iommufd-ioas::b: planned, but never reported (exit 0)"),
            "{text}"
        );
        assert!(
            text.contains("iommufd-ioas::c: time limit of 300 s reached; killed"),
            "{text}"
        );
        assert!(
            text.contains("iommufd-ioas::d: test d ... FAILED"),
            "{text}"
        );
        assert!(
            text.contains("iommufd-ioas::e: planned, but never run"),
            "{text}"
        );
    }
}
