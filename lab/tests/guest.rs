//! The guest lab's own first tests: the kernel interfaces exist and behave as the
//! rest of the project assumes, observed with raw ioctls (no crate under test).
//!
//! Ignored on the host; `cargo xtask vmtest` runs them in the guest with `--ignored`.

use std::io;
use std::os::fd::AsFd;

use iommufd_lab::edu::{EDU_DMA_LIMIT, Edu};
use iommufd_lab::iommufd::{DmaBuffer, RawIommufd};
use iommufd_lab::pci;
use iommufd_lab::require_dev_iommu;
use iommufd_lab::vfio::VfioDevice;

#[test]
#[ignore = "guest lab: needs /dev/iommu (cargo xtask vmtest)"]
fn ioas_alloc_and_destroy() {
    require_dev_iommu();
    let fd = RawIommufd::open().expect("open /dev/iommu");
    let a = fd.ioas_alloc().expect("IOAS_ALLOC");
    let b = fd.ioas_alloc().expect("second IOAS_ALLOC");
    assert_ne!(a, b, "two IOASes got the same id");
    fd.destroy(a).expect("DESTROY");
    let err = fd
        .destroy(a)
        .expect_err("DESTROY of a destroyed id must fail");
    assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
    fd.destroy(b).expect("DESTROY");
}

/// Tests that need the emulated VT-d and the edu devices.
mod vfio {
    use super::*;

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu and an edu device (cargo xtask vmtest)"]
    fn edu_dma_through_iommu() {
        require_dev_iommu();
        let fd = RawIommufd::open().expect("open /dev/iommu");
        let ioas = fd.ioas_alloc().expect("IOAS_ALLOC");
        let pci = pci::isolated_edu().expect("an edu device alone in its group");
        let dev = VfioDevice::open(&pci.vfio_cdev().expect("cdev")).expect("open cdev");
        let dev_id = dev.bind(fd.as_fd()).expect("BIND_IOMMUFD");
        let hwpt = dev.attach(ioas).expect("ATTACH_IOMMUFD_PT to the IOAS");
        assert_ne!(
            hwpt, ioas,
            "attaching an IOAS must return the auto-created HWPT"
        );
        assert_ne!(hwpt, dev_id);
        let edu = Edu::new(&dev).expect("edu BAR0");
        assert!(edu.alive(), "edu liveness register");

        let buf = DmaBuffer::new(8192).expect("buffer");
        let iova = 0x10_0000;
        assert!(iova + buf.len() as u64 <= EDU_DMA_LIMIT);
        // SAFETY: `buf` outlives the mapping: it is unmapped below, before `buf` drops.
        unsafe { fd.map_fixed(ioas, &buf, iova) }.expect("IOAS_MAP");

        // RAM -> device -> RAM through the IOMMU, compared byte for byte.
        let len = 3000;
        let data = pattern(len, 7);
        buf.write(0, &data);
        edu.dma_from_memory(iova, 0, len as u64)
            .expect("DMA to device");
        edu.dma_to_memory(0, iova + 4096, len as u64)
            .expect("DMA to memory");
        let mut back = vec![0u8; len];
        buf.read(4096, &mut back);
        assert_eq!(back, data, "data DMAed out and back differs");

        // After unmapping, the device's writes reach nothing.
        assert_eq!(
            fd.unmap(ioas, iova, buf.len() as u64).expect("IOAS_UNMAP"),
            buf.len() as u64
        );
        buf.write(4096, &vec![0u8; len]);
        edu.dma_to_memory(0, iova + 4096, len as u64)
            .expect("DMA to unmapped IOVA completes on the device side");
        buf.read(4096, &mut back);
        assert!(
            back.iter().all(|&b| b == 0),
            "DMA reached memory after unmap"
        );

        dev.detach().expect("DETACH_IOMMUFD_PT");
        drop(dev);
        fd.destroy(ioas)
            .expect("DESTROY IOAS after the device is gone");
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu and the shared-group topology (cargo xtask vmtest)"]
    fn bind_refused_while_group_member_has_kernel_driver() {
        require_dev_iommu();
        let (edu, other) = pci::edu_sharing_group_with_driver()
            .expect("lab topology: edu beside a driver-bound device");
        let driver = other.driver().expect("driver");
        let fd = RawIommufd::open().expect("open /dev/iommu");
        let dev = VfioDevice::open(&edu.vfio_cdev().expect("cdev")).expect("open cdev");
        let err = dev
            .bind(fd.as_fd())
            .expect_err("bind must fail while the group is not viable");
        // iommu_device_claim_dma_owner(): the group already has a DMA-API owner (the
        // other member's driver), so claiming it for user space is not permitted.
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EPERM),
            "{} bound to {driver}: {err}",
            other.bdf()
        );

        // Once the other member lets go of its driver, the group is viable.
        other.unbind().expect("unbind the other member");
        let res = dev.bind(fd.as_fd());
        drop(dev);
        other
            .bind(&driver)
            .expect("give the other member its driver back");
        let dev_id = res.expect("bind after the other member was unbound");
        assert!(dev_id > 0);
    }
}

/// Tests that drive the kernel's mock IOMMU (CONFIG_IOMMUFD_TEST).
mod mock {
    use super::*;
    use iommufd_lab::ioctl_with_mut;
    use iommufd_uapi::IOMMU_TEST_CMD;
    use iommufd_uapi::selftest::*;

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn mock_domain_on_ioas() -> io::Result<()> {
        require_dev_iommu();
        let fd = RawIommufd::open()?;
        let ioas = fd.ioas_alloc()?;
        let mut cmd = iommu_test_cmd {
            size: size_of::<iommu_test_cmd>() as u32,
            op: IOMMU_TEST_OP_MOCK_DOMAIN,
            id: ioas,
            ..Default::default()
        };
        ioctl_with_mut(fd.as_fd(), IOMMU_TEST_CMD, &mut cmd)?;
        // SAFETY: MOCK_DOMAIN fills the mock_domain member of the union.
        let md = unsafe { cmd.__bindgen_anon_1.mock_domain };
        assert!(md.out_stdev_id != 0 && md.out_hwpt_id != 0 && md.out_idev_id != 0);
        // The IOAS is in use by the mock domain's HWPT.
        let busy = fd.destroy(ioas).expect_err("IOAS in use");
        assert_eq!(busy.raw_os_error(), Some(libc::EBUSY));
        fd.destroy(md.out_stdev_id)?;
        fd.destroy(ioas)?;
        Ok(())
    }
}
