//! Typed stage-1 page-table descriptions for nested HWPTs, checked before the
//! kernel sees them.
//!
//! A nested HWPT translates with a page table the guest owns (stage 1, GIOVA to GPA)
//! on top of a host page table (stage 2, GPA to HPA). What the host needs to know of
//! the guest's table depends on the IOMMU: a VT-d PASID-table entry, an SMMUv3 stream
//! table entry, an AMD guest device table entry. The values usually come from the
//! guest (a vIOMMU's emulated registers or tables), so every constructor here checks
//! the fields the kernel would refuse, and says which one, instead of the kernel's
//! bare `EINVAL` or `EIO`.

use std::fmt;

use bitflags::bitflags;
use iommufd_uapi as uapi;

bitflags! {
    /// Attributes of a VT-d stage-1 table (`enum iommu_hwpt_vtd_s1_flags`).
    ///
    /// ```
    /// use iommufd::VtdS1Flags;
    /// assert_eq!((VtdS1Flags::SRE | VtdS1Flags::WPE).bits(), 5);
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct VtdS1Flags: u64 {
        /// Supervisor requests are allowed (`IOMMU_VTD_S1_SRE`).
        const SRE = uapi::IOMMU_VTD_S1_SRE as u64;
        /// Extended access flag (`IOMMU_VTD_S1_EAFE`).
        const EAFE = uapi::IOMMU_VTD_S1_EAFE as u64;
        /// Write protection applies to supervisor requests (`IOMMU_VTD_S1_WPE`).
        const WPE = uapi::IOMMU_VTD_S1_WPE as u64;
    }
}

/// Why a stage-1 description or an invalidation entry was refused before the
/// kernel saw it.
///
/// ```
/// use iommufd::{Stage1Error, VtdS1};
/// let e = VtdS1::new(0x1001, 48, iommufd::VtdS1Flags::empty()).unwrap_err();
/// assert_eq!(e, Stage1Error::Misaligned { field: "pgtbl_addr", value: 0x1001, align: 4096 });
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Stage1Error {
    /// A field has a value the format does not allow.
    #[error("{field} = {value:#x} is not allowed: {reason}")]
    BadField {
        /// The field (named as in the specification).
        field: &'static str,
        /// Its value.
        value: u64,
        /// What is allowed.
        reason: &'static str,
    },
    /// An address is not aligned.
    #[error("{field} = {value:#x} is not aligned to {align:#x}")]
    Misaligned {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The alignment it needs.
        align: u64,
    },
    /// Bits the kernel does not let user space set (for SMMUv3: the STE or command
    /// words outside the fields nesting allows; the kernel answers them with `EIO`).
    #[error("word {word} has bits {bits:#x} set that user space may not set")]
    ReservedBits {
        /// Which 64-bit word.
        word: usize,
        /// The offending bits.
        bits: u64,
    },
}

/// The stage-1 table of an Intel VT-d nested HWPT (`IOMMU_HWPT_DATA_VTD_S1`): the
/// guest's first-level table, as a guest's scalable-mode PASID entry names it.
///
/// ```
/// use iommufd::{VtdS1, VtdS1Flags};
/// let s1 = VtdS1::new(0x8000_0000, 48, VtdS1Flags::empty())?; // 4-level table at GPA 2 GiB
/// assert_eq!(s1.pgtbl_addr(), 0x8000_0000);
/// assert!(VtdS1::new(0x8000_0000, 39, VtdS1Flags::empty()).is_err()); // 3-level: no
/// # Ok::<(), iommufd::Stage1Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtdS1 {
    flags: VtdS1Flags,
    pgtbl_addr: u64,
    addr_width: u32,
}

impl VtdS1 {
    /// A stage-1 table rooted at guest-physical `pgtbl_addr` (4 KiB aligned) with
    /// input address width `addr_width`: 48 (4-level) or 57 (5-level), the two
    /// first-level formats VT-d has.
    pub fn new(pgtbl_addr: u64, addr_width: u32, flags: VtdS1Flags) -> Result<VtdS1, Stage1Error> {
        if pgtbl_addr % 4096 != 0 {
            return Err(Stage1Error::Misaligned {
                field: "pgtbl_addr",
                value: pgtbl_addr,
                align: 4096,
            });
        }
        if addr_width != 48 && addr_width != 57 {
            return Err(Stage1Error::BadField {
                field: "addr_width",
                value: addr_width.into(),
                reason: "first-level tables are 48 (4-level) or 57 (5-level) bits wide",
            });
        }
        if flags.contains(VtdS1Flags::WPE) && !flags.contains(VtdS1Flags::SRE) {
            return Err(Stage1Error::BadField {
                field: "flags",
                value: flags.bits(),
                reason: "WPE only applies with SRE (supervisor requests)",
            });
        }
        Ok(VtdS1 {
            flags,
            pgtbl_addr,
            addr_width,
        })
    }

    /// The guest-physical address of the table's root.
    pub fn pgtbl_addr(&self) -> u64 {
        self.pgtbl_addr
    }

    /// The input address width (48 or 57).
    pub fn addr_width(&self) -> u32 {
        self.addr_width
    }

    /// The attributes.
    pub fn flags(&self) -> VtdS1Flags {
        self.flags
    }
}

/// The configuration an SMMUv3 stream table entry selects (`STE.Config` for
/// nesting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmmuV3Config {
    /// DMA is refused (`Config` = 0b000), or the entry is not valid.
    Abort,
    /// DMA uses the nest parent's translation only (`Config` = 0b100).
    Bypass,
    /// DMA goes through the guest's context descriptors, then the nest parent
    /// (`Config` = 0b101).
    Stage1,
}

/// The guest's SMMUv3 stream table entry for a nested HWPT
/// (`IOMMU_HWPT_DATA_ARM_SMMUV3`): its first two words, little-endian, with only the
/// fields the kernel accepts for nesting.
///
/// ```
/// use iommufd::{SmmuV3Config, SmmuV3Ste};
/// let abort = SmmuV3Ste::abort();
/// assert_eq!(abort.config(), SmmuV3Config::Abort);
/// let s1 = SmmuV3Ste::stage1(0x4000_0000, 0, 0)?; // one CD at GPA 1 GiB, linear format
/// assert_eq!(s1.config(), SmmuV3Config::Stage1);
/// // A guest's STE with a stage-2 field set is refused here, not with the kernel's EIO.
/// assert!(SmmuV3Ste::from_words([0x1 | (6 << 1), 0]).is_err());
/// # Ok::<(), iommufd::Stage1Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SmmuV3Ste {
    words: [u64; 2],
}

const STE0_V: u64 = 1;
const STE0_CFG_SHIFT: u32 = 1;
const STE0_CFG: u64 = 0b111 << STE0_CFG_SHIFT;
const STE0_S1FMT: u64 = 0b11 << 4;
const STE0_S1CTXPTR: u64 = ((1 << 52) - 1) & !((1 << 6) - 1);
const STE0_S1CDMAX: u64 = 0b11111 << 59;
const STE0_ALLOWED: u64 = STE0_V | STE0_CFG | STE0_S1FMT | STE0_S1CTXPTR | STE0_S1CDMAX;
// S1DSS, S1CIR, S1COR, S1CSH (bits 0-7), S1STALLD (27), EATS (28-29).
const STE1_EATS_SHIFT: u32 = 28;
const STE1_ALLOWED: u64 = 0xff | (1 << 27) | (0b11 << STE1_EATS_SHIFT);
const CFG_ABORT: u64 = 0;
const CFG_BYPASS: u64 = 4;
const CFG_S1: u64 = 5;

impl SmmuV3Ste {
    /// An entry that aborts DMA (valid, `Config` = abort).
    pub fn abort() -> SmmuV3Ste {
        SmmuV3Ste {
            words: [STE0_V | (CFG_ABORT << STE0_CFG_SHIFT), 0],
        }
    }

    /// An entry that bypasses stage 1: DMA uses the nest parent's translation
    /// (a guest with its SMMU disabled, or a bypass STE).
    pub fn bypass() -> SmmuV3Ste {
        SmmuV3Ste {
            words: [STE0_V | (CFG_BYPASS << STE0_CFG_SHIFT), 0],
        }
    }

    /// A stage-1 entry whose context descriptor table is at guest-physical
    /// `cd_table` (64-byte aligned, below 2^52), in format `s1fmt` (0: linear,
    /// 1: 4 KiB leaves, 2: 64 KiB leaves) with `2^s1cdmax` descriptors.
    pub fn stage1(cd_table: u64, s1fmt: u8, s1cdmax: u8) -> Result<SmmuV3Ste, Stage1Error> {
        if cd_table & !STE0_S1CTXPTR != 0 {
            return Err(Stage1Error::Misaligned {
                field: "S1ContextPtr",
                value: cd_table,
                align: 64,
            });
        }
        if s1fmt > 2 {
            return Err(Stage1Error::BadField {
                field: "S1Fmt",
                value: s1fmt.into(),
                reason: "0 (linear), 1 (4 KiB leaves) or 2 (64 KiB leaves)",
            });
        }
        if s1cdmax > 20 {
            return Err(Stage1Error::BadField {
                field: "S1CDMax",
                value: s1cdmax.into(),
                reason: "at most 20 (2^20 context descriptors)",
            });
        }
        Ok(SmmuV3Ste {
            words: [
                STE0_V
                    | (CFG_S1 << STE0_CFG_SHIFT)
                    | (u64::from(s1fmt) << 4)
                    | cd_table
                    | (u64::from(s1cdmax) << 59),
                0,
            ],
        })
    }

    /// The entry a guest wrote (its first two words, in CPU order), checked the way
    /// the kernel checks it: an invalid entry (`V` clear) is accepted as abort;
    /// otherwise only the nesting fields may be set, `Config` must be abort, bypass
    /// or stage 1, and `EATS` must be 0 or 1.
    pub fn from_words(words: [u64; 2]) -> Result<SmmuV3Ste, Stage1Error> {
        if words[0] & STE0_V == 0 {
            // The kernel zeroes an invalid entry: it aborts.
            return Ok(SmmuV3Ste { words: [0, 0] });
        }
        for (word, (w, allowed)) in words.iter().zip([STE0_ALLOWED, STE1_ALLOWED]).enumerate() {
            if w & !allowed != 0 {
                return Err(Stage1Error::ReservedBits {
                    word,
                    bits: w & !allowed,
                });
            }
        }
        let cfg = (words[0] & STE0_CFG) >> STE0_CFG_SHIFT;
        if cfg != CFG_ABORT && cfg != CFG_BYPASS && cfg != CFG_S1 {
            return Err(Stage1Error::BadField {
                field: "Config",
                value: cfg,
                reason: "abort (0b000), bypass (0b100) or stage 1 (0b101)",
            });
        }
        let eats = (words[1] >> STE1_EATS_SHIFT) & 0b11;
        if eats > 1 {
            return Err(Stage1Error::BadField {
                field: "EATS",
                value: eats,
                reason: "0 (ATS aborted) or 1 (full ATS)",
            });
        }
        Ok(SmmuV3Ste { words })
    }

    /// The two words, in CPU order.
    pub fn words(&self) -> [u64; 2] {
        self.words
    }

    /// What the entry does.
    pub fn config(&self) -> SmmuV3Config {
        if self.words[0] & STE0_V == 0 {
            return SmmuV3Config::Abort;
        }
        match (self.words[0] & STE0_CFG) >> STE0_CFG_SHIFT {
            CFG_BYPASS => SmmuV3Config::Bypass,
            CFG_S1 => SmmuV3Config::Stage1,
            _ => SmmuV3Config::Abort,
        }
    }
}

impl fmt::Debug for SmmuV3Ste {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SmmuV3Ste({:?}, [{:#018x}, {:#018x}])",
            self.config(),
            self.words[0],
            self.words[1]
        )
    }
}

/// The guest's AMD device table entry for a nested HWPT
/// (`IOMMU_HWPT_DATA_AMD_GUEST`, Linux 7.3), checked as the kernel checks it.
///
/// ```
/// use iommufd::AmdGuestDte;
/// // V and GV set, GCR3 table root at GPA 0x1000 (bits 14:12 in word 0), 4-level.
/// let dte = AmdGuestDte::from_words([1 | (1 << 55) | (1 << 58), 0, 0, 0])?;
/// assert_eq!(dte.words()[0] & 1, 1);
/// // Host translation fields are the host's: refused.
/// assert!(AmdGuestDte::from_words([1 | (4 << 9), 0, 0, 0]).is_err());
/// # Ok::<(), iommufd::Stage1Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmdGuestDte {
    words: [u64; 4],
}

impl AmdGuestDte {
    /// The guest's entry (four words, CPU order). Refused: a host paging mode or
    /// host table root (`Mode`, `Host-TRP`, which are the host's), `V` and `GV` with
    /// no GCR3 table root, a guest paging level other than 4 or 5 levels, and
    /// `GLX` = 3 (reserved).
    pub fn from_words(words: [u64; 4]) -> Result<AmdGuestDte, Stage1Error> {
        let field = |w: u64, hi: u32, lo: u32| (w >> lo) & ((1u64 << (hi - lo + 1)) - 1);
        let mode = field(words[0], 11, 9);
        if mode != 0 {
            return Err(Stage1Error::BadField {
                field: "Mode",
                value: mode,
                reason: "0: the host owns the host page table",
            });
        }
        let host_trp = field(words[0], 51, 12);
        if host_trp != 0 {
            return Err(Stage1Error::BadField {
                field: "Host-TRP",
                value: host_trp,
                reason: "0: the host owns the host page table",
            });
        }
        let v = words[0] & 1 != 0;
        let gv = words[0] & (1 << 55) != 0;
        let gcr3 = field(words[0], 60, 58) | field(words[1], 31, 16) | field(words[1], 63, 43);
        if v && gv && gcr3 == 0 {
            return Err(Stage1Error::BadField {
                field: "GCR3 Table Root Pointer",
                value: 0,
                reason: "must be set when V and GV are",
            });
        }
        let gpt_level = field(words[2], 55, 54);
        if gpt_level > 1 {
            return Err(Stage1Error::BadField {
                field: "GPT level",
                value: gpt_level,
                reason: "0 (4-level) or 1 (5-level)",
            });
        }
        let glx = field(words[0], 57, 56);
        if glx == 3 {
            return Err(Stage1Error::BadField {
                field: "GLX",
                value: glx,
                reason: "3 is reserved",
            });
        }
        Ok(AmdGuestDte { words })
    }

    /// The four words, in CPU order.
    pub fn words(&self) -> [u64; 4] {
        self.words
    }
}

/// A guest's stage-1 table: the data of `IOMMU_HWPT_ALLOC` for a
/// [`NestedHwpt`](crate::NestedHwpt), one variant per IOMMU format.
///
/// ```
/// use iommufd::{SmmuV3Ste, Stage1, VtdS1, VtdS1Flags};
/// let vtd = Stage1::from(VtdS1::new(0x1000, 48, VtdS1Flags::SRE)?);
/// assert_eq!(vtd.data_type(), iommufd::uapi::IOMMU_HWPT_DATA_VTD_S1);
/// let smmu = Stage1::from(SmmuV3Ste::bypass());
/// assert_eq!(smmu.data_type(), iommufd::uapi::IOMMU_HWPT_DATA_ARM_SMMUV3);
/// # Ok::<(), iommufd::Stage1Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage1 {
    /// Intel VT-d first-level table.
    Vtd(VtdS1),
    /// ARM SMMUv3 stream table entry (needs a [`Viommu`](crate::Viommu) parent).
    SmmuV3(SmmuV3Ste),
    /// AMD guest device table entry (needs a vIOMMU parent).
    Amd(AmdGuestDte),
    /// The kernel's mock IOMMU (`IOMMU_HWPT_DATA_SELFTEST`): `iotlb` is the value
    /// every entry of the mock's IOTLB starts with.
    #[cfg(feature = "selftest")]
    Selftest {
        /// The initial value of the mock IOTLB entries
        /// (`IOMMU_TEST_IOTLB_DEFAULT` in the kernel's tests).
        iotlb: u32,
    },
}

impl From<VtdS1> for Stage1 {
    fn from(v: VtdS1) -> Stage1 {
        Stage1::Vtd(v)
    }
}

impl From<SmmuV3Ste> for Stage1 {
    fn from(v: SmmuV3Ste) -> Stage1 {
        Stage1::SmmuV3(v)
    }
}

impl From<AmdGuestDte> for Stage1 {
    fn from(v: AmdGuestDte) -> Stage1 {
        Stage1::Amd(v)
    }
}

/// The bytes of a stage-1 description, as the kernel reads them.
pub(crate) enum Stage1Bytes {
    Vtd(uapi::iommu_hwpt_vtd_s1),
    SmmuV3(uapi::iommu_hwpt_arm_smmuv3),
    Amd(uapi::iommu_hwpt_amd_guest),
    #[cfg(feature = "selftest")]
    Selftest(uapi::selftest::iommu_hwpt_selftest),
}

impl Stage1Bytes {
    /// The pointer and length to pass as `data_uptr` / `data_len`.
    pub(crate) fn as_raw(&self) -> (*const u8, u32) {
        fn raw<T>(t: &T) -> (*const u8, u32) {
            // The structures are at most 32 bytes.
            ((t as *const T).cast(), size_of::<T>() as u32)
        }
        match self {
            Stage1Bytes::Vtd(t) => raw(t),
            Stage1Bytes::SmmuV3(t) => raw(t),
            Stage1Bytes::Amd(t) => raw(t),
            // Only `iotlb`: Linux before 6.16 has no `pagetable_type` and refuses
            // longer data; later kernels take the 4 bytes as well.
            #[cfg(feature = "selftest")]
            Stage1Bytes::Selftest(t) => ((t as *const _ as *const u8), 4),
        }
    }
}

impl Stage1 {
    /// The kernel's data type code (`enum iommu_hwpt_data_type`).
    pub fn data_type(&self) -> u32 {
        match self {
            Stage1::Vtd(_) => uapi::IOMMU_HWPT_DATA_VTD_S1,
            Stage1::SmmuV3(_) => uapi::IOMMU_HWPT_DATA_ARM_SMMUV3,
            Stage1::Amd(_) => uapi::IOMMU_HWPT_DATA_AMD_GUEST,
            #[cfg(feature = "selftest")]
            Stage1::Selftest { .. } => uapi::selftest::IOMMU_HWPT_DATA_SELFTEST,
        }
    }

    /// What the format is called in messages.
    ///
    /// ```
    /// assert_eq!(iommufd::Stage1::from(iommufd::SmmuV3Ste::abort()).name(), "SMMUv3 STE");
    /// ```
    pub fn name(&self) -> &'static str {
        match self {
            Stage1::Vtd(_) => "VT-d stage 1",
            Stage1::SmmuV3(_) => "SMMUv3 STE",
            Stage1::Amd(_) => "AMD guest DTE",
            #[cfg(feature = "selftest")]
            Stage1::Selftest { .. } => "selftest stage 1",
        }
    }

    pub(crate) fn to_bytes(self) -> Stage1Bytes {
        match self {
            Stage1::Vtd(v) => Stage1Bytes::Vtd(uapi::iommu_hwpt_vtd_s1 {
                flags: v.flags.bits(),
                pgtbl_addr: v.pgtbl_addr,
                addr_width: v.addr_width,
                __reserved: 0,
            }),
            Stage1::SmmuV3(s) => Stage1Bytes::SmmuV3(uapi::iommu_hwpt_arm_smmuv3 {
                ste: s.words.map(u64::to_le),
            }),
            Stage1::Amd(d) => Stage1Bytes::Amd(uapi::iommu_hwpt_amd_guest { dte: d.words }),
            #[cfg(feature = "selftest")]
            Stage1::Selftest { iotlb } => {
                Stage1Bytes::Selftest(uapi::selftest::iommu_hwpt_selftest {
                    iotlb,
                    pagetable_type: 0,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vtd_checks() {
        assert!(VtdS1::new(0x1000, 57, VtdS1Flags::all()).is_ok());
        assert!(matches!(
            VtdS1::new(0x1000, 48, VtdS1Flags::WPE),
            Err(Stage1Error::BadField { field: "flags", .. })
        ));
        let b = Stage1::from(VtdS1::new(0x2000, 48, VtdS1Flags::SRE).unwrap()).to_bytes();
        let (p, len) = b.as_raw();
        assert_eq!(len, 24);
        assert!(!p.is_null());
    }

    #[test]
    fn smmu_ste_mirrors_the_kernel_check() {
        // Every allowed field at its maximum passes.
        let all = [
            STE0_ALLOWED & !(0b110 << STE0_CFG_SHIFT) | (CFG_S1 << 1),
            0xff | 1 << 27 | 1 << 28,
        ];
        assert!(SmmuV3Ste::from_words(all).is_ok());
        // Stage-2 config, nested config: refused.
        for cfg in [6u64, 7, 1] {
            let e = SmmuV3Ste::from_words([1 | cfg << 1, 0]).unwrap_err();
            assert!(
                matches!(
                    e,
                    Stage1Error::BadField {
                        field: "Config",
                        ..
                    }
                ),
                "{e}"
            );
        }
        // A word-1 bit outside the nesting fields (S2 fields at 32+).
        let e = SmmuV3Ste::from_words([1, 1 << 40]).unwrap_err();
        assert_eq!(
            e,
            Stage1Error::ReservedBits {
                word: 1,
                bits: 1 << 40
            }
        );
        // EATS = 2 (S1CHK) is refused.
        assert!(SmmuV3Ste::from_words([1, 2 << 28]).is_err());
        // Invalid entries are zeroed, like the kernel does.
        let inv = SmmuV3Ste::from_words([0xdead_0000, 0xffff]).unwrap();
        assert_eq!(inv.words(), [0, 0]);
        assert_eq!(inv.config(), SmmuV3Config::Abort);
        assert_eq!(SmmuV3Ste::bypass().config(), SmmuV3Config::Bypass);
        assert!(SmmuV3Ste::stage1(0x40, 3, 0).is_err());
        assert!(SmmuV3Ste::stage1(0x41, 0, 0).is_err());
        assert!(SmmuV3Ste::stage1(1 << 52, 0, 0).is_err());
        assert!(SmmuV3Ste::stage1(0x40, 0, 21).is_err());
        let s = SmmuV3Ste::stage1(0x1000, 1, 4).unwrap();
        assert_eq!(SmmuV3Ste::from_words(s.words()), Ok(s));
        assert!(format!("{s:?}").contains("Stage1"));
    }

    #[test]
    fn amd_dte_checks() {
        let ok = [1 | 1 << 55 | 1 << 58, 0, 0, 0];
        assert!(AmdGuestDte::from_words(ok).is_ok());
        assert!(
            AmdGuestDte::from_words([1 | 1 << 55, 0, 0, 0]).is_err(),
            "no GCR3"
        );
        assert!(
            AmdGuestDte::from_words([1 << 12, 0, 0, 0]).is_err(),
            "host TRP"
        );
        assert!(
            AmdGuestDte::from_words([3 << 56, 0, 0, 0]).is_err(),
            "GLX 3"
        );
        assert!(
            AmdGuestDte::from_words([0, 0, 2 << 54, 0]).is_err(),
            "GPT level"
        );
        assert!(AmdGuestDte::from_words([0, 0, 1 << 54, 0]).is_ok());
    }
}

// Seeds of the `guest_descriptors` fuzz target (`fuzz/`): a selector byte (0 SMMUv3
// STE, 1 AMD DTE, 2 SMMUv3 command, 3 VT-d range invalidation, 4 VT-d stage-1
// table), then four u64 words, little endian, that the target hands to the
// constructor; with what each constructor makes of them.
#[cfg(test)]
mod fuzz_seed_tests {
    use super::*;
    use crate::{SmmuV3Command, VtdS1Invalidation};

    /// What the target builds from `words`: the words of the value, or the error.
    fn build(selector: u8, w: [u64; 4]) -> Result<Vec<u64>, Stage1Error> {
        Ok(match selector {
            0 => SmmuV3Ste::from_words([w[0], w[1]])?.words().to_vec(),
            1 => AmdGuestDte::from_words(w)?.words().to_vec(),
            2 => SmmuV3Command::from_words([w[0], w[1]])?.words().to_vec(),
            3 => {
                let inv = VtdS1Invalidation::range(w[0], w[1], w[2] & 1 != 0)?;
                vec![inv.addr(), inv.npages(), u64::from(inv.leaf())]
            }
            _ => {
                let flags = VtdS1Flags::from_bits_truncate(w[2]);
                let s1 = VtdS1::new(w[0], w[1] as u32, flags)?;
                vec![s1.pgtbl_addr(), s1.addr_width().into(), s1.flags().bits()]
            }
        })
    }

    #[test]
    fn guest_descriptors_fuzz_seeds() {
        let ste = |s: SmmuV3Ste| [s.words()[0], s.words()[1], 0, 0];
        let cmd = |c: SmmuV3Command| [c.words()[0], c.words()[1], 0, 0];
        let stage1 = SmmuV3Ste::stage1(0x4000_0000, 1, 4).expect("valid");
        let dte = [1 | 1 << 55 | 1 << 58, 0x1234 << 16, 1 << 54, 0];
        let seeds: [(&str, u8, [u64; 4]); 20] = [
            ("ste_abort", 0, ste(SmmuV3Ste::abort())),
            ("ste_bypass", 0, ste(SmmuV3Ste::bypass())),
            ("ste_stage1", 0, [stage1.words()[0], 1 << 28 | 0xff, 0, 0]),
            ("ste_not_valid", 0, [0xdead_0000, u64::MAX, 0, 0]),
            ("ste_stage2_config", 0, [1 | 6 << 1, 0, 0, 0]),
            ("ste_eats_s1chk", 0, [1 | 5 << 1, 2 << 28, 0, 0]),
            ("dte_gcr3", 1, dte),
            ("dte_host_mode", 1, [1 | 4 << 9, 0, 0, 0]),
            ("dte_no_gcr3", 1, [1 | 1 << 55, 0, 0, 0]),
            ("cmd_cfgi_cd", 2, cmd(SmmuV3Command::cfgi_cd(0x10, 3, true))),
            (
                "cmd_tlbi_nh_va",
                2,
                cmd(SmmuV3Command::tlbi_nh_va(5, 0x7fff_f000, false)),
            ),
            (
                "cmd_atc_inv",
                2,
                cmd(SmmuV3Command::atc_inv(0x10, Some(1), 0x8000, 52)),
            ),
            ("cmd_cfgi_ste", 2, [0x03 | 0x10 << 32, 0, 0, 0]),
            ("cmd_nh_all_asid", 2, [0x10 | 1 << 48, 0, 0, 0]),
            ("vtd_inv_range", 3, [0x10_0000, 16, 1, 0]),
            ("vtd_inv_all", 3, [0, u64::MAX, 0, 0]),
            ("vtd_inv_misaligned", 3, [0x10_0800, 1, 0, 0]),
            ("vtd_s1_4level", 4, [0x8000_0000, 48, 1, 0]),
            ("vtd_s1_5level", 4, [0x1000, 57, 7, 0]),
            ("vtd_s1_wpe_alone", 4, [0x1000, 48, 4, 0]),
        ];
        let built: Vec<_> = seeds.iter().map(|&(_, sel, w)| build(sel, w)).collect();
        let refused = |field, value, reason| {
            Err(Stage1Error::BadField {
                field,
                value,
                reason,
            })
        };
        assert_eq!(
            built,
            [
                Ok(vec![1, 0]),
                Ok(vec![1 | 4 << 1, 0]),
                Ok(vec![stage1.words()[0], 1 << 28 | 0xff]),
                Ok(vec![0, 0]),
                refused(
                    "Config",
                    6,
                    "abort (0b000), bypass (0b100) or stage 1 (0b101)"
                ),
                refused("EATS", 2, "0 (ATS aborted) or 1 (full ATS)"),
                Ok(dte.to_vec()),
                refused("Mode", 4, "0: the host owns the host page table"),
                refused(
                    "GCR3 Table Root Pointer",
                    0,
                    "must be set when V and GV are"
                ),
                Ok(vec![0x05 | 0x10 << 32 | 3 << 12, 1]),
                Ok(vec![0x12 | 5 << 48, 0x7fff_f000]),
                Ok(vec![0x40 | 0x10 << 32 | 1 << 11 | 1 << 12, 0x8000 | 52]),
                refused(
                    "opcode",
                    3,
                    "one of CFGI_CD(_ALL), TLBI_NH_*, TLBI_NSNH_ALL, ATC_INV"
                ),
                Err(Stage1Error::ReservedBits {
                    word: 0,
                    bits: 1 << 48
                }),
                Ok(vec![0x10_0000, 16, 1]),
                Ok(vec![0, u64::MAX, 0]),
                Err(Stage1Error::Misaligned {
                    field: "addr",
                    value: 0x10_0800,
                    align: 4096
                }),
                Ok(vec![0x8000_0000, 48, 1]),
                Ok(vec![0x1000, 57, 7]),
                refused(
                    "flags",
                    4,
                    "WPE only applies with SRE (supervisor requests)"
                ),
            ]
        );
        let inputs: Vec<_> = seeds
            .iter()
            .map(|&(name, sel, w)| {
                let mut v = vec![sel];
                for x in w {
                    v.extend_from_slice(&x.to_le_bytes());
                }
                (name, v)
            })
            .collect();
        crate::fuzz_seeds::write_fuzz_seeds("guest_descriptors", &inputs);
    }
}
