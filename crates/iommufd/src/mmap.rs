//! Owned anonymous memory for DMA.

use std::fmt;
use std::ptr::NonNull;

use crate::{Error, Result};

/// An owned, page-aligned, anonymous shared mapping (`mmap(MAP_SHARED |
/// MAP_ANONYMOUS)`), freed with `munmap` on drop.
///
/// Hand it to [`Ioas::map_owned`](crate::Ioas::map_owned) to map it for DMA: the
/// returned [`Mapping`](crate::Mapping) keeps it alive until the IOAS no longer maps
/// it. A device may write it at any time while it is mapped, so it is accessed by
/// copying ([`read_at`](MmapRegion::read_at), [`write_at`](MmapRegion::write_at)),
/// never through Rust references.
///
/// ```
/// use iommufd::MmapRegion;
/// let region = MmapRegion::new(8192)?;
/// region.write_at(4096, b"hello")?;
/// let mut buf = [0u8; 5];
/// region.read_at(4096, &mut buf)?;
/// assert_eq!(&buf, b"hello");
/// assert!(region.read_at(8190, &mut buf).is_err());
/// # Ok::<(), iommufd::Error>(())
/// ```
pub struct MmapRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region exclusively owns its mapping; moving it to another thread moves
// that ownership. It is not `Sync`: `read_at`/`write_at` through `&self` are not
// synchronized with each other.
unsafe impl Send for MmapRegion {}

impl fmt::Debug for MmapRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmapRegion")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

impl MmapRegion {
    /// Maps `len` bytes of zeroed, readable and writable memory. `len` must not be 0
    /// and is not rounded (the kernel maps whole pages; only `len` bytes are used).
    ///
    /// ```
    /// use iommufd::{Error, MmapRegion};
    /// let region = MmapRegion::new(100)?;
    /// assert_eq!(region.len(), 100);
    /// let mut buf = [0xff; 100];
    /// region.read_at(0, &mut buf)?;
    /// assert_eq!(buf, [0; 100]); // zeroed
    /// assert!(matches!(MmapRegion::new(0), Err(Error::InvalidArgument { .. })));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn new(len: usize) -> Result<MmapRegion> {
        if len == 0 {
            return Err(Error::InvalidArgument {
                op: "mmap",
                reason: "length is 0",
            });
        }
        // SAFETY: a new anonymous mapping at an address the kernel chooses; it
        // touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::Os {
                op: "mmap",
                errno: crate::sys::Errno::last().0,
            });
        }
        match NonNull::new(ptr.cast::<u8>()) {
            Some(ptr) => Ok(MmapRegion { ptr, len }),
            None => Err(Error::Os {
                op: "mmap",
                errno: libc::EFAULT,
            }),
        }
    }

    /// The start address (page aligned), e.g. for [`Ioas::map_user`](crate::Ioas::map_user).
    ///
    /// ```
    /// let region = iommufd::MmapRegion::new(4096)?;
    /// assert_eq!(region.as_ptr() as usize % 4096, 0);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes, as asked for (not rounded up to pages).
    ///
    /// ```
    /// assert_eq!(iommufd::MmapRegion::new(6000)?.len(), 6000);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always `false`: a region has at least one byte.
    ///
    /// ```
    /// assert!(!iommufd::MmapRegion::new(1)?.is_empty());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        false
    }

    fn check(&self, offset: usize, len: usize, op: &'static str) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(Error::InvalidArgument {
                op,
                reason: "offset and length exceed the region",
            }),
        }
    }

    /// Copies `buf.len()` bytes at `offset` out of the region.
    ///
    /// Fails with [`Error::InvalidArgument`] if they do not all lie in the region.
    ///
    /// ```
    /// # let region = iommufd::MmapRegion::new(4096)?;
    /// region.write_at(16, &[1, 2, 3, 4])?; // e.g. written by a device's DMA
    /// let mut status = [0u8; 4];
    /// region.read_at(16, &mut status)?;
    /// assert_eq!(status, [1, 2, 3, 4]);
    /// assert!(region.read_at(4094, &mut status).is_err());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        self.check(offset, buf.len(), "MmapRegion::read_at")?;
        // SAFETY: `offset + buf.len() <= self.len` (checked), so the source lies in
        // the mapping, which lives as long as `self`; `buf` is a distinct Rust
        // buffer, so the two do not overlap. No reference to the region is created.
        unsafe {
            volatile_copy(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
                true,
            )
        };
        Ok(())
    }

    /// Copies `data` into the region at `offset`.
    ///
    /// Fails with [`Error::InvalidArgument`] if it does not fit, writing nothing.
    ///
    /// ```
    /// use iommufd::{Error, MmapRegion};
    /// let region = MmapRegion::new(4096)?;
    /// region.write_at(4092, b"tail")?;
    /// let err = region.write_at(4093, b"tail").unwrap_err();
    /// assert!(matches!(err, Error::InvalidArgument { op: "MmapRegion::write_at", .. }));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn write_at(&self, offset: usize, data: &[u8]) -> Result<()> {
        self.check(offset, data.len(), "MmapRegion::write_at")?;
        // SAFETY: as in `read_at`, with source and destination swapped. Writing
        // through `&self` is sound because no Rust reference into the mapping exists.
        unsafe {
            volatile_copy(
                data.as_ptr(),
                self.ptr.as_ptr().add(offset),
                data.len(),
                false,
            )
        };
        Ok(())
    }

    /// Fills the whole region with `byte`.
    ///
    /// ```
    /// let region = iommufd::MmapRegion::new(8192)?;
    /// region.fill(0xa5);
    /// let mut last = [0u8; 1];
    /// region.read_at(8191, &mut last)?;
    /// assert_eq!(last, [0xa5]);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn fill(&self, byte: u8) {
        let (base, len) = (self.ptr.as_ptr(), self.len);
        let word = u64::from_ne_bytes([byte; 8]);
        // The mapping is page-aligned, so whole u64 words cover all but a short tail.
        for i in 0..len / 8 {
            // SAFETY: word `i` lies in the mapping, which is page- and so u64-aligned,
            // and lives as long as `self`. Volatile: devices may access it meanwhile.
            unsafe { base.cast::<u64>().add(i).write_volatile(word) };
        }
        for i in len / 8 * 8..len {
            // SAFETY: byte `i < len` lies in the mapping.
            unsafe { base.add(i).write_volatile(byte) };
        }
    }
}

/// Copies `len` bytes with volatile accesses on the DMA side (`src` if `from_dma`,
/// else `dst`): a device may read or write that memory at any time, so the compiler
/// must neither assume its contents nor elide, merge or reorder the accesses beyond
/// what volatile allows. Word-sized accesses where both sides are aligned, bytes
/// otherwise.
///
/// # Safety
///
/// `src` must be valid for reads and `dst` for writes of `len` bytes, and the two
/// ranges must not overlap.
unsafe fn volatile_copy(src: *const u8, dst: *mut u8, len: usize, from_dma: bool) {
    let mut i = 0;
    let aligned = (src as usize) % 8 == 0 && (dst as usize) % 8 == 0;
    if aligned {
        while i + 8 <= len {
            // SAFETY: `i + 8 <= len` keeps both 8-byte accesses inside the ranges the
            // caller vouches for; both pointers are 8-aligned (checked) and `i` is a
            // multiple of 8.
            unsafe {
                let s = src.add(i).cast::<u64>();
                let d = dst.add(i).cast::<u64>();
                if from_dma {
                    d.write(s.read_volatile());
                } else {
                    d.write_volatile(s.read());
                }
            }
            i += 8;
        }
    }
    while i < len {
        // SAFETY: `i < len`: inside both ranges.
        unsafe {
            if from_dma {
                dst.add(i).write(src.add(i).read_volatile());
            } else {
                dst.add(i).write_volatile(src.add(i).read());
            }
        }
        i += 1;
    }
}

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe the mapping this value created and owns; no
        // reference into it outlives `self`.
        let ret = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        if ret != 0 {
            eprintln!(
                "iommufd: munmap of {} bytes at {:p} failed: {}",
                self.len,
                self.ptr,
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volatile_copy_matches_a_plain_copy() {
        let src: Vec<u8> = (0..64u8).collect();
        for from_dma in [false, true] {
            for (so, doff) in [(0, 0), (8, 0), (1, 0), (0, 3), (5, 5)] {
                for len in [0, 1, 7, 8, 9, 16, 23, 40] {
                    let mut dst = vec![0xeeu8; 64];
                    // SAFETY: both ranges lie in their vectors and do not overlap.
                    unsafe {
                        volatile_copy(
                            src.as_ptr().add(so),
                            dst.as_mut_ptr().add(doff),
                            len,
                            from_dma,
                        )
                    };
                    assert_eq!(
                        &dst[doff..doff + len],
                        &src[so..so + len],
                        "{so} {doff} {len}"
                    );
                    assert!(
                        dst[..doff]
                            .iter()
                            .chain(&dst[doff + len..])
                            .all(|&b| b == 0xee)
                    );
                }
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn zeroed_and_bounds_checked() {
        let r = MmapRegion::new(4096).expect("mmap");
        assert_eq!(r.len(), 4096);
        assert!(!r.is_empty());
        let mut b = [0xffu8; 16];
        r.read_at(4080, &mut b).expect("read");
        assert_eq!(b, [0; 16]);
        r.fill(7);
        r.read_at(0, &mut b).expect("read");
        assert_eq!(b, [7; 16]);
        assert!(r.write_at(4090, &[0; 7]).is_err());
        assert!(r.write_at(usize::MAX, &[0; 2]).is_err());
        assert!(r.read_at(4096, &mut []).is_ok());
        assert!(format!("{r:?}").contains("len: 4096"));
    }

    #[test]
    fn zero_length_is_refused() {
        assert!(matches!(
            MmapRegion::new(0),
            Err(Error::InvalidArgument { .. })
        ));
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn huge_length_fails_with_errno() {
        let e = MmapRegion::new(usize::MAX - 4095).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOMEM));
    }
}
