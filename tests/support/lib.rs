//! Helpers shared by the integration tests: where the test guests and the
//! `strato` binary are, and running strato with a deadline so no test hangs.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

pub mod shell;

/// Path of a tiny test guest built from `tests/guests` by the build script.
pub fn guest(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("STRATO_TEST_GUESTS"));
    // x86 guests are ELF files, arm64 ones Images.
    ["elf", "img"]
        .iter()
        .map(|ext| dir.join(format!("{name}.{ext}")))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("test guest {name} missing in {}", dir.display()))
}

/// Path of the `strato` binary of this build profile, (re)built once per
/// test process so a test never runs a stale binary (`cargo test` builds
/// only the test harness of a binary crate, not the binary itself).
///
/// `STRATO_BIN` names a prebuilt binary instead: the lane runner
/// (`tests/lane/lane.py`) builds on the host and runs the tests where cargo
/// would be far too slow.
pub fn strato_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("STRATO_BIN") {
        return PathBuf::from(bin);
    }
    static BUILD: Once = Once::new();
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/strato
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory")
        .to_path_buf();
    BUILD.call_once(|| {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "api"]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo build");
        assert!(status.success(), "building strato failed");
    });
    dir.join("strato")
}

/// What a finished strato run left behind.
#[derive(Debug)]
pub struct Run {
    /// Exit status (None if it was killed at the deadline).
    pub status: Option<ExitStatus>,
    /// Standard output: the guest's serial console.
    pub stdout: String,
    /// Standard error: strato's own messages.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Run {
    /// Exit code, panicking with the output if strato did not exit normally.
    pub fn code(&self) -> i32 {
        match self.status.and_then(|s| s.code()) {
            Some(c) => c,
            None => panic!("strato did not exit by itself: {self:#?}"),
        }
    }

    /// Asserts a clean exit (status 0).
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code(), 0, "strato failed: {self:#?}");
        self
    }

    /// Lines of the guest's output.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs `strato` with `args`, feeding `stdin`, killed after `deadline`.
pub fn strato(args: &[&str], stdin: Option<&[u8]>, deadline: Duration) -> Run {
    strato_cmd(&strato_bin(), args, stdin, deadline)
}

/// Runs `program` (strato itself or a wrapper such as `ip netns exec`) with
/// `args`, feeding `stdin`, killed after `deadline`.
pub fn strato_cmd(
    program: &std::path::Path,
    args: &[&str],
    stdin: Option<&[u8]>,
    deadline: Duration,
) -> Run {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strato");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let mut out = child.stdout.take().expect("stdout pipe");
    let mut err = child.stderr.take().expect("stderr pipe");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut stalled = String::new();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > deadline {
            stalled = vmm_report(child.id());
            if kill_and_reap(&mut child).is_none() {
                // Still there a minute after SIGKILL: its kernel is stuck
                // (in the test lane, the emulator's fault), and so are its
                // pipes, so reading them to their end would hang the test.
                return Run {
                    status: None,
                    stdout: String::new(),
                    stderr: format!(
                        "[killed at the {deadline:?} deadline; {UNKILLABLE}]\n{stalled}"
                    ),
                    elapsed: start.elapsed(),
                };
            }
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = err_t.join().unwrap_or_default();
    if status.is_none() {
        // What the process was doing when the deadline killed it, after
        // what it wrote itself.
        stderr.push_str(&format!(
            "\n[killed at the {deadline:?} deadline; its threads then:]\n{stalled}"
        ));
    }
    Run {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr,
        elapsed: start.elapsed(),
    }
}

/// A scratch directory for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A fresh directory named after `test`.
    pub fn new(test: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("strato-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }

    /// Path of `name` inside, as a string for command lines.
    pub fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().expect("utf-8 path").to_string()
    }

    /// Writes `data` to `name` and returns its path.
    pub fn file(&self, name: &str, data: &[u8]) -> String {
        let p = self.path(name);
        std::fs::write(&p, data).expect("write scratch file");
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Boots test guest `name` with `strato run` and extra `args`.
pub fn run_guest(name: &str, args: &[&str]) -> Run {
    let kernel = guest(name);
    let mut all = vec!["run", "--kernel", kernel.to_str().unwrap()];
    all.extend_from_slice(args);
    strato(&all, None, Duration::from_secs(60))
}

/// Fails at once unless these tests were built for aarch64: the aarch64
/// test guests exist only in such a build, which the aarch64 lane runs
/// (`python3 tests/lane/lane.py --arch aarch64 test`).
pub fn require_aarch64() {
    assert_eq!(
        std::env::consts::ARCH,
        "aarch64",
        "this test boots aarch64 guests; run it in the aarch64 lane: \
         python3 tests/lane/lane.py --arch aarch64 test"
    );
}

/// True when /dev/kvm is the software `kvm_pvm` implementation, where Linux
/// user space cannot run.
pub fn software_kvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}

/// The reason given to `#[ignore]` on tests that need hardware-style KVM.
/// `cargo test` lists them as ignored; the x86 lane
/// (`python3 tests/lane/lane.py test`) and a host with hardware KVM
/// (`cargo test -- --include-ignored`) run them.
#[macro_export]
macro_rules! hardware_kvm {
    () => {
        "needs hardware KVM: runs in the x86 lane (python3 tests/lane/lane.py test)"
    };
}

/// Fails the calling test at once when it was asked to run (with
/// `--include-ignored`) on software KVM, where it cannot: such a test must
/// never pass without running.
pub fn require_hardware_kvm() {
    assert!(
        !software_kvm(),
        "this test needs hardware KVM, and /dev/kvm here is software virtualization \
         (kvm_pvm); run it in the x86 lane: python3 tests/lane/lane.py test"
    );
}

/// What a VMM whose guest stalled is doing: [`threads`] and [`kvm_exits`].
/// Taken on a thread of its own and waited for at most a minute: both wait
/// on the kernel (reading /proc, resizing the trace buffer on every CPU),
/// and a stuck kernel would hang the test here (seen in the test lane: a
/// lane CPU that no longer woke up left the buffer resize waiting for good).
pub fn vmm_report(pid: u32) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(threads(pid) + &kvm_exits(pid));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| format!("(no report: {KERNEL_STUCK})\n"))
}

/// What each thread of process `pid` is doing: name, scheduler state,
/// where it sleeps and its kernel stack (root only). A test that times out
/// waiting for a guest prints this, so the report says whether the vCPU
/// threads were running the guest (inside KVM_RUN), halted in it, or
/// blocked in the VMM, which tells a stuck VMM from a stuck guest.
pub fn threads(pid: u32) -> String {
    let mut out = String::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("process {pid} is gone\n");
    };
    let mut tids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    for tid in tids {
        let read = |f: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/{f}")).unwrap_or_default()
        };
        // stat: "tid (comm) S ..."; the name may hold spaces, the state
        // follows the last ')'.
        let stat = read("stat");
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("?");
        out.push_str(&format!(
            "thread {tid} {:?} state {state} wchan {}\n",
            read("comm").trim(),
            read("wchan").trim()
        ));
        for frame in read("stack").lines().take(12) {
            out.push_str(&format!("    {frame}\n"));
        }
    }
    out
}

/// Asserts that a rate-limited run took what its limiter asks: at least
/// 90 % of `want`, at most 110 % of it plus what the unlimited run took
/// (`free`); prints the figures for the log.
pub fn assert_rate(what: &str, took: Duration, want: Duration, free: Duration) {
    println!("{what}: {took:?}, unlimited {free:?}");
    assert!(
        took >= want * 9 / 10 && took <= want * 11 / 10 + free,
        "{what}: {took:?}, expected {want:?} (+ up to {free:?} unlimited)"
    );
}

/// Kills `child` (SIGKILL) and reaps it, waiting at most a minute: a
/// process that SIGKILL cannot end (a thread stuck in the kernel) is left
/// behind with its threads reported on stderr, so the test goes on to fail
/// or pass instead of hanging the whole binary. None if it did not end.
pub fn kill_and_reap(child: &mut std::process::Child) -> Option<ExitStatus> {
    let _ = child.kill();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!(
        "process {}: {UNKILLABLE}; its threads:\n{}",
        child.id(),
        threads(child.id())
    );
    None
}

/// What a test prints when a process it killed lives on: only a stuck
/// kernel does that (SIGKILL cannot be caught or blocked), so the lane
/// runner (tests/lane/lane.py) counts it as the lane VM breaking.
pub const UNKILLABLE: &str = "did not end within 60 s of SIGKILL";

/// What [`vmm_report`] says when the kernel did not answer it within a
/// minute; the lane runner takes it as [`UNKILLABLE`].
pub const KERNEL_STUCK: &str = "the kernel did not answer within 60 s";

/// Where the guest of VMM process `pid` runs: one second of its vCPU
/// threads' KVM exits from the kernel's trace buffer (root only; tracefs
/// is mounted if it is not), counted by reason and guest RIP. A guest
/// stuck in a loop shows one RIP; a halted one shows few exits. Meant for
/// the report of a test that timed out; says why where tracing is missing.
pub fn kvm_exits(pid: u32) -> String {
    const T: &str = "/sys/kernel/tracing";
    let tids: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                    comm.starts_with("fc_vcpu")
                })
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if tids.is_empty() {
        return "no vCPU threads to trace\n".into();
    }
    if !std::path::Path::new(T).join("events/kvm").exists() {
        // SAFETY: mounting tracefs at its usual place; the strings are
        // NUL-terminated literals.
        unsafe {
            libc::mount(
                c"tracefs".as_ptr(),
                c"/sys/kernel/tracing".as_ptr(),
                c"tracefs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
    }
    let write = |f: &str, v: &str| std::fs::write(format!("{T}/{f}"), v);
    let setup = write("events/kvm/kvm_exit/enable", "0")
        .and_then(|_| write("set_event_pid", &tids.join(" ")))
        .and_then(|_| write("trace", ""))
        .and_then(|_| write("events/kvm/kvm_exit/enable", "1"));
    if let Err(e) = setup {
        return format!("no KVM exit trace ({T}: {e})\n");
    }
    std::thread::sleep(Duration::from_secs(1));
    let _ = write("events/kvm/kvm_exit/enable", "0");
    let trace = std::fs::read_to_string(format!("{T}/trace")).unwrap_or_default();
    let _ = write("set_event_pid", "");
    let _ = write("trace", "");
    // Lines hold "kvm_exit: vcpu 0 reason npf rip 0xffffffff81001234 ...".
    let mut seen: std::collections::BTreeMap<(String, String, String), u64> = Default::default();
    for l in trace.lines().filter(|l| !l.starts_with('#')) {
        let Some((_, ev)) = l.split_once("kvm_exit: ") else {
            continue;
        };
        let w: Vec<&str> = ev.split_whitespace().collect();
        let field = |k: &str| {
            w.iter()
                .position(|x| *x == k)
                .and_then(|i| w.get(i + 1))
                .map_or("?", |v| v)
                .to_string()
        };
        *seen
            .entry((field("vcpu"), field("reason"), field("rip")))
            .or_default() += 1;
    }
    let mut rows: Vec<_> = seen.into_iter().collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    let mut out = format!(
        "KVM exits of vCPU threads {} in 1 s, by vCPU, reason and guest RIP:\n",
        tids.join(",")
    );
    if rows.is_empty() {
        out.push_str("    none\n");
    }
    for ((vcpu, reason, rip), n) in rows.into_iter().take(15) {
        out.push_str(&format!("    vcpu {vcpu} {reason} at {rip}: {n}\n"));
    }
    out
}

/// Starts `strato` with `args` and reads its stdout until a line contains
/// `marker` or `deadline` passes; then stops it with SIGTERM. Returns the
/// output read so far, whether the marker was seen, and strato's stderr.
pub fn boot_until(args: &[&str], marker: &str, deadline: Duration) -> (String, bool, String) {
    boot_until_signal(args, marker, deadline, libc::SIGTERM)
}

/// [`boot_until`], ending strato with `signal` instead of SIGTERM.
pub fn boot_until_signal(
    args: &[&str],
    marker: &str,
    deadline: Duration,
    signal: libc::c_int,
) -> (String, bool, String) {
    boot_until_cmd(&strato_bin(), args, marker, deadline, signal)
}

/// [`boot_until_signal`] for `program` (strato, or a wrapper such as
/// `ip netns exec NS strato`, which passes signals on by exec'ing it).
pub fn boot_until_cmd(
    program: &std::path::Path,
    args: &[&str],
    marker: &str,
    deadline: Duration,
    signal: libc::c_int,
) -> (String, bool, String) {
    use std::io::BufRead;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strato");
    let pid = child.id() as libc::pid_t;
    let stdout = child.stdout.take().expect("stdout pipe");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            match line {
                Ok(l) => {
                    if tx.send(l).is_err() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
    });
    let start = Instant::now();
    let mut out = String::new();
    let mut seen = false;
    while let Some(left) = deadline.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains(marker) {
                    seen = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(pid, signal) };
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    let _ = child.wait();
    (out, seen, stderr)
}

/// Paths of the Linux guest images built (or found in the cache) by
/// `resources/build.sh`: VMLINUX, BZIMAGE, INITRAMFS, ROOTFS, and Debian's
/// cloud kernel CLOUD_KERNEL (a bzImage) with its CLOUD_INITRAMFS.
pub fn linux_images() -> std::collections::HashMap<String, PathBuf> {
    static IMAGES: std::sync::OnceLock<std::collections::HashMap<String, PathBuf>> =
        std::sync::OnceLock::new();
    IMAGES
        .get_or_init(|| {
            // The lane runner passes the images it built on the host as
            // STRATO_IMAGE_<KEY>, so nothing is hashed or built in the lane.
            let given: std::collections::HashMap<String, PathBuf> = std::env::vars_os()
                .filter_map(|(k, v)| {
                    let k = k.into_string().ok()?;
                    Some((
                        k.strip_prefix("STRATO_IMAGE_")?.to_string(),
                        PathBuf::from(v),
                    ))
                })
                .collect();
            if !given.is_empty() {
                return given;
            }
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new("bash")
                .arg(root.join("resources/build.sh"))
                .arg("all")
                .stderr(Stdio::inherit())
                .output()
                .expect("run resources/build.sh");
            assert!(out.status.success(), "resources/build.sh failed");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
                .collect()
        })
        .clone()
}

/// Path of one Linux guest image (`VMLINUX`, `BZIMAGE`, `INITRAMFS`,
/// `ROOTFS`, `CLOUD_KERNEL`, `CLOUD_INITRAMFS`) as a string for command
/// lines.
pub fn linux_image(key: &str) -> String {
    linux_images()
        .get(key)
        .unwrap_or_else(|| panic!("resources/build.sh gave no {key}"))
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

/// A network namespace holding tap devices, deleted on drop.
///
/// Made with iproute2 (`ip netns`) where it is installed; otherwise (the
/// aarch64 lane, whose root is a busybox) with busybox's `unshare`,
/// `nsenter` and `tunctl`, at the same path, `/run/netns/NAME`.
pub struct Netns {
    /// Its name (under /run/netns).
    pub name: String,
}

/// Runs `program args`, asserting success; returns its output.
fn sh(program: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip` with `args`, asserting success; returns its output.
fn ip(args: &[&str]) -> String {
    sh("ip", args)
}

/// Whether `ip` is iproute2's (busybox's has no `netns`).
fn iproute2() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        std::process::Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

impl Netns {
    /// A fresh namespace with `taps` up in it (IPv6 off on them).
    pub fn new(tag: &str, taps: &[&str]) -> Netns {
        let name = format!("strato-{tag}-{}", std::process::id());
        let ns = Netns { name };
        if iproute2() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &ns.name])
                .output();
            ip(&["netns", "add", &ns.name]);
        } else {
            ns.remove();
            std::fs::create_dir_all("/run/netns").expect("create /run/netns");
            std::fs::write(ns.path(), b"").expect("create the namespace's file");
            sh("unshare", &[&format!("--net={}", ns.path()), "true"]);
        }
        for tap in taps {
            if iproute2() {
                ns.exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
            } else {
                ns.exec(&["tunctl", "-t", tap]);
            }
            // No IPv6 chatter: the guest should see only the test's frames.
            ns.exec(&[
                "sysctl",
                "-q",
                &format!("net.ipv6.conf.{tap}.disable_ipv6=1"),
            ]);
            ns.exec(&["ip", "link", "set", tap, "up"]);
        }
        ns
    }

    /// The namespace's file, as `ip netns` keeps it.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// The program and leading arguments that run a command inside the
    /// namespace: `ip netns exec NAME` or `nsenter --net=FILE`.
    pub fn prefix(&self) -> (std::path::PathBuf, Vec<String>) {
        if iproute2() {
            (
                "ip".into(),
                ["netns", "exec", &self.name].map(String::from).to_vec(),
            )
        } else {
            ("nsenter".into(), vec![format!("--net={}", self.path())])
        }
    }

    /// Runs `strato ARGS` inside the namespace (see [`strato`]).
    pub fn strato<S: AsRef<str>>(&self, args: &[S], deadline: Duration) -> Run {
        let (program, mut all) = self.prefix();
        all.push(strato_bin().to_string_lossy().into_owned());
        all.extend(args.iter().map(|a| a.as_ref().to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        strato_cmd(&program, &all, None, deadline)
    }

    /// Adds a persistent TUN (layer 3) device `name` to the namespace,
    /// through /dev/net/tun itself: busybox's `tunctl` makes taps only.
    pub fn add_tun(&self, name: &str) {
        const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
        const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
        let name = name.to_string();
        self.run(move || {
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .expect("open /dev/net/tun");
            // struct ifreq: the name, then the flags.
            let mut ifr = [0u8; 40];
            ifr[..name.len()].copy_from_slice(name.as_bytes());
            let flags = (libc::IFF_TUN | libc::IFF_NO_PI) as i16;
            ifr[16..18].copy_from_slice(&flags.to_ne_bytes());
            let fd = std::os::fd::AsRawFd::as_raw_fd(&tun);
            // SAFETY: TUNSETIFF reads and writes the 40-byte ifreq it is
            // given; TUNSETPERSIST takes an integer.
            unsafe {
                assert_eq!(
                    libc::ioctl(fd, TUNSETIFF as _, ifr.as_mut_ptr()),
                    0,
                    "TUNSETIFF {name}: {}",
                    std::io::Error::last_os_error()
                );
                assert_eq!(
                    libc::ioctl(fd, TUNSETPERSIST as _, 1 as libc::c_ulong),
                    0,
                    "TUNSETPERSIST {name}: {}",
                    std::io::Error::last_os_error()
                );
            }
        })
        .join()
        .expect("add a tun device");
    }

    /// Runs a command inside the namespace, asserting success; returns its
    /// output.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let (program, mut args) = self.prefix();
        args.extend(cmd.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sh(program.to_str().unwrap(), &args)
    }

    /// Names of the network interfaces in the namespace (`lo` included).
    pub fn links(&self) -> Vec<String> {
        // "1: lo: <LOOPBACK,UP,...> ..."
        self.exec(&["ip", "-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }

    /// Runs `f` on a thread inside the namespace.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Unmounts and removes the busybox-made namespace file, if any.
    fn remove(&self) {
        let _ = std::process::Command::new("umount")
            .arg(self.path())
            .output();
        let _ = std::fs::remove_file(self.path());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if iproute2() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        } else {
            self.remove();
        }
    }
}

/// A minimal ELF64 kernel: one PT_LOAD segment at `paddr` whose code, run
/// in 64-bit mode, prints "X" on COM1 and resets through the i8042, so a
/// test sees whether it ran. `machine` is e_machine; `memsz` the segment's
/// size in memory (at least the code's size).
pub fn tiny_elf(machine: u16, paddr: u64, memsz: u64) -> Vec<u8> {
    // mov dx, 0x3f8; mov al, 'X'; out dx, al; mov al, '\n'; out dx, al;
    // mov al, 0xfe; out 0x64, al; 1: hlt; jmp 1b
    const CODE: [u8; 17] = [
        0x66, 0xba, 0xf8, 0x03, 0xb0, b'X', 0xee, 0xb0, b'\n', 0xee, 0xb0, 0xfe, 0xe6, 0x64, 0xf4,
        0xeb, 0xfd,
    ];
    const EHDR: usize = 64;
    const PHDR: usize = 56;
    let mut elf = vec![0u8; EHDR + PHDR];
    let put = |elf: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        elf[at..at + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut elf, 0, b"\x7fELF\x02\x01\x01");
    put(&mut elf, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut elf, 18, &machine.to_le_bytes());
    put(&mut elf, 20, &1u32.to_le_bytes());
    put(&mut elf, 24, &paddr.to_le_bytes()); // e_entry
    put(&mut elf, 32, &(EHDR as u64).to_le_bytes()); // e_phoff
    put(&mut elf, 52, &(EHDR as u16).to_le_bytes());
    put(&mut elf, 54, &(PHDR as u16).to_le_bytes());
    put(&mut elf, 56, &1u16.to_le_bytes()); // e_phnum
    put(&mut elf, 58, &64u16.to_le_bytes()); // e_shentsize
    let ph = EHDR;
    put(&mut elf, ph, &1u32.to_le_bytes()); // PT_LOAD
    put(&mut elf, ph + 4, &5u32.to_le_bytes()); // R X
    put(&mut elf, ph + 8, &((EHDR + PHDR) as u64).to_le_bytes());
    put(&mut elf, ph + 16, &paddr.to_le_bytes());
    put(&mut elf, ph + 24, &paddr.to_le_bytes());
    put(&mut elf, ph + 32, &(CODE.len() as u64).to_le_bytes());
    put(
        &mut elf,
        ph + 40,
        &memsz.max(CODE.len() as u64).to_le_bytes(),
    );
    put(&mut elf, ph + 48, &0x1000u64.to_le_bytes());
    elf.extend_from_slice(&CODE);
    elf
}

/// The last MemTotal (KiB) the guest's init printed (`strato_mem`): a
/// whole line only, one ending in " ." (a kernel message can cut a line in
/// two on the console).
pub fn mem_total_kib(console: &str) -> Option<u64> {
    console
        .lines()
        .filter_map(|l| l.split("STRATO_MEMTOTAL_KIB=").nth(1))
        .filter(|v| v.ends_with(" ."))
        .filter_map(|v| v.trim_end_matches(" .").trim().parse().ok())
        .next_back()
}
