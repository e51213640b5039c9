//! PASID tables against the kernel's PASID-capable mock device (Linux 6.15 and
//! later; on older kernels the mock has no PASIDs and the tests check the typed
//! refusal): attach / replace / detach through the table, a fault at a host
//! PASID arriving as the guest's, and invalidations routed by guest PASID.

#[cfg(feature = "selftest")]
mod mock {
    use iommufd::selftest::{self, IOTLB_DEFAULT, MockDevice, MockDeviceFlags};
    use iommufd::{
        FaultPerm, FaultQueue, Hwpt, HwptFlags, Ioas, Iommufd, NestedHwpt, PageResponse,
        SelftestHwptInvalidation, Stage1,
    };
    use iommufd_viommu::{HostPasidPool, PasidError, PasidPolicy, PasidTable};

    const S1: Stage1 = Stage1::Selftest {
        iotlb: IOTLB_DEFAULT,
    };
    const LABEL: u64 = 0x28;

    fn version() -> (u32, u32) {
        let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut it = r.trim().split(|c: char| !c.is_ascii_digit());
        let major = it.next().and_then(|s| s.parse().ok()).expect("major");
        let minor = it.next().and_then(|s| s.parse().ok()).expect("minor");
        (major, minor)
    }

    struct Lab {
        fd: Iommufd,
        /// Kept for the mock device's RID attachment (as a real VMM keeps its IOAS).
        _ioas: Ioas,
        mock: MockDevice,
        s2: Hwpt,
        parent: Hwpt,
    }

    /// A PASID-capable mock device with its RID on a PASID-compatible HWPT, or
    /// `None` before 6.15 (after checking that the table refuses it).
    fn lab() -> Option<Lab> {
        assert!(
            std::path::Path::new(iommufd::DEFAULT_PATH).exists(),
            "/dev/iommu is missing: run in the guest lab (cargo xtask vmtest)"
        );
        let fd = Iommufd::open().expect("open");
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        if version() < (6, 15) {
            let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), LABEL).expect("mock");
            let table = PasidTable::new(PasidPolicy::Identity);
            assert!(matches!(
                table.add_device(mock.device()),
                Err(PasidError::NoPasid { label: LABEL })
            ));
            return None;
        }
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::PASID, LABEL).expect("mock");
        let s2 = Hwpt::alloc(&ioas, &mock, HwptFlags::PASID).expect("PASID HWPT");
        mock.replace(&s2).expect("RID on a PASID-compatible HWPT");
        let parent = Hwpt::alloc(&ioas, &mock, HwptFlags::NEST_PARENT).expect("nest parent");
        Some(Lab {
            fd,
            _ioas: ioas,
            mock,
            s2,
            parent,
        })
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn attach_replace_detach_through_the_table() {
        let Some(l) = lab() else { return };
        let pool = HostPasidPool::new(100..200).unwrap();
        let table = PasidTable::new(PasidPolicy::Allocated {
            pool: pool.clone(),
            quota: 8,
        });
        let pasids = table.add_device(l.mock.device()).unwrap();
        assert_eq!(pasids.width(), 20);
        let n0 = NestedHwpt::alloc(&l.parent, &l.mock, S1, HwptFlags::PASID, None).unwrap();
        let n1 = NestedHwpt::alloc(&l.parent, &l.mock, S1, HwptFlags::PASID, None).unwrap();

        let p = table.attach(LABEL, 5, &n0).unwrap();
        assert_eq!(p, 100);
        assert!(l.mock.pasid_attached_to(100, Some(n0.hwpt_id())).unwrap());
        assert_eq!(
            (pasids.host_pasid(5), pasids.hwpt(5)),
            (Some(100), Some(n0.id().raw()))
        );
        assert_eq!(pasids.guest_pasid(100), Some(5));
        // Replace: the same host PASID, the new HWPT.
        assert_eq!(table.attach(LABEL, 5, &n1).unwrap(), 100);
        assert!(l.mock.pasid_attached_to(100, Some(n1.hwpt_id())).unwrap());
        assert_eq!(pasids.hwpt(5), Some(n1.id().raw()));
        // The kernel refuses (the nest parent is not PASID-compatible): nothing
        // changes, the host PASID goes back to the pool.
        match table.attach(LABEL, 6, &l.parent) {
            Err(PasidError::Iommufd(e)) => assert_eq!(e.errno(), Some(libc::EINVAL), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            (pasids.host_pasid(6), pool.in_use(), pasids.len()),
            (None, 1, 1)
        );
        assert!(l.mock.pasid_attached_to(101, None).unwrap());
        // Guest PASIDs out of the device's range, or 0: refused before the kernel.
        assert!(matches!(
            table.attach(LABEL, 1 << 20, &n0),
            Err(PasidError::OutOfRange { .. })
        ));
        assert!(matches!(
            table.attach(LABEL, 0, &n0),
            Err(PasidError::Reserved { .. })
        ));
        // Detach.
        table.detach(LABEL, 5).unwrap();
        assert!(l.mock.pasid_attached_to(100, None).unwrap());
        assert_eq!((pasids.host_pasid(5), pool.in_use()), (None, 0));
        assert!(matches!(
            table.detach(LABEL, 5),
            Err(PasidError::NotMapped { .. })
        ));
        // Removing the device detaches what is left.
        let a = table.attach(LABEL, 7, &n0).unwrap();
        let b = table.attach(LABEL, 8, &l.s2).unwrap();
        assert_eq!(table.remove_device(LABEL).unwrap(), 2);
        assert!(l.mock.pasid_attached_to(a, None).unwrap());
        assert!(l.mock.pasid_attached_to(b, None).unwrap());
        assert_eq!(pool.in_use(), 0);
        // The HWPTs were held by the attachments only while attached.
        n0.destroy().unwrap();
        n1.destroy().unwrap();
        drop(l);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn a_fault_at_a_host_pasid_reaches_the_guest_pasid() {
        let Some(l) = lab() else { return };
        let pool = HostPasidPool::new(300..400).unwrap();
        let table = PasidTable::new(PasidPolicy::Allocated { pool, quota: 4 });
        table.add_device(l.mock.device()).unwrap();
        let faults = FaultQueue::alloc(&l.fd).unwrap();
        let iopf =
            NestedHwpt::alloc(&l.parent, &l.mock, S1, HwptFlags::PASID, Some(&faults)).unwrap();
        let p = table.attach(LABEL, 9, &iopf).unwrap();
        assert_eq!(p, 300);
        selftest::trigger_iopf(&l.mock, p, 4, FaultPerm::READ, 0x7000).unwrap();
        let groups = faults.read().unwrap();
        assert_eq!(groups.len(), 1);
        assert_eq!(
            groups[0].pasid,
            Some(300),
            "the kernel reports the host PASID"
        );
        let g = table.translate_fault(&groups[0]).unwrap();
        assert_eq!(
            (g.label, g.vpasid),
            (LABEL, Some(9)),
            "the guest sees its own"
        );
        faults
            .respond(g.group.cookie, PageResponse::Success)
            .unwrap();
        table.detach(LABEL, 9).unwrap();
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn invalidations_are_routed_by_guest_pasid() {
        let Some(l) = lab() else { return };
        let table = PasidTable::new(PasidPolicy::Identity);
        table.add_device(l.mock.device()).unwrap();
        let n0 = NestedHwpt::alloc(&l.parent, &l.mock, S1, HwptFlags::PASID, None).unwrap();
        let n1 = NestedHwpt::alloc(&l.parent, &l.mock, S1, HwptFlags::PASID, None).unwrap();
        table.attach(LABEL, 3, &n0).unwrap();
        table.attach(LABEL, 4, &n1).unwrap();
        let one = |id| SelftestHwptInvalidation::one(id).unwrap();
        let batch = [(3, one(0)), (4, one(1)), (3, one(2))];
        let routed = table.route(LABEL, &batch).unwrap();
        assert_eq!(routed.len(), 2);
        for (hwpt, entries) in &routed {
            let target = [&n0, &n1]
                .into_iter()
                .find(|n| n.id().raw() == *hwpt)
                .expect("a HWPT the table attached");
            target.invalidate(entries).unwrap();
        }
        let d = IOTLB_DEFAULT;
        for (n, want) in [(&n0, [0, d, 0, d]), (&n1, [d, 0, d, d])] {
            for (id, w) in (0..).zip(want) {
                selftest::check_iotlb(n, id, w)
                    .unwrap_or_else(|e| panic!("{}: iotlb[{id}]: {e}", n.id()));
            }
        }
        // A guest PASID the table does not have fails the whole batch.
        match table.route(LABEL, &[(3, one(0)), (5, one(0))]) {
            Err(PasidError::Entry { index: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(table.remove_device(LABEL).unwrap(), 2);
    }
}
