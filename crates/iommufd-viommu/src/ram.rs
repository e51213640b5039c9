//! Guest RAM kept mapped in one IOAS at IOVA = GPA through memory hotplug.

use std::collections::BTreeMap;
use std::fmt;

use iommufd::vm_memory::bitmap::Bitmap;
use iommufd::vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};
use iommufd::{DirtyReadFlags, Error, Hwpt, Ioas, Iova, MapFlags, Mapping, MmapSlice};

use crate::dirty::{self, DirtySink};
use crate::iova_map::PAGE_SIZE;

struct Area<B: Bitmap + Send + Sync + 'static> {
    len: u64,
    /// The host address of the memory: a region replaced at the same GPA is
    /// another region.
    host: usize,
    /// Mapped by `plug` (a virtio-mem sub-range), which `sync` leaves alone.
    plugged: bool,
    mapping: Mapping<MmapSlice<B>>,
}

impl<B: Bitmap + Send + Sync + 'static> Area<B> {
    fn span(&self, gpa: u64) -> Span {
        Span {
            gpa,
            len: self.len,
            host: self.host,
            plugged: self.plugged,
        }
    }
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
        let have: Vec<Span> = self.areas.iter().map(|(g, a)| a.span(*g)).collect();
        let want: Vec<Span> = wanted
            .iter()
            .map(|r| Span {
                gpa: r.start_addr().0,
                len: r.len(),
                host: r.as_ptr() as usize,
                plugged: false,
            })
            .collect();
        let (gone, new_idx) = plan(&have, &want);
        let new: Vec<&GuestRegionMmap<B>> = new_idx.into_iter().map(|i| wanted[i]).collect();
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
        let spans: Vec<Span> = self.areas.range(..end).map(|(g, a)| a.span(*g)).collect();
        let inside = unplug_plan(&spans, gpa, end)?;
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

impl<B: Bitmap + DirtySink + Send + Sync + 'static> GuestRamSync<B> {
    /// Reads which pages devices wrote, from `hwpts` (those of the devices on the
    /// IOAS: [`SharedIoas::hwpts`](crate::SharedIoas::hwpts)), and marks them in the
    /// dirty bitmaps of the guest memory regions: a migration round's harvest of
    /// device DMA. One `IOMMU_HWPT_GET_DIRTY_BITMAP` per HWPT and contiguous run
    /// of mapped ranges. Returns the number of dirty bits read.
    ///
    /// The kernel clears what it reports unless `flags` has
    /// [`DirtyReadFlags::NO_CLEAR`] (for the last round, with the devices stopped).
    pub fn harvest_dirty(&self, hwpts: &[Hwpt], flags: DirtyReadFlags) -> iommufd::Result<u64> {
        let runs = dirty::group(self.areas.iter().map(|(gpa, a)| {
            let slice = a.mapping.memory();
            (
                *gpa,
                a.len,
                slice.region().bitmap(),
                slice.offset() / PAGE_SIZE,
            )
        }));
        dirty::harvest(hwpts, &runs, flags)
    }
}

/// A mapped or wanted range, for the planning functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    gpa: u64,
    len: u64,
    host: usize,
    plugged: bool,
}

/// What a sync must do: the GPAs of mapped regions no longer wanted (plugged
/// blocks are never touched), and the indices of wanted regions not mapped as they
/// are (new, or replaced at the same GPA by other memory).
fn plan(have: &[Span], want: &[Span]) -> (Vec<u64>, Vec<usize>) {
    let same = |a: &Span, b: &Span| a.gpa == b.gpa && a.len == b.len && a.host == b.host;
    let gone = have
        .iter()
        .filter(|h| !h.plugged && !want.iter().any(|w| same(h, w)))
        .map(|h| h.gpa)
        .collect();
    let new = want
        .iter()
        .enumerate()
        .filter(|(_, w)| !have.iter().any(|h| !h.plugged && same(h, w)))
        .map(|(i, _)| i)
        .collect();
    (gone, new)
}

/// The plugged ranges an unplug of `gpa..end` removes: it must cover them whole
/// and nothing else that is mapped.
fn unplug_plan(spans: &[Span], gpa: u64, end: u64) -> iommufd::Result<Vec<u64>> {
    let mut inside = Vec::new();
    for s in spans {
        let s_end = s.gpa + s.len;
        if s_end <= gpa || s.gpa >= end {
            continue;
        }
        if !s.plugged || s.gpa < gpa || s_end > end {
            return Err(Error::InvalidArgument {
                op: "unplug",
                reason: "the range cuts through a mapped range, or covers a region not plugged",
            });
        }
        inside.push(s.gpa);
    }
    Ok(inside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(gpa: u64, len: u64, host: usize, plugged: bool) -> Span {
        Span {
            gpa,
            len,
            host,
            plugged,
        }
    }

    #[test]
    fn plans_map_what_is_new_and_unmap_what_is_gone() {
        let have = [
            span(0, 10, 100, false),
            span(20, 10, 200, false),
            span(40, 4, 300, true),
        ];
        // Same memory: nothing to do.
        let want = [span(0, 10, 100, false), span(20, 10, 200, false)];
        assert_eq!(plan(&have, &want), (vec![], vec![]));
        // A region removed, one added, one replaced at the same GPA by other memory.
        let want = [span(0, 10, 101, false), span(60, 10, 600, false)];
        assert_eq!(plan(&have, &want), (vec![0, 20], vec![0, 1]));
        // Plugged blocks are never unmapped by a sync.
        assert_eq!(plan(&have, &[]), (vec![0, 20], vec![]));
        // A region with the plugged block's exact range is still new to sync.
        assert_eq!(plan(&have, &[span(40, 4, 300, false)]).1, vec![0]);
    }

    #[test]
    fn unplug_covers_whole_blocks_only() {
        let spans = [
            span(0, 10, 1, false),
            span(16, 4, 2, true),
            span(20, 4, 3, true),
        ];
        assert_eq!(unplug_plan(&spans, 16, 24).unwrap(), vec![16, 20]);
        assert_eq!(unplug_plan(&spans, 12, 30).unwrap(), vec![16, 20]);
        assert_eq!(unplug_plan(&spans, 30, 40).unwrap(), Vec::<u64>::new());
        assert!(unplug_plan(&spans, 17, 24).is_err(), "cuts a block");
        assert!(
            unplug_plan(&spans, 5, 24).is_err(),
            "covers a region not plugged"
        );
    }
}
