//! virtio-iommu requests (virtio 1.2, section 5.13), decoded from what the guest
//! put in the request queue, and the answers written back.
//!
//! Everything here comes from the guest: lengths, types, reserved fields, ranges.
//! The decoder checks each and maps every problem to the status the specification
//! asks the device to return, so a device model can answer any input without
//! trusting it.

use std::fmt;

mod backend;
mod emulated;

pub use backend::Backend;
pub use emulated::{EmulatedEndpoint, EndpointMode};

/// `VIRTIO_IOMMU_T_*`: the request types.
const T_ATTACH: u8 = 1;
const T_DETACH: u8 = 2;
const T_MAP: u8 = 3;
const T_UNMAP: u8 = 4;
const T_PROBE: u8 = 5;

/// The device-readable sizes of each request (everything before the tail).
const ATTACH_LEN: usize = 20;
const DETACH_LEN: usize = 20;
const MAP_LEN: usize = 36;
const UNMAP_LEN: usize = 28;
const PROBE_LEN: usize = 72;

/// The status a request is answered with (`VIRTIO_IOMMU_S_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// I/O error.
    IoErr = 1,
    /// Unsupported request.
    Unsupp = 2,
    /// Internal device error.
    DevErr = 3,
    /// Invalid parameters.
    Inval = 4,
    /// Out-of-range parameters.
    Range = 5,
    /// Entity not found.
    NoEnt = 6,
    /// Bad address.
    Fault = 7,
    /// Insufficient resources.
    NoMem = 8,
}

impl Status {
    /// The 4-byte `virtio_iommu_req_tail` the device writes back.
    ///
    /// ```
    /// assert_eq!(iommufd_viommu::virtio::Status::Inval.tail(), [4, 0, 0, 0]);
    /// ```
    pub fn tail(self) -> [u8; 4] {
        [self as u8, 0, 0, 0]
    }
}

/// The permissions of a MAP request (`VIRTIO_IOMMU_MAP_F_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MapFlags {
    /// The device may read.
    pub read: bool,
    /// The device may write.
    pub write: bool,
    /// The range is MMIO (needs `VIRTIO_IOMMU_F_MMIO`).
    pub mmio: bool,
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Attach `endpoint` to `domain` (creating the domain if needed); `bypass`:
    /// the domain lets DMA through untranslated.
    Attach {
        /// The domain id.
        domain: u32,
        /// The endpoint id (the device).
        endpoint: u32,
        /// `VIRTIO_IOMMU_ATTACH_F_BYPASS`.
        bypass: bool,
    },
    /// Detach `endpoint` from `domain`.
    Detach {
        /// The domain id.
        domain: u32,
        /// The endpoint id.
        endpoint: u32,
    },
    /// Map `virt_start..=virt_end` of `domain` to guest-physical `phys_start`.
    Map {
        /// The domain id.
        domain: u32,
        /// The first IOVA.
        virt_start: u64,
        /// The last IOVA (inclusive).
        virt_end: u64,
        /// The first guest-physical address.
        phys_start: u64,
        /// The permissions.
        flags: MapFlags,
    },
    /// Unmap what lies in `virt_start..=virt_end` of `domain`.
    Unmap {
        /// The domain id.
        domain: u32,
        /// The first IOVA.
        virt_start: u64,
        /// The last IOVA (inclusive).
        virt_end: u64,
    },
    /// Describe `endpoint` (reserved regions) in the request's writable buffer.
    Probe {
        /// The endpoint id.
        endpoint: u32,
    },
}

/// Why a request was refused, and the status to answer it with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("virtio-iommu request refused ({status:?}): {reason}")]
pub struct RequestError {
    /// The status for the tail.
    pub status: Status,
    /// What was wrong.
    pub reason: &'static str,
}

fn refuse(status: Status, reason: &'static str) -> RequestError {
    RequestError { status, reason }
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

impl Request {
    /// Decodes the device-readable part of a request (the head and the fields,
    /// without the tail). Too short, unknown types, non-zero reserved fields,
    /// unknown flags and reversed ranges are refused with the status the
    /// specification names (`UNSUPP` for an unknown type, `INVAL` otherwise);
    /// longer input is accepted, the rest ignored.
    ///
    /// ```
    /// use iommufd_viommu::virtio::{MapFlags, Request, Status};
    /// let mut map = vec![3, 0, 0, 0]; // MAP
    /// map.extend(1u32.to_le_bytes()); // domain 1
    /// map.extend(0x1000u64.to_le_bytes()); // virt_start
    /// map.extend(0x1fffu64.to_le_bytes()); // virt_end
    /// map.extend(0x8000_0000u64.to_le_bytes()); // phys_start
    /// map.extend(3u32.to_le_bytes()); // READ | WRITE
    /// let r = Request::decode(&map)?;
    /// assert_eq!(r, Request::Map {
    ///     domain: 1, virt_start: 0x1000, virt_end: 0x1fff, phys_start: 0x8000_0000,
    ///     flags: MapFlags { read: true, write: true, mmio: false },
    /// });
    /// assert_eq!(Request::decode(&[9, 0, 0, 0]).unwrap_err().status, Status::Unsupp);
    /// # Ok::<(), iommufd_viommu::virtio::RequestError>(())
    /// ```
    pub fn decode(readable: &[u8]) -> Result<Request, RequestError> {
        if readable.len() < 4 {
            return Err(refuse(Status::Inval, "shorter than a request head"));
        }
        if readable[1..4] != [0; 3] {
            return Err(refuse(
                Status::Inval,
                "reserved bytes of the head are not zero",
            ));
        }
        let need = match readable[0] {
            T_ATTACH => ATTACH_LEN,
            T_DETACH => DETACH_LEN,
            T_MAP => MAP_LEN,
            T_UNMAP => UNMAP_LEN,
            T_PROBE => PROBE_LEN,
            _ => return Err(refuse(Status::Unsupp, "unknown request type")),
        };
        if readable.len() < need {
            return Err(refuse(Status::Inval, "the request is cut short"));
        }
        let b = readable;
        let zero = |from: usize, to: usize| b[from..to].iter().all(|x| *x == 0);
        Ok(match b[0] {
            T_ATTACH => {
                let flags = le32(b, 12);
                if flags & !1 != 0 {
                    return Err(refuse(Status::Inval, "unknown ATTACH flags"));
                }
                if !zero(16, 20) {
                    return Err(refuse(Status::Inval, "reserved ATTACH bytes are not zero"));
                }
                Request::Attach {
                    domain: le32(b, 4),
                    endpoint: le32(b, 8),
                    bypass: flags & 1 != 0,
                }
            }
            T_DETACH => {
                if !zero(12, 20) {
                    return Err(refuse(Status::Inval, "reserved DETACH bytes are not zero"));
                }
                Request::Detach {
                    domain: le32(b, 4),
                    endpoint: le32(b, 8),
                }
            }
            T_MAP => {
                let (start, end, phys, flags) = (le64(b, 8), le64(b, 16), le64(b, 24), le32(b, 32));
                if flags & !7 != 0 {
                    return Err(refuse(Status::Inval, "unknown MAP flags"));
                }
                if end < start {
                    return Err(refuse(Status::Inval, "virt_end is below virt_start"));
                }
                if phys.checked_add(end - start).is_none() {
                    return Err(refuse(Status::Range, "the physical range overflows"));
                }
                Request::Map {
                    domain: le32(b, 4),
                    virt_start: start,
                    virt_end: end,
                    phys_start: phys,
                    flags: MapFlags {
                        read: flags & 1 != 0,
                        write: flags & 2 != 0,
                        mmio: flags & 4 != 0,
                    },
                }
            }
            T_UNMAP => {
                let (start, end) = (le64(b, 8), le64(b, 16));
                if !zero(24, 28) {
                    return Err(refuse(Status::Inval, "reserved UNMAP bytes are not zero"));
                }
                if end < start {
                    return Err(refuse(Status::Inval, "virt_end is below virt_start"));
                }
                Request::Unmap {
                    domain: le32(b, 4),
                    virt_start: start,
                    virt_end: end,
                }
            }
            _ => {
                if !zero(8, 72) {
                    return Err(refuse(Status::Inval, "reserved PROBE bytes are not zero"));
                }
                Request::Probe {
                    endpoint: le32(b, 4),
                }
            }
        })
    }

    /// The number of bytes a MAP or UNMAP range covers (`None` for the whole
    /// 2^64 space, which does not fit).
    pub fn range_len(&self) -> Option<u64> {
        match self {
            Request::Map {
                virt_start,
                virt_end,
                ..
            }
            | Request::Unmap {
                virt_start,
                virt_end,
                ..
            } => (virt_end - virt_start).checked_add(1),
            _ => None,
        }
    }
}

/// A reserved region of an endpoint, for a PROBE answer
/// (`VIRTIO_IOMMU_PROBE_T_RESV_MEM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvMem {
    /// `VIRTIO_IOMMU_RESV_MEM_T_MSI` (an MSI doorbell) rather than reserved.
    pub msi: bool,
    /// The first address.
    pub start: u64,
    /// The last address (inclusive).
    pub end: u64,
}

impl fmt::Display for ResvMem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:#x}..={:#x}",
            if self.msi { "MSI" } else { "reserved" },
            self.start,
            self.end
        )
    }
}

/// Writes the properties of a PROBE answer into `buf` (the request's writable
/// buffer before the tail, `probe_size` bytes): one `RESV_MEM` property per region,
/// then zeroes (`PROBE_T_NONE` ends the list). [`Status::Inval`] if they do not fit.
///
/// ```
/// use iommufd_viommu::virtio::{probe_properties, ResvMem};
/// let mut buf = [0xffu8; 64];
/// probe_properties(&[ResvMem { msi: true, start: 0xfee0_0000, end: 0xfeef_ffff }], &mut buf)?;
/// assert_eq!(&buf[..4], &[1, 0, 20, 0]); // type RESV_MEM, length 20
/// assert!(buf[24..].iter().all(|b| *b == 0));
/// # Ok::<(), iommufd_viommu::virtio::RequestError>(())
/// ```
pub fn probe_properties(regions: &[ResvMem], buf: &mut [u8]) -> Result<(), RequestError> {
    const PROP: usize = 24; // head (4) + subtype, reserved (4) + start, end (16)
    if regions.len().saturating_mul(PROP) > buf.len() {
        return Err(refuse(Status::Inval, "the probe buffer is too small"));
    }
    buf.fill(0);
    for (i, r) in regions.iter().enumerate() {
        let p = &mut buf[i * PROP..(i + 1) * PROP];
        p[0..2].copy_from_slice(&1u16.to_le_bytes());
        p[2..4].copy_from_slice(&20u16.to_le_bytes());
        p[4] = u8::from(r.msi);
        p[8..16].copy_from_slice(&r.start.to_le_bytes());
        p[16..24].copy_from_slice(&r.end.to_le_bytes());
    }
    Ok(())
}

/// Why an access faulted (`VIRTIO_IOMMU_FAULT_R_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FaultReason {
    /// The endpoint is not known to the device.
    Unknown = 0,
    /// The endpoint is in no domain.
    Domain = 1,
    /// The address is not mapped, or not for this access.
    Mapping = 2,
}

/// A fault report for the event queue (`struct virtio_iommu_fault`): what a
/// device model writes into a buffer the guest posted there when an
/// endpoint's access could not be translated (see
/// [`EmulatedEndpoint::fault`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fault {
    /// Why.
    pub reason: FaultReason,
    /// The endpoint that made the access.
    pub endpoint: u32,
    /// The faulting I/O virtual address, if known.
    pub address: Option<u64>,
    /// The access read.
    pub read: bool,
    /// The access wrote.
    pub write: bool,
    /// The access fetched instructions.
    pub exec: bool,
}

impl Fault {
    /// The size of the report on the event queue.
    pub const LEN: usize = 24;

    /// The report as the guest's driver reads it.
    ///
    /// ```
    /// use iommufd_viommu::virtio::{Fault, FaultReason};
    /// let f = Fault {
    ///     reason: FaultReason::Mapping,
    ///     endpoint: 8,
    ///     address: Some(0xffff_0000),
    ///     read: false,
    ///     write: true,
    ///     exec: false,
    /// };
    /// let bytes = f.encode();
    /// assert_eq!(bytes[0], 2); // VIRTIO_IOMMU_FAULT_R_MAPPING
    /// assert_eq!(&bytes[4..8], &0x102u32.to_le_bytes()); // F_WRITE | F_ADDRESS
    /// assert_eq!(&bytes[16..], &0xffff_0000u64.to_le_bytes());
    /// ```
    pub fn encode(&self) -> [u8; Fault::LEN] {
        let mut flags = 0u32;
        flags |= u32::from(self.read);
        flags |= u32::from(self.write) << 1;
        flags |= u32::from(self.exec) << 2;
        flags |= u32::from(self.address.is_some()) << 8;
        let mut b = [0u8; Fault::LEN];
        b[0] = self.reason as u8;
        b[4..8].copy_from_slice(&flags.to_le_bytes());
        b[8..12].copy_from_slice(&self.endpoint.to_le_bytes());
        b[16..24].copy_from_slice(&self.address.unwrap_or(0).to_le_bytes());
        b
    }

    /// Writes the report at the start of `buf` (an event queue buffer);
    /// returns the bytes written: 0 if `buf` is too small for it.
    pub fn write_to(&self, buf: &mut [u8]) -> usize {
        match buf.get_mut(..Fault::LEN) {
            Some(head) => {
                head.copy_from_slice(&self.encode());
                Fault::LEN
            }
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_reports_have_the_specified_layout() {
        let f = Fault {
            reason: FaultReason::Domain,
            endpoint: 0x0102_0304,
            address: None,
            read: true,
            write: false,
            exec: true,
        };
        let b = f.encode();
        assert_eq!(
            b,
            [
                1, 0, 0, 0, 5, 0, 0, 0, 4, 3, 2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]
        );
        let mut small = [0xffu8; 23];
        assert_eq!(f.write_to(&mut small), 0);
        assert!(small.iter().all(|x| *x == 0xff), "untouched");
        let mut buf = [0xffu8; 32];
        assert_eq!(f.write_to(&mut buf), 24);
        assert_eq!(&buf[..24], &b);
        assert_eq!(&buf[24..], &[0xff; 8]);
    }

    fn req(t: u8, fields: &[&[u8]]) -> Vec<u8> {
        let mut b = vec![t, 0, 0, 0];
        fields.iter().for_each(|f| b.extend_from_slice(f));
        b
    }

    #[test]
    fn every_type_decodes_and_refuses_what_it_must() {
        let attach = req(
            1,
            &[
                &7u32.to_le_bytes(),
                &9u32.to_le_bytes(),
                &1u32.to_le_bytes(),
                &[0; 4],
            ],
        );
        assert_eq!(
            Request::decode(&attach),
            Ok(Request::Attach {
                domain: 7,
                endpoint: 9,
                bypass: true
            })
        );
        let mut bad = attach.clone();
        bad[12] = 2;
        assert_eq!(Request::decode(&bad).unwrap_err().status, Status::Inval);
        let mut bad = attach.clone();
        bad[17] = 1;
        assert!(Request::decode(&bad).is_err());
        assert!(Request::decode(&attach[..19]).is_err());

        let detach = req(2, &[&7u32.to_le_bytes(), &9u32.to_le_bytes(), &[0; 8]]);
        assert_eq!(
            Request::decode(&detach),
            Ok(Request::Detach {
                domain: 7,
                endpoint: 9
            })
        );

        let unmap = req(
            4,
            &[
                &1u32.to_le_bytes(),
                &0u64.to_le_bytes(),
                &u64::MAX.to_le_bytes(),
                &[0; 4],
            ],
        );
        let u = Request::decode(&unmap).unwrap();
        assert_eq!(u.range_len(), None, "the whole space does not fit in u64");
        let unmap = req(
            4,
            &[
                &1u32.to_le_bytes(),
                &0x2000u64.to_le_bytes(),
                &0x1000u64.to_le_bytes(),
                &[0; 4],
            ],
        );
        assert_eq!(Request::decode(&unmap).unwrap_err().status, Status::Inval);

        let map = |flags: u32, phys: u64| {
            req(
                3,
                &[
                    &1u32.to_le_bytes(),
                    &0u64.to_le_bytes(),
                    &0xfffu64.to_le_bytes(),
                    &phys.to_le_bytes(),
                    &flags.to_le_bytes(),
                ],
            )
        };
        let m = Request::decode(&map(4, 0)).unwrap();
        assert_eq!(m.range_len(), Some(0x1000));
        assert!(matches!(
            m,
            Request::Map {
                flags: MapFlags { mmio: true, .. },
                ..
            }
        ));
        assert_eq!(
            Request::decode(&map(8, 0)).unwrap_err().status,
            Status::Inval
        );
        assert_eq!(
            Request::decode(&map(1, u64::MAX)).unwrap_err().status,
            Status::Range
        );

        let probe = req(5, &[&3u32.to_le_bytes(), &[0; 64]]);
        assert_eq!(Request::decode(&probe), Ok(Request::Probe { endpoint: 3 }));
        let mut bad = probe.clone();
        bad[71] = 1;
        assert!(Request::decode(&bad).is_err());

        assert_eq!(
            Request::decode(&[0, 0, 0, 0]).unwrap_err().status,
            Status::Unsupp
        );
        assert_eq!(
            Request::decode(&[1, 1, 0, 0]).unwrap_err().status,
            Status::Inval
        );
        assert_eq!(Request::decode(&[1]).unwrap_err().status, Status::Inval);
        assert!(
            Request::decode(&[1])
                .unwrap_err()
                .to_string()
                .contains("Inval")
        );
    }

    #[test]
    fn probe_answers_fit_or_are_refused() {
        let r = [
            ResvMem {
                msi: false,
                start: 0,
                end: 0xfff,
            },
            ResvMem {
                msi: true,
                start: 0xfee0_0000,
                end: 0xfeef_ffff,
            },
        ];
        let mut buf = [0u8; 48];
        probe_properties(&r, &mut buf).unwrap();
        assert_eq!(&buf[24..28], &[1, 0, 20, 0]);
        assert_eq!(buf[28], 1);
        assert_eq!(
            u64::from_le_bytes(buf[32..40].try_into().unwrap()),
            0xfee0_0000
        );
        assert_eq!(
            probe_properties(&r, &mut [0u8; 47]).unwrap_err().status,
            Status::Inval
        );
        assert_eq!(r[1].to_string(), "MSI 0xfee00000..=0xfeefffff");
        assert_eq!(Status::NoMem.tail(), [8, 0, 0, 0]);
    }
}
