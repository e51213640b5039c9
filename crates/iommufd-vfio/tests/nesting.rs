//! Nesting on a real (emulated) VT-d: what the hardware says decides what the
//! kernel allows, and the typed API reports a refusal as `Unsupported`. QEMU's
//! VT-d does not offer nested translation (ECAP.NEST), so the nested paths
//! themselves are proven on the kernel's mock IOMMU (crates/iommufd/tests/nesting.rs).

mod common;

use common::{bind_isolated, open};
use iommufd::{
    FaultQueue, HwInfoData, Hwpt, HwptFlags, Ioas, NestedHwpt, Stage1, Viommu, ViommuType, VtdS1,
    VtdS1Flags,
};

/// Tests of VT-d itself: not planned in the arm64 lab.
mod vtd {
    use super::*;

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn nest_parent_follows_ecap_nest() {
        let fd = open();
        let dev = bind_isolated(&fd, 0x31);
        let HwInfoData::IntelVtd { ecap_reg, .. } = dev.hw_info().expect("hw_info").data else {
            panic!("the lab's devices sit behind VT-d");
        };
        let nest = ecap_reg >> 26 & 1 == 1;
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        match Hwpt::alloc(&ioas, &dev, HwptFlags::NEST_PARENT) {
            Ok(parent) => {
                assert!(nest, "a nest parent without ECAP.NEST");
                let s1 = VtdS1::new(0x1000, 48, VtdS1Flags::empty()).expect("stage 1");
                let nested =
                    NestedHwpt::alloc(&parent, &dev, Stage1::from(s1), HwptFlags::empty(), None)
                        .expect("nested HWPT");
                assert_eq!(nested.parent().stage2().id(), parent.id());
            }
            Err(e) => {
                assert!(!nest, "ECAP.NEST set but: {e}");
                assert!(e.is_unsupported(), "{e}");
            }
        }
        // VT-d has no vIOMMU object type in Linux 7.3, and faults need PRI, which
        // the edu device lacks: both refused with typed errors, nothing left behind.
        let plain = Hwpt::alloc(&ioas, &dev, HwptFlags::empty()).expect("HWPT");
        let e = Viommu::alloc(&plain, &dev, ViommuType::ArmSmmuV3).unwrap_err();
        assert!(matches!(e, iommufd::Error::InvalidArgument { .. }), "{e}");
        if fd.probe().supports(iommufd::Command::FaultQueueAlloc) {
            let faults = FaultQueue::alloc(&fd).expect("fault queue");
            let r = Hwpt::alloc_iopf(&ioas, &dev, HwptFlags::empty(), &faults);
            if let Err(e) = &r {
                assert!(e.errno().is_some(), "{e}");
            }
            drop(r);
            assert!(faults.read().expect("read").is_empty());
        }
    }
}
