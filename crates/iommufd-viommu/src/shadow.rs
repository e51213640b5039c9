//! A shadow-mapping engine: the guest domains of a vIOMMU without hardware nesting
//! (virtio-iommu, VT-d in caching mode) kept as IOAS mappings of the memory behind
//! the guest's GPAs.

use std::fmt;
use std::sync::Arc;

use iommufd::vm_memory::bitmap::Bitmap;
use iommufd::vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MmapRegion,
};
use iommufd::{
    Device, DirtyReadFlags, Error, HwptFlags, HwptId, Ioas, Iova, MapFlags, Mapping, MmapSlice,
};

use crate::dirty::{self, DirtySink};

use crate::iova_map::{Extent, IovaMap, check_range};
use crate::shared::SharedIoas;
use crate::virtio::Status;

/// Why the shadow engine refused a request. Guest-supplied ranges are checked
/// before anything changes: those errors leave the domain as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShadowError {
    /// A range of length zero.
    #[error("{op}: the range is empty")]
    EmptyRange {
        /// The request (`map`, `unmap`).
        op: &'static str,
    },
    /// An address or length that is not a multiple of 4 KiB.
    #[error("{op}: {addr:#x} is not 4 KiB aligned")]
    Unaligned {
        /// The request.
        op: &'static str,
        /// The address or length.
        addr: u64,
    },
    /// A range that passes the end of the 64-bit space.
    #[error("{op}: {addr:#x} + {len:#x} passes 2^64")]
    Overflow {
        /// The request.
        op: &'static str,
        /// The start.
        addr: u64,
        /// The length.
        len: u64,
    },
    /// A map without read or write permission.
    #[error("map: IOVA {iova:#x}: neither read nor write allowed")]
    NoPermission {
        /// The IOVA.
        iova: u64,
    },
    /// Part of the guest-physical range is not guest RAM.
    #[error("map: GPA {gpa:#x} (+{len:#x}) is not guest RAM")]
    NotRam {
        /// The start of the range.
        gpa: u64,
        /// Its length.
        len: u64,
    },
    /// Part of the IOVA range is mapped already.
    #[error("map: IOVA {iova:#x} overlaps the mapping {existing}")]
    Overlap {
        /// The IOVA asked for.
        iova: u64,
        /// A mapping in the way.
        existing: Extent,
    },
    /// The map holds 2^32 extents.
    #[error("too many mappings in one domain")]
    TooManyExtents,
    /// A partial unmap removed the covering mapping, but mapping what was left of
    /// it back failed: that part is recorded unmapped in the kernel, and the next
    /// [`ShadowDomain::replay`] tries again.
    #[error("unmap: mapping the remainder at IOVA {iova:#x} (+{len:#x}) back failed: {source}")]
    Remainder {
        /// The IOVA of the remainder.
        iova: u64,
        /// Its length.
        len: u64,
        /// Why.
        #[source]
        source: iommufd::Error,
    },
    /// The guest named a domain that does not exist.
    #[error("unknown domain {domain}")]
    UnknownDomain {
        /// The domain id.
        domain: u32,
    },
    /// The guest named an endpoint the device model does not have.
    #[error("unknown endpoint {endpoint}")]
    UnknownEndpoint {
        /// The endpoint id.
        endpoint: u32,
    },
    /// The endpoint is not attached to that domain.
    #[error("endpoint {endpoint} is not attached to domain {domain}")]
    NotAttached {
        /// The endpoint id.
        endpoint: u32,
        /// The domain id.
        domain: u32,
    },
    /// The endpoint id is taken already.
    #[error("endpoint {endpoint} exists already")]
    EndpointExists {
        /// The endpoint id.
        endpoint: u32,
    },
    /// A bypass domain was asked to map or unmap, or an attach asked for a bypass
    /// domain where a mapped one exists (or the reverse).
    #[error("domain {domain}: bypass or not, not as the request expects")]
    Bypass {
        /// The domain id.
        domain: u32,
    },
    /// The request needs something the device model does not offer (a bypass
    /// domain without a bypass page table, MMIO mappings, mapping a bypass domain).
    #[error("unsupported: {what}")]
    Unsupported {
        /// What.
        what: &'static str,
    },
    /// The kernel refused.
    #[error(transparent)]
    Iommufd(#[from] iommufd::Error),
}

impl ShadowError {
    /// The virtio-iommu status that answers a request refused with this error.
    ///
    /// ```
    /// use iommufd_viommu::ShadowError;
    /// use iommufd_viommu::virtio::Status;
    /// assert_eq!(ShadowError::NotRam { gpa: 0, len: 4096 }.status(), Status::Range);
    /// assert_eq!(ShadowError::UnknownDomain { domain: 3 }.status(), Status::NoEnt);
    /// ```
    pub fn status(&self) -> Status {
        match self {
            ShadowError::EmptyRange { .. }
            | ShadowError::Unaligned { .. }
            | ShadowError::NoPermission { .. }
            | ShadowError::Overlap { .. }
            | ShadowError::NotAttached { .. }
            | ShadowError::Bypass { .. }
            | ShadowError::EndpointExists { .. } => Status::Inval,
            ShadowError::Overflow { .. } | ShadowError::NotRam { .. } => Status::Range,
            ShadowError::UnknownDomain { .. } | ShadowError::UnknownEndpoint { .. } => {
                Status::NoEnt
            }
            ShadowError::Unsupported { .. } => Status::Unsupp,
            ShadowError::TooManyExtents => Status::NoMem,
            ShadowError::Remainder { .. } => Status::DevErr,
            ShadowError::Iommufd(e) => match e.errno() {
                Some(libc::ENOMEM) | Some(libc::ENOSPC) => Status::NoMem,
                Some(libc::EFAULT) => Status::Fault,
                _ => Status::DevErr,
            },
        }
    }
}

/// What a [`ShadowDomain::replay`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Kernel mappings removed (their memory left the guest or changed).
    pub unmapped: usize,
    /// Kernel mappings made (for memory that came, or came back).
    pub mapped: usize,
    /// Guest mappings left without memory behind them (DMA there faults).
    pub unbacked: usize,
}

/// The kernel mapping of an extent, or `None` while no guest RAM is behind it.
type Backing<B> = Option<Mapping<MmapSlice<B>>>;

/// One guest I/O domain of a vIOMMU without hardware nesting, shadowed in its own
/// IOAS: the guest's map and unmap requests (GIOVA, GPA, length, permissions)
/// become IOAS mappings of the memory behind the GPAs, and devices attached to
/// the domain DMA through them.
///
/// - A mapping is split where it crosses guest memory regions (each piece is one
///   kernel mapping of one region's memory).
/// - The kernel never splits a mapping, so an unmap that cuts one unmaps the
///   covering mappings (one `IOMMU_IOAS_UNMAP`) and maps what is left of them
///   back. Unmapping what is not mapped succeeds and does nothing, as
///   virtio-iommu and VT-d guests expect.
/// - Adjacent mappings that continue each other are one mapping to the guest
///   ([`ShadowDomain::mappings`]); in the kernel they stay apart, so unmapping one
///   never disturbs DMA to its neighbours.
/// - [`ShadowDomain::replay`] after guest memory changes unmaps what points to
///   memory that is gone and maps what has memory again.
///
/// Guest input is untrusted: an empty, unaligned or overflowing range, a GPA
/// outside guest RAM, or an IOVA mapped already is a [`ShadowError`] and changes
/// nothing.
///
/// ```no_run
/// use iommufd::vm_memory::{GuestAddress, GuestMemoryMmap};
/// use iommufd::{HwptFlags, Ioas, Iommufd, MapFlags};
/// use iommufd_viommu::ShadowDomain;
/// # fn f(dev: &iommufd::Device) -> Result<(), Box<dyn std::error::Error>> {
/// let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 30)])?;
/// let mut domain = ShadowDomain::new(Ioas::alloc(dev.iommufd())?, HwptFlags::empty());
/// domain.attach(dev)?;
/// // The guest maps a 16 KiB buffer at GPA 0x10_0000 for the device at IOVA 0xffff_0000.
/// domain.map(&ram, 0xffff_0000, 0x10_0000, 0x4000, MapFlags::RW)?;
/// // ... and unmaps its second page: the rest stays mapped.
/// assert_eq!(domain.unmap(0xffff_1000, 0x1000)?, 0x1000);
/// assert_eq!(domain.translate(0xffff_2000), Some((0x10_2000, MapFlags::RW)));
/// # Ok(()) }
/// ```
pub struct ShadowDomain<B: Bitmap + DirtySink + Send + Sync + 'static = ()> {
    map: IovaMap<Backing<B>>,
    shared: SharedIoas,
    ioas: Ioas,
    endpoints: Vec<Device>,
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> fmt::Debug for ShadowDomain<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShadowDomain")
            .field("ioas", &self.ioas.id())
            .field("extents", &self.map.len())
            .field(
                "endpoints",
                &self.endpoints.iter().map(|d| d.label()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> ShadowDomain<B> {
    /// A domain shadowed in `ioas` (empty, used by nothing else); devices are
    /// attached through HWPTs allocated with `flags` (e.g.
    /// [`HwptFlags::DIRTY_TRACKING`] for migration), shared where their IOMMUs allow.
    pub fn new(ioas: Ioas, flags: HwptFlags) -> Self {
        ShadowDomain {
            map: IovaMap::new(),
            shared: SharedIoas::new(ioas.clone(), flags),
            ioas,
            endpoints: Vec::new(),
        }
    }

    /// The IOAS.
    pub fn ioas(&self) -> &Ioas {
        &self.ioas
    }

    /// The devices' attachment: the HWPTs, shared where IOMMUs allow.
    pub fn shared(&self) -> &SharedIoas {
        &self.shared
    }

    /// The HWPTs devices of the domain are attached through (for dirty tracking).
    pub fn hwpts(&self) -> Vec<iommufd::Hwpt> {
        self.shared.hwpts()
    }

    /// Attaches a device (an endpoint the guest attached to this domain); its DMA
    /// goes through the domain's mappings from now on.
    pub fn attach(&mut self, dev: &Device) -> iommufd::Result<HwptId> {
        let id = self.shared.attach(dev)?;
        if !self.endpoints.iter().any(|d| d.same(dev)) {
            self.endpoints.push(dev.clone());
        }
        Ok(id)
    }

    /// Detaches a device attached with [`ShadowDomain::attach`]: its DMA is blocked
    /// until it is attached elsewhere. A device not attached here is left alone.
    pub fn detach(&mut self, dev: &Device) -> iommufd::Result<()> {
        let Some(i) = self.endpoints.iter().position(|d| d.same(dev)) else {
            return Ok(());
        };
        let ours = self.shared.hwpts();
        let here = dev
            .attached_to()
            .is_some_and(|pt| ours.iter().any(|h| h.id().raw() == pt.raw()));
        if here {
            dev.detach()?;
        }
        self.endpoints.swap_remove(i);
        self.shared.prune();
        Ok(())
    }

    /// Forgets a device that was attached here and is now attached elsewhere (or
    /// detached) by other means.
    pub fn forget(&mut self, dev: &Device) {
        self.endpoints.retain(|d| !d.same(dev));
        self.shared.prune();
    }

    /// The devices attached.
    pub fn endpoints(&self) -> &[Device] {
        &self.endpoints
    }

    /// Maps `len` bytes at `iova` to the guest RAM at `gpa`: split at region
    /// boundaries, one kernel mapping per piece. Checked before anything is mapped
    /// (see [`ShadowError`]); if the kernel refuses a piece, the pieces mapped
    /// before it are unmapped again.
    pub fn map<M>(
        &mut self,
        guest: &M,
        iova: u64,
        gpa: u64,
        len: u64,
        perms: MapFlags,
    ) -> Result<(), ShadowError>
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        let extent = Extent::new(iova, gpa, len, perms)?;
        if !perms.intersects(MapFlags::RW) {
            return Err(ShadowError::NoPermission { iova });
        }
        if let Some((existing, _)) = self.map.first_in(iova, len) {
            return Err(ShadowError::Overlap {
                iova,
                existing: *existing,
            });
        }
        let dma = self
            .ioas
            .map_guest_range(guest, GuestAddress(gpa), len, Iova(iova), perms)
            .map_err(|e| match e {
                Error::NotGuestMemory { .. } => ShadowError::NotRam { gpa, len },
                e => ShadowError::Iommufd(e),
            })?;
        for m in dma.into_mappings() {
            let piece = extent.sub(m.iova().raw(), m.len());
            // Cannot fail: the range was checked free and valid above.
            self.map.insert(piece, Some(m))?;
        }
        Ok(())
    }

    /// Unmaps what lies in `iova..iova + len`; returns the number of bytes that
    /// were mapped there (0 if none: not an error). Mappings cut by the range are
    /// unmapped whole and what is left of them is mapped back.
    ///
    /// The kernel mappings in the range go in one `IOMMU_IOAS_UNMAP`. Should the
    /// kernel refuse it, each is unmapped on its own, and one already gone (the
    /// IOAS was changed behind the domain's back) counts as unmapped. A mapping
    /// the kernel refuses to unmap stays in the domain, whole, and its error is
    /// returned after the others were done: the domain's mappings stay what the
    /// kernel holds.
    ///
    /// With dirty tracking on, what the devices wrote through the mappings cut
    /// is marked in guest memory's bitmaps first (the kernel forgets the dirty
    /// bits of what it unmaps); so do [`ShadowDomain::clear`] and dropping the
    /// domain.
    pub fn unmap(&mut self, iova: u64, len: u64) -> Result<u64, ShadowError> {
        check_range("unmap", iova, len)?;
        let last = iova + (len - 1);
        let mut cuts = Vec::new();
        self.map.cut_into(iova, len, &mut cuts)?;
        // Every mapping cut is unmapped whole (what is left of it is mapped
        // again): its dirty bits go to guest memory first.
        self.keep_dirty(cuts.iter().map(|c| (&c.extent, &c.payload)));
        // The kernel, in one ioctl for every kernel mapping involved: they lie
        // between the first and the last backed extent cut, and nothing else does.
        let mut backed = cuts
            .iter()
            .filter(|c| c.payload.is_some())
            .map(|c| c.extent);
        if let Some(first) = backed.next() {
            let end = backed.next_back().unwrap_or(first).last();
            if let Err(e) = self.ioas.unmap(Iova(first.iova), end - first.iova + 1) {
                // The kernel may have removed some areas before it stopped, or
                // the IOAS was changed behind the domain's back (an area is
                // gone: ENOENT). Each mapping is unmapped on its own below, and
                // what is gone already counts as unmapped.
                log::warn!(
                    "iommufd-viommu: unmapping IOVA {:#x}..={end:#x} at once: {e}; one mapping at a time",
                    first.iova
                );
            }
        }
        let mut unmapped = 0;
        let mut failed = None;
        for c in cuts {
            let e = c.extent;
            // Unmapped by the ioctl above, this only takes the memory back;
            // else it unmaps this mapping alone.
            let memory = match c.payload.map(Mapping::unmap) {
                None => None,
                Some(Ok(memory)) => Some(memory),
                Some(Err(refused)) => {
                    // Still mapped in the kernel: so it stays in the map, whole.
                    self.restore(&c.extent, [c.left, c.right], refused.object);
                    failed.get_or_insert(ShadowError::Iommufd(refused.error));
                    continue;
                }
            };
            unmapped += e.last().min(last) - e.iova.max(iova) + 1;
            let Some(memory) = memory else {
                continue;
            };
            for rest in [c.left, c.right].into_iter().flatten() {
                match self.remap(&memory, &e, &rest) {
                    Ok(m) => {
                        if let Some((_, slot)) = self.map.get_mut(rest.iova) {
                            *slot = Some(m);
                        }
                    }
                    Err(source) => {
                        log::warn!(
                            "iommufd-viommu: remapping {rest} after a partial unmap: {source}"
                        );
                        failed.get_or_insert(ShadowError::Remainder {
                            iova: rest.iova,
                            len: rest.len,
                            source,
                        });
                    }
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(unmapped),
        }
    }

    /// Puts back an extent [`IovaMap::cut_into`] cut, whose kernel mapping the
    /// kernel refused to unmap.
    fn restore(
        &mut self,
        whole: &Extent,
        remainders: [Option<Extent>; 2],
        mapping: Mapping<MmapSlice<B>>,
    ) {
        // The remainders hold no kernel mapping yet: remove them, and the whole
        // extent fits where it was.
        for r in remainders.into_iter().flatten() {
            let _ = self.map.remove_overlapping(r.iova, r.len);
        }
        if let Err(e) = self.map.insert(*whole, Some(mapping)) {
            log::error!("iommufd-viommu: putting back {whole}: {e}");
        }
    }

    /// Maps `rest`, a part of `whole` whose memory was `slice`.
    fn remap(
        &self,
        slice: &MmapSlice<B>,
        whole: &Extent,
        rest: &Extent,
    ) -> iommufd::Result<Mapping<MmapSlice<B>>> {
        let part = MmapSlice::new(
            slice.region().clone(),
            slice.offset() + (rest.iova - whole.iova),
            rest.len,
        )?;
        Ok(self.ioas.map(part, Some(Iova(rest.iova)), rest.perms)?)
    }

    /// Unmaps everything; returns the number of bytes that were mapped.
    pub fn clear(&mut self) -> Result<u64, ShadowError> {
        if self.map.is_empty() {
            return Ok(0);
        }
        self.keep_all_dirty();
        self.ioas.unmap_all()?;
        Ok(self.map.drain().iter().map(|(e, _)| e.len).sum())
    }

    /// The guest-physical address `iova` maps to, and the permissions (for an
    /// emulated device of the domain, or to turn dirty IOVAs into GPAs).
    pub fn translate(&self, iova: u64) -> Option<(u64, MapFlags)> {
        self.map.translate(iova)
    }

    /// The guest's mappings, in IOVA order, adjacent ones that continue each other
    /// merged.
    pub fn mappings(&self) -> Vec<Extent> {
        self.map.merged()
    }

    /// The guest's mappings with no guest RAM behind them (after a memory change);
    /// DMA there faults.
    pub fn unbacked(&self) -> Vec<Extent> {
        self.map
            .iter()
            .filter(|(_, m)| m.is_none())
            .map(|(e, _)| *e)
            .collect()
    }

    /// The number of kernel mappings (IOAS areas) the domain holds.
    pub fn kernel_mappings(&self) -> usize {
        self.map.iter().filter(|(_, m)| m.is_some()).count()
    }

    /// Brings the kernel mappings in line with guest memory after it changed
    /// (regions added, removed, or replaced): mappings whose memory is gone are
    /// unmapped (the guest's mapping is kept, unbacked), and guest mappings with
    /// RAM behind them again are mapped. Kernel mappings removed behind the
    /// domain's back (an [`Ioas::unmap`] of its IOAS) are made again. Running it
    /// again without a change does nothing. Stops at the first kernel error,
    /// having done what came before.
    pub fn replay<M>(&mut self, guest: &M) -> Result<ReplayReport, ShadowError>
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        let mut report = ReplayReport::default();
        for e in self.map.extents() {
            let Some((_, backing)) = self.map.get(e.iova) else {
                continue;
            };
            let now = pieces(guest, e.gpa, e.len);
            let current = match (backing, now.as_slice()) {
                (Some(m), [(_, Some((region, offset)))]) => {
                    Arc::ptr_eq(m.memory().region(), region)
                        && m.memory().offset() == *offset
                        && m.is_mapped()
                }
                (None, [(_, None)]) => true,
                _ => false,
            };
            if current {
                continue;
            }
            let mut old = self.map.remove_overlapping(e.iova, e.len)?;
            let Some((_, backing)) = old.pop() else {
                continue;
            };
            if let Some(m) = backing {
                let was_mapped = m.is_mapped();
                if let Err(r) = m.unmap() {
                    let _ = self.map.insert(e, Some(r.object));
                    return Err(r.error.into());
                }
                report.unmapped += usize::from(was_mapped);
            }
            let mut error = None;
            let mut at = e.iova;
            for (len, memory) in &now {
                let piece = e.sub(at, *len);
                at = at.wrapping_add(*len);
                let backing = match memory {
                    Some((region, offset)) if error.is_none() => {
                        let mapped =
                            MmapSlice::new(region.clone(), *offset, piece.len).and_then(|s| {
                                Ok(self.ioas.map(s, Some(Iova(piece.iova)), piece.perms)?)
                            });
                        match mapped {
                            Ok(m) => {
                                report.mapped += 1;
                                Some(m)
                            }
                            Err(err) => {
                                error = Some(err);
                                None
                            }
                        }
                    }
                    _ => None,
                };
                if backing.is_none() {
                    report.unbacked += 1;
                }
                self.map.insert(piece, backing)?;
            }
            if let Some(err) = error {
                return Err(err.into());
            }
        }
        Ok(report)
    }
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> ShadowDomain<B> {
    /// Starts (or stops) tracking the pages the domain's devices write, on their
    /// HWPTs (see [`SharedIoas::set_dirty_tracking`]).
    pub fn set_dirty_tracking(&self, on: bool) -> iommufd::Result<()> {
        self.shared.set_dirty_tracking(on)
    }

    /// Whether dirty tracking is on ([`ShadowDomain::set_dirty_tracking`]).
    pub fn dirty_tracking(&self) -> bool {
        self.shared.dirty_tracking()
    }

    /// With dirty tracking on, marks the pages the devices wrote through the
    /// kernel mappings of `extents` (in IOVA order) in guest memory's bitmaps,
    /// before those mappings go: the kernel forgets the dirty bits of what it
    /// unmaps, and a migration would miss the writes. Should the bits not be
    /// read, every page of the extents is marked: a page sent twice costs less
    /// than a page lost.
    fn keep_dirty<'a>(&self, extents: impl Iterator<Item = (&'a Extent, &'a Backing<B>)>) {
        if !self.shared.dirty_tracking() {
            return;
        }
        let runs = harvest_runs(extents);
        if runs.is_empty() {
            return;
        }
        if let Err(e) = dirty::harvest(&self.shared.hwpts(), &runs, DirtyReadFlags::empty()) {
            log::warn!(
                "iommufd-viommu: reading dirty bits before unmapping from {}: {e}; every page counts as written",
                self.ioas.id()
            );
            dirty::mark_all(&runs);
        }
    }

    /// [`ShadowDomain::keep_dirty`] for every mapping of the domain.
    fn keep_all_dirty(&self) {
        self.keep_dirty(self.map.iter());
    }

    /// Reads which pages the domain's devices wrote and marks them, translated
    /// to guest-physical addresses through the domain's mappings, in the dirty
    /// bitmaps of the guest memory regions behind them. One
    /// `IOMMU_HWPT_GET_DIRTY_BITMAP` per HWPT and run of IOVA-contiguous
    /// mappings; returns the number of dirty bits read.
    pub fn harvest_dirty(&self, flags: DirtyReadFlags) -> iommufd::Result<u64> {
        dirty::harvest(&self.shared.hwpts(), &harvest_runs(self.map.iter()), flags)
    }
}

/// The runs of IOVA-contiguous kernel mappings among `extents` (in IOVA order),
/// each piece with the dirty bitmap of its guest memory region and its first
/// page there.
fn harvest_runs<'a, B: Bitmap + Send + Sync + 'static>(
    extents: impl Iterator<Item = (&'a Extent, &'a Backing<B>)>,
) -> Vec<dirty::Harvest<'a, B>> {
    dirty::group(extents.filter_map(|(e, m)| {
        let slice = m.as_ref()?.memory();
        Some((
            e.iova,
            e.len,
            slice.region().bitmap(),
            slice.offset() / crate::PAGE_SIZE,
        ))
    }))
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> Drop for ShadowDomain<B> {
    fn drop(&mut self) {
        // One ioctl rather than one per mapping.
        if self.kernel_mappings() > 0 {
            self.keep_all_dirty();
            if let Err(e) = self.ioas.unmap_all() {
                log::warn!(
                    "iommufd-viommu: emptying {} of a dropped domain: {e}",
                    self.ioas.id()
                );
            }
        }
    }
}

/// The pieces of `gpa..gpa + len` in guest memory: each a length and, if guest
/// RAM, the region's memory and the offset in it; holes are pieces without.
#[allow(clippy::type_complexity)]
pub(crate) fn pieces<B, M>(
    guest: &M,
    gpa: u64,
    len: u64,
) -> Vec<(u64, Option<(Arc<MmapRegion<B>>, u64)>)>
where
    B: Bitmap,
    M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
{
    let mut out: Vec<(u64, Option<(Arc<MmapRegion<B>>, u64)>)> = Vec::new();
    let mut done = 0;
    while done < len {
        let at = gpa + done;
        let (piece, mem) = match guest.find_region(GuestAddress(at)) {
            Some(r) => {
                let offset = at - r.start_addr().0;
                (
                    (r.len() - offset).min(len - done),
                    Some((r.get_mmap(), offset)),
                )
            }
            None => {
                // Up to the next region, or the end.
                let next = guest
                    .iter()
                    .map(|r| r.start_addr().0)
                    .filter(|s| *s > at)
                    .min()
                    .map_or(len - done, |s| (s - at).min(len - done));
                (next, None)
            }
        };
        match (out.last_mut(), &mem) {
            (Some((l, None)), None) => *l += piece,
            _ => out.push((piece, mem)),
        }
        done += piece;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use iommufd::vm_memory::GuestMemoryMmap;

    #[test]
    fn every_refusal_has_the_status_a_guest_expects() {
        let e = Extent::new(0, 0, 4096, MapFlags::RW).unwrap();
        let cases = [
            (ShadowError::EmptyRange { op: "map" }, Status::Inval),
            (ShadowError::Unaligned { op: "map", addr: 1 }, Status::Inval),
            (ShadowError::NoPermission { iova: 0 }, Status::Inval),
            (
                ShadowError::Overlap {
                    iova: 0,
                    existing: e,
                },
                Status::Inval,
            ),
            (
                ShadowError::NotAttached {
                    endpoint: 1,
                    domain: 2,
                },
                Status::Inval,
            ),
            (ShadowError::EndpointExists { endpoint: 1 }, Status::Inval),
            (ShadowError::Bypass { domain: 1 }, Status::Inval),
            (
                ShadowError::Overflow {
                    op: "map",
                    addr: 1,
                    len: 2,
                },
                Status::Range,
            ),
            (ShadowError::NotRam { gpa: 0, len: 1 }, Status::Range),
            (ShadowError::UnknownDomain { domain: 1 }, Status::NoEnt),
            (ShadowError::UnknownEndpoint { endpoint: 1 }, Status::NoEnt),
            (ShadowError::Unsupported { what: "x" }, Status::Unsupp),
            (ShadowError::TooManyExtents, Status::NoMem),
        ];
        for (err, status) in cases {
            assert_eq!(err.status(), status, "{err}");
            assert!(!err.to_string().is_empty());
        }
        let kernel = |errno| {
            ShadowError::Iommufd(Error::Ioctl {
                op: "IOMMU_IOAS_MAP",
                object: "ioas 1".into(),
                errno,
            })
        };
        assert_eq!(kernel(libc::ENOMEM).status(), Status::NoMem);
        assert_eq!(kernel(libc::EFAULT).status(), Status::Fault);
        assert_eq!(kernel(libc::EIO).status(), Status::DevErr);
        let lost = ShadowError::Remainder {
            iova: 0,
            len: 4096,
            source: Error::InvalidArgument {
                op: "x",
                reason: "y",
            },
        };
        assert_eq!(lost.status(), Status::DevErr);
    }

    #[test]
    fn pieces_follow_regions_and_holes() {
        const MB: u64 = 1 << 20;
        let ram = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(MB), MB as usize),
            (GuestAddress(2 * MB), MB as usize),
            (GuestAddress(8 * MB), MB as usize),
        ])
        .unwrap();
        let p = pieces(&ram, 0, 10 * MB);
        let shape: Vec<(u64, Option<u64>)> = p
            .iter()
            .map(|(l, m)| (*l, m.as_ref().map(|(_, o)| *o)))
            .collect();
        assert_eq!(
            shape,
            [
                (MB, None),
                (MB, Some(0)),
                (MB, Some(0)),
                (5 * MB, None),
                (MB, Some(0)),
                (MB, None)
            ]
        );
        // Inside one region, from an offset.
        let p = pieces(&ram, 2 * MB + 0x3000, 0x2000);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].1.as_ref().map(|(_, o)| *o), Some(0x3000));
        // Holes next to each other are one piece.
        assert_eq!(pieces(&ram, 4 * MB, 2 * MB).len(), 1);
    }
}
