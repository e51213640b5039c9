//! What a VMM builds on [`iommufd`] around the uAPI: guest RAM kept in an IOAS
//! through hotplug, one IOAS shared by all passthrough devices, a shadow-mapping
//! engine and a virtio-iommu back end for vIOMMUs without hardware nesting, dirty
//! pages of device DMA in vm-memory's bitmaps for live migration, and per-device
//! tables that map the guest's PASIDs to the host's.
//!
//! | type | for |
//! |------|-----|
//! | [`GuestRamSync`] | one IOAS equal to guest RAM at IOVA = GPA through DIMM hotplug and virtio-mem, one ioctl per contiguous range |
//! | [`SharedIoas`] | all devices on that IOAS, HWPTs shared where IOMMUs allow, so RAM is pinned once; dirty tracking on all of them |
//! | [`ShadowDomain`], [`IovaMap`] | a guest I/O domain (GIOVA -> GPA) shadowed in an IOAS: split, cut, replayed after memory changes |
//! | [`virtio::Backend`] | virtio-iommu requests turned into shadow domains, answered as the specification asks |
//! | [`virtio::EmulatedEndpoint`] | a VMM's device model behind the virtio-iommu: its DMA by IOVA, as vm-memory's `Iommu` |
//! | [`DirtyLog`], [`DirtySink`] | dirty pages of device DMA merged into the regions' vm-memory bitmaps, at their GPAs |
//! | [`PasidTable`] | guest PASID <-> host PASID per device, for vIOMMUs with PASIDs |
//!
//! # Walkthrough: guest memory without a vIOMMU
//!
//! Devices the guest drives with physical addresses share one IOAS that maps guest
//! RAM at IOVA = GPA. [`GuestRamSync`] maps it and follows the memory map: after
//! a DIMM is plugged or removed, sync again. [`SharedIoas`] attaches each device
//! to the IOAS through a HWPT it can use, so N devices pin and charge RAM once.
//!
//! ```no_run
//! use iommufd::vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};
//! use iommufd::{HwptFlags, Ioas, Iommufd, MapFlags};
//! use iommufd_viommu::{GuestRamSync, SharedIoas};
//! # fn f(devices: &[iommufd::Device]) -> Result<(), Box<dyn std::error::Error>> {
//! let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 30)])?;
//! let fd = Iommufd::open()?;
//! let ioas = Ioas::alloc(&fd)?;
//! let mut sync = GuestRamSync::new(ioas.clone(), MapFlags::RW);
//! sync.sync(&ram)?;
//! let shared = SharedIoas::new(ioas, HwptFlags::DIRTY_TRACKING);
//! for dev in devices {
//!     shared.attach(dev)?;
//! }
//! // Later, a DIMM at 4 GiB: map it (and nothing else).
//! let dimm = GuestRegionMmap::from_range(GuestAddress(4 << 30), 1 << 30, None)?;
//! let ram = ram.insert_region(std::sync::Arc::new(dimm))?;
//! assert_eq!(sync.sync(&ram)?.mapped, 1);
//! # Ok(()) }
//! ```
//!
//! # Walkthrough: a virtio-iommu device
//!
//! Without hardware nesting, the VMM shadows the guest's I/O page tables: each
//! guest domain is an IOAS that maps, at the guest's IOVAs, the memory behind
//! the GPAs the guest named. [`virtio::Backend`] does this for virtio-iommu: the
//! device model hands it each request from the request queue and returns the
//! answer it wrote. Guest input is untrusted: every malformed or impossible
//! request gets its status and changes nothing.
//!
//! ```no_run
//! use iommufd::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};
//! use iommufd::{HwptFlags, Ioas, Iommufd};
//! use iommufd_viommu::virtio::{Backend, ResvMem};
//! # fn f(fd: &Iommufd, dev: &iommufd::Device, bypass: &Ioas, ram: &GuestMemoryMmap,
//! #      queue: &mut dyn Iterator<Item = (Vec<u8>, Vec<u8>)>) -> Result<(), Box<dyn std::error::Error>> {
//! // Domains get DIRTY_TRACKING HWPTs, for migration; bypass domains go to the
//! // VMM's IOAS of guest RAM.
//! let mut viommu = Backend::new(fd, HwptFlags::DIRTY_TRACKING).with_bypass(bypass);
//! let msi = ResvMem { msi: true, start: 0xfee0_0000, end: 0xfeef_ffff };
//! viommu.add_endpoint(8, dev, vec![msi])?; // endpoint id 8: the device's RID
//! // A virtio device model behind the same vIOMMU (endpoint 16): it reads and
//! // writes guest memory by the IOVAs the guest gives it, through its domain.
//! let blk = viommu.add_emulated_endpoint(16, vec![msi])?;
//! let blk_memory = IommuMemory::new(ram.clone(), blk, true, ());
//! for (readable, mut writable) in queue {
//!     let used = viommu.request(ram, &readable, &mut writable);
//!     // ... put the chain on the used ring with `used` bytes, notify the guest ...
//!     # let _ = used;
//! }
//! // Guest memory changed (hotplug): mappings follow.
//! viommu.replay(ram)?;
//! // The device model's DMA: refused unless the guest mapped the IOVA for it.
//! let header: u32 = blk_memory.read_obj(GuestAddress(0xffff_0000))?;
//! # let _ = header;
//! # Ok(()) }
//! ```
//!
//! [`ShadowDomain`] is the engine under it, for other vIOMMU models (VT-d in
//! caching mode: map and unmap what the guest's page-table changes and
//! invalidations describe).
//!
//! # Walkthrough: a migration round
//!
//! Devices write guest memory behind the VMM's back; migration must copy those
//! pages again like the ones vCPUs dirtied. Give guest memory bitmaps
//! (`GuestMemoryMmap<DirtyLog>`, or vm-memory's `AtomicBitmap`), turn on dirty
//! tracking, and each round harvest device writes into the regions' bitmaps: by
//! IOVA = GPA for the shared IOAS, translated through the shadow mappings for
//! virtio-iommu domains. Read the bitmaps as usual. Between rounds the guest
//! may unmap what a device wrote: the kernel forgets the dirty bits of what it
//! unmaps, so a shadow domain reads them into the bitmaps first (at the UNMAP,
//! the DETACH that ends a domain, or the domain's drop).
//!
//! ```no_run
//! use iommufd::vm_memory::{GuestMemoryBackend, GuestMemoryMmap};
//! use iommufd::DirtyReadFlags;
//! use iommufd_viommu::{DirtyLog, GuestRamSync, SharedIoas};
//! use iommufd_viommu::virtio::Backend;
//! # fn f(ram: &GuestMemoryMmap<DirtyLog>, sync: &GuestRamSync<DirtyLog>, shared: &SharedIoas,
//! #      viommu: &mut Backend<DirtyLog>) -> Result<(), Box<dyn std::error::Error>> {
//! shared.set_dirty_tracking(true)?; // fails if a device's IOMMU cannot track
//! viommu.set_dirty_tracking(true)?;
//! loop {
//!     sync.harvest_dirty(&shared.hwpts(), DirtyReadFlags::empty())?;
//!     viommu.harvest_dirty(DirtyReadFlags::empty())?;
//!     let mut dirty = 0;
//!     for region in ram.iter() {
//!         let pages = region.get_mmap().bitmap().get_and_reset();
//!         dirty += pages.iter().map(|w| w.count_ones()).sum::<u32>();
//!         // ... send the pages whose bits are set ...
//!     }
//!     if dirty < 1024 {
//!         break; // stop the vCPUs and devices, then one last round
//!     }
//! }
//! sync.harvest_dirty(&shared.hwpts(), DirtyReadFlags::NO_CLEAR)?;
//! viommu.harvest_dirty(DirtyReadFlags::NO_CLEAR)?;
//! shared.set_dirty_tracking(false)?;
//! # Ok(()) }
//! ```
//!
//! # Walkthrough: PASIDs of a VT-d vIOMMU with scalable mode
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
