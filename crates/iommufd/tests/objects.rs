//! The file, its options and object lifetimes against a real kernel: probing,
//! `IOMMU_OPTION_RLIMIT_MODE`, two files' isolation, fd passing.
//!
//! Ignored on the host; the guest lab runs them with `--ignored`.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::{assert_errno, kernel_version, open, parse_version};
use iommufd::{
    Command, DeviceId, Error, Hwpt, HwptFlags, Iommufd, Iova, MapFlags, MmapRegion, RlimitMode,
};

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn probe_matches_the_kernel_version() {
    let fd = open();
    let f = fd.probe();
    let running = kernel_version();
    for &cmd in Command::ALL {
        let Some(since) = parse_version(cmd.since()) else {
            continue; // "7.x": no exact release to compare against.
        };
        if cmd == Command::TestCmd {
            continue; // depends on CONFIG_IOMMUFD_TEST, not on the version
        }
        if running >= since {
            assert!(
                f.supports(cmd),
                "{cmd} (since {}) missing on {running:?}",
                cmd.since()
            );
        }
    }
    assert!(f.option_huge_pages);
    if running >= (6, 17) {
        assert!(
            f.hw_info_input_type,
            "IOMMU_HW_INFO_FLAG_INPUT_TYPE since 6.17"
        );
    }
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn rlimit_mode() {
    let fd = open();
    assert_eq!(fd.rlimit_mode().expect("GET"), RlimitMode::User);
    // The lab runs as root (CAP_SYS_RESOURCE).
    fd.set_rlimit_mode(RlimitMode::Process)
        .expect("SET process");
    assert_eq!(fd.rlimit_mode().expect("GET"), RlimitMode::Process);
    fd.set_rlimit_mode(RlimitMode::User).expect("SET user");
    assert_eq!(fd.rlimit_mode().expect("GET"), RlimitMode::User);
    // Only while the file has no objects.
    let _ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
    assert_errno(fd.set_rlimit_mode(RlimitMode::Process), libc::EBUSY);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn two_iommufds_are_isolated() {
    let a = open();
    let b = open();
    let p = common::page();
    let ioas_a = a.alloc_ioas().expect("IOAS_ALLOC a");
    // The id of an object of `a` means nothing in `b`.
    assert_errno(b.destroy_raw(ioas_a.id().raw()), libc::ENOENT);
    let ioas_b = b.alloc_ioas().expect("IOAS_ALLOC b");
    // Each file maps the same IOVA independently.
    let ma = ioas_a
        .map_owned(
            MmapRegion::new(p as usize).expect("mmap"),
            Some(Iova(1 << 24)),
            MapFlags::RW,
        )
        .expect("MAP a");
    let mb = ioas_b
        .map_owned(
            MmapRegion::new(p as usize).expect("mmap"),
            Some(Iova(1 << 24)),
            MapFlags::RW,
        )
        .expect("MAP b");
    assert_eq!(ma.iova(), mb.iova());
    // Using an object of `a` with `b` is refused before the kernel sees it.
    // SAFETY: refused before the kernel; nothing is copied.
    let e = unsafe { ioas_b.copy_from(&ioas_a, Iova(1 << 24), None, p, MapFlags::RW) }.unwrap_err();
    assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    let e = Hwpt::alloc(&b, DeviceId::from_raw(1), &ioas_a, HwptFlags::empty()).unwrap_err();
    assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    // Closing `a` (after its objects) leaves `b` untouched.
    drop(ma);
    drop(ioas_a);
    drop(a);
    assert_eq!(ioas_b.iova_ranges().expect("IOVA_RANGES b").ranges.len(), 1);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn a_passed_fd_works_like_an_opened_one() {
    let fd = open();
    // What a privileged helper would send over SCM_RIGHTS: a duplicate of the fd.
    let dup: OwnedFd = fd.as_fd().try_clone_to_owned().expect("dup");
    let passed = Iommufd::from_owned_fd(dup);
    // Same file, same objects.
    let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
    let id = ioas.into_id();
    passed
        .destroy_raw(id.raw())
        .expect("DESTROY through the duplicate");
    // But handles of one `Iommufd` are not accepted by the other: the library cannot
    // know the two share a file.
    let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
    let e = Hwpt::alloc(&passed, DeviceId::from_raw(1), &ioas, HwptFlags::empty()).unwrap_err();
    assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn closing_the_file_frees_leaked_objects() {
    let fd = open();
    let dup: OwnedFd = fd.as_fd().try_clone_to_owned().expect("dup");
    let keeper = Iommufd::from_owned_fd(dup);
    let id = fd.alloc_ioas().expect("IOAS_ALLOC").into_id();
    // Still there while any fd of the file is open.
    drop(fd);
    keeper.destroy_raw(id.raw()).expect("DESTROY");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn errors_name_the_operation_and_object() {
    let fd = open();
    let e = fd.hw_info(DeviceId::from_raw(12345)).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("IOMMU_GET_HW_INFO") && text.contains("device 12345"),
        "{text}"
    );
    let ioas = fd.alloc_ioas().expect("IOAS_ALLOC");
    // HWPT_ALLOC for a device that does not exist.
    let e = Hwpt::alloc(&fd, DeviceId::from_raw(12345), &ioas, HwptFlags::empty()).unwrap_err();
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    assert!(!e.is_unsupported());
    let text = e.to_string();
    assert!(text.contains("IOMMU_HWPT_ALLOC"), "{text}");
}
