//! Guest-supplied invalidation batches through a PASID table.
//!
//! A guest names PASIDs in its invalidation descriptors; the VMM translates them
//! to host PASIDs (`PasidTable::translate_batch`) or routes them to the HWPT
//! attached at each (`PasidTable::route`) before anything reaches the kernel. The
//! PASIDs are the guest's choice: any value must give a clear error or a correct
//! translation.
//!
//! Input (little endian):
//!
//! | bytes | field                                                            |
//! |-------|------------------------------------------------------------------|
//! | 0     | policy: bit 0 pooled host PASIDs (else identity); bits 1-4 width - 1 (1..16) |
//! | 1     | how many guest PASIDs to map (0..255)                             |
//! | 2..   | `u32` words: first the PASIDs to map (each with HWPT `1 + pasid % 4`), then the batch |
//!
//! Checked: mapping refuses exactly the PASIDs out of range, 0, or beyond the
//! pool; a translated batch has, entry by entry, the host PASID the table's lookup
//! gives (entries without a PASID unchanged); a refused batch names the first
//! entry whose PASID is not mapped; routing puts every entry under the HWPT of its
//! PASID, in order, or names the same first unmapped entry.

#![no_main]

use iommufd_viommu::{HostPasidPool, PasidError, PasidPolicy, PasidTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    if input.len() < 2 {
        return;
    }
    let pooled = input[0] & 1 != 0;
    let width = 1 + u32::from(input[0] >> 1 & 0xf);
    let nmap = usize::from(input[1]);
    let words: Vec<u32> = input[2..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let (to_map, batch) = words.split_at(nmap.min(words.len()));
    let policy = if pooled {
        PasidPolicy::Allocated {
            pool: HostPasidPool::new(1..64).expect("pool"),
            quota: 40,
        }
    } else {
        PasidPolicy::Identity
    };
    let table = PasidTable::new(policy);
    let d = table.add_label(1, width).expect("device");
    for &v in to_map {
        match table.insert(1, v, 1 + v % 4) {
            Ok(p) => {
                assert!(v != 0 && v < 1 << width);
                assert_eq!(d.guest_pasid(p), Some(v));
                if !pooled {
                    assert_eq!(p, v);
                }
            }
            Err(PasidError::OutOfRange { .. }) => assert!(v >= 1 << width),
            Err(PasidError::Reserved { .. }) => assert_eq!(v, 0),
            Err(PasidError::QuotaExceeded { .. } | PasidError::PoolExhausted { .. }) => {
                assert!(pooled)
            }
            Err(e) => panic!("{e}"),
        }
    }
    // Entries: (PASID or none, payload). PASID u32::MAX stands for "none".
    let entries: Vec<(u32, usize)> = batch.iter().copied().zip(0..).collect();
    let pasid_of = |e: &(u32, usize)| (e.0 != u32::MAX).then_some(e.0);
    let first_bad = entries
        .iter()
        .position(|e| pasid_of(e).is_some_and(|v| d.host_pasid(v).is_none()));
    match table.translate_batch(1, &entries, pasid_of, |e, p| (p, e.1)) {
        Ok(out) => {
            assert!(first_bad.is_none());
            assert_eq!(out.len(), entries.len());
            for (o, e) in out.iter().zip(&entries) {
                assert_eq!(o.1, e.1);
                match pasid_of(e) {
                    None => assert_eq!(o.0, u32::MAX),
                    Some(v) => assert_eq!(Some(o.0), d.host_pasid(v)),
                }
            }
        }
        Err(PasidError::Entry { index, .. }) => assert_eq!(Some(index), first_bad),
        Err(e) => panic!("{e}"),
    }
    let routed_in: Vec<(u32, usize)> = entries.iter().filter(|e| e.0 != u32::MAX).copied().collect();
    let first_unmapped = routed_in.iter().position(|e| d.hwpt(e.0).is_none());
    match table.route(1, &routed_in) {
        Ok(groups) => {
            assert!(first_unmapped.is_none());
            let total: usize = groups.iter().map(|g| g.1.len()).sum();
            assert_eq!(total, routed_in.len());
            for (hwpt, list) in &groups {
                let expected: Vec<usize> = routed_in
                    .iter()
                    .filter(|e| d.hwpt(e.0) == Some(*hwpt))
                    .map(|e| e.1)
                    .collect();
                assert_eq!(list, &expected);
            }
        }
        Err(PasidError::Entry { index, .. }) => assert_eq!(Some(index), first_unmapped),
        Err(e) => panic!("{e}"),
    }
});
