//! The durable spool between accepting an event and storing it. An event is acknowledged only
//! once it is in the spool file and fsynced; the applier takes events out in order and releases
//! them only after the store confirmed them, so an acknowledged event survives a killed process
//! or a store that is down for hours.
//!
//! The spool is a SQLite file (WAL, `synchronous=FULL`), so a torn write at a crash is rolled back
//! by SQLite rather than by a hand-made file format. Appends are group-committed: every caller
//! waiting at the same moment shares one transaction and one fsync, and the group is one row (its
//! lines joined by newlines, which no protocol line contains) holding the consecutive ids
//! `first..=last`. One row per group rather than per event keeps the cost of spooling close to the
//! cost of writing the bytes. A group is deleted whole, once the store confirmed its last event;
//! of a group the store confirmed only in part, the spool remembers how far (`released`), and a
//! restart goes on from there (see [`Spool::release`] for why applying them again would not be
//! harmless). The file has a name of its own ([`Spool::uid`]), under which a store records how far
//! it has the spool's events, for a restart after a crash between the two.
//!
//! Events also travel from the writer to the applier in memory ([`Handoff`]), so the applier
//! reads the file only after a restart or when it fell too far behind.

mod handoff;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

pub use handoff::Handoff;
pub use writer::{AppendError, Appender, Pending, Sequence, SpoolFull};

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
    #[error(
        "spool {path} is damaged ({detail}); it is left as it is. It may hold acknowledged \
         events not yet in the store: move it aside, keep it to salvage them, and start again"
    )]
    Damaged { path: String, detail: String },
    #[error("spool {path}: the file {what}; it is left as it is")]
    NotASpool { path: String, what: &'static str },
    #[error("spool task failed: {0}")]
    Task(String),
    #[error("spool {path}: cannot lock it: {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "spool {path} is in use by another buildstore serve (or embedded Reporter); \
         give each its own --spool"
    )]
    InUse { path: String },
    /// An append failed, but its group may still be in the file: it then counts in the spool's
    /// depth and is applied and released like any other.
    #[error("{0}; the group may stay in the spool and be applied")]
    AppendKept(Box<SpoolError>),
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
    /// Names this spool file: stores record their progress through it under this name (see
    /// [`crate::core::SpoolProgress`]). An ObjectId, unique as MongoDB's `_id`s are. The name
    /// the file had when opened: [`Spool::rename`] returns the new one to its caller.
    uid: Arc<str>,
    /// The next id when the spool was opened: every id below it was given out before.
    opened_next: i64,
    conn: Arc<Mutex<Connection>>,
    /// The id the next appended event gets: every id below it is committed.
    next: Arc<AtomicI64>,
    /// What the spool holds, counted once at open and then kept with every append and release,
    /// so that a metrics scrape does not scan a spool that may hold a gigabyte.
    events: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
    /// Held locked while the spool is open: two daemons writing one spool would hand out the
    /// same ids and release each other's events.
    _lock: Arc<std::fs::File>,
}

/// Lines are stored joined by this; a protocol line never contains it.
const SEPARATOR: &str = "\n";

/// The next id to hand out: one past the highest ever used, kept by AUTOINCREMENT.
const NEXT_ID: &str =
    "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'groups'), 0) + 1";

/// The id through which events were released, 0 before any.
const RELEASED: &str = "coalesce((SELECT through FROM released), 0)";

/// Line bytes of the groups selected (separators not counted).
const BYTES: &str = "coalesce(sum(length(lines) - (last - first)), 0)";

/// How many held events have ids in `after + 1..=through`, whole groups or not.
fn events_between(conn: &Connection, after: i64, through: i64) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT coalesce(sum(min(last, ?2) - max(first, ?1 + 1) + 1), 0)
         FROM groups WHERE last > ?1 AND first <= ?2",
        [after, through],
        |r| r.get(0),
    )
}

/// A group's lines as the spool stores them.
fn joined(lines: &[impl std::borrow::Borrow<str>]) -> Vec<u8> {
    lines.join(SEPARATOR).into_bytes()
}

/// Locks the spool directory `dir` for this process, or says who holds it. The lock goes with
/// the process, however it ends.
fn lock_dir(dir: &Path) -> Result<std::fs::File, SpoolError> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| SpoolError::Lock {
            path: dir.display().to_string(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(SpoolError::InUse {
            path: dir.display().to_string(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(SpoolError::Lock {
            path: dir.display().to_string(),
            source,
        }),
    }
}

/// Refuses, before anything is written to it, a file that belongs to another program: a file
/// that is not SQLite, or one with tables that are not a spool's. It reads through a read-only
/// connection, which leaves the file as it is (closing a read-write one would checkpoint another
/// program's write-ahead log into its file), and returns that connection for [`check_whole`];
/// None where there is no file yet.
fn check_tables(file: &Path, path: &str) -> Result<Option<Connection>, SpoolError> {
    if !file.is_file() || file.metadata().is_ok_and(|m| m.len() == 0) {
        return Ok(None); // nothing there yet: the spool is made here
    }
    let conn = Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(unreadable(path))?;
    // A spool's file has its groups (or, from an older version, its events), or no table yet.
    let spool_tables: bool = conn
        .query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM sqlite_master)
                 OR (SELECT count(*) FROM pragma_table_info('groups')
                     WHERE name IN ('last', 'first', 'lines')) = 3
                 OR (SELECT count(*) FROM pragma_table_info('events')
                     WHERE name IN ('id', 'line')) = 2",
            [],
            |r| r.get(0),
        )
        .map_err(unreadable(path))?;
    if !spool_tables {
        return Err(SpoolError::NotASpool {
            path: path.to_owned(),
            what: "holds tables, but not a spool's",
        });
    }
    Ok(Some(conn))
}

/// Refuses a spool file damaged anywhere. A page damaged in the middle would otherwise show only
/// when the drain reaches it, after the daemon had started to acknowledge new events it could
/// never apply behind it. This reads the whole file (a few seconds per gigabyte not in the page
/// cache), so it runs once the spool's lock is taken: a second daemon is refused at once.
fn check_whole(conn: &Connection, path: &str) -> Result<(), SpoolError> {
    let findings: Vec<String> = conn
        .prepare("PRAGMA quick_check(5)")
        .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
        .map_err(unreadable(path))?;
    if findings.first().map(String::as_str) != Some("ok") {
        return Err(SpoolError::Damaged {
            path: path.to_owned(),
            detail: findings.join("; "),
        });
    }
    Ok(())
}

/// The error of a read of the spool file at `path` that SQLite refused.
fn unreadable(path: &str) -> impl Fn(rusqlite::Error) -> SpoolError + '_ {
    move |e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => SpoolError::NotASpool {
            path: path.to_owned(),
            what: "is not an SQLite database",
        },
        _ => SpoolError::Damaged {
            path: path.to_owned(),
            detail: e.to_string(),
        },
    }
}

/// Most lines per group when an old spool is converted.
const CONVERT_GROUP: usize = 4096;

impl Spool {
    /// Opens (creating if needed) `DIR/spool.db`.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|source| SpoolError::Directory {
            path: dir.display().to_string(),
            source: match source.kind() {
                // EEXIST names the file in the way, not that it is one.
                std::io::ErrorKind::AlreadyExists => std::io::Error::other(
                    "a file of that name is there, and the spool is a directory",
                ),
                _ => source,
            },
        })?;
        let file: PathBuf = dir.join("spool.db");
        let path = file.display().to_string();
        // SQLite reads a name that starts with `file:` as a URI, whatever the flags say; a
        // directory of that name is a directory.
        let file = if file.as_os_str().as_encoded_bytes().starts_with(b"file:") {
            Path::new(".").join(&file)
        } else {
            file
        };
        // Before the lock, whose file would be left beside a file that is not ours.
        let existing = check_tables(&file, &path)?;
        let lock = lock_dir(dir)?;
        if let Some(conn) = existing {
            check_whole(&conn, &path)?;
        }
        let err = |source| SpoolError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&file).map_err(err)?;
        // Pages freed by releases can be given back to the file system (see `shrink`); it must
        // be said before the first table is made, or turned on by a VACUUM.
        conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")
            .map_err(err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_KEPT)
            .map_err(err)?;
        // FULL: the fsync at commit is what an acknowledgement promises.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        // AUTOINCREMENT keeps the highest id ever used in `sqlite_sequence`, so ids never repeat
        // even once every group was released.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS groups (last INTEGER PRIMARY KEY AUTOINCREMENT,
                                                first INTEGER NOT NULL, lines BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS released (one INTEGER PRIMARY KEY CHECK (one = 1),
                                                  through INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS identity (one INTEGER PRIMARY KEY CHECK (one = 1),
                                                  uid TEXT NOT NULL);",
        )
        .map_err(err)?;
        // Made once, with the file (or at the first open by a version that knows it): no store
        // holds progress of this spool before then.
        conn.execute(
            "INSERT OR IGNORE INTO identity (one, uid) VALUES (1, ?1)",
            [bson::oid::ObjectId::new().to_hex()],
        )
        .map_err(err)?;
        let uid: String = conn
            .query_row("SELECT uid FROM identity", [], |r| r.get(0))
            .map_err(err)?;
        convert_one_row_per_event(&mut conn).map_err(err)?;
        vacuum_older_spool_if_empty(&conn).map_err(err)?;
        let next: i64 = conn.query_row(NEXT_ID, [], |r| r.get(0)).map_err(err)?;
        let released: i64 = conn
            .query_row(&format!("SELECT {RELEASED}"), [], |r| r.get(0))
            .map_err(err)?;
        // A group's bytes stay on disk until all of it is released; its released events no
        // longer wait.
        let events = events_between(&conn, released, i64::MAX).map_err(err)?;
        let bytes: i64 = conn
            .query_row(&format!("SELECT {BYTES} FROM groups"), [], |r| r.get(0))
            .map_err(err)?;
        Ok(Spool {
            path,
            uid: uid.into(),
            opened_next: next,
            conn: Arc::new(Mutex::new(conn)),
            next: Arc::new(AtomicI64::new(next)),
            events: Arc::new(AtomicU64::new(u64::try_from(events).unwrap_or(0))),
            bytes: Arc::new(AtomicU64::new(u64::try_from(bytes).unwrap_or(0))),
            _lock: Arc::new(lock),
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

    /// Appends lines as one group in one transaction (one fsync) and returns the id of the first;
    /// the others follow it one by one. A line must not contain a newline: the socket splits
    /// lines at newlines, and a serialised event escapes them.
    pub fn append(&self, lines: &[String]) -> Result<i64, SpoolError> {
        debug_assert!(
            lines.iter().all(|l| !l.contains('\n')),
            "a line with a newline"
        );
        let conn = self.lock();
        let first = self.next.load(Ordering::Acquire);
        if lines.is_empty() {
            return Ok(first);
        }
        let last = first + lines.len() as i64 - 1;
        let inserted = conn
            .prepare_cached("INSERT INTO groups (last, first, lines) VALUES (?1, ?2, ?3)")
            .and_then(|mut st| st.execute(params![last, first, joined(lines)]));
        let added: usize = lines.iter().map(String::len).sum();
        if let Err(e) = inserted {
            // A failed commit may still have reached the file; the next group must not reuse
            // the ids it may hold.
            if let Ok(seq) = conn.query_row(NEXT_ID, [], |r| r.get::<_, i64>(0)) {
                self.next.fetch_max(seq, Ordering::AcqRel);
            }
            if self.undo_failed_group(&conn, last) {
                // It stays, and the drain will apply it: counted, it is released like any other.
                self.count(lines.len(), added);
                return Err(SpoolError::AppendKept(Box::new(self.err()(e))));
            }
            return Err(self.err()(e));
        }
        self.next.store(last + 1, Ordering::Release);
        self.count(lines.len(), added);
        Ok(first)
    }

    fn count(&self, events: usize, bytes: usize) {
        self.events.fetch_add(events as u64, Ordering::Relaxed);
        self.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Removes the group ending at `last` after its append failed: the sender is told that
    /// nothing of it was kept, and one that finds it there anyway would be applied and then sent
    /// again. Returns whether the group is still there (it could not be removed), or may be.
    fn undo_failed_group(&self, conn: &Connection, last: i64) -> bool {
        match conn.execute("DELETE FROM groups WHERE last = ?1", [last]) {
            Ok(_) => false,
            Err(e) => {
                let there = conn
                    .query_row("SELECT 1 FROM groups WHERE last = ?1", [last], |_| Ok(()))
                    .optional();
                let stays = !matches!(there, Ok(None));
                if stays {
                    tracing::error!(error = %e, last, "a group whose spool write failed may stay in the spool and be applied");
                }
                stays
            }
        }
    }

    /// The id the next appended event gets; every event below it is durable.
    pub fn next_id(&self) -> i64 {
        self.next.load(Ordering::Acquire)
    }

    /// Up to `limit` events with ids from `from` on, oldest first, and no more than `max_bytes`
    /// of lines, though always the first event, however long.
    pub fn read(
        &self,
        from: i64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Spooled>, SpoolError> {
        let conn = self.lock();
        let mut st = conn
            .prepare_cached("SELECT first, lines FROM groups WHERE last >= ?1 ORDER BY last")
            .map_err(self.err())?;
        let mut rows = st.query([from]).map_err(self.err())?;
        let mut out = Vec::new();
        let mut bytes = 0;
        'rows: while out.len() < limit {
            let Some(row) = rows.next().map_err(self.err())? else {
                break;
            };
            let first: i64 = row.get(0).map_err(self.err())?;
            let lines = row
                .get_ref(1)
                .and_then(|v| Ok(v.as_blob()?))
                .map_err(self.err())?;
            for (id, line) in (first..).zip(lines.split(|b| SEPARATOR.as_bytes() == [*b])) {
                if id < from {
                    continue;
                }
                if out.len() == limit {
                    break;
                }
                bytes += line.len();
                if bytes > max_bytes && !out.is_empty() {
                    break 'rows;
                }
                out.push(Spooled {
                    id,
                    line: String::from_utf8_lossy(line).into_owned(),
                });
            }
        }
        Ok(out)
    }

    /// Forgets every event at or below `id` and returns the bytes of the groups that frees: call
    /// only once the store confirmed them. A group is deleted once all its events are released;
    /// until then the spool remembers how far into it the store has them, and the next start
    /// goes on from there. Applying them again would not be harmless: an event the rules refused
    /// is not recorded as applied, and folded again after the events that followed it, it could
    /// be taken (a step's end before its build started, then again once the build exists).
    pub fn release(&self, id: i64) -> Result<u64, SpoolError> {
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.err())?;
        let before: i64 = tx
            .query_row(&format!("SELECT {RELEASED}"), [], |r| r.get(0))
            .map_err(self.err())?;
        let events = events_between(&tx, before, id.max(before)).map_err(self.err())?;
        let bytes: i64 = tx
            .query_row(
                &format!("SELECT {BYTES} FROM groups WHERE last <= ?1"),
                [id],
                |r| r.get(0),
            )
            .map_err(self.err())?;
        tx.execute("DELETE FROM groups WHERE last <= ?1", [id])
            .map_err(self.err())?;
        tx.execute(
            "INSERT INTO released (one, through) VALUES (1, ?1)
             ON CONFLICT (one) DO UPDATE SET through = max(through, excluded.through)",
            [id],
        )
        .map_err(self.err())?;
        tx.commit().map_err(self.err())?;
        let bytes = u64::try_from(bytes).unwrap_or(0);
        subtract(&self.events, u64::try_from(events).unwrap_or(0));
        subtract(&self.bytes, bytes);
        if self.events.load(Ordering::Relaxed) == 0 {
            if let Err(e) = shrink(&conn) {
                tracing::warn!(error = %e, spool = %self.path, "could not shrink the spool file");
            }
        }
        Ok(bytes)
    }

    /// The name stores record this spool's progress under, as it was when the file was opened.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// Gives the spool a new name, for good, and returns it: the progress a store recorded under
    /// the old one is not of this file's events (a copy of this file, or the file it was copied
    /// from, recorded it), and the two must not be taken for each other from now on. Only the
    /// drain renames the spool, once, before it records any progress, and keeps the new name.
    pub fn rename(&self) -> Result<String, SpoolError> {
        let uid = bson::oid::ObjectId::new().to_hex();
        self.lock()
            .execute("UPDATE identity SET uid = ?1", [&uid])
            .map_err(self.err())?;
        Ok(uid)
    }

    /// The id the first event appended since the spool was opened got, or gets: every event
    /// below it came from an earlier run.
    pub fn opened_next(&self) -> i64 {
        self.opened_next
    }

    /// Events and bytes waiting.
    pub fn depth(&self) -> Depth {
        Depth {
            events: self.events.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// The id of the oldest event still held and not released, if any.
    pub fn oldest(&self) -> Result<Option<i64>, SpoolError> {
        let conn = self.lock();
        conn.query_row(
            &format!("SELECT max(min(first), {RELEASED} + 1) FROM groups HAVING count(*) > 0"),
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(self.err())
    }
}

/// Free pages past which an empty spool gives its space back: a spool that grew to a gigabyte
/// through an outage does not keep that gigabyte once drained.
const FREE_PAGES_KEPT: i64 = 1024;
/// Bytes of write-ahead log kept after a checkpoint.
const WAL_KEPT: i64 = 16 << 20;

/// Gives the spool's free pages back to the file system, once there are many of them. Called
/// only when the spool is empty, so that no page of a waiting event has to move.
fn shrink(conn: &Connection) -> rusqlite::Result<()> {
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    if free < FREE_PAGES_KEPT {
        return Ok(());
    }
    if !has_auto_vacuum(conn)? {
        // A spool of an earlier version, not empty at start: `incremental_vacuum` does nothing
        // there, and this would run at every release. Empty now, it is cheap to convert.
        turn_on_auto_vacuum(conn)?;
    } else {
        // Each step frees some pages: stepped to the end, it frees them all.
        let mut vacuum = conn.prepare("PRAGMA incremental_vacuum")?;
        let mut steps = vacuum.query([])?;
        while steps.next()?.is_some() {}
    }
    // The main file is cut at the checkpoint; TRUNCATE empties the log too.
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
}

/// A spool made by an earlier version has no `auto_vacuum`: turned on while it is empty, its
/// free pages can be given back from then on.
fn vacuum_older_spool_if_empty(conn: &Connection) -> rusqlite::Result<()> {
    let empty: bool =
        conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM groups)", [], |r| r.get(0))?;
    if empty && !has_auto_vacuum(conn)? {
        turn_on_auto_vacuum(conn)?;
    }
    Ok(())
}

fn has_auto_vacuum(conn: &Connection) -> rusqlite::Result<bool> {
    conn.query_row("PRAGMA auto_vacuum", [], |r| r.get::<_, i64>(0))
        .map(|mode| mode != 0)
}

/// Turns `auto_vacuum` on in a spool file made without it; the VACUUM rewrites the whole file,
/// so only an empty spool is converted.
fn turn_on_auto_vacuum(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;")
}

/// Runs work on the spool off the async threads: SQLite's calls block, an fsync for a while.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, SpoolError> + Send + 'static,
) -> Result<T, SpoolError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(SpoolError::Task(e.to_string())))
}

/// Takes `n` from a count without going below zero: a count that had missed a group (one whose
/// failed append could not be told apart) must not wrap to 2^64 when that group is released.
pub(crate) fn subtract(count: &AtomicU64, n: u64) {
    let _ = count.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
        Some(c.saturating_sub(n))
    });
}

/// Spools of earlier versions kept one row per event in `events`: their events become groups
/// here, in their order, in the same transaction that drops the old table.
fn convert_one_row_per_event(conn: &mut Connection) -> rusqlite::Result<()> {
    let old: bool = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'",
        [],
        |r| r.get::<_, i64>(0).map(|n| n > 0),
    )?;
    if !old {
        return Ok(());
    }
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut next: i64 = tx.query_row(
        "SELECT coalesce((SELECT max(seq) FROM sqlite_sequence WHERE name IN ('events', 'groups')), 0) + 1",
        [],
        |r| r.get(0),
    )?;
    {
        let mut read = tx.prepare("SELECT line FROM events ORDER BY id")?;
        let mut insert =
            tx.prepare("INSERT INTO groups (last, first, lines) VALUES (?1, ?2, ?3)")?;
        let mut rows = read.query([])?;
        let mut group: Vec<String> = Vec::new();
        loop {
            let row = rows.next()?;
            if let Some(row) = row {
                group.push(row.get(0)?);
            }
            if (row.is_none() && !group.is_empty()) || group.len() == CONVERT_GROUP {
                let last = next + group.len() as i64 - 1;
                insert.execute(params![last, next, joined(&group)])?;
                next = last + 1;
                group.clear();
            }
            if row.is_none() {
                break;
            }
        }
    }
    tx.execute_batch("DROP TABLE events;")?;
    tx.commit()
}

#[cfg(test)]
mod tests;
