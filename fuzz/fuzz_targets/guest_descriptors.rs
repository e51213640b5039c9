//! The checked constructors of guest-controlled stage-1 descriptions and
//! invalidation entries on arbitrary words.
//!
//! Input (little endian):
//!
//! | bytes | field                                                               |
//! |-------|---------------------------------------------------------------------|
//! | 0     | what to build, modulo 5 (table below)                               |
//! | 1..33 | four `u64` words `w0`..`w3`; missing bytes are 0, later ones ignored |
//!
//! | selector | call                                                              |
//! |----------|-------------------------------------------------------------------|
//! | 0        | `SmmuV3Ste::from_words([w0, w1])`                                  |
//! | 1        | `AmdGuestDte::from_words([w0, w1, w2, w3])`                        |
//! | 2        | `SmmuV3Command::from_words([w0, w1])`                              |
//! | 3        | `VtdS1Invalidation::range(w0, w1, w2 & 1 != 0)`                    |
//! | 4        | `VtdS1::new(w0, w1 as u32, VtdS1Flags::from_bits_truncate(w2))`    |
//!
//! Checked, besides "no panic" and errors that format to non-empty text: what
//! each constructor accepts round-trips (`from_words(v.words())` gives the same
//! words, the getters give back the arguments). The SMMUv3 STE is accepted
//! exactly as Linux's `arm_smmu_validate_vste` accepts it (an entry without `V`
//! is zeroed; with `V`, only the nesting fields, `Config` abort, bypass or stage
//! 1, `EATS` 0 or 1), restated here from the kernel's masks. An accepted SMMUv3
//! command has one of the opcodes the kernel forwards (0x05, 0x06, 0x10-0x13,
//! 0x30, 0x40), an `ATC_INV` size of at most 52, and names its stream exactly for
//! `CFGI_CD(_ALL)` and `ATC_INV`; a `ReservedBits` refusal names set bits of the
//! word, never the opcode, and all of that word's offending bits. The AMD DTE, the
//! VT-d range and the VT-d stage-1 table are accepted exactly when their
//! documented rules hold.

#![no_main]

use iommufd::{
    AmdGuestDte, SmmuV3Command, SmmuV3Config, SmmuV3Opcode, SmmuV3Ste, Stage1, Stage1Error, VtdS1,
    VtdS1Flags, VtdS1Invalidation,
};
use libfuzzer_sys::fuzz_target;

fn check_error(e: &Stage1Error) {
    assert!(!e.to_string().is_empty());
    assert!(!format!("{e:?}").is_empty());
}

/// Bits `hi..=lo` of `w`, shifted down.
fn field(w: u64, hi: u32, lo: u32) -> u64 {
    (w >> lo) & (u64::MAX >> (63 - (hi - lo)))
}

/// Bits `hi..=lo` set.
const fn mask(hi: u32, lo: u32) -> u64 {
    (u64::MAX >> (63 - hi)) & !((1u64 << lo) - 1)
}

/// Linux's `STRTAB_STE_0_NESTING_ALLOWED`: V, Config, S1Fmt, S1ContextPtr,
/// S1CDMax.
const STE0_NESTING: u64 = 1 | mask(3, 1) | mask(5, 4) | mask(51, 6) | mask(63, 59);
/// Linux's `STRTAB_STE_1_NESTING_ALLOWED`: S1DSS, S1CIR, S1COR, S1CSH,
/// S1STALLD, EATS.
const STE1_NESTING: u64 = mask(7, 0) | 1 << 27 | mask(29, 28);

fn smmu_ste(w: [u64; 2]) {
    let kernel_ok = w[0] & 1 == 0
        || (w[0] & !STE0_NESTING == 0
            && w[1] & !STE1_NESTING == 0
            && matches!(field(w[0], 3, 1), 0 | 4 | 5)
            && field(w[1], 29, 28) <= 1);
    match SmmuV3Ste::from_words(w) {
        Ok(ste) => {
            assert!(kernel_ok, "accepted {w:#x?}");
            if w[0] & 1 == 0 {
                // The kernel zeroes an invalid entry.
                assert_eq!(ste.words(), [0, 0]);
                assert_eq!(ste.config(), SmmuV3Config::Abort);
            } else {
                assert_eq!(ste.words(), w);
                let cfg = field(w[0], 3, 1);
                assert!(matches!(cfg, 0 | 4 | 5), "Config {cfg}");
                assert!(field(w[1], 29, 28) <= 1, "EATS");
                let want = match cfg {
                    4 => SmmuV3Config::Bypass,
                    5 => SmmuV3Config::Stage1,
                    _ => SmmuV3Config::Abort,
                };
                assert_eq!(ste.config(), want);
            }
            let again = SmmuV3Ste::from_words(ste.words()).expect("round trip");
            assert_eq!(again, ste);
            assert_eq!(Stage1::from(ste), Stage1::SmmuV3(ste));
            assert!(!format!("{ste:?}").is_empty());
        }
        Err(e) => {
            assert!(!kernel_ok, "refused {w:#x?}: {e}");
            if let Stage1Error::ReservedBits { word, bits } = e {
                assert!(word < 2 && bits != 0 && bits & !w[word] == 0, "{e}");
            }
            check_error(&e);
        }
    }
}

fn amd_dte(w: [u64; 4]) {
    let v = w[0] & 1 != 0;
    let gv = w[0] & 1 << 55 != 0;
    let gcr3 = w[0] & mask(60, 58) != 0 || w[1] & (mask(31, 16) | mask(63, 43)) != 0;
    let ok = field(w[0], 11, 9) == 0 // Mode: the host's
        && field(w[0], 51, 12) == 0 // Host-TRP: the host's
        && !(v && gv && !gcr3)
        && field(w[2], 55, 54) <= 1 // GPT level: 4 or 5 levels
        && field(w[0], 57, 56) != 3; // GLX 3 is reserved
    match AmdGuestDte::from_words(w) {
        Ok(dte) => {
            assert!(ok, "accepted {w:#x?}");
            assert_eq!(dte.words(), w);
            let again = AmdGuestDte::from_words(dte.words()).expect("round trip");
            assert_eq!(again, dte);
            assert_eq!(Stage1::from(dte), Stage1::Amd(dte));
        }
        Err(e) => {
            assert!(!ok, "refused {w:#x?}: {e}");
            check_error(&e);
        }
    }
}

fn smmu_command(w: [u64; 2]) {
    let op = w[0] & 0xff;
    let known = matches!(op, 0x05 | 0x06 | 0x10 | 0x11 | 0x12 | 0x13 | 0x30 | 0x40);
    match SmmuV3Command::from_words(w) {
        Ok(cmd) => {
            assert!(known, "opcode {op:#x} accepted");
            assert_eq!(cmd.words(), w);
            let again = SmmuV3Command::from_words(cmd.words()).expect("round trip");
            assert_eq!(again.words(), cmd.words());
            let opcode = cmd.opcode();
            let want = match op {
                0x05 => SmmuV3Opcode::CfgiCd,
                0x06 => SmmuV3Opcode::CfgiCdAll,
                0x10 => SmmuV3Opcode::TlbiNhAll,
                0x11 => SmmuV3Opcode::TlbiNhAsid,
                0x12 => SmmuV3Opcode::TlbiNhVa,
                0x13 => SmmuV3Opcode::TlbiNhVaa,
                0x30 => SmmuV3Opcode::TlbiNsnhAll,
                _ => SmmuV3Opcode::AtcInv,
            };
            assert_eq!(opcode, want);
            if opcode == SmmuV3Opcode::AtcInv {
                assert!(w[1] & 0x3f <= 52, "ATC_INV size {}", w[1] & 0x3f);
            }
            let names_stream = matches!(op, 0x05 | 0x06 | 0x40);
            assert_eq!(cmd.virt_sid(), names_stream.then_some((w[0] >> 32) as u32));
            assert!(!format!("{cmd:?}").is_empty());
        }
        Err(e) => {
            if !known {
                assert!(
                    matches!(e, Stage1Error::BadField { field: "opcode", value, .. } if value == op),
                    "{e}"
                );
            }
            if let Stage1Error::ReservedBits { word, bits } = e {
                assert!(known);
                assert!(word < 2 && bits != 0 && bits & !w[word] == 0, "{e}");
                assert!(word != 0 || bits & 0xff == 0, "the opcode is reserved: {e}");
                // All of that word's offending bits: without them, the word passes.
                let mut fixed = w;
                fixed[word] &= !bits;
                if let Err(Stage1Error::ReservedBits { word: again, .. }) =
                    SmmuV3Command::from_words(fixed)
                {
                    assert!(
                        again > word,
                        "word {word} still refused after clearing {bits:#x}"
                    );
                }
            }
            check_error(&e);
        }
    }
}

fn vtd_range(addr: u64, npages: u64, leaf: bool) {
    let ok = addr.is_multiple_of(4096) && npages != 0 && (npages != u64::MAX || addr == 0);
    match VtdS1Invalidation::range(addr, npages, leaf) {
        Ok(inv) => {
            assert!(ok, "accepted {addr:#x} {npages:#x}");
            assert_eq!((inv.addr(), inv.npages(), inv.leaf()), (addr, npages, leaf));
            let again =
                VtdS1Invalidation::range(inv.addr(), inv.npages(), inv.leaf()).expect("round trip");
            assert_eq!(
                (again.addr(), again.npages(), again.leaf()),
                (addr, npages, leaf)
            );
            if npages == u64::MAX && !leaf {
                let all = VtdS1Invalidation::all();
                assert_eq!((all.addr(), all.npages(), all.leaf()), (addr, npages, leaf));
            }
            assert!(!format!("{inv:?}").is_empty());
        }
        Err(e) => {
            assert!(!ok, "refused {addr:#x} {npages:#x}: {e}");
            check_error(&e);
        }
    }
}

fn vtd_s1(pgtbl_addr: u64, addr_width: u32, flags: VtdS1Flags) {
    let ok = pgtbl_addr.is_multiple_of(4096)
        && matches!(addr_width, 48 | 57)
        && (flags.contains(VtdS1Flags::SRE) || !flags.contains(VtdS1Flags::WPE));
    match VtdS1::new(pgtbl_addr, addr_width, flags) {
        Ok(s1) => {
            assert!(ok, "accepted {pgtbl_addr:#x} {addr_width} {flags:?}");
            assert_eq!(
                (s1.pgtbl_addr(), s1.addr_width(), s1.flags()),
                (pgtbl_addr, addr_width, flags)
            );
            let again = VtdS1::new(s1.pgtbl_addr(), s1.addr_width(), s1.flags());
            assert_eq!(again, Ok(s1));
            assert_eq!(
                Stage1::from(s1).data_type(),
                iommufd::uapi::IOMMU_HWPT_DATA_VTD_S1
            );
        }
        Err(e) => {
            assert!(!ok, "refused {pgtbl_addr:#x} {addr_width} {flags:?}: {e}");
            check_error(&e);
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    let mut bytes = [0u8; 32];
    let n = rest.len().min(32);
    bytes[..n].copy_from_slice(&rest[..n]);
    let w: [u64; 4] =
        std::array::from_fn(|i| u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8")));

    match selector % 5 {
        0 => smmu_ste([w[0], w[1]]),
        1 => amd_dte(w),
        2 => smmu_command([w[0], w[1]]),
        3 => vtd_range(w[0], w[1], w[2] & 1 != 0),
        _ => vtd_s1(w[0], w[1] as u32, VtdS1Flags::from_bits_truncate(w[2])),
    }
});
