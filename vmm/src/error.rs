//! Errors of the VMM library, one enum per concern.

use std::path::PathBuf;

/// A configuration the VMM cannot boot.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// vCPUs = 0.
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    /// More vCPUs than the host or the platform allows.
    #[error("{0} vCPUs requested, the maximum here is {1}")]
    TooManyVcpus(u32, u32),
    /// A maximum vCPU count below the boot count.
    #[error("max_vcpus {1} is below the {0} vCPUs to boot with")]
    MaxBelowVcpus(u32, u32),
    /// A CPU template with parts for another architecture.
    #[error("CPU template: {0} are not for {1}")]
    ForeignTemplate(String, &'static str),
    /// A balloon larger than the guest.
    #[error("balloon amount_mib {0} is more than the guest's {1} MiB of memory")]
    BalloonTooLarge(u32, u64),
    /// Hotpluggable memory sized wrong.
    #[error("memory hotplug: {0}")]
    MemoryHotplug(#[source] devices::virtio::mem::Error),
    /// Hotpluggable memory beyond the guest-physical space left above RAM.
    #[error("memory hotplug: total_size_mib {0} does not fit the {1} MiB of address space above the guest's RAM")]
    HotplugTooLarge(u64, u64),
    /// Room for more vCPUs where vCPUs cannot be plugged.
    #[error("vCPUs cannot be plugged while the guest runs on {0}: max_vcpus must equal vcpus")]
    NoVcpuHotplug(&'static str),
    /// Two threads to a core where the platform has no such topology.
    #[error("smt (two threads to a core) is not supported on {0}")]
    NoSmt(&'static str),
    /// An odd vCPU count with two threads to a core.
    #[error("with smt, the vCPU count ({0}) must be 1 or even: each core has two threads")]
    OddSmt(u32),
    /// Less memory than a guest needs.
    #[error("{0} MiB of memory is too small, the minimum is {min} MiB", min = crate::config::MIN_MEMORY_MIB)]
    MemoryTooSmall(u64),
    /// More memory than the host has.
    #[error("{0} MiB of memory requested, the host has {1} MiB")]
    MemoryTooLarge(u64, u64),
    /// The command line is too long.
    #[error("the kernel command line is {0} bytes, the maximum is {1}")]
    CmdlineTooLong(usize, usize),
    /// A file cannot be used.
    #[error("{0} {1}: {2}")]
    File(&'static str, PathBuf, #[source] std::io::Error),
    /// A path is not a regular file.
    #[error("{0} {1}: not a regular file")]
    NotAFile(&'static str, PathBuf),
    /// A malformed option value.
    #[error("{0}: {1}")]
    Option(&'static str, String),
    /// More devices than IRQs.
    #[error("{0} virtio devices requested, at most {1} are supported")]
    TooManyDevices(usize, usize),
    /// Two devices share what must be unique.
    #[error("{0} {1} is used by two network interfaces")]
    Duplicate(&'static str, String),
}

/// Errors while loading the kernel, initrd and command line.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading a file failed.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The kernel cannot be loaded on this architecture.
    #[error("kernel {0} {1}")]
    Kernel(PathBuf, #[source] arch::LoadError),
    /// An ELF segment that would not land in guest RAM.
    #[error(
        "kernel {path}: ELF segment {index} [{start:#x}, {end:#x}) lies outside guest RAM ({ram})"
    )]
    SegmentOutsideRam {
        /// The kernel.
        path: PathBuf,
        /// Index of the program header.
        index: usize,
        /// First guest-physical address of the segment.
        start: u64,
        /// End (exclusive); u64::MAX when the sum overflows.
        end: u64,
        /// The guest's RAM ranges, for the message.
        ram: String,
    },
    /// The initrd does not fit below the kernel's limit.
    #[error("initrd {0} ({1} bytes) does not fit in guest memory")]
    InitrdTooLarge(PathBuf, u64),
    /// The command line is rejected.
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
    /// Writing what the kernel reads at entry failed.
    #[error(transparent)]
    Configure(#[from] arch::BootError),
}

/// Everything that can stop a VM from being created or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM enabled, and may this user use it?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    /// KVM lacks a capability strato needs.
    #[error("KVM lacks a required capability: {0}")]
    KvmCap(&'static str),
    /// A KVM call failed.
    #[error("KVM {0} failed: {1}")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Allocating guest memory failed.
    #[error("cannot allocate {0} MiB of guest memory: {1}")]
    Memory(u64, String),
    /// Loading the kernel failed.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Device setup failed.
    #[error("device setup: {0}")]
    Device(String),
    /// A drive cannot be used.
    #[error(transparent)]
    Block(#[from] devices::virtio::block::Error),
    /// A tap cannot be used.
    #[error(transparent)]
    Tap(#[from] devices::virtio::net::TapError),
    /// A thread's seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// An OS resource (eventfd, thread, file) failed.
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    /// The CPU template cannot be applied on this host.
    #[error("CPU template: {0}")]
    CpuTemplate(#[source] arch::TemplateError),
}

impl From<arch::KvmError> for Error {
    fn from(e: arch::KvmError) -> Self {
        match e {
            arch::KvmError::Cap(name) => Error::KvmCap(name),
            arch::KvmError::Call(call, e) => Error::Kvm(call, e),
            arch::KvmError::Unsupported(what) => Error::Device(what),
            arch::KvmError::Template(t) => Error::CpuTemplate(t),
        }
    }
}

/// Result type of the VMM library.
pub type Result<T> = std::result::Result<T, Error>;
