//! The `/dev/iommu` file.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use iommufd_uapi as uapi;

use crate::labels::Labels;
use crate::sys::arg;
use crate::{DeviceId, Error, Ioas, IoasId, Result};

/// The conventional path of the iommufd character device.
///
/// ```
/// use iommufd::{DEFAULT_PATH, Iommufd};
/// assert_eq!(DEFAULT_PATH, "/dev/iommu");
/// // What `Iommufd::open` opens; where it is missing, the error names it.
/// if let Err(e) = Iommufd::open_path(DEFAULT_PATH) {
///     assert!(e.to_string().contains("/dev/iommu"));
/// }
/// ```
pub const DEFAULT_PATH: &str = "/dev/iommu";

/// The misc device major number, under which `/dev/iommu` is registered.
const MISC_MAJOR: u32 = 10;
/// The name the kernel registers the iommufd misc device under (`/proc/misc`).
const MISC_NAME: &str = "iommu";

/// Source of the per-file tokens that tie objects and ids to their [`Iommufd`].
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// An open `/dev/iommu` file: one iommufd context, holding every object (IOAS, HWPT,
/// bound device, ...) created through it.
///
/// `Iommufd` is a cheap handle: cloning it shares the one open file, and every object
/// created through it ([`Ioas`](crate::Ioas), [`Hwpt`](crate::Hwpt),
/// [`Device`](crate::Device), ...) keeps a clone. The file is closed when the last
/// handle and the last object are dropped, so objects never outlive it and may be
/// stored anywhere (they are `'static`).
///
/// Object ids are only meaningful within one file, so every object and id remembers
/// the `Iommufd` it came from, and passing it to an operation of another `Iommufd`
/// fails with [`Error::WrongIommufd`] before reaching the kernel. Identity is that of
/// the `Iommufd` value and its clones (a per-value token), not of the open file
/// description: two `Iommufd`s wrapping duplicates of one fd are treated as different
/// files.
///
/// All methods take `&self`; `Iommufd` is `Send + Sync` (the kernel serializes
/// commands on one file itself).
///
/// ```no_run
/// use iommufd::{Ioas, Iommufd};
///
/// let fd = Iommufd::open()?;
/// println!("{:?}", fd.probe());
/// let ioas = Ioas::alloc(&fd)?;
/// drop(fd); // the IOAS keeps the file open
/// ioas.iova_ranges()?;
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Clone)]
pub struct Iommufd {
    inner: Arc<FileInner>,
}

struct FileInner {
    fd: OwnedFd,
    token: u64,
    labels: Labels,
    leaks: Leaks,
}

/// What objects leaked on purpose ([`Object::into_id`](crate::Object::into_id)) need:
/// their ancestors must stay in the kernel until they are destroyed by id.
#[derive(Debug, Default)]
pub(crate) struct Leaks {
    inner: Mutex<LeakTable>,
}

#[derive(Debug, Default)]
struct LeakTable {
    /// Leaked object -> its ancestors, nearest first.
    children: HashMap<u32, Vec<u32>>,
    /// Ancestor -> how many leaked objects need it.
    pins: HashMap<u32, usize>,
    /// Pinned ancestors whose last handle is gone: destroyed when unpinned.
    orphans: HashSet<u32>,
}

impl Leaks {
    fn lock(&self) -> MutexGuard<'_, LeakTable> {
        // Each update is a few map operations that cannot panic halfway.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `child` was leaked and needs `ancestors`.
    pub(crate) fn pin(&self, child: u32, ancestors: Vec<u32>) {
        if ancestors.is_empty() {
            return;
        }
        let mut t = self.lock();
        for a in &ancestors {
            *t.pins.entry(*a).or_default() += 1;
        }
        t.children.insert(child, ancestors);
    }

    /// Called when the last handle of object `id` goes: whether it must stay (a
    /// leaked object needs it); it is then destroyed when no longer needed.
    pub(crate) fn keep(&self, id: u32) -> bool {
        let mut t = self.lock();
        if t.pins.contains_key(&id) {
            t.orphans.insert(id);
            true
        } else {
            false
        }
    }

    /// Object `child` was destroyed: unpins its ancestors and returns those that
    /// are no longer needed and have no handle, nearest first, to destroy.
    pub(crate) fn release(&self, child: u32) -> Vec<u32> {
        let mut t = self.lock();
        let Some(ancestors) = t.children.remove(&child) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for a in ancestors {
            let left = t.pins.get_mut(&a).map(|n| {
                *n -= 1;
                *n
            });
            if left == Some(0) {
                t.pins.remove(&a);
                if t.orphans.remove(&a) {
                    gone.push(a);
                }
            }
        }
        gone
    }
}

impl fmt::Debug for Iommufd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Iommufd")
            .field("fd", &self.inner.fd.as_raw_fd())
            .field("token", &self.inner.token)
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
///     Err(e) if e.errno() == Some(libc::EPERM) => { /* no CAP_SYS_RESOURCE */ }
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

    /// Opens the iommufd device at `path` (read-write, close-on-exec) and checks that
    /// it is the iommufd device ([`Iommufd::from_owned_fd`]).
    ///
    /// ```
    /// use iommufd::{Error, Iommufd};
    /// let err = Iommufd::open_path("/nonexistent/iommu").unwrap_err();
    /// assert_eq!(err.errno(), Some(libc::ENOENT));
    /// // Any other file is refused before a command is sent to it.
    /// let err = Iommufd::open_path("/dev/null").unwrap_err();
    /// assert!(matches!(err, Error::NotIommufd { .. }), "{err}");
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
        check_iommufd(file.as_fd(), &path.display().to_string())?;
        // SAFETY: just checked to be the iommufd misc device.
        Ok(unsafe { Iommufd::from_owned_fd_unchecked(file.into()) })
    }

    /// Wraps an already open iommufd, e.g. one a privileged helper opened and passed
    /// over a Unix socket (`SCM_RIGHTS`), so that the VMM itself never needs access to
    /// `/dev/iommu`.
    ///
    /// The fd must be the iommufd misc device: its `fstat` must show a character
    /// device whose number is that of the misc device the kernel registers as
    /// `iommu` (found in `/proc/misc`, or in sysfs, or by `/dev/iommu` itself).
    /// Anything else fails with [`Error::NotIommufd`] (and the fd is closed): the
    /// commands this crate sends pass pointers the kernel writes through, which only
    /// the iommufd driver may be trusted with.
    ///
    /// ```no_run
    /// use std::os::fd::OwnedFd;
    /// # fn receive_fd() -> OwnedFd { unimplemented!() }
    /// let fd = iommufd::Iommufd::from_owned_fd(receive_fd())?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn from_owned_fd(fd: OwnedFd) -> Result<Iommufd> {
        check_iommufd(fd.as_fd(), &format!("fd {}", fd.as_raw_fd()))?;
        // SAFETY: just checked to be the iommufd misc device.
        Ok(unsafe { Iommufd::from_owned_fd_unchecked(fd) })
    }

    /// Wraps an open fd without checking that it is an iommufd.
    ///
    /// For files [`Iommufd::from_owned_fd`] cannot recognize, such as the iommufd
    /// behind `/dev/vfio/vfio` (`CONFIG_IOMMUFD_VFIO_CONTAINER`), or where neither
    /// `/proc/misc`, sysfs nor `/dev/iommu` is visible.
    ///
    /// # Safety
    ///
    /// `fd` must be an iommufd, or a file whose driver answers every iommufd command
    /// without touching the memory its arguments point to (such as `/dev/null`, which
    /// answers `ENOTTY`): the crate passes pointers to buffers the kernel writes.
    ///
    /// ```
    /// use std::fs::File;
    /// use iommufd::Iommufd;
    /// // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory.
    /// let null = unsafe { Iommufd::from_owned_fd_unchecked(File::open("/dev/null")?.into()) };
    /// assert!(iommufd::Ioas::alloc(&null).unwrap_err().is_unsupported());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub unsafe fn from_owned_fd_unchecked(fd: OwnedFd) -> Iommufd {
        Iommufd {
            inner: Arc::new(FileInner {
                fd,
                token: NEXT_TOKEN.fetch_add(1, Ordering::Relaxed),
                labels: Labels::default(),
                leaks: Leaks::default(),
            }),
        }
    }

    /// The token that identifies this file among the `Iommufd`s of the process.
    pub(crate) fn token(&self) -> u64 {
        self.inner.token
    }

    pub(crate) fn labels(&self) -> &Labels {
        &self.inner.labels
    }

    pub(crate) fn leaks(&self) -> &Leaks {
        &self.inner.leaks
    }

    /// After object `id` was destroyed: destroys the ancestors it kept that no
    /// handle holds any more.
    pub(crate) fn destroyed(&self, id: u32) {
        for orphan in self.leaks().release(id) {
            let object = format_args!("object {orphan}");
            if let Err(e) = self.destroy_id(orphan, object) {
                log::error!("iommufd: destroying object {orphan}, kept for object {id}: {e}");
            }
        }
    }

    /// Whether `other` is this file (a clone of the same handle).
    ///
    /// ```no_run
    /// use iommufd::Iommufd;
    /// let a = Iommufd::open()?;
    /// assert!(a.same_file(&a.clone()));
    /// assert!(!a.same_file(&Iommufd::open()?));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn same_file(&self, other: &Iommufd) -> bool {
        self.inner.token == other.inner.token
    }

    /// Fails with [`Error::WrongIommufd`] unless `owner` (the token of an object or
    /// id) is this file's.
    pub(crate) fn check_owner(
        &self,
        op: &'static str,
        owner: u64,
        object: impl fmt::Display,
    ) -> Result<()> {
        if owner == self.inner.token {
            Ok(())
        } else {
            Err(Error::WrongIommufd {
                op,
                object: object.to_string(),
            })
        }
    }

    /// Destroys any object by raw id (`IOMMU_DESTROY`).
    ///
    /// For objects that no handle of this crate owns: ids from
    /// [`Object::into_id`](crate::Object::into_id) (whose ancestors without handles
    /// are destroyed with them), or objects created by another layer. Destroying an object that a handle still owns makes that handle's drop
    /// fail (it logs), and ids are reused, so the handle could then act on a newer
    /// object: use [`Object::destroy`](crate::Object::destroy) for those.
    ///
    /// Fails with `EBUSY` while other objects depend on it and with
    /// [`Error::NotFound`] if there is no such object.
    ///
    /// ```no_run
    /// use iommufd::{Error, Ioas, Iommufd};
    /// let fd = Iommufd::open()?;
    /// let id = Ioas::alloc(&fd)?.into_id();
    /// fd.destroy_raw(id.raw())?;
    /// assert!(matches!(fd.destroy_raw(id.raw()), Err(Error::NotFound { .. })));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn destroy_raw(&self, id: u32) -> Result<()> {
        self.destroy_id(id, format_args!("object {id}"))?;
        self.destroyed(id);
        Ok(())
    }

    pub(crate) fn destroy_id(&self, id: u32, object: impl fmt::Display) -> Result<()> {
        let mut a: uapi::iommu_destroy = arg();
        a.id = id;
        self.ioctl_plain(uapi::IOMMU_DESTROY, &mut a)
            .map_err(|e| Error::naming_object("IOMMU_DESTROY", object, e.0))
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
        let named = object_id != 0;
        self.ioctl_plain(uapi::IOMMU_OPTION, &mut a).map_err(|e| {
            if named {
                Error::naming_object("IOMMU_OPTION", object, e.0)
            } else {
                Error::from_errno("IOMMU_OPTION", object, e.0)
            }
        })?;
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

    /// How pinned pages are charged (`IOMMU_OPTION_RLIMIT_MODE`). A value this crate
    /// does not know (from a newer kernel) is [`Error::UnexpectedValue`].
    ///
    /// ```no_run
    /// use iommufd::{Iommufd, RlimitMode};
    /// let fd = Iommufd::open()?;
    /// assert_eq!(fd.rlimit_mode()?, RlimitMode::User); // the default
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn rlimit_mode(&self) -> Result<RlimitMode> {
        let v = self.option(uapi::IOMMU_OPTION_RLIMIT_MODE, None, 0, "iommufd")?;
        rlimit_mode_from(v)
    }

    /// Moves the pinned-page accounting of every mapping of this file to the calling
    /// process (`IOMMU_IOAS_CHANGE_PROCESS`, Linux 6.13).
    ///
    /// For handing a running device over to another process (live update): the new
    /// process receives the iommufd and calls this. It acts on every IOAS of the file
    /// and only works if every mapping was made from a file
    /// ([`Ioas::map_file`](crate::Ioas::map_file), or a [`DmaMemory`](crate::DmaMemory)
    /// mapped by file); `EINVAL` otherwise. On failure nothing changes.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// match fd.change_process() {
    ///     Err(e) if e.is_unsupported() => { /* kernel before 6.13 */ }
    ///     other => other?,
    /// }
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn change_process(&self) -> Result<()> {
        let mut a: uapi::iommu_ioas_change_process = arg();
        self.ioctl_plain(uapi::IOMMU_IOAS_CHANGE_PROCESS, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_IOAS_CHANGE_PROCESS", "iommufd", e.0))
    }

    /// The IOAS that VFIO type1 compatibility uses (`IOMMU_VFIO_IOAS` GET): the
    /// IOAS a legacy VFIO container on this file maps into. `None` when there is
    /// none (the kernel answers `ENODEV`); asking creates nothing.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// let ioas = iommufd::Ioas::alloc(&fd)?;
    /// fd.set_vfio_compat_ioas(&ioas)?;
    /// assert_eq!(fd.vfio_compat_ioas()?, Some(ioas.id()));
    /// fd.clear_vfio_compat_ioas()?;
    /// assert_eq!(fd.vfio_compat_ioas()?, None);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn vfio_compat_ioas(&self) -> Result<Option<IoasId>> {
        match self.vfio_ioas(uapi::IOMMU_VFIO_IOAS_GET, 0) {
            Ok(id) => Ok(Some(IoasId::new(id, self.token()))),
            Err(e) if e.0 == libc::ENODEV => Ok(None),
            Err(e) => Err(Error::from_errno("IOMMU_VFIO_IOAS", "iommufd", e.0)),
        }
    }

    /// Makes `ioas` the IOAS of VFIO type1 compatibility (`IOMMU_VFIO_IOAS` SET),
    /// for a VMM that drives a passthrough device through a legacy VFIO container
    /// opened on this file. The kernel keeps no reference: when `ioas` is
    /// destroyed, the file has no compatibility IOAS again.
    pub fn set_vfio_compat_ioas(&self, ioas: &Ioas) -> Result<()> {
        ioas.check_file(self, "IOMMU_VFIO_IOAS")?;
        self.vfio_ioas(uapi::IOMMU_VFIO_IOAS_SET, ioas.id().raw())
            .map(drop)
            .map_err(|e| Error::naming_object("IOMMU_VFIO_IOAS", ioas.id(), e.0))
    }

    /// Ends VFIO type1 compatibility on this file (`IOMMU_VFIO_IOAS` CLEAR); the
    /// IOAS itself stays.
    pub fn clear_vfio_compat_ioas(&self) -> Result<()> {
        self.vfio_ioas(uapi::IOMMU_VFIO_IOAS_CLEAR, 0)
            .map(drop)
            .map_err(|e| Error::from_errno("IOMMU_VFIO_IOAS", "iommufd", e.0))
    }

    fn vfio_ioas(&self, op: u32, id: u32) -> std::result::Result<u32, crate::sys::Errno> {
        let mut a: uapi::iommu_vfio_ioas = arg();
        a.op = op as u16;
        a.ioas_id = id;
        self.ioctl_plain(uapi::IOMMU_VFIO_IOAS, &mut a)?;
        Ok(a.ioas_id)
    }

    /// The label of the device this file names `dev` (a bound
    /// [`Device`](crate::Device)), if it is still bound.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device) {
    /// assert_eq!(dev.iommufd().label_of(dev.id()), Some(dev.label()));
    /// # }
    /// ```
    pub fn label_of(&self, dev: DeviceId) -> Option<u64> {
        if dev.owner() != self.token() {
            return None;
        }
        self.labels().label_of(dev.raw())
    }

    /// Whether the kernel still has device `dev` bound to this file: asks for its
    /// hardware information with no buffer (`IOMMU_GET_HW_INFO`), which fails with
    /// `ENOENT` only for an id that names no device. A binding layer uses it to see
    /// that a device it released is really unbound.
    ///
    /// ```no_run
    /// # fn f(dev: iommufd::Device) -> iommufd::Result<()> {
    /// let (fd, id) = (dev.iommufd().clone(), dev.id());
    /// assert!(fd.has_device(id)?);
    /// dev.unbind()?;
    /// assert!(!fd.has_device(id)?);
    /// # Ok(()) }
    /// ```
    pub fn has_device(&self, dev: DeviceId) -> Result<bool> {
        self.check_owner("IOMMU_GET_HW_INFO", dev.owner(), dev)?;
        let mut a: uapi::iommu_hw_info = arg();
        a.dev_id = dev.raw();
        // SAFETY: `data_uptr` is 0 with `data_len` 0: the kernel writes only the
        // structure itself.
        match unsafe { self.ioctl(uapi::IOMMU_GET_HW_INFO, &mut a) } {
            Ok(()) => Ok(true),
            Err(e) if e.0 == libc::ENOENT => Ok(false),
            Err(e) => Err(Error::from_errno("IOMMU_GET_HW_INFO", dev, e.0)),
        }
    }

    /// The device bound under `label`, if any.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device) {
    /// let fd = dev.iommufd();
    /// assert_eq!(fd.device_by_label(dev.label()), Some(dev.id()));
    /// # }
    /// ```
    pub fn device_by_label(&self, label: u64) -> Option<DeviceId> {
        self.labels()
            .device_by_label(label)
            .map(|raw| DeviceId::new(raw, self.token()))
    }
}

fn rlimit_mode_from(v: u64) -> Result<RlimitMode> {
    match v {
        0 => Ok(RlimitMode::User),
        1 => Ok(RlimitMode::Process),
        other => Err(Error::UnexpectedValue {
            op: "IOMMU_OPTION_RLIMIT_MODE",
            value: other,
        }),
    }
}

/// Checks that `fd` is the iommufd misc device.
fn check_iommufd(fd: BorrowedFd<'_>, what: &str) -> Result<()> {
    let not = |reason: String| Error::NotIommufd {
        file: what.to_string(),
        reason,
    };
    // SAFETY: fstat writes only into `st`, a local of the right type.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is a valid open descriptor; `st` is valid for writes.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::Os {
            op: "fstat",
            errno: crate::sys::Errno::last().0,
        });
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
        return Err(not("not a character device".into()));
    }
    let (major, minor) = (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    if major != MISC_MAJOR {
        return Err(not(format!(
            "character device {major}:{minor} is not a misc device"
        )));
    }
    match iommu_misc_minor() {
        Some(m) if m == minor => Ok(()),
        Some(m) => Err(not(format!(
            "misc device {major}:{minor}, while the iommufd is {MISC_MAJOR}:{m}"
        ))),
        None => Err(not(format!(
            "misc device {major}:{minor} cannot be confirmed as the iommufd (no iommu in \
             /proc/misc, sysfs or /dev; from_owned_fd_unchecked skips the check)"
        ))),
    }
}

/// The minor number of the `iommu` misc device, from `/proc/misc`, else from sysfs,
/// else from `/dev/iommu` itself.
fn iommu_misc_minor() -> Option<u32> {
    if let Ok(list) = std::fs::read_to_string("/proc/misc") {
        if let Some(m) = parse_proc_misc(&list, MISC_NAME) {
            return Some(m);
        }
    }
    // sysfs: "MAJOR:MINOR" of the misc device named iommu.
    if let Ok(dev) = std::fs::read_to_string("/sys/class/misc/iommu/dev") {
        if let Some(minor) = dev.trim().split_once(':').and_then(|(_, m)| m.parse().ok()) {
            return Some(minor);
        }
    }
    let md = std::fs::metadata(DEFAULT_PATH).ok()?;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if md.file_type().is_char_device() && libc::major(md.rdev()) == MISC_MAJOR {
        return Some(libc::minor(md.rdev()));
    }
    None
}

/// Finds `name` in the text of `/proc/misc` ("MINOR NAME" per line).
fn parse_proc_misc(text: &str, name: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        let minor = it.next()?.parse().ok()?;
        (it.next()? == name && it.next().is_none()).then_some(minor)
    })
}

impl AsFd for Iommufd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.inner.fd.as_fd()
    }
}

impl AsRawFd for Iommufd {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.fd.as_raw_fd()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An `Iommufd` on /dev/null: every command reaches `ioctl(2)` and fails with
    /// `ENOTTY`, so wrappers can be checked for what they send and report.
    pub(crate) fn null() -> Iommufd {
        let f = std::fs::File::open("/dev/null").expect("/dev/null");
        // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory.
        unsafe { Iommufd::from_owned_fd_unchecked(f.into()) }
    }

    #[test]
    fn open_missing_path_keeps_errno() {
        let e = Iommufd::open_path("/nonexistent/iommu").unwrap_err();
        assert!(matches!(e, Error::Open { .. }));
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(e.to_string().contains("/nonexistent/iommu"));
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn other_files_are_not_iommufds() {
        for (path, why) in [
            ("/dev/null", "1:3"),
            ("/dev/zero", "1:5"),
            ("/proc/self/status", "not a character device"),
        ] {
            let e = Iommufd::open_path(path).unwrap_err();
            assert!(matches!(e, Error::NotIommufd { .. }), "{path}: {e}");
            assert!(e.to_string().contains(why), "{path}: {e}");
            assert_eq!(e.errno(), None);
        }
        let f = std::fs::File::open("/dev/null").expect("/dev/null");
        let e = Iommufd::from_owned_fd(f.into()).unwrap_err();
        assert!(e.to_string().starts_with("fd "), "{e}");
        // A misc device that is not the iommufd, where the host has one.
        if let Ok(f) = std::fs::File::open("/dev/vhost-vsock").or(std::fs::File::open("/dev/fuse"))
        {
            let e = Iommufd::from_owned_fd(f.into()).unwrap_err();
            assert!(e.to_string().contains("misc device 10:"), "{e}");
        }
    }

    #[test]
    fn proc_misc_lines() {
        let text = "229 fuse\n 62 iommu\n183 hw_random\n 61 iommu_extra\nxx iommu\n";
        assert_eq!(parse_proc_misc(text, "iommu"), Some(62));
        assert_eq!(parse_proc_misc(text, "fuse"), Some(229));
        assert_eq!(parse_proc_misc(text, "vfio"), None);
        assert_eq!(parse_proc_misc("", "iommu"), None);
    }

    #[test]
    fn rlimit_values() {
        assert_eq!(rlimit_mode_from(0).ok(), Some(RlimitMode::User));
        assert_eq!(rlimit_mode_from(1).ok(), Some(RlimitMode::Process));
        let e = rlimit_mode_from(2).unwrap_err();
        assert!(matches!(e, Error::UnexpectedValue { value: 2, .. }), "{e}");
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn tokens_differ_and_clones_share() {
        let a = null();
        let b = null();
        assert_ne!(a.token(), b.token());
        assert!(a.same_file(&a.clone()));
        assert!(!a.same_file(&b));
        assert!(a.check_owner("op", a.token(), "x").is_ok());
        let e = a.check_owner("op", b.token(), "ioas 1").unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    }

    // Real ioctls on a file that is not an iommufd: ENOTTY, classified as unsupported.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn commands_on_a_non_iommufd_are_unsupported() {
        let fd = null();
        let e = fd.destroy_raw(1).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert_eq!(e.errno(), Some(libc::ENOTTY));
        assert!(fd.rlimit_mode().unwrap_err().is_unsupported());
        assert!(fd.change_process().unwrap_err().is_unsupported());
        let e = fd.set_rlimit_mode(RlimitMode::Process).unwrap_err();
        assert!(e.to_string().contains("IOMMU_OPTION on iommufd"), "{e}");
        let raw = fd.as_raw_fd();
        assert_eq!(fd.as_fd().as_raw_fd(), raw);
        assert!(format!("{fd:?}").contains(&format!("fd: {raw}")));
        assert_eq!(fd.device_by_label(7), None);
    }
}
