//! The MongoDB store, through the official driver. Batches become a handful of multi-statement
//! commands (see [`plan`]); full logs past the inline limit go to the GridFS bucket `logs`;
//! `init` creates the documented indexes and `$jsonSchema` validators generated from the schema
//! types. A MongoDB server without transactions cannot apply a batch atomically, so every write is
//! idempotent and a batch that failed halfway is completed by the retry of the same batch: the
//! applied event keys are written last.

mod connect;
mod exec;
mod filters;
pub mod plan;
mod prepare;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use buildstore_schema::{BuildDoc, Channel, Collection, StepDoc};
use futures::TryStreamExt;
use mongodb::options::GridFsBucketOptions;
use mongodb::Database;

use self::connect::selection_summary;
pub use self::connect::DEFAULT_SELECTION_TIMEOUT;
use self::exec::{backoff, Failure, Redactor};
use self::filters::{builds_filter, commits_filter};
use self::plan::{log_file_name, APPLIED_EVENTS, BUCKET, PIECE_END, PIN_OFFSET, SPOOL_PROGRESS};
use super::{Apply, BuildQuery, CommitQuery, EachDoc, KnownEvents, Store, StoreError};
use crate::core::{Batch, BuildSnapshot, LogSnapshot, SpoolProgress};

/// Attempts at a batch that keeps failing with transient errors, before giving up.
const ATTEMPTS: u32 = 8;
/// Most GridFS pieces whose chunks one query asks for: each takes a clause of its id (up to
/// some 600 bytes) and its chunk numbers.
const PIECES_PER_QUERY: usize = 1000;

pub struct MongoStore {
    db: Database,
    /// Whether a batch that failed on a transient error is tried again here (see
    /// [`Apply::leave_retries_to_caller`]).
    retries: AtomicBool,
    /// Hosts and database, never credentials: what messages say.
    location: String,
    redact: Redactor,
    /// The URI's write concern, for the commands that write batches.
    write_concern: Option<Document>,
}

impl MongoStore {
    fn err(&self, e: mongodb::error::Error) -> StoreError {
        if matches!(
            e.kind.as_ref(),
            mongodb::error::ErrorKind::ServerSelection { .. }
        ) {
            return StoreError::Unreachable {
                location: self.location.clone(),
                message: selection_summary(&self.redact.driver(&e)),
            };
        }
        StoreError::Mongo {
            location: self.location.clone(),
            message: self.redact.driver(&e),
        }
    }

    fn coll(&self, c: Collection) -> mongodb::Collection<Document> {
        self.db.collection(c.name())
    }

    async fn find_docs(
        &self,
        c: Collection,
        filter: Document,
        sort: Document,
        limit: Option<i64>,
    ) -> Result<Vec<Document>, StoreError> {
        self.find_each(c, filter, sort, limit, |_| {}).await
    }

    /// Like [`MongoStore::find_docs`], with `each` applied to every document as it comes: one
    /// batch of the cursor at a time is held whole (16 MiB at most), not every document.
    async fn find_each(
        &self,
        c: Collection,
        filter: Document,
        sort: Document,
        limit: Option<i64>,
        each: EachDoc,
    ) -> Result<Vec<Document>, StoreError> {
        // To MongoDB a limit of 0 means none at all.
        if limit == Some(0) {
            return Ok(vec![]);
        }
        let coll = self.coll(c);
        let mut find = coll.find(filter).sort(sort);
        if let Some(n) = limit {
            find = find.limit(n);
        }
        let mut cursor = find.await.map_err(|e| self.err(e))?;
        let mut docs = Vec::new();
        while let Some(mut doc) = cursor.try_next().await.map_err(|e| self.err(e))? {
            each(&mut doc);
            docs.push(doc);
        }
        Ok(docs)
    }

    /// Up to `max` bytes from byte `from` of a log kept in GridFS, in a few queries whatever the
    /// number of pieces: the pieces that overlap the window (by their end, an indexed field of
    /// each piece; pieces written before it was kept are all read), then their chunks in the
    /// window, for up to [`PIECES_PER_QUERY`] pieces a query. A live build adds a piece per
    /// batch, tens of thousands in a long one; a query per piece, over every piece before the
    /// window, made reading its tail quadratic.
    async fn gridfs_log(
        &self,
        step_id: &str,
        channel: Channel,
        from: u64,
        max: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let until = from.saturating_add(max as u64);
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let bucket = self.db.gridfs_bucket(
            GridFsBucketOptions::builder()
                .bucket_name(BUCKET.to_owned())
                .build(),
        );
        let files: Vec<_> = bucket
            .find(doc! {
                "filename": log_file_name(step_id, channel),
                "metadata.offset": {"$lt": as_i64(until)},
                "$or": [{PIECE_END: {"$gt": as_i64(from)}}, {PIECE_END: Bson::Null}],
            })
            .sort(doc! {"metadata.offset": 1})
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        // Each piece in the window, with the chunks of it the window needs.
        let mut pieces = Vec::new();
        for f in &files {
            let offset = f
                .metadata
                .as_ref()
                .and_then(|m| m.get_i64("offset").ok())
                .and_then(|o| u64::try_from(o).ok())
                .unwrap_or(0);
            let size = u64::from(f.chunk_size_bytes.max(1));
            let (lo, hi) = (from.max(offset), (offset + f.length).min(until));
            if lo >= hi {
                continue;
            }
            let (first, last) = ((lo - offset) / size, (hi - 1 - offset) / size);
            pieces.push((f, offset + first * size, first, last));
        }
        if pieces.is_empty() {
            return Ok(vec![]);
        }
        let wanted: Vec<Document> = pieces
            .iter()
            .map(|(f, _, first, last)| {
                doc! {"files_id": f.id.clone(), "n": {"$gte": as_i64(*first), "$lte": as_i64(*last)}}
            })
            .collect();
        // A window of many tiny pieces is asked for in parts: a command holds at most 16 MiB.
        let mut chunks: Vec<Document> = Vec::new();
        for some in wanted.chunks(PIECES_PER_QUERY) {
            let more: Vec<Document> = self
                .db
                .collection::<Document>(&format!("{BUCKET}.chunks"))
                .find(doc! {"$or": some})
                .sort(doc! {"files_id": 1, "n": 1})
                .await
                .map_err(|e| self.err(e))?
                .try_collect()
                .await
                .map_err(|e| self.err(e))?;
            chunks.extend(more);
        }
        let mut bytes: HashMap<String, Vec<u8>> = HashMap::new();
        for chunk in &chunks {
            let id = chunk
                .get("files_id")
                .map(Bson::to_string)
                .unwrap_or_default();
            let data = chunk.get_binary_generic("data").map_err(|e| {
                corrupt(
                    Collection::Steps,
                    step_id,
                    format!("GridFS chunk of {id}: {e}"),
                )
            })?;
            bytes.entry(id).or_default().extend_from_slice(data);
        }
        let mut out = Vec::new();
        for (f, start, _, _) in pieces {
            let piece = bytes.get(&f.id.to_string()).map_or(&[][..], Vec::as_slice);
            super::take_window(&mut out, start, piece, from, max).map_err(|missing| {
                corrupt(
                    Collection::Steps,
                    step_id,
                    format!(
                        "the {} log has no GridFS piece holding byte {missing}",
                        channel.as_str()
                    ),
                )
            })?;
        }
        Ok(out)
    }

    /// The step document `step_id`, if there is one.
    async fn step(&self, step_id: &str) -> Result<Option<StepDoc>, StoreError> {
        let Some(raw) = self.get(Collection::Steps, step_id).await? else {
            return Ok(None);
        };
        step_doc(raw, step_id).map(Some)
    }
}

/// A stored step document, decoded. (A server may hand back a small `long` of `log_bytes` as an
/// `int`; decoding takes both.)
fn step_doc(raw: Document, step_id: &str) -> Result<StepDoc, StoreError> {
    bson::from_document(raw).map_err(|e| corrupt(Collection::Steps, step_id, e))
}

fn limit(n: usize) -> Option<i64> {
    Some(i64::try_from(n).unwrap_or(i64::MAX))
}

fn corrupt(c: Collection, id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        collection: c,
        id: id.to_owned(),
        message: e.to_string(),
    }
}

#[async_trait]
impl Apply for MongoStore {
    fn leave_retries_to_caller(&self) {
        self.retries.store(false, Ordering::Relaxed);
    }

    async fn apply(&self, batch: std::sync::Arc<Batch>) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let plan = plan::plan(&batch.mutations, &batch.events, bson::DateTime::now());
        let attempts = if self.retries.load(Ordering::Relaxed) {
            ATTEMPTS
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (e, why) = match exec::send(
                &self.db,
                &plan,
                &batch,
                self.write_concern.as_ref(),
                &self.location,
                &self.redact,
            )
            .await
            {
                Ok(()) => return Ok(()),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Unconfirmed(e)) => (e, "the server did not confirm"),
                Err(Failure::Transient(e)) => (self.err(e), "after a transient error"),
            };
            if attempt >= attempts {
                return Err(e);
            }
            let wait = backoff(attempt);
            tracing::warn!(store = %self.location, attempt, ?wait, error = %e, "retrying a batch {why}");
            tokio::time::sleep(wait).await;
        }
    }

    async fn spool_progress(&self, spool: &str) -> Result<Option<SpoolProgress>, StoreError> {
        let found = self
            .db
            .collection::<Document>(SPOOL_PROGRESS)
            .find_one(doc! {"_id": spool})
            .await
            .map_err(|e| self.err(e))?;
        Ok(found.and_then(|d| {
            let last_id = d.get("last_id").and_then(super::whole);
            let last_key = d.get_str("last_key").ok().map(str::to_owned);
            Some(SpoolProgress {
                spool: spool.to_owned(),
                through: d.get("through").and_then(super::whole)?,
                last: last_id.zip(last_key),
            })
        }))
    }

    async fn applied_events(&self, keys: &[String]) -> Result<KnownEvents, StoreError> {
        let found: Vec<Document> = self
            .db
            .collection::<Document>(APPLIED_EVENTS)
            .find(doc! {"_id": {"$in": keys}})
            .await
            .map_err(|e| self.err(e))?
            .try_collect()
            .await
            .map_err(|e| self.err(e))?;
        let mut known = KnownEvents::default();
        for d in &found {
            let Ok(key) = d.get_str("_id") else { continue };
            // A key written with its chunk's offset, before the rest of its batch, stands for a
            // pin; a command after the rest of the batch takes the offset away (see `exec::send`).
            match d.get(PIN_OFFSET).and_then(super::whole) {
                Some(offset) => {
                    known
                        .pinned
                        .insert(key.to_owned(), u64::try_from(offset).unwrap_or(0));
                }
                None => {
                    known.applied.insert(key.to_owned());
                }
            }
        }
        Ok(known)
    }

    async fn load_builds(
        &self,
        ids: &[String],
        log_window: usize,
    ) -> Result<Vec<BuildSnapshot>, StoreError> {
        let builds = self
            .find_docs(
                Collection::Builds,
                doc! {"_id": {"$in": ids}},
                doc! {"_id": 1},
                None,
            )
            .await?;
        if builds.is_empty() {
            return Ok(vec![]);
        }
        let found: Vec<&str> = builds
            .iter()
            .filter_map(|b| b.get_str("_id").ok())
            .collect();
        let steps = self
            .find_docs(
                Collection::Steps,
                doc! {"build": {"$in": &found}},
                doc! {"build": 1, "step": 1},
                None,
            )
            .await?;
        let mut out = Vec::new();
        for raw in builds {
            let id = raw.get_str("_id").unwrap_or_default().to_owned();
            let build: BuildDoc =
                bson::from_document(raw).map_err(|e| corrupt(Collection::Builds, &id, e))?;
            let mut snapshot = BuildSnapshot {
                build,
                steps: vec![],
                logs: vec![],
            };
            for raw in steps
                .iter()
                .filter(|s| s.get_str("build") == Ok(id.as_str()))
            {
                let step_id = raw.get_str("_id").unwrap_or_default().to_owned();
                let step = step_doc(raw.clone(), &step_id)?;
                for channel in Channel::ALL {
                    let len = step.log_len(channel);
                    if len == 0 {
                        continue;
                    }
                    let whole = step.whole_log(channel).map(str::as_bytes);
                    let (head, tail) = match whole {
                        Some(bytes) => (bytes.to_vec(), bytes.to_vec()),
                        None => (
                            self.gridfs_log(&step_id, channel, 0, log_window).await?,
                            self.gridfs_log(
                                &step_id,
                                channel,
                                len.saturating_sub(log_window as u64),
                                log_window,
                            )
                            .await?,
                        ),
                    };
                    snapshot.logs.push(LogSnapshot {
                        step_id: step_id.clone(),
                        channel,
                        len,
                        head,
                        tail,
                        inline_whole: whole.is_some(),
                    });
                }
                snapshot.steps.push(step);
            }
            out.push(snapshot);
        }
        Ok(out)
    }
}

#[async_trait]
impl Store for MongoStore {
    async fn init(&self) -> Result<(), StoreError> {
        prepare::prepare(self).await
    }

    async fn get(&self, collection: Collection, id: &str) -> Result<Option<Document>, StoreError> {
        self.coll(collection)
            .find_one(doc! {"_id": id})
            .await
            .map_err(|e| self.err(e))
    }

    async fn list(
        &self,
        collection: Collection,
        after: Option<&str>,
        n: usize,
    ) -> Result<Vec<Document>, StoreError> {
        let filter = after.map_or_else(Document::new, |a| doc! {"_id": {"$gt": a}});
        self.find_docs(collection, filter, doc! {"_id": 1}, limit(n))
            .await
    }

    async fn find_builds(
        &self,
        q: &BuildQuery,
        each: EachDoc,
    ) -> Result<Vec<Document>, StoreError> {
        self.find_each(
            Collection::Builds,
            builds_filter(q),
            doc! {"time_start": -1, "_id": -1},
            limit(q.limit),
            each,
        )
        .await
    }

    async fn build_steps(
        &self,
        build_id: &str,
        n: usize,
        each: EachDoc,
    ) -> Result<Vec<Document>, StoreError> {
        self.find_each(
            Collection::Steps,
            doc! {"build": build_id},
            doc! {"step": 1},
            limit(n),
            each,
        )
        .await
    }

    async fn find_commits(&self, q: &CommitQuery) -> Result<Vec<Document>, StoreError> {
        self.find_docs(
            Collection::Repository,
            commits_filter(q),
            doc! {"commiter_date": -1, "_id": -1},
            limit(q.limit),
        )
        .await
    }

    async fn log_len(&self, step_id: &str, channel: Channel) -> Result<Option<u64>, StoreError> {
        Ok(self.step(step_id).await?.map(|s| s.log_len(channel)))
    }

    async fn read_log(
        &self,
        step_id: &str,
        channel: Channel,
        offset: u64,
        max: usize,
    ) -> Result<Vec<u8>, StoreError> {
        let Some(step) = self.step(step_id).await? else {
            return Ok(vec![]);
        };
        match step.whole_log(channel) {
            Some(text) => {
                let mut out = Vec::new();
                // One piece from byte 0 leaves no hole.
                let _ = super::take_window(&mut out, 0, text.as_bytes(), offset, max);
                Ok(out)
            }
            None => self.gridfs_log(step_id, channel, offset, max).await,
        }
    }
}

/// The URI of a server that does not answer (a port where nothing listens), waiting
/// `selection_ms` for it at each try.
#[cfg(test)]
pub(crate) fn unreachable_uri(selection_ms: u64) -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    format!("mongodb://127.0.0.1:{port}/x?serverSelectionTimeoutMS={selection_ms}")
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "reads_tests.rs"]
mod reads_tests;
