#!/usr/bin/env bash
# Miri over the host unit tests of iommufd and iommufd-viommu: the pointer code (volatile copies,
# byte decoders, bitmaps) checked for undefined behaviour. Tests that make real
# syscalls Miri cannot run (mmap of shared memory, ioctl) are #[cfg_attr(miri, ignore)].
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal
fi
rustup component add --toolchain nightly miri >/dev/null
cargo +nightly miri setup >/dev/null 2>&1
# Isolation off: a few tests open /dev/null (no ioctl) or read fuzz seeds.
MIRIFLAGS=-Zmiri-disable-isolation cargo +nightly miri test -p iommufd --lib --all-features
# The PASID tables' lock-free radix arrays (leaf publication, reads racing writes).
MIRIFLAGS=-Zmiri-disable-isolation cargo +nightly miri test -p iommufd-viommu --lib
