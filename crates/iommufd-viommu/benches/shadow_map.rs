//! The shadow engine's map / unmap bookkeeping ([`IovaMap`]) against a plain
//! `BTreeMap` interval map (start -> extent), the obvious baseline, in the same run.
//!
//! Two fragmented traces of 65,536 requests in a 256 MiB window of IOVAs, against
//! a map holding some 16,000 extents of 1 to 4 pages:
//!
//! - `random`: maps of 1-4 pages at random places (refused where they overlap,
//!   as both maps refuse them: half of them) and unmaps of 1-8 pages at random
//!   places (cutting extents, whose remainders stay);
//! - `guest`: what a guest's DMA API asks of a busy device behind virtio-iommu:
//!   maps of 1-4 pages into free IOVAs, and unmaps of a live mapping, whole (4
//!   in 5) or its first or last page.
//!
//! Both maps process the same trace and must end with the same extents. After
//! criterion, the bench times both again in alternating rounds and prints
//! `ratio btreemap/iova_map` per trace (median of the per-round ratios) and each
//! one's operations per second.
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

/// A guest's DMA-API trace: (requests filling the map, then `n` requests).
fn guest_trace(n: usize, seed: u64) -> (Vec<Op>, Vec<Op>) {
    let mut x = seed;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut used = vec![false; WINDOW as usize];
    let mut live: Vec<Extent> = Vec::new();
    let base = 0x1_0000_0000u64;
    let map = |r: u64, used: &mut Vec<bool>, live: &mut Vec<Extent>| -> Option<Op> {
        let pages = 1 + (r >> 40) % 4;
        let mut p = (r >> 8) % (WINDOW - pages);
        // The next free run from a random page, as an IOVA allocator finds one.
        for _ in 0..WINDOW {
            if (p..p + pages).all(|q| !used[q as usize]) {
                (p..p + pages).for_each(|q| used[q as usize] = true);
                let gpa = ((r >> 24) % (1 << 18)) * PAGE_SIZE;
                let e = Extent::new(base + p * PAGE_SIZE, gpa, pages * PAGE_SIZE, MapFlags::RW)
                    .expect("extent");
                live.push(e);
                return Some(Op::Map(e));
            }
            p = (p + 1) % (WINDOW - pages);
        }
        None
    };
    let mut warm = Vec::new();
    while live.len() < 16_000 {
        let r = next();
        warm.extend(map(r, &mut used, &mut live));
    }
    let mut ops = Vec::with_capacity(n);
    while ops.len() < n {
        let r = next();
        if r % 2 == 0 || live.is_empty() {
            ops.extend(map(r, &mut used, &mut live));
            continue;
        }
        let i = ((r >> 8) % live.len() as u64) as usize;
        let e = live[i];
        let (iova, len) = match (r >> 32) % 10 {
            8 if e.len > PAGE_SIZE => {
                live[i] = e.sub(e.iova + PAGE_SIZE, e.len - PAGE_SIZE);
                (e.iova, PAGE_SIZE)
            }
            9 if e.len > PAGE_SIZE => {
                live[i] = e.sub(e.iova, e.len - PAGE_SIZE);
                (e.last() + 1 - PAGE_SIZE, PAGE_SIZE)
            }
            _ => {
                live.swap_remove(i);
                (e.iova, e.len)
            }
        };
        let first = (iova - base) / PAGE_SIZE;
        (first..first + len / PAGE_SIZE).for_each(|q| used[q as usize] = false);
        ops.push(Op::Unmap(iova, len));
    }
    (warm, ops)
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

/// A trace, and what fills the maps before it.
struct Scenario {
    name: &'static str,
    warm: Vec<Op>,
    ops: Vec<Op>,
}

impl Scenario {
    fn engine(&self) -> IovaMap<()> {
        let mut m = IovaMap::new();
        run_engine(&mut m, &self.warm);
        m
    }

    fn baseline(&self) -> Baseline {
        let mut m = Baseline::default();
        run_baseline(&mut m, &self.warm);
        m
    }
}

fn scenarios(n: usize) -> Vec<Scenario> {
    // Random: fill with the maps of a random trace.
    let warm = trace(n, 0x9e37_79b9_7f4a_7c15)
        .into_iter()
        .filter(|o| matches!(o, Op::Map(_)))
        .collect();
    let (guest_warm, guest_ops) = guest_trace(n, 0x2545_f491_4f6c_dd1d);
    vec![
        Scenario {
            name: "random",
            warm,
            ops: trace(n, 0x2545_f491_4f6c_dd1d),
        },
        Scenario {
            name: "guest",
            warm: guest_warm,
            ops: guest_ops,
        },
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench");
    let n = if benchmarking { OPS } else { 4096 };
    let scenarios = scenarios(n);
    for s in &scenarios {
        let (mut a, mut b) = (s.engine(), s.baseline());
        assert_eq!(
            run_engine(&mut a, &s.ops),
            run_baseline(&mut b, &s.ops),
            "same answers"
        );
        assert_eq!(
            a.extents(),
            b.0.values().copied().collect::<Vec<_>>(),
            "same extents"
        );
    }
    if !benchmarking {
        println!("note: shadow_map times its traces with --bench (cargo bench)");
        return;
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut lines = Vec::new();
    for s in &scenarios {
        let base = s.baseline();
        let mut g = c.benchmark_group(s.name);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function("iova_map", |b| {
            b.iter_batched_ref(
                || s.engine(),
                |m| run_engine(m, &s.ops),
                criterion::BatchSize::LargeInput,
            )
        });
        g.bench_function("btreemap", |b| {
            b.iter_batched_ref(
                || base.clone(),
                |m| run_baseline(m, &s.ops),
                criterion::BatchSize::LargeInput,
            )
        });
        g.finish();
        let mut ratios = Vec::new();
        let (mut ta, mut tb) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            let mut a = s.engine();
            let t = Instant::now();
            black_box(run_engine(&mut a, &s.ops));
            let x = t.elapsed().as_secs_f64();
            let mut b = base.clone();
            let t = Instant::now();
            black_box(run_baseline(&mut b, &s.ops));
            let y = t.elapsed().as_secs_f64();
            ta += x;
            tb += y;
            ratios.push(y / x);
        }
        ratios.sort_by(|a, b| a.total_cmp(b));
        lines.push(format!(
            "ratio btreemap/iova_map, {}: {:.1}  (iova_map {:.1} M ops/s, btreemap {:.1} M ops/s; {} extents at the start)",
            s.name,
            ratios[ROUNDS / 2],
            (n * ROUNDS) as f64 / ta / 1e6,
            (n * ROUNDS) as f64 / tb / 1e6,
            s.engine().len()
        ));
    }
    c.final_summary();
    println!();
    lines.iter().for_each(|l| println!("{l}"));
}
