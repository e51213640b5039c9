//! GIOVA -> GPA extents of a guest I/O domain: the bookkeeping of the shadow
//! engine, usable on its own (an emulated device translating its DMA addresses).
//!
//! The map is a radix tree over 4 KiB pages, like the page table of an IOMMU: a
//! slot covers 1, 512, 512^2, ... pages and holds nothing, an extent (a leaf:
//! every page of the slot belongs to it) or a table of smaller slots. Finding the
//! extent of an address is four loads; inserting or removing an extent touches
//! the slots along its two edges only, however long it is. Extents live in a slab
//! and are named by their index, so a slot is 4 bytes.

use std::fmt;

use iommufd::MapFlags;

use crate::page_tree::{MAX_INDEX, PageTree};
use crate::shadow::ShadowError;

/// The granule of guest mappings: 4 KiB. Addresses and lengths are multiples.
pub const PAGE_SIZE: u64 = 4096;

const PAGE_SHIFT: u32 = 12;

/// A mapping of `len` bytes at IOVA `iova` to guest-physical `gpa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Extent {
    /// The first IOVA.
    pub iova: u64,
    /// The first guest-physical address.
    pub gpa: u64,
    /// The length in bytes.
    pub len: u64,
    /// What devices may do.
    pub perms: MapFlags,
}

impl fmt::Display for Extent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "IOVA {:#x} (+{:#x}) -> GPA {:#x}",
            self.iova, self.len, self.gpa
        )
    }
}

impl Extent {
    /// Checks what a guest asked for: a non-empty, page-aligned range whose IOVA
    /// and GPA ends do not pass 2^64.
    ///
    /// ```
    /// use iommufd::MapFlags;
    /// use iommufd_viommu::Extent;
    /// let e = Extent::new(0x1000, 0x8000, 0x2000, MapFlags::READ)?;
    /// assert_eq!(e.last(), 0x2fff);
    /// assert!(Extent::new(0x1000, 0x8000, 0, MapFlags::READ).is_err());
    /// assert!(Extent::new(0x1000, 0x8001, 0x1000, MapFlags::READ).is_err());
    /// assert!(Extent::new(u64::MAX - 0xfff, 0, 0x2000, MapFlags::READ).is_err());
    /// # Ok::<(), iommufd_viommu::ShadowError>(())
    /// ```
    pub fn new(iova: u64, gpa: u64, len: u64, perms: MapFlags) -> Result<Extent, ShadowError> {
        check_range("map", iova, len)?;
        if gpa % PAGE_SIZE != 0 {
            return Err(ShadowError::Unaligned {
                op: "map",
                addr: gpa,
            });
        }
        if gpa.checked_add(len - 1).is_none() {
            return Err(ShadowError::Overflow {
                op: "map",
                addr: gpa,
                len,
            });
        }
        Ok(Extent {
            iova,
            gpa,
            len,
            perms,
        })
    }

    /// The last IOVA (inclusive).
    pub fn last(&self) -> u64 {
        self.iova + (self.len - 1)
    }

    /// The guest-physical address of `iova`, which must be inside.
    pub fn gpa_of(&self, iova: u64) -> u64 {
        self.gpa + (iova - self.iova)
    }

    /// The part of `self` from `iova` on, `len` bytes (which must lie inside).
    pub fn sub(&self, iova: u64, len: u64) -> Extent {
        Extent {
            iova,
            gpa: self.gpa_of(iova),
            len,
            perms: self.perms,
        }
    }

    /// What is left of `self` outside `first..=last`: the part before and the part
    /// after.
    ///
    /// ```
    /// use iommufd::MapFlags;
    /// use iommufd_viommu::Extent;
    /// let e = Extent::new(0x10000, 0x80000, 0x4000, MapFlags::RW)?;
    /// let [before, after] = e.remainders(0x11000, 0x11fff);
    /// assert_eq!(before.map(|b| (b.iova, b.len)), Some((0x10000, 0x1000)));
    /// assert_eq!(after.map(|a| (a.iova, a.gpa, a.len)), Some((0x12000, 0x82000, 0x2000)));
    /// # Ok::<(), iommufd_viommu::ShadowError>(())
    /// ```
    pub fn remainders(&self, first: u64, last: u64) -> [Option<Extent>; 2] {
        let before = (self.iova < first).then(|| self.sub(self.iova, first - self.iova));
        let after = (self.last() > last).then(|| self.sub(last + 1, self.last() - last));
        [before, after]
    }

    /// Whether `next` continues `self` (adjacent IOVAs and GPAs, same permissions).
    pub fn continued_by(&self, next: &Extent) -> bool {
        self.last().checked_add(1) == Some(next.iova)
            && self.gpa.checked_add(self.len) == Some(next.gpa)
            && self.perms == next.perms
    }
}

/// Checks a guest range: non-empty, page-aligned, not passing 2^64.
pub(crate) fn check_range(op: &'static str, iova: u64, len: u64) -> Result<(), ShadowError> {
    if len == 0 {
        return Err(ShadowError::EmptyRange { op });
    }
    if iova % PAGE_SIZE != 0 || len % PAGE_SIZE != 0 {
        let addr = if iova % PAGE_SIZE != 0 { iova } else { len };
        return Err(ShadowError::Unaligned { op, addr });
    }
    if iova.checked_add(len - 1).is_none() {
        return Err(ShadowError::Overflow {
            op,
            addr: iova,
            len,
        });
    }
    Ok(())
}

/// One extent an unmap ([`IovaMap::cut_into`]) touched.
#[derive(Debug)]
pub struct Cut<T> {
    /// The extent as it was.
    pub extent: Extent,
    /// Its payload.
    pub payload: T,
    /// What is left of it before the range (still in the map).
    pub left: Option<Extent>,
    /// What is left of it after the range (still in the map).
    pub right: Option<Extent>,
}

/// GIOVA -> GPA extents (non-overlapping, page-aligned), each with a payload `T`
/// (the shadow engine keeps the kernel mapping of each there).
///
/// ```
/// use iommufd::MapFlags;
/// use iommufd_viommu::{Extent, IovaMap};
/// let mut map = IovaMap::new();
/// map.insert(Extent::new(0x10000, 0x8000_0000, 0x4000, MapFlags::RW)?, "dma ring")?;
/// assert_eq!(map.translate(0x12345), Some((0x8000_2345, MapFlags::RW)));
/// assert!(map.insert(Extent::new(0x13000, 0, 0x1000, MapFlags::READ)?, "overlaps").is_err());
/// // Unmapping the middle page: the extent comes out whole; put back what is left.
/// for (e, what) in map.remove_overlapping(0x11000, 0x1000)? {
///     for rest in e.remainders(0x11000, 0x11fff).into_iter().flatten() {
///         map.insert(rest, what)?;
///     }
/// }
/// assert_eq!(map.translate(0x11000), None);
/// assert_eq!(map.len(), 2);
/// # Ok::<(), iommufd_viommu::ShadowError>(())
/// ```
pub struct IovaMap<T> {
    tree: PageTree,
    entries: Vec<Option<(Extent, T)>>,
    free: Vec<u32>,
    count: usize,
}

impl<T> Default for IovaMap<T> {
    fn default() -> Self {
        IovaMap {
            tree: PageTree::default(),
            entries: Vec::new(),
            free: Vec::new(),
            count: 0,
        }
    }
}

impl<T> fmt::Debug for IovaMap<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.extents()).finish()
    }
}

impl<T> IovaMap<T> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of extents.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn index_of(&self, iova: u64) -> Option<u32> {
        self.tree.get(iova >> PAGE_SHIFT)
    }

    fn entry(&self, idx: u32) -> Option<&(Extent, T)> {
        self.entries.get(idx as usize).and_then(Option::as_ref)
    }

    /// Adds an extent; fails with [`ShadowError::Overlap`] (and changes nothing) if
    /// any of its pages is mapped.
    pub fn insert(&mut self, extent: Extent, payload: T) -> Result<(), ShadowError> {
        check_range("map", extent.iova, extent.len)?;
        let (lo, hi) = (extent.iova >> PAGE_SHIFT, extent.last() >> PAGE_SHIFT);
        let idx = self.next_index()?;
        if let Err(x) = self.tree.fill_free(lo, hi, idx) {
            let existing = self.entry(x).map_or(extent, |(e, _)| *e);
            return Err(ShadowError::Overlap {
                iova: extent.iova,
                existing,
            });
        }
        let used = self.alloc(extent, payload)?;
        debug_assert_eq!(used, idx);
        Ok(())
    }

    /// The index the next [`IovaMap::alloc`] returns.
    fn next_index(&self) -> Result<u32, ShadowError> {
        match self.free.last() {
            Some(i) => Ok(*i),
            None => match u32::try_from(self.entries.len()) {
                Ok(i) if i <= MAX_INDEX => Ok(i),
                _ => Err(ShadowError::TooManyExtents),
            },
        }
    }

    /// Stores an extent (its pages are the caller's to set).
    fn alloc(&mut self, extent: Extent, payload: T) -> Result<u32, ShadowError> {
        let idx = self.next_index()?;
        if self.free.pop().is_some() {
            self.entries[idx as usize] = Some((extent, payload));
        } else {
            self.entries.push(Some((extent, payload)));
        }
        self.count += 1;
        Ok(idx)
    }

    /// The first extent with a page in `iova..iova + len`, and its payload.
    pub fn first_in(&self, iova: u64, len: u64) -> Option<(&Extent, &T)> {
        if len == 0 {
            return None;
        }
        let last = iova.saturating_add(len - 1);
        let mut first = None;
        self.tree
            .visit(iova >> PAGE_SHIFT, last >> PAGE_SHIFT, |x| {
                first = Some(x);
                false
            });
        let (e, t) = self.entry(first?)?;
        Some((e, t))
    }

    /// Whether any page of `iova..iova + len` is mapped.
    pub fn overlaps(&self, iova: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let last = iova.saturating_add(len - 1);
        let mut any = false;
        self.tree
            .visit(iova >> PAGE_SHIFT, last >> PAGE_SHIFT, |_| {
                any = true;
                false
            });
        any
    }

    /// Removes every extent with a page in `iova..iova + len`, whole, and returns
    /// them in IOVA order (put back what lies outside the range with
    /// [`Extent::remainders`]).
    pub fn remove_overlapping(
        &mut self,
        iova: u64,
        len: u64,
    ) -> Result<Vec<(Extent, T)>, ShadowError> {
        let mut out = Vec::new();
        self.remove_overlapping_into(iova, len, &mut out)?;
        Ok(out)
    }

    /// As [`IovaMap::remove_overlapping`], appending to `out` (a buffer kept by a
    /// caller in a hot loop).
    pub fn remove_overlapping_into(
        &mut self,
        iova: u64,
        len: u64,
        out: &mut Vec<(Extent, T)>,
    ) -> Result<(), ShadowError> {
        check_range("unmap", iova, len)?;
        // Most unmaps cut a few extents: no allocation for those.
        let mut few = [0u32; 4];
        let mut n = 0;
        let mut more = Vec::new();
        self.tree
            .visit(iova >> PAGE_SHIFT, (iova + (len - 1)) >> PAGE_SHIFT, |x| {
                match few.get_mut(n) {
                    Some(slot) => *slot = x,
                    None => more.push(x),
                }
                n += 1;
                true
            });
        for x in few.into_iter().take(n).chain(more) {
            if let Some((e, t)) = self.entries.get_mut(x as usize).and_then(Option::take) {
                self.tree
                    .set(e.iova >> PAGE_SHIFT, e.last() >> PAGE_SHIFT, None);
                self.free.push(x);
                self.count -= 1;
                out.push((e, t));
            }
        }
        Ok(())
    }

    /// Unmaps `iova..iova + len`, cutting the extents it covers part of: those
    /// keep what lies outside the range, with a new default payload. Appends to
    /// `out`, in IOVA order, each extent touched as it was, with its payload and
    /// what is left of it in the map.
    ///
    /// ```
    /// use iommufd::MapFlags;
    /// use iommufd_viommu::{Extent, IovaMap};
    /// let mut map = IovaMap::new();
    /// map.insert(Extent::new(0x10000, 0x80000, 0x4000, MapFlags::RW)?, Some("ring"))?;
    /// let mut cut = Vec::new();
    /// map.cut_into(0x11000, 0x1000, &mut cut)?;
    /// assert_eq!(cut[0].payload, Some("ring"));
    /// assert_eq!(cut[0].left.map(|e| e.len), Some(0x1000));
    /// assert_eq!(cut[0].right.map(|e| (e.iova, e.gpa)), Some((0x12000, 0x82000)));
    /// assert_eq!(map.get(0x12000).map(|(_, p)| *p), Some(None), "a new default payload");
    /// # Ok::<(), iommufd_viommu::ShadowError>(())
    /// ```
    pub fn cut_into(
        &mut self,
        iova: u64,
        len: u64,
        out: &mut Vec<Cut<T>>,
    ) -> Result<(), ShadowError>
    where
        T: Default,
    {
        check_range("unmap", iova, len)?;
        let last = iova + (len - 1);
        let mut few = [0u32; 4];
        let mut n = 0;
        let mut more = Vec::new();
        self.tree.take(iova >> PAGE_SHIFT, last >> PAGE_SHIFT, |x| {
            match few.get_mut(n) {
                Some(slot) => *slot = x,
                None => more.push(x),
            }
            n += 1;
        });
        out.reserve(n);
        for &x in &few[..n.min(few.len())] {
            self.cut_one(x, iova, last, out)?;
        }
        for x in more {
            self.cut_one(x, iova, last, out)?;
        }
        Ok(())
    }

    /// Cuts `iova..=last` out of extent `x`, recording it in `out`.
    #[inline]
    fn cut_one(
        &mut self,
        x: u32,
        iova: u64,
        last: u64,
        out: &mut Vec<Cut<T>>,
    ) -> Result<(), ShadowError>
    where
        T: Default,
    {
        let Some(Some((e, t))) = self.entries.get_mut(x as usize) else {
            return Ok(());
        };
        let whole = *e;
        let [left, right] = whole.remainders(iova, last);
        let payload = std::mem::take(t);
        let mut split = None;
        match (left, right) {
            (None, None) => {
                self.entries[x as usize] = None;
                self.free.push(x);
                self.count -= 1;
            }
            // The extent's index stays with what is left of it...
            (Some(kept), None) | (None, Some(kept)) => *e = kept,
            // ...before the range; what is left after it gets its own.
            (Some(l), Some(r)) => {
                *e = l;
                split = Some(r);
            }
        }
        out.push(Cut {
            extent: whole,
            payload,
            left,
            right,
        });
        if let Some(r) = split {
            let (lo, hi) = (r.iova >> PAGE_SHIFT, r.last() >> PAGE_SHIFT);
            match self.alloc(r, T::default()) {
                Ok(y) => self.tree.set(lo, hi, Some(y)),
                Err(e) => {
                    // No index left (2^31 extents): drop the remainder.
                    self.tree.set(lo, hi, None);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// The extent holding `iova`, and its payload.
    pub fn get(&self, iova: u64) -> Option<(&Extent, &T)> {
        let (e, t) = self.entry(self.index_of(iova)?)?;
        Some((e, t))
    }

    /// The extent holding `iova`, and its payload, to change the payload.
    pub fn get_mut(&mut self, iova: u64) -> Option<(&Extent, &mut T)> {
        let x = self.index_of(iova)?;
        let (e, t) = self.entries.get_mut(x as usize)?.as_mut()?;
        Some((&*e, t))
    }

    /// The guest-physical address `iova` maps to, and the permissions.
    pub fn translate(&self, iova: u64) -> Option<(u64, MapFlags)> {
        self.get(iova).map(|(e, _)| (e.gpa_of(iova), e.perms))
    }

    /// The extents with a page in `iova..iova + len`, in IOVA order.
    pub fn overlapping(&self, iova: u64, len: u64) -> Vec<(&Extent, &T)> {
        let mut out = Vec::new();
        if len == 0 {
            return out;
        }
        let last = iova.saturating_add(len - 1);
        self.tree
            .visit(iova >> PAGE_SHIFT, last >> PAGE_SHIFT, |x| {
                if let Some((e, t)) = self.entry(x) {
                    out.push((e, t));
                }
                true
            });
        out
    }

    /// Every extent and its payload, in IOVA order.
    pub fn iter(&self) -> impl Iterator<Item = (&Extent, &T)> + '_ {
        let mut idx = Vec::with_capacity(self.count);
        self.tree.visit(0, u64::MAX >> PAGE_SHIFT, |x| {
            idx.push(x);
            true
        });
        idx.into_iter()
            .filter_map(|x| self.entry(x).map(|(e, t)| (e, t)))
    }

    /// Every extent, in IOVA order.
    pub fn extents(&self) -> Vec<Extent> {
        self.iter().map(|(e, _)| *e).collect()
    }

    /// Removes every extent; returns them in IOVA order.
    pub fn drain(&mut self) -> Vec<(Extent, T)> {
        let mut idx = Vec::with_capacity(self.count);
        self.tree.visit(0, u64::MAX >> PAGE_SHIFT, |x| {
            idx.push(x);
            true
        });
        let out = idx
            .into_iter()
            .filter_map(|x| self.entries.get_mut(x as usize).and_then(Option::take))
            .collect();
        self.tree.clear();
        self.entries.clear();
        self.free.clear();
        self.count = 0;
        out
    }

    /// The mappings as the guest sees them: adjacent extents that continue each
    /// other (IOVA and GPA contiguous, same permissions) merged into one.
    ///
    /// ```
    /// use iommufd::MapFlags;
    /// use iommufd_viommu::{Extent, IovaMap};
    /// let mut map = IovaMap::new();
    /// map.insert(Extent::new(0x0000, 0x10000, 0x1000, MapFlags::RW)?, ())?;
    /// map.insert(Extent::new(0x1000, 0x11000, 0x1000, MapFlags::RW)?, ())?;
    /// map.insert(Extent::new(0x2000, 0x99000, 0x1000, MapFlags::RW)?, ())?;
    /// assert_eq!(map.merged().iter().map(|e| e.len).collect::<Vec<_>>(), [0x2000, 0x1000]);
    /// # Ok::<(), iommufd_viommu::ShadowError>(())
    /// ```
    pub fn merged(&self) -> Vec<Extent> {
        let mut out: Vec<Extent> = Vec::new();
        for e in self.extents() {
            match out.last_mut() {
                Some(prev) if prev.continued_by(&e) => prev.len += e.len,
                _ => out.push(e),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(iova: u64, gpa: u64, len: u64) -> Extent {
        Extent::new(iova, gpa, len, MapFlags::RW).unwrap()
    }

    #[test]
    fn large_extents_use_large_slots_and_free_them() {
        let mut m = IovaMap::new();
        // 1 GiB + 8 KiB, unaligned start: edges of small slots, a middle of big ones.
        m.insert(ext(0x3fff_f000, 0, (1 << 30) + 0x2000), 1)
            .unwrap();
        assert_eq!(m.translate(0x3fff_f000), Some((0, MapFlags::RW)));
        assert_eq!(
            m.translate(0x4000_0000 + (1 << 30)),
            Some(((1 << 30) + 0x1000, MapFlags::RW))
        );
        assert_eq!(m.translate(0x4000_0000 + (1 << 30) + 0x1000), None);
        assert_eq!(m.tree.top_slots(), 1);
        let out = m.remove_overlapping(0x5000_0000, 0x1000).unwrap();
        assert_eq!(out.len(), 1);
        assert!(m.is_empty());
        assert!(m.tree.is_bare(), "empty tables are freed");
    }

    #[test]
    fn the_top_of_the_iova_space_is_usable() {
        let mut m = IovaMap::new();
        m.insert(ext(u64::MAX - 0xfff, 0x1000, 0x1000), ()).unwrap();
        m.insert(ext(0, 0x2000, 0x1000), ()).unwrap();
        assert_eq!(m.translate(u64::MAX), Some((0x1fff, MapFlags::RW)));
        assert_eq!(m.extents().len(), 2);
        assert_eq!(
            m.remove_overlapping(0x1000, u64::MAX - 0xfff)
                .unwrap()
                .len(),
            1
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn an_extent_across_top_slots() {
        let mut m = IovaMap::new();
        let at = (1u64 << 48) - 0x1000;
        m.insert(ext(at, 0, 0x2000), ()).unwrap();
        assert_eq!(m.tree.top_slots(), 2);
        assert_eq!(m.overlapping(at + 0x1000, 0x1000).len(), 1);
        assert_eq!(m.extents().len(), 1, "reported once");
        m.remove_overlapping(1 << 48, 0x1000).unwrap();
        assert!(m.tree.is_bare());
    }
}
