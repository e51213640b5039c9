//! VFIO device passthrough on `/dev/iommu`.
//!
//! This crate binds VFIO device cdevs (`/dev/vfio/devices/vfioN`) to an
//! [`iommufd::Iommufd`], the way a VMM hands a PCI device to a guest:
//!
//! 1. [`VfioDevice::open_pci`] finds the device's cdev through sysfs after checking
//!    its IOMMU group: binding claims DMA ownership of the whole group, so a group
//!    with a member still driven by a host kernel driver is refused, naming each such
//!    device and its driver ([`GroupError::NotViable`]). Devices bound to vfio-pci or
//!    to a vfio-pci variant driver (the migration-capable ones) are all usable.
//! 2. [`VfioDevice::bind`] binds it under a label of the caller's choosing (a `u64`,
//!    e.g. the guest BDF): the device keeps the label, and everything that names the
//!    device (hardware information, faults, events) carries it.
//! 3. The [`BoundDevice`] is an [`iommufd::Device`] (it dereferences to one):
//!    attach it to an IOAS or HWPT (again: replace), per PASID too. It holds what
//!    it is attached to, so any drop order is safe.
//! 4. Dropping it detaches, removes the label, closes the cdev (unbinding the
//!    device) and only then releases what it was attached to, without panicking.
//!    The kernel binds the cdev's open *file*: a dup of the fd or a BAR mmap keeps
//!    the device bound after the `BoundDevice` is gone;
//!    [`BoundDevice::cdev_references`] lists them and [`BoundDevice::close`] reports
//!    it ([`Error::StillBound`]), and binding it again is [`Error::AlreadyBound`].
//!
//! ```no_run
//! use iommufd::{Ioas, Iommufd, Iova, MapFlags};
//! use iommufd_vfio::{PciAddress, Sysfs, VfioDevice};
//! use vm_memory::MmapRegion;
//!
//! let fd = Iommufd::open()?;
//! let ioas = Ioas::alloc(&fd)?;
//! let addr: PciAddress = "0000:00:04.0".parse()?;
//! let dev = VfioDevice::open_pci(&Sysfs::default(), addr)?.bind(&fd, 0x0004)?;
//! let hwpt = dev.attach(&ioas)?; // the HWPT the kernel made for this IOAS
//! let buf = ioas.map(MmapRegion::<()>::new(1 << 16)?, Some(Iova(0x10_0000)), MapFlags::RW)?;
//! assert_eq!(dev.hw_info()?.label, 0x0004);
//! // ... program the device (regions, interrupts) through `dev.as_fd()` ...
//! drop(ioas); // fine: the device and the mapping hold it
//! dev.close()?;
//! # let _ = hwpt;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The `passthrough` example (`cargo xtask demo` runs it in the guest lab) is the whole
//! flow with vm-memory guest RAM and real DMA.
//!
//! # Features
//!
//! - `selftest`: turns on `iommufd/selftest`, the kernel mock IOMMU wrappers, so
//!   that a crate depending on this one can test with mock devices beside VFIO
//!   devices without `--all-features`.
//!
//! # vfio-ioctls
//!
//! The device fd stays usable for regions and interrupts. vfio-ioctls 0.10 cannot
//! adopt it without its own iommufd wrapper (`VfioDevice::new_from_bound_fd` takes an
//! `Arc<VfioIommufd>` from the iommufd-ioctls crate), so a VMM mixing the two needs
//! both iommufd crates for now.

pub mod device;
pub mod group;

pub use device::{BoundDevice, CdevReferences, Error, Result, VfioDevice};
pub use group::{DMA_OWNER_SAFE_DRIVERS, GroupError, GroupMember, IommuGroup, PciAddress, Sysfs};
