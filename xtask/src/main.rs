//! `cargo xtask`: the project's developer tasks.
//!
//! - `cargo xtask vmtest`: run the crates' kernel tests inside the guest lab (a Linux
//!   kernel built from Debian's source package, booted under QEMU with an emulated
//!   VT-d IOMMU and `edu` PCI devices).
//! - `cargo xtask demo`: the end-to-end passthrough demo in the lab guest.
//! - `cargo xtask bench`: the iommufd map/unmap benchmark (typed API against raw
//!   ioctls) in the lab guest.
//! - `cargo xtask test`: everything: host tests, then the guest lab on both x86
//!   kernels and on arm64, then the kernel's own iommufd selftests; closes with one
//!   cargo-style result line.
//!
//! Run `cargo xtask help` for the options.

mod lab;

use std::process::ExitCode;

fn usage() -> &'static str {
    "usage:
  cargo xtask demo [--kernel K] [--arch arm64 [--nested]] [--verbose] [ARGS...]
      the end-to-end passthrough demo (iommufd-vfio's `passthrough` example) in the
      lab guest: guest RAM mapped at IOVA = GPA, an edu device bound, DMA verified;
      with --arch arm64 --nested, through a guest stage 1 over the IOAS (emulated
      SMMUv3); ARGS go to the example (default kernel: 7)
  cargo xtask bench [--kernel K] [--verbose] [FILTER...]
      the iommufd crate's map_unmap criterion benchmark (IOAS map + unmap through the
      typed API against raw ioctls, 4 KiB to 64 MiB, with and without a VT-d domain)
      in the lab guest, then the typed/raw ratios; FILTER goes to criterion (default
      kernel: 7)
  cargo xtask test [--timeout SECS] [--test-timeout SECS]
      host tests (cargo test --workspace), then vmtest on both x86 kernels and on
      arm64, then the kernel's own iommufd selftests; one closing result line
  cargo xtask vmtest [OPTIONS] [FILTER...]
      run the crates' guest tests (the #[ignore]d ones marked for the lab) in QEMU
      --kernel K           7 (newest linux-source-7.*), 6.12, all (default), or a bzImage path
      --arch arm64         the arm64 lab instead: Linux 7.x cross-built, QEMU 10's virt
                           machine with its emulated SMMUv3 and edu devices (VT-d and
                           KVM tests are not planned there)
      --kernel-selftests   run the kernel's own iommufd selftests (7.x) instead
      --shell              keep a shell open on the guest console after the tests
      --timeout SECS       hard limit per boot (default 1800)
      --test-timeout SECS  limit per lab test, each run in its own process (default 300):
                           a test that hangs is killed and fails; the boot goes on
      --verbose            print the guest kernel log after each boot
      FILTER               run only tests whose name contains FILTER (as cargo test)

environment: IOMMUFD_LAB_CACHE (default ~/.cache/iommufd-lab) holds kernel sources
and built kernels, outside the checkout."
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("vmtest") => lab::Options::parse(&args[1..]).and_then(|o| lab::vmtest(&o)),
        Some("demo") => lab::Options::parse(&args[1..]).and_then(|o| lab::demo(&o)),
        Some("bench") => lab::Options::parse(&args[1..]).and_then(|o| lab::bench(&o)),
        Some("test") => lab::Options::parse(&args[1..]).and_then(|o| lab::test_all(&o)),
        Some("help" | "-h" | "--help") | None => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Some(other) => Err(format!("unknown task '{other}'\n{}", usage())),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::from(2)
        }
    }
}
