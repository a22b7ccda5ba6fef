//! What a VM is made of, as given by the user, and its validation.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use crate::error::ConfigError;

/// Smallest guest memory we accept: boot structures, a kernel and an initrd.
pub const MIN_MEMORY_MIB: u64 = 16;
/// Command line used when the user gives none.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.dumbkbd";

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

/// Everything needed to boot a microVM.
pub struct VmConfig {
    /// Number of vCPUs, at least 1.
    pub vcpus: u32,
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
}

impl VmConfig {
    /// A config with the default command line, serial on stdout and no input.
    pub fn new(kernel: impl Into<PathBuf>, vcpus: u32, memory_mib: u64) -> Self {
        VmConfig {
            vcpus,
            memory_mib,
            kernel: kernel.into(),
            initrd: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            serial_out: SerialOutput::Stdout,
            serial_in: SerialInput::None,
        }
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
        Ok(())
    }
}

fn check_readable(path: &PathBuf, what: &'static str) -> Result<(), ConfigError> {
    let meta = std::fs::metadata(path).map_err(|e| ConfigError::File(what, path.clone(), e))?;
    if !meta.is_file() {
        return Err(ConfigError::NotAFile(what, path.clone()));
    }
    File::open(path).map_err(|e| ConfigError::File(what, path.clone(), e))?;
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
    fn host_memory_is_known() {
        assert!(host_memory_mib().unwrap() > 0);
    }
}
