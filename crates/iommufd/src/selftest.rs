//! The kernel's mock IOMMU (`IOMMU_TEST_CMD`, `CONFIG_IOMMUFD_TEST`), for tests.
//!
//! A kernel built with `CONFIG_IOMMUFD_TEST` lets user space create mock devices
//! behind a mock IOMMU ("mock domains"), reserve IOVA ranges and ask the kernel to
//! check its own state: that a mock domain maps an IOVA to the expected page, or that
//! pages are pinned the expected number of times. Everything here fails with
//! [`Error::Unsupported`] (`ENOTTY`) on other kernels.
//!
//! A [`MockDevice`] is a [`Device`] like any other: it has a label, can be given to
//! [`Hwpt::alloc`], and is attached, replaced and PASID-attached through the same
//! calls as a VFIO device, so code written against [`Device`] can be tested on it.
//!
//! The interface follows `drivers/iommu/iommufd/iommufd_test.h` of the kernel the
//! bindings were generated from; it is not a stable ABI.
//!
//! Facts of the mock IOMMU: the aperture is [`MOCK_APERTURE_START`] ..=
//! [`MOCK_APERTURE_LAST`], pages are [`MOCK_PAGE_SIZE`] (2 KiB), mock devices support
//! dirty tracking unless created with [`MockDeviceFlags::NO_DIRTY`], and their
//! hardware information decodes to
//! [`HwInfoData::Selftest`](crate::HwInfoData::Selftest) with `test_reg`
//! [`HW_INFO_SELFTEST_REGVAL`].
//!
//! ```no_run
//! use iommufd::selftest::{MockDevice, MockDeviceFlags, MOCK_APERTURE_START};
//! use iommufd::{Ioas, Iommufd, MapFlags};
//! use vm_memory::MmapRegion;
//!
//! let fd = Iommufd::open()?;
//! let ioas = Ioas::alloc(&fd)?;
//! let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 0x10)?; // attached to the IOAS
//! let m = ioas.map(MmapRegion::<()>::new(8192)?, None, MapFlags::RW)?;
//! mock.check_map(m.iova(), m.memory().as_ptr(), 8192)?; // the kernel checks its page table
//! assert!(m.iova().raw() >= MOCK_APERTURE_START);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};

use bitflags::bitflags;
use iommufd_uapi as uapi;
use uapi::selftest as st;

use crate::ids::kind;
use crate::sys::arg;
use crate::{
    Binding, Device, DirtyBitmap, Error, Hwpt, HwptId, Id, Ioas, Iommufd, Iova, PageTable, Result,
};

/// The first IOVA a mock domain can map.
pub const MOCK_APERTURE_START: u64 = st::MOCK_APERTURE_START as u64;
/// The last IOVA a mock domain can map.
pub const MOCK_APERTURE_LAST: u64 = st::MOCK_APERTURE_LAST as u64;
/// The page size of the mock IOMMU (2 KiB).
pub const MOCK_PAGE_SIZE: u64 = st::MOCK_PAGE_SIZE as u64;
/// The `test_reg` of a mock device's hardware information.
pub const HW_INFO_SELFTEST_REGVAL: u32 = st::IOMMU_HW_INFO_SELFTEST_REGVAL;
/// The value the kernel's tests give mock nested HWPTs' IOTLB entries
/// (`IOMMU_TEST_IOTLB_DEFAULT`); any value works.
pub const IOTLB_DEFAULT: u32 = st::IOMMU_TEST_IOTLB_DEFAULT;
/// The value every entry of a mock device's cache starts with
/// (`IOMMU_TEST_DEV_CACHE_DEFAULT`).
pub const DEV_CACHE_DEFAULT: u32 = st::IOMMU_TEST_DEV_CACHE_DEFAULT;
/// How many HW queues a mock vIOMMU has (`IOMMU_TEST_HW_QUEUE_MAX`).
pub const HW_QUEUE_MAX: u32 = st::IOMMU_TEST_HW_QUEUE_MAX;

/// The id of the kernel's selftest object behind a [`MockDevice`] (what
/// `IOMMU_DESTROY` takes to unbind it).
pub type MockDeviceId = Id<kind::MockDevice>;

bitflags! {
    /// Properties of a mock device (`MOCK_FLAGS_DEVICE_*`).
    ///
    /// ```no_run
    /// use iommufd::selftest::{MockDevice, MockDeviceFlags};
    /// # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::NO_DIRTY | MockDeviceFlags::PASID, 1)?;
    /// assert_eq!(mock.device().hw_info()?.max_pasid_log2, 20);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MockDeviceFlags: u32 {
        /// The device's IOMMU cannot track dirty pages.
        const NO_DIRTY = st::MOCK_FLAGS_DEVICE_NO_DIRTY;
        /// The device supports PASID (width 20).
        const PASID = st::MOCK_FLAGS_DEVICE_PASID;
    }
}

/// Issues `IOMMU_TEST_CMD` with `op`, `id` and a payload already written into the
/// union of `cmd`, returning the command as the kernel left it.
fn test_cmd(
    fd: &Iommufd,
    mut cmd: st::iommu_test_cmd,
    what: &'static str,
    object: impl fmt::Display,
) -> Result<st::iommu_test_cmd> {
    // SAFETY: callers store in the payload only user pointers to buffers they hold
    // borrowed for this call, sized as the op requires (see each caller), or
    // pointers the kernel only uses to look up pages, never to write.
    unsafe { fd.ioctl(uapi::IOMMU_TEST_CMD, &mut cmd) }
        .map_err(|e| Error::from_errno(what, object, e.0))?;
    Ok(cmd)
}

fn new_cmd(op: u32, id: u32) -> st::iommu_test_cmd {
    let mut cmd: st::iommu_test_cmd = arg();
    cmd.op = op;
    cmd.id = id;
    cmd
}

/// The binding of a mock device: the selftest object, destroyed to unbind it.
#[derive(Debug)]
struct MockBinding {
    fd: Iommufd,
    stdev: u32,
}

impl MockBinding {
    fn name(&self) -> String {
        format!("selftest device {}", self.stdev)
    }

    fn pasid_op(&self, op: u32, what: &'static str, pasid: u32, pt: u32) -> Result<()> {
        let mut cmd = new_cmd(op, self.stdev);
        match op {
            st::IOMMU_TEST_OP_PASID_ATTACH => {
                cmd.__bindgen_anon_1.pasid_attach =
                    st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_18 { pasid, pt_id: pt }
            }
            st::IOMMU_TEST_OP_PASID_REPLACE => {
                cmd.__bindgen_anon_1.pasid_replace =
                    st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_19 { pasid, pt_id: pt }
            }
            _ => {
                cmd.__bindgen_anon_1.pasid_detach =
                    st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_20 { pasid }
            }
        }
        test_cmd(
            &self.fd,
            cmd,
            what,
            format_args!("{} pasid {pasid}", self.name()),
        )
        .map(drop)
    }
}

impl Binding for MockBinding {
    fn attach(&self, pasid: Option<u32>, pt: u32, replace: bool) -> Result<u32> {
        match pasid {
            None => {
                let mut cmd = new_cmd(st::IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, self.stdev);
                cmd.__bindgen_anon_1.mock_domain_replace =
                    st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_4 { pt_id: pt };
                let out = test_cmd(
                    &self.fd,
                    cmd,
                    "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE",
                    self.name(),
                )?;
                // SAFETY: plain integers.
                Ok(unsafe { out.__bindgen_anon_1.mock_domain_replace.pt_id })
            }
            Some(p) if replace => self
                .pasid_op(
                    st::IOMMU_TEST_OP_PASID_REPLACE,
                    "IOMMU_TEST_OP_PASID_REPLACE",
                    p,
                    pt,
                )
                .map(|()| pt),
            Some(p) => self
                .pasid_op(
                    st::IOMMU_TEST_OP_PASID_ATTACH,
                    "IOMMU_TEST_OP_PASID_ATTACH",
                    p,
                    pt,
                )
                .map(|()| pt),
        }
    }

    fn detach(&self, pasid: Option<u32>) -> Result<()> {
        match pasid {
            // A mock device is always attached: it is detached by destroying it.
            None => Err(Error::Unsupported {
                op: "detach",
                object: self.name(),
                errno: libc::EOPNOTSUPP,
            }),
            Some(p) => self.pasid_op(
                st::IOMMU_TEST_OP_PASID_DETACH,
                "IOMMU_TEST_OP_PASID_DETACH",
                p,
                0,
            ),
        }
    }
}

impl Drop for MockBinding {
    fn drop(&mut self) {
        if let Err(e) = self.fd.destroy_id(self.stdev, self.name()) {
            log::error!("iommufd: destroying {}: {e}", self.name());
        }
    }
}

/// A mock device bound to the iommufd and attached to an IOAS or HWPT
/// (`IOMMU_TEST_OP_MOCK_DOMAIN`): the kernel creates the device, binds it (its
/// [`Device`]) and attaches it, creating a HWPT ("mock domain") when attached to an
/// IOAS.
///
/// Its [`Device`] holds what it is attached to and, when the last handle goes,
/// destroys the selftest object (which detaches and unbinds the device and frees an
/// automatically created HWPT) before releasing it.
///
/// ```no_run
/// use iommufd::selftest::{HW_INFO_SELFTEST_REGVAL, MockDevice, MockDeviceFlags};
/// use iommufd::{HwInfoData, Ioas, Iommufd};
/// let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 0x20)?;
/// let info = mock.device().hw_info()?;
/// assert_eq!(info.data, HwInfoData::Selftest { flags: 0, test_reg: HW_INFO_SELFTEST_REGVAL });
/// assert_eq!(info.label, 0x20);
/// drop(ioas); // the mock device holds it
/// # Ok::<(), iommufd::Error>(())
/// ```
pub struct MockDevice {
    device: Device,
    stdev: MockDeviceId,
    hwpt: AtomicU32,
}

impl fmt::Debug for MockDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockDevice")
            .field("stdev", &self.stdev)
            .field("hwpt", &self.hwpt.load(Ordering::Relaxed))
            .field("device", &self.device)
            .finish()
    }
}

impl MockDevice {
    /// A mock device with `flags`, labelled `label`, attached to `pt` (an IOAS,
    /// through a new mock domain, or a HWPT). Without flags this is
    /// `IOMMU_TEST_OP_MOCK_DOMAIN` (Linux 6.2), else `IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`
    /// (6.7).
    ///
    /// ```no_run
    /// use iommufd::selftest::{MockDevice, MockDeviceFlags};
    /// use iommufd::{Hwpt, HwptFlags, Ioas, Iommufd};
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let first = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1)?;
    /// let hwpt = Hwpt::alloc(&ioas, &first, HwptFlags::empty())?;
    /// let second = MockDevice::alloc(&hwpt, MockDeviceFlags::empty(), 2)?;
    /// assert_eq!(second.hwpt_id(), hwpt.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn alloc(
        pt: impl Into<PageTable>,
        flags: MockDeviceFlags,
        label: u64,
    ) -> Result<MockDevice> {
        let pt = pt.into();
        let fd = pt.iommufd().clone();
        let reservation = fd.reserve_label(label)?;
        let op = if flags.is_empty() {
            st::IOMMU_TEST_OP_MOCK_DOMAIN
        } else {
            st::IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS
        };
        let mut cmd = new_cmd(op, pt.raw());
        cmd.__bindgen_anon_1.mock_domain_flags = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_3 {
            dev_flags: flags.bits(),
            ..Default::default()
        };
        let out = test_cmd(&fd, cmd, "IOMMU_TEST_OP_MOCK_DOMAIN", &pt)?;
        // SAFETY: the kernel filled the `mock_domain_flags` member (a prefix-compatible
        // superset of `mock_domain`); every member is plain integers.
        let md = unsafe { out.__bindgen_anon_1.mock_domain_flags };
        let binding = MockBinding {
            fd: fd.clone(),
            stdev: md.out_stdev_id,
        };
        let device = Device::new(
            reservation,
            md.out_idev_id,
            binding.name(),
            Box::new(binding),
            Some(pt),
        );
        Ok(MockDevice {
            device,
            stdev: MockDeviceId::new(md.out_stdev_id, fd.token()),
            hwpt: AtomicU32::new(md.out_hwpt_id),
        })
    }

    /// The bound device: for [`Hwpt::alloc`], hardware information, attach.
    ///
    /// ```no_run
    /// # use iommufd::selftest::{MockDevice, MockDeviceFlags};
    /// # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 7)?;
    /// assert_eq!(mock.device().label(), 7);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The id of the selftest object.
    ///
    /// ```no_run
    /// # use iommufd::selftest::{MockDevice, MockDeviceFlags};
    /// # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 7)?;
    /// assert_ne!(mock.stdev_id().raw(), mock.device().id().raw()); // two objects of the file
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn stdev_id(&self) -> MockDeviceId {
        self.stdev
    }

    /// The HWPT the device is attached to (at creation, the mock domain).
    ///
    /// ```no_run
    /// # use iommufd::selftest::{self, MockDevice, MockDeviceFlags};
    /// # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 7)?;
    /// println!("attached through {}", mock.hwpt_id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn hwpt_id(&self) -> HwptId {
        HwptId::new(
            self.hwpt.load(Ordering::Acquire),
            self.device.iommufd().token(),
        )
    }

    /// Re-attaches the device to `pt` (`IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`, through
    /// [`Device::attach`]) and returns the HWPT it is now attached to.
    ///
    /// ```no_run
    /// # use iommufd::selftest::{MockDevice, MockDeviceFlags};
    /// use iommufd::{Hwpt, HwptFlags};
    /// # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 7)?;
    /// let hwpt = Hwpt::alloc(&ioas, &mock, HwptFlags::empty())?;
    /// assert_eq!(mock.replace(&hwpt)?, hwpt.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn replace(&self, pt: impl Into<PageTable>) -> Result<HwptId> {
        let hwpt = self.device.attach(pt)?;
        self.hwpt.store(hwpt.raw(), Ordering::Release);
        Ok(hwpt)
    }

    /// Whether PASID `pasid` is attached to `hwpt` (`None`: to nothing), as the
    /// kernel sees it (`IOMMU_TEST_OP_PASID_CHECK_HWPT`).
    ///
    /// ```no_run
    /// # use iommufd::selftest::{MockDevice, MockDeviceFlags};
    /// # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::PASID, 7)?;
    /// assert!(mock.pasid_attached_to(7, None)?); // nothing attached yet
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn pasid_attached_to(&self, pasid: u32, hwpt: Option<HwptId>) -> Result<bool> {
        let fd = self.device.iommufd();
        if let Some(h) = hwpt {
            fd.check_owner("IOMMU_TEST_OP_PASID_CHECK_HWPT", h.owner(), h)?;
        }
        let mut cmd = new_cmd(st::IOMMU_TEST_OP_PASID_CHECK_HWPT, self.stdev.raw());
        cmd.__bindgen_anon_1.pasid_check = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_21 {
            pasid,
            hwpt_id: hwpt.map_or(0, HwptId::raw),
        };
        match test_cmd(
            fd,
            cmd,
            "IOMMU_TEST_OP_PASID_CHECK_HWPT",
            format_args!("{} pasid {pasid}", self.stdev),
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Has the kernel check that the device's mock domain maps `len` bytes at `iova`
    /// to the pages of this process's memory at `va` ([`md_check_map`]).
    ///
    /// ```no_run
    /// use iommufd::MapFlags;
    /// # use iommufd::selftest::{MockDevice, MockDeviceFlags};
    /// # let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 7)?;
    /// let m = ioas.map(vm_memory::MmapRegion::<()>::new(8192)?, None, MapFlags::RW)?;
    /// mock.check_map(m.iova(), m.memory().as_ptr(), 8192)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_map(&self, iova: Iova, va: *const u8, len: u64) -> Result<()> {
        md_check_map(self.device.iommufd(), self.hwpt_id(), iova, va, len)
    }
}

impl AsRef<Device> for MockDevice {
    fn as_ref(&self) -> &Device {
        &self.device
    }
}

/// Reserves `len` bytes of IOVA at `start` in `ioas`, as an IOMMU's reserved region
/// (e.g. an MSI window) would (`IOMMU_TEST_OP_ADD_RESERVED`). Kernel-chosen IOVAs
/// avoid it and [`Ioas::allow_iovas`] over it fails with `EADDRINUSE`.
///
/// ```no_run
/// use iommufd::{Ioas, Iommufd, Iova, IovaRange, selftest};
/// let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// selftest::add_reserved(&ioas, Iova(0xfee0_0000), 1 << 20)?; // like an MSI window
/// let e = ioas.allow_iovas(&[IovaRange::FULL]).unwrap_err();
/// assert_eq!(e.errno(), Some(libc::EADDRINUSE));
/// # Ok::<(), iommufd::Error>(())
/// ```
pub fn add_reserved(ioas: &Ioas, start: Iova, len: u64) -> Result<()> {
    let mut cmd = new_cmd(st::IOMMU_TEST_OP_ADD_RESERVED, ioas.id().raw());
    cmd.__bindgen_anon_1.add_reserved = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_1 {
        start: start.raw(),
        length: len,
    };
    test_cmd(ioas.iommufd(), cmd, "IOMMU_TEST_OP_ADD_RESERVED", ioas.id()).map(drop)
}

/// Has the kernel check that mock domain `hwpt` maps each mock page of
/// `iova..iova + len` to the physical page behind the same offset of `va`
/// (`IOMMU_TEST_OP_MD_CHECK_MAP`). `iova`, `va` and `len` must be multiples of the
/// mock page size. Fails with `EINVAL` on a mismatch; an id of another file is
/// [`Error::WrongIommufd`].
///
/// The kernel only looks up the pages behind `va` (as `get_user_pages` would for a
/// read); it does not access their contents through the pointer.
///
/// ```no_run
/// use iommufd::selftest::{self, MockDevice, MockDeviceFlags};
/// use iommufd::{Ioas, Iommufd, Iova, MapFlags};
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1)?;
/// let m = ioas.map(vm_memory::MmapRegion::<()>::new(8192)?, Some(Iova(1 << 24)), MapFlags::RW)?;
/// selftest::md_check_map(&fd, mock.hwpt_id(), m.iova(), m.memory().as_ptr(), 8192)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn md_check_map(fd: &Iommufd, hwpt: HwptId, iova: Iova, va: *const u8, len: u64) -> Result<()> {
    fd.check_owner("IOMMU_TEST_OP_MD_CHECK_MAP", hwpt.owner(), hwpt)?;
    let mut cmd = new_cmd(st::IOMMU_TEST_OP_MD_CHECK_MAP, hwpt.raw());
    cmd.__bindgen_anon_1.check_map = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_5 {
        iova: iova.raw(),
        length: len,
        uptr: va as u64,
    };
    test_cmd(fd, cmd, "IOMMU_TEST_OP_MD_CHECK_MAP", hwpt).map(drop)
}

/// Has the kernel check that each `PAGE_SIZE` page of `va..va + len` is pinned
/// `refs` times (`IOMMU_TEST_OP_MD_CHECK_REFS`; huge pages are skipped). `va` and
/// `len` must be page aligned. Fails with `EIO` on a mismatch.
///
/// Like [`md_check_map`], the kernel only looks up the pages behind `va`.
///
/// ```no_run
/// use iommufd::selftest::{self, MockDevice, MockDeviceFlags};
/// use iommufd::{Ioas, Iommufd, MapFlags};
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let _mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1)?; // a domain pins what is mapped
/// let m = ioas.map(vm_memory::MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
/// selftest::check_refs(&fd, m.memory().as_ptr(), 4096, 1)?;
/// let region = m.unmap()?;
/// selftest::check_refs(&fd, region.as_ptr(), 4096, 0)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_refs(fd: &Iommufd, va: *const u8, len: u64, refs: u32) -> Result<()> {
    let mut cmd = new_cmd(st::IOMMU_TEST_OP_MD_CHECK_REFS, 0);
    cmd.__bindgen_anon_1.check_refs = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_6 {
        length: len,
        uptr: va as u64,
        refs,
    };
    test_cmd(fd, cmd, "IOMMU_TEST_OP_MD_CHECK_REFS", "iommufd").map(drop)
}

/// Marks the pages set in `dirty` as written by DMA in mock domain `hwpt`
/// (`IOMMU_TEST_OP_DIRTY`) and returns how many were marked. Dirty tracking must be
/// enabled on the HWPT ([`Hwpt::enable_dirty_tracking`]); only mapped IOVAs take the
/// mark.
///
/// ```no_run
/// use iommufd::selftest::{self, MOCK_PAGE_SIZE, MockDevice, MockDeviceFlags};
/// use iommufd::{DirtyBitmap, Hwpt, HwptFlags, Ioas, Iommufd, Iova, MapFlags};
/// let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1)?;
/// let hwpt = Hwpt::alloc(&ioas, &mock, HwptFlags::DIRTY_TRACKING)?;
/// let m = ioas.map(vm_memory::MmapRegion::<()>::new(4096)?, Some(Iova(1 << 24)), MapFlags::RW)?;
/// hwpt.enable_dirty_tracking()?;
/// let mut marks = DirtyBitmap::new(m.iova(), 4096, MOCK_PAGE_SIZE)?;
/// marks.set(0);
/// marks.set(1); // both mock pages of the CPU page
/// assert_eq!(selftest::set_dirty(&hwpt, &marks)?, 2);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn set_dirty(hwpt: &Hwpt, dirty: &DirtyBitmap) -> Result<u64> {
    let len = dirty.pages() * dirty.page_size();
    let mut cmd = new_cmd(st::IOMMU_TEST_OP_DIRTY, hwpt.id().raw());
    cmd.__bindgen_anon_1.dirty = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_13 {
        iova: dirty.iova().raw(),
        length: len,
        page_size: dirty.page_size(),
        uptr: dirty.as_words().as_ptr() as u64,
        ..Default::default()
    };
    // The kernel reads ceil(pages / 8) bytes at `uptr`; `as_words` holds
    // ceil(pages / 64) words, which is at least that.
    let out = test_cmd(hwpt.iommufd(), cmd, "IOMMU_TEST_OP_DIRTY", hwpt.id())?;
    // SAFETY: plain integers.
    Ok(unsafe { out.__bindgen_anon_1.dirty.out_nr_dirty })
}

/// Has the kernel check that entry `id` (0 to 3) of the mock IOTLB of nested HWPT
/// `hwpt` holds `expected` (`IOMMU_TEST_OP_MD_CHECK_IOTLB`): entries start with the
/// [`Stage1::Selftest`](crate::Stage1::Selftest) `iotlb` value and an invalidation
/// sets them to 0. A mismatch fails with `EINVAL`.
///
/// ```no_run
/// use iommufd::selftest::{self, MockDevice, MockDeviceFlags, IOTLB_DEFAULT};
/// use iommufd::{Hwpt, HwptFlags, Ioas, Iommufd, NestedHwpt, SelftestHwptInvalidation, Stage1};
/// let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1)?;
/// let s2 = Hwpt::alloc(&ioas, &mock, HwptFlags::NEST_PARENT)?;
/// let s1 = Stage1::Selftest { iotlb: IOTLB_DEFAULT };
/// let nested = NestedHwpt::alloc(&s2, &mock, s1, HwptFlags::empty(), None)?;
/// nested.invalidate(&[SelftestHwptInvalidation::one(1)?])?;
/// selftest::check_iotlb(&nested, 1, 0)?;
/// selftest::check_iotlb(&nested, 0, IOTLB_DEFAULT)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn check_iotlb(hwpt: &crate::NestedHwpt, id: u32, expected: u32) -> Result<()> {
    let mut cmd = new_cmd(st::IOMMU_TEST_OP_MD_CHECK_IOTLB, hwpt.id().raw());
    cmd.__bindgen_anon_1.check_iotlb = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_14 {
        id,
        iotlb: expected,
    };
    test_cmd(
        hwpt.iommufd(),
        cmd,
        "IOMMU_TEST_OP_MD_CHECK_IOTLB",
        hwpt.id(),
    )
    .map(drop)
}

/// Has the kernel check that entry `id` (0 to 3) of mock device `dev`'s cache
/// holds `expected` (`IOMMU_TEST_OP_DEV_CHECK_CACHE`): entries start at
/// [`DEV_CACHE_DEFAULT`] and a vIOMMU invalidation naming the device's vDEVICE
/// sets them to 0. A mismatch fails with `EINVAL`.
///
/// ```no_run
/// # fn f(mock: &iommufd::selftest::MockDevice) -> iommufd::Result<()> {
/// use iommufd::selftest::{self, DEV_CACHE_DEFAULT};
/// selftest::check_dev_cache(mock, 0, DEV_CACHE_DEFAULT)?;
/// # Ok(()) }
/// ```
pub fn check_dev_cache(dev: &impl AsRef<Device>, id: u32, expected: u32) -> Result<()> {
    let dev = dev.as_ref();
    let mut cmd = new_cmd(st::IOMMU_TEST_OP_DEV_CHECK_CACHE, dev.id().raw());
    cmd.__bindgen_anon_1.check_dev_cache = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_16 {
        id,
        cache: expected,
    };
    test_cmd(
        dev.iommufd(),
        cmd,
        "IOMMU_TEST_OP_DEV_CHECK_CACHE",
        dev.id(),
    )
    .map(drop)
}

/// Makes mock device `dev` raise a page request (`IOMMU_TEST_OP_TRIGGER_IOPF`): one
/// fault at `addr` in PASID `pasid` (0: none) with group index `grpid`, asking for
/// `perm`, flagged as its group's last page. It reaches the fault queue of the HWPT
/// the device (or the PASID) is attached to.
///
/// ```no_run
/// # fn f(mock: &iommufd::selftest::MockDevice, faults: &iommufd::FaultQueue) -> iommufd::Result<()> {
/// use iommufd::{FaultPerm, PageResponse, selftest};
/// selftest::trigger_iopf(mock, 0, 2, FaultPerm::READ | FaultPerm::WRITE, 0xdead_b000)?;
/// let groups = faults.read()?;
/// assert_eq!(groups[0].label, Some(mock.device().label()));
/// faults.respond(groups[0].cookie, PageResponse::Success)?;
/// # Ok(()) }
/// ```
pub fn trigger_iopf(
    dev: &impl AsRef<Device>,
    pasid: u32,
    grpid: u32,
    perm: crate::FaultPerm,
    addr: u64,
) -> Result<()> {
    let dev = dev.as_ref();
    let mut cmd = new_cmd(st::IOMMU_TEST_OP_TRIGGER_IOPF, 0);
    cmd.__bindgen_anon_1.trigger_iopf = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_15 {
        dev_id: dev.id().raw(),
        pasid,
        grpid,
        perm: perm.bits(),
        addr,
    };
    test_cmd(dev.iommufd(), cmd, "IOMMU_TEST_OP_TRIGGER_IOPF", dev.id()).map(drop)
}

/// Makes the mock vIOMMU report an event for mock device `dev`
/// (`IOMMU_TEST_OP_TRIGGER_VEVENT`): it goes to the vIOMMU's selftest
/// [`Veventq`](crate::Veventq), naming the device's virtual id. The device must be
/// attached to a nested HWPT of a vIOMMU in which it has a vDEVICE (`ENOENT`
/// otherwise); without a selftest vEVENTQ the kernel answers `EOPNOTSUPP`.
///
/// ```no_run
/// # fn f(mock: &iommufd::selftest::MockDevice, q: &iommufd::Veventq) -> iommufd::Result<()> {
/// iommufd::selftest::trigger_vevent(mock)?;
/// let batch = q.read()?;
/// assert_eq!(batch.events[0].device, Some((mock.device().id(), mock.device().label())));
/// # Ok(()) }
/// ```
pub fn trigger_vevent(dev: &impl AsRef<Device>) -> Result<()> {
    let dev = dev.as_ref();
    let mut cmd = new_cmd(st::IOMMU_TEST_OP_TRIGGER_VEVENT, 0);
    cmd.__bindgen_anon_1.trigger_vevent = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_17 {
        dev_id: dev.id().raw(),
    };
    test_cmd(dev.iommufd(), cmd, "IOMMU_TEST_OP_TRIGGER_VEVENT", dev.id()).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::tests::null;

    #[test]
    fn constants_match_the_mock() {
        assert_eq!(MOCK_APERTURE_START, 1 << 24);
        assert_eq!(MOCK_APERTURE_LAST, (1 << 31) - 1);
        assert_eq!(MOCK_PAGE_SIZE, 2048);
        assert_eq!(HW_INFO_SELFTEST_REGVAL, 0xdeadbeef);
        assert_eq!(size_of::<st::iommu_test_cmd>(), 72);
        assert_eq!(MockDeviceFlags::NO_DIRTY.bits(), 1);
        assert_eq!(MockDeviceFlags::PASID.bits(), 4);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn nesting_checks_on_a_non_iommufd() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 1);
        let parent = Hwpt::fake_with_flags(&ioas, 2, crate::HwptFlags::NEST_PARENT);
        let nested = crate::NestedHwpt::fake(crate::NestingParent::from(&parent), 3);
        let dev = crate::nested::tests::device(&fd, 4, 0x40);
        let e = check_iotlb(&nested, 0, IOTLB_DEFAULT).unwrap_err();
        assert!(
            e.to_string()
                .contains("IOMMU_TEST_OP_MD_CHECK_IOTLB on nested hwpt 3"),
            "{e}"
        );
        assert!(
            check_dev_cache(&dev, 0, DEV_CACHE_DEFAULT)
                .unwrap_err()
                .is_unsupported()
        );
        let perm = crate::FaultPerm::READ;
        assert!(
            trigger_iopf(&dev, 0, 1, perm, 0x1000)
                .unwrap_err()
                .is_unsupported()
        );
        assert!(trigger_vevent(&dev).unwrap_err().is_unsupported());
        assert_eq!(HW_QUEUE_MAX, 2);
        let _ = (nested.into_id(), parent.into_id(), ioas.into_id());
    }

    #[test]
    fn payload_lands_in_the_union() {
        let mut cmd = new_cmd(st::IOMMU_TEST_OP_ADD_RESERVED, 3);
        cmd.__bindgen_anon_1.add_reserved = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_1 {
            start: 0x1000,
            length: 0x2000,
        };
        assert_eq!(cmd.size, 72);
        assert_eq!((cmd.op, cmd.id), (st::IOMMU_TEST_OP_ADD_RESERVED, 3));
        // SAFETY: plain integers.
        let r = unsafe { cmd.__bindgen_anon_1.add_reserved };
        assert_eq!((r.start, r.length), (0x1000, 0x2000));
    }

    // Every wrapper reaches the kernel (here /dev/null, which answers ENOTTY).
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn wrappers_on_a_non_iommufd() {
        let fd = null();
        let other = null();
        let ioas = Ioas::fake(&fd, 1);
        let hwpt = Hwpt::fake(&ioas, 2);
        let e = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).unwrap_err();
        assert!(e.to_string().contains("MOCK_DOMAIN on ioas 1"), "{e}");
        let e = MockDevice::alloc(&hwpt, MockDeviceFlags::PASID, 1).unwrap_err();
        assert!(e.to_string().contains("on hwpt 2"), "{e}");
        assert_eq!(fd.device_by_label(1), None, "the reserved label was freed");
        let e = add_reserved(&ioas, Iova(0), 4096).unwrap_err();
        assert!(e.to_string().contains("ADD_RESERVED on ioas 1"), "{e}");
        let bm = DirtyBitmap::new(Iova(0), 4096, 2048).expect("bitmap");
        let e = set_dirty(&hwpt, &bm).unwrap_err();
        assert!(
            e.to_string().contains("IOMMU_TEST_OP_DIRTY on hwpt 2"),
            "{e}"
        );
        let e = check_refs(&fd, std::ptr::null(), 0, 0).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        let e = md_check_map(&other, hwpt.id(), Iova(0), std::ptr::null(), 2048).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        let e = md_check_map(&fd, hwpt.id(), Iova(0), std::ptr::null(), 2048).unwrap_err();
        assert!(e.to_string().contains("MD_CHECK_MAP on hwpt 2"), "{e}");

        // A binding by hand: its commands reach the kernel, its drop destroys the
        // selftest object (ENOTTY here, logged).
        let b = MockBinding {
            fd: fd.clone(),
            stdev: 9,
        };
        let e = b.attach(None, 1, true).unwrap_err();
        assert!(
            e.to_string()
                .contains("MOCK_DOMAIN_REPLACE on selftest device 9"),
            "{e}"
        );
        let e = b.attach(Some(3), 1, false).unwrap_err();
        assert!(
            e.to_string()
                .contains("PASID_ATTACH on selftest device 9 pasid 3"),
            "{e}"
        );
        let e = b.attach(Some(3), 1, true).unwrap_err();
        assert!(e.to_string().contains("PASID_REPLACE"), "{e}");
        let e = b.detach(Some(3)).unwrap_err();
        assert!(e.to_string().contains("PASID_DETACH"), "{e}");
        assert!(b.detach(None).unwrap_err().is_unsupported());
        let mock = MockDevice {
            device: Device::new(
                fd.reserve_label(5).unwrap(),
                11,
                b.name(),
                Box::new(b),
                Some(PageTable::from(&ioas)),
            ),
            stdev: MockDeviceId::new(9, fd.token()),
            hwpt: AtomicU32::new(10),
        };
        assert_eq!(
            (
                mock.stdev_id().raw(),
                mock.hwpt_id().raw(),
                mock.device().id().raw()
            ),
            (9, 10, 11)
        );
        assert!(format!("{mock:?}").contains("selftest device 9"));
        assert!(mock.replace(&hwpt).unwrap_err().is_unsupported());
        let e = mock.check_map(Iova(0), std::ptr::null(), 2048).unwrap_err();
        assert!(e.to_string().contains("MD_CHECK_MAP on hwpt 10"), "{e}");
        let foreign = Ioas::fake(&other, 1);
        let e = mock.replace(&foreign).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        let foreign_hwpt = Hwpt::fake(&foreign, 3);
        let e = mock
            .pasid_attached_to(1, Some(foreign_hwpt.id()))
            .unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        assert!(
            mock.pasid_attached_to(1, None)
                .unwrap_err()
                .is_unsupported()
        );
        drop(mock);
        let _ = (
            foreign_hwpt.into_id(),
            foreign.into_id(),
            hwpt.into_id(),
            ioas.into_id(),
        );
    }
}
