//! Pinned memory against `RLIMIT_MEMLOCK`: a map that would pin past the limit
//! fails with the typed `Error::PinLimit` (how much was asked, what the limit was)
//! and leaves the IOAS usable; an IOAS shared by two devices charges its pages
//! once. The kernel's mock devices pin what is mapped, like a real domain.

mod common;

#[cfg(feature = "selftest")]
mod mock {
    use super::common::{kernel_version, memfd, open};
    use iommufd::selftest::{MockDevice, MockDeviceFlags};
    use iommufd::{Error, Ioas, MapFlags};
    use iommufd_lab::mem::{self, RegionBytes};

    /// Drops CAP_IPC_LOCK from the calling thread's effective set.
    fn drop_ipc_lock() {
        iommufd_lab::caps::drop_effective(iommufd_lab::caps::CAP_IPC_LOCK).expect("capset");
    }

    fn set_memlock(bytes: u64) -> libc::rlimit {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write one `rlimit`.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut old), 0);
            let new = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: old.rlim_max,
            };
            assert_eq!(libc::setrlimit(libc::RLIMIT_MEMLOCK, &new), 0);
        }
        old
    }

    /// A process's memory counter (`VmPin`, `VmLck`; kB), as /proc reports it.
    fn vm_kb(pid: &str, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| {
                v.trim_start_matches(':')
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
    }

    /// This process's pinned pages (kB).
    fn vm_pin_kb() -> u64 {
        vm_kb("self", "VmPin")
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn a_map_past_the_memlock_limit_is_a_typed_error() {
        // Charged to the user (the default) and to the process: the same limit.
        for mode in [iommufd::RlimitMode::User, iommufd::RlimitMode::Process] {
            std::thread::spawn(move || {
                drop_ipc_lock();
                let fd = open();
                fd.set_rlimit_mode(mode).expect("RLIMIT_MODE");
                let ioas = Ioas::alloc(&fd).expect("IOAS");
                let _mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("mock");
                let old = set_memlock(256 << 10);
                let big = mem::buffer(1 << 20);
                big.fill(1);
                let r = ioas.map(big, None, MapFlags::RW);
                let small = mem::buffer(64 << 10);
                small.fill(2);
                let ok = ioas.map(small, None, MapFlags::RW);
                // SAFETY: restores the limit read above.
                unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &old) };
                let refused = r.expect_err("1 MiB over a 256 KiB limit");
                match &refused.error {
                    Error::PinLimit {
                        requested, limit, ..
                    } => assert_eq!((*requested, *limit), (1 << 20, Some(256 << 10)), "{mode:?}"),
                    e => panic!("{mode:?}: {e}"),
                }
                assert_eq!(refused.error.errno(), Some(libc::ENOMEM));
                assert!(
                    refused.error.to_string().contains("RLIMIT_MEMLOCK 0x40000"),
                    "{}",
                    refused.error
                );
                // Nothing was mapped, and the IOAS still takes what fits.
                let m = ok.expect("64 KiB under the limit");
                assert_eq!(m.len(), 64 << 10);
                m.unmap().expect("unmap");
            })
            .join()
            .expect("thread");
        }
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn two_devices_on_one_ioas_pin_once() {
        std::thread::spawn(|| {
            drop_ipc_lock(); // charged pins show in VmPin
            let fd = open();
            fd.set_rlimit_mode(iommufd::RlimitMode::Process)
                .expect("IOMMU_OPTION_RLIMIT_MODE (this file only)");
            let ioas = Ioas::alloc(&fd).expect("IOAS");
            let a = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("mock a");
            let before = vm_pin_kb();
            let buf = mem::buffer(1 << 20);
            buf.fill(3);
            let m = ioas.map(buf, None, MapFlags::RW).expect("map");
            let one = vm_pin_kb() - before;
            let b = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 2).expect("mock b");
            let two = vm_pin_kb() - before;
            assert_eq!(one, 1024, "1 MiB pinned for one device");
            assert_eq!(two, one, "a second device on the IOAS pins nothing more");
            drop((a, b));
            m.unmap().expect("unmap");
            assert_eq!(vm_pin_kb(), before);
        })
        .join()
        .expect("thread");
    }

    /// change_process.basic, every variant (no option set, user accounting, process
    /// accounting): `IOMMU_IOAS_CHANGE_PROCESS` refuses user mappings, works in the
    /// process that mapped, and moves the pin accounting of file mappings to a
    /// forked child that calls it.
    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn change_process_moves_the_accounting_to_a_child() {
        if kernel_version() < (6, 13) {
            let e = open().change_process().unwrap_err();
            assert!(e.is_unsupported(), "{e}");
            return;
        }
        for mode in [
            None,
            Some(iommufd::RlimitMode::User),
            Some(iommufd::RlimitMode::Process),
        ] {
            std::thread::spawn(move || {
                drop_ipc_lock();
                let fd = open();
                if let Some(m) = mode {
                    fd.set_rlimit_mode(m).expect("RLIMIT_MODE");
                }
                let ioas = Ioas::alloc(&fd).expect("IOAS");
                let _mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("mock");
                let page = 4096u64;
                // A user mapping: the pages belong to this mm, no moving them.
                let buf = mem::buffer(page as usize);
                buf.fill(1);
                let m = ioas.map(buf, None, MapFlags::RW).expect("map");
                let e = fd.change_process().unwrap_err();
                assert_eq!(e.errno(), Some(libc::EINVAL), "{e}");
                m.unmap().expect("unmap");
                // File mappings only: it works here...
                let f = memfd(page);
                ioas.map_file(&f, 0, page, None, MapFlags::RW)
                    .expect("map_file");
                fd.change_process()
                    .expect("CHANGE_PROCESS in the mapping process");
                let parent = std::process::id().to_string();
                let nlock = page / 1024;
                // ... and moves the accounting to a child that asks.
                // SAFETY: the child runs the checks below (allocating, as glibc
                // allows after fork) and leaves with `_exit`.
                let child = unsafe { libc::fork() };
                assert!(child >= 0, "fork");
                if child == 0 {
                    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        assert_eq!(vm_kb(&parent, "VmPin"), nlock, "parent pins before");
                        if mode == Some(iommufd::RlimitMode::Process) {
                            assert_eq!(vm_kb(&parent, "VmLck"), nlock, "parent locked before");
                        }
                        assert_eq!((vm_kb("self", "VmPin"), vm_kb("self", "VmLck")), (0, 0));
                        fd.change_process().expect("CHANGE_PROCESS in the child");
                        assert_eq!(vm_kb(&parent, "VmPin"), 0, "parent pins after");
                        assert_eq!(vm_kb(&parent, "VmLck"), 0, "parent locked after");
                        assert_eq!(vm_kb("self", "VmPin"), nlock, "child pins after");
                        if mode == Some(iommufd::RlimitMode::Process) {
                            assert_eq!(vm_kb("self", "VmLck"), nlock, "child locked after");
                        }
                    }))
                    .is_ok();
                    // SAFETY: ends the child without the parent's destructors.
                    unsafe { libc::_exit(if ok { 0 } else { 1 }) };
                }
                let mut status = 0;
                // SAFETY: waits for the child forked above.
                assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
                assert!(
                    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                    "{mode:?}: child status {status:#x}"
                );
            })
            .join()
            .expect("thread");
        }
    }
}
