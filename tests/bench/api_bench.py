#!/usr/bin/env python3
"""API benchmark: the per-instance API process and the daemon.

    python3 tests/bench/api_bench.py --strato PATH --guests DIR
                                     [--firecracker PATH] [--runs N]

Figures (min / median / max, or percentiles):

  * start -> API ready: from just before spawning `strato vm --api-sock S`
    (or `firecracker --api-sock S`) to the first 200 answer to `GET /`,
    polling the socket every 0.2 ms;
  * API latency: round trips of `GET /` and `PUT /machine-config` on one
    keep-alive connection to an unstarted instance, p50 / p99 / max;
  * API process memory: VmHWM (peak RSS) of the per-instance process after
    `InstanceStart` of the `idle` test guest (1 vCPU, 128 MiB) has printed
    its marker, MiB; the guest touches well under 0.2 MiB of its memory;
  * launches per second through the daemon: N concurrent
    `POST /v1/instances` (the `idle` test guest), timed until every
    instance's console shows `idle: ready`, for N = 10 and 20.

Python 3.11 stdlib only; run.py calls it as its `api` section.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


class UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a unix socket, kept alive between requests."""

    def __init__(self, path, timeout=10):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


def request(conn, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if data is not None else {}
    conn.request(method, path, body=data, headers=headers)
    r = conn.getresponse()
    payload = r.read()
    return r.status, payload


def one_shot(sock, method, path, body=None, timeout=10):
    c = UnixConnection(sock, timeout)
    try:
        return request(c, method, path, body)
    finally:
        c.close()


def spawn_api(argv, sock, timeout=10.0, stdout=subprocess.DEVNULL):
    """Spawns argv, returns (process, seconds until GET / answered 200)."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout,
                         stderr=subprocess.DEVNULL)
    deadline = t0 + timeout
    while time.perf_counter() < deadline:
        try:
            status, _ = one_shot(sock, "GET", "/", timeout=1)
            if status == 200:
                return p, time.perf_counter() - t0
        except OSError:
            pass
        if p.poll() is not None:
            break
        time.sleep(0.0002)
    p.kill()
    p.wait()
    return None, None


def stop(p):
    if p and p.poll() is None:
        p.kill()
        p.wait()


def triplet(values, scale=1000.0, fmt="{:.1f}"):
    if not values:
        return "failed"
    v = sorted(values)
    return " / ".join(fmt.format(x * scale) for x in (v[0], statistics.median(v), v[-1]))


def percentiles(values):
    v = sorted(values)
    pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]
    return "{:.0f} / {:.0f} / {:.0f}".format(pick(0.5) * 1e6, pick(0.99) * 1e6, v[-1] * 1e6)


def vmm_argv(kind, binary, sock):
    if kind == "strato":
        return [binary, "vm", "--api-sock", sock, "--id", "bench"]
    return [binary, "--api-sock", sock, "--id", "bench", "--log-path", os.devnull]


def startup(kind, binary, runs, tmp):
    times = []
    for i in range(runs):
        sock = os.path.join(tmp, f"{kind}-{i}.sock")
        p, t = spawn_api(vmm_argv(kind, binary, sock), sock)
        stop(p)
        if t is not None:
            times.append(t)
        try:
            os.unlink(sock)
        except FileNotFoundError:
            pass
    return times


def latency(kind, binary, tmp, n=2000):
    sock = os.path.join(tmp, f"{kind}-lat.sock")
    p, _ = spawn_api(vmm_argv(kind, binary, sock), sock)
    if p is None:
        return None, None
    try:
        c = UnixConnection(sock)
        get, put = [], []
        body = {"vcpu_count": 1, "mem_size_mib": 128}
        for _ in range(n):
            t = time.perf_counter()
            request(c, "GET", "/")
            get.append(time.perf_counter() - t)
            t = time.perf_counter()
            status, _ = request(c, "PUT", "/machine-config", body)
            put.append(time.perf_counter() - t)
            if status != 204:
                raise RuntimeError(f"PUT /machine-config answered {status}")
        c.close()
        return get, put
    finally:
        stop(p)


def proc_status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def booted_rss(kind, binary, guests, tmp, runs):
    """Peak RSS (MiB) of the API process with the idle guest booted by API calls."""
    peaks = []
    for i in range(runs):
        sock = os.path.join(tmp, f"{kind}-rss-{i}.sock")
        out = os.path.join(tmp, f"{kind}-rss-{i}.out")
        t0 = time.perf_counter()
        with open(out, "wb") as stdout:
            p, _ = spawn_api(vmm_argv(kind, binary, sock), sock, stdout=stdout)
        if p is None:
            raise RuntimeError(f"{kind}: the API never answered")
        try:
            calls = [
                ("PUT", "/machine-config", {"vcpu_count": 1, "mem_size_mib": 128}),
                ("PUT", "/boot-source", {"kernel_image_path": str(Path(guests) / "idle.elf"),
                                         "boot_args": "console=ttyS0"}),
                ("PUT", "/actions", {"action_type": "InstanceStart"}),
            ]
            for method, path, body in calls:
                status, payload = one_shot(sock, method, path, body)
                if status != 204:
                    raise RuntimeError(f"{kind}: {method} {path} answered {status} {payload!r}")
            while time.perf_counter() - t0 < 10:
                if b"idle: ready" in Path(out).read_bytes():
                    break
                time.sleep(0.002)
            else:
                raise RuntimeError(f"{kind}: the idle guest never printed its marker")
            time.sleep(0.05)
            peaks.append(proc_status_kib(p.pid, "VmHWM") / 1024)
        finally:
            stop(p)
    return peaks


def launches(strato, guests, n, tmp):
    """Seconds from the first create to every console showing the marker."""
    state = tempfile.mkdtemp(prefix="d", dir=tmp)
    sock = os.path.join(state, "d.sock")
    d = subprocess.Popen([strato, "serve", "--api-sock", sock, "--state-dir", state,
                          "--stop-timeout-ms", "100"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    try:
        for _ in range(5000):
            if os.path.exists(sock):
                break
            time.sleep(0.001)
        kernel = str(Path(guests) / "idle.elf")
        errors = []

        def create(i):
            body = {"id": f"b{i}", "vcpus": 1, "memory_mib": 64, "kernel": kernel}
            try:
                status, payload = one_shot(sock, "POST", "/v1/instances", body, timeout=60)
                if status != 201:
                    errors.append(f"{status} {payload[:200]!r}")
            except OSError as e:
                errors.append(str(e))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=create, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        pending = {f"b{i}" for i in range(n)}
        deadline = t0 + 120
        while pending and time.perf_counter() < deadline and not errors:
            for i in list(pending):
                status, payload = one_shot(sock, "GET", f"/v1/instances/{i}/console")
                if status == 200 and b"idle: ready" in payload:
                    pending.discard(i)
            time.sleep(0.002)
        elapsed = time.perf_counter() - t0
        for i in range(n):
            try:
                one_shot(sock, "POST", f"/v1/instances/b{i}/kill", timeout=30)
                one_shot(sock, "DELETE", f"/v1/instances/b{i}?timeout_ms=100", timeout=30)
            except OSError:
                pass
        if errors or pending:
            return None, (errors or [f"{len(pending)} never printed their marker"])[0]
        return elapsed, None
    finally:
        d.terminate()
        d.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--strato", required=True)
    ap.add_argument("--guests", required=True, help="directory of built test guests")
    ap.add_argument("--firecracker", default=os.environ.get("STRATO_BENCH_FIRECRACKER"))
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    vmms = [("strato", args.strato)]
    if args.firecracker:
        vmms.append(("firecracker", args.firecracker))
    with tempfile.TemporaryDirectory(prefix="strato-api-bench-") as tmp:
        print("\n### API\n")
        print("| figure | " + " | ".join(k for k, _ in vmms) + " |")
        print("| --- |" + " --- |" * len(vmms))
        start = [triplet(startup(k, b, args.runs, tmp)) for k, b in vmms]
        print("| start → API ready (ms, min / median / max) | " + " | ".join(start) + " |")
        lat = [latency(k, b, tmp) for k, b in vmms]
        print("| `GET /` latency (µs, p50 / p99 / max) | "
              + " | ".join(percentiles(g) if g else "failed" for g, _ in lat) + " |")
        print("| `PUT /machine-config` latency (µs, p50 / p99 / max) | "
              + " | ".join(percentiles(p) if p else "failed" for _, p in lat) + " |")
        rss = []
        for k, b in vmms:
            try:
                rss.append(triplet(booted_rss(k, b, args.guests, tmp, min(args.runs, 10)),
                                   scale=1.0, fmt="{:.2f}"))
            except (OSError, RuntimeError) as e:
                rss.append(f"failed: {e}")
        print("| API process peak RSS, idle guest booted by API, 128 MiB (MiB, min / median / max) | "
              + " | ".join(rss) + " |")
        for n in (10, 20):
            t, err = launches(args.strato, args.guests, n, tmp)
            cell = f"{n / t:.1f} /s ({t * 1000:.0f} ms for {n})" if t else f"failed: {err}"
            rest = " | n/a" * (len(vmms) - 1)
            print(f"| launches to first output, {n} concurrent creates (daemon) | {cell}{rest} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
