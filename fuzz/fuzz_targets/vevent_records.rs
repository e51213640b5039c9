//! `VeventSequence::decode` on arbitrary bytes, from any starting sequence.
//!
//! Input (little endian):
//!
//! | bytes | field                                                                  |
//! |-------|------------------------------------------------------------------------|
//! | 0     | bit 0: queue type (0 `ArmSmmuV3`, 32 data bytes; 1 `Tegra241Cmdqv`, 16); bits 1-7: where to split the read |
//! | 1..5  | the sequence number the queue expects next (masked to 31 bits)         |
//! | 5..   | the bytes of one `read(2)` of the vEVENTQ                              |
//!
//! A record is an 8-byte header (`flags`: bit 0 `LOST_EVENTS`; `sequence`), then
//! the type's data, except after a `LOST_EVENTS` header. The queue is brought to
//! its starting sequence `s` by decoding a `LOST_EVENTS` header for `s - 1`
//! first; with `s` = 0 it is a fresh `VeventSequence::new()`.
//!
//! Checked: decoding errs exactly when a header is cut short, has flags beyond bit
//! 0 or a sequence above `i32::MAX`, or an event's data is cut short (the error
//! naming the first such record), and then leaves the `VeventSequence` as it
//! was, while the records before the bad one decode. On success: every record's
//! sequence, flags and data are the input's (`data` is `None` exactly for
//! `LOST_EVENTS` headers); `lost_before` is the gap from the sequence expected
//! (below 2^31 for an event, 1 to 2^31 for a `LOST_EVENTS` header, which counts
//! itself); the events and losses add up to how far the expected sequence moved
//! (modulo 2^31); and decoding the same bytes split at a record boundary, in two
//! calls with one `VeventSequence`, gives the same records and the same state.

#![no_main]

use iommufd::{DecodeError, VeventData, VeventRecord, VeventSequence, VeventqType};
use libfuzzer_sys::fuzz_target;

const HEADER: usize = 5;
const SEQ_MASK: u32 = i32::MAX as u32;
const LOST: u32 = 1;

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().expect("8 bytes"))
}

fn lost_header(sequence: u32) -> [u8; 8] {
    let mut h = [0u8; 8];
    h[..4].copy_from_slice(&LOST.to_le_bytes());
    h[4..].copy_from_slice(&sequence.to_le_bytes());
    h
}

/// The sequence number `seq` expects next: what a `LOST_EVENTS` header for
/// sequence 0 counts as lost, minus itself.
fn next_of(seq: VeventSequence) -> u32 {
    let mut probe = seq;
    let r = probe
        .decode(VeventqType::ArmSmmuV3, &lost_header(0))
        .expect("a LOST_EVENTS header");
    assert_eq!(r.len(), 1);
    let gap = r[0].lost_before - 1;
    assert!(gap <= SEQ_MASK);
    gap.wrapping_neg() & SEQ_MASK
}

/// The records of `bytes` by a model of the format: each record's offset and
/// length, or the offset of the first bad record and the error it must give.
fn walk(ty: VeventqType, bytes: &[u8]) -> Result<Vec<(usize, usize)>, (usize, DecodeError)> {
    let data_len = ty.data_len();
    let mut records = Vec::new();
    let mut off = 0;
    while off < bytes.len() {
        if bytes.len() - off < 8 {
            let need = off + 8;
            return Err((off, too_short(ty, need, bytes.len())));
        }
        let (flags, sequence) = (u32_at(bytes, off), u32_at(bytes, off + 4));
        if flags & !LOST != 0 {
            return Err((off, bad(off, "flags", flags)));
        }
        if sequence > SEQ_MASK {
            return Err((off, bad(off, "sequence", sequence)));
        }
        let len = if flags & LOST != 0 { 8 } else { 8 + data_len };
        if bytes.len() - off < len {
            return Err((off, too_short(ty, off + len, bytes.len())));
        }
        records.push((off, len));
        off += len;
    }
    Ok(records)
}

fn too_short(ty: VeventqType, need: usize, got: usize) -> DecodeError {
    DecodeError::TooShort {
        data_type: ty.code(),
        need,
        got,
    }
}

fn bad(offset: usize, field: &'static str, value: u32) -> DecodeError {
    DecodeError::BadRecord {
        offset,
        field,
        value: value.into(),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((head, bytes)) = input.split_first_chunk::<HEADER>() else {
        return;
    };
    let ty = if head[0] & 1 == 0 {
        VeventqType::ArmSmmuV3
    } else {
        VeventqType::Tegra241Cmdqv
    };
    let split = usize::from(head[0] >> 1);
    let start = u32_at(head, 1) & SEQ_MASK;

    let mut seq = VeventSequence::new();
    assert_eq!(next_of(seq), 0);
    if start != 0 {
        let r = seq
            .decode(ty, &lost_header(start - 1))
            .expect("a LOST_EVENTS header");
        assert_eq!(r[0].lost_before, start);
    }
    assert_eq!(next_of(seq), start);
    let before = seq;

    let decoded = seq.decode(ty, bytes);
    let records = match (decoded, walk(ty, bytes)) {
        (Ok(records), Ok(layout)) => {
            assert_eq!(records.len(), layout.len());
            records.into_iter().zip(layout).collect::<Vec<_>>()
        }
        (Err(e), Err((bad_at, want))) => {
            assert_eq!(e, want);
            assert!(!e.to_string().is_empty());
            assert_eq!(seq, before, "an error consumed something");
            // The records before the bad one are fine.
            let mut s = before;
            let good = s.decode(ty, &bytes[..bad_at]).expect("the records before");
            assert!(good.len() <= bad_at / 8);
            return;
        }
        (got, want) => panic!("decoded {got:?}, expected {want:?}"),
    };

    // Every record against its bytes, and the gap from the sequence expected.
    let mut expect = start;
    let mut moved = 0u64;
    for (r, (off, len)) in &records {
        let rec = &bytes[*off..off + len];
        let (flags, sequence) = (u32_at(rec, 0), u32_at(rec, 4));
        assert_eq!(r.sequence, sequence);
        assert!(r.sequence <= SEQ_MASK);
        assert_eq!(r.data.is_none(), flags & LOST != 0);
        let gap = sequence.wrapping_sub(expect) & SEQ_MASK;
        match r.data {
            None => {
                // The header names the last lost event: it counts itself.
                assert_eq!(u64::from(r.lost_before), u64::from(gap) + 1);
                assert!((1..=1 << 31).contains(&r.lost_before));
            }
            Some(data) => {
                assert_eq!(r.lost_before, gap);
                assert!(r.lost_before < 1 << 31);
                let want = match ty {
                    VeventqType::ArmSmmuV3 => VeventData::ArmSmmuV3([
                        u64_at(rec, 8),
                        u64_at(rec, 16),
                        u64_at(rec, 24),
                        u64_at(rec, 32),
                    ]),
                    _ => VeventData::Tegra241Cmdqv([u64_at(rec, 8), u64_at(rec, 16)]),
                };
                assert_eq!(data, want);
                assert_eq!(
                    data.virt_id(),
                    matches!(ty, VeventqType::ArmSmmuV3).then(|| u64_at(rec, 8) >> 32)
                );
            }
        }
        // Events lost, plus this one if it is an event.
        moved += u64::from(r.lost_before) + u64::from(r.data.is_some());
        expect = (sequence + 1) & SEQ_MASK;
    }
    let next = next_of(seq);
    assert_eq!(next, expect);
    assert_eq!(
        u64::from(next.wrapping_sub(start) & SEQ_MASK),
        moved % (1 << 31),
        "lost and delivered events do not add up"
    );
    let records: Vec<VeventRecord> = records.into_iter().map(|(r, _)| r).collect();

    // Deterministic, and the same in two reads split at a record boundary.
    let mut again = before;
    assert_eq!(again.decode(ty, bytes).as_ref(), Ok(&records));
    assert_eq!(again, seq);
    let k = split % (records.len() + 1);
    let at: usize = records[..k]
        .iter()
        .map(|r| 8 + if r.data.is_some() { ty.data_len() } else { 0 })
        .sum();
    let mut two = before;
    let mut both = two.decode(ty, &bytes[..at]).expect("first part");
    assert_eq!(both.len(), k);
    both.extend(two.decode(ty, &bytes[at..]).expect("second part"));
    assert_eq!(both, records);
    assert_eq!(two, seq);
});
