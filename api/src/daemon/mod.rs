//! `strato serve`: the host daemon. It keeps a directory per instance under
//! the state directory, runs each microVM in its own `strato vm` process
//! (own session, so it outlives a daemon restart), drives that process
//! through its Firecracker-compatible API, and serves a REST API for
//! creating and controlling instances (see `api/openapi/daemon.yaml`).
//!
//! Threads: one per API connection (see `http`); a monitor reaps
//! children and notices dead VMM processes; the main thread waits for
//! SIGINT/SIGTERM. Each instance has an operation lock that serializes
//! state-changing requests on it (start, stop, pause, ...) and a record
//! lock held only briefly, so reads never wait for a slow stop.

pub mod model;
mod policy;
mod process;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::http::{self, ApiError, Method, Peer, Reply, Request, Response};
use crate::lock;
use model::{CreateRequest, InstanceConfig, Intent, Limits, Record, ResizeRequest, State};
use policy::{PathPolicy, Use};
use process::{Proc, Reaper, Spawn, CONSOLE, EXIT, RECORD, SOCK};

/// Options of `strato serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Unix socket of the REST API (mode 0600).
    #[arg(long)]
    api_sock: PathBuf,
    /// Directory for instance records, sockets and console logs.
    #[arg(long)]
    state_dir: PathBuf,
    /// Group (numeric id) allowed on the API socket (mode 0660).
    #[arg(long, value_name = "GID")]
    api_sock_group: Option<u32>,
    /// How long a stop waits for the guest to shut down after the power
    /// button (or Ctrl-Alt-Del) before the VMM process is killed.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    stop_timeout_ms: u64,
    /// A directory (or file) whose files guests may use as kernel, initrd
    /// or drive; repeat for more. Without any, files are opened with the
    /// requesting client's credentials. Never inside the state directory.
    #[arg(long = "allow-path", value_name = "DIR")]
    allow_paths: Vec<PathBuf>,
    /// Start the VMM processes without their seccomp filters
    /// (`strato vm --no-seccomp`).
    #[arg(long)]
    no_seccomp: bool,
    /// Start VMMs unjailed: no namespaces, no cgroup, as root.
    #[arg(long)]
    no_jail: bool,
    /// Unprivileged uid jailed VMMs run as (not 0).
    #[arg(long, default_value_t = 65534, value_name = "UID",
          value_parser = clap::value_parser!(u32).range(1..))]
    jail_uid: u32,
    /// Unprivileged gid jailed VMMs run as (not 0).
    #[arg(long, default_value_t = 65534, value_name = "GID",
          value_parser = clap::value_parser!(u32).range(1..))]
    jail_gid: u32,
    /// Memory a jailed VMM may use beyond its guest's (cgroup memory.max
    /// is guest memory plus this).
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    jail_memory_overhead: u64,
}

/// The jail settings of a daemon: uid, gid, memory overhead in MiB.
#[derive(Clone, Copy, Debug)]
struct JailPolicy {
    uid: u32,
    gid: u32,
    overhead_mib: u64,
}

/// The files of a configuration, opened for one start as the path policy
/// allows, and its taps, attached with the daemon's rights (a jailed VMM
/// has none on them); the VMM inherits them.
struct Files {
    /// (path as configured, open file): kernel, initrd, then the drives.
    opened: Vec<(PathBuf, std::fs::File)>,
    /// (tap name, attached /dev/net/tun).
    taps: Vec<(String, std::fs::File)>,
}

impl Files {
    fn fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let taps = self.taps.iter().map(|(_, f)| f);
        self.opened
            .iter()
            .map(|(_, f)| f)
            .chain(taps)
            .map(|f| f.as_raw_fd())
            .collect()
    }

    /// (tap name, descriptor) of each tap, for `strato vm --tap-fd`.
    fn tap_fds(&self) -> Vec<(String, std::os::fd::RawFd)> {
        use std::os::fd::AsRawFd;
        self.taps
            .iter()
            .map(|(n, f)| (n.clone(), f.as_raw_fd()))
            .collect()
    }

    /// The path by which the VMM reaches the file configured as `path`.
    fn vmm_path(&self, path: &Path) -> PathBuf {
        use std::os::fd::AsRawFd;
        self.opened
            .iter()
            .find(|(p, _)| p == path)
            .map(|(_, f)| PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())))
            .unwrap_or_else(|| path.to_path_buf())
    }

    /// `message` from the VMM with its descriptor paths put back as the
    /// paths the client gave (highest descriptor first, so that
    /// /proc/self/fd/12 is not read as /proc/self/fd/1).
    fn explain(&self, message: &str) -> String {
        use std::os::fd::AsRawFd;
        let mut by_fd: Vec<(i32, &PathBuf)> = self
            .opened
            .iter()
            .map(|(p, f)| (f.as_raw_fd(), p))
            .collect();
        by_fd.sort_by_key(|(fd, _)| std::cmp::Reverse(*fd));
        by_fd.iter().fold(message.to_string(), |m, (fd, p)| {
            m.replace(&format!("/proc/self/fd/{fd}"), &p.display().to_string())
        })
    }
}

/// API connections served at once (handlers of slow operations such as
/// a stop hold theirs while they wait).
const API_CONNECTIONS: usize = 64;
/// How often the monitor looks at the children.
const MONITOR_PERIOD: Duration = Duration::from_millis(100);
/// How long a new VMM process may take to serve its API.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Timeout of one configuration call to a VMM.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds between the balloon statistics of the daemon's guests.
const BALLOON_STATS_S: u16 = 10;
/// Timeout of InstanceStart (the VM is built during the call).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest `timeout_ms` a stop or delete accepts (one hour).
const MAX_STOP_TIMEOUT_MS: u64 = 3_600_000;
/// Default and largest `bytes` of the console endpoint.
const CONSOLE_DEFAULT: u64 = 64 * 1024;
const CONSOLE_MAX: u64 = 16 * 1024 * 1024;
/// Longest unix socket path (sun_path less the NUL).
const SUN_PATH_MAX: usize = 107;

/// One instance: its directory, the operation lock and the record.
struct Instance {
    id: String,
    dir: PathBuf,
    /// Held for the whole of a state-changing operation.
    op: Mutex<()>,
    /// Held briefly to read or change the record.
    rec: Mutex<Record>,
    /// Set once deleted, for operations that were waiting on `op`.
    deleted: AtomicBool,
}

impl Instance {
    fn new(dir: PathBuf, rec: Record) -> Self {
        Instance {
            id: rec.id.clone(),
            dir,
            op: Mutex::new(()),
            rec: Mutex::new(rec),
            deleted: AtomicBool::new(false),
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join(SOCK)
    }

    /// Writes the record atomically.
    fn persist(&self, rec: &Record) -> std::io::Result<()> {
        let value = serde_json::to_value(rec).map_err(std::io::Error::other)?;
        crate::vm_api::write_atomic(&self.dir.join(RECORD), &value)
    }

    /// [`Self::persist`], logging a failure (for updates that must not fail).
    fn save(&self, rec: &Record) {
        if let Err(e) = self.persist(rec) {
            log::error!("instance {}: cannot write its record: {e}", self.id);
        }
    }

    fn view(&self) -> Value {
        lock(&self.rec).view()
    }
}

/// A `what` change of a live instance through its VMM's `PATCH path`.
fn patch_vmm(inst: &Instance, path: &str, body: Value, what: &str) -> Result<(), ApiError> {
    match process::call_vmm(&inst.sock(), "PATCH", path, Some(&body), CALL_TIMEOUT) {
        Ok(r) if (200..300).contains(&r.status) => Ok(()),
        Ok(r) => Err(ApiError::bad_request(format!(
            "the VMM refused the {what} change: {}",
            r.message()
        ))),
        Err(e) => Err(internal(format!("cannot reach the VMM: {e}"))),
    }
}

/// Whether a live instance's memory can become `memory` MiB: through its
/// balloon, from the size it booted with down, and back up to it.
fn live_memory_allowed(id: &str, rec: &Record, memory: u64) -> Result<(), ApiError> {
    if let Some(base) = rec.hotplug_base_mib {
        let most = base + rec.hotplug_total_mib;
        if memory > most {
            return Err(conflict(format!(
                "instance {id} started with room for {most} MiB (max_memory_mib): stop it to give it {memory} MiB"
            )));
        }
        // Plugged memory comes in whole blocks; a size between two would
        // never be what the guest has.
        let block = vmm::MemoryHotplugConfig::new(0).block_size_mib;
        if memory > base && !(memory - base).is_multiple_of(block) {
            return Err(ApiError::bad_request(format!(
                "instance {id} grows above its boot size of {base} MiB in steps of {block} MiB: {memory} MiB is between two"
            )));
        }
        if memory >= base || rec.balloon_base_mib.is_some() {
            return Ok(());
        }
    }
    let Some(base) = rec.balloon_base_mib else {
        return Err(conflict(format!(
            "instance {id} is {} without a balloon (all its virtio devices are drives and network interfaces): its memory cannot change while it runs; stop it first",
            rec.state.name()
        )));
    };
    if memory > base {
        return Err(conflict(format!(
            "instance {id} started with {base} MiB and no max_memory_mib above it: while it runs, its memory can shrink and grow back up to {base} MiB; stop it to give it {memory} MiB"
        )));
    }
    Ok(())
}

/// What a live instance's guest has now, as its VMM reports it: the vCPUs
/// present and the plug and unplug events the guest has not finished, and
/// the memory the balloon leaves it; null if the VMM does not answer.
fn actual_size(inst: &Instance) -> Value {
    let answer = process::call_vmm(
        &inst.sock(),
        "GET",
        "/machine-config",
        None,
        Duration::from_secs(1),
    );
    match answer {
        Ok(r) if r.status == 200 => {
            let m = r.json();
            let mut memory = m["mem_size_mib"].as_u64().unwrap_or(0);
            let (balloon, hotplug) = {
                let rec = lock(&inst.rec);
                (
                    rec.balloon_base_mib.is_some(),
                    rec.hotplug_base_mib.is_some(),
                )
            };
            if hotplug {
                let answer = process::call_vmm(
                    &inst.sock(),
                    "GET",
                    "/hotplug/memory",
                    None,
                    Duration::from_secs(1),
                );
                match answer {
                    Ok(h) if h.status == 200 => {
                        memory += h.json()["plugged_size_mib"].as_u64().unwrap_or(0);
                    }
                    _ => return Value::Null,
                }
            }
            if balloon {
                let answer = process::call_vmm(
                    &inst.sock(),
                    "GET",
                    "/balloon/statistics",
                    None,
                    Duration::from_secs(1),
                );
                match answer {
                    Ok(b) if b.status == 200 => {
                        let taken = b.json()["actual_mib"].as_u64().unwrap_or(0);
                        memory = memory.saturating_sub(taken);
                    }
                    _ => return Value::Null,
                }
            }
            json!({
                "vcpus": m["vcpus_present"],
                "vcpus_inserting": m["vcpus_inserting"],
                "vcpus_removing": m["vcpus_removing"],
                "memory_mib": memory,
            })
        }
        _ => Value::Null,
    }
}

fn proc_of(rec: &Record) -> Option<Proc> {
    Some(Proc {
        pid: rec.pid?,
        start: rec.proc_start?,
    })
}

/// The exit record `strato vm` writes.
#[derive(Deserialize)]
struct ExitFile {
    reason: String,
    success: bool,
    exit_status: i32,
    #[serde(default)]
    boot_time_us: Option<u64>,
}

/// How a run ended: state, reason, exit status.
fn outcome(
    intent: Option<Intent>,
    exit: Option<&ExitFile>,
    status: Option<i32>,
) -> (State, String, Option<i32>) {
    let waited = status.map(process::describe_status);
    let code = waited.as_ref().map(|w| w.1);
    match (intent, exit) {
        (Some(_), Some(e)) => (State::Stopped, e.reason.clone(), Some(e.exit_status)),
        (Some(Intent::Kill), None) => (
            State::Stopped,
            "killed on request".into(),
            code.or(Some(128 + libc::SIGKILL)),
        ),
        (Some(Intent::StopKilled(ms)), None) => (
            State::Stopped,
            format!("no shutdown within {ms} ms of the shutdown request; killed"),
            code.or(Some(128 + libc::SIGKILL)),
        ),
        (Some(Intent::Stop), None) => (
            State::Stopped,
            match &waited {
                Some((w, _)) => format!("stopped; the VMM process {w}"),
                None => "stopped".into(),
            },
            code,
        ),
        (None, Some(e)) => (
            if e.success {
                State::Stopped
            } else {
                State::Crashed
            },
            e.reason.clone(),
            Some(e.exit_status),
        ),
        (None, None) => (
            State::Crashed,
            match &waited {
                Some((w, _)) => format!("the VMM process {w} without an exit record"),
                None => "the VMM process ended without an exit record".into(),
            },
            code,
        ),
    }
}

/// The daemon's shared state.
struct Daemon {
    state_dir: PathBuf,
    exe: PathBuf,
    stop_timeout_ms: u64,
    limits: Limits,
    log_level: log::LevelFilter,
    instances: Mutex<BTreeMap<String, Arc<Instance>>>,
    /// Ids being created: not listed yet, but taken.
    reserved: Mutex<HashSet<String>>,
    reaper: Reaper,
    policy: PathPolicy,
    /// Pass `--no-seccomp` to the VMM processes.
    no_seccomp: bool,
    /// None when started with `--no-jail`.
    jail: Option<JailPolicy>,
}

/// Releases a reserved id when a create ends, however it ends.
struct Reservation<'a> {
    daemon: &'a Daemon,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock(&self.daemon.reserved).remove(&self.id);
    }
}

fn conflict(message: impl Into<String>) -> ApiError {
    ApiError::new(409, message)
}

fn internal(message: impl Into<String>) -> ApiError {
    ApiError::new(500, message)
}

/// Parses `key=<u64>` from a query string; None when absent.
fn query_u64(query: &str, key: &str, max: u64) -> Result<Option<u64>, ApiError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != key {
            continue;
        }
        return match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(Some(n)),
            _ => Err(ApiError::bad_request(format!(
                "query parameter {key} must be an integer from 0 to {max}, got {v:?}"
            ))),
        };
    }
    Ok(None)
}

/// The last `n` bytes of `path`, a file the VMM wrote (empty if it does
/// not exist).
fn read_tail(path: &Path, n: u64) -> std::io::Result<Vec<u8>> {
    let mut f = match process::open_vmm_file(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(n)))?;
    let mut buf = Vec::new();
    f.take(n).read_to_end(&mut buf)?;
    Ok(buf)
}

impl Daemon {
    fn instance(&self, id: &str) -> Result<Arc<Instance>, ApiError> {
        lock(&self.instances)
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::new(404, format!("no instance {id:?}")))
    }

    /// Takes `inst`'s operation lock, failing if it was deleted meanwhile.
    fn begin<'a>(&self, inst: &'a Instance) -> Result<std::sync::MutexGuard<'a, ()>, ApiError> {
        let guard = lock(&inst.op);
        if inst.deleted.load(Ordering::SeqCst) {
            return Err(ApiError::new(404, format!("no instance {:?}", inst.id)));
        }
        Ok(guard)
    }

    /// Opens every file of `cfg` for a start requested by `peer`.
    fn open_files(&self, cfg: &InstanceConfig, peer: Option<&Peer>) -> Result<Files, ApiError> {
        let mut opened = Vec::new();
        let mut add = |what: &str, path: &Path, usage: Use| -> Result<(), ApiError> {
            let file = self.policy.open(what, path, usage, peer)?;
            opened.push((path.to_path_buf(), file));
            Ok(())
        };
        add("kernel", &cfg.kernel, Use::Image)?;
        if let Some(initrd) = &cfg.initrd {
            add("initrd", initrd, Use::Image)?;
        }
        for d in &cfg.drives {
            let usage = Use::Drive { write: !d.readonly };
            add(&format!("drive {}", d.id), &d.path, usage)?;
        }
        let taps = cfg
            .nets
            .iter()
            .map(|n| {
                vmm::Tap::attach(&n.tap)
                    .map(|f| (n.tap.clone(), f))
                    .map_err(|e| ApiError::bad_request(e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Files { opened, taps })
    }

    /// Stops every VMM process of this state directory (of instance `id`
    /// only, if given) that no record owns: left by a daemon that died
    /// before recording it, or whose record was unusable.
    fn sweep(&self, id: Option<&str>) {
        let owned: Vec<i32> = lock(&self.instances)
            .values()
            .filter_map(|i| lock(&i.rec).pid)
            .collect();
        for (proc, of) in process::vmms_in(&self.state_dir) {
            // A jailed VMM is the child of the recorded process (its
            // keeper, which has the same command line).
            let kept = process::parent(proc.pid).is_some_and(|p| owned.contains(&p));
            if id.is_some_and(|id| id != of) || owned.contains(&proc.pid) || kept {
                continue;
            }
            log::warn!(
                "stopping VMM process {} of instance {of:?}: no instance record owns it",
                proc.pid
            );
            if !self.reaper.kill(&proc) {
                log::error!("VMM process {} did not die after SIGKILL", proc.pid);
            }
            self.reaper.take(proc.pid);
            crate::jail::cgroup::remove(&of, proc.pid);
        }
    }

    fn reserve(&self, id: &str) -> Result<Reservation<'_>, ApiError> {
        let map = lock(&self.instances);
        let mut reserved = lock(&self.reserved);
        if map.contains_key(id) || reserved.contains(id) {
            return Err(conflict(format!("instance {id:?} already exists")));
        }
        reserved.insert(id.to_string());
        Ok(Reservation {
            daemon: self,
            id: id.to_string(),
        })
    }

    // ----- requests -----

    fn handle(&self, req: &Request) -> Result<Reply, ApiError> {
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let method = req.method().clone();
        let not_allowed = || {
            Err(ApiError::new(
                405,
                format!(
                    "method {method} is not allowed on {path} (allowed: {})",
                    allowed(path)
                ),
            ))
        };
        match segs.as_slice() {
            ["v1", "instances"] => match method {
                Method::Post => self.create(req),
                Method::Get => Ok(self.list()),
                _ => not_allowed(),
            },
            ["v1", "instances", id] => match method {
                Method::Get => self.show(id),
                Method::Patch => self.resize(id, req),
                Method::Delete => self.delete(id, query),
                _ => not_allowed(),
            },
            ["v1", "instances", id, action @ ("start" | "stop" | "kill" | "pause" | "resume")] => {
                match method {
                    Method::Post => self.action(id, action, query, req.peer()),
                    _ => not_allowed(),
                }
            }
            ["v1", "instances", id, "console"] => match method {
                Method::Get => self.console(id, query),
                _ => not_allowed(),
            },
            _ => Err(ApiError::new(404, format!("no such endpoint: {path}"))),
        }
    }

    fn create(&self, req: &Request) -> Result<Reply, ApiError> {
        let body: CreateRequest = http::json_body(req)?;
        let (id, config, start) = body.validate(&self.limits)?;
        let sock_len = self.state_dir.as_os_str().len() + 2 + id.len() + SOCK.len();
        if sock_len > SUN_PATH_MAX {
            return Err(ApiError::bad_request(format!(
                "instance id {id:?} is too long for this daemon: its socket path would be {sock_len} bytes, at most {SUN_PATH_MAX} fit"
            )));
        }
        // Opened (and checked) now even for an instance not started yet,
        // so a refused file is refused at once.
        let files = self.open_files(&config, req.peer())?;
        let _reservation = self.reserve(&id)?;
        // No VMM of an earlier instance of this id may survive beside the
        // new one.
        self.sweep(Some(&id));
        let dir = self.state_dir.join(&id);
        if std::fs::symlink_metadata(&dir).is_ok() {
            // Left over from a create that never finished: not an instance.
            log::warn!("removing stale {}", dir.display());
            let _ = std::fs::remove_dir_all(&dir).or_else(|_| std::fs::remove_file(&dir));
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| internal(format!("cannot create {}: {e}", dir.display())))?;
        let inst = Arc::new(Instance::new(dir, Record::new(id.clone(), config)));
        let made = (|| {
            let _op = lock(&inst.op);
            inst.persist(&lock(&inst.rec))
                .map_err(|e| internal(format!("cannot write the instance record: {e}")))?;
            if start {
                self.launch(&inst, &files)?;
            }
            Ok(())
        })();
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&inst.dir);
            return Err(e);
        }
        lock(&self.instances).insert(id, inst.clone());
        log::info!("instance {} created", inst.id);
        Ok(Reply::Json(201, inst.view()))
    }

    fn list(&self) -> Reply {
        let all: Vec<Arc<Instance>> = lock(&self.instances).values().cloned().collect();
        let views: Vec<Value> = all.iter().map(|i| i.view()).collect();
        Reply::Json(200, json!({ "instances": views }))
    }

    fn show(&self, id: &str) -> Result<Reply, ApiError> {
        let inst = self.instance(id)?;
        let ask = {
            let rec = lock(&inst.rec);
            rec.state.is_live() && rec.boot_time_us.is_none()
        };
        if ask {
            // The boot time is known once the guest has signalled it; ask
            // the VMM (without the operation lock: a stop may be running).
            let got = process::call_vmm(&inst.sock(), "GET", "/", None, Duration::from_secs(1))
                .ok()
                .filter(|r| r.status == 200)
                .and_then(|r| r.json()["boot_time_us"].as_u64());
            if let Some(us) = got {
                let mut rec = lock(&inst.rec);
                if rec.state.is_live() {
                    rec.boot_time_us = Some(us);
                    inst.save(&rec);
                }
            }
        }
        let live = lock(&inst.rec).state.is_live();
        let mut view = inst.view();
        if live {
            view["actual"] = actual_size(&inst);
        }
        Ok(Reply::Json(200, view))
    }

    fn resize(&self, id: &str, req: &Request) -> Result<Reply, ApiError> {
        let body: ResizeRequest = http::json_body(req)?;
        let inst = self.instance(id)?;
        if body.vcpus.is_none() && body.memory_mib.is_none() {
            return Err(ApiError::bad_request("give vcpus, memory_mib or both"));
        }
        let _op = self.begin(&inst)?;
        let mut rec = lock(&inst.rec);
        let vcpus = body.vcpus.unwrap_or(rec.config.vcpus);
        let memory = body.memory_mib.unwrap_or(rec.config.memory_mib);
        model::check_size(vcpus, memory, &self.limits)?;
        let live = rec.state.is_live();
        if live {
            if memory != rec.config.memory_mib {
                // Checked first: a refused memory change leaves the vCPUs.
                live_memory_allowed(id, &rec, memory)?;
            }
            let max = rec.config.max_vcpus.unwrap_or(rec.config.vcpus);
            if vcpus > max {
                return Err(ApiError::bad_request(format!(
                    "instance {id} was started with room for {max} vCPUs (max_vcpus); stop it and raise max_vcpus to give it {vcpus}"
                )));
            }
        } else if let Some(max) = rec.config.max_vcpus {
            model::check_max_vcpus(vcpus, max, &self.limits)?;
        }
        if let Some(max) = rec.config.max_memory_mib.filter(|m| memory > *m && !live) {
            return Err(ApiError::bad_request(format!(
                "memory_mib {memory} is above the instance's max_memory_mib {max}"
            )));
        }
        let mut new = rec.clone();
        new.config.vcpus = vcpus;
        new.config.memory_mib = memory;
        // Changed in the running VM first: a refusal leaves the record as
        // it was. Memory goes first (checked above, it is rarely refused);
        // if the vCPUs are refused after it, the record keeps the memory.
        if live && memory != rec.config.memory_mib {
            // Above the boot size through virtio-mem, below it through the
            // balloon; each goes to its part, the other to empty.
            let hotplug_base = rec.hotplug_base_mib;
            let base = hotplug_base.or(rec.balloon_base_mib).unwrap_or(memory);
            let plug = memory.saturating_sub(base);
            let amount = base.saturating_sub(memory);
            if hotplug_base.is_some() && plug == 0 {
                patch_vmm(
                    &inst,
                    "/hotplug/memory",
                    json!({ "requested_size_mib": 0 }),
                    "memory",
                )?;
            }
            if rec.balloon_base_mib.is_some() {
                patch_vmm(&inst, "/balloon", json!({ "amount_mib": amount }), "memory")?;
            }
            if plug > 0 {
                patch_vmm(
                    &inst,
                    "/hotplug/memory",
                    json!({ "requested_size_mib": plug }),
                    "memory",
                )?;
            }
            log::info!(
                "instance {id}: {memory} MiB requested (plugged {plug} MiB, balloon {amount} MiB)"
            );
        }
        if live && vcpus != rec.config.vcpus {
            let plugged = patch_vmm(
                &inst,
                "/machine-config",
                json!({ "vcpu_count": vcpus }),
                "vCPU",
            );
            if let Err(e) = plugged {
                if memory != rec.config.memory_mib {
                    let mut kept = rec.clone();
                    kept.config.memory_mib = memory;
                    if inst.persist(&kept).is_ok() {
                        *rec = kept;
                    }
                }
                return Err(e);
            }
            log::info!("instance {id}: {vcpus} vCPUs requested");
        }
        inst.persist(&new)
            .map_err(|e| internal(format!("cannot write the instance record: {e}")))?;
        *rec = new;
        let mut view = rec.view();
        drop(rec);
        if live {
            view["actual"] = actual_size(&inst);
        }
        Ok(Reply::Json(200, view))
    }

    fn delete(&self, id: &str, query: &str) -> Result<Reply, ApiError> {
        let timeout = self.stop_timeout(query)?;
        let inst = self.instance(id)?;
        let _op = self.begin(&inst)?;
        if lock(&inst.rec).state.is_live() {
            self.stop(&inst, timeout, false)?;
        }
        self.sweep(Some(id));
        if let Err(e) = std::fs::remove_dir_all(&inst.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(internal(format!(
                    "cannot remove {}: {e}",
                    inst.dir.display()
                )));
            }
        }
        inst.deleted.store(true, Ordering::SeqCst);
        lock(&self.instances).remove(id);
        log::info!("instance {id} deleted");
        Ok(Reply::Empty(204))
    }

    fn stop_timeout(&self, query: &str) -> Result<u64, ApiError> {
        Ok(query_u64(query, "timeout_ms", MAX_STOP_TIMEOUT_MS)?.unwrap_or(self.stop_timeout_ms))
    }

    fn action(
        &self,
        id: &str,
        action: &str,
        query: &str,
        peer: Option<&Peer>,
    ) -> Result<Reply, ApiError> {
        let timeout = match action {
            "stop" => self.stop_timeout(query)?,
            _ => self.stop_timeout_ms,
        };
        let inst = self.instance(id)?;
        let _op = self.begin(&inst)?;
        let state = lock(&inst.rec).state;
        let wrong = || {
            conflict(format!(
                "cannot {action} instance {id}: it is {}",
                state.name()
            ))
        };
        match action {
            "start" if !state.is_live() => {
                let config = lock(&inst.rec).config.clone();
                let files = self.open_files(&config, peer)?;
                self.launch(&inst, &files)?
            }
            "stop" if state.is_live() => self.stop(&inst, timeout, false)?,
            "kill" if state.is_live() => self.stop(&inst, timeout, true)?,
            "pause" if state == State::Running => self.pause(&inst, true)?,
            "resume" if state == State::Paused => self.pause(&inst, false)?,
            _ => return Err(wrong()),
        }
        Ok(Reply::Json(200, inst.view()))
    }

    fn console(&self, id: &str, query: &str) -> Result<Reply, ApiError> {
        let n = query_u64(query, "bytes", CONSOLE_MAX)?.unwrap_or(CONSOLE_DEFAULT);
        let inst = self.instance(id)?;
        let path = inst.dir.join(CONSOLE);
        let io = |e: std::io::Error| internal(format!("cannot read the console log: {e}"));
        let mut out = read_tail(&path, n).map_err(io)?;
        let have = out.len() as u64;
        if have < n {
            let mut older = path.clone().into_os_string();
            older.push(".1");
            let mut prev = read_tail(Path::new(&older), n - have).map_err(io)?;
            prev.extend_from_slice(&out);
            out = prev;
        }
        Ok(Reply::Text(200, out))
    }

    // ----- lifecycle -----

    /// Starts the VMM process of a non-live instance with `files` and
    /// configures it. On failure nothing of the attempt is left: no
    /// process, no socket.
    fn launch(&self, inst: &Instance, files: &Files) -> Result<(), ApiError> {
        let config = lock(&inst.rec).config.clone();
        let _ = std::fs::remove_file(inst.dir.join(EXIT));
        let _ = std::fs::remove_file(inst.sock());
        let jail = self.jail.map(|j| process::Jail {
            uid: j.uid,
            gid: j.gid,
            // Room for the memory it can be given while it runs.
            memory_max_mib: config
                .max_memory_mib
                .unwrap_or(0)
                .max(config.memory_mib)
                .saturating_add(j.overhead_mib),
            // The quota is a backstop for the most vCPUs the instance can
            // be given; the VMM runs only the plugged ones.
            cpus: config.max_vcpus.unwrap_or(config.vcpus).max(config.vcpus),
        });
        self.run_dir(inst, jail.as_ref())?;
        let (proc, gate) = Spawn {
            exe: &self.exe,
            dir: &inst.dir,
            id: &inst.id,
            log_level: self.log_level,
            no_seccomp: self.no_seccomp,
            keep: &files.fds(),
            taps: &files.tap_fds(),
            jail,
        }
        .run()
        .map_err(|e| internal(format!("cannot start the VMM process: {e}")))?;
        self.reaper.own(proc.pid);
        // The process waits at the gate until its pid is on disk: a daemon
        // killed before that closes the gate and the process exits, and
        // one killed after it leaves a record that finds the process.
        let recorded = {
            let mut rec = lock(&inst.rec);
            let mut new = rec.clone();
            new.pid = Some(proc.pid);
            new.proc_start = Some(proc.start);
            let written = inst.persist(&new);
            if written.is_ok() {
                *rec = new;
            }
            written
        };
        if let Err(e) = recorded.and_then(|()| gate.open()) {
            self.reaper.kill(&proc);
            self.reaper.take(proc.pid);
            crate::jail::cgroup::remove(&inst.id, proc.pid);
            let mut rec = lock(&inst.rec);
            rec.pid = None;
            rec.proc_start = None;
            inst.save(&rec);
            return Err(internal(format!("cannot record the VMM process: {e}")));
        }
        match self.configure(inst, &proc, &config, files) {
            Ok(()) => {
                let mut rec = lock(&inst.rec);
                rec.state = State::Running;
                rec.balloon_base_mib = model::gets_balloon(&config).then_some(config.memory_mib);
                let hotplug = model::gets_memory_hotplug(&config);
                rec.hotplug_base_mib = hotplug.then_some(config.memory_mib);
                rec.hotplug_total_mib = match (hotplug, config.max_memory_mib) {
                    (true, Some(max)) => model::hotplug_total_mib(config.memory_mib, max),
                    _ => 0,
                };
                rec.started_at_ms = Some(model::now_ms());
                rec.boot_time_us = None;
                rec.exit_status = None;
                rec.exit_reason = None;
                rec.intent = None;
                inst.save(&rec);
                log::info!("instance {} started, pid {}", inst.id, proc.pid);
                Ok(())
            }
            Err(e) => {
                self.reaper.kill(&proc);
                self.reaper.take(proc.pid);
                crate::jail::cgroup::remove(&inst.id, proc.pid);
                let _ = std::fs::remove_file(inst.sock());
                let _ = std::fs::remove_file(inst.dir.join(EXIT));
                let mut rec = lock(&inst.rec);
                rec.pid = None;
                rec.proc_start = None;
                inst.save(&rec);
                log::warn!("instance {}: start failed: {}", inst.id, e.message);
                Err(e)
            }
        }
    }

    /// Makes the instance's `run/` directory, where the VMM writes its
    /// socket, console log and exit record: owned by the jail uid for a
    /// jailed VMM, which sees only this directory of the instance's.
    fn run_dir(&self, inst: &Instance, jail: Option<&process::Jail>) -> Result<(), ApiError> {
        let run = inst.dir.join(process::RUN);
        let made = std::fs::DirBuilder::new().mode(0o700).create(&run);
        let fail = |e: std::io::Error| internal(format!("cannot make {}: {e}", run.display()));
        match made {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(fail(e)),
            _ => {}
        }
        let (uid, gid) = jail.map_or((0, 0), |j| (j.uid, j.gid));
        std::os::unix::fs::lchown(&run, Some(uid), Some(gid)).map_err(fail)?;
        // The files of an earlier run may belong to another uid.
        if let Ok(entries) = std::fs::read_dir(&run) {
            for e in entries.flatten() {
                std::os::unix::fs::lchown(e.path(), Some(uid), Some(gid)).map_err(fail)?;
            }
        }
        Ok(())
    }

    /// Waits for the new VMM's API and sends it the configuration, then
    /// InstanceStart, as a Firecracker client would.
    fn configure(
        &self,
        inst: &Instance,
        proc: &Proc,
        cfg: &model::InstanceConfig,
        files: &Files,
    ) -> Result<(), ApiError> {
        let sock = inst.sock();
        let deadline = std::time::Instant::now() + READY_TIMEOUT;
        loop {
            if !self.reaper.alive(proc) {
                return Err(internal(format!(
                    "the VMM process exited before serving its API: {}",
                    process::tail(&inst.dir.join(process::VMM_LOG), 400)
                )));
            }
            if sock.exists() {
                if let Ok(r) = process::call_vmm(&sock, "GET", "/", None, Duration::from_secs(2)) {
                    if r.status == 200 {
                        break;
                    }
                }
            }
            if std::time::Instant::now() >= deadline {
                return Err(internal(format!(
                    "the VMM process did not serve its API within {} s",
                    READY_TIMEOUT.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // `what` names the step in error messages.
        let put = |what: &str, path: &str, body: Value, timeout: Duration| {
            let answer = process::call_vmm(&sock, "PUT", path, Some(&body), timeout);
            match answer {
                Ok(r) if (200..300).contains(&r.status) => Ok(()),
                Ok(r) if (400..500).contains(&r.status) => Err(ApiError::bad_request(format!(
                    "{what}: {}",
                    files.explain(&r.message())
                ))),
                Ok(r) => Err(internal(format!(
                    "{what}: the VMM answered {} to PUT {path}: {}",
                    r.status,
                    r.message()
                ))),
                Err(e) => Err(internal(format!(
                    "{what}: PUT {path} to the VMM failed: {e}"
                ))),
            }
        };
        put(
            "the VMM refused the machine configuration",
            "/machine-config",
            {
                let mut m = json!({"vcpu_count": cfg.vcpus, "mem_size_mib": cfg.memory_mib});
                if let Some(max) = cfg.max_vcpus {
                    m["max_vcpus"] = json!(max);
                }
                m
            },
            CALL_TIMEOUT,
        )?;
        let mut boot = json!({ "kernel_image_path": files.vmm_path(&cfg.kernel) });
        if let Some(c) = &cfg.cmdline {
            boot["boot_args"] = json!(c);
        }
        if let Some(i) = &cfg.initrd {
            boot["initrd_path"] = json!(files.vmm_path(i));
        }
        put(
            "the VMM refused the boot source",
            "/boot-source",
            boot,
            CALL_TIMEOUT,
        )?;
        for d in &cfg.drives {
            put(
                &format!("the VMM refused drive {}", d.id),
                &format!("/drives/{}", d.id),
                json!({
                    "drive_id": d.id,
                    "path_on_host": files.vmm_path(&d.path),
                    "is_root_device": d.root,
                    "is_read_only": d.readonly,
                }),
                CALL_TIMEOUT,
            )?;
        }
        for n in &cfg.nets {
            put(
                &format!("the VMM refused network interface {}", n.id),
                &format!("/network-interfaces/{}", n.id),
                json!({"iface_id": n.id, "host_dev_name": n.tap, "guest_mac": n.mac}),
                CALL_TIMEOUT,
            )?;
        }
        if model::gets_balloon(cfg) {
            // Empty until a resize shrinks the instance. The guest may not
            // take the memory back when it runs short: the size is the size.
            // Statistics are how the daemon reads what the guest gave.
            put(
                "the VMM refused the balloon",
                "/balloon",
                json!({"amount_mib": 0, "deflate_on_oom": false,
                       "stats_polling_interval_s": BALLOON_STATS_S}),
                CALL_TIMEOUT,
            )?;
        }
        if model::gets_memory_hotplug(cfg) {
            // Nothing plugged until a resize grows the instance.
            let max = cfg.max_memory_mib.unwrap_or(cfg.memory_mib);
            put(
                "the VMM refused the hotpluggable memory",
                "/hotplug/memory",
                json!({"total_size_mib": model::hotplug_total_mib(cfg.memory_mib, max)}),
                CALL_TIMEOUT,
            )?;
        }
        put(
            "the VM did not start",
            "/actions",
            json!({"action_type": "InstanceStart"}),
            START_TIMEOUT,
        )
    }

    /// Stops (the power button, or Ctrl-Alt-Del for a guest without
    /// ACPI, then SIGKILL after `timeout_ms`) or kills a
    /// live instance and waits for its process to be gone.
    fn stop(&self, inst: &Instance, timeout_ms: u64, kill: bool) -> Result<(), ApiError> {
        let (proc, paused) = {
            let mut rec = lock(&inst.rec);
            rec.intent = Some(if kill { Intent::Kill } else { Intent::Stop });
            inst.save(&rec);
            (proc_of(&rec), rec.state == State::Paused)
        };
        let Some(proc) = proc else {
            let mut rec = lock(&inst.rec);
            rec.state = State::Crashed;
            rec.exit_reason = Some("no VMM process was recorded".into());
            rec.intent = None;
            inst.save(&rec);
            return Ok(());
        };
        if !kill {
            let sock = inst.sock();
            let t = Duration::from_secs(5);
            if paused {
                let _ =
                    process::call_vmm(&sock, "PATCH", "/vm", Some(&json!({"state": "Resumed"})), t);
            }
            // The power button, or Ctrl-Alt-Del for a guest without ACPI.
            let body = json!({"action_type": "Shutdown"});
            let sent = matches!(
                process::call_vmm(&sock, "PUT", "/actions", Some(&body), t),
                Ok(r) if r.status == 204
            );
            let ended = sent
                && self
                    .reaper
                    .wait_dead(&proc, Duration::from_millis(timeout_ms));
            if !ended {
                let mut rec = lock(&inst.rec);
                rec.intent = Some(Intent::StopKilled(timeout_ms));
            }
        }
        if !self.reaper.kill(&proc) {
            return Err(internal(format!(
                "VMM process {} of instance {} did not die after SIGKILL",
                proc.pid, inst.id
            )));
        }
        self.settle(inst, &proc);
        Ok(())
    }

    fn pause(&self, inst: &Instance, pause: bool) -> Result<(), ApiError> {
        let proc = proc_of(&lock(&inst.rec));
        let (word, state) = if pause {
            ("Paused", State::Paused)
        } else {
            ("Resumed", State::Running)
        };
        let r = process::call_vmm(
            &inst.sock(),
            "PATCH",
            "/vm",
            Some(&json!({ "state": word })),
            CALL_TIMEOUT,
        );
        if let Ok(r) = &r {
            if r.status == 204 {
                let mut rec = lock(&inst.rec);
                rec.state = state;
                inst.save(&rec);
                return Ok(());
            }
        }
        if let Some(p) = proc.filter(|p| !self.reaper.alive(p)) {
            self.settle(inst, &p);
            let rec = lock(&inst.rec);
            return Err(conflict(format!(
                "instance {} is {}: {}",
                inst.id,
                rec.state.name(),
                rec.exit_reason.as_deref().unwrap_or("ended")
            )));
        }
        Err(internal(match r {
            Ok(r) => format!("the VMM refused PATCH /vm: {}", r.message()),
            Err(e) => format!("cannot reach the VMM: {e}"),
        }))
    }

    /// Records how the run of `proc` ended, once it is gone.
    fn settle(&self, inst: &Instance, proc: &Proc) {
        let status = self.reaper.take(proc.pid);
        let mut rec = lock(&inst.rec);
        if rec.pid != Some(proc.pid) || !rec.state.is_live() {
            return;
        }
        let exit: Option<ExitFile> = process::open_vmm_file(&inst.dir.join(EXIT))
            .ok()
            .and_then(|f| serde_json::from_reader(std::io::Read::take(f, 64 * 1024)).ok());
        let (state, reason, code) = outcome(rec.intent, exit.as_ref(), status);
        log::info!("instance {}: {} ({reason})", inst.id, state.name());
        rec.state = state;
        rec.exit_reason = Some(reason);
        rec.exit_status = code;
        if let Some(us) = exit.as_ref().and_then(|e| e.boot_time_us) {
            rec.boot_time_us = Some(us);
        }
        rec.pid = None;
        rec.proc_start = None;
        rec.intent = None;
        inst.save(&rec);
        let _ = std::fs::remove_file(inst.sock());
        drop(rec);
        // The keeper removes the cgroup when its VMM ends; not if it was
        // killed itself.
        crate::jail::cgroup::remove(&inst.id, proc.pid);
    }

    /// Notices VMM processes that ended without a request.
    fn monitor(&self) {
        loop {
            std::thread::sleep(MONITOR_PERIOD);
            self.reaper.collect();
            let all: Vec<Arc<Instance>> = lock(&self.instances).values().cloned().collect();
            for inst in all {
                let proc = {
                    let rec = lock(&inst.rec);
                    if rec.state.is_live() {
                        proc_of(&rec)
                    } else {
                        None
                    }
                };
                if let Some(p) = proc {
                    if !self.reaper.alive(&p) {
                        self.settle(&inst, &p);
                    }
                }
            }
        }
    }

    // ----- restart -----

    /// Moves an instance directory whose record cannot be used out of the
    /// way, to `<id>.corrupt` (or `<id>.corrupt.N`), where no id can
    /// reach it and an operator can look at it. Its VMM, which no record
    /// owns now, is stopped by the sweep that follows.
    fn quarantine(&self, dir: &Path, name: &str, why: &str) {
        let target = (0..1000)
            .map(|n| match n {
                0 => self.state_dir.join(format!("{name}.corrupt")),
                n => self.state_dir.join(format!("{name}.corrupt.{n}")),
            })
            .find(|p| std::fs::symlink_metadata(p).is_err());
        let moved = match &target {
            Some(t) => std::fs::rename(dir, t).map(|()| t.display().to_string()),
            None => Err(std::io::Error::other("too many quarantined copies")),
        };
        match moved {
            Ok(t) => log::error!("instance {name}: {why}; record quarantined in {t}"),
            Err(e) => log::error!(
                "instance {name}: {why}; cannot quarantine {}: {e}",
                dir.display()
            ),
        }
    }

    /// Loads every instance record under the state directory, then stops
    /// every VMM process of the directory that no record owns.
    fn adopt_all(&self) {
        self.load_all();
        self.sweep(None);
    }

    fn load_all(&self) {
        let entries = match std::fs::read_dir(&self.state_dir) {
            Ok(e) => e,
            Err(e) => {
                log::error!("cannot read {}: {e}", self.state_dir.display());
                return;
            }
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            if !model::valid_id(&name) || !dir.is_dir() {
                continue;
            }
            let rec: Record = match std::fs::read(dir.join(RECORD))
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(r) => r,
                Err(e) => {
                    self.quarantine(&dir, &name, &format!("no usable record ({e})"));
                    continue;
                }
            };
            if rec.id != name {
                let why = format!("its record is for {:?}", rec.id);
                self.quarantine(&dir, &name, &why);
                continue;
            }
            let inst = Arc::new(Instance::new(dir, rec));
            self.adopt(&inst);
            lock(&self.instances).insert(name, inst);
        }
    }

    /// Finds the process of an instance from an earlier daemon.
    fn adopt(&self, inst: &Instance) {
        let (live, proc) = {
            let rec = lock(&inst.rec);
            (rec.state.is_live(), proc_of(&rec))
        };
        let ours = |p: &Proc| self.reaper.alive(p) && process::is_our_vmm(p.pid, &inst.id);
        match (live, proc) {
            (true, Some(p)) if ours(&p) => {
                let answer =
                    process::call_vmm(&inst.sock(), "GET", "/", None, Duration::from_secs(2))
                        .ok()
                        .filter(|r| r.status == 200)
                        .map(|r| r.json());
                let vm_state = answer
                    .as_ref()
                    .and_then(|v| v["state"].as_str().map(str::to_string));
                if vm_state.as_deref() == Some("Not started") {
                    // The earlier daemon died in the middle of a start.
                    self.reaper.kill(&p);
                }
                let mut rec = lock(&inst.rec);
                rec.intent = None;
                match vm_state.as_deref() {
                    Some("Paused") => rec.state = State::Paused,
                    Some("Running") => rec.state = State::Running,
                    _ => {}
                }
                if let Some(us) = answer.as_ref().and_then(|v| v["boot_time_us"].as_u64()) {
                    rec.boot_time_us = Some(us);
                }
                inst.save(&rec);
                drop(rec);
                if !self.reaper.alive(&p) {
                    self.settle(inst, &p);
                }
                log::info!("instance {}: adopted pid {}", inst.id, p.pid);
            }
            (true, Some(p)) => self.settle(inst, &p),
            (true, None) => {
                let mut rec = lock(&inst.rec);
                rec.state = State::Crashed;
                rec.exit_reason = Some("no VMM process was recorded".into());
                inst.save(&rec);
            }
            (false, Some(p)) => {
                // A start the earlier daemon did not finish.
                if ours(&p) {
                    self.reaper.kill(&p);
                    crate::jail::cgroup::remove(&inst.id, p.pid);
                }
                let _ = std::fs::remove_file(inst.sock());
                let mut rec = lock(&inst.rec);
                rec.pid = None;
                rec.proc_start = None;
                inst.save(&rec);
            }
            (false, None) => {}
        }
    }
}

/// Most vCPUs KVM allows per VM, as the VMM asks for it.
fn kvm_max_vcpus() -> Option<u32> {
    use std::os::fd::AsRawFd;
    const KVM_CHECK_EXTENSION: u64 = 0xae03;
    const KVM_CAP_NR_VCPUS: libc::c_ulong = 9;
    const KVM_CAP_MAX_VCPUS: libc::c_ulong = 66;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .ok()?;
    let check = |cap: libc::c_ulong| {
        // SAFETY: KVM_CHECK_EXTENSION takes an integer argument and only
        // returns a value; the fd is an open /dev/kvm.
        unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CHECK_EXTENSION as _, cap) }
    };
    let n = match check(KVM_CAP_MAX_VCPUS) {
        n if n > 0 => n,
        _ => check(KVM_CAP_NR_VCPUS),
    };
    (n > 0).then_some(n as u32)
}

/// Methods each endpoint has, for the Allow header of a 405.
fn allowed(path: &str) -> &'static str {
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["v1", "instances"] => "GET, POST",
        ["v1", "instances", _] => "GET, PATCH, DELETE",
        ["v1", "instances", _, "console"] => "GET",
        _ => "POST",
    }
}

/// The response to a request: a 405 names the methods allowed.
fn respond(daemon: &Daemon, req: &Request) -> Response {
    match daemon.handle(req) {
        Err(e) if e.status == 405 => {
            let path = req.url().split('?').next().unwrap_or("");
            Response::error(&e).with_header("Allow", allowed(path))
        }
        result => http::reply(result),
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn main(args: ServeArgs) -> i32 {
    let signals = match crate::run::block_stop_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strato: cannot set up signal handling: {e}");
            return 1;
        }
    };
    if let Err(e) = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&args.state_dir)
    {
        eprintln!(
            "strato: cannot create state directory {}: {e}",
            args.state_dir.display()
        );
        return 1;
    }
    let state_dir = match std::fs::canonicalize(&args.state_dir) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("strato: {}: {e}", args.state_dir.display());
            return 1;
        }
    };
    let room = SUN_PATH_MAX.saturating_sub(state_dir.as_os_str().len() + 2 + SOCK.len());
    if room < 16 {
        eprintln!(
            "strato: state directory {} is too long for the instances' unix sockets ({SUN_PATH_MAX} bytes at most)",
            state_dir.display()
        );
        return 1;
    }
    if room < model::MAX_ID_LEN {
        log::warn!(
            "with state directory {}, instance ids can have at most {room} characters (socket paths are limited to {SUN_PATH_MAX} bytes)",
            state_dir.display()
        );
    }
    // One daemon per state directory.
    let lock_file = match std::fs::File::create(state_dir.join(".lock")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("strato: cannot create the lock file: {e}");
            return 1;
        }
    };
    {
        use std::os::fd::AsRawFd;
        // A POSIX record lock, not flock: a flock belongs to the open file
        // description, which a VMM child shares between fork and exec, so
        // a daemon killed at that moment would leave its lock held by the
        // child for a while and the restarted daemon would be refused.
        // Record locks belong to the process and are not inherited by
        // fork. The daemon is a whole process of its own (it owns the
        // signal mask), so a per-process lock is the right scope. Closing
        // any other descriptor of this file would release the lock; the
        // path policy never opens a file in the state directory beyond
        // an O_PATH look, whose close leaves locks alone.
        // SAFETY: zeroed is a valid `flock` (all-integer fields).
        let mut range: libc::flock = unsafe { std::mem::zeroed() };
        range.l_type = libc::F_WRLCK as libc::c_short;
        range.l_whence = libc::SEEK_SET as libc::c_short;
        // l_start = 0, l_len = 0: the whole file.
        // SAFETY: F_SETLK on an fd we own with a valid `flock` that the
        // kernel only reads.
        if unsafe { libc::fcntl(lock_file.as_raw_fd(), libc::F_SETLK, &range) } != 0 {
            eprintln!(
                "strato: another daemon is using the state directory {}",
                state_dir.display()
            );
            return 1;
        }
    }
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("strato: cannot find the strato binary: {e}");
            return 1;
        }
    };
    let limits = Limits {
        max_vcpus: kvm_max_vcpus()
            .unwrap_or(vmm::config::MAX_VCPUS)
            .min(vmm::config::MAX_VCPUS),
        host_mib: vmm::config::host_memory_mib().unwrap_or(u64::MAX),
    };
    let policy = match PathPolicy::new(&args.allow_paths, state_dir.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("strato: {e}");
            return 1;
        }
    };
    let daemon = Arc::new(Daemon {
        state_dir,
        exe,
        stop_timeout_ms: args.stop_timeout_ms,
        limits,
        log_level: log::max_level(),
        instances: Mutex::new(BTreeMap::new()),
        reserved: Mutex::new(HashSet::new()),
        reaper: Reaper::default(),
        policy,
        no_seccomp: args.no_seccomp,
        jail: (!args.no_jail).then_some(JailPolicy {
            uid: args.jail_uid,
            gid: args.jail_gid,
            overhead_mib: args.jail_memory_overhead,
        }),
    });
    daemon.adopt_all();
    let server = match http::bind(&args.api_sock, args.api_sock_group) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strato: {e}");
            return 1;
        }
    };
    {
        let daemon = daemon.clone();
        let spawned = std::thread::Builder::new()
            .name("monitor".into())
            .spawn(move || daemon.monitor());
        if let Err(e) = spawned {
            eprintln!("strato: cannot start the monitor thread: {e}");
            let _ = std::fs::remove_file(&args.api_sock);
            return 1;
        }
    }
    {
        let daemon = daemon.clone();
        let spawned = std::thread::Builder::new()
            .name("api".into())
            .spawn(move || server.serve(API_CONNECTIONS, move |req| respond(&daemon, req)));
        if let Err(e) = spawned {
            eprintln!("strato: cannot start the API thread: {e}");
            let _ = std::fs::remove_file(&args.api_sock);
            return 1;
        }
    }
    log::info!(
        "serving on {} with {} instance(s) in {}",
        args.api_sock.display(),
        lock(&daemon.instances).len(),
        daemon.state_dir.display()
    );
    let mut sig: libc::c_int = 0;
    // SAFETY: `signals` is a valid set blocked in every thread; sigwait
    // writes the received signal into `sig`.
    unsafe { libc::sigwait(&signals, &mut sig) };
    log::info!("signal {sig}: leaving the instances running and exiting");
    let _ = std::fs::remove_file(&args.api_sock);
    drop(lock_file);
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries() {
        assert_eq!(query_u64("", "bytes", 10).unwrap(), None);
        assert_eq!(query_u64("a=1&bytes=7", "bytes", 10).unwrap(), Some(7));
        assert!(query_u64("bytes=11", "bytes", 10).is_err());
        assert!(query_u64("bytes=-1", "bytes", 10).is_err());
        assert!(query_u64("bytes", "bytes", 10).is_err());
    }

    #[test]
    fn outcomes() {
        let reset = ExitFile {
            reason: "guest reset".into(),
            success: true,
            exit_status: 0,
            boot_time_us: None,
        };
        let fault = ExitFile {
            reason: "triple fault on vCPU 0".into(),
            success: false,
            exit_status: 3,
            boot_time_us: None,
        };
        assert_eq!(outcome(None, Some(&reset), Some(0)).0, State::Stopped);
        assert_eq!(outcome(None, Some(&fault), Some(3 << 8)).0, State::Crashed);
        let killed = outcome(None, None, Some(libc::SIGKILL));
        assert_eq!(killed.0, State::Crashed);
        assert_eq!(killed.2, Some(137));
        assert!(killed.1.contains("killed by signal 9"), "{}", killed.1);
        assert_eq!(outcome(Some(Intent::Kill), None, None).0, State::Stopped);
        let timed_out = outcome(Some(Intent::StopKilled(50)), None, Some(9));
        assert_eq!(timed_out.0, State::Stopped);
        assert!(timed_out.1.contains("50 ms"));
        assert_eq!(
            outcome(Some(Intent::Stop), Some(&fault), None).0,
            State::Stopped
        );
    }

    #[test]
    fn tail_of_a_file() {
        let p = std::env::temp_dir().join(format!("strato-tail-{}", std::process::id()));
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(read_tail(&p, 3).unwrap(), b"789");
        assert_eq!(read_tail(&p, 100).unwrap(), b"0123456789");
        std::fs::remove_file(&p).unwrap();
        assert!(read_tail(&p, 3).unwrap().is_empty());
    }
}
