//! The durable path every way in shares: a spool, its group-commit writer, and the drain that
//! applies it to the store. The socket daemon puts listeners in front of it; the embedding API
//! ([`crate::Reporter`]) hands it events directly.

use std::path::Path;
use std::sync::atomic::AtomicU64;
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
    pub fn start(
        dir: &Path,
        spool_max: u64,
        store: Arc<dyn Store>,
        core: CoreConfig,
        grace: Duration,
    ) -> Result<Engine, SpoolError> {
        let spool = Spool::open(dir)?;
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
        let drain = tokio::spawn(drain::run(
            spool.clone(),
            handoff,
            store,
            Applier::new(Core::new(core)),
            held,
            Arc::clone(&counters),
            stopped,
            grace,
        ));
        Ok(Engine {
            spool,
            appender,
            counters,
            stop,
            writer,
            drain,
        })
    }

    /// Stops: the writer once every other appender handle is gone, then the drain after it has
    /// emptied the spool into the store (or the grace period is over).
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        drop(self.appender);
        let _ = self.writer.await;
        let _ = self.drain.await;
    }
}
