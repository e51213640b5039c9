#!/usr/bin/env bash
# Formatting: the whole workspace must be as `cargo fmt` leaves it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo fmt --all -- --check
