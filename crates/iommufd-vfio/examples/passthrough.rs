//! PCI passthrough the way a VMM does it, end to end, with real DMA.
//!
//! 1. Guest RAM: memfd-backed vm-memory regions, mapped into an IOAS at IOVA = GPA.
//! 2. The device: found by PCI address (or the first QEMU `edu` alone in its IOMMU
//!    group), its group checked for viability, its VFIO cdev bound to `/dev/iommu`
//!    under a label, attached to the IOAS.
//! 3. DMA: for an `edu` device, its DMA engine (standing in for a guest driver) copies
//!    a pattern out of guest RAM and back into another region; the result is compared
//!    byte for byte. After the guest RAM is unmapped, a DMA must not reach it.
//! 4. Teardown, checking that no kernel object is left.
//!
//! With `--nested` (the arm64 lab's emulated SMMUv3), the device is attached through
//! nested translation instead: the IOAS is stage 2, and a guest's stage 1 (a context
//! descriptor and page tables in guest RAM, as a guest SMMUv3 driver would write
//! them) maps device addresses (GIOVAs) to GPAs, through a nest-parent HWPT, a
//! vIOMMU, a vDEVICE and a nested HWPT; the DMA goes to GIOVAs.
//!
//! Everything lives in one `Passthrough` value, the way a VMM's device manager keeps
//! it, and nothing depends on the order things are declared or dropped in: the
//! device holds the IOAS it is attached to, the guest memory mapping holds the IOAS
//! and the guest regions, so an early `?` anywhere tears down cleanly.
//!
//! ```text
//! passthrough [--pci DDDD:BB:DD.F] [--label N] [--nested]
//! ```
//!
//! `cargo xtask demo` runs it in the guest lab (emulated VT-d, edu devices);
//! `cargo xtask demo --arch arm64 --nested` in the arm64 lab, nested. On a host
//! with `/dev/iommu`, bind the device to vfio-pci and pass its address; DMA is checked
//! only for `edu` devices.

use std::error::Error;
use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::process::ExitCode;

use iommufd::{
    Command, GuestMemoryMapping, HwInfoData, Hwpt, HwptFlags, HwptId, Ioas, Iommufd, MapFlags,
    NestedHwpt, SmmuV3Ste, Stage1, Vdevice, Viommu, ViommuType,
};
use iommufd_lab::edu::{EDU_MAX_TRANSFER, Edu};
use iommufd_lab::smmu;
use iommufd_lab::vfio::VfioDevice as EduPort;
use iommufd_vfio::{BoundDevice, PciAddress, Sysfs, VfioDevice};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// Guest RAM layout: two regions with a hole, below edu's 28-bit DMA limit.
const REGIONS: [(u64, usize); 2] = [(0, 16 << 20), (32 << 20, 16 << 20)];

type Res<T> = Result<T, Box<dyn Error>>;

fn memfd(name: &std::ffi::CStr, len: usize) -> Res<File> {
    // SAFETY: memfd_create with a NUL-terminated name creates a new fd or fails.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", std::io::Error::last_os_error()).into());
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len as u64)?;
    Ok(file)
}

fn find_edu(sysfs_root: &str) -> Res<PciAddress> {
    let sysfs = Sysfs::default();
    let mut found = Vec::new();
    for e in std::fs::read_dir(format!("{sysfs_root}/bus/pci/devices"))? {
        let name = e?.file_name().to_string_lossy().into_owned();
        let dir = format!("{sysfs_root}/bus/pci/devices/{name}");
        let id = |f: &str| std::fs::read_to_string(format!("{dir}/{f}")).unwrap_or_default();
        if id("vendor").trim() == "0x1234" && id("device").trim() == "0x11e8" {
            let addr: PciAddress = name.parse()?;
            if sysfs
                .iommu_group(addr)
                .map(|g| g.members.len() == 1)
                .unwrap_or(false)
            {
                found.push(addr);
            }
        }
    }
    found.sort();
    found
        .first()
        .copied()
        .ok_or_else(|| "no edu device alone in its IOMMU group; pass --pci".into())
}

/// What a VMM keeps of a passthrough device for the life of the VM. The fields may
/// drop in any order (here the IOAS goes first, before what uses it).
struct Passthrough {
    ioas: Ioas,
    ram: Option<GuestMemoryMapping>,
    dev: BoundDevice,
    hwpt: HwptId,
    nested: Option<Nested>,
}

/// With `--nested`: the guest's vIOMMU state (each object holds what it needs).
struct Nested {
    vdevice: Vdevice,
    hwpt: NestedHwpt,
    /// GIOVA -> GPA, as the guest's stage 1 maps them.
    giova: Vec<(u64, u64)>,
}

impl Nested {
    /// The device address of `gpa` (which stage 1 must map).
    fn iova_of(&self, gpa: u64) -> u64 {
        self.giova
            .iter()
            .find(|(_, g)| *g == gpa & !0xfff)
            .map_or(gpa, |(v, _)| v | (gpa & 0xfff))
    }
}

/// Stage 1 of the `--nested` mode: its tables at the start of the second region,
/// pages of both regions at GIOVAs 4 MiB apart from their GPAs.
const S1_ASID: u16 = 1;
const S1_VSID: u64 = 0x8;
const S1_OFFSET: u64 = 0x40_0000;

/// Attaches `dev` through nested translation over `ioas` (see the module docs).
fn attach_nested(ioas: &Ioas, dev: &BoundDevice, guest: &GuestMemoryMmap) -> Res<Nested> {
    let parent = Hwpt::alloc(ioas, dev, HwptFlags::NEST_PARENT)?;
    let viommu = Viommu::alloc(&parent, dev, ViommuType::ArmSmmuV3)?;
    let vdevice = Vdevice::alloc(&viommu, dev, S1_VSID)?;
    let tables = guest
        .find_region(GuestAddress(REGIONS[1].0))
        .ok_or("the second region")?
        .get_mmap();
    let mut s1 = smmu::Stage1::new(tables, REGIONS[1].0, S1_ASID);
    let mut giova = Vec::new();
    for gpa in [
        0x1000,
        0x3000,
        0x9000,
        REGIONS[1].0 + 0x10_2000,
        REGIONS[1].0 + 0x10_8000,
    ] {
        s1.map(gpa + S1_OFFSET, gpa, true);
        giova.push((gpa + S1_OFFSET, gpa));
    }
    let ste = SmmuV3Ste::stage1(s1.cd_gpa(), 0, 0)?;
    let hwpt = NestedHwpt::alloc(&viommu, dev, Stage1::from(ste), HwptFlags::empty(), None)?;
    println!(
        "  nested       stage 1: CD at GPA {:#x}, ASID {S1_ASID}, {} pages mapped; {} on {} on {} (nest parent), {} (vSID {S1_VSID:#x})",
        s1.cd_gpa(),
        giova.len(),
        hwpt.id(),
        viommu.id(),
        parent.id(),
        vdevice.id()
    );
    Ok(Nested {
        vdevice,
        hwpt,
        giova,
    })
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(seed))
        .collect()
}

fn run() -> Res<()> {
    let mut args = std::env::args().skip(1);
    let (mut pci, mut label, mut nested) = (None, 0x0000_0001_0000_0004_u64, false);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pci" => {
                pci = Some(
                    args.next()
                        .ok_or("--pci needs an address")?
                        .parse::<PciAddress>()?,
                )
            }
            "--label" => label = args.next().ok_or("--label needs a value")?.parse()?,
            "--nested" => nested = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut objects = 0u32;
    let mut moved = 0u64;

    println!("iommufd passthrough demo");
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")?;
    println!("  kernel       Linux {}", release.trim());
    let fd = Iommufd::open()?;
    let features = fd.probe();
    let names: Vec<&str> = features.commands().map(|c| c.name()).collect();
    println!(
        "  /dev/iommu   {} of {} commands: {}",
        names.len(),
        Command::ALL.len(),
        names.join(" ")
    );

    // Guest RAM, memfd-backed, as a VMM would allocate it.
    let ranges = REGIONS
        .iter()
        .enumerate()
        .map(|(i, &(gpa, len))| {
            let name = if i == 0 {
                c"guest-ram-0"
            } else {
                c"guest-ram-1"
            };
            Ok((
                GuestAddress(gpa),
                len,
                Some(FileOffset::new(memfd(name, len)?, 0)),
            ))
        })
        .collect::<Res<Vec<_>>>()?;
    let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges_with_files(ranges)?;
    let total: usize = REGIONS.iter().map(|r| r.1).sum();
    println!(
        "  guest RAM    {} MiB in {} memfd-backed regions",
        total >> 20,
        REGIONS.len()
    );

    // The device: find it, check its group, open its cdev.
    let sysfs = Sysfs::default();
    let addr = match pci {
        Some(a) => a,
        None => find_edu("/sys")?,
    };
    let group = sysfs.iommu_group(addr)?;
    group.check_viable()?;
    println!(
        "  device       {addr}: IOMMU group {} with {} member(s), viable",
        group.id,
        group.members.len()
    );
    let dev = VfioDevice::open_pci(&sysfs, addr)?.bind(&fd, label)?;
    objects += 1;
    let info = dev.hw_info()?;
    let iommu = match info.data {
        HwInfoData::IntelVtd {
            cap_reg, ecap_reg, ..
        } => format!("Intel VT-d, cap {cap_reg:#x} ecap {ecap_reg:#x}"),
        HwInfoData::ArmSmmuV3 { idr, .. } => format!("Arm SMMUv3, IDR0 {:#x}", idr[0]),
        other => format!("{other:?}"),
    };
    println!(
        "  bound        {} as label {:#x} (hw_info hands back label {:#x}); IOMMU {iommu}, capabilities {:?}, PASID width {}",
        dev.id(),
        dev.label(),
        info.label,
        info.capabilities,
        info.max_pasid_log2
    );
    if info.label != label {
        return Err("hw_info must carry the label".into());
    }

    // Map guest RAM at IOVA = GPA, attach the device.
    let ioas = Ioas::alloc(&fd)?;
    objects += 1;
    let ram = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    for a in ram.areas() {
        println!(
            "  mapped       GPA {:#x} + {:#x} at IOVA {} via {:?}",
            a.gpa, a.len, a.iova, a.method
        );
    }
    let (hwpt, nested) = if nested {
        let n = attach_nested(&ioas, &dev, &guest)?;
        let id = dev.attach(&n.hwpt)?;
        // The nest parent, the vIOMMU, the vDEVICE and the nested HWPT.
        objects += 4;
        println!("  attached     {} to {id} (nested)", dev.id());
        (id, Some(n))
    } else {
        let hwpt = dev.attach(&ioas)?;
        objects += 1;
        println!(
            "  attached     {} to {} (kernel-created {hwpt})",
            dev.id(),
            ioas.id()
        );
        (hwpt, None)
    };
    let mut vm = Passthrough {
        ioas,
        ram: Some(ram),
        dev,
        hwpt,
        nested,
    };
    // The address the device uses for a GPA: the GPA itself, or its GIOVA.
    let at = |gpa: u64| vm.nested.as_ref().map_or(gpa, |n| n.iova_of(gpa));

    let is_edu =
        std::fs::read_to_string(format!("/sys/bus/pci/devices/{addr}/device"))?.trim() == "0x11e8";
    if is_edu {
        let edu = Edu::new(&EduPort::from_owned_fd(
            vm.dev.as_fd().try_clone_to_owned()?,
        ))?;
        let len = EDU_MAX_TRANSFER as usize;
        // Region 0 -> device -> region 1, and back the other way.
        for (i, (src, dst)) in [
            (0x1000_u64, REGIONS[1].0 + 0x10_2000),
            (REGIONS[1].0 + 0x10_8000, 0x9000),
        ]
        .into_iter()
        .enumerate()
        {
            let data = pattern(len, 0x40 + i as u8);
            guest.write_slice(&data, GuestAddress(src))?;
            edu.dma_from_memory(at(src), 0, len as u64)?;
            edu.dma_to_memory(0, at(dst), len as u64)?;
            let mut back = vec![0u8; len];
            guest.read_slice(&mut back, GuestAddress(dst))?;
            if back != data {
                return Err(format!("DMA mismatch copying GPA {src:#x} -> {dst:#x}").into());
            }
            moved += 2 * len as u64;
            println!(
                "  DMA          GPA {src:#x} -> device -> GPA {dst:#x} (device addresses {:#x}, {:#x}): {len} bytes, verified",
                at(src),
                at(dst)
            );
        }
        // Unmapped guest RAM is out of the device's reach.
        drop(vm.ram.take());
        let probe = 0x3000_u64;
        guest.write_slice(&[0u8; 64], GuestAddress(probe))?;
        edu.dma_to_memory(0, at(probe), 64)?;
        let mut after = vec![0xffu8; 64];
        guest.read_slice(&mut after, GuestAddress(probe))?;
        if after.iter().any(|&b| b != 0) {
            return Err("DMA reached guest RAM after it was unmapped".into());
        }
        println!(
            "  unmapped     DMA to GPA {probe:#x} after unmap: blocked by the IOMMU, memory unchanged"
        );
        // The edu driver's BAR mmap and fd dup go first: they keep the device bound.
        drop(edu);
    } else {
        drop(vm.ram.take());
        println!("  DMA          {addr} is not an edu device: DMA check skipped");
    }

    // Teardown: the whole state at once, in field order (the IOAS handle first: the
    // device still holds the IOAS and releases it after unbinding). Nothing may remain.
    let (dev_id, hwpt_id, ioas_id) = (vm.dev.id(), vm.hwpt, vm.ioas.id());
    let mut ids = vec![
        ("device", dev_id.raw()),
        ("hwpt", hwpt_id.raw()),
        ("ioas", ioas_id.raw()),
    ];
    if let Some(n) = &vm.nested {
        let viommu = n.vdevice.viommu();
        ids.extend([
            ("vdevice", n.vdevice.id().raw()),
            ("viommu", viommu.id().raw()),
            ("nest parent", viommu.parent().id().raw()),
        ]);
    }
    drop(vm);
    for (what, id) in ids {
        match fd.destroy_raw(id) {
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            other => {
                return Err(format!("{what} {id} still exists after teardown: {other:?}").into());
            }
        }
    }
    if fd.has_device(dev_id)? {
        return Err(format!("{dev_id} is still bound after teardown").into());
    }
    println!("  teardown     detached, unbound, IOAS destroyed; no kernel object left");
    println!(
        "summary: Linux {}, {} iommufd commands, {objects} kernel objects created and freed, {} MiB guest RAM mapped, {moved} bytes DMAed and verified",
        release.trim(),
        names.len(),
        total >> 20
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("passthrough: error: {e}");
            ExitCode::FAILURE
        }
    }
}
