//! Emulated devices behind the virtio-iommu: their view of the guest's I/O
//! address space, kept by the [`Backend`](super::Backend) and read through
//! vm-memory's [`Iommu`] trait.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use iommufd::MapFlags;
use vm_memory::iommu::{Error as IommuError, Iommu, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, Permissions};

use super::{Fault, FaultReason};
use crate::iova_map::Extent;

/// Where an emulated endpoint's DMA goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointMode {
    /// Nowhere: the endpoint is in no domain (every access fails).
    Blocked,
    /// To the guest-physical address it names (a bypass domain).
    Bypass,
    /// Through the mappings of the domain it is attached to.
    Mapped,
}

impl EndpointMode {
    fn from_u8(v: u8) -> EndpointMode {
        match v {
            1 => EndpointMode::Bypass,
            2 => EndpointMode::Mapped,
            _ => EndpointMode::Blocked,
        }
    }
}

struct Inner {
    /// Every mapping of the endpoint's domain (never a partial cache): what is
    /// not here is not mapped.
    iotlb: RwLock<Iotlb>,
    mode: AtomicU8,
}

/// An emulated device (a virtio device model of the VMM) behind the virtio-iommu,
/// as endpoint `id` of a [`Backend`](super::Backend): the guest attaches it to
/// domains like a passthrough device, and its accesses are translated through
/// the domain's mappings.
///
/// It implements vm-memory's [`Iommu`], so a device model reads and writes guest
/// memory by I/O virtual address through an
/// [`IommuMemory`](vm_memory::IommuMemory) over guest RAM; or it asks
/// [`Iommu::translate`] for the guest-physical ranges itself. Clones share one
/// view, which the back end updates before it answers each request: once an
/// UNMAP or DETACH is answered, no access through a clone reaches the memory.
///
/// Dirty pages: with the IOMMU on, `IommuMemory` marks a device model's writes
/// in its own bitmap, by IOVA, not in the guest memory regions' bitmaps. A VMM
/// that migrates either writes through guest memory at the GPAs
/// [`Iommu::translate`] gives, or marks the GPAs of that bitmap's pages itself.
///
/// The view holds all of the domain's mappings (it is not a cache that misses);
/// a lookup that fails names an address the guest did not map, or mapped
/// without the access asked for. The last byte of the 64-bit space is never
/// mapped here (vm-memory's ranges end before 2^64).
///
/// ```
/// use iommufd::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
/// use iommufd::vm_memory::IommuMemory;
/// use iommufd_viommu::virtio::{EmulatedEndpoint, EndpointMode};
///
/// let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)])?;
/// let ep = EmulatedEndpoint::new(3);
/// assert_eq!(ep.mode(), EndpointMode::Blocked);
/// // The device model's memory: addresses are IOVAs of endpoint 3.
/// let dma = IommuMemory::new(ram.clone(), ep.clone(), true, ());
/// // Nothing is reachable until the guest attaches the endpoint and maps.
/// assert!(dma.write_obj(0xdead_beefu32, GuestAddress(0x1000)).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct EmulatedEndpoint {
    id: u32,
    inner: Arc<Inner>,
}

impl fmt::Debug for EmulatedEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmulatedEndpoint")
            .field("id", &self.id)
            .field("mode", &self.mode())
            .finish()
    }
}

/// vm-memory's permissions for `perms`.
fn permissions(perms: MapFlags) -> Permissions {
    match (
        perms.contains(MapFlags::READ),
        perms.contains(MapFlags::WRITE),
    ) {
        (true, true) => Permissions::ReadWrite,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (false, false) => Permissions::No,
    }
}

/// `iova..iova + len` clipped below 2^64, as a vm-memory length (`None` if
/// nothing is left).
fn clip(iova: u64, len: u64) -> Option<usize> {
    let len = len.min(u64::MAX - iova);
    usize::try_from(len).ok().filter(|l| *l > 0)
}

impl EmulatedEndpoint {
    /// Endpoint `id`, blocked (in no domain). Give it to the back end with
    /// [`Backend::add_emulated_endpoint`](super::Backend::add_emulated_endpoint),
    /// which keeps its view from then on.
    pub fn new(id: u32) -> Self {
        EmulatedEndpoint {
            id,
            inner: Arc::new(Inner {
                iotlb: RwLock::new(Iotlb::new()),
                mode: AtomicU8::new(0),
            }),
        }
    }

    /// The endpoint id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Where its DMA goes now.
    pub fn mode(&self) -> EndpointMode {
        EndpointMode::from_u8(self.inner.mode.load(Ordering::Acquire))
    }

    /// Whether `other` is a clone of this endpoint (shares its view).
    pub fn same(&self, other: &EmulatedEndpoint) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Iotlb> {
        // A panic while the lock was held cannot leave the IOTLB half-updated
        // in a way that matters: every update below starts from a clean state
        // or touches one range.
        self.inner
            .iotlb
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_mode(&self, mode: EndpointMode) {
        self.inner.mode.store(mode as u8, Ordering::Release);
    }

    /// No access reaches memory.
    pub(crate) fn block(&self) {
        let mut tlb = self.write();
        tlb.invalidate_all();
        self.set_mode(EndpointMode::Blocked);
    }

    /// IOVA = GPA, every access.
    pub(crate) fn bypass(&self) {
        let mut tlb = self.write();
        tlb.invalidate_all();
        if let Some(len) = clip(0, u64::MAX) {
            let _ = tlb.set_mapping(
                GuestAddress(0),
                GuestAddress(0),
                len,
                Permissions::ReadWrite,
            );
        }
        self.set_mode(EndpointMode::Bypass);
    }

    /// The domain's mappings, and nothing else.
    pub(crate) fn load(&self, extents: &[Extent]) {
        let mut tlb = self.write();
        tlb.invalidate_all();
        for e in extents {
            Self::insert(&mut tlb, e);
        }
        self.set_mode(EndpointMode::Mapped);
    }

    fn insert(tlb: &mut Iotlb, e: &Extent) {
        if let Some(len) = clip(e.iova, e.len) {
            let _ = tlb.set_mapping(
                GuestAddress(e.iova),
                GuestAddress(e.gpa),
                len,
                permissions(e.perms),
            );
        }
    }

    /// A mapping the guest added to the domain.
    pub(crate) fn map(&self, e: &Extent) {
        Self::insert(&mut self.write(), e);
    }

    /// A range the guest unmapped from the domain.
    pub(crate) fn unmap(&self, iova: u64, len: u64) {
        if let Some(len) = clip(iova, len) {
            self.write().invalidate_mapping(GuestAddress(iova), len);
        }
    }
}

impl EmulatedEndpoint {
    /// The report for the event queue if a `len`-byte `access` at `iova`
    /// cannot be made (`None` if it can): [`FaultReason::Domain`] while the
    /// endpoint is in no domain, else [`FaultReason::Mapping`] (not mapped, or
    /// not for this access).
    ///
    /// ```
    /// use iommufd::vm_memory::{GuestAddress, Permissions};
    /// use iommufd_viommu::virtio::{EmulatedEndpoint, FaultReason};
    /// let ep = EmulatedEndpoint::new(3);
    /// let f = ep.fault(0x1000, 4, Permissions::Write).expect("blocked");
    /// assert_eq!((f.reason, f.endpoint, f.address, f.write), (FaultReason::Domain, 3, Some(0x1000), true));
    /// ```
    pub fn fault(&self, iova: u64, len: usize, access: Permissions) -> Option<Fault> {
        if Iommu::translate(self, GuestAddress(iova), len, access).is_ok() {
            return None;
        }
        let reason = match self.mode() {
            EndpointMode::Blocked => FaultReason::Domain,
            EndpointMode::Bypass | EndpointMode::Mapped => FaultReason::Mapping,
        };
        Some(Fault {
            reason,
            endpoint: self.id,
            address: Some(iova),
            read: matches!(access, Permissions::Read | Permissions::ReadWrite),
            write: matches!(access, Permissions::Write | Permissions::ReadWrite),
            exec: false,
        })
    }
}

impl Iommu for EmulatedEndpoint {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        let range = IovaRange { base: iova, length };
        let fits = u64::try_from(length)
            .ok()
            .and_then(|l| iova.0.checked_add(l))
            .is_some();
        if !fits || length == 0 {
            return Err(IommuError::CannotResolve {
                iova_range: range,
                reason: "an empty range, or one past 2^64".into(),
            });
        }
        let tlb = self
            .inner
            .iotlb
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        Iotlb::lookup(tlb, iova, length, access).map_err(|fails| {
            let reason = match (fails.misses.first(), fails.access_fails.first()) {
                (Some(m), _) => format!(
                    "endpoint {}: IOVA {:#x} (+{:#x}) is not mapped",
                    self.id, m.base.0, m.length
                ),
                (None, Some(a)) => format!(
                    "endpoint {}: IOVA {:#x} (+{:#x}) is mapped without {access:?} access",
                    self.id, a.base.0, a.length
                ),
                (None, None) => format!("endpoint {}: not translated", self.id),
            };
            IommuError::CannotResolve {
                iova_range: range,
                reason,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpas(
        ep: &EmulatedEndpoint,
        iova: u64,
        len: usize,
        access: Permissions,
    ) -> Option<Vec<(u64, usize)>> {
        Iommu::translate(ep, GuestAddress(iova), len, access)
            .ok()
            .map(|it| it.map(|r| (r.base.0, r.length)).collect())
    }

    fn ext(iova: u64, gpa: u64, len: u64, perms: MapFlags) -> Extent {
        Extent::new(iova, gpa, len, perms).unwrap()
    }

    #[test]
    fn the_view_follows_the_domain() {
        let ep = EmulatedEndpoint::new(7);
        assert_eq!(gpas(&ep, 0x1000, 8, Permissions::Read), None, "blocked");
        ep.load(&[
            ext(0x10000, 0x8000, 0x2000, MapFlags::RW),
            ext(0x12000, 0x40000, 0x1000, MapFlags::READ),
        ]);
        assert_eq!(ep.mode(), EndpointMode::Mapped);
        // Across two mappings: two pieces.
        assert_eq!(
            gpas(&ep, 0x11ff0, 0x20, Permissions::Read),
            Some(vec![(0x9ff0, 0x10), (0x40000, 0x10)])
        );
        assert_eq!(gpas(&ep, 0x12000, 4, Permissions::Write), None, "read-only");
        assert_eq!(gpas(&ep, 0x13000, 4, Permissions::Read), None, "unmapped");
        // An unmap of the middle of the first mapping keeps its ends.
        ep.unmap(0x10800, 0x1000);
        assert_eq!(
            gpas(&ep, 0x10000, 0x800, Permissions::Write),
            Some(vec![(0x8000, 0x800)])
        );
        assert_eq!(gpas(&ep, 0x10800, 1, Permissions::Read), None);
        assert_eq!(
            gpas(&ep, 0x11800, 1, Permissions::Read),
            Some(vec![(0x9800, 1)])
        );
        ep.map(&ext(0x10000, 0x70000, 0x1000, MapFlags::WRITE));
        assert_eq!(
            gpas(&ep, 0x10010, 4, Permissions::Write),
            Some(vec![(0x70010, 4)])
        );
        let clone = ep.clone();
        assert!(clone.same(&ep) && !EmulatedEndpoint::new(7).same(&ep));
        assert_eq!(ep.fault(0x10010, 4, Permissions::Write), None);
        let f = ep.fault(0x10010, 4, Permissions::Read).expect("write-only");
        assert_eq!(
            (f.reason, f.read, f.write),
            (FaultReason::Mapping, true, false)
        );
        let f = ep
            .fault(0x20000, 4, Permissions::ReadWrite)
            .expect("unmapped");
        assert_eq!(
            (f.reason, f.address, f.read, f.write),
            (FaultReason::Mapping, Some(0x20000), true, true)
        );
        ep.block();
        assert_eq!(
            ep.fault(0x10010, 4, Permissions::Write).map(|f| f.reason),
            Some(FaultReason::Domain)
        );
        assert_eq!(
            gpas(&clone, 0x11800, 1, Permissions::Read),
            None,
            "clones share the view"
        );
        assert_eq!(clone.mode(), EndpointMode::Blocked);
    }

    #[test]
    fn bypass_and_the_edges_of_the_space() {
        let ep = EmulatedEndpoint::new(1);
        ep.bypass();
        assert_eq!(ep.mode(), EndpointMode::Bypass);
        assert_eq!(
            gpas(&ep, 0x1234, 8, Permissions::ReadWrite),
            Some(vec![(0x1234, 8)])
        );
        assert_eq!(
            gpas(&ep, u64::MAX - 8, 8, Permissions::Read),
            Some(vec![(u64::MAX - 8, 8)])
        );
        assert_eq!(
            gpas(&ep, u64::MAX - 8, 9, Permissions::Read),
            None,
            "the last byte"
        );
        assert_eq!(gpas(&ep, u64::MAX, 2, Permissions::Read), None, "past 2^64");
        assert_eq!(gpas(&ep, 0x1000, 0, Permissions::Read), None, "empty");
        // A mapping at the top of the space: all but the last byte.
        ep.load(&[ext(u64::MAX - 0xfff, 0x5000, 0x1000, MapFlags::RW)]);
        assert_eq!(
            gpas(&ep, u64::MAX - 0xfff, 0xfff, Permissions::Read),
            Some(vec![(0x5000, 0xfff)])
        );
        ep.unmap(u64::MAX - 0xfff, 0x1000);
        assert_eq!(gpas(&ep, u64::MAX - 0xfff, 1, Permissions::Read), None);
    }
}
