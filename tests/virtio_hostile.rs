//! A hostile guest posts malformed rings and requests: each one fails or
//! puts the device in NEEDS_RESET, the VMM stays up, and the device and
//! its neighbour keep working after a reset.

use strato_tests::{random_bytes, run_guest, Scratch};

#[test]
fn malformed_rings_fail_cleanly_and_devices_recover() {
    let dir = Scratch::new("hostile");
    let d0 = random_bytes(1 << 20, 10);
    let d1 = random_bytes(1 << 20, 11);
    let p0 = dir.file("d0.img", &d0);
    let p1 = dir.file("d1.img", &d1);
    let r = run_guest(
        "hostile",
        &[
            "--memory",
            "64",
            "--no-stdin",
            "--cmdline",
            "case=all wait=300",
            "--drive",
            &format!("path={p0}"),
            "--drive",
            &format!("path={p1}"),
        ],
    );
    r.assert_ok();
    let lines = r.lines();
    let case = |name: &str| -> &str {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("hostile: {name} ")))
            .unwrap_or_else(|| panic!("no line for {name}: {r:#?}"))
    };
    // Requests the device can answer fail with IOERR (req 01).
    for name in ["desc-oob", "len-overflow", "write-to-readonly"] {
        assert!(case(name).contains("req 01"), "{}", case(name));
    }
    assert!(case("write-to-readonly").contains("data untouched"));
    // Rings the device cannot trust put it in NEEDS_RESET (status bit 0x40).
    for name in [
        "loop",
        "too-long",
        "huge-index",
        "bad-queue-size",
        "queue-too-big",
    ] {
        assert!(case(name).contains("status 4f"), "{}", case(name));
    }
    for name in ["bad-queue-size", "queue-too-big"] {
        assert!(case(name).contains("ready 0"), "{}", case(name));
    }
    // Early notifications are ignored; the request completes after DRIVER_OK.
    assert!(
        case("notify-early").contains("req 00"),
        "{}",
        case("notify-early")
    );
    assert!(
        case("config-oob").contains("value 0"),
        "{}",
        case("config-oob")
    );
    // After every case the device works again, and so does its neighbour.
    let recovered = lines
        .iter()
        .filter(|l| **l == "hostile: recovered read status 0")
        .count();
    let other = lines
        .iter()
        .filter(|l| **l == "hostile: other device status 0")
        .count();
    assert_eq!((recovered, other), (10, 10), "{r:#?}");
    // Guest errors are logged once per kind, not once per event.
    assert!(r.stderr.lines().count() <= 6, "{}", r.stderr);
    assert!(std::fs::read(&p0).unwrap() == d0 && std::fs::read(&p1).unwrap() == d1);
}
