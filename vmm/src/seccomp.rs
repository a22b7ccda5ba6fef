//! Seccomp filters, one per kind of thread: each thread installs its own
//! right after its setup, when everything it will ever use is open, so
//! that a compromised thread can make only the system calls its job needs.
//! A call outside the list kills the whole process with SIGSYS
//! (`SECCOMP_RET_KILL_PROCESS`), which the parent sees in the wait status.
//!
//! The filters are written with seccompiler's Rust API rather than its
//! JSON format compiled at build time because several rules hold values
//! known only at run time or to other crates: this process's pid (signals
//! may go to our own threads only), ioctl numbers derived from
//! kvm-bindings' struct sizes and from the tap device, and system call
//! numbers from libc for the target. In Rust each rule sits next to the
//! reason for it and the compiler checks it, with no build-time tool.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// Environment variable of the enforcement self-test: `KIND` or
/// `KIND:MS` (KIND as [`ThreadKind::name`]) makes threads of that kind
/// issue a forbidden system call once their filter is installed (after MS
/// milliseconds, so that a daemon test sees the instance start first;
/// the API does it on its first request once the VM runs). Without
/// filters the call succeeds and nothing happens. Tests only.
pub const PROBE_ENV: &str = "STRATO_SECCOMP_PROBE";

/// The kinds of thread that get a filter of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The thread that owns the `Vm` after start-up (`strato run`'s main
    /// thread, `strato vm`'s VM thread) and the signal threads: waits,
    /// stops the others, records the exit.
    Vmm,
    /// API server threads: accept, read and answer requests.
    Api,
    /// The device event loop: virtio queues, tap and disk I/O, console
    /// input.
    EventLoop,
    /// A vCPU: KVM_RUN and the exits it hands to devices.
    Vcpu,
}

impl ThreadKind {
    /// The kind's name, as [`PROBE_ENV`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Api => "api",
            ThreadKind::EventLoop => "event-loop",
            ThreadKind::Vcpu => "vcpu",
        }
    }
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The rules do not make a valid filter.
    #[error("cannot build the {0} seccomp filter: {1}")]
    Build(&'static str, #[source] seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("cannot install the {0} seccomp filter: {1}")]
    Install(&'static str, #[source] seccompiler::Error),
    /// This architecture is unknown to seccompiler.
    #[error("seccomp filters are not available on {0}")]
    Arch(&'static str),
    /// The thread to be filtered could not start or died first.
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, #[source] std::io::Error),
}

/// A compiled filter for one kind of thread, cheap to clone; empty when
/// filters are off.
#[derive(Clone)]
pub struct ThreadFilter {
    kind: ThreadKind,
    programs: Arc<Vec<BpfProgram>>,
    probe: Option<Duration>,
}

impl ThreadFilter {
    /// Compiles the filter of `kind`; with `enabled` false the filter
    /// installs nothing.
    pub fn new(kind: ThreadKind, enabled: bool) -> Result<Self, SeccompError> {
        let programs = if enabled {
            fix_arena_limit();
            programs(kind)?
        } else {
            Vec::new()
        };
        Ok(ThreadFilter {
            kind,
            programs: Arc::new(programs),
            probe: probe_requested(kind),
        })
    }

    /// Which kind of thread this filter is for.
    pub fn kind(&self) -> ThreadKind {
        self.kind
    }

    /// Installs the filter on the calling thread (and the threads it
    /// starts from now on, which inherit it).
    pub fn install(&self) -> Result<(), SeccompError> {
        for program in self.programs.iter() {
            seccompiler::apply_filter(program)
                .map_err(|e| SeccompError::Install(self.kind.name(), e))?;
        }
        Ok(())
    }

    /// The enforcement self-test (see [`PROBE_ENV`]): if it was asked for
    /// this kind, waits its delay and makes a system call that no filter
    /// allows.
    pub fn probe(&self) {
        let Some(delay) = self.probe else {
            return;
        };
        std::thread::sleep(delay);
        log::warn!(
            "seccomp self-test: a {} thread opens an IPv4 socket",
            self.kind.name()
        );
        // SAFETY: socket() takes no pointers; a descriptor it returns
        // (only when no filter is installed) is closed at once.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd >= 0 {
                libc::close(fd);
            }
        }
    }
}

/// Sets the C library's limit of malloc arenas now, to the value it
/// would choose itself (8 per CPU on 64-bit), because glibc works it out
/// only when a thread first needs an arena beyond the eighth, by reading
/// /sys/devices/system/cpu/online: a file open that no filter allows, on
/// whichever filtered thread (an API connection, a vCPU) gets there first.
fn fix_arena_limit() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let limit = libc::c_int::try_from(cpus * 8).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX
        // takes any positive count.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, limit) } != 1 {
            log::warn!("cannot set the malloc arena limit; a filtered thread may be killed");
        }
    });
}

fn probe_requested(kind: ThreadKind) -> Option<Duration> {
    parse_probe(&std::env::var(PROBE_ENV).ok()?, kind)
}

/// The delay of a probe value (`KIND` or `KIND:MS`) meant for `kind`.
fn parse_probe(value: &str, kind: ThreadKind) -> Option<Duration> {
    let (name, ms) = value.split_once(':').unwrap_or((value, "0"));
    (name == kind.name()).then(|| Duration::from_millis(ms.parse().unwrap_or(0)))
}

/// Starts thread `name` that installs `filter` before running `body`, and
/// returns once the filter is in place (or failed, which is an error and
/// `body` never runs).
pub fn spawn<F>(name: String, filter: ThreadFilter, body: F) -> Result<JoinHandle<()>, SeccompError>
where
    F: FnOnce() + Send + 'static,
{
    let what = filter.kind.name();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let installed = filter.install();
            let ok = installed.is_ok();
            let _ = tx.send(installed);
            if ok {
                filter.probe();
                body();
            }
        })
        .map_err(|e| SeccompError::Thread(what, e))?;
    match rx.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(SeccompError::Thread(
            what,
            std::io::Error::other("the thread ended before installing its filter"),
        )),
    }
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// A filter's rules under construction.
struct Allow(Rules);

impl Allow {
    /// Allows `calls` whatever their arguments.
    fn calls(mut self, calls: &[i64]) -> Self {
        for call in calls {
            self.0.insert(*call, Vec::new());
        }
        self
    }

    /// Allows `call` when any of `rules` matches (a rule: all of its
    /// conditions hold).
    fn call_if(mut self, call: i64, rules: Vec<SeccompRule>) -> Self {
        match self.0.get_mut(&call) {
            // Already allowed unconditionally.
            Some(existing) if existing.is_empty() => {}
            Some(existing) => existing.extend(rules),
            None => {
                self.0.insert(call, rules);
            }
        }
        self
    }

    /// Allows `ioctl` with one of `requests`, on any descriptor.
    fn ioctls(self, requests: &[u64]) -> Self {
        let rules = requests
            .iter()
            .map(|r| rule(&[(1, SeccompCmpOp::Eq, *r)]))
            .collect();
        self.call_if(libc::SYS_ioctl, rules)
    }

    /// Allows `openat` with exactly these `flags`.
    fn open_flags(self, flags: &[i32]) -> Self {
        let rules = flags
            .iter()
            .map(|f| rule(&[(2, SeccompCmpOp::Eq, *f as u64)]))
            .collect();
        self.call_if(libc::SYS_openat, rules)
    }
}

/// One rule from (argument, comparison, value) conditions on the low 32
/// bits of each argument: every argument tested here is an int or a flag
/// word the kernel reads as 32 bits.
fn rule(conditions: &[(u8, SeccompCmpOp, u64)]) -> SeccompRule {
    let conditions = conditions
        .iter()
        .map(|(arg, op, value)| {
            SeccompCondition::new(*arg, SeccompCmpArgLen::Dword, op.clone(), *value)
                .expect("argument index below 6")
        })
        .collect();
    SeccompRule::new(conditions).expect("a rule with conditions")
}

/// `openat` flags of an appended, created log (the console log and its
/// rotation): std sets O_CLOEXEC on every open.
const LOG_FLAGS: i32 = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC;
/// `openat` flags of a log file or FIFO that Firecracker's `PUT /logger`
/// names, opened on an API thread: read-write (a FIFO so opened never waits
/// for its reader), appended, created if missing, non-blocking (a FIFO
/// nobody reads loses lines instead of stalling a thread that logs).
pub const LOGGER_FLAGS: i32 =
    libc::O_RDWR | libc::O_APPEND | libc::O_CREAT | libc::O_NONBLOCK | libc::O_CLOEXEC;
/// `openat` flags of `File::create` (the exit record).
const CREATE_FLAGS: i32 = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
/// `clone` flags the C library's `pthread_create` passes; `clone` without
/// CLONE_THREAD (a new process) stays forbidden.
const THREAD_CLONE: u64 = (libc::CLONE_VM
    | libc::CLONE_FS
    | libc::CLONE_FILES
    | libc::CLONE_SIGHAND
    | libc::CLONE_THREAD
    | libc::CLONE_SYSVSEM) as u64;

/// What every thread needs: memory (never executable), locks, time,
/// signals among our own threads, console and log writes, and ending.
fn common() -> Allow {
    let no_exec = || {
        vec![rule(&[(
            2,
            SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
            0,
        )])]
    };
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() } as u64;
    Allow(Rules::new())
        .calls(&[
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_futex,
            libc::SYS_exit,
            libc::SYS_exit_group,
            libc::SYS_rt_sigreturn,
            libc::SYS_rt_sigprocmask,
            libc::SYS_sigaltstack,
            libc::SYS_munmap,
            libc::SYS_madvise,
            libc::SYS_mremap,
            libc::SYS_brk,
            libc::SYS_sched_yield,
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_nanosleep,
            libc::SYS_getrandom,
            libc::SYS_gettid,
            libc::SYS_getpid,
            libc::SYS_restart_syscall,
        ])
        .call_if(libc::SYS_mmap, no_exec())
        .call_if(libc::SYS_mprotect, no_exec())
        // Dropping a descriptor in a build with debug assertions checks
        // that it is open.
        .call_if(
            libc::SYS_fcntl,
            vec![rule(&[(1, SeccompCmpOp::Eq, libc::F_GETFD as u64)])],
        )
        // Kicking vCPUs and abort(): threads of this process only.
        .call_if(libc::SYS_tgkill, vec![rule(&[(0, SeccompCmpOp::Eq, pid)])])
}

/// Console output, on a vCPU (the serial port) and on the event loop
/// (virtio-console): writes to stdout or to the console log, which rotates
/// (a new file, a rename).
fn console() -> Allow {
    common()
        .calls(arch::seccomp::SYS_RENAME)
        .calls(&[libc::SYS_writev, libc::SYS_renameat])
        .open_flags(&[LOG_FLAGS])
}

/// What queue passes need, on the event loop only (a vCPU's DRIVER_OK write
/// kicks the queues rather than serving them): tap frames, disk sectors
/// and flushes.
fn queue_passes(allow: Allow) -> Allow {
    allow.calls(&[
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        // A block request's buffers in one call.
        libc::SYS_preadv,
        libc::SYS_pwritev,
        libc::SYS_fdatasync,
    ])
}

// The same number on every architecture: _IOW(KVMIO, 0x46, struct
// kvm_userspace_memory_region).
vmm_sys_util::ioctl_iow_nr!(
    KVM_SET_USER_MEMORY_REGION,
    kvm_bindings::KVMIO,
    0x46,
    kvm_bindings::kvm_userspace_memory_region
);

/// `KVM_SET_USER_MEMORY_REGION`'s request number.
fn kvm_set_user_memory_region() -> u64 {
    KVM_SET_USER_MEMORY_REGION() as u64
}

/// The rules of `kind`.
fn rules(kind: ThreadKind) -> Rules {
    let allow = match kind {
        ThreadKind::Vcpu => console()
            .ioctls(arch::seccomp::VCPU_IOCTLS)
            // A virtio-net driver's offloads are set as it activates the
            // device.
            .ioctls(&devices::virtio::net::Tap::runtime_ioctls()),
        ThreadKind::EventLoop => queue_passes(console())
            .calls(arch::seccomp::SYS_EPOLL_WAIT)
            // virtio-mem maps and unmaps its memory slots as the guest
            // plugs and unplugs.
            .ioctls(&[kvm_set_user_memory_region()])
            // The balloon's statistics timer is armed here.
            .calls(&[
                libc::SYS_epoll_pwait,
                libc::SYS_epoll_ctl,
                libc::SYS_timerfd_settime,
            ])
            // vsock: host programs' unix connections accepted, guest
            // connections made to unix sockets (non-blocking, AF_UNIX
            // only), and std's socket reads and writes (recv, send).
            .calls(&[
                libc::SYS_accept4,
                libc::SYS_connect,
                libc::SYS_shutdown,
                libc::SYS_recvfrom,
                libc::SYS_sendto,
            ])
            .call_if(
                libc::SYS_socket,
                vec![rule(&[
                    (0, SeccompCmpOp::Eq, libc::AF_UNIX as u64),
                    (
                        1,
                        SeccompCmpOp::Eq,
                        (libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) as u64,
                    ),
                ])],
            )
            .ioctls(&[libc::FIONBIO]),
        ThreadKind::Api => common()
            // A log or metrics file named by PUT /logger or /metrics, and
            // a drive's new image named by PATCH /drives (read-only or
            // read-write; a block device's size is found by seeking).
            .open_flags(&[
                LOGGER_FLAGS,
                libc::O_RDONLY | libc::O_CLOEXEC,
                libc::O_RDWR | libc::O_CLOEXEC,
            ])
            .calls(&[
                libc::SYS_lseek,
                libc::SYS_accept4,
                // std's UnixStream reads and writes with recv and send.
                libc::SYS_recvfrom,
                libc::SYS_sendto,
                // Peer credentials and per-connection timeouts.
                libc::SYS_getsockopt,
                libc::SYS_setsockopt,
                // Checking the files a request names.
                libc::SYS_statx,
                libc::SYS_newfstatat,
                libc::SYS_fstat,
                // What a new connection thread does as it starts.
                libc::SYS_set_robust_list,
                libc::SYS_rseq,
                libc::SYS_sched_getaffinity,
                // Let the C library fall back to clone (see below).
                libc::SYS_clone3,
            ])
            // A new connection thread names itself.
            .call_if(
                libc::SYS_prctl,
                vec![rule(&[(0, SeccompCmpOp::Eq, libc::PR_SET_NAME as u64)])],
            )
            .call_if(
                libc::SYS_clone,
                vec![rule(&[(
                    0,
                    SeccompCmpOp::MaskedEq(THREAD_CLONE),
                    THREAD_CLONE,
                )])],
            )
            // A file the daemon handed over as a descriptor (a jailed VMM
            // has no /proc) is checked through a rewound duplicate of it.
            .call_if(
                libc::SYS_fcntl,
                vec![
                    rule(&[(1, SeccompCmpOp::Eq, libc::F_GETFL as u64)]),
                    rule(&[(1, SeccompCmpOp::Eq, libc::F_DUPFD_CLOEXEC as u64)]),
                ],
            )
            .calls(&[libc::SYS_lseek])
            // The console log is opened when the VM starts.
            .open_flags(&[LOG_FLAGS])
            // A shutdown request reads the IOAPIC first.
            .ioctls(arch::seccomp::API_IOCTLS),
        ThreadKind::Vmm => common()
            .calls(arch::seccomp::SYS_RENAME)
            .calls(arch::seccomp::SYS_UNLINK)
            .calls(&[
                libc::SYS_rt_sigtimedwait,
                libc::SYS_fsync,
                libc::SYS_renameat,
                libc::SYS_unlinkat,
            ])
            // The exit record, written and renamed into place.
            .open_flags(&[CREATE_FLAGS])
            // Putting the terminal back as it was (glibc's tcsetattr
            // reads the settings back to check them).
            .ioctls(&[libc::TCSETS, libc::TCGETS]),
    };
    allow.0
}

/// The BPF programs of `kind`, in the order they are installed.
fn programs(kind: ThreadKind) -> Result<Vec<BpfProgram>, SeccompError> {
    let name = kind.name();
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let compile = |rules, mismatch, matched| {
        SeccompFilter::new(rules, mismatch, matched, arch)
            .and_then(BpfProgram::try_from)
            .map_err(|e| SeccompError::Build(name, e))
    };
    let mut out = Vec::new();
    if kind == ThreadKind::Api {
        // clone3 passes its flags in memory, which a filter cannot read:
        // answer ENOSYS so the C library uses clone, whose flags the main
        // filter checks. Stacked filters take the strictest answer, so
        // ENOSYS wins over the main filter's Allow. Installed first, as
        // the main filter forbids installing filters.
        let clone3: Rules = [(libc::SYS_clone3, Vec::new())].into();
        out.push(compile(
            clone3,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
        )?);
    }
    out.push(compile(
        rules(kind),
        SeccompAction::KillProcess,
        SeccompAction::Allow,
    )?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [ThreadKind; 4] = [
        ThreadKind::Vmm,
        ThreadKind::Api,
        ThreadKind::EventLoop,
        ThreadKind::Vcpu,
    ];

    #[test]
    fn the_memory_slot_ioctl_number_is_the_kernel_s() {
        // linux/kvm.h: _IOW(0xAE, 0x46, 32 bytes).
        assert_eq!(kvm_set_user_memory_region(), 0x4020_ae46);
    }

    #[test]
    fn every_filter_compiles() {
        for kind in KINDS {
            assert!(!programs(kind).unwrap().is_empty(), "{kind:?}");
        }
    }

    #[test]
    fn the_probe_and_process_creation_are_forbidden_everywhere() {
        for kind in KINDS {
            let rules = rules(kind);
            for call in [libc::SYS_execve, libc::SYS_ptrace] {
                assert!(!rules.contains_key(&call), "{kind:?} allows {call}");
            }
            // Sockets only on the event loop, and there only unix ones
            // (vsock), under a condition; the probe's IPv4 socket is not.
            match kind {
                ThreadKind::EventLoop => assert!(!rules[&libc::SYS_socket].is_empty()),
                _ => assert!(!rules.contains_key(&libc::SYS_socket), "{kind:?}"),
            }
        }
        // clone only for threads.
        assert!(!rules(ThreadKind::Vcpu).contains_key(&libc::SYS_clone));
        assert!(!rules(ThreadKind::Api)[&libc::SYS_clone].is_empty());
    }

    #[test]
    fn probe_values() {
        assert_eq!(
            parse_probe("vcpu:250", ThreadKind::Vcpu),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_probe("vcpu:250", ThreadKind::Api), None);
        assert_eq!(parse_probe("api", ThreadKind::Api), Some(Duration::ZERO));
        assert_eq!(
            parse_probe("event-loop:5", ThreadKind::EventLoop),
            Some(Duration::from_millis(5))
        );
    }
}
