//! `/dev/iommu` through raw iommufd-uapi ioctls: an observer independent of the
//! typed crate under test.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::ptr::NonNull;

use iommufd_uapi::*;

use crate::ioctl_with_mut;

/// An open `/dev/iommu`.
#[derive(Debug)]
pub struct RawIommufd {
    file: File,
}

impl AsFd for RawIommufd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl RawIommufd {
    /// Opens `/dev/iommu`.
    pub fn open() -> io::Result<RawIommufd> {
        Ok(RawIommufd {
            file: OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/iommu")?,
        })
    }

    /// `IOMMU_IOAS_ALLOC`.
    pub fn ioas_alloc(&self) -> io::Result<u32> {
        let mut a = iommu_ioas_alloc {
            size: size_of::<iommu_ioas_alloc>() as u32,
            ..Default::default()
        };
        ioctl_with_mut(self.as_fd(), IOMMU_IOAS_ALLOC, &mut a)?;
        Ok(a.out_ioas_id)
    }

    /// `IOMMU_DESTROY`.
    pub fn destroy(&self, id: u32) -> io::Result<()> {
        let mut a = iommu_destroy {
            size: size_of::<iommu_destroy>() as u32,
            id,
        };
        ioctl_with_mut(self.as_fd(), IOMMU_DESTROY, &mut a)
    }

    /// `IOMMU_IOAS_MAP` of `buf` at the fixed `iova`, readable and writable.
    ///
    /// # Safety
    ///
    /// `buf` must stay alive and mapped until the range is unmapped from the IOAS (or
    /// the IOAS destroyed): devices attached to it may DMA into it until then.
    pub unsafe fn map_fixed(&self, ioas: u32, buf: &DmaBuffer, iova: u64) -> io::Result<()> {
        let mut a = iommu_ioas_map {
            size: size_of::<iommu_ioas_map>() as u32,
            flags: IOMMU_IOAS_MAP_FIXED_IOVA | IOMMU_IOAS_MAP_READABLE | IOMMU_IOAS_MAP_WRITEABLE,
            ioas_id: ioas,
            user_va: buf.ptr.as_ptr() as u64,
            length: buf.len as u64,
            iova,
            ..Default::default()
        };
        ioctl_with_mut(self.as_fd(), IOMMU_IOAS_MAP, &mut a)
    }

    /// `IOMMU_IOAS_UNMAP`; returns the number of bytes unmapped.
    pub fn unmap(&self, ioas: u32, iova: u64, length: u64) -> io::Result<u64> {
        let mut a = iommu_ioas_unmap {
            size: size_of::<iommu_ioas_unmap>() as u32,
            ioas_id: ioas,
            iova,
            length,
        };
        ioctl_with_mut(self.as_fd(), IOMMU_IOAS_UNMAP, &mut a)?;
        Ok(a.length)
    }
}

/// Page-aligned anonymous memory for DMA tests.
#[derive(Debug)]
pub struct DmaBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

impl DmaBuffer {
    /// Maps `len` bytes (rounded up to pages) of zeroed anonymous memory.
    pub fn new(len: usize) -> io::Result<DmaBuffer> {
        let len = len.div_ceil(4096) * 4096;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(DmaBuffer { ptr, len })
    }

    /// Its length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies bytes out. Volatile: a device may have written them behind Rust's back.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        assert!(offset + out.len() <= self.len);
        for (i, b) in out.iter_mut().enumerate() {
            // SAFETY: in bounds (asserted); the mapping lives as long as self.
            *b = unsafe { self.ptr.as_ptr().add(offset + i).read_volatile() };
        }
    }

    /// Copies bytes in.
    pub fn write(&self, offset: usize, data: &[u8]) {
        assert!(offset + data.len() <= self.len);
        for (i, b) in data.iter().enumerate() {
            // SAFETY: in bounds (asserted); the mapping lives as long as self.
            unsafe { self.ptr.as_ptr().add(offset + i).write_volatile(*b) };
        }
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what mmap returned.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
