//! Group commit: callers hand events to one writer task, which takes everything waiting at that
//! moment into one transaction, so a thousand concurrent senders cost one fsync, not a thousand.
//! Each durable group then goes on to the applier in memory through the [`Handoff`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use buildstore_schema::Event;
use tokio::sync::{mpsc, oneshot, Notify};

use super::{subtract, Handoff, Spool, SpoolError};

/// A group commit takes no more submissions once it holds this many lines, or bytes.
pub(super) const GROUP_LINES: usize = 4096;
const GROUP_BYTES: usize = 16 << 20;

/// The spool holds `--spool-max` bytes already: the store is behind. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the spool is full ({held} bytes held, limit {limit}): the store is behind; send again later"
)]
pub struct SpoolFull {
    pub held: u64,
    pub limit: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Full(#[from] SpoolFull),
    #[error("{0}")]
    Spool(String),
    #[error("the spool writer has stopped")]
    Closed,
    #[error("not written: an earlier submission of the same sequence failed")]
    AfterFailure,
}

/// The submissions of one caller that must reach the spool in order, such as one connection's.
/// Once one of them fails to be written, the later ones fail too, unwritten, even those already
/// queued: the caller resends from the first failed line, and a later line already durable
/// would then be stored twice, and ahead of the lines before it.
#[derive(Clone, Default)]
pub struct Sequence(Arc<AtomicBool>);

impl Sequence {
    fn failed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn fail(&self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Events one caller submitted together, with their protocol lines; they get consecutive ids.
struct Request {
    events: Vec<(Event, String)>,
    bytes: usize,
    sequence: Sequence,
    done: oneshot::Sender<Result<i64, AppendError>>,
}

/// A handle for appending to the spool; clone it for every connection.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<Request>,
    held: Arc<AtomicU64>,
    limit: u64,
    /// Tells the writer to take nothing more, see [`Appender::close`].
    closing: Arc<Notify>,
}

impl Appender {
    /// Starts the writer task. `held` counts the bytes in the spool and on their way into it;
    /// the applier lowers it as it releases events.
    pub fn start(
        spool: Spool,
        handoff: Arc<Handoff>,
        held: Arc<AtomicU64>,
        limit: u64,
    ) -> (Appender, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(GROUP_LINES);
        let closing = Arc::new(Notify::new());
        let task = tokio::spawn(write_loop(
            spool,
            handoff,
            rx,
            Arc::clone(&held),
            Arc::clone(&closing),
        ));
        let appender = Appender {
            tx,
            held,
            limit,
            closing,
        };
        (appender, task)
    }

    /// Makes the writer commit what was submitted so far and end, however many handles are
    /// still about (a connection's task that is still writing replies to a slow client holds
    /// one): later submissions fail with [`AppendError::Closed`].
    pub fn close(&self) {
        self.closing.notify_one();
    }

    /// Queues for the next group commit the events at the front of `events` that fit in the
    /// spool, each with its protocol line, and takes them out of `events`: what is left did not
    /// fit. They get consecutive ids, and what is submitted in one `sequence` is spooled in that
    /// order, or not at all after a failure. Await the returned [`Pending`] for durability.
    /// Submitting the lines of a connection's read together saves a trip to the writer per line.
    pub async fn submit(
        &self,
        events: &mut Vec<(Event, String)>,
        sequence: &Sequence,
    ) -> Result<Pending, AppendError> {
        // A place in the writer's queue first: waiting for it is the only wait, so a caller that
        // gives up meanwhile (a timeout around `Reporter::send`) leaves nothing counted.
        let slot = self.tx.reserve().await.map_err(|_| AppendError::Closed)?;
        // The bytes are counted before the lines are queued, so that lines waiting for the next
        // group commit count against the limit too.
        let mut fit = (0, 0);
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                fit = fitting(events, self.limit.saturating_sub(held));
                (fit.0 > 0).then_some(held + fit.1)
            })
            .map_err(|held| SpoolFull {
                held,
                limit: self.limit,
            })?;
        let (count, len) = fit;
        let (done, wait) = oneshot::channel();
        let request = Request {
            events: events.drain(..count).collect(),
            bytes: len as usize,
            sequence: sequence.clone(),
            done,
        };
        slot.send(request);
        Ok(Pending(wait))
    }

    /// Appends one event, spooled as `line`, and returns its spool id once it is durable.
    pub async fn append(&self, event: Event, line: String) -> Result<i64, AppendError> {
        // Nothing else is in its sequence: the caller waits for each append in turn.
        let alone = Sequence::default();
        self.submit(&mut vec![(event, line)], &alone)
            .await?
            .durable()
            .await
    }
}

/// How many of the events, from the first, fit in `room` bytes, and their bytes.
fn fitting(events: &[(Event, String)], room: u64) -> (usize, u64) {
    let mut taken = (0, 0);
    for (_, line) in events {
        let len = line.len() as u64;
        if taken.1 + len > room {
            break;
        }
        taken = (taken.0 + 1, taken.1 + len);
    }
    taken
}

/// Submitted events, durable once [`Pending::durable`] returns the spool id of the first.
pub struct Pending(oneshot::Receiver<Result<i64, AppendError>>);

impl Pending {
    /// A submission whose outcome is already known, for tests of what waits on one.
    #[cfg(test)]
    pub fn settled(outcome: Result<i64, AppendError>) -> Pending {
        let (done, wait) = oneshot::channel();
        let _ = done.send(outcome);
        Pending(wait)
    }

    pub async fn durable(self) -> Result<i64, AppendError> {
        self.0.await.map_err(|_| AppendError::Closed)?
    }

    /// The outcome if it is known already, without waiting.
    pub fn now(&mut self) -> Option<Result<i64, AppendError>> {
        match self.0.try_recv() {
            Ok(outcome) => Some(outcome),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(AppendError::Closed)),
        }
    }
}

async fn write_loop(
    spool: Spool,
    handoff: Arc<Handoff>,
    mut rx: mpsc::Receiver<Request>,
    held: Arc<AtomicU64>,
    closing: Arc<Notify>,
) {
    let mut closed = false;
    loop {
        let first = tokio::select! {
            request = rx.recv() => match request {
                Some(request) => request,
                None => break,
            },
            () = closing.notified(), if !closed => {
                // What is queued is still received, and then `recv` ends the loop.
                rx.close();
                closed = true;
                continue;
            }
        };
        let (mut count, mut bytes) = (first.events.len(), first.bytes);
        let mut group = vec![first];
        while count < GROUP_LINES && bytes < GROUP_BYTES {
            match rx.try_recv() {
                Ok(r) => {
                    count += r.events.len();
                    bytes += r.bytes;
                    group.push(r);
                }
                Err(_) => break,
            }
        }
        let (group, after_failure): (Vec<_>, Vec<_>) =
            group.into_iter().partition(|r| !r.sequence.failed());
        for r in after_failure {
            subtract(&held, r.bytes as u64);
            let _ = r.done.send(Err(AppendError::AfterFailure));
        }
        if group.is_empty() {
            continue;
        }
        let bytes: usize = group.iter().map(|r| r.bytes).sum();
        let mut lines = Vec::with_capacity(count);
        let mut events = Vec::with_capacity(count);
        let mut waiting = Vec::with_capacity(group.len());
        for r in group {
            waiting.push((r.done, r.events.len() as i64, r.sequence));
            for (event, line) in r.events {
                events.push((event, line.len()));
                lines.push(line);
            }
        }
        let s = spool.clone();
        match super::blocking(move || s.append(&lines)).await {
            Ok(mut id) => {
                handoff.push(id, events);
                for (done, count, _) in waiting {
                    let _ = done.send(Ok(id));
                    id += count;
                }
            }
            Err(e) => {
                // A group that stayed keeps its bytes until the drain releases it.
                if !matches!(e, SpoolError::AppendKept(_)) {
                    subtract(&held, bytes as u64);
                }
                let message = e.to_string();
                tracing::error!(error = %message, "spool write failed; nothing of the group is acknowledged");
                for (done, _, sequence) in waiting {
                    sequence.fail();
                    let _ = done.send(Err(AppendError::Spool(message.clone())));
                }
            }
        }
    }
    handoff.close();
}
