#!/usr/bin/env bash
# Docs: rustdoc on every crate and feature; any rustdoc warning (a broken intra-doc
# link, say) fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
