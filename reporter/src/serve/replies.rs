//! A connection's replies: queued in order by its reader, bounded in entries and in bytes, and
//! written by a task of their own, so that a client that stops reading fills the queue and is
//! then disconnected rather than holding the daemon.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::connection::{error_reply, Conn, Ended, Tally};
use crate::spool::Pending;

/// Reply entries (one line's reply, or a run's) waiting to be written; past this the connection
/// stops reading.
const IN_FLIGHT: usize = 1024;
/// Bytes of replies waiting to be written; past this too the connection stops reading. Replies
/// quote what the client sent (its event ids; an error up to about 1 KiB), and one entry holds
/// the acks of a run of lines, so a count of entries alone would let a client that does not read
/// hold tens of kilobytes per entry.
const IN_FLIGHT_BYTES: usize = 4 << 20;
/// Replies gathered before one write to the socket.
const REPLY_BUFFER: usize = 64 << 10;

/// The reply to one line, or to a run of spooled lines still waiting for the spool.
pub(super) enum Reply {
    Now(String),
    /// An ack for each event once they are durable, or the error of each line if they are not.
    Later {
        pending: Pending,
        run: Vec<Submitted>,
    },
}

impl Reply {
    /// About the bytes the reply takes once written.
    fn size(&self) -> usize {
        match self {
            Reply::Now(text) => text.len() + 1,
            Reply::Later { run, .. } => run.iter().map(|s| s.id.len() + 12).sum(),
        }
    }
}

/// A reply waiting to be written, holding its share of the connection's byte budget.
pub(super) struct Queued {
    reply: Reply,
    _bytes: OwnedSemaphorePermit,
}

/// The queue of replies from a connection's reader to its writer, bounded in entries and in
/// bytes.
pub(super) struct Replies {
    pub(super) queue: mpsc::Sender<Queued>,
    budget: Arc<Semaphore>,
}

impl Replies {
    pub(super) fn new() -> (Replies, mpsc::Receiver<Queued>) {
        let (queue, receiver) = mpsc::channel(IN_FLIGHT);
        let budget = Arc::new(Semaphore::new(IN_FLIGHT_BYTES));
        (Replies { queue, budget }, receiver)
    }

    /// Queues `reply` once there is room for it; an error once the writer is gone.
    pub(super) async fn push(&self, reply: Reply) -> Result<(), Ended> {
        // A reply bigger than the whole budget takes all of it.
        let size = u32::try_from(reply.size().min(IN_FLIGHT_BYTES)).unwrap_or(u32::MAX);
        let bytes = tokio::select! {
            permit = Arc::clone(&self.budget).acquire_many_owned(size) => {
                permit.map_err(|_| Ended)?
            }
            _ = self.queue.closed() => return Err(Ended),
        };
        let queued = Queued {
            reply,
            _bytes: bytes,
        };
        self.queue.send(queued).await.map_err(|_| Ended)
    }
}

/// A line whose event was submitted to the spool.
pub(super) struct Submitted {
    pub(super) id: String,
    pub(super) line: u64,
}

/// Writes the replies in order. Every reply that is ready goes into one buffer and one write, so
/// a window of events acknowledged by one group commit costs one system call, not one each.
/// The lines of runs it never answers (the connection ends first: a failed spool write, a client
/// gone or not reading) count as unanswered.
pub(super) async fn write_replies<W: AsyncWrite>(
    write: W,
    mut replies: mpsc::Receiver<Queued>,
    conn: Conn,
    timeout: Duration,
) {
    answer(write, &mut replies, &conn, timeout).await;
    // What was queued behind: the reader's next push fails, and counts its own run.
    replies.close();
    while let Ok(Queued { reply, .. }) = replies.try_recv() {
        if let Reply::Later { run, .. } = reply {
            conn.count_many(Tally::Unanswered, run.len() as u64);
        }
    }
}

async fn answer<W: AsyncWrite>(
    write: W,
    replies: &mut mpsc::Receiver<Queued>,
    conn: &Conn,
    timeout: Duration,
) {
    let mut write = std::pin::pin!(write);
    let mut out: Vec<u8> = Vec::with_capacity(REPLY_BUFFER);
    loop {
        // The reply's share of the byte budget is given back once it is handled: in the buffer,
        // or once durable and in the buffer for a run still waiting for the spool.
        let Queued { reply, _bytes } = match replies.try_recv() {
            Ok(queued) => queued,
            Err(mpsc::error::TryRecvError::Empty) if !out.is_empty() => {
                if !send(&mut write, &mut out, timeout).await {
                    return;
                }
                continue;
            }
            Err(_) => match replies.recv().await {
                Some(queued) => queued,
                None => break,
            },
        };
        match reply {
            Reply::Now(text) => {
                out.extend_from_slice(text.as_bytes());
                out.push(b'\n');
            }
            Reply::Later { mut pending, run } => {
                let outcome = match pending.now() {
                    Some(outcome) => outcome,
                    None => {
                        // Not durable yet: what is ready goes out before the wait.
                        if !out.is_empty() && !send(&mut write, &mut out, timeout).await {
                            conn.count_many(Tally::Unanswered, run.len() as u64);
                            return;
                        }
                        pending.durable().await
                    }
                };
                match outcome {
                    Ok(_) => {
                        conn.count_many(Tally::Acknowledged, run.len() as u64);
                        for spooled in run {
                            write_ack(&mut out, &spooled.id);
                        }
                    }
                    Err(e) => {
                        // The spool failed to write the group. As when it is full, the first
                        // refused line is answered and the connection closes, so that no later
                        // line is acknowledged ahead of it: the client resends from that line.
                        // The lines after it go unanswered: only the answered one counts as
                        // rejected.
                        conn.count(Tally::Rejected);
                        conn.count_many(Tally::Unanswered, run.len().saturating_sub(1) as u64);
                        let first = run.first().map_or(0, |r| r.line);
                        out.extend_from_slice(error_reply(first, e, true, true).as_bytes());
                        out.push(b'\n');
                        break;
                    }
                }
            }
        }
        if out.len() >= REPLY_BUFFER && !send(&mut write, &mut out, timeout).await {
            return;
        }
    }
    if !out.is_empty() && !send(&mut write, &mut out, timeout).await {
        return;
    }
    let _ = write.shutdown().await;
}

/// Appends the line `{"ack": ID}`, written directly: it is the reply to nearly every line.
fn write_ack(out: &mut Vec<u8>, id: &str) {
    out.extend_from_slice(br#"{"ack":"#);
    // Writing JSON into a vector cannot fail, and an id is a string.
    let _ = serde_json::to_writer(&mut *out, id);
    out.extend_from_slice(b"}\n");
}

/// Writes `out` and empties it; false when the client is gone or does not read.
async fn send<W: AsyncWrite>(
    write: &mut std::pin::Pin<&mut W>,
    out: &mut Vec<u8>,
    timeout: Duration,
) -> bool {
    let sent = tokio::time::timeout(timeout, write.write_all(out)).await;
    out.clear();
    matches!(sent, Ok(Ok(())))
}
