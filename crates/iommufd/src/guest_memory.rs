//! A VM's guest RAM from vm-memory, mapped for DMA.

use std::fmt;

use vm_memory::bitmap::Bitmap;

use crate::{Error, Ioas, Iova, MapMethod, Mapping, MmapSlice, Refused};

/// One piece of a [`GuestMemoryMapping`].
///
/// ```no_run
/// # use iommufd::{Ioas, Iommufd, MapFlags};
/// # use vm_memory::{GuestAddress, GuestMemoryMmap};
/// # let guest: GuestMemoryMmap =
/// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
/// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
/// let first = dma.areas().next().unwrap();
/// assert_eq!((first.iova.raw(), first.gpa, first.len), (0, 0, 0x10_0000)); // IOVA = GPA
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestArea {
    /// Where devices see it.
    pub iova: Iova,
    /// The guest physical address it maps.
    pub gpa: u64,
    /// Its length in bytes.
    pub len: u64,
    /// How it was mapped.
    pub method: MapMethod,
}

/// Guest memory mapped into an IOAS by [`Ioas::map_guest_memory`] or
/// [`Ioas::map_guest_range`]: one [`Mapping`] per guest region (or part of one).
///
/// Each piece holds its region's host mapping, so the memory cannot be freed while
/// devices can reach it, and its IOAS. Dropping it unmaps every piece (each only if
/// it is still the mapping at its range); a piece whose unmap fails is leaked
/// rather than freed, and the error logged.
///
/// ```no_run
/// # use iommufd::{Ioas, Iommufd, MapFlags};
/// # use vm_memory::{GuestAddress, GuestMemoryMmap};
/// # let guest: GuestMemoryMmap =
/// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
/// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
/// // ... attach the VM's passthrough devices to `ioas`, run the guest ...
/// drop(dma); // unmaps every region from `ioas`; `guest` keeps its memory
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a GuestMemoryMapping unmaps the guest memory"]
pub struct GuestMemoryMapping<B: Bitmap + Send + Sync + 'static = ()> {
    ioas: Ioas,
    /// (GPA, mapping) per piece.
    pieces: Vec<(u64, Mapping<MmapSlice<B>>)>,
}

impl<B: Bitmap + Send + Sync + 'static> fmt::Debug for GuestMemoryMapping<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestMemoryMapping")
            .field("ioas", &self.ioas.id())
            .field("areas", &self.areas().collect::<Vec<_>>())
            .finish()
    }
}

impl<B: Bitmap + Send + Sync + 'static> GuestMemoryMapping<B> {
    pub(crate) fn new(ioas: Ioas) -> Self {
        GuestMemoryMapping {
            ioas,
            pieces: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, gpa: u64, piece: Mapping<MmapSlice<B>>) {
        self.pieces.push((gpa, piece));
    }

    /// The mapped pieces, in IOVA order.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap =
    /// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// let gpas: Vec<u64> = dma.areas().map(|a| a.gpa).collect();
    /// assert_eq!(gpas, [0, 0x20_0000]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn areas(&self) -> impl Iterator<Item = GuestArea> + '_ {
        self.pieces.iter().map(|(gpa, m)| GuestArea {
            iova: m.iova(),
            gpa: *gpa,
            len: m.len(),
            method: m.method(),
        })
    }

    /// Total bytes mapped.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap =
    /// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// assert_eq!(dma.len(), 2 * 0x10_0000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|(_, m)| m.len()).sum()
    }

    /// Whether nothing is mapped (a guest memory without regions).
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)])?;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// assert!(!dma.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The IOAS the memory is mapped in.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)])?;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// assert_eq!(dma.ioas().id(), ioas.id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ioas(&self) -> &Ioas {
        &self.ioas
    }

    /// The mappings, one per piece.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)])?;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// assert!(dma.mappings().all(|m| m.is_mapped()));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mappings(&self) -> impl Iterator<Item = &Mapping<MmapSlice<B>>> + '_ {
        self.pieces.iter().map(|(_, m)| m)
    }

    /// Splits it into its mappings, e.g. to unmap the pieces at different times
    /// (memory hot-unplug of one region).
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap =
    /// #     GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(0x20_0000), 0x10_0000)])?;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let mut pieces = ioas.map_guest_memory(&guest, MapFlags::RW)?.into_mappings();
    /// drop(pieces.pop()); // the second region is unplugged
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn into_mappings(mut self) -> Vec<Mapping<MmapSlice<B>>> {
        std::mem::take(&mut self.pieces)
            .into_iter()
            .map(|(_, m)| m)
            .collect()
    }

    /// Unmaps every piece now. Pieces whose unmap fails come back in the
    /// [`Refused`] error (still mapped, to retry or keep); the others are unmapped.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # use vm_memory::{GuestAddress, GuestMemoryMmap};
    /// # let guest: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)])?;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let dma = ioas.map_guest_memory(&guest, MapFlags::RW)?;
    /// dma.unmap()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unmap(mut self) -> Result<(), Refused<Self>> {
        let mut kept = Vec::new();
        let mut first_error: Option<Error> = None;
        for (gpa, m) in std::mem::take(&mut self.pieces) {
            if let Err(r) = m.unmap() {
                first_error.get_or_insert(r.error);
                kept.push((gpa, r.object));
            }
        }
        match first_error {
            None => Ok(()),
            Some(error) => {
                self.pieces = kept;
                Err(Refused {
                    error,
                    object: self,
                })
            }
        }
    }
}
