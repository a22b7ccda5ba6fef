//! virtio-console: output on the same stream as the serial console, host
//! input to hvc0 when `--console virtio` is chosen.

use std::time::Duration;

use strato_tests::{guest, strato};

#[test]
fn hvc_output_and_input() {
    let kernel = guest("console");
    let r = strato(
        &[
            "run",
            "--memory",
            "64",
            "--console",
            "virtio",
            "--kernel",
            kernel.to_str().unwrap(),
        ],
        Some(b"ping from host\n"),
        Duration::from_secs(60),
    );
    r.assert_ok();
    assert_eq!(
        r.lines(),
        vec![
            "console: ready",
            "hvc: hello from the guest",
            "hvc: got ping from host",
            "console: done"
        ]
    );
}

#[test]
fn serial_console_keeps_the_input_by_default() {
    // Without --console virtio, stdin goes to ttyS0 and the echo guest gets it.
    let kernel = guest("echo");
    let r = strato(
        &[
            "run",
            "--memory",
            "64",
            "--kernel",
            kernel.to_str().unwrap(),
        ],
        Some(b"to the uart\n"),
        Duration::from_secs(60),
    );
    r.assert_ok();
    assert!(r.stdout.contains("echo: to the uart"), "{r:#?}");
}
