#!/usr/bin/env python3
"""vsock benchmark: throughput and latency of AF_VSOCK streams between a
running Linux guest and host programs, through each VMM's hybrid vsock
(unix sockets), for strato and Firecracker in the same x86 lane run.

    python3 tests/bench/vsock.py [--runs N] [--firecracker PATH] [--strato PATH]

Runs like tests/bench/sizing.py (which it builds on): strato built
(release), each run of each VMM in a lane VM of its own, VMMs alternating.
Each VMM gets the same Firecracker API calls: 2 vCPUs, 256 MiB, a vsock
device (`PUT /vsock`, guest CID 3, `uds_path` in the run's scratch
directory), the project kernel and initramfs, whose init starts the
guest's `strato-vsock` (resources/initramfs/vsock.c): an echo server on
port 5000 and a sender of 64 MiB to the host's port 6000. Figures:

  guest -> host     64 MiB from the guest to a host program listening on
                    `<uds_path>_6000`: MiB/s from its accept to the end
  round trip        a host program connected to port 5000 (CONNECT 5000)
                    sends 1 byte and waits for the echo, 2000 times: the
                    median in microseconds
  echo              the same connection carries 64 MiB to the guest and
                    back at once: MiB/s of the 64 MiB

The lane emulates its CPU (QEMU TCG), so absolute figures are far below a
real host's: only the ratios between VMMs in one run mean anything.
"""

import socket
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sizing  # noqa: E402  (the lane benchmark's machinery)

MIB = 64
FIGURES = [
    f"guest → host, {MIB} MiB (MiB/s)",
    "round trip host → guest → host, 1 byte (µs, median of 2000)",
    f"echo host → guest → host, {MIB} MiB (MiB/s)",
]


def read_line(s):
    line = b""
    while not line.endswith(b"\n"):
        b = s.recv(1)
        if not b:
            raise RuntimeError(f"the connection ended after {line!r}")
        line += b
    return line.decode(errors="replace").strip()


def drain(s, most=None):
    """Reads `s` to its end, or until `most` bytes came; returns how many
    came."""
    buf = bytearray(1 << 20)
    total = 0
    while most is None or total < most:
        n = s.recv_into(buf)
        if n == 0:
            break
        total += n
    return total


def one_run(key, args, scratch):
    """Boots one VMM with a vsock device and times the guest's streams;
    returns ({figure: value}, error or None)."""
    scratch = Path(scratch)
    uds = scratch / "v.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{uds}_6000")
    listener.listen(1)
    proc, sock, console, out = sizing.spawn_vmm(key, args, scratch)
    figures, error = {}, None
    deadline = time.monotonic() + args.timeout
    text = sizing.console_reader(console)

    try:
        sizing.wait_for("the API socket", deadline, sock.exists)
        call = sizing.call
        call(str(sock), "PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
        call(str(sock), "PUT", "/vsock", {"guest_cid": 3, "uds_path": str(uds)})
        call(str(sock), "PUT", "/boot-source", {
            "kernel_image_path": args.vmlinux, "initrd_path": args.initramfs,
            "boot_args": "console=ttyS0 reboot=k panic=1 quiet strato_noreboot "
                         f"strato_vsock_echo=5000 strato_vsock_send=6000:{MIB}"})
        call(str(sock), "PUT", "/actions", {"action_type": "InstanceStart"})

        sizing.wait_for("the guest's echo server", deadline,
                        lambda: "STRATO_VSOCK_ECHO_READY=5000" in text(), 0.1)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(args.timeout)
        s.connect(str(uds))
        s.sendall(b"CONNECT 5000\n")
        ok = read_line(s)
        if not ok.startswith("OK "):
            raise RuntimeError(f"CONNECT 5000 was answered {ok!r}")
        rtts = []
        for _ in range(2000):
            t = time.monotonic()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError("the echo differs")
            rtts.append(time.monotonic() - t)
        figures[FIGURES[1]] = statistics.median(rtts) * 1e6

        data = bytes(1 << 20)

        def send():
            for _ in range(MIB):
                s.sendall(data)

        # All of it back, counted rather than read to the end: the sender
        # does not shut its side, which Firecracker takes for a close of
        # the whole connection (the echo's last few hundred KiB were lost
        # that way).
        writer = threading.Thread(target=send)
        t0 = time.monotonic()
        writer.start()
        back = drain(s, MIB << 20)
        elapsed = time.monotonic() - t0
        writer.join()
        if back != MIB << 20:
            raise RuntimeError(f"{back} bytes came back, not {MIB << 20}")
        figures[FIGURES[2]] = MIB / elapsed
        s.close()

        # The guest's sender has been waiting in the listener's queue (or
        # its data in the sockets' buffers, a few hundred KiB of 64 MiB).
        # Connected at the guest's boot, so it is there by now.
        listener.settimeout(30)
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            raise RuntimeError("the guest's connection to the host's port 6000 never came")
        conn.settimeout(args.timeout)
        t0 = time.monotonic()
        got = drain(conn)
        elapsed = time.monotonic() - t0
        if got != MIB << 20:
            raise RuntimeError(f"the guest sent {got} bytes, not {MIB << 20}")
        conn.sendall(f"OK {got}\n".encode())
        conn.close()
        figures[FIGURES[0]] = MIB / elapsed

    except (RuntimeError, OSError) as e:
        error = sizing.failure(key, e, scratch, text())
    finally:
        listener.close()
        proc.kill()
        proc.wait()
        out.close()
    return figures, error


def main():
    args = sizing.parse_args(__doc__)
    if args.inside:
        return sizing.inside_main(args, one_run, FIGURES)
    return sizing.host_main(args, Path(__file__).resolve(), FIGURES,
                            f"vsock benchmark: {args.runs} runs, 2 vCPUs, 256 MiB guest",
                            set())


if __name__ == "__main__":
    sys.exit(main())
