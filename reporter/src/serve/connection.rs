//! One client connection: every line, up to one the daemon closes on, gets exactly one reply, in
//! order — `{"ack": EVENT_ID}` once the event is durably spooled, or `{"error": ..., "line": N}`
//! for a line that is rejected. A rejected line never reaches the store, and closes the
//! connection only before the hello on a listener that needs one. The events of the lines a
//! client sent in one write go to the spool together, without waiting for durability (so a
//! client's window of events shares group commits), and are answered in order by a writer; a
//! client that stops reading fills a bounded queue and is then disconnected.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use buildstore_schema::{Event, Timestamp};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::sync::watch;

use super::engine::EventIds;
use super::replies::{write_replies, Replies, Reply, Submitted};
use crate::lines::{buffered_line, next_line, too_long, RawLine};
use crate::spool::{Appender, Sequence};

/// Before the hello, on a listener that needs one: the longest line read, and how long a client
/// has to send it. A client without the token holds no more of the daemon than that.
pub(super) const HELLO_LIMIT: usize = 4096;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const NO_HELLO_IN_TIME: &str = "no hello within 10 s: closing the connection";
/// How long a connection the daemon closes waits for the client to close its side.
const LINGER: Duration = Duration::from_secs(2);

/// What every connection shares.
pub struct Shared {
    pub appender: Appender,
    pub line_limit: usize,
    pub token: Option<String>,
    /// A client that does not take a reply within this long is disconnected.
    pub reply_timeout: Duration,
    pub ids: EventIds,
    /// The counts the metrics read, which outlive the connections (and the appender) while the
    /// spool drains at a stop.
    pub stats: Arc<ConnectionStats>,
}

/// What the connections count, for the metrics.
#[derive(Default)]
pub struct ConnectionStats {
    /// Counts over all connections since the start.
    pub totals: LineCounts,
    /// The open connections by number, for per-connection metrics; closed ones leave.
    pub open: Mutex<BTreeMap<u64, Arc<OpenConnection>>>,
    pub connections_total: AtomicU64,
}

impl Shared {
    pub fn new(
        appender: Appender,
        line_limit: usize,
        token: Option<String>,
        reply_timeout: Duration,
    ) -> Shared {
        Shared {
            appender,
            line_limit,
            token,
            reply_timeout,
            ids: EventIds::new(),
            stats: Arc::default(),
        }
    }
}

/// What happened to the lines of one connection, or of all of them.
#[derive(Default)]
pub struct LineCounts {
    pub received: AtomicU64,
    pub acknowledged: AtomicU64,
    pub rejected: AtomicU64,
    /// Received, and neither acknowledged nor rejected: the connection ended first.
    pub unanswered: AtomicU64,
}

/// An open connection, as the metrics show it.
pub struct OpenConnection {
    /// The client's address (`unix:PATH` for a Unix socket, whose clients have none).
    pub peer: String,
    pub counts: LineCounts,
}

#[derive(Clone, Copy)]
pub(super) enum Tally {
    Received,
    Acknowledged,
    Rejected,
    Unanswered,
}

impl LineCounts {
    fn add(&self, tally: Tally, n: u64) {
        let counter = match tally {
            Tally::Received => &self.received,
            Tally::Acknowledged => &self.acknowledged,
            Tally::Rejected => &self.rejected,
            Tally::Unanswered => &self.unanswered,
        };
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// One connection's view of the shared state: every count goes to both its own and the totals.
#[derive(Clone)]
pub(super) struct Conn {
    shared: Arc<Shared>,
    me: Arc<OpenConnection>,
    /// The connection's lines reach the spool in order, and none after a failed write.
    sequence: Sequence,
}

impl Conn {
    pub(super) fn count(&self, tally: Tally) {
        self.count_many(tally, 1);
    }

    pub(super) fn count_many(&self, tally: Tally, n: u64) {
        self.shared.stats.totals.add(tally, n);
        self.me.counts.add(tally, n);
    }

    /// Counts line `n` as rejected and gives the error reply after which the daemon closes the
    /// connection (a wrong token, no hello).
    fn refuse_and_close(&self, n: u64, message: impl std::fmt::Display) -> String {
        self.count(Tally::Rejected);
        error_reply(n, message, false, true)
    }
}

/// Most lines submitted to the spool together.
const RUN_LINES: usize = 256;

/// Events read and not yet submitted: the lines a client sent in one write go to the spool's
/// writer together, and get one reply entry, rather than one trip each.
#[derive(Default)]
struct Run {
    events: Vec<(Event, String)>,
    replies: Vec<Submitted>,
}

/// What to do with one line.
enum Action {
    Answer(String),
    /// Answer a hello that was accepted: no event, and no line counted.
    Welcome(String),
    /// Answer, then close the connection.
    Close(String),
    /// Spool this event and its line; acknowledge `id` once it is durable.
    Spool {
        event: Box<Event>,
        text: String,
        id: String,
    },
}

fn error(line: u64, message: impl std::fmt::Display) -> String {
    error_reply(line, message, false, false)
}

/// An error reply. `retry` marks a good event the daemon cannot take now (full spool, failed
/// spool write), which the client sends again later, unlike a rejected line. `closing` says the
/// daemon closes the connection after this reply.
pub(super) fn error_reply(
    line: u64,
    message: impl std::fmt::Display,
    retry: bool,
    closing: bool,
) -> String {
    let mut reply = json!({"error": crate::clip::clipped(&message.to_string()), "line": line});
    if retry {
        reply["retry"] = Value::Bool(true);
    }
    if closing {
        reply["closing"] = Value::Bool(true);
    }
    reply.to_string()
}

/// Serves one connection until the client closes it, a wrong token is sent, or `stop` is set.
pub async fn serve<S>(
    stream: S,
    peer: String,
    shared: Arc<Shared>,
    needs_token: bool,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let number = shared
        .stats
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let me = Arc::new(OpenConnection {
        peer,
        counts: LineCounts::default(),
    });
    if let Ok(mut open) = shared.stats.open.lock() {
        open.insert(number, Arc::clone(&me));
    }
    let conn = Conn {
        shared: Arc::clone(&shared),
        me,
        sequence: Sequence::default(),
    };
    let (read, write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let (queue, replies) = Replies::new();
    let timeout = shared.reply_timeout;
    let writer = tokio::spawn(write_replies(write, replies, conn.clone(), timeout));

    let ended = read_lines(&mut read, &conn, &queue, needs_token, &mut stop).await;
    drop(queue);
    let _ = writer.await;
    if ended.is_err() {
        // The daemon ends the connection (a refusal, a stop) while the client may still be
        // sending. Closing with its lines unread would reset the connection, and a reset destroys
        // the replies the client has not read yet. So the rest is read and dropped until the
        // client closes too, for a bounded time.
        let _ =
            tokio::time::timeout(LINGER, tokio::io::copy(&mut read, &mut tokio::io::sink())).await;
    }
    if let Ok(mut open) = shared.stats.open.lock() {
        open.remove(&number);
    }
}

/// The connection stopped reading before the client closed it: the daemon closes it after the
/// last reply (a wrong token, a refused event), the daemon stops, or the client is gone or does
/// not read its replies.
pub(super) struct Ended;

/// Reads and handles lines until the end of the stream or a reason to stop; every line read is
/// answered or queued for an answer, in order.
async fn read_lines<R: AsyncRead + Unpin>(
    read: &mut BufReader<R>,
    conn: &Conn,
    queue: &Replies,
    needs_token: bool,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Ended> {
    let mut authenticated = !needs_token;
    let hello_by = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let mut run = Run::default();
    let mut line = 0u64;
    loop {
        // Before the hello, HELLO_LIMIT whatever --line-limit is: a hello is never spooled, and a
        // token of up to 1 KiB must fit under the smallest line limit too.
        let limit = if authenticated {
            conn.shared.line_limit
        } else {
            HELLO_LIMIT
        };
        let raw = match buffered_line(read, limit) {
            Some(bytes) => RawLine::Line(bytes),
            None => {
                // Nothing more is buffered: what was read goes to the spool before the wait.
                submit(conn, &mut run, queue).await?;
                let raw = tokio::select! {
                    r = next_line(read, limit) => r,
                    _ = stop.changed() => return Err(Ended),
                    // The writer gave up on a client that does not read: drop it now, not at
                    // its next line.
                    _ = queue.queue.closed() => return Err(Ended),
                    _ = tokio::time::sleep_until(hello_by), if !authenticated => {
                        // The hello that never came is answered as a line: it counts as one.
                        conn.count(Tally::Received);
                        let late = conn.refuse_and_close(line + 1, NO_HELLO_IN_TIME);
                        queue.push(Reply::Now(late)).await?;
                        return Err(Ended);
                    }
                };
                match raw {
                    Ok(Some(raw)) => raw,
                    Ok(None) | Err(_) => return Ok(()),
                }
            }
        };
        line += 1;
        // The answer, whether the connection closes after it, and whether its line counts.
        let (reply, close, counted) = match handle_line(raw, line, conn, &mut authenticated) {
            Action::Welcome(text) => (text, false, false),
            Action::Answer(text) => (text, false, true),
            Action::Close(text) => (text, true, true),
            Action::Spool { event, text, id } => {
                run.events.push((*event, text));
                run.replies.push(Submitted { id, line });
                if run.events.len() >= RUN_LINES {
                    submit(conn, &mut run, queue).await?;
                }
                continue;
            }
        };
        if counted {
            conn.count(Tally::Received);
        }
        // An answer goes after the replies to the lines before it.
        submit(conn, &mut run, queue).await?;
        queue.push(Reply::Now(reply)).await?;
        if close {
            return Err(Ended);
        }
    }
}

/// Submits the run here, in line order, so that the spool keeps the connection's order; only
/// the wait for durability runs alongside the next lines. Its lines count as received here. When
/// the spool is full, the first line that does not fit is refused and the connection closes: a
/// later, smaller line could fit and overtake it otherwise, so the client resends from the
/// refused line once it reconnects. The lines after it are dropped unanswered, as if unread.
async fn submit(conn: &Conn, run: &mut Run, queue: &Replies) -> Result<(), Ended> {
    let Run {
        mut events,
        mut replies,
    } = std::mem::take(run);
    while let Some(first) = replies.first().map(|r| r.line) {
        let (reply, outcome) = match conn
            .shared
            .appender
            .submit(&mut events, &conn.sequence)
            .await
        {
            Ok(pending) => {
                let rest = replies.split_off(replies.len() - events.len());
                let taken = std::mem::replace(&mut replies, rest);
                conn.count_many(Tally::Received, taken.len() as u64);
                (
                    Reply::Later {
                        pending,
                        run: taken,
                    },
                    Ok(()),
                )
            }
            Err(e) => {
                conn.count(Tally::Received);
                conn.count(Tally::Rejected);
                let refused = error_reply(first, e, true, true);
                (Reply::Now(refused), Err(Ended))
            }
        };
        let lines = match &reply {
            Reply::Later { run, .. } => run.len() as u64,
            Reply::Now(_) => 0,
        };
        if queue.push(reply).await.is_err() {
            conn.count_many(Tally::Unanswered, lines);
            return Err(Ended);
        }
        outcome?;
    }
    Ok(())
}

/// The reply to a line other than a hello on a listener that needs one first.
const NEEDS_HELLO: &str =
    "this listener needs {\"type\":\"hello\",\"token\":...} first: closing the connection";

/// What to do with one line.
fn handle_line(raw: RawLine, n: u64, conn: &Conn, authenticated: &mut bool) -> Action {
    let shared = &conn.shared;
    let hello_first = || Action::Close(conn.refuse_and_close(n, NEEDS_HELLO));
    // Before the hello, any line but a hello ends the connection: an unauthenticated client is
    // not served, not even with error replies.
    let authed = *authenticated;
    let reject = |message: String| {
        if !authed {
            return hello_first();
        }
        conn.count(Tally::Rejected);
        Action::Answer(error(n, message))
    };
    let bytes = match raw {
        RawLine::TooLong(len) if !authed => {
            return Action::Close(conn.refuse_and_close(
                n,
                format!(
                    "line of {len} bytes is longer than the {HELLO_LIMIT} bytes a line may have \
                     before the hello: closing the connection"
                ),
            ));
        }
        RawLine::TooLong(len) => return reject(too_long(len, shared.line_limit)),
        RawLine::Line(bytes) => bytes,
    };
    let Ok(mut text) = String::from_utf8(bytes) else {
        return reject("line is not valid UTF-8".into());
    };
    let trimmed_len = buildstore_schema::json_line::trim(&text).len();
    if trimmed_len != text.len() {
        text = buildstore_schema::json_line::trim(&text).to_owned();
    }
    let trimmed = text.as_str();
    let value = match buildstore_schema::json_line::parse(trimmed) {
        Ok(v) => v,
        Err(e) => return reject(e.to_string()),
    };
    if value.get("type").and_then(Value::as_str) == Some("hello") {
        let given = value.get("token").and_then(Value::as_str);
        let accepted = match (&shared.token, given) {
            (None, _) => true,
            (Some(expected), Some(given)) => {
                constant_time_eq(expected.as_bytes(), given.as_bytes())
            }
            (Some(_), None) => false,
        };
        if !accepted {
            return Action::Close(conn.refuse_and_close(n, "wrong token: closing the connection"));
        }
        *authenticated = true;
        return Action::Welcome(json!({"hello": "ok"}).to_string());
    }
    if !*authenticated {
        return hello_first();
    }
    let mut event = match Event::from_value(value) {
        Ok(e) => e,
        Err(e) => return reject(e.to_string()),
    };
    if let Err(e) = crate::core::check_standalone(&event) {
        return reject(e.to_string());
    }
    // The client's own line is spooled as it came, with the id and time it lacks (the time
    // it was received, not the time the store gets it, maybe hours later).
    let text = event.stamp(text, || shared.ids.next(), Timestamp::now());
    let id = event.event_id.clone().unwrap_or_default();
    Action::Spool {
        event: Box::new(event),
        text,
        id,
    }
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
