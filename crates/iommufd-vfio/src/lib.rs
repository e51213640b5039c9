//! VFIO device passthrough on `/dev/iommu`.
//!
//! This crate binds VFIO device cdevs (`/dev/vfio/devices/vfioN`) to an
//! [`iommufd::Iommufd`], the way a VMM hands a PCI device to a guest:
//!
//! 1. [`VfioDevice::open_pci`] finds the device's cdev through sysfs after checking
//!    its IOMMU group: binding claims DMA ownership of the whole group, so a group
//!    with a member still driven by a host kernel driver is refused, naming each such
//!    device and its driver ([`GroupError::NotViable`]).
//! 2. [`VfioDevice::bind`] binds it under a label of the caller's choosing (a `u64`):
//!    the iommufd keeps the label beside the kernel's device id and hands it back
//!    wherever the device is named ([`iommufd::Iommufd::label_of`],
//!    [`iommufd::HwInfo::label`]).
//! 3. [`BoundDevice::attach`] attaches it to an IOAS or HWPT (again: replace), per
//!    PASID with [`BoundDevice::attach_pasid`].
//! 4. Dropping the [`BoundDevice`] detaches, forgets the label and closes the cdev,
//!    in that order, without panicking.
//!
//! ```no_run
//! use iommufd::{Iommufd, MapFlags, MmapRegion, Iova};
//! use iommufd_vfio::{PciAddress, Sysfs, VfioDevice};
//!
//! let fd = Iommufd::open()?;
//! let ioas = fd.alloc_ioas()?;
//! let addr: PciAddress = "0000:00:04.0".parse()?;
//! let dev = VfioDevice::open_pci(&Sysfs::default(), addr)?.bind(&fd, 0x0004)?;
//! let hwpt = dev.attach(&ioas)?; // the HWPT the kernel made for this IOAS
//! let buf = ioas.map_owned(MmapRegion::new(1 << 16)?, Some(Iova(0x10_0000)), MapFlags::RW)?;
//! assert_eq!(fd.label_of(dev.id()), Some(0x0004));
//! // ... program the device (regions, interrupts) through `dev.as_fd()` ...
//! drop(buf);
//! dev.close()?;
//! # let _ = hwpt;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The `passthrough` example (`cargo xtask demo` runs it in the guest lab) is the whole
//! flow with vm-memory guest RAM and real DMA.
//!
//! The device fd stays usable for regions and interrupts. vfio-ioctls 0.10 cannot
//! adopt it without its own iommufd wrapper (`VfioDevice::new_from_bound_fd` takes an
//! `Arc<VfioIommufd>` from the iommufd-ioctls crate), so a VMM mixing the two needs
//! both iommufd crates for now.

pub mod device;
pub mod group;

pub use device::{BoundDevice, Error, Result, VfioDevice};
pub use group::{DMA_OWNER_SAFE_DRIVERS, GroupError, GroupMember, IommuGroup, PciAddress, Sysfs};
