//! Linux, built by `resources/build.sh`, through strato's serial console:
//! what the kernel reaches on any KVM, software KVM (kvm_pvm) included
//! (early boot, device probing, the ext4 root). User space, which needs
//! hardware-style KVM, is tested in `tests/linux_user.rs`.

use std::time::Duration;

use std::path::Path;

use strato_tests::{boot_until, boot_until_cmd, linux_image as image, strato_bin, Netns, Scratch};

/// Kernel parameters that get Linux furthest on software KVM (see
/// docs/platforms.md); harmless on hardware.
const SOFT_KVM_PARAMS: &str = "noxsave clearcpuid=popcnt,smap no_int3_selftest maxcpus=1";
const DEADLINE: Duration = Duration::from_secs(300);

/// Boots `kernel` until `smpboot: Allowing` and checks the early log.
fn early_boot(kernel: &str) {
    let cmdline = "console=ttyS0 earlycon=uart8250,io,0x3f8 reboot=k panic=0 strato.test=early";
    let (out, seen, err) = boot_until(
        &[
            "run",
            "--no-stdin",
            "--kernel",
            kernel,
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--cmdline",
            cmdline,
        ],
        "smpboot: Allowing",
        DEADLINE,
    );
    assert!(seen, "no smpboot line; stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("Linux version 6.1."), "{out}");
    assert!(out.contains(&format!("Command line: {cmdline}\n")), "{out}");
    for e820 in [
        "BIOS-e820: [mem 0x0000000000000000-0x000000000009fbff] usable",
        "BIOS-e820: [mem 0x000000000009fc00-0x00000000000fffff] reserved",
        "BIOS-e820: [mem 0x0000000000100000-0x000000000fffffff] usable",
    ] {
        assert!(out.contains(e820), "missing {e820}: {out}");
    }
    assert!(out.contains("smpboot: Allowing 2 CPUs"), "{out}");
}

#[test]
fn linux_early_boot_vmlinux_pvh() {
    early_boot(&image("VMLINUX"));
}

#[test]
fn linux_early_boot_bzimage() {
    early_boot(&image("BZIMAGE"));
}

/// A VM with a copy of the ext4 root disk and a NIC on a tap in a fresh
/// network namespace: the scratch dir and namespace (kept alive by the
/// caller) and the `ip netns exec ... strato run` arguments.
fn root_disk_vm(tag: &str, cmdline: &str) -> (Scratch, Netns, Vec<String>) {
    let dir = Scratch::new(tag);
    let root = dir.path("rootfs.ext4");
    std::fs::copy(image("ROOTFS"), &root).unwrap();
    let ns = Netns::new(tag, &["tap0"]);
    let strato = strato_bin();
    let args = [
        "netns",
        "exec",
        &ns.name,
        strato.to_str().unwrap(),
        "run",
        "--no-stdin",
        "--kernel",
        &image("VMLINUX"),
        "--vcpus",
        "2",
        "--memory",
        "256",
        "--cmdline",
        cmdline,
        "--drive",
        &format!("path={root}"),
        "--net",
        "tap=tap0,mac=06:00:ac:10:00:02",
    ]
    .map(String::from)
    .to_vec();
    (dir, ns, args)
}

#[test]
fn linux_finds_its_devices_and_mounts_an_ext4_root() {
    // A static address: the kernel names eth0 without sending anything.
    let cmdline = format!(
        "console=ttyS0 earlycon=uart8250,io,0x3f8 reboot=k panic=0 {SOFT_KVM_PARAMS} \
         root=/dev/vda rw ip=172.31.0.2::172.31.0.1:255.255.255.0::eth0:off"
    );
    let (_dir, _ns, args) = root_disk_vm("linux-root", &cmdline);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, seen, err) = boot_until_cmd(
        Path::new("ip"),
        &args,
        "Run /sbin/init as init process",
        DEADLINE,
        libc::SIGTERM,
    );
    assert!(seen, "init never ran; stdout:\n{out}\nstderr:\n{err}");
    for line in [
        "virtio-mmio: Registering device virtio-mmio.0 at 0xd0001000-0xd0001fff, IRQ 5.",
        "virtio-mmio: Registering device virtio-mmio.1 at 0xd0002000-0xd0002fff, IRQ 6.",
        "virtio_blk virtio0: [vda] 131072 512-byte logical blocks (67.1 MB/64.0 MiB)",
        "device=eth0, hwaddr=06:00:ac:10:00:02, ipaddr=172.31.0.2",
        "input: AT Raw Set 2 keyboard",
        "EXT4-fs (vda): mounted filesystem",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
}
