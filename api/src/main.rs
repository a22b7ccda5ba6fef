//! The `strato` command.

mod logger;
mod run;
mod terminal;

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
    };
    std::process::exit(code);
}
