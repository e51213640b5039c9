//! vm-memory guest RAM mapped at IOVA = GPA, checked with real DMA by QEMU's `edu`
//! device behind the guest lab's emulated VT-d.
//!
//! Ignored on the host; the guest lab runs them with `--ignored`.

mod common;

mod vfio {
    use std::os::fd::AsFd;

    use super::common::{kernel_version, memfd, open};
    use iommufd::vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryMmap};
    use iommufd::{Command, Error, GuestArea, Ioas, Iova, MapFlags, MapMethod};
    use iommufd_lab::edu::Edu;
    use iommufd_lab::pci;
    use iommufd_lab::vfio::VfioDevice;

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn guest_memory_at_iova_equals_gpa() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        // One anonymous region and one memfd-backed region, with a hole between.
        let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges_with_files([
            (GuestAddress(0x10_0000), 0x10_0000, None),
            (
                GuestAddress(0x40_0000),
                0x10_0000,
                Some(FileOffset::new(memfd(0x10_0000), 0)),
            ),
        ])
        .expect("guest memory");

        let dma = ioas
            .map_guest_memory(&guest, MapFlags::RW)
            .expect("map guest memory");
        let areas: Vec<GuestArea> = dma.areas().collect();
        assert_eq!(areas.len(), 2);
        assert_eq!(
            (areas[0].iova, areas[0].gpa, areas[0].len, areas[0].method),
            (Iova(0x10_0000), 0x10_0000, 0x10_0000, MapMethod::UserMemory)
        );
        let file_method = if fd.probe().supports(Command::IoasMapFile) {
            MapMethod::File
        } else {
            MapMethod::UserMemory
        };
        assert_eq!(
            (areas[1].iova, areas[1].gpa, areas[1].method),
            (Iova(0x40_0000), 0x40_0000, file_method),
            "kernel {:?}",
            kernel_version()
        );
        assert_eq!(dma.len(), 0x20_0000);
        assert!(dma.mappings().all(|m| m.is_mapped()));

        // The same GPA range cannot be mapped twice.
        let again = ioas
            .map_guest_memory(&guest, MapFlags::RW)
            .expect_err("already mapped");
        assert_eq!(again.errno(), Some(libc::EEXIST), "{again}");

        let pci = pci::isolated_edu().expect("an edu device alone in its group");
        let dev = VfioDevice::open(&pci.vfio_cdev().expect("cdev")).expect("open cdev");
        // The lab's raw VFIO commands: this test is about the mapping, not binding.
        dev.bind(fd.as_fd()).expect("bind");
        dev.attach(ioas.id().raw()).expect("attach");
        let edu = Edu::new(&dev).expect("edu");

        // Anonymous region -> device -> memfd region, through GPAs.
        let data: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        guest
            .write_slice(&data, GuestAddress(0x10_1000))
            .expect("write");
        edu.dma_from_memory(0x10_1000, 0, data.len() as u64)
            .expect("DMA in");
        edu.dma_to_memory(0, 0x40_2000, data.len() as u64)
            .expect("DMA out");
        let mut back = vec![0u8; data.len()];
        guest
            .read_slice(&mut back, GuestAddress(0x40_2000))
            .expect("read");
        assert_eq!(back, data);

        // Dropping the mapping unmaps every region: the IOAS is empty again.
        drop(dma);
        let e = ioas
            .unmap(Iova(0x10_0000), 0x10_0000)
            .expect_err("nothing mapped");
        assert!(matches!(e, Error::UnmapSplit { .. }), "{e}");
        guest
            .write_slice(&[0u8; 64], GuestAddress(0x40_2000))
            .expect("clear");
        edu.dma_to_memory(0, 0x40_2000, 64)
            .expect("DMA completes on the device side");
        let mut after = [0xffu8; 64];
        guest
            .read_slice(&mut after, GuestAddress(0x40_2000))
            .expect("read");
        assert_eq!(after, [0u8; 64], "DMA reached guest memory after unmap");
        dev.detach().expect("detach");
    }
}
