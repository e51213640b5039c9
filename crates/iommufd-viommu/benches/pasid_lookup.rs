//! PASID lookups in both directions: the table's radix arrays against
//! `std::collections::HashMap`, the obvious baseline, in the same run.
//!
//! Scenarios, each with 2^20 - 1 mapped PASIDs in all:
//!
//! - `one_device`: one device with every PASID of a 20-bit space mapped;
//! - `64_devices`: 64 devices with 20-bit PASIDs, 2^14 - 1 mapped on each.
//!
//! Host PASIDs come from one shared pool, so each device's are spread out.
//!
//! Each iteration looks up 4096 PASIDs chosen at random (the same list for both),
//! guest -> host (`forward`) or host -> guest (`reverse`). The table is read through
//! the per-device handles a VMM keeps ([`DevicePasids`]); the baseline is keyed by
//! (label, PASID), as a VMM without the table would key it. After criterion, the
//! bench times both again in alternating rounds and prints
//! `ratio hashmap/table` per scenario (median of the per-round ratios) and the bytes
//! per mapped PASID of each.
//!
//! Pure user space: runs on the host (`cargo bench -p iommufd-viommu`).

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use iommufd_viommu::{DevicePasids, HostPasidPool, PasidPolicy, PasidTable};

const LOOKUPS: usize = 4096;
const ROUNDS: usize = 21;

struct Scenario {
    name: &'static str,
    devices: Vec<DevicePasids>,
    fwd: HashMap<(u64, u32), (u32, u32)>,
    rev: HashMap<(u64, u32), u32>,
    /// (device index, vPASID, pPASID) to look up.
    keys: Vec<(usize, u32, u32)>,
    table_bytes: usize,
}

fn build(name: &'static str, ndev: u64, width: u32, per: u32) -> Scenario {
    let pool = HostPasidPool::new(1..1 << 20).expect("pool");
    let table = PasidTable::new(PasidPolicy::Allocated {
        pool,
        quota: 1 << 20,
    });
    let mut fwd = HashMap::new();
    let mut rev = HashMap::new();
    let mut devices = Vec::new();
    for label in 0..ndev {
        devices.push(table.add_label(label, width).expect("device"));
    }
    // One shared pool: the devices' host PASIDs interleave over the space.
    for v in 1..=per {
        for label in 0..ndev {
            let p = table.insert(label, v, 7).expect("insert");
            fwd.insert((label, v), (p, 7));
            rev.insert((label, p), v);
        }
    }
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let keys = (0..LOOKUPS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let d = (x % ndev) as usize;
            let v = 1 + ((x >> 20) % u64::from(per)) as u32;
            let p = devices[d].host_pasid(v).expect("mapped");
            (d, v, p)
        })
        .collect();
    let table_bytes = table.bytes();
    Scenario {
        name,
        devices,
        fwd,
        rev,
        keys,
        table_bytes,
    }
}

fn table_fwd(s: &Scenario) -> u64 {
    s.keys
        .iter()
        .map(|&(d, v, _)| u64::from(s.devices[d].host_pasid(black_box(v)).unwrap_or(0)))
        .sum()
}

fn table_rev(s: &Scenario) -> u64 {
    s.keys
        .iter()
        .map(|&(d, _, p)| u64::from(s.devices[d].guest_pasid(black_box(p)).unwrap_or(0)))
        .sum()
}

fn map_fwd(s: &Scenario) -> u64 {
    s.keys
        .iter()
        .map(|&(d, v, _)| u64::from(s.fwd.get(&(d as u64, black_box(v))).map_or(0, |e| e.0)))
        .sum()
}

fn map_rev(s: &Scenario) -> u64 {
    s.keys
        .iter()
        .map(|&(d, _, p)| u64::from(s.rev.get(&(d as u64, black_box(p))).copied().unwrap_or(0)))
        .sum()
}

fn mean_ns(f: &dyn Fn() -> u64) -> f64 {
    const REPS: u32 = 20;
    let start = Instant::now();
    for _ in 0..REPS {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / f64::from(REPS)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let benchmarking = args.iter().any(|a| a == "--bench");
    if !benchmarking {
        // Test mode (cargo test --all-targets): check the scenario on a small scale.
        let s = build("smoke", 4, 8, 60);
        assert_eq!(table_fwd(&s), map_fwd(&s));
        assert_eq!(table_rev(&s), map_rev(&s));
        println!("note: pasid_lookup runs its lookups with --bench (cargo bench)");
        return;
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let scenarios = [
        build("one_device", 1, 20, (1 << 20) - 1),
        build("64_devices", 64, 20, (1 << 14) - 1),
    ];
    let mut lines = Vec::new();
    for s in &scenarios {
        assert_eq!(table_fwd(s), map_fwd(s), "same answers");
        assert_eq!(table_rev(s), map_rev(s), "same answers");
        let mut g = c.benchmark_group(s.name);
        g.bench_function("forward/table", |b| b.iter(|| table_fwd(s)));
        g.bench_function("forward/hashmap", |b| b.iter(|| map_fwd(s)));
        g.bench_function("reverse/table", |b| b.iter(|| table_rev(s)));
        g.bench_function("reverse/hashmap", |b| b.iter(|| map_rev(s)));
        g.finish();
        for (dir, t, m) in [
            (
                "forward",
                &table_fwd as &dyn Fn(&Scenario) -> u64,
                &map_fwd as &dyn Fn(&Scenario) -> u64,
            ),
            ("reverse", &table_rev, &map_rev),
        ] {
            let mut r = Vec::new();
            let (mut ts, mut ms) = (0.0, 0.0);
            for _ in 0..ROUNDS {
                let a = mean_ns(&|| t(s));
                let b = mean_ns(&|| m(s));
                ts += a;
                ms += b;
                r.push(b / a);
            }
            r.sort_by(|a, b| a.total_cmp(b));
            lines.push(format!(
                "ratio hashmap/table, {} {dir}: {:.1}  (table {:.1} ns, hashmap {:.1} ns per lookup)",
                s.name,
                r[ROUNDS / 2],
                ts / ROUNDS as f64 / LOOKUPS as f64,
                ms / ROUNDS as f64 / LOOKUPS as f64
            ));
        }
        let entries = s.fwd.len() as f64;
        let slot = size_of::<((u64, u32), (u32, u32))>() + size_of::<((u64, u32), u32)>() + 2;
        let map_bytes = (s.fwd.capacity() + s.rev.capacity()) as f64 / 2.0 * slot as f64;
        lines.push(format!(
            "bytes per PASID, {}: table {:.2}, hashmap {:.2} (both directions)",
            s.name,
            s.table_bytes as f64 / entries,
            map_bytes / entries
        ));
    }
    c.final_summary();
    println!();
    lines.iter().for_each(|l| println!("{l}"));
}
