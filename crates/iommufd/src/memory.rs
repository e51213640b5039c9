//! Memory the kernel may let devices DMA to: the one trait the safe maps take.

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestRegionMmap, MmapRegion};

use crate::{Error, Result};

/// Where the pages of a [`DmaMemory`] are, as the kernel is told.
///
/// A source names the process memory behind the pages ([`DmaSource::host`],
/// mapped with `IOMMU_IOAS_MAP`), a range of a file ([`DmaSource::file`], mapped with
/// `IOMMU_IOAS_MAP_FILE` on Linux 6.13 and later, where the kernel holds the file
/// itself), or both ([`DmaSource::or_host`]: by file where the kernel can, else by
/// address).
///
/// ```
/// use std::ptr::NonNull;
/// use iommufd::DmaSource;
/// let buf = vec![0u8; 4096].leak();
/// let src = DmaSource::host(NonNull::from(&mut buf[0]), 4096);
/// assert_eq!(src.len(), 4096);
/// assert!(src.is_writable());
/// assert!(!src.read_only().is_writable());
/// ```
#[derive(Clone, Copy)]
pub struct DmaSource<'a> {
    len: u64,
    host: Option<NonNull<u8>>,
    file: Option<(BorrowedFd<'a>, u64)>,
    writable: bool,
}

impl fmt::Debug for DmaSource<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmaSource")
            .field("len", &self.len)
            .field("host", &self.host)
            .field("file", &self.file.map(|(fd, off)| (fd.as_raw_fd(), off)))
            .field("writable", &self.writable)
            .finish()
    }
}

impl<'a> DmaSource<'a> {
    /// `len` bytes of this process's memory at `addr`.
    ///
    /// ```
    /// # use std::ptr::NonNull;
    /// let page = vec![0u8; 4096].leak();
    /// let src = iommufd::DmaSource::host(NonNull::from(&mut page[0]), 4096);
    /// assert_eq!(src.host_addr(), Some(page.as_ptr()));
    /// ```
    pub fn host(addr: NonNull<u8>, len: u64) -> DmaSource<'a> {
        DmaSource {
            len,
            host: Some(addr),
            file: None,
            writable: true,
        }
    }

    /// `len` bytes of `file` from `offset`: a memfd, shmem or hugetlbfs file (or, on
    /// newer kernels, a dma-buf).
    ///
    /// ```
    /// # let file = std::fs::File::open("/dev/null")?;
    /// use std::os::fd::AsFd;
    /// let src = iommufd::DmaSource::file(file.as_fd(), 0, 1 << 21);
    /// assert_eq!(src.host_addr(), None);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn file(fd: BorrowedFd<'a>, offset: u64, len: u64) -> DmaSource<'a> {
        DmaSource {
            len,
            host: None,
            file: Some((fd, offset)),
            writable: true,
        }
    }

    /// The same pages by file, where the kernel maps files (Linux 6.13), and else by
    /// their host address `addr`, a shared mapping of that file range.
    ///
    /// ```
    /// # use std::ptr::NonNull;
    /// # let file = std::fs::File::open("/dev/null")?;
    /// # let mapping = vec![0u8; 4096].leak();
    /// use std::os::fd::AsFd;
    /// let src = iommufd::DmaSource::file(file.as_fd(), 0, 4096).or_host(NonNull::from(&mut mapping[0]));
    /// assert!(src.host_addr().is_some());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn or_host(mut self, addr: NonNull<u8>) -> DmaSource<'a> {
        self.host = Some(addr);
        self
    }

    /// Marks the memory as not writable by the process (e.g. a `PROT_READ` mapping):
    /// mapping it for device writes is refused up front, where the kernel would only
    /// fail when it pins the pages, possibly at a later device attach.
    ///
    /// ```
    /// # use std::ptr::NonNull;
    /// # let page = vec![0u8; 4096].leak();
    /// let src = iommufd::DmaSource::host(NonNull::from(&mut page[0]), 4096).read_only();
    /// assert!(!src.is_writable());
    /// ```
    pub fn read_only(mut self) -> DmaSource<'a> {
        self.writable = false;
        self
    }

    /// The length in bytes.
    ///
    /// ```
    /// # let file = std::fs::File::open("/dev/null")?;
    /// use std::os::fd::AsFd;
    /// assert_eq!(iommufd::DmaSource::file(file.as_fd(), 4096, 8192).len(), 8192);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the length is 0 (mapping it fails).
    ///
    /// ```
    /// # let file = std::fs::File::open("/dev/null")?;
    /// use std::os::fd::AsFd;
    /// assert!(iommufd::DmaSource::file(file.as_fd(), 0, 0).is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The host address, if the source has one.
    ///
    /// ```
    /// # use std::ptr::NonNull;
    /// # let page = vec![0u8; 4096].leak();
    /// let src = iommufd::DmaSource::host(NonNull::from(&mut page[0]), 4096);
    /// assert_eq!(src.host_addr(), Some(page.as_ptr()));
    /// ```
    pub fn host_addr(&self) -> Option<*const u8> {
        self.host.map(|p| p.as_ptr().cast_const())
    }

    /// The file and offset, if the source has one.
    ///
    /// ```
    /// # let file = std::fs::File::open("/dev/null")?;
    /// use std::os::fd::{AsFd, AsRawFd};
    /// let src = iommufd::DmaSource::file(file.as_fd(), 4096, 4096);
    /// assert_eq!(src.file_range().map(|(fd, off)| (fd.as_raw_fd(), off)), Some((file.as_raw_fd(), 4096)));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn file_range(&self) -> Option<(BorrowedFd<'a>, u64)> {
        self.file
    }

    /// Whether devices may be allowed to write the memory.
    ///
    /// ```
    /// # use std::ptr::NonNull;
    /// # let page = vec![0u8; 4096].leak();
    /// assert!(iommufd::DmaSource::host(NonNull::from(&mut page[0]), 4096).is_writable());
    /// ```
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    pub(crate) fn host_ptr(&self) -> Option<NonNull<u8>> {
        self.host
    }

    /// The `len` bytes at `offset` of this source, or `None` if they do not lie in it.
    pub(crate) fn slice(&self, offset: u64, len: u64) -> Option<DmaSource<'a>> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        let host = match self.host {
            // `offset < self.len`, which fits the mapping, which fits the address space.
            Some(p) => Some(NonNull::new(p.as_ptr().wrapping_add(offset as usize))?),
            None => None,
        };
        let file = match self.file {
            Some((fd, off)) => Some((fd, off.checked_add(offset)?)),
            None => None,
        };
        Some(DmaSource {
            len,
            host,
            file,
            writable: self.writable,
        })
    }
}

/// Memory that the kernel may let devices read and write for as long as it is
/// mapped: what [`Ioas::map`](crate::Ioas::map) takes, so that a safe program cannot
/// free or reuse memory a device can still reach.
///
/// The returned [`Mapping`](crate::Mapping) owns the value and unmaps the IOVA range
/// before dropping it (and leaks it if the unmap fails), so the memory stays valid
/// exactly as long as devices can reach it.
///
/// Implemented for vm-memory's guest memory ([`GuestRegionMmap`], [`MmapRegion`],
/// and [`MmapSlice`], a range of one), for [`FileRange`] (part of a memfd), for
/// `Arc` and `Box` of any of them (`Box<dyn DmaMemory>` keeps mappings of different
/// kinds in one list), and by a VMM for its own memory types.
///
/// # Safety
///
/// An implementation promises that, from the first call of
/// [`dma_source`](DmaMemory::dma_source) until the value is dropped:
///
/// - every call returns the same source, and its host range (if any) is mapped in
///   this process with the same pages, readable (and writable unless the source is
///   [`read_only`](DmaSource::read_only)), and is not unmapped, remapped or freed
///   while the value lives;
/// - a file source names a file range whose pages are the ones the host range (if
///   any) maps;
/// - the memory tolerates being read and written by devices at any time: no Rust
///   reference to it assumes its contents stay unchanged (access it with volatile
///   operations or through raw pointers, as vm-memory does).
///
/// ```no_run
/// use std::ptr::NonNull;
/// use iommufd::{DmaMemory, DmaSource, Ioas, Iommufd, MapFlags};
///
/// /// A VMM's own guest memory block (a sketch).
/// struct Block {
///     ptr: NonNull<u8>,
///     len: u64,
/// }
/// // SAFETY for the example: `Block` owns a shared anonymous mapping it unmaps only
/// // on drop, and reads and writes it with volatile operations only.
/// unsafe impl Send for Block {}
/// unsafe impl Sync for Block {}
/// unsafe impl DmaMemory for Block {
///     fn dma_source(&self) -> DmaSource<'_> {
///         DmaSource::host(self.ptr, self.len)
///     }
/// }
/// # fn block() -> Block { unimplemented!() }
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let mapping = ioas.map(block(), None, MapFlags::RW)?;
/// # Ok::<(), iommufd::Error>(())
/// ```
pub unsafe trait DmaMemory: Send + Sync + 'static {
    /// Where the pages are.
    fn dma_source(&self) -> DmaSource<'_>;
}

// SAFETY: an `Arc` keeps the value, and so its memory, alive at least as long as
// itself; the source is the inner value's.
unsafe impl<T: DmaMemory + ?Sized> DmaMemory for Arc<T> {
    fn dma_source(&self) -> DmaSource<'_> {
        (**self).dma_source()
    }
}

// SAFETY: a `Box` owns the value, and so its memory, as long as itself; the source is
// the inner value's. With `Box<dyn DmaMemory>` one list holds mappings of any kind.
unsafe impl<T: DmaMemory + ?Sized> DmaMemory for Box<T> {
    fn dma_source(&self) -> DmaSource<'_> {
        (**self).dma_source()
    }
}

/// The source of a vm-memory mapping: by file if it is a shared mapping of a file
/// (the device and the process then see the same pages), else by host address only.
/// A private file mapping (`MAP_PRIVATE`, as for hugetlbfs with `shared=off` or a
/// VM restored from a snapshot file) must not be mapped by file: devices would see
/// the file's pages while the guest sees its private copies.
fn mmap_source<B: Bitmap>(m: &MmapRegion<B>) -> DmaSource<'_> {
    // `as_ptr` of a vm-memory MmapRegion is never null (mmap never returns 0 for a
    // mapping vm-memory accepts); the dangling pointer below only arises for an
    // impossible null and makes the map fail with EFAULT.
    let host = NonNull::new(m.as_ptr()).unwrap_or(NonNull::dangling());
    let len = m.size() as u64;
    let shared = m.flags() & libc::MAP_SHARED != 0;
    let mut src = match m.file_offset() {
        Some(fo) if shared => DmaSource::file(fo.file().as_fd(), fo.start(), len).or_host(host),
        _ => DmaSource::host(host, len),
    };
    if m.prot() & libc::PROT_WRITE == 0 {
        src = src.read_only();
    }
    src
}

// SAFETY: a vm-memory `MmapRegion` maps `size()` bytes at `as_ptr()` until it is
// dropped (for an owned mapping; for `build_raw`, that is the caller's contract with
// vm-memory), its file offset is the file range mapped there, and vm-memory only
// accesses the memory with volatile operations. B: Send + Sync keeps the value
// shareable.
unsafe impl<B: Bitmap + Send + Sync + 'static> DmaMemory for MmapRegion<B> {
    fn dma_source(&self) -> DmaSource<'_> {
        mmap_source(self)
    }
}

// SAFETY: a `GuestRegionMmap` holds its `MmapRegion` (in an `Arc`) as long as it lives:
// as above.
unsafe impl<B: Bitmap + Send + Sync + 'static> DmaMemory for GuestRegionMmap<B> {
    fn dma_source(&self) -> DmaSource<'_> {
        mmap_source(self)
    }
}

/// A byte range of a vm-memory mapping, holding the mapping alive: what a guest
/// region, or the part of one that a GPA range covers, is mapped as
/// ([`Ioas::map_guest_range`](crate::Ioas::map_guest_range)).
///
/// ```
/// use std::sync::Arc;
/// use iommufd::{DmaMemory, MmapSlice};
/// use vm_memory::MmapRegion;
/// let region = Arc::new(MmapRegion::<()>::new(8 << 20)?);
/// let slice = MmapSlice::new(region.clone(), 2 << 20, 4 << 20)?;
/// assert_eq!(slice.dma_source().len(), 4 << 20);
/// assert_eq!(slice.dma_source().host_addr(), Some(region.as_ptr().wrapping_add(2 << 20).cast_const()));
/// assert!(MmapSlice::new(region, 6 << 20, 4 << 20).is_err()); // past the end
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct MmapSlice<B = ()> {
    region: Arc<MmapRegion<B>>,
    offset: u64,
    len: u64,
}

impl<B: Bitmap> fmt::Debug for MmapSlice<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MmapSlice")
            .field("base", &self.region.as_ptr())
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl<B: Bitmap> MmapSlice<B> {
    /// `len` bytes of `region` from `offset`; [`Error::InvalidArgument`] unless they
    /// lie in it and `len` is not 0.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// let region = Arc::new(vm_memory::MmapRegion::<()>::new(4096)?);
    /// assert!(iommufd::MmapSlice::new(region, 0, 0).is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(region: Arc<MmapRegion<B>>, offset: u64, len: u64) -> Result<MmapSlice<B>> {
        let fits = offset
            .checked_add(len)
            .is_some_and(|end| end <= region.size() as u64);
        if len == 0 || !fits {
            return Err(Error::InvalidArgument {
                op: "MmapSlice::new",
                reason: "the range is empty or does not lie in the region",
            });
        }
        Ok(MmapSlice {
            region,
            offset,
            len,
        })
    }

    /// The whole of `region`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// let region = Arc::new(vm_memory::MmapRegion::<()>::new(4096)?);
    /// assert_eq!(iommufd::MmapSlice::whole(region).len(), 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn whole(region: Arc<MmapRegion<B>>) -> MmapSlice<B> {
        let len = region.size() as u64;
        MmapSlice {
            region,
            offset: 0,
            len,
        }
    }

    /// The mapping the slice is part of.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// let region = Arc::new(vm_memory::MmapRegion::<()>::new(4096)?);
    /// let slice = iommufd::MmapSlice::whole(region.clone());
    /// assert!(Arc::ptr_eq(slice.region(), &region));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn region(&self) -> &Arc<MmapRegion<B>> {
        &self.region
    }

    /// The offset in the mapping.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// let region = Arc::new(vm_memory::MmapRegion::<()>::new(8192)?);
    /// assert_eq!(iommufd::MmapSlice::new(region, 4096, 4096)?.offset(), 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The length in bytes (never 0).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// let region = Arc::new(vm_memory::MmapRegion::<()>::new(8192)?);
    /// assert_eq!(iommufd::MmapSlice::new(region, 4096, 4096)?.len(), 4096);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// let region = Arc::new(vm_memory::MmapRegion::<()>::new(8192)?);
    /// assert!(!iommufd::MmapSlice::whole(region).is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        false
    }
}

// SAFETY: the slice holds its mapping (an `Arc`) and lies inside it (checked in
// `new`); see the `MmapRegion` implementation.
unsafe impl<B: Bitmap + Send + Sync + 'static> DmaMemory for MmapSlice<B> {
    fn dma_source(&self) -> DmaSource<'_> {
        let whole = mmap_source(&self.region);
        // `new` checked that the range lies in the region; the fallback (an empty
        // source, which the kernel refuses) cannot be reached.
        whole
            .slice(self.offset, self.len)
            .unwrap_or(DmaSource { len: 0, ..whole })
    }
}

/// A range of a file the kernel maps by itself (`IOMMU_IOAS_MAP_FILE`, Linux 6.13):
/// a memfd, shmem or hugetlbfs file, or a dma-buf on newer kernels. The kernel takes
/// its own reference to the file and pins its pages, so this needs no host mapping;
/// anything that maps the file sees the devices' writes.
///
/// ```no_run
/// use iommufd::{FileRange, Ioas, Iommufd, MapFlags};
/// # fn memfd(len: u64) -> std::fs::File { unimplemented!() }
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let ram = FileRange::new(memfd(1 << 21), 0, 1 << 21)?;
/// let mapping = ioas.map(ram, None, MapFlags::RW)?;
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Debug)]
pub struct FileRange {
    file: Arc<OwnedFd>,
    offset: u64,
    len: u64,
}

impl FileRange {
    /// `len` bytes of `file` from `offset`. [`Error::InvalidArgument`] if `len` is 0
    /// or the range passes `u64::MAX`; whether the file can be mapped is the
    /// kernel's to say when it is mapped.
    ///
    /// ```
    /// # let f = std::fs::File::open("/dev/null")?;
    /// use iommufd::FileRange;
    /// assert!(FileRange::new(f, u64::MAX, 2).is_err());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn new(file: impl Into<OwnedFd>, offset: u64, len: u64) -> Result<FileRange> {
        FileRange::shared(Arc::new(file.into()), offset, len)
    }

    /// Like [`FileRange::new`], for a file several ranges share (guest RAM in one
    /// memfd, mapped piece by piece).
    ///
    /// ```
    /// # let f = std::fs::File::open("/dev/null")?;
    /// use std::{os::fd::OwnedFd, sync::Arc};
    /// use iommufd::FileRange;
    /// let ram: Arc<OwnedFd> = Arc::new(f.into());
    /// let low = FileRange::shared(ram.clone(), 0, 1 << 20).expect("range");
    /// let high = FileRange::shared(ram, 1 << 20, 1 << 20).expect("range");
    /// assert_eq!(high.offset(), 1 << 20);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn shared(file: Arc<OwnedFd>, offset: u64, len: u64) -> Result<FileRange> {
        if len == 0 || offset.checked_add(len).is_none() {
            return Err(Error::InvalidArgument {
                op: "FileRange::new",
                reason: "the range is empty or passes u64::MAX",
            });
        }
        Ok(FileRange { file, offset, len })
    }

    /// The offset in the file.
    ///
    /// ```
    /// # let f = std::fs::File::open("/dev/null")?;
    /// assert_eq!(iommufd::FileRange::new(f, 4096, 4096).expect("range").offset(), 4096);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The length in bytes (never 0).
    ///
    /// ```
    /// # let f = std::fs::File::open("/dev/null")?;
    /// assert_eq!(iommufd::FileRange::new(f, 0, 4096).expect("range").len(), 4096);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`.
    ///
    /// ```
    /// # let f = std::fs::File::open("/dev/null")?;
    /// assert!(!iommufd::FileRange::new(f, 0, 4096).expect("range").is_empty());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The file.
    ///
    /// ```
    /// # let f = std::fs::File::open("/dev/null")?;
    /// use std::os::fd::AsRawFd;
    /// let raw = f.as_raw_fd();
    /// assert_eq!(iommufd::FileRange::new(f, 0, 1).expect("range").file().as_raw_fd(), raw);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn file(&self) -> &Arc<OwnedFd> {
        &self.file
    }
}

impl From<File> for FileRange {
    /// The first `len` bytes of `file`, its current length (0 if it cannot be read;
    /// such a range is refused when mapped).
    fn from(file: File) -> FileRange {
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        FileRange {
            file: Arc::new(file.into()),
            offset: 0,
            len,
        }
    }
}

// SAFETY: a file source only: the kernel takes its own reference to the file and pins
// its pages, so nothing in this process has to stay mapped.
unsafe impl DmaMemory for FileRange {
    fn dma_source(&self) -> DmaSource<'_> {
        DmaSource::file(self.file.as_fd(), self.offset, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{FileOffset, GuestAddress};

    fn memfd(len: u64) -> File {
        // SAFETY: memfd_create with a NUL-terminated name creates a new fd or fails.
        let fd = unsafe { libc::memfd_create(c"iommufd-unit".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new fd that nothing else owns.
        let f = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        f.set_len(len).expect("ftruncate");
        f
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn shared_file_mappings_map_by_file_private_ones_by_address() {
        let shared = MmapRegion::<()>::from_file(FileOffset::new(memfd(8192), 0), 8192).unwrap();
        let src = shared.dma_source();
        assert!(src.file_range().is_some() && src.host_addr().is_some());
        assert_eq!(src.host_addr(), Some(shared.as_ptr().cast_const()));

        let private = MmapRegion::<()>::build(
            Some(FileOffset::new(memfd(8192), 4096)),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
        )
        .unwrap();
        let src = private.dma_source();
        assert!(
            src.file_range().is_none(),
            "MAP_PRIVATE must not map by file"
        );
        assert_eq!(src.len(), 4096);

        let anon = MmapRegion::<()>::new(4096).unwrap();
        assert!(anon.dma_source().file_range().is_none());
        assert!(anon.dma_source().is_writable());

        let ro = MmapRegion::<()>::build(
            None,
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
        )
        .unwrap();
        assert!(!ro.dma_source().is_writable());

        let region = GuestRegionMmap::new(shared, GuestAddress(0x1000)).unwrap();
        assert_eq!(region.dma_source().len(), 8192);
        let arc = Arc::new(region);
        assert_eq!(arc.dma_source().len(), 8192);
        assert!(format!("{:?}", arc.dma_source()).contains("8192"));
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn slices_lie_in_their_region() {
        let region = Arc::new(
            MmapRegion::<()>::from_file(FileOffset::new(memfd(16384), 4096), 12288).unwrap(),
        );
        let s = MmapSlice::new(region.clone(), 4096, 8192).unwrap();
        let src = s.dma_source();
        assert_eq!(src.len(), 8192);
        assert_eq!(src.file_range().map(|(_, off)| off), Some(8192));
        assert_eq!(
            src.host_addr(),
            Some(region.as_ptr().wrapping_add(4096).cast_const())
        );
        assert_eq!((s.offset(), s.len(), s.is_empty()), (4096, 8192, false));
        assert!(format!("{s:?}").contains("offset: 4096"));
        for (off, len) in [(0, 0), (12288, 1), (4096, 8193), (u64::MAX, 2)] {
            assert!(
                MmapSlice::new(region.clone(), off, len).is_err(),
                "{off} {len}"
            );
        }
        assert_eq!(MmapSlice::whole(region).len(), 12288);
        assert!(src.slice(8192, 1).is_none());
        assert!(src.slice(u64::MAX, 2).is_none());
        assert_eq!(src.slice(4096, 4096).map(|s| s.len()), Some(4096));
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn file_ranges() {
        let f = memfd(4096);
        let r = FileRange::from(f);
        assert_eq!((r.offset(), r.len(), r.is_empty()), (0, 4096, false));
        assert!(r.dma_source().host_addr().is_none());
        assert_eq!(r.dma_source().file_range().map(|(_, o)| o), Some(0));
        assert!(FileRange::new(memfd(1), 0, 0).is_err());
        assert!(FileRange::shared(r.file().clone(), u64::MAX, 1).is_err());
    }
}
