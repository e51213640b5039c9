//! Hardware page tables and dirty tracking.

use bitflags::bitflags;
use iommufd_uapi as uapi;

use crate::ids::kind;
use crate::object::{Object, sealed::ObjectState};
use crate::stage1::Stage1Bytes;
use crate::sys::{Errno, arg};
use crate::{DirtyBitmap, Error, FaultQueue, Ioas, Iova, Result};

bitflags! {
    /// Flags of [`Hwpt::alloc`] (`enum iommufd_hwpt_alloc_flags`).
    ///
    /// ```
    /// use iommufd::HwptFlags;
    /// let flags = HwptFlags::DIRTY_TRACKING | HwptFlags::PASID;
    /// assert!(flags.contains(HwptFlags::PASID));
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct HwptFlags: u32 {
        /// The HWPT may be the parent (stage 2) of nested HWPTs
        /// (`IOMMU_HWPT_ALLOC_NEST_PARENT`).
        const NEST_PARENT = uapi::IOMMU_HWPT_ALLOC_NEST_PARENT;
        /// The HWPT can track DMA writes (`IOMMU_HWPT_ALLOC_DIRTY_TRACKING`, Linux
        /// 6.7); fails with `EOPNOTSUPP` unless the device's
        /// [`HwCapabilities::DIRTY_TRACKING`](crate::HwCapabilities::DIRTY_TRACKING)
        /// is set.
        const DIRTY_TRACKING = uapi::IOMMU_HWPT_ALLOC_DIRTY_TRACKING;
        /// The HWPT may be attached to PASIDs as well as to the whole device
        /// (`IOMMU_HWPT_ALLOC_PASID`, Linux 6.15).
        const PASID = uapi::IOMMU_HWPT_ALLOC_PASID;
    }
}

bitflags! {
    /// Flags of [`Hwpt::get_dirty_bitmap`] (`enum iommufd_hwpt_get_dirty_bitmap_flags`).
    ///
    /// ```
    /// use iommufd::DirtyReadFlags;
    /// assert!(DirtyReadFlags::empty().is_empty()); // read and clear
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct DirtyReadFlags: u32 {
        /// Read the dirty state without clearing it
        /// (`IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR`): for a last read before the
        /// range is unmapped anyway, which saves the IOTLB flush.
        const NO_CLEAR = uapi::IOMMU_HWPT_GET_DIRTY_BITMAP_NO_CLEAR;
    }
}

/// What a HWPT keeps beside its id.
#[derive(Debug)]
pub struct HwptState {
    flags: HwptFlags,
    fault: Option<FaultQueue>,
}

/// `IOMMU_HWPT_ALLOC`, shared by paging and nested HWPTs: returns the new id.
pub(crate) fn alloc_ioctl(
    fd: &crate::Iommufd,
    flags: HwptFlags,
    dev: u32,
    pt: u32,
    data: Option<(u32, &Stage1Bytes)>,
    fault: Option<&FaultQueue>,
) -> std::result::Result<u32, Errno> {
    let mut a: uapi::iommu_hwpt_alloc = arg();
    a.flags = flags.bits();
    a.dev_id = dev;
    a.pt_id = pt;
    a.data_type = uapi::IOMMU_HWPT_DATA_NONE;
    if let Some((data_type, bytes)) = data {
        let (ptr, len) = bytes.as_raw();
        a.data_type = data_type;
        a.data_len = len;
        a.data_uptr = ptr as u64;
    }
    if let Some(q) = fault {
        a.flags |= uapi::IOMMU_HWPT_FAULT_ID_VALID;
        a.fault_id = q.id().raw();
    }
    // SAFETY: `data_uptr` is 0 with `data_len` 0, or points to `data_len` bytes of
    // a stage-1 structure borrowed for the call, which the kernel only reads.
    // `fault_id` is not a pointer.
    unsafe { fd.ioctl(uapi::IOMMU_HWPT_ALLOC, &mut a) }?;
    Ok(a.out_hwpt_id)
}

impl ObjectState for kind::Hwpt {
    type State = HwptState;
}

/// A kernel-managed (paging) hardware page table (`IOMMU_HWPT_ALLOC`): an IOMMU
/// domain that mirrors the mappings of an IOAS, allocated explicitly so that its
/// flags can be chosen (dirty tracking, nesting parent, PASID) and so that several
/// devices can share it.
///
/// A shared handle ([`Object`]) that holds its IOAS; devices attached to it hold it.
///
/// ```no_run
/// use iommufd::{DirtyReadFlags, Hwpt, HwptFlags, Ioas, Iova};
/// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
/// let ioas = Ioas::alloc(dev.iommufd())?;
/// let hwpt = Hwpt::alloc(&ioas, dev, HwptFlags::DIRTY_TRACKING)?;
/// dev.attach(&hwpt)?;
/// // ... map guest memory into `ioas`, run the guest ...
/// hwpt.enable_dirty_tracking()?;
/// let dirty = hwpt.get_dirty_bitmap(Iova(0), 1 << 30, 4096, DirtyReadFlags::empty())?;
/// for iova in dirty.dirty_iovas() {
///     println!("dirty page at {iova}");
/// }
/// # Ok(()) }
/// ```
pub type Hwpt = Object<kind::Hwpt>;

impl Object<kind::Hwpt> {
    /// Allocates a paging HWPT for `dev` that maps what `ioas` maps
    /// (`IOMMU_HWPT_ALLOC` with `IOMMU_HWPT_DATA_NONE`); the HWPT holds the IOAS.
    ///
    /// Fails with [`Error::WrongIommufd`] if the IOAS or the device belongs to
    /// another file, [`Error::Unsupported`] if the kernel or the device's IOMMU lacks
    /// a flag, and [`Error::NotFound`] if the device or IOAS is gone.
    ///
    /// ```no_run
    /// use iommufd::{Hwpt, HwptFlags, Ioas};
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let ioas = Ioas::alloc(dev.iommufd())?;
    /// // Dirty tracking where the IOMMU has it, a plain HWPT otherwise.
    /// let hwpt = match Hwpt::alloc(&ioas, dev, HwptFlags::DIRTY_TRACKING) {
    ///     Err(e) if e.is_unsupported() => Hwpt::alloc(&ioas, dev, HwptFlags::empty())?,
    ///     other => other?,
    /// };
    /// # Ok(()) }
    /// ```
    pub fn alloc(ioas: &Ioas, dev: &impl AsRef<crate::Device>, flags: HwptFlags) -> Result<Hwpt> {
        Self::alloc_inner(ioas, dev.as_ref(), flags, None)
    }

    /// Like [`Hwpt::alloc`], for a device that can take I/O page faults (PRI, or a
    /// stall-capable SMMU): DMA to an unmapped IOVA is reported in `faults` instead
    /// of failing (`IOMMU_HWPT_FAULT_ID_VALID`, Linux 6.11). The HWPT holds the
    /// queue.
    ///
    /// ```no_run
    /// use iommufd::{FaultQueue, Hwpt, HwptFlags, Ioas};
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let ioas = Ioas::alloc(dev.iommufd())?;
    /// let faults = FaultQueue::alloc(dev.iommufd())?;
    /// let hwpt = Hwpt::alloc_iopf(&ioas, dev, HwptFlags::empty(), &faults)?;
    /// dev.attach(&hwpt)?;
    /// # Ok(()) }
    /// ```
    pub fn alloc_iopf(
        ioas: &Ioas,
        dev: &impl AsRef<crate::Device>,
        flags: HwptFlags,
        faults: &FaultQueue,
    ) -> Result<Hwpt> {
        Self::alloc_inner(ioas, dev.as_ref(), flags, Some(faults))
    }

    fn alloc_inner(
        ioas: &Ioas,
        dev: &crate::Device,
        flags: HwptFlags,
        fault: Option<&FaultQueue>,
    ) -> Result<Hwpt> {
        const OP: &str = "IOMMU_HWPT_ALLOC";
        let fd = ioas.iommufd();
        dev.check_file(fd, OP)?;
        if let Some(q) = fault {
            q.check_file(fd, OP)?;
        }
        let out =
            alloc_ioctl(fd, flags, dev.id().raw(), ioas.id().raw(), None, fault).map_err(|e| {
                match e.0 {
                    // ENOENT: the device is gone. EINVAL: the kernel's answer for a `pt_id`
                    // that names no object: say so if the IOAS is gone.
                    libc::ENOENT => Error::naming_object(OP, dev.id(), e.0),
                    libc::EINVAL if !ioas.exists() => Error::NotFound {
                        op: OP,
                        object: ioas.id().to_string(),
                        errno: e.0,
                    },
                    errno => Error::from_errno(
                        OP,
                        format_args!("{} with {}", dev.id(), ioas.id()),
                        errno,
                    ),
                }
            })?;
        let mut parents = vec![ioas.as_parent()];
        parents.extend(fault.map(|q| q.as_parent()));
        Ok(Object::from_parts(
            fd,
            out,
            parents,
            HwptState {
                flags,
                fault: fault.cloned(),
            },
        ))
    }

    /// The fault queue the HWPT reports I/O page faults to, if it was allocated
    /// with one ([`Hwpt::alloc_iopf`]).
    pub fn fault_queue(&self) -> Option<&FaultQueue> {
        self.state().fault.as_ref()
    }

    /// The flags it was allocated with.
    ///
    /// ```no_run
    /// use iommufd::{Hwpt, HwptFlags, Ioas};
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let hwpt = Hwpt::alloc(&Ioas::alloc(dev.iommufd())?, dev, HwptFlags::PASID)?;
    /// assert_eq!(hwpt.flags(), HwptFlags::PASID);
    /// # Ok(()) }
    /// ```
    pub fn flags(&self) -> HwptFlags {
        self.state().flags
    }

    /// Starts tracking DMA writes (`IOMMU_HWPT_SET_DIRTY_TRACKING`, Linux 6.7), e.g.
    /// when live migration starts. The HWPT must have been allocated with
    /// [`HwptFlags::DIRTY_TRACKING`].
    ///
    /// ```no_run
    /// # fn f(hwpt: &iommufd::Hwpt) -> iommufd::Result<()> {
    /// hwpt.enable_dirty_tracking()?; // live migration starts
    /// // ... copy guest memory, then harvest with `get_dirty_bitmap` ...
    /// hwpt.disable_dirty_tracking()?;
    /// # Ok(()) }
    /// ```
    pub fn enable_dirty_tracking(&self) -> Result<()> {
        self.set_dirty_tracking(uapi::IOMMU_HWPT_DIRTY_TRACKING_ENABLE)
    }

    /// Stops tracking DMA writes (`IOMMU_HWPT_SET_DIRTY_TRACKING`).
    ///
    /// ```no_run
    /// # fn f(hwpt: &iommufd::Hwpt) -> iommufd::Result<()> {
    /// hwpt.disable_dirty_tracking()?; // migration cancelled or done
    /// # Ok(()) }
    /// ```
    pub fn disable_dirty_tracking(&self) -> Result<()> {
        self.set_dirty_tracking(0)
    }

    fn set_dirty_tracking(&self, flags: u32) -> Result<()> {
        let mut a: uapi::iommu_hwpt_set_dirty_tracking = arg();
        a.hwpt_id = self.id().raw();
        a.flags = flags;
        self.iommufd()
            .ioctl_plain(uapi::IOMMU_HWPT_SET_DIRTY_TRACKING, &mut a)
            .map_err(|e| Error::naming_object("IOMMU_HWPT_SET_DIRTY_TRACKING", self.id(), e.0))
    }

    /// Reads which `page_size` pages of `iova..iova + len` DMA has written since the
    /// last read (`IOMMU_HWPT_GET_DIRTY_BITMAP`, Linux 6.7), clearing that state
    /// unless `flags` has [`DirtyReadFlags::NO_CLEAR`].
    ///
    /// `page_size` must be a power of two, and `iova` and `len` multiples of it and
    /// of the IOAS alignment; `page_size` may differ from the IOMMU's page size (the
    /// kernel converts). See [`DirtyBitmap::new`] for the checks made here.
    ///
    /// Read mapped ranges only: over a range with an unmapped hole, Linux (7.3 and
    /// earlier) reports success but only the pages before the hole.
    ///
    /// ```no_run
    /// use iommufd::{DirtyReadFlags, Iova};
    /// # fn f(hwpt: &iommufd::Hwpt) -> iommufd::Result<()> {
    /// // 1 GiB of guest memory at IOVA 0, in 4 KiB pages; reading clears the state.
    /// let dirty = hwpt.get_dirty_bitmap(Iova(0), 1 << 30, 4096, DirtyReadFlags::empty())?;
    /// assert_eq!(dirty.pages(), 1 << 18);
    /// for iova in dirty.dirty_iovas() {
    ///     println!("copy the page at {iova} again");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn get_dirty_bitmap(
        &self,
        iova: Iova,
        len: u64,
        page_size: u64,
        flags: DirtyReadFlags,
    ) -> Result<DirtyBitmap> {
        let mut bitmap = DirtyBitmap::new(iova, len, page_size)?;
        let mut a: uapi::iommu_hwpt_get_dirty_bitmap = arg();
        a.hwpt_id = self.id().raw();
        a.flags = flags.bits();
        a.iova = iova.raw();
        a.length = len;
        a.page_size = page_size;
        a.data = bitmap.words_mut().as_mut_ptr() as u64;
        // SAFETY: `data` points to the bitmap's words, zeroed and long enough for one
        // bit per page of `len` (`DirtyBitmap::new` sizes them so), exclusively
        // borrowed here; the kernel writes only bits of pages in `iova..iova + len`.
        unsafe {
            self.iommufd()
                .ioctl(uapi::IOMMU_HWPT_GET_DIRTY_BITMAP, &mut a)
        }
        .map_err(|e| Error::naming_object("IOMMU_HWPT_GET_DIRTY_BITMAP", self.id(), e.0))?;
        Ok(bitmap)
    }
}

#[cfg(test)]
impl Object<kind::Hwpt> {
    /// A handle for an id this file may not have, on `ioas`, for error-path tests.
    pub(crate) fn fake(ioas: &Ioas, id: u32) -> Hwpt {
        Self::fake_with_flags(ioas, id, HwptFlags::empty())
    }

    /// [`Hwpt::fake`] with `flags`.
    pub(crate) fn fake_with_flags(ioas: &Ioas, id: u32, flags: HwptFlags) -> Hwpt {
        Object::from_parts(
            ioas.iommufd(),
            id,
            vec![ioas.as_parent()],
            HwptState { flags, fault: None },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::tests::null;

    #[test]
    fn flags_match_the_kernel() {
        assert_eq!(HwptFlags::NEST_PARENT.bits(), 1);
        assert_eq!(HwptFlags::DIRTY_TRACKING.bits(), 2);
        assert_eq!(HwptFlags::PASID.bits(), 8);
        assert_eq!(DirtyReadFlags::NO_CLEAR.bits(), 1);
    }

    // Every wrapper reaches the kernel (here /dev/null, which answers ENOTTY).
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn wrappers_on_a_non_iommufd() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 4);
        let hwpt = Hwpt::fake(&ioas, 5);
        assert_eq!(hwpt.id().raw(), 5);
        assert!(hwpt.iommufd().same_file(&fd));
        assert_eq!(hwpt.flags(), HwptFlags::empty());
        assert_eq!(ioas.handles(), 2, "the HWPT holds its IOAS");
        let e = hwpt.enable_dirty_tracking().unwrap_err();
        assert!(
            e.to_string()
                .contains("IOMMU_HWPT_SET_DIRTY_TRACKING on hwpt 5"),
            "{e}"
        );
        assert!(hwpt.disable_dirty_tracking().unwrap_err().is_unsupported());
        let e = hwpt
            .get_dirty_bitmap(Iova(0), 8192, 4096, DirtyReadFlags::NO_CLEAR)
            .unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        let e = hwpt
            .get_dirty_bitmap(Iova(0), 8192, 3, DirtyReadFlags::empty())
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let r = hwpt.destroy().unwrap_err();
        assert!(r.error.is_unsupported());
        let _ = (r.object.into_id(), ioas.into_id());
    }
}

#[cfg(test)]
mod iopf_tests {
    use super::*;
    use crate::iommufd::tests::null;

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn iopf_hwpts_hold_their_queue() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let dev = crate::nested::tests::device(&fd, 2, 0x20);
        let (r, _w) = crate::eventq::fakes::pipe();
        let faults = FaultQueue::fake(&fd, 3, r);
        let e = Hwpt::alloc_iopf(&ioas, &dev, HwptFlags::empty(), &faults).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert_eq!(faults.handles(), 1, "nothing kept after a failure");
        let other = null();
        let (r2, _w2) = crate::eventq::fakes::pipe();
        let foreign = FaultQueue::fake(&other, 3, r2);
        let e = Hwpt::alloc_iopf(&ioas, &dev, HwptFlags::empty(), &foreign).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        assert!(FaultQueue::alloc(&fd).unwrap_err().is_unsupported());
        let hwpt = Hwpt::fake(&ioas, 4);
        assert!(hwpt.fault_queue().is_none());
        let _ = (
            hwpt.into_id(),
            faults.into_id(),
            foreign.into_id(),
            ioas.into_id(),
        );
    }
}
