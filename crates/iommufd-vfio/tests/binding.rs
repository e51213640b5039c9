//! Device binding against the real kernel: QEMU `edu` devices behind the guest lab's
//! emulated VT-d, bound through their VFIO cdevs with this crate, doing real DMA.
//!
//! Ignored on the host; `cargo xtask vmtest` runs them in the guest with `--ignored`.

mod vfio {
    use std::os::fd::AsFd;

    use iommufd::{Iommufd, Iova, MapFlags, Mapping, MmapRegion};
    use iommufd_lab::edu::{EDU_MAX_TRANSFER, Edu};
    use iommufd_lab::pci;
    use iommufd_lab::vfio::VfioDevice as LabDevice;
    use iommufd_vfio::{BoundDevice, GroupError, PciAddress, Sysfs, VfioDevice};

    const LEN: usize = EDU_MAX_TRANSFER as usize;
    const IOVA: Iova = Iova(0x40_0000);

    fn open() -> Iommufd {
        assert!(
            std::path::Path::new("/dev/iommu").exists(),
            "/dev/iommu is missing: this test must run in the guest lab (cargo xtask vmtest)"
        );
        Iommufd::open().expect("open /dev/iommu")
    }

    fn isolated() -> PciAddress {
        let d = pci::isolated_edu().expect("an edu device alone in its group");
        d.bdf().parse().expect("PCI address")
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
            .collect()
    }

    /// The edu driver of the lab, on a duplicate of the bound device's fd.
    fn edu(dev: &BoundDevice<'_>) -> Edu {
        let fd = dev.as_fd().try_clone_to_owned().expect("dup device fd");
        Edu::new(&LabDevice::from_owned_fd(fd)).expect("edu BAR0")
    }

    fn buffer(fill: u8) -> MmapRegion {
        let r = MmapRegion::new(8192).expect("mmap");
        r.write_at(0, &vec![fill; 8192]).expect("fill");
        r
    }

    fn read(m: &Mapping<'_>, off: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        m.region().read_at(off, &mut v).expect("read");
        v
    }

    /// Writes a pattern at IOVA, has the device copy it in and back out 4 KiB further,
    /// and returns what came back.
    fn round_trip(edu: &Edu, m: &Mapping<'_>, seed: u8) -> (Vec<u8>, Vec<u8>) {
        let data = pattern(LEN, seed);
        m.region().write_at(0, &data).expect("write");
        edu.dma_from_memory(IOVA.raw(), 0, LEN as u64)
            .expect("DMA to device");
        edu.dma_to_memory(0, IOVA.raw() + 4096, LEN as u64)
            .expect("DMA to memory");
        (data, read(m, 4096, LEN))
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn dma_map_unmap_remap() {
        let fd = open();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let dev = VfioDevice::open_pci(&Sysfs::default(), isolated())
            .expect("open")
            .bind(&fd, 0xed0)
            .expect("bind");
        let hwpt = dev.attach(&ioas).expect("attach");
        assert_ne!(
            hwpt.raw(),
            ioas.id().raw(),
            "attaching an IOAS returns the kernel's HWPT"
        );
        let edu = edu(&dev);

        let m = ioas
            .map_owned(buffer(0), Some(IOVA), MapFlags::RW)
            .expect("map");
        let (sent, back) = round_trip(&edu, &m, 3);
        assert_eq!(back, sent, "DMA out and back through the IOMMU");

        // Unmapped: the device's write goes nowhere.
        let region = m.unmap().expect("unmap");
        region.write_at(4096, &vec![0u8; LEN]).expect("clear");
        edu.dma_to_memory(0, IOVA.raw() + 4096, LEN as u64)
            .expect("DMA completes on the device side");
        let mut after = vec![0xffu8; LEN];
        region.read_at(4096, &mut after).expect("read");
        assert!(
            after.iter().all(|&b| b == 0),
            "DMA reached memory after unmap"
        );

        // Mapped again: it does again.
        let m = ioas
            .map_owned(region, Some(IOVA), MapFlags::RW)
            .expect("re-map");
        let (sent, back) = round_trip(&edu, &m, 9);
        assert_eq!(back, sent, "DMA after re-map");
        drop(m);
        dev.close().expect("detach and close");
        ioas.destroy()
            .expect("IOAS destroyable once the device is gone");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn replace_switches_address_space() {
        let fd = open();
        let (a, b) = (
            fd.alloc_ioas().expect("IOAS A"),
            fd.alloc_ioas().expect("IOAS B"),
        );
        let ma = a
            .map_owned(buffer(0xaa), Some(IOVA), MapFlags::RW)
            .expect("map A");
        let mb = b
            .map_owned(buffer(0xbb), Some(IOVA), MapFlags::RW)
            .expect("map B");
        // A marker where the device will write, in A: it must survive the replace.
        ma.region().write_at(4096, &[0x11; 64]).expect("marker");
        let dev = VfioDevice::open_pci(&Sysfs::default(), isolated())
            .expect("open")
            .bind(&fd, 1)
            .expect("bind");
        dev.attach(&a).expect("attach A");
        let edu = edu(&dev);

        edu.dma_from_memory(IOVA.raw(), 0, 64).expect("read A");
        dev.attach(&b).expect("replace with B");
        assert_eq!(dev.attached_to().map(|p| p.raw()), Some(b.id().raw()));
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
        drop(dev);
        drop((ma, mb));
        a.destroy().expect("A free");
        b.destroy().expect("B free");
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

        // Bypassing the check, the kernel says the same with EPERM.
        let raw = VfioDevice::open(sysfs.vfio_cdev(addr).expect("cdev")).expect("open cdev");
        assert_eq!(
            raw.bind(&fd, 2).expect_err("kernel refuses").errno(),
            Some(libc::EPERM)
        );

        other.unbind().expect("unbind the other member");
        let res = VfioDevice::open_pci(&sysfs, addr).and_then(|d| d.bind(&fd, 2).map(|b| b.id()));
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
        let dev = VfioDevice::open_pci(&Sysfs::default(), isolated())
            .expect("open")
            .bind(&fd, label)
            .expect("bind");
        let id = dev.id();
        assert_eq!(dev.label(), label);
        assert_eq!(fd.label_of(id), Some(label));
        assert_eq!(fd.device_by_label(label), Some(id));
        let info = fd.hw_info(id).expect("hw_info");
        assert_eq!((info.device, info.label), (id, Some(label)));

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
        let err = second.bind(&fd, label).expect_err("label in use");
        assert!(
            matches!(
                err,
                iommufd_vfio::Error::Iommufd(iommufd::Error::LabelInUse { .. })
            ),
            "{err}"
        );
        assert_eq!(fd.device_by_label(label), Some(id));

        drop(dev);
        assert_eq!(fd.label_of(id), None, "the label goes with the device");
        assert_eq!(fd.device_by_label(label), None);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn dropped_while_attached_leaves_no_kernel_object() {
        let fd = open();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let m = ioas
            .map_owned(buffer(0), Some(IOVA), MapFlags::RW)
            .expect("map");
        let dev = VfioDevice::open_pci(&Sysfs::default(), isolated())
            .expect("open")
            .bind(&fd, 7)
            .expect("bind");
        let hwpt = dev.attach(&ioas).expect("attach");
        let dev_id = dev.id();
        drop(dev);
        // The device object and the auto-created HWPT are gone with it.
        assert_eq!(
            fd.destroy_raw(hwpt.raw()).expect_err("hwpt gone").errno(),
            Some(libc::ENOENT)
        );
        assert_eq!(
            fd.destroy_raw(dev_id.raw())
                .expect_err("device gone")
                .errno(),
            Some(libc::ENOENT)
        );
        drop(m);
        ioas.destroy().expect("nothing holds the IOAS");

        // And the device binds again at once.
        let again = VfioDevice::open_pci(&Sysfs::default(), isolated())
            .expect("open")
            .bind(&fd, 7)
            .expect("re-bind");
        again.close().expect("close");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn pasid_attach_on_a_device_without_pasid() {
        let fd = open();
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let dev = VfioDevice::open_pci(&Sysfs::default(), isolated())
            .expect("open")
            .bind(&fd, 8)
            .expect("bind");
        dev.attach(&ioas).expect("attach");
        let err = dev
            .attach_pasid(1, &ioas)
            .expect_err("edu has no PASID capability");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let new_kernel = !release.starts_with("6.12");
        eprintln!("attach_pasid on {release}: {err}");
        assert_eq!(err.is_unsupported(), !new_kernel, "kernel {release}: {err}");
        assert!(dev.attached_pasids().is_empty());
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
        let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
        let members = VfioDevice::open_group(&sysfs, addr).expect("open the group");
        let mut names: Vec<&str> = members.iter().map(|d| d.name()).collect();
        names.sort();
        let mut want = vec![edu.bdf(), other.bdf()];
        want.sort();
        assert_eq!(names, want, "every vfio-pci member, and only those");

        let bound: Vec<BoundDevice<'_>> = members
            .into_iter()
            .enumerate()
            .map(|(i, d)| d.bind(&fd, 0x600 + i as u64).expect("bind a group member"))
            .collect();
        for (i, b) in bound.iter().enumerate() {
            assert_eq!(fd.device_by_label(0x600 + i as u64), Some(b.id()));
            b.attach(&ioas)
                .expect("attach a group member to the shared IOAS");
        }
        drop(bound);
        ioas.destroy().expect("IOAS free once the group is gone");
        drop(restore);
        assert!(
            other.driver().is_some_and(|d| d != "vfio-pci"),
            "the other member has its driver back"
        );
    }
}
