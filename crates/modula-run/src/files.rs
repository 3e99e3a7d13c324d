//! How every file of a run directory is replaced: written whole to a temporary sibling,
//! flushed to disk, then renamed over its name, so that a crash at any moment leaves either
//! the old file or the new one. Temporary files are named `.STEM.tmp-PID-N.EXT`, which
//! [`remove_leftovers`] recognises (with the names older versions used) and removes when the
//! directory is next opened.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{RunError, run_error};
use crate::fault;

/// Distinguishes the temporary files of one process.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The marker every temporary file's name holds.
const TEMP_MARK: &str = ".tmp-";

/// A fresh temporary sibling of `path`, keeping its extension (the plotting backends choose
/// the image format by it).
fn temp_path(path: &Path) -> PathBuf {
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
    let ext = path
        .extension()
        .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
    let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{stem}{TEMP_MARK}{}-{n}{ext}", std::process::id()))
}

/// Replaces `path` atomically with what `fill` writes into the temporary file it is given;
/// `site` names the write for fault injection ([`fault`]).
///
/// # Errors
/// A run error naming `path` when `fill` fails or the file cannot be written, flushed or
/// renamed; the temporary file is then removed.
pub(crate) fn replace_with(
    path: &Path,
    site: &str,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), RunError> {
    let tmp = temp_path(path);
    let result = fill(&tmp).and_then(|()| {
        fault::tear(site, &tmp);
        let sync = |p: &Path| File::open(p).and_then(|f| f.sync_all());
        sync(&tmp)
            .and_then(|()| fs::rename(&tmp, path))
            .map_err(|e| e.to_string())?;
        fault::point(&format!("{site}-rename"));
        // The rename itself survives a power loss only once the directory is on disk.
        sync(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .map_err(|e| e.to_string())
    });
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        run_error(format!("cannot write {}: {e}", path.display()))
    })
}

/// Replaces `path` atomically with `bytes`.
///
/// # Errors
/// As [`replace_with`].
pub(crate) fn replace(path: &Path, site: &str, bytes: &[u8]) -> Result<(), RunError> {
    replace_with(path, site, |tmp| {
        fs::write(tmp, bytes).map_err(|e| e.to_string())
    })
}

/// The largest `config.toml` read (a resolved configuration is under 2 KiB).
pub(crate) const CONFIG_LIMIT: u64 = 1 << 20;
/// The largest `summary.json` read.
pub(crate) const SUMMARY_LIMIT: u64 = 16 << 20;
/// The largest history file (`metrics.jsonl`, `changes.jsonl`) read: a million records.
pub(crate) const HISTORY_LIMIT: u64 = 256 << 20;

/// Reads a regular file of at most `limit` bytes, allocating its size once: a device, a pipe
/// or a file larger than any the run library writes is refused instead of read without end.
///
/// # Errors
/// The I/O error (`NotFound` for a missing file), or `InvalidInput` saying what the path is.
pub(crate) fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::{Error, ErrorKind, Read};
    let meta = fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "not a regular file (a directory, a device or a pipe)",
        ));
    }
    if meta.len() > limit {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            format!(
                "{} bytes, more than the {limit} such a file can hold; it is not a file modula wrote",
                meta.len()
            ),
        ));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Removes what interrupted writes left in `dir`: temporary files of this crate and of
/// `modula_nn::Checkpoint::write` (`.NAME.tmp-...`). Only a process holding the directory's
/// lock may call it, since no other writer can then be midway.
///
/// # Errors
/// A run error naming the directory or the file that cannot be listed or removed.
pub(crate) fn remove_leftovers(dir: &Path) -> Result<(), RunError> {
    let entries =
        fs::read_dir(dir).map_err(|e| run_error(format!("cannot list {}: {e}", dir.display())))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(TEMP_MARK) {
            let path = entry.path();
            fs::remove_file(&path).map_err(|e| {
                run_error(format!(
                    "cannot remove {}, left by an interrupted write: {e}",
                    path.display()
                ))
            })?;
        }
    }
    Ok(())
}

/// Writes a report's tables as `report.md` into `out` and, with `json`, its results there as
/// JSON, then prints the tables and the files written (`figures`, already in `out`).
///
/// # Errors
/// A run error naming a file that cannot be written, or [`RunError::OutputClosed`].
pub(crate) fn write_report(
    out: &Path,
    md: &str,
    json: Option<&Path>,
    results: &impl serde::Serialize,
    figures: &[String],
) -> Result<(), RunError> {
    replace(&out.join("report.md"), "report", md.as_bytes())?;
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(results).expect("the results serialise");
        replace(path, "results", (text + "\n").as_bytes())?;
    }
    crate::console::print(&format!(
        "{md}wrote report.md{}{} into {}\n",
        if figures.is_empty() { "" } else { ", " },
        figures.join(", "),
        out.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_keep_the_extension_and_are_recognised_as_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let name = temp_path(&tmp.path().join("loss.png"));
        let file = name.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            file.starts_with(".loss.tmp-") && file.ends_with(".png"),
            "{file}"
        );
        fs::write(&name, b"half").unwrap();
        fs::write(
            tmp.path().join(".checkpoint.safetensors.tmp-7-0"),
            b"old style",
        )
        .unwrap();
        fs::write(tmp.path().join("notes.tmp-1.txt"), b"the user's").unwrap();
        replace(&tmp.path().join("config.toml"), "test", b"seed = 1\n").unwrap();
        remove_leftovers(tmp.path()).unwrap();
        let mut left: Vec<String> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["config.toml", "notes.tmp-1.txt"]);
        assert_eq!(
            fs::read(tmp.path().join("config.toml")).unwrap(),
            b"seed = 1\n"
        );
    }
}
