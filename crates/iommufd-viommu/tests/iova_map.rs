//! The shadow engine's bookkeeping ([`IovaMap`]) against a model that keeps one
//! entry per 4 KiB page, on random traces of maps and (partial) unmaps: small and
//! large extents, across 2 MiB slots and across the 2^48 boundary of the top
//! level.

use std::collections::BTreeMap;

use iommufd::MapFlags;
use iommufd_viommu::{Extent, IovaMap, PAGE_SIZE};
use proptest::prelude::*;

/// Pages tested: 2^48 - 1 MiB .. 2^48 + 3 MiB, so extents cross both a 2 MiB slot
/// and the top level's 256 TiB boundary.
const BASE: u64 = (1 << 36) - 256;
const PAGES: u64 = 1024;

#[derive(Clone, Debug)]
enum Op {
    Map {
        page: u64,
        gpa: u64,
        pages: u64,
        write: bool,
    },
    Unmap {
        page: u64,
        pages: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..PAGES, 0..1u64 << 20, 1..8u64, any::<bool>())
            .prop_map(|(page, gpa, pages, write)| Op::Map { page, gpa, pages, write }),
        1 => (0..PAGES, 0..1u64 << 20, 8..PAGES, any::<bool>())
            .prop_map(|(page, gpa, pages, write)| Op::Map { page, gpa, pages, write }),
        3 => (0..PAGES, 1..16u64).prop_map(|(page, pages)| Op::Unmap { page, pages }),
        1 => (0..PAGES, 16..PAGES).prop_map(|(page, pages)| Op::Unmap { page, pages }),
    ]
}

type Model = BTreeMap<u64, (u64, MapFlags)>;

fn check(map: &IovaMap<u32>, model: &Model) -> Result<(), TestCaseError> {
    for p in BASE - 2..BASE + PAGES + 2 {
        let want = model.get(&p).map(|(g, f)| (g * PAGE_SIZE + 0x123, *f));
        prop_assert_eq!(map.translate(p * PAGE_SIZE + 0x123), want, "page {:#x}", p);
    }
    let ext = map.extents();
    prop_assert_eq!(ext.len(), map.len());
    prop_assert!(
        ext.windows(2).all(|w| w[0].last() < w[1].iova),
        "sorted, apart"
    );
    let pages: u64 = ext.iter().map(|e| e.len / PAGE_SIZE).sum();
    prop_assert_eq!(pages, model.len() as u64);
    let merged: u64 = map.merged().iter().map(|e| e.len / PAGE_SIZE).sum();
    prop_assert_eq!(merged, pages);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn matches_a_page_model(ops in proptest::collection::vec(op(), 1..80)) {
        // Unmapped by `remove_overlapping` and putting remainders back...
        let mut map = IovaMap::new();
        // ...and by `cut_into`.
        let mut cut_map = IovaMap::new();
        let mut model = Model::new();
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Map { page, gpa, pages, write } => {
                    let perms = if write { MapFlags::RW } else { MapFlags::READ };
                    let first = BASE + page;
                    let e = Extent::new(first * PAGE_SIZE, gpa * PAGE_SIZE, pages * PAGE_SIZE, perms)
                        .expect("valid");
                    let free = (first..first + pages).all(|p| !model.contains_key(&p));
                    let got = map.insert(e, i as u32);
                    prop_assert_eq!(got.is_ok(), free, "{:?}", got);
                    prop_assert_eq!(cut_map.insert(e, i as u32).is_ok(), free);
                    if free {
                        for k in 0..pages {
                            model.insert(first + k, (gpa + k, perms));
                        }
                    }
                }
                Op::Unmap { page, pages } => {
                    let (first, last) = (BASE + page, BASE + page + pages - 1);
                    let want = model.range(first..=last).count() as u64;
                    let cut = map
                        .remove_overlapping(first * PAGE_SIZE, pages * PAGE_SIZE)
                        .expect("valid");
                    let mut got = 0;
                    for (e, tag) in cut {
                        let (lo, hi) = (e.iova.max(first * PAGE_SIZE), e.last().min(last * PAGE_SIZE + PAGE_SIZE - 1));
                        got += (hi - lo + 1) / PAGE_SIZE;
                        for rest in e.remainders(first * PAGE_SIZE, last * PAGE_SIZE + PAGE_SIZE - 1).into_iter().flatten() {
                            map.insert(rest, tag).expect("a remainder fits where it was");
                        }
                    }
                    prop_assert_eq!(got, want);
                    let mut cuts = Vec::new();
                    cut_map
                        .cut_into(first * PAGE_SIZE, pages * PAGE_SIZE, &mut cuts)
                        .expect("valid");
                    let got: u64 = cuts
                        .iter()
                        .map(|c| {
                            let e = c.extent;
                            (e.last().min(last * PAGE_SIZE + PAGE_SIZE - 1) - e.iova.max(first * PAGE_SIZE) + 1) / PAGE_SIZE
                        })
                        .sum();
                    prop_assert_eq!(got, want, "cut_into");
                    model.retain(|p, _| *p < first || *p > last);
                }
            }
            check(&map, &model)?;
            check(&cut_map, &model)?;
        }
        // Everything out: the tree frees its tables.
        let all = map.drain();
        prop_assert_eq!(all.iter().map(|(e, _)| e.len / PAGE_SIZE).sum::<u64>(), model.len() as u64);
        prop_assert!(map.is_empty() && map.extents().is_empty());
    }
}

#[test]
fn bad_ranges_are_refused_and_change_nothing() {
    let mut map = IovaMap::new();
    map.insert(Extent::new(0x1000, 0, 0x1000, MapFlags::RW).unwrap(), ())
        .unwrap();
    assert!(Extent::new(0, 0, 0, MapFlags::RW).is_err(), "empty");
    assert!(
        Extent::new(0x800, 0, 0x1000, MapFlags::RW).is_err(),
        "unaligned IOVA"
    );
    assert!(
        Extent::new(0, 0, 0x1800, MapFlags::RW).is_err(),
        "unaligned length"
    );
    assert!(
        Extent::new(!0xfff_u64, 0, 0x2000, MapFlags::RW).is_err(),
        "IOVA wraps"
    );
    assert!(
        Extent::new(0, !0xfff_u64, 0x2000, MapFlags::RW).is_err(),
        "GPA wraps"
    );
    assert!(map.remove_overlapping(0, 0).is_err());
    assert!(map.remove_overlapping(!0xfff_u64, 0x2000).is_err());
    assert_eq!(map.len(), 1);
    assert!(
        map.remove_overlapping(0x10_0000, 0x1000)
            .unwrap()
            .is_empty(),
        "nothing there: fine"
    );
    assert_eq!(map.len(), 1);
}
