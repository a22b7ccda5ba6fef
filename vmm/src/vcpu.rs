//! vCPU threads: configuration, the KVM_RUN loop and exit handling.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::Bus;
use kvm_bindings::{
    kvm_run, KVM_EXIT_IO_IN, KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use log::debug;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::error::Result;
use crate::exit::{ExitReason, ExitState};
use crate::seccomp::ThreadFilter;

/// Pausing and presence: a vCPU thread parks between KVM_RUN calls while
/// the VM is paused or while its vCPU is absent (not plugged yet, or
/// ejected by the guest).
pub struct VcpuControl {
    state: Mutex<PauseState>,
    cv: Condvar,
    /// Each vCPU thread's kernel thread id, once it runs (0 before): what
    /// a kick aims at from any thread, without the thread's handle.
    tids: Vec<AtomicI32>,
}

struct PauseState {
    paused: bool,
    parked: u32,
    /// Per vCPU: plugged (runs unless paused).
    present: Vec<bool>,
    /// Per vCPU: parked right now.
    parked_now: Vec<bool>,
}

/// How long an eject waits for the ejected vCPU's thread to park.
const EJECT_TIMEOUT: Duration = Duration::from_millis(200);

impl VcpuControl {
    /// Control for `max` vCPUs of which the first `boot` are present.
    pub fn new(boot: u32, max: u32) -> Self {
        VcpuControl {
            state: Mutex::new(PauseState {
                paused: false,
                parked: 0,
                present: (0..max).map(|i| i < boot).collect(),
                parked_now: vec![false; max as usize],
            }),
            cv: Condvar::new(),
            tids: (0..max).map(|_| AtomicI32::new(0)).collect(),
        }
    }

    /// Called by vCPU `id`'s thread between runs: parks while paused or
    /// absent.
    fn park_if_paused(&self, id: u32, exit: &ExitState) {
        let idx = id as usize;
        let mut s = devices::bus::lock(&self.state);
        let hold = |s: &PauseState| s.paused || !s.present.get(idx).copied().unwrap_or(false);
        if !hold(&s) {
            return;
        }
        s.parked += 1;
        if let Some(p) = s.parked_now.get_mut(idx) {
            *p = true;
        }
        self.cv.notify_all();
        while hold(&s) && !exit.stopping() {
            s = self.cv.wait(s).unwrap_or_else(|e| e.into_inner());
        }
        if let Some(p) = s.parked_now.get_mut(idx) {
            *p = false;
        }
        s.parked -= 1;
    }

    /// Pauses `threads`: returns once all of them are parked, or false
    /// after `timeout` (the pause stays requested).
    pub fn pause(&self, threads: &[JoinHandle<()>], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = devices::bus::lock(&self.state);
        s.paused = true;
        loop {
            let running = threads.iter().filter(|t| !t.is_finished()).count() as u32;
            if s.parked >= running {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            // vCPUs blocked in KVM_RUN only notice after a kick.
            for t in threads {
                kick(t);
            }
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(5))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Lets parked vCPUs run again (absent ones stay parked).
    pub fn resume(&self) {
        devices::bus::lock(&self.state).paused = false;
        self.cv.notify_all();
    }

    /// True while a pause is requested.
    pub fn paused(&self) -> bool {
        devices::bus::lock(&self.state).paused
    }

    /// Plugs vCPU `id`: its thread runs it (unless paused).
    pub fn plug(&self, id: u32) {
        if let Some(p) = devices::bus::lock(&self.state).present.get_mut(id as usize) {
            *p = true;
        }
        self.cv.notify_all();
    }

    /// Unplugs vCPU `id`: marks it absent and kicks its thread out of
    /// KVM_RUN until it has parked, for at most [`EJECT_TIMEOUT`] (a
    /// guest that ejected the vCPU has taken it offline, so it leaves
    /// KVM_RUN at the first kick). Returns whether it parked.
    pub fn unplug(&self, id: u32) -> bool {
        let idx = id as usize;
        let deadline = Instant::now() + EJECT_TIMEOUT;
        let mut s = devices::bus::lock(&self.state);
        let Some(p) = s.present.get_mut(idx) else {
            return false;
        };
        *p = false;
        loop {
            if s.parked_now.get(idx).copied().unwrap_or(true) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.kick_vcpu(id);
            s = self
                .cv
                .wait_timeout(s, Duration::from_millis(1))
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Knocks vCPU `id`'s thread out of KVM_RUN, if it runs.
    fn kick_vcpu(&self, id: u32) {
        let Some(tid) = self.tids.get(id as usize).map(|t| t.load(Ordering::SeqCst)) else {
            return;
        };
        if tid == 0 {
            return;
        }
        // SAFETY: tgkill with this process's id and one of its own
        // threads' ids; vCPU threads live until the VM ends, so the id
        // names no other thread. The signal's handler does nothing.
        let r = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, kick_signal()) };
        if r != 0 {
            debug!("cannot kick vCPU {id}: {}", std::io::Error::last_os_error());
        }
    }

    /// Records the calling thread as vCPU `id`'s.
    fn register_thread(&self, id: u32) {
        if let Some(t) = self.tids.get(id as usize) {
            // SAFETY: gettid has no arguments and cannot fail.
            let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
            t.store(tid, Ordering::SeqCst);
        }
    }
}

devices::counters!(
    /// What the vCPUs exited for, under Firecracker's metric names (all
    /// vCPUs together).
    VcpuMetrics {
        /// Port reads.
        exit_io_in,
        /// Port writes.
        exit_io_out,
        /// MMIO reads.
        exit_mmio_read,
        /// MMIO writes.
        exit_mmio_write,
        /// Exits that ended the VM other than by a guest reset or power-off.
        failures,
    }
);

/// One vCPU, owned by its thread once started.
pub struct Vcpu {
    id: u32,
    fd: VcpuFd,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    mem: GuestMemoryMmap,
    exit: Arc<ExitState>,
    control: Arc<VcpuControl>,
    /// Told once KVM_RUN has returned for the first time.
    first_exit: Option<Sender<()>>,
    stats: Arc<VcpuMetrics>,
}

/// What the run loop does after an exit whose data borrows the vCPU.
enum Next {
    Continue,
    PortIo,
    InternalError(u32),
    Exit(ExitReason),
}

impl Vcpu {
    /// Wraps a created vCPU fd.
    pub fn new(
        id: u32,
        fd: VcpuFd,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        mem: GuestMemoryMmap,
        exit: Arc<ExitState>,
        control: Arc<VcpuControl>,
    ) -> Self {
        Vcpu {
            id,
            fd,
            pio,
            mmio,
            mem,
            exit,
            control,
            first_exit: None,
            stats: Arc::default(),
        }
    }

    /// Counts this vCPU's exits in `stats` (shared by the VM's vCPUs).
    pub fn count_exits_in(&mut self, stats: Arc<VcpuMetrics>) {
        self.stats = stats;
    }

    /// Sends on `tx` once this vCPU's first KVM_RUN has returned, that is
    /// once it has entered the guest; dropped unsent if it never does.
    pub fn notify_first_exit(&mut self, tx: Sender<()>) {
        self.first_exit = Some(tx);
    }

    /// Sets the vCPU's architectural state; the boot vCPU also gets the
    /// kernel's entry state.
    pub fn configure(
        &self,
        setup: &arch::VcpuSetup,
        vcpus: u32,
        boot: Option<&arch::KernelEntry>,
    ) -> Result<()> {
        Ok(arch::configure_vcpu(&self.fd, self.id, vcpus, setup, boot)?)
    }

    /// Starts the vCPU on its own thread, under `filter`.
    pub fn start(self, filter: &ThreadFilter) -> Result<JoinHandle<()>> {
        install_kick_handler();
        // Firecracker's thread names: Kata finds a VMM's vCPU threads by
        // them (to move them into the sandbox's cgroup).
        Ok(crate::seccomp::spawn(
            format!("fc_vcpu {}", self.id),
            filter.clone(),
            move || self.run(),
        )?)
    }

    fn run(mut self) {
        self.control.register_thread(self.id);
        while !self.exit.stopping() {
            self.control.park_if_paused(self.id, &self.exit);
            if self.exit.stopping() {
                break;
            }
            let result = self.fd.run();
            if let Some(tx) = self.first_exit.take() {
                let _ = tx.send(());
            }
            let next = match result {
                Ok(VcpuExit::IoIn(..)) => {
                    self.stats.exit_io_in.inc();
                    Next::PortIo
                }
                Ok(VcpuExit::IoOut(..)) => {
                    self.stats.exit_io_out.inc();
                    Next::PortIo
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.stats.exit_mmio_read.inc();
                    if !self.mmio.read(addr, data) {
                        debug!("vCPU {}: unclaimed MMIO read at {addr:#x}", self.id);
                        data.fill(0xff);
                    }
                    Next::Continue
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.stats.exit_mmio_write.inc();
                    if !self.mmio.write(addr, data) {
                        debug!("vCPU {}: unclaimed MMIO write at {addr:#x}", self.id);
                    }
                    Next::Continue
                }
                Ok(VcpuExit::Shutdown) => Next::Exit(ExitReason::TripleFault {
                    cpu: self.id,
                    rip: arch::program_counter(&self.fd),
                }),
                Ok(VcpuExit::FailEntry(reason, _)) => Next::Exit(ExitReason::FailEntry {
                    cpu: self.id,
                    reason,
                }),
                Ok(VcpuExit::InternalError) => {
                    // SAFETY: the exit reason is KVM_EXIT_INTERNAL_ERROR, so
                    // `internal` is the union member KVM filled in.
                    let suberror =
                        unsafe { self.fd.get_kvm_run().__bindgen_anon_1.internal }.suberror;
                    Next::InternalError(suberror)
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => Next::Exit(match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => ExitReason::PowerOff,
                    KVM_SYSTEM_EVENT_RESET => ExitReason::Reset,
                    KVM_SYSTEM_EVENT_CRASH => ExitReason::GuestCrash { cpu: self.id },
                    other => ExitReason::UnhandledExit {
                        cpu: self.id,
                        what: format!("system event {other}"),
                    },
                }),
                Ok(VcpuExit::Intr) => Next::Continue,
                Ok(other) => Next::Exit(ExitReason::UnhandledExit {
                    cpu: self.id,
                    what: format!("{other:?}"),
                }),
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Next::Continue,
                Err(e) => Next::Exit(ExitReason::VmmError(format!(
                    "KVM_RUN on vCPU {} failed: {e}",
                    self.id
                ))),
            };
            match next {
                Next::Continue => {}
                Next::PortIo => self.port_io(),
                Next::InternalError(suberror) => {
                    self.stats.failures.inc();
                    let reason = self.internal_error(suberror);
                    self.exit.request(reason);
                }
                Next::Exit(reason) => {
                    if !matches!(reason, ExitReason::Reset | ExitReason::PowerOff) {
                        self.stats.failures.inc();
                    }
                    self.exit.request(reason)
                }
            }
        }
    }

    /// Dispatches a port I/O exit, one access of `size` bytes per repetition
    /// so string I/O (`rep outsb`) reaches the device byte by byte.
    fn port_io(&mut self) {
        let run: &mut kvm_run = self.fd.get_kvm_run();
        // SAFETY: the exit reason is KVM_EXIT_IO, so `io` is the union member
        // KVM filled in.
        let io = unsafe { run.__bindgen_anon_1.io };
        let size = usize::from(io.size);
        let len = size * io.count as usize;
        if size == 0 {
            return;
        }
        let base = run as *mut kvm_run as *mut u8;
        // SAFETY: KVM puts `count * size` bytes of port data at `data_offset`
        // inside the kvm_run mapping, which lives as long as the vCPU fd that
        // we borrow mutably here.
        let data =
            unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
        for access in data.chunks_exact_mut(size) {
            if u32::from(io.direction) == KVM_EXIT_IO_IN {
                if !self.pio.read(u64::from(io.port), access) {
                    access.fill(0xff);
                }
            } else {
                self.pio.write(u64::from(io.port), access);
            }
        }
    }

    /// Describes an internal error with the faulting instruction's
    /// address and bytes.
    fn internal_error(&mut self, suberror: u32) -> ExitReason {
        let insn = arch::faulting_instruction(&mut self.fd, &self.mem);
        ExitReason::InternalError {
            cpu: self.id,
            suberror,
            rip: arch::program_counter(&self.fd),
            insn,
        }
    }
}

/// Signal used to knock a vCPU thread out of KVM_RUN.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_signal_handler(kick_signal(), handle_kick) {
            log::error!("cannot install the vCPU kick handler: {e}");
        }
    });
}

/// Interrupts KVM_RUN on a vCPU thread so it sees the stop request.
pub fn kick(thread: &JoinHandle<()>) {
    if thread.is_finished() {
        return;
    }
    if let Err(e) = thread.kill(kick_signal()) {
        debug!("cannot kick a vCPU thread: {e}");
    }
}
