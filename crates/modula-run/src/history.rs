//! A run's history files, both append-only JSON lines: `metrics.jsonl` (one record per
//! logging interval) and `changes.jsonl` (the configuration changes a resume accepted). A line
//! is appended with one write, so a crash can leave at most a torn last line, which readers
//! drop; any other line that is not a JSON object is damage, reported with its number rather
//! than skipped.

use std::fs::OpenOptions;
use std::path::Path;

use serde_json::Value;

use crate::error::{RunError, run_error};
use crate::{fault, files};

/// The records of one history file, as read.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Each complete record's line, verbatim (without its newline).
    pub lines: Vec<String>,
    /// The same records, parsed.
    pub records: Vec<Value>,
    /// Whether the file held anything besides these lines and their newlines: a torn last
    /// line, or a last record without its newline.
    pub untidy: bool,
}

impl History {
    /// The `step` of record `i` (0 for a record without one).
    pub fn step(&self, i: usize) -> u64 {
        self.records[i]
            .get("step")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    }

    /// The file's tidy text: every record's line with its newline.
    pub fn text(&self) -> String {
        self.lines.iter().map(|l| format!("{l}\n")).collect()
    }
}

/// Reads a history file; a missing file is an empty history.
///
/// # Errors
/// A run error naming the file when it cannot be read, or naming the first line that is
/// neither a JSON object nor a torn last line.
pub fn read(path: &Path) -> Result<History, RunError> {
    let bytes = match files::read_limited(path, files::HISTORY_LIMIT) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
        Err(e) => return Err(run_error(format!("cannot read {}: {e}", path.display()))),
    };
    let mut history = History::default();
    let mut rest = bytes.as_slice();
    let mut number = 0;
    while !rest.is_empty() {
        number += 1;
        let (line, complete) = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line = &rest[..end];
                rest = &rest[end + 1..];
                (line, true)
            }
            None => (std::mem::take(&mut rest), false),
        };
        let parsed = std::str::from_utf8(line)
            .ok()
            .and_then(|l| Some((l, serde_json::from_str::<Value>(l).ok()?)))
            .filter(|(_, v)| v.is_object());
        match parsed {
            Some((text, value)) => {
                history.lines.push(text.to_string());
                history.records.push(value);
                history.untidy |= !complete;
            }
            // A crash mid-append leaves a line without its newline: the one kind of damage
            // that is expected, and dropped.
            None if !complete => history.untidy = true,
            None => {
                return Err(run_error(format!(
                    "{} line {number} is not a JSON record: the file was edited or damaged; restore it, or delete that line to go on without it",
                    path.display()
                )));
            }
        }
    }
    Ok(history)
}

/// Appends one record to a history file (created if missing) with a single write; `site`
/// names the write for fault injection.
///
/// # Errors
/// A run error naming the file.
pub fn append(path: &Path, site: &str, record: &Value) -> Result<(), RunError> {
    let line = format!("{record}\n");
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut file| fault::write(site, &mut file, line.as_bytes()))
        .map_err(|e| run_error(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn a_torn_last_line_is_dropped_and_a_damaged_middle_line_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("metrics.jsonl");
        assert_eq!(read(&path).unwrap(), History::default());
        fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"st").unwrap();
        let h = read(&path).unwrap();
        assert_eq!(h.lines, ["{\"step\":1}", "{\"step\":2}"]);
        assert_eq!(h.step(1), 2);
        assert!(h.untidy);
        assert_eq!(h.text(), "{\"step\":1}\n{\"step\":2}\n");
        // A complete record that lost only its newline is kept.
        fs::write(&path, "{\"step\":1}\n{\"step\":2}").unwrap();
        assert_eq!(read(&path).unwrap().records.len(), 2);
        fs::write(&path, "{\"step\":1}\nnot json\n{\"step\":3}\n").unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn every_float_reads_back_bit_for_bit() {
        // serde_json writes the shortest decimal that reads back as the same f64 (ryu), and the
        // workspace enables `float_roundtrip`, so the reader is exact too.
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("h.jsonl");
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut values = vec![0.1 + 0.2, 1.0 / 3.0, f64::MIN_POSITIVE, f64::MAX, 5e-324];
        for _ in 0..2000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let v = f64::from_bits(state);
            if v.is_finite() {
                values.push(v);
            }
        }
        for v in &values {
            append(&path, "test", &serde_json::json!({ "step": 0, "v": v })).unwrap();
        }
        let back = read(&path).unwrap();
        for (v, r) in values.iter().zip(&back.records) {
            assert_eq!(r["v"].as_f64().unwrap().to_bits(), v.to_bits());
        }
    }
}
