//! Stores: where mutations become documents. A store applies a [`Batch`] atomically and answers the
//! reads that the CLI, the pipeline's recovery and the web view need. The embedded SQLite store is
//! the zero-install default; every store holds the same documents, so `export` prints the same
//! lines whichever store is behind it.

mod docs;
pub mod mongo;
mod sqlite;
mod writer_lock;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use bson::Document;
use buildstore_schema::{Channel, Collection};

use crate::core::{Batch, BuildSnapshot, SpoolProgress};

pub use docs::DocSet;
pub use mongo::MongoStore;
#[cfg(test)]
pub(crate) use sqlite::open_in;
pub use sqlite::{check_place as check_sqlite_place, is_empty_database, SqliteStore};
pub(crate) use writer_lock::{lock_writer, WriterLock};

/// Errors of the store layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store location {0:?} is not understood: expected sqlite:PATH or mongodb://HOST[:PORT]/DATABASE")]
    BadLocation(String),
    #[error(
        "the store location is empty (an empty --store or BUILDSTORE_STORE): expected \
         sqlite:PATH or mongodb://HOST[:PORT]/DATABASE"
    )]
    EmptyLocation,
    #[error("store location {0:?} names no file: write sqlite:PATH, such as sqlite:buildstore.db")]
    NoSqlitePath(String),
    #[error("the MongoDB URI of the store is not valid: {0}")]
    BadMongoUri(String),
    #[error(
        "store location {0:?}: sqlite:PATH takes a file path, not a URL with //; write \
         sqlite:NAME.db for a file in the current directory, or sqlite:/full/path/NAME.db"
    )]
    SqliteUrl(String),
    #[error(
        "store location {0:?}: sqlite:PATH takes a file path, not an SQLite URI (file:...); \
         write sqlite:NAME.db"
    )]
    SqliteUri(String),
    #[error(
        "store location {0:?}: sqlite:PATH takes a file path, and `?` does not start SQLite URI \
         parameters there (the file's name would hold it); write sqlite:NAME.db"
    )]
    SqliteQuery(String),
    #[error(
        "store location {0:?}: the path starts or ends with whitespace, which would be part of \
         the file's name; remove it"
    )]
    SpacedPath(String),
    #[error(
        "store location {0:?}: an in-memory database would lose every document when the command \
         ends, and the store needs more than one connection to it; give a file, sqlite:PATH"
    )]
    InMemory(String),
    #[error(
        "store {path} is written by another buildstore process (ingest, serve or an embedded \
         Reporter, or the last write of a Reporter just stopped); one writes it at a time"
    )]
    InUse { path: String },
    #[error("cannot lock the store for writing ({path}): {source}")]
    Lock {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot look up the DNS records of the mongodb+srv URI: {0}; such a URI needs them at \
         start (a mongodb:// URI naming the hosts does not)"
    )]
    SrvLookup(String),
    #[error("sqlite store {path}: {why}")]
    NoPlace { path: String, why: String },
    #[error("cannot reach MongoDB at {location} within serverSelectionTimeoutMS: {message}")]
    Unreachable { location: String, message: String },
    #[error("MongoDB at {location}: {message}")]
    Mongo { location: String, message: String },
    #[error("MongoDB rejected the {mutation} write to {collection} document {id:?}: {message}")]
    WriteRejected {
        collection: String,
        id: String,
        mutation: &'static str,
        message: String,
    },
    #[error("sqlite store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("document {collection}/{id} in the store is damaged: {message}")]
    Corrupt {
        collection: Collection,
        id: String,
        message: String,
    },
    #[error("mutation on {collection}/{id} needs the document, which is not in the store")]
    Missing { collection: Collection, id: String },
    #[error("log {channel} of step {step_id} holds {len} bytes, but a chunk was written for offset {offset}")]
    LogConflict {
        step_id: String,
        channel: &'static str,
        len: u64,
        offset: u64,
    },
    #[error("sqlite store {path}: written by a newer buildstore (layout {found}; this one knows up to {known}); use that version, or a new store file")]
    NewerLayout {
        path: String,
        found: i64,
        known: i64,
    },
    #[error("sqlite store {0}: the file holds tables, but not a buildstore store's; it is left as it is")]
    NotAStore(String),
    #[error("store task failed: {0}")]
    Task(String),
}

impl StoreError {
    /// The batch does not fit what the store holds (a document or a log is not where the
    /// applier thought): sending it again cannot succeed, folding its events again from the
    /// store can. Any other failure may pass, and the same batch is sent again.
    pub fn batch_does_not_fit(&self) -> bool {
        matches!(
            self,
            StoreError::Missing { .. } | StoreError::LogConflict { .. }
        )
    }
}

/// How long a process that spools what it takes waits for its store to be prepared before it
/// starts without it.
pub const PREPARE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Prepares `store` for a process that spools what it takes (`serve`, the embedded `Reporter`).
/// A store that is down is what the spool is for: one that cannot be reached, or does not answer
/// within [`PREPARE_WAIT`] (rather than the whole server selection timeout), is prepared in the
/// background once it answers, and the caller starts at once. Any other error (a refused login)
/// is returned.
///
/// The preparing in the background goes on until it succeeds, or until what is returned is
/// dropped.
pub async fn prepare_or_later(
    store: &std::sync::Arc<dyn Store>,
) -> Result<Option<Preparing>, StoreError> {
    // The first attempt counts with the others, once someone listens.
    let report = std::sync::Arc::new(ErrorReport::default());
    match tokio::time::timeout(PREPARE_WAIT, store.init()).await {
        Ok(Ok(())) => return Ok(None),
        Ok(Err(e @ StoreError::Unreachable { .. })) => {
            tracing::warn!(error = %e, "store unreachable: starting anyway; the spool keeps the events");
            report.failed(e);
        }
        Err(_) => {
            tracing::warn!(wait = ?PREPARE_WAIT, "store not answering: starting anyway; the spool keeps the events");
        }
        Ok(Err(e)) => return Err(e),
    }
    let store = std::sync::Arc::clone(store);
    let init = move || {
        let store = std::sync::Arc::clone(&store);
        async move { store.init().await }
    };
    let task = tokio::spawn(init_once_reachable(init, std::sync::Arc::clone(&report)));
    Ok(Some(Preparing {
        task: task.abort_handle(),
        report,
    }))
}

/// Who hears of each failed attempt to prepare a store in the background. The failures before
/// anyone asked (the engine that counts them starts after the preparing) are kept, the first
/// few, and told when someone does.
#[derive(Default)]
struct ErrorReport(std::sync::Mutex<ReportState>);

/// Whoever hears of a failure.
type ErrorSink = Box<dyn Fn(&StoreError) + Send + Sync>;

#[derive(Default)]
struct ReportState {
    sink: Option<ErrorSink>,
    missed: Vec<StoreError>,
}

impl ErrorReport {
    /// Most failures kept for a sink that does not come.
    const MISSED_KEPT: usize = 16;

    fn lock(&self) -> std::sync::MutexGuard<'_, ReportState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failed(&self, e: StoreError) {
        let mut state = self.lock();
        match &state.sink {
            Some(sink) => sink(&e),
            None if state.missed.len() < Self::MISSED_KEPT => state.missed.push(e),
            None => {}
        }
    }

    fn to(&self, sink: ErrorSink) {
        let mut state = self.lock();
        for e in std::mem::take(&mut state.missed) {
            sink(&e);
        }
        state.sink = Some(sink);
    }
}

/// A store being prepared in the background; dropping it ends that.
pub struct Preparing {
    task: tokio::task::AbortHandle,
    report: std::sync::Arc<ErrorReport>,
}

impl Preparing {
    /// Hands each failed attempt, those so far included, to `report` too (the daemon counts
    /// them in its metrics: a store that takes writes but not its indexes shows nowhere else
    /// but the log).
    pub fn report_errors_to(&self, report: impl Fn(&StoreError) + Send + Sync + 'static) {
        self.report.to(Box::new(report));
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Prepares a store that was down at start (indexes, validators), trying again after 1 s, then
/// twice as long each time up to 30 s, until it answers.
async fn init_once_reachable<F, Fut>(init: F, report: std::sync::Arc<ErrorReport>)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut wait = std::time::Duration::from_secs(1);
    loop {
        tokio::time::sleep(wait).await;
        match init().await {
            Ok(()) => {
                tracing::info!("store prepared");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, ?wait, "preparing the store failed; trying again");
                report.failed(e);
            }
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(30));
    }
}

/// Which builds to list: newest `time_start` first, ties broken by `_id` descending, so that a
/// [`BuildCursor`] taken from the last build of one page starts the next page exactly.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BuildQuery {
    /// The master's id as text: matches a master id stored as a string or as an integer.
    pub master: Option<String>,
    pub builder: Option<String>,
    pub branch: Option<String>,
    pub result: Option<ResultFilter>,
    pub changeset: Option<String>,
    pub since: Option<bson::DateTime>,
    pub until: Option<bson::DateTime>,
    /// Only builds after this one in the order above (strictly older, or as old with a smaller `_id`).
    pub before: Option<BuildCursor>,
    pub limit: usize,
}

/// The integer a master id given as text stands for, if it is one. Only the text an integer id
/// prints as (the form it takes inside `_id`s) counts: "07" names no integer master.
fn integer_master(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().filter(|n| n.to_string() == text)
}

/// A result to filter builds by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultFilter {
    /// Finished with this Buildbot result code.
    Finished(i32),
    /// Still running: no result yet.
    Running,
}

/// Where a page of builds ended: the last build's `time_start` and `_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildCursor {
    pub time_start: bson::DateTime,
    pub id: String,
}

/// Which commits of `repository` to list: newest `commiter_date` first, ties broken by `_id`
/// descending; commits whose metadata has not arrived (no `commiter_date`) come last.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommitQuery {
    pub before: Option<CommitCursor>,
    pub limit: usize,
}

/// Where a page of commits ended: the last commit's `commiter_date` (if any) and `_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitCursor {
    pub commiter_date: Option<bson::DateTime>,
    pub id: String,
}

/// What a store knows of some event keys (see [`Apply::applied_events`]).
#[derive(Debug, Default)]
pub struct KnownEvents {
    /// Events applied: skipped when they come again.
    pub applied: HashSet<String>,
    /// Log chunks sent without an offset, with the offset a batch that began to be written gave
    /// them (see [`Batch::pins`]). Only a store without transactions has any.
    pub pinned: HashMap<String, u64>,
}

/// The part of a store that folding events into it needs: writing a batch, and reading back
/// what the next batch builds on.
#[async_trait]
pub trait Apply: Send + Sync {
    /// The caller retries failed batches itself and counts each failure, as the daemon's drain
    /// does: a store that would otherwise try a batch again after a transient error (MongoDB,
    /// for about as long as an election) returns the error at once, so an outage shows in the
    /// caller's metrics when it starts rather than after the store's own retries.
    fn leave_retries_to_caller(&self) {}

    /// Applies all of `batch` or none of it (or, on a store without transactions, part of it
    /// when it fails). Applying the same batch again changes nothing. The batch is shared, not
    /// borrowed: a store that writes on another thread needs no copy, nor does a caller that
    /// keeps it to send again.
    async fn apply(&self, batch: Arc<Batch>) -> Result<(), StoreError>;

    /// What the store knows of these event keys: which are applied, and which log chunks were
    /// pinned to an offset by a batch that may not have been written whole.
    async fn applied_events(&self, keys: &[String]) -> Result<KnownEvents, StoreError>;

    /// The builds among `ids` that exist, with their steps and the first and last `log_window`
    /// bytes of every log: what the core needs to carry on folding events into them.
    async fn load_builds(
        &self,
        ids: &[String],
        log_window: usize,
    ) -> Result<Vec<BuildSnapshot>, StoreError>;

    /// The progress through spool `spool` the last batch recorded (see [`Batch::progress`]).
    async fn spool_progress(&self, spool: &str) -> Result<Option<SpoolProgress>, StoreError>;
}

/// A whole number as a store hands it back: a 32- or 64-bit integer (a server may give a small
/// `long` back as an `int`).
pub fn whole(v: &bson::Bson) -> Option<i64> {
    v.as_i64().or_else(|| v.as_i32().map(i64::from))
}

/// How long `channel`'s log is in all, as a step document read raw counts it (`log_bytes`); 0 if
/// it counts none.
pub fn raw_log_len(step: &Document, channel: Channel) -> u64 {
    step.get_document("log_bytes")
        .ok()
        .and_then(|b| b.get(channel.field()))
        .and_then(whole)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// What a reader does to each document as it is read (see [`Store::build_steps`]); `|_| {}` to
/// keep them whole.
pub type EachDoc = for<'a> fn(&'a mut Document);

/// A store: what the applier writes, and the reads of the commands, the web view and the tests.
#[async_trait]
pub trait Store: Apply {
    /// Prepares the store for use: indexes, validators. Harmless to run again.
    async fn init(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// One document by `_id`.
    async fn get(&self, collection: Collection, id: &str) -> Result<Option<Document>, StoreError>;

    /// Up to `limit` documents with `_id` greater than `after`, in `_id` order (export pages).
    async fn list(
        &self,
        collection: Collection,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Document>, StoreError>;

    /// Up to `query.limit` builds matching `query`, in its order, each passed through `each` as
    /// it is read (a list that shows a few fields of each need not hold whole documents).
    async fn find_builds(
        &self,
        query: &BuildQuery,
        each: EachDoc,
    ) -> Result<Vec<Document>, StoreError>;

    /// Up to `limit` steps of the build `build_id`, in step order, each passed through `each` as
    /// it is read: a step document may hold megabytes of inline logs, and a build a thousand
    /// steps, so a reader that needs less of each (a build page) keeps only that.
    async fn build_steps(
        &self,
        build_id: &str,
        limit: usize,
        each: EachDoc,
    ) -> Result<Vec<Document>, StoreError>;

    /// Up to `query.limit` commits of `repository`, in its order.
    async fn find_commits(&self, query: &CommitQuery) -> Result<Vec<Document>, StoreError>;

    /// Length in bytes of the full log, or `None` when the step has no such log.
    async fn log_len(&self, step_id: &str, channel: Channel) -> Result<Option<u64>, StoreError>;

    /// Up to `max` bytes of the full log from byte `offset`.
    async fn read_log(
        &self,
        step_id: &str,
        channel: Channel,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, StoreError>;
}

/// Appends to `out` what `piece` (stored at byte `piece_offset` of a log) adds to a read that
/// started at byte `from` and returns at most `max` bytes. Pieces come in offset order and may
/// overlap (a MongoDB batch redone after a failure can store a run of chunks twice in different
/// pieces): bytes already taken are skipped. A piece that starts past the next byte wanted, while
/// the read still wants bytes, would leave a hole: nothing is taken, and the error is that first
/// missing byte.
fn take_window(
    out: &mut Vec<u8>,
    piece_offset: u64,
    piece: &[u8],
    from: u64,
    max: usize,
) -> Result<(), u64> {
    if out.len() >= max {
        return Ok(());
    }
    let next = from + out.len() as u64;
    if piece_offset > next {
        return Err(next);
    }
    let skip = usize::try_from(next - piece_offset)
        .unwrap_or(usize::MAX)
        .min(piece.len());
    let take = (piece.len() - skip).min(max.saturating_sub(out.len()));
    out.extend_from_slice(&piece[skip..skip + take]);
    Ok(())
}

/// Whether a store location names a MongoDB server rather than an SQLite file.
fn is_mongodb_uri(location: &str) -> bool {
    location.starts_with("mongodb://") || location.starts_with("mongodb+srv://")
}

/// Opens the store a location names: `sqlite:PATH` or a `mongodb://` / `mongodb+srv://` URI.
pub async fn open(location: &str) -> Result<Box<dyn Store>, StoreError> {
    if location.is_empty() {
        return Err(StoreError::EmptyLocation);
    }
    if is_mongodb_uri(location) {
        return Ok(Box::new(MongoStore::open(location).await?));
    }
    if let Some(path) = sqlite_path(location)? {
        return Ok(Box::new(SqliteStore::open(path).await?));
    }
    Err(StoreError::BadLocation(location.to_owned()))
}

/// Opens the store a location names for a program that only reads it: the reads of a MongoDB
/// store then follow the URI's `readPreference` (see [`MongoStore::open_read_only`]).
pub async fn open_read_only(location: &str) -> Result<Box<dyn Store>, StoreError> {
    if is_mongodb_uri(location) {
        return Ok(Box::new(MongoStore::open_read_only(location).await?));
    }
    open(location).await
}

/// Opens the store a location names for writing. An SQLite store is locked first, against a
/// second process writing it at once (see [`lock_writer`]); the store holds the lock until it is
/// dropped and its last write has ended.
pub async fn open_for_writing(location: &str) -> Result<Box<dyn Store>, StoreError> {
    let Some(path) = sqlite_path(location)? else {
        return open(location).await;
    };
    // Before the lock, whose file would be left next to another program's database.
    let owned = path.to_owned();
    tokio::task::spawn_blocking(move || sqlite::refuse_foreign(&owned))
        .await
        .map_err(|e| StoreError::Task(e.to_string()))??;
    let lock = lock_writer(location)?;
    let store = SqliteStore::open_file(path, false).await?.holding(lock);
    Ok(Box::new(store))
}

/// The file of an SQLite location (`sqlite:PATH`), or None for any other kind; a form that can
/// name no store file is an error that says why.
pub fn sqlite_path(location: &str) -> Result<Option<&str>, StoreError> {
    let Some(path) = location.strip_prefix("sqlite:") else {
        return Ok(None);
    };
    if path.is_empty() {
        return Err(StoreError::NoSqlitePath(location.to_owned()));
    }
    if in_memory(path) {
        return Err(StoreError::InMemory(location.to_owned()));
    }
    // `sqlite://x.db` names /x.db here, and x.db to tools that read it as a URL.
    if path.starts_with("//") {
        return Err(StoreError::SqliteUrl(location.to_owned()));
    }
    // SQLite would take the rest as a URI, whose file is not the path the writer's lock, the
    // check for another program's database and the readers look at.
    if path.starts_with("file:") {
        return Err(StoreError::SqliteUri(location.to_owned()));
    }
    // Both were files of surprising names, made without a word (`sqlite: x.db`, a URI's
    // `x.db?mode=ro`).
    if path.contains('?') {
        return Err(StoreError::SqliteQuery(location.to_owned()));
    }
    if path.trim() != path {
        return Err(StoreError::SpacedPath(location.to_owned()));
    }
    Ok(Some(path))
}

/// Whether SQLite would take `path` for an in-memory database, which no store can be. It takes
/// URIs too: `file::memory:`, `file:x?mode=memory`.
fn in_memory(path: &str) -> bool {
    path == ":memory:"
        || (path.starts_with("file:")
            && (path.contains(":memory:") || path.contains("mode=memory")))
}

#[cfg(test)]
mod tests {
    use super::take_window;

    /// A store down at start is prepared in the background, and each failed attempt reaches
    /// whoever asked to hear of them (the daemon's metrics), those before they asked included,
    /// until one succeeds.
    #[tokio::test(start_paused = true)]
    async fn each_failed_attempt_to_prepare_in_the_background_is_reported() {
        use super::{init_once_reachable, ErrorReport, StoreError};
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::{Arc, Mutex};
        let attempts = Arc::new(AtomicUsize::new(0));
        let init = {
            let attempts = Arc::clone(&attempts);
            move || {
                let n = attempts.fetch_add(1, Ordering::SeqCst);
                async move {
                    match n {
                        0..=2 => Err(StoreError::Mongo {
                            location: "m".into(),
                            message: format!("not authorized to create indexes ({n})"),
                        }),
                        _ => Ok(()),
                    }
                }
            }
        };
        let heard = Arc::new(Mutex::new(Vec::new()));
        let report = Arc::new(ErrorReport::default());
        let preparing = tokio::spawn(init_once_reachable(init, Arc::clone(&report)));
        // Two attempts (at 1 s and 3 s) fail before anyone listens.
        tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        let sink = Arc::clone(&heard);
        report.to(Box::new(move |e: &StoreError| {
            sink.lock().unwrap().push(e.to_string())
        }));
        preparing.await.unwrap();
        assert_eq!(
            attempts.load(Ordering::SeqCst),
            4,
            "it stops at the first success"
        );
        assert_eq!(
            *heard.lock().unwrap(),
            (0..3)
                .map(|n| format!("MongoDB at m: not authorized to create indexes ({n})"))
                .collect::<Vec<_>>()
        );
    }

    /// Reads `max` bytes from `from` through `pieces` (offset, text), as the stores do.
    fn read(pieces: &[(u64, &str)], from: u64, max: usize) -> Result<String, u64> {
        let mut out = Vec::new();
        for (offset, text) in pieces {
            take_window(&mut out, *offset, text.as_bytes(), from, max)?;
        }
        Ok(String::from_utf8(out).expect("text"))
    }

    #[test]
    fn overlapping_pieces_give_each_byte_once() {
        // A redone batch stored 3..9 again as one piece next to 3..6 and 6..9.
        let pieces = [(0, "abc"), (3, "def"), (3, "defghi"), (6, "ghi"), (9, "j")];
        assert_eq!(read(&pieces, 0, 100), Ok("abcdefghij".into()));
        assert_eq!(read(&pieces, 4, 4), Ok("efgh".into()));
    }

    #[test]
    fn a_hole_between_pieces_is_reported_by_its_first_byte() {
        assert_eq!(read(&[(0, "abc"), (5, "fgh")], 0, 100), Err(3));
        assert_eq!(read(&[(2, "cde")], 0, 100), Err(0));
    }

    /// A store down at start is prepared in the background, and only for as long as whoever
    /// started it wants: an embedding program's reporter shut down leaves no task behind.
    #[tokio::test]
    async fn preparing_in_the_background_ends_when_dropped() {
        let uri = super::mongo::unreachable_uri(60_000);
        let store: std::sync::Arc<dyn super::Store> =
            std::sync::Arc::new(super::MongoStore::open(&uri).await.expect("a store"));
        let preparing = super::prepare_or_later(&store).await.expect("not an error");
        assert!(preparing.is_some(), "a store that does not answer");
        assert_eq!(std::sync::Arc::strong_count(&store), 2, "held by the task");
        drop(preparing);
        for _ in 0..100 {
            if std::sync::Arc::strong_count(&store) == 1 {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the task still holds the store");
    }
}
