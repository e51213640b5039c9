//! Guest RAM kept mapped in one IOAS at IOVA = GPA through memory hotplug.

use std::collections::BTreeMap;
use std::fmt;

use iommufd::vm_memory::bitmap::Bitmap;
use iommufd::vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};
use iommufd::{Error, Ioas, Iova, MapFlags, Mapping, MmapSlice};

struct Area<B: Bitmap + Send + Sync + 'static> {
    len: u64,
    /// The host address of the memory: a region replaced at the same GPA is
    /// another region.
    host: usize,
    /// Mapped by `plug` (a virtio-mem sub-range), which `sync` leaves alone.
    plugged: bool,
    mapping: Mapping<MmapSlice<B>>,
}

/// What a [`GuestRamSync::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Regions mapped (one `IOMMU_IOAS_MAP` or `MAP_FILE` each).
    pub mapped: usize,
    /// Regions unmapped (one `IOMMU_IOAS_UNMAP` each).
    pub unmapped: usize,
}

/// One IOAS kept equal to a VM's guest RAM at IOVA = GPA: [`GuestRamSync::sync`]
/// after each change of the memory map (DIMM hot-add and hot-remove) maps what is
/// new and unmaps what is gone, one ioctl per region (by file for shared
/// memfd-backed regions where the kernel can, by address otherwise); running it
/// again with the same memory does nothing. If the kernel refuses a step, what
/// this call changed is undone: the IOAS is as it was.
///
/// virtio-mem style sub-ranges go through [`GuestRamSync::plug`] /
/// [`GuestRamSync::unplug`]; leave their regions out of `sync` with
/// [`GuestRamSync::sync_with`].
///
/// ```no_run
/// use iommufd::vm_memory::{GuestAddress, GuestMemoryMmap};
/// use iommufd::{Ioas, Iommufd, MapFlags};
/// use iommufd_viommu::GuestRamSync;
/// let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 30)])?;
/// let mut sync = GuestRamSync::new(Ioas::alloc(&Iommufd::open()?)?, MapFlags::RW);
/// sync.sync(&ram)?;
/// // A DIMM is plugged at 4 GiB:
/// let ram = ram.insert_region(std::sync::Arc::new(
///     iommufd::vm_memory::GuestRegionMmap::from_range(GuestAddress(1 << 32), 1 << 30, None)?,
/// ))?;
/// let report = sync.sync(&ram)?;
/// assert_eq!((report.mapped, report.unmapped), (1, 0));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct GuestRamSync<B: Bitmap + Send + Sync + 'static = ()> {
    ioas: Ioas,
    perms: MapFlags,
    areas: BTreeMap<u64, Area<B>>,
}

impl<B: Bitmap + Send + Sync + 'static> fmt::Debug for GuestRamSync<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestRamSync")
            .field("ioas", &self.ioas.id())
            .field("areas", &self.areas())
            .finish()
    }
}

impl<B: Bitmap + Send + Sync + 'static> GuestRamSync<B> {
    /// Keeps `ioas` in sync, mapping with `perms`. It starts empty: call
    /// [`GuestRamSync::sync`].
    pub fn new(ioas: Ioas, perms: MapFlags) -> Self {
        GuestRamSync {
            ioas,
            perms,
            areas: BTreeMap::new(),
        }
    }

    /// The IOAS.
    pub fn ioas(&self) -> &Ioas {
        &self.ioas
    }

    /// The mapped ranges (GPA, length), in order.
    pub fn areas(&self) -> Vec<(u64, u64)> {
        self.areas.iter().map(|(g, a)| (*g, a.len)).collect()
    }

    /// Makes the IOAS equal to every region of `guest`.
    pub fn sync<M>(&mut self, guest: &M) -> iommufd::Result<SyncReport>
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        self.sync_with(guest, |_| false)
    }

    /// Makes the IOAS equal to the regions of `guest` except those `skip` names
    /// (virtio-mem regions, whose sub-ranges go through
    /// [`GuestRamSync::plug`]).
    pub fn sync_with<M>(
        &mut self,
        guest: &M,
        skip: impl Fn(&GuestRegionMmap<B>) -> bool,
    ) -> iommufd::Result<SyncReport>
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        let wanted: Vec<&GuestRegionMmap<B>> = guest.iter().filter(|r| !skip(r)).collect();
        let is_wanted = |gpa: u64, a: &Area<B>| {
            wanted.iter().any(|r| {
                r.start_addr().0 == gpa && r.len() == a.len && r.as_ptr() as usize == a.host
            })
        };
        let gone: Vec<u64> = self
            .areas
            .iter()
            .filter(|(g, a)| !a.plugged && !is_wanted(**g, a))
            .map(|(g, _)| *g)
            .collect();
        let new: Vec<&GuestRegionMmap<B>> = wanted
            .iter()
            .copied()
            .filter(|r| {
                !self
                    .areas
                    .get(&r.start_addr().0)
                    .is_some_and(|a| a.len == r.len() && a.host == r.as_ptr() as usize)
            })
            .collect();
        // 1. Unmap what is gone, keeping the memory to map it back on failure.
        let mut removed: Vec<(u64, u64, usize, MmapSlice<B>)> = Vec::new();
        for gpa in gone {
            let Some(area) = self.areas.remove(&gpa) else {
                continue;
            };
            match area.mapping.unmap() {
                Ok(slice) => removed.push((gpa, area.len, area.host, slice)),
                Err(refused) => {
                    self.areas.insert(
                        gpa,
                        Area {
                            len: area.len,
                            host: area.host,
                            plugged: false,
                            mapping: refused.object,
                        },
                    );
                    self.restore(removed);
                    return Err(refused.error);
                }
            }
        }
        // 2. Map what is new.
        let mut added = Vec::new();
        for r in new {
            match self.ioas.map_guest_region(r, self.perms) {
                Ok(mapping) => {
                    let gpa = r.start_addr().0;
                    self.areas.insert(
                        gpa,
                        Area {
                            len: r.len(),
                            host: r.as_ptr() as usize,
                            plugged: false,
                            mapping,
                        },
                    );
                    added.push(gpa);
                }
                Err(e) => {
                    for gpa in added {
                        // Dropping the mapping unmaps it.
                        self.areas.remove(&gpa);
                    }
                    self.restore(removed);
                    return Err(e);
                }
            }
        }
        Ok(SyncReport {
            mapped: added.len(),
            unmapped: removed.len(),
        })
    }

    /// Maps the removed areas back after a failed sync.
    fn restore(&mut self, removed: Vec<(u64, u64, usize, MmapSlice<B>)>) {
        for (gpa, len, host, slice) in removed {
            match self.ioas.map(slice, Some(Iova(gpa)), self.perms) {
                Ok(mapping) => {
                    self.areas.insert(
                        gpa,
                        Area {
                            len,
                            host,
                            plugged: false,
                            mapping,
                        },
                    );
                }
                Err(r) => log::error!(
                    "iommufd-viommu: mapping GPA {gpa:#x} (+{len:#x}) back after a failed sync: {}",
                    r.error
                ),
            }
        }
    }

    /// Maps the guest-physical range `gpa..gpa + len` (a virtio-mem block being
    /// plugged) at IOVA = GPA, split at region boundaries. `sync` leaves it alone;
    /// [`GuestRamSync::unplug`] removes it.
    pub fn plug<M>(&mut self, guest: &M, gpa: u64, len: u64) -> iommufd::Result<()>
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        let dma =
            self.ioas
                .map_guest_range(guest, GuestAddress(gpa), len, Iova(gpa), self.perms)?;
        for m in dma.into_mappings() {
            let at = m.iova().raw();
            let host = m.memory().region().as_ptr() as usize + m.memory().offset() as usize;
            self.areas.insert(
                at,
                Area {
                    len: m.len(),
                    host,
                    plugged: true,
                    mapping: m,
                },
            );
        }
        Ok(())
    }

    /// Unmaps the plugged ranges inside `gpa..gpa + len` (a virtio-mem block being
    /// unplugged). The range must cover whole plugged ranges: the kernel never
    /// splits a mapping ([`Error::InvalidArgument`] otherwise, before anything is
    /// unmapped).
    pub fn unplug(&mut self, gpa: u64, len: u64) -> iommufd::Result<usize> {
        let end = gpa.checked_add(len).ok_or(Error::InvalidArgument {
            op: "unplug",
            reason: "the range overflows",
        })?;
        let mut inside = Vec::new();
        for (g, a) in self.areas.range(..end) {
            let a_end = g + a.len;
            if a_end <= gpa {
                continue;
            }
            if !a.plugged || *g < gpa || a_end > end {
                return Err(Error::InvalidArgument {
                    op: "unplug",
                    reason: "the range cuts through a mapped range, or covers a region not plugged",
                });
            }
            inside.push(*g);
        }
        let n = inside.len();
        for g in inside {
            if let Some(a) = self.areas.remove(&g) {
                if let Err(r) = a.mapping.unmap() {
                    self.areas.insert(
                        g,
                        Area {
                            len: a.len,
                            host: a.host,
                            plugged: true,
                            mapping: r.object,
                        },
                    );
                    return Err(r.error);
                }
            }
        }
        Ok(n)
    }
}
