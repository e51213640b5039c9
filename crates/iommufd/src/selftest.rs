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
pub const MOCK_APERTURE_START: u64 = st::MOCK_APERTURE_START as u64;
/// The last IOVA a mock domain can map.
pub const MOCK_APERTURE_LAST: u64 = st::MOCK_APERTURE_LAST as u64;
/// The page size of the mock IOMMU (2 KiB).
pub const MOCK_PAGE_SIZE: u64 = st::MOCK_PAGE_SIZE as u64;
/// The `test_reg` of a mock device's hardware information.
pub const HW_INFO_SELFTEST_REGVAL: u32 = st::IOMMU_HW_INFO_SELFTEST_REGVAL;

bitflags! {
    /// Properties of a mock device (`MOCK_FLAGS_DEVICE_*`).
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

/// A mock device bound to the iommufd and attached to an IOAS or HWPT
/// (`IOMMU_TEST_OP_MOCK_DOMAIN`): the kernel creates the device, binds it (the
/// device id) and attaches it, creating a HWPT ("mock domain") when attached to an
/// IOAS.
///
/// Borrows the IOAS or HWPT it was attached to, so it is destroyed first. Dropping it
/// destroys the selftest object (`IOMMU_DESTROY` of [`MockDomain::stdev_id`]), which
/// detaches and unbinds the device and frees an automatically created HWPT.
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
    pub fn new(ioas: &'a Ioas<'_>) -> Result<MockDomain<'a>> {
        MockDomain::create(ioas.iommufd(), PtId::from(ioas), MockDeviceFlags::empty())
    }

    /// A mock device with `flags`, attached to `ioas`
    /// (`IOMMU_TEST_OP_MOCK_DOMAIN_FLAGS`).
    pub fn with_flags(ioas: &'a Ioas<'_>, flags: MockDeviceFlags) -> Result<MockDomain<'a>> {
        MockDomain::create(ioas.iommufd(), PtId::from(ioas), flags)
    }

    /// A mock device attached directly to `hwpt`.
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
    pub fn stdev_id(&self) -> u32 {
        self.stdev_id
    }

    /// The HWPT the device is attached to (the mock domain).
    pub fn hwpt_id(&self) -> HwptId {
        self.hwpt_id
    }

    /// The bound device (for [`Hwpt::alloc`], [`Iommufd::hw_info`]).
    pub fn idev_id(&self) -> DeviceId {
        self.idev_id
    }

    /// Re-attaches the device to `pt` (`IOMMU_TEST_OP_MOCK_DOMAIN_REPLACE`) and
    /// returns the HWPT it is now attached to. `pt` must outlive the mock device;
    /// the caller keeps that order.
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
    pub fn check_map(&self, iova: Iova, va: *const u8, len: u64) -> Result<()> {
        md_check_map(self.fd, self.hwpt_id, iova, va, len)
    }

    /// Destroys the mock device now, returning the kernel's error.
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
    fn test_cmd_on_a_non_iommufd_is_unsupported() {
        let fd = Iommufd::open_path("/dev/null").expect("/dev/null");
        let e = check_refs(&fd, std::ptr::null(), 0, 0).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
    }

    // Every wrapper reaches the kernel (here /dev/null, which answers ENOTTY).
    #[test]
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
