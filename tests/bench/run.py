#!/usr/bin/env python3
"""strato benchmark: start-up, exits, memory, virtio block and net throughput.

    python3 tests/bench/run.py [--only boot,pairs,block,net,micro,api]
                               [--runs N] [--pairs N]
                               [--io-runs N] [--scale F] [--vmms LIST]
                               [--strato PATH] [--qemu PATH]
                               [--firecracker PATH] [--loops N]
                               [--timeout S] [--json PATH]

Builds strato (release) unless --strato is given, builds the test guests into
a temporary directory, then boots the same guests under every VMM present
(strato, QEMU microvm, and Firecracker if --firecracker or
$STRATO_BENCH_FIRECRACKER names a binary) and prints Markdown tables of
min / median / max.  Every guest runs with 1 vCPU and 128 MiB.  Sections:

  boot   start-up time, port-I/O exits per second, peak RSS (--runs N)
  pairs  the hello guest's start -> first output and start -> exit, one
         run per VMM per round, back to back, the order rotating each round,
         with each round's strato / other ratio (--pairs N)
  block  virtio-blk: 4 KiB and 1 MiB reads and writes with blk-copy's
         benchmark mode on a 256 MiB raw image, a 16 MiB copy between two
         drives, and the host's own read speed of the image (--io-runs N)
  net    virtio-net: frames per second guest -> host and host -> guest with
         the net-bench guest, on a tap in a network namespace created (and
         deleted) for the run (--io-runs N); needs root
  micro  strato's devices alone, no VM: cargo run --release -p devices
         --example virtio_micro

See docs/benchmarks.md for what each figure means.  Python 3.11 stdlib only;
gcc (which the guests need anyway) also builds a tiny static spawn helper.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GREETING = b"Hello from strato test guest"
MEM_MIB = 128
VCPUS = 1
HELLO_CMDLINE = "console=ttyS0"
# Target wall time of the big serial-loop run when --loops is "auto".
LOOP_TARGET_S = 3.0
# Pages the VMM writes for the guest besides its image (boot params or PVH
# start info, command line, e820/memory map, MP table, GDT, boot page tables):
# a generous allowance for the "guest-touched memory" estimate.
BOOT_DATA_KIB = 64


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Result:
    def __init__(self, ok, why="", first=None, exit=None, maxrss_kib=None, code=None,
                 match=None):
        self.ok, self.why, self.code, self.match = ok, why, code, match
        self.first, self.exit, self.maxrss_kib = first, exit, maxrss_kib


class Vmm:
    """How to boot a kernel with a command line under one VMM.

    `drives` is a list of (image path, read-only) in the order the guest
    should see them (disk 0 first); `nic` is (tap name, MAC) or None;
    `initrd` a path or None; `acpi` whether the guest gets ACPI tables
    (QEMU's microvm only, where it is a choice: strato and Firecracker
    always give them).
    """

    # Exit statuses that count as a clean end of the guest.
    ok_status = (0,)

    def __init__(self, key, label, path):
        self.key, self.label, self.path = key, label, str(path)

    def argv(self, kernel, cmdline, scratch, drives=(), nic=None, initrd=None, acpi=False):
        raise NotImplementedError

    def run(self, kernel, cmdline, expect, timeout, scratch, drives=(), nic=None):
        return run_once(self.argv(kernel, cmdline, scratch, drives, nic), expect, timeout,
                        scratch, self.ok_status)

    def version(self):
        return ""


class Strato(Vmm):
    # Set when the benchmark built the binary from this checkout: only then
    # does the checkout's git revision describe it.
    built_here = False

    def argv(self, kernel, cmdline, scratch, drives=(), nic=None, initrd=None, acpi=False):
        argv = [self.path, "run", "--kernel", str(kernel), "--cmdline", cmdline,
                "--vcpus", str(VCPUS), "--memory", str(MEM_MIB), "--no-stdin"]
        if initrd:
            argv += ["--initrd", str(initrd)]
        for path, ro in drives:
            argv += ["--drive", f"path={path}" + (",readonly=on" if ro else "")]
        if nic:
            argv += ["--net", f"tap={nic[0]},mac={nic[1]}"]
        return argv

    def version(self):
        if not self.built_here:
            return "given with --strato"
        try:
            rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return f"git {rev}{'+changes' if dirty else ''}" if rev else ""
        except (OSError, subprocess.SubprocessError):
            return ""


# QEMU's microvm has 8 virtio-mmio transports of 512 bytes at 0xfeb00000 +
# 0x200 * n (IRQ 5 + n), fills them from the last one down and puts nothing
# on a PVH kernel's command line: list them, last first, so that the order
# of the -device options is the order the guest finds the devices in.
QEMU_VIRTIO_MMIO = "".join(f" virtio_mmio.device=512@{0xfeb00000 + 0x200 * i:#x}:{5 + i}"
                           for i in range(7, -1, -1))


class Qemu(Vmm):
    def argv(self, kernel, cmdline, scratch, drives=(), nic=None, initrd=None, acpi=False):
        machine = "microvm,accel=kvm" + ("" if acpi else ",acpi=off")
        argv = [self.path, "-M", machine, "-cpu", "host,-arch-capabilities",
                "-m", str(MEM_MIB), "-smp", str(VCPUS), "-nodefaults", "-no-user-config",
                "-nographic", "-serial", "stdio", "-no-reboot"]
        if drives or nic:
            argv += ["-global", "virtio-mmio.force-legacy=false"]
            cmdline += QEMU_VIRTIO_MMIO
        for i, (path, ro) in enumerate(drives):
            # cache=writeback (QEMU's default): buffered I/O through the host
            # page cache, FLUSH = fdatasync, as strato and Firecracker do.
            argv += ["-drive", f"id=d{i},file={path},format=raw,if=none,cache=writeback,"
                               f"aio=threads" + (",readonly=on" if ro else ""),
                     "-device", f"virtio-blk-device,drive=d{i}"]
        if nic:
            argv += ["-netdev", f"tap,id=n0,ifname={nic[0]},script=no,downscript=no,vhost=off",
                     "-device", f"virtio-net-device,netdev=n0,mac={nic[1]}"]
        if initrd:
            argv += ["-initrd", str(initrd)]
        return argv + ["-kernel", str(kernel), "-append", cmdline]

    def version(self):
        return first_line([self.path, "--version"])


class Firecracker(Vmm):
    # The test guests triple-fault if still running after their i8042 reset;
    # when Firecracker's vCPU thread sees that shutdown before its main loop
    # has handled the reset, it exits with status 1 instead of 0. The guest
    # has finished either way, so both count (and are reported).
    ok_status = (0, 1)

    def argv(self, kernel, cmdline, scratch, drives=(), nic=None, initrd=None, acpi=False):
        cfg = {
            "boot-source": {"kernel_image_path": str(kernel), "boot_args": cmdline},
            # Writeback: FLUSH is offered and done with fsync, as in strato
            # and QEMU (Firecracker's default, Unsafe, ignores flushes).
            "drives": [{"drive_id": f"d{i}", "path_on_host": str(path),
                        "is_root_device": False, "is_read_only": ro,
                        "cache_type": "Writeback"}
                       for i, (path, ro) in enumerate(drives)],
            "machine-config": {"vcpu_count": VCPUS, "mem_size_mib": MEM_MIB},
        }
        if initrd:
            cfg["boot-source"]["initrd_path"] = str(initrd)
        if nic:
            cfg["network-interfaces"] = [{"iface_id": "eth0", "host_dev_name": nic[0],
                                          "guest_mac": nic[1]}]
        path = Path(scratch) / "firecracker.json"
        path.write_text(json.dumps(cfg))
        # Its log goes to a file: by default it shares stdout with the guest.
        log_path = Path(scratch) / "firecracker.log"
        log_path.touch()
        return [self.path, "--no-api", "--config-file", str(path), "--log-path", str(log_path)]

    def version(self):
        return first_line([self.path, "--version"])


def first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        return out.strip().splitlines()[0] if out.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


# Peak RSS comes from wait4's ru_maxrss, but Linux seeds a process's
# ru_maxrss at exec with the RSS of the address space it leaves: a VMM spawned
# straight from Python would report at least Python's own RSS (~14 MiB). So
# every VMM is started through this tiny static helper, whose address space
# is ~0.5 MiB: it forks and execs the VMM, waits for it with wait4 and writes
# "<wait status> <ru_maxrss KiB>" to OUTFILE.
SPAWN_C = r"""
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 3) return 125;
    pid_t parent = getpid(), pid = fork();
    if (pid < 0) return 126;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(126);
        execv(argv[2], argv + 2);
        _exit(127);
    }
    int status;
    struct rusage ru;
    while (wait4(pid, &status, 0, &ru) < 0)
        if (errno != EINTR) return 126;
    FILE *f = fopen(argv[1], "w");
    if (!f) return 126;
    fprintf(f, "%d %ld\n", status, ru.ru_maxrss);
    fclose(f);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
"""
NOP_C = "int main(void) { return 0; }\n"


def build_helpers(scratch):
    cc = os.environ.get("CC", "gcc")
    out = {}
    for name, src in (("spawn", SPAWN_C), ("nop", NOP_C), ("sender", SENDER_C)):
        c = Path(scratch) / f"{name}.c"
        c.write_text(src)
        exe = Path(scratch) / name
        r = subprocess.run([cc, "-O2", "-static", "-o", str(exe), str(c)], capture_output=True)
        if r.returncode != 0:  # no static libc: dynamic, with a higher RSS floor
            subprocess.run([cc, "-O2", "-o", str(exe), str(c)], check=True)
        out[name] = exe
    return out


def spawn_with_deadline(argv, scratch, timeout):
    """Starts argv in a session of its own in `scratch`, stdout piped,
    stderr to scratch/stderr.txt; its process group is killed after
    `timeout` s. Returns (process, spawn time, timed-out event, timer)."""
    with open(Path(scratch) / "stderr.txt", "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, cwd=scratch, start_new_session=True)
    timed_out = threading.Event()

    def kill():
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    timer = threading.Timer(timeout, kill)
    timer.start()
    return proc, t0, timed_out, timer


def run_once(argv, expect, timeout, scratch, ok_status=(0,)):
    """Boot once; time the first byte of `expect` (bytes or a compiled bytes
    regex) on stdout and the exit."""
    scratch = Path(scratch)
    errpath, rusage = scratch / "stderr.txt", scratch / "rusage.txt"
    rusage.unlink(missing_ok=True)
    proc, t0, timed_out, timer = spawn_with_deadline(
        [str(scratch / "spawn"), str(rusage)] + argv, scratch, timeout)
    buf = bytearray()
    chunks = []  # (offset in buf, arrival time)
    fd = proc.stdout.fileno()
    while True:
        data = os.read(fd, 65536)
        now = time.perf_counter()
        if not data:
            break
        chunks.append((len(buf), now))
        buf += data
    _, status, _ = os.wait4(proc.pid, 0)
    t_exit = time.perf_counter()
    timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    proc.stdout.close()

    if timed_out.is_set():
        return Result(False, f"timed out after {timeout:.0f} s")
    try:
        wstatus, maxrss = (int(x) for x in rusage.read_text().split())
        code = os.waitstatus_to_exitcode(wstatus)
    except (OSError, ValueError):
        return Result(False, f"spawn helper failed (status {proc.returncode})")
    if expect is None:
        idx, match = 0, None
    elif isinstance(expect, bytes):
        idx, match = buf.find(expect), None
    else:
        match = expect.search(buf)
        idx = match.start() if match else -1
    if code not in ok_status or idx < 0:
        tail = errpath.read_bytes().decode(errors="replace").strip().splitlines()[-3:]
        pattern = expect if isinstance(expect, bytes) else expect.pattern
        what = f"exit status {code}" if code not in ok_status else \
            f"{pattern.decode()!r} not on stdout"
        return Result(False, f"{what}; stdout ends {bytes(buf[-200:])!r}; "
                             f"stderr ends {' | '.join(tail)!r}")
    first = max((t for off, t in chunks if off <= idx), default=t_exit)
    return Result(True, first=first - t0, exit=t_exit - t0, maxrss_kib=maxrss, code=code,
                  match=match)


def loop_expect(n):
    return f"serial-loop: {n} writes done".encode()


def elf_load_kib(path):
    """Sum of PT_LOAD memory sizes of an ELF64 file, in KiB, page-rounded."""
    data = path.read_bytes()
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    total = 0
    for i in range(phnum):
        p_type, = struct.unpack_from("<I", data, phoff + i * phentsize)
        if p_type == 1:  # PT_LOAD
            vaddr, = struct.unpack_from("<Q", data, phoff + i * phentsize + 0x10)
            memsz, = struct.unpack_from("<Q", data, phoff + i * phentsize + 0x28)
            start, end = vaddr & ~0xfff, (vaddr + memsz + 0xfff) & ~0xfff
            total += end - start
    return total // 1024


def build_strato():
    log("building strato: cargo build --release -p api")
    subprocess.run(["cargo", "build", "--release", "-p", "api"], cwd=REPO, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    if not target.is_absolute():
        target = REPO / target
    return target / "release" / "strato"


def executable(path, what):
    p = Path(path).expanduser()
    if not (p.is_file() and os.access(p, os.X_OK)):
        sys.exit(f"run.py: {what} {p} is not an executable file")
    return p.resolve()


def calibrate(vmm, guest, timeout, scratch):
    """Pick a loop count that takes about LOOP_TARGET_S under this VMM."""
    probe = 20000
    t = {}
    for n in (0, probe):
        r = vmm.run(guest, f"loops={n}", loop_expect(n), timeout, scratch)
        if not r.ok:
            log(f"calibration under {vmm.label} failed ({r.why}); using 200000 loops")
            return 200000
        t[n] = r.exit
    rate = probe / max(t[probe] - t[0], 1e-3)
    n = int(rate * LOOP_TARGET_S)
    digits = max(len(str(n)) - 2, 0)
    return max(10000, min(round(n, -digits), 50_000_000))


def fmt_triplet(values, fmt):
    if not values:
        return "n/a"
    return " / ".join(fmt(v) for v in (min(values), statistics.median(values), max(values)))


def machine_facts():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    kvm = [m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if Path(f"/sys/module/{m}").exists()]
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem} RAM, Linux {platform.release()}, "
            f"KVM module: {', '.join(kvm) or 'unknown'}")


# ---------------------------------------------------------------- boot


def boot_section(args, vmms, guests, helpers, scratch):
    """Start-up, exit rate and RSS; returns (lines, failed)."""
    hello, loop = guests / "hello.elf", guests / "serial-loop.elf"
    # What the harness itself costs: a static no-op through the helper.
    floor = [run_once([str(helpers["nop"])], None, args.timeout, scratch)
             for _ in range(args.runs)]

    loops = int(args.loops) if args.loops != "auto" else calibrate(vmms[0], loop,
                                                                   args.timeout, scratch)
    log(f"boot: serial-loop loops={loops}; {args.runs} runs each under "
        f"{', '.join(v.label for v in vmms)}")

    plan = [("hello", hello, HELLO_CMDLINE, GREETING),
            ("loop0", loop, "loops=0", loop_expect(0)),
            ("loopN", loop, f"loops={loops}", loop_expect(loops))]
    res = {v.key: {k: [] for k, *_ in plan} for v in vmms}
    # One untimed warm-up boot per VMM and guest (page cache, dynamic loader).
    for v in vmms:
        for _, kernel, cmdline, expect in plan[:2]:
            v.run(kernel, cmdline, expect, args.timeout, scratch)
    # Interleave VMMs run by run so drift on the machine hits all alike.
    for i in range(args.runs):
        for v in vmms:
            for key, kernel, cmdline, expect in plan:
                r = v.run(kernel, cmdline, expect, args.timeout, scratch)
                res[v.key][key].append(r)
                if not r.ok:
                    log(f"boot run {i + 1}: {v.label} {key} FAILED: {r.why}")
        log(f"boot run {i + 1}/{args.runs} done")
    image_kib = elf_load_kib(hello)

    touched_kib = image_kib + BOOT_DATA_KIB
    rows = {}
    for v in vmms:
        r = res[v.key]
        ok = lambda key: [x for x in r[key] if x.ok]  # noqa: E731
        fails = {k: len(r[k]) - len(ok(k)) for k in r}
        rates = [loops / (big.exit - zero.exit)
                 for zero, big in zip(r["loop0"], r["loopN"])
                 if zero.ok and big.ok and big.exit > zero.exit]
        rss = [x.maxrss_kib / 1024 for x in ok("hello")]
        hf = fails["hello"]
        lf = args.runs - len(rates)
        rows[v.key] = [
            cell(fmt_triplet([x.first * 1000 for x in ok("hello")], lambda x: f"{x:.1f}"), hf),
            cell(fmt_triplet([x.exit * 1000 for x in ok("hello")], lambda x: f"{x:.1f}"), hf),
            cell(fmt_triplet([x / 1000 for x in rates], lambda x: f"{x:.0f}k"), lf),
            cell(fmt_triplet(rss, lambda x: f"{x:.1f}"), hf),
            cell(fmt_triplet([x - touched_kib / 1024 for x in rss], lambda x: f"{x:.1f}"), hf),
        ]

    labels = [
        "start → first guest output (ms)",
        "start → exit (ms)",
        "port-I/O exits per second",
        f"peak RSS, {MEM_MIB} MiB guest (MiB)",
        "peak RSS − guest-touched memory (MiB)",
    ]
    out = ["## Start-up, exits, memory", ""]
    out.append(f"- {args.runs} runs each; guests: hello, serial-loop loops=0 and loops={loops}; "
               f"cells are min / median / max")
    out.append(f"- guest-touched memory estimated as {touched_kib} KiB (hello.elf PT_LOAD "
               f"{image_kib} KiB + {BOOT_DATA_KIB} KiB boot data)")
    fl = [x for x in floor if x.ok]
    if fl:
        out.append(f"- harness floor (static no-op started the same way): "
                   f"{statistics.median(x.exit for x in fl) * 1000:.2f} ms to exit, "
                   f"{statistics.median(x.maxrss_kib for x in fl) / 1024:.1f} MiB peak RSS "
                   f"(medians)")
    keep_raw("boot", res)
    out += odd_status_lines(vmms, res, 3 * args.runs)
    out += [""] + table(vmms, labels, rows)
    failed = any(not x.ok for v in vmms for k in res[v.key] for x in res[v.key][k])
    return out, failed


# ---------------------------------------------------------------- pairs


def pairs_section(args, vmms, guests, scratch):
    """The hello guest under every VMM back to back, --pairs rounds, the
    order rotating each round so that neither VMM always runs first; returns
    (lines, failed)."""
    hello = guests / "hello.elf"
    for v in vmms:  # untimed warm-up
        v.run(hello, HELLO_CMDLINE, GREETING, args.timeout, scratch)
    log(f"pairs: {args.pairs} rounds of hello under {', '.join(v.label for v in vmms)}")
    res = {v.key: {"hello": []} for v in vmms}
    for i in range(args.pairs):
        k = i % len(vmms)
        for v in vmms[k:] + vmms[:k]:
            r = v.run(hello, HELLO_CMDLINE, GREETING, args.timeout, scratch)
            res[v.key]["hello"].append(r)
            if not r.ok:
                log(f"pairs round {i + 1}: {v.label} FAILED: {r.why}")
    keep_raw("pairs", res)

    ms = lambda x: f"{x:.1f}"  # noqa: E731
    strato = next((v for v in vmms if v.key == "strato"), None)
    rows = {}
    for v in vmms:
        runs = res[v.key]["hello"]
        ok = [x for x in runs if x.ok]
        fails = len(runs) - len(ok)
        rows[v.key] = [
            cell(fmt_triplet([x.first * 1000 for x in ok], ms), fails),
            cell(fmt_triplet([x.exit * 1000 for x in ok], ms), fails),
            cell(fmt_triplet([(x.exit - x.first) * 1000 for x in ok], ms), fails),
        ]
        for what in ("first", "exit"):
            if strato is None or v is strato:
                rows[v.key].append("—")
                continue
            ratios = [getattr(a, what) / getattr(b, what)
                      for a, b in zip(res["strato"]["hello"], runs) if a.ok and b.ok]
            rows[v.key].append(
                f"{fmt_triplet(ratios, lambda x: f'{x:.2f}')}; strato slower in "
                f"{sum(r > 1 for r in ratios)} of {len(ratios)}" if ratios else "n/a")
    labels = [
        "start → first guest output (ms)",
        "start → exit (ms)",
        "first output → exit (ms)",
        "strato ÷ this VMM per round, start → first output",
        "strato ÷ this VMM per round, start → exit",
    ]
    out = ["## Start and exit, back to back", ""]
    out.append(f"- hello guest, {args.pairs} rounds of one run per VMM, the order rotating "
               f"each round; cells are min / median / max")
    out.append("- first output → exit: the guest's last lines, the VMM's stop and the "
               "kernel's teardown of the VM, up to the process being reaped")
    out += odd_status_lines(vmms, res, args.pairs)
    out += [""] + table(vmms, labels, rows)
    failed = any(not x.ok for v in vmms for x in res[v.key]["hello"])
    return out, failed


# --------------------------------------------------------------- shared


# Per-run results of every section, for --json.
RAW = {}


def keep_raw(section, res):
    RAW[section] = {vkey: {key: [{"ok": r.ok, "first_s": r.first, "exit_s": r.exit,
                                  "maxrss_kib": r.maxrss_kib, "status": r.code, "why": r.why}
                                 for r in runs]
                           for key, runs in per.items()}
                    for vkey, per in res.items()}


def cell(text, fails):
    return f"{text} ({fails} failed)" if fails else text


def table(vmms, labels, rows):
    lines = ["| figure | " + " | ".join(v.label for v in vmms) + " |",
             "| --- | " + " | ".join("---" for _ in vmms) + " |"]
    for i, label in enumerate(labels):
        lines.append(f"| {label} | " + " | ".join(rows[v.key][i] for v in vmms) + " |")
    return lines


def odd_status_lines(vmms, res, total):
    out = []
    for v in vmms:
        odd = [x.code for k in res[v.key] for x in res[v.key][k] if x.ok and x.code]
        if odd:
            out.append(f"- {v.label}: {len(odd)} of {total} timed runs exited with status "
                       f"{', '.join(str(c) for c in sorted(set(odd)))} after the guest finished")
    return out


def fmt_rate(x):
    """Operations per second, 3 significant digits."""
    for div, suffix in ((1e6, "M"), (1e3, "k"), (1, "")):
        if x >= div:
            v = x / div
            return f"{v:.3g}{suffix}" if v < 1000 else f"{v:.0f}{suffix}"
    return f"{x:.3g}"


def fmt_mib(x):
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}"


def rates_from(res_v, zero_key, key, count):
    """count / (t_done(count) − t_done(0)) for each run where both worked.
    Returns (rates, text for the runs missing: failed, or too short to
    measure because the pair's difference was not positive)."""
    rates, failed, short = [], 0, 0
    for zero, big in zip(res_v[zero_key], res_v[key]):
        if not (zero.ok and big.ok):
            failed += 1
        elif big.first <= zero.first:
            short += 1
        else:
            rates.append(count / (big.first - zero.first))
    notes = [f"{failed} failed"] * bool(failed) + [f"{short} too short"] * bool(short)
    return rates, ", ".join(notes)


def cell_notes(text, notes):
    return f"{text} ({notes})" if notes else text


def run_plan(args, vmms, plans, res, scratch, what):
    """Runs each VMM's plan, plans[vmm.key] = [(key, kernel, cmdline, expect,
    drives, nic, before, after)], --io-runs times, interleaving the VMMs run
    by run, after one untimed warm-up of each zero-count item (key ending in
    "0").  before() runs untimed ahead of each boot; after(result) runs
    after it (with None after a warm-up) and may return a reason to count
    the run as failed.  Results go to res[vmm.key][key]."""
    for v in vmms:
        for key, kernel, cmdline, expect, drives, nic, before, after in plans[v.key]:
            if key.endswith("0"):
                if before:
                    before()
                v.run(kernel, cmdline, expect, args.timeout, scratch, drives, nic)
                if after:
                    after(None)
    for i in range(args.io_runs):
        for v in vmms:
            for key, kernel, cmdline, expect, drives, nic, before, after in plans[v.key]:
                if before:
                    before()
                r = v.run(kernel, cmdline, expect, args.timeout, scratch, drives, nic)
                if after:
                    why = after(r)
                    if why and r.ok:
                        r.ok, r.why = False, why
                res[v.key][key].append(r)
                if not r.ok:
                    log(f"{what} run {i + 1}: {v.label} {key} FAILED: {r.why}")
        log(f"{what} run {i + 1}/{args.io_runs} done")


# ---------------------------------------------------------------- block

BLK_IMAGE_MIB = 256
# (op, request KiB, requests at --scale 1): about a second or less each here.
BLK_PLAN = [("read", 4, 10000), ("read", 1024, 1000), ("write", 4, 10000), ("write", 1024, 1000)]
COPY_MIB = 16
COPY_CHUNK_KIB = 32


def blk_expect(n):
    return f"blk-bench: {n} requests done".encode()


def size_name(kib):
    return f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"


def write_random_image(path, mib):
    """mib MiB of random bytes (one random MiB repeated), synced to disk."""
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(block)
        f.flush()
        os.fdatasync(f.fileno())


def fresh_image(path, mib):
    """A new sparse raw image, as `truncate` or `qemu-img create` make.  The
    old one is deleted and the file systems synced first, so that neither
    its writeback nor the freeing (and discarding) of its blocks falls into
    the next timed run."""
    Path(path).unlink(missing_ok=True)
    os.sync()
    with open(path, "wb") as f:
        f.truncate(mib << 20)


def evict(path):
    """Drops the (clean, synced) file's pages from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_mib(path):
    """MiB of the file in the page cache (fincore), or None."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES",
                              str(path)], capture_output=True, text=True, timeout=10).stdout
        return int(out.split()[0]) / (1 << 20)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def dd_read(path, bs):
    """Bytes per second of `dd if=path of=/dev/null bs=bs`."""
    r = subprocess.run(["dd", f"if={path}", "of=/dev/null", f"bs={bs}"],
                       capture_output=True, text=True, check=True)
    m = re.search(r"^(\d+) bytes .* copied, ([0-9.e+-]+) s", r.stderr, re.M)
    return int(m[1]) / float(m[2])


def host_read_speeds(img):
    """dd of the image: uncached (evicted first), then cached, 1 MiB and
    4 KiB blocks.  Returns lines of text."""
    evict(img)
    res_before = resident_mib(img)
    uncached = dd_read(img, "1M")
    cached = [dd_read(img, "1M") for _ in range(3)]
    cached4k = [dd_read(img, "4k") for _ in range(3)]
    res_after = resident_mib(img)
    mib = lambda bps: bps / (1 << 20)  # noqa: E731
    lines = [f"- host read of the {BLK_IMAGE_MIB} MiB image with dd: uncached "
             f"(evicted with POSIX_FADV_DONTNEED"
             + (f", {res_before:.0f} MiB resident before" if res_before is not None else "")
             + f") {mib(uncached):.0f} MiB/s with bs=1M; cached "
             f"{mib(statistics.median(cached)):.0f} MiB/s with bs=1M, "
             f"{mib(statistics.median(cached4k)):.0f} MiB/s = "
             f"{fmt_rate(statistics.median(cached4k) / 4096)} reads/s with bs=4k (medians of 3)"]
    if res_after is not None:
        lines.append(f"- the VMM runs read from the page cache: {res_after:.0f} of "
                     f"{BLK_IMAGE_MIB} MiB of the image resident after the host reads, and "
                     f"writes go to fresh files through the page cache (no VMM here uses "
                     f"O_DIRECT)")
    return lines


def block_section(args, vmms, guests, scratch):
    kernel = guests / "blk-copy.elf"
    sdir = Path(scratch)
    img, wimg = sdir / "read.img", sdir / "write.img"
    src, dst = sdir / "copy-src.img", sdir / "copy-dst.img"
    log(f"block: writing a {BLK_IMAGE_MIB} MiB image")
    write_random_image(img, BLK_IMAGE_MIB)
    write_random_image(src, COPY_MIB)
    host_lines = host_read_speeds(img)
    counts = {(op, kib): max(1, round(n * args.scale)) for op, kib, n in BLK_PLAN}

    def fresh_w():
        fresh_image(wimg, BLK_IMAGE_MIB)

    def fresh_dst():
        fresh_image(dst, COPY_MIB)

    src_bytes = src.read_bytes()

    def check_copy(r):
        if r is not None and r.ok and dst.read_bytes() != src_bytes:
            return "copy differs from the source"
        return None

    plan = []
    for op in ("read", "write"):
        drives = [(img, True)] if op == "read" else [(wimg, False)]
        before = None if op == "read" else fresh_w
        plan.append((f"{op}0", kernel, f"op={op} count=0 chunk=4", blk_expect(0), drives, None,
                     before, None))
        for o, kib, _ in BLK_PLAN:
            if o == op:
                n = counts[(op, kib)]
                plan.append((f"{op}{kib}", kernel, f"op={op} count={n} chunk={kib}",
                             blk_expect(n), drives, None, before, None))
    plan.append(("copy", kernel, f"chunk={COPY_CHUNK_KIB}", b"blk-copy: flush ok",
                 [(src, True), (dst, False)], None, fresh_dst, check_copy))
    res = {v.key: {p[0]: [] for p in plan} for v in vmms}
    log(f"block: {args.io_runs} runs each under {', '.join(v.label for v in vmms)}")
    run_plan(args, vmms, {v.key: plan for v in vmms}, res, scratch, "block")
    keep_raw("block", res)
    for p in (wimg, dst):
        p.unlink(missing_ok=True)

    labels, rows = [], {v.key: [] for v in vmms}
    for op, kib, _ in BLK_PLAN:
        n = counts[(op, kib)]
        labels.append(f"{op} {size_name(kib)}: requests/s")
        labels.append(f"{op} {size_name(kib)}: MiB/s")
        for v in vmms:
            rates, notes = rates_from(res[v.key], f"{op}0", f"{op}{kib}", n)
            rows[v.key].append(cell_notes(fmt_triplet(rates, fmt_rate), notes))
            rows[v.key].append(cell_notes(fmt_triplet([x * kib / 1024 for x in rates],
                                                      fmt_mib), notes))
    labels.append(f"copy {COPY_MIB} MiB disk 0 → disk 1 in {COPY_CHUNK_KIB} KiB requests + "
                  f"flush: start → exit (ms)")
    labels.append("zero-request run (read): start → done line (ms)")
    for v in vmms:
        ok = [x for x in res[v.key]["copy"] if x.ok]
        rows[v.key].append(cell(fmt_triplet([x.exit * 1000 for x in ok], lambda x: f"{x:.0f}"),
                                args.io_runs - len(ok)))
        ok0 = [x for x in res[v.key]["read0"] if x.ok]
        rows[v.key].append(cell(fmt_triplet([x.first * 1000 for x in ok0],
                                            lambda x: f"{x:.1f}"), args.io_runs - len(ok0)))

    out = ["## virtio-blk", ""]
    what = ", ".join(f"{op} {size_name(kib)} count={counts[(op, kib)]}" for op, kib, _ in BLK_PLAN)
    out.append(f"- guest blk-copy, one disk (a {BLK_IMAGE_MIB} MiB raw image; read-only for "
               f"reads, a fresh sparse file per run for writes), one request in flight; {what}")
    out.append("- rates: count / (t(count) − t(0)), t = VMM start → the guest's "
               "`blk-bench: N requests done` line; cells are min / median / max of "
               f"{args.io_runs} runs")
    out.append(f"- copy: blk-copy chunk={COPY_CHUNK_KIB} from a {COPY_MIB} MiB image (read-only) "
               "to a fresh sparse one, then FLUSH (fdatasync); the result is compared with "
               "the source")
    out += host_lines
    out += odd_status_lines(vmms, res, len(plan) * args.io_runs)
    out += [""] + table(vmms, labels, rows)
    failed = any(not x.ok for v in vmms for k in res[v.key] for x in res[v.key][k])
    return out, failed


# ------------------------------------------------------------------ net

NET_TAP = "sbench0"
GUEST_MAC = "06:00:00:00:00:01"
# (direction, frame bytes, frames at --scale 1)
NET_PLAN = [("tx", 60, 500000), ("tx", 1514, 500000), ("rx", 60, 100000), ("rx", 1514, 100000)]
# The guest reposts receive buffers (and notifies) once at least this many
# are used, like Linux's virtio-net, which refills when more than half a
# NAPI budget (64) of buffers is free; transmit descriptors are reposted
# as soon as any completes.
NET_RX_BATCH = 32
CLONE_NEWNET = 0x40000000

# Host -> guest frames: runs in the namespace (ip netns exec, which also
# mounts that namespace's sysfs) and sends frames of ethertype 0x88b5 to the
# guest's MAC on the tap through an AF_PACKET socket (sendmmsg, qdisc
# bypassed), only while a VMM has the tap open (carrier up).  A tap drops
# what does not fit its queue, so the sender keeps at most WINDOW frames
# queued: sent - (frames the VMM has read + frames dropped), from the tap's
# tx counters, which tun updates when the reader takes a frame.  C rather
# than Python because it shares the CPUs with the VMM: about a third of
# the CPU time per frame.
#
#   sender TAP SIZE DST-MAC      prints "ready", then runs until killed
SENDER_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define WINDOW 512
#define LOW 256
#define BURST 64

static long rd(int fd) {
    char b[32];
    ssize_t n = pread(fd, b, sizeof b - 1, 0);
    if (n <= 0) return -1;
    b[n] = 0;
    return strtol(b, NULL, 10);
}
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}
int main(int argc, char **argv) {
    if (argc != 4) return 2;
    const char *tap = argv[1];
    int size = atoi(argv[2]);
    unsigned char frame[1514] = {0};
    if (size < 60 || size > 1514) return 2;
    if (sscanf(argv[3], "%hhx:%hhx:%hhx:%hhx:%hhx:%hhx", &frame[0], &frame[1], &frame[2],
               &frame[3], &frame[4], &frame[5]) != 6) return 2;
    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("socket"); return 1; }
    struct ifreq ifr = {0};
    strncpy(ifr.ifr_name, tap, IFNAMSIZ - 1);
    if (ioctl(s, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
    memcpy(frame + 6, ifr.ifr_hwaddr.sa_data, 6);
    frame[12] = 0x88; frame[13] = 0xb5;
    memcpy(frame + 14, "strato-net-bench", 16);
    struct sockaddr_ll ll = {.sll_family = AF_PACKET, .sll_ifindex = if_nametoindex(tap)};
    if (bind(s, (struct sockaddr *)&ll, sizeof ll) < 0) { perror("bind"); return 1; }
    int one = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
    char path[128];
    snprintf(path, sizeof path, "/sys/class/net/%s/carrier", tap);
    int carrier = open(path, O_RDONLY);
    snprintf(path, sizeof path, "/sys/class/net/%s/statistics/tx_packets", tap);
    int txp = open(path, O_RDONLY);
    snprintf(path, sizeof path, "/sys/class/net/%s/statistics/tx_dropped", tap);
    int txd = open(path, O_RDONLY);
    if (carrier < 0 || txp < 0 || txd < 0) { perror("sysfs"); return 1; }
    struct iovec iov = {frame, size};
    struct mmsghdr msgs[BURST];
    for (int i = 0; i < BURST; i++)
        msgs[i] = (struct mmsghdr){.msg_hdr = {.msg_iov = &iov, .msg_iovlen = 1}};
    printf("ready\n");
    fflush(stdout);
    long sent = 0, t0 = rd(txp) + rd(txd), last = 0;
    double stall = now();
    for (;;) {
        if (rd(carrier) != 1) {
            usleep(1000);
            sent = last = 0;
            t0 = rd(txp) + rd(txd);
            continue;
        }
        long done = rd(txp) + rd(txd) - t0;
        if (done != last) {
            last = done;
            stall = now();
        } else if (now() - stall > 0.05) {
            sent = done;  /* frames lost untracked: resync */
            stall = now();
        }
        long inflight = sent - done;
        if (inflight > LOW) {
            usleep(100);
            continue;
        }
        for (long want = WINDOW - inflight; want > 0;) {
            int k = sendmmsg(s, msgs, want < BURST ? want : BURST, 0);
            if (k <= 0) break;
            sent += k;
            want -= k;
        }
    }
}
"""


class Netns:
    """A network namespace with one tap, deleted on exit; enter() moves this
    thread (and so the VMMs it spawns) into it."""

    def __init__(self):
        self.name = f"strato-bench-{os.getpid()}"
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.home = None

    def __enter__(self):
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        try:
            # No IPv6 autoconfiguration chatter on the tap.
            subprocess.run(["ip", "netns", "exec", self.name, "sysctl", "-qw",
                            "net.ipv6.conf.all.disable_ipv6=1",
                            "net.ipv6.conf.default.disable_ipv6=1"],
                           capture_output=True)
            subprocess.run(["ip", "-n", self.name, "tuntap", "add", "dev", NET_TAP,
                            "mode", "tap"], check=True)
            subprocess.run(["ip", "-n", self.name, "link", "set", NET_TAP, "up"], check=True)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _setns(self, path):
        fd = os.open(path, os.O_RDONLY)
        try:
            if self.libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns {path}: {os.strerror(err)}")
        finally:
            os.close(fd)

    def enter(self):
        self.home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        self._setns(f"/run/netns/{self.name}")

    def leave(self):
        if self.home is not None:
            if self.libc.setns(self.home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
            os.close(self.home)
            self.home = None

    def __exit__(self, *exc):
        self.leave()
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def tap_rx_packets():
    """Frames the tap has received from the VMM (this thread's namespace)."""
    for line in open("/proc/thread-self/net/dev"):
        name, _, rest = line.partition(":")
        if name.strip() == NET_TAP:
            return int(rest.split()[1])
    return 0


class Sender:
    def __init__(self, exe, ns, size):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(exe), NET_TAP, str(size), GUEST_MAC],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        if self.proc.stdout.readline().strip() != b"ready":
            err = self.proc.stderr.read().decode(errors="replace")
            raise RuntimeError(f"net sender did not start: {err.strip()[-300:]}")

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def net_section(args, vmms, guests, helpers, scratch):
    if os.geteuid() != 0:
        return ["## virtio-net", "", "- skipped: needs root (network namespace, tap)"], False
    kernel = guests / "net-bench.elf"
    nic = (NET_TAP, GUEST_MAC)
    counts = {(d, size): max(1, round(n * args.scale)) for d, size, n in NET_PLAN}
    tx_lost = {v.key: [] for v in vmms}
    with Netns() as ns:
        state = {}

        def start_sender(size):
            def before():
                state["sender"] = Sender(helpers["sender"], ns.name, size)
            return before

        def stop_sender(r):
            state.pop("sender").stop()
            return None

        def tx_before():
            state["rx0"] = tap_rx_packets()

        def tx_after(n, vkey):
            def after(r):
                if r is None or not r.ok:
                    return None
                got = tap_rx_packets() - state["rx0"]
                if n:
                    tx_lost[vkey].append(n - got)
                return None
            return after

        plans = {}
        for v in vmms:
            plan = []
            for d in ("tx", "rx"):
                sizes = [size for dd, size, _ in NET_PLAN if dd == d]
                zero = f"mode={d} count=0" + (f" batch={NET_RX_BATCH}" if d == "rx" else "")
                if d == "tx":
                    plan.append(("tx0", kernel, zero, b"net-bench: tx 0 done", (), nic,
                                 tx_before, tx_after(0, v.key)))
                else:
                    plan.append(("rx0", kernel, zero, b"net-bench: rx 0 done", (), nic,
                                 start_sender(sizes[0]), stop_sender))
                for size in sizes:
                    n = counts[(d, size)]
                    if d == "tx":
                        plan.append((f"tx{size}", kernel, f"mode=tx count={n} size={size}",
                                     f"net-bench: tx {n} done".encode(), (), nic, tx_before,
                                     tx_after(n, v.key)))
                    else:
                        plan.append((f"rx{size}", kernel,
                                     f"mode=rx count={n} batch={NET_RX_BATCH}",
                                     re.compile(rb"net-bench: rx \d+ done"), (), nic,
                                     start_sender(size), stop_sender))
            plans[v.key] = plan
        res = {v.key: {p[0]: [] for p in plans[v.key]} for v in vmms}
        log(f"net: {args.io_runs} runs each under {', '.join(v.label for v in vmms)}")
        ns.enter()
        try:
            run_plan(args, vmms, plans, res, scratch, "net")
            keep_raw("net", res)
        finally:
            ns.leave()
            if "sender" in state:
                state.pop("sender").stop()

    labels, rows = [], {v.key: [] for v in vmms}
    for d, size, _ in NET_PLAN:
        n = counts[(d, size)]
        arrow = "guest → host" if d == "tx" else "host → guest"
        labels.append(f"{d.upper()} {size}-byte frames ({arrow}): frames/s")
        for v in vmms:
            rates, notes = rates_from(res[v.key], f"{d}0", f"{d}{size}", n)
            rows[v.key].append(cell_notes(fmt_triplet(rates, fmt_rate), notes))
    out = ["## virtio-net", ""]
    what = ", ".join(f"{d} {size} B count={counts[(d, size)]}" for d, size, _ in NET_PLAN)
    out.append(f"- guest net-bench; a tap in a network namespace created for the run; {what}")
    out.append("- rates: count / (t(count) − t(0)), t = VMM start → the guest's "
               "`net-bench: tx|rx N done` line; cells are min / median / max of "
               f"{args.io_runs} runs")
    out.append("- RX frames come from an AF_PACKET socket on the tap (a C sender keeping at "
               f"most 512 frames queued on the tap); the guest reposts buffers in batches of "
               f"at least {NET_RX_BATCH}, TX descriptors as soon as any completes")
    for v in vmms:
        lost = [x for x in tx_lost[v.key] if x]
        if lost:
            out.append(f"- {v.label}: in {len(lost)} TX runs the tap received fewer frames than "
                       f"the guest sent (up to {max(lost)} missing)")
    if not any(x for v in vmms for x in tx_lost[v.key]):
        out.append("- every frame the guests sent arrived on the tap (its rx_packets counter)")
    out += odd_status_lines(vmms, res, len(plans[vmms[0].key]) * args.io_runs)
    out += [""] + table(vmms, labels, rows)
    failed = any(not x.ok for v in vmms for k in res[v.key] for x in res[v.key][k])
    return out, failed


# ---------------------------------------------------------------- micro


def micro_section(args):
    log("micro: cargo run --release -p devices --example virtio_micro")
    r = subprocess.run(["cargo", "run", "--release", "-q", "-p", "devices", "--example",
                        "virtio_micro"], cwd=REPO, capture_output=True, text=True)
    out = ["## Device micro-benchmark (no VM)", ""]
    if r.returncode != 0:
        return out + [f"- failed (status {r.returncode}): {r.stderr.strip()[-500:]}"], True
    return out + r.stdout.strip().splitlines(), False


def api_section(args, vmms, guests):
    """The per-instance API and the daemon, via tests/bench/api_bench.py."""
    strato = next((v.path for v in vmms if v.key == "strato"), None)
    out = ["## API", ""]
    if strato is None:
        return out + ["- skipped: strato is not among the VMMs"], False
    fc = next((v.path for v in vmms if v.key == "firecracker"), None)
    argv = [sys.executable, str(REPO / "tests/bench/api_bench.py"), "--strato", str(strato),
            "--guests", str(guests), "--runs", str(max(args.runs, 20))]
    if fc:
        argv += ["--firecracker", str(fc)]
    log("api: " + " ".join(argv[1:]))
    r = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        return out + [f"- failed (status {r.returncode}): {r.stderr.strip()[-500:]}"], True
    body = [l for l in r.stdout.strip().splitlines() if not l.startswith("### ")]
    return out + body, False


# ----------------------------------------------------------------- main

SECTIONS = ("boot", "pairs", "block", "net", "micro", "api")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help=f"comma-separated sections to run (default: {','.join(SECTIONS)})")
    ap.add_argument("--runs", type=int, default=10,
                    help="runs per measurement in the boot section (at least 10)")
    ap.add_argument("--pairs", type=int, default=20,
                    help="rounds in the pairs section (at least 10)")
    ap.add_argument("--io-runs", type=int, default=5,
                    help="runs per measurement in the block and net sections (at least 3)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="multiplies the block and net request/frame counts (default 1)")
    ap.add_argument("--vmms", default="strato,qemu,firecracker",
                    help="which VMMs to run, of those available (default: all)")
    ap.add_argument("--strato", help="strato binary (default: build it)")
    ap.add_argument("--qemu", help="qemu-system-x86_64 (default: from PATH, skipped if absent)")
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"),
                    help="firecracker binary (default: $STRATO_BENCH_FIRECRACKER; else skipped)")
    ap.add_argument("--loops", default="200000",
                    help="serial-loop count for the exit rate, or 'auto' for about "
                         f"{LOOP_TARGET_S:.0f} s under strato (default: 200000)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a run is killed")
    ap.add_argument("--json", metavar="PATH",
                    help="also write every run's raw times (seconds) to PATH as JSON")
    args = ap.parse_args()
    if args.runs < 10:
        ap.error("--runs must be at least 10")
    if args.pairs < 10:
        ap.error("--pairs must be at least 10")
    if args.io_runs < 3:
        ap.error("--io-runs must be at least 3")
    if args.scale <= 0:
        ap.error("--scale must be positive")
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        ap.error(f"--only: unknown section(s) {', '.join(unknown)} (have {', '.join(SECTIONS)})")

    want = [s.strip() for s in args.vmms.split(",") if s.strip()]
    if not want or any(w not in ("strato", "qemu", "firecracker") for w in want):
        ap.error("--vmms: a comma-separated subset of strato,qemu,firecracker")
    vmms = []
    if any(s in only for s in ("boot", "pairs", "block", "net", "api")):
        if "strato" in want:
            strato = executable(args.strato, "--strato") if args.strato else build_strato()
            vmms.append(Strato("strato", "strato", executable(strato, "strato")))
            vmms[-1].built_here = not args.strato
        qemu = args.qemu or shutil.which("qemu-system-x86_64")
        if "qemu" not in want:
            pass
        elif qemu:
            vmms.append(Qemu("qemu", "QEMU microvm", executable(qemu, "--qemu")))
        else:
            log("qemu-system-x86_64 not found: QEMU skipped")
        if args.firecracker and "firecracker" in want:
            vmms.append(Firecracker("firecracker", "Firecracker",
                                    executable(args.firecracker, "--firecracker")))
        if not vmms:
            ap.error("no VMM to run")

    load_before = os.getloadavg()[0]
    t_start = time.monotonic()
    sections, failed = [], False
    with tempfile.TemporaryDirectory(prefix="strato-bench.", dir=args_tmpdir()) as scratch:
        guests = Path(scratch) / "guests"
        if vmms:
            subprocess.run(["bash", str(REPO / "tests/guests/build.sh"), str(guests)],
                           check=True)
        helpers = build_helpers(scratch)
        for name in SECTIONS:
            if name not in only:
                continue
            if name == "boot":
                lines, bad = boot_section(args, vmms, guests, helpers, scratch)
            elif name == "pairs":
                lines, bad = pairs_section(args, vmms, guests, scratch)
            elif name == "block":
                lines, bad = block_section(args, vmms, guests, scratch)
            elif name == "net":
                lines, bad = net_section(args, vmms, guests, helpers, scratch)
            elif name == "api":
                lines, bad = api_section(args, vmms, guests)
            else:
                lines, bad = micro_section(args)
            sections.append(lines)
            failed |= bad

    print(f"strato benchmark, {datetime.date.today().isoformat()}: {machine_facts()}")
    for v in vmms:
        ver = v.version()
        print(f"- {v.label}: {v.path}{f' ({ver})' if ver else ''}")
    print(f"- load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{time.monotonic() - t_start:.0f} s in all")
    print(f"- every guest: {VCPUS} vCPU, {MEM_MIB} MiB")
    for lines in sections:
        print()
        print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(RAW, indent=1))
    return 1 if failed else 0


def args_tmpdir():
    """Scratch space: $TMPDIR or /tmp (images are made there: same
    filesystem for every VMM)."""
    return os.environ.get("TMPDIR") or None


if __name__ == "__main__":
    sys.exit(main())
