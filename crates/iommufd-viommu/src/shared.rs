//! One IOAS for every device of a VM without a vIOMMU.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use iommufd::{Device, Hwpt, HwptFlags, HwptId, Ioas};

use crate::dirty;

/// One IOAS shared by every passthrough device of a VM without a vIOMMU: guest RAM
/// is mapped (and pinned, and charged against the memlock limit) once, however
/// many devices there are.
///
/// Devices are attached through a HWPT compatibility search, as QEMU does: each
/// HWPT made so far is tried (the kernel answers `EINVAL` when the device's IOMMU
/// cannot use it), and a new one is allocated only if none fits. Devices behind
/// one IOMMU thus share one HWPT (one set of IOMMU page tables) too. A shared
/// handle: clones are the same.
///
/// ```no_run
/// use iommufd::{HwptFlags, Ioas, Iommufd};
/// use iommufd_viommu::SharedIoas;
/// # fn f(devices: &[iommufd::Device]) -> iommufd::Result<()> {
/// let fd = Iommufd::open()?;
/// let shared = SharedIoas::new(Ioas::alloc(&fd)?, HwptFlags::DIRTY_TRACKING);
/// // ... map guest RAM into shared.ioas() once ...
/// for dev in devices {
///     shared.attach(dev)?; // reuses a HWPT where the IOMMU allows
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SharedIoas {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    ioas: Ioas,
    flags: HwptFlags,
    hwpts: Vec<Hwpt>,
    /// Dirty tracking is on (new HWPTs get it too).
    tracking: bool,
}

impl fmt::Debug for SharedIoas {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = self.lock();
        f.debug_struct("SharedIoas")
            .field("ioas", &i.ioas.id())
            .field("flags", &i.flags)
            .field("hwpts", &i.hwpts.iter().map(|h| h.id()).collect::<Vec<_>>())
            .finish()
    }
}

impl SharedIoas {
    /// Shares `ioas`; new HWPTs are allocated with `flags` (falling back to none
    /// for a device whose IOMMU lacks one, e.g. dirty tracking).
    pub fn new(ioas: Ioas, flags: HwptFlags) -> Self {
        SharedIoas {
            inner: Arc::new(Mutex::new(Inner {
                ioas,
                flags,
                hwpts: Vec::new(),
                tracking: false,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Updates are single pushes and retains: a poisoned list is consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The IOAS.
    pub fn ioas(&self) -> Ioas {
        self.lock().ioas.clone()
    }

    /// The HWPTs made so far.
    pub fn hwpts(&self) -> Vec<Hwpt> {
        self.lock().hwpts.clone()
    }

    /// Attaches `dev` to a HWPT of the IOAS: the first existing one its IOMMU
    /// accepts, else a new one. Returns the HWPT's id.
    pub fn attach(&self, dev: &impl AsRef<Device>) -> iommufd::Result<HwptId> {
        let dev = dev.as_ref();
        let mut inner = self.lock();
        for h in &inner.hwpts {
            match dev.attach(h) {
                Ok(id) => return Ok(id),
                // Incompatible (another IOMMU, or a flag this one lacks): next.
                Err(e) if e.errno() == Some(libc::EINVAL) => continue,
                Err(e) => return Err(e),
            }
        }
        let hwpt = match Hwpt::alloc(&inner.ioas, dev, inner.flags) {
            Err(e) if e.is_unsupported() && !inner.flags.is_empty() => {
                Hwpt::alloc(&inner.ioas, dev, HwptFlags::empty())?
            }
            other => other?,
        };
        if inner.tracking {
            // Migrating: the new device's DMA must be tracked from the start.
            dirty::set_tracking(std::slice::from_ref(&hwpt), true)?;
        }
        let id = dev.attach(&hwpt)?;
        inner.hwpts.push(hwpt);
        Ok(id)
    }

    /// Starts (or stops) tracking the pages devices write, on every HWPT and on
    /// those made later, for live migration; read them with
    /// [`GuestRamSync::harvest_dirty`](crate::GuestRamSync::harvest_dirty).
    ///
    /// Fails with [`iommufd::Error::Unsupported`], changing nothing, if a device's
    /// IOMMU cannot track (its HWPT was made without
    /// [`HwptFlags::DIRTY_TRACKING`]): its DMA writes would be lost to the
    /// migration.
    pub fn set_dirty_tracking(&self, on: bool) -> iommufd::Result<()> {
        let mut inner = self.lock();
        dirty::set_tracking(&inner.hwpts, on)?;
        inner.tracking = on;
        Ok(())
    }

    /// Whether dirty tracking is on ([`SharedIoas::set_dirty_tracking`]).
    pub fn dirty_tracking(&self) -> bool {
        self.lock().tracking
    }

    /// Forgets the HWPTs no device uses any more (they are destroyed); returns how
    /// many.
    pub fn prune(&self) -> usize {
        let mut inner = self.lock();
        let before = inner.hwpts.len();
        inner.hwpts.retain(|h| h.handles() > 1);
        before - inner.hwpts.len()
    }
}
