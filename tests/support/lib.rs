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
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
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
pub struct Netns {
    /// Its name (under /run/netns).
    pub name: String,
}

/// Runs `ip` with `args`, asserting success; returns its output.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Netns {
    /// A fresh namespace with `taps` up in it (IPv6 off on them).
    pub fn new(tag: &str, taps: &[&str]) -> Netns {
        let name = format!("strato-{tag}-{}", std::process::id());
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &name])
            .output();
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        for tap in taps {
            ns.exec(&["ip", "tuntap", "add", "dev", tap, "mode", "tap"]);
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

    /// Runs a command inside the namespace, asserting success.
    pub fn exec(&self, cmd: &[&str]) {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        ip(&args);
    }

    /// Names of the network interfaces in the namespace (`lo` included).
    pub fn links(&self) -> Vec<String> {
        // "1: lo: <LOOPBACK,UP,...> ..."
        ip(&["netns", "exec", &self.name, "ip", "-o", "link", "show"])
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
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).expect("open netns");
            // SAFETY: setns on this thread only, with a valid namespace fd.
            let rc =
                unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
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
