#!/usr/bin/env python3
"""Lane benchmark: Linux to user space, disk and TCP throughput, and memory,
for strato, Firecracker and QEMU microvm in the same x86 lane VM (hardware-
style KVM), same run, same kernel, same root disk.

    python3 tests/bench/lane.py [--runs N] [--mib N] [--firecracker PATH]
                                [--vmms strato,firecracker,qemu] [--timeout S]

On the host it builds strato (release) and the guest images, then runs
itself inside the lane (tests/lane/lane.py) with --inside. There, every VMM
boots the project kernel (vmlinux) with 2 vCPUs and 256 MiB, the ext4 root
disk as vda, a scratch disk as vdb and a NIC on a tap in a network namespace
made for the run; the guest's init (strato_bench=HOST:PORT:MIB) runs the
steps below and prints a line before each, which the host timestamps as it
arrives on the serial console. VMMs alternate run by run. Figures:

  start -> /init   VMM spawn to init's first line (STRATO_INIT_OK)
  read/write 1M    MIB MiB in 1 MiB O_DIRECT requests on vdb (MiB/s)
  read/write 4K    MIB/4 MiB in 4 KiB O_DIRECT requests (requests/s)
  TCP tx / rx      MIB*1 MiB guest -> host and host -> guest over busybox nc
  RSS overhead     VMM resident memory beyond its guest-RAM mapping(s),
                   after the I/O (smaps)
  stock kernel     VMM spawn to init's first line for Debian's stock cloud
  start -> /init   kernel (finds CPUs and virtio devices only through
                   ACPI) with the project's init in an initramfs carrying
                   the kernel's virtio modules, a drive and the NIC; the
                   run counts only if init saw both vCPUs and the drive

The lane emulates its CPU (QEMU TCG), so absolute figures are far below a
real host's: only the ratios between VMMs in one run mean anything.
"""

import argparse
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


def log(msg):
    print(f"[lane-bench] {msg}", file=sys.stderr, flush=True)


def host_main(args):
    strato = Path(args.strato) if args.strato else bench.build_strato()
    images = subprocess.run(["bash", str(REPO / "resources/build.sh"), "all"],
                            check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in images.splitlines() if "=" in line)
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside",
            "--strato", str(strato), "--vmlinux", env["VMLINUX"], "--rootfs", env["ROOTFS"],
            "--cloud-kernel", env["CLOUD_KERNEL"], "--cloud-initrd", env["CLOUD_INITRAMFS"],
            "--runs", str(args.runs), "--mib", str(args.mib), "--vmms", args.vmms,
            "--timeout", str(args.timeout)]
    if args.firecracker:
        argv += ["--firecracker", str(bench.executable(args.firecracker, "--firecracker"))]
    lane = [sys.executable, str(REPO / "tests/lane/lane.py"), "run",
            "--timeout", str(args.lane_timeout), "--"] + argv
    return subprocess.run(lane).returncode


class Peer:
    """The host end of the TCP steps, in the benchmark's namespace: drains
    PORT, and sends `size` bytes to whoever connects to PORT + 1."""

    def __init__(self, size):
        self.size = size
        self.received = 0
        self.rx_sock = socket.create_server((HOST_IP, PORT), reuse_port=True)
        self.tx_sock = socket.create_server((HOST_IP, PORT + 1), reuse_port=True)
        self.errors = []
        for target in (self.drain, self.send):
            threading.Thread(target=target, daemon=True).start()

    def drain(self):
        try:
            conn, _ = self.rx_sock.accept()
            with conn:
                while data := conn.recv(1 << 20):
                    self.received += len(data)
        except OSError as e:
            self.errors.append(e)

    def send(self):
        try:
            conn, _ = self.tx_sock.accept()
            with conn:
                chunk = bytes(1 << 20)
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
               f"strato_bench={HOST_IP}:{PORT}:{args.mib}")
    argv = vmm.argv(args.vmlinux, cmdline, scratch,
                    drives=[(root, False), (disk, False)], nic=(bench.NET_TAP, bench.GUEST_MAC))
    peer = Peer(args.mib << 20)
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
    if "BENCH_FAILED" in marks or "end" not in marks or proc.returncode != 0:
        tail = out[-600:].decode(errors="replace")
        # The VMM's own words: its stderr, and its log file if it has one.
        logs = "".join(f"\n{p.name} ends:\n" + p.read_text(errors="replace")[-800:]
                       for p in sorted(Path(scratch).glob("*.log")))
        raise RuntimeError(f"{vmm.label}: status {proc.returncode}, marks {sorted(marks)}; "
                           f"console ends:\n{tail}{logs}")
    order = ["INIT_OK"] + STEPS + ["end"]
    dur = {s: marks[order[i + 1]] - marks[s] for i, s in enumerate(order[:-1])}
    mib = args.mib
    return {
        "start -> /init (ms)": marks["INIT_OK"] * 1000,
        "read 1 MiB O_DIRECT (MiB/s)": mib / dur["read1m"],
        "write 1 MiB O_DIRECT (MiB/s)": mib / dur["write1m"],
        "read 4 KiB O_DIRECT (req/s)": mib * 64 / dur["read4k"],
        "write 4 KiB O_DIRECT (req/s)": mib * 64 / dur["write4k"],
        "TCP guest -> host (MiB/s)": mib / dur["tx"],
        "TCP host -> guest (MiB/s)": mib / dur["rx"],
        "RSS overhead (MiB)": overhead / 1024 if overhead is not None else float("nan"),
    }


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
    results = {v.key: [] for v in vmms}
    failures = []
    with bench.Netns() as ns:
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{HOST_IP}/24", "dev",
                        bench.NET_TAP], check=True)
        ns.enter()
        for i in range(args.runs):
            for vmm in vmms:
                with tempfile.TemporaryDirectory() as scratch:
                    try:
                        figures = one_run(vmm, args, scratch)
                        figures.update(stock_boot(vmm, args, scratch))
                        results[vmm.key].append(figures)
                        log(f"run {i + 1}/{args.runs} {vmm.label}: ok")
                    except RuntimeError as e:
                        failures.append(str(e))
                        log(f"run {i + 1}/{args.runs} {vmm.label}: FAILED: {e}")
    figures = list(next((r[0] for r in results.values() if r), {}).keys())
    print(f"\nLane benchmark: {args.runs} runs, {args.mib} MiB, 2 vCPUs, 256 MiB guest; "
          "min / median / max\n")
    print("| figure | " + " | ".join(v.label for v in vmms) + " |")
    print("| --- |" + " --- |" * len(vmms))
    for fig in figures:
        cells = []
        for v in vmms:
            vals = [r[fig] for r in results[v.key]]
            if not vals:
                cells.append("failed")
                continue
            fmt = "{:.0f}" if max(vals) >= 100 else "{:.2f}"
            cells.append(f"{fmt.format(min(vals))} / **{fmt.format(statistics.median(vals))}** / "
                         f"{fmt.format(max(vals))}")
        print(f"| {fig} | " + " | ".join(cells) + " |")
    for v in vmms:
        ver = v.version()
        if ver:
            print(f"\n{v.label}: {ver}")
    for f in failures:
        print(f"\nfailed: {f}")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64, help="MiB per disk and TCP step")
    ap.add_argument("--vmms", default="strato,firecracker,qemu")
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"))
    ap.add_argument("--strato")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per boot")
    ap.add_argument("--lane-timeout", type=int, default=3600)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vmlinux", help=argparse.SUPPRESS)
    ap.add_argument("--rootfs", help=argparse.SUPPRESS)
    ap.add_argument("--cloud-kernel", help=argparse.SUPPRESS)
    ap.add_argument("--cloud-initrd", help=argparse.SUPPRESS)
    args = ap.parse_args()
    return inside_main(args) if args.inside else host_main(args)


if __name__ == "__main__":
    sys.exit(main())
