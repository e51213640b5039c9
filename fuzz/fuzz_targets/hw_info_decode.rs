//! `HwInfoData::decode` on arbitrary bytes.
//!
//! Input: a `u32` type code (little endian), then the type-specific data the
//! kernel would have returned. The decoder must never panic, must err exactly
//! when the data is shorter than the structure of a known type, must ignore
//! trailing bytes (newer kernels append fields) and must keep unknown types'
//! bytes as they are.

#![no_main]

use iommufd::{DecodeError, HwInfoData};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((ty, data)) = input.split_first_chunk::<4>() else {
        return;
    };
    let ty = u32::from_le_bytes(*ty);

    // The length a known type needs: what decoding no data at all asks for.
    let need = match HwInfoData::decode(ty, &[]) {
        Err(DecodeError::TooShort { need, .. }) => Some(need),
        _ => None,
    };

    match HwInfoData::decode(ty, data) {
        Ok(decoded) => {
            let shown = format!("{decoded:?}");
            assert!(!shown.is_empty());
            match &decoded {
                HwInfoData::Unknown { data_type, bytes } => {
                    assert_eq!(*data_type, ty);
                    assert_eq!(bytes.as_slice(), data);
                    assert_eq!(need, None);
                }
                HwInfoData::None => assert_eq!(need, None),
                _ => {
                    // A known structure: the bytes past it change nothing.
                    let need = need.expect("a known type needs some bytes");
                    assert!(data.len() >= need);
                    assert_eq!(HwInfoData::decode(ty, &data[..need]).as_ref(), Ok(&decoded));
                }
            }
            // Deterministic, and the clone compares equal.
            assert_eq!(HwInfoData::decode(ty, data), Ok(decoded.clone()));
        }
        Err(err) => {
            if let DecodeError::TooShort {
                data_type,
                need: n,
                got,
            } = &err
            {
                assert_eq!(*data_type, ty);
                assert_eq!(*got, data.len());
                assert!(got < n);
                assert_eq!(need, Some(*n));
            }
            assert!(!err.to_string().is_empty());
            assert!(!format!("{err:?}").is_empty());
        }
    }
});
