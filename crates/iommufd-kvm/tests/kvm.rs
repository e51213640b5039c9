//! The KVM handshake with a real KVM VM in the guest lab (`/dev/kvm` there) and an
//! `edu` device behind the emulated VT-d: register, bind, attach, DMA, teardown.

mod kvm {
    use std::os::fd::AsFd;

    use iommufd::{Ioas, Iommufd, Iova, MapFlags};
    use iommufd_kvm::{Error, KvmVfio};
    use iommufd_lab::edu::Edu;
    use iommufd_lab::mem::{self, RegionBytes};
    use iommufd_lab::pci;
    use iommufd_lab::vfio::VfioDevice as LabDevice;
    use iommufd_vfio::{PciAddress, Sysfs, VfioDevice};
    use kvm_ioctls::Kvm;

    const IOVA: Iova = Iova(0x40_0000);

    fn isolated() -> PciAddress {
        let d = pci::isolated_edu().expect("an edu device alone in its group");
        d.bdf().parse().expect("PCI address")
    }

    fn open() -> Iommufd {
        assert!(
            std::path::Path::new("/dev/iommu").exists()
                && std::path::Path::new("/dev/kvm").exists(),
            "/dev/iommu or /dev/kvm missing: run in the guest lab (cargo xtask vmtest)"
        );
        Iommufd::open().expect("open /dev/iommu")
    }

    /// Copies a pattern in and out through the device and checks it.
    fn dma(dev: &iommufd_vfio::BoundDevice, ioas: &Ioas) {
        let m = ioas
            .map(mem::buffer(8192), Some(IOVA), MapFlags::RW)
            .expect("map");
        let data: Vec<u8> = (0..1024).map(|i| (i * 7 + 3) as u8).collect();
        m.memory().write_at(0, &data);
        let fd = dev.as_fd().try_clone_to_owned().expect("dup");
        let edu = Edu::new(&LabDevice::from_owned_fd(fd)).expect("edu BAR0");
        edu.dma_from_memory(IOVA.raw(), 0, 1024)
            .expect("DMA to device");
        edu.dma_to_memory(0, IOVA.raw() + 4096, 1024)
            .expect("DMA to memory");
        assert_eq!(m.memory().read_at(4096, 1024), data);
        drop(edu); // its BAR mapping holds the file
        m.unmap().expect("unmap");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/kvm, /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn register_bind_attach_dma_teardown() {
        let fd = open();
        let vm = Kvm::new().expect("/dev/kvm").create_vm().expect("VM");
        let kv = KvmVfio::new(&vm).expect("KVM VFIO device");
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        let opened = VfioDevice::open_pci(&Sysfs::default(), isolated()).expect("open");
        let registered = kv.register(opened).expect("FILE_ADD");
        assert_eq!(kv.registered().len(), 1);
        // The same open file through another fd: KVM has it already.
        let dup = registered
            .device()
            .as_fd()
            .try_clone_to_owned()
            .expect("dup");
        let refused = kv
            .register(VfioDevice::from_owned_fd(dup, "dup"))
            .unwrap_err();
        assert!(
            matches!(refused.error, Error::AlreadyRegistered { .. }),
            "{}",
            refused.error
        );
        assert_eq!(refused.error.errno(), Some(libc::EEXIST));
        drop(refused);
        assert_eq!(kv.registered().len(), 1);

        let dev = registered.bind(&fd, 0x40).expect("bind");
        dev.attach(&ioas).expect("attach");
        dma(&dev, &ioas);
        // KVM's coherency rule, from the device's VT-d registers.
        assert!(dev.enforces_coherency().is_some(), "VT-d says");
        assert_eq!(kv.dma_coherent(), dev.enforces_coherency());

        let id = dev.id();
        dev.close().expect("detach, FILE_DEL, close");
        assert!(!fd.has_device(id).expect("has_device"), "unbound");
        assert!(kv.registered().is_empty(), "KVM let go of the file");
        assert_eq!(kv.dma_coherent(), None);
        // The device can be registered and bound again.
        let again = VfioDevice::open_pci(&Sysfs::default(), isolated()).expect("reopen");
        let dev = kv
            .register(again)
            .expect("FILE_ADD")
            .bind(&fd, 0x40)
            .expect("bind");
        dev.attach(&ioas).expect("attach");
        dma(&dev, &ioas);
        drop(dev);
        assert!(kv.registered().is_empty());
    }

    #[test]
    #[ignore = "guest lab: needs /dev/kvm, /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn the_vm_fd_may_go_first() {
        iommufd_lab::logs::capture();
        let fd = open();
        let vm = Kvm::new().expect("/dev/kvm").create_vm().expect("VM");
        let kv = KvmVfio::new(&vm).expect("KVM VFIO device");
        drop(vm); // the KVM device holds the VM
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        let opened = VfioDevice::open_pci(&Sysfs::default(), isolated()).expect("open");
        let dev = kv
            .register(opened)
            .expect("FILE_ADD")
            .bind(&fd, 0x41)
            .expect("bind");
        dev.attach(&ioas).expect("attach");
        dma(&dev, &ioas);
        let id = dev.id();
        // Odd order: the VM's handle, the IOAS, then the device (on drop).
        drop(kv);
        drop(ioas);
        drop(dev);
        assert!(!fd.has_device(id).expect("has_device"));
        let logged = iommufd_lab::logs::take(log::Level::Warn);
        assert!(logged.is_empty(), "{logged:?}");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/kvm, /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn unregistering_before_bind_gives_the_device_back() {
        let fd = open();
        let vm = Kvm::new().expect("/dev/kvm").create_vm().expect("VM");
        let kv = KvmVfio::new(&vm).expect("KVM VFIO device");
        let opened = VfioDevice::open_pci(&Sysfs::default(), isolated()).expect("open");
        let registered = kv.register(opened).expect("FILE_ADD");
        let opened = registered.unregister().expect("FILE_DEL");
        assert!(kv.registered().is_empty());
        // Registered again after a bind elsewhere is not possible by type: a
        // BoundDevice cannot be registered. Bound without KVM, it works as before.
        let dev = opened.bind(&fd, 0x42).expect("bind");
        assert!(fd.has_device(dev.id()).expect("has_device"));
    }

    /// The unprivileged half: drops to `nobody`, checks it cannot open the
    /// privileged files, receives the helper's fds, binds, maps and DMAs.
    fn unprivileged_vmm(sock: std::os::unix::net::UnixStream, other_cdev: Option<String>) {
        // SAFETY: plain credential syscalls on this (single-threaded) child.
        unsafe {
            assert_eq!(libc::setgroups(0, std::ptr::null()), 0, "setgroups");
            assert_eq!(libc::setgid(65534), 0, "setgid");
            assert_eq!(libc::setuid(65534), 0, "setuid");
            assert_eq!(libc::getuid(), 65534);
        }
        let denied = |path: &str| {
            let e = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .expect_err(path);
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied,
                "{path}: {e}"
            );
        };
        denied("/dev/iommu");
        if let Some(other) = &other_cdev {
            denied(other);
        }
        let got = iommufd_kvm::handoff::recv(&sock).expect("receive the fds");
        assert_eq!(got.devices.len(), 1);
        let fd = got.iommufd;
        let dev = got
            .devices
            .into_iter()
            .next()
            .expect("device")
            .bind(&fd, 0x50)
            .expect("bind");
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        dev.attach(&ioas).expect("attach");
        dma(&dev, &ioas);
        // Objects of other files are out of reach: this process has no fd for them,
        // and the received file numbers only its own objects.
        assert!(Iommufd::open().is_err());
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn an_unprivileged_vmm_works_with_handed_over_fds() {
        let _ = open();
        let addr = isolated();
        let sysfs = Sysfs::default();
        // Another device's cdev, which the unprivileged process must not open.
        let mine = std::fs::read_dir(format!("/sys/bus/pci/devices/{addr}/vfio-dev"))
            .expect("vfio-dev")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .next()
            .expect("the device's cdev");
        let other = std::fs::read_dir("/dev/vfio/devices")
            .expect("cdevs")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| *n != mine)
            .map(|n| format!("/dev/vfio/devices/{n}"));
        assert!(other.is_some(), "the lab has several edu devices");
        let (helper, vmm) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        // Fork before opening anything: the child must get the files only by
        // message.
        // SAFETY: the child runs only `unprivileged_vmm` (which allocates, as glibc
        // permits after fork) and leaves with `_exit`.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            drop(helper);
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                unprivileged_vmm(vmm, other)
            }))
            .is_ok();
            // SAFETY: ends the child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        drop(vmm);
        // The privileged helper: open, send, close.
        let fd = Iommufd::open().expect("helper: /dev/iommu");
        let dev = VfioDevice::open_pci(&sysfs, addr).expect("helper: the device");
        iommufd_kvm::handoff::send(&helper, &fd, &[&dev]).expect("send");
        drop((dev, fd));
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child status {status:#x}"
        );
        // The child's exit unbound the device: it binds here again.
        let fd = open();
        let again = VfioDevice::open_pci(&sysfs, addr)
            .expect("reopen")
            .bind(&fd, 1);
        assert!(again.is_ok(), "{:?}", again.err().map(|r| r.error));
    }
}
