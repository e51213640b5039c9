//! Mapping handles, and the registry that lets each remove only what it mapped.

use std::collections::BTreeMap;
use std::fmt;
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::sys::Errno;
use crate::{DmaMemory, Error, Ioas, Iova, Refused, Result};

/// How memory was mapped.
///
/// ```no_run
/// use iommufd::{Ioas, Iommufd, MapFlags, MapMethod};
/// use vm_memory::MmapRegion;
/// let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// // Anonymous memory has no file: it is mapped by its host address.
/// let m = ioas.map(MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
/// assert_eq!(m.method(), MapMethod::UserMemory);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapMethod {
    /// `IOMMU_IOAS_MAP_FILE` of the memory's backing file (Linux 6.13).
    File,
    /// `IOMMU_IOAS_MAP` of the memory's host virtual addresses.
    UserMemory,
}

/// The mappings of one IOAS that handles own, by start IOVA: `(last IOVA, ticket)`.
///
/// The kernel never lets mappings overlap, so a successful map proves that whatever
/// the registry still had in its range is gone (unmapped by someone): such entries
/// are evicted. Unmaps made through the crate remove what they covered. A handle
/// only unmaps its range if its own ticket is still registered there, so it never
/// removes a mapping made after its own was unmapped.
#[derive(Debug, Default)]
pub(crate) struct Areas {
    next: u64,
    by_start: BTreeMap<u64, (u64, u64)>,
}

impl Areas {
    /// The last IOVA of `len` bytes at `start` (`len` > 0), saturating.
    fn last(start: u64, len: u64) -> u64 {
        start.saturating_add(len.saturating_sub(1))
    }

    /// Removes every entry that overlaps `start..start + len`.
    pub(crate) fn evict(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = Self::last(start, len);
        // Entries are disjoint and sorted: the last one starting at or before `last`
        // overlaps the range iff it ends at or after `start`. Remove such entries
        // from the top down; usually there is none, and one lookup decides it.
        while let Some((&s, _)) = self
            .by_start
            .range(..=last)
            .next_back()
            .filter(|(_, (l, _))| *l >= start)
        {
            self.by_start.remove(&s);
        }
    }

    /// Registers a mapping just made; returns its ticket.
    pub(crate) fn insert(&mut self, start: u64, len: u64) -> u64 {
        self.evict(start, len);
        self.next += 1;
        self.by_start
            .insert(start, (Self::last(start, len), self.next));
        self.next
    }

    /// Removes the entries that lie completely in `start..start + len` (what a
    /// successful unmap of the range removed).
    pub(crate) fn remove_within(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        let last = Self::last(start, len);
        let gone: Vec<u64> = self
            .by_start
            .range(start..=last)
            .filter(|(_, (l, _))| *l <= last)
            .map(|(s, _)| *s)
            .collect();
        for s in gone {
            self.by_start.remove(&s);
        }
    }

    /// Whether the mapping `ticket` at `start` is still registered.
    pub(crate) fn holds(&self, start: u64, ticket: u64) -> bool {
        self.by_start.get(&start).is_some_and(|(_, t)| *t == ticket)
    }

    /// Runs `unmap` if the mapping `ticket` at `start` is still registered and
    /// removes it if `unmap` says it is gone; `Ok(false)` if it was not registered.
    pub(crate) fn release<E>(
        &mut self,
        start: u64,
        ticket: u64,
        unmap: impl FnOnce() -> std::result::Result<(), E>,
    ) -> std::result::Result<bool, E> {
        match self.by_start.entry(start) {
            std::collections::btree_map::Entry::Occupied(e) if e.get().1 == ticket => {
                unmap()?;
                e.remove();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    #[cfg(test)]
    pub(crate) fn remove(&mut self, start: u64) {
        self.by_start.remove(&start);
    }

    fn len(&self) -> usize {
        self.by_start.len()
    }
}

/// The [`Areas`] of one IOAS behind a lock, with the number of entries readable
/// without it: while no handle has a mapping (no entry), raw maps and unmaps need no
/// bookkeeping and skip the lock.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    areas: Mutex<Areas>,
    entries: AtomicUsize,
}

/// The locked registry; keeps the entry count in step when dropped.
pub(crate) struct Locked<'a> {
    areas: MutexGuard<'a, Areas>,
    entries: &'a AtomicUsize,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Areas;
    fn deref(&self) -> &Areas {
        &self.areas
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Areas {
        &mut self.areas
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.entries.store(self.areas.len(), Ordering::Release);
    }
}

impl Registry {
    pub(crate) fn lock(&self) -> Locked<'_> {
        Locked {
            // Every update is a sequence of map operations that cannot panic halfway,
            // so a poisoned lock still guards consistent data.
            areas: self.areas.lock().unwrap_or_else(|p| p.into_inner()),
            entries: &self.entries,
        }
    }

    /// Whether no handle has a mapping registered.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.load(Ordering::Acquire) == 0
    }

    /// After a map not made by a handle: removes the entries it proves stale.
    #[inline]
    pub(crate) fn evict(&self, start: u64, len: u64) {
        // A handle registering concurrently maps a range disjoint from this one (the
        // kernel made both), so an empty registry has nothing to evict.
        if !self.is_empty() {
            self.evict_slow(start, len);
        }
    }

    #[cold]
    fn evict_slow(&self, start: u64, len: u64) {
        self.lock().evict(start, len);
    }
}

/// Memory mapped into an IOAS by [`Ioas::map`], owning that memory.
///
/// Dropping it unmaps exactly the range it mapped, then drops the memory. If that
/// range was already unmapped by other means ([`Ioas::unmap_all`] at a VM reset, an
/// [`Ioas::unmap`] covering it), the handle does not touch the IOAS again, so it never
/// removes a newer mapping at the same IOVAs. If the unmap fails for another reason,
/// the memory is leaked rather than freed, and the error logged.
///
/// The handle holds its IOAS, so the IOAS outlives it whatever the drop order.
///
/// ```no_run
/// use iommufd::{Ioas, Iommufd, Iova, MapFlags};
/// use vm_memory::{MmapRegion, VolatileMemory};
/// let ioas = Ioas::alloc(&Iommufd::open()?)?;
/// let ring = ioas.map(MmapRegion::<()>::new(1 << 16)?, Some(Iova(0x10_0000)), MapFlags::RW)?;
/// assert_eq!((ring.iova(), ring.len()), (Iova(0x10_0000), 1 << 16));
/// ring.memory().get_slice(0, 64)?.copy_from(&[0u8; 64][..]); // the CPU side
/// drop(ring); // unmapped from the IOAS, then freed
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[must_use = "dropping a Mapping unmaps its memory"]
pub struct Mapping<M: DmaMemory> {
    ioas: Ioas,
    iova: Iova,
    len: u64,
    ticket: u64,
    method: MapMethod,
    mem: ManuallyDrop<M>,
}

impl<M: DmaMemory> fmt::Debug for Mapping<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mapping")
            .field("ioas", &self.ioas.id())
            .field("iova", &self.iova)
            .field("len", &self.len)
            .field("method", &self.method)
            .finish()
    }
}

impl<M: DmaMemory> Mapping<M> {
    /// Takes ownership of `mem`, just mapped at `iova`.
    pub(crate) fn new(ioas: Ioas, iova: Iova, len: u64, method: MapMethod, mem: M) -> Self {
        let ticket = ioas.registry().lock().insert(iova.raw(), len);
        Mapping {
            ioas,
            iova,
            len,
            ticket,
            method,
            mem: ManuallyDrop::new(mem),
        }
    }

    /// Where devices see the memory.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// # let m = ioas.map(vm_memory::MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
    /// println!("program the device's DMA address: {}", m.iova());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// The length in bytes.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let m = ioas.map(vm_memory::MmapRegion::<()>::new(8192)?, None, MapFlags::RW)?;
    /// assert_eq!(m.len(), 8192);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always `false`: the kernel maps no empty range.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// # let m = ioas.map(vm_memory::MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
    /// assert!(!m.is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How the memory was mapped.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags, MapMethod};
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// # let m = ioas.map(vm_memory::MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
    /// assert_eq!(m.method(), MapMethod::UserMemory);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn method(&self) -> MapMethod {
        self.method
    }

    /// The IOAS the memory is mapped in.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// # let m = ioas.map(vm_memory::MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
    /// assert_eq!(m.ioas().id(), ioas.id());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ioas(&self) -> &Ioas {
        &self.ioas
    }

    /// The memory, for the CPU side of the DMA.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// use vm_memory::VolatileMemory;
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// # let m = ioas.map(vm_memory::MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
    /// let mut header = [0u8; 16];
    /// m.memory().get_slice(0, 16)?.copy_to(&mut header[..]); // what the device wrote
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn memory(&self) -> &M {
        &self.mem
    }

    /// Whether the range is still mapped as far as the crate knows: `false` once an
    /// [`Ioas::unmap`] or [`Ioas::unmap_all`] removed it, or a newer mapping took its
    /// place.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let m = ioas.map(vm_memory::MmapRegion::<()>::new(4096)?, None, MapFlags::RW)?;
    /// assert!(m.is_mapped());
    /// ioas.unmap_all()?;
    /// assert!(!m.is_mapped());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn is_mapped(&self) -> bool {
        self.ioas
            .registry()
            .lock()
            .holds(self.iova.raw(), self.ticket)
    }

    /// Unmaps the range (unless it is gone already) and returns the memory.
    ///
    /// If the kernel refuses, the mapping comes back in the [`Refused`] error, still
    /// mapped, to retry or keep.
    ///
    /// ```no_run
    /// # use iommufd::{Ioas, Iommufd, MapFlags};
    /// # let ioas = Ioas::alloc(&Iommufd::open()?)?;
    /// let m = ioas.map(vm_memory::MmapRegion::<()>::new(1 << 16)?, None, MapFlags::RW)?;
    /// let region = m.unmap()?; // devices can no longer reach it
    /// let m = ioas.map(region, None, MapFlags::READ)?; // map it again, read-only
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn unmap(self) -> std::result::Result<M, Refused<Self>> {
        match self.release() {
            Ok(()) => {
                let mut this = ManuallyDrop::new(self);
                // SAFETY: `this` is never used or dropped again, so the memory is taken
                // exactly once; the other fields are dropped by hand below.
                let mem = unsafe { ManuallyDrop::take(&mut this.mem) };
                // SAFETY: `ioas` is read out once and `this` is forgotten.
                drop(unsafe { std::ptr::read(&this.ioas) });
                Ok(mem)
            }
            Err(error) => Err(Refused {
                error,
                object: self,
            }),
        }
    }

    /// Unmaps the range if this handle's mapping is still there.
    fn release(&self) -> Result<()> {
        // If the handle's mapping is no longer registered, it was unmapped by other
        // means already: the memory is out of devices' reach.
        self.ioas
            .registry()
            .lock()
            .release(self.iova.raw(), self.ticket, || {
                match self.ioas.unmap_raw(self.iova.raw(), self.len) {
                    // ENOENT: the range is not mapped (the IOAS was destroyed by id,
                    // or it was unmapped outside this crate): devices cannot reach
                    // the memory.
                    Ok(_) | Err(Errno(libc::ENOENT)) => Ok(()),
                    Err(e) => Err(Error::from_errno("IOMMU_IOAS_UNMAP", self.ioas.id(), e.0)),
                }
            })
            .map(drop)
    }
}

impl<M: DmaMemory> Drop for Mapping<M> {
    fn drop(&mut self) {
        match self.release() {
            Ok(()) => {
                // SAFETY: this is the only place besides `unmap` (which never runs
                // `drop`) that takes the memory, and `self` is not used afterwards.
                drop(unsafe { ManuallyDrop::take(&mut self.mem) });
            }
            Err(e) => log::error!(
                "iommufd: unmapping {} bytes at {} from {} failed, leaking the memory: {e}",
                self.len,
                self.iova,
                self.ioas.id()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::tests::null;

    #[test]
    fn a_new_mapping_evicts_what_it_overlaps() {
        let mut a = Areas::default();
        let t1 = a.insert(0x1000, 0x1000);
        let t2 = a.insert(0x3000, 0x2000);
        let t3 = a.insert(0x8000, 0x1000);
        assert!(a.holds(0x1000, t1) && a.holds(0x3000, t2) && a.holds(0x8000, t3));
        // Overlapping the tail of t2 and all of nothing else.
        let t4 = a.insert(0x4800, 0x1000);
        assert!(!a.holds(0x3000, t2));
        assert!(a.holds(0x4800, t4) && a.holds(0x1000, t1) && a.holds(0x8000, t3));
        // The same range again: a new ticket replaces the old.
        let t5 = a.insert(0x1000, 0x1000);
        assert!(!a.holds(0x1000, t1) && a.holds(0x1000, t5));
        // Adjacent ranges do not overlap.
        a.evict(0x2000, 0x1000);
        assert!(a.holds(0x1000, t5));
        a.evict(0, 0);
        assert_eq!(a.len(), 3);
        // The top of the address space.
        let t6 = a.insert(u64::MAX - 0xfff, 0x1000);
        a.evict(u64::MAX, 1);
        assert!(!a.holds(u64::MAX - 0xfff, t6));
    }

    #[test]
    fn unmaps_remove_only_what_they_cover_completely() {
        let mut a = Areas::default();
        let t1 = a.insert(0x1000, 0x1000);
        let t2 = a.insert(0x2000, 0x2000);
        let t3 = a.insert(0x5000, 0x1000);
        a.remove_within(0x1000, 0x2000); // t1 whole, t2 half
        assert!(!a.holds(0x1000, t1) && a.holds(0x2000, t2) && a.holds(0x5000, t3));
        a.remove_within(0, u64::MAX);
        assert_eq!(a.len(), 0);
        a.remove_within(0, 0);
        let t4 = a.insert(0x1000, 0x1000);
        a.remove(0x1000);
        assert!(!a.holds(0x1000, t4));
    }

    // A model check: random maps (which evict overlaps) and unmaps, against a plain
    // list of live intervals; a handle holds iff its interval is still in the model.
    #[test]
    fn registry_matches_a_model() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // Miri interprets every step: fewer rounds there.
        let rounds = if cfg!(miri) { 4 } else { 200 };
        for _ in 0..rounds {
            let mut a = Areas::default();
            let mut model: Vec<(u64, u64, u64)> = Vec::new(); // (start, last, ticket)
            let mut handles: Vec<(u64, u64)> = Vec::new();
            for _ in 0..60 {
                let start = rnd(64) * 0x1000;
                let len = (1 + rnd(8)) * 0x1000;
                let last = start + len - 1;
                match rnd(3) {
                    0 | 1 => {
                        let t = a.insert(start, len);
                        model.retain(|&(s, l, _)| l < start || s > last);
                        model.push((start, last, t));
                        handles.push((start, t));
                    }
                    _ => {
                        a.remove_within(start, len);
                        model.retain(|&(s, l, _)| !(s >= start && l <= last));
                    }
                }
                for &(s, t) in &handles {
                    let live = model.iter().any(|&(ms, _, mt)| ms == s && mt == t);
                    assert_eq!(a.holds(s, t), live);
                }
                assert_eq!(a.len(), model.len());
            }
        }
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn a_mapping_that_cannot_be_unmapped_comes_back_or_is_leaked() {
        let fd = null();
        let ioas = Ioas::fake(&fd, 3);
        let mapping = |iova| {
            let mem = vm_memory::MmapRegion::<()>::new(4096).expect("mmap");
            Mapping::new(ioas.clone(), Iova(iova), 4096, MapMethod::UserMemory, mem)
        };
        let m = mapping(0x1000);
        assert_eq!(
            (m.iova(), m.len(), m.is_empty(), m.method()),
            (Iova(0x1000), 4096, false, MapMethod::UserMemory)
        );
        assert_eq!(m.ioas().id().raw(), 3);
        assert_eq!(m.memory().size(), 4096);
        assert!(m.is_mapped());
        assert!(format!("{m:?}").contains("iova: Iova(4096)"));
        // The unmap fails (ENOTTY): the mapping comes back, still registered.
        let r = m.unmap().unwrap_err();
        assert!(r.error.is_unsupported(), "{}", r.error);
        assert!(r.object.is_mapped());
        // On drop the failure is logged and the memory leaked.
        drop(r.object);
        // A mapping whose range was unmapped by other means frees without an ioctl.
        let m = mapping(0x2000);
        ioas.registry().lock().remove_within(0, u64::MAX);
        assert!(ioas.registry().is_empty());
        assert!(!m.is_mapped());
        let mem = m.unmap().expect("nothing to unmap");
        assert_eq!(mem.size(), 4096);
        let _ = ioas.into_id();
    }
}
