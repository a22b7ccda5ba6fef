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
use devices::legacy::{
    AcpiPm, BootTimer, Cmos, CpuEject, CpuHotplug, Ged, GedEvent, Pl061, Rtc, Serial,
    SerialInputEvents, I8042,
};
use devices::virtio::balloon::{Balloon, BalloonShared};
use devices::virtio::block::Block;
use devices::virtio::console::Console;
use devices::virtio::mem::{Mem, MemShared};
use devices::virtio::net::Net;
use devices::virtio::rng::Rng;
use devices::virtio::vsock::Vsock;
use devices::{Bus, BusDevice, EventFdTrigger};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use log::{debug, info};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::config::{
    host_memory_mib, ConsoleKind, SerialInput as InputCfg, SerialOutput, VmConfig,
};
use crate::device_manager::{DeviceManager, SharedWriter};
use crate::error::{ConfigError, Error, Result};
use crate::events::{EventLoop, SerialInput, Subscriber};
use crate::exit::{ExitReason, ExitState, PowerOffTrigger, ResetTrigger};
use crate::ram::GuestRam;
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
type KeyDevice = Pl061<EventFdTrigger>;
type HotplugDevice = CpuHotplug<VcpuEjector>;

/// Stops running a vCPU the guest has ejected.
struct VcpuEjector(Arc<VcpuControl>);

impl CpuEject for VcpuEjector {
    fn eject(&self, cpu: u32) {
        if self.0.unplug(cpu) {
            info!("vCPU {cpu} unplugged");
        } else {
            log::warn!("vCPU {cpu} unplugged, but its thread has not stopped yet");
        }
    }
}

/// vCPU hotplug: the controller the guest's ACPI reads and the GED that
/// tells it to look.
struct VcpuHotplug {
    device: Arc<Mutex<HotplugDevice>>,
    ged: Arc<Mutex<EventDevice>>,
    /// The last count asked for (the boot count until a resize).
    requested: Mutex<u32>,
}

/// A VM's vCPU counts: what was asked for and what the guest has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VcpuCounts {
    /// The count last asked for (at boot or by a resize).
    pub requested: u32,
    /// vCPUs plugged: at boot, or since, and not ejected by the guest. A
    /// vCPU asked back counts until the guest ejects it.
    pub present: u32,
    /// Plugged vCPUs whose event the guest's ACPI has not taken yet.
    pub inserting: u32,
    /// vCPUs asked back that the guest has not ejected yet.
    pub removing: u32,
    /// The most the VM can have.
    pub max: u32,
}

/// The guest's power button: the ACPI Generic Event Device (x86), or a
/// power key on a GPIO pin (aarch64, which has no ACPI here).
#[derive(Clone)]
enum PowerButton {
    Ged(Arc<Mutex<EventDevice>>),
    Key(Arc<Mutex<KeyDevice>>, u32),
}

impl PowerButton {
    fn press(&self) -> std::result::Result<(), String> {
        match self {
            PowerButton::Ged(g) => devices::bus::lock(g)
                .notify(GedEvent::PowerButton)
                .map_err(|e| e.to_string()),
            PowerButton::Key(k, pin) => {
                devices::bus::lock(k).press(*pin).map_err(|e| e.to_string())
            }
        }
    }

    /// How many button events the guest has taken so far.
    fn taken(&self) -> u64 {
        match self {
            PowerButton::Ged(g) => devices::bus::lock(g).taken(),
            PowerButton::Key(k, pin) => devices::bus::lock(k).acked(*pin),
        }
    }

    /// True if a guest driver listens to the button: the GED's interrupt
    /// pin is unmasked, or the key's GPIO interrupt is enabled.
    fn listened(&self, vm_fd: &std::sync::Weak<VmFd>) -> bool {
        match self {
            PowerButton::Ged(_) => vm_fd
                .upgrade()
                .is_some_and(|fd| arch::guest_listens_to_power_button(&fd)),
            PowerButton::Key(k, pin) => devices::bus::lock(k).listening(*pin),
        }
    }
}

/// How often `request_shutdown` looks whether the guest took the power
/// button event.
const ACK_POLL: Duration = Duration::from_millis(5);

/// What `VmController::request_shutdown` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShutdownSignal {
    /// The guest's ACPI took the power button event (or, on a platform
    /// without a keyboard, the button was pressed).
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
    power_button: Option<PowerButton>,
    hotplug: Option<VcpuHotplug>,
    balloon: Option<Arc<BalloonShared>>,
    memory_hotplug: Option<Arc<MemShared>>,
    metrics: VmMetrics,
    drives: Vec<Arc<Mutex<Block>>>,
    nets: Vec<Arc<Mutex<Net>>>,
    max_vcpus: u32,
    vcpus: Mutex<Vec<JoinHandle<()>>>,
    boot_time_us: Arc<AtomicU64>,
    started: Instant,
}

/// The counters of a running VM, for its metrics: its vCPUs' exits, and
/// each drive's and network interface's in configuration order.
#[derive(Clone, Default)]
pub struct VmMetrics {
    /// All vCPUs' exits.
    pub vcpu: Arc<crate::vcpu::VcpuMetrics>,
    /// One per drive of the configuration.
    pub blocks: Vec<Arc<devices::virtio::block::BlockMetrics>>,
    /// One per network interface of the configuration.
    pub nets: Vec<Arc<devices::virtio::net::NetMetrics>>,
    /// The entropy device's, if there is one.
    pub entropy: Option<Arc<devices::virtio::rng::EntropyMetrics>>,
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
    /// A vCPU count outside 1 to the VM's maximum.
    #[error("vcpu_count {0} is outside 1 to {1}, the most this VM was started with room for (max_vcpus)")]
    VcpuCount(u32, u32),
    /// vCPUs cannot be plugged on this platform.
    #[error("vCPUs cannot be plugged or unplugged while the guest runs on {0}")]
    NoVcpuHotplug(&'static str),
    /// The guest could not be told of a vCPU change.
    #[error("cannot notify the guest of the vCPU change: {0}")]
    Hotplug(String),
    /// No drive or network interface has that index.
    #[error("the VM has no {0} number {1}")]
    NoDevice(&'static str, usize),
    /// A drive's new image cannot be used.
    #[error("{0}")]
    Drive(String),
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

    /// Presses the power button (x86: ACPI's; aarch64: a power key on a
    /// GPIO pin): a guest with something that acts on the button
    /// (systemd-logind, acpid) shuts down and powers off; the VM then ends
    /// with [`ExitReason::PowerOff`].
    pub fn press_power_button(&self) -> std::result::Result<(), ControlError> {
        if self.shared.exit.stopping() {
            return Err(ControlError::NotRunning);
        }
        let Some(button) = &self.shared.power_button else {
            return Err(ControlError::PowerButton(format!(
                "{} has no power button",
                arch::ARCH_NAME
            )));
        };
        button.press().map_err(ControlError::PowerButton)
    }

    /// True if the guest has bound a driver to the power button (on x86,
    /// the GED's IOAPIC pin is unmasked; on aarch64, the key's GPIO
    /// interrupt is enabled).
    pub fn guest_listens_to_power_button(&self) -> bool {
        self.shared
            .power_button
            .as_ref()
            .is_some_and(|b| b.listened(&self.shared.vm_fd))
    }

    /// Asks the guest to shut down the way it understands. A guest that
    /// listens to the power button (see
    /// [`Self::guest_listens_to_power_button`]) gets the button, and
    /// Ctrl-Alt-Del as well if it has not taken the event within `ack` (a
    /// guest too busy to answer); any other guest (no ACPI, `acpi=off`)
    /// gets Ctrl-Alt-Del at once. A platform without a keyboard
    /// controller (aarch64) has only the button: it is pressed whether or
    /// not the guest listens, and the caller's deadline decides what
    /// follows. Returns which it came to.
    pub fn request_shutdown(
        &self,
        ack: Duration,
    ) -> std::result::Result<ShutdownSignal, ControlError> {
        if self.shared.exit.stopping() {
            return Err(ControlError::NotRunning);
        }
        let keyboard = self.shared.i8042.is_some();
        if keyboard && !self.guest_listens_to_power_button() {
            self.send_ctrl_alt_del()?;
            return Ok(ShutdownSignal::CtrlAltDel);
        }
        let taken = || {
            self.shared
                .power_button
                .as_ref()
                .map_or(0, PowerButton::taken)
        };
        let before = taken();
        self.press_power_button()?;
        if !keyboard {
            return Ok(ShutdownSignal::PowerButton);
        }
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

    /// Asks for `count` vCPUs while the guest runs (or is paused: the
    /// guest sees the change on resume). vCPUs up to `count` are plugged
    /// at once and the guest told through ACPI; Linux adds them as offline
    /// CPUs, which user space (a udev rule, or a write of 1 to
    /// `/sys/devices/system/cpu/cpuN/online`) brings online. vCPUs above
    /// `count` are asked back; the guest takes each offline and ejects it,
    /// and only then does it stop running. [`Self::vcpu_counts`] says how
    /// far the guest has come.
    pub fn resize_vcpus(&self, count: u32) -> std::result::Result<VcpuCounts, ControlError> {
        if self.shared.exit.stopping() {
            return Err(ControlError::NotRunning);
        }
        let Some(hp) = &self.shared.hotplug else {
            return Err(ControlError::NoVcpuHotplug(arch::ARCH_NAME));
        };
        let max = self.shared.max_vcpus;
        if count == 0 || count > max {
            return Err(ControlError::VcpuCount(count, max));
        }
        let changed = {
            let mut device = devices::bus::lock(&hp.device);
            // Threads first, so a vCPU runs by the time the guest starts it.
            for id in 0..count {
                if !device.present(id) {
                    self.shared.control.plug(id);
                }
            }
            *devices::bus::lock(&hp.requested) = count;
            device.resize(count)
        };
        if changed {
            devices::bus::lock(&hp.ged)
                .notify(GedEvent::CpuHotplug)
                .map_err(|e| ControlError::Hotplug(e.to_string()))?;
        }
        info!("vCPUs: {count} requested");
        Ok(self.vcpu_counts())
    }

    /// The hotpluggable memory's controls (virtio-mem), if the VM has it:
    /// the requested size, which the guest plugs or unplugs towards, and
    /// what it has plugged.
    pub fn memory_hotplug(&self) -> Option<Arc<MemShared>> {
        self.shared.memory_hotplug.clone()
    }

    /// The memory balloon's controls, if the VM has one: its target (which
    /// the guest is told of at once), what the guest has given, and the
    /// guest's memory statistics.
    pub fn balloon(&self) -> Option<Arc<BalloonShared>> {
        self.shared.balloon.clone()
    }

    /// The VM's counters.
    pub fn metrics(&self) -> VmMetrics {
        self.shared.metrics.clone()
    }

    /// Changes drive `index` (configuration order): a new image, whose
    /// capacity the guest is told, and new rate limits. Returns the
    /// capacity in 512-byte sectors.
    pub fn update_drive(
        &self,
        index: usize,
        path: Option<&std::path::Path>,
        limits: Option<&crate::RateLimiterConfig>,
    ) -> std::result::Result<u64, ControlError> {
        let drive = self
            .shared
            .drives
            .get(index)
            .ok_or(ControlError::NoDevice("drive", index))?;
        let mut drive = drive.lock().unwrap_or_else(|e| e.into_inner());
        drive
            .update(path, limits)
            .map_err(|e| ControlError::Drive(e.to_string()))
    }

    /// Changes the rate limits of network interface `index`.
    pub fn update_net(
        &self,
        index: usize,
        rx: Option<&crate::RateLimiterConfig>,
        tx: Option<&crate::RateLimiterConfig>,
    ) -> std::result::Result<(), ControlError> {
        let net = self
            .shared
            .nets
            .get(index)
            .ok_or(ControlError::NoDevice("network interface", index))?;
        net.lock()
            .unwrap_or_else(|e| e.into_inner())
            .update_rate_limits(rx, tx);
        Ok(())
    }

    /// The VM's vCPU counts: requested, and what the guest has.
    pub fn vcpu_counts(&self) -> VcpuCounts {
        let max = self.shared.max_vcpus;
        match &self.shared.hotplug {
            Some(hp) => {
                let requested = *devices::bus::lock(&hp.requested);
                let c = devices::bus::lock(&hp.device).counts();
                VcpuCounts {
                    requested,
                    present: c.present,
                    inserting: c.inserting,
                    removing: c.removing,
                    max,
                }
            }
            None => VcpuCounts {
                requested: max,
                present: max,
                inserting: 0,
                removing: 0,
                max,
            },
        }
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
    /// The vsock device's listening socket, removed when the VM goes.
    _vsock_socket: Option<SocketFile>,
    // Last: guest RAM is unmapped only after everything above (the event
    // loop's devices, the VM fd) is gone.
    _ram: GuestRam,
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
        // Shared from the start: virtio-mem maps memory slots on it later.
        let vm_fd = Arc::new(arch::create_vm(&kvm)?);

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
        // `ram` is declared first so that it is dropped last: every clone of
        // `mem` (devices, vCPUs) is gone before the memory is unmapped.
        let (ram, mem) = map_memory(memory_mib, config.memory_hotplug.as_ref())?;
        register_memory(&vm_fd, &mem.boot, memory_mib)?;
        debug!("start-up: VM and memory at {:?}", started.elapsed());
        let mut built = Self::build(&kvm, &vm_fd, &mem, config, started)?;
        debug!(
            "start-up: devices, kernel, vCPUs configured at {:?}",
            started.elapsed()
        );

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
        info!(
            "started {} vCPU(s) of {}, {memory_mib} MiB, {:?} in {:?}",
            built.boot_vcpus,
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
                power_button: built.power_button,
                hotplug: built.hotplug,
                balloon: built.balloon,
                memory_hotplug: built.memory_hotplug,
                metrics: built.metrics,
                drives: built.drives,
                nets: built.nets,
                max_vcpus: built.max_vcpus,
                vcpus: Mutex::new(threads),
                boot_time_us: built.boot_time_us,
                started,
            }),
            _vm_fd: vm_fd,
            events,
            _vsock_socket: built.vsock_socket,
            _ram: ram,
        })
    }

    /// Everything after guest memory registration: vCPUs and the in-kernel
    /// interrupt controller, devices, the kernel and what it reads at
    /// entry, and configured (not yet running) vCPUs.
    fn build(
        kvm: &Kvm,
        vm_fd: &Arc<VmFd>,
        memory: &Memory,
        config: VmConfig,
        started: Instant,
    ) -> Result<Built> {
        // Every vCPU the VM can have exists from the start; those beyond
        // the boot count park until plugged. KVM cannot destroy a vCPU, so
        // one made at plug time would stay anyway; made here, a plug cannot
        // fail for want of memory or a KVM limit, and the API thread needs
        // no vCPU-creating system calls.
        let (boot_vcpus, max_vcpus) = (config.vcpus, config.max_vcpus());
        // What the vCPUs are configured from (on aarch64 the chipset
        // creates them, with the template's features).
        let mut setup = arch::VcpuSetup::new(kvm)?;
        setup.set_smt(config.smt);
        if let Some(t) = &config.cpu_template {
            setup.set_template(kvm, t)?;
        }
        // Devices come after: their irqfds need the interrupt controller.
        let mut chipset = arch::create_chipset(kvm, vm_fd, max_vcpus, &setup)?;
        let control = Arc::new(VcpuControl::new(boot_vcpus, max_vcpus));

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
        let mut power_button = ged.clone().map(PowerButton::Ged);
        // vCPU hotplug: the controller, announced through the GED.
        let hotplug = match (PLATFORM.cpu_hotplug, ged) {
            (Some(at), Some(ged)) => {
                let device = Arc::new(Mutex::new(CpuHotplug::new(
                    boot_vcpus,
                    max_vcpus,
                    VcpuEjector(control.clone()),
                )));
                buses.insert(device.clone(), at)?;
                Some(VcpuHotplug {
                    device,
                    ged,
                    requested: Mutex::new(boot_vcpus),
                })
            }
            _ => None,
        };
        // Without ACPI: a GPIO controller with the power key.
        if let Some(at) = PLATFORM.gpio {
            let gpio = Arc::new(Mutex::new(Pl061::new(EventFdTrigger::new(irq_eventfd(
                vm_fd, at,
            )?))));
            buses.insert(gpio.clone(), at)?;
            power_button.get_or_insert(PowerButton::Key(gpio, PLATFORM.power_key_pin));
        }
        if let Some(at) = PLATFORM.rtc {
            buses.insert(Arc::new(Mutex::new(Rtc::new())), at)?;
        }
        if let Some(at) = PLATFORM.cmos {
            buses.insert(Arc::new(Mutex::new(Cmos::new())), at)?;
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
        let mut dm = DeviceManager::new(vm_fd, memory.all.clone());
        let mut metrics = VmMetrics::default();
        let (mut drives, mut nets) = (Vec::new(), Vec::new());
        for drive in &config.drives {
            let mut slot = dm.slot(1)?;
            let evt = slot.queue_evts.remove(0);
            let block = Block::new(drive, evt, slot.signals.clone())?;
            metrics.blocks.push(block.metrics());
            drives.push(dm.add(&mut mmio, slot, block)?);
        }
        for nic in &config.nets {
            let mut slot = dm.slot(2)?;
            let evts = two(std::mem::take(&mut slot.queue_evts))?;
            let net = Net::new(nic, evts, slot.signals.clone())?;
            metrics.nets.push(net.metrics());
            nets.push(dm.add(&mut mmio, slot, net)?);
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
        let balloon = match &config.balloon {
            Some(cfg) => {
                let mut slot = dm.slot(Balloon::MAX_QUEUES)?;
                let evts = std::mem::take(&mut slot.queue_evts);
                let balloon = Balloon::new(cfg, config.memory_mib, evts, slot.signals.clone())
                    .map_err(|e| Error::Device(format!("balloon: {e}")))?;
                let shared = balloon.shared();
                dm.add(&mut mmio, slot, balloon)?;
                Some(shared)
            }
            None => None,
        };
        let memory_hotplug = match (&config.memory_hotplug, &memory.hotplug) {
            (Some(cfg), Some(region)) => {
                let mut slot = dm.slot(1)?;
                let evt = slot.queue_evts.remove(0);
                let slots = KvmSlots::new(kvm, vm_fd, memory.boot.num_regions(), region, cfg)?;
                let device = Mem::new(
                    *cfg,
                    region.addr,
                    Box::new(slots),
                    evt,
                    slot.signals.clone(),
                )
                .map_err(|e| Error::Device(format!("memory hotplug: {e}")))?;
                let shared = device.shared();
                dm.add(&mut mmio, slot, device)?;
                Some(shared)
            }
            _ => None,
        };
        let mut vsock_socket = None;
        if let Some(cfg) = &config.vsock {
            let mut slot = dm.slot(3)?;
            let evts = std::mem::take(&mut slot.queue_evts);
            let evts: [EventFd; 3] = evts
                .try_into()
                .map_err(|_| Error::Device("vsock: three queues expected".into()))?;
            let vsock = Vsock::new(cfg, evts, slot.signals.clone())
                .map_err(|e| Error::Device(format!("vsock: {e}")))?;
            // Made: ours to remove, also if the rest of the set-up fails.
            vsock_socket = Some(SocketFile(cfg.uds_path.clone()));
            dm.add(&mut mmio, slot, vsock)?;
        }
        if let Some(limits) = &config.entropy {
            let mut slot = dm.slot(1)?;
            let evt = slot.queue_evts.remove(0);
            let rng = Rng::new(evt, slot.signals.clone(), limits)
                .map_err(|e| Error::Device(format!("entropy device: {e}")))?;
            metrics.entropy = Some(rng.metrics());
            dm.add(&mut mmio, slot, rng)?;
        }
        let mut cmdline = format!("{}{}", config.cmdline, dm.cmdline);
        if memory_hotplug.is_some() && !config.cmdline.contains("memhp_default_state=") {
            // Without it Linux leaves plugged memory offline. Movable, so
            // that the guest can unplug it again (what Firecracker's guide
            // recommends); the user's own setting wins.
            cmdline.push_str(" memhp_default_state=online_movable");
        }
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

        debug!("start-up: devices at {:?}", started.elapsed());
        let mem = &memory.boot;
        let loaded = crate::boot::load(mem, &config.kernel, config.initrd.as_deref(), &cmdline)?;
        debug!(
            "start-up: kernel and initrd loaded at {:?}",
            started.elapsed()
        );
        // The vCPUs as late as the platform allows (x86: here; aarch64:
        // with the GIC), right before they are configured.
        let vcpu_fds = arch::create_vcpus(vm_fd, &mut chipset, max_vcpus)?;
        let ram = crate::boot::mem_regions(mem);
        let entry = arch::configure_boot(
            mem,
            &arch::BootConfig {
                kernel: &loaded.kernel,
                cmdline: &cmdline,
                initrd: loaded.initrd,
                ram: &ram,
                vcpus: &vcpu_fds,
                boot_vcpus,
                virtio: &virtio,
                chipset: &chipset,
            },
        )
        .map_err(crate::error::BootError::from)?;

        // vCPUs: all configured before any runs.
        let mut vcpus = Vec::with_capacity(vcpu_fds.len());
        for (id, fd) in (0..).zip(vcpu_fds) {
            let mut vcpu = Vcpu::new(
                id,
                fd,
                pio.clone(),
                mmio.clone(),
                mem.clone(),
                exit.clone(),
                control.clone(),
            );
            vcpu.count_exits_in(metrics.vcpu.clone());
            vcpu.configure(&setup, max_vcpus, (id == 0).then_some(&entry))?;
            vcpus.push(vcpu);
        }
        Ok(Built {
            chipset,
            exit,
            control,
            i8042,
            power_button,
            hotplug,
            balloon,
            memory_hotplug,
            vsock_socket,
            metrics,
            drives,
            nets,
            boot_vcpus,
            max_vcpus,
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
        let t = Instant::now();
        // Parked vCPUs wake up, see the stop and leave.
        self.shared.control.resume();
        let mut threads = devices::bus::lock(&self.shared.vcpus);
        stop_vcpus(&threads);
        for t in threads.drain(..) {
            let _ = t.join();
        }
        drop(threads);
        debug!("stop: vCPUs joined after {:?}", t.elapsed());
        // The event loop's thread and the chipset's helper end on their own
        // once asked: wait for both at once, not one after the other.
        self.events.request_stop();
        self.chipset.settle();
        self.events.stop();
        debug!("stop: devices stopped after {:?}", t.elapsed());
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
    power_button: Option<PowerButton>,
    hotplug: Option<VcpuHotplug>,
    balloon: Option<Arc<BalloonShared>>,
    memory_hotplug: Option<Arc<MemShared>>,
    vsock_socket: Option<SocketFile>,
    metrics: VmMetrics,
    drives: Vec<Arc<Mutex<Block>>>,
    nets: Vec<Arc<Mutex<Net>>>,
    boot_vcpus: u32,
    max_vcpus: u32,
    boot_time_us: Arc<AtomicU64>,
    vcpus: Vec<Vcpu>,
    subscribers: Vec<Subscriber>,
    entry: arch::KernelEntry,
}

/// A unix socket file the VM made (the vsock device's), removed when it
/// goes: by the thread that drops the VM, not by the device, which may
/// drop on the event loop's thread, whose seccomp filter has no unlink.
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Guest memory: the boot RAM, what the kernel is loaded into and told of,
/// and all of it, which the devices reach: the boot RAM and the
/// hotpluggable region, if any.
struct Memory {
    boot: GuestMemoryMmap,
    all: GuestMemoryMmap,
    hotplug: Option<HotplugRegion>,
}

/// Where the hotpluggable region is, in the guest and on the host.
struct HotplugRegion {
    addr: u64,
    host: u64,
}

/// Maps guest RAM and the hotpluggable region (not yet known to KVM),
/// 2 MiB-aligned on the host (see [`GuestRam`]).
fn map_memory(
    memory_mib: u64,
    hotplug: Option<&devices::virtio::mem::MemConfig>,
) -> Result<(GuestRam, Memory)> {
    let mut ranges: Vec<(GuestAddress, usize)> = arch::ram_regions(memory_mib << 20)
        .into_iter()
        .map(|(start, len)| (start, len as usize))
        .collect();
    let boot_regions = ranges.len();
    let hotplug_addr = hotplug.map(|h| {
        let addr = arch::hotplug_window(memory_mib << 20).0;
        ranges.push((GuestAddress(addr), (h.total_size_mib << 20) as usize));
        addr
    });
    let failed = |e: std::io::Error| {
        let total = memory_mib + hotplug.map_or(0, |h| h.total_size_mib);
        Error::Memory(total, e.to_string())
    };
    let (ram, regions) = GuestRam::map(&ranges).map_err(failed)?;
    let collection = |regions: &[Arc<vm_memory::GuestRegionMmap>]| {
        GuestMemoryMmap::from_arc_regions(regions.to_vec())
            .map_err(|e| failed(std::io::Error::other(e.to_string())))
    };
    let boot = collection(&regions[..boot_regions])?;
    let all = collection(&regions)?;
    let hotplug = match hotplug_addr {
        Some(addr) => Some(HotplugRegion {
            addr,
            host: all
                .get_host_address(GuestAddress(addr))
                .map_err(|e| failed(std::io::Error::other(e.to_string())))?
                as u64,
        }),
        None => None,
    };
    Ok((ram, Memory { boot, all, hotplug }))
}

/// The hotpluggable region's KVM memory slots, one per slot of the
/// region, numbered after the boot RAM's.
struct KvmSlots {
    vm_fd: std::sync::Weak<VmFd>,
    first: u32,
    addr: u64,
    host: u64,
    slot_size: u64,
}

impl KvmSlots {
    /// The slots of `region`, numbered from `first`, if KVM has that many.
    fn new(
        kvm: &Kvm,
        vm_fd: &Arc<VmFd>,
        first: usize,
        region: &HotplugRegion,
        cfg: &devices::virtio::mem::MemConfig,
    ) -> Result<KvmSlots> {
        let have = kvm.get_nr_memslots();
        let need = first as u64 + cfg.slots();
        if need > have as u64 {
            return Err(Error::Device(format!(
                "memory hotplug: {} slots of {} MiB need {need} KVM memory slots with the boot RAM's, KVM has {have}; use a larger slot_size_mib",
                cfg.slots(),
                cfg.slot_size_mib
            )));
        }
        Ok(KvmSlots {
            vm_fd: Arc::downgrade(vm_fd),
            first: first as u32,
            addr: region.addr,
            host: region.host,
            slot_size: cfg.slot_size_mib << 20,
        })
    }
}

impl devices::virtio::mem::Slots for KvmSlots {
    fn set(&mut self, index: u64, present: bool) -> std::io::Result<()> {
        let vm_fd = self
            .vm_fd
            .upgrade()
            .ok_or_else(|| std::io::Error::other("the VM is gone"))?;
        let offset = index * self.slot_size;
        let region = kvm_userspace_memory_region {
            slot: self.first + index as u32,
            flags: 0,
            guest_phys_addr: self.addr + offset,
            // Size 0 deletes the slot.
            memory_size: if present { self.slot_size } else { 0 },
            userspace_addr: self.host + offset,
        };
        // SAFETY: the host range is one slot of the hotpluggable region's
        // mapping, owned by the VM's `GuestRam`, which is unmapped only
        // after the VM fd and the event loop (this device) are gone.
        unsafe { vm_fd.set_user_memory_region(region) }
            .map_err(|e| std::io::Error::from_raw_os_error(e.errno()))
    }
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
