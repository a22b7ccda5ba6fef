#!/usr/bin/env python3
"""aarch64 lane benchmark: strato and Firecracker, both aarch64 builds,
boot Debian's stock arm64 kernel to user space in the same aarch64 lane VM
(qemu-system-aarch64 with EL2, arm64 KVM), alternating run by run.

    python3 tests/bench/lane_arm64.py --firecracker PATH [--runs N] [--strato PATH]
        [--cmdline "..."] [--log FILE]

PATH is a Firecracker built for aarch64-unknown-linux-gnu (static); strato
is cross-built here (release) unless --strato names one. Each VMM boots
ARM64_KERNEL with ARM64_INITRAMFS (`resources/build.sh arm64`), 2 vCPUs,
256 MiB, one 64 MiB drive, command line "console=ttyS0 reboot=k panic=1
quiet" (--cmdline changes it for both; --log keeps every console line,
stamped, to compare where the two spend their time); the guest's init reports what it sees (2 CPUs, vda) and reboots,
which ends the VMM. Figures, from the lane's clock (/proc/uptime, 10 ms
steps) as each console line arrives:

  start -> /init   VMM spawn to init's first line (STRATO_INIT_OK)
  start -> exit    VMM spawn to the VMM's exit after the guest's reboot

The lane emulates its CPU (QEMU TCG): absolute figures are far below a real
host's; only the ratio between the two VMMs of one run means anything. The
lane runs in the background of nothing else: keep the machine idle.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests/lane"))
import lane  # noqa: E402  (the lane runner: cross build environment)

# Runs inside the lane, whose root is a busybox: sh, not Python.
SCRIPT = r"""#!/bin/sh
set -o pipefail
runs=$1 strato=$2 fc=$3 kernel=$4 initrd=$5 cmdline=$6
d=/run/bench
mkdir -p $d
truncate -s 64M $d/disk.img
cat >$d/fc.json <<EOF
{"boot-source": {"kernel_image_path": "$kernel", "initrd_path": "$initrd",
                 "boot_args": "$cmdline"},
 "drives": [{"drive_id": "d0", "path_on_host": "$d/disk.img", "is_root_device": false,
             "is_read_only": false, "cache_type": "Writeback"}],
 "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}}
EOF
# Each console line with the lane's clock at its arrival.
stamp() { while IFS= read -r line; do read up _ </proc/uptime; echo "T $up $line"; done; }
i=1
while [ $i -le $runs ]; do
    for vmm in strato firecracker; do
        [ $vmm = firecracker ] && [ -z "$fc" ] && continue
        read t0 _ </proc/uptime
        echo "BENCH begin $vmm $i $t0"
        if [ $vmm = strato ]; then
            $strato run --no-stdin --kernel $kernel --initrd $initrd --vcpus 2 --memory 256 \
                --drive path=$d/disk.img --cmdline "$cmdline" 2>$d/err </dev/null | stamp
        else
            : >$d/fc.log
            $fc --no-api --config-file $d/fc.json --log-path $d/fc.log 2>$d/err </dev/null | stamp
        fi
        rc=$?
        read t1 _ </proc/uptime
        echo "BENCH end $vmm $i $t1 $rc"
        [ $rc -eq 0 ] || { echo "BENCH stderr:"; tail -n 5 $d/err; tail -n 5 $d/fc.log 2>/dev/null; }
    done
    i=$((i + 1))
done
"""

FIGURES = ["start -> /init (ms)", "start -> exit (ms)"]


def parse(lines):
    """Per VMM and figure, the values in ms; per run, each VMM's start ->
    /init; and the failures."""
    results = {"strato": {f: [] for f in FIGURES}, "firecracker": {f: [] for f in FIGURES}}
    pairs = {}
    failures = []
    cur = None
    for line in lines:
        parts = line.split()
        if line.startswith("BENCH begin "):
            cur = {"vmm": parts[2], "run": parts[3], "t0": float(parts[4]), "init": None}
        elif line.startswith("T ") and cur and cur["init"] is None and "STRATO_INIT_OK" in line:
            cur["init"] = float(parts[1])
        elif line.startswith("BENCH end ") and cur:
            t1, rc = float(parts[4]), int(parts[5])
            r = results[cur["vmm"]]
            if cur["init"] is not None:
                r[FIGURES[0]].append((cur["init"] - cur["t0"]) * 1000)
                pairs.setdefault(cur["run"], {})[cur["vmm"]] = cur["init"] - cur["t0"]
            if rc == 0 and cur["init"] is not None:
                r[FIGURES[1]].append((t1 - cur["t0"]) * 1000)
            else:
                failures.append(f"run {cur['run']} {cur['vmm']}: status {rc}, "
                                f"init {'seen' if cur['init'] else 'never reached'}")
            cur = None
    return results, pairs, failures


def cell(vals, runs):
    if not vals:
        return "failed (n=0)"
    s = sorted(vals)
    n = f" (n={len(s)})" if len(s) < runs else ""
    return f"{s[0]:.0f} / **{statistics.median(s):.0f}** / {s[-1]:.0f}{n}"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--firecracker", help="Firecracker built for aarch64 (static)")
    ap.add_argument("--strato", help="strato built for aarch64 (default: cross-build, release)")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds for the lane VM")
    ap.add_argument("--cmdline", default="console=ttyS0 reboot=k panic=1 quiet",
                    help="the guest's kernel command line, for both VMMs")
    ap.add_argument("--log", help="also write every stamped console line to this file")
    args = ap.parse_args()
    if args.strato:
        strato = Path(args.strato).resolve()
    else:
        subprocess.run(["/usr/bin/cargo", "build", "-q", "--release", "-p", "api",
                        "--target", lane.ARM_TARGET], cwd=REPO, check=True, env=lane.cross_env())
        strato = REPO / "target/cross" / lane.ARM_TARGET / "release/strato"
    fc = Path(args.firecracker).resolve() if args.firecracker else None
    images = subprocess.run(["bash", str(REPO / "resources/build.sh"), "arm64"],
                            check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in images.splitlines() if "=" in line)
    with tempfile.TemporaryDirectory(prefix="strato-bench-arm64-") as tmp:
        script = Path(tmp) / "bench.sh"
        script.write_text(SCRIPT)
        cmd = [sys.executable, str(REPO / "tests/lane/lane.py"), "--arch", "aarch64", "run",
               "--timeout", str(args.timeout), "--", "/bin/sh", str(script), str(args.runs),
               str(strato), str(fc or ""), env["ARM64_KERNEL"], env["ARM64_INITRAMFS"],
               args.cmdline]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, errors="replace")
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("BENCH"):
                print(line, end="", file=sys.stderr, flush=True)
        rc = proc.wait()
    if args.log:
        Path(args.log).write_text("\n".join(lines) + "\n")
    results, pairs, failures = parse(lines)
    vmms = ["strato"] + (["firecracker"] if fc else [])
    print(f"\n{args.runs} runs, min / **median** / max; aarch64 lane, Debian's arm64 kernel "
          f"({Path(env['ARM64_KERNEL']).parent.joinpath('release').read_text().strip()})\n")
    print("| figure | " + " | ".join({"strato": "strato", "firecracker": "Firecracker"}[v]
                                      for v in vmms) + " |")
    print("| --- |" + " --- |" * len(vmms))
    for f in FIGURES:
        print(f"| {f} | " + " | ".join(cell(results[v][f], args.runs) for v in vmms) + " |")
    # The lane's noise is as large as the difference: say how often each
    # VMM was first within a run, beside the medians.
    both = [p for p in pairs.values() if "strato" in p and "firecracker" in p]
    if both:
        # In the lane clock's 10 ms steps: equal there is a tie.
        diffs = [round((p["strato"] - p["firecracker"]) * 100) for p in both]
        ahead = sum(1 for d in diffs if d < 0)
        behind = sum(1 for d in diffs if d > 0)
        print(f"\nstart -> /init, run by run: strato first in {ahead}, Firecracker in {behind}, "
              f"tied in {len(both) - ahead - behind}, of {len(both)}")
    for f in failures:
        print(f"- {f}")
    if rc != 0:
        print(f"the lane ended with status {rc}", file=sys.stderr)
    return 1 if failures or rc != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
