//! A running microVM: KVM setup, guest memory, devices, vCPU threads, and
//! the handle a user of the library holds.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch::layout::{
    ACPI_PM_LEN, ACPI_PM_PORT, BOOT_TIMER_ADDR, GED_IRQ, GED_LEN, GED_PORT, KVM_IDENTITY_MAP_ADDR,
    KVM_TSS_ADDR, MAX_VCPUS,
};
use devices::legacy::{
    AcpiPm, BootTimer, Ged, GedEvent, Serial, SerialInputEvents, COM1_IRQ, COM1_PORT, I8042,
    I8042_LEN, I8042_PORT, KBD_IRQ,
};
use devices::virtio::block::Block;
use devices::virtio::console::Console;
use devices::virtio::net::Net;
use devices::{Bus, EventFdTrigger};
use kvm_bindings::{kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VmFd};
use log::info;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{
    host_memory_mib, ConsoleKind, SerialInput as InputCfg, SerialOutput, VmConfig,
};
use crate::device_manager::{DeviceManager, SharedWriter};
use crate::error::{ConfigError, Error, Result};
use crate::events::{EventLoop, SerialInput, Subscriber};
use crate::exit::{ExitReason, ExitState, PowerOffTrigger, ResetTrigger};
use crate::pit::Pit;
use crate::seccomp::{ThreadFilter, ThreadKind};
use crate::vcpu::{kick, Vcpu, VcpuControl};

/// Size of the boot timer's MMIO window.
const BOOT_TIMER_LEN: u64 = 0x1000;
/// Width of the 8250's register window.
const SERIAL_LEN: u64 = 8;
/// How often a stopping VM re-kicks vCPUs still inside KVM_RUN.
const KICK_INTERVAL: Duration = Duration::from_millis(5);

/// How long a pause may take before it is reported as failed.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

type Keyboard = I8042<ResetTrigger, EventFdTrigger>;
type EventDevice = Ged<EventFdTrigger>;

/// How often `request_shutdown` looks whether the guest took the power
/// button event.
const ACK_POLL: Duration = Duration::from_millis(5);

/// What `VmController::request_shutdown` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// The guest's ACPI took the power button event.
    PowerButton,
    /// The guest did not take the power button event in time, so it got
    /// Ctrl-Alt-Del (kernels without ACPI, or `acpi=off`).
    CtrlAltDel,
}

/// What the VM's threads and its controllers share.
struct Shared {
    vm_fd: std::sync::Weak<VmFd>,
    exit: Arc<ExitState>,
    control: Arc<VcpuControl>,
    i8042: Arc<Mutex<Keyboard>>,
    ged: Arc<Mutex<EventDevice>>,
    vcpus: Mutex<Vec<JoinHandle<()>>>,
    boot_time_us: Arc<AtomicU64>,
    started: Instant,
}

/// Controls a running VM from any thread: stop, pause, resume, Ctrl-Alt-Del.
/// None of these waits on a vCPU for longer than the pause timeout.
#[derive(Clone)]
pub struct VmController {
    shared: Arc<Shared>,
}

/// Errors of [`VmController`] operations.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// The VM has ended or is ending.
    #[error("the VM is not running")]
    NotRunning,
    /// The vCPUs did not stop in time.
    #[error("the vCPUs did not pause within {0:?}")]
    PauseTimeout(Duration),
    /// The guest does not read its keyboard.
    #[error("cannot send Ctrl-Alt-Del: {0}")]
    Keyboard(String),
    /// The power button's interrupt could not be raised.
    #[error("cannot press the power button: {0}")]
    PowerButton(String),
}

impl VmController {
    /// Asks the VM to stop; `Vm::wait` then returns [`ExitReason::Stopped`]
    /// unless the guest ended first.
    pub fn stop(&self) {
        self.shared.exit.request(ExitReason::Stopped);
    }

    /// Stops the vCPUs between instructions; devices keep their state.
    pub fn pause(&self) -> std::result::Result<(), ControlError> {
        if self.shared.exit.stopping() {
            return Err(ControlError::NotRunning);
        }
        let threads = devices::bus::lock(&self.shared.vcpus);
        if self.shared.control.pause(&threads, PAUSE_TIMEOUT) {
            Ok(())
        } else {
            Err(ControlError::PauseTimeout(PAUSE_TIMEOUT))
        }
    }

    /// Lets paused vCPUs run again.
    pub fn resume(&self) -> std::result::Result<(), ControlError> {
        if self.shared.exit.stopping() {
            return Err(ControlError::NotRunning);
        }
        self.shared.control.resume();
        Ok(())
    }

    /// True while paused.
    pub fn is_paused(&self) -> bool {
        self.shared.control.paused()
    }

    /// True once the VM has ended or is ending.
    pub fn has_ended(&self) -> bool {
        self.shared.exit.stopping()
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard (Linux then reboots,
    /// or runs its init's shutdown).
    pub fn send_ctrl_alt_del(&self) -> std::result::Result<(), ControlError> {
        if self.shared.exit.stopping() {
            return Err(ControlError::NotRunning);
        }
        devices::bus::lock(&self.shared.i8042)
            .trigger_ctrl_alt_del()
            .map_err(ControlError::Keyboard)
    }

    /// Presses the ACPI power button: a guest with ACPI and something
    /// that acts on the button (systemd-logind, acpid) shuts down and
    /// powers off; the VM then ends with [`ExitReason::PowerOff`].
    pub fn press_power_button(&self) -> std::result::Result<(), ControlError> {
        if self.shared.exit.stopping() {
            return Err(ControlError::NotRunning);
        }
        devices::bus::lock(&self.shared.ged)
            .notify(GedEvent::PowerButton)
            .map_err(|e| ControlError::PowerButton(e.to_string()))
    }

    /// True if the guest has bound a driver to the GED, the power
    /// button's path (its IOAPIC pin is unmasked). If the interrupt
    /// controller cannot be read, assume it might have.
    pub fn guest_listens_to_power_button(&self) -> bool {
        let Some(vm_fd) = self.shared.vm_fd.upgrade() else {
            return false;
        };
        let mut chip = kvm_bindings::kvm_irqchip {
            chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        match vm_fd.get_irqchip(&mut chip) {
            // SAFETY: KVM filled the IOAPIC member of the union, the one
            // `chip_id` asked for.
            Ok(()) => arch::acpi::ged_listening(unsafe { &chip.chip.ioapic }),
            Err(e) => {
                log::warn!("cannot read the IOAPIC to see whether the guest has ACPI: {e}");
                true
            }
        }
    }

    /// Asks the guest to shut down the way it understands. A guest whose
    /// ACPI listens to the power button (see
    /// [`Self::guest_listens_to_power_button`]) gets the button, and
    /// Ctrl-Alt-Del as well if it has not taken the event within `ack` (a
    /// guest too busy to answer); any other guest (no ACPI, `acpi=off`)
    /// gets Ctrl-Alt-Del at once. Returns which it came to.
    pub fn request_shutdown(
        &self,
        ack: Duration,
    ) -> std::result::Result<ShutdownSignal, ControlError> {
        if self.shared.exit.stopping() {
            return Err(ControlError::NotRunning);
        }
        if !self.guest_listens_to_power_button() {
            self.send_ctrl_alt_del()?;
            return Ok(ShutdownSignal::CtrlAltDel);
        }
        let before = devices::bus::lock(&self.shared.ged).taken();
        self.press_power_button()?;
        let deadline = Instant::now() + ack;
        while Instant::now() < deadline && !self.shared.exit.stopping() {
            if devices::bus::lock(&self.shared.ged).taken() > before {
                return Ok(ShutdownSignal::PowerButton);
            }
            std::thread::sleep(ACK_POLL);
        }
        if self.shared.exit.stopping() {
            return Ok(ShutdownSignal::PowerButton);
        }
        self.send_ctrl_alt_del()?;
        Ok(ShutdownSignal::CtrlAltDel)
    }

    /// Time from VM creation to the guest's boot-timer write, if it wrote.
    pub fn boot_time(&self) -> Option<Duration> {
        match self.shared.boot_time_us.load(Ordering::SeqCst) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Time since the VM was created.
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }
}

/// A running microVM.
///
/// ```no_run
/// use vmm::{Vm, VmConfig};
///
/// let mut config = VmConfig::new("vmlinux", 2, 256);
/// config.cmdline = "console=ttyS0 reboot=k panic=1".into();
/// let mut vm = Vm::start(config).expect("boot");
/// let reason = vm.wait();
/// println!("guest ended: {reason}; boot time {:?}", vm.boot_time());
/// ```
pub struct Vm {
    // Before `_vm_fd`: fields drop in order, and the PIT's helper thread
    // must be done before the VM fd closes.
    pit: Pit,
    // Kept open for the VM's lifetime: vCPU fds and irqfds refer to it.
    // Controllers hold a weak reference, so none keeps it open longer.
    _vm_fd: Arc<VmFd>,
    shared: Arc<Shared>,
    events: EventLoop,
}

impl Vm {
    /// Validates `config`, builds the VM and starts its vCPUs.
    pub fn start(config: VmConfig) -> Result<Vm> {
        let started = Instant::now();
        let kvm = Kvm::new().map_err(Error::KvmOpen)?;
        for (cap, name) in [
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
        ] {
            if !kvm.check_extension(cap) {
                return Err(Error::KvmCap(name));
            }
        }
        let max_vcpus = (kvm.get_max_vcpus() as u32).min(MAX_VCPUS);
        let host_mib = host_memory_mib().unwrap_or(u64::MAX);
        config.validate(max_vcpus, host_mib)?;
        let vcpu_filter = ThreadFilter::new(ThreadKind::Vcpu, config.seccomp)?;
        let events_filter = ThreadFilter::new(ThreadKind::EventLoop, config.seccomp)?;

        let vm_fd = kvm
            .create_vm()
            .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDR as usize)
            .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
        if kvm.check_extension(Cap::SetIdentityMapAddr) {
            vm_fd
                .set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
                .map_err(|e| Error::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        }

        // Guest memory first, while the VM's memslot SRCU domain is idle:
        // KVM_SET_USER_MEMORY_REGION waits for an expedited grace period of
        // that domain, which takes microseconds on an idle domain. Creating
        // the irqchip and the PIT registers their devices on KVM's I/O
        // buses, and each such registration starts a normal grace period of
        // the same domain, paced by one-jiffy timers; a memory registration
        // made after them (or beside them, on another thread) waits for that
        // one to end first: 2-8 ms here (`perf record -a -e
        // workqueue:workqueue_queue_work -e timer:timer_start -g`).
        let memory_mib = config.memory_mib;
        let mem = map_memory(memory_mib)?;
        register_memory(&vm_fd, &mem, memory_mib)?;
        let mut built = Self::build(&kvm, &vm_fd, &mem, config, started)?;

        let events = EventLoop::start(built.subscribers, events_filter)?;
        let (entered_tx, entered) = std::sync::mpsc::channel();
        if let Some(boot_cpu) = built.vcpus.first_mut() {
            boot_cpu.notify_first_exit(entered_tx);
        }
        let mut threads = Vec::with_capacity(built.vcpus.len());
        for vcpu in built.vcpus {
            match vcpu.start(&vcpu_filter) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    built.exit.request(ExitReason::VmmError(e.to_string()));
                    stop_vcpus(&threads);
                    return Err(e);
                }
            }
        }
        let mut pit = built.pit;
        pit.start_reinject_off(&vm_fd, entered);
        let vm_fd = Arc::new(vm_fd);
        info!(
            "started {} vCPU(s), {memory_mib} MiB, {:?} entry at {:#x} in {:?}",
            threads.len(),
            built.entry.mode,
            built.entry.entry,
            started.elapsed()
        );
        Ok(Vm {
            pit,
            shared: Arc::new(Shared {
                vm_fd: Arc::downgrade(&vm_fd),
                exit: built.exit,
                control: built.control,
                i8042: built.i8042,
                ged: built.ged,
                vcpus: Mutex::new(threads),
                boot_time_us: built.boot_time_us,
                started,
            }),
            _vm_fd: vm_fd,
            events,
        })
    }

    /// Everything after guest memory registration: irqchip, PIT, devices,
    /// kernel and configured (not yet running) vCPUs.
    fn build(
        kvm: &Kvm,
        vm_fd: &VmFd,
        mem: &GuestMemoryMmap,
        config: VmConfig,
        started: Instant,
    ) -> Result<Built> {
        vm_fd
            .create_irq_chip()
            .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
        let pit = Pit::create(kvm, vm_fd)?;

        // Blocking: `wait` sleeps in read() until a reason is recorded.
        let exit_evt = EventFd::new(0).map_err(|e| Error::Io("cannot create an eventfd", e))?;
        let exit = Arc::new(ExitState::new(exit_evt));
        let boot_time_us = Arc::new(AtomicU64::new(0));

        // The console output is shared by the UART and virtio-console; the
        // input goes to whichever carries the console.
        let out = SharedWriter(Arc::new(Mutex::new(serial_writer(config.serial_out)?)));
        let input = match config.serial_in {
            InputCfg::Stdin => Some(
                std::io::stdin()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| Error::Io("cannot use stdin", e))?,
            ),
            InputCfg::Fd(fd) => Some(fd),
            InputCfg::None => None,
        };
        let (serial_input, console_input) = match config.console {
            ConsoleKind::Serial => (input, None),
            ConsoleKind::Virtio => (None, input),
        };

        // Legacy devices.
        let serial_irq = new_eventfd()?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let buffer_empty = new_eventfd()?;
        let serial = Arc::new(Mutex::new(Serial::new(
            serial_irq,
            SerialInputEvents::new(clone_eventfd(&buffer_empty)?),
            Box::new(out.clone()),
        )));
        let mut pio = Bus::new();
        pio.insert(serial.clone(), COM1_PORT, SERIAL_LEN)
            .map_err(|e| Error::Device(e.to_string()))?;
        let kbd_irq = new_eventfd()?;
        vm_fd
            .register_irqfd(&kbd_irq, KBD_IRQ)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let i8042 = Arc::new(Mutex::new(I8042::new(
            ResetTrigger(exit.clone()),
            EventFdTrigger::new(kbd_irq),
        )));
        pio.insert(i8042.clone(), I8042_PORT, I8042_LEN)
            .map_err(|e| Error::Device(e.to_string()))?;
        // ACPI: the FADT's sleep and reset registers, and the GED that
        // carries the power button.
        let acpi_pm = AcpiPm::new(PowerOffTrigger(exit.clone()), ResetTrigger(exit.clone()));
        pio.insert(Arc::new(Mutex::new(acpi_pm)), ACPI_PM_PORT, ACPI_PM_LEN)
            .map_err(|e| Error::Device(e.to_string()))?;
        let ged_irq = new_eventfd()?;
        vm_fd
            .register_irqfd(&ged_irq, GED_IRQ)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        let ged = Arc::new(Mutex::new(Ged::new(EventFdTrigger::new(ged_irq))));
        pio.insert(ged.clone(), GED_PORT, GED_LEN)
            .map_err(|e| Error::Device(e.to_string()))?;
        let mut mmio = Bus::new();
        mmio.insert(
            Arc::new(Mutex::new(BootTimer::new(started, boot_time_us.clone()))),
            BOOT_TIMER_ADDR,
            BOOT_TIMER_LEN,
        )
        .map_err(|e| Error::Device(e.to_string()))?;

        // virtio devices, in the order the guest enumerates them.
        let mut dm = DeviceManager::new(vm_fd, mem.clone());
        for drive in &config.drives {
            let mut slot = dm.slot(1)?;
            let evt = slot.queue_evts.remove(0);
            let block = Block::new(drive, evt, slot.signals.clone())?;
            dm.add(&mut mmio, slot, block)?;
        }
        for nic in &config.nets {
            let mut slot = dm.slot(2)?;
            let evts = two(std::mem::take(&mut slot.queue_evts))?;
            let net = Net::new(nic, evts, slot.signals.clone())?;
            dm.add(&mut mmio, slot, net)?;
        }
        if config.console == ConsoleKind::Virtio {
            let mut slot = dm.slot(2)?;
            let evts = two(std::mem::take(&mut slot.queue_evts))?;
            let console = Console::new(
                Box::new(out.clone()),
                console_input,
                evts,
                slot.signals.clone(),
            );
            dm.add(&mut mmio, slot, console)?;
        }
        let cmdline = format!("{}{}", config.cmdline, dm.cmdline);
        let virtio = std::mem::take(&mut dm.virtio);
        let mut subscribers = std::mem::take(&mut dm.subscribers);
        if let Some(fd) = serial_input {
            subscribers.push(Arc::new(Mutex::new(SerialInput::new(
                fd,
                serial,
                buffer_empty,
            ))));
        }
        let (pio, mmio) = (Arc::new(pio), Arc::new(mmio));

        let entry = crate::boot::load(
            mem,
            &config.kernel,
            config.initrd.as_deref(),
            &cmdline,
            config.vcpus,
            &virtio,
        )?;

        // vCPUs: all created and configured before any runs.
        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let tsc_deadline = kvm.check_extension(Cap::TscDeadlineTimer);
        let control = Arc::new(VcpuControl::default());
        let mut vcpus = Vec::with_capacity(config.vcpus as usize);
        for id in 0..config.vcpus {
            let fd = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
            let vcpu = Vcpu::new(
                id,
                fd,
                pio.clone(),
                mmio.clone(),
                mem.clone(),
                exit.clone(),
                control.clone(),
            );
            vcpu.configure(
                &supported,
                config.vcpus,
                tsc_deadline,
                (id == 0).then_some(&entry),
            )?;
            vcpus.push(vcpu);
        }
        Ok(Built {
            pit,
            exit,
            control,
            i8042,
            ged,
            boot_time_us,
            vcpus,
            subscribers,
            entry,
        })
    }

    /// A handle that controls this VM from other threads.
    pub fn controller(&self) -> VmController {
        VmController {
            shared: self.shared.clone(),
        }
    }

    /// Asks the VM to stop.
    pub fn stop(&self) {
        self.controller().stop();
    }

    /// Time from VM creation to the guest's boot-timer write, if it wrote.
    pub fn boot_time(&self) -> Option<Duration> {
        self.controller().boot_time()
    }

    /// Time since the VM was created.
    pub fn uptime(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Blocks until the VM ends, stops every thread and returns why.
    pub fn wait(&mut self) -> ExitReason {
        let exit = &self.shared.exit;
        while !exit.stopping() {
            // A blocking read: the exit eventfd is written exactly when a
            // reason is recorded.
            let _ = exit.event().read();
        }
        // Parked vCPUs wake up, see the stop and leave.
        self.shared.control.resume();
        let mut threads = devices::bus::lock(&self.shared.vcpus);
        stop_vcpus(&threads);
        for t in threads.drain(..) {
            let _ = t.join();
        }
        drop(threads);
        // The event loop's thread and the PIT's helper end on their own
        // once asked: wait for both at once, not one after the other.
        self.events.request_stop();
        self.pit.settle();
        self.events.stop();
        exit.reason()
            .unwrap_or_else(|| ExitReason::VmmError("VM ended without a reason".into()))
    }
}

impl Drop for Vm {
    /// A VM dropped without `wait` is stopped, so no vCPU thread outlives
    /// its handle.
    fn drop(&mut self) {
        if !devices::bus::lock(&self.shared.vcpus).is_empty() {
            self.shared.exit.request(ExitReason::Stopped);
            self.wait();
        }
    }
}

/// Kicks vCPU threads until every one has left its run loop.
fn stop_vcpus(threads: &[JoinHandle<()>]) {
    // A kicked vCPU leaves within about a millisecond; poll finely and
    // kick again only if a signal landed just before KVM_RUN.
    let mut last_kick: Option<Instant> = None;
    while threads.iter().any(|t| !t.is_finished()) {
        if last_kick.is_none_or(|k| k.elapsed() >= KICK_INTERVAL) {
            for t in threads {
                kick(t);
            }
            last_kick = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Io("cannot create an eventfd", e))
}

fn two(evts: Vec<EventFd>) -> Result<[EventFd; 2]> {
    <[EventFd; 2]>::try_from(evts).map_err(|_| Error::Device("expected two queue events".into()))
}

fn clone_eventfd(evt: &EventFd) -> Result<EventFd> {
    evt.try_clone()
        .map_err(|e| Error::Io("cannot clone an eventfd", e))
}

fn serial_writer(out: SerialOutput) -> Result<Box<dyn Write + Send>> {
    Ok(match out {
        SerialOutput::Stdout => Box::new(std::io::stdout()),
        SerialOutput::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| Error::Config(ConfigError::File("serial output", path, e)))?,
        ),
        SerialOutput::Writer(w) => w,
        SerialOutput::Sink => Box::new(std::io::sink()),
    })
}

/// What `Vm::build` hands back to `Vm::start`.
struct Built {
    pit: Pit,
    exit: Arc<ExitState>,
    control: Arc<VcpuControl>,
    i8042: Arc<Mutex<Keyboard>>,
    ged: Arc<Mutex<EventDevice>>,
    boot_time_us: Arc<AtomicU64>,
    vcpus: Vec<Vcpu>,
    subscribers: Vec<Subscriber>,
    entry: crate::boot::KernelEntry,
}

/// Maps guest RAM (not yet known to KVM).
fn map_memory(memory_mib: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = arch::ram_regions(memory_mib << 20)
        .into_iter()
        .map(|(start, len)| (start, len as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(|e| Error::Memory(memory_mib, e.to_string()))
}

/// Registers guest RAM with KVM, one slot per region.
fn register_memory(vm_fd: &VmFd, mem: &GuestMemoryMmap, memory_mib: u64) -> Result<()> {
    for (slot, region) in mem.iter().enumerate() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| Error::Memory(memory_mib, e.to_string()))?;
        let region = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: host as u64,
        };
        // SAFETY: the host range is a live mapping owned by `mem` of exactly
        // `memory_size` bytes. Only running vCPUs reach it through the slot,
        // and each holds a clone of `mem` until its thread is joined; if
        // `start` fails, no vCPU has run, and KVM's MMU notifier drops its
        // references when the mapping goes.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
    }
    Ok(())
}
