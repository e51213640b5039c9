//! Real DMA through mappings made with this crate: QEMU's `edu` device behind the
//! emulated Intel VT-d of the guest lab, bound through its VFIO cdev.
//!
//! Ignored on the host; the guest lab runs them with `--ignored`.

mod common;

mod vfio {
    use std::io;
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use super::common::{assert_errno, memfd, open, page};
    use iommufd::{
        Binding, Device, Error, HwCapabilities, HwInfoData, Hwpt, HwptFlags, Ioas, Iommufd, Iova,
        MapFlags,
    };
    use iommufd_lab::edu::{EDU_DMA_LIMIT, EDU_MAX_TRANSFER, Edu};
    use iommufd_lab::mem::{RegionBytes, buffer};
    use iommufd_lab::pci;
    use iommufd_lab::vfio::VfioDevice;

    /// The VT-d interrupt remapping window, reserved in every IOAS a VT-d device uses.
    #[cfg(not(target_arch = "aarch64"))]
    const MSI_WINDOW: Iova = Iova(0xfee0_0000);
    /// arm64: the software MSI window Linux reserves (`MSI_IOVA_BASE`).
    #[cfg(target_arch = "aarch64")]
    const MSI_WINDOW: Iova = Iova(0x800_0000);

    /// The label the test binds the edu device under (a guest BDF, say).
    const LABEL: u64 = 0x28;

    /// The lab's raw VFIO cdev as the binding of an [`iommufd::Device`]: attach and
    /// detach through the cdev's ioctls. The device is unbound when the last `Arc`
    /// of the cdev (and every BAR mapping of it) is gone.
    #[derive(Debug)]
    struct LabBinding(Arc<VfioDevice>);

    /// An error of the cdev's ioctls, in the crate's terms.
    fn vfio_error(op: &'static str, e: &io::Error) -> Error {
        Error::from_errno(op, "the edu cdev", e.raw_os_error().unwrap_or(libc::EIO))
    }

    impl Binding for LabBinding {
        fn attach(&self, pasid: Option<u32>, pt: u32, _replace: bool) -> iommufd::Result<u32> {
            const OP: &str = "VFIO_DEVICE_ATTACH_IOMMUFD_PT";
            if pasid.is_some() {
                // The lab's raw helper attaches whole devices only.
                return Err(Error::from_errno(OP, "the edu cdev", libc::EOPNOTSUPP));
            }
            self.0.attach(pt).map_err(|e| vfio_error(OP, &e))
        }

        fn detach(&self, pasid: Option<u32>) -> iommufd::Result<()> {
            const OP: &str = "VFIO_DEVICE_DETACH_IOMMUFD_PT";
            if pasid.is_some() {
                return Err(Error::from_errno(OP, "the edu cdev", libc::EOPNOTSUPP));
            }
            self.0.detach().map_err(|e| vfio_error(OP, &e))
        }
    }

    /// Binds the cdev to `fd` (`VFIO_DEVICE_BIND_IOMMUFD`) under `label`, as a
    /// binding layer does: the label first, then the bind, then the `Device`.
    fn bind(fd: &Iommufd, cdev: &Arc<VfioDevice>, label: u64, name: &str) -> Device {
        let label = fd.reserve_label(label).expect("a free label");
        let id = cdev.bind(fd.as_fd()).expect("BIND_IOMMUFD");
        Device::new(label, id, name, Box::new(LabBinding(cdev.clone())), None)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, an IOMMU and an edu device (cargo xtask vmtest)"]
    fn edu_dma_through_an_owned_mapping() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let pci = pci::isolated_edu().expect("an edu device alone in its group");
        let cdev = Arc::new(VfioDevice::open(&pci.vfio_cdev().expect("cdev")).expect("open cdev"));
        let dev = bind(&fd, &cdev, LABEL, pci.bdf());
        assert_eq!(fd.device_by_label(LABEL), Some(dev.id()));
        assert_eq!(fd.label_of(dev.id()), Some(LABEL));

        // The real IOMMU's registers, decoded.
        let info = dev.hw_info().expect("GET_HW_INFO");
        assert_eq!((info.device, info.label), (dev.id(), LABEL));
        match info.data {
            HwInfoData::IntelVtd {
                cap_reg, ecap_reg, ..
            } => {
                assert_ne!(cap_reg, 0);
                assert_ne!(ecap_reg, 0);
                assert_eq!(info.data_type, 1);
            }
            // The arm64 lab.
            HwInfoData::ArmSmmuV3 { idr, .. } => {
                assert_ne!(idr[0], 0);
                assert_eq!(info.data_type, 2);
            }
            other => panic!("expected VT-d or SMMUv3 information, got {other:?}"),
        }

        // Dirty tracking: allocatable exactly when the IOMMU says so.
        let dirty = Hwpt::alloc(&ioas, &dev, HwptFlags::DIRTY_TRACKING);
        if info.capabilities.contains(HwCapabilities::DIRTY_TRACKING) {
            let hwpt = dirty.expect("HWPT_ALLOC with DIRTY_TRACKING on a capable IOMMU");
            hwpt.destroy().expect("DESTROY");
        } else {
            let e = dirty.unwrap_err();
            assert!(e.is_unsupported(), "{e}");
        }

        // An explicitly allocated HWPT, with the device attached to it.
        let hwpt = Hwpt::alloc(&ioas, &dev, HwptFlags::empty()).expect("HWPT_ALLOC");
        assert_eq!(dev.attach(&hwpt).expect("ATTACH"), hwpt.id());

        // The IOMMU narrows the IOAS: its page size, and no MSI window.
        let ranges = ioas.iova_ranges().expect("IOVA_RANGES");
        assert_eq!(ranges.alignment, page());
        assert!(ranges.ranges.len() >= 2, "{:?}", ranges.ranges);
        assert!(!ranges.ranges.iter().any(|r| r.contains(MSI_WINDOW)));
        let over_msi = ioas
            .map(buffer(page() as usize), Some(MSI_WINDOW), MapFlags::RW)
            .is_err();
        assert!(over_msi, "mapping over the MSI window must fail");

        let edu = Edu::new(&cdev).expect("edu BAR0");
        assert!(edu.alive());
        let iova = Iova(0x20_0000);
        let m = ioas
            .map(buffer(8192), Some(iova), MapFlags::RW)
            .expect("MAP");
        assert!(iova.raw() + m.len() <= EDU_DMA_LIMIT);
        assert!(ranges.can_map(iova, m.len()));

        // RAM -> device -> RAM through the IOMMU.
        let len = EDU_MAX_TRANSFER as usize;
        let data = pattern(len, 11);
        m.memory().write_at(0, &data);
        edu.dma_from_memory(iova.raw(), 0, len as u64)
            .expect("DMA to the device");
        edu.dma_to_memory(0, iova.raw() + 4096, len as u64)
            .expect("DMA to memory");
        let back = m.memory().read_at(4096, len);
        assert_eq!(back, data, "the device wrote back something else");

        // Once the mapping is gone, the device's writes reach nothing.
        let region = m.unmap().expect("UNMAP");
        region.write_at(4096, &vec![0u8; len]);
        edu.dma_to_memory(0, iova.raw() + 4096, len as u64)
            .expect("DMA to an unmapped IOVA completes on the device side");
        let back = region.read_at(4096, len);
        assert!(
            back.iter().all(|&b| b == 0),
            "DMA reached memory after unmap"
        );

        // A file mapping is as good for DMA.
        if fd.probe().supports(iommufd::Command::IoasMapFile) {
            use std::os::unix::fs::FileExt;
            let file = memfd(8192);
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

        // The HWPT is busy while the device uses it: the kernel refuses to destroy it...
        assert_errno(fd.destroy_raw(hwpt.id().raw()), libc::EBUSY);
        // ...and the crate does not even ask: the attached device holds the HWPT.
        let refused = hwpt.destroy().expect_err("the device holds the HWPT");
        assert!(
            matches!(refused.error, Error::InUse { .. }),
            "{}",
            refused.error
        );
        let hwpt = refused.object;
        dev.detach().expect("DETACH");
        drop(edu);
        drop(dev);
        drop(cdev);
        hwpt.destroy().expect("DESTROY HWPT after detach");
        ioas.destroy().expect("DESTROY IOAS");
    }
}
