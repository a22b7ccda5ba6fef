#!/usr/bin/env python3
"""The x86 test lane: run a command where /dev/kvm is hardware-style KVM.

The lane is a QEMU TCG virtual machine with `-cpu max` (an emulated AMD
CPU with SVM) running Debian's generic kernel, which loads `kvm_amd`. Inside
it strato gets a KVM that behaves like a real host's: Linux user space, TCP,
distribution kernels. The lane VM sees this machine's root file system
read-only over virtio-9p (so the test binaries, the checkout and the image
cache are where they are on the host), with fresh /tmp, /run and /dev, plus
one read-write directory for results. Nothing is built inside the lane:
cargo there would be far too slow.

    python3 tests/lane/lane.py test [--release] [-- FILTER ...]
        builds the integration tests, strato and the guest images on the
        host, then runs every integration test binary in the lane with
        --include-ignored (the tests marked as needing hardware KVM too)
    python3 tests/lane/lane.py run [--interactive] [--] COMMAND [ARG ...]
        runs one command in the lane (a test binary, a benchmark; with
        --interactive the lane console is this terminal)
    python3 tests/lane/lane.py check | install
        says what is missing | installs it with apt-get (as root)

The exit status is the command's; 124 if the lane hit --timeout (the lane
VM is killed and the tail of its console printed); 125 if the lane itself
could not run (a missing package is named in one line); 126 if the lane VM
broke (its kernel reported a soft lockup or an RCU stall, its heartbeat
stopped for 120 s, or it died without the command's status). `test` runs each test binary in a lane VM
of its own, runs a binary again (twice at most) whose lane VM broke, and
exits 0 only if every binary passed.
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
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
# Test binaries the lane leaves to the host suite, and why (printed in the
# lane's output, so a reader sees they did not run here).
HOST_ONLY = {
    "soak": "leak checks of the daemon over 1000 cycles, which need no "
            "hardware-style KVM and take far longer on an emulated CPU; "
            "cargo test --workspace runs them",
}
LANE_FAILED = 125
LANE_TIMEOUT = 124
# The lane VM itself broke: its kernel reported that its CPUs stopped
# making progress, or it died (a panic) without the command's status. The
# emulator, not the test, has failed (see docs/testing.md).
LANE_BROKE = 126
LOCKUP = re.compile(r"watchdog: BUG: soft lockup|rcu: INFO: rcu_\w+ detected stalls")
# The lane's init writes a heartbeat every 5 s; this long without one, the
# lane VM has frozen (seen: every CPU idle, nothing running, no message).
HEARTBEAT_SILENCE = 120
# How often `test` runs a binary again whose lane VM broke.
LANE_RETRIES = 2

INIT = r"""#!/bin/busybox sh
# Lane init: load the modules, mount the host's root read-only over 9p with
# fresh /dev, /proc, /sys, /tmp and /run, run the command, power off.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /host
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /modules/order); do
    insmod /modules/$m || echo "lane: insmod $m failed"
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
# A heartbeat in the result directory: the runner takes its silence as a
# frozen lane VM (no console message tells of that).
(while :; do echo . >>/host$out/heartbeat; sleep 5; done) &
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


def die(msg, code=LANE_FAILED):
    print(f"lane: {msg}", file=sys.stderr)
    sys.exit(code)


def lane_kernel():
    """The newest Debian generic kernel that has kvm_amd: (version, vmlinuz)."""
    wanted = os.environ.get("STRATO_LANE_KERNEL")
    found = []
    for vmlinuz in Path("/boot").glob("vmlinuz-*"):
        ver = vmlinuz.name[len("vmlinuz-"):]
        if wanted and ver != wanted:
            continue
        if (Path("/lib/modules") / ver / "kernel/arch/x86/kvm/kvm-amd.ko").exists():
            found.append((tuple(int(x) for x in re.findall(r"\d+", ver)), ver, vmlinuz))
    if not found:
        return None
    _, ver, vmlinuz = max(found)
    return ver, vmlinuz


def missing():
    """What the lane lacks on this machine, as a list of package names."""
    out = []
    if not shutil.which("qemu-system-x86_64"):
        out.append("qemu-system-x86")
    if not lane_kernel():
        out.append("linux-image-amd64")
    if not Path("/bin/busybox").exists():
        out.append("busybox-static")
    if not shutil.which("cpio"):
        out.append("cpio")
    if not shutil.which("modprobe"):
        out.append("kmod")
    return out


def require():
    lack = missing()
    if lack:
        die(
            "the x86 lane needs " + ", ".join(lack) + ": run `python3 tests/lane/lane.py install` "
            "(as root) or `apt-get install " + " ".join(lack) + "`"
        )


def install():
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def modules(ver):
    """The module files to load, dependencies first, each once."""
    res = subprocess.run(
        ["modprobe", "-S", ver, "--show-depends", "-a", *MODULES],
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


def initramfs(ver):
    """The lane's initramfs, built once per input set and cached."""
    mods = modules(ver)
    h = hashlib.sha256()
    h.update(INIT.encode())
    h.update(ver.encode())
    for p in ["/bin/busybox", *mods]:
        st = os.stat(p)
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    out = CACHE / f"lane-x86_64-{h.hexdigest()[:16]}" / "initramfs.cpio"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        stage = Path(tmp) / "root"
        (stage / "bin").mkdir(parents=True)
        (stage / "modules").mkdir()
        shutil.copy2("/bin/busybox", stage / "bin/busybox")
        names = []
        for p in mods:
            shutil.copy2(p, stage / "modules" / Path(p).name)
            names.append(Path(p).name)
        (stage / "modules/order").write_text("\n".join(names) + "\n")
        (stage / "init").write_text(INIT)
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


def hidden_paths(paths, outdir):
    """Of `paths` (directories, or files: their directories), the ones a
    fresh tmpfs in the lane would hide, the outermost of nested ones, and
    none in the result directory `outdir`."""
    out = []
    dirs = set()
    for p in paths:
        p = Path(p).resolve()
        dirs.add(str(p.parent if p.is_file() else p))
    for p in sorted(dirs):
        if p == str(outdir) or p.startswith(f"{outdir}/"):
            continue
        if any(p == f or p.startswith(f + "/") for f in FRESH) and \
                not any(p.startswith(k + "/") for k in out):
            if "," in p or " " in p:
                die(f"the lane cannot share {p}: its path has a comma or a space")
            out.append(p)
    return out


def run_in_lane(argv, env, timeout, cpus, memory_mib, cwd, interactive=False, tcg="multi"):
    """Runs argv in the lane; returns its exit status. Interactive: the
    lane's console is this terminal (QEMU makes it raw), so a person can
    type into the command; nothing is captured. If the lane's kernel
    reports a soft lockup or an RCU stall, or its heartbeat stops, the lane
    VM is killed; then, or if the lane VM ends without the command's
    status, LANE_BROKE is returned."""
    require()
    ver, vmlinuz = lane_kernel()
    cpio = initramfs(ver)
    outdir = Path(tempfile.mkdtemp(prefix="strato-lane-"))
    try:
        script = [f"cd {shlex.quote(str(cwd))} || exit 125"]
        base = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(Path.home()),
            "TERM": "dumb",
            "STRATO_LANE": "x86_64",
            "STRATO_LANE_OUT": str(outdir),
        }
        for k, v in {**base, **env}.items():
            script.append(f"export {k}={shlex.quote(v)}")
        script.append("exec " + " ".join(shlex.quote(a) for a in argv))
        (outdir / "cmd.sh").write_text("\n".join(script) + "\n")
        # The command's directory, the test binaries, strato and the images
        # must be where they are on the host, also under /tmp.
        keep = hidden_paths(
            [cwd, ROOT, CACHE, *[v for v in env.values() if v.startswith("/") and ":" not in v]],
            outdir.resolve(),
        )
        qemu = [
            "qemu-system-x86_64",
            "-accel", f"tcg,thread={tcg},tb-size=512",
            "-cpu", "max",
            "-smp", str(cpus),
            "-m", f"{memory_mib}M",
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio",
            "-kernel", str(vmlinuz),
            "-initrd", str(cpio),
            "-append",
            f"console=ttyS0 loglevel=5 panic=-1 mitigations=off lane_out={outdir}"
            + (f" lane_keep={','.join(keep)}" if keep else ""),
            "-virtfs",
            "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
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
        proc = subprocess.Popen(
            qemu,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def pump():
            for raw in iter(proc.stdout.readline, b""):
                line = raw.decode("utf-8", "replace").replace("\r", "")
                tail.append(line)
                sys.stdout.write(line)
                sys.stdout.flush()
                if LOCKUP.search(line) and not locked_up.is_set():
                    locked_up.set()
                    os.killpg(proc.pid, signal.SIGKILL)

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
                    os.killpg(proc.pid, signal.SIGKILL)

        threading.Thread(target=watch_heartbeat, daemon=True).start()

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
            sys.stdout.write(
                "\nlane: the lane VM locked up or froze; it was killed. "
                "The last lines of its console:\n" + "".join(tail)
            )
            return LANE_BROKE
        rc_file = outdir / "rc"
        if not rc_file.exists():
            sys.stdout.write(
                f"\nlane: the lane VM ended (qemu status {proc.returncode}) without the "
                "command's status; the last lines of its console:\n" + "".join(tail)
            )
            return LANE_BROKE
        return int(rc_file.read_text().strip() or LANE_FAILED)
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def host_build(release):
    """Builds strato, the integration tests and the guest images on the host.
    Returns (env for the lane, [test executables])."""
    profile = ["--release"] if release else []
    subprocess.run(["cargo", "build", "-q", "-p", "api", *profile], cwd=ROOT, check=True)
    res = subprocess.run(
        ["cargo", "test", "-q", "-p", "strato-tests", "--no-run", "--message-format=json", *profile],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
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
    images = subprocess.run(
        ["bash", str(ROOT / "resources/build.sh"), "all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    target = Path(tests[0]).parents[1]
    env = {"STRATO_BIN": str(target / "strato")}
    for line in images.splitlines():
        k, _, v = line.partition("=")
        if v:
            env[f"STRATO_IMAGE_{k}"] = v
    return env, sorted(tests)


def lane_test(args):
    env, tests = host_build(args.release)
    # One test at a time: the lane's two emulated CPUs are the whole
    # machine, and two Linux guests of two vCPUs each starve one another
    # (timeouts, soft lockups) where a test alone runs steadily.
    env.setdefault("RUST_TEST_THREADS", "1")
    env.update(dict(kv.split("=", 1) for kv in args.env))
    # A lane VM per binary: a lane VM that locks up or dies (an emulator
    # fault, docs/testing.md) costs that binary a rerun, not the whole
    # suite. A test's own failure is never rerun.
    failed, retried, summary = [], [], []
    for t in tests:
        name = Path(t).name.rsplit("-", 1)[0]
        if name in HOST_ONLY:
            print(f"\n== {name}: not run in the lane ({HOST_ONLY[name]})", flush=True)
            summary.append(f"{name}: not run in the lane")
            continue
        for attempt in range(1 + LANE_RETRIES):
            print(f"\n== {name}" + (f" (again, attempt {attempt + 1})" if attempt else ""), flush=True)
            rc = run_in_lane(
                [t, "--include-ignored", *args.filters], env, args.timeout, args.cpus,
                args.memory, ROOT, tcg=args.tcg,
            )
            if rc != LANE_BROKE:
                break
            retried.append(name)
        if rc == 0:
            summary.append(f"{name}: ok")
        else:
            failed.append(name)
            summary.append(f"{name}: FAILED (status {rc})")
    print("\nlane summary:\n  " + "\n  ".join(summary), flush=True)
    if retried:
        print(f"lane: the lane VM broke (lockup or crash) under: {' '.join(retried)}; "
              "run again", flush=True)
    print(f"lane: {len(failed)} test binaries failed" + (f": {' '.join(failed)}" if failed else ""),
          flush=True)
    return 1 if failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
            s.add_argument("command", nargs=argparse.REMAINDER)
        else:
            s.add_argument("--release", action="store_true")
            s.add_argument("filters", nargs="*", help="libtest filters and options")
    sub.add_parser("check")
    sub.add_parser("install")
    args = p.parse_args()
    if args.cmd == "check":
        lack = missing()
        print("lane: ready" if not lack else "lane: missing " + " ".join(lack))
        return 0 if not lack else LANE_FAILED
    if args.cmd == "install":
        install()
        return 0
    if args.cmd == "test":
        return lane_test(args)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        die("run needs a command", 2)
    env = dict(kv.split("=", 1) for kv in args.env)
    for k in ("RUST_BACKTRACE", "RUST_LOG"):
        if k in os.environ:
            env.setdefault(k, os.environ[k])
    return run_in_lane(command, env, args.timeout, args.cpus, args.memory, Path.cwd(),
                       args.interactive, tcg=args.tcg)


if __name__ == "__main__":
    sys.exit(main())
