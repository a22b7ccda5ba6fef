//! `strato serve`: the host daemon (being written).

use std::path::PathBuf;

/// Options of `strato serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Unix socket of the REST API.
    #[arg(long)]
    api_sock: PathBuf,
    /// Directory for instance records, sockets and console logs.
    #[arg(long)]
    state_dir: PathBuf,
}

/// Runs the daemon.
pub fn main(args: ServeArgs) -> i32 {
    eprintln!(
        "strato: serve is not available yet ({}, {})",
        args.api_sock.display(),
        args.state_dir.display()
    );
    1
}
