//! Device binding against the real kernel: QEMU `edu` devices behind the guest lab's
//! emulated VT-d, bound through their VFIO cdevs with this crate, doing real DMA.
//!
//! Ignored on the host; `cargo xtask vmtest` runs them in the guest with `--ignored`.

mod common;

mod vfio {
    use super::common::{bind_isolated, edu, isolated, open, pattern};

    use iommufd::{Ioas, Iommufd, Iova, MapFlags, Mapping, PageTable};
    use iommufd_lab::edu::{EDU_MAX_TRANSFER, Edu};
    use iommufd_lab::mem::{self, RegionBytes};
    use iommufd_lab::pci;
    use iommufd_vfio::{BoundDevice, GroupError, PciAddress, Sysfs, VfioDevice};
    use vm_memory::MmapRegion;

    const LEN: usize = EDU_MAX_TRANSFER as usize;
    const IOVA: Iova = Iova(0x40_0000);

    fn buffer(fill: u8) -> MmapRegion {
        let r = mem::buffer(8192);
        r.fill(fill);
        r
    }

    fn read(m: &Mapping<MmapRegion>, off: usize, len: usize) -> Vec<u8> {
        m.memory().read_at(off, len)
    }

    /// Writes a pattern at IOVA, has the device copy it in and back out 4 KiB further,
    /// and returns what came back.
    fn round_trip(edu: &Edu, m: &Mapping<MmapRegion>, seed: u8) -> (Vec<u8>, Vec<u8>) {
        let data = pattern(LEN, seed);
        m.memory().write_at(0, &data);
        edu.dma_from_memory(IOVA.raw(), 0, LEN as u64)
            .expect("DMA to device");
        edu.dma_to_memory(0, IOVA.raw() + 4096, LEN as u64)
            .expect("DMA to memory");
        (data, read(m, 4096, LEN))
    }

    /// Asserts that the kernel has no object `id` in `fd` (any more): `IOMMU_DESTROY`
    /// of it fails with `ENOENT`.
    fn assert_gone(fd: &Iommufd, what: &str, id: u32) {
        match fd.destroy_raw(id) {
            Err(e) => {
                assert!(
                    matches!(e, iommufd::Error::NotFound { .. }),
                    "{what} {id}: {e}"
                );
                assert_eq!(e.errno(), Some(libc::ENOENT), "{what} {id}: {e}");
            }
            Ok(()) => panic!("{what} {id} still existed (destroyed now by the test)"),
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn dma_map_unmap_remap() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let dev = bind_isolated(&fd, 0xed0);
        let hwpt = dev.attach(&ioas).expect("attach");
        assert_ne!(
            hwpt.raw(),
            ioas.id().raw(),
            "attaching an IOAS returns the kernel's HWPT"
        );
        let edu = edu(&dev);

        let m = ioas.map(buffer(0), Some(IOVA), MapFlags::RW).expect("map");
        let (sent, back) = round_trip(&edu, &m, 3);
        assert_eq!(back, sent, "DMA out and back through the IOMMU");

        // Unmapped: the device's write goes nowhere.
        let region = m.unmap().expect("unmap");
        region.write_at(4096, &vec![0u8; LEN]);
        edu.dma_to_memory(0, IOVA.raw() + 4096, LEN as u64)
            .expect("DMA completes on the device side");
        let after = region.read_at(4096, LEN);
        assert!(
            after.iter().all(|&b| b == 0),
            "DMA reached memory after unmap"
        );

        // Mapped again: it does again.
        let m = ioas.map(region, Some(IOVA), MapFlags::RW).expect("re-map");
        let (sent, back) = round_trip(&edu, &m, 9);
        assert_eq!(back, sent, "DMA after re-map");
        drop(m);
        // The BAR mapping keeps the device bound: it goes first, so that closing
        // really unbinds (close checks it).
        drop(edu);
        dev.close().expect("detach, close and unbind");
        ioas.destroy()
            .expect("IOAS destroyable once the device is gone");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn replace_switches_address_space() {
        let fd = open();
        let (a, b) = (
            Ioas::alloc(&fd).expect("IOAS A"),
            Ioas::alloc(&fd).expect("IOAS B"),
        );
        let ma = a
            .map(buffer(0xaa), Some(IOVA), MapFlags::RW)
            .expect("map A");
        let mb = b
            .map(buffer(0xbb), Some(IOVA), MapFlags::RW)
            .expect("map B");
        // A marker where the device will write, in A: it must survive the replace.
        ma.memory().write_at(4096, &[0x11; 64]);
        let dev = bind_isolated(&fd, 1);
        dev.attach(&a).expect("attach A");
        let edu = edu(&dev);

        edu.dma_from_memory(IOVA.raw(), 0, 64).expect("read A");
        dev.attach(&b).expect("replace with B");
        assert_eq!(dev.attached_to().map(|p| p.raw()), Some(b.id().raw()));
        assert!(
            dev.attached_to()
                .is_some_and(|p| p.same(&PageTable::from(&b))),
            "the device holds B now"
        );
        edu.dma_to_memory(0, IOVA.raw() + 4096, 64)
            .expect("write through B");
        assert_eq!(
            read(&mb, 4096, 64),
            vec![0xaa; 64],
            "the write lands in B's buffer"
        );
        assert_eq!(
            read(&ma, 4096, 64),
            vec![0x11; 64],
            "A's memory is out of the device's reach"
        );
        // And the device now reads B's memory at the same IOVA.
        edu.dma_from_memory(IOVA.raw(), 0, 64).expect("read B");
        edu.dma_to_memory(0, IOVA.raw() + 4096, 64)
            .expect("write B");
        assert_eq!(read(&mb, 4096, 64), vec![0xbb; 64]);

        // Teardown in an order that used to be wrong: the IOAS handles first, while
        // B is attached and both have memory mapped, then the mappings, then the
        // device. Each IOAS goes with the last thing that holds it; none is left.
        let (a_id, b_id, dev_id) = (a.id(), b.id(), dev.id());
        drop((a, b));
        drop((ma, mb));
        drop(edu);
        drop(dev);
        assert_gone(&fd, "IOAS A", a_id.raw());
        assert_gone(&fd, "IOAS B", b_id.raw());
        assert!(
            !fd.has_device(dev_id).expect("GET_HW_INFO"),
            "the device is unbound"
        );
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu and the shared-group topology (cargo xtask vmtest)"]
    fn group_with_driver_bound_member_is_refused_by_name() {
        let (edu, other) = pci::edu_sharing_group_with_driver().expect("lab topology");
        let driver = other.driver().expect("driver");
        let addr: PciAddress = edu.bdf().parse().expect("address");
        let sysfs = Sysfs::default();
        let fd = open();

        let err = VfioDevice::open_pci(&sysfs, addr).expect_err("group is not viable");
        match &err {
            iommufd_vfio::Error::Group(GroupError::NotViable { offenders, .. }) => {
                assert_eq!(offenders, &vec![(other.bdf().to_string(), driver.clone())]);
            }
            e => panic!("expected NotViable, got {e}"),
        }
        assert!(
            err.to_string()
                .contains(&format!("{} is bound to {driver}", other.bdf())),
            "{err}"
        );

        // Bypassing the check, the kernel says the same with EPERM; the device comes
        // back, unbound, and the label is free again.
        let raw = VfioDevice::open(sysfs.vfio_cdev(addr).expect("cdev")).expect("open cdev");
        let refused = raw.bind(&fd, 2).expect_err("kernel refuses");
        assert_eq!(
            refused.error.errno(),
            Some(libc::EPERM),
            "{}",
            refused.error
        );
        assert_eq!(fd.device_by_label(2), None);
        drop(refused);

        other.unbind().expect("unbind the other member");
        let res = VfioDevice::open_pci(&sysfs, addr).and_then(|d| {
            d.bind(&fd, 2)
                .map(|b| b.id())
                .map_err(iommufd_vfio::Error::from)
        });
        other
            .bind(&driver)
            .expect("rebind the other member's driver");
        res.expect("viable once the other member is unbound");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn label_comes_back_wherever_the_device_is_named() {
        let fd = open();
        let label = 0x5107_0004;
        let dev = bind_isolated(&fd, label);
        let id = dev.id();
        assert_eq!(dev.label(), label);
        assert_eq!(fd.label_of(id), Some(label));
        assert_eq!(fd.device_by_label(label), Some(id));
        let info = dev.hw_info().expect("hw_info");
        assert_eq!((info.device, info.label), (id, label));

        // A second device cannot take the same label; the failed bind leaves nothing.
        let other = pci::edu_devices()
            .expect("edu devices")
            .into_iter()
            .find(|d| {
                d.group_members().map(|m| m.len() == 1).unwrap_or(false)
                    && d.bdf() != isolated().to_string()
            })
            .expect("a second isolated edu");
        let second = VfioDevice::open_pci(&Sysfs::default(), other.bdf().parse().expect("addr"))
            .expect("open");
        let refused = second.bind(&fd, label).expect_err("label in use");
        assert!(
            matches!(
                refused.error,
                iommufd_vfio::Error::Iommufd(iommufd::Error::LabelInUse { .. })
            ),
            "{}",
            refused.error
        );
        assert_eq!(fd.device_by_label(label), Some(id));
        // Refused before the kernel was asked: the second device comes back unbound,
        // and binds under a label of its own.
        let second = refused
            .object
            .bind(&fd, label + 1)
            .expect("the refused device binds under another label");
        assert_eq!(fd.device_by_label(label + 1), Some(second.id()));
        assert_eq!(fd.device_by_label(label), Some(id));
        let second_id = second.id();
        second.close().expect("close the second device");
        assert_eq!(fd.device_by_label(label + 1), None);
        assert!(!fd.has_device(second_id).expect("GET_HW_INFO"));

        drop(dev);
        assert_eq!(fd.label_of(id), None, "the label goes with the device");
        assert_eq!(fd.device_by_label(label), None);
        assert!(!fd.has_device(id).expect("GET_HW_INFO"), "unbound");
    }

    /// What `dropped_while_attached_leaves_no_kernel_object` drops, in some order.
    #[derive(Clone, Copy, Debug)]
    enum Part {
        Ioas,
        Mapping,
        Device,
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn dropped_while_attached_leaves_no_kernel_object() {
        let fd = open();
        // Every order of dropping the IOAS handle, a mapping in it and the device
        // attached to it: each thing holds what it needs, so none is wrong.
        let orders = [
            [Part::Device, Part::Mapping, Part::Ioas],
            [Part::Device, Part::Ioas, Part::Mapping],
            [Part::Mapping, Part::Device, Part::Ioas],
            [Part::Mapping, Part::Ioas, Part::Device],
            [Part::Ioas, Part::Device, Part::Mapping],
            [Part::Ioas, Part::Mapping, Part::Device],
        ];
        for order in orders {
            let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
            let m = ioas.map(buffer(0), Some(IOVA), MapFlags::RW).expect("map");
            // The same label every round: it is free again once the device is gone.
            let dev = bind_isolated(&fd, 7);
            let hwpt = dev.attach(&ioas).expect("attach");
            let (dev_id, ioas_id) = (dev.id(), ioas.id());
            let (mut ioas, mut m, mut dev) = (Some(ioas), Some(m), Some(dev));
            for part in order {
                match part {
                    Part::Ioas => drop(ioas.take()),
                    Part::Mapping => drop(m.take()),
                    Part::Device => {
                        drop(dev.take());
                        // The device object and the auto-created HWPT are gone with it,
                        // whatever is left of the IOAS.
                        assert_gone(&fd, "hwpt", hwpt.raw());
                        assert_gone(&fd, "device", dev_id.raw());
                        assert_eq!(fd.label_of(dev_id), None, "{order:?}");
                    }
                }
                if let Some(m) = &m {
                    assert!(m.is_mapped(), "{order:?}: the mapping outlives {part:?}");
                }
            }
            // The IOAS went with the last thing that held it.
            assert_gone(&fd, "IOAS", ioas_id.raw());
        }

        // And the device binds again at once.
        let again = bind_isolated(&fd, 7);
        again.close().expect("close");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn pasid_attach_on_a_device_without_pasid() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let dev = bind_isolated(&fd, 8);
        dev.attach(&ioas).expect("attach");
        let err = dev
            .attach_pasid(1, &ioas)
            .expect_err("edu has no PASID capability");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let new_kernel = !release.starts_with("6.12");
        eprintln!("attach_pasid on {release}: {err}");
        assert_eq!(err.is_unsupported(), !new_kernel, "kernel {release}: {err}");
        assert!(dev.attached_pasids().is_empty());
        assert!(
            dev.attached_to()
                .is_some_and(|p| p.same(&PageTable::from(&ioas))),
            "the failed PASID attach leaves the device attached to the IOAS"
        );
        dev.close().expect("close");
    }

    /// Gives a group member back to its kernel driver when dropped, even if the test
    /// fails half-way.
    struct Restore {
        dev: pci::PciDevice,
        driver: String,
    }

    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = self.dev.unbind();
            let _ = self.dev.bind(&self.driver);
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu and the shared-group topology (cargo xtask vmtest)"]
    fn whole_group_bound_together() {
        let (edu, other) = pci::edu_sharing_group_with_driver().expect("lab topology");
        let restore = Restore {
            driver: other.driver().expect("driver"),
            dev: other.clone(),
        };
        let sysfs = Sysfs::default();
        let addr: PciAddress = edu.bdf().parse().expect("address");

        // Hand the other member to vfio-pci as well: now the whole group can go.
        other.unbind().expect("unbind the other member");
        other.bind("vfio-pci").expect("bind it to vfio-pci");
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
        let members = VfioDevice::open_group(&sysfs, addr).expect("open the group");
        let mut names: Vec<&str> = members.iter().map(|d| d.name()).collect();
        names.sort();
        let mut want = vec![edu.bdf(), other.bdf()];
        want.sort();
        assert_eq!(names, want, "every vfio-pci member, and only those");

        let bound: Vec<BoundDevice> = members
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.bind(&fd, 0x600 + i as u64).expect("bind a group member"))
            .collect();
        for (i, b) in bound.iter().enumerate() {
            assert_eq!(fd.device_by_label(0x600 + i as u64), Some(b.id()));
            b.attach(&ioas)
                .expect("attach a group member to the shared IOAS");
        }

        // The attached members hold the IOAS: destroying it is refused without asking
        // the kernel, and it comes back.
        let refused = ioas.destroy().expect_err("the members hold the IOAS");
        assert!(
            matches!(refused.error, iommufd::Error::InUse { .. }),
            "{}",
            refused.error
        );
        let ioas = refused.object;
        // Dropping the IOAS handle before the group is fine: the members release it
        // after unbinding, and it goes with the last one.
        let ioas_id = ioas.id();
        let ids: Vec<_> = bound.iter().map(|b| b.id()).collect();
        drop(ioas);
        drop(bound);
        assert_gone(&fd, "IOAS", ioas_id.raw());
        for id in ids {
            assert!(!fd.has_device(id).expect("GET_HW_INFO"), "{id} unbound");
        }
        drop(restore);
        assert!(
            other.driver().is_some_and(|d| d != "vfio-pci"),
            "the other member has its driver back"
        );
    }
}
