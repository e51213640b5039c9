//! Device labels: the caller's names for bound devices.
//!
//! The kernel names a device by the small `dev_id` it hands out at bind time, and
//! reuses it once the device is unbound; a VMM knows the device by its own handle (a
//! slot, a guest BDF, an index in its device table). The 2021 /dev/ioasid design let
//! user space attach such a cookie at bind; the merged interface did not keep it. So
//! the label belongs to the [`Device`](crate::Device) object: the binding layer
//! reserves it before it binds ([`LabelReservation`]), the device holds it while it
//! is bound and gives it up just before it unbinds. This per-file map from `dev_id`
//! to label is what layers that decode kernel records (hardware information today,
//! faults and events next) use to name the device by its label; it never holds an
//! entry for a `dev_id` that is not bound through a live `Device`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, MutexGuard};

use crate::{DeviceId, Error, Iommufd, Result};

/// One label's slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    /// Reserved for a bind in progress.
    Reserved,
    /// Held by a bound device.
    Bound(u32),
}

#[derive(Debug, Default)]
struct Maps {
    by_label: HashMap<u64, Slot>,
    by_device: HashMap<u32, u64>,
}

/// The label map of one `Iommufd`, kept one-to-one.
#[derive(Debug, Default)]
pub(crate) struct Labels {
    maps: Mutex<Maps>,
}

impl Labels {
    fn lock(&self) -> MutexGuard<'_, Maps> {
        // Every update below leaves both maps consistent before it can panic (it
        // cannot), so a poisoned lock still guards consistent data.
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reserves `label`; if it is taken, says by which bound device (`None`: by a
    /// reservation).
    fn reserve(&self, label: u64) -> std::result::Result<(), Option<u32>> {
        let mut m = self.lock();
        match m.by_label.get(&label) {
            None => {
                m.by_label.insert(label, Slot::Reserved);
                Ok(())
            }
            Some(Slot::Bound(dev)) => Err(Some(*dev)),
            Some(Slot::Reserved) => Err(None),
        }
    }

    /// Turns the reservation of `label` into the label of `dev`. A stale entry for
    /// `dev` (impossible while devices unregister before they unbind) is replaced.
    fn commit(&self, label: u64, dev: u32) {
        let mut m = self.lock();
        if let Some(old) = m.by_device.insert(dev, label) {
            if old != label {
                m.by_label.remove(&old);
            }
        }
        m.by_label.insert(label, Slot::Bound(dev));
    }

    fn release(&self, label: u64) {
        let mut m = self.lock();
        if let Some(Slot::Bound(dev)) = m.by_label.remove(&label) {
            m.by_device.remove(&dev);
        }
    }

    pub(crate) fn label_of(&self, dev: u32) -> Option<u64> {
        self.lock().by_device.get(&dev).copied()
    }

    pub(crate) fn device_by_label(&self, label: u64) -> Option<u32> {
        match self.lock().by_label.get(&label) {
            Some(Slot::Bound(dev)) => Some(*dev),
            _ => None,
        }
    }
}

/// A label reserved in one [`Iommufd`] for a device about to be bound.
///
/// Binding layers reserve the label first, so a label clash is reported before the
/// device is bound, then pass the reservation to [`Device::new`](crate::Device::new)
/// once the kernel has given the device its id. Dropping an unused reservation frees
/// the label.
///
/// ```no_run
/// use iommufd::{Error, Iommufd};
/// let fd = Iommufd::open()?;
/// let first = fd.reserve_label(0x20)?;
/// assert!(matches!(fd.reserve_label(0x20), Err(Error::LabelInUse { label: 0x20, .. })));
/// drop(first);
/// fd.reserve_label(0x20)?;
/// # Ok::<(), iommufd::Error>(())
/// ```
#[must_use = "a reservation is freed when dropped"]
pub struct LabelReservation {
    fd: Iommufd,
    label: u64,
    committed: bool,
}

impl fmt::Debug for LabelReservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LabelReservation")
            .field("label", &self.label)
            .finish()
    }
}

impl LabelReservation {
    /// The label.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// assert_eq!(fd.reserve_label(7)?.label(), 7);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn label(&self) -> u64 {
        self.label
    }

    /// The file the label is reserved in.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// assert!(fd.reserve_label(7)?.iommufd().same_file(&fd));
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn iommufd(&self) -> &Iommufd {
        &self.fd
    }

    /// Binds the label to `dev` (the device's kernel id), for as long as the returned
    /// guard lives.
    pub(crate) fn commit(mut self, dev: u32) -> LabelGuard {
        self.fd.labels().commit(self.label, dev);
        self.committed = true;
        LabelGuard {
            fd: self.fd.clone(),
            label: self.label,
        }
    }
}

impl Drop for LabelReservation {
    fn drop(&mut self) {
        if !self.committed {
            self.fd.labels().release(self.label);
        }
    }
}

/// The label of a bound device; dropping it removes the label from the file's map.
#[derive(Debug)]
pub(crate) struct LabelGuard {
    fd: Iommufd,
    label: u64,
}

impl LabelGuard {
    pub(crate) fn label(&self) -> u64 {
        self.label
    }
}

impl Drop for LabelGuard {
    fn drop(&mut self) {
        self.fd.labels().release(self.label);
    }
}

impl Iommufd {
    /// Reserves `label` for a device about to be bound to this file: see
    /// [`LabelReservation`]. Fails with [`Error::LabelInUse`] if a bound device has
    /// it or another bind reserved it. Labels are per file: two files may use the
    /// same label.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// let r = fd.reserve_label(0x0004)?; // e.g. the guest BDF 00:00.4
    /// // ... bind the device (VFIO_DEVICE_BIND_IOMMUFD), then Device::new(r, ...) ...
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub fn reserve_label(&self, label: u64) -> Result<LabelReservation> {
        self.labels()
            .reserve(label)
            .map_err(|dev| Error::LabelInUse {
                label,
                device: dev.map(|d| DeviceId::new(d, self.token())),
            })?;
        Ok(LabelReservation {
            fd: self.clone(),
            label,
            committed: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::iommufd::tests::null;

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn labels_are_one_to_one_and_released() {
        let fd = null();
        let a = fd.reserve_label(10).unwrap();
        let e = fd.reserve_label(10).unwrap_err();
        assert!(
            matches!(
                e,
                Error::LabelInUse {
                    label: 10,
                    device: None
                }
            ),
            "{e}"
        );
        let ga = a.commit(1);
        assert_eq!(ga.label(), 10);
        assert_eq!(fd.labels().label_of(1), Some(10));
        assert_eq!(fd.labels().device_by_label(10), Some(1));
        let e = fd.reserve_label(10).unwrap_err();
        assert!(
            matches!(e, Error::LabelInUse { label: 10, device: Some(d) } if d.raw() == 1),
            "{e}"
        );
        assert!(e.to_string().contains("device 1"), "{e}");
        let b = fd.reserve_label(20).unwrap();
        assert_eq!(b.label(), 20);
        assert!(b.iommufd().same_file(&fd));
        assert!(format!("{b:?}").contains("20"));
        assert_eq!(fd.labels().device_by_label(20), None, "reserved, not bound");
        drop(b);
        let gb = fd.reserve_label(20).unwrap().commit(2);
        drop(ga);
        assert_eq!(fd.labels().label_of(1), None);
        assert_eq!(fd.labels().device_by_label(10), None);
        // The kernel reuses dev_id 1: a new device gets its own label.
        let gc = fd.reserve_label(11).unwrap().commit(1);
        assert_eq!(fd.labels().label_of(1), Some(11));
        drop((gb, gc));
        assert_eq!(fd.labels().label_of(2), None);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn labels_belong_to_one_file() {
        let (x, y) = (null(), null());
        let _gx = x.reserve_label(5).unwrap().commit(1);
        assert_eq!(y.labels().label_of(1), None);
        let _gy = y.reserve_label(5).unwrap().commit(1);
    }

    #[test]
    #[cfg_attr(miri, ignore = "real syscalls, which Miri does not run")]
    fn a_stale_entry_for_a_device_is_replaced() {
        let fd = null();
        let labels = fd.labels();
        labels.reserve(1).unwrap();
        labels.commit(1, 9);
        labels.reserve(2).unwrap();
        labels.commit(2, 9);
        assert_eq!(labels.label_of(9), Some(2));
        assert_eq!(labels.device_by_label(1), None);
        labels.release(1); // nothing left under 1: a no-op
        assert_eq!(labels.label_of(9), Some(2));
    }
}
