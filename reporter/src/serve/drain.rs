//! The applier side of the daemon: takes events from the spool in order (handed over in memory
//! while it keeps up, read from the file otherwise), folds them through the core into batches,
//! writes them to the store, and releases them from the spool only once the store confirmed them. While the store is down it retries with capped exponential backoff and
//! the spool keeps growing.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildstore_schema::Event;
use tokio::sync::watch;

use crate::pipeline::{Applier, Outcome};
use crate::spool::{Handoff, Spool};
use crate::store::Store;

/// Most events per batch. Big enough that a store write carries a backlog away in few
/// transactions (a document touched by many events of a batch is written once).
const BATCH_EVENTS: usize = 4000;
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
    /// The id of the last spooled event the store confirmed.
    pub confirmed: AtomicI64,
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// Events taken from the spool and not yet confirmed by the store.
struct Unconfirmed {
    /// The id of the last spooled event they cover (an unreadable one skipped included).
    through: i64,
    events: Vec<Event>,
}

/// Runs until `stop` is set and then drains what the spool holds for up to `grace`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    spool: Spool,
    handoff: Arc<Handoff>,
    store: Arc<dyn Store>,
    mut applier: Applier,
    held: Arc<AtomicU64>,
    counters: Arc<DrainCounters>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut deadline: Option<Instant> = None;
    let mut failures = 0u32;
    // Events left by an earlier run come first, from the file. The id is taken before the look:
    // a group the writer commits meanwhile has ids from it on, so an empty spool cannot make the
    // drain start past that group.
    let start = spool.next_id();
    let s = spool.clone();
    let mut next = match tokio::task::spawn_blocking(move || s.oldest()).await {
        Ok(Ok(oldest)) => oldest.unwrap_or(start),
        other => {
            tracing::error!(
                ?other,
                "reading the spool failed; starting from its first id"
            );
            0
        }
    };
    let mut pending: Option<Unconfirmed> = None;
    loop {
        if deadline.is_none() && *stop.borrow() {
            deadline = Some(Instant::now() + grace);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::warn!(
                "grace period over: what is left in the spool is applied at the next start"
            );
            return;
        }
        if pending.is_none() {
            pending = take(&spool, &handoff, next).await;
        }
        let Some(batch) = pending.take() else {
            if deadline.is_some() && handoff.is_closed() && next >= spool.next_id() {
                return; // drained
            }
            tokio::select! {
                _ = handoff.ready() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        match applier
            .apply_chunk(store.as_ref(), &batch.events, false)
            .await
        {
            Ok(outcomes) => {
                failures = 0;
                next = batch.through + 1;
                let s = spool.clone();
                match tokio::task::spawn_blocking(move || s.release(batch.through)).await {
                    Ok(Ok(freed)) => {
                        held.fetch_sub(freed.min(held.load(Ordering::Relaxed)), Ordering::Relaxed);
                    }
                    // Not released: those events are applied again later, which changes nothing.
                    other => tracing::error!(?other, "releasing spooled events failed"),
                }
                // Counted once the spool is released, so that whoever sees an event counted as
                // applied also sees it gone from the spool's depth.
                counters.batches.fetch_add(1, Ordering::Relaxed);
                for o in outcomes {
                    match o {
                        Outcome::Applied => counters.applied.fetch_add(1, Ordering::Relaxed),
                        Outcome::Duplicate => counters.duplicates.fetch_add(1, Ordering::Relaxed),
                        Outcome::Rejected(e) => {
                            tracing::warn!(error = %e, "event rejected by the rules");
                            counters.rejected.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                counters.confirmed.store(batch.through, Ordering::Release);
            }
            Err(e) => {
                failures += 1;
                counters.store_errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut last) = counters.last_error.lock() {
                    *last = Some(e.to_string());
                }
                let wait =
                    Duration::from_millis(100u64 << failures.min(9)).min(Duration::from_secs(30));
                tracing::warn!(error = %e, ?wait, "store write failed; the events stay in the spool");
                pending = Some(batch); // the same events again, once the store is back
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// The next events from id `next` on: from memory when the writer handed them over, else from
/// the file (after a restart, or when the handoff was full).
async fn take(spool: &Spool, handoff: &Handoff, next: i64) -> Option<Unconfirmed> {
    let handed = handoff.take(next, BATCH_EVENTS);
    if let Some(&(through, _)) = handed.last() {
        return Some(Unconfirmed {
            through,
            events: handed.into_iter().map(|(_, e)| e).collect(),
        });
    }
    if next >= spool.next_id() {
        return None;
    }
    let s = spool.clone();
    let spooled = match tokio::task::spawn_blocking(move || s.read(next, BATCH_EVENTS)).await {
        Ok(Ok(p)) => p,
        other => {
            tracing::error!(?other, "reading the spool failed");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return None;
        }
    };
    let through = spooled.last()?.id;
    // Lines were validated before they were spooled; one that no longer parses is reported and
    // skipped rather than blocking everything behind it.
    let events = spooled
        .iter()
        .filter_map(|p| match Event::parse(&p.line) {
            Ok(e) => Some(e),
            Err(e) => {
                tracing::error!(spool_id = p.id, error = %e, "unreadable spooled event skipped");
                None
            }
        })
        .collect();
    Some(Unconfirmed { through, events })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_are_taken_in_order_from_memory_and_from_the_file_around_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let handoff = Handoff::new(usize::MAX);
        let lines = crate::synth::lines(&crate::synth::Shape {
            events: 40,
            ..Default::default()
        });
        let events: Vec<Event> = lines.iter().map(|l| Event::parse(l).unwrap()).collect();
        let hand = |from: usize, to: usize| {
            events[from..to]
                .iter()
                .zip(&lines[from..to])
                .map(|(e, l)| (e.clone(), l.len()))
                .collect::<Vec<_>>()
        };
        let n = lines.len();
        // In the file only, as after a restart; then handed over too; then left out of memory
        // (past the handoff's limit); then handed over again.
        let first = spool.append(&lines[..10]).unwrap();
        let second = spool.append(&lines[10..20]).unwrap();
        handoff.push(second, hand(10, 20));
        spool.append(&lines[20..30]).unwrap();
        let fourth = spool.append(&lines[30..]).unwrap();
        handoff.push(fourth, hand(30, n));

        let mut next = first;
        let mut taken = Vec::new();
        while let Some(t) = take(&spool, &handoff, next).await {
            assert!(t.through >= next);
            next = t.through + 1;
            taken.extend(t.events);
        }
        assert_eq!(taken, events, "every event once, in spool order");
        assert_eq!(next, spool.next_id());
    }
}
