//! Guest RAM kept mapped in one IOAS at IOVA = GPA through memory hotplug.

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;

use iommufd::vm_memory::bitmap::Bitmap;
use iommufd::vm_memory::{GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap};
use iommufd::{
    DirtyReadFlags, DmaMemory, DmaSource, Error, Hwpt, Ioas, Iova, MapFlags, Mapping, MmapSlice,
};

use crate::dirty::{self, DirtySink};
use crate::iova_map::PAGE_SIZE;

/// The memory one kernel mapping covers: one region (or part of one), or
/// several GPA-adjacent regions that are consecutive ranges of one shared file,
/// mapped together by file.
struct Run<B: Bitmap + Send + Sync + 'static> {
    slices: Vec<MmapSlice<B>>,
}

// SAFETY: one slice: its own source (a vm-memory mapping the slice keeps alive).
// Several: `Run::coalesced` only groups shared file mappings of one file at
// consecutive offsets, so `offset..offset + len` of that file is exactly their
// memory; the source names the file only (no host address), so the kernel maps
// the file's pages by its own reference to the file, which outlives any fd or
// mapping here. The slices are kept for the regions' dirty bitmaps.
unsafe impl<B: Bitmap + Send + Sync + 'static> DmaMemory for Run<B> {
    fn dma_source(&self) -> DmaSource<'_> {
        match self.slices.as_slice() {
            [first, _, ..] => {
                let src = first.dma_source();
                let len = self.slices.iter().map(MmapSlice::len).sum();
                match src.file_range() {
                    Some((fd, offset))
                        if self.slices.iter().all(|s| s.dma_source().is_writable()) =>
                    {
                        DmaSource::file(fd, offset, len)
                    }
                    Some((fd, offset)) => DmaSource::file(fd, offset, len).read_only(),
                    // Not built so (see `coalescable`): a source that maps nothing.
                    None => DmaSource::host(std::ptr::NonNull::dangling(), 0),
                }
            }
            [one] => one.dma_source(),
            [] => DmaSource::host(std::ptr::NonNull::dangling(), 0),
        }
    }
}

struct Area<B: Bitmap + Send + Sync + 'static> {
    len: u64,
    /// Mapped by `plug` (a virtio-mem sub-range), which `sync` leaves alone.
    plugged: bool,
    mapping: Mapping<Run<B>>,
}

impl<B: Bitmap + Send + Sync + 'static> Area<B> {
    fn span(&self, gpa: u64) -> Span {
        let mut at = gpa;
        let parts = self
            .mapping
            .memory()
            .slices
            .iter()
            .map(|s| {
                let p = Part {
                    gpa: at,
                    len: s.len(),
                    host: s.region().as_ptr() as usize + s.offset() as usize,
                };
                at += s.len();
                p
            })
            .collect();
        Span {
            gpa,
            len: self.len,
            parts,
            plugged: self.plugged,
        }
    }
}

/// What a [`GuestRamSync::sync`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Ranges mapped: one `IOMMU_IOAS_MAP` or `MAP_FILE` each.
    pub mapped: usize,
    /// Ranges unmapped: one `IOMMU_IOAS_UNMAP` each.
    pub unmapped: usize,
}

/// One IOAS kept equal to a VM's guest RAM at IOVA = GPA: [`GuestRamSync::sync`]
/// after each change of the memory map (DIMM hot-add and hot-remove) maps what is
/// new and unmaps what is gone; running it again with the same memory does
/// nothing. If the kernel refuses a step, what this call changed is undone: the
/// IOAS is as it was.
///
/// One ioctl per contiguous range: shared file mappings (memfd, hugetlbfs) are
/// mapped by file where the kernel can (Linux 6.13), and GPA-adjacent regions
/// that are consecutive ranges of one such file are mapped together, in one
/// `IOMMU_IOAS_MAP_FILE`; other memory is mapped by address, a region at a time.
/// Regions mapped together are unmapped together: if one of them goes, the
/// others are mapped again at once (their DMA is blocked meanwhile). Turn this
/// off with [`GuestRamSync::coalescing`] where hot-removal must not touch
/// neighbours. Regions that are mapped already are never touched by a sync that
/// keeps them.
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
    coalesce: bool,
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
            coalesce: true,
            areas: BTreeMap::new(),
        }
    }

    /// Whether GPA-adjacent regions of one file are mapped together (the
    /// default), for later syncs.
    pub fn coalescing(mut self, on: bool) -> Self {
        self.coalesce = on;
        self
    }

    /// The IOAS.
    pub fn ioas(&self) -> &Ioas {
        &self.ioas
    }

    /// The mapped ranges (GPA, length), in order: one kernel mapping each.
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
        let want: Vec<Part> = wanted.iter().map(|r| Part::of(r)).collect();
        let (gone, new_idx) = plan(&have, &want);
        let keys: Vec<Option<FileKey>> = new_idx.iter().map(|i| file_key(wanted[*i])).collect();
        let runs = if self.coalesce {
            group_runs(&new_idx.iter().map(|i| want[*i]).collect::<Vec<_>>(), &keys)
        } else {
            (0..new_idx.len()).map(|i| i..i + 1).collect()
        };
        // 1. Unmap what is gone, keeping the memory to map it back on failure.
        let mut removed: Vec<(u64, u64, bool, Run<B>)> = Vec::new();
        for gpa in gone {
            let Some(area) = self.areas.remove(&gpa) else {
                continue;
            };
            match area.mapping.unmap() {
                Ok(run) => removed.push((gpa, area.len, area.plugged, run)),
                Err(refused) => {
                    self.areas.insert(
                        gpa,
                        Area {
                            len: area.len,
                            plugged: area.plugged,
                            mapping: refused.object,
                        },
                    );
                    self.restore(removed);
                    return Err(refused.error);
                }
            }
        }
        // 2. Map what is new, a run at a time; a run the kernel cannot map by file
        // (before Linux 6.13) a region at a time.
        let mut added = Vec::new();
        let mut failure = None;
        'runs: for run in runs {
            let regions: Vec<&GuestRegionMmap<B>> = run.map(|k| wanted[new_idx[k]]).collect();
            let tries: Vec<Vec<&GuestRegionMmap<B>>> = match self.map_run(&regions) {
                Ok(()) => {
                    added.push(regions[0].start_addr().0);
                    continue;
                }
                Err(e)
                    if regions.len() > 1
                        && (e.is_unsupported() || e.errno() == Some(libc::EINVAL)) =>
                {
                    regions.iter().map(|r| vec![*r]).collect()
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            for one in tries {
                if let Err(e) = self.map_run(&one) {
                    failure = Some(e);
                    break 'runs;
                }
                added.push(one[0].start_addr().0);
            }
        }
        if let Some(e) = failure {
            for gpa in added {
                // Dropping the mapping unmaps it.
                self.areas.remove(&gpa);
            }
            self.restore(removed);
            return Err(e);
        }
        Ok(SyncReport {
            mapped: added.len(),
            unmapped: removed.len(),
        })
    }

    /// Maps whole regions, GPA-adjacent, in one ioctl.
    fn map_run(&mut self, regions: &[&GuestRegionMmap<B>]) -> iommufd::Result<()> {
        let Some(first) = regions.first() else {
            return Ok(());
        };
        let run = Run {
            slices: regions
                .iter()
                .map(|r| MmapSlice::whole(r.get_mmap()))
                .collect(),
        };
        let len = run.slices.iter().map(MmapSlice::len).sum();
        let gpa = first.start_addr().0;
        let mapping = self.ioas.map(run, Some(Iova(gpa)), self.perms)?;
        self.areas.insert(
            gpa,
            Area {
                len,
                plugged: false,
                mapping,
            },
        );
        Ok(())
    }

    /// Maps the removed areas back after a failed sync.
    fn restore(&mut self, removed: Vec<(u64, u64, bool, Run<B>)>) {
        for (gpa, len, plugged, run) in removed {
            match self.ioas.map(run, Some(Iova(gpa)), self.perms) {
                Ok(mapping) => {
                    self.areas.insert(
                        gpa,
                        Area {
                            len,
                            plugged,
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
        let not = |hole| Error::NotGuestMemory { gpa, len, hole };
        if len == 0 || gpa.checked_add(len - 1).is_none() {
            return Err(not(None));
        }
        let pieces = crate::shadow::pieces(guest, gpa, len);
        let mut at = gpa;
        let mut slices = Vec::new();
        for (piece, memory) in pieces {
            let Some((region, offset)) = memory else {
                return Err(not(Some(at)));
            };
            slices.push((at, MmapSlice::new(region, offset, piece)?));
            at = at.wrapping_add(piece);
        }
        let mut done = Vec::new();
        for (at, slice) in slices {
            let len = slice.len();
            match self.ioas.map(
                Run {
                    slices: vec![slice],
                },
                Some(Iova(at)),
                self.perms,
            ) {
                Ok(mapping) => {
                    self.areas.insert(
                        at,
                        Area {
                            len,
                            plugged: true,
                            mapping,
                        },
                    );
                    done.push(at);
                }
                Err(r) => {
                    for at in done {
                        // Dropping the mapping unmaps it.
                        self.areas.remove(&at);
                    }
                    return Err(r.error);
                }
            }
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
        let runs = dirty::group(self.areas.iter().flat_map(|(gpa, a)| {
            let mut at = *gpa;
            a.mapping.memory().slices.iter().map(move |s| {
                let piece = (at, s.len(), s.region().bitmap(), s.offset() / PAGE_SIZE);
                at += s.len();
                piece
            })
        }));
        dirty::harvest(hwpts, &runs, flags)
    }
}

/// One region (or part of one) as mapped or wanted, for the planning functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Part {
    gpa: u64,
    len: u64,
    /// The host address of the memory: a region replaced at the same GPA is
    /// another region.
    host: usize,
}

impl Part {
    fn of<B: Bitmap>(r: &GuestRegionMmap<B>) -> Part {
        Part {
            gpa: r.start_addr().0,
            len: r.len(),
            host: r.as_ptr() as usize,
        }
    }
}

/// A mapped area, for the planning functions.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Span {
    gpa: u64,
    len: u64,
    parts: Vec<Part>,
    plugged: bool,
}

/// What a sync must do: the GPAs of mapped areas to unmap (any of whose regions
/// is no longer wanted as it is; plugged blocks are never touched), and the
/// indices of wanted regions to map (those not in an area that stays).
fn plan(have: &[Span], want: &[Part]) -> (Vec<u64>, Vec<usize>) {
    let stays = |h: &Span| !h.plugged && h.parts.iter().all(|p| want.contains(p));
    let gone = have
        .iter()
        .filter(|h| !h.plugged && !stays(h))
        .map(|h| h.gpa)
        .collect();
    let new = want
        .iter()
        .enumerate()
        .filter(|(_, w)| !have.iter().any(|h| stays(h) && h.parts.contains(w)))
        .map(|(i, _)| i)
        .collect();
    (gone, new)
}

/// Which file, at which offset, a region maps, and whether it is writable: only
/// for shared file mappings, the only ones the kernel may map by file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileKey {
    dev: u64,
    ino: u64,
    offset: u64,
    writable: bool,
}

fn file_key<B: Bitmap>(r: &GuestRegionMmap<B>) -> Option<FileKey> {
    let m = r.get_mmap();
    if m.flags() & libc::MAP_SHARED == 0 {
        return None;
    }
    let fo = m.file_offset()?;
    let meta = fo.file().metadata().ok()?;
    Some(FileKey {
        dev: meta.dev(),
        ino: meta.ino(),
        offset: fo.start(),
        writable: m.prot() & libc::PROT_WRITE != 0,
    })
}

/// Groups regions (in GPA order) into runs one ioctl can map: GPA-adjacent
/// ranges of one file at consecutive offsets, equally writable. Anything else is
/// a run of its own.
fn group_runs(parts: &[Part], keys: &[Option<FileKey>]) -> Vec<std::ops::Range<usize>> {
    let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
    for i in 0..parts.len() {
        let joins = |prev: usize| match (keys[prev], keys[i]) {
            (Some(a), Some(b)) => {
                parts[prev].gpa + parts[prev].len == parts[i].gpa
                    && (a.dev, a.ino, a.writable) == (b.dev, b.ino, b.writable)
                    && a.offset + parts[prev].len == b.offset
            }
            _ => false,
        };
        match runs.last_mut() {
            Some(r) if joins(i - 1) && r.end == i => r.end = i + 1,
            _ => runs.push(i..i + 1),
        }
    }
    runs
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

    fn part(gpa: u64, len: u64, host: usize) -> Part {
        Part { gpa, len, host }
    }

    fn span(parts: &[Part], plugged: bool) -> Span {
        Span {
            gpa: parts[0].gpa,
            len: parts.iter().map(|p| p.len).sum(),
            parts: parts.to_vec(),
            plugged,
        }
    }

    #[test]
    fn plans_map_what_is_new_and_unmap_what_is_gone() {
        let have = [
            span(&[part(0, 10, 100)], false),
            span(&[part(20, 10, 200)], false),
            span(&[part(40, 4, 300)], true),
        ];
        // Same memory: nothing to do.
        let want = [part(0, 10, 100), part(20, 10, 200)];
        assert_eq!(plan(&have, &want), (vec![], vec![]));
        // A region removed, one added, one replaced at the same GPA by other memory.
        let want = [part(0, 10, 101), part(60, 10, 600)];
        assert_eq!(plan(&have, &want), (vec![0, 20], vec![0, 1]));
        // Plugged blocks are never unmapped by a sync.
        assert_eq!(plan(&have, &[]), (vec![0, 20], vec![]));
        // A region with the plugged block's exact range is still new to sync.
        assert_eq!(plan(&have, &[part(40, 4, 300)]).1, vec![0]);
    }

    #[test]
    fn a_run_goes_whole_and_its_survivors_are_mapped_again() {
        let have = [span(
            &[part(0, 10, 100), part(10, 10, 200), part(20, 10, 300)],
            false,
        )];
        let want = [part(0, 10, 100), part(20, 10, 300)];
        assert_eq!(plan(&have, &want), (vec![0], vec![0, 1]));
        let all = [part(0, 10, 100), part(10, 10, 200), part(20, 10, 300)];
        assert_eq!(plan(&have, &all), (vec![], vec![]));
    }

    #[test]
    fn runs_join_adjacent_ranges_of_one_file_only() {
        let key = |ino, offset| {
            Some(FileKey {
                dev: 1,
                ino,
                offset,
                writable: true,
            })
        };
        let parts = [
            part(0, 10, 1),
            part(10, 10, 2),
            part(20, 10, 3), // another file
            part(30, 10, 4),
            part(45, 10, 5), // a GPA gap
            part(55, 10, 6), // not a file
            part(65, 10, 7),
        ];
        let keys = [
            key(7, 100),
            key(7, 110),
            key(8, 120),
            key(8, 130),
            key(8, 140),
            None,
            key(8, 160),
        ];
        assert_eq!(
            group_runs(&parts, &keys),
            vec![0..2, 2..4, 4..5, 5..6, 6..7]
        );
        let mut gap = keys;
        gap[1] = key(7, 111); // offsets not consecutive
        assert_eq!(group_runs(&parts, &gap)[0], 0..1);
    }

    fn memfd(len: u64) -> std::fs::File {
        // SAFETY: memfd_create with a NUL-terminated name returns a new fd or -1.
        let fd = unsafe { libc::memfd_create(c"ram-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a new fd nothing else owns.
        let f = std::fs::File::from(unsafe {
            <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
        });
        f.set_len(len).unwrap();
        f
    }

    #[test]
    #[cfg_attr(miri, ignore = "memfd_create and file mmaps: Miri cannot run them")]
    fn runs_of_one_file_map_by_file_as_one_source() {
        use iommufd::vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
        let file = std::sync::Arc::new(memfd(3 << 20));
        let at = |i: u64| {
            (
                GuestAddress(i << 20),
                1 << 20,
                Some(FileOffset::from_arc(file.clone(), i << 20)),
            )
        };
        let ram = GuestMemoryMmap::<()>::from_ranges_with_files([at(0), at(1), at(2)]).unwrap();
        let regions: Vec<_> = ram.iter().collect();
        let keys: Vec<_> = regions.iter().map(|r| file_key(r)).collect();
        assert!(keys.iter().all(Option::is_some));
        assert_eq!(keys[1].unwrap().offset, 1 << 20);
        let parts: Vec<Part> = regions.iter().map(|r| Part::of(r)).collect();
        assert_eq!(group_runs(&parts, &keys), vec![0..3]);
        let run = Run {
            slices: regions
                .iter()
                .map(|r| MmapSlice::whole(r.get_mmap()))
                .collect(),
        };
        let src = run.dma_source();
        assert_eq!(src.len(), 3 << 20);
        assert_eq!(src.file_range().map(|(_, off)| off), Some(0));
        assert!(
            src.host_addr().is_none(),
            "by file only: the mappings are not contiguous"
        );
        assert!(src.is_writable());
        // One region: its own source (file and host address).
        let one = Run {
            slices: vec![MmapSlice::whole(regions[0].get_mmap())],
        };
        assert!(one.dma_source().host_addr().is_some());
        // Anonymous memory has no file key.
        let anon = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4096)]).unwrap();
        assert!(file_key(anon.iter().next().unwrap()).is_none());
    }

    #[test]
    fn unplug_covers_whole_blocks_only() {
        let spans = [
            span(&[part(0, 10, 1)], false),
            span(&[part(16, 4, 2)], true),
            span(&[part(20, 4, 3)], true),
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
