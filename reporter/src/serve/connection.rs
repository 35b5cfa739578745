//! One client connection: every line gets exactly one reply, in order — `{"ack": EVENT_ID}` once
//! the event is durably spooled, or `{"error": ..., "line": N}` for a line that is rejected. A
//! rejected line never closes the connection and never reaches the store. Lines are spooled
//! concurrently (so a client's window of events shares group commits) and answered in order by a
//! writer; a client that stops reading fills a bounded queue and is then disconnected.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buildstore_schema::Event;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::lines::{next_line, RawLine};
use crate::spool::Appender;

/// Replies waiting to be written; past this the connection stops reading.
const IN_FLIGHT: usize = 1024;
/// A client that does not take a reply within this long is disconnected.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection shares.
pub struct Shared {
    pub appender: Appender,
    pub line_limit: usize,
    pub token: Option<String>,
    /// Makes assigned event ids unique across restarts of the daemon.
    pub boot: String,
    pub assigned: AtomicU64,
    pub received: AtomicU64,
    pub acknowledged: AtomicU64,
    pub rejected: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
}

/// The reply to one line, possibly still waiting for the spool.
enum Reply {
    Now(String),
    Later(JoinHandle<String>),
}

/// What to do with one line.
enum Action {
    Answer(String),
    /// Answer, then close the connection.
    Close(String),
    /// Spool this event line; acknowledge `id` once it is durable.
    Spool {
        line: String,
        id: String,
    },
}

fn error(line: u64, message: impl std::fmt::Display) -> String {
    json!({"error": message.to_string(), "line": line}).to_string()
}

/// Serves one connection until the client closes it, a wrong token is sent, or `stop` is set.
pub async fn serve<S>(
    stream: S,
    shared: Arc<Shared>,
    needs_token: bool,
    mut stop: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    shared.connections_open.fetch_add(1, Ordering::Relaxed);
    shared.connections_total.fetch_add(1, Ordering::Relaxed);
    let (read, mut write) = tokio::io::split(stream);
    let mut read = BufReader::new(read);
    let (queue, mut replies) = mpsc::channel::<Reply>(IN_FLIGHT);
    let writer = tokio::spawn(async move {
        while let Some(reply) = replies.recv().await {
            let mut text = match reply {
                Reply::Now(t) => t,
                Reply::Later(task) => task
                    .await
                    .unwrap_or_else(|e| error(0, format!("internal error: {e}"))),
            };
            text.push('\n');
            match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(text.as_bytes())).await {
                Ok(Ok(())) => {}
                _ => return, // gone, or not reading: drop the connection
            }
        }
        let _ = write.shutdown().await;
    });

    let mut authenticated = !needs_token;
    let mut number = 0u64;
    loop {
        let raw = tokio::select! {
            r = next_line(&mut read, shared.line_limit) => r,
            _ = stop.changed() => break,
        };
        let raw = match raw {
            Ok(Some(raw)) => raw,
            Ok(None) | Err(_) => break,
        };
        number += 1;
        shared.received.fetch_add(1, Ordering::Relaxed);
        let (reply, close) = match handle_line(raw, number, &shared, &mut authenticated) {
            Action::Answer(text) => (Reply::Now(text), false),
            Action::Close(text) => (Reply::Now(text), true),
            Action::Spool { line, id } => (spool(&shared, line, id, number).await, false),
        };
        if queue.send(reply).await.is_err() || close {
            break;
        }
    }
    drop(queue);
    let _ = writer.await;
    shared.connections_open.fetch_sub(1, Ordering::Relaxed);
}

/// Submits the line here, in line order, so that the spool keeps the connection's order; only
/// the wait for durability runs alongside the next lines.
async fn spool(shared: &Arc<Shared>, line: String, id: String, n: u64) -> Reply {
    match shared.appender.submit(line).await {
        Ok(pending) => {
            let shared = Arc::clone(shared);
            Reply::Later(tokio::spawn(async move {
                match pending.durable().await {
                    Ok(_) => {
                        shared.acknowledged.fetch_add(1, Ordering::Relaxed);
                        json!({"ack": id}).to_string()
                    }
                    Err(e) => {
                        shared.rejected.fetch_add(1, Ordering::Relaxed);
                        error(n, e)
                    }
                }
            }))
        }
        Err(e) => {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            Reply::Now(error(n, e))
        }
    }
}

/// What to do with one line.
fn handle_line(raw: RawLine, n: u64, shared: &Shared, authenticated: &mut bool) -> Action {
    let reject = |message: String| {
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        Action::Answer(error(n, message))
    };
    let bytes = match raw {
        RawLine::TooLong(len) => {
            return reject(format!(
                "line of {len} bytes is longer than the limit of {} bytes",
                shared.line_limit
            ))
        }
        RawLine::Line(bytes) => bytes,
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return reject("line is not valid UTF-8".into());
    };
    let value: Value = match serde_json::from_str(text.trim()) {
        Ok(v) => v,
        Err(e) => return reject(format!("not valid JSON: {e}")),
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
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            return Action::Close(error(n, "wrong token: closing the connection"));
        }
        *authenticated = true;
        return Action::Answer(json!({"hello": "ok"}).to_string());
    }
    if !*authenticated {
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        return Action::Close(error(
            n,
            "this listener needs {\"type\":\"hello\",\"token\":...} first: closing the connection",
        ));
    }
    let mut event = match Event::from_value(value) {
        Ok(e) => e,
        Err(e) => return reject(e.to_string()),
    };
    if event.event_id.is_none() {
        let seq = shared.assigned.fetch_add(1, Ordering::Relaxed);
        event.event_id = Some(format!("bs-{}-{seq}", shared.boot));
    }
    let id = event.event_id.clone().unwrap_or_default();
    Action::Spool {
        line: event.to_line(),
        id,
    }
}

/// Compares secrets without leaking where they differ through timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
