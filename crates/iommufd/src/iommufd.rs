//! The `/dev/iommu` file.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use iommufd_uapi as uapi;

use crate::sys::arg;
use crate::{Error, Result};

/// The conventional path of the iommufd character device.
///
/// ```
/// use iommufd::{DEFAULT_PATH, Iommufd};
/// assert_eq!(DEFAULT_PATH, "/dev/iommu");
/// // What `Iommufd::open` opens; where it is missing, the error names it.
/// if let Err(e) = Iommufd::open_path(DEFAULT_PATH) {
///     assert!(e.to_string().starts_with("opening /dev/iommu: "));
/// }
/// ```
pub const DEFAULT_PATH: &str = "/dev/iommu";

/// Source of the per-file tokens that tie objects to their [`Iommufd`].
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// An open `/dev/iommu` file: one iommufd context, holding every object (IOAS, HWPT,
/// bound device...) created through it.
///
/// Objects created through an `Iommufd` ([`Ioas`](crate::Ioas),
/// [`Hwpt`](crate::Hwpt)) borrow it, so they cannot outlive it; dropping the
/// `Iommufd` closes the file, which frees whatever objects remain in the kernel.
///
/// Object ids are only meaningful within one file, so every handle remembers the
/// `Iommufd` it came from, and passing it to an operation of another `Iommufd` fails
/// with [`Error::WrongIommufd`] before reaching the kernel. Identity is that of the
/// `Iommufd` value (a per-value token), not of the open file description: two
/// `Iommufd`s wrapping duplicates of one fd are treated as different files.
///
/// All methods take `&self`: the kernel serializes commands itself, and `Iommufd`
/// is `Send + Sync`.
///
/// ```no_run
/// use iommufd::Iommufd;
///
/// let fd = Iommufd::open()?;
/// let features = fd.probe();
/// println!("{features:?}");
/// # Ok::<(), iommufd::Error>(())
/// ```
pub struct Iommufd {
    fd: OwnedFd,
    token: u64,
    labels: crate::labels::Labels,
}

impl fmt::Debug for Iommufd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iommufd")
            .field("fd", &self.fd.as_raw_fd())
            .field("token", &self.token)
            .finish()
    }
}

/// How pinned pages are charged against `RLIMIT_MEMLOCK`
/// ([`Iommufd::set_rlimit_mode`]).
///
/// ```no_run
/// use iommufd::{Iommufd, RlimitMode};
/// let fd = Iommufd::open()?;
/// // Charge pinned guest memory to this process, as VFIO type1 did, if allowed.
/// match fd.set_rlimit_mode(RlimitMode::Process) {
///     Err(e) if e.errno() == Some(libc::EPERM) => eprintln!("no CAP_SYS_RESOURCE"),
///     other => other?,
/// }
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RlimitMode {
    /// Charged to the user (`user_struct::locked_vm`): the default, shared by all
    /// the user's processes.
    User,
    /// Charged to the process (`mm::pinned_vm`), like VFIO type1 does.
    Process,
}

impl Iommufd {
    /// Opens [`DEFAULT_PATH`] (`/dev/iommu`).
    ///
    /// ```no_run
    /// let fd = iommufd::Iommufd::open()?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn open() -> Result<Iommufd> {
        Iommufd::open_path(DEFAULT_PATH)
    }

    /// Opens the iommufd device at `path` (read-write, close-on-exec).
    ///
    /// The file is not checked to be an iommufd: commands on another file fail with
    /// [`Error::Unsupported`] (`ENOTTY`). [`Iommufd::probe`] tells the two apart.
    ///
    /// ```
    /// let err = iommufd::Iommufd::open_path("/nonexistent/iommu").unwrap_err();
    /// assert_eq!(err.errno(), Some(libc::ENOENT));
    /// ```
    pub fn open_path(path: impl AsRef<Path>) -> Result<Iommufd> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Iommufd::from_owned_fd(file.into()))
    }

    /// Wraps an already open iommufd, e.g. one a privileged helper opened and passed
    /// over a Unix socket (`SCM_RIGHTS`), so that the VMM itself never needs access to
    /// `/dev/iommu`.
    ///
    /// ```no_run
    /// use std::os::fd::OwnedFd;
    /// # fn receive_fd() -> OwnedFd { unimplemented!() }
    /// let fd = iommufd::Iommufd::from_owned_fd(receive_fd());
    /// ```
    pub fn from_owned_fd(fd: OwnedFd) -> Iommufd {
        Iommufd {
            fd,
            token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
            labels: Default::default(),
        }
    }

    /// The token that identifies this file among the `Iommufd`s of the process.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    pub(crate) fn labels(&self) -> &crate::labels::Labels {
        &self.labels
    }

    /// Fails with [`Error::WrongIommufd`] unless `owner` (an object's token) is this
    /// file's.
    pub(crate) fn check_owner(
        &self,
        op: &'static str,
        owner: Option<u64>,
        object: impl fmt::Display,
    ) -> Result<()> {
        match owner {
            Some(t) if t != self.token => Err(Error::WrongIommufd {
                op,
                object: object.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Destroys any object by raw id (`IOMMU_DESTROY`).
    ///
    /// For objects that no handle of this crate owns: ids from
    /// [`Ioas::into_id`](crate::Ioas::into_id), or objects created by another layer.
    /// Destroying an object that a handle still owns makes that handle's drop fail
    /// (it logs), and ids are reused, so the handle could then destroy a newer object.
    ///
    /// Fails with `EBUSY` while other objects depend on it, `ENOENT` if there is no
    /// such object.
    ///
    /// ```no_run
    /// let fd = iommufd::Iommufd::open()?;
    /// let id = fd.alloc_ioas()?.into_id();
    /// fd.destroy_raw(id.raw())?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn destroy_raw(&self, id: u32) -> Result<()> {
        self.destroy_id(id, format_args!("object {id}"))
    }

    pub(crate) fn destroy_id(&self, id: u32, object: impl fmt::Display) -> Result<()> {
        let mut a: uapi::iommu_destroy = arg();
        a.id = id;
        self.ioctl_plain(uapi::IOMMU_DESTROY, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_DESTROY", object, e.0))
    }

    /// Issues `IOMMU_OPTION` and returns `val64`.
    pub(crate) fn option(
        &self,
        option_id: u32,
        set: Option<u64>,
        object_id: u32,
        object: impl fmt::Display,
    ) -> Result<u64> {
        let mut a: uapi::iommu_option = arg();
        a.option_id = option_id;
        a.object_id = object_id;
        match set {
            Some(v) => {
                a.op = uapi::IOMMU_OPTION_OP_SET as u16;
                a.val64 = v;
            }
            None => a.op = uapi::IOMMU_OPTION_OP_GET as u16,
        }
        self.ioctl_plain(uapi::IOMMU_OPTION, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_OPTION", object, e.0))?;
        Ok(a.val64)
    }

    /// Sets how pages pinned through this file are charged against
    /// `RLIMIT_MEMLOCK` (`IOMMU_OPTION_RLIMIT_MODE`).
    ///
    /// Needs `CAP_SYS_RESOURCE` (else `EPERM`) and a file without objects (else
    /// `EBUSY`): set it right after opening.
    ///
    /// ```no_run
    /// use iommufd::{Iommufd, RlimitMode};
    /// let fd = Iommufd::open()?;
    /// fd.set_rlimit_mode(RlimitMode::Process)?;
    /// assert_eq!(fd.rlimit_mode()?, RlimitMode::Process);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn set_rlimit_mode(&self, mode: RlimitMode) -> Result<()> {
        let v = match mode {
            RlimitMode::User => 0,
            RlimitMode::Process => 1,
        };
        self.option(uapi::IOMMU_OPTION_RLIMIT_MODE, Some(v), 0, "iommufd")
            .map(drop)
    }

    /// How pinned pages are charged (`IOMMU_OPTION_RLIMIT_MODE`).
    ///
    /// ```no_run
    /// use iommufd::{Iommufd, RlimitMode};
    /// let fd = Iommufd::open()?;
    /// assert_eq!(fd.rlimit_mode()?, RlimitMode::User); // the default
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn rlimit_mode(&self) -> Result<RlimitMode> {
        let v = self.option(uapi::IOMMU_OPTION_RLIMIT_MODE, None, 0, "iommufd")?;
        Ok(if v == 0 {
            RlimitMode::User
        } else {
            RlimitMode::Process
        })
    }

    /// Moves the pinned-page accounting of every mapping of this file to the calling
    /// process (`IOMMU_IOAS_CHANGE_PROCESS`, Linux 6.13).
    ///
    /// For handing a running device over to another process (live update): the new
    /// process receives the iommufd and calls this. It acts on every IOAS of the file
    /// and only works if every mapping was made with
    /// [`Ioas::map_file`](crate::Ioas::map_file) (`EINVAL` otherwise); on failure
    /// nothing changes.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// match fd.change_process() {
    ///     Err(e) if e.is_unsupported() => eprintln!("kernel before 6.13"),
    ///     other => other?,
    /// }
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn change_process(&self) -> Result<()> {
        let mut a: uapi::iommu_ioas_change_process = arg();
        self.ioctl_plain(uapi::IOMMU_IOAS_CHANGE_PROCESS, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_IOAS_CHANGE_PROCESS", "iommufd", e.0))
    }
}

impl AsFd for Iommufd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Iommufd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<OwnedFd> for Iommufd {
    fn from(fd: OwnedFd) -> Iommufd {
        Iommufd::from_owned_fd(fd)
    }
}

impl From<Iommufd> for OwnedFd {
    fn from(fd: Iommufd) -> OwnedFd {
        fd.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_missing_path_keeps_errno() {
        let e = Iommufd::open_path("/nonexistent/iommu").unwrap_err();
        assert!(matches!(e, Error::Open { .. }));
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e.to_string().contains("/nonexistent/iommu"));
    }

    #[test]
    fn tokens_differ() {
        let a = Iommufd::open_path("/dev/null").expect("/dev/null");
        let b = Iommufd::open_path("/dev/null").expect("/dev/null");
        assert_ne!(a.token(), b.token());
        assert!(a.check_owner("op", Some(a.token()), "x").is_ok());
        assert!(a.check_owner("op", None, "x").is_ok());
        let e = a.check_owner("op", Some(b.token()), "ioas 1").unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    }

    // Real ioctls on a file that is not an iommufd: ENOTTY, classified as unsupported.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn commands_on_a_non_iommufd_are_unsupported() {
        let fd = Iommufd::open_path("/dev/null").expect("/dev/null");
        let e = fd.destroy_raw(1).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert_eq!(e.errno(), Some(libc::ENOTTY));
        assert!(fd.rlimit_mode().unwrap_err().is_unsupported());
        assert!(fd.change_process().unwrap_err().is_unsupported());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn conversions_and_options_on_a_non_iommufd() {
        let fd = Iommufd::open_path("/dev/null").expect("/dev/null");
        let raw = fd.as_raw_fd();
        assert_eq!(fd.as_fd().as_raw_fd(), raw);
        assert!(format!("{fd:?}").contains(&format!("fd: {raw}")));
        let e = fd.set_rlimit_mode(RlimitMode::Process).unwrap_err();
        assert!(e.to_string().contains("IOMMU_OPTION on iommufd"), "{e}");
        let owned: OwnedFd = fd.into();
        let back = Iommufd::from(owned);
        assert_eq!(back.as_raw_fd(), raw);
        // On the host there is usually no /dev/iommu: then the open error names it.
        if let Err(e) = Iommufd::open() {
            assert!(matches!(e, Error::Open { .. }) && e.to_string().contains(DEFAULT_PATH));
        }
    }
}
