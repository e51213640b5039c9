//! PCI addresses, IOMMU groups and their ownership, as sysfs shows them.
//!
//! An IOMMU group is the smallest set of devices the IOMMU can isolate from each other.
//! Binding one member to `/dev/iommu` claims DMA ownership of the whole group, which the
//! kernel refuses (`EPERM`) while another member is driven by a kernel driver that uses
//! the kernel's DMA API. [`IommuGroup::check_viable`] answers the same question before
//! binding, naming every offending device and its driver. Members bound to a VFIO
//! driver (vfio-pci or a vfio-pci variant such as `mlx5_vfio_pci`, whatever its name:
//! they are the ones with a VFIO device cdev) never stand in the way.
//!
//! ```
//! use iommufd_vfio::group::{GroupMember, IommuGroup, PciAddress};
//! let addr: PciAddress = "0000:00:04.0".parse()?;
//! let group = IommuGroup {
//!     id: 7,
//!     members: vec![GroupMember {
//!         device: addr.to_string(),
//!         driver: Some("vfio-pci".into()),
//!         vfio_cdev: Some("vfio0".into()),
//!     }],
//! };
//! group.check_viable()?;
//! # Ok::<(), iommufd_vfio::GroupError>(())
//! ```

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use thiserror::Error;

/// Drivers without a VFIO cdev that manage DMA ownership themselves (the kernel
/// marks them `driver_managed_dma`): a group member bound to one of them does not
/// stop another member from being bound to `/dev/iommu`. Members bound to VFIO
/// drivers are recognized by their cdev instead.
///
/// ```
/// use iommufd_vfio::group::{DMA_OWNER_SAFE_DRIVERS, GroupMember, IommuGroup};
/// assert!(DMA_OWNER_SAFE_DRIVERS.contains(&"pcieport"));
/// // A PCIe root port sharing the group does not stop the binding.
/// let port = GroupMember { device: "0000:00:1c.0".into(), driver: Some("pcieport".into()), vfio_cdev: None };
/// assert!(IommuGroup { id: 3, members: vec![port] }.check_viable().is_ok());
/// ```
pub const DMA_OWNER_SAFE_DRIVERS: &[&str] = &["vfio-pci", "pci-stub", "pcieport"];

/// Errors of sysfs lookups and group checks.
///
/// ```
/// use iommufd_vfio::{GroupError, PciAddress};
/// let err = "00:04".parse::<PciAddress>().unwrap_err();
/// assert!(matches!(err, GroupError::BadAddress(ref s) if s == "00:04"));
/// assert_eq!(err.to_string(), "invalid PCI address \"00:04\" (want DDDD:BB:DD.F)");
/// ```
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GroupError {
    /// A PCI address did not parse.
    #[error("invalid PCI address {0:?} (want DDDD:BB:DD.F)")]
    BadAddress(String),
    /// Reading sysfs failed.
    #[error("sysfs {path}: {source}")]
    Sysfs {
        /// The file or directory read.
        path: PathBuf,
        /// The I/O error, errno included.
        #[source]
        source: io::Error,
    },
    /// The device has no IOMMU group: no IOMMU translates for it.
    #[error("{0} has no IOMMU group (no IOMMU, or the IOMMU is off)")]
    NoGroup(PciAddress),
    /// The device is not bound to a VFIO driver, so it has no VFIO cdev.
    #[error("{0} has no VFIO device cdev (bind it to vfio-pci or a vfio-pci variant driver first)")]
    NoCdev(PciAddress),
    /// Another member of the group is held by a kernel driver: binding would fail with
    /// `EPERM`.
    #[error("IOMMU group {group} is not viable: {}", fmt_offenders(.offenders))]
    NotViable {
        /// The group number.
        group: u32,
        /// Each offending member and the driver holding it.
        offenders: Vec<(String, String)>,
    },
}

fn fmt_offenders(o: &[(String, String)]) -> String {
    o.iter()
        .map(|(d, drv)| format!("{d} is bound to {drv}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A PCI function address: domain, bus, device, function (`0000:00:04.0`).
///
/// ```
/// use iommufd_vfio::PciAddress;
/// let addr: PciAddress = "0000:3a:1f.7".parse()?;
/// assert_eq!((addr.domain, addr.bus, addr.device, addr.function), (0, 0x3a, 0x1f, 7));
/// assert_eq!(addr.to_string(), "0000:3a:1f.7");
/// # Ok::<(), iommufd_vfio::GroupError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI domain (segment).
    pub domain: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl FromStr for PciAddress {
    type Err = GroupError;

    /// Parses `DDDD:BB:DD.F`, or `BB:DD.F` in domain 0.
    ///
    /// ```
    /// use iommufd_vfio::PciAddress;
    /// assert_eq!("00:04.0".parse::<PciAddress>()?, "0000:00:04.0".parse()?);
    /// assert!("0000:00:20.0".parse::<PciAddress>().is_err()); // device numbers end at 0x1f
    /// # Ok::<(), iommufd_vfio::GroupError>(())
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || GroupError::BadAddress(s.to_string());
        let (head, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, device) = match parts.as_slice() {
            [d, b, dev] => (*d, *b, *dev),
            [b, dev] => ("0", *b, *dev),
            _ => return Err(bad()),
        };
        let hex = |t: &str, max: u32| {
            // Hex digits only: from_str_radix alone would also take a leading '+'.
            let digits = !t.is_empty() && t.len() <= 4 && t.bytes().all(|b| b.is_ascii_hexdigit());
            digits
                .then(|| u32::from_str_radix(t, 16).ok())
                .flatten()
                .filter(|v| *v <= max)
                .ok_or_else(bad)
        };
        Ok(PciAddress {
            domain: hex(domain, 0xffff)? as u16,
            bus: hex(bus, 0xff)? as u8,
            device: hex(device, 0x1f)? as u8,
            function: hex(function, 7)? as u8,
        })
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

/// Where sysfs and devfs are: `/sys` and `/dev` normally; another root lets tests and
/// containers point elsewhere.
///
/// ```no_run
/// use iommufd_vfio::{PciAddress, Sysfs};
/// let sysfs = Sysfs::default(); // /sys and /dev
/// let addr: PciAddress = "0000:00:04.0".parse()?;
/// println!("{addr}: driver {:?}, cdev {:?}", sysfs.driver(addr), sysfs.vfio_cdev(addr));
/// sysfs.iommu_group(addr)?.check_viable()?;
/// # Ok::<(), iommufd_vfio::GroupError>(())
/// ```
#[derive(Debug, Clone)]
pub struct Sysfs {
    sys: PathBuf,
    dev: PathBuf,
}

impl Default for Sysfs {
    fn default() -> Self {
        Sysfs {
            sys: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

fn read_link_name(path: &Path) -> Option<String> {
    fs::read_link(path)
        .ok()?
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
}

impl Sysfs {
    /// Sysfs at `sys`, device nodes under `dev`.
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("iommufd-vfio-doc-new-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&root);
    /// # for (dev, drv) in [("0000:00:04.0", "vfio-pci"), ("0000:00:05.0", "e1000e")] {
    /// #     let (pci, member) = (root.join("sys/bus/pci/devices").join(dev), root.join("sys/kernel/iommu_groups/7/devices").join(dev));
    /// #     std::fs::create_dir_all(&member)?;
    /// #     std::fs::create_dir_all(&pci)?;
    /// #     std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{drv}"), pci.join("driver"))?;
    /// #     std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{drv}"), member.join("driver"))?;
    /// #     std::os::unix::fs::symlink("../../../../kernel/iommu_groups/7", pci.join("iommu_group"))?;
    /// # }
    /// # std::fs::create_dir_all(root.join("sys/bus/pci/devices/0000:00:04.0/vfio-dev/vfio3"))?;
    /// use iommufd_vfio::Sysfs;
    /// // `root` holds a copy of the sysfs layout, as a test or container might.
    /// let sysfs = Sysfs::new(root.join("sys"), root.join("dev"));
    /// let cdev = sysfs.vfio_cdev("0000:00:04.0".parse()?)?;
    /// assert_eq!(cdev, root.join("dev/vfio/devices/vfio3"));
    /// # std::fs::remove_dir_all(&root)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(sys: impl Into<PathBuf>, dev: impl Into<PathBuf>) -> Sysfs {
        Sysfs {
            sys: sys.into(),
            dev: dev.into(),
        }
    }

    fn pci_dir(&self, addr: PciAddress) -> PathBuf {
        self.sys.join("bus/pci/devices").join(addr.to_string())
    }

    /// The driver bound to the PCI device, if any.
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("iommufd-vfio-doc-driver-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&root);
    /// # for (dev, drv) in [("0000:00:04.0", "vfio-pci"), ("0000:00:05.0", "e1000e")] {
    /// #     let (pci, member) = (root.join("sys/bus/pci/devices").join(dev), root.join("sys/kernel/iommu_groups/7/devices").join(dev));
    /// #     std::fs::create_dir_all(&member)?;
    /// #     std::fs::create_dir_all(&pci)?;
    /// #     std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{drv}"), pci.join("driver"))?;
    /// #     std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{drv}"), member.join("driver"))?;
    /// #     std::os::unix::fs::symlink("../../../../kernel/iommu_groups/7", pci.join("iommu_group"))?;
    /// # }
    /// # std::fs::create_dir_all(root.join("sys/bus/pci/devices/0000:00:04.0/vfio-dev/vfio3"))?;
    /// # let sysfs = iommufd_vfio::Sysfs::new(root.join("sys"), root.join("dev"));
    /// assert_eq!(sysfs.driver("0000:00:04.0".parse()?).as_deref(), Some("vfio-pci"));
    /// assert_eq!(sysfs.driver("0000:00:06.0".parse()?), None); // no such device
    /// # std::fs::remove_dir_all(&root)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn driver(&self, addr: PciAddress) -> Option<String> {
        read_link_name(&self.pci_dir(addr).join("driver"))
    }

    /// The IOMMU group of a PCI device, with every member and its driver.
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("iommufd-vfio-doc-group-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&root);
    /// # for (dev, drv) in [("0000:00:04.0", "vfio-pci"), ("0000:00:05.0", "e1000e")] {
    /// #     let (pci, member) = (root.join("sys/bus/pci/devices").join(dev), root.join("sys/kernel/iommu_groups/7/devices").join(dev));
    /// #     std::fs::create_dir_all(&member)?;
    /// #     std::fs::create_dir_all(&pci)?;
    /// #     std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{drv}"), pci.join("driver"))?;
    /// #     std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{drv}"), member.join("driver"))?;
    /// #     std::os::unix::fs::symlink("../../../../kernel/iommu_groups/7", pci.join("iommu_group"))?;
    /// # }
    /// # std::fs::create_dir_all(root.join("sys/bus/pci/devices/0000:00:04.0/vfio-dev/vfio3"))?;
    /// # let sysfs = iommufd_vfio::Sysfs::new(root.join("sys"), root.join("dev"));
    /// let group = sysfs.iommu_group("0000:00:04.0".parse()?)?;
    /// assert_eq!(group.id, 7);
    /// let drivers: Vec<_> = group.members.iter().map(|m| m.driver.as_deref()).collect();
    /// assert_eq!(drivers, [Some("vfio-pci"), Some("e1000e")]);
    /// # std::fs::remove_dir_all(&root)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn iommu_group(&self, addr: PciAddress) -> Result<IommuGroup, GroupError> {
        let link = self.pci_dir(addr).join("iommu_group");
        let id = read_link_name(&link).ok_or(GroupError::NoGroup(addr))?;
        let id: u32 = id.parse().map_err(|_| GroupError::NoGroup(addr))?;
        let dir = self
            .sys
            .join("kernel/iommu_groups")
            .join(id.to_string())
            .join("devices");
        let entries = fs::read_dir(&dir).map_err(|source| GroupError::Sysfs {
            path: dir.clone(),
            source,
        })?;
        let mut members = Vec::new();
        for e in entries {
            let e = e.map_err(|source| GroupError::Sysfs {
                path: dir.clone(),
                source,
            })?;
            let name = e.file_name().to_string_lossy().into_owned();
            let driver = read_link_name(&e.path().join("driver"));
            let vfio_cdev = cdev_name(&e.path());
            members.push(GroupMember {
                device: name,
                driver,
                vfio_cdev,
            });
        }
        members.sort_by(|a, b| a.device.cmp(&b.device));
        Ok(IommuGroup { id, members })
    }

    /// The VFIO device cdev (`/dev/vfio/devices/vfioN`) of a PCI device bound to vfio-pci.
    ///
    /// ```
    /// # let root = std::env::temp_dir().join(format!("iommufd-vfio-doc-cdev-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&root);
    /// # for (dev, drv) in [("0000:00:04.0", "vfio-pci"), ("0000:00:05.0", "e1000e")] {
    /// #     let (pci, member) = (root.join("sys/bus/pci/devices").join(dev), root.join("sys/kernel/iommu_groups/7/devices").join(dev));
    /// #     std::fs::create_dir_all(&member)?;
    /// #     std::fs::create_dir_all(&pci)?;
    /// #     std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{drv}"), pci.join("driver"))?;
    /// #     std::os::unix::fs::symlink(format!("../../../bus/pci/drivers/{drv}"), member.join("driver"))?;
    /// #     std::os::unix::fs::symlink("../../../../kernel/iommu_groups/7", pci.join("iommu_group"))?;
    /// # }
    /// # std::fs::create_dir_all(root.join("sys/bus/pci/devices/0000:00:04.0/vfio-dev/vfio3"))?;
    /// use iommufd_vfio::GroupError;
    /// # let sysfs = iommufd_vfio::Sysfs::new(root.join("sys"), root.join("dev"));
    /// let cdev = sysfs.vfio_cdev("0000:00:04.0".parse()?)?;
    /// assert!(cdev.ends_with("vfio/devices/vfio3"));
    /// let e1000e = sysfs.vfio_cdev("0000:00:05.0".parse()?); // not bound to vfio-pci
    /// assert!(matches!(e1000e, Err(GroupError::NoCdev(_))));
    /// # std::fs::remove_dir_all(&root)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn vfio_cdev(&self, addr: PciAddress) -> Result<PathBuf, GroupError> {
        let name = cdev_name(&self.pci_dir(addr)).ok_or(GroupError::NoCdev(addr))?;
        Ok(self.dev.join("vfio/devices").join(name))
    }
}

/// The name of the VFIO cdev (`vfioN`) of the device at sysfs directory `dir`.
fn cdev_name(dir: &Path) -> Option<String> {
    fs::read_dir(dir.join("vfio-dev"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("vfio"))
        .min()
}

/// One device of an IOMMU group.
///
/// ```
/// use iommufd_vfio::group::GroupMember;
/// let nic = GroupMember { device: "0000:00:05.0".into(), driver: Some("e1000e".into()), vfio_cdev: None };
/// assert_eq!(nic.driver.as_deref(), Some("e1000e"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Its sysfs name (a PCI address for PCI devices).
    pub device: String,
    /// The bound driver, if any.
    pub driver: Option<String>,
    /// Its VFIO device cdev (`vfioN`), if a VFIO driver (vfio-pci or a variant)
    /// drives it.
    pub vfio_cdev: Option<String>,
}

/// An IOMMU group and its members.
///
/// ```
/// use iommufd_vfio::IommuGroup;
/// use iommufd_vfio::group::GroupMember;
/// let member = |dev: &str, drv: Option<&str>| GroupMember {
///     device: dev.into(),
///     driver: drv.map(Into::into),
///     vfio_cdev: drv.filter(|d| d.contains("vfio")).map(|_| "vfio3".into()),
/// };
/// let group = IommuGroup { id: 7, members: vec![member("0000:00:04.0", Some("vfio-pci")), member("0000:00:05.0", None)] };
/// assert!(group.check_viable().is_ok()); // the unbound member does not count
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IommuGroup {
    /// The group number (`/sys/kernel/iommu_groups/N`).
    pub id: u32,
    /// Every member, sorted by name.
    pub members: Vec<GroupMember>,
}

impl IommuGroup {
    /// Checks that binding a member to `/dev/iommu` can succeed: every member is
    /// unbound, has a VFIO cdev (vfio-pci or a variant driver, whatever its name), or
    /// is bound to a driver of [`DMA_OWNER_SAFE_DRIVERS`]. Otherwise fails with
    /// [`GroupError::NotViable`] naming each offending device and its driver.
    ///
    /// ```
    /// use iommufd_vfio::IommuGroup;
    /// use iommufd_vfio::group::GroupMember;
    /// let member = |dev: &str, drv: &str, cdev: Option<&str>| GroupMember {
    ///     device: dev.into(),
    ///     driver: Some(drv.into()),
    ///     vfio_cdev: cdev.map(Into::into),
    /// };
    /// let group = IommuGroup { id: 7, members: vec![
    ///     member("0000:00:04.0", "mlx5_vfio_pci", Some("vfio0")), // a variant driver: fine
    ///     member("0000:00:05.0", "e1000e", None),
    /// ] };
    /// let err = group.check_viable().unwrap_err();
    /// assert_eq!(err.to_string(), "IOMMU group 7 is not viable: 0000:00:05.0 is bound to e1000e");
    /// ```
    pub fn check_viable(&self) -> Result<(), GroupError> {
        let offenders: Vec<(String, String)> = self
            .members
            .iter()
            .filter_map(|m| match &m.driver {
                Some(d)
                    if m.vfio_cdev.is_none() && !DMA_OWNER_SAFE_DRIVERS.contains(&d.as_str()) =>
                {
                    Some((m.device.clone(), d.clone()))
                }
                _ => None,
            })
            .collect();
        if offenders.is_empty() {
            Ok(())
        } else {
            Err(GroupError::NotViable {
                group: self.id,
                offenders,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn pci_address_round_trip() {
        let a: PciAddress = "0000:00:04.0".parse().unwrap();
        assert_eq!(
            a,
            PciAddress {
                domain: 0,
                bus: 0,
                device: 4,
                function: 0
            }
        );
        assert_eq!(a.to_string(), "0000:00:04.0");
        let b: PciAddress = "3a:1f.7".parse().unwrap();
        assert_eq!(b.to_string(), "0000:3a:1f.7");
        for bad in [
            "0000:00:+4.0",
            "+0:+0:+4.+0",
            "",
            "0000:00:04",
            "0000:00:20.0",
            "0000:00:04.8",
            "x:00:04.0",
            "00000:00:04.0",
            "0:0:0:0.0",
            ":00.0",
        ] {
            assert!(
                matches!(bad.parse::<PciAddress>(), Err(GroupError::BadAddress(_))),
                "{bad:?} parsed"
            );
        }
    }

    /// Builds a sysfs-shaped directory tree: it is what the code reads, so this is the
    /// data under test, not a stand-in for a syscall.
    fn fake_sysfs(members: &[(&str, Option<&str>)]) -> (PathBuf, Sysfs) {
        let root = std::env::temp_dir().join(format!(
            "iommufd-vfio-sysfs-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&root);
        let group = root.join("sys/kernel/iommu_groups/7/devices");
        fs::create_dir_all(&group).unwrap();
        for (dev, driver) in members {
            let d = root.join("sys/devices/pci0000:00").join(dev);
            fs::create_dir_all(&d).unwrap();
            symlink(
                root.join("sys/kernel/iommu_groups/7"),
                d.join("iommu_group"),
            )
            .unwrap();
            if let Some(drv) = driver {
                let dd = root.join("sys/bus/pci/drivers").join(drv);
                fs::create_dir_all(&dd).unwrap();
                symlink(&dd, d.join("driver")).unwrap();
                // VFIO drivers (vfio-pci and its variants) give the device a cdev.
                if drv.contains("vfio") {
                    fs::create_dir_all(d.join("vfio-dev").join(format!("vfio{}", dev.len())))
                        .unwrap();
                }
            }
            fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
            symlink(&d, root.join("sys/bus/pci/devices").join(dev)).unwrap();
            symlink(&d, group.join(dev)).unwrap();
        }
        let s = Sysfs::new(root.join("sys"), root.join("dev"));
        (root, s)
    }

    #[test]
    fn group_with_driver_bound_member_names_offender() {
        let (root, sysfs) = fake_sysfs(&[
            ("0000:01:01.0", Some("vfio-pci")),
            ("0000:01:02.0", Some("virtio-pci")),
            ("0000:00:06.0", None),
        ]);
        let addr = "0000:01:01.0".parse().unwrap();
        let g = sysfs.iommu_group(addr).unwrap();
        assert_eq!(g.id, 7);
        assert_eq!(g.members.len(), 3);
        assert_eq!(sysfs.driver(addr).as_deref(), Some("vfio-pci"));
        let err = g.check_viable().expect_err("virtio-pci holds a member");
        assert_eq!(
            err.to_string(),
            "IOMMU group 7 is not viable: 0000:01:02.0 is bound to virtio-pci"
        );
        let _ = fs::remove_dir_all(root);
    }

    // The migration-capable devices dirty tracking is for are bound to vfio-pci
    // variant drivers; their cdev, not their driver's name, makes them usable.
    #[test]
    fn vfio_pci_variant_drivers_are_vfio_devices() {
        let (root, sysfs) = fake_sysfs(&[
            ("0000:02:00.0", Some("mlx5_vfio_pci")),
            ("0000:02:00.1", Some("pds_vfio_pci")),
            ("0000:02:00.2", Some("pcieport")),
        ]);
        let addr = "0000:02:00.0".parse().unwrap();
        let g = sysfs.iommu_group(addr).unwrap();
        g.check_viable().expect("variant drivers are VFIO drivers");
        assert!(g.members.iter().filter(|m| m.vfio_cdev.is_some()).count() == 2);
        assert!(
            sysfs
                .vfio_cdev(addr)
                .unwrap()
                .starts_with(root.join("dev/vfio/devices"))
        );
        let _ = fs::remove_dir_all(root);
    }

    #[test]
    fn group_of_vfio_and_unbound_members_is_viable() {
        let (root, sysfs) = fake_sysfs(&[
            ("0000:01:01.0", Some("vfio-pci")),
            ("0000:01:02.0", None),
            ("0000:00:1c.0", Some("pcieport")),
        ]);
        let addr = "0000:01:02.0".parse().unwrap();
        sysfs
            .iommu_group(addr)
            .and_then(|g| g.check_viable())
            .unwrap();
        assert!(matches!(sysfs.vfio_cdev(addr), Err(GroupError::NoCdev(_))));
        let _ = fs::remove_dir_all(root);
    }
}
