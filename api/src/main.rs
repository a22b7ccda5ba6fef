//! The `strato` command: `run` boots one microVM in the foreground, `vm`
//! serves one microVM's Firecracker-compatible API, `serve` is the daemon
//! that manages many, and the other subcommands are the daemon's client.
//! Called `firecracker`, or with Firecracker's flags and no subcommand, it
//! takes Firecracker's command line (`api::firecracker`).

use api::{client, daemon, firecracker, logger, run, vm_api};
use clap::{Parser, Subcommand};

/// strato: a microVM monitor on KVM.
#[derive(Parser)]
#[command(
    name = "strato",
    version,
    about,
    after_help = "Called `firecracker`, or with Firecracker's flags and no subcommand, strato takes Firecracker's command line (`strato --version` prints the Firecracker-style line its clients check)."
)]
struct Cli {
    /// Log level on stderr: error, warn, info, debug or trace.
    #[arg(long, global = true, default_value = "warn", value_parser = parse_level)]
    log_level: log::LevelFilter,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot one microVM in the foreground with its serial console on this
    /// terminal; exits when the guest resets or powers off.
    Run(run::RunArgs),
    /// Serve one microVM's API (Firecracker-compatible) on a unix socket.
    Vm(vm_api::VmArgs),
    /// The host daemon: manage many microVMs through a REST API.
    Serve(daemon::ServeArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?} (error, warn, info, debug, trace)"))
}

fn main() {
    // Firecracker's clients start the VMM with Firecracker's command line.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if firecracker::invoked_as_firecracker(&args) {
        std::process::exit(firecracker::main(args));
    }
    let cli = Cli::parse_from(args);
    logger::init(cli.log_level);
    let code = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Vm(args) => vm_api::main(args),
        Command::Serve(args) => daemon::main(args),
        Command::Client(cmd) => client::main(cmd),
    };
    std::process::exit(code);
}
