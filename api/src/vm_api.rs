//! `strato vm`: one microVM per process, driven through an API that is
//! wire-compatible with Firecracker's for the endpoints it implements, so
//! Firecracker clients and SDKs work unchanged.
//!
//! Each API connection has its own thread, so a slow client cannot hold
//! up another, but requests are handled one at a time (requests on one VM
//! are serialized); a waiter thread owns the running `Vm` and ends the
//! process when the guest ends. Requests never wait on a vCPU except for a
//! pause, which is bounded.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vmm::config::parse_mac;
use vmm::cpu_template::CpuTemplate;
use vmm::seccomp::{ThreadFilter, ThreadKind};
use vmm::{
    BlockConfig, ExitReason, NetConfig, SerialInput, SerialOutput, Vm, VmConfig, VmController,
};

use crate::cpu_config::CpuConfig;
use crate::http::{self, ApiError, Method, Reply, Request};

/// API connections served at once. A microVM has one or two clients (its
/// daemon, an SDK); the bound keeps the memory that stalled clients can
/// pin (about 90 KiB each) well inside the per-instance budget.
const API_CONNECTIONS: usize = 16;
/// How long an ending `strato vm` waits for responses still being written.
const RESPONSE_DRAIN: std::time::Duration = std::time::Duration::from_millis(500);
/// How long the `Shutdown` action waits for an ACPI guest to take the
/// power button before it sends Ctrl-Alt-Del as well. The guest answers
/// within milliseconds when it answers at all; the rest is slack for a
/// loaded host.
const SHUTDOWN_ACK: std::time::Duration = std::time::Duration::from_secs(2);

/// `PUT /mmds/config` and the config file's `mmds-config`: which NICs
/// lead to the metadata service, at which address, read how.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MmdsConfigBody {
    #[serde(default)]
    version: MmdsVersionBody,
    network_interfaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ipv4_address: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    imds_compat: bool,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize)]
enum MmdsVersionBody {
    #[default]
    V1,
    V2,
}

impl MmdsConfigBody {
    fn validate(&self, nets: &[NetworkInterface]) -> Result<(), ApiError> {
        if self.network_interfaces.is_empty() {
            return Err(ApiError::bad_request(
                "The list of network interface IDs that allow forwarding MMDS requests is empty.",
            ));
        }
        if let Some(id) = self
            .network_interfaces
            .iter()
            .find(|id| !nets.iter().any(|n| &n.iface_id == *id))
        {
            return Err(ApiError::bad_request(format!(
                "The list of network interface IDs that allow forwarding MMDS requests names \
                 {id:?}, which is not a configured network interface."
            )));
        }
        // RFC 3927 keeps the first and last 256 addresses of 169.254/16.
        if let Some(ip) = self.ipv4_address {
            if !matches!(ip.octets(), [169, 254, 1..=254, _]) {
                return Err(ApiError::bad_request(format!(
                    "The MMDS IPv4 address {ip} is not link local (169.254.1.0 to \
                     169.254.254.255)."
                )));
            }
        }
        Ok(())
    }

    /// Sets the store's version from this configuration.
    fn apply(&self, store: &Mutex<vmm::mmds::Mmds>) {
        let version = match self.version {
            MmdsVersionBody::V1 => vmm::mmds::MmdsVersion::V1,
            MmdsVersionBody::V2 => vmm::mmds::MmdsVersion::V2,
        };
        crate::lock(store).configure(version, self.imds_compat);
    }
}

/// Reads `--metadata`: at most `limit` bytes of JSON.
fn read_metadata(path: &Path, limit: usize) -> Result<Value, String> {
    use std::io::Read;
    let name = || format!("--metadata {}", path.display());
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", name()))?;
    let mut text = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", name()))?;
    if text.len() > limit {
        return Err(format!(
            "{}: larger than the MMDS limit of {limit} bytes (--mmds-size-limit)",
            name()
        ));
    }
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", name()))
}

/// The version of Firecracker's API that `strato vm` serves: what
/// `GET /version` and `firecracker --version` report to Firecracker's
/// clients, which check it.
pub const FIRECRACKER_API_VERSION: &str = "1.7.0";

/// Options of `strato vm`.
#[derive(clap::Args)]
pub struct VmArgs {
    /// Unix socket of this microVM's API.
    #[arg(long, required_unless_present = "no_api")]
    api_sock: Option<PathBuf>,
    /// Instance id, reported by `GET /`.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Boot right away from a Firecracker-style JSON config
    /// (`boot-source`, `machine-config`, `drives`, `network-interfaces`).
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// Write the serial console here instead of stdout.
    #[arg(long)]
    console_log: Option<PathBuf>,
    /// Rotate the console log to FILE.1 when it grows past this many bytes.
    #[arg(long, default_value_t = 1 << 20)]
    console_log_max: u64,
    /// Where to write how the VM ended (JSON), atomically.
    #[arg(long)]
    exit_file: Option<PathBuf>,
    /// Group allowed on the API socket (mode 0660 instead of 0600).
    #[arg(long)]
    api_sock_group: Option<u32>,
    /// Before anything else, wait for one byte on this inherited
    /// descriptor, and exit if it closes first. The daemon opens it once
    /// the process is in its records, so no VMM runs unrecorded.
    #[arg(long, value_name = "FD", value_parser = clap::value_parser!(i32).range(3..))]
    wait_fd: Option<i32>,
    /// Run without the seccomp filters that limit each thread's system
    /// calls.
    #[arg(long)]
    no_seccomp: bool,
    /// Write Firecracker-style metrics lines to this file or FIFO (every
    /// 60 s and on `FlushMetrics`); `PUT /metrics` does the same.
    #[arg(long)]
    metrics_path: Option<PathBuf>,
    /// Refuse API request bodies larger than this (413); at most 16 MiB,
    /// as each of the 16 connections may hold one.
    #[arg(long, value_name = "BYTES", default_value_t = http::MAX_BODY as u64,
          value_parser = clap::value_parser!(u64).range(1..=16 << 20))]
    http_api_max_payload_size: u64,
    /// A tap another process (the daemon) attached, inherited as
    /// descriptor FD: a network interface whose host_dev_name is NAME uses
    /// it instead of attaching itself. Repeat for more.
    #[arg(long = "tap-fd", value_name = "NAME:FD", value_parser = parse_tap_fd)]
    tap_fds: Vec<(String, i32)>,
    /// Fill the metadata store (MMDS) from this JSON file before
    /// anything else (Firecracker's `--metadata`).
    #[arg(long, value_name = "FILE")]
    metadata: Option<PathBuf>,
    /// The most the metadata store may hold, in bytes of JSON text
    /// (default: --http-api-max-payload-size, as in Firecracker).
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..=16 << 20))]
    mmds_size_limit: Option<u64>,
    #[command(flatten)]
    jail: crate::jail::JailArgs,
}

fn parse_tap_fd(s: &str) -> Result<(String, i32), String> {
    let (name, fd) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not NAME:FD"))?;
    match fd.parse::<i32>() {
        Ok(fd) if fd >= 3 && !name.is_empty() => Ok((name.to_string(), fd)),
        _ => Err(format!(
            "{s:?}: FD must be a descriptor number of 3 or more after a name"
        )),
    }
}

/// Takes the taps handed over with `--tap-fd`.
fn take_taps(args: &VmArgs) -> Result<(), String> {
    use std::os::fd::FromRawFd;
    let mut seen = Vec::new();
    for (name, fd) in &args.tap_fds {
        if seen.contains(fd) || args.wait_fd == Some(*fd) {
            return Err(format!("--tap-fd: descriptor {fd} is given twice"));
        }
        seen.push(*fd);
        // SAFETY: F_GETFD only reads the descriptor's flags; an fd that
        // is not open fails with EBADF.
        if unsafe { libc::fcntl(*fd, libc::F_GETFD) } < 0 {
            return Err(format!("--tap-fd {name}:{fd}: descriptor {fd} is not open"));
        }
        // SAFETY: the descriptor is open (checked above), was inherited
        // for this tap alone and is owned nowhere else in this process
        // (each number is taken once, and not the --wait-fd one).
        let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(*fd) };
        vmm::Tap::hand_over(name, owned).map_err(|e| format!("--tap-fd {name}:{fd}: {e}"))?;
    }
    Ok(())
}

/// Waits for the go-ahead on `fd` (see `--wait-fd`); false if the writer
/// went away without giving it.
fn wait_for_go(fd: i32) -> bool {
    let mut byte = 0u8;
    let got = loop {
        // SAFETY: read writes at most one byte into `byte`.
        let n = unsafe { libc::read(fd, (&mut byte as *mut u8).cast(), 1) };
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        break n == 1;
    };
    // SAFETY: the descriptor was inherited for this wait alone and
    // nothing else in this process uses it.
    unsafe { libc::close(fd) };
    got
}

const FAULT_AFTER_START: &str =
    "The requested operation is not supported after starting the microVM.";
const FAULT_NOT_STARTED: &str = "The microVM is not running.";

/// `machine-config` body.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MachineConfig {
    vcpu_count: u32,
    mem_size_mib: u64,
    #[serde(default)]
    smt: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    /// strato's: how many vCPUs a `PATCH /machine-config` after boot may
    /// grow the VM to (x86); `vcpu_count` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_vcpus: Option<u32>,
    /// Firecracker's static CPU template: only "None" (the host's CPUID
    /// as KVM offers it) is supported; shown as given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cpu_template: Option<String>,
}

/// `PATCH /machine-config` body: any subset.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MachineConfigPatch {
    vcpu_count: Option<u32>,
    mem_size_mib: Option<u64>,
    smt: Option<bool>,
    track_dirty_pages: Option<bool>,
    max_vcpus: Option<u32>,
    cpu_template: Option<String>,
}

/// `boot-source` body.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct BootSource {
    kernel_image_path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    boot_args: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    initrd_path: Option<PathBuf>,
}

/// An optional object field: serde would also build a struct from a JSON
/// array, which Firecracker's API (and the spec) does not allow.
fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v @ Value::Object(_)) => serde_json::from_value(v)
            .map(Some)
            .map_err(D::Error::custom),
        Some(other) => Err(D::Error::custom(format!(
            "expected an object, found {other}"
        ))),
    }
}

/// Firecracker's token bucket: `size` tokens when full, refilled from
/// empty in `refill_time` ms, and a `one_time_burst` spent first.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct TokenBucketBody {
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    one_time_burst: Option<u64>,
    refill_time: u64,
}

impl TokenBucketBody {
    fn config(&self) -> vmm::BucketConfig {
        vmm::BucketConfig {
            size: self.size,
            one_time_burst: self.one_time_burst.unwrap_or(0),
            refill_time_ms: self.refill_time,
        }
    }
}

/// Firecracker's rate limiter: a bandwidth bucket (bytes) and an ops
/// bucket (requests or frames); either may be absent.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RateLimiterBody {
    #[serde(
        default,
        deserialize_with = "object",
        skip_serializing_if = "Option::is_none"
    )]
    bandwidth: Option<TokenBucketBody>,
    #[serde(
        default,
        deserialize_with = "object",
        skip_serializing_if = "Option::is_none"
    )]
    ops: Option<TokenBucketBody>,
}

impl RateLimiterBody {
    fn config(&self) -> vmm::RateLimiterConfig {
        vmm::RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(TokenBucketBody::config),
            ops: self.ops.as_ref().map(TokenBucketBody::config),
        }
    }
}

/// The configuration of an optional limiter.
fn limiter(body: &Option<RateLimiterBody>) -> vmm::RateLimiterConfig {
    body.as_ref()
        .map(RateLimiterBody::config)
        .unwrap_or_default()
}

/// `drives/{id}` body.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Drive {
    drive_id: String,
    path_on_host: PathBuf,
    is_root_device: bool,
    #[serde(default)]
    is_read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    partuuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cache_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    io_engine: Option<String>,
    #[serde(
        default,
        deserialize_with = "object",
        skip_serializing_if = "Option::is_none"
    )]
    rate_limiter: Option<RateLimiterBody>,
}

/// Checks that an optional field holds one of Firecracker's `values` for
/// it, as Firecracker's own parsing does.
fn check_choice(field: &str, got: Option<&str>, values: &[&str]) -> Result<(), ApiError> {
    match got {
        Some(v) if !values.contains(&v) => Err(ApiError::bad_request(format!(
            "{field} {v:?} is not one of {}",
            values.join(", ")
        ))),
        _ => Ok(()),
    }
}

/// `PATCH /drives/{id}` body: a new image and/or new rate limits.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DriveUpdate {
    drive_id: String,
    #[serde(default)]
    path_on_host: Option<PathBuf>,
    #[serde(default, deserialize_with = "object")]
    rate_limiter: Option<RateLimiterBody>,
}

/// `PATCH /network-interfaces/{id}` body: new rate limits.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NetUpdate {
    iface_id: String,
    #[serde(default, deserialize_with = "object")]
    rx_rate_limiter: Option<RateLimiterBody>,
    #[serde(default, deserialize_with = "object")]
    tx_rate_limiter: Option<RateLimiterBody>,
}

/// `network-interfaces/{id}` body.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct NetworkInterface {
    iface_id: String,
    host_dev_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    guest_mac: Option<String>,
    #[serde(
        default,
        deserialize_with = "object",
        skip_serializing_if = "Option::is_none"
    )]
    rx_rate_limiter: Option<RateLimiterBody>,
    #[serde(
        default,
        deserialize_with = "object",
        skip_serializing_if = "Option::is_none"
    )]
    tx_rate_limiter: Option<RateLimiterBody>,
}

/// `balloon` body (Firecracker's).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct BalloonBody {
    amount_mib: u32,
    deflate_on_oom: bool,
    #[serde(default)]
    stats_polling_interval_s: u16,
    #[serde(default)]
    free_page_reporting: bool,
    /// Accepted as false only: free page hinting is not offered.
    #[serde(default)]
    free_page_hinting: bool,
}

impl BalloonBody {
    fn config(&self) -> vmm::BalloonConfig {
        vmm::BalloonConfig {
            amount_mib: self.amount_mib,
            deflate_on_oom: self.deflate_on_oom,
            stats_polling_interval_s: self.stats_polling_interval_s,
            free_page_reporting: self.free_page_reporting,
        }
    }
}

/// `hotplug/memory` body and the config file's `memory-hotplug` section
/// (Firecracker's): the region virtio-mem may plug memory into. The slot
/// and block sizes default to Firecracker's (those of
/// [`vmm::MemoryHotplugConfig::new`]).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MemoryHotplugBody {
    total_size_mib: u64,
    #[serde(default = "default_slot_mib")]
    slot_size_mib: u64,
    #[serde(default = "default_block_mib")]
    block_size_mib: u64,
}

fn default_slot_mib() -> u64 {
    vmm::MemoryHotplugConfig::new(0).slot_size_mib
}

fn default_block_mib() -> u64 {
    vmm::MemoryHotplugConfig::new(0).block_size_mib
}

impl MemoryHotplugBody {
    fn config(&self) -> vmm::MemoryHotplugConfig {
        vmm::MemoryHotplugConfig {
            total_size_mib: self.total_size_mib,
            slot_size_mib: self.slot_size_mib,
            block_size_mib: self.block_size_mib,
        }
    }

    /// The sizes checked against each other, as Firecracker checks them
    /// when they are put (whether they fit above the guest's RAM is
    /// checked at the start).
    fn validate(&self) -> Result<(), ApiError> {
        self.config()
            .validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// `PATCH /hotplug/memory` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoryHotplugUpdate {
    requested_size_mib: u64,
}

const NO_MEMORY_HOTPLUG: &str = "No memory hotplug device configured.";

/// `GET /hotplug/memory`: what the device says once the VM runs; before,
/// the configuration, with nothing requested or plugged.
fn memory_hotplug_status(body: &MemoryHotplugBody, phase: &Phase) -> Result<Value, ApiError> {
    let s = match phase {
        Phase::Running(ctl) => running_memory_hotplug(ctl)?.status(),
        Phase::NotStarted => vmm::MemoryHotplugStatus {
            total_size_mib: body.total_size_mib,
            slot_size_mib: body.slot_size_mib,
            block_size_mib: body.block_size_mib,
            plugged_size_mib: 0,
            requested_size_mib: 0,
        },
    };
    Ok(json!({
        "total_size_mib": s.total_size_mib,
        "slot_size_mib": s.slot_size_mib,
        "block_size_mib": s.block_size_mib,
        "plugged_size_mib": s.plugged_size_mib,
        "requested_size_mib": s.requested_size_mib,
    }))
}

/// The hotpluggable memory of a running VM.
fn running_memory_hotplug(ctl: &VmController) -> Result<Arc<vmm::MemoryHotplug>, ApiError> {
    ctl.memory_hotplug()
        .ok_or_else(|| ApiError::bad_request(NO_MEMORY_HOTPLUG))
}

/// `vsock` body and the config file's `vsock` section (Firecracker's): a
/// socket device whose host side is unix sockets at `uds_path`, as the
/// VMM sees it (inside its jail, if any).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct VsockBody {
    guest_cid: u32,
    uds_path: PathBuf,
    /// Firecracker's deprecated device id, which its older clients still
    /// send: accepted and ignored, as there is one device. Not shown, as
    /// Firecracker does not show it either.
    #[serde(rename = "vsock_id", default, skip_serializing)]
    _vsock_id: Option<String>,
}

/// The CID a guest gets when the client sent 0: Go clients that leave the
/// CID unset send 0 (firecracker-containerd does), which Firecracker takes;
/// 0 is the hypervisor's, so the guest gets the first CID it may have.
const UNSET_CID_GIVES: u32 = 3;

impl VsockBody {
    fn config(&self) -> vmm::VsockConfig {
        vmm::VsockConfig {
            guest_cid: match self.guest_cid {
                0 => UNSET_CID_GIVES,
                cid => cid,
            },
            uds_path: self.uds_path.clone(),
        }
    }

    /// The CID, checked when it is put; the socket is made at the start
    /// (a path it cannot be made at fails the start).
    fn validate(&self) -> Result<(), ApiError> {
        self.config()
            .validate()
            .map_err(|e| ApiError::bad_request(e.to_string()))
    }
}

/// `logger` body (Firecracker's): every field optional.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct LoggerBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    level: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    show_level: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    show_log_origin: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    module: Option<String>,
}

impl LoggerBody {
    /// The level, checked.
    fn level(&self) -> Result<Option<log::LevelFilter>, String> {
        self.level
            .as_deref()
            .map(crate::logger::parse_level)
            .transpose()
    }

    /// Points the process's logger where and how this says: the file (or
    /// FIFO) is opened now, as the VMM sees it (inside its jail, if any).
    fn apply(&self) -> Result<(), String> {
        let level = self.level()?;
        let file = match &self.log_path {
            Some(p) => {
                Some(crate::logger::open(p).map_err(|e| format!("log_path {}: {e}", p.display()))?)
            }
            None => None,
        };
        crate::logger::update(crate::logger::Update {
            level,
            module: self.module.clone(),
            file,
            show_level: self.show_level,
            show_origin: self.show_log_origin,
            id: None,
        });
        Ok(())
    }
}

/// `entropy` body (Firecracker's): a virtio-rng device.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct EntropyBody {
    #[serde(
        default,
        deserialize_with = "object",
        skip_serializing_if = "Option::is_none"
    )]
    rate_limiter: Option<RateLimiterBody>,
}

/// `metrics` body (Firecracker's).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct MetricsBody {
    metrics_path: PathBuf,
}

/// `PATCH /balloon` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonUpdate {
    amount_mib: u32,
}

/// `PATCH /balloon/statistics` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BalloonStatsUpdate {
    stats_polling_interval_s: u16,
}

/// 4 KiB pages per MiB.
const PAGES_PER_MIB: u32 = 256;

/// `GET /balloon/statistics` of a running VM.
fn balloon_statistics(b: &vmm::BalloonShared) -> Result<Value, ApiError> {
    let stats = b
        .stats()
        .map_err(|e| ApiError::bad_request(e.to_string()))?
        .unwrap_or_default();
    let (target, actual) = (b.target_pages(), b.actual_pages());
    let mut v = json!({
        "target_pages": target,
        "actual_pages": actual,
        "target_mib": target / PAGES_PER_MIB,
        "actual_mib": actual / PAGES_PER_MIB,
    });
    for (name, value) in [
        ("swap_in", stats.swap_in),
        ("swap_out", stats.swap_out),
        ("major_faults", stats.major_faults),
        ("minor_faults", stats.minor_faults),
        ("free_memory", stats.free_memory),
        ("total_memory", stats.total_memory),
        ("available_memory", stats.available_memory),
        ("disk_caches", stats.disk_caches),
        ("hugetlb_allocations", stats.hugetlb_allocations),
        ("hugetlb_failures", stats.hugetlb_failures),
    ] {
        if let Some(value) = value {
            v[name] = json!(value);
        }
    }
    Ok(v)
}

/// The balloon of a running VM.
fn running_balloon(ctl: &VmController) -> Result<std::sync::Arc<vmm::BalloonShared>, ApiError> {
    ctl.balloon()
        .ok_or_else(|| ApiError::bad_request("No balloon device configured."))
}

/// A balloon setting changed: on the running device through `live`
/// (which checks it), before boot in the configuration through `stored`.
fn patch_balloon(
    inst: &Shared,
    live: impl FnOnce(&vmm::BalloonShared) -> Result<(), vmm::BalloonError>,
    stored: impl FnOnce(&mut BalloonBody),
) -> Result<(), ApiError> {
    let mut guard = crate::lock(inst);
    let i = &mut *guard;
    let Some(b) = i.config.balloon.as_mut() else {
        return Err(ApiError::bad_request("No balloon device configured."));
    };
    match &i.phase {
        Phase::Running(ctl) => {
            live(running_balloon(ctl)?.as_ref()).map_err(|e| ApiError::bad_request(e.to_string()))
        }
        Phase::NotStarted => {
            stored(b);
            Ok(())
        }
    }
}

/// `actions` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Action {
    action_type: String,
}

/// `PATCH /vm` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmState {
    state: String,
}

/// The whole configuration, as `GET /vm/config` returns it and
/// `--config-file` accepts it.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FullConfig {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    boot_source: Option<BootSource>,
    #[serde(rename = "machine-config", default = "default_machine")]
    machine_config: MachineConfig,
    #[serde(default)]
    drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    balloon: Option<BalloonBody>,
    #[serde(
        rename = "memory-hotplug",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    memory_hotplug: Option<MemoryHotplugBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vsock: Option<VsockBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    logger: Option<LoggerBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metrics: Option<MetricsBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    entropy: Option<EntropyBody>,
    #[serde(
        rename = "mmds-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    mmds_config: Option<MmdsConfigBody>,
    /// The custom CPU template. Firecracker's config file names a file
    /// holding it; [`load_config_file`] reads that in, so here (and in
    /// `GET /vm/config`) it is the template itself.
    #[serde(
        rename = "cpu-config",
        default,
        deserialize_with = "object",
        skip_serializing_if = "Option::is_none"
    )]
    cpu_config: Option<CpuConfig>,
}

fn default_machine() -> MachineConfig {
    MachineConfig {
        vcpu_count: 1,
        mem_size_mib: 128,
        smt: false,
        track_dirty_pages: false,
        max_vcpus: None,
        cpu_template: None,
    }
}

impl FullConfig {
    /// The drives in the order the guest sees them: the root device first
    /// (`/dev/vda`), the rest as configured.
    fn drives_in_order(&self) -> Vec<&Drive> {
        let mut drives: Vec<&Drive> = self.drives.iter().collect();
        drives.sort_by_key(|d| !d.is_root_device);
        drives
    }

    /// The CPU template the VM starts with: the custom one, or the one the
    /// static name stands for. Both are checked when they are put, and
    /// again here, as this may not fail. Both are set only from a config
    /// file, where the custom template comes after the machine's, so it
    /// applies (as in Firecracker).
    fn cpu_template(&self) -> Result<Option<CpuTemplate>, ApiError> {
        match (&self.cpu_config, &self.machine_config.cpu_template) {
            (Some(c), _) => c
                .template()
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("cpu-config: {e}"))),
            (None, Some(name)) => static_cpu_template(name),
            (None, None) => Ok(None),
        }
    }
}

impl Default for FullConfig {
    fn default() -> Self {
        FullConfig {
            boot_source: None,
            machine_config: default_machine(),
            drives: Vec::new(),
            network_interfaces: Vec::new(),
            balloon: None,
            memory_hotplug: None,
            vsock: None,
            logger: None,
            metrics: None,
            entropy: None,
            mmds_config: None,
            cpu_config: None,
        }
    }
}

/// Where the instance is in its life.
enum Phase {
    NotStarted,
    Running(VmController),
}

struct Instance {
    id: String,
    config: FullConfig,
    phase: Phase,
    console_log: Option<(PathBuf, u64)>,
    exit_file: Option<PathBuf>,
    api_sock: Option<PathBuf>,
    seccomp: bool,
    /// Whether `PUT /logger` and `PUT /metrics` open their files (not in a
    /// VM that never boots, where the fuzzers drive the API).
    live_logger: bool,
    /// Where the metrics lines go, once configured.
    metrics: Option<crate::metrics::Shared>,
    /// The VM thread, which boots a configuration when sent one.
    vm_thread: SyncSender<StartRequest>,
    /// The metadata store: the API writes it, the guest's NICs serve it.
    mmds: Arc<Mutex<vmm::mmds::Mmds>>,
}

/// A configuration to boot and where the VM thread answers: the running
/// VM's controller, or why it could not start.
type StartRequest = (VmConfig, SyncSender<Result<VmController, String>>);

/// Kernels and initrds are files; a drive may also be a block device,
/// as `strato run --drive` and the daemon's spec allow.
fn check_file(what: &str, path: &Path) -> Result<(), ApiError> {
    use std::os::unix::fs::FileTypeExt;
    let block_ok = what == "drive";
    match vmm::fd_path::metadata(path) {
        Ok(m) if m.is_file() || block_ok && m.file_type().is_block_device() => Ok(()),
        Ok(_) => Err(ApiError::bad_request(format!(
            "{what} {} is not a regular file{}",
            path.display(),
            if block_ok { " or a block device" } else { "" }
        ))),
        Err(e) => Err(ApiError::bad_request(format!(
            "{what} {}: {e}",
            path.display()
        ))),
    }
}

fn check_id(kind: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {kind} id {id:?}: use 1 to 64 of [A-Za-z0-9_-]"
        )))
    }
}

/// The template a `cpu_template` name stands for here (None for "None"),
/// or a 400 saying why it cannot be used on this host.
fn static_cpu_template(name: &str) -> Result<Option<CpuTemplate>, ApiError> {
    vmm::static_templates::static_cpu_template(name)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A custom CPU template that parses and is for this architecture.
fn check_cpu_config(c: &CpuConfig) -> Result<(), ApiError> {
    let t = c
        .template()
        .map_err(|e| ApiError::bad_request(format!("cpu-config: {e}")))?;
    let foreign = t.foreign_parts(vmm::config::ARCH_NAME);
    if !foreign.is_empty() {
        return Err(ApiError::bad_request(format!(
            "cpu-config: {} are not for {}",
            foreign.join(" and "),
            vmm::config::ARCH_NAME
        )));
    }
    Ok(())
}

fn check_machine(m: &MachineConfig) -> Result<(), ApiError> {
    if m.vcpu_count == 0 || m.vcpu_count > vmm::config::MAX_VCPUS {
        return Err(ApiError::bad_request(format!(
            "vcpu_count must be 1 to {}",
            vmm::config::MAX_VCPUS
        )));
    }
    if m.mem_size_mib < vmm::config::MIN_MEMORY_MIB {
        return Err(ApiError::bad_request(format!(
            "mem_size_mib must be at least {}",
            vmm::config::MIN_MEMORY_MIB
        )));
    }
    if m.smt && !vmm::config::SMT_SUPPORTED {
        return Err(ApiError::bad_request(
            "smt is not supported on this platform",
        ));
    }
    for n in [Some(m.vcpu_count), m.max_vcpus].into_iter().flatten() {
        if m.smt && n > 1 && n % 2 == 1 {
            return Err(ApiError::bad_request(format!(
                "with smt, vcpu_count and max_vcpus must be 1 or even (got {n})"
            )));
        }
    }
    if m.track_dirty_pages {
        return Err(ApiError::bad_request("track_dirty_pages is not supported"));
    }
    // Firecracker's static templates: refused here already when they are
    // for another architecture or another vendor's CPU, so that the client
    // hears of it from the request that set it.
    if let Some(name) = &m.cpu_template {
        static_cpu_template(name)?;
    }
    if let Some(max) = m.max_vcpus {
        if max < m.vcpu_count || max > vmm::config::MAX_VCPUS {
            return Err(ApiError::bad_request(format!(
                "max_vcpus must be vcpu_count ({}) to {}",
                m.vcpu_count,
                vmm::config::MAX_VCPUS
            )));
        }
    }
    Ok(())
}

/// `GET /machine-config` of a running VM: the vCPU count asked for last,
/// the maximum, and where the guest is (`vcpus_present`: plugged and not
/// ejected; `vcpus_inserting`/`vcpus_removing`: events the guest has not
/// taken yet).
fn running_machine(m: &MachineConfig, ctl: &VmController) -> Value {
    let c = ctl.vcpu_counts();
    let mut v = serde_json::to_value(m).unwrap_or(Value::Null);
    if let Value::Object(o) = &mut v {
        o.insert("vcpu_count".into(), c.requested.into());
        o.insert("max_vcpus".into(), c.max.into());
        o.insert("vcpus_present".into(), c.present.into());
        o.insert("vcpus_inserting".into(), c.inserting.into());
        o.insert("vcpus_removing".into(), c.removing.into());
    }
    v
}

/// `PATCH /machine-config` after boot: `vcpu_count` alone, which plugs or
/// unplugs vCPUs.
fn resize_running(p: &MachineConfigPatch, ctl: &VmController) -> Result<(), ApiError> {
    let others = p.mem_size_mib.is_some()
        || p.smt.is_some()
        || p.track_dirty_pages.is_some()
        || p.max_vcpus.is_some()
        || p.cpu_template.is_some();
    let Some(count) = p.vcpu_count.filter(|_| !others) else {
        return Err(ApiError::bad_request(format!(
            "{FAULT_AFTER_START} After boot only vcpu_count can change."
        )));
    };
    ctl.resize_vcpus(count)
        .map(|_| ())
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

impl Instance {
    fn state_name(&self) -> &'static str {
        match &self.phase {
            Phase::NotStarted => "Not started",
            Phase::Running(c) if c.is_paused() => "Paused",
            Phase::Running(_) => "Running",
        }
    }

    fn before_start(&self) -> Result<(), ApiError> {
        match self.phase {
            Phase::NotStarted => Ok(()),
            Phase::Running(_) => Err(ApiError::bad_request(FAULT_AFTER_START)),
        }
    }

    fn controller(&self) -> Result<&VmController, ApiError> {
        match &self.phase {
            Phase::Running(c) => Ok(c),
            Phase::NotStarted => Err(ApiError::bad_request(FAULT_NOT_STARTED)),
        }
    }

    fn info(&self) -> Value {
        let (boot, uptime) = match &self.phase {
            Phase::Running(c) => (
                c.boot_time().map(|t| t.as_micros() as u64),
                Some(c.uptime().as_millis() as u64),
            ),
            Phase::NotStarted => (None, None),
        };
        json!({
            "id": self.id,
            "state": self.state_name(),
            "vmm_version": env!("CARGO_PKG_VERSION"),
            "app_name": "strato",
            "boot_time_us": boot,
            "uptime_ms": uptime,
        })
    }

    fn put_drive(&mut self, id: &str, d: Drive) -> Result<(), ApiError> {
        self.before_start()?;
        check_id("drive", id)?;
        if d.drive_id != id {
            return Err(ApiError::bad_request(format!(
                "drive_id {:?} does not match the path id {id:?}",
                d.drive_id
            )));
        }
        check_file("drive", &d.path_on_host)?;
        // Both are taken with Firecracker's values and change nothing
        // here: strato's block device always honours flushes (Writeback)
        // and serves requests on its event loop (Async is served as Sync).
        check_choice(
            "cache_type",
            d.cache_type.as_deref(),
            &["Unsafe", "Writeback"],
        )?;
        check_choice("io_engine", d.io_engine.as_deref(), &["Sync", "Async"])?;
        if d.is_root_device
            && self
                .config
                .drives
                .iter()
                .any(|o| o.is_root_device && o.drive_id != id)
        {
            return Err(ApiError::bad_request("a root device is already configured"));
        }
        match self.config.drives.iter_mut().find(|o| o.drive_id == id) {
            Some(slot) => *slot = d,
            None => {
                if self.config.drives.len() >= vmm::config::MAX_VIRTIO_DEVICES {
                    return Err(ApiError::bad_request("too many devices"));
                }
                self.config.drives.push(d)
            }
        }
        Ok(())
    }

    /// A drive's new image and/or rate limits: stored before the start,
    /// applied to the running device after it (the guest is told the new
    /// capacity).
    fn patch_drive(&mut self, id: &str, u: DriveUpdate) -> Result<(), ApiError> {
        if u.drive_id != id {
            return Err(ApiError::bad_request(format!(
                "drive_id {:?} does not match the path id {id:?}",
                u.drive_id
            )));
        }
        if let Some(p) = &u.path_on_host {
            check_file("drive", p)?;
        }
        let Some(index) = self
            .config
            .drives_in_order()
            .iter()
            .position(|d| d.drive_id == id)
        else {
            return Err(ApiError::bad_request(format!("no drive {id:?}")));
        };
        if let Phase::Running(ctl) = &self.phase {
            let limits = u.rate_limiter.as_ref().map(RateLimiterBody::config);
            ctl.update_drive(index, u.path_on_host.as_deref(), limits.as_ref())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        if let Some(d) = self.config.drives.iter_mut().find(|d| d.drive_id == id) {
            if let Some(p) = u.path_on_host {
                d.path_on_host = p;
            }
            if u.rate_limiter.is_some() {
                d.rate_limiter = u.rate_limiter;
            }
        }
        Ok(())
    }

    /// A network interface's new rate limits, stored or applied as
    /// [`Self::patch_drive`] does.
    fn patch_net(&mut self, id: &str, u: NetUpdate) -> Result<(), ApiError> {
        if u.iface_id != id {
            return Err(ApiError::bad_request(format!(
                "iface_id {:?} does not match the path id {id:?}",
                u.iface_id
            )));
        }
        let Some(index) = self
            .config
            .network_interfaces
            .iter()
            .position(|n| n.iface_id == id)
        else {
            return Err(ApiError::bad_request(format!(
                "no network interface {id:?}"
            )));
        };
        if let Phase::Running(ctl) = &self.phase {
            let rx = u.rx_rate_limiter.as_ref().map(RateLimiterBody::config);
            let tx = u.tx_rate_limiter.as_ref().map(RateLimiterBody::config);
            ctl.update_net(index, rx.as_ref(), tx.as_ref())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
        }
        let n = &mut self.config.network_interfaces[index];
        if u.rx_rate_limiter.is_some() {
            n.rx_rate_limiter = u.rx_rate_limiter;
        }
        if u.tx_rate_limiter.is_some() {
            n.tx_rate_limiter = u.tx_rate_limiter;
        }
        Ok(())
    }

    fn put_net(&mut self, id: &str, n: NetworkInterface) -> Result<(), ApiError> {
        self.before_start()?;
        check_id("network interface", id)?;
        if n.iface_id != id {
            return Err(ApiError::bad_request(format!(
                "iface_id {:?} does not match the path id {id:?}",
                n.iface_id
            )));
        }
        // Parse now so a bad name or MAC is reported by this request.
        net_config(&n, 0)?;
        match self
            .config
            .network_interfaces
            .iter_mut()
            .find(|o| o.iface_id == id)
        {
            Some(slot) => *slot = n,
            None => {
                if self.config.network_interfaces.len() >= vmm::config::MAX_VIRTIO_DEVICES {
                    return Err(ApiError::bad_request("too many devices"));
                }
                self.config.network_interfaces.push(n)
            }
        }
        Ok(())
    }

    /// Builds the VM config: root drive first (vda), then the others in
    /// the order they were added, as Firecracker does.
    fn vm_config(&self) -> Result<VmConfig, ApiError> {
        let boot = self.config.boot_source.as_ref().ok_or_else(|| {
            ApiError::bad_request("Cannot start microvm without kernel configuration.")
        })?;
        let m = &self.config.machine_config;
        let mut config = VmConfig::new(&boot.kernel_image_path, m.vcpu_count, m.mem_size_mib);
        config.max_vcpus = m.max_vcpus;
        config.smt = m.smt;
        config.cpu_template = self.config.cpu_template()?;
        config.initrd = boot.initrd_path.clone();
        config.balloon = self.config.balloon.as_ref().map(BalloonBody::config);
        config.memory_hotplug = self
            .config
            .memory_hotplug
            .as_ref()
            .map(MemoryHotplugBody::config);
        config.vsock = self.config.vsock.as_ref().map(VsockBody::config);
        config.entropy = self
            .config
            .entropy
            .as_ref()
            .map(|e| limiter(&e.rate_limiter));
        let mut cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| vmm::DEFAULT_CMDLINE.to_string());
        let drives = self.config.drives_in_order();
        if let Some(root) = drives.first().filter(|d| d.is_root_device) {
            if !cmdline.split_whitespace().any(|w| w.starts_with("root=")) {
                let mode = if root.is_read_only { "ro" } else { "rw" };
                cmdline.push_str(&format!(" root=/dev/vda {mode}"));
            }
        }
        config.cmdline = cmdline;
        config.seccomp = self.seccomp;
        config.drives = drives
            .into_iter()
            .map(|d| BlockConfig {
                path: d.path_on_host.clone(),
                read_only: d.is_read_only,
                serial: Some(d.drive_id.chars().take(20).collect()),
                rate_limiter: limiter(&d.rate_limiter),
            })
            .collect();
        config.nets = self
            .config
            .network_interfaces
            .iter()
            .enumerate()
            .map(|(i, n)| net_config(n, i))
            .collect::<Result<_, _>>()?;
        if let Some(m) = &self.config.mmds_config {
            let service = vmm::mmds::MmdsNet {
                store: self.mmds.clone(),
                ipv4: m.ipv4_address.unwrap_or(vmm::mmds::DEFAULT_IPV4),
            };
            for (nic, n) in config.nets.iter_mut().zip(&self.config.network_interfaces) {
                if m.network_interfaces.contains(&n.iface_id) {
                    nic.mmds = Some(service.clone());
                }
            }
        }
        // As Firecracker: the console is the process's own terminal (stdin
        // typed into the guest's ttyS0, its output on stdout) unless it goes
        // to a log file. A stdin that cannot be polled (/dev/null, as the
        // daemon starts instances) gives no input, nor does the terminal
        // of a background job (see `vm_thread`).
        (config.serial_out, config.serial_in) = match &self.console_log {
            Some((path, max)) => (
                SerialOutput::Writer(Box::new(
                    RotatingLog::open(path, *max)
                        .map_err(|e| ApiError::bad_request(format!("console log: {e}")))?,
                )),
                SerialInput::None,
            ),
            None => (SerialOutput::Stdout, SerialInput::Stdin),
        };
        Ok(config)
    }
}

fn net_config(n: &NetworkInterface, index: usize) -> Result<NetConfig, ApiError> {
    let mac = n
        .guest_mac
        .as_deref()
        .map(parse_mac)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let mut cfg = vmm::config::net_config(n.host_dev_name.clone(), mac, index)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    cfg.rx_rate_limiter = limiter(&n.rx_rate_limiter);
    cfg.tx_rate_limiter = limiter(&n.tx_rate_limiter);
    Ok(cfg)
}

/// The console log: appends, and when it passes `max` bytes moves it to
/// FILE.1 (replacing the previous one) and starts afresh, so at most about
/// twice `max` bytes are kept.
pub struct RotatingLog {
    path: PathBuf,
    file: std::fs::File,
    len: u64,
    max: u64,
}

impl RotatingLog {
    /// Opens (appending to) `path`.
    pub fn open(path: &Path, max: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            file,
            len,
            max: max.max(1),
        })
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, old)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.len = 0;
        Ok(())
    }
}

impl Write for RotatingLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.len >= self.max {
            self.rotate()?;
        }
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Writes `value` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, value: &Value) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(value.to_string().as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Exit status for how the VM ended (see `strato run`).
fn exit_status(reason: &ExitReason, signal: i32) -> i32 {
    match reason {
        ExitReason::Stopped if signal != 0 => 128 + signal,
        r if r.is_success() => 0,
        ExitReason::VmmError(_) => crate::run::EXIT_VMM_ERROR,
        _ => crate::run::EXIT_GUEST_FAILED,
    }
}

/// Records how the VM ended, removes the socket and ends the process.
fn finish(
    reason: &ExitReason,
    boot_time_us: Option<u64>,
    signal: i32,
    exit_file: Option<&Path>,
    api_sock: Option<&Path>,
) -> ! {
    let status = exit_status(reason, signal);
    let reason_text = if signal != 0 && *reason == ExitReason::Stopped {
        format!("stopped by signal {signal}")
    } else {
        reason.to_string()
    };
    if let Some(path) = exit_file {
        let record = json!({
            "reason": reason_text,
            "success": status == 0,
            "exit_status": status,
            "boot_time_us": boot_time_us,
        });
        if let Err(e) = write_atomic(path, &record) {
            eprintln!("strato: cannot write {}: {e}", path.display());
        }
    }
    if let Some(sock) = api_sock {
        let _ = std::fs::remove_file(sock);
        // The request that ended the VM (a power button, Ctrl-Alt-Del)
        // still gets its answer; a stalled client does not hold the exit.
        http::wait_for_responses(RESPONSE_DRAIN);
    }
    if status != 0 {
        eprintln!("strato: {reason_text}");
    }
    std::process::exit(status);
}

type Shared = Arc<Mutex<Instance>>;
type Signal = Arc<std::sync::atomic::AtomicI32>;

/// Starts the VM on the VM thread.
fn start(inst: &Shared) -> Result<(), ApiError> {
    let mut guard = crate::lock(inst);
    guard.before_start()?;
    let config = guard.vm_config()?;
    let (answer, started) = std::sync::mpsc::sync_channel(1);
    let gone = || ApiError::new(500, "the VM thread has ended");
    guard.vm_thread.send((config, answer)).map_err(|_| gone())?;
    let ctl = started
        .recv()
        .map_err(|_| gone())?
        .map_err(ApiError::bad_request)?;
    guard.phase = Phase::Running(ctl);
    let metrics = guard.metrics.is_some();
    drop(guard);
    // Firecracker writes a metrics line as the VM starts, then one a
    // minute: its clients read the first to see the VMM running.
    if metrics {
        if let Err(e) = flush_metrics(inst) {
            log::warn!("cannot write the metrics: {e}");
        }
    }
    Ok(())
}

/// Where the VM thread reports how the VM ended.
struct Ending {
    signal: Signal,
    exit_file: Option<PathBuf>,
    api_sock: Option<PathBuf>,
}

/// The VM thread: boots the first configuration that starts, then, under
/// its seccomp filter, waits for the VM and ends the process with it.
/// Booting here rather than on an API thread means that the vCPU and
/// event-loop threads inherit no API filter, and that the API threads
/// never need the system calls of building a VM (opening /dev/kvm,
/// images and taps, mapping memory).
fn vm_thread(requests: Receiver<StartRequest>, filter: ThreadFilter, ending: Ending) {
    for (mut config, answer) in requests {
        // Here, not on the API thread, whose filter allows no terminal
        // calls.
        if matches!(config.serial_in, SerialInput::Stdin) && !crate::terminal::stdin_is_ours() {
            config.serial_in = SerialInput::None;
        }
        let interactive = matches!(config.serial_in, SerialInput::Stdin);
        let mut vm = match Vm::start(config) {
            Ok(vm) => vm,
            Err(e) => {
                let _ = answer.send(Err(e.to_string()));
                continue;
            }
        };
        // Firecracker's terminal while the guest runs: raw, every key to
        // the guest's console.
        let raw = interactive
            .then(crate::terminal::RawTerminal::stdin_every_key)
            .flatten();
        if let Err(e) = filter.install() {
            vm.stop();
            vm.wait();
            let _ = answer.send(Err(e.to_string()));
            continue;
        }
        let ctl = vm.controller();
        let _ = answer.send(Ok(ctl.clone()));
        filter.probe();
        let reason = vm.wait();
        // `finish` exits the process, which runs no destructors: the
        // terminal is put back and the VM goes first, and with it the files
        // it made (the vsock device's socket), as when `strato run` returns.
        drop(raw);
        drop(vm);
        let boot = ctl.boot_time().map(|t| t.as_micros() as u64);
        let sig = ending.signal.load(std::sync::atomic::Ordering::SeqCst);
        finish(
            &reason,
            boot,
            sig,
            ending.exit_file.as_deref(),
            ending.api_sock.as_deref(),
        );
    }
}

/// How `InstanceStart` boots the VM of an instance.
type Starter<'a> = &'a dyn Fn(&Shared) -> Result<(), ApiError>;

/// Handles one request; `start` boots the VM on `InstanceStart`.
fn handle(req: &Request, inst: &Shared, start: Starter) -> Result<Reply, ApiError> {
    let url = req.url().to_string();
    let path = url.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let ok = Ok(Reply::Empty(204));
    match (&method, parts.as_slice()) {
        (Method::Get, [""]) => Ok(Reply::Json(200, crate::lock(inst).info())),
        (Method::Get, ["version"]) => Ok(Reply::Json(
            200,
            json!({ "firecracker_version": FIRECRACKER_API_VERSION, "strato_version": env!("CARGO_PKG_VERSION") }),
        )),
        (Method::Get, ["vm", "config"]) => {
            let cfg = crate::lock(inst).config.clone();
            Ok(Reply::Json(
                200,
                serde_json::to_value(cfg).unwrap_or(Value::Null),
            ))
        }
        (Method::Get, ["machine-config"]) => {
            let i = crate::lock(inst);
            let m = &i.config.machine_config;
            let v = match &i.phase {
                Phase::Running(ctl) => running_machine(m, ctl),
                Phase::NotStarted => serde_json::to_value(m).unwrap_or(Value::Null),
            };
            Ok(Reply::Json(200, v))
        }
        (Method::Put, ["machine-config"]) => {
            let m: MachineConfig = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            check_machine(&m)?;
            // As in Firecracker, the template set last applies: a static
            // one (or "None") replaces a custom one.
            if m.cpu_template.is_some() {
                i.config.cpu_config = None;
            }
            i.config.machine_config = m;
            ok
        }
        (Method::Put, ["cpu-config"]) => {
            let c: CpuConfig = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            check_cpu_config(&c)?;
            // The custom template replaces a static one.
            i.config.machine_config.cpu_template = None;
            i.config.cpu_config = Some(c);
            ok
        }
        (Method::Patch, ["machine-config"]) => {
            let p: MachineConfigPatch = http::json_body(req)?;
            let mut i = crate::lock(inst);
            if let Phase::Running(ctl) = &i.phase {
                let ctl = ctl.clone();
                // Not under the instance lock: a paused or busy guest must
                // not hold up other requests.
                drop(i);
                resize_running(&p, &ctl)?;
                return ok;
            }
            i.before_start()?;
            let mut m = i.config.machine_config.clone();
            m.vcpu_count = p.vcpu_count.unwrap_or(m.vcpu_count);
            m.mem_size_mib = p.mem_size_mib.unwrap_or(m.mem_size_mib);
            m.smt = p.smt.unwrap_or(m.smt);
            m.track_dirty_pages = p.track_dirty_pages.unwrap_or(m.track_dirty_pages);
            m.max_vcpus = p.max_vcpus.or(m.max_vcpus);
            m.cpu_template = p.cpu_template.clone().or(m.cpu_template);
            check_machine(&m)?;
            if p.cpu_template.is_some() {
                i.config.cpu_config = None;
            }
            i.config.machine_config = m;
            ok
        }
        (Method::Put, ["boot-source"]) => {
            let b: BootSource = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            check_file("kernel", &b.kernel_image_path)?;
            if let Some(initrd) = &b.initrd_path {
                check_file("initrd", initrd)?;
            }
            if b.boot_args
                .as_ref()
                .is_some_and(|a| a.len() >= vmm::config::CMDLINE_MAX_SIZE)
            {
                return Err(ApiError::bad_request("boot_args is too long"));
            }
            i.config.boot_source = Some(b);
            ok
        }
        (Method::Put, ["drives", id]) => {
            let d: Drive = http::json_body(req)?;
            crate::lock(inst).put_drive(id, d)?;
            ok
        }
        (Method::Patch, ["drives", id]) => {
            let u: DriveUpdate = http::json_body(req)?;
            crate::lock(inst).patch_drive(id, u)?;
            ok
        }
        (Method::Patch, ["network-interfaces", id]) => {
            let u: NetUpdate = http::json_body(req)?;
            crate::lock(inst).patch_net(id, u)?;
            ok
        }
        (Method::Put, ["logger"]) => {
            let b: LoggerBody = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            b.level().map_err(ApiError::bad_request)?;
            if i.live_logger {
                b.apply().map_err(ApiError::bad_request)?;
            }
            i.config.logger = Some(b);
            ok
        }
        (Method::Put, ["entropy"]) => {
            let b: EntropyBody = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            i.config.entropy = Some(b);
            ok
        }
        (Method::Put, ["metrics"]) => {
            let b: MetricsBody = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            if i.config.metrics.is_some() {
                return Err(ApiError::bad_request("the metrics are already configured"));
            }
            if i.live_logger {
                let w = crate::metrics::Writer::open(&b.metrics_path).map_err(|e| {
                    ApiError::bad_request(format!("metrics_path {}: {e}", b.metrics_path.display()))
                })?;
                // From an API thread: the new thread keeps its filter. It
                // locks the instance only when it writes, a minute on.
                let inst2 = inst.clone();
                std::thread::Builder::new()
                    .name("metrics".into())
                    .spawn(move || flush_every_interval(&inst2))
                    .map_err(|e| {
                        ApiError::bad_request(format!("cannot start the metrics thread: {e}"))
                    })?;
                i.metrics = Some(Arc::new(Mutex::new(w)));
            }
            i.config.metrics = Some(b);
            ok
        }
        (Method::Put, ["balloon"]) => {
            let b: BalloonBody = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            if b.free_page_hinting {
                return Err(ApiError::bad_request(
                    "free_page_hinting is not supported (free_page_reporting is)",
                ));
            }
            let mem = i.config.machine_config.mem_size_mib;
            if u64::from(b.amount_mib) > mem {
                return Err(ApiError::bad_request(format!(
                    "amount_mib {} is more than the guest's {mem} MiB of memory",
                    b.amount_mib
                )));
            }
            i.config.balloon = Some(b);
            ok
        }
        (Method::Get, ["balloon"]) => {
            let i = crate::lock(inst);
            let Some(b) = &i.config.balloon else {
                return Err(ApiError::bad_request("No balloon device configured."));
            };
            let mut v = serde_json::to_value(b).unwrap_or(Value::Null);
            if let Phase::Running(ctl) = &i.phase {
                if let Some(shared) = ctl.balloon() {
                    let c = shared.config();
                    v["amount_mib"] = json!(c.amount_mib);
                    v["stats_polling_interval_s"] = json!(c.stats_polling_interval_s);
                }
            }
            Ok(Reply::Json(200, v))
        }
        (Method::Patch, ["balloon"]) => {
            let u: BalloonUpdate = http::json_body(req)?;
            patch_balloon(
                inst,
                |shared| shared.set_target_mib(u.amount_mib),
                |b| b.amount_mib = u.amount_mib,
            )?;
            ok
        }
        (Method::Get, ["balloon", "statistics"]) => {
            let i = crate::lock(inst);
            if i.config.balloon.is_none() {
                return Err(ApiError::bad_request("No balloon device configured."));
            }
            let Phase::Running(ctl) = &i.phase else {
                return Err(ApiError::bad_request(FAULT_NOT_STARTED));
            };
            let shared = running_balloon(ctl)?;
            Ok(Reply::Json(200, balloon_statistics(&shared)?))
        }
        (Method::Patch, ["balloon", "statistics"]) => {
            let u: BalloonStatsUpdate = http::json_body(req)?;
            patch_balloon(
                inst,
                |shared| shared.set_stats_interval(u.stats_polling_interval_s),
                |b| b.stats_polling_interval_s = u.stats_polling_interval_s,
            )?;
            ok
        }
        (Method::Put, ["hotplug", "memory"]) => {
            let b: MemoryHotplugBody = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            b.validate()?;
            i.config.memory_hotplug = Some(b);
            ok
        }
        (Method::Get, ["hotplug", "memory"]) => {
            let i = crate::lock(inst);
            let Some(b) = &i.config.memory_hotplug else {
                return Err(ApiError::bad_request(NO_MEMORY_HOTPLUG));
            };
            Ok(Reply::Json(200, memory_hotplug_status(b, &i.phase)?))
        }
        (Method::Patch, ["hotplug", "memory"]) => {
            let u: MemoryHotplugUpdate = http::json_body(req)?;
            let i = crate::lock(inst);
            if i.config.memory_hotplug.is_none() {
                return Err(ApiError::bad_request(NO_MEMORY_HOTPLUG));
            }
            // The requested size is the guest's to follow: there is no
            // guest to ask before the start, and nothing to keep for it.
            running_memory_hotplug(i.controller()?)?
                .set_requested_mib(u.requested_size_mib)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            ok
        }
        (Method::Put, ["vsock"]) => {
            let b: VsockBody = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            b.validate()?;
            // As in Firecracker, a second PUT before the start replaces
            // the first.
            i.config.vsock = Some(b);
            ok
        }
        (Method::Put, ["network-interfaces", id]) => {
            let n: NetworkInterface = http::json_body(req)?;
            crate::lock(inst).put_net(id, n)?;
            ok
        }
        (Method::Put, ["actions"]) => {
            let a: Action = http::json_body(req)?;
            match a.action_type.as_str() {
                "InstanceStart" => start(inst)?,
                "SendCtrlAltDel" => crate::lock(inst)
                    .controller()?
                    .send_ctrl_alt_del()
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
                "SendPowerButton" => crate::lock(inst)
                    .controller()?
                    .press_power_button()
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
                "Shutdown" => {
                    // Not under the instance lock: this waits up to
                    // SHUTDOWN_ACK for the guest to take the button.
                    let ctl = crate::lock(inst).controller()?.clone();
                    ctl.request_shutdown(SHUTDOWN_ACK)
                        .map_err(|e| ApiError::bad_request(e.to_string()))?;
                }
                "FlushMetrics" => flush_metrics(inst)
                    .map_err(|e| ApiError::bad_request(format!("cannot write the metrics: {e}")))?,
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown action_type {other:?} (InstanceStart, SendCtrlAltDel, \
                         SendPowerButton, Shutdown, FlushMetrics)"
                    )))
                }
            }
            ok
        }
        (Method::Patch, ["vm"]) => {
            let s: VmState = http::json_body(req)?;
            let ctl = crate::lock(inst).controller()?.clone();
            match s.state.as_str() {
                "Paused" => ctl.pause(),
                "Resumed" => ctl.resume(),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "unknown state {other:?} (Paused, Resumed)"
                    )))
                }
            }
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
            ok
        }
        (Method::Put, ["mmds", "config"]) => {
            let m: MmdsConfigBody = http::json_body(req)?;
            let mut i = crate::lock(inst);
            i.before_start()?;
            m.validate(&i.config.network_interfaces)?;
            m.apply(&i.mmds);
            i.config.mmds_config = Some(m);
            ok
        }
        (Method::Put, ["mmds"]) => {
            let v: Value = http::json_body(req)?;
            let store = crate::lock(inst).mmds.clone();
            crate::lock(&store)
                .put(v)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            ok
        }
        (Method::Patch, ["mmds"]) => {
            let v: Value = http::json_body(req)?;
            let store = crate::lock(inst).mmds.clone();
            crate::lock(&store)
                .patch(&v)
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            ok
        }
        (Method::Get, ["mmds"]) => {
            let store = crate::lock(inst).mmds.clone();
            let data = crate::lock(&store).data();
            Ok(Reply::Json(200, data))
        }
        (_, ["snapshot", ..]) => Err(ApiError::bad_request("snapshots are not supported")),
        (_, [what @ ("cpu-config" | "pmem"), ..]) => Err(ApiError::bad_request(format!(
            "/{what} is not supported yet"
        ))),
        _ => Err(ApiError::bad_request(format!(
            "Invalid request method and/or path: {method} {path}"
        ))),
    }
}

/// Enters the jail if asked (see `crate::jail`), pointing the VMM's own
/// files at their places inside it.
fn jail(args: &mut VmArgs) -> Result<Option<crate::jail::Jailed>, crate::jail::Error> {
    if args.jail.jail.is_none() {
        return Ok(None);
    }
    let mut io = crate::jail::Io {
        api_sock: args.api_sock.take().filter(|_| !args.no_api),
        console_log: args.console_log.take(),
        exit_file: args.exit_file.take(),
    };
    let jailed = crate::jail::enter(&args.jail, &args.id, &mut io)?;
    args.api_sock = io.api_sock;
    args.console_log = io.console_log;
    args.exit_file = io.exit_file;
    Ok(Some(jailed))
}

/// Runs `strato vm`.
pub fn main(mut args: VmArgs) -> i32 {
    if let Some(fd) = args.wait_fd {
        if !wait_for_go(fd) {
            eprintln!("strato: the daemon went away before recording this VMM; exiting");
            return crate::run::EXIT_VMM_ERROR;
        }
    }
    // Read from the host's tree, before a jail hides it; the paths in it
    // are the guest files' paths as the VMM will see them.
    let config = match &args.config_file {
        Some(path) => match load_config_file(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("strato: {e}");
                return crate::run::EXIT_VMM_ERROR;
            }
        },
        None => FullConfig::default(),
    };
    // The store is filled from --metadata before the config file's VM
    // could start, so the guest never sees it empty (Firecracker's order).
    let mmds_limit = args
        .mmds_size_limit
        .unwrap_or(args.http_api_max_payload_size) as usize;
    let mmds = Arc::new(Mutex::new(vmm::mmds::Mmds::new(mmds_limit)));
    if let Some(m) = &config.mmds_config {
        m.apply(&mmds);
    }
    if let Some(path) = &args.metadata {
        let filled = read_metadata(path, mmds_limit).and_then(|v| {
            crate::lock(&mmds)
                .put(v)
                .map_err(|e| format!("--metadata: {e}"))
        });
        if let Err(e) = filled {
            eprintln!("strato: {e}");
            return crate::run::EXIT_VMM_ERROR;
        }
    }
    if let Some(l) = &config.logger {
        if let Err(e) = l.apply() {
            eprintln!("strato: config file logger: {e}");
            return crate::run::EXIT_VMM_ERROR;
        }
    }
    let mut config = config;
    if let Some(path) = &args.metrics_path {
        config.metrics = Some(MetricsBody {
            metrics_path: path.clone(),
        });
    }
    let startup_metrics = match &config.metrics {
        Some(m) => match crate::metrics::Writer::open(&m.metrics_path) {
            Ok(w) => Some(w),
            Err(e) => {
                eprintln!("strato: metrics {}: {e}", m.metrics_path.display());
                return crate::run::EXIT_VMM_ERROR;
            }
        },
        None => None,
    };
    if let Err(e) = take_taps(&args) {
        eprintln!("strato: {e}");
        return crate::run::EXIT_VMM_ERROR;
    }
    // Before any thread starts: the jail forks.
    let jailed = match jail(&mut args) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("strato: {e}");
            return crate::run::EXIT_VMM_ERROR;
        }
    };
    let signals = match crate::run::block_stop_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("strato: cannot set up signal handling: {e}");
            return crate::run::EXIT_VMM_ERROR;
        }
    };
    // The socket is made while still root (it is 0600 root's, or the
    // group's, as without a jail); privileges go before any request.
    let server = match (&args.api_sock, args.no_api) {
        (Some(path), false) => match http::bind(path, args.api_sock_group)
            .map(|s| s.with_max_body(args.http_api_max_payload_size as usize))
        {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("strato: {e}");
                return crate::run::EXIT_VMM_ERROR;
            }
        },
        _ => None,
    };
    if let Some(j) = &jailed {
        if let Err(e) = j.drop_privileges() {
            eprintln!("strato: {e}");
            if let Some(sock) = &args.api_sock {
                let _ = std::fs::remove_file(sock);
            }
            return crate::run::EXIT_VMM_ERROR;
        }
    }
    let seccomp = !args.no_seccomp;
    let filters = ThreadFilter::new(ThreadKind::Vmm, seccomp)
        .and_then(|vmm| Ok((vmm, ThreadFilter::new(ThreadKind::Api, seccomp)?)));
    let (vmm_filter, api_filter) = match filters {
        Ok(f) => f,
        Err(e) => {
            eprintln!("strato: {e}");
            return crate::run::EXIT_VMM_ERROR;
        }
    };
    let api_sock = server.as_ref().and(args.api_sock.clone());
    let signal: Signal = Arc::new(std::sync::atomic::AtomicI32::new(0));
    let (requests, pending) = std::sync::mpsc::sync_channel(0);
    let ending = Ending {
        signal: signal.clone(),
        exit_file: args.exit_file.clone(),
        api_sock: api_sock.clone(),
    };
    let filter = vmm_filter.clone();
    let spawned = std::thread::Builder::new()
        .name("vm".into())
        .spawn(move || vm_thread(pending, filter, ending));
    if let Err(e) = spawned {
        eprintln!("strato: cannot start the VM thread: {e}");
        return crate::run::EXIT_VMM_ERROR;
    }
    let inst: Shared = Arc::new(Mutex::new(Instance {
        id: args.id.clone(),
        config,
        phase: Phase::NotStarted,
        console_log: args.console_log.clone().map(|p| (p, args.console_log_max)),
        exit_file: args.exit_file.clone(),
        api_sock,
        seccomp,
        live_logger: true,
        metrics: None,
        vm_thread: requests,
        mmds,
    }));

    // Metrics from the config file or the command line: opened before the
    // jail hid the host's tree, flushed on a thread of the VMM's filter.
    if let Some(w) = startup_metrics {
        crate::lock(&inst).metrics = Some(Arc::new(Mutex::new(w)));
        let inst2 = inst.clone();
        if let Err(e) = vmm::seccomp::spawn("metrics".into(), vmm_filter.clone(), move || {
            flush_every_interval(&inst2)
        }) {
            eprintln!("strato: cannot start the metrics thread: {e}");
            return crate::run::EXIT_VMM_ERROR;
        }
    }

    // SIGINT/SIGTERM stop a running VM (the VM thread then ends the
    // process) or end a process whose VM never started.
    let on_signal = {
        let inst = inst.clone();
        move |sig| {
            signal.store(sig, std::sync::atomic::Ordering::SeqCst);
            let i = crate::lock(&inst);
            match &i.phase {
                Phase::Running(ctl) => ctl.stop(),
                Phase::NotStarted => finish(
                    &ExitReason::Stopped,
                    None,
                    sig,
                    i.exit_file.as_deref(),
                    i.api_sock.as_deref(),
                ),
            }
        }
    };
    if let Err(e) = crate::run::signal_thread(signals, &vmm_filter, on_signal) {
        eprintln!("strato: {e}");
        return crate::run::EXIT_VMM_ERROR;
    }

    if args.config_file.is_some() {
        if let Err(e) = start(&inst) {
            eprintln!("strato: {}", e.message);
            if let Some(sock) = &args.api_sock {
                let _ = std::fs::remove_file(sock);
            }
            return crate::run::EXIT_VMM_ERROR;
        }
    }
    // This thread serves the API, or only waits while the VM thread runs.
    let filter = if server.is_some() {
        &api_filter
    } else {
        &vmm_filter
    };
    if let Err(e) = filter.install() {
        eprintln!("strato: {e}");
        return crate::run::EXIT_VMM_ERROR;
    }
    match server {
        Some(server) => {
            let serial = Mutex::new(());
            server.serve(API_CONNECTIONS, move |req| {
                let _one_at_a_time = crate::lock(&serial);
                if matches!(crate::lock(&inst).phase, Phase::Running(_)) {
                    api_filter.probe();
                }
                http::reply(handle(req, &inst, &start))
            })
        }
        None => loop {
            // The VM thread ends the process.
            std::thread::park();
        },
    }
}

/// Writes one metrics line for `inst`, if its metrics are configured.
fn flush_metrics(inst: &Shared) -> std::io::Result<()> {
    let (writer, metrics, drives, nets) = {
        let i = crate::lock(inst);
        let Some(w) = i.metrics.clone() else {
            return Ok(());
        };
        let metrics = match &i.phase {
            Phase::Running(ctl) => Some(ctl.metrics()),
            Phase::NotStarted => None,
        };
        let drives: Vec<String> = i
            .config
            .drives_in_order()
            .iter()
            .map(|d| d.drive_id.clone())
            .collect();
        let nets: Vec<String> = i
            .config
            .network_interfaces
            .iter()
            .map(|n| n.iface_id.clone())
            .collect();
        (w, metrics, drives, nets)
    };
    let source = metrics.as_ref().map(|m| crate::metrics::Source {
        metrics: m,
        drives: &drives,
        nets: &nets,
    });
    let result = crate::lock(&writer).flush(source.as_ref());
    result
}

/// The periodic metrics lines, for the life of the process.
fn flush_every_interval(inst: &Shared) {
    loop {
        std::thread::sleep(crate::metrics::INTERVAL);
        if let Err(e) = flush_metrics(inst) {
            log::warn!("cannot write the metrics: {e}");
        }
    }
}

/// The most a CPU template file may hold (Firecracker's static templates
/// are a few KiB).
const CPU_CONFIG_FILE_MAX: u64 = 1 << 20;

fn load_config_file(path: &Path) -> Result<FullConfig, String> {
    let in_file = |e: String| format!("config file {}: {e}", path.display());
    let text = std::fs::read(path).map_err(|e| in_file(e.to_string()))?;
    // Firecracker's "cpu-config" is the path of the template's file: read
    // in, the config goes on as a value (its errors without line numbers).
    if let Ok(mut value) = serde_json::from_slice::<Value>(&text) {
        if let Some(Value::String(file)) = value.get("cpu-config") {
            let template = read_cpu_config_file(Path::new(file)).map_err(in_file)?;
            value["cpu-config"] = template;
            let config = serde_json::from_value(value).map_err(|e| in_file(e.to_string()))?;
            return check_config(config).map_err(in_file);
        }
    }
    parse_config(&text).map_err(in_file)
}

/// A CPU template file: a regular file of at most [`CPU_CONFIG_FILE_MAX`]
/// bytes holding a template, as JSON again.
fn read_cpu_config_file(path: &Path) -> Result<Value, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let name = || format!("cpu-config {}", path.display());
    // Non-blocking: opening a FIFO for reading would wait for a writer.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| format!("{}: {e}", name()))?;
    let meta = file.metadata().map_err(|e| format!("{}: {e}", name()))?;
    if !meta.is_file() {
        return Err(format!("{}: not a regular file", name()));
    }
    if meta.len() > CPU_CONFIG_FILE_MAX {
        return Err(format!(
            "{}: larger than {CPU_CONFIG_FILE_MAX} bytes",
            name()
        ));
    }
    let mut text = Vec::new();
    file.take(CPU_CONFIG_FILE_MAX)
        .read_to_end(&mut text)
        .map_err(|e| format!("{}: {e}", name()))?;
    let value: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", name()))?;
    // serde would also build the template from an array.
    if !value.is_object() {
        return Err(format!("{}: not a JSON object", name()));
    }
    let template: CpuConfig =
        serde_json::from_value(value).map_err(|e| format!("{}: {e}", name()))?;
    serde_json::to_value(template).map_err(|e| format!("{}: {e}", name()))
}

fn parse_config(text: &[u8]) -> Result<FullConfig, String> {
    check_config(serde_json::from_slice(text).map_err(|e| e.to_string())?)
}

/// What the API checks of each section, for a config file.
fn check_config(config: FullConfig) -> Result<FullConfig, String> {
    if let Some(c) = &config.cpu_config {
        check_cpu_config(c).map_err(|e| e.message)?;
    }
    check_machine(&config.machine_config).map_err(|e| e.message)?;
    if let Some(h) = &config.memory_hotplug {
        h.validate()
            .map_err(|e| format!("memory-hotplug: {}", e.message))?;
    }
    if let Some(v) = &config.vsock {
        v.validate().map_err(|e| format!("vsock: {}", e.message))?;
    }
    if let Some(l) = &config.logger {
        l.level().map_err(|e| format!("logger: {e}"))?;
    }
    if let Some(m) = &config.mmds_config {
        m.validate(&config.network_interfaces)
            .map_err(|e| format!("mmds-config: {}", e.message))?;
    }
    Ok(config)
}

/// The API of a microVM that never boots: requests are parsed, validated
/// and applied to its configuration by the same handler `strato vm`
/// serves with, but `InstanceStart` only answers as if it had started.
/// The fuzz targets and tests drive the API through it without KVM.
pub struct Unbooted(Shared);

impl Unbooted {
    /// An instance as `strato vm` begins without `--config-file`.
    pub fn new() -> Self {
        Self::with_config(FullConfig::default())
    }

    /// An instance configured from the text of a `--config-file`.
    pub fn from_config(text: &[u8]) -> Result<Self, String> {
        parse_config(text).map(Self::with_config)
    }

    fn with_config(config: FullConfig) -> Self {
        Unbooted(Arc::new(Mutex::new(Instance {
            id: "unbooted".into(),
            config,
            phase: Phase::NotStarted,
            console_log: None,
            exit_file: None,
            api_sock: None,
            seccomp: false,
            live_logger: false,
            metrics: None,
            // Never used: `handle` below boots nothing.
            vm_thread: std::sync::mpsc::sync_channel(0).0,
            mmds: Arc::new(Mutex::new(vmm::mmds::Mmds::default())),
        })))
    }

    /// Answers `req` as the server would.
    pub fn handle(&self, req: &Request) -> http::Response {
        http::reply(handle(req, &self.0, &|_| Ok(())))
    }
}

impl Default for Unbooted {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotating_log_keeps_two_generations() {
        let dir = std::env::temp_dir().join(format!("strato-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("console.log");
        let mut log = RotatingLog::open(&path, 10).unwrap();
        for _ in 0..5 {
            log.write_all(b"0123456789").unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap().len(), 10);
        assert_eq!(std::fs::read(dir.join("console.log.1")).unwrap().len(), 10);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn config_file_format_matches_vm_config() {
        let text = r#"{
            "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0"},
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
            "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}]
        }"#;
        let c: FullConfig = serde_json::from_str(text).unwrap();
        assert_eq!(c.machine_config.vcpu_count, 2);
        let back = serde_json::to_value(&c).unwrap();
        assert_eq!(back["drives"][0]["drive_id"], "rootfs");
        assert_eq!(back["network-interfaces"][0]["host_dev_name"], "tap0");
        assert!(serde_json::from_str::<FullConfig>(r#"{"bogus": 1}"#).is_err());
    }

    #[test]
    fn unbooted_serves_the_api_without_a_vm() {
        let vm = Unbooted::new();
        let put = |body: &str| {
            vm.handle(&Request::new("PUT", "/machine-config", body.into()))
                .status()
        };
        assert_eq!(put(r#"{"vcpu_count": 2, "mem_size_mib": 256}"#), 204);
        assert_eq!(put(r#"{"vcpu_count": 0, "mem_size_mib": 256}"#), 400);
        let start = br#"{"action_type": "InstanceStart"}"#.to_vec();
        let started = vm.handle(&Request::new("PUT", "/actions", start));
        assert_eq!(started.status(), 204);
        // What GET /vm/config shows is a valid --config-file.
        let shown = vm.handle(&Request::new("GET", "/vm/config", Vec::new()));
        let again = Unbooted::from_config(shown.body()).unwrap();
        let m = crate::lock(&again.0).config.machine_config.clone();
        assert_eq!((m.vcpu_count, m.mem_size_mib), (2, 256));
        assert!(Unbooted::from_config(
            br#"{"machine-config": {"vcpu_count": 0, "mem_size_mib": 128}}"#
        )
        .is_err());
    }

    /// The request bodies and states are tested over the socket in
    /// tests/vm_api.rs; here, what only the library shows: the defaults,
    /// and that `GET /vm/config` and the config file agree.
    #[test]
    fn memory_hotplug_round_trips_through_the_config_file() {
        let vm = Unbooted::new();
        let put = br#"{"total_size_mib": 256}"#.to_vec();
        let resp = vm.handle(&Request::new("PUT", "/hotplug/memory", put));
        assert_eq!(resp.status(), 204);
        let resp = vm.handle(&Request::new("GET", "/hotplug/memory", Vec::new()));
        let shown: Value = serde_json::from_slice(resp.body()).unwrap();
        assert_eq!(
            shown,
            json!({"total_size_mib": 256, "slot_size_mib": 128, "block_size_mib": 2,
                   "plugged_size_mib": 0, "requested_size_mib": 0})
        );
        let shown = vm.handle(&Request::new("GET", "/vm/config", Vec::new()));
        let again = Unbooted::from_config(shown.body()).unwrap();
        let h = crate::lock(&again.0).config.memory_hotplug.clone().unwrap();
        assert_eq!(h.config(), vmm::MemoryHotplugConfig::new(256));
        let bad = br#"{"memory-hotplug": {"total_size_mib": 256, "block_size_mib": 3}}"#;
        let e = Unbooted::from_config(bad).err().unwrap();
        assert!(e.starts_with("memory-hotplug: block_size_mib 3"), "{e}");
    }

    /// As [`memory_hotplug_round_trips_through_the_config_file`]: the
    /// deprecated `vsock_id` is taken but not kept, and the VM built at
    /// the start gets the device.
    #[test]
    fn vsock_round_trips_through_the_config_file() {
        let vm = Unbooted::new();
        let put = br#"{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/v.sock"}"#.to_vec();
        let resp = vm.handle(&Request::new("PUT", "/vsock", put));
        assert_eq!(resp.status(), 204);
        let shown = vm.handle(&Request::new("GET", "/vm/config", Vec::new()));
        let mut cfg: Value = serde_json::from_slice(shown.body()).unwrap();
        assert_eq!(cfg["vsock"], json!({"guest_cid": 3, "uds_path": "/v.sock"}));
        cfg["boot-source"] = json!({"kernel_image_path": "/k"});
        let again = Unbooted::from_config(cfg.to_string().as_bytes()).unwrap();
        let built = crate::lock(&again.0).vm_config().unwrap();
        let want = vmm::VsockConfig {
            guest_cid: 3,
            uds_path: "/v.sock".into(),
        };
        assert_eq!(built.vsock, Some(want));
        // A CID left unset by a Go client (0) gives the guest CID 3.
        let unset = br#"{"vsock": {"guest_cid": 0, "uds_path": "/v.sock"}, "boot-source": {"kernel_image_path": "/k"}}"#;
        let vm = Unbooted::from_config(unset).unwrap();
        let built = crate::lock(&vm.0).vm_config().unwrap();
        assert_eq!(built.vsock.map(|v| v.guest_cid), Some(3));
        let bad = br#"{"vsock": {"guest_cid": 2, "uds_path": "/v.sock"}}"#;
        let e = Unbooted::from_config(bad).err().unwrap();
        assert!(e.starts_with("vsock: guest_cid 2 is reserved"), "{e}");
    }

    #[test]
    fn tap_fd_values() {
        assert_eq!(parse_tap_fd("tap0:5"), Ok(("tap0".into(), 5)));
        assert_eq!(parse_tap_fd("a:b:7"), Ok(("a:b".into(), 7)));
        for bad in ["tap0", "tap0:2", ":5", "tap0:x", "tap0:-3"] {
            assert!(parse_tap_fd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_and_machine_limits() {
        assert!(check_id("drive", "rootfs_1-a").is_ok());
        for bad in ["", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_id("drive", bad).is_err(), "{bad}");
        }
        let mut m = default_machine();
        assert!(check_machine(&m).is_ok());
        m.vcpu_count = 0;
        assert!(check_machine(&m).is_err());
        m.vcpu_count = 3;
        m.smt = true;
        assert!(check_machine(&m).is_err());
        m.vcpu_count = 4;
        assert_eq!(check_machine(&m).is_ok(), vmm::config::SMT_SUPPORTED);
        // Firecracker's static templates are taken where the host's CPU is
        // the vendor they are for, refused with the vendor named elsewhere.
        let mut m = default_machine();
        let vendor = vmm::static_templates::STATIC_TEMPLATES
            .iter()
            .map(|t| (t.name, t.arch, t.vendor));
        let host = arch_host_vendor();
        for (name, arch, wants) in vendor {
            m.cpu_template = Some(name.into());
            let got = check_machine(&m);
            let fits =
                arch == vmm::config::ARCH_NAME && (wants.is_none() || wants == host.as_deref());
            match got {
                Ok(()) => assert!(fits, "{name} taken"),
                Err(e) => {
                    assert!(!fits, "{name}: {}", e.message);
                    let why = if arch != vmm::config::ARCH_NAME {
                        arch
                    } else {
                        host.as_deref().unwrap()
                    };
                    assert!(e.message.contains(why), "{name}: {}", e.message);
                }
            }
        }
        for (template, ok) in [("None", true), ("none", false), ("T3", false)] {
            m.cpu_template = Some(template.into());
            assert_eq!(check_machine(&m).is_ok(), ok, "{template}");
        }
        m.cpu_template = Some("t2a".into());
        assert!(check_machine(&m)
            .unwrap_err()
            .message
            .starts_with("unknown cpu_template \"t2a\""));
    }

    /// The host's CPU vendor, as the static templates are checked against.
    fn arch_host_vendor() -> Option<String> {
        std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("vendor_id"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
    }

    /// The template a static name stands for is the one the VM starts
    /// with; a custom one from the same config file applies instead.
    #[test]
    fn static_templates_reach_the_vm_config() {
        let Some(name) = vmm::static_templates::STATIC_TEMPLATES
            .iter()
            .map(|t| t.name)
            .find(|n| static_cpu_template(n).is_ok())
        else {
            return; // No template fits this host's CPU.
        };
        let mut config = FullConfig::default();
        assert_eq!(config.cpu_template().unwrap(), None);
        config.machine_config.cpu_template = Some(name.into());
        let want = static_cpu_template(name).unwrap();
        assert!(want
            .as_ref()
            .is_some_and(|t| !t.cpuid.is_empty() || !t.regs.is_empty()));
        assert_eq!(config.cpu_template().unwrap(), want);
        config.cpu_config = Some(CpuConfig::default());
        assert_eq!(config.cpu_template().unwrap(), Some(CpuTemplate::default()));
    }
}
