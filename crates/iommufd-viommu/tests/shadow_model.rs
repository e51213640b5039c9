//! The shadow engine against a model, on the kernel's mock IOMMU: random traces
//! of guest maps, (partial) unmaps and memory hotplug, after each of which the
//! kernel itself checks every page of the window (`IOMMU_TEST_OP_MD_CHECK_MAP`):
//! mapped exactly where the model says the guest mapped guest RAM, to the host
//! page behind the GPA, and nowhere else.

#[cfg(feature = "selftest")]
mod mock {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use iommufd::selftest::{self, MockDevice, MockDeviceFlags};
    use iommufd::vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};
    use iommufd::{HugePages, HwptFlags, Ioas, Iommufd, Iova, MapFlags};
    use iommufd_viommu::{ShadowDomain, ShadowError};
    use proptest::prelude::*;

    const PAGE: u64 = 4096;
    /// GIOVAs: 64 pages in the mock IOMMU's aperture.
    const IOVA: u64 = 1 << 24;
    const WINDOW: u64 = 64;
    /// Guest RAM slots, (first page, pages): two adjacent, a gap, one more.
    const SLOTS: [(u64, u64); 3] = [(0, 32), (32, 32), (80, 32)];
    const GPA_PAGES: u64 = 128;

    #[derive(Clone, Debug)]
    enum Op {
        Map {
            page: u64,
            gpa: u64,
            pages: u64,
        },
        Unmap {
            page: u64,
            pages: u64,
        },
        /// Plug or unplug a RAM slot (new memory each time it comes back).
        Toggle {
            slot: usize,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (0..WINDOW, 0..GPA_PAGES, 1..12u64).prop_map(|(page, gpa, pages)| Op::Map { page, gpa, pages }),
            3 => (0..WINDOW, 1..20u64).prop_map(|(page, pages)| Op::Unmap { page, pages }),
            1 => (0..SLOTS.len()).prop_map(|slot| Op::Toggle { slot }),
        ]
    }

    struct Ram {
        present: [Option<Arc<GuestRegionMmap>>; 3],
    }

    impl Ram {
        fn memory(&self) -> GuestMemoryMmap {
            let regions: Vec<_> = self.present.iter().flatten().cloned().collect();
            if regions.is_empty() {
                return GuestMemoryMmap::new();
            }
            GuestMemoryMmap::from_arc_regions(regions).expect("guest memory")
        }

        /// The host address of GPA page `p`, if RAM.
        fn host(&self, p: u64) -> Option<*const u8> {
            SLOTS.iter().zip(&self.present).find_map(|((first, n), r)| {
                let r = r.as_ref()?;
                (p >= *first && p < first + n).then(|| {
                    // SAFETY: an offset inside the region's mapping.
                    unsafe { r.as_ptr().add(((p - first) * PAGE) as usize) as *const u8 }
                })
            })
        }
    }

    fn region(slot: usize) -> Arc<GuestRegionMmap> {
        let (first, n) = SLOTS[slot];
        Arc::new(
            GuestRegionMmap::from_range(GuestAddress(first * PAGE), (n * PAGE) as usize, None)
                .expect("region"),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 64,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
        fn kernel_mappings_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let fd = Iommufd::open().expect("open");
            let ioas = Ioas::alloc(&fd).expect("IOAS");
            ioas.set_huge_pages(HugePages::Split).expect("CPU pages");
            let mut domain = ShadowDomain::<()>::new(ioas.clone(), HwptFlags::empty());
            let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("mock");
            domain.attach(mock.device()).expect("attach");
            let hwpt = domain.hwpts().pop().expect("a HWPT").id();
            let mut ram = Ram { present: [Some(region(0)), Some(region(1)), Some(region(2))] };
            // GIOVA page -> GPA page.
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            for op in ops {
                let mem = ram.memory();
                match op {
                    Op::Map { page, gpa, pages } => {
                        let free = (page..page + pages).all(|p| !model.contains_key(&p));
                        let in_ram = (gpa..gpa + pages).all(|g| ram.host(g).is_some());
                        let got = domain.map(&mem, IOVA + page * PAGE, gpa * PAGE, pages * PAGE, MapFlags::RW);
                        match (&got, free, in_ram) {
                            (Ok(()), true, true) => {
                                (0..pages).for_each(|k| { model.insert(page + k, gpa + k); });
                            }
                            (Err(ShadowError::Overlap { .. }), false, _) => {}
                            (Err(ShadowError::NotRam { .. }), true, false) => {}
                            _ => prop_assert!(false, "map {page}+{pages} -> {gpa}: {got:?} (free {free}, RAM {in_ram})"),
                        }
                    }
                    Op::Unmap { page, pages } => {
                        let want = model.range(page..page + pages).count() as u64;
                        let got = domain.unmap(IOVA + page * PAGE, pages * PAGE).expect("unmap");
                        prop_assert_eq!(got, want * PAGE);
                        model.retain(|p, _| *p < page || *p >= page + pages);
                    }
                    Op::Toggle { slot } => {
                        ram.present[slot] = match ram.present[slot] {
                            Some(_) => None,
                            None => Some(region(slot)),
                        };
                        domain.replay(&ram.memory()).expect("replay");
                    }
                }
                for p in 0..WINDOW {
                    let iova = Iova(IOVA + p * PAGE);
                    let want = model.get(&p).and_then(|g| ram.host(*g));
                    let seen = selftest::md_check_map(&fd, hwpt, iova, want.unwrap_or(std::ptr::null()), PAGE);
                    match want {
                        Some(_) => prop_assert!(seen.is_ok(), "page {p}: the kernel does not map it to its GPA's memory: {seen:?}"),
                        None => prop_assert!(seen.is_err(), "page {p}: mapped in the kernel, not in the model"),
                    }
                    prop_assert_eq!(domain.translate(iova.raw()).map(|(g, _)| g / PAGE), model.get(&p).copied());
                }
            }
            drop(mock);
        }
    }

    /// Whether the kernel maps each page of `pages` GIOVA pages from `page` to the
    /// host memory of GPA page `gpa` on (`None`: maps none of them).
    fn kernel_maps(
        fd: &Iommufd,
        hwpt: iommufd::HwptId,
        ram: &Ram,
        page: u64,
        pages: u64,
        gpa: Option<u64>,
    ) -> bool {
        (0..pages).all(|k| {
            let iova = Iova(IOVA + (page + k) * PAGE);
            match gpa {
                Some(g) => {
                    let host = ram.host(g + k).expect("GPA in RAM");
                    selftest::md_check_map(fd, hwpt, iova, host, PAGE).is_ok()
                }
                None => selftest::md_check_map(fd, hwpt, iova, std::ptr::null(), PAGE).is_err(),
            }
        })
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu with CONFIG_IOMMUFD_TEST (cargo xtask vmtest)"]
    fn a_domain_heals_after_its_ioas_is_unmapped_behind_its_back() {
        let fd = Iommufd::open().expect("open");
        let ioas = Ioas::alloc(&fd).expect("IOAS");
        ioas.set_huge_pages(HugePages::Split).expect("CPU pages");
        let mut domain = ShadowDomain::<()>::new(ioas.clone(), HwptFlags::empty());
        let mock = MockDevice::alloc(&ioas, MockDeviceFlags::empty(), 1).expect("mock");
        domain.attach(mock.device()).expect("attach");
        let hwpt = domain.hwpts().pop().expect("a HWPT").id();
        let ram = Ram {
            present: [Some(region(0)), None, None],
        };
        let mem = ram.memory();
        // Three guest mappings of two pages: A (GPA page 0), B (8), C (16).
        for (page, gpa) in [(0, 0), (2, 8), (4, 16)] {
            domain
                .map(&mem, IOVA + page * PAGE, gpa * PAGE, 2 * PAGE, MapFlags::RW)
                .expect("map");
        }
        // The VMM unmaps B from the IOAS itself: the domain still records it.
        ioas.unmap(Iova(IOVA + 2 * PAGE), 2 * PAGE)
            .expect("VMM unmap");
        assert!(kernel_maps(&fd, hwpt, &ram, 2, 2, None));
        assert_eq!(
            domain.translate(IOVA + 2 * PAGE),
            Some((8 * PAGE, MapFlags::RW))
        );
        // A replay maps B again, and only B.
        let report = domain.replay(&mem).expect("replay");
        assert_eq!(
            (report.unmapped, report.mapped, report.unbacked),
            (0, 1, 0),
            "{report:?}"
        );
        assert!(
            kernel_maps(&fd, hwpt, &ram, 2, 2, Some(8)),
            "B is mapped again"
        );
        assert_eq!(
            domain.replay(&mem).expect("replay"),
            Default::default(),
            "nothing more to do"
        );
        // Behind its back again, then the guest unmaps B: the kernel has nothing
        // there (ENOENT), and what is gone counts as unmapped.
        ioas.unmap(Iova(IOVA + 2 * PAGE), 2 * PAGE)
            .expect("VMM unmap");
        assert_eq!(
            domain
                .unmap(IOVA + 2 * PAGE, 2 * PAGE)
                .expect("guest unmap of B"),
            2 * PAGE
        );
        assert_eq!(domain.translate(IOVA + 2 * PAGE), None);
        // Once more, B mapped and gone behind the domain's back, and the guest
        // unmaps from A's second page to C's first.
        domain
            .map(&mem, IOVA + 2 * PAGE, 8 * PAGE, 2 * PAGE, MapFlags::RW)
            .expect("map B");
        ioas.unmap(Iova(IOVA + 2 * PAGE), 2 * PAGE)
            .expect("VMM unmap");
        assert_eq!(
            domain.unmap(IOVA + PAGE, 4 * PAGE).expect("guest unmap"),
            4 * PAGE
        );
        assert!(
            kernel_maps(&fd, hwpt, &ram, 0, 1, Some(0)),
            "A's first page stays"
        );
        assert!(
            kernel_maps(&fd, hwpt, &ram, 1, 4, None),
            "the range is unmapped"
        );
        assert!(
            kernel_maps(&fd, hwpt, &ram, 5, 1, Some(17)),
            "C's last page stays"
        );
        assert_eq!(domain.kernel_mappings(), 2);
        // And the range can be mapped again: no stale kernel mapping is in the way.
        domain
            .map(&mem, IOVA + PAGE, 4 * PAGE, 4 * PAGE, MapFlags::READ)
            .expect("map again");
        assert!(kernel_maps(&fd, hwpt, &ram, 1, 4, Some(4)));
        drop(mock);
    }
}
