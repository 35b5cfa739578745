//! The drain's rules: spool order whatever the way events come, and no event lost or doubled
//! when a store write fails while the next batch is being folded.

use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use async_trait::async_trait;
use bson::Document;
use buildstore_schema::Collection;

use super::*;
use crate::core::{Batch, BuildSnapshot, Core, CoreConfig, SpoolProgress};
use crate::spool::Depth;
use crate::store::{open_in, KnownEvents, SqliteStore, Store};

#[tokio::test]
async fn events_are_taken_in_order_from_memory_and_from_the_file_around_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let handoff = Handoff::new(usize::MAX);
    let lines = crate::synth::lines_of(40);
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

/// How a write fails.
#[derive(Clone, Copy)]
enum Failure {
    /// Nothing of the batch is written.
    Whole,
    /// After the first half of its mutations is written, as a store without transactions may.
    Halfway,
    /// Nothing is written, and the store says the batch does not fit what it holds.
    DoesNotFit,
    /// Nothing of it or of any later batch is written: the store is down from then on.
    ForGood,
    /// All of it is written, but the drain never hears so, as when the process is killed between
    /// the store's commit and the spool's release; nothing later is written.
    UnheardThenDown,
}

/// Writes to `inner`, but fails the write of batch number `fail_at` (counting from 0) once, or
/// from then on.
struct FailingWrite {
    inner: SqliteStore,
    fail_at: usize,
    failure: Failure,
    writes: AtomicUsize,
}

impl FailingWrite {
    async fn at(dir: &std::path::Path, fail_at: usize, failure: Failure) -> FailingWrite {
        FailingWrite {
            inner: open_in(dir, "s.db").await,
            fail_at,
            failure,
            writes: AtomicUsize::new(0),
        }
    }
}

#[async_trait]
impl Apply for FailingWrite {
    async fn apply(&self, batch: Arc<Batch>) -> Result<(), StoreError> {
        let n = self.writes.fetch_add(1, Ordering::SeqCst);
        let down_after = matches!(self.failure, Failure::ForGood | Failure::UnheardThenDown);
        if n == self.fail_at || (n > self.fail_at && down_after) {
            match self.failure {
                Failure::Whole | Failure::ForGood => {}
                Failure::UnheardThenDown if n == self.fail_at => self.inner.apply(batch).await?,
                Failure::UnheardThenDown => {}
                Failure::Halfway => {
                    let half = batch.mutations[..batch.mutations.len() / 2].to_vec();
                    self.inner
                        .apply(Arc::new(Batch {
                            mutations: half,
                            ..Batch::default()
                        }))
                        .await?;
                }
                Failure::DoesNotFit => {
                    return Err(StoreError::Missing {
                        collection: Collection::Builds,
                        id: "b".into(),
                    })
                }
            }
            return Err(StoreError::Task("the write failed".into()));
        }
        self.inner.apply(batch).await
    }
    async fn applied_events(&self, keys: &[String]) -> Result<KnownEvents, StoreError> {
        self.inner.applied_events(keys).await
    }
    async fn load_builds(
        &self,
        ids: &[String],
        log_window: usize,
    ) -> Result<Vec<BuildSnapshot>, StoreError> {
        self.inner.load_builds(ids, log_window).await
    }
    async fn spool_progress(&self, spool: &str) -> Result<Option<SpoolProgress>, StoreError> {
        self.inner.spool_progress(spool).await
    }
}

async fn export(store: &dyn Store) -> Vec<Document> {
    let mut all = Vec::new();
    for c in Collection::ALL {
        all.extend(store.list(c, None, usize::MAX).await.unwrap());
    }
    all
}

/// The drain of `spool`, and of what `handoff` holds, into `store` with a fold of its own,
/// counting in `counters`.
fn drain(
    spool: &Spool,
    handoff: Arc<Handoff>,
    store: Arc<dyn Apply>,
    counters: Arc<DrainCounters>,
    stopped: watch::Receiver<bool>,
    grace: Duration,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    run(
        spool.clone(),
        handoff,
        store,
        Applier::new(Core::new(CoreConfig::default())),
        Arc::new(AtomicU64::new(0)),
        counters,
        stopped,
        grace,
    )
}

/// Drains `lines` through a store whose write of the second batch fails once (its builds were
/// written by the first, and the third is folded on top of it when it fails), and checks that
/// the store ends up as one clean fold of the events would leave it.
async fn drain_through_a_failed_write(lines: &[String], failure: Failure) {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Event> = lines.iter().map(|l| Event::parse(l).unwrap()).collect();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let handoff = Arc::new(Handoff::new(usize::MAX));
    let first = spool.append(lines).unwrap();
    handoff.push(
        first,
        events
            .iter()
            .zip(lines)
            .map(|(e, l)| (e.clone(), l.len()))
            .collect(),
    );
    handoff.close();
    let store = Arc::new(FailingWrite::at(dir.path(), 1, failure).await);
    let counters = Arc::new(DrainCounters::default());
    let (_stop, stopped) = watch::channel(true); // drain what there is, then return
    drain(
        &spool,
        handoff,
        Arc::clone(&store) as Arc<dyn Apply>,
        Arc::clone(&counters),
        stopped,
        Duration::from_secs(60),
    )
    .await;

    assert_eq!(counters.store_errors.load(Ordering::SeqCst), 1);
    assert_eq!(counters.applied.load(Ordering::SeqCst), events.len() as u64);
    assert_eq!(counters.duplicates.load(Ordering::SeqCst), 0);
    assert_eq!(spool.depth().events, 0, "everything released");

    let clean = open_in(dir.path(), "clean.db").await;
    let mut applier = Applier::new(Core::new(CoreConfig::default()));
    applier.apply_chunk(&clean, &events, false).await.unwrap();
    assert_eq!(export(&store.inner).await, export(&clean).await);
}

fn stream(log_offsets: bool) -> Vec<String> {
    crate::synth::lines(&crate::synth::Shape {
        events: 3 * BATCH_EVENTS + 500,
        log_offsets,
        ..Default::default()
    })
}

#[tokio::test]
async fn a_failed_write_while_the_next_batch_is_folded_loses_and_doubles_nothing() {
    drain_through_a_failed_write(&stream(true), Failure::Whole).await;
}

#[tokio::test]
async fn a_batch_that_does_not_fit_the_store_is_folded_again_from_it() {
    drain_through_a_failed_write(&stream(true), Failure::DoesNotFit).await;
}

#[tokio::test]
async fn a_write_that_failed_halfway_is_completed_without_doubling_log_text_sent_without_offsets() {
    // Without an offset a log chunk goes at the end of what the store holds: folded again after
    // half the batch was written, it would be appended a second time.
    let lines = stream(false);
    assert!(!lines.iter().any(|l| l.contains("\"offset\"")));
    drain_through_a_failed_write(&lines, Failure::Halfway).await;
}

/// A store that is down: every write fails.
struct Down;

#[async_trait]
impl Apply for Down {
    async fn apply(&self, _: Arc<Batch>) -> Result<(), StoreError> {
        Err(StoreError::Task("the store is down".into()))
    }
    async fn applied_events(&self, _: &[String]) -> Result<KnownEvents, StoreError> {
        Ok(KnownEvents::default())
    }
    async fn load_builds(&self, _: &[String], _: usize) -> Result<Vec<BuildSnapshot>, StoreError> {
        Ok(Vec::new())
    }
    async fn spool_progress(&self, _: &str) -> Result<Option<SpoolProgress>, StoreError> {
        Ok(None)
    }
}

/// A spool of a few events, in `dir`, drained on a task of its own into a store that is down;
/// and how many events it holds.
fn drain_into_a_store_that_is_down(
    dir: &std::path::Path,
    counters: Arc<DrainCounters>,
    stopped: watch::Receiver<bool>,
    grace: Duration,
) -> (Spool, u64, JoinHandle<()>) {
    let lines = crate::synth::lines_of(50);
    let spool = Spool::open(dir).unwrap();
    spool.append(&lines).unwrap();
    let handoff = Arc::new(Handoff::new(usize::MAX));
    handoff.close();
    let task = tokio::spawn(drain(
        &spool,
        handoff,
        Arc::new(Down),
        counters,
        stopped,
        grace,
    ));
    (spool, lines.len() as u64, task)
}

#[tokio::test]
async fn once_its_engine_is_gone_the_drain_ends_at_once_and_the_spool_keeps_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let (stop, stopped) = watch::channel(true);
    let (spool, events, task) = drain_into_a_store_that_is_down(
        dir.path(),
        Arc::new(DrainCounters::default()),
        stopped,
        Duration::from_secs(300),
    );
    // Draining into a store that is down, for up to 300 s, until the sender goes.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!task.is_finished());
    drop(stop);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the drain ended")
        .unwrap();
    assert_eq!(spool.depth().events, events, "nothing released");
}

#[tokio::test]
async fn with_the_store_down_retries_back_off_and_stopping_ends_at_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let counters = Arc::new(DrainCounters::default());
    let (stop, stopped) = watch::channel(false);
    let grace = Duration::from_secs(1);
    let (spool, events, task) =
        drain_into_a_store_that_is_down(dir.path(), Arc::clone(&counters), stopped, grace);
    let started = Instant::now();
    // Long enough for the back-off to grow past the grace period.
    while counters.store_errors.load(Ordering::SeqCst) < 5 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Waits of 0.2, 0.4, 0.8 and 1.6 s came between the first five failures.
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "five failures in {:?}: the retries do not back off",
        started.elapsed()
    );
    let stopping = Instant::now();
    stop.send(true).unwrap();
    task.await.unwrap();
    // The next back-off (6.4 s) would overrun the deadline.
    assert!(
        stopping.elapsed() < grace + Duration::from_millis(1500),
        "stopped after {:?}",
        stopping.elapsed()
    );
    assert_eq!(spool.depth().events, events, "nothing released");
}

/// Whoever waits for the store learns that the drain ended (by a panic too) instead of waiting
/// for good; what was confirmed before still counts.
#[tokio::test]
async fn waiting_for_the_store_ends_when_the_drain_does() {
    let counters = Arc::new(DrainCounters::default());
    counters.confirmed.store(5, Ordering::Release);
    let guard = counters.end_guard();
    let waiter = {
        let counters = Arc::clone(&counters);
        tokio::spawn(async move { counters.confirmed_through(6).await })
    };
    let failing = tokio::spawn(async move {
        let _ended = guard;
        panic!("a drain that fails");
    });
    assert!(failing.await.is_err());
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter).await;
    assert_eq!(
        waited.ok().and_then(Result::ok),
        Some(false),
        "not confirmed, not waiting"
    );
    assert!(
        counters.confirmed_through(5).await,
        "confirmed before the end"
    );
}

/// A store that fails to be prepared in the background while it takes writes shows in the
/// errors and the last error, not in the drain's errors in a row: that count sets the drain's
/// back-off, and an alert on it says the store takes no writes.
#[test]
fn errors_in_a_row_are_the_drains_own_writes_only() {
    let counters = DrainCounters::default();
    let e = |m: &str| StoreError::Mongo {
        location: "m".into(),
        message: m.into(),
    };
    counters.store_error(&e("not authorized to create indexes"));
    assert_eq!(counters.store_errors.load(Ordering::Relaxed), 1);
    assert_eq!(counters.store_errors_in_a_row.load(Ordering::Relaxed), 0);
    assert_eq!(
        counters.last_error.lock().unwrap().as_deref(),
        Some("MongoDB at m: not authorized to create indexes")
    );
    assert_eq!(counters.store_failed(&e("down")), 1);
    assert_eq!(counters.store_failed(&e("down")), 2);
    assert_eq!(counters.store_errors.load(Ordering::Relaxed), 3);
}

#[path = "drain_restart_tests.rs"]
mod restart;
