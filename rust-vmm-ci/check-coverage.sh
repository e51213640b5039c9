#!/usr/bin/env bash
# Coverage: line coverage of the host tests, measured by cargo llvm-cov, must stay
# within 0.5 of `coverage_score` in coverage_config_x86_64.json.
#
# The config (as in rust-vmm-ci):
#   coverage_score  the expected line coverage, in percent
#   exclude_path    a regex of file paths left out (--ignore-filename-regex)
#   crate_features  "all" (--all-features), "" (default features), or a comma list
#                   passed to --features (use crate/feature in this workspace)
#
# Tests marked #[ignore] are the guest-lab tests (cargo xtask vmtest): they are not
# run here, so what only they exercise counts as uncovered.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

config=coverage_config_x86_64.json
allowed_diff=0.5
# A version that builds with the workspace's toolchain (rustc 1.95; it needs 1.87).
llvm_cov_version=${CARGO_LLVM_COV_VERSION:-0.9.1}

if command -v rustup >/dev/null &&
    ! rustup component list --installed | grep -q '^llvm-tools'; then
    echo "check-coverage: installing llvm-tools-preview"
    rustup component add llvm-tools-preview
fi
if ! cargo llvm-cov --version >/dev/null 2>&1; then
    echo "check-coverage: installing cargo-llvm-cov $llvm_cov_version"
    cargo install cargo-llvm-cov --version "$llvm_cov_version" --locked
fi

read_config() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' \
        "$config" "$1"
}
expected=$(read_config coverage_score)
exclude=$(read_config exclude_path)
features=$(read_config crate_features)

case "$features" in
    all) feature_args=(--all-features) ;;
    "") feature_args=() ;;
    *) feature_args=(--features "$features") ;;
esac

summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
cargo llvm-cov --workspace "${feature_args[@]}" \
    --ignore-filename-regex "$exclude" \
    --summary-only --json --output-path "$summary"

python3 - "$summary" "$expected" "$allowed_diff" "$config" <<'EOF'
import json
import sys

summary, expected, allowed, config = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lines = json.load(open(summary))["data"][0]["totals"]["lines"]
if lines["count"] == 0:
    sys.exit("check-coverage: no lines measured; is exclude_path too broad?")
current = round(100.0 * lines["covered"] / lines["count"], 1)
print(f"check-coverage: line coverage {current}% "
      f"({lines['covered']} of {lines['count']} lines); coverage_score is {expected}%")
diff = round(current - expected, 1)
if diff < -allowed:
    sys.exit(f"check-coverage: coverage fell by {-diff} (more than {allowed}): "
             "add tests for the code that lost it")
if diff > allowed:
    sys.exit(f"check-coverage: coverage rose by {diff} (more than {allowed}): "
             f"raise coverage_score to {current} in {config}")
EOF
