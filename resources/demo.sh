#!/usr/bin/env bash
# Sets up and boots a demo microVM: builds strato and the guest images
# (cached under ~/.cache/strato), then boots Linux with a virtio-blk root
# disk and the serial console on this terminal.
#
#   resources/demo.sh          on this machine's /dev/kvm
#   resources/demo.sh --lane   inside the x86 lane (tests/lane/lane.py), a
#                              QEMU VM with hardware-style KVM, so the shell
#                              appears even where /dev/kvm is software KVM
set -euo pipefail
cd "$(dirname "$0")/.."
lane=
case "${1:-}" in
    --lane) lane=1 ;;
    "") ;;
    *) echo "usage: resources/demo.sh [--lane]" >&2; exit 2 ;;
esac

echo "[demo] building strato (release)" >&2
cargo build --release --quiet -p api
echo "[demo] building the guest images (cached after the first run)" >&2
eval "$(bash resources/build.sh all)"

cmdline="console=ttyS0 reboot=k panic=1 root=/dev/vda rw strato_shell"
if [ -n "$lane" ]; then
    # The lane sees this machine's files read-only: the root disk is copied
    # into the lane's own /tmp there.
    echo "[demo] booting the x86 lane (about 10 s), then the microVM; 'exit' in the" >&2
    echo "[demo] guest shell ends the microVM and the lane" >&2
    exec python3 tests/lane/lane.py run --interactive -- sh -c \
        'cp "$1" /tmp/rootfs.ext4 && exec "$2" --log-level info run --kernel "$3" \
             --vcpus 2 --memory 256 --drive path=/tmp/rootfs.ext4 --cmdline "$4"' \
        demo "$ROOTFS" "$PWD/target/release/strato" "$VMLINUX" "$cmdline"
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cp "$ROOTFS" "$work/rootfs.ext4"   # the guest writes to its root disk

if [ -e /sys/module/kvm_pvm ]; then
    # Software KVM: see docs/platforms.md. Linux gets through its whole
    # kernel start-up (virtio probe, ext4 root) but cannot run user space.
    echo "[demo] /dev/kvm is software virtualization (kvm_pvm) here: Linux boots" >&2
    echo "[demo] its kernel, mounts the root disk and stops at the first system" >&2
    echo "[demo] call of init (about 20 s); on hardware KVM init opens a shell." >&2
    echo "[demo] resources/demo.sh --lane shows the shell here." >&2
    cmdline="console=ttyS0 earlycon=uart8250,io,0x3f8 reboot=k panic=-1 noxsave clearcpuid=popcnt,smap no_int3_selftest maxcpus=1 root=/dev/vda rw"
fi
echo "[demo] target/release/strato run --kernel $VMLINUX --vcpus 2 --memory 256 --drive path=rootfs.ext4 --cmdline \"$cmdline\"" >&2
target/release/strato --log-level info run --kernel "$VMLINUX" --vcpus 2 --memory 256 \
    --drive "path=$work/rootfs.ext4" --cmdline "$cmdline"
