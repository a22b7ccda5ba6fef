//! Soak: `strato serve` through many create, start, stop, delete cycles and
//! with 50 instances at once. The daemon's open descriptors, threads and
//! resident memory must stay flat, and nothing may be left behind: no VMM
//! process or zombie, no instance directory or socket, no tap, no file.
//!
//! `STRATO_SOAK_CYCLES=N` sets the number of cycles (default 1000):
//! `STRATO_SOAK_CYCLES=1000 cargo test --release --test soak`.

mod api;

use std::time::Instant;

use api::{alive, create_body, wait_console, Api, Daemon, Netns, Usage};
use strato_tests::{random_bytes, Scratch};

/// Cycles of `daemon_cycles_leave_nothing_behind` unless
/// STRATO_SOAK_CYCLES says otherwise.
const DEFAULT_CYCLES: usize = 1000;
/// The cycle before which the daemon's usage is taken as the baseline
/// (once its allocator and caches have warmed up).
const WARM_UP: usize = 50;
/// Instances of `fifty_instances_at_once`, and its rounds.
const AT_ONCE: usize = 50;
const ROUNDS: usize = 3;
/// How much the daemon's resident memory may grow after the warm-up.
const RSS_SLACK_KIB: u64 = 2048;
/// Descriptors and threads the daemon may hold beyond the baseline.
const COUNT_SLACK: usize = 1;

fn cycles() -> usize {
    match std::env::var("STRATO_SOAK_CYCLES") {
        Ok(v) => match v.parse::<usize>() {
            Ok(n) if n >= 2 => n,
            _ => panic!("STRATO_SOAK_CYCLES={v:?}: give a number of cycles, at least 2"),
        },
        Err(_) => DEFAULT_CYCLES,
    }
}

/// Asserts that the daemon's usage at `end` is flat against `base`.
fn assert_flat(what: &str, base: Usage, end: Usage) {
    eprintln!(
        "{what}: daemon fds {} -> {}, threads {} -> {}, VmRSS {} -> {} KiB",
        base.fds, end.fds, base.threads, end.threads, base.rss_kib, end.rss_kib
    );
    assert!(
        end.fds <= base.fds + COUNT_SLACK,
        "{what}: the daemon's descriptors grew: {base:?} -> {end:?}"
    );
    assert!(
        end.threads <= base.threads + COUNT_SLACK,
        "{what}: the daemon's threads grew: {base:?} -> {end:?}"
    );
    assert!(
        end.rss_kib <= base.rss_kib + RSS_SLACK_KIB,
        "{what}: the daemon's resident memory grew by more than {RSS_SLACK_KIB} KiB: {base:?} -> {end:?}"
    );
}

/// Asserts that no instance left anything: processes (zombies too),
/// instance directories, sockets, taps beyond `links`, or files in the
/// scratch directory besides the daemon's and `ours`.
fn assert_nothing_left(
    daemon: &Daemon,
    dir: &Scratch,
    ours: &[&str],
    ns: &Netns,
    links: &[String],
) {
    let pids = |p: Vec<i32>| p.iter().map(i32::to_string).collect::<Vec<_>>();
    let left = [
        ("VMM processes", pids(daemon.vmm_pids())),
        ("daemon children (zombies too)", pids(daemon.children())),
        ("entries in the state directory", daemon.state_entries()),
        (
            "unix sockets in the state directory",
            daemon.state_sockets(),
        ),
    ];
    for (what, left) in left {
        assert!(left.is_empty(), "{what} left: {left:?}");
    }
    let mut files: Vec<String> = std::fs::read_dir(&dir.0)
        .expect("scratch dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = ["daemon.log", "state", "strato.sock"]
        .iter()
        .chain(ours)
        .map(|s| s.to_string())
        .collect();
    expected.sort();
    assert_eq!(files, expected, "files in {}", dir.0.display());
    assert_eq!(ns.links(), links, "interfaces in {}", ns.name);
}

/// One create, start, stop, delete cycle of instance number `i`. Every
/// fourth instance has a drive and a NIC on tap0; the ways they end
/// rotate: stop of a guest that ignores Ctrl-Alt-Del (killed after the
/// timeout), kill, a clean stop of a guest that resets on Ctrl-Alt-Del,
/// and delete while running.
fn cycle(api: &Api, daemon: &Daemon, i: usize, disk: &str) {
    let id = format!("soak-{i}");
    let path = format!("/v1/instances/{id}");
    let (guest, marker, extra) = match i % 4 {
        0 => (
            "idle",
            "idle: ready",
            format!(
                r#","drives":[{{"id":"root","path":"{disk}","root":true}}],"nets":[{{"id":"eth0","tap":"tap0"}}]"#
            ),
        ),
        2 => ("kbd", "kbd: ready", r#","cmdline":"timeout=600000""#.into()),
        _ => ("idle", "idle: ready", String::new()),
    };
    let v = api
        .expect(
            "POST",
            "/v1/instances",
            Some(&create_body(&id, guest, &extra)),
            201,
        )
        .json();
    assert_eq!(v["state"], "running", "{v:?}");
    let pid = v["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{id}: no pid in {v:?}")) as i32;
    assert_eq!(daemon.vmm_pids(), vec![pid], "one VMM process for {id}");
    wait_console(api, &id, marker);
    let ended = match i % 4 {
        0 => Some((
            api.expect("POST", &format!("{path}/stop?timeout_ms=20"), None, 200),
            "no shutdown within 20 ms",
        )),
        1 => Some((
            api.expect("POST", &format!("{path}/kill"), None, 200),
            "killed on request",
        )),
        2 => Some((
            api.expect("POST", &format!("{path}/stop?timeout_ms=10000"), None, 200),
            "guest reset",
        )),
        _ => None,
    };
    if let Some((r, reason)) = ended {
        let v = r.json();
        assert_eq!(v["state"], "stopped", "{id}: {v:?}");
        assert!(v["pid"].is_null(), "{id}: {v:?}");
        assert!(
            v["exit_reason"]
                .as_str()
                .unwrap_or_default()
                .contains(reason),
            "{id}: {v:?} lacks {reason:?}"
        );
        assert!(!alive(pid), "{id}'s VMM process {pid} outlived its stop");
    }
    api.expect("DELETE", &format!("{path}?timeout_ms=0"), None, 204);
    api.expect("GET", &path, None, 404);
    assert!(!alive(pid), "{id}'s VMM process {pid} outlived its delete");
    assert!(
        daemon.vmm_pids().is_empty(),
        "{id}: {:?}",
        daemon.vmm_pids()
    );
}

#[test]
fn daemon_cycles_leave_nothing_behind() {
    let n = cycles();
    let warm_up = WARM_UP.min(n / 2);
    let dir = Scratch::new("soak-cycles");
    let ns = Netns::new("soak-cycles", &["tap0"]);
    let links = ns.links();
    let daemon = Daemon::start_in(&dir.0, Some(&ns), &[]);
    let api = Api::new(&daemon.sock, "daemon");
    let disk = dir.file("disk.img", &random_bytes(64 * 1024, 11));
    let first = Usage::settled(daemon.pid());
    let start = Instant::now();
    let mut base = first;
    for i in 0..n {
        if i == warm_up {
            base = Usage::settled(daemon.pid());
        }
        cycle(&api, &daemon, i, &disk);
        if (i + 1) % 100 == 0 {
            eprintln!(
                "{} cycles in {:.1?}: {:?}",
                i + 1,
                start.elapsed(),
                Usage::of(daemon.pid())
            );
        }
    }
    let elapsed = start.elapsed();
    let end = Usage::settled(daemon.pid());
    eprintln!(
        "{n} cycles in {elapsed:.1?} ({:.0?} each); at start {first:?}",
        elapsed / n as u32
    );
    assert_flat(&format!("after cycle {warm_up} vs cycle {n}"), base, end);
    assert_nothing_left(&daemon, &dir, &["disk.img"], &ns, &links);
}

/// Creates `AT_ONCE` instances at once (one thread each), checks that all
/// run, print their marker and are listed, then kills and deletes them
/// all at once.
fn fifty(api: &Api, daemon: &Daemon, round: usize, disk: &str) {
    let ids: Vec<String> = (0..AT_ONCE).map(|i| format!("r{round}-{i:02}")).collect();
    let started = Instant::now();
    let creates: Vec<_> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            // Every tenth has a read-only drive and a NIC on a tap of its own.
            let extra = if i % 10 == 0 {
                format!(
                    r#","drives":[{{"id":"data","path":"{disk}","readonly":true}}],"nets":[{{"id":"eth0","tap":"tap{}"}}]"#,
                    i / 10
                )
            } else {
                String::new()
            };
            let body = create_body(id, "idle", &extra);
            let api = api.clone();
            std::thread::spawn(move || api.call("POST", "/v1/instances", Some(&body)))
        })
        .collect();
    let mut pids: Vec<i32> = creates
        .into_iter()
        .zip(&ids)
        .map(|(t, id)| {
            let r = t.join().expect("create thread");
            assert_eq!(r.status, 201, "create {id}: {}", r.text());
            let v = r.json();
            assert_eq!(v["state"], "running", "{v:?}");
            v["pid"].as_i64().unwrap_or_else(|| panic!("{id}: no pid")) as i32
        })
        .collect();
    for id in &ids {
        wait_console(api, id, "idle: ready");
    }
    eprintln!(
        "round {round}: {AT_ONCE} instances created and on their consoles in {:.1?}",
        started.elapsed()
    );
    let list = api.expect("GET", "/v1/instances", None, 200).json();
    let listed: Vec<(String, String)> = list["instances"]
        .as_array()
        .expect("instances array")
        .iter()
        .map(|i| {
            (
                i["id"].as_str().unwrap_or_default().into(),
                i["state"].as_str().unwrap_or_default().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ids.iter().map(|i| (i.clone(), "running".into())).collect();
    assert_eq!(listed, want);
    pids.sort_unstable();
    let mut vmms = daemon.vmm_pids();
    vmms.sort_unstable();
    assert_eq!(vmms, pids, "one VMM process per instance");

    let ending = Instant::now();
    let ends: Vec<_> = ids
        .iter()
        .map(|id| {
            let api = api.clone();
            let path = format!("/v1/instances/{id}");
            std::thread::spawn(move || {
                let v = api
                    .expect("POST", &format!("{path}/kill"), None, 200)
                    .json();
                assert_eq!(v["state"], "stopped", "{v:?}");
                assert_eq!(v["exit_reason"], "killed on request", "{v:?}");
                api.expect("DELETE", &path, None, 204);
                api.expect("GET", &path, None, 404);
            })
        })
        .collect();
    for t in ends {
        t.join().expect("kill and delete");
    }
    eprintln!(
        "round {round}: {AT_ONCE} instances killed and deleted in {:.1?}",
        ending.elapsed()
    );
    let list = api.expect("GET", "/v1/instances", None, 200).json();
    assert_eq!(
        list["instances"].as_array().map(|a| a.len()),
        Some(0),
        "{list:?}"
    );
    assert!(
        pids.iter().all(|p| !alive(*p)),
        "VMM processes outlived their delete"
    );
}

#[test]
fn fifty_instances_at_once() {
    let dir = Scratch::new("soak-fifty");
    let taps: Vec<String> = (0..AT_ONCE.div_ceil(10))
        .map(|i| format!("tap{i}"))
        .collect();
    let ns = Netns::new(
        "soak-fifty",
        &taps.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let links = ns.links();
    let daemon = Daemon::start_in(&dir.0, Some(&ns), &[]);
    let api = Api::new(&daemon.sock, "daemon");
    let disk = dir.file("disk.img", &random_bytes(64 * 1024, 12));
    // The first round warms the daemon up; the later ones must leave it
    // as the first did.
    fifty(&api, &daemon, 0, &disk);
    let base = Usage::settled(daemon.pid());
    for round in 1..ROUNDS {
        fifty(&api, &daemon, round, &disk);
    }
    let end = Usage::settled(daemon.pid());
    assert_flat(&format!("after round 1 vs round {ROUNDS}"), base, end);
    assert_nothing_left(&daemon, &dir, &["disk.img"], &ns, &links);
    api.check_schema(&dir.0);
}
