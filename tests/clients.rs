//! Firecracker's real clients, replayed against strato called
//! `firecracker` (a symlink to it in each test's scratch directory): the
//! command line each client launches the VMM with, the configuration it
//! writes or sends, and its API requests in its own order, each answer
//! checked as Firecracker gives it, with a tiny guest booted to its marker.
//! The facts come from each client's source:
//!
//! * Kata Containers: `src/runtime/virtcontainers/fc.go` (its Firecracker
//!   driver, on its path without the jailer), `types/fcConfig.go` and the
//!   models of its Firecracker client (`pkg/firecracker/client/models`)
//!   for the config file's shape;
//! * firecracker-go-sdk: `machine.go`, `handlers.go` (the default handler
//!   list), `command_builder.go`, `drives.go`, `kernelargs.go` and
//!   `firecracker.go` (each request's deadline);
//! * firecracker-python (PyPI): `microvm.py`, `process.py`, `vmm.py`,
//!   `api.py`.
//!
//! What a tiny guest cannot give a client (an agent behind the vsock, a
//! root file system) is left out, and each test says where.

mod api;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::json::quote;
use api::{kill, raw_request, tail, vmm_of, wait_for, Api, Netns, Resp};
use strato_tests::{guest, kill_and_reap, strato_bin, vmm_report, Scratch};

/// An upper bound for a guest's marker, not an expectation.
const LONG: Duration = Duration::from_secs(180);

/// `firecracker` in `dir`: a symlink to strato, as a host that has strato
/// stand in for Firecracker installs it.
fn firecracker_in(dir: &Path) -> PathBuf {
    let fc = dir.join("firecracker");
    std::os::unix::fs::symlink(strato_bin(), &fc).expect("symlink firecracker to strato");
    fc
}

/// `path` as a string, for command lines and JSON.
fn text(path: &Path) -> String {
    path.to_str().expect("utf-8 path").to_string()
}

fn mkfifo(path: &Path, mode: libc::mode_t) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path without NUL");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), mode) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, 0, "mkfifo {}: {err}", path.display());
}

/// (device, inode) of `path`'s file, symlinks followed.
fn file_id(path: &Path) -> (u64, u64) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.dev(), m.ino())
}

/// (device, inode) of every file process `pid` holds open.
fn open_files(pid: i32) -> HashSet<(u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path()).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// A FIFO read as Kata and the Go SDK read the VMM's log and metrics:
/// opened for reading without blocking before the VMM opens it, then
/// drained by a thread of its own, so the VMM never finds it full.
struct FifoReader {
    got: Arc<Mutex<String>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FifoReader {
    fn open(path: &Path) -> FifoReader {
        let mut fifo = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .unwrap_or_else(|e| panic!("open {} for reading: {e}", path.display()));
        let got = Arc::new(Mutex::new(String::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (into, done) = (got.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while !done.load(Ordering::Relaxed) {
                match fifo.read(&mut buf) {
                    Ok(n) if n > 0 => into
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n])),
                    // No writer yet, or nothing new: look again.
                    _ => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FifoReader {
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn text(&self) -> String {
        self.got.lock().unwrap().clone()
    }
}

impl Drop for FifoReader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A VMM process launched as a client launches it; killed on drop.
struct Vmm {
    child: Child,
    /// Its standard output and error: the guest's serial console, then
    /// whatever strato says there.
    console: PathBuf,
}

impl Vmm {
    /// Runs `program args` with `env` added, its output in `console`. In
    /// `netns` if given: the clients start the VMM from a thread that has
    /// entered the network namespace holding the tap, and the child is
    /// born there.
    fn launch(
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        console: PathBuf,
        netns: Option<&Netns>,
    ) -> Vmm {
        let out = File::create(&console).expect("console file");
        let err = out.try_clone().expect("console file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (*k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = match netns {
            Some(ns) => ns.run(move || cmd.spawn()).join().expect("spawn thread"),
            None => cmd.spawn(),
        }
        .unwrap_or_else(|e| panic!("launch {}: {e}", program.display()));
        Vmm { child, console }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Waits for `marker` on the console; a VMM that ends first, or a
    /// deadline passed, fails with how it ended and how the console ends.
    fn wait_console(&mut self, marker: &str) {
        let start = Instant::now();
        loop {
            let ended = self.child.try_wait().ok().flatten();
            let text = self.console_text();
            if text.contains(marker) {
                return;
            }
            if ended.is_some() || start.elapsed() > LONG {
                let how = match ended {
                    Some(s) => format!("the VMM exited ({s})"),
                    None => format!("the VMM still runs:\n{}", vmm_report(self.child.id())),
                };
                panic!(
                    "no {marker:?} on the console; {how}\nthe console ends:\n{}",
                    tail(&text, 3000)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits at most `within` for the process to end.
    fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = &mut self.child;
        wait_for("the VMM to exit", within, || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

// ---------------------------------------------------------------------
// Kata Containers

/// A sandbox's VM as Kata's Firecracker driver starts it.
struct KataVm {
    vmm: Vmm,
    api: Api,
    /// The sandbox's directory (`vmPath`) and its `root` (`jailerRoot`).
    vm_path: PathBuf,
    root: PathBuf,
    /// The hybrid vsock's socket.
    hvsock: PathBuf,
    log: FifoReader,
    metrics: FifoReader,
}

/// What Kata does from `StartVM` to `waitVMMRunning`, without the jailer:
/// the version check, the sandbox's directory, the config file with the
/// rootfs, the pool of placeholder drives, the log and metrics FIFOs, the
/// hybrid vsock and the NIC on tap `tap0_kata` of `ns`, the launch, and
/// GET / until the VM runs. The guest is the ticker.
fn kata_start(dir: &Scratch, ns: &Netns) -> KataVm {
    let fc = firecracker_in(&dir.0);

    // getVersionNumber, checkVersion: `--version`, the first line's second
    // space-separated field without its "v", a semver of 0.21.1 or later.
    let out = Command::new(&fc)
        .arg("--version")
        .output()
        .expect("run firecracker --version");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "firecracker --version: {said}");
    let version = said
        .split('\n')
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .map(|f| f.trim().trim_start_matches('v'))
        .unwrap_or_else(|| panic!("malformed version output {said:?}"));
    let semver: Vec<u64> = version
        .split('.')
        .map(|p| {
            p.parse()
                .unwrap_or_else(|_| panic!("not a semver: {said:?}"))
        })
        .collect();
    assert!(
        semver.len() == 3 && semver >= vec![0, 21, 1],
        "Kata refuses version {version:?}"
    );

    // setPaths: <chroot base>/<hypervisor's file name>/<sandbox id, cut to
    // 32 characters>, its root/ with the API socket in root/run/.
    let id = "9f4c2e7a1b3d5f60718293a4b5c6d7e8";
    let vm_path = dir.0.join("vc/firecracker").join(id);
    let root = vm_path.join("root");
    std::fs::create_dir_all(root.join("run")).expect("the sandbox's directories");
    // fcJailResource bind-mounts each resource into root/ and names it
    // there. A symlink stands in for the mount: the VMM opens the same
    // path and finds the same file.
    let jail = |src: &Path, name: &str| {
        let at = root.join(name);
        std::os::unix::fs::symlink(src, &at).expect("resource in the sandbox's root");
        text(&at)
    };
    let kernel = jail(&guest("ticker"), "vmlinux");
    let image = dir.file("kata-containers.img", &vec![0u8; 1 << 20]);
    let rootfs = jail(Path::new(&image), "rootfs");
    // fcSetLogger, fcSetMetrics (fcListenToFifo): FIFOs in the sandbox's
    // directory, opened for reading before the VMM starts.
    let fifo = |name: &str| {
        let p = vm_path.join(name);
        mkfifo(&p, 0o600);
        let reader = FifoReader::open(&p);
        (jail(&p, name), reader)
    };
    let (log_path, log) = fifo("logs.fifo");
    let (metrics_path, metrics) = fifo("metrics.fifo");
    let hvsock = root.join("kata.hvsock");

    // fcSetVMRootfs: the guest image read-only and not the root device
    // (the kernel is told root=/dev/vda1); createDiskPool: drive_0 to
    // drive_7, empty files created in root/, writable.
    let drive = |id: &str, path: &str, ro: bool| {
        format!(
            r#"{{"drive_id":{},"is_read_only":{ro},"is_root_device":false,"path_on_host":{}}}"#,
            quote(id),
            quote(path)
        )
    };
    let mut drives = vec![drive("rootfs", &rootfs, true)];
    for i in 0..8 {
        let id = format!("drive_{i}");
        let p = root.join(&id);
        File::create(&p).expect("placeholder drive");
        drives.push(drive(&id, &text(&p), false));
    }
    // The kernel parameters: the configuration's own (here the ticker's
    // period), the rootfs's (virtio-blk, ext4), then fc.go's, with the
    // console its Debug mode adds.
    let boot_args = "period=50 root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro \
        rootfstype=ext4 pci=off reboot=k panic=1 iommu=off net.ifnames=0 \
        random.trust_cpu=on acpi=off console=ttyS0";
    // fcConfig as Go marshals it: its sections in their struct's order,
    // each object's keys in the models' (alphabetical) order, optional
    // fields left out. fcAddNetDevice gives both limiters, an empty one
    // where no rate is configured; the rx rate is rx_rate_limiter_max_rate
    // = 10 Mbit/s as Kata turns it into bytes in powers of 1024. The
    // memory is the least Kata gives a VM (MinHypervisorMemory).
    let config = format!(
        r#"{{
	"boot-source": {{"boot_args": {}, "kernel_image_path": {}}},
	"machine-config": {{"mem_size_mib": 256, "smt": false, "vcpu_count": 1}},
	"vsock": {{"guest_cid": 3, "uds_path": {}, "vsock_id": "root"}},
	"logger": {{"level": "Debug", "log_path": {}}},
	"metrics": {{"metrics_path": {}}},
	"drives": [{}],
	"network-interfaces": [{{"guest_mac": "02:42:ac:11:00:02", "host_dev_name": "tap0_kata",
		"iface_id": "eth0", "rx_rate_limiter": {{"bandwidth": {{"refill_time": 1000, "size": 1304576}}}},
		"tx_rate_limiter": {{}}}}]
}}"#,
        quote(boot_args),
        quote(&kernel),
        quote(&text(&hvsock)),
        quote(&log_path),
        quote(&metrics_path),
        drives.join(", ")
    );
    let written = vm_path.join("fcConfig.json");
    std::fs::write(&written, config).expect("write fcConfig.json");
    std::fs::set_permissions(&written, std::fs::Permissions::from_mode(0o640)).unwrap();
    let config_path = jail(&written, "fcConfig.json");

    // fcInit: the command line without the jailer; in Debug mode the
    // VMM's output goes to the sandbox's console. StartVM runs inside the
    // sandbox's network namespace.
    let sock = root.join("run/firecracker.socket");
    let args = [
        "--api-sock".to_string(),
        text(&sock),
        "--config-file".into(),
        config_path,
    ];
    let vmm = Vmm::launch(&fc, &args, &[], dir.0.join("console"), Some(ns));

    // waitVMMRunning: GET / every 10 ms until the state is "Running",
    // failing after fcTimeout (10 s); errors (no socket yet) are retried.
    let start = Instant::now();
    while !raw_request(&sock, "GET", "/", None, Duration::from_secs(1))
        .is_ok_and(|r| r.status == 200 && r.json()["state"] == "Running")
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not Running within Kata's 10 s; the console:\n{}",
            vmm.console_text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    KataVm {
        vmm,
        api: Api::new(&sock, "vm"),
        vm_path,
        root,
        hvsock,
        log,
        metrics,
    }
}

/// Kata's sandbox life on Firecracker: launched from its config file (the
/// guest image, eight placeholder drives, a rate-limited NIC, the hybrid
/// vsock, the logger and metrics on FIFOs), running within Kata's 10 s,
/// then a container's block device hot-plugged into the pool and taken
/// out again, each by a `PATCH /drives/drive_0` naming the same path,
/// under which Kata has swapped the file; then SIGTERM, within Kata's
/// 15 s. Kata's agent is not there: the tiny guest has no vsock driver.
#[test]
fn kata_containers_boots_from_its_config_file_and_swaps_a_pool_drive() {
    let dir = Scratch::new("kata");
    let ns = Netns::new("kata", &["tap0_kata"]);
    let mut vm = kata_start(&dir, &ns);
    let api = vm.api.clone();
    let info = api.expect("GET", "/", None, 200).json();
    // No --id on Kata's command line: Firecracker's default.
    assert_eq!(info["id"], "anonymous-instance", "{info:?}");

    // StartVM: the hybrid vsock's socket is there once the VM runs, and
    // Kata makes it 0640.
    let meta = std::fs::symlink_metadata(&vm.hvsock).expect("the hybrid vsock's socket");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    std::fs::set_permissions(&vm.hvsock, std::fs::Permissions::from_mode(0o640)).unwrap();
    // The agent's first dial: CONNECT to its port, which the device takes
    // (no guest driver answers it here).
    let mut agent = std::os::unix::net::UnixStream::connect(&vm.hvsock).expect("dial the hvsock");
    agent.write_all(b"CONNECT 1024\n").expect("CONNECT line");
    vm.vmm.wait_console("tick 3");

    // The config file as strato took it.
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    let drives = cfg["drives"].as_array().unwrap_or_default();
    assert_eq!(drives.len(), 9, "{cfg:?}");
    assert_eq!(drives[0]["drive_id"], "rootfs");
    assert_eq!(drives[0]["is_read_only"].as_bool(), Some(true));
    assert_eq!(drives[8]["drive_id"], "drive_7");
    let nic = &cfg["network-interfaces"][0];
    assert_eq!(
        nic["rx_rate_limiter"]["bandwidth"]["size"].as_u64(),
        Some(1304576)
    );
    assert_eq!(cfg["vsock"]["uds_path"], text(&vm.hvsock).as_str());
    assert_eq!(cfg["machine-config"]["mem_size_mib"].as_u64(), Some(256));

    // hotplugBlockDevice, AddDevice: the container's disk is bind-mounted
    // over the placeholder of drive_0 (a symlink put in its place here)
    // and the drive PATCHed with the path it already has: the VMM must
    // open the path again, not compare it with the one it holds.
    let pid = vmm_of(vm.vmm.pid());
    let slot = vm.root.join("drive_0");
    let placeholder = file_id(&slot);
    assert!(open_files(pid).contains(&placeholder), "drive_0 not open");
    let disk = dir.file("container.img", &vec![0u8; 2 << 20]);
    let disk_id = file_id(Path::new(&disk));
    let aside = vm.vm_path.join("drive_0.placeholder");
    std::fs::rename(&slot, &aside).unwrap();
    std::os::unix::fs::symlink(&disk, &slot).unwrap();
    // fcUpdateBlockDrive, through Go's JSON encoder (a newline ends it).
    let patch = format!(
        "{{\"drive_id\":\"drive_0\",\"path_on_host\":{}}}\n",
        quote(&text(&slot))
    );
    api.expect("PATCH", "/drives/drive_0", Some(&patch), 204);
    let open = open_files(pid);
    assert!(
        open.contains(&disk_id) && !open.contains(&placeholder),
        "drive_0 still has its placeholder after the hot-plug"
    );
    // RemoveDevice: the mount goes, the placeholder is at the path again,
    // and the same PATCH gives it back to the drive.
    std::fs::remove_file(&slot).unwrap();
    std::fs::rename(&aside, &slot).unwrap();
    api.expect("PATCH", "/drives/drive_0", Some(&patch), 204);
    let open = open_files(pid);
    assert!(
        open.contains(&placeholder) && !open.contains(&disk_id),
        "drive_0 still has the container's disk after the unplug"
    );
    vm.vmm.wait_console("tick 6");

    // StopVM (fcEnd): SIGTERM, then fcStopSandboxTimeout (15 s) for the
    // process to end.
    kill(vm.vmm.pid(), libc::SIGTERM);
    vm.vmm.wait_exit(Duration::from_secs(15));
    drop(agent);
    // The VMM's log reached Kata's FIFO reader.
    let log = vm.log.text();
    assert!(log.contains("started 1 vCPU(s)"), "log FIFO: {log:?}");
    api.check_schema(&dir.0);
}

/// A scratch directory `tag` (kept short: the API socket's path must fit
/// in a unix socket address), a network namespace with Kata's tap, and a
/// sandbox's VM started in them, its guest ticking. Bound in this order,
/// they are dropped the other way round: the VM first.
fn kata_ticking(tag: &str) -> (Scratch, Netns, KataVm) {
    let dir = Scratch::new(tag);
    let ns = Netns::new(tag, &["tap0_kata"]);
    let mut vm = kata_start(&dir, &ns);
    vm.vmm.wait_console("ticker: ready");
    (dir, ns, vm)
}

/// Kata's GetThreadIDs: the VMM's threads named `fc_vcpu <index>`, as
/// Firecracker names its vCPU threads; Kata moves them into the sandbox's
/// cgroup (constrainHypervisor) and counts them for its statistics.
#[test]
fn kata_finds_the_vcpu_threads_by_firecracker_s_thread_names() {
    let (_dir, _ns, vm) = kata_ticking("kata-t");
    let pid = vmm_of(vm.vmm.pid());
    let mut names = Vec::new();
    let mut vcpus = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        // The name split after "fc_vcpu": the index, spaces trimmed.
        if let Some(index) = comm.strip_prefix("fc_vcpu") {
            let index: u32 = index.trim().parse().unwrap_or_else(|_| panic!("{comm:?}"));
            vcpus.insert(index, task.file_name());
        }
        names.push(comm);
    }
    assert_eq!(
        vcpus.keys().copied().collect::<Vec<_>>(),
        [0],
        "Kata finds no vCPU thread among {names:?}"
    );
}

/// Kata reads the metrics FIFO line by line (updateMetrics) from the
/// VM's start: Firecracker writes a first line as soon as the VM is
/// built, then one a minute.
#[test]
fn kata_reads_a_metrics_line_once_the_vm_runs() {
    let (_dir, _ns, vm) = kata_ticking("kata-m");
    let metrics = &vm.metrics;
    let line = wait_for(
        "a metrics line in Kata's FIFO",
        Duration::from_secs(10),
        || metrics.text().lines().next().map(str::to_string),
    );
    let first = api::Json::parse(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(first["utc_timestamp_ms"].as_u64().is_some(), "{line}");
}

// ---------------------------------------------------------------------
// firecracker-go-sdk

/// The Go SDK's client: each request held to the SDK's deadline for it
/// (firecracker.go: 500 ms, half that for PUT /drives, none but the
/// transport's 30 s where no timeout is set), each body as Go's JSON
/// encoder writes it (a newline after it).
struct GoClient(Api);

impl GoClient {
    fn call(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> Resp {
        let limited = [
            ("PUT", "/logger"),
            ("PUT", "/metrics"),
            ("PUT", "/machine-config"),
            ("GET", "/machine-config"),
            ("PUT", "/boot-source"),
            ("PUT", "/network-interfaces/"),
            ("PATCH", "/network-interfaces/"),
            ("PATCH", "/vm"),
        ];
        let deadline = if method == "PUT" && path.starts_with("/drives/") {
            Duration::from_millis(250)
        } else if limited
            .iter()
            .any(|(m, p)| *m == method && path.starts_with(p))
        {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(30)
        };
        let body = body.map(|b| format!("{b}\n"));
        let start = Instant::now();
        let r = self.0.expect(method, path, body.as_deref(), status);
        let took = start.elapsed();
        assert!(
            took < deadline,
            "{method} {path} took {took:?}, past the SDK's {deadline:?}"
        );
        r
    }
}

/// A Machine of the Go SDK with its defaults (no jailer, seccomp off, the
/// `firecracker` found on PATH, started in the network namespace of its
/// tap): NewMachine's command line, then the default handlers in their
/// order (StartVMM with waitForSocket's probe, CreateLogFiles with the log
/// FIFO captured to a writer, BootstrapLogging, CreateMachine with its
/// read-back, CreateBootSource with the kernel arguments re-joined from a
/// map, AttachDrives with the root drive last, CreateNetworkInterfaces,
/// AddVsocks; ConfigMmds sends nothing when no interface allows MMDS),
/// InstanceStart; then the Machine's own calls (DescribeInstanceInfo,
/// GetFirecrackerVersion, UpdateGuestDrive,
/// UpdateGuestNetworkInterfaceRateLimit, PauseVM, ResumeVM) and Shutdown,
/// which on x86 is SendCtrlAltDel, after which the process ends by itself
/// with status 0.
#[test]
fn firecracker_go_sdk_runs_its_default_handlers_and_shuts_down() {
    let dir = Scratch::new("gosdk");
    let ns = Netns::new("gosdk", &["tap0"]);
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    firecracker_in(&bin);
    let sock = dir.0.join("firecracker.sock");
    let log_fifo = dir.0.join("firecracker.log.fifo");
    let metrics = dir.0.join("firecracker.metrics");
    let kernel = text(&guest("kbd"));
    let rootfs = dir.file("rootfs.ext4", &vec![0u8; 1 << 20]);
    let data = dir.file("data.img", &vec![0u8; 64 << 10]);
    let data2 = dir.file("data2.img", &vec![0u8; 128 << 10]);
    let vsock = dir.path("v.sock");
    let vmid = "0e1f8a5c-3d2b-4a69-9c7e-5b4d3f2a1c0e";

    // ConfigValidationHandler: the kernel and the root drive exist, the
    // socket does not.
    assert!(Path::new(&kernel).exists() && Path::new(&rootfs).exists());
    assert!(!sock.exists());
    // NewMachine: `firecracker --api-sock S --id VMID --no-seccomp`
    // (Seccomp.Enabled is false unless asked), looked up on PATH.
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let args = [
        "--api-sock".to_string(),
        text(&sock),
        "--id".into(),
        vmid.into(),
        "--no-seccomp".into(),
    ];
    let mut vmm = Vmm::launch(
        Path::new("firecracker"),
        &args,
        &[("PATH", path)],
        dir.0.join("console"),
        Some(&ns),
    );
    let sdk = GoClient(Api::new(&sock, "vm"));

    // StartVMM, waitForSocket: every 10 ms the socket must exist and
    // GET /machine-config answer, within the init timeout (3 s).
    wait_for("the socket to answer", Duration::from_secs(3), || {
        (sock.exists()
            && raw_request(
                &sock,
                "GET",
                "/machine-config",
                None,
                Duration::from_millis(500),
            )
            .is_ok_and(|r| r.status == 200))
        .then_some(())
    });
    // CreateLogFiles: the metrics file made (O_CREATE|O_APPEND, 0600), the
    // log FIFO (0700), read into FifoLogWriter.
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&metrics)
        .expect("create the metrics file");
    mkfifo(&log_fifo, 0o700);
    let log = FifoReader::open(&log_fifo);
    // BootstrapLogging: setupLogging, then setupMetrics.
    let logger = format!(
        r#"{{"level":"Debug","log_path":{},"show_level":true,"show_log_origin":false}}"#,
        quote(&text(&log_fifo))
    );
    sdk.call("PUT", "/logger", Some(&logger), 204);
    let body = format!(r#"{{"metrics_path":{}}}"#, quote(&text(&metrics)));
    sdk.call("PUT", "/metrics", Some(&body), 204);
    // CreateMachine, then refreshMachineConfiguration.
    let machine = r#"{"mem_size_mib":64,"smt":false,"vcpu_count":1}"#;
    sdk.call("PUT", "/machine-config", Some(machine), 204);
    let got = sdk.call("GET", "/machine-config", None, 200).json();
    assert_eq!(got["vcpu_count"].as_u64(), Some(1), "{got:?}");
    assert_eq!(got["mem_size_mib"].as_u64(), Some(64), "{got:?}");
    // SetupKernelArgs parsed the arguments into a map and joined them
    // again: in the map's order, which Go leaves to chance (as Rust's
    // HashMap does).
    let kargs: HashMap<&str, Option<&str>> = [
        ("console", Some("ttyS0")),
        ("reboot", Some("k")),
        ("panic", Some("1")),
        ("pci", Some("off")),
        ("nomodules", None),
        ("timeout", Some("600000")),
    ]
    .into_iter()
    .collect();
    let boot_args = kargs
        .iter()
        .map(|(k, v)| v.map_or(k.to_string(), |v| format!("{k}={v}")))
        .collect::<Vec<_>>()
        .join(" ");
    let boot = format!(
        r#"{{"boot_args":{},"kernel_image_path":{}}}"#,
        quote(&boot_args),
        quote(&kernel)
    );
    sdk.call("PUT", "/boot-source", Some(&boot), 204);
    // AttachDrives: DrivesBuilder numbers the added drives from "0" and
    // puts the root drive ("root_drive") last.
    let data_drive = format!(
        r#"{{"drive_id":"0","is_read_only":true,"is_root_device":false,"path_on_host":{}}}"#,
        quote(&data)
    );
    sdk.call("PUT", "/drives/0", Some(&data_drive), 204);
    let root_drive = format!(
        r#"{{"drive_id":"root_drive","is_read_only":false,"is_root_device":true,"path_on_host":{}}}"#,
        quote(&rootfs)
    );
    sdk.call("PUT", "/drives/root_drive", Some(&root_drive), 204);
    // CreateNetworkInterfaces: ids from "1", each limiter as
    // NewRateLimiter builds it (both buckets).
    let limiter = r#"{"bandwidth":{"one_time_burst":1048576,"refill_time":1000,"size":10485760},"ops":{"refill_time":1000,"size":1000}}"#;
    let nic = format!(
        r#"{{"guest_mac":"AA:FC:00:00:00:01","host_dev_name":"tap0","iface_id":"1","rx_rate_limiter":{limiter}}}"#
    );
    sdk.call("PUT", "/network-interfaces/1", Some(&nic), 204);
    // AddVsocks.
    let vs = format!(
        r#"{{"guest_cid":3,"uds_path":{},"vsock_id":"vsock0"}}"#,
        quote(&vsock)
    );
    sdk.call("PUT", "/vsock", Some(&vs), 204);
    // startInstance.
    sdk.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        204,
    );
    vmm.wait_console("kbd: ready");

    // DescribeInstanceInfo, GetFirecrackerVersion.
    let info = sdk.call("GET", "/", None, 200).json();
    assert_eq!(info["state"], "Running", "{info:?}");
    assert_eq!(info["id"], vmid, "{info:?}");
    let v = sdk.call("GET", "/version", None, 200).json();
    assert_eq!(v["firecracker_version"], "1.7.0", "{v:?}");
    // UpdateGuestDrive: a new file for drive "0".
    let swap = format!(r#"{{"drive_id":"0","path_on_host":{}}}"#, quote(&data2));
    sdk.call("PATCH", "/drives/0", Some(&swap), 204);
    // UpdateGuestNetworkInterfaceRateLimit sets the tx limiter from the
    // rx one it was given (as the SDK's code does).
    let slower = r#"{"bandwidth":{"refill_time":1000,"size":1048576}}"#;
    let patch =
        format!(r#"{{"iface_id":"1","rx_rate_limiter":{slower},"tx_rate_limiter":{slower}}}"#);
    sdk.call("PATCH", "/network-interfaces/1", Some(&patch), 204);
    // PauseVM, ResumeVM.
    sdk.call("PATCH", "/vm", Some(r#"{"state":"Paused"}"#), 204);
    assert_eq!(sdk.call("GET", "/", None, 200).json()["state"], "Paused");
    sdk.call("PATCH", "/vm", Some(r#"{"state":"Resumed"}"#), 204);
    let cfg = sdk.0.expect("GET", "/vm/config", None, 200).json();
    let swapped = cfg["drives"]
        .as_array()
        .unwrap_or_default()
        .iter()
        .find(|d| d["drive_id"] == "0")
        .map(|d| d["path_on_host"].as_str().unwrap_or_default().to_string());
    assert_eq!(swapped.as_deref(), Some(data2.as_str()), "{cfg:?}");
    let nic = &cfg["network-interfaces"][0];
    assert_eq!(
        nic["tx_rate_limiter"]["bandwidth"]["size"].as_u64(),
        Some(1048576)
    );

    // Shutdown: SendCtrlAltDel reaches the guest's keyboard; the guest
    // resets and the process ends with status 0, which Machine.Wait takes
    // as a clean exit.
    sdk.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"SendCtrlAltDel"}"#),
        204,
    );
    let status = vmm.wait_exit(LONG);
    let console = vmm.console_text();
    assert!(
        console.contains("kbd: 14 11 e0 71 e0 f0 71 f0 11 f0 14"),
        "{console}"
    );
    assert_eq!(status.code(), Some(0), "{console}");
    // The log came through the FIFO with levels (show_level).
    let logged = log.text();
    assert!(
        logged.contains("INFO") && logged.contains("started 1 vCPU(s)"),
        "log FIFO: {logged:?}"
    );
    sdk.0.check_schema(&dir.0);
}

// ---------------------------------------------------------------------
// firecracker-python

/// firecracker-python's MicroVM.create: its data directory for the VM
/// (an 8-character id), the log file made empty, `firecracker --api-sock
/// <dir>/firecracker.socket --id <id> --log-path <dir>/logs/<id>.log` with
/// its output in <dir>/firecracker.log; half a second later the process
/// must still run, found as psutil finds it (the name `firecracker`,
/// `--api-sock` on its command line); GET / within three tries half a
/// second apart; boot source, root drive, machine config, NIC (its body
/// keys in Python's order, as `requests` sends them), InstanceStart. Then
/// pause and resume, the state and the guest's IP from the boot arguments
/// read back, and delete's SIGTERM. The library makes the tap in the
/// host's namespace; here it is in a namespace of the test's own.
#[test]
fn firecracker_python_creates_pauses_and_deletes_a_microvm() {
    let dir = Scratch::new("fcpy");
    let id = "k3v9x2ab";
    let tap = format!("tap_{id}");
    let ns = Netns::new("fcpy", &[tap.as_str()]);
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fc = firecracker_in(&bin);
    let vm_dir = dir.0.join("firecracker").join(id);
    for d in ["", "rootfs", "logs"] {
        std::fs::create_dir_all(vm_dir.join(d)).unwrap();
    }
    let rootfs = vm_dir.join("rootfs/rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    let log_file = vm_dir.join(format!("logs/{id}.log"));
    File::create(&log_file).unwrap();
    let sock = vm_dir.join("firecracker.socket");
    let args = [
        "--api-sock".to_string(),
        text(&sock),
        "--id".into(),
        id.into(),
        "--log-path".into(),
        text(&log_file),
    ];
    let mut vmm = Vmm::launch(&fc, &args, &[], vm_dir.join("firecracker.log"), Some(&ns));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        vmm.child.try_wait().unwrap().is_none(),
        "exited during start-up"
    );
    // ProcessManager.get_pids: processes named "firecracker" with
    // --api-sock on their command line.
    let pid = vmm.pid();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "firecracker");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let words: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let at = words.iter().position(|w| *w == b"--api-sock");
    assert_eq!(
        at.and_then(|i| words.get(i + 1)).copied(),
        Some(text(&sock).as_bytes())
    );

    let api = Api::new(&sock, "vm");
    let up = (0..3).any(|_| {
        let ok = raw_request(&sock, "GET", "/", None, Duration::from_secs(5))
            .is_ok_and(|r| r.status == 200);
        if !ok {
            std::thread::sleep(Duration::from_millis(500));
        }
        ok
    });
    assert!(up, "GET / did not answer within three tries");
    // _boot_args: the guest's address for the kernel's ip= (the default
    // 172.16.0.2, its gateway .1, the VM's name, the host's default
    // route's interface name).
    let boot_args =
        "console=ttyS0 reboot=k pci=off panic=1 ip=172.16.0.2::172.16.0.1:255.255.255.0:quiet-fox:eth0:on";
    let requests = [
        (
            "/boot-source",
            format!(
                r#"{{"kernel_image_path": {}, "boot_args": {}}}"#,
                quote(&text(&guest("ticker"))),
                quote(boot_args)
            ),
        ),
        (
            "/drives/rootfs",
            format!(
                r#"{{"drive_id": "rootfs", "path_on_host": {}, "is_root_device": true, "is_read_only": false}}"#,
                quote(&text(&rootfs))
            ),
        ),
        (
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 512}"#.to_string(),
        ),
        (
            "/network-interfaces/eth0",
            format!(
                r#"{{"iface_id": "eth0", "host_dev_name": {}}}"#,
                quote(&tap)
            ),
        ),
        (
            "/actions",
            r#"{"action_type": "InstanceStart"}"#.to_string(),
        ),
    ];
    for (path, body) in &requests {
        api.expect("PUT", path, Some(body), 204);
    }
    vmm.wait_console("tick 3");

    // pause, resume (update_vmm_state), get_vmm_state, get_vmm_ip_addr.
    api.expect("PATCH", "/vm", Some(r#"{"state": "Paused"}"#), 204);
    assert_eq!(api.expect("GET", "/", None, 200).json()["state"], "Paused");
    api.expect("PATCH", "/vm", Some(r#"{"state": "Resumed"}"#), 204);
    assert_eq!(api.expect("GET", "/", None, 200).json()["state"], "Running");
    let cfg = api.expect("GET", "/vm/config", None, 200).json();
    let shown = cfg["boot-source"]["boot_args"].as_str().unwrap_or_default();
    assert!(shown.contains("ip=172.16.0.2:"), "{cfg:?}");

    // delete (ProcessManager.stop): SIGTERM, then the process is waited
    // for.
    kill(pid, libc::SIGTERM);
    vmm.wait_exit(Duration::from_secs(30));
    // No --level: Firecracker logs at its default level, Info, so the
    // file has the VMM's start-up lines.
    let log = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        log.contains("started 1 vCPU(s)"),
        "no Info lines in the --log-path file without --level: {log:?}"
    );
    api.check_schema(&dir.0);
}

// ---------------------------------------------------------------------
// flintlock

/// flintlock's Firecracker provider (`infrastructure/firecracker`): the
/// VM's state directory with its log and metrics files made empty first;
/// the config file it writes (the root volume with `cache_type` Unsafe and
/// `partuuid` left out, a NIC allowed to reach MMDS, `mmds-config` V2
/// naming it, the logger at Debug with level and origin, the metrics file,
/// SMT off, the boot arguments carrying cloud-init's `network-config`);
/// the metadata file (`latest` holding cloud-init's meta-data, user-data
/// and vendor-data as strings); then `firecracker --id UID --boot-timer
/// --no-api --config-file C --metadata M`, stdin empty and its output in
/// files, as flintlock runs it. The guest is the ticker, which has no
/// cloud-init; the Linux lane test
/// `linux_reads_mmds_v2_with_a_session_token` reads a `--metadata` store
/// from a guest. SIGTERM then ends the VMM, and a metadata file that is
/// not JSON stops the next launch with one line.
#[test]
fn flintlock_boots_from_its_config_and_metadata_files() {
    let dir = Scratch::new("flint");
    let ns = Netns::new("flint", &["fltap0"]);
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fc = firecracker_in(&bin);
    let state = dir.0.join("vm/ns1/mvm1/01HQ8");
    std::fs::create_dir_all(&state).unwrap();
    let (log, metrics) = (
        state.join("firecracker.log"),
        state.join("firecracker.metrics"),
    );
    for f in [&log, &metrics] {
        File::create(f).unwrap();
    }
    let root = state.join("root.img");
    std::fs::write(&root, vec![0u8; 1 << 20]).unwrap();
    let network_config = "dmVyc2lvbjogMgpldGhlcm5ldHM6CiAgZXRoMDoKICAgIGRoY3A0OiB0cnVlCg==";
    let config = format!(
        r#"{{"drives":[{{"drive_id":"root","path_on_host":{},"is_root_device":true,"is_read_only":false,"cache_type":"Unsafe"}}],"boot-source":{{"kernel_image_path":{},"boot_args":"console=ttyS0 reboot=k panic=1 network-config={network_config}"}},"logger":{{"log_path":{},"level":"Debug","show_level":true,"show_log_origin":true}},"machine-config":{{"vcpu_count":2,"mem_size_mib":64,"smt":false,"track_dirty_pages":false}},"metrics":{{"metrics_path":{}}},"mmds-config":{{"version":"V2","network_interfaces":["eth0"]}},"network-interfaces":[{{"iface_id":"eth0","host_dev_name":"fltap0","guest_mac":"02:00:00:00:00:01"}}]}}"#,
        quote(&text(&root)),
        quote(&text(&guest("ticker"))),
        quote(&text(&log)),
        quote(&text(&metrics)),
    );
    let config_path = state.join("firecracker.cfg");
    std::fs::write(&config_path, config).unwrap();
    let metadata = r##"{"latest":{"meta-data":"instance_id: ns1/mvm1\nlocal_hostname: mvm1\nplatform: liquid_metal\n","user-data":"#cloud-config\nhostname: mvm1\n","vendor-data":"#cloud-config\n"}}"##;
    let metadata_path = state.join("metadata.json");
    std::fs::write(&metadata_path, metadata).unwrap();
    let args = [
        "--id",
        "01HQ8",
        "--boot-timer",
        "--no-api",
        "--config-file",
        &text(&config_path),
        "--metadata",
        &text(&metadata_path),
    ]
    .map(String::from);
    let mut vmm = Vmm::launch(&fc, &args, &[], state.join("firecracker.stdout"), Some(&ns));
    vmm.wait_console("tick 3");
    // The log at Debug, each line with its level and origin; the metrics
    // file's first line, written as the VM started.
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("started 2 vCPU(s)"), "{log_text}");
    assert!(log_text.contains(" DEBUG "), "no Debug line: {log_text}");
    let first = std::fs::read_to_string(&metrics).unwrap();
    let first = first.lines().next().unwrap_or_default();
    let first = api::Json::parse(first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert!(first["utc_timestamp_ms"].as_u64().is_some());
    // No API socket anywhere in the state directory.
    let sockets = std::fs::read_dir(&state)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_type().is_ok_and(|t| t.is_socket()))
        })
        .count();
    assert_eq!(sockets, 0, "--no-api made a socket");
    kill(vmm.pid(), libc::SIGTERM);
    vmm.wait_exit(Duration::from_secs(15));

    // A metadata file that is not JSON stops it at once, saying why.
    std::fs::write(&metadata_path, "instance_id: x").unwrap();
    let mut bad = Vmm::launch(&fc, &args, &[], state.join("bad.stdout"), Some(&ns));
    let status = bad.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(1));
    let said = bad.console_text();
    assert!(said.contains("--metadata"), "{said}");
}

// ---------------------------------------------------------------------
// firecracker-containerd

/// firecracker-containerd's runtime shim (`runtime/service.go`, its noop
/// jailer, the Go SDK's default handlers): the shim directory
/// `<shim_base_dir>/<namespace>/<vmID>` as the working directory, with the
/// log and metrics FIFOs it makes (0700) and nobody reading them, and one
/// container stub drive (`ctrstub0`: the stub's magic bytes, its length and
/// name, padded to 512 bytes; its drive id the base32 of the name);
/// `<firecracker_binary_path> --api-sock firecracker.sock`, a path relative
/// to that directory; then the SDK's requests in order with the shim's
/// defaults (1 vCPU, 128 MiB; `cpu_template` T2 only on an Intel host, as
/// the shim clears it elsewhere; the root drive read-only; the vsock
/// `agent_api` on the relative `firecracker.vsock` with the CID left
/// unset, 0), InstanceStart; a container's rootfs patched onto the stub
/// drive and, when the task goes, the stub put back by its relative name;
/// and the forced stop (SIGKILL) the shim falls back on. The guest is the
/// ticker; the shim's agent (over the vsock) is not there.
#[test]
fn firecracker_containerd_runs_a_vm_and_swaps_a_container_drive() {
    let dir = Scratch::new("fcctr");
    let bin = dir.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fc = firecracker_in(&bin);
    let vm_id = "7f3c9a1e";
    let shim = dir.0.join("shim-base/default").join(vm_id);
    std::fs::create_dir_all(&shim).unwrap();
    let (log_fifo, metrics_fifo) = (shim.join("fc-logs.fifo"), shim.join("fc-metrics.fifo"));
    mkfifo(&log_fifo, 0o700);
    mkfifo(&metrics_fifo, 0o700);
    // The stub: magic, the name's length, the name, zeros to 512 bytes.
    let stub_name = "ctrstub0";
    let mut stub = vec![
        214u8,
        244,
        216,
        245,
        215,
        177,
        177,
        177,
        stub_name.len() as u8,
    ];
    stub.extend_from_slice(stub_name.as_bytes());
    stub.resize(512, 0);
    std::fs::write(shim.join(stub_name), &stub).unwrap();
    let stub_id = "MN2HE43UOVRDA"; // base32("ctrstub0"), no padding
    let root = dir.file("default-rootfs.img", &vec![0u8; 1 << 20]);
    let container = dir.file("container.img", &vec![0u8; 256 << 10]);

    let console = dir.0.join("console");
    let out = File::create(&console).unwrap();
    let child = Command::new(&fc)
        .args(["--api-sock", "firecracker.sock"])
        .current_dir(&shim)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .expect("launch firecracker");
    let mut vmm = Vmm { child, console };
    let sock = shim.join("firecracker.sock");
    wait_for("the socket to answer", Duration::from_secs(3), || {
        raw_request(
            &sock,
            "GET",
            "/machine-config",
            None,
            Duration::from_millis(500),
        )
        .is_ok_and(|r| r.status == 200)
        .then_some(())
    });
    let sdk = GoClient(Api::new(&sock, "vm"));
    // The shim sets the log level only when asked (log_levels); the SDK
    // then leaves `level` out.
    let logger = format!(
        r#"{{"log_path":{},"show_level":true,"show_log_origin":false}}"#,
        quote(&text(&log_fifo))
    );
    sdk.call("PUT", "/logger", Some(&logger), 204);
    let body = format!(r#"{{"metrics_path":{}}}"#, quote(&text(&metrics_fifo)));
    sdk.call("PUT", "/metrics", Some(&body), 204);
    let intel = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .contains("GenuineIntel");
    let template = if intel { r#""cpu_template":"T2","# } else { "" };
    let machine = format!(r#"{{{template}"mem_size_mib":128,"smt":false,"vcpu_count":1}}"#);
    sdk.call("PUT", "/machine-config", Some(&machine), 204);
    let got = sdk.call("GET", "/machine-config", None, 200).json();
    assert_eq!(got["mem_size_mib"].as_u64(), Some(128), "{got:?}");
    let boot = format!(
        r#"{{"boot_args":"console=ttyS0 noapic reboot=k panic=1 pci=off nomodules rw ","kernel_image_path":{}}}"#,
        quote(&text(&guest("ticker")))
    );
    sdk.call("PUT", "/boot-source", Some(&boot), 204);
    let root_drive = format!(
        r#"{{"drive_id":"root_drive","is_read_only":true,"is_root_device":true,"path_on_host":{}}}"#,
        quote(&root)
    );
    sdk.call("PUT", "/drives/root_drive", Some(&root_drive), 204);
    let stub_drive = format!(
        r#"{{"drive_id":"{stub_id}","is_read_only":false,"is_root_device":false,"path_on_host":{}}}"#,
        quote(&text(&shim.join(stub_name)))
    );
    sdk.call("PUT", &format!("/drives/{stub_id}"), Some(&stub_drive), 204);
    let vsock = r#"{"guest_cid":0,"uds_path":"firecracker.vsock","vsock_id":"agent_api"}"#;
    sdk.call("PUT", "/vsock", Some(vsock), 204);
    sdk.call(
        "PUT",
        "/actions",
        Some(r#"{"action_type":"InstanceStart"}"#),
        204,
    );
    vmm.wait_console("tick 2");
    // The vsock's socket, where the shim dials its agent, is in the shim
    // directory.
    assert!(
        shim.join("firecracker.vsock").exists(),
        "no vsock socket in the shim directory"
    );
    // A container's rootfs onto the stub, then the stub back by the
    // relative name the shim uses when the task is deleted.
    let patch = |path: &str| {
        let body = format!(
            r#"{{"drive_id":"{stub_id}","path_on_host":{}}}"#,
            quote(path)
        );
        sdk.call("PATCH", &format!("/drives/{stub_id}"), Some(&body), 204);
    };
    patch(&container);
    let open = open_files(vmm.pid());
    assert!(
        open.contains(&file_id(Path::new(&container))),
        "the container's disk is not open"
    );
    patch(stub_name);
    let open = open_files(vmm.pid());
    assert!(
        open.contains(&file_id(&shim.join(stub_name))),
        "the stub is not back"
    );
    assert!(
        !open.contains(&file_id(Path::new(&container))),
        "the container's disk is still open"
    );
    vmm.wait_console("tick 4");
    // terminate: GET / says Running; the agent's Shutdown is not there, so
    // the forced stop: SIGKILL.
    let state = sdk.call("GET", "/", None, 200).json();
    assert_eq!(state["state"].as_str(), Some("Running"), "{state:?}");
    kill(vmm.pid(), libc::SIGKILL);
    vmm.wait_exit(Duration::from_secs(5));
}
