//! Devices bound to an iommufd, and what they are attached to.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::hw_info::query_hw_info;
use crate::labels::LabelGuard;
use crate::{
    DeviceId, Error, HwInfo, Hwpt, HwptId, Ioas, Iommufd, LabelReservation, NestedHwpt, Refused,
    Result,
};

/// What a device can be attached to: an IOAS (the kernel then picks or creates a
/// HWPT for it) or a HWPT.
///
/// Built from a handle (`&Ioas`, `&Hwpt`, or one of those by value), it holds that
/// handle: a device keeps what it is attached to alive until it is detached.
///
/// ```no_run
/// use iommufd::{Ioas, Iommufd, PageTable};
/// let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// let pt = PageTable::from(&ioas);
/// assert_eq!(pt.raw(), ioas.id().raw());
/// assert_eq!(pt.to_string(), ioas.id().to_string());
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Clone, Debug)]
pub enum PageTable {
    /// An I/O address space.
    Ioas(Ioas),
    /// A hardware page table.
    Hwpt(Hwpt),
    /// A nested hardware page table (the guest's stage 1 on a stage-2 parent).
    Nested(NestedHwpt),
}

impl PageTable {
    /// The raw id the kernel uses.
    ///
    /// ```no_run
    /// # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// assert_eq!(iommufd::PageTable::from(&ioas).raw(), ioas.id().raw());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn raw(&self) -> u32 {
        match self {
            PageTable::Ioas(i) => i.id().raw(),
            PageTable::Hwpt(h) => h.id().raw(),
            PageTable::Nested(n) => n.id().raw(),
        }
    }

    /// The file the page table belongs to.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = iommufd::Ioas::alloc(&fd)?;
    /// assert!(iommufd::PageTable::from(&ioas).iommufd().same_file(&fd));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iommufd(&self) -> &Iommufd {
        match self {
            PageTable::Ioas(i) => i.iommufd(),
            PageTable::Hwpt(h) => h.iommufd(),
            PageTable::Nested(n) => n.iommufd(),
        }
    }

    /// Fails with [`Error::WrongIommufd`] unless the page table belongs to `fd`.
    pub(crate) fn check_file(&self, fd: &Iommufd, op: &'static str) -> Result<()> {
        match self {
            PageTable::Ioas(i) => i.check_file(fd, op),
            PageTable::Hwpt(h) => h.check_file(fd, op),
            PageTable::Nested(n) => n.check_file(fd, op),
        }
    }

    /// Whether `self` and `other` are the same kernel object.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = iommufd::Ioas::alloc(&fd)?;
    /// use iommufd::PageTable;
    /// assert!(PageTable::from(&ioas).same(&PageTable::from(ioas.clone())));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn same(&self, other: &PageTable) -> bool {
        match (self, other) {
            (PageTable::Ioas(a), PageTable::Ioas(b)) => a.id() == b.id(),
            (PageTable::Hwpt(a), PageTable::Hwpt(b)) => a.id() == b.id(),
            (PageTable::Nested(a), PageTable::Nested(b)) => a.id() == b.id(),
            _ => false,
        }
    }
}

impl fmt::Display for PageTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PageTable::Ioas(i) => i.id().fmt(f),
            PageTable::Hwpt(h) => h.id().fmt(f),
            PageTable::Nested(n) => n.id().fmt(f),
        }
    }
}

impl From<&Ioas> for PageTable {
    fn from(ioas: &Ioas) -> PageTable {
        PageTable::Ioas(ioas.clone())
    }
}

impl From<Ioas> for PageTable {
    fn from(ioas: Ioas) -> PageTable {
        PageTable::Ioas(ioas)
    }
}

impl From<&Hwpt> for PageTable {
    fn from(hwpt: &Hwpt) -> PageTable {
        PageTable::Hwpt(hwpt.clone())
    }
}

impl From<Hwpt> for PageTable {
    fn from(hwpt: Hwpt) -> PageTable {
        PageTable::Hwpt(hwpt)
    }
}

impl From<&NestedHwpt> for PageTable {
    fn from(hwpt: &NestedHwpt) -> PageTable {
        PageTable::Nested(hwpt.clone())
    }
}

impl From<NestedHwpt> for PageTable {
    fn from(hwpt: NestedHwpt) -> PageTable {
        PageTable::Nested(hwpt)
    }
}

/// How a device is bound to an iommufd: the binding layer's side of a
/// [`Device`].
///
/// A binding layer (iommufd-vfio for VFIO device cdevs, the crate's `selftest`
/// module for the kernel's mock devices) implements it with its own commands.
/// Dropping the binding unbinds the device (closes the cdev, destroys the mock
/// device); [`Device`] drops it only after detaching everything and releasing the
/// device's label, and releases what the device was attached to only after that.
///
/// ```
/// use iommufd::{Binding, Error, Result};
///
/// /// A binding whose commands always fail (a sketch of the shape).
/// #[derive(Debug)]
/// struct Nothing;
/// impl Binding for Nothing {
///     fn attach(&self, pasid: Option<u32>, pt: u32, replace: bool) -> Result<u32> {
///         Err(Error::from_errno("ATTACH", "nothing", libc::ENOTTY))
///     }
///     fn detach(&self, pasid: Option<u32>) -> Result<()> {
///         Err(Error::from_errno("DETACH", "nothing", libc::ENOTTY))
///     }
/// }
/// ```
pub trait Binding: Send + Sync + fmt::Debug + 'static {
    /// Attaches the device, or its PASID `pasid`, to the page table with raw id `pt`
    /// in the device's iommufd, replacing what it was attached to; `replace` says
    /// whether it was attached (for layers with separate attach and replace
    /// commands). Returns the raw id of the HWPT the device now uses.
    fn attach(&self, pasid: Option<u32>, pt: u32, replace: bool) -> Result<u32>;

    /// Detaches the device, or its PASID `pasid`.
    fn detach(&self, pasid: Option<u32>) -> Result<()>;
}

#[derive(Debug, Default)]
struct Attachments {
    main: Option<PageTable>,
    pasids: BTreeMap<u32, PageTable>,
}

struct DeviceInner {
    fd: Iommufd,
    id: u32,
    name: String,
    label: Option<LabelGuard>,
    /// Dropped in `Drop::drop`, before `attached`: the device is unbound before what
    /// it was attached to may be destroyed.
    binding: Option<Box<dyn Binding>>,
    attached: Mutex<Attachments>,
}

impl DeviceInner {
    fn lock(&self) -> MutexGuard<'_, Attachments> {
        // Updates happen after the kernel call succeeds, one assignment each: a
        // poisoned lock still guards a table that matches the kernel.
        self.attached.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn label(&self) -> u64 {
        self.label.as_ref().map_or(0, LabelGuard::label)
    }

    fn describe(&self) -> String {
        format!(
            "{} (label {:#x}, device {})",
            self.name,
            self.label(),
            self.id
        )
    }
}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        let described = self.describe();
        let mut a = self.attached.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(binding) = &self.binding {
            for pasid in a.pasids.keys() {
                if let Err(e) = binding.detach(Some(*pasid)) {
                    log::warn!("iommufd: detaching PASID {pasid} of {described}: {e}");
                }
            }
            if a.main.is_some() {
                if let Err(e) = binding.detach(None) {
                    // Mock devices have no plain detach: unbinding detaches them.
                    if !e.is_unsupported() {
                        log::warn!("iommufd: detaching {described}: {e}");
                    }
                }
            }
        }
        // The label goes before the binding: once unbound, the kernel may hand the
        // id to another device, which must not inherit it.
        self.label = None;
        self.binding = None;
        // Only now may the page tables go: the device no longer uses them.
        a.pasids.clear();
        a.main = None;
    }
}

/// A device bound to an iommufd, named there by [`DeviceId`] and by the caller's
/// label, and attached to a [`PageTable`] (and per PASID) through its
/// [`Binding`].
///
/// A shared handle: cloning is cheap, and the device stays bound until the last
/// clone is dropped (objects that need the device, such as a vDEVICE, hold one).
/// Dropping the last handle detaches every PASID and the device, removes the
/// label, unbinds the device (through the binding), and only then releases what it
/// was attached to; failures are logged (`log`), never a panic.
///
/// Devices are made by binding layers: iommufd-vfio's `VfioDevice::bind` for VFIO
/// device cdevs, `selftest::MockDevice` (feature `selftest`) for the kernel's mock
/// devices.
///
/// ```no_run
/// use iommufd::{Device, Hwpt, HwptFlags, Ioas};
/// # fn bound() -> Device { unimplemented!() }
/// let dev: Device = bound(); // e.g. a VFIO device's `device()`
/// let ioas = Ioas::alloc(dev.iommufd())?;
/// let info = dev.hw_info()?;
/// let hwpt = Hwpt::alloc(&ioas, &dev, HwptFlags::empty())?;
/// dev.attach(&hwpt)?;
/// drop((ioas, hwpt)); // the device holds them while attached
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Clone)]
pub struct Device {
    inner: Arc<DeviceInner>,
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Device")
            .field("name", &self.inner.name)
            .field("id", &self.inner.id)
            .field("label", &self.inner.label())
            .field("binding", &self.inner.binding)
            .finish()
    }
}

impl Device {
    /// Takes ownership of a device the kernel just bound with id `id` in the file
    /// `label` is reserved in, under that label. `name` (a cdev path, a PCI address)
    /// is used in messages; `attached` is what the bind itself attached the device
    /// to, if anything (the kernel's mock devices come attached).
    ///
    /// For binding layers; VMMs get devices from them.
    ///
    /// ```no_run
    /// use iommufd::{Binding, Device, Iommufd};
    /// # fn bind_ioctl(fd: &Iommufd) -> u32 { unimplemented!() }
    /// # fn my_binding() -> Box<dyn Binding> { unimplemented!() }
    /// let fd = Iommufd::open()?;
    /// let label = fd.reserve_label(0x28)?; // before binding: a clash changes nothing
    /// let id = bind_ioctl(&fd); // VFIO_DEVICE_BIND_IOMMUFD, for example
    /// let dev = Device::new(label, id, "0000:00:05.0", my_binding(), None);
    /// assert_eq!(dev.label(), 0x28);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn new(
        label: LabelReservation,
        id: u32,
        name: impl Into<String>,
        binding: Box<dyn Binding>,
        attached: Option<PageTable>,
    ) -> Device {
        let fd = label.iommufd().clone();
        let guard = label.commit(id);
        Device {
            inner: Arc::new(DeviceInner {
                fd,
                id,
                name: name.into(),
                label: Some(guard),
                binding: Some(binding),
                attached: Mutex::new(Attachments {
                    main: attached,
                    pasids: BTreeMap::new(),
                }),
            }),
        }
    }

    /// The id the kernel gave the device in its iommufd.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device) {
    /// println!("{}", dev.id()); // "device 1"
    /// # }
    /// ```
    pub fn id(&self) -> DeviceId {
        DeviceId::new(self.inner.id, self.inner.fd.token())
    }

    /// The caller's label.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device) {
    /// assert_eq!(dev.iommufd().device_by_label(dev.label()), Some(dev.id()));
    /// # }
    /// ```
    pub fn label(&self) -> u64 {
        self.inner.label()
    }

    /// The name used in messages (a cdev path or PCI address).
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device) {
    /// println!("{} is {}", dev.name(), dev.id());
    /// # }
    /// ```
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The iommufd the device is bound to.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let ioas = iommufd::Ioas::alloc(dev.iommufd())?;
    /// # Ok(()) }
    /// ```
    pub fn iommufd(&self) -> &Iommufd {
        &self.inner.fd
    }

    /// Fails with [`Error::WrongIommufd`] unless the device is bound to `fd`.
    pub(crate) fn check_file(&self, fd: &Iommufd, op: &'static str) -> Result<()> {
        fd.check_owner(op, self.inner.fd.token(), self.id())
    }

    fn described(&self) -> String {
        self.inner.describe()
    }

    fn binding(&self) -> Result<&dyn Binding> {
        // The binding is only taken in `Drop`, when no handle is left.
        self.inner
            .binding
            .as_deref()
            .ok_or_else(|| Error::from_errno("attach", self.described(), libc::ENODEV))
    }

    /// What the IOMMU behind the device can do (`IOMMU_GET_HW_INFO`, Linux 6.6): its
    /// type-specific registers, generic capabilities and PASID width, with the
    /// device's id and label.
    ///
    /// ```no_run
    /// use iommufd::{HwCapabilities, HwInfoData};
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let info = dev.hw_info()?;
    /// if let HwInfoData::IntelVtd { cap_reg, ecap_reg, .. } = info.data {
    ///     println!("VT-d cap {cap_reg:#x} ecap {ecap_reg:#x}");
    /// }
    /// let dirty = info.capabilities.contains(HwCapabilities::DIRTY_TRACKING);
    /// # Ok(()) }
    /// ```
    pub fn hw_info(&self) -> Result<HwInfo> {
        query_hw_info(&self.inner.fd, self.id(), self.label(), None)
    }

    /// Like [`Device::hw_info`], asking for the data of type `data_type`
    /// (`IOMMU_HW_INFO_FLAG_INPUT_TYPE`, Linux 6.17), for IOMMUs that report more
    /// than one type (e.g. SMMUv3 with Tegra241 CMDQV). [`Error::Unsupported`] on
    /// older kernels or if the IOMMU has no data of that type.
    ///
    /// ```no_run
    /// use iommufd::{HwInfoData, uapi};
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// if dev.iommufd().probe().hw_info_input_type {
    ///     let info = dev.hw_info_of_type(uapi::IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV)?;
    ///     if let HwInfoData::Tegra241Cmdqv { log2vcmdqs, .. } = info.data {
    ///         println!("{} VCMDQs", 1u32 << log2vcmdqs);
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn hw_info_of_type(&self, data_type: u32) -> Result<HwInfo> {
        query_hw_info(&self.inner.fd, self.id(), self.label(), Some(data_type))
    }

    /// Attaches the device to an IOAS or HWPT; if it is attached already, the new
    /// page table replaces the old one without a window of blocked DMA, and the old
    /// one is released.
    ///
    /// Returns the HWPT the device now uses: for an IOAS, the one the kernel created
    /// (or reused) for it, which belongs to the kernel and goes away with the last
    /// device attached to it. A page table of another file is
    /// [`Error::WrongIommufd`].
    ///
    /// ```no_run
    /// use iommufd::{Hwpt, HwptFlags, Ioas};
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let ioas = Ioas::alloc(dev.iommufd())?;
    /// let auto = dev.attach(&ioas)?; // a HWPT the kernel made
    /// let hwpt = Hwpt::alloc(&ioas, dev, HwptFlags::empty())?;
    /// assert_eq!(dev.attach(&hwpt)?, hwpt.id()); // replaces `auto`
    /// # Ok(()) }
    /// ```
    pub fn attach(&self, pt: impl Into<PageTable>) -> Result<HwptId> {
        self.attach_inner(None, pt.into())
    }

    /// Attaches one PASID of the device to an IOAS or HWPT (Linux 6.15), replacing
    /// an earlier attachment of the same PASID. Kernels without PASID attach report
    /// [`Error::Unsupported`].
    ///
    /// ```no_run
    /// use iommufd::{Hwpt, HwptFlags, Ioas};
    /// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
    /// let ioas = Ioas::alloc(dev.iommufd())?;
    /// let hwpt = Hwpt::alloc(&ioas, dev, HwptFlags::PASID)?;
    /// dev.attach(&hwpt)?;
    /// match dev.attach_pasid(1, &hwpt) {
    ///     Ok(_) => println!("PASID 1 attached"),
    ///     Err(e) if e.is_unsupported() => { /* no PASID attach before Linux 6.15 */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn attach_pasid(&self, pasid: u32, pt: impl Into<PageTable>) -> Result<HwptId> {
        self.attach_inner(Some(pasid), pt.into())
    }

    fn attach_inner(&self, pasid: Option<u32>, pt: PageTable) -> Result<HwptId> {
        pt.check_file(&self.inner.fd, "attach")?;
        let mut a = self.inner.lock();
        let replace = match pasid {
            None => a.main.is_some(),
            Some(p) => a.pasids.contains_key(&p),
        };
        let hwpt = self.binding()?.attach(pasid, pt.raw(), replace)?;
        let old = match pasid {
            None => a.main.replace(pt),
            Some(p) => a.pasids.insert(p, pt),
        };
        drop(a);
        drop(old);
        Ok(HwptId::new(hwpt, self.inner.fd.token()))
    }

    /// Detaches the device: its DMA is blocked until it is attached again; what it
    /// was attached to is released. Mock devices cannot be detached (they are always
    /// attached): [`Error::Unsupported`].
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device, ioas: &iommufd::Ioas) -> iommufd::Result<()> {
    /// dev.attach(ioas)?;
    /// dev.detach()?;
    /// assert!(dev.attached_to().is_none());
    /// # Ok(()) }
    /// ```
    pub fn detach(&self) -> Result<()> {
        self.detach_inner(None)
    }

    /// Detaches one PASID.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device, hwpt: &iommufd::Hwpt) -> iommufd::Result<()> {
    /// dev.attach_pasid(1, hwpt)?;
    /// dev.detach_pasid(1)?;
    /// assert!(dev.attached_pasids().is_empty());
    /// # Ok(()) }
    /// ```
    pub fn detach_pasid(&self, pasid: u32) -> Result<()> {
        self.detach_inner(Some(pasid))
    }

    fn detach_inner(&self, pasid: Option<u32>) -> Result<()> {
        let mut a = self.inner.lock();
        self.binding()?.detach(pasid)?;
        let old = match pasid {
            None => a.main.take(),
            Some(p) => a.pasids.remove(&p),
        };
        drop(a);
        drop(old);
        Ok(())
    }

    /// What the device is attached to, if anything.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device, ioas: &iommufd::Ioas) -> iommufd::Result<()> {
    /// use iommufd::PageTable;
    /// dev.attach(ioas)?;
    /// assert!(dev.attached_to().is_some_and(|pt| pt.same(&PageTable::from(ioas))));
    /// # Ok(()) }
    /// ```
    pub fn attached_to(&self) -> Option<PageTable> {
        self.inner.lock().main.clone()
    }

    /// The attached PASIDs, in order, and what each is attached to.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device, hwpt: &iommufd::Hwpt) -> iommufd::Result<()> {
    /// dev.attach_pasid(1, hwpt)?;
    /// assert_eq!(dev.attached_pasids()[0].0, 1);
    /// # Ok(()) }
    /// ```
    pub fn attached_pasids(&self) -> Vec<(u32, PageTable)> {
        self.inner
            .lock()
            .pasids
            .iter()
            .map(|(p, pt)| (*p, pt.clone()))
            .collect()
    }

    /// How many handles share the device, this one included.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device) {
    /// let shared = dev.clone();
    /// assert!(dev.handles() >= 2);
    /// # }
    /// ```
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Whether `other` is a handle of the same device.
    ///
    /// ```no_run
    /// # fn f(dev: &iommufd::Device) {
    /// assert!(dev.same(&dev.clone()));
    /// # }
    /// ```
    pub fn same(&self, other: &Device) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Detaches and unbinds the device now, if this is its last handle: the
    /// explicit form of dropping it. Other handles (clones, objects that hold the
    /// device) make it [`Error::InUse`], and the device comes back unchanged.
    ///
    /// ```no_run
    /// # fn f(dev: iommufd::Device) -> iommufd::Result<()> {
    /// let fd = dev.iommufd().clone();
    /// let label = dev.label();
    /// dev.unbind()?;
    /// assert_eq!(fd.device_by_label(label), None);
    /// # Ok(()) }
    /// ```
    pub fn unbind(self) -> std::result::Result<(), Refused<Device>> {
        match Arc::try_unwrap(self.inner) {
            Ok(inner) => {
                drop(inner);
                Ok(())
            }
            Err(inner) => {
                let others = Arc::strong_count(&inner).saturating_sub(1);
                let object = Device { inner };
                Err(Refused {
                    error: Error::InUse {
                        op: "unbind",
                        object: object.described(),
                        others,
                    },
                    object,
                })
            }
        }
    }
}

impl AsRef<Device> for Device {
    fn as_ref(&self) -> &Device {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::tests::null;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A binding that records what it is asked and answers from a script.
    #[derive(Debug)]
    struct Script {
        calls: Mutex<Vec<String>>,
        fail_attach: bool,
        dropped: Arc<AtomicUsize>,
    }

    impl Binding for Script {
        fn attach(&self, pasid: Option<u32>, pt: u32, replace: bool) -> Result<u32> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("attach {pasid:?} {pt} {replace}"));
            if self.fail_attach {
                return Err(Error::from_errno("ATTACH", "script", libc::EINVAL));
            }
            Ok(pt + 100)
        }
        fn detach(&self, pasid: Option<u32>) -> Result<()> {
            self.calls.lock().unwrap().push(format!("detach {pasid:?}"));
            Ok(())
        }
    }

    impl Drop for Script {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    // These check the bookkeeping around a binding: which commands it is asked for,
    // in which order, and what the device then holds. The binding is a script, not
    // the kernel; the kernel paths are checked in the guest lab.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn attachments_hold_their_page_tables_until_unbound() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let hwpt = Hwpt::fake(&ioas, 2);
        let dropped = Arc::new(AtomicUsize::new(0));
        let dev = Device::new(
            fd.reserve_label(0x20).unwrap(),
            5,
            "script0",
            Box::new(Script {
                calls: Mutex::default(),
                fail_attach: false,
                dropped: dropped.clone(),
            }),
            None,
        );
        assert_eq!(
            (dev.id().raw(), dev.label(), dev.name()),
            (5, 0x20, "script0")
        );
        assert_eq!(fd.device_by_label(0x20), Some(dev.id()));
        assert_eq!(fd.label_of(dev.id()), Some(0x20));
        assert_eq!(dev.attach(&ioas).unwrap().raw(), 101);
        assert_eq!(ioas.handles(), 3, "ioas, its hwpt, the device");
        assert_eq!(dev.attach(&hwpt).unwrap().raw(), 102);
        assert_eq!(ioas.handles(), 2, "replaced: the device let go of the IOAS");
        dev.attach_pasid(7, &ioas).unwrap();
        dev.attach_pasid(7, &hwpt).unwrap();
        assert_eq!(dev.attached_pasids().len(), 1);
        assert!(dev.attached_to().unwrap().same(&PageTable::from(&hwpt)));
        assert!(format!("{dev:?}").contains("script0"));
        let clone = dev.clone();
        assert!(clone.same(&dev) && dev.handles() == 2);
        let r = dev.unbind().unwrap_err();
        assert!(
            matches!(r.error, Error::InUse { others: 1, .. }),
            "{}",
            r.error
        );
        drop(clone);
        assert_eq!(hwpt.handles(), 3);
        let id = r.object.id();
        r.object.unbind().unwrap();
        assert_eq!(dropped.load(Ordering::SeqCst), 1);
        assert_eq!(hwpt.handles(), 1);
        assert_eq!(fd.label_of(id), None);
        assert_eq!(fd.device_by_label(0x20), None);
        let _ = (hwpt.into_id(), ioas.into_id());
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn a_refused_attach_changes_nothing() {
        let fd = null();
        let other = null();
        let ioas = Ioas::fake(&fd, 1);
        let foreign = Ioas::fake(&other, 1);
        let script = Script {
            calls: Mutex::default(),
            fail_attach: true,
            dropped: Arc::default(),
        };
        let dev = Device::new(fd.reserve_label(1).unwrap(), 3, "s", Box::new(script), None);
        let e = dev.attach(&foreign).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        let e = dev.attach(&ioas).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(dev.attached_to().is_none());
        assert_eq!(ioas.handles(), 1);
        dev.detach_pasid(3).unwrap();
        drop(dev);
        let _ = (ioas.into_id(), foreign.into_id());
    }
}
