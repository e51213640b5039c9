//! Dirty pages of device DMA into vm-memory dirty bitmaps, end to end on the
//! kernel's mock IOMMU (which lets a test mark IOVAs written): guest RAM kept in
//! one shared IOAS, and a shadow domain whose dirty IOVAs come back at the GPAs
//! the guest mapped. Both bitmap types: vm-memory's `AtomicBitmap` and
//! [`DirtyLog`].

#[cfg(feature = "selftest")]
mod mock {
    use iommufd::selftest::{self, MOCK_PAGE_SIZE, MockDevice, MockDeviceFlags};
    use iommufd::vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap};
    use iommufd::vm_memory::{
        GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    };
    use iommufd::{
        DirtyBitmap, DirtyReadFlags, Error, HugePages, Hwpt, HwptFlags, Ioas, Iommufd, Iova,
        MapFlags,
    };
    use iommufd_viommu::{DirtyLog, DirtySink, GuestRamSync, ShadowDomain, SharedIoas};

    const MB: u64 = 1 << 20;

    fn open() -> Iommufd {
        assert!(
            std::path::Path::new(iommufd::DEFAULT_PATH).exists(),
            "run in the guest lab"
        );
        Iommufd::open().expect("open")
    }

    /// An IOAS mapped in CPU pages: with huge pages the mock IOMMU (like a real
    /// one) keeps one dirty bit per large page, and reports its neighbours too.
    fn split_ioas(fd: &Iommufd) -> Ioas {
        let ioas = Ioas::alloc(fd).expect("IOAS");
        ioas.set_huge_pages(HugePages::Split)
            .expect("huge pages off");
        ioas
    }

    /// Has the mock IOMMU mark the 4 KiB pages at `iovas` written through `hwpt`.
    fn dma_writes(hwpt: &Hwpt, iovas: &[u64]) {
        for iova in iovas {
            let mut marks = DirtyBitmap::new(Iova(*iova), 4096, MOCK_PAGE_SIZE).expect("bitmap");
            (0..4096 / MOCK_PAGE_SIZE).for_each(|p| marks.set(p));
            assert!(selftest::set_dirty(hwpt, &marks).expect("IOMMU_TEST_OP_DIRTY") > 0);
        }
    }

    /// The dirty pages of every region, as GPAs.
    fn dirty_gpas<B: Bitmap + Send + Sync + 'static>(ram: &GuestMemoryMmap<B>) -> Vec<u64> {
        let mut out = Vec::new();
        for r in ram.iter() {
            for off in (0..r.len()).step_by(4096) {
                if r.get_mmap().bitmap().dirty_at(off as usize) {
                    out.push(r.start_addr().0 + off);
                }
            }
        }
        out
    }

    /// Guest RAM at 16 MiB and 20 MiB: inside the mock IOMMU's aperture (16 MiB to
    /// 2 GiB), as IOVA = GPA needs.
    fn ram<B: NewBitmap + Send + Sync + 'static>() -> GuestMemoryMmap<B> {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(16 * MB), MB as usize),
            (GuestAddress(20 * MB), MB as usize),
        ])
        .expect("guest RAM")
    }

    fn shared_ioas_round<B>(reset: impl Fn(&GuestMemoryMmap<B>))
    where
        B: NewBitmap + DirtySink + Send + Sync + 'static,
    {
        let fd = open();
        let ioas = split_ioas(&fd);
        let ram = ram::<B>();
        let mut sync = GuestRamSync::new(ioas.clone(), MapFlags::RW);
        sync.sync(&ram).expect("sync");
        let shared = SharedIoas::new(ioas.clone(), HwptFlags::DIRTY_TRACKING);
        let a = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("mock a");
        let b = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 2).expect("mock b");
        shared.attach(&a).expect("attach a");
        shared.attach(&b).expect("attach b");
        let hwpts = shared.hwpts();
        assert_eq!(hwpts.len(), 1, "one HWPT for both");
        shared.set_dirty_tracking(true).expect("tracking on");

        dma_writes(
            &hwpts[0],
            &[16 * MB + 0x3000, 20 * MB + 0x1000, 20 * MB + 0xf_f000],
        );
        // The last round reads without clearing: twice the same.
        for _ in 0..2 {
            let n = sync
                .harvest_dirty(&hwpts, DirtyReadFlags::NO_CLEAR)
                .expect("harvest");
            assert_eq!(
                dirty_gpas(&ram),
                [16 * MB + 0x3000, 20 * MB + 0x1000, 20 * MB + 0xf_f000]
            );
            assert_eq!(n, 3);
        }
        reset(&ram);
        assert!(dirty_gpas(&ram).is_empty());
        // A clearing read: the kernel forgets, the bitmaps have them.
        assert_eq!(
            sync.harvest_dirty(&hwpts, DirtyReadFlags::empty())
                .expect("harvest"),
            3
        );
        assert_eq!(dirty_gpas(&ram).len(), 3);
        reset(&ram);
        assert_eq!(
            sync.harvest_dirty(&hwpts, DirtyReadFlags::empty())
                .expect("harvest"),
            0
        );
        assert!(dirty_gpas(&ram).is_empty());

        // A device whose IOMMU cannot track joins: tracking cannot cover it.
        let c = MockDevice::alloc(&ioas, MockDeviceFlags::NO_DIRTY, 3).expect("mock c");
        let e = shared
            .attach(&c)
            .map(drop)
            .and_then(|()| shared.set_dirty_tracking(true));
        assert!(matches!(e, Err(Error::Unsupported { .. })), "{e:?}");
        drop((a, b, c, hwpts));
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn shared_ioas_dirty_pages_into_atomic_bitmaps() {
        shared_ioas_round::<AtomicBitmap>(|ram| {
            ram.iter().for_each(|r| r.get_mmap().bitmap().reset());
        });
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn shared_ioas_dirty_pages_into_dirty_logs() {
        shared_ioas_round::<DirtyLog>(|ram| {
            ram.iter()
                .for_each(|r| drop(r.get_mmap().bitmap().get_and_reset()));
        });
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn shadow_domain_dirty_iovas_land_at_gpas() {
        let fd = open();
        let ram = ram::<DirtyLog>();
        let (mut domain, mock) = domain_with_mock(&fd);
        domain.set_dirty_tracking(true).expect("tracking on");
        // GIOVA 16 MiB -> the last 16 KiB of the first region, and right after it
        // GIOVA 16 MiB + 16 KiB -> GPA 20 MiB + 64 KiB: IOVA-contiguous, one read.
        domain
            .map(&ram, 16 * MB, 17 * MB - 0x4000, 0x4000, MapFlags::RW)
            .expect("map");
        domain
            .map(
                &ram,
                16 * MB + 0x4000,
                20 * MB + 0x1_0000,
                0x2000,
                MapFlags::RW,
            )
            .expect("map");
        let hwpt = domain.hwpts().pop().expect("a HWPT");
        dma_writes(&hwpt, &[16 * MB + 0x1000, 16 * MB + 0x5000]);
        assert_eq!(
            domain
                .harvest_dirty(DirtyReadFlags::empty())
                .expect("harvest"),
            2
        );
        assert_eq!(
            dirty_gpas(&ram),
            [17 * MB - 0x3000, 20 * MB + 0x1_1000],
            "at the GPAs"
        );
        // Written, then unmapped before the next harvest: the kernel forgets
        // the dirty bits of what it unmaps, so the domain reads them first. The
        // middle page of the first mapping goes, and the mapping is unmapped
        // whole and its two ends mapped again: a write to an end survives too.
        assert!(domain.dirty_tracking());
        reset(&ram);
        dma_writes(
            &hwpt,
            &[16 * MB + 0x2000, 16 * MB + 0x3000, 16 * MB + 0x4000],
        );
        assert_eq!(
            domain.unmap(16 * MB + 0x2000, 0x1000).expect("unmap"),
            0x1000
        );
        assert_eq!(
            dirty_gpas(&ram),
            [17 * MB - 0x2000, 17 * MB - 0x1000],
            "marked at the unmap: the page unmapped and the end mapped again"
        );
        assert_eq!(
            domain
                .harvest_dirty(DirtyReadFlags::empty())
                .expect("harvest"),
            1,
            "the second mapping's page; the first's were read (and cleared) at the unmap"
        );
        assert_eq!(
            dirty_gpas(&ram),
            [17 * MB - 0x2000, 17 * MB - 0x1000, 20 * MB + 0x1_0000]
        );
        reset(&ram);
        // Emptying the domain, and dropping it, keep what was written too.
        dma_writes(&hwpt, &[16 * MB + 0x5000]);
        assert_eq!(domain.clear().expect("clear"), 0x5000);
        assert_eq!(
            dirty_gpas(&ram),
            [20 * MB + 0x1_1000],
            "marked at the clear"
        );
        reset(&ram);
        domain
            .map(&ram, 16 * MB, 16 * MB + 0x8000, 0x1000, MapFlags::RW)
            .expect("map");
        dma_writes(&hwpt, &[16 * MB]);
        drop(domain);
        assert_eq!(dirty_gpas(&ram), [16 * MB + 0x8000], "marked at the drop");
        drop(mock);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn virtio_iommu_unmap_and_a_dropped_domain_keep_what_devices_wrote() {
        use iommufd_viommu::virtio::{Backend, MapFlags as VirtioFlags, Request};
        let fd = open();
        let ram = ram::<DirtyLog>();
        let parking = split_ioas(&fd);
        let mock = MockDevice::alloc(&parking, MockDeviceFlags::empty(), 1).expect("mock");
        let mut v = Backend::<DirtyLog>::new(&fd, HwptFlags::DIRTY_TRACKING);
        v.add_endpoint(1, mock.device(), vec![]).expect("endpoint");
        v.set_dirty_tracking(true).expect("tracking on");
        let mut run = |req: Request| v.execute(&ram, &req, &mut []);
        run(Request::Attach {
            domain: 7,
            endpoint: 1,
            bypass: false,
        })
        .expect("ATTACH");
        // IOVA 16 MiB -> the last 16 KiB of the first region.
        let rw = VirtioFlags {
            read: true,
            write: true,
            mmio: false,
        };
        run(Request::Map {
            domain: 7,
            virt_start: 16 * MB,
            virt_end: 16 * MB + 0x3fff,
            phys_start: 17 * MB - 0x4000,
            flags: rw,
        })
        .expect("MAP");
        let hwpt = v.domain(7).and_then(|d| d.hwpts().pop()).expect("a HWPT");
        // Harvested in a round.
        dma_writes(&hwpt, &[16 * MB]);
        assert_eq!(
            v.harvest_dirty(DirtyReadFlags::empty()).expect("harvest"),
            1
        );
        assert_eq!(dirty_gpas(&ram), [17 * MB - 0x4000]);
        reset(&ram);
        // Written, then unmapped by the guest before the next round.
        dma_writes(&hwpt, &[16 * MB + 0x1000]);
        let mut run = |req: Request| v.execute(&ram, &req, &mut []);
        run(Request::Unmap {
            domain: 7,
            virt_start: 16 * MB + 0x1000,
            virt_end: 16 * MB + 0x1fff,
        })
        .expect("UNMAP");
        assert_eq!(dirty_gpas(&ram), [17 * MB - 0x3000], "marked at the UNMAP");
        // Written, then the last endpoint moves to another domain and this one
        // goes with its mappings (the mock device cannot be detached: DETACH
        // takes the same path).
        dma_writes(&hwpt, &[16 * MB + 0x3000]);
        run(Request::Attach {
            domain: 8,
            endpoint: 1,
            bypass: false,
        })
        .expect("ATTACH elsewhere");
        assert!(v.domain(7).is_none(), "the domain is gone");
        assert_eq!(
            dirty_gpas(&ram),
            [17 * MB - 0x3000, 17 * MB - 0x1000],
            "marked when the domain went"
        );
        drop(v);
        drop(mock);
    }

    /// A shadow domain that can track dirty pages (tracking off), with a mock
    /// device attached.
    fn domain_with_mock(fd: &Iommufd) -> (ShadowDomain<DirtyLog>, MockDevice) {
        let mut domain = ShadowDomain::new(split_ioas(fd), HwptFlags::DIRTY_TRACKING);
        let mock = MockDevice::alloc(domain.ioas(), MockDeviceFlags::empty(), 1).expect("mock");
        domain.attach(mock.device()).expect("attach");
        (domain, mock)
    }

    /// Empties the regions' bitmaps.
    fn reset(ram: &GuestMemoryMmap<DirtyLog>) {
        ram.iter()
            .for_each(|r| drop(r.get_mmap().bitmap().get_and_reset()));
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn shadow_domain_without_tracking_reads_no_dirty_bits_at_unmap() {
        let fd = open();
        let ram = ram::<DirtyLog>();
        let (mut domain, mock) = domain_with_mock(&fd);
        domain
            .map(&ram, 16 * MB, 17 * MB - 0x4000, 0x4000, MapFlags::RW)
            .expect("map");
        // Written while tracking was on; tracking then stopped (the migration
        // ended): an unmap reads nothing and marks nothing.
        domain.set_dirty_tracking(true).expect("tracking on");
        let hwpt = domain.hwpts().pop().expect("a HWPT");
        dma_writes(&hwpt, &[16 * MB + 0x1000]);
        domain.set_dirty_tracking(false).expect("tracking off");
        assert!(!domain.dirty_tracking());
        domain.unmap(16 * MB + 0x1000, 0x1000).expect("unmap");
        assert!(
            dirty_gpas(&ram).is_empty(),
            "nothing tracked, nothing marked"
        );
        drop(mock);
    }
}
