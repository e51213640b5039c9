//! What a VMM builds on [`iommufd`] for a vIOMMU: per-device tables that map the
//! guest's PASIDs to the host's.
//!
//! A guest that uses PASIDs (shared virtual addressing, scalable IOV, per-process
//! DMA contexts) names them in everything it tells its vIOMMU: PASID-table entries,
//! invalidations. The host attaches page tables at *host* PASIDs, and the kernel
//! reports faults with them. A [`PasidTable`] keeps, per device (by the label the
//! VMM bound it under), guest PASID (vPASID) -> host PASID (pPASID) and the HWPT
//! attached there, and host -> guest, a bijection per device, so the guest never
//! sees a host PASID and the VMM chooses the host's PASID policy
//! ([`PasidPolicy`]: identity, or pPASIDs from a [`HostPasidPool`] shared by
//! devices and VMs, with a quota per VM).
//!
//! Lookups ([`DevicePasids::host_pasid`], [`DevicePasids::guest_pasid`]) are two
//! atomic loads in a radix array, lock-free, about 8 bytes per mapped PASID (12
//! with pooled host PASIDs), up to the 2^20 PASIDs a PCIe device may have.
//!
//! # Walkthrough: a VT-d vIOMMU with scalable mode
//!
//! The guest's scalable-mode context entry points to its PASID table; when the
//! guest fills a PASID entry (first-level table root, flags), the vIOMMU model
//! allocates a nested HWPT for it and attaches it at the host PASID the table
//! picks. Invalidation descriptors name guest PASIDs: the table routes them to the
//! nested HWPT attached there. Faults come back with host PASIDs: the table turns
//! them into the guest's before the model injects a page request.
//!
//! ```no_run
//! use iommufd::{Device, FaultQueue, Hwpt, HwptFlags, NestedHwpt, PageResponse, Stage1, VtdS1,
//!     VtdS1Flags, VtdS1Invalidation};
//! use iommufd_viommu::{PasidPolicy, PasidTable};
//! # fn f(dev: &Device, s2: &Hwpt, faults: &FaultQueue) -> Result<(), Box<dyn std::error::Error>> {
//! let table = PasidTable::new(PasidPolicy::Identity);
//! let pasids = table.add_device(dev)?; // width from the device's hw_info
//!
//! // The guest wrote PASID entry 5: a 4-level table at GPA 0x1234_0000.
//! let s1 = VtdS1::new(0x1234_0000, 48, VtdS1Flags::empty())?;
//! let nested = NestedHwpt::alloc(s2, dev, Stage1::from(s1), HwptFlags::PASID, Some(faults))?;
//! table.attach(dev.label(), 5, &nested)?;
//!
//! // A PASID-granular IOTLB invalidation of guest PASID 5:
//! let routed = table.route(dev.label(), &[(5, VtdS1Invalidation::range(0x40_0000, 4, true)?)])?;
//! for (hwpt, entries) in routed {
//!     assert_eq!(hwpt, nested.id().raw()); // look the handle up by id in the model
//!     nested.invalidate(&entries)?;
//! }
//!
//! // A page request from the device, at a host PASID:
//! for group in faults.read()? {
//!     match table.translate_fault(&group) {
//!         Ok(guest) => { /* inject a page request for guest.vpasid into the guest */ }
//!         Err(_) => faults.respond(group.cookie, PageResponse::Invalid)?,
//!     }
//! }
//!
//! // The guest cleared PASID entry 5, then the device went away.
//! table.detach(dev.label(), 5)?;
//! table.remove_device(dev.label())?;
//! # Ok(()) }
//! ```
//!
//! An SMMUv3 vIOMMU needs no table for its own nesting (the guest's context
//! descriptor table is indexed by the guest's substream ids directly); it uses one
//! when the host owns PASID attaches (shared work queues, ENQCMD-style host PASIDs).

#![deny(missing_docs)]

mod dirty;
mod iova_map;
mod page_tree;
mod pool;
mod radix;
mod ram;
mod shadow;
mod shared;
mod table;
pub mod virtio;

pub use crate::dirty::{DirtyLog, DirtySink};
pub use crate::iova_map::{Cut, Extent, IovaMap, PAGE_SIZE};
pub use crate::pool::HostPasidPool;
pub use crate::ram::{GuestRamSync, SyncReport};
pub use crate::shadow::{ReplayReport, ShadowDomain, ShadowError};
pub use crate::shared::SharedIoas;
pub use crate::table::{DevicePasids, GuestFault, PasidPolicy, PasidTable, PasidZero};

/// The result type of this crate.
pub type Result<T, E = PasidError> = std::result::Result<T, E>;

/// An error of a PASID table operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PasidError {
    /// The PASID is not below the device's PASID limit.
    #[error("PASID {pasid:#x} of device {label:#x} is out of range (width {width})")]
    OutOfRange {
        /// The device.
        label: u64,
        /// The PASID.
        pasid: u32,
        /// The device's PASID width.
        width: u32,
    },
    /// The PASID is reserved (PASID 0; see [`PasidZero`]).
    #[error("PASID {pasid} is reserved")]
    Reserved {
        /// The PASID.
        pasid: u32,
    },
    /// No device with this label is in the table.
    #[error("no device with label {label:#x} in the PASID table")]
    UnknownDevice {
        /// The label.
        label: u64,
    },
    /// A fault record names no device the file knows (unbound since).
    #[error("the fault names no bound device")]
    UnknownFaultDevice,
    /// The device is in the table already.
    #[error("device {label:#x} is in the PASID table already")]
    DeviceExists {
        /// The label.
        label: u64,
    },
    /// The device has no PASIDs (its PASID width is 0), or an invalid width was given.
    #[error("device {label:#x} has no PASID support")]
    NoPasid {
        /// The label.
        label: u64,
    },
    /// The device was added by label only ([`PasidTable::add_label`]): the table
    /// cannot attach for it.
    #[error("device {label:#x} was added without its iommufd device: attach it yourself")]
    NoDevice {
        /// The label.
        label: u64,
    },
    /// The guest PASID is not mapped.
    #[error("guest PASID {vpasid:#x} of device {label:#x} is not mapped")]
    NotMapped {
        /// The device.
        label: u64,
        /// The guest PASID.
        vpasid: u32,
    },
    /// No guest PASID maps to this host PASID.
    #[error("host PASID {ppasid:#x} of device {label:#x} is not mapped")]
    NotMappedHost {
        /// The device.
        label: u64,
        /// The host PASID.
        ppasid: u32,
    },
    /// The host PASID maps to another guest PASID already.
    #[error("host PASID {ppasid:#x} of device {label:#x} is in use")]
    HostInUse {
        /// The device.
        label: u64,
        /// The host PASID.
        ppasid: u32,
    },
    /// The table holds its quota of host PASIDs.
    #[error("the VM holds its quota of {quota} host PASIDs")]
    QuotaExceeded {
        /// The quota.
        quota: u32,
    },
    /// The pool has no free host PASID below the device's limit.
    #[error("no free host PASID below {below:#x} for device {label:#x}")]
    PoolExhausted {
        /// The device.
        label: u64,
        /// Its PASID limit.
        below: u32,
    },
    /// A table with pooled host PASIDs holds at most this many devices.
    #[error("a PASID table with pooled host PASIDs holds at most {max} devices")]
    TooManyDevices {
        /// The limit.
        max: u32,
    },
    /// A pool range outside 1..2^20, or empty.
    #[error("a host PASID pool must lie in 1..2^20 and not be empty (got {start}..{end})")]
    BadPool {
        /// The start of the range.
        start: u32,
        /// Its end.
        end: u32,
    },
    /// An entry of a batch could not be translated; nothing of the batch was used.
    #[error("entry {index}: {source}")]
    Entry {
        /// The entry's index.
        index: usize,
        /// Why.
        #[source]
        source: Box<PasidError>,
    },
    /// The kernel refused the attach or detach (the table is unchanged).
    #[error(transparent)]
    Iommufd(#[from] iommufd::Error),
}
