#!/usr/bin/env python3
"""Writes the hand-made seed inputs of every fuzz target into
tests/fuzz/corpus/<target>/seed-*: one well-formed case per path worth
starting from (a valid request, a full driver init, a PVH kernel ...). The
input formats are described at the top of each target in fuzz_targets/.

Run it after changing a format; the fuzzers grow the corpus from here and
`cargo fuzz cmin` keeps it small."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# virtio split-ring descriptor flags.
NEXT, WRITE = 1, 2
# Rings of queue q (see ring_addrs in src/lib.rs).
def rings(q):
    base = q * 0x400
    return base, base + 0x100, base + 0x200


class Image:
    """A guest memory image: bytes from address 0, grown on demand."""

    def __init__(self):
        self.b = bytearray()

    def put(self, addr, data):
        end = addr + len(data)
        if len(self.b) < end:
            self.b.extend(bytes(end - len(self.b)))
        self.b[addr:end] = data

    def desc(self, q, i, addr, length, flags, nxt=0):
        self.put(rings(q)[0] + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def avail(self, q, heads, flags=0):
        """Makes `heads` available on queue q (index = len(heads))."""
        ring = rings(q)[1]
        self.put(ring, struct.pack("<HH", flags, len(heads)))
        for slot, head in enumerate(heads):
            self.put(ring + 4 + 2 * slot, struct.pack("<H", head))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(bytes(data))


def block_seeds():
    # flags: queue size 16 (4), bit 3 read-only, bit 4 EVENT_IDX.
    def request(kind, sector, data_len, data_flags):
        img = Image()
        img.put(0x1000, struct.pack("<IIQ", kind, 0, sector))
        img.desc(0, 0, 0x1000, 16, NEXT, 1)
        img.desc(0, 1, 0x2000, data_len, data_flags | NEXT, 2)
        img.desc(0, 2, 0x3000, 1, WRITE)
        img.avail(0, [0])
        return img.b

    for name, kind, flags in [("read", 0, WRITE), ("write", 1, 0), ("get-id", 8, WRITE)]:
        write("virtio_block", name, bytes([4, 0]) + request(kind, 2, 1024, flags))
    write("virtio_block", "flush-event-idx", bytes([4 | 0x10, 0]) + request(4, 0, 0, 0))
    write("virtio_block", "write-read-only", bytes([4 | 0x08, 0]) + request(1, 0, 512, 0))
    # Two kicks that each make one more chain available.
    img = Image()
    img.put(0x1000, struct.pack("<IIQ", 0, 0, 0))
    for head in range(0, 6, 3):
        img.desc(0, head, 0x1000, 16, NEXT, head + 1)
        img.desc(0, head + 1, 0x2000 + head * 0x100, 512, WRITE | NEXT, head + 2)
        img.desc(0, head + 2, 0x3000 + head, 1, WRITE)
    img.avail(0, [0, 3])
    img.put(rings(0)[1] + 2, struct.pack("<H", 0))
    write("virtio_block", "kicks", bytes([4, 2, 1, 1]) + img.b)


def net_seeds():
    # flags: both queues 16 entries, bit 6 MRG_RXBUF, bit 7 EVENT_IDX.
    sizes = 4 | 4 << 3
    img = Image()
    img.put(0x1000, bytes(12) + b"\xff" * 6 + b"\x06\x00\x00\x00\x00\x01\x08\x00" + b"payload")
    img.desc(1, 0, 0x1000, 12, NEXT, 1)
    img.desc(1, 1, 0x100c, 21, 0)
    img.avail(1, [0])
    for i in range(4):
        img.desc(0, i, 0x2000 + 0x800 * i, 0x800, WRITE)
    img.avail(0, [0, 1, 2, 3])
    frames = struct.pack("<BHH", 2, 100, 3000)
    write("virtio_net", "tx-rx", bytes([sizes]) + frames + b"\x00" + img.b)
    write("virtio_net", "mrg-rxbuf", bytes([sizes | 0x40]) + frames + b"\x00" + img.b)
    write("virtio_net", "event-idx-kicks",
          bytes([sizes | 0x80]) + frames + bytes([2, 0x81, 0x01]) + img.b)


def console_seeds():
    sizes = 4 | 4 << 3
    img = Image()
    img.put(0x1000, b"hello from the guest\n")
    img.desc(1, 0, 0x1000, 21, 0)
    img.avail(1, [0])
    img.desc(0, 0, 0x2000, 64, WRITE)
    img.desc(0, 1, 0x2100, 64, WRITE)
    img.avail(0, [0, 1])
    host = b"typed on the host\n"
    write("virtio_console", "tx-rx", bytes([sizes]) + struct.pack("<H", len(host)) + host
          + b"\x00" + img.b)
    write("virtio_console", "eof", bytes([sizes | 0x40]) + struct.pack("<H", 3) + b"ls\n"
          + bytes([1, 0x81]) + img.b)
    # A zero-length receive buffer before a real one: it once read as the
    # end of the host input (regression test in console/mod.rs).
    img = Image()
    img.desc(0, 0, 0x2000, 0, WRITE)
    img.desc(0, 1, 0x2100, 64, WRITE)
    img.avail(0, [0, 1])
    write("virtio_console", "zero-length-rx", bytes([sizes]) + struct.pack("<H", 2) + b"hi"
          + b"\x00" + img.b)


def rng_seeds():
    # flags: queue size 16 (4); two writable buffers, then one more kick.
    img = Image()
    img.desc(0, 0, 0x1000, 64, WRITE)
    img.desc(0, 1, 0x2000, 0, WRITE)
    img.desc(0, 2, 0x3000, 16, 0, 0)
    img.avail(0, [0, 1])
    write("virtio_rng", "two-buffers", bytes([4, 1, 1]) + img.b)


def mmio_seeds():
    def rd(off, size=4):
        return bytes([0 | {1: 0, 2: 1, 4: 2, 8: 3}[size] << 2]) + struct.pack("<H", off)

    def wr(off, value, size=4):
        code = {1: 0, 2: 1, 4: 2, 8: 3}[size]
        return bytes([1 | code << 2]) + struct.pack("<H", off) + value.to_bytes(size, "little")

    def notify(q):
        return bytes([2]) + struct.pack("<I", q)

    def poke(addr, data):
        return bytes([3]) + struct.pack("<H", addr) + data.ljust(8, b"\0")

    def init(queues):
        ops = rd(0) + rd(4) + rd(8) + wr(0x70, 0) + wr(0x70, 1) + wr(0x70, 3)
        ops += wr(0x14, 0) + rd(0x10) + wr(0x14, 1) + rd(0x10)
        ops += wr(0x24, 1) + wr(0x20, 1) + wr(0x70, 11) + rd(0x70)
        for q in range(queues):
            desc, avail, used = rings(q)
            ops += wr(0x30, q) + rd(0x34) + wr(0x38, 16)
            ops += wr(0x80, desc) + wr(0x84, 0) + wr(0x90, avail) + wr(0x94, 0)
            ops += wr(0xa0, used) + wr(0xa4, 0) + wr(0x44, 1) + rd(0x44)
        return ops + wr(0x70, 15) + rd(0x70)

    # Block: init, one GET_ID request, notify, ack the interrupt, reset.
    req = poke(0x1000, struct.pack("<II", 8, 0))
    req += poke(rings(0)[0], struct.pack("<QI", 0x1000, 16)) + poke(rings(0)[0] + 12, struct.pack("<HH", NEXT, 1))
    req += poke(rings(0)[0] + 16, struct.pack("<QI", 0x2000, 20)) + poke(rings(0)[0] + 28, struct.pack("<HH", WRITE | NEXT, 2))
    req += poke(rings(0)[0] + 32, struct.pack("<QI", 0x3000, 1)) + poke(rings(0)[0] + 44, struct.pack("<HH", WRITE, 0))
    req += poke(rings(0)[1], struct.pack("<HHH", 0, 1, 0))
    tail = rd(0x60) + wr(0x64, 1) + rd(0x100, 8) + rd(0x108, 4) + rd(0x1fc, 8) + wr(0x70, 0) + rd(0x70)
    write("virtio_mmio", "block", bytes([0]) + init(1) + req + notify(0) + notify(7) + tail)
    # Net: init, one frame to send.
    tx = poke(0x1000, bytes(8)) + poke(0x1008, bytes(4) + b"\xff" * 4)
    d = rings(1)[0]
    tx += poke(d, struct.pack("<QI", 0x1000, 40)) + poke(d + 12, bytes(4))
    tx += poke(rings(1)[1], struct.pack("<HHH", 0, 1, 0))
    write("virtio_mmio", "net", bytes([1]) + init(2) + tx + notify(1) + rd(0x100, 1) + tail)
    # Console: init, host input waiting, one receive buffer.
    rx = poke(rings(0)[0], struct.pack("<QI", 0x2000, 64)) + poke(rings(0)[0] + 12, struct.pack("<HH", WRITE, 0))
    rx += poke(rings(0)[1], struct.pack("<HHH", 0, 1, 0))
    write("virtio_mmio", "console", bytes([2]) + init(2) + rx + notify(0) + tail)
    # Rng: init, one writable buffer.
    write("virtio_mmio", "rng", bytes([3]) + init(1) + rx + notify(0) + tail)
    # Out of order: DRIVER_OK first, features late, queue size refused.
    write("virtio_mmio", "disorder", bytes([0]) + wr(0x70, 15) + wr(0x20, 1) + wr(0x38, 3)
          + wr(0x44, 1) + wr(0x70, 0x80) + rd(0x70) + wr(0x70, 0))


def http_seeds():
    reqs = {
        "get": b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "put-body": b"PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 37\r\n\r\n{\"vcpu_count\": 2, \"mem_size_mib\": 64}",
        "pipelined": b"PUT /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b?x=1 HTTP/1.1\r\n\r\n"
                     b"HEAD /c HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /d HTTP/1.1\r\nConnection: close\r\n\r\n",
        "expect": b"PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
        "lf-only": b"GET /v1/instances HTTP/1.1\nHost: x\n\n",
        "too-large": b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "chunked": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two-lengths": b"PUT / HTTP/1.1\r\nContent-Length: 1\r\ncontent-length: 2\r\n\r\nab",
        "truncated": b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
    }
    # Just over the head limit (16 KiB), and a body of 20 KiB: these also
    # raise libFuzzer's input length limit, which starts at the largest seed.
    reqs["head-limit"] = b"GET / HTTP/1.1\r\nX: " + b"a" * 16384 + b"\r\n\r\n"
    reqs["large-body"] = b"PUT / HTTP/1.1\r\nContent-Length: 20480\r\n\r\n" + b"{" * 20480
    for name, data in reqs.items():
        write("http_request", name, data)


def api_seeds():
    def req(route, body, ident=b""):
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        return bytes([route, len(ident)]) + ident + body

    vm = [
        req(0, {"vcpu_count": 2, "mem_size_mib": 256}),
        req(1, {"mem_size_mib": 512, "smt": False}),
        req(2, {"kernel_image_path": "/proc/self/exe", "boot_args": "console=ttyS0"}),
        req(3, {"drive_id": "rootfs", "path_on_host": "/proc/self/exe", "is_root_device": True,
                "is_read_only": True}, b"rootfs"),
        req(4, {"iface_id": "eth0", "host_dev_name": "lo", "guest_mac": "06:00:ac:10:00:02"}, b"eth0"),
        req(7, b""),
        req(5, {"action_type": "InstanceStart"}),
        req(6, {"state": "Paused"}),
        req(11, b"", b"GET /machine-config"),
    ]
    write("api_bodies", "vm-sequence", b"\xff".join(vm))
    config = {
        "boot-source": {"kernel_image_path": "/k"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "drives": [{"drive_id": "d", "path_on_host": "/d", "is_root_device": False}],
        "network-interfaces": [{"iface_id": "n", "host_dev_name": "tap0"}],
    }
    write("api_bodies", "config-file", req(8, config) + b"\xff" + req(7, b""))
    template = {
        "kvm_capabilities": ["!56", "171"],
        "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0, "modifiers": [
            {"register": "edx", "bitmap": "0bxxxx_0000_0000_0011_xx00_0110_1111_0010"}]}],
        "msr_modifiers": [{"addr": "0x1a0", "bitmap": "0b1" + "x" * 22}],
    }
    write("api_bodies", "cpu-config",
          req(11, template, b"PUT /cpu-config") + b"\xff" + req(7, b"")
          + b"\xff" + req(8, dict(config, **{"cpu-config": template})))
    hotplug = {"total_size_mib": 256, "slot_size_mib": 128, "block_size_mib": 2}
    write("api_bodies", "memory-hotplug", b"\xff".join([
        req(11, hotplug, b"PUT /hotplug/memory"),
        req(11, b"", b"GET /hotplug/memory"),
        req(11, {"requested_size_mib": 128}, b"PATCH /hotplug/memory"),
        req(7, b""),
        req(8, dict(config, **{"memory-hotplug": hotplug})),
    ]))
    vsock = {"guest_cid": 3, "uds_path": "/tmp/v.sock"}
    write("api_bodies", "vsock", b"\xff".join([
        req(11, dict(vsock, vsock_id="vsock0"), b"PUT /vsock"),
        req(7, b""),
        req(8, dict(config, vsock=vsock)),
    ]))
    mmds = {"network_interfaces": ["n"], "version": "V2", "ipv4_address": "169.254.170.2"}
    write("api_bodies", "mmds", b"\xff".join([
        req(11, {"latest": {"meta-data": {"ami-id": "ami-1"}}}, b"PUT /mmds"),
        req(11, {"latest": {"meta-data": {"ami-id": None}}}, b"PATCH /mmds"),
        req(11, b"", b"GET /mmds"),
        req(11, mmds, b"PUT /mmds/config"),
        req(8, dict(config, **{"mmds-config": mmds})),
    ]))
    create = {
        "id": "web-1", "vcpus": 2, "memory_mib": 512, "kernel": "/k", "cmdline": "console=ttyS0",
        "drives": [{"id": "root", "path": "/r", "root": True}],
        "nets": [{"id": "eth0", "tap": "lo", "mac": "06:00:ac:10:00:02"}], "start": False,
    }
    write("api_bodies", "daemon-create", req(9, create))
    write("api_bodies", "daemon-resize", req(10, {"vcpus": 4, "memory_mib": 1024}))
    write("api_bodies", "not-objects", b"\xff".join(
        [req(0, b"[1, 2]"), req(9, b"null"), req(10, b"  7"), req(3, b"{\"drive_id\": 1}", b"x")]))


def elf(machine=62, paddr=0x100000, pvh=True, filesz=16):
    phnum = 2 if pvh else 1
    body_off = 64 + 56 * phnum
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", paddr) if pvh else b""
    code = b"\xf4" * filesz  # hlt
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, machine, 1, paddr, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, body_off + len(note), paddr, paddr, filesz, 0x1000, 0x1000)
    phdrs = load
    if pvh:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, body_off, 0, 0, len(note), len(note), 4)
    return ehdr + phdrs + note + code


def bzimage(xloadflags=1, code32_start=0x100000, setup_sects=1, initrd_max=0x7fffffff):
    img = bytearray((setup_sects + 1) * 512)
    img[0x1f1] = setup_sects
    img[0x1fe:0x200] = struct.pack("<H", 0xaa55)
    img[0x202:0x206] = b"HdrS"
    img[0x206:0x208] = struct.pack("<H", 0x20f)
    img[0x211] = 1  # LOADED_HIGH
    img[0x214:0x218] = struct.pack("<I", code32_start)
    img[0x22c:0x230] = struct.pack("<I", initrd_max)
    img[0x236:0x238] = struct.pack("<H", xloadflags)
    img[0x238:0x23c] = struct.pack("<I", 255)
    return bytes(img) + b"\xf4" * 1024


def kernel_seeds():
    write("kernel_loader", "elf-pvh", elf())
    write("kernel_loader", "elf-64", elf(pvh=False))
    write("kernel_loader", "elf-aarch64", elf(machine=183))
    write("kernel_loader", "elf-outside-ram", elf(paddr=0x7000_0000))
    write("kernel_loader", "bzimage", bzimage())
    write("kernel_loader", "bzimage-32bit", bzimage(xloadflags=0))
    write("kernel_loader", "bzimage-low-initrd-max", bzimage(initrd_max=0x100400))


if __name__ == "__main__":
    block_seeds()
    net_seeds()
    console_seeds()
    rng_seeds()
    mmio_seeds()
    http_seeds()
    api_seeds()
    kernel_seeds()
