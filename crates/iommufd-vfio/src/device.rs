//! VFIO device cdevs bound to an iommufd.
//!
//! ```no_run
//! use iommufd::Iommufd;
//! use iommufd_vfio::device::VfioDevice;
//! let fd = Iommufd::open()?;
//! let ioas = fd.alloc_ioas()?;
//! let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
//! dev.attach(&ioas)?;
//! # Ok::<(), iommufd_vfio::device::Error>(())
//! ```

use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use iommufd::{DeviceId, HwptId, Iommufd, PtId};
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
/// use iommufd::Iommufd;
/// use iommufd_vfio::{Error, VfioDevice};
/// let err = VfioDevice::open("/nonexistent/vfio0").unwrap_err();
/// assert!(matches!(err, Error::Open { .. }));
/// // /dev/null stands in for both files: it answers every ioctl with ENOTTY.
/// let fd = Iommufd::open_path("/dev/null")?;
/// let null = VfioDevice::open("/dev/null")?;
/// let err = null.bind(&fd, 1).unwrap_err();
/// assert!(matches!(err, Error::Unsupported { op: "VFIO_DEVICE_BIND_IOMMUFD", .. }));
/// # Ok::<(), Error>(())
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
    /// Sysfs lookup or IOMMU group check failed.
    #[error(transparent)]
    Group(#[from] GroupError),
    /// An error of the iommufd layer (label bookkeeping, foreign objects).
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
            Error::Group(GroupError::Sysfs { source, .. }) => source.raw_os_error(),
            Error::Group(_) => None,
            Error::Iommufd(e) => e.errno(),
        }
    }

    /// Whether the running kernel lacks the operation.
    ///
    /// ```
    /// # use iommufd_vfio::VfioDevice;
    /// // /dev/null is neither a VFIO cdev nor an iommufd: ENOTTY.
    /// let fd = iommufd::Iommufd::open_path("/dev/null")?;
    /// let err = VfioDevice::open("/dev/null")?.bind(&fd, 1).unwrap_err();
    /// assert!(err.is_unsupported());
    /// assert!(!VfioDevice::open("/nonexistent/vfio0").unwrap_err().is_unsupported());
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }
}

/// Result of this crate's device operations.
///
/// ```
/// use iommufd::Iommufd;
/// use iommufd_vfio::{Result, VfioDevice};
///
/// fn bind_id(fd: &Iommufd, cdev: &str) -> Result<iommufd::DeviceId> {
///     let dev = VfioDevice::open(cdev)?.bind(fd, 0)?;
///     Ok(dev.id())
/// }
/// let fd = Iommufd::open_path("/dev/null")?; // not an iommufd
/// assert!(bind_id(&fd, "/nonexistent/vfio0").is_err());
/// # Ok::<(), iommufd_vfio::Error>(())
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
    // keeps no pointer to it after the call.
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
    /// driver): the error names each offending device and its driver.
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

    /// Opens every member of the IOMMU group of `addr` that vfio-pci drives, in
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
        for m in &group.members {
            if m.driver.as_deref() != Some("vfio-pci") {
                continue;
            }
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
    /// let dev = iommufd_vfio::VfioDevice::open("/dev/null")?;
    /// assert_eq!(dev.name(), "/dev/null");
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Binds the device to `iommufd` (`VFIO_DEVICE_BIND_IOMMUFD`) under a label of the
    /// caller's choosing: the iommufd hands the label back wherever the kernel later
    /// names the device by its id (see [`Iommufd::label_of`]).
    ///
    /// Binding claims DMA ownership of the device's whole IOMMU group: it fails with
    /// `EPERM` while another member is driven by a kernel driver
    /// ([`VfioDevice::open_pci`] checks that first).
    ///
    /// ```no_run
    /// use iommufd::Iommufd;
    /// use iommufd_vfio::{Sysfs, VfioDevice};
    /// let fd = Iommufd::open()?;
    /// let addr = "0000:00:04.0".parse()?;
    /// let dev = VfioDevice::open_pci(&Sysfs::default(), addr)?.bind(&fd, 0x20)?;
    /// assert_eq!(fd.device_by_label(0x20), Some(dev.id()));
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn bind(self, iommufd: &Iommufd, label: u64) -> Result<BoundDevice<'_>> {
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
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn bind_with_vf_token(
        self,
        iommufd: &Iommufd,
        label: u64,
        token: [u8; 16],
    ) -> Result<BoundDevice<'_>> {
        self.bind_inner(iommufd, label, Some(token))
    }

    fn bind_inner(
        self,
        iommufd: &Iommufd,
        label: u64,
        token: Option<[u8; 16]>,
    ) -> Result<BoundDevice<'_>> {
        const OP: &str = "VFIO_DEVICE_BIND_IOMMUFD";
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
            // Kernels before 6.17 reject any flag with EINVAL.
            if token.is_some() && errno == libc::EINVAL {
                return Err(Error::Unsupported {
                    op: "VFIO_DEVICE_BIND_IOMMUFD with a VF token",
                    device: self.name,
                    errno,
                });
            }
            return Err(classify(OP, &self.name, errno));
        }
        let id = DeviceId::from_raw(arg.out_devid);
        // On a label clash the device is dropped, which closes the cdev and unbinds it.
        iommufd.set_label(id, label)?;
        Ok(BoundDevice {
            dev: self,
            iommufd,
            id,
            label,
            attached: Mutex::new(Attachments::default()),
        })
    }
}

#[derive(Debug, Default)]
struct Attachments {
    main: Option<PtId>,
    pasids: Vec<(u32, PtId)>,
}

/// A VFIO device bound to an iommufd, named there by [`DeviceId`] and by the caller's
/// label.
///
/// Dropping it detaches every PASID and the device itself, forgets the label, and
/// closes the cdev (which unbinds it), in that order; failures there are reported on
/// stderr, never by a panic.
///
/// The device fd ([`AsFd`]) stays usable for regions and interrupts, e.g. by
/// vfio-ioctls or the VMM's own code.
///
/// ```no_run
/// use std::os::fd::AsFd;
/// use iommufd::Iommufd;
/// use iommufd_vfio::VfioDevice;
/// let fd = Iommufd::open()?;
/// let ioas = fd.alloc_ioas()?;
/// let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
/// dev.attach(&ioas)?;
/// let device_fd = dev.as_fd(); // for VFIO_DEVICE_GET_REGION_INFO, ...
/// dev.close()?; // or drop it: detach, forget the label, close
/// # Ok::<(), iommufd_vfio::Error>(())
/// ```
pub struct BoundDevice<'fd> {
    dev: VfioDevice,
    iommufd: &'fd Iommufd,
    id: DeviceId,
    label: u64,
    attached: Mutex<Attachments>,
}

impl fmt::Debug for BoundDevice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoundDevice")
            .field("device", &self.dev)
            .field("id", &self.id)
            .field("label", &self.label)
            .finish()
    }
}

impl AsFd for BoundDevice<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dev.as_fd()
    }
}

impl<'fd> BoundDevice<'fd> {
    /// The id the kernel gave the device in this iommufd.
    ///
    /// ```no_run
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// let info = fd.hw_info(dev.id())?;
    /// assert_eq!(info.label, Some(0x20));
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn id(&self) -> DeviceId {
        self.id
    }

    /// The caller's label.
    ///
    /// ```no_run
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// assert_eq!(dev.label(), 0x20);
    /// assert_eq!(fd.label_of(dev.id()), Some(dev.label()));
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn label(&self) -> u64 {
        self.label
    }

    /// The iommufd the device is bound to.
    ///
    /// ```no_run
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// assert!(std::ptr::eq(dev.iommufd(), &fd));
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn iommufd(&self) -> &'fd Iommufd {
        self.iommufd
    }

    /// The name used in messages.
    ///
    /// ```no_run
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// assert_eq!(dev.name(), "/dev/vfio/devices/vfio0");
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn name(&self) -> &str {
        &self.dev.name
    }

    fn described(&self) -> String {
        format!("{} (label {:#x}, {})", self.dev.name, self.label, self.id)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Attachments> {
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn attach_inner(&self, pasid: Option<u32>, pt: PtId) -> Result<HwptId> {
        let op = if pasid.is_some() {
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT (PASID)"
        } else {
            "VFIO_DEVICE_ATTACH_IOMMUFD_PT"
        };
        self.iommufd.check_pt(op, pt)?;
        let mut arg = vfio_device_attach_iommufd_pt {
            argsz: size_of::<vfio_device_attach_iommufd_pt>() as u32,
            pt_id: pt.raw(),
            ..Default::default()
        };
        if let Some(p) = pasid {
            arg.flags = PASID_FLAG;
            arg.pasid = p;
        }
        if let Err(errno) = ioctl(self.as_fd(), VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut arg) {
            // PASID attach arrived in 6.15 together with IOMMU_VEVENTQ_ALLOC; older
            // kernels reject the unknown flag with EINVAL.
            if pasid.is_some()
                && errno == libc::EINVAL
                && !self
                    .iommufd
                    .probe()
                    .supports(iommufd::Command::VeventqAlloc)
            {
                return Err(Error::Unsupported {
                    op,
                    device: self.described(),
                    errno,
                });
            }
            return Err(classify(op, &self.described(), errno));
        }
        let mut a = self.lock();
        match pasid {
            None => a.main = Some(pt),
            Some(p) => {
                a.pasids.retain(|(q, _)| *q != p);
                a.pasids.push((p, pt));
            }
        }
        Ok(HwptId::from_raw(arg.pt_id))
    }

    /// Attaches the device to an IOAS or HWPT (`VFIO_DEVICE_ATTACH_IOMMUFD_PT`); if
    /// it is attached already, the new page table replaces the old one without a
    /// window of blocked DMA.
    ///
    /// Returns the HWPT the device now uses: for an IOAS, the one the kernel created
    /// (or reused) for it. That HWPT belongs to the kernel and goes away with the last
    /// device attached to it.
    ///
    /// ```no_run
    /// use iommufd::{Hwpt, HwptFlags};
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let auto = dev.attach(&ioas)?; // a HWPT the kernel made
    /// let hwpt = Hwpt::alloc(&fd, dev.id(), &ioas, HwptFlags::empty())?;
    /// assert_eq!(dev.attach(&hwpt)?, hwpt.id()); // replaces `auto`
    /// # dev.detach()?;
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn attach(&self, pt: impl Into<PtId>) -> Result<HwptId> {
        self.attach_inner(None, pt.into())
    }

    /// Attaches one PASID of the device to an IOAS or HWPT (Linux 6.15); replaces an
    /// earlier attachment of the same PASID. Kernels without PASID attach report
    /// [`Error::Unsupported`].
    ///
    /// ```no_run
    /// use iommufd::{Hwpt, HwptFlags};
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let hwpt = Hwpt::alloc(&fd, dev.id(), &ioas, HwptFlags::PASID)?;
    /// dev.attach(&hwpt)?;
    /// match dev.attach_pasid(1, &hwpt) {
    ///     Ok(_) => println!("PASID 1 attached"),
    ///     Err(e) if e.is_unsupported() => eprintln!("no PASID attach before Linux 6.15"),
    ///     Err(e) => return Err(e),
    /// }
    /// # dev.close()?;
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn attach_pasid(&self, pasid: u32, pt: impl Into<PtId>) -> Result<HwptId> {
        self.attach_inner(Some(pasid), pt.into())
    }

    fn detach_inner(&self, pasid: Option<u32>) -> Result<()> {
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
        ioctl(self.as_fd(), VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut arg)
            .map_err(|errno| classify(op, &self.described(), errno))?;
        let mut a = self.lock();
        match pasid {
            None => a.main = None,
            Some(p) => a.pasids.retain(|(q, _)| *q != p),
        }
        Ok(())
    }

    /// Detaches the device (`VFIO_DEVICE_DETACH_IOMMUFD_PT`): its DMA is blocked
    /// until it is attached again.
    ///
    /// ```no_run
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// # let ioas = fd.alloc_ioas()?;
    /// dev.attach(&ioas)?;
    /// dev.detach()?;
    /// assert_eq!(dev.attached_to(), None);
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn detach(&self) -> Result<()> {
        self.detach_inner(None)
    }

    /// Detaches one PASID.
    ///
    /// ```no_run
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let hwpt = iommufd::Hwpt::alloc(&fd, dev.id(), &ioas, iommufd::HwptFlags::PASID)?;
    /// # dev.attach(&hwpt)?;
    /// dev.attach_pasid(1, &hwpt)?;
    /// dev.detach_pasid(1)?;
    /// assert!(dev.attached_pasids().is_empty());
    /// # dev.close()?;
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn detach_pasid(&self, pasid: u32) -> Result<()> {
        self.detach_inner(Some(pasid))
    }

    /// What the device is attached to, if anything (as this handle did it).
    ///
    /// ```no_run
    /// use iommufd::PtId;
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// # let ioas = fd.alloc_ioas()?;
    /// assert_eq!(dev.attached_to(), None);
    /// dev.attach(&ioas)?;
    /// assert_eq!(dev.attached_to(), Some(PtId::from(&ioas)));
    /// # dev.close()?;
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn attached_to(&self) -> Option<PtId> {
        self.lock().main
    }

    /// The PASIDs this handle attached, and to what.
    ///
    /// ```no_run
    /// use iommufd::{Hwpt, HwptFlags, PtId};
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let hwpt = Hwpt::alloc(&fd, dev.id(), &ioas, HwptFlags::PASID)?;
    /// dev.attach(&hwpt)?;
    /// dev.attach_pasid(1, &hwpt)?;
    /// assert_eq!(dev.attached_pasids(), [(1, PtId::from(&hwpt))]);
    /// # dev.close()?;
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn attached_pasids(&self) -> Vec<(u32, PtId)> {
        self.lock().pasids.clone()
    }

    /// Detaches, forgets the label and closes, reporting the first failure.
    ///
    /// ```no_run
    /// # use iommufd::Iommufd;
    /// # use iommufd_vfio::VfioDevice;
    /// # let fd = Iommufd::open()?;
    /// # let dev = VfioDevice::open("/dev/vfio/devices/vfio0")?.bind(&fd, 0x20)?;
    /// # let ioas = fd.alloc_ioas()?;
    /// dev.attach(&ioas)?;
    /// let id = dev.id();
    /// dev.close()?;
    /// assert_eq!(fd.label_of(id), None);
    /// # Ok::<(), iommufd_vfio::Error>(())
    /// ```
    pub fn close(self) -> Result<()> {
        let r = self.teardown();
        // Drop finds nothing left to detach; it only closes the cdev.
        drop(self);
        r
    }

    fn teardown(&self) -> Result<()> {
        let mut first = Ok(());
        let pasids: Vec<u32> = self.lock().pasids.iter().map(|(p, _)| *p).collect();
        for p in pasids {
            let r = self.detach_inner(Some(p));
            if first.is_ok() {
                first = r;
            }
        }
        if self.lock().main.is_some() {
            let r = self.detach_inner(None);
            if first.is_ok() {
                first = r;
            }
        }
        // Whatever failed is not retried: closing the cdev, which follows, detaches
        // everything and unbinds the device anyway.
        *self.lock() = Attachments::default();
        self.iommufd.clear_label(self.id);
        first
    }
}

impl Drop for BoundDevice<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("iommufd-vfio: tearing down {}: {e}", self.described());
        }
        // The cdev closes when `self.dev` drops right after this, which unbinds it.
    }
}
