//! Embedding buildstore in a build master written in Rust: the spool, drain and store of
//! `buildstore serve`, without the socket. `send` returns once an event is durable, exactly when
//! the daemon would acknowledge it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buildstore_schema::Event;

use crate::core::CoreConfig;
use crate::serve::engine::{Engine, EventIds};
use crate::spool::{AppendError, SpoolError};
use crate::store::{self, StoreError};

/// How a [`Reporter`] is set up; the same settings as `buildstore serve`.
#[derive(Debug, Clone)]
pub struct ReporterConfig {
    /// `sqlite:PATH` or a MongoDB URI.
    pub store: String,
    pub spool: PathBuf,
    pub spool_max: u64,
    pub core: CoreConfig,
    /// How long `shutdown` keeps draining the spool into the store.
    pub grace: Duration,
}

impl ReporterConfig {
    pub fn new(store: impl Into<String>, spool: impl Into<PathBuf>) -> ReporterConfig {
        ReporterConfig {
            store: store.into(),
            spool: spool.into(),
            spool_max: 1 << 30,
            core: CoreConfig::default(),
            grace: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReporterError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The event was not accepted: the spool is full or failed. Nothing of it was kept.
    #[error(transparent)]
    Send(#[from] AppendError),
    /// The event breaks a rule that parsing its line would have checked (an id or a name too
    /// long, a `/` in an id): it gets the error the socket would give. Nothing of it was kept.
    #[error(transparent)]
    Invalid(#[from] buildstore_schema::EventError),
    /// The drain that applies the spool to the store has ended (it failed, and the log says
    /// why): what was sent stays in the spool, and is applied at the next start.
    #[error(
        "the drain into the store has stopped; the spool keeps what was sent for the next start"
    )]
    Stopped,
    /// `start` was not called on a Tokio runtime, which the spool's writer and the drain run on.
    #[error(
        "a Reporter runs on a Tokio runtime (multi-thread or current-thread): start it on one"
    )]
    NoRuntime,
    /// The grace period is longer than `buildstore serve` allows.
    #[error("the grace period must be at most {max} seconds (one day)", max = crate::serve::MAX_GRACE.as_secs())]
    GraceTooLong,
    /// The event's line is longer than half the spool's bound. Nothing of it was kept.
    #[error(
        "the event takes {bytes} bytes as a line, more than half the spool's bound ({spool_max} bytes)"
    )]
    TooLarge { bytes: usize, spool_max: u64 },
    /// The event breaks a rule that needs nothing stored (an empty builder name, a property value
    /// or name without a BSON form), as the socket would say. Nothing of it was kept.
    #[error(transparent)]
    Unstorable(#[from] crate::core::RuleError),
}

/// What a [`Reporter`] has done since it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReporterStats {
    /// Events applied to the store.
    pub applied: u64,
    /// Events the store already had (sent again), skipped.
    pub duplicates: u64,
    /// Events the rules refused when they were applied (a step of a build never started); the
    /// log says why.
    pub rejected: u64,
    /// Failed attempts to write or prepare the store.
    pub store_errors: u64,
    /// Failed writes since the store last took one: more than 0 while it is down.
    pub store_errors_in_a_row: u64,
    pub last_store_error: Option<String>,
    /// What the spool holds, not yet in the store.
    pub spool_events: u64,
    pub spool_bytes: u64,
}

/// Reports a master's events into the store, durably.
pub struct Reporter {
    engine: Engine,
    spool_max: u64,
    /// A store that was down at start, prepared once it answers; not after the reporter.
    _preparing: Option<store::Preparing>,
    ids: EventIds,
    last_sent: Arc<AtomicI64>,
}

impl Reporter {
    /// Opens the store (creating its indexes) and the spool, and starts applying; events left in
    /// the spool by an earlier run are applied first. A store that is down does not stop it, as
    /// it does not stop `buildstore serve`: events are spooled until the store answers. The
    /// runtime needs its time driver (Tokio panics without it), as the retries and the grace
    /// period are timed.
    pub async fn start(config: ReporterConfig) -> Result<Reporter, ReporterError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ReporterError::NoRuntime);
        }
        if config.grace > crate::serve::MAX_GRACE {
            return Err(ReporterError::GraceTooLong);
        }
        let store = store::open_for_writing(&config.store).await?;
        let store: Arc<dyn store::Store> = Arc::from(store);
        let preparing = store::prepare_or_later(&store).await?;
        let engine = Engine::start(
            &config.spool,
            config.spool_max,
            store,
            config.core,
            config.grace,
        )
        .await?;
        engine.count_errors_of(preparing.as_ref());
        // What an earlier run spooled and did not apply counts as sent: `flush` waits for it.
        let last_sent = Arc::new(AtomicI64::new(engine.spool.next_id() - 1));
        Ok(Reporter {
            engine,
            spool_max: config.spool_max,
            _preparing: preparing,
            ids: EventIds::new(),
            last_sent,
        })
    }

    /// Sends one event and returns its `event_id` (assigned if it had none) once it is durable.
    /// Events sent one after the other are applied in that order. An event without a `time`
    /// gets the time it was sent, not the time the store gets it.
    ///
    /// A `send` given up before it returns (dropped, or under a timeout) may still have spooled
    /// the event, which is then applied. Sending it again is safe when the event carries an
    /// `event_id` of its own: the store skips it. One without an id would get another id and be
    /// applied twice.
    pub async fn send(&self, mut event: Event) -> Result<String, ReporterError> {
        crate::core::check_standalone(&event)?;
        event
            .time
            .get_or_insert_with(buildstore_schema::Timestamp::now);
        let id = match &event.event_id {
            Some(id) => id.clone(),
            None => {
                let id = self.ids.next();
                event.event_id = Some(id.clone());
                id
            }
        };
        // After a restart, or behind a backlog, the drain reads the event back from its spooled
        // line. So the event is taken as its line gives it back, with the checks of parsing: one
        // the line does not give back (an empty id, a time past year 9999) is refused now, as the
        // socket refuses the line, not acknowledged and lost there.
        let line = event.to_line();
        // One the spool could never take would get "full, send again later" for good.
        if line.len() as u64 > self.spool_max / 2 {
            return Err(ReporterError::TooLarge {
                bytes: line.len(),
                spool_max: self.spool_max,
            });
        }
        let event = Event::parse(&line)?;
        let spool_id = self.engine.appender.append(event, line).await?;
        self.last_sent.fetch_max(spool_id, Ordering::Relaxed);
        Ok(id)
    }

    /// Waits until every event sent before this call, and every event an earlier run left in the
    /// spool, is in the store (or was refused by the rules, which the drain logs and
    /// [`Reporter::stats`] counts). While the store is down this waits for it, the events being
    /// safe in the spool: put the call under a timeout to bound the wait. Fails if the drain has
    /// ended first (it failed; the log says why): the events stay in the spool for the next start.
    pub async fn flush(&self) -> Result<(), ReporterError> {
        let target = self.last_sent.load(Ordering::Relaxed);
        if self.engine.counters.confirmed_through(target).await {
            Ok(())
        } else {
            Err(ReporterError::Stopped)
        }
    }

    /// Events applied to the store so far.
    pub fn applied(&self) -> u64 {
        self.engine.counters.applied.load(Ordering::Relaxed)
    }

    /// What has happened so far, as `buildstore serve`'s metrics say it: an outage of the store
    /// shows here, and events the rules refused, which `send` could not know of.
    pub fn stats(&self) -> ReporterStats {
        let c = &self.engine.counters;
        let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        let depth = self.engine.spool.depth();
        ReporterStats {
            applied: get(&c.applied),
            duplicates: get(&c.duplicates),
            rejected: get(&c.rejected),
            store_errors: get(&c.store_errors),
            store_errors_in_a_row: get(&c.store_errors_in_a_row),
            last_store_error: c.last_error.lock().map(|e| e.clone()).unwrap_or_default(),
            spool_events: depth.events,
            spool_bytes: depth.bytes,
        }
    }

    /// Drains the spool into the store (for up to the grace period) and stops. Returns how many
    /// events the spool still holds, to be applied at the next start: none once all was drained.
    pub async fn shutdown(self) -> u64 {
        let spool = self.engine.spool.clone();
        self.engine.finish(std::future::pending()).await;
        spool.depth().events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use buildstore_schema::Collection;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sent_events_are_in_the_store_after_flush_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let location = format!("sqlite:{}", dir.path().join("s.db").display());
        let mut config = ReporterConfig::new(location.clone(), dir.path().join("spool"));
        // The test compares the store after each shutdown: draining must not run out first.
        config.grace = Duration::from_secs(300);
        let lines = crate::synth::lines_of(1_500);
        let reporter = Reporter::start(config.clone()).await.unwrap();
        for line in &lines[..1000] {
            reporter.send(Event::parse(line).unwrap()).await.unwrap();
        }
        reporter.flush().await.unwrap();
        assert_eq!(reporter.applied(), 1000);
        reporter.shutdown().await;

        // A second run carries on with the builds the first left running.
        let reporter = Reporter::start(config).await.unwrap();
        for line in &lines[1000..] {
            reporter.send(Event::parse(line).unwrap()).await.unwrap();
        }
        let mut plain = Event::parse(&lines[0]).unwrap();
        plain.event_id = None;
        let assigned = reporter.send(plain).await.unwrap();
        assert!(assigned.starts_with("bs-"));
        reporter.shutdown().await;

        let store = crate::store::open(&location).await.unwrap();
        let other = crate::store::open(&format!("sqlite:{}", dir.path().join("o.db").display()))
            .await
            .unwrap();
        let mut applier =
            crate::pipeline::Applier::new(crate::core::Core::new(CoreConfig::default()));
        let events: Vec<Event> = lines.iter().map(|l| Event::parse(l).unwrap()).collect();
        applier
            .apply_chunk(other.as_ref(), &events, false)
            .await
            .unwrap();
        for c in Collection::ALL {
            let a = store.list(c, None, usize::MAX).await.unwrap();
            let b = other.list(c, None, usize::MAX).await.unwrap();
            assert_eq!(a.len(), b.len(), "{c}");
        }
        assert_eq!(
            store
                .list(Collection::Builds, None, usize::MAX)
                .await
                .unwrap(),
            other
                .list(Collection::Builds, None, usize::MAX)
                .await
                .unwrap()
        );
    }

    /// Starts a Reporter on `config` once the store's writer lock is free.
    async fn start_once_free(config: ReporterConfig) -> Reporter {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match Reporter::start(config.clone()).await {
                Ok(r) => return r,
                Err(ReporterError::Store(StoreError::InUse { .. }))
                    if std::time::Instant::now() < deadline => {}
                Err(e) => panic!("not started: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A Reporter dropped while its write waits on a store locked by another program keeps the
    /// store's writer lock until that write ends: a second writer started meanwhile is refused,
    /// rather than writing beside it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dropped_reporter_keeps_the_store_locked_while_its_last_write_runs() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.db");
        let location = format!("sqlite:{}", file.display());
        let config = |spool: &str| {
            let mut c = ReporterConfig::new(location.clone(), dir.path().join(spool));
            c.grace = Duration::from_secs(5);
            c
        };
        let lines = crate::synth::lines_of(20);
        let first = Reporter::start(config("one")).await.unwrap();
        first.send(Event::parse(&lines[0]).unwrap()).await.unwrap();
        first.flush().await.unwrap();
        let other = rusqlite::Connection::open(&file).unwrap();
        other.execute_batch("BEGIN EXCLUSIVE").unwrap();
        for line in &lines[1..] {
            first.send(Event::parse(line).unwrap()).await.unwrap();
        }
        // Folded (reads go on beside the lock) and waiting to write: a fold takes milliseconds.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(first);
        tokio::time::sleep(Duration::from_millis(200)).await;
        match Reporter::start(config("two")).await {
            Err(ReporterError::Store(StoreError::InUse { .. })) => {}
            Err(e) => panic!("refused, but not as in use: {e}"),
            Ok(_) => panic!("a second writer started beside a write still under way"),
        }
        other.execute_batch("ROLLBACK").unwrap();
        drop(other);
        // The write goes through, and the lock goes with it.
        let second = start_once_free(config("two")).await;
        second.shutdown().await;
        // The write the first left under way went through: the event after the lock is in.
        let store = crate::store::open(&location).await.unwrap();
        let builder = store.get(Collection::Builders, "2/linux-x86_64").await;
        assert!(builder.unwrap().is_some());
        // What it had not written yet waits in its spool, for its next start.
        let again = Reporter::start(config("one")).await.unwrap();
        again.flush().await.unwrap();
        again.shutdown().await;
        assert!(store
            .get(Collection::Builds, "m1/0")
            .await
            .unwrap()
            .is_some());
    }

    /// A master restarting while its MongoDB server is down still starts, and still spools.
    #[tokio::test]
    async fn a_store_that_does_not_answer_does_not_keep_the_reporter_from_starting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::mongo::unreachable_uri(60_000);
        let mut config = ReporterConfig::new(store, dir.path().join("spool"));
        config.grace = Duration::from_millis(100);
        let started = std::time::Instant::now();
        let reporter = Reporter::start(config)
            .await
            .expect("starts without the store");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{:?}",
            started.elapsed()
        );
        let line = r#"{"type":"builder_added","master_id":"m","builder":"b"}"#;
        reporter
            .send(Event::parse(line).expect("a valid line"))
            .await
            .expect("spooled");
        assert_eq!(reporter.applied(), 0);
        assert_eq!(reporter.shutdown().await, 1, "kept for the next start");
    }

    /// An event the spool could never take gets an error that says so, not "full, send again
    /// later" for good.
    #[tokio::test]
    async fn an_event_the_spool_could_never_hold_is_refused_not_full_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = format!("sqlite:{}", dir.path().join("s.db").display());
        let mut config = ReporterConfig::new(store, dir.path().join("spool"));
        config.spool_max = 1000;
        let reporter = Reporter::start(config).await.expect("start");
        let long = format!(
            r#"{{"type":"builder_added","master_id":"m","builder":"{}"}}"#,
            "b".repeat(600)
        );
        let err = reporter
            .send(Event::parse(&long).expect("a valid line"))
            .await
            .expect_err("longer than half the spool");
        assert!(matches!(err, ReporterError::TooLarge { .. }), "{err:?}");
        let short = r#"{"type":"builder_added","master_id":"m","builder":"b"}"#;
        reporter
            .send(Event::parse(short).expect("a valid line"))
            .await
            .expect("fits");
        assert_eq!(reporter.shutdown().await, 0);
    }

    /// An event built in code is held to the rules a parsed line is: a builder name too long for
    /// a commit document is refused with the socket's message, and nothing of it is stored.
    #[tokio::test]
    async fn an_event_built_in_code_gets_the_errors_of_a_parsed_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = format!("sqlite:{}", dir.path().join("s.db").display());
        let reporter = Reporter::start(ReporterConfig::new(store, dir.path().join("spool")))
            .await
            .expect("start");
        let line = r#"{"type":"builder_added","master_id":"m","builder":"b"}"#;
        let mut event = Event::parse(line).expect("a valid line");
        if let buildstore_schema::EventKind::BuilderAdded(e) = &mut event.kind {
            e.builder = "b".repeat(buildstore_schema::MAX_NAME_BYTES + 1);
        }
        let err = reporter.send(event).await.expect_err("too long a name");
        assert!(matches!(err, ReporterError::Invalid(_)), "{err:?}");
        assert_eq!(err.to_string(), "field `builder`: 1025 bytes, at most 1024");
        // A property value without a BSON form is refused at the door too, as the socket does.
        let dated =
            r#"{"type":"property","master_id":"m","build_id":1,"name":"n","value":{"$date":1}}"#;
        let err = reporter
            .send(Event::parse(dated).expect("a valid line"))
            .await
            .expect_err("a key BSON reads as a date");
        assert!(matches!(err, ReporterError::Unstorable(_)), "{err:?}");
        // What its spooled line would not give back: an empty id, a time no line can write.
        let mut unnamed = Event::parse(line).expect("a valid line");
        unnamed.master_id = buildstore_schema::Ident::Str(String::new());
        let mut far = Event::parse(line).expect("a valid line");
        far.time =
            chrono::DateTime::from_timestamp(300_000_000_000, 0).map(buildstore_schema::Timestamp);
        for event in [unnamed, far] {
            let err = reporter
                .send(event)
                .await
                .expect_err("no line gives it back");
            assert!(matches!(err, ReporterError::Invalid(_)), "{err:?}");
        }
        reporter
            .send(Event::parse(line).expect("a valid line"))
            .await
            .expect("a valid event");
        reporter.flush().await.expect("flush");
        reporter.shutdown().await;
    }

    /// A restarted Reporter's `flush` waits for what the last run spooled and could not apply
    /// (its store was locked by another program), not only for what it sent itself.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_after_a_restart_waits_for_what_the_last_run_left() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let mut config = ReporterConfig::new(
            format!("sqlite:{}", path.display()),
            dir.path().join("spool"),
        );
        config.grace = Duration::from_millis(500);
        let first = Reporter::start(config.clone()).await.unwrap();
        let lock = rusqlite::Connection::open(&path).unwrap();
        lock.execute_batch("BEGIN EXCLUSIVE").unwrap();
        for n in 0..20 {
            let line = format!(
                r#"{{"type":"builder_added","master_id":"m","builder":"b{n}","event_id":"e{n}"}}"#
            );
            first.send(Event::parse(&line).unwrap()).await.unwrap();
        }
        assert_eq!(first.shutdown().await, 20, "the store was locked");
        lock.execute_batch("ROLLBACK").unwrap();
        // The first run's last write, cut off by its grace period, still holds the store.
        let second = start_once_free(config.clone()).await;
        second.flush().await.unwrap();
        let stats = second.stats();
        assert_eq!(stats.spool_events, 0, "{stats:?}");
        // A write of the first run cut off by its grace period may have gone through once the
        // lock went: the store records how far into the spool it went, and those events are
        // released at the start without being folded again, so they are not counted here.
        assert!(stats.applied + stats.duplicates <= 20, "{stats:?}");
        let store = crate::store::open(&config.store).await.unwrap();
        let builders = store
            .list(Collection::Builders, None, usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            builders.len(),
            20,
            "every event of the last run is in the store"
        );
        second.shutdown().await;
        // Nothing left, nothing sent: nothing to wait for.
        let third = Reporter::start(config).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), third.flush())
            .await
            .expect("flush returns")
            .unwrap();
        third.shutdown().await;
    }

    /// What `send` cannot know shows in the stats: an event the rules refuse once applied.
    #[tokio::test]
    async fn events_the_rules_refuse_when_applied_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite:{}", dir.path().join("s.db").display());
        let reporter = Reporter::start(ReporterConfig::new(store, dir.path().join("spool")))
            .await
            .unwrap();
        let orphan = r#"{"type":"step_started","master_id":"m","build_id":9,"step":0,"name":"s"}"#;
        reporter.send(Event::parse(orphan).unwrap()).await.unwrap();
        reporter.flush().await.unwrap();
        let stats = reporter.stats();
        assert_eq!((stats.applied, stats.rejected), (0, 1), "{stats:?}");
        assert_eq!(stats.store_errors, 0);
        reporter.shutdown().await;
    }

    /// Settings a Reporter cannot run with are errors, not a panic or a silent change.
    #[test]
    fn a_reporter_needs_a_runtime_and_a_grace_period_of_a_day_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite:{}", dir.path().join("s.db").display());
        let mut config = ReporterConfig::new(store, dir.path().join("spool"));
        let outside = futures::executor::block_on(Reporter::start(config.clone()));
        assert!(matches!(outside, Err(ReporterError::NoRuntime)));
        config.grace = Duration::from_secs(25 * 3600);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let long = runtime.block_on(Reporter::start(config));
        assert!(matches!(long, Err(ReporterError::GraceTooLong)));
        assert!(!dir.path().join("s.db").exists(), "nothing made");
    }
}
