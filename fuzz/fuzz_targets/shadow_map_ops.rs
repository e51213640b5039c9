//! Guest-driven map and unmap requests through the shadow engine's bookkeeping,
//! `iommufd_viommu::IovaMap`.
//!
//! Input: a sequence of 25-byte requests: an op byte (insert, cut, remove, look
//! up; bit 7: raw addresses), then IOVA, GPA and length (little-endian u64).
//! Without bit 7 the numbers are folded into a 64-page window, so requests
//! collide; with it they are used as they are (huge, unaligned, wrapping).
//!
//! Checked: no panic; a refusal is a typed error and changes nothing; the
//! windowed map agrees page by page with a model; in both maps the extents stay
//! sorted, apart and counted, and each translates at both ends (checked after
//! every request in the windowed map, at the end in the raw one).

#![no_main]

use std::collections::BTreeMap;

use iommufd::MapFlags;
use iommufd_viommu::{Extent, IovaMap, PAGE_SIZE};
use libfuzzer_sys::fuzz_target;

const WINDOW: u64 = 64;

fn word(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

fn consistent(map: &IovaMap<u8>) {
    let ext = map.extents();
    assert_eq!(ext.len(), map.len());
    assert!(ext.windows(2).all(|w| w[0].last() < w[1].iova));
    for e in &ext {
        assert_eq!(map.translate(e.iova), Some((e.gpa, e.perms)));
        assert_eq!(map.translate(e.last()), Some((e.gpa + (e.len - 1), e.perms)));
    }
}

fuzz_target!(|input: &[u8]| {
    let mut small: IovaMap<u8> = IovaMap::new();
    let mut raw: IovaMap<u8> = IovaMap::new();
    let mut model: BTreeMap<u64, u64> = BTreeMap::new();
    let mut cuts = Vec::new();
    for req in input.chunks_exact(25) {
        let (op, mut iova, mut gpa, mut len) = (req[0], word(&req[1..]), word(&req[9..]), word(&req[17..]));
        let windowed = op & 0x80 == 0;
        if windowed {
            iova = (iova % WINDOW) * PAGE_SIZE;
            gpa = (gpa % 1024) * PAGE_SIZE;
            len = (len % 16) * PAGE_SIZE;
        }
        let map = if windowed { &mut small } else { &mut raw };
        let before = map.len();
        match op & 3 {
            0 => {
                let perms = if op & 4 != 0 { MapFlags::READ } else { MapFlags::RW };
                match Extent::new(iova, gpa, len, perms) {
                    Ok(e) => {
                        let free = !map.overlaps(iova, len);
                        assert_eq!(map.insert(e, op).is_ok(), free);
                        if windowed && free {
                            for p in 0..len / PAGE_SIZE {
                                model.insert(iova / PAGE_SIZE + p, gpa / PAGE_SIZE + p);
                            }
                        }
                    }
                    Err(_) => assert!(len == 0 || iova % PAGE_SIZE != 0 || gpa % PAGE_SIZE != 0
                        || len % PAGE_SIZE != 0 || iova.checked_add(len - 1).is_none()
                        || gpa.checked_add(len - 1).is_none()),
                }
            }
            1 => {
                cuts.clear();
                if map.cut_into(iova, len, &mut cuts).is_err() {
                    assert_eq!(map.len(), before);
                } else if windowed {
                    let (first, end) = (iova / PAGE_SIZE, (iova + len) / PAGE_SIZE);
                    model.retain(|p, _| *p < first || *p >= end);
                }
            }
            2 => match map.remove_overlapping(iova, len) {
                Err(_) => assert_eq!(map.len(), before),
                Ok(gone) => {
                    if windowed {
                        for (e, _) in gone {
                            let first = e.iova / PAGE_SIZE;
                            (first..first + e.len / PAGE_SIZE).for_each(|p| {
                                model.remove(&p);
                            });
                        }
                    }
                }
            },
            _ => {
                let _ = map.translate(iova);
                let _ = map.overlapping(iova, len);
            }
        }
        if windowed {
            consistent(map);
        }
    }
    // The raw map once (a check per request would walk 2^16 top slots each time).
    consistent(&raw);
    for p in 0..WINDOW + 1 {
        assert_eq!(small.translate(p * PAGE_SIZE).map(|(g, _)| g / PAGE_SIZE), model.get(&p).copied());
    }
    assert_eq!(small.merged().iter().map(|e| e.len / PAGE_SIZE).sum::<u64>(), model.len() as u64);
});
