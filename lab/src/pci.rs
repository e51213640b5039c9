//! PCI devices and IOMMU groups as sysfs shows them.

use std::fs;
use std::io;
use std::path::PathBuf;

/// QEMU's educational PCI device (`-device edu`).
pub const EDU_VENDOR: u16 = 0x1234;
/// Device id of `edu`.
pub const EDU_DEVICE: u16 = 0x11e8;

/// A PCI device named by its address (`0000:00:04.0`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciDevice {
    bdf: String,
}

fn read_hex(path: PathBuf) -> io::Result<u16> {
    let s = fs::read_to_string(&path)?;
    u16::from_str_radix(s.trim().trim_start_matches("0x"), 16).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

impl PciDevice {
    /// The device at `bdf`.
    pub fn new(bdf: &str) -> PciDevice {
        PciDevice {
            bdf: bdf.to_string(),
        }
    }

    /// Its address.
    pub fn bdf(&self) -> &str {
        &self.bdf
    }

    /// Its sysfs directory.
    pub fn sysfs(&self) -> PathBuf {
        PathBuf::from("/sys/bus/pci/devices").join(&self.bdf)
    }

    /// (vendor, device) ids.
    pub fn ids(&self) -> io::Result<(u16, u16)> {
        Ok((
            read_hex(self.sysfs().join("vendor"))?,
            read_hex(self.sysfs().join("device"))?,
        ))
    }

    /// The bound driver's name, if any.
    pub fn driver(&self) -> Option<String> {
        let link = fs::read_link(self.sysfs().join("driver")).ok()?;
        link.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    /// The IOMMU group number.
    pub fn iommu_group(&self) -> io::Result<u32> {
        let link = fs::read_link(self.sysfs().join("iommu_group"))?;
        let name = link
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        name.parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("group {name}")))
    }

    /// Every device of its IOMMU group, itself included.
    pub fn group_members(&self) -> io::Result<Vec<PciDevice>> {
        let dir = self.sysfs().join("iommu_group/devices");
        let mut v: Vec<PciDevice> = fs::read_dir(dir)?
            .filter_map(Result::ok)
            .map(|e| PciDevice::new(&e.file_name().to_string_lossy()))
            .collect();
        v.sort();
        Ok(v)
    }

    /// `/dev/vfio/devices/vfioN` of the device, once vfio-pci drives it.
    pub fn vfio_cdev(&self) -> io::Result<PathBuf> {
        let name = fs::read_dir(self.sysfs().join("vfio-dev"))?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("vfio"))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} has no vfio-dev", self.bdf),
                )
            })?;
        Ok(PathBuf::from("/dev/vfio/devices").join(name))
    }

    /// Unbinds the device from its driver, if it has one.
    pub fn unbind(&self) -> io::Result<()> {
        if let Some(drv) = self.driver() {
            fs::write(
                PathBuf::from("/sys/bus/pci/drivers")
                    .join(drv)
                    .join("unbind"),
                &self.bdf,
            )?;
        }
        Ok(())
    }

    /// Binds the device to `driver` (through driver_override and drivers_probe).
    pub fn bind(&self, driver: &str) -> io::Result<()> {
        fs::write(self.sysfs().join("driver_override"), driver)?;
        fs::write("/sys/bus/pci/drivers_probe", &self.bdf)
    }
}

/// Every PCI device of the system.
pub fn devices() -> io::Result<Vec<PciDevice>> {
    let mut v: Vec<PciDevice> = fs::read_dir("/sys/bus/pci/devices")?
        .filter_map(Result::ok)
        .map(|e| PciDevice::new(&e.file_name().to_string_lossy()))
        .collect();
    v.sort();
    Ok(v)
}

/// Every `edu` device, in address order.
pub fn edu_devices() -> io::Result<Vec<PciDevice>> {
    Ok(devices()?
        .into_iter()
        .filter(|d| d.ids().ok() == Some((EDU_VENDOR, EDU_DEVICE)))
        .collect())
}

/// The first `edu` device alone in its IOMMU group.
pub fn isolated_edu() -> io::Result<PciDevice> {
    for d in edu_devices()? {
        if d.group_members()?.len() == 1 {
            return Ok(d);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no edu device alone in its IOMMU group",
    ))
}

/// An `edu` device whose IOMMU group also holds a device bound to a driver other
/// than vfio-pci, and that device.
pub fn edu_sharing_group_with_driver() -> io::Result<(PciDevice, PciDevice)> {
    for d in edu_devices()? {
        for m in d.group_members()? {
            if m != d
                && m.driver()
                    .is_some_and(|drv| drv != "vfio-pci" && drv != "pcieport")
            {
                return Ok((d, m));
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no edu device shares a group with a driver-bound device",
    ))
}
