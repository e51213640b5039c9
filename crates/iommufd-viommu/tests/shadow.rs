//! The shadow engine driven by virtio-iommu requests, checked with real DMA by
//! QEMU's `edu` device behind the emulated VT-d: the device DMAs to GIOVAs and the
//! bytes land at the GPAs the guest mapped, across guest memory regions; a partial
//! unmap blocks exactly the unmapped part; bad requests change nothing; memory
//! hot-remove and hot-add are replayed. An emulated device in the same domain
//! reads and writes by GIOVA through vm-memory's `IommuMemory` and meets the
//! bytes `edu` moved. Endpoints in no domain bypass (IOVA = GPA) or are blocked,
//! as the config's `bypass` says.
//!
//! Ignored on the host; `cargo xtask vmtest` runs them in the guest.

mod vfio {
    use std::os::fd::AsFd;
    use std::sync::Arc;

    use iommufd::vm_memory::{
        Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap, IommuMemory, Permissions,
    };
    use iommufd::{HwptFlags, Ioas, Iommufd, MapFlags};
    use iommufd_lab::edu::Edu;
    use iommufd_lab::pci;
    use iommufd_lab::vfio::VfioDevice as LabDevice;
    use iommufd_vfio::{Sysfs, VfioDevice};
    use iommufd_viommu::virtio::{Backend, EndpointMode, FaultReason, ResvMem, Status};
    use iommufd_viommu::{GuestRamSync, ShadowError};

    const KB: u64 = 1 << 10;
    const MB: u64 = 1 << 20;
    /// edu moves at most 4000 bytes at a time.
    const LEN: usize = 4000;

    fn head(t: u8) -> Vec<u8> {
        vec![t, 0, 0, 0]
    }

    fn attach(domain: u32, endpoint: u32) -> Vec<u8> {
        let mut b = head(1);
        b.extend(domain.to_le_bytes());
        b.extend(endpoint.to_le_bytes());
        b.extend([0; 8]);
        b
    }

    fn attach_bypass(domain: u32, endpoint: u32) -> Vec<u8> {
        let mut b = attach(domain, endpoint);
        b[12] = 1; // VIRTIO_IOMMU_ATTACH_F_BYPASS
        b
    }

    fn detach(domain: u32, endpoint: u32) -> Vec<u8> {
        let mut b = head(2);
        b.extend(domain.to_le_bytes());
        b.extend(endpoint.to_le_bytes());
        b.extend([0; 8]);
        b
    }

    fn map(domain: u32, iova: u64, len: u64, gpa: u64, flags: u32) -> Vec<u8> {
        let mut b = head(3);
        b.extend(domain.to_le_bytes());
        b.extend(iova.to_le_bytes());
        b.extend((iova + len - 1).to_le_bytes());
        b.extend(gpa.to_le_bytes());
        b.extend(flags.to_le_bytes());
        b
    }

    fn unmap(domain: u32, iova: u64, len: u64) -> Vec<u8> {
        let mut b = head(4);
        b.extend(domain.to_le_bytes());
        b.extend(iova.to_le_bytes());
        b.extend((iova + len - 1).to_le_bytes());
        b.extend([0; 4]);
        b
    }

    /// Sends one request; the status the device answered with.
    fn send(v: &mut Backend, ram: &GuestMemoryMmap, req: &[u8]) -> u8 {
        let mut tail = [0xffu8; 4];
        assert_eq!(v.request(ram, req, &mut tail), 4);
        tail[0]
    }

    fn pattern(seed: u8) -> Vec<u8> {
        (0..LEN)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Has the device write `seed`'s pattern to `iova` (fetching it from `src`,
    /// a GIOVA whose GPA holds it); the bytes now at `gpa`.
    fn dma_write(
        edu: &Edu,
        ram: &GuestMemoryMmap,
        src: (u64, u64),
        iova: u64,
        gpa: u64,
        seed: u8,
    ) -> bool {
        ram.write_slice(&pattern(seed), GuestAddress(src.1))
            .expect("write source");
        ram.write_slice(&[0u8; LEN], GuestAddress(gpa))
            .expect("clear target");
        let _ = edu.dma_from_memory(src.0, 0, LEN as u64);
        let _ = edu.dma_to_memory(0, iova, LEN as u64);
        let mut back = vec![0u8; LEN];
        ram.read_slice(&mut back, GuestAddress(gpa))
            .expect("read target");
        back == pattern(seed)
    }

    fn untouched(ram: &GuestMemoryMmap, gpa: u64) -> bool {
        let mut back = vec![0xffu8; LEN];
        ram.read_slice(&mut back, GuestAddress(gpa)).expect("read");
        back.iter().all(|b| *b == 0)
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn virtio_iommu_requests_drive_real_dma() {
        assert!(
            std::path::Path::new("/dev/iommu").exists(),
            "run in the guest lab"
        );
        let fd = Iommufd::open().expect("open");
        // Guest RAM: two adjacent 1 MiB regions (separate host memory), and 16 MiB.
        let ram = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(MB), MB as usize),
            (GuestAddress(2 * MB), MB as usize),
            (GuestAddress(16 * MB), 16 * MB as usize),
        ])
        .expect("guest RAM");
        let bdf = pci::isolated_edu().expect("an edu device alone in its group");
        let dev = VfioDevice::open_pci(&Sysfs::default(), bdf.bdf().parse().expect("BDF"))
            .expect("open the edu cdev")
            .bind(&fd, 0x51)
            .expect("bind");
        let edu = Edu::new(&LabDevice::from_owned_fd(
            dev.as_fd().try_clone_to_owned().expect("dup"),
        ))
        .expect("edu");

        let mut v = Backend::new(&fd, HwptFlags::empty());
        let msi = ResvMem {
            msi: true,
            start: 0xfee0_0000,
            end: 0xfeef_ffff,
        };
        v.add_endpoint(3, &dev, vec![msi]).expect("endpoint");
        assert_eq!(
            send(&mut v, &ram, &attach(7, 4)),
            Status::NoEnt as u8,
            "unknown endpoint"
        );
        assert_eq!(send(&mut v, &ram, &attach(7, 3)), Status::Ok as u8);
        assert_eq!(v.domain_of(3), Some(7));

        // The device's buffer: 16 KiB at GIOVA 4 MiB, GPA 2 MiB - 8 KiB: half in
        // each of the adjacent regions.
        const IOVA: u64 = 4 * MB;
        const GPA: u64 = 2 * MB - 8 * KB;
        // And a source buffer in the big region.
        const SRC: (u64, u64) = (8 * MB, 20 * MB);
        assert_eq!(
            send(&mut v, &ram, &map(7, IOVA, 16 * KB, GPA, 3)),
            Status::Ok as u8
        );
        assert_eq!(
            send(&mut v, &ram, &map(7, SRC.0, 4 * KB, SRC.1, 1)),
            Status::Ok as u8
        );
        let d = v.domain(7).expect("domain 7");
        assert_eq!(
            d.kernel_mappings(),
            3,
            "the buffer split at the region boundary"
        );
        assert_eq!(d.mappings().len(), 2, "but one mapping to the guest");
        assert_eq!(
            d.translate(IOVA + 12 * KB),
            Some((2 * MB + 4 * KB, MapFlags::RW))
        );

        for (page, seed) in [(0, 1), (1, 2), (2, 3), (3, 4)] {
            assert!(
                dma_write(
                    &edu,
                    &ram,
                    SRC,
                    IOVA + page * 4 * KB,
                    GPA + page * 4 * KB,
                    seed
                ),
                "page {page}: DMA to the GIOVA lands at the GPA"
            );
        }

        // Bad requests: refused with the right status, nothing changes.
        let before = v.domain(7).expect("domain").mappings();
        for (req, status, what) in [
            (
                map(7, 32 * MB, 4 * KB, 64 * MB, 3),
                Status::Range,
                "GPA outside guest RAM",
            ),
            (
                map(7, 32 * MB, 8 * KB, 2 * MB - 4 * KB, 3),
                Status::Ok,
                "GPA across adjacent regions",
            ),
            (
                map(7, IOVA + 4 * KB, 4 * KB, 16 * MB, 3),
                Status::Inval,
                "overlap",
            ),
            (
                map(7, 32 * MB + 0x800, 4 * KB, 16 * MB, 3),
                Status::Inval,
                "unaligned",
            ),
            (
                map(7, 48 * MB, 4 * KB, 16 * MB, 0),
                Status::Inval,
                "no permission",
            ),
            (map(7, 48 * MB, 4 * KB, 16 * MB, 7), Status::Unsupp, "MMIO"),
            (
                map(9, 48 * MB, 4 * KB, 16 * MB, 3),
                Status::NoEnt,
                "unknown domain",
            ),
            (unmap(9, 0, 4 * KB), Status::NoEnt, "unknown domain"),
            (
                unmap(7, 48 * MB, 4 * KB),
                Status::Ok,
                "nothing mapped there: fine",
            ),
            (
                unmap(7, 32 * MB, 8 * KB),
                Status::Ok,
                "the one mapped above",
            ),
            (detach(7, 4), Status::NoEnt, "unknown endpoint"),
            (detach(8, 3), Status::NoEnt, "unknown domain"),
            (vec![3, 0, 0, 0, 7], Status::Inval, "cut short"),
        ] {
            assert_eq!(send(&mut v, &ram, &req), status as u8, "{what}");
        }
        assert_eq!(v.domain(7).expect("domain").mappings(), before, "unchanged");

        // Partial unmap of the buffer's second page: exactly that page is blocked.
        assert_eq!(
            send(&mut v, &ram, &unmap(7, IOVA + 4 * KB, 4 * KB)),
            Status::Ok as u8
        );
        assert_eq!(v.domain(7).expect("domain").translate(IOVA + 4 * KB), None);
        assert!(!dma_write(&edu, &ram, SRC, IOVA + 4 * KB, GPA + 4 * KB, 5));
        assert!(
            untouched(&ram, GPA + 4 * KB),
            "DMA reached an unmapped page"
        );
        for (page, seed) in [(0, 6), (2, 7), (3, 8)] {
            assert!(
                dma_write(
                    &edu,
                    &ram,
                    SRC,
                    IOVA + page * 4 * KB,
                    GPA + page * 4 * KB,
                    seed
                ),
                "page {page} still mapped after the partial unmap"
            );
        }

        // Hot-remove the second region: replay unmaps what pointed into it.
        let (ram2, gone) = ram
            .remove_region(GuestAddress(2 * MB), MB)
            .expect("hot-remove");
        let r = v.replay(&ram2).expect("replay");
        assert_eq!((r.unmapped, r.mapped, r.unbacked), (1, 0, 1));
        let old = GuestMemoryMmap::from_arc_regions(vec![gone]).expect("the removed region");
        old.write_slice(&[0u8; LEN], GuestAddress(2 * MB))
            .expect("clear");
        let _ = edu.dma_to_memory(0, IOVA + 8 * KB, LEN as u64);
        assert!(untouched(&old, 2 * MB), "DMA reached a removed region");
        assert!(
            dma_write(&edu, &ram2, SRC, IOVA, GPA, 9),
            "the rest still works"
        );
        assert_eq!(
            v.replay(&ram2).expect("replay"),
            Default::default(),
            "idempotent"
        );

        // New memory at the same GPAs: mapped again, the DMA goes to it.
        let new = Arc::new(
            GuestRegionMmap::from_range(GuestAddress(2 * MB), MB as usize, None).expect("DIMM"),
        );
        let ram3 = ram2.insert_region(new).expect("hot-add");
        let r = v.replay(&ram3).expect("replay");
        assert_eq!((r.unmapped, r.mapped, r.unbacked), (0, 1, 0));
        assert!(dma_write(
            &edu,
            &ram3,
            SRC,
            IOVA + 12 * KB,
            2 * MB + 4 * KB,
            10
        ));

        // PROBE: the MSI window.
        let mut probe = head(5);
        probe.extend(3u32.to_le_bytes());
        probe.extend([0u8; 64]);
        let mut answer = vec![0xffu8; 64 + 4];
        assert_eq!(v.request(&ram3, &probe, &mut answer), 68);
        assert_eq!(answer[64], Status::Ok as u8);
        assert_eq!(&answer[..4], &[1, 0, 20, 0], "RESV_MEM");
        assert_eq!(answer[4], 1, "MSI");

        // DETACH: the domain goes with its last endpoint, and the DMA is blocked.
        assert_eq!(send(&mut v, &ram3, &detach(7, 3)), Status::Ok as u8);
        assert!(v.domain_ids().is_empty());
        assert!(!dma_write(&edu, &ram3, SRC, IOVA, GPA, 11));
        assert!(untouched(&ram3, GPA));
        drop(edu);
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn an_emulated_device_shares_a_domain_with_edu() {
        let fd = Iommufd::open().expect("open");
        let ram = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(MB), MB as usize),
            (GuestAddress(2 * MB), MB as usize),
            (GuestAddress(16 * MB), 16 * MB as usize),
        ])
        .expect("guest RAM");
        let bdf = pci::isolated_edu().expect("an edu device alone in its group");
        let dev = VfioDevice::open_pci(&Sysfs::default(), bdf.bdf().parse().expect("BDF"))
            .expect("open the edu cdev")
            .bind(&fd, 0x52)
            .expect("bind");
        let edu = Edu::new(&LabDevice::from_owned_fd(
            dev.as_fd().try_clone_to_owned().expect("dup"),
        ))
        .expect("edu");
        let mut v = Backend::new(&fd, HwptFlags::empty());
        v.add_endpoint(3, &dev, vec![]).expect("edu endpoint");
        let ep = v
            .add_emulated_endpoint(5, vec![])
            .expect("emulated endpoint");
        assert!(v.add_emulated_endpoint(3, vec![]).is_err(), "id taken");
        // The device model's memory: addresses are endpoint 5's IOVAs.
        let dma = IommuMemory::new(ram.clone(), ep.clone(), true, ());
        let mut buf = vec![0u8; LEN];
        assert!(
            dma.read_slice(&mut buf, GuestAddress(MB)).is_err(),
            "blocked before ATTACH"
        );

        const IOVA: u64 = 4 * MB;
        const GPA: u64 = 2 * MB - 8 * KB;
        const SRC: (u64, u64) = (8 * MB, 20 * MB);
        assert_eq!(send(&mut v, &ram, &attach(7, 3)), Status::Ok as u8);
        assert_eq!(
            send(&mut v, &ram, &map(7, IOVA, 16 * KB, GPA, 3)),
            Status::Ok as u8
        );
        // The emulated endpoint joins after the MAP: it sees it all the same.
        assert_eq!(send(&mut v, &ram, &attach(7, 5)), Status::Ok as u8);
        assert_eq!((v.domain_of(5), ep.mode()), (Some(7), EndpointMode::Mapped));
        assert_eq!(
            send(&mut v, &ram, &map(7, SRC.0, 4 * KB, SRC.1, 1)),
            Status::Ok as u8
        );

        // edu writes each page of the buffer; the device model reads them by
        // GIOVA, the second and third pages from different regions.
        for page in 0..4u64 {
            let seed = page as u8 + 1;
            assert!(dma_write(
                &edu,
                &ram,
                SRC,
                IOVA + page * 4 * KB,
                GPA + page * 4 * KB,
                seed
            ));
            dma.read_slice(&mut buf, GuestAddress(IOVA + page * 4 * KB))
                .expect("emulated read");
            assert_eq!(buf, pattern(seed), "page {page}: the bytes edu wrote");
        }
        // The device model writes by GIOVA across the region boundary; the bytes
        // land at the GPAs, and edu reads them from the same GIOVA.
        let across = IOVA + 8 * KB - 2000;
        dma.write_slice(&pattern(40), GuestAddress(across))
            .expect("emulated write");
        let mut at_gpa = vec![0u8; LEN];
        ram.read_slice(&mut at_gpa, GuestAddress(GPA + 8 * KB - 2000))
            .expect("read");
        assert_eq!(at_gpa, pattern(40));
        ram.write_slice(&[0u8; LEN], GuestAddress(GPA))
            .expect("clear");
        let _ = edu.dma_from_memory(across, 0, LEN as u64);
        let _ = edu.dma_to_memory(0, IOVA, LEN as u64);
        ram.read_slice(&mut at_gpa, GuestAddress(GPA))
            .expect("read");
        assert_eq!(at_gpa, pattern(40), "edu read what the device model wrote");
        // Read-only for the device model too.
        assert!(
            dma.write_slice(&[1u8; 16], GuestAddress(SRC.0)).is_err(),
            "read-only mapping"
        );
        assert!(dma.read_slice(&mut buf, GuestAddress(SRC.0)).is_ok());

        // A partial UNMAP: exactly that page goes, for both.
        assert_eq!(
            send(&mut v, &ram, &unmap(7, IOVA + 4 * KB, 4 * KB)),
            Status::Ok as u8
        );
        assert!(
            dma.read_slice(&mut buf, GuestAddress(IOVA + 4 * KB))
                .is_err()
        );
        assert!(
            dma.read_slice(&mut buf, GuestAddress(IOVA + 4 * KB - 8))
                .is_err(),
            "a read into it"
        );
        assert!(dma.read_slice(&mut buf, GuestAddress(IOVA)).is_ok());
        assert!(
            dma.read_slice(&mut buf, GuestAddress(IOVA + 8 * KB))
                .is_ok()
        );
        assert!(!dma_write(&edu, &ram, SRC, IOVA + 4 * KB, GPA + 4 * KB, 9));
        // What the device model reports on the event queue for it.
        let fault = ep
            .fault(IOVA + 4 * KB, 8, Permissions::Read)
            .expect("a fault");
        assert_eq!(
            (fault.reason, fault.endpoint, fault.address),
            (FaultReason::Mapping, 5, Some(IOVA + 4 * KB))
        );
        assert_eq!(ep.fault(IOVA, 8, Permissions::ReadWrite), None);

        // DETACH of the device model: blocked; edu keeps the domain.
        assert_eq!(send(&mut v, &ram, &detach(7, 5)), Status::Ok as u8);
        assert_eq!(ep.mode(), EndpointMode::Blocked);
        assert!(dma.read_slice(&mut buf, GuestAddress(IOVA)).is_err());
        assert!(dma_write(&edu, &ram, SRC, IOVA, GPA, 10), "edu still works");

        // A bypass domain: no page table for passthrough devices was given, but
        // the device model reaches guest RAM at IOVA = GPA.
        assert_eq!(send(&mut v, &ram, &attach_bypass(8, 5)), Status::Ok as u8);
        assert_eq!(ep.mode(), EndpointMode::Bypass);
        dma.read_slice(&mut buf, GuestAddress(GPA))
            .expect("bypass read");
        assert_eq!(buf, pattern(10));
        assert_eq!(
            send(&mut v, &ram, &attach_bypass(8, 3)),
            Status::Unsupp as u8
        );
        assert_eq!(v.domain_of(3), Some(7), "edu stays where it was");
        // And back into domain 7: the mappings again, as they are now.
        assert_eq!(send(&mut v, &ram, &attach(7, 5)), Status::Ok as u8);
        assert!(
            v.domain_ids() == [7],
            "the bypass domain went with its endpoint"
        );
        assert!(
            dma.read_slice(&mut buf, GuestAddress(IOVA + 4 * KB))
                .is_err()
        );
        dma.read_slice(&mut buf, GuestAddress(IOVA))
            .expect("mapped again");

        // Unplug: the passthrough call refuses it; the emulated one blocks it.
        assert!(v.remove_endpoint(5).is_err());
        assert_eq!(v.domain_of(5), Some(7), "unchanged");
        let gone = v.remove_emulated_endpoint(5).expect("unplug");
        assert!(gone.same(&ep));
        assert!(dma.read_slice(&mut buf, GuestAddress(IOVA)).is_err());
        assert!(
            v.remove_emulated_endpoint(3).is_err(),
            "edu is no emulated endpoint"
        );
        assert!(dma_write(&edu, &ram, SRC, IOVA, GPA, 11), "edu unaffected");

        // The vIOMMU goes first (device unplug order is the VMM's): a device
        // model keeping its view reaches nothing, nor does edu.
        let blk = v.add_emulated_endpoint(6, vec![]).expect("endpoint 6");
        assert_eq!(send(&mut v, &ram, &attach(7, 6)), Status::Ok as u8);
        let blk_dma = IommuMemory::new(ram.clone(), blk.clone(), true, ());
        assert!(blk_dma.read_slice(&mut buf, GuestAddress(IOVA)).is_ok());
        drop(v);
        assert_eq!(blk.mode(), EndpointMode::Blocked);
        assert!(blk_dma.read_slice(&mut buf, GuestAddress(IOVA)).is_err());
        assert!(!dma_write(&edu, &ram, SRC, IOVA, GPA, 12));
        assert!(
            untouched(&ram, GPA),
            "edu's DMA went through a dropped vIOMMU"
        );
        drop((edu, dev, fd));
    }

    #[test]
    #[ignore = "guest lab: needs /dev/iommu, VT-d and an edu device (cargo xtask vmtest)"]
    fn endpoints_in_no_domain_bypass_when_the_config_says_so() {
        let fd = Iommufd::open().expect("open");
        let ram = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(MB), 2 * MB as usize),
            (GuestAddress(16 * MB), 16 * MB as usize),
        ])
        .expect("guest RAM");
        // The VMM's IOAS of guest RAM at IOVA = GPA, for bypass.
        let ram_ioas = Ioas::alloc(&fd).expect("IOAS");
        let mut ram_sync = GuestRamSync::new(ram_ioas.clone(), MapFlags::RW);
        ram_sync.sync(&ram).expect("guest RAM mapped");
        let bdf = pci::isolated_edu().expect("an edu device alone in its group");
        let dev = VfioDevice::open_pci(&Sysfs::default(), bdf.bdf().parse().expect("BDF"))
            .expect("open the edu cdev")
            .bind(&fd, 0x53)
            .expect("bind");
        let edu = Edu::new(&LabDevice::from_owned_fd(
            dev.as_fd().try_clone_to_owned().expect("dup"),
        ))
        .expect("edu");
        // By GPA: the source and the target.
        const SRC: u64 = 20 * MB;
        const GPA: u64 = 2 * MB - 8 * KB;
        let identity = |edu: &Edu, seed| dma_write(edu, &ram, (SRC, SRC), GPA, GPA, seed);

        // Without a page table for bypass, passthrough endpoints cannot bypass.
        let mut v = Backend::<()>::new(&fd, HwptFlags::empty());
        v.add_endpoint(3, &dev, vec![]).expect("endpoint");
        assert!(matches!(
            v.set_unattached_bypass(true),
            Err(ShadowError::Unsupported { .. })
        ));
        assert!(!v.unattached_bypass(), "unchanged");
        drop(v);

        let mut v = Backend::new(&fd, HwptFlags::empty()).with_bypass(&ram_ioas);
        v.add_endpoint(3, &dev, vec![]).expect("endpoint");
        let ep = v
            .add_emulated_endpoint(5, vec![])
            .expect("emulated endpoint");
        let dma = IommuMemory::new(ram.clone(), ep.clone(), true, ());
        let mut buf = vec![0u8; LEN];
        assert!(!identity(&edu, 1), "blocked: no domain, no bypass");
        assert!(untouched(&ram, GPA));
        assert!(dma.read_slice(&mut buf, GuestAddress(GPA)).is_err());

        // Boot bypass: both reach guest RAM at IOVA = GPA.
        v.set_unattached_bypass(true).expect("bypass");
        assert!(identity(&edu, 2), "edu bypasses");
        dma.read_slice(&mut buf, GuestAddress(GPA))
            .expect("bypass read");
        assert_eq!(buf, pattern(2), "the device model reads what edu wrote");

        // The driver attaches edu to a domain: translated, no more bypass.
        assert_eq!(send(&mut v, &ram, &attach(7, 3)), Status::Ok as u8);
        assert_eq!(
            send(&mut v, &ram, &map(7, 4 * MB, 4 * KB, GPA, 3)),
            Status::Ok as u8
        );
        assert_eq!(
            send(&mut v, &ram, &map(7, 8 * MB, 4 * KB, SRC, 1)),
            Status::Ok as u8
        );
        assert!(dma_write(&edu, &ram, (8 * MB, SRC), 4 * MB, GPA, 3));
        assert!(!identity(&edu, 4), "IOVA = GPA is not mapped in domain 7");
        assert!(untouched(&ram, GPA));
        // DETACH: back to bypass, and the domain goes.
        assert_eq!(send(&mut v, &ram, &detach(7, 3)), Status::Ok as u8);
        assert!(v.domain_ids().is_empty());
        assert!(identity(&edu, 5), "bypass again after DETACH");

        // The driver clears the config's bypass: blocked.
        v.set_unattached_bypass(false).expect("no bypass");
        assert!(!identity(&edu, 6));
        assert!(untouched(&ram, GPA));
        assert_eq!(ep.mode(), EndpointMode::Blocked);
        // On again, then unplug: the device is detached, not left in bypass.
        v.set_unattached_bypass(true).expect("bypass");
        assert!(dev.attached_to().is_some());
        v.remove_endpoint(3).expect("unplug");
        assert!(dev.attached_to().is_none(), "unplugged: detached");
        assert!(!identity(&edu, 7));
        drop((edu, ram_sync));
    }
}
