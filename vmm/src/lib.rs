//! strato's virtual machine monitor as a library: a [`VmConfig`] in, a
//! running [`Vm`] out.
//!
//! The `strato` binary and the daemon are thin users of this crate; a host
//! agent can embed it the same way.

pub mod boot;
pub mod config;
mod device_manager;
pub mod error;
mod events;
pub mod exit;
mod ram;
pub mod seccomp;
mod vcpu;
mod vm;

/// Custom CPU templates (Firecracker's `/cpu-config`), parsed.
pub use arch::cpu_template;
pub use arch::static_templates;
pub use config::{
    BlockConfig, ConsoleKind, NetConfig, SerialInput, SerialOutput, VmConfig, DEFAULT_CMDLINE,
};
/// Guest files handed over as inherited descriptors (`/proc/self/fd/N`).
pub use devices::fd_path;
pub use devices::metrics::Counters;
pub use devices::mmds;
pub use devices::rate_limiter::{BucketConfig, RateLimiterConfig};
/// The memory balloon's configuration, controls and guest statistics.
pub use devices::virtio::balloon::{
    BalloonConfig, BalloonShared, BalloonStats, Error as BalloonError,
};
/// Hotpluggable memory (virtio-mem): its sizes, controls and status.
pub use devices::virtio::mem::{
    Error as MemoryHotplugError, MemConfig as MemoryHotplugConfig, MemShared as MemoryHotplug,
    MemStatus as MemoryHotplugStatus,
};
/// Taps, which the daemon attaches and hands over to a jailed VMM.
pub use devices::virtio::net::Tap;
/// The socket device's (virtio-vsock's) guest CID and unix socket path.
pub use devices::virtio::vsock::VsockConfig;
pub use error::{Error, Result};
pub use exit::ExitReason;
pub use vm::{ControlError, ShutdownSignal, VcpuCounts, Vm, VmController, VmMetrics};
