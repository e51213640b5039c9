//! The KVM side of iommufd passthrough: the VM's KVM VFIO device
//! (`KVM_DEV_TYPE_VFIO`), and a device type that makes the kernel's order
//! impossible to get wrong.
//!
//! KVM must know a VFIO device's file before the device is bound to an iommufd:
//! the binding takes KVM's reference then, and some devices need it (mediated and
//! vendor variant drivers). KVM also decides from the registered devices whether
//! the VM's DMA is cache-coherent, and so whether it honours the guest's `WBINVD`.
//! When the device goes, KVM's reference must go with it.
//!
//! The states are types:
//!
//! 1. [`VfioDevice`] (opened; iommufd-vfio)
//! 2. [`KvmVfio::register`] -> [`RegisteredDevice`] (`KVM_DEV_VFIO_FILE_ADD`)
//! 3. [`RegisteredDevice::bind`] -> [`KvmDevice`] (bound; attach it like any
//!    [`BoundDevice`], which it dereferences to)
//!
//! and teardown runs backwards on drop, without panics: detach, `KVM_DEV_VFIO_FILE_DEL`,
//! close (which unbinds). The kernel unbinds a VFIO cdev when its file is released,
//! and KVM holds the file while it is registered, so the unbind can only follow
//! `FILE_DEL`: detaching first ends the device's DMA before KVM lets go.
//!
//! An unprivileged VMM gets its `/dev/iommu` and device fds from a privileged
//! helper: see [`handoff`].
//!
//! # Walkthrough: hot-add and hot-remove in a KVM VMM
//!
//! ```no_run
//! use iommufd::{Ioas, Iommufd, MapFlags};
//! use iommufd_kvm::KvmVfio;
//! use iommufd_vfio::{Sysfs, VfioDevice};
//! use kvm_ioctls::Kvm;
//!
//! let vm = Kvm::new()?.create_vm()?;
//! let kvm_vfio = KvmVfio::new(&vm)?; // once per VM
//! let iommufd = Iommufd::open()?;
//! let ioas = Ioas::alloc(&iommufd)?; // guest RAM mapped at IOVA = GPA, elsewhere
//!
//! // Hot-add: open, tell KVM, bind, attach.
//! let addr = "0000:00:04.0".parse()?;
//! let opened = VfioDevice::open_pci(&Sysfs::default(), addr)?;
//! let registered = kvm_vfio.register(opened)?;
//! let dev = registered.bind(&iommufd, 0x0400)?; // the guest BDF as label
//! dev.attach(&ioas)?;
//! if kvm_vfio.dma_coherent() == Some(false) {
//!     // KVM now honours the guest's WBINVD: the device's IOMMU cannot snoop.
//! }
//!
//! // Hot-remove: detach, unregister from KVM, unbind; or just drop it.
//! dev.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![deny(missing_docs)]

pub mod handoff;

use std::fmt;
use std::ops::Deref;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use iommufd::{HwInfoData, Iommufd, Refused};
use iommufd_vfio::{BoundDevice, VfioDevice};
use kvm_bindings::{
    KVM_DEV_VFIO_FILE, KVM_DEV_VFIO_FILE_ADD, KVM_DEV_VFIO_FILE_DEL, kvm_create_device,
    kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_VFIO,
};
use kvm_ioctls::{DeviceFd, VmFd};

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error of the KVM handshake.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A KVM ioctl failed.
    #[error("{op} on {object} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Kvm {
        /// The operation.
        op: &'static str,
        /// What it was about.
        object: String,
        /// The errno.
        errno: i32,
    },
    /// The device's file is registered with this VM's KVM VFIO device already
    /// (through another fd of the same open file).
    #[error("{device} is registered with KVM already")]
    AlreadyRegistered {
        /// The device.
        device: String,
    },
    /// The KVM VFIO device is not available (a kernel without `CONFIG_KVM_VFIO`).
    #[error("this kernel has no KVM VFIO device (CONFIG_KVM_VFIO): {}", std::io::Error::from_raw_os_error(*errno))]
    Unsupported {
        /// The errno of `KVM_CREATE_DEVICE`.
        errno: i32,
    },
    /// A handoff message was not what [`handoff::send`] sends.
    #[error("iommufd handoff: {reason}")]
    Handoff {
        /// What was wrong.
        reason: String,
    },
    /// A socket operation failed.
    #[error("{op} failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Io {
        /// The system call.
        op: &'static str,
        /// Its errno.
        errno: i32,
    },
    /// Binding or closing the VFIO device failed.
    #[error(transparent)]
    Vfio(#[from] iommufd_vfio::Error),
    /// An iommufd operation failed (detach, hardware information).
    #[error(transparent)]
    Iommufd(#[from] iommufd::Error),
}

impl Error {
    /// The errno behind the error, if there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kvm { errno, .. } | Error::Unsupported { errno } | Error::Io { errno, .. } => {
                Some(*errno)
            }
            Error::Handoff { .. } => None,
            Error::Vfio(e) => e.errno(),
            Error::Iommufd(e) => e.errno(),
            Error::AlreadyRegistered { .. } => Some(libc::EEXIST),
        }
    }
}

fn errno_of(e: kvm_ioctls::Error) -> i32 {
    e.errno()
}

#[derive(Debug)]
struct Registered {
    fd: RawFd,
    name: String,
    /// Whether the device's IOMMU enforces cache coherency, once known (after
    /// binding, from its hardware information).
    coherent: Option<bool>,
}

struct KvmVfioInner {
    dev: DeviceFd,
    registered: Mutex<Vec<Registered>>,
}

/// The KVM VFIO pseudo-device of one VM (`KVM_CREATE_DEVICE` with
/// `KVM_DEV_TYPE_VFIO`): the list of VFIO files KVM knows for the VM.
///
/// A shared handle: cloning is cheap; devices registered through it hold it. The
/// kernel device keeps the VM alive, so the VM fd may be closed first.
#[derive(Clone)]
pub struct KvmVfio {
    inner: Arc<KvmVfioInner>,
}

impl fmt::Debug for KvmVfio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvmVfio")
            .field("fd", &self.inner.dev.as_raw_fd())
            .field("registered", &*self.lock())
            .finish()
    }
}

impl KvmVfio {
    /// Creates the VM's KVM VFIO device. One per VM is enough; KVM accepts more.
    pub fn new(vm: &VmFd) -> Result<KvmVfio> {
        let mut d = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let dev = vm.create_device(&mut d).map_err(|e| match errno_of(e) {
            libc::ENODEV | libc::ENOTTY | libc::EOPNOTSUPP => {
                Error::Unsupported { errno: errno_of(e) }
            }
            errno => Error::Kvm {
                op: "KVM_CREATE_DEVICE",
                object: "KVM_DEV_TYPE_VFIO".into(),
                errno,
            },
        })?;
        Ok(KvmVfio {
            inner: Arc::new(KvmVfioInner {
                dev,
                registered: Mutex::default(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Registered>> {
        self.inner
            .registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn file_op(&self, attr: u32, fd: RawFd, name: &str) -> Result<()> {
        let fd32: i32 = fd;
        let a = kvm_device_attr {
            flags: 0,
            group: KVM_DEV_VFIO_FILE,
            attr: u64::from(attr),
            addr: (&raw const fd32) as u64,
        };
        // `addr` points to `fd32`, alive across the call (kvm-ioctls passes the
        // attribute by reference; KVM reads the int it points to).
        self.inner.dev.set_device_attr(&a).map_err(|e| {
            let errno = errno_of(e);
            if attr == KVM_DEV_VFIO_FILE_ADD && errno == libc::EEXIST {
                Error::AlreadyRegistered {
                    device: name.to_string(),
                }
            } else {
                Error::Kvm {
                    op: if attr == KVM_DEV_VFIO_FILE_ADD {
                        "KVM_DEV_VFIO_FILE_ADD"
                    } else {
                        "KVM_DEV_VFIO_FILE_DEL"
                    },
                    object: name.to_string(),
                    errno,
                }
            }
        })
    }

    /// Registers `dev`'s file with KVM (`KVM_DEV_VFIO_FILE_ADD`), before it is
    /// bound. On failure the device comes back unchanged.
    pub fn register(
        &self,
        dev: VfioDevice,
    ) -> Result<RegisteredDevice, Refused<VfioDevice, Error>> {
        let fd = dev.as_fd().as_raw_fd();
        let name = dev.name().to_string();
        if let Err(error) = self.file_op(KVM_DEV_VFIO_FILE_ADD, fd, &name) {
            return Err(Refused { error, object: dev });
        }
        self.lock().push(Registered {
            fd,
            name: name.clone(),
            coherent: None,
        });
        Ok(RegisteredDevice {
            reg: Registration {
                kvm: self.clone(),
                fd,
                name,
                done: false,
            },
            dev,
        })
    }

    /// The devices whose files are registered, by name (cdev path or PCI
    /// address).
    pub fn registered(&self) -> Vec<String> {
        self.lock().iter().map(|r| r.name.clone()).collect()
    }

    /// Whether the VM's DMA is cache-coherent, by KVM's rule (any registered
    /// device whose IOMMU cannot enforce coherency makes it non-coherent), from
    /// what this crate knows of the devices: `Some(false)` if one is known not to
    /// enforce it, `Some(true)` if all are known to, `None` otherwise (or with no
    /// device). KVM itself reports nothing about it (no counter, tracepoint or
    /// debugfs entry in Linux 7.3).
    pub fn dma_coherent(&self) -> Option<bool> {
        let r = self.lock();
        if r.iter().any(|d| d.coherent == Some(false)) {
            return Some(false);
        }
        (!r.is_empty() && r.iter().all(|d| d.coherent == Some(true))).then_some(true)
    }

    fn set_coherent(&self, fd: RawFd, coherent: Option<bool>) {
        if let Some(r) = self.lock().iter_mut().find(|r| r.fd == fd) {
            r.coherent = coherent;
        }
    }

    fn unregister(&self, fd: RawFd, name: &str) -> Result<()> {
        let r = self.file_op(KVM_DEV_VFIO_FILE_DEL, fd, name);
        // Whatever KVM answered, the file is not ours to list any more: a failed
        // DEL leaves KVM's reference until the VM goes.
        self.lock().retain(|d| d.fd != fd);
        r
    }
}

/// A registration of a file with KVM, undone (`KVM_DEV_VFIO_FILE_DEL`) before the
/// file can be closed: by [`Registration::end`], or on drop.
#[derive(Debug)]
struct Registration {
    kvm: KvmVfio,
    fd: RawFd,
    name: String,
    done: bool,
}

impl Registration {
    fn end(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.done, true) {
            return Ok(());
        }
        self.kvm.unregister(self.fd, &self.name)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            log::error!("iommufd-kvm: {e}");
        }
    }
}

/// A VFIO device KVM knows (its file registered with the VM's [`KvmVfio`]), not
/// bound yet. Dropping it unregisters, then closes.
#[derive(Debug)]
pub struct RegisteredDevice {
    // Drop order: the registration (FILE_DEL, while the file is open), then the file.
    reg: Registration,
    dev: VfioDevice,
}

impl RegisteredDevice {
    /// Binds the device to `iommufd` under `label`
    /// ([`VfioDevice::bind`]); on failure it comes back, still registered.
    #[allow(clippy::result_large_err)]
    pub fn bind(
        self,
        iommufd: &Iommufd,
        label: u64,
    ) -> Result<KvmDevice, Refused<RegisteredDevice, Error>> {
        let RegisteredDevice { reg, dev } = self;
        match dev.bind(iommufd, label) {
            Ok(bound) => {
                let coherent = enforces_coherency(&bound);
                reg.kvm.set_coherent(reg.fd, coherent);
                Ok(KvmDevice {
                    bound,
                    reg,
                    coherent,
                })
            }
            Err(Refused { error, object }) => Err(Refused {
                error: Error::Vfio(error),
                object: RegisteredDevice { reg, dev: object },
            }),
        }
    }

    /// Unregisters the device from KVM and gives it back.
    pub fn unregister(self) -> Result<VfioDevice> {
        let RegisteredDevice { mut reg, dev } = self;
        reg.end()?;
        Ok(dev)
    }

    /// The device.
    pub fn device(&self) -> &VfioDevice {
        &self.dev
    }
}

/// Whether the device's IOMMU enforces cache coherency (the kernel's
/// `IOMMU_CAP_ENFORCE_CACHE_COHERENCY`), where the hardware information says:
/// Intel VT-d's snoop control (ECAP.SC), AMD always; `None` elsewhere.
fn enforces_coherency(dev: &BoundDevice) -> Option<bool> {
    match dev.hw_info().ok()?.data {
        HwInfoData::IntelVtd { ecap_reg, .. } => Some(ecap_reg >> 7 & 1 == 1),
        HwInfoData::Amd { .. } => Some(true),
        _ => None,
    }
}

/// A VFIO device registered with KVM and bound to an iommufd: what a KVM VMM
/// passes through. It dereferences to its [`BoundDevice`] (and so to its
/// [`iommufd::Device`]): attach it, read its hardware information, program it
/// through its fd.
///
/// Dropping it (or [`KvmDevice::close`]) detaches the device and its PASIDs (if
/// this holds its last handle), unregisters it from KVM, then closes it, which
/// unbinds it; failures are logged, never a panic.
#[derive(Debug)]
pub struct KvmDevice {
    // Drop order: `Drop::drop` detaches and unregisters; then the fields go, the
    // device first (closing the file unbinds it), then the spent registration.
    bound: BoundDevice,
    reg: Registration,
    coherent: Option<bool>,
}

impl Deref for KvmDevice {
    type Target = BoundDevice;

    fn deref(&self) -> &BoundDevice {
        &self.bound
    }
}

impl AsRef<iommufd::Device> for KvmDevice {
    fn as_ref(&self) -> &iommufd::Device {
        self.bound.device()
    }
}

impl KvmDevice {
    /// Whether the device's IOMMU enforces cache coherency, if the hardware
    /// information says ([`KvmVfio::dma_coherent`] for the VM).
    pub fn enforces_coherency(&self) -> Option<bool> {
        self.coherent
    }

    /// The VM's KVM VFIO device it is registered with.
    pub fn kvm_vfio(&self) -> &KvmVfio {
        &self.reg.kvm
    }

    /// Detaches everything, unregisters from KVM and closes the device now,
    /// returning the first error (the later steps still run). If other handles of
    /// the device exist (a vDEVICE holds one), it stays bound, and attached, until
    /// they go; it is unregistered from KVM now.
    pub fn close(mut self) -> Result<()> {
        self.end()
    }

    /// Detaches (if this is the last handle) and unregisters.
    fn end(&mut self) -> Result<()> {
        let mut first: Option<Error> = None;
        let dev = self.bound.device();
        if dev.handles() == 1 {
            for (pasid, _) in dev.attached_pasids() {
                if let Err(e) = dev.detach_pasid(pasid) {
                    first.get_or_insert(e.into());
                }
            }
            if dev.attached_to().is_some() {
                if let Err(e) = dev.detach() {
                    first.get_or_insert(e.into());
                }
            }
        }
        if let Err(e) = self.reg.end() {
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for KvmDevice {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            log::error!("iommufd-kvm: tearing down {}: {e}", self.bound.name());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_their_errno() {
        let e = Error::AlreadyRegistered {
            device: "0000:00:04.0".into(),
        };
        assert_eq!(e.errno(), Some(libc::EEXIST));
        assert!(e.to_string().contains("registered with KVM already"));
        let e = Error::Kvm {
            op: "KVM_DEV_VFIO_FILE_DEL",
            object: "vfio0".into(),
            errno: libc::ENOENT,
        };
        assert_eq!(e.errno(), Some(libc::ENOENT));
        assert!(
            e.to_string()
                .starts_with("KVM_DEV_VFIO_FILE_DEL on vfio0 failed")
        );
        let e = Error::Unsupported {
            errno: libc::ENODEV,
        };
        assert_eq!(e.errno(), Some(libc::ENODEV));
        let e = Error::from(iommufd::Error::from_errno("x", "y", libc::EBUSY));
        assert_eq!(e.errno(), Some(libc::EBUSY));
    }

    /// With `/dev/kvm` (the host, if it has it; the guest lab always): KVM refuses
    /// a file that is not a VFIO device, and the device comes back unregistered.
    #[test]
    fn kvm_refuses_a_file_that_is_not_vfio() {
        if !std::path::Path::new("/dev/kvm").exists() {
            eprintln!("note: no /dev/kvm here; the guest lab runs this path");
            return;
        }
        let vm = kvm_ioctls::Kvm::new()
            .and_then(|k| k.create_vm())
            .expect("a VM on /dev/kvm");
        let kv = match KvmVfio::new(&vm) {
            Ok(kv) => kv,
            Err(Error::Unsupported { .. }) => return, // a host without CONFIG_KVM_VFIO
            Err(e) => panic!("{e}"),
        };
        let null = std::fs::File::open("/dev/null").expect("/dev/null");
        let dev = VfioDevice::from_owned_fd(null.into(), "/dev/null");
        let refused = kv.register(dev).unwrap_err();
        match &refused.error {
            Error::Kvm { op, errno, .. } => {
                assert_eq!((*op, *errno), ("KVM_DEV_VFIO_FILE_ADD", libc::EINVAL))
            }
            e => panic!("{e}"),
        }
        assert_eq!(refused.object.name(), "/dev/null");
        assert!(kv.registered().is_empty());
        assert_eq!(kv.dma_coherent(), None);
        assert!(format!("{kv:?}").contains("registered: []"));
        // Unregistering a file KVM does not have.
        let e = kv
            .unregister(refused.object.as_fd().as_raw_fd(), "/dev/null")
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    }
}
