//! I/O address spaces.

use std::fmt;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd};

use bitflags::bitflags;
use iommufd_uapi as uapi;

use crate::sys::{Errno, arg};
use crate::{Error, IoasId, Iommufd, Iova, IovaRange, IovaRanges, MmapRegion, PtId, Result};

bitflags! {
    /// What a device may do with a mapping.
    ///
    /// At least one of the two is required. The values are the kernel's
    /// (`IOMMU_IOAS_MAP_WRITEABLE`, `IOMMU_IOAS_MAP_READABLE`); whether the IOVA is
    /// fixed is chosen by passing `Some(iova)` instead of a flag.
    ///
    /// ```
    /// use iommufd::MapFlags;
    /// assert_eq!(MapFlags::RW, MapFlags::READ | MapFlags::WRITE);
    /// ```
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct MapFlags: u32 {
        /// DMA may write the memory (`IOMMU_IOAS_MAP_WRITEABLE`).
        ///
        /// ```
        /// use iommufd::{MapFlags, uapi};
        /// assert_eq!(MapFlags::WRITE.bits(), uapi::IOMMU_IOAS_MAP_WRITEABLE);
        /// ```
        const WRITE = uapi::IOMMU_IOAS_MAP_WRITEABLE;
        /// DMA may read the memory (`IOMMU_IOAS_MAP_READABLE`).
        ///
        /// ```
        /// use iommufd::{MapFlags, uapi};
        /// assert_eq!(MapFlags::READ.bits(), uapi::IOMMU_IOAS_MAP_READABLE);
        /// ```
        const READ = uapi::IOMMU_IOAS_MAP_READABLE;
    }
}

impl MapFlags {
    /// Readable and writable.
    ///
    /// ```
    /// use iommufd::MapFlags;
    /// assert!(MapFlags::RW.contains(MapFlags::READ) && MapFlags::RW.contains(MapFlags::WRITE));
    /// assert_eq!(MapFlags::RW.bits(), 6);
    /// ```
    pub const RW: MapFlags = MapFlags::READ.union(MapFlags::WRITE);

    /// The kernel flags for a map or copy at `iova` (fixed if `Some`).
    fn kernel_flags(self, iova: Option<Iova>) -> u32 {
        let fixed = if iova.is_some() {
            uapi::IOMMU_IOAS_MAP_FIXED_IOVA
        } else {
            0
        };
        // A FIXED_IOVA bit smuggled in through `from_bits_retain` does not count.
        (self.bits() & !uapi::IOMMU_IOAS_MAP_FIXED_IOVA) | fixed
    }
}

/// An I/O address space (`IOMMU_IOAS_ALLOC`): the set of IOVA → memory mappings that
/// the devices and HWPTs attached to it see.
///
/// Destroyed (`IOMMU_DESTROY`) when dropped; the kernel refuses with `EBUSY` while a
/// HWPT or device still uses it, and the drop then only logs. Use
/// [`Ioas::destroy`] to see that error.
///
/// ```no_run
/// use iommufd::{Iommufd, Iova, MapFlags, MmapRegion};
///
/// let fd = Iommufd::open()?;
/// let ioas = fd.alloc_ioas()?;
/// let usable = ioas.iova_ranges()?;
/// let mapping = ioas.map_owned(MmapRegion::new(1 << 20)?, Some(Iova(1 << 32)), MapFlags::RW)?;
/// assert_eq!(mapping.iova(), Iova(1 << 32));
/// drop(mapping); // unmapped from the IOAS, then freed
/// # Ok::<(), iommufd::Error>(())
/// ```
#[must_use = "dropping an Ioas destroys it"]
pub struct Ioas<'fd> {
    fd: &'fd Iommufd,
    id: IoasId,
}

impl fmt::Debug for Ioas<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ioas")
            .field("id", &self.id)
            .field("iommufd", &self.fd.as_raw_fd())
            .finish()
    }
}

impl Iommufd {
    /// Allocates an IOAS: [`Ioas::alloc`].
    ///
    /// ```no_run
    /// let fd = iommufd::Iommufd::open()?;
    /// let ioas = fd.alloc_ioas()?;
    /// println!("allocated {}", ioas.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn alloc_ioas(&self) -> Result<Ioas<'_>> {
        Ioas::alloc(self)
    }
}

impl<'fd> Ioas<'fd> {
    /// Allocates an empty IOAS (`IOMMU_IOAS_ALLOC`).
    ///
    /// ```no_run
    /// let fd = iommufd::Iommufd::open()?;
    /// let ioas = iommufd::Ioas::alloc(&fd)?;
    /// println!("{}", ioas.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn alloc(fd: &'fd Iommufd) -> Result<Ioas<'fd>> {
        let mut a: uapi::iommu_ioas_alloc = arg();
        fd.ioctl_plain(uapi::IOMMU_IOAS_ALLOC, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_IOAS_ALLOC", "iommufd", e.0))?;
        Ok(Ioas {
            fd,
            id: IoasId::from_raw(a.out_ioas_id),
        })
    }

    /// The id.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let id = ioas.id(); // e.g. for another layer, as `PtId::from(id)`
    /// assert_eq!(id.to_string(), format!("ioas {}", id.raw()));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn id(&self) -> IoasId {
        self.id
    }

    /// The file the IOAS belongs to.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// assert!(std::ptr::eq(ioas.iommufd(), &fd));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iommufd(&self) -> &'fd Iommufd {
        self.fd
    }

    /// Maps `len` bytes of this process's memory at `va` (`IOMMU_IOAS_MAP`), at
    /// `iova` if given (it must be free: `EEXIST` otherwise) or at an IOVA the kernel
    /// chooses; returns the IOVA.
    ///
    /// The kernel pins the pages when a device domain needs them (at once if one is
    /// attached, else at the next attach) and charges them to `RLIMIT_MEMLOCK`.
    ///
    /// # Safety
    ///
    /// The memory at `va..va + len` must be mapped in this process (writable if
    /// `perms` contains [`MapFlags::WRITE`]) and must stay mapped, and not be used
    /// for anything that devices must not read or write, until the IOVA range is
    /// unmapped from this IOAS *and* from every IOAS it was copied into with
    /// [`Ioas::copy_from`]. Until then devices may access it at any time, so no Rust
    /// reference to it may assume exclusive access. Prefer the safe
    /// [`Ioas::map_owned`] and [`Ioas::map_file`].
    ///
    /// ```no_run
    /// use iommufd::{Iommufd, MapFlags, MmapRegion};
    /// let fd = Iommufd::open()?;
    /// let ioas = fd.alloc_ioas()?;
    /// let buf = MmapRegion::new(4096)?;
    /// // SAFETY: `buf` outlives the mapping: it is unmapped below before `buf` drops.
    /// let iova = unsafe { ioas.map_user(None, buf.as_ptr(), 4096, MapFlags::RW)? };
    /// ioas.unmap(iova, 4096)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub unsafe fn map_user(
        &self,
        iova: Option<Iova>,
        va: *const u8,
        len: u64,
        perms: MapFlags,
    ) -> Result<Iova> {
        let mut a: uapi::iommu_ioas_map = arg();
        a.flags = perms.kernel_flags(iova);
        a.ioas_id = self.id.raw();
        a.user_va = va as u64;
        a.length = len;
        a.iova = iova.map_or(0, Iova::raw);
        // SAFETY: during the call the kernel only records `user_va..+length` and may
        // pin and read its pages (never writing through it); an invalid range fails
        // with EFAULT. The long-term validity of the memory is this function's own
        // `# Safety` contract, passed to the caller.
        unsafe { self.fd.ioctl(uapi::IOMMU_IOAS_MAP, &mut a) }
            .map_err(|e| Error::from_errno("IOMMU_IOAS_MAP", self.id, e.0))?;
        Ok(Iova(a.iova))
    }

    /// Maps `len` bytes of a file from offset `start` (`IOMMU_IOAS_MAP_FILE`, Linux
    /// 6.13): a memfd (or other shmem/hugetlbfs file), or on newer kernels a
    /// supported dma-buf. Returns the IOVA (`iova` if given, else kernel-chosen).
    ///
    /// Safe, unlike [`Ioas::map_user`]: the kernel takes its own reference to the
    /// file and pins its pages, so closing the fd or unmapping the file from this
    /// process cannot leave devices pointing at reused memory. The pages belong to the
    /// file: anyone who maps the file sees the DMA.
    ///
    /// ```no_run
    /// use std::fs::File;
    /// use iommufd::{Iommufd, MapFlags};
    /// # fn memfd(len: u64) -> File { unimplemented!() }
    /// let fd = Iommufd::open()?;
    /// let ioas = fd.alloc_ioas()?;
    /// let file = memfd(1 << 21); // e.g. memfd_create + ftruncate
    /// let iova = ioas.map_file(&file, 0, 1 << 21, None, MapFlags::RW)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn map_file(
        &self,
        file: &impl AsFd,
        start: u64,
        len: u64,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> Result<Iova> {
        let mut a: uapi::iommu_ioas_map_file = arg();
        a.flags = perms.kernel_flags(iova);
        a.ioas_id = self.id.raw();
        a.fd = file.as_fd().as_raw_fd();
        a.start = start;
        a.length = len;
        a.iova = iova.map_or(0, Iova::raw);
        self.fd
            .ioctl_plain(uapi::IOMMU_IOAS_MAP_FILE, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_IOAS_MAP_FILE", self.id, e.0))?;
        Ok(Iova(a.iova))
    }

    /// Maps memory that the returned [`Mapping`] owns: safe DMA mapping of anonymous
    /// memory.
    ///
    /// The mapping unmaps the range from this IOAS before it frees the memory (on
    /// drop or [`Mapping::unmap`]). If the memory cannot be mapped, it is freed.
    ///
    /// ```no_run
    /// use iommufd::{Iommufd, MapFlags, MmapRegion};
    /// let fd = Iommufd::open()?;
    /// let ioas = fd.alloc_ioas()?;
    /// let m = ioas.map_owned(MmapRegion::new(1 << 16)?, None, MapFlags::RW)?;
    /// m.region().write_at(0, b"descriptor")?;
    /// println!("device sees it at {}", m.iova());
    /// let region = m.unmap()?; // back to plain memory
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn map_owned(
        &self,
        region: MmapRegion,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> Result<Mapping<'_>> {
        // SAFETY: the memory is owned by `region`, which moves into the returned
        // `Mapping`; the mapping unmaps the range before freeing the region and leaks
        // it if the unmap fails. `copy_from` is unsafe, so copies are the caller's
        // contract.
        let iova = unsafe { self.map_user(iova, region.as_ptr(), region.len() as u64, perms)? };
        Ok(Mapping {
            ioas: self,
            iova,
            region: ManuallyDrop::new(region),
        })
    }

    /// Unmaps `len` bytes at `iova` (`IOMMU_IOAS_UNMAP`) and returns the number of
    /// bytes unmapped.
    ///
    /// The range must cover every mapping it touches completely: the kernel never
    /// splits a mapping. A range that cuts through one, or covers none, fails with
    /// [`Error::UnmapSplit`] (`ENOENT`).
    ///
    /// ```no_run
    /// # use iommufd::{Iommufd, Iova, MapFlags, MmapRegion, Error};
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let buf = MmapRegion::new(8192)?;
    /// # let iova = unsafe { ioas.map_user(Some(Iova(0x10000)), buf.as_ptr(), 8192, MapFlags::RW)? };
    /// // Half of an 8 KiB mapping cannot be unmapped...
    /// assert!(matches!(ioas.unmap(iova, 4096), Err(Error::UnmapSplit { .. })));
    /// // ...the whole of it can.
    /// assert_eq!(ioas.unmap(iova, 8192)?, 8192);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        if iova.raw() == 0 && len == u64::MAX {
            return self.unmap_all();
        }
        self.unmap_raw(iova.raw(), len).map_err(|e| match e.0 {
            libc::ENOENT => Error::UnmapSplit {
                ioas: self.id,
                iova,
                length: len,
            },
            errno => Error::from_errno("IOMMU_IOAS_UNMAP", self.id, errno),
        })
    }

    /// Unmaps everything (`IOMMU_IOAS_UNMAP` of `0..=u64::MAX`); returns the number
    /// of bytes unmapped (0 for an empty IOAS).
    ///
    /// ```no_run
    /// use iommufd::{MapFlags, MmapRegion};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let a = ioas.map_owned(MmapRegion::new(4096)?, None, MapFlags::RW)?;
    /// let b = ioas.map_owned(MmapRegion::new(8192)?, None, MapFlags::READ)?;
    /// assert_eq!(ioas.unmap_all()?, 4096 + 8192);
    /// assert_eq!(ioas.unmap_all()?, 0);
    /// drop((a, b)); // nothing left to unmap: only the memory is freed
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn unmap_all(&self) -> Result<u64> {
        self.unmap_raw(0, u64::MAX)
            .map_err(|e| Error::from_errno("IOMMU_IOAS_UNMAP", self.id, e.0))
    }

    fn unmap_raw(&self, iova: u64, len: u64) -> std::result::Result<u64, Errno> {
        let mut a: uapi::iommu_ioas_unmap = arg();
        a.ioas_id = self.id.raw();
        a.iova = iova;
        a.length = len;
        self.fd.ioctl_plain(uapi::IOMMU_IOAS_UNMAP, &mut a)?;
        Ok(a.length)
    }

    /// Maps into this IOAS the pages that `src` maps at `src_iova..+len`
    /// (`IOMMU_IOAS_COPY`), at `dst_iova` if given or at a kernel-chosen IOVA;
    /// returns the IOVA. `src` may be this IOAS.
    ///
    /// Every byte of the source range must be mapped (`ENOENT` otherwise); it may be
    /// part of a mapping or span several. The pages are shared, not copied, and pinned
    /// only once.
    ///
    /// # Safety
    ///
    /// The copy refers to the same memory as the source mapping: whatever made the
    /// source mapping valid must keep holding until the copy is unmapped too. For a
    /// source made with [`Ioas::map_user`], the memory must stay mapped until both are
    /// unmapped; a [`Mapping`] frees its memory after unmapping only its own range, so
    /// the copy of one must be unmapped before the `Mapping` is dropped. Copies of
    /// [`Ioas::map_file`] mappings are always fine.
    ///
    /// ```no_run
    /// use iommufd::{Iommufd, MapFlags};
    /// # fn memfd(len: u64) -> std::fs::File { unimplemented!() }
    /// let fd = Iommufd::open()?;
    /// let (src, dst) = (fd.alloc_ioas()?, fd.alloc_ioas()?);
    /// let iova = src.map_file(&memfd(1 << 20), 0, 1 << 20, None, MapFlags::RW)?;
    /// // SAFETY: copies of `map_file` mappings need nothing more.
    /// let copy = unsafe { dst.copy_from(&src, iova, None, 1 << 20, MapFlags::READ)? };
    /// println!("{iova} of {} is {copy} of {}", src.id(), dst.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub unsafe fn copy_from(
        &self,
        src: &Ioas<'_>,
        src_iova: Iova,
        dst_iova: Option<Iova>,
        len: u64,
        perms: MapFlags,
    ) -> Result<Iova> {
        self.fd
            .check_owner("IOMMU_IOAS_COPY", Some(src.fd.token()), src.id)?;
        let mut a: uapi::iommu_ioas_copy = arg();
        a.flags = perms.kernel_flags(dst_iova);
        a.dst_ioas_id = self.id.raw();
        a.src_ioas_id = src.id.raw();
        a.length = len;
        a.dst_iova = dst_iova.map_or(0, Iova::raw);
        a.src_iova = src_iova.raw();
        self.fd
            .ioctl_plain(uapi::IOMMU_IOAS_COPY, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_IOAS_COPY", self.id, e.0))?;
        Ok(Iova(a.dst_iova))
    }

    /// The IOVA ranges usable for mapping and their alignment
    /// (`IOMMU_IOAS_IOVA_RANGES`).
    ///
    /// Asks for the count first and repeats if the kernel answers `EMSGSIZE` (ranges
    /// changed in between).
    ///
    /// ```no_run
    /// let fd = iommufd::Iommufd::open()?;
    /// let ioas = fd.alloc_ioas()?;
    /// for r in ioas.iova_ranges()?.ranges {
    ///     println!("usable: {r}");
    /// }
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iova_ranges(&self) -> Result<IovaRanges> {
        let mut buf: Vec<uapi::iommu_iova_range> = Vec::new();
        // Ranges only change on attach/detach/reserve; a few rounds always suffice.
        for _ in 0..16 {
            let mut a: uapi::iommu_ioas_iova_ranges = arg();
            a.ioas_id = self.id.raw();
            a.num_iovas = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            a.allowed_iovas = if buf.is_empty() {
                0
            } else {
                buf.as_mut_ptr() as u64
            };
            // SAFETY: `allowed_iovas` is null with `num_iovas` 0, or points to `buf`,
            // which holds `num_iovas` initialized elements and is not otherwise
            // borrowed during the call; the kernel writes at most `num_iovas` of them.
            let r = unsafe { self.fd.ioctl(uapi::IOMMU_IOAS_IOVA_RANGES, &mut a) };
            match r {
                Ok(()) => {
                    buf.truncate(a.num_iovas as usize);
                    return Ok(IovaRanges {
                        ranges: buf.iter().filter_map(IovaRange::from_uapi).collect(),
                        alignment: a.out_iova_alignment,
                    });
                }
                Err(Errno(libc::EMSGSIZE)) if a.num_iovas as usize > buf.len() => {
                    buf.resize(a.num_iovas as usize, uapi::iommu_iova_range::default());
                }
                Err(e) => return Err(Error::from_errno("IOMMU_IOAS_IOVA_RANGES", self.id, e.0)),
            }
        }
        Err(Error::from_errno(
            "IOMMU_IOAS_IOVA_RANGES",
            self.id,
            libc::EMSGSIZE,
        ))
    }

    /// Restricts the IOVAs kernel-chosen mappings use, and guarantees they stay
    /// usable (`IOMMU_IOAS_ALLOW_IOVAS`). Replaces the previous list; an empty list
    /// removes the restriction.
    ///
    /// Fails with `EADDRINUSE` if a range overlaps a reserved region; afterwards,
    /// attaching a device whose IOMMU cannot provide the ranges fails.
    ///
    /// ```no_run
    /// use iommufd::{Iommufd, Iova, IovaRange};
    /// let fd = Iommufd::open()?;
    /// let ioas = fd.alloc_ioas()?;
    /// ioas.allow_iovas(&[IovaRange::from_len(Iova(1 << 32), 1 << 32).unwrap()])?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn allow_iovas(&self, ranges: &[IovaRange]) -> Result<()> {
        let list: Vec<uapi::iommu_iova_range> = ranges.iter().map(|r| r.to_uapi()).collect();
        let mut a: uapi::iommu_ioas_allow_iovas = arg();
        a.ioas_id = self.id.raw();
        a.num_iovas = u32::try_from(list.len()).map_err(|_| Error::InvalidArgument {
            op: "IOMMU_IOAS_ALLOW_IOVAS",
            reason: "more than u32::MAX ranges",
        })?;
        a.allowed_iovas = if list.is_empty() {
            0
        } else {
            list.as_ptr() as u64
        };
        // SAFETY: `allowed_iovas` points to `list`, `num_iovas` initialized elements
        // that live until after the call; the kernel only reads them.
        unsafe { self.fd.ioctl(uapi::IOMMU_IOAS_ALLOW_IOVAS, &mut a) }
            .map_err(|e| Error::from_errno("IOMMU_IOAS_ALLOW_IOVAS", self.id, e.0))
    }

    /// Allows or forbids huge IOMMU pages for this IOAS (`IOMMU_OPTION_HUGE_PAGES`,
    /// on by default).
    ///
    /// Off means every mapping is split into `PAGE_SIZE` pages, which raises the IOVA
    /// alignment to `PAGE_SIZE` (VFIO type1 v1 semantics); turning it off fails with
    /// `EADDRINUSE` while a mapping is not `PAGE_SIZE` aligned.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// ioas.set_huge_pages(false)?; // before mapping anything
    /// assert!(!ioas.huge_pages()?);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn set_huge_pages(&self, enable: bool) -> Result<()> {
        self.fd
            .option(
                uapi::IOMMU_OPTION_HUGE_PAGES,
                Some(enable.into()),
                self.id.raw(),
                self.id,
            )
            .map(drop)
    }

    /// Whether huge IOMMU pages are allowed (`IOMMU_OPTION_HUGE_PAGES`).
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// assert!(ioas.huge_pages()?); // on by default
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn huge_pages(&self) -> Result<bool> {
        let v = self
            .fd
            .option(uapi::IOMMU_OPTION_HUGE_PAGES, None, self.id.raw(), self.id)?;
        Ok(v != 0)
    }

    /// Destroys the IOAS now, returning the kernel's error (e.g. `EBUSY` while a
    /// device or HWPT uses it) instead of logging it.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let id = ioas.id();
    /// ioas.destroy()?;
    /// assert_eq!(fd.destroy_raw(id.raw()).unwrap_err().errno(), Some(libc::ENOENT));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn destroy(self) -> Result<()> {
        let this = ManuallyDrop::new(self);
        this.fd.destroy_id(this.id.raw(), this.id)
    }

    /// Gives up ownership: the IOAS stays in the kernel (until
    /// [`Iommufd::destroy_raw`] or until the file is closed) and its id is returned.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// let id = fd.alloc_ioas()?.into_id(); // e.g. for a layer that owns it from now on
    /// fd.destroy_raw(id.raw())?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn into_id(self) -> IoasId {
        ManuallyDrop::new(self).id
    }
}

#[cfg(test)]
impl<'fd> Ioas<'fd> {
    /// A handle for an id this file may not have, for error-path tests.
    pub(crate) fn fake(fd: &'fd Iommufd, id: u32) -> Ioas<'fd> {
        Ioas {
            fd,
            id: IoasId::from_raw(id),
        }
    }
}

impl Drop for Ioas<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.fd.destroy_id(self.id.raw(), self.id) {
            eprintln!("iommufd: dropping {}: {e}", self.id);
        }
    }
}

impl From<&Ioas<'_>> for PtId {
    fn from(ioas: &Ioas<'_>) -> PtId {
        PtId::owned(true, ioas.id.raw(), ioas.fd.token())
    }
}

/// Memory mapped into an IOAS by [`Ioas::map_owned`], owning that memory.
///
/// Dropping it unmaps the range from the IOAS, then frees the memory. If the unmap
/// fails for a reason other than the range being gone already (e.g. `EBUSY` while an
/// in-kernel user holds the pages), the memory is leaked rather than freed, and the
/// error is logged.
///
/// ```no_run
/// use iommufd::{Iommufd, Iova, MapFlags, MmapRegion};
/// let fd = Iommufd::open()?;
/// let ioas = fd.alloc_ioas()?;
/// let ring = ioas.map_owned(MmapRegion::new(1 << 16)?, Some(Iova(0x10_0000)), MapFlags::RW)?;
/// assert_eq!((ring.iova(), ring.len()), (Iova(0x10_0000), 1 << 16));
/// ring.region().write_at(0, &[0; 64])?; // the CPU side of the ring
/// drop(ring); // unmapped from the IOAS, then freed
/// # Ok::<(), iommufd::Error>(())
/// ```
#[must_use = "dropping a Mapping unmaps and frees its memory"]
pub struct Mapping<'a> {
    ioas: &'a Ioas<'a>,
    iova: Iova,
    region: ManuallyDrop<MmapRegion>,
}

impl fmt::Debug for Mapping<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("ioas", &self.ioas.id)
            .field("iova", &self.iova)
            .field("region", &*self.region)
            .finish()
    }
}

impl<'a> Mapping<'a> {
    /// Where devices see the memory.
    ///
    /// ```no_run
    /// # use iommufd::{MapFlags, MmapRegion};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let m = ioas.map_owned(MmapRegion::new(1 << 16)?, None, MapFlags::RW)?;
    /// println!("program the device's DMA address: {}", m.iova());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// The length in bytes.
    ///
    /// ```no_run
    /// # use iommufd::{MapFlags, MmapRegion};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let m = ioas.map_owned(MmapRegion::new(1 << 16)?, None, MapFlags::RW)?;
    /// assert_eq!(m.len(), m.region().len() as u64);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.region.len() as u64
    }

    /// Always `false`: a mapping has at least one byte.
    ///
    /// ```no_run
    /// # use iommufd::{MapFlags, MmapRegion};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let m = ioas.map_owned(MmapRegion::new(1 << 16)?, None, MapFlags::RW)?;
    /// assert!(!m.is_empty());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The IOAS the memory is mapped in.
    ///
    /// ```no_run
    /// # use iommufd::{MapFlags, MmapRegion};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let m = ioas.map_owned(MmapRegion::new(1 << 16)?, None, MapFlags::RW)?;
    /// assert_eq!(m.ioas().id(), ioas.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn ioas(&self) -> &'a Ioas<'a> {
        self.ioas
    }

    /// The memory, for the CPU side of the DMA.
    ///
    /// ```no_run
    /// # use iommufd::{MapFlags, MmapRegion};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let m = ioas.map_owned(MmapRegion::new(1 << 16)?, None, MapFlags::RW)?;
    /// let mut header = [0u8; 16];
    /// m.region().read_at(0, &mut header)?; // what the device wrote
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn region(&self) -> &MmapRegion {
        &self.region
    }

    /// Unmaps the range and returns the memory.
    ///
    /// On failure the memory is leaked (it may still be mapped) and the error
    /// returned.
    ///
    /// ```no_run
    /// # use iommufd::{MapFlags, MmapRegion};
    /// # let fd = iommufd::Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// # let m = ioas.map_owned(MmapRegion::new(1 << 16)?, None, MapFlags::RW)?;
    /// let region = m.unmap()?; // devices can no longer reach it
    /// let m = ioas.map_owned(region, None, MapFlags::READ)?; // map it again, read-only
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn unmap(self) -> Result<MmapRegion> {
        let mut this = ManuallyDrop::new(self);
        match this.unmap_range() {
            Ok(()) => {
                // SAFETY: `this` is never used or dropped again, so the region is
                // taken exactly once.
                Ok(unsafe { ManuallyDrop::take(&mut this.region) })
            }
            Err(e) => Err(e),
        }
    }

    fn unmap_range(&self) -> Result<()> {
        match self.ioas.unmap(self.iova, self.len()) {
            // ENOENT: nothing is mapped there any more (e.g. after `unmap_all`), so
            // devices can no longer reach the memory.
            Ok(_) | Err(Error::UnmapSplit { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Mapping<'_> {
    fn drop(&mut self) {
        match self.unmap_range() {
            Ok(()) => {
                // SAFETY: this is the only place besides `unmap` (which never runs
                // `drop`) that takes the region, and `self` is not used afterwards.
                drop(unsafe { ManuallyDrop::take(&mut self.region) });
            }
            Err(e) => eprintln!(
                "iommufd: unmapping {} bytes at {} from {} failed, leaking the memory: {e}",
                self.len(),
                self.iova,
                self.ioas.id
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_flags_match_the_kernel() {
        assert_eq!(MapFlags::WRITE.bits(), 2);
        assert_eq!(MapFlags::READ.bits(), 4);
        assert_eq!(MapFlags::RW.kernel_flags(None), 6);
        assert_eq!(MapFlags::READ.kernel_flags(Some(Iova(0))), 5);
        assert_eq!(MapFlags::from_bits_retain(7).kernel_flags(None), 6);
    }

    // Real ioctls on /dev/null: every command answers ENOTTY. Objects are built by
    // hand (this file cannot allocate them) and released with `into_id`.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn objects_of_another_file_are_refused_before_the_kernel() {
        let a = Iommufd::open_path("/dev/null").expect("/dev/null");
        let b = Iommufd::open_path("/dev/null").expect("/dev/null");
        let ioas_a = Ioas {
            fd: &a,
            id: IoasId::from_raw(1),
        };
        let ioas_b = Ioas {
            fd: &b,
            id: IoasId::from_raw(1),
        };
        // SAFETY: the call is refused before reaching the kernel; nothing is mapped.
        let e =
            unsafe { ioas_b.copy_from(&ioas_a, Iova(0), None, 4096, MapFlags::RW) }.unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        assert!(e.to_string().contains("ioas 1"));
        // Same file: reaches the kernel, which is /dev/null here.
        // SAFETY: as above, /dev/null maps nothing.
        let e =
            unsafe { ioas_a.copy_from(&ioas_a, Iova(0), None, 4096, MapFlags::RW) }.unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOTTY));
        assert_eq!(ioas_a.into_id(), IoasId::from_raw(1));
        let _ = ioas_b.into_id();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn unmap_errors_on_a_non_iommufd() {
        let fd = Iommufd::open_path("/dev/null").expect("/dev/null");
        let ioas = Ioas::fake(&fd, 7);
        let e = ioas.unmap(Iova(0x1000), 0x1000).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(ioas.unmap_all().unwrap_err().is_unsupported());
        assert!(ioas.iova_ranges().unwrap_err().is_unsupported());
        assert!(
            ioas.allow_iovas(&[IovaRange::FULL])
                .unwrap_err()
                .is_unsupported()
        );
        assert!(ioas.huge_pages().unwrap_err().is_unsupported());
        // The destroy fails (ENOTTY) and returns the error instead of logging it.
        assert!(ioas.destroy().unwrap_err().is_unsupported());
    }

    // Every wrapper reaches the kernel (here /dev/null, which answers ENOTTY) and
    // reports the error with the operation and the object.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn wrappers_name_operation_and_object() {
        let fd = Iommufd::open_path("/dev/null").expect("/dev/null");
        assert!(Ioas::alloc(&fd).unwrap_err().is_unsupported());
        assert!(fd.alloc_ioas().unwrap_err().is_unsupported());
        let ioas = Ioas::fake(&fd, 7);
        assert_eq!(ioas.id(), IoasId::from_raw(7));
        assert_eq!(ioas.iommufd().token(), fd.token());
        assert!(format!("{ioas:?}").contains("IoasId(7)"));
        let region = MmapRegion::new(4096).expect("mmap");
        // SAFETY: the call fails (ENOTTY); nothing is mapped.
        let e = unsafe { ioas.map_user(None, region.as_ptr(), 4096, MapFlags::RW) }.unwrap_err();
        assert!(e.to_string().contains("IOMMU_IOAS_MAP on ioas 7"), "{e}");
        let e = ioas
            .map_file(&fd, 0, 4096, Some(Iova(0)), MapFlags::READ)
            .unwrap_err();
        assert!(
            e.to_string().contains("IOMMU_IOAS_MAP_FILE on ioas 7"),
            "{e}"
        );
        let e = ioas.map_owned(region, None, MapFlags::RW).unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        let e = ioas.set_huge_pages(false).unwrap_err();
        assert!(e.to_string().contains("IOMMU_OPTION on ioas 7"), "{e}");
        let pt = PtId::from(&ioas);
        assert_eq!(pt.raw(), 7);
        assert_eq!(pt.owner(), Some(fd.token()));
        // Dropping an object whose DESTROY fails only logs.
        drop(ioas);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls (mmap, ioctl), which Miri does not run")]
    fn a_mapping_that_cannot_be_unmapped_is_leaked() {
        let fd = Iommufd::open_path("/dev/null").expect("/dev/null");
        let ioas = Ioas::fake(&fd, 3);
        let mapping = |iova| Mapping {
            ioas: &ioas,
            iova: Iova(iova),
            region: ManuallyDrop::new(MmapRegion::new(4096).expect("mmap")),
        };
        let m = mapping(0x1000);
        assert_eq!(
            (m.iova(), m.len(), m.is_empty()),
            (Iova(0x1000), 4096, false)
        );
        assert_eq!(m.ioas().id(), IoasId::from_raw(3));
        assert_eq!(m.region().len(), 4096);
        assert!(format!("{m:?}").contains("iova: Iova(4096)"));
        // The unmap fails (ENOTTY): the memory is not freed, the error returned.
        assert!(m.unmap().unwrap_err().is_unsupported());
        // On drop the failure is logged and the memory leaked.
        drop(mapping(0x2000));
        let _ = ioas.into_id();
    }
}
