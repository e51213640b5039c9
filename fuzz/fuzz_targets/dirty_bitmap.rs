//! `DirtyBitmap::from_words` and its iterators on arbitrary geometry and words.
//!
//! Input (little endian):
//!
//! | bytes  | field                                                      |
//! |--------|------------------------------------------------------------|
//! | 0      | mode: bit 0 raw geometry, bit 1 keep the IOVA unaligned     |
//! | 1..9   | IOVA                                                       |
//! | 9..17  | length (raw) or page count - 1 (structured)                |
//! | 17..25 | page size (raw) or page shift in the low 6 bits (structured) |
//! | 25..   | the bitmap words, 8 bytes each; a partial last word is dropped |
//!
//! Raw geometry reaches every refusal of `DirtyBitmap::new`; structured geometry
//! (a power-of-two page size and a length that is a whole number of pages) makes
//! most inputs valid so the iterators get exercised. Bitmaps are capped at
//! `MAX_PAGES` pages: larger ones are valid but only cost memory and time (and
//! under AddressSanitizer a huge allocation aborts instead of failing).
//!
//! Checked: the result is `Ok` exactly when the geometry is valid; the words are
//! the input's with the bits past the last page cleared; `iter_dirty_pages`
//! yields exactly the set bits, ascending, each below `pages()`; `count_dirty`
//! is their number; every dirty IOVA is `iova + page * page_size` without
//! overflow and inside the range; `set` / `is_dirty` agree and ignore pages past
//! the end; `from_words(as_words())` round-trips.

#![no_main]

use iommufd::{DirtyBitmap, Error, Iova};
use libfuzzer_sys::fuzz_target;

/// The largest bitmap tried: 1024 words.
const MAX_PAGES: u64 = 1 << 16;

const HEADER: usize = 25;

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

fn valid_geometry(iova: u64, len: u64, page_size: u64) -> bool {
    page_size.is_power_of_two()
        && len != 0
        && len.is_multiple_of(page_size)
        && iova.is_multiple_of(page_size)
        && iova.checked_add(len - 1).is_some()
}

fuzz_target!(|input: &[u8]| {
    if input.len() < HEADER {
        return;
    }
    let mode = input[0];
    let (mut iova, f1, f2) = (u64_at(input, 1), u64_at(input, 9), u64_at(input, 17));
    let (len, page_size) = if mode & 1 != 0 {
        (f1, f2)
    } else {
        let page_size = 1u64 << (f2 % 64);
        let Some(len) = (1 + f1 % MAX_PAGES).checked_mul(page_size) else {
            return;
        };
        if mode & 2 == 0 {
            iova &= !(page_size - 1);
        }
        (len, page_size)
    };
    if len.checked_div(page_size).is_some_and(|p| p > MAX_PAGES) {
        return;
    }
    let words: Vec<u64> = input[HEADER..]
        .chunks_exact(8)
        .map(|c| u64_at(c, 0))
        .collect();

    let bm = match DirtyBitmap::from_words(Iova(iova), len, page_size, &words) {
        Ok(bm) => bm,
        Err(e) => {
            assert!(
                !valid_geometry(iova, len, page_size),
                "refused valid geometry {iova:#x} {len:#x} {page_size:#x}: {e}"
            );
            assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(
        valid_geometry(iova, len, page_size),
        "accepted invalid geometry {iova:#x} {len:#x} {page_size:#x}"
    );

    // Geometry.
    let pages = len / page_size;
    assert_eq!(bm.iova(), Iova(iova));
    assert_eq!(bm.page_size(), page_size);
    assert_eq!(bm.pages(), pages);
    let nwords = usize::try_from(pages.div_ceil(64)).expect("capped");
    assert_eq!(bm.as_words().len(), nwords);

    // Words: the input's, missing ones clean, bits past the last page cleared.
    let mut expected = Vec::new();
    for (w, &word) in bm.as_words().iter().enumerate() {
        let first = w as u64 * 64;
        let valid_bits = (pages - first).min(64);
        let mask = if valid_bits == 64 {
            u64::MAX
        } else {
            (1u64 << valid_bits) - 1
        };
        assert_eq!(word, words.get(w).copied().unwrap_or(0) & mask, "word {w}");
        if word != 0 {
            expected.extend((0..64).filter(|b| word >> b & 1 != 0).map(|b| first + b));
        }
    }

    // Pages: exactly the set bits, ascending, in range.
    let dirty: Vec<u64> = bm.iter_dirty_pages().collect();
    assert_eq!(dirty, expected);
    assert!(dirty.windows(2).all(|p| p[0] < p[1]));
    for &p in &dirty {
        assert!(p < pages, "page {p} of {pages}");
        assert!(bm.is_dirty(p));
    }
    assert_eq!(bm.count_dirty(), dirty.len() as u64);
    assert!(!bm.is_dirty(pages));
    assert!(!bm.is_dirty(u64::MAX));

    // IOVAs: base + page * page_size, without overflow, inside the range.
    let last = iova + (len - 1);
    let mut n = 0;
    for (addr, &p) in bm.dirty_iovas().zip(&dirty) {
        let want = p
            .checked_mul(page_size)
            .and_then(|off| iova.checked_add(off))
            .expect("dirty IOVA overflows");
        assert_eq!(addr, Iova(want));
        assert!(want <= last && want.checked_add(page_size - 1) <= Some(last));
        n += 1;
    }
    assert_eq!(n, dirty.len());
    assert_eq!(bm.dirty_iovas().count(), dirty.len());

    // Round trip.
    let again =
        DirtyBitmap::from_words(Iova(iova), len, page_size, bm.as_words()).expect("same geometry");
    assert_eq!(again, bm);

    // set / is_dirty: a page chosen by the input, and one past the end.
    let mut m = bm.clone();
    let p = words.first().copied().unwrap_or(0) % pages;
    let was = m.is_dirty(p);
    m.set(p);
    assert!(m.is_dirty(p));
    assert_eq!(m.count_dirty(), bm.count_dirty() + u64::from(!was));
    let before = m.clone();
    m.set(pages);
    m.set(u64::MAX);
    assert_eq!(m, before);
});
