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
        MockDeviceFlags, MockDomain,
    };
    use iommufd::{
        DirtyBitmap, Error, HW_INFO_TYPE_SELFTEST, HwCapabilities, HwInfoData, Hwpt, HwptFlags,
        IoasId, Iova, IovaRange, MapFlags, MmapRegion, PtId,
    };

    fn aperture() -> IovaRange {
        IovaRange::new(Iova(MOCK_APERTURE_START), Iova(MOCK_APERTURE_LAST)).expect("aperture")
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn ioas_map_to_mock_domain() {
        let fd = open();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        assert_ne!(mock.hwpt_id().raw(), ioas.id().raw());
        assert_ne!(mock.idev_id().raw(), mock.stdev_id());

        // The attached mock IOMMU narrows the IOAS to its aperture and page size.
        let r = ioas.iova_ranges().expect("IOVA_RANGES");
        assert_eq!(r.ranges, [aperture()]);
        assert_eq!(r.alignment, MOCK_PAGE_SIZE);

        let len = 4 * page();
        let m = ioas
            .map_owned(
                MmapRegion::new(len as usize).expect("mmap"),
                None,
                MapFlags::RW,
            )
            .expect("MAP");
        let range = IovaRange::from_len(m.iova(), len).expect("range");
        assert!(aperture().contains_range(&range), "{range}");
        // The kernel confirms its mock page table points at our pages...
        mock.check_map(m.iova(), m.region().as_ptr(), len)
            .expect("MD_CHECK_MAP");
        // ...and not at other memory.
        let other = MmapRegion::new(len as usize).expect("mmap");
        other.fill(1);
        assert_errno(mock.check_map(m.iova(), other.as_ptr(), len), libc::EINVAL);

        // Mappings made before a device attaches reach its domain too.
        // (At the top of the aperture: kernel-chosen IOVAs start at the bottom.)
        let top = Iova(MOCK_APERTURE_LAST + 1 - len);
        let fixed = ioas
            .map_owned(other, Some(top), MapFlags::RW)
            .expect("MAP fixed");
        assert_eq!(fixed.iova(), top);
        let mock2 = MockDomain::new(&ioas).expect("second MOCK_DOMAIN");
        mock2
            .check_map(m.iova(), m.region().as_ptr(), len)
            .expect("MD_CHECK_MAP 2");
        mock2
            .check_map(fixed.iova(), fixed.region().as_ptr(), len)
            .expect("MD_CHECK_MAP fixed");

        // Lengths must be multiples of the mock page size.
        let small = MmapRegion::new(page() as usize).expect("mmap");
        // SAFETY: refused by the kernel, or unmapped right away; `small` outlives it.
        unsafe {
            assert_errno(
                ioas.map_user(None, small.as_ptr(), 1000, MapFlags::RW),
                libc::EINVAL,
            );
            let iova = ioas
                .map_user(None, small.as_ptr(), MOCK_PAGE_SIZE, MapFlags::RW)
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
        let buf = MmapRegion::new(len as usize).expect("mmap");
        buf.fill(0xa5); // fault the pages in
        selftest::check_refs(&fd, buf.as_ptr(), len, 0).expect("unpinned");
        let a = fd.alloc_ioas().expect("IOAS_ALLOC");
        let b = fd.alloc_ioas().expect("IOAS_ALLOC");
        let _ma = MockDomain::new(&a).expect("MOCK_DOMAIN a");
        let _mb = MockDomain::new(&b).expect("MOCK_DOMAIN b");
        // SAFETY: `buf` outlives both IOASes; both ranges are unmapped below.
        unsafe {
            let iova = a
                .map_user(None, buf.as_ptr(), len, MapFlags::RW)
                .expect("MAP");
            selftest::check_refs(&fd, buf.as_ptr(), len, 1).expect("pinned once");
            // A copy shares the pinned pages instead of pinning them again.
            let copy = b
                .copy_from(&a, iova, None, len, MapFlags::RW)
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
        let buf = MmapRegion::new(len as usize).expect("mmap");
        let src = fd.alloc_ioas().expect("IOAS_ALLOC");
        let dst = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mock = MockDomain::new(&dst).expect("MOCK_DOMAIN");
        // SAFETY: `buf` outlives both IOASes.
        unsafe {
            let at = src
                .map_user(None, buf.as_ptr(), len, MapFlags::RW)
                .expect("MAP");
            let copy = dst
                .copy_from(&src, at, Some(Iova(MOCK_APERTURE_START)), len, MapFlags::RW)
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        let info = fd.hw_info(mock.idev_id()).expect("GET_HW_INFO");
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

        if fd.probe().hw_info_input_type {
            let typed = fd
                .hw_info_of_type(mock.idev_id(), HW_INFO_TYPE_SELFTEST)
                .expect("GET_HW_INFO of type SELFTEST");
            assert_eq!(typed.data, info.data);
            // The mock has no VT-d data.
            let e = fd.hw_info_of_type(mock.idev_id(), 1).unwrap_err();
            assert!(e.is_unsupported(), "{e}");
        } else {
            let e = fd
                .hw_info_of_type(mock.idev_id(), HW_INFO_TYPE_SELFTEST)
                .unwrap_err();
            assert!(e.is_unsupported(), "{e}");
        }

        let no_dirty =
            MockDomain::with_flags(&ioas, MockDeviceFlags::NO_DIRTY).expect("MOCK_DOMAIN_FLAGS");
        let info = fd.hw_info(no_dirty.idev_id()).expect("GET_HW_INFO");
        assert!(!info.capabilities.contains(HwCapabilities::DIRTY_TRACKING));

        if kernel_version() >= (6, 15) {
            let pasid = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID).expect("PASID mock");
            assert_eq!(
                fd.hw_info(pasid.idev_id())
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        // 640 KiB: 320 mock pages, five bitmap words with a partial last one.
        let len = 640 << 10;
        let start = Iova(MOCK_APERTURE_START);
        let dirty_ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        // Without huge pages the IOMMU maps in CPU pages, each one or more mock
        // pages, whose dirty state is one (as in the kernel's selftest fixture).
        dirty_ioas.set_huge_pages(false).expect("HUGE_PAGES off");
        let per_page = page() / MOCK_PAGE_SIZE;
        let _m = dirty_ioas
            .map_owned(
                MmapRegion::new(len as usize).expect("mmap"),
                Some(start),
                MapFlags::RW,
            )
            .expect("MAP");
        let hwpt = Hwpt::alloc(&fd, mock.idev_id(), &dirty_ioas, HwptFlags::DIRTY_TRACKING)
            .expect("HWPT_ALLOC with DIRTY_TRACKING");
        hwpt.set_dirty_tracking(true)
            .expect("SET_DIRTY_TRACKING on");

        // Nothing written yet.
        let clean = hwpt
            .get_dirty_bitmap(start, len, MOCK_PAGE_SIZE, false)
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
            .get_dirty_bitmap(start, len, MOCK_PAGE_SIZE, false)
            .expect("GET_DIRTY_BITMAP");
        assert_eq!(got.as_words(), marks.as_words());
        assert_eq!(got.count_dirty(), marked);
        let second = Iova(start.raw() + 2 * page());
        assert_eq!(got.dirty_iovas().nth(per_page as usize), Some(second));
        let again = hwpt
            .get_dirty_bitmap(start, len, MOCK_PAGE_SIZE, false)
            .expect("GET_DIRTY_BITMAP");
        assert_eq!(again.count_dirty(), 0, "reading must clear");

        // With NO_CLEAR the state stays.
        selftest::set_dirty(&hwpt, &marks).expect("TEST_OP_DIRTY");
        for _ in 0..2 {
            let kept = hwpt
                .get_dirty_bitmap(start, len, MOCK_PAGE_SIZE, true)
                .expect("GET_DIRTY_BITMAP no-clear");
            assert_eq!(kept.as_words(), marks.as_words());
        }

        // At CPU-page granularity: every other page.
        let coarse = hwpt
            .get_dirty_bitmap(start, len, page(), false)
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
            .get_dirty_bitmap(sub_start, 64 * page(), MOCK_PAGE_SIZE, false)
            .expect("GET_DIRTY_BITMAP sub-range");
        assert_eq!(sub.count_dirty(), 32 * per_page);
        assert!(sub.is_dirty(0) && !sub.is_dirty(per_page));

        hwpt.set_dirty_tracking(false)
            .expect("SET_DIRTY_TRACKING off");
        // The mock refuses to mark pages while tracking is off.
        assert_errno(selftest::set_dirty(&hwpt, &marks), libc::EINVAL);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn dirty_tracking_needs_a_capable_iommu() {
        let fd = open();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let plain =
            MockDomain::with_flags(&ioas, MockDeviceFlags::NO_DIRTY).expect("NO_DIRTY mock");
        let e = Hwpt::alloc(&fd, plain.idev_id(), &ioas, HwptFlags::DIRTY_TRACKING).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        let hwpt =
            Hwpt::alloc(&fd, plain.idev_id(), &ioas, HwptFlags::empty()).expect("HWPT_ALLOC");
        let e = hwpt.set_dirty_tracking(true).unwrap_err();
        assert!(e.is_unsupported(), "{e}");

        // A device without dirty tracking cannot join a dirty-tracking HWPT.
        let capable = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        let dirty = Hwpt::alloc(&fd, capable.idev_id(), &ioas, HwptFlags::DIRTY_TRACKING)
            .expect("HWPT_ALLOC with DIRTY_TRACKING");
        assert_errno(
            MockDomain::on_hwpt(&dirty, MockDeviceFlags::NO_DIRTY),
            libc::EINVAL,
        );
        let attached = MockDomain::on_hwpt(&dirty, MockDeviceFlags::empty()).expect("attach");
        assert_eq!(attached.hwpt_id(), dirty.id());
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn reserved_regions_and_iova_ranges() {
        let fd = open();
        let p = page();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
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
        let _mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let reserved = IovaRange::from_len(Iova(4 * p), 100 * p).expect("range");
        selftest::add_reserved(&ioas, reserved.start(), 100 * p).expect("ADD_RESERVED");
        // Kernel-chosen IOVAs avoid the reserved region.
        let mut maps = Vec::new();
        for i in 1..=10u64 {
            let m = ioas
                .map_owned(
                    MmapRegion::new((i * p) as usize).expect("mmap"),
                    None,
                    MapFlags::RW,
                )
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
            .map_owned(
                MmapRegion::new(p as usize).expect("mmap"),
                None,
                MapFlags::RW,
            )
            .expect("MAP");
        assert!(allowed.contains(m.iova()));
        drop(m);

        // And a reserved region inside an allowed range is refused.
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        let (hwpt, stdev) = (mock.hwpt_id(), mock.stdev_id());
        // Objects in use cannot be destroyed.
        assert_errno(fd.destroy_raw(ioas.id().raw()), libc::EBUSY);
        assert_errno(fd.destroy_raw(hwpt.raw()), libc::EBUSY);
        // Dropping the mock device destroys it and the HWPT created for it...
        drop(mock);
        assert_errno(fd.destroy_raw(stdev), libc::ENOENT);
        assert_errno(fd.destroy_raw(hwpt.raw()), libc::ENOENT);
        // ...after which the IOAS is free to go.
        let id = ioas.id();
        ioas.destroy().expect("DESTROY");
        assert_errno(fd.destroy_raw(id.raw()), libc::ENOENT);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn hwpt_alloc_attach_and_replace() {
        // alloc_hwpt of the iommufd_mock_domain fixture.
        let fd = open();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mut mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        let dev = mock.idev_id();
        // The page-table target must be an IOAS (here: the id of a device).
        let e = Hwpt::alloc(
            &fd,
            dev,
            PtId::from(IoasId::from_raw(dev.raw())),
            HwptFlags::empty(),
        );
        assert_errno(e, libc::EINVAL);
        // Unknown flags: unsupported.
        let e = Hwpt::alloc(&fd, dev, &ioas, HwptFlags::from_bits_retain(1 << 30)).unwrap_err();
        assert!(e.is_unsupported(), "{e}");

        let h0 = Hwpt::alloc(&fd, dev, &ioas, HwptFlags::empty()).expect("HWPT_ALLOC");
        let h1 =
            Hwpt::alloc(&fd, dev, &ioas, HwptFlags::NEST_PARENT).expect("HWPT_ALLOC nest parent");
        assert_eq!(mock.replace(&h0).expect("REPLACE"), h0.id());
        assert_errno(fd.destroy_raw(h0.id().raw()), libc::EBUSY);
        assert_eq!(mock.replace(&h1).expect("REPLACE"), h1.id());
        assert_errno(fd.destroy_raw(h1.id().raw()), libc::EBUSY);
        let auto = mock.replace(&ioas).expect("REPLACE to the IOAS");
        assert_ne!(auto, h0.id());
        h1.destroy().expect("DESTROY detached HWPT");

        let on = MockDomain::on_hwpt(&h0, MockDeviceFlags::empty()).expect("attach to HWPT");
        assert_eq!(on.hwpt_id(), h0.id());
        drop(on);
        h0.destroy().expect("DESTROY");

        // A foreign target is refused.
        let other = open();
        let other_ioas = other.alloc_ioas().expect("IOAS_ALLOC");
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let (major, minor) = kernel_version();
        let has_pasid = (major, minor) >= (6, 15);
        let mut mock = match MockDomain::with_flags(&ioas, MockDeviceFlags::PASID) {
            Ok(m) => m,
            Err(e) => {
                assert!(!has_pasid, "PASID mock device on {major}.{minor}: {e}");
                return;
            }
        };
        let dev = mock.idev_id();
        let hwpt1 = Hwpt::alloc(&fd, dev, &ioas, HwptFlags::PASID);
        if !has_pasid {
            let e = hwpt1.expect_err("no PASID HWPTs before 6.15");
            assert!(e.is_unsupported(), "{e}");
            return;
        }
        let hwpt1 = hwpt1.expect("HWPT_ALLOC with PASID");
        let hwpt2 = Hwpt::alloc(&fd, dev, &ioas, HwptFlags::PASID).expect("second PASID HWPT");
        let plain = Hwpt::alloc(&fd, dev, &ioas, HwptFlags::empty()).expect("plain HWPT");
        let pasid = 100;

        // Detaching a PASID that was never attached is harmless.
        mock.detach_pasid(pasid)
            .expect("detach of an unattached PASID");
        // The RID must sit on a PASID-compatible domain first.
        mock.replace(&plain).expect("RID to a plain HWPT");
        assert_errno(mock.attach_pasid(pasid, &hwpt1), libc::EINVAL);
        mock.replace(&hwpt1)
            .expect("RID to a PASID-compatible HWPT");

        mock.attach_pasid(pasid, &hwpt1).expect("attach PASID 100");
        assert!(
            mock.pasid_attached_to(pasid, Some(hwpt1.id()))
                .expect("check")
        );
        // An IOAS is not a valid PASID target; a non-PASID HWPT neither.
        assert_errno(mock.attach_pasid(pasid + 1, &ioas), libc::EINVAL);
        assert_errno(mock.attach_pasid(pasid + 1, &plain), libc::EINVAL);
        assert!(mock.pasid_attached_to(pasid + 1, None).expect("check"));

        mock.replace_pasid(pasid, &hwpt2)
            .expect("replace PASID 100");
        assert!(
            mock.pasid_attached_to(pasid, Some(hwpt2.id()))
                .expect("check")
        );
        assert!(
            !mock
                .pasid_attached_to(pasid, Some(hwpt1.id()))
                .expect("check")
        );
        // A HWPT a PASID uses cannot be destroyed.
        let hwpt2_id = hwpt2.id();
        assert_errno(fd.destroy_raw(hwpt2_id.raw()), libc::EBUSY);

        mock.detach_pasid(pasid).expect("detach PASID 100");
        assert!(mock.pasid_attached_to(pasid, None).expect("check"));
        hwpt2.destroy().expect("free once detached");
        mock.replace(&ioas).expect("RID back to the IOAS");
        drop((hwpt1, plain));
    }
}
