//! vIOMMUs, their vDEVICEs and HW queues.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use iommufd_uapi as uapi;

use crate::ids::kind;
use crate::invalidate::{ViommuInvalidation, batch_error, invalidate_raw};
use crate::nested::probe_invalidation;
use crate::object::{Object, sealed::ObjectState};
use crate::sys::arg;
use crate::{Device, DeviceId, Error, Hwpt, HwptFlags, Result, VdeviceId};

/// The kind of vIOMMU to allocate, with its input data (`enum iommu_viommu_type`).
///
/// ```
/// use iommufd::ViommuType;
/// assert_eq!(ViommuType::ArmSmmuV3.code(), iommufd::uapi::IOMMU_VIOMMU_TYPE_ARM_SMMUV3);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViommuType {
    /// An ARM SMMUv3 (Linux 6.13): the vIOMMU holds the VM's VMID, nested HWPTs
    /// take [`SmmuV3Ste`](crate::SmmuV3Ste)s, invalidations are
    /// [`SmmuV3Command`](crate::SmmuV3Command)s.
    ArmSmmuV3,
    /// An SMMUv3 with NVIDIA Tegra241 CMDQV (Linux 6.17): adds command queues the
    /// guest drives directly ([`HwQueue`]); the kernel returns the page of its
    /// virtual interface to map ([`ViommuData::Tegra241Cmdqv`]).
    Tegra241Cmdqv,
    /// The kernel's mock vIOMMU (`IOMMU_VIOMMU_TYPE_SELFTEST`); `in_data` is echoed
    /// back in [`ViommuData::Selftest`].
    #[cfg(feature = "selftest")]
    Selftest {
        /// Any value; the mock copies it to `out_data`.
        in_data: u32,
    },
}

impl ViommuType {
    /// The kernel's type code.
    pub fn code(&self) -> u32 {
        match self {
            ViommuType::ArmSmmuV3 => uapi::IOMMU_VIOMMU_TYPE_ARM_SMMUV3,
            ViommuType::Tegra241Cmdqv => uapi::IOMMU_VIOMMU_TYPE_TEGRA241_CMDQV,
            #[cfg(feature = "selftest")]
            ViommuType::Selftest { .. } => uapi::selftest::IOMMU_VIOMMU_TYPE_SELFTEST,
        }
    }
}

/// What the kernel returned when the vIOMMU was allocated.
///
/// The mmap offsets name a region of the iommufd file itself: `mmap(2)` of the
/// [`Iommufd`](crate::Iommufd)'s fd at that offset maps the hardware page (for
/// Tegra241 CMDQV, the VINTF page the guest drives its queues through).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ViommuData {
    /// No data (SMMUv3).
    None,
    /// Tegra241 CMDQV: where to map the virtual interface's page.
    Tegra241Cmdqv {
        /// The `offset` argument of `mmap(2)` on the iommufd.
        mmap_offset: u64,
        /// The length of the region.
        mmap_length: u64,
    },
    /// The mock vIOMMU.
    #[cfg(feature = "selftest")]
    Selftest {
        /// The `in_data` it was allocated with, as the kernel returned it.
        out_data: u32,
        /// The `offset` argument of `mmap(2)` on the iommufd.
        mmap_offset: u64,
        /// The length of the region.
        mmap_length: u64,
    },
}

/// A vDEVICE of a vIOMMU, as the vIOMMU's table keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct VdevEntry {
    vdevice: u32,
    device: DeviceId,
    label: u64,
}

/// What a vIOMMU keeps beside its id.
pub struct ViommuState {
    viommu_type: ViommuType,
    data: ViommuData,
    parent: Hwpt,
    /// The vDEVICEs, by virtual id: how records and errors that name a virtual id
    /// are traced to a device and its label.
    vdevs: Mutex<BTreeMap<u64, VdevEntry>>,
}

impl ViommuState {
    fn vdevs(&self) -> MutexGuard<'_, BTreeMap<u64, VdevEntry>> {
        // One insert or remove per critical section: a poisoned map is consistent.
        self.vdevs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for ViommuState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ViommuState")
            .field("type", &self.viommu_type)
            .field("data", &self.data)
            .field("parent", &self.parent.id())
            .field("vdevices", &self.vdevs().len())
            .finish()
    }
}

impl ObjectState for kind::Viommu {
    type State = ViommuState;
}

/// A virtual IOMMU instance (`IOMMU_VIOMMU_ALLOC`, Linux 6.13): the host side of
/// the IOMMU a VM sees, on one physical IOMMU, wrapping the stage-2 HWPT (the
/// guest's RAM). It holds what the VM's devices behind that IOMMU share (an SMMUv3
/// VMID), translates the guest's device ids ([`Vdevice`]), takes the guest's
/// invalidation commands ([`Viommu::invalidate`]), reports events ([`Veventq`](crate::Veventq)),
/// and is the parent of the guest's nested HWPTs.
///
/// A shared handle ([`Object`]) that holds its stage-2 HWPT; vDEVICEs, nested
/// HWPTs, vEVENTQs and HW queues built on it hold it.
///
/// ```no_run
/// use iommufd::{Hwpt, HwptFlags, Ioas, NestedHwpt, SmmuV3Command, SmmuV3Ste, Vdevice, Viommu, ViommuType};
/// # fn f(dev: &iommufd::Device, ioas: &Ioas) -> iommufd::Result<()> {
/// let s2 = Hwpt::alloc(ioas, dev, HwptFlags::NEST_PARENT)?;
/// let viommu = Viommu::alloc(&s2, dev, ViommuType::ArmSmmuV3)?;
/// let vdev = Vdevice::alloc(&viommu, dev, 0x10)?; // the guest sees stream id 0x10
/// let nested = NestedHwpt::alloc(&viommu, dev, SmmuV3Ste::bypass().into(), HwptFlags::empty(), None)?;
/// dev.attach(&nested)?;
/// viommu.invalidate(&[SmmuV3Command::cfgi_cd_all(0x10), SmmuV3Command::tlbi_nh_all()])?;
/// # Ok(()) }
/// ```
pub type Viommu = Object<kind::Viommu>;

impl Object<kind::Viommu> {
    /// Allocates a vIOMMU of `viommu_type` on the physical IOMMU behind `dev`,
    /// wrapping `parent`, which must be a HWPT allocated with
    /// [`HwptFlags::NEST_PARENT`] ([`Error::InvalidArgument`] otherwise, before
    /// the kernel is asked). The kernel answers [`Error::Unsupported`] for a type
    /// the IOMMU does not have.
    pub fn alloc(
        parent: &Hwpt,
        dev: &impl AsRef<Device>,
        viommu_type: ViommuType,
    ) -> Result<Viommu> {
        const OP: &str = "IOMMU_VIOMMU_ALLOC";
        let dev = dev.as_ref();
        let fd = parent.iommufd();
        dev.check_file(fd, OP)?;
        if !parent.flags().contains(HwptFlags::NEST_PARENT) {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "the HWPT was not allocated with HwptFlags::NEST_PARENT",
            });
        }
        let mut a: uapi::iommu_viommu_alloc = arg();
        a.type_ = viommu_type.code();
        a.dev_id = dev.id().raw();
        a.hwpt_id = parent.id().raw();
        let mut tegra = uapi::iommu_viommu_tegra241_cmdqv::default();
        #[cfg(feature = "selftest")]
        let mut mock = uapi::selftest::iommu_viommu_selftest::default();
        match viommu_type {
            ViommuType::ArmSmmuV3 => {}
            ViommuType::Tegra241Cmdqv => {
                a.data_uptr = (&raw mut tegra) as u64;
                a.data_len = size_of_val(&tegra) as u32;
            }
            #[cfg(feature = "selftest")]
            ViommuType::Selftest { in_data } => {
                mock.in_data = in_data;
                a.data_uptr = (&raw mut mock) as u64;
                a.data_len = size_of_val(&mock) as u32;
            }
        }
        // SAFETY: `data_uptr` is 0 with `data_len` 0, or points to the type's data
        // structure (a local, not otherwise referenced during the call) of exactly
        // `data_len` bytes, which the kernel reads and writes.
        unsafe { fd.ioctl(uapi::IOMMU_VIOMMU_ALLOC, &mut a) }.map_err(|e| match e.0 {
            libc::ENOENT => Error::naming_object(OP, dev.id(), e.0),
            errno => Error::from_errno(
                OP,
                format_args!("{viommu_type:?} on {} for {}", parent.id(), dev.id()),
                errno,
            ),
        })?;
        let data = match viommu_type {
            ViommuType::ArmSmmuV3 => ViommuData::None,
            ViommuType::Tegra241Cmdqv => ViommuData::Tegra241Cmdqv {
                mmap_offset: tegra.out_vintf_mmap_offset,
                mmap_length: tegra.out_vintf_mmap_length,
            },
            #[cfg(feature = "selftest")]
            ViommuType::Selftest { .. } => ViommuData::Selftest {
                out_data: mock.out_data,
                mmap_offset: mock.out_mmap_offset,
                mmap_length: mock.out_mmap_length,
            },
        };
        Ok(Object::from_parts(
            fd,
            a.out_viommu_id,
            vec![parent.as_parent()],
            ViommuState {
                viommu_type,
                data,
                parent: parent.clone(),
                vdevs: Mutex::default(),
            },
        ))
    }

    /// The type it was allocated with.
    pub fn viommu_type(&self) -> ViommuType {
        self.state().viommu_type
    }

    /// What the kernel returned at allocation.
    pub fn data(&self) -> ViommuData {
        self.state().data
    }

    /// The stage-2 HWPT it wraps.
    pub fn parent(&self) -> &Hwpt {
        &self.state().parent
    }

    /// The device with virtual id `virt_id` in this vIOMMU (through its
    /// [`Vdevice`]), and its label.
    ///
    /// ```no_run
    /// # fn f(viommu: &iommufd::Viommu, dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let vdev = iommufd::Vdevice::alloc(viommu, dev, 0x10)?;
    /// assert_eq!(viommu.device_of(0x10), Some((dev.id(), dev.label())));
    /// # Ok(()) }
    /// ```
    pub fn device_of(&self, virt_id: u64) -> Option<(DeviceId, u64)> {
        self.state()
            .vdevs()
            .get(&virt_id)
            .map(|e| (e.device, e.label))
    }

    /// The vDEVICE with virtual id `virt_id`, if this vIOMMU has one.
    pub fn vdevice_of(&self, virt_id: u64) -> Option<VdeviceId> {
        self.state()
            .vdevs()
            .get(&virt_id)
            .map(|e| VdeviceId::new(e.vdevice, self.iommufd().token()))
    }

    /// Sends the guest's invalidation commands to the IOMMU: all `entries` in one
    /// `IOMMU_HWPT_INVALIDATE` call, however many. Device ids in them are the
    /// guest's (virtual ids of this vIOMMU's [`Vdevice`]s).
    ///
    /// If the kernel stops part way, [`Error::InvalidationIncomplete`] says how many
    /// were handled and which was refused, with the label of the device it names.
    ///
    /// ```no_run
    /// use iommufd::{Error, SmmuV3Command};
    /// # fn f(viommu: &iommufd::Viommu, queue: &[[u64; 2]]) -> iommufd::Result<()> {
    /// // Commands from the guest's command queue, checked on the way in.
    /// let cmds: Vec<SmmuV3Command> = queue
    ///     .iter()
    ///     .map(|w| SmmuV3Command::from_words(*w))
    ///     .collect::<Result<_, _>>()
    ///     .map_err(|source| Error::Stage1 { op: "guest CMDQ", source })?;
    /// viommu.invalidate(&cmds)?;
    /// # Ok(()) }
    /// ```
    pub fn invalidate<E: ViommuInvalidation>(&self, entries: &[E]) -> Result<()> {
        invalidate_raw(self.iommufd(), self.id().raw(), entries).map_err(|f| {
            batch_error(self.id().to_string(), entries, f, |e| {
                e.virt_id()
                    .and_then(|v| self.device_of(v))
                    .map(|(_, label)| label)
            })
        })
    }

    /// Whether the kernel takes invalidation entries of type `E` for this vIOMMU:
    /// an `IOMMU_HWPT_INVALIDATE` with no entries, which invalidates nothing.
    ///
    /// The SMMUv3 driver refuses every empty batch (Linux 7.3 answers `EINVAL`
    /// whatever the type), so for an SMMUv3 vIOMMU and [`SmmuV3Command`](crate::SmmuV3Command)
    /// entries the answer is whether the kernel has the command at all.
    pub fn supports_invalidation<E: ViommuInvalidation>(&self) -> Result<bool> {
        let smmu = matches!(
            self.viommu_type(),
            ViommuType::ArmSmmuV3 | ViommuType::Tegra241Cmdqv
        );
        if smmu && E::DATA_TYPE == uapi::IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3 {
            return Ok(self.iommufd().has_command(crate::Command::HwptInvalidate));
        }
        probe_invalidation::<E>(self.iommufd(), self.id().raw(), self.id().to_string())
    }
}

/// The hardware page a vIOMMU exposes to user space (Tegra241 CMDQV's VINTF page,
/// the mock's two pages), mapped from the iommufd ([`Viommu::map_mmio`]).
///
/// It holds its vIOMMU: the kernel refuses to destroy a vIOMMU while its page is
/// mapped, so the mapping goes first whatever order a VMM drops things in. A VMM
/// typically maps it into the guest (a KVM memory slot at the address of the
/// emulated VINTF), which is `unsafe` on its side: the slot must go before this.
#[derive(Debug)]
pub struct ViommuMmio {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    viommu: Viommu,
}

// SAFETY: the mapping is a shared mapping of device memory owned by this value
// until drop; access goes through volatile reads and writes (or the caller's own
// unsafe code through `as_ptr`), which are sound from any thread.
unsafe impl Send for ViommuMmio {}
// SAFETY: as for `Send`: `&ViommuMmio` only gives volatile access and the address.
unsafe impl Sync for ViommuMmio {}

impl ViommuMmio {
    /// The start of the mapping (for a KVM memory slot, say).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never, for a mapping the kernel made).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The vIOMMU it belongs to.
    pub fn viommu(&self) -> &Viommu {
        &self.viommu
    }

    /// Reads the 32-bit register at `offset` (4-byte aligned, inside the
    /// mapping), or `None` outside it.
    pub fn read_u32(&self, offset: usize) -> Option<u32> {
        let p = self.register(offset)?;
        // SAFETY: `p` is 4-byte aligned and inside the live mapping.
        Some(unsafe { p.read_volatile() })
    }

    /// Writes the 32-bit register at `offset`; `false` outside the mapping.
    pub fn write_u32(&self, offset: usize, value: u32) -> bool {
        let Some(p) = self.register(offset) else {
            return false;
        };
        // SAFETY: `p` is 4-byte aligned and inside the live, writable mapping.
        unsafe { p.write_volatile(value) };
        true
    }

    fn register(&self, offset: usize) -> Option<*mut u32> {
        (offset % 4 == 0 && offset.checked_add(4)? <= self.len)
            // SAFETY: `offset + 4 <= len`: the pointer stays inside the mapping.
            .then(|| unsafe { self.ptr.as_ptr().add(offset) }.cast::<u32>())
    }
}

impl Drop for ViommuMmio {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping `map_mmio` made, which nothing else
        // refers to once this value goes.
        if unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) } != 0 {
            log::error!(
                "iommufd: unmapping the page of {}: {}",
                self.viommu.id(),
                std::io::Error::last_os_error()
            );
        }
    }
}

impl Object<kind::Viommu> {
    /// Maps the page the vIOMMU exposes (the `mmap_offset` / `mmap_length` of
    /// [`ViommuData`]) read-write and shared. [`Error::InvalidArgument`] for a
    /// vIOMMU without one (SMMUv3).
    ///
    /// ```no_run
    /// # fn f(viommu: &iommufd::Viommu) -> iommufd::Result<()> {
    /// let vintf = viommu.map_mmio()?;
    /// let config = vintf.read_u32(0);
    /// # Ok(()) }
    /// ```
    pub fn map_mmio(&self) -> Result<ViommuMmio> {
        let (offset, len) = match self.data() {
            ViommuData::Tegra241Cmdqv {
                mmap_offset,
                mmap_length,
            } => (mmap_offset, mmap_length),
            #[cfg(feature = "selftest")]
            ViommuData::Selftest {
                mmap_offset,
                mmap_length,
                ..
            } => (mmap_offset, mmap_length),
            ViommuData::None => {
                return Err(Error::InvalidArgument {
                    op: "mmap",
                    reason: "this vIOMMU exposes no page to map",
                });
            }
        };
        let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), usize::try_from(len)) else {
            return Err(Error::UnexpectedValue {
                op: "IOMMU_VIOMMU_ALLOC mmap region",
                value: offset,
            });
        };
        use std::os::fd::AsRawFd;
        // SAFETY: a new shared mapping chosen by the kernel (no fixed address), so
        // it overlaps no existing Rust object; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.iommufd().as_raw_fd(),
                off,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(Error::from_errno(
                "mmap",
                self.id(),
                crate::sys::Errno::last().0,
            ));
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or(Error::Os {
            op: "mmap",
            errno: libc::EFAULT,
        })?;
        Ok(ViommuMmio {
            ptr,
            len,
            viommu: self.clone(),
        })
    }
}

/// What a vDEVICE keeps beside its id.
#[derive(Debug)]
pub struct VdeviceState {
    viommu: Viommu,
    device: Device,
    virt_id: u64,
}

impl Drop for VdeviceState {
    fn drop(&mut self) {
        // After the vDEVICE was destroyed (the core sends DESTROY first).
        let mut vdevs = self.viommu.state().vdevs();
        if vdevs
            .get(&self.virt_id)
            .is_some_and(|e| e.device == self.device.id())
        {
            vdevs.remove(&self.virt_id);
        }
    }
}

impl ObjectState for kind::Vdevice {
    type State = VdeviceState;
}

/// A device as a vIOMMU's guest sees it (`IOMMU_VDEVICE_ALLOC`, Linux 6.13): the
/// device with the id the guest knows it by (its virtual id: an SMMUv3 vSID, an
/// AMD vDeviceID, a VT-d vRID).
///
/// A shared handle ([`Object`]) that holds its vIOMMU and its device, so it is
/// always destroyed before either: the device stays bound while the vDEVICE
/// exists.
///
/// ```no_run
/// # fn f(viommu: &iommufd::Viommu, dev: &iommufd::Device) -> iommufd::Result<()> {
/// use iommufd::{Error, Vdevice};
/// let vdev = Vdevice::alloc(viommu, dev, 0x10)?;
/// assert_eq!(vdev.virt_id(), 0x10);
/// # Ok(()) }
/// ```
pub type Vdevice = Object<kind::Vdevice>;

impl Object<kind::Vdevice> {
    /// Gives `dev` the virtual id `virt_id` in `viommu`.
    ///
    /// A virtual id another device has in this vIOMMU, or a device that has a
    /// vDEVICE already, is [`Error::DuplicateVdevice`] (the former before the
    /// kernel is asked).
    pub fn alloc(viommu: &Viommu, dev: &impl AsRef<Device>, virt_id: u64) -> Result<Vdevice> {
        const OP: &str = "IOMMU_VDEVICE_ALLOC";
        let dev = dev.as_ref();
        let fd = viommu.iommufd();
        dev.check_file(fd, OP)?;
        let mut vdevs = viommu.state().vdevs();
        if let Some(e) = vdevs.get(&virt_id) {
            return Err(Error::DuplicateVdevice {
                viommu: viommu.id().to_string(),
                virt_id,
                holder: Some(e.device),
            });
        }
        let mut a: uapi::iommu_vdevice_alloc = arg();
        a.viommu_id = viommu.id().raw();
        a.dev_id = dev.id().raw();
        a.virt_id = virt_id;
        fd.ioctl_plain(uapi::IOMMU_VDEVICE_ALLOC, &mut a)
            .map_err(|e| match e.0 {
                libc::EEXIST => Error::DuplicateVdevice {
                    viommu: viommu.id().to_string(),
                    virt_id,
                    holder: None,
                },
                libc::ENOENT => Error::naming_object(OP, dev.id(), e.0),
                errno => Error::from_errno(
                    OP,
                    format_args!("{} in {} as {virt_id:#x}", dev.id(), viommu.id()),
                    errno,
                ),
            })?;
        vdevs.insert(
            virt_id,
            VdevEntry {
                vdevice: a.out_vdevice_id,
                device: dev.id(),
                label: dev.label(),
            },
        );
        drop(vdevs);
        Ok(Object::from_parts(
            fd,
            a.out_vdevice_id,
            vec![viommu.as_parent()],
            VdeviceState {
                viommu: viommu.clone(),
                device: dev.clone(),
                virt_id,
            },
        ))
    }

    /// The guest's id of the device.
    pub fn virt_id(&self) -> u64 {
        self.state().virt_id
    }

    /// The device.
    pub fn device(&self) -> &Device {
        &self.state().device
    }

    /// The vIOMMU.
    pub fn viommu(&self) -> &Viommu {
        &self.state().viommu
    }
}

/// The kind of HW queue (`enum iommu_hw_queue_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HwQueueType {
    /// A Tegra241 CMDQV virtual command queue (Linux 6.17).
    Tegra241Cmdqv,
    /// The kernel's mock HW queue.
    #[cfg(feature = "selftest")]
    Selftest,
}

impl HwQueueType {
    /// The kernel's type code.
    pub fn code(&self) -> u32 {
        match self {
            HwQueueType::Tegra241Cmdqv => uapi::IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV,
            #[cfg(feature = "selftest")]
            HwQueueType::Selftest => uapi::selftest::IOMMU_HW_QUEUE_TYPE_SELFTEST,
        }
    }
}

/// What a HW queue keeps beside its id.
#[derive(Debug)]
pub struct HwQueueState {
    viommu: Viommu,
    queue_type: HwQueueType,
    index: u32,
    gpa: u64,
    len: u64,
}

impl ObjectState for kind::HwQueue {
    type State = HwQueueState;
}

/// A queue the IOMMU hardware reads from guest memory directly
/// (`IOMMU_HW_QUEUE_ALLOC`, Linux 6.17): e.g. a Tegra241 CMDQV command queue the
/// guest fills without exits.
///
/// The queue's memory is the guest's, at a guest-physical address (an IOVA of the
/// vIOMMU's stage-2 HWPT): it must be mapped there, and the kernel keeps those
/// pages pinned while the queue exists. Queues of one vIOMMU form a chain (index
/// 0, then [`HwQueue::alloc_next`]). A shared handle ([`Object`]) that holds its
/// vIOMMU and the queue before it.
///
/// ```no_run
/// use iommufd::{HwQueue, HwQueueType};
/// # fn f(viommu: &iommufd::Viommu) -> iommufd::Result<()> {
/// // Queue 0 of the guest's VINTF, 64 KiB at GPA 0x8000_0000, then queue 1.
/// let q0 = HwQueue::alloc(viommu, HwQueueType::Tegra241Cmdqv, 0x8000_0000, 0x10000)?;
/// let q1 = q0.alloc_next(0x8001_0000, 0x10000)?;
/// # Ok(()) }
/// ```
pub type HwQueue = Object<kind::HwQueue>;

impl Object<kind::HwQueue> {
    /// Allocates the first HW queue (index 0) of `queue_type` in `viommu`, over
    /// `len` bytes of guest memory at `gpa`.
    pub fn alloc(viommu: &Viommu, queue_type: HwQueueType, gpa: u64, len: u64) -> Result<HwQueue> {
        Self::alloc_index(viommu, None, queue_type, 0, gpa, len)
    }

    /// Allocates the queue after this one (index + 1), over `len` bytes of guest
    /// memory at `gpa`. The kernel makes queues depend on the one before (a queue
    /// is destroyed before its predecessor), so the new queue holds this one.
    ///
    /// ```no_run
    /// # fn f(q0: &iommufd::HwQueue) -> iommufd::Result<()> {
    /// let q1 = q0.alloc_next(0x8001_0000, 0x10000)?;
    /// assert_eq!(q1.index(), 1);
    /// # Ok(()) }
    /// ```
    pub fn alloc_next(&self, gpa: u64, len: u64) -> Result<HwQueue> {
        let index = self.index().checked_add(1).ok_or(Error::InvalidArgument {
            op: "IOMMU_HW_QUEUE_ALLOC",
            reason: "no queue index after u32::MAX",
        })?;
        Self::alloc_index(
            self.viommu(),
            Some(self),
            self.queue_type(),
            index,
            gpa,
            len,
        )
    }

    fn alloc_index(
        viommu: &Viommu,
        prev: Option<&HwQueue>,
        queue_type: HwQueueType,
        index: u32,
        gpa: u64,
        len: u64,
    ) -> Result<HwQueue> {
        const OP: &str = "IOMMU_HW_QUEUE_ALLOC";
        if len == 0 || gpa.checked_add(len - 1).is_none() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "the queue memory is empty or wraps around the address space",
            });
        }
        let mut a: uapi::iommu_hw_queue_alloc = arg();
        a.viommu_id = viommu.id().raw();
        a.type_ = queue_type.code();
        a.index = index;
        a.nesting_parent_iova = gpa;
        a.length = len;
        let fd = viommu.iommufd();
        fd.ioctl_plain(uapi::IOMMU_HW_QUEUE_ALLOC, &mut a)
            .map_err(|e| {
                Error::naming_object(
                    OP,
                    format_args!("queue {index} of {} at GPA {gpa:#x}", viommu.id()),
                    e.0,
                )
            })?;
        let mut parents = vec![viommu.as_parent()];
        parents.extend(prev.map(|p| p.as_parent()));
        Ok(Object::from_parts(
            fd,
            a.out_hw_queue_id,
            parents,
            HwQueueState {
                viommu: viommu.clone(),
                queue_type,
                index,
                gpa,
                len,
            },
        ))
    }

    /// The vIOMMU.
    pub fn viommu(&self) -> &Viommu {
        &self.state().viommu
    }

    /// The type.
    pub fn queue_type(&self) -> HwQueueType {
        self.state().queue_type
    }

    /// The queue's index in its vIOMMU.
    pub fn index(&self) -> u32 {
        self.state().index
    }

    /// The guest-physical range of its memory.
    pub fn memory(&self) -> (u64, u64) {
        (self.state().gpa, self.state().len)
    }
}

#[cfg(test)]
impl Object<kind::Viommu> {
    /// A handle for an id this file may not have, on `parent`, for error-path tests.
    pub(crate) fn fake(parent: &Hwpt, id: u32, viommu_type: ViommuType) -> Viommu {
        Object::from_parts(
            parent.iommufd(),
            id,
            vec![parent.as_parent()],
            ViommuState {
                viommu_type,
                data: ViommuData::None,
                parent: parent.clone(),
                vdevs: Mutex::default(),
            },
        )
    }

    /// Records a vDEVICE in the table, as a successful allocation would.
    pub(crate) fn fake_vdevice(&self, virt_id: u64, vdevice: u32, dev: &Device) {
        self.state().vdevs().insert(
            virt_id,
            VdevEntry {
                vdevice,
                device: dev.id(),
                label: dev.label(),
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::tests::null;
    use crate::nested::tests::device;
    use crate::{InvalidationEntry, Ioas, SmmuV3Command};

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn viommu_checks_and_errors() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let dev = device(&fd, 2, 0x20);
        let plain = Hwpt::fake(&ioas, 3);
        let e = Viommu::alloc(&plain, &dev, ViommuType::ArmSmmuV3).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let parent = Hwpt::fake_with_flags(&ioas, 4, HwptFlags::NEST_PARENT);
        for t in [ViommuType::ArmSmmuV3, ViommuType::Tegra241Cmdqv] {
            let e = Viommu::alloc(&parent, &dev, t).unwrap_err();
            assert!(e.is_unsupported(), "{e}");
        }
        let other = null();
        let e = Viommu::alloc(&parent, &device(&other, 2, 1), ViommuType::ArmSmmuV3).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        let _ = (plain.into_id(), parent.into_id(), ioas.into_id());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn vdevices_are_traced_by_virtual_id() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let parent = Hwpt::fake_with_flags(&ioas, 4, HwptFlags::NEST_PARENT);
        let viommu = Viommu::fake(&parent, 5, ViommuType::ArmSmmuV3);
        assert_eq!(viommu.viommu_type(), ViommuType::ArmSmmuV3);
        assert_eq!(viommu.data(), ViommuData::None);
        assert_eq!(viommu.parent().id(), parent.id());
        assert!(format!("{viommu:?}").contains("vdevices: 0"));
        let e = viommu.map_mmio().unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let a = device(&fd, 2, 0x20);
        let b = device(&fd, 3, 0x30);
        viommu.fake_vdevice(0x10, 9, &a);
        assert_eq!(viommu.device_of(0x10), Some((a.id(), 0x20)));
        assert_eq!(viommu.vdevice_of(0x10).map(|v| v.raw()), Some(9));
        assert_eq!(viommu.device_of(0x11), None);
        // A virtual id taken: refused before the kernel, naming the holder.
        match Vdevice::alloc(&viommu, &b, 0x10).unwrap_err() {
            Error::DuplicateVdevice {
                holder, virt_id, ..
            } => {
                assert_eq!((holder, virt_id), (Some(a.id()), 0x10))
            }
            e => panic!("{e}"),
        }
        // A free one reaches the kernel.
        assert!(
            Vdevice::alloc(&viommu, &b, 0x11)
                .unwrap_err()
                .is_unsupported()
        );
        // Invalidations name the device of the refused entry.
        let cmds = [SmmuV3Command::cfgi_cd_all(0x10)];
        let e = viommu.invalidate(&cmds).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        let err = crate::invalidate::batch_error(
            viommu.id().to_string(),
            &[
                SmmuV3Command::tlbi_nh_all(),
                SmmuV3Command::cfgi_cd_all(0x10),
            ],
            crate::invalidate::BatchFailure {
                handled: 1,
                errno: crate::sys::Errno(libc::EIO),
            },
            |e| e.virt_id().and_then(|v| viommu.device_of(v)).map(|d| d.1),
        );
        match &err {
            Error::InvalidationIncomplete {
                handled,
                label,
                entry,
                errno,
                ..
            } => {
                assert_eq!((*handled, *label, *errno), (1, Some(0x20), libc::EIO));
                assert!(entry.as_deref().is_some_and(|e| e.contains("CfgiCdAll")));
            }
            e => panic!("{e}"),
        }
        assert!(err.to_string().contains("device label 0x20"), "{err}");
        assert_eq!(err.errno(), Some(libc::EIO));
        // SMMUv3 takes no empty batch: support is the command's presence.
        assert!(!viommu.supports_invalidation::<SmmuV3Command>().unwrap());
        let _ = (viommu.into_id(), parent.into_id(), ioas.into_id());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn hw_queue_arguments() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let parent = Hwpt::fake_with_flags(&ioas, 4, HwptFlags::NEST_PARENT);
        let viommu = Viommu::fake(&parent, 5, ViommuType::Tegra241Cmdqv);
        let t = HwQueueType::Tegra241Cmdqv;
        for (gpa, len) in [(0x1000, 0), (u64::MAX, 2)] {
            let e = HwQueue::alloc(&viommu, t, gpa, len).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        }
        let e = HwQueue::alloc(&viommu, t, 0x1000, 0x1000).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(e.to_string().contains("queue 0 of viommu 5"), "{e}");
        assert_eq!(t.code(), uapi::IOMMU_HW_QUEUE_TYPE_TEGRA241_CMDQV);
        let _ = (viommu.into_id(), parent.into_id(), ioas.into_id());
    }
}

#[cfg(test)]
mod more_tests {
    use super::*;
    use crate::iommufd::tests::null;
    use crate::nested::tests::device;
    use crate::{Ioas, SelftestViommuInvalidation};

    fn parent(fd: &crate::Iommufd) -> (Ioas, Hwpt) {
        let ioas = Ioas::fake(fd, 1);
        let parent = Hwpt::fake_with_flags(&ioas, 2, HwptFlags::NEST_PARENT);
        (ioas, parent)
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn mmio_accessors_stay_inside_the_mapping() {
        let fd = null();
        let (ioas, parent) = parent(&fd);
        let viommu = Viommu::fake(&parent, 3, ViommuType::Tegra241Cmdqv);
        // An anonymous page stands in for the kernel's.
        // SAFETY: a new private anonymous mapping; `ViommuMmio` owns and unmaps it.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let mmio = ViommuMmio {
            ptr: std::ptr::NonNull::new(p.cast()).unwrap(),
            len: 4096,
            viommu: viommu.clone(),
        };
        assert_eq!((mmio.len(), mmio.is_empty()), (4096, false));
        assert_eq!(mmio.viommu().id(), viommu.id());
        assert!(!mmio.as_ptr().is_null());
        assert!(mmio.write_u32(4092, 7));
        assert_eq!(mmio.read_u32(4092), Some(7));
        assert!(!mmio.write_u32(4093, 7));
        assert!(!mmio.write_u32(4096, 7));
        assert_eq!(mmio.read_u32(usize::MAX - 3), None);
        assert_eq!(viommu.handles(), 2, "the mapping holds its vIOMMU");
        drop(mmio);
        assert_eq!(viommu.handles(), 1);
        let _ = (viommu.into_id(), parent.into_id(), ioas.into_id());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn vdevice_and_queue_handles() {
        let fd = null();
        let (ioas, parent) = parent(&fd);
        let dev = device(&fd, 4, 0x40);
        let viommu = Viommu::fake(&parent, 3, ViommuType::Selftest { in_data: 1 });
        assert!(
            Viommu::alloc(&parent, &dev, ViommuType::Selftest { in_data: 1 })
                .unwrap_err()
                .is_unsupported()
        );
        // mmap of a region /dev/null does not have.
        let tegra = Object::from_parts(
            &fd,
            9,
            vec![parent.as_parent()],
            ViommuState {
                viommu_type: ViommuType::Tegra241Cmdqv,
                data: ViommuData::Tegra241Cmdqv {
                    mmap_offset: 4096,
                    mmap_length: 4096,
                },
                parent: parent.clone(),
                vdevs: Mutex::default(),
            },
        );
        assert!(tegra.map_mmio().unwrap_err().errno().is_some());
        let _ = tegra.into_id();
        // A vDEVICE as an allocation leaves it: in the table until it goes.
        viommu.fake_vdevice(0x10, 5, &dev);
        let vdev: Vdevice = Object::from_parts(
            &fd,
            5,
            vec![viommu.as_parent()],
            VdeviceState {
                viommu: viommu.clone(),
                device: dev.clone(),
                virt_id: 0x10,
            },
        );
        assert_eq!(
            (vdev.virt_id(), vdev.device().id(), vdev.viommu().id()),
            (0x10, dev.id(), viommu.id())
        );
        let e = viommu
            .invalidate(&[SelftestViommuInvalidation::one(0x10, 0)])
            .unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(
            !viommu
                .supports_invalidation::<SelftestViommuInvalidation>()
                .unwrap()
        );
        drop(vdev);
        assert_eq!(viommu.device_of(0x10), None, "removed with the vDEVICE");
        // HW queues.
        let q: HwQueue = Object::from_parts(
            &fd,
            6,
            vec![viommu.as_parent()],
            HwQueueState {
                viommu: viommu.clone(),
                queue_type: HwQueueType::Selftest,
                index: 0,
                gpa: 0x1000,
                len: 0x1000,
            },
        );
        assert_eq!(
            (q.index(), q.memory(), q.queue_type()),
            (0, (0x1000, 0x1000), HwQueueType::Selftest)
        );
        assert_eq!(q.viommu().id(), viommu.id());
        let e = q.alloc_next(0x2000, 0x1000).unwrap_err();
        assert!(
            e.is_unsupported() && e.to_string().contains("queue 1"),
            "{e}"
        );
        let _ = (
            q.into_id(),
            viommu.into_id(),
            parent.into_id(),
            ioas.into_id(),
        );
    }
}
