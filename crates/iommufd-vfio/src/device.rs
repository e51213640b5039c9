//! VFIO device cdevs bound to an iommufd.
//!
//! ```no_run
//! use iommufd::{Ioas, Iommufd};
//! use iommufd_vfio::device::VfioDevice;
//! let fd = Iommufd::open()?;
//! let ioas = Ioas::alloc(&fd)?;
//! let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
//! dev.attach(&ioas)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use iommufd::{Binding, Command, Device, DeviceId, Iommufd, Refused};
use vfio_bindings::bindings::vfio::{
    vfio_device_attach_iommufd_pt, vfio_device_bind_iommufd, vfio_device_detach_iommufd_pt,
};

use crate::group::{GroupError, PciAddress, Sysfs};

/// `VFIO_DEVICE_BIND_IOMMUFD_FLAG_TOKEN`: a VF token follows (Linux 6.17).
const BIND_FLAG_TOKEN: u32 = 1;
/// `VFIO_DEVICE_ATTACH_PASID` / `VFIO_DEVICE_DETACH_PASID` (Linux 6.15).
const PASID_FLAG: u32 = 1;

const fn vfio_io(nr: u32) -> libc::c_ulong {
    ((b';' as libc::c_ulong) << 8) | (100 + nr) as libc::c_ulong
}
pub(crate) const VFIO_DEVICE_BIND_IOMMUFD: libc::c_ulong = vfio_io(18);
pub(crate) const VFIO_DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = vfio_io(19);
pub(crate) const VFIO_DEVICE_DETACH_IOMMUFD_PT: libc::c_ulong = vfio_io(20);

/// Errors of device binding and attachment. Each keeps the errno and names the
/// operation and the device.
///
/// ```
/// use iommufd_vfio::{Error, VfioDevice};
/// let err = VfioDevice::open("/nonexistent/vfio0").unwrap_err();
/// assert!(matches!(err, Error::Open { .. }));
/// assert_eq!(err.errno(), Some(libc::ENOENT));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening the cdev failed.
    #[error("opening {}: {source}", path.display())]
    Open {
        /// The cdev path.
        path: PathBuf,
        /// The I/O error, errno included.
        #[source]
        source: std::io::Error,
    },
    /// A VFIO ioctl failed.
    #[error("{op} on {device} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Ioctl {
        /// The ioctl (`VFIO_DEVICE_BIND_IOMMUFD`, ...).
        op: &'static str,
        /// The device, by cdev path or PCI address and label.
        device: String,
        /// The errno.
        errno: i32,
    },
    /// The kernel does not have this operation or flag (`ENOTTY`, `EOPNOTSUPP`, or
    /// `EINVAL` for a flag older kernels reject).
    #[error("{op} on {device} is not supported by this kernel: {}", std::io::Error::from_raw_os_error(*errno))]
    Unsupported {
        /// The ioctl.
        op: &'static str,
        /// The device.
        device: String,
        /// The errno the kernel gave.
        errno: i32,
    },
    /// The device is bound already, through another open file of its cdev: the
    /// kernel allows one at a time and answers `EINVAL`. The other file may be in
    /// another process, or be one that a closed [`BoundDevice`] left bound (see
    /// [`Error::StillBound`]).
    #[error(
        "{device} is already bound through another open file of its cdev (EINVAL): a dup or BAR \
         mmap of an earlier binding, or another process, still holds it"
    )]
    AlreadyBound {
        /// The device.
        device: String,
    },
    /// The cdev was closed but the device is still bound: the kernel binds the open
    /// file, not the fd, and other references to that file (dups, BAR mmaps, a
    /// forked child's copy) keep it open. The device stays bound, detached, until
    /// they are closed, and binding it again fails with [`Error::AlreadyBound`].
    #[error(
        "closed {device}, but it is still bound as {id}: {holders} keep its cdev's open file alive"
    )]
    StillBound {
        /// The device.
        device: String,
        /// Its id in the iommufd, still in use.
        id: DeviceId,
        /// What this process still has of the file, as [`CdevReferences`] says.
        holders: String,
    },
    /// Sysfs lookup or IOMMU group check failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// An error of the iommufd layer (attach, labels, foreign objects).
    #[error(transparent)]
    Iommufd(#[from] iommufd::Error),
}

impl Error {
    /// The errno behind the error, if the kernel gave one.
    ///
    /// ```
    /// use iommufd_vfio::{PciAddress, Sysfs, VfioDevice};
    /// let err = VfioDevice::open("/nonexistent/vfio0").unwrap_err();
    /// assert_eq!(err.errno(), Some(libc::ENOENT));
    /// // No errno when the library refuses by itself: here, no IOMMU group in sysfs.
    /// let nowhere = Sysfs::new("/nonexistent/sys", "/nonexistent/dev");
    /// let addr: PciAddress = "0000:00:04.0".parse()?;
    /// assert_eq!(VfioDevice::open_pci(&nowhere, addr).unwrap_err().errno(), None);
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Open { source, .. } => source.raw_os_error(),
            Error::Ioctl { errno, .. } | Error::Unsupported { errno, .. } => Some(*errno),
            Error::AlreadyBound { .. } => Some(libc::EINVAL),
            Error::StillBound { .. } => None,
            Error::Group(GroupError::Sysfs { source, .. }) => source.raw_os_error(),
            Error::Group(_) => None,
            Error::Iommufd(e) => e.errno(),
        }
    }

    /// Whether the running kernel lacks the operation.
    ///
    /// ```
    /// use iommufd_vfio::VfioDevice;
    /// assert!(!VfioDevice::open("/nonexistent/vfio0").unwrap_err().is_unsupported());
    /// ```
    pub fn is_unsupported(&self) -> bool {
        match self {
            Error::Unsupported { .. } => true,
            Error::Iommufd(e) => e.is_unsupported(),
            _ => false,
        }
    }
}

impl<T> From<Refused<T, Error>> for Error {
    fn from(r: Refused<T, Error>) -> Error {
        r.error
    }
}

impl<T> From<Refused<T>> for Error {
    fn from(r: Refused<T>) -> Error {
        Error::Iommufd(r.error)
    }
}

/// Result of this crate's device operations.
///
/// ```no_run
/// use iommufd::{DeviceId, Iommufd};
/// use iommufd_vfio::{Result, VfioDevice};
///
/// fn bind_id(fd: &Iommufd, cdev: &str) -> Result<DeviceId> {
///     let dev = VfioDevice::open(cdev)?.bind(fd, 0)?;
///     Ok(dev.id())
/// }
/// ```
pub type Result<T> = std::result::Result<T, Error>;

/// A VFIO device cdev, opened but not yet bound.
///
/// Until it is bound to an iommufd the kernel blocks every other access to the device
/// (regions, interrupts).
///
/// ```no_run
/// use iommufd::Iommufd;
/// use iommufd_vfio::VfioDevice;
/// let fd = Iommufd::open()?;
/// let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?;
/// println!("opened {}", dev.name());
/// let bound = dev.bind(&fd, 0x20)?; // now regions and interrupts are usable
/// # Ok::<(), iommufd_vfio::Error>(())
/// ```
pub struct VfioDevice {
    file: File,
    name: String,
}

impl fmt::Debug for VfioDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioDevice")
            .field("name", &self.name)
            .field("fd", &self.file.as_raw_fd())
            .finish()
    }
}

impl AsFd for VfioDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

fn ioctl<T>(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: &mut T) -> std::result::Result<(), i32> {
    // SAFETY: `arg` is an exclusively borrowed VFIO argument structure whose `argsz`
    // is its own size; the kernel reads and writes at most that many bytes of it and
    // keeps no pointer to it after the call. A `token_uuid_ptr`, where set, points to
    // 16 bytes the caller keeps alive across the call; the kernel only reads them.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg as *mut T) };
    if rc < 0 {
        Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO))
    } else {
        Ok(())
    }
}

fn classify(op: &'static str, device: &str, errno: i32) -> Error {
    if errno == libc::ENOTTY || errno == libc::EOPNOTSUPP {
        Error::Unsupported {
            op,
            device: device.to_string(),
            errno,
        }
    } else {
        Error::Ioctl {
            op,
            device: device.to_string(),
            errno,
        }
    }
}

impl VfioDevice {
    /// Opens the cdev at `path` (`/dev/vfio/devices/vfioN`).
    ///
    /// ```no_run
    /// let dev = iommufd_vfio::VfioDevice::open("/dev/vfio/devices/vfio0")?;
    /// assert_eq!(dev.name(), "/dev/vfio/devices/vfio0");
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn open(path: impl AsRef<Path>) -> Result<VfioDevice> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| Error::Open {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(VfioDevice {
            file,
            name: path.display().to_string(),
        })
    }

    /// Finds the cdev of the PCI device at `addr` through sysfs and opens it, after
    /// checking that its IOMMU group is viable (no other member held by a kernel
    /// driver that uses the DMA API): the error names each offending device and its
    /// driver. The device may be bound to vfio-pci or to a vfio-pci variant driver
    /// (`mlx5_vfio_pci`, ...): what counts is that it has a VFIO cdev.
    ///
    /// ```no_run
    /// use iommufd_vfio::{Error, GroupError, Sysfs, VfioDevice};
    /// let addr = "0000:00:04.0".parse()?;
    /// match VfioDevice::open_pci(&Sysfs::default(), addr) {
    ///     Ok(dev) => assert_eq!(dev.name(), "0000:00:04.0"),
    ///     Err(Error::Group(e @ GroupError::NotViable { .. })) => eprintln!("{e}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn open_pci(sysfs: &Sysfs, addr: PciAddress) -> Result<VfioDevice> {
        sysfs.iommu_group(addr)?.check_viable()?;
        let mut dev = VfioDevice::open(sysfs.vfio_cdev(addr)?)?;
        dev.name = addr.to_string();
        Ok(dev)
    }

    /// Opens every member of the IOMMU group of `addr` that has a VFIO cdev, in
    /// address order, after checking that the group is viable: for passing a whole
    /// group (say, the functions of a multi-function device, or devices behind a
    /// conventional PCI bridge) to one VM. Members driven by a DMA-owner-safe driver
    /// such as `pcieport` are left out; bind each returned device with its own label.
    ///
    /// ```no_run
    /// use iommufd::Iommufd;
    /// use iommufd_vfio::{Sysfs, VfioDevice};
    /// let fd = Iommufd::open()?;
    /// let members = VfioDevice::open_group(&Sysfs::default(), "0000:01:01.0".parse()?)?;
    /// let bound: Vec<_> = members
    ///     .into_iter()
    ///     .enumerate()
    ///     .map(|(i, d)| d.bind(&fd, 0x100 + i as u64))
    ///     .collect::<Result<_, _>>()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn open_group(sysfs: &Sysfs, addr: PciAddress) -> Result<Vec<VfioDevice>> {
        let group = sysfs.iommu_group(addr)?;
        group.check_viable()?;
        let mut out = Vec::new();
        for m in group.members.iter().filter(|m| m.vfio_cdev.is_some()) {
            let a: PciAddress = m.device.parse()?;
            let mut dev = VfioDevice::open(sysfs.vfio_cdev(a)?)?;
            dev.name = a.to_string();
            out.push(dev);
        }
        Ok(out)
    }

    /// Adopts an open cdev, e.g. one a privileged helper opened and passed over a
    /// Unix socket. `name` is used in error messages.
    ///
    /// ```
    /// use std::os::fd::OwnedFd;
    /// use iommufd_vfio::VfioDevice;
    /// # fn receive_fd() -> std::io::Result<OwnedFd> { Ok(std::fs::File::open("/dev/null")?.into()) }
    /// let dev = VfioDevice::from_owned_fd(receive_fd()?, "vfio0 from the helper");
    /// assert_eq!(dev.name(), "vfio0 from the helper");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_owned_fd(fd: OwnedFd, name: impl Into<String>) -> VfioDevice {
        VfioDevice {
            file: File::from(fd),
            name: name.into(),
        }
    }

    /// The name used in messages: the PCI address or the cdev path.
    ///
    /// ```
    /// # use std::os::fd::OwnedFd;
    /// # let fd: OwnedFd = std::fs::File::open("/dev/null")?.into();
    /// let dev = iommufd_vfio::VfioDevice::from_owned_fd(fd, "0000:00:04.0");
    /// assert_eq!(dev.name(), "0000:00:04.0");
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Binds the device to `iommufd` (`VFIO_DEVICE_BIND_IOMMUFD`) under a label of the
    /// caller's choosing, unique in that iommufd: the device keeps it, and every
    /// record that names the device (hardware information, faults, events) carries
    /// it.
    ///
    /// Binding claims DMA ownership of the device's whole IOMMU group: it fails with
    /// `EPERM` while another member is driven by a kernel driver
    /// ([`VfioDevice::open_pci`] checks that first). A device bound through another
    /// open file is [`Error::AlreadyBound`]; a label in use is
    /// [`iommufd::Error::LabelInUse`], found before the kernel is asked. On failure
    /// the device comes back in the [`Refused`] error, still open.
    ///
    /// ```no_run
    /// use iommufd::Iommufd;
    /// use iommufd_vfio::VfioDevice;
    /// let fd = Iommufd::open()?;
    /// let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?;
    /// let dev = match dev.bind(&fd, 0x20) {
    ///     Ok(bound) => bound,
    ///     Err(refused) => {
    ///         eprintln!("{}", refused.error);
    ///         refused.object.bind(&fd, 0x21)? // e.g. another label
    ///     }
    /// };
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind(
        self,
        iommufd: &Iommufd,
        label: u64,
    ) -> std::result::Result<BoundDevice, Refused<VfioDevice, Error>> {
        self.bind_inner(iommufd, label, None)
    }

    /// Like [`VfioDevice::bind`], presenting a VF token (the UUID shared between a PF
    /// driver and the user of its VFs; Linux 6.17). Older kernels report
    /// [`Error::Unsupported`].
    ///
    /// ```no_run
    /// use iommufd::Iommufd;
    /// use iommufd_vfio::VfioDevice;
    /// let fd = Iommufd::open()?;
    /// // The UUID the PF's user set (vfio-pci's `vf_token`), as 16 bytes.
    /// let token = 0x2ab74924_c335_45f4_9b16_8569e5b08258_u128.to_be_bytes();
    /// let vf = VfioDevice::open("/dev/vfio/devices/vfio1")?.bind_with_vf_token(&fd, 0x21, token)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn bind_with_vf_token(
        self,
        iommufd: &Iommufd,
        label: u64,
        token: [u8; 16],
    ) -> std::result::Result<BoundDevice, Refused<VfioDevice, Error>> {
        self.bind_inner(iommufd, label, Some(token))
    }

    fn bind_inner(
        self,
        iommufd: &Iommufd,
        label: u64,
        token: Option<[u8; 16]>,
    ) -> std::result::Result<BoundDevice, Refused<VfioDevice, Error>> {
        const OP: &str = "VFIO_DEVICE_BIND_IOMMUFD";
        let reservation = match iommufd.reserve_label(label) {
            Ok(r) => r,
            Err(e) => {
                return Err(Refused {
                    error: e.into(),
                    object: self,
                });
            }
        };
        let mut arg = vfio_device_bind_iommufd {
            argsz: size_of::<vfio_device_bind_iommufd>() as u32,
            iommufd: iommufd.as_fd().as_raw_fd(),
            ..Default::default()
        };
        if let Some(t) = &token {
            arg.flags = BIND_FLAG_TOKEN;
            arg.token_uuid_ptr = t.as_ptr() as u64;
        }
        if let Err(errno) = ioctl(self.as_fd(), VFIO_DEVICE_BIND_IOMMUFD, &mut arg) {
            // EINVAL: with valid arguments, the kernel's answer when the device is
            // open through another cdev file; kernels before 6.17 (which also lack
            // IOMMU_HW_QUEUE_ALLOC) give it for the token flag they do not know.
            let error = match errno {
                libc::EINVAL
                    if token.is_some() && !iommufd.probe().supports(Command::HwQueueAlloc) =>
                {
                    Error::Unsupported {
                        op: "VFIO_DEVICE_BIND_IOMMUFD with a VF token",
                        device: self.name.clone(),
                        errno,
                    }
                }
                libc::EINVAL => Error::AlreadyBound {
                    device: self.name.clone(),
                },
                errno => classify(OP, &self.name, errno),
            };
            return Err(Refused {
                error,
                object: self,
            });
        }
        let fd = self.file.as_raw_fd();
        let binding = VfioBinding {
            file: self.file,
            name: self.name.clone(),
            iommufd: iommufd.clone(),
        };
        let device = Device::new(
            reservation,
            arg.out_devid,
            self.name.clone(),
            Box::new(binding),
            None,
        );
        Ok(BoundDevice {
            check: UnbindCheck {
                fd: iommufd.clone(),
                id: device.id(),
                name: self.name,
                done: false,
            },
            device,
            fd,
        })
    }
}

/// The VFIO side of a bound device: attach and detach through the cdev; dropping
/// it closes the cdev, which unbinds the device (if no other reference to the open
/// file is left).
struct VfioBinding {
    file: File,
    name: String,
    /// The iommufd the device is bound to, to probe what its kernel supports.
    iommufd: Iommufd,
}

impl fmt::Debug for VfioBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VfioBinding")
            .field("name", &self.name)
            .field("fd", &self.file.as_raw_fd())
            .finish()
    }
}

impl VfioBinding {
    /// Whether the kernel has PASID attach (Linux 6.15, like `IOMMU_VEVENTQ_ALLOC`).
    fn pasid_known(&self) -> bool {
        self.iommufd.probe().supports(Command::VeventqAlloc)
    }
}

impl Binding for VfioBinding {
    fn attach(&self, pasid: Option<u32>, pt: u32, _replace: bool) -> iommufd::Result<u32> {
        let op = if pasid.is_some() {
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT (PASID)"
        } else {
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT"
        };
        let mut arg = vfio_device_attach_iommufd_pt {
            argsz: size_of::<vfio_device_attach_iommufd_pt>() as u32,
            pt_id: pt,
            ..Default::default()
        };
        if let Some(p) = pasid {
            arg.flags = PASID_FLAG;
            arg.pasid = p;
        }
        ioctl(self.file.as_fd(), VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut arg)
            .map_err(|errno| pasid_errno(op, &self.name, pasid, errno, || self.pasid_known()))?;
        Ok(arg.pt_id)
    }

    fn detach(&self, pasid: Option<u32>) -> iommufd::Result<()> {
        let op = if pasid.is_some() {
            "VFIO_DEVICE_DETACH_IOMMUFD_PT (PASID)"
        } else {
            "VFIO_DEVICE_DETACH_IOMMUFD_PT"
        };
        let mut arg = vfio_device_detach_iommufd_pt {
            argsz: size_of::<vfio_device_detach_iommufd_pt>() as u32,
            ..Default::default()
        };
        if let Some(p) = pasid {
            arg.flags = PASID_FLAG;
            arg.pasid = p;
        }
        ioctl(self.file.as_fd(), VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut arg)
            .map_err(|errno| pasid_errno(op, &self.name, pasid, errno, || self.pasid_known()))
    }
}

/// PASID attach and detach arrived in Linux 6.15, together with
/// `IOMMU_VEVENTQ_ALLOC`; older kernels reject the unknown flag with `EINVAL`.
/// `pasid_known` says whether the kernel has them (asked only for that `EINVAL`).
fn pasid_errno(
    op: &'static str,
    name: &str,
    pasid: Option<u32>,
    errno: i32,
    pasid_known: impl FnOnce() -> bool,
) -> iommufd::Error {
    if pasid.is_some() && errno == libc::EINVAL && !pasid_known() {
        iommufd::Error::Unsupported {
            op,
            object: name.to_string(),
            errno,
        }
    } else {
        iommufd::Error::from_errno(op, name, errno)
    }
}

/// What this process holds of a bound device's cdev file besides the
/// [`BoundDevice`] itself: each keeps the device bound after the `BoundDevice` is
/// closed ([`Error::StillBound`]).
///
/// ```no_run
/// # fn f(dev: &iommufd_vfio::BoundDevice) -> std::io::Result<()> {
/// let refs = dev.cdev_references()?;
/// if !refs.is_empty() {
///     println!("closing will not unbind the device: {refs}");
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CdevReferences {
    /// Other fds of this process that share the open file (dups).
    pub dup_fds: Vec<RawFd>,
    /// Mappings of the device (BAR mmaps) in this process: only the bound file can
    /// map the device, so each is a reference to it.
    pub mmaps: usize,
}

impl CdevReferences {
    /// Whether there are none.
    ///
    /// ```
    /// assert!(iommufd_vfio::CdevReferences::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.dup_fds.is_empty() && self.mmaps == 0
    }
}

impl fmt::Display for CdevReferences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str(
                "no reference in this process (a forked child or another process holds the file)",
            );
        }
        let mut parts = Vec::new();
        if !self.dup_fds.is_empty() {
            let fds: Vec<String> = self.dup_fds.iter().map(|f| f.to_string()).collect();
            parts.push(format!("dup fd(s) {}", fds.join(", ")));
        }
        if self.mmaps > 0 {
            parts.push(format!("{} BAR mmap(s)", self.mmaps));
        }
        f.write_str(&parts.join(" and "))
    }
}

/// Whether `a` and `b` are the same open file description: `kcmp(KCMP_FILE)` where
/// the kernel has it, else by toggling `O_NONBLOCK` (a flag of the description) on
/// `a` and looking at `b`.
fn same_open_file(a: RawFd, b: RawFd) -> bool {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: getpid has no preconditions; kcmp only compares the two descriptors'
    // files and writes no memory.
    let r = unsafe {
        let pid = libc::getpid();
        libc::syscall(libc::SYS_kcmp, pid, pid, KCMP_FILE, a, b)
    };
    if r >= 0 {
        return r == 0;
    }
    // SAFETY: F_GETFL/F_SETFL read and set the status flags of valid descriptors.
    unsafe {
        let fa = libc::fcntl(a, libc::F_GETFL);
        let fb = libc::fcntl(b, libc::F_GETFL);
        if fa < 0 || fb < 0 || (fa ^ fb) & libc::O_NONBLOCK != 0 {
            return false;
        }
        if libc::fcntl(a, libc::F_SETFL, fa ^ libc::O_NONBLOCK) < 0 {
            return false;
        }
        let seen = libc::fcntl(b, libc::F_GETFL);
        libc::fcntl(a, libc::F_SETFL, fa);
        seen >= 0 && (seen ^ fb) & libc::O_NONBLOCK != 0
    }
}

/// The other references of this process to the open file behind `file`.
fn cdev_references(file: BorrowedFd<'_>) -> std::io::Result<CdevReferences> {
    let own = file.as_raw_fd();
    let meta = std::fs::metadata(format!("/proc/self/fd/{own}"))?;
    let (dev, ino) = (meta.dev(), meta.ino());
    let mut refs = CdevReferences::default();
    for e in std::fs::read_dir("/proc/self/fd")? {
        let Ok(fd) = e?.file_name().to_string_lossy().parse::<RawFd>() else {
            continue;
        };
        if fd == own {
            continue;
        }
        let Ok(m) = std::fs::metadata(format!("/proc/self/fd/{fd}")) else {
            continue;
        };
        if (m.dev(), m.ino()) == (dev, ino) && same_open_file(own, fd) {
            refs.dup_fds.push(fd);
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    refs.mmaps = maps.lines().filter(|l| map_line_is(l, dev, ino)).count();
    Ok(refs)
}

/// Whether a `/proc/self/maps` line maps the file with device `dev` and inode `ino`.
fn map_line_is(line: &str, dev: u64, ino: u64) -> bool {
    let mut f = line.split_whitespace();
    let (Some(_), Some(_), Some(_), Some(d), Some(i)) =
        (f.next(), f.next(), f.next(), f.next(), f.next())
    else {
        return false;
    };
    let Some((maj, min)) = d.split_once(':') else {
        return false;
    };
    let (Ok(maj), Ok(min), Ok(i)) = (
        u32::from_str_radix(maj, 16),
        u32::from_str_radix(min, 16),
        i.parse::<u64>(),
    ) else {
        return false;
    };
    i == ino && libc::makedev(maj, min) == dev
}

/// A VFIO device bound to an iommufd: its [`Device`] (what it is attached to, its
/// id and label) and its cdev, which stays usable for regions and interrupts.
///
/// It dereferences to its [`Device`], so `dev.attach(&ioas)`, `dev.hw_info()`,
/// `Hwpt::alloc(&ioas, &dev, ..)` work directly. The device holds what it is
/// attached to, so nothing it uses can be destroyed before it.
///
/// Dropping it (or [`BoundDevice::close`]) detaches every PASID and the device,
/// removes its label, closes the cdev (which unbinds the device) and releases what
/// it was attached to, in that order; failures are logged, never a panic. The device
/// stays bound while other handles of its [`Device`] exist (objects that need the
/// device hold one), and while other references to the cdev's open file do
/// ([`BoundDevice::cdev_references`]): dropping it then logs a warning, and
/// [`BoundDevice::close`] returns [`Error::StillBound`].
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use iommufd::{Ioas, Iommufd};
/// use iommufd_vfio::VfioDevice;
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
/// dev.attach(&ioas)?;
/// let device_fd = dev.as_fd(); // for VFIO_DEVICE_GET_REGION_INFO, ...
/// dev.close()?; // or drop it: detach, forget the label, close
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct BoundDevice {
    // Fields drop in this order: the device (if this is its last handle: detach,
    // label, close the cdev, release what it was attached to), then the check that
    // the device really is unbound.
    device: Device,
    /// The cdev, owned by the device's binding (alive as long as `device`).
    fd: RawFd,
    check: UnbindCheck,
}

impl fmt::Debug for BoundDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundDevice")
            .field("device", &self.device)
            .field("fd", &self.fd)
            .finish()
    }
}

impl Deref for BoundDevice {
    type Target = Device;

    fn deref(&self) -> &Device {
        &self.device
    }
}

impl AsRef<Device> for BoundDevice {
    fn as_ref(&self) -> &Device {
        &self.device
    }
}

impl AsFd for BoundDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `fd` is the cdev that the binding of `self.device` owns; this handle
        // holds the device, so the binding and its file stay open while the borrow
        // (tied to `&self`) lasts.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl BoundDevice {
    /// The device as the iommufd layer sees it; clone it to keep the device bound
    /// (and attached) beyond this handle.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd_vfio::BoundDevice) {
    /// let device: iommufd::Device = dev.device().clone();
    /// # }
    /// ```
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Other references of this process to the cdev's open file: dups of its fd
    /// and BAR mmaps. Each keeps the device bound after this handle is closed.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd_vfio::BoundDevice) -> std::io::Result<()> {
    /// let dup = std::os::fd::AsFd::as_fd(dev).try_clone_to_owned()?;
    /// assert_eq!(dev.cdev_references()?.dup_fds.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn cdev_references(&self) -> std::io::Result<CdevReferences> {
        cdev_references(self.as_fd())
    }

    /// Detaches, removes the label and closes the cdev now, and checks that the
    /// device is unbound.
    ///
    /// Fails without doing anything, giving the device back, with
    /// [`iommufd::Error::InUse`] while other handles of its [`Device`] exist. After
    /// closing, if the iommufd still has the device (other references to the cdev's
    /// open file keep it bound), fails with [`Error::StillBound`] naming what this
    /// process still holds of the file.
    ///
    /// ```no_run
    /// # fn f(dev: iommufd_vfio::BoundDevice) -> iommufd_vfio::Result<()> {
    /// let (fd, label) = (dev.iommufd().clone(), dev.label());
    /// dev.close()?;
    /// assert_eq!(fd.device_by_label(label), None);
    /// # Ok(()) }
    /// ```
    // The error carries the device back: large, and returned only on the rare failure.
    #[allow(clippy::result_large_err)]
    pub fn close(self) -> std::result::Result<(), Refused<Option<BoundDevice>, Error>> {
        let handles = self.device.handles();
        if handles > 1 {
            let error = Error::Iommufd(iommufd::Error::InUse {
                op: "close",
                object: format!("{} ({})", self.check.name, self.device.id()),
                others: handles - 1,
            });
            return Err(Refused {
                error,
                object: Some(self),
            });
        }
        let holders = cdev_references(self.as_fd()).ok();
        let BoundDevice {
            device, mut check, ..
        } = self;
        drop(device);
        check.result(holders).map_err(|error| Refused {
            error,
            object: None,
        })
    }
}

/// Checks, when dropped, that a closed device was really unbound.
struct UnbindCheck {
    fd: Iommufd,
    id: DeviceId,
    name: String,
    done: bool,
}

impl UnbindCheck {
    /// [`Error::StillBound`] if the iommufd still has the device although no handle
    /// of it is left.
    fn result(&mut self, holders: Option<CdevReferences>) -> Result<()> {
        self.done = true;
        // While a `Device` handle lives, its label is registered: the device is
        // meant to be bound. Once it is gone, the kernel frees the id at unbind.
        if self.fd.label_of(self.id).is_some() || !self.fd.has_device(self.id).unwrap_or(false) {
            return Ok(());
        }
        Err(Error::StillBound {
            device: self.name.clone(),
            id: self.id,
            holders: holders.map_or_else(
                || "other references to the file".to_string(),
                |h| h.to_string(),
            ),
        })
    }
}

impl Drop for UnbindCheck {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.result(None) {
                log::warn!("iommufd-vfio: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn temp_file(tag: &str) -> (PathBuf, File) {
        let path = std::env::temp_dir().join(format!("iommufd-vfio-{tag}-{}", std::process::id()));
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("temp file");
        f.write_all(&[0u8; 8192]).expect("write");
        (path, f)
    }

    // The same bookkeeping works for any file: dups of the open file and mappings of
    // it are found, a second open of the same path is not a dup.
    #[test]
    fn references_to_an_open_file_are_found() {
        let (path, f) = temp_file("refs");
        assert!(cdev_references(f.as_fd()).expect("refs").is_empty());
        let dup = f.try_clone().expect("dup");
        let other_open = File::open(&path).expect("open");
        assert!(same_open_file(f.as_raw_fd(), dup.as_raw_fd()));
        assert!(!same_open_file(f.as_raw_fd(), other_open.as_raw_fd()));
        // SAFETY: a fresh shared read-only mapping of our own file, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let refs = cdev_references(f.as_fd()).expect("refs");
        assert_eq!(refs.dup_fds, [dup.as_raw_fd()]);
        assert_eq!(refs.mmaps, 1);
        let text = refs.to_string();
        assert!(
            text.contains("dup fd(s)") && text.contains("1 BAR mmap(s)"),
            "{text}"
        );
        // SAFETY: unmapping exactly what was mapped above.
        unsafe { libc::munmap(p, 4096) };
        drop(dup);
        assert!(cdev_references(f.as_fd()).expect("refs").is_empty());
        assert!(
            CdevReferences::default()
                .to_string()
                .contains("forked child")
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn maps_lines_are_matched_by_device_and_inode() {
        let dev = libc::makedev(0, 5);
        let line = "7f0000000000-7f0000001000 rw-s 00000000 00:05 1234    /dev/vfio/devices/vfio0";
        assert!(map_line_is(line, dev, 1234));
        assert!(!map_line_is(line, dev, 1235));
        assert!(!map_line_is(line, libc::makedev(0, 6), 1234));
        assert!(!map_line_is("garbage", dev, 1234));
        assert!(!map_line_is("a b c zz:05 1234", dev, 1234));
        assert!(!map_line_is("a b c 00-05 1234", dev, 1234));
    }

    #[test]
    fn errors_keep_their_errno() {
        let e = classify("VFIO_DEVICE_BIND_IOMMUFD", "vfio0", libc::ENOTTY);
        assert!(e.is_unsupported() && e.errno() == Some(libc::ENOTTY));
        let e = classify("VFIO_DEVICE_BIND_IOMMUFD", "vfio0", libc::EPERM);
        assert!(!e.is_unsupported() && e.errno() == Some(libc::EPERM));
        assert!(
            e.to_string().contains("VFIO_DEVICE_BIND_IOMMUFD on vfio0"),
            "{e}"
        );
        let e = Error::AlreadyBound {
            device: "vfio0".into(),
        };
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(e.to_string().contains("already bound"), "{e}");
        let e: Error = iommufd::Error::from_errno("x", "y", libc::EOPNOTSUPP).into();
        assert!(e.is_unsupported());
        let e = pasid_errno("op", "vfio0", None, libc::EINVAL, || false);
        assert!(!e.is_unsupported());
        // EINVAL for a PASID operation is unsupported exactly on kernels without PASID
        // attach (before 6.15); other errnos keep their meaning.
        let e = pasid_errno("op", "vfio0", Some(1), libc::EINVAL, || false);
        assert!(e.is_unsupported());
        let e = pasid_errno("op", "vfio0", Some(1), libc::EINVAL, || true);
        assert!(!e.is_unsupported() && e.errno() == Some(libc::EINVAL));
        let e = pasid_errno("op", "vfio0", Some(1), libc::EPERM, || false);
        assert_eq!(e.errno(), Some(libc::EPERM));
        let opened = VfioDevice::from_owned_fd(File::open("/dev/null").expect("null").into(), "x");
        assert!(format!("{opened:?}").contains("\"x\""));
    }
}
