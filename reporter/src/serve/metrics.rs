//! What the daemon reports: Prometheus text on `GET /metrics`, and the client side of
//! `buildstore status`, which prints the same for a running daemon.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::connection::{ConnectionStats, LineCounts, OpenConnection};
use super::DrainCounters;
use crate::spool::Spool;

/// Everything the metrics are read from.
pub struct Metrics {
    pub connections: Arc<ConnectionStats>,
    pub drain: Arc<DrainCounters>,
    pub spool: Spool,
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP buildstore_{name} {help}\n# TYPE buildstore_{name} {kind}\nbuildstore_{name} {value}");
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// The metrics in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let s = &self.connections;
        let d = &self.drain;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        metric(
            &mut out,
            "events_received_total",
            "counter",
            "Lines received on all connections.",
            get(&s.totals.received),
        );
        metric(
            &mut out,
            "events_acknowledged_total",
            "counter",
            "Events acknowledged once spooled.",
            get(&s.totals.acknowledged),
        );
        metric(
            &mut out,
            "events_rejected_total",
            "counter",
            "Lines answered with an error.",
            get(&s.totals.rejected),
        );
        metric(
            &mut out,
            "events_unanswered_total",
            "counter",
            "Lines received whose connection ended before they were acknowledged or rejected.",
            get(&s.totals.unanswered),
        );
        metric(
            &mut out,
            "events_applied_total",
            "counter",
            "Events applied to the store.",
            get(&d.applied),
        );
        metric(
            &mut out,
            "events_duplicate_total",
            "counter",
            "Events skipped as already applied.",
            get(&d.duplicates),
        );
        metric(
            &mut out,
            "events_rule_rejected_total",
            "counter",
            "Spooled events the rules refused (e.g. unknown build).",
            get(&d.rejected),
        );
        metric(
            &mut out,
            "store_batches_total",
            "counter",
            "Batches the store confirmed.",
            get(&d.batches),
        );
        metric(
            &mut out,
            "store_errors_total",
            "counter",
            "Failed store writes (retried).",
            get(&d.store_errors),
        );
        metric(
            &mut out,
            "store_errors_in_a_row",
            "gauge",
            "Store errors since the last write the store took (0 once it takes one).",
            get(&d.store_errors_in_a_row),
        );
        metric(
            &mut out,
            "connections_open",
            "gauge",
            "Client connections open now.",
            s.open.lock().map_or(0, |o| o.len() as u64),
        );
        metric(
            &mut out,
            "connections_total",
            "counter",
            "Client connections accepted.",
            get(&s.connections_total),
        );
        self.render_connections(&mut out);
        let depth = self.spool.depth();
        metric(
            &mut out,
            "spool_events",
            "gauge",
            "Events waiting in the spool.",
            depth.events,
        );
        metric(
            &mut out,
            "spool_bytes",
            "gauge",
            "Bytes of lines the spool holds (a group until all its events are applied).",
            depth.bytes,
        );
        let last = d.last_error.lock().map(|e| e.clone()).unwrap_or_default();
        if let Some(last) = last {
            let _ = writeln!(
                out,
                "# HELP buildstore_store_last_error_info The last store error.\n# TYPE buildstore_store_last_error_info gauge\nbuildstore_store_last_error_info{{error=\"{}\"}} 1",
                escape(&last)
            );
        }
        out
    }
}

impl Metrics {
    /// Line counts of each open connection, labelled by its number and peer. Closed connections
    /// leave the list, which keeps the number of series bounded by the open connections.
    fn render_connections(&self, out: &mut String) {
        let open: Vec<(u64, Arc<OpenConnection>)> = match self.connections.open.lock() {
            Ok(open) => open.iter().map(|(n, c)| (*n, Arc::clone(c))).collect(),
            Err(_) => return,
        };
        type Pick = fn(&LineCounts) -> &AtomicU64;
        let series: [(&str, &str, Pick); 3] = [
            ("received", "Lines received on this open connection.", |c| {
                &c.received
            }),
            (
                "acknowledged",
                "Events acknowledged on this open connection.",
                |c| &c.acknowledged,
            ),
            (
                "rejected",
                "Lines answered with an error on this open connection.",
                |c| &c.rejected,
            ),
        ];
        for (what, help, value) in series {
            let _ = writeln!(
                out,
                "# HELP buildstore_connection_lines_{what}_total {help}\n# TYPE buildstore_connection_lines_{what}_total counter"
            );
            for (number, c) in &open {
                let _ = writeln!(
                    out,
                    "buildstore_connection_lines_{what}_total{{connection=\"{number}\",peer=\"{}\"}} {}",
                    escape(&c.peer),
                    value(&c.counts).load(Ordering::Relaxed)
                );
            }
        }
    }
}

/// Serves `GET /metrics` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let m = Arc::clone(&metrics);
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    m.render(),
                )
            }
        }),
    );
    crate::http::serve(
        listener,
        app,
        crate::http::Limits::default(),
        stop,
        "metrics",
    )
    .await;
}

/// How long `buildstore status` waits for the metrics page.
const FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The most of an answer it reads.
const FETCH_MAX_BYTES: u64 = 64 << 20;

/// Fetches a running daemon's metrics (`buildstore status`).
pub async fn fetch(addr: SocketAddr) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream
            .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
            .await?;
        let mut response = Vec::new();
        // More than any metrics page: something else is listening there.
        let mut limited = (&mut stream).take(FETCH_MAX_BYTES);
        let mut buf = [0u8; 8192];
        loop {
            let n = limited.read(&mut buf).await?;
            response.extend_from_slice(&buf[..n]);
            // What does not answer in HTTP (the daemon's feed answers a line of JSON and waits
            // for more) is told at once, not after the timeout.
            let not_http = response.len() >= 5 && !response.starts_with(b"HTTP/");
            if n == 0 || not_http {
                break;
            }
        }
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(FETCH_TIMEOUT, exchange)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "no answer within {} s: is {addr} the daemon's --metrics address?",
                    FETCH_TIMEOUT.as_secs()
                ),
            )
        })??;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(std::io::Error::other(format!(
            "{addr} answered {}",
            head.lines().next().unwrap_or("nothing")
        )));
    }
    // Any web server answers 200: only the daemon's page holds its metrics.
    if !body.lines().any(|l| l.starts_with("buildstore_")) {
        return Err(std::io::Error::other(
            "something else answers there: its page holds no buildstore metrics",
        ));
    }
    Ok(body.to_owned())
}
