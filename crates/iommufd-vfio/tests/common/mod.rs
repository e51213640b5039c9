//! Helpers shared by the guest-lab tests of iommufd-vfio: the lab's isolated `edu`
//! device, bound through this crate, and its DMA engine.

#![allow(dead_code)]

use std::os::fd::AsFd;

use iommufd::Iommufd;
use iommufd_lab::edu::Edu;
use iommufd_lab::pci;
use iommufd_lab::vfio::VfioDevice as LabDevice;
use iommufd_vfio::{BoundDevice, PciAddress, Sysfs, VfioDevice};

/// Opens `/dev/iommu`, failing the test (not skipping it) if it is missing.
pub fn open() -> Iommufd {
    assert!(
        std::path::Path::new("/dev/iommu").exists(),
        "/dev/iommu is missing: this test must run in the guest lab (cargo xtask vmtest)"
    );
    Iommufd::open().expect("open /dev/iommu")
}

/// The first `edu` device alone in its IOMMU group.
pub fn isolated() -> PciAddress {
    let d = pci::isolated_edu().expect("an edu device alone in its group");
    d.bdf().parse().expect("PCI address")
}

/// Opens the isolated edu device through sysfs and binds it under `label`.
pub fn bind_isolated(fd: &Iommufd, label: u64) -> BoundDevice {
    VfioDevice::open_pci(&Sysfs::default(), isolated())
        .expect("open the edu cdev")
        .bind(fd, label)
        .expect("VFIO_DEVICE_BIND_IOMMUFD")
}

/// `len` bytes of a pattern that differs per `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

/// The edu driver of the lab, on a duplicate of the bound device's fd. The dup is
/// closed again at once, but the `Edu` keeps BAR0 mapped, and that mapping keeps the
/// cdev's open file, and so the binding, alive: drop the `Edu` before the device is
/// expected to be unbound.
pub fn edu(dev: &BoundDevice) -> Edu {
    let fd = dev.as_fd().try_clone_to_owned().expect("dup device fd");
    Edu::new(&LabDevice::from_owned_fd(fd)).expect("edu BAR0")
}
