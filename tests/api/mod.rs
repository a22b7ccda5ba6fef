//! Helpers for the API tests (`tests/daemon.rs`, `tests/vm_api.rs`,
//! `tests/jail.rs`): an
//! HTTP client over unix sockets that keeps a transcript of every exchange
//! for the OpenAPI check (`tests/api_schema.py`), a small JSON reader, a
//! daemon guard that kills everything it started, daemon instance helpers,
//! a process's descriptors, threads and memory, a network namespace, and
//! hostile clients for both sockets.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod hostile;
pub mod json;

pub use json::Json;

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body parsed as JSON (Null if it is not JSON).
    pub fn json(&self) -> Json {
        Json::parse(&String::from_utf8_lossy(&self.body)).unwrap_or(Json::Null)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `fault_message` of an error body.
    pub fn fault(&self) -> String {
        self.json()["fault_message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sends one request with a raw body and reads the whole response
/// (Connection: close).
pub fn raw_request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
    timeout: Duration,
) -> std::io::Result<Resp> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        // The server may answer (413) and close before reading it all.
        let _ = s.write_all(b);
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (head_len, status, headers) = loop {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let text = String::from_utf8_lossy(&buf[..pos]).into_owned();
            let mut lines = text.split("\r\n");
            let status: u16 = lines
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| c.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("bad status line in {text:?}")))?;
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                .collect();
            break (pos + 4, status, headers);
        }
    };
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = buf[head_len..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            body.truncate(len);
        }
        None if status == 204 || status == 304 => {}
        None => {
            let _ = s.read_to_end(&mut body);
        }
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// One request and its response, for the schema check.
#[derive(Debug, Clone)]
struct Exchange {
    method: String,
    path: String,
    status: u16,
    content_type: String,
    body: String,
}

/// A client of one API socket that records every exchange.
#[derive(Clone)]
pub struct Api {
    /// The socket.
    pub sock: PathBuf,
    spec: &'static str,
    log: Arc<Mutex<Vec<Exchange>>>,
}

impl Api {
    /// A client of `sock`, whose responses are checked against
    /// `api/openapi/<spec>.yaml`.
    pub fn new(sock: impl Into<PathBuf>, spec: &'static str) -> Api {
        Api {
            sock: sock.into(),
            spec,
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// The same transcript, another socket (a second daemon or VMM).
    pub fn with_sock(&self, sock: impl Into<PathBuf>) -> Api {
        Api {
            sock: sock.into(),
            ..self.clone()
        }
    }

    /// Sends a raw body; panics if the server cannot be reached.
    pub fn raw(&self, method: &str, path: &str, body: Option<&[u8]>) -> Resp {
        let r = raw_request(&self.sock, method, path, body, Duration::from_secs(120))
            .unwrap_or_else(|e| panic!("{method} {path} on {}: {e}", self.sock.display()));
        let content_type = r.header("content-type").unwrap_or_default().to_string();
        let body = if content_type.starts_with("application/json") {
            r.text()
        } else {
            String::new()
        };
        self.log.lock().unwrap().push(Exchange {
            method: method.to_string(),
            path: path.split('?').next().unwrap_or_default().to_string(),
            status: r.status,
            content_type,
            body,
        });
        r
    }

    /// `PUT /actions` with `action_type` (InstanceStart, SendCtrlAltDel),
    /// expecting 204.
    pub fn action(&self, action_type: &str) -> Resp {
        let body = format!(r#"{{"action_type":"{action_type}"}}"#);
        self.expect("PUT", "/actions", Some(&body), 204)
    }

    /// Sends a JSON body (given as text).
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.raw(method, path, body.map(str::as_bytes))
    }

    /// GET.
    pub fn get(&self, path: &str) -> Resp {
        self.call("GET", path, None)
    }

    /// Asserts the status, returning the response.
    pub fn expect(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> Resp {
        let r = self.call(method, path, body);
        assert_eq!(
            r.status,
            status,
            "{method} {path} {}: got {} {}",
            body.unwrap_or(""),
            r.status,
            r.text()
        );
        r
    }

    /// Asserts the status and that the `fault_message` contains `needle`.
    pub fn expect_fault(&self, method: &str, path: &str, body: &str, status: u16, needle: &str) {
        let r = self.expect(method, path, Some(body), status);
        let fault = r.fault();
        assert!(
            fault.contains(needle),
            "{method} {path} {body}: {fault:?} lacks {needle:?}"
        );
    }

    /// Validates every recorded response against the spec with
    /// `tests/api_schema.py`. Skipped (with a note) when Python lacks
    /// PyYAML or jsonschema, unless STRATO_SCHEMA_CHECK=require.
    pub fn check_schema(&self, dir: &Path) {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let python = std::env::var("STRATO_SCHEMA_PYTHON").unwrap_or_else(|_| "python3".into());
        let required = std::env::var("STRATO_SCHEMA_CHECK").is_ok_and(|v| v == "require");
        let usable = Command::new(&python)
            .args(["-c", "import yaml, jsonschema"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !usable {
            assert!(
                !required,
                "{python} cannot import yaml and jsonschema for the schema check"
            );
            eprintln!("note: schema check skipped ({python} lacks PyYAML or jsonschema)");
            return;
        }
        let transcript = dir.join(format!("{}-transcript.jsonl", self.spec));
        let mut text = String::new();
        for e in self.log.lock().unwrap().iter() {
            text.push_str(&format!(
                "{{\"method\":{},\"path\":{},\"status\":{},\"content_type\":{},\"body\":{}}}\n",
                json::quote(&e.method),
                json::quote(&e.path),
                e.status,
                json::quote(&e.content_type),
                json::quote(&e.body)
            ));
        }
        std::fs::write(&transcript, text).expect("write the transcript");
        let out = Command::new(&python)
            .arg(root.join("tests/api_schema.py"))
            .arg(root.join(format!("api/openapi/{}.yaml", self.spec)))
            .arg(&transcript)
            .output()
            .expect("run tests/api_schema.py");
        assert!(
            out.status.success(),
            "responses do not match api/openapi/{}.yaml:\n{}{}",
            self.spec,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The last `chars` characters of `text`: how a console ends, for a
/// failure message.
pub fn tail(text: &str, chars: usize) -> &str {
    let skip = text.chars().count().saturating_sub(chars);
    text.char_indices()
        .nth(skip)
        .map_or("", |(i, _)| &text[i..])
}

/// Polls `f` every 20 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of processes whose command line contains `needle` (not this one).
pub fn pids_with(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut pids = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) && !is_zombie(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// The parent of `pid`, from /proc/<pid>/stat.
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The VMM itself of a process started as `strato vm`: the jailed child
/// of a keeper, or the process itself when unjailed.
pub fn vmm_of(pid: i32) -> i32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|c| c.split_whitespace().next()?.parse().ok())
        .unwrap_or(pid)
}

/// True if `pid` is gone or a zombie.
pub fn is_zombie(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 1..].split_whitespace().next())
            .is_none_or(|st| st == "Z" || st == "X"),
        Err(_) => true,
    }
}

/// True while `pid` runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    !is_zombie(pid)
}

/// Sends `sig` to `pid`.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, sig) };
}

/// How long the daemon helpers wait for a state or a console line.
const WAIT: Duration = Duration::from_secs(60);

/// A POST /v1/instances body for test guest `guest_name` (1 vCPU, 32 MiB)
/// with `extra` JSON members (each beginning with a comma).
pub fn create_body(id: &str, guest_name: &str, extra: &str) -> String {
    format!(
        r#"{{"id":"{id}","vcpus":1,"memory_mib":32,"kernel":"{}"{extra}}}"#,
        strato_tests::guest(guest_name).display()
    )
}

/// The state of daemon instance `id`.
pub fn state(api: &Api, id: &str) -> String {
    api.expect("GET", &format!("/v1/instances/{id}"), None, 200)
        .json()["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits for daemon instance `id` to be in state `want`; returns its view.
pub fn wait_state(api: &Api, id: &str, want: &str) -> Json {
    wait_state_for(api, id, want, WAIT)
}

/// [`wait_state`] with a deadline of `within`.
pub fn wait_state_for(api: &Api, id: &str, want: &str, within: Duration) -> Json {
    wait_for(&format!("{id} to be {want}"), within, || {
        let v = api
            .expect("GET", &format!("/v1/instances/{id}"), None, 200)
            .json();
        (v["state"] == want).then_some(v)
    })
}

/// Waits for `marker` on daemon instance `id`'s console; returns the
/// console text.
pub fn wait_console(api: &Api, id: &str, marker: &str) -> String {
    wait_console_for(api, id, marker, WAIT)
}

/// [`wait_console`] with a deadline of its own (Linux guests booting side
/// by side on the lane's emulated CPUs need minutes).
pub fn wait_console_for(api: &Api, id: &str, marker: &str, timeout: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = api
            .expect("GET", &format!("/v1/instances/{id}/console"), None, 200)
            .text();
        if text.contains(marker) {
            return text;
        }
        if start.elapsed() > timeout {
            let show = api.call("GET", &format!("/v1/instances/{id}"), None).text();
            let threads = Json::parse(&show)
                .ok()
                .and_then(|j| j["pid"].as_u64())
                .map(|pid| strato_tests::vmm_report(pid as u32))
                .unwrap_or_default();
            let tail = tail(&text, 3000);
            panic!(
                "timed out after {timeout:?} waiting for {marker:?} on {id}'s console; \
                 the instance: {show}\nits VMM's threads:\n{threads}its console ends:\n{tail}"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The VMM process id of daemon instance `id`.
pub fn pid_of(api: &Api, id: &str) -> i32 {
    api.expect("GET", &format!("/v1/instances/{id}"), None, 200)
        .json()["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("{id} has no pid")) as i32
}

/// What a process holds: open descriptors, threads, resident memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Entries of /proc/PID/fd.
    pub fds: usize,
    /// Entries of /proc/PID/task.
    pub threads: usize,
    /// VmRSS of /proc/PID/status, in KiB.
    pub rss_kib: u64,
}

impl Usage {
    /// One sample of `pid`.
    pub fn of(pid: i32) -> Usage {
        let count = |what: &str| {
            std::fs::read_dir(format!("/proc/{pid}/{what}"))
                .unwrap_or_else(|e| panic!("/proc/{pid}/{what}: {e}"))
                .count()
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
        Usage {
            fds: count("fd"),
            threads: count("task"),
            rss_kib,
        }
    }

    /// A sample of `pid` once its descriptors and threads have stopped
    /// changing for 200 ms (a connection's thread ends just after its
    /// response), or the last one after 5 s.
    pub fn settled(pid: i32) -> Usage {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut last = Usage::of(pid);
        let mut same = 0;
        while same < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            let now = Usage::of(pid);
            same = if (now.fds, now.threads) == (last.fds, last.threads) {
                same + 1
            } else {
                0
            };
            last = now;
        }
        last
    }
}

/// A `strato serve` for one test; kills the daemon and every VMM process
/// of its state directory on drop.
pub struct Daemon {
    /// The daemon process.
    pub child: Child,
    /// API socket.
    pub sock: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
}

impl Daemon {
    /// Starts a daemon and waits for its socket.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        Self::start_in(dir, None, extra)
    }

    /// Starts a daemon inside network namespace `netns` (so its instances
    /// see that namespace's taps) and waits for its socket.
    pub fn start_in(dir: &Path, netns: Option<&Netns>, extra: &[&str]) -> Daemon {
        Self::start_with_env(dir, netns, &[], extra)
    }

    /// [`Daemon::start_in`] with `env` added to the daemon's environment,
    /// which its VMM processes inherit.
    pub fn start_with_env(
        dir: &Path,
        netns: Option<&Netns>,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Daemon {
        let sock = dir.join("strato.sock");
        let state = dir.join("state");
        let log = dir.join("daemon.log");
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("daemon log");
        let mut cmd = match netns {
            // nsenter execs strato (the child is the daemon itself) in the
            // network namespace alone: `ip netns exec` would also remount
            // /sys, hiding the cgroup hierarchies the daemon's jails use.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{}", ns.name))
                    .arg(strato_tests::strato_bin());
                c
            }
            None => Command::new(strato_tests::strato_bin()),
        };
        let child = cmd
            .args(["--log-level", "info", "serve", "--api-sock"])
            .arg(&sock)
            .arg("--state-dir")
            .arg(&state)
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn strato serve");
        let mut d = Daemon {
            child,
            sock,
            state,
            log,
        };
        let sock = d.sock.clone();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if raw_request(&sock, "GET", "/v1/instances", None, Duration::from_secs(5))
                .is_ok_and(|r| r.status == 200)
            {
                break;
            }
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("strato serve exited with {status}: {}", d.log_text());
            }
            assert!(Instant::now() < deadline, "the daemon did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the daemon alone (SIGKILL), leaving its VMM processes.
    pub fn crash(&mut self) {
        strato_tests::kill_and_reap(&mut self.child);
    }

    /// The daemon's process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Child processes of the daemon, zombies included.
    pub fn children(&self) -> Vec<i32> {
        let parent = self.pid();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                    s.rfind(')')
                        .and_then(|i| s[i + 1..].split_whitespace().nth(1))
                        .and_then(|p| p.parse::<i32>().ok())
                        == Some(parent)
                })
            })
            .collect()
    }

    /// Bound unix sockets in the daemon's network namespace whose path is
    /// in its state directory.
    pub fn state_sockets(&self) -> Vec<String> {
        let table =
            std::fs::read_to_string(format!("/proc/{}/net/unix", self.pid())).unwrap_or_default();
        let state = format!("{}/", self.state.display());
        table
            .lines()
            .filter_map(|l| l.split_whitespace().nth(7))
            .filter(|p| p.starts_with(&state))
            .map(str::to_string)
            .collect()
    }

    /// Entries of the state directory besides the daemon's lock file.
    pub fn state_entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.state)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".lock")
                    .collect()
            })
            .unwrap_or_default()
    }

    /// VMM processes of this daemon's state directory: one per instance
    /// (a jailed VMM runs under a keeper process with the same command
    /// line, which alone is counted).
    pub fn vmm_pids(&self) -> Vec<i32> {
        let all = pids_with(&format!("{}/", self.state.display()));
        all.iter()
            .copied()
            .filter(|p| !parent_of(*p).is_some_and(|pp| all.contains(&pp)))
            .collect()
    }

    /// For a failed count of VMM processes: every process of this state
    /// directory (pid, parent, state, command line) and what the daemon
    /// says of each instance (a VMM that ended says why in its
    /// `exit_reason`).
    pub fn processes(&self, api: &Api) -> String {
        let mut out = String::new();
        for pid in pids_with(&format!("{}/", self.state.display())) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?");
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            out += &format!(
                "pid {pid} parent {:?} state {state}: {}\n",
                parent_of(pid),
                String::from_utf8_lossy(&cmd).replace('\0', " ")
            );
        }
        out + &api.get("/v1/instances").text()
    }

    /// Instance directories left in the state directory.
    pub fn instance_dirs(&self) -> Vec<String> {
        std::fs::read_dir(&self.state)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        strato_tests::kill_and_reap(&mut self.child);
        for pid in self.vmm_pids() {
            kill(pid, libc::SIGKILL);
        }
    }
}

pub use strato_tests::Netns;
