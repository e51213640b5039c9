//! The file, its options and object lifetimes against a real kernel: probing,
//! `IOMMU_OPTION_RLIMIT_MODE`, two files' isolation, fd passing.
//!
//! Ignored on the host; the guest lab runs them with `--ignored`.

mod common;

use std::os::fd::{AsFd, OwnedFd};

use common::{assert_errno, kernel_version, memfd, open, parse_version};
use iommufd::{
    Binding, Command, Device, Error, Hwpt, HwptFlags, Ioas, Iommufd, Iova, MapFlags, RlimitMode,
};
use iommufd_lab::mem::buffer;

/// The binding of a [`Device`] that no binding layer backs: attach and detach fail
/// without a system call.
#[derive(Debug)]
struct Unbacked;

impl Binding for Unbacked {
    fn attach(&self, _pasid: Option<u32>, _pt: u32, _replace: bool) -> iommufd::Result<u32> {
        Err(Error::from_errno(
            "attach",
            "an unbacked device",
            libc::ENODEV,
        ))
    }

    fn detach(&self, _pasid: Option<u32>) -> iommufd::Result<()> {
        Err(Error::from_errno(
            "detach",
            "an unbacked device",
            libc::ENODEV,
        ))
    }
}

/// A `Device` of `fd` under the kernel id `id` that nothing bound: ids cannot be
/// made from numbers any more, so this is how a test names a device id the kernel
/// does not know, or gets a device of a given file for the crate's own checks.
/// It is never attached, so dropping it sends nothing to the kernel.
fn unbacked_device(fd: &Iommufd, id: u32, label: u64) -> Device {
    let label = fd.reserve_label(label).expect("a free label");
    Device::new(label, id, "unbacked", Box::new(Unbacked), None)
}

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
    let _ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    assert_errno(fd.set_rlimit_mode(RlimitMode::Process), libc::EBUSY);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn two_iommufds_are_isolated() {
    let a = open();
    let b = open();
    let p = common::page();
    let ioas_a = Ioas::alloc(&a).expect("IOAS_ALLOC a");
    // The id of an object of `a` means nothing in `b`.
    assert_errno(b.destroy_raw(ioas_a.id().raw()), libc::ENOENT);
    let ioas_b = Ioas::alloc(&b).expect("IOAS_ALLOC b");
    // Both files number their objects from 1: equal numbers, different ids.
    assert_eq!(ioas_a.id().raw(), ioas_b.id().raw());
    assert_ne!(ioas_a.id(), ioas_b.id());
    // Each file maps the same IOVA independently.
    let ma = ioas_a
        .map(buffer(p as usize), Some(Iova(1 << 24)), MapFlags::RW)
        .expect("MAP a");
    let mb = ioas_b
        .map(buffer(p as usize), Some(Iova(1 << 24)), MapFlags::RW)
        .expect("MAP b");
    assert_eq!(ma.iova(), mb.iova());
    // Using an object of `a` with `b` is refused before the kernel sees it.
    // SAFETY: refused before the kernel; nothing is copied.
    let e = unsafe { ioas_b.copy_from(&ioas_a, Iova(1 << 24), p, None, MapFlags::RW) }.unwrap_err();
    assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    // A device of `b` (unbacked: these checks come before any kernel call) with the
    // IOAS of `a`.
    let dev_b = unbacked_device(&b, 1, 0xb);
    let e = Hwpt::alloc(&ioas_a, &dev_b, HwptFlags::empty()).unwrap_err();
    assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    let e = dev_b.attach(&ioas_a).unwrap_err();
    assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    drop(dev_b);
    // Closing `a` leaves `b` untouched; the objects of `a` keep `a` open until they
    // go, whatever the order.
    drop(a);
    ioas_a.iova_ranges().expect("the IOAS keeps its file open");
    drop(ma);
    drop(ioas_a);
    assert_eq!(ioas_b.iova_ranges().expect("IOVA_RANGES b").ranges.len(), 1);
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn a_passed_fd_works_like_an_opened_one() {
    let fd = open();
    // What a privileged helper would send over SCM_RIGHTS: a duplicate of the fd.
    let dup: OwnedFd = fd.as_fd().try_clone_to_owned().expect("dup");
    let passed = Iommufd::from_owned_fd(dup).expect("a duplicate of /dev/iommu is the iommufd");
    // Same file, same objects.
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let id = ioas.into_id();
    passed
        .destroy_raw(id.raw())
        .expect("DESTROY through the duplicate");
    // But handles of one `Iommufd` are not accepted by the other: the library cannot
    // know the two share a file.
    assert!(!passed.same_file(&fd));
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    let dev = unbacked_device(&passed, 1, 0x1);
    let e = Hwpt::alloc(&ioas, &dev, HwptFlags::empty()).unwrap_err();
    assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
    // Any other file is refused before a command is sent to it.
    let e = Iommufd::from_owned_fd(OwnedFd::from(memfd(common::page()))).unwrap_err();
    assert!(matches!(e, Error::NotIommufd { .. }), "{e}");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn closing_the_file_frees_leaked_objects() {
    let fd = open();
    let dup: OwnedFd = fd.as_fd().try_clone_to_owned().expect("dup");
    let keeper = Iommufd::from_owned_fd(dup).expect("a duplicate of /dev/iommu is the iommufd");
    let id = Ioas::alloc(&fd).expect("IOAS_ALLOC").into_id();
    // Still there while any fd of the file is open.
    drop(fd);
    keeper.destroy_raw(id.raw()).expect("DESTROY");
}

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn errors_name_the_operation_and_object() {
    let fd = open();
    // A device id the kernel never handed out.
    let ghost = unbacked_device(&fd, 12345, 0x1234);
    assert!(!fd.has_device(ghost.id()).expect("GET_HW_INFO probe"));
    let e = ghost.hw_info().unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("IOMMU_GET_HW_INFO") && text.contains("device 12345"),
        "{text}"
    );
    let ioas = Ioas::alloc(&fd).expect("IOAS_ALLOC");
    // HWPT_ALLOC for a device that does not exist.
    let e = Hwpt::alloc(&ioas, &ghost, HwptFlags::empty()).unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    assert!(!e.is_unsupported());
    let text = e.to_string();
    assert!(
        text.contains("IOMMU_HWPT_ALLOC") && text.contains("device 12345"),
        "{text}"
    );
}
