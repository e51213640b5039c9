#!/usr/bin/env bash
# Lints: clippy on every crate, target and feature; any warning fails, and so does an
# `unsafe` block without a `// SAFETY:` comment.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo clippy --workspace --all-targets --all-features -- \
    -D warnings -D clippy::undocumented_unsafe_blocks
