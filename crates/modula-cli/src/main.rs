#![doc = include_str!("../README.md")]
//!
//! Each subcommand group lives in its own module (`data`, `train`, `eval`, `continual`), which defines its
//! clap arguments and a `run` function. Exit status: 0 on success, 1 for run, configuration,
//! data and checkpoint errors, 2 for usage errors, [`OUTPUT_CLOSED`] when standard output or
//! error was closed.

mod analyse;
mod backend;
mod continual;
mod convert;
mod data;
mod eval;
mod modularity;
mod train;

use std::io::Write;
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
    /// Train a modular network (EM or a baseline) into a run directory: the toy task,
    /// Penn Treebank (`task_name = "ptb"`), any text corpus (`task_name = "text"`) or image
    /// classification (`fashion-mnist`, `mnist-10k`, `cifar-10`).
    Train(train::TrainArgs),
    /// Re-evaluate a run's checkpoint greedily on its held-out splits.
    Eval(eval::EvalArgs),
    /// Show what each module of a language-modelling run specialises in.
    Inspect(analyse::InspectArgs),
    /// Tabulate language-modelling runs or image runs and draw their curves together.
    Report(analyse::ReportArgs),
    /// Look for modules inside a trained dense ReLU network: co-activation partitions of its
    /// hidden layers, the groups an input leaves inactive, routed groups.
    Modularity(modularity::ModularityArgs),
    /// Convert a trained dense ReLU network into a modular one (its neurons' groups the
    /// modules, routers the gates), written as a new run that `train --resume` refines.
    Convert(convert::ConvertArgs),
    /// Continual learning: train a sequence of tasks with every method of a configuration,
    /// and report the accuracy matrices, forgetting and module usage.
    #[command(subcommand)]
    Continual(continual::ContinualCommand),
}

/// glibc hands large freed blocks back to the OS, so every training step would page-fault its
/// temporaries back in; mimalloc keeps them (an EM E-step ran about 1.5x faster with it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Tells mimalloc never to return freed memory to the OS. By default it does so 10 ms after a
/// free, and a training step takes longer than that, so each step would page-fault its
/// temporaries back in (measured: about 40 faults of 2 MiB per step of a 4096-row modular layer).
fn keep_freed_memory() {
    // SAFETY: sets one integer option; called first thing in main, before any other thread.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Usage errors exit with status 2, --help and --version with 0, as clap does; printed
    // here so that a closed output ends quietly with OUTPUT_CLOSED like every other command.
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            return match e.print() {
                Ok(()) => ExitCode::from(e.exit_code() as u8),
                Err(_) => ExitCode::from(OUTPUT_CLOSED),
            };
        }
    };
    match cli.command {
        Command::Data(command) => finish(command.name(), data::run(command)),
        Command::Train(args) => finish("train", train::run(args)),
        Command::Eval(args) => finish("eval", eval::run(args)),
        Command::Inspect(args) => finish("inspect", analyse::inspect(args)),
        Command::Report(args) => finish("report", analyse::report(args)),
        Command::Modularity(args) => finish("modularity", modularity::run(args)),
        Command::Convert(args) => finish("convert", convert::run(args)),
        Command::Continual(command) => finish(command.name(), continual::run(command)),
    }
}

/// The exit status when standard output or error is closed (a reader that went away, such as
/// `head`): 128 + SIGPIPE, what a shell reports for other programs stopped by a closed pipe.
pub const OUTPUT_CLOSED: u8 = 141;

/// Prints a failed command's error on stderr and turns the result into an exit status: 1 for
/// every run error (usage errors never get here: clap exits with status 2 itself), and
/// [`OUTPUT_CLOSED`], without a message, when the output was closed.
fn finish(command: &str, result: Result<(), modula_run::RunError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(modula_run::RunError::OutputClosed { .. }) => ExitCode::from(OUTPUT_CLOSED),
        Err(error) => fail(command, &error),
    }
}

/// Prints `modula COMMAND: error: ERROR` on stderr and returns status 1, or
/// [`OUTPUT_CLOSED`] when stderr is closed too.
fn fail(command: &str, error: &dyn std::fmt::Display) -> ExitCode {
    match writeln!(std::io::stderr(), "modula {command}: error: {error}") {
        Ok(()) => ExitCode::from(1),
        Err(_) => ExitCode::from(OUTPUT_CLOSED),
    }
}
