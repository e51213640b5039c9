//! A VFIO device cdev driven with raw ioctls.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::ptr::NonNull;

use vfio_bindings::bindings::vfio::{
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP, vfio_device_attach_iommufd_pt,
    vfio_device_bind_iommufd, vfio_device_detach_iommufd_pt, vfio_region_info,
};

use crate::ioctl_with_mut;

const fn vfio_io(nr: u32) -> libc::c_ulong {
    ((b';' as libc::c_ulong) << 8) | (100 + nr) as libc::c_ulong
}
/// `VFIO_DEVICE_GET_REGION_INFO`.
pub const VFIO_DEVICE_GET_REGION_INFO: libc::c_ulong = vfio_io(8);
/// `VFIO_DEVICE_BIND_IOMMUFD`.
pub const VFIO_DEVICE_BIND_IOMMUFD: libc::c_ulong = vfio_io(18);
/// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_ATTACH_IOMMUFD_PT: libc::c_ulong = vfio_io(19);
/// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
pub const VFIO_DEVICE_DETACH_IOMMUFD_PT: libc::c_ulong = vfio_io(20);

/// PCI_COMMAND offset in config space.
pub const PCI_COMMAND: u64 = 0x04;
/// PCI_COMMAND: memory space enable.
pub const PCI_COMMAND_MEMORY: u16 = 0x2;
/// PCI_COMMAND: bus master enable.
pub const PCI_COMMAND_MASTER: u16 = 0x4;

/// An open VFIO device cdev (`/dev/vfio/devices/vfioN`).
#[derive(Debug)]
pub struct VfioDevice {
    file: File,
}

impl AsFd for VfioDevice {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl VfioDevice {
    /// Opens the cdev at `path`.
    pub fn open(path: &Path) -> io::Result<VfioDevice> {
        Ok(VfioDevice {
            file: OpenOptions::new().read(true).write(true).open(path)?,
        })
    }

    /// Wraps an open cdev fd, e.g. a duplicate of one bound by the crate under test
    /// (bind state belongs to the open file, which duplicates share).
    pub fn from_owned_fd(fd: std::os::fd::OwnedFd) -> VfioDevice {
        VfioDevice {
            file: File::from(fd),
        }
    }

    /// `VFIO_DEVICE_BIND_IOMMUFD`: returns the dev_id.
    pub fn bind(&self, iommufd: BorrowedFd<'_>) -> io::Result<u32> {
        let mut arg = vfio_device_bind_iommufd {
            argsz: size_of::<vfio_device_bind_iommufd>() as u32,
            iommufd: iommufd.as_raw_fd(),
            ..Default::default()
        };
        ioctl_with_mut(self.as_fd(), VFIO_DEVICE_BIND_IOMMUFD, &mut arg)?;
        Ok(arg.out_devid)
    }

    /// `VFIO_DEVICE_ATTACH_IOMMUFD_PT`: returns the page table id the device is now
    /// attached to (the auto-created HWPT when `pt_id` is an IOAS).
    pub fn attach(&self, pt_id: u32) -> io::Result<u32> {
        let mut arg = vfio_device_attach_iommufd_pt {
            argsz: size_of::<vfio_device_attach_iommufd_pt>() as u32,
            pt_id,
            ..Default::default()
        };
        ioctl_with_mut(self.as_fd(), VFIO_DEVICE_ATTACH_IOMMUFD_PT, &mut arg)?;
        Ok(arg.pt_id)
    }

    /// `VFIO_DEVICE_DETACH_IOMMUFD_PT`.
    pub fn detach(&self) -> io::Result<()> {
        let mut arg = vfio_device_detach_iommufd_pt {
            argsz: size_of::<vfio_device_detach_iommufd_pt>() as u32,
            ..Default::default()
        };
        ioctl_with_mut(self.as_fd(), VFIO_DEVICE_DETACH_IOMMUFD_PT, &mut arg)
    }

    /// `VFIO_DEVICE_GET_REGION_INFO` for region `index`.
    pub fn region_info(&self, index: u32) -> io::Result<vfio_region_info> {
        let mut arg = vfio_region_info {
            argsz: size_of::<vfio_region_info>() as u32,
            index,
            ..Default::default()
        };
        ioctl_with_mut(self.as_fd(), VFIO_DEVICE_GET_REGION_INFO, &mut arg)?;
        Ok(arg)
    }

    /// Reads a 16-bit config-space register.
    pub fn config_read16(&self, offset: u64) -> io::Result<u16> {
        let r = self.region_info(VFIO_PCI_CONFIG_REGION_INDEX)?;
        let mut b = [0u8; 2];
        self.file.read_exact_at(&mut b, r.offset + offset)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Writes a 16-bit config-space register.
    pub fn config_write16(&self, offset: u64, value: u16) -> io::Result<()> {
        let r = self.region_info(VFIO_PCI_CONFIG_REGION_INDEX)?;
        self.file
            .write_all_at(&value.to_le_bytes(), r.offset + offset)
    }

    /// Enables memory decoding and bus mastering (vfio-pci leaves both off).
    pub fn enable_dma(&self) -> io::Result<()> {
        let cmd = self.config_read16(PCI_COMMAND)?;
        self.config_write16(PCI_COMMAND, cmd | PCI_COMMAND_MEMORY | PCI_COMMAND_MASTER)
    }

    /// Maps BAR `index` into this process.
    pub fn map_bar(&self, index: u32) -> io::Result<Bar> {
        let r = self.region_info(index)?;
        if r.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || r.size == 0 {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("BAR{index} cannot be mmapped"),
            ));
        }
        let len = r.size as usize;
        // SAFETY: a fresh shared mapping of the device fd at the region's offset; the
        // kernel validates offset and length, and nothing else aliases the new range.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                r.offset as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Bar { ptr, len })
    }
}

/// A memory-mapped BAR. Accesses are volatile and bounds-checked.
#[derive(Debug)]
pub struct Bar {
    ptr: NonNull<u8>,
    len: usize,
}

impl Bar {
    fn at<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset % size_of::<T>() == 0 && offset + size_of::<T>() <= self.len,
            "BAR access {offset:#x} out of range"
        );
        // SAFETY: offset + size_of::<T>() is within the mapping (asserted above).
        unsafe { self.ptr.as_ptr().add(offset).cast::<T>() }
    }

    /// Reads a 32-bit register.
    pub fn read32(&self, offset: usize) -> u32 {
        // SAFETY: `at` checked bounds and alignment; the mapping lives as long as self.
        unsafe { self.at::<u32>(offset).read_volatile() }
    }

    /// Writes a 32-bit register.
    pub fn write32(&self, offset: usize, v: u32) {
        // SAFETY: as in read32.
        unsafe { self.at::<u32>(offset).write_volatile(v) }
    }

    /// Reads a 64-bit register.
    pub fn read64(&self, offset: usize) -> u64 {
        // SAFETY: as in read32.
        unsafe { self.at::<u64>(offset).read_volatile() }
    }

    /// Writes a 64-bit register.
    pub fn write64(&self, offset: usize, v: u64) {
        // SAFETY: as in read32.
        unsafe { self.at::<u64>(offset).write_volatile(v) }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the range mmap returned; no references into it remain.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
