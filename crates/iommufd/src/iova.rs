//! I/O virtual addresses and ranges of them.

use std::fmt;

use iommufd_uapi as uapi;

/// An I/O virtual address: an address as a device sees it through an IOAS.
///
/// A newtype so that IOVAs do not mix with process virtual addresses or lengths.
///
/// ```
/// use iommufd::Iova;
/// let iova = Iova(0x1000);
/// assert_eq!(iova.checked_add(0x1000), Some(Iova(0x2000)));
/// assert_eq!(Iova(u64::MAX).checked_add(1), None);
/// assert!(iova.is_aligned(0x1000));
/// assert_eq!(iova.to_string(), "0x1000");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Iova(pub u64);

impl Iova {
    /// The raw address.
    ///
    /// ```
    /// use iommufd::Iova;
    /// assert_eq!(Iova(0x1000).raw(), 0x1000);
    /// assert_eq!(Iova::from(0x2000).raw(), 0x2000);
    /// ```
    pub const fn raw(self) -> u64 {
        self.0
    }

    /// `self + offset`, or `None` on overflow.
    ///
    /// ```
    /// use iommufd::Iova;
    /// assert_eq!(Iova(0x1000).checked_add(0x800), Some(Iova(0x1800)));
    /// assert_eq!(Iova(u64::MAX - 1).checked_add(2), None);
    /// ```
    pub const fn checked_add(self, offset: u64) -> Option<Iova> {
        match self.0.checked_add(offset) {
            Some(v) => Some(Iova(v)),
            None => None,
        }
    }

    /// The distance from `base` up to `self`, or `None` if `self` is below `base`.
    ///
    /// ```
    /// use iommufd::Iova;
    /// assert_eq!(Iova(0x3000).checked_offset_from(Iova(0x1000)), Some(0x2000));
    /// assert_eq!(Iova(0x1000).checked_offset_from(Iova(0x3000)), None);
    /// ```
    pub const fn checked_offset_from(self, base: Iova) -> Option<u64> {
        self.0.checked_sub(base.0)
    }

    /// Whether the address is a multiple of `align`. An `align` of 0 is treated as 1.
    ///
    /// ```
    /// use iommufd::Iova;
    /// assert!(Iova(0x20_0000).is_aligned(2 << 20));
    /// assert!(!Iova(0x1800).is_aligned(0x1000));
    /// assert!(Iova(0x1801).is_aligned(0));
    /// ```
    pub const fn is_aligned(self, align: u64) -> bool {
        align == 0 || self.0 % align == 0
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl From<u64> for Iova {
    fn from(v: u64) -> Iova {
        Iova(v)
    }
}

/// An inclusive range of IOVAs, `start..=last`, as the kernel reports and accepts
/// them (`struct iommu_iova_range`).
///
/// Inclusive ends let the range reach `u64::MAX`; its size is therefore a `u128`.
///
/// ```
/// use iommufd::{Iova, IovaRange};
/// let r = IovaRange::from_len(Iova(0x1000), 0x2000).unwrap();
/// assert_eq!(r.last(), Iova(0x2fff));
/// assert_eq!(r.size(), 0x2000);
/// assert!(r.contains(Iova(0x2fff)));
/// assert!(!r.contains(Iova(0x3000)));
/// assert!(IovaRange::FULL.contains_range(&r));
/// assert_eq!(IovaRange::FULL.size(), 1 << 64);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IovaRange {
    start: Iova,
    last: Iova,
}

impl IovaRange {
    /// Every IOVA: `0..=u64::MAX`.
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// assert_eq!(IovaRange::FULL.start(), Iova(0));
    /// assert_eq!(IovaRange::FULL.last(), Iova(u64::MAX));
    /// assert_eq!(IovaRange::FULL.to_string(), "0x0..=0xffffffffffffffff");
    /// ```
    pub const FULL: IovaRange = IovaRange {
        start: Iova(0),
        last: Iova(u64::MAX),
    };

    /// `start..=last`, or `None` if `last < start`.
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// let r = IovaRange::new(Iova(0x1000), Iova(0x1fff)).unwrap();
    /// assert_eq!(r.size(), 0x1000);
    /// assert!(IovaRange::new(Iova(5), Iova(5)).is_some()); // one byte
    /// assert_eq!(IovaRange::new(Iova(2), Iova(1)), None);
    /// ```
    pub const fn new(start: Iova, last: Iova) -> Option<IovaRange> {
        if last.0 < start.0 {
            None
        } else {
            Some(IovaRange { start, last })
        }
    }

    /// The `len` bytes from `start`, or `None` if `len` is 0 or the range would pass
    /// `u64::MAX`.
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// let r = IovaRange::from_len(Iova(0x1000), 0x1000).unwrap();
    /// assert_eq!(r, IovaRange::new(Iova(0x1000), Iova(0x1fff)).unwrap());
    /// assert_eq!(IovaRange::from_len(Iova(0x1000), 0), None);
    /// assert_eq!(IovaRange::from_len(Iova(u64::MAX), 2), None);
    /// ```
    pub const fn from_len(start: Iova, len: u64) -> Option<IovaRange> {
        if len == 0 {
            return None;
        }
        match start.0.checked_add(len - 1) {
            Some(last) => Some(IovaRange {
                start,
                last: Iova(last),
            }),
            None => None,
        }
    }

    /// The first IOVA.
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// let r = IovaRange::from_len(Iova(0x4000), 0x1000).unwrap();
    /// assert_eq!(r.start(), Iova(0x4000));
    /// ```
    pub const fn start(&self) -> Iova {
        self.start
    }

    /// The last IOVA (inclusive).
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// let r = IovaRange::from_len(Iova(0x4000), 0x1000).unwrap();
    /// assert_eq!(r.last(), Iova(0x4fff));
    /// ```
    pub const fn last(&self) -> Iova {
        self.last
    }

    /// The number of bytes in the range (at least 1, at most 2^64).
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// assert_eq!(IovaRange::new(Iova(7), Iova(7)).unwrap().size(), 1);
    /// assert_eq!(IovaRange::FULL.size(), 1 << 64);
    /// ```
    pub const fn size(&self) -> u128 {
        (self.last.0 - self.start.0) as u128 + 1
    }

    /// Whether `iova` lies in the range.
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// let r = IovaRange::from_len(Iova(0x1000), 0x1000).unwrap();
    /// assert!(r.contains(Iova(0x1000)) && r.contains(Iova(0x1fff)));
    /// assert!(!r.contains(Iova(0x2000)));
    /// ```
    pub const fn contains(&self, iova: Iova) -> bool {
        self.start.0 <= iova.0 && iova.0 <= self.last.0
    }

    /// Whether all of `other` lies in the range.
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// let aperture = IovaRange::new(Iova(1 << 24), Iova((1 << 31) - 1)).unwrap();
    /// let buf = IovaRange::from_len(Iova(1 << 24), 1 << 20).unwrap();
    /// assert!(aperture.contains_range(&buf));
    /// assert!(!buf.contains_range(&aperture));
    /// ```
    pub const fn contains_range(&self, other: &IovaRange) -> bool {
        self.start.0 <= other.start.0 && other.last.0 <= self.last.0
    }

    /// Whether the ranges share at least one IOVA.
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange};
    /// let a = IovaRange::new(Iova(0x1000), Iova(0x1fff)).unwrap();
    /// let b = IovaRange::new(Iova(0x1fff), Iova(0x2fff)).unwrap();
    /// let c = IovaRange::new(Iova(0x2000), Iova(0x2fff)).unwrap();
    /// assert!(a.overlaps(&b) && b.overlaps(&a)); // share 0x1fff
    /// assert!(!a.overlaps(&c)); // adjacent only
    /// ```
    pub const fn overlaps(&self, other: &IovaRange) -> bool {
        self.start.0 <= other.last.0 && other.start.0 <= self.last.0
    }

    pub(crate) fn to_uapi(self) -> uapi::iommu_iova_range {
        uapi::iommu_iova_range {
            start: self.start.0,
            last: self.last.0,
        }
    }

    /// Converts a kernel range; `None` if the kernel reported `last < start`.
    pub(crate) fn from_uapi(r: &uapi::iommu_iova_range) -> Option<IovaRange> {
        IovaRange::new(Iova(r.start), Iova(r.last))
    }
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.start, self.last)
    }
}

/// The IOVAs usable for mapping in an IOAS, from
/// [`Ioas::iova_ranges`](crate::Ioas::iova_ranges).
///
/// Attaching a device narrows the ranges (to its IOMMU's aperture, minus reserved
/// regions such as the MSI window) and may raise the alignment; detaching widens
/// them again. Query again after every attach or detach.
///
/// ```
/// use iommufd::{Iova, IovaRange, IovaRanges};
/// let usable = IovaRanges {
///     ranges: vec![IovaRange::new(Iova(1 << 24), Iova((1 << 31) - 1)).unwrap()],
///     alignment: 2048,
/// };
/// assert!(usable.can_map(Iova(1 << 24), 4096));
/// assert!(!usable.can_map(Iova((1 << 24) + 1024), 4096)); // misaligned
/// assert!(!usable.can_map(Iova(0), 4096)); // outside the aperture
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IovaRanges {
    /// The usable ranges, in ascending order.
    pub ranges: Vec<IovaRange>,
    /// The alignment every mapping's start and length must have (1 means any; never
    /// more than the CPU page size).
    pub alignment: u64,
}

impl IovaRanges {
    /// Whether `len` bytes at `iova` fit in one usable range with the required
    /// alignment (what `IOMMU_IOAS_MAP` with a fixed IOVA checks, apart from overlap
    /// with existing mappings).
    ///
    /// ```
    /// use iommufd::{Iova, IovaRange, IovaRanges};
    /// // Two usable ranges with a reserved hole (e.g. an MSI window) between them.
    /// let usable = IovaRanges {
    ///     ranges: vec![
    ///         IovaRange::new(Iova(0), Iova(0xfee0_0000 - 1)).unwrap(),
    ///         IovaRange::new(Iova(0xfef0_0000), Iova(u64::MAX)).unwrap(),
    ///     ],
    ///     alignment: 4096,
    /// };
    /// assert!(usable.can_map(Iova(0xfed0_0000), 1 << 20));
    /// assert!(!usable.can_map(Iova(0xfed0_0000), 2 << 20)); // reaches into the hole
    /// assert!(!usable.can_map(Iova(0x1000), 0)); // empty
    /// ```
    pub fn can_map(&self, iova: Iova, len: u64) -> bool {
        let Some(range) = IovaRange::from_len(iova, len) else {
            return false;
        };
        if !iova.is_aligned(self.alignment) || (len % self.alignment.max(1)) != 0 {
            return false;
        }
        self.ranges.iter().any(|r| r.contains_range(&range))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_constructors_reject_empty_and_overflow() {
        assert_eq!(IovaRange::new(Iova(2), Iova(1)), None);
        assert!(IovaRange::new(Iova(1), Iova(1)).is_some());
        assert_eq!(IovaRange::from_len(Iova(0), 0), None);
        assert_eq!(IovaRange::from_len(Iova(u64::MAX), 2), None);
        let top = IovaRange::from_len(Iova(u64::MAX), 1).unwrap();
        assert_eq!(top.size(), 1);
        let all = IovaRange::from_len(Iova(0), u64::MAX).unwrap();
        assert_eq!(all.last(), Iova(u64::MAX - 1));
    }

    #[test]
    fn overlap_and_containment() {
        let a = IovaRange::new(Iova(0x1000), Iova(0x1fff)).unwrap();
        let b = IovaRange::new(Iova(0x1fff), Iova(0x2fff)).unwrap();
        let c = IovaRange::new(Iova(0x2000), Iova(0x2fff)).unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c) && !c.overlaps(&a));
        assert!(b.contains_range(&c));
        assert!(!c.contains_range(&b));
        assert!(IovaRange::FULL.overlaps(&a));
    }

    #[test]
    fn can_map_checks_alignment_and_bounds() {
        let r = IovaRanges {
            ranges: vec![
                IovaRange::new(Iova(0), Iova(0xfff)).unwrap(),
                IovaRange::new(Iova(0x2000), Iova(u64::MAX)).unwrap(),
            ],
            alignment: 0x1000,
        };
        assert!(r.can_map(Iova(0), 0x1000));
        assert!(!r.can_map(Iova(0), 0x2000)); // crosses the hole
        assert!(!r.can_map(Iova(0x1000), 0x1000)); // in the hole
        assert!(r.can_map(Iova(0x2000), 0x1000));
        assert!(!r.can_map(Iova(0x2000), 0x800)); // length misaligned
        assert!(!r.can_map(Iova(0x2000), 0)); // empty
        assert!(!r.can_map(Iova(u64::MAX - 0xfff), 0x2000)); // overflow
        let any = IovaRanges {
            ranges: vec![IovaRange::FULL],
            alignment: 0,
        };
        assert!(any.can_map(Iova(3), 5));
    }

    #[test]
    fn uapi_round_trip() {
        let r = IovaRange::new(Iova(1), Iova(9)).unwrap();
        assert_eq!(IovaRange::from_uapi(&r.to_uapi()), Some(r));
        let bad = uapi::iommu_iova_range { start: 9, last: 1 };
        assert_eq!(IovaRange::from_uapi(&bad), None);
    }
}
