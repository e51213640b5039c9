//! Errors.

use std::fmt;
use std::path::PathBuf;

use crate::{DeviceId, IoasId, Iova};

/// The result type of this crate.
///
/// ```
/// use iommufd::{IoasId, Iommufd, Result};
///
/// fn new_ioas(fd: &Iommufd) -> Result<IoasId> {
///     Ok(fd.alloc_ioas()?.into_id())
/// }
/// // /dev/null is not an iommufd: it answers every command with ENOTTY.
/// let fd = Iommufd::open_path("/dev/null")?;
/// assert!(new_ioas(&fd).unwrap_err().is_unsupported());
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
/// use iommufd::{Error, Iommufd};
/// // /dev/null is not an iommufd: it answers every command with ENOTTY.
/// let fd = Iommufd::open_path("/dev/null")?;
/// let err = fd.destroy_raw(1).unwrap_err();
/// assert!(matches!(err, Error::Unsupported { op: "IOMMU_DESTROY", errno: libc::ENOTTY, .. }));
/// assert!(err.to_string().starts_with("IOMMU_DESTROY on object 1 is not supported"));
/// // Into std::io::Error, keeping the errno's kind.
/// let io: std::io::Error = Iommufd::open_path("/nonexistent/iommu").unwrap_err().into();
/// assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
/// # Ok::<(), iommufd::Error>(())
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

    /// A device label is already given to another device of the same file: labels
    /// name devices, so they must be unique.
    #[error("label {label:#x} is already used by {device}")]
    LabelInUse {
        /// The label.
        label: u64,
        /// The device that has it.
        device: crate::DeviceId,
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
    /// Classifies an errno returned by the kernel for `op` on `object`.
    pub(crate) fn from_errno(op: &'static str, object: impl fmt::Display, errno: i32) -> Error {
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

    /// The errno behind the error, if the kernel (or the C library) returned one.
    ///
    /// `None` for errors this crate detects itself ([`Error::WrongIommufd`],
    /// [`Error::LabelInUse`],
    /// [`Error::InvalidArgument`], [`Error::HwInfoDecode`]).
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
            | Error::Os { errno, .. } => Some(*errno),
            Error::UnmapSplit { .. } => Some(libc::ENOENT),
            Error::WrongIommufd { .. }
            | Error::LabelInUse { .. }
            | Error::InvalidArgument { .. }
            | Error::HwInfoDecode { .. } => None,
        }
    }

    /// Whether the kernel lacks the command, flag or type (`ENOTTY` / `EOPNOTSUPP`):
    /// the case to fall back on rather than fail.
    ///
    /// ```
    /// use iommufd::Iommufd;
    /// let fd = Iommufd::open_path("/dev/null")?; // not an iommufd: ENOTTY
    /// assert!(fd.alloc_ioas().unwrap_err().is_unsupported());
    /// let missing = Iommufd::open_path("/nonexistent/iommu").unwrap_err();
    /// assert!(!missing.is_unsupported()); // ENOENT from open(2)
    /// # Ok::<(), iommufd::Error>(())
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
        let e = Error::from_errno("IOMMU_IOAS_MAP", IoasId::from_raw(3), libc::EEXIST);
        assert!(!e.is_unsupported());
        assert_eq!(e.errno(), Some(libc::EEXIST));
        let text = e.to_string();
        assert!(text.contains("IOMMU_IOAS_MAP on ioas 3"), "{text}");
        assert!(text.contains("EEXIST"), "{text}");
    }

    #[test]
    fn unmap_split_keeps_enoent() {
        let e = Error::UnmapSplit {
            ioas: IoasId::from_raw(1),
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
