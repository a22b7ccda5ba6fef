#!/usr/bin/env python3
"""strato benchmark: startup time, port-I/O exit rate and memory overhead.

    python3 tests/bench/run.py [--runs N] [--strato PATH] [--qemu PATH]
                               [--firecracker PATH] [--loops N] [--timeout S]

Builds strato (release) unless --strato is given, builds the test guests into
a temporary directory, then boots the same guests N times under every VMM
present (strato, QEMU microvm, and Firecracker if --firecracker or
$STRATO_BENCH_FIRECRACKER names a binary) and prints a Markdown table of
min / median / max.  Every guest runs with 1 vCPU and 128 MiB.  See
docs/benchmarks.md for what each figure means.  Python 3.11 stdlib only; gcc
(which the guests need anyway) also builds a tiny static spawn helper.
"""

import argparse
import datetime
import json
import os
import platform
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
    def __init__(self, ok, why="", first=None, exit=None, maxrss_kib=None, code=None):
        self.ok, self.why, self.code = ok, why, code
        self.first, self.exit, self.maxrss_kib = first, exit, maxrss_kib


class Vmm:
    """How to boot a kernel with a command line under one VMM."""

    # Exit statuses that count as a clean end of the guest.
    ok_status = (0,)

    def __init__(self, key, label, path):
        self.key, self.label, self.path = key, label, str(path)

    def argv(self, kernel, cmdline, scratch):
        raise NotImplementedError

    def run(self, kernel, cmdline, expect, timeout, scratch):
        return run_once(self.argv(kernel, cmdline, scratch), expect, timeout, scratch,
                        self.ok_status)

    def version(self):
        return ""


class Strato(Vmm):
    def argv(self, kernel, cmdline, scratch):
        return [self.path, "run", "--kernel", str(kernel), "--cmdline", cmdline,
                "--vcpus", str(VCPUS), "--memory", str(MEM_MIB), "--no-stdin"]

    def version(self):
        try:
            rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            return f"git {rev}{'+changes' if dirty else ''}" if rev else ""
        except (OSError, subprocess.SubprocessError):
            return ""


class Qemu(Vmm):
    def argv(self, kernel, cmdline, scratch):
        return [self.path, "-M", "microvm,accel=kvm,acpi=off", "-cpu", "host,-arch-capabilities",
                "-m", str(MEM_MIB), "-smp", str(VCPUS), "-nodefaults", "-no-user-config",
                "-nographic", "-serial", "stdio", "-no-reboot",
                "-kernel", str(kernel), "-append", cmdline]

    def version(self):
        return first_line([self.path, "--version"])


class Firecracker(Vmm):
    # The test guests triple-fault if still running after their i8042 reset;
    # when Firecracker's vCPU thread sees that shutdown before its main loop
    # has handled the reset, it exits with status 1 instead of 0. The guest
    # has finished either way, so both count (and are reported).
    ok_status = (0, 1)

    def argv(self, kernel, cmdline, scratch):
        cfg = {
            "boot-source": {"kernel_image_path": str(kernel), "boot_args": cmdline},
            "drives": [],
            "machine-config": {"vcpu_count": VCPUS, "mem_size_mib": MEM_MIB},
        }
        name = f"fc-{kernel.stem}-{abs(hash(cmdline))}.json"
        path = Path(scratch) / name
        if not path.exists():
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
    for name, src in (("spawn", SPAWN_C), ("nop", NOP_C)):
        c = Path(scratch) / f"{name}.c"
        c.write_text(src)
        exe = Path(scratch) / name
        r = subprocess.run([cc, "-O2", "-static", "-o", str(exe), str(c)], capture_output=True)
        if r.returncode != 0:  # no static libc: dynamic, with a higher RSS floor
            subprocess.run([cc, "-O2", "-o", str(exe), str(c)], check=True)
        out[name] = exe
    return out


def run_once(argv, expect, timeout, scratch, ok_status=(0,)):
    """Boot once; time the first byte of `expect` on stdout and the exit."""
    scratch = Path(scratch)
    errpath, rusage = scratch / "stderr.txt", scratch / "rusage.txt"
    rusage.unlink(missing_ok=True)
    with open(errpath, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(scratch / "spawn"), str(rusage)] + argv,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
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
    idx = buf.find(expect) if expect else 0
    if code not in ok_status or idx < 0:
        tail = errpath.read_bytes().decode(errors="replace").strip().splitlines()[-3:]
        what = f"exit status {code}" if code not in ok_status else \
            f"{expect.decode()!r} not on stdout"
        return Result(False, f"{what}; stdout ends {bytes(buf[-200:])!r}; "
                             f"stderr ends {' | '.join(tail)!r}")
    first = max((t for off, t in chunks if off <= idx), default=t_exit)
    return Result(True, first=first - t0, exit=t_exit - t0, maxrss_kib=maxrss, code=code)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="runs per measurement (at least 10)")
    ap.add_argument("--strato", help="strato binary (default: build it)")
    ap.add_argument("--qemu", help="qemu-system-x86_64 (default: from PATH, skipped if absent)")
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"),
                    help="firecracker binary (default: $STRATO_BENCH_FIRECRACKER; else skipped)")
    ap.add_argument("--loops", default="200000",
                    help="serial-loop count for the exit rate, or 'auto' for about "
                         f"{LOOP_TARGET_S:.0f} s under strato (default: 200000)")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a run is killed")
    args = ap.parse_args()
    if args.runs < 10:
        ap.error("--runs must be at least 10")

    strato = executable(args.strato, "--strato") if args.strato else build_strato()
    vmms = [Strato("strato", "strato", executable(strato, "strato"))]
    qemu = args.qemu or shutil.which("qemu-system-x86_64")
    if qemu:
        vmms.append(Qemu("qemu", "QEMU microvm", executable(qemu, "--qemu")))
    else:
        log("qemu-system-x86_64 not found: QEMU skipped")
    if args.firecracker:
        vmms.append(Firecracker("firecracker", "Firecracker",
                                executable(args.firecracker, "--firecracker")))

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="strato-bench.") as scratch:
        guests = Path(scratch) / "guests"
        subprocess.run(["bash", str(REPO / "tests/guests/build.sh"), str(guests)], check=True)
        hello, loop = guests / "hello.elf", guests / "serial-loop.elf"
        helpers = build_helpers(scratch)
        # What the harness itself costs: a static no-op through the helper.
        floor = [run_once([str(helpers["nop"])], None, args.timeout, scratch)
                 for _ in range(args.runs)]

        loops = int(args.loops) if args.loops != "auto" else calibrate(vmms[0], loop,
                                                                       args.timeout, scratch)
        log(f"serial-loop: loops={loops}; {args.runs} runs each under "
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
                        log(f"run {i + 1}: {v.label} {key} FAILED: {r.why}")
            log(f"run {i + 1}/{args.runs} done")
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

        def cell(text, key_fails):
            return f"{text} ({key_fails} failed)" if key_fails else text

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
    print(f"strato benchmark, {datetime.date.today().isoformat()}: {machine_facts()}")
    for v in vmms:
        ver = v.version()
        print(f"- {v.label}: {v.path}{f' ({ver})' if ver else ''}")
    print(f"- load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    print(f"- {args.runs} runs each; guests: hello, serial-loop loops=0 and loops={loops}; "
          f"{VCPUS} vCPU, {MEM_MIB} MiB; cells are min / median / max")
    print(f"- guest-touched memory estimated as {touched_kib} KiB (hello.elf PT_LOAD "
          f"{image_kib} KiB + {BOOT_DATA_KIB} KiB boot data)")
    fl = [x for x in floor if x.ok]
    if fl:
        print(f"- harness floor (static no-op started the same way): "
              f"{statistics.median(x.exit for x in fl) * 1000:.2f} ms to exit, "
              f"{statistics.median(x.maxrss_kib for x in fl) / 1024:.1f} MiB peak RSS (medians)")
    for v in vmms:
        odd = [x.code for k in res[v.key] for x in res[v.key][k] if x.ok and x.code]
        if odd:
            print(f"- {v.label}: {len(odd)} of {3 * args.runs} timed runs exited with status "
                  f"{', '.join(str(c) for c in sorted(set(odd)))} after the guest finished")
    print()
    print("| figure | " + " | ".join(v.label for v in vmms) + " |")
    print("| --- | " + " | ".join("---" for _ in vmms) + " |")
    for i, label in enumerate(labels):
        print(f"| {label} | " + " | ".join(rows[v.key][i] for v in vmms) + " |")
    failed = any(not x.ok for v in vmms for k in res[v.key] for x in res[v.key][k])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
