//! The durable spool between accepting an event and storing it. An event is acknowledged only
//! once it is in the spool file and fsynced; the applier takes events out in order and releases
//! them only after the store confirmed their batch, so an acknowledged event survives a killed
//! process or a store that is down for hours.
//!
//! The spool is a SQLite file (WAL, `synchronous=FULL`): one row per event, a monotonic id, and
//! whole transactions, so a torn write at a crash is rolled back by SQLite rather than by a
//! hand-made file format. Appends are group-committed: every caller waiting at the same moment
//! shares one transaction and one fsync.

mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

pub use writer::{AppendError, Appender, Pending, SpoolFull};

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("spool {path}: cannot create its directory: {source}")]
    Directory {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("spool task failed: {0}")]
    Task(String),
}

/// One spooled event: its spool id and its protocol line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub id: i64,
    pub line: String,
}

/// How much the spool holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Depth {
    pub events: u64,
    pub bytes: u64,
}

/// The spool file. Cheap to clone; all clones share one connection.
#[derive(Clone)]
pub struct Spool {
    path: String,
    conn: Arc<Mutex<Connection>>,
    /// What the spool holds, counted once at open and then kept with every append and release,
    /// so that a metrics scrape does not scan a spool that may hold a gigabyte.
    events: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Spool {
    /// Opens (creating if needed) `DIR/spool.db`.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::Directory {
            path: dir.display().to_string(),
            source,
        })?;
        let file: PathBuf = dir.join("spool.db");
        let path = file.display().to_string();
        let err = |source| SpoolError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&file).map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        // FULL: the fsync at commit is what an acknowledgement promises.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);",
        )
        .map_err(err)?;
        let (events, bytes): (i64, Option<i64>) = conn
            .query_row(
                "SELECT count(*), sum(length(CAST(line AS BLOB))) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(err)?;
        Ok(Spool {
            path,
            conn: Arc::new(Mutex::new(conn)),
            events: Arc::new(AtomicU64::new(u64::try_from(events).unwrap_or(0))),
            bytes: Arc::new(AtomicU64::new(
                bytes.and_then(|b| u64::try_from(b).ok()).unwrap_or(0),
            )),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> SpoolError + '_ {
        move |source| SpoolError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite rolls back a transaction a panicking holder left open: the lock stays usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends lines in one transaction (one fsync) and returns their ids, in order.
    pub fn append(&self, lines: &[String]) -> Result<Vec<i64>, SpoolError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        let mut ids = Vec::with_capacity(lines.len());
        {
            let mut st = tx
                .prepare_cached("INSERT INTO events (line) VALUES (?1)")
                .map_err(self.err())?;
            for line in lines {
                st.execute([line]).map_err(self.err())?;
                ids.push(tx.last_insert_rowid());
            }
        }
        tx.commit().map_err(self.err())?;
        self.events.fetch_add(lines.len() as u64, Ordering::Relaxed);
        let added: usize = lines.iter().map(String::len).sum();
        self.bytes.fetch_add(added as u64, Ordering::Relaxed);
        Ok(ids)
    }

    /// Up to `limit` events after id `after`, oldest first.
    pub fn read(&self, after: i64, limit: usize) -> Result<Vec<Spooled>, SpoolError> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT id, line FROM events WHERE id > ?1 ORDER BY id LIMIT ?2")
            .map_err(self.err())?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = st
            .query_map(params![after, limit], |r| {
                Ok(Spooled {
                    id: r.get(0)?,
                    line: r.get(1)?,
                })
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Forgets every event up to and including `id` and returns the bytes that frees: call only
    /// once the store confirmed them.
    pub fn release(&self, id: i64) -> Result<u64, SpoolError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        let bytes: Option<i64> = tx
            .query_row(
                "SELECT sum(length(CAST(line AS BLOB))) FROM events WHERE id <= ?1",
                [id],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        let deleted = tx
            .execute("DELETE FROM events WHERE id <= ?1", [id])
            .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        let bytes = bytes.and_then(|b| u64::try_from(b).ok()).unwrap_or(0);
        self.events.fetch_sub(deleted as u64, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
        Ok(bytes)
    }

    /// Events and bytes waiting.
    pub fn depth(&self) -> Depth {
        Depth {
            events: self.events.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// The id of the oldest waiting event, if any.
    pub fn oldest(&self) -> Result<Option<i64>, SpoolError> {
        let conn = self.lock();
        conn.query_row("SELECT min(id) FROM events", [], |r| r.get(0))
            .optional()
            .map(Option::flatten)
            .map_err(self.err())
    }
}

#[cfg(test)]
mod tests;
