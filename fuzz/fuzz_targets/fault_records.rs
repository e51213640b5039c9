//! `FaultRecord::decode` and `FaultGroup::from_records` on arbitrary bytes.
//!
//! Input: the bytes of one `read(2)` of a fault queue, as is: records of 40 bytes
//! (`struct iommu_hwpt_pgfault`, native endian), the last one possibly partial.
//!
//! | bytes of a record | field                                          |
//! |-------------------|------------------------------------------------|
//! | 0..4              | flags: bit 0 `PASID_VALID`, bit 1 `LAST_PAGE`  |
//! | 4..8              | dev_id                                         |
//! | 8..12             | pasid                                          |
//! | 12..16            | grpid                                          |
//! | 16..20            | perm: bits 0-3 read, write, exec, priv         |
//! | 20..24            | reserved, must be 0                            |
//! | 24..32            | addr                                           |
//! | 32..36            | length                                         |
//! | 36..40            | cookie                                         |
//!
//! Checked: decoding errs exactly when the length is not a multiple of 40
//! (`TooShort`, asking for the next whole record) or a record has flag bits
//! beyond `0b11`, permission bits beyond `0xf` or a non-zero reserved field
//! (`BadRecord` naming the first such record and field, in that order); on
//! success there is one record per 40 bytes, every field is the input's, `pasid`
//! is `Some` exactly when flag bit 0 is set and `last_page` exactly when bit 1 is.
//! The records are then grouped against an `Iommufd` on `/dev/null` (so no device
//! has a label): grouping errs exactly when a record continues an open group
//! (same cookie, the previous record not `LAST_PAGE`) with another device, PASID
//! or group index; otherwise every group is non-empty, the groups hold every
//! record as a page exactly once and in order, and each group's fields are its
//! first record's.

#![no_main]

use std::fs::File;
use std::sync::OnceLock;

use iommufd::{DecodeError, FaultGroup, FaultPage, FaultPerm, FaultRecord, Iommufd};
use libfuzzer_sys::fuzz_target;

const RECORD: usize = 40;

/// An `Iommufd` that is `/dev/null`: `from_records` only looks labels up in it.
fn null_fd() -> &'static Iommufd {
    static FD: OnceLock<Iommufd> = OnceLock::new();
    FD.get_or_init(|| {
        let f = File::open("/dev/null").expect("/dev/null");
        // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory
        // (and grouping sends no command at all).
        unsafe { Iommufd::from_owned_fd_unchecked(f.into()) }
    })
}

fn u32_at(r: &[u8], off: usize) -> u32 {
    u32::from_ne_bytes(r[off..off + 4].try_into().expect("4 bytes"))
}

/// What decoding `bytes` must give: the error, or `Ok` (the fields are checked
/// one by one against the record bytes).
fn expected_error(bytes: &[u8]) -> Option<DecodeError> {
    if !bytes.len().is_multiple_of(RECORD) {
        return Some(DecodeError::TooShort {
            data_type: 0,
            need: (bytes.len() / RECORD + 1) * RECORD,
            got: bytes.len(),
        });
    }
    for (i, r) in bytes.chunks_exact(RECORD).enumerate() {
        let bad = |field, value: u32| {
            Some(DecodeError::BadRecord {
                offset: i * RECORD,
                field,
                value: value.into(),
            })
        };
        let (flags, perm, reserved) = (u32_at(r, 0), u32_at(r, 16), u32_at(r, 20));
        if flags & !0b11 != 0 {
            return bad("flags", flags);
        }
        if perm & !0xf != 0 {
            return bad("perm", perm);
        }
        if reserved != 0 {
            return bad("__reserved", reserved);
        }
    }
    None
}

fuzz_target!(|input: &[u8]| {
    let decoded = FaultRecord::decode(input);
    let records = match (decoded, expected_error(input)) {
        (Ok(records), None) => records,
        (Err(got), Some(want)) => {
            assert_eq!(got, want);
            assert!(!got.to_string().is_empty());
            return;
        }
        (got, want) => panic!("decoded {got:?}, expected error {want:?}"),
    };

    // Records: one per 40 bytes, every field the input's.
    assert_eq!(input.len() % RECORD, 0);
    assert_eq!(records.len(), input.len() / RECORD);
    for (rec, r) in records.iter().zip(input.chunks_exact(RECORD)) {
        let flags = u32_at(r, 0);
        assert_eq!(rec.dev_id, u32_at(r, 4));
        assert_eq!(rec.pasid, (flags & 1 != 0).then(|| u32_at(r, 8)));
        assert_eq!(rec.grpid, u32_at(r, 12));
        assert_eq!(rec.perm.bits(), u32_at(r, 16));
        assert!(FaultPerm::all().contains(rec.perm));
        assert_eq!(
            rec.addr,
            u64::from_ne_bytes(r[24..32].try_into().expect("8"))
        );
        assert_eq!(rec.length, u32_at(r, 32));
        assert_eq!(rec.cookie, u32_at(r, 36));
        assert_eq!(rec.last_page, flags & 2 != 0);
    }
    // Deterministic.
    assert_eq!(FaultRecord::decode(input).as_ref(), Ok(&records));

    // Grouping: the first record that continues an open group and disagrees
    // with it is an error.
    let mismatch = records.windows(2).position(|w| {
        let (prev, r) = (&w[0], &w[1]);
        // `prev` continues or starts the group `r` would join; all records of an
        // open group agree (else an earlier window matched), so comparing with
        // the previous record is comparing with the group.
        !prev.last_page
            && prev.cookie == r.cookie
            && (prev.dev_id != r.dev_id || prev.pasid != r.pasid || prev.grpid != r.grpid)
    });
    let fd = null_fd();
    let groups = match (FaultGroup::from_records(fd, &records), mismatch) {
        (Ok(groups), None) => groups,
        (Err(e), Some(i)) => {
            match e {
                DecodeError::BadRecord { offset, value, .. } => {
                    assert_eq!(offset, (i + 1) * RECORD);
                    assert_eq!(value, u64::from(records[i + 1].dev_id));
                }
                other => panic!("grouping failed with {other:?}"),
            }
            assert!(!e.to_string().is_empty());
            return;
        }
        (got, want) => panic!("grouped {got:?}, expected a mismatch at {want:?}"),
    };

    // Every record is a page of exactly one group, in order.
    assert_eq!(
        groups.iter().map(|g| g.pages.len()).sum::<usize>(),
        records.len()
    );
    let mut next = 0;
    for (gi, g) in groups.iter().enumerate() {
        assert!(!g.pages.is_empty(), "group {gi} is empty");
        let first = &records[next];
        assert_eq!(g.cookie, first.cookie);
        assert_eq!(g.device.raw(), first.dev_id);
        assert_eq!(g.pasid, first.pasid);
        assert_eq!(g.grpid, first.grpid);
        assert_eq!(g.label, None);
        for (pi, page) in g.pages.iter().enumerate() {
            let r = &records[next + pi];
            let want = FaultPage {
                addr: r.addr,
                perm: r.perm,
                length: r.length,
            };
            assert_eq!(*page, want, "group {gi} page {pi}");
            assert_eq!(r.cookie, g.cookie);
            // Only the last page of a group may close it.
            assert!(
                !r.last_page || pi == g.pages.len() - 1,
                "group {gi} page {pi}"
            );
        }
        next += g.pages.len();
        // A group ends at a LAST_PAGE record, a new cookie, or the end.
        if let Some(after) = records.get(next) {
            assert!(records[next - 1].last_page || after.cookie != g.cookie);
        }
    }
    assert_eq!(next, records.len());
});
