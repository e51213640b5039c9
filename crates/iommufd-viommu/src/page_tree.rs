//! A radix tree over 52-bit page numbers whose leaves name extents: the index of
//! [`crate::IovaMap`].
//!
//! A slot of level `l` covers 512^l pages and is a `u32`: 0 (empty), `LEAF | x`
//! (every page of the slot belongs to extent `x`) or the index of a node of 512
//! slots of level `l - 1`. Nodes live in one arena, so a node is 2 KiB and a
//! lookup is a few loads from it; the top level (slots of 2^36 pages, 256 TiB)
//! is a short sorted list.

/// Bits of page number per level.
const BITS: u32 = 9;
const FAN: usize = 1 << BITS;
/// The level of the top slots.
const TOP: u32 = 4;
const EMPTY: u32 = 0;
const LEAF: u32 = 1 << 31;

/// The largest extent index a tree can hold.
pub(crate) const MAX_INDEX: u32 = LEAF - 1;

#[inline]
fn is_table(slot: u32) -> bool {
    slot != EMPTY && slot & LEAF == 0
}

/// The number of pages a slot of `level` covers.
fn span(level: u32) -> u64 {
    1 << (BITS * level)
}

/// What holds a last-level span of 512 pages.
enum Cover {
    /// A last-level node.
    Node(u32),
    /// Nothing: every page is empty.
    Nothing,
    /// A leaf of a larger slot.
    Leaf,
}

#[derive(Default)]
pub(crate) struct PageTree {
    /// Top slots by page number >> 36, sorted.
    top: Vec<(u64, u32)>,
    /// Node 0 is never used (0 is the empty slot).
    nodes: Vec<[u32; FAN]>,
    /// Non-empty slots per node.
    used: Vec<u16>,
    free: Vec<u32>,
}

impl PageTree {
    /// Walks down to `page` until a slot that is not a table, or the slot of
    /// level `stop`; returns that slot and its level.
    #[inline]
    fn walk(&self, page: u64, stop: u32) -> Option<(u32, u32)> {
        let i = self
            .top
            .binary_search_by_key(&(page >> (BITS * TOP)), |(k, _)| *k)
            .ok()?;
        let (mut slot, mut level) = (self.top[i].1, TOP);
        while is_table(slot) && level > stop {
            level -= 1;
            slot = self.nodes[slot as usize][((page >> (BITS * level)) as usize) & (FAN - 1)];
        }
        Some((slot, level))
    }

    /// What holds the 512 pages around `page` (a range inside them takes the
    /// fast paths).
    #[inline]
    fn cover(&self, page: u64) -> Cover {
        match self.walk(page, 1) {
            Some((slot, 1)) if is_table(slot) => Cover::Node(slot),
            None | Some((EMPTY, _)) => Cover::Nothing,
            Some(_) => Cover::Leaf,
        }
    }

    /// The extent holding `page`.
    #[inline]
    pub(crate) fn get(&self, page: u64) -> Option<u32> {
        let (slot, _) = self.walk(page, 0)?;
        (slot != EMPTY).then_some(slot & !LEAF)
    }

    /// Sets pages `lo..=hi` to extent `v` if they are all empty; else names an
    /// extent in the way and changes nothing.
    #[inline]
    pub(crate) fn fill_free(&mut self, lo: u64, hi: u64, v: u32) -> Result<(), u32> {
        if lo >> BITS == hi >> BITS {
            let n = match self.cover(lo) {
                Cover::Node(n) => Some(n),
                Cover::Nothing => {
                    self.set(lo, hi, Some(v));
                    return Ok(());
                }
                Cover::Leaf => None,
            };
            if let Some(n) = n {
                let range = (lo as usize) & (FAN - 1)..=(hi as usize) & (FAN - 1);
                let slots = &mut self.nodes[n as usize][range];
                if let Some(s) = slots.iter().find(|s| **s != EMPTY) {
                    return Err(*s & !LEAF);
                }
                slots.fill(v | LEAF);
                self.used[n as usize] += (hi - lo + 1) as u16;
                return Ok(());
            }
        }
        let mut clash = None;
        self.visit(lo, hi, |x| {
            clash = Some(x);
            false
        });
        match clash {
            Some(x) => Err(x),
            None => {
                self.set(lo, hi, Some(v));
                Ok(())
            }
        }
    }

    /// Calls `f` with the extents over pages `lo..=hi`, in order, once each, and
    /// empties those pages.
    #[inline]
    pub(crate) fn take(&mut self, lo: u64, hi: u64, mut f: impl FnMut(u32)) {
        if lo >> BITS == hi >> BITS {
            let n = match self.cover(lo) {
                Cover::Node(n) => Some(n),
                Cover::Nothing => return,
                Cover::Leaf => None,
            };
            if let Some(n) = n {
                let range = (lo as usize) & (FAN - 1)..=(hi as usize) & (FAN - 1);
                let mut last = EMPTY;
                let mut freed = 0u16;
                for s in &mut self.nodes[n as usize][range] {
                    if *s != EMPTY {
                        if *s != last {
                            last = *s;
                            f(*s & !LEAF);
                        }
                        *s = EMPTY;
                        freed += 1;
                    }
                }
                self.used[n as usize] -= freed;
                if self.used[n as usize] == 0 && freed > 0 {
                    // Emptied: free it and any parent it empties.
                    self.set(lo, hi, None);
                }
                return;
            }
        }
        self.visit(lo, hi, |x| {
            f(x);
            true
        });
        self.set(lo, hi, None);
    }

    /// Sets pages `lo..=hi` to extent `v`, or empties them.
    pub(crate) fn set(&mut self, lo: u64, hi: u64, v: Option<u32>) {
        let v = v.map_or(EMPTY, |x| x | LEAF);
        if lo >> BITS == hi >> BITS {
            let cover = self.cover(lo);
            if v == EMPTY && matches!(cover, Cover::Nothing) {
                return;
            }
            if let Cover::Node(n) = cover {
                let node = &mut self.nodes[n as usize];
                let mut used = i32::from(self.used[n as usize]);
                for s in &mut node[(lo as usize) & (FAN - 1)..=(hi as usize) & (FAN - 1)] {
                    used += i32::from(v != EMPTY) - i32::from(*s != EMPTY);
                    *s = v;
                }
                self.used[n as usize] = used as u16;
                if used > 0 {
                    return;
                }
                // Emptied: the walk below frees it and any parent it empties.
            }
        }
        let shift = BITS * TOP;
        let (first, last) = (lo >> shift, hi >> shift);
        let clip = |key: u64| {
            let base = key << shift;
            (base, lo.max(base), hi.min(base + (span(TOP) - 1)))
        };
        // The top slots that exist in the range, then (when setting) the missing
        // ones: linear in the top slots touched, even for a range of 2^64.
        let start = self.top.partition_point(|(k, _)| *k < first);
        let end = self.top.partition_point(|(k, _)| *k <= last);
        let mut emptied = false;
        for i in start..end {
            let (base, l, h) = clip(self.top[i].0);
            let slot = self.apply(self.top[i].1, TOP, base, l, h, v);
            emptied |= slot == EMPTY;
            self.top[i].1 = slot;
        }
        if emptied {
            self.top.retain(|(_, s)| *s != EMPTY);
        }
        if v != EMPTY && (end - start) as u64 != last - first + 1 {
            let have: Vec<u64> = self.top.iter().map(|(k, _)| *k).collect();
            let mut missing = Vec::new();
            for key in first..=last {
                if have.binary_search(&key).is_err() {
                    let (base, l, h) = clip(key);
                    missing.push((key, self.apply(EMPTY, TOP, base, l, h, v)));
                }
            }
            self.top.extend(missing);
            self.top.sort_unstable_by_key(|(k, _)| *k);
        }
    }

    /// The new value of a slot of `level` covering pages from `base` whose pages
    /// `lo..=hi` are set to `v`.
    fn apply(&mut self, slot: u32, level: u32, base: u64, lo: u64, hi: u64, v: u32) -> u32 {
        if lo == base && hi == base + (span(level) - 1) {
            if is_table(slot) {
                self.free_subtree(slot);
            }
            return v;
        }
        if slot == v && !is_table(slot) {
            return slot;
        }
        let n = if is_table(slot) {
            slot
        } else {
            self.alloc(slot)
        };
        self.set_in(n, level - 1, base, lo, hi, v);
        if self.used[n as usize] == 0 {
            self.free.push(n);
            return EMPTY;
        }
        n
    }

    /// Sets pages `lo..=hi` of node `n`, whose slots have `level` and start at
    /// page `base`.
    fn set_in(&mut self, n: u32, level: u32, base: u64, lo: u64, hi: u64, v: u32) {
        let shift = BITS * level;
        let (i0, i1) = (
            ((lo - base) >> shift) as usize,
            ((hi - base) >> shift) as usize,
        );
        for i in i0..=i1 {
            let s = base + ((i as u64) << shift);
            let e = s + (span(level) - 1);
            let old = self.nodes[n as usize][i];
            let new = self.apply(old, level, s, lo.max(s), hi.min(e), v);
            self.nodes[n as usize][i] = new;
            let used = &mut self.used[n as usize];
            *used = *used + u16::from(new != EMPTY) - u16::from(old != EMPTY);
        }
    }

    /// A node with every slot `fill`.
    fn alloc(&mut self, fill: u32) -> u32 {
        let used = if fill == EMPTY { 0 } else { FAN as u16 };
        match self.free.pop() {
            Some(n) => {
                self.nodes[n as usize] = [fill; FAN];
                self.used[n as usize] = used;
                n
            }
            None => {
                if self.nodes.is_empty() {
                    self.nodes.push([EMPTY; FAN]);
                    self.used.push(0);
                }
                self.nodes.push([fill; FAN]);
                self.used.push(used);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn free_subtree(&mut self, n: u32) {
        for i in 0..FAN {
            let s = self.nodes[n as usize][i];
            if is_table(s) {
                self.free_subtree(s);
            }
        }
        self.free.push(n);
    }

    /// Calls `f` with the extents over pages `lo..=hi`, in order, once each, until
    /// it returns false.
    #[inline]
    pub(crate) fn visit(&self, lo: u64, hi: u64, mut f: impl FnMut(u32) -> bool) {
        let mut last = None;
        let mut once = |slot: u32| {
            let x = slot & !LEAF;
            if last == Some(x) {
                return true;
            }
            last = Some(x);
            f(x)
        };
        if lo >> BITS == hi >> BITS {
            let n = match self.cover(lo) {
                Cover::Node(n) => Some(n),
                Cover::Nothing => return,
                Cover::Leaf => None,
            };
            if let Some(n) = n {
                for s in
                    &self.nodes[n as usize][(lo as usize) & (FAN - 1)..=(hi as usize) & (FAN - 1)]
                {
                    if *s != EMPTY && !once(*s) {
                        return;
                    }
                }
                return;
            }
        }
        let shift = BITS * TOP;
        let start = self.top.partition_point(|(k, _)| *k < lo >> shift);
        for &(key, slot) in &self.top[start..] {
            if key > hi >> shift {
                break;
            }
            let base = key << shift;
            let (l, h) = (lo.max(base), hi.min(base + (span(TOP) - 1)));
            if !self.visit_slot(slot, TOP, base, l, h, &mut once) {
                return;
            }
        }
    }

    fn visit_slot(
        &self,
        slot: u32,
        level: u32,
        base: u64,
        lo: u64,
        hi: u64,
        f: &mut impl FnMut(u32) -> bool,
    ) -> bool {
        if slot == EMPTY {
            return true;
        }
        if !is_table(slot) {
            return f(slot);
        }
        let shift = BITS * (level - 1);
        let (i0, i1) = (
            ((lo - base) >> shift) as usize,
            ((hi - base) >> shift) as usize,
        );
        (i0..=i1).all(|i| {
            let s = base + ((i as u64) << shift);
            let e = s + (span(level - 1) - 1);
            self.visit_slot(
                self.nodes[slot as usize][i],
                level - 1,
                s,
                lo.max(s),
                hi.min(e),
                f,
            )
        })
    }

    /// Empties the tree.
    pub(crate) fn clear(&mut self) {
        *self = PageTree::default();
    }

    /// Whether no page is set (and no node is held).
    #[cfg(test)]
    pub(crate) fn is_bare(&self) -> bool {
        self.top.is_empty() && self.free.len() + 1 >= self.nodes.len()
    }

    /// The number of top slots in use.
    #[cfg(test)]
    pub(crate) fn top_slots(&self) -> usize {
        self.top.len()
    }
}
