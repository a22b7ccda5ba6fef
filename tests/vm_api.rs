//! `strato vm`, the per-instance Firecracker-compatible API, end to end
//! over its unix socket with tiny guests: the request sequence a
//! Firecracker SDK sends, pause and resume, Ctrl-Alt-Del, errors for bad
//! bodies and wrong states, `--config-file` and `--no-api`. Every response
//! is checked against api/openapi/vm.yaml.

mod api;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::{kill, wait_for, Api, Json, Netns};
use strato_tests::{guest, hardware_kvm, linux_image, require_hardware_kvm, strato_bin, Scratch};

// Upper bounds, not expectations: a Linux boot in the emulated lane takes
// tens of seconds and varies with the lane's load.
const LONG: Duration = Duration::from_secs(180);

/// A `strato vm` process, killed on drop.
struct Vm {
    child: Child,
    sock: PathBuf,
    console: PathBuf,
    exit_file: PathBuf,
}

impl Vm {
    /// Starts `strato vm` (inside `netns` if given) with a console log and
    /// an exit file in `dir`, plus `extra` options; waits for the socket
    /// unless `--no-api` is among them.
    fn start(dir: &Path, netns: Option<&Netns>, extra: &[&str]) -> Vm {
        Self::start_with_env(dir, netns, &[], extra)
    }

    /// [`Vm::start`] with `env` added to the process's environment.
    fn start_with_env(
        dir: &Path,
        netns: Option<&Netns>,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Vm {
        let sock = dir.join("vm.sock");
        let console = dir.join("console.log");
        let exit_file = dir.join("exit.json");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(strato_bin());
                c
            }
            None => Command::new(strato_bin()),
        };
        cmd.arg("vm");
        if !extra.contains(&"--no-api") {
            cmd.arg("--api-sock").arg(&sock);
        }
        cmd.args(["--id", "fc-test", "--console-log"])
            .arg(&console)
            .arg("--exit-file")
            .arg(&exit_file)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let child = cmd.spawn().expect("spawn strato vm");
        let mut vm = Vm {
            child,
            sock,
            console,
            exit_file,
        };
        if !extra.contains(&"--no-api") {
            let sock = vm.sock.clone();
            // A guest that ends at once may take the process (and the
            // socket) with it before we look: the callers check the exit.
            wait_for("the VM API socket", LONG, || {
                let exited = matches!(vm.child.try_wait(), Ok(Some(_)));
                (exited || sock.exists()).then_some(())
            });
        }
        vm
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    fn wait_console(&self, marker: &str) -> String {
        wait_for(&format!("{marker:?} on the console"), LONG, || {
            let t = self.console_text();
            t.contains(marker).then_some(t)
        })
    }

    /// Waits for the process to exit: (status, stderr).
    fn wait_exit(&mut self) -> (i32, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(start.elapsed() < LONG, "strato vm did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        (status.code().unwrap_or(-1), err)
    }

    fn exit_record(&self) -> Json {
        let text = std::fs::read_to_string(&self.exit_file).expect("exit file written");
        Json::parse(&text).expect("exit file is JSON")
    }

    fn ticks(&self) -> usize {
        self.console_text()
            .lines()
            .filter(|l| l.starts_with("tick "))
            .count()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn state(api: &Api) -> String {
    api.expect("GET", "/", None, 200).json()["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn firecracker_sdk_sequence_boots_pauses_and_resumes() {
    let dir = Scratch::new("vm-api-sdk");
    let ns = Netns::new("vmapi", &["tap0"]);
    let rootfs = dir.file("rootfs.img", &vec![0u8; 64 * 1024]);
    let mut vm = Vm::start(&dir.0, Some(&ns), &[]);
    let mode = std::fs::metadata(&vm.sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode");
    let api = Api::new(&vm.sock, "vm");
    let ticker = guest("ticker");

    // What the Firecracker Go and Python SDKs send, in order.
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":64,"smt":false,"track_dirty_pages":false}"#),
        204,
    );
    api.expect(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0 period=50"}}"#,
            ticker.display()
        )),
        204,
    );
    api.expect(
        "PUT",
        "/drives/rootfs",
        Some(&format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{rootfs}","is_root_device":true,"is_read_only":false}}"#
        )),
        204,
    );
    api.expect(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}"#),
        204,
    );
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["network-interfaces"][0]["host_dev_name"], "tap0");
    assert_eq!(cfg["machine-config"]["mem_size_mib"].as_u64(), Some(64));
    assert_eq!(state(&api), "Not started");
    api.action("InstanceStart");
    let info = api.expect("GET", "/", None, 200).json();
    assert_eq!(info["state"], "Running");
    assert_eq!(info["id"], "fc-test");
    assert_eq!(info["app_name"], "strato");
    assert!(info["uptime_ms"].as_u64().is_some());
    vm.wait_console("tick 3");

    // Paused: no ticks. Resumed: ticks again.
    api.expect("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), 204);
    assert_eq!(state(&api), "Paused");
    let paused_at = vm.ticks();
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        vm.ticks() <= paused_at + 1,
        "ticks while paused: {} -> {}",
        paused_at,
        vm.ticks()
    );
    let frozen = vm.ticks();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(vm.ticks(), frozen, "no ticks while paused");
    api.expect("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), 204);
    assert_eq!(state(&api), "Running");
    wait_for("ticks after resume", LONG, || {
        (vm.ticks() >= frozen + 3).then_some(())
    });

    // Configuration after the start, and a second start, are refused.
    for (m, p, b) in [
        ("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":64}"#,
        ),
        ("PATCH", "/machine-config", r#"{"vcpu_count":2}"#),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/nonexistent"}"#,
        ),
        (
            "PUT",
            "/drives/data",
            r#"{"drive_id":"data","path_on_host":"/nonexistent","is_root_device":false}"#,
        ),
        (
            "PUT",
            "/network-interfaces/eth1",
            r#"{"iface_id":"eth1","host_dev_name":"tap1"}"#,
        ),
    ] {
        let r = api.expect(m, p, Some(b), 400);
        assert!(!r.fault().is_empty(), "{m} {p}: {}", r.text());
    }
    // The ticker ignores Ctrl-Alt-Del; the VM keeps running.
    api.action("SendCtrlAltDel");
    api.action("FlushMetrics");
    assert_eq!(state(&api), "Running");

    // SIGTERM stops it: exit file, socket removed, status 128+15.
    kill(vm.pid(), libc::SIGTERM);
    let (code, _) = vm.wait_exit();
    assert_eq!(code, 143);
    let rec = vm.exit_record();
    assert_eq!(rec["success"].as_bool(), Some(false));
    assert_eq!(rec["exit_status"].as_i64(), Some(143));
    assert!(
        rec["reason"].as_str().unwrap().contains("signal 15"),
        "{rec:?}"
    );
    assert!(!vm.sock.exists(), "socket removed");
    api.check_schema(&dir.0);
}

#[test]
fn ctrl_alt_del_reaches_the_guest_keyboard() {
    let dir = Scratch::new("vm-api-kbd");
    let (mut vm, api) = start_tiny_guest(&dir.0, "kbd", "", "kbd: ready");
    api.action("SendCtrlAltDel");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert!(
        vm.console_text()
            .contains("kbd: 14 11 e0 71 e0 f0 71 f0 11 f0 14"),
        "{}",
        vm.console_text()
    );
    let rec = vm.exit_record();
    assert_eq!(rec["reason"], "guest reset");
    assert_eq!(rec["success"].as_bool(), Some(true));
    assert_eq!(rec["exit_status"].as_i64(), Some(0));
    assert!(!vm.sock.exists(), "socket removed");
    api.check_schema(&dir.0);
}

/// Boots the tiny guest `name` (1 vCPU, 32 MiB) with `args` on its command
/// line through the API and waits for `marker` on its console.
fn start_tiny_guest(dir: &Path, name: &str, args: &str, marker: &str) -> (Vm, Api) {
    let vm = Vm::start(dir, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":32}"#),
        204,
    );
    api.expect(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path":"{}","boot_args":"{args} timeout=600000"}}"#,
            guest(name).display()
        )),
        204,
    );
    api.action("InstanceStart");
    vm.wait_console(marker);
    (vm, api)
}

/// SendPowerButton raises the GED's interrupt with the power-button bit
/// in its event register; the guest reads it there and powers off through
/// the FADT's sleep control register: "guest powered off", status 0.
#[test]
fn power_button_reaches_the_guest_and_it_powers_off() {
    let dir = Scratch::new("vm-api-pwrb");
    let (mut vm, api) = start_tiny_guest(
        &dir.0,
        "acpi",
        "action=button",
        "acpi: waiting for the power button",
    );
    api.action("SendPowerButton");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert!(
        vm.console_text().contains("acpi: power button\n"),
        "{}",
        vm.console_text()
    );
    let rec = vm.exit_record();
    assert_eq!(rec["reason"], "guest powered off");
    assert_eq!(rec["success"].as_bool(), Some(true));
    assert_eq!(rec["exit_status"].as_i64(), Some(0));
}

/// Shutdown on a guest without ACPI (the kbd guest never unmasks the
/// GED's interrupt): it gets Ctrl-Alt-Del at once, reads it, and the VM
/// ends.
#[test]
fn shutdown_falls_back_to_ctrl_alt_del_without_acpi() {
    let dir = Scratch::new("vm-api-shutdown");
    let (mut vm, api) = start_tiny_guest(&dir.0, "kbd", "", "kbd: ready");
    api.action("Shutdown");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert!(
        vm.console_text()
            .contains("kbd: 14 11 e0 71 e0 f0 71 f0 11 f0 14"),
        "{}",
        vm.console_text()
    );
    assert_eq!(vm.exit_record()["reason"], "guest reset");
}

/// Shutdown on a guest that takes the power button: no Ctrl-Alt-Del.
#[test]
fn shutdown_presses_the_power_button_for_an_acpi_guest() {
    let dir = Scratch::new("vm-api-shutdown-acpi");
    let (mut vm, api) = start_tiny_guest(
        &dir.0,
        "acpi",
        "action=button",
        "acpi: waiting for the power button",
    );
    api.action("Shutdown");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert_eq!(vm.exit_record()["reason"], "guest powered off");
}

/// Boots the project's Linux with its initramfs through the API: 2 vCPUs,
/// 256 MiB, `cmdline`, and a NIC on tap0 when `nic`.
fn boot_linux(api: &Api, cmdline: &str, nic: bool) {
    boot_linux_image(api, ("VMLINUX", "INITRAMFS"), cmdline, nic)
}

/// [`boot_linux`] with the kernel and initramfs of `images` (image keys of
/// `resources/build.sh`).
fn boot_linux_image(api: &Api, images: (&str, &str), cmdline: &str, nic: bool) {
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":2,"mem_size_mib":256}"#),
        204,
    );
    let body = format!(
        r#"{{"kernel_image_path":"{}","initrd_path":"{}","boot_args":"console=ttyS0 reboot=k panic=1 {cmdline}"}}"#,
        linux_image(images.0),
        linux_image(images.1)
    );
    api.expect("PUT", "/boot-source", Some(&body), 204);
    if nic {
        api.expect(
            "PUT",
            "/network-interfaces/eth0",
            Some(r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}"#),
            204,
        );
    }
    api.action("InstanceStart");
}

/// SendCtrlAltDel on a running Linux: the keyboard's Ctrl-Alt-Del reaches
/// busybox init, which runs its ctrlaltdel action and reboots cleanly.
#[test]
#[ignore = hardware_kvm!()]
fn ctrl_alt_del_makes_linux_init_reboot() {
    require_hardware_kvm();
    let dir = Scratch::new("vm-api-linux-cad");
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    boot_linux(&api, "strato_noreboot", false);
    // The keyboard must be up before the keys can mean anything: init's
    // last line comes after the i8042 driver probed.
    vm.wait_console("STRATO_INIT_DONE");
    api.action("SendCtrlAltDel");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    let console = vm.console_text();
    assert!(console.contains("STRATO_CTRLALTDEL"), "{console}");
    assert!(console.contains("reboot: Restarting system"), "{console}");
    assert_eq!(vm.exit_record()["reason"], "guest reset");
}

/// The power button on a running Linux with ACPI: the GED's interrupt
/// reaches the kernel's button driver, busybox acpid runs init's power
/// action, and the kernel powers off through the FADT's sleep register:
/// "guest powered off", status 0. The same for the daemon-style
/// `Shutdown`, and for Debian's stock kernel.
#[test]
#[ignore = hardware_kvm!()]
fn power_button_powers_linux_off() {
    require_hardware_kvm();
    for (images, action) in [
        (("VMLINUX", "INITRAMFS"), "SendPowerButton"),
        (("VMLINUX", "INITRAMFS"), "Shutdown"),
        (("CLOUD_KERNEL", "CLOUD_INITRAMFS"), "Shutdown"),
    ] {
        let dir = Scratch::new("vm-api-linux-pwrb");
        let mut vm = Vm::start(&dir.0, None, &[]);
        let api = Api::new(&vm.sock, "vm");
        boot_linux_image(&api, images, "strato_noreboot", false);
        vm.wait_console("STRATO_INIT_DONE");
        api.action(action);
        let (code, err) = vm.wait_exit();
        let console = vm.console_text();
        assert_eq!(code, 0, "{images:?} {action}: {err}\n{console}");
        assert!(console.contains("STRATO_POWER_BUTTON"), "{console}");
        assert!(console.contains("reboot: Power down"), "{console}");
        assert_eq!(vm.exit_record()["reason"], "guest powered off");
    }
}

/// `Shutdown` on a Linux booted with `acpi=off`: nothing takes the power
/// button, so Ctrl-Alt-Del follows and busybox init reboots.
#[test]
#[ignore = hardware_kvm!()]
fn shutdown_of_linux_without_acpi_falls_back_to_ctrl_alt_del() {
    require_hardware_kvm();
    let dir = Scratch::new("vm-api-linux-noacpi");
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    boot_linux(&api, "acpi=off strato_noreboot", false);
    vm.wait_console("STRATO_INIT_DONE");
    api.action("Shutdown");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    let console = vm.console_text();
    assert!(console.contains("STRATO_CTRLALTDEL"), "{console}");
    assert!(!console.contains("STRATO_POWER_BUTTON"), "{console}");
    assert_eq!(vm.exit_record()["reason"], "guest reset");
}

/// Seconds since the epoch on the host.
fn host_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// Pause and resume of a running Linux: nothing runs while paused, and
/// after resume the guest's clock still agrees with the host's and its TCP
/// connection (open across the pause) goes on carrying data.
#[test]
#[ignore = hardware_kvm!()]
fn pause_resume_keeps_linux_clock_and_tcp_connection() {
    require_hardware_kvm();
    let dir = Scratch::new("vm-api-linux-pause");
    let ns = Netns::new("vmapi-pause", &["tap0"]);
    ns.exec(&["ip", "addr", "add", "172.31.3.1/24", "dev", "tap0"]);
    // The host end: one connection; each line the guest sends (its clock)
    // is passed on with the host's clock at arrival.
    let (tx, ticks) = std::sync::mpsc::channel::<(i64, i64)>();
    let listener = ns.run(|| std::net::TcpListener::bind("172.31.3.1:7000"));
    let listener = listener.join().unwrap().expect("listen in the namespace");
    std::thread::spawn(move || {
        use std::io::BufRead;
        let Ok((conn, _)) = listener.accept() else {
            return;
        };
        for line in std::io::BufReader::new(conn).lines() {
            let Ok(line) = line else { break };
            if let Ok(guest) = line.trim().parse::<i64>() {
                if tx.send((guest, host_now())).is_err() {
                    break;
                }
            }
        }
    });
    let mut vm = Vm::start(&dir.0, Some(&ns), &[]);
    let api = Api::new(&vm.sock, "vm");
    boot_linux(
        &api,
        "ip=172.31.3.2::172.31.3.1:255.255.255.0::eth0:off strato_ticks=172.31.3.1:7000 strato_noreboot",
        true,
    );
    let next = |what: &str| {
        ticks
            .recv_timeout(LONG)
            .unwrap_or_else(|_| panic!("no clock line {what}; console:\n{}", vm.console_text()))
    };
    // The guest's ticker writes its first lines before its connection is
    // up, so they arrive late: the offset is the best of a few lines.
    let before: Vec<(i64, i64)> = (0..4).map(|_| next("before the pause")).collect();
    let g0 = before.last().unwrap().0;
    let offset = before.iter().map(|(g, h)| g - h).max().unwrap();
    assert!(
        offset.abs() <= 2,
        "the guest's clock is {offset} s off the host's ({before:?})"
    );

    api.expect("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), 204);
    // A line already in flight may still arrive; then nothing.
    while ticks.recv_timeout(Duration::from_millis(1500)).is_ok() {}
    assert!(
        ticks.recv_timeout(Duration::from_secs(3)).is_err(),
        "the guest ran while paused"
    );
    api.expect("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), 204);
    let mut last = g0;
    for _ in 0..3 {
        let (g, h) = next("after the resume");
        assert!(g >= last, "the guest's clock went back: {last} -> {g}");
        assert!(
            (g - h - offset).abs() <= 2,
            "after the resume the guest's clock is {} s off the host's (was {offset})",
            g - h
        );
        last = g;
    }
    api.action("SendCtrlAltDel");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
}

#[test]
fn bad_requests_and_wrong_states_are_refused() {
    let dir = Scratch::new("vm-api-bad");
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    let idle = guest("idle");
    let junk = dir.file("junk.bin", &[0x5a; 4096]);

    let info = api.expect("GET", "/", None, 200).json();
    assert_eq!(info["state"], "Not started");
    assert!(info["boot_time_us"].is_null() && info["uptime_ms"].is_null());
    let v = api.expect("GET", "/version", None, 200).json();
    assert!(v["firecracker_version"].as_str().is_some());
    let m = api.expect("GET", "/machine-config", None, 200).json();
    assert_eq!(m["vcpu_count"].as_u64(), Some(1));
    assert_eq!(m["smt"].as_bool(), Some(false));
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":2,"mem_size_mib":64}"#),
        204,
    );
    api.expect(
        "PATCH",
        "/machine-config",
        Some(r#"{"mem_size_mib":48}"#),
        204,
    );
    let m = api.expect("GET", "/machine-config", None, 200).json();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(2), Some(48))
    );

    let bad: &[(&str, &str, String, &str)] = &[
        ("PUT", "/machine-config", "{".into(), "invalid request body"),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64,"cpu_template":"T2"}"#.into(),
            "unknown field",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":"one","mem_size_mib":64}"#.into(),
            "invalid type",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":0,"mem_size_mib":64}"#.into(),
            "vcpu_count",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":8}"#.into(),
            "mem_size_mib",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64,"smt":true}"#.into(),
            "smt",
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"vcpu_count":300}"#.into(),
            "vcpu_count",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/nonexistent/k"}"#.into(),
            "/nonexistent/k",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"boot_args":"x"}"#.into(),
            "kernel_image_path",
        ),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path":"{}","bogus":1}}"#, idle.display()),
            "unknown field",
        ),
        (
            "PUT",
            "/drives/rootfs",
            format!(r#"{{"drive_id":"other","path_on_host":"{junk}","is_root_device":true}}"#),
            "does not match",
        ),
        (
            "PUT",
            "/drives/rootfs",
            r#"{"drive_id":"rootfs","path_on_host":"/nonexistent","is_root_device":true}"#.into(),
            "/nonexistent",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"zz"}"#.into(),
            "MAC",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth9","host_dev_name":"tap0"}"#.into(),
            "does not match",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"Reboot"}"#.into(),
            "action_type",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"InstanceStart"}"#.into(),
            "kernel",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#.into(),
            "not running",
        ),
        (
            "PATCH",
            "/vm",
            r#"{"state":"Paused"}"#.into(),
            "not running",
        ),
        ("PATCH", "/vm", r#"{"state":"Sleeping"}"#.into(), ""),
        ("GET", "/nope", String::new(), "Invalid request"),
        (
            "DELETE",
            "/machine-config",
            String::new(),
            "Invalid request",
        ),
    ];
    for (m, p, b, needle) in bad {
        let body = (!b.is_empty()).then_some(b.as_str());
        let r = api.expect(m, p, body, 400);
        assert!(r.fault().contains(needle), "{m} {p} {b}: {}", r.fault());
    }
    // Over 64 KiB.
    let huge = format!(
        r#"{{"kernel_image_path":"{}","boot_args":"{}"}}"#,
        idle.display(),
        "x".repeat(70_000)
    );
    api.expect("PUT", "/boot-source", Some(&huge), 413);

    // A file that is not a kernel fails at InstanceStart; the VM is still
    // not started and can be fixed.
    api.expect(
        "PUT",
        "/boot-source",
        Some(&format!(r#"{{"kernel_image_path":"{junk}"}}"#)),
        204,
    );
    let r = api.expect(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        400,
    );
    assert!(r.fault().contains("not a kernel"), "{}", r.fault());
    assert_eq!(state(&api), "Not started");
    api.expect(
        "PUT",
        "/boot-source",
        Some(&format!(r#"{{"kernel_image_path":"{}"}}"#, idle.display())),
        204,
    );
    api.action("InstanceStart");
    assert_eq!(state(&api), "Running");
    vm.wait_console("idle: ready");
    api.expect(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        400,
    );
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":64}"#),
        400,
    );
    api.expect("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), 204);
    kill(vm.pid(), libc::SIGINT);
    assert_eq!(vm.wait_exit().0, 130);
    api.check_schema(&dir.0);
}

/// Hostile clients neither crash the VMM nor hold up its API, and a JSON
/// array where the spec wants an object is refused, not read as the
/// fields in order.
#[test]
fn hostile_http_clients_are_refused_and_block_nobody() {
    let dir = Scratch::new("vm-api-hostile");
    let vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api::hostile::check(&vm.sock, vm.pid(), "/", 16);

    for (method, path, body) in [
        ("PUT", "/machine-config", "[2,256]"),
        ("PATCH", "/machine-config", " [2]"),
        ("PUT", "/actions", r#"["InstanceStart"]"#),
        ("PUT", "/boot-source", r#""x""#),
    ] {
        api.expect_fault(method, path, body, 400, "expected a JSON object");
    }
    let m = api.expect("GET", "/machine-config", None, 200).json();
    assert_eq!(
        (m["vcpu_count"].as_u64(), m["mem_size_mib"].as_u64()),
        (Some(1), Some(128)),
        "an array changed the machine configuration"
    );
    api.check_schema(&dir.0);
}

#[test]
fn config_file_boots_without_api_calls() {
    let dir = Scratch::new("vm-api-config");
    let config = |name: &str| {
        format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32}}}}"#,
            guest(name).display()
        )
    };

    // With the API: the VM runs at once and is controllable.
    let run1 = dir.0.join("run1");
    std::fs::create_dir_all(&run1).unwrap();
    let idle_cfg = dir.file("idle.json", config("idle").as_bytes());
    let mut vm = Vm::start(&run1, None, &["--config-file", &idle_cfg]);
    let api = Api::new(&vm.sock, "vm");
    assert_eq!(state(&api), "Running");
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    assert_eq!(cfg["machine-config"]["mem_size_mib"].as_u64(), Some(32));
    vm.wait_console("idle: ready");
    api.expect("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), 204);
    kill(vm.pid(), libc::SIGTERM);
    assert_eq!(vm.wait_exit().0, 143);
    api.check_schema(&dir.0);

    // A guest that resets: the process ends by itself, status 0.
    let run2 = dir.0.join("run2");
    std::fs::create_dir_all(&run2).unwrap();
    let hello_cfg = dir.file("hello.json", config("hello").as_bytes());
    let mut vm = Vm::start(&run2, None, &["--config-file", &hello_cfg]);
    assert_eq!(vm.wait_exit().0, 0);
    assert!(vm.console_text().contains("Hello from strato test guest"));
    assert_eq!(vm.exit_record()["reason"], "guest reset");
    assert!(!vm.sock.exists());

    // --no-api: no socket at all.
    let run3 = dir.0.join("run3");
    std::fs::create_dir_all(&run3).unwrap();
    let mut vm = Vm::start(&run3, None, &["--config-file", &hello_cfg, "--no-api"]);
    assert_eq!(vm.wait_exit().0, 0);
    assert!(vm.console_text().contains("Hello from strato test guest"));
    assert_eq!(vm.exit_record()["success"].as_bool(), Some(true));
    assert!(!run3.join("vm.sock").exists());

    // A bad config file is a VMM error (1) with a message; --no-api
    // without a config file is a usage error (2).
    let bad = dir.file(
        "bad.json",
        br#"{"machine-config":{"vcpu_count":1,"mem_size_mib":32},"bogus":1}"#,
    );
    let out = Command::new(strato_bin())
        .args(["vm", "--no-api", "--config-file", &bad])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bogus"));
    let out = Command::new(strato_bin())
        .args(["vm", "--no-api"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_forbidden_system_call_on_an_api_thread_kills_the_vmm_with_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    let dir = Scratch::new("vm-api-seccomp");
    let cfg = dir.file(
        "idle.json",
        format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32}}}}"#,
            guest("idle").display()
        )
        .as_bytes(),
    );
    // The self-test makes the API thread that serves the first request
    // after the start open an IPv4 socket, which its filter forbids.
    let probe = [("STRATO_SECCOMP_PROBE", "api")];
    for (run, filters) in [("on", true), ("off", false)] {
        let run_dir = dir.0.join(run);
        std::fs::create_dir_all(&run_dir).unwrap();
        let mut extra = vec!["--config-file", &cfg];
        if !filters {
            extra.push("--no-seccomp");
        }
        let mut vm = Vm::start_with_env(&run_dir, None, &probe, &extra);
        vm.wait_console("idle: ready");
        let api = Api::new(&vm.sock, "vm");
        let answer = api::raw_request(&vm.sock, "GET", "/", None, Duration::from_secs(10));
        if filters {
            assert!(answer.is_err(), "the API answered: {answer:?}");
            let status = vm.child.wait().unwrap();
            assert_eq!(status.signal(), Some(libc::SIGSYS), "{status:?}");
            // Killed: no exit record.
            assert!(!vm.exit_file.exists());
        } else {
            assert_eq!(answer.map(|r| r.status).ok(), Some(200));
            assert_eq!(state(&api), "Running");
            kill(vm.pid(), libc::SIGTERM);
            assert_eq!(vm.wait_exit().0, 143);
        }
    }
}
