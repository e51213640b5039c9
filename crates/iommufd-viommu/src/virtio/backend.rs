//! The request side of a virtio-iommu device model: decoded requests turned into
//! shadow-domain operations and answered.

use std::collections::BTreeMap;
use std::fmt;

use iommufd::vm_memory::bitmap::Bitmap;
use iommufd::vm_memory::{GuestMemoryBackend, GuestRegionMmap};
use iommufd::{Device, HwptFlags, Ioas, Iommufd, MapFlags as Perms, PageTable};

use super::{EmulatedEndpoint, Request, ResvMem, Status, probe_properties};
use crate::dirty::DirtySink;
use crate::iova_map::Extent;
use crate::shadow::{ReplayReport, ShadowDomain, ShadowError};

/// A guest domain: shadowed mappings (passthrough devices attached in the
/// kernel, emulated ones given the mappings), or bypass (devices' DMA goes to
/// the page table the backend was given for that).
enum Domain<B: Bitmap + DirtySink + Send + Sync + 'static> {
    Mapped {
        shadow: ShadowDomain<B>,
        emulated: Vec<EmulatedEndpoint>,
    },
    Bypass(Vec<u32>),
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> Domain<B> {
    fn is_empty(&self) -> bool {
        match self {
            Domain::Mapped { shadow, emulated } => {
                shadow.endpoints().is_empty() && emulated.is_empty()
            }
            Domain::Bypass(eps) => eps.is_empty(),
        }
    }
}

/// What an endpoint is.
#[derive(Clone)]
enum Kind {
    /// A passthrough device.
    Device(Device),
    /// A device model of the VMM.
    Emulated(EmulatedEndpoint),
}

struct Endpoint {
    kind: Kind,
    resv: Vec<ResvMem>,
    domain: Option<u32>,
}

/// The back end of a virtio-iommu device: endpoints (the passthrough devices
/// and the emulated devices the VMM put behind it, by endpoint id), and the
/// guest's domains, each a [`ShadowDomain`] in an IOAS of its own.
///
/// [`Backend::request`] takes one request as the guest queued it (the
/// device-readable bytes, and the device-writable buffer for the answer), carries
/// it out and writes the answer. Everything in it is guest input:
/// malformed requests, unknown domains or endpoints, ranges outside guest RAM get
/// the status the specification asks for and change nothing.
///
/// Semantics a VMM should know:
///
/// - ATTACH creates the domain if needed and moves the endpoint from the domain it
///   was in; a domain whose last endpoint leaves is destroyed with its mappings
///   (as the Linux driver expects).
/// - A detached endpoint's DMA is blocked, unless endpoints in no domain bypass
///   ([`Backend::set_unattached_bypass`], the config's `bypass` field).
/// - Bypass domains (`VIRTIO_IOMMU_ATTACH_F_BYPASS`) attach their endpoints to the
///   page table given to [`Backend::with_bypass`] (the VMM's IOAS of guest RAM at
///   IOVA = GPA); without one they are `UNSUPP` for passthrough devices.
///   Emulated endpoints in a bypass domain reach guest RAM at IOVA = GPA.
/// - Emulated endpoints ([`Backend::add_emulated_endpoint`]) see the mappings of
///   their domain through their [`EmulatedEndpoint`], updated before each
///   request is answered. A domain with only emulated endpoints still keeps its
///   mappings in its IOAS, so a passthrough device can join it at any time.
/// - An UNMAP that cuts a mapping unmaps the part asked for and keeps the rest
///   (more lenient than the specification's `RANGE`, which it allows).
/// - MMIO mappings are not supported (the device does not offer
///   `VIRTIO_IOMMU_F_MMIO`).
///
/// ```no_run
/// use iommufd::vm_memory::{GuestAddress, GuestMemoryMmap};
/// use iommufd::{HwptFlags, Iommufd};
/// use iommufd_viommu::virtio::{Backend, ResvMem};
/// # fn f(dev: &iommufd::Device, ram: &GuestMemoryMmap) -> Result<(), Box<dyn std::error::Error>> {
/// let mut viommu = Backend::new(&Iommufd::open()?, HwptFlags::empty());
/// viommu.add_endpoint(8, dev, vec![ResvMem { msi: true, start: 0xfee0_0000, end: 0xfeef_ffff }])?;
/// // For each request the guest puts in the request queue:
/// # let (readable, mut writable) = (vec![0u8; 36], vec![0u8; 4]);
/// let used = viommu.request(ram, &readable, &mut writable);
/// // ... return the descriptor chain with `used` bytes written ...
/// # Ok(()) }
/// ```
pub struct Backend<B: Bitmap + DirtySink + Send + Sync + 'static = ()> {
    fd: Iommufd,
    flags: HwptFlags,
    bypass: Option<PageTable>,
    domains: BTreeMap<u32, Domain<B>>,
    endpoints: BTreeMap<u32, Endpoint>,
    /// Dirty tracking is on (new domains get it too).
    tracking: bool,
    /// Endpoints in no domain bypass (else their DMA is blocked).
    unattached_bypass: bool,
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> Drop for Backend<B> {
    fn drop(&mut self) {
        // Device models may keep their views: with the vIOMMU gone, they reach
        // nothing, as passthrough devices reach nothing once the domains'
        // mappings are unmapped with them.
        for ep in self.endpoints.values() {
            if let Kind::Emulated(e) = &ep.kind {
                e.block();
            }
        }
    }
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> fmt::Debug for Backend<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backend")
            .field("domains", &self.domains.keys().collect::<Vec<_>>())
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> Backend<B> {
    /// A device with no endpoints. Domains get an IOAS of `fd` each, and their
    /// devices HWPTs allocated with `flags` (e.g. [`HwptFlags::DIRTY_TRACKING`]).
    pub fn new(fd: &Iommufd, flags: HwptFlags) -> Self {
        Backend {
            fd: fd.clone(),
            flags,
            bypass: None,
            domains: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            tracking: false,
            unattached_bypass: false,
        }
    }

    /// Lets the guest create bypass domains: their endpoints are attached to `pt`.
    pub fn with_bypass(mut self, pt: impl Into<PageTable>) -> Self {
        self.bypass = Some(pt.into());
        self
    }

    /// Puts a device behind the vIOMMU as endpoint `id`, with the reserved regions
    /// a PROBE reports for it. It stays attached where it is until the guest
    /// attaches it (if endpoints in no domain bypass, it is attached to the
    /// bypass page table now).
    pub fn add_endpoint(
        &mut self,
        id: u32,
        dev: &Device,
        resv: Vec<ResvMem>,
    ) -> Result<(), ShadowError> {
        self.add(id, Kind::Device(dev.clone()), resv)
    }

    /// Puts an emulated device (a device model of the VMM) behind the vIOMMU as
    /// endpoint `id`, with the reserved regions a PROBE reports for it; returns
    /// its view of the I/O address space, blocked until the guest attaches it.
    ///
    /// ```no_run
    /// use iommufd::vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, IommuMemory};
    /// use iommufd::{HwptFlags, Iommufd};
    /// use iommufd_viommu::virtio::Backend;
    /// # fn f(ram: &GuestMemoryMmap) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut viommu = Backend::<()>::new(&Iommufd::open()?, HwptFlags::empty());
    /// let net = viommu.add_emulated_endpoint(16, vec![])?;
    /// // The virtio-net model reads its rings and buffers by IOVA through it.
    /// let dma = IommuMemory::new(ram.clone(), net, true, ());
    /// // ... after the guest attached endpoint 16 and mapped its ring at 0x10000 ...
    /// let avail_idx: u16 = dma.read_obj(GuestAddress(0x10002))?;
    /// # Ok(()) }
    /// ```
    pub fn add_emulated_endpoint(
        &mut self,
        id: u32,
        resv: Vec<ResvMem>,
    ) -> Result<EmulatedEndpoint, ShadowError> {
        let ep = EmulatedEndpoint::new(id);
        self.add(id, Kind::Emulated(ep.clone()), resv)?;
        Ok(ep)
    }

    fn add(&mut self, id: u32, kind: Kind, resv: Vec<ResvMem>) -> Result<(), ShadowError> {
        if self.endpoints.contains_key(&id) {
            return Err(ShadowError::EndpointExists { endpoint: id });
        }
        if self.unattached_bypass {
            self.park(&kind)?;
        }
        self.endpoints.insert(
            id,
            Endpoint {
                kind,
                resv,
                domain: None,
            },
        );
        Ok(())
    }

    /// Takes passthrough endpoint `id` away (device unplug): it leaves its domain
    /// (its DMA is blocked) and the handle is returned. An emulated endpoint is
    /// [`ShadowError::UnknownEndpoint`] here and stays (see
    /// [`Backend::remove_emulated_endpoint`]).
    pub fn remove_endpoint(&mut self, id: u32) -> Result<Device, ShadowError> {
        match self.endpoints.get(&id).map(|e| &e.kind) {
            Some(Kind::Device(_)) => {}
            _ => return Err(ShadowError::UnknownEndpoint { endpoint: id }),
        }
        self.leave(id, false)?;
        match self.endpoints.remove(&id).map(|e| e.kind) {
            Some(Kind::Device(dev)) => Ok(dev),
            _ => Err(ShadowError::UnknownEndpoint { endpoint: id }),
        }
    }

    /// Takes emulated endpoint `id` away (device unplug): it leaves its domain,
    /// and every clone of its view is blocked. A passthrough endpoint is
    /// [`ShadowError::UnknownEndpoint`] here and stays.
    pub fn remove_emulated_endpoint(&mut self, id: u32) -> Result<EmulatedEndpoint, ShadowError> {
        match self.endpoints.get(&id).map(|e| &e.kind) {
            Some(Kind::Emulated(_)) => {}
            _ => return Err(ShadowError::UnknownEndpoint { endpoint: id }),
        }
        self.leave(id, false)?;
        match self.endpoints.remove(&id).map(|e| e.kind) {
            Some(Kind::Emulated(ep)) => Ok(ep),
            _ => Err(ShadowError::UnknownEndpoint { endpoint: id }),
        }
    }

    /// The domain endpoint `id` is attached to.
    pub fn domain_of(&self, endpoint: u32) -> Option<u32> {
        self.endpoints.get(&endpoint)?.domain
    }

    /// Guest domain `id`, unless it is a bypass domain or does not exist.
    pub fn domain(&self, id: u32) -> Option<&ShadowDomain<B>> {
        match self.domains.get(&id)? {
            Domain::Mapped { shadow, .. } => Some(shadow),
            Domain::Bypass(_) => None,
        }
    }

    /// The ids of the guest's domains.
    pub fn domain_ids(&self) -> Vec<u32> {
        self.domains.keys().copied().collect()
    }

    /// Where endpoint `id`'s DMA to `iova` goes (a GPA): `None` if unmapped or
    /// the endpoint is not in a mapped domain (bypass domains translate nothing:
    /// IOVA = GPA). Device models use their [`EmulatedEndpoint`] instead.
    pub fn translate(&self, endpoint: u32, iova: u64) -> Option<(u64, Perms)> {
        self.domain(self.domain_of(endpoint)?)?.translate(iova)
    }

    /// Carries out one request and writes the answer into `writable` (the
    /// request's device-writable buffer: the properties of a PROBE, then the
    /// 4-byte tail); returns the number of bytes written (0 if `writable` cannot
    /// hold a tail).
    pub fn request<M>(&mut self, guest: &M, readable: &[u8], writable: &mut [u8]) -> usize
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        let Some(body) = writable.len().checked_sub(4) else {
            log::warn!("iommufd-viommu: a virtio-iommu request without room for its answer");
            return 0;
        };
        let (props, tail) = writable.split_at_mut(body);
        let status = match Request::decode(readable) {
            Err(e) => {
                log::debug!("iommufd-viommu: {e}");
                e.status
            }
            Ok(req) => match self.execute(guest, &req, props) {
                Ok(()) => Status::Ok,
                Err(e) => {
                    log::debug!("iommufd-viommu: {req:?}: {e}");
                    e.status()
                }
            },
        };
        tail.copy_from_slice(&status.tail());
        if matches!(readable.first(), Some(5)) {
            writable.len()
        } else {
            4
        }
    }

    /// Carries out a decoded request; `probe` is where a PROBE's properties go.
    pub fn execute<M>(
        &mut self,
        guest: &M,
        req: &Request,
        probe: &mut [u8],
    ) -> Result<(), ShadowError>
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        match *req {
            Request::Attach {
                domain,
                endpoint,
                bypass,
            } => self.attach(domain, endpoint, bypass),
            Request::Detach { domain, endpoint } => {
                let ep = self
                    .endpoints
                    .get(&endpoint)
                    .ok_or(ShadowError::UnknownEndpoint { endpoint })?;
                if !self.domains.contains_key(&domain) {
                    return Err(ShadowError::UnknownDomain { domain });
                }
                if ep.domain != Some(domain) {
                    return Err(ShadowError::NotAttached { endpoint, domain });
                }
                self.leave(endpoint, true)
            }
            Request::Map {
                domain,
                virt_start,
                virt_end,
                phys_start,
                flags,
            } => {
                if flags.mmio {
                    return Err(ShadowError::Unsupported {
                        what: "MMIO mappings",
                    });
                }
                let (d, emulated) = self.mapped(domain)?;
                let len = (virt_end - virt_start)
                    .checked_add(1)
                    .ok_or(ShadowError::NotRam {
                        gpa: phys_start,
                        len: u64::MAX,
                    })?;
                let mut perms = Perms::empty();
                perms.set(Perms::READ, flags.read);
                perms.set(Perms::WRITE, flags.write);
                d.map(guest, virt_start, phys_start, len, perms)?;
                let extent = Extent::new(virt_start, phys_start, len, perms)?;
                emulated.iter().for_each(|ep| ep.map(&extent));
                Ok(())
            }
            Request::Unmap {
                domain,
                virt_start,
                virt_end,
            } => {
                let (d, emulated) = self.mapped(domain)?;
                let len = (virt_end - virt_start).checked_add(1);
                let done = match len {
                    Some(len) => d.unmap(virt_start, len).map(drop),
                    // All of the 64-bit space.
                    None => d.clear().map(drop),
                };
                match (&done, len) {
                    (Ok(()), Some(len)) => emulated.iter().for_each(|ep| ep.unmap(virt_start, len)),
                    // Whatever the domain holds now (all of it went, or the
                    // kernel kept some).
                    _ => {
                        let now = d.mappings();
                        emulated.iter().for_each(|ep| ep.load(&now));
                    }
                }
                done
            }
            Request::Probe { endpoint } => {
                let ep = self
                    .endpoints
                    .get(&endpoint)
                    .ok_or(ShadowError::UnknownEndpoint { endpoint })?;
                probe_properties(&ep.resv, probe).map_err(|_| ShadowError::Unsupported {
                    what: "a probe buffer too small for the reserved regions",
                })
            }
        }
    }

    /// A mapped domain, and its emulated endpoints.
    fn mapped(
        &mut self,
        domain: u32,
    ) -> Result<(&mut ShadowDomain<B>, &[EmulatedEndpoint]), ShadowError> {
        match self.domains.get_mut(&domain) {
            Some(Domain::Mapped { shadow, emulated }) => Ok((shadow, emulated)),
            Some(Domain::Bypass(_)) => Err(ShadowError::Bypass { domain }),
            None => Err(ShadowError::UnknownDomain { domain }),
        }
    }

    fn attach(&mut self, domain: u32, endpoint: u32, bypass: bool) -> Result<(), ShadowError> {
        let kind = self
            .endpoints
            .get(&endpoint)
            .ok_or(ShadowError::UnknownEndpoint { endpoint })?
            .kind
            .clone();
        let no_bypass = ShadowError::Unsupported {
            what: "bypass domains",
        };
        match self.domains.get(&domain) {
            Some(Domain::Mapped { .. }) if bypass => return Err(ShadowError::Bypass { domain }),
            Some(Domain::Bypass(_)) if !bypass => return Err(ShadowError::Bypass { domain }),
            Some(Domain::Bypass(_)) | None
                if bypass && self.bypass.is_none() && matches!(kind, Kind::Device(_)) =>
            {
                return Err(no_bypass);
            }
            _ => {}
        }
        if self.domain_of(endpoint) == Some(domain) {
            return Ok(());
        }
        if !self.domains.contains_key(&domain) {
            let d = if bypass {
                Domain::Bypass(Vec::new())
            } else {
                let d = ShadowDomain::new(Ioas::alloc(&self.fd)?, self.flags);
                if self.tracking {
                    // No HWPT yet: this only makes the first one track.
                    d.shared().set_dirty_tracking(true)?;
                }
                Domain::Mapped {
                    shadow: d,
                    emulated: Vec::new(),
                }
            };
            self.domains.insert(domain, d);
        }
        // Attaching replaces the device's page table (or an emulated device's
        // view), so DMA moves from the old domain to the new one without a
        // blocked window.
        let attached = match (self.domains.get_mut(&domain), &kind) {
            (Some(Domain::Mapped { shadow, .. }), Kind::Device(dev)) => {
                shadow.attach(dev).map(drop).map_err(ShadowError::from)
            }
            (Some(Domain::Mapped { shadow, emulated }), Kind::Emulated(ep)) => {
                ep.load(&shadow.mappings());
                emulated.push(ep.clone());
                Ok(())
            }
            (Some(Domain::Bypass(eps)), Kind::Device(dev)) => match &self.bypass {
                Some(pt) => dev
                    .attach(pt.clone())
                    .map(|_| eps.push(endpoint))
                    .map_err(ShadowError::from),
                None => Err(no_bypass),
            },
            (Some(Domain::Bypass(eps)), Kind::Emulated(ep)) => {
                ep.bypass();
                eps.push(endpoint);
                Ok(())
            }
            (None, _) => Ok(()),
        };
        if let Err(e) = attached {
            self.drop_if_empty(domain);
            return Err(e);
        }
        if let Some(old) = self.domain_of(endpoint) {
            self.forget(endpoint, old);
        }
        if let Some(ep) = self.endpoints.get_mut(&endpoint) {
            ep.domain = Some(domain);
        }
        Ok(())
    }

    /// Takes endpoint `id` out of its domain: to where endpoints in no domain
    /// go (`park`), or blocked (an unplug).
    fn leave(&mut self, id: u32, park: bool) -> Result<(), ShadowError> {
        let Some(ep) = self.endpoints.get(&id) else {
            return Err(ShadowError::UnknownEndpoint { endpoint: id });
        };
        let (kind, domain) = (ep.kind.clone(), ep.domain);
        match (domain, park) {
            // In no domain, and staying where endpoints in no domain are.
            (None, true) => return Ok(()),
            (None, false) if !self.unattached_bypass => return Ok(()),
            (_, true) => self.park(&kind)?,
            (_, false) => Self::block(&kind)?,
        }
        if let Some(domain) = domain {
            self.forget(id, domain);
        }
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.domain = None;
        }
        Ok(())
    }

    /// Sends an endpoint in no domain where such endpoints go: the bypass page
    /// table, or nowhere.
    fn park(&self, kind: &Kind) -> Result<(), ShadowError> {
        if !self.unattached_bypass {
            return Self::block(kind);
        }
        match kind {
            Kind::Device(dev) => match &self.bypass {
                Some(pt) => dev.attach(pt.clone()).map(drop).map_err(ShadowError::from),
                None => Err(ShadowError::Unsupported {
                    what: "bypass for passthrough devices without a page table",
                }),
            },
            Kind::Emulated(ep) => {
                ep.bypass();
                Ok(())
            }
        }
    }

    /// Blocks an endpoint's DMA.
    fn block(kind: &Kind) -> Result<(), ShadowError> {
        match kind {
            Kind::Device(dev) if dev.attached_to().is_some() => dev.detach()?,
            Kind::Device(_) => {}
            Kind::Emulated(ep) => ep.block(),
        }
        Ok(())
    }

    /// Whether endpoints in no domain bypass the vIOMMU (see
    /// [`Backend::set_unattached_bypass`]).
    pub fn unattached_bypass(&self) -> bool {
        self.unattached_bypass
    }

    /// Sets what endpoints in no domain do: bypass the vIOMMU (passthrough
    /// devices attached to the page table given to [`Backend::with_bypass`],
    /// emulated ones reaching guest RAM at IOVA = GPA) or have their DMA blocked
    /// (the default), and moves the endpoints in no domain now. This is the
    /// `bypass` field of the device configuration
    /// (`VIRTIO_IOMMU_F_BYPASS_CONFIG`): a VMM turns it on at reset so firmware
    /// and a guest without the driver can do DMA (as QEMU's `boot-bypass`), and
    /// sets it as the driver writes it. Endpoints added or detached later follow
    /// it too.
    ///
    /// Turning it on without a bypass page table while passthrough endpoints
    /// exist is [`ShadowError::Unsupported`], and changes nothing; so is adding
    /// a passthrough endpoint later. If the kernel refuses to move an
    /// endpoint, the error is returned and the endpoints after it are not moved.
    pub fn set_unattached_bypass(&mut self, on: bool) -> Result<(), ShadowError> {
        let devices = self
            .endpoints
            .values()
            .any(|e| matches!(e.kind, Kind::Device(_)));
        if on && devices && self.bypass.is_none() {
            return Err(ShadowError::Unsupported {
                what: "bypass for passthrough devices without a page table",
            });
        }
        self.unattached_bypass = on;
        let idle: Vec<Kind> = self
            .endpoints
            .values()
            .filter(|e| e.domain.is_none())
            .map(|e| e.kind.clone())
            .collect();
        for kind in &idle {
            self.park(kind)?;
        }
        Ok(())
    }

    /// Removes endpoint `id` from the books of `domain` (the device is attached
    /// elsewhere, or detached, already), dropping the domain if it is left empty.
    fn forget(&mut self, id: u32, domain: u32) {
        let kind = self.endpoints.get(&id).map(|e| e.kind.clone());
        match (self.domains.get_mut(&domain), kind) {
            (Some(Domain::Mapped { shadow, .. }), Some(Kind::Device(dev))) => shadow.forget(&dev),
            (Some(Domain::Mapped { emulated, .. }), Some(Kind::Emulated(ep))) => {
                emulated.retain(|e| !e.same(&ep));
            }
            (Some(Domain::Bypass(eps)), _) => eps.retain(|e| *e != id),
            _ => {}
        }
        self.drop_if_empty(domain);
    }

    fn drop_if_empty(&mut self, domain: u32) {
        if self.domains.get(&domain).is_some_and(Domain::is_empty) {
            // Its mappings go with it (one unmap), then its IOAS.
            self.domains.remove(&domain);
        }
    }

    /// Replays every domain after guest memory changed (see
    /// [`ShadowDomain::replay`]); the reports added up.
    pub fn replay<M>(&mut self, guest: &M) -> Result<ReplayReport, ShadowError>
    where
        M: GuestMemoryBackend<R = GuestRegionMmap<B>> + ?Sized,
    {
        let mut total = ReplayReport::default();
        for d in self.domains.values_mut() {
            if let Domain::Mapped { shadow: d, .. } = d {
                let r = d.replay(guest)?;
                total.unmapped += r.unmapped;
                total.mapped += r.mapped;
                total.unbacked += r.unbacked;
            }
        }
        Ok(total)
    }
}

impl<B: Bitmap + DirtySink + Send + Sync + 'static> Backend<B> {
    /// Starts (or stops) tracking the pages devices write in every mapped
    /// domain, and in domains the guest makes later (see
    /// [`ShadowDomain::set_dirty_tracking`]).
    pub fn set_dirty_tracking(&mut self, on: bool) -> Result<(), ShadowError> {
        for d in self.domains.values() {
            if let Domain::Mapped { shadow: d, .. } = d {
                d.set_dirty_tracking(on)?;
            }
        }
        self.tracking = on;
        Ok(())
    }

    /// Harvests the pages devices wrote in every mapped domain into the guest
    /// memory regions' dirty bitmaps, at their GPAs (see
    /// [`ShadowDomain::harvest_dirty`]); bypass domains' devices are on the
    /// VMM's own IOAS, harvested with it. Returns the number of dirty bits read.
    pub fn harvest_dirty(&self, flags: iommufd::DirtyReadFlags) -> Result<u64, ShadowError> {
        let mut n = 0;
        for d in self.domains.values() {
            if let Domain::Mapped { shadow: d, .. } = d {
                n += d.harvest_dirty(flags)?;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    //! The back end's bookkeeping of emulated endpoints, bypass domains and the
    //! config's bypass: none of it issues an ioctl, so it runs on the host over
    //! `/dev/null` (which answers every ioctl `ENOTTY`). Everything that reaches
    //! the kernel is tested in the guest lab (`tests/shadow.rs`).

    use std::fs::File;

    use iommufd::vm_memory::{GuestAddress, GuestMemoryMmap};

    use super::*;
    use crate::virtio::EndpointMode;

    fn null() -> Iommufd {
        let file = File::open("/dev/null").expect("/dev/null");
        // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory.
        unsafe { Iommufd::from_owned_fd_unchecked(file.into()) }
    }

    fn attach(domain: u32, endpoint: u32, bypass: bool) -> Vec<u8> {
        let mut b = vec![1, 0, 0, 0];
        b.extend(domain.to_le_bytes());
        b.extend(endpoint.to_le_bytes());
        b.extend(u32::from(bypass).to_le_bytes());
        b.extend([0; 4]);
        b
    }

    fn detach(domain: u32, endpoint: u32) -> Vec<u8> {
        let mut b = attach(domain, endpoint, false);
        b[0] = 2;
        b
    }

    fn map(domain: u32) -> Vec<u8> {
        let mut b = vec![3, 0, 0, 0];
        b.extend(domain.to_le_bytes());
        b.extend(0x1000u64.to_le_bytes());
        b.extend(0x1fffu64.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b
    }

    fn send(v: &mut Backend, ram: &GuestMemoryMmap, req: &[u8]) -> Status {
        let mut tail = [0xffu8; 4];
        assert_eq!(v.request(ram, req, &mut tail), 4);
        [
            Status::Ok,
            Status::IoErr,
            Status::Unsupp,
            Status::DevErr,
            Status::Inval,
            Status::Range,
            Status::NoEnt,
            Status::Fault,
            Status::NoMem,
        ]
        .into_iter()
        .find(|s| *s as u8 == tail[0])
        .expect("a status")
    }

    #[test]
    #[cfg_attr(miri, ignore = "ioctls on /dev/null, which Miri does not run")]
    fn emulated_endpoints_in_bypass_domains_and_in_none() {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let mut v = Backend::new(&null(), HwptFlags::empty());
        let msi = ResvMem {
            msi: true,
            start: 0x800_0000,
            end: 0x80f_ffff,
        };
        let ep = v.add_emulated_endpoint(5, vec![msi]).unwrap();
        assert!(matches!(
            v.add_emulated_endpoint(5, vec![]),
            Err(ShadowError::EndpointExists { endpoint: 5 })
        ));
        assert_eq!(ep.mode(), EndpointMode::Blocked);

        // A bypass domain needs no page table for a device model.
        assert_eq!(send(&mut v, &ram, &attach(8, 5, true)), Status::Ok);
        assert_eq!((ep.mode(), v.domain_of(5)), (EndpointMode::Bypass, Some(8)));
        assert!(v.domain(8).is_none(), "not a mapped domain");
        assert_eq!(send(&mut v, &ram, &map(8)), Status::Inval, "MAP on bypass");
        assert_eq!(send(&mut v, &ram, &attach(8, 5, false)), Status::Inval);
        assert_eq!(send(&mut v, &ram, &detach(8, 5)), Status::Ok);
        assert_eq!((ep.mode(), v.domain_of(5)), (EndpointMode::Blocked, None));
        assert!(v.domain_ids().is_empty(), "gone with its endpoint");

        // The config's bypass: endpoints in no domain, now and later.
        v.set_unattached_bypass(true).unwrap();
        assert!(v.unattached_bypass());
        assert_eq!(ep.mode(), EndpointMode::Bypass);
        let six = v.add_emulated_endpoint(6, vec![]).unwrap();
        assert_eq!(six.mode(), EndpointMode::Bypass, "added while bypass is on");
        assert_eq!(send(&mut v, &ram, &attach(9, 6, true)), Status::Ok);
        assert_eq!(send(&mut v, &ram, &detach(9, 6)), Status::Ok);
        assert_eq!(
            six.mode(),
            EndpointMode::Bypass,
            "DETACH leaves it bypassing"
        );
        // Unplug blocks it, through the right call only.
        assert!(matches!(
            v.remove_endpoint(6),
            Err(ShadowError::UnknownEndpoint { endpoint: 6 })
        ));
        assert_eq!(six.mode(), EndpointMode::Bypass, "unchanged");
        assert!(v.remove_emulated_endpoint(6).unwrap().same(&six));
        assert_eq!(six.mode(), EndpointMode::Blocked);
        assert!(v.remove_emulated_endpoint(6).is_err());

        // A mapped domain needs an IOAS, which /dev/null cannot give: refused,
        // and nothing changes.
        assert_eq!(send(&mut v, &ram, &attach(7, 5, false)), Status::DevErr);
        assert!(v.domain_ids().is_empty());
        assert_eq!((ep.mode(), v.domain_of(5)), (EndpointMode::Bypass, None));

        // PROBE names the endpoint's reserved region.
        let mut probe = vec![5, 0, 0, 0];
        probe.extend(5u32.to_le_bytes());
        probe.extend([0u8; 64]);
        let mut answer = vec![0xffu8; 24 + 4];
        assert_eq!(v.request(&ram, &probe, &mut answer), 28);
        assert_eq!((answer[24], answer[4]), (Status::Ok as u8, 1), "MSI");

        v.set_unattached_bypass(false).unwrap();
        assert_eq!(ep.mode(), EndpointMode::Blocked);
        // A view kept after the back end is gone reaches nothing.
        assert_eq!(send(&mut v, &ram, &attach(8, 5, true)), Status::Ok);
        assert_eq!(ep.mode(), EndpointMode::Bypass);
        drop(v);
        assert_eq!(ep.mode(), EndpointMode::Blocked);
    }
}
