//! Device labels: the caller's names for bound devices.
//!
//! The kernel names a device by the small `dev_id` it hands out at bind time; a VMM
//! knows the device by its own handle (a slot, a guest BDF, an index in its device
//! table). The 2021 /dev/ioasid design let user space attach such a cookie at bind;
//! the merged interface did not keep it, so the library keeps the map instead: a
//! binding layer (iommufd-vfio) records the label when it binds, and whatever the
//! library later decodes that names a device by `dev_id` (hardware info today; fault
//! and event records as they arrive) carries the label too. Callers can also name a
//! device by its label ([`Iommufd::device_by_label`]).

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use crate::{DeviceId, Error, Iommufd, PtId, Result};

/// The label map of one `Iommufd`: dev_id -> label, kept one-to-one.
#[derive(Debug, Default)]
pub(crate) struct Labels {
    by_device: Mutex<BTreeMap<u32, u64>>,
}

impl Labels {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<u32, u64>> {
        // A panic while holding the lock cannot leave the map half-updated (every
        // update is one insert or remove), so a poisoned lock is still usable.
        self.by_device.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Iommufd {
    /// Gives the device `dev` the label `label`, replacing any label it had.
    ///
    /// Binding layers call this at bind time (iommufd-vfio's `VfioDevice::bind` does);
    /// call it directly for devices bound some other way, e.g. the kernel's mock
    /// devices. Labels are unique within one `Iommufd`: a label another device has
    /// fails with [`Error::LabelInUse`].
    ///
    /// ```
    /// # fn f(fd: &iommufd::Iommufd) -> iommufd::Result<()> {
    /// use iommufd::DeviceId;
    /// let dev = DeviceId::from_raw(3);
    /// fd.set_label(dev, 0x1_0008)?;
    /// assert_eq!(fd.label_of(dev), Some(0x1_0008));
    /// assert_eq!(fd.device_by_label(0x1_0008), Some(dev));
    /// # Ok(()) }
    /// # let null = std::fs::File::open("/dev/null").unwrap();
    /// # f(&iommufd::Iommufd::from_owned_fd(null.into())).unwrap();
    /// ```
    pub fn set_label(&self, dev: DeviceId, label: u64) -> Result<()> {
        let mut map = self.labels().lock();
        if let Some((&other, _)) = map.iter().find(|(d, l)| **l == label && **d != dev.raw()) {
            return Err(Error::LabelInUse {
                label,
                device: DeviceId::from_raw(other),
            });
        }
        map.insert(dev.raw(), label);
        Ok(())
    }

    /// Forgets the label of `dev` (binding layers do this when the device goes), and
    /// returns it.
    ///
    /// ```
    /// # let fd = iommufd::Iommufd::open_path("/dev/null")?; // labels never reach the kernel
    /// use iommufd::DeviceId;
    /// let dev = DeviceId::from_raw(3);
    /// fd.set_label(dev, 0x10)?;
    /// assert_eq!(fd.clear_label(dev), Some(0x10));
    /// assert_eq!(fd.clear_label(dev), None);
    /// assert_eq!(fd.device_by_label(0x10), None);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn clear_label(&self, dev: DeviceId) -> Option<u64> {
        self.labels().lock().remove(&dev.raw())
    }

    /// The label of `dev`, if it has one.
    ///
    /// ```
    /// # let fd = iommufd::Iommufd::open_path("/dev/null")?; // labels never reach the kernel
    /// use iommufd::DeviceId;
    /// assert_eq!(fd.label_of(DeviceId::from_raw(1)), None);
    /// fd.set_label(DeviceId::from_raw(1), 0x0004)?;
    /// assert_eq!(fd.label_of(DeviceId::from_raw(1)), Some(0x0004));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn label_of(&self, dev: DeviceId) -> Option<u64> {
        self.labels().lock().get(&dev.raw()).copied()
    }

    /// The device that has `label`, if any.
    ///
    /// ```
    /// # let fd = iommufd::Iommufd::open_path("/dev/null")?; // labels never reach the kernel
    /// use iommufd::DeviceId;
    /// // Labels as a VMM's guest BDFs: 00:04.0 and 00:05.0.
    /// fd.set_label(DeviceId::from_raw(1), 0x20)?;
    /// fd.set_label(DeviceId::from_raw(2), 0x28)?;
    /// assert_eq!(fd.device_by_label(0x28), Some(DeviceId::from_raw(2)));
    /// assert_eq!(fd.device_by_label(0x30), None);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn device_by_label(&self, label: u64) -> Option<DeviceId> {
        self.labels()
            .lock()
            .iter()
            .find(|(_, l)| **l == label)
            .map(|(d, _)| DeviceId::from_raw(*d))
    }

    /// Checks that a page-table target built from an object ([`PtId`] from `&Ioas` or
    /// `&Hwpt`) belongs to this file, for layers that issue their own commands with
    /// it (device attach). Bare ids are taken on trust.
    ///
    /// ```
    /// # let null = || iommufd::Iommufd::from_owned_fd(std::fs::File::open("/dev/null").unwrap().into());
    /// use iommufd::{IoasId, PtId};
    /// let fd = null();
    /// assert!(fd.check_pt("attach", PtId::from(IoasId::from_raw(1))).is_ok());
    /// ```
    pub fn check_pt(&self, op: &'static str, pt: PtId) -> Result<()> {
        self.check_owner(op, pt.owner(), pt)
    }
}

#[cfg(test)]
mod tests {
    use crate::{DeviceId, Error, Iommufd};

    fn null_fd() -> Iommufd {
        Iommufd::from_owned_fd(std::fs::File::open("/dev/null").unwrap().into())
    }

    #[test]
    fn labels_are_one_to_one() {
        let fd = null_fd();
        let (a, b) = (DeviceId::from_raw(1), DeviceId::from_raw(2));
        fd.set_label(a, 10).unwrap();
        fd.set_label(b, 20).unwrap();
        let err = fd.set_label(b, 10).unwrap_err();
        assert!(
            matches!(err, Error::LabelInUse { label: 10, device } if device == a),
            "{err}"
        );
        assert_eq!(
            fd.label_of(b),
            Some(20),
            "a refused relabel keeps the old label"
        );
        fd.set_label(a, 11).unwrap();
        assert_eq!(fd.device_by_label(10), None);
        assert_eq!(fd.device_by_label(11), Some(a));
        assert_eq!(fd.clear_label(a), Some(11));
        assert_eq!(fd.label_of(a), None);
        fd.set_label(b, 11).unwrap();
        assert_eq!(fd.device_by_label(11), Some(b));
    }

    #[test]
    fn labels_belong_to_one_file() {
        let (x, y) = (null_fd(), null_fd());
        x.set_label(DeviceId::from_raw(1), 5).unwrap();
        assert_eq!(y.label_of(DeviceId::from_raw(1)), None);
        y.set_label(DeviceId::from_raw(1), 5).unwrap();
    }
}
