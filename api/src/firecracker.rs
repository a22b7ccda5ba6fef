//! Firecracker's command line, for its clients: strato invoked as
//! `firecracker` (a symlink or a copy of the binary by that name), or as
//! `strato` with Firecracker's flags and no subcommand, takes Firecracker's
//! options and runs `strato vm` with their meaning here.
//!
//! Each flag is implemented, or accepted with what it means here (said in
//! its help), or refused with one line naming what strato lacks.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;
use log::LevelFilter;

use crate::vm_api::{self, FIRECRACKER_API_VERSION};

/// Firecracker's own default socket.
const DEFAULT_API_SOCK: &str = "/run/firecracker.socket";
/// Firecracker's default request body limit (50 KiB).
const DEFAULT_MAX_PAYLOAD: u64 = 51200;

/// strato, on Firecracker's command line.
#[derive(Parser, Debug)]
#[command(name = "firecracker", disable_version_flag = true)]
struct FirecrackerArgs {
    /// Unix socket of the API.
    #[arg(long, default_value = DEFAULT_API_SOCK)]
    api_sock: PathBuf,
    /// MicroVM id (`GET /` shows it; log lines carry it).
    #[arg(long, default_value = "anonymous-instance")]
    id: String,
    /// Firecracker's compiled BPF filters: not loaded; strato installs its
    /// own per-thread filters (or none with --no-seccomp).
    #[arg(long, conflicts_with = "no_seccomp")]
    seccomp_filter: Option<PathBuf>,
    /// Run without seccomp filters.
    #[arg(long)]
    no_seccomp: bool,
    /// Accepted: Firecracker's start-up time metrics, which strato does
    /// not report.
    #[arg(long)]
    start_time_us: Option<u64>,
    /// Accepted: as --start-time-us.
    #[arg(long)]
    start_time_cpu_us: Option<u64>,
    /// Accepted: as --start-time-us.
    #[arg(long)]
    parent_cpu_time_us: Option<u64>,
    /// Boot at once from this JSON configuration.
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Fill the metadata store (MMDS) from this JSON file.
    #[arg(long)]
    metadata: Option<PathBuf>,
    /// Serve no API (needs --config-file).
    #[arg(long, requires = "config_file")]
    no_api: bool,
    /// Write the log here (a file or a FIFO) instead of stderr.
    #[arg(long)]
    log_path: Option<PathBuf>,
    /// Log level: Off, Error, Warning, Info, Debug or Trace.
    #[arg(long, value_parser = crate::logger::parse_level)]
    level: Option<LevelFilter>,
    /// Log only this module's messages (a Rust module path of strato).
    #[arg(long)]
    module: Option<String>,
    /// Put each message's level in its log line.
    #[arg(long)]
    show_level: bool,
    /// Put each message's source file and line in its log line.
    #[arg(long)]
    show_log_origin: bool,
    /// Write metrics lines here (a file or a FIFO).
    #[arg(long)]
    metrics_path: Option<PathBuf>,
    /// Accepted: strato's boot timer device is always there.
    #[arg(long)]
    boot_timer: bool,
    /// Print the version: Firecracker's API version, then strato's.
    #[arg(long)]
    version: bool,
    /// Snapshots: refused, strato has none.
    #[arg(long)]
    snapshot_version: bool,
    /// Snapshots: refused, strato has none.
    #[arg(long)]
    describe_snapshot: Option<PathBuf>,
    /// Refuse API request bodies larger than this (at most 16 MiB).
    #[arg(long, default_value_t = DEFAULT_MAX_PAYLOAD,
          value_parser = clap::value_parser!(u64).range(1..=16 << 20))]
    http_api_max_payload_size: u64,
    /// The most the metadata store may hold, in bytes.
    #[arg(long)]
    mmds_size_limit: Option<u64>,
    /// Accepted: strato has no PCI; its devices stay on virtio-mmio,
    /// which the guest's kernel must support.
    #[arg(long)]
    enable_pci: bool,
}

/// Whether the command line is Firecracker's: the program is called
/// `firecracker`, or strato got a flag first that is not one of its own.
pub fn invoked_as_firecracker(args: &[OsString]) -> bool {
    let called = args
        .first()
        .map(std::path::Path::new)
        .and_then(|p| p.file_name())
        .is_some_and(|n| n == "firecracker");
    if called {
        return true;
    }
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return false;
    };
    let strato_own = ["--help", "-h", "--log-level"];
    first.starts_with("--") && !strato_own.contains(&first) && !first.starts_with("--log-level=")
}

/// The version line Firecracker's clients parse: `Firecracker v<semver>`
/// first, then what this really is.
pub fn version_line() -> String {
    format!(
        "Firecracker v{FIRECRACKER_API_VERSION} (strato {})",
        env!("CARGO_PKG_VERSION")
    )
}

/// Runs Firecracker's command line `args` (argv[0] first); returns the
/// exit status.
pub fn main(args: Vec<OsString>) -> i32 {
    let fc = match FirecrackerArgs::try_parse_from(&args) {
        Ok(a) => a,
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            println!("{}\n", version_line());
            let _ = e.print();
            return 0;
        }
        Err(e) => {
            // One line, as Firecracker's own parser gives: the error
            // without clap's tips and usage, its lines joined.
            let text = e.render().to_string();
            let what = text.split("\n\n").next().unwrap_or_default();
            let what = what.trim_start_matches("error: ");
            eprintln!(
                "firecracker (strato): {}",
                what.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            return 1;
        }
    };
    if fc.version {
        println!("{}", version_line());
        return 0;
    }
    match run(fc) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("firecracker (strato): {e}");
            1
        }
    }
}

/// Applies what strato has of `fc` and runs `strato vm` with the rest.
fn run(fc: FirecrackerArgs) -> Result<i32, String> {
    if fc.snapshot_version || fc.describe_snapshot.is_some() {
        return Err("snapshots are not supported".into());
    }
    let file = match &fc.log_path {
        Some(path) => Some(
            crate::logger::open(path).map_err(|e| format!("--log-path {}: {e}", path.display()))?,
        ),
        None => None,
    };
    crate::logger::update(crate::logger::Update {
        // Firecracker's default level is Info; its clients read the log
        // for what the VMM did.
        level: Some(fc.level.unwrap_or(log::LevelFilter::Info)),
        module: fc.module.clone(),
        file,
        show_level: Some(fc.show_level),
        show_origin: Some(fc.show_log_origin),
        id: Some(fc.id.clone()),
    });
    if let Some(path) = &fc.seccomp_filter {
        log::warn!(
            "--seccomp-filter {}: not loaded; strato installs its own filters",
            path.display()
        );
    }
    if fc.enable_pci {
        log::warn!("--enable-pci: strato has no PCI; its devices are on virtio-mmio");
    }
    let mut vm: Vec<OsString> = vec!["vm".into(), "--id".into(), fc.id.into()];
    if fc.no_api {
        vm.push("--no-api".into());
    } else {
        vm.push("--api-sock".into());
        vm.push(fc.api_sock.into());
    }
    if let Some(c) = fc.config_file {
        vm.push("--config-file".into());
        vm.push(c.into());
    }
    if fc.no_seccomp {
        vm.push("--no-seccomp".into());
    }
    if let Some(m) = fc.metrics_path {
        vm.push("--metrics-path".into());
        vm.push(m.into());
    }
    if let Some(m) = fc.metadata {
        vm.push("--metadata".into());
        vm.push(m.into());
    }
    if let Some(l) = fc.mmds_size_limit {
        vm.push("--mmds-size-limit".into());
        vm.push(l.to_string().into());
    }
    vm.push("--http-api-max-payload-size".into());
    vm.push(fc.http_api_max_payload_size.to_string().into());
    let args = VmOnly::try_parse_from(vm).map_err(|e| e.to_string())?;
    Ok(vm_api::main(args.vm))
}

/// `strato vm`'s options, parsed from the translated command line.
#[derive(Parser)]
struct VmOnly {
    #[command(flatten)]
    vm: vm_api::VmArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn firecracker_command_lines_are_told_from_strato_ones() {
        assert!(invoked_as_firecracker(&args(&["/usr/bin/firecracker"])));
        assert!(invoked_as_firecracker(&args(&[
            "strato",
            "--api-sock",
            "/s"
        ])));
        assert!(invoked_as_firecracker(&args(&["strato", "--version"])));
        assert!(!invoked_as_firecracker(&args(&[
            "strato",
            "vm",
            "--api-sock",
            "/s"
        ])));
        assert!(!invoked_as_firecracker(&args(&[
            "strato",
            "--log-level",
            "debug",
            "run"
        ])));
        assert!(!invoked_as_firecracker(&args(&[
            "strato",
            "--log-level=debug",
            "run"
        ])));
        assert!(!invoked_as_firecracker(&args(&["strato", "--help"])));
        assert!(!invoked_as_firecracker(&args(&["strato"])));
    }

    #[test]
    fn the_version_line_is_what_clients_parse() {
        // Kata takes the second word without its "v" as a semver.
        let line = version_line();
        let second = line.split(' ').nth(1).unwrap();
        assert_eq!(second.strip_prefix('v'), Some(FIRECRACKER_API_VERSION));
        assert!(line.contains("strato"));
    }

    #[test]
    fn every_flag_of_firecracker_is_known() {
        let all = args(&[
            "firecracker",
            "--api-sock",
            "/s",
            "--id",
            "a1",
            "--no-seccomp",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "2",
            "--parent-cpu-time-us",
            "3",
            "--config-file",
            "/c",
            "--no-api",
            "--log-path",
            "/l",
            "--level",
            "Warning",
            "--module",
            "vmm",
            "--show-level",
            "--show-log-origin",
            "--boot-timer",
            "--http-api-max-payload-size",
            "1000",
            "--mmds-size-limit",
            "9",
            "--enable-pci",
        ]);
        let a = FirecrackerArgs::try_parse_from(all).unwrap();
        assert_eq!(a.level, Some(LevelFilter::Warn));
        assert_eq!(a.http_api_max_payload_size, 1000);
        for more in [
            &["--metrics-path", "/m"][..],
            &["--metadata", "/m"],
            &["--seccomp-filter", "/f"],
            &["--snapshot-version"],
            &["--describe-snapshot", "/s"],
            &["--version"],
        ] {
            let mut v = args(&["firecracker"]);
            v.extend(args(more));
            assert!(FirecrackerArgs::try_parse_from(v).is_ok(), "{more:?}");
        }
        for bad in [
            &["--bogus"][..],
            &["--level", "loud"],
            &["--no-api"],
            &["--no-seccomp", "--seccomp-filter", "/f"],
            &["--http-api-max-payload-size", "0"],
        ] {
            let mut v = args(&["firecracker"]);
            v.extend(args(bad));
            assert!(FirecrackerArgs::try_parse_from(v).is_err(), "{bad:?}");
        }
    }
}
