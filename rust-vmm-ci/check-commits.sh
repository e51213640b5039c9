#!/usr/bin/env bash
# Commit titles: the first line of every commit message is not empty and is at most
# 60 characters long.
#
# Usage: check-commits.sh [BASE]
#   With BASE (any revision), checks the commits in BASE..HEAD; without it, every
#   commit reachable from HEAD.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

max_len=60
# Count characters, not bytes, in titles that are not plain ASCII.
export LC_ALL=C.UTF-8

if [ $# -gt 1 ]; then
    echo "usage: $0 [BASE]" >&2
    exit 2
fi

if [ $# -eq 1 ] && [ -n "$1" ]; then
    if ! git rev-parse --quiet --verify "$1^{commit}" >/dev/null; then
        echo "check-commits: '$1' is not a commit" >&2
        exit 2
    fi
    range="$1..HEAD"
else
    range="HEAD"
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Two NUL-terminated fields per commit: the abbreviated hash, then the whole message.
git log -z --format='%h%x00%B' "$range" >"$log"

checked=0
bad=0
while IFS= read -r -d '' hash && IFS= read -r -d '' message; do
    checked=$((checked + 1))
    title=${message%%$'\n'*}
    if [ -z "${title//[[:space:]]/}" ]; then
        echo "$hash: empty commit title"
        bad=$((bad + 1))
    elif [ ${#title} -gt "$max_len" ]; then
        echo "$hash: title is ${#title} characters (at most $max_len): $title"
        bad=$((bad + 1))
    fi
done <"$log"

if [ "$bad" -gt 0 ]; then
    echo "check-commits: $bad of $checked commit(s) in $range have a bad title" >&2
    exit 1
fi
echo "check-commits: $checked commit(s) in $range have good titles"
