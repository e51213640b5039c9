//! Guest RAM kept in sync with one IOAS through hotplug, checked with real DMA by
//! QEMU's `edu` device behind the emulated VT-d: a hot-added region is reachable,
//! a removed one is not, the others stay; virtio-mem style plug and unplug.

mod vfio {
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use iommufd::vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
    use iommufd::{Ioas, Iommufd, MapFlags};
    use iommufd_lab::edu::Edu;
    use iommufd_lab::pci;
    use iommufd_lab::vfio::VfioDevice;
    use iommufd_viommu::{GuestRamSync, SyncReport};

    const MB: u64 = 1 << 20;

    fn memfd(len: u64) -> std::fs::File {
        // SAFETY: memfd_create with a NUL-terminated name creates a new fd or fails.
        let fd = unsafe { libc::memfd_create(c"ram-sync".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new fd nothing else owns.
        let f = std::fs::File::from(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        });
        f.set_len(len).expect("ftruncate");
        f
    }

    /// Copies 256 bytes from `from` to `to` (GPAs) through the device; whether the
    /// bytes arrived.
    fn copy(edu: &Edu, guest: &GuestMemoryMmap, from: u64, to: u64, seed: u8) -> bool {
        let data: Vec<u8> = (0..256u32)
            .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed))
            .collect();
        guest.write_slice(&data, GuestAddress(from)).expect("write");
        guest
            .write_slice(&[0u8; 256], GuestAddress(to))
            .expect("clear");
        let _ = edu.dma_from_memory(from, 0, 256);
        let _ = edu.dma_to_memory(0, to, 256);
        let mut back = vec![0u8; 256];
        guest.read_slice(&mut back, GuestAddress(to)).expect("read");
        back == data
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn hotplug_keeps_the_ioas_equal_to_guest_ram() {
        assert!(
            std::path::Path::new("/dev/iommu").exists(),
            "run in the guest lab"
        );
        let fd = Iommufd::open().expect("open");
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        let mut sync = GuestRamSync::new(ioas.clone(), MapFlags::RW);
        let ram = GuestMemoryMmap::<()>::from_ranges_with_files([
            (GuestAddress(MB), MB as usize, None),
            (
                GuestAddress(4 * MB),
                MB as usize,
                Some(FileOffset::new(memfd(MB), 0)),
            ),
        ])
        .expect("guest RAM");
        assert_eq!(
            sync.sync(&ram).unwrap(),
            SyncReport {
                mapped: 2,
                unmapped: 0
            }
        );
        assert_eq!(
            sync.sync(&ram).unwrap(),
            SyncReport::default(),
            "idempotent"
        );
        assert_eq!(sync.areas(), [(MB, MB), (4 * MB, MB)]);

        let pci = pci::isolated_edu().expect("an edu device alone in its group");
        let dev = VfioDevice::open(&pci.vfio_cdev().expect("cdev")).expect("open cdev");
        dev.bind(fd.as_fd()).expect("bind");
        dev.attach(ioas.id().raw()).expect("attach");
        let edu = Edu::new(&dev).expect("edu");
        assert!(copy(&edu, &ram, MB + 0x100, 4 * MB + 0x200, 1));

        // Hot-add a DIMM at 8 MiB: reachable after sync.
        let dimm =
            Arc::new(GuestRegionMmap::from_range(GuestAddress(8 * MB), MB as usize, None).unwrap());
        let ram2 = ram.insert_region(dimm).expect("hot-add");
        assert_eq!(
            sync.sync(&ram2).unwrap(),
            SyncReport {
                mapped: 1,
                unmapped: 0
            }
        );
        assert!(
            copy(&edu, &ram2, MB, 8 * MB + 0x1000, 2),
            "DMA into the new DIMM"
        );

        // Remove the memfd region: DMA to it is blocked, the others still work.
        let (ram3, gone) = ram2
            .remove_region(GuestAddress(4 * MB), MB)
            .expect("hot-remove");
        assert_eq!(
            sync.sync(&ram3).unwrap(),
            SyncReport {
                mapped: 0,
                unmapped: 1
            }
        );
        assert_eq!(sync.areas(), [(MB, MB), (8 * MB, MB)]);
        let old = GuestMemoryMmap::from_arc_regions(vec![gone]).expect("the removed region");
        old.write_slice(&[0u8; 256], GuestAddress(4 * MB))
            .expect("clear");
        let _ = edu.dma_to_memory(0, 4 * MB, 256);
        let mut seen = [0xffu8; 256];
        old.read_slice(&mut seen, GuestAddress(4 * MB))
            .expect("read");
        assert_eq!(seen, [0u8; 256], "DMA reached a removed region");
        assert!(
            copy(&edu, &ram3, 8 * MB, MB + 0x3000, 3),
            "the rest still works"
        );

        // virtio-mem: a region left to plug / unplug; one 256 KiB block plugged.
        let vmem = Arc::new(
            GuestRegionMmap::from_range(GuestAddress(16 * MB), MB as usize, None).unwrap(),
        );
        let ram4 = ram3.insert_region(vmem).expect("virtio-mem region");
        let is_vmem =
            |r: &GuestRegionMmap| iommufd::vm_memory::GuestMemoryRegion::start_addr(r).0 == 16 * MB;
        assert_eq!(
            sync.sync_with(&ram4, is_vmem).unwrap(),
            SyncReport::default()
        );
        sync.plug(&ram4, 16 * MB + 256 * 1024, 256 * 1024)
            .expect("plug");
        assert!(
            copy(&edu, &ram4, MB, 16 * MB + 256 * 1024, 4),
            "DMA into the plugged block"
        );
        assert!(
            !copy(&edu, &ram4, MB, 16 * MB, 5),
            "not into the rest of the region"
        );
        // Unplug must cover whole blocks.
        assert!(sync.unplug(16 * MB + 256 * 1024, 4096).is_err());
        assert_eq!(sync.unplug(16 * MB, MB).expect("unplug"), 1);
        assert!(!copy(&edu, &ram4, MB, 16 * MB + 256 * 1024, 6), "unplugged");
        // sync leaves plugged blocks alone, and syncing the whole region maps it.
        assert_eq!(
            sync.sync(&ram4).unwrap(),
            SyncReport {
                mapped: 1,
                unmapped: 0
            }
        );
        assert!(copy(&edu, &ram4, MB, 16 * MB, 7));

        // A failure changes nothing: a region whose GPA range is taken by a mapping
        // made behind the table's back.
        let blocker = ioas
            .map(
                iommufd_lab::mem::buffer(MB as usize),
                Some(iommufd::Iova(32 * MB)),
                MapFlags::RW,
            )
            .expect("blocker");
        let clash = Arc::new(
            GuestRegionMmap::from_range(GuestAddress(32 * MB), MB as usize, None).unwrap(),
        );
        let (ram5, _) = ram4
            .remove_region(GuestAddress(8 * MB), MB)
            .expect("remove the DIMM");
        let ram5 = ram5.insert_region(clash).expect("add a clashing region");
        let before = sync.areas();
        let e = sync.sync(&ram5).expect_err("EEXIST");
        assert_eq!(e.errno(), Some(libc::EEXIST), "{e}");
        assert_eq!(sync.areas(), before, "the DIMM is mapped again");
        assert!(copy(&edu, &ram4, MB, 8 * MB, 8), "and reachable");
        drop(blocker);
        drop(edu);
        dev.detach().expect("detach");
    }

    /// Whether the running kernel maps files (`IOMMU_IOAS_MAP_FILE`, Linux 6.13).
    fn kernel_maps_files() -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut v = release
            .trim()
            .split(['.', '-'])
            .map(|x| x.parse::<u32>().unwrap_or(0));
        let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
        (major, minor) >= (6, 13)
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn sixteen_regions_of_one_file_map_in_one_ioctl_per_range() {
        assert!(
            std::path::Path::new("/dev/iommu").exists(),
            "run in the guest lab"
        );
        let fd = Iommufd::open().expect("open");
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        // 16 regions of 1 MiB, consecutive ranges of one memfd: 8 at 32 MiB and 8 at
        // 64 MiB, two GPA-contiguous ranges.
        let file = Arc::new(memfd(16 * MB));
        let ranges: Vec<_> = (0..16u64)
            .map(|i| {
                let gpa = if i < 8 {
                    32 * MB + i * MB
                } else {
                    64 * MB + (i - 8) * MB
                };
                (
                    GuestAddress(gpa),
                    MB as usize,
                    Some(FileOffset::from_arc(file.clone(), i * MB)),
                )
            })
            .collect();
        let ram = GuestMemoryMmap::<()>::from_ranges_with_files(ranges).expect("guest RAM");
        let mut sync = GuestRamSync::new(ioas.clone(), MapFlags::RW);
        let report = sync.sync(&ram).expect("sync");
        let want = if kernel_maps_files() { 2 } else { 16 };
        assert_eq!(report.mapped, want, "one ioctl per contiguous range");
        assert_eq!(sync.areas().len(), want);

        let pci = pci::isolated_edu().expect("an edu device alone in its group");
        let dev = VfioDevice::open(&pci.vfio_cdev().expect("cdev")).expect("open cdev");
        dev.bind(fd.as_fd()).expect("bind");
        dev.attach(ioas.id().raw()).expect("attach");
        let edu = Edu::new(&dev).expect("edu");
        // Across a region boundary inside a run, and from one run to the other.
        assert!(copy(&edu, &ram, 35 * MB - 0x80, 66 * MB + 0x100, 1));
        assert!(copy(&edu, &ram, 71 * MB, 39 * MB + 0x800, 2));

        // Hot-remove the fourth region: its run goes, the other regions of it are
        // mapped again (as two runs), and only the removed one is unreachable.
        let (ram2, gone) = ram
            .remove_region(GuestAddress(35 * MB), MB)
            .expect("hot-remove");
        let report = sync.sync(&ram2).expect("sync");
        if kernel_maps_files() {
            assert_eq!((report.unmapped, report.mapped), (1, 2));
            assert_eq!(
                sync.areas(),
                [(32 * MB, 3 * MB), (36 * MB, 4 * MB), (64 * MB, 8 * MB)]
            );
        } else {
            assert_eq!((report.unmapped, report.mapped), (1, 0));
        }
        let old = GuestMemoryMmap::from_arc_regions(vec![gone]).expect("the removed region");
        old.write_slice(&[0u8; 256], GuestAddress(35 * MB))
            .expect("clear");
        let _ = edu.dma_to_memory(0, 35 * MB, 256);
        let mut seen = [0xffu8; 256];
        old.read_slice(&mut seen, GuestAddress(35 * MB))
            .expect("read");
        assert_eq!(seen, [0u8; 256], "DMA reached a removed region");
        assert!(
            copy(&edu, &ram2, 34 * MB + 0x1000, 36 * MB + 0x2000, 3),
            "its neighbours work"
        );
        assert_eq!(
            sync.sync(&ram2).expect("sync"),
            SyncReport::default(),
            "idempotent"
        );

        // Without coalescing: one ioctl per region.
        let ioas2 = Ioas::alloc(&fd).expect("IOAS");
        let mut each = GuestRamSync::new(ioas2, MapFlags::RW).coalescing(false);
        assert_eq!(each.sync(&ram2).expect("sync").mapped, 15);
        drop(edu);
        dev.detach().expect("detach");
    }
}
