//! `modula`: the command-line front end.
//!
//! Each subcommand group lives in its own module (`data` today; `train` and `eval` to come),
//! which defines its clap arguments and a `run` function returning the process exit code.

mod data;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Modular neural networks in Rust.
#[derive(Debug, Parser)]
#[command(name = "modula", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The top-level subcommands.
#[derive(Debug, Subcommand)]
enum Command {
    /// Fetch data sets and inspect what the loaders see.
    #[command(subcommand)]
    Data(data::DataCommand),
}

fn main() -> ExitCode {
    // clap exits with status 2 on usage errors and 0 for --help, as the CLI promises.
    let cli = Cli::parse();
    match cli.command {
        Command::Data(command) => data::run(command),
    }
}
