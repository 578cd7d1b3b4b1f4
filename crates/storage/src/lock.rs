//! One process at a time owns a data directory: a server, or a command that
//! writes to a stopped directory (`berth gc --data-dir`). Two schedulers of
//! uploads and collections over one database would each undo the other's
//! assumptions. Readers that are safe beside a server (backups) take no lock.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;

/// Held for as long as the process uses the directory; the operating system
/// releases it when the process exits, also after `kill -9`.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "berth.lock";

impl DataDirLock {
    /// Takes the directory's exclusive lock, or fails at once with
    /// `WouldBlock` when another process holds it.
    pub fn acquire(dir: &Path) -> io::Result<DataDirLock> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(LOCK_FILE))?;
        match file.try_lock() {
            Ok(()) => Ok(DataDirLock { _file: file }),
            Err(TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("data directory {} is in use by another berth process", dir.display()),
            )),
            Err(TryLockError::Error(e)) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(err.to_string().contains("in use"));
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
