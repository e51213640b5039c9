//! What a failed batched invalidation reports, for any answer the kernel gives.
//!
//! `IOMMU_HWPT_INVALIDATE` writes back in `entry_num` how many entries it handled;
//! the crate turns that and the errno into `Error::InvalidationIncomplete` naming
//! the first entry not handled and the label of its device (or `Unsupported` /
//! `NotFound`). The count comes from the kernel, the entries and their device ids
//! from the guest: neither may make the crate index out of bounds or name the
//! wrong entry.
//!
//! Input (little endian):
//!
//! | bytes | field                                                                |
//! |-------|----------------------------------------------------------------------|
//! | 0..4  | `entry_num` as the kernel left it                                     |
//! | 4..8  | errno (taken modulo 140, so real values are common)                   |
//! | 8     | which virtual ids have a device: bit `i` for vSID `i` (labels `0x100 + i`) |
//! | 9..   | SMMUv3 commands, 16 bytes each; words the crate refuses are skipped   |
//!
//! Checked: no panic; `ENOTTY` and `ENOENT` with nothing handled are
//! `Unsupported` / `NotFound`; otherwise `InvalidationIncomplete` whose `handled`
//! is at most the number of commands (0 for errors the kernel returns before it
//! runs the command: `ENOTTY`, `E2BIG`, `EFAULT`), whose `entry` is the command at
//! index `handled` (none when all were handled), whose `label` is that command's
//! device's, and whose errno is the input's.

#![no_main]

use iommufd::{Error, SmmuV3Command, fuzz_invalidation_result};
use libfuzzer_sys::fuzz_target;

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 9 {
        return;
    }
    let reported = u32_at(input, 0);
    let errno = (u32_at(input, 4) % 140) as i32;
    let devices = input[8];
    let cmds: Vec<SmmuV3Command> = input[9..]
        .chunks_exact(16)
        .filter_map(|c| {
            let w0 = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
            let w1 = u64::from_le_bytes(c[8..].try_into().expect("8 bytes"));
            SmmuV3Command::from_words([w0, w1]).ok()
        })
        .collect();
    let label_of = |v: u64| (v < 8 && devices >> v & 1 != 0).then_some(0x100 + v);
    let e = fuzz_invalidation_result(&cmds, reported, errno, label_of);
    let early = matches!(errno, libc::ENOTTY | libc::E2BIG | libc::EFAULT);
    let handled_expected = if early {
        0
    } else {
        reported.min(cmds.len() as u32)
    };
    if handled_expected == 0 && (errno == libc::ENOTTY || errno == libc::ENOENT) {
        assert!(
            matches!(e, Error::Unsupported { .. } | Error::NotFound { .. } | Error::Ioctl { .. }),
            "{e:?}"
        );
        assert_eq!(e.errno(), Some(errno));
        return;
    }
    match &e {
        Error::InvalidationIncomplete {
            handled,
            entry,
            label,
            errno: got,
            ..
        } => {
            assert_eq!(*handled, handled_expected);
            assert_eq!(*got, errno);
            let next = cmds.get(*handled as usize);
            assert_eq!(entry.is_some(), next.is_some());
            if let (Some(text), Some(cmd)) = (entry, next) {
                assert_eq!(text, &format!("{cmd:?}"));
            }
            let want = next.and_then(|c| c.virt_sid()).and_then(|v| label_of(v.into()));
            assert_eq!(*label, want);
        }
        other => panic!("expected InvalidationIncomplete, got {other:?}"),
    }
    assert!(!e.to_string().is_empty());
});
