#!/usr/bin/env python3
"""strato benchmark: how closely the rate limiters hold a guest to its rate,
strato and Firecracker side by side.

    python3 tests/bench/rate.py [--runs N] [--firecracker PATH] [--strato PATH]
                                [--cases LIST] [--timeout S] [--json PATH]

Boots the project's tiny test guests (tests/guests/) with Firecracker's
rate-limiter JSON on a NIC or a drive and measures the rate the guest got:

  nic-10m   net-bench mode=tx size=1514, tx_rate_limiter bandwidth
            size 1048576, refill_time 100 (10 MiB/s)
  nic-1m    the same, bandwidth size 104858, refill_time 100 (1 MiB/s)
  nic-ops   net-bench mode=tx size=60, tx_rate_limiter ops size 200,
            refill_time 100 (2000 frames/s)
  drive-10m blk-copy op=read chunk=64 on a read-only drive, rate_limiter
            bandwidth size 1048576, refill_time 100 (10 MiB/s)

NIC cases are timed from the guest's `net-bench: tx start` line to its
`net-bench: tx N done` line. The block guest prints nothing before its
`blk-bench: N requests done` line, so the drive case is timed as
t(N) - t(0): VMM start -> done line, less the same for a count=0 run of
the same VMM in the same round.  Every bucket starts full, so `size`
tokens pass at once and the expected time is (total - size) / rate; the
table gives the raw rate (total / time) and the rate after that first
bucket ((total - size) / time) with its error against the configured rate.
Each case also runs once per round without a limiter, to show what the VMM
does unhindered.  The VMMs alternate run by run (the order rotating each
round).  Every guest: 1 vCPU, 128 MiB.

strato runs as `strato vm --no-api --config-file CFG`, Firecracker as
`firecracker --no-api --config-file CFG --log-path LOG`, with the same
config (tests/bench/run.py's Firecracker config plus the limiter).  The NIC
cases need root (a network namespace with a tap, as run.py's net section)
and are skipped otherwise.  Builds strato (release) unless --strato is
given; Firecracker from --firecracker or $STRATO_BENCH_FIRECRACKER, else
strato alone.  See docs/benchmarks.md, "Rate limiters: accuracy".
"""

import argparse
import copy
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402  (launchers, netns + tap, builds, formatting)

MIB = 1 << 20
# Firecracker's config needs an image for the drive case; reads wrap.
DRIVE_MIB = 16
CHUNK_KIB = 64

# key: (label, device, limiter, guest cmdline (without count), per-item
# bytes, count). Counts make each limited run about 3 s (2-4 s) after the
# initial full bucket.
CASES = {
    "nic-10m": ("NIC TX bandwidth 10 MiB/s", "net",
                {"bandwidth": {"size": 1048576, "refill_time": 100}},
                "mode=tx size=1514", 1514, 22000),
    "nic-1m": ("NIC TX bandwidth 1 MiB/s", "net",
               {"bandwidth": {"size": 104858, "refill_time": 100}},
               "mode=tx size=1514", 1514, 2100),
    "nic-ops": ("NIC TX ops 2000 frames/s", "net",
                {"ops": {"size": 200, "refill_time": 100}},
                "mode=tx size=60", 60, 6200),
    "drive-10m": ("drive bandwidth 10 MiB/s (64 KiB reads)", "blk",
                  {"bandwidth": {"size": 1048576, "refill_time": 100}},
                  f"op=read chunk={CHUNK_KIB}", CHUNK_KIB * 1024, 512),
}
# Firecracker charges a NIC's TX bucket for the whole descriptor chain,
# the 12-byte virtio-net header included; strato for the frame alone.
VNET_HDR = 12


def bucket(limiter):
    """(the bucket that limits, its unit): bandwidth (bytes) or ops."""
    return (limiter["bandwidth"], "bytes") if "bandwidth" in limiter else (limiter["ops"], "ops")


def configured_rate(limiter):
    b, _ = bucket(limiter)
    return b["size"] * 1000 / b["refill_time"]


def config_file(kernel, cmdline, scratch, drives, nic, device, limiter):
    """run.py's Firecracker config (boot source, machine, drives, NIC), with
    `limiter` on the drive or as the NIC's TX limiter.  Returns (path,
    Firecracker's argv)."""
    fc = bench.Firecracker("firecracker", "Firecracker", "firecracker")
    argv = fc.argv(kernel, cmdline, scratch, drives, nic)
    path = Path(argv[argv.index("--config-file") + 1])
    if limiter:
        cfg = json.loads(path.read_text())
        if device == "net":
            cfg["network-interfaces"][0]["tx_rate_limiter"] = copy.deepcopy(limiter)
        else:
            cfg["drives"][0]["rate_limiter"] = copy.deepcopy(limiter)
        path.write_text(json.dumps(cfg))
    return path, argv


class StratoVm(bench.Vmm):
    ok_status = (0,)

    def argv_for(self, kernel, cmdline, scratch, drives, nic, device, limiter):
        path, _ = config_file(kernel, cmdline, scratch, drives, nic, device, limiter)
        return [self.path, "vm", "--no-api", "--config-file", str(path)]


class FirecrackerVm(bench.Firecracker):
    def argv_for(self, kernel, cmdline, scratch, drives, nic, device, limiter):
        _, argv = config_file(kernel, cmdline, scratch, drives, nic, device, limiter)
        return [self.path] + argv[1:]


class Run:
    def __init__(self, ok, why="", marks=None, code=None):
        self.ok, self.why, self.marks, self.code = ok, why, marks or {}, code


def run_marks(argv, marks, timeout, scratch, ok_status):
    """Boot once; the time (s from the spawn) at which each of `marks`
    (bytes) had arrived whole on stdout.  run.py's run_once times one
    string; here it takes two."""
    scratch = Path(scratch)
    errpath = scratch / "stderr.txt"
    proc, t0, timed_out, timer = bench.spawn_with_deadline(argv, scratch, timeout)
    buf, seen = bytearray(), {}
    fd = proc.stdout.fileno()
    while True:
        data = os.read(fd, 65536)
        now = time.perf_counter()
        if not data:
            break
        start = max(0, len(buf) - max(len(m) for m in marks))
        buf += data
        for m in marks:
            if m not in seen and buf.find(m, start) >= 0:
                seen[m] = now - t0
    code = proc.wait()
    timer.cancel()
    proc.stdout.close()
    if timed_out.is_set():
        return Run(False, f"timed out after {timeout:.0f} s")
    missing = [m for m in marks if m not in seen]
    if code not in ok_status or missing:
        tail = errpath.read_bytes().decode(errors="replace").strip().splitlines()[-3:]
        log = scratch / "firecracker.log"
        if "--log-path" in argv and log.exists():
            tail += log.read_text(errors="replace").strip().splitlines()[-3:]
        what = f"exit status {code}" if code not in ok_status else \
            f"{missing[0].decode()!r} not on stdout"
        return Run(False, f"{what}; stdout ends {bytes(buf[-200:])!r}; "
                          f"stderr/log ends {' | '.join(tail)!r}", code=code)
    return Run(True, marks=seen, code=code)


def fmt_value(x, unit):
    return f"{x / MIB:.3f}" if unit == "bytes" else f"{x:.0f}"


def summarise(runs, limiter, per_item, count, unit):
    """(raw rates, rates after the first bucket) of the timed runs."""
    b, _ = bucket(limiter)
    total = count * per_item if unit == "bytes" else count
    raw = [total / t for t in runs]
    after = [(total - b["size"]) / t for t in runs]
    return raw, after


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--strato", help="strato binary (default: build it)")
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"),
                    help="firecracker binary (default: $STRATO_BENCH_FIRECRACKER; else "
                         "strato alone)")
    ap.add_argument("--cases", default=",".join(CASES),
                    help=f"comma-separated cases (default: {','.join(CASES)})")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a run is killed")
    ap.add_argument("--json", metavar="PATH", help="also write every run's times to PATH")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases or any(c not in CASES for c in cases):
        ap.error(f"--cases: a comma-separated subset of {','.join(CASES)}")

    strato = bench.executable(args.strato, "--strato") if args.strato else bench.build_strato()
    vmms = [StratoVm("strato", "strato", bench.executable(strato, "strato"))]
    vmms[0].built_here = not args.strato
    if args.firecracker:
        vmms.append(FirecrackerVm("firecracker", "Firecracker",
                                  bench.executable(args.firecracker, "--firecracker")))
    notes = []
    if os.geteuid() != 0 and any(CASES[c][1] == "net" for c in cases):
        notes.append("- NIC cases skipped: they need root (network namespace, tap)")
        cases = [c for c in cases if CASES[c][1] != "net"]

    # res[vmm][case]["limited"|"free"] = [Run]; drive cases also "zero".
    res = {v.key: {c: {"limited": [], "free": [], "zero": []} for c in cases} for v in vmms}
    load_before = os.getloadavg()[0]
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="strato-rate.", dir=bench.args_tmpdir()) as scratch:
        guests = Path(scratch) / "guests"
        subprocess.run(["bash", str(bench.REPO / "tests/guests/build.sh"), str(guests)],
                       check=True, stdout=subprocess.DEVNULL)
        img = Path(scratch) / "drive.img"
        bench.write_random_image(img, DRIVE_MIB)
        nic = (bench.NET_TAP, bench.GUEST_MAC)

        def plan(case):
            """[(what, kernel, cmdline, marks, drives, nic, limiter)] for a case."""
            label, device, limiter, cmd, per_item, n = CASES[case]
            if device == "net":
                kernel = guests / "net-bench.elf"
                marks = [b"net-bench: tx start", f"net-bench: tx {n} done".encode()]
                return [(w, kernel, f"{cmd} count={n}", marks, (), nic, lim)
                        for w, lim in (("free", None), ("limited", limiter))]
            kernel = guests / "blk-copy.elf"
            drives = [(img, True)]
            return [("zero", kernel, f"{cmd} count=0", [b"blk-bench: 0 requests done"],
                     drives, None, None)] + \
                   [(w, kernel, f"{cmd} count={n}", [f"blk-bench: {n} requests done".encode()],
                     drives, None, lim) for w, lim in (("free", None), ("limited", limiter))]

        def one(v, case, item):
            what, kernel, cmdline, marks, drives, nicc, limiter = item
            argv = v.argv_for(kernel, cmdline, scratch, drives, nicc, CASES[case][1], limiter)
            return run_marks(argv, marks, args.timeout, scratch, v.ok_status)

        def rounds():
            # Untimed warm-up: one unlimited run of each case per VMM.
            for v in vmms:
                for case in cases:
                    for item in plan(case):
                        if item[0] != "limited":
                            one(v, case, item)
            for i in range(args.runs):
                k = i % len(vmms)
                for case in cases:
                    for v in vmms[k:] + vmms[:k]:
                        for item in plan(case):
                            r = one(v, case, item)
                            res[v.key][case][item[0]].append(r)
                            if not r.ok:
                                bench.log(f"rate run {i + 1}: {v.label} {case} {item[0]} "
                                          f"FAILED: {r.why}")
                bench.log(f"rate run {i + 1}/{args.runs} done")

        if any(CASES[c][1] == "net" for c in cases):
            with bench.Netns() as ns:
                ns.enter()
                try:
                    rounds()
                finally:
                    ns.leave()
        else:
            rounds()

    # Elapsed times per VMM and case.
    def elapsed(v, case, what):
        device = CASES[case][1]
        out = []
        for j, r in enumerate(res[v.key][case][what]):
            if not r.ok:
                continue
            if device == "net":
                start = r.marks[b"net-bench: tx start"]
                done = r.marks[f"net-bench: tx {CASES[case][5]} done".encode()]
                out.append(done - start)
            else:
                zero = res[v.key][case]["zero"][j]
                if zero.ok:
                    (t,), (t0,) = r.marks.values(), zero.marks.values()
                    out.append(t - t0)
        return [t for t in out if t > 0]

    rows, free_lines, failures = [], [], []
    for case in cases:
        label, device, limiter, cmd, per_item, n = CASES[case]
        b, unit = bucket(limiter)
        rate = configured_rate(limiter)
        uname = "MiB/s" if unit == "bytes" else "frames/s"
        total = n * per_item if unit == "bytes" else n
        expect_s = (total - b["size"]) / rate
        row = [label, f"{fmt_value(rate, unit)} {uname}; {n} × {per_item} B, "
                      f"expected {expect_s:.2f} s"]
        free = []
        for v in vmms:
            ts = elapsed(v, case, "limited")
            fails = args.runs - len(ts)
            for r in res[v.key][case]["limited"] + res[v.key][case]["free"] + \
                    res[v.key][case]["zero"]:
                if not r.ok:
                    failures.append(f"- {v.label}, {case}: {r.why}")
            if not ts:
                row += ["failed", "n/a"]
                continue
            raw, after = summarise(ts, limiter, per_item, n, unit)
            err = [x / rate - 1 for x in after]
            f = lambda x: fmt_value(x, unit)  # noqa: E731
            cell_raw = bench.fmt_triplet(raw, f) + (f" ({fails} failed)" if fails else "")
            cell_after = (bench.fmt_triplet(after, f) + "; error "
                          + " / ".join(f"{e * 100:+.2f} %" for e in
                                       (min(err), statistics.median(err), max(err))))
            row += [cell_raw, cell_after]
            tf = elapsed(v, case, "free")
            if tf:
                fr = statistics.median(total / t for t in tf)
                free.append(f"{v.label} {fmt_value(fr, unit)}")
        rows.append(row)
        if free:
            free_lines.append(f"- {label}, no limiter (median {uname}): {', '.join(free)}")

    print(f"rate-limiter accuracy, {datetime.date.today().isoformat()}: "
          f"{bench.machine_facts()}")
    for v in vmms:
        ver = v.version() if v.key != "strato" else bench.Strato.version(v)
        print(f"- {v.label}: {v.path}{f' ({ver})' if ver else ''}")
    print(f"- load average (1 min) {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
          f"{time.monotonic() - t_start:.0f} s in all; {args.runs} rounds")
    print("- NIC: `net-bench: tx start` → `tx N done`; drive: t(N) − t(0) to "
          "`blk-bench: N requests done`; cells min / median / max")
    print("- raw = total / time; after the first bucket = (total − size) / time, "
          "error against the configured rate")
    if "firecracker" in [v.key for v in vmms] and any(CASES[c][1] == "net" and
                                                      "bandwidth" in CASES[c][2]
                                                      for c in cases):
        print(f"- Firecracker charges a NIC's TX bandwidth bucket {VNET_HDR} B more per frame "
              f"(the virtio-net header): with 1514-byte frames its frame-byte rate is "
              f"{(1 - 1514 / (1514 + VNET_HDR)) * 100:.1f} % under the configured rate by "
              f"design; strato charges the frame alone")
    for line in notes + free_lines:
        print(line)
    print()
    head = ["case", "configured"]
    for v in vmms:
        head += [f"{v.label}: raw", f"{v.label}: after first bucket (error)"]
    print("| " + " | ".join(head) + " |")
    print("| " + " | ".join("---" for _ in head) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if failures:
        print()
        print("Failed runs:")
        for line in failures:
            print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {v.key: {c: {w: [{"ok": r.ok, "why": r.why, "marks": {m.decode(): t for m, t in
                                                                  r.marks.items()},
                              "status": r.code} for r in rs]
                         for w, rs in per.items()} for c, per in res[v.key].items()}
             for v in vmms}, indent=1))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
