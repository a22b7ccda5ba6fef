//! `strato run`: one microVM in the foreground.

use std::path::PathBuf;

use clap::Args;
use vmm::config::{parse_drive, parse_net};
use vmm::seccomp::{SeccompError, ThreadFilter, ThreadKind};
use vmm::{ConsoleKind, ExitReason, SerialInput, SerialOutput, Vm, VmConfig, DEFAULT_CMDLINE};

use crate::terminal::RawTerminal;

/// Exit status when the guest failed (triple fault, KVM error, ...).
pub const EXIT_GUEST_FAILED: i32 = 3;
/// Exit status when the VM could not be created.
pub const EXIT_VMM_ERROR: i32 = 1;

/// Options of `strato run`.
#[derive(Args)]
pub struct RunArgs {
    /// Kernel image: ELF vmlinux (PVH or 64-bit entry) or bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initrd / initramfs image.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// The most vCPUs the guest can be given while it runs (x86; default
    /// --vcpus). The guest's ACPI tables list them all, the ones beyond
    /// --vcpus absent.
    #[arg(long)]
    max_vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// Write the serial console to this file instead of stdout.
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Do not forward stdin to the guest.
    #[arg(long)]
    no_stdin: bool,
    /// A virtio-block drive: path=FILE[,readonly=on][,serial=ID]; repeat
    /// for more (vda, vdb, ...).
    #[arg(long = "drive", value_name = "SPEC")]
    drives: Vec<String>,
    /// A virtio-net NIC on a host tap: tap=NAME[,mac=xx:xx:xx:xx:xx:xx];
    /// repeat for more.
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<String>,
    /// Console device for input: serial (ttyS0) or virtio (hvc0).
    #[arg(long, value_enum, default_value = "serial")]
    console: ConsoleArg,
    /// Two threads to a core (x86): vCPUs 2n and 2n+1 are siblings;
    /// --vcpus must be 1 or even.
    #[arg(long)]
    smt: bool,
    /// Add an entropy device (virtio-rng: the guest's /dev/hwrng), fed by
    /// the host's getrandom.
    #[arg(long)]
    entropy: bool,
    /// Run without the seccomp filters that limit each thread's system
    /// calls.
    #[arg(long)]
    no_seccomp: bool,
}

/// `--console` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ConsoleArg {
    Serial,
    Virtio,
}

/// Boots the VM, waits for it and returns the process exit status.
pub fn run(args: RunArgs) -> i32 {
    let signals = match block_stop_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strato: cannot set up signal handling: {e}");
            return EXIT_VMM_ERROR;
        }
    };
    let vmm_filter = match ThreadFilter::new(ThreadKind::Vmm, !args.no_seccomp) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("strato: {e}");
            return EXIT_VMM_ERROR;
        }
    };
    let mut config = VmConfig::new(args.kernel, args.vcpus, args.memory);
    config.max_vcpus = args.max_vcpus;
    config.seccomp = !args.no_seccomp;
    config.entropy = args.entropy.then(Default::default);
    config.smt = args.smt;
    config.initrd = args.initrd;
    config.cmdline = args.cmdline;
    if let Some(path) = args.serial_log {
        config.serial_out = SerialOutput::File(path);
    }
    let interactive = !args.no_stdin && crate::terminal::stdin_is_ours();
    config.serial_in = if interactive {
        SerialInput::Stdin
    } else {
        SerialInput::None
    };
    config.console = match args.console {
        ConsoleArg::Serial => ConsoleKind::Serial,
        ConsoleArg::Virtio => ConsoleKind::Virtio,
    };
    let devices = (|| -> Result<(), vmm::error::ConfigError> {
        for d in &args.drives {
            config.drives.push(parse_drive(d)?);
        }
        for (i, n) in args.nets.iter().enumerate() {
            config.nets.push(parse_net(n, i)?);
        }
        Ok(())
    })();
    if let Err(e) = devices {
        eprintln!("strato: {e}");
        return EXIT_VMM_ERROR;
    }

    let mut vm = match Vm::start(config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("strato: {e}");
            return EXIT_VMM_ERROR;
        }
    };
    let _raw = interactive.then(RawTerminal::stdin).flatten();
    let controller = vm.controller();
    let signal = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    // Stops the VM on SIGINT/SIGTERM so terminal and threads are cleaned up.
    let on_signal = {
        let signal = signal.clone();
        move |sig| {
            signal.store(sig, std::sync::atomic::Ordering::SeqCst);
            controller.stop();
        }
    };
    // Everything is open and every thread started: from here this thread
    // only waits, stops the others and reports.
    let filtered = signal_thread(signals, &vmm_filter, on_signal).and_then(|()| {
        vmm_filter.install()?;
        vmm_filter.probe();
        Ok(())
    });
    if let Err(e) = filtered {
        eprintln!("strato: {e}");
        vm.stop();
        vm.wait();
        return EXIT_VMM_ERROR;
    }
    let reason = vm.wait();
    drop(_raw);
    if let Some(t) = vm.boot_time() {
        log::info!("guest boot time: {} ms", t.as_millis());
    }
    let sig = signal.load(std::sync::atomic::Ordering::SeqCst);
    match reason {
        ExitReason::Stopped if sig != 0 => {
            eprintln!("strato: stopped by signal {sig}");
            128 + sig
        }
        r if r.is_success() => {
            log::info!("{r}");
            0
        }
        r => {
            eprintln!("strato: {r}");
            EXIT_GUEST_FAILED
        }
    }
}

/// Starts the thread that waits for the stop signals in `signals` (see
/// [`block_stop_signals`]) under `filter`, and calls `on_signal` with the
/// first one.
pub fn signal_thread(
    signals: libc::sigset_t,
    filter: &ThreadFilter,
    on_signal: impl FnOnce(i32) + Send + 'static,
) -> Result<(), SeccompError> {
    vmm::seccomp::spawn("signals".into(), filter.clone(), move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `signals` is a valid set blocked in every thread;
        // sigwait writes the received signal into `sig`.
        if unsafe { libc::sigwait(&signals, &mut sig) } == 0 {
            on_signal(sig);
        }
    })
    .map(drop)
}

/// Blocks SIGINT and SIGTERM in this thread and all threads it starts, so
/// one thread can wait for them.
pub fn block_stop_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t; the calls only edit it and this
    // thread's signal mask.
    let rc = unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut())
    };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(set)
}
