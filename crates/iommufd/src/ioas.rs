//! I/O address spaces.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd};

use bitflags::bitflags;
use iommufd_uapi as uapi;
use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};

use crate::ids::kind;
use crate::mapping::Registry;
use crate::object::{Object, sealed::ObjectState};
use crate::sys::{Errno, arg};
use crate::{
    DmaMemory, DmaSource, Error, GuestMemoryMapping, Iommufd, Iova, IovaRange, IovaRanges,
    MapMethod, Mapping, MmapSlice, Refused, Result,
};

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
        const WRITE = uapi::IOMMU_IOAS_MAP_WRITEABLE;
        /// DMA may read the memory (`IOMMU_IOAS_MAP_READABLE`).
        const READ = uapi::IOMMU_IOAS_MAP_READABLE;
    }
}

impl MapFlags {
    /// Readable and writable.
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

/// Whether an IOAS may use huge IOMMU pages (`IOMMU_OPTION_HUGE_PAGES`).
///
/// ```no_run
/// use iommufd::{HugePages, Ioas, Iommufd};
/// let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// assert_eq!(ioas.huge_pages()?, HugePages::Allowed); // the default
/// ioas.set_huge_pages(HugePages::Split)?; // VFIO type1 v1 semantics
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HugePages {
    /// Mappings may use the IOMMU's large page sizes (the default).
    Allowed,
    /// Every mapping is split into `PAGE_SIZE` pages, which raises the IOVA
    /// alignment to `PAGE_SIZE`.
    Split,
}

/// What an IOAS keeps beside its id: the mappings its handles made.
#[derive(Debug, Default)]
pub struct IoasState {
    registry: Registry,
}

impl ObjectState for kind::Ioas {
    type State = IoasState;
}

/// An I/O address space (`IOMMU_IOAS_ALLOC`): the set of IOVA → memory mappings that
/// the devices and HWPTs attached to it see.
///
/// A shared handle ([`Object`]): HWPTs built on it, devices attached to it and
/// [`Mapping`]s in it each hold it, and it is destroyed when the last of them goes.
///
/// Three ways to map memory:
///
/// - [`Ioas::map`] takes any [`DmaMemory`] (vm-memory regions, [`FileRange`]s, a
///   VMM's own memory type) and returns a [`Mapping`] that owns it: the memory is
///   unmapped from the IOAS before it is freed. Safe. [`Ioas::map_guest_memory`],
///   [`Ioas::map_guest_region`] and [`Ioas::map_guest_range`] map a VM's vm-memory
///   guest RAM with it.
/// - [`Ioas::map_file`] maps part of a memfd. Safe: the kernel holds the file's
///   pages itself; the range stays mapped until unmapped by IOVA.
/// - [`Ioas::map_user`] maps any memory of the process. `unsafe`: the memory must
///   stay valid until it is unmapped, which the compiler cannot check.
///
/// ```no_run
/// use std::sync::Arc;
/// use iommufd::{Ioas, Iommufd, Iova, MapFlags};
/// use vm_memory::MmapRegion;
///
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let usable = ioas.iova_ranges()?;
/// let ring = ioas.map(MmapRegion::<()>::new(1 << 20)?, Some(Iova(1 << 32)), MapFlags::RW)?;
/// assert_eq!(ring.iova(), Iova(1 << 32));
/// drop(ring); // unmapped from the IOAS, then freed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`FileRange`]: crate::FileRange
pub type Ioas = Object<kind::Ioas>;

impl Object<kind::Ioas> {
    /// Allocates an empty IOAS (`IOMMU_IOAS_ALLOC`).
    ///
    /// ```no_run
    /// let fd = iommufd::Iommufd::open()?;
    /// let ioas = iommufd::Ioas::alloc(&fd)?;
    /// println!("{}", ioas.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn alloc(fd: &Iommufd) -> Result<Ioas> {
        let mut a: uapi::iommu_ioas_alloc = arg();
        fd.ioctl_plain(uapi::IOMMU_IOAS_ALLOC, &mut a)
            .map_err(|e| Error::from_errno("IOMMU_IOAS_ALLOC", "iommufd", e.0))?;
        Ok(Object::from_parts(
            fd,
            a.out_ioas_id,
            Vec::new(),
            IoasState::default(),
        ))
    }

    fn raw(&self) -> u32 {
        self.id().raw()
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.state().registry
    }

    /// Maps `mem` at `iova` if given (it must be free: `EEXIST` otherwise) or at an
    /// IOVA the kernel chooses, and returns the [`Mapping`] that owns it.
    ///
    /// The memory is mapped by file (`IOMMU_IOAS_MAP_FILE`) where its
    /// [`DmaSource`] names a file and the kernel has the command (Linux 6.13), else by
    /// host address (`IOMMU_IOAS_MAP`). The kernel pins the pages when a device
    /// domain needs them (at once if one is attached, else at the next attach) and
    /// charges them to `RLIMIT_MEMLOCK`.
    ///
    /// On failure the memory comes back in the [`Refused`] error. Mapping read-only
    /// memory for device writes is refused before the kernel is asked.
    ///
    /// ```no_run
    /// use iommufd::{Ioas, Iommufd, MapFlags};
    /// use vm_memory::MmapRegion;
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let m = ioas.map(MmapRegion::<()>::new(1 << 16)?, None, MapFlags::RW)?;
    /// println!("device sees it at {} via {:?}", m.iova(), m.method());
    /// let region = m.unmap()?; // back to plain memory
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map<M: DmaMemory>(
        &self,
        mem: M,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> std::result::Result<Mapping<M>, Refused<M>> {
        let src = mem.dma_source();
        match self.map_source(src, iova, perms) {
            Ok((at, method)) => {
                let len = src.len();
                Ok(Mapping::new(self.clone(), at, len, method, mem))
            }
            Err(error) => Err(Refused { error, object: mem }),
        }
    }

    /// Maps a source and records the mapping for a handle; returns where and how.
    fn map_source(
        &self,
        src: DmaSource<'_>,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> Result<(Iova, MapMethod)> {
        if perms.contains(MapFlags::WRITE) && !src.is_writable() {
            return Err(Error::InvalidArgument {
                op: "IOMMU_IOAS_MAP",
                reason: "the memory is read-only but devices would be allowed to write it",
            });
        }
        if let Some((file, offset)) = src.file_range() {
            match self.map_file_raw(&file, offset, src.len(), iova, perms) {
                Ok(at) => return Ok((at, MapMethod::File)),
                // Kernels before 6.13, or a file the kernel cannot map by file (not
                // shmem or hugetlbfs: EINVAL): by address, if the source has one.
                Err(e)
                    if src.host_ptr().is_some()
                        && (e.is_unsupported() || e.errno() == Some(libc::EINVAL)) => {}
                Err(e) => return Err(e),
            }
        }
        let Some(host) = src.host_ptr() else {
            return Err(Error::InvalidArgument {
                op: "IOMMU_IOAS_MAP",
                reason: "the memory has neither a host address nor a file",
            });
        };
        // SAFETY: `src` comes from a `DmaMemory` whose owner (a `Mapping`) keeps it
        // valid until this range is unmapped, and whose contract allows device access
        // at any time.
        let at = unsafe { self.map_user_raw(host.as_ptr(), src.len(), iova, perms)? };
        Ok((at, MapMethod::UserMemory))
    }

    /// Maps `len` bytes of this process's memory at `va` (`IOMMU_IOAS_MAP`), at
    /// `iova` if given (it must be free: `EEXIST` otherwise) or at an IOVA the kernel
    /// chooses; returns the IOVA. No handle is made: unmap it by IOVA.
    ///
    /// # Safety
    ///
    /// The memory at `va..va + len` must be mapped in this process (writable if
    /// `perms` contains [`MapFlags::WRITE`]) and must stay mapped, and not be used
    /// for anything that devices must not read or write, until the IOVA range is
    /// unmapped from this IOAS *and* from every IOAS it was copied into with
    /// [`Ioas::copy_from`]. Until then devices may access it at any time, so no Rust
    /// reference to it may assume exclusive access. Prefer the safe [`Ioas::map`].
    ///
    /// ```no_run
    /// use iommufd::{Ioas, Iommufd, MapFlags};
    /// use vm_memory::MmapRegion;
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let buf = MmapRegion::<()>::new(4096)?;
    /// // SAFETY: `buf` outlives the mapping: it is unmapped below before `buf` drops.
    /// let iova = unsafe { ioas.map_user(buf.as_ptr(), 4096, None, MapFlags::RW)? };
    /// ioas.unmap(iova, 4096)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub unsafe fn map_user(
        &self,
        va: *const u8,
        len: u64,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> Result<Iova> {
        // SAFETY: this function's own contract.
        let at = unsafe { self.map_user_raw(va, len, iova, perms)? };
        self.registry().evict(at.raw(), len);
        Ok(at)
    }

    /// # Safety
    ///
    /// As [`Ioas::map_user`].
    unsafe fn map_user_raw(
        &self,
        va: *const u8,
        len: u64,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> Result<Iova> {
        let mut a: uapi::iommu_ioas_map = arg();
        a.flags = perms.kernel_flags(iova);
        a.ioas_id = self.raw();
        a.user_va = va as u64;
        a.length = len;
        a.iova = iova.map_or(0, Iova::raw);
        // SAFETY: during the call the kernel only records `user_va..+length` and may
        // pin and read its pages (never writing through it); an invalid range fails
        // with EFAULT. The long-term validity of the memory is the caller's contract.
        unsafe { self.iommufd().ioctl(uapi::IOMMU_IOAS_MAP, &mut a) }
            .map_err(|e| self.map_failed("IOMMU_IOAS_MAP", len, e.0))?;
        Ok(Iova(a.iova))
    }

    /// Maps `len` bytes of a file from `offset` (`IOMMU_IOAS_MAP_FILE`, Linux 6.13):
    /// a memfd (or other shmem/hugetlbfs file), or on newer kernels a supported
    /// dma-buf. Returns the IOVA (`iova` if given, else kernel-chosen). No handle is
    /// made: unmap it by IOVA, or use [`Ioas::map`] with a [`FileRange`] for one.
    ///
    /// Safe, unlike [`Ioas::map_user`]: the kernel takes its own reference to the
    /// file and pins its pages, so closing the fd cannot leave devices pointing at
    /// reused memory. The pages belong to the file: anyone who maps the file sees
    /// the DMA.
    ///
    /// ```no_run
    /// use std::fs::File;
    /// use iommufd::{Ioas, Iommufd, MapFlags};
    /// # fn memfd(len: u64) -> File { unimplemented!() }
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let file = memfd(1 << 21); // e.g. memfd_create + ftruncate
    /// let iova = ioas.map_file(&file, 0, 1 << 21, None, MapFlags::RW)?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    ///
    /// [`FileRange`]: crate::FileRange
    pub fn map_file(
        &self,
        file: &impl AsFd,
        offset: u64,
        len: u64,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> Result<Iova> {
        let at = self.map_file_raw(&file.as_fd(), offset, len, iova, perms)?;
        self.registry().evict(at.raw(), len);
        Ok(at)
    }

    fn map_file_raw(
        &self,
        file: &impl AsFd,
        offset: u64,
        len: u64,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> Result<Iova> {
        let mut a: uapi::iommu_ioas_map_file = arg();
        a.flags = perms.kernel_flags(iova);
        a.ioas_id = self.raw();
        a.fd = file.as_fd().as_raw_fd();
        a.start = offset;
        a.length = len;
        a.iova = iova.map_or(0, Iova::raw);
        self.iommufd()
            .ioctl_plain(uapi::IOMMU_IOAS_MAP_FILE, &mut a)
            .map_err(|e| self.map_failed("IOMMU_IOAS_MAP_FILE", len, e.0))?;
        Ok(Iova(a.iova))
    }

    /// Maps all of a VM's memory at IOVA = GPA, the layout a VMM without a vIOMMU
    /// gives its passthrough devices: one [`Ioas::map_guest_region`] per region.
    ///
    /// Each region is mapped by file where it is a shared mapping of a file (memfd,
    /// hugetlbfs with `share=on`) and the kernel maps files (Linux 6.13), else by its
    /// host addresses; a private file mapping is never mapped by file (devices
    /// would not see the guest's copy-on-write pages). If a region fails to map, the
    /// ones mapped before it are unmapped again.
    ///
    /// ```no_run
    /// use iommufd::{Ioas, Iommufd, MapFlags};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
    ///     (GuestAddress(0), 0x10_0000),
    ///     (GuestAddress(0x20_0000), 0x10_0000),
    /// ])?;
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// for area in dma.areas() {
    ///     println!("{} (+{:#x}) via {:?}", area.iova, area.len, area.method);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_guest_memory<B, M>(&self, mem: &M, perms: MapFlags) -> Result<GuestMemoryMapping<B>>
    where
        B: Bitmap + Send + Sync + 'static,
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        let mut out = GuestMemoryMapping::new(self.clone());
        for region in mem.iter() {
            out.push(region.start_addr().0, self.map_guest_region(region, perms)?);
        }
        Ok(out)
    }

    /// Maps one guest memory region at IOVA = GPA (memory hotplug). The mapping holds
    /// the region's host mapping, so the memory stays valid while devices can
    /// reach it even if the VM removes the region.
    ///
    /// ```no_run
    /// use iommufd::{Ioas, Iommufd, Iova, MapFlags};
    /// use vm_memory::{GuestAddress, GuestRegionMmap, MmapRegion};
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// // A DIMM plugged at 4 GiB.
    /// let dimm = GuestRegionMmap::new(MmapRegion::<()>::new(1 << 30)?, GuestAddress(1 << 32)).unwrap();
    /// let m = ioas.map_guest_region(&dimm, MapFlags::RW)?;
    /// assert_eq!(m.iova(), Iova(1 << 32));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_guest_region<B: Bitmap + Send + Sync + 'static>(
        &self,
        region: &GuestRegionMmap<B>,
        perms: MapFlags,
    ) -> Result<Mapping<MmapSlice<B>>> {
        let slice = MmapSlice::whole(region.get_mmap());
        self.map(slice, Some(Iova(region.start_addr().0)), perms)
            .map_err(Error::from)
    }

    /// Maps the guest-physical range `gpa..gpa + len` at `iova..iova + len`, as a
    /// vIOMMU map request asks (GIOVA → GPA): split where the range crosses guest
    /// memory regions, one mapping per piece, each holding its region's host mapping.
    ///
    /// Fails with [`Error::NotGuestMemory`] before mapping anything if part of the
    /// range is not guest memory (or it is empty or overflows); if a piece fails to
    /// map, the pieces mapped before it are unmapped again.
    ///
    /// ```no_run
    /// use iommufd::{Error, Ioas, Iommufd, Iova, MapFlags};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
    ///     (GuestAddress(0), 1 << 20),
    ///     (GuestAddress(1 << 20), 1 << 20), // adjacent: one range spans both
    /// ])?;
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let dma = ioas.map_guest_range(&guest, GuestAddress(0xff000), 0x2000, Iova(0x8000_0000), MapFlags::READ)?;
    /// assert_eq!(dma.areas().count(), 2);
    /// let hole = ioas.map_guest_range(&guest, GuestAddress(2 << 20), 4096, Iova(0), MapFlags::READ);
    /// assert!(matches!(hole, Err(Error::NotGuestMemory { .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_guest_range<B, M>(
        &self,
        mem: &M,
        gpa: GuestAddress,
        len: u64,
        iova: Iova,
        perms: MapFlags,
    ) -> Result<GuestMemoryMapping<B>>
    where
        B: Bitmap + Send + Sync + 'static,
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        let pieces = guest_pieces(mem, gpa.0, len)?;
        if iova.checked_add(len - 1).is_none() {
            return Err(Error::InvalidArgument {
                op: "map_guest_range",
                reason: "the IOVA range passes u64::MAX",
            });
        }
        let mut out = GuestMemoryMapping::new(self.clone());
        for (region, offset, piece_len, done) in pieces {
            let slice = MmapSlice::new(region, offset, piece_len)?;
            out.push(
                gpa.0 + done,
                self.map(slice, Some(Iova(iova.0 + done)), perms)?,
            );
        }
        Ok(out)
    }

    /// Unmaps `len` bytes at `iova` (`IOMMU_IOAS_UNMAP`) and returns the number of
    /// bytes unmapped. Every mapping inside the range is removed, whoever made it: a
    /// [`Mapping`] handle whose range is gone then frees its memory on drop without
    /// touching the IOAS again.
    ///
    /// The range must cover every mapping it touches completely: the kernel never
    /// splits a mapping. A range that cuts through one, or covers none, fails with
    /// [`Error::UnmapSplit`] (`ENOENT`); [`Error::NotFound`] if the IOAS is gone.
    ///
    /// ```no_run
    /// # use iommufd::{Error, Ioas, Iommufd, Iova, MapFlags};
    /// # use vm_memory::MmapRegion;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let m = ioas.map(MmapRegion::<()>::new(8192)?, Some(Iova(0x10000)), MapFlags::RW)?;
    /// // Half of an 8 KiB mapping cannot be unmapped...
    /// assert!(matches!(ioas.unmap(m.iova(), 4096), Err(Error::UnmapSplit { .. })));
    /// // ...the whole of it can.
    /// assert_eq!(ioas.unmap(m.iova(), 8192)?, 8192);
    /// drop(m); // only frees the memory now
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unmap(&self, iova: Iova, len: u64) -> Result<u64> {
        // With handles' mappings registered, the registry is updated under its lock
        // together with the kernel; without, there is nothing to update.
        let mut areas = (!self.registry().is_empty()).then(|| self.registry().lock());
        let r = self.unmap_raw(iova.raw(), len);
        match r {
            Ok(n) => {
                if let Some(areas) = areas.as_mut() {
                    areas.remove_within(iova.raw(), len);
                }
                Ok(n)
            }
            Err(Errno(libc::ENOENT)) if iova.raw() == 0 && len == u64::MAX => {
                Err(self.missing("IOMMU_IOAS_UNMAP"))
            }
            Err(Errno(libc::ENOENT)) => {
                drop(areas);
                if self.exists() {
                    Err(Error::UnmapSplit {
                        ioas: self.id(),
                        iova,
                        length: len,
                    })
                } else {
                    Err(self.missing("IOMMU_IOAS_UNMAP"))
                }
            }
            Err(e) => Err(Error::from_errno("IOMMU_IOAS_UNMAP", self.id(), e.0)),
        }
    }

    /// Unmaps everything (`IOMMU_IOAS_UNMAP` of `0..=u64::MAX`), e.g. at a VM reset;
    /// returns the number of bytes unmapped (0 for an empty IOAS). Handles of the
    /// removed mappings only free their memory when dropped: they never unmap what
    /// is mapped at their range afterwards.
    ///
    /// ```no_run
    /// use iommufd::{Ioas, Iommufd, MapFlags};
    /// use vm_memory::MmapRegion;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let a = ioas.map(MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
    /// let b = ioas.map(MmapRegion::<()>::new(8192)?, None, MapFlags::READ)?;
    /// assert_eq!(ioas.unmap_all()?, 4096 + 8192);
    /// assert_eq!(ioas.unmap_all()?, 0);
    /// drop((a, b)); // nothing left to unmap: only the memory is freed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unmap_all(&self) -> Result<u64> {
        self.unmap(Iova(0), u64::MAX)
    }

    pub(crate) fn unmap_raw(&self, iova: u64, len: u64) -> std::result::Result<u64, Errno> {
        let mut a: uapi::iommu_ioas_unmap = arg();
        a.ioas_id = self.raw();
        a.iova = iova;
        a.length = len;
        self.iommufd().ioctl_plain(uapi::IOMMU_IOAS_UNMAP, &mut a)?;
        Ok(a.length)
    }

    /// The physical address behind `iova` and how many bytes from there (at most
    /// `max_len`) are physically contiguous (`IOMMU_IOAS_NOIOMMU_GET_PA`, Linux 7.x
    /// with `CONFIG_IOMMUFD_NOIOMMU`).
    ///
    /// Only for an IOAS used by no-IOMMU devices (VFIO's unsafe no-IOMMU mode),
    /// which DMA to physical addresses: the kernel answers `EOPNOTSUPP` for an IOAS
    /// that an IOMMU translates, `ENOENT` for an unmapped IOVA, and `EPERM` to a
    /// caller without `CAP_SYS_RAWIO`. Kernels without the command (or the option)
    /// give [`Error::Unsupported`].
    ///
    /// ```no_run
    /// # fn f(ioas: &iommufd::Ioas) -> iommufd::Result<()> {
    /// use iommufd::Iova;
    /// let (phys, contiguous) = ioas.noiommu_phys(Iova(0x10_0000), 1 << 20)?;
    /// println!("program the device with {phys:#x} ({contiguous:#x} bytes)");
    /// # Ok(()) }
    /// ```
    pub fn noiommu_phys(&self, iova: Iova, max_len: u64) -> Result<(u64, u64)> {
        const OP: &str = "IOMMU_IOAS_NOIOMMU_GET_PA";
        if max_len == 0 {
            return Err(Error::InvalidArgument {
                op: OP,
                reason: "the length to query must not be 0",
            });
        }
        let mut a: uapi::iommu_ioas_noiommu_get_pa = arg();
        a.ioas_id = self.raw();
        a.iova = iova.raw();
        a.length = max_len;
        self.iommufd()
            .ioctl_plain(uapi::IOMMU_IOAS_NOIOMMU_GET_PA, &mut a)
            .map_err(|e| match e.0 {
                libc::ENOENT if !self.exists() => self.missing(OP),
                errno => Error::from_errno(OP, format_args!("{iova} in {}", self.id()), errno),
            })?;
        Ok((a.out_phys, a.length))
    }

    /// The error of a map of `len` bytes: `ENOMEM` is [`Error::PinLimit`] with the
    /// caller's `RLIMIT_MEMLOCK`.
    fn map_failed(&self, op: &'static str, len: u64, errno: i32) -> Error {
        if errno != libc::ENOMEM {
            return Error::naming_object(op, self.id(), errno);
        }
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` into `r`.
        let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
        Error::PinLimit {
            op,
            ioas: self.id(),
            requested: len,
            limit: (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur),
        }
    }

    /// Whether the kernel still has this IOAS (a lookup with `IOMMU_IOAS_IOVA_RANGES`
    /// asking for no ranges), to tell a missing IOAS from other `ENOENT`s.
    pub(crate) fn exists(&self) -> bool {
        let mut a: uapi::iommu_ioas_iova_ranges = arg();
        a.ioas_id = self.raw();
        // SAFETY: `num_iovas` is 0 and `allowed_iovas` null: the kernel writes no
        // ranges, only the counts in the structure itself.
        let r = unsafe { self.iommufd().ioctl(uapi::IOMMU_IOAS_IOVA_RANGES, &mut a) };
        !matches!(r, Err(Errno(libc::ENOENT)))
    }

    fn missing(&self, op: &'static str) -> Error {
        Error::NotFound {
            op,
            object: self.id().to_string(),
            errno: libc::ENOENT,
        }
    }

    /// Maps into this IOAS the pages that `src` maps at `src_iova..+len`
    /// (`IOMMU_IOAS_COPY`), at `iova` if given or at a kernel-chosen IOVA; returns
    /// the IOVA. `src` may be this IOAS. No handle is made: unmap it by IOVA.
    ///
    /// Every byte of the source range must be mapped (`ENOENT` otherwise); it may be
    /// part of a mapping or span several. The pages are shared, not copied, and pinned
    /// only once.
    ///
    /// # Safety
    ///
    /// The copy refers to the same memory as the source mapping: whatever made the
    /// source mapping valid must keep holding until the copy is unmapped too. A
    /// [`Mapping`] frees its memory after unmapping only its own range, so the copy of
    /// one must be unmapped before the `Mapping` is dropped; for a source made with
    /// [`Ioas::map_user`], the memory must stay mapped until both are unmapped.
    /// Copies of [`Ioas::map_file`] mappings are always fine.
    ///
    /// ```no_run
    /// use iommufd::{Ioas, Iommufd, MapFlags};
    /// # fn memfd(len: u64) -> std::fs::File { unimplemented!() }
    /// let fd = Iommufd::open()?;
    /// let (src, dst) = (Ioas::alloc(&fd)?, Ioas::alloc(&fd)?);
    /// let iova = src.map_file(&memfd(1 << 20), 0, 1 << 20, None, MapFlags::RW)?;
    /// // SAFETY: copies of `map_file` mappings need nothing more.
    /// let copy = unsafe { dst.copy_from(&src, iova, 1 << 20, None, MapFlags::READ)? };
    /// println!("{iova} of {} is {copy} of {}", src.id(), dst.id());
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub unsafe fn copy_from(
        &self,
        src: &Ioas,
        src_iova: Iova,
        len: u64,
        iova: Option<Iova>,
        perms: MapFlags,
    ) -> Result<Iova> {
        src.check_file(self.iommufd(), "IOMMU_IOAS_COPY")?;
        let mut a: uapi::iommu_ioas_copy = arg();
        a.flags = perms.kernel_flags(iova);
        a.dst_ioas_id = self.raw();
        a.src_ioas_id = src.raw();
        a.length = len;
        a.dst_iova = iova.map_or(0, Iova::raw);
        a.src_iova = src_iova.raw();
        self.iommufd()
            .ioctl_plain(uapi::IOMMU_IOAS_COPY, &mut a)
            .map_err(|e| match e.0 {
                libc::ENOMEM => self.map_failed("IOMMU_IOAS_COPY", len, e.0),
                errno => Error::from_errno("IOMMU_IOAS_COPY", self.id(), errno),
            })?;
        self.registry().evict(a.dst_iova, len);
        Ok(Iova(a.dst_iova))
    }

    /// The IOVA ranges usable for mapping and their alignment
    /// (`IOMMU_IOAS_IOVA_RANGES`).
    ///
    /// Asks for the count first and repeats if the kernel answers `EMSGSIZE` (ranges
    /// changed in between). More than [`Ioas::MAX_IOVA_RANGES`] ranges is an
    /// [`Error::UnexpectedValue`] rather than an allocation of any size the kernel
    /// names.
    ///
    /// ```no_run
    /// let ioas = iommufd::Ioas::alloc(&iommufd::Iommufd::open()?)?;
    /// for r in ioas.iova_ranges()?.ranges {
    ///     println!("usable: {r}");
    /// }
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iova_ranges(&self) -> Result<IovaRanges> {
        const OP: &str = "IOMMU_IOAS_IOVA_RANGES";
        let mut buf: Vec<uapi::iommu_iova_range> = Vec::new();
        // Ranges only change on attach/detach/reserve; a few rounds always suffice.
        for _ in 0..16 {
            let mut a: uapi::iommu_ioas_iova_ranges = arg();
            a.ioas_id = self.raw();
            a.num_iovas = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            a.allowed_iovas = if buf.is_empty() {
                0
            } else {
                buf.as_mut_ptr() as u64
            };
            // SAFETY: `allowed_iovas` is null with `num_iovas` 0, or points to `buf`,
            // which holds `num_iovas` initialized elements and is not otherwise
            // borrowed during the call; the kernel writes at most `num_iovas` of them.
            let r = unsafe { self.iommufd().ioctl(uapi::IOMMU_IOAS_IOVA_RANGES, &mut a) };
            match r {
                Ok(()) => {
                    buf.truncate(a.num_iovas as usize);
                    return Ok(IovaRanges {
                        ranges: buf.iter().filter_map(IovaRange::from_uapi).collect(),
                        alignment: a.out_iova_alignment,
                    });
                }
                Err(Errno(libc::EMSGSIZE)) if a.num_iovas as usize > buf.len() => {
                    if a.num_iovas > Self::MAX_IOVA_RANGES {
                        return Err(Error::UnexpectedValue {
                            op: OP,
                            value: a.num_iovas.into(),
                        });
                    }
                    buf.resize(a.num_iovas as usize, uapi::iommu_iova_range::default());
                }
                Err(e) => return Err(Error::naming_object(OP, self.id(), e.0)),
            }
        }
        Err(Error::from_errno(OP, self.id(), libc::EMSGSIZE))
    }

    /// The most IOVA ranges [`Ioas::iova_ranges`] accepts from the kernel: far more
    /// than any IOMMU reports (a few reserved windows split the space into a handful).
    pub const MAX_IOVA_RANGES: u32 = 4096;

    /// Restricts the IOVAs kernel-chosen mappings use, and guarantees they stay
    /// usable (`IOMMU_IOAS_ALLOW_IOVAS`). Replaces the previous list; an empty list
    /// removes the restriction.
    ///
    /// Fails with `EADDRINUSE` if a range overlaps a reserved region; afterwards,
    /// attaching a device whose IOMMU cannot provide the ranges fails.
    ///
    /// ```no_run
    /// use iommufd::{Ioas, Iommufd, Iova, IovaRange};
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// ioas.allow_iovas(&[IovaRange::from_len(Iova(1 << 32), 1 << 32).unwrap()])?;
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn allow_iovas(&self, ranges: &[IovaRange]) -> Result<()> {
        let list: Vec<uapi::iommu_iova_range> = ranges.iter().map(|r| r.to_uapi()).collect();
        let mut a: uapi::iommu_ioas_allow_iovas = arg();
        a.ioas_id = self.raw();
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
        unsafe { self.iommufd().ioctl(uapi::IOMMU_IOAS_ALLOW_IOVAS, &mut a) }
            .map_err(|e| Error::naming_object("IOMMU_IOAS_ALLOW_IOVAS", self.id(), e.0))
    }

    /// Allows huge IOMMU pages for this IOAS or splits every mapping into
    /// `PAGE_SIZE` pages (`IOMMU_OPTION_HUGE_PAGES`; allowed by default).
    ///
    /// Splitting raises the IOVA alignment to `PAGE_SIZE` (VFIO type1 v1 semantics),
    /// so it fails with `EADDRINUSE` while a mapping is not `PAGE_SIZE` aligned.
    ///
    /// ```no_run
    /// use iommufd::{HugePages, Ioas, Iommufd};
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// ioas.set_huge_pages(HugePages::Split)?; // before mapping anything
    /// assert_eq!(ioas.huge_pages()?, HugePages::Split);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn set_huge_pages(&self, huge: HugePages) -> Result<()> {
        let v = match huge {
            HugePages::Allowed => 1,
            HugePages::Split => 0,
        };
        self.iommufd()
            .option(
                uapi::IOMMU_OPTION_HUGE_PAGES,
                Some(v),
                self.raw(),
                self.id(),
            )
            .map(drop)
    }

    /// Whether huge IOMMU pages are allowed (`IOMMU_OPTION_HUGE_PAGES`).
    ///
    /// ```no_run
    /// use iommufd::{HugePages, Ioas, Iommufd};
    /// let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// assert_eq!(ioas.huge_pages()?, HugePages::Allowed);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn huge_pages(&self) -> Result<HugePages> {
        let v =
            self.iommufd()
                .option(uapi::IOMMU_OPTION_HUGE_PAGES, None, self.raw(), self.id())?;
        match v {
            0 => Ok(HugePages::Split),
            1 => Ok(HugePages::Allowed),
            value => Err(Error::UnexpectedValue {
                op: "IOMMU_OPTION_HUGE_PAGES",
                value,
            }),
        }
    }
}

/// The pieces of guest memory `gpa..gpa + len` covers: (mapping, offset in it,
/// length, offset from `gpa`), or [`Error::NotGuestMemory`] if any byte is not guest
/// memory.
#[allow(clippy::type_complexity)]
fn guest_pieces<B, M>(
    mem: &M,
    gpa: u64,
    len: u64,
) -> Result<Vec<(std::sync::Arc<vm_memory::MmapRegion<B>>, u64, u64, u64)>>
where
    B: Bitmap,
    M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
{
    let not = |hole| Error::NotGuestMemory { gpa, len, hole };
    if len == 0 || gpa.checked_add(len - 1).is_none() {
        return Err(not(None));
    }
    let mut pieces = Vec::new();
    let mut done = 0u64;
    while done < len {
        let at = gpa + done;
        let region = mem.find_region(GuestAddress(at)).ok_or(not(Some(at)))?;
        let offset = at - region.start_addr().0;
        let piece = (region.len() - offset).min(len - done);
        pieces.push((region.get_mmap(), offset, piece, done));
        done += piece;
    }
    Ok(pieces)
}

impl fmt::Display for HugePages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HugePages::Allowed => "huge pages allowed",
            HugePages::Split => "split into PAGE_SIZE pages",
        })
    }
}

#[cfg(test)]
impl Object<kind::Ioas> {
    /// A handle for an id this file may not have, for error-path tests.
    pub(crate) fn fake(fd: &Iommufd, id: u32) -> Ioas {
        Object::from_parts(fd, id, Vec::new(), IoasState::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::tests::null;
    use vm_memory::{GuestMemoryMmap, MmapRegion};

    #[test]
    fn map_flags_match_the_kernel() {
        assert_eq!(MapFlags::WRITE.bits(), 2);
        assert_eq!(MapFlags::READ.bits(), 4);
        assert_eq!(MapFlags::RW.kernel_flags(None), 6);
        assert_eq!(MapFlags::READ.kernel_flags(Some(Iova(0))), 5);
        assert_eq!(MapFlags::from_bits_retain(7).kernel_flags(None), 6);
        assert_eq!(HugePages::Split.to_string(), "split into PAGE_SIZE pages");
        assert_eq!(HugePages::Allowed.to_string(), "huge pages allowed");
    }

    // Real ioctls on /dev/null: every command answers ENOTTY. Objects are built by
    // hand (this file cannot allocate them) and released with `into_id`.
    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn objects_of_another_file_are_refused_before_the_kernel() {
        let a = null();
        let b = null();
        let ioas_a = Ioas::fake(&a, 1);
        let ioas_b = Ioas::fake(&b, 1);
        // SAFETY: the call is refused before reaching the kernel; nothing is mapped.
        let e =
            unsafe { ioas_b.copy_from(&ioas_a, Iova(0), 4096, None, MapFlags::RW) }.unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        assert!(e.to_string().contains("ioas 1"));
        // Same file: reaches the kernel, which is /dev/null here.
        // SAFETY: as above, /dev/null maps nothing.
        let e =
            unsafe { ioas_a.copy_from(&ioas_a, Iova(0), 4096, None, MapFlags::RW) }.unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOTTY));
        assert_eq!(ioas_a.into_id().raw(), 1);
        let _ = ioas_b.into_id();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn errors_on_a_non_iommufd() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 7);
        let e = ioas.noiommu_phys(Iova(0x1000), 8).unwrap_err();
        assert!(
            e.is_unsupported() && e.to_string().contains("ioas 7"),
            "{e}"
        );
        let e = ioas.noiommu_phys(Iova(0x1000), 0).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        assert!(fd.vfio_compat_ioas().unwrap_err().is_unsupported());
        assert!(fd.set_vfio_compat_ioas(&ioas).unwrap_err().is_unsupported());
        assert!(fd.clear_vfio_compat_ioas().unwrap_err().is_unsupported());
        let other = null();
        let foreign = Ioas::fake(&other, 7);
        let e = fd.set_vfio_compat_ioas(&foreign).unwrap_err();
        assert!(matches!(e, Error::WrongIommufd { .. }), "{e}");
        let _ = foreign.into_id();
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
        let e = ioas.set_huge_pages(HugePages::Split).unwrap_err();
        assert!(e.to_string().contains("IOMMU_OPTION on ioas 7"), "{e}");
        assert!(Ioas::alloc(&fd).unwrap_err().is_unsupported());
        let region = MmapRegion::<()>::new(4096).expect("mmap");
        // SAFETY: the call fails (ENOTTY); nothing is mapped.
        let e = unsafe { ioas.map_user(region.as_ptr(), 4096, None, MapFlags::RW) }.unwrap_err();
        assert!(e.to_string().contains("IOMMU_IOAS_MAP on ioas 7"), "{e}");
        let e = ioas
            .map_file(&fd, 0, 4096, Some(Iova(0)), MapFlags::READ)
            .unwrap_err();
        assert!(
            e.to_string().contains("IOMMU_IOAS_MAP_FILE on ioas 7"),
            "{e}"
        );
        // A failed map gives the memory back.
        let r = ioas.map(region, None, MapFlags::RW).unwrap_err();
        assert!(r.error.is_unsupported(), "{}", r.error);
        assert_eq!(r.object.size(), 4096);
        // Read-only memory is refused for device writes before the kernel is asked.
        let ro = MmapRegion::<()>::build(
            None,
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )
        .expect("mmap");
        let r = ioas.map(ro, None, MapFlags::RW).unwrap_err();
        assert!(
            matches!(r.error, Error::InvalidArgument { .. }),
            "{}",
            r.error
        );
        assert!(r.object.size() == 4096);
        // The destroy fails (ENOTTY) and gives the handle back.
        let r = ioas.destroy().unwrap_err();
        assert!(r.error.is_unsupported());
        let _ = r.object.into_id();
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn guest_ranges_are_checked_before_the_kernel() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 3);
        let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x2000),
            (GuestAddress(0x2000), 0x1000),
        ])
        .expect("guest memory");
        for (gpa, len, hole) in [
            (0x2000, 0x2000, Some(0x3000)),
            (0x4000, 1, Some(0x4000)),
            (0, 0, None),
            (u64::MAX, 2, None),
        ] {
            let e = ioas
                .map_guest_range(&guest, GuestAddress(gpa), len, Iova(0), MapFlags::RW)
                .unwrap_err();
            assert!(
                matches!(e, Error::NotGuestMemory { hole: h, .. } if h == hole),
                "{gpa:#x}+{len:#x}: {e}"
            );
        }
        let e = ioas
            .map_guest_range(
                &guest,
                GuestAddress(0),
                0x1000,
                Iova(u64::MAX),
                MapFlags::RW,
            )
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
        let pieces = guest_pieces(&guest, 0x1000, 0x2000).expect("pieces");
        let shape: Vec<_> = pieces.iter().map(|p| (p.1, p.2, p.3)).collect();
        assert_eq!(shape, [(0x1000, 0x1000, 0), (0, 0x1000, 0x1000)]);
        // Valid, but /dev/null refuses the first piece: nothing is left mapped.
        let e = ioas
            .map_guest_range(
                &guest,
                GuestAddress(0x1000),
                0x2000,
                Iova(0x10_0000),
                MapFlags::RW,
            )
            .unwrap_err();
        assert!(e.is_unsupported(), "{e}");
        assert!(ioas.map_guest_memory(&guest, MapFlags::RW).is_err());
        let _ = ioas.into_id();
    }
}
