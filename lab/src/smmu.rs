//! A guest's SMMUv3 stage 1, built in guest memory for the arm64 lab's nesting
//! tests: one context descriptor and a 4-level AArch64 page table (4 KiB granule,
//! 48-bit input), in a buffer the test maps into its IOAS at IOVA = GPA (stage 2).
//!
//! Formats from the Arm SMMUv3 specification (CD) and the Arm ARM (VMSAv8-64
//! descriptors); only what a nested DMA test needs.

use std::sync::Arc;

use vm_memory::MmapRegion;

use crate::mem::RegionBytes;

const PAGE: u64 = 4096;

// Context descriptor, word 0.
const CD0_T0SZ_48: u64 = 64 - 48; // bits 5:0
const CD0_IRGN0_WBWA: u64 = 1 << 8;
const CD0_ORGN0_WBWA: u64 = 1 << 10;
const CD0_SH0_INNER: u64 = 3 << 12;
const CD0_EPD1: u64 = 1 << 30;
const CD0_V: u64 = 1 << 31;
const CD0_IPS_40: u64 = 2 << 32;
const CD0_AA64: u64 = 1 << 41;
const CD0_R: u64 = 1 << 45;
const CD0_A: u64 = 1 << 46;
const CD0_ASET: u64 = 1 << 47;
const CD0_ASID_SHIFT: u32 = 48;

// Descriptors.
const DESC_VALID_TABLE: u64 = 0b11; // table (levels 0-2) or page (level 3)
const PTE_AP_RO: u64 = 1 << 7; // AP[2]
const PTE_AP_EL0: u64 = 1 << 6; // AP[1]
const PTE_SH_INNER: u64 = 3 << 8;
const PTE_AF: u64 = 1 << 10;
const ADDR_MASK: u64 = 0x0000_ffff_ffff_f000;

/// One stage-1 address space: the context descriptor at the start of `mem`, the
/// page tables after it. `gpa` is where `mem` sits in guest-physical space (its
/// IOVA in the IOAS).
#[derive(Debug)]
pub struct Stage1 {
    mem: Arc<MmapRegion>,
    gpa: u64,
    asid: u16,
    /// Offset of the next free table page.
    next: u64,
    /// Offset of the level-0 table.
    root: u64,
}

impl Stage1 {
    /// Builds an empty address space at the start of `mem` (page 0: the CD; page
    /// 1: the level-0 table; the pages after it: tables, as they are needed).
    pub fn new(mem: Arc<MmapRegion>, gpa: u64, asid: u16) -> Stage1 {
        let mut s = Stage1 {
            mem,
            gpa,
            asid,
            next: 2 * PAGE,
            root: PAGE,
        };
        s.write_cd();
        s
    }

    /// The GPA of the context descriptor (the vSTE's `S1ContextPtr`).
    pub fn cd_gpa(&self) -> u64 {
        self.gpa
    }

    /// The ASID of the address space.
    pub fn asid(&self) -> u16 {
        self.asid
    }

    /// The memory (to write data pages and read what DMA wrote).
    pub fn memory(&self) -> &MmapRegion {
        &self.mem
    }

    /// The GPA of byte `offset` of the memory.
    pub fn gpa_of(&self, offset: u64) -> u64 {
        self.gpa + offset
    }

    /// The words of the context descriptor.
    pub fn cd_words(&self) -> [u64; 8] {
        let mut w = [0u64; 8];
        w[0] = CD0_T0SZ_48
            | CD0_IRGN0_WBWA
            | CD0_ORGN0_WBWA
            | CD0_SH0_INNER
            | CD0_EPD1
            | CD0_V
            | CD0_IPS_40
            | CD0_AA64
            | CD0_R
            | CD0_A
            | CD0_ASET
            | (u64::from(self.asid) << CD0_ASID_SHIFT);
        w[1] = (self.gpa + self.root) & ADDR_MASK;
        // MAIR: attribute 0 is normal write-back memory.
        w[3] = 0xff;
        w
    }

    fn write_cd(&mut self) {
        let bytes: Vec<u8> = self
            .cd_words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        self.mem.write_at(0, &bytes);
    }

    fn read(&self, offset: u64) -> u64 {
        let b = self.mem.read_at(offset as usize, 8);
        u64::from_le_bytes(b.try_into().expect("8 bytes"))
    }

    fn write(&self, offset: u64, v: u64) {
        self.mem.write_at(offset as usize, &v.to_le_bytes());
    }

    /// The offset of the level-3 entry of `giova`, making tables on the way.
    fn leaf(&mut self, giova: u64) -> u64 {
        let mut table = self.root;
        for level in 0..3 {
            let index = (giova >> (39 - 9 * level)) & 511;
            let entry = table + index * 8;
            let d = self.read(entry);
            table = if d & DESC_VALID_TABLE == DESC_VALID_TABLE {
                (d & ADDR_MASK) - self.gpa
            } else {
                let t = self.next;
                assert!(
                    (t + PAGE) as usize <= self.mem.size(),
                    "no room for another table"
                );
                self.next += PAGE;
                self.mem.write_at(t as usize, &[0u8; PAGE as usize]);
                self.write(entry, ((self.gpa + t) & ADDR_MASK) | DESC_VALID_TABLE);
                t
            };
        }
        table + ((giova >> 12) & 511) * 8
    }

    /// Maps the 4 KiB page at `giova` to the guest-physical page `gpa`.
    pub fn map(&mut self, giova: u64, gpa: u64, writable: bool) {
        let leaf = self.leaf(giova);
        let ap = if writable {
            PTE_AP_EL0
        } else {
            PTE_AP_EL0 | PTE_AP_RO
        };
        self.write(
            leaf,
            (gpa & ADDR_MASK) | ap | PTE_SH_INNER | PTE_AF | DESC_VALID_TABLE,
        );
    }

    /// Unmaps the page at `giova`.
    pub fn unmap(&mut self, giova: u64) {
        let leaf = self.leaf(giova);
        self.write(leaf, 0);
    }

    /// Where `giova` leads, walking the tables as the SMMU would: its GPA.
    pub fn walk(&self, giova: u64) -> Option<u64> {
        let mut table = self.root;
        for level in 0..4 {
            let index = (giova >> (39 - 9 * level)) & 511;
            let d = self.read(table + index * 8);
            if d & DESC_VALID_TABLE != DESC_VALID_TABLE {
                return None;
            }
            if level == 3 {
                return Some((d & ADDR_MASK) | (giova & (PAGE - 1)));
            }
            table = (d & ADDR_MASK) - self.gpa;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_walk_to_what_was_mapped() {
        let mut s = Stage1::new(Arc::new(crate::mem::buffer(64 * 1024)), 0x100_0000, 7);
        s.map(0x20_0000, 0x101_0000, true);
        s.map(0x20_1000, 0x102_0000, false);
        s.map(0x80_0000_0000, 0x103_0000, true); // another level-0 entry
        assert_eq!(s.walk(0x20_0123), Some(0x101_0123));
        assert_eq!(s.walk(0x20_1000), Some(0x102_0000));
        assert_eq!(s.walk(0x80_0000_0010), Some(0x103_0010));
        assert_eq!(s.walk(0x20_2000), None);
        s.unmap(0x20_0000);
        assert_eq!(s.walk(0x20_0000), None);
        let cd = s.cd_words();
        assert_eq!(cd[0] & 0x3f, 16, "T0SZ: 48-bit input");
        assert_ne!(cd[0] & CD0_V, 0);
        assert_eq!(cd[0] >> 48, 7, "ASID");
        assert_eq!(cd[1], 0x100_1000, "TTB0: the level-0 table's GPA");
        assert_eq!(s.memory().read_at(0, 8), cd[0].to_le_bytes());
    }
}
