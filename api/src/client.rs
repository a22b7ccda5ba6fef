//! The daemon's command-line client: one subcommand per endpoint of
//! `strato serve`'s API. Exit status 0 on success, 1 with the daemon's
//! message on stderr otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::http;

/// The daemon's socket, shared by every client subcommand.
#[derive(Args)]
pub struct Sock {
    /// Unix socket of the daemon (`strato serve --api-sock`).
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
}

/// An instance id and the daemon's socket.
#[derive(Args)]
pub struct Target {
    #[command(flatten)]
    sock: Sock,
    /// Instance id.
    id: String,
}

/// A stop or delete: instance and timeout.
#[derive(Args)]
pub struct StopArgs {
    #[command(flatten)]
    target: Target,
    /// Wait this long for the guest to shut down before killing it
    /// (default: the daemon's --stop-timeout-ms).
    #[arg(long, value_name = "MS")]
    timeout_ms: Option<u64>,
}

/// `strato create` options.
#[derive(Args)]
pub struct CreateArgs {
    #[command(flatten)]
    sock: Sock,
    /// Instance id: 1 to 64 of A-Z a-z 0-9 _ -.
    #[arg(long)]
    id: String,
    /// Kernel image (made absolute).
    #[arg(long)]
    kernel: PathBuf,
    /// Initrd / initramfs image.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (default: the VMM's).
    #[arg(long)]
    cmdline: Option<String>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// The most vCPUs `strato resize` can give the running instance (x86;
    /// default --vcpus).
    #[arg(long)]
    max_vcpus: Option<u32>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128)]
    memory: u64,
    /// The most memory `strato resize` can give the running instance, in
    /// MiB (default --memory): what is above --memory is hotpluggable
    /// (virtio-mem).
    #[arg(long)]
    max_memory: Option<u64>,
    /// A drive: path=FILE[,id=ID][,root=on][,readonly=on]; repeat for more.
    /// Ids default to drive0, drive1, ...
    #[arg(long = "drive", value_name = "SPEC")]
    drives: Vec<String>,
    /// A network interface: tap=NAME[,mac=xx:xx:xx:xx:xx:xx][,id=ID];
    /// repeat for more. Ids default to eth0, eth1, ...
    #[arg(long = "net", value_name = "SPEC")]
    nets: Vec<String>,
    /// Create the instance without starting it.
    #[arg(long)]
    no_start: bool,
}

/// `strato resize` options.
#[derive(Args)]
pub struct ResizeArgs {
    #[command(flatten)]
    target: Target,
    /// New number of vCPUs.
    #[arg(long)]
    vcpus: Option<u32>,
    /// New guest memory in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// For a running instance: how long to wait for the guest to take the
    /// change, printing its progress (0: do not wait).
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
}

/// `strato console` options.
#[derive(Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    target: Target,
    /// How many bytes of the end of the console log to print.
    #[arg(long, default_value_t = 64 * 1024)]
    bytes: u64,
}

/// Client subcommands (talk to a running `strato serve`).
#[derive(Subcommand)]
pub enum ClientCommand {
    /// Create a microVM on the daemon (and start it unless --no-start).
    Create(CreateArgs),
    /// List the daemon's microVMs.
    List(Sock),
    /// Show one microVM as JSON.
    Show(Target),
    /// Start a created or stopped microVM.
    Start(Target),
    /// Stop a microVM: Ctrl-Alt-Del, then kill after the timeout.
    Stop(StopArgs),
    /// Kill a microVM's VMM process now.
    Kill(Target),
    /// Pause a running microVM.
    Pause(Target),
    /// Resume a paused microVM.
    Resume(Target),
    /// Change the vCPUs or memory of a microVM that is not running.
    Resize(ResizeArgs),
    /// Stop a microVM and remove it with its files.
    Delete(StopArgs),
    /// Print the end of a microVM's serial console log.
    Console(ConsoleArgs),
}

/// Parses `key=value,...`, splitting on commas.
fn key_values<'a>(what: &str, spec: &'a str) -> Result<Vec<(&'a str, &'a str)>, String> {
    spec.split(',')
        .map(|kv| {
            kv.split_once('=')
                .ok_or_else(|| format!("--{what}: expected key=value, got {kv:?}"))
        })
        .collect()
}

fn switch(what: &str, key: &str, value: &str) -> Result<bool, String> {
    match value {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(format!("--{what}: {key}={value}: expected on or off")),
    }
}

/// Makes a path absolute against the current directory (the daemon
/// resolves nothing relative to the client).
fn absolute(p: &Path) -> String {
    let abs = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    abs.to_string_lossy().into_owned()
}

fn parse_drive(spec: &str, index: usize) -> Result<Value, String> {
    let mut d = json!({"id": format!("drive{index}"), "root": false, "readonly": false});
    let mut path = None;
    for (k, v) in key_values("drive", spec)? {
        match k {
            "path" => path = Some(absolute(Path::new(v))),
            "id" => d["id"] = json!(v),
            "root" => d["root"] = json!(switch("drive", k, v)?),
            "readonly" | "ro" => d["readonly"] = json!(switch("drive", k, v)?),
            _ => {
                return Err(format!(
                    "--drive: unknown key {k:?} (path, id, root, readonly)"
                ))
            }
        }
    }
    d["path"] = json!(path.ok_or("--drive: path=FILE is required")?);
    Ok(d)
}

fn parse_net(spec: &str, index: usize) -> Result<Value, String> {
    let mut n = json!({"id": format!("eth{index}")});
    let mut tap = None;
    for (k, v) in key_values("net", spec)? {
        match k {
            "tap" => tap = Some(v.to_string()),
            "mac" => n["mac"] = json!(v),
            "id" => n["id"] = json!(v),
            _ => return Err(format!("--net: unknown key {k:?} (tap, mac, id)")),
        }
    }
    n["tap"] = json!(tap.ok_or("--net: tap=NAME is required")?);
    Ok(n)
}

fn create_body(a: &CreateArgs) -> Result<Value, String> {
    let drives = a
        .drives
        .iter()
        .enumerate()
        .map(|(i, s)| parse_drive(s, i))
        .collect::<Result<Vec<_>, _>>()?;
    let nets = a
        .nets
        .iter()
        .enumerate()
        .map(|(i, s)| parse_net(s, i))
        .collect::<Result<Vec<_>, _>>()?;
    let mut body = json!({
        "id": a.id,
        "vcpus": a.vcpus,
        "memory_mib": a.memory,
        "kernel": absolute(&a.kernel),
        "initrd": a.initrd.as_deref().map(absolute),
        "cmdline": a.cmdline,
        "drives": drives,
        "nets": nets,
        "start": !a.no_start,
    });
    if let Some(max) = a.max_vcpus {
        body["max_vcpus"] = json!(max);
    }
    if let Some(max) = a.max_memory {
        body["max_memory_mib"] = json!(max);
    }
    Ok(body)
}

/// One line on how far a running instance's guest has come to its size.
fn progress_line(v: &Value) -> String {
    let a = &v["actual"];
    let mut line = format!(
        "{}: vCPUs {} present of {} requested",
        v["id"].as_str().unwrap_or("?"),
        a["vcpus"],
        v["config"]["vcpus"],
    );
    for (key, what) in [
        ("vcpus_inserting", "being plugged"),
        ("vcpus_removing", "being unplugged"),
    ] {
        if a[key].as_u64().is_some_and(|n| n > 0) {
            line.push_str(&format!(", {} {what}", a[key]));
        }
    }
    line.push_str(&format!(
        "; memory {} of {} MiB",
        a["memory_mib"], v["config"]["memory_mib"]
    ));
    line
}

/// True once the guest has what was asked for.
fn converged(v: &Value) -> bool {
    let a = &v["actual"];
    a["vcpus"] == v["config"]["vcpus"]
        && a["memory_mib"] == v["config"]["memory_mib"]
        && a["vcpus_inserting"].as_u64() == Some(0)
        && a["vcpus_removing"].as_u64() == Some(0)
}

/// `strato resize`: the PATCH, then for a running instance the guest's
/// progress until it has the new size or `wait` passes.
fn resize(sock: &Path, path: &str, body: Value, wait: Duration) -> i32 {
    let timeout = Duration::from_secs(30);
    let resp = match http::call(sock, "PATCH", path, Some(&body), timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strato: cannot reach the daemon at {}: {e}", sock.display());
            return 1;
        }
    };
    if !(200..300).contains(&resp.status) {
        eprintln!("strato: {} ({})", resp.message(), resp.status);
        return 1;
    }
    let mut v = resp.json();
    if v["actual"].is_null() || wait.is_zero() {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return 0;
    }
    let deadline = std::time::Instant::now() + wait;
    let mut last = String::new();
    loop {
        let line = progress_line(&v);
        if line != last {
            println!("{line}");
            last = line;
        }
        if converged(&v) {
            return 0;
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "strato: the guest has not taken the change after {} s (it may not bring vCPUs up or give them back, or have no balloon driver)",
                wait.as_secs()
            );
            return 1;
        }
        std::thread::sleep(Duration::from_millis(200));
        match http::call(sock, "GET", path, None, timeout) {
            Ok(r) if r.status == 200 => v = r.json(),
            Ok(r) => {
                eprintln!("strato: {} ({})", r.message(), r.status);
                return 1;
            }
            Err(e) => {
                eprintln!("strato: cannot reach the daemon at {}: {e}", sock.display());
                return 1;
            }
        }
    }
}

/// What to do with a successful response.
enum Show {
    /// Pretty JSON of the body.
    Json,
    /// One line: "<id>: <state>".
    State,
    /// The instance table.
    Table,
    /// The body as it is.
    Raw,
    /// Nothing.
    Quiet,
}

fn request(
    sock: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
    timeout: Duration,
    show: Show,
) -> i32 {
    let resp = match http::call(sock, method, path, body.as_ref(), timeout) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strato: cannot reach the daemon at {}: {e}", sock.display());
            return 1;
        }
    };
    if !(200..300).contains(&resp.status) {
        eprintln!("strato: {} ({})", resp.message(), resp.status);
        return 1;
    }
    let mut out = std::io::stdout().lock();
    let written = match show {
        Show::Json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&resp.json()).unwrap_or_default()
        ),
        Show::State => {
            let v = resp.json();
            let mut line = format!(
                "{}: {}",
                v["id"].as_str().unwrap_or("?"),
                v["state"].as_str().unwrap_or("?")
            );
            if let Some(r) = v["exit_reason"].as_str() {
                if !v["pid"].is_number() {
                    line.push_str(&format!(" ({r})"));
                }
            }
            writeln!(out, "{line}")
        }
        Show::Table => out.write_all(table(&resp.json()).as_bytes()),
        Show::Raw => out.write_all(&resp.body),
        Show::Quiet => Ok(()),
    };
    match written {
        Ok(()) => 0,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
        Err(e) => {
            eprintln!("strato: {e}");
            1
        }
    }
}

/// Formats `{"instances": [...]}` as a table.
fn table(list: &Value) -> String {
    let empty = Vec::new();
    let rows: Vec<[String; 6]> = list["instances"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|i| {
            let num = |v: &Value| v.as_u64().map(|n| n.to_string()).unwrap_or("-".into());
            let uptime = i["uptime_ms"]
                .as_u64()
                .map(|ms| format!("{}s", ms / 1000))
                .unwrap_or("-".into());
            [
                i["id"].as_str().unwrap_or("?").to_string(),
                i["state"].as_str().unwrap_or("?").to_string(),
                num(&i["pid"]),
                num(&i["config"]["vcpus"]),
                num(&i["config"]["memory_mib"]),
                uptime,
            ]
        })
        .collect();
    let head = ["ID", "STATE", "PID", "VCPUS", "MEMORY", "UPTIME"].map(String::from);
    let mut widths = head.clone().map(|h| h.len());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut s = String::new();
    for r in std::iter::once(&head).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        s.push_str(cells.join("  ").trim_end());
        s.push('\n');
    }
    s
}

/// How long a stop may take: the given timeout plus a margin, or a
/// generous bound when the daemon's default applies.
fn stop_wait(timeout_ms: Option<u64>) -> Duration {
    Duration::from_millis(timeout_ms.unwrap_or(600_000)) + Duration::from_secs(60)
}

fn with_timeout(path: String, timeout_ms: Option<u64>) -> String {
    match timeout_ms {
        Some(t) => format!("{path}?timeout_ms={t}"),
        None => path,
    }
}

/// Runs a client command.
pub fn main(cmd: ClientCommand) -> i32 {
    let short = Duration::from_secs(30);
    let start = Duration::from_secs(120);
    let inst = |id: &str| format!("/v1/instances/{id}");
    match cmd {
        ClientCommand::Create(a) => match create_body(&a) {
            Ok(body) => request(
                &a.sock.api_sock,
                "POST",
                "/v1/instances",
                Some(body),
                start,
                Show::Json,
            ),
            Err(e) => {
                eprintln!("strato: {e}");
                1
            }
        },
        ClientCommand::List(s) => request(
            &s.api_sock,
            "GET",
            "/v1/instances",
            None,
            short,
            Show::Table,
        ),
        ClientCommand::Show(t) => request(
            &t.sock.api_sock,
            "GET",
            &inst(&t.id),
            None,
            short,
            Show::Json,
        ),
        ClientCommand::Start(t) => request(
            &t.sock.api_sock,
            "POST",
            &format!("{}/start", inst(&t.id)),
            None,
            start,
            Show::State,
        ),
        ClientCommand::Stop(a) => request(
            &a.target.sock.api_sock,
            "POST",
            &with_timeout(format!("{}/stop", inst(&a.target.id)), a.timeout_ms),
            None,
            stop_wait(a.timeout_ms),
            Show::State,
        ),
        ClientCommand::Kill(t) => request(
            &t.sock.api_sock,
            "POST",
            &format!("{}/kill", inst(&t.id)),
            None,
            short,
            Show::State,
        ),
        ClientCommand::Pause(t) => request(
            &t.sock.api_sock,
            "POST",
            &format!("{}/pause", inst(&t.id)),
            None,
            short,
            Show::State,
        ),
        ClientCommand::Resume(t) => request(
            &t.sock.api_sock,
            "POST",
            &format!("{}/resume", inst(&t.id)),
            None,
            short,
            Show::State,
        ),
        ClientCommand::Resize(a) => {
            let mut body = json!({});
            if let Some(v) = a.vcpus {
                body["vcpus"] = json!(v);
            }
            if let Some(m) = a.memory {
                body["memory_mib"] = json!(m);
            }
            resize(
                &a.target.sock.api_sock,
                &inst(&a.target.id),
                body,
                Duration::from_secs(a.wait_s),
            )
        }
        ClientCommand::Delete(a) => request(
            &a.target.sock.api_sock,
            "DELETE",
            &with_timeout(inst(&a.target.id), a.timeout_ms),
            None,
            stop_wait(a.timeout_ms),
            Show::Quiet,
        ),
        ClientCommand::Console(a) => request(
            &a.target.sock.api_sock,
            "GET",
            &format!("{}/console?bytes={}", inst(&a.target.id), a.bytes),
            None,
            short,
            Show::Raw,
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_and_net_specs() {
        let d = parse_drive("path=/r.img,readonly=on,root=on", 0).unwrap();
        assert_eq!(
            d,
            json!({"id": "drive0", "path": "/r.img", "root": true, "readonly": true})
        );
        let d = parse_drive("path=rel.img,id=data", 1).unwrap();
        assert!(d["path"].as_str().unwrap().starts_with('/'));
        assert_eq!(d["id"], "data");
        assert!(parse_drive("readonly=on", 0).is_err());
        assert!(parse_drive("path=/x,bogus=1", 0).is_err());
        let n = parse_net("tap=tap0,mac=06:00:ac:10:00:02", 1).unwrap();
        assert_eq!(
            n,
            json!({"id": "eth1", "tap": "tap0", "mac": "06:00:ac:10:00:02"})
        );
        assert!(parse_net("mac=06:00:ac:10:00:02", 0).is_err());
    }

    #[test]
    fn list_table() {
        let t = table(&json!({"instances": [
            {"id": "web-1", "state": "running", "pid": 42, "uptime_ms": 61000,
             "config": {"vcpus": 2, "memory_mib": 256}},
            {"id": "db", "state": "stopped", "pid": null, "uptime_ms": null,
             "config": {"vcpus": 1, "memory_mib": 128}},
        ]}));
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "ID     STATE    PID  VCPUS  MEMORY  UPTIME");
        assert_eq!(lines[1], "web-1  running  42   2      256     61s");
        assert_eq!(lines[2], "db     stopped  -    1      128     -");
    }
}
