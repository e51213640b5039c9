//! Guest RAM from vm-memory, mapped for DMA at IOVA = GPA (feature `vm-memory`).

use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use vm_memory::bitmap::Bitmap;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MmapRegion};

use crate::{Error, Ioas, Iova, MapFlags, Result};

/// How a guest memory region was mapped.
///
/// ```no_run
/// use iommufd::{Iommufd, MapFlags, MapMethod};
/// use vm_memory::{GuestAddress, GuestMemoryMmap};
///
/// // Anonymous guest memory has no file: it is mapped by its host addresses.
/// let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)])?;
/// # let fd = Iommufd::open()?;
/// # let ioas = fd.alloc_ioas()?;
/// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
/// assert!(dma.areas().all(|a| a.method == MapMethod::UserMemory));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapMethod {
    /// `IOMMU_IOAS_MAP_FILE` of the region's backing file (Linux 6.13).
    File,
    /// `IOMMU_IOAS_MAP` of the region's host virtual addresses.
    UserMemory,
}

/// One region of a [`GuestMemoryMapping`].
///
/// ```no_run
/// # use iommufd::{Iommufd, MapFlags};
/// # use vm_memory::{GuestAddress, GuestMemoryMmap};
/// # let guest: GuestMemoryMmap =
/// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
/// # let fd = Iommufd::open()?;
/// # let ioas = fd.alloc_ioas()?;
/// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
/// let first = dma.areas().next().unwrap();
/// assert_eq!((first.iova.raw(), first.len), (0, 0x10_0000)); // IOVA = GPA
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestArea {
    /// The IOVA, equal to the region's guest physical address.
    pub iova: Iova,
    /// Its length in bytes.
    pub len: u64,
    /// How it was mapped.
    pub method: MapMethod,
}

struct Held<B> {
    area: GuestArea,
    // Keeps the host mapping alive while devices may reach it.
    region: ManuallyDrop<Arc<MmapRegion<B>>>,
}

/// Guest memory mapped into an IOAS by [`Ioas::map_guest_memory`].
///
/// It holds a reference to every region's host mapping, so the memory cannot be
/// freed while devices can reach it. Dropping it unmaps every region; a region whose
/// unmap fails (other than for being gone already) is leaked rather than freed, and
/// the error logged.
///
/// ```no_run
/// # use iommufd::{Iommufd, MapFlags};
/// # use vm_memory::{GuestAddress, GuestMemoryMmap};
/// # let guest: GuestMemoryMmap =
/// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
/// # let fd = Iommufd::open()?;
/// # let ioas = fd.alloc_ioas()?;
/// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
/// // ... attach the VM's passthrough devices to `ioas`, run the guest ...
/// drop(dma); // unmaps every region from `ioas`; `guest` keeps its memory
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a GuestMemoryMapping unmaps the guest memory"]
pub struct GuestMemoryMapping<'a, B: Bitmap = ()> {
    ioas: &'a Ioas<'a>,
    held: Vec<Held<B>>,
}

impl<B: Bitmap> fmt::Debug for GuestMemoryMapping<'_, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemoryMapping")
            .field("ioas", &self.ioas.id())
            .field("areas", &self.areas().collect::<Vec<_>>())
            .finish()
    }
}

impl<'fd> Ioas<'fd> {
    /// Maps all of a VM's memory at IOVA = GPA, the layout a VMM without a vIOMMU
    /// gives its passthrough devices.
    ///
    /// A region backed by a file (memfd, hugetlbfs) is mapped with
    /// `IOMMU_IOAS_MAP_FILE` where the kernel has it, so the kernel holds the file
    /// itself; otherwise, and on older kernels, by its host addresses. Either way the
    /// returned mapping keeps the regions' host mappings alive until it unmaps them, so
    /// this is safe: vm-memory only accesses guest memory with volatile operations,
    /// which devices writing to it concurrently do not invalidate.
    ///
    /// If a region fails to map, the ones mapped before it are unmapped again.
    ///
    /// ```no_run
    /// use iommufd::{Iommufd, MapFlags};
    /// use vm_memory::{GuestAddress, GuestMemoryMmap};
    ///
    /// let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
    ///     (GuestAddress(0), 0x10_0000),
    ///     (GuestAddress(0x20_0000), 0x10_0000),
    /// ])?;
    /// let fd = Iommufd::open()?;
    /// let ioas = fd.alloc_ioas()?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// for area in dma.areas() {
    ///     println!("{} (+{:#x}) via {:?}", area.iova, area.len, area.method);
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn map_guest_memory<B: Bitmap>(
        &self,
        mem: &GuestMemoryMmap<B>,
        perms: MapFlags,
    ) -> Result<GuestMemoryMapping<'_, B>> {
        let mut out = GuestMemoryMapping {
            ioas: self,
            held: Vec::new(),
        };
        for region in mem.iter() {
            let iova = Iova(region.start_addr().0);
            let len = region.len();
            let mmap = region.get_mmap();
            let mut method = MapMethod::UserMemory;
            if let Some(fo) = region.file_offset() {
                match self.map_file(fo.file(), fo.start(), len, Some(iova), perms) {
                    Ok(_) => method = MapMethod::File,
                    Err(e) if e.is_unsupported() => {}
                    Err(e) => return Err(e),
                }
            }
            if method == MapMethod::UserMemory {
                // SAFETY: `mmap` is the region's host mapping, `len` bytes long (a
                // vm-memory invariant); the Arc kept in `out` keeps it mapped until
                // the range is unmapped from this IOAS (drop leaks it if the unmap
                // fails). Guest memory is only accessed through volatile operations,
                // so device accesses do not break any Rust reference's assumptions.
                unsafe { self.map_user(Some(iova), mmap.as_ptr(), len, perms)? };
            }
            out.held.push(Held {
                area: GuestArea { iova, len, method },
                region: ManuallyDrop::new(mmap),
            });
        }
        Ok(out)
    }
}

impl<B: Bitmap> GuestMemoryMapping<'_, B> {
    /// The mapped regions, in guest address order.
    ///
    /// ```no_run
    /// # use iommufd::{Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap =
    /// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// let gpas: Vec<u64> = dma.areas().map(|a| a.iova.raw()).collect();
    /// assert_eq!(gpas, [0, 0x20_0000]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn areas(&self) -> impl Iterator<Item = GuestArea> + '_ {
        self.held.iter().map(|h| h.area)
    }

    /// Total bytes mapped.
    ///
    /// ```no_run
    /// # use iommufd::{Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap =
    /// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// assert_eq!(dma.len(), 2 * 0x10_0000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.held.iter().map(|h| h.area.len).sum()
    }

    /// Always `false`: vm-memory refuses a guest memory without regions.
    ///
    /// ```no_run
    /// # use iommufd::{Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap =
    /// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
    /// # let fd = Iommufd::open()?;
    /// # let ioas = fd.alloc_ioas()?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// assert!(!dma.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

impl<B: Bitmap> Drop for GuestMemoryMapping<'_, B> {
    fn drop(&mut self) {
        for h in &mut self.held {
            match self.ioas.unmap(h.area.iova, h.area.len) {
                // ENOENT: nothing is mapped there any more (e.g. after unmap_all).
                Ok(_) | Err(Error::UnmapSplit { .. }) => {
                    // SAFETY: taken once, here; `self.held` is not used afterwards.
                    drop(unsafe { ManuallyDrop::take(&mut h.region) });
                }
                Err(e) => eprintln!(
                    "iommufd: unmapping guest memory at {} from {}: {e}; leaking the region",
                    h.area.iova,
                    self.ioas.id()
                ),
            }
        }
    }
}
