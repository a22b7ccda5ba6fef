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
use strato_tests::{
    guest, hardware_kvm, kill_and_reap, linux_image, mem_total_kib, require_hardware_kvm,
    strato_bin, vmm_report, Scratch,
};

// Upper bounds, not expectations: a Linux boot in the emulated lane takes
// tens of seconds and varies with the lane's load.
const LONG: Duration = Duration::from_secs(180);

/// A `strato vm` process, killed on drop.
struct Vm {
    child: Child,
    sock: PathBuf,
    console: PathBuf,
    exit_file: PathBuf,
    stderr: PathBuf,
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
        // Files, not pipes: a pipe nobody reads while the VMM runs would
        // block its logging once full.
        let stderr = dir.join("stderr");
        let file = |p: &Path| std::fs::File::create(p).expect("output file in the scratch dir");
        let mut cmd = match netns {
            Some(ns) => {
                let (program, prefix) = ns.prefix();
                let mut c = Command::new(program);
                c.args(prefix).arg(strato_bin());
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
            .stdout(file(&dir.join("stdout")))
            .stderr(file(&stderr));
        let child = cmd.spawn().expect("spawn strato vm");
        let mut vm = Vm {
            child,
            sock,
            console,
            exit_file,
            stderr,
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

    /// Waits for `marker` on the console. If the VMM ends first, or the
    /// deadline passes, the panic says how the VMM ended (or what its
    /// threads do) and how the console ends, so a lane failure says where
    /// the guest stopped, without waiting out the deadline for a VMM that
    /// is gone.
    fn wait_console(&mut self, marker: &str) -> String {
        let start = Instant::now();
        loop {
            // Whether it had ended before the read: then the text is whole.
            let ended = self.child.try_wait().ok().flatten();
            let text = self.console_text();
            if text.contains(marker) {
                return text;
            }
            if ended.is_some() || start.elapsed() > LONG {
                let state = match ended {
                    Some(s) => format!(
                        "the VMM exited ({s}); exit file: {:?}",
                        std::fs::read_to_string(&self.exit_file).ok()
                    ),
                    None => format!(
                        "timed out after {LONG:?}; the VMM still runs; its threads:\n{}",
                        vmm_report(self.child.id())
                    ),
                };
                let tail = api::tail(&text, 4000);
                panic!("no {marker:?} on the console: {state}; the console ends:\n{tail}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
        let err = std::fs::read_to_string(&self.stderr).unwrap_or_default();
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
        kill_and_reap(&mut self.child);
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
    let mut vm = Vm::start(dir, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    configure_tiny_guest(&api, name, args);
    api.action("InstanceStart");
    vm.wait_console(marker);
    (vm, api)
}

/// Configures the tiny guest `name` (1 vCPU, 32 MiB) with `args` on its
/// command line, for an `InstanceStart` still to come.
fn configure_tiny_guest(api: &Api, name: &str, args: &str) {
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

/// vCPU hotplug through the API with the tiny ACPI guest, which walks the
/// CPU hotplug controller as the DSDT's methods do: `PATCH
/// /machine-config` after boot plugs vCPUs (the guest takes each event
/// once), asks them back (the guest ejects them, and only then do they
/// count as gone), and plugs one again; bad counts and other fields are
/// refused; the power button still ends the VM cleanly with the unplugged
/// vCPUs' threads parked.
#[test]
fn vcpus_are_plugged_asked_back_and_ejected_through_the_api() {
    let dir = Scratch::new("vm-api-cpu-hotplug");
    let vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    let mut vm = vm;
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":32,"max_vcpus":3}"#),
        204,
    );
    let m = api.get("/machine-config").json();
    assert_eq!(m["max_vcpus"].as_u64(), Some(3));
    assert!(m["vcpus_present"].is_null(), "only after the start");
    api.expect(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path":"{}","boot_args":"action=cpus timeout=600000"}}"#,
            guest("acpi").display()
        )),
        204,
    );
    api.action("InstanceStart");
    vm.wait_console("acpi: waiting for cpu events");
    let console = vm.console_text();
    assert!(console.contains("acpi: madt cpus 1 ioapics 1"), "{console}");
    assert!(console.contains("acpi: madt possible 3"), "{console}");
    let counts = || {
        let m = api.get("/machine-config").json();
        [
            "vcpu_count",
            "vcpus_present",
            "vcpus_inserting",
            "vcpus_removing",
        ]
        .map(|k| m[k].as_u64().unwrap_or(99))
    };
    assert_eq!(counts(), [1, 1, 0, 0]);
    let scans = |n: usize| {
        wait_for(&format!("{n} CPU scans"), LONG, || {
            let t = vm.console_text();
            (t.matches("acpi: cpu scan done").count() >= n).then_some(t)
        })
    };
    let resize = |n: u32| {
        api.expect(
            "PATCH",
            "/machine-config",
            Some(&format!(r#"{{"vcpu_count":{n}}}"#)),
            204,
        )
    };
    resize(3);
    let t = scans(1);
    assert!(
        t.contains("acpi: cpu 1 plugged\nacpi: cpu 2 plugged\nacpi: cpu scan done"),
        "{t}"
    );
    assert_eq!(counts(), [3, 3, 0, 0]);
    // The same count again: nothing for the guest to do, no event.
    resize(3);
    resize(1);
    let t = scans(2);
    assert!(
        t.contains("acpi: cpu 1 ejected\nacpi: cpu 2 ejected\nacpi: cpu scan done"),
        "{t}"
    );
    assert_eq!(counts(), [1, 1, 0, 0]);
    resize(2);
    let t = scans(3);
    assert!(
        t.ends_with("acpi: cpu 1 plugged\nacpi: cpu scan done\n"),
        "{t}"
    );
    assert_eq!(counts(), [2, 2, 0, 0]);
    for (body, needle) in [
        (r#"{"vcpu_count":4}"#, "outside 1 to 3"),
        (r#"{"vcpu_count":0}"#, "outside 1 to 3"),
        (r#"{"max_vcpus":4}"#, "only vcpu_count"),
        (r#"{"mem_size_mib":64}"#, "only vcpu_count"),
        (r#"{}"#, "only vcpu_count"),
    ] {
        api.expect_fault("PATCH", "/machine-config", body, 400, needle);
    }
    assert_eq!(counts(), [2, 2, 0, 0]);
    api.action("SendPowerButton");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("has not stopped"), "{err}");
    assert_eq!(vm.exit_record()["reason"], "guest powered off");
    api.check_schema(&dir.0);
}

/// The balloon's API around a guest without a balloon driver: checked
/// before the start, the target reaches the device after it (the guest
/// is not obliged to follow), statistics are refused without an interval,
/// and the whole configuration shows the balloon.
#[test]
fn balloon_api_is_checked_and_reaches_the_device() {
    let dir = Scratch::new("vm-api-balloon");
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api.expect_fault("GET", "/balloon", "", 400, "No balloon device");
    api.expect_fault(
        "PATCH",
        "/balloon",
        r#"{"amount_mib":1}"#,
        400,
        "No balloon device",
    );
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":32}"#),
        204,
    );
    for (body, needle) in [
        (
            r#"{"amount_mib":33,"deflate_on_oom":false}"#,
            "more than the guest's 32 MiB",
        ),
        (
            r#"{"amount_mib":1,"deflate_on_oom":false,"free_page_hinting":true}"#,
            "free_page_hinting",
        ),
        (r#"{"amount_mib":1}"#, "deflate_on_oom"),
        (r#"{"amount_mib":-1,"deflate_on_oom":false}"#, "invalid"),
    ] {
        api.expect_fault("PUT", "/balloon", body, 400, needle);
    }
    api.expect(
        "PUT",
        "/balloon",
        Some(r#"{"amount_mib":4,"deflate_on_oom":true}"#),
        204,
    );
    api.expect("PATCH", "/balloon", Some(r#"{"amount_mib":8}"#), 204);
    assert_eq!(api.get("/balloon").json()["amount_mib"].as_u64(), Some(8));
    api.expect_fault("GET", "/balloon/statistics", "", 400, "not running");
    assert_eq!(
        api.get("/vm/config").json()["balloon"]["amount_mib"].as_u64(),
        Some(8)
    );
    api.expect(
        "PUT",
        "/boot-source",
        Some(&format!(
            r#"{{"kernel_image_path":"{}","boot_args":"action=button timeout=600000"}}"#,
            guest("acpi").display()
        )),
        204,
    );
    api.action("InstanceStart");
    vm.wait_console("acpi: waiting for the power button");
    api.expect_fault(
        "PUT",
        "/balloon",
        r#"{"amount_mib":1,"deflate_on_oom":false}"#,
        400,
        "not supported after starting",
    );
    api.expect("PATCH", "/balloon", Some(r#"{"amount_mib":16}"#), 204);
    assert_eq!(api.get("/balloon").json()["amount_mib"].as_u64(), Some(16));
    api.expect_fault(
        "PATCH",
        "/balloon",
        r#"{"amount_mib":33}"#,
        400,
        "more than the guest's 32 MiB",
    );
    // No statistics interval was set.
    api.expect_fault(
        "GET",
        "/balloon/statistics",
        "",
        400,
        "statistics were not enabled",
    );
    api.expect_fault(
        "PATCH",
        "/balloon/statistics",
        r#"{"stats_polling_interval_s":1}"#,
        400,
        "statistics were not enabled",
    );
    api.action("SendPowerButton");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    api.check_schema(&dir.0);
}

/// `PUT /hotplug/memory` bodies are checked when they are put, with the
/// field or size named; the other operations need a configured device,
/// and PATCH a running VM.
#[test]
fn memory_hotplug_bodies_and_states_are_checked() {
    let dir = Scratch::new("vm-api-memhp-checks");
    let _vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&_vm.sock, "vm");
    let none = "No memory hotplug device configured.";
    api.expect_fault("GET", "/hotplug/memory", "", 400, none);
    api.expect_fault(
        "PATCH",
        "/hotplug/memory",
        r#"{"requested_size_mib":128}"#,
        400,
        none,
    );
    for (body, needle) in [
        (
            r#"{"total_size_mib":256,"bogus":1}"#,
            "unknown field `bogus`",
        ),
        (
            r#"{"total_size_mib":256,"block_size_mib":3}"#,
            "block_size_mib 3 must be a power of 2",
        ),
        (
            r#"{"total_size_mib":256,"slot_size_mib":64}"#,
            "slot_size_mib 64 must be at least 128",
        ),
        (
            r#"{"total_size_mib":200}"#,
            "total_size_mib 200 must be a multiple of slot_size_mib 128",
        ),
        (r#"{"slot_size_mib":128}"#, "missing field `total_size_mib`"),
        (r#"{"total_size_mib":-1}"#, "invalid value"),
    ] {
        api.expect_fault("PUT", "/hotplug/memory", body, 400, needle);
    }
    // Refused bodies changed nothing.
    api.expect_fault("GET", "/hotplug/memory", "", 400, none);
    api.expect(
        "PUT",
        "/hotplug/memory",
        Some(r#"{"total_size_mib":512,"slot_size_mib":256,"block_size_mib":4}"#),
        204,
    );
    let status = api.get("/hotplug/memory").json();
    assert_eq!(status["total_size_mib"].as_u64(), Some(512));
    assert_eq!(status["slot_size_mib"].as_u64(), Some(256));
    assert_eq!(status["block_size_mib"].as_u64(), Some(4));
    api.expect_fault(
        "PATCH",
        "/hotplug/memory",
        r#"{"requested_size_mib":128}"#,
        400,
        "not running",
    );
    api.check_schema(&dir.0);
}

/// The sizes the guest is asked for, shown beside what it has plugged.
fn memory_hotplug_sizes(api: &Api) -> (u64, u64) {
    let s = api.get("/hotplug/memory").json();
    let mib = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {s:?}"));
    (mib("requested_size_mib"), mib("plugged_size_mib"))
}

/// Hotpluggable memory on a guest without a virtio-mem driver: the region
/// is configured before the start, a requested size reaches the device
/// after it and is checked against the region, and a guest that never
/// acknowledges (plugs nothing) runs on undisturbed.
#[test]
fn memory_hotplug_is_requested_of_a_guest_that_never_plugs() {
    let dir = Scratch::new("vm-api-memhp");
    let mut vm = Vm::start(&dir.0, None, &[]);
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
            r#"{{"kernel_image_path":"{}","boot_args":"period=20"}}"#,
            guest("ticker").display()
        )),
        204,
    );
    api.expect(
        "PUT",
        "/hotplug/memory",
        Some(r#"{"total_size_mib":256}"#),
        204,
    );
    let before = api.get("/hotplug/memory").json();
    assert_eq!(before["total_size_mib"].as_u64(), Some(256));
    assert_eq!(before["slot_size_mib"].as_u64(), Some(128));
    assert_eq!(before["block_size_mib"].as_u64(), Some(2));
    assert_eq!(memory_hotplug_sizes(&api), (0, 0));
    let cfg = api.get("/vm/config").json();
    assert_eq!(cfg["memory-hotplug"]["total_size_mib"].as_u64(), Some(256));
    api.action("InstanceStart");
    vm.wait_console("ticker: ready");

    api.expect(
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib":128}"#),
        204,
    );
    assert_eq!(memory_hotplug_sizes(&api), (128, 0));
    api.expect_fault(
        "PATCH",
        "/hotplug/memory",
        r#"{"requested_size_mib":300}"#,
        400,
        "more than total_size_mib 256",
    );
    api.expect_fault(
        "PATCH",
        "/hotplug/memory",
        r#"{"requested_size_mib":3}"#,
        400,
        "multiple of block_size_mib 2",
    );
    // Refused sizes leave the request as it was.
    assert_eq!(memory_hotplug_sizes(&api), (128, 0));
    api.expect_fault(
        "PUT",
        "/hotplug/memory",
        r#"{"total_size_mib":512}"#,
        400,
        "not supported after starting",
    );
    // The guest runs on, and the VM still pauses and resumes.
    let ticks = vm.ticks();
    wait_for("ticks after the request", LONG, || {
        (vm.ticks() >= ticks + 3).then_some(())
    });
    api.expect("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), 204);
    api.expect("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), 204);
    assert_eq!(state(&api), "Running");
    api.expect(
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib":0}"#),
        204,
    );
    assert_eq!(memory_hotplug_sizes(&api), (0, 0));
    kill(vm.pid(), libc::SIGTERM);
    assert_eq!(vm.wait_exit().0, 143);
    api.check_schema(&dir.0);
}

/// Starts `strato vm` (with `extra` options) from the config file `text`,
/// written as `name`.json, in its own folder `name` of `dir`.
fn start_from_config(dir: &Scratch, name: &str, text: &str, extra: &[&str]) -> Vm {
    let file = dir.file(&format!("{name}.json"), text.as_bytes());
    let run = dir.0.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let args: Vec<&str> = ["--config-file", file.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    Vm::start(&run, None, &args)
}

/// The config file `text` is refused before anything starts: status 1,
/// with `needle` (the section and what is wrong in it) on stderr.
fn config_is_refused(dir: &Scratch, text: &str, needle: &str) {
    let mut vm = start_from_config(dir, "bad", text, &["--no-api"]);
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(needle), "{err}");
}

/// The config file's `memory-hotplug` section, Firecracker's: the running
/// VM has the region it describes, and bad sizes are refused before
/// anything starts, the section named.
#[test]
fn memory_hotplug_comes_from_the_config_file() {
    let dir = Scratch::new("vm-api-memhp-config");
    let config = |hotplug: &str| {
        format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32}},"memory-hotplug":{hotplug}}}"#,
            guest("idle").display()
        )
    };
    let good = config(r#"{"total_size_mib":512,"slot_size_mib":256,"block_size_mib":4}"#);
    let mut vm = start_from_config(&dir, "good", &good, &[]);
    let api = Api::new(&vm.sock, "vm");
    vm.wait_console("idle: ready");
    let s = api.get("/hotplug/memory").json();
    for (key, want) in [
        ("total_size_mib", 512),
        ("slot_size_mib", 256),
        ("block_size_mib", 4),
        ("plugged_size_mib", 0),
        ("requested_size_mib", 0),
    ] {
        assert_eq!(s[key].as_u64(), Some(want), "{key} in {s:?}");
    }
    let cfg = api.get("/vm/config").json();
    assert_eq!(cfg["memory-hotplug"]["slot_size_mib"].as_u64(), Some(256));
    api.expect(
        "PATCH",
        "/hotplug/memory",
        Some(r#"{"requested_size_mib":256}"#),
        204,
    );
    assert_eq!(memory_hotplug_sizes(&api), (256, 0));
    kill(vm.pid(), libc::SIGTERM);
    assert_eq!(vm.wait_exit().0, 143);
    api.check_schema(&dir.0);

    let bad = config(r#"{"total_size_mib":256,"block_size_mib":3}"#);
    config_is_refused(&dir, &bad, "memory-hotplug: block_size_mib 3");
}

/// `PUT /vsock` bodies are checked when they are put, the field or the
/// CID named; a second PUT replaces the first, `GET /vm/config` shows it
/// (without the deprecated `vsock_id`, as Firecracker does), and after
/// the start, when the device listens on its socket, it is refused.
#[test]
fn vsock_bodies_and_states_are_checked() {
    let dir = Scratch::new("vm-api-vsock-checks");
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    let uds = dir.path("v.sock");
    for (body, needle) in [
        (
            format!(r#"{{"guest_cid":3,"uds_path":"{uds}","bogus":1}}"#),
            "unknown field `bogus`",
        ),
        (
            format!(r#"{{"guest_cid":2,"uds_path":"{uds}"}}"#),
            "guest_cid 2 is reserved: it must be 3 or more",
        ),
        (r#"{"guest_cid":3}"#.to_string(), "missing field `uds_path`"),
        (
            format!(r#"{{"guest_cid":-1,"uds_path":"{uds}"}}"#),
            "invalid value",
        ),
        (
            format!(r#"{{"guest_cid":"3","uds_path":"{uds}"}}"#),
            "invalid type",
        ),
    ] {
        api.expect_fault("PUT", "/vsock", &body, 400, needle);
    }
    // Refused bodies changed nothing.
    assert!(api.get("/vm/config").json()["vsock"].is_null());
    let put = |cid: u32| format!(r#"{{"vsock_id":"vsock0","guest_cid":{cid},"uds_path":"{uds}"}}"#);
    api.expect("PUT", "/vsock", Some(&put(3)), 204);
    api.expect("PUT", "/vsock", Some(&put(7)), 204);
    let cfg = api.get("/vm/config").json();
    let shown = &cfg["vsock"];
    assert_eq!(shown["guest_cid"].as_u64(), Some(7), "{shown:?}");
    assert_eq!(shown["uds_path"], uds.as_str());
    assert!(shown["vsock_id"].is_null(), "{shown:?}");
    // Firecracker has no GET /vsock.
    api.expect_fault("GET", "/vsock", "", 400, "Invalid request");

    configure_tiny_guest(&api, "ticker", "period=20");
    api.action("InstanceStart");
    vm.wait_console("ticker: ready");
    assert!(Path::new(&uds).exists(), "no socket at {uds}");
    api.expect_fault(
        "PUT",
        "/vsock",
        &put(3),
        400,
        "not supported after starting",
    );
    kill(vm.pid(), libc::SIGTERM);
    assert_eq!(vm.wait_exit().0, 143);
    assert!(
        !Path::new(&uds).exists(),
        "the device's socket outlived the VM"
    );
    api.check_schema(&dir.0);
}

/// The config file's `vsock` section, Firecracker's: the device listens on
/// `uds_path` once the VM runs and takes a host program's connection and
/// its `CONNECT` (the tiny guest has no driver, so nothing answers, and
/// the guest runs on undisturbed); the socket goes when the VM ends. A
/// reserved CID is refused before anything starts, the section named.
#[test]
fn vsock_device_listens_on_its_socket_from_the_config_file() {
    use std::io::Write;
    use std::os::unix::fs::FileTypeExt;
    let dir = Scratch::new("vm-api-vsock-config");
    let uds = dir.path("v.sock");
    let config = |cid: u32| {
        format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}","boot_args":"timeout=600000"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32}},"vsock":{{"guest_cid":{cid},"uds_path":"{uds}"}}}}"#,
            guest("kbd").display()
        )
    };
    let mut vm = start_from_config(&dir, "good", &config(3), &[]);
    let api = Api::new(&vm.sock, "vm");
    vm.wait_console("kbd: ready");
    let cfg = api.get("/vm/config").json();
    assert_eq!(cfg["vsock"]["guest_cid"].as_u64(), Some(3));
    let meta = std::fs::symlink_metadata(&uds).expect("the device's socket");
    assert!(meta.file_type().is_socket(), "{uds} is not a socket");
    let mut host = std::os::unix::net::UnixStream::connect(&uds).expect("connect to the device");
    host.write_all(b"CONNECT 52\n")
        .expect("the device takes the CONNECT line");
    assert_eq!(state(&api), "Running");
    // The guest still runs: Shutdown's Ctrl-Alt-Del reaches it, and the
    // VM ends cleanly, taking its socket with it.
    api.action("Shutdown");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert!(
        vm.console_text()
            .contains("kbd: 14 11 e0 71 e0 f0 71 f0 11 f0 14"),
        "{}",
        vm.console_text()
    );
    assert!(
        !Path::new(&uds).exists(),
        "the device's socket outlived the VM"
    );
    drop(host);
    api.check_schema(&dir.0);

    config_is_refused(&dir, &config(1), "vsock: guest_cid 1 is reserved");
}

/// A socket the device cannot make (its directory does not exist) fails
/// the start with a 400 naming the path, as a drive that cannot be opened
/// does; the VMM stays up and configurable, and starts once given a path
/// it can make.
#[test]
fn vsock_socket_that_cannot_be_made_fails_the_start() {
    let dir = Scratch::new("vm-api-vsock-bad-path");
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    configure_tiny_guest(&api, "ticker", "period=20");
    let put = |uds: &str| format!(r#"{{"guest_cid":3,"uds_path":"{uds}"}}"#);
    let missing = dir.path("missing/v.sock");
    api.expect("PUT", "/vsock", Some(&put(&missing)), 204);
    api.expect_fault(
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
        400,
        &missing,
    );
    assert_eq!(state(&api), "Not started");
    let uds = dir.path("v.sock");
    api.expect("PUT", "/vsock", Some(&put(&uds)), 204);
    api.action("InstanceStart");
    vm.wait_console("ticker: ready");
    assert!(Path::new(&uds).exists(), "no socket at {uds}");
    kill(vm.pid(), libc::SIGTERM);
    assert_eq!(vm.wait_exit().0, 143);
    api.check_schema(&dir.0);
}

/// A boot count above the maximum, or a maximum the platform cannot
/// describe, is refused before the start.
#[test]
fn max_vcpus_below_the_boot_count_is_refused() {
    let dir = Scratch::new("vm-api-max-vcpus");
    let vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api.expect_fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":2,"mem_size_mib":32,"max_vcpus":1}"#,
        400,
        "max_vcpus must be vcpu_count (2) to 254",
    );
    api.expect_fault(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":32,"max_vcpus":255}"#,
        400,
        "max_vcpus must be",
    );
    drop(vm);
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
/// `Shutdown`, and for Debian's stock kernel. On aarch64 (the project's
/// arm64 kernel and Debian's) the button is a power key on the PL061
/// GPIO, reported by gpio-keys, and the kernel powers off through PSCI.
#[test]
#[ignore = hardware_kvm!()]
fn power_button_powers_linux_off() {
    require_hardware_kvm();
    let cases = if std::env::consts::ARCH == "aarch64" {
        vec![
            (("ARM64_IMAGE", "ARM64_INITRAMFS"), "SendPowerButton"),
            (("ARM64_IMAGE", "ARM64_INITRAMFS"), "Shutdown"),
            (("ARM64_KERNEL", "ARM64_INITRAMFS"), "Shutdown"),
        ]
    } else {
        vec![
            (("VMLINUX", "INITRAMFS"), "SendPowerButton"),
            (("VMLINUX", "INITRAMFS"), "Shutdown"),
            (("CLOUD_KERNEL", "CLOUD_INITRAMFS"), "Shutdown"),
        ]
    };
    for (images, action) in cases {
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

/// The CPUs a guest booted with `strato_cpus` reported online last, after
/// byte `from` of its console: (online list, CPUs a process ran on).
fn last_online(console: &str, from: usize) -> Option<(String, String)> {
    console.get(from..)?.lines().rev().find_map(|l| {
        let rest = l.trim_end().strip_prefix("STRATO_CPUS_ONLINE=")?;
        let (online, ran) = rest.split_once(" RAN=")?;
        Some((online.to_string(), ran.to_string()))
    })
}

/// Waits until the guest reports exactly `online` as its online CPUs, and
/// a process has run on each of `ran`; returns the console's length then.
fn wait_online(vm: &Vm, from: usize, online: &str, ran: &str) -> usize {
    wait_for(&format!("CPUs {online} online"), LONG, || {
        let t = vm.console_text();
        (last_online(&t, from)? == (online.to_string(), ran.to_string())).then_some(t.len())
    })
}

/// The workers' reports (`STRATO_WORK <worker> <round> .`) in order: each
/// worker's rounds go up by 20, none repeated or out of step. A kernel
/// message can land in the middle of a report on the console; such a
/// report (no longer whole) may be missing from the sequence, one step for
/// each cut report seen.
fn work_rounds(console: &str) -> std::collections::BTreeMap<u32, u64> {
    let mut last = std::collections::BTreeMap::new();
    let mut cut = 0u64;
    for l in console.lines() {
        if !l.contains("STRATO_WORK") {
            continue;
        }
        let report = l
            .trim_end()
            .strip_prefix("STRATO_WORK ")
            .and_then(|r| r.strip_suffix(" ."))
            .and_then(|r| r.split_once(' '))
            .and_then(|(w, i)| Some((w.parse::<u32>().ok()?, i.parse::<u64>().ok()?)));
        let Some((w, i)) = report else {
            cut += 1;
            continue;
        };
        let prev = last.insert(w, i).unwrap_or(0);
        let missed = (i.saturating_sub(prev) / 20).saturating_sub(1);
        assert!(
            i > prev && i.is_multiple_of(20) && missed <= cut,
            "worker {w}: round {i} after {prev} ({cut} cut reports)"
        );
        cut -= missed;
    }
    last
}

/// vCPU hotplug on a running Linux (x86, ACPI): booted with 1 vCPU and
/// room for 4, the guest is given 4, then 2, then (while paused) 3, with
/// two workers running the whole time. The guest's ACPI adds the plugged
/// vCPUs (its init brings them online, as a udev rule would), gives the
/// others back (offline, then `_EJ0`), a process runs on every online
/// CPU, the workers lose no round, `GET /machine-config` converges on
/// what was asked, and the power button still powers it off. For the
/// project kernel and Debian's stock cloud kernel.
#[test]
#[ignore = hardware_kvm!()]
fn vcpus_are_plugged_into_and_unplugged_from_running_linux() {
    require_hardware_kvm();
    for images in [
        ("VMLINUX", "INITRAMFS"),
        ("CLOUD_KERNEL", "CLOUD_INITRAMFS"),
    ] {
        let dir = Scratch::new("vm-api-linux-hotplug");
        let mut vm = Vm::start(&dir.0, None, &[]);
        let api = Api::new(&vm.sock, "vm");
        api.expect(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":1,"mem_size_mib":256,"max_vcpus":4}"#),
            204,
        );
        // `quiet`: see the end.
        let body = format!(
            r#"{{"kernel_image_path":"{}","initrd_path":"{}","boot_args":"console=ttyS0 reboot=k panic=1 quiet strato_noreboot strato_cpus strato_work=2"}}"#,
            linux_image(images.0),
            linux_image(images.1)
        );
        api.expect("PUT", "/boot-source", Some(&body), 204);
        api.action("InstanceStart");
        vm.wait_console("STRATO_INIT_DONE");
        let at = wait_online(&vm, 0, "0", "0");
        let m = api.get("/machine-config").json();
        assert_eq!(
            (
                m["vcpu_count"].as_u64(),
                m["max_vcpus"].as_u64(),
                m["vcpus_present"].as_u64()
            ),
            (Some(1), Some(4), Some(1)),
            "{images:?}"
        );

        let resize = |n: u32| {
            api.expect(
                "PATCH",
                "/machine-config",
                Some(&format!(r#"{{"vcpu_count":{n}}}"#)),
                204,
            )
        };
        let settled = |n: u64| {
            wait_for(&format!("{n} vCPUs present and settled"), LONG, || {
                let m = api.get("/machine-config").json();
                (m["vcpu_count"].as_u64() == Some(n)
                    && m["vcpus_present"].as_u64() == Some(n)
                    && m["vcpus_inserting"].as_u64() == Some(0)
                    && m["vcpus_removing"].as_u64() == Some(0))
                .then_some(())
            })
        };
        resize(4);
        let at = wait_online(&vm, at, "0-3", "0,1,2,3");
        settled(4);
        resize(2);
        let at = wait_online(&vm, at, "0-1", "0,1");
        settled(2);
        // Resized while paused: the guest sees it on resume.
        api.expect("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), 204);
        resize(3);
        api.expect("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), 204);
        let at = wait_online(&vm, at, "0-2", "0,1,2");
        settled(3);
        // The workers went on through all of it.
        let before = work_rounds(&vm.console_text());
        wait_for("the workers' next rounds", LONG, || {
            let now = work_rounds(&vm.console_text());
            (now.len() == 2 && now.iter().all(|(w, i)| before.get(w).is_none_or(|b| i > b)))
                .then_some(())
        });
        // Out of range, or not the vCPU count after boot: refused, nothing
        // changes.
        for (body, needle) in [
            (r#"{"vcpu_count":5}"#, "outside 1 to 4"),
            (r#"{"vcpu_count":0}"#, "outside 1 to 4"),
            (r#"{"mem_size_mib":512}"#, "only vcpu_count"),
            (r#"{"vcpu_count":2,"smt":false}"#, "only vcpu_count"),
        ] {
            api.expect_fault("PATCH", "/machine-config", body, 400, needle);
        }
        assert_eq!(
            api.get("/machine-config").json()["vcpus_present"].as_u64(),
            Some(3)
        );
        let console = vm.console_text();
        assert!(!console[at..].contains("STRATO_CPUS_ONLINE="), "{console}");
        api.action("Shutdown");
        let (code, err) = vm.wait_exit();
        let console = vm.console_text();
        assert_eq!(code, 0, "{images:?}: {err}\n{console}");
        assert!(console.contains("reboot: Power down"), "{console}");
        // `quiet` keeps the kernel's CPU up and down messages off the
        // console (a kernel line can land inside a user-space line there)
        // but not its errors.
        for bad in ["BUG", "Oops", "Kernel panic", "WARNING"] {
            assert!(!console.contains(bad), "{bad}: {console}");
        }
        api.check_schema(&dir.0);
    }
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// The memory balloon on a running Linux: after the guest touched half of
/// its memory, inflating 160 MiB lowers the guest's free memory and page
/// cache (its own statistics) and the VMM's resident memory by at least
/// 80 % of that;
/// deflating gives the guest its memory back. For the project kernel and
/// Debian's stock cloud kernel (virtio_balloon as a module).
#[test]
#[ignore = hardware_kvm!()]
fn balloon_takes_memory_from_running_linux_and_gives_it_back() {
    require_hardware_kvm();
    const MIB: u64 = 1 << 20;
    const AMOUNT: u64 = 160;
    for images in [
        ("VMLINUX", "INITRAMFS"),
        ("CLOUD_KERNEL", "CLOUD_INITRAMFS"),
    ] {
        let dir = Scratch::new("vm-api-linux-balloon");
        let mut vm = Vm::start(&dir.0, None, &[]);
        let api = Api::new(&vm.sock, "vm");
        api.expect(
            "PUT",
            "/machine-config",
            Some(r#"{"vcpu_count":2,"mem_size_mib":384}"#),
            204,
        );
        api.expect(
            "PUT",
            "/balloon",
            Some(r#"{"amount_mib":0,"deflate_on_oom":true,"stats_polling_interval_s":1}"#),
            204,
        );
        let body = format!(
            r#"{{"kernel_image_path":"{}","initrd_path":"{}","boot_args":"console=ttyS0 reboot=k panic=1 strato_noreboot strato_fill=192"}}"#,
            linux_image(images.0),
            linux_image(images.1)
        );
        api.expect("PUT", "/boot-source", Some(&body), 204);
        api.action("InstanceStart");
        vm.wait_console("STRATO_INIT_DONE");
        let console = vm.console_text();
        assert!(
            console.contains("STRATO_FILLED=192"),
            "{images:?}: {console}"
        );
        // Statistics come once the driver is up, then every second.
        // Free memory and page cache: what the guest could use; inflating
        // takes free pages and reclaims cache.
        let free = || {
            let s = api.get("/balloon/statistics").json();
            s["free_memory"].as_u64().unwrap_or(0) + s["disk_caches"].as_u64().unwrap_or(0)
        };
        let free_before = wait_for("the guest's first statistics", LONG, || {
            Some(free()).filter(|f| *f > 0)
        });
        let rss_before = rss_kib(vm.pid());
        let actual_mib = || api.get("/balloon/statistics").json()["actual_mib"].as_u64();
        api.expect(
            "PATCH",
            "/balloon",
            Some(&format!(r#"{{"amount_mib":{AMOUNT}}}"#)),
            204,
        );
        wait_for("the balloon to inflate", LONG, || {
            (actual_mib() == Some(AMOUNT)).then_some(())
        });
        let want = AMOUNT * MIB * 8 / 10;
        let free_inflated = wait_for("the guest's free memory to drop", LONG, || {
            Some(free()).filter(|f| *f + want <= free_before)
        });
        let released_kib = rss_before.saturating_sub(rss_kib(vm.pid()));
        assert!(
            released_kib * 1024 >= want,
            "{images:?}: the VMM's RSS fell by {released_kib} KiB for a {AMOUNT} MiB balloon"
        );
        let b = api.get("/balloon").json();
        assert_eq!(b["amount_mib"].as_u64(), Some(AMOUNT));
        let s = api.get("/balloon/statistics").json();
        assert_eq!(s["target_pages"].as_u64(), Some(AMOUNT * 256));
        assert!(
            s["total_memory"].as_u64().is_some_and(|t| t > 300 * MIB),
            "{s:?}"
        );
        // Too much, and fields that are not the target: refused.
        api.expect_fault(
            "PATCH",
            "/balloon",
            r#"{"amount_mib":400}"#,
            400,
            "more than the guest's 384 MiB",
        );
        api.expect_fault(
            "PATCH",
            "/balloon/statistics",
            r#"{"stats_polling_interval_s":0}"#,
            400,
            "cannot go to 0",
        );
        api.expect("PATCH", "/balloon", Some(r#"{"amount_mib":0}"#), 204);
        wait_for("the balloon to deflate", LONG, || {
            (actual_mib() == Some(0)).then_some(())
        });
        wait_for("the guest's free memory to come back", LONG, || {
            Some(free()).filter(|f| *f >= free_inflated + want)
        });
        api.action("Shutdown");
        let (code, err) = vm.wait_exit();
        let console = vm.console_text();
        assert_eq!(code, 0, "{images:?}: {err}\n{console}");
        api.check_schema(&dir.0);
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
    assert!(m["cpu_template"].is_null(), "{m:?}");
    // Firecracker's "no template", as its SDKs may send it, is taken.
    api.expect(
        "PATCH",
        "/machine-config",
        Some(r#"{"cpu_template":"None"}"#),
        204,
    );
    let m = api.expect("GET", "/machine-config", None, 200).json();
    assert_eq!(m["cpu_template"], "None");
    assert_eq!(m["mem_size_mib"].as_u64(), Some(48));

    let bad: &[(&str, &str, String, &str)] = &[
        ("PUT", "/machine-config", "{".into(), "invalid request body"),
        (
            "PUT",
            "/machine-config",
            format!(
                r#"{{"vcpu_count":1,"mem_size_mib":64,"cpu_template":"{}"}}"#,
                host_templates().foreign
            ),
            "CPU vendor mismatch",
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"cpu_template":"T3"}"#.into(),
            "unknown cpu_template \"T3\" (C3, T2, T2S, T2CL, T2A or None)",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":64,"cpu_templat":"None"}"#.into(),
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
            r#"{"vcpu_count":3,"mem_size_mib":64,"smt":true}"#.into(),
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
            "/drives/rootfs",
            format!(
                r#"{{"drive_id":"rootfs","path_on_host":"{junk}","is_root_device":true,"io_engine":"Fast"}}"#
            ),
            "io_engine \"Fast\" is not one of Sync, Async",
        ),
        (
            "PUT",
            "/drives/rootfs",
            format!(
                r#"{{"drive_id":"rootfs","path_on_host":"{junk}","is_root_device":true,"cache_type":"None"}}"#
            ),
            "cache_type",
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
            "PUT",
            "/snapshot/create",
            r#"{"snapshot_path":"/s","mem_file_path":"/m"}"#.into(),
            "snapshots are not supported",
        ),
        ("GET", "/mmds/config", String::new(), "Invalid request"),
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

    // With the API: the VM runs at once and is controllable.
    let run1 = dir.0.join("run1");
    std::fs::create_dir_all(&run1).unwrap();
    let idle_cfg = tiny_config_file(&dir, "idle");
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
    let hello_cfg = tiny_config_file(&dir, "hello");
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

/// A config file in `dir` (`<guest_name>.json`) that boots the tiny test
/// guest `guest_name` with 1 vCPU and 32 MiB; returns its path.
fn tiny_config_file(dir: &Scratch, guest_name: &str) -> String {
    dir.file(
        &format!("{guest_name}.json"),
        format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32}}}}"#,
            guest(guest_name).display()
        )
        .as_bytes(),
    )
}

/// As under Firecracker, what is typed on the process's stdin reaches the
/// guest's serial console when the console is the process's own: the echo
/// guest answers the line and resets.
#[test]
fn firecracker_command_line_types_stdin_into_the_serial_console() {
    let dir = Scratch::new("vm-api-stdin");
    let cfg = tiny_config_file(&dir, "echo");
    let r = strato_tests::strato(
        &["--no-api", "--config-file", &cfg],
        Some(b"typed at the console\n"),
        Duration::from_secs(60),
    );
    r.assert_ok();
    assert!(r.stdout.contains("echo: ready"), "{r:#?}");
    assert!(
        r.stdout.contains("echo: typed at the console"),
        "stdin did not reach the guest: {r:#?}"
    );
}

/// Firecracker's command line, as its clients give it: called through a
/// symlink named `firecracker` (and as `strato` with Firecracker's flags),
/// the version line they parse, a guest booted from a config file with
/// the logger flags (the log in a file, with levels and origins, seccomp
/// on), the request body limit on the API, and one line with status 1 for
/// unknown flags and for what strato lacks.
#[test]
fn firecracker_s_command_line_is_taken() {
    let dir = Scratch::new("vm-api-fc-cli");
    let fc = dir.0.join("firecracker");
    std::os::unix::fs::symlink(strato_bin(), &fc).unwrap();
    let run = |bin: &Path, args: &[&str]| {
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    for bin in [fc.as_path(), Path::new(&strato_bin())] {
        let out = run(bin, &["--version"]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("Firecracker v1.7.0 (strato "),
            "{}: {text}",
            bin.display()
        );
    }
    for (args, needle) in [
        (&["--bogus"][..], "--bogus"),
        (
            &["--metrics-path", "/nonexistent/dir/m"],
            "metrics /nonexistent/dir/m",
        ),
        (
            &["--metadata", "/nonexistent/m"],
            "--metadata /nonexistent/m",
        ),
        (&["--snapshot-version"], "snapshots are not supported"),
        (&["--level", "loud"], "unknown level"),
        (&["--no-api"], "--config-file"),
    ] {
        let out = run(&fc, args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }

    let cfg = dir.file(
        "hello.json",
        format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32}}}}"#,
            guest("hello").display()
        )
        .as_bytes(),
    );
    let log = dir.0.join("fc.log");
    let log_arg = log.to_str().unwrap();
    let out = run(
        &fc,
        &[
            "--id",
            "fc-1",
            "--no-api",
            "--config-file",
            &cfg,
            "--boot-timer",
            "--level",
            "Info",
            "--log-path",
            log_arg,
            "--show-level",
            "--show-log-origin",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "2",
            "--parent-cpu-time-us",
            "3",
            "--mmds-size-limit",
            "100",
            "--enable-pci",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("Hello from strato test guest"), "{stdout}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("[fc-1:strato WARN main api/src/firecracker.rs:"),
        "{text}"
    );
    // From the VM's thread, under its seccomp filter.
    assert!(text.contains("INFO vm vmm/src/vm.rs:"), "{text}");
    assert!(
        !stderr.contains("[fc-1"),
        "the log went to stderr: {stderr}"
    );

    // The API with a 100-byte body limit: a larger body is refused with
    // 413 before it is read; GET /version names both versions.
    let sock = dir.0.join("fc.sock");
    let mut child = Command::new(&fc)
        .arg("--api-sock")
        .arg(&sock)
        .args(["--http-api-max-payload-size", "100"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the API socket", LONG, || sock.exists().then_some(()));
    let api = Api::new(&sock, "vm");
    let v = api.expect("GET", "/version", None, 200).json();
    assert_eq!(v["firecracker_version"], "1.7.0");
    assert!(v["strato_version"].as_str().is_some(), "{v:?}");
    let big = format!(
        r#"{{"vcpu_count":1,"mem_size_mib":32,"x":"{}"}}"#,
        "a".repeat(100)
    );
    let r = api::raw_request(
        &sock,
        "PUT",
        "/machine-config",
        Some(big.as_bytes()),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(r.status, 413, "{}", r.text());
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":32}"#),
        204,
    );
    kill_and_reap(&mut child);
}

/// Configures the idle tiny guest: 1 vCPU, 32 MiB.
fn configure_idle(api: &Api) {
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":32}"#),
        204,
    );
    let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, guest("idle").display());
    api.expect("PUT", "/boot-source", Some(&boot), 204);
}

/// Firecracker's logger: `PUT /logger` names a FIFO nobody reads yet (as
/// the Go SDK does) and a level; the VMM's lines, from the VM's own thread
/// under its seccomp filter, reach the FIFO's reader. Bad levels and paths
/// are refused, and so is any change after the start. The `logger`
/// section of a config file does the same for a VM without an API.
#[test]
fn the_logger_writes_where_firecracker_s_clients_say() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = Scratch::new("vm-api-logger");
    let fifo = dir.0.join("log.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    for (body, needle) in [
        (r#"{"level":"loud"}"#, "unknown level"),
        (r#"{"log_path":"/nonexistent/dir/log"}"#, "log_path"),
        (r#"{"log_fifo":"/tmp/x"}"#, "unknown field"),
    ] {
        api.expect_fault("PUT", "/logger", body, 400, needle);
    }
    let body = format!(
        r#"{{"log_path":"{}","level":"Info","show_level":true,"show_log_origin":false}}"#,
        fifo.display()
    );
    api.expect("PUT", "/logger", Some(&body), 204);
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    configure_idle(&api);
    api.action("InstanceStart");
    vm.wait_console("idle: ready");
    let mut got = String::new();
    wait_for("the VMM's log line in the FIFO", LONG, || {
        let mut buf = [0u8; 4096];
        if let Ok(n) = reader.read(&mut buf) {
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        got.contains("[strato INFO vm] started 1 vCPU(s)")
            .then_some(())
    });
    api.expect_fault("PUT", "/logger", r#"{"level":"Debug"}"#, 400, "");
    kill(vm.pid(), libc::SIGTERM);
    assert_eq!(vm.wait_exit().0, 143);
    api.check_schema(&dir.0);

    // The config file's section, without an API.
    let log = dir.0.join("vm.log");
    let cfg = dir.file(
        "hello.json",
        format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32}},
            "logger":{{"log_path":"{}","level":"info","show_level":false,"module":"vmm"}}}}"#,
            guest("hello").display(),
            log.display()
        )
        .as_bytes(),
    );
    let run2 = dir.0.join("run2");
    std::fs::create_dir_all(&run2).unwrap();
    let mut vm = Vm::start(&run2, None, &["--config-file", &cfg, "--no-api"]);
    assert_eq!(vm.wait_exit().0, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("[strato vm] started 1 vCPU(s)"), "{text}");
    // Only the vmm crate's messages: none of the API's.
    assert!(text.lines().all(|l| !l.contains("api::")), "{text}");
}

/// Firecracker's metrics: `PUT /metrics` before the start (once), then
/// `FlushMetrics` writes a line with the vCPUs' exits and each drive's
/// counters under its id and summed; the next line has what grew since.
#[test]
fn metrics_lines_follow_firecracker_s_format() {
    let dir = Scratch::new("vm-api-metrics");
    let path = dir.0.join("metrics.json");
    let disk = dir.file("disk.img", &[0u8; 4096]);
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api.expect_fault(
        "PUT",
        "/metrics",
        r#"{"metrics_path":"/nonexistent/dir/m"}"#,
        400,
        "metrics_path",
    );
    let body = format!(r#"{{"metrics_path":"{}"}}"#, path.display());
    api.expect("PUT", "/metrics", Some(&body), 204);
    api.expect_fault("PUT", "/metrics", &body, 400, "already configured");
    configure_idle(&api);
    api.expect(
        "PUT",
        "/drives/data",
        Some(&format!(
            r#"{{"drive_id":"data","path_on_host":"{disk}","is_root_device":false,"io_engine":"Async","cache_type":"Writeback"}}"#
        )),
        204,
    );
    api.action("InstanceStart");
    vm.wait_console("idle: ready");
    api.action("FlushMetrics");
    api.action("FlushMetrics");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<Json> = text.lines().map(|l| Json::parse(l).unwrap()).collect();
    // One as the VM started (as Firecracker does), then the two flushes.
    assert_eq!(lines.len(), 3, "{text}");
    let first = &lines[1];
    assert!(
        first["utc_timestamp_ms"].as_u64().unwrap_or(0) > 0,
        "{text}"
    );
    // The guest printed on the serial port: port writes, counted in the
    // start's line or the first flush's, as the vCPU may run before the
    // start's line is written.
    let io_out = |l: &Json| l["vcpu"]["exit_io_out"].as_u64().unwrap_or(0);
    assert!(io_out(&lines[0]) + io_out(&lines[1]) > 0, "{text}");
    for group in ["block", "block_data"] {
        for counter in ["read_bytes", "write_bytes", "read_count", "flush_count"] {
            assert!(
                first[group][counter].as_u64().is_some(),
                "{group}.{counter}: {text}"
            );
        }
    }
    // Growth since the line before: the idle guest printed nothing more.
    assert_eq!(lines[2]["vcpu"]["exit_io_out"].as_u64(), Some(0), "{text}");
    kill(vm.pid(), libc::SIGTERM);
    assert_eq!(vm.wait_exit().0, 143);
    api.check_schema(&dir.0);
}

/// Firecracker's entropy device: `PUT /entropy` (or the config file's
/// `entropy` section) adds a virtio-rng device whose buffers the tiny
/// guest gets back full of random bytes, as fast as its rate limiter lets
/// it; a malformed limiter is refused.
#[test]
fn the_entropy_device_fills_the_guest_s_buffers() {
    let dir = Scratch::new("vm-api-entropy");
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api.expect_fault(
        "PUT",
        "/entropy",
        r#"{"rate_limiter":{"bandwidth":{"size":1000}}}"#,
        400,
        "refill_time",
    );
    api.expect_fault("PUT", "/entropy", r#"{"bogus":1}"#, 400, "unknown field");
    api.expect("PUT", "/entropy", Some(r#"{"rate_limiter":{}}"#), 204);
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":32}"#),
        204,
    );
    let boot = format!(
        r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#,
        guest("rng").display()
    );
    api.expect("PUT", "/boot-source", Some(&boot), 204);
    assert!(!api.get("/vm/config").json()["entropy"].is_null());
    api.action("InstanceStart");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    let console = vm.console_text();
    let line = console
        .lines()
        .find(|l| l.starts_with("rng: got"))
        .unwrap_or_else(|| panic!("{console}"));
    // 144 random bytes hold about 110 distinct values; 60 is far below.
    let distinct: u32 = line
        .split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        line.starts_with("rng: got 144 bytes,") && distinct > 60,
        "{line}"
    );
    api.check_schema(&dir.0);

    // The config file's section (one with a limit of a request a second:
    // the guest's three take two seconds), and no device without it.
    for (section, want) in [
        (r#","entropy":{}"#, "rng: got 144 bytes"),
        (
            r#","entropy":{"rate_limiter":{"ops":{"size":1,"refill_time":1000}}}"#,
            "rng: got 144 bytes",
        ),
        ("", "rng: no entropy device"),
    ] {
        let start = Instant::now();
        let run = dir.0.join(format!("run{}", section.len()));
        std::fs::create_dir_all(&run).unwrap();
        let cfg = dir.file(
            &format!("rng{}.json", section.len()),
            format!(
                r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32}}{section}}}"#,
                guest("rng").display()
            )
            .as_bytes(),
        );
        let mut vm = Vm::start(&run, None, &["--config-file", &cfg, "--no-api"]);
        assert_eq!(vm.wait_exit().0, 0);
        let console = vm.console_text();
        assert!(console.contains(want), "{section}: {console}");
        if section.contains("ops") {
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(1800), "{section}: {took:?}");
        }
    }
}

/// `PATCH /drives/{id}` and `PATCH /network-interfaces/{id}`: checked, stored
/// before the start, applied to the running devices after it.
#[test]
fn drives_and_interfaces_are_patched_before_and_after_the_start() {
    let dir = Scratch::new("vm-api-patch");
    let ns = Netns::new("vmapi-patch", &["tap0"]);
    let disk = dir.file("disk.img", &[0u8; 4096]);
    let bigger = dir.file("bigger.img", &[0u8; 8192]);
    let mut vm = Vm::start(&dir.0, Some(&ns), &[]);
    let api = Api::new(&vm.sock, "vm");
    configure_idle(&api);
    api.expect(
        "PUT",
        "/drives/data",
        Some(&format!(
            r#"{{"drive_id":"data","path_on_host":"{disk}","is_root_device":false}}"#
        )),
        204,
    );
    api.expect(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#),
        204,
    );
    let limit = r#"{"bandwidth":{"size":1048576,"refill_time":1000},"ops":{"size":100,"one_time_burst":50,"refill_time":1000}}"#;
    for (path, body, needle) in [
        (
            "/drives/nope",
            r#"{"drive_id":"nope"}"#.to_string(),
            "no drive",
        ),
        (
            "/drives/data",
            r#"{"drive_id":"other"}"#.to_string(),
            "does not match",
        ),
        (
            "/drives/data",
            r#"{"drive_id":"data","path_on_host":"/nonexistent/x"}"#.to_string(),
            "/nonexistent/x",
        ),
        (
            "/drives/data",
            r#"{"drive_id":"data","is_read_only":true}"#.to_string(),
            "unknown field",
        ),
        (
            "/network-interfaces/eth9",
            r#"{"iface_id":"eth9"}"#.to_string(),
            "no network interface",
        ),
        (
            "/network-interfaces/eth0",
            r#"{"iface_id":"eth0","rx_rate_limiter":{"ops":{"size":1}}}"#.to_string(),
            "refill_time",
        ),
    ] {
        api.expect_fault("PATCH", path, &body, 400, needle);
    }
    // Before the start: stored.
    api.expect(
        "PATCH",
        "/drives/data",
        Some(&format!(r#"{{"drive_id":"data","rate_limiter":{limit}}}"#)),
        204,
    );
    api.expect(
        "PATCH",
        "/network-interfaces/eth0",
        Some(&format!(
            r#"{{"iface_id":"eth0","tx_rate_limiter":{limit}}}"#
        )),
        204,
    );
    let cfg = api.get("/vm/config").json();
    assert_eq!(
        cfg["drives"][0]["rate_limiter"]["ops"]["one_time_burst"].as_u64(),
        Some(50)
    );
    assert_eq!(
        cfg["network-interfaces"][0]["tx_rate_limiter"]["bandwidth"]["size"].as_u64(),
        Some(1048576)
    );
    api.action("InstanceStart");
    vm.wait_console("idle: ready");
    // After it: applied to the running devices.
    api.expect(
        "PATCH",
        "/drives/data",
        Some(&format!(
            r#"{{"drive_id":"data","path_on_host":"{bigger}","rate_limiter":{{}}}}"#
        )),
        204,
    );
    api.expect(
        "PATCH",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth0","rx_rate_limiter":{},"tx_rate_limiter":{}}"#),
        204,
    );
    let cfg = api.get("/vm/config").json();
    assert_eq!(cfg["drives"][0]["path_on_host"], bigger.as_str());
    api.action("SendCtrlAltDel");
    kill(vm.pid(), libc::SIGTERM);
    vm.wait_exit();
    api.check_schema(&dir.0);
}

/// A drive swapped under a running Linux: `PATCH /drives/{id}` with a new
/// image of another size, and the guest sees the new size of /dev/vdb.
#[test]
#[ignore = hardware_kvm!()]
fn a_drive_swapped_under_running_linux_shows_its_new_size() {
    require_hardware_kvm();
    let dir = Scratch::new("vm-api-linux-swap");
    let small = dir.file("small.img", &vec![0u8; 1 << 20]);
    let large = dir.file("large.img", &vec![0u8; 4 << 20]);
    let mut vm = Vm::start(&dir.0, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api.expect(
        "PUT",
        "/drives/data",
        Some(&format!(
            r#"{{"drive_id":"data","path_on_host":"{small}","is_root_device":false}}"#
        )),
        204,
    );
    boot_linux(&api, "strato_noreboot strato_blksize=vda", false);
    vm.wait_console("STRATO_BLKSIZE=2048 .");
    api.expect(
        "PATCH",
        "/drives/data",
        Some(&format!(
            r#"{{"drive_id":"data","path_on_host":"{large}"}}"#
        )),
        204,
    );
    vm.wait_console("STRATO_BLKSIZE=8192 .");
    api.action("Shutdown");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
}

/// Firecracker's rate limiters on a drive hold the guest to their rate:
/// the tiny guest reads 40 requests of 64 KiB one after another. With
/// 1 MiB/s in a 256 KiB bucket (full at the start) the last 36 wait for
/// 2.25 s of refill; with 10 requests/s in a bucket of 10, the last 30
/// wait 3 s. Each run may take what the unlimited one took on top.
#[test]
fn a_drive_s_rate_limiter_holds_the_guest_to_its_rate() {
    let dir = Scratch::new("vm-api-rate");
    let disk = dir.file("disk.img", &vec![0u8; 1 << 20]);
    let mut n = 0;
    let mut run = |limiter: &str| {
        n += 1;
        let run = dir.0.join(format!("run{n}"));
        std::fs::create_dir_all(&run).unwrap();
        let cfg = dir.file(
            &format!("cfg{n}.json"),
            format!(
                r#"{{"boot-source":{{"kernel_image_path":"{}","boot_args":"console=ttyS0 op=read count=40 chunk=64"}},
                "machine-config":{{"vcpu_count":1,"mem_size_mib":32}},
                "drives":[{{"drive_id":"d","path_on_host":"{disk}","is_root_device":false{limiter}}}]}}"#,
                guest("blk-copy").display()
            )
            .as_bytes(),
        );
        let start = Instant::now();
        let mut vm = Vm::start(&run, None, &["--config-file", &cfg, "--no-api"]);
        let (code, err) = vm.wait_exit();
        let took = start.elapsed();
        let console = vm.console_text();
        assert_eq!(code, 0, "{err}");
        assert!(console.contains("blk-bench: 40 requests done"), "{console}");
        took
    };
    let free = run("");
    for (limiter, want) in [
        (
            r#","rate_limiter":{"bandwidth":{"size":262144,"refill_time":250}}"#,
            Duration::from_millis(2250),
        ),
        (
            r#","rate_limiter":{"ops":{"size":10,"refill_time":1000}}"#,
            Duration::from_millis(3000),
        ),
    ] {
        let took = run(limiter);
        strato_tests::assert_rate(limiter, took, want, free);
    }
}

/// A NIC's transmit rate limiter holds the guest to its rate, as the
/// drive's above: the tiny guest sends 10000 frames of 1514 bytes (15.1 MB,
/// as fast as it can), the limiter allows 10 MiB/s from a 1 MiB bucket
/// (full at the start), so the last 14.1 MB wait 1.34 s; with 2000 frames a
/// second from a bucket of 500, 4000 frames wait 1.75 s. Measured from the
/// guest's `tx start`; each run may take what the unlimited one took on
/// top.
#[test]
fn a_nic_s_rate_limiter_holds_the_guest_to_its_rate() {
    let dir = Scratch::new("vm-api-net-rate");
    let ns = Netns::new("vmapi-rate", &["tap0"]);
    let mut n = 0;
    let mut run = |count: u32, limiter: &str| {
        n += 1;
        let run = dir.0.join(format!("run{n}"));
        std::fs::create_dir_all(&run).unwrap();
        let cfg = dir.file(
            &format!("cfg{n}.json"),
            format!(
                r#"{{"boot-source":{{"kernel_image_path":"{}","boot_args":"console=ttyS0 mode=tx size=1514 count={count}"}},
                "machine-config":{{"vcpu_count":1,"mem_size_mib":32}},
                "network-interfaces":[{{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"{limiter}}}]}}"#,
                guest("net-bench").display()
            )
            .as_bytes(),
        );
        let mut vm = Vm::start(&run, Some(&ns), &["--config-file", &cfg, "--no-api"]);
        // From the guest's first frame: boot times vary, the rate not.
        wait_for("the guest to start sending", LONG, || {
            let started = vm.console_text().contains("net-bench: tx start");
            let gone = matches!(vm.child.try_wait(), Ok(Some(_)));
            (started || gone).then_some(())
        });
        let start = Instant::now();
        let (code, err) = vm.wait_exit();
        let took = start.elapsed();
        let console = vm.console_text();
        assert_eq!(code, 0, "{err}");
        assert!(
            console.contains(&format!("net-bench: tx {count} done")),
            "{console}"
        );
        took
    };
    for (count, limiter, want) in [
        (
            10_000,
            r#","tx_rate_limiter":{"bandwidth":{"size":1048576,"refill_time":100}}"#,
            Duration::from_millis(1344),
        ),
        (
            4_000,
            r#","tx_rate_limiter":{"ops":{"size":500,"refill_time":250}}"#,
            Duration::from_millis(1750),
        ),
    ] {
        let free = run(count, "");
        let took = run(count, limiter);
        strato_tests::assert_rate(limiter, took, want, free);
    }
}

#[test]
fn a_forbidden_system_call_on_an_api_thread_kills_the_vmm_with_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    let dir = Scratch::new("vm-api-seccomp");
    let cfg = tiny_config_file(&dir, "idle");
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

/// What the `cpuid` guest printed: leaf 1 ECX and EDX, leaf 7 EBX and
/// IA32_MISC_ENABLE.
fn cpuid_report(console: &str) -> (u32, u32, u32, u64) {
    (
        cpuid_field(console, "cpuid: 1 ", "ecx") as u32,
        cpuid_field(console, "cpuid: 1 ", "edx") as u32,
        cpuid_field(console, "cpuid: 7 ", "ebx") as u32,
        cpuid_field(console, "cpuid: msr ", "1a0"),
    )
}

/// The hex value after `name` on the `cpuid` guest's line that starts
/// with `prefix`.
fn cpuid_field(console: &str, prefix: &str, name: &str) -> u64 {
    let line = console
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{console}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let i = words.iter().position(|w| *w == name).expect("field") + 1;
    u64::from_str_radix(words[i], 16).expect("hex")
}

/// Boots the `cpuid` guest from a config file in a directory of its own
/// under `dir` and returns what it printed.
fn cpuid_boot(dir: &Scratch, name: &str, extra: &str) -> (u32, u32, u32, u64) {
    cpuid_report(&cpuid_console(dir, name, "", extra))
}

/// [`cpuid_boot`]'s console, with `machine` added to the machine config.
fn cpuid_console(dir: &Scratch, name: &str, machine: &str, extra: &str) -> String {
    let config = format!(
        r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32{machine}}}{extra}}}"#,
        guest("cpuid").display()
    );
    let (vm, code, err) = run_config_file(dir, name, &config);
    assert_eq!(code, 0, "{err}");
    vm.console_text()
}

/// Runs strato without the API on the config file `config`, in a
/// directory `name` of its own under `dir`, until it exits: the VM, its
/// exit status and its stderr.
fn run_config_file(dir: &Scratch, name: &str, config: &str) -> (Vm, i32, String) {
    let cfg = dir.file(&format!("{name}.json"), config.as_bytes());
    let run = dir.0.join(name);
    std::fs::create_dir_all(&run).unwrap();
    let mut vm = Vm::start(&run, None, &["--config-file", &cfg, "--no-api"]);
    let (code, err) = vm.wait_exit();
    (vm, code, err)
}

/// The template of the CPU template tests: clears leaf 1 EDX bit 0 (FPU),
/// sets leaf 7 EBX bit `free` and IA32_MISC_ENABLE bit 22 (limit CPUID
/// maxval), which strato leaves clear.
fn cpuid_template(free: u32) -> String {
    let leaf7 = format!("0b1{}", "x".repeat(free as usize));
    format!(
        r#"{{"kvm_capabilities":["!56"],
            "cpuid_modifiers":[
              {{"leaf":"0x1","subleaf":"0x0","flags":0,"modifiers":[{{"register":"edx","bitmap":"0b0"}}]}},
              {{"leaf":"7","subleaf":"0","modifiers":[{{"register":"ebx","bitmap":"{leaf7}"}}]}}],
            "msr_modifiers":[{{"addr":"0x1a0","bitmap":"0b1_xxxx_xxxx_xxxx_xxxx_xxxx_xx"}}]}}"#
    )
}

/// A custom CPU template (Firecracker's `/cpu-config`, and its config
/// file's `cpu-config` naming a file) changes the CPUID bits the guest
/// reads, and nothing else of them. Hardware-style KVM only: software KVM
/// here runs the guest's CPUID instruction on the host CPU, unseen.
#[test]
#[ignore = hardware_kvm!()]
fn custom_cpu_template_changes_the_guest_s_cpuid() {
    require_hardware_kvm();
    let dir = Scratch::new("vm-api-cpuid");
    let (ecx, edx, ebx7, misc) = cpuid_boot(&dir, "plain", "");
    assert_ne!(edx & 1, 0, "the FPU bit is set without a template");
    let free = (!ebx7).trailing_zeros();
    assert!(free < 32, "leaf 7 EBX has every bit set");
    let want = (ecx, edx & !1, ebx7 | (1 << free), misc | (1 << 22));
    let file = dir.file("template.json", cpuid_template(free).as_bytes());
    assert_eq!(
        cpuid_boot(&dir, "from-file", &format!(r#","cpu-config":"{file}""#)),
        want
    );
}

/// A custom CPU template through the API and the config file: its MSR
/// change reaches the guest, `GET /vm/config` shows it back, bad templates
/// are refused with the field named, and one KVM cannot apply fails the
/// start without losing the instance. (The CPUID part is checked where
/// KVM runs the guest's CPUID: the test above.)
#[test]
fn custom_cpu_template_sets_msrs_and_bad_ones_are_refused() {
    let dir = Scratch::new("vm-api-cpu-template");
    let (ecx, edx, ebx7, misc) = cpuid_boot(&dir, "plain", "");
    assert_eq!(misc & (1 << 22), 0);
    let template = cpuid_template((!ebx7).trailing_zeros().min(31));
    let file = dir.file("template.json", template.as_bytes());
    let (.., got) = cpuid_boot(&dir, "from-file", &format!(r#","cpu-config":"{file}""#));
    assert_eq!(got, misc | (1 << 22));
    // A file that is not a regular file, or not a template, is refused
    // before anything starts.
    for (path, needle) in [
        ("/dev/null", "not a regular file"),
        (&dir.file("x.json", b"[]"), "not a JSON object"),
    ] {
        let config = format!(
            r#"{{"boot-source":{{"kernel_image_path":"{}"}},"cpu-config":"{path}"}}"#,
            guest("cpuid").display()
        );
        let (_, code, err) = run_config_file(&dir, "bad", &config);
        assert_ne!(code, 0, "{err}");
        assert!(err.contains(needle) && err.contains("cpu-config"), "{err}");
    }

    // Through the API, shown back by GET /vm/config; bad ones first,
    // which change nothing.
    let run = dir.0.join("api");
    std::fs::create_dir_all(&run).unwrap();
    let mut vm = Vm::start(&run, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    for (body, needle) in [
        (
            r#"{"msr_modifiers":[{"addr":"0x1a0","bitmap":"0b2"}]}"#,
            "0, 1 or x",
        ),
        (
            r#"{"cpuid_modifiers":[{"leaf":"1","subleaf":"0","modifiers":[{"register":"rax","bitmap":"0b1"}]}]}"#,
            "\"rax\"",
        ),
        (
            r#"{"reg_modifiers":[{"addr":"0x603000000013c020","bitmap":"0b1"}]}"#,
            "reg_modifiers are not for x86_64",
        ),
        (r#"{"kvm_capabilities":["0x"]}"#, "KVM capability"),
        (r#"{"cpuid":[]}"#, "unknown field"),
    ] {
        api.expect_fault("PUT", "/cpu-config", body, 400, needle);
    }
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    assert!(cfg["cpu-config"].is_null(), "{cfg:?}");
    api.expect("PUT", "/cpu-config", Some(&template), 204);
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    assert_eq!(cfg["cpu-config"]["msr_modifiers"][0]["addr"], "0x1a0");
    let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, guest("cpuid").display());
    api.expect("PUT", "/boot-source", Some(&boot), 204);
    api.action("InstanceStart");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert_eq!(cpuid_report(&vm.console_text()).3, misc | (1 << 22));
    api.check_schema(&dir.0);

    // A leaf KVM does not give fails the start with 400; the instance
    // stays configurable, and "None" as the static template replaces the
    // custom one.
    let run = dir.0.join("no-leaf");
    std::fs::create_dir_all(&run).unwrap();
    let mut vm = Vm::start(&run, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api.expect(
        "PUT",
        "/cpu-config",
        Some(r#"{"cpuid_modifiers":[{"leaf":"0x4ffffff0","subleaf":"0","modifiers":[{"register":"eax","bitmap":"0b1"}]}]}"#),
        204,
    );
    api.expect("PUT", "/boot-source", Some(&boot), 204);
    api.expect_fault(
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
        400,
        "CPUID leaf 0x4ffffff0 subleaf 0x0 is not in the vCPU's CPUID",
    );
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":32,"cpu_template":"None"}"#),
        204,
    );
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    assert!(cfg["cpu-config"].is_null(), "{cfg:?}");
    api.action("InstanceStart");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    assert_eq!(cpuid_report(&vm.console_text()), (ecx, edx, ebx7, misc));
    api.check_schema(&dir.0);
}

/// Starts Linux (`images`: the kernel's and the initramfs's image keys)
/// on `strato vm` with 2 vCPUs, 256 MiB, the device that `device` (a path
/// and a PUT body) configures, and init options `args`; the guest stays up
/// (`strato_noreboot`).
fn start_linux(dir: &Path, images: (&str, &str), device: (&str, &str), args: &str) -> (Vm, Api) {
    let vm = Vm::start(dir, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":2,"mem_size_mib":256}"#),
        204,
    );
    api.expect("PUT", device.0, Some(device.1), 204);
    let body = format!(
        r#"{{"kernel_image_path":"{}","initrd_path":"{}","boot_args":"console=ttyS0 reboot=k panic=1 strato_noreboot {args}"}}"#,
        linux_image(images.0),
        linux_image(images.1)
    );
    api.expect("PUT", "/boot-source", Some(&body), 204);
    api.action("InstanceStart");
    (vm, api)
}

/// Memory hotplug (virtio-mem) on a running Linux: MemTotal grows by the
/// 512 MiB the guest plugs; the guest fills 384 MiB of it, and when it
/// unplugs it all again MemTotal is back where it was and the VMM's
/// resident memory falls by at least 80 % of the fill. For the project
/// kernel and Debian's stock cloud kernel (virtio_mem as a module).
#[test]
#[ignore = hardware_kvm!()]
fn memory_hotplug_grows_and_shrinks_running_linux() {
    require_hardware_kvm();
    const PLUG: u64 = 512;
    const FILL: u64 = 384;
    for images in [
        ("VMLINUX", "INITRAMFS"),
        ("CLOUD_KERNEL", "CLOUD_INITRAMFS"),
    ] {
        let dir = Scratch::new("vm-api-linux-virtio-mem");
        let (mut vm, api) = start_linux(
            &dir.0,
            images,
            ("/hotplug/memory", r#"{"total_size_mib":1024}"#),
            &format!("strato_mem strato_growfill={FILL}"),
        );
        vm.wait_console("STRATO_INIT_DONE");
        let memtotal = |vm: &Vm| mem_total_kib(&vm.console_text());
        let base = wait_for("the guest's MemTotal", LONG, || memtotal(&vm));
        let status = || api.get("/hotplug/memory").json();
        assert_eq!(status()["plugged_size_mib"].as_u64(), Some(0));

        api.expect(
            "PATCH",
            "/hotplug/memory",
            Some(&format!(r#"{{"requested_size_mib":{PLUG}}}"#)),
            204,
        );
        wait_for("the guest to plug", LONG, || {
            (status()["plugged_size_mib"].as_u64() == Some(PLUG)).then_some(())
        });
        let grown = wait_for("MemTotal to grow", LONG, || {
            memtotal(&vm).filter(|m| *m >= base + PLUG * 1024)
        });
        assert_eq!(
            grown,
            base + PLUG * 1024,
            "{images:?}: MemTotal {base} KiB before"
        );
        vm.wait_console(&format!("STRATO_GROWFILLED={FILL}"));
        let rss_filled = rss_kib(vm.pid());

        api.expect(
            "PATCH",
            "/hotplug/memory",
            Some(r#"{"requested_size_mib":0}"#),
            204,
        );
        wait_for("the guest to unplug", LONG, || {
            (status()["plugged_size_mib"].as_u64() == Some(0)).then_some(())
        });
        wait_for("MemTotal to shrink", LONG, || {
            memtotal(&vm).filter(|m| *m == base)
        });
        let released_kib = rss_filled.saturating_sub(rss_kib(vm.pid()));
        assert!(
            released_kib >= FILL * 1024 * 8 / 10,
            "{images:?}: the VMM's RSS fell by {released_kib} KiB after {FILL} MiB of plugged memory was filled and unplugged"
        );
        let s = status();
        assert_eq!(s["requested_size_mib"].as_u64(), Some(0), "{s:?}");
        api.action("Shutdown");
        let (code, err) = vm.wait_exit();
        let console = vm.console_text();
        assert_eq!(code, 0, "{images:?}: {err}\n{console}");
        // The stock kernel warns once at boot that the emulated CPU's
        // XSAVE sizes disagree (fpu__init_system_xstate, in the lane
        // only): not memory's business.
        let warnings = console
            .lines()
            .filter(|l| l.contains("WARNING:") && !l.contains("fpu__init_system_xstate"));
        for bad in [
            "BUG",
            "Oops",
            "Kernel panic",
            "virtio_mem virtio0: Unexpected",
        ] {
            assert!(!console.contains(bad), "{images:?}: {bad}: {console}");
        }
        assert_eq!(warnings.count(), 0, "{images:?}: {console}");
        api.check_schema(&dir.0);
    }
}

/// Byte `i` of what the guest's `strato-vsock send` sends.
fn vsock_pattern(len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| (i * 7 + i / 4093) as u8).collect()
}

/// Reads one `\n`-ended line, byte by byte (what follows is the stream's).
fn read_line(s: &mut std::os::unix::net::UnixStream) -> String {
    use std::io::Read;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).expect("read a line") == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// vsock between a running Linux and host programs, Firecracker's hybrid
/// way: a host program connects to the device's unix socket, says
/// `CONNECT 5000`, gets `OK <port>` and has 8 MiB echoed by the guest's
/// server; the guest connects to the host's port 6000, which is the unix
/// socket `<uds_path>_6000`, and sends 8 MiB that arrive intact.
#[test]
#[ignore = hardware_kvm!()]
fn vsock_streams_go_both_ways_between_linux_and_host_programs() {
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    require_hardware_kvm();
    const LEN: usize = 8 << 20;
    let dir = Scratch::new("vm-api-linux-vsock");
    let uds = dir.path("v.sock");
    let listener = UnixListener::bind(format!("{uds}_6000")).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(format!("OK {}\n", got.len()).as_bytes())
            .unwrap();
        got
    });
    let (mut vm, api) = start_linux(
        &dir.0,
        ("VMLINUX", "INITRAMFS"),
        (
            "/vsock",
            &format!(r#"{{"guest_cid":3,"uds_path":"{uds}"}}"#),
        ),
        &format!(
            "strato_vsock_echo=5000 strato_vsock_send=6000:{}",
            LEN >> 20
        ),
    );

    vm.wait_console("STRATO_VSOCK_ECHO_READY=5000");
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(LONG)).unwrap();
    s.write_all(b"CONNECT 5000\n").unwrap();
    let ok = read_line(&mut s);
    assert!(ok.starts_with("OK "), "{ok:?}");
    let data = strato_tests::random_bytes(LEN, 7);
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::new();
    s.read_to_end(&mut echoed).unwrap();
    writer.join().unwrap();
    assert_eq!(echoed.len(), LEN);
    assert!(echoed == data, "the echo differs from what was sent");
    vm.wait_console(&format!("STRATO_VSOCK_ECHOED={LEN}"));

    let got = server.join().unwrap();
    assert_eq!(got.len(), LEN);
    assert!(
        got == vsock_pattern(LEN),
        "the guest's data arrived changed"
    );
    vm.wait_console(&format!("STRATO_VSOCK_SENT={LEN} REPLY=OK {LEN}"));
    api.action("Shutdown");
    let (code, err) = vm.wait_exit();
    let console = vm.console_text();
    assert_eq!(code, 0, "{err}\n{console}");
    assert!(!console.contains("FAILED"), "{console}");
    assert!(
        !Path::new(&uds).exists(),
        "the device's socket outlived the VM"
    );
    api.check_schema(&dir.0);
}

/// MMDS through the API and the command line, Firecracker's: `--metadata`
/// fills the store, `PUT`/`PATCH`/`GET /mmds` change and show it (also
/// after the start), `PUT /mmds/config` is checked against the NICs and
/// the address rules, and the store keeps to `--mmds-size-limit`.
#[test]
fn mmds_store_and_config_are_served_and_checked() {
    let dir = Scratch::new("vm-api-mmds");
    let meta = dir.file(
        "meta.json",
        br#"{"latest":{"meta-data":{"ami-id":"ami-1"}}}"#,
    );
    let vm = Vm::start(
        &dir.0,
        None,
        &["--metadata", &meta, "--mmds-size-limit", "200"],
    );
    let api = Api::new(&vm.sock, "vm");
    let data = api.expect("GET", "/mmds", None, 200).json();
    assert_eq!(
        data["latest"]["meta-data"]["ami-id"].as_str(),
        Some("ami-1")
    );
    api.expect(
        "PATCH",
        "/mmds",
        Some(r#"{"latest":{"meta-data":{"ami-id":null,"host":"h"}}}"#),
        204,
    );
    let data = api.expect("GET", "/mmds", None, 200).json();
    assert_eq!(data["latest"]["meta-data"]["host"].as_str(), Some("h"));
    assert!(data["latest"]["meta-data"]["ami-id"].is_null());
    let big = format!(r#"{{"k":"{}"}}"#, "v".repeat(300));
    api.expect_fault("PUT", "/mmds", &big, 400, "limit of 200");
    api.expect_fault("PATCH", "/mmds", &big, 400, "limit of 200");
    // Nothing changed by the refused requests.
    let after = api.expect("GET", "/mmds", None, 200).json();
    assert_eq!(after["latest"]["meta-data"]["host"].as_str(), Some("h"));
    api.expect_fault(
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces":[]}"#,
        400,
        "is empty",
    );
    api.expect_fault(
        "PUT",
        "/mmds/config",
        r#"{"network_interfaces":["eth0"]}"#,
        400,
        "\"eth0\"",
    );
    api.expect(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth0","host_dev_name":"tap0"}"#),
        204,
    );
    for (body, needle) in [
        (
            r#"{"network_interfaces":["eth0"],"ipv4_address":"10.0.0.1"}"#,
            "not link local",
        ),
        (
            r#"{"network_interfaces":["eth0"],"ipv4_address":"169.254.0.9"}"#,
            "not link local",
        ),
        (r#"{"network_interfaces":["eth0"],"version":"V3"}"#, "V3"),
        (r#"{"network_interfaces":["eth0"],"bogus":1}"#, "bogus"),
    ] {
        api.expect_fault("PUT", "/mmds/config", body, 400, needle);
    }
    api.expect(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces":["eth0"],"version":"V2","ipv4_address":"169.254.170.2"}"#),
        204,
    );
    let config = api.expect("GET", "/vm/config", None, 200).json();
    assert_eq!(config["mmds-config"]["version"].as_str(), Some("V2"));
    assert_eq!(
        config["mmds-config"]["ipv4_address"].as_str(),
        Some("169.254.170.2")
    );
    api.expect_fault("DELETE", "/mmds", "{}", 400, "Invalid request");
    api.check_schema(&dir.0);

    // Bad --metadata files: one line, status 1.
    for (name, text, needle) in [
        ("bad.json", &b"{"[..], "--metadata"),
        ("huge.json", &[b' '; 300][..], "larger than"),
    ] {
        let file = dir.file(name, text);
        let run = dir.0.join(name.trim_end_matches(".json"));
        std::fs::create_dir_all(&run).unwrap();
        let mut vm = Vm::start(
            &run,
            None,
            &["--metadata", &file, "--mmds-size-limit", "200"],
        );
        let (code, err) = vm.wait_exit();
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
    // The config file's section is checked as the API's body is.
    config_is_refused(
        &dir,
        r#"{"mmds-config":{"network_interfaces":["eth9"]}}"#,
        "mmds-config",
    );
}

/// MMDS from inside Linux, as an EC2-style client reads it: the guest
/// routes the service's address to eth0, takes a V2 session token with a
/// `PUT` (busybox nc), reads its `ami-id` with it (busybox wget), and is
/// refused without one; a `PATCH /mmds` while it runs shows up in its next
/// read. The service's frames never reach the host's tap.
#[test]
#[ignore = hardware_kvm!()]
fn linux_reads_mmds_v2_with_a_session_token() {
    require_hardware_kvm();
    let dir = Scratch::new("vm-api-linux-mmds");
    let ns = Netns::new("vmapi-mmds", &["tap0"]);
    let meta = dir.file(
        "meta.json",
        br#"{"latest":{"meta-data":{"ami-id":"ami-1"}}}"#,
    );
    let mut vm = Vm::start(&dir.0, Some(&ns), &["--metadata", &meta]);
    let api = Api::new(&vm.sock, "vm");
    api.expect(
        "PUT",
        "/network-interfaces/eth0",
        Some(r#"{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}"#),
        204,
    );
    api.expect(
        "PUT",
        "/mmds/config",
        Some(r#"{"network_interfaces":["eth0"],"version":"V2"}"#),
        204,
    );
    boot_linux(
        &api,
        "ip=172.31.9.2::172.31.9.1:255.255.255.0::eth0:off strato_mmds=169.254.169.254 strato_noreboot",
        false,
    );
    let tap_rx = || {
        let out = ns.exec(&["cat", "/sys/class/net/tap0/statistics/rx_bytes"]);
        out.trim().parse::<u64>().unwrap_or(0)
    };
    vm.wait_console("STRATO_MMDS=ami-1 TOKEN=64 NOTOKEN=1");
    let before = tap_rx();
    api.expect(
        "PATCH",
        "/mmds",
        Some(r#"{"latest":{"meta-data":{"ami-id":"ami-2"}}}"#),
        204,
    );
    vm.wait_console("STRATO_MMDS=ami-2 TOKEN=64 NOTOKEN=1");
    // Several sessions went by in between, none of it through the tap.
    let after = tap_rx();
    assert!(
        after - before < 1000,
        "{} bytes reached the tap while the guest read MMDS",
        after - before
    );
    api.action("Shutdown");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}\n{}", vm.console_text());
    api.check_schema(&dir.0);
}

/// Firecracker's static templates as they fit this host's CPU.
struct HostTemplates {
    /// The host's CPUID vendor string.
    vendor: String,
    /// The template for it: T2A on AMD, T2 on Intel.
    native: &'static str,
    /// One for the other vendor.
    foreign: &'static str,
    /// The vendor that one is for.
    foreign_vendor: &'static str,
}

fn host_templates() -> HostTemplates {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let vendor = info
        .lines()
        .find_map(|l| l.strip_prefix("vendor_id"))
        .and_then(|v| v.split(':').nth(1))
        .expect("vendor_id in /proc/cpuinfo")
        .trim()
        .to_string();
    let amd = vendor == "AuthenticAMD";
    HostTemplates {
        vendor,
        native: if amd { "T2A" } else { "T2" },
        foreign: if amd { "T2" } else { "T2A" },
        foreign_vendor: if amd { "GenuineIntel" } else { "AuthenticAMD" },
    }
}

/// The static template for this host's vendor (T2A on AMD hosts, T2 on
/// Intel ones; the two change leaves 1 and 7 alike) shows the guest a T2
/// instance's CPU: each register the `cpuid` guest prints is the one it
/// reads without a template with Firecracker's bits applied, and the
/// signature is family 6, model 0x3f. Hardware-style KVM only: software
/// KVM here runs the guest's CPUID instruction on the host CPU, unseen.
#[test]
#[ignore = hardware_kvm!()]
fn static_cpu_template_changes_the_guest_s_cpuid() {
    require_hardware_kvm();
    let host = host_templates();
    let dir = Scratch::new("vm-api-static-cpuid");
    let plain = cpuid_console(&dir, "plain", "", "");
    let machine = format!(r#","cpu_template":"{}""#, host.native);
    let masked = cpuid_console(&dir, "masked", &machine, "");
    eprintln!("{} on {}:\n{plain}\n{masked}", host.native, host.vendor);
    // (line, register, the template's filter, its value), from
    // Firecracker's T2 and T2A.
    let bits = [
        ("cpuid: 1 ", "eax", 0x0fff_3fff, 0x0003_06f2),
        ("cpuid: 1 ", "ecx", 0x0004_cdfc, 0),
        ("cpuid: 1 ", "edx", 0xe864_1080, 0x0000_1080),
        ("cpuid: 7 ", "ebx", 0xffef_da14, 0x0000_0200),
        ("cpuid: msr ", "1a0", 0, 0),
    ];
    for (line, reg, filter, value) in bits {
        let before = cpuid_field(&plain, line, reg);
        assert_eq!(
            cpuid_field(&masked, line, reg),
            (before & !filter) | value,
            "{line}{reg}: {before:#x} without the template"
        );
    }
    let eax = cpuid_field(&masked, "cpuid: 1 ", "eax");
    assert_eq!((eax >> 8) & 0xf, 6, "family");
    assert_eq!((eax >> 12) & 0xf0 | (eax >> 4) & 0xf, 0x3f, "model");
    assert_ne!(cpuid_field(&plain, "cpuid: 1 ", "eax"), eax);
}

/// Static templates through the config file and the API: the one for this
/// host's vendor is taken, shown back as set and boots, its guest reading
/// the template's leaf 1 signature; one for the other vendor, or the other
/// architecture, is refused with 400 naming why; the template set last
/// applies, static or custom.
#[test]
fn static_cpu_templates_fit_the_host_s_vendor() {
    let host = host_templates();
    let dir = Scratch::new("vm-api-static-template");
    let plain = cpuid_console(&dir, "plain", "", "");
    let native = format!(r#","cpu_template":"{}""#, host.native);
    let console = cpuid_console(&dir, "native", &native, "");
    // Leaf 1 EAX is the vCPU's here too (software KVM passes leaf 1 from
    // the vCPU's CPUID, leaf 7 from the host's): a T2's family 6, model
    // 0x3f, stepping 2 in place of the host's.
    let eax = |console: &str| cpuid_field(console, "cpuid: 1 ", "eax");
    assert_eq!(
        eax(&console),
        eax(&plain) & !0x0fff_3fff | 0x0003_06f2,
        "{plain}\n{console}"
    );
    assert_ne!(eax(&plain) & 0x0fff_3fff, 0x0003_06f2, "{plain}");

    // The other vendor's: refused before anything starts.
    let config = format!(
        r#"{{"boot-source":{{"kernel_image_path":"{}"}},"machine-config":{{"vcpu_count":1,"mem_size_mib":32,"cpu_template":"{}"}}}}"#,
        guest("cpuid").display(),
        host.foreign
    );
    let (_, code, err) = run_config_file(&dir, "foreign", &config);
    assert_ne!(code, 0, "{err}");
    for needle in [host.foreign, host.foreign_vendor, host.vendor.as_str()] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }

    let run = dir.0.join("api");
    std::fs::create_dir_all(&run).unwrap();
    let mut vm = Vm::start(&run, None, &[]);
    let api = Api::new(&vm.sock, "vm");
    let machine = |template: &str| {
        format!(r#"{{"vcpu_count":1,"mem_size_mib":32,"cpu_template":"{template}"}}"#)
    };
    api.expect("PUT", "/machine-config", Some(&machine(host.native)), 204);
    let m = api.expect("GET", "/machine-config", None, 200).json();
    assert_eq!(m["cpu_template"], host.native);
    let foreign = machine(host.foreign);
    for needle in [
        format!(
            "cpu_template {} is for {}",
            host.foreign, host.foreign_vendor
        ),
        format!("this host's CPU is {}", host.vendor),
    ] {
        api.expect_fault("PUT", "/machine-config", &foreign, 400, &needle);
    }
    api.expect_fault(
        "PATCH",
        "/machine-config",
        r#"{"cpu_template":"V1N1"}"#,
        400,
        "cpu_template V1N1 is for aarch64",
    );
    let m = api.expect("GET", "/machine-config", None, 200).json();
    assert_eq!(
        m["cpu_template"], host.native,
        "refused ones change nothing"
    );
    // A custom template replaces it, and it replaces a custom one.
    api.expect("PUT", "/cpu-config", Some(&cpuid_template(31)), 204);
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    assert!(cfg["machine-config"]["cpu_template"].is_null(), "{cfg:?}");
    let patch = format!(r#"{{"cpu_template":"{}"}}"#, host.native);
    api.expect("PATCH", "/machine-config", Some(&patch), 204);
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    assert!(cfg["cpu-config"].is_null(), "{cfg:?}");
    assert_eq!(cfg["machine-config"]["cpu_template"], host.native);
    let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, guest("cpuid").display());
    api.expect("PUT", "/boot-source", Some(&boot), 204);
    api.action("InstanceStart");
    let (code, err) = vm.wait_exit();
    assert_eq!(code, 0, "{err}");
    // The custom template's MSR bit is gone with it.
    assert_eq!(cpuid_report(&vm.console_text()).3 & (1 << 22), 0);
    api.check_schema(&dir.0);
}
