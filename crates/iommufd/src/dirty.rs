//! Dirty page bitmaps, in the kernel's layout.

use crate::{Error, Iova, Result};

/// The dirty state of a range of IOVA pages: bit `i` of `u64` word `w` is page
/// `w * 64 + i`, the page at `iova + (w * 64 + i) * page_size` (the kernel's
/// layout).
///
/// ```
/// use iommufd::{DirtyBitmap, Iova};
/// let mut bm = DirtyBitmap::new(Iova(0x10000), 0x10000, 0x1000)?;
/// assert_eq!(bm.pages(), 16);
/// bm.set(3);
/// bm.set(15);
/// assert!(bm.is_dirty(3));
/// assert_eq!(bm.iter_dirty_pages().collect::<Vec<_>>(), [3, 15]);
/// assert_eq!(bm.dirty_iovas().next(), Some(Iova(0x13000)));
/// assert_eq!(bm.count_dirty(), 2);
/// # Ok::<(), iommufd::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyBitmap {
    iova: Iova,
    page_size: u64,
    pages: u64,
    words: Vec<u64>,
}

impl DirtyBitmap {
    /// The most pages one bitmap covers: 2^32 (512 MiB of bitmap; 16 TiB of IOVA at
    /// 4 KiB pages). Larger ranges are harvested in pieces; the cap keeps a wrong
    /// length or page size from committing gigabytes of memory.
    ///
    /// ```
    /// use iommufd::{DirtyBitmap, Iova};
    /// assert_eq!(DirtyBitmap::MAX_PAGES * 4096, 16 << 40);
    /// // 32 TiB at 4 KiB pages is refused before any memory is allocated.
    /// assert!(DirtyBitmap::new(Iova(0), 32 << 40, 4096).is_err());
    /// ```
    pub const MAX_PAGES: u64 = 1 << 32;

    /// An all-clean bitmap for `len` bytes at `iova`, one bit per `page_size` page.
    ///
    /// Fails with [`Error::InvalidArgument`] unless `page_size` is a power of two,
    /// `len` is a non-zero multiple of it, `iova` is aligned to it, the range does
    /// not pass `u64::MAX`, it covers at most [`DirtyBitmap::MAX_PAGES`] pages, and
    /// the bitmap can be allocated.
    ///
    /// ```
    /// use iommufd::{DirtyBitmap, Error, Iova};
    /// let bm = DirtyBitmap::new(Iova(0x20_0000), 2 << 20, 4096)?;
    /// assert_eq!((bm.pages(), bm.count_dirty()), (512, 0));
    /// let misaligned = DirtyBitmap::new(Iova(0x800), 4096, 4096);
    /// assert!(matches!(misaligned, Err(Error::InvalidArgument { .. })));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn new(iova: Iova, len: u64, page_size: u64) -> Result<DirtyBitmap> {
        const OP: &str = "dirty bitmap";
        let invalid = |reason| Error::InvalidArgument { op: OP, reason };
        if !page_size.is_power_of_two() {
            return Err(invalid("page size is not a power of two"));
        }
        if len == 0 || len % page_size != 0 {
            return Err(invalid(
                "length is not a non-zero multiple of the page size",
            ));
        }
        if !iova.is_aligned(page_size) {
            return Err(invalid("IOVA is not aligned to the page size"));
        }
        if iova.checked_add(len - 1).is_none() {
            return Err(invalid("range passes the end of the IOVA space"));
        }
        let pages = len / page_size;
        if pages > Self::MAX_PAGES {
            return Err(invalid("bitmap too large: more than MAX_PAGES pages"));
        }
        let nwords =
            usize::try_from(pages.div_ceil(64)).map_err(|_| invalid("bitmap too large"))?;
        let mut words = Vec::new();
        words
            .try_reserve_exact(nwords)
            .map_err(|_| invalid("bitmap too large to allocate"))?;
        words.resize(nwords, 0);
        Ok(DirtyBitmap {
            iova,
            page_size,
            pages,
            words,
        })
    }

    /// A bitmap from words in the kernel's layout (e.g. saved earlier). Bits past
    /// the last page are ignored; missing words count as clean.
    ///
    /// ```
    /// use iommufd::{DirtyBitmap, Iova};
    /// // Three pages: bit 3 lies past the end and is dropped.
    /// let bm = DirtyBitmap::from_words(Iova(0), 3 * 4096, 4096, &[0b1101])?;
    /// assert_eq!(bm.as_words(), [0b101]);
    /// let len = bm.pages() * bm.page_size();
    /// assert_eq!(DirtyBitmap::from_words(bm.iova(), len, bm.page_size(), bm.as_words())?, bm);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn from_words(iova: Iova, len: u64, page_size: u64, words: &[u64]) -> Result<DirtyBitmap> {
        let mut bm = DirtyBitmap::new(iova, len, page_size)?;
        let n = bm.words.len().min(words.len());
        bm.words[..n].copy_from_slice(&words[..n]);
        bm.clear_tail();
        Ok(bm)
    }

    fn clear_tail(&mut self) {
        let rem = self.pages % 64;
        if rem != 0 {
            if let Some(last) = self.words.last_mut() {
                *last &= (1u64 << rem) - 1;
            }
        }
    }

    /// The first IOVA covered.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// assert_eq!(DirtyBitmap::new(Iova(0x4000), 0x4000, 0x1000)?.iova(), Iova(0x4000));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iova(&self) -> Iova {
        self.iova
    }

    /// The bytes each bit stands for.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// assert_eq!(DirtyBitmap::new(Iova(0), 4 << 20, 2 << 20)?.page_size(), 2 << 20);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn page_size(&self) -> u64 {
        self.page_size
    }

    /// The number of pages (bits) covered.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// assert_eq!(DirtyBitmap::new(Iova(0), 1 << 30, 4096)?.pages(), 262_144);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The words, in the kernel's layout.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// let mut bm = DirtyBitmap::new(Iova(0), 128 * 4096, 4096)?;
    /// bm.set(0);
    /// bm.set(65);
    /// assert_eq!(bm.as_words(), [1, 1 << 1]);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn as_words(&self) -> &[u64] {
        &self.words
    }

    /// Whether page `page` (counted from [`iova`](DirtyBitmap::iova)) is dirty;
    /// `false` past the end.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// let bm = DirtyBitmap::from_words(Iova(0), 4 * 4096, 4096, &[0b0010])?;
    /// assert!(bm.is_dirty(1));
    /// assert!(!bm.is_dirty(0));
    /// assert!(!bm.is_dirty(4)); // past the end
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn is_dirty(&self, page: u64) -> bool {
        if page >= self.pages {
            return false;
        }
        let Ok(w) = usize::try_from(page / 64) else {
            return false;
        };
        self.words
            .get(w)
            .is_some_and(|word| word & (1 << (page % 64)) != 0)
    }

    /// Marks page `page` dirty; ignored past the end.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// let mut bm = DirtyBitmap::new(Iova(0), 4 * 4096, 4096)?;
    /// bm.set(2);
    /// bm.set(4); // past the end: ignored
    /// assert_eq!(bm.as_words(), [0b100]);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn set(&mut self, page: u64) {
        if page >= self.pages {
            return;
        }
        let Ok(w) = usize::try_from(page / 64) else {
            return;
        };
        if let Some(word) = self.words.get_mut(w) {
            *word |= 1 << (page % 64);
        }
    }

    /// The indices of the dirty pages, ascending.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// let bm = DirtyBitmap::from_words(Iova(0), 130 * 4096, 4096, &[1 << 63, 0, 0b10])?;
    /// assert_eq!(bm.iter_dirty_pages().collect::<Vec<_>>(), [63, 129]);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iter_dirty_pages(&self) -> impl Iterator<Item = u64> + '_ {
        let pages = self.pages;
        self.words
            .iter()
            .enumerate()
            .flat_map(|(w, &word)| {
                let base = w as u64 * 64;
                BitIter(word).map(move |bit| base + u64::from(bit))
            })
            .take_while(move |&p| p < pages)
    }

    /// The IOVAs of the dirty pages, ascending.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// let bm = DirtyBitmap::from_words(Iova(0x10_0000), 8 * 4096, 4096, &[0b1001])?;
    /// let iovas: Vec<Iova> = bm.dirty_iovas().collect();
    /// assert_eq!(iovas, [Iova(0x10_0000), Iova(0x10_3000)]);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn dirty_iovas(&self) -> impl Iterator<Item = Iova> + '_ {
        // `new` checked that the whole range fits below u64::MAX.
        self.iter_dirty_pages()
            .map(|p| Iova(self.iova.raw() + p * self.page_size))
    }

    /// The number of dirty pages.
    ///
    /// ```
    /// # use iommufd::{DirtyBitmap, Iova};
    /// let bm = DirtyBitmap::from_words(Iova(0), 64 * 4096, 4096, &[u64::MAX])?;
    /// assert_eq!(bm.count_dirty(), 64);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn count_dirty(&self) -> u64 {
        self.iter_dirty_pages().count() as u64
    }

    /// The words, for the kernel to write.
    pub(crate) fn words_mut(&mut self) -> &mut [u64] {
        &mut self.words
    }
}

/// The set bits of a word, lowest first.
struct BitIter(u64);

impl Iterator for BitIter {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_layout_is_the_kernels() {
        // 130 pages: three words, the last with two valid bits.
        let mut bm = DirtyBitmap::new(Iova(0), 130 * 4096, 4096).expect("bitmap");
        assert_eq!(bm.as_words().len(), 3);
        for p in [0, 63, 64, 129, 130, 9999] {
            bm.set(p);
        }
        assert_eq!(bm.as_words(), &[1 | 1 << 63, 1, 1 << 1]);
        assert_eq!(bm.iter_dirty_pages().collect::<Vec<_>>(), [0, 63, 64, 129]);
        assert!(!bm.is_dirty(130));
        assert_eq!(bm.count_dirty(), 4);
        let iovas: Vec<_> = bm.dirty_iovas().map(Iova::raw).collect();
        assert_eq!(iovas, [0, 63 * 4096, 64 * 4096, 129 * 4096]);
    }

    #[test]
    fn from_words_ignores_bits_past_the_end() {
        let bm = DirtyBitmap::from_words(Iova(0x2000), 3 * 0x1000, 0x1000, &[u64::MAX, u64::MAX])
            .expect("bitmap");
        assert_eq!(bm.as_words(), &[0b111]);
        assert_eq!(bm.iter_dirty_pages().collect::<Vec<_>>(), [0, 1, 2]);
        let short = DirtyBitmap::from_words(Iova(0), 128 * 4096, 4096, &[]).expect("bitmap");
        assert_eq!(short.count_dirty(), 0);
    }

    #[test]
    fn invalid_geometry_is_refused() {
        let bad = [
            (0, 4096, 3000),               // page size not a power of two
            (0, 4096, 0),                  // page size 0
            (0, 0, 4096),                  // empty
            (0, 6000, 4096),               // length not a multiple
            (2048, 4096, 4096),            // misaligned
            (u64::MAX - 4095, 8192, 4096), // overflow
            (0, 1 << 63, 1),               // 2^63 bits: too large to allocate
        ];
        for (iova, len, ps) in bad {
            let e = DirtyBitmap::new(Iova(iova), len, ps).unwrap_err();
            assert!(
                matches!(e, Error::InvalidArgument { .. }),
                "{iova:#x} {len:#x} {ps}: {e}"
            );
        }
        let top = DirtyBitmap::new(Iova(u64::MAX - 4095), 4096, 4096).expect("bitmap");
        assert_eq!(top.pages(), 1);
    }

    #[test]
    fn bit_iter_yields_set_bits() {
        assert_eq!(BitIter(0).count(), 0);
        assert_eq!(BitIter(0b1010_0001).collect::<Vec<_>>(), [0, 5, 7]);
        assert_eq!(BitIter(u64::MAX).count(), 64);
    }

    #[test]
    fn accessors() {
        let bm = DirtyBitmap::new(Iova(0x4000), 0x4000, 0x1000).expect("bitmap");
        assert_eq!(
            (bm.iova(), bm.page_size(), bm.pages()),
            (Iova(0x4000), 0x1000, 4)
        );
    }

    // Seeds of the `dirty_bitmap` fuzz target (its layout is documented in
    // fuzz/fuzz_targets/dirty_bitmap.rs): a mode byte, IOVA, two geometry fields,
    // then the words, all little endian. Structured geometry (mode bit 0 clear)
    // is a page count - 1 and a page shift; raw geometry is a length and a page
    // size.
    #[test]
    fn dirty_bitmap_fuzz_seeds() {
        struct Seed {
            name: &'static str,
            raw: bool,
            iova: u64,
            len: u64,
            page_size: u64,
            words: &'static [u64],
            dirty: Option<&'static [u64]>,
        }
        let seeds = [
            Seed {
                name: "16_pages",
                raw: false,
                iova: 0x10000,
                len: 0x10000,
                page_size: 0x1000,
                words: &[1 << 3 | 1 << 15],
                dirty: Some(&[3, 15]),
            },
            Seed {
                name: "130_pages_tail",
                raw: false,
                iova: 0,
                len: 130 * 4096,
                page_size: 4096,
                words: &[1 | 1 << 63, 1, u64::MAX],
                dirty: Some(&[0, 63, 64, 128, 129]),
            },
            Seed {
                name: "2m_pages_missing_words",
                raw: false,
                iova: 0x4000_0000,
                len: 512 << 21,
                page_size: 1 << 21,
                words: &[0xaaaa_aaaa_aaaa_aaaa, 0, 0x8000_0000_0000_0000],
                dirty: Some(&[
                    1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41,
                    43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63, 191,
                ]),
            },
            Seed {
                name: "top_page",
                raw: true,
                iova: u64::MAX - 4095,
                len: 4096,
                page_size: 4096,
                words: &[1],
                dirty: Some(&[0]),
            },
            Seed {
                name: "misaligned",
                raw: true,
                iova: 2048,
                len: 4096,
                page_size: 4096,
                words: &[1],
                dirty: None,
            },
            Seed {
                name: "page_size_3000",
                raw: true,
                iova: 0,
                len: 6000,
                page_size: 3000,
                words: &[],
                dirty: None,
            },
        ];
        let mut inputs = Vec::new();
        for s in &seeds {
            let got = DirtyBitmap::from_words(Iova(s.iova), s.len, s.page_size, s.words)
                .ok()
                .map(|bm| bm.iter_dirty_pages().collect::<Vec<_>>());
            assert_eq!(got.as_deref(), s.dirty, "{}", s.name);
            let (f1, f2) = if s.raw {
                (s.len, s.page_size)
            } else {
                (
                    s.len / s.page_size - 1,
                    u64::from(s.page_size.trailing_zeros()),
                )
            };
            let mut v = vec![u8::from(s.raw)];
            for x in [s.iova, f1, f2].iter().chain(s.words) {
                v.extend_from_slice(&x.to_le_bytes());
            }
            inputs.push((s.name, v));
        }
        crate::fuzz_seeds::write_fuzz_seeds("dirty_bitmap", &inputs);
    }
}
