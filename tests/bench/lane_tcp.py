#!/usr/bin/env python3
"""TCP guest -> host in the x86 lane, the VMMs booted alternately in ONE
lane VM, so that every pair of boots sees the same emulator (the lane's
speed drifts between lane VMs more than the VMMs differ).

    python3 tests/bench/lane_tcp.py --firecracker PATH [--rounds N]
                                    [--conns N] [--mib N] [--strato PATH]

Builds strato (release) and the guest images on the host, then runs itself
inside one lane VM (tests/lane/lane.py run). There each round boots strato,
then Firecracker, both through Firecracker's command line (so both write
Firecracker's metrics), with the project kernel, 2 vCPUs, 256 MiB, the
ext4 root, a 1 MiB scratch disk and a NIC on a tap in a network namespace;
the guest's init (strato_bench=HOST:PORT:MIB:N) sends N connections of MIB
MiB to the host. Per boot it prints each connection's rate, their total
over the step's time, and the VMM's `net` and `vcpu` metrics over the
step (frames, kicks, MMIO exits: two per interrupt). A lane VM that breaks
ends the run: its output so far stands.
"""

import argparse
import json
import os
import select
import socket
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


class Drain:
    """Takes connections to PORT one after another and records each one's
    rate in MiB/s."""

    def __init__(self):
        self.rates = []
        self.sock = socket.create_server((HOST_IP, PORT), reuse_port=True)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                t0, n = time.perf_counter(), 0
                while data := conn.recv(1 << 20):
                    n += len(data)
                self.rates.append(n / (1 << 20) / (time.perf_counter() - t0))


def boot(key, path, args, drain, scratch):
    """One boot of the VMM at `path`; prints its figures."""
    drain.rates.clear()
    root, disk = Path(scratch) / "rootfs.ext4", Path(scratch) / "vdb.img"
    subprocess.run(["cp", "--sparse=always", args.rootfs, str(root)], check=True)
    with open(disk, "wb") as f:
        f.truncate(1 << 20)
    cmdline = (f"console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet "
               f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off "
               f"strato_bench={HOST_IP}:{PORT}:{args.mib}:{args.conns}")
    vmm = bench.Firecracker(key, key, path)
    argv = vmm.argv(args.vmlinux, cmdline, scratch, drives=[(root, False), (disk, False)],
                    nic=(bench.NET_TAP, bench.GUEST_MAC))
    sock, metrics = Path(scratch) / "api.sock", Path(scratch) / "metrics.json"
    metrics.touch()
    argv = [a for a in argv if a != "--no-api"] + ["--api-sock", str(sock),
                                                   "--metrics-path", str(metrics)]

    def flush():
        # Each metrics line holds the growth since the line before.
        subprocess.run(["curl", "-s", "-m", "5", "--unix-socket", str(sock), "-X", "PUT",
                        "http://localhost/actions", "-H", "Content-Type: application/json",
                        "-d", '{"action_type":"FlushMetrics"}'],
                       capture_output=True)

    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=scratch)
    pending, start, took = b"", None, None
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 1)
            if not ready:
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                if b"STRATO_BENCH tx" in line:
                    flush()
                    start = time.monotonic()
                elif b"STRATO_BENCH rx" in line and start is not None:
                    took = time.monotonic() - start
                    flush()
                elif b"STRATO_BENCH end" in line:
                    deadline = 0
    finally:
        proc.kill()
        proc.wait()
    rates = " ".join(f"{r:.2f}" for r in drain.rates)
    if took is None:
        print(f"{key}: no figure (the guest did not finish its sends in {args.timeout} s; "
              f"connections {rates})", flush=True)
        return
    print(f"{key}: {args.conns * args.mib / took:.2f} MiB/s over the step; "
          f"connections {rates}", flush=True)
    lines = [line for line in metrics.read_text().splitlines() if line.strip()]
    if len(lines) >= 2:
        step = json.loads(lines[-1])
        for group in ("net", "vcpu"):
            got = {k: v for k, v in sorted(step.get(group, {}).items())
                   if v and not isinstance(v, dict)}
            print(f"{key}: {group} {json.dumps(got)}", flush=True)


def inside(args):
    bench.VCPUS, bench.MEM_MIB = 2, 256
    vmms = [("strato", args.strato), ("firecracker", args.firecracker)]
    with bench.Netns() as ns:
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{HOST_IP}/24", "dev",
                        bench.NET_TAP], check=True)
        ns.enter()
        drain = Drain()
        for r in range(args.rounds):
            print(f"round {r + 1}", flush=True)
            for key, path in vmms:
                with tempfile.TemporaryDirectory() as scratch:
                    boot(key, path, args, drain, scratch)
    return 0


def host(args):
    strato = Path(args.strato) if args.strato else bench.build_strato()
    images = subprocess.run(["bash", str(REPO / "resources/build.sh"), "all"],
                            check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in images.splitlines() if "=" in line)
    fc = bench.executable(args.firecracker, "--firecracker")
    argv = [sys.executable, str(Path(__file__).resolve()), "--inside",
            "--strato", str(strato.resolve()), "--firecracker", str(fc),
            "--vmlinux", env["VMLINUX"], "--rootfs", env["ROOTFS"],
            "--rounds", str(args.rounds), "--conns", str(args.conns), "--mib", str(args.mib),
            "--timeout", str(args.timeout)]
    lane_timeout = args.rounds * 2 * (args.timeout + 30) + 300
    return subprocess.run([sys.executable, str(REPO / "tests/lane/lane.py"), "run",
                           "--timeout", str(lane_timeout), "--"] + argv).returncode


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"))
    ap.add_argument("--strato")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=8, help="connections per boot")
    ap.add_argument("--mib", type=int, default=16, help="MiB per connection")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per boot")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vmlinux", help=argparse.SUPPRESS)
    ap.add_argument("--rootfs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.firecracker:
        ap.error("--firecracker PATH is needed (Firecracker built from source)")
    if min(args.rounds, args.conns, args.mib, args.timeout) < 1:
        ap.error("--rounds, --conns, --mib and --timeout must be at least 1")
    return inside(args) if args.inside else host(args)


if __name__ == "__main__":
    sys.exit(main())
