#!/usr/bin/env bash
# Every rust-vmm-ci check, in order, stopping at the first that fails.
#
# COMMIT_BASE: check-commits looks only at the commits in COMMIT_BASE..HEAD; unset or
# empty, at every commit reachable from HEAD.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

run() {
    local name=$1
    shift
    printf '\n==== %s ====\n' "$name"
    if ! "$@"; then
        printf '\n==== %s FAILED ====\n' "$name" >&2
        exit 1
    fi
}

run style ./check-style.sh
run clippy ./check-clippy.sh
run doc ./check-doc.sh
run commits ./check-commits.sh ${COMMIT_BASE:+"$COMMIT_BASE"}
run coverage ./check-coverage.sh
printf '\n==== all checks passed ====\n'
