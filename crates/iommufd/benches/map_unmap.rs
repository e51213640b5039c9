//! IOAS map + unmap through the typed API, against the same ioctls issued by hand.
//!
//! Each benchmark maps one buffer at a fixed IOVA and unmaps it again, either through
//! the typed API (`typed`) or by filling the `iommufd_uapi` structures and calling
//! `libc::ioctl` directly (`raw`, the naive baseline: it checks the return value and
//! nothing else). Both use the same file, the same IOAS and the same memory, so the
//! only difference is the call path. The typed paths:
//!
//! - `map_user`: [`Ioas::map_user`] + [`Ioas::unmap`], the thinnest wrapper;
//! - `map_owned`: [`Ioas::map`] of an owned `MmapRegion`, returning a [`Mapping`]
//!   handle that [`Mapping::unmap`] turns back into the region: what a VMM uses, with
//!   the handle's bookkeeping (it holds its IOAS, and the IOAS's registry of mappings
//!   lets a handle remove only its own mapping);
//! - `map_file`: [`Ioas::map_file`] + [`Ioas::unmap`] of a memfd.
//!
//! [`Mapping`]: iommufd::Mapping
//! [`Mapping::unmap`]: iommufd::Mapping::unmap
//!
//! Scenarios, each for 4 KiB, 2 MiB and 64 MiB:
//!
//! - `no_domain/*`: an IOAS with nothing attached. The kernel only records the range
//!   (no pinning), so this is where a wrapper's overhead shows most.
//! - `vtd/*`: an `edu` device alone in its IOMMU group (bound to vfio-pci) attached
//!   to the IOAS, so every map pins the pages and writes the IOMMU page table. Skipped
//!   with a note where there is no such device.
//! - `*_file`: `IOMMU_IOAS_MAP_FILE` of a memfd (Linux 6.13); skipped with a note on
//!   older kernels.
//!
//! After criterion, the bench times both paths again in alternating rounds and prints
//! `ratio typed/raw at SIZE: X.XX` per scenario (median of the per-round ratios).
//!
//! It needs `/dev/iommu`: run it in the guest lab with `cargo xtask bench`. Criterion's
//! settings are sized for the lab's QEMU TCG guest (10 samples, short warm-up and
//! measurement); command-line options override them. Without `/dev/iommu` the bench
//! panics when asked to benchmark (`--bench`), and only prints a note in test mode
//! (`cargo test --all-targets` runs it without `--bench`).

use std::fs::File;
use std::hint::black_box;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use std::cell::RefCell;

use iommufd::vm_memory::MmapRegion;
use iommufd::{Command, Ioas, Iommufd, Iova, MapFlags, uapi};
use iommufd_lab::pci;
use iommufd_lab::vfio::VfioDevice;

/// The sizes mapped, with their labels.
const SIZES: [(u64, &str); 3] = [(4 << 10, "4KiB"), (2 << 20, "2MiB"), (64 << 20, "64MiB")];

/// Where every mapping goes: above the VT-d interrupt window (0xfee00000) and well
/// inside a 39-bit VT-d aperture.
const BASE: Iova = Iova(1 << 32);

/// How long the closing comparison spends on each (scenario, size).
const RATIO_BUDGET: Duration = Duration::from_millis(500);

/// The memory one size is mapped from: anonymous shared memory for `map_user`, a
/// memfd for `map_file`. Both are populated up front so that the first map under a
/// domain does not also pay for page faults.
struct Backing {
    label: &'static str,
    len: u64,
    region: MmapRegion,
    /// A region of the same size for `map_owned`, which moves it into the mapping
    /// and back.
    owned: RefCell<Option<MmapRegion>>,
    file: File,
}

impl Backing {
    fn new(len: u64, label: &'static str) -> Backing {
        let populated = || {
            let region = MmapRegion::new(len as usize).expect("mmap");
            for off in (0..len as usize).step_by(4096) {
                // SAFETY: `off < len`, inside the mapping `region` owns.
                unsafe { region.as_ptr().add(off).write_volatile(1) };
            }
            region
        };
        let region = populated();
        let owned = RefCell::new(Some(populated()));
        // SAFETY: memfd_create with a NUL-terminated name creates a new fd or fails.
        let raw = unsafe { libc::memfd_create(c"iommufd-bench".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(raw >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: `raw` is a new, valid file descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        file.set_len(len).expect("ftruncate memfd");
        let chunk = vec![1u8; len.min(1 << 20) as usize];
        for off in (0..len).step_by(chunk.len()) {
            file.write_all_at(&chunk, off).expect("populate the memfd");
        }
        Backing {
            label,
            len,
            region,
            owned,
            file,
        }
    }
}

/// Typed: `Ioas::map` of the owned region, and `Mapping::unmap` to get it back.
fn typed_owned(ioas: &Ioas, b: &Backing) {
    let region = b.owned.take().expect("the owned region is home");
    let m = ioas
        .map(region, Some(BASE), MapFlags::RW)
        .map_err(|r| r.error)
        .expect("IOMMU_IOAS_MAP");
    black_box(m.iova());
    let region = m.unmap().map_err(|r| r.error).expect("IOMMU_IOAS_UNMAP");
    b.owned.replace(Some(region));
}

/// Typed: `Ioas::map_user` + `Ioas::unmap`.
fn typed_user(ioas: &Ioas, b: &Backing) {
    // SAFETY: `b.region` is mapped for the whole call and outlives the mapping, which
    // is removed again before this function returns.
    let iova = unsafe { ioas.map_user(b.region.as_ptr(), b.len, Some(BASE), MapFlags::RW) }
        .expect("IOMMU_IOAS_MAP");
    black_box(ioas.unmap(iova, b.len).expect("IOMMU_IOAS_UNMAP"));
}

/// Typed: `Ioas::map_file` + `Ioas::unmap`.
fn typed_file(ioas: &Ioas, b: &Backing) {
    let iova = ioas
        .map_file(&b.file, 0, b.len, Some(BASE), MapFlags::RW)
        .expect("IOMMU_IOAS_MAP_FILE");
    black_box(ioas.unmap(iova, b.len).expect("IOMMU_IOAS_UNMAP"));
}

/// Raw: `IOMMU_IOAS_UNMAP` of `len` bytes at `iova`.
fn raw_unmap(fd: RawFd, ioas_id: u32, iova: u64, len: u64) {
    let mut unmap = uapi::iommu_ioas_unmap {
        size: size_of::<uapi::iommu_ioas_unmap>() as u32,
        ioas_id,
        iova,
        length: len,
    };
    // SAFETY: `unmap` is a live, exclusively borrowed `iommu_ioas_unmap` whose `size`
    // is its own; the structure carries no user pointers.
    let ret = unsafe { libc::ioctl(fd, uapi::IOMMU_IOAS_UNMAP as _, &mut unmap) };
    assert!(ret == 0, "IOMMU_IOAS_UNMAP: {}", io::Error::last_os_error());
    black_box(unmap.length);
}

/// Raw: `IOMMU_IOAS_MAP` + `IOMMU_IOAS_UNMAP` through `libc::ioctl`.
fn raw_user(fd: RawFd, ioas_id: u32, b: &Backing) {
    let mut map = uapi::iommu_ioas_map {
        size: size_of::<uapi::iommu_ioas_map>() as u32,
        flags: uapi::IOMMU_IOAS_MAP_FIXED_IOVA
            | uapi::IOMMU_IOAS_MAP_READABLE
            | uapi::IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id,
        __reserved: 0,
        user_va: b.region.as_ptr() as u64,
        length: b.len,
        iova: BASE.raw(),
    };
    // SAFETY: `map` is a live, exclusively borrowed `iommu_ioas_map` whose `size` is
    // its own; `user_va..+length` is `b.region`, which outlives the mapping, removed
    // again below.
    let ret = unsafe { libc::ioctl(fd, uapi::IOMMU_IOAS_MAP as _, &mut map) };
    assert!(ret == 0, "IOMMU_IOAS_MAP: {}", io::Error::last_os_error());
    raw_unmap(fd, ioas_id, map.iova, b.len);
}

/// Raw: `IOMMU_IOAS_MAP_FILE` + `IOMMU_IOAS_UNMAP` through `libc::ioctl`.
fn raw_file(fd: RawFd, ioas_id: u32, b: &Backing) {
    let mut map = uapi::iommu_ioas_map_file {
        size: size_of::<uapi::iommu_ioas_map_file>() as u32,
        flags: uapi::IOMMU_IOAS_MAP_FIXED_IOVA
            | uapi::IOMMU_IOAS_MAP_READABLE
            | uapi::IOMMU_IOAS_MAP_WRITEABLE,
        ioas_id,
        fd: b.file.as_raw_fd(),
        start: 0,
        length: b.len,
        iova: BASE.raw(),
    };
    // SAFETY: `map` is a live, exclusively borrowed `iommu_ioas_map_file` whose `size`
    // is its own; the structure carries no user pointers (the kernel takes its own
    // reference to the memfd).
    let ret = unsafe { libc::ioctl(fd, uapi::IOMMU_IOAS_MAP_FILE as _, &mut map) };
    assert!(
        ret == 0,
        "IOMMU_IOAS_MAP_FILE: {}",
        io::Error::last_os_error()
    );
    raw_unmap(fd, ioas_id, map.iova, b.len);
}

/// What is mapped: process memory or a memfd.
#[derive(Clone, Copy)]
enum Source {
    User,
    Owned,
    File,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::User => "map_user",
            Source::Owned => "map_owned",
            Source::File => "map_file",
        }
    }

    fn typed(self, ioas: &Ioas, b: &Backing) {
        match self {
            Source::User => typed_user(ioas, b),
            Source::Owned => typed_owned(ioas, b),
            Source::File => typed_file(ioas, b),
        }
    }

    fn raw(self, fd: RawFd, ioas_id: u32, b: &Backing) {
        match self {
            Source::User | Source::Owned => raw_user(fd, ioas_id, b),
            Source::File => raw_file(fd, ioas_id, b),
        }
    }
}

/// One line of the closing comparison.
struct Ratio {
    group: String,
    size: &'static str,
    typed_ns: f64,
    raw_ns: f64,
    ratio: f64,
}

/// Runs `f` `n` times and returns the time taken.
fn time_n(n: u32, f: &mut impl FnMut()) -> Duration {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed()
}

/// Times `typed` and `raw` in alternating rounds of equal iteration counts, for at
/// least [`RATIO_BUDGET`] and 5 rounds; returns the mean time per iteration of each
/// and the median of the per-round ratios (robust against the TCG guest's hiccups).
fn compare(mut typed: impl FnMut(), mut raw: impl FnMut()) -> (f64, f64, f64) {
    // Calibrate: rounds of about 5 ms per path.
    let one = (time_n(1, &mut typed) + time_n(1, &mut raw)) / 2;
    let k = (5_000_000 / one.as_nanos().max(1)).clamp(1, 100_000) as u32;
    let (mut total_typed, mut total_raw, mut iters) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut ratios = Vec::new();
    let start = Instant::now();
    while ratios.len() < 5 || (start.elapsed() < RATIO_BUDGET && ratios.len() < 1000) {
        // Alternate which path goes first, so neither always follows the other.
        let (t, r) = if ratios.len() % 2 == 0 {
            let t = time_n(k, &mut typed);
            (t, time_n(k, &mut raw))
        } else {
            let r = time_n(k, &mut raw);
            (time_n(k, &mut typed), r)
        };
        ratios.push(t.as_secs_f64() / r.as_secs_f64().max(1e-12));
        total_typed += t;
        total_raw += r;
        iters += u64::from(k);
    }
    ratios.sort_by(f64::total_cmp);
    let median = ratios[ratios.len() / 2];
    let per = |d: Duration| d.as_nanos() as f64 / iters as f64;
    (per(total_typed), per(total_raw), median)
}

/// Benchmarks one scenario (`typed` and `raw` for every size) with criterion, then,
/// when benchmarking, compares the two paths for the closing ratios.
fn scenario(
    c: &mut Criterion,
    name: &str,
    ioas: &Ioas,
    source: Source,
    backings: &[Backing],
    ratios: Option<&mut Vec<Ratio>>,
) {
    let fd = ioas.iommufd().as_fd().as_raw_fd();
    let id = ioas.id().raw();
    let group_name = format!("{name}/{}_unmap", source.name());
    let mut group = c.benchmark_group(&group_name);
    for b in backings {
        group.bench_with_input(BenchmarkId::new("typed", b.label), b, |bench, b| {
            bench.iter(|| source.typed(ioas, b))
        });
        group.bench_with_input(BenchmarkId::new("raw", b.label), b, |bench, b| {
            bench.iter(|| source.raw(fd, id, b))
        });
    }
    group.finish();
    if let Some(ratios) = ratios {
        for b in backings {
            let (typed_ns, raw_ns, ratio) =
                compare(|| source.typed(ioas, b), || source.raw(fd, id, b));
            ratios.push(Ratio {
                group: group_name.clone(),
                size: b.label,
                typed_ns,
                raw_ns,
                ratio,
            });
        }
    }
}

/// An isolated `edu` device bound to `fd` and attached to `ioas` (through an
/// automatically allocated VT-d domain), or why there is none.
fn attach_edu(fd: &Iommufd, ioas: &Ioas) -> Result<VfioDevice, String> {
    let pci = pci::isolated_edu().map_err(|e| e.to_string())?;
    let cdev = pci.vfio_cdev().map_err(|e| {
        format!(
            "{} has no VFIO cdev (not bound to vfio-pci?): {e}",
            pci.bdf()
        )
    })?;
    let dev = VfioDevice::open(&cdev).map_err(|e| format!("open {}: {e}", cdev.display()))?;
    dev.bind(fd.as_fd())
        .map_err(|e| format!("VFIO_DEVICE_BIND_IOMMUFD {}: {e}", pci.bdf()))?;
    dev.attach(ioas.id().raw())
        .map_err(|e| format!("VFIO_DEVICE_ATTACH_IOMMUFD_PT {}: {e}", pci.bdf()))?;
    Ok(dev)
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    // As criterion decides: `--bench` benchmarks unless `--test` or `--list` is given;
    // without `--bench` (cargo test --benches / --all-targets) it is test mode.
    let benchmarking = has("--bench") && !has("--test") && !has("--list");
    if !std::path::Path::new(iommufd::DEFAULT_PATH).exists() {
        assert!(
            !benchmarking,
            "/dev/iommu is missing: this benchmark issues real iommufd ioctls; \
             run it in the guest lab with `cargo xtask bench`"
        );
        println!(
            "note: /dev/iommu is missing: the map_unmap benchmark needs it and is skipped \
             in test mode (run it with `cargo xtask bench`)"
        );
        return;
    }

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .nresamples(10_000)
        .configure_from_args();
    let fd = Iommufd::open().expect("open /dev/iommu");
    let has_map_file = fd.probe().supports(Command::IoasMapFile);
    if !has_map_file {
        println!("note: this kernel has no IOMMU_IOAS_MAP_FILE (Linux 6.13): map_file skipped");
    }
    let sources: Vec<Source> = if has_map_file {
        vec![Source::User, Source::Owned, Source::File]
    } else {
        vec![Source::User, Source::Owned]
    };
    let backings: Vec<Backing> = SIZES
        .iter()
        .map(|&(len, label)| Backing::new(len, label))
        .collect();
    let mut ratios = Vec::new();

    {
        let ioas = Ioas::alloc(&fd).expect("IOMMU_IOAS_ALLOC");
        for &s in &sources {
            let r = benchmarking.then_some(&mut ratios);
            scenario(&mut c, "no_domain", &ioas, s, &backings, r);
        }
    }

    let ioas = Ioas::alloc(&fd).expect("IOMMU_IOAS_ALLOC");
    match attach_edu(&fd, &ioas) {
        Ok(dev) => {
            for &s in &sources {
                let r = benchmarking.then_some(&mut ratios);
                scenario(&mut c, "vtd", &ioas, s, &backings, r);
            }
            dev.detach().expect("VFIO_DEVICE_DETACH_IOMMUFD_PT");
        }
        Err(why) => println!("note: no edu device to attach ({why}): the vtd scenario is skipped"),
    }
    drop(ioas);

    c.final_summary();
    if !ratios.is_empty() {
        println!("\ntyped/raw (median of alternating rounds; mean time per map+unmap):");
        for r in &ratios {
            println!(
                "ratio typed/raw at {}: {:.2}  ({}; typed {}, raw {})",
                r.size,
                r.ratio,
                r.group,
                fmt_ns(r.typed_ns),
                fmt_ns(r.raw_ns)
            );
        }
    }
}
