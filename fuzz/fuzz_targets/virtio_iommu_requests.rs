//! Guest-written virtio-iommu requests through `iommufd_viommu::virtio::Request::decode`.
//!
//! Input: the device-readable bytes of one request, as the guest wrote them.
//!
//! Checked: no panic; a decoded request re-encodes (from its fields, in the
//! specification's layout) to the input's first bytes, so nothing was misread;
//! every refusal carries a status other than OK and a reason; an unknown type is
//! always `UNSUPP`, a head shorter than 4 bytes always `INVAL`; MAP and UNMAP ranges
//! are never reversed, and a decoded MAP's physical range never overflows.

#![no_main]

use iommufd_viommu::virtio::{MapFlags, Request, Status};
use libfuzzer_sys::fuzz_target;

fn encode(r: &Request) -> Vec<u8> {
    let mut b = Vec::new();
    match *r {
        Request::Attach { domain, endpoint, bypass } => {
            b.extend([1, 0, 0, 0]);
            b.extend(domain.to_le_bytes());
            b.extend(endpoint.to_le_bytes());
            b.extend(u32::from(bypass).to_le_bytes());
            b.extend([0; 4]);
        }
        Request::Detach { domain, endpoint } => {
            b.extend([2, 0, 0, 0]);
            b.extend(domain.to_le_bytes());
            b.extend(endpoint.to_le_bytes());
            b.extend([0; 8]);
        }
        Request::Map { domain, virt_start, virt_end, phys_start, flags } => {
            let MapFlags { read, write, mmio } = flags;
            b.extend([3, 0, 0, 0]);
            b.extend(domain.to_le_bytes());
            b.extend(virt_start.to_le_bytes());
            b.extend(virt_end.to_le_bytes());
            b.extend(phys_start.to_le_bytes());
            b.extend((u32::from(read) | u32::from(write) << 1 | u32::from(mmio) << 2).to_le_bytes());
        }
        Request::Unmap { domain, virt_start, virt_end } => {
            b.extend([4, 0, 0, 0]);
            b.extend(domain.to_le_bytes());
            b.extend(virt_start.to_le_bytes());
            b.extend(virt_end.to_le_bytes());
            b.extend([0; 4]);
        }
        Request::Probe { endpoint } => {
            b.extend([5, 0, 0, 0]);
            b.extend(endpoint.to_le_bytes());
            b.extend([0; 64]);
        }
    }
    b
}

fuzz_target!(|input: &[u8]| {
    match Request::decode(input) {
        Ok(r) => {
            let again = encode(&r);
            assert!(input.len() >= again.len());
            assert_eq!(&input[..again.len()], &again[..], "{r:?}");
            match r {
                Request::Map { virt_start, virt_end, phys_start, .. } => {
                    assert!(virt_start <= virt_end);
                    assert!(phys_start.checked_add(virt_end - virt_start).is_some());
                }
                Request::Unmap { virt_start, virt_end, .. } => assert!(virt_start <= virt_end),
                _ => {}
            }
        }
        Err(e) => {
            assert_ne!(e.status, Status::Ok);
            assert!(!e.reason.is_empty());
            if input.len() < 4 {
                assert_eq!(e.status, Status::Inval);
            } else if input[1..4] == [0; 3] && !(1..=5).contains(&input[0]) {
                assert_eq!(e.status, Status::Unsupp);
            }
        }
    }
});
