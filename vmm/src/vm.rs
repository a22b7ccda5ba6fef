//! A running microVM: KVM setup, guest memory, devices, vCPU threads, and
//! the handle a user of the library holds.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch::layout::BOOT_TIMER_ADDR;
use arch::{Placement, Window, PLATFORM};
use devices::legacy::{AcpiPm, BootTimer, Ged, GedEvent, Rtc, Serial, SerialInputEvents, I8042};
use devices::virtio::block::Block;
use devices::virtio::console::Console;
use devices::virtio::net::Net;
use devices::{Bus, BusDevice, EventFdTrigger};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
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
use crate::seccomp::{ThreadFilter, ThreadKind};
use crate::vcpu::{kick, Vcpu, VcpuControl};

/// Size of the boot timer's MMIO window.
const BOOT_TIMER_LEN: u64 = 0x1000;
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
    i8042: Option<Arc<Mutex<Keyboard>>>,
    ged: Option<Arc<Mutex<EventDevice>>>,
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
        let Some(i8042) = &self.shared.i8042 else {
            return Err(ControlError::Keyboard(format!(
                "{} has no keyboard controller",
                arch::ARCH_NAME
            )));
        };
        devices::bus::lock(i8042)
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
        let Some(ged) = &self.shared.ged else {
            return Err(ControlError::PowerButton(format!(
                "{} has no ACPI power button",
                arch::ARCH_NAME
            )));
        };
        devices::bus::lock(ged)
            .notify(GedEvent::PowerButton)
            .map_err(|e| ControlError::PowerButton(e.to_string()))
    }

    /// True if the guest has bound a driver to the power button's
    /// device (on x86, the GED's IOAPIC pin is unmasked).
    pub fn guest_listens_to_power_button(&self) -> bool {
        match (&self.shared.ged, self.shared.vm_fd.upgrade()) {
            (Some(_), Some(vm_fd)) => arch::guest_listens_to_power_button(&vm_fd),
            _ => false,
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
        let taken = || {
            self.shared
                .ged
                .as_ref()
                .map_or(0, |g| devices::bus::lock(g).taken())
        };
        let before = taken();
        self.press_power_button()?;
        let deadline = Instant::now() + ack;
        while Instant::now() < deadline && !self.shared.exit.stopping() {
            if taken() > before {
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
    // Before `_vm_fd`: fields drop in order, and the chipset's helper
    // thread must be done before the VM fd closes.
    chipset: arch::Chipset,
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
        arch::check_kvm(&kvm)?;
        let max_vcpus = arch::max_vcpus(&kvm);
        let host_mib = host_memory_mib().unwrap_or(u64::MAX);
        config.validate(max_vcpus, host_mib)?;
        let vcpu_filter = ThreadFilter::new(ThreadKind::Vcpu, config.seccomp)?;
        let events_filter = ThreadFilter::new(ThreadKind::EventLoop, config.seccomp)?;
        let vm_fd = arch::create_vm(&kvm)?;

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
        let mut chipset = built.chipset;
        chipset.vcpu0_entered(&vm_fd, entered);
        let vm_fd = Arc::new(vm_fd);
        info!(
            "started {} vCPU(s), {memory_mib} MiB, {:?} in {:?}",
            threads.len(),
            built.entry,
            started.elapsed()
        );
        Ok(Vm {
            chipset,
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

    /// Everything after guest memory registration: vCPUs and the in-kernel
    /// interrupt controller, devices, the kernel and what it reads at
    /// entry, and configured (not yet running) vCPUs.
    fn build(
        kvm: &Kvm,
        vm_fd: &VmFd,
        mem: &GuestMemoryMmap,
        config: VmConfig,
        started: Instant,
    ) -> Result<Built> {
        // Devices come after: their irqfds need the interrupt controller.
        let mut chipset = arch::create_chipset(kvm, vm_fd, config.vcpus)?;

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

        // Platform devices, where the architecture puts them.
        let mut buses = Buses::default();
        let buffer_empty = new_eventfd()?;
        let serial = Arc::new(Mutex::new(Serial::new(
            irq_eventfd(vm_fd, PLATFORM.serial)?,
            SerialInputEvents::new(clone_eventfd(&buffer_empty)?),
            Box::new(out.clone()),
        )));
        buses.insert(serial.clone(), PLATFORM.serial)?;
        let i8042 = match PLATFORM.i8042 {
            Some(at) => {
                let i8042 = Arc::new(Mutex::new(I8042::new(
                    ResetTrigger(exit.clone()),
                    EventFdTrigger::new(irq_eventfd(vm_fd, at)?),
                )));
                buses.insert(i8042.clone(), at)?;
                Some(i8042)
            }
            None => None,
        };
        // ACPI: the FADT's sleep and reset registers, and the GED that
        // carries the power button.
        if let Some(at) = PLATFORM.acpi_pm {
            let acpi_pm = AcpiPm::new(PowerOffTrigger(exit.clone()), ResetTrigger(exit.clone()));
            buses.insert(Arc::new(Mutex::new(acpi_pm)), at)?;
        }
        let ged = match PLATFORM.ged {
            Some(at) => {
                let ged = Arc::new(Mutex::new(Ged::new(EventFdTrigger::new(irq_eventfd(
                    vm_fd, at,
                )?))));
                buses.insert(ged.clone(), at)?;
                Some(ged)
            }
            None => None,
        };
        if let Some(at) = PLATFORM.rtc {
            buses.insert(Arc::new(Mutex::new(Rtc::new())), at)?;
        }
        buses
            .mmio
            .insert(
                Arc::new(Mutex::new(BootTimer::new(started, boot_time_us.clone()))),
                BOOT_TIMER_ADDR,
                BOOT_TIMER_LEN,
            )
            .map_err(|e| Error::Device(e.to_string()))?;
        let Buses { pio, mut mmio } = buses;

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

        let loaded = crate::boot::load(mem, &config.kernel, config.initrd.as_deref(), &cmdline)?;
        // The vCPUs as late as the platform allows (x86: here; aarch64:
        // with the GIC), right before they are configured.
        let vcpu_fds = arch::create_vcpus(vm_fd, &mut chipset, config.vcpus)?;
        let ram = crate::boot::mem_regions(mem);
        let entry = arch::configure_boot(
            mem,
            &arch::BootConfig {
                kernel: &loaded.kernel,
                cmdline: &cmdline,
                initrd: loaded.initrd,
                ram: &ram,
                vcpus: &vcpu_fds,
                virtio: &virtio,
                chipset: &chipset,
            },
        )
        .map_err(crate::error::BootError::from)?;

        // vCPUs: all configured before any runs.
        let setup = arch::VcpuSetup::new(kvm)?;
        let control = Arc::new(VcpuControl::default());
        let mut vcpus = Vec::with_capacity(vcpu_fds.len());
        for (id, fd) in (0..).zip(vcpu_fds) {
            let vcpu = Vcpu::new(
                id,
                fd,
                pio.clone(),
                mmio.clone(),
                mem.clone(),
                exit.clone(),
                control.clone(),
            );
            vcpu.configure(&setup, config.vcpus, (id == 0).then_some(&entry))?;
            vcpus.push(vcpu);
        }
        Ok(Built {
            chipset,
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
        // The event loop's thread and the chipset's helper end on their own
        // once asked: wait for both at once, not one after the other.
        self.events.request_stop();
        self.chipset.settle();
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

/// The port-I/O and MMIO buses the vCPUs dispatch to.
#[derive(Default)]
struct Buses {
    pio: Bus,
    mmio: Bus,
}

impl Buses {
    /// Puts `device` where `at` says.
    fn insert(&mut self, device: Arc<Mutex<dyn BusDevice>>, at: Placement) -> Result<()> {
        let (bus, base) = match at.window {
            Window::Pio(port) => (&mut self.pio, port),
            Window::Mmio(addr) => (&mut self.mmio, addr),
        };
        bus.insert(device, base, at.len)
            .map_err(|e| Error::Device(e.to_string()))
    }
}

/// An eventfd wired to the interrupt of a device placed at `at`.
fn irq_eventfd(vm_fd: &VmFd, at: Placement) -> Result<EventFd> {
    let evt = new_eventfd()?;
    if let Some(irq) = at.irq {
        vm_fd
            .register_irqfd(&evt, irq)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
    }
    Ok(evt)
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
    chipset: arch::Chipset,
    exit: Arc<ExitState>,
    control: Arc<VcpuControl>,
    i8042: Option<Arc<Mutex<Keyboard>>>,
    ged: Option<Arc<Mutex<EventDevice>>>,
    boot_time_us: Arc<AtomicU64>,
    vcpus: Vec<Vcpu>,
    subscribers: Vec<Subscriber>,
    entry: arch::KernelEntry,
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
