//! One writer at a time on an SQLite store. The fold keeps each build's state (how long its logs
//! are, which steps it has) in memory between batches, so a second process writing the same
//! store would have each take the other's writes for its own: log text was lost that way, with
//! both runs reporting every event applied. `ingest`, `serve` and the embedding API hold this
//! lock while they run; readers (`export`, `log`, `web`) take none. A MongoDB database has no
//! such guard: give each writer its own database.

use std::path::{Path, PathBuf};

use super::StoreError;

/// Held while a process writes the store; the lock goes with the process, however it ends.
pub struct WriterLock {
    _file: std::fs::File,
}

/// Takes the writer's lock of the store at `location` (an SQLite store: a file `REAL.lock` next to
/// the file PATH leads to, links followed), or says that another process holds it. A MongoDB
/// store gets none.
pub fn lock_writer(location: &str) -> Result<Option<WriterLock>, StoreError> {
    // Locations no store can be at are refused when the store is opened, with the reason.
    let Ok(Some(path)) = super::sqlite_path(location) else {
        return Ok(None);
    };
    if Path::new(path).is_dir() {
        return Ok(None);
    }
    let mut lock = real_path(Path::new(path)).into_os_string();
    lock.push(".lock");
    let lock = PathBuf::from(lock);
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

/// Where `path` really is, symbolic links and `.`/`..` resolved, so that every name of one
/// store file takes the same lock. A link to the store took a lock of its own, and a second
/// writer reaching the store through it lost log text as two writers did. A file not made yet
/// is its directory's real path and its name (after the link, if the name is a link to a file
/// not made yet). A hard link is another file to this: don't write through one.
fn real_path(path: &Path) -> PathBuf {
    let mut path = path.to_path_buf();
    // A link to a link to ..., as far as the system would follow it.
    for _ in 0..40 {
        if let Ok(real) = std::fs::canonicalize(&path) {
            return real;
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match std::fs::read_link(&path) {
            Ok(target) => path = dir.join(target),
            Err(_) => {
                let (Ok(dir), Some(name)) = (std::fs::canonicalize(&dir), path.file_name()) else {
                    return path;
                };
                return dir.join(name);
            }
        }
    }
    path
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

    /// A link to the store is the same store: its lock was `link.db.lock`, another file than
    /// the store's `s.db.lock`. (Other names, `./s.db` or one through a linked directory, reach
    /// the same lock file through the system as they reach the store.)
    #[test]
    fn a_second_writer_through_a_link_to_the_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = |p: &Path| format!("sqlite:{}", p.display());
        let store = dir.path().join("s.db");
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink("s.db", &link).unwrap();
        // The store file not made yet, as at a first run (the link leads nowhere yet), and made.
        for made in [false, true] {
            if made {
                std::fs::write(&store, b"").unwrap();
            }
            let first = lock_writer(&at(&store)).unwrap();
            assert!(lock_writer(&at(&link)).is_err(), "made: {made}");
            drop(first);
            let first = lock_writer(&at(&link)).unwrap();
            assert!(lock_writer(&at(&store)).is_err(), "made: {made}");
            drop(first);
        }
    }
}
