#!/usr/bin/env python3
"""The test lanes: run a command where /dev/kvm is hardware-style KVM.

The lane is a QEMU TCG virtual machine with `-cpu max` (an emulated AMD
CPU with SVM) running Debian's generic kernel, which loads `kvm_amd`. Inside
it strato gets a KVM that behaves like a real host's: Linux user space, TCP,
distribution kernels. The lane VM sees this machine's root file system
read-only over virtio-9p (so the test binaries, the checkout and the image
cache are where they are on the host), with fresh /tmp, /run and /dev, plus
one read-write directory for results. Nothing is built inside the lane:
cargo there would be far too slow.

With --arch aarch64 the lane is `qemu-system-aarch64 -M virt,
virtualization=on,gic-version=3 -cpu max` running Debian's arm64 kernel
(KVM built in, VHE). That lane cannot run this machine's x86 programs, so
its root is the initramfs (an arm64 busybox) and only the directories the
command needs are shared, at their host paths; the command and the test
binaries are static aarch64 executables cross-built on the host.

    python3 tests/lane/lane.py test [--release] [-- FILTER ...]
        builds the integration tests, strato and the guest images on the
        host, then runs every integration test binary in the lane with
        --include-ignored (the tests marked as needing hardware KVM too)
    python3 tests/lane/lane.py run [--interactive] [--quiet S] [--] COMMAND [ARG ...]
        runs one command in the lane (a test binary, a benchmark; with
        --interactive the lane console is this terminal; with --quiet, a
        console quiet for S seconds counts as the lane VM breaking)
    python3 tests/lane/lane.py check | install
        says what is missing | installs it with apt-get (as root)
    python3 tests/lane/lane.py --arch aarch64 test|run|check|install ...
        the same in the aarch64 lane

The exit status is the command's; 124 if the lane hit --timeout (the lane
VM is killed and the tail of its console printed); 125 if the lane itself
could not run (a missing package is named in one line); 126 if the lane VM
broke (its kernel reported a soft lockup or an RCU stall, its heartbeat
stopped for 120 s, one of its CPUs stopped taking interrupts (see
stuck_cpus), its console was quiet for run's --quiet seconds, it died
without the command's status, its kernel stopped answering the tests (see
UNKILLABLE), or the command failed after a nested vCPU restarted at the
reset vector). `test` runs
each test binary in a lane VM of its own, runs a binary whose lane VM broke
again without the tests that passed, runs a failed test once more in a
fresh lane VM (see lane_test), and exits 0 only if every binary passed;
its summary names every test that passed only on that rerun.
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("STRATO_CACHE", Path.home() / ".cache" / "strato"))
PACKAGES = ["qemu-system-x86", "linux-image-amd64", "busybox-static", "cpio", "kmod"]
# Loaded in the lane in this order (with their dependencies): the 9p root,
# hardware-style KVM, what the tests need for networking, and loop devices
# (the daemon's path-policy test hands a guest a block device).
MODULES = ["virtio_pci", "9pnet_virtio", "9p", "kvm_amd", "tun", "veth", "bridge", "loop"]
# The aarch64 lane: QEMU, and Debian's arm64 kernel and static busybox,
# downloaded (apt-get download, which needs dpkg's arm64 architecture) and
# unpacked into the cache. KVM is built into that kernel.
ARM_PACKAGES = ["qemu-system-arm", "cpio", "kmod"]
ARM_KERNEL_PKG = "linux-image-arm64:arm64"
ARM_BUSYBOX_PKG = "busybox-static:arm64"
ARM_MODULES = ["virtio_pci", "9pnet_virtio", "9p", "tun", "veth", "bridge", "loop"]
# What cross-building for aarch64 needs (Debian's Rust, which has the arm64
# standard library, and the cross C toolchain for linking).
ARM_BUILD_PACKAGES = ["rustc-web", "cargo-web", "rust-web-clippy", "libstd-rust-web-dev:arm64",
                      "gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"]
ARM_TARGET = "aarch64-unknown-linux-gnu"
# Test binaries the lane leaves to the host suite, and why (printed in the
# lane's output, so a reader sees they did not run here).
HOST_ONLY = {
    "soak": "leak checks of the daemon over 1000 cycles, which need no "
            "hardware-style KVM and take far longer on an emulated CPU; "
            "cargo test --workspace runs them",
    "arm64": "aarch64 guests: the aarch64 lane runs them "
             "(python3 tests/lane/lane.py --arch aarch64 test)",
}
# What the aarch64 lane runs: the arm64 test binary whole, and the tests of
# the other binaries that are the same on both architectures (their test
# guests exist for both), each binary with these libtest filters.
ARM_TESTS = {
    "arm64": [],
    "boot": ["--exact", "hello_prints_and_resets_cleanly"],
    # Linux user space with Debian's arm64 kernel (resources/build.sh arm64).
    "linux_user": ["--exact", "linux_boots_to_user_space", "serial_console_shell_with_four_vcpus",
                   "virtio_console_shell", "four_drives_and_two_nics_from_user_space",
                   "linux_transfers_data_over_tcp"],
    "vm_api": ["--exact", "power_button_powers_linux_off",
               "the_entropy_device_fills_the_guest_s_buffers"],
    # The virtio test guests in C, built for arm64 with their runtime in
    # tests/guests/aarch64 (crt.S, rt.c); the tests whose guests are x86
    # assembly (echo) stay x86 only.
    "virtio_block": ["--exact", "guest_copies_a_disk_through_the_device",
                     "flushed_data_survives_sigkill",
                     "read_only_disk_and_out_of_range_requests_fail_with_ioerr",
                     "writable_disk_accepts_writes", "bad_drive_options_are_rejected"],
    "virtio_console": ["--exact", "hvc_output_and_input"],
    "virtio_hostile": [],
    "virtio_net": ["--exact", "frames_cross_the_tap_both_ways",
                   "a_tap_that_cannot_be_opened_is_a_clear_error",
                   "four_drives_and_two_nics_at_once"],
    "daemon": ["--exact", "three_linux_instances_serve_tcp_and_survive_a_neighbour_stopping"],
}
LANE_FAILED = 125
LANE_TIMEOUT = 124
# The lane VM itself broke: its kernel reported that its CPUs stopped
# making progress, or it died (a panic) without the command's status. The
# emulator, not the test, has failed (see docs/testing.md).
LANE_BROKE = 126
LOCKUP = re.compile(r"watchdog: BUG: soft lockup|rcu: INFO: rcu_\w+ detected stalls")
# The emulator's other fault: a nested guest triple-faults out of the blue;
# strato reports it as below (KVM on AMD resets the vCPU's state before it
# reports a shutdown, hence RIP 0xfff0; Firecracker says "Shutdown"). Seen with every VMM and build
# (docs/testing.md). A command that fails after it is counted as the lane
# breaking, not as the test failing, and `test` runs that binary again.
RESET_VECTOR_FAULT = re.compile(r"triple fault on vCPU \d+ at RIP 0xfff0\b")
# The lane's kernel stuck, as the tests see it: a process that lives on
# after SIGKILL (user space cannot resist SIGKILL; strato_tests::UNKILLABLE),
# or a minute without an answer to reading /proc and enabling a trace event
# (strato_tests::KERNEL_STUCK), or the lane kernel's own report of a task
# blocked in the kernel for minutes (its hung-task check). The hang report
# marks a task with SIGKILL pending too. Seen 2026-12-07: a nested guest's
# vCPU thread runnable ("R") for minutes while both lane CPUs idled, as if
# the emulator had lost the interrupt that wakes an idle CPU, and the
# test's report then waiting for good on that CPU. The lane VM has broken
# then, not the test: the runner kills it at once and runs the binary
# again.
UNKILLABLE = re.compile(r"did not end within 60 s of SIGKILL|SIGKILL pending|"
                        r"the kernel did not answer within 60 s|"
                        r"INFO: task .* blocked for more than \d+ seconds")
# kvm_amd's parameters in the x86 lane (STRATO_LANE_KVM_ARGS replaces
# them): shadow paging, since the emulator's nested paging (NPT) fails
# nested guests in streaks. On 2026-12-07 the TCP test of linux_user
# failed about 15 times in a row with NPT (lane VM frozen, lane kernel
# stack overflows in exc_page_fault, nested triple faults, a vCPU looping
# on nested page faults) and passed 3 of 3 with npt=0 in that streak, in
# the same time (docs/testing.md).
X86_KVM_ARGS = os.environ.get("STRATO_LANE_KVM_ARGS", "kvm_amd.npt=0")
# The lane's init writes a heartbeat every 5 s; this long without one, the
# lane VM has frozen (seen: every CPU idle, nothing running, no message).
HEARTBEAT_SILENCE = 120
# The x86 lane kernel's own options. No transparent huge pages: khugepaged
# collapsing a running nested guest's memory makes KVM drop its shadow
# mappings and interrupt the vCPUs inside the guest, the cross-CPU work in
# guest mode that the emulator gets wrong; on 2026-12-07 the lane kernel
# locked up in khugepaged waiting on a CPU that ran the TCP test's guest
# (docs/testing.md). Guest memory is plain pages then, as a VMM without
# huge pages has it anyway. And a tick on idle CPUs too (nohz=off): the
# same day a nested guest's vCPU thread stayed runnable for minutes while
# both lane CPUs idled, as if the interrupt that wakes an idle CPU for it
# had been lost; with the tick, an idle CPU looks again 250 times a second.
# That did not end such stalls: on 2026-12-08 they came back with a lane
# CPU that took no interrupt at all, its own timers included (two threads'
# 1 s and 240 s timeouts never fired while the heartbeat went on), and
# neither scheduler wake-ups without TTWU_QUEUE nor idle=poll prevented
# them (docs/testing.md).
X86_LANE_ARGS = "transparent_hugepage=never nohz=off"
# A test that runs this long in the lane has hung: the slowest took 93 s
# in the full lane run of 2026-12-07 (TCP both ways over Linux), and every
# wait in the tests has a deadline of 180 s or less.
TEST_HANG = int(os.environ.get("STRATO_LANE_TEST_HANG", "600"))
# libtest's line for a test it starts (one test at a time).
TEST_START = re.compile(r"^test (\S+) \.\.\. ")
# How often `test` runs a binary again whose lane VM broke without getting
# further. Six: the daemon's three Linux instances at once panicked the lane
# kernel ("TASK stack guard page was hit" in a vCPU thread) three times in
# a row on 2026-12-06 before passing.
LANE_RETRIES = 6
# How often `test` runs a binary at most, counting runs that got further.
MAX_ATTEMPTS = 10
# At most this many failed tests of one binary get their one rerun.
RERUN_AT_MOST = 3

# Both inits' heartbeat ($R: the result directory, $P: the lane's /proc).
# The runner takes its silence as a frozen lane VM (no console message
# tells of that). When the runner finds a test hung, it asks for a report
# (the file $R/dump): every user process's and every blocked task's state,
# wait channel and kernel stack, so the report says what waits on what.
HEARTBEAT = r"""report() {
    for t in $P/[0-9]*/task/[0-9]*; do
        st=$(sed 's/.*) \([A-Z]\).*/\1/' $t/stat 2>/dev/null)
        # /proc's files say size 0: a kernel thread's command line is empty.
        cmd=$(tr '\0' ' ' <${t%/task/*}/cmdline 2>/dev/null | cut -c1-200)
        # A process whose threads are still exiting has no command line
        # left either, but unlike a kernel thread (PF_KTHREAD) it counts.
        fl=$(sed 's/.*) //' $t/stat 2>/dev/null | cut -d' ' -f7)
        [ -n "$cmd" ] || [ -z "$fl" ] || [ $((fl & 0x200000)) != 0 ] || cmd="(exiting)"
        [ -n "$cmd" ] || [ "$st" = D ] || continue
        pid=${t#$P/}
        # SIGKILL (bit 8 of the pending sets) still pending: see UNKILLABLE.
        k=
        for h in $(awk '/^(SigPnd|ShdPnd):/ {print $2}' $t/status 2>/dev/null); do
            [ $((0x$h & 256)) = 0 ] || k=" SIGKILL pending"
        done
        echo "pid ${pid%%/*} tid ${t##*/} $(cat $t/comm 2>/dev/null) state $st wchan $(cat $t/wchan 2>/dev/null)$k"
        echo "    $cmd"
        head -12 $t/stack 2>/dev/null | sed 's/^/    /'
    done
}
(while :; do
    echo . >>$R/heartbeat
    if [ -e $R/dump ]; then rm -f $R/dump; report >$R/report.part 2>&1; mv $R/report.part $R/report; fi
    sleep 5
done) &"""

INIT = r"""#!/bin/busybox sh
# Lane init: load the modules, mount the host's root read-only over 9p with
# fresh /dev, /proc, /sys, /tmp and /run, run the command, power off.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
    # Its parameters from the kernel command line (name.param=value), which
    # insmod does not read itself.
    n=$(echo ${m%.ko} | tr - _)
    insmod /modules/$m $(tr ' ' '\n' </proc/cmdline | sed -n "s/^$n\.//p") ||
        echo "lane: insmod $m failed"
done
opts=trans=virtio,version=9p2000.L,msize=1048576
mount -t 9p -o $opts,ro,cache=loose hostroot /host || { echo "lane: no 9p root"; poweroff -f; }
for d in proc sys dev; do mount --move /$d /host/$d; done
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /host/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm
mount -t cgroup2 cgroup2 /host/sys/fs/cgroup 2>/dev/null
for d in tmp run var/tmp; do mount -t tmpfs -o mode=1777 tmpfs /host/$d; done
out=$(sed -n 's/.*lane_out=\([^ ]*\).*/\1/p' /host/proc/cmdline)
# Host directories under the fresh tmpfs ones (a checkout in /tmp), shared
# again read-only as keep0, keep1, ...
n=0
for p in $(sed -n 's/.*lane_keep=\([^ ]*\).*/\1/p' /host/proc/cmdline | tr ',' ' '); do
    mkdir -p /host$p
    mount -t 9p -o $opts,ro,cache=loose keep$n /host$p || echo "lane: cannot share $p"
    n=$((n + 1))
done
mkdir -p /host$out
mount -t 9p -o $opts laneout /host$out || { echo "lane: no result dir"; poweroff -f; }
P=/host/proc R=/host$out
@HEARTBEAT@
ln -sf /proc/self/fd /host/dev/fd 2>/dev/null
echo "lane: kvm $(ls /host/sys/module | grep -E '^kvm_(amd|intel)$'), $(nproc) cpus, \
$(awk '/MemTotal/ {print int($2/1024)}' /host/proc/meminfo) MiB"
chroot /host /bin/sh $out/cmd.sh </dev/console >/dev/console 2>&1
rc=$?
echo $rc > /host$out/rc
sync
echo "STRATO_LANE_EXIT=$rc"
poweroff -f
"""

INIT_ARM = r"""#!/bin/busybox sh
# aarch64 lane init: the initramfs (an arm64 busybox) is the root, since the
# host's programs are x86. Load the modules, share the command's
# directories at their host paths over 9p, run the command, power off.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run /var/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
    insmod /modules/$m || echo "lane: insmod $m failed"
done
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
for d in tmp run var/tmp; do mount -t tmpfs -o mode=1777 tmpfs /$d; done
ln -sf /proc/self/fd /dev/fd 2>/dev/null
opts=trans=virtio,version=9p2000.L,msize=1048576
out=$(sed -n 's/.*lane_out=\([^ ]*\).*/\1/p' /proc/cmdline)
n=0
for p in $(sed -n 's/.*lane_keep=\([^ ]*\).*/\1/p' /proc/cmdline | tr ',' ' '); do
    mkdir -p $p
    mount -t 9p -o $opts,ro,cache=loose keep$n $p || echo "lane: cannot share $p"
    n=$((n + 1))
done
mkdir -p $out
mount -t 9p -o $opts laneout $out || { echo "lane: no result dir"; poweroff -f; }
P=/proc R=$out
@HEARTBEAT@
echo "lane: /dev/kvm $([ -c /dev/kvm ] && echo present || echo MISSING), $(nproc) cpus, \
$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
/bin/sh $out/cmd.sh </dev/console >/dev/console 2>&1
rc=$?
echo $rc > $out/rc
sync
echo "STRATO_LANE_EXIT=$rc"
poweroff -f
"""


def die(msg, code=LANE_FAILED):
    print(f"lane: {msg}", file=sys.stderr)
    sys.exit(code)


def lane_kernel(arch="x86_64"):
    """The lane's kernel: (version, vmlinuz, root of its /lib/modules), or
    None. x86: the newest Debian generic kernel in /boot that has kvm_amd.
    aarch64: the newest arm64 kernel unpacked into the cache."""
    wanted = os.environ.get("STRATO_LANE_KERNEL")
    found = []
    if arch == "aarch64":
        for vmlinuz in (CACHE / "lane-aarch64-dist").glob("*/boot/vmlinuz-*"):
            ver = vmlinuz.name[len("vmlinuz-"):]
            if not wanted or ver == wanted:
                found.append((tuple(int(x) for x in re.findall(r"\d+", ver)), ver, vmlinuz,
                              vmlinuz.parents[1]))
    else:
        for vmlinuz in Path("/boot").glob("vmlinuz-*"):
            ver = vmlinuz.name[len("vmlinuz-"):]
            if wanted and ver != wanted:
                continue
            if (Path("/lib/modules") / ver / "kernel/arch/x86/kvm/kvm-amd.ko").exists():
                found.append((tuple(int(x) for x in re.findall(r"\d+", ver)), ver, vmlinuz,
                              Path("/")))
    if not found:
        return None
    _, ver, vmlinuz, root = max(found)
    return ver, vmlinuz, root


def arm_busybox():
    """The arm64 static busybox unpacked into the cache, or None."""
    found = sorted((CACHE / "lane-aarch64-dist").glob("busybox-*/bin/busybox"))
    return found[-1] if found else None


def dpkg_has_arm64():
    res = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True, text=True)
    return "arm64" in res.stdout.split()


def missing(arch="x86_64"):
    """What the lane lacks on this machine, as a list of package names."""
    out = []
    if arch == "aarch64":
        if not shutil.which("qemu-system-aarch64"):
            out.append("qemu-system-arm")
        if not (lane_kernel(arch) and arm_busybox()) and not dpkg_has_arm64():
            out.append(f"{ARM_KERNEL_PKG} and {ARM_BUSYBOX_PKG} (after "
                       "dpkg --add-architecture arm64)")
    else:
        if not shutil.which("qemu-system-x86_64"):
            out.append("qemu-system-x86")
        if not lane_kernel(arch):
            out.append("linux-image-amd64")
        if not Path("/bin/busybox").exists():
            out.append("busybox-static")
    if not shutil.which("cpio"):
        out.append("cpio")
    if not shutil.which("modprobe"):
        out.append("kmod")
    return out


def require(arch="x86_64"):
    lack = missing(arch)
    if lack:
        flag = " --arch aarch64" if arch == "aarch64" else ""
        die(
            f"the {arch} lane needs " + ", ".join(lack)
            + f": run `python3 tests/lane/lane.py{flag} install` (as root)"
        )
    if arch == "aarch64" and not (lane_kernel(arch) and arm_busybox()):
        fetch_arm()


def apt_env():
    return dict(os.environ, DEBIAN_FRONTEND="noninteractive")


def install(arch="x86_64"):
    env = apt_env()
    if arch == "aarch64" and not dpkg_has_arm64():
        subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
         *(ARM_PACKAGES + ARM_BUILD_PACKAGES if arch == "aarch64" else PACKAGES)],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    if arch == "aarch64":
        fetch_arm()


def apt_resolve(meta):
    """The versioned package a Debian meta package (linux-image-arm64)
    depends on, or the package itself."""
    res = subprocess.run(["apt-cache", "depends", meta], capture_output=True, text=True)
    m = re.search(r"^\s*Depends: (linux-image-\d\S*)$", res.stdout, re.M)
    return m.group(1) if m else meta


def fetch_arm():
    """Downloads Debian's arm64 kernel and static busybox with apt-get
    download and unpacks them into the cache (once; `depmod` makes the
    module index that `modprobe -d` reads)."""
    dist = CACHE / "lane-aarch64-dist"
    dist.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dist) as tmp:
        for meta, dest in ((ARM_KERNEL_PKG, "kernel"), (ARM_BUSYBOX_PKG, "busybox")):
            if dest == "kernel" and lane_kernel("aarch64") or dest == "busybox" and arm_busybox():
                continue
            pkg = apt_resolve(meta)
            dl = Path(tmp) / dest
            dl.mkdir()
            print(f"lane: apt-get download {pkg} into {dist}", file=sys.stderr, flush=True)
            res = subprocess.run(["apt-get", "download", pkg], cwd=dl, capture_output=True, text=True)
            debs = list(dl.glob("*.deb"))
            if res.returncode != 0 or not debs:
                die(f"cannot download {pkg}: {res.stderr.strip()[-300:]}")
            tree = Path(tmp) / f"{dest}-tree"
            subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tree)], check=True)
            name = f"{dest}-{debs[0].name.split('_')[1].replace(':', '%3a')}"
            if dest == "kernel":
                for ver in (p.name for p in (tree / "lib/modules").iterdir()):
                    subprocess.run(["depmod", "-b", str(tree), ver], check=True)
            os.replace(tree, dist / name)


def modules(ver, root, names):
    """The module files to load, dependencies first, each once."""
    res = subprocess.run(
        ["modprobe", "-d", str(root), "-S", ver, "--show-depends", "-a", *names],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        die(f"modprobe cannot resolve the lane modules for {ver}: {res.stderr.strip()}")
    paths = []
    for line in res.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == "insmod" and parts[1] not in paths:
            paths.append(parts[1])
    return paths


def initramfs(arch, ver, root):
    """The lane's initramfs, built once per input set and cached."""
    arm = arch == "aarch64"
    init = (INIT_ARM if arm else INIT).replace("@HEARTBEAT@", HEARTBEAT)
    busybox = arm_busybox() if arm else Path("/bin/busybox")
    mods = modules(ver, root, ARM_MODULES if arm else MODULES)
    h = hashlib.sha256()
    h.update(init.encode())
    h.update(ver.encode())
    for p in [busybox, *mods]:
        st = os.stat(p)
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = CACHE / f"lane-{arch}-{h.hexdigest()[:16]}" / "initramfs.cpio"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        stage = Path(tmp) / "root"
        (stage / "bin").mkdir(parents=True)
        (stage / "modules").mkdir()
        shutil.copy2(busybox, stage / "bin/busybox")
        names = []
        for p in mods:
            shutil.copy2(p, stage / "modules" / Path(p).name)
            names.append(Path(p).name)
        (stage / "modules/order").write_text("\n".join(names) + "\n")
        (stage / "init").write_text(init)
        (stage / "init").chmod(0o755)
        files = subprocess.run(
            ["find", ".", "-print0"], cwd=stage, capture_output=True, check=True
        ).stdout
        part = Path(tmp) / "initramfs.cpio"
        with open(part, "wb") as f:
            subprocess.run(
                ["cpio", "--quiet", "-o", "-0", "-H", "newc", "-R", "0:0"],
                cwd=stage,
                input=files,
                stdout=f,
                check=True,
            )
        os.replace(part, out)
    return out


# Where the lane mounts fresh tmpfs over the host's directories.
FRESH = ("/tmp", "/run", "/var/tmp")


def hidden_paths(paths, outdir, everything=False):
    """Of `paths` (directories, or files: their directories), the ones a
    fresh tmpfs in the lane would hide (with `everything`, all: the
    aarch64 lane shares nothing else), the outermost of nested ones, and
    none in the result directory `outdir`."""
    out = []
    dirs = set()
    for p in paths:
        p = Path(p).resolve()
        dirs.add(str(p.parent if p.is_file() else p))
    for p in sorted(dirs):
        if p == str(outdir) or p.startswith(f"{outdir}/"):
            continue
        hidden = everything or any(p == f or p.startswith(f + "/") for f in FRESH)
        if hidden and not any(p == k or p.startswith(k + "/") for k in out):
            if "," in p or " " in p:
                die(f"the lane cannot share {p}: its path has a comma or a space")
            out.append(p)
    return out


class TestWatch:
    """What run_in_lane learns of a libtest binary's tests as they run:
    each finished test's wall time in the lane and the test that hung, if
    one did."""

    def __init__(self):
        self.timings = []
        self.hung = None


# What lane_report returns when the lane VM gives no report. A healthy lane
# kernel lists its processes within seconds; when it does not, reading
# them blocked (seen 2026-12-07: the report stuck reading /proc while the
# lane VM's CPUs went idle for good, a nested TCP test's guest stopped with
# them), so a test "hung" then is the lane's fault, not the test's.
NO_REPORT = "(no report within"


def emulator_view(outdir, cpus):
    """The emulator's view of the lane VM's CPUs, from its monitor: where
    each one is (RIP, flags, halted or not) and its local APIC (timer,
    pending and in-service interrupts). For a lane VM that stopped: a CPU
    halted with an interrupt pending that it never takes is the emulator's
    fault, not the lane kernel's."""
    out = []
    try:
        with socket.socket(socket.AF_UNIX) as mon:
            mon.settimeout(2)
            mon.connect(str(outdir / "monitor.sock"))
            for cpu in range(cpus):
                mon.sendall(f"cpu {cpu}\ninfo registers\ninfo lapic\n".encode())
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    data = mon.recv(65536)
                except socket.timeout:
                    break
                if not data:
                    break
                out.append(data)
    except OSError as e:
        return f"(no view from the emulator's monitor: {e})"
    text = b"".join(out).decode(errors="replace").replace("\r", "")
    # Where each CPU is and its APIC; not the segment and FPU registers.
    keep = re.compile(r"^(CPU#|RIP=|EFER=|CR0=|dumping|LVT|Timer|SPIV|ICR|ESR|ISR|IRR|APR|TPR)")
    return "\n".join(line for line in text.splitlines() if keep.match(line))


# A lane CPU seen this many times in a row, STUCK_POLL s apart, halted
# with interrupts on and a deliverable interrupt pending in its APIC that
# it does not take, is stuck for good (docs/testing.md): a healthy CPU
# takes such an interrupt at once.
STUCK_POLLS = 3
STUCK_POLL = 10


def stuck_cpus(view):
    """The CPUs of an emulator_view that are halted with interrupts on
    (RFLAGS.IF) and a pending interrupt above their priority (PPR), and
    their APIC timer's initial count (which a CPU that takes its timer
    programs anew)."""
    stuck, cpu, state = {}, None, {}
    for line in view.splitlines() + ["CPU#end"]:
        if line.startswith("CPU#"):
            if cpu is not None and state.get("halted") and state.get("irr", 0) > state.get("ppr", 0):
                stuck[cpu] = state.get("timer")
            cpu, state = line[4:], {}
        elif line.startswith("RIP="):
            m = re.search(r"RFL=([0-9a-f]+)\b.*HLT=(\d)", line)
            state["halted"] = bool(m and int(m.group(1), 16) & 0x200 and m.group(2) == "1")
        elif line.startswith("Timer"):
            m = re.search(r"initial_count = (\d+)", line)
            state["timer"] = m and m.group(1)
        elif line.startswith("IRR"):
            vectors = [int(v) for v in line.split()[1:] if v.isdigit()]
            state["irr"] = (max(vectors) & 0xf0) if vectors else 0
        elif line.startswith("APR"):
            m = re.search(r"PPR 0x([0-9a-f]+)", line)
            state["ppr"] = int(m.group(1), 16) & 0xf0 if m else 0
    return stuck


def lane_report(outdir, wait=60):
    """Asks the lane VM's heartbeat for its process report (see HEARTBEAT)
    and returns it, or why there is none."""
    report = outdir / "report"
    (outdir / "dump").touch()
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if report.exists():
            return report.read_text(errors="replace")
        time.sleep(1)
    return f"{NO_REPORT} {wait} s)"


def run_in_lane(argv, env, timeout, cpus, memory_mib, cwd, interactive=False, tcg="multi",
                arch="x86_64", results=None, watch=None, quiet=None):
    """Runs argv in the lane; returns its exit status. Interactive: the
    lane's console is this terminal (QEMU makes it raw), so a person can
    type into the command; nothing is captured. If the lane's kernel
    reports a soft lockup or an RCU stall, or its heartbeat stops, the lane
    VM is killed; then, or if the lane VM ends without the command's
    status, LANE_BROKE is returned. With a list as `results`, argv is a
    libtest binary: it is given a `--logfile` in the lane's result
    directory, and the lines it wrote there ("ok NAME", "failed NAME", one
    per finished test) are appended to the list, also when the lane VM
    broke part way. With a TestWatch as `watch` too, each finished test's
    time is noted there, and a test that runs for TEST_HANG seconds is
    taken as hung: the lane VM's processes are reported, the lane VM is
    killed, the test is named in `watch.hung` and LANE_BROKE returned.
    With `quiet` seconds, a console that prints nothing for that long is a
    lane VM that broke: its processes are reported, it is killed and
    LANE_BROKE returned (for a command that prints at least that often)."""
    require(arch)
    arm = arch == "aarch64"
    ver, vmlinuz, modroot = lane_kernel(arch)
    cpio = initramfs(arch, ver, modroot)
    outdir = Path(tempfile.mkdtemp(prefix="strato-lane-"))
    logfile = outdir / "results"
    if results is not None:
        argv = [*argv, "--logfile", str(logfile)]
    try:
        script = [f"cd {shlex.quote(str(cwd))} || exit 125"]
        base = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(Path.home()),
            "TERM": "dumb",
            "STRATO_LANE": arch,
            "STRATO_LANE_OUT": str(outdir),
        }
        for k, v in {**base, **env}.items():
            script.append(f"export {k}={shlex.quote(v)}")
        script.append("exec " + " ".join(shlex.quote(a) for a in argv))
        (outdir / "cmd.sh").write_text("\n".join(script) + "\n")
        # The command's directory, the test binaries, strato and the images
        # must be where they are on the host, also under /tmp (and in the
        # aarch64 lane, which shares nothing else, everywhere).
        keep = hidden_paths(
            [cwd, ROOT, CACHE, *[v for v in [*env.values(), *argv]
                                 if v.startswith("/") and ":" not in v and Path(v).exists()]],
            outdir.resolve(),
            everything=arm,
        )
        if arm:
            machine = ["qemu-system-aarch64", "-M", "virt,virtualization=on,gic-version=3"]
            console = "ttyAMA0"
            root_share = []
        else:
            machine = ["qemu-system-x86_64"]
            console = "ttyS0"
            root_share = ["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,"
                                     "readonly=on,multidevs=remap"]
        qemu = machine + [
            "-accel", f"tcg,thread={tcg},tb-size=512",
            "-cpu", "max",
            "-smp", str(cpus),
            "-m", f"{memory_mib}M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio",
            # The emulator's own view of the lane CPUs (emulator_view).
            "-monitor", f"unix:{outdir}/monitor.sock,server=on,wait=off",
            "-kernel", str(vmlinuz),
            "-initrd", str(cpio),
            "-append",
            f"console={console} loglevel=5 panic=-1 mitigations=off lane_out={outdir}"
            + ("" if arm else f" {X86_KVM_ARGS} {X86_LANE_ARGS}")
            + (f" lane_keep={','.join(keep)}" if keep else ""),
            *root_share,
            "-virtfs",
            f"local,path={outdir},mount_tag=laneout,security_model=none,multidevs=remap",
        ]
        for i, path in enumerate(keep):
            qemu += ["-virtfs", f"local,path={path},mount_tag=keep{i},security_model=none,"
                                "readonly=on,multidevs=remap"]
        if interactive:
            proc = subprocess.Popen(qemu, start_new_session=False)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return LANE_TIMEOUT
            rc_file = outdir / "rc"
            return int(rc_file.read_text().strip() or LANE_FAILED) if rc_file.exists() else LANE_FAILED
        tail = deque(maxlen=80)
        locked_up = threading.Event()

        def kill_broken():
            # What the emulator saw, then the lane VM is taken down.
            sys.stdout.write("lane: the emulator's view of the lane CPUs:\n"
                             + emulator_view(outdir, cpus) + "\n")
            sys.stdout.flush()
            os.killpg(proc.pid, signal.SIGKILL)

        reset_vector = threading.Event()
        proc = subprocess.Popen(
            qemu,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        # The test libtest runs now and since when: (name, start). Its
        # "test NAME ... " comes without a newline until the test ends, so
        # the console is read as it comes, not by lines.
        running = [None, 0.0]
        # When the console last printed.
        spoke = [time.monotonic()]

        def pump():
            partial = ""
            for raw in iter(lambda: proc.stdout.read1(65536), b""):
                spoke[0] = time.monotonic()
                text = raw.decode("utf-8", "replace").replace("\r", "")
                sys.stdout.write(text)
                sys.stdout.flush()
                *lines, partial = (partial + text).split("\n")
                for line in lines:
                    tail.append(line + "\n")
                    if RESET_VECTOR_FAULT.search(line):
                        reset_vector.set()
                    if UNKILLABLE.search(line) and not locked_up.is_set():
                        sys.stdout.write("\nlane: the lane's kernel is stuck (see UNKILLABLE)\n")
                        locked_up.set()
                        kill_broken()
                    if LOCKUP.search(line) and not locked_up.is_set():
                        locked_up.set()
                        kill_broken()
                for line in [*lines, partial]:
                    m = TEST_START.match(line)
                    ended = m is not None and m.group(1) != running[0] or (
                        m is None and line.startswith("test result: "))
                    if ended and running[0] is not None and watch is not None:
                        watch.timings.append((running[0], time.monotonic() - running[1]))
                    if m and m.group(1) != running[0]:
                        running[:] = [m.group(1), time.monotonic()]
                    elif ended:
                        running[0] = None
            if partial:
                tail.append(partial + "\n")

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()

        def watch_heartbeat():
            beat, size, since = outdir / "heartbeat", 0, time.monotonic()
            while proc.poll() is None:
                time.sleep(5)
                try:
                    now_size = beat.stat().st_size
                except OSError:
                    continue
                if now_size != size:
                    size, since = now_size, time.monotonic()
                elif size and time.monotonic() - since > HEARTBEAT_SILENCE and not locked_up.is_set():
                    sys.stdout.write(f"\nlane: no heartbeat from the lane VM for "
                                     f"{HEARTBEAT_SILENCE} s: it froze\n")
                    locked_up.set()
                    kill_broken()

        threading.Thread(target=watch_heartbeat, daemon=True).start()

        def watch_quiet():
            # A lane CPU that takes no interrupt stops the command's own
            # deadlines with it while the heartbeat goes on (docs/testing.md).
            while proc.poll() is None and not locked_up.is_set():
                time.sleep(5)
                if time.monotonic() - spoke[0] < quiet or locked_up.is_set():
                    continue
                sys.stdout.write(f"\nlane: the console has been quiet for {quiet} s: the "
                                 "lane VM broke; what its processes do:\n"
                                 + lane_report(outdir) + "\n")
                locked_up.set()
                kill_broken()

        if quiet:
            threading.Thread(target=watch_quiet, daemon=True).start()

        def watch_stuck():
            # The emulator's fault that neither the heartbeat (the other CPU
            # beats on) nor the lane kernel's stall reports (an idle CPU is
            # quiescent to RCU) always catch: a lane CPU that takes no
            # interrupt, its own timer included (docs/testing.md).
            seen = []
            while proc.poll() is None and not locked_up.is_set():
                time.sleep(STUCK_POLL)
                view = emulator_view(outdir, cpus)
                seen = (seen + [stuck_cpus(view)])[-STUCK_POLLS:]
                # The same CPU, with the same timer never taken, each time.
                same = [c for c, t in seen[0].items()
                        if all(c in got and got[c] == t for got in seen)]
                if len(seen) < STUCK_POLLS or not same or locked_up.is_set():
                    continue
                sys.stdout.write(f"\nlane: lane CPU {', '.join(same)} has been halted for "
                                 f"{STUCK_POLL * (STUCK_POLLS - 1)} s with an interrupt pending "
                                 "that it does not take: the lane VM broke\n" + view + "\n")
                locked_up.set()
                os.killpg(proc.pid, signal.SIGKILL)

        if not arm:
            threading.Thread(target=watch_stuck, daemon=True).start()

        def watch_test():
            # A test that runs for TEST_HANG seconds is hung (every wait in
            # the tests has a deadline well below it): the lane VM reports
            # its processes, then is killed, and the test is named in
            # `watch.hung` for the caller. Seen once in CI: a Linux test that
            # printed nothing more for 27 minutes.
            while proc.poll() is None:
                time.sleep(5)
                name, since = running
                if (name is None or time.monotonic() - since < TEST_HANG
                        or locked_up.is_set()
                        or any(line.split(" ", 1)[-1] == name for line in finished())):
                    continue
                sys.stdout.write(f"\nlane: {name} has run for {TEST_HANG} s: it hung; "
                                 "what the lane VM's processes do:\n")
                report = lane_report(outdir)
                sys.stdout.write(report + "\n")
                if UNKILLABLE.search(report) or report.startswith(NO_REPORT):
                    sys.stdout.write("lane: the lane's kernel is stuck (a process there "
                                     "outlived SIGKILL, or listing the processes blocked), so "
                                     "this counts as the lane VM breaking, not as the test "
                                     "hanging\n")
                else:
                    watch.hung = name
                locked_up.set()
                kill_broken()
                return

        def finished():
            try:
                return logfile.read_text(errors="replace").splitlines()
            except OSError:
                return []

        if watch is not None:
            threading.Thread(target=watch_test, daemon=True).start()

        # QEMU runs in a session of its own (so the deadline can kill all of
        # it): take it down with us when we are told to stop.
        def stop(signum, _frame):
            os.killpg(proc.pid, signal.SIGKILL)
            sys.exit(128 + signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGHUP, stop)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            reader.join(5)
            sys.stdout.write(
                f"\nlane: killed after {timeout} s; the last lines of its console:\n"
                + "".join(tail)
            )
            return LANE_TIMEOUT
        except KeyboardInterrupt:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        reader.join(5)
        if locked_up.is_set():
            what = (f"{watch.hung} hung" if watch and watch.hung
                    else "the lane VM locked up or froze")
            sys.stdout.write(f"\nlane: {what}; the lane VM was killed. "
                             "The last lines of its console:\n" + "".join(tail))
            return LANE_BROKE
        rc_file = outdir / "rc"
        if not rc_file.exists():
            sys.stdout.write(
                f"\nlane: the lane VM ended (qemu status {proc.returncode}) without the "
                "command's status; the last lines of its console:\n" + "".join(tail)
            )
            return LANE_BROKE
        rc = int(rc_file.read_text().strip() or LANE_FAILED)
        if rc != 0 and reset_vector.is_set():
            sys.stdout.write(
                "\nlane: the command failed after a nested vCPU restarted at the reset "
                "vector (the emulator's fault, docs/testing.md): counted as the lane "
                "breaking\n"
            )
            return LANE_BROKE
        return rc
    finally:
        if results is not None and logfile.exists():
            results.extend(logfile.read_text(errors="replace").splitlines())
        shutil.rmtree(outdir, ignore_errors=True)


def cross_env():
    """cargo's environment for a static aarch64 build with Debian's Rust
    (the rustup shims come first in PATH, so /usr/bin is named) and its own
    target directory, so that the host's builds stay as they are."""
    lack = [p for p in ("/usr/bin/cargo", "/usr/bin/rustc", f"/usr/lib/rustlib/{ARM_TARGET}")
            if not Path(p).exists()]
    if not shutil.which("aarch64-linux-gnu-gcc"):
        lack.append("aarch64-linux-gnu-gcc")
    if lack:
        die("cross-building for aarch64 needs " + ", ".join(ARM_BUILD_PACKAGES)
            + " (missing: " + ", ".join(lack) + "): run `python3 tests/lane/lane.py "
            "--arch aarch64 install` (as root)")
    key = ARM_TARGET.upper().replace("-", "_")
    return dict(
        os.environ,
        RUSTC="/usr/bin/rustc",
        CARGO_TARGET_DIR=str(ROOT / "target" / "cross"),
        **{f"CARGO_TARGET_{key}_LINKER": "aarch64-linux-gnu-gcc",
           f"CARGO_TARGET_{key}_RUSTFLAGS": "-C target-feature=+crt-static"},
    )


def host_build(release, arch="x86_64"):
    """Builds strato, the integration tests and the guest images on the
    host. Returns (env for the lane, [test executables])."""
    profile = ["--release"] if release else []
    if arch == "aarch64":
        cargo, env, target = ["/usr/bin/cargo"], cross_env(), ["--target", ARM_TARGET]
    else:
        cargo, env, target = ["cargo"], None, []
    subprocess.run([*cargo, "build", "-q", "-p", "api", *target, *profile], cwd=ROOT, check=True,
                   env=env)
    res = subprocess.run(
        [*cargo, "test", "-q", "-p", "strato-tests", "--no-run", "--message-format=json",
         *target, *profile],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    tests = []
    for line in res.stdout.splitlines():
        msg = json.loads(line)
        if (
            msg.get("reason") == "compiler-artifact"
            and msg.get("executable")
            and "test" in msg["target"]["kind"]
        ):
            tests.append(msg["executable"])
    if not tests:
        die("cargo built no integration test binaries")
    target_dir = Path(tests[0]).parents[1]
    lane_env = {"STRATO_BIN": str(target_dir / "strato")}
    # The guest images: the x86 set, or Debian's arm64 kernel and initramfs.
    # Its progress and errors go to our stderr; its KEY=PATH lines come back.
    images = subprocess.run(
        ["bash", str(ROOT / "resources/build.sh"), "all" if arch == "x86_64" else "arm64"],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    ).stdout
    for line in images.splitlines():
        k, _, v = line.partition("=")
        if v:
            lane_env[f"STRATO_IMAGE_{k}"] = v
    return lane_env, sorted(tests)


def lane_test(args):
    arm = args.arch == "aarch64"
    env, tests = host_build(args.release, args.arch)
    # One test at a time: the lane's two emulated CPUs are the whole
    # machine, and two Linux guests of two vCPUs each starve one another
    # (timeouts, soft lockups) where a test alone runs steadily.
    env.setdefault("RUST_TEST_THREADS", "1")
    env.update(dict(kv.split("=", 1) for kv in args.env))
    # A lane VM per binary: a lane VM that locks up or dies (an emulator
    # fault, docs/testing.md) costs that binary a rerun, not the whole
    # suite. A failed test runs once more, alone (below).
    failed, retried, summary, flaky, hung_twice, timings = [], [], [], [], [], []
    for t in tests:
        name = Path(t).name.rsplit("-", 1)[0]
        if arm and name not in ARM_TESTS:
            print(f"\n== {name}: not run in the aarch64 lane (its guests are x86)", flush=True)
            summary.append(f"{name}: not run in the aarch64 lane")
            continue
        if not arm and name in HOST_ONLY:
            print(f"\n== {name}: not run in the lane ({HOST_ONLY[name]})", flush=True)
            summary.append(f"{name}: not run in the lane")
            continue
        filters = [*ARM_TESTS[name], *args.filters] if arm else args.filters
        # After a broken lane VM the binary runs again without the tests
        # that passed before the break (by exact name, so only where no
        # name filter is given or the filters are exact already): a long
        # binary then gets through even when its lane VM breaks more than
        # once. Attempts that pass nothing new are limited to
        # LANE_RETRIES, all attempts to MAX_ATTEMPTS.
        passed, attempt, fruitless, hung = [], 0, 0, []
        positional = [f for f in filters if not f.startswith("-")]
        resumable = not positional or "--exact" in filters
        while True:
            skip = []
            if passed and resumable:
                skip = ([] if "--exact" in filters else ["--exact"]) + [
                    a for p in passed for a in ("--skip", p)]
            print(f"\n== {name}" + (f" (again, attempt {attempt + 1}"
                                     + (f", without the {len(passed)} tests that passed" if skip else "")
                                     + ")" if attempt else ""), flush=True)
            results, watch = [], TestWatch()
            rc = run_in_lane(
                [t, "--include-ignored", *filters, *skip], env, args.timeout, args.cpus,
                args.memory, ROOT, tcg=args.tcg, arch=args.arch, results=results, watch=watch,
            )
            attempt += 1
            timings.extend((f"{name}::{n}", secs) for n, secs in watch.timings)
            if watch.hung:
                hung.append(watch.hung)
            if rc != LANE_BROKE:
                break
            # A hung test is run again with the rest (it comes first then);
            # one that hangs twice fails the binary.
            if hung and hung.count(hung[-1]) > 1:
                print(f"lane: {hung[-1]} hung twice", flush=True)
                hung_twice.append(f"{name}::{hung[-1]}")
                break
            retried.append(name)
            new = [line.split(" ", 1)[1] for line in results if line.startswith("ok ")]
            passed += new
            fruitless = 0 if new and resumable else fruitless + 1
            if fruitless > LANE_RETRIES or attempt >= MAX_ATTEMPTS:
                break
        # A test that failed in a lane VM that itself stayed healthy gets
        # one more run, alone, in a fresh lane VM: the emulator also stalls
        # nested guests without the lane kernel noticing (docs/testing.md).
        # A test that fails twice fails; one that passes the second time
        # is named in the summary as passed only on a rerun, with its first
        # failure printed above. Many failures at once are not an
        # emulator's stall: no rerun then.
        failures = [line.split(" ", 1)[1] for line in results if line.startswith("failed ")]
        rerun_passed = []
        if rc not in (0, LANE_BROKE, LANE_TIMEOUT) and 0 < len(failures) <= RERUN_AT_MOST:
            # The rerun's own lane VM may break too: then it gets another
            # (not when the test hung in it: that is its second failure).
            for _ in range(1 + LANE_RETRIES):
                print(f"\n== {name} (again, only {', '.join(failures)}, in a fresh lane VM)",
                      flush=True)
                rc = run_in_lane(
                    [t, "--include-ignored", "--exact", *failures], env, args.timeout, args.cpus,
                    args.memory, ROOT, tcg=args.tcg, arch=args.arch, results=[],
                    watch=(watch := TestWatch()),
                )
                timings.extend((f"{name}::{n}", secs) for n, secs in watch.timings)
                if rc != LANE_BROKE or watch.hung:
                    break
                retried.append(name)
            if rc == 0:
                rerun_passed = failures
                flaky.extend(f"{name}::{f}" for f in failures)
        if rc == 0:
            summary.append(f"{name}: ok" + (f" (passed only on a rerun: {', '.join(rerun_passed)})"
                                            if rerun_passed else ""))
        else:
            failed.append(name)
            why = (f"{hung[-1]} hung twice" if hung and hung.count(hung[-1]) > 1
                   else f"status {rc}")
            summary.append(f"{name}: FAILED ({why})")
    print(f"\n{args.arch} lane summary:\n  " + "\n  ".join(summary), flush=True)
    if retried:
        print(f"lane: the lane VM broke (lockup or crash) under: {' '.join(retried)}; "
              "run again", flush=True)
    if flaky:
        print(f"lane: {len(flaky)} tests failed once and passed on a rerun: {' '.join(flaky)}",
              flush=True)
    if hung_twice:
        print(f"lane: tests that hung twice (ran for {TEST_HANG} s): "
              f"{' '.join(hung_twice)}", flush=True)
    slowest = sorted(timings, key=lambda t: -t[1])[:5]
    if slowest:
        print("lane: the slowest tests: "
              + ", ".join(f"{n} {secs:.0f} s" for n, secs in slowest), flush=True)
    print(f"lane: {len(failed)} test binaries failed" + (f": {' '.join(failed)}" if failed else ""),
          flush=True)
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=("x86_64", "aarch64"), default="x86_64",
                   help="which lane (default x86_64)")
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("run", "test"):
        s = sub.add_parser(name)
        s.add_argument("--timeout", type=int, default=3600,
                       help="seconds before the lane VM is killed (for test: each binary's VM)")
        s.add_argument("--cpus", type=int, default=2)
        s.add_argument("--tcg", choices=("single", "multi"), default=os.environ.get("STRATO_LANE_TCG", "multi"),
                       help="QEMU TCG threading: one host thread for all lane CPUs, or one each "
                            "(the default; docs/testing.md says why)")
        s.add_argument("--memory", type=int, default=6144, help="lane VM memory in MiB")
        s.add_argument("--env", action="append", default=[], metavar="K=V",
                       help="environment for the command (repeatable)")
        if name == "run":
            s.add_argument("--interactive", action="store_true",
                           help="the lane console on this terminal, for typing into the command")
            s.add_argument("--quiet", type=int, metavar="S",
                           help="a console quiet for S seconds is a lane VM that broke "
                                "(status 126), for a command that prints at least that often")
            s.add_argument("command", nargs=argparse.REMAINDER)
        else:
            s.add_argument("--release", action="store_true")
            s.add_argument("filters", nargs="*", help="libtest filters and options")
    c = sub.add_parser("cargo", help="cargo for the lane's architecture (aarch64: the static "
                                     "cross build the lane runs), e.g. cargo -- clippy --workspace")
    c.add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("check")
    sub.add_parser("install")
    args = p.parse_args()
    if args.cmd == "check":
        lack = missing(args.arch)
        print(f"{args.arch} lane: ready" if not lack else f"{args.arch} lane: missing "
              + ", ".join(lack))
        return 0 if not lack else LANE_FAILED
    if args.cmd == "install":
        install(args.arch)
        return 0
    if args.cmd == "test":
        return lane_test(args)
    if args.cmd == "cargo":
        cargo_args = args.args[1:] if args.args[:1] == ["--"] else args.args
        if args.arch != "aarch64":
            return subprocess.run(["cargo", *cargo_args], cwd=ROOT).returncode
        # Debian's cargo finds its own clippy and rustfmt first on this PATH.
        env = cross_env()
        env["PATH"] = "/usr/bin:" + env.get("PATH", "")
        sub_cmd, rest = cargo_args[:1], cargo_args[1:]
        return subprocess.run(["/usr/bin/cargo", *sub_cmd, "--target", ARM_TARGET, *rest],
                              cwd=ROOT, env=env).returncode
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        die("run needs a command", 2)
    env = dict(kv.split("=", 1) for kv in args.env)
    for k in ("RUST_BACKTRACE", "RUST_LOG"):
        if k in os.environ:
            env.setdefault(k, os.environ[k])
    if args.quiet is not None and args.quiet < 1:
        die("--quiet must be at least 1 second", 2)
    return run_in_lane(command, env, args.timeout, args.cpus, args.memory, Path.cwd(),
                       args.interactive, tcg=args.tcg, arch=args.arch, quiet=args.quiet)


if __name__ == "__main__":
    sys.exit(main())
