//! Helpers shared by the integration tests: where the test guests and the
//! `strato` binary are, and running strato with a deadline so no test hangs.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Path of a tiny test guest built from `tests/guests` by the build script.
pub fn guest(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("STRATO_TEST_GUESTS")).join(format!("{name}.elf"));
    assert!(p.is_file(), "test guest {} missing", p.display());
    p
}

/// Path of the `strato` binary of this build profile, (re)built once per
/// test process so a test never runs a stale binary (`cargo test` builds
/// only the test harness of a binary crate, not the binary itself).
pub fn strato_bin() -> PathBuf {
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
    let start = Instant::now();
    let mut child = Command::new(strato_bin())
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

/// Boots test guest `name` with `strato run` and extra `args`.
pub fn run_guest(name: &str, args: &[&str]) -> Run {
    let kernel = guest(name);
    let mut all = vec!["run", "--kernel", kernel.to_str().unwrap()];
    all.extend_from_slice(args);
    strato(&all, None, Duration::from_secs(60))
}

/// True when /dev/kvm is the software `kvm_pvm` implementation, where Linux
/// user space cannot run.
pub fn software_kvm() -> bool {
    std::path::Path::new("/sys/module/kvm_pvm").exists()
}
