//! Behaviour with the kernel's mock IOMMU (`CONFIG_IOMMUFD_TEST`), ported from the
//! kernel's selftests (tools/testing/selftests/iommu/iommufd.c: fixtures
//! `iommufd_ioas` with mock domains, `iommufd_mock_domain`, `iommufd_dirty_tracking`).
//!
//! Every test drives `IOMMU_TEST_CMD`, so all of them live in the module `mock`: the
//! guest lab runs those in their own boot where the mock IOMMU can attach. Ignored on
//! the host.

mod common;

#[cfg(feature = "selftest")]
mod mock {
    use super::common::{assert_errno, kernel_version, open, page};
    use iommufd::selftest::{
        self, HW_INFO_SELFTEST_REGVAL, MOCK_APERTURE_LAST, MOCK_APERTURE_START, MOCK_PAGE_SIZE,
        MockDevice, MockDeviceFlags,
    };
    use iommufd::uapi::{self, selftest as st};
    use iommufd::{
        DeviceId, DirtyBitmap, DirtyReadFlags, Error, HW_INFO_TYPE_SELFTEST, HugePages,
        HwCapabilities, HwInfoData, Hwpt, HwptFlags, Ioas, Iommufd, Iova, IovaRange, MapFlags,
        Refused,
    };
    use iommufd_lab::mem::{RegionBytes, buffer};
    use std::os::fd::AsFd;

    fn aperture() -> IovaRange {
        IovaRange::new(Iova(MOCK_APERTURE_START), Iova(MOCK_APERTURE_LAST)).expect("aperture")
    }

    // Raw commands, for the few kernel behaviours the typed API no longer lets a
    // caller ask for: page tables named by a bare id (the HWPT the kernel made for a
    // mock device, a device id as a page table) and a mock device that no handle owns
    // (a `MockDevice` holds the file open and destroys itself when dropped). They go
    // through the same file, beside the library's own bookkeeping.

    /// `ioctl(2)` on the file, the errno made an [`Error`] like the library's.
    fn raw_ioctl<T>(
        fd: &Iommufd,
        request: libc::c_ulong,
        arg: &mut T,
        op: &'static str,
        object: impl std::fmt::Display,
    ) -> Result<(), Error> {
        iommufd_lab::ioctl_with_mut(fd.as_fd(), request, arg)
            .map_err(|e| Error::from_errno(op, object, e.raw_os_error().unwrap_or(libc::EIO)))
    }

    /// A zeroed `IOMMU_TEST_CMD` of `op` on object `id`.
    fn raw_test_cmd(op: u32, id: u32) -> st::iommu_test_cmd {
        // SAFETY: the command is integers and a union of integer structures: all
        // zeroes is a valid value.
        let mut cmd: st::iommu_test_cmd = unsafe { std::mem::zeroed() };
        cmd.size = u32::try_from(size_of::<st::iommu_test_cmd>()).expect("size");
        cmd.op = op;
        cmd.id = id;
        cmd
    }

    /// `IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE` of `mock` to the page table with raw id
    /// `pt`, behind the library's back; returns the raw id of the HWPT it is now
    /// attached to. The library still believes the device attached where it last put
    /// it, so a test using this ends with a `mock.replace(..)` of its own.
    fn raw_mock_replace(mock: &MockDevice, pt: u32) -> Result<u32, Error> {
        let mut cmd = raw_test_cmd(st::IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, mock.stdev_id().raw());
        cmd.__bindgen_anon_1.mock_domain_replace =
            st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_4 { pt_id: pt };
        raw_ioctl(
            mock.device().iommufd(),
            uapi::IOMMU_TEST_CMD,
            &mut cmd,
            "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE",
            mock.stdev_id(),
        )?;
        // SAFETY: the kernel answered in the `mock_domain_replace` member; integers.
        Ok(unsafe { cmd.__bindgen_anon_1.mock_domain_replace.pt_id })
    }

    /// `IOMMU_TEST_OP_MOCK_DOMAIN` on `ioas` without a [`MockDevice`]: nothing
    /// destroys the mock device but closing the file. Returns (stdev, hwpt, idev).
    fn raw_mock_domain(ioas: &Ioas) -> Result<(u32, u32, u32), Error> {
        let mut cmd = raw_test_cmd(st::IOMMU_TEST_OP_MOCK_DOMAIN, ioas.id().raw());
        raw_ioctl(
            ioas.iommufd(),
            uapi::IOMMU_TEST_CMD,
            &mut cmd,
            "IOMMU_TEST_OP_MOCK_DOMAIN",
            ioas.id(),
        )?;
        // SAFETY: the kernel answered in the `mock_domain` member; integers.
        let md = unsafe { cmd.__bindgen_anon_1.mock_domain };
        Ok((md.out_stdev_id, md.out_hwpt_id, md.out_idev_id))
    }

    /// `IOMMU_HWPT_ALLOC` for `dev` on the object with raw id `pt`, whatever it is
    /// (`Hwpt::alloc` only takes an IOAS); returns the raw id of the new HWPT.
    fn raw_hwpt_alloc(fd: &Iommufd, dev: DeviceId, pt: u32) -> Result<u32, Error> {
        let mut a = uapi::iommu_hwpt_alloc {
            size: u32::try_from(size_of::<uapi::iommu_hwpt_alloc>()).expect("size"),
            dev_id: dev.raw(),
            pt_id: pt,
            data_type: uapi::IOMMU_HWPT_DATA_NONE,
            ..Default::default()
        };
        raw_ioctl(fd, uapi::IOMMU_HWPT_ALLOC, &mut a, "IOMMU_HWPT_ALLOC", dev)?;
        Ok(a.out_hwpt_id)
    }

    /// Asserts that the library refused to destroy an object because other handles
    /// hold it ([`Error::InUse`]: nothing was sent to the kernel), and returns it.
    #[track_caller]
    fn assert_in_use<T>(r: Result<(), Refused<T>>) -> T {
        match r {
            Ok(()) => panic!("destroyed, but other handles hold it: expected Error::InUse"),
            Err(refused) => {
                assert!(
                    matches!(refused.error, Error::InUse { .. }),
                    "{}",
                    refused.error
                );
                refused.object
            }
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn ioas_map_to_mock_domain() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        assert_ne!(mock.hwpt_id().raw(), ioas.id().raw());
        assert_ne!(mock.device().id().raw(), mock.stdev_id().raw());

        // The attached mock IOMMU narrows the IOAS to its aperture and page size.
        let r = ioas.iova_ranges().expect("IOVA_RANGES");
        assert_eq!(r.ranges, [aperture()]);
        assert_eq!(r.alignment, MOCK_PAGE_SIZE);

        let len = 4 * page();
        let m = ioas
            .map(buffer(len as usize), None, MapFlags::RW)
            .expect("MAP");
        let range = IovaRange::from_len(m.iova(), len).expect("range");
        assert!(aperture().contains_range(&range), "{range}");
        // The kernel confirms its mock page table points at our pages...
        mock.check_map(m.iova(), m.memory().as_ptr(), len)
            .expect("MD_CHECK_MAP");
        // ...and not at other memory.
        let other = buffer(len as usize);
        other.fill(1);
        assert_errno(mock.check_map(m.iova(), other.as_ptr(), len), libc::EINVAL);

        // Mappings made before a device attaches reach its domain too.
        // (At the top of the aperture: kernel-chosen IOVAs start at the bottom.)
        let top = Iova(MOCK_APERTURE_LAST + 1 - len);
        let fixed = ioas.map(other, Some(top), MapFlags::RW).expect("MAP fixed");
        assert_eq!(fixed.iova(), top);
        let mock2 =
            MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 2).expect("second MOCK_DOMAIN");
        mock2
            .check_map(m.iova(), m.memory().as_ptr(), len)
            .expect("MD_CHECK_MAP 2");
        mock2
            .check_map(fixed.iova(), fixed.memory().as_ptr(), len)
            .expect("MD_CHECK_MAP fixed");

        // Lengths must be multiples of the mock page size.
        let small = buffer(page() as usize);
        // SAFETY: refused by the kernel, or unmapped right away; `small` outlives it.
        unsafe {
            assert_errno(
                ioas.map_user(small.as_ptr(), 1000, None, MapFlags::RW),
                libc::EINVAL,
            );
            let iova = ioas
                .map_user(small.as_ptr(), MOCK_PAGE_SIZE, None, MapFlags::RW)
                .expect("MAP one mock page");
            assert_eq!(
                ioas.unmap(iova, MOCK_PAGE_SIZE).expect("UNMAP"),
                MOCK_PAGE_SIZE
            );
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn pages_are_pinned_once() {
        let fd = open();
        let len = 4 * page();
        let buf = buffer(len as usize);
        buf.fill(0xa5); // fault the pages in
        selftest::check_refs(&fd, buf.as_ptr(), len, 0).expect("unpinned");
        let a = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let b = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let _ma = MockDevice::alloc(&a, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN a");
        let _mb = MockDevice::alloc(&b, MockDeviceFlags::empty(), 2).expect("MOCK_DOMAIN b");
        // SAFETY: `buf` outlives both IOASes; both ranges are unmapped below.
        unsafe {
            let iova = a
                .map_user(buf.as_ptr(), len, None, MapFlags::RW)
                .expect("MAP");
            selftest::check_refs(&fd, buf.as_ptr(), len, 1).expect("pinned once");
            // A copy shares the pinned pages instead of pinning them again.
            let copy = b
                .copy_from(&a, iova, len, None, MapFlags::RW)
                .expect("COPY");
            selftest::check_refs(&fd, buf.as_ptr(), len, 1).expect("still pinned once");
            a.unmap(iova, len).expect("UNMAP");
            selftest::check_refs(&fd, buf.as_ptr(), len, 1).expect("the copy keeps the pin");
            b.unmap(copy, len).expect("UNMAP copy");
        }
        selftest::check_refs(&fd, buf.as_ptr(), len, 0).expect("unpinned again");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn copy_into_a_mock_domain() {
        let fd = open();
        let len = 2 * page();
        let buf = buffer(len as usize);
        let src = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let dst = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let mock = MockDevice::alloc(&dst, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        // SAFETY: `buf` outlives both IOASes.
        unsafe {
            let at = src
                .map_user(buf.as_ptr(), len, None, MapFlags::RW)
                .expect("MAP");
            let copy = dst
                .copy_from(&src, at, len, Some(Iova(MOCK_APERTURE_START)), MapFlags::RW)
                .expect("COPY");
            assert_eq!(copy, Iova(MOCK_APERTURE_START));
        }
        mock.check_map(Iova(MOCK_APERTURE_START), buf.as_ptr(), len)
            .expect("MD_CHECK_MAP of the copy");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn hw_info_of_a_mock_device() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        let info = mock.device().hw_info().expect("GET_HW_INFO");
        assert_eq!(
            info.data,
            HwInfoData::Selftest {
                flags: 0,
                test_reg: HW_INFO_SELFTEST_REGVAL
            }
        );
        assert_eq!(HW_INFO_SELFTEST_REGVAL, 0xdeadbeef);
        assert_eq!(info.data_type, HW_INFO_TYPE_SELFTEST);
        assert_eq!(info.data_len, 8);
        assert!(info.capabilities.contains(HwCapabilities::DIRTY_TRACKING));
        assert_eq!(info.max_pasid_log2, 0);
        assert_eq!((info.device, info.label), (mock.device().id(), 1));

        if fd.probe().hw_info_input_type {
            let typed = mock
                .device()
                .hw_info_of_type(HW_INFO_TYPE_SELFTEST)
                .expect("GET_HW_INFO of type SELFTEST");
            assert_eq!(typed.data, info.data);
            // The mock has no VT-d data.
            let e = mock.device().hw_info_of_type(1).unwrap_err();
            assert!(e.is_unsupported(), "{e}");
        } else {
            let e = mock
                .device()
                .hw_info_of_type(HW_INFO_TYPE_SELFTEST)
                .unwrap_err();
            assert!(e.is_unsupported(), "{e}");
        }

        let no_dirty =
            MockDevice::alloc(&ioas, MockDeviceFlags::NO_DIRTY, 2).expect("MOCK_DOMAIN_FLAGS");
        let info = no_dirty.device().hw_info().expect("GET_HW_INFO");
        assert!(!info.capabilities.contains(HwCapabilities::DIRTY_TRACKING));
        assert_eq!(info.label, 2);

        if kernel_version() >= (6, 15) {
            let pasid = MockDevice::alloc(&ioas, MockDeviceFlags::PASID, 3).expect("PASID mock");
            assert_eq!(
                pasid
                    .device()
                    .hw_info()
                    .expect("GET_HW_INFO")
                    .max_pasid_log2,
                20
            );
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn dirty_tracking_on_a_mock_hwpt() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        // 640 KiB: 320 mock pages, five bitmap words with a partial last one.
        let len = 640 << 10;
        let start = Iova(MOCK_APERTURE_START);
        let dirty_ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        // Without huge pages the IOMMU maps in CPU pages, each one or more mock
        // pages, whose dirty state is one (as in the kernel's selftest fixture).
        dirty_ioas
            .set_huge_pages(HugePages::Split)
            .expect("HUGE_PAGES off");
        let per_page = page() / MOCK_PAGE_SIZE;
        let _m = dirty_ioas
            .map(buffer(len as usize), Some(start), MapFlags::RW)
            .expect("MAP");
        let hwpt = Hwpt::alloc(&dirty_ioas, &mock, HwptFlags::DIRTY_TRACKING)
            .expect("HWPT_ALLOC with DIRTY_TRACKING");
        hwpt.enable_dirty_tracking().expect("SET_DIRTY_TRACKING on");

        // Nothing written yet.
        let clean = hwpt
            .get_dirty_bitmap(start, len, MOCK_PAGE_SIZE, DirtyReadFlags::empty())
            .expect("GET_DIRTY_BITMAP");
        assert_eq!(clean.pages(), len / MOCK_PAGE_SIZE);
        assert_eq!(clean.count_dirty(), 0);

        // Let the mock IOMMU mark every other CPU page (all its mock pages) as
        // written by DMA.
        let mut marks = DirtyBitmap::new(start, len, MOCK_PAGE_SIZE).expect("bitmap");
        for p in 0..marks.pages() {
            if (p / per_page) % 2 == 0 {
                marks.set(p);
            }
        }
        let marked = marks.count_dirty();
        assert_eq!(marked, marks.pages() / 2);
        assert_eq!(
            selftest::set_dirty(&hwpt, &marks).expect("TEST_OP_DIRTY"),
            marked
        );

        // The HWPT reports exactly those, and reading clears them.
        let got = hwpt
            .get_dirty_bitmap(start, len, MOCK_PAGE_SIZE, DirtyReadFlags::empty())
            .expect("GET_DIRTY_BITMAP");
        assert_eq!(got.as_words(), marks.as_words());
        assert_eq!(got.count_dirty(), marked);
        let second = Iova(start.raw() + 2 * page());
        assert_eq!(got.dirty_iovas().nth(per_page as usize), Some(second));
        let again = hwpt
            .get_dirty_bitmap(start, len, MOCK_PAGE_SIZE, DirtyReadFlags::empty())
            .expect("GET_DIRTY_BITMAP");
        assert_eq!(again.count_dirty(), 0, "reading must clear");

        // With NO_CLEAR the state stays.
        selftest::set_dirty(&hwpt, &marks).expect("TEST_OP_DIRTY");
        for _ in 0..2 {
            let kept = hwpt
                .get_dirty_bitmap(start, len, MOCK_PAGE_SIZE, DirtyReadFlags::NO_CLEAR)
                .expect("GET_DIRTY_BITMAP no-clear");
            assert_eq!(kept.as_words(), marks.as_words());
        }

        // At CPU-page granularity: every other page.
        let coarse = hwpt
            .get_dirty_bitmap(start, len, page(), DirtyReadFlags::empty())
            .expect("GET_DIRTY_BITMAP per CPU page");
        assert_eq!(coarse.pages(), len / page());
        assert_eq!(
            coarse.iter_dirty_pages().collect::<Vec<_>>(),
            (0..len / page()).step_by(2).collect::<Vec<_>>()
        );

        // A sub-range: the bits are relative to its start.
        selftest::set_dirty(&hwpt, &marks).expect("TEST_OP_DIRTY");
        let sub_start = Iova(start.raw() + 32 * page());
        let sub = hwpt
            .get_dirty_bitmap(
                sub_start,
                64 * page(),
                MOCK_PAGE_SIZE,
                DirtyReadFlags::empty(),
            )
            .expect("GET_DIRTY_BITMAP sub-range");
        assert_eq!(sub.count_dirty(), 32 * per_page);
        assert!(sub.is_dirty(0) && !sub.is_dirty(per_page));

        hwpt.disable_dirty_tracking()
            .expect("SET_DIRTY_TRACKING off");
        // The mock refuses to mark pages while tracking is off.
        assert_errno(selftest::set_dirty(&hwpt, &marks), libc::EINVAL);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn dirty_tracking_needs_a_capable_iommu() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let plain = MockDevice::alloc(&ioas, MockDeviceFlags::NO_DIRTY, 1).expect("NO_DIRTY mock");
        let e = Hwpt::alloc(&ioas, &plain, HwptFlags::DIRTY_TRACKING).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        let hwpt = Hwpt::alloc(&ioas, &plain, HwptFlags::empty()).expect("HWPT_ALLOC");
        let e = hwpt.enable_dirty_tracking().unwrap_err();
        assert!(e.is_unsupported(), "{e}");

        // A device without dirty tracking cannot join a dirty-tracking HWPT.
        let capable = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 2).expect("MOCK_DOMAIN");
        let dirty = Hwpt::alloc(&ioas, &capable, HwptFlags::DIRTY_TRACKING)
            .expect("HWPT_ALLOC with DIRTY_TRACKING");
        assert_errno(
            MockDevice::alloc(&dirty, MockDeviceFlags::NO_DIRTY, 3),
            libc::EINVAL,
        );
        let attached = MockDevice::alloc(&dirty, MockDeviceFlags::empty(), 4).expect("attach");
        assert_eq!(attached.hwpt_id(), dirty.id());
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn reserved_regions_and_iova_ranges() {
        let fd = open();
        let p = page();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        selftest::add_reserved(&ioas, Iova(p), p).expect("ADD_RESERVED");
        // Two ranges now: the first IOVA_RANGES call finds too small a buffer
        // (EMSGSIZE) and the library asks again.
        let r = ioas.iova_ranges().expect("IOVA_RANGES");
        assert_eq!(
            r.ranges,
            [
                IovaRange::new(Iova(0), Iova(p - 1)).expect("range"),
                IovaRange::new(Iova(2 * p), Iova(u64::MAX)).expect("range"),
            ]
        );
        // With a mock domain the aperture dominates.
        let _mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        assert_eq!(
            ioas.iova_ranges().expect("IOVA_RANGES").ranges,
            [aperture()]
        );
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn allowed_iovas_versus_reserved_regions() {
        // area_auto_iova and area_allowed.
        let fd = open();
        let p = page();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let reserved = IovaRange::from_len(Iova(4 * p), 100 * p).expect("range");
        selftest::add_reserved(&ioas, reserved.start(), 100 * p).expect("ADD_RESERVED");
        // Kernel-chosen IOVAs avoid the reserved region.
        let mut maps = Vec::new();
        for i in 1..=10u64 {
            let m = ioas
                .map(buffer((i * p) as usize), None, MapFlags::RW)
                .expect("MAP");
            let r = IovaRange::from_len(m.iova(), i * p).expect("range");
            assert!(!r.overlaps(&reserved), "{r} overlaps {reserved}");
            maps.push(m);
        }
        drop(maps);
        // An allowed range over the reserved one is refused.
        let over = IovaRange::new(Iova(p), Iova(600 * p)).expect("range");
        assert_errno(ioas.allow_iovas(&[over]), libc::EADDRINUSE);
        let allowed = IovaRange::new(Iova(200 * p), Iova(600 * p - 1)).expect("range");
        ioas.allow_iovas(&[allowed]).expect("ALLOW_IOVAS");
        let m = ioas
            .map(buffer(p as usize), None, MapFlags::RW)
            .expect("MAP");
        assert!(allowed.contains(m.iova()));
        drop(m);

        // And a reserved region inside an allowed range is refused.
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let allowed = IovaRange::from_len(Iova(MOCK_APERTURE_START), 600 * p).expect("range");
        ioas.allow_iovas(&[allowed]).expect("ALLOW_IOVAS");
        let inside = Iova(MOCK_APERTURE_START + p);
        assert_errno(selftest::add_reserved(&ioas, inside, p), libc::EADDRINUSE);
        ioas.allow_iovas(&[]).expect("ALLOW_IOVAS none");
        selftest::add_reserved(&ioas, inside, p).expect("ADD_RESERVED");
        assert_errno(ioas.allow_iovas(&[allowed]), libc::EADDRINUSE);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn drop_order_and_busy_objects() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        let (hwpt, stdev) = (mock.hwpt_id(), mock.stdev_id());
        // Objects in use cannot be destroyed: the library refuses to destroy the IOAS
        // the mock device holds (without asking the kernel) and gives it back...
        let ioas = assert_in_use(ioas.destroy());
        // ...and the kernel refuses too.
        assert_errno(fd.destroy_raw(ioas.id().raw()), libc::EBUSY);
        assert_errno(fd.destroy_raw(hwpt.raw()), libc::EBUSY);
        // Dropping the mock device destroys it and the HWPT created for it...
        drop(mock);
        assert_errno(fd.destroy_raw(stdev.raw()), libc::ENOENT);
        assert_errno(fd.destroy_raw(hwpt.raw()), libc::ENOENT);
        // ...after which the IOAS is free to go.
        let id = ioas.id();
        ioas.destroy().expect("DESTROY");
        assert_errno(fd.destroy_raw(id.raw()), libc::ENOENT);

        // The other order is no error: dropping the IOAS handle first leaves the
        // kernel object to the mock device, which destroys it when it goes itself.
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let id = ioas.id();
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 2).expect("MOCK_DOMAIN");
        let hwpt = mock.hwpt_id();
        drop(ioas);
        assert_errno(fd.destroy_raw(id.raw()), libc::EBUSY);
        drop(mock);
        assert_errno(fd.destroy_raw(hwpt.raw()), libc::ENOENT);
        assert_errno(fd.destroy_raw(id.raw()), libc::ENOENT);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn hwpt_alloc_attach_and_replace() {
        // alloc_hwpt of the iommufd_mock_domain fixture.
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        let dev = mock.device().id();
        // The page-table target must be an IOAS (here: the id of a device). The typed
        // `Hwpt::alloc` only takes an IOAS, so the kernel is asked with the raw command.
        assert_errno(raw_hwpt_alloc(&fd, dev, dev.raw()), libc::EINVAL);
        // Unknown flags: unsupported.
        let e = Hwpt::alloc(&ioas, &mock, HwptFlags::from_bits_retain(1 << 30)).unwrap_err();
        assert!(e.is_unsupported(), "{e}");

        let h0 = Hwpt::alloc(&ioas, &mock, HwptFlags::empty()).expect("HWPT_ALLOC");
        let h1 = Hwpt::alloc(&ioas, &mock, HwptFlags::NEST_PARENT).expect("HWPT_ALLOC nest parent");
        // A HWPT a device is attached to cannot be destroyed: the library refuses (the
        // device holds it) and the kernel refuses too.
        assert_eq!(mock.replace(&h0).expect("REPLACE"), h0.id());
        let h0 = assert_in_use(h0.destroy());
        assert_errno(fd.destroy_raw(h0.id().raw()), libc::EBUSY);
        assert_eq!(mock.replace(&h1).expect("REPLACE"), h1.id());
        let h1 = assert_in_use(h1.destroy());
        assert_errno(fd.destroy_raw(h1.id().raw()), libc::EBUSY);
        let auto = mock.replace(&ioas).expect("REPLACE to the IOAS");
        assert_ne!(auto, h0.id());
        h1.destroy().expect("DESTROY detached HWPT");

        let on = MockDevice::alloc(&h0, MockDeviceFlags::empty(), 2).expect("attach to HWPT");
        assert_eq!(on.hwpt_id(), h0.id());
        drop(on);
        h0.destroy().expect("DESTROY");

        // A foreign target is refused.
        let other = open();
        let other_ioas = Ioas::alloc(&other).expect("IOAS_ALLOC");
        let e = mock.replace(&other_ioas).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    }

    /// The kernel's PASID attach path on its PASID-capable mock device (width 20):
    /// attach, check, replace, detach; the rules of the kernel's own
    /// `iommufd_device_pasid` fixture. On 6.12 the PASID HWPT flag is unsupported.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn pasid_attach_replace_detach() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let (major, minor) = kernel_version();
        let has_pasid = (major, minor) >= (6, 15);
        let mock = match MockDevice::alloc(&ioas, MockDeviceFlags::PASID, 1) {
            Ok(m) => m,
            Err(e) => {
                assert!(!has_pasid, "PASID mock device on {major}.{minor}: {e}");
                return;
            }
        };
        let hwpt1 = Hwpt::alloc(&ioas, &mock, HwptFlags::PASID);
        if !has_pasid {
            let e = hwpt1.expect_err("no PASID HWPTs before 6.15");
            assert!(e.is_unsupported(), "{e}");
            return;
        }
        let hwpt1 = hwpt1.expect("HWPT_ALLOC with PASID");
        let hwpt2 = Hwpt::alloc(&ioas, &mock, HwptFlags::PASID).expect("second PASID HWPT");
        let plain = Hwpt::alloc(&ioas, &mock, HwptFlags::empty()).expect("plain HWPT");
        let dev = mock.device();
        let pasid = 100;

        // Detaching a PASID that was never attached is harmless.
        dev.detach_pasid(pasid)
            .expect("detach of an unattached PASID");
        // The RID must sit on a PASID-compatible domain first.
        mock.replace(&plain).expect("RID to a plain HWPT");
        assert_errno(dev.attach_pasid(pasid, &hwpt1), libc::EINVAL);
        mock.replace(&hwpt1)
            .expect("RID to a PASID-compatible HWPT");

        dev.attach_pasid(pasid, &hwpt1).expect("attach PASID 100");
        assert!(
            mock.pasid_attached_to(pasid, Some(hwpt1.id()))
                .expect("check")
        );
        // An IOAS is not a valid PASID target; a non-PASID HWPT neither.
        assert_errno(dev.attach_pasid(pasid + 1, &ioas), libc::EINVAL);
        assert_errno(dev.attach_pasid(pasid + 1, &plain), libc::EINVAL);
        assert!(mock.pasid_attached_to(pasid + 1, None).expect("check"));

        // Attaching an attached PASID again replaces it (IOMMU_TEST_OP_PASID_REPLACE).
        dev.attach_pasid(pasid, &hwpt2).expect("replace PASID 100");
        assert!(
            mock.pasid_attached_to(pasid, Some(hwpt2.id()))
                .expect("check")
        );
        assert!(
            !mock
                .pasid_attached_to(pasid, Some(hwpt1.id()))
                .expect("check")
        );
        // A HWPT a PASID uses cannot be destroyed: the library refuses (the device
        // holds it for the PASID) and the kernel refuses too.
        let hwpt2 = assert_in_use(hwpt2.destroy());
        assert_errno(fd.destroy_raw(hwpt2.id().raw()), libc::EBUSY);

        dev.detach_pasid(pasid).expect("detach PASID 100");
        assert!(mock.pasid_attached_to(pasid, None).expect("check"));
        hwpt2.destroy().expect("free once detached");
        mock.replace(&ioas).expect("RID back to the IOAS");
        drop((hwpt1, plain));
    }

    // Ported from the kernel's selftests (tools/testing/selftests/iommu/iommufd.c);
    // the crate documentation ("Kernel selftest cases") maps each kernel case to its
    // test here.

    use super::common::memfd;
    use iommufd::Command;
    use std::os::fd::AsRawFd;

    /// `mmap(2)` of `len` readable and writable bytes: of `file` if given, else
    /// anonymous memory. For what `MmapRegion` does not do (file mappings, memory
    /// that is unmapped piecewise); undone with [`raw_munmap`].
    fn raw_mmap(len: u64, flags: i32, file: Option<&std::fs::File>) -> *mut u8 {
        let fd = file.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a new mapping at an address the kernel chooses; it replaces nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                0,
            )
        };
        assert_ne!(
            ptr,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        ptr.cast()
    }

    /// `munmap(2)` of (part of) a [`raw_mmap`] mapping that no IOAS maps any more.
    fn raw_munmap(ptr: *mut u8, len: u64) {
        // SAFETY: callers pass memory of `raw_mmap` that nothing refers to any more:
        // no Rust reference and no IOAS mapping.
        let rc = unsafe { libc::munmap(ptr.cast(), len as usize) };
        assert_eq!(rc, 0, "munmap: {}", std::io::Error::last_os_error());
    }

    /// The PMD (huge page) size, as the kernel's selftest determines it.
    fn huge_page_size() -> u64 {
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(2 << 20)
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn closing_the_file_frees_ioas_areas_and_mock_domains() {
        // iommufd_ioas.ioas_auto_destroy and ioas_area_auto_destroy (variant
        // mock_domain), with the check of the fixture's teardown: closing the file with
        // an IOAS, its mappings and a mock device still there unpins every page.
        let p = page();
        let buf = buffer(10 * p as usize);
        buf.fill(1);
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let empty = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        // The mock device is made with the raw command: a `MockDevice` holds the file
        // open and destroys its device when dropped, so it cannot be left to the close.
        raw_mock_domain(&ioas).expect("MOCK_DOMAIN");
        for i in 0..10 {
            // SAFETY: `buf` outlives the file, and closing the file unmaps everything.
            unsafe {
                ioas.map_user(
                    buf.as_ptr().add((i * p) as usize),
                    p,
                    Some(Iova(MOCK_APERTURE_START + i * p)),
                    MapFlags::RW,
                )
            }
            .expect("MAP");
        }
        selftest::check_refs(&fd, buf.as_ptr(), 10 * p, 1).expect("pinned for the mock domain");
        // Leave every object to the release of the file: leaked objects let go of the
        // file, so dropping `fd` closes it.
        let _ = (ioas.into_id(), empty.into_id());
        drop(fd);
        let fd = open();
        selftest::check_refs(&fd, buf.as_ptr(), 10 * p, 0).expect("unpinned by the close");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn reserved_overflow_leaves_no_room() {
        // iommufd_ioas.reserved_overflow (variants no_domain and mock_domain): a
        // reserved region up to near the top of the IOVA space leaves no room for a
        // kernel-chosen IOVA (ENOSPC) instead of letting the alignment wrap around.
        let fd = open();
        let (reserved, map_len) = if page() == 4096 {
            (0xffff_ffff_ffff_8001, 0x5000)
        } else {
            (u64::MAX - MOCK_PAGE_SIZE * 16, MOCK_PAGE_SIZE * 10)
        };
        // The kernel keeps the VA's alignment, up to the length rounded up to a power
        // of two, in the IOVA it picks. The kernel's test buffer is huge-page aligned,
        // so the IOVA must be aligned to that rounded length, and no such IOVA is
        // left. (With a less aligned VA, the end of the IOVA space would fit.)
        let align = map_len.next_power_of_two();
        let region = buffer((map_len + align) as usize);
        let skip = (align - region.as_ptr() as u64 % align) % align;
        // SAFETY: `skip < align`, so `skip + map_len` bytes are inside the region.
        let va = unsafe { region.as_ptr().add(skip as usize) };
        for with_domain in [false, true] {
            let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
            let _mock = with_domain.then(|| {
                MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN")
            });
            selftest::add_reserved(&ioas, Iova(6), reserved).expect("ADD_RESERVED");
            // SAFETY: refused by the kernel; nothing is mapped.
            let r = unsafe { ioas.map_user(va, map_len, None, MapFlags::RW) };
            assert_errno(r, libc::ENOSPC);
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn mock_domain_basic() {
        // iommufd_mock_domain.basic, variants one_domain and one_domain_hugepage (user
        // memory), one_domain_file and one_domain_file_hugepage (memfd;
        // IOMMU_IOAS_MAP_FILE is unsupported before 6.13).
        let fd = open();
        let p = page();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");

        // One page, checked in the mock page table.
        let one = buffer(p as usize);
        // SAFETY: `one` outlives the IOAS (declared before it is unmapped below).
        let iova = unsafe { ioas.map_user(one.as_ptr(), p, None, MapFlags::RW) }.expect("MAP");
        mock.check_map(iova, one.as_ptr(), p).expect("MD_CHECK_MAP");
        assert_eq!(ioas.unmap(iova, p).expect("UNMAP"), p);

        // Memory that is only partly mapped in the process cannot be pinned: 8 pages,
        // or for the _hugepage variants two huge pages of hugetlbfs memory.
        for huge in [false, true] {
            let (size, extra) = if huge {
                (2 * huge_page_size(), libc::MAP_HUGETLB | libc::MAP_POPULATE)
            } else {
                (8 * p, 0)
            };
            let buf = raw_mmap(size, libc::MAP_SHARED | libc::MAP_ANONYMOUS | extra, None);
            // SAFETY: `size / 2` is inside the mapping of `size` bytes.
            let half = unsafe { buf.add((size / 2) as usize) };
            raw_munmap(half, size / 2);
            // SAFETY: refused by the kernel (EFAULT); nothing stays mapped.
            let r = unsafe { ioas.map_user(buf, size, None, MapFlags::RW) };
            assert_errno(r, libc::EFAULT);
            raw_munmap(buf, size / 2);
            // SAFETY: as above; now the first page is missing too.
            let r = unsafe { ioas.map_user(buf, size, None, MapFlags::RW) };
            assert_errno(r, libc::EFAULT);
        }

        if !fd.probe().supports(Command::IoasMapFile) {
            let e = ioas
                .map_file(&memfd(p), 0, p, None, MapFlags::RW)
                .unwrap_err();
            assert!(e.is_unsupported(), "{e}");
            return;
        }
        // One page of a memfd: the mock domain maps the file's page, the one a
        // mapping of the file shows.
        let file = memfd(p);
        let view = raw_mmap(p, libc::MAP_SHARED, Some(&file));
        let iova = ioas
            .map_file(&file, 0, p, None, MapFlags::RW)
            .expect("MAP_FILE");
        mock.check_map(iova, view, p)
            .expect("MD_CHECK_MAP of the file page");
        assert_eq!(ioas.unmap(iova, p).expect("UNMAP"), p);
        raw_munmap(view, p);
        // Past the end of the file, or of an emptied file: EINVAL.
        for size in [8 * p, 2 * huge_page_size()] {
            let tmp = memfd(size);
            let r = ioas.map_file(&tmp, 0, size + 1, None, MapFlags::RW);
            assert_errno(r, libc::EINVAL);
            tmp.set_len(0).expect("ftruncate");
            let r = ioas.map_file(&tmp, 0, size, None, MapFlags::RW);
            assert_errno(r, libc::EINVAL);
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn mock_domain_ro_unshare() {
        // iommufd_mock_domain.ro_unshare: a read-only mapping of a private file
        // mapping pins the page the process keeps using: writing to it afterwards
        // does not move it to another page.
        let fd = open();
        let p = page();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        let exe = std::fs::File::open("/proc/self/exe").expect("open /proc/self/exe");
        let buf = raw_mmap(p, libc::MAP_PRIVATE, Some(&exe));
        drop(exe);
        // SAFETY: `buf` stays mapped until after the range is unmapped below.
        let iova = unsafe { ioas.map_user(buf, p, None, MapFlags::READ) }.expect("MAP read-only");
        mock.check_map(iova, buf, p).expect("MD_CHECK_MAP");
        // SAFETY: `buf` is a private writable mapping of `p` bytes that no Rust
        // reference points into.
        unsafe { std::ptr::write_bytes(buf, 1, p as usize) };
        mock.check_map(iova, buf, p)
            .expect("MD_CHECK_MAP after a write: same page");
        assert_eq!(ioas.unmap(iova, p).expect("UNMAP"), p);
        raw_munmap(buf, p);
    }

    /// iommufd_mock_domain.all_aligns, or all_aligns_copy if `copy` (a mock domain
    /// added and destroyed while each mapping exists): every mock-page-aligned start
    /// and end within 8 CPU pages maps into the mock domains at the right pages and
    /// pins each page once. Variants one_domain, two_domains and one_domain_file (the
    /// last from 6.13, with IOMMU_IOAS_MAP_FILE).
    fn all_aligns(copy: bool) {
        /// The label of the mock device added and destroyed for each mapping.
        const EXTRA: u64 = 0x100;
        let fd = open();
        let p = page();
        let size = 8 * p;
        let have_map_file = fd.probe().supports(Command::IoasMapFile);
        for (domains, file) in [(1, false), (2, false), (1, true)] {
            if file && !have_map_file {
                continue; // mock_domain_basic checks that it is unsupported
            }
            let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
            let mocks: Vec<_> = (1..=domains)
                .map(|label| {
                    MockDevice::alloc(&ioas, MockDeviceFlags::empty(), label).expect("MOCK_DOMAIN")
                })
                .collect();
            let backing = file.then(|| memfd(size));
            let flags = if file {
                libc::MAP_SHARED
            } else {
                libc::MAP_SHARED | libc::MAP_ANONYMOUS
            };
            let buf = raw_mmap(size, flags, backing.as_ref());
            selftest::check_refs(&fd, buf, size, 0).expect("not pinned yet");
            for start in (0..size).step_by(MOCK_PAGE_SIZE as usize) {
                for end in (start + MOCK_PAGE_SIZE..size).step_by(MOCK_PAGE_SIZE as usize) {
                    let len = end - start;
                    // SAFETY: `start < size`, inside the mapping.
                    let va = unsafe { buf.add(start as usize) };
                    let iova = match &backing {
                        Some(f) => ioas.map_file(f, start, len, None, MapFlags::RW),
                        // SAFETY: `buf` stays mapped until after this range is
                        // unmapped below.
                        None => unsafe { ioas.map_user(va, len, None, MapFlags::RW) },
                    }
                    .unwrap_or_else(|e| panic!("MAP {start:#x}..{end:#x}: {e}"));
                    let extra = copy.then(|| {
                        MockDevice::alloc(&ioas, MockDeviceFlags::empty(), EXTRA)
                            .expect("MOCK_DOMAIN")
                    });
                    for m in mocks.iter().chain(&extra) {
                        m.check_map(iova, va, len)
                            .unwrap_or_else(|e| panic!("{start:#x}..{end:#x}: {e}"));
                    }
                    let (first, last) = (start / p * p, end / p * p);
                    // SAFETY: `first < size`, inside the mapping.
                    let first_va = unsafe { buf.add(first as usize) };
                    selftest::check_refs(&fd, first_va, last - first, 1)
                        .unwrap_or_else(|e| panic!("{start:#x}..{end:#x} pinned once: {e}"));
                    if let Some(m) = extra {
                        // Dropping it destroys the added mock device (and its domain).
                        let stdev = m.stdev_id();
                        drop(m);
                        assert_errno(fd.destroy_raw(stdev.raw()), libc::ENOENT);
                    }
                    assert_eq!(ioas.unmap(iova, len).expect("UNMAP"), len);
                }
            }
            selftest::check_refs(&fd, buf, size, 0).expect("unpinned again");
            raw_munmap(buf, size);
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn mock_domain_all_aligns() {
        all_aligns(false);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn mock_domain_all_aligns_copy() {
        all_aligns(true);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn mock_domain_replace() {
        // iommufd_mock_domain.replace, variants one_domain and two_domains.
        //
        // The HWPTs the kernel made for the mock devices have no handle (only an id),
        // and `MockDevice::replace` takes a handle, so replacing to them is done with
        // the raw command; the final `replace` through the library puts its view of
        // the attachment right again.
        let fd = open();
        for domains in [1, 2] {
            let other = Ioas::alloc(&fd).expect("IOAS_ALLOC");
            let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
            let first = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
            let h0 = first.hwpt_id();
            let second = (domains == 2).then(|| {
                MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 2).expect("MOCK_DOMAIN")
            });
            first.replace(&other).expect("REPLACE to another IOAS");
            if domains == 1 {
                // The HWPT made for the device went away with it.
                assert_errno(raw_mock_replace(&first, h0.raw()), libc::ENOENT);
            }
            first
                .replace(&other)
                .expect("REPLACE to the same IOAS again");
            if let Some(second) = &second {
                let h1 = second.hwpt_id();
                assert_eq!(
                    raw_mock_replace(&first, h1.raw()).expect("REPLACE to HWPT 1"),
                    h1.raw()
                );
                assert_eq!(
                    raw_mock_replace(&first, h1.raw()).expect("REPLACE to HWPT 1 again"),
                    h1.raw()
                );
                assert_eq!(
                    raw_mock_replace(&first, h0.raw()).expect("REPLACE to HWPT 0"),
                    h0.raw()
                );
            }
            first.replace(&ioas).expect("REPLACE back");
            drop((second, first));
            other.destroy().expect("DESTROY the other IOAS");
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn ioas_iova_alloc_in_mock_pages() {
        // iommufd_ioas.ioas_iova_alloc, variant mock_domain: with a mock domain only
        // multiples of its 2 KiB page map; every other length fails with EINVAL.
        let fd = open();
        let p = page();
        let buf = buffer(2 * p as usize);
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let _mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        for len in 1..2 * p {
            // SAFETY: `buf` outlives the IOAS; a mapped range is unmapped right away.
            let r = unsafe { ioas.map_user(buf.as_ptr(), len, None, MapFlags::RW) };
            if len % MOCK_PAGE_SIZE != 0 {
                assert_errno(r, libc::EINVAL);
            } else {
                let iova = r.unwrap_or_else(|e| panic!("MAP of {len} bytes: {e}"));
                assert_eq!(ioas.unmap(iova, len).expect("UNMAP"), len);
            }
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn dirty_bitmap_buffer_sizes() {
        // iommufd_dirty_tracking.get_dirty_bitmap and get_dirty_bitmap_no_clear over
        // the fixture's buffer sizes domain_dirty8k ... domain_dirty128M (not the
        // _huge variants): the marked pages come back exactly, then are cleared by
        // the read, or kept with NO_CLEAR. Marks cover whole CPU pages (huge pages
        // are off, so the IOMMU maps in CPU pages).
        let fd = open();
        let per_page = page() / MOCK_PAGE_SIZE;
        let start = Iova(MOCK_APERTURE_START);
        for size in [
            8u64 << 10,
            16 << 10,
            64 << 10,
            128 << 10,
            320 << 10,
            64 << 20,
            128 << 20,
        ] {
            let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
            ioas.set_huge_pages(HugePages::Split)
                .expect("HUGE_PAGES off");
            let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
            let _m = ioas
                .map(buffer(size as usize), Some(start), MapFlags::RW)
                .expect("MAP");
            let hwpt = Hwpt::alloc(&ioas, &mock, HwptFlags::DIRTY_TRACKING)
                .expect("HWPT_ALLOC with DIRTY_TRACKING");
            hwpt.enable_dirty_tracking().expect("SET_DIRTY_TRACKING on");
            let mut marks = DirtyBitmap::new(start, size, MOCK_PAGE_SIZE).expect("bitmap");
            for i in 0..marks.pages() {
                if (i / per_page) % 2 == 0 {
                    marks.set(i);
                }
            }
            for flags in [DirtyReadFlags::empty(), DirtyReadFlags::NO_CLEAR] {
                let no_clear = flags.contains(DirtyReadFlags::NO_CLEAR);
                let what = format!("{size:#x} bytes, no_clear {no_clear}");
                assert_eq!(
                    selftest::set_dirty(&hwpt, &marks).expect("TEST_OP_DIRTY"),
                    marks.count_dirty(),
                    "{what}"
                );
                let got = hwpt
                    .get_dirty_bitmap(start, size, MOCK_PAGE_SIZE, flags)
                    .expect("GET_DIRTY_BITMAP");
                assert!(got.as_words() == marks.as_words(), "{what}: first read");
                let again = hwpt
                    .get_dirty_bitmap(start, size, MOCK_PAGE_SIZE, flags)
                    .expect("GET_DIRTY_BITMAP");
                if no_clear {
                    assert!(again.as_words() == marks.as_words(), "{what}: kept");
                } else {
                    assert_eq!(again.count_dirty(), 0, "{what}: cleared by the read");
                }
            }
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn set_dirty_tracking_with_a_device_attached() {
        // iommufd_dirty_tracking.set_dirty_tracking: with a mock device attached to a
        // dirty-tracking HWPT, tracking turns on and off.
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        ioas.set_huge_pages(HugePages::Split)
            .expect("HUGE_PAGES off");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        let hwpt = Hwpt::alloc(&ioas, &mock, HwptFlags::DIRTY_TRACKING)
            .expect("HWPT_ALLOC with DIRTY_TRACKING");
        let attached =
            MockDevice::alloc(&hwpt, MockDeviceFlags::empty(), 2).expect("attach to the HWPT");
        assert_eq!(attached.hwpt_id(), hwpt.id());
        hwpt.enable_dirty_tracking().expect("SET_DIRTY_TRACKING on");
        hwpt.disable_dirty_tracking()
            .expect("SET_DIRTY_TRACKING off");
        // The attached mock device holds the HWPT: the library refuses to destroy it
        // first.
        let hwpt = assert_in_use(hwpt.destroy());
        // Dropping the mock device destroys it (detaching it from the HWPT)...
        let stdev = attached.stdev_id();
        drop(attached);
        assert_errno(fd.destroy_raw(stdev.raw()), libc::ENOENT);
        // ...after which the HWPT can go.
        hwpt.destroy().expect("DESTROY the HWPT");
    }
}
