//! `strato serve` end to end, over its unix socket, with tiny guests: many
//! instances at once, stop and kill, crashes noticed without a request, a
//! daemon restart that adopts running instances, the command-line client,
//! and bad requests that must leave nothing behind. Every response is
//! checked against api/openapi/daemon.yaml.

mod api;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use api::{
    alive, create_body, kill, pid_of, raw_request, state, wait_console, wait_console_for, wait_for,
    wait_state, Api, Daemon, Json, Netns,
};
use strato_tests::{
    guest, hardware_kvm, linux_image, mem_total_kib, random_bytes, require_hardware_kvm,
    strato_bin, tiny_elf, Scratch,
};

// Upper bounds, not expectations: a Linux boot in the emulated lane takes
// tens of seconds and varies with the lane's load.
const LONG: Duration = Duration::from_secs(180);

#[test]
fn instances_run_stop_crash_and_survive_a_daemon_restart() {
    let dir = Scratch::new("daemon-life");
    let mut daemon = Daemon::start(&dir.0, &["--stop-timeout-ms", "10000"]);
    let api = Api::new(&daemon.sock, "daemon");
    let mode = std::fs::metadata(&daemon.sock)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "daemon socket mode");

    // Three at once; an id may begin with '-' (not an option to the VMM).
    let ids = ["-vm-a", "vm-b", "vm-c"];
    let threads: Vec<_> = ids
        .iter()
        .map(|id| {
            let api = api.clone();
            let body = create_body(id, "idle", "");
            std::thread::spawn(move || api.call("POST", "/v1/instances", Some(&body)))
        })
        .collect();
    for (t, id) in threads.into_iter().zip(ids) {
        let r = t.join().unwrap();
        assert_eq!(r.status, 201, "create {id}: {}", r.text());
        let v = r.json();
        assert_eq!(v["id"], id);
        assert_eq!(v["state"], "running");
        assert!(v["pid"].as_i64().is_some());
        assert_eq!(v["config"]["memory_mib"].as_u64(), Some(32));
    }
    for id in ids {
        wait_console(&api, id, "idle: ready");
    }
    let list = api.expect("GET", "/v1/instances", None, 200).json();
    let listed: Vec<(String, String)> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().into(),
                i["state"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        listed,
        ids.iter()
            .map(|i| (i.to_string(), "running".to_string()))
            .collect::<Vec<_>>()
    );
    let pids: Vec<i32> = ids.iter().map(|id| pid_of(&api, id)).collect();
    assert_eq!(
        daemon.vmm_pids().len(),
        3,
        "one VMM process each:\n{}",
        daemon.processes(&api)
    );

    // Stop vm-b: the idle guest ignores Ctrl-Alt-Del, so it is killed
    // after the (short) timeout and ends stopped.
    let r = api.expect("POST", "/v1/instances/vm-b/stop?timeout_ms=300", None, 200);
    let v = r.json();
    assert_eq!(v["state"], "stopped", "{v:?}");
    assert!(v["pid"].is_null());
    assert!(
        v["exit_reason"]
            .as_str()
            .unwrap()
            .contains("no shutdown within 300 ms"),
        "{v:?}"
    );
    assert!(!alive(pids[1]), "vm-b's process is gone");
    assert!(!dir.0.join("state/vm-b/api.sock").exists());
    assert_eq!(state(&api, "-vm-a"), "running");
    assert_eq!(state(&api, "vm-c"), "running");

    // SIGKILL vm-c's VMM from outside: the monitor marks it crashed.
    kill(pids[2], libc::SIGKILL);
    let v = wait_state(&api, "vm-c", "crashed");
    assert!(
        v["exit_reason"]
            .as_str()
            .unwrap()
            .contains("killed by signal 9"),
        "{v:?}"
    );
    assert_eq!(v["exit_status"].as_i64(), Some(137));
    assert_eq!(state(&api, "-vm-a"), "running");

    // Start vm-b again; it boots a second time.
    let v = api
        .expect("POST", "/v1/instances/vm-b/start", None, 200)
        .json();
    assert_eq!(v["state"], "running");
    assert!(v["exit_reason"].is_null());
    wait_for("vm-b's second boot", LONG, || {
        let t = api.get("/v1/instances/vm-b/console").text();
        (t.matches("idle: ready").count() == 2).then_some(())
    });
    let b_pid = pid_of(&api, "vm-b");

    // The daemon dies; its instances do not. A new daemon adopts them.
    daemon.crash();
    assert!(alive(pids[0]) && alive(b_pid), "VMMs outlive the daemon");
    let daemon2 = Daemon::start(&dir.0, &["--stop-timeout-ms", "10000"]);
    let api = api.with_sock(&daemon2.sock);
    let list = api.expect("GET", "/v1/instances", None, 200).json();
    let got: Vec<(String, String, Option<i64>)> = list["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap().into(),
                i["state"].as_str().unwrap().into(),
                i["pid"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("-vm-a".into(), "running".into(), Some(pids[0] as i64)),
            ("vm-b".into(), "running".into(), Some(b_pid as i64)),
            ("vm-c".into(), "crashed".into(), None),
        ]
    );
    // Still controllable.
    let v = api
        .expect("POST", "/v1/instances/-vm-a/pause", None, 200)
        .json();
    assert_eq!(v["state"], "paused");
    assert_eq!(state(&api, "-vm-a"), "paused");
    api.expect("POST", "/v1/instances/-vm-a/pause", None, 409);
    let v = api
        .expect("POST", "/v1/instances/-vm-a/resume", None, 200)
        .json();
    assert_eq!(v["state"], "running");
    let v = api
        .expect("POST", "/v1/instances/-vm-a/stop?timeout_ms=200", None, 200)
        .json();
    assert_eq!(v["state"], "stopped");
    assert!(!alive(pids[0]));
    // An adopted child killed from outside is noticed too.
    kill(b_pid, libc::SIGKILL);
    let v = wait_state(&api, "vm-b", "crashed");
    assert!(v["exit_reason"].as_str().is_some());

    // Delete removes everything: processes, sockets, files.
    api.expect("POST", "/v1/instances/vm-b/start", None, 200);
    for id in ids {
        api.expect(
            "DELETE",
            &format!("/v1/instances/{id}?timeout_ms=200"),
            None,
            204,
        );
        api.expect("GET", &format!("/v1/instances/{id}"), None, 404);
    }
    assert!(
        daemon2.instance_dirs().is_empty(),
        "{:?}",
        daemon2.instance_dirs()
    );
    assert!(daemon2.vmm_pids().is_empty(), "{:?}", daemon2.vmm_pids());
    let list = api.expect("GET", "/v1/instances", None, 200).json();
    assert_eq!(list["instances"].as_array().map(|a| a.len()), Some(0));
    api.check_schema(&dir.0);
}

#[test]
fn guests_that_end_by_themselves() {
    let dir = Scratch::new("daemon-ends");
    let daemon = Daemon::start(&dir.0, &[]);
    let api = Api::new(&daemon.sock, "daemon");

    // A clean reset is "stopped" with the VMM's reason, without a request.
    api.expect(
        "POST",
        "/v1/instances",
        Some(&create_body("hello", "hello", "")),
        201,
    );
    let v = wait_state(&api, "hello", "stopped");
    assert_eq!(v["exit_reason"], "guest reset");
    assert_eq!(v["exit_status"].as_i64(), Some(0));
    wait_console(&api, "hello", "Hello from strato test guest");

    // A triple fault is "crashed".
    api.expect(
        "POST",
        "/v1/instances",
        Some(&create_body("tf", "triple-fault", "")),
        201,
    );
    let v = wait_state(&api, "tf", "crashed");
    assert!(
        v["exit_reason"].as_str().unwrap().contains("triple fault"),
        "{v:?}"
    );
    assert_eq!(v["exit_status"].as_i64(), Some(3));

    // The kbd guest resets when it reads Ctrl-Alt-Del: a stop is clean
    // and quick.
    let kbd = create_body("kbd", "kbd", r#","cmdline":"timeout=600000""#);
    api.expect("POST", "/v1/instances", Some(&kbd), 201);
    wait_console(&api, "kbd", "kbd: ready");
    let v = api
        .expect("POST", "/v1/instances/kbd/stop", None, 200)
        .json();
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["exit_reason"], "guest reset");
    assert_eq!(v["exit_status"].as_i64(), Some(0));
    wait_console(&api, "kbd", "kbd: 14 11 e0 71 e0 f0 71 f0 11 f0 14");

    // Console tail.
    let r = api.expect("GET", "/v1/instances/hello/console?bytes=6", None, 200);
    assert_eq!(r.text(), "guest\n");
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));

    // Kill on request is "stopped" too.
    api.expect(
        "POST",
        "/v1/instances",
        Some(&create_body("k", "idle", "")),
        201,
    );
    let v = api.expect("POST", "/v1/instances/k/kill", None, 200).json();
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["exit_reason"], "killed on request");
    for id in ["hello", "tf", "kbd", "k"] {
        api.expect("DELETE", &format!("/v1/instances/{id}"), None, 204);
    }
    assert!(daemon.vmm_pids().is_empty());
    api.check_schema(&dir.0);
}

/// Asserts that a request failed with `status` and a message containing
/// `needle`, and that it left no instance directory and no process.
fn refused(
    api: &Api,
    daemon: &Daemon,
    method: &str,
    path: &str,
    body: &str,
    status: u16,
    needle: &str,
) {
    let before = daemon.instance_dirs();
    let r = api.call(method, path, Some(body));
    assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text());
    assert!(
        r.fault().contains(needle),
        "{method} {path} {body}: {:?} lacks {needle:?}",
        r.fault()
    );
    assert_eq!(daemon.instance_dirs(), before, "{body} left a directory");
    assert!(daemon.vmm_pids().is_empty(), "{body} left a process");
}

#[test]
fn bad_requests_are_refused_and_leave_nothing_behind() {
    let dir = Scratch::new("daemon-bad");
    let daemon = Daemon::start(&dir.0, &["--stop-timeout-ms", "200"]);
    let api = Api::new(&daemon.sock, "daemon");
    let idle = guest("idle");
    let idle = idle.to_str().unwrap();
    let junk = dir.file("junk.bin", &[0x5a; 4096]);
    let body = |extra: &str| format!(r#"{{"id":"x","kernel":"{idle}"{extra}}}"#);
    let post = |b: &str, status: u16, needle: &str| {
        refused(&api, &daemon, "POST", "/v1/instances", b, status, needle)
    };

    post("{", 400, "invalid request body");
    post("[]", 400, "invalid request body");
    post(r#"{"id":"x"}"#, 400, "missing field `kernel`");
    post(&body(r#","bogus":1"#), 400, "unknown field `bogus`");
    post(&body(r#","vcpus":"two""#), 400, "invalid type");
    post(&body(r#","vcpus":-1"#), 400, "invalid value");
    post(&body(r#","memory_mib":1e400"#), 400, "invalid request body");
    post(
        &format!(r#"{{"id":"a/b","kernel":"{idle}"}}"#),
        400,
        "invalid instance id",
    );
    post(
        &format!(r#"{{"id":"","kernel":"{idle}"}}"#),
        400,
        "invalid instance id",
    );
    post(
        &format!(r#"{{"id":"{}","kernel":"{idle}"}}"#, "x".repeat(65)),
        400,
        "invalid instance id",
    );
    post(&body(r#","vcpus":0"#), 400, "vcpus must be 1 to");
    post(&body(r#","vcpus":255"#), 400, "vcpus must be 1 to");
    post(&body(r#","memory_mib":0"#), 400, "at least 16");
    post(
        &body(r#","memory_mib":1000000000"#),
        400,
        "more than the host",
    );
    post(
        r#"{"id":"x","kernel":"/nonexistent/vmlinux"}"#,
        400,
        "kernel /nonexistent/vmlinux",
    );
    post(r#"{"id":"x","kernel":"/tmp"}"#, 400, "not a regular file");
    post(r#"{"id":"x","kernel":"vmlinux"}"#, 400, "must be absolute");
    post(
        &body(r#","initrd":"/nonexistent/initrd""#),
        400,
        "initrd /nonexistent/initrd",
    );
    post(
        &body(&format!(r#","cmdline":"{}""#, "x".repeat(4096))),
        400,
        "cmdline",
    );
    post(
        &body(r#","drives":[{"id":"root","path":"/nonexistent/rootfs"}]"#),
        400,
        "drive root /nonexistent/rootfs",
    );
    post(
        &body(&format!(
            r#","drives":[{{"id":"a","path":"{junk}","root":true}},{{"id":"b","path":"{junk}","root":true}}]"#
        )),
        400,
        "only one drive can be the root",
    );
    post(
        &body(r#","drives":[{"id":"r","path":"/tmp","size":1}]"#),
        400,
        "unknown field `size`",
    );
    post(
        &body(r#","nets":[{"id":"eth0","tap":"strato-none0"}]"#),
        400,
        "tap device strato-none0 does not exist",
    );
    post(
        &body(r#","nets":[{"id":"eth0","tap":"lo","mac":"01:00:5e:00:00:01"}]"#),
        400,
        "multicast",
    );
    post(
        &body(r#","nets":[{"id":"eth0","tap":"lo","mac":"06:00:zz:00:00:01"}]"#),
        400,
        "invalid MAC address",
    );
    // Passes validation, fails in the VMM: the process is killed and the
    // instance never appears.
    post(
        &format!(r#"{{"id":"x","memory_mib":32,"kernel":"{junk}"}}"#),
        400,
        "the VM did not start",
    );
    api.expect("GET", "/v1/instances/x", None, 404);
    // Oversized body.
    let huge = format!(
        r#"{{"id":"x","kernel":"{idle}","cmdline":"{}"}}"#,
        "y".repeat(70_000)
    );
    post(&huge, 413, "larger than");

    // Unknown instances, endpoints and methods.
    for (m, p) in [
        ("GET", "/v1/instances/nope"),
        ("PATCH", "/v1/instances/nope"),
        ("DELETE", "/v1/instances/nope"),
        ("POST", "/v1/instances/nope/start"),
        ("POST", "/v1/instances/nope/stop"),
        ("GET", "/v1/instances/nope/console"),
    ] {
        let body = (m == "PATCH").then_some(r#"{"vcpus":1}"#);
        let r = api.call(m, p, body);
        assert_eq!(r.status, 404, "{m} {p}: {}", r.text());
        assert!(r.fault().contains("no instance \"nope\""), "{}", r.fault());
    }
    assert_eq!(api.get("/v2/instances").status, 404);
    assert_eq!(api.get("/").status, 404);
    let r = api.call("PUT", "/v1/instances", Some("{}"));
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, POST"));
    assert_eq!(api.get("/v1/instances/nope/stop").status, 405);

    // State conflicts on a created (not started) instance.
    let created = body(r#","start":false"#);
    let v = api
        .expect("POST", "/v1/instances", Some(&created), 201)
        .json();
    assert_eq!(v["state"], "created");
    assert!(v["pid"].is_null());
    refused(
        &api,
        &daemon,
        "POST",
        "/v1/instances",
        &created,
        409,
        "already exists",
    );
    for action in ["stop", "kill", "pause", "resume"] {
        let r = api.call("POST", &format!("/v1/instances/x/{action}"), None);
        assert_eq!(r.status, 409, "{action}: {}", r.text());
        assert!(r.fault().contains("it is created"), "{}", r.fault());
    }
    assert_eq!(api.get("/v1/instances/x/console").text(), "");
    let r = api.expect("GET", "/v1/instances/x/console?bytes=x", None, 400);
    assert!(r.fault().contains("bytes"), "{}", r.fault());
    api.expect(
        "GET",
        "/v1/instances/x/console?bytes=99999999999",
        None,
        400,
    );

    // Resize: checked, only while not running.
    let v = api
        .expect(
            "PATCH",
            "/v1/instances/x",
            Some(r#"{"vcpus":2,"memory_mib":48}"#),
            200,
        )
        .json();
    assert_eq!(v["config"]["vcpus"].as_u64(), Some(2));
    assert_eq!(v["config"]["memory_mib"].as_u64(), Some(48));
    for (b, needle) in [
        ("{}", "give vcpus"),
        (r#"{"vcpus":0}"#, "vcpus must be"),
        (r#"{"memory_mib":8}"#, "at least 16"),
        (r#"{"vcpus":null}"#, "invalid"),
        (r#"{"cpus":1}"#, "unknown field"),
        ("nope", "invalid request body"),
    ] {
        let r = api.expect("PATCH", "/v1/instances/x", Some(b), 400);
        assert!(r.fault().contains(needle), "{b}: {}", r.fault());
    }
    let v = api
        .expect("POST", "/v1/instances/x/start", None, 200)
        .json();
    assert_eq!(v["state"], "running");
    assert_eq!(v["config"]["vcpus"].as_u64(), Some(2));
    wait_console(&api, "x", "idle: ready");
    // Running: the memory can shrink through the balloon and grow back to
    // the boot size, not beyond it; vCPUs only up to the room the instance
    // was started with (max_vcpus, here the boot count).
    let r = api.expect(
        "PATCH",
        "/v1/instances/x",
        Some(r#"{"memory_mib":64}"#),
        409,
    );
    assert!(
        r.fault().contains("started with 48 MiB") && r.fault().contains("stop it to give it 64"),
        "{}",
        r.fault()
    );
    // This guest has no balloon driver: the size is asked for and kept,
    // and `actual` says the guest still has it all.
    let v = api
        .expect(
            "PATCH",
            "/v1/instances/x",
            Some(r#"{"memory_mib":32}"#),
            200,
        )
        .json();
    assert_eq!(v["config"]["memory_mib"].as_u64(), Some(32));
    assert_eq!(v["actual"]["memory_mib"].as_u64(), Some(48), "{v:?}");
    let v = api
        .expect(
            "PATCH",
            "/v1/instances/x",
            Some(r#"{"memory_mib":48}"#),
            200,
        )
        .json();
    assert_eq!(v["config"]["memory_mib"].as_u64(), Some(48));
    assert_eq!(v["actual"]["memory_mib"].as_u64(), Some(48), "{v:?}");
    let r = api.expect("PATCH", "/v1/instances/x", Some(r#"{"vcpus":3}"#), 400);
    assert!(r.fault().contains("room for 2 vCPUs"), "{}", r.fault());
    api.expect("POST", "/v1/instances/x/start", None, 409);
    api.expect("POST", "/v1/instances/x/resume", None, 409);
    api.expect("POST", "/v1/instances/x/stop?timeout_ms=abc", None, 400);
    api.expect(
        "POST",
        "/v1/instances/x/stop?timeout_ms=99999999999",
        None,
        400,
    );
    api.expect("DELETE", "/v1/instances/x?timeout_ms=-5", None, 400);
    assert_eq!(state(&api, "x"), "running");

    // Concurrent operations on one instance are serialized: of two stops,
    // one stops it and the other finds it stopped.
    let a = {
        let api = api.clone();
        std::thread::spawn(move || api.call("POST", "/v1/instances/x/stop", None).status)
    };
    let b = api.call("POST", "/v1/instances/x/stop", None).status;
    let mut both = [a.join().unwrap(), b];
    both.sort();
    assert_eq!(both, [200, 409]);
    api.expect("DELETE", "/v1/instances/x", None, 204);
    assert!(daemon.instance_dirs().is_empty());
    assert!(daemon.vmm_pids().is_empty());
    let log = daemon.log_text();
    assert!(!log.contains("panicked"), "{log}");
    api.check_schema(&dir.0);
}

/// Hostile clients neither crash the daemon nor hold up its API, and a
/// JSON array where the spec wants an object is refused, not read as the
/// fields in order.
#[test]
fn hostile_http_clients_are_refused_and_block_nobody() {
    let dir = Scratch::new("daemon-hostile");
    let daemon = Daemon::start(&dir.0, &[]);
    let api = Api::new(&daemon.sock, "daemon");
    api::hostile::check(&daemon.sock, daemon.child.id() as i32, "/v1/instances", 64);

    let hello = guest("hello");
    let array = format!(
        r#"["arr",1,16,"{}",null,null,[],[],false]"#,
        hello.display()
    );
    refused(
        &api,
        &daemon,
        "POST",
        "/v1/instances",
        &array,
        400,
        "expected a JSON object",
    );
    api.expect("GET", "/v1/instances/arr", None, 404);
    api.expect(
        "POST",
        "/v1/instances",
        Some(&create_body("obj", "idle", r#","start":false"#)),
        201,
    );
    api.expect_fault(
        "PATCH",
        "/v1/instances/obj",
        "[2,64]",
        400,
        "expected a JSON object",
    );
    let v = api.expect("GET", "/v1/instances/obj", None, 200).json();
    assert_eq!(
        v["config"]["vcpus"].as_u64(),
        Some(1),
        "an array resized the instance"
    );
    api.check_schema(&dir.0);
}

/// A running instance's vCPUs change live: the tiny ACPI guest takes the
/// plug and eject events as Linux's ACPI would, `actual` follows, the new
/// count is kept for the next start, and bad sizes are refused without
/// touching the instance.
#[test]
fn vcpus_of_a_running_instance_change_live_and_are_kept() {
    let dir = Scratch::new("daemon-live-vcpus");
    let daemon = Daemon::start(&dir.0, &[]);
    let api = Api::new(&daemon.sock, "daemon");
    let body = create_body(
        "hp",
        "acpi",
        r#","cmdline":"action=cpus timeout=600000","max_vcpus":3"#,
    );
    let v = api.expect("POST", "/v1/instances", Some(&body), 201).json();
    assert_eq!(v["config"]["max_vcpus"].as_u64(), Some(3));
    wait_console(&api, "hp", "acpi: waiting for cpu events");
    let actual =
        |v: &Json| ["vcpus", "vcpus_inserting", "vcpus_removing"].map(|k| v["actual"][k].as_u64());
    let settled = |n: u64| {
        wait_for(&format!("{n} vCPUs in the guest"), LONG, || {
            let v = api.expect("GET", "/v1/instances/hp", None, 200).json();
            (actual(&v) == [Some(n), Some(0), Some(0)]).then_some(v)
        })
    };
    assert_eq!(actual(&settled(1)), [Some(1), Some(0), Some(0)]);
    let v = api
        .expect("PATCH", "/v1/instances/hp", Some(r#"{"vcpus":3}"#), 200)
        .json();
    assert_eq!(v["config"]["vcpus"].as_u64(), Some(3));
    assert_eq!(v["actual"]["vcpus"].as_u64(), Some(3), "plugged at once");
    settled(3);
    wait_console(&api, "hp", "acpi: cpu 2 plugged");
    api.expect("PATCH", "/v1/instances/hp", Some(r#"{"vcpus":2}"#), 200);
    settled(2);
    wait_console(&api, "hp", "acpi: cpu 2 ejected");
    for (b, status, needle) in [
        (r#"{"vcpus":4}"#, 400, "room for 3 vCPUs"),
        (r#"{"vcpus":0}"#, 400, "vcpus must be"),
        (
            r#"{"vcpus":2,"memory_mib":64}"#,
            409,
            "stop it to give it 64 MiB",
        ),
    ] {
        let r = api.expect("PATCH", "/v1/instances/hp", Some(b), status);
        assert!(r.fault().contains(needle), "{b}: {}", r.fault());
    }
    // Kept: stopped, the record still says 2, and a start boots 2.
    api.expect("POST", "/v1/instances/hp/kill", None, 200);
    let v = wait_state(&api, "hp", "stopped");
    assert_eq!(v["config"]["vcpus"].as_u64(), Some(2));
    assert!(v["actual"].is_null(), "{v:?}");
    api.expect("POST", "/v1/instances/hp/start", None, 200);
    wait_console(&api, "hp", "acpi: madt cpus 2 ioapics 1");
    api.expect("DELETE", "/v1/instances/hp?timeout_ms=100", None, 204);
    // A maximum below the count, or beyond the host: refused at create.
    for (extra, needle) in [
        (r#","vcpus":2,"max_vcpus":1"#, "max_vcpus must be vcpus (2)"),
        (r#","max_vcpus":255"#, "max_vcpus must be"),
    ] {
        let body = create_body("bad", "idle", extra).replacen(r#""vcpus":1,"#, "", 1);
        let r = api.expect("POST", "/v1/instances", Some(&body), 400);
        assert!(r.fault().contains(needle), "{extra}: {}", r.fault());
    }
    api.check_schema(&dir.0);
}

#[test]
fn drives_and_network_interfaces_reach_the_guest() {
    let dir = Scratch::new("daemon-io");
    let ns = Netns::new("daemon-io", &["tap0"]);
    let daemon = Daemon::start_in(&dir.0, Some(&ns), &[]);
    let api = Api::new(&daemon.sock, "daemon");
    let root = dir.file("root.img", &strato_tests::random_bytes(64 * 1024, 7));
    let data = dir.file("data.img", &strato_tests::random_bytes(64 * 1024, 8));
    let first = |p: &str| -> String {
        std::fs::read(p).unwrap()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    let devices = format!(
        r#","drives":[{{"id":"data","path":"{data}","readonly":true}},{{"id":"root","path":"{root}","root":true}}],"nets":[{{"id":"eth0","tap":"tap0","mac":"06:00:AC:10:00:05"}}]"#
    );
    // The tap must exist in the daemon's namespace.
    let missing = devices.replace(r#""tap":"tap0""#, r#""tap":"tap9""#);
    refused(
        &api,
        &daemon,
        "POST",
        "/v1/instances",
        &create_body("io", "many", &missing),
        400,
        "tap device tap9 does not exist",
    );
    let v = api
        .expect(
            "POST",
            "/v1/instances",
            Some(&create_body("io", "many", &devices)),
            201,
        )
        .json();
    assert_eq!(v["config"]["nets"][0]["mac"], "06:00:ac:10:00:05");
    assert_eq!(v["config"]["drives"][1]["root"].as_bool(), Some(true));
    let v = wait_state(&api, "io", "stopped");
    assert_eq!(v["exit_reason"], "guest reset");
    let console = wait_console(&api, "io", "many: 2 blk 1 net");
    // The root drive is vda, whatever its place in the request.
    for (n, path) in [(0, &root), (1, &data)] {
        let line = format!("many: blk {n} capacity 128 first-bytes {}", first(path));
        assert!(console.contains(&line), "{line:?} missing: {console}");
    }
    assert!(
        console.contains("many: net 0 mac 06:00:ac:10:00:05 sent"),
        "{console}"
    );
    api.expect("DELETE", "/v1/instances/io", None, 204);
    assert!(daemon.instance_dirs().is_empty());
    api.check_schema(&dir.0);
}

#[test]
fn socket_group_and_a_second_daemon() {
    let dir = Scratch::new("daemon-sock");
    let gid = unsafe_getgid();
    let daemon = Daemon::start(&dir.0, &["--api-sock-group", &gid.to_string()]);
    let meta = std::fs::metadata(&daemon.sock).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.gid(), gid);
    // A second daemon on the same state directory is refused.
    let out = std::process::Command::new(strato_bin())
        .args(["serve", "--api-sock"])
        .arg(dir.0.join("other.sock"))
        .arg("--state-dir")
        .arg(&daemon.state)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another daemon"), "{err}");
    // ... and so is one on a socket in use.
    let out = std::process::Command::new(strato_bin())
        .args(["serve", "--api-sock"])
        .arg(&daemon.sock)
        .arg("--state-dir")
        .arg(dir.0.join("state2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use"));
}

fn unsafe_getgid() -> u32 {
    // SAFETY: getgid has no side effects.
    unsafe { libc::getgid() }
}

/// Runs the client, returning (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(strato_bin())
        .args(args)
        .output()
        .expect("run strato");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn command_line_client() {
    let dir = Scratch::new("daemon-cli");
    let daemon = Daemon::start(&dir.0, &["--stop-timeout-ms", "200"]);
    let sock = daemon.sock.to_str().unwrap().to_string();
    let idle = guest("idle");
    let s = ["--api-sock", sock.as_str()];
    let with = |cmd: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![cmd[0].to_string()];
        v.extend(s.iter().map(|x| x.to_string()));
        v.extend(cmd[1..].iter().map(|x| x.to_string()));
        v
    };
    let run = |cmd: &[&str]| {
        let args = with(cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    };

    let (code, out, err) = run(&[
        "create",
        "--id",
        "web-1",
        "--kernel",
        idle.to_str().unwrap(),
        "--vcpus",
        "2",
        "--memory",
        "48",
        "--cmdline",
        "console=ttyS0",
        "--no-start",
    ]);
    assert_eq!(code, 0, "{err}");
    let v = Json::parse(&out).unwrap();
    assert_eq!(v["state"], "created");
    assert_eq!(v["config"]["cmdline"], "console=ttyS0");

    let (code, out, _) = run(&["list"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("ID"), "{out}");
    assert!(lines[1].starts_with("web-1  created  -"), "{out}");

    let (code, out, _) = run(&["start", "web-1"]);
    assert_eq!((code, out.trim()), (0, "web-1: running"));
    wait_for("the console via the client", LONG, || {
        let (code, out, _) = run(&["console", "web-1"]);
        (code == 0 && out.contains("idle: ready")).then_some(())
    });
    let (code, out, _) = run(&["show", "web-1"]);
    assert_eq!(code, 0);
    assert_eq!(
        Json::parse(&out).unwrap()["config"]["vcpus"].as_u64(),
        Some(2)
    );
    assert_eq!(run(&["pause", "web-1"]).1.trim(), "web-1: paused");
    assert_eq!(run(&["resume", "web-1"]).1.trim(), "web-1: running");

    // Errors: exit 1 with the daemon's message.
    let (code, _, err) = run(&["resize", "web-1", "--memory", "64"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("stop it to give it 64 MiB") && err.contains("409"),
        "{err}"
    );
    let (code, _, err) = run(&["resize", "web-1", "--vcpus", "3"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("room for 2 vCPUs") && err.contains("400"),
        "{err}"
    );
    // A live shrink the idle guest never acts on: the client shows where
    // it stands and gives up after --wait-s.
    let (code, out, err) = run(&["resize", "web-1", "--vcpus", "1", "--wait-s", "1"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(
            "web-1: vCPUs 2 present of 1 requested, 1 being unplugged; memory 48 of 48 MiB"
        ),
        "{out}"
    );
    assert!(err.contains("has not taken the change after 1 s"), "{err}");
    let (code, _, err) = run(&["show", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no instance"), "{err}");
    let (code, _, err) = run(&["create", "--id", "bad", "--kernel", "/nonexistent"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent"), "{err}");
    let (code, _, err) = run(&[
        "create", "--id", "bad", "--kernel", "/x", "--drive", "ro=on",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("path=FILE is required"), "{err}");
    let (code, _, err) = cli(&["list", "--api-sock", "/nonexistent.sock"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the daemon"), "{err}");

    let (code, out, _) = run(&["stop", "web-1", "--timeout-ms", "100"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("web-1: stopped (no shutdown within 100 ms"),
        "{out}"
    );
    let (code, out, _) = run(&["resize", "web-1", "--vcpus", "1", "--memory", "64"]);
    assert_eq!(code, 0);
    let v = Json::parse(&out).unwrap();
    assert_eq!(v["config"]["vcpus"].as_u64(), Some(1));
    assert_eq!(v["config"]["memory_mib"].as_u64(), Some(64));
    assert_eq!(run(&["start", "web-1"]).0, 0);
    assert_eq!(
        run(&["kill", "web-1"]).1.trim(),
        "web-1: stopped (killed on request)"
    );
    let (code, out, _) = run(&["delete", "web-1"]);
    assert_eq!((code, out.as_str()), (0, ""));
    assert!(daemon.instance_dirs().is_empty());
    assert!(daemon.vmm_pids().is_empty());
}

/// Asks `ip:port` (from inside `ns`) for what the guest's server answers.
fn ask(ns: &Netns, ip: &str, port: u16) -> std::io::Result<Vec<u8>> {
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().expect("address");
    ns.run(move || {
        use std::io::Read;
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)?;
        Ok(answer)
    })
    .join()
    .expect("client thread")
}

/// Three Linux instances at once through the daemon, each with its own
/// root disk, data disk and NIC, each serving TCP from user space; stopping
/// one leaves the other two serving.
#[test]
#[ignore = hardware_kvm!()]
fn three_linux_instances_serve_tcp_and_survive_a_neighbour_stopping() {
    require_hardware_kvm();
    let dir = Scratch::new("daemon-linux");
    let taps = ["tap0", "tap1", "tap2"];
    let ns = Netns::new("daemon-linux", &taps);
    let daemon = Daemon::start_in(&dir.0, Some(&ns), &["--stop-timeout-ms", "30000"]);
    let api = Api::new(&daemon.sock, "daemon");
    let ids = ["web-0", "web-1", "web-2"];
    let mut answers = Vec::new();
    let threads: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let net = 10 + i;
            ns.exec(&["ip", "addr", "add", &format!("172.31.{net}.1/24"), "dev", taps[i]]);
            let mut data = random_bytes(64, 50 + i as u64);
            data.resize(1 << 20, 0);
            answers.push(data[..64].to_vec());
            let data = dir.file(&format!("{id}-data.img"), &data);
            // x86_64: the project kernel on its ext4 root (vda). aarch64:
            // Debian's arm64 kernel with the initramfs, and a spare vda, so
            // that the data disk is vdb on both.
            let (boot, first_drive) = if std::env::consts::ARCH == "aarch64" {
                let spare = dir.file(&format!("{id}-spare.img"), &[0; 4096]);
                (
                    format!(
                        r#""kernel":"{}","initrd":"{}","cmdline":"console=ttyS0 reboot=k panic=1"#,
                        linux_image("ARM64_KERNEL"),
                        linux_image("ARM64_INITRAMFS")
                    ),
                    format!(r#"{{"id":"spare","path":"{spare}"}}"#),
                )
            } else {
                let root = dir.path(&format!("{id}-root.ext4"));
                std::fs::copy(linux_image("ROOTFS"), &root).expect("copy the root image");
                (
                    format!(
                        r#""kernel":"{}","cmdline":"console=ttyS0 reboot=k panic=1 root=/dev/vda rw"#,
                        linux_image("VMLINUX")
                    ),
                    format!(r#"{{"id":"root","path":"{root}","root":true}}"#),
                )
            };
            let body = format!(
                r#"{{"id":"{id}","vcpus":1,"memory_mib":128,{boot} ip=172.31.{net}.2::172.31.{net}.1:255.255.255.0::eth0:off strato_serve=8000 strato_noreboot",
                "drives":[{first_drive},{{"id":"data","path":"{data}"}}],
                "nets":[{{"id":"eth0","tap":"{}","mac":"06:00:ac:10:00:{:02x}"}}]}}"#,
                taps[i],
                i + 2
            );
            let api = api.clone();
            std::thread::spawn(move || api.call("POST", "/v1/instances", Some(&body)))
        })
        .collect();
    for (t, id) in threads.into_iter().zip(ids) {
        let r = t.join().unwrap();
        assert_eq!(r.status, 201, "create {id}: {}", r.text());
    }
    let serving = |i: usize| {
        let ip = format!("172.31.{}.2", 10 + i);
        // The guest's server starts after init's report; retry until then.
        wait_for(&format!("{} to serve TCP", ids[i]), LONG * 3, || {
            ask(&ns, &ip, 8000).ok().filter(|a| !a.is_empty())
        })
    };
    for (i, id) in ids.iter().enumerate() {
        boot_once_more_after_a_lane_fault(&api, id, "STRATO_INIT_DONE", LONG);
        assert_eq!(
            serving(i),
            answers[i],
            "{id} answered with another disk's bytes"
        );
    }
    // Stop the middle one: its guest shuts down cleanly (x86: the ACPI
    // power button, or Ctrl-Alt-Del; aarch64: the power key on the GPIO),
    // not killed at the stop timeout.
    let v = api
        .expect("POST", "/v1/instances/web-1/stop", None, 200)
        .json();
    assert_eq!(v["state"], "stopped", "{v:?}");
    let reason = v["exit_reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason == "guest powered off" || reason == "guest reset",
        "web-1 did not shut down by itself: {v:?}"
    );
    assert!(
        ask(&ns, "172.31.11.2", 8000).is_err(),
        "web-1 still answers"
    );
    for i in [0, 2] {
        assert_eq!(
            serving(i),
            answers[i],
            "{} after its neighbour stopped",
            ids[i]
        );
    }
    for id in ids {
        api.call("POST", &format!("/v1/instances/{id}/kill"), None);
        api.expect("DELETE", &format!("/v1/instances/{id}"), None, 204);
    }
    api.check_schema(&dir.0);
}

/// A running Linux instance's memory shrinks through its balloon and grows
/// back: the guest's MemTotal and the VMM's resident memory both fall by at
/// least 80 % of what was taken, `actual` follows, growth past the boot size
/// is refused, and the size asked for last is the size of the next start.
#[test]
#[ignore = hardware_kvm!()]
fn memory_of_a_running_linux_instance_shrinks_and_grows_back() {
    require_hardware_kvm();
    const KIB: u64 = 1024;
    const TAKE: u64 = 160;
    let dir = Scratch::new("daemon-linux-memory");
    let daemon = Daemon::start(&dir.0, &[]);
    let api = Api::new(&daemon.sock, "daemon");
    // The guest first touches 192 MiB, so the host has backed what the
    // balloon then takes.
    let body = format!(
        r#"{{"id":"mem","vcpus":1,"memory_mib":384,"kernel":"{}","initrd":"{}",
        "cmdline":"console=ttyS0 reboot=k panic=1 strato_noreboot strato_mem strato_fill=192"}}"#,
        linux_image("VMLINUX"),
        linux_image("INITRAMFS")
    );
    api.expect("POST", "/v1/instances", Some(&body), 201);
    boot_once_more_after_a_lane_fault(&api, "mem", "STRATO_INIT_DONE", LONG);
    let console = wait_console(&api, "mem", "STRATO_FILLED=192");
    let total = mem_total_kib(&console).expect("MemTotal on the console");
    // The record's pid keeps the jailed VMM; its child is the VMM.
    let pid = api::vmm_of(pid_of(&api, "mem"));
    let rss = api::Usage::of(pid).rss_kib;
    let actual = |api: &Api| {
        api.expect("GET", "/v1/instances/mem", None, 200).json()["actual"]["memory_mib"].as_u64()
    };
    assert_eq!(actual(&api), Some(384));

    let v = api
        .expect(
            "PATCH",
            "/v1/instances/mem",
            Some(&format!(r#"{{"memory_mib":{}}}"#, 384 - TAKE)),
            200,
        )
        .json();
    assert_eq!(v["config"]["memory_mib"].as_u64(), Some(384 - TAKE));
    wait_for("the guest to give the memory", LONG, || {
        (actual(&api) == Some(384 - TAKE)).then_some(())
    });
    let want = TAKE * KIB * 8 / 10;
    wait_for("the guest's MemTotal to fall", LONG, || {
        let console = api.get("/v1/instances/mem/console").text();
        mem_total_kib(&console).filter(|t| t + want <= total)
    });
    let released = rss.saturating_sub(api::Usage::of(pid).rss_kib);
    assert!(
        released >= want,
        "the VMM's RSS fell by {released} KiB for {TAKE} MiB taken"
    );
    let r = api.expect(
        "PATCH",
        "/v1/instances/mem",
        Some(r#"{"memory_mib":512}"#),
        409,
    );
    assert!(r.fault().contains("started with 384 MiB"), "{}", r.fault());

    api.expect(
        "PATCH",
        "/v1/instances/mem",
        Some(r#"{"memory_mib":384}"#),
        200,
    );
    wait_for("the guest to get its memory back", LONG, || {
        (actual(&api) == Some(384)).then_some(())
    });
    wait_for("the guest's MemTotal to come back", LONG, || {
        let console = api.get("/v1/instances/mem/console").text();
        mem_total_kib(&console).filter(|t| *t == total)
    });
    // The last size asked for is the size of the next start.
    api.expect(
        "PATCH",
        "/v1/instances/mem",
        Some(r#"{"memory_mib":256}"#),
        200,
    );
    api.expect("POST", "/v1/instances/mem/kill", None, 200);
    // The VMM's machine size, with an empty balloon.
    api.expect("POST", "/v1/instances/mem/start", None, 200);
    let v = api.expect("GET", "/v1/instances/mem", None, 200).json();
    assert_eq!(v["config"]["memory_mib"].as_u64(), Some(256));
    assert_eq!(v["actual"]["memory_mib"].as_u64(), Some(256), "{v:?}");
    api.expect("DELETE", "/v1/instances/mem?timeout_ms=100", None, 204);
    api.check_schema(&dir.0);
}

/// Waits for `marker` on instance `id`'s console. Under the lane's
/// emulator a nested guest now and then triple-faults with no message
/// first (on AMD the vCPU then reads back as at the reset vector,
/// docs/testing.md); an instance that crashed with exactly that signature
/// is started once more, and the output says so. Any other end fails.
fn boot_once_more_after_a_lane_fault(api: &Api, id: &str, marker: &str, within: Duration) {
    let start = std::time::Instant::now();
    while start.elapsed() < within {
        let console = api.get(&format!("/v1/instances/{id}/console")).text();
        if console.contains(marker) {
            return;
        }
        let v = api.get(&format!("/v1/instances/{id}")).json();
        let reason = v["exit_reason"].as_str().unwrap_or_default();
        if v["state"] == "crashed" && reason.contains("at RIP 0xfff0") {
            println!("{id} triple-faulted ({reason}); starting it once more");
            api.expect("POST", &format!("/v1/instances/{id}/start"), None, 200);
            wait_console_for(api, id, marker, within);
            return;
        }
        if v["state"] == "stopped" || v["state"] == "crashed" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Not there: fail with the instance and its console.
    wait_console_for(api, id, marker, Duration::ZERO);
}

/// Ensures `id` runs with exactly one VMM process of the state directory,
/// the one its record names, then deletes it and checks that no VMM
/// process is left.
fn one_vmm_then_none(api: &Api, daemon: &Daemon, id: &str) {
    let path = format!("/v1/instances/{id}");
    match api.get(&path).status {
        404 => {
            api.expect(
                "POST",
                "/v1/instances",
                Some(&create_body(id, "idle", "")),
                201,
            );
        }
        200 if state(api, id) != "running" => {
            api.expect("POST", &format!("{path}/start"), None, 200);
        }
        200 => {}
        other => panic!("GET {path}: {other}"),
    }
    let pid = pid_of(api, id);
    assert_eq!(daemon.vmm_pids(), vec![pid], "one VMM for {id}");
    api.expect("DELETE", &format!("{path}?timeout_ms=100"), None, 204);
    assert!(daemon.vmm_pids().is_empty(), "{:?}", daemon.vmm_pids());
}

/// `kill -9` of the daemon while it creates and starts an instance, at
/// several moments: the restarted daemon owns every VMM process there is,
/// one per instance, and a delete leaves none.
#[test]
fn a_daemon_killed_while_starting_leaves_no_orphan() {
    let dir = Scratch::new("daemon-orphan");
    let mut unrecorded = 0;
    for (i, delay_ms) in [0u64, 3, 5, 7, 9, 11, 13, 15, 20, 30]
        .into_iter()
        .enumerate()
    {
        let mut daemon = Daemon::start(&dir.0, &["--stop-timeout-ms", "100"]);
        let id = format!("o{i}");
        let sock = daemon.sock.clone();
        let body = create_body(&id, "idle", "");
        let poster = std::thread::spawn(move || {
            raw_request(
                &sock,
                "POST",
                "/v1/instances",
                Some(body.as_bytes()),
                Duration::from_secs(20),
            )
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        daemon.crash();
        let _ = poster.join();
        // What the dead daemon left: a VMM whose pid is not on disk is
        // what the old daemon orphaned.
        let record = std::fs::read_to_string(daemon.state.join(&id).join("instance.json"))
            .unwrap_or_default();
        let vmms = daemon.vmm_pids();
        if vmms
            .iter()
            .any(|p| !record.contains(&format!("\"pid\":{p}")))
        {
            unrecorded += 1;
        }
        std::mem::forget(daemon);
        let daemon = Daemon::start(&dir.0, &["--stop-timeout-ms", "100"]);
        let api = Api::new(&daemon.sock, "daemon");
        one_vmm_then_none(&api, &daemon, &id);
        api.check_schema(&dir.0);
    }
    eprintln!("VMM processes not yet recorded when the daemon died: {unrecorded} of 10 runs");
}

/// A record that cannot be read (truncated, garbage, another id's) is
/// moved aside with its VMM stopped, and the id can be used again.
#[test]
fn unusable_records_are_quarantined_and_their_vmms_stopped() {
    let dir = Scratch::new("daemon-corrupt");
    let mut daemon = Daemon::start(&dir.0, &[]);
    let api = Api::new(&daemon.sock, "daemon");
    let ids = ["trunc", "junk", "other"];
    let mut pids = Vec::new();
    for id in ids {
        api.expect(
            "POST",
            "/v1/instances",
            Some(&create_body(id, "idle", "")),
            201,
        );
        pids.push(pid_of(&api, id));
    }
    daemon.crash();
    let record = |id: &str| daemon.state.join(id).join("instance.json");
    let text = std::fs::read(record("trunc")).unwrap();
    std::fs::write(record("trunc"), &text[..text.len() / 2]).unwrap();
    std::fs::write(record("junk"), b"\x00\xffgarbage").unwrap();
    let moved = String::from_utf8(std::fs::read(record("other")).unwrap())
        .unwrap()
        .replace("\"id\":\"other\"", "\"id\":\"trunc\"");
    std::fs::write(record("other"), moved).unwrap();
    let state = daemon.state.clone();
    std::mem::forget(daemon);

    let daemon = Daemon::start(&dir.0, &[]);
    let api = api.with_sock(&daemon.sock);
    for (id, pid) in ids.iter().zip(&pids) {
        api.expect("GET", &format!("/v1/instances/{id}"), None, 404);
        let kept = state.join(format!("{id}.corrupt")).join("instance.json");
        assert!(kept.is_file(), "{} missing", kept.display());
        assert!(!state.join(id).exists(), "{id} still in place");
        assert!(!alive(*pid), "the VMM of {id} (pid {pid}) still runs");
    }
    assert!(daemon.vmm_pids().is_empty(), "{:?}", daemon.vmm_pids());
    assert!(daemon.log_text().contains("quarantined"));
    // The ids are free again, each with one VMM.
    for id in ids {
        one_vmm_then_none(&api, &daemon, id);
    }
    api.check_schema(&dir.0);
}

/// A loop device for a test, detached on drop.
struct Loop(String);

impl Loop {
    /// Attaches `file`; fails the test with the reason if it cannot.
    fn attach(file: &str) -> Loop {
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show", file])
            .output()
            .unwrap_or_else(|e| panic!("this test needs losetup (util-linux): {e}"));
        assert!(
            out.status.success(),
            "cannot make a loop device for the block-device test: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

fn first_bytes(data: &[u8]) -> String {
    data[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Files a guest may use: with --allow-path only inside those roots
/// (symlinks resolved), never inside the state directory; without it,
/// only what the client itself may open. Block devices are drives too.
#[test]
fn guest_files_follow_the_path_policy() {
    let dir = Scratch::new("daemon-paths");
    let allowed = dir.0.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let data = strato_tests::random_bytes(64 * 1024, 11);
    let disk = dir.file("allowed/disk.img", &data);
    let outside = dir.file("outside.img", &data);
    let link = allowed.join("link.img");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let guests = guest("many");
    let guests = guests.parent().unwrap().to_str().unwrap().to_string();
    let allow = allowed.to_str().unwrap().to_string();
    let daemon = Daemon::start(&dir.0, &["--allow-path", &allow, "--allow-path", &guests]);
    let api = Api::new(&daemon.sock, "daemon");
    let with_drive = |id: &str, path: &str| {
        create_body(
            id,
            "many",
            &format!(r#","drives":[{{"id":"d","path":"{path}"}}]"#),
        )
    };
    let lock = daemon.state.join(".lock");
    for (path, needle) in [
        (
            "/etc/shadow",
            "drive d /etc/shadow (resolving to /etc/shadow) is outside",
        ),
        (
            lock.to_str().unwrap(),
            "is inside the daemon's state directory",
        ),
        (
            link.to_str().unwrap(),
            &format!("(resolving to {outside}) is outside"),
        ),
        (&outside, "is outside the paths this daemon allows"),
    ] {
        refused(
            &api,
            &daemon,
            "POST",
            "/v1/instances",
            &with_drive("p", path),
            403,
            needle,
        );
    }
    refused(
        &api,
        &daemon,
        "POST",
        "/v1/instances",
        r#"{"id":"p","kernel":"/etc/shadow"}"#,
        403,
        "kernel /etc/shadow",
    );
    // An allowed file reaches the guest.
    api.expect("POST", "/v1/instances", Some(&with_drive("ok", &disk)), 201);
    let want = format!(
        "many: blk 0 capacity 128 first-bytes {}",
        first_bytes(&data)
    );
    wait_console(&api, "ok", &want);
    api.expect("DELETE", "/v1/instances/ok", None, 204);
    api.check_schema(&dir.0);
    drop(daemon);

    // Without --allow-path: the client's own credentials decide. The
    // daemon lets group 65534 on its socket; `nobody` asks for root's
    // /etc/shadow and is refused, and gets a file of its own.
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let daemon = Daemon::start(&dir.0, &["--api-sock-group", "65534"]);
    let api = api.with_sock(&daemon.sock);
    let mine = dir.file("nobody.img", &data);
    std::os::unix::fs::chown(&mine, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o600)).unwrap();
    let many = guest("many");
    let as_nobody = |id: &str, drive: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(strato_bin())
            .args(["create", "--api-sock"])
            .arg(&daemon.sock)
            .args(["--id", id, "--memory", "32", "--kernel"])
            .arg(&many)
            // Read-only: whether nobody may read decides, also where the
            // root file system is mounted read-only (the x86 lane), on
            // which a read-write open fails with EROFS before any check.
            .args(["--drive", &format!("path={drive},id=d,readonly=on")])
            .output()
            .expect("run setpriv")
    };
    // Even root may not hand a guest the daemon's own files.
    api.expect(
        "POST",
        "/v1/instances",
        Some(&create_body("r", "many", r#","start":false"#)),
        201,
    );
    let record = daemon.state.join("r").join("instance.json");
    refused(
        &api,
        &daemon,
        "POST",
        "/v1/instances",
        &with_drive("p", record.to_str().unwrap()),
        403,
        "inside the daemon's state directory",
    );
    let out = as_nobody("n1", "/etc/shadow");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/etc/shadow: permission denied for the client (uid 65534")
            && err.contains("403"),
        "{err}"
    );
    let out = as_nobody("n2", &mine);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_console(&api, "n2", &want);

    // A block device as a drive.
    let img = dir.file("block.img", &data);
    let dev = Loop::attach(&img);
    api.expect(
        "POST",
        "/v1/instances",
        Some(&with_drive("blk", &dev.0)),
        201,
    );
    wait_console(&api, "blk", &want);
    for id in ["r", "n2", "blk"] {
        api.expect("DELETE", &format!("/v1/instances/{id}"), None, 204);
    }
    assert!(daemon.vmm_pids().is_empty());
    api.check_schema(&dir.0);
}

/// A kernel the VMM refuses before it runs is a 400 naming the problem.
#[test]
fn kernels_for_another_machine_are_refused() {
    let dir = Scratch::new("daemon-elf");
    let daemon = Daemon::start(&dir.0, &[]);
    let api = Api::new(&daemon.sock, "daemon");
    let arm = dir.file("arm.elf", &tiny_elf(183, 0x10_0000, 0));
    let big = dir.file("big.elf", &tiny_elf(62, 0x10_0000, 1 << 30));
    for (kernel, needle) in [
        (&arm, format!("kernel {arm} is an ELF for AArch64")),
        (
            &big,
            format!("kernel {big}: ELF segment 0 [0x100000, 0x40100000) lies outside guest RAM"),
        ),
    ] {
        let body = format!(r#"{{"id":"e","memory_mib":128,"kernel":"{kernel}"}}"#);
        refused(&api, &daemon, "POST", "/v1/instances", &body, 400, &needle);
    }
    api.check_schema(&dir.0);
}

#[test]
fn a_vmm_killed_by_its_seccomp_filter_is_reported_crashed() {
    let dir = Scratch::new("daemon-seccomp");
    // The self-test (STRATO_SECCOMP_PROBE, inherited by the VMMs) makes a
    // thread of one kind open an IPv4 socket, which its filter forbids:
    // vCPU and event-loop threads a second after they start (once the
    // create has answered), the API on the first request after the start.
    for probe in ["vcpu:1000", "event-loop:1000", "api"] {
        let kind = probe.split(':').next().unwrap();
        let run = dir.0.join(kind);
        std::fs::create_dir_all(&run).unwrap();
        let daemon = Daemon::start_with_env(&run, None, &[("STRATO_SECCOMP_PROBE", probe)], &[]);
        let api = Api::new(&daemon.sock, "daemon");
        api.expect(
            "POST",
            "/v1/instances",
            Some(&create_body(kind, "idle", "")),
            201,
        );
        if kind == "api" {
            // Pausing goes through the VMM's API.
            let r = api.call("POST", &format!("/v1/instances/{kind}/pause"), None);
            assert_ne!(r.status, 200, "{kind}: {}", r.text());
        }
        let v = wait_state(&api, kind, "crashed");
        let reason = v["exit_reason"].as_str().unwrap_or_default().to_string();
        assert!(
            reason.contains("killed by signal 31 (SIGSYS: seccomp"),
            "{kind}: {v:?}"
        );
        assert_eq!(v["exit_status"].as_i64(), Some(128 + 31), "{kind}: {v:?}");
    }

    // `serve --no-seccomp` starts its VMMs without filters: the same
    // forbidden call does no harm.
    let run = dir.0.join("off");
    std::fs::create_dir_all(&run).unwrap();
    let daemon = Daemon::start_with_env(
        &run,
        None,
        &[("STRATO_SECCOMP_PROBE", "vcpu")],
        &["--no-seccomp"],
    );
    let api = Api::new(&daemon.sock, "daemon");
    api.expect(
        "POST",
        "/v1/instances",
        Some(&create_body("off", "idle", "")),
        201,
    );
    wait_console(&api, "off", "idle: ready");
    let pid = pid_of(&api, "off");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(
        cmdline.split(|b| *b == 0).any(|a| a == b"--no-seccomp"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(state(&api, "off"), "running");
}

/// A running Linux instance created with `max_memory_mib` grows above its
/// boot size through hotpluggable memory (virtio-mem): `actual` and the
/// guest's MemTotal follow the size asked for, up to the maximum (409
/// beyond it), and back down when it shrinks again.
#[test]
#[ignore = hardware_kvm!()]
fn memory_of_a_running_linux_instance_grows_to_its_maximum_and_back() {
    require_hardware_kvm();
    const KIB: u64 = 1024;
    let dir = Scratch::new("daemon-linux-memory-hotplug");
    let daemon = Daemon::start(&dir.0, &[]);
    let api = Api::new(&daemon.sock, "daemon");
    let body = format!(
        r#"{{"id":"grow","vcpus":1,"memory_mib":256,"max_memory_mib":768,"kernel":"{}","initrd":"{}",
        "cmdline":"console=ttyS0 reboot=k panic=1 strato_noreboot strato_mem"}}"#,
        linux_image("VMLINUX"),
        linux_image("INITRAMFS")
    );
    let v = api.expect("POST", "/v1/instances", Some(&body), 201).json();
    assert_eq!(v["config"]["max_memory_mib"].as_u64(), Some(768));
    boot_once_more_after_a_lane_fault(&api, "grow", "STRATO_INIT_DONE", LONG);
    let memtotal = || {
        let console = api.get("/v1/instances/grow/console").text();
        mem_total_kib(&console)
    };
    let total = wait_for("the guest's MemTotal", LONG, memtotal);
    let actual = |api: &Api| {
        api.expect("GET", "/v1/instances/grow", None, 200).json()["actual"]["memory_mib"].as_u64()
    };
    assert_eq!(actual(&api), Some(256));

    api.expect(
        "PATCH",
        "/v1/instances/grow",
        Some(r#"{"memory_mib":768}"#),
        200,
    );
    wait_for("the guest to plug the memory", LONG, || {
        (actual(&api) == Some(768)).then_some(())
    });
    wait_for("the guest's MemTotal to grow", LONG, || {
        memtotal().filter(|t| *t == total + 512 * KIB)
    });
    let r = api.expect(
        "PATCH",
        "/v1/instances/grow",
        Some(r#"{"memory_mib":1024}"#),
        409,
    );
    assert!(r.fault().contains("room for 768 MiB"), "{}", r.fault());
    let r = api.expect(
        "PATCH",
        "/v1/instances/grow",
        Some(r#"{"memory_mib":513}"#),
        400,
    );
    assert!(r.fault().contains("steps of 2 MiB"), "{}", r.fault());

    api.expect(
        "PATCH",
        "/v1/instances/grow",
        Some(r#"{"memory_mib":384}"#),
        200,
    );
    wait_for("the guest to unplug the memory", LONG, || {
        (actual(&api) == Some(384)).then_some(())
    });
    wait_for("the guest's MemTotal to shrink", LONG, || {
        memtotal().filter(|t| *t == total + 128 * KIB)
    });
    api.expect("DELETE", "/v1/instances/grow?timeout_ms=100", None, 204);
    api.check_schema(&dir.0);
}
