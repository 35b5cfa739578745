//! One writer at a time on an SQLite store. The fold keeps each build's state (how long its logs
//! are, which steps it has) in memory between batches, so a second process writing the same
//! store would have each take the other's writes for its own: log text was lost that way, with
//! both runs reporting every event applied. `ingest`, `serve` and the embedding API hold this
//! lock while they run; readers (`export`, `log`, `web`) take none. A MongoDB database has no
//! such guard: give each writer its own database.

use std::path::PathBuf;

use super::StoreError;

/// Held while a process writes the store; the lock goes with the process, however it ends.
pub struct WriterLock {
    _file: std::fs::File,
}

/// Takes the writer's lock of the store at `location` (an SQLite store: a file `PATH.lock` next
/// to it), or says that another process holds it. A MongoDB store gets none.
pub fn lock_writer(location: &str) -> Result<Option<WriterLock>, StoreError> {
    // Locations no store can be at are refused when the store is opened, with the reason.
    let Ok(Some(path)) = super::sqlite_path(location) else {
        return Ok(None);
    };
    if std::path::Path::new(path).is_dir() {
        return Ok(None);
    }
    let lock = PathBuf::from(format!("{path}.lock"));
    let failed = |source| StoreError::Lock {
        path: lock.display().to_string(),
        source,
    };
    let file = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
    {
        Ok(file) => file,
        // No directory for the store: opening the store says so, in its own words.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    match file.try_lock() {
        Ok(()) => Ok(Some(WriterLock { _file: file })),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: path.to_owned(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(failed(source)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_until_the_first_is_done() {
        let dir = tempfile::tempdir().unwrap();
        let location = format!("sqlite:{}", dir.path().join("s.db").display());
        let first = lock_writer(&location).unwrap();
        assert!(first.is_some());
        let e = lock_writer(&location).err().unwrap().to_string();
        assert!(
            e.contains("is written by another buildstore process"),
            "{e}"
        );
        drop(first);
        assert!(lock_writer(&location).unwrap().is_some());
        assert!(lock_writer("mongodb://localhost/x").unwrap().is_none());
    }
}
