//! `IOMMU_IOAS_NOIOMMU_GET_PA` with a device in VFIO's unsafe no-IOMMU mode: the
//! allowed case (the physical address matches the page the process mapped) and
//! the refused ones (no `CAP_SYS_RAWIO`, an unmapped IOVA, an IOAS an IOMMU
//! translates). On 7.x the lab runs the module `noiommu` in a boot without an IOMMU
//! and with `vfio.enable_unsafe_noiommu_mode=1`; on 6.12 the command does not exist.

mod common;

mod noiommu {
    use super::common::open;
    use iommufd::{Ioas, Iova, MapFlags};
    use iommufd_vfio::VfioDevice;
    use std::io::{Read, Seek, SeekFrom};

    fn page() -> u64 {
        // SAFETY: sysconf only reads a system constant.
        u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).expect("page size")
    }

    /// The physical address of the page at `va` in this process
    /// (/proc/self/pagemap; root sees the frame numbers).
    fn phys_of(va: u64) -> u64 {
        let mut f = std::fs::File::open("/proc/self/pagemap").expect("pagemap");
        f.seek(SeekFrom::Start(va / page() * 8)).expect("seek");
        let mut e = [0u8; 8];
        f.read_exact(&mut e).expect("read pagemap");
        let e = u64::from_le_bytes(e);
        assert!(e >> 63 == 1, "page at {va:#x} not present");
        let pfn = e & ((1 << 55) - 1);
        assert_ne!(pfn, 0, "no PFN: not root?");
        pfn * page() + va % page()
    }

    /// Drops CAP_SYS_RAWIO from the calling thread's effective set.
    fn drop_rawio() {
        iommufd_lab::caps::drop_effective(iommufd_lab::caps::CAP_SYS_RAWIO).expect("capset");
    }

    #[test]
    #[ignore = "guest lab: needs a no-IOMMU VFIO device (cargo xtask vmtest)"]
    fn noiommu_get_pa() {
        let fd = open();
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        let cdev = std::fs::read_dir("/dev/vfio/devices")
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("noiommu-vfio"))
            });
        let Some(cdev) = cdev else {
            // The VT-d boot (and 6.12): no such device. The command is missing
            // on 6.12, refused for an IOAS without no-IOMMU storage on 7.x.
            let e = ioas.noiommu_phys(Iova(1 << 20), 4096).unwrap_err();
            let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
            if release.starts_with("6.") {
                assert!(e.is_unsupported(), "{e}");
            } else {
                assert!(e.errno().is_some(), "{e}");
            }
            return;
        };
        let dev = VfioDevice::open(&cdev).expect("open the no-IOMMU cdev");
        let dev = dev.bind(&fd, 0x5).expect("bind");
        dev.attach(&ioas).expect("attach to the IOAS");
        let len = 4 * page();
        let region = iommufd_lab::mem::buffer(len as usize);
        // Fault the pages in so the pagemap has them.
        // SAFETY: the region is `len` bytes of this process's memory.
        unsafe { std::ptr::write_bytes(region.as_ptr(), 0x5a, len as usize) };
        let va = region.as_ptr() as u64;
        let m = ioas.map(region, None, MapFlags::RW).expect("map");

        // Allowed: each page's physical address is the one the CPU uses.
        for i in 0..4 {
            let (pa, contiguous) = ioas
                .noiommu_phys(Iova(m.iova().raw() + i * page()), len)
                .expect("NOIOMMU_GET_PA");
            assert_eq!(pa, phys_of(va + i * page()), "page {i}");
            assert!(
                contiguous >= page() && contiguous <= len - i * page(),
                "{contiguous:#x}"
            );
        }
        // Mid-page: the offset carries over, the run ends at the page end at least.
        let (pa, contiguous) = ioas
            .noiommu_phys(Iova(m.iova().raw() + 0x10), 8)
            .expect("NOIOMMU_GET_PA");
        assert_eq!(pa, phys_of(va) + 0x10);
        assert_eq!(contiguous, 8, "capped by the length asked for");
        // Refused: an unmapped IOVA, a zero length.
        let e = ioas
            .noiommu_phys(Iova(m.iova().raw() + len), page())
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
        assert!(ioas.noiommu_phys(m.iova(), 0).is_err());
        // Refused: a caller without CAP_SYS_RAWIO (this thread only).
        let iova = m.iova();
        let ioas2 = ioas.clone();
        let e = std::thread::spawn(move || {
            drop_rawio();
            ioas2.noiommu_phys(iova, 8).unwrap_err()
        })
        .join()
        .expect("thread");
        assert_eq!(e.errno(), Some(libc::EPERM), "{e}");
        drop(m);
        drop(dev);
    }
}
