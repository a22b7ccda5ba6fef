#!/usr/bin/env python3
"""Sizing benchmark: how fast a running Linux guest gives memory back and
takes it again through the balloon, what that does to the VMM's resident
memory, and how fast a hot-added vCPU comes online, for strato and
Firecracker in the same x86 lane run (hardware-style KVM).

    python3 tests/bench/sizing.py [--runs N] [--firecracker PATH] [--strato PATH]

On the host it builds strato (release) and the guest images, then runs
itself inside the lane (tests/lane/lane.py) with --inside, once per run and
VMM, each in a lane VM of its own (VMMs alternate run by run; a run whose
lane VM breaks, an emulator fault, is run again, twice at most), and prints
the table of all runs. Each VMM is driven through the same Firecracker API
calls on its unix socket (strato: `strato vm --api-sock`): 1 vCPU (strato:
at most 2), 512 MiB, a balloon of 0 MiB without deflate-on-OOM and with
statistics every second, the project kernel and initramfs; the guest's
init touches 384 MiB once (strato_fill) and reports online CPUs
(strato_cpus). Figures:

  inflate          PATCH /balloon amount_mib 256 until the balloon's
                   actual_mib (GET /balloon/statistics, polled every 20 ms)
                   is 256: seconds
  RSS released     the VMM's VmRSS before the inflate less after it: MiB
  deflate          PATCH /balloon amount_mib 0 until actual_mib is 0
  +1 vCPU          PATCH /machine-config vcpu_count 2 until the guest
                   reports CPUs 0-1 online (its loop looks every 0.2 s):
                   strato only, Firecracker has no vCPU hotplug
  +1 GiB           with PUT /hotplug/memory total_size_mib 1024 (default
                   slots and blocks) before the start and
                   memhp_default_state=online_movable on the command line:
                   PATCH /hotplug/memory requested_size_mib 1024 until
                   GET /hotplug/memory says plugged_size_mib 1024, and until
                   the guest's MemTotal has grown by 1 GiB (strato_mem,
                   which looks every 0.5 s)
  -1 GiB           once the guest has touched 768 MiB of it
                   (strato_growfill): requested_size_mib 0 until
                   plugged_size_mib is 0, and the VMM's VmRSS before less
                   after

The lane emulates its CPU (QEMU TCG), so absolute figures are far below a
real host's: only the ratios between VMMs in one run mean anything.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import api_bench  # noqa: E402  (HTTP over a unix socket)
import lane as lanebench  # noqa: E402  (the lane runner's conventions)
import run as bench  # noqa: E402  (build_strato, executable)

REPO = Path(__file__).resolve().parents[2]
MEM_MIB, FILL_MIB, BALLOON_MIB = 512, 384, 256
# virtio-mem: a 1 GiB region, all of it plugged, 768 MiB of it then
# touched by the guest (strato_growfill), then all of it unplugged.
HOTPLUG_MIB, GROWFILL_MIB = 1024, 768
FIGURES = [
    "balloon inflate 256 MiB: API to done (s)",
    "VMM RSS before the inflate (MiB)",
    "VMM RSS released by the inflate (MiB)",
    "balloon deflate: API to done (s)",
    "+1 vCPU: API to online in the guest (s)",
    "+1 GiB (virtio-mem): API to plugged (s)",
    "+1 GiB: API to MemTotal grown in the guest (s)",
    "-1 GiB (virtio-mem): API to unplugged (s)",
    "VMM RSS released by the unplug (MiB)",
]


def log(msg):
    print(f"[sizing] {msg}", file=sys.stderr, flush=True)


def call(sock, method, path, body=None, timeout=30):
    """One API request; returns the decoded JSON body (or None), raises on
    an error status."""
    conn = api_bench.UnixConnection(sock, timeout)
    try:
        status, raw = api_bench.request(conn, method, path, body)
    finally:
        conn.close()
    if status >= 300:
        raise RuntimeError(f"{method} {path}: {status} {raw.decode(errors='replace')}")
    return json.loads(raw) if raw else None


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def wait_for(what, deadline, poll, interval=0.02):
    """Calls poll() until it returns something true; returns it. Raises
    once `deadline` (time.monotonic()) has passed."""
    while True:
        got = poll()
        if got:
            return got
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def spawn_vmm(key, args, scratch):
    """Starts VMM `key` with its API on a unix socket in `scratch`; returns
    (process, API socket, console file, its output file to close)."""
    sock = scratch / "api.sock"
    console = scratch / "console.log"
    if key == "strato":
        argv = [args.strato, "vm", "--api-sock", str(sock), "--id", "sizing",
                "--console-log", str(console)]
        out = open(scratch / "vmm-stderr.log", "wb")
    else:
        log_path = scratch / "firecracker.log"
        log_path.touch()
        argv = [args.firecracker, "--api-sock", str(sock), "--id", "sizing",
                "--log-path", str(log_path)]
        # Firecracker writes the guest's serial console on its stdout.
        out = open(console, "wb")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, cwd=scratch, start_new_session=True)
    return proc, sock, console, out


def console_reader(console):
    """A function that returns the console so far ("" before it exists)."""
    def text():
        try:
            return console.read_text(errors="replace")
        except OSError:
            return ""
    return text


def failure(key, error, scratch, console_text):
    """A failed run's message: the error, the console's end and the ends
    of the VMM's other logs."""
    return (f"{key}: {error}; console ends:\n{console_text[-600:]}"
            + "".join(f"\n{p.name} ends:\n" + p.read_text(errors="replace")[-600:]
                      for p in sorted(scratch.glob("*.log")) if p.name != "console.log"))


def one_run(key, args, scratch):
    """Boots one VMM through its API and resizes its guest; returns
    ({figure: value}, error or None)."""
    scratch = Path(scratch)
    proc, sock, console, out = spawn_vmm(key, args, scratch)
    figures, error = {}, None
    deadline = time.monotonic() + args.timeout
    text = console_reader(console)

    try:
        wait_for("the API socket", deadline, sock.exists)
        machine = {"vcpu_count": 1, "mem_size_mib": MEM_MIB}
        if key == "strato":
            machine["max_vcpus"] = 2
        call(str(sock), "PUT", "/machine-config", machine)
        call(str(sock), "PUT", "/balloon", {"amount_mib": 0, "deflate_on_oom": False,
                                            "stats_polling_interval_s": 1})
        call(str(sock), "PUT", "/hotplug/memory", {"total_size_mib": HOTPLUG_MIB})
        call(str(sock), "PUT", "/boot-source", {
            "kernel_image_path": args.vmlinux, "initrd_path": args.initramfs,
            "boot_args": "console=ttyS0 reboot=k panic=1 quiet strato_noreboot "
                         f"strato_fill={FILL_MIB} strato_cpus strato_mem "
                         f"strato_growfill={GROWFILL_MIB} memhp_default_state=online_movable"})
        call(str(sock), "PUT", "/actions", {"action_type": "InstanceStart"})
        wait_for("the guest's init", deadline, lambda: "STRATO_INIT_DONE" in text(), 0.1)
        if f"STRATO_FILLED={FILL_MIB}" not in text():
            raise RuntimeError("the guest did not touch its memory")

        def actual():
            return call(str(sock), "GET", "/balloon/statistics").get("actual_mib")

        # Statistics come once the balloon driver is up.
        wait_for("the balloon's statistics", deadline,
                 lambda: _ok(actual), 0.1)
        before = rss_mib(proc.pid)
        figures[FIGURES[1]] = before
        t0 = time.monotonic()
        call(str(sock), "PATCH", "/balloon", {"amount_mib": BALLOON_MIB})
        wait_for("the inflate", deadline, lambda: actual() == BALLOON_MIB)
        figures[FIGURES[0]] = time.monotonic() - t0
        figures[FIGURES[2]] = before - rss_mib(proc.pid)
        t0 = time.monotonic()
        call(str(sock), "PATCH", "/balloon", {"amount_mib": 0})
        wait_for("the deflate", deadline, lambda: actual() == 0)
        figures[FIGURES[3]] = time.monotonic() - t0
        if key == "strato":
            t0 = time.monotonic()
            call(str(sock), "PATCH", "/machine-config", {"vcpu_count": 2})
            wait_for("the second vCPU online", deadline,
                     lambda: "STRATO_CPUS_ONLINE=0-1 " in text())
            figures[FIGURES[4]] = time.monotonic() - t0

        def plugged():
            return call(str(sock), "GET", "/hotplug/memory").get("plugged_size_mib")

        def memtotal_kib():
            lines = [l for l in text().splitlines() if "STRATO_MEMTOTAL_KIB=" in l]
            try:
                return int(lines[-1].split("STRATO_MEMTOTAL_KIB=")[1].split()[0])
            except (IndexError, ValueError):
                return None

        base = wait_for("the guest's MemTotal", deadline, memtotal_kib, 0.1)
        t0 = time.monotonic()
        call(str(sock), "PATCH", "/hotplug/memory", {"requested_size_mib": HOTPLUG_MIB})
        wait_for("the plug", deadline, lambda: plugged() == HOTPLUG_MIB)
        figures[FIGURES[5]] = time.monotonic() - t0
        wait_for("MemTotal to grow", deadline,
                 lambda: (memtotal_kib() or 0) >= base + HOTPLUG_MIB * 1024)
        figures[FIGURES[6]] = time.monotonic() - t0
        wait_for("the guest to touch the plugged memory", deadline,
                 lambda: f"STRATO_GROWFILLED={GROWFILL_MIB}" in text(), 0.1)
        before = rss_mib(proc.pid)
        t0 = time.monotonic()
        call(str(sock), "PATCH", "/hotplug/memory", {"requested_size_mib": 0})
        wait_for("the unplug", deadline, lambda: plugged() == 0)
        figures[FIGURES[7]] = time.monotonic() - t0
        figures[FIGURES[8]] = before - rss_mib(proc.pid)
    except (RuntimeError, OSError) as e:
        error = failure(key, e, scratch, text())
    finally:
        proc.kill()
        proc.wait()
        out.close()
    return figures, error


def _ok(actual):
    """True once the statistics answer with a balloon size."""
    try:
        return actual() is not None
    except RuntimeError:
        return False


def inside_main(args, run=None, figures=None):
    """Runs each VMM of --vmms once (`run`, default the sizing run) and
    prints the report for the host."""
    run, figures = run or one_run, figures or FIGURES
    results = {k: {f: [] for f in figures} for k in args.vmms.split(",")}
    failures = []
    for key in results:
        with tempfile.TemporaryDirectory() as scratch:
            got, error = run(key, args, scratch)
        for fig, value in got.items():
            results[key][fig].append(value)
        if error:
            failures.append(error)
            log(f"{key}: FAILED: {error}")
        else:
            log(f"{key}: ok")
    print(lanebench.JSON_MARK + json.dumps({"results": results, "failures": failures}),
          flush=True)
    return 1 if failures else 0


def host_main(args, script=None, figures=None, title=None, not_offered=None):
    """Builds strato and the images, runs `script` (default this one)
    inside the lane once per run and VMM, and prints the table of
    `figures` under `title`; `not_offered` names figures Firecracker has
    no feature for."""
    script = script or Path(__file__).resolve()
    figures = figures or FIGURES
    title = title or (f"Sizing benchmark: {args.runs} runs, {MEM_MIB} MiB guest, "
                      f"{FILL_MIB} MiB touched")
    not_offered = not_offered if not_offered is not None else {FIGURES[4]}
    strato = Path(args.strato) if args.strato else bench.build_strato()
    images = subprocess.run(["bash", str(REPO / "resources/build.sh"), "all"],
                            check=True, capture_output=True, text=True).stdout
    env = dict(line.split("=", 1) for line in images.splitlines() if "=" in line)
    keys = ["strato"] + (["firecracker"] if args.firecracker else [])
    argv = [sys.executable, str(script), "--inside",
            "--strato", str(strato.resolve()), "--vmlinux", env["VMLINUX"],
            "--initramfs", env["INITRAMFS"], "--timeout", str(args.timeout)]
    if args.firecracker:
        argv += ["--firecracker", str(bench.executable(args.firecracker, "--firecracker"))]
    lane = [sys.executable, str(REPO / "tests/lane/lane.py"), "run",
            "--timeout", str(args.timeout + 300), "--"]
    results = {k: {f: [] for f in figures} for k in keys}
    failures = []
    for i in range(args.runs):
        for key in keys:
            report, failed = lanebench.lane_run_retried(lane + argv + ["--vmms", key], i + 1, key)
            if report is None:
                failures.append(failed)
                continue
            for fig, vals in report["results"].get(key, {}).items():
                results[key][fig] += vals
            failures += [f"run {i + 1} {f}" for f in report["failures"]]
            got = {f: round(v[0], 2) for f, v in report["results"].get(key, {}).items() if v}
            log(f"run {i + 1} {key}: {json.dumps(got)}")
    labels = {"strato": "strato", "firecracker": "Firecracker"}
    print(f"\n{title}; min / median / max (n: runs that produced the figure, when fewer)\n")
    print("| figure | " + " | ".join(labels[k] for k in keys) + " |")
    print("| --- |" + " --- |" * len(keys))
    for fig in figures:
        cells = []
        for key in keys:
            vals = results[key][fig]
            if not vals:
                cells.append("not offered" if fig in not_offered and key == "firecracker"
                             else "failed")
                continue
            n = f" (n={len(vals)})" if len(vals) < args.runs else ""
            cells.append(f"{min(vals):.2f} / **{statistics.median(vals):.2f}** / "
                         f"{max(vals):.2f}{n}")
        print(f"| {fig} | " + " | ".join(cells) + " |")
    for f in failures:
        print(f"\nfailed: {f}")
    return 1 if failures else 0


def parse_args(doc):
    """The command line every lane benchmark of this kind takes."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"))
    ap.add_argument("--strato")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per VMM run")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--vmms", default="strato", help=argparse.SUPPRESS)
    ap.add_argument("--vmlinux", help=argparse.SUPPRESS)
    ap.add_argument("--initramfs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    return args


def main():
    args = parse_args(__doc__)
    return inside_main(args) if args.inside else host_main(args)


if __name__ == "__main__":
    sys.exit(main())
