//! Real DMA through mappings made with this crate: QEMU's `edu` device behind the
//! emulated Intel VT-d of the guest lab, bound through its VFIO cdev.
//!
//! Ignored on the host; the guest lab runs them with `--ignored`.

mod common;

mod vfio {
    use std::os::fd::AsFd;

    use super::common::{open, page};
    use iommufd::{
        DeviceId, HwCapabilities, HwInfoData, Hwpt, HwptFlags, Iova, MapFlags, MmapRegion,
    };
    use iommufd_lab::edu::{EDU_DMA_LIMIT, EDU_MAX_TRANSFER, Edu};
    use iommufd_lab::pci;
    use iommufd_lab::vfio::VfioDevice;

    /// The VT-d interrupt remapping window, reserved in every IOAS a VT-d device uses.
    const MSI_WINDOW: Iova = Iova(0xfee0_0000);

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn edu_dma_through_an_owned_mapping() {
        let fd = open();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let pci = pci::isolated_edu().expect("an edu device alone in its group");
        let dev = VfioDevice::open(&pci.vfio_cdev().expect("cdev")).expect("open cdev");
        let dev_id = DeviceId::from_raw(dev.bind(fd.as_fd()).expect("BIND_IOMMUFD"));

        // The real IOMMU's registers, decoded.
        let info = fd.hw_info(dev_id).expect("GET_HW_INFO");
        match info.data {
            HwInfoData::IntelVtd {
                cap_reg, ecap_reg, ..
            } => {
                assert_ne!(cap_reg, 0);
                assert_ne!(ecap_reg, 0);
            }
            other => panic!("expected VT-d information, got {other:?}"),
        }
        assert_eq!(info.data_type, 1);

        // Dirty tracking: allocatable exactly when the IOMMU says so.
        let dirty = Hwpt::alloc(&fd, dev_id, &ioas, HwptFlags::DIRTY_TRACKING);
        if info.capabilities.contains(HwCapabilities::DIRTY_TRACKING) {
            let hwpt = dirty.expect("HWPT_ALLOC with DIRTY_TRACKING on a capable IOMMU");
            hwpt.destroy().expect("DESTROY");
        } else {
            let e = dirty.unwrap_err();
            assert!(e.is_unsupported(), "{e}");
        }

        // An explicitly allocated HWPT, with the device attached to it.
        let hwpt = Hwpt::alloc(&fd, dev_id, &ioas, HwptFlags::empty()).expect("HWPT_ALLOC");
        assert_eq!(
            dev.attach(hwpt.id().raw()).expect("ATTACH"),
            hwpt.id().raw()
        );

        // The IOMMU narrows the IOAS: its page size, and no MSI window.
        let ranges = ioas.iova_ranges().expect("IOVA_RANGES");
        assert_eq!(ranges.alignment, page());
        assert!(ranges.ranges.len() >= 2, "{:?}", ranges.ranges);
        assert!(!ranges.ranges.iter().any(|r| r.contains(MSI_WINDOW)));
        let over_msi = ioas
            .map_owned(
                MmapRegion::new(page() as usize).expect("mmap"),
                Some(MSI_WINDOW),
                MapFlags::RW,
            )
            .is_err();
        assert!(over_msi, "mapping over the MSI window must fail");

        let edu = Edu::new(&dev).expect("edu BAR0");
        assert!(edu.alive());
        let iova = Iova(0x20_0000);
        let m = ioas
            .map_owned(
                MmapRegion::new(8192).expect("mmap"),
                Some(iova),
                MapFlags::RW,
            )
            .expect("MAP");
        assert!(iova.raw() + m.len() <= EDU_DMA_LIMIT);
        assert!(ranges.can_map(iova, m.len()));

        // RAM -> device -> RAM through the IOMMU.
        let len = EDU_MAX_TRANSFER as usize;
        let data = pattern(len, 11);
        m.region().write_at(0, &data).expect("write");
        edu.dma_from_memory(iova.raw(), 0, len as u64)
            .expect("DMA to the device");
        edu.dma_to_memory(0, iova.raw() + 4096, len as u64)
            .expect("DMA to memory");
        let mut back = vec![0u8; len];
        m.region().read_at(4096, &mut back).expect("read");
        assert_eq!(back, data, "the device wrote back something else");

        // Once the mapping is gone, the device's writes reach nothing.
        let region = m.unmap().expect("UNMAP");
        region.write_at(4096, &vec![0u8; len]).expect("write");
        edu.dma_to_memory(0, iova.raw() + 4096, len as u64)
            .expect("DMA to an unmapped IOVA completes on the device side");
        region.read_at(4096, &mut back).expect("read");
        assert!(
            back.iter().all(|&b| b == 0),
            "DMA reached memory after unmap"
        );

        // A file mapping is as good for DMA.
        if fd.probe().supports(iommufd::Command::IoasMapFile) {
            use std::os::unix::fs::FileExt;
            let file = super::common::memfd(8192);
            file.write_all_at(&data, 0).expect("pwrite");
            let at = ioas
                .map_file(&file, 0, 8192, Some(iova), MapFlags::RW)
                .expect("MAP_FILE");
            edu.dma_from_memory(at.raw(), 0, len as u64)
                .expect("DMA from the file");
            edu.dma_to_memory(0, at.raw() + 4096, len as u64)
                .expect("DMA to the file");
            let mut back = vec![0u8; len];
            file.read_exact_at(&mut back, 4096).expect("pread");
            assert_eq!(back, data);
            ioas.unmap(at, 8192).expect("UNMAP");
        }

        // The HWPT is busy while the device uses it.
        super::common::assert_errno(fd.destroy_raw(hwpt.id().raw()), libc::EBUSY);
        dev.detach().expect("DETACH");
        drop(edu);
        drop(dev);
        hwpt.destroy().expect("DESTROY HWPT after detach");
        ioas.destroy().expect("DESTROY IOAS");
    }
}
