//! The applier side of the daemon: takes events from the spool in order, folds them through the
//! core into batches, writes them to the store, and releases them from the spool only once the
//! store confirmed them. While the store is down it retries with capped exponential backoff and
//! the spool keeps growing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use buildstore_schema::Event;
use tokio::sync::watch;

use crate::pipeline::{Applier, Outcome};
use crate::spool::Spool;
use crate::store::Store;

/// Most events per batch.
const BATCH_EVENTS: usize = 1000;
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
    pub last_error: std::sync::Mutex<Option<String>>,
}

/// Runs until `stop` is set and then drains what the spool holds for up to `grace`.
pub async fn run(
    spool: Spool,
    store: Arc<dyn Store>,
    mut applier: Applier,
    held: Arc<AtomicU64>,
    counters: Arc<DrainCounters>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) {
    let mut deadline: Option<Instant> = None;
    let mut failures = 0u32;
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
        let s = spool.clone();
        let pending = match tokio::task::spawn_blocking(move || s.read(0, BATCH_EVENTS)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "reading the spool failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "spool task failed");
                return;
            }
        };
        let Some(last) = pending.last().map(|p| p.id) else {
            if deadline.is_some() {
                return; // drained
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        // Lines were validated before they were spooled; one that no longer parses is reported
        // and skipped rather than blocking everything behind it.
        let events: Vec<Event> = pending
            .iter()
            .filter_map(|p| match Event::parse(&p.line) {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::error!(spool_id = p.id, error = %e, "unreadable spooled event skipped");
                    None
                }
            })
            .collect();
        match applier.apply_chunk(store.as_ref(), &events, false).await {
            Ok(outcomes) => {
                failures = 0;
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
                let s = spool.clone();
                match tokio::task::spawn_blocking(move || s.release(last)).await {
                    Ok(Ok(freed)) => {
                        held.fetch_sub(freed.min(held.load(Ordering::Relaxed)), Ordering::Relaxed);
                    }
                    // Not released: the batch is applied again later, which changes nothing.
                    other => tracing::error!(?other, "releasing spooled events failed"),
                }
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
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}
