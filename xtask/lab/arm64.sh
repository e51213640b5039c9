#!/usr/bin/env bash
# Provision the arm64 guest lab: a cross-built Linux 7.x kernel, QEMU 10 for
# aarch64 (its virt machine emulates an SMMUv3 that walks nested tables), and a
# static arm64 busybox.
#
#   arm64.sh
#
# Prints, as its last lines of stdout, where things are:
#   kernel=DIR    Image, config, version
#   qemu=DIR      an unpacked qemu-system-arm (usr/bin/qemu-system-aarch64, its
#                 modules and firmware), outside the system's own QEMU
#   busybox=FILE
#
# The kernel is the same Debian source package as the x86 "7" lab kernel
# (kernel.sh 7 --source-only), copied to a tree of its own, patched with
# patches/arm64/ and configured from allnoconfig plus config/arm64.config (a
# minimal kernel: about 4 minutes on 2 cores). QEMU comes from bookworm-backports
# and busybox from the machine's suite, both unpacked into the cache with
# dpkg-deb: installing qemu-system-arm 10 with apt would upgrade the x86 lab's
# QEMU. Everything lands in $IOMMUFD_LAB_CACHE (default ~/.cache/iommufd-lab).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${IOMMUFD_LAB_CACHE:-$HOME/.cache/iommufd-lab}
# Bump when the build steps below change in a way that changes the artifacts.
recipe=1

log() { echo "arm64.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/lock-arm64"
flock 9

missing=()
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.a ] || missing+=(libc6-dev-arm64-cross)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

# system_mirror: the machine's Debian mirror.
. "$here/mirror.sh"

# Downloads packages from SUITE for ARCH with a private apt state and unpacks them
# into DIR (once): fetch DIR SUITE ARCH PACKAGE...
fetch() {
    local dir=$1 suite=$2 arch=$3
    shift 3
    [ -e "$dir/.done" ] && return 0
    local state=$cache/apt-$suite-$arch
    mkdir -p "$state/lists/partial" "$state/cache/archives/partial"
    echo "deb [arch=$arch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(system_mirror) $suite main" \
        > "$state/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$state/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$state/lists" -o "Dir::Cache=$state/cache"
        -o Dir::State::status=/dev/null -o "APT::Architecture=$arch" -o "APT::Architectures=$arch")
    log "apt-get update ($suite, $arch)"
    apt-get "${opts[@]}" update -qq >&2 || die "apt-get update for $suite failed"
    rm -rf "$dir.tmp"
    mkdir -p "$dir.tmp/deb"
    (cd "$dir.tmp/deb" && apt-get "${opts[@]}" download "$@" >&2 2>/dev/null) \
        || die "downloading $* from $suite failed"
    for d in "$dir.tmp"/deb/*.deb; do
        dpkg-deb -x "$d" "$dir.tmp/root"
    done
    rm -rf "$dir.tmp/deb" "$dir"
    touch "$dir.tmp/.done"
    mv "$dir.tmp" "$dir"
}

# QEMU 10 (the same version of the three packages), unpacked.
qemu=$cache/qemu-arm-bpo12
fetch "$qemu" bookworm-backports amd64 qemu-system-arm qemu-system-common qemu-system-data
busybox=$cache/busybox-arm64
fetch "$busybox" bookworm arm64 busybox-static

# The kernel: the x86 lab's 7.x source, in a tree of its own.
src7=$("$here/kernel.sh" 7 --source-only | tail -n 1)
ver=$(basename "$(dirname "$src7")")
fragment=$here/config/arm64.config
key=$( {
    echo "recipe $recipe $ver"
    aarch64-linux-gnu-gcc --version | head -n 1
    cat "$fragment" "$here"/patches/arm64/*.patch
} | sha256sum | cut -c1-16)
out=$cache/kernel/arm64-$ver-$key
if [ ! -e "$out/.done" ]; then
    tree=$cache/src/arm64-$ver
    if [ ! -e "$tree/.copied" ]; then
        log "copying the $ver source tree"
        rm -rf "$tree"
        mkdir -p "$tree"
        cp -a "$src7/." "$tree/linux"
        make -C "$tree/linux" -s ARCH=arm64 mrproper >&2
        for p in "$here"/patches/arm64/*.patch; do
            log "applying $(basename "$p")"
            patch -d "$tree/linux" -p1 --forward < "$p" >&2 || die "patch $(basename "$p") does not apply"
        done
        touch "$tree/.copied"
    fi
    k=$tree/linux
    mk=(make -C "$k" -s ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-)
    log "configuring"
    "${mk[@]}" allnoconfig >&2
    (cd "$k" && scripts/kconfig/merge_config.sh -m .config "$fragment" >/dev/null)
    "${mk[@]}" olddefconfig >&2
    bad=0
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=y) grep -qx "$line" "$k/.config" || { log "wanted $line"; bad=1; } ;;
        esac
    done < "$fragment"
    [ "$bad" = 0 ] || die "kernel config does not have what the lab needs"
    log "building Image with $(nproc) jobs (cold: about 4 minutes on 2 cores)"
    start=$(date +%s)
    "${mk[@]}" -j"$(nproc)" Image > "$tree/build.log" 2>&1 \
        || { tail -n 40 "$tree/build.log" >&2; die "kernel build failed"; }
    log "Image built in $(( $(date +%s) - start )) s"
    rm -rf "$out.tmp"
    mkdir -p "$out.tmp"
    cp "$k/arch/arm64/boot/Image" "$k/.config" "$out.tmp/"
    mv "$out.tmp/.config" "$out.tmp/config"
    "${mk[@]}" kernelrelease > "$out.tmp/version"
    touch "$out.tmp/.done"
    rm -rf "$out"
    mv "$out.tmp" "$out"
fi

echo "kernel=$out"
echo "qemu=$qemu/root"
echo "busybox=$busybox/root/bin/busybox"
