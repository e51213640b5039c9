#!/bin/busybox sh
# /init of the guest lab. Written into the initramfs by `cargo xtask vmtest`.
#
# The kernel console is ttyS0 (ttyAMA0 on arm64; a log file on the host);
# everything the tests print goes to ttyS1 (ttyAMA1), which the host reads live. /lab/plan (written by the host for this
# boot) lists the programs to run, one per line:
#     NAME<TAB>COMMAND...
# The host trusts a run only if the guest ends with "@@lab status ok".
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/lab/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
mount -t tmpfs tmp /tmp
mkdir -p /dev/hugepages && mount -t hugetlbfs none /dev/hugepages

out=/dev/ttyS1
# arm64 (virt): the second PL011.
[ -e /dev/ttyAMA1 ] && out=/dev/ttyAMA1
exec >"$out" 2>&1

shell=0
grep -q 'lab.shell=1' /proc/cmdline && shell=1

echo "@@lab kernel $(uname -r)"
# The kernel's selftests map up to 128 MiB of 2 MiB pages.
echo 64 > /proc/sys/vm/nr_hugepages
echo "@@lab hugepages $(cat /proc/sys/vm/nr_hugepages)"
[ -e /dev/iommu ] && echo "@@lab /dev/iommu present" || echo "@@lab /dev/iommu MISSING"
[ -e /dev/kvm ] && echo "@@lab /dev/kvm present"

# Hand every edu device (1234:11e8) to vfio-pci; other devices keep their drivers.
for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ] || continue
    bdf=${d##*/}
    echo vfio-pci > "$d/driver_override"
    [ -e "$d/driver" ] && echo "$bdf" > "$d/driver/unbind"
    echo "$bdf" > /sys/bus/pci/drivers_probe
    group=$(basename "$(readlink "$d/iommu_group" 2>/dev/null)" 2>/dev/null)
    echo "@@lab edu $bdf group=${group:-none} driver=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null) cdev=$(ls "$d/vfio-dev" 2>/dev/null)"
done

status=ok
cd /tmp
while IFS="$(printf '\t')" read -r name cmd; do
    [ -n "$name" ] || continue
    echo "@@lab begin $name"
    sh -c "$cmd" </dev/null
    rc=$?
    echo "@@lab end $name rc=$rc"
    [ "$rc" = 0 ] || status=fail
done < /lab/plan

echo "@@lab status $status"
if [ "$shell" = 1 ]; then
    exec >/dev/console 2>&1 </dev/console
    echo "guest lab shell (tests printed to ttyS1); 'poweroff -f' to leave"
    setsid cttyhack sh
fi
sync
poweroff -f
