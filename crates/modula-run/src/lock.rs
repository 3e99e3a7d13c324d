//! The lock that makes one process at a time the owner of a directory: an advisory lock
//! (`flock`, through [`File::try_lock`]) on the file `.lock` inside it. The operating system
//! releases it when the process ends, however it ends, so a killed run never leaves a stale
//! lock behind. The holder writes its process id into the file, so that a second process is
//! told whom it is waiting for.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use crate::error::{RunError, run_error};
use crate::files;

/// The lock file inside a locked directory.
pub const LOCK_FILE: &str = ".lock";

/// A held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

/// Locks `dir` (which must exist) without waiting.
///
/// # Errors
/// [`RunError::Locked`] with the holder's process id when another process holds the lock; a
/// run error naming the lock file when it cannot be created or locked.
pub fn lock(dir: &Path) -> Result<DirLock, RunError> {
    let path = dir.join(LOCK_FILE);
    let cannot = |e: std::io::Error| run_error(format!("cannot lock {}: {e}", path.display()));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(cannot)?;
    match file.try_lock() {
        Ok(()) => {
            file.set_len(0)
                .and_then(|()| writeln!(file, "{}", std::process::id()))
                .map_err(cannot)?;
            Ok(DirLock { _file: file })
        }
        Err(fs::TryLockError::WouldBlock) => Err(RunError::Locked {
            dir: dir.to_path_buf(),
            pid: holder(&path),
        }),
        Err(fs::TryLockError::Error(e)) => Err(cannot(e)),
    }
}

/// The process id the holder wrote. It writes it just after taking the lock, so an empty file
/// is read again a few times before giving up on it.
fn holder(path: &Path) -> Option<u32> {
    (0..20).find_map(|attempt| {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let bytes = files::read_limited(path, 64).ok()?;
        std::str::from_utf8(&bytes).ok()?.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_freed_when_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let first = lock(tmp.path()).unwrap();
        // Within one process, a second open file description conflicts like another process.
        match lock(tmp.path()) {
            Err(RunError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        lock(tmp.path()).unwrap();
    }
}
