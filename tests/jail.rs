//! The jail, checked from the VMM's side: `strato vm --jail` on its own and
//! the daemon's instances (jailed by default). The VMM's root holds only
//! its files and devices, it runs as the unprivileged uid/gid in its own
//! namespaces under a cgroup memory and CPU limit that is enforced, and
//! the guest still boots and does block I/O.

mod api;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use api::{alive, vmm_of, wait_for, wait_state, wait_state_for, Api, Daemon, Json, Netns};
use strato_tests::{guest, random_bytes, strato_bin, Scratch};

const LONG: Duration = Duration::from_secs(60);
/// For a guest that touches all of its memory: where each first touch is
/// a nested page fault (the lane) that takes minutes. The guests that do
/// are kept small (32 MiB) for the same reason.
const FILL: Duration = Duration::from_secs(240);
const MIB: usize = 1 << 20;
const NOBODY: u32 = 65534;

/// Names in a directory of the VMM's root, seen through /proc.
fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A field of /proc/<pid>/status.
fn status_field(pid: i32, key: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The directory of `pid`'s group holding `file` for `controller`: a v1
/// hierarchy named after the controller, else cgroup v2.
fn cgroup_file(pid: i32, controller: &str, file: &str) -> PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctl, path) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap());
        let path = path.trim_start_matches('/');
        let candidates: Vec<PathBuf> = if ctl.split(',').any(|c| c == controller) {
            vec![Path::new("/sys/fs/cgroup").join(controller).join(path)]
        } else if ctl.is_empty() {
            vec![
                Path::new("/sys/fs/cgroup").join(path),
                Path::new("/sys/fs/cgroup/unified").join(path),
            ]
        } else {
            continue;
        };
        for c in candidates {
            if c.join(file).exists() {
                return c.join(file);
            }
        }
    }
    panic!("no {file} for pid {pid}: {text}");
}

/// `pid`'s cgroup memory limit in bytes.
fn memory_limit(pid: i32) -> (PathBuf, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = text.lines().any(|l| {
        l.split(':')
            .nth(1)
            .is_some_and(|c| c.split(',').any(|c| c == "memory"))
    });
    let file = if v1 {
        cgroup_file(pid, "memory", "memory.limit_in_bytes")
    } else {
        cgroup_file(pid, "memory", "memory.max")
    };
    let value = std::fs::read_to_string(&file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (file.parent().unwrap().to_path_buf(), value)
}

/// `pid`'s CPU quota per 100 ms period, in microseconds.
fn cpu_quota(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let v1 = text.lines().any(|l| {
        l.split(':')
            .nth(1)
            .is_some_and(|c| c.split(',').any(|c| c == "cpu"))
    });
    if v1 {
        let period = cgroup_file(pid, "cpu", "cpu.cfs_period_us");
        assert_eq!(std::fs::read_to_string(&period).unwrap().trim(), "100000");
        let quota = cgroup_file(pid, "cpu", "cpu.cfs_quota_us");
        std::fs::read_to_string(quota)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    } else {
        let max = std::fs::read_to_string(cgroup_file(pid, "cpu", "cpu.max")).unwrap();
        let (quota, period) = max.trim().split_once(' ').unwrap();
        assert_eq!(period, "100000");
        quota.parse().unwrap()
    }
}

/// The jail as the VMM `pid` sees it: only `files` and dev, run at its
/// root; its own devices; the unprivileged ids; its own namespaces.
fn check_jailed(pid: i32, files: &[&str]) {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let mut want = set(&["dev", "run"]);
    want.extend(set(files));
    assert_eq!(names(&root), want, "the VMM's root");
    assert_eq!(
        names(&root.join("dev")),
        set(&["kvm", "net", "urandom"]),
        "its /dev"
    );
    assert_eq!(names(&root.join("dev/net")), set(&["tun"]));
    for key in ["Uid", "Gid"] {
        assert_eq!(
            status_field(pid, key),
            format!("{NOBODY} {NOBODY} {NOBODY} {NOBODY}"),
            "{key}"
        );
    }
    assert_eq!(status_field(pid, "Groups"), "");
    assert_eq!(status_field(pid, "CapEff"), "0000000000000000");
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    for ns in ["mnt", "pid", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "the VMM shares our {ns} namespace");
    }
    // pid 1 of its namespace.
    let nspid = status_field(pid, "NSpid");
    assert!(nspid.ends_with(" 1"), "NSpid: {nspid}");
}

#[test]
fn standalone_jail_boots_a_guest_that_copies_a_disk() {
    let dir = Scratch::new("jail-vm");
    let run = dir.0.join("run");
    std::fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(NOBODY), Some(NOBODY)).unwrap();
    let jail = dir.0.join("jail");
    let kernel = dir.0.join("blk-copy");
    std::fs::copy(guest("blk-copy"), &kernel).unwrap();
    let data = random_bytes(4 * MIB, 7);
    let src = dir.file("src.img", &data);
    let dst = dir.file("dst.img", &vec![0u8; 4 * MIB]);
    std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();
    let sock = run.join("api.sock");
    let mut child = Command::new(strato_bin())
        .arg("vm")
        .arg("--id=jail-vm-test")
        .arg("--api-sock")
        .arg(&sock)
        .arg("--console-log")
        .arg(run.join("console.log"))
        .arg("--exit-file")
        .arg(run.join("exit.json"))
        .arg("--jail")
        .arg(&jail)
        .args(["--uid", "65534", "--gid", "65534"])
        .args(["--memory-max", "192", "--cpu-max", "1"])
        .arg("--jail-file")
        .arg(&kernel)
        .arg("--jail-file")
        .arg(&src)
        .arg("--jail-file")
        .arg(&dst)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the jailed VM's socket", LONG, || {
        sock.exists().then_some(())
    });
    let keeper = child.id() as i32;
    let pid = vmm_of(keeper);
    assert_ne!(pid, keeper, "no jailed child under the keeper");
    check_jailed(pid, &["blk-copy", "src.img", "dst.img"]);
    assert_eq!(
        names(&PathBuf::from(format!("/proc/{pid}/root/run"))),
        set(&["api.sock"])
    );
    let (group, limit) = memory_limit(pid);
    assert_eq!(limit, 192 << 20);
    assert_eq!(cpu_quota(pid), 100_000);
    // Nothing of the jail is written to the host's directory.
    assert!(names(&jail).is_empty());

    // Paths in the API are the jail's.
    let api = Api::new(&sock, "vm");
    api.expect(
        "PUT",
        "/machine-config",
        Some(r#"{"vcpu_count":1,"mem_size_mib":64}"#),
        204,
    );
    api.expect(
        "PUT",
        "/boot-source",
        Some(r#"{"kernel_image_path":"/blk-copy","boot_args":"chunk=256"}"#),
        204,
    );
    // The host's paths do not exist in there.
    let host_src = format!(
        r#"{{"drive_id":"src","path_on_host":"{src}","is_root_device":false,"is_read_only":true}}"#
    );
    let fault = api.call("PUT", "/drives/src", Some(&host_src));
    assert_eq!(fault.status, 400, "{}", fault.fault());
    api.expect(
        "PUT",
        "/drives/src",
        Some(r#"{"drive_id":"src","path_on_host":"/src.img","is_root_device":false,"is_read_only":true}"#),
        204,
    );
    api.expect(
        "PUT",
        "/drives/dst",
        Some(r#"{"drive_id":"dst","path_on_host":"/dst.img","is_root_device":false}"#),
        204,
    );
    api.action("InstanceStart");
    let status = wait_for("the jailed VM to end", LONG, || child.try_wait().unwrap());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let console = std::fs::read_to_string(run.join("console.log")).unwrap();
    assert!(
        console.contains(&format!("blk-copy: {} sectors copied", 4 * MIB / 512)),
        "{console}"
    );
    assert!(console.contains("blk-copy: flush ok"), "{console}");
    assert!(std::fs::read(&dst).unwrap() == data, "the copy differs");
    let exit: Json = serde_json_value(&run.join("exit.json"));
    assert_eq!(exit["success"].as_bool(), Some(true));
    // The keeper removed the socket and the cgroup.
    assert!(!sock.exists());
    assert!(!group.exists(), "{} is left", group.display());
}

/// Reads a JSON file.
fn serde_json_value(path: &Path) -> Json {
    Json::parse(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn create(api: &Api, id: &str, guest_name: &str, memory: u32, extra: &str) -> Json {
    let body = format!(
        r#"{{"id":"{id}","vcpus":1,"memory_mib":{memory},"kernel":"{}"{extra}}}"#,
        guest(guest_name).display()
    );
    api.expect("POST", "/v1/instances", Some(&body), 201).json()
}

fn pid_of(v: &Json) -> i32 {
    v["pid"].as_i64().expect("a pid") as i32
}

#[test]
fn daemon_instances_are_jailed_by_default_and_held_to_their_memory() {
    let dir = Scratch::new("jail-daemon");
    let daemon = Daemon::start(&dir.0, &[]);
    let api = Api::new(&daemon.sock, "daemon");

    // A running instance, from its VMM's side. Its files came as
    // descriptors: nothing but dev and run at its root.
    let v = create(&api, "idle", "idle", 48, "");
    let keeper = pid_of(&v);
    let pid = vmm_of(keeper);
    assert_ne!(pid, keeper, "no jailed child under the recorded process");
    check_jailed(pid, &[]);
    let (group, limit) = memory_limit(pid);
    assert_eq!(
        limit,
        (48 + 64) << 20,
        "guest memory plus the default 64 MiB"
    );
    assert_eq!(cpu_quota(pid), 100_000);
    let run = daemon.state.join("idle/run");
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&run).unwrap()),
        NOBODY
    );
    // run/ is the jailed VMM's: the daemon follows no symlink it puts
    // there, to a file or to another socket.
    let secret = dir.file("secret", b"not for the console endpoint");
    std::fs::remove_file(run.join("console.log")).unwrap();
    std::os::unix::fs::symlink(&secret, run.join("console.log")).unwrap();
    let r = api.call("GET", "/v1/instances/idle/console", None);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(!r.text().contains("not for"), "{}", r.text());
    std::fs::rename(run.join("api.sock"), run.join("real.sock")).unwrap();
    std::os::unix::fs::symlink(&daemon.sock, run.join("api.sock")).unwrap();
    let r = api.call("POST", "/v1/instances/idle/pause", None);
    assert_eq!(r.status, 500, "{}", r.text());
    assert!(r.fault().contains("not the VMM's socket"), "{}", r.fault());
    api.expect("POST", "/v1/instances/idle/kill", None, 200);
    wait_for("the VMM to be gone", LONG, || (!alive(pid)).then_some(()));
    wait_for("its cgroup to be removed", LONG, || {
        (!group.exists()).then_some(())
    });
    api.expect("DELETE", "/v1/instances/idle", None, 204);

    // A guest that copies a disk through the daemon's descriptors.
    let data = random_bytes(2 * MIB, 8);
    let src = dir.file("src.img", &data);
    let dst = dir.file("dst.img", &vec![0u8; 2 * MIB]);
    let drives = format!(
        r#","cmdline":"chunk=128","drives":[{{"id":"src","path":"{src}","readonly":true}},{{"id":"dst","path":"{dst}"}}]"#
    );
    create(&api, "copy", "blk-copy", 64, &drives);
    let v = wait_state(&api, "copy", "stopped");
    assert_eq!(v["exit_status"].as_i64(), Some(0), "{v:?}");
    let console = api
        .expect("GET", "/v1/instances/copy/console", None, 200)
        .text();
    assert!(console.contains("blk-copy: flush ok"), "{console}");
    assert!(std::fs::read(&dst).unwrap() == data, "the copy differs");

    // A guest that touches all of its memory fits in guest memory plus
    // the allowance.
    create(&api, "fits", "fill", 32, "");
    let v = wait_state_for(&api, "fits", "stopped", FILL);
    assert_eq!(v["exit_status"].as_i64(), Some(0), "{v:?}");
}

#[test]
fn a_vmm_over_its_memory_limit_is_killed_and_reported_crashed() {
    // No allowance: the guest's memory alone fills the limit, so the VMM
    // goes over it as soon as the guest touches all of its memory.
    let dir = Scratch::new("jail-oom");
    let daemon = Daemon::start(&dir.0, &["--jail-memory-overhead", "0"]);
    let api = Api::new(&daemon.sock, "daemon");
    create(&api, "idle", "idle", 64, "");
    let v = api.expect("GET", "/v1/instances/idle", None, 200).json();
    assert_eq!(memory_limit(vmm_of(pid_of(&v))).1, 64 << 20);
    api.expect("POST", "/v1/instances/idle/kill", None, 200);

    create(&api, "oom", "fill", 32, "");
    let v = wait_state_for(&api, "oom", "crashed", FILL);
    let reason = v["exit_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("killed by signal 9"), "{v:?}");
    assert_eq!(v["exit_status"].as_i64(), Some(137));
    let console = api
        .expect("GET", "/v1/instances/oom/console", None, 200)
        .text();
    assert!(!console.contains("fill:"), "the guest finished: {console}");
}

#[test]
fn no_jail_runs_the_vmm_as_before() {
    let dir = Scratch::new("jail-off");
    let daemon = Daemon::start(&dir.0, &["--no-jail"]);
    let api = Api::new(&daemon.sock, "daemon");
    let v = create(&api, "idle", "idle", 32, "");
    let pid = pid_of(&v);
    assert_eq!(vmm_of(pid), pid, "an unjailed VMM has no keeper");
    assert_eq!(status_field(pid, "Uid"), "0 0 0 0");
    for ns in ["mnt", "pid"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_eq!(theirs, ours, "{ns}");
    }
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(!cgroups.contains("/strato/"), "{cgroups}");
    api.expect("POST", "/v1/instances/idle/stop?timeout_ms=100", None, 200);
    create(&api, "hello", "hello", 32, "");
    let v = wait_state(&api, "hello", "stopped");
    assert_eq!(v["exit_status"].as_i64(), Some(0), "{v:?}");
}

#[test]
fn the_daemon_hands_a_jailed_vmm_its_tap() {
    // A tap owned by another user: the jail uid could not attach to it,
    // the daemon can and hands it over.
    let ns = Netns::new("jail-tap", &[]);
    ns.exec(&[
        "ip", "tuntap", "add", "dev", "tap0", "mode", "tap", "user", "1000",
    ]);
    let dir = Scratch::new("jail-tap");
    let daemon = Daemon::start_in(&dir.0, Some(&ns), &[]);
    let api = Api::new(&daemon.sock, "daemon");
    let nets = r#","nets":[{"id":"eth0","tap":"tap0"}]"#;
    let v = create(&api, "net", "idle", 32, nets);
    let pid = vmm_of(pid_of(&v));
    check_jailed(pid, &[]);
    let attached = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .any(|info| {
            info.lines()
                .any(|l| l.split_whitespace().eq(["iff:", "tap0"]))
        });
    assert!(attached, "the VMM holds no descriptor attached to tap0");
    api.expect("POST", "/v1/instances/net/kill", None, 200);
}

#[test]
fn jail_set_up_failures_are_one_line_and_exit_1() {
    let dir = Scratch::new("jail-errors");
    let sock = dir.path("api.sock");
    let jail = dir.path("jail");
    let base = [
        "vm",
        "--api-sock",
        &sock,
        "--jail",
        &jail,
        "--uid",
        "65534",
        "--gid",
        "65534",
    ];
    let cases: [(&[&str], &str); 3] = [
        (
            &["--jail-file", "/nonexistent/kernel"],
            "strato: jail: --jail-file /nonexistent/kernel: No such file or directory",
        ),
        (
            &["--console-log", "/tmp/elsewhere.log"],
            "must be in one directory",
        ),
        (
            &["--jail-file", "/dev"],
            "the name \"dev\" is taken in the jail",
        ),
    ];
    for (extra, want) in cases {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = Command::new(strato_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Root is not an unprivileged uid; the ids come together.
    for bad in [&["--uid", "0"][..], &["--gid", "0"]] {
        let mut args = vec!["vm", "--api-sock", &sock, "--jail", &jail];
        args.extend_from_slice(if bad[0] == "--uid" {
            &["--gid", "65534"]
        } else {
            &["--uid", "65534"]
        });
        args.extend_from_slice(bad);
        let out = Command::new(strato_bin()).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = Command::new(strato_bin())
        .args(["vm", "--api-sock", &sock, "--jail", &jail, "--uid", "65534"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!Path::new(&sock).exists());
    assert!(
        !Path::new(&jail).exists(),
        "a refused jail made its directory"
    );
}
