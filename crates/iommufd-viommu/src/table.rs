//! Per-device vPASID <-> pPASID tables.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use iommufd::{Device, FaultGroup, PageTable};

use crate::radix::Radix;
use crate::{HostPasidPool, PasidError, Result};

/// How a table chooses the host PASID (pPASID) behind a guest PASID (vPASID).
#[derive(Clone, Debug)]
pub enum PasidPolicy {
    /// pPASID = vPASID, in the device's own PASID space: the usual case for a
    /// device assigned to one VM.
    Identity,
    /// pPASIDs from a host pool shared by several devices or VMs (as shared work
    /// queues need), at most `quota` of them held by this table (this VM).
    Allocated {
        /// The pool.
        pool: HostPasidPool,
        /// How many pPASIDs this table may hold at once.
        quota: u32,
    },
}

/// Whether PASID 0 may be mapped. VT-d uses PASID 0 for requests without a PASID
/// (RID_PASID) and the kernel refuses to attach it, so it is reserved by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasidZero {
    /// PASID 0 is refused ([`PasidError::Reserved`]).
    Reserved,
    /// PASID 0 is a PASID like the others (bookkeeping-only tables of vendors
    /// without that convention).
    Usable,
}

/// Forward entries: valid bit, the HWPT's raw id, the pPASID.
const VALID: u64 = 1 << 63;
const HWPT_SHIFT: u32 = 20;
const PASID_MASK: u64 = (1 << 20) - 1;
/// Reverse entries (pooled host PASIDs, one array per table, since a pooled host
/// PASID belongs to one device): valid bit, the device's slot, the vPASID.
const RVALID: u32 = 1 << 31;
const SLOT_SHIFT: u32 = 20;
/// Devices per table with pooled host PASIDs (11 bits of slot).
const MAX_SLOTS: u32 = 1 << 11;

fn pack(ppasid: u32, hwpt: u32) -> u64 {
    VALID | (u64::from(hwpt) << HWPT_SHIFT) | u64::from(ppasid)
}

struct DeviceTable {
    label: u64,
    width: u32,
    /// The device's slot in the table's reverse array.
    slot: u32,
    device: Option<Device>,
    fwd: Radix<AtomicU64>,
    /// Host -> guest: `None` under the identity policy (the forward array answers:
    /// pPASID = vPASID), else the table's array, shared by its devices.
    rev: Option<Arc<Radix<AtomicU32>>>,
    count: AtomicU32,
}

/// One device's PASIDs in a [`PasidTable`]: a cheap handle whose lookups are two
/// atomic loads, lock-free, for the fault and invalidation paths.
///
/// ```
/// use iommufd_viommu::{PasidPolicy, PasidTable};
/// let table = PasidTable::new(PasidPolicy::Identity);
/// let dev = table.add_label(0x28, 20)?; // a device with 20-bit PASIDs
/// table.insert(0x28, 5, 7)?; // vPASID 5 on HWPT 7
/// assert_eq!(dev.host_pasid(5), Some(5));
/// assert_eq!(dev.guest_pasid(5), Some(5));
/// assert_eq!(dev.hwpt(5), Some(7));
/// # Ok::<(), iommufd_viommu::PasidError>(())
/// ```
#[derive(Clone)]
pub struct DevicePasids {
    inner: Arc<DeviceTable>,
}

impl DevicePasids {
    /// The device's label.
    pub fn label(&self) -> u64 {
        self.inner.label
    }

    /// Its PASID width: PASIDs are below `2^width`.
    pub fn width(&self) -> u32 {
        self.inner.width
    }

    /// How many vPASIDs are mapped.
    pub fn len(&self) -> usize {
        self.inner.count.load(Ordering::Acquire) as usize
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host PASID behind guest PASID `vpasid`.
    #[inline]
    pub fn host_pasid(&self, vpasid: u32) -> Option<u32> {
        let e = self.inner.fwd.get(vpasid);
        (e & VALID != 0).then_some((e & PASID_MASK) as u32)
    }

    /// The raw id of the HWPT attached at guest PASID `vpasid`.
    #[inline]
    pub fn hwpt(&self, vpasid: u32) -> Option<u32> {
        let e = self.inner.fwd.get(vpasid);
        (e & VALID != 0).then_some((e >> HWPT_SHIFT) as u32)
    }

    /// The guest PASID behind host PASID `ppasid`.
    #[inline]
    pub fn guest_pasid(&self, ppasid: u32) -> Option<u32> {
        match &self.inner.rev {
            None => (self.host_pasid(ppasid) == Some(ppasid)).then_some(ppasid),
            Some(rev) => {
                let e = rev.get(ppasid);
                (e & RVALID != 0 && (e & !RVALID) >> SLOT_SHIFT == self.inner.slot)
                    .then_some(e & PASID_MASK as u32)
            }
        }
    }

    /// The bytes the device's forward table uses (the reverse table of pooled
    /// host PASIDs is the table's: [`PasidTable::bytes`]).
    pub fn bytes(&self) -> usize {
        self.inner.fwd.bytes()
    }

    /// The iommufd device, for a table that attaches ([`PasidTable::add_device`]).
    pub fn device(&self) -> Option<&Device> {
        self.inner.device.as_ref()
    }
}

impl fmt::Debug for DevicePasids {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePasids")
            .field("label", &self.label())
            .field("width", &self.width())
            .field("mapped", &self.len())
            .finish()
    }
}

struct Inner {
    policy: PasidPolicy,
    zero: PasidZero,
    devices: RwLock<BTreeMap<u64, DevicePasids>>,
    /// Serializes updates: the radix arrays take one writer at a time.
    update: Mutex<()>,
    /// pPASIDs held (the quota's count).
    held: AtomicU32,
    /// Host -> (slot, guest) for pooled host PASIDs.
    rev: Option<Arc<Radix<AtomicU32>>>,
    /// The slots in use, one bit each (changed under `update`).
    slots: Mutex<Vec<u64>>,
}

/// The vPASID <-> pPASID table of one vIOMMU: for each device (by its label), guest
/// PASIDs to host PASIDs and the HWPT attached there, and back, a bijection per
/// device.
///
/// Updates ([`PasidTable::attach`], [`PasidTable::detach`], and the
/// bookkeeping-only [`PasidTable::insert`] / [`PasidTable::remove`]) are serialized;
/// lookups through a [`DevicePasids`] handle take no lock, so fault and
/// invalidation threads read while the vIOMMU model updates. A shared handle:
/// clones are the same table.
///
/// ```
/// use iommufd_viommu::{HostPasidPool, PasidError, PasidPolicy, PasidTable};
/// let pool = HostPasidPool::new(1..1 << 20)?;
/// let vm = PasidTable::new(PasidPolicy::Allocated { pool: pool.clone(), quota: 2 });
/// vm.add_label(1, 20)?;
/// let p = vm.insert(1, 100, 9)?; // guest PASID 100 gets a host PASID from the pool
/// assert_eq!(vm.device(1).unwrap().guest_pasid(p), Some(100));
/// vm.insert(1, 101, 9)?;
/// assert!(matches!(vm.insert(1, 102, 9), Err(PasidError::QuotaExceeded { .. })));
/// assert_eq!(pool.in_use(), 2);
/// vm.remove_device(1)?;
/// assert_eq!(pool.in_use(), 0);
/// # Ok::<(), PasidError>(())
/// ```
#[derive(Clone)]
pub struct PasidTable {
    inner: Arc<Inner>,
}

impl fmt::Debug for PasidTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasidTable")
            .field("policy", &self.inner.policy)
            .field("zero", &self.inner.zero)
            .field("devices", &self.read().len())
            .field("held", &self.held())
            .finish()
    }
}

/// A fault as the guest must see it: the host's page request group with the
/// guest PASID instead of the host's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFault {
    /// The device's label.
    pub label: u64,
    /// The guest PASID (`None`: the request carried no PASID).
    pub vpasid: Option<u32>,
    /// The group as the kernel reported it (its `pasid` is the host's).
    pub group: FaultGroup,
}

impl PasidTable {
    /// An empty table; PASID 0 is reserved.
    pub fn new(policy: PasidPolicy) -> Self {
        Self::with_pasid_zero(policy, PasidZero::Reserved)
    }

    /// An empty table, saying whether PASID 0 may be mapped.
    pub fn with_pasid_zero(policy: PasidPolicy, zero: PasidZero) -> Self {
        let rev = match policy {
            PasidPolicy::Identity => None,
            PasidPolicy::Allocated { .. } => Some(Arc::new(Radix::new(20))),
        };
        PasidTable {
            inner: Arc::new(Inner {
                policy,
                zero,
                devices: RwLock::default(),
                update: Mutex::default(),
                held: AtomicU32::new(0),
                rev,
                slots: Mutex::new(vec![0; (MAX_SLOTS / 64) as usize]),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, DevicePasids>> {
        // Writers insert or remove one entry: a poisoned map is consistent.
        self.inner.devices.read().unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.inner.update.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The policy.
    pub fn policy(&self) -> &PasidPolicy {
        &self.inner.policy
    }

    /// The bytes the table uses: every device's forward array and the reverse
    /// array of pooled host PASIDs.
    pub fn bytes(&self) -> usize {
        let fwd: usize = self.read().values().map(DevicePasids::bytes).sum();
        fwd + self.inner.rev.as_ref().map_or(0, |r| r.bytes())
    }

    /// How many host PASIDs the table holds (what counts against the quota).
    pub fn held(&self) -> u32 {
        self.inner.held.load(Ordering::Acquire)
    }

    /// Adds `dev`, whose PASID width comes from its hardware information
    /// (`max_pasid_log2`): [`PasidError::NoPasid`] for a device without PASIDs.
    /// Attaches through the table then go to this device. The table holds a handle
    /// of the device (so it stays bound) until [`PasidTable::remove_device`].
    pub fn add_device(&self, dev: &Device) -> Result<DevicePasids> {
        let info = dev.hw_info()?;
        if info.max_pasid_log2 == 0 {
            return Err(PasidError::NoPasid { label: dev.label() });
        }
        self.add(dev.label(), info.max_pasid_log2.into(), Some(dev.clone()))
    }

    /// Adds a device by label only, with PASIDs below `2^width` (1 to 20): for a
    /// VMM that attaches PASIDs itself and keeps the table as bookkeeping
    /// ([`PasidTable::insert`]).
    pub fn add_label(&self, label: u64, width: u32) -> Result<DevicePasids> {
        if width == 0 || width > 20 {
            return Err(PasidError::NoPasid { label });
        }
        self.add(label, width, None)
    }

    fn add(&self, label: u64, width: u32, device: Option<Device>) -> Result<DevicePasids> {
        let width = width.min(20);
        let _u = self.lock();
        let mut devices = self
            .inner
            .devices
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if devices.contains_key(&label) {
            return Err(PasidError::DeviceExists { label });
        }
        let mut slots = self.inner.slots.lock().unwrap_or_else(|p| p.into_inner());
        let (w, word) = slots
            .iter()
            .enumerate()
            .find(|(_, w)| **w != u64::MAX)
            .ok_or(PasidError::TooManyDevices { max: MAX_SLOTS })?;
        let bit = word.trailing_ones();
        slots[w] |= 1 << bit;
        let slot = w as u32 * 64 + bit;
        drop(slots);
        let d = DevicePasids {
            inner: Arc::new(DeviceTable {
                label,
                width,
                slot,
                device,
                fwd: Radix::new(width),
                rev: self.inner.rev.clone(),
                count: AtomicU32::new(0),
            }),
        };
        devices.insert(label, d.clone());
        Ok(d)
    }

    /// The device with `label`, for lock-free lookups.
    pub fn device(&self, label: u64) -> Option<DevicePasids> {
        self.read().get(&label).cloned()
    }

    /// The labels of the devices, in order.
    pub fn labels(&self) -> Vec<u64> {
        self.read().keys().copied().collect()
    }

    fn check(&self, d: &DevicePasids, vpasid: u32) -> Result<()> {
        if vpasid >= 1 << d.width() {
            return Err(PasidError::OutOfRange {
                label: d.label(),
                pasid: vpasid,
                width: d.width(),
            });
        }
        if vpasid == 0 && self.inner.zero == PasidZero::Reserved {
            return Err(PasidError::Reserved { pasid: 0 });
        }
        Ok(())
    }

    fn get(&self, label: u64) -> Result<DevicePasids> {
        self.device(label)
            .ok_or(PasidError::UnknownDevice { label })
    }

    /// Picks the host PASID for a new mapping of `vpasid` on `d`.
    fn take_host(&self, d: &DevicePasids, vpasid: u32) -> Result<u32> {
        match &self.inner.policy {
            PasidPolicy::Identity => {
                if d.guest_pasid(vpasid).is_some() {
                    // Cannot happen with identity mappings only; kept a bijection.
                    return Err(PasidError::HostInUse {
                        label: d.label(),
                        ppasid: vpasid,
                    });
                }
                Ok(vpasid)
            }
            PasidPolicy::Allocated { pool, quota } => {
                if self.held() >= *quota {
                    return Err(PasidError::QuotaExceeded { quota: *quota });
                }
                let below = d.inner.fwd.capacity();
                let p = pool.alloc(below).ok_or(PasidError::PoolExhausted {
                    label: d.label(),
                    below,
                })?;
                Ok(p)
            }
        }
    }

    fn give_back(&self, ppasid: u32) {
        if let PasidPolicy::Allocated { pool, .. } = &self.inner.policy {
            pool.free(ppasid);
        }
    }

    /// Maps `vpasid` of device `label` and runs `kernel(ppasid)` (the attach),
    /// publishing the entry only if it succeeds; a new pPASID is given back if it
    /// fails. Returns the pPASID.
    fn map_with(
        &self,
        label: u64,
        vpasid: u32,
        kernel: impl FnOnce(&DevicePasids, u32) -> Result<u32>,
    ) -> Result<u32> {
        // The device is looked up under the update lock: a concurrent
        // `remove_device` cannot leave it holding host PASIDs.
        let _u = self.lock();
        let d = self.get(label)?;
        self.check(&d, vpasid)?;
        if let Some(p) = d.host_pasid(vpasid) {
            // A replace: the same pPASID, a new HWPT.
            let hwpt = kernel(&d, p)?;
            d.inner.fwd.set(vpasid, pack(p, hwpt));
            return Ok(p);
        }
        let p = self.take_host(&d, vpasid)?;
        match kernel(&d, p) {
            Ok(hwpt) => {
                if let Some(rev) = &d.inner.rev {
                    rev.set(p, RVALID | (d.inner.slot << SLOT_SHIFT) | vpasid);
                }
                d.inner.fwd.set(vpasid, pack(p, hwpt));
                d.inner.count.fetch_add(1, Ordering::AcqRel);
                if matches!(self.inner.policy, PasidPolicy::Allocated { .. }) {
                    self.inner.held.fetch_add(1, Ordering::AcqRel);
                }
                Ok(p)
            }
            Err(e) => {
                self.give_back(p);
                Err(e)
            }
        }
    }

    /// Unmaps `vpasid` of `d` after `kernel(ppasid)` (the detach) succeeded.
    fn unmap_with(
        &self,
        d: &DevicePasids,
        vpasid: u32,
        kernel: impl FnOnce(u32) -> Result<()>,
    ) -> Result<u32> {
        let p = d.host_pasid(vpasid).ok_or(PasidError::NotMapped {
            label: d.label(),
            vpasid,
        })?;
        kernel(p)?;
        d.inner.fwd.set(vpasid, 0);
        if let Some(rev) = &d.inner.rev {
            rev.set(p, 0);
        }
        d.inner.count.fetch_sub(1, Ordering::AcqRel);
        if matches!(self.inner.policy, PasidPolicy::Allocated { .. }) {
            self.inner.held.fetch_sub(1, Ordering::AcqRel);
        }
        self.give_back(p);
        Ok(p)
    }

    /// Records that guest PASID `vpasid` of device `label` is attached to the HWPT
    /// with raw id `hwpt`, without asking the kernel; returns its host PASID (a new
    /// one, or the one it had). For VMMs that attach PASIDs themselves.
    pub fn insert(&self, label: u64, vpasid: u32, hwpt: u32) -> Result<u32> {
        self.map_with(label, vpasid, |_, _| Ok(hwpt))
    }

    /// Forgets guest PASID `vpasid` of device `label` without asking the kernel,
    /// returning its host PASID (given back to the pool).
    pub fn remove(&self, label: u64, vpasid: u32) -> Result<u32> {
        let _u = self.lock();
        let d = self.get(label)?;
        self.unmap_with(&d, vpasid, |_| Ok(()))
    }

    /// Attaches guest PASID `vpasid` of device `label` to `pt` (a nested or paging
    /// HWPT, or an IOAS) at its host PASID, through the device given to
    /// [`PasidTable::add_device`]; a mapped vPASID is replaced (same pPASID), as
    /// when a guest rewrites a present PASID entry. If
    /// the kernel refuses, the table is unchanged and a new pPASID goes back to the
    /// pool. Returns the pPASID.
    ///
    /// ```no_run
    /// # fn f(table: &iommufd_viommu::PasidTable, nested: &iommufd::NestedHwpt) -> iommufd_viommu::Result<()> {
    /// // The guest programmed PASID 3 of device 0x28 with its stage-1 table.
    /// let ppasid = table.attach(0x28, 3, nested)?;
    /// # Ok(()) }
    /// ```
    pub fn attach(&self, label: u64, vpasid: u32, pt: impl Into<PageTable>) -> Result<u32> {
        let pt = pt.into();
        self.map_with(label, vpasid, |d, p| {
            let dev = d.device().ok_or(PasidError::NoDevice { label })?;
            Ok(dev.attach_pasid(p, pt)?.raw())
        })
    }

    /// Detaches guest PASID `vpasid` of device `label` (its host PASID) and
    /// forgets it. If the kernel refuses, the mapping stays.
    pub fn detach(&self, label: u64, vpasid: u32) -> Result<()> {
        let _u = self.lock();
        let d = self.get(label)?;
        let dev = d.device().cloned().ok_or(PasidError::NoDevice { label })?;
        self.unmap_with(&d, vpasid, |p| Ok(dev.detach_pasid(p)?))
            .map(drop)
    }

    /// Removes device `label`: detaches each of its PASIDs (when the table
    /// attaches), gives their host PASIDs back and forgets the device. Returns how
    /// many PASIDs it had. A detach the kernel refuses is logged; the device's
    /// PASIDs are freed with it anyway when the device goes.
    pub fn remove_device(&self, label: u64) -> Result<usize> {
        let _u = self.lock();
        let d = self.get(label)?;
        let mut n = 0;
        for v in d.inner.fwd.occupied() {
            let r = self.unmap_with(&d, v, |p| match d.device() {
                Some(dev) => dev.detach_pasid(p).or_else(|e| {
                    log::warn!("iommufd-viommu: detaching PASID {p} of device {label:#x}: {e}");
                    Ok(())
                }),
                None => Ok(()),
            });
            if r.is_ok() {
                n += 1;
            }
        }
        self.inner
            .devices
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&label);
        let slot = d.inner.slot;
        self.inner.slots.lock().unwrap_or_else(|p| p.into_inner())[(slot / 64) as usize] &=
            !(1 << (slot % 64));
        Ok(n)
    }

    /// The fault as the guest sees it: its device's label and the guest PASID
    /// behind the host PASID it carries. A fault of an unknown device or at a
    /// host PASID no guest PASID maps to is an error (answer it `Invalid`).
    pub fn translate_fault(&self, group: &FaultGroup) -> Result<GuestFault> {
        let label = group.label.ok_or(PasidError::UnknownFaultDevice)?;
        let d = self.get(label)?;
        let vpasid = match group.pasid {
            None => None,
            Some(p) => Some(
                d.guest_pasid(p)
                    .ok_or(PasidError::NotMappedHost { label, ppasid: p })?,
            ),
        };
        Ok(GuestFault {
            label,
            vpasid,
            group: group.clone(),
        })
    }

    /// Translates a batch of guest invalidation entries of device `label` that
    /// carry a guest PASID: `pasid_of` reads an entry's PASID (`None`: the entry
    /// has none and passes unchanged), `with_pasid` rewrites it with the host's.
    /// An entry naming an unmapped or out-of-range PASID fails the batch with
    /// [`PasidError::Entry`], naming its index; nothing is sent then.
    ///
    /// ```
    /// use iommufd_viommu::{PasidPolicy, PasidTable};
    /// let table = PasidTable::new(PasidPolicy::Identity);
    /// table.add_label(1, 20)?;
    /// table.insert(1, 7, 3)?;
    /// // Entries as (pasid, address) pairs, say.
    /// let out = table.translate_batch(1, &[(7, 0x1000), (7, 0x2000)], |e| Some(e.0), |e, p| (p, e.1))?;
    /// assert_eq!(out, [(7, 0x1000), (7, 0x2000)]);
    /// assert!(table.translate_batch(1, &[(8, 0)], |e| Some(e.0), |e, p| (p, e.1)).is_err());
    /// # Ok::<(), iommufd_viommu::PasidError>(())
    /// ```
    pub fn translate_batch<E: Copy>(
        &self,
        label: u64,
        entries: &[E],
        pasid_of: impl Fn(&E) -> Option<u32>,
        with_pasid: impl Fn(E, u32) -> E,
    ) -> Result<Vec<E>> {
        let d = self.get(label)?;
        entries
            .iter()
            .enumerate()
            .map(|(index, e)| match pasid_of(e) {
                None => Ok(*e),
                Some(v) => {
                    d.host_pasid(v)
                        .map(|p| with_pasid(*e, p))
                        .ok_or_else(|| PasidError::Entry {
                            index,
                            source: Box::new(PasidError::NotMapped { label, vpasid: v }),
                        })
                }
            })
            .collect()
    }

    /// Groups guest invalidations of device `label` by the HWPT attached at their
    /// guest PASID (as a VT-d vIOMMU must: a PASID-granular descriptor invalidates
    /// the nested HWPT of that PASID). Returns (HWPT raw id, entries) in the order
    /// HWPTs first appear; an unmapped PASID fails the batch naming its index.
    pub fn route<E: Copy>(&self, label: u64, entries: &[(u32, E)]) -> Result<Vec<(u32, Vec<E>)>> {
        let d = self.get(label)?;
        let mut out: Vec<(u32, Vec<E>)> = Vec::new();
        for (index, (v, e)) in entries.iter().enumerate() {
            let hwpt = d.hwpt(*v).ok_or_else(|| PasidError::Entry {
                index,
                source: Box::new(PasidError::NotMapped { label, vpasid: *v }),
            })?;
            match out.iter_mut().find(|(h, _)| *h == hwpt) {
                Some((_, list)) => list.push(*e),
                None => out.push((hwpt, vec![*e])),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A deterministic generator for the random operation sequences.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Checks the table against the model: every mapping both ways, nothing else.
    fn check(
        table: &PasidTable,
        model: &HashMap<u64, HashMap<u32, (u32, u32)>>,
        widths: &HashMap<u64, u32>,
    ) {
        assert_eq!(table.labels(), {
            let mut l: Vec<u64> = model.keys().copied().collect();
            l.sort();
            l
        });
        for (label, map) in model {
            let d = table.device(*label).expect("device");
            assert_eq!(d.len(), map.len());
            for v in 0..(1u32 << widths[label]) {
                match map.get(&v) {
                    Some((p, h)) => {
                        assert_eq!(d.host_pasid(v), Some(*p));
                        assert_eq!(d.hwpt(v), Some(*h));
                        assert_eq!(d.guest_pasid(*p), Some(v), "bijection");
                    }
                    None => assert_eq!(d.host_pasid(v), None),
                }
            }
            // No host PASID maps back to an unmapped guest PASID.
            let hosts: HashMap<u32, u32> = map.iter().map(|(v, (p, _))| (*p, *v)).collect();
            assert_eq!(hosts.len(), map.len(), "host PASIDs unique per device");
            for p in 0..(1u32 << widths[label]) {
                assert_eq!(d.guest_pasid(p), hosts.get(&p).copied());
            }
        }
    }

    fn run(policy: PasidPolicy, seed: u64, steps: usize) {
        let quota = match &policy {
            PasidPolicy::Allocated { quota, .. } => Some(*quota),
            PasidPolicy::Identity => None,
        };
        let pool = match &policy {
            PasidPolicy::Allocated { pool, .. } => Some(pool.clone()),
            PasidPolicy::Identity => None,
        };
        let table = PasidTable::new(policy);
        let mut model: HashMap<u64, HashMap<u32, (u32, u32)>> = HashMap::new();
        let mut widths = HashMap::new();
        let mut r = Rng(seed);
        for step in 0..steps {
            let label = r.below(4);
            match r.below(10) {
                0 => {
                    let width = 1 + r.below(6) as u32;
                    let res = table.add_label(label, width);
                    if let std::collections::hash_map::Entry::Vacant(e) = model.entry(label) {
                        res.expect("add");
                        e.insert(HashMap::new());
                        widths.insert(label, width);
                    } else {
                        assert!(matches!(res, Err(PasidError::DeviceExists { .. })));
                    }
                }
                1 => {
                    let res = table.remove_device(label);
                    match model.remove(&label) {
                        Some(m) => assert_eq!(res.expect("remove device"), m.len()),
                        None => assert!(matches!(res, Err(PasidError::UnknownDevice { .. }))),
                    }
                    widths.remove(&label);
                }
                2..=6 => {
                    let v = r.below(70) as u32;
                    let hwpt = 1 + r.below(3) as u32;
                    let res = table.insert(label, v, hwpt);
                    if !model.contains_key(&label) {
                        assert!(
                            matches!(res, Err(PasidError::UnknownDevice { .. })),
                            "{res:?}"
                        );
                        continue;
                    }
                    let width = widths[&label];
                    let held: usize = model_held(&model);
                    let m = model.get_mut(&label).expect("device");
                    match res {
                        Ok(p) => {
                            assert!(v < 1 << width && v != 0, "step {step}: accepted {v}");
                            assert!(p < 1 << width, "host PASID inside the device's space");
                            if quota.is_none() {
                                assert_eq!(p, v, "identity");
                            }
                            if let Some((old, _)) = m.get(&v) {
                                assert_eq!(*old, p, "a replace keeps the host PASID");
                            }
                            m.insert(v, (p, hwpt));
                        }
                        Err(PasidError::OutOfRange { .. }) => assert!(v >= 1 << width),
                        Err(PasidError::Reserved { .. }) => assert_eq!(v, 0),
                        Err(PasidError::QuotaExceeded { quota: q }) => {
                            assert_eq!(held, q as usize);
                            assert!(!m.contains_key(&v));
                        }
                        Err(PasidError::PoolExhausted { .. }) => {
                            assert!(!m.contains_key(&v));
                        }
                        Err(e) => panic!("step {step}: {e}"),
                    }
                }
                _ => {
                    let v = r.below(70) as u32;
                    let res = table.remove(label, v);
                    match model.get_mut(&label) {
                        None => assert!(matches!(res, Err(PasidError::UnknownDevice { .. }))),
                        Some(m) => match m.remove(&v) {
                            Some((p, _)) => assert_eq!(res.expect("remove"), p),
                            None => assert!(matches!(res, Err(PasidError::NotMapped { .. }))),
                        },
                    }
                }
            }
            let held = model_held(&model);
            if quota.is_some() {
                assert_eq!(table.held() as usize, held, "step {step}: quota count");
                assert_eq!(
                    pool.as_ref().map(|p| p.in_use() as usize),
                    Some(held),
                    "pool count"
                );
            }
            if step % 50 == 0 {
                check(&table, &model, &widths);
            }
        }
        check(&table, &model, &widths);
    }

    fn model_held(model: &HashMap<u64, HashMap<u32, (u32, u32)>>) -> usize {
        model.values().map(HashMap::len).sum()
    }

    #[test]
    fn identity_tables_match_a_model() {
        let (seeds, steps) = if cfg!(miri) { (2, 120) } else { (40, 400) };
        for seed in 1..seeds {
            run(PasidPolicy::Identity, seed, steps);
        }
    }

    #[test]
    fn allocated_tables_match_a_model() {
        let (seeds, steps) = if cfg!(miri) { (2, 120) } else { (40, 400) };
        for seed in 1..seeds {
            // A small pool (exhaustion) and a quota below it (the quota).
            let pool = HostPasidPool::new(1..40).expect("pool");
            run(PasidPolicy::Allocated { pool, quota: 30 }, seed, steps);
        }
    }

    #[test]
    fn two_vms_share_a_pool_without_sharing_host_pasids() {
        let pool = HostPasidPool::new(1..1 << 20).expect("pool");
        let a = PasidTable::new(PasidPolicy::Allocated {
            pool: pool.clone(),
            quota: 100,
        });
        let b = PasidTable::new(PasidPolicy::Allocated {
            pool: pool.clone(),
            quota: 100,
        });
        a.add_label(1, 20).unwrap();
        b.add_label(1, 20).unwrap();
        let pa: Vec<u32> = (1..=50).map(|v| a.insert(1, v, 1).unwrap()).collect();
        let pb: Vec<u32> = (1..=50).map(|v| b.insert(1, v, 1).unwrap()).collect();
        assert!(
            pa.iter().all(|p| !pb.contains(p)),
            "one host PASID, one owner"
        );
        assert_eq!(pool.in_use(), 100);
        assert_eq!(a.remove_device(1).unwrap(), 50);
        assert_eq!(pool.in_use(), 50);
        assert!(format!("{b:?}").contains("held: 50"));
    }

    #[test]
    #[cfg_attr(miri, ignore = "2^20 entries: too slow under Miri")]
    fn all_two_to_the_twenty_pasids_of_one_device() {
        let table = PasidTable::new(PasidPolicy::Identity);
        let d = table.add_label(7, 20).unwrap();
        for v in 1..1 << 20 {
            table.insert(7, v, 3).unwrap();
        }
        assert_eq!(d.len(), (1 << 20) - 1);
        assert_eq!(
            (d.host_pasid(0xfffff), d.guest_pasid(0xfffff)),
            (Some(0xfffff), Some(0xfffff))
        );
        assert!(matches!(
            table.insert(7, 1 << 20, 3),
            Err(PasidError::OutOfRange { .. })
        ));
        let per_entry = table.bytes() as f64 / f64::from((1u32 << 20) - 1);
        assert!(
            per_entry <= 8.1,
            "{per_entry} bytes per PASID (identity: forward only)"
        );
        assert_eq!(table.remove_device(7).unwrap(), (1 << 20) - 1);
        assert!(table.device(7).is_none());
    }

    #[test]
    #[cfg_attr(miri, ignore = "2048 devices: slow under Miri")]
    fn a_pooled_table_holds_2048_devices() {
        let pool = HostPasidPool::new(1..1 << 20).unwrap();
        let table = PasidTable::new(PasidPolicy::Allocated { pool, quota: 10 });
        for label in 0..2048 {
            table.add_label(label, 4).unwrap();
        }
        assert!(matches!(
            table.add_label(2048, 4),
            Err(PasidError::TooManyDevices { max: 2048 })
        ));
        // A freed slot is reused; host PASIDs of two devices never alias.
        assert_eq!(table.remove_device(5).unwrap(), 0);
        table.add_label(9999, 4).unwrap();
        let a = table.insert(9999, 1, 1).unwrap();
        let b = table.insert(0, 1, 1).unwrap();
        assert_ne!(a, b);
        assert_eq!(table.device(9999).unwrap().guest_pasid(b), None);
        assert_eq!(table.device(0).unwrap().guest_pasid(b), Some(1));
        assert!(matches!(
            table.add_label(1, 21),
            Err(PasidError::NoPasid { .. })
        ));
        assert!(format!("{:?}", table.device(0).unwrap()).contains("mapped: 1"));
    }

    #[test]
    fn faults_and_batches_are_translated() {
        let pool = HostPasidPool::new(100..200).unwrap();
        let table = PasidTable::new(PasidPolicy::Allocated { pool, quota: 10 });
        table.add_label(0x28, 20).unwrap();
        let p = table.insert(0x28, 5, 9).unwrap();
        assert_eq!(p, 100);
        let fd = {
            let f = std::fs::File::open("/dev/null").unwrap();
            // SAFETY: /dev/null answers every ioctl with ENOTTY and touches no memory.
            unsafe { iommufd::Iommufd::from_owned_fd_unchecked(f.into()) }
        };
        let rec = iommufd::FaultRecord {
            dev_id: 1,
            pasid: Some(p),
            grpid: 0,
            perm: iommufd::FaultPerm::READ,
            addr: 0x1000,
            length: 0,
            cookie: 3,
            last_page: true,
        };
        let mut group = iommufd::FaultGroup::from_records(&fd, &[rec])
            .unwrap()
            .remove(0);
        // No label: the device is not bound on this (fake) file.
        assert!(matches!(
            table.translate_fault(&group),
            Err(PasidError::UnknownFaultDevice)
        ));
        group.label = Some(0x28);
        let g = table.translate_fault(&group).unwrap();
        assert_eq!((g.label, g.vpasid), (0x28, Some(5)));
        group.pasid = None;
        assert_eq!(table.translate_fault(&group).unwrap().vpasid, None);
        group.pasid = Some(101);
        assert!(matches!(
            table.translate_fault(&group),
            Err(PasidError::NotMappedHost { ppasid: 101, .. })
        ));
        group.label = Some(0x29);
        assert!(matches!(
            table.translate_fault(&group),
            Err(PasidError::UnknownDevice { .. })
        ));
        // Batches.
        let out = table
            .translate_batch(
                0x28,
                &[(5u32, 'a'), (0, 'b')],
                |e| (e.0 != 0).then_some(e.0),
                |e, p| (p, e.1),
            )
            .unwrap();
        assert_eq!(out, [(100, 'a'), (0, 'b')]);
        match table.translate_batch(
            0x28,
            &[(5u32, 'a'), (6, 'b')],
            |e| Some(e.0),
            |e, p| (p, e.1),
        ) {
            Err(PasidError::Entry { index: 1, .. }) => {}
            other => panic!("{other:?}"),
        }
        table.insert(0x28, 6, 4).unwrap();
        let routed = table.route(0x28, &[(5, 'a'), (6, 'b'), (5, 'c')]).unwrap();
        assert_eq!(routed, [(9, vec!['a', 'c']), (4, vec!['b'])]);
        assert!(table.route(0x28, &[(7, 'x')]).is_err());
        assert!(table.route(0x30, &[(5, 'x')]).is_err());
        // No device to attach through.
        assert!(matches!(
            table.detach(0x28, 5),
            Err(PasidError::NoDevice { .. })
        ));
        assert_eq!(table.device(0x28).unwrap().device().map(|d| d.id()), None);
    }

    #[test]
    fn readers_see_whole_entries_while_a_writer_updates() {
        let bits = if cfg!(miri) { 6 } else { 16 };
        let table = PasidTable::new(PasidPolicy::Identity);
        let d = table.add_label(1, bits).unwrap();
        let reader = std::thread::spawn(move || {
            for _ in 0..20 {
                for v in 1..1u32 << bits {
                    if let Some(p) = d.host_pasid(v) {
                        assert_eq!(p, v);
                        assert!(matches!(d.hwpt(v), Some(1) | Some(2) | None));
                    }
                }
            }
        });
        for round in 0..4u32 {
            for v in 1..1u32 << bits {
                table.insert(1, v, 1 + round % 2).unwrap();
            }
            for v in (1..1u32 << bits).step_by(3) {
                table.remove(1, v).unwrap();
            }
        }
        reader.join().unwrap();
    }
}
