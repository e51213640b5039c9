//! Nested HWPTs: a guest-owned stage-1 table on a host stage-2 parent.

use std::sync::Arc;

use crate::hwpt::alloc_ioctl;
use crate::ids::kind;
use crate::invalidate::{HwptInvalidation, batch_error, invalidate_raw};
use crate::object::{Object, Parent, sealed::ObjectState};
use crate::{Device, Error, FaultQueue, Hwpt, HwptFlags, Iommufd, Result, Stage1, Viommu};

/// What a nested HWPT is built on: a nest-parent [`Hwpt`] (VT-d), or a [`Viommu`]
/// that wraps one (SMMUv3, AMD, and any IOMMU whose nested HWPTs share vIOMMU
/// state such as a VMID).
///
/// ```no_run
/// use iommufd::{Hwpt, HwptFlags, Ioas, NestingParent};
/// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
/// let s2 = Hwpt::alloc(&Ioas::alloc(dev.iommufd())?, dev, HwptFlags::NEST_PARENT)?;
/// let parent = NestingParent::from(&s2);
/// assert_eq!(parent.raw(), s2.id().raw());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub enum NestingParent {
    /// A HWPT allocated with [`HwptFlags::NEST_PARENT`].
    Hwpt(Hwpt),
    /// A vIOMMU.
    Viommu(Viommu),
}

impl NestingParent {
    /// The raw id of the parent.
    pub fn raw(&self) -> u32 {
        match self {
            NestingParent::Hwpt(h) => h.id().raw(),
            NestingParent::Viommu(v) => v.id().raw(),
        }
    }

    /// The file of the parent.
    pub fn iommufd(&self) -> &Iommufd {
        match self {
            NestingParent::Hwpt(h) => h.iommufd(),
            NestingParent::Viommu(v) => v.iommufd(),
        }
    }

    /// The stage-2 HWPT: the parent itself, or the vIOMMU's.
    pub fn stage2(&self) -> &Hwpt {
        match self {
            NestingParent::Hwpt(h) => h,
            NestingParent::Viommu(v) => v.parent(),
        }
    }

    fn as_parent(&self) -> Arc<dyn Parent> {
        match self {
            NestingParent::Hwpt(h) => h.as_parent(),
            NestingParent::Viommu(v) => v.as_parent(),
        }
    }

    fn check_file(&self, fd: &Iommufd, op: &'static str) -> Result<()> {
        match self {
            NestingParent::Hwpt(h) => h.check_file(fd, op),
            NestingParent::Viommu(v) => v.check_file(fd, op),
        }
    }

    fn describe(&self) -> String {
        match self {
            NestingParent::Hwpt(h) => h.id().to_string(),
            NestingParent::Viommu(v) => v.id().to_string(),
        }
    }
}

impl From<&Hwpt> for NestingParent {
    fn from(h: &Hwpt) -> Self {
        NestingParent::Hwpt(h.clone())
    }
}

impl From<Hwpt> for NestingParent {
    fn from(h: Hwpt) -> Self {
        NestingParent::Hwpt(h)
    }
}

impl From<&Viommu> for NestingParent {
    fn from(v: &Viommu) -> Self {
        NestingParent::Viommu(v.clone())
    }
}

impl From<Viommu> for NestingParent {
    fn from(v: Viommu) -> Self {
        NestingParent::Viommu(v)
    }
}

/// What a nested HWPT keeps beside its id.
#[derive(Debug)]
pub struct NestedHwptState {
    parent: NestingParent,
    stage1: Stage1,
    flags: HwptFlags,
    fault: Option<FaultQueue>,
    label: u64,
}

impl ObjectState for kind::NestedHwpt {
    type State = NestedHwptState;
}

/// A nested hardware page table (`IOMMU_HWPT_ALLOC` with stage-1 data, Linux 6.8):
/// DMA is translated by the guest's stage-1 table (GIOVA to GPA), then by the
/// parent's stage 2 (GPA to HPA, the guest's RAM as the VMM mapped it).
///
/// A shared handle ([`Object`]) that holds its parent (and through it the stage-2
/// HWPT and IOAS) and its fault queue; devices attached to it hold it. When the
/// guest changes its table, [`NestedHwpt::invalidate`] forwards its invalidations
/// (VT-d; SMMUv3 invalidates through the [`Viommu`]).
///
/// ```no_run
/// use iommufd::{Hwpt, HwptFlags, Ioas, MapFlags, NestedHwpt, VtdS1, VtdS1Flags, VtdS1Invalidation};
/// # fn f(dev: &iommufd::Device, guest_pasid_entry_root: u64) -> iommufd::Result<()> {
/// let ioas = Ioas::alloc(dev.iommufd())?; // guest RAM mapped at IOVA = GPA
/// let s2 = Hwpt::alloc(&ioas, dev, HwptFlags::NEST_PARENT)?;
/// let s1 = VtdS1::new(guest_pasid_entry_root, 48, VtdS1Flags::empty())
///     .map_err(|source| iommufd::Error::Stage1 { op: "guest PASID entry", source })?;
/// let nested = NestedHwpt::alloc(&s2, dev, s1.into(), HwptFlags::empty(), None)?;
/// dev.attach(&nested)?;
/// // The guest invalidated 8 pages at GIOVA 1 MiB:
/// nested.invalidate(&[VtdS1Invalidation::range(1 << 20, 8, false).expect("aligned")])?;
/// # Ok(()) }
/// ```
pub type NestedHwpt = Object<kind::NestedHwpt>;

impl Object<kind::NestedHwpt> {
    /// Allocates a nested HWPT for `dev` on `parent`, translating through the
    /// guest's `stage1` table; `faults` receives its I/O page faults (Linux 6.11).
    ///
    /// `flags` may only be [`HwptFlags::PASID`] (Linux 6.15): nesting and dirty
    /// tracking are properties of the stage-2 parent. A HWPT parent must have been
    /// allocated with [`HwptFlags::NEST_PARENT`]. Both are
    /// [`Error::InvalidArgument`] before the kernel is asked. The kernel refuses a
    /// `stage1` format the device's IOMMU does not have with
    /// [`Error::Unsupported`], and one it finds invalid with an `EINVAL` or `EIO`
    /// [`Error::Ioctl`].
    pub fn alloc(
        parent: impl Into<NestingParent>,
        dev: &impl AsRef<Device>,
        stage1: Stage1,
        flags: HwptFlags,
        faults: Option<&FaultQueue>,
    ) -> Result<NestedHwpt> {
        const OP: &str = "IOMMU_HWPT_ALLOC";
        let parent = parent.into();
        let dev = dev.as_ref();
        let fd = parent.iommufd().clone();
        dev.check_file(&fd, OP)?;
        parent.check_file(&fd, OP)?;
        if let Some(q) = faults {
            q.check_file(&fd, OP)?;
        }
        if !(flags - HwptFlags::PASID).is_empty() {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "a nested HWPT takes only the PASID flag (nesting and dirty tracking are the parent's)",
            });
        }
        if let NestingParent::Hwpt(h) = &parent {
            if !h.flags().contains(HwptFlags::NEST_PARENT) {
                return Err(Error::InvalidArgument {
                    op: OP,
                    reason: "the parent HWPT was not allocated with HwptFlags::NEST_PARENT",
                });
            }
        }
        let bytes = stage1.to_bytes();
        let out = alloc_ioctl(
            &fd,
            flags,
            dev.id().raw(),
            parent.raw(),
            Some((stage1.data_type(), &bytes)),
            faults,
        )
        .map_err(|e| match e.0 {
            libc::ENOENT => Error::naming_object(OP, dev.id(), e.0),
            errno => Error::from_errno(
                OP,
                format_args!(
                    "{} on {} for {}",
                    stage1.name(),
                    parent.describe(),
                    dev.id()
                ),
                errno,
            ),
        })?;
        let mut parents = vec![parent.as_parent()];
        parents.extend(faults.map(|q| q.as_parent()));
        Ok(Object::from_parts(
            &fd,
            out,
            parents,
            NestedHwptState {
                parent,
                stage1,
                flags,
                fault: faults.cloned(),
                label: dev.label(),
            },
        ))
    }

    /// The HWPT's id as a [`HwptId`](crate::HwptId): the kernel numbers nested and
    /// paging HWPTs alike, and [`Device::attach`] answers with this.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device, nested: &iommufd::NestedHwpt) -> iommufd::Result<()> {
    /// assert_eq!(dev.attach(nested)?, nested.hwpt_id());
    /// # Ok(()) }
    /// ```
    pub fn hwpt_id(&self) -> crate::HwptId {
        crate::HwptId::new(self.id().raw(), self.iommufd().token())
    }

    /// What the HWPT is built on.
    pub fn parent(&self) -> &NestingParent {
        &self.state().parent
    }

    /// The guest's stage-1 table it was allocated with.
    pub fn stage1(&self) -> &Stage1 {
        &self.state().stage1
    }

    /// The flags it was allocated with.
    pub fn flags(&self) -> HwptFlags {
        self.state().flags
    }

    /// The fault queue it reports I/O page faults to, if any.
    pub fn fault_queue(&self) -> Option<&FaultQueue> {
        self.state().fault.as_ref()
    }

    /// Invalidates the HWPT's caches of the guest's stage-1 table: all `entries` in
    /// one `IOMMU_HWPT_INVALIDATE` call (Linux 6.8), however many.
    ///
    /// If the kernel stops part way, [`Error::InvalidationIncomplete`] says how many
    /// entries were handled and which one was refused, with the label of the device
    /// the HWPT was allocated for (an IOMMU that has no invalidation of this type
    /// refuses the first entry, often with `EOPNOTSUPP` or `EINVAL`:
    /// [`NestedHwpt::supports_invalidation`] asks first). A kernel without the
    /// command gives [`Error::Unsupported`].
    ///
    /// ```no_run
    /// use iommufd::{Error, VtdS1Invalidation};
    /// # fn f(nested: &iommufd::NestedHwpt, batch: &[VtdS1Invalidation]) -> iommufd::Result<()> {
    /// match nested.invalidate(batch) {
    ///     Ok(()) => {}
    ///     Err(Error::InvalidationIncomplete { handled, .. }) => {
    ///         // Report the failure of descriptor `handled` to the guest.
    ///     }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn invalidate<E: HwptInvalidation>(&self, entries: &[E]) -> Result<()> {
        let label = self.state().label;
        invalidate_raw(self.iommufd(), self.id().raw(), entries)
            .map_err(|f| batch_error(self.id().to_string(), entries, f, |_| Some(label)))
    }

    /// Whether the kernel takes entries of type `E` for this HWPT: an
    /// `IOMMU_HWPT_INVALIDATE` with no entries, which invalidates nothing.
    ///
    /// ```no_run
    /// use iommufd::VtdS1Invalidation;
    /// # fn f(nested: &iommufd::NestedHwpt) -> iommufd::Result<()> {
    /// if !nested.supports_invalidation::<VtdS1Invalidation>()? {
    ///     println!("the IOMMU cannot take VT-d stage-1 invalidations");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn supports_invalidation<E: HwptInvalidation>(&self) -> Result<bool> {
        probe_invalidation::<E>(self.iommufd(), self.id().raw(), self.id().to_string())
    }
}

/// A zero-entry `IOMMU_HWPT_INVALIDATE` of type `E` on object `id`.
pub(crate) fn probe_invalidation<E: crate::InvalidationEntry>(
    fd: &Iommufd,
    id: u32,
    object: String,
) -> Result<bool> {
    match invalidate_raw::<E>(fd, id, &[]) {
        Ok(()) => Ok(true),
        Err(f) if crate::error::is_unsupported_errno(f.errno.0) || f.errno.0 == libc::EINVAL => {
            Ok(false)
        }
        Err(f) => Err(Error::naming_object(
            "IOMMU_HWPT_INVALIDATE",
            object,
            f.errno.0,
        )),
    }
}

#[cfg(test)]
impl Object<kind::NestedHwpt> {
    /// A handle for an id this file may not have, for error-path tests.
    pub(crate) fn fake(parent: NestingParent, id: u32) -> NestedHwpt {
        Object::from_parts(
            &parent.iommufd().clone(),
            id,
            vec![parent.as_parent()],
            NestedHwptState {
                parent,
                stage1: Stage1::Vtd(
                    crate::VtdS1::new(0, 48, crate::VtdS1Flags::empty()).expect("valid"),
                ),
                flags: HwptFlags::empty(),
                fault: None,
                label: 7,
            },
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::iommufd::tests::null;
    use crate::{Binding, Ioas, PageTable, SmmuV3Ste, VtdS1Invalidation};

    /// A binding whose commands succeed without a kernel.
    #[derive(Debug)]
    pub(crate) struct Nothing;
    impl Binding for Nothing {
        fn attach(&self, _: Option<u32>, pt: u32, _: bool) -> Result<u32> {
            Ok(pt)
        }
        fn detach(&self, _: Option<u32>) -> Result<()> {
            Ok(())
        }
    }

    /// A device of `fd` with id `id` and label `label`, bound to nothing.
    pub(crate) fn device(fd: &Iommufd, id: u32, label: u64) -> Device {
        Device::new(
            fd.reserve_label(label).expect("label"),
            id,
            "test",
            Box::new(Nothing),
            None,
        )
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn refused_before_the_kernel() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let dev = device(&fd, 2, 0x10);
        let plain = Hwpt::fake(&ioas, 3);
        let s1 = Stage1::from(SmmuV3Ste::abort());
        let e = NestedHwpt::alloc(&plain, &dev, s1, HwptFlags::empty(), None).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let parent = Hwpt::fake_with_flags(&ioas, 4, HwptFlags::NEST_PARENT);
        for flags in [HwptFlags::NEST_PARENT, HwptFlags::DIRTY_TRACKING] {
            let e = NestedHwpt::alloc(&parent, &dev, s1, flags, None).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        }
        let other = null();
        let foreign = device(&other, 2, 0x10);
        let e = NestedHwpt::alloc(&parent, &foreign, s1, HwptFlags::empty(), None).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        // Everything else reaches the kernel (here ENOTTY).
        let e = NestedHwpt::alloc(&parent, &dev, s1, HwptFlags::PASID, None).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(e.to_string().contains("hwpt 4"), "{e}");
        let _ = (parent.into_id(), plain.into_id(), ioas.into_id());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn wrappers_on_a_non_iommufd() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let parent = Hwpt::fake_with_flags(&ioas, 4, HwptFlags::NEST_PARENT);
        let nested = NestedHwpt::fake(NestingParent::from(&parent), 5);
        assert_eq!(nested.hwpt_id().raw(), 5);
        assert_eq!(nested.parent().raw(), 4);
        assert_eq!(nested.parent().stage2().id(), parent.id());
        assert!(nested.parent().iommufd().same_file(&fd));
        assert!(nested.fault_queue().is_none());
        assert_eq!(nested.flags(), HwptFlags::empty());
        assert!(matches!(nested.stage1(), Stage1::Vtd(_)));
        assert_eq!(
            parent.handles(),
            3,
            "the nested HWPT holds its parent (twice: state and core)"
        );
        let e = nested.invalidate(&[VtdS1Invalidation::all()]).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(!nested.supports_invalidation::<VtdS1Invalidation>().unwrap());
        let pt = PageTable::from(&nested);
        assert_eq!((pt.raw(), pt.to_string()), (5, "nested hwpt 5".to_string()));
        assert!(pt.same(&PageTable::from(nested.clone())));
        assert!(!pt.same(&PageTable::from(&parent)));
        let dev = device(&fd, 2, 0x10);
        assert_eq!(dev.attach(&nested).unwrap().raw(), 5);
        assert!(matches!(dev.attached_to(), Some(PageTable::Nested(_))));
        dev.detach().unwrap();
        let _ = (nested.into_id(), parent.into_id(), ioas.into_id());
    }
}
