//! The `strato` command: `run` boots one microVM in the foreground, `vm`
//! serves one microVM's Firecracker-compatible API, `serve` is the daemon
//! that manages many, and the other subcommands are the daemon's client.

mod client;
mod daemon;
mod http;
mod jail;
mod logger;
mod run;
mod terminal;
mod vm_api;

use clap::{Parser, Subcommand};

/// strato: a microVM monitor on KVM.
#[derive(Parser)]
#[command(name = "strato", version, about)]
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

/// Locks a mutex, recovering the data if a panicking thread poisoned it.
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn parse_level(s: &str) -> Result<log::LevelFilter, String> {
    s.parse()
        .map_err(|_| format!("unknown log level {s:?} (error, warn, info, debug, trace)"))
}

fn main() {
    let cli = Cli::parse();
    logger::init(cli.log_level);
    let code = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Vm(args) => vm_api::main(args),
        Command::Serve(args) => daemon::main(args),
        Command::Client(cmd) => client::main(cmd),
    };
    std::process::exit(code);
}
