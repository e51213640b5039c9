//! Batched cache invalidation (`IOMMU_HWPT_INVALIDATE`, Linux 6.8): typed entries
//! for nested HWPTs and vIOMMUs, any number of them in one call.
//!
//! A guest that changes its stage-1 tables tells its vIOMMU to drop cached
//! translations, often many at once (a queue of VT-d descriptors, an SMMUv3 command
//! queue). Each entry type here is the kernel's `#[repr(C)]` entry, built only
//! through checked constructors, so a slice of them is passed to the kernel as is:
//! one system call per batch, however long.

use std::fmt;

use iommufd_uapi as uapi;

use crate::Stage1Error;
use crate::sys::{Errno, arg};
use crate::{Error, Iommufd, Result};

pub(crate) mod sealed {
    pub trait Sealed {}
}

/// An invalidation entry: the kernel's structure for one data type. Sealed: the
/// entry types are this crate's, each a `#[repr(transparent)]` wrapper of the
/// kernel's structure.
pub trait InvalidationEntry: sealed::Sealed + Copy + fmt::Debug + Send + Sync + 'static {
    /// The kernel's data type code (`IOMMU_HWPT_INVALIDATE_DATA_*` or
    /// `IOMMU_VIOMMU_INVALIDATE_DATA_*`).
    const DATA_TYPE: u32;

    /// The guest's id of the device the entry is for (an SMMUv3 stream id, a mock
    /// vDEVICE id), if the entry names one: how an error names the device.
    fn virt_id(&self) -> Option<u64> {
        None
    }
}

/// An entry sent to a nested HWPT ([`NestedHwpt::invalidate`](crate::NestedHwpt::invalidate)).
pub trait HwptInvalidation: InvalidationEntry {}

/// An entry sent to a vIOMMU ([`Viommu::invalidate`](crate::Viommu::invalidate)).
pub trait ViommuInvalidation: InvalidationEntry {}

/// A VT-d stage-1 IOTLB invalidation (`IOMMU_HWPT_INVALIDATE_DATA_VTD_S1`): a range
/// of the guest's first-level table, or all of it.
///
/// ```
/// use iommufd::VtdS1Invalidation;
/// let one = VtdS1Invalidation::range(0x10_0000, 16, true)?; // 16 pages, leaf entries only
/// assert_eq!((one.addr(), one.npages(), one.leaf()), (0x10_0000, 16, true));
/// assert!(VtdS1Invalidation::range(0x10_0001, 1, false).is_err());
/// let all = VtdS1Invalidation::all();
/// assert_eq!(all.npages(), u64::MAX);
/// # Ok::<(), iommufd::Stage1Error>(())
/// ```
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct VtdS1Invalidation(uapi::iommu_hwpt_vtd_s1_invalidate);

impl VtdS1Invalidation {
    /// `npages` 4 KiB pages from `addr` (4 KiB aligned, `npages` > 0); `leaf`: only
    /// leaf entries changed (the paging-structure caches may stay).
    pub fn range(addr: u64, npages: u64, leaf: bool) -> Result<Self, Stage1Error> {
        if addr % 4096 != 0 {
            return Err(Stage1Error::Misaligned {
                field: "addr",
                value: addr,
                align: 4096,
            });
        }
        if npages == 0 || (npages == u64::MAX && addr != 0) {
            return Err(Stage1Error::BadField {
                field: "npages",
                value: npages,
                reason: "at least 1; u64::MAX only with address 0 (everything)",
            });
        }
        Ok(VtdS1Invalidation(uapi::iommu_hwpt_vtd_s1_invalidate {
            addr,
            npages,
            flags: if leaf {
                uapi::IOMMU_VTD_INV_FLAGS_LEAF
            } else {
                0
            },
            __reserved: 0,
        }))
    }

    /// Everything the HWPT caches.
    pub fn all() -> Self {
        VtdS1Invalidation(uapi::iommu_hwpt_vtd_s1_invalidate {
            addr: 0,
            npages: u64::MAX,
            flags: 0,
            __reserved: 0,
        })
    }

    /// The first address.
    pub fn addr(&self) -> u64 {
        self.0.addr
    }

    /// The number of 4 KiB pages (`u64::MAX`: all).
    pub fn npages(&self) -> u64 {
        self.0.npages
    }

    /// Whether only leaf entries changed.
    pub fn leaf(&self) -> bool {
        self.0.flags & uapi::IOMMU_VTD_INV_FLAGS_LEAF != 0
    }
}

impl fmt::Debug for VtdS1Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VtdS1Invalidation")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("npages", &self.npages())
            .field("leaf", &self.leaf())
            .finish()
    }
}

impl sealed::Sealed for VtdS1Invalidation {}
impl InvalidationEntry for VtdS1Invalidation {
    const DATA_TYPE: u32 = uapi::IOMMU_HWPT_INVALIDATE_DATA_VTD_S1;
}
impl HwptInvalidation for VtdS1Invalidation {}

/// The SMMUv3 command opcodes a guest may send through a vIOMMU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SmmuV3Opcode {
    /// `CMD_CFGI_CD` (0x05): a context descriptor of a stream changed.
    CfgiCd,
    /// `CMD_CFGI_CD_ALL` (0x06): every context descriptor of a stream changed.
    CfgiCdAll,
    /// `CMD_TLBI_NH_ALL` (0x10).
    TlbiNhAll,
    /// `CMD_TLBI_NH_ASID` (0x11).
    TlbiNhAsid,
    /// `CMD_TLBI_NH_VA` (0x12).
    TlbiNhVa,
    /// `CMD_TLBI_NH_VAA` (0x13).
    TlbiNhVaa,
    /// `CMD_TLBI_NSNH_ALL` (0x30): the kernel turns it into `TLBI_NH_ALL` of the
    /// vIOMMU's VMID.
    TlbiNsnhAll,
    /// `CMD_ATC_INV` (0x40): a device's ATS cache.
    AtcInv,
}

impl SmmuV3Opcode {
    fn from_byte(op: u8) -> Option<SmmuV3Opcode> {
        Some(match op {
            0x05 => SmmuV3Opcode::CfgiCd,
            0x06 => SmmuV3Opcode::CfgiCdAll,
            0x10 => SmmuV3Opcode::TlbiNhAll,
            0x11 => SmmuV3Opcode::TlbiNhAsid,
            0x12 => SmmuV3Opcode::TlbiNhVa,
            0x13 => SmmuV3Opcode::TlbiNhVaa,
            0x30 => SmmuV3Opcode::TlbiNsnhAll,
            0x40 => SmmuV3Opcode::AtcInv,
            _ => return None,
        })
    }

    fn byte(self) -> u64 {
        match self {
            SmmuV3Opcode::CfgiCd => 0x05,
            SmmuV3Opcode::CfgiCdAll => 0x06,
            SmmuV3Opcode::TlbiNhAll => 0x10,
            SmmuV3Opcode::TlbiNhAsid => 0x11,
            SmmuV3Opcode::TlbiNhVa => 0x12,
            SmmuV3Opcode::TlbiNhVaa => 0x13,
            SmmuV3Opcode::TlbiNsnhAll => 0x30,
            SmmuV3Opcode::AtcInv => 0x40,
        }
    }

    /// The bits of each word user space may set for this opcode on the most
    /// capable SMMU (16-bit ASIDs, substreams, range invalidation, ATS). The kernel
    /// narrows them to what the physical SMMU has.
    fn allowed(self) -> [u64; 2] {
        const OP: u64 = 0xff;
        const VMID: u64 = 0xffff << 32;
        const ASID: u64 = 0xffff << 48;
        const NUM_SCALE: u64 = (0x1f << 12) | (0x3f << 20);
        const TG_TTL: u64 = 0b1111 << 8;
        const VA: u64 = !0xfff;
        const SID: u64 = 0xffff_ffff << 32;
        const SSID: u64 = 0xf_ffff << 12;
        const SSV: u64 = 1 << 11;
        match self {
            SmmuV3Opcode::TlbiNsnhAll => [OP, 0],
            SmmuV3Opcode::TlbiNhVa => [OP | ASID | NUM_SCALE | VMID, 1 | VA | TG_TTL],
            SmmuV3Opcode::TlbiNhVaa => [OP | NUM_SCALE | VMID, 1 | VA | TG_TTL],
            SmmuV3Opcode::TlbiNhAsid => [OP | ASID | VMID, 0],
            SmmuV3Opcode::TlbiNhAll => [OP | VMID, 0],
            SmmuV3Opcode::AtcInv => [OP | SSV | SSID | (1 << 9) | SID, 0x3f | VA],
            SmmuV3Opcode::CfgiCd => [OP | SSID | SID, 1],
            SmmuV3Opcode::CfgiCdAll => [OP | SID, 0],
        }
    }
}

/// One SMMUv3 command for a vIOMMU (`IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`): a
/// guest's command-queue entry, checked for the opcodes and fields the kernel
/// forwards. Stream ids in it are the guest's (vSIDs, the virtual ids of
/// [`Vdevice`](crate::Vdevice)s); the kernel translates them and sets the VMID.
///
/// ```
/// use iommufd::{SmmuV3Command, SmmuV3Opcode};
/// let cmd = SmmuV3Command::cfgi_cd(0x10, 0, true); // vSID 0x10, substream 0, leaf
/// assert_eq!(cmd.opcode(), SmmuV3Opcode::CfgiCd);
/// assert_eq!(cmd.virt_sid(), Some(0x10));
/// // A guest's CMD_CFGI_STE (0x03) is the VMM's to emulate, never forwarded:
/// assert!(SmmuV3Command::from_words([0x03, 0]).is_err());
/// # Ok::<(), iommufd::Stage1Error>(())
/// ```
#[derive(Clone, Copy)]
#[repr(transparent)]
pub struct SmmuV3Command(uapi::iommu_viommu_arm_smmuv3_invalidate);

impl SmmuV3Command {
    /// A command the guest wrote (two words in CPU order).
    pub fn from_words(words: [u64; 2]) -> Result<Self, Stage1Error> {
        let op = SmmuV3Opcode::from_byte(words[0] as u8).ok_or(Stage1Error::BadField {
            field: "opcode",
            value: words[0] & 0xff,
            reason: "one of CFGI_CD(_ALL), TLBI_NH_*, TLBI_NSNH_ALL, ATC_INV",
        })?;
        for (word, (w, allowed)) in words.iter().zip(op.allowed()).enumerate() {
            if w & !allowed != 0 {
                return Err(Stage1Error::ReservedBits {
                    word,
                    bits: w & !allowed,
                });
            }
        }
        if op == SmmuV3Opcode::AtcInv && words[1] & 0x3f > 52 {
            return Err(Stage1Error::BadField {
                field: "Size",
                value: words[1] & 0x3f,
                reason: "at most 52 (everything)",
            });
        }
        Ok(SmmuV3Command(uapi::iommu_viommu_arm_smmuv3_invalidate {
            cmd: words.map(u64::to_le),
        }))
    }

    fn make(op: SmmuV3Opcode, w0: u64, w1: u64) -> Self {
        SmmuV3Command(uapi::iommu_viommu_arm_smmuv3_invalidate {
            cmd: [(op.byte() | w0).to_le(), w1.to_le()],
        })
    }

    /// `CMD_CFGI_CD`: the context descriptor `ssid` of stream `vsid` changed.
    pub fn cfgi_cd(vsid: u32, ssid: u32, leaf: bool) -> Self {
        let w0 = (u64::from(vsid) << 32) | ((u64::from(ssid) & 0xf_ffff) << 12);
        Self::make(SmmuV3Opcode::CfgiCd, w0, u64::from(leaf))
    }

    /// `CMD_CFGI_CD_ALL`: every context descriptor of stream `vsid` changed.
    pub fn cfgi_cd_all(vsid: u32) -> Self {
        Self::make(SmmuV3Opcode::CfgiCdAll, u64::from(vsid) << 32, 0)
    }

    /// `CMD_TLBI_NH_ALL`: every stage-1 TLB entry of the vIOMMU.
    pub fn tlbi_nh_all() -> Self {
        Self::make(SmmuV3Opcode::TlbiNhAll, 0, 0)
    }

    /// `CMD_TLBI_NH_ASID`: the entries of address space `asid`.
    pub fn tlbi_nh_asid(asid: u16) -> Self {
        Self::make(SmmuV3Opcode::TlbiNhAsid, u64::from(asid) << 48, 0)
    }

    /// `CMD_TLBI_NH_VA`: the entry of `addr` (4 KiB aligned) in address space
    /// `asid`; `leaf`: only the leaf entry.
    pub fn tlbi_nh_va(asid: u16, addr: u64, leaf: bool) -> Self {
        Self::make(
            SmmuV3Opcode::TlbiNhVa,
            u64::from(asid) << 48,
            (addr & !0xfff) | u64::from(leaf),
        )
    }

    /// `CMD_ATC_INV`: the ATS cache of stream `vsid` (substream `ssid` if given),
    /// `2^size_log2` pages from `addr`; `size_log2` 52 means everything.
    pub fn atc_inv(vsid: u32, ssid: Option<u32>, addr: u64, size_log2: u8) -> Self {
        let mut w0 = u64::from(vsid) << 32;
        if let Some(ssid) = ssid {
            w0 |= (1 << 11) | ((u64::from(ssid) & 0xf_ffff) << 12);
        }
        Self::make(
            SmmuV3Opcode::AtcInv,
            w0,
            (addr & !0xfff) | u64::from(size_log2.min(52)),
        )
    }

    /// The opcode.
    pub fn opcode(&self) -> SmmuV3Opcode {
        // Only constructors that checked the opcode make commands.
        SmmuV3Opcode::from_byte(self.words()[0] as u8).unwrap_or(SmmuV3Opcode::TlbiNhAll)
    }

    /// The two words, in CPU order.
    pub fn words(&self) -> [u64; 2] {
        self.0.cmd.map(u64::from_le)
    }

    /// The guest's stream id the command names (`CFGI_CD`, `CFGI_CD_ALL`,
    /// `ATC_INV`).
    pub fn virt_sid(&self) -> Option<u32> {
        match self.opcode() {
            SmmuV3Opcode::CfgiCd | SmmuV3Opcode::CfgiCdAll | SmmuV3Opcode::AtcInv => {
                Some((self.words()[0] >> 32) as u32)
            }
            _ => None,
        }
    }
}

impl fmt::Debug for SmmuV3Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b] = self.words();
        write!(
            f,
            "SmmuV3Command({:?}, [{a:#018x}, {b:#018x}])",
            self.opcode()
        )
    }
}

impl sealed::Sealed for SmmuV3Command {}
impl InvalidationEntry for SmmuV3Command {
    const DATA_TYPE: u32 = uapi::IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3;

    fn virt_id(&self) -> Option<u64> {
        self.virt_sid().map(u64::from)
    }
}
impl ViommuInvalidation for SmmuV3Command {}

/// How one batch went: the kernel handled `entry_num` entries of it.
pub(crate) struct BatchFailure {
    pub(crate) handled: u32,
    pub(crate) errno: Errno,
}

/// The most entries the kernel takes in one call (Linux 7.3 bounds `entry_num` so
/// that one call cannot hold the CPU for long).
pub(crate) const ENTRIES_PER_CALL: usize = 1 << 19;

/// `IOMMU_HWPT_INVALIDATE` of `entries` on object `id` (a nested HWPT or a vIOMMU):
/// one call, or one per [`ENTRIES_PER_CALL`] entries for longer batches.
pub(crate) fn invalidate_raw<E: InvalidationEntry>(
    fd: &Iommufd,
    id: u32,
    entries: &[E],
) -> std::result::Result<(), BatchFailure> {
    if entries.is_empty() {
        return invalidate_call(fd, id, entries);
    }
    let mut handled = 0u32;
    for chunk in entries.chunks(ENTRIES_PER_CALL) {
        invalidate_call(fd, id, chunk).map_err(|f| BatchFailure {
            handled: handled.saturating_add(f.handled),
            errno: f.errno,
        })?;
        // A chunk is at most 2^19 entries.
        handled = handled.saturating_add(chunk.len() as u32);
    }
    Ok(())
}

fn invalidate_call<E: InvalidationEntry>(
    fd: &Iommufd,
    id: u32,
    entries: &[E],
) -> std::result::Result<(), BatchFailure> {
    // Callers pass at most ENTRIES_PER_CALL entries.
    let num = entries.len() as u32;
    let mut a: uapi::iommu_hwpt_invalidate = arg();
    a.hwpt_id = id;
    a.data_type = E::DATA_TYPE;
    // Entries are at most a few dozen bytes.
    a.entry_len = size_of::<E>() as u32;
    a.entry_num = num;
    a.data_uptr = if entries.is_empty() {
        0
    } else {
        entries.as_ptr() as u64
    };
    // SAFETY: `data_uptr` points to `entry_num` entries of `entry_len` bytes each
    // (a borrowed slice of `#[repr(transparent)]` kernel structures), which the
    // kernel only reads; with no entries it is 0.
    match unsafe { fd.ioctl(uapi::IOMMU_HWPT_INVALIDATE, &mut a) } {
        Ok(()) => Ok(()),
        Err(errno) => Err(BatchFailure {
            handled: handled_of(a.entry_num, num, errno.0),
            errno,
        }),
    }
}

/// How many entries a failed call handled, from the `entry_num` the kernel left
/// (`reported`) for `sent` entries. The kernel writes `entry_num` back once it ran
/// the command; refused before that (an unknown command, a structure it cannot
/// read), it still holds the count sent, and nothing was handled. A count above
/// what was sent is the kernel's error, read as all of them.
pub(crate) fn handled_of(reported: u32, sent: u32, errno: i32) -> u32 {
    if matches!(errno, libc::ENOTTY | libc::E2BIG | libc::EFAULT) {
        0
    } else {
        reported.min(sent)
    }
}

/// Turns a failed batch into the crate's error: `Unsupported` if the kernel does
/// not know the command (`ENOTTY`), `NotFound` if the object is gone, else
/// `InvalidationIncomplete` naming the first entry not handled (an IOMMU without
/// invalidation for the object refuses the first entry with `EOPNOTSUPP`).
pub(crate) fn batch_error<E: InvalidationEntry>(
    object: String,
    entries: &[E],
    f: BatchFailure,
    label_of: impl Fn(&E) -> Option<u64>,
) -> Error {
    const OP: &str = "IOMMU_HWPT_INVALIDATE";
    if f.handled == 0 && matches!(f.errno.0, libc::ENOTTY | libc::ENOENT) {
        return Error::naming_object(OP, object, f.errno.0);
    }
    let index = f.handled as usize;
    let entry = entries.get(index);
    Error::InvalidationIncomplete {
        object,
        handled: f.handled,
        entry: entry.map(|e| format!("{e:?}")),
        label: entry.and_then(label_of),
        errno: f.errno.0,
    }
}

/// The error of a failed invalidation call of `entries` (SMMUv3 commands) after
/// which the kernel left `reported` in `entry_num` with `errno`; `label_of` names
/// the devices by virtual id. For the fuzz target `invalidation_results` only
/// (built with `--cfg fuzzing`).
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn fuzz_invalidation_result(
    entries: &[SmmuV3Command],
    reported: u32,
    errno: i32,
    label_of: impl Fn(u64) -> Option<u64>,
) -> Error {
    let sent = u32::try_from(entries.len()).unwrap_or(u32::MAX);
    let f = BatchFailure {
        handled: handled_of(reported, sent, errno),
        errno: Errno(errno),
    };
    batch_error("viommu 1".into(), entries, f, |e| {
        e.virt_id().and_then(&label_of)
    })
}

#[cfg(feature = "selftest")]
pub use self::selftest_entries::*;

#[cfg(feature = "selftest")]
mod selftest_entries {
    use super::*;
    use iommufd_uapi::selftest as st;

    /// An invalidation of the mock IOMMU's nested HWPT IOTLB
    /// (`IOMMU_HWPT_INVALIDATE_DATA_SELFTEST`): entry `iotlb_id` (0 to 3) or all.
    ///
    /// ```
    /// use iommufd::SelftestHwptInvalidation;
    /// assert!(SelftestHwptInvalidation::one(3).is_ok());
    /// assert!(SelftestHwptInvalidation::one(4).is_err());
    /// ```
    #[derive(Clone, Copy, Debug)]
    #[repr(transparent)]
    pub struct SelftestHwptInvalidation(st::iommu_hwpt_invalidate_selftest);

    impl SelftestHwptInvalidation {
        /// Entry `iotlb_id` of the mock IOTLB.
        pub fn one(iotlb_id: u32) -> Result<Self, Stage1Error> {
            if iotlb_id > st::MOCK_NESTED_DOMAIN_IOTLB_ID_MAX {
                return Err(Stage1Error::BadField {
                    field: "iotlb_id",
                    value: iotlb_id.into(),
                    reason: "0 to MOCK_NESTED_DOMAIN_IOTLB_ID_MAX",
                });
            }
            Ok(Self::raw(0, iotlb_id))
        }

        /// Every entry.
        pub fn all() -> Self {
            Self::raw(st::IOMMU_TEST_INVALIDATE_FLAG_ALL, 0)
        }

        /// An entry with any `flags` and id, unchecked: the mock's own checks are
        /// what a test of error paths wants to reach.
        pub fn raw(flags: u32, iotlb_id: u32) -> Self {
            SelftestHwptInvalidation(st::iommu_hwpt_invalidate_selftest { flags, iotlb_id })
        }
    }

    impl sealed::Sealed for SelftestHwptInvalidation {}
    impl InvalidationEntry for SelftestHwptInvalidation {
        const DATA_TYPE: u32 = st::IOMMU_HWPT_INVALIDATE_DATA_SELFTEST;
    }
    impl HwptInvalidation for SelftestHwptInvalidation {}

    /// An invalidation of a mock vDEVICE's cache through the vIOMMU
    /// (`IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST`): entry `cache_id` (0 to 3) of the
    /// device with virtual id `vdev_id`, or all of its entries.
    #[derive(Clone, Copy, Debug)]
    #[repr(transparent)]
    pub struct SelftestViommuInvalidation(st::iommu_viommu_invalidate_selftest);

    impl SelftestViommuInvalidation {
        /// Entry `cache_id` of the device with virtual id `vdev_id`.
        pub fn one(vdev_id: u32, cache_id: u32) -> Self {
            Self::raw(0, vdev_id, cache_id)
        }

        /// Every entry of the device with virtual id `vdev_id`.
        pub fn all(vdev_id: u32) -> Self {
            Self::raw(st::IOMMU_TEST_INVALIDATE_FLAG_ALL, vdev_id, 0)
        }

        /// An entry with any fields, unchecked, for tests of the kernel's checks.
        pub fn raw(flags: u32, vdev_id: u32, cache_id: u32) -> Self {
            SelftestViommuInvalidation(st::iommu_viommu_invalidate_selftest {
                flags,
                vdev_id,
                cache_id,
            })
        }
    }

    impl sealed::Sealed for SelftestViommuInvalidation {}
    impl InvalidationEntry for SelftestViommuInvalidation {
        const DATA_TYPE: u32 = st::IOMMU_VIOMMU_INVALIDATE_DATA_SELFTEST;

        fn virt_id(&self) -> Option<u64> {
            Some(self.0.vdev_id.into())
        }
    }
    impl ViommuInvalidation for SelftestViommuInvalidation {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_the_kernel_structures() {
        assert_eq!(size_of::<VtdS1Invalidation>(), 24);
        assert_eq!(size_of::<SmmuV3Command>(), 16);
        assert_eq!(align_of::<VtdS1Invalidation>(), 8);
    }

    #[test]
    fn smmu_commands_round_trip_and_reject() {
        let cmds = [
            SmmuV3Command::cfgi_cd(7, 3, true),
            SmmuV3Command::cfgi_cd_all(7),
            SmmuV3Command::tlbi_nh_all(),
            SmmuV3Command::tlbi_nh_asid(0xffff),
            SmmuV3Command::tlbi_nh_va(1, 0x1234_5000, true),
            SmmuV3Command::atc_inv(9, Some(2), 0x4000, 60),
        ];
        for c in cmds {
            let back = SmmuV3Command::from_words(c.words()).unwrap();
            assert_eq!(back.words(), c.words(), "{c:?}");
        }
        assert_eq!(cmds[5].words()[1] & 0x3f, 52, "size clamped");
        assert_eq!(cmds[5].virt_sid(), Some(9));
        assert_eq!(cmds[2].virt_sid(), None);
        assert_eq!(cmds[0].virt_id(), Some(7));
        // An ASID in TLBI_NH_ALL is a reserved field there.
        let e = SmmuV3Command::from_words([0x10 | 1 << 48, 0]).unwrap_err();
        assert_eq!(
            e,
            Stage1Error::ReservedBits {
                word: 0,
                bits: 1 << 48
            }
        );
        assert!(SmmuV3Command::from_words([0x40, 53]).is_err());
        assert!(SmmuV3Command::from_words([0x30, 0]).is_ok());
        assert!(SmmuV3Command::from_words([0x03, 0]).is_err(), "CFGI_STE");
    }

    #[test]
    fn vtd_ranges() {
        assert!(VtdS1Invalidation::range(0x1000, 0, false).is_err());
        assert!(VtdS1Invalidation::range(0x1000, u64::MAX, false).is_err());
        assert!(!VtdS1Invalidation::all().leaf());
        assert!(format!("{:?}", VtdS1Invalidation::all()).contains("npages"));
    }
}

#[cfg(test)]
mod fuzz_seed_tests {
    use super::*;

    /// Seeds of `fuzz/fuzz_targets/invalidation_results.rs`: entry_num, errno,
    /// device bits, then SMMUv3 commands.
    #[test]
    fn invalidation_results_fuzz_seeds() {
        let seed = |reported: u32, errno: i32, devices: u8, cmds: &[SmmuV3Command]| {
            let mut b = reported.to_le_bytes().to_vec();
            b.extend_from_slice(&(errno as u32).to_le_bytes());
            b.push(devices);
            for c in cmds {
                for w in c.words() {
                    b.extend_from_slice(&w.to_le_bytes());
                }
            }
            b
        };
        let batch = [
            SmmuV3Command::tlbi_nh_all(),
            SmmuV3Command::cfgi_cd_all(1),
            SmmuV3Command::atc_inv(2, Some(3), 0x4000, 4),
        ];
        // Handled counts the kernel may leave, by errno.
        assert_eq!(handled_of(1, 3, libc::EIO), 1);
        assert_eq!(handled_of(3, 3, libc::ENOTTY), 0);
        assert_eq!(handled_of(9, 3, libc::EINVAL), 3);
        crate::fuzz_seeds::write_fuzz_seeds(
            "invalidation_results",
            &[
                ("second_refused", seed(1, libc::EIO, 0b10, &batch)),
                ("unknown_command", seed(3, libc::ENOTTY, 0, &batch)),
                ("count_too_large", seed(7, libc::EINVAL, 0xff, &batch)),
                ("empty_batch_missing", seed(0, libc::ENOENT, 0, &[])),
            ],
        );
    }
}
