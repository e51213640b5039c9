//! A two-level radix array of atomic words: lock-free reads, one writer at a time.
//!
//! Indices below `2^bits` (at most 2^20, the PASID space) are split into a
//! directory index and a leaf index of [`LEAF_BITS`] bits. Leaves are allocated on
//! first write and freed only when the array is dropped, so a reader that loaded a
//! leaf pointer may use it for as long as it holds `&self`: no reclamation scheme
//! is needed, and a read is two atomic loads.

use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

/// Bits of the index a leaf covers.
pub(crate) const LEAF_BITS: u32 = 10;
const LEAF: usize = 1 << LEAF_BITS;

/// An atomic word a [`Radix`] can hold; 0 means empty.
pub(crate) trait Word: Sized + Send + Sync {
    /// The plain value.
    type Value: Copy + Eq + Default;
    /// An empty slot.
    const EMPTY: Self;
    fn get(&self) -> Self::Value;
    fn put(&self, v: Self::Value);
}

impl Word for AtomicU64 {
    type Value = u64;
    const EMPTY: Self = AtomicU64::new(0);
    fn get(&self) -> u64 {
        self.load(Ordering::Acquire)
    }
    fn put(&self, v: u64) {
        self.store(v, Ordering::Release)
    }
}

impl Word for AtomicU32 {
    type Value = u32;
    const EMPTY: Self = AtomicU32::new(0);
    fn get(&self) -> u32 {
        self.load(Ordering::Acquire)
    }
    fn put(&self, v: u32) {
        self.store(v, Ordering::Release)
    }
}

type Leaf<W> = [W; LEAF];

/// The array. Writers must be serialized by the caller (`set` takes `&self` so
/// that readers need no lock; the table's update mutex orders the writers).
pub(crate) struct Radix<W: Word> {
    dir: Box<[AtomicPtr<Leaf<W>>]>,
    bits: u32,
}

impl<W: Word> Radix<W> {
    /// An empty array for indices below `2^bits` (`bits` at most 20).
    pub(crate) fn new(bits: u32) -> Self {
        let bits = bits.min(20);
        let leaves = (1usize << bits).div_ceil(LEAF);
        Radix {
            dir: (0..leaves)
                .map(|_| AtomicPtr::new(ptr::null_mut()))
                .collect(),
            bits,
        }
    }

    /// The number of indices (`2^bits`).
    pub(crate) fn capacity(&self) -> u32 {
        1 << self.bits
    }

    fn leaf(&self, index: u32) -> Option<&Leaf<W>> {
        if index >= self.capacity() {
            return None;
        }
        let p = self.dir[(index >> LEAF_BITS) as usize].load(Ordering::Acquire);
        // SAFETY: a non-null directory entry points to a leaf allocated by `set`
        // (published with Release, read with Acquire) and freed only in `Drop`,
        // which cannot run while `&self` is borrowed.
        unsafe { p.as_ref() }
    }

    /// The value at `index`: the type's default for empty slots and indices out of
    /// range.
    pub(crate) fn get(&self, index: u32) -> W::Value {
        self.leaf(index)
            .map_or_else(W::Value::default, |l| l[index as usize & (LEAF - 1)].get())
    }

    /// Stores `v` at `index` (below [`Radix::capacity`]; ignored otherwise). Callers
    /// serialize writers.
    pub(crate) fn set(&self, index: u32, v: W::Value) {
        if index >= self.capacity() {
            return;
        }
        let slot = &self.dir[(index >> LEAF_BITS) as usize];
        let mut p = slot.load(Ordering::Acquire);
        if p.is_null() {
            if v == W::Value::default() {
                return; // clearing an unallocated slot
            }
            let fresh = Box::into_raw(Box::new([const { W::EMPTY }; LEAF]));
            match slot.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => p = fresh,
                Err(existing) => {
                    // SAFETY: `fresh` came from `Box::into_raw` above and was not
                    // published.
                    drop(unsafe { Box::from_raw(fresh) });
                    p = existing;
                }
            }
        }
        // SAFETY: `p` is a published leaf, live until `Drop` (see `leaf`).
        let leaf: &Leaf<W> = unsafe { &*p };
        leaf[index as usize & (LEAF - 1)].put(v);
    }

    /// The indices with a non-empty value, ascending (only allocated leaves are
    /// visited).
    pub(crate) fn occupied(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (d, p) in self.dir.iter().enumerate() {
            // SAFETY: as in `leaf`: published leaves live until `Drop`.
            let Some(leaf) = (unsafe { p.load(Ordering::Acquire).as_ref() }) else {
                continue;
            };
            for (i, w) in leaf.iter().enumerate() {
                if w.get() != W::Value::default() {
                    out.push(((d << LEAF_BITS) | i) as u32);
                }
            }
        }
        out
    }

    /// Bytes allocated: the directory and the leaves present.
    pub(crate) fn bytes(&self) -> usize {
        let leaves = self
            .dir
            .iter()
            .filter(|p| !p.load(Ordering::Acquire).is_null())
            .count();
        self.dir.len() * size_of::<AtomicPtr<Leaf<W>>>() + leaves * size_of::<Leaf<W>>()
    }
}

impl<W: Word> Drop for Radix<W> {
    fn drop(&mut self) {
        for p in self.dir.iter_mut() {
            let leaf = std::mem::replace(p.get_mut(), ptr::null_mut());
            if !leaf.is_null() {
                // SAFETY: every non-null entry came from `Box::into_raw` in `set`
                // and is freed once, here, with no reader left (`&mut self`).
                drop(unsafe { Box::from_raw(leaf) });
            }
        }
    }
}

impl<W: Word> std::fmt::Debug for Radix<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Radix")
            .field("bits", &self.bits)
            .field("bytes", &self.bytes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_and_full() {
        let r: Radix<AtomicU64> = Radix::new(12);
        assert_eq!(r.capacity(), 4096);
        assert_eq!(r.get(5), 0);
        assert_eq!(r.bytes(), 4 * 8, "no leaf yet");
        r.set(5, 9);
        r.set(4095, 1);
        r.set(4096, 1); // out of range: ignored
        assert_eq!(
            (r.get(5), r.get(4095), r.get(4096), r.get(u32::MAX)),
            (9, 1, 0, 0)
        );
        assert_eq!(r.bytes(), 4 * 8 + 2 * 8 * 1024);
        assert_eq!(r.occupied(), [5, 4095]);
        r.set(5, 0);
        assert_eq!(r.get(5), 0);
        assert_eq!(r.occupied(), [4095]);
        r.set(2000, 0); // clearing an empty leaf allocates nothing
        assert_eq!(r.bytes(), 4 * 8 + 2 * 8 * 1024);
        let small: Radix<AtomicU32> = Radix::new(3);
        assert_eq!(small.capacity(), 8);
        small.set(7, 3);
        assert_eq!(small.get(7), 3);
        assert!(format!("{small:?}").contains("bits: 3"));
    }

    #[test]
    fn readers_on_other_threads() {
        let bits = if cfg!(miri) { 11 } else { 14 };
        let r = std::sync::Arc::new(Radix::<AtomicU64>::new(bits));
        let writer = {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 0..(1u32 << bits) {
                    r.set(i, u64::from(i) | 1 << 63);
                }
            })
        };
        let reader = {
            let r = r.clone();
            std::thread::spawn(move || {
                for _ in 0..4 {
                    for i in 0..(1u32 << bits) {
                        let v = r.get(i);
                        assert!(v == 0 || v == u64::from(i) | 1 << 63);
                    }
                }
            })
        };
        writer.join().unwrap();
        reader.join().unwrap();
        assert_eq!(r.get(100), 100 | 1 << 63);
    }
}
