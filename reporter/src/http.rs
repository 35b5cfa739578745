//! The HTTP server under the web view and the metrics page, with the limits a listener open to
//! anyone needs. Each connection is a file descriptor of the whole process: without limits, a
//! client that opens connections and sends nothing would use them all up, and the daemon could
//! then accept no build master either. So at most [`Limits::max_connections`] are open at once
//! (the rest wait in the kernel's queue), and a connection that does not send a whole request
//! head within [`Limits::head_timeout`] is closed, an idle kept-alive one included.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// How many connections a server keeps and how long it waits for a request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// From a connection's start, or the end of its last answer, to the end of a request head.
    pub head_timeout: Duration,
    /// How long requests still being answered at a stop may finish (a slow reader of a big log
    /// must not hold the stop up).
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            head_timeout: Duration::from_secs(10),
            grace: Duration::from_secs(5),
        }
    }
}

/// How long accepting pauses after a failed accept (out of file descriptors, typically: the
/// listener stays ready, and accepting again at once would fail again at once, in a loop).
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// Serves `router` on `listener` until `stop` turns true; then lets the requests under way finish
/// for `limits.grace` and drops the rest. `what` names the server in the log.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) {
    let slots = std::sync::Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut connections = JoinSet::new();
    while !*stop.borrow_and_update() {
        tokio::select! {
            accepted = accept(&listener, &slots) => match accepted {
                Ok((stream, slot)) => {
                    let connection = serve_one(stream, router.clone(), limits, stop.clone());
                    connections.spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what}: accept failed; pausing before accepting again");
                    tokio::select! {
                        () = tokio::time::sleep(ACCEPT_PAUSE) => {}
                        _ = stop.changed() => {}
                    }
                }
            },
            // A connection's task is freed when it ends, not when the server stops.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = stop.changed() => if changed.is_err() { break },
        }
    }
    // New clients are refused from now on.
    drop(listener);
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(limits.grace, finished).await.is_err() {
        tracing::warn!(
            "{what}: requests still open {:?} after the stop: closing them",
            limits.grace
        );
    }
}

/// The next connection, once a slot is free for it.
async fn accept(
    listener: &TcpListener,
    slots: &std::sync::Arc<Semaphore>,
) -> std::io::Result<(tokio::net::TcpStream, tokio::sync::OwnedSemaphorePermit)> {
    let slot = std::sync::Arc::clone(slots)
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, _) = listener.accept().await?;
    // A page streamed in pieces would otherwise wait on the client's delayed ACK (~40 ms).
    let _ = stream.set_nodelay(true);
    Ok((stream, slot))
}

/// Answers the requests of one connection until the client or the server closes it; at a stop,
/// the request under way is finished first.
async fn serve_one(
    stream: tokio::net::TcpStream,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout);
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
    let mut connection = std::pin::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                // A client that went away or timed out is its own business, not the server's.
                if let Err(e) = result {
                    tracing::debug!(error = %e, "HTTP connection ended");
                }
                return;
            }
            changed = stop.changed(), if !stopping => {
                if changed.is_err() || *stop.borrow() {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
