#!/usr/bin/env python3
"""Lane benchmark: Linux to user space, disk and TCP throughput, and memory,
for strato, Firecracker and QEMU microvm in the same x86 lane VM (hardware-
style KVM), same run, same kernel, same root disk.

    python3 tests/bench/lane.py [--runs N] [--mib N] [--tcp-conns N]
                                [--firecracker PATH] [--timeout S]
                                [--vmms strato,firecracker,qemu]

On the host it builds strato (release) and the guest images, then runs
itself inside the lane (tests/lane/lane.py) with --inside, once per run and
VMM, each in a lane VM of its own (VMMs alternate run by run; a run whose
lane VM breaks, an emulator fault, is run again, twice at most), and
prints the table of all runs. In the lane, each VMM
boots the project kernel (vmlinux) with 2 vCPUs and 256 MiB, the ext4 root
disk as vda, a scratch disk as vdb and a NIC on a tap in a network namespace
made for the run; the guest's init (strato_bench=HOST:PORT:MIB) runs the
steps below and prints a line before each, which the host timestamps as it
arrives on the serial console. A run whose guest fails a step keeps the
figures of the steps before it; the failure is listed under the table.
Figures:

  start -> /init   VMM spawn to init's first line (STRATO_INIT_OK)
  read/write 1M    MIB MiB in 1 MiB O_DIRECT requests on vdb (MiB/s)
  read/write 4K    MIB/4 MiB in 4 KiB O_DIRECT requests (requests/s)
  TCP tx / rx      guest -> host and host -> guest over busybox nc: N
                   connections of MIB MiB one after another (--tcp-conns,
                   default 5), total MiB / total time; one connection's
                   rate varies 2-4 times from one to the next in the lane,
                   for every VMM, so one connection per run compares little
  RSS overhead     VMM resident memory beyond its guest-RAM mapping(s),
                   after the I/O (smaps)
  stock kernel     VMM spawn to init's first line for Debian's stock cloud
  start -> /init   kernel (finds CPUs and virtio devices only through
                   ACPI) with the project's init in an initramfs carrying
                   the kernel's virtio modules, a drive and the NIC, in
                   a VM of its own after the main one; it counts only if
                   init saw both vCPUs and the drive

The lane emulates its CPU (QEMU TCG), so absolute figures are far below a
real host's: only the ratios between VMMs in one run mean anything.
"""

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (the host benchmark's VMM launchers)

REPO = Path(__file__).resolve().parents[2]
HOST_IP, GUEST_IP, PORT = "172.31.9.1", "172.31.9.2", 6000
STEPS = ["read1m", "write1m", "read4k", "write4k", "tx", "rx"]
# Each step's figure: its name and the units moved per MiB of --mib.
STEP_FIGURES = [
    ("read1m", "read 1 MiB O_DIRECT (MiB/s)", 1),
    ("write1m", "write 1 MiB O_DIRECT (MiB/s)", 1),
    ("read4k", "read 4 KiB O_DIRECT (req/s)", 64),
    ("write4k", "write 4 KiB O_DIRECT (req/s)", 64),
    ("tx", "TCP guest -> host (MiB/s)", 1),
    ("rx", "TCP host -> guest (MiB/s)", 1),
]
FIGURES = (["start -> /init (ms)"] + [name for _, name, _ in STEP_FIGURES]
           + ["RSS overhead (MiB)", "stock kernel start -> /init (ms)"])


def log(msg):
    print(f"[lane-bench] {msg}", file=sys.stderr, flush=True)


# The lane runner's status for a lane VM that broke (an emulator fault,
# docs/testing.md), and how often one run is tried again for it.
LANE_BROKE = 126
LANE_RETRIES = 2
JSON_MARK = "LANE_BENCH_JSON "


def host_main(args):
    """Builds on the host, then boots a lane VM per run and VMM (in the
    same alternating order), so that a lane VM breaking costs one run,
    which is tried again, not the whole benchmark."""
    strato = Path(args.strato) if args.strato else bench.build_strato()
    images = subprocess.run(["bash", str(REPO / "resources/build.sh"), "all"],
                            check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in images.splitlines() if "=" in line)
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside", "--json",
            "--strato", str(strato), "--vmlinux", env["VMLINUX"], "--rootfs", env["ROOTFS"],
            "--cloud-kernel", env["CLOUD_KERNEL"], "--cloud-initrd", env["CLOUD_INITRAMFS"],
            "--runs", "1", "--mib", str(args.mib), "--tcp-conns", str(args.tcp_conns),
            "--timeout", str(args.timeout)]
    if args.firecracker:
        argv += ["--firecracker", str(bench.executable(args.firecracker, "--firecracker"))]
    # A lane VM holds one run: its two boots and the lane's own start-up.
    lane_timeout = args.lane_timeout or 2 * args.timeout + 300
    lane = [sys.executable, str(REPO / "tests/lane/lane.py"), "run",
            "--timeout", str(lane_timeout), "--"]
    keys = [k for k in args.vmms.split(",") if k != "firecracker" or args.firecracker]
    labels, versions = {}, {}
    results = {k: {f: [] for f in FIGURES} for k in keys}
    failures = []
    for i in range(args.runs):
        for key in keys:
            report, failed = lane_run_retried(lane + argv + ["--vmms", key], i + 1, key)
            if report is None:
                failures.append(failed)
                continue
            labels.update(report["labels"])
            versions.update(report["versions"])
            for fig, vals in report["results"].get(key, {}).items():
                results[key][fig] += vals
            failures += [f"run {i + 1} {f}" for f in report["failures"]]
            # Each run's figures as they come, so that a benchmark cut
            # short still leaves them in its output.
            got = {f: round(v[0], 2) for f, v in report["results"].get(key, {}).items() if v}
            log(f"run {i + 1} {key}: {json.dumps(got)}")
    print_table(args, [(k, labels.get(k, k)) for k in keys], results, versions, failures)
    return 1 if failures else 0


def lane_run_retried(cmd, run, key):
    """Runs `cmd` (the lane runner) for run `run` of VMM `key`, again if its
    lane VM broke (LANE_RETRIES times at most). Returns (report, None), or
    (None, the failure's line)."""
    for _ in range(1 + LANE_RETRIES):
        rc, report = lane_run(cmd)
        if rc != LANE_BROKE:
            break
        log(f"run {run} {key}: the lane VM broke; again")
    if report is None:
        return None, f"run {run} {key}: the lane ended with status {rc} and no report"
    return report, None


def lane_run(cmd):
    """Runs `cmd` (the lane runner), echoing its output; returns its status
    and the report the benchmark printed inside, if any."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace")
    report = None
    for line in proc.stdout:
        if line.startswith(JSON_MARK):
            report = json.loads(line[len(JSON_MARK):])
        else:
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.wait(), report


def print_table(args, vmms, results, versions, failures):
    """The Markdown table: min / median / max of each figure per VMM."""
    print(f"\nLane benchmark: {args.runs} runs, {args.mib} MiB, TCP {args.tcp_conns} x {args.mib} MiB "
          "each way, 2 vCPUs, 256 MiB guest; "
          "min / median / max (n: runs that produced the figure, when fewer)\n")
    print("| figure | " + " | ".join(label for _, label in vmms) + " |")
    print("| --- |" + " --- |" * len(vmms))
    for fig in FIGURES:
        cells = []
        for key, _ in vmms:
            vals = results[key][fig]
            if not vals:
                cells.append("failed")
                continue
            fmt = "{:.0f}" if max(vals) >= 100 else "{:.2f}"
            n = f" (n={len(vals)})" if len(vals) < args.runs else ""
            cells.append(f"{fmt.format(min(vals))} / **{fmt.format(statistics.median(vals))}** / "
                         f"{fmt.format(max(vals))}{n}")
        print(f"| {fig} | " + " | ".join(cells) + " |")
    for key, label in vmms:
        if versions.get(key):
            print(f"\n{label}: {versions[key]}")
    for f in failures:
        print(f"\nfailed: {f}")


class Peer:
    """The host end of the TCP steps, in the benchmark's namespace: drains
    `conns` connections to PORT one after another, and sends `size` bytes
    on each of `conns` connections to PORT + 1."""

    def __init__(self, size, conns):
        self.size = size
        self.conns = conns
        self.received = 0
        self.rx_sock = socket.create_server((HOST_IP, PORT), reuse_port=True)
        self.tx_sock = socket.create_server((HOST_IP, PORT + 1), reuse_port=True)
        self.errors = []
        for target in (self.drain, self.send):
            threading.Thread(target=target, daemon=True).start()

    def drain(self):
        try:
            for _ in range(self.conns):
                conn, _ = self.rx_sock.accept()
                with conn:
                    while data := conn.recv(1 << 20):
                        self.received += len(data)
        except OSError as e:
            self.errors.append(e)

    def send(self):
        chunk = bytes(1 << 20)
        try:
            for _ in range(self.conns):
                conn, _ = self.tx_sock.accept()
                with conn:
                    left = self.size
                    while left:
                        n = conn.send(chunk[:min(left, len(chunk))])
                        left -= n
                    conn.shutdown(socket.SHUT_WR)
                    while conn.recv(65536):
                        pass
        except OSError as e:
            self.errors.append(e)

    def close(self):
        self.rx_sock.close()
        self.tx_sock.close()


def rss_overhead_kib(pid, guest_kib):
    """Resident KiB of `pid` outside its guest-RAM mapping(s): mappings at
    least 90 % of the guest's size are taken as guest RAM."""
    total = guest = 0
    size = rss = 0
    try:
        with open(f"/proc/{pid}/smaps") as f:
            for line in f:
                if line.startswith("Size:"):
                    size = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
                    total += rss
                    if size >= guest_kib * 9 // 10:
                        guest += rss
    except OSError:
        return None
    return total - guest


class Boot:
    """A VMM spawned with its console on a pipe and its stderr in
    vmm-stderr.log, killed after `timeout` s."""

    def __init__(self, argv, scratch, timeout):
        self.out = bytearray()
        self.t0 = time.perf_counter()
        self.errlog = open(Path(scratch) / "vmm-stderr.log", "wb")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.errlog, cwd=scratch, start_new_session=True)
        self.timer = threading.Timer(timeout, self.proc.kill)
        self.timer.start()

    def chunks(self):
        """Yields (seconds since spawn, console bytes) until the VMM ends
        (kept in self.out too), then reaps it."""
        try:
            while data := os.read(self.proc.stdout.fileno(), 65536):
                self.out += data
                yield time.perf_counter() - self.t0, data
            self.proc.wait()
        finally:
            self.timer.cancel()
            self.errlog.close()


def one_run(vmm, args, scratch):
    """Boots `vmm` once with the benchmark; returns {figure: value}."""
    root = Path(scratch) / "rootfs.ext4"
    disk = Path(scratch) / "vdb.img"
    subprocess.run(["cp", "--sparse=always", args.rootfs, str(root)], check=True)
    with open(disk, "wb") as f:
        f.truncate(args.mib << 20)
    cmdline = (f"console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet "
               f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off "
               f"strato_bench={HOST_IP}:{PORT}:{args.mib}:{args.tcp_conns}")
    argv = vmm.argv(args.vmlinux, cmdline, scratch,
                    drives=[(root, False), (disk, False)], nic=(bench.NET_TAP, bench.GUEST_MAC))
    peer = Peer(args.mib << 20, args.tcp_conns)
    marks = {}
    overhead = None
    boot = Boot(argv, scratch, args.timeout)
    try:
        pending = b""
        for now, data in boot.chunks():
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                m = re.search(rb"STRATO_(INIT_OK|BENCH (\w+)|BENCH_FAILED)", line)
                if not m:
                    continue
                key = (m.group(2) or m.group(1)).decode()
                marks.setdefault(key, now)
                if key == "end":
                    overhead = rss_overhead_kib(boot.proc.pid, bench.MEM_MIB * 1024)
    finally:
        peer.close()
    proc, out = boot.proc, boot.out
    # Every step that ended (the next step's mark came) has its figure, so
    # a VMM whose guest dies halfway still shows what it did before.
    order = ["INIT_OK"] + STEPS + ["end"]
    dur = {s: marks[order[i + 1]] - marks[s] for i, s in enumerate(order[:-1])
           if s in marks and order[i + 1] in marks}
    mib = args.mib
    figures = {}
    if "INIT_OK" in marks:
        figures["start -> /init (ms)"] = marks["INIT_OK"] * 1000
    for step, name, scale in STEP_FIGURES:
        if step in ("tx", "rx"):
            scale *= args.tcp_conns
        if step in dur:
            figures[name] = mib * scale / dur[step]
    if overhead is not None:
        figures["RSS overhead (MiB)"] = overhead / 1024
    error = None
    if "BENCH_FAILED" in marks or "end" not in marks or proc.returncode != 0:
        tail = out[-600:].decode(errors="replace")
        # The VMM's own words: its stderr, and its log file if it has one.
        logs = "".join(f"\n{p.name} ends:\n" + p.read_text(errors="replace")[-800:]
                       for p in sorted(Path(scratch).glob("*.log")))
        error = (f"{vmm.label}: status {proc.returncode}, marks {sorted(marks)}; "
                 f"console ends:\n{tail}{logs}")
    return figures, error


def stock_boot(vmm, args, scratch):
    """Boots Debian's stock cloud kernel once; returns its figure."""
    disk = Path(scratch) / "stock.img"
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    argv = vmm.argv(args.cloud_kernel, "console=ttyS0 reboot=k panic=1 quiet", scratch,
                    drives=[(disk, False)], nic=(bench.NET_TAP, bench.GUEST_MAC),
                    initrd=args.cloud_initrd, acpi=True)
    boot, first = Boot(argv, scratch, args.timeout), None
    for now, _ in boot.chunks():
        if first is None and b"STRATO_INIT_OK" in boot.out:
            first = now
    text = boot.out.decode(errors="replace")
    if first is None or "STRATO_NPROC=2" not in text or " vda" not in text:
        raise RuntimeError(f"{vmm.label} (stock kernel): status {boot.proc.returncode}; "
                           f"console ends:\n{text[-800:]}")
    return {"stock kernel start -> /init (ms)": first * 1000}


def inside_main(args):
    bench.VCPUS, bench.MEM_MIB = 2, 256
    vmms = []
    for key in args.vmms.split(","):
        if key == "strato":
            vmms.append(bench.Strato("strato", "strato", Path(args.strato).resolve()))
        elif key == "firecracker" and args.firecracker:
            vmms.append(bench.Firecracker("firecracker", "Firecracker", args.firecracker))
        elif key == "qemu" and bench.shutil.which("qemu-system-x86_64"):
            vmms.append(bench.Qemu("qemu", "QEMU microvm", bench.shutil.which("qemu-system-x86_64")))
    # Per VMM and figure, the values of the runs that produced it.
    results = {v.key: {f: [] for f in FIGURES} for v in vmms}
    failures = []
    with bench.Netns() as ns:
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{HOST_IP}/24", "dev",
                        bench.NET_TAP], check=True)
        ns.enter()
        for i in range(args.runs):
            for vmm in vmms:
                # The stock-kernel boot is a VM of its own: it runs whether
                # or not the main run's guest got through every step.
                with tempfile.TemporaryDirectory() as scratch:
                    figures, error = one_run(vmm, args, scratch)
                    try:
                        figures.update(stock_boot(vmm, args, scratch))
                    except RuntimeError as e:
                        error = f"{error}\n{e}" if error else str(e)
                for fig, value in figures.items():
                    results[vmm.key][fig].append(value)
                if error:
                    failures.append(f"run {i + 1} {error}")
                    log(f"run {i + 1}/{args.runs} {vmm.label}: FAILED "
                        f"({len(figures)} of {len(FIGURES)} figures): {error}")
                else:
                    log(f"run {i + 1}/{args.runs} {vmm.label}: ok")
    versions = {v.key: v.version() for v in vmms}
    if args.json:
        # For the host side, which merges the runs of many lane VMs.
        print(JSON_MARK + json.dumps({"labels": {v.key: v.label for v in vmms},
                                      "versions": versions, "results": results,
                                      "failures": failures}), flush=True)
    else:
        print_table(args, [(v.key, v.label) for v in vmms], results, versions, failures)
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64, help="MiB per disk step and TCP connection")
    ap.add_argument("--tcp-conns", type=int, default=5,
                    help="TCP connections each way, one after another (default 5)")
    ap.add_argument("--vmms", default="strato,firecracker,qemu")
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"))
    ap.add_argument("--strato")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per boot")
    ap.add_argument("--lane-timeout", type=int,
                    help="seconds per lane VM (one run of one VMM); default 2 x --timeout + 300")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vmlinux", help=argparse.SUPPRESS)
    ap.add_argument("--rootfs", help=argparse.SUPPRESS)
    ap.add_argument("--cloud-kernel", help=argparse.SUPPRESS)
    ap.add_argument("--cloud-initrd", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.runs < 1 or args.mib < 1 or args.tcp_conns < 1:
        ap.error("--runs, --mib and --tcp-conns must be at least 1")
    return inside_main(args) if args.inside else host_main(args)


if __name__ == "__main__":
    sys.exit(main())
