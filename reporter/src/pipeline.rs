//! The shell around the core: events → de-duplication → recovery of builds from the store → fold →
//! one batch per chunk → store. `ingest` reads a JSONL stream through it; the socket daemon feeds
//! it from its spool.

use std::collections::HashSet;

use buildstore_schema::Event;
use chrono::Utc;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

use crate::core::{event_key, Batch, Core, RuleError};
use crate::store::{Store, StoreError};

/// Past this many remembered keys the in-memory set is dropped; the store still knows them all.
const RECENT_KEYS_MAX: usize = 1_000_000;

/// What became of one event of a chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    /// Its `event_id` was applied before (or earlier in the same chunk).
    Duplicate,
    Rejected(RuleError),
}

/// Folds chunks of events through the core into a store.
pub struct Applier {
    core: Core,
    recent: HashSet<String>,
}

impl Applier {
    pub fn new(core: Core) -> Applier {
        Applier {
            core,
            recent: HashSet::new(),
        }
    }

    /// Applies `events` in order as one batch. With `stop_at_error`, the first rejected event ends
    /// the chunk: the outcomes then stop there and nothing after it is applied. The store is left
    /// untouched by rejected events. On a store error nothing of the chunk is applied (the store
    /// applies batches atomically) and the core forgets what it had in memory, so a retry starts
    /// from what the store holds.
    pub async fn apply_chunk(
        &mut self,
        store: &dyn Store,
        events: &[Event],
        stop_at_error: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let keys: Vec<Option<String>> = events
            .iter()
            .map(|e| e.event_id.as_deref().map(|id| event_key(&e.master_id, id)))
            .collect();
        let unknown: Vec<String> = keys
            .iter()
            .flatten()
            .filter(|k| !self.recent.contains(*k))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let applied_before = if unknown.is_empty() {
            HashSet::new()
        } else {
            store.applied_events(&unknown).await?
        };

        let mut missing: Vec<String> = events
            .iter()
            .filter_map(|e| self.core.missing_build(e))
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            for snapshot in store
                .load_builds(&missing, self.core.config().inline_limit)
                .await?
            {
                self.core.restore(&snapshot);
            }
        }

        let received = Utc::now();
        let mut batch = Batch::default();
        let mut outcomes = Vec::with_capacity(events.len());
        let mut in_chunk: HashSet<&str> = HashSet::new();
        for (event, key) in events.iter().zip(&keys) {
            if let Some(key) = key {
                if self.recent.contains(key)
                    || applied_before.contains(key)
                    || !in_chunk.insert(key)
                {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
            }
            match self.core.apply(event, received) {
                Ok(mutations) => {
                    batch.mutations.extend(mutations);
                    batch.events.extend(key.iter().cloned());
                    outcomes.push(Outcome::Applied);
                }
                Err(e) => {
                    // A rejected event must not count as seen: a corrected resend has to apply.
                    if let Some(key) = key {
                        in_chunk.remove(key.as_str());
                    }
                    outcomes.push(Outcome::Rejected(e));
                    if stop_at_error {
                        break;
                    }
                }
            }
        }

        if let Err(e) = store.apply(&batch).await {
            self.core.clear();
            return Err(e);
        }
        if self.recent.len() + batch.events.len() > RECENT_KEYS_MAX {
            self.recent.clear();
        }
        self.recent.extend(batch.events);
        self.core.evict_finished();
        tracing::debug!(
            events = outcomes.len(),
            mutations = batch.mutations.len(),
            "batch applied"
        );
        Ok(outcomes)
    }
}

/// Options of [`ingest`].
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Carry on after a bad line instead of stopping there.
    pub keep_going: bool,
    /// Most events per batch.
    pub chunk_events: usize,
    /// Most bytes of event text per batch.
    pub chunk_bytes: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            keep_going: false,
            chunk_events: 1000,
            chunk_bytes: 16 << 20,
        }
    }
}

/// A rejected input line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: u64,
    pub message: String,
}

/// What an ingest run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub lines: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// True when a bad line stopped the run (without `keep_going`).
    pub stopped_early: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("reading events: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Applies a JSONL event stream. Bad lines are reported through `on_error` with their line
/// number; the lines before a bad one stay applied.
pub async fn ingest<R: AsyncBufRead + Unpin>(
    store: &dyn Store,
    applier: &mut Applier,
    mut input: R,
    options: &IngestOptions,
    on_error: &mut (dyn FnMut(&LineError) + Send),
) -> Result<IngestReport, IngestError> {
    let mut report = IngestReport::default();
    let mut buf = Vec::new();
    let mut chunk: Vec<Event> = Vec::new();
    let mut chunk_lines: Vec<u64> = Vec::new();
    let mut chunk_bytes = 0usize;
    loop {
        buf.clear();
        let n = input.read_until(b'\n', &mut buf).await?;
        let eof = n == 0;
        let mut bad: Option<LineError> = None;
        if !eof {
            report.lines += 1;
            match parse_line(&buf) {
                Ok(None) => {}
                Ok(Some(event)) => {
                    chunk_bytes += buf.len();
                    chunk.push(event);
                    chunk_lines.push(report.lines);
                }
                Err(message) => {
                    bad = Some(LineError {
                        line: report.lines,
                        message,
                    })
                }
            }
        }
        let full = chunk.len() >= options.chunk_events || chunk_bytes >= options.chunk_bytes;
        let must_stop = bad.is_some() && !options.keep_going;
        // A bad line closes the chunk so that errors are reported in line order.
        if (eof || full || bad.is_some()) && !chunk.is_empty() {
            let outcomes = applier
                .apply_chunk(store, &chunk, !options.keep_going)
                .await?;
            for (outcome, line) in outcomes.into_iter().zip(&chunk_lines) {
                match outcome {
                    Outcome::Applied => report.applied += 1,
                    Outcome::Duplicate => report.duplicates += 1,
                    Outcome::Rejected(e) => {
                        report.rejected += 1;
                        on_error(&LineError {
                            line: *line,
                            message: e.to_string(),
                        });
                        if !options.keep_going {
                            report.stopped_early = true;
                            return Ok(report);
                        }
                    }
                }
            }
            chunk.clear();
            chunk_lines.clear();
            chunk_bytes = 0;
        }
        if let Some(e) = bad {
            report.rejected += 1;
            on_error(&e);
            if must_stop {
                report.stopped_early = true;
                return Ok(report);
            }
        }
        if eof {
            return Ok(report);
        }
    }
}

/// One line of input: `None` for a blank line.
fn parse_line(raw: &[u8]) -> Result<Option<Event>, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    Event::parse(text).map(Some).map_err(|e| e.to_string())
}
