//! The one path from a typed call to `ioctl(2)`.
//!
//! Every iommufd command takes a pointer to a `#[repr(C)]` structure whose first field
//! is `u32 size`. The kernel reads `size` first, copies that many bytes (checking that
//! any bytes it does not know are zero), runs the command, and copies the (possibly
//! updated) structure back, never more than `size` bytes. So the memory the kernel
//! touches *through the argument pointer* is bounded by `size`, which [`Arg`] lets the
//! core check against `size_of::<T>()` before the call.
//!
//! Some structures also carry user pointers (`data_uptr`, `allowed_iovas`, ...) that
//! the kernel reads or writes during the call. The core cannot check those, so it is an
//! `unsafe fn` whose contract is exactly that; [`Iommufd::ioctl_plain`] is the safe
//! entry for the structures that carry none ([`PlainArg`]). Wrappers that pass
//! pointers fill them from live Rust buffers right next to their own `// SAFETY:`
//! comment.

use std::os::fd::AsRawFd;

use iommufd_uapi as uapi;
use libc::c_ulong;

use crate::Iommufd;

/// An errno value returned by a failed system call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Errno(pub(crate) i32);

impl Errno {
    /// The calling thread's last errno.
    pub(crate) fn last() -> Errno {
        Errno(
            std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO),
        )
    }
}

/// An iommufd argument structure.
///
/// # Safety
///
/// Implementors are `#[repr(C)]` structures generated from the kernel header that
/// start with the `u32 size` field returned by [`Arg::size`], and in which every bit
/// pattern is valid (plain integers and arrays of them), because the kernel writes
/// arbitrary values into output fields.
pub(crate) unsafe trait Arg {
    /// The `size` field.
    fn size(&self) -> u32;
    /// Sets the `size` field.
    fn set_size(&mut self, size: u32);
}

/// An argument structure with no user pointers: during the ioctl the kernel touches
/// no memory but the structure itself.
///
/// # Safety
///
/// The structure has no field that the kernel interprets as a user address.
pub(crate) unsafe trait PlainArg: Arg {}

macro_rules! args {
    (plain: $($plain:ty),* ; pointers: $($ptr:ty),* $(,)?) => {
        $(
            // SAFETY: a bindgen-generated #[repr(C)] structure of integers whose first
            // field is `size` (see the layout asserts in iommufd-uapi).
            unsafe impl Arg for $plain {
                fn size(&self) -> u32 { self.size }
                fn set_size(&mut self, size: u32) { self.size = size }
            }
            // SAFETY: no field of this structure is a user address (checked against
            // the kernel-doc of the structure in include/uapi/linux/iommufd.h).
            unsafe impl PlainArg for $plain {}
        )*
        $(
            // SAFETY: a bindgen-generated #[repr(C)] structure of integers whose first
            // field is `size` (see the layout asserts in iommufd-uapi).
            unsafe impl Arg for $ptr {
                fn size(&self) -> u32 { self.size }
                fn set_size(&mut self, size: u32) { self.size = size }
            }
        )*
    };
}

args! {
    plain:
        uapi::iommu_destroy,
        uapi::iommu_ioas_alloc,
        uapi::iommu_ioas_unmap,
        uapi::iommu_ioas_copy,
        uapi::iommu_ioas_map_file,
        uapi::iommu_option,
        uapi::iommu_hwpt_set_dirty_tracking,
        uapi::iommu_ioas_change_process,
        uapi::iommu_vfio_ioas,
        uapi::iommu_fault_alloc,
        uapi::iommu_vdevice_alloc,
        uapi::iommu_veventq_alloc,
        uapi::iommu_hw_queue_alloc,
        uapi::iommu_ioas_noiommu_get_pa,
        ProbeArg;
    pointers:
        uapi::iommu_ioas_map,
        uapi::iommu_ioas_iova_ranges,
        uapi::iommu_ioas_allow_iovas,
        uapi::iommu_hwpt_alloc,
        uapi::iommu_hw_info,
        uapi::iommu_hwpt_get_dirty_bitmap,
        uapi::iommu_viommu_alloc,
        uapi::iommu_hwpt_invalidate,
}

#[cfg(feature = "selftest")]
args! {
    plain: ;
    pointers: uapi::selftest::iommu_test_cmd,
}

/// A zeroed argument of the largest size any probe needs, with `size` 0: smaller than
/// every command's minimum, so the kernel rejects it before looking at anything else.
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct ProbeArg {
    pub(crate) size: u32,
    pub(crate) rest: [u32; 15],
}

/// A zero-initialized argument structure with `size` set to its full size.
pub(crate) fn arg<T: Arg + Default>() -> T {
    let mut a = T::default();
    // The structures are a few dozen bytes; the cast cannot truncate.
    a.set_size(size_of::<T>() as u32);
    a
}

impl Iommufd {
    /// Issues `req` with `arg`: the audited core every command goes through.
    ///
    /// Fails with `EINVAL` without calling the kernel if `arg.size()` claims more bytes
    /// than `T` has.
    ///
    /// # Safety
    ///
    /// Every user pointer stored in `arg` (with its length field) must be null/zero
    /// or point to memory valid for the kernel's reads and writes of that length for
    /// the duration of the call, and not aliased by any Rust reference the kernel may
    /// write through.
    pub(crate) unsafe fn ioctl<T: Arg>(&self, req: c_ulong, arg: &mut T) -> Result<(), Errno> {
        if arg.size() as usize > size_of::<T>() {
            return Err(Errno(libc::EINVAL));
        }
        // SAFETY: the fd is an open file owned by `self`. `arg` is a valid, exclusive
        // reference to a `T`; the kernel accesses at most `arg.size()` bytes through it,
        // which the check above bounds by `size_of::<T>()`, and `T: Arg` guarantees any
        // bytes it writes form a valid `T`. User pointers inside `arg` are the caller's
        // contract (see `# Safety`).
        let ret = unsafe { libc::ioctl(self.as_raw_fd(), req as _, arg as *mut T) };
        if ret < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    /// [`Iommufd::ioctl`] for structures without user pointers.
    pub(crate) fn ioctl_plain<T: PlainArg>(&self, req: c_ulong, arg: &mut T) -> Result<(), Errno> {
        // SAFETY: `T: PlainArg` has no user pointers, so the contract of `ioctl` holds
        // trivially.
        unsafe { self.ioctl(req, arg) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arg_sets_full_size() {
        let a: uapi::iommu_ioas_map = arg();
        assert_eq!(a.size as usize, size_of::<uapi::iommu_ioas_map>());
        assert_eq!(a.flags, 0);
        let p: ProbeArg = arg();
        assert_eq!(p.size, 64);
    }

    // A real ioctl on a file that is not an iommufd: the kernel answers ENOTTY.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn oversized_arg_is_refused_before_the_kernel() {
        let fd = crate::iommufd::tests::null();
        let mut a: uapi::iommu_destroy = arg();
        a.size = 4096;
        assert_eq!(
            fd.ioctl_plain(uapi::IOMMU_DESTROY, &mut a),
            Err(Errno(libc::EINVAL))
        );
        a.size = 8;
        assert_eq!(
            fd.ioctl_plain(uapi::IOMMU_DESTROY, &mut a),
            Err(Errno(libc::ENOTTY))
        );
    }
}
