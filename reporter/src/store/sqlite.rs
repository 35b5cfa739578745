//! The embedded store: one SQLite file in WAL mode, one table per collection holding each document
//! whole (as BSON, so it exports exactly as MongoDB would hold it) beside the fields its indexes
//! need, plus the full text of every log as appended chunks.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};

use async_trait::async_trait;
use bson::{Bson, Document, RawBsonRef, RawDocument};
use buildstore_schema::{BuildDoc, Channel, Collection, IndexSpec, StepDoc, INDEXES};
use rusqlite::types::Value as SqlValue;
use rusqlite::vtab::array::Array;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{Apply, BuildQuery, CommitQuery, EachDoc, KnownEvents, Store, StoreError};
use crate::core::{Batch, BuildSnapshot, LogSnapshot, SpoolProgress};

#[path = "sqlite_place.rs"]
mod place;
#[path = "sqlite_queries.rs"]
mod queries;
#[path = "sqlite_upgrade.rs"]
mod upgrade;
#[path = "sqlite_write.rs"]
mod write;

pub(crate) use place::refuse_foreign;
pub use place::{check_place, is_empty_database};

/// Bumped when the table layout changes. 2: builds keep `master_id`, `branch` and `result`.
const LAYOUT_VERSION: i64 = 2;
/// The page size of a new store file.
const PAGE_SIZE: i64 = 16 << 10;
/// Documents decoded per step of a back-fill, to keep its memory bounded on a big store.
const BACKFILL_PAGE: i64 = 500;

pub struct SqliteStore {
    path: String,
    /// Writes go through this connection.
    conn: Arc<Mutex<Connection>>,
    /// Reads go through this one: in WAL mode they see the last committed batch and do not wait
    /// for a batch being written, so the next batch can be prepared meanwhile.
    reader: Arc<Mutex<Connection>>,
    /// Whether this store has made sure the `spool_progress` table is there: the first batch
    /// that records progress makes it if need be, once (see [`PROGRESS_TABLE`]).
    progress_table: Arc<std::sync::atomic::AtomicBool>,
    /// The writer's lock, when this store was opened for writing. Each write holds it too, so
    /// it is let go only once the store is dropped and no write of it is under way: a write of
    /// a dropped store still running could otherwise overlap the next writer's.
    lock: Option<Arc<super::WriterLock>>,
}

/// `collection`'s entry of a table made once, on first use, with `make` for every collection.
fn per_collection<T>(
    table: &'static OnceLock<[T; 4]>,
    collection: Collection,
    make: impl Fn(Collection) -> T,
) -> &'static T {
    // `ALL` lists the collections in declaration order, so a collection's number is its place.
    &table.get_or_init(|| Collection::ALL.map(make))[collection as usize]
}

/// The columns a collection's table keeps beside the document: the fields its indexes use.
fn columns(collection: Collection) -> &'static [&'static str] {
    static COLUMNS: OnceLock<[Vec<&'static str>; 4]> = OnceLock::new();
    per_collection(&COLUMNS, collection, |c| {
        let mut cols: Vec<&'static str> = Vec::new();
        for spec in INDEXES.iter().filter(|s| s.collection == c) {
            // `_id` is the table's key already.
            for (field, _) in spec.keys.iter().filter(|(f, _)| *f != "_id") {
                if !cols.contains(field) {
                    cols.push(field);
                }
            }
        }
        cols
    })
    .as_slice()
}

/// Where batches record how far into a spool they go (see `Batch::progress`). It came without a
/// new layout version (a file with it still opens in the version before), so a file of this
/// layout may lack it: the first batch that records progress makes it, and a read finds none
/// there, rather than every open of such a file, readers' included, writing to it.
const PROGRESS_TABLE: &str = "CREATE TABLE IF NOT EXISTS spool_progress (
    spool TEXT PRIMARY KEY, through INTEGER NOT NULL, last_id INTEGER, last_key TEXT)
    WITHOUT ROWID;\n";

fn tables() -> String {
    let mut sql = String::from(
        "CREATE TABLE IF NOT EXISTS log_chunks (
             step_id TEXT NOT NULL, channel TEXT NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
             PRIMARY KEY (step_id, channel, offset)) WITHOUT ROWID;
         CREATE TABLE IF NOT EXISTS applied_events (key TEXT PRIMARY KEY) WITHOUT ROWID;\n",
    );
    sql.push_str(PROGRESS_TABLE);
    for c in Collection::ALL {
        let extra: String = columns(c).iter().map(|f| format!(", {f}")).collect();
        sql.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {c} (_id TEXT PRIMARY KEY, doc BLOB NOT NULL{extra});\n"
        ));
    }
    sql
}

fn indexes() -> String {
    let mut sql = String::new();
    for spec in INDEXES {
        let keys: Vec<String> = spec
            .keys
            .iter()
            .map(|(f, dir)| format!("{f}{}", if *dir < 0 { " DESC" } else { "" }))
            .collect();
        sql.push_str(&format!(
            "CREATE INDEX IF NOT EXISTS {} ON {} ({});\n",
            index_name(spec),
            spec.collection,
            keys.join(", ")
        ));
    }
    sql
}

/// How an indexed field is kept in its column: dates as epoch milliseconds, ids as given.
fn column_value(value: Option<RawBsonRef>) -> SqlValue {
    match value {
        None | Some(RawBsonRef::Null) => SqlValue::Null,
        Some(RawBsonRef::String(s)) => SqlValue::Text(s.to_owned()),
        Some(RawBsonRef::Int32(i)) => SqlValue::Integer(i.into()),
        Some(RawBsonRef::Int64(i)) => SqlValue::Integer(i),
        Some(RawBsonRef::DateTime(d)) => SqlValue::Integer(d.timestamp_millis()),
        Some(other) => SqlValue::Text(
            Bson::try_from(other.to_raw_bson())
                .map(|b| b.to_string())
                .unwrap_or_default(),
        ),
    }
}

/// The values of columns `cols` of a stored document of `collection`, read from its bytes.
fn column_values(
    collection: Collection,
    cols: &[&str],
    id: &str,
    bytes: &[u8],
) -> Result<Vec<SqlValue>, StoreError> {
    let corrupt = |e: bson::raw::Error| StoreError::Corrupt {
        collection,
        id: id.to_owned(),
        message: e.to_string(),
    };
    let raw = RawDocument::from_bytes(bytes).map_err(corrupt)?;
    cols.iter()
        .map(|c| raw.get(c).map(column_value).map_err(corrupt))
        .collect()
}

fn decode(collection: Collection, id: &str, bytes: &[u8]) -> Result<Document, StoreError> {
    Document::from_reader(bytes).map_err(|e| StoreError::Corrupt {
        collection,
        id: id.to_owned(),
        message: e.to_string(),
    })
}

/// The SQLite name of an index of the schema.
fn index_name(spec: &IndexSpec) -> String {
    format!("{}_{}", spec.collection, spec.name)
}

impl SqliteStore {
    /// Opens (creating if needed) the store file at `path`, upgrading a file of an older layout.
    /// Another program's database is refused and left as it was (see [`refuse_foreign`]).
    pub async fn open(path: &str) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_file(path, true).await
    }

    /// [`SqliteStore::open`], for a caller that has already refused a path that cannot hold a
    /// store and another program's database (`check_foreign` false, see `refuse_foreign`): a
    /// writer does both before it takes its lock.
    pub(crate) async fn open_file(
        path: &str,
        check_foreign: bool,
    ) -> Result<SqliteStore, StoreError> {
        let p = path.to_owned();
        let err = sql_error(path);
        let (conn, reader) = tokio::task::spawn_blocking(move || {
            let open = || -> Result<Connection, StoreError> {
                let conn = Connection::open(&p).map_err(&err)?;
                conn.busy_timeout(std::time::Duration::from_secs(10))
                    .map_err(&err)?;
                Ok(conn)
            };
            // Another program's database gets no tables added, nor its journal changed.
            if check_foreign {
                refuse_foreign(&p)?;
            }
            let mut conn = open()?;
            // Before any setting could change it: a newer buildstore's file is left as it is.
            let version: i64 = conn
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .map_err(&err)?;
            if version > LAYOUT_VERSION {
                return Err(StoreError::NewerLayout {
                    path: p.clone(),
                    found: version,
                    known: LAYOUT_VERSION,
                });
            }
            // For a new file only (an existing one keeps its own): documents of a kilobyte or
            // two and their log chunks take fewer pages, and a batch fewer page writes.
            conn.pragma_update(None, "page_size", PAGE_SIZE)
                .map_err(&err)?;
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(&err)?;
            // FULL: a batch the store confirmed survives a power cut, not only a crash.
            conn.pragma_update(None, "synchronous", "FULL")
                .map_err(&err)?;
            upgrade::upgrade(&mut conn, version, &err)?;
            // Both connections bind lists of keys as one array (`rarray`).
            rusqlite::vtab::array::load_module(&conn).map_err(&err)?;
            let reader = open()?;
            rusqlite::vtab::array::load_module(&reader).map_err(&err)?;
            Ok::<_, StoreError>((conn, reader))
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
        Ok(SqliteStore {
            path: path.to_owned(),
            conn: Arc::new(Mutex::new(conn)),
            reader: Arc::new(Mutex::new(reader)),
            progress_table: Default::default(),
            lock: None,
        })
    }

    /// This store, holding the writer's `lock` for as long as it or a write of it lives.
    pub(crate) fn holding(self, lock: Option<super::WriterLock>) -> SqliteStore {
        SqliteStore {
            lock: lock.map(Arc::new),
            ..self
        }
    }

    /// Runs `f` on the writing connection off the async threads.
    async fn run<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let lock = self.lock.clone();
        run_on(Arc::clone(&self.conn), move |conn| {
            let _held = lock;
            f(conn)
        })
        .await
    }

    /// Runs `f`, which only reads, on the reading connection off the async threads.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        run_on(Arc::clone(&self.reader), f).await
    }

    fn sql_error(&self) -> impl Fn(rusqlite::Error) -> StoreError + Send + Clone + 'static {
        sql_error(&self.path)
    }
}

/// Runs `f` on `conn` off the async threads.
async fn run_on<T, F>(conn: Arc<Mutex<Connection>>, f: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || {
        // A panic while holding the lock cannot leave a half-applied transaction behind
        // (SQLite rolls it back), so a poisoned lock is still usable.
        let mut guard = conn.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard)
    })
    .await
    .map_err(|e| StoreError::Task(e.to_string()))?
}

fn sql_error(path: &str) -> impl Fn(rusqlite::Error) -> StoreError + Send + Clone + 'static {
    let path = path.to_owned();
    move |source| StoreError::Sqlite {
        path: path.clone(),
        source,
    }
}

/// The stored bytes of one document.
fn load_bytes(
    conn: &Connection,
    collection: Collection,
    id: &str,
) -> rusqlite::Result<Option<Vec<u8>>> {
    conn.prepare_cached(&format!("SELECT doc FROM {collection} WHERE _id = ?1"))?
        .query_row([id], |r| r.get(0))
        .optional()
}

fn load_doc(
    conn: &Connection,
    collection: Collection,
    id: &str,
    err: &impl Fn(rusqlite::Error) -> StoreError,
) -> Result<Option<Document>, StoreError> {
    let bytes = load_bytes(conn, collection, id).map_err(err)?;
    bytes.map(|b| decode(collection, id, &b)).transpose()
}

fn log_len(conn: &Connection, step_id: &str, channel: Channel) -> rusqlite::Result<Option<u64>> {
    conn.prepare_cached(
        "SELECT offset + length(data) FROM log_chunks WHERE step_id = ?1 AND channel = ?2
         ORDER BY offset DESC LIMIT 1",
    )?
    .query_row(params![step_id, channel.as_str()], |r| r.get::<_, i64>(0))
    .optional()
    .map(|n| n.map(|n| n as u64))
}

fn read_log(
    conn: &Connection,
    step_id: &str,
    channel: Channel,
    from: u64,
    max: usize,
) -> rusqlite::Result<Vec<u8>> {
    let mut st = conn.prepare_cached(
        "SELECT offset, data FROM log_chunks WHERE step_id = ?1 AND channel = ?2
           AND offset >= coalesce((SELECT max(offset) FROM log_chunks
                                   WHERE step_id = ?1 AND channel = ?2 AND offset <= ?3), 0)
         ORDER BY offset",
    )?;
    let mut rows = st.query(params![step_id, channel.as_str(), from as i64])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        if out.len() >= max {
            break;
        }
        let offset = row.get::<_, i64>(0)? as u64;
        let data: Vec<u8> = row.get(1)?;
        // A write refuses a chunk that would leave a hole, so the chunks are contiguous.
        if super::take_window(&mut out, offset, &data, from, max).is_err() {
            break;
        }
    }
    Ok(out)
}

#[async_trait]
impl Apply for SqliteStore {
    async fn apply(&self, batch: Arc<Batch>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let err = self.sql_error();
        let made = Arc::clone(&self.progress_table);
        self.run(move |conn| {
            use std::sync::atomic::Ordering;
            // Immediate: the write lock is taken, or waited for, before the batch reads. A
            // deferred transaction that read first would fail at its first write, without
            // waiting, if another connection to the file committed in between.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&err)?;
            let make_table = batch.progress.is_some() && !made.load(Ordering::Relaxed);
            if make_table {
                tx.execute_batch(PROGRESS_TABLE).map_err(&err)?;
            }
            write::apply_batch(&tx, &batch, &err)?;
            tx.commit().map_err(&err)?;
            if make_table {
                made.store(true, Ordering::Relaxed);
            }
            Ok(())
        })
        .await
    }

    async fn applied_events(&self, keys: &[String]) -> Result<KnownEvents, StoreError> {
        let keys = keys.to_vec();
        let err = self.sql_error();
        let applied: HashSet<String> = self
            .read(move |conn| {
                // One statement for all of them, the keys bound as one array.
                let keys: Array = std::rc::Rc::new(keys.into_iter().map(SqlValue::Text).collect());
                conn.prepare_cached("SELECT key FROM applied_events WHERE key IN rarray(?1)")
                    .and_then(|mut st| st.query_map([keys], |r| r.get(0))?.collect())
                    .map_err(&err)
            })
            .await?;
        // A batch is written whole or not at all: no chunk is ever left pinned.
        Ok(KnownEvents {
            applied,
            pinned: Default::default(),
        })
    }

    async fn spool_progress(&self, spool: &str) -> Result<Option<SpoolProgress>, StoreError> {
        let spool = spool.to_owned();
        let err = self.sql_error();
        self.read(move |conn| {
            let made: bool = conn
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'spool_progress')",
                    [],
                    |r| r.get(0),
                )
                .map_err(&err)?;
            if !made {
                return Ok(None);
            }
            conn.prepare_cached(
                "SELECT through, last_id, last_key FROM spool_progress WHERE spool = ?1",
            )
            .and_then(|mut st| {
                st.query_row([&spool], |r| {
                    let last = match (r.get(1)?, r.get(2)?) {
                        (Some(id), Some(key)) => Some((id, key)),
                        _ => None,
                    };
                    Ok(SpoolProgress {
                        spool: spool.clone(),
                        through: r.get(0)?,
                        last,
                    })
                })
                .optional()
            })
            .map_err(&err)
        })
        .await
    }

    async fn load_builds(
        &self,
        ids: &[String],
        log_window: usize,
    ) -> Result<Vec<BuildSnapshot>, StoreError> {
        let ids = ids.to_vec();
        let err = self.sql_error();
        self.read(move |conn| {
            // One read transaction: one snapshot, and no lock taken per statement.
            let tx = conn.transaction().map_err(&err)?;
            let conn: &Connection = &tx;
            let mut out = Vec::new();
            for id in ids {
                let Some(raw) = load_doc(conn, Collection::Builds, &id, &err)? else {
                    continue;
                };
                let build: BuildDoc =
                    bson::from_document(raw).map_err(|e| StoreError::Corrupt {
                        collection: Collection::Builds,
                        id: id.clone(),
                        message: e.to_string(),
                    })?;
                let mut steps = Vec::new();
                let mut logs = Vec::new();
                let mut st = conn
                    .prepare_cached("SELECT _id, doc FROM steps WHERE build = ?1 ORDER BY step")
                    .map_err(&err)?;
                let rows: Vec<(String, Vec<u8>)> = st
                    .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .and_then(|rows| rows.collect())
                    .map_err(&err)?;
                for (step_id, bytes) in rows {
                    let doc = decode(Collection::Steps, &step_id, &bytes)?;
                    let step: StepDoc =
                        bson::from_document(doc).map_err(|e| StoreError::Corrupt {
                            collection: Collection::Steps,
                            id: step_id.clone(),
                            message: e.to_string(),
                        })?;
                    for channel in Channel::ALL {
                        let Some(len) = log_len(conn, &step_id, channel).map_err(&err)? else {
                            continue;
                        };
                        let whole = step.whole_log(channel);
                        let (head, tail) = if let Some(text) = whole {
                            (text.as_bytes().to_vec(), text.as_bytes().to_vec())
                        } else {
                            let tail_from = len.saturating_sub(log_window as u64);
                            (
                                read_log(conn, &step_id, channel, 0, log_window).map_err(&err)?,
                                read_log(conn, &step_id, channel, tail_from, log_window)
                                    .map_err(&err)?,
                            )
                        };
                        logs.push(LogSnapshot {
                            step_id: step_id.clone(),
                            channel,
                            len,
                            head,
                            tail,
                            inline_whole: whole.is_some(),
                        });
                    }
                    steps.push(step);
                }
                out.push(BuildSnapshot { build, steps, logs });
            }
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn get(&self, collection: Collection, id: &str) -> Result<Option<Document>, StoreError> {
        let id = id.to_owned();
        let err = self.sql_error();
        self.read(move |conn| load_doc(conn, collection, &id, &err))
            .await
    }

    async fn list(
        &self,
        collection: Collection,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let after = after.map(str::to_owned);
        let err = self.sql_error();
        self.read(move |conn| {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let sql = format!("SELECT _id, doc FROM {collection} WHERE ?1 IS NULL OR _id > ?1 ORDER BY _id LIMIT ?2");
            let mut st = conn.prepare_cached(&sql).map_err(&err)?;
            let rows: Vec<(String, Vec<u8>)> = st
                .query_map(params![after, limit], |r| Ok((r.get(0)?, r.get(1)?)))
                .and_then(|rows| rows.collect())
                .map_err(&err)?;
            rows.iter().map(|(id, b)| decode(collection, id, b)).collect()
        })
        .await
    }

    async fn find_builds(
        &self,
        query: &BuildQuery,
        each: EachDoc,
    ) -> Result<Vec<Document>, StoreError> {
        let select = queries::builds(query);
        let err = self.sql_error();
        self.read(move |conn| select.run_each(conn, Collection::Builds, &err, each))
            .await
    }

    async fn build_steps(
        &self,
        build_id: &str,
        limit: usize,
        each: EachDoc,
    ) -> Result<Vec<Document>, StoreError> {
        let select = queries::steps(build_id, limit);
        let err = self.sql_error();
        self.read(move |conn| select.run_each(conn, Collection::Steps, &err, each))
            .await
    }

    async fn find_commits(&self, query: &CommitQuery) -> Result<Vec<Document>, StoreError> {
        let q = query.clone();
        let err = self.sql_error();
        self.read(move |conn| {
            // One snapshot for both parts: a commit whose date arrives in between is neither
            // listed twice nor missed.
            let tx = conn.transaction().map_err(&err)?;
            let mut found = match queries::dated_commits(&q) {
                Some(select) => select.run(&tx, Collection::Repository, &err)?,
                None => Vec::new(),
            };
            let rest = q.limit.saturating_sub(found.len());
            if rest > 0 {
                let select = queries::undated_commits(q.before.as_ref(), rest);
                found.extend(select.run(&tx, Collection::Repository, &err)?);
            }
            Ok(found)
        })
        .await
    }

    async fn log_len(&self, step_id: &str, channel: Channel) -> Result<Option<u64>, StoreError> {
        let step_id = step_id.to_owned();
        let err = self.sql_error();
        self.read(move |conn| log_len(conn, &step_id, channel).map_err(&err))
            .await
    }

    async fn read_log(
        &self,
        step_id: &str,
        channel: Channel,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let step_id = step_id.to_owned();
        let err = self.sql_error();
        self.read(move |conn| read_log(conn, &step_id, channel, offset, max).map_err(&err))
            .await
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;

/// Opens (creating) the store file `file` in `dir`, for tests.
#[cfg(test)]
pub(crate) async fn open_in(dir: &std::path::Path, file: &str) -> SqliteStore {
    let path = dir.join(file);
    SqliteStore::open(&path.display().to_string())
        .await
        .expect("a store in a test directory")
}
