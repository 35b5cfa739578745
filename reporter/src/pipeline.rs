//! The shell around the core: events → de-duplication → recovery of builds from the store → fold →
//! one batch per chunk → store. `ingest` reads a JSONL stream through it; the socket daemon feeds
//! it from its spool.

/// Sets of event keys and build ids, which come from clients: hashed with aHash, fast and keyed at
/// random per process.
type HashSet<T> = std::collections::HashSet<T, ahash::RandomState>;

use buildstore_schema::{Event, EventKind};
use chrono::Utc;
use tokio::io::AsyncBufRead;

use crate::core::{event_key, Batch, Core, Mutation, RuleError};
use crate::lines::{next_line, too_long, RawLine};
use crate::store::{Apply, StoreError};

/// Keys remembered in memory, per generation: past this the older generation is dropped (the
/// store still knows them all).
const RECENT_KEYS_MAX: usize = 500_000;

/// What became of one event of a chunk.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Applied,
    /// Its `event_id` was applied before (or earlier in the same chunk).
    Duplicate,
    Rejected(RuleError),
}

/// A chunk folded into one batch, not yet confirmed by the store.
#[derive(Debug)]
pub struct Prepared {
    pub batch: Batch,
    pub outcomes: Vec<Outcome>,
    /// The builds its events belong to.
    builds: HashSet<String>,
}

/// Folds chunks of events through the core into a store.
///
/// A chunk is applied in two halves, [`Applier::prepare`] and, once the store took its batch,
/// [`Applier::confirmed`], so that the next chunk can be folded while the store writes this
/// one. Meanwhile the events of the batch on its way count as applied (a resent copy in the next
/// chunk is a duplicate), and its builds stay in memory, since the store does not hold them yet.
pub struct Applier {
    core: Core,
    /// Keys of events applied (or on their way to the store), newest generation first.
    recent: [HashSet<String>; 2],
    /// Keys a generation holds before the older one is dropped.
    generation_max: usize,
}

impl Applier {
    pub fn new(core: Core) -> Applier {
        Applier {
            core,
            recent: Default::default(),
            generation_max: RECENT_KEYS_MAX,
        }
    }

    /// An applier that remembers `keys` event keys per generation, to test the turn of one.
    #[cfg(test)]
    fn with_key_memory(core: Core, keys: usize) -> Applier {
        Applier {
            generation_max: keys,
            ..Applier::new(core)
        }
    }

    fn is_recent(&self, key: &str) -> bool {
        self.recent.iter().any(|g| g.contains(key))
    }

    /// Applies `events` in order as one batch: [`Applier::prepare`], the store's write, then
    /// [`Applier::confirmed`] or [`Applier::forget`].
    pub async fn apply_chunk(
        &mut self,
        store: &dyn Apply,
        events: &[Event],
        stop_at_error: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut prepared = self.prepare(store, events, stop_at_error).await?;
        if let Err(e) = store
            .apply(std::mem::take(&mut prepared.batch).into())
            .await
        {
            self.forget();
            return Err(e);
        }
        Ok(self.confirmed(prepared, None))
    }

    /// Folds `events` in order into one batch for the store. With `stop_at_error`, the first
    /// rejected event ends the chunk: the outcomes then stop there and nothing after it is
    /// applied. Rejected events yield no mutations. The store is only read here; a read error
    /// leaves the applier as it was.
    ///
    /// A log chunk sent without an offset goes where its log ends, and the batch carries that
    /// offset as a pin ([`Batch::pins`]), which a store that may keep part of a batch (MongoDB)
    /// records before anything else. Folded again, after [`Applier::forget`] or by another
    /// process after a crash, the chunk goes to its pinned offset and is found already there,
    /// not appended twice. A chunk whose batch was never sent has no pin and goes where its log
    /// ends then.
    pub async fn prepare(
        &mut self,
        store: &dyn Apply,
        events: &[Event],
        stop_at_error: bool,
    ) -> Result<Prepared, StoreError> {
        // The older generation is dropped before the keys to ask the store about are chosen:
        // a key only it held must be asked about, not taken as new. (The keys of a batch still
        // on its way to the store are in the newer one, which stays.)
        if self.recent[0].len() + events.len() > self.generation_max {
            self.recent.swap(0, 1);
            self.recent[0].clear();
        }
        let keys: Vec<Option<String>> = events
            .iter()
            .map(|e| e.event_id.as_deref().map(|id| event_key(&e.master_id, id)))
            .collect();
        let unknown: Vec<String> = {
            let mut distinct: HashSet<&str> =
                HashSet::with_capacity_and_hasher(keys.len(), Default::default());
            keys.iter()
                .flatten()
                .filter(|k| !self.is_recent(k) && distinct.insert(k.as_str()))
                .cloned()
                .collect()
        };
        let known = if unknown.is_empty() {
            Default::default()
        } else {
            store.applied_events(&unknown).await?
        };

        let build_ids: Vec<Option<String>> = events.iter().map(Core::build_of).collect();
        let mut missing: Vec<String> = build_ids
            .iter()
            .flatten()
            .filter(|id| !self.core.has_build(id))
            .cloned()
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
        let mut builds = HashSet::default();
        for ((event, key), build) in events.iter().zip(keys).zip(&build_ids) {
            let mut pinned = None;
            if let Some(key) = &key {
                // Recent keys include those of this chunk applied so far.
                if self.is_recent(key) || known.applied.contains(key) {
                    outcomes.push(Outcome::Duplicate);
                    continue;
                }
                pinned = known.pinned.get(key).copied();
            }
            // A chunk without an offset that the store pinned, when a batch holding it began to
            // be written, goes where it went then. The event itself is left as it came: folded
            // again, it is pinned again from what the store then holds.
            let at_pin = pinned.and_then(|offset| at_offset(event, offset));
            match self.core.apply(at_pin.as_ref().unwrap_or(event), received) {
                Ok(mutations) => {
                    let pinned = pinned.or_else(|| folded_offset(event, &mutations));
                    batch.mutations.extend(mutations);
                    if let Some(key) = key {
                        if let Some(offset) = pinned {
                            batch.pins.push((key.clone(), offset));
                        }
                        // Counted as applied from now on: the batch is on its way to the store,
                        // and if the store does not take it, `forget` clears this.
                        self.recent[0].insert(key.clone());
                        batch.events.push(key);
                    }
                    if let Some(b) = build.as_ref().filter(|b| !builds.contains(*b)) {
                        builds.insert(b.clone());
                    }
                    outcomes.push(Outcome::Applied);
                }
                Err(e) => {
                    // A rejected event does not count as seen: a corrected resend has to apply.
                    if let (Some(key), Some(_)) = (key, pinned) {
                        batch.dropped_pins.push(key);
                    }
                    outcomes.push(Outcome::Rejected(e));
                    if stop_at_error {
                        break;
                    }
                }
            }
        }
        Ok(Prepared {
            batch,
            outcomes,
            builds,
        })
    }

    /// The store confirmed `prepared`'s batch: its finished builds may leave memory, except those
    /// that `next` (the batch prepared since, not yet confirmed) still needs.
    pub fn confirmed(&mut self, prepared: Prepared, next: Option<&Prepared>) -> Vec<Outcome> {
        self.core
            .evict_finished(|id| next.is_some_and(|n| n.builds.contains(id)));
        tracing::debug!(events = prepared.outcomes.len(), "batch applied");
        prepared.outcomes
    }

    /// The store did not take a batch: memory may be ahead of the store, so the applier forgets
    /// what it holds and every batch prepared since must be prepared again, from what the store
    /// holds. (SQLite applies a batch atomically: nothing of the failed one is there. A MongoDB
    /// store may hold part of it, which the next fold starts from.)
    pub fn forget(&mut self) {
        self.core.clear();
        for generation in &mut self.recent {
            generation.clear();
        }
    }
}

/// A log chunk sent without an offset, as if it had been sent with `offset`.
fn at_offset(event: &Event, offset: u64) -> Option<Event> {
    match &event.kind {
        EventKind::Log(log) if log.offset.is_none() => {
            let mut pinned = event.clone();
            if let EventKind::Log(log) = &mut pinned.kind {
                log.offset = Some(offset);
            }
            Some(pinned)
        }
        _ => None,
    }
}

/// The offset a log chunk sent without one was folded at.
fn folded_offset(event: &Event, mutations: &[Mutation]) -> Option<u64> {
    match &event.kind {
        EventKind::Log(log) if log.offset.is_none() => mutations.iter().find_map(|m| match m {
            Mutation::AppendLog { offset, .. } => Some(*offset),
            _ => None,
        }),
        _ => None,
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
    /// Longest line taken: a longer one is a bad line, read to its end and not kept (a file
    /// with no newline, such as /dev/zero by mistake, took all the memory there was).
    pub line_limit: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            keep_going: false,
            chunk_events: 1000,
            chunk_bytes: 16 << 20,
            line_limit: 16 << 20,
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

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A parsed line, or why it is not an event.
enum Line {
    Event(u64, Box<Event>),
    Bad(LineError),
}

/// How long input may be silent before what came so far is applied.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads and parses lines into chunks of at most `chunk_events` events or `chunk_bytes` bytes; a
/// bad line ends its chunk, and so does a pause of the input, which the chunk says (`true`; an
/// empty chunk says a pause after a chunk that went out whole).
/// Runs as its own task so that parsing overlaps the store's writes.
async fn read_chunks<R: AsyncBufRead + Unpin>(
    mut input: R,
    options: IngestOptions,
    out: tokio::sync::mpsc::Sender<std::io::Result<(Vec<Line>, bool)>>,
) {
    let chunk_events = options.chunk_events.max(1);
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    let mut number = 0u64;
    // A chunk went out whole (full, or ended by a bad line) with no pause after it: the
    // ingest loop folds it and waits for the next one, so a pause must still be told.
    let mut untold = false;
    loop {
        // Input that pauses, such as a pipe from a live master, has what came so far applied
        // before the wait, not once a chunk fills: the documents follow the master, and a run
        // interrupted during a pause has applied all it read, which a rerun could not read
        // again from a pipe. A pause in the middle of a line counts too.
        let read = next_line(&mut input, options.line_limit);
        tokio::pin!(read);
        // A line already buffered needs no timer. A reader that only refills its buffer (a
        // file, read on a blocking thread) answers within moments: only input still silent
        // after `PAUSE` is a pause, or a file would be cut into a chunk at every refill.
        let read = match futures::poll!(read.as_mut()) {
            std::task::Poll::Ready(read) => read,
            std::task::Poll::Pending => match tokio::time::timeout(PAUSE, read.as_mut()).await {
                Ok(read) => read,
                Err(_) => {
                    if !chunk.is_empty() || untold {
                        bytes = 0;
                        untold = false;
                        let paused = Ok((std::mem::take(&mut chunk), true));
                        if out.send(paused).await.is_err() {
                            return;
                        }
                    }
                    read.await
                }
            },
        };
        let raw = match read {
            Ok(raw) => raw,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let eof = raw.is_none();
        let mut close = eof;
        if let Some(raw) = raw {
            number += 1;
            let parsed = match &raw {
                RawLine::Line(buf) => {
                    // Editors on some systems start a text file with a UTF-8 byte-order mark.
                    let line = match buf.strip_prefix(UTF8_BOM) {
                        Some(rest) if number == 1 => rest,
                        _ => &buf[..],
                    };
                    bytes += buf.len() + 1;
                    parse_line(line)
                }
                RawLine::TooLong(len) => Err(too_long(*len, options.line_limit)),
            };
            match parsed {
                Ok(None) => {}
                Ok(Some(event)) => chunk.push(Line::Event(number, Box::new(event))),
                Err(message) => {
                    chunk.push(Line::Bad(LineError {
                        line: number,
                        message,
                    }));
                    close = true;
                }
            }
        }
        if (close || chunk.len() >= chunk_events || bytes >= options.chunk_bytes)
            && !chunk.is_empty()
        {
            bytes = 0;
            untold = true;
            if out
                .send(Ok((std::mem::take(&mut chunk), false)))
                .await
                .is_err()
            {
                return; // the consumer stopped early
            }
        }
        if eof {
            return;
        }
    }
}

/// Applies a JSONL event stream. Bad lines are reported through `on_error` with their line
/// number; the lines before a bad one stay applied. The store writes each chunk while the next
/// one is folded.
pub async fn ingest<R: AsyncBufRead + Unpin + Send + 'static>(
    store: &dyn Apply,
    applier: &mut Applier,
    input: R,
    options: &IngestOptions,
    on_error: &mut (dyn FnMut(&LineError) + Send),
) -> Result<IngestReport, IngestError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(read_chunks(input, options.clone(), tx));
    let mut report = IngestReport::default();
    let keep_going = options.keep_going;
    let result = async {
        // The chunk folded last: the store writes it while the next one is folded.
        let mut folded: Option<Folded> = None;
        // The input paused after the chunk folded last: that one is written now, with nothing
        // folded beside it, rather than once more input comes.
        let mut paused = false;
        loop {
            // A read error ends the run too, but only once what was read before is written.
            // Nor is more input waited for after a chunk that ends the run.
            let ends = folded.as_ref().is_some_and(|f| f.ends_run(keep_going));
            let (mut next, unreadable) = if std::mem::take(&mut paused) || ends {
                (Some(Folded::split(Vec::new())), None)
            } else {
                match rx.recv().await {
                    Some(Ok((chunk, pause))) => {
                        paused = pause;
                        (Some(Folded::split(chunk)), None)
                    }
                    Some(Err(e)) => (None, Some(e)),
                    None => (None, None),
                }
            };
            let fold_next = next.as_ref().is_some_and(|n| !n.events.is_empty()) && !ends;
            let write = async {
                match folded.as_mut().and_then(|f| f.prepared.as_mut()) {
                    Some(p) => store.apply(std::mem::take(&mut p.batch).into()).await,
                    None => Ok(()),
                }
            };
            let prepare = async {
                match &mut next {
                    Some(n) if fold_next => {
                        Some(applier.prepare(store, &n.events, !keep_going).await)
                    }
                    _ => None,
                }
            };
            let (written, prepared) = tokio::join!(write, prepare);
            if let Err(e) = written {
                applier.forget();
                return Err(e.into());
            }
            let prepared = prepared.transpose();
            if let Some(mut f) = folded.take() {
                let next = prepared.as_ref().ok().and_then(Option::as_ref);
                let outcomes = f
                    .prepared
                    .take()
                    .map(|p| applier.confirmed(p, next))
                    .unwrap_or_default();
                if !f.report(outcomes, &mut report, keep_going, on_error) {
                    report.stopped_early = true;
                    return Ok(());
                }
            }
            if let Some(e) = unreadable {
                return Err(e.into());
            }
            let Some(mut n) = next else {
                return Ok(());
            };
            n.prepared = prepared?;
            folded = Some(n);
        }
    }
    .await;
    // The reader may be waiting for input that comes much later, or never (a live pipe after
    // a bad line): it is not waited for.
    drop(rx);
    reader.abort();
    let _ = reader.await;
    result.map(|()| report)
}

/// A chunk of input: its events (folded into a batch once `prepared`), their line numbers, and
/// the bad line that ended it, if one did.
struct Folded {
    events: Vec<Event>,
    lines: Vec<u64>,
    bad: Option<LineError>,
    prepared: Option<Prepared>,
}

impl Folded {
    fn split(chunk: Vec<Line>) -> Folded {
        let mut f = Folded {
            events: Vec::with_capacity(chunk.len()),
            lines: Vec::with_capacity(chunk.len()),
            bad: None,
            prepared: None,
        };
        for item in chunk {
            match item {
                Line::Event(n, e) => {
                    f.lines.push(n);
                    f.events.push(*e);
                }
                Line::Bad(e) => f.bad = Some(e),
            }
        }
        f
    }

    /// Whether the run stops after this chunk: it holds a bad line or a rejected event.
    fn ends_run(&self, keep_going: bool) -> bool {
        let rejected = self
            .prepared
            .as_ref()
            .is_some_and(|p| p.outcomes.iter().any(|o| matches!(o, Outcome::Rejected(_))));
        !keep_going && (self.bad.is_some() || rejected)
    }

    /// Counts the chunk's `outcomes` (the store has it) and reports its errors; false when the
    /// run stops here.
    fn report(
        self,
        outcomes: Vec<Outcome>,
        report: &mut IngestReport,
        keep_going: bool,
        on_error: &mut (dyn FnMut(&LineError) + Send),
    ) -> bool {
        for (outcome, line) in outcomes.into_iter().zip(&self.lines) {
            match outcome {
                Outcome::Applied => report.applied += 1,
                Outcome::Duplicate => report.duplicates += 1,
                Outcome::Rejected(e) => {
                    report.rejected += 1;
                    on_error(&LineError {
                        line: *line,
                        message: e.to_string(),
                    });
                    if !keep_going {
                        return false;
                    }
                }
            }
        }
        if let Some(e) = self.bad {
            report.rejected += 1;
            on_error(&e);
            if !keep_going {
                return false;
            }
        }
        true
    }
}

/// One line of input: `None` for a blank line.
fn parse_line(raw: &[u8]) -> Result<Option<Event>, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let text = buildstore_schema::json_line::trim(text);
    if text.is_empty() {
        return Ok(None);
    }
    Event::parse(text).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
#[path = "pipeline_tests.rs"]
mod tests;
