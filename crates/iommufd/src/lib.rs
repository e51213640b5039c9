//! A safe, typed interface to the Linux `/dev/iommu` (iommufd) user API.
//!
//! iommufd lets user space (a VMM, a user-space driver) give devices DMA access to
//! its memory through the IOMMU. This crate wraps its commands in Rust types: each
//! kernel object is a value that owns what it needs, object ids are typed, flags are
//! bitflags, and errors keep the kernel's errno and say what was attempted on which
//! object. The raw bindings are in [`iommufd_uapi`] (re-exported as [`uapi`]).
//!
//! # Walkthrough: PCI passthrough in a VMM
//!
//! ## Open the file
//!
//! [`Iommufd::open`] opens `/dev/iommu`; an unprivileged VMM can instead receive an
//! open fd from a helper and wrap it with [`Iommufd::from_owned_fd`], which checks
//! that it really is the iommufd. [`Iommufd::probe`] tells which commands the
//! running kernel has.
//!
//! ```no_run
//! use iommufd::{Command, Iommufd};
//!
//! let fd = Iommufd::open()?;
//! if !fd.probe().supports(Command::IoasMapFile) {
//!     // Linux before 6.13: guest memory is mapped by address instead of by file.
//! }
//! # Ok::<(), iommufd::Error>(())
//! ```
//!
//! ## Map guest memory into an I/O address space
//!
//! An [`Ioas`] is a set of IOVA → memory mappings. A VMM without a vIOMMU maps all
//! of guest RAM at IOVA = GPA, once, and attaches every passthrough device to that
//! one IOAS, so guest RAM is pinned and charged once. [`Ioas::map_guest_memory`]
//! takes vm-memory's guest memory; memory-backed by a shared memfd is mapped by file
//! (the kernel holds the pages itself), other memory by address.
//!
//! ```no_run
//! use iommufd::{Ioas, Iommufd, MapFlags};
//! use vm_memory::{GuestAddress, GuestMemoryMmap};
//!
//! let guest: GuestMemoryMmap =
//!     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 512 << 20), (GuestAddress(1 << 32), 512 << 20)])?;
//! let fd = Iommufd::open()?;
//! let ioas = Ioas::alloc(&fd)?;
//! let ram = ioas.map_guest_memory(&guest, MapFlags::RW)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Every safe map takes a [`DmaMemory`]: memory that stays valid for as long as it
//! is mapped. The returned [`Mapping`] owns it and unmaps the range before letting
//! it go, so safe code cannot free memory a device can still reach. vm-memory's
//! regions implement it, [`FileRange`] (a memfd range) does, and a VMM can implement
//! it for its own memory. [`Ioas::map_user`] maps raw addresses, and is `unsafe`.
//!
//! ## Bind a device and attach it
//!
//! A [`Device`] is a device bound to the file under a label the VMM chooses (a guest
//! BDF, a slot number): the kernel's records name devices by a small id it reuses;
//! the label stays with the device. Devices come from a binding layer: the
//! `iommufd-vfio` crate binds VFIO device cdevs, `selftest::MockDevice` makes the kernel's
//! mock devices. [`Device::attach`] attaches the device to an IOAS or to a [`Hwpt`],
//! a hardware page table allocated with chosen [`HwptFlags`].
//!
//! ```no_run
//! use iommufd::{Device, HwCapabilities, Hwpt, HwptFlags, Ioas};
//! # fn bind() -> Device { unimplemented!() }
//! # let ioas: Ioas = unimplemented!();
//! let dev: Device = bind(); // e.g. iommufd_vfio::VfioDevice::open_pci(..)?.bind(&fd, 0x28)?
//! let info = dev.hw_info()?;
//! let hwpt = if info.capabilities.contains(HwCapabilities::DIRTY_TRACKING) {
//!     Hwpt::alloc(&ioas, &dev, HwptFlags::DIRTY_TRACKING)? // for live migration
//! } else {
//!     Hwpt::alloc(&ioas, &dev, HwptFlags::empty())?
//! };
//! dev.attach(&hwpt)?;
//! # Ok::<(), iommufd::Error>(())
//! ```
//!
//! ## Ownership and teardown
//!
//! Every object owns what it needs to exist: its [`Iommufd`] (a cheap shared
//! handle), its parents (a HWPT its IOAS), and what it uses (a device what it is
//! attached to, a mapping its IOAS and memory). The kernel object is destroyed when
//! the last handle goes. So a VMM can keep these values anywhere (they are `'static`,
//! `Send` and `Sync`: in its device manager behind `Arc<Mutex<..>>`, moved into
//! threads) and drop them in any order: the crate never asks the kernel to destroy
//! an object something still depends on, and nothing leaks.
//!
//! ```no_run
//! use std::sync::{Arc, Mutex};
//! use iommufd::{Device, GuestMemoryMapping, Hwpt, Ioas, Iommufd};
//!
//! /// What a VMM keeps for the life of a VM.
//! struct Passthrough {
//!     iommufd: Iommufd,
//!     ioas: Ioas,
//!     ram: GuestMemoryMapping,
//!     devices: Vec<(Device, Hwpt)>,
//! }
//! # fn build() -> Passthrough { unimplemented!() }
//! let state = Arc::new(Mutex::new(build()));
//! let worker = std::thread::spawn({
//!     let state = state.clone();
//!     move || state.lock().map(|s| s.devices.len()).unwrap_or(0)
//! });
//! worker.join().ok();
//! drop(state); // fields drop in declaration order: IOAS before the devices, and fine
//! ```
//!
//! [`Object::destroy`] (and [`Mapping::unmap`], [`Device::unbind`]) destroy at once
//! and return the object with the error if they cannot; [`Object::into_id`] leaks an
//! object on purpose. Errors in `Drop` go to the [`log`](https://docs.rs/log) crate.
//!
//! ## Dirty tracking for live migration
//!
//! ```no_run
//! use iommufd::{DirtyReadFlags, Hwpt, Iova};
//! # let hwpt: Hwpt = unimplemented!();
//! hwpt.enable_dirty_tracking()?;
//! // ... copy guest memory while the guest runs, then harvest per mapped region:
//! let dirty = hwpt.get_dirty_bitmap(Iova(0), 512 << 20, 4096, DirtyReadFlags::empty())?;
//! println!("{} pages to copy again", dirty.count_dirty());
//! # Ok::<(), iommufd::Error>(())
//! ```
//!
//! ## Nesting: the guest's page tables on the host's
//!
//! With a vIOMMU, the guest maps its devices' DMA itself (GIOVA to GPA). The VMM
//! keeps guest RAM in a *nest parent* HWPT (GPA to HPA) and gives each device a
//! [`NestedHwpt`] whose stage 1 is the guest's table, described by typed data
//! ([`Stage1`]: [`VtdS1`], [`SmmuV3Ste`], [`AmdGuestDte`]) that is checked before
//! the kernel sees it: it comes from the guest. On SMMUv3 (and AMD) the nested
//! HWPTs hang off a [`Viommu`], which also names the guest's devices ([`Vdevice`],
//! by the id the guest uses), takes the guest's invalidation commands in batches
//! ([`Viommu::invalidate`]) and reports events ([`Veventq`]).
//!
//! ```no_run
//! use iommufd::{
//!     Device, Error, HwptFlags, Hwpt, Ioas, NestedHwpt, SmmuV3Command, SmmuV3Ste, Vdevice,
//!     Veventq, VeventqType, Viommu, ViommuType,
//! };
//! # fn f(dev: &Device, ram: &Ioas, guest_ste: [u64; 2], guest_cmds: &[[u64; 2]]) -> iommufd::Result<()> {
//! let s2 = Hwpt::alloc(ram, dev, HwptFlags::NEST_PARENT)?;
//! let viommu = Viommu::alloc(&s2, dev, ViommuType::ArmSmmuV3)?;
//! let vdev = Vdevice::alloc(&viommu, dev, 0x10)?; // the guest's stream id
//! let events = Veventq::alloc(&viommu, VeventqType::ArmSmmuV3, 128)?;
//!
//! // The guest wrote a stream table entry: check it, then install it.
//! let ste = SmmuV3Ste::from_words(guest_ste)
//!     .map_err(|source| Error::Stage1 { op: "guest STE", source })?;
//! let nested = NestedHwpt::alloc(&viommu, dev, ste.into(), HwptFlags::empty(), None)?;
//! dev.attach(&nested)?;
//!
//! // The guest's command queue: checked on the way in, sent in one call.
//! let cmds: Vec<SmmuV3Command> = guest_cmds
//!     .iter()
//!     .map(|w| SmmuV3Command::from_words(*w))
//!     .collect::<Result<_, _>>()
//!     .map_err(|source| Error::Stage1 { op: "guest CMDQ", source })?;
//! match viommu.invalidate(&cmds) {
//!     Err(Error::InvalidationIncomplete { handled, label, .. }) => {
//!         // Report CERROR_ILL for command `handled` (of device `label`) to the guest.
//!     }
//!     other => other?,
//! }
//! for event in events.read()?.events {
//!     // Forward to the guest's event queue; `event.device` names the device.
//! }
//! # Ok(()) }
//! ```
//!
//! I/O page faults go to a [`FaultQueue`] given to the HWPT; the VMM reads page
//! request groups (with the device's label and PASID), resolves them, and answers
//! each by its cookie. Queues are pollable; with the `event-manager` feature the
//! `events` module registers them in a rust-vmm event loop.
//!
//! ## Errors and older kernels
//!
//! Every fallible call returns [`Error`]. Commands, flags and types a kernel does not
//! know give [`Error::Unsupported`]; branch on [`Error::is_unsupported`] to fall
//! back. [`Error::errno`] returns the kernel's errno; objects of another file are
//! [`Error::WrongIommufd`], missing ones [`Error::NotFound`].
//!
//! ```no_run
//! # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
//! # fn new_memfd() -> std::fs::File { unimplemented!() }
//! use iommufd::MapFlags;
//! match ioas.map_file(&new_memfd(), 0, 1 << 20, None, MapFlags::RW) {
//!     Ok(iova) => println!("mapped at {iova}"),
//!     Err(e) if e.is_unsupported() => println!("kernel before 6.13: no IOMMU_IOAS_MAP_FILE"),
//!     Err(e) => return Err(e),
//! }
//! # Ok::<(), iommufd::Error>(())
//! ```
//!
//! # Features
//!
//! - `selftest`: the `selftest` module, wrappers of `IOMMU_TEST_CMD` for the
//!   kernel's mock IOMMU (`CONFIG_IOMMUFD_TEST`), to test code that uses this crate
//!   without hardware.
//!
//! - `event-manager`: the `events` module, rust-vmm event-manager subscribers for
//!   fault queues and vEVENTQs.
//!
//! # Threads
//!
//! Every type here is `Send + Sync` (a [`Mapping`] and a [`GuestMemoryMapping`] as
//! far as their memory is): the kernel serializes commands on one file, and the
//! crate's own bookkeeping (labels, attachments, the mappings of an IOAS) is behind
//! locks.

#![deny(missing_docs)]

mod device;
mod dirty;
mod error;
mod eventq;
#[cfg(test)]
mod fuzz_seeds;
mod guest_memory;
mod hw_info;
mod hwpt;
mod ids;
mod invalidate;
mod ioas;
mod iommufd;
mod iova;
mod labels;
mod mapping;
mod memory;
mod nested;
mod object;
mod probe;
mod stage1;
mod sys;
mod viommu;

#[cfg(feature = "event-manager")]
pub mod events;
#[cfg(feature = "selftest")]
pub mod selftest;

pub use iommufd_uapi as uapi;
pub use vm_memory;

pub use crate::device::{Binding, Device, PageTable};
pub use crate::dirty::DirtyBitmap;
pub use crate::error::{DecodeError, Error, Refused, Result};
pub use crate::eventq::{
    FaultGroup, FaultPage, FaultPerm, FaultQueue, FaultQueueState, FaultRecord, PageResponse,
    VEVENTQ_MAX_DEPTH, Vevent, VeventBatch, VeventData, VeventRecord, VeventSequence, Veventq,
    VeventqState, VeventqType,
};
pub use crate::guest_memory::{GuestArea, GuestMemoryMapping};
pub use crate::hw_info::{HW_INFO_TYPE_SELFTEST, HwCapabilities, HwInfo, HwInfoData};
pub use crate::hwpt::{DirtyReadFlags, Hwpt, HwptFlags, HwptState};
pub use crate::ids::{
    DeviceId, FaultQueueId, HwQueueId, HwptId, Id, IoasId, NestedHwptId, VdeviceId, VeventqId,
    ViommuId, kind,
};
#[cfg(fuzzing)]
#[doc(hidden)]
pub use crate::invalidate::fuzz_invalidation_result;
pub use crate::invalidate::{
    HwptInvalidation, InvalidationEntry, SmmuV3Command, SmmuV3Opcode, ViommuInvalidation,
    VtdS1Invalidation,
};
#[cfg(feature = "selftest")]
pub use crate::invalidate::{SelftestHwptInvalidation, SelftestViommuInvalidation};
pub use crate::ioas::{HugePages, Ioas, MapFlags};
pub use crate::iommufd::{DEFAULT_PATH, Iommufd, RlimitMode};
pub use crate::iova::{Iova, IovaRange, IovaRanges};
pub use crate::labels::LabelReservation;
pub use crate::mapping::{MapMethod, Mapping};
pub use crate::memory::{DmaMemory, DmaSource, FileRange, MmapSlice};
pub use crate::nested::{NestedHwpt, NestedHwptState, NestingParent};
pub use crate::object::{Object, ObjectKind};
pub use crate::probe::{Command, Features};
pub use crate::stage1::{
    AmdGuestDte, SmmuV3Config, SmmuV3Ste, Stage1, Stage1Error, VtdS1, VtdS1Flags,
};
pub use crate::viommu::{
    HwQueue, HwQueueState, HwQueueType, Vdevice, VdeviceState, Viommu, ViommuData, ViommuMmio,
    ViommuState, ViommuType,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn everything_can_live_in_a_device_manager() {
        send_sync::<Iommufd>();
        send_sync::<Ioas>();
        send_sync::<Hwpt>();
        send_sync::<Device>();
        send_sync::<PageTable>();
        send_sync::<Error>();
        send_sync::<Mapping<vm_memory::MmapRegion>>();
        send_sync::<Mapping<FileRange>>();
        send_sync::<GuestMemoryMapping>();
        send_sync::<LabelReservation>();
        send_sync::<DirtyBitmap>();
    }
}
