//! IOAS behaviour against a real kernel, ported from the kernel's selftests
//! (tools/testing/selftests/iommu/iommufd.c, fixture `iommufd_ioas`, variant
//! `no_domain`): these need no device and no mock IOMMU.
//!
//! Ignored on the host; the guest lab runs them with `--ignored`.

mod common;

use common::{assert_errno, memfd, open, page};
use iommufd::{Command, Error, HugePages, Ioas, Iova, IovaRange, MapFlags};
use iommufd_lab::mem::{RegionBytes, buffer};

/// Where the tests put fixed mappings (the mock aperture start, valid everywhere).
const BASE: u64 = 1 << 24;

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn alloc_and_destroy() {
    let fd = open();
    let a = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let b = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    assert_ne!(a.id(), b.id());
    let id = a.id();
    a.destroy().expect("DESTROY");
    // The id is gone: a second DESTROY fails with ENOENT.
    let e = assert_errno(fd.destroy_raw(id.raw()), libc::ENOENT);
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    // Dropping destroys too.
    let id = b.id();
    drop(b);
    assert_errno(fd.destroy_raw(id.raw()), libc::ENOENT);
    // Object id 0 never exists.
    assert_errno(fd.destroy_raw(0), libc::ENOENT);
    // Only the last handle destroys: while a clone lives, `destroy` gives the IOAS
    // back (without asking the kernel) and dropping one handle leaves it alive.
    let c = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let shared = c.clone();
    let id = c.id();
    let refused = c.destroy().expect_err("a clone holds it");
    assert!(
        matches!(refused.error, Error::InUse { others: 1, .. }),
        "{}",
        refused.error
    );
    assert_eq!(refused.object.id(), id);
    drop(refused.object);
    shared.iova_ranges().expect("still alive while a handle is");
    shared.destroy().expect("DESTROY through the last handle");
    assert_errno(fd.destroy_raw(id.raw()), libc::ENOENT);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn into_id_keeps_the_object() {
    let fd = open();
    let id = Ioas::alloc(&fd).expect("IOAS_ALLOC").into_id();
    fd.destroy_raw(id.raw()).expect("the IOAS must still exist");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn destroy_with_mappings_succeeds() {
    // Mappings do not pin an IOAS in the kernel (ioas_area_destroy).
    let fd = open();
    let buf = buffer(page() as usize);
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    // SAFETY: `buf` outlives the IOAS, which is destroyed below.
    unsafe { ioas.map_user(buf.as_ptr(), page(), Some(Iova(BASE)), MapFlags::RW) }.expect("MAP");
    // A `Mapping` handle holds its IOAS, so the crate refuses to destroy it while one
    // lives; once it is gone, only the kernel's mapping made with `map_user` is left.
    let m = ioas
        .map(buffer(page() as usize), None, MapFlags::RW)
        .expect("MAP owned");
    let refused = ioas.destroy().expect_err("a mapping holds the IOAS");
    assert!(
        matches!(refused.error, Error::InUse { .. }),
        "{}",
        refused.error
    );
    drop(m);
    refused.object.destroy().expect("DESTROY with a mapping");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn map_fixed_and_kernel_chosen() {
    let fd = open();
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let p = page();
    let fixed = ioas
        .map(buffer(p as usize), Some(Iova(BASE)), MapFlags::RW)
        .expect("MAP fixed");
    assert_eq!(fixed.iova(), Iova(BASE));
    // Kernel-chosen IOVAs keep the alignment of the length's lowest set bit, as far
    // as the VA is aligned and up to the THP size (area_auto_iova; iopt_alloc_iova).
    let max_align = if std::path::Path::new("/sys/kernel/mm/transparent_hugepage").exists() {
        2 << 20
    } else {
        p
    };
    let mut maps = Vec::new();
    for i in 1..=10u64 {
        let len = p * i;
        let m = ioas
            .map(buffer(len as usize), None, MapFlags::RW)
            .expect("MAP auto");
        let va_align = 1u64 << (m.memory().as_ptr() as u64).trailing_zeros();
        let align = (1u64 << len.trailing_zeros()).min(va_align).min(max_align);
        assert!(
            m.iova().is_aligned(align),
            "{} not aligned to {align:#x}",
            m.iova()
        );
        let r = IovaRange::from_len(m.iova(), len).expect("range");
        for (other, _) in &maps {
            assert!(!r.overlaps(other), "{r} overlaps {other}");
        }
        maps.push((r, m));
    }
    drop(maps);
    // Read-only and write-only are both fine; neither is refused.
    let ro = ioas
        .map(buffer(p as usize), None, MapFlags::READ)
        .expect("MAP read-only");
    let wo = ioas
        .map(buffer(p as usize), None, MapFlags::WRITE)
        .expect("MAP write-only");
    assert_ne!(ro.iova(), wo.iova());
    // No permission at all: the kernel refuses, and the memory comes back.
    let none = ioas
        .map(buffer(p as usize), None, MapFlags::empty())
        .expect_err("MAP without permissions");
    assert_eq!(none.error.errno(), Some(libc::EINVAL), "{}", none.error);
    assert_eq!(none.object.size(), p as usize);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn map_over_an_existing_mapping_is_eexist() {
    let fd = open();
    let buf = buffer(3 * page() as usize);
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let p = page();
    let at = BASE + 16 * p;
    // SAFETY: `buf` outlives the IOAS (declared before it).
    let map = |iova: u64, len: u64| unsafe {
        ioas.map_user(buf.as_ptr(), len, Some(Iova(iova)), MapFlags::RW)
    };
    map(at, 2 * p).expect("MAP");
    for (iova, len) in [
        (at, 2 * p),
        (at, p),
        (at + p, p),
        (at - p, 2 * p),
        (at - p, 3 * p),
    ] {
        assert_errno(map(iova, len), libc::EEXIST);
    }
    // Next to it is free.
    map(at + 2 * p, p).expect("MAP adjacent");
    map(at - p, p).expect("MAP adjacent");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn unmap_exact_and_all() {
    let fd = open();
    let buf = buffer(page() as usize);
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let p = page();
    // Nothing mapped: ENOENT.
    for i in 0..10 {
        let e = ioas.unmap(Iova(i * p), p).unwrap_err();
        assert!(matches!(e, Error::UnmapSplit { .. }), "{e}");
    }
    for i in 0..10 {
        // SAFETY: `buf` outlives the IOAS.
        unsafe { ioas.map_user(buf.as_ptr(), p, Some(Iova(BASE + i * p)), MapFlags::RW) }
            .expect("MAP");
    }
    for i in 0..10 {
        assert_eq!(ioas.unmap(Iova(BASE + i * p), p).expect("UNMAP"), p);
    }
    for i in 0..4 {
        // SAFETY: as above.
        unsafe { ioas.map_user(buf.as_ptr(), p, Some(Iova(BASE + i * p)), MapFlags::RW) }
            .expect("MAP");
    }
    assert_eq!(ioas.unmap_all().expect("UNMAP all"), 4 * p);
    // Unmapping everything of an empty IOAS succeeds.
    assert_eq!(ioas.unmap_all().expect("UNMAP all of nothing"), 0);
    // 0..=u64::MAX through `unmap` is the same request.
    assert_eq!(ioas.unmap(Iova(0), u64::MAX).expect("UNMAP all"), 0);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn unmap_cannot_split_a_mapping() {
    let fd = open();
    let buf = buffer(2 * page() as usize);
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let p = page();
    let at = Iova(BASE + 16 * p);
    // SAFETY: `buf` outlives the IOAS.
    unsafe { ioas.map_user(buf.as_ptr(), 2 * p, Some(at), MapFlags::RW) }.expect("MAP");
    for (iova, len) in [(at, p), (at.checked_add(p).expect("iova"), p)] {
        match ioas.unmap(iova, len) {
            Err(Error::UnmapSplit {
                ioas: id,
                iova: i,
                length,
            }) => {
                assert_eq!((id, i, length), (ioas.id(), iova, len));
            }
            other => panic!("half of a mapping: expected UnmapSplit, got {other:?}"),
        }
    }
    assert_eq!(ioas.unmap(at, 2 * p).expect("UNMAP whole"), 2 * p);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn unmap_fully_contained_areas() {
    let fd = open();
    let p = page();
    let buf = buffer(8 * p as usize);
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let base = BASE + 4 * p;
    for i in 0..4 {
        // SAFETY: `buf` outlives the IOAS.
        unsafe {
            ioas.map_user(
                buf.as_ptr(),
                8 * p,
                Some(Iova(base + i * 16 * p)),
                MapFlags::RW,
            )
        }
        .expect("MAP");
    }
    // Ranges that cut the first or the last mapping fail.
    let e = ioas.unmap(Iova(base - 4 * p), 8 * p).unwrap_err();
    assert!(matches!(e, Error::UnmapSplit { .. }), "{e}");
    let e = ioas
        .unmap(Iova(base + 3 * 16 * p + 4 * p), 8 * p)
        .unwrap_err();
    assert!(matches!(e, Error::UnmapSplit { .. }), "{e}");
    // A range covering all four completely, with holes, unmaps them all.
    let n = ioas
        .unmap(Iova(base - 4 * p), 3 * 16 * p + 8 * p + 4 * p)
        .expect("UNMAP");
    assert_eq!(n, 32 * p);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn copy_within_and_between_ioases() {
    let fd = open();
    let p = page();
    let buf = buffer(2 * p as usize);
    let src = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let dst = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    // SAFETY: `buf` outlives both IOASes, so copies of its mapping stay valid.
    unsafe {
        src.map_user(buf.as_ptr(), 2 * p, Some(Iova(BASE)), MapFlags::RW)
            .expect("MAP");
        // Inside one IOAS, to a fixed IOVA.
        let at = src
            .copy_from(
                &src,
                Iova(BASE),
                2 * p,
                Some(Iova(BASE + 4 * p)),
                MapFlags::RW,
            )
            .expect("COPY inside");
        assert_eq!(at, Iova(BASE + 4 * p));
        // To another IOAS, at a kernel-chosen IOVA.
        let at = dst
            .copy_from(&src, Iova(BASE), 2 * p, None, MapFlags::READ)
            .expect("COPY between");
        assert_eq!(dst.unmap(at, 2 * p).expect("UNMAP copy"), 2 * p);
        // Part of a mapping may be copied (copy_sweep)...
        let part = dst
            .copy_from(&src, Iova(BASE + p), p, None, MapFlags::RW)
            .expect("COPY of part of a mapping");
        assert_eq!(dst.unmap(part, p).expect("UNMAP part"), p);
        // ...but every byte of the source range must be mapped.
        let e = dst.copy_from(&src, Iova(BASE + p), 2 * p, None, MapFlags::RW);
        assert_errno(e, libc::ENOENT);
        let e = dst.copy_from(&src, Iova(BASE + 64 * p), p, None, MapFlags::RW);
        assert_errno(e, libc::ENOENT);
    }
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn iova_ranges_of_an_ioas_without_devices() {
    let fd = open();
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let r = ioas.iova_ranges().expect("IOVA_RANGES");
    assert_eq!(r.ranges, [IovaRange::FULL]);
    assert_eq!(r.alignment, 1);
    assert!(r.can_map(Iova(BASE), page()));
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn allow_iovas_steers_kernel_chosen_iovas() {
    let fd = open();
    let p = page();
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let allowed = IovaRange::new(Iova(200 * p), Iova(600 * p - 1)).expect("range");
    ioas.allow_iovas(&[allowed]).expect("ALLOW_IOVAS");
    let mut maps = Vec::new();
    for i in 1..=10u64 {
        let len = i * p;
        let m = ioas
            .map(buffer(len as usize), None, MapFlags::RW)
            .expect("MAP auto");
        let r = IovaRange::from_len(m.iova(), len).expect("range");
        assert!(allowed.contains_range(&r), "{r} outside {allowed}");
        maps.push(m);
    }
    drop(maps);
    // Allowed ranges must be more than one byte.
    let one = IovaRange::new(Iova(p), Iova(p)).expect("range");
    assert_errno(ioas.allow_iovas(&[one]), libc::EINVAL);
    // Overlapping allowed ranges are refused.
    let a = IovaRange::new(Iova(0), Iova(2 * p)).expect("range");
    let b = IovaRange::new(Iova(p), Iova(3 * p)).expect("range");
    assert_errno(ioas.allow_iovas(&[a, b]), libc::EINVAL);
    // An empty list lifts the restriction.
    ioas.allow_iovas(&[]).expect("ALLOW_IOVAS empty");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn huge_pages_option() {
    let fd = open();
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    assert_eq!(
        ioas.huge_pages().expect("GET"),
        HugePages::Allowed,
        "huge pages are on by default"
    );
    ioas.set_huge_pages(HugePages::Split).expect("SET 0");
    assert_eq!(ioas.huge_pages().expect("GET"), HugePages::Split);
    ioas.set_huge_pages(HugePages::Allowed).expect("SET 1");
    assert_eq!(ioas.huge_pages().expect("GET"), HugePages::Allowed);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn huge_pages_off_requires_page_alignment() {
    // ioas_align_change, without a domain.
    let fd = open();
    let p = page();
    let buf = buffer(2 * p as usize);
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    // SAFETY: `buf` outlives the IOAS.
    let map = |va_off: u64, iova: u64| unsafe {
        ioas.map_user(
            buf.as_ptr().add(va_off as usize),
            p,
            Some(Iova(iova)),
            MapFlags::RW,
        )
    };
    map(0, BASE).expect("MAP aligned");
    ioas.set_huge_pages(HugePages::Split)
        .expect("PAGE_SIZE alignment with aligned mappings");
    // Now a mapping whose VA is not page aligned is refused.
    assert_errno(map(p / 2, BASE + p), libc::EINVAL);
    ioas.set_huge_pages(HugePages::Allowed)
        .expect("back to any alignment");
    map(p / 2, BASE + p).expect("MAP misaligned VA");
    // ... and the misaligned mapping prevents turning huge pages off.
    assert_errno(ioas.set_huge_pages(HugePages::Split), libc::EADDRINUSE);
    ioas.unmap(Iova(BASE + p), p).expect("UNMAP");
    ioas.unmap(Iova(BASE), p).expect("UNMAP");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn map_file_of_a_memfd() {
    let fd = open();
    let p = page();
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let file = memfd(4 * p);
    if !fd.probe().supports(Command::IoasMapFile) {
        // Before 6.13: the typed "unsupported" error, not a generic failure.
        let e = ioas.map_file(&file, 0, p, None, MapFlags::RW).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        return;
    }
    let auto = ioas
        .map_file(&file, 0, 2 * p, None, MapFlags::RW)
        .expect("MAP_FILE auto");
    let fixed = ioas
        .map_file(&file, 2 * p, 2 * p, Some(Iova(BASE)), MapFlags::READ)
        .expect("MAP_FILE fixed");
    assert_eq!(fixed, Iova(BASE));
    assert_ne!(auto, fixed);
    // Only file mappings: the pin accounting can move to this process.
    fd.change_process()
        .expect("CHANGE_PROCESS with only file mappings");
    assert_eq!(ioas.unmap(auto, 2 * p).expect("UNMAP"), 2 * p);
    // Closing the memfd does not affect the mapping: the kernel holds the file.
    drop(file);
    assert_eq!(ioas.unmap(fixed, 2 * p).expect("UNMAP after close"), 2 * p);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn change_process_refuses_user_mappings() {
    let fd = open();
    if !fd.probe().supports(Command::IoasChangeProcess) {
        assert!(fd.change_process().unwrap_err().is_unsupported());
        return;
    }
    fd.change_process()
        .expect("CHANGE_PROCESS with no mappings");
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let _m = ioas
        .map(buffer(page() as usize), None, MapFlags::RW)
        .expect("MAP");
    assert_errno(fd.change_process(), libc::EINVAL);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn mapping_unmap_returns_the_memory() {
    let fd = open();
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let m = ioas
        .map(buffer(page() as usize), Some(Iova(BASE)), MapFlags::RW)
        .expect("MAP");
    assert!(m.is_mapped());
    m.memory().write_at(0, b"dma");
    let region = m.unmap().expect("UNMAP");
    assert_eq!(region.read_at(0, 3), b"dma");
    // The IOVA is free again.
    let again = ioas
        .map(region, Some(Iova(BASE)), MapFlags::RW)
        .expect("MAP again at the same IOVA");
    // A mapping already removed by unmap_all drops quietly.
    assert_eq!(ioas.unmap_all().expect("UNMAP all"), page());
    assert!(!again.is_mapped());
    drop(again);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn ioas_iova_alloc_takes_any_length() {
    // iommufd_ioas.ioas_iova_alloc, variant no_domain: without a domain every length,
    // page-sized or not, gets a kernel-chosen IOVA and unmaps again.
    let fd = open();
    let p = page();
    let buf = buffer(2 * p as usize);
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    for len in 1..2 * p {
        // SAFETY: `buf` outlives the IOAS; the range is unmapped right away.
        let iova = unsafe { ioas.map_user(buf.as_ptr(), len, None, MapFlags::RW) }
            .unwrap_or_else(|e| panic!("MAP of {len} bytes: {e}"));
        assert_eq!(ioas.unmap(iova, len).expect("UNMAP"), len);
    }
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn copy_sweep_over_a_mapping() {
    // iommufd_ioas.copy_sweep, variant no_domain: copies of a 2 KiB window slid in
    // 511-byte steps across an odd-length mapping succeed exactly when the window
    // lies inside it, and fail with ENOENT otherwise.
    const WINDOW: u64 = 2048; // MOCK_PAGE_SIZE in the kernel's test
    let fd = open();
    let p = page();
    let buffer_size = 16 * p;
    let buf = buffer(buffer_size as usize);
    let src = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let dst = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let last = BASE + buffer_size - 2;
    // SAFETY: `buf` outlives both IOASes (declared before them), so the copies of
    // its mapping stay valid until the IOASes are destroyed.
    unsafe {
        src.map_user(
            buf.as_ptr(),
            last - BASE + 1,
            Some(Iova(BASE)),
            MapFlags::RW,
        )
        .expect("MAP");
        let (mut copied, mut refused) = (0, 0);
        let mut iova = BASE - p;
        while iova <= last {
            let r = dst.copy_from(&src, Iova(iova), WINDOW, Some(Iova(BASE)), MapFlags::WRITE);
            if iova < BASE || iova + WINDOW - 1 > last {
                assert_errno(r, libc::ENOENT);
                refused += 1;
            } else {
                assert_eq!(r.expect("COPY"), Iova(BASE));
                assert_eq!(dst.unmap(Iova(BASE), WINDOW).expect("UNMAP"), WINDOW);
                copied += 1;
            }
            iova += 511;
        }
        assert!(
            copied > 0 && refused > 0,
            "{copied} copied, {refused} refused"
        );
    }
}
