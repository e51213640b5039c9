//! The kernel's mock IOMMU (`IOMMU_TEST_CMD`, `CONFIG_IOMMUFD_TEST`), for tests.
//!
//! A kernel built with `CONFIG_IOMMUFD_TEST` lets user space create mock devices
//! behind a mock IOMMU ("mock domains"), reserve IOVA ranges and ask the kernel to
//! check its own state: that a mock domain maps an IOVA to the expected page, or that
//! pages are pinned the expected number of times. Everything here fails with
//! [`Error::Unsupported`] (`ENOTTY`) on other kernels.
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
//! use iommufd::{Iommufd, MapFlags, MmapRegion};
//! use iommufd::selftest::{MockDomain, MOCK_APERTURE_START};
//!
//! let fd = Iommufd::open()?;
//! let ioas = fd.alloc_ioas()?;
//! let mock = MockDomain::new(&ioas)?; // a mock device attached to the IOAS
//! let m = ioas.map_owned(MmapRegion::new(8192)?, None, MapFlags::RW)?;
//! mock.check_map(m.iova(), m.region().as_ptr(), 8192)?; // the kernel checks its page table
//! assert!(m.iova().raw() >= MOCK_APERTURE_START);
//! # Ok::<(), iommufd::Error>(())
//! ```

use std::fmt;
use std::mem::ManuallyDrop;

use bitflags::bitflags;
use iommufd_uapi as uapi;
use uapi::selftest as st;

use crate::sys::arg;
use crate::{DeviceId, DirtyBitmap, Error, Hwpt, HwptId, Ioas, Iommufd, Iova, PtId, Result};

/// The first IOVA a mock domain can map.
///
/// ```
/// use iommufd::selftest::{MOCK_APERTURE_LAST, MOCK_APERTURE_START};
/// use iommufd::{Iova, IovaRange};
/// let aperture = IovaRange::new(Iova(MOCK_APERTURE_START), Iova(MOCK_APERTURE_LAST)).unwrap();
/// assert_eq!(aperture.start(), Iova(16 << 20));
/// ```
pub const MOCK_APERTURE_START: u64 = st::MOCK_APERTURE_START as u64;
/// The last IOVA a mock domain can map.
///
/// ```
/// use iommufd::selftest::{MOCK_APERTURE_LAST, MOCK_APERTURE_START};
/// assert_eq!(MOCK_APERTURE_LAST - MOCK_APERTURE_START + 1, 2032 << 20);
/// ```
pub const MOCK_APERTURE_LAST: u64 = st::MOCK_APERTURE_LAST as u64;
/// The page size of the mock IOMMU (2 KiB).
///
/// ```
/// use iommufd::selftest::{MOCK_APERTURE_START, MOCK_PAGE_SIZE};
/// use iommufd::{DirtyBitmap, Iova};
/// // A dirty bitmap at the mock IOMMU's granularity: 4 KiB is two mock pages.
/// let bm = DirtyBitmap::new(Iova(MOCK_APERTURE_START), 4096, MOCK_PAGE_SIZE)?;
/// assert_eq!(bm.pages(), 2);
/// # Ok::<(), iommufd::Error>(())
/// ```
pub const MOCK_PAGE_SIZE: u64 = st::MOCK_PAGE_SIZE as u64;
/// The `test_reg` of a mock device's hardware information.
///
/// ```
/// use iommufd::selftest::HW_INFO_SELFTEST_REGVAL;
/// use iommufd::{HW_INFO_TYPE_SELFTEST, HwInfoData};
/// let mut bytes = [0u8; 8];
/// bytes[4..].copy_from_slice(&HW_INFO_SELFTEST_REGVAL.to_ne_bytes());
/// let data = HwInfoData::decode(HW_INFO_TYPE_SELFTEST, &bytes)?;
/// assert_eq!(data, HwInfoData::Selftest { flags: 0, test_reg: 0xdeadbeef });
/// # Ok::<(), iommufd::DecodeError>(())
/// ```
pub const HW_INFO_SELFTEST_REGVAL: u32 = st::IOMMU_HW_INFO_SELFTEST_REGVAL;

bitflags! {
    /// Properties of a mock device (`MOCK_FLAGS_DEVICE_*`).
    ///
    /// ```no_run
    /// use iommufd::selftest::{MockDeviceFlags, MockDomain};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let mock = MockDomain::with_flags(&ioas, MockDeviceFlags::NO_DIRTY | MockDeviceFlags::PASID)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MockDeviceFlags: u32 {
        /// The device's IOMMU cannot track dirty pages.
        ///
        /// ```no_run
        /// use iommufd::selftest::{MockDeviceFlags, MockDomain};
        /// use iommufd::{HwCapabilities, Hwpt, HwptFlags};
        /// # let fd = iommufd::Iommufd::open()?;
        /// # let ioas = fd.alloc_ioas()?;
        /// let mock = MockDomain::with_flags(&ioas, MockDeviceFlags::NO_DIRTY)?;
        /// let caps = fd.hw_info(mock.idev_id())?.capabilities;
        /// assert!(!caps.contains(HwCapabilities::DIRTY_TRACKING));
        /// let e = Hwpt::alloc(&fd, mock.idev_id(), &ioas, HwptFlags::DIRTY_TRACKING).unwrap_err();
        /// assert!(e.is_unsupported());
        /// # Ok::<(), iommufd::Error>(())
        /// ```
        const NO_DIRTY = st::MOCK_FLAGS_DEVICE_NO_DIRTY;
        /// The device supports PASID (width 20).
        ///
        /// ```no_run
        /// use iommufd::selftest::{MockDeviceFlags, MockDomain};
        /// # let fd = iommufd::Iommufd::open()?;
        /// # let ioas = fd.alloc_ioas()?;
        /// let mock = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID)?;
        /// assert_eq!(fd.hw_info(mock.idev_id())?.max_pasid_log2, 20);
        /// # Ok::<(), iommufd::Error>(())
        /// ```
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

/// A mock device bound to the iommufd and attached to an IOAS or HWPT
/// (`IOMMU_TEST_OP_MOCK_DOMAIN`): the kernel creates the device, binds it (the
/// device id) and attaches it, creating a HWPT ("mock domain") when attached to an
/// IOAS.
///
/// Borrows the IOAS or HWPT it was attached to, so it is destroyed first. Dropping it
/// destroys the selftest object (`IOMMU_DESTROY` of [`MockDomain::stdev_id`]), which
/// detaches and unbinds the device and frees an automatically created HWPT.
///
/// ```no_run
/// use iommufd::selftest::{HW_INFO_SELFTEST_REGVAL, MockDomain};
/// use iommufd::{HwInfoData, Iommufd};
/// let fd = Iommufd::open()?;
/// let ioas = fd.alloc_ioas()?;
/// let mock = MockDomain::new(&ioas)?;
/// let info = fd.hw_info(mock.idev_id())?;
/// assert_eq!(info.data, HwInfoData::Selftest { flags: 0, test_reg: HW_INFO_SELFTEST_REGVAL });
/// drop(mock); // before the IOAS it is attached to
/// # Ok::<(), iommufd::Error>(())
/// ```
#[must_use = "dropping a MockDomain destroys the mock device"]
pub struct MockDomain<'a> {
    fd: &'a Iommufd,
    stdev_id: u32,
    hwpt_id: HwptId,
    idev_id: DeviceId,
}

impl fmt::Debug for MockDomain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockDomain")
            .field("stdev_id", &self.stdev_id)
            .field("hwpt_id", &self.hwpt_id)
            .field("idev_id", &self.idev_id)
            .finish()
    }
}

impl<'a> MockDomain<'a> {
    /// A mock device attached to `ioas` (through a new mock domain).
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// let ioas = fd.alloc_ioas()?;
    /// let mock = iommufd::selftest::MockDomain::new(&ioas)?;
    /// println!("{} attached through {}", mock.idev_id(), mock.hwpt_id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn new(ioas: &'a Ioas<'_>) -> Result<MockDomain<'a>> {
        MockDomain::create(ioas.iommufd(), PtId::from(ioas), MockDeviceFlags::empty())
    }

    /// A mock device with `flags`, attached to `ioas`
    /// (`IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`).
    ///
    /// ```no_run
    /// use iommufd::selftest::{MockDeviceFlags, MockDomain};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let mock = MockDomain::with_flags(&ioas, MockDeviceFlags::NO_DIRTY)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn with_flags(ioas: &'a Ioas<'_>, flags: MockDeviceFlags) -> Result<MockDomain<'a>> {
        MockDomain::create(ioas.iommufd(), PtId::from(ioas), flags)
    }

    /// A mock device attached directly to `hwpt`.
    ///
    /// ```no_run
    /// use iommufd::selftest::{MockDeviceFlags, MockDomain};
    /// use iommufd::{Hwpt, HwptFlags};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let first = MockDomain::new(&ioas)?;
    /// let hwpt = Hwpt::alloc(&fd, first.idev_id(), &ioas, HwptFlags::empty())?;
    /// let second = MockDomain::on_hwpt(&hwpt, MockDeviceFlags::empty())?;
    /// assert_eq!(second.hwpt_id(), hwpt.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn on_hwpt(hwpt: &'a Hwpt<'_>, flags: MockDeviceFlags) -> Result<MockDomain<'a>> {
        MockDomain::create(hwpt.iommufd(), PtId::from(hwpt), flags)
    }

    fn create(fd: &'a Iommufd, pt: PtId, flags: MockDeviceFlags) -> Result<MockDomain<'a>> {
        // Plain MOCK_DOMAIN when no flags are asked for: it is older (6.2) than
        // MOCK_DOMAIN_FLAGS (6.7), and its payload is a prefix of the flags one.
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
        let out = test_cmd(fd, cmd, "IOMMU_TEST_OP_MOCK_DOMAIN", pt)?;
        // SAFETY: the kernel filled the `mock_domain_flags` member (a prefix-compatible
        // superset of `mock_domain`); every member is plain integers.
        let md = unsafe { out.__bindgen_anon_1.mock_domain_flags };
        Ok(MockDomain {
            fd,
            stdev_id: md.out_stdev_id,
            hwpt_id: HwptId::from_raw(md.out_hwpt_id),
            idev_id: DeviceId::from_raw(md.out_idev_id),
        })
    }

    /// The id of the selftest object (what `IOMMU_DESTROY` takes).
    ///
    /// ```no_run
    /// # use iommufd::{Iommufd, selftest::MockDomain};
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let mock = MockDomain::new(&ioas)?;
    /// assert_ne!(mock.stdev_id(), mock.idev_id().raw()); // two objects of the file
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn stdev_id(&self) -> u32 {
        self.stdev_id
    }

    /// The HWPT the device is attached to (the mock domain).
    ///
    /// ```no_run
    /// # use iommufd::{Iommufd, selftest::MockDomain};
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let mock = MockDomain::new(&ioas)?;
    /// # use iommufd::{MapFlags, MmapRegion};
    /// let m = ioas.map_owned(MmapRegion::new(4096)?, None, MapFlags::RW)?;
    /// iommufd::selftest::md_check_map(&fd, mock.hwpt_id(), m.iova(), m.region().as_ptr(), 4096)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn hwpt_id(&self) -> HwptId {
        self.hwpt_id
    }

    /// The bound device (for [`Hwpt::alloc`], [`Iommufd::hw_info`]).
    ///
    /// ```no_run
    /// # use iommufd::{Iommufd, selftest::MockDomain};
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let mock = MockDomain::new(&ioas)?;
    /// let info = fd.hw_info(mock.idev_id())?;
    /// assert_eq!(info.device, mock.idev_id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn idev_id(&self) -> DeviceId {
        self.idev_id
    }

    /// Re-attaches the device to `pt` (`IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`) and
    /// returns the HWPT it is now attached to. `pt` must outlive the mock device;
    /// the caller keeps that order.
    ///
    /// ```no_run
    /// # use iommufd::{Hwpt, HwptFlags, Iommufd, selftest::MockDomain};
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let mut mock = MockDomain::new(&ioas)?;
    /// let hwpt = Hwpt::alloc(&fd, mock.idev_id(), &ioas, HwptFlags::empty())?;
    /// assert_eq!(mock.replace(&hwpt)?, hwpt.id());
    /// mock.replace(&ioas)?; // off `hwpt` again before it is dropped
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn replace(&mut self, pt: impl Into<PtId>) -> Result<HwptId> {
        let pt = pt.into();
        self.fd
            .check_owner("IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE", pt.owner(), pt)?;
        let mut cmd = new_cmd(st::IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE, self.stdev_id);
        cmd.__bindgen_anon_1.mock_domain_replace =
            st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_4 { pt_id: pt.raw() };
        let out = test_cmd(self.fd, cmd, "IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE", pt)?;
        // SAFETY: plain integers.
        let hwpt = HwptId::from_raw(unsafe { out.__bindgen_anon_1.mock_domain_replace.pt_id });
        self.hwpt_id = hwpt;
        Ok(hwpt)
    }

    /// Attaches PASID `pasid` of the mock device to `pt`
    /// (`IOMMU_TEST_OP_PASID_ATTACH`, Linux 6.15): the kernel's own PASID attach path
    /// (`iommufd_device_attach` with a PASID), driven without PASID-capable hardware.
    /// Needs a device made with [`MockDeviceFlags::PASID`] whose RID is attached to a
    /// PASID-compatible HWPT ([`HwptFlags::PASID`](crate::HwptFlags::PASID)).
    ///
    /// ```no_run
    /// use iommufd::selftest::{MockDeviceFlags, MockDomain};
    /// use iommufd::{Hwpt, HwptFlags};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let first = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID)?;
    /// # let hwpt = Hwpt::alloc(&fd, first.idev_id(), &ioas, HwptFlags::PASID)?;
    /// let mut mock = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID)?;
    /// mock.replace(&hwpt)?; // the RID on a PASID-compatible HWPT first
    /// mock.attach_pasid(100, &hwpt)?;
    /// assert!(mock.pasid_attached_to(100, Some(hwpt.id()))?);
    /// # mock.detach_pasid(100)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn attach_pasid(&self, pasid: u32, pt: impl Into<PtId>) -> Result<()> {
        let pt = pt.into();
        self.fd
            .check_owner("IOMMU_TEST_OP_PASID_ATTACH", pt.owner(), pt)?;
        let mut cmd = new_cmd(st::IOMMU_TEST_OP_PASID_ATTACH, self.stdev_id);
        cmd.__bindgen_anon_1.pasid_attach = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_18 {
            pasid,
            pt_id: pt.raw(),
        };
        test_cmd(self.fd, cmd, "IOMMU_TEST_OP_PASID_ATTACH", pt).map(|_| ())
    }

    /// Moves PASID `pasid` to `pt` (`IOMMU_TEST_OP_PASID_REPLACE`).
    ///
    /// ```no_run
    /// # use iommufd::{Hwpt, HwptFlags, selftest::{MockDeviceFlags, MockDomain}};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let first = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID)?;
    /// # let hwpt1 = Hwpt::alloc(&fd, first.idev_id(), &ioas, HwptFlags::PASID)?;
    /// # let hwpt2 = Hwpt::alloc(&fd, first.idev_id(), &ioas, HwptFlags::PASID)?;
    /// # let mut mock = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID)?;
    /// # mock.replace(&hwpt1)?;
    /// mock.attach_pasid(100, &hwpt1)?;
    /// mock.replace_pasid(100, &hwpt2)?;
    /// assert!(mock.pasid_attached_to(100, Some(hwpt2.id()))?);
    /// # mock.detach_pasid(100)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn replace_pasid(&self, pasid: u32, pt: impl Into<PtId>) -> Result<()> {
        let pt = pt.into();
        self.fd
            .check_owner("IOMMU_TEST_OP_PASID_REPLACE", pt.owner(), pt)?;
        let mut cmd = new_cmd(st::IOMMU_TEST_OP_PASID_REPLACE, self.stdev_id);
        cmd.__bindgen_anon_1.pasid_replace = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_19 {
            pasid,
            pt_id: pt.raw(),
        };
        test_cmd(self.fd, cmd, "IOMMU_TEST_OP_PASID_REPLACE", pt).map(|_| ())
    }

    /// Detaches PASID `pasid` (`IOMMU_TEST_OP_PASID_DETACH`).
    ///
    /// ```no_run
    /// # use iommufd::{Hwpt, HwptFlags, selftest::{MockDeviceFlags, MockDomain}};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let first = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID)?;
    /// # let hwpt = Hwpt::alloc(&fd, first.idev_id(), &ioas, HwptFlags::PASID)?;
    /// # let mut mock = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID)?;
    /// # mock.replace(&hwpt)?;
    /// mock.attach_pasid(100, &hwpt)?;
    /// mock.detach_pasid(100)?;
    /// assert!(mock.pasid_attached_to(100, None)?);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn detach_pasid(&self, pasid: u32) -> Result<()> {
        let mut cmd = new_cmd(st::IOMMU_TEST_OP_PASID_DETACH, self.stdev_id);
        cmd.__bindgen_anon_1.pasid_detach =
            st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_20 { pasid };
        test_cmd(
            self.fd,
            cmd,
            "IOMMU_TEST_OP_PASID_DETACH",
            format_args!("pasid {pasid}"),
        )
        .map(|_| ())
    }

    /// Whether PASID `pasid` is attached to `hwpt` (`None`: to nothing), as the
    /// kernel sees it (`IOMMU_TEST_OP_PASID_CHECK_HWPT`).
    ///
    /// ```no_run
    /// # use iommufd::selftest::{MockDeviceFlags, MockDomain};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let mock = MockDomain::with_flags(&ioas, MockDeviceFlags::PASID)?;
    /// assert!(mock.pasid_attached_to(7, None)?); // nothing attached yet
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn pasid_attached_to(&self, pasid: u32, hwpt: Option<HwptId>) -> Result<bool> {
        let mut cmd = new_cmd(st::IOMMU_TEST_OP_PASID_CHECK_HWPT, self.stdev_id);
        cmd.__bindgen_anon_1.pasid_check = st::iommu_test_cmd__bindgen_ty_1__bindgen_ty_21 {
            pasid,
            hwpt_id: hwpt.map_or(0, HwptId::raw),
        };
        match test_cmd(
            self.fd,
            cmd,
            "IOMMU_TEST_OP_PASID_CHECK_HWPT",
            format_args!("pasid {pasid}"),
        ) {
            Ok(_) => Ok(true),
            Err(e) if e.errno() == Some(libc::EINVAL) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Has the kernel check that the mock domain maps `len` bytes at `iova` to the
    /// pages of this process's memory at `va` ([`md_check_map`]).
    ///
    /// ```no_run
    /// use iommufd::{MapFlags, MmapRegion};
    /// # use iommufd::{Iommufd, selftest::MockDomain};
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let mock = MockDomain::new(&ioas)?;
    /// let m = ioas.map_owned(MmapRegion::new(8192)?, None, MapFlags::RW)?;
    /// mock.check_map(m.iova(), m.region().as_ptr(), 8192)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn check_map(&self, iova: Iova, va: *const u8, len: u64) -> Result<()> {
        md_check_map(self.fd, self.hwpt_id, iova, va, len)
    }

    /// Destroys the mock device now, returning the kernel's error.
    ///
    /// ```no_run
    /// # use iommufd::{Iommufd, selftest::MockDomain};
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let mock = MockDomain::new(&ioas)?;
    /// mock.destroy()?; // detached and unbound; its mock domain is freed
    /// ioas.destroy()?; // no longer busy
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn destroy(self) -> Result<()> {
        let this = ManuallyDrop::new(self);
        this.fd.destroy_id(
            this.stdev_id,
            format_args!("selftest device {}", this.stdev_id),
        )
    }
}

impl Drop for MockDomain<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.fd.destroy_id(
            self.stdev_id,
            format_args!("selftest device {}", self.stdev_id),
        ) {
            eprintln!("iommufd: dropping mock device {}: {e}", self.stdev_id);
        }
    }
}

/// Reserves `len` bytes of IOVA at `start` in `ioas`, as an IOMMU's reserved region
/// (e.g. an MSI window) would (`IOMMU_TEST_OP_ADD_RESERVED`). Kernel-chosen IOVAs
/// avoid it and [`Ioas::allow_iovas`] over it fails with `EADDRINUSE`.
///
/// ```no_run
/// use iommufd::{Iova, IovaRange, selftest};
/// # let fd = iommufd::Iommufd::open()?;
/// let ioas = fd.alloc_ioas()?;
/// selftest::add_reserved(&ioas, Iova(0xfee0_0000), 1 << 20)?; // like an MSI window
/// let e = ioas.allow_iovas(&[IovaRange::FULL]).unwrap_err();
/// assert_eq!(e.errno(), Some(libc::EADDRINUSE));
/// # Ok::<(), iommufd::Error>(())
/// ```
pub fn add_reserved(ioas: &Ioas<'_>, start: Iova, len: u64) -> Result<()> {
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
/// mock page size. Fails with `EINVAL` on a mismatch.
///
/// The kernel only looks up the pages behind `va` (as `get_user_pages` would for a
/// read); it does not access their contents through the pointer.
///
/// ```no_run
/// use iommufd::{Iommufd, Iova, MapFlags, MmapRegion, selftest};
/// let fd = Iommufd::open()?;
/// let ioas = fd.alloc_ioas()?;
/// let mock = selftest::MockDomain::new(&ioas)?;
/// let m = ioas.map_owned(MmapRegion::new(8192)?, Some(Iova(1 << 24)), MapFlags::RW)?;
/// selftest::md_check_map(&fd, mock.hwpt_id(), m.iova(), m.region().as_ptr(), 8192)?;
/// # Ok::<(), iommufd::Error>(())
/// ```
pub fn md_check_map(fd: &Iommufd, hwpt: HwptId, iova: Iova, va: *const u8, len: u64) -> Result<()> {
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
/// use iommufd::{Iommufd, MapFlags, MmapRegion, selftest};
/// let fd = Iommufd::open()?;
/// let ioas = fd.alloc_ioas()?;
/// let _mock = selftest::MockDomain::new(&ioas)?; // a domain pins what is mapped
/// let m = ioas.map_owned(MmapRegion::new(4096)?, None, MapFlags::RW)?;
/// selftest::check_refs(&fd, m.region().as_ptr(), 4096, 1)?;
/// let region = m.unmap()?;
/// selftest::check_refs(&fd, region.as_ptr(), 4096, 0)?;
/// # Ok::<(), iommufd::Error>(())
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
/// enabled on the HWPT ([`Hwpt::set_dirty_tracking`]); only mapped IOVAs take the
/// mark.
///
/// ```no_run
/// use iommufd::selftest::{self, MOCK_PAGE_SIZE, MockDomain};
/// use iommufd::{DirtyBitmap, Hwpt, HwptFlags, Iova, MapFlags, MmapRegion};
/// # let fd = iommufd::Iommufd::open()?;
/// # let ioas = fd.alloc_ioas()?;
/// # let mock = MockDomain::new(&ioas)?;
/// let hwpt = Hwpt::alloc(&fd, mock.idev_id(), &ioas, HwptFlags::DIRTY_TRACKING)?;
/// let m = ioas.map_owned(MmapRegion::new(4096)?, Some(Iova(1 << 24)), MapFlags::RW)?;
/// hwpt.set_dirty_tracking(true)?;
/// let mut marks = DirtyBitmap::new(m.iova(), 4096, MOCK_PAGE_SIZE)?;
/// marks.set(0);
/// marks.set(1); // both mock pages of the CPU page
/// assert_eq!(selftest::set_dirty(&hwpt, &marks)?, 2);
/// # Ok::<(), iommufd::Error>(())
/// ```
pub fn set_dirty(hwpt: &Hwpt<'_>, dirty: &DirtyBitmap) -> Result<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_match_the_mock() {
        assert_eq!(MOCK_APERTURE_START, 1 << 24);
        assert_eq!(MOCK_APERTURE_LAST, (1 << 31) - 1);
        assert_eq!(MOCK_PAGE_SIZE, 2048);
        assert_eq!(HW_INFO_SELFTEST_REGVAL, 0xdeadbeef);
        assert_eq!(size_of::<st::iommu_test_cmd>(), 72);
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

    // A real IOMMU_TEST_CMD on a file that is not an iommufd.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn test_cmd_on_a_non_iommufd_is_unsupported() {
        let fd = Iommufd::open_path("/dev/null").expect("/dev/null");
        let e = check_refs(&fd, std::ptr::null(), 0, 0).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
    }

    // Every wrapper reaches the kernel (here /dev/null, which answers ENOTTY).
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn wrappers_on_a_non_iommufd() {
        let fd = Iommufd::open_path("/dev/null").expect("/dev/null");
        let other = Iommufd::open_path("/dev/null").expect("/dev/null");
        let ioas = Ioas::fake(&fd, 1);
        let hwpt = Hwpt::fake(&fd, 2);
        let e = MockDomain::new(&ioas).unwrap_err();
        assert!(e.to_string().contains("MOCK_DOMAIN on ioas 1"), "{e}");
        let e = MockDomain::with_flags(&ioas, MockDeviceFlags::NO_DIRTY).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        let e = MockDomain::on_hwpt(&hwpt, MockDeviceFlags::PASID).unwrap_err();
        assert!(e.to_string().contains("on hwpt 2"), "{e}");
        let e = add_reserved(&ioas, Iova(0), 4096).unwrap_err();
        assert!(e.to_string().contains("ADD_RESERVED on ioas 1"), "{e}");
        let bm = DirtyBitmap::new(Iova(0), 4096, 2048).expect("bitmap");
        let e = set_dirty(&hwpt, &bm).unwrap_err();
        assert!(
            e.to_string().contains("IOMMU_TEST_OP_DIRTY on hwpt 2"),
            "{e}"
        );
        let mut mock = MockDomain {
            fd: &fd,
            stdev_id: 9,
            hwpt_id: HwptId::from_raw(10),
            idev_id: DeviceId::from_raw(11),
        };
        assert_eq!(
            (mock.stdev_id(), mock.hwpt_id().raw(), mock.idev_id().raw()),
            (9, 10, 11)
        );
        assert!(format!("{mock:?}").contains("stdev_id: 9"));
        let e = mock.replace(crate::IoasId::from_raw(1)).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        let e = mock.check_map(Iova(0), std::ptr::null(), 2048).unwrap_err();
        assert!(e.to_string().contains("MD_CHECK_MAP on hwpt 10"), "{e}");
        let foreign = Ioas::fake(&other, 1);
        let e = mock.replace(&foreign).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        let _ = (foreign.into_id(), ioas.into_id(), hwpt.into_id());
        assert!(mock.destroy().unwrap_err().is_unsupported());
        // Dropping one whose DESTROY fails only logs.
        drop(MockDomain {
            fd: &fd,
            stdev_id: 12,
            hwpt_id: HwptId::from_raw(13),
            idev_id: DeviceId::from_raw(14),
        });
    }
}
