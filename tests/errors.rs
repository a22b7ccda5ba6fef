//! Bad input: one clear error line, a non-zero exit, and no guest started.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use strato_tests::{guest, strato, strato_bin, tiny_elf, Run};

fn run(args: &[&str]) -> Run {
    let mut all = vec!["run", "--no-stdin"];
    all.extend_from_slice(args);
    strato(&all, None, Duration::from_secs(30))
}

/// Asserts exit status 1, nothing from the guest, and one stderr line that
/// contains `needle`.
fn assert_rejected(args: &[&str], needle: &str) {
    let r = run(args);
    assert_eq!(r.code(), 1, "{args:?}: {r:#?}");
    assert!(r.stdout.is_empty(), "a guest ran: {r:#?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: {r:#?}");
    assert!(lines[0].starts_with("strato: "), "{r:#?}");
    assert!(lines[0].contains(needle), "{args:?}: {r:#?}");
}

fn scratch(name: &str, contents: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("strato-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, contents).unwrap();
    p.to_str().unwrap().to_string()
}

#[test]
fn missing_or_unusable_files() {
    let hello = guest("hello");
    let hello = hello.to_str().unwrap();
    assert_rejected(&["--kernel", "/nonexistent/vmlinux"], "No such file");
    assert_rejected(&["--kernel", "/tmp"], "not a regular file");
    assert_rejected(
        &["--kernel", hello, "--initrd", "/nonexistent/initrd"],
        "initrd",
    );
    let text = scratch("text", b"not a kernel\n");
    assert_rejected(&["--kernel", &text], "is not a kernel");
    let noise: Vec<u8> = (0..65536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let noise = scratch("noise", &noise);
    assert_rejected(&["--kernel", &noise], "is not a kernel");
    let empty = scratch("empty", b"");
    assert_rejected(&["--kernel", &empty], "is not a kernel");
}

/// EM_X86_64 and EM_AARCH64.
const EM_X86_64: u16 = 62;
const EM_AARCH64: u16 = 183;
const KERNEL_ADDR: u64 = 0x10_0000;

#[test]
fn elf_kernels_that_cannot_boot_here() {
    // The crafted kernel runs: it prints "X" and resets.
    let good = scratch("elf-x86", &tiny_elf(EM_X86_64, KERNEL_ADDR, 0));
    let r = run(&["--kernel", &good]);
    assert_eq!((r.code(), r.stdout.as_str()), (0, "X\n"), "{r:#?}");
    // The same code for another machine is refused before it runs.
    let arm = scratch("elf-arm", &tiny_elf(EM_AARCH64, KERNEL_ADDR, 0));
    assert_rejected(&["--kernel", &arm], "is an ELF for AArch64 (e_machine 183)");
    // So is an arm64 Image ("ARM\x64" at 0x38), by its format's name.
    let mut image = vec![0u8; 4096];
    image[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let image = scratch("arm64-image", &image);
    assert_rejected(
        &["--kernel", &image],
        "is an arm64 Image: this x86_64 build boots an x86_64 ELF vmlinux or a bzImage",
    );
    // A segment that needs more RAM than the guest has.
    let big = scratch("elf-big", &tiny_elf(EM_X86_64, KERNEL_ADDR, 1 << 30));
    assert_rejected(
        &["--kernel", &big, "--memory", "128"],
        "ELF segment 0 [0x100000, 0x40100000) lies outside guest RAM",
    );
    // One that would land in the MMIO gap below 4 GiB.
    let gap = scratch("elf-gap", &tiny_elf(EM_X86_64, 0xd000_0000, 0));
    assert_rejected(
        &["--kernel", &gap, "--memory", "4096"],
        "ELF segment 0 [0xd0000000, 0xd0000011) lies outside guest RAM",
    );
}

#[test]
fn initrd_larger_than_memory() {
    let hello = guest("hello");
    let big = scratch("big-initrd", &vec![0u8; 40 << 20]);
    assert_rejected(
        &[
            "--kernel",
            hello.to_str().unwrap(),
            "--memory",
            "32",
            "--initrd",
            &big,
        ],
        "does not fit",
    );
}

#[test]
fn bad_sizes() {
    let hello = guest("hello");
    let k = hello.to_str().unwrap();
    assert_rejected(&["--kernel", k, "--memory", "0"], "too small");
    assert_rejected(&["--kernel", k, "--memory", "4"], "too small");
    assert_rejected(&["--kernel", k, "--memory", "100000000"], "the host has");
    assert_rejected(&["--kernel", k, "--vcpus", "0"], "at least 1");
    assert_rejected(&["--kernel", k, "--vcpus", "100000"], "maximum");
    let long = "x".repeat(4000);
    assert_rejected(&["--kernel", k, "--cmdline", &long], "command line");
}

/// As many virtio devices as the machine has interrupts for: the VM is
/// built and the guest runs. One more is refused before any guest starts.
#[test]
fn the_most_virtio_devices_boot_and_one_more_is_refused() {
    let hello = guest("hello");
    let k = hello.to_str().unwrap();
    let max = vmm::config::MAX_VIRTIO_DEVICES;
    let specs: Vec<String> = (0..=max)
        .map(|i| {
            format!(
                "path={},readonly=on",
                scratch(&format!("d{i}.img"), &[0; 4096])
            )
        })
        .collect();
    let mut args = vec!["--kernel", k, "--memory", "64"];
    for spec in &specs[..max] {
        args.extend(["--drive", spec.as_str()]);
    }
    let r = run(&args);
    r.assert_ok();
    assert_eq!(r.lines(), vec!["Hello from strato test guest"], "{r:#?}");
    args.extend(["--drive", specs[max].as_str()]);
    assert_rejected(&args, &format!("at most {max} are supported"));
}

#[test]
fn bad_flags_are_usage_errors() {
    let r = run(&["--kernel", "x", "--memory", "lots"]);
    assert_eq!(r.code(), 2, "{r:#?}");
    assert!(r.stderr.contains("invalid value 'lots'"), "{r:#?}");
    let r = run(&["--no-such-flag"]);
    assert_eq!(r.code(), 2, "{r:#?}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn kvm_not_permitted_or_missing() {
    // The tests run as root (they make network namespaces); this one needs
    // it to drop privileges, and must not pass without doing so.
    assert!(is_root(), "needs root to drop privileges");
    let hello = guest("hello");
    // An unprivileged user cannot open a root-only /dev/kvm.
    let meta = std::fs::metadata("/dev/kvm").unwrap();
    if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o006 == 0 {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(strato_bin())
            .args(["run", "--no-stdin", "--kernel"])
            .arg(&hello)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("cannot open /dev/kvm: Permission denied"),
            "{err}"
        );
    }
    // A /dev without kvm, in a private mount namespace.
    assert!(Path::new("/usr/bin/unshare").exists());
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {} run --no-stdin --kernel {}",
            strato_bin().display(),
            hello.display()
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open /dev/kvm: No such file"), "{err}");
}
