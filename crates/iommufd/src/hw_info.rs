//! What the IOMMU behind a device can do (`IOMMU_GET_HW_INFO`).

use bitflags::bitflags;
use iommufd_uapi as uapi;

use crate::sys::arg;
use crate::{DecodeError, DeviceId, Error, Iommufd, Result};

/// `IOMMU_HW_INFO_TYPE_SELFTEST` of the kernel's mock IOMMU (`iommufd_test.h`).
/// Known to the decoder without the `selftest` feature: it is only a type code.
///
/// ```
/// use iommufd::{HW_INFO_TYPE_SELFTEST, HwInfoData};
/// let data = HwInfoData::decode(HW_INFO_TYPE_SELFTEST, &[0; 8])?;
/// assert_eq!(data, HwInfoData::Selftest { flags: 0, test_reg: 0 });
/// # Ok::<(), iommufd::DecodeError>(())
/// ```
pub const HW_INFO_TYPE_SELFTEST: u32 = 0xfeedbeef;

bitflags! {
    /// Generic IOMMU capabilities of a device (`enum iommufd_hw_capabilities`).
    /// Unknown bits from newer kernels are kept.
    ///
    /// ```
    /// use iommufd::HwCapabilities;
    /// let caps = HwCapabilities::from_bits_retain(1 | 1 << 40);
    /// assert!(caps.contains(HwCapabilities::DIRTY_TRACKING));
    /// assert_eq!(caps.bits() >> 40, 1);
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct HwCapabilities: u64 {
        /// The IOMMU can track DMA writes: HWPTs with
        /// [`HwptFlags::DIRTY_TRACKING`](crate::HwptFlags::DIRTY_TRACKING) work.
        ///
        /// ```
        /// use iommufd::{HwCapabilities, uapi};
        /// let caps = HwCapabilities::from_bits_retain(uapi::IOMMU_HW_CAP_DIRTY_TRACKING.into());
        /// assert!(caps.contains(HwCapabilities::DIRTY_TRACKING));
        /// ```
        const DIRTY_TRACKING = uapi::IOMMU_HW_CAP_DIRTY_TRACKING as u64;
        /// PCI PASID execute permission (meaningful only if
        /// [`HwInfo::max_pasid_log2`] is not 0).
        ///
        /// ```
        /// use iommufd::{HwCapabilities, uapi};
        /// let bits = HwCapabilities::PCI_PASID_EXEC.bits();
        /// assert_eq!(bits, u64::from(uapi::IOMMU_HW_CAP_PCI_PASID_EXEC));
        /// ```
        const PCI_PASID_EXEC = uapi::IOMMU_HW_CAP_PCI_PASID_EXEC as u64;
        /// PCI PASID privileged mode (meaningful only if
        /// [`HwInfo::max_pasid_log2`] is not 0).
        ///
        /// ```
        /// use iommufd::{HwCapabilities, uapi};
        /// let bits = HwCapabilities::PCI_PASID_PRIV.bits();
        /// assert_eq!(bits, u64::from(uapi::IOMMU_HW_CAP_PCI_PASID_PRIV));
        /// ```
        const PCI_PASID_PRIV = uapi::IOMMU_HW_CAP_PCI_PASID_PRIV as u64;
        /// ATS cannot be used for this device.
        ///
        /// ```
        /// use iommufd::{HwCapabilities, uapi};
        /// let bits = HwCapabilities::PCI_ATS_NOT_SUPPORTED.bits();
        /// assert_eq!(bits, u64::from(uapi::IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED));
        /// ```
        const PCI_ATS_NOT_SUPPORTED = uapi::IOMMU_HW_CAP_PCI_ATS_NOT_SUPPORTED as u64;
        // Keep bits of newer kernels.
        const _ = !0;
    }
}

/// The IOMMU information of a device, from [`Device::hw_info`](crate::Device::hw_info).
///
/// ```no_run
/// # fn f(dev: &iommufd::Device) -> iommufd::Result<()> {
/// let info = dev.hw_info()?;
/// println!("{} (label {:#x}): data type {:#x}, {} bytes", info.device, info.label, info.data_type, info.data_len);
/// if info.max_pasid_log2 > 0 {
///     println!("{}-bit PASIDs", info.max_pasid_log2);
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HwInfo {
    /// The device asked about.
    pub device: DeviceId,
    /// The device's label (chosen when it was bound).
    pub label: u64,
    /// The type-specific data, decoded.
    pub data: HwInfoData,
    /// The kernel's type code of `data` (`enum iommu_hw_info_type`).
    pub data_type: u32,
    /// The length of the type-specific data the kernel has.
    pub data_len: u32,
    /// Generic capabilities.
    pub capabilities: HwCapabilities,
    /// The PASID width; 0 means no PASID support.
    pub max_pasid_log2: u8,
}

/// Type-specific IOMMU information, decoded from the bytes the kernel returns.
///
/// ```
/// use iommufd::{HwInfoData, uapi};
/// let mut amd = [0u8; 16];
/// amd[..8].copy_from_slice(&0x246_5777u64.to_ne_bytes());
/// match HwInfoData::decode(uapi::IOMMU_HW_INFO_TYPE_AMD, &amd)? {
///     HwInfoData::Amd { efr, efr2 } => assert_eq!((efr, efr2), (0x246_5777, 0)),
///     other => panic!("{other:?}"),
/// }
/// // Types this crate does not know keep their bytes.
/// let unknown = HwInfoData::decode(0x7777, &[1, 2, 3])?;
/// assert_eq!(unknown, HwInfoData::Unknown { data_type: 0x7777, bytes: vec![1, 2, 3] });
/// # Ok::<(), iommufd::DecodeError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HwInfoData {
    /// The driver reports nothing (`IOMMU_HW_INFO_TYPE_NONE`).
    None,
    /// Intel VT-d (`struct iommu_hw_info_vtd`).
    IntelVtd {
        /// Errata flags (`enum iommu_hw_info_vtd_flags`).
        flags: u32,
        /// The capability register.
        cap_reg: u64,
        /// The extended capability register.
        ecap_reg: u64,
    },
    /// Arm SMMUv3 (`struct iommu_hw_info_arm_smmuv3`).
    ArmSmmuV3 {
        /// Flags (`enum iommu_hw_info_arm_smmuv3_flags`).
        flags: u32,
        /// `IDR0..=IDR5` (only some fields are meaningful: see the header).
        idr: [u32; 6],
        /// `IIDR`.
        iidr: u32,
        /// `AIDR`.
        aidr: u32,
    },
    /// NVIDIA Tegra241 CMDQV (`struct iommu_hw_info_tegra241_cmdqv`).
    Tegra241Cmdqv {
        /// Flags.
        flags: u32,
        /// CMDQ-V version.
        version: u8,
        /// Log2 of the number of VCMDQs.
        log2vcmdqs: u8,
        /// Log2 of the number of SID replacements.
        log2vsids: u8,
    },
    /// AMD IOMMU (`struct iommu_hw_info_amd`).
    Amd {
        /// The extended feature register.
        efr: u64,
        /// The extended feature 2 register.
        efr2: u64,
    },
    /// The kernel's mock IOMMU (`struct iommu_test_hw_info`).
    Selftest {
        /// Flags (0).
        flags: u32,
        /// `IOMMU_HW_INFO_SELFTEST_REGVAL` (0xdeadbeef).
        test_reg: u32,
    },
    /// A type this crate does not know; the raw bytes.
    Unknown {
        /// The kernel's type code.
        data_type: u32,
        /// The data.
        bytes: Vec<u8>,
    },
}

/// Reads native-endian integers from a byte slice without panicking.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl Reader<'_> {
    fn u32(&self, off: usize) -> u32 {
        let mut b = [0u8; 4];
        if let Some(s) = self.bytes.get(off..off.saturating_add(4)) {
            b.copy_from_slice(s);
        }
        u32::from_ne_bytes(b)
    }

    fn u64(&self, off: usize) -> u64 {
        let mut b = [0u8; 8];
        if let Some(s) = self.bytes.get(off..off.saturating_add(8)) {
            b.copy_from_slice(s);
        }
        u64::from_ne_bytes(b)
    }

    fn u8(&self, off: usize) -> u8 {
        self.bytes.get(off).copied().unwrap_or(0)
    }
}

impl HwInfoData {
    /// Decodes the data the kernel returned for type `data_type`.
    ///
    /// Longer data than the known structure is accepted (newer kernels append
    /// fields); shorter data is a [`DecodeError::TooShort`]. Never panics.
    ///
    /// ```
    /// use iommufd::HwInfoData;
    /// let mut bytes = [0u8; 8];
    /// bytes[4..].copy_from_slice(&0xdeadbeefu32.to_ne_bytes());
    /// assert_eq!(
    ///     HwInfoData::decode(0xfeedbeef, &bytes),
    ///     Ok(HwInfoData::Selftest { flags: 0, test_reg: 0xdeadbeef })
    /// );
    /// assert!(HwInfoData::decode(0xfeedbeef, &bytes[..6]).is_err());
    /// ```
    pub fn decode(data_type: u32, bytes: &[u8]) -> std::result::Result<HwInfoData, DecodeError> {
        let need = match data_type {
            uapi::IOMMU_HW_INFO_TYPE_NONE => return Ok(HwInfoData::None),
            uapi::IOMMU_HW_INFO_TYPE_INTEL_VTD => size_of::<uapi::iommu_hw_info_vtd>(),
            uapi::IOMMU_HW_INFO_TYPE_ARM_SMMUV3 => size_of::<uapi::iommu_hw_info_arm_smmuv3>(),
            uapi::IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV => {
                size_of::<uapi::iommu_hw_info_tegra241_cmdqv>()
            }
            uapi::IOMMU_HW_INFO_TYPE_AMD => size_of::<uapi::iommu_hw_info_amd>(),
            HW_INFO_TYPE_SELFTEST => 8,
            _ => {
                return Ok(HwInfoData::Unknown {
                    data_type,
                    bytes: bytes.to_vec(),
                });
            }
        };
        if bytes.len() < need {
            return Err(DecodeError::TooShort {
                data_type,
                need,
                got: bytes.len(),
            });
        }
        let r = Reader { bytes };
        Ok(match data_type {
            uapi::IOMMU_HW_INFO_TYPE_INTEL_VTD => HwInfoData::IntelVtd {
                flags: r.u32(0),
                cap_reg: r.u64(8),
                ecap_reg: r.u64(16),
            },
            uapi::IOMMU_HW_INFO_TYPE_ARM_SMMUV3 => HwInfoData::ArmSmmuV3 {
                flags: r.u32(0),
                idr: [
                    r.u32(8),
                    r.u32(12),
                    r.u32(16),
                    r.u32(20),
                    r.u32(24),
                    r.u32(28),
                ],
                iidr: r.u32(32),
                aidr: r.u32(36),
            },
            uapi::IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV => HwInfoData::Tegra241Cmdqv {
                flags: r.u32(0),
                version: r.u8(4),
                log2vcmdqs: r.u8(5),
                log2vsids: r.u8(6),
            },
            uapi::IOMMU_HW_INFO_TYPE_AMD => HwInfoData::Amd {
                efr: r.u64(0),
                efr2: r.u64(8),
            },
            _ => HwInfoData::Selftest {
                flags: r.u32(0),
                test_reg: r.u32(4),
            },
        })
    }
}

/// Queries the IOMMU behind device `dev` of `fd` (`IOMMU_GET_HW_INFO`).
pub(crate) fn query_hw_info(
    fd: &Iommufd,
    dev: DeviceId,
    label: u64,
    data_type: Option<u32>,
) -> Result<HwInfo> {
    fd.check_owner("IOMMU_GET_HW_INFO", dev.owner(), dev)?;
    // Every known structure fits; a newer, larger one makes a second round.
    let mut buf = vec![0u8; 64];
    for _ in 0..4 {
        let mut a: uapi::iommu_hw_info = arg();
        a.dev_id = dev.raw();
        if let Some(t) = data_type {
            a.flags = uapi::IOMMU_HW_INFO_FLAG_INPUT_TYPE;
            a.__bindgen_anon_1.in_data_type = t;
        }
        a.data_len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        a.data_uptr = buf.as_mut_ptr() as u64;
        // SAFETY: `data_uptr` points to `buf`, `data_len` bytes exclusively
        // borrowed for the call; the kernel writes at most `data_len` bytes.
        unsafe { fd.ioctl(uapi::IOMMU_GET_HW_INFO, &mut a) }
            .map_err(|e| Error::naming_object("IOMMU_GET_HW_INFO", dev, e.0))?;
        let len = a.data_len as usize;
        if len > buf.len() && len <= 1 << 16 {
            buf.resize(len, 0);
            continue;
        }
        // SAFETY: both union members are `u32`; any value is valid.
        let out_type = unsafe { a.__bindgen_anon_1.out_data_type };
        let data =
            HwInfoData::decode(out_type, buf.get(..len).unwrap_or(&buf)).map_err(|source| {
                Error::HwInfoDecode {
                    device: dev,
                    source,
                }
            })?;
        return Ok(HwInfo {
            device: dev,
            label,
            data,
            data_type: out_type,
            data_len: a.data_len,
            capabilities: HwCapabilities::from_bits_retain(a.out_capabilities),
            max_pasid_log2: a.out_max_pasid_log2,
        });
    }
    Err(Error::from_errno("IOMMU_GET_HW_INFO", dev, libc::EMSGSIZE))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<const N: usize>(words: &[(usize, &[u8])]) -> [u8; N] {
        let mut b = [0u8; N];
        for (off, w) in words {
            b[*off..*off + w.len()].copy_from_slice(w);
        }
        b
    }

    #[test]
    fn decodes_vtd() {
        let b: [u8; 24] = bytes_of(&[
            (0, &1u32.to_ne_bytes()),
            (8, &0x1234u64.to_ne_bytes()),
            (16, &0x5678u64.to_ne_bytes()),
        ]);
        assert_eq!(
            HwInfoData::decode(1, &b),
            Ok(HwInfoData::IntelVtd {
                flags: 1,
                cap_reg: 0x1234,
                ecap_reg: 0x5678
            })
        );
        assert_eq!(
            HwInfoData::decode(1, &b[..23]),
            Err(DecodeError::TooShort {
                data_type: 1,
                need: 24,
                got: 23
            })
        );
        // Trailing bytes of a newer kernel are ignored.
        let mut long = b.to_vec();
        long.extend_from_slice(&[0xff; 16]);
        assert!(matches!(
            HwInfoData::decode(1, &long),
            Ok(HwInfoData::IntelVtd { .. })
        ));
    }

    #[test]
    fn decodes_smmuv3() {
        let mut b = [0u8; 40];
        for i in 0..6 {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&(i as u32 + 10).to_ne_bytes());
        }
        b[32..36].copy_from_slice(&0x43b_u32.to_ne_bytes());
        b[36..40].copy_from_slice(&2u32.to_ne_bytes());
        assert_eq!(
            HwInfoData::decode(2, &b),
            Ok(HwInfoData::ArmSmmuV3 {
                flags: 0,
                idr: [10, 11, 12, 13, 14, 15],
                iidr: 0x43b,
                aidr: 2
            })
        );
    }

    #[test]
    fn decodes_tegra_amd_selftest_none() {
        let t = [1, 0, 0, 0, 3, 4, 5, 0];
        let flags = u32::from_ne_bytes([1, 0, 0, 0]);
        assert_eq!(
            HwInfoData::decode(3, &t),
            Ok(HwInfoData::Tegra241Cmdqv {
                flags,
                version: 3,
                log2vcmdqs: 4,
                log2vsids: 5
            })
        );
        let a: [u8; 16] = bytes_of(&[(0, &7u64.to_ne_bytes()), (8, &9u64.to_ne_bytes())]);
        assert_eq!(
            HwInfoData::decode(4, &a),
            Ok(HwInfoData::Amd { efr: 7, efr2: 9 })
        );
        let s: [u8; 8] = bytes_of(&[(4, &0xdeadbeefu32.to_ne_bytes())]);
        assert_eq!(
            HwInfoData::decode(HW_INFO_TYPE_SELFTEST, &s),
            Ok(HwInfoData::Selftest {
                flags: 0,
                test_reg: 0xdeadbeef
            })
        );
        assert_eq!(HwInfoData::decode(0, &[]), Ok(HwInfoData::None));
        assert_eq!(HwInfoData::decode(0, &[1, 2, 3]), Ok(HwInfoData::None));
    }

    #[test]
    fn unknown_types_keep_their_bytes() {
        assert_eq!(
            HwInfoData::decode(77, &[1, 2, 3]),
            Ok(HwInfoData::Unknown {
                data_type: 77,
                bytes: vec![1, 2, 3]
            })
        );
    }

    #[cfg(feature = "selftest")]
    #[test]
    fn selftest_constants_match_the_header() {
        assert_eq!(
            HW_INFO_TYPE_SELFTEST,
            uapi::selftest::IOMMU_HW_INFO_TYPE_SELFTEST
        );
        assert_eq!(size_of::<uapi::selftest::iommu_test_hw_info>(), 8);
    }

    // Every type code near the known ones, every length up to past the largest
    // structure, pseudo-random contents: decode returns, never panics, and errs
    // exactly when the data is too short.
    #[test]
    fn decode_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let types = [0, 1, 2, 3, 4, 5, HW_INFO_TYPE_SELFTEST, u32::MAX];
        for t in types {
            for len in 0..=64 {
                let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                match HwInfoData::decode(t, &bytes) {
                    Ok(_) => {}
                    Err(DecodeError::TooShort { need, got, .. }) => {
                        assert!(got < need);
                        assert_eq!(got, len);
                    }
                    Err(e) => panic!("hw_info decoding reports only short data: {e}"),
                }
            }
        }
    }

    #[test]
    fn capabilities_match_the_kernel() {
        assert_eq!(HwCapabilities::DIRTY_TRACKING.bits(), 1);
        assert_eq!(HwCapabilities::PCI_PASID_EXEC.bits(), 2);
        assert_eq!(HwCapabilities::PCI_PASID_PRIV.bits(), 4);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn hw_info_on_a_non_iommufd_is_unsupported() {
        let fd = crate::iommufd::tests::null();
        let other = crate::iommufd::tests::null();
        let e = query_hw_info(&fd, DeviceId::new(1, fd.token()), 5, None).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(e.to_string().contains("device 1"));
        let e = query_hw_info(&fd, DeviceId::new(1, fd.token()), 5, Some(3)).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        // A device id of another file is refused before the kernel.
        let e = query_hw_info(&fd, DeviceId::new(1, other.token()), 5, None).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    }

    // Seeds of the `hw_info_decode` fuzz target: a type code (u32, little
    // endian) then the data, as the kernel returns it (native endian).
    #[test]
    fn hw_info_decode_fuzz_seeds() {
        fn input(data_type: u32, data: &[u8]) -> Vec<u8> {
            let mut v = data_type.to_le_bytes().to_vec();
            v.extend_from_slice(data);
            v
        }
        let vtd: [u8; 24] = bytes_of(&[
            (0, &0u32.to_ne_bytes()),
            (8, &0x00d2_0086_6f06_0462_u64.to_ne_bytes()),
            (16, &0x0000_0f05_0f80_50da_u64.to_ne_bytes()),
        ]);
        let selftest: [u8; 8] = bytes_of(&[(4, &0xdeadbeef_u32.to_ne_bytes())]);
        let mut smmu = [0u8; 40];
        for (i, idr) in [0x0894_7f7f_u32, 0x0e60_0000, 0, 0x0000_0010, 0, 0x0000_0075]
            .iter()
            .enumerate()
        {
            smmu[8 + 4 * i..12 + 4 * i].copy_from_slice(&idr.to_ne_bytes());
        }
        smmu[32..36].copy_from_slice(&0x0000_043b_u32.to_ne_bytes());
        smmu[36..40].copy_from_slice(&2u32.to_ne_bytes());
        let tegra = [0, 0, 0, 0, 1, 2, 4, 0];
        let amd: [u8; 16] = bytes_of(&[(0, &0x246_5777_u64.to_ne_bytes())]);
        let mut vtd_long = vtd.to_vec();
        vtd_long.extend_from_slice(&[0xa5; 8]);
        let seeds = [
            ("vtd", input(uapi::IOMMU_HW_INFO_TYPE_INTEL_VTD, &vtd)),
            (
                "vtd_longer",
                input(uapi::IOMMU_HW_INFO_TYPE_INTEL_VTD, &vtd_long),
            ),
            (
                "vtd_short",
                input(uapi::IOMMU_HW_INFO_TYPE_INTEL_VTD, &vtd[..20]),
            ),
            ("selftest", input(HW_INFO_TYPE_SELFTEST, &selftest)),
            ("smmuv3", input(uapi::IOMMU_HW_INFO_TYPE_ARM_SMMUV3, &smmu)),
            (
                "tegra241",
                input(uapi::IOMMU_HW_INFO_TYPE_TEGRA241_CMDQV, &tegra),
            ),
            ("amd", input(uapi::IOMMU_HW_INFO_TYPE_AMD, &amd)),
            ("none", input(uapi::IOMMU_HW_INFO_TYPE_NONE, &[])),
            ("unknown", input(0x7777, &[1, 2, 3])),
        ];
        let decoded: Vec<_> = seeds
            .iter()
            .map(|(_, v)| {
                let (ty, data) = v.split_at(4);
                HwInfoData::decode(u32::from_le_bytes(ty.try_into().expect("4")), data)
            })
            .collect();
        assert_eq!(
            decoded,
            [
                Ok(HwInfoData::IntelVtd {
                    flags: 0,
                    cap_reg: 0x00d2_0086_6f06_0462,
                    ecap_reg: 0x0000_0f05_0f80_50da
                }),
                Ok(HwInfoData::IntelVtd {
                    flags: 0,
                    cap_reg: 0x00d2_0086_6f06_0462,
                    ecap_reg: 0x0000_0f05_0f80_50da
                }),
                Err(DecodeError::TooShort {
                    data_type: uapi::IOMMU_HW_INFO_TYPE_INTEL_VTD,
                    need: 24,
                    got: 20
                }),
                Ok(HwInfoData::Selftest {
                    flags: 0,
                    test_reg: 0xdeadbeef
                }),
                Ok(HwInfoData::ArmSmmuV3 {
                    flags: 0,
                    idr: [0x0894_7f7f, 0x0e60_0000, 0, 0x10, 0, 0x75],
                    iidr: 0x43b,
                    aidr: 2
                }),
                Ok(HwInfoData::Tegra241Cmdqv {
                    flags: 0,
                    version: 1,
                    log2vcmdqs: 2,
                    log2vsids: 4
                }),
                Ok(HwInfoData::Amd {
                    efr: 0x246_5777,
                    efr2: 0
                }),
                Ok(HwInfoData::None),
                Ok(HwInfoData::Unknown {
                    data_type: 0x7777,
                    bytes: vec![1, 2, 3]
                }),
            ]
        );
        crate::fuzz_seeds::write_fuzz_seeds("hw_info_decode", &seeds);
    }
}
