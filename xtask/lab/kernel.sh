#!/usr/bin/env bash
# Provision a guest-lab kernel from Debian's kernel source package.
#
#   kernel.sh SERIES [--source-only]
#
# SERIES is "7" (the newest linux-source-7.* Debian serves, from trixie-backports)
# or "6.12" (linux-source-6.12 from the machine's own apt suites).
#
# Prints, as its last line of stdout, the directory holding the result:
#   bzImage, config, version, and for 7.x also selftests/ (the kernel's iommufd
#   selftests, statically linked) and uapi/ (the headers iommufd-uapi is generated
#   from).
# With --source-only, prints the extracted (patched) source tree instead and builds
# nothing.
#
# Everything lands in $IOMMUFD_LAB_CACHE (default ~/.cache/iommufd-lab), outside the
# checkout. A built kernel is keyed by (package version, compiler, fragments, patches,
# recipe version): a warm run only looks it up. The build tree is kept, so a changed
# fragment rebuilds incrementally.
set -euo pipefail

series=${1:?usage: kernel.sh 7|6.12 [--source-only]}
mode=${2:-build}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${IOMMUFD_LAB_CACHE:-$HOME/.cache/iommufd-lab}
# Bump when the build steps below change in a way that changes the artifacts.
recipe=3

log() { echo "kernel.sh[$series]: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$cache"
exec 9>"$cache/lock-$series"
flock 9

need_tools() {
    local missing=()
    command -v gcc >/dev/null || missing+=(build-essential)
    command -v bc >/dev/null || missing+=(bc)
    command -v flex >/dev/null || missing+=(flex)
    command -v bison >/dev/null || missing+=(bison)
    command -v cpio >/dev/null || missing+=(cpio)
    command -v xz >/dev/null || missing+=(xz-utils)
    [ -e /usr/include/libelf.h ] || missing+=(libelf-dev)
    [ -e /usr/include/openssl/ssl.h ] || missing+=(libssl-dev)
    [ -e /usr/lib/x86_64-linux-gnu/libcap.a ] || missing+=(libcap-dev)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
    fi
}

# system_mirror: the machine's Debian mirror.
. "$here/mirror.sh"

# apt with a private sources list and state, so the system's configuration is untouched.
papt_dir=$cache/apt-$series
papt_opts=()
private_apt() {
    local suite=$1
    mkdir -p "$papt_dir/lists/partial" "$papt_dir/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $(system_mirror) $suite main" \
        > "$papt_dir/sources.list"
    papt_opts=(-o "Dir::Etc::SourceList=$papt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$papt_dir/lists" -o "Dir::Cache=$papt_dir/cache"
        -o Dir::State::status=/var/lib/dpkg/status)
    # Refresh at most once an hour.
    if [ -z "$(find "$papt_dir/lists" -maxdepth 1 -name '*Packages*' -mmin -60 2>/dev/null)" ]; then
        log "apt-get update ($suite, private state in $papt_dir)"
        apt-get "${papt_opts[@]}" update -qq >&2 || die "apt-get update for $suite failed"
    fi
}

case "$series" in
    7)
        private_apt trixie-backports
        pkg=$(apt-cache "${papt_opts[@]}" search --names-only '^linux-source-7\.[0-9]+$' \
            | awk '{print $1}' | sort -V | tail -n 1)
        [ -n "$pkg" ] || die "no linux-source-7.* in trixie-backports"
        ;;
    6.12)
        # The machine's own suites carry it (bookworm-security): use the system's apt.
        pkg=linux-source-6.12
        # Read the whole answer first: `grep -q` closing the pipe early would make
        # apt-cache die of SIGPIPE, which pipefail turns into "no candidate".
        policy=$(apt-cache policy "$pkg")
        if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
            log "apt-get update"
            apt-get update -qq >&2
        fi
        ;;
    *) die "unknown series $series (want 7 or 6.12)" ;;
esac
ver=$(apt-cache "${papt_opts[@]}" policy "$pkg" | awk '/Candidate:/ {print $2}')
[ -n "$ver" ] && [ "$ver" != "(none)" ] || die "no candidate version for $pkg"
log "source package $pkg $ver"

src_root=$cache/src/$pkg-$ver
src=$src_root/linux
patches_dir=$here/patches/$series
if [ ! -e "$src_root/.extracted" ]; then
    need_tools
    rm -rf "$src_root"
    mkdir -p "$src_root/deb"
    log "downloading $pkg $ver"
    (cd "$src_root/deb" && apt-get "${papt_opts[@]}" download "$pkg=$ver" >&2)
    dpkg-deb -x "$src_root"/deb/*.deb "$src_root/deb/x"
    tarball=$(ls "$src_root"/deb/x/usr/src/linux-source-*.tar.*)
    log "extracting $(basename "$tarball")"
    mkdir -p "$src"
    tar -xf "$tarball" -C "$src" --strip-components=1
    rm -rf "$src_root/deb"
    if [ -d "$patches_dir" ]; then
        for p in "$patches_dir"/*.patch; do
            [ -e "$p" ] || continue
            log "applying $(basename "$p")"
            patch -d "$src" -p1 --forward < "$p" >&2 || die "patch $(basename "$p") does not apply"
        done
    fi
    touch "$src_root/.extracted"
fi

if [ "$mode" = "--source-only" ]; then
    echo "$src"
    exit 0
fi

fragments=("$here/config/common.config" "$here/config/$series.config")
key=$( {
    echo "recipe $recipe $pkg $ver"
    gcc --version | head -n 1
    cat "${fragments[@]}"
    cat "$patches_dir"/*.patch 2>/dev/null || true
} | sha256sum | cut -c1-16)
out=$cache/kernel/$pkg-$ver-$key
if [ -e "$out/.done" ]; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

need_tools
jobs=$(nproc)
log "configuring"
make -C "$src" -s x86_64_defconfig >&2
make -C "$src" -s kvm_guest.config >&2
cat "${fragments[@]}" > "$src_root/fragment.config"
(cd "$src" && scripts/kconfig/merge_config.sh -m .config "$src_root/fragment.config" >/dev/null)
make -C "$src" -s olddefconfig >&2

# olddefconfig silently drops options whose dependencies are unmet: verify.
bad=0
while IFS= read -r line; do
    case "$line" in
        CONFIG_*=y)
            grep -qx "$line" "$src/.config" || { log "wanted $line, .config has: $(grep "^${line%=y}=\|^# ${line%=y} " "$src/.config" || echo nothing)"; bad=1; } ;;
        "# CONFIG_"*" is not set")
            opt=${line#\# }; opt=${opt%% *}
            if grep -q "^$opt=y" "$src/.config"; then log "wanted $opt off, it is on"; bad=1; fi ;;
    esac
done < "$src_root/fragment.config"
[ "$bad" = 0 ] || die "kernel config does not have what the lab needs"

log "building bzImage with $jobs jobs (cold: 12-15 minutes on 2 cores)"
start=$(date +%s)
make -C "$src" -s -j"$jobs" bzImage > "$src_root/build.log" 2>&1 || { tail -n 40 "$src_root/build.log" >&2; die "kernel build failed"; }
log "bzImage built in $(( $(date +%s) - start )) s"

rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$src/arch/x86/boot/bzImage" "$out.tmp/bzImage"
cp "$src/.config" "$out.tmp/config"
make -C "$src" -s kernelrelease > "$out.tmp/version"
echo "$pkg $ver" > "$out.tmp/package"

if [ "$series" = 7 ]; then
    log "installing uapi headers and building the iommufd selftests"
    make -C "$src" -s headers >&2
    mkdir -p "$out.tmp/uapi" "$out.tmp/selftests"
    cp "$src/include/uapi/linux/iommufd.h" "$out.tmp/uapi/"
    cp "$src/drivers/iommu/iommufd/iommufd_test.h" "$out.tmp/uapi/"
    make -C "$src/tools/testing/selftests/iommu" -s clean >&2 || true
    make -C "$src/tools/testing/selftests/iommu" -s LDFLAGS=-static >&2 \
        || die "building the iommufd selftests failed"
    for t in iommufd iommufd_fail_nth; do
        cp "$src/tools/testing/selftests/iommu/$t" "$out.tmp/selftests/"
    done
fi
touch "$out.tmp/.done"
rm -rf "$out"
mv "$out.tmp" "$out"
log "done: $out"
echo "$out"
