//! The `vmm` crate used as a library, as a host agent embeds it.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strato_tests::guest;
use vmm::{ExitReason, SerialOutput, Vm, VmConfig};

/// Collects the guest's serial output in memory.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn config(name: &str, capture: &Capture) -> VmConfig {
    let mut c = VmConfig::new(guest(name), 2, 64);
    c.serial_out = SerialOutput::Writer(Box::new(capture.clone()));
    c
}

#[test]
fn guest_reset_and_boot_time() {
    let out = Capture::default();
    let mut vm = Vm::start(config("boot-timer", &out)).unwrap();
    assert_eq!(vm.wait(), ExitReason::Reset);
    assert!(out.text().contains("boot-timer: done"));
    let t = vm.boot_time().expect("boot time recorded");
    assert!(t < vm.uptime());
}

#[test]
fn stop_from_another_thread() {
    let out = Capture::default();
    let mut vm = Vm::start(config("idle", &out)).unwrap();
    let controller = vm.controller();
    let watcher = out.clone();
    let stopper = std::thread::spawn(move || {
        let start = Instant::now();
        while !watcher.text().contains("idle: ready") {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "guest never came up"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        controller.stop();
    });
    assert_eq!(vm.wait(), ExitReason::Stopped);
    stopper.join().unwrap();
    assert!(vm.boot_time().is_none());
}

#[test]
fn many_vms_in_one_process() {
    let outs: Vec<Capture> = (0..4).map(|_| Capture::default()).collect();
    let mut vms: Vec<Vm> = outs
        .iter()
        .map(|o| Vm::start(config("hello", o)).unwrap())
        .collect();
    for (vm, out) in vms.iter_mut().zip(&outs) {
        assert_eq!(vm.wait(), ExitReason::Reset);
        assert_eq!(out.text(), "Hello from strato test guest\n");
    }
}

#[test]
fn errors_are_typed() {
    let out = Capture::default();
    let mut c = config("hello", &out);
    c.vcpus = 0;
    match Vm::start(c) {
        Err(vmm::Error::Config(vmm::error::ConfigError::NoVcpus)) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a VM with no vCPUs started"),
    }
}

/// Waits until `out` contains `needle`.
fn wait_for(out: &Capture, needle: &str) {
    let start = Instant::now();
    while !out.text().contains(needle) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never saw {needle:?}: {}",
            out.text()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn ticks(out: &Capture) -> usize {
    out.text().matches("tick ").count()
}

#[test]
fn pause_stops_the_guest_and_resume_continues_it() {
    let out = Capture::default();
    let mut c = config("ticker", &out);
    c.cmdline = "period=5".into();
    let mut vm = Vm::start(c).unwrap();
    let ctl = vm.controller();
    wait_for(&out, "tick 3");
    ctl.pause().unwrap();
    assert!(ctl.is_paused());
    // A line being printed when the pause hit may still complete.
    std::thread::sleep(Duration::from_millis(50));
    let frozen = ticks(&out);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticks(&out), frozen, "guest ran while paused");
    ctl.resume().unwrap();
    wait_for(&out, &format!("tick {}", frozen + 2));
    // Stopping works while paused too.
    ctl.pause().unwrap();
    ctl.stop();
    assert_eq!(vm.wait(), ExitReason::Stopped);
    assert_eq!(ctl.pause(), Err(vmm::ControlError::NotRunning));
}

#[test]
fn ctrl_alt_del_reaches_the_guest_keyboard() {
    let out = Capture::default();
    let mut vm = Vm::start(config("kbd", &out)).unwrap();
    wait_for(&out, "kbd: ready");
    vm.controller().send_ctrl_alt_del().unwrap();
    assert_eq!(vm.wait(), ExitReason::Reset);
    assert!(
        out.text().contains("kbd: 14 11 e0 71 e0 f0 71 f0 11 f0 14"),
        "{}",
        out.text()
    );
}

#[test]
fn dropping_a_running_vm_stops_it() {
    let out = Capture::default();
    let vm = Vm::start(config("ticker", &out)).unwrap();
    wait_for(&out, "tick 1");
    drop(vm);
    let after = ticks(&out);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ticks(&out), after, "vCPUs still running after drop");
}
