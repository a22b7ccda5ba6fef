//! virtio-block through test guests with minimal polling drivers.

use std::time::Duration;

use strato_tests::{boot_until_signal, guest, random_bytes, run_guest, Scratch};

const MIB: usize = 1 << 20;

#[test]
fn guest_copies_a_disk_through_the_device() {
    let dir = Scratch::new("blk-copy");
    let data = random_bytes(8 * MIB, 1);
    let src = dir.file("src.img", &data);
    let dst = dir.file("dst.img", &vec![0u8; 8 * MIB]);
    let r = run_guest(
        "blk-copy",
        &[
            "--memory",
            "64",
            "--no-stdin",
            "--cmdline",
            "chunk=256",
            "--drive",
            &format!("path={src},readonly=on"),
            "--drive",
            &format!("path={dst}"),
        ],
    );
    r.assert_ok();
    assert!(
        r.stdout
            .contains(&format!("blk-copy: {} sectors copied", 8 * MIB / 512)),
        "{r:#?}"
    );
    assert!(r.stdout.contains("blk-copy: flush ok"), "{r:#?}");
    assert!(
        std::fs::read(&dst).unwrap() == data,
        "destination differs from source"
    );
    assert!(
        std::fs::read(&src).unwrap() == data,
        "read-only source changed"
    );
}

#[test]
fn flushed_data_survives_sigkill() {
    let dir = Scratch::new("blk-kill");
    let data = random_bytes(2 * MIB, 2);
    let src = dir.file("src.img", &data);
    let dst = dir.file("dst.img", &vec![0u8; 2 * MIB]);
    let kernel = guest("blk-copy");
    let (out, seen, _) = boot_until_signal(
        &[
            "run",
            "--no-stdin",
            "--memory",
            "64",
            "--kernel",
            kernel.to_str().unwrap(),
            "--drive",
            &format!("path={src}"),
            "--drive",
            &format!("path={dst}"),
        ],
        "blk-copy: flush ok",
        Duration::from_secs(60),
        libc::SIGKILL,
    );
    assert!(seen, "{out}");
    assert!(std::fs::read(&dst).unwrap() == data);
}

#[test]
fn read_only_disk_and_out_of_range_requests_fail_with_ioerr() {
    let dir = Scratch::new("blk-ro");
    let data = random_bytes(MIB, 3);
    let img = dir.file("ro.img", &data);
    let r = run_guest(
        "blk-check",
        &[
            "--memory",
            "64",
            "--no-stdin",
            "--drive",
            &format!("path={img},readonly=on,serial=strato-ro-1"),
        ],
    );
    r.assert_ok();
    let first: String = data[..8].iter().map(|b| format!("{b:02x}")).collect();
    for line in [
        "blk: capacity 2048".to_string(),
        "blk: features ro=1 flush=1".into(),
        "blk: id strato-ro-1".into(),
        "blk: write status 1".into(),
        "blk: read-past-end status 1".into(),
        format!("blk: read status 0 first-bytes {first}"),
    ] {
        assert!(
            r.lines().contains(&line.as_str()),
            "missing {line:?}: {r:#?}"
        );
    }
    assert!(
        std::fs::read(&img).unwrap() == data,
        "read-only image changed"
    );
}

#[test]
fn writable_disk_accepts_writes() {
    let dir = Scratch::new("blk-rw");
    let img = dir.file("rw.img", &random_bytes(MIB, 4));
    let r = run_guest(
        "blk-check",
        &[
            "--memory",
            "64",
            "--no-stdin",
            "--drive",
            &format!("path={img}"),
        ],
    );
    r.assert_ok();
    assert!(r.lines().contains(&"blk: features ro=0 flush=1"), "{r:#?}");
    assert!(r.lines().contains(&"blk: write status 0"), "{r:#?}");
    assert!(r.lines().contains(&"blk: read-past-end status 1"), "{r:#?}");
}

#[test]
fn bad_drive_options_are_rejected() {
    let dir = Scratch::new("blk-bad");
    for (spec, needle) in [
        ("path=/nonexistent/disk.img".to_string(), "No such file"),
        (format!("path={}", dir.0.display()), "not a regular file"),
        ("path=/x,readonly=maybe".into(), "expected on or off"),
        ("readonly=on".into(), "path=FILE is required"),
        ("path=/x,colour=red".into(), "unknown key"),
    ] {
        let r = run_guest("hello", &["--no-stdin", "--drive", &spec]);
        assert_eq!(r.code(), 1, "{spec}: {r:#?}");
        assert!(r.stderr.contains(needle), "{spec}: {r:#?}");
        assert!(r.stdout.is_empty());
    }
}
