//! Byte access to DMA memory for tests: vm-memory's `MmapRegion` read and written with
//! volatile copies (a device may access it at any time), by offset.

use vm_memory::{MmapRegion, VolatileMemory};

/// Offset-based access to a region, panicking on a bad range (tests only).
pub trait RegionBytes {
    /// Copies `data` into the region at `offset`.
    fn write_at(&self, offset: usize, data: &[u8]);
    /// Copies `len` bytes at `offset` out of the region.
    fn read_at(&self, offset: usize, len: usize) -> Vec<u8>;
    /// Fills the whole region with `byte` (and so faults its pages in).
    fn fill(&self, byte: u8);
}

impl RegionBytes for MmapRegion {
    fn write_at(&self, offset: usize, data: &[u8]) {
        self.get_slice(offset, data.len())
            .expect("range inside the region")
            .copy_from(data);
    }

    fn read_at(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.get_slice(offset, len)
            .expect("range inside the region")
            .copy_to(&mut v[..]);
        v
    }

    fn fill(&self, byte: u8) {
        self.write_at(0, &vec![byte; self.size()]);
    }
}

/// `len` bytes of zeroed anonymous memory (a vm-memory `MmapRegion`).
pub fn buffer(len: usize) -> MmapRegion {
    MmapRegion::new(len).expect("mmap")
}
