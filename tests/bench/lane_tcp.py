#!/usr/bin/env python3
"""One step of the lane benchmark (TCP guest -> host by default) in the x86
lane, the VMMs booted alternately in ONE lane VM, so that every pair of
boots sees the same emulator (the lane's speed drifts between lane VMs more
than the VMMs differ).

    python3 tests/bench/lane_tcp.py --firecracker PATH [--rounds N]
                                    [--step STEP] [--conns N] [--mib N]
                                    [--strato PATH] [--first VMM]
                                    [--guest-args ARGS ...]
                                    [--also NAME=PATH ...]

Builds strato (release) and the guest images on the host, then runs itself
inside the lane (tests/lane/lane.py run), one lane VM a round. There each
round boots strato and Firecracker, which one first alternating from round
to round (round 1: --first, default strato), both through Firecracker's
command line (so both write Firecracker's metrics), with the project
kernel, 2 vCPUs, 256 MiB, the ext4 root, a scratch disk and a NIC on a tap
in a network namespace; the guest's init (strato_bench=HOST:PORT:MIB:N)
runs the lane benchmark's steps (tests/bench/lane.py), of which --step is
timed, from its mark on the console to the next, where the boot ends:

  tx, rx           N connections of MIB MiB guest -> host or host -> guest
                   (MiB/s; the scratch disk is 1 MiB, so the disk steps
                   before them take little time)
  read1m, write1m  MIB MiB in 1 MiB O_DIRECT requests on vdb (MiB/s)
  read4k, write4k  MIB/4 MiB in 4 KiB O_DIRECT requests (requests/s)

Each --guest-args boots both again with ARGS added to the guest's command
line ("" is the plain one). Each --also NAME=PATH boots another strato
build (or a script that runs one) in every round too, under NAME. Per boot
it prints the step's figure (for TCP each connection's rate too) and, over
the step, the CPU time of each of the VMM's threads (user time of a vCPU
thread is its guest running), KVM's counters of the VM (exits by kind,
halts, injected interrupts) and the VMM's `net` or `block` metrics and
`vcpu` metrics (frames or requests, kicks, MMIO exits: two per
interrupt). A round whose lane VM breaks is run again in a new one (twice
at most); a lane VM counts as broken also when its console has been quiet
for --timeout + 120 s, as a boot prints within --timeout (a lane CPU that
takes no interrupt stops the boot's own deadline, docs/testing.md). At the
end it prints each build's min / median / max over the rounds that
finished, and in how many rounds it beat Firecracker.
"""

import argparse
import json
import os
import re
import select
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
import lane as lane_bench  # noqa: E402  (the lane benchmark's steps)

REPO = Path(__file__).resolve().parents[2]
# The lane runner's status for a lane VM that broke, and how often a round
# is run again for it.
LANE_BROKE = 126
LANE_RETRIES = 2
HOST_IP, GUEST_IP, PORT = "172.31.9.1", "172.31.9.2", 6000


class Peer:
    """The host end of a TCP step on `port`: takes connections one after
    another, drains each (`size` None) or sends it `size` bytes, and
    records each one's rate in MiB/s."""

    def __init__(self, port, size=None):
        self.size = size
        self.rates = []
        self.sock = socket.create_server((HOST_IP, port), reuse_port=True)
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                t0 = time.perf_counter()
                try:
                    moved = self.drain(conn) if self.size is None else self.send(conn)
                except OSError:
                    continue
                self.rates.append(moved / (1 << 20) / (time.perf_counter() - t0))

    @staticmethod
    def drain(conn):
        n = 0
        while data := conn.recv(1 << 20):
            n += len(data)
        return n

    def send(self, conn):
        chunk, left = bytes(1 << 20), self.size
        while left:
            left -= conn.send(chunk[:min(left, len(chunk))])
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(65536):
            pass
        return self.size


# Each step of the lane benchmark: its units per MiB of --mib (requests
# for the 4 KiB steps, MiB for the others) and what they are.
STEPS = {step: (scale, "requests/s" if scale > 1 else "MiB/s")
         for step, _, scale in lane_bench.STEP_FIGURES}


def kvm_stats(pid):
    """KVM's counters of the VM of process `pid` (its debugfs directory;
    each VM-level file sums its vCPUs'), or {} without debugfs."""
    got = {}
    # The directory is named after the thread that made the VM.
    tids = {t.name for t in Path(f"/proc/{pid}/task").glob("*")}
    for vm in Path("/sys/kernel/debug/kvm").glob("*-*"):
        if vm.name.split("-")[0] not in tids:
            continue
        for f in vm.iterdir():
            try:
                got[f.name] = got.get(f.name, 0) + int(f.read_text())
            except (OSError, ValueError):
                continue
    return got


def thread_ticks(pid):
    """{thread name: [user, system] clock ticks} of process `pid`."""
    got = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        user, system = got.get(name, [0, 0])
        got[name] = [user + int(fields[11]), system + int(fields[12])]
    return got


def boot(key, path, args, peers, scratch, extra=""):
    """One boot of the VMM at `path`, `extra` added to the guest's command
    line; prints its figures."""
    tcp = args.step in ("tx", "rx")
    for peer in peers:
        peer.rates.clear()
    root, disk = Path(scratch) / "rootfs.ext4", Path(scratch) / "vdb.img"
    subprocess.run(["cp", "--sparse=always", args.rootfs, str(root)], check=True)
    with open(disk, "wb") as f:
        f.truncate((1 if tcp else args.mib) << 20)
    cmdline = (f"console=ttyS0 reboot=k panic=1 root=/dev/vda rw quiet "
               f"ip={GUEST_IP}::{HOST_IP}:255.255.255.0::eth0:off "
               f"strato_bench={HOST_IP}:{PORT}:{args.mib}:{args.conns} {extra}").strip()
    vmm = bench.Firecracker(key, key, path)
    argv = vmm.argv(args.vmlinux, cmdline, scratch, drives=[(root, False), (disk, False)],
                    nic=(bench.NET_TAP, bench.GUEST_MAC))
    sock, metrics = Path(scratch) / "api.sock", Path(scratch) / "metrics.json"
    metrics.touch()
    argv = [a for a in argv if a != "--no-api"] + ["--api-sock", str(sock),
                                                   "--metrics-path", str(metrics)]

    def metric_lines():
        return [line for line in metrics.read_text().splitlines() if line.strip()]

    def flush():
        # Each metrics line holds the growth since the line before; both
        # VMMs also write one a minute by themselves. Straight on the
        # socket: a curl process takes seconds to start in the lane.
        body = b'{"action_type":"FlushMetrics"}'
        try:
            with socket.socket(socket.AF_UNIX) as api:
                api.settimeout(5)
                api.connect(str(sock))
                api.sendall(b"PUT /actions HTTP/1.1\r\nHost: localhost\r\n"
                            b"Content-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                api.recv(4096)
        except OSError:
            pass

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
                mark = line.rstrip()
                if mark.endswith(f"STRATO_BENCH {args.step}".encode()):
                    # The step runs from its mark on: reading the counters
                    # is in its time, for every VMM.
                    start = time.monotonic()
                    flush()
                    first = len(metric_lines())
                    ticks, kvm = thread_ticks(proc.pid), kvm_stats(proc.pid)
                elif b"STRATO_BENCH_FAILED" in line and start is not None and took is None:
                    print(f"{key}: the guest failed the step", flush=True)
                    deadline = 0
                elif b"STRATO_BENCH " in mark and start is not None and took is None:
                    took = time.monotonic() - start
                    ticks = {k: [u - ticks.get(k, [0, 0])[0], s - ticks.get(k, [0, 0])[1]]
                             for k, (u, s) in thread_ticks(proc.pid).items()}
                    kvm = {k: v - kvm.get(k, 0) for k, v in kvm_stats(proc.pid).items()}
                    flush()
                    last = len(metric_lines())
                    # The steps after it do not count: the next boot.
                    deadline = 0
                if b"STRATO_BENCH end" in line:
                    deadline = 0
    finally:
        proc.kill()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            # Seen in the lane: a vCPU thread that the lane's kernel never
            # runs again (docs/testing.md); this lane VM is done for.
            print(f"{key}: did not end within 60 s of SIGKILL", flush=True)
            sys.exit(LANE_BROKE)
    # The connections of the step: guest -> host drains, host -> guest sends.
    step_peer = peers[0] if args.step == "tx" else peers[1]
    rates = " ".join(f"{r:.2f}" for r in step_peer.rates)
    conns = f"; connections {rates}" if tcp else ""
    if took is None:
        print(f"{key}: no figure (the guest did not finish {args.step} in {args.timeout} s"
              f"{conns})", flush=True)
        return
    scale, unit = STEPS[args.step]
    units = args.mib * scale * (args.conns if tcp else 1)
    print(f"{key}: {units / took:.2f} {unit} over {args.step}{conns}", flush=True)
    busy = {k: v for k, v in sorted(ticks.items()) if any(v)}
    print(f"{key}: CPU ticks per thread [user, system] {json.dumps(busy)}", flush=True)
    print(f"{key}: kvm {json.dumps({k: v for k, v in sorted(kvm.items()) if v})}", flush=True)
    # The step's metrics: the lines its two flushes delimit.
    step = {}
    for line in metric_lines()[first:last]:
        for group, counters in json.loads(line).items():
            if isinstance(counters, dict):
                got = step.setdefault(group, {})
                for k, v in counters.items():
                    if isinstance(v, int):
                        got[k] = got.get(k, 0) + v
    device = "net" if tcp else "block"
    for group in (device, "vcpu"):
        got = {k: v for k, v in sorted(step.get(group, {}).items()) if v}
        print(f"{key}: {group} {json.dumps(got)}", flush=True)


def inside(args):
    bench.VCPUS, bench.MEM_MIB = 2, 256
    vmms = [("strato", args.strato), ("firecracker", args.firecracker)]
    vmms += [tuple(also.split("=", 1)) for also in args.also or []]
    if args.first == "firecracker":
        vmms.reverse()
    # KVM's per-VM counters (exits by kind, halts, page faults).
    if not Path("/sys/kernel/debug/kvm").is_dir():
        subprocess.run(["mount", "-t", "debugfs", "debugfs", "/sys/kernel/debug"],
                       capture_output=True)
    with bench.Netns() as ns:
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{HOST_IP}/24", "dev",
                        bench.NET_TAP], check=True)
        ns.enter()
        peers = [Peer(PORT), Peer(PORT + 1, args.mib << 20)]
        for r in range(args.round_no, args.round_no + args.rounds):
            print(f"round {r + 1}", flush=True)
            # Which VMM boots first alternates, so that neither always
            # gets the lane right after a boot or right after the other's.
            order = vmms if r % 2 == 0 else vmms[::-1]
            for extra in args.guest_args or [""]:
                for key, path in order:
                    label = f"{key} [{extra}]" if extra else key
                    with tempfile.TemporaryDirectory() as scratch:
                        boot(label, path, args, peers, scratch, extra)
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
            "--conns", str(args.conns), "--mib", str(args.mib),
            "--timeout", str(args.timeout), "--step", args.step]
    for extra in args.guest_args or []:
        argv += ["--guest-args", extra]
    argv += ["--first", args.first]
    for also in args.also or []:
        name, path = also.split("=", 1)
        argv += ["--also", f"{name}={bench.executable(path, '--also')}"]
    variants = max(1, len(args.guest_args or []))
    # One round a lane VM: a lane VM that breaks (an emulator fault,
    # docs/testing.md) costs that round, which is run again, not the rest.
    lane_timeout = variants * (2 + len(args.also or [])) * (args.timeout + 30) + 300
    lane = [sys.executable, str(REPO / "tests/lane/lane.py"), "run",
            "--timeout", str(lane_timeout), "--quiet", str(args.timeout + 120), "--"]
    failed, rounds = 0, []
    for r in range(args.rounds):
        for _ in range(1 + LANE_RETRIES):
            rc, figures = lane_round(lane + argv + ["--rounds", "1", "--round-no", str(r)])
            if rc != LANE_BROKE:
                break
            print(f"round {r + 1}: the lane VM broke; the round again", flush=True)
        failed += rc != 0
        if rc == 0:
            rounds.append(figures)
    summary(args, rounds)
    return 1 if failed else 0


FIGURE = re.compile(r"^(\S+(?: \[.*\])?): ([\d.]+) (?:MiB/s|requests/s) over ")


def lane_round(cmd):
    """Runs one round's lane VM, echoing its output; returns its status and
    {boot label: figure} of the boots that gave one."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace")
    figures = {}
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if m := FIGURE.match(line):
            figures[m.group(1)] = float(m.group(2))
    return proc.wait(), figures


def summary(args, rounds):
    """Each boot label's min / median / max over the rounds whose lane VM
    finished, and in how many of them each beat Firecracker."""
    unit = STEPS[args.step][1]
    labels = list(dict.fromkeys(k for r in rounds for k in r))
    print(f"\n{args.step} ({unit}), {len(rounds)} of {args.rounds} rounds finished:", flush=True)
    for label in labels:
        vals = [r[label] for r in rounds if label in r]
        line = (f"  {label}: {min(vals):.2f} / {statistics.median(vals):.2f} / "
                f"{max(vals):.2f} (n={len(vals)})")
        # Its rival in the round: Firecracker with the same guest arguments.
        fc = "firecracker" + label[label.find(" ["):] if " [" in label else "firecracker"
        pairs = [(r[label], r[fc]) for r in rounds if label in r and fc in r]
        if not label.startswith("firecracker") and pairs:
            ahead = sum(a > b for a, b in pairs)
            line += f"; ahead of Firecracker in {ahead} of {len(pairs)} rounds"
        print(line, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"))
    ap.add_argument("--strato")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--step", choices=tuple(STEPS), default="tx", help="the step timed")
    ap.add_argument("--conns", type=int, default=8, help="connections per boot")
    ap.add_argument("--mib", type=int, default=16,
                    help="MiB per connection, or of the disk steps")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per boot")
    ap.add_argument("--first", choices=("strato", "firecracker"), default="strato",
                    help="the VMM that boots first in round 1")
    ap.add_argument("--guest-args", action="append", metavar="ARGS",
                    help="boot both VMMs again with ARGS added to the guest's command "
                         "line (repeatable; \"\" is the plain command line)")
    ap.add_argument("--also", action="append", metavar="NAME=PATH",
                    help="boot another strato build (or a script that runs one) in every "
                         "round too, under NAME (repeatable)")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--round-no", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--vmlinux", help=argparse.SUPPRESS)
    ap.add_argument("--rootfs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not args.firecracker:
        ap.error("--firecracker PATH is needed (Firecracker built from source)")
    if min(args.rounds, args.conns, args.mib, args.timeout) < 1:
        ap.error("--rounds, --conns, --mib and --timeout must be at least 1")
    for also in args.also or []:
        name, _, path = also.partition("=")
        if not name or not path or name in ("strato", "firecracker") or " " in name:
            ap.error(f"--also {also!r}: NAME=PATH, NAME one word other than "
                     "strato and firecracker")
    return inside(args) if args.inside else host(args)


if __name__ == "__main__":
    sys.exit(main())
