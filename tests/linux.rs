//! Linux, built by `resources/build.sh`, through strato's serial console.
//!
//! On software KVM (kvm_pvm) Linux runs its kernel code in KVM's
//! instruction emulator and cannot run user space; the tests here check
//! what the kernel reaches there (early boot, device probing, the ext4
//! root). The full boot to user space runs where KVM is hardware-backed and
//! says plainly when it cannot run.

use std::time::Duration;

use std::path::Path;

use strato_tests::{
    boot_until, boot_until_cmd, linux_images, not_run, random_bytes, software_kvm, strato_bin,
    Netns, Scratch,
};

/// Kernel parameters that get Linux furthest on software KVM (see
/// docs/platforms.md); harmless on hardware.
const SOFT_KVM_PARAMS: &str = "noxsave clearcpuid=popcnt,smap no_int3_selftest maxcpus=1";
const DEADLINE: Duration = Duration::from_secs(300);

fn image(key: &str) -> String {
    linux_images()
        .get(key)
        .unwrap_or_else(|| panic!("resources/build.sh gave no {key}"))
        .to_str()
        .unwrap()
        .to_string()
}

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

/// True, after saying so, when `test` cannot run here: Linux user space
/// needs hardware KVM.
fn user_space_unavailable(test: &str) -> bool {
    let soft = software_kvm();
    if soft {
        not_run(
            test,
            "/dev/kvm is software virtualization (kvm_pvm), where Linux user space \
             cannot run; this test runs on hardware KVM",
        );
    }
    soft
}

/// Boots to user space and back out: init prints its marker, writes the
/// boot timer and reboots, which ends strato with status 0.
#[test]
fn linux_boots_to_user_space() {
    if user_space_unavailable("linux_boots_to_user_space") {
        return;
    }
    let r = strato_tests::strato(
        &[
            "--log-level",
            "info",
            "run",
            "--no-stdin",
            "--kernel",
            &image("VMLINUX"),
            "--initrd",
            &image("INITRAMFS"),
            "--vcpus",
            "2",
            "--memory",
            "256",
            "--cmdline",
            "console=ttyS0 reboot=k panic=1",
        ],
        None,
        DEADLINE,
    );
    r.assert_ok();
    assert!(r.stdout.contains("STRATO_INIT_OK"), "{r:#?}");
    assert!(r.stdout.contains("STRATO_NPROC=2"), "{r:#?}");
    assert!(r.stderr.contains("guest boot time:"), "{r:#?}");
}

/// Boots the ext4 root disk to user space over virtio-blk with a NIC: init
/// sees vda and eth0, then reboots.
#[test]
fn linux_boots_from_an_ext4_root_to_user_space() {
    if user_space_unavailable("linux_boots_from_an_ext4_root_to_user_space") {
        return;
    }
    let (_dir, _ns, args) = root_disk_vm(
        "linux-full",
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw",
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = strato_tests::strato_cmd(Path::new("ip"), &args, None, DEADLINE);
    r.assert_ok();
    assert!(r.stdout.contains("STRATO_INIT_OK"), "{r:#?}");
    assert!(r.stdout.contains(" vda\n"), "{r:#?}");
    assert!(
        r.stdout.contains("STRATO_NET=") && r.stdout.contains("eth0"),
        "{r:#?}"
    );
}

/// Host end of the TCP test, on a thread in the VM's network namespace:
/// receives everything the guest sends to `HOST_IP:TCP_PORT`, then sends
/// `payload` to the guest's connection on `TCP_PORT + 1`. `ready` is sent
/// once both ports listen.
fn tcp_peer(payload: Vec<u8>, ready: std::sync::mpsc::Sender<()>) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    let listen = |port: u16| -> std::io::Result<TcpListener> {
        let l = TcpListener::bind((HOST_IP, port))?;
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let (from_guest, to_guest) = (listen(TCP_PORT)?, listen(TCP_PORT + 1)?);
    let _ = ready.send(());
    let accept = |l: &TcpListener| -> std::io::Result<std::net::TcpStream> {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(Duration::from_secs(60)))?;
                    s.set_write_timeout(Some(Duration::from_secs(60)))?;
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(e),
            }
        }
    };
    let mut received = Vec::new();
    accept(&from_guest)?.read_to_end(&mut received)?;
    let mut s = accept(&to_guest)?;
    s.write_all(&payload)?;
    s.shutdown(std::net::Shutdown::Write)?;
    Ok(received)
}

const HOST_IP: &str = "172.31.0.1";
const TCP_PORT: u16 = 5555;

/// TCP both ways over virtio-net (with the checksum and segmentation
/// offloads Linux negotiates): the guest's init sends its second disk to a
/// listener in the test's namespace and writes what the host sends back onto
/// its third disk; both ends compare bytes.
#[test]
fn linux_transfers_data_over_tcp() {
    if user_space_unavailable("linux_transfers_data_over_tcp") {
        return;
    }
    const LEN: usize = 4 << 20;
    let from_guest = random_bytes(LEN, 31);
    let to_guest = random_bytes(LEN, 32);
    let cmdline = format!(
        "console=ttyS0 reboot=k panic=1 root=/dev/vda rw \
         ip=172.31.0.2::{HOST_IP}:255.255.255.0::eth0:off strato_tcp={HOST_IP}:{TCP_PORT}"
    );
    let (dir, ns, mut args) = root_disk_vm("linux-tcp", &cmdline);
    let src = dir.file("src.img", &from_guest);
    let dst = dir.file("dst.img", &vec![0; LEN]);
    args.extend([
        "--drive".to_string(),
        format!("path={src},readonly=on"),
        "--drive".to_string(),
        format!("path={dst}"),
    ]);
    ns.exec(&["ip", "addr", "add", &format!("{HOST_IP}/24"), "dev", "tap0"]);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let payload = to_guest.clone();
    let host = ns.run(move || tcp_peer(payload, ready_tx));
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the host end never listened");

    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let r = strato_tests::strato_cmd(Path::new("ip"), &args, None, DEADLINE);
    r.assert_ok();
    assert!(r.stdout.contains("STRATO_TCP_SENT"), "{r:#?}");
    assert!(r.stdout.contains("STRATO_TCP_RECEIVED"), "{r:#?}");
    let received = host.join().unwrap().expect("host end of the TCP test");
    assert!(
        received == from_guest,
        "the host received {} bytes, not the guest's disk",
        received.len()
    );
    assert!(
        std::fs::read(&dst).unwrap() == to_guest,
        "the guest's disk does not hold what the host sent"
    );
}
