//! The daemon's command-line client (being written).

/// Client subcommands.
#[derive(clap::Subcommand)]
pub enum ClientCommand {
    /// List instances.
    List,
}

/// Runs a client command.
pub fn main(_cmd: ClientCommand) -> i32 {
    eprintln!("strato: the client is not available yet");
    1
}
