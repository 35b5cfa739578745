//! The applier side of the daemon: takes events from the spool in order (handed over in memory
//! while it keeps up, read from the file otherwise), folds them through the core into batches,
//! writes them to the store, and releases them from the spool only once the store confirmed
//! them. While the store is down it retries with capped exponential backoff and the spool keeps
//! growing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buildstore_schema::Event;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::grace::Grace;
use crate::core::{event_key, Batch, SpoolProgress};
use crate::pipeline::{Applier, Outcome, Prepared};
use crate::spool::{blocking, Handoff, Spool, SpoolError};
use crate::store::{Apply, StoreError};

/// Most events per batch. Big enough that a store write carries a backlog away in few
/// transactions (a document touched by many events of a batch is written once).
const BATCH_EVENTS: usize = 4000;
/// Most bytes of lines per batch read back from the spool file. A spool may hold a gigabyte
/// after an outage, and each line is held several times over while it is folded and written
/// (as its event, its mutations, the store's statements), two batches at once.
const BATCH_BYTES: usize = 32 << 20;
/// The longest wait between tries at a store that keeps failing.
const MAX_BACK_OFF: Duration = Duration::from_secs(30);
/// How long a batch may wait for more events when the spool is idle.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Counters the daemon reports.
#[derive(Default)]
pub struct DrainCounters {
    pub applied: AtomicU64,
    pub duplicates: AtomicU64,
    pub rejected: AtomicU64,
    pub batches: AtomicU64,
    pub store_errors: AtomicU64,
    /// Store errors since the last write the store took: an outage, not a passing election.
    pub store_errors_in_a_row: AtomicU64,
    /// The id of the last spooled event the store confirmed.
    confirmed: AtomicI64,
    /// Wakes those waiting for `confirmed` to move.
    moved: tokio::sync::Notify,
    /// The drain has ended (stopped, or failed): `confirmed` moves no further.
    ended: std::sync::atomic::AtomicBool,
    pub last_error: std::sync::Mutex<Option<String>>,
}

impl DrainCounters {
    /// The store has every spooled event through `through`.
    fn confirm(&self, through: i64) {
        self.confirmed.fetch_max(through, Ordering::Release);
        self.moved.notify_waiters();
    }

    /// Counts a failed write of the drain, and returns how many failed in a row.
    pub fn store_failed(&self, e: &StoreError) -> u64 {
        self.store_error(e);
        self.store_errors_in_a_row.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a store error and keeps it as the last one. Only the drain's own writes count in a
    /// row: they set its back-off, and say whether the store takes writes.
    pub fn store_error(&self, e: &StoreError) {
        self.store_errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e.to_string());
        }
    }

    /// Returns true once the store has confirmed every spooled event up to `id`, or false if
    /// the drain ended first.
    pub async fn confirmed_through(&self, id: i64) -> bool {
        loop {
            // Registered before the check, so a confirmation in between is not missed.
            let moved = self.moved.notified();
            tokio::pin!(moved);
            moved.as_mut().enable();
            if self.confirmed.load(Ordering::Acquire) >= id {
                return true;
            }
            if self.ended.load(Ordering::Acquire) {
                return false;
            }
            moved.await;
        }
    }

    /// Marks the drain ended, however it ends (a panic too), when dropped.
    pub fn end_guard(self: &Arc<Self>) -> impl Drop + Send + 'static {
        struct Ended(Arc<DrainCounters>);
        impl Drop for Ended {
            fn drop(&mut self) {
                self.0.ended.store(true, Ordering::Release);
                self.0.moved.notify_waiters();
            }
        }
        Ended(Arc::clone(self))
    }
}

/// Events taken from the spool and not yet confirmed by the store.
struct Unconfirmed {
    /// The id of the last spooled event they cover (an unreadable one skipped included).
    through: i64,
    events: Vec<Event>,
    /// The spool id and key of the last of `events` that has a key.
    last: Option<(i64, String)>,
}

/// A batch the store is writing, and what it was made of.
struct InFlight {
    taken: Unconfirmed,
    prepared: Prepared,
    /// The batch of `prepared`, shared with the write and kept to be sent again.
    batch: Arc<Batch>,
    write: JoinHandle<Result<(), StoreError>>,
}

/// Runs until `stop` is set and then drains what the spool holds for up to `grace`.
///
/// Two batches are under way at once: while the store writes one, the next is folded. Events
/// move through `queue` (taken from the spool), `ready` (folded into a batch) and `flight` (being
/// written), in spool order. When a write fails, the same batch is sent again after a pause, and
/// the one folded on top of it waits: a store without transactions may hold part of the failed
/// batch, and only the same batch again is sure to complete it without doubling any of it. Only
/// when the store says the batch does not fit what it holds does the applier forget what it
/// folded, and both batches go back to the front of the queue, to be folded again from the store.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    spool: Spool,
    handoff: Arc<Handoff>,
    store: Arc<dyn Apply>,
    mut applier: Applier,
    held: Arc<AtomicU64>,
    counters: Arc<DrainCounters>,
    stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut grace = Grace::new(stop, grace);
    // Events left by an earlier run come first, from the file. The id is taken before the look:
    // a group the writer commits meanwhile has ids from it on, so an empty spool cannot make the
    // drain start past that group.
    let start = spool.next_id();
    let s = spool.clone();
    let oldest = match blocking(move || s.oldest()).await {
        Ok(oldest) => oldest.unwrap_or(start),
        Err(e) => {
            tracing::error!("reading the spool failed; starting from its first id: {e}");
            0
        }
    };
    // What an earlier run left is what `flush` waits for first: everything before it is in.
    counters.confirm(oldest - 1);
    let Some((mut next, name)) =
        resume_at_start(&spool, &store, &held, &counters, &mut grace, oldest).await
    else {
        return;
    };
    let mut queue: VecDeque<Unconfirmed> = VecDeque::new();
    let mut ready: Option<(Unconfirmed, Prepared)> = None;
    // A batch whose write failed, to be sent again as it is.
    let mut again: Option<(Unconfirmed, Prepared, Arc<Batch>)> = None;
    loop {
        if must_end(&spool, &mut grace) {
            return;
        }
        // The store is free: it writes what failed before, or else what is folded.
        let flight = match again.take() {
            Some((taken, prepared, batch)) => Some(InFlight::start(&store, taken, prepared, batch)),
            None => ready.take().map(|(taken, mut prepared)| {
                let batch = Arc::new(std::mem::take(&mut prepared.batch));
                InFlight::start(&store, taken, prepared, batch)
            }),
        };
        // Meanwhile the next events are folded, unless they are already.
        let mut failed = None;
        if ready.is_none() {
            if queue.is_empty() {
                if let Some(taken) = take(&spool, &handoff, next).await {
                    next = taken.through + 1;
                    queue.push_back(taken);
                }
            }
            if let Some(taken) = queue.pop_front() {
                // Folding reads the store: one that does not answer does not hold the stop up
                // past the grace period either.
                let folding = applier.prepare(store.as_ref(), &taken.events, false);
                let Some(prepared) = grace.within(folding).await else {
                    return;
                };
                match prepared {
                    Ok(mut prepared) => {
                        // Recorded with the batch: if the process stops before the spool is
                        // released, the next start knows the store has these events.
                        prepared.batch.progress = Some(SpoolProgress {
                            spool: name.clone(),
                            through: taken.through,
                            last: taken.last.clone(),
                        });
                        ready = Some((taken, prepared));
                    }
                    Err(e) => {
                        queue.push_front(taken);
                        failed = Some(e);
                    }
                }
            }
        }
        if let Some(f) = flight {
            let InFlight {
                taken,
                prepared,
                batch,
                mut write,
            } = f;
            // A store that hangs on a write (a lock held by another program) does not hold the
            // stop past the grace period. The write is dropped unconfirmed: its events stay in
            // the spool. If the store takes it after all, the next start finds the batch's
            // progress there and releases them; if not, it folds them again.
            let Some(written) = grace.within(&mut write).await else {
                return;
            };
            match written.unwrap_or_else(|e| Err(StoreError::Task(e.to_string()))) {
                Ok(()) => {
                    counters.store_errors_in_a_row.store(0, Ordering::Relaxed);
                    let next = ready.as_ref().map(|(_, p)| p);
                    let outcomes = applier.confirmed(prepared, next);
                    let through = taken.through;
                    // Freeing thousands of events and mutations takes a while: not on the
                    // drain's path.
                    let events = taken.events;
                    confirm(&spool, &held, &counters, through, outcomes, &events).await;
                    tokio::task::spawn_blocking(move || drop((batch, events)));
                }
                Err(e) if !e.batch_does_not_fit() => {
                    again = Some((taken, prepared, batch));
                    failed = Some(e);
                }
                Err(e) => {
                    // What was folded since was folded on top of it: both are folded again.
                    applier.forget();
                    if let Some((taken, _)) = ready.take() {
                        queue.push_front(taken);
                    }
                    queue.push_front(taken);
                    failed = Some(e);
                }
            }
        } else if ready.is_none() && failed.is_none() {
            if grace.stopping() && handoff.is_closed() && next >= spool.next_id() {
                return; // drained
            }
            grace.idle(handoff.ready(), IDLE_POLL).await;
            continue;
        }
        // Only a write the store takes ends a run of failures: a batch folded again after a
        // failed write says nothing about the store's health.
        if let Some(e) = failed {
            back_off(&counters, &e, &mut grace).await;
        }
    }
}

/// Whether the drain must end now: the engine is gone (a stop that cannot wait), or a stop has
/// lasted the grace period. The spool keeps the rest, applied at the next start.
fn must_end(spool: &Spool, grace: &mut Grace) -> bool {
    if grace.engine_gone() {
        return true;
    }
    if !grace.over_now() {
        return false;
    }
    let left = spool.depth().events;
    if left > 0 {
        tracing::warn!(
            left,
            "grace period over: what is left in the spool is applied at the next start"
        );
    }
    true
}

/// Asks the store how far it has this spool's events, and returns the spool id to fold from and
/// the spool's name in force (see [`resume`]); asks again while the store fails, until it
/// answers or the drain must end (None).
async fn resume_at_start(
    spool: &Spool,
    store: &Arc<dyn Apply>,
    held: &AtomicU64,
    counters: &DrainCounters,
    grace: &mut Grace,
    next: i64,
) -> Option<(i64, String)> {
    loop {
        if must_end(spool, grace) {
            return None;
        }
        let uid = spool.uid().to_string();
        match grace.within(store.spool_progress(&uid)).await? {
            Ok(progress) => match resume(spool, held, counters, progress, next, uid).await {
                Ok(resumed) => return Some(resumed),
                Err(e) => {
                    tracing::error!("resuming the spool (reading it, or giving it a new name) failed, trying again in a second: {e}");
                    grace.pause(Duration::from_secs(1)).await;
                }
            },
            Err(e) => back_off(counters, &e, grace).await,
        }
    }
}

impl InFlight {
    /// Hands `batch`, folded as `prepared`, to the store, on a task of its own.
    fn start(
        store: &Arc<dyn Apply>,
        taken: Unconfirmed,
        prepared: Prepared,
        batch: Arc<Batch>,
    ) -> InFlight {
        let store = Arc::clone(store);
        let shared = Arc::clone(&batch);
        InFlight {
            taken,
            prepared,
            batch,
            write: tokio::spawn(async move { store.apply(shared).await }),
        }
    }
}

/// Counts a store error and waits before the next try, longer for each error in a row up to
/// 30 s, or until the stop comes, but never past the grace period.
async fn back_off(counters: &DrainCounters, e: &StoreError, grace: &mut Grace) {
    let failures = counters.store_failed(e);
    let wait = Duration::from_millis(100u64 << failures.min(9)).min(MAX_BACK_OFF);
    tracing::warn!(error = %e, ?wait, "store failed; the events stay in the spool");
    grace.pause(wait).await;
}

/// The store confirmed the events through spool id `through`: they leave the spool, and then
/// they count. `outcomes` are those of `events`, in order.
async fn confirm(
    spool: &Spool,
    held: &AtomicU64,
    counters: &DrainCounters,
    through: i64,
    outcomes: Vec<Outcome>,
    events: &[Event],
) {
    release(spool, held, through).await;
    // Counted once the spool is released, so that whoever sees an event counted as applied also
    // sees it gone from the spool's depth.
    counters.batches.fetch_add(1, Ordering::Relaxed);
    for (o, event) in outcomes.into_iter().zip(events) {
        match o {
            Outcome::Applied => counters.applied.fetch_add(1, Ordering::Relaxed),
            Outcome::Duplicate => counters.duplicates.fetch_add(1, Ordering::Relaxed),
            Outcome::Rejected(e) => {
                // It was acknowledged long before, often under an id the daemon gave it: the
                // sender needs these to find it.
                tracing::warn!(
                    error = %crate::clip::clipped(&e.to_string()),
                    master_id = %event.master_id,
                    event_id = event.event_id.as_deref().unwrap_or(""),
                    r#type = event.type_name(),
                    "event rejected by the rules"
                );
                counters.rejected.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
    counters.confirm(through);
}

/// Releases the spooled events through `through`, which the store has. Not released (an error,
/// logged), the next release covers them, since it covers every id below its own; or else the
/// next start finds the store's progress and releases them then, without folding them again.
async fn release(spool: &Spool, held: &AtomicU64, through: i64) {
    let s = spool.clone();
    match blocking(move || s.release(through)).await {
        Ok(freed) => crate::spool::subtract(held, freed),
        Err(e) => tracing::error!(error = %e, "releasing spooled events failed"),
    }
}

/// Takes the progress the store recorded under the spool's `name`, and returns the spool id to
/// fold from and the name to record progress under from now on. When the store has events the
/// spool still holds (an earlier run stopped between the store's commit of a batch
/// and the spool's release), they are released now rather than folded again, which could judge
/// an event the rules refused a second time, and differently (see `Spool::release`). That
/// progress must be of this very file, though: a copy of it (restored from a backup, or copied
/// with a machine's image and run beside it) has the same name and gives out the same ids to
/// other events. So the spool must hold, at the id the progress names, the event the store
/// recorded there, and the progress must be below any id this run gave out. If not, the spool
/// takes a new name, and its events are folded as before the store recorded anything: those the
/// store has are skipped as applied.
async fn resume(
    spool: &Spool,
    held: &AtomicU64,
    counters: &DrainCounters,
    progress: Option<SpoolProgress>,
    next: i64,
    name: String,
) -> Result<(i64, String), SpoolError> {
    let Some(p) = progress.filter(|p| p.through >= next) else {
        return Ok((next, name));
    };
    if p.through < spool.opened_next() && holds(spool, &p).await? {
        tracing::info!(
            through = p.through,
            "the store already has the spool's events through this id: released without \
             folding them again"
        );
        release(spool, held, p.through).await;
        counters.confirm(p.through);
        return Ok((p.through + 1, name));
    }
    let s = spool.clone();
    let renamed = blocking(move || s.rename()).await?;
    tracing::warn!(
        through = p.through,
        spool = %p.spool,
        renamed = %renamed,
        "the store's progress under this spool's name is not of this file's events (a copy of \
         the spool?): the spool takes a new name, and its events are folded, those the store has \
         skipped as applied"
    );
    Ok((next, renamed))
}

/// Whether the spool holds, at the id the progress names, the event the store recorded there.
async fn holds(spool: &Spool, p: &SpoolProgress) -> Result<bool, SpoolError> {
    let Some((id, key)) = p.last.clone() else {
        return Ok(false);
    };
    let s = spool.clone();
    let found = blocking(move || s.read(id, 1, usize::MAX)).await?;
    let here = found
        .first()
        .filter(|f| f.id == id)
        .and_then(|f| Event::from_spooled(&f.line).ok())
        .and_then(|e| Some(event_key(&e.master_id, e.event_id.as_deref()?)));
    Ok(here == Some(key))
}

/// The next events from id `next` on: from memory when the writer handed them over, else from
/// the file (after a restart, or when the handoff was full).
async fn take(spool: &Spool, handoff: &Handoff, next: i64) -> Option<Unconfirmed> {
    let handed = handoff.take(next, BATCH_EVENTS);
    if let Some(&(through, _)) = handed.last() {
        let last = last_key(handed.iter().map(|(id, e)| (*id, e)));
        return Some(Unconfirmed {
            through,
            events: handed.into_iter().map(|(_, e)| e).collect(),
            last,
        });
    }
    if next >= spool.next_id() {
        return None;
    }
    let s = spool.clone();
    let spooled = match blocking(move || s.read(next, BATCH_EVENTS, BATCH_BYTES)).await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("reading the spool failed, trying again in a second: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return None;
        }
    };
    let through = spooled.last()?.id;
    // Lines were validated before they were spooled; one that no longer parses is reported and
    // skipped rather than blocking everything behind it (see `Event::from_spooled` for how
    // they are read).
    let read: Vec<(i64, Event)> = spooled
        .iter()
        .filter_map(|p| match Event::from_spooled(&p.line) {
            Ok(e) => Some((p.id, e)),
            Err(e) => {
                tracing::error!(spool_id = p.id, error = %e, "unreadable spooled event skipped");
                None
            }
        })
        .collect();
    let last = last_key(read.iter().map(|(id, e)| (*id, e)));
    Some(Unconfirmed {
        through,
        events: read.into_iter().map(|(_, e)| e).collect(),
        last,
    })
}

/// The spool id and key of the last of `events` that has a key (every spooled event has one:
/// the daemon gives one to an event sent without).
fn last_key<'a>(
    events: impl DoubleEndedIterator<Item = (i64, &'a Event)>,
) -> Option<(i64, String)> {
    events.rev().find_map(|(id, e)| {
        let event_id = e.event_id.as_deref()?;
        Some((id, event_key(&e.master_id, event_id)))
    })
}

#[cfg(test)]
#[path = "drain_tests.rs"]
mod tests;
