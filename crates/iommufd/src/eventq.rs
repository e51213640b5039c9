//! Event queues: I/O page faults ([`FaultQueue`], Linux 6.11) and vIOMMU events
//! ([`Veventq`], Linux 6.15), each an object with a file descriptor to read
//! records from and to poll in an event loop.
//!
//! Records come from hardware a guest controls, through the kernel: they are
//! decoded defensively (every length and field checked, nothing trusted), and the
//! decoders are public so a VMM that reads the files itself gets the same checks.

use std::collections::BTreeSet;
use std::fmt;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bitflags::bitflags;
use iommufd_uapi as uapi;

use crate::ids::kind;
use crate::object::{Object, sealed::ObjectState};
use crate::sys::arg;
use crate::{DecodeError, DeviceId, Error, Iommufd, Result, Viommu};

const PGFAULT_SIZE: usize = size_of::<uapi::iommu_hwpt_pgfault>();

bitflags! {
    /// The access a page request asks for (`enum iommu_hwpt_pgfault_perm`).
    ///
    /// ```
    /// use iommufd::FaultPerm;
    /// assert_eq!((FaultPerm::READ | FaultPerm::WRITE).bits(), 3);
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct FaultPerm: u32 {
        /// Read.
        const READ = uapi::IOMMU_PGFAULT_PERM_READ;
        /// Write.
        const WRITE = uapi::IOMMU_PGFAULT_PERM_WRITE;
        /// Execute.
        const EXEC = uapi::IOMMU_PGFAULT_PERM_EXEC;
        /// Privileged.
        const PRIV = uapi::IOMMU_PGFAULT_PERM_PRIV;
    }
}

/// One page fault record as the kernel writes it (`struct iommu_hwpt_pgfault`),
/// decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRecord {
    /// The kernel's id of the device (raw; see [`FaultGroup::device`]).
    pub dev_id: u32,
    /// The PASID, if the request carried one.
    pub pasid: Option<u32>,
    /// The page request group index.
    pub grpid: u32,
    /// The access asked for.
    pub perm: FaultPerm,
    /// The faulting address.
    pub addr: u64,
    /// The length of the access, if the hardware reports it (else 0).
    pub length: u32,
    /// The group's cookie: what the response names.
    pub cookie: u32,
    /// The last page of its group (`IOMMU_PGFAULT_FLAGS_LAST_PAGE`).
    pub last_page: bool,
}

impl FaultRecord {
    /// Decodes the records of one `read(2)` of a fault queue: whole records of 40
    /// bytes; a trailing partial record, unknown flags or permission bits, or
    /// non-zero reserved fields are errors naming the byte offset.
    ///
    /// ```
    /// use iommufd::FaultRecord;
    /// let mut rec = [0u8; 40];
    /// rec[0] = 2; // LAST_PAGE
    /// rec[16] = 1; // read
    /// let faults = FaultRecord::decode(&rec)?;
    /// assert!(faults[0].last_page && faults[0].pasid.is_none());
    /// assert!(FaultRecord::decode(&rec[..39]).is_err());
    /// # Ok::<(), iommufd::DecodeError>(())
    /// ```
    pub fn decode(bytes: &[u8]) -> std::result::Result<Vec<FaultRecord>, DecodeError> {
        let whole = bytes.len() / PGFAULT_SIZE * PGFAULT_SIZE;
        if whole != bytes.len() {
            return Err(DecodeError::TooShort {
                data_type: 0,
                need: whole + PGFAULT_SIZE,
                got: bytes.len(),
            });
        }
        // The kernel writes the structure in the CPU's byte order.
        let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut out = Vec::with_capacity(bytes.len() / PGFAULT_SIZE);
        for (i, r) in bytes.chunks_exact(PGFAULT_SIZE).enumerate() {
            let offset = i * PGFAULT_SIZE;
            let bad = |field: &'static str, value: u64| DecodeError::BadRecord {
                offset,
                field,
                value,
            };
            let flags = u32_at(r, 0);
            let known = uapi::IOMMU_PGFAULT_FLAGS_PASID_VALID | uapi::IOMMU_PGFAULT_FLAGS_LAST_PAGE;
            if flags & !known != 0 {
                return Err(bad("flags", flags.into()));
            }
            let perm_bits = u32_at(r, 16);
            let perm = FaultPerm::from_bits(perm_bits).ok_or(bad("perm", perm_bits.into()))?;
            let reserved = u32_at(r, 20);
            if reserved != 0 {
                return Err(bad("__reserved", reserved.into()));
            }
            let pasid = u32_at(r, 8);
            let mut addr = [0u8; 8];
            addr.copy_from_slice(&r[24..32]);
            out.push(FaultRecord {
                dev_id: u32_at(r, 4),
                pasid: (flags & uapi::IOMMU_PGFAULT_FLAGS_PASID_VALID != 0).then_some(pasid),
                grpid: u32_at(r, 12),
                perm,
                addr: u64::from_ne_bytes(addr),
                length: u32_at(r, 32),
                cookie: u32_at(r, 36),
                last_page: flags & uapi::IOMMU_PGFAULT_FLAGS_LAST_PAGE != 0,
            });
        }
        Ok(out)
    }
}

/// One page of a [`FaultGroup`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultPage {
    /// The faulting address (an IOVA of the HWPT: for a nested HWPT, a GIOVA).
    pub addr: u64,
    /// The access asked for.
    pub perm: FaultPerm,
    /// The length of the access, if reported (else 0).
    pub length: u32,
}

/// A page request group: the faults one device raised together, answered with one
/// response ([`FaultQueue::respond`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultGroup {
    /// What the response names.
    pub cookie: u32,
    /// The device.
    pub device: DeviceId,
    /// The device's label, if it is still bound under one.
    pub label: Option<u64>,
    /// The PASID, if the requests carried one.
    pub pasid: Option<u32>,
    /// The page request group index the device gave.
    pub grpid: u32,
    /// The pages, in the order the device sent them.
    pub pages: Vec<FaultPage>,
}

impl FaultGroup {
    /// Groups decoded records: each group is the run of records with one cookie
    /// (the kernel delivers whole groups, its last page flagged `LAST_PAGE`).
    /// Records of one group that disagree on device, PASID or group index are an
    /// error; labels are looked up in `fd`.
    ///
    /// ```
    /// use iommufd::{FaultGroup, FaultRecord, FaultPerm};
    /// # fn f(fd: &iommufd::Iommufd) -> Result<(), iommufd::DecodeError> {
    /// let page = |cookie, last_page| FaultRecord {
    ///     dev_id: 1, pasid: None, grpid: 0, perm: FaultPerm::READ, addr: 0,
    ///     length: 0, cookie, last_page,
    /// };
    /// let groups = FaultGroup::from_records(fd, &[page(5, false), page(5, true), page(6, true)])?;
    /// assert_eq!(groups.len(), 2);
    /// assert_eq!(groups[0].pages.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn from_records(
        fd: &Iommufd,
        records: &[FaultRecord],
    ) -> std::result::Result<Vec<FaultGroup>, DecodeError> {
        let mut groups: Vec<FaultGroup> = Vec::new();
        let mut open = false;
        for (i, r) in records.iter().enumerate() {
            let page = FaultPage {
                addr: r.addr,
                perm: r.perm,
                length: r.length,
            };
            match groups.last_mut() {
                Some(g) if open && g.cookie == r.cookie => {
                    if g.device.raw() != r.dev_id || g.pasid != r.pasid || g.grpid != r.grpid {
                        return Err(DecodeError::BadRecord {
                            offset: i * PGFAULT_SIZE,
                            field: "dev_id/pasid/grpid (differs within its group)",
                            value: r.dev_id.into(),
                        });
                    }
                    g.pages.push(page);
                }
                _ => {
                    let device = DeviceId::new(r.dev_id, fd.token());
                    groups.push(FaultGroup {
                        cookie: r.cookie,
                        device,
                        label: fd.label_of(device),
                        pasid: r.pasid,
                        grpid: r.grpid,
                        pages: vec![page],
                    });
                }
            }
            open = !r.last_page;
        }
        Ok(groups)
    }
}

/// The answer to a page request group (`enum iommufd_page_response_code`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PageResponse {
    /// The pages are mapped now: the device retries
    /// (`IOMMUFD_PAGE_RESP_SUCCESS`).
    Success,
    /// The request is refused: the device gets an error
    /// (`IOMMUFD_PAGE_RESP_INVALID`).
    Invalid,
}

/// The file of a queue: read, polled, and closed just before its object is
/// destroyed (the open file holds a reference to the object in the kernel, which
/// would refuse the destroy with `EBUSY`).
#[derive(Debug)]
struct QueueFile {
    fd: Mutex<Option<OwnedFd>>,
    raw: RawFd,
}

impl QueueFile {
    /// Takes ownership of the fd the kernel returned.
    fn from_raw(fd: u32) -> Result<QueueFile> {
        let raw = RawFd::try_from(fd).map_err(|_| Error::UnexpectedValue {
            op: "event queue fd",
            value: fd.into(),
        })?;
        // SAFETY: the kernel just installed `raw` in this process's fd table for
        // the new object, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        Ok(QueueFile {
            fd: Mutex::new(Some(fd)),
            raw,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Option<OwnedFd>> {
        self.fd.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Closes the file (before the object is destroyed).
    fn close(&self) {
        self.lock().take();
    }

    /// The fd, or -1 once closed.
    fn raw(&self) -> RawFd {
        if self.lock().is_some() { self.raw } else { -1 }
    }

    /// Reads once, without blocking; 0 bytes when the queue is empty.
    fn read(&self, buf: &mut [u8]) -> std::result::Result<usize, i32> {
        let fd = self.lock();
        let Some(fd) = fd.as_ref() else {
            return Err(libc::EBADF);
        };
        // SAFETY: `buf` is a live, exclusively borrowed buffer of `buf.len()` bytes.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            // The kernel's queues answer an empty read with 0; a file set
            // non-blocking elsewhere may say EAGAIN: empty as well.
            match crate::sys::Errno::last().0 {
                libc::EAGAIN => Ok(0),
                errno => Err(errno),
            }
        } else {
            // Non-negative and at most `buf.len()`.
            Ok(n as usize)
        }
    }

    /// Writes `bytes` once.
    fn write(&self, bytes: &[u8]) -> std::result::Result<usize, i32> {
        let fd = self.lock();
        let Some(fd) = fd.as_ref() else {
            return Err(libc::EBADF);
        };
        // SAFETY: `bytes` is a live buffer of `bytes.len()` bytes the kernel only
        // reads.
        let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
        if n < 0 {
            Err(crate::sys::Errno::last().0)
        } else {
            Ok(n as usize)
        }
    }

    /// Waits until the queue has something to read, or `timeout` passes.
    fn wait(&self, timeout: Option<Duration>) -> std::result::Result<bool, i32> {
        let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
        // The file is closed only when the last handle goes, so not while a
        // handle waits here: poll without holding the lock.
        let raw = self.raw();
        if raw < 0 {
            return Err(libc::EBADF);
        }
        let mut p = libc::pollfd {
            fd: raw,
            events: libc::POLLIN,
            revents: 0,
        };
        loop {
            // SAFETY: one valid pollfd, borrowed for the call.
            let n = unsafe { libc::poll(&mut p, 1, ms) };
            if n >= 0 {
                return Ok(n > 0 && p.revents & libc::POLLIN != 0);
            }
            let e = crate::sys::Errno::last().0;
            if e != libc::EINTR {
                return Err(e);
            }
        }
    }
}

/// What a fault queue keeps beside its id.
#[derive(Debug)]
pub struct FaultQueueState {
    file: QueueFile,
    /// Cookies of groups read and not answered yet.
    outstanding: Mutex<BTreeSet<u32>>,
}

impl FaultQueueState {
    fn outstanding(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.outstanding.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ObjectState for kind::FaultQueue {
    type State = FaultQueueState;

    fn before_destroy(state: &FaultQueueState) {
        state.file.close();
    }
}

/// A queue of I/O page faults (`IOMMU_FAULT_QUEUE_ALLOC`, Linux 6.11).
///
/// HWPTs allocated with a fault queue ([`Hwpt::alloc_iopf`](crate::Hwpt::alloc_iopf),
/// [`NestedHwpt::alloc`](crate::NestedHwpt::alloc)) report DMA to unmapped
/// addresses here instead of failing it, grouped as the device sent them (page
/// request groups). The VMM reads them ([`FaultQueue::read`], or
/// [`FaultQueue::read_blocking`]), makes the pages present (for a nested HWPT, by
/// injecting the fault into the guest), and answers each group
/// ([`FaultQueue::respond`]). The queue's fd is pollable ([`AsRawFd`]).
///
/// A shared handle ([`Object`]); HWPTs that use it hold it.
///
/// ```no_run
/// use iommufd::{FaultQueue, PageResponse};
/// # fn f(fd: &iommufd::Iommufd) -> iommufd::Result<()> {
/// let faults = FaultQueue::alloc(fd)?;
/// // ... allocate HWPTs with it, attach devices ...
/// for group in faults.read()? {
///     println!("device label {:?} faulted at {:#x}", group.label, group.pages[0].addr);
///     faults.respond(group.cookie, PageResponse::Success)?;
/// }
/// # Ok(()) }
/// ```
pub type FaultQueue = Object<kind::FaultQueue>;

/// The most records read at once: a group larger than this is read with a larger
/// buffer (the kernel refuses to split a group).
const FAULT_BATCH: usize = 64;
/// The largest group read: 2^16 pages.
const FAULT_GROUP_MAX: usize = 1 << 16;

impl Object<kind::FaultQueue> {
    /// Allocates a fault queue in `fd`.
    pub fn alloc(fd: &Iommufd) -> Result<FaultQueue> {
        let mut a: uapi::iommu_fault_alloc = arg();
        fd.ioctl_plain(uapi::IOMMU_FAULT_QUEUE_ALLOC, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_FAULT_QUEUE_ALLOC", "iommufd", e.0))?;
        let file = match QueueFile::from_raw(a.out_fault_fd) {
            Ok(f) => f,
            Err(e) => {
                let _ = fd.destroy_raw(a.out_fault_id);
                return Err(e);
            }
        };
        Ok(Object::from_parts(
            fd,
            a.out_fault_id,
            Vec::new(),
            FaultQueueState {
                file,
                outstanding: Mutex::default(),
            },
        ))
    }

    /// Reads the page request groups delivered so far, without blocking (an empty
    /// list when there are none). Each group must be answered with
    /// [`FaultQueue::respond`]; the device waits until then.
    pub fn read(&self) -> Result<Vec<FaultGroup>> {
        let mut records = FAULT_BATCH;
        loop {
            let mut buf = vec![0u8; records * PGFAULT_SIZE];
            match self.state().file.read(&mut buf) {
                Ok(n) => {
                    buf.truncate(n);
                    let decoded = FaultRecord::decode(&buf)
                        .and_then(|r| FaultGroup::from_records(self.iommufd(), &r))
                        .map_err(|source| Error::RecordDecode {
                            queue: self.id().to_string(),
                            source,
                        })?;
                    self.state()
                        .outstanding()
                        .extend(decoded.iter().map(|g| g.cookie));
                    return Ok(decoded);
                }
                // The first group does not fit: read again with room for it.
                Err(libc::EINVAL) if records < FAULT_GROUP_MAX => records *= 8,
                Err(errno) => {
                    return Err(Error::from_errno("read", self.id(), errno));
                }
            }
        }
    }

    /// Waits up to `timeout` (forever with `None`) for faults, then reads them; an
    /// empty list if none came in time.
    pub fn read_blocking(&self, timeout: Option<Duration>) -> Result<Vec<FaultGroup>> {
        let ready = self
            .state()
            .file
            .wait(timeout)
            .map_err(|e| Error::from_errno("poll", self.id(), e))?;
        if ready { self.read() } else { Ok(Vec::new()) }
    }

    /// Answers the page request group `cookie` (from [`FaultGroup::cookie`]).
    /// A cookie this queue has not delivered, or answered already, is
    /// [`Error::UnknownCookie`] before the kernel is asked.
    pub fn respond(&self, cookie: u32, response: PageResponse) -> Result<()> {
        let mut outstanding = self.state().outstanding();
        if !outstanding.contains(&cookie) {
            return Err(Error::UnknownCookie {
                queue: self.id().to_string(),
                cookie,
            });
        }
        let r = uapi::iommu_hwpt_page_response {
            cookie,
            code: match response {
                PageResponse::Success => uapi::IOMMUFD_PAGE_RESP_SUCCESS,
                PageResponse::Invalid => uapi::IOMMUFD_PAGE_RESP_INVALID,
            },
        };
        let mut bytes = [0u8; 8];
        bytes[..4].copy_from_slice(&r.cookie.to_ne_bytes());
        bytes[4..].copy_from_slice(&r.code.to_ne_bytes());
        if let Err(errno) = self.state().file.write(&bytes) {
            if errno == libc::EINVAL {
                // The kernel no longer has the group (its device was detached,
                // which answers outstanding groups itself).
                outstanding.remove(&cookie);
                return Err(Error::UnknownCookie {
                    queue: self.id().to_string(),
                    cookie,
                });
            }
            return Err(Error::from_errno("write page response", self.id(), errno));
        }
        outstanding.remove(&cookie);
        Ok(())
    }

    /// The cookies of groups read and not answered yet.
    pub fn outstanding(&self) -> Vec<u32> {
        self.state().outstanding().iter().copied().collect()
    }
}

/// The queue's file, to poll for readability in an event loop (-1 once the
/// queue is being destroyed).
impl AsRawFd for Object<kind::FaultQueue> {
    fn as_raw_fd(&self) -> RawFd {
        self.state().file.raw()
    }
}

/// The kind of a vEVENTQ (`enum iommu_veventq_type`): which events it reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VeventqType {
    /// SMMUv3 event records (`struct iommu_vevent_arm_smmuv3`), Linux 6.15.
    ArmSmmuV3,
    /// Tegra241 CMDQV errors (`struct iommu_vevent_tegra241_cmdqv`), Linux 6.17.
    Tegra241Cmdqv,
    /// The kernel's mock events (`struct iommu_viommu_event_selftest`).
    #[cfg(feature = "selftest")]
    Selftest,
}

impl VeventqType {
    /// The kernel's type code.
    pub fn code(&self) -> u32 {
        match self {
            VeventqType::ArmSmmuV3 => uapi::IOMMU_VEVENTQ_TYPE_ARM_SMMUV3,
            VeventqType::Tegra241Cmdqv => uapi::IOMMU_VEVENTQ_TYPE_TEGRA241_CMDQV,
            #[cfg(feature = "selftest")]
            VeventqType::Selftest => uapi::selftest::IOMMU_VEVENTQ_TYPE_SELFTEST,
        }
    }

    /// The size of one event's data.
    pub fn data_len(&self) -> usize {
        match self {
            VeventqType::ArmSmmuV3 => size_of::<uapi::iommu_vevent_arm_smmuv3>(),
            VeventqType::Tegra241Cmdqv => size_of::<uapi::iommu_vevent_tegra241_cmdqv>(),
            #[cfg(feature = "selftest")]
            VeventqType::Selftest => size_of::<uapi::selftest::iommu_viommu_event_selftest>(),
        }
    }
}

/// The data of one vEVENT, by queue type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum VeventData {
    /// An SMMUv3 event record (four words, CPU order); its `StreamID` (word 0, bits
    /// 63:32) is the guest's (the vDEVICE's virtual id).
    ArmSmmuV3([u64; 4]),
    /// The Tegra241 CMDQV error map of the VINTF's logical queues.
    Tegra241Cmdqv([u64; 2]),
    /// A mock event for the device with virtual id `virt_id`.
    Selftest {
        /// The virtual id.
        virt_id: u32,
    },
}

impl VeventData {
    /// The guest's id of the device the event is about, if it names one.
    pub fn virt_id(&self) -> Option<u64> {
        match self {
            VeventData::ArmSmmuV3(evt) => Some(evt[0] >> 32),
            VeventData::Tegra241Cmdqv(_) => None,
            VeventData::Selftest { virt_id } => Some((*virt_id).into()),
        }
    }
}

/// One vEVENT read from a [`Veventq`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vevent {
    /// The kernel's sequence number (0 to `i32::MAX`, then 0 again).
    pub sequence: u32,
    /// How many events were lost just before this one (queue overflow, or memory
    /// shortage in the kernel): the gap in sequence numbers.
    pub lost_before: u32,
    /// The event.
    pub data: VeventData,
    /// The device the event names, and its label, through the vIOMMU's vDEVICEs.
    pub device: Option<(DeviceId, u64)>,
    /// The vDEVICE the event names (by its virtual id), if the vIOMMU has it.
    pub vdevice: Option<crate::VdeviceId>,
}

/// What one read of a vEVENTQ returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VeventBatch {
    /// The events, in order.
    pub events: Vec<Vevent>,
    /// How many events were lost in all (the sum of every `lost_before`, plus the
    /// events a trailing `LOST_EVENTS` record reports).
    pub lost: u64,
}

/// A decoded vEVENTQ record, before devices are looked up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VeventRecord {
    /// The sequence number.
    pub sequence: u32,
    /// Events lost just before it.
    pub lost_before: u32,
    /// The event, or `None` for a `LOST_EVENTS` record (whose events are counted
    /// in `lost_before`).
    pub data: Option<VeventData>,
}

/// The sequence numbers of one vEVENTQ: what the next event should carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VeventSequence {
    next: u32,
}

const SEQ_MASK: u32 = i32::MAX as u32;

impl VeventSequence {
    /// A new queue: the first event is number 0.
    pub fn new() -> Self {
        VeventSequence { next: 0 }
    }

    /// Decodes the records of one `read(2)` of a vEVENTQ of `queue_type`: an
    /// 8-byte header (`flags`, `sequence`), then the type's data, except for a
    /// `LOST_EVENTS` header, which has none. Lost events are counted from sequence
    /// gaps and `LOST_EVENTS` records. Truncated records, unknown flags and
    /// sequence numbers above `i32::MAX` are errors; nothing is consumed then.
    ///
    /// ```
    /// use iommufd::{VeventSequence, VeventqType};
    /// let mut seq = VeventSequence::new();
    /// // Event 0, then a LOST_EVENTS record for events 1..=3 (SMMUv3: 32 data bytes).
    /// let mut bytes = vec![0u8; 8 + 32];
    /// bytes.extend_from_slice(&1u32.to_le_bytes()); // flags: LOST_EVENTS
    /// bytes.extend_from_slice(&3u32.to_le_bytes()); // sequence 3
    /// let records = seq.decode(VeventqType::ArmSmmuV3, &bytes)?;
    /// assert_eq!(records.len(), 2);
    /// assert_eq!((records[1].data, records[1].lost_before), (None, 3));
    /// # Ok::<(), iommufd::DecodeError>(())
    /// ```
    pub fn decode(
        &mut self,
        queue_type: VeventqType,
        bytes: &[u8],
    ) -> std::result::Result<Vec<VeventRecord>, DecodeError> {
        const HDR: usize = size_of::<uapi::iommufd_vevent_header>();
        let data_len = queue_type.data_len();
        // Headers (and the mock's payload) are in the CPU's byte order; SMMUv3
        // and Tegra241 payloads are little-endian words.
        let u32_at =
            |o: usize| u32::from_ne_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[o..o + 8]);
            u64::from_le_bytes(w)
        };
        let mut next = self.next;
        let mut out = Vec::new();
        let mut off = 0;
        while off < bytes.len() {
            if bytes.len() - off < HDR {
                return Err(DecodeError::TooShort {
                    data_type: queue_type.code(),
                    need: off + HDR,
                    got: bytes.len(),
                });
            }
            let flags = u32_at(off);
            let sequence = u32_at(off + 4);
            if flags & !uapi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
                return Err(DecodeError::BadRecord {
                    offset: off,
                    field: "flags",
                    value: flags.into(),
                });
            }
            if sequence > SEQ_MASK {
                return Err(DecodeError::BadRecord {
                    offset: off,
                    field: "sequence",
                    value: sequence.into(),
                });
            }
            let gap = sequence.wrapping_sub(next) & SEQ_MASK;
            if flags & uapi::IOMMU_VEVENTQ_FLAG_LOST_EVENTS != 0 {
                // The header carries the sequence number of the last lost event.
                out.push(VeventRecord {
                    sequence,
                    lost_before: gap.saturating_add(1),
                    data: None,
                });
                next = (sequence + 1) & SEQ_MASK;
                off += HDR;
                continue;
            }
            let start = off + HDR;
            if bytes.len() - start < data_len {
                return Err(DecodeError::TooShort {
                    data_type: queue_type.code(),
                    need: start + data_len,
                    got: bytes.len(),
                });
            }
            let data = match queue_type {
                VeventqType::ArmSmmuV3 => VeventData::ArmSmmuV3([
                    u64_at(start),
                    u64_at(start + 8),
                    u64_at(start + 16),
                    u64_at(start + 24),
                ]),
                VeventqType::Tegra241Cmdqv => {
                    VeventData::Tegra241Cmdqv([u64_at(start), u64_at(start + 8)])
                }
                #[cfg(feature = "selftest")]
                VeventqType::Selftest => VeventData::Selftest {
                    virt_id: u32_at(start),
                },
            };
            out.push(VeventRecord {
                sequence,
                lost_before: gap,
                data: Some(data),
            });
            next = (sequence + 1) & SEQ_MASK;
            off = start + data_len;
        }
        self.next = next;
        Ok(out)
    }
}

/// What a vEVENTQ keeps beside its id.
#[derive(Debug)]
pub struct VeventqState {
    file: QueueFile,
    viommu: Viommu,
    queue_type: VeventqType,
    depth: u32,
    sequence: Mutex<VeventSequence>,
}

impl ObjectState for kind::Veventq {
    type State = VeventqState;

    fn before_destroy(state: &VeventqState) {
        state.file.close();
    }
}

/// A queue of events of a vIOMMU (`IOMMU_VEVENTQ_ALLOC`, Linux 6.15): what the
/// physical IOMMU reports about the guest's devices (SMMUv3 event records, with
/// the guest's stream ids), for the VMM to forward into the guest's event queue.
///
/// One vEVENTQ per type per vIOMMU. Records are read without blocking
/// ([`Veventq::read`]) or after waiting ([`Veventq::read_blocking`]); events the
/// queue had no room for are counted, not silently dropped. The fd is pollable
/// ([`AsRawFd`]). A shared handle ([`Object`]) that holds its vIOMMU.
///
/// ```no_run
/// use iommufd::{Veventq, VeventqType};
/// # fn f(viommu: &iommufd::Viommu) -> iommufd::Result<()> {
/// let events = Veventq::alloc(viommu, VeventqType::ArmSmmuV3, 64)?;
/// let batch = events.read()?;
/// if batch.lost > 0 {
///     println!("{} events lost: tell the guest its event queue overflowed", batch.lost);
/// }
/// for e in batch.events {
///     println!("event {} for {:?}: {:?}", e.sequence, e.device, e.data);
/// }
/// # Ok(()) }
/// ```
pub type Veventq = Object<kind::Veventq>;

/// The deepest queue the kernel accepts (Linux 7.3).
pub const VEVENTQ_MAX_DEPTH: u32 = 1 << 19;

impl Object<kind::Veventq> {
    /// Allocates the vEVENTQ of `queue_type` for `viommu`, holding up to `depth`
    /// events (1 to [`VEVENTQ_MAX_DEPTH`], checked here). A second queue of the
    /// same type on one vIOMMU is refused by the kernel (`EEXIST`).
    pub fn alloc(viommu: &Viommu, queue_type: VeventqType, depth: u32) -> Result<Veventq> {
        const OP: &str = "IOMMU_VEVENTQ_ALLOC";
        if depth == 0 || depth > VEVENTQ_MAX_DEPTH {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "the depth must be 1 to VEVENTQ_MAX_DEPTH",
            });
        }
        let fd = viommu.iommufd();
        let mut a: uapi::iommu_veventq_alloc = arg();
        a.viommu_id = viommu.id().raw();
        a.type_ = queue_type.code();
        a.veventq_depth = depth;
        fd.ioctl_plain(uapi::IOMMU_VEVENTQ_ALLOC, &mut a)
            .map_err(|e| Error::naming_object(OP, viommu.id(), e.0))?;
        let file = match QueueFile::from_raw(a.out_veventq_fd) {
            Ok(f) => f,
            Err(e) => {
                let _ = fd.destroy_raw(a.out_veventq_id);
                return Err(e);
            }
        };
        Ok(Object::from_parts(
            fd,
            a.out_veventq_id,
            vec![viommu.as_parent()],
            VeventqState {
                file,
                viommu: viommu.clone(),
                queue_type,
                depth,
                sequence: Mutex::new(VeventSequence::new()),
            },
        ))
    }

    /// The vIOMMU.
    pub fn viommu(&self) -> &Viommu {
        &self.state().viommu
    }

    /// The type.
    pub fn queue_type(&self) -> VeventqType {
        self.state().queue_type
    }

    /// The depth it was allocated with.
    pub fn depth(&self) -> u32 {
        self.state().depth
    }

    /// Reads the events delivered so far, without blocking.
    pub fn read(&self) -> Result<VeventBatch> {
        let s = self.state();
        let record = 8 + s.queue_type.data_len();
        // Room for 64 events, or the whole queue if smaller, plus a LOST_EVENTS
        // header.
        let records = usize::try_from(s.depth).unwrap_or(64).clamp(1, 64);
        let mut buf = vec![0u8; records * record + 8];
        let mut seq = s.sequence.lock().unwrap_or_else(|p| p.into_inner());
        let n = s
            .file
            .read(&mut buf)
            .map_err(|e| Error::from_errno("read", self.id(), e))?;
        let records =
            seq.decode(s.queue_type, &buf[..n])
                .map_err(|source| Error::RecordDecode {
                    queue: self.id().to_string(),
                    source,
                })?;
        drop(seq);
        let mut batch = VeventBatch::default();
        for r in records {
            batch.lost += u64::from(r.lost_before);
            if let Some(data) = r.data {
                batch.events.push(Vevent {
                    sequence: r.sequence,
                    lost_before: r.lost_before,
                    data,
                    device: data.virt_id().and_then(|v| s.viommu.device_of(v)),
                    vdevice: data.virt_id().and_then(|v| s.viommu.vdevice_of(v)),
                });
            }
        }
        Ok(batch)
    }

    /// Waits up to `timeout` (forever with `None`) for events, then reads them.
    pub fn read_blocking(&self, timeout: Option<Duration>) -> Result<VeventBatch> {
        let ready = self
            .state()
            .file
            .wait(timeout)
            .map_err(|e| Error::from_errno("poll", self.id(), e))?;
        if ready {
            self.read()
        } else {
            Ok(VeventBatch::default())
        }
    }
}

/// The queue's file, to poll for readability in an event loop (-1 once the
/// queue is being destroyed).
impl AsRawFd for Object<kind::Veventq> {
    fn as_raw_fd(&self) -> RawFd {
        self.state().file.raw()
    }
}

impl fmt::Display for PageResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageResponse::Success => "success",
            PageResponse::Invalid => "invalid",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(
        flags: u32,
        dev: u32,
        pasid: u32,
        grpid: u32,
        perm: u32,
        addr: u64,
        cookie: u32,
    ) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [flags, dev, pasid, grpid, perm, 0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&addr.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&cookie.to_le_bytes());
        b
    }

    #[test]
    fn fault_records_decode_and_group() {
        let fd = crate::iommufd::tests::null();
        let mut bytes = rec(1, 3, 7, 9, 1, 0x1000, 4);
        bytes.extend(rec(3, 3, 7, 9, 2, 0x2000, 4));
        bytes.extend(rec(2, 3, 0, 1, 3, 0x3000, 5));
        let r = FaultRecord::decode(&bytes).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].pasid, Some(7));
        assert_eq!(r[2].pasid, None);
        let g = FaultGroup::from_records(&fd, &r).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].pages.len(), 2);
        assert_eq!(g[0].pages[1].perm, FaultPerm::WRITE);
        assert_eq!(g[0].label, None);
        assert_eq!(g[1].cookie, 5);
        // A record of another device inside an open group.
        let mut bad = rec(0, 3, 0, 1, 1, 0, 8);
        bad.extend(rec(2, 4, 0, 1, 1, 0, 8));
        let r = FaultRecord::decode(&bad).unwrap();
        assert!(FaultGroup::from_records(&fd, &r).is_err());
        // Unknown flags, permissions, reserved bits, a partial record.
        assert!(FaultRecord::decode(&rec(4, 0, 0, 0, 0, 0, 0)).is_err());
        assert!(FaultRecord::decode(&rec(0, 0, 0, 0, 16, 0, 0)).is_err());
        let mut r = rec(0, 0, 0, 0, 0, 0, 0);
        r[20] = 1;
        assert!(FaultRecord::decode(&r).is_err());
        assert!(FaultRecord::decode(&r[..30]).is_err());
        assert!(FaultRecord::decode(&[]).unwrap().is_empty());
    }

    fn hdr(flags: u32, seq: u32) -> Vec<u8> {
        let mut b = flags.to_le_bytes().to_vec();
        b.extend_from_slice(&seq.to_le_bytes());
        b
    }

    #[test]
    fn vevent_sequence_gaps_count_as_lost() {
        let mut s = VeventSequence::new();
        let t = VeventqType::Tegra241Cmdqv;
        let mut b = hdr(0, 0);
        b.extend([0u8; 16]);
        b.extend(hdr(0, 3)); // 1 and 2 lost
        b.extend([1u8; 16]);
        b.extend(hdr(1, 6)); // 4..=6 lost
        let r = s.decode(t, &b).unwrap();
        assert_eq!(
            r.iter().map(|r| r.lost_before).collect::<Vec<_>>(),
            [0, 2, 3]
        );
        assert_eq!(
            r[1].data,
            Some(VeventData::Tegra241Cmdqv([0x0101_0101_0101_0101; 2]))
        );
        // Next read continues at 7; the wrap from i32::MAX to 0 is no gap.
        let mut b = hdr(0, 7);
        b.extend([0u8; 16]);
        assert_eq!(s.decode(t, &b).unwrap()[0].lost_before, 0);
        let mut s = VeventSequence { next: SEQ_MASK };
        let mut b = hdr(0, SEQ_MASK);
        b.extend([0u8; 16]);
        b.extend(hdr(0, 0));
        b.extend([0u8; 16]);
        let r = s.decode(t, &b).unwrap();
        assert_eq!((r[0].lost_before, r[1].lost_before), (0, 0));
        // Errors leave the sequence as it was.
        let before = s;
        assert!(s.decode(t, &hdr(0, 1)).is_err(), "no data");
        assert!(s.decode(t, &hdr(2, 1)).is_err(), "flags");
        assert!(s.decode(t, &hdr(0, 1 << 31)).is_err(), "sequence");
        assert!(s.decode(t, &[0u8; 5]).is_err(), "header");
        assert_eq!(s, before);
    }

    #[test]
    fn smmu_event_names_the_stream() {
        let d = VeventData::ArmSmmuV3([0x10 << 32 | 0x10, 0, 0, 0]);
        assert_eq!(d.virt_id(), Some(0x10));
        assert_eq!(VeventData::Tegra241Cmdqv([0; 2]).virt_id(), None);
        assert_eq!(PageResponse::Invalid.to_string(), "invalid");
    }
}

// Seeds of the `fault_records` and `vevent_records` fuzz targets (`fuzz/`), with
// what each decodes to.
#[cfg(test)]
mod fuzz_seed_tests {
    use super::*;

    /// `struct iommu_hwpt_pgfault` of `r`, native endian, as the kernel writes it.
    fn pgfault(r: &FaultRecord) -> Vec<u8> {
        let flags = u32::from(r.pasid.is_some()) | u32::from(r.last_page) << 1;
        let mut b = Vec::new();
        for v in [
            flags,
            r.dev_id,
            r.pasid.unwrap_or(0),
            r.grpid,
            r.perm.bits(),
            0,
        ] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&r.addr.to_ne_bytes());
        b.extend_from_slice(&r.length.to_ne_bytes());
        b.extend_from_slice(&r.cookie.to_ne_bytes());
        b
    }

    fn page(dev_id: u32, pasid: Option<u32>, addr: u64, cookie: u32, last: bool) -> FaultRecord {
        FaultRecord {
            dev_id,
            pasid,
            grpid: 7,
            perm: FaultPerm::READ | FaultPerm::WRITE,
            addr,
            length: 4096,
            cookie,
            last_page: last,
        }
    }

    fn pgfaults(records: &[FaultRecord]) -> Vec<u8> {
        records.iter().flat_map(pgfault).collect()
    }

    // The input is the bytes of one read of a fault queue.
    #[test]
    fn fault_records_fuzz_seeds() {
        let one = page(1, None, 0x1000, 1, true);
        let priv_exec = FaultRecord {
            perm: FaultPerm::EXEC | FaultPerm::PRIV,
            grpid: 0,
            ..page(3, None, 0xffff_f000, 3, true)
        };
        let with = |mut bytes: Vec<u8>, at: usize, v: u32| {
            bytes[at..at + 4].copy_from_slice(&v.to_ne_bytes());
            bytes
        };
        let seeds = vec![
            ("empty", Vec::new()),
            ("one_page", pgfault(&one)),
            (
                "pasid_group",
                pgfaults(&[
                    page(2, Some(5), 0x10_0000, 2, false),
                    page(2, Some(5), 0x10_1000, 2, false),
                    page(2, Some(5), 0x10_2000, 2, true),
                    priv_exec,
                ]),
            ),
            (
                "cookie_reused",
                pgfaults(&[page(1, None, 0, 9, true), page(2, None, 0, 9, true)]),
            ),
            (
                "open_group_tail",
                pgfaults(&[
                    page(1, Some(0), 0, 4, false),
                    page(1, Some(0), 0x1000, 4, false),
                ]),
            ),
            (
                "group_mismatch",
                pgfaults(&[page(1, None, 0, 6, false), page(2, None, 0x1000, 6, true)]),
            ),
            ("unknown_flag", with(pgfaults(&[one, one]), 40, 4)),
            ("unknown_perm", with(pgfault(&one), 16, 0x10)),
            ("reserved_set", with(pgfault(&one), 20, 1)),
            ("partial", pgfaults(&[one, one])[..60].to_vec()),
        ];
        let fd = crate::iommufd::tests::null();
        let pages_per_group: Vec<_> = seeds
            .iter()
            .map(|(_, bytes)| {
                let records = FaultRecord::decode(bytes)?;
                let groups = FaultGroup::from_records(&fd, &records)?;
                Ok(groups.iter().map(|g| g.pages.len()).collect::<Vec<_>>())
            })
            .collect();
        let bad = |offset, field, value| {
            Err(DecodeError::BadRecord {
                offset,
                field,
                value,
            })
        };
        assert_eq!(
            pages_per_group,
            [
                Ok(vec![]),
                Ok(vec![1]),
                Ok(vec![3, 1]),
                Ok(vec![1, 1]),
                Ok(vec![2]),
                bad(40, "dev_id/pasid/grpid (differs within its group)", 2),
                bad(40, "flags", 4),
                bad(0, "perm", 0x10),
                bad(0, "__reserved", 1),
                Err(DecodeError::TooShort {
                    data_type: 0,
                    need: 80,
                    got: 60
                }),
            ]
        );
        crate::fuzz_seeds::write_fuzz_seeds("fault_records", &seeds);
    }

    /// A vEVENTQ header, little endian.
    fn vevent(flags: u32, sequence: u32, data: &[u64]) -> Vec<u8> {
        let mut b = flags.to_le_bytes().to_vec();
        b.extend_from_slice(&sequence.to_le_bytes());
        for w in data {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b
    }

    // The input is a byte (bit 0: Tegra241 CMDQV rather than SMMUv3; bits 1-7:
    // where the target splits the read), the sequence number expected next
    // (u32, little endian), then the bytes of one read of the vEVENTQ.
    #[test]
    fn vevent_records_fuzz_seeds() {
        struct Seed {
            name: &'static str,
            tegra: bool,
            split: u8,
            start: u32,
            records: Vec<Vec<u8>>,
        }
        // F_TRANSLATION (0x10) of stream `sid` at input address 0x1234_5000.
        let smmu = |sid: u64| [sid << 32 | 0x10, 0, 0x1234_5000, 0];
        let tegra = [0b101, 1 << 63];
        let seeds = [
            Seed {
                name: "smmu_two_events",
                tegra: false,
                split: 1,
                start: 0,
                records: vec![vevent(0, 0, &smmu(0x10)), vevent(0, 1, &smmu(0x11))],
            },
            Seed {
                name: "smmu_gap_and_lost",
                tegra: false,
                split: 2,
                start: 0,
                records: vec![
                    vevent(0, 0, &smmu(1)),
                    vevent(0, 3, &smmu(1)),
                    vevent(1, 6, &[]),
                    vevent(0, 7, &smmu(2)),
                ],
            },
            Seed {
                name: "tegra_wrap",
                tegra: true,
                split: 1,
                start: SEQ_MASK,
                records: vec![
                    vevent(0, SEQ_MASK, &tegra),
                    vevent(0, 0, &tegra),
                    vevent(0, 2, &tegra),
                ],
            },
            Seed {
                name: "lost_only",
                tegra: false,
                split: 0,
                start: 5,
                records: vec![vevent(1, 9, &[])],
            },
            Seed {
                name: "smmu_truncated_data",
                tegra: false,
                split: 0,
                start: 0,
                records: vec![vevent(0, 0, &smmu(1)[..2])],
            },
            Seed {
                name: "tegra_bad_flags",
                tegra: true,
                split: 0,
                start: 0,
                records: vec![vevent(0, 0, &tegra), vevent(2, 1, &tegra)],
            },
            Seed {
                name: "smmu_bad_sequence",
                tegra: false,
                split: 0,
                start: 0,
                records: vec![vevent(0, 1 << 31, &smmu(1))],
            },
            Seed {
                name: "tegra_partial_header",
                tegra: true,
                split: 0,
                start: 0,
                records: vec![vec![0; 5]],
            },
        ];
        let mut inputs = Vec::new();
        let mut decoded = Vec::new();
        for s in &seeds {
            let bytes = s.records.concat();
            let ty = if s.tegra {
                VeventqType::Tegra241Cmdqv
            } else {
                VeventqType::ArmSmmuV3
            };
            let mut seq = VeventSequence { next: s.start };
            decoded.push(seq.decode(ty, &bytes).map(|r| {
                r.iter()
                    .map(|r| (r.sequence, r.lost_before, r.data.is_some()))
                    .collect::<Vec<_>>()
            }));
            let mut v = vec![u8::from(s.tegra) | s.split << 1];
            v.extend_from_slice(&s.start.to_le_bytes());
            v.extend_from_slice(&bytes);
            inputs.push((s.name, v));
        }
        let smmu_code = VeventqType::ArmSmmuV3.code();
        let tegra_code = VeventqType::Tegra241Cmdqv.code();
        assert_eq!(
            decoded,
            [
                Ok(vec![(0, 0, true), (1, 0, true)]),
                Ok(vec![
                    (0, 0, true),
                    (3, 2, true),
                    (6, 3, false),
                    (7, 0, true)
                ]),
                Ok(vec![(SEQ_MASK, 0, true), (0, 0, true), (2, 1, true)]),
                Ok(vec![(9, 5, false)]),
                Err(DecodeError::TooShort {
                    data_type: smmu_code,
                    need: 40,
                    got: 24
                }),
                Err(DecodeError::BadRecord {
                    offset: 24,
                    field: "flags",
                    value: 2
                }),
                Err(DecodeError::BadRecord {
                    offset: 0,
                    field: "sequence",
                    value: 1 << 31
                }),
                Err(DecodeError::TooShort {
                    data_type: tegra_code,
                    need: 8,
                    got: 5
                }),
            ]
        );
        crate::fuzz_seeds::write_fuzz_seeds("vevent_records", &inputs);
    }
}

#[cfg(test)]
pub(crate) mod fakes {
    use super::*;
    use std::os::fd::OwnedFd;

    /// A pipe: (read end, write end).
    pub(crate) fn pipe() -> (OwnedFd, std::fs::File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 writes.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) };
        assert_eq!(r, 0, "pipe2");
        // SAFETY: pipe2 just created both fds; nothing else owns them.
        unsafe {
            (
                OwnedFd::from_raw_fd(fds[0]),
                std::fs::File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        }
    }

    fn file(fd: OwnedFd) -> QueueFile {
        let raw = fd.as_raw_fd();
        QueueFile {
            fd: Mutex::new(Some(fd)),
            raw,
        }
    }

    impl Object<kind::FaultQueue> {
        /// A fault queue whose records come from `fd` (a pipe), for host tests.
        pub(crate) fn fake(iommufd: &Iommufd, id: u32, fd: OwnedFd) -> FaultQueue {
            Object::from_parts(
                iommufd,
                id,
                Vec::new(),
                FaultQueueState {
                    file: file(fd),
                    outstanding: Mutex::default(),
                },
            )
        }
    }

    impl Object<kind::Veventq> {
        /// A vEVENTQ whose records come from `fd` (a pipe), for host tests.
        pub(crate) fn fake(viommu: &Viommu, id: u32, t: VeventqType, fd: OwnedFd) -> Veventq {
            Object::from_parts(
                viommu.iommufd(),
                id,
                vec![viommu.as_parent()],
                VeventqState {
                    file: file(fd),
                    viommu: viommu.clone(),
                    queue_type: t,
                    depth: 4,
                    sequence: Mutex::new(VeventSequence::new()),
                },
            )
        }
    }

    /// One fault record's bytes.
    pub(crate) fn record(flags: u32, dev: u32, pasid: u32, addr: u64, cookie: u32) -> Vec<u8> {
        let mut b = Vec::new();
        for v in [flags, dev, pasid, 1, 1, 0] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&addr.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(&cookie.to_ne_bytes());
        b
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn queues_read_their_files() {
        use std::io::Write;
        let fd = crate::iommufd::tests::null();
        let dev = crate::nested::tests::device(&fd, 3, 0x33);
        let (r, mut w) = pipe();
        let q = FaultQueue::fake(&fd, 9, r);
        assert!(q.read().unwrap().is_empty());
        assert!(
            q.read_blocking(Some(Duration::from_millis(1)))
                .unwrap()
                .is_empty()
        );
        w.write_all(&record(2 | 1, 3, 5, 0x1000, 7)).unwrap();
        let g = q.read_blocking(None).unwrap();
        assert_eq!(g.len(), 1);
        assert_eq!(
            (g[0].label, g[0].pasid, g[0].device),
            (Some(0x33), Some(5), dev.id())
        );
        assert_eq!(q.outstanding(), vec![7]);
        let e = q.respond(8, PageResponse::Success).unwrap_err();
        assert!(matches!(e, Error::UnknownCookie { cookie: 8, .. }), "{e}");
        // Writing the answer to a pipe's read end fails: not an unknown cookie.
        let e = q.respond(7, PageResponse::Invalid).unwrap_err();
        assert!(!matches!(e, Error::UnknownCookie { .. }), "{e}");
        assert!(q.as_raw_fd() >= 0);
        // Garbage from the file is a decode error naming the queue.
        w.write_all(&[0xff; 40]).unwrap();
        let e = q.read().unwrap_err();
        assert!(matches!(e, Error::RecordDecode { .. }), "{e}");
        assert!(e.to_string().contains("fault queue 9"), "{e}");
        // Destroying closes the file first.
        <kind::FaultQueue as ObjectState>::before_destroy(q.state());
        assert_eq!(q.as_raw_fd(), -1);
        assert!(q.read().unwrap_err().errno() == Some(libc::EBADF));
        let _ = q.into_id();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn veventq_reads_batches() {
        use std::io::Write;
        let fd = crate::iommufd::tests::null();
        let ioas = crate::Ioas::fake(&fd, 1);
        let parent = crate::Hwpt::fake_with_flags(&ioas, 2, crate::HwptFlags::NEST_PARENT);
        let viommu = Viommu::fake(&parent, 3, crate::ViommuType::ArmSmmuV3);
        let dev = crate::nested::tests::device(&fd, 4, 0x44);
        viommu.fake_vdevice(0x10, 5, &dev);
        let (r, mut w) = pipe();
        let q = Veventq::fake(&viommu, 6, VeventqType::ArmSmmuV3, r);
        assert_eq!(
            (q.depth(), q.queue_type(), q.viommu().id()),
            (4, VeventqType::ArmSmmuV3, viommu.id())
        );
        let mut b = Vec::new();
        for seq in [0u32, 2] {
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(&seq.to_ne_bytes());
            b.extend_from_slice(&((0x10u64 << 32) | 0x10).to_le_bytes());
            b.extend_from_slice(&[0; 24]);
        }
        w.write_all(&b).unwrap();
        let batch = q.read_blocking(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(batch.lost, 1);
        assert_eq!(batch.events.len(), 2);
        assert_eq!(batch.events[1].lost_before, 1);
        assert_eq!(batch.events[0].device, Some((dev.id(), 0x44)));
        assert_eq!(batch.events[0].vdevice.map(|v| v.raw()), Some(5));
        assert_eq!(q.read().unwrap(), VeventBatch::default());
        assert!(q.as_raw_fd() >= 0);
        let _ = (
            q.into_id(),
            viommu.into_id(),
            parent.into_id(),
            ioas.into_id(),
        );
    }
}
