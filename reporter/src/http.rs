//! The HTTP server under the web view and the metrics page, with the limits a listener open to
//! anyone needs. Each connection is a file descriptor of the whole process: without limits, a
//! client that opens connections and sends nothing would use them all up, and the daemon could
//! then accept no build master either. So at most [`Limits::max_connections`] are open at once
//! (the rest wait in the kernel's queue), a connection that does not send a whole request head
//! within [`Limits::head_timeout`] is closed, an idle kept-alive one included, and so is one whose
//! client takes nothing of its answer for [`Limits::write_timeout`], or takes a long answer so
//! slowly (a trickle, under [`Limits::min_write_rate`]) that it would hold its slot for hours.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// How many connections a server keeps and how long it waits for a request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// From a connection's start, or the end of its last answer, to the end of a request head.
    pub head_timeout: Duration,
    /// How long an answer may wait for its client to take any of it (a client that asks for a
    /// big log and never reads would otherwise hold its connection for good); also the most
    /// waiting a slow client may fall behind by, in all, under `min_write_rate`.
    pub write_timeout: Duration,
    /// Bytes per second below which a client taking an answer loses its connection: waiting for
    /// it uses up `write_timeout`, and what is written to it earns that time back at this rate
    /// (see `WriteDeadline` for faster clients that may still be cut off). Reading a trickle of a
    /// big log would otherwise keep a connection for hours, and a few hundred such clients would
    /// leave no slot for anyone else.
    pub min_write_rate: u64,
    /// How long requests still being answered at a stop may finish (a slow reader of a big log
    /// must not hold the stop up).
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            head_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            min_write_rate: 1024,
            grace: Duration::from_secs(5),
        }
    }
}

/// How long accepting pauses after a failed accept (out of file descriptors, typically: the
/// listener stays ready, and accepting again at once would fail again at once, in a loop). The
/// daemon's feed pauses as long.
const ACCEPT_PAUSE: Duration = Duration::from_millis(200);

/// Failed accepts, said in the log at the first and then at most once a minute rather than at
/// every pause: out of file descriptors for a quarter of an hour made 4,500 log lines. Near the
/// limit, accepts fail and work by turns, so the minute holds across streaks.
#[derive(Debug, Default)]
pub(crate) struct AcceptFailures {
    streak: u64,
    unsaid: u64,
    said_at: Option<Instant>,
    /// A failure was said and the accept that worked since has not been.
    end_due: bool,
}

impl AcceptFailures {
    const EVERY: Duration = Duration::from_secs(60);

    /// A failed accept at `now`: when a log line is due, how many failed since the last one.
    pub(crate) fn failed(&mut self, now: Instant) -> Option<u64> {
        self.streak += 1;
        self.unsaid += 1;
        if self
            .said_at
            .is_some_and(|at| now.saturating_duration_since(at) < Self::EVERY)
        {
            return None;
        }
        self.said_at = Some(now);
        self.end_due = true;
        Some(std::mem::take(&mut self.unsaid))
    }

    /// An accept that worked: when a log line is due, how many failed in the streak it ends.
    pub(crate) fn accepted(&mut self) -> Option<u64> {
        let streak = std::mem::take(&mut self.streak);
        (streak > 0 && std::mem::take(&mut self.end_due)).then_some(streak)
    }

    /// Logs a failed accept of the server `what`, when a line is due, then pauses for
    /// [`ACCEPT_PAUSE`]: false if `stop` changed meanwhile.
    pub(crate) async fn pause(
        &mut self,
        what: &str,
        error: &std::io::Error,
        stop: &mut watch::Receiver<bool>,
    ) -> bool {
        if let Some(failures) = self.failed(Instant::now()) {
            tracing::warn!(
                %error,
                failures,
                "{what}: accept failed; pausing before each new attempt (said again at most once a minute)"
            );
        }
        tokio::select! {
            () = tokio::time::sleep(ACCEPT_PAUSE) => true,
            _ = stop.changed() => false,
        }
    }

    /// Logs an accept that ended a streak of failed ones.
    pub(crate) fn log_accepted(&mut self, what: &str) {
        if let Some(failures) = self.accepted() {
            tracing::warn!(failures, "{what}: accepting again");
        }
    }
}

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
    let mut failures = AcceptFailures::default();
    while !*stop.borrow_and_update() {
        tokio::select! {
            accepted = accept(&listener, &slots) => match accepted {
                Ok((stream, slot)) => {
                    failures.log_accepted(what);
                    let connection = serve_one(stream, router.clone(), limits, stop.clone());
                    connections.spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    // A stop is seen where the loop begins.
                    failures.pause(what, &e, &mut stop).await;
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
        .header_read_timeout(limits.head_timeout)
        // A client may close its side once its request is sent (`nc -N`, many scripts); without
        // this the end of its input cancelled an answer still being prepared.
        .half_close(true);
    let stream = WriteDeadline::new(stream, limits.write_timeout, limits.min_write_rate);
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

/// A connection whose writes fail once its client has kept them waiting for longer than it has
/// earned: it starts with `limit` of waiting, each byte written earns `1 / min_rate` s back (at
/// most up to `limit` again), and each moment a write waits spends that time. A client that takes
/// nothing is cut off after `limit`, and so is one that takes a trickle under `min_rate`.
///
/// The kernel lets a waiting write go on only once a good part of the socket's send buffer (a
/// third, on Linux) has drained, so a single wait lasts about that much over the client's rate,
/// and the cap means no wait may outlast `limit`. A client reading a big answer faster than
/// `min_rate` can still be cut off if it reads slower than about a third of its send buffer per
/// `limit`. Earning on what the client has acknowledged during a wait, rather than on what was
/// written, would mend that.
struct WriteDeadline<S> {
    inner: S,
    limit: Duration,
    min_rate: u64,
    /// Waiting the client may still cause.
    allowance: Duration,
    /// Since when a write has been waiting for the client, and the alarm for the end of its
    /// allowance.
    stalled: Option<(tokio::time::Instant, Pin<Box<tokio::time::Sleep>>)>,
}

impl<S> WriteDeadline<S> {
    fn new(inner: S, limit: Duration, min_rate: u64) -> WriteDeadline<S> {
        WriteDeadline {
            inner,
            limit,
            min_rate: min_rate.max(1),
            allowance: limit,
            stalled: None,
        }
    }

    /// What a write that `progress` gave becomes: the wait it ended is spent, the bytes it took
    /// are earned, and a write that waits past the allowance is an error, which ends the
    /// connection.
    fn watch(
        &mut self,
        cx: &mut Context<'_>,
        progress: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(result) = &progress {
            if let Some((since, _)) = self.stalled.take() {
                self.allowance = self.allowance.saturating_sub(since.elapsed());
            }
            if let Ok(n) = result {
                let earned = Duration::from_secs_f64(*n as f64 / self.min_rate as f64);
                self.allowance = (self.allowance + earned).min(self.limit);
            }
            return progress;
        }
        let allowance = self.allowance;
        let (_, alarm) = self.stalled.get_or_insert_with(|| {
            (
                tokio::time::Instant::now(),
                Box::pin(tokio::time::sleep(allowance)),
            )
        });
        match alarm.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client takes the answer too slowly (under {} bytes/s, or nothing for \
                     {:?})",
                    self.min_rate, self.limit
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let progress = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, progress)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let progress = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, progress)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let progress = Pin::new(&mut this.inner).poll_flush(cx).map_ok(|()| 0);
        this.watch(cx, progress).map_ok(|_| ())
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
