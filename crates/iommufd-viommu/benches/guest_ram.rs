//! Mapping a 16-region guest at IOVA = GPA: [`GuestRamSync`] (one ioctl per
//! contiguous range) against the naive way, one `IOMMU_IOAS_MAP` per region
//! ([`Ioas::map_guest_memory`], what a VMM does region by region), in the same run.
//!
//! The guest: one 16 MiB memfd in 16 regions of 1 MiB, 8 at 32 MiB and 8 at 64 MiB
//! (two GPA-contiguous ranges, each consecutive in the file). Each iteration maps
//! all of it into a fresh IOAS and unmaps it again; nothing is attached, so the
//! kernel only records the ranges and the difference is the ioctls themselves.
//!
//! Before criterion, the bench prints the number of map ioctls each way
//! (`ioctls to map 16 regions: ...`); after it, the time ratio (median of
//! alternating rounds). Linux before 6.13 cannot map by file, so there each region
//! is its own range.
//!
//! It needs `/dev/iommu`: run it in the guest lab with `cargo xtask bench`.

use std::fs::File;
use std::hint::black_box;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::Criterion;
use iommufd::vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};
use iommufd::{Ioas, Iommufd, MapFlags};
use iommufd_viommu::GuestRamSync;

const MB: u64 = 1 << 20;
const ROUNDS: usize = 11;

fn guest() -> GuestMemoryMmap {
    // SAFETY: memfd_create with a NUL-terminated name returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create");
    // SAFETY: a new fd nothing else owns.
    let file = Arc::new(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    file.set_len(16 * MB).expect("ftruncate");
    let ranges: Vec<_> = (0..16u64)
        .map(|i| {
            let gpa = if i < 8 {
                32 * MB + i * MB
            } else {
                64 * MB + (i - 8) * MB
            };
            (
                GuestAddress(gpa),
                MB as usize,
                Some(FileOffset::from_arc(file.clone(), i * MB)),
            )
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(ranges).expect("guest RAM")
}

/// Maps the guest with `GuestRamSync` and unmaps it; the number of map ioctls.
fn synced(fd: &Iommufd, ram: &GuestMemoryMmap) -> usize {
    let mut sync = GuestRamSync::new(Ioas::alloc(fd).expect("IOAS"), MapFlags::RW);
    sync.sync(ram).expect("sync").mapped
}

/// Maps the guest a region at a time and unmaps it; the number of map ioctls.
fn naive(fd: &Iommufd, ram: &GuestMemoryMmap) -> usize {
    let ioas = Ioas::alloc(fd).expect("IOAS");
    ioas.map_guest_memory(ram, MapFlags::RW)
        .expect("map")
        .areas()
        .count()
}

fn secs(f: &mut dyn FnMut()) -> f64 {
    const REPS: u32 = 10;
    let t = Instant::now();
    for _ in 0..REPS {
        f();
    }
    t.elapsed().as_secs_f64() / f64::from(REPS)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        println!("note: guest_ram needs /dev/iommu: run it with cargo xtask bench");
        return;
    }
    let fd = Iommufd::open().expect("/dev/iommu (run in the guest lab: cargo xtask bench)");
    let ram = guest();
    println!(
        "ioctls to map 16 regions in 2 contiguous ranges: guest_ram_sync {}, per region {}",
        synced(&fd, &ram),
        naive(&fd, &ram)
    );
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let mut g = c.benchmark_group("16_regions");
    g.bench_function("guest_ram_sync", |b| {
        b.iter(|| black_box(synced(&fd, &ram)))
    });
    g.bench_function("per_region", |b| b.iter(|| black_box(naive(&fd, &ram))));
    g.finish();
    let mut r = Vec::new();
    for _ in 0..ROUNDS {
        let a = secs(&mut || {
            black_box(synced(&fd, &ram));
        });
        let b = secs(&mut || {
            black_box(naive(&fd, &ram));
        });
        r.push(b / a);
    }
    r.sort_by(|a, b| a.total_cmp(b));
    c.final_summary();
    println!();
    println!(
        "ratio per_region/guest_ram_sync, 16 regions: {:.2}",
        r[ROUNDS / 2]
    );
}
