//! The shell around the core: events → de-duplication → recovery of builds from the store → fold →
//! one batch per chunk → store. `ingest` reads a JSONL stream through it; the socket daemon feeds
//! it from its spool.

/// Sets of event keys and build ids, which come from clients: hashed with aHash, fast and keyed at
/// random per process.
type HashSet<T> = std::collections::HashSet<T, ahash::RandomState>;

use buildstore_schema::{Event, EventKind};
use chrono::Utc;

use crate::core::{event_key, Batch, Core, Mutation, RuleError};
use crate::store::{Apply, StoreError};

mod stream;
pub use stream::{ingest, IngestError, IngestOptions, IngestReport, LineError};

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

#[cfg(test)]
mod tests;
