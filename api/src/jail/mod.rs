//! The jail of a `strato vm` process, set up by the process itself before
//! it serves its API, so that the daemon's instances and a standalone
//! `strato vm --jail` go through the same code.
//!
//! Design. A new pid namespace only applies to children, so the process
//! forks once: the parent (the *keeper*) stays root in the host's mount
//! namespace, forwards SIGINT/SIGTERM to the child, removes the
//! cgroup when the child has ended and ends the same way (exit status or
//! signal), so whoever started `strato vm` (the daemon) sees one process
//! with the VMM's outcome. The child is pid 1 of the new namespace and
//! dies with the keeper (PR_SET_PDEATHSIG). It joins the cgroup, takes
//! its own mount, ipc and uts namespaces, makes every mount private,
//! mounts a tmpfs on the jail directory (visible to this child alone, so
//! nothing is written to the directory), puts there its own device nodes
//! for /dev/kvm, /dev/net/tun and /dev/urandom (owned by the jail uid: the
//! host's /dev/kvm is usually root:kvm 0660), the `--jail-file` files
//! bind-mounted at `/NAME` and the directory of its API socket, console
//! log and exit file at `/run`, pivots into it, detaches the old root and
//! makes the new root read-only (on a host running from its initramfs,
//! which cannot be pivoted away, it moves the tmpfs over / and chroots
//! into it instead, as switch_root does). The caller then binds its API socket and
//! drops to the unprivileged uid/gid ([`Jailed::drop_privileges`]) before
//! it reads a single request.
//!
//! Files the daemon opened for the guest arrive as inherited descriptors
//! (`/proc/self/fd/N`, served without /proc: see `devices::fd_path`), so
//! a daemon instance needs no `--jail-file`.

pub mod cgroup;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Options of `strato vm` that jail it.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct JailArgs {
    /// Run jailed: own mount, pid, ipc and uts namespaces, root pivoted to
    /// DIR (a tmpfs on it, seen by the VMM alone) holding the --jail-file
    /// files, dev/{kvm,net/tun,urandom} and run/ (the API socket's
    /// directory), as --uid/--gid.
    #[arg(long, value_name = "DIR", requires_all = ["uid", "gid"])]
    pub jail: Option<PathBuf>,
    /// Unprivileged uid of the jailed VMM (not 0).
    #[arg(long, requires = "jail", value_parser = clap::value_parser!(u32).range(1..))]
    pub uid: Option<u32>,
    /// Unprivileged gid of the jailed VMM (not 0).
    #[arg(long, requires = "jail", value_parser = clap::value_parser!(u32).range(1..))]
    pub gid: Option<u32>,
    /// A file for the guest (kernel, initrd, drive), bind-mounted at
    /// /NAME (its file name) in the jail; repeat for more. The jail uid
    /// must be allowed to open it.
    #[arg(long = "jail-file", value_name = "PATH", requires = "jail")]
    pub files: Vec<PathBuf>,
    /// cgroup memory limit of the jailed VMM in MiB (guest memory and the
    /// VMM's own).
    #[arg(long, value_name = "MIB", requires = "jail",
          value_parser = clap::value_parser!(u64).range(1..(1 << 40)))]
    pub memory_max: Option<u64>,
    /// cgroup CPU limit: this many CPUs' worth of time.
    #[arg(long, value_name = "CPUS", requires = "jail",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub cpu_max: Option<u32>,
}

/// Why the jail could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operation on a file or directory failed.
    #[error("jail: {what} {}: {source}", path.display())]
    Path {
        /// What was being done.
        what: &'static str,
        /// On what.
        path: PathBuf,
        /// The system's answer.
        #[source]
        source: io::Error,
    },
    /// A system call failed.
    #[error("jail: {0} failed: {1}")]
    Sys(&'static str, #[source] io::Error),
    /// The options cannot work.
    #[error("jail: {0}")]
    Invalid(String),
}

/// The VMM's own files outside the guest's: its API socket, console log
/// and exit file. They must share one directory, which the jail shows at
/// `/run`; [`enter`] rewrites them to their paths inside.
#[derive(Debug, Default)]
pub struct Io {
    /// `--api-sock`.
    pub api_sock: Option<PathBuf>,
    /// `--console-log`.
    pub console_log: Option<PathBuf>,
    /// `--exit-file`.
    pub exit_file: Option<PathBuf>,
}

/// Device nodes every jail gets: (path, required).
const DEVICES: [(&str, bool); 3] = [
    ("/dev/kvm", true),
    ("/dev/net/tun", false),
    ("/dev/urandom", true),
];

/// Where the VMM's own files appear inside the jail.
const RUN: &str = "run";

/// The jailed process, still root: see [`Jailed::drop_privileges`].
#[derive(Debug)]
pub struct Jailed {
    uid: u32,
    gid: u32,
    /// Read end of a pipe whose write end only the keeper holds: it hangs
    /// up when the keeper is gone.
    keeper: std::os::fd::OwnedFd,
}

fn sys(what: &'static str, rc: libc::c_int) -> Result<(), Error> {
    if rc < 0 {
        Err(Error::Sys(what, io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

fn path_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Path {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn cstr(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid(format!("path {:?} contains a NUL byte", path)))
}

/// mount(2) with paths; `what` names the step in errors.
fn mount(
    what: &'static str,
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), Error> {
    let source = source.map(cstr).transpose()?;
    let target_c = cstr(target)?;
    let fstype = fstype.map(|s| CString::new(s).unwrap_or_default());
    let data = data.map(|s| CString::new(s).unwrap_or_default());
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is null or a NUL-terminated string that lives
    // across the call; mount reads them and writes nothing of ours.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target_c.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc < 0 {
        return Err(path_err(what, target)(io::Error::last_os_error()));
    }
    Ok(())
}

/// The one directory holding the VMM's own files, if any are given.
fn run_dir(io: &Io) -> Result<Option<PathBuf>, Error> {
    let given: Vec<&PathBuf> = [&io.api_sock, &io.console_log, &io.exit_file]
        .into_iter()
        .flatten()
        .collect();
    let mut dirs = given.iter().map(|p| match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    });
    let Some(first) = dirs.next() else {
        return Ok(None);
    };
    let first = std::fs::canonicalize(&first).map_err(path_err("directory", &first))?;
    for d in dirs {
        if std::fs::canonicalize(&d).ok().as_ref() != Some(&first) {
            return Err(Error::Invalid(format!(
                "the API socket, console log and exit file must be in one directory ({} and {})",
                first.display(),
                d.display()
            )));
        }
    }
    Ok(Some(first))
}

/// Names of the `--jail-file` files inside the jail, checked unique.
fn file_names(files: &[PathBuf]) -> Result<Vec<(PathBuf, PathBuf)>, Error> {
    let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
    for f in files {
        let name = f.file_name().ok_or_else(|| {
            Error::Invalid(format!("--jail-file {} has no file name", f.display()))
        })?;
        if name == "dev" || name == RUN || out.iter().any(|(_, n)| n == name) {
            return Err(Error::Invalid(format!(
                "--jail-file {}: the name {:?} is taken in the jail",
                f.display(),
                name
            )));
        }
        let meta = std::fs::metadata(f).map_err(path_err("--jail-file", f))?;
        if meta.is_dir() {
            return Err(Error::Invalid(format!(
                "--jail-file {} is a directory",
                f.display()
            )));
        }
        out.push((f.clone(), PathBuf::from(name)));
    }
    Ok(out)
}

/// True if this process runs a single thread (a fork would otherwise
/// leave locks held by threads that do not exist in the child).
fn single_threaded() -> bool {
    std::fs::read_dir("/proc/self/task").is_ok_and(|d| d.count() == 1)
}

/// Sets up the jail (see the module comment). Returns in the jailed
/// child, still root, with `io` rewritten to the paths inside; the keeper
/// never returns. Must run before any thread is started.
pub fn enter(args: &JailArgs, id: &str, io: &mut Io) -> Result<Jailed, Error> {
    let (Some(dir), Some(uid), Some(gid)) = (&args.jail, args.uid, args.gid) else {
        return Err(Error::Invalid("--jail needs --uid and --gid".into()));
    };
    if uid == 0 || gid == 0 {
        return Err(Error::Invalid("--uid and --gid must not be 0".into()));
    }
    if !single_threaded() {
        return Err(Error::Invalid(
            "must be set up before any thread starts".into(),
        ));
    }
    let files = file_names(&args.files)?;
    let run = run_dir(io)?;
    std::fs::create_dir_all(dir).map_err(path_err("directory", dir))?;
    let dir = std::fs::canonicalize(dir).map_err(path_err("directory", dir))?;
    if dir == Path::new("/") {
        return Err(Error::Invalid("the jail directory cannot be /".into()));
    }
    let limits = cgroup::Limits {
        memory_bytes: args.memory_max.map(|m| m << 20),
        cpus: args.cpu_max,
    };
    let group = cgroup::create(id, limits)?;
    let keeper = match fork_keeper(group) {
        Ok(k) => k,
        Err((e, group)) => {
            group.remove();
            return Err(e);
        }
    };
    build(&dir, id, uid, gid, &files, run.as_deref())?;
    for p in [&mut io.api_sock, &mut io.console_log, &mut io.exit_file]
        .into_iter()
        .flatten()
    {
        if let Some(name) = p.file_name() {
            *p = Path::new("/").join(RUN).join(name);
        }
    }
    Ok(Jailed { uid, gid, keeper })
}

/// Signals the keeper passes on to the VMM, which handles them (as pid 1
/// of its namespace it would ignore any it does not handle). Any other
/// deadly signal ends the keeper, and the VMM with it.
const FORWARDED: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// Forks into a new pid namespace. The child joins `group` and gets the
/// keeper pipe; the parent supervises the child and exits. A failure
/// comes back with the group to remove (an empty one in the child, whose
/// keeper removes the real one).
fn fork_keeper(group: cgroup::Cgroup) -> Result<std::os::fd::OwnedFd, (Error, cgroup::Cgroup)> {
    use std::os::fd::FromRawFd;
    // SAFETY: unshare takes flags only.
    if let Err(e) = sys("unshare(CLONE_NEWPID)", unsafe {
        libc::unshare(libc::CLONE_NEWPID)
    }) {
        return Err((e, group));
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if let Err(e) = sys("pipe2", unsafe {
        libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC)
    }) {
        return Err((e, group));
    }
    // SAFETY: pipe2 just made these descriptors; each is owned once here.
    let (read, write) = unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    };
    // Blocked before the fork so that no SIGCHLD or stop signal is lost
    // between the fork and the keeper's sigwait.
    // SAFETY: the sets are plain data initialised by sigemptyset and
    // filled with valid signal numbers; sigprocmask writes `old`.
    let (set, old) = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, *s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, &mut old);
        (set, old)
    };
    // SAFETY: the process has one thread (checked by `enter`), so the
    // child is a consistent copy of it.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let e = Error::Sys("fork", io::Error::last_os_error());
        // SAFETY: restores the mask saved above.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
        return Err((e, group));
    }
    if pid == 0 {
        drop(write);
        // SAFETY: restores the mask saved before the fork; prctl takes
        // integers only.
        unsafe {
            libc::sigprocmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        }
        if let Err(e) = group.join() {
            return Err((e, cgroup::Cgroup::default()));
        }
        return Ok(read);
    }
    drop(read);
    keep(pid, &set, &group, write)
}

/// The keeper: passes stop signals on to the VMM, and once it has ended
/// removes its cgroup and ends the same way.
fn keep(
    child: libc::pid_t,
    set: &libc::sigset_t,
    group: &cgroup::Cgroup,
    _alive: std::os::fd::OwnedFd,
) -> ! {
    loop {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is a valid set blocked in this (only) thread;
        // sigwait writes the signal number into `sig`.
        if unsafe { libc::sigwait(set, &mut sig) } != 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill has no memory effects; `child` is ours and not
            // reaped, so the pid cannot have been reused.
            unsafe { libc::kill(child, sig) };
            continue;
        }
        let mut status: libc::c_int = 0;
        // SAFETY: waitpid writes only into `status`.
        let got = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
        if got != child {
            continue;
        }
        group.remove();
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            // SAFETY: resets the signal's action to the default, unblocks
            // it in this thread and sends it to this process, which then
            // ends by it as the VMM did.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                let mut one: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut one);
                libc::sigaddset(&mut one, sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, &one, std::ptr::null_mut());
                libc::raise(sig);
            }
            std::process::exit(128 + sig);
        }
        std::process::exit(libc::WEXITSTATUS(status));
    }
}

/// Makes a device node for the jail uid like the host's `host`.
fn device(root: &Path, host: &str, uid: u32, gid: u32) -> Result<bool, Error> {
    let host_path = Path::new(host);
    let meta = match std::fs::metadata(host_path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(path_err("device", host_path)(e)),
    };
    let target = root.join(host.trim_start_matches('/'));
    let c = cstr(&target)?;
    // SAFETY: `c` is a NUL-terminated path; mknod and chown read it only.
    unsafe {
        if libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, meta.rdev()) < 0 {
            return Err(path_err("mknod", &target)(io::Error::last_os_error()));
        }
        if libc::chown(c.as_ptr(), uid, gid) < 0 {
            return Err(path_err("chown", &target)(io::Error::last_os_error()));
        }
    }
    Ok(true)
}

/// The child's part: namespaces, mounts, pivot_root.
fn build(
    dir: &Path,
    id: &str,
    uid: u32,
    gid: u32,
    files: &[(PathBuf, PathBuf)],
    run: Option<&Path>,
) -> Result<(), Error> {
    // SAFETY: unshare takes flags only.
    sys("unshare(mount, ipc, uts)", unsafe {
        libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS)
    })?;
    let name = &id.as_bytes()[..id.len().min(64)];
    // SAFETY: sethostname reads `name.len()` bytes from `name`.
    sys("sethostname", unsafe {
        libc::sethostname(name.as_ptr().cast(), name.len())
    })?;
    // Nothing mounted from here on may reach the host's namespace.
    mount(
        "make private",
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )?;
    mount(
        "mount tmpfs on",
        Some(Path::new("tmpfs")),
        dir,
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some("mode=0755,size=64k,nr_inodes=64"),
    )?;
    for sub in ["dev", "dev/net"] {
        let p = dir.join(sub);
        std::fs::create_dir(&p).map_err(path_err("directory", &p))?;
    }
    for (host, required) in DEVICES {
        if !device(dir, host, uid, gid)? && required {
            return Err(Error::Invalid(format!("{host} does not exist")));
        }
    }
    for (source, name) in files {
        let target = dir.join(name);
        std::fs::File::create(&target).map_err(path_err("mount point", &target))?;
        mount(
            "bind-mount",
            Some(source),
            &target,
            None,
            libc::MS_BIND,
            None,
        )?;
    }
    if let Some(run) = run {
        let target = dir.join(RUN);
        std::fs::create_dir(&target).map_err(path_err("directory", &target))?;
        mount("bind-mount", Some(run), &target, None, libc::MS_BIND, None)?;
    }
    std::env::set_current_dir(dir).map_err(path_err("chdir", dir))?;
    // pivot_root(".", "."): the old root ends up stacked on the new one
    // and is detached right away, so no path leads out of the jail.
    // SAFETY: both arguments are the static NUL-terminated ".".
    let pivoted =
        unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int };
    if pivoted == 0 {
        // SAFETY: the argument is the static NUL-terminated ".".
        sys("unmount the old root", unsafe {
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH)
        })?;
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // The host runs from its initramfs (rootfs), which cannot be
        // pivoted away. Do what switch_root does instead: move the jail's
        // tmpfs over / in this private mount namespace and chroot into
        // it. The old root stays underneath, unreachable by path; the
        // VMM runs without the capability to chroot out (it drops to the
        // jail's user, and seccomp refuses chroot).
        mount(
            "move to /",
            Some(Path::new(".")),
            Path::new("/"),
            None,
            libc::MS_MOVE,
            None,
        )?;
        // SAFETY: the argument is the static NUL-terminated ".".
        sys("chroot", unsafe { libc::chroot(c".".as_ptr()) })?;
    } else {
        sys("pivot_root", pivoted)?;
    }
    std::env::set_current_dir("/").map_err(path_err("chdir", Path::new("/")))?;
    // The jail's own tree cannot change; /run and the bound files keep
    // their own mounts' rights.
    mount(
        "make read-only",
        None,
        Path::new("/"),
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
        None,
    )
}

impl Jailed {
    /// Becomes the unprivileged uid/gid (no supplementary groups, every
    /// capability gone, no way back through exec) and checks that the
    /// keeper is still there to be followed in death.
    pub fn drop_privileges(&self) -> Result<(), Error> {
        let (uid, gid) = (self.uid, self.gid);
        // SAFETY: setgroups with a zero count reads no memory; the others
        // take integers only.
        unsafe {
            sys("setgroups", libc::setgroups(0, std::ptr::null()))?;
            sys("setresgid", libc::setresgid(gid, gid, gid))?;
            sys("setresuid", libc::setresuid(uid, uid, uid))?;
            sys(
                "prctl(PR_SET_NO_NEW_PRIVS)",
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            )?;
            // A change of credentials clears the parent-death signal.
            sys(
                "prctl(PR_SET_PDEATHSIG)",
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
            )?;
        }
        use std::os::fd::AsRawFd;
        let mut poll = libc::pollfd {
            fd: self.keeper.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one pollfd given.
        let n = unsafe { libc::poll(&mut poll, 1, 0) };
        if n != 0 {
            return Err(Error::Invalid(
                "the keeper process ended during set-up".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_files_must_share_a_directory() {
        let tmp = std::env::temp_dir();
        let mut io = Io {
            api_sock: Some(tmp.join("a.sock")),
            console_log: Some(tmp.join("c.log")),
            exit_file: None,
        };
        assert_eq!(
            run_dir(&io).unwrap(),
            Some(std::fs::canonicalize(&tmp).unwrap())
        );
        io.exit_file = Some(PathBuf::from("/exit.json"));
        assert!(run_dir(&io).is_err());
        assert_eq!(run_dir(&Io::default()).unwrap(), None);
    }

    #[test]
    fn file_names_are_unique_and_free() {
        let exe = std::env::current_exe().unwrap();
        assert_eq!(file_names(std::slice::from_ref(&exe)).unwrap().len(), 1);
        assert!(file_names(&[exe.clone(), exe]).is_err());
        assert!(file_names(&[PathBuf::from("/dev")]).is_err());
        assert!(file_names(&[PathBuf::from("/nonexistent/x")]).is_err());
    }
}
