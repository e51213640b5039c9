//! A user-space driver for QEMU's `edu` device: its DMA engine is how the lab shows
//! what an IOMMU lets a device reach.
//!
//! Registers (BAR0): 0x00 id, 0x04 liveness (returns the inverse), 0x80 DMA source,
//! 0x88 DMA destination, 0x90 count, 0x98 command (bit 0 start, bit 1 direction:
//! 0 = RAM to device, 1 = device to RAM). The device buffer is at 0x40000.

use std::io;
use std::time::{Duration, Instant};

use crate::vfio::{Bar, VfioDevice};

/// Value of the identification register (version 1.0, "ed").
pub const EDU_ID: u32 = 0x0100_00ed;
/// Where the device's own 4 KiB buffer sits in its DMA address space.
pub const EDU_BUFFER: u64 = 0x40000;
/// Largest transfer used: QEMU 7.2's edu kills the VM on a full 4096-byte transfer.
pub const EDU_MAX_TRANSFER: u64 = 4000;
/// edu has a 28-bit DMA mask: IOVAs must stay below this.
pub const EDU_DMA_LIMIT: u64 = 1 << 28;

const REG_ID: usize = 0x00;
const REG_LIVENESS: usize = 0x04;
const REG_SRC: usize = 0x80;
const REG_DST: usize = 0x88;
const REG_CNT: usize = 0x90;
const REG_CMD: usize = 0x98;
const CMD_START: u64 = 1;
const CMD_TO_RAM: u64 = 2;

/// An `edu` device whose BAR0 is mapped and whose bus mastering is on.
#[derive(Debug)]
pub struct Edu {
    bar: Bar,
}

impl Edu {
    /// Maps BAR0 of a bound (and attached) VFIO device and enables DMA.
    pub fn new(dev: &VfioDevice) -> io::Result<Edu> {
        dev.enable_dma()?;
        let bar = dev.map_bar(0)?;
        let id = bar.read32(REG_ID);
        if id != EDU_ID {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("edu id register reads {id:#x}"),
            ));
        }
        Ok(Edu { bar })
    }

    /// Liveness check: the device returns the inverse of what was written.
    pub fn alive(&self) -> bool {
        self.bar.write32(REG_LIVENESS, 0x1234_5678);
        self.bar.read32(REG_LIVENESS) == !0x1234_5678
    }

    fn transfer(&self, src: u64, dst: u64, len: u64, cmd: u64) -> io::Result<()> {
        if len == 0 || len > EDU_MAX_TRANSFER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("edu transfer of {len} bytes"),
            ));
        }
        self.bar.write64(REG_SRC, src);
        self.bar.write64(REG_DST, dst);
        self.bar.write64(REG_CNT, len);
        self.bar.write64(REG_CMD, cmd | CMD_START);
        // About 0.1 s under TCG.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.bar.read64(REG_CMD) & CMD_START != 0 {
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "edu DMA did not complete in 10 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// DMA `len` bytes from `iova` into the device buffer at `offset`.
    pub fn dma_from_memory(&self, iova: u64, offset: u64, len: u64) -> io::Result<()> {
        self.transfer(iova, EDU_BUFFER + offset, len, 0)
    }

    /// DMA `len` bytes from the device buffer at `offset` to `iova`.
    pub fn dma_to_memory(&self, offset: u64, iova: u64, len: u64) -> io::Result<()> {
        self.transfer(EDU_BUFFER + offset, iova, len, CMD_TO_RAM)
    }
}
