//! Merging a harvested dirty bitmap (what `IOMMU_HWPT_GET_DIRTY_BITMAP` returns)
//! into a guest region's dirty bitmap, against a plain `memcpy` of the same size
//! (the baseline: no merge can be cheaper than copying the bits), in the same run.
//!
//! The region is 4 GiB: 2^20 pages, 128 KiB of bitmap. Three harvests: `dense`
//! (every page written), `half` (random, half the pages) and `sparse` (one word
//! in 64 has a dirty page). Merged into [`DirtyLog`] (word-wise) and, for
//! reference, into vm-memory's `AtomicBitmap` (one atomic update per run of
//! dirty pages).
//!
//! After criterion, the bench times merge and memcpy again in alternating rounds
//! and prints `merge/memcpy bandwidth` per harvest (median of the per-round
//! ratios; 1.0 is memcpy's speed).
//!
//! Pure user space: runs on the host (`cargo bench -p iommufd-viommu --bench dirty_merge`).

use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use iommufd::vm_memory::bitmap::AtomicBitmap;
use iommufd_viommu::{DirtyLog, DirtySink};

const PAGES: u64 = 1 << 20;
const WORDS: usize = (PAGES / 64) as usize;
const ROUNDS: usize = 31;

fn harvest(kind: &str) -> Vec<u64> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..WORDS)
        .map(|i| match kind {
            "dense" => u64::MAX,
            "half" => next(),
            _ => {
                if i % 64 == 0 {
                    1 << (next() % 64)
                } else {
                    0
                }
            }
        })
        .collect()
}

fn merge(log: &DirtyLog, src: &[u64]) {
    log.merge_dirty(0, black_box(src), 0, PAGES);
}

fn copy(dst: &mut [u64], src: &[u64]) {
    dst.copy_from_slice(black_box(src));
    black_box(&dst[0]);
}

fn secs(f: &mut dyn FnMut()) -> f64 {
    const REPS: u32 = 20;
    let t = Instant::now();
    for _ in 0..REPS {
        f();
    }
    t.elapsed().as_secs_f64() / f64::from(REPS)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench");
    {
        // The merge is right: the log holds exactly the harvest.
        let src = harvest("half");
        let log = DirtyLog::new((PAGES * 4096) as usize);
        merge(&log, &src);
        assert_eq!(log.get_and_reset(), src);
    }
    if !benchmarking {
        println!("note: dirty_merge times its merges with --bench (cargo bench)");
        return;
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let log = DirtyLog::new((PAGES * 4096) as usize);
    let atomic = AtomicBitmap::new(
        (PAGES * 4096) as usize,
        NonZeroUsize::new(4096).expect("4096"),
    );
    let mut dst = vec![0u64; WORDS];
    let mut lines = Vec::new();
    for kind in ["dense", "half", "sparse"] {
        let src = harvest(kind);
        let mut g = c.benchmark_group(kind);
        g.throughput(Throughput::Bytes((WORDS * 8) as u64));
        g.bench_function("dirty_log", |b| b.iter(|| merge(&log, &src)));
        g.bench_function("memcpy", |b| b.iter(|| copy(&mut dst, &src)));
        g.bench_function("atomic_bitmap", |b| {
            b.iter(|| atomic.merge_dirty(0, black_box(&src), 0, PAGES))
        });
        g.finish();
        let mut r = Vec::new();
        let (mut tm, mut tc) = (0.0, 0.0);
        for _ in 0..ROUNDS {
            let a = secs(&mut || merge(&log, &src));
            let b = secs(&mut || copy(&mut dst, &src));
            tm += a;
            tc += b;
            r.push(b / a);
        }
        r.sort_by(|a, b| a.total_cmp(b));
        let gbs = |t: f64| (WORDS * 8) as f64 / (t / ROUNDS as f64) / 1e9;
        lines.push(format!(
            "merge/memcpy bandwidth, {kind}: {:.2}  (dirty_log {:.1} GB/s, memcpy {:.1} GB/s)",
            r[ROUNDS / 2],
            gbs(tm),
            gbs(tc)
        ));
    }
    c.final_summary();
    println!();
    lines.iter().for_each(|l| println!("{l}"));
}
