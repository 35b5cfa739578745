//! The drain's view of a stop: once one comes, the drain goes on for a grace period and then
//! ends wherever it is, leaving the rest in the spool for the next start. The drain's waits on
//! the store and between its tries go through here, so that none outlasts the grace period.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// A stop that may come, and the end of its grace period once it has.
pub(super) struct Grace {
    stop: watch::Receiver<bool>,
    period: Duration,
    /// Set when the stop comes.
    deadline: Option<Instant>,
}

impl Grace {
    pub(super) fn new(stop: watch::Receiver<bool>, period: Duration) -> Grace {
        Grace {
            stop,
            period: period.min(super::MAX_GRACE),
            deadline: None,
        }
    }

    /// Whether a stop has come (and its grace period started).
    pub(super) fn stopping(&mut self) -> bool {
        self.arm();
        self.deadline.is_some()
    }

    /// Whether the engine is gone: a stop that cannot wait.
    pub(super) fn engine_gone(&self) -> bool {
        self.stop.has_changed().is_err()
    }

    /// Whether a stop has lasted the grace period.
    pub(super) fn over_now(&mut self) -> bool {
        self.arm();
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// The result of `work`, or None (and a warning) if a stop lasts the grace period, or the
    /// engine goes, before it ends: what is left in the spool is then applied at the next start.
    pub(super) async fn within<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            done = work => Some(done),
            () = self.over() => {
                tracing::warn!(
                    "grace period over with the store still busy: what is left in the spool is \
                     applied at the next start"
                );
                None
            }
        }
    }

    /// Waits for `wait`, or less: until the stop comes, and never past the grace period.
    pub(super) async fn pause(&mut self, mut wait: Duration) {
        // Once stopping, `stop` does not change again: the deadline bounds the wait instead.
        if let Some(d) = self.deadline {
            wait = wait.min(d.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// Waits until `woken` resolves, `idle` has passed, or the stop comes.
    pub(super) async fn idle(&mut self, woken: impl Future<Output = ()>, idle: Duration) {
        tokio::select! {
            _ = woken => {}
            _ = tokio::time::sleep(idle) => {}
            _ = self.stop.changed() => {}
        }
    }

    /// Sets the deadline once the stop has come.
    fn arm(&mut self) {
        if self.deadline.is_none() && *self.stop.borrow() {
            self.deadline = Some(Instant::now() + self.period);
        }
    }

    /// Resolves once a stop has lasted the grace period, or the engine is gone.
    async fn over(&mut self) {
        loop {
            self.arm();
            match self.deadline {
                Some(d) => return tokio::time::sleep_until(d.into()).await,
                None => {
                    if self.stop.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}
