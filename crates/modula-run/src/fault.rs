//! Fault injection for the crash tests. With `MODULA_FAULT=SITE` (or `SITE:N`) in the
//! environment, the process exits with status [`FAULT_EXIT`] the first (or `N`-th) time it
//! reaches the write site `SITE`, leaving its files exactly as a crash at that moment would:
//! the tests then check that every such directory can be continued or reused. Without the
//! variable nothing here does anything.
//!
//! The sites, in the order a run reaches them: `history-rewrite` (on resume, halfway through
//! the temporary file that replaces `metrics.jsonl`), `config` (halfway through the temporary
//! file of `config.toml`), `changes-append` (halfway through a line of `changes.jsonl`),
//! `metrics-append` (halfway through a line of `metrics.jsonl`), `checkpoint` (halfway through
//! the temporary file of a checkpoint), `summary` (halfway through `summary.json`'s temporary
//! file) and `plots` (halfway through a plot's temporary file); `inspect` and `report` for those
//! commands' files. Every site of a replaced file also has `SITE-rename`, just after its
//! rename (`checkpoint-rename`, ...).

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a site.
pub const FAULT_VAR: &str = "MODULA_FAULT";

/// The exit status of a process stopped at an armed site.
pub const FAULT_EXIT: i32 = 97;

/// The armed site and which of its visits stops the process.
struct Armed {
    site: String,
    visit: u64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(FAULT_VAR).ok()?;
            let (site, visit) = match value.split_once(':') {
                Some((site, n)) => (site, n.parse().ok()?),
                None => (value.as_str(), 1),
            };
            Some(Armed {
                site: site.to_string(),
                visit,
            })
        })
        .as_ref()
}

/// Whether this visit to `site` is the armed one.
fn due(site: &str) -> bool {
    static VISITS: AtomicU64 = AtomicU64::new(0);
    armed().is_some_and(|a| a.site == site && VISITS.fetch_add(1, Ordering::Relaxed) + 1 == a.visit)
}

/// Stops the process here when `site` is armed for this visit.
pub(crate) fn point(site: &str) {
    if due(site) {
        std::process::exit(FAULT_EXIT);
    }
}

/// Writes `bytes` to `out`, unless `site` is armed for this visit: then it writes the first
/// half and stops the process, as a crash in the middle of the write would.
pub(crate) fn write(site: &str, out: &mut impl Write, bytes: &[u8]) -> std::io::Result<()> {
    if due(site) {
        let _ = out.write_all(&bytes[..bytes.len() / 2]);
        let _ = out.flush();
        std::process::exit(FAULT_EXIT);
    }
    out.write_all(bytes)
}

/// Cuts the file at `path` to half its length and stops the process when `site` is armed for
/// this visit: what a crash in the middle of writing a temporary file leaves.
pub(crate) fn tear(site: &str, path: &Path) {
    if due(site) {
        if let Ok(file) = std::fs::OpenOptions::new().write(true).open(path)
            && let Ok(meta) = file.metadata()
        {
            let _ = file.set_len(meta.len() / 2);
        }
        std::process::exit(FAULT_EXIT);
    }
}
