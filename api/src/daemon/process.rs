//! The VMM child processes: spawning them in their own session, telling a
//! live one from a dead one or from a later process with the same pid, and
//! collecting the exit status of our own children.

use std::collections::{HashMap, HashSet};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A process as the daemon knows it: pid and start time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    /// Process id.
    pub pid: i32,
    /// Start time in clock ticks after boot (/proc/<pid>/stat field 22).
    pub start: u64,
}

/// State letter, start time and parent of `pid`, from /proc/<pid>/stat.
fn stat_full(pid: i32) -> Option<(char, u64, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let parent = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, start, parent))
}

/// State letter and start time of `pid`.
fn stat(pid: i32) -> Option<(char, u64)> {
    stat_full(pid).map(|(state, start, _)| (state, start))
}

/// The parent of a process that exists now.
pub fn parent(pid: i32) -> Option<i32> {
    stat_full(pid).map(|(_, _, parent)| parent)
}

/// Start time of a process that exists now.
pub fn start_time(pid: i32) -> Option<u64> {
    stat(pid).map(|(_, s)| s)
}

/// Collects the exit status of this process's children. Only the daemon's
/// own VMM processes are its children; those started by an earlier daemon
/// are watched through /proc.
#[derive(Default)]
pub struct Reaper {
    exited: Mutex<HashMap<i32, i32>>,
    children: Mutex<HashSet<i32>>,
}

impl Reaper {
    /// Reaps every child that has exited, keeping its wait status.
    pub fn collect(&self) {
        let mut exited = crate::lock(&self.exited);
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: waitpid with WNOHANG writes only into `status`.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                break;
            }
            exited.insert(pid, status);
        }
    }

    /// Records that `pid` is a child of this process: it counts as alive
    /// until reaped, so its wait status is always known when it is seen
    /// dead. (A killed multi-threaded process shows as a zombie before it
    /// can be reaped.)
    pub fn own(&self, pid: i32) {
        crate::lock(&self.children).insert(pid);
    }

    /// True if `pid` was reaped and not yet taken.
    fn has(&self, pid: i32) -> bool {
        crate::lock(&self.exited).contains_key(&pid)
    }

    /// The wait status of reaped `pid`, forgetting it.
    pub fn take(&self, pid: i32) -> Option<i32> {
        crate::lock(&self.children).remove(&pid);
        crate::lock(&self.exited).remove(&pid)
    }

    /// True while `p` runs. A child of ours runs until it is reaped; any
    /// other process while /proc shows the same start time and it is not a
    /// zombie.
    pub fn alive(&self, p: &Proc) -> bool {
        self.collect();
        if self.has(p.pid) {
            return false;
        }
        if crate::lock(&self.children).contains(&p.pid) {
            return true;
        }
        matches!(stat(p.pid), Some((state, start)) if start == p.start && state != 'Z' && state != 'X')
    }

    /// Waits up to `timeout` for `p` to end; true if it did.
    pub fn wait_dead(&self, p: &Proc, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.alive(p) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` to `p` if it is still the same live process. The
    /// signal goes through a pidfd taken before the start time is
    /// compared, so it cannot reach a later process that reused the pid.
    pub fn signal(&self, p: &Proc, signal: libc::c_int) {
        if !self.alive(p) {
            return;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor (or -1); no memory is passed.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid, 0) } as libc::c_int;
        if fd < 0 {
            // Kernels before 5.3: the start-time check above is all there is.
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(p.pid, signal) };
            return;
        }
        // SAFETY: `fd` is the new descriptor pidfd_open returned, owned here.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        if matches!(stat(p.pid), Some((_, start)) if start == p.start) {
            // SAFETY: pidfd_send_signal with a null siginfo reads no memory.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    signal,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                )
            };
        }
    }

    /// SIGKILLs `p` and waits for it to be gone.
    pub fn kill(&self, p: &Proc) -> bool {
        self.signal(p, libc::SIGKILL);
        self.wait_dead(p, Duration::from_secs(10))
    }
}

/// Describes a wait status: "exited with status N" or "was killed by signal
/// N (NAME)", with what a SIGSYS means for a VMM.
pub fn describe_status(status: i32) -> (String, i32) {
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        let name = match sig {
            // A seccomp filter's KILL_PROCESS action kills with SIGSYS,
            // and nothing else in a VMM raises it.
            libc::SIGSYS => " (SIGSYS: seccomp, a forbidden system call)",
            libc::SIGKILL => " (SIGKILL)",
            libc::SIGTERM => " (SIGTERM)",
            libc::SIGSEGV => " (SIGSEGV)",
            libc::SIGABRT => " (SIGABRT)",
            _ => "",
        };
        (format!("was killed by signal {sig}{name}"), 128 + sig)
    } else {
        let code = libc::WEXITSTATUS(status);
        (format!("exited with status {code}"), code)
    }
}

/// True if /proc/<pid>/cmdline is `strato vm ... --id=<id> ...` (or the
/// older `--id <id>`; argv[0] any path whose file name contains "strato").
pub fn is_our_vmm(pid: i32, id: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
    let joined = [b"--id=", id.as_bytes()].concat();
    let id_ok = args.contains(&joined.as_slice())
        || args
            .windows(2)
            .any(|w| w[0] == b"--id" && w[1] == id.as_bytes());
    is_strato_vm(&args) && id_ok
}

/// True if a command line is `strato vm ...` (argv[0] any path whose file
/// name contains "strato").
fn is_strato_vm(args: &[&[u8]]) -> bool {
    let exe_ok = args.first().is_some_and(|a| {
        Path::new(std::ffi::OsStr::from_bytes(a))
            .file_name()
            .is_some_and(|n| n.as_bytes().windows(6).any(|w| w == b"strato"))
    });
    exe_ok && args.get(1).is_some_and(|a| *a == b"vm")
}

/// Every live `strato vm` process whose API socket is in `state_dir`,
/// with the instance id its arguments name, found through /proc. Any
/// user's processes are listed: only root (the daemon) could have made
/// them with sockets in a 0700 directory of root's.
pub fn vmms_in(state_dir: &Path) -> Vec<(Proc, String)> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    // The daemon names the socket `--api-sock=<state_dir>/<id>/run/api.sock`.
    let prefix = [b"--api-sock=", state_dir.as_os_str().as_bytes(), b"/"].concat();
    let suffix = format!("/{SOCK}");
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        if !is_strato_vm(&args) {
            continue;
        }
        let id = args.iter().find_map(|a| {
            let rest = a.strip_prefix(prefix.as_slice())?;
            let id = rest.strip_suffix(suffix.as_bytes())?;
            std::str::from_utf8(id)
                .ok()
                .filter(|id| super::model::valid_id(id))
        });
        let (Some(id), Some((state, start))) = (id, stat(pid)) else {
            continue;
        };
        if state != 'Z' && state != 'X' {
            found.push((Proc { pid, start }, id.to_string()));
        }
    }
    found
}

/// The write end of the pipe a new VMM process waits on before it does
/// anything: the daemon opens the gate once the process is in its record,
/// and if the daemon dies first the pipe closes and the process exits.
pub struct Gate(std::os::fd::OwnedFd);

impl Gate {
    /// Lets the process go on.
    pub fn open(self) -> std::io::Result<()> {
        let mut f = std::fs::File::from(self.0);
        std::io::Write::write_all(&mut f, b"1")
    }
}

use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;

/// What a VMM process is started with.
pub struct Spawn<'a> {
    /// The strato binary's path (argv[0] of the child).
    pub exe: &'a Path,
    /// Instance directory (the child's working directory).
    pub dir: &'a Path,
    /// Instance id.
    pub id: &'a str,
    /// The child's log level.
    pub log_level: log::LevelFilter,
    /// Start the child without its seccomp filters.
    pub no_seccomp: bool,
    /// Descriptors the child inherits (the files it may use, opened by
    /// the daemon), at the same numbers.
    pub keep: &'a [RawFd],
    /// Taps attached by the daemon, among `keep`: (name, descriptor).
    pub taps: &'a [(String, RawFd)],
    /// The jail to start it in; None runs it unjailed.
    pub jail: Option<Jail>,
}

/// How the daemon jails a VMM (see `crate::jail`).
#[derive(Clone, Copy, Debug)]
pub struct Jail {
    /// Unprivileged uid and gid of the VMM.
    pub uid: u32,
    /// See `uid`.
    pub gid: u32,
    /// cgroup memory limit, MiB.
    pub memory_max_mib: u64,
    /// cgroup CPU limit, CPUs.
    pub cpus: u32,
}

/// File names inside an instance directory. The VMM's own files live in
/// `run/`, which a jailed VMM sees (and may write, as its uid) at /run,
/// without reaching the daemon's record beside it.
pub const RUN: &str = "run";
/// API socket of the VMM.
pub const SOCK: &str = "run/api.sock";
/// Serial console log.
pub const CONSOLE: &str = "run/console.log";
/// Exit record written by the VMM.
pub const EXIT: &str = "run/exit.json";
/// The jail's root (a tmpfs is mounted on it, in the VMM's namespace).
pub const ROOT: &str = "root";
/// The VMM's own stdout and stderr.
pub const VMM_LOG: &str = "vmm.log";
/// The daemon's record.
pub const RECORD: &str = "instance.json";

impl Spawn<'_> {
    /// Starts `strato vm` in its own session with stdin on /dev/null and
    /// stdout/stderr appended to vmm.log. The process waits at its start
    /// until the returned [`Gate`] is opened.
    pub fn run(&self) -> std::io::Result<(Proc, Gate)> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pipe2 just returned these descriptors; each is owned once.
        let (wait, gate) = unsafe {
            (
                std::os::fd::OwnedFd::from_raw_fd(fds[0]),
                std::os::fd::OwnedFd::from_raw_fd(fds[1]),
            )
        };
        let mut inherit: Vec<RawFd> = self.keep.to_vec();
        inherit.push(wait.as_raw_fd());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(VMM_LOG))?;
        // The daemon's own binary, even if the file was replaced or removed
        // since it started; argv[0] names it for /proc/<pid>/cmdline.
        // `--opt=value`: an id or path may begin with '-'.
        let opt = |name: &str, value: &std::ffi::OsStr| {
            let mut arg = std::ffi::OsString::from(format!("--{name}="));
            arg.push(value);
            arg
        };
        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg0(self.exe)
            .arg("vm")
            .arg(opt("api-sock", self.dir.join(SOCK).as_os_str()))
            .arg(format!("--wait-fd={}", wait.as_raw_fd()))
            .arg(opt("id", self.id.as_ref()))
            .arg(opt("console-log", self.dir.join(CONSOLE).as_os_str()))
            .arg(opt("exit-file", self.dir.join(EXIT).as_os_str()))
            .arg(format!(
                "--log-level={}",
                self.log_level.to_string().to_lowercase()
            ));
        for (name, fd) in self.taps {
            cmd.arg(format!("--tap-fd={name}:{fd}"));
        }
        if let Some(j) = &self.jail {
            cmd.arg(opt("jail", self.dir.join(ROOT).as_os_str()))
                .arg(format!("--uid={}", j.uid))
                .arg(format!("--gid={}", j.gid))
                .arg(format!("--memory-max={}", j.memory_max_mib))
                .arg(format!("--cpu-max={}", j.cpus));
        }
        cmd.args(self.no_seccomp.then_some("--no-seccomp"))
            .current_dir(self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: the closure runs in the child between fork and exec and
        // calls only async-signal-safe functions (setsid, fcntl,
        // sigemptyset, sigprocmask) on its own stack data and the
        // descriptor list it owns, without allocating.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Everything the daemon opens is close-on-exec; these
                // alone reach the VMM, in this child only.
                for fd in &inherit {
                    if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The daemon blocks SIGINT/SIGTERM in all its threads; the
                // VMM must start with nothing blocked.
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(wait);
        let pid = child.id() as i32;
        // The child is ours until reaped, so its /proc entry is there even
        // if it already exited.
        let start = start_time(pid).unwrap_or(0);
        Ok((Proc { pid, start }, Gate(gate)))
    }
}

/// Opens a file the VMM wrote in its `run/` directory, for reading. That
/// directory belongs to a jailed VMM's uid, so what is there is not
/// trusted: no symlink is followed (it could lead anywhere the daemon may
/// read) and only a regular file is read (a FIFO would block).
pub fn open_vmm_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// Sends one request to the VMM whose API socket is `sock`. The socket's
/// directory belongs to a jailed VMM's uid, so the path is not followed
/// blindly (a symlink could lead to any socket on the host): it must name
/// a socket owned by root (the VMM binds it before it drops its
/// privileges), and the connection goes to that very socket through an
/// O_PATH descriptor of it.
pub fn call_vmm(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> std::io::Result<crate::http::ClientResponse> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(sock)?;
    let meta = handle.metadata()?;
    if !meta.file_type().is_socket() || meta.uid() != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} is not the VMM's socket", sock.display()),
        ));
    }
    let by_fd = std::path::PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    crate::http::call(&by_fd, method, path, body, timeout)
}

/// The last `max` bytes of `path` (lossy), for error messages.
pub fn tail(path: &Path, max: usize) -> String {
    let data = std::fs::read(path).unwrap_or_default();
    let from = data.len().saturating_sub(max);
    String::from_utf8_lossy(&data[from..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_stat_parses() {
        let me = std::process::id() as i32;
        let start = start_time(me).expect("own stat");
        let r = Reaper::default();
        assert!(r.alive(&Proc { pid: me, start }));
        assert!(!r.alive(&Proc {
            pid: me,
            start: start + 1
        }));
        assert!(!is_our_vmm(me, "x"));
    }

    #[test]
    fn wait_status_text() {
        assert_eq!(describe_status(9).1, 137);
        assert_eq!(
            describe_status(libc::SIGSYS).0,
            "was killed by signal 31 (SIGSYS: seccomp, a forbidden system call)"
        );
        assert_eq!(describe_status(3 << 8), ("exited with status 3".into(), 3));
    }
}
