//! Typed object ids.
//!
//! The kernel names every object of one `/dev/iommu` file by a `u32` from a single
//! namespace, numbered from 1 in every file. An [`Id`] says which kind of object it
//! names (so an IOAS id cannot be passed where a device id is expected) and which
//! file it belongs to (so it cannot be used with another file, where the same number
//! names something else).

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

/// The kinds of kernel objects, as type parameters of [`Id`] and
/// [`Object`](crate::Object).
pub mod kind {
    pub(crate) mod sealed {
        pub trait Sealed {}
    }

    /// A kind of object named by an [`Id`](crate::Id). Sealed: the kinds are the
    /// kernel's.
    pub trait Kind: sealed::Sealed + Send + Sync + 'static {
        /// How ids of this kind are named in messages (`"ioas"`, `"hwpt"`, ...).
        const NAME: &'static str;
    }

    macro_rules! kinds {
        ($($(#[$doc:meta])* $name:ident = $label:literal;)*) => {$(
            $(#[$doc])*
            #[derive(Debug)]
            pub enum $name {}
            impl sealed::Sealed for $name {}
            impl Kind for $name {
                const NAME: &'static str = $label;
            }
        )*};
    }

    kinds! {
        /// An I/O address space ([`Ioas`](crate::Ioas)).
        Ioas = "ioas";
        /// A hardware page table ([`Hwpt`](crate::Hwpt)), including the ones the
        /// kernel creates when a device is attached to an IOAS.
        Hwpt = "hwpt";
        /// A device bound to the file ([`Device`](crate::Device)).
        Device = "device";
        /// A mock device of the kernel's selftest (`IOMMU_TEST_OP_MOCK_DOMAIN`).
        MockDevice = "selftest device";
        /// A nested (stage-1) hardware page table ([`NestedHwpt`](crate::NestedHwpt)),
        /// whose page table the guest owns.
        NestedHwpt = "nested hwpt";
        /// A virtual IOMMU instance ([`Viommu`](crate::Viommu)).
        Viommu = "viommu";
        /// A virtual device of a vIOMMU ([`Vdevice`](crate::Vdevice)).
        Vdevice = "vdevice";
        /// A queue of I/O page faults ([`FaultQueue`](crate::FaultQueue)).
        FaultQueue = "fault queue";
        /// A queue of vIOMMU events ([`Veventq`](crate::Veventq)).
        Veventq = "veventq";
        /// A hardware-accelerated queue of a vIOMMU ([`HwQueue`](crate::HwQueue)).
        HwQueue = "hw queue";
    }
}

use kind::Kind;

/// The id of a kernel object of kind `K` in one `/dev/iommu` file.
///
/// Ids come from objects ([`Object::id`](crate::Object::id),
/// [`Device::id`](crate::Device::id)) and from the kernel's answers (the HWPT a device
/// was attached to); they cannot be made up from a number, so an id is always one
/// this file handed out. Two ids are equal only if they name the same object of the
/// same file. [`Id::raw`] is the kernel's number, for messages and for other layers.
///
/// ```no_run
/// use iommufd::{Ioas, IoasId, Iommufd};
/// let fd = Iommufd::open()?;
/// let ioas = Ioas::alloc(&fd)?;
/// let id: IoasId = ioas.id();
/// assert_eq!(id.to_string(), format!("ioas {}", id.raw()));
/// // The same number in another file is another id.
/// let other = Ioas::alloc(&Iommufd::open()?)?;
/// assert_eq!(other.id().raw(), id.raw()); // both files number from 1
/// assert_ne!(other.id(), id);
/// # Ok::<(), iommufd::Error>(())
/// ```
pub struct Id<K: Kind> {
    raw: u32,
    owner: u64,
    kind: PhantomData<fn() -> K>,
}

/// The id of an I/O address space.
pub type IoasId = Id<kind::Ioas>;
/// The id of a hardware page table.
pub type HwptId = Id<kind::Hwpt>;
/// The id of a bound device.
pub type DeviceId = Id<kind::Device>;
/// The id of a nested hardware page table.
pub type NestedHwptId = Id<kind::NestedHwpt>;
/// The id of a vIOMMU.
pub type ViommuId = Id<kind::Viommu>;
/// The id of a vDEVICE.
pub type VdeviceId = Id<kind::Vdevice>;
/// The id of a fault queue.
pub type FaultQueueId = Id<kind::FaultQueue>;
/// The id of a vEVENTQ.
pub type VeventqId = Id<kind::Veventq>;
/// The id of a HW queue.
pub type HwQueueId = Id<kind::HwQueue>;

impl<K: Kind> Id<K> {
    pub(crate) const fn new(raw: u32, owner: u64) -> Self {
        Id {
            raw,
            owner,
            kind: PhantomData,
        }
    }

    /// The number the kernel uses.
    ///
    /// ```no_run
    /// # let fd = iommufd::Iommufd::open()?;
    /// let ioas = iommufd::Ioas::alloc(&fd)?;
    /// assert!(ioas.id().raw() > 0);
    /// # Ok::<(), iommufd::Error>(())
    /// ```
    pub const fn raw(self) -> u32 {
        self.raw
    }

    /// The token of the [`Iommufd`](crate::Iommufd) the id belongs to.
    pub(crate) const fn owner(self) -> u64 {
        self.owner
    }
}

impl<K: Kind> Clone for Id<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K: Kind> Copy for Id<K> {}

impl<K: Kind> PartialEq for Id<K> {
    fn eq(&self, other: &Self) -> bool {
        (self.raw, self.owner) == (other.raw, other.owner)
    }
}

impl<K: Kind> Eq for Id<K> {}

impl<K: Kind> PartialOrd for Id<K> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<K: Kind> Ord for Id<K> {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.owner, self.raw).cmp(&(other.owner, other.raw))
    }
}

impl<K: Kind> Hash for Id<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.raw, self.owner).hash(state);
    }
}

impl<K: Kind> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", K::NAME, self.raw)
    }
}

impl<K: Kind> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({} {})", K::NAME, self.raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_kind() {
        assert_eq!(IoasId::new(1, 7).to_string(), "ioas 1");
        assert_eq!(HwptId::new(2, 7).to_string(), "hwpt 2");
        assert_eq!(DeviceId::new(3, 7).to_string(), "device 3");
        assert_eq!(format!("{:?}", HwptId::new(4, 7)), "Id(hwpt 4)");
        assert_eq!(
            Id::<kind::MockDevice>::new(5, 1).to_string(),
            "selftest device 5"
        );
    }

    #[test]
    fn ids_of_two_files_differ() {
        let (a, b) = (IoasId::new(1, 7), IoasId::new(1, 8));
        assert_ne!(a, b);
        assert_eq!(a, a.clone());
        assert_eq!(a.raw(), b.raw());
        assert!(a < b && IoasId::new(2, 7) < b);
        let set: std::collections::HashSet<_> = [a, b, a].into_iter().collect();
        assert_eq!(set.len(), 2);
        assert_eq!(a.owner(), 7);
    }
}
