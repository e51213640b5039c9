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
        let buf = MmapRegion::new(10 * p as usize).expect("mmap");
        buf.fill(1);
        let fd = open();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let empty = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        for i in 0..10 {
            // SAFETY: `buf` outlives the file, and closing the file unmaps everything.
            unsafe {
                ioas.map_user(
                    Some(Iova(MOCK_APERTURE_START + i * p)),
                    buf.as_ptr().add((i * p) as usize),
                    p,
                    MapFlags::RW,
                )
            }
            .expect("MAP");
        }
        selftest::check_refs(&fd, buf.as_ptr(), 10 * p, 1).expect("pinned for the mock domain");
        // Leave every object to the release of the file.
        std::mem::forget(mock);
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
        let region = MmapRegion::new((map_len + align) as usize).expect("mmap");
        let skip = (align - region.as_ptr() as u64 % align) % align;
        // SAFETY: `skip < align`, so `skip + map_len` bytes are inside the region.
        let va = unsafe { region.as_ptr().add(skip as usize) };
        for with_domain in [false, true] {
            let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
            let _mock = with_domain.then(|| MockDomain::new(&ioas).expect("MOCK_DOMAIN"));
            selftest::add_reserved(&ioas, Iova(6), reserved).expect("ADD_RESERVED");
            // SAFETY: refused by the kernel; nothing is mapped.
            let r = unsafe { ioas.map_user(None, va, map_len, MapFlags::RW) };
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");

        // One page, checked in the mock page table.
        let one = MmapRegion::new(p as usize).expect("mmap");
        // SAFETY: `one` outlives the IOAS (declared before it is unmapped below).
        let iova = unsafe { ioas.map_user(None, one.as_ptr(), p, MapFlags::RW) }.expect("MAP");
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
            let r = unsafe { ioas.map_user(None, buf, size, MapFlags::RW) };
            assert_errno(r, libc::EFAULT);
            raw_munmap(buf, size / 2);
            // SAFETY: as above; now the first page is missing too.
            let r = unsafe { ioas.map_user(None, buf, size, MapFlags::RW) };
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        let exe = std::fs::File::open("/proc/self/exe").expect("open /proc/self/exe");
        let buf = raw_mmap(p, libc::MAP_PRIVATE, Some(&exe));
        drop(exe);
        // SAFETY: `buf` stays mapped until after the range is unmapped below.
        let iova = unsafe { ioas.map_user(None, buf, p, MapFlags::READ) }.expect("MAP read-only");
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
        let fd = open();
        let p = page();
        let size = 8 * p;
        let have_map_file = fd.probe().supports(Command::IoasMapFile);
        for (domains, file) in [(1, false), (2, false), (1, true)] {
            if file && !have_map_file {
                continue; // mock_domain_basic checks that it is unsupported
            }
            let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
            let mocks: Vec<_> = (0..domains)
                .map(|_| MockDomain::new(&ioas).expect("MOCK_DOMAIN"))
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
                        None => unsafe { ioas.map_user(None, va, len, MapFlags::RW) },
                    }
                    .unwrap_or_else(|e| panic!("MAP {start:#x}..{end:#x}: {e}"));
                    let extra = copy.then(|| MockDomain::new(&ioas).expect("MOCK_DOMAIN"));
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
                        m.destroy().expect("DESTROY the added mock device");
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
        let fd = open();
        for domains in [1, 2] {
            let other = fd.alloc_ioas().expect("IOAS_ALLOC");
            let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
            let mut first = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
            let h0 = first.hwpt_id();
            let second = (domains == 2).then(|| MockDomain::new(&ioas).expect("MOCK_DOMAIN"));
            first.replace(&other).expect("REPLACE to another IOAS");
            if domains == 1 {
                // The HWPT made for the device went away with it.
                assert_errno(first.replace(h0), libc::ENOENT);
            }
            first
                .replace(&other)
                .expect("REPLACE to the same IOAS again");
            if let Some(second) = &second {
                let h1 = second.hwpt_id();
                assert_eq!(first.replace(h1).expect("REPLACE to HWPT 1"), h1);
                assert_eq!(first.replace(h1).expect("REPLACE to HWPT 1 again"), h1);
                assert_eq!(first.replace(h0).expect("REPLACE to HWPT 0"), h0);
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
        let buf = MmapRegion::new(2 * p as usize).expect("mmap");
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let _mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        for len in 1..2 * p {
            // SAFETY: `buf` outlives the IOAS; a mapped range is unmapped right away.
            let r = unsafe { ioas.map_user(None, buf.as_ptr(), len, MapFlags::RW) };
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
            let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
            ioas.set_huge_pages(false).expect("HUGE_PAGES off");
            let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
            let _m = ioas
                .map_owned(
                    MmapRegion::new(size as usize).expect("mmap"),
                    Some(start),
                    MapFlags::RW,
                )
                .expect("MAP");
            let hwpt = Hwpt::alloc(&fd, mock.idev_id(), &ioas, HwptFlags::DIRTY_TRACKING)
                .expect("HWPT_ALLOC with DIRTY_TRACKING");
            hwpt.set_dirty_tracking(true)
                .expect("SET_DIRTY_TRACKING on");
            let mut marks = DirtyBitmap::new(start, size, MOCK_PAGE_SIZE).expect("bitmap");
            for i in 0..marks.pages() {
                if (i / per_page) % 2 == 0 {
                    marks.set(i);
                }
            }
            for no_clear in [false, true] {
                let what = format!("{size:#x} bytes, no_clear {no_clear}");
                assert_eq!(
                    selftest::set_dirty(&hwpt, &marks).expect("TEST_OP_DIRTY"),
                    marks.count_dirty(),
                    "{what}"
                );
                let got = hwpt
                    .get_dirty_bitmap(start, size, MOCK_PAGE_SIZE, no_clear)
                    .expect("GET_DIRTY_BITMAP");
                assert!(got.as_words() == marks.as_words(), "{what}: first read");
                let again = hwpt
                    .get_dirty_bitmap(start, size, MOCK_PAGE_SIZE, no_clear)
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        ioas.set_huge_pages(false).expect("HUGE_PAGES off");
        let mock = MockDomain::new(&ioas).expect("MOCK_DOMAIN");
        let hwpt = Hwpt::alloc(&fd, mock.idev_id(), &ioas, HwptFlags::DIRTY_TRACKING)
            .expect("HWPT_ALLOC with DIRTY_TRACKING");
        let attached =
            MockDomain::on_hwpt(&hwpt, MockDeviceFlags::empty()).expect("attach to the HWPT");
        assert_eq!(attached.hwpt_id(), hwpt.id());
        hwpt.set_dirty_tracking(true)
            .expect("SET_DIRTY_TRACKING on");
        hwpt.set_dirty_tracking(false)
            .expect("SET_DIRTY_TRACKING off");
        attached
            .destroy()
            .expect("DESTROY the attached mock device");
        hwpt.destroy().expect("DESTROY the HWPT");
    }
}
