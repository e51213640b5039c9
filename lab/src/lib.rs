//! Support for tests that run inside the guest lab (`cargo xtask vmtest`).
//!
//! The lab boots a real kernel with iommufd, VFIO device cdevs and an emulated VT-d
//! IOMMU, with QEMU `edu` PCI devices bound to vfio-pci. This crate finds those
//! devices through sysfs, talks to them through their VFIO cdev with raw ioctls, and
//! drives the `edu` DMA engine, so tests can check with real DMA what the IOMMU lets
//! through. It is deliberately small and raw: the crates under test provide the
//! typed API; this crate only gives tests an independent way to observe the kernel.
//!
//! Nothing here is meant for production use.
//!
//! ```no_run
//! let edu = iommufd_lab::pci::edu_devices()?.into_iter().next().expect("an edu device");
//! println!("{} in group {:?}", edu.bdf(), edu.iommu_group()?);
//! # Ok::<(), std::io::Error>(())
//! ```

pub mod caps;
pub mod edu;
pub mod iommufd;
pub mod logs;
pub mod mem;
pub mod pci;
pub mod smmu;
pub mod vfio;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Issues `ioctl(fd, req, arg)` for an argument structure the kernel reads and
/// writes, returning the OS error on failure.
pub fn ioctl_with_mut<T>(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a valid, exclusively borrowed `T` for the duration of the call,
    // and every request used with this helper takes a pointer to such a `T` (its
    // `size`/`argsz` field tells the kernel how much of it to read and write).
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The guest lab's contract: tests must fail, not skip, when the kernel interface
/// they test is missing.
pub fn require_dev_iommu() {
    assert!(
        std::path::Path::new("/dev/iommu").exists(),
        "/dev/iommu is missing: this test must run in the guest lab (cargo xtask vmtest)"
    );
}
