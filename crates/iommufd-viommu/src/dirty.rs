//! Pages written by device DMA, harvested from dirty-tracking HWPTs into the dirty
//! bitmaps of vm-memory regions, for live migration.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use iommufd::vm_memory::bitmap::AtomicBitmap;
use iommufd::vm_memory::bitmap::{Bitmap, NewBitmap, RefSlice, WithBitmapSlice};
use iommufd::{DirtyReadFlags, Hwpt, HwptFlags, Iova};

use crate::iova_map::PAGE_SIZE;

/// A dirty bitmap of a guest memory region that dirty pages of device DMA can be
/// merged into: the bitmap type `B` of the region (vm-memory's
/// `GuestRegionMmap<B>`).
///
/// Implemented for vm-memory's [`AtomicBitmap`] (one atomic update per run of
/// dirty pages), for [`DirtyLog`] (word-wise, at memory speed) and for `()`
/// (vm-memory's bitmap of regions nobody tracks: the pages are not recorded).
pub trait DirtySink {
    /// Marks dirty page `page + i` (of 4 KiB, from the start of the region) for
    /// each bit `bit + i` set in `words`, `i` below `pages`.
    fn merge_dirty(&self, page: u64, words: &[u64], bit: u64, pages: u64);
}

/// Calls `f(first, count)` for each run of set bits among bits `bit..bit + n`.
fn runs(words: &[u64], bit: u64, n: u64, mut f: impl FnMut(u64, u64)) {
    let is_set = |i: u64| {
        words
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    };
    let (mut i, end) = (bit, bit + n);
    while i < end {
        let w = words.get((i / 64) as usize).copied().unwrap_or(0) >> (i % 64);
        if w == 0 {
            // Nothing more in this word.
            i = (i / 64 + 1) * 64;
            continue;
        }
        i += u64::from(w.trailing_zeros());
        if i >= end {
            break;
        }
        let start = i;
        while i < end && is_set(i) {
            i += 1;
        }
        f(start - bit, i - start);
    }
}

impl DirtySink for () {
    fn merge_dirty(&self, _page: u64, _words: &[u64], _bit: u64, _pages: u64) {}
}

impl DirtySink for AtomicBitmap {
    fn merge_dirty(&self, page: u64, words: &[u64], bit: u64, pages: u64) {
        runs(words, bit, pages, |first, n| {
            self.set_addr_range(
                ((page + first) * PAGE_SIZE) as usize,
                (n * PAGE_SIZE) as usize,
            );
        });
    }
}

/// A vm-memory dirty bitmap (`GuestMemoryMmap<DirtyLog>`) that takes the dirty
/// pages of device DMA at memory speed.
///
/// vm-memory's [`AtomicBitmap`] can only set bits one page at a time, with a
/// locked instruction each. A `DirtyLog` keeps two bitmaps of 4 KiB pages: the
/// VMM's own writes (atomic words, marked through vm-memory's `Bitmap` as usual,
/// never blocked), and device writes, plain words behind a lock, which
/// [`DirtySink::merge_dirty`] ORs in at memory speed. Readers see the union:
/// [`DirtyLog::is_dirty`], [`DirtyLog::get_and_reset`].
///
/// ```
/// use iommufd::vm_memory::bitmap::Bitmap;
/// use iommufd_viommu::{DirtyLog, DirtySink};
/// let log = DirtyLog::new(1 << 20); // 1 MiB region: 256 pages
/// log.mark_dirty(0x3000, 1); // a write by the VMM
/// log.merge_dirty(64, &[0b101], 0, 3); // device writes to pages 64 and 66
/// assert!(log.is_dirty(3) && log.is_dirty(64) && !log.is_dirty(65));
/// let words = log.get_and_reset();
/// assert_eq!((words[0], words[1]), (1 << 3, 0b101));
/// assert!(!log.is_dirty(64));
/// ```
pub struct DirtyLog {
    vmm: Vec<AtomicU64>,
    dma: Mutex<Vec<u64>>,
    pages: u64,
}

impl fmt::Debug for DirtyLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirtyLog")
            .field("pages", &self.pages)
            .finish()
    }
}

impl Default for DirtyLog {
    fn default() -> Self {
        DirtyLog::new(0)
    }
}

impl Clone for DirtyLog {
    fn clone(&self) -> Self {
        DirtyLog {
            vmm: self
                .vmm
                .iter()
                .map(|w| AtomicU64::new(w.load(Ordering::Acquire)))
                .collect(),
            dma: Mutex::new(self.dma().clone()),
            pages: self.pages,
        }
    }
}

impl DirtyLog {
    /// A clean log for `bytes` of memory (rounded up to 4 KiB pages).
    pub fn new(bytes: usize) -> Self {
        let pages = (bytes as u64).div_ceil(PAGE_SIZE);
        let words = pages.div_ceil(64) as usize;
        DirtyLog {
            vmm: (0..words).map(|_| AtomicU64::new(0)).collect(),
            dma: Mutex::new(vec![0; words]),
            pages,
        }
    }

    fn dma(&self) -> MutexGuard<'_, Vec<u64>> {
        // Words are only ever ORed or cleared: a panic elsewhere leaves them valid.
        self.dma.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The number of 4 KiB pages covered.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Whether page `page` was written, by the VMM or by a device.
    pub fn is_dirty(&self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        let (w, b) = ((page / 64) as usize, page % 64);
        (self.vmm[w].load(Ordering::Acquire) | self.dma()[w]) & (1 << b) != 0
    }

    /// The dirty pages (one bit per page, page 0 in bit 0 of word 0), cleared as
    /// they are read: a migration round's harvest.
    pub fn get_and_reset(&self) -> Vec<u64> {
        let mut dma = self.dma();
        self.vmm
            .iter()
            .zip(dma.iter_mut())
            .map(|(v, d)| v.swap(0, Ordering::AcqRel) | std::mem::take(d))
            .collect()
    }

    /// The number of dirty pages.
    pub fn count(&self) -> u64 {
        let dma = self.dma();
        self.vmm
            .iter()
            .zip(dma.iter())
            .map(|(v, d)| u64::from((v.load(Ordering::Acquire) | d).count_ones()))
            .sum()
    }

    fn set_vmm(&self, first: u64, n: u64) {
        let end = (first + n).min(self.pages);
        let mut p = first;
        while p < end {
            let (w, b) = ((p / 64) as usize, p % 64);
            let k = (64 - b).min(end - p);
            let mask = if k == 64 {
                u64::MAX
            } else {
                ((1u64 << k) - 1) << b
            };
            self.vmm[w].fetch_or(mask, Ordering::AcqRel);
            p += k;
        }
    }
}

/// `dst[i] |= src[i]` over the shorter of the two.
fn or_words(dst: &mut [u64], src: &[u64]) {
    #[cfg(all(target_arch = "x86_64", not(miri)))]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the only requirement of `or_words_avx2`.
        unsafe { or_words_avx2(dst, src) };
        return;
    }
    or_words_plain(dst, src);
}

#[inline(always)]
fn or_words_plain(dst: &mut [u64], src: &[u64]) {
    // Vectorized by the compiler, in the widest registers it may use.
    for (d, s) in dst.iter_mut().zip(src) {
        *d |= *s;
    }
}

/// [`or_words_plain`] compiled for AVX2: 32-byte vectors, twice the
/// baseline's 16, which keeps a merge near a `memcpy` (glibc's uses the widest
/// registers the CPU has).
///
/// # Safety
///
/// The CPU must have AVX2.
#[cfg(all(target_arch = "x86_64", not(miri)))]
#[target_feature(enable = "avx2")]
unsafe fn or_words_avx2(dst: &mut [u64], src: &[u64]) {
    or_words_plain(dst, src);
}

impl DirtySink for DirtyLog {
    fn merge_dirty(&self, page: u64, words: &[u64], bit: u64, pages: u64) {
        let pages = pages.min(self.pages.saturating_sub(page));
        if pages == 0 {
            return;
        }
        let mut dma = self.dma();
        let (mut page, mut bit, mut pages) = (page, bit, pages);
        if page % 64 == 0 && bit % 64 == 0 {
            // Word-aligned, the common case (regions and mappings start on 256 KiB
            // boundaries): a plain OR of whole words, which the compiler vectorizes.
            let (dst, src) = ((page / 64) as usize, (bit / 64) as usize);
            let full = ((pages / 64) as usize).min(words.len().saturating_sub(src));
            or_words(&mut dma[dst..dst + full], &words[src..src + full]);
            let done = full as u64 * 64;
            (page, bit, pages) = (page + done, bit + done, pages - done);
        }
        runs(words, bit, pages, |first, n| {
            for p in page + first..page + first + n {
                dma[(p / 64) as usize] |= 1 << (p % 64);
            }
        });
    }
}

impl<'a> WithBitmapSlice<'a> for DirtyLog {
    type S = RefSlice<'a, Self>;
}

impl Bitmap for DirtyLog {
    fn mark_dirty(&self, offset: usize, len: usize) {
        if len == 0 {
            return;
        }
        let first = offset as u64 / PAGE_SIZE;
        let last = (offset as u64).saturating_add(len as u64 - 1) / PAGE_SIZE;
        self.set_vmm(first, last - first + 1);
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.is_dirty(offset as u64 / PAGE_SIZE)
    }

    fn slice_at(&self, offset: usize) -> RefSlice<'_, Self> {
        RefSlice::new(self, offset)
    }
}

impl NewBitmap for DirtyLog {
    fn with_len(len: usize) -> Self {
        DirtyLog::new(len)
    }
}

/// Enables or disables dirty tracking on `hwpts`; a HWPT allocated without
/// [`HwptFlags::DIRTY_TRACKING`] (its device's IOMMU cannot track) fails with
/// [`iommufd::Error::Unsupported`] before anything changes, since migrating
/// without its dirty pages would lose DMA writes.
pub(crate) fn set_tracking(hwpts: &[Hwpt], on: bool) -> iommufd::Result<()> {
    if on {
        if let Some(h) = hwpts
            .iter()
            .find(|h| !h.flags().contains(HwptFlags::DIRTY_TRACKING))
        {
            return Err(iommufd::Error::Unsupported {
                op: "IOMMU_HWPT_SET_DIRTY_TRACKING",
                object: format!("{} (allocated without dirty tracking)", h.id()),
                errno: libc::EOPNOTSUPP,
            });
        }
    }
    for h in hwpts {
        if on {
            h.enable_dirty_tracking()?;
        } else {
            h.disable_dirty_tracking()?;
        }
    }
    Ok(())
}

/// A run of IOVA-contiguous kernel mappings whose dirty bits are read in one
/// ioctl, and where each piece's bits go.
pub(crate) struct Harvest<'a, S: ?Sized> {
    /// The first IOVA and the length of the run.
    pub(crate) iova: u64,
    pub(crate) len: u64,
    /// Per piece, in order: its length, the bitmap of its region and the page in
    /// it where the piece starts.
    pub(crate) pieces: Vec<(u64, &'a S, u64)>,
}

/// Reads the dirty bits of every run from every HWPT and merges them into the
/// pieces' bitmaps; returns the number of dirty bits merged (a page dirtied
/// through two HWPTs counts twice).
pub(crate) fn harvest<S: DirtySink + ?Sized>(
    hwpts: &[Hwpt],
    runs: &[Harvest<'_, S>],
    flags: DirtyReadFlags,
) -> iommufd::Result<u64> {
    let mut total = 0;
    for h in hwpts {
        for r in runs {
            let bits = h.get_dirty_bitmap(Iova(r.iova), r.len, PAGE_SIZE, flags)?;
            total += bits.count_dirty();
            let mut bit = 0;
            for (len, sink, page) in &r.pieces {
                let n = len / PAGE_SIZE;
                sink.merge_dirty(*page, bits.as_words(), bit, n);
                bit += n;
            }
        }
    }
    Ok(total)
}

/// Marks every page of every run dirty in the pieces' bitmaps: what is left when
/// the dirty bits cannot be read, as the kernel is about to forget them.
pub(crate) fn mark_all<S: DirtySink + ?Sized>(runs: &[Harvest<'_, S>]) {
    // A bounded buffer of set bits, however long the piece.
    const WORDS: u64 = 1024;
    let ones = [u64::MAX; WORDS as usize];
    for r in runs {
        for (len, sink, page) in &r.pieces {
            let n = len / PAGE_SIZE;
            let mut done = 0;
            while done < n {
                let step = (n - done).min(WORDS * 64);
                sink.merge_dirty(page + done, &ones, 0, step);
                done += step;
            }
        }
    }
}

/// Groups `(iova, len, sink, page)` pieces (in IOVA order) into runs without
/// holes.
pub(crate) fn group<'a, S: ?Sized>(
    pieces: impl IntoIterator<Item = (u64, u64, &'a S, u64)>,
) -> Vec<Harvest<'a, S>> {
    let mut out: Vec<Harvest<'a, S>> = Vec::new();
    for (iova, len, sink, page) in pieces {
        match out.last_mut() {
            Some(r) if r.iova.checked_add(r.len) == Some(iova) => {
                r.len += len;
                r.pieces.push((len, sink, page));
            }
            _ => out.push(Harvest {
                iova,
                len,
                pieces: vec![(len, sink, page)],
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_find_every_set_bit_once() {
        let words = [0b1011_0000u64, u64::MAX, 1 << 63];
        let mut got = Vec::new();
        runs(&words, 4, 188, |f, n| got.push((f, n)));
        assert_eq!(got, vec![(0, 2), (3, 1), (60, 64), (187, 1)]);
        got.clear();
        runs(&words, 70, 10, |f, n| got.push((f, n)));
        assert_eq!(got, vec![(0, 10)]);
    }

    #[test]
    fn merges_land_at_the_right_pages_aligned_or_not() {
        let log = DirtyLog::new(512 * 4096);
        let src = [0xf0u64, 0, 1 << 5];
        log.merge_dirty(64, &src, 0, 192); // aligned
        log.merge_dirty(3, &src, 4, 4); // unaligned: bits 4..8 -> pages 3..7
        let dirty: Vec<u64> = (0..512).filter(|p| log.is_dirty(*p)).collect();
        assert_eq!(dirty, vec![3, 4, 5, 6, 68, 69, 70, 71, 64 + 128 + 5]);
        // Past the end: ignored.
        log.merge_dirty(510, &[u64::MAX], 0, 64);
        assert_eq!(log.count(), 11);
        let a = AtomicBitmap::new(512 * 4096, std::num::NonZeroUsize::new(4096).unwrap());
        a.merge_dirty(64, &src, 0, 192);
        let dirty: Vec<u64> = (0..512).filter(|p| a.is_bit_set(*p as usize)).collect();
        assert_eq!(dirty, vec![68, 69, 70, 71, 64 + 128 + 5]);
    }

    #[test]
    fn a_guest_memory_of_dirty_logs_records_vmm_writes() {
        use iommufd::vm_memory::GuestMemoryRegion;
        use iommufd::vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
        let ram = GuestMemoryMmap::<DirtyLog>::from_ranges(&[(GuestAddress(0x10_0000), 0x10_0000)])
            .unwrap();
        ram.write_slice(&[1u8; 10], GuestAddress(0x10_1ffc))
            .unwrap(); // pages 1 and 2
        let region = ram.iter().next().unwrap();
        let log = region.get_mmap();
        let log = log.bitmap();
        assert_eq!(log.pages(), 256);
        assert!(log.dirty_at(0x1000) && log.dirty_at(0x2fff) && !log.dirty_at(0x3000));
        assert!(
            region.bitmap().dirty_at(0x2000),
            "through vm-memory's slice"
        );
        let copy = log.clone();
        assert_eq!(copy.count(), 2);
        assert!(format!("{copy:?}").contains("256"));
        assert_eq!(log.get_and_reset()[0], 0b110);
        assert_eq!(copy.count(), 2, "a copy, not a view");
        let empty = DirtyLog::default();
        assert_eq!((empty.pages(), empty.is_dirty(0)), (0, false));
        empty.mark_dirty(0, 0);
        empty.merge_dirty(0, &[1], 0, 1);
        assert_eq!(DirtyLog::with_len(8192).pages(), 2);
    }

    #[test]
    fn harvest_runs_group_contiguous_pieces() {
        let (a, b) = (DirtyLog::new(1 << 20), DirtyLog::new(1 << 20));
        let runs = group([
            (0x1000, 0x2000, &a, 0),
            (0x3000, 0x1000, &b, 5),
            (0x8000, 0x1000, &a, 9),
        ]);
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].iova, runs[0].len, runs[0].pieces.len()),
            (0x1000, 0x3000, 2)
        );
        assert_eq!((runs[1].iova, runs[1].len), (0x8000, 0x1000));
        assert!(group::<DirtyLog>([]).is_empty());
    }

    #[test]
    #[cfg_attr(miri, ignore = "70,000 pages: slow under Miri, and no pointer code")]
    fn mark_all_marks_exactly_the_pieces_however_long() {
        let (a, b) = (DirtyLog::new(1 << 30), DirtyLog::new(1 << 20));
        // 70,000 pages from page 3 of `a` (past one buffer of set bits), then
        // 2 pages from page 7 of `b`; a second run of 1 page of `a`.
        let runs = group([
            (0x1000, 70_000 * PAGE_SIZE, &a, 3),
            (0x1000 + 70_000 * PAGE_SIZE, 2 * PAGE_SIZE, &b, 7),
            (1 << 40, PAGE_SIZE, &a, 100_000),
        ]);
        mark_all(&runs);
        assert_eq!(a.count(), 70_001);
        assert!(!a.is_dirty(2) && a.is_dirty(3) && a.is_dirty(70_002));
        assert!(!a.is_dirty(70_003) && a.is_dirty(100_000));
        assert_eq!(b.count(), 2);
        assert!(b.is_dirty(7) && b.is_dirty(8) && !b.is_dirty(9));
    }

    #[test]
    fn vmm_writes_and_device_writes_are_one_view() {
        let log = DirtyLog::new(1 << 20);
        log.mark_dirty(4095, 2); // pages 0 and 1
        log.mark_dirty(0x10000, 64 * 4096); // pages 16..80
        log.merge_dirty(0, &[0, 1 << 36], 0, 128); // page 100
        assert_eq!(log.count(), 2 + 64 + 1);
        let w = log.get_and_reset();
        assert_eq!((w[0], w[1]), (0b11 | (u64::MAX << 16), 0xffff | 1 << 36));
        assert_eq!(log.count(), 0);
    }
}
