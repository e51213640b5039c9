//! Ownership with a real device: a QEMU `edu` device behind the guest lab's emulated
//! VT-d, bound through its VFIO cdev. Any drop order of the objects a VMM keeps
//! leaves nothing behind; a VMM-style device manager moves between threads; private
//! file-backed guest RAM is DMAed as the guest sees it; a stale mapping handle leaves
//! newer guest RAM mapped; handles of another file are refused; a cdev that outlives
//! its `BoundDevice` is reported.
//!
//! The guest-lab tests are ignored on the host; `cargo xtask vmtest` runs them.

mod common;

use std::fs::File;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use common::{bind_isolated, edu, isolated, open, pattern};
use iommufd::vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};
use iommufd::{
    Command, DmaMemory, Error as CoreError, FileRange, GuestMemoryMapping, Hwpt, HwptFlags, Ioas,
    Iommufd, Iova, MapFlags, MapMethod, Mapping,
};
use iommufd_lab::edu::{EDU_MAX_TRANSFER, Edu};
use iommufd_lab::logs;
use iommufd_lab::mem::RegionBytes;
use iommufd_vfio::{BoundDevice, Error, Sysfs, VfioDevice};

/// What a VMM keeps for the life of a VM with one passthrough device. It must be
/// storable behind `Arc<Mutex<..>>` and movable into a thread.
struct DeviceManager {
    iommufd: Iommufd,
    ioas: Ioas,
    ram: GuestMemoryMapping,
    hwpts: Vec<Hwpt>,
    devices: Vec<BoundDevice>,
    extra: Vec<Mapping<Box<dyn DmaMemory>>>,
}

fn send_sync_static<T: Send + Sync + 'static>() {}

/// Compiles only if a device manager holding every kind of object can live in an
/// `Arc<Mutex<..>>` shared with a spawned thread. Runs on the host.
#[test]
fn a_device_manager_can_be_shared_with_threads() {
    send_sync_static::<DeviceManager>();
    send_sync_static::<Arc<Mutex<DeviceManager>>>();
    // The thread's closure must be 'static + Send: moving the Arc in proves it.
    fn spawnable(m: Arc<Mutex<DeviceManager>>) -> std::thread::JoinHandle<usize> {
        std::thread::spawn(move || m.lock().map(|m| m.devices.len()).unwrap_or(0))
    }
    let _ = spawnable;
}

fn memfd(len: u64, fill: u8) -> File {
    // SAFETY: memfd_create with a NUL-terminated name creates a new fd or fails.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len).expect("ftruncate");
    file.write_all_at(&vec![fill; len as usize], 0)
        .expect("fill the file");
    file
}

/// Copies `len` bytes at GPA `src` through the device to GPA `dst`.
fn dma_copy(edu: &Edu, src: u64, dst: u64, len: u64) {
    edu.dma_from_memory(src, 0, len).expect("DMA to the device");
    edu.dma_to_memory(0, dst, len).expect("DMA to memory");
}

/// The edu device can reach at most 256 MiB: guest RAM of 2 MiB at 0 and at 4 MiB.
const RAM: [(u64, u64); 2] = [(0, 2 << 20), (4 << 20, 2 << 20)];

fn shared_guest_ram(fill: u8) -> GuestMemoryMmap {
    let ranges = RAM.iter().map(|&(gpa, len)| {
        (
            GuestAddress(gpa),
            len as usize,
            Some(FileOffset::new(memfd(len, fill), 0)),
        )
    });
    GuestMemoryMmap::from_ranges_with_files(ranges).expect("guest memory")
}

#[test]
#[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
fn any_drop_order_leaves_nothing_behind() {
    logs::capture();
    let names = ["ioas", "hwpt", "device", "mapping 1", "mapping 2"];
    let n = names.len();
    let mut order: Vec<usize> = (0..n).collect();
    let mut c = vec![0usize; n];
    let mut orders = vec![order.clone()];
    // Heap's algorithm, iteratively: every ordering of the five objects.
    let mut i = 0;
    while i < n {
        if c[i] < i {
            order.swap(if i % 2 == 0 { 0 } else { c[i] }, i);
            orders.push(order.clone());
            c[i] += 1;
            i = 0;
        } else {
            c[i] = 0;
            i += 1;
        }
    }
    assert_eq!(orders.len(), 120);
    let (b1, b2) = (
        Arc::new(MmapRegion::new(1 << 16).expect("mmap")),
        Arc::new(MmapRegion::new(1 << 16).expect("mmap")),
    );
    for (k, order) in orders.iter().enumerate() {
        let keep = open();
        let fd = keep.clone();
        let dev = bind_isolated(&fd, 0x20);
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let hwpt = Hwpt::alloc(&ioas, &dev, HwptFlags::empty()).expect("HWPT_ALLOC");
        dev.attach(&hwpt).expect("attach");
        let m1 = ioas
            .map(b1.clone(), Some(Iova(0x10_0000)), MapFlags::RW)
            .expect("MAP 1");
        let m2 = ioas
            .map(b2.clone(), Some(Iova(0x20_0000)), MapFlags::RW)
            .expect("MAP 2");
        if k == 0 {
            // Once: the device really DMAs through this set-up.
            let e = edu(&dev);
            let data = pattern(EDU_MAX_TRANSFER as usize, 9);
            b1.write_at(0, &data);
            dma_copy(&e, 0x10_0000, 0x20_0000, EDU_MAX_TRANSFER);
            assert_eq!(b2.read_at(0, data.len()), data);
        }
        let ids = [ioas.id().raw(), hwpt.id().raw()];
        let dev_id = dev.id();
        drop(fd); // the objects keep the file open
        let mut items: Vec<Option<Box<dyn std::any::Any>>> = vec![
            Some(Box::new(ioas)),
            Some(Box::new(hwpt)),
            Some(Box::new(dev)),
            Some(Box::new(m1)),
            Some(Box::new(m2)),
        ];
        for &i in order {
            drop(items[i].take());
        }
        let what: Vec<&str> = order.iter().map(|&i| names[i]).collect();
        assert!(
            !keep.has_device(dev_id).expect("GET_HW_INFO"),
            "{what:?}: still bound"
        );
        for id in ids {
            match keep.destroy_raw(id) {
                Err(CoreError::NotFound { .. }) => {}
                other => panic!("object {id} left after dropping {what:?}: {other:?}"),
            }
        }
        let errors = logs::take(log::Level::Warn);
        assert!(errors.is_empty(), "dropping {what:?} logged {errors:?}");
    }
}

#[test]
#[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
fn a_device_manager_works_and_tears_down_in_another_thread() {
    logs::capture();
    let fd = open();
    let guest = shared_guest_ram(0);
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let ram = ioas
        .map_guest_memory(&guest, MapFlags::RW)
        .expect("map guest RAM");
    let dev = bind_isolated(&fd, 0x28);
    let hwpt = Hwpt::alloc(&ioas, &dev, HwptFlags::empty()).expect("HWPT_ALLOC");
    dev.attach(&hwpt).expect("attach");
    // A memfd range the kernel maps by file (Linux 6.13), else a shared mapping of
    // the memfd, mapped by file where possible and by address otherwise.
    let memory: Box<dyn DmaMemory> = if fd.probe().supports(Command::IoasMapFile) {
        Box::new(FileRange::new(memfd(1 << 16, 0x5a), 0, 1 << 16).expect("range"))
    } else {
        Box::new(
            MmapRegion::<()>::from_file(FileOffset::new(memfd(1 << 16, 0x5a), 0), 1 << 16)
                .expect("mmap"),
        )
    };
    let extra = ioas
        .map(memory, Some(Iova(8 << 20)), MapFlags::READ)
        .map_err(|r| r.error)
        .expect("MAP");
    let dev_id = dev.id();
    let manager = Arc::new(Mutex::new(DeviceManager {
        iommufd: fd.clone(),
        ioas,
        ram,
        hwpts: vec![hwpt],
        devices: vec![dev],
        extra: vec![extra],
    }));
    // The DMA itself, from this thread (the lab's edu driver is not Send).
    {
        let m = manager.lock().expect("lock");
        let e = edu(&m.devices[0]);
        let data = pattern(EDU_MAX_TRANSFER as usize, 3);
        guest
            .write_slice(&data, GuestAddress(0x1000))
            .expect("write");
        dma_copy(&e, 0x1000, RAM[1].0 + 0x3000, EDU_MAX_TRANSFER);
        let mut back = vec![0u8; data.len()];
        guest
            .read_slice(&mut back, GuestAddress(RAM[1].0 + 0x3000))
            .expect("read");
        assert_eq!(back, data);
        // The memfd range is mapped read-only at 8 MiB, inside edu's 28-bit reach.
        e.dma_from_memory(8 << 20, 0, 64)
            .expect("DMA from the memfd range");
        e.dma_to_memory(0, 0x9000, 64).expect("DMA back");
        let mut got = [0u8; 64];
        guest
            .read_slice(&mut got, GuestAddress(0x9000))
            .expect("read");
        assert_eq!(got, [0x5a; 64]);
    }
    let worker = {
        let manager = manager.clone();
        std::thread::spawn(move || {
            let mut m = manager.lock().expect("lock");
            let info = m.devices[0].hw_info().expect("GET_HW_INFO");
            assert_eq!(info.label, 0x28);
            assert_eq!(m.iommufd.device_by_label(0x28), Some(m.devices[0].id()));
            assert!(!m.ioas.iova_ranges().expect("IOVA_RANGES").ranges.is_empty());
            // Tear down in the worker, fields in an order a VMM might pick.
            m.extra.clear();
            m.devices.clear();
            m.hwpts.clear();
            m.ram.len()
        })
    };
    assert_eq!(
        worker.join().expect("worker"),
        RAM.iter().map(|r| r.1).sum::<u64>()
    );
    let last = Arc::try_unwrap(manager)
        .map_err(|_| "shared")
        .expect("last handle")
        .into_inner()
        .expect("lock");
    drop(last);
    assert!(!fd.has_device(dev_id).expect("GET_HW_INFO"));
    assert!(logs::take(log::Level::Warn).is_empty());
}

#[test]
#[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
fn private_file_backed_guest_ram_is_dmaed_as_the_guest_sees_it() {
    let fd = open();
    // Guest RAM restored from a snapshot file: a private mapping of the file, which
    // the guest then writes (copy on write). Beside it a shared memfd region.
    let len = RAM[0].1;
    let snapshot = memfd(len, 0xee);
    let private = MmapRegion::<()>::build(
        Some(FileOffset::new(snapshot.try_clone().expect("dup"), 0)),
        len as usize,
        libc::PROT_READ | libc::PROT_WRITE,
        libc::MAP_PRIVATE,
    )
    .expect("private file mapping");
    let shared_file = memfd(RAM[1].1, 0);
    let shared = MmapRegion::<()>::from_file(
        FileOffset::new(shared_file.try_clone().expect("dup"), 0),
        RAM[1].1 as usize,
    )
    .expect("shared file mapping");
    let guest = GuestMemoryMmap::from_regions(vec![
        GuestRegionMmap::new(private, GuestAddress(RAM[0].0)).expect("region"),
        GuestRegionMmap::new(shared, GuestAddress(RAM[1].0)).expect("region"),
    ])
    .expect("guest memory");
    let data = pattern(EDU_MAX_TRANSFER as usize, 0x21);
    guest
        .write_slice(&data, GuestAddress(0x2000))
        .expect("guest writes its copy");

    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let ram = ioas
        .map_guest_memory(&guest, MapFlags::RW)
        .expect("map guest RAM");
    let methods: Vec<MapMethod> = ram.areas().map(|a| a.method).collect();
    assert_eq!(
        methods[0],
        MapMethod::UserMemory,
        "MAP_PRIVATE must be mapped by address"
    );
    let dev = bind_isolated(&fd, 1);
    dev.attach(&ioas).expect("attach");
    let e = edu(&dev);
    // The device reads what the guest wrote (not the file's 0xee) ...
    dma_copy(&e, 0x2000, 0x8000, EDU_MAX_TRANSFER);
    let mut back = vec![0u8; data.len()];
    guest
        .read_slice(&mut back, GuestAddress(0x8000))
        .expect("read");
    assert_eq!(back, data, "device and guest disagree on private guest RAM");
    // ... and its writes land in the guest's copy, not in the file.
    let mut file_bytes = vec![0u8; data.len()];
    snapshot
        .read_exact_at(&mut file_bytes, 0x8000)
        .expect("read the file");
    assert!(
        file_bytes.iter().all(|&b| b == 0xee),
        "DMA wrote the snapshot file"
    );
    // The shared region: device writes are the file's (and the guest's) bytes.
    dma_copy(&e, 0x2000, RAM[1].0 + 0x4000, EDU_MAX_TRANSFER);
    let mut in_file = vec![0u8; data.len()];
    shared_file
        .read_exact_at(&mut in_file, 0x4000)
        .expect("read the file");
    assert_eq!(in_file, data);
    drop(e);
    drop((ram, dev, ioas));
}

#[test]
#[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
fn a_stale_guest_memory_handle_leaves_new_ram_mapped() {
    let fd = open();
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let dev = bind_isolated(&fd, 2);
    dev.attach(&ioas).expect("attach");
    let e = edu(&dev);
    let old_guest = shared_guest_ram(0x11);
    let old = ioas
        .map_guest_memory(&old_guest, MapFlags::RW)
        .expect("map old RAM");
    // VM reset: all DMA mappings go, fresh guest RAM at the same GPAs.
    ioas.unmap_all().expect("UNMAP all");
    let guest = shared_guest_ram(0x22);
    let new = ioas
        .map_guest_memory(&guest, MapFlags::RW)
        .expect("map new RAM");
    drop(old); // must not unmap the new RAM
    assert!(new.mappings().all(|m| m.is_mapped()));
    let data = pattern(EDU_MAX_TRANSFER as usize, 0x33);
    guest
        .write_slice(&data, GuestAddress(0x1000))
        .expect("write");
    dma_copy(&e, 0x1000, RAM[1].0 + 0x1000, EDU_MAX_TRANSFER);
    let mut back = vec![0u8; data.len()];
    guest
        .read_slice(&mut back, GuestAddress(RAM[1].0 + 0x1000))
        .expect("read");
    assert_eq!(back, data, "the new guest RAM is no longer reachable");
    // And the old RAM is out of reach: it kept its bytes.
    let mut old_bytes = vec![0u8; data.len()];
    old_guest
        .read_slice(&mut old_bytes, GuestAddress(RAM[1].0 + 0x1000))
        .expect("read");
    assert!(old_bytes.iter().all(|&b| b == 0x11));
}

#[test]
#[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
fn a_device_of_another_file_is_refused() {
    let (a, b) = (open(), open());
    let dev = bind_isolated(&a, 3);
    let ioas_b = Ioas::alloc(&b).expect("IOAS_ALLOC b");
    let wrong = |e: CoreError| assert!(matches!(e, CoreError::WrongIommufd { .. }), "{e}");
    wrong(Hwpt::alloc(&ioas_b, &dev, HwptFlags::empty()).unwrap_err());
    wrong(dev.attach(&ioas_b).unwrap_err());
    wrong(b.has_device(dev.id()).unwrap_err());
    assert_eq!(b.device_by_label(3), None);
    // The same label in the other file is another device's business.
    let r = b.reserve_label(3).expect("labels are per file");
    drop(r);
    assert!(a.has_device(dev.id()).expect("GET_HW_INFO"));
}

#[test]
#[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
fn a_cdev_kept_open_elsewhere_keeps_the_device_bound_and_says_so() {
    let fd = open();
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let dev = bind_isolated(&fd, 4);
    dev.attach(&ioas).expect("attach");
    let dup = dev.as_fd().try_clone_to_owned().expect("dup");
    let e = edu(&dev); // a BAR mmap
    let refs = dev.cdev_references().expect("references");
    assert_eq!(refs.dup_fds.len(), 1, "{refs:?}");
    assert!(refs.mmaps >= 1, "{refs:?}");
    let id = dev.id();
    let err = dev
        .close()
        .expect_err("the dup keeps the device bound")
        .error;
    match &err {
        Error::StillBound { holders, .. } => {
            assert!(
                holders.contains("dup fd") && holders.contains("mmap"),
                "{err}"
            )
        }
        other => panic!("expected StillBound, got {other}"),
    }
    assert!(fd.has_device(id).expect("GET_HW_INFO"), "still bound");
    assert_eq!(fd.label_of(id), None, "the label went with the BoundDevice");
    // It was detached on close: the IOAS is free.
    ioas.destroy()
        .expect("DESTROY: nothing is attached any more");
    // Binding it again is refused, with the device given back.
    let again = VfioDevice::open_pci(&Sysfs::default(), isolated()).expect("open");
    let refused = again.bind(&fd, 5).expect_err("still bound elsewhere");
    assert!(
        matches!(refused.error, Error::AlreadyBound { .. }),
        "{}",
        refused.error
    );
    let again = refused.object;
    // Once the other references are gone, the device unbinds and binds again.
    drop(e);
    drop(dup);
    assert!(!fd.has_device(id).expect("GET_HW_INFO"));
    let dev = again
        .bind(&fd, 5)
        .expect("bind after the references closed");
    assert_eq!(dev.label(), 5);
    dev.close().expect("close");
}
