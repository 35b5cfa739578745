//! The durable path every way in shares: a spool, its group-commit writer, and the drain that
//! applies it to the store. The socket daemon puts listeners in front of it; the embedding API
//! ([`crate::Reporter`]) hands it events directly.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::drain::{self, DrainCounters};
use crate::core::{Core, CoreConfig};
use crate::pipeline::Applier;
use crate::spool::{Appender, Handoff, Spool, SpoolError};
use crate::store::Store;

/// Most bytes of event lines held in memory between the spool's writer and the drain; past it
/// the drain reads them back from the file.
const HANDOFF_BYTES: usize = 64 << 20;

/// How long a stop that cannot wait lets the store write under way end: one cut off may leave a
/// MongoDB batch in part, which the next start folds again from.
const NOW_WAIT: Duration = Duration::from_secs(15);

/// The ids given to events that come without an `event_id`: numbered within one start, and
/// unique across starts through the time of the start, so that an id never names two events.
pub struct EventIds {
    boot: String,
    next: AtomicU64,
}

impl EventIds {
    pub fn new() -> EventIds {
        EventIds {
            boot: format!("{:x}", chrono::Utc::now().timestamp_micros()),
            next: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> String {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        format!("bs-{}-{seq}", self.boot)
    }
}

pub struct Engine {
    pub spool: Spool,
    pub appender: Appender,
    pub counters: Arc<DrainCounters>,
    pub stop: watch::Sender<bool>,
    writer: JoinHandle<()>,
    drain: JoinHandle<()>,
}

impl Engine {
    /// Opens the spool in `dir` and starts its writer and its drain into `store`.
    pub async fn start(
        dir: &Path,
        spool_max: u64,
        store: Arc<dyn Store>,
        core: CoreConfig,
        grace: Duration,
    ) -> Result<Engine, SpoolError> {
        // Off the async threads: opening reads the whole file through (see `check_whole` in the
        // spool module).
        let owned = dir.to_owned();
        let spool = crate::spool::blocking(move || Spool::open(&owned)).await?;
        // The drain retries, with backoff, and counts every failure for the metrics.
        store.leave_retries_to_caller();
        let held = Arc::new(AtomicU64::new(spool.depth().bytes));
        let handoff = Arc::new(Handoff::new(HANDOFF_BYTES));
        let (appender, writer) = Appender::start(
            spool.clone(),
            Arc::clone(&handoff),
            Arc::clone(&held),
            spool_max,
        );
        let counters = Arc::new(DrainCounters::default());
        let (stop, stopped) = watch::channel(false);
        // Whoever waits for the store (`Reporter::flush`) learns that the drain ended, even by
        // a panic (which drops the task's future, and the guard in it), rather than wait for good.
        let ended = counters.end_guard();
        let run = drain::run(
            spool.clone(),
            handoff,
            store,
            Applier::new(Core::new(core)),
            held,
            Arc::clone(&counters),
            stopped,
            grace,
        );
        let drain = tokio::spawn(async move {
            let _ended = ended;
            run.await
        });
        Ok(Engine {
            spool,
            appender,
            counters,
            stop,
            writer,
            drain,
        })
    }

    /// Counts the failures of the store's preparing in the background with the drain's own.
    pub fn count_errors_of(&self, preparing: Option<&crate::store::Preparing>) {
        if let Some(preparing) = preparing {
            let counters = Arc::clone(&self.counters);
            preparing.report_errors_to(move |e| counters.store_error(e));
        }
    }

    /// Stops: the writer once it has committed what was submitted, then the drain after it has
    /// emptied the spool into the store (or the grace period is over), unless `now` completes
    /// first: then the drain ends once the write under way is done (for at most `NOW_WAIT`),
    /// and the spool keeps the rest for the next start.
    pub async fn finish(self, now: impl std::future::Future<Output = ()>) {
        let Engine {
            stop,
            appender,
            writer,
            mut drain,
            ..
        } = self;
        let _ = stop.send(true);
        appender.close();
        drop(appender);
        let done = async {
            let _ = writer.await;
            if let Err(e) = (&mut drain).await {
                tracing::error!(error = %e, "the drain failed; the spool keeps its events for the next start");
            }
        };
        tokio::select! {
            () = done => return,
            () = now => {}
        }
        // A closed channel tells the drain to stop now.
        drop(stop);
        if tokio::time::timeout(NOW_WAIT, drain).await.is_err() {
            tracing::warn!("the store write under way did not end in time; it is cut off");
        }
    }
}
