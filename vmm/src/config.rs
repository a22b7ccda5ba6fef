//! What a VM is made of, as given by the user, and its validation.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

pub use devices::virtio::block::BlockConfig;
pub use devices::virtio::net::NetConfig;

use crate::error::ConfigError;

/// Most vCPUs a VM can have on this architecture.
pub const MAX_VCPUS: u32 = arch::layout::MAX_VCPUS;
/// Whether this platform can make vCPUs two threads to a core (`smt`).
pub const SMT_SUPPORTED: bool = arch::SMT;
/// Longest kernel command line, including its NUL.
pub const CMDLINE_MAX_SIZE: usize = arch::layout::CMDLINE_MAX_SIZE;

/// Smallest guest memory we accept: boot structures, a kernel and an initrd.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Command line used when the user gives none (the architecture's).
pub const DEFAULT_CMDLINE: &str = arch::DEFAULT_CMDLINE;
/// Whether vCPUs can be plugged into a running guest here.
pub const VCPU_HOTPLUG: bool = arch::PLATFORM.cpu_hotplug.is_some();
/// The platform's name, for messages.
pub const ARCH_NAME: &str = arch::ARCH_NAME;

/// Where the guest's serial output goes.
pub enum SerialOutput {
    /// The VMM's standard output.
    Stdout,
    /// Appended to a file.
    File(PathBuf),
    /// Any writer (tests, a host agent's log pipe).
    Writer(Box<dyn Write + Send>),
    /// Discarded.
    Sink,
}

/// Where the guest's serial input comes from.
pub enum SerialInput {
    /// The VMM's standard input.
    Stdin,
    /// A readable, pollable file descriptor (pipe, socket, terminal).
    Fd(OwnedFd),
    /// No input.
    None,
}

/// Which device carries the interactive console (stdin and the console
/// output): the 8250 UART (ttyS0) or virtio-console (hvc0). The UART is
/// always present for early boot output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConsoleKind {
    /// Input goes to ttyS0.
    #[default]
    Serial,
    /// A virtio-console device is added and input goes to hvc0.
    Virtio,
}

/// Everything needed to boot a microVM.
pub struct VmConfig {
    /// Number of vCPUs at boot, at least 1.
    pub vcpus: u32,
    /// Two threads to a core (Firecracker's `smt`; x86 only): vCPUs 2n
    /// and 2n+1 are siblings.
    pub smt: bool,
    /// How many vCPUs the VM can grow to while it runs (see
    /// [`crate::VmController::resize_vcpus`]); `None` means `vcpus`. The
    /// guest is told of all of them at boot, those beyond `vcpus` as
    /// absent.
    pub max_vcpus: Option<u32>,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Kernel image: ELF vmlinux (with or without a PVH note) or bzImage.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Serial console output.
    pub serial_out: SerialOutput,
    /// Serial console input.
    pub serial_in: SerialInput,
    /// Block devices, in the order the guest sees them (vda, vdb, ...).
    pub drives: Vec<BlockConfig>,
    /// Network interfaces, in order (eth0, eth1, ...).
    pub nets: Vec<NetConfig>,
    /// Which device the console input goes to.
    pub console: ConsoleKind,
    /// A memory balloon (virtio-balloon), added after the other devices.
    pub balloon: Option<devices::virtio::balloon::BalloonConfig>,
    /// Hotpluggable memory (virtio-mem): a region above RAM that the guest
    /// plugs in blocks while it runs, up to what
    /// [`crate::VmController::memory_hotplug`] requests; nothing at boot.
    pub memory_hotplug: Option<devices::virtio::mem::MemConfig>,
    /// A socket device (virtio-vsock) with Firecracker's hybrid vsock:
    /// guest AF_VSOCK streams over unix sockets at its `uds_path`.
    pub vsock: Option<devices::virtio::vsock::VsockConfig>,
    /// An entropy device (virtio-rng) with its rate limits, added last.
    pub entropy: Option<devices::rate_limiter::RateLimiterConfig>,
    /// A custom CPU template (Firecracker's `/cpu-config`): CPUID and MSR
    /// bits on x86_64, register bits and vCPU features on aarch64.
    pub cpu_template: Option<arch::CpuTemplate>,
    /// Whether the vCPU and event-loop threads run under their seccomp
    /// filters (see [`crate::seccomp`]); on by default. With filters on, a
    /// [`SerialOutput::Writer`] runs on those threads and may only write
    /// and take locks.
    pub seccomp: bool,
}

impl VmConfig {
    /// A config with the default command line, serial on stdout and no input.
    pub fn new(kernel: impl Into<PathBuf>, vcpus: u32, memory_mib: u64) -> Self {
        VmConfig {
            vcpus,
            smt: false,
            max_vcpus: None,
            memory_mib,
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            serial_out: SerialOutput::Stdout,
            serial_in: SerialInput::None,
            drives: Vec::new(),
            nets: Vec::new(),
            console: ConsoleKind::Serial,
            balloon: None,
            memory_hotplug: None,
            vsock: None,
            entropy: None,
            cpu_template: None,
            seccomp: true,
        }
    }

    /// How many vCPUs the VM can have: [`VmConfig::max_vcpus`], or the
    /// boot count.
    pub fn max_vcpus(&self) -> u32 {
        self.max_vcpus.unwrap_or(self.vcpus)
    }

    /// Checks everything that can be checked without KVM. `max_vcpus` is the
    /// host's limit and `host_mib` its physical memory.
    pub fn validate(&self, max_vcpus: u32, host_mib: u64) -> Result<(), ConfigError> {
        if self.vcpus == 0 {
            return Err(ConfigError::NoVcpus);
        }
        if self.vcpus > max_vcpus {
            return Err(ConfigError::TooManyVcpus(self.vcpus, max_vcpus));
        }
        let most = self.max_vcpus();
        if most < self.vcpus {
            return Err(ConfigError::MaxBelowVcpus(self.vcpus, most));
        }
        if most > max_vcpus {
            return Err(ConfigError::TooManyVcpus(most, max_vcpus));
        }
        if most > self.vcpus && arch::PLATFORM.cpu_hotplug.is_none() {
            return Err(ConfigError::NoVcpuHotplug(arch::ARCH_NAME));
        }
        if self.smt {
            if !arch::SMT {
                return Err(ConfigError::NoSmt(arch::ARCH_NAME));
            }
            for n in [self.vcpus, most] {
                if n > 1 && n % 2 == 1 {
                    return Err(ConfigError::OddSmt(n));
                }
            }
        }
        if let Some(t) = &self.cpu_template {
            let foreign = t.foreign_parts(arch::ARCH_NAME);
            if !foreign.is_empty() {
                return Err(ConfigError::ForeignTemplate(
                    foreign.join(" and "),
                    arch::ARCH_NAME,
                ));
            }
        }
        if self.memory_mib < MIN_MEMORY_MIB {
            return Err(ConfigError::MemoryTooSmall(self.memory_mib));
        }
        if self.memory_mib > host_mib {
            return Err(ConfigError::MemoryTooLarge(self.memory_mib, host_mib));
        }
        if self.cmdline.len() >= arch::layout::CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong(
                self.cmdline.len(),
                arch::layout::CMDLINE_MAX_SIZE - 1,
            ));
        }
        check_readable(&self.kernel, "kernel")?;
        if let Some(initrd) = &self.initrd {
            check_readable(initrd, "initrd")?;
        }
        let virtio = self.drives.len()
            + self.nets.len()
            + usize::from(self.console == ConsoleKind::Virtio)
            + usize::from(self.balloon.is_some())
            + usize::from(self.memory_hotplug.is_some())
            + usize::from(self.vsock.is_some())
            + usize::from(self.entropy.is_some());
        if let Some(v) = &self.vsock {
            v.validate()
                .map_err(|e| ConfigError::Option("vsock", e.to_string()))?;
        }
        if let Some(h) = &self.memory_hotplug {
            h.validate().map_err(ConfigError::MemoryHotplug)?;
            let (start, end) = arch::hotplug_window(self.memory_mib << 20);
            let room = end.saturating_sub(start) >> 20;
            if h.total_size_mib > room {
                return Err(ConfigError::HotplugTooLarge(h.total_size_mib, room));
            }
        }
        if let Some(b) = &self.balloon {
            if u64::from(b.amount_mib) > self.memory_mib {
                return Err(ConfigError::BalloonTooLarge(b.amount_mib, self.memory_mib));
            }
        }
        if virtio > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(virtio, MAX_VIRTIO_DEVICES));
        }
        for d in &self.drives {
            let meta = devices::fd_path::metadata(&d.path)
                .map_err(|e| ConfigError::File("drive", d.path.clone(), e))?;
            use std::os::unix::fs::FileTypeExt;
            if !meta.is_file() && !meta.file_type().is_block_device() {
                return Err(ConfigError::NotAFile("drive", d.path.clone()));
            }
        }
        for (i, n) in self.nets.iter().enumerate() {
            if self.nets[..i].iter().any(|m| m.tap == n.tap) {
                return Err(ConfigError::Duplicate("tap", n.tap.clone()));
            }
            if self.nets[..i].iter().any(|m| m.mac == n.mac) {
                return Err(ConfigError::Duplicate("MAC", format_mac(&n.mac)));
            }
        }
        Ok(())
    }
}

/// Most virtio devices one VM can have: each takes an interrupt of the
/// architecture's virtio range (less the ones it skips; 17 on x86) and an
/// MMIO window.
pub const MAX_VIRTIO_DEVICES: usize = {
    use arch::layout::{
        MMIO_DEVICES_END, MMIO_DEVICES_START, VIRTIO_IRQ_BASE, VIRTIO_IRQ_MAX, VIRTIO_IRQ_SKIP,
    };
    let irqs = (VIRTIO_IRQ_MAX - VIRTIO_IRQ_BASE + 1) as usize - VIRTIO_IRQ_SKIP.len();
    let windows =
        ((MMIO_DEVICES_END - MMIO_DEVICES_START) / devices::virtio::mmio::MMIO_WINDOW) as usize;
    if irqs < windows {
        irqs
    } else {
        windows
    }
};

/// Parses a `--drive` value: `path=FILE[,readonly=on|off][,serial=ID]`.
pub fn parse_drive(s: &str) -> Result<BlockConfig, ConfigError> {
    let mut cfg = BlockConfig {
        path: PathBuf::new(),
        read_only: false,
        serial: None,
        rate_limiter: Default::default(),
    };
    for (key, value) in key_values("--drive", s)? {
        match key {
            "path" => cfg.path = PathBuf::from(value),
            "readonly" | "ro" => cfg.read_only = parse_switch("--drive", key, value)?,
            "serial" => {
                if value.len() > devices::virtio::block::ID_BYTES {
                    return Err(ConfigError::Option(
                        "--drive",
                        format!("serial {value:?} is longer than 20 bytes"),
                    ));
                }
                cfg.serial = Some(value.to_string());
            }
            _ => {
                return Err(ConfigError::Option(
                    "--drive",
                    format!("unknown key {key:?} (path, readonly, serial)"),
                ))
            }
        }
    }
    if cfg.path.as_os_str().is_empty() {
        return Err(ConfigError::Option(
            "--drive",
            "path=FILE is required".into(),
        ));
    }
    Ok(cfg)
}

/// Parses a `--net` value: `tap=NAME[,mac=xx:xx:xx:xx:xx:xx]`. Without a
/// MAC, one is derived from `index` (locally administered, unicast).
pub fn parse_net(s: &str, index: usize) -> Result<NetConfig, ConfigError> {
    let mut tap = None;
    let mut mac = None;
    for (key, value) in key_values("--net", s)? {
        match key {
            "tap" => tap = Some(value.to_string()),
            "mac" => mac = Some(parse_mac(value)?),
            _ => {
                return Err(ConfigError::Option(
                    "--net",
                    format!("unknown key {key:?} (tap, mac)"),
                ))
            }
        }
    }
    let tap = tap.ok_or_else(|| ConfigError::Option("--net", "tap=NAME is required".into()))?;
    net_config(tap, mac, index)
}

/// A NIC on tap `tap` with `mac`, or a MAC derived from `index` (locally
/// administered, unicast) when none is given.
pub fn net_config(
    tap: String,
    mac: Option<[u8; 6]>,
    index: usize,
) -> Result<NetConfig, ConfigError> {
    // Interface names: 1 to 15 printable bytes, no '/'.
    let valid = !tap.is_empty()
        && tap.len() <= 15
        && tap.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if !valid {
        return Err(ConfigError::Option(
            "--net",
            format!("tap name {tap:?} must be 1 to 15 printable bytes without '/'"),
        ));
    }
    let idx = index.to_be_bytes();
    let mac = mac.unwrap_or([0x06, 0x00, 0xac, 0x10, idx[6], idx[7]]);
    Ok(NetConfig {
        tap,
        mac,
        rx_rate_limiter: Default::default(),
        tx_rate_limiter: Default::default(),
        mmds: None,
        tx_irq_delay: devices::virtio::net::TX_IRQ_DELAY,
    })
}

fn key_values<'a>(opt: &'static str, s: &'a str) -> Result<Vec<(&'a str, &'a str)>, ConfigError> {
    s.split(',')
        .map(|kv| {
            kv.split_once('=')
                .ok_or_else(|| ConfigError::Option(opt, format!("expected key=value, got {kv:?}")))
        })
        .collect()
}

fn parse_switch(opt: &'static str, key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(ConfigError::Option(
            opt,
            format!("{key}={value}: expected on or off"),
        )),
    }
}

/// Parses a unicast MAC address `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let bad = || {
        ConfigError::Option(
            "--net",
            format!("bad MAC address {s:?} (xx:xx:xx:xx:xx:xx)"),
        )
    };
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(ConfigError::Option(
            "--net",
            format!("MAC {s} is a multicast address"),
        ));
    }
    Ok(mac)
}

/// Formats a MAC address as xx:xx:xx:xx:xx:xx.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn check_readable(path: &std::path::Path, what: &'static str) -> Result<(), ConfigError> {
    let fail = |e| ConfigError::File(what, path.to_path_buf(), e);
    // Metadata first: opening a FIFO for reading would block.
    let meta = devices::fd_path::metadata(path).map_err(fail)?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile(what, path.to_path_buf()));
    }
    devices::fd_path::open(path, false).map_err(fail)?;
    Ok(())
}

/// Physical memory of the host in MiB, from /proc/meminfo.
pub fn host_memory_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> VmConfig {
        // Any readable regular file passes the file checks.
        VmConfig::new("/proc/self/exe", 1, 64)
    }

    #[test]
    fn validation() {
        let exe = std::env::current_exe().unwrap();
        let mut c = cfg();
        c.kernel = exe.clone();
        assert!(c.validate(4, 1024).is_ok());
        c.vcpus = 0;
        assert!(matches!(c.validate(4, 1024), Err(ConfigError::NoVcpus)));
        c.vcpus = 5;
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::TooManyVcpus(5, 4))
        ));
        c.vcpus = 2;
        c.max_vcpus = Some(1);
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::MaxBelowVcpus(2, 1))
        ));
        c.max_vcpus = Some(5);
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::TooManyVcpus(5, 4))
        ));
        c.max_vcpus = Some(4);
        if arch::PLATFORM.cpu_hotplug.is_some() {
            assert!(c.validate(4, 1024).is_ok());
        } else {
            assert!(matches!(
                c.validate(4, 1024),
                Err(ConfigError::NoVcpuHotplug(_))
            ));
        }
        c.max_vcpus = Some(2);
        assert!(c.validate(4, 1024).is_ok());
        c.max_vcpus = None;
        c.vcpus = 1;
        c.memory_mib = 0;
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::MemoryTooSmall(0))
        ));
        c.memory_mib = 2048;
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::MemoryTooLarge(..))
        ));
        c.memory_mib = 64;
        c.cmdline = "x".repeat(4096);
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::CmdlineTooLong(..))
        ));
        c.cmdline = String::new();
        c.kernel = "/nonexistent/kernel".into();
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::File("kernel", ..))
        ));
        c.kernel = "/tmp".into();
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::NotAFile(..))
        ));
        c.kernel = exe;
        c.initrd = Some("/nonexistent/initrd".into());
        assert!(matches!(
            c.validate(4, 1024),
            Err(ConfigError::File("initrd", ..))
        ));
    }

    #[test]
    fn drive_and_net_options() {
        let d = parse_drive("path=/a.img,readonly=on,serial=disk-1").unwrap();
        assert_eq!(d.path, PathBuf::from("/a.img"));
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("disk-1"));
        assert!(!parse_drive("path=/a.img").unwrap().read_only);
        for bad in [
            "",
            "readonly=on",
            "path=/a,ro=maybe",
            "path=/a,x=1",
            "path",
            "path=/a,serial=123456789012345678901",
        ] {
            assert!(parse_drive(bad).is_err(), "{bad}");
        }
        let n = parse_net("tap=tap0,mac=06:00:ac:10:00:02", 0).unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, [6, 0, 0xac, 0x10, 0, 2]);
        assert_eq!(
            parse_net("tap=tap1", 3).unwrap().mac,
            [6, 0, 0xac, 0x10, 0, 3]
        );
        for bad in [
            "",
            "mac=06:00:00:00:00:01",
            "tap=t,mac=01:00:00:00:00:00",
            "tap=t,mac=zz:00:00:00:00:00",
            "tap=averyveryverylongname",
            "tap=t,mac=06:00",
            "tap=t,mac=06:00:ac:10:00:+1",
            "tap=a/b",
        ] {
            assert!(parse_net(bad, 0).is_err(), "{bad}");
        }
        assert_eq!(format_mac(&[6, 0, 0xac, 0x10, 0, 2]), "06:00:ac:10:00:02");
    }

    #[test]
    fn host_memory_is_known() {
        assert!(host_memory_mib().unwrap() > 0);
    }
}
