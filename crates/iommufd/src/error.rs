//! Errors.

use std::fmt;
use std::path::PathBuf;

use crate::{DeviceId, IoasId, Iova};

/// The result type of this crate.
///
/// ```no_run
/// use iommufd::{Ioas, Iommufd, Result};
///
/// fn new_ioas(fd: &Iommufd) -> Result<Ioas> {
///     let ioas = Ioas::alloc(fd)?;
///     ioas.iova_ranges()?;
///     Ok(ioas)
/// }
/// # Ok::<(), iommufd::Error>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error from an iommufd operation.
///
/// Every variant says what was attempted and, where the kernel answered, keeps its
/// errno ([`Error::errno`]). Kernels that lack a command or flag answer `ENOTTY` or
/// `EOPNOTSUPP`; those become [`Error::Unsupported`] so callers can branch on
/// [`Error::is_unsupported`] and fall back.
///
/// ```
/// use std::fs::File;
/// use iommufd::{Error, Iommufd};
/// // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory.
/// let fd = unsafe { Iommufd::from_owned_fd_unchecked(File::open("/dev/null")?.into()) };
/// let err = fd.destroy_raw(1).unwrap_err();
/// assert!(matches!(err, Error::Unsupported { op: "IOMMU_DESTROY", errno: libc::ENOTTY, .. }));
/// assert!(err.to_string().starts_with("IOMMU_DESTROY on object 1 is not supported"));
/// // Into std::io::Error, keeping the errno's kind.
/// let io: std::io::Error = Iommufd::open_path("/nonexistent/iommu").unwrap_err().into();
/// assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening the iommufd character device failed (`ENOENT`: the kernel has no
    /// `CONFIG_IOMMUFD` or no `/dev/iommu` node; `EACCES`: no permission).
    #[error("opening {}: {source}", path.display())]
    Open {
        /// The path that was opened.
        path: PathBuf,
        /// The error of `open(2)`.
        #[source]
        source: std::io::Error,
    },

    /// The file is not the iommufd misc device ([`Iommufd::from_owned_fd`]); no
    /// command was sent to it.
    ///
    /// [`Iommufd::from_owned_fd`]: crate::Iommufd::from_owned_fd
    #[error("{file} is not /dev/iommu: {reason}")]
    NotIommufd {
        /// The path or fd.
        file: String,
        /// What it is instead.
        reason: String,
    },

    /// The object a command names does not exist (any more) in the file: the kernel
    /// answered `ENOENT` (or, for `IOMMU_HWPT_ALLOC`, `EINVAL`, after a check that
    /// the IOAS is gone). Objects of this crate exist as long as their handles, so
    /// this follows an object destroyed by id behind its handle's back
    /// ([`Iommufd::destroy_raw`]), a device unbound by another layer, or a raw id.
    ///
    /// [`Iommufd::destroy_raw`]: crate::Iommufd::destroy_raw
    #[error("{op}: {object} does not exist ({})", Errno(*errno))]
    NotFound {
        /// The operation, named after the ioctl.
        op: &'static str,
        /// The missing object.
        object: String,
        /// The errno the kernel returned.
        errno: i32,
    },

    /// The object cannot be destroyed or closed yet: other handles still hold it
    /// (clones, objects built on it, attached devices, mappings). Nothing was sent
    /// to the kernel; drop those first.
    #[error(
        "{op} on {object}: still held by {others} other handle(s) (clones, objects built on it, attached devices or mappings)"
    )]
    InUse {
        /// The operation that was refused.
        op: &'static str,
        /// The object.
        object: String,
        /// How many other handles hold it.
        others: usize,
    },

    /// The kernel answered with a value this crate does not know (from a newer
    /// kernel, e.g. a new `IOMMU_OPTION` value).
    #[error("{op}: the kernel answered {value}, which this crate does not know")]
    UnexpectedValue {
        /// The operation.
        op: &'static str,
        /// The value.
        value: u64,
    },

    /// A guest-physical range to map is not entirely guest memory.
    #[error("{len:#x} bytes at GPA {gpa:#x} are not all guest memory{}", .hole.map(|h| format!(" (nothing at {h:#x})")).unwrap_or_default())]
    NotGuestMemory {
        /// The start of the range.
        gpa: u64,
        /// Its length.
        len: u64,
        /// The first address not backed by a region, if the range does not overflow.
        hole: Option<u64>,
    },

    /// The kernel rejected a command.
    #[error("{op} on {object} failed: {}", Errno(*errno))]
    Ioctl {
        /// The operation, named after the ioctl (e.g. `"IOMMU_IOAS_MAP"`).
        op: &'static str,
        /// The object the operation acted on (e.g. `"ioas 3"`).
        object: String,
        /// The errno the kernel returned.
        errno: i32,
    },

    /// The running kernel (or the IOMMU behind the device) does not support the
    /// command, flag or data type: `ENOTTY` (command unknown to this kernel) or
    /// `EOPNOTSUPP` (command known, flag, type or option not).
    #[error("{op} on {object} is not supported by this kernel or IOMMU: {}", Errno(*errno))]
    Unsupported {
        /// The operation, named after the ioctl.
        op: &'static str,
        /// The object the operation acted on.
        object: String,
        /// `ENOTTY` or `EOPNOTSUPP`.
        errno: i32,
    },

    /// `IOMMU_IOAS_UNMAP` of a range failed with `ENOENT`: the range only partly
    /// covers a mapping (the kernel never splits or truncates a mapping: an unmap
    /// must cover every mapping it touches completely), or it covers no mapping at
    /// all. The kernel reports both cases the same way.
    ///
    /// Mappings that lie completely inside the range and come before the cut may
    /// already have been unmapped when this is returned. (`ENOENT` also results if
    /// the IOAS itself no longer exists.)
    #[error(
        "unmapping {length:#x} bytes at {iova} in {ioas}: the range only partly covers a \
         mapping (mappings cannot be split) or covers none (ENOENT)"
    )]
    UnmapSplit {
        /// The IOAS.
        ioas: IoasId,
        /// The start of the range.
        iova: Iova,
        /// The length of the range.
        length: u64,
    },

    /// An object of one `/dev/iommu` file was used with another. Object ids are
    /// per file, so the id would name an unrelated object (or none) there.
    #[error("{op}: {object} belongs to another /dev/iommu file")]
    WrongIommufd {
        /// The operation that was refused.
        op: &'static str,
        /// The foreign object.
        object: String,
    },

    /// A device label is already given to another device of the same file (or
    /// reserved by a bind in progress): labels name devices, so they are unique per
    /// file.
    #[error("label {label:#x} is already used by {}", .device.map(|d| d.to_string()).unwrap_or_else(|| "a bind in progress".into()))]
    LabelInUse {
        /// The label.
        label: u64,
        /// The bound device that has it (`None`: a reservation).
        device: Option<DeviceId>,
    },

    /// An argument was refused before reaching the kernel (the reason says why).
    #[error("{op}: invalid argument: {reason}")]
    InvalidArgument {
        /// The operation that was refused.
        op: &'static str,
        /// Why.
        reason: &'static str,
    },

    /// The hardware information the kernel returned for a device could not be
    /// decoded.
    #[error("decoding the hardware information of {device}: {source}")]
    HwInfoDecode {
        /// The device.
        device: DeviceId,
        /// What was wrong with the data.
        #[source]
        source: DecodeError,
    },

    /// A batched invalidation stopped part way (`IOMMU_HWPT_INVALIDATE`): the kernel
    /// handled the first `handled` entries, then refused entry number `handled`
    /// with `errno`. The entries after it were not handled either; send them again
    /// (without the refused one) if the guest expects them done.
    #[error(
        "IOMMU_HWPT_INVALIDATE on {object}: {handled} entr{} handled, then {} refused{}: {}",
        if *handled == 1 { "y" } else { "ies" },
        .entry.as_deref().unwrap_or("an entry"),
        .label.map(|l| format!(" (device label {l:#x})")).unwrap_or_default(),
        Errno(*errno)
    )]
    InvalidationIncomplete {
        /// The nested HWPT or vIOMMU.
        object: String,
        /// How many entries, from the first, were handled.
        handled: u32,
        /// The first entry not handled (its index is `handled`), as text.
        entry: Option<String>,
        /// The label of the device that entry is for, if it names one that has a
        /// vDEVICE (or, for a nested HWPT, the device it was allocated for).
        label: Option<u64>,
        /// The errno the kernel returned for it.
        errno: i32,
    },

    /// A vDEVICE for this virtual id, or for this device, exists already in the
    /// vIOMMU: virtual ids (the guest's device ids) are unique per vIOMMU, and a
    /// device has at most one vDEVICE.
    #[error("{viommu}: {}", match .holder {
        Some(d) => format!("virtual id {virt_id:#x} is already {d}'s"),
        None => format!("the device already has a vDEVICE (asked for virtual id {virt_id:#x})"),
    })]
    DuplicateVdevice {
        /// The vIOMMU.
        viommu: String,
        /// The virtual id asked for.
        virt_id: u64,
        /// The device that has the virtual id (`None`: the kernel reports that the
        /// device itself has a vDEVICE already).
        holder: Option<DeviceId>,
    },

    /// A page response names a fault group the queue has not delivered, or one
    /// answered already.
    #[error("{queue}: no outstanding page request group with cookie {cookie:#x}")]
    UnknownCookie {
        /// The fault queue.
        queue: String,
        /// The cookie.
        cookie: u32,
    },

    /// A stage-1 description or an invalidation entry was refused before reaching
    /// the kernel.
    #[error("{op}: {source}")]
    Stage1 {
        /// The operation.
        op: &'static str,
        /// What was wrong.
        #[source]
        source: crate::Stage1Error,
    },

    /// A record read from a fault queue or vEVENTQ could not be decoded.
    #[error("reading {queue}: {source}")]
    RecordDecode {
        /// The queue.
        queue: String,
        /// What was wrong.
        #[source]
        source: DecodeError,
    },

    /// A map could not pin its pages (`ENOMEM`): the pinned memory charged to this
    /// process or user (see [`RlimitMode`](crate::RlimitMode)) would exceed its
    /// `RLIMIT_MEMLOCK`, or memory ran out. Nothing was mapped; the IOAS is as
    /// before. Pages are pinned when a device (or access) is attached to the IOAS,
    /// and charged once however many devices share the IOAS; a caller with
    /// `CAP_IPC_LOCK` is not charged.
    #[error(
        "{op} of {requested:#x} bytes in {ioas}: ENOMEM: pinning would exceed the locked-memory limit ({}) or memory ran out",
        .limit.map(|l| format!("RLIMIT_MEMLOCK {l:#x} bytes")).unwrap_or_else(|| "no RLIMIT_MEMLOCK".into())
    )]
    PinLimit {
        /// The operation (`IOMMU_IOAS_MAP`, `IOMMU_IOAS_MAP_FILE`, `IOMMU_IOAS_COPY`).
        op: &'static str,
        /// The IOAS.
        ioas: IoasId,
        /// How many bytes the map asked for.
        requested: u64,
        /// The caller's `RLIMIT_MEMLOCK` (soft), `None` if unlimited.
        limit: Option<u64>,
    },

    /// A system call other than an iommufd ioctl failed (e.g. `mmap` of a buffer).
    #[error("{op} failed: {}", Errno(*errno))]
    Os {
        /// The system call.
        op: &'static str,
        /// The errno it returned.
        errno: i32,
    },
}

impl Error {
    /// Classifies an errno the kernel returned for `op` on `object`: `ENOTTY` and
    /// `EOPNOTSUPP` are [`Error::Unsupported`], anything else [`Error::Ioctl`]. For
    /// layers that issue their own commands on objects of this crate (device
    /// binding), so that their errors read like the crate's.
    ///
    /// ```
    /// use iommufd::Error;
    /// let e = Error::from_errno("VFIO_DEVICE_ATTACH_IOMMUFD_PT", "vfio0", libc::EOPNOTSUPP);
    /// assert!(e.is_unsupported());
    /// ```
    pub fn from_errno(op: &'static str, object: impl fmt::Display, errno: i32) -> Error {
        if is_unsupported_errno(errno) {
            Error::Unsupported {
                op,
                object: object.to_string(),
                errno,
            }
        } else {
            Error::Ioctl {
                op,
                object: object.to_string(),
                errno,
            }
        }
    }

    /// Like [`Error::from_errno`] for a command that names `object` by id: `ENOENT`
    /// means the object does not exist ([`Error::NotFound`]).
    pub(crate) fn naming_object(op: &'static str, object: impl fmt::Display, errno: i32) -> Error {
        if errno == libc::ENOENT {
            Error::NotFound {
                op,
                object: object.to_string(),
                errno,
            }
        } else {
            Error::from_errno(op, object, errno)
        }
    }

    /// The errno behind the error, if the kernel (or the C library) returned one.
    ///
    /// `None` for errors this crate detects itself ([`Error::WrongIommufd`],
    /// [`Error::InUse`], [`Error::LabelInUse`], [`Error::InvalidArgument`], ...).
    ///
    /// ```
    /// # let err = iommufd::Iommufd::open_path("/nonexistent/iommu").unwrap_err();
    /// assert_eq!(err.errno(), Some(libc::ENOENT));
    /// ```
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Open { source, .. } => source.raw_os_error(),
            Error::Ioctl { errno, .. }
            | Error::Unsupported { errno, .. }
            | Error::NotFound { errno, .. }
            | Error::InvalidationIncomplete { errno, .. }
            | Error::Os { errno, .. } => Some(*errno),
            Error::UnmapSplit { .. } => Some(libc::ENOENT),
            Error::PinLimit { .. } => Some(libc::ENOMEM),
            Error::WrongIommufd { .. }
            | Error::NotIommufd { .. }
            | Error::InUse { .. }
            | Error::UnexpectedValue { .. }
            | Error::NotGuestMemory { .. }
            | Error::LabelInUse { .. }
            | Error::InvalidArgument { .. }
            | Error::HwInfoDecode { .. }
            | Error::DuplicateVdevice { .. }
            | Error::UnknownCookie { .. }
            | Error::Stage1 { .. }
            | Error::RecordDecode { .. } => None,
        }
    }

    /// Whether the kernel lacks the command, flag or type (`ENOTTY` / `EOPNOTSUPP`):
    /// the case to fall back on rather than fail.
    ///
    /// ```
    /// use iommufd::{Ioas, Iommufd};
    /// // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory.
    /// let fd = unsafe { Iommufd::from_owned_fd_unchecked(std::fs::File::open("/dev/null")?.into()) };
    /// assert!(Ioas::alloc(&fd).unwrap_err().is_unsupported());
    /// let missing = Iommufd::open_path("/nonexistent/iommu").unwrap_err();
    /// assert!(!missing.is_unsupported()); // ENOENT from open(2)
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        match e {
            Error::Open { source, .. } => source,
            other => match other.errno() {
                Some(errno) => {
                    let kind = std::io::Error::from_raw_os_error(errno).kind();
                    std::io::Error::new(kind, other)
                }
                None => std::io::Error::new(std::io::ErrorKind::InvalidInput, other),
            },
        }
    }
}

/// An operation that consumes an object failed; the object comes back unchanged, so
/// the caller can retry or keep it ([`Object::destroy`](crate::Object::destroy),
/// [`Mapping::unmap`](crate::Mapping::unmap)).
///
/// Converts into [`Error`] with `?` (dropping the object). Layers on top use it with
/// their own error type `E`.
///
/// ```no_run
/// use iommufd::{Ioas, Iommufd};
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let _held = ioas.clone();
/// match ioas.destroy() {
///     Ok(()) => {}
///     Err(refused) => {
///         eprintln!("{}", refused.error); // still held by 1 other handle
///         let ioas = refused.object; // keep using it
///     }
/// }
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Debug, thiserror::Error)]
#[error("{error}")]
pub struct Refused<T, E = Error> {
    /// Why it failed.
    pub error: E,
    /// The object, as it was.
    pub object: T,
}

impl<T> From<Refused<T>> for Error {
    fn from(r: Refused<T>) -> Error {
        r.error
    }
}

/// Whether `errno` means "this kernel does not know this command, flag or type".
pub(crate) fn is_unsupported_errno(errno: i32) -> bool {
    errno == libc::ENOTTY || errno == libc::EOPNOTSUPP
}

/// An error decoding type-specific data returned by the kernel.
///
/// ```
/// use iommufd::{DecodeError, HwInfoData, uapi};
/// // Intel VT-d data is a 24-byte structure.
/// let vtd = uapi::IOMMU_HW_INFO_TYPE_INTEL_VTD;
/// assert_eq!(
///     HwInfoData::decode(vtd, &[0; 16]),
///     Err(DecodeError::TooShort { data_type: vtd, need: 24, got: 16 })
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The data is shorter than the structure of its type.
    #[error("data of type {data_type:#x} is {got} bytes, its structure needs {need}")]
    TooShort {
        /// The kernel's type code.
        data_type: u32,
        /// The bytes the structure needs.
        need: usize,
        /// The bytes present.
        got: usize,
    },
    /// A record has a field value the format does not allow.
    #[error("record at byte {offset}: {field} = {value:#x} is not valid")]
    BadRecord {
        /// Where the record starts in what was read.
        offset: usize,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
}

/// Formats an errno as its name and description.
struct Errno(i32);

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 {
            libc::EPERM => "EPERM",
            libc::ENOENT => "ENOENT",
            libc::EFAULT => "EFAULT",
            libc::EBUSY => "EBUSY",
            libc::EEXIST => "EEXIST",
            libc::EINVAL => "EINVAL",
            libc::ENOMEM => "ENOMEM",
            libc::ENOSPC => "ENOSPC",
            libc::ENOTTY => "ENOTTY",
            libc::E2BIG => "E2BIG",
            libc::EOPNOTSUPP => "EOPNOTSUPP",
            libc::EOVERFLOW => "EOVERFLOW",
            libc::EMSGSIZE => "EMSGSIZE",
            libc::EADDRINUSE => "EADDRINUSE",
            libc::ENODEV => "ENODEV",
            libc::EDEADLK => "EDEADLK",
            _ => return write!(f, "{}", std::io::Error::from_raw_os_error(self.0)),
        };
        write!(f, "{name} ({})", std::io::Error::from_raw_os_error(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enotty_and_eopnotsupp_are_unsupported() {
        for errno in [libc::ENOTTY, libc::EOPNOTSUPP] {
            let e = Error::from_errno("IOMMU_HWPT_ALLOC", "device 1", errno);
            assert!(e.is_unsupported(), "{e}");
            assert_eq!(e.errno(), Some(errno));
        }
        let e = Error::from_errno("IOMMU_IOAS_MAP", IoasId::new(3, 1), libc::EEXIST);
        assert!(!e.is_unsupported());
        assert_eq!(e.errno(), Some(libc::EEXIST));
        let text = e.to_string();
        assert!(text.contains("IOMMU_IOAS_MAP on ioas 3"), "{text}");
        assert!(text.contains("EEXIST"), "{text}");
    }

    #[test]
    fn unmap_split_keeps_enoent() {
        let e = Error::UnmapSplit {
            ioas: IoasId::new(1, 1),
            iova: Iova(0x1000),
            length: 0x1000,
        };
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e.to_string().contains("ioas 1"));
    }

    #[test]
    fn library_errors_have_no_errno() {
        let e = Error::WrongIommufd {
            op: "IOMMU_IOAS_COPY",
            object: "ioas 1".into(),
        };
        assert_eq!(e.errno(), None);
        let io: std::io::Error = e.into();
        assert_eq!(io.kind(), std::io::ErrorKind::InvalidInput);
        let io: std::io::Error = Error::from_errno("IOMMU_DESTROY", "ioas 1", libc::EBUSY).into();
        assert_eq!(io.kind(), std::io::ErrorKind::ResourceBusy);
    }

    #[test]
    fn unknown_errno_still_formats() {
        assert!(Errno(4095).to_string().contains("4095"));
    }
}
