//! Batched invalidation against one call per entry, on the kernel's mock IOMMU.
//!
//! A guest that changes its stage-1 tables sends its vIOMMU a queue of
//! invalidation descriptors. [`NestedHwpt::invalidate`] and [`Viommu::invalidate`]
//! send any number of them in one `IOMMU_HWPT_INVALIDATE`; the baseline is what
//! the existing Rust and C VMM code does, one call per entry. Both paths send the
//! same entries to the same object in the same run:
//!
//! - `hwpt/batched/N`, `hwpt/single/N`: N mock IOTLB invalidations of a nested HWPT;
//! - `viommu/batched/N`, `viommu/single/N`: N mock device-cache invalidations
//!   through a vIOMMU (Linux 6.13; skipped with a note before).
//!
//! for N = 1, 16 and 256. After criterion, both paths are timed again in
//! alternating rounds and the bench prints `ratio single/batched at N: X.XX`
//! (median of the per-round ratios).
//!
//! It needs `/dev/iommu` with `CONFIG_IOMMUFD_TEST`: run it in the guest lab with
//! `cargo xtask bench`. Without `/dev/iommu` it only prints a note in test mode.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};

use iommufd::selftest::{IOTLB_DEFAULT, MockDevice, MockDeviceFlags};
use iommufd::{
    Hwpt, HwptFlags, Ioas, Iommufd, NestedHwpt, SelftestHwptInvalidation,
    SelftestViommuInvalidation, Stage1, Vdevice, Viommu, ViommuType,
};

const COUNTS: [usize; 3] = [1, 16, 256];
const ROUNDS: usize = 21;

/// The mean time of one `f()` over a short burst.
fn time(mut f: impl FnMut()) -> f64 {
    const REPS: u32 = 20;
    let start = Instant::now();
    for _ in 0..REPS {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(REPS)
}

/// Median over alternating rounds of single / batched.
fn ratio(mut single: impl FnMut(), mut batched: impl FnMut()) -> (f64, f64, f64) {
    let mut r = Vec::with_capacity(ROUNDS);
    let (mut s_sum, mut b_sum) = (0.0, 0.0);
    for _ in 0..ROUNDS {
        let b = time(&mut batched);
        let s = time(&mut single);
        s_sum += s;
        b_sum += b;
        r.push(s / b);
    }
    r.sort_by(|a, b| a.total_cmp(b));
    (r[ROUNDS / 2], s_sum / ROUNDS as f64, b_sum / ROUNDS as f64)
}

fn bench_pair<E: Copy>(
    c: &mut Criterion,
    group: &str,
    entries: &[E],
    send: &dyn Fn(&[E]),
    ratios: &mut Vec<String>,
    benchmarking: bool,
) {
    let mut g = c.benchmark_group(group);
    for n in COUNTS {
        let batch = &entries[..n];
        g.bench_with_input(BenchmarkId::new("batched", n), &n, |b, _| {
            b.iter(|| send(black_box(batch)))
        });
        g.bench_with_input(BenchmarkId::new("single", n), &n, |b, _| {
            b.iter(|| {
                for e in batch {
                    send(std::slice::from_ref(black_box(e)));
                }
            })
        });
        if benchmarking {
            let (r, s, b) = ratio(
                || {
                    for e in batch {
                        send(std::slice::from_ref(e));
                    }
                },
                || send(batch),
            );
            ratios.push(format!(
                "ratio single/batched at {n} ({group}): {r:.2}  (single {:.1} us, batched {:.1} us)",
                s / 1e3,
                b / 1e3
            ));
        }
    }
    g.finish();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let has = |flag: &str| args.iter().any(|a| a == flag);
    let benchmarking = has("--bench") && !has("--test") && !has("--list");
    if !std::path::Path::new(iommufd::DEFAULT_PATH).exists() {
        assert!(
            !benchmarking,
            "/dev/iommu is missing: run this benchmark in the guest lab with `cargo xtask bench`"
        );
        println!("note: /dev/iommu is missing: the invalidate benchmark is skipped in test mode");
        return;
    }
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .nresamples(10_000)
        .configure_from_args();
    let fd = Iommufd::open().expect("open /dev/iommu");
    let ioas = Ioas::alloc(&fd).expect("IOAS");
    let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("mock device");
    let parent = Hwpt::alloc(&ioas, &mock, HwptFlags::NEST_PARENT).expect("nest parent");
    let s1 = Stage1::Selftest {
        iotlb: IOTLB_DEFAULT,
    };
    let nested = NestedHwpt::alloc(&parent, &mock, s1, HwptFlags::empty(), None).expect("nested");
    let mut ratios = Vec::new();

    let max = COUNTS[COUNTS.len() - 1];
    let hwpt_entries: Vec<_> = (0..max)
        .map(|i| SelftestHwptInvalidation::one(i as u32 % 4).expect("id"))
        .collect();
    let send = |e: &[SelftestHwptInvalidation]| nested.invalidate(e).expect("invalidate");
    bench_pair(
        &mut c,
        "hwpt",
        &hwpt_entries,
        &send,
        &mut ratios,
        benchmarking,
    );

    match Viommu::alloc(&parent, &mock, ViommuType::Selftest { in_data: 0 }) {
        Ok(viommu) => {
            let _vdev = Vdevice::alloc(&viommu, &mock, 0x99).expect("vDEVICE");
            let entries: Vec<_> = (0..max)
                .map(|i| SelftestViommuInvalidation::one(0x99, i as u32 % 4))
                .collect();
            let send = |e: &[SelftestViommuInvalidation]| viommu.invalidate(e).expect("invalidate");
            bench_pair(&mut c, "viommu", &entries, &send, &mut ratios, benchmarking);
        }
        Err(e) if e.is_unsupported() => {
            println!("note: no vIOMMU on this kernel (Linux 6.13): the viommu group is skipped")
        }
        Err(e) => panic!("vIOMMU: {e}"),
    }

    c.final_summary();
    if !ratios.is_empty() {
        println!("\nsingle/batched (median of alternating rounds; time per N entries):");
        ratios.iter().for_each(|r| println!("{r}"));
    }
}
