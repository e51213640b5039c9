//! The shadow engine's map / unmap bookkeeping ([`IovaMap`]) against a plain
//! `BTreeMap` interval map (start -> extent), the obvious baseline, in the same run.
//!
//! The trace is what a Linux guest's DMA API makes of a busy device behind
//! virtio-iommu, fragmented: maps of 1-4 pages at random places in a 256 MiB
//! window (refused where they overlap, as both maps refuse them) and unmaps of
//! 1-8 pages at random places (cutting extents, whose remainders go back in),
//! against a map kept about half full (some 16,000 extents). Both process the
//! same trace and must end with the same extents.
//!
//! After criterion, the bench times both again in alternating rounds and prints
//! `ratio btreemap/iova_map` (median of the per-round ratios) and each one's
//! operations per second.
//!
//! Pure user space: runs on the host (`cargo bench -p iommufd-viommu --bench shadow_map`).

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use iommufd::MapFlags;
use iommufd_viommu::{Cut, Extent, IovaMap, PAGE_SIZE};

const WINDOW: u64 = 1 << 16; // pages: 256 MiB
const OPS: usize = 1 << 16;
const ROUNDS: usize = 15;

#[derive(Clone, Copy)]
enum Op {
    Map(Extent),
    Unmap(u64, u64),
}

fn trace(n: usize, seed: u64) -> Vec<Op> {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let r = next();
            let page = (r >> 8) % WINDOW;
            if r % 2 == 0 {
                let pages = 1 + (r >> 40) % 4;
                let gpa = ((r >> 24) % (1 << 18)) * PAGE_SIZE;
                let perms = if r & 2 == 0 {
                    MapFlags::RW
                } else {
                    MapFlags::READ
                };
                Op::Map(
                    Extent::new(
                        0x1_0000_0000 + page * PAGE_SIZE,
                        gpa,
                        pages * PAGE_SIZE,
                        perms,
                    )
                    .expect("extent"),
                )
            } else {
                let pages = 1 + (r >> 40) % 8;
                Op::Unmap(0x1_0000_0000 + page * PAGE_SIZE, pages * PAGE_SIZE)
            }
        })
        .collect()
}

/// The baseline: extents by first IOVA.
#[derive(Default, Clone)]
struct Baseline(BTreeMap<u64, Extent>);

impl Baseline {
    fn map(&mut self, e: Extent) -> bool {
        if let Some((_, prev)) = self.0.range(..=e.last()).next_back() {
            if prev.last() >= e.iova {
                return false;
            }
        }
        self.0.insert(e.iova, e);
        true
    }

    fn unmap(&mut self, iova: u64, len: u64) -> u64 {
        let last = iova + len - 1;
        let cut: Vec<Extent> = self
            .0
            .range(..=last)
            .rev()
            .take_while(|(_, e)| e.last() >= iova)
            .map(|(_, e)| *e)
            .collect();
        let mut n = 0;
        for e in cut {
            self.0.remove(&e.iova);
            n += e.last().min(last) - e.iova.max(iova) + 1;
            for r in e.remainders(iova, last).into_iter().flatten() {
                self.0.insert(r.iova, r);
            }
        }
        n
    }
}

fn engine_map(m: &mut IovaMap<()>, e: Extent) -> bool {
    m.insert(e, ()).is_ok()
}

fn engine_unmap(m: &mut IovaMap<()>, iova: u64, len: u64, cut: &mut Vec<Cut<()>>) -> u64 {
    let last = iova + len - 1;
    cut.clear();
    let _ = m.cut_into(iova, len, cut);
    cut.iter()
        .map(|c| c.extent.last().min(last) - c.extent.iova.max(iova) + 1)
        .sum()
}

fn run_engine(m: &mut IovaMap<()>, ops: &[Op]) -> u64 {
    let mut cut = Vec::new();
    ops.iter()
        .map(|op| match *op {
            Op::Map(e) => u64::from(engine_map(m, black_box(e))),
            Op::Unmap(i, l) => engine_unmap(m, black_box(i), l, &mut cut),
        })
        .sum()
}

fn run_baseline(m: &mut Baseline, ops: &[Op]) -> u64 {
    ops.iter()
        .map(|op| match *op {
            Op::Map(e) => u64::from(m.map(black_box(e))),
            Op::Unmap(i, l) => m.unmap(black_box(i), l),
        })
        .sum()
}

/// Both maps after a warm-up trace that leaves them about half full.
fn warm(ops: usize) -> (IovaMap<()>, Baseline) {
    let fill = trace(ops, 0x9e37_79b9_7f4a_7c15);
    let (mut a, mut b) = (IovaMap::new(), Baseline::default());
    // Mostly maps, to fill up.
    for op in fill.iter().filter(|o| matches!(o, Op::Map(_))) {
        if let Op::Map(e) = *op {
            engine_map(&mut a, e);
            b.map(e);
        }
    }
    (a, b)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench");
    let (n, fill) = if benchmarking {
        (OPS, 1 << 16)
    } else {
        (4096, 4096)
    };
    let (engine0, base0) = warm(fill);
    let ops = trace(n, 0x2545_f491_4f6c_dd1d);
    {
        let (mut a, mut b) = (IovaMap::new(), Baseline::default());
        for op in &ops {
            if let Op::Map(e) = *op {
                engine_map(&mut a, e);
                b.map(e);
            }
        }
        let (mut a2, mut b2) = (warm(fill).0, base0.clone());
        assert_eq!(
            run_engine(&mut a2, &ops),
            run_baseline(&mut b2, &ops),
            "same answers"
        );
        assert_eq!(
            a2.extents(),
            b2.0.values().copied().collect::<Vec<_>>(),
            "same extents"
        );
        assert_eq!(a.len(), b.0.len());
    }
    if !benchmarking {
        println!("note: shadow_map times its trace with --bench (cargo bench)");
        return;
    }
    println!("extents at the start: {}", engine0.len());
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("fragmented");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("iova_map", |b| {
        b.iter_batched_ref(
            || warm(fill).0,
            |m| run_engine(m, &ops),
            criterion::BatchSize::LargeInput,
        )
    });
    g.bench_function("btreemap", |b| {
        b.iter_batched_ref(
            || base0.clone(),
            |m| run_baseline(m, &ops),
            criterion::BatchSize::LargeInput,
        )
    });
    g.finish();
    let mut ratios = Vec::new();
    let (mut ta, mut tb) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        let mut a = warm(fill).0;
        let t = Instant::now();
        black_box(run_engine(&mut a, &ops));
        let x = t.elapsed().as_secs_f64();
        let mut b = base0.clone();
        let t = Instant::now();
        black_box(run_baseline(&mut b, &ops));
        let y = t.elapsed().as_secs_f64();
        ta += x;
        tb += y;
        ratios.push(y / x);
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    c.final_summary();
    println!();
    println!(
        "ratio btreemap/iova_map, fragmented: {:.1}  (iova_map {:.1} M ops/s, btreemap {:.1} M ops/s)",
        ratios[ROUNDS / 2],
        (n * ROUNDS) as f64 / ta / 1e6,
        (n * ROUNDS) as f64 / tb / 1e6
    );
}
