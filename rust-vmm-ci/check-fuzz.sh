#!/usr/bin/env bash
# Fuzzing: builds every cargo-fuzz target in fuzz/ and runs each for SECONDS
# (default 20), starting from the committed seeds (fuzz/seeds/<target>) and the
# local corpus (fuzz/corpus/<target>, if any). Any crash, panic, leak, timeout or
# out-of-memory fails the check; the input that did it is kept in
# fuzz/artifacts/<target>/.
#
#   rust-vmm-ci/check-fuzz.sh [SECONDS]
#
# Needs the nightly toolchain (installed with the minimal profile if missing) and
# cargo-fuzz (installed if missing; CARGO_FUZZ_VERSION picks the version).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-20}
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS]  (a whole number of seconds per target, default 20)" >&2
    exit 2
fi
# A version that builds with the stable toolchain here (rustc 1.95).
cargo_fuzz_version=${CARGO_FUZZ_VERSION:-0.13.2}

toolchains=$(rustup toolchain list)
if ! grep -q '^nightly' <<<"$toolchains"; then
    echo "check-fuzz: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "check-fuzz: installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
fi

echo "check-fuzz: building the fuzz targets"
cargo +nightly fuzz build
mapfile -t targets < <(cargo +nightly fuzz list)
if [ ${#targets[@]} -eq 0 ]; then
    echo "check-fuzz: no fuzz targets found in fuzz/" >&2
    exit 1
fi

# New inputs go to a scratch corpus, so the committed seeds stay as they are.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

failed=()
for target in "${targets[@]}"; do
    corpus=$scratch/$target
    mkdir -p "$corpus"
    if [ -d "fuzz/seeds/$target" ]; then
        cp -R "fuzz/seeds/$target/." "$corpus/"
    fi
    dirs=("$corpus")
    if [ -d "fuzz/corpus/$target" ]; then
        dirs+=("fuzz/corpus/$target")
    fi
    log=$scratch/$target.log
    echo "check-fuzz: $target for ${seconds}s ($(find "${dirs[@]}" -type f | wc -l) inputs)"
    if cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
        cov=$(grep -o 'DONE .*cov: [0-9]*' "$log" | grep -o '[0-9]*$' || true)
        echo "check-fuzz: $target ok: ${runs:-?} runs, ${rate:-?} exec/s, cov ${cov:-?}"
    else
        echo "check-fuzz: $target FAILED; the end of its output:" >&2
        tail -n 60 "$log" >&2
        failed+=("$target")
    fi
done

if [ ${#failed[@]} -gt 0 ]; then
    echo "check-fuzz: failed: ${failed[*]} (inputs in fuzz/artifacts/; reproduce with" \
        "cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE)" >&2
    exit 1
fi
echo "check-fuzz: ${#targets[@]} targets ran ${seconds}s each without a crash"
