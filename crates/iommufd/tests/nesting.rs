//! Nested translation, the vIOMMU and its queues, on the kernel's mock IOMMU
//! (`CONFIG_IOMMUFD_TEST`), through the public API only. Ported from the kernel's
//! selftests (tools/testing/selftests/iommu/iommufd.c): `iommufd_ioas.alloc_hwpt_nested`,
//! the `iommufd_viommu` cases, `iommufd_device_pasid.pasid_attach`,
//! `iommufd_dirty_tracking.pasid_set_dirty_tracking` and `vfio_ioas`; see
//! tests/README.md for the table.
//!
//! On Linux 6.12 the vIOMMU commands (6.13 and later) must report
//! [`Error::Unsupported`]; everything 6.12 has is checked there too.

mod common;

#[cfg(feature = "selftest")]
mod mock {
    use super::common::{assert_errno, kernel_version, open, page};
    use iommufd::selftest::{
        self, DEV_CACHE_DEFAULT, IOTLB_DEFAULT, MOCK_APERTURE_START, MockDevice, MockDeviceFlags,
    };
    use iommufd::{
        Error, FaultPerm, FaultQueue, HwQueue, HwQueueType, Hwpt, HwptFlags, Ioas, Iommufd, Iova,
        MapFlags, NestedHwpt, PageResponse, PageTable, SelftestHwptInvalidation,
        SelftestViommuInvalidation, Stage1, VEVENTQ_MAX_DEPTH, Vdevice, VeventData, Veventq,
        VeventqType, Viommu, ViommuData, ViommuType, VtdS1, VtdS1Flags,
    };
    use iommufd_lab::mem::buffer;

    const S1: Stage1 = Stage1::Selftest {
        iotlb: IOTLB_DEFAULT,
    };

    #[track_caller]
    fn iotlb(nested: &NestedHwpt, expected: [u32; 4]) {
        for (id, want) in (0..).zip(expected) {
            selftest::check_iotlb(nested, id, want)
                .unwrap_or_else(|e| panic!("iotlb[{id}] != {want:#x}: {e}"));
        }
    }

    #[track_caller]
    fn dev_cache(mock: &MockDevice, expected: [u32; 4]) {
        for (id, want) in (0..).zip(expected) {
            selftest::check_dev_cache(mock, id, want)
                .unwrap_or_else(|e| panic!("cache[{id}] != {want:#x}: {e}"));
        }
    }

    /// (handled, errno, label) of an incomplete batch.
    #[track_caller]
    fn incomplete(r: iommufd::Result<()>) -> (u32, i32, Option<u64>) {
        match r {
            Err(Error::InvalidationIncomplete {
                handled,
                errno,
                label,
                ..
            }) => (handled, errno, label),
            other => panic!("expected InvalidationIncomplete, got {other:?}"),
        }
    }

    const D: u32 = IOTLB_DEFAULT;
    const C: u32 = DEV_CACHE_DEFAULT;

    /// iommufd_ioas.alloc_hwpt_nested: nest parents, nested HWPTs, batched
    /// invalidation with partial completion, replace, and an I/O page fault.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn alloc_hwpt_nested() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).unwrap();
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 0x51).unwrap();
        let parent = Hwpt::alloc(&ioas, &mock, HwptFlags::NEST_PARENT).unwrap();
        let not_parent = Hwpt::alloc(&ioas, &mock, HwptFlags::empty()).unwrap();

        // Refused before the kernel: a parent without NEST_PARENT, nested flags.
        let e = NestedHwpt::alloc(&not_parent, &mock, S1, HwptFlags::empty(), None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        for flags in [HwptFlags::NEST_PARENT, HwptFlags::DIRTY_TRACKING] {
            let e = NestedHwpt::alloc(&parent, &mock, S1, flags, None).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        }
        // A format the mock IOMMU does not have: the kernel's EOPNOTSUPP.
        let vtd = VtdS1::new(0x1000, 48, VtdS1Flags::empty()).unwrap();
        let e =
            NestedHwpt::alloc(&parent, &mock, vtd.into(), HwptFlags::empty(), None).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        // A fault queue on a nest parent: EOPNOTSUPP.
        let faults = FaultQueue::alloc(&fd).unwrap();
        let e = Hwpt::alloc_iopf(&ioas, &mock, HwptFlags::NEST_PARENT, &faults).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EOPNOTSUPP), "{e}");

        let nested0 = NestedHwpt::alloc(&parent, &mock, S1, HwptFlags::empty(), None).unwrap();
        let nested1 = NestedHwpt::alloc(&parent, &mock, S1, HwptFlags::empty(), None).unwrap();
        let iopf =
            NestedHwpt::alloc(&parent, &mock, S1, HwptFlags::empty(), Some(&faults)).unwrap();
        assert!(iopf.fault_queue().is_some());
        assert_eq!(iopf.parent().stage2().id(), parent.id());
        iotlb(&nested0, [D; 4]);
        iotlb(&nested1, [D; 4]);
        // The parent is held by its nested HWPTs.
        let parent = parent.destroy().unwrap_err().object;

        // Support is probed with an empty batch, which changes nothing.
        assert!(
            nested0
                .supports_invalidation::<SelftestHwptInvalidation>()
                .unwrap()
        );
        nested0.invalidate::<SelftestHwptInvalidation>(&[]).unwrap();
        iotlb(&nested0, [D; 4]);
        // Entries the mock refuses, alone: nothing handled.
        assert!(
            SelftestHwptInvalidation::one(4).is_err(),
            "checked before the kernel"
        );
        let bad_flags = SelftestHwptInvalidation::raw(u32::MAX, 0);
        let bad_id = SelftestHwptInvalidation::raw(0, 4);
        let (n, errno, label) = incomplete(nested0.invalidate(&[bad_flags]));
        assert_eq!((n, errno, label), (0, libc::EOPNOTSUPP, Some(0x51)));
        assert_eq!(incomplete(nested0.invalidate(&[bad_id])).0, 0);
        iotlb(&nested0, [D; 4]);
        // Partial batches: the first entry is done, the second names the failure.
        let one = |id| SelftestHwptInvalidation::one(id).unwrap();
        let (n, errno, _) = incomplete(nested0.invalidate(&[one(0), bad_flags]));
        assert_eq!((n, errno), (1, libc::EOPNOTSUPP));
        iotlb(&nested0, [0, D, D, D]);
        let (n, errno, _) = incomplete(nested0.invalidate(&[one(0), bad_id]));
        assert_eq!((n, errno), (1, libc::EINVAL));
        iotlb(&nested0, [0, D, D, D]);
        let e = nested0.invalidate(&[one(0), bad_id]).unwrap_err();
        assert!(e.to_string().contains("1 entry handled"), "{e}");
        // Whole batches, of one and of two.
        nested0.invalidate(&[one(1)]).unwrap();
        iotlb(&nested0, [0, 0, D, D]);
        nested0.invalidate(&[one(2), one(3)]).unwrap();
        iotlb(&nested0, [0; 4]);
        nested1
            .invalidate(&[SelftestHwptInvalidation::all()])
            .unwrap();
        iotlb(&nested1, [0; 4]);

        // Replace through nested HWPTs: each is held while attached.
        mock.replace(&nested0).unwrap();
        let nested0 = nested0.destroy().unwrap_err().object;
        mock.replace(&nested1).unwrap();
        nested0.destroy().unwrap();
        mock.replace(&iopf).unwrap();
        assert!(matches!(
            mock.device().attached_to(),
            Some(PageTable::Nested(n)) if n.id() == iopf.id()
        ));

        // An I/O page fault reaches the queue with the device's label.
        assert!(faults.read().unwrap().is_empty());
        selftest::trigger_iopf(&mock, 0, 2, FaultPerm::READ | FaultPerm::WRITE, 0xdead_b000)
            .unwrap();
        let groups = faults
            .read_blocking(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(groups.len(), 1, "{groups:?}");
        let g = &groups[0];
        assert_eq!(
            (g.device, g.label, g.pasid, g.grpid),
            (mock.device().id(), Some(0x51), None, 2)
        );
        assert_eq!(g.pages.len(), 1);
        assert_eq!(g.pages[0].addr, 0xdead_b000);
        assert_eq!(g.pages[0].perm, FaultPerm::READ | FaultPerm::WRITE);
        assert_eq!(faults.outstanding(), vec![g.cookie]);
        faults.respond(g.cookie, PageResponse::Success).unwrap();
        let e = faults.respond(g.cookie, PageResponse::Success).unwrap_err();
        assert!(matches!(e, Error::UnknownCookie { .. }), "{e}");
        assert!(faults.read().unwrap().is_empty());

        // Teardown in an odd order: the queue first (held by the HWPT), then the
        // parent (held by nested1 and iopf), the device last.
        drop((faults, parent, nested1, not_parent, iopf));
        mock.replace(&ioas).unwrap();
        drop(ioas);
        drop(mock);
        assert!(Ioas::alloc(&fd).is_ok());
    }

    /// A fault group left unanswered is answered by the kernel when the device
    /// moves away; the queue then refuses the stale cookie with a typed error.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn unanswered_faults_end_with_the_attachment() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).unwrap();
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 0x52).unwrap();
        let parent = Hwpt::alloc(&ioas, &mock, HwptFlags::NEST_PARENT).unwrap();
        let faults = FaultQueue::alloc(&fd).unwrap();
        let iopf =
            NestedHwpt::alloc(&parent, &mock, S1, HwptFlags::empty(), Some(&faults)).unwrap();
        mock.replace(&iopf).unwrap();
        for addr in [0x1000, 0x2000, 0x3000] {
            selftest::trigger_iopf(&mock, 0, 1, FaultPerm::READ, addr).unwrap();
        }
        let groups = faults.read().unwrap();
        assert_eq!(
            groups.iter().map(|g| g.pages[0].addr).collect::<Vec<_>>(),
            [0x1000, 0x2000, 0x3000]
        );
        faults
            .respond(groups[0].cookie, PageResponse::Invalid)
            .unwrap();
        mock.replace(&ioas).unwrap();
        let e = faults
            .respond(groups[1].cookie, PageResponse::Success)
            .unwrap_err();
        assert!(matches!(e, Error::UnknownCookie { .. }), "{e}");
        assert_eq!(faults.outstanding(), vec![groups[2].cookie]);
    }

    struct Viommus {
        fd: Iommufd,
        ioas: Ioas,
        mock: MockDevice,
        parent: Hwpt,
        viommu: Viommu,
        nested: NestedHwpt,
    }

    /// The iommufd_viommu fixture, or `None` (after checking the typed refusal) on
    /// kernels before 6.13.
    fn viommus() -> Option<Viommus> {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 0x60).expect("mock device");
        let parent = Hwpt::alloc(&ioas, &mock, HwptFlags::NEST_PARENT).expect("nest parent");
        let r = Viommu::alloc(&parent, &mock, ViommuType::Selftest { in_data: 0 });
        if kernel_version() < (6, 13) {
            let e = r.expect_err("no vIOMMU before 6.13");
            assert!(e.is_unsupported(), "{e}");
            return None;
        }
        let viommu = r.expect("vIOMMU");
        let nested =
            NestedHwpt::alloc(&viommu, &mock, S1, HwptFlags::empty(), None).expect("nested HWPT");
        Some(Viommus {
            fd,
            ioas,
            mock,
            parent,
            viommu,
            nested,
        })
    }

    /// viommu_auto_destroy: everything still alive when the last handles go, in
    /// declaration order (file first).
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn viommu_auto_destroy() {
        let Some(v) = viommus() else { return };
        let _vdev = Vdevice::alloc(&v.viommu, &v.mock, 0x99).unwrap();
        v.mock.replace(&v.nested).unwrap();
        drop(v);
    }

    /// viommu_negative_tests.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn viommu_negative() {
        let Some(v) = viommus() else { return };
        let plain = Hwpt::alloc(&v.ioas, &v.mock, HwptFlags::empty()).unwrap();
        let e = Viommu::alloc(&plain, &v.mock, ViommuType::Selftest { in_data: 0 }).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        // The mock IOMMU is no SMMUv3.
        let e = Viommu::alloc(&v.parent, &v.mock, ViommuType::ArmSmmuV3).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        // Held by what is built on them.
        let parent = v.parent.clone().destroy().unwrap_err();
        assert!(matches!(parent.error, Error::InUse { .. }));
        let viommu = v.viommu.clone().destroy().unwrap_err();
        assert!(matches!(viommu.error, Error::InUse { .. }));
        // A vIOMMU of another file's parent is refused before the kernel.
        let other = open();
        let other_ioas = Ioas::alloc(&other).unwrap();
        let other_mock = MockDevice::alloc(&other_ioas, MockDeviceFlags::empty(), 1).unwrap();
        let e =
            Viommu::alloc(&v.parent, &other_mock, ViommuType::Selftest { in_data: 0 }).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        let e = Vdevice::alloc(&v.viommu, &other_mock, 1).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    }

    /// viommu_alloc_nested_iopf: a nested HWPT of a vIOMMU with a fault queue; the
    /// mock attaches it only to a device with a vDEVICE.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn viommu_alloc_nested_iopf() {
        let Some(v) = viommus() else { return };
        let faults = FaultQueue::alloc(&v.fd).unwrap();
        let iopf =
            NestedHwpt::alloc(&v.viommu, &v.mock, S1, HwptFlags::empty(), Some(&faults)).unwrap();
        assert_errno(v.mock.replace(&iopf), libc::ENOENT);
        let vdev = Vdevice::alloc(&v.viommu, &v.mock, 0x99).unwrap();
        v.mock.replace(&iopf).unwrap();
        selftest::trigger_iopf(&v.mock, 0, 2, FaultPerm::READ, 0x4000).unwrap();
        let groups = faults.read().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].label, Some(0x60));
        faults
            .respond(groups[0].cookie, PageResponse::Success)
            .unwrap();
        v.mock.replace(&v.ioas).unwrap();
        // Odd order: the queue, then the vDEVICE, then the HWPT that holds both.
        drop((faults, vdev, iopf));
    }

    /// viommu_alloc_with_data: the mock echoes its input and exposes two pages to
    /// mmap on the iommufd.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn viommu_alloc_with_data() {
        let Some(v) = viommus() else { return };
        let viommu =
            Viommu::alloc(&v.parent, &v.mock, ViommuType::Selftest { in_data: 0xbeef }).unwrap();
        let ViommuData::Selftest {
            out_data,
            mmap_offset,
            mmap_length,
        } = viommu.data()
        else {
            panic!("{:?}", viommu.data());
        };
        assert_eq!(out_data, 0xbeef);
        assert_eq!(mmap_length, 2 * page());
        assert!(mmap_offset != 0);
        let mmio = viommu.map_mmio().unwrap();
        assert_eq!(mmio.len() as u64, mmap_length);
        // The mock's page starts with the data it was given.
        assert_eq!(mmio.read_u32(0), Some(0xbeef));
        assert_eq!(mmio.read_u32(mmio.len()), None);
        assert_eq!(mmio.read_u32(2), None, "unaligned");
        assert!(mmio.write_u32(4, 0x1234));
        assert_eq!(mmio.read_u32(4), Some(0x1234));
        // The mapping holds the vIOMMU (the kernel would refuse with EBUSY).
        let viommu = viommu.destroy().unwrap_err().object;
        drop(mmio);
        viommu.destroy().unwrap();
    }

    /// vdevice_alloc: vEVENTQ depth limits, one queue per type, duplicate
    /// vDEVICEs, events with their device's label, and lost events counted.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn vdevice_alloc() {
        let Some(v) = viommus() else { return };
        let t = VeventqType::Selftest;
        if kernel_version() < (6, 15) {
            assert!(
                Veventq::alloc(&v.viommu, t, 2)
                    .unwrap_err()
                    .is_unsupported()
            );
            return;
        }
        for depth in [0, VEVENTQ_MAX_DEPTH + 1] {
            let e = Veventq::alloc(&v.viommu, t, depth).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        }
        // The deepest queue; dropping it closes its file and destroys it.
        drop(Veventq::alloc(&v.viommu, t, VEVENTQ_MAX_DEPTH).unwrap());
        let q = Veventq::alloc(&v.viommu, t, 2).unwrap();
        assert_errno(Veventq::alloc(&v.viommu, t, 2), libc::EEXIST);
        assert_eq!(q.read().unwrap(), Default::default());

        // The mock attaches its nested HWPT only with a vDEVICE.
        assert_errno(v.mock.replace(&v.nested), libc::ENOENT);
        let vdev = Vdevice::alloc(&v.viommu, &v.mock, 0x99).unwrap();
        assert_eq!(v.viommu.device_of(0x99), Some((v.mock.device().id(), 0x60)));
        v.mock.replace(&v.nested).unwrap();
        selftest::trigger_vevent(&v.mock).unwrap();
        let batch = q.read().unwrap();
        assert_eq!(batch.lost, 0);
        assert_eq!(batch.events.len(), 1);
        let e = &batch.events[0];
        assert_eq!((e.sequence, e.lost_before), (0, 0));
        assert_eq!(e.data, VeventData::Selftest { virt_id: 0x99 });
        assert_eq!(e.device, Some((v.mock.device().id(), 0x60)));
        assert_eq!(e.vdevice, Some(vdev.id()));

        // Duplicates: the same virtual id (caught here), another id for a device
        // that has a vDEVICE (the kernel's EEXIST).
        match Vdevice::alloc(&v.viommu, &v.mock, 0x99).unwrap_err() {
            Error::DuplicateVdevice { holder, .. } => {
                assert_eq!(holder, Some(v.mock.device().id()))
            }
            e => panic!("{e}"),
        }
        match Vdevice::alloc(&v.viommu, &v.mock, 0x77).unwrap_err() {
            Error::DuplicateVdevice { holder, .. } => assert_eq!(holder, None),
            e => panic!("{e}"),
        }
        v.mock.replace(&v.ioas).unwrap();
        drop(vdev);
        assert_eq!(v.viommu.device_of(0x99), None);

        // Three events into a queue of two: the third is counted as lost.
        let vdev = Vdevice::alloc(&v.viommu, &v.mock, 0x88).unwrap();
        v.mock.replace(&v.nested).unwrap();
        for _ in 0..3 {
            selftest::trigger_vevent(&v.mock).unwrap();
        }
        let batch = q
            .read_blocking(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            batch.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(batch.lost, 1);
        selftest::trigger_vevent(&v.mock).unwrap();
        let batch = q.read().unwrap();
        assert_eq!(
            (
                batch.events[0].sequence,
                batch.events[0].lost_before,
                batch.lost
            ),
            (4, 0, 0)
        );
        assert_eq!(batch.events[0].data, VeventData::Selftest { virt_id: 0x88 });
        v.mock.replace(&v.ioas).unwrap();
        drop((vdev, q));
    }

    /// vdevice_cache: invalidation of device caches through the vIOMMU, naming
    /// devices by virtual id; partial batches name the device's label.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn vdevice_cache() {
        let Some(v) = viommus() else { return };
        let _vdev = Vdevice::alloc(&v.viommu, &v.mock, 0x99).unwrap();
        dev_cache(&v.mock, [C; 4]);
        assert!(
            v.viommu
                .supports_invalidation::<SelftestViommuInvalidation>()
                .unwrap()
        );
        v.viommu
            .invalidate::<SelftestViommuInvalidation>(&[])
            .unwrap();
        let one = |cache| SelftestViommuInvalidation::one(0x99, cache);
        let bad_flags = SelftestViommuInvalidation::raw(u32::MAX, 0x99, 1);
        let (n, errno, label) = incomplete(v.viommu.invalidate(&[bad_flags]));
        assert_eq!((n, errno, label), (0, libc::EOPNOTSUPP, Some(0x60)));
        let (n, errno, _) = incomplete(v.viommu.invalidate(&[one(4)]));
        assert_eq!((n, errno), (0, libc::EINVAL));
        // An unknown virtual id: no device, no label.
        let (n, errno, label) = incomplete(
            v.viommu
                .invalidate(&[SelftestViommuInvalidation::one(0x9, 0)]),
        );
        assert_eq!((n, errno, label), (0, libc::EINVAL, None));
        dev_cache(&v.mock, [C; 4]);
        let (n, errno, label) = incomplete(v.viommu.invalidate(&[one(0), bad_flags]));
        assert_eq!((n, errno, label), (1, libc::EOPNOTSUPP, Some(0x60)));
        dev_cache(&v.mock, [0, C, C, C]);
        let (n, errno, _) = incomplete(v.viommu.invalidate(&[one(0), one(4)]));
        assert_eq!((n, errno), (1, libc::EINVAL));
        dev_cache(&v.mock, [0, C, C, C]);
        v.viommu.invalidate(&[one(1)]).unwrap();
        dev_cache(&v.mock, [0, 0, C, C]);
        v.viommu.invalidate(&[one(2), one(3)]).unwrap();
        dev_cache(&v.mock, [0; 4]);
        v.viommu
            .invalidate(&[SelftestViommuInvalidation::all(0x99)])
            .unwrap();
        dev_cache(&v.mock, [0; 4]);
    }

    /// hw_queue: queues over guest memory mapped in the parent's IOAS, chained by
    /// index; their memory stays pinned (unmap refused) while they exist.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn hw_queue() {
        let Some(v) = viommus() else { return };
        let t = HwQueueType::Selftest;
        let page = page();
        let base = MOCK_APERTURE_START;
        if kernel_version() < (6, 17) {
            assert!(
                HwQueue::alloc(&v.viommu, t, base, page)
                    .unwrap_err()
                    .is_unsupported()
            );
            return;
        }
        for (gpa, len) in [(base, 0), (u64::MAX, page)] {
            let e = HwQueue::alloc(&v.viommu, t, gpa, len).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        }
        assert_errno(HwQueue::alloc(&v.viommu, t, base, page), libc::ENOENT);
        let m0 = v
            .ioas
            .map(buffer(page as usize), Some(Iova(base)), MapFlags::RW)
            .unwrap();
        let m1 = v
            .ioas
            .map(buffer(page as usize), Some(Iova(base + page)), MapFlags::RW)
            .unwrap();
        let q0 = HwQueue::alloc(&v.viommu, t, base, page).unwrap();
        assert_eq!((q0.index(), q0.memory()), (0, (base, page)));
        assert_errno(HwQueue::alloc(&v.viommu, t, base, page), libc::EEXIST);
        // Pinned while the queue exists.
        let r = m0.unmap().unwrap_err();
        assert_eq!(r.error.errno(), Some(libc::EBUSY), "{}", r.error);
        let m0 = r.object;
        m1.unmap().unwrap();
        let q1 = q0.alloc_next(base + page / 2, page / 2).unwrap();
        assert_eq!(q1.index(), 1);
        assert_errno(q1.alloc_next(base, page / 2), libc::EINVAL);
        // q1 holds q0: it goes first whatever order the handles go in.
        let q0 = q0.destroy().unwrap_err().object;
        drop(q0);
        drop(q1);
        m0.unmap().unwrap();
    }

    /// vdevice_tombstone, as the library shapes it: a vDEVICE holds its device, so
    /// the device cannot be unbound under it (the kernel's tombstone case cannot
    /// arise); it is unbound once the vDEVICE goes.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn vdevice_holds_its_device() {
        let Some(v) = viommus() else { return };
        let Viommus {
            fd, mock, viommu, ..
        } = v;
        let vdev = Vdevice::alloc(&viommu, &mock, 0x99).unwrap();
        let id = mock.device().id();
        drop(mock);
        assert!(
            fd.has_device(id).unwrap(),
            "still bound: the vDEVICE holds it"
        );
        assert_eq!(vdev.device().id(), id);
        assert_eq!(fd.label_of(id), Some(0x60));
        drop(vdev);
        assert!(!fd.has_device(id).unwrap());
        assert_eq!(fd.label_of(id), None);
    }

    /// iommufd_device_pasid.pasid_attach, in the library's terms: nested HWPTs
    /// allocated with the PASID flag attach per PASID, and a fault on a PASID
    /// carries it.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn pasid_attach_nested() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).unwrap();
        if kernel_version() < (6, 15) {
            // No PASID-capable mock device, no PASID flag, no PASID attach.
            let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 0x70).unwrap();
            let e = Hwpt::alloc(&ioas, &mock, HwptFlags::PASID).unwrap_err();
            assert!(e.is_unsupported(), "{e}");
            assert!(
                mock.device()
                    .attach_pasid(100, &ioas)
                    .unwrap_err()
                    .is_unsupported()
            );
            return;
        }
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::PASID, 0x70).unwrap();
        let dev = mock.device();
        let parent = Hwpt::alloc(&ioas, &mock, HwptFlags::NEST_PARENT).unwrap();
        let s2 = Hwpt::alloc(&ioas, &mock, HwptFlags::PASID).unwrap();
        let nested0 = NestedHwpt::alloc(&parent, &mock, S1, HwptFlags::PASID, None).unwrap();
        let nested1 = NestedHwpt::alloc(&parent, &mock, S1, HwptFlags::PASID, None).unwrap();
        let faults = FaultQueue::alloc(&fd).unwrap();
        let iopf = NestedHwpt::alloc(&parent, &mock, S1, HwptFlags::PASID, Some(&faults)).unwrap();
        assert_eq!(nested0.flags(), HwptFlags::PASID);

        // The RID on a HWPT without the PASID flag: PASIDs cannot attach.
        mock.replace(&parent).unwrap();
        assert_errno(dev.attach_pasid(100, &s2), libc::EINVAL);
        mock.replace(&s2).unwrap();
        dev.attach_pasid(100, &nested0).unwrap();
        assert!(
            mock.pasid_attached_to(100, Some(nested0.hwpt_id()))
                .unwrap()
        );
        // With a PASID attached, the RID cannot move to a non-PASID HWPT.
        assert_errno(mock.replace(&parent), libc::EINVAL);
        dev.detach_pasid(100).unwrap();
        assert!(mock.pasid_attached_to(100, None).unwrap());
        assert_errno(dev.attach_pasid(100, &parent), libc::EINVAL);
        assert_errno(dev.attach_pasid(100, &ioas), libc::EINVAL);

        // Attach, then replace (the library replaces an attached PASID).
        dev.attach_pasid(200, &s2).unwrap();
        dev.attach_pasid(200, &nested0).unwrap();
        assert!(
            mock.pasid_attached_to(200, Some(nested0.hwpt_id()))
                .unwrap()
        );
        dev.attach_pasid(200, &nested1).unwrap();
        assert!(
            mock.pasid_attached_to(200, Some(nested1.hwpt_id()))
                .unwrap()
        );
        // nested0 is released by the replace, nested1 held by the PASID.
        nested0.destroy().unwrap();
        let nested1 = nested1.destroy().unwrap_err().object;
        dev.detach_pasid(200).unwrap();
        drop(nested1);

        // A fault on a PASID carries it.
        dev.attach_pasid(2048, &iopf).unwrap();
        selftest::trigger_iopf(&mock, 2048, 3, FaultPerm::WRITE, 0x8000).unwrap();
        let groups = faults.read().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!((groups[0].pasid, groups[0].label), (Some(2048), Some(0x70)));
        faults
            .respond(groups[0].cookie, PageResponse::Success)
            .unwrap();
        dev.attach_pasid(2048, &s2).unwrap();
        assert!(mock.pasid_attached_to(2048, Some(s2.id())).unwrap());
        // Dropping everything with PASID 2048 attached: the device detaches it.
        drop((iopf, faults, s2, parent));
    }

    /// iommufd_dirty_tracking.pasid_set_dirty_tracking.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn pasid_set_dirty_tracking() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).unwrap();
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 0x80).unwrap();
        let hwpt = match Hwpt::alloc(&ioas, &mock, HwptFlags::PASID | HwptFlags::DIRTY_TRACKING) {
            Ok(h) => h,
            Err(e) if kernel_version() < (6, 15) => {
                assert!(e.is_unsupported(), "{e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let pasid_dev = MockDevice::alloc(&hwpt, MockDeviceFlags::PASID, 0x81).unwrap();
        pasid_dev.device().attach_pasid(100, &hwpt).unwrap();
        hwpt.enable_dirty_tracking().unwrap();
        hwpt.disable_dirty_tracking().unwrap();
        pasid_dev.device().detach_pasid(100).unwrap();
        drop(pasid_dev);
        // A device without dirty tracking, its RID on a non-PASID HWPT.
        let ioas2 = Ioas::alloc(&fd).unwrap();
        let no_dirty = MockDevice::alloc(
            &ioas2,
            MockDeviceFlags::PASID | MockDeviceFlags::NO_DIRTY,
            0x82,
        )
        .unwrap();
        assert_errno(no_dirty.device().attach_pasid(100, &hwpt), libc::EINVAL);
    }

    /// vfio_ioas: the VFIO compatibility IOAS, set, read back, cleared; the
    /// kernel forgets it when the IOAS is destroyed.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn vfio_ioas() {
        let fd = open();
        assert_eq!(fd.vfio_compat_ioas().unwrap(), None);
        let ioas = Ioas::alloc(&fd).unwrap();
        fd.set_vfio_compat_ioas(&ioas).unwrap();
        assert_eq!(fd.vfio_compat_ioas().unwrap(), Some(ioas.id()));
        fd.clear_vfio_compat_ioas().unwrap();
        assert_eq!(fd.vfio_compat_ioas().unwrap(), None);
        fd.set_vfio_compat_ioas(&ioas).unwrap();
        drop(ioas);
        assert_eq!(fd.vfio_compat_ioas().unwrap(), None);
        let other = Ioas::alloc(&open()).unwrap();
        let e = fd.set_vfio_compat_ioas(&other).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    }

    /// The event-manager subscribers: a fault and a vEVENT delivered through a
    /// rust-vmm event loop, with their device's label.
    #[cfg(feature = "event-manager")]
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn event_manager_delivers_records() {
        use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
        use iommufd::events::{FaultSubscriber, VeventSubscriber};
        use std::sync::{Arc, Mutex};

        let Some(v) = viommus() else { return };
        let faults = FaultQueue::alloc(&v.fd).unwrap();
        let iopf =
            NestedHwpt::alloc(&v.viommu, &v.mock, S1, HwptFlags::empty(), Some(&faults)).unwrap();
        let _vdev = Vdevice::alloc(&v.viommu, &v.mock, 0x42).unwrap();
        v.mock.replace(&iopf).unwrap();

        let mut manager = EventManager::<Box<dyn MutEventSubscriber + Send>>::new().unwrap();
        let labels = Arc::new(Mutex::new(Vec::new()));
        let seen = labels.clone();
        manager.add_subscriber(Box::new(FaultSubscriber::new(faults, move |q, g| {
            seen.lock().unwrap().push(g.label);
            q.respond(g.cookie, PageResponse::Success).unwrap();
        })));
        selftest::trigger_iopf(&v.mock, 0, 1, FaultPerm::READ, 0x9000).unwrap();
        assert!(manager.run_with_timeout(5000).unwrap() >= 1);
        assert_eq!(*labels.lock().unwrap(), [Some(0x60)]);

        if kernel_version() >= (6, 15) {
            let q = Veventq::alloc(&v.viommu, VeventqType::Selftest, 8).unwrap();
            let batches = Arc::new(Mutex::new(Vec::new()));
            let seen = batches.clone();
            manager.add_subscriber(Box::new(VeventSubscriber::new(q, move |b| {
                seen.lock().unwrap().push(b)
            })));
            selftest::trigger_vevent(&v.mock).unwrap();
            assert!(manager.run_with_timeout(5000).unwrap() >= 1);
            let b = batches.lock().unwrap();
            assert_eq!(b.len(), 1);
            assert_eq!(b[0].events[0].device, Some((v.mock.device().id(), 0x60)));
        }
        v.mock.replace(&v.ioas).unwrap();
    }

    /// Deterministic shuffles of 0..n (Fisher-Yates with xorshift), with the
    /// identity and the reverse first.
    fn shuffles(n: usize, count: usize) -> Vec<Vec<usize>> {
        let mut out = vec![(0..n).collect::<Vec<_>>(), (0..n).rev().collect()];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while out.len() < count {
            let mut a: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                a.swap(i, (x % (i as u64 + 1)) as usize);
            }
            out.push(a);
        }
        out
    }

    /// The whole vIOMMU graph (file, IOAS, nest parent, vIOMMU, vDEVICE, a nested
    /// HWPT with a fault queue the device is attached to, a vEVENTQ, the device)
    /// dropped in many orders: nothing is logged as an error and no object is left
    /// in the kernel.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn viommu_graph_any_drop_order() {
        use iommufd_lab::logs;
        if viommus().is_none() {
            return;
        }
        let with_veventq = kernel_version() >= (6, 15);
        logs::capture();
        let names = [
            "iommufd", "ioas", "parent", "viommu", "vdevice", "nested", "faults", "veventq",
            "device",
        ];
        for order in shuffles(names.len(), 300) {
            let v = viommus().expect("vIOMMU");
            let keep = v.fd.clone();
            let faults = FaultQueue::alloc(&v.fd).expect("fault queue");
            let nested =
                NestedHwpt::alloc(&v.viommu, &v.mock, S1, HwptFlags::empty(), Some(&faults))
                    .expect("nested");
            let vdev = Vdevice::alloc(&v.viommu, &v.mock, 0x99).expect("vDEVICE");
            v.mock.replace(&nested).expect("attach");
            let q = with_veventq
                .then(|| Veventq::alloc(&v.viommu, VeventqType::Selftest, 4).expect("vEVENTQ"));
            let mut ids = vec![
                v.ioas.id().raw(),
                v.parent.id().raw(),
                v.viommu.id().raw(),
                v.nested.id().raw(),
                vdev.id().raw(),
                nested.id().raw(),
                faults.id().raw(),
                v.mock.device().id().raw(),
                v.mock.stdev_id().raw(),
            ];
            ids.extend(q.as_ref().map(|q| q.id().raw()));
            let Viommus {
                fd,
                ioas,
                mock,
                parent,
                viommu,
                nested: other_nested,
            } = v;
            let mut items: Vec<Option<Box<dyn std::any::Any>>> = vec![
                Some(Box::new(fd)),
                Some(Box::new(ioas)),
                Some(Box::new(parent)),
                Some(Box::new((viommu, other_nested))),
                Some(Box::new(vdev)),
                Some(Box::new(nested)),
                Some(Box::new(faults)),
                Some(Box::new(q)),
                Some(Box::new(mock)),
            ];
            for &i in &order {
                drop(items[i].take());
            }
            let what: Vec<&str> = order.iter().map(|&i| names[i]).collect();
            for id in ids {
                match keep.destroy_raw(id) {
                    Err(Error::NotFound { .. }) => {}
                    other => panic!("object {id} left after dropping {what:?}: {other:?}"),
                }
            }
            let errors = logs::take(log::Level::Warn);
            assert!(errors.is_empty(), "dropping {what:?} logged {errors:?}");
        }
    }
}
