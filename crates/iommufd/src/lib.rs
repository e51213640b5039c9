//! A safe, typed interface to the Linux `/dev/iommu` (iommufd) user API.
//!
//! iommufd lets user space (a VMM, a user-space driver) give devices DMA access to
//! its memory through the IOMMU. This crate wraps its commands in Rust types: each
//! kernel object is a value that is destroyed when dropped and cannot outlive the
//! file it belongs to, object ids are typed, flags are bitflags, and errors keep the
//! kernel's errno and say what was attempted on which object. The raw bindings are
//! in [`iommufd_uapi`] (re-exported as [`uapi`]).
//!
//! # Walkthrough
//!
//! ## Open the file
//!
//! [`Iommufd::open`] opens `/dev/iommu`; an unprivileged VMM can instead receive an
//! open fd from a helper and wrap it with [`Iommufd::from_owned_fd`].
//! [`Iommufd::probe`] tells which commands the running kernel has.
//!
//! ```no_run
//! use iommufd::{Command, Iommufd};
//!
//! let fd = Iommufd::open()?;
//! let features = fd.probe();
//! assert!(features.supports(Command::IoasMap));
//! # Ok::<(), iommufd::Error>(())
//! ```
//!
//! ## Create an I/O address space and map memory
//!
//! An [`Ioas`] is a set of IOVA → memory mappings. Devices (bound to the iommufd by
//! VFIO, outside this crate) are attached to it, and then DMA to an IOVA reaches the
//! memory mapped there. Three ways to map:
//!
//! - [`Ioas::map_owned`] takes an [`MmapRegion`] and returns a [`Mapping`] that owns
//!   it: the memory is unmapped from the IOAS before it is freed. Safe.
//! - [`Ioas::map_file`] maps part of a memfd. Safe: the kernel holds the file's
//!   pages itself.
//! - [`Ioas::map_user`] maps any memory of the process. `unsafe`: the memory must stay
//!   valid until it is unmapped, which the compiler cannot check.
//!
//! ```no_run
//! use iommufd::{Iommufd, Iova, MapFlags, MmapRegion};
//!
//! let fd = Iommufd::open()?;
//! let ioas = fd.alloc_ioas()?;
//!
//! // Where may mappings go? (Narrows when devices are attached.)
//! let usable = ioas.iova_ranges()?;
//! println!("alignment {:#x}, ranges {:?}", usable.alignment, usable.ranges);
//!
//! // 2 MiB at a fixed IOVA, readable and writable by devices.
//! let ring = ioas.map_owned(MmapRegion::new(2 << 20)?, Some(Iova(0x1000_0000)), MapFlags::RW)?;
//! ring.region().write_at(0, &[1, 2, 3, 4])?;
//!
//! // 64 KiB at an IOVA the kernel picks.
//! let buf = ioas.map_owned(MmapRegion::new(64 << 10)?, None, MapFlags::READ)?;
//! println!("device reads at {}", buf.iova());
//!
//! // Unmapping must cover whole mappings: the kernel never splits one.
//! assert!(ioas.unmap(ring.iova(), 4096).is_err());
//! drop(ring); // unmapped, then freed
//! # Ok::<(), iommufd::Error>(())
//! ```
//!
//! ## Hardware page tables, hardware information, dirty tracking
//!
//! A [`Hwpt`] is an IOMMU page table that mirrors an IOAS, allocated for a device
//! with chosen [`HwptFlags`]. [`Iommufd::hw_info`] says what the IOMMU behind a
//! device can do, decoded into [`HwInfoData`]. For live migration, a HWPT with
//! [`HwptFlags::DIRTY_TRACKING`] reports which pages DMA wrote as a [`DirtyBitmap`].
//!
//! ```no_run
//! use iommufd::{DeviceId, HwCapabilities, Hwpt, HwptFlags, Iommufd, Iova};
//! # let dev = DeviceId::from_raw(1); // from VFIO_DEVICE_BIND_IOMMUFD
//! let fd = Iommufd::open()?;
//! let ioas = fd.alloc_ioas()?;
//! let info = fd.hw_info(dev)?;
//! if info.capabilities.contains(HwCapabilities::DIRTY_TRACKING) {
//!     let hwpt = Hwpt::alloc(&fd, dev, &ioas, HwptFlags::DIRTY_TRACKING)?;
//!     // ... attach the device to the HWPT through VFIO, run the guest ...
//!     hwpt.set_dirty_tracking(true)?;
//!     let dirty = hwpt.get_dirty_bitmap(Iova(0), 1 << 30, 4096, false)?;
//!     println!("{} pages to copy again", dirty.count_dirty());
//! }
//! # Ok::<(), iommufd::Error>(())
//! ```
//!
//! ## Errors and older kernels
//!
//! Every fallible call returns [`Error`]. Commands, flags and types a kernel does not
//! know give [`Error::Unsupported`]; branch on [`Error::is_unsupported`] to fall
//! back. [`Error::errno`] returns the kernel's errno.
//!
//! ```no_run
//! # let fd = iommufd::Iommufd::open()?;
//! # let ioas = fd.alloc_ioas()?;
//! # fn new_memfd() -> std::fs::File { unimplemented!() }
//! # let memfd = new_memfd();
//! use iommufd::MapFlags;
//! match ioas.map_file(&memfd, 0, 1 << 20, None, MapFlags::RW) {
//!     Ok(iova) => println!("mapped at {iova}"),
//!     Err(e) if e.is_unsupported() => println!("kernel before 6.13: no IOMMU_IOAS_MAP_FILE"),
//!     Err(e) => return Err(e),
//! }
//! # Ok::<(), iommufd::Error>(())
//! ```
//!
//! # Features
//!
//! - `selftest`: [`selftest`], wrappers of `IOMMU_TEST_CMD` for the kernel's mock
//!   IOMMU (`CONFIG_IOMMUFD_TEST`), to test code that uses this crate without
//!   hardware.
//!
//! # Threads
//!
//! [`Iommufd`], [`Ioas`] and [`Hwpt`] are `Send + Sync`: the kernel serializes
//! commands on one file. [`MmapRegion`] and [`Mapping`] are `Send` only, as their
//! memory is accessed by copying through `&self`.

#![deny(missing_docs)]

mod error;
#[cfg(feature = "vm-memory")]
mod guest_memory;
mod hw_info;
mod hwpt;
mod ids;
mod ioas;
mod iommufd;
mod iova;
mod labels;
mod mmap;
mod probe;
mod sys;

#[cfg(feature = "selftest")]
pub mod selftest;

pub use iommufd_uapi as uapi;

pub use crate::error::{DecodeError, Error, Result};
#[cfg(feature = "vm-memory")]
pub use crate::guest_memory::{GuestArea, GuestMemoryMapping, MapMethod};
pub use crate::hw_info::{HW_INFO_TYPE_SELFTEST, HwCapabilities, HwInfo, HwInfoData};
pub use crate::hwpt::{DirtyBitmap, Hwpt, HwptFlags};
pub use crate::ids::{DeviceId, HwptId, IoasId, PtId};
pub use crate::ioas::{Ioas, MapFlags, Mapping};
pub use crate::iommufd::{DEFAULT_PATH, Iommufd, RlimitMode};
pub use crate::iova::{Iova, IovaRange, IovaRanges};
pub use crate::mmap::MmapRegion;
pub use crate::probe::{Command, Features};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}

    #[test]
    fn thread_safety() {
        send_sync::<Iommufd>();
        send_sync::<Ioas<'static>>();
        send_sync::<Hwpt<'static>>();
        send_sync::<Error>();
        send::<MmapRegion>();
        send::<Mapping<'static>>();
    }
}
