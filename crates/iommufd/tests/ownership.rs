//! Ownership on the kernel's mock IOMMU: an IOAS, a HWPT on it, a device attached to
//! the HWPT and two mappings, dropped in every order, leave no kernel object and no
//! pinned page behind, and log no error; handles of another file are refused before
//! the kernel; a stale mapping handle never removes a newer mapping.
//!
//! Ignored on the host; the guest lab runs them (module `mock`: the boot without an
//! emulated VT-d on Linux 6.12).

mod common;

use std::fs::File;

use iommufd::{Error, Ioas, Iommufd};

// The checks that the file is the iommufd, against the guest's real device nodes:
// /dev/iommu passes whichever way it is opened; /dev/vfio/vfio and /dev/kvm (other
// misc devices; the arm64 lab has no KVM) and /dev/null are refused before any
// command reaches them.
#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn only_the_iommufd_is_accepted() {
    let fd = common::open();
    let passed = Iommufd::from_owned_fd(File::open("/dev/iommu").expect("open").into())
        .expect("a passed /dev/iommu fd");
    Ioas::alloc(&passed).expect("IOAS_ALLOC on the passed fd");
    let dup = std::os::fd::AsFd::as_fd(&fd)
        .try_clone_to_owned()
        .expect("dup");
    Iommufd::from_owned_fd(dup).expect("a dup of an iommufd");
    for path in [
        "/dev/vfio/vfio",
        "/dev/kvm",
        "/dev/null",
        "/proc/self/status",
    ] {
        let Ok(f) = File::open(path) else {
            continue;
        };
        let e = Iommufd::from_owned_fd(f.into()).unwrap_err();
        assert!(matches!(e, Error::NotIommufd { .. }), "{path}: {e}");
        let e = Iommufd::open_path(path).unwrap_err();
        assert!(
            matches!(e, Error::NotIommufd { .. } | Error::Open { .. }),
            "{path}: {e}"
        );
    }
    assert!(
        std::path::Path::new("/dev/vfio/vfio").exists(),
        "the lab guest has /dev/vfio/vfio, a misc device that is not the iommufd"
    );
}

#[cfg(feature = "selftest")]
mod mock {
    use std::sync::Arc;

    use super::common::{open, page};
    use iommufd::selftest::{self, MockDevice, MockDeviceFlags};
    use iommufd::vm_memory::MmapRegion;
    use iommufd::{Error, Hwpt, HwptFlags, Ioas, Iommufd, Iova, MapFlags, Mapping};
    use iommufd_lab::logs;
    use iommufd_lab::mem::RegionBytes;

    /// Every ordering of `n` items (Heap's algorithm).
    fn orders(n: usize) -> Vec<Vec<usize>> {
        fn heap(k: usize, a: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            heap(k - 1, a, out);
            for i in 0..k - 1 {
                if k % 2 == 0 {
                    a.swap(i, k - 1);
                } else {
                    a.swap(0, k - 1);
                }
                heap(k - 1, a, out);
            }
        }
        let mut a: Vec<usize> = (0..n).collect();
        let mut out = Vec::new();
        heap(n, &mut a, &mut out);
        out
    }

    #[test]
    fn every_order_of_enumeration_is_distinct() {
        let all = orders(5);
        assert_eq!(all.len(), 120);
        let set: std::collections::BTreeSet<_> = all.into_iter().collect();
        assert_eq!(set.len(), 120);
    }

    /// The objects of one scenario, each droppable on its own.
    struct Scenario {
        fd: Option<Iommufd>,
        ioas: Option<Ioas>,
        hwpt: Option<Hwpt>,
        dev: Option<MockDevice>,
        m1: Option<Mapping<Arc<MmapRegion>>>,
        m2: Option<Mapping<Arc<MmapRegion>>>,
    }

    impl Scenario {
        fn drop_item(&mut self, i: usize) {
            match i {
                0 => drop(self.fd.take()),
                1 => drop(self.ioas.take()),
                2 => drop(self.hwpt.take()),
                3 => drop(self.dev.take()),
                4 => drop(self.m1.take()),
                _ => drop(self.m2.take()),
            }
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn any_drop_order_leaves_nothing_behind() {
        logs::capture();
        let len = 2 * page();
        let (b1, b2) = (
            Arc::new(iommufd_lab::mem::buffer(len as usize)),
            Arc::new(iommufd_lab::mem::buffer(len as usize)),
        );
        b1.fill(1);
        b2.fill(2);
        let names = [
            "iommufd",
            "ioas",
            "hwpt",
            "device",
            "mapping 1",
            "mapping 2",
        ];
        for order in orders(names.len()) {
            let fd = open();
            let keep = fd.clone(); // to look at the file afterwards
            let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
            let dev =
                MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 0x10).expect("MOCK_DOMAIN");
            let auto_hwpt = dev.hwpt_id();
            let hwpt = Hwpt::alloc(&ioas, &dev, HwptFlags::empty()).expect("HWPT_ALLOC");
            dev.replace(&hwpt).expect("attach to the HWPT");
            let m1 = ioas.map(b1.clone(), None, MapFlags::RW).expect("MAP 1");
            let m2 = ioas.map(b2.clone(), None, MapFlags::READ).expect("MAP 2");
            selftest::check_refs(&keep, b1.as_ptr(), len, 1).expect("pinned by the domain");
            let ids = [
                ioas.id().raw(),
                hwpt.id().raw(),
                dev.device().id().raw(),
                dev.stdev_id().raw(),
                auto_hwpt.raw(),
            ];
            let mut s = Scenario {
                fd: Some(fd),
                ioas: Some(ioas),
                hwpt: Some(hwpt),
                dev: Some(dev),
                m1: Some(m1),
                m2: Some(m2),
            };
            for &i in &order {
                s.drop_item(i);
            }
            let what: Vec<&str> = order.iter().map(|&i| names[i]).collect();
            for id in ids {
                match keep.destroy_raw(id) {
                    Err(Error::NotFound { .. }) => {}
                    other => panic!("object {id} left after dropping {what:?}: {other:?}"),
                }
            }
            selftest::check_refs(&keep, b1.as_ptr(), len, 0).expect("unpinned");
            selftest::check_refs(&keep, b2.as_ptr(), len, 0).expect("unpinned");
            let errors = logs::take(log::Level::Error);
            assert!(errors.is_empty(), "dropping {what:?} logged {errors:?}");
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn objects_and_ids_of_another_file_are_refused() {
        // Both files number their objects from 1: the same numbers name different
        // objects, and the crate refuses to mix them before the kernel is asked.
        let (a, b) = (open(), open());
        let ioas_a = Ioas::alloc(&a).expect("IOAS_ALLOC a");
        let ioas_b = Ioas::alloc(&b).expect("IOAS_ALLOC b");
        assert_eq!(ioas_a.id().raw(), ioas_b.id().raw());
        let dev_a = MockDevice::alloc(&ioas_a, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN a");
        let dev_b = MockDevice::alloc(&ioas_b, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN b");
        assert_eq!(dev_a.device().id().raw(), dev_b.device().id().raw());
        let wrong = |e: Error| assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        wrong(Hwpt::alloc(&ioas_b, &dev_a, HwptFlags::empty()).unwrap_err());
        wrong(Hwpt::alloc(&ioas_a, &dev_b, HwptFlags::empty()).unwrap_err());
        wrong(b.has_device(dev_a.device().id()).unwrap_err());
        wrong(dev_a.device().attach(&ioas_b).unwrap_err());
        wrong(dev_a.replace(&ioas_b).unwrap_err());
        wrong(
            selftest::md_check_map(&b, dev_a.hwpt_id(), Iova(0), std::ptr::null(), 0).unwrap_err(),
        );
        // SAFETY: refused before the kernel; nothing is copied.
        wrong(
            unsafe { ioas_b.copy_from(&ioas_a, Iova(1 << 24), 4096, None, MapFlags::RW) }
                .unwrap_err(),
        );
        assert_eq!(
            b.label_of(dev_a.device().id()),
            None,
            "an id of another file has no label here"
        );
        // Each still works with its own file.
        let hwpt = Hwpt::alloc(&ioas_a, &dev_a, HwptFlags::empty()).expect("HWPT_ALLOC a");
        assert_eq!(dev_a.replace(&hwpt).expect("replace"), hwpt.id());
        assert!(a.has_device(dev_a.device().id()).expect("GET_HW_INFO"));
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn a_stale_mapping_handle_leaves_the_new_mapping_alone() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let dev = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        let len = 2 * page();
        let at = Iova(iommufd::selftest::MOCK_APERTURE_START);
        let old = ioas
            .map(
                iommufd_lab::mem::buffer(len as usize),
                Some(at),
                MapFlags::RW,
            )
            .expect("MAP old");
        // A VM reset: everything is unmapped, new memory is mapped at the same IOVAs.
        assert_eq!(ioas.unmap_all().expect("UNMAP all"), len);
        assert!(!old.is_mapped());
        let new = ioas
            .map(
                iommufd_lab::mem::buffer(len as usize),
                Some(at),
                MapFlags::RW,
            )
            .expect("MAP new");
        new.memory().fill(7);
        dev.check_map(at, new.memory().as_ptr(), len)
            .expect("the new memory is mapped");
        drop(old); // must not unmap `new`
        dev.check_map(at, new.memory().as_ptr(), len)
            .expect("still mapped after the old handle");
        selftest::check_refs(&fd, new.memory().as_ptr(), len, 1).expect("still pinned");
        // The same when the old range was removed by a covering unmap.
        let at2 = Iova(at.raw() + 16 * len);
        let old = ioas
            .map(
                iommufd_lab::mem::buffer(len as usize),
                Some(at2),
                MapFlags::RW,
            )
            .expect("MAP old 2");
        ioas.unmap(at2, 4 * len).expect("UNMAP covering");
        let newer = ioas
            .map(
                iommufd_lab::mem::buffer(len as usize),
                Some(at2),
                MapFlags::READ,
            )
            .expect("MAP newer");
        let mem = old
            .unmap()
            .expect("the old handle only gives its memory back");
        assert_eq!(mem.size() as u64, len);
        assert!(newer.is_mapped());
        newer.memory().fill(1);
        dev.check_map(at2, newer.memory().as_ptr(), len)
            .expect("newer still mapped");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn a_leaked_hwpt_keeps_its_ioas_until_destroyed_by_id() {
        logs::capture();
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let ioas_id = ioas.id().raw();
        let dev = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        let hwpt = Hwpt::alloc(&ioas, &dev, HwptFlags::empty()).expect("HWPT_ALLOC");
        drop(dev);
        let id = hwpt.into_id(); // another layer owns it now
        drop(ioas); // the last IOAS handle: the IOAS must stay for the HWPT
        let e = fd.destroy_raw(ioas_id).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EBUSY), "{e}");
        // Destroying the leaked HWPT by id takes the IOAS no handle holds with it.
        fd.destroy_raw(id.raw()).expect("DESTROY the leaked HWPT");
        assert!(matches!(
            fd.destroy_raw(ioas_id),
            Err(Error::NotFound { .. })
        ));
        assert!(logs::take(log::Level::Warn).is_empty());
        // An IOAS leaked with a handle left: dropping the handle does not destroy it.
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let other = ioas.clone();
        let id = ioas.into_id();
        drop(other);
        fd.destroy_raw(id.raw()).expect("still there");
    }

    // An IOAS destroyed by id behind its handle's back: the commands that name it
    // say so with NotFound (HWPT_ALLOC answers EINVAL for a missing pt_id, UNMAP
    // ENOENT as for a range that cuts a mapping: the crate checks which it is).
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn an_ioas_destroyed_by_id_is_not_found() {
        let fd = open();
        let home = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let dev = MockDevice::alloc(&home, MockDeviceFlags::empty(), 1).expect("MOCK_DOMAIN");
        let gone = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        fd.destroy_raw(gone.id().raw()).expect("DESTROY by id");
        let e = Hwpt::alloc(&gone, &dev, HwptFlags::empty()).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        assert!(e.to_string().contains(&gone.id().to_string()), "{e}");
        let e = gone.unmap(Iova(1 << 24), 4096).unwrap_err();
        assert!(matches!(e, Error::NotFound { .. }), "{e}");
        // The IOAS that exists: a range that covers nothing is UnmapSplit.
        let e = home.unmap(Iova(1 << 24), 4096).unwrap_err();
        assert!(matches!(e, Error::UnmapSplit { .. }), "{e}");
        let _ = gone.into_id(); // nothing left to destroy
    }
}
