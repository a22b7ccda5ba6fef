//! Boots the tiny test guests with `strato run` and checks what they report.

use std::time::{Duration, Instant};
use strato_tests::{guest, run_guest, strato};

const MIB: u64 = 1 << 20;

#[test]
fn hello_prints_and_resets_cleanly() {
    let r = run_guest("hello", &["--memory", "64"]);
    r.assert_ok();
    assert_eq!(r.lines(), vec!["Hello from strato test guest"]);
}

/// Parses the `mem:` lines of the bootinfo guest.
fn memory_map(lines: &[&str]) -> Vec<(u64, u64, u32)> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("mem: "))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                u64::from_str_radix(f[0], 16).unwrap(),
                u64::from_str_radix(f[1], 16).unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect()
}

fn check_bootinfo(name: &str, proto: &str) {
    let cmdline = "console=ttyS0 strato.test=1 quoted=\"a b\" end";
    let r = run_guest(name, &["--memory", "256", "--cmdline", cmdline]);
    r.assert_ok();
    let lines = r.lines();
    assert_eq!(lines[0], format!("proto: {proto}"));
    assert_eq!(lines[1], format!("cmdline: {cmdline}"));
    let map = memory_map(&lines);
    assert_eq!(
        map,
        vec![
            (0, 0x9fc00, 1),
            (0x9fc00, 0x100000, 2),
            (0x100000, 256 * MIB, 1),
        ]
    );
    assert!(lines.contains(&"ram-mib: 255"), "{lines:?}");
}

#[test]
fn pvh_entry_gets_cmdline_and_memory_map() {
    check_bootinfo("bootinfo", "pvh");
}

#[test]
fn linux_64bit_entry_gets_cmdline_and_e820() {
    check_bootinfo("bootinfo-64", "linux64");
}

#[test]
fn memory_above_4g_is_mapped_around_the_mmio_gap() {
    let r = run_guest("bootinfo", &["--memory", "5120"]);
    r.assert_ok();
    let map = memory_map(&r.lines());
    assert_eq!(
        map.last(),
        Some(&(0x1_0000_0000, 0x1_0000_0000 + 2048 * MIB, 1))
    );
    assert_eq!(map[2], (0x100000, 0xc000_0000, 1));
}

#[test]
fn every_mib_of_ram_is_usable() {
    // 3 GiB below the MMIO gap and 256 MiB above 4 GiB. Every MiB the
    // guest writes costs the host a whole 2 MiB page where transparent huge
    // pages are on (the lane's kernel), so a bigger guest fills most of the
    // lane VM's memory and stalls it in reclaim.
    for (mem, expect_highest) in [("64", 63 * MIB), ("3328", 0x1_0000_0000 + 255 * MIB)] {
        let r = run_guest("memory", &["--memory", mem]);
        r.assert_ok();
        let mib: u64 = mem.parse().unwrap();
        // The guest skips the first 2 MiB, where it lives.
        assert!(
            r.stdout.contains(&format!("memory: {} MiB ok", mib - 2)),
            "{r:#?}"
        );
        assert!(
            r.stdout
                .contains(&format!("memory: highest {expect_highest:016x}")),
            "{r:#?}"
        );
    }
}

#[test]
fn smp_aps_start_with_init_sipi() {
    for vcpus in [1u32, 2, 4] {
        let r = run_guest("smp", &["--vcpus", &vcpus.to_string(), "--memory", "64"]);
        r.assert_ok();
        let out = &r.stdout;
        assert!(out.contains("smp: bsp apic 0"), "{r:#?}");
        assert!(
            out.contains(&format!("smp: {vcpus} cpus in mp table")),
            "{r:#?}"
        );
        for ap in 1..vcpus {
            assert!(out.contains(&format!("smp: ap {ap} up")), "{r:#?}");
        }
        assert!(out.contains(&format!("smp: {vcpus} cpus online")), "{r:#?}");
    }
}

/// `--smt` (two threads to a core, x86): the vCPUs come up as without it,
/// and an odd count is refused before any guest runs.
#[test]
fn smt_brings_every_vcpu_up_and_refuses_odd_counts() {
    if !vmm::config::SMT_SUPPORTED {
        let r = run_guest("smp", &["--vcpus", "2", "--smt", "--memory", "64"]);
        assert!(r.stderr.contains("smt"), "{r:#?}");
        return;
    }
    let r = run_guest("smp", &["--vcpus", "4", "--smt", "--memory", "64"]);
    r.assert_ok();
    assert!(r.stdout.contains("smp: 4 cpus online"), "{r:#?}");
    let r = run_guest("smp", &["--vcpus", "3", "--smt", "--memory", "64"]);
    assert_ne!(r.code(), 0, "{r:#?}");
    assert!(r.stderr.contains("must be 1 or even"), "{r:#?}");
}

/// Feeds `line` to the echo guest and returns what it printed.
fn echo(line: &str) -> Vec<String> {
    let kernel = guest("echo");
    let r = strato(
        &[
            "run",
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory",
            "64",
        ],
        Some(format!("{line}\n").as_bytes()),
        Duration::from_secs(60),
    );
    r.assert_ok();
    r.lines().iter().map(|l| l.to_string()).collect()
}

#[test]
fn serial_input_reaches_the_guest() {
    assert_eq!(
        echo("strato says hi"),
        vec!["echo: ready", "echo: strato says hi"]
    );
}

#[test]
fn long_serial_input_is_not_dropped() {
    // Longer than the UART's 64-byte FIFO: flow control must hold the rest.
    let line: String = (0..120).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    assert_eq!(echo(&line)[1], format!("echo: {line}"));
}

#[test]
fn triple_fault_is_an_error_exit() {
    let r = run_guest("triple-fault", &["--memory", "64", "--vcpus", "2"]);
    assert_eq!(r.code(), 3, "{r:#?}");
    assert!(r.stdout.contains("triple-fault: now"));
    assert!(r.stderr.contains("triple fault on vCPU 0"), "{r:#?}");
    assert_eq!(r.stderr.lines().count(), 1, "one clear line: {r:#?}");
}

#[test]
fn boot_timer_is_recorded() {
    let r = run_guest("boot-timer", &["--memory", "64", "--log-level", "info"]);
    r.assert_ok();
    assert!(r.stdout.contains("boot-timer: done"));
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("guest boot time:") && l.ends_with(" ms"))
        .unwrap_or_else(|| panic!("no boot time logged: {r:#?}"));
    let ms: u64 = line
        .rsplit(' ')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("boot time value");
    assert!(ms < r.elapsed.as_millis() as u64);
}

#[test]
fn sigterm_stops_the_vm_and_reports_it() {
    let kernel = guest("idle");
    let mut child = std::process::Command::new(strato_tests::strato_bin())
        .args([
            "run",
            "--no-stdin",
            "--memory",
            "64",
            "--vcpus",
            "2",
            "--kernel",
        ])
        .arg(&kernel)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the guest to come up, then stop it.
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 12];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    assert_eq!(&buf, b"idle: ready\n");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped by signal"), "{err}");
}

/// Runs the idle guest with the seccomp self-test for threads of `kind`
/// (`STRATO_SECCOMP_PROBE`, see `vmm::seccomp`) and `extra` options;
/// a run still going after a second is stopped with SIGTERM. Returns the
/// exit status and stderr.
fn run_with_probe(kind: &str, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(strato_tests::strato_bin())
        .args(["run", "--no-stdin", "--memory", "32", "--kernel"])
        .arg(guest("idle"))
        .args(extra)
        .env("STRATO_SECCOMP_PROBE", kind)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() && start.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: signalling our own child process (if it is still there,
    // it is not reaped yet, so the pid is still its own).
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_forbidden_system_call_kills_strato_run_with_sigsys() {
    use std::os::unix::process::ExitStatusExt;
    for kind in ["vcpu", "event-loop", "vmm"] {
        let (status, err) = run_with_probe(kind, &[]);
        assert_eq!(
            status.signal(),
            Some(libc::SIGSYS),
            "{kind}: {status:?}, stderr: {err}"
        );
        assert!(err.contains("seccomp self-test"), "{kind}: {err}");
        // Without filters the same call succeeds and the VM runs on.
        let (status, err) = run_with_probe(kind, &["--no-seccomp"]);
        assert_eq!(
            status.code(),
            Some(128 + libc::SIGTERM),
            "{kind} with --no-seccomp: {status:?}, stderr: {err}"
        );
        assert!(err.contains("seccomp self-test"), "{kind}: {err}");
    }
}

#[test]
fn a_terminal_on_stdin_is_put_back_as_it_was() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into `master` and
    // `slave`; the name and settings pointers may be null.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty just returned these descriptors, owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let settings = |fd: &OwnedFd| {
        use std::os::fd::AsRawFd;
        // SAFETY: termios is plain data that tcgetattr fills for a tty.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is an open terminal and `t` a termios to fill.
        assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
        (t.c_iflag, t.c_oflag, t.c_lflag)
    };
    let before = settings(&slave);
    let out = std::process::Command::new(strato_tests::strato_bin())
        .args(["run", "--memory", "32", "--kernel"])
        .arg(guest("hello"))
        .stdin(slave.try_clone().unwrap())
        .output()
        .unwrap();
    // strato puts the terminal in raw mode and back, under its filters.
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(settings(&slave), before);
    drop(master);
}
