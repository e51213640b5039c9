//! Helpers shared by the guest-lab tests.
//!
//! The tests in this directory issue real ioctls on `/dev/iommu`, so they are
//! `#[ignore]`d on the host and run in the guest lab (`cargo xtask vmtest`), where a
//! missing `/dev/iommu` fails them.

#![allow(dead_code)]

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};

use iommufd::{Error, Iommufd};

/// Opens `/dev/iommu`, failing the test (not skipping it) if it is missing.
pub fn open() -> Iommufd {
    assert!(
        std::path::Path::new(iommufd::DEFAULT_PATH).exists(),
        "/dev/iommu is missing: this test must run in the guest lab (cargo xtask vmtest)"
    );
    Iommufd::open().expect("open /dev/iommu")
}

/// The CPU page size.
pub fn page() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).expect("page size")
}

/// The running kernel's (major, minor) version.
pub fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
    parse_version(release.trim()).expect("kernel version")
}

/// "6.12.3-foo" -> (6, 12); "7.x" -> None.
pub fn parse_version(s: &str) -> Option<(u32, u32)> {
    let mut it = s.split(|c: char| !c.is_ascii_digit());
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// A memfd of `len` bytes.
pub fn memfd(len: u64) -> File {
    // SAFETY: memfd_create with a NUL-terminated name creates a new fd or fails.
    let fd = unsafe { libc::memfd_create(c"iommufd-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a new, valid file descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(len).expect("ftruncate memfd");
    file
}

/// Asserts that `r` failed with `errno`, reporting the error otherwise.
#[track_caller]
pub fn assert_errno<T: std::fmt::Debug>(r: Result<T, Error>, errno: i32) -> Error {
    match r {
        Ok(v) => panic!("expected errno {errno}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(e.errno(), Some(errno), "wrong errno: {e}");
            e
        }
    }
}
