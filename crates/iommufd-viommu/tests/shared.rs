//! One IOAS for every device: the HWPT compatibility search on the kernel's mock
//! IOMMU (devices with and without dirty tracking), and guest RAM pinned once.

#[cfg(feature = "selftest")]
mod mock {
    use iommufd::selftest::{self, MockDevice, MockDeviceFlags};
    use iommufd::{HwptFlags, Ioas, Iommufd, MapFlags, PageTable};
    use iommufd_viommu::SharedIoas;

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn devices_share_hwpts_where_the_iommu_allows() {
        assert!(
            std::path::Path::new(iommufd::DEFAULT_PATH).exists(),
            "run in the guest lab"
        );
        let fd = Iommufd::open().unwrap();
        let ioas = Ioas::alloc(&fd).unwrap();
        let shared = SharedIoas::new(ioas.clone(), HwptFlags::DIRTY_TRACKING);
        let a = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).unwrap();
        let b = MockDevice::alloc(&ioas, MockDeviceFlags::NO_DIRTY, 2).unwrap();
        let c = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 3).unwrap();
        let ha = shared.attach(&a).unwrap();
        // b cannot use a dirty-tracking HWPT (EINVAL), nor have one: a plain one.
        let hb = shared.attach(&b).unwrap();
        let hc = shared.attach(&c).unwrap();
        assert_eq!(ha, hc, "c reuses a's HWPT");
        assert_ne!(ha, hb);
        let hwpts = shared.hwpts();
        assert_eq!(hwpts.len(), 2);
        assert_eq!(hwpts[0].flags(), HwptFlags::DIRTY_TRACKING);
        assert_eq!(hwpts[1].flags(), HwptFlags::empty());
        drop(hwpts);
        assert!(matches!(b.device().attached_to(), Some(PageTable::Hwpt(h)) if h.id() == hb));
        // Guest RAM is mapped, and pinned, once for the three devices.
        let len = 1 << 16;
        let buf = iommufd_lab::mem::buffer(len);
        // SAFETY: `len` bytes of the buffer this test owns.
        unsafe { std::ptr::write_bytes(buf.as_ptr(), 7, len) };
        let m = shared.ioas().map(buf, None, MapFlags::RW).unwrap();
        selftest::check_refs(&fd, m.memory().as_ptr(), len as u64, 1).unwrap();
        // Unused HWPTs go.
        drop(b);
        assert_eq!(shared.prune(), 1);
        assert_eq!(shared.hwpts().len(), 1);
        assert_eq!(shared.prune(), 0);
        assert!(format!("{shared:?}").contains("hwpts"));
        drop((a, c, m));
    }
}
