//! VFIO device passthrough on `/dev/iommu`.
//!
//! This crate binds VFIO device cdevs (`/dev/vfio/devices/vfioN`) to an iommufd and
//! checks IOMMU group ownership first, so a device is never handed to a guest while
//! another device of its IOMMU group is still driven by the host kernel.
//!
//! So far it holds the sysfs side: PCI addresses, IOMMU groups and their viability.
//!
//! ```no_run
//! use iommufd_vfio::group::{PciAddress, Sysfs};
//!
//! let addr: PciAddress = "0000:00:04.0".parse()?;
//! let sysfs = Sysfs::default();
//! let group = sysfs.iommu_group(addr)?;
//! group.check_viable()?; // names every member still held by a kernel driver
//! println!("{addr}: group {}, cdev {}", group.id, sysfs.vfio_cdev(addr)?.display());
//! # Ok::<(), iommufd_vfio::group::GroupError>(())
//! ```

pub mod device;
pub mod group;

pub use device::{BoundDevice, Error, Result, VfioDevice};
pub use group::{GroupError, IommuGroup, PciAddress, Sysfs};
