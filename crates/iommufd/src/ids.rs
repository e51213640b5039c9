//! Typed object ids.
//!
//! The kernel names every object of one `/dev/iommu` file by a `u32` from a single
//! namespace. Each kind of object gets its own type here so that an IOAS id cannot be
//! passed where a device id is expected.

use std::fmt;

macro_rules! object_id {
    ($(#[$doc:meta])* $name:ident, $label:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(u32);

        impl $name {
            /// Wraps a raw id, e.g. one received from another process or layer.
            ///
            /// ```
            #[doc = concat!("let id = iommufd::", stringify!($name), "::from_raw(7);")]
            #[doc = concat!("assert_eq!(id.to_string(), \"", $label, " 7\");")]
            /// ```
            pub const fn from_raw(id: u32) -> Self {
                Self(id)
            }

            /// The raw id the kernel uses.
            ///
            /// ```
            #[doc = concat!("let id = iommufd::", stringify!($name), "::from_raw(7);")]
            /// assert_eq!(id.raw(), 7);
            /// ```
            pub const fn raw(self) -> u32 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, " {}"), self.0)
            }
        }
    };
}

object_id! {
    /// The id of an I/O address space ([`Ioas`](crate::Ioas)).
    ///
    /// ```
    /// use iommufd::IoasId;
    /// assert_eq!(IoasId::from_raw(3).to_string(), "ioas 3");
    /// ```
    IoasId, "ioas"
}

object_id! {
    /// The id of a hardware page table ([`Hwpt`](crate::Hwpt)), including the ones
    /// the kernel creates when a device is attached to an IOAS.
    ///
    /// ```
    /// use iommufd::HwptId;
    /// assert_eq!(HwptId::from_raw(5).raw(), 5);
    /// ```
    HwptId, "hwpt"
}

object_id! {
    /// The id of a device bound to the iommufd, e.g. the `out_devid` of
    /// `VFIO_DEVICE_BIND_IOMMUFD` or the `idev_id` of a selftest mock device.
    ///
    /// ```
    /// use iommufd::DeviceId;
    /// assert_eq!(DeviceId::from_raw(2).to_string(), "device 2");
    /// ```
    DeviceId, "device"
}

/// A page-table target for [`Hwpt::alloc`](crate::Hwpt::alloc) and device attach: an
/// IOAS or a HWPT.
///
/// Built from an object (`&Ioas`, `&Hwpt`), it remembers which `/dev/iommu` file the
/// object belongs to, and using it with another file is refused with
/// [`Error::WrongIommufd`](crate::Error::WrongIommufd). Built from a bare id it is
/// taken on trust.
///
/// ```
/// use iommufd::{IoasId, PtId};
/// let pt = PtId::from(IoasId::from_raw(1));
/// assert_eq!(pt.raw(), 1);
/// assert_eq!(pt.to_string(), "ioas 1");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PtId {
    kind: PtKind,
    id: u32,
    owner: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PtKind {
    Ioas,
    Hwpt,
}

impl PtId {
    pub(crate) fn owned(kind_ioas: bool, id: u32, owner: u64) -> PtId {
        PtId {
            kind: if kind_ioas {
                PtKind::Ioas
            } else {
                PtKind::Hwpt
            },
            id,
            owner: Some(owner),
        }
    }

    /// The raw id the kernel uses, whether it names an IOAS or a HWPT.
    ///
    /// ```
    /// use iommufd::{HwptId, PtId};
    /// assert_eq!(PtId::from(HwptId::from_raw(9)).raw(), 9);
    /// ```
    pub const fn raw(self) -> u32 {
        self.id
    }

    /// The token of the [`Iommufd`](crate::Iommufd) the object belongs to, if known.
    pub(crate) fn owner(self) -> Option<u64> {
        self.owner
    }
}

impl fmt::Display for PtId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            PtKind::Ioas => write!(f, "ioas {}", self.id),
            PtKind::Hwpt => write!(f, "hwpt {}", self.id),
        }
    }
}

impl From<IoasId> for PtId {
    fn from(id: IoasId) -> PtId {
        PtId {
            kind: PtKind::Ioas,
            id: id.raw(),
            owner: None,
        }
    }
}

impl From<HwptId> for PtId {
    fn from(id: HwptId) -> PtId {
        PtId {
            kind: PtKind::Hwpt,
            id: id.raw(),
            owner: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind() {
        assert_eq!(IoasId::from_raw(1).to_string(), "ioas 1");
        assert_eq!(HwptId::from_raw(2).to_string(), "hwpt 2");
        assert_eq!(DeviceId::from_raw(3).to_string(), "device 3");
        assert_eq!(PtId::from(HwptId::from_raw(4)).to_string(), "hwpt 4");
        assert_eq!(PtId::owned(true, 5, 9).to_string(), "ioas 5");
    }

    #[test]
    fn bare_ids_have_no_owner() {
        assert_eq!(PtId::from(IoasId::from_raw(1)).owner(), None);
        assert_eq!(PtId::owned(false, 1, 7).owner(), Some(7));
    }
}
