//! Nested translation with real DMA, on the arm64 lab's emulated SMMUv3: the
//! guest's stage 1 (a context descriptor and page tables the test writes in guest
//! memory) over the IOAS as stage 2, set up through the crates' public API
//! (nest-parent HWPT, vIOMMU, vDEVICE, nested HWPT from a vSTE). The edu device
//! DMAs to a GIOVA and the bytes land at the GPA the stage-1 table names; after a
//! remap and a batched invalidation through the vIOMMU, at the new GPA; after a
//! remap of the IOAS (stage 2) under the same stage 1, in the new memory. DMA to a
//! GIOVA stage 1 does not map is blocked and arrives as a vEVENT naming the
//! device's label.
//!
//! Planned only on arm64 (module `smmuv3`); ignored on the host.

mod common;

mod smmuv3 {
    use std::sync::Arc;

    use super::common::{bind_isolated, edu, open, pattern};
    use iommufd::{
        Hwpt, HwptFlags, Ioas, Iova, MapFlags, NestedHwpt, SmmuV3Command, SmmuV3Ste, Stage1,
        Vdevice, Veventq, VeventqType, Viommu, ViommuType,
    };
    use iommufd_lab::mem::{RegionBytes, buffer};
    use iommufd_lab::smmu;

    /// Guest RAM for the test: 256 KiB at GPA 16 MiB (below edu's 28-bit DMA mask,
    /// away from the software MSI window at 128 MiB).
    const GPA: u64 = 0x100_0000;
    const LEN: usize = 0x4_0000;
    /// Data pages, by offset in that memory (the tables use the first 64 KiB).
    const Y: u64 = 0x1_0000;
    const Y2: u64 = 0x1_1000;
    const SRC: u64 = 0x1_2000;
    /// The device's addresses (stage-1 input).
    const X: u64 = 0x20_0000;
    const SRC_IOVA: u64 = 0x30_0000;
    /// A GIOVA whose stage-1 page is another IOAS mapping, at GPA 32 MiB.
    const X2: u64 = 0x40_0000;
    const GPA2: u64 = 0x200_0000;
    const ASID: u16 = 3;
    const VSID: u64 = 0x10;
    const N: usize = 3000;
    const LABEL: u64 = 0x13;

    #[test]
    #[ignore = "guest lab: needs the arm64 lab's emulated SMMUv3 and an edu device (cargo xtask vmtest --arch arm64)"]
    fn dma_walks_the_guest_stage1_over_the_ioas() {
        let fd = open();
        let dev = bind_isolated(&fd, LABEL);
        let mem = Arc::new(buffer(LEN));
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        let _stage2 = ioas
            .map(mem.clone(), Some(Iova(GPA)), MapFlags::RW)
            .expect("guest RAM in the IOAS");
        let parent = Hwpt::alloc(&ioas, &dev, HwptFlags::NEST_PARENT).expect("nest parent");
        let viommu = Viommu::alloc(&parent, &dev, ViommuType::ArmSmmuV3).expect("vIOMMU");
        let _vdev = Vdevice::alloc(&viommu, &dev, VSID).expect("vDEVICE");
        let events = Veventq::alloc(&viommu, VeventqType::ArmSmmuV3, 64).expect("vEVENTQ");

        let mut s1 = smmu::Stage1::new(mem.clone(), GPA, ASID);
        s1.map(X, GPA + Y, true);
        s1.map(SRC_IOVA, GPA + SRC, false);
        let ste = SmmuV3Ste::stage1(s1.cd_gpa(), 0, 0).expect("vSTE");
        let nested = NestedHwpt::alloc(&viommu, &dev, Stage1::from(ste), HwptFlags::empty(), None)
            .expect("nested HWPT");
        assert_eq!(dev.attach(&nested).expect("attach"), nested.hwpt_id());
        let edu = edu(&dev);

        // GIOVA X -> GPA Y (stage 1) -> the buffer's page Y (stage 2).
        let data = pattern(N, 5);
        mem.write_at(SRC as usize, &data);
        mem.write_at(Y as usize, &[0u8; N]);
        edu.dma_from_memory(SRC_IOVA, 0, N as u64)
            .expect("DMA from memory");
        edu.dma_to_memory(0, X, N as u64).expect("DMA to memory");
        assert_eq!(
            mem.read_at(Y as usize, N),
            data,
            "the DMA landed at stage 1's GPA"
        );

        // Remap X to Y2 in stage 1 and invalidate through the vIOMMU (a batch).
        s1.map(X, GPA + Y2, true);
        viommu
            .invalidate(&[
                SmmuV3Command::tlbi_nh_va(ASID, X, true),
                SmmuV3Command::tlbi_nh_asid(ASID),
            ])
            .expect("invalidate");
        mem.write_at(Y as usize, &[0u8; N]);
        mem.write_at(Y2 as usize, &[0u8; N]);
        edu.dma_to_memory(0, X, N as u64).expect("DMA to memory");
        assert_eq!(mem.read_at(Y2 as usize, N), data, "after the remap: at Y2");
        assert_eq!(
            mem.read_at(Y as usize, N),
            vec![0u8; N],
            "and no longer at Y"
        );

        // Stage 2 is walked too: X2 -> GPA2 in stage 1, and GPA2 is one buffer in
        // the IOAS, then another.
        s1.map(X2, GPA2, true);
        viommu
            .invalidate(&[SmmuV3Command::tlbi_nh_va(ASID, X2, true)])
            .expect("invalidate");
        let first = ioas
            .map(buffer(4096), Some(Iova(GPA2)), MapFlags::RW)
            .expect("GPA2");
        edu.dma_to_memory(0, X2, N as u64).expect("DMA to memory");
        assert_eq!(first.memory().read_at(0, N), data, "at GPA2's first memory");
        let first = first.unmap().expect("unmap GPA2");
        let second = ioas
            .map(buffer(4096), Some(Iova(GPA2)), MapFlags::RW)
            .expect("GPA2 again");
        first.write_at(0, &[0u8; N]);
        edu.dma_to_memory(0, X2, N as u64).expect("DMA to memory");
        assert_eq!(second.memory().read_at(0, N), data, "at GPA2's new memory");
        assert_eq!(first.read_at(0, N), vec![0u8; N], "not the old");

        // Unmapped in stage 1: blocked, and reported to the vIOMMU's vEVENTQ.
        assert!(events.read().expect("vEVENTQ").events.is_empty());
        s1.unmap(X);
        viommu
            .invalidate(&[SmmuV3Command::tlbi_nh_va(ASID, X, true)])
            .expect("invalidate");
        mem.write_at(Y2 as usize, &[0u8; N]);
        let _ = edu.dma_to_memory(0, X, N as u64);
        assert_eq!(
            mem.read_at(Y2 as usize, N),
            vec![0u8; N],
            "DMA to an unmapped GIOVA"
        );
        let mut seen = Vec::new();
        for _ in 0..100 {
            seen.extend(events.read().expect("vEVENTQ").events);
            if !seen.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let event = seen.first().expect("a vEVENT for the blocked DMA");
        assert_eq!(event.data.virt_id(), Some(VSID), "{event:?}");
        assert_eq!(
            event.device.map(|(_, label)| label),
            Some(LABEL),
            "{event:?}"
        );
        drop(edu);
        dev.detach().expect("detach");
    }
}
