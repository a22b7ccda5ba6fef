//! What the daemon's API accepts and returns, the record it keeps per
//! instance, and the validation done before anything is spawned.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::ApiError;

/// Longest instance, drive or interface id.
pub const MAX_ID_LEN: usize = 64;
/// Longest tap name Linux accepts (IFNAMSIZ - 1).
const MAX_TAP_LEN: usize = 15;

/// `POST /v1/instances` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    id: String,
    #[serde(default = "default_vcpus")]
    vcpus: u32,
    #[serde(default)]
    max_vcpus: Option<u32>,
    #[serde(default = "default_memory")]
    memory_mib: u64,
    #[serde(default)]
    max_memory_mib: Option<u64>,
    kernel: PathBuf,
    #[serde(default)]
    initrd: Option<PathBuf>,
    #[serde(default)]
    cmdline: Option<String>,
    #[serde(default)]
    drives: Vec<DriveRequest>,
    #[serde(default)]
    nets: Vec<NetRequest>,
    #[serde(default = "default_start")]
    start: bool,
}

fn default_vcpus() -> u32 {
    1
}

fn default_memory() -> u64 {
    128
}

fn default_start() -> bool {
    true
}

/// One drive in a create request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveRequest {
    id: String,
    path: PathBuf,
    #[serde(default)]
    root: bool,
    #[serde(default)]
    readonly: bool,
}

/// One network interface in a create request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRequest {
    id: String,
    tap: String,
    #[serde(default)]
    mac: Option<String>,
}

/// `PATCH /v1/instances/{id}` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// New vCPU count.
    #[serde(default, deserialize_with = "present")]
    pub vcpus: Option<u32>,
    /// New memory size.
    #[serde(default, deserialize_with = "present")]
    pub memory_mib: Option<u64>,
}

/// An optional field that may be left out but not be null.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A validated drive.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Drive {
    /// Drive id (Firecracker's drive_id).
    pub id: String,
    /// Backing file.
    pub path: PathBuf,
    /// The root device (vda).
    pub root: bool,
    /// Read-only.
    pub readonly: bool,
}

/// A validated network interface.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Net {
    /// Interface id (Firecracker's iface_id).
    pub id: String,
    /// Host tap device.
    pub tap: String,
    /// Guest MAC, xx:xx:xx:xx:xx:xx.
    pub mac: String,
}

/// A validated instance configuration, as stored and shown.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct InstanceConfig {
    /// vCPUs.
    pub vcpus: u32,
    /// The most vCPUs a running instance can be given (`vcpus` if None).
    #[serde(default)]
    pub max_vcpus: Option<u32>,
    /// Guest memory.
    pub memory_mib: u64,
    /// The most memory a running instance can be given (`memory_mib` if
    /// None): what is above the boot size comes as hotpluggable memory
    /// (virtio-mem).
    #[serde(default)]
    pub max_memory_mib: Option<u64>,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initrd, if any.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (the VMM's default when None).
    pub cmdline: Option<String>,
    /// Block devices.
    pub drives: Vec<Drive>,
    /// Network interfaces.
    pub nets: Vec<Net>,
}

/// What the host allows.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most vCPUs per VM (platform and KVM).
    pub max_vcpus: u32,
    /// Host memory in MiB.
    pub host_mib: u64,
}

/// Where an instance is in its life.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Configured, never started.
    Created,
    /// The VM runs.
    Running,
    /// The VM's vCPUs are paused.
    Paused,
    /// Ended cleanly: stopped, killed on request, guest reset or poweroff.
    Stopped,
    /// Ended badly: guest failure, VMM error, process killed from outside.
    Crashed,
}

impl State {
    /// Running or paused: there is a process.
    pub fn is_live(self) -> bool {
        matches!(self, State::Running | State::Paused)
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Stopped => "stopped",
            State::Crashed => "crashed",
        }
    }
}

/// Why the process of a live instance is going away.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// A stop (power button or Ctrl-Alt-Del) was sent.
    Stop,
    /// The stop timed out after this many ms and the process was killed.
    StopKilled(u64),
    /// Killed on request.
    Kill,
}

/// What the daemon keeps per instance, in DIR/<id>/instance.json.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Instance id.
    pub id: String,
    /// Configuration.
    pub config: InstanceConfig,
    /// State.
    pub state: State,
    /// VMM process id while there is one.
    pub pid: Option<i32>,
    /// The process's start time (/proc/<pid>/stat field 22), to tell it
    /// from a later process with the same pid.
    pub proc_start: Option<u64>,
    /// When the record was made (ms since the epoch).
    pub created_at_ms: u64,
    /// When the VM was last started (ms since the epoch).
    pub started_at_ms: Option<u64>,
    /// Guest boot time, once known.
    pub boot_time_us: Option<u64>,
    /// Exit status of the last run (see `strato run`).
    pub exit_status: Option<i32>,
    /// How the last run ended.
    pub exit_reason: Option<String>,
    /// A stop or kill in progress.
    #[serde(default)]
    pub intent: Option<Intent>,
    /// Guest memory at the last start, if that start gave the guest a
    /// balloon: while it runs, its memory can shrink below this and grow
    /// back to it.
    #[serde(default)]
    pub balloon_base_mib: Option<u64>,
    /// Guest memory at the last start, if that start gave the guest
    /// hotpluggable memory: while it runs, it can grow above this up to
    /// this plus [`Record::hotplug_total_mib`].
    #[serde(default)]
    pub hotplug_base_mib: Option<u64>,
    /// The hotpluggable region of the last start, in MiB.
    #[serde(default)]
    pub hotplug_total_mib: u64,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Record {
    /// A fresh record in state `created`.
    pub fn new(id: String, config: InstanceConfig) -> Self {
        Record {
            id,
            config,
            state: State::Created,
            pid: None,
            proc_start: None,
            created_at_ms: now_ms(),
            started_at_ms: None,
            boot_time_us: None,
            exit_status: None,
            exit_reason: None,
            intent: None,
            balloon_base_mib: None,
            hotplug_base_mib: None,
            hotplug_total_mib: 0,
        }
    }

    /// The API's view of the instance.
    pub fn view(&self) -> Value {
        let live = self.state.is_live();
        let uptime = self
            .started_at_ms
            .filter(|_| live)
            .map(|t| now_ms().saturating_sub(t));
        json!({
            "id": self.id,
            "state": self.state.name(),
            "config": self.config,
            "pid": if live { self.pid } else { None },
            "created_at_ms": self.created_at_ms,
            "started_at_ms": self.started_at_ms,
            "uptime_ms": uptime,
            "boot_time_us": self.boot_time_us,
            "exit_status": self.exit_status,
            "exit_reason": self.exit_reason,
        })
    }
}

/// Whether an instance started with `cfg` gets a balloon, through which
/// its memory can shrink while it runs: when a virtio device is left for it
/// after the drives and network interfaces.
pub fn gets_balloon(cfg: &InstanceConfig) -> bool {
    cfg.drives.len() + cfg.nets.len() < vmm::config::MAX_VIRTIO_DEVICES
}

/// Checks an id: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid {what} {id:?}: use 1 to {MAX_ID_LEN} characters of A-Z a-z 0-9 _ -"
        )))
    }
}

/// Checks a maximum vCPU count against the boot count, the host and the
/// platform.
pub fn check_max_vcpus(vcpus: u32, max: u32, limits: &Limits) -> Result<(), ApiError> {
    if max < vcpus || max > limits.max_vcpus {
        return Err(ApiError::bad_request(format!(
            "max_vcpus must be vcpus ({vcpus}) to {} on this host, got {max}",
            limits.max_vcpus
        )));
    }
    if max > vcpus && !vmm::config::VCPU_HOTPLUG {
        return Err(ApiError::bad_request(format!(
            "vCPUs cannot be plugged into a running guest on {}: leave max_vcpus out or equal to vcpus",
            vmm::config::ARCH_NAME
        )));
    }
    Ok(())
}

/// Checks a maximum memory size against the boot size and the host.
pub fn check_max_memory(memory_mib: u64, max: u64, limits: &Limits) -> Result<(), ApiError> {
    if max < memory_mib || max > limits.host_mib {
        return Err(ApiError::bad_request(format!(
            "max_memory_mib must be memory_mib ({memory_mib}) to the host's {} MiB, got {max}",
            limits.host_mib
        )));
    }
    let total = hotplug_total_mib(memory_mib, max);
    if total > 0 {
        vmm::MemoryHotplugConfig::new(total)
            .validate()
            .map_err(|e| ApiError::bad_request(format!("max_memory_mib {max}: {e}")))?;
    }
    Ok(())
}

/// The hotpluggable region an instance of `memory_mib` that can grow to
/// `max` gets: the difference, in whole slots of the default size.
pub fn hotplug_total_mib(memory_mib: u64, max: u64) -> u64 {
    let slot = vmm::MemoryHotplugConfig::new(0).slot_size_mib;
    max.saturating_sub(memory_mib).next_multiple_of(slot)
}

/// Whether an instance started with `cfg` gets hotpluggable memory
/// (virtio-mem): when it may grow above its boot size and a virtio device
/// is left for it after the drives, the network interfaces and the
/// balloon.
pub fn gets_memory_hotplug(cfg: &InstanceConfig) -> bool {
    cfg.max_memory_mib.is_some_and(|m| m > cfg.memory_mib)
        && cfg.drives.len() + cfg.nets.len() + 1 < vmm::config::MAX_VIRTIO_DEVICES
}

/// Checks vCPUs and memory against the host.
pub fn check_size(vcpus: u32, memory_mib: u64, limits: &Limits) -> Result<(), ApiError> {
    if vcpus == 0 || vcpus > limits.max_vcpus {
        return Err(ApiError::bad_request(format!(
            "vcpus must be 1 to {} on this host, got {vcpus}",
            limits.max_vcpus
        )));
    }
    if memory_mib < vmm::config::MIN_MEMORY_MIB {
        return Err(ApiError::bad_request(format!(
            "memory_mib must be at least {}, got {memory_mib}",
            vmm::config::MIN_MEMORY_MIB
        )));
    }
    if memory_mib > limits.host_mib {
        return Err(ApiError::bad_request(format!(
            "memory_mib {memory_mib} is more than the host's {} MiB",
            limits.host_mib
        )));
    }
    Ok(())
}

/// Checks a tap name as Linux would and that the device exists.
fn check_tap(tap: &str) -> Result<(), ApiError> {
    let valid = !tap.is_empty()
        && tap.len() <= MAX_TAP_LEN
        && tap != "."
        && tap != ".."
        && tap
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if !valid {
        return Err(ApiError::bad_request(format!(
            "invalid tap name {tap:?}: 1 to {MAX_TAP_LEN} printable characters, no '/' or ':'"
        )));
    }
    // Looked up in this process's network namespace (the VMM's), which
    // /sys/class/net shows only if sysfs was mounted from it.
    let name = std::ffi::CString::new(tap).map_err(|_| {
        ApiError::bad_request(format!("invalid tap name {tap:?}: it contains a NUL byte"))
    })?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call,
    // which only reads it.
    if unsafe { libc::if_nametoindex(name.as_ptr()) } == 0 {
        return Err(ApiError::bad_request(format!(
            "tap device {tap} does not exist on the host"
        )));
    }
    Ok(())
}

/// Parses a unicast MAC address, returning it in canonical form.
pub fn parse_mac(s: &str) -> Result<String, ApiError> {
    let bad = || ApiError::bad_request(format!("invalid MAC address {s:?} (xx:xx:xx:xx:xx:xx)"));
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(ApiError::bad_request(format!(
            "MAC address {s} is a multicast address"
        )));
    }
    Ok(vmm::config::format_mac(&mac))
}

impl CreateRequest {
    /// Everything checkable before spawning: returns the id, the
    /// configuration and whether to start.
    pub fn validate(self, limits: &Limits) -> Result<(String, InstanceConfig, bool), ApiError> {
        check_id("instance id", &self.id)?;
        check_size(self.vcpus, self.memory_mib, limits)?;
        if let Some(max) = self.max_vcpus {
            check_max_vcpus(self.vcpus, max, limits)?;
        }
        if let Some(max) = self.max_memory_mib {
            check_max_memory(self.memory_mib, max, limits)?;
        }
        // Files are checked when the daemon opens them (see `policy`).
        if let Some(c) = &self.cmdline {
            if c.len() >= vmm::config::CMDLINE_MAX_SIZE {
                return Err(ApiError::bad_request(format!(
                    "cmdline is {} bytes, at most {} are allowed",
                    c.len(),
                    vmm::config::CMDLINE_MAX_SIZE - 1
                )));
            }
            if c.contains('\0') {
                return Err(ApiError::bad_request("cmdline contains a NUL byte"));
            }
        }
        let devices = self.drives.len() + self.nets.len();
        if devices > vmm::config::MAX_VIRTIO_DEVICES {
            return Err(ApiError::bad_request(format!(
                "{devices} drives and network interfaces requested, at most {} are supported",
                vmm::config::MAX_VIRTIO_DEVICES
            )));
        }
        let mut drives: Vec<Drive> = Vec::with_capacity(self.drives.len());
        for d in self.drives {
            check_id("drive id", &d.id)?;
            if drives.iter().any(|o| o.id == d.id) {
                return Err(ApiError::bad_request(format!(
                    "duplicate drive id {:?}",
                    d.id
                )));
            }
            if d.root && drives.iter().any(|o| o.root) {
                return Err(ApiError::bad_request(format!(
                    "drive {:?}: only one drive can be the root device",
                    d.id
                )));
            }
            drives.push(Drive {
                id: d.id,
                path: d.path,
                root: d.root,
                readonly: d.readonly,
            });
        }
        let mut nets: Vec<Net> = Vec::with_capacity(self.nets.len());
        for (i, n) in self.nets.into_iter().enumerate() {
            check_id("network interface id", &n.id)?;
            if nets.iter().any(|o| o.id == n.id) {
                return Err(ApiError::bad_request(format!(
                    "duplicate network interface id {:?}",
                    n.id
                )));
            }
            let mac = match &n.mac {
                Some(m) => parse_mac(m)?,
                None => format!("06:00:ac:10:00:{:02x}", (i + 2) as u8),
            };
            if nets.iter().any(|o| o.tap == n.tap) {
                return Err(ApiError::bad_request(format!(
                    "tap {} is used by two network interfaces",
                    n.tap
                )));
            }
            if nets.iter().any(|o| o.mac == mac) {
                return Err(ApiError::bad_request(format!(
                    "MAC {mac} is used by two network interfaces"
                )));
            }
            check_tap(&n.tap)?;
            nets.push(Net {
                id: n.id,
                tap: n.tap,
                mac,
            });
        }
        let config = InstanceConfig {
            vcpus: self.vcpus,
            max_vcpus: self.max_vcpus,
            memory_mib: self.memory_mib,
            max_memory_mib: self.max_memory_mib,
            kernel: self.kernel,
            initrd: self.initrd,
            cmdline: self.cmdline,
            drives,
            nets,
        };
        Ok((self.id, config, self.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_vcpus: 8,
        host_mib: 4096,
    };

    fn request(extra: Value) -> Result<(String, InstanceConfig, bool), ApiError> {
        let exe = std::env::current_exe().unwrap();
        let mut body = json!({"id": "vm-1", "kernel": exe});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let req: CreateRequest =
            serde_json::from_value(body).map_err(|e| ApiError::bad_request(e.to_string()))?;
        req.validate(&LIMITS)
    }

    fn rejects(extra: Value, needle: &str) {
        let e = request(extra.clone()).expect_err(&extra.to_string());
        assert_eq!(e.status, 400);
        assert!(e.message.contains(needle), "{extra}: {}", e.message);
    }

    #[test]
    fn defaults() {
        let (id, c, start) = request(json!({})).unwrap();
        assert_eq!(id, "vm-1");
        assert_eq!((c.vcpus, c.memory_mib), (1, 128));
        assert!(start);
        assert!(c.drives.is_empty() && c.nets.is_empty());
    }

    #[test]
    fn bad_requests_name_the_problem() {
        rejects(json!({"id": "a/b"}), "invalid instance id");
        rejects(json!({"id": "x".repeat(65)}), "invalid instance id");
        rejects(json!({"vcpus": 0}), "vcpus");
        rejects(json!({"vcpus": 9}), "vcpus must be 1 to 8");
        rejects(json!({"memory_mib": 15}), "at least 16");
        rejects(json!({"memory_mib": 5000}), "more than the host");
        rejects(json!({"cmdline": "x".repeat(5000)}), "cmdline");
        rejects(json!({"bogus": 1}), "unknown field");
        rejects(json!({"vcpus": "two"}), "invalid type");
        rejects(
            json!({"nets": [{"id": "eth0", "tap": "strato-no-such"}]}),
            "does not exist",
        );
        rejects(
            json!({"nets": [{"id": "eth0", "tap": "a/b"}]}),
            "invalid tap",
        );
        rejects(
            json!({"nets": [{"id": "eth0", "tap": "lo", "mac": "01:00:00:00:00:01"}]}),
            "multicast",
        );
        rejects(
            json!({"nets": [{"id": "eth0", "tap": "lo", "mac": "zz"}]}),
            "invalid MAC",
        );
        rejects(
            json!({"nets": [{"id": "e", "tap": "lo"}, {"id": "e", "tap": "lo"}]}),
            "duplicate",
        );
    }

    #[test]
    fn drives_and_nets() {
        let exe = std::env::current_exe().unwrap();
        let (_, c, _) = request(json!({
            "drives": [{"id": "root", "path": exe, "root": true, "readonly": true}],
            "nets": [{"id": "eth0", "tap": "lo", "mac": "06:00:AC:10:00:02"}],
            "start": false,
        }))
        .unwrap();
        assert_eq!(c.drives[0].id, "root");
        assert_eq!(c.nets[0].mac, "06:00:ac:10:00:02");
        rejects(
            json!({"drives": [
                {"id": "a", "path": exe, "root": true, "readonly": true},
                {"id": "b", "path": exe, "root": true, "readonly": true}
            ]}),
            "only one drive",
        );
    }

    #[test]
    fn resize_fields_are_not_nullable() {
        let r: ResizeRequest = serde_json::from_str(r#"{"vcpus": 2}"#).unwrap();
        assert_eq!((r.vcpus, r.memory_mib), (Some(2), None));
        assert!(serde_json::from_str::<ResizeRequest>(r#"{"vcpus": null}"#).is_err());
        assert!(serde_json::from_str::<ResizeRequest>(r#"{"cpus": 1}"#).is_err());
    }

    #[test]
    fn record_view() {
        let (id, c, _) = request(json!({})).unwrap();
        let r = Record::new(id, c);
        let v = r.view();
        assert_eq!(v["state"], "created");
        assert!(v["pid"].is_null() && v["uptime_ms"].is_null());
        let back: Record = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.config, r.config);
    }
}
