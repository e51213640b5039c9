//! A pool of host PASIDs shared by devices and VMs.

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::PasidError;

/// The host PASIDs a VMM hands out under [`PasidPolicy::Allocated`](crate::PasidPolicy::Allocated):
/// one pool per host (or per set of devices that share a PASID space, such as the
/// users of a shared work queue), shared by every [`PasidTable`](crate::PasidTable)
/// built on it. Cloning shares the pool.
///
/// ```
/// use iommufd_viommu::HostPasidPool;
/// let pool = HostPasidPool::new(1..1 << 20)?;
/// let p = pool.alloc(1 << 20).expect("free PASIDs");
/// assert_eq!(p, 1);
/// assert_eq!(pool.in_use(), 1);
/// pool.free(p);
/// assert_eq!(pool.in_use(), 0);
/// # Ok::<(), iommufd_viommu::PasidError>(())
/// ```
#[derive(Clone)]
pub struct HostPasidPool {
    inner: Arc<Mutex<PoolInner>>,
}

struct PoolInner {
    range: Range<u32>,
    /// One bit per PASID of `range`, set when in use.
    used: Vec<u64>,
    count: u32,
    /// Where the next search starts (the lowest PASID that may be free).
    hint: u32,
}

impl HostPasidPool {
    /// A pool of the PASIDs in `range` (inside 1..2^20: PASID 0 is never handed
    /// out, 2^20 is the PCIe limit).
    pub fn new(range: Range<u32>) -> Result<Self, PasidError> {
        if range.start == 0 || range.end > 1 << 20 || range.is_empty() {
            return Err(PasidError::BadPool {
                start: range.start,
                end: range.end,
            });
        }
        let words = (range.end - range.start).div_ceil(64) as usize;
        Ok(HostPasidPool {
            inner: Arc::new(Mutex::new(PoolInner {
                hint: range.start,
                range,
                used: vec![0; words],
                count: 0,
            })),
        })
    }

    fn lock(&self) -> MutexGuard<'_, PoolInner> {
        // Every update is a bit flip and a count, done together: a poisoned pool
        // is consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lowest free PASID below `below` (a device's PASID limit), or
    /// `None` if there is none.
    pub fn alloc(&self, below: u32) -> Option<u32> {
        let mut p = self.lock();
        let end = p.range.end.min(below);
        let start = p.hint.max(p.range.start);
        let base = p.range.start;
        let mut i = start;
        while i < end {
            let bit = i - base;
            let word = p.used[(bit / 64) as usize];
            if word == u64::MAX {
                i = base + (bit / 64 + 1) * 64;
                continue;
            }
            if word & (1 << (bit % 64)) == 0 {
                p.used[(bit / 64) as usize] |= 1 << (bit % 64);
                p.count += 1;
                p.hint = i + 1;
                return Some(i);
            }
            i += 1;
        }
        None
    }

    /// Takes `pasid` itself, if it is in the pool and free.
    pub fn take(&self, pasid: u32) -> bool {
        let mut p = self.lock();
        if !p.range.contains(&pasid) {
            return false;
        }
        let bit = pasid - p.range.start;
        let (w, m) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if p.used[w] & m != 0 {
            return false;
        }
        p.used[w] |= m;
        p.count += 1;
        true
    }

    /// Returns `pasid` to the pool (nothing if it is not in use).
    pub fn free(&self, pasid: u32) {
        let mut p = self.lock();
        if !p.range.contains(&pasid) {
            return;
        }
        let bit = pasid - p.range.start;
        let (w, m) = ((bit / 64) as usize, 1u64 << (bit % 64));
        if p.used[w] & m != 0 {
            p.used[w] &= !m;
            p.count -= 1;
            p.hint = p.hint.min(pasid);
        }
    }

    /// How many PASIDs are in use.
    pub fn in_use(&self) -> u32 {
        self.lock().count
    }

    /// The PASIDs of the pool.
    pub fn range(&self) -> Range<u32> {
        self.lock().range.clone()
    }

    /// Whether `other` is a handle of the same pool.
    pub fn same(&self, other: &HostPasidPool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Debug for HostPasidPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.lock();
        f.debug_struct("HostPasidPool")
            .field("range", &p.range)
            .field("in_use", &p.count)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_below_a_limit() {
        assert!(HostPasidPool::new(0..10).is_err());
        assert!(HostPasidPool::new(5..5).is_err());
        assert!(HostPasidPool::new(1..(1 << 20) + 1).is_err());
        let pool = HostPasidPool::new(1..200).unwrap();
        let got: Vec<u32> = (0..130).map(|_| pool.alloc(1000).unwrap()).collect();
        assert_eq!(got, (1..131).collect::<Vec<_>>());
        pool.free(64);
        pool.free(3);
        assert_eq!(pool.alloc(1000), Some(3));
        assert_eq!(pool.alloc(1000), Some(64));
        assert_eq!(pool.alloc(131), None, "nothing free below 131");
        assert_eq!(pool.alloc(1000), Some(131));
        assert!(pool.take(150) && !pool.take(150) && !pool.take(500));
        assert_eq!(pool.in_use(), 132);
        pool.free(150);
        pool.free(150);
        pool.free(0);
        assert_eq!(pool.in_use(), 131);
        assert!(pool.same(&pool.clone()));
        assert_eq!(pool.range(), 1..200);
        assert!(format!("{pool:?}").contains("in_use: 131"));
        while pool.alloc(1000).is_some() {}
        assert_eq!(pool.in_use(), 199);
    }
}
