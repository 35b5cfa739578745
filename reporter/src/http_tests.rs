//! The limits of the HTTP server, over real sockets, with short timeouts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use super::{serve, AcceptFailures, Limits, WriteDeadline};

/// A server answering `GET /` with "hello", the sender that stops it, and what tells that a slow
/// answer (`/slow`, `/slower`) has begun.
async fn start(limits: Limits) -> (std::net::SocketAddr, watch::Sender<bool>, Arc<Notify>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let begun = Arc::new(Notify::new());
    let (slow, slower) = (Arc::clone(&begun), Arc::clone(&begun));
    let router = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .route(
            "/big",
            axum::routing::get(|| async { vec![b'x'; 64 << 20] }),
        )
        .route(
            "/slow",
            axum::routing::get(|| async move {
                slow.notify_one();
                tokio::time::sleep(Duration::from_millis(300)).await;
                "done"
            }),
        )
        .route(
            "/slower",
            axum::routing::get(|| async move {
                slower.notify_one();
                tokio::time::sleep(Duration::from_secs(30)).await;
                "done"
            }),
        );
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(serve(listener, router, limits, stopped, "test server"));
    (addr, stop, begun)
}

fn limits(max_connections: usize, head_timeout_ms: u64) -> Limits {
    Limits {
        max_connections,
        head_timeout: Duration::from_millis(head_timeout_ms),
        write_timeout: Duration::from_millis(500),
        min_write_rate: 1,
        grace: Duration::from_secs(1),
    }
}

/// Reads until the server closes the connection; what it sent, and how long that took.
async fn read_until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut got))
        .await
        .expect("the server should close the connection")
        .expect("reading");
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").into_bytes()
}

/// Reads until what was read ends with `end`.
async fn read_through(stream: &mut TcpStream, end: &str) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end.as_bytes()) {
        let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
            .await
            .expect("an answer")
            .expect("reading");
        assert!(
            n > 0,
            "closed before {end:?}: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_head_timeout() {
    let (addr, _stop, _) = start(limits(8, 300)).await;
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let (got, after) = read_until_closed(&mut silent).await;
    assert!(
        after >= Duration::from_millis(250),
        "closed after {after:?}"
    );
    assert!(!got.contains("hello"), "{got:?}");
}

#[tokio::test]
async fn a_request_head_sent_in_part_is_not_waited_for_past_the_timeout() {
    let (addr, _stop, _) = start(limits(8, 300)).await;
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: te").await.unwrap();
    let (got, _) = read_until_closed(&mut slow).await;
    assert!(!got.contains("hello"), "{got:?}");
}

#[tokio::test]
async fn a_kept_alive_connection_is_answered_then_closed_once_idle() {
    let (addr, _stop, _) = start(limits(8, 300)).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(&request("/")).await.unwrap();
    let (got, _) = read_until_closed(&mut client).await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
    assert!(got.ends_with("hello"), "{got:?}");
}

#[tokio::test]
async fn past_the_connection_limit_a_client_waits_for_a_free_slot() {
    let (addr, _stop, _) = start(limits(1, 30_000)).await;
    let first = TcpStream::connect(addr).await.unwrap();
    // The kernel completes the second connection, but the server does not take it yet.
    let mut second = TcpStream::connect(addr).await.unwrap();
    second.write_all(&request("/")).await.unwrap();
    let mut buf = [0u8; 256];
    let early = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(early.is_err(), "answered while the only slot was taken");
    drop(first);
    let got = read_through(&mut second, "hello").await;
    assert!(got.starts_with("HTTP/1.1 200"), "{got:?}");
}

/// A client may send its request and close its side at once, as `nc -N` and many scripts do:
/// it still gets the whole answer, even one that takes a while to prepare.
#[tokio::test]
async fn a_client_that_closes_its_side_after_the_request_gets_its_answer() {
    let (addr, _stop, _) = start(limits(8, 30_000)).await;
    for path in ["/", "/slow"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n\r\n").as_bytes())
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        let (got, _) = read_until_closed(&mut stream).await;
        assert!(got.starts_with("HTTP/1.0 200"), "{path}: {got:?}");
    }
}

#[tokio::test]
async fn a_stop_finishes_the_request_under_way_and_refuses_new_connections() {
    let (addr, stop, begun) = start(limits(8, 30_000)).await;
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(&request("/")).await.unwrap();
    read_through(&mut idle, "hello").await;
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(&request("/slow")).await.unwrap();
    begun.notified().await;
    stop.send(true).unwrap();
    // The kept-alive connection is closed at once, while the slow answer (300 ms) is still
    // under way, rather than at the grace period's end.
    let (_, after) = read_until_closed(&mut idle).await;
    assert!(after < Duration::from_millis(250), "closed after {after:?}");
    // The answer under way is finished, within the grace period.
    let answer = read_through(&mut busy, "done").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

#[tokio::test]
async fn at_a_stop_an_answer_not_done_within_the_grace_period_is_dropped() {
    let (addr, stop, begun) = start(limits(8, 30_000)).await;
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(&request("/slower")).await.unwrap();
    begun.notified().await;
    stop.send(true).unwrap();
    let (got, after) = read_until_closed(&mut busy).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(
        after >= Duration::from_millis(800) && after < Duration::from_secs(5),
        "closed after {after:?} with a grace of 1 s"
    );
}

/// A client that asks for a big answer and never reads it loses its connection once the answer
/// has waited past the write timeout, and its slot goes to the next client.
#[tokio::test]
async fn a_client_that_takes_nothing_of_its_answer_gives_up_its_slot() {
    let (addr, _stop, _) = start(limits(1, 30_000)).await;
    let mut hoarder = TcpStream::connect(addr).await.unwrap();
    hoarder.write_all(&request("/big")).await.unwrap();
    let mut next = TcpStream::connect(addr).await.unwrap();
    next.write_all(&request("/")).await.unwrap();
    let answer = read_through(&mut next, "hello").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    drop(hoarder);
}

/// Writes `total` bytes through a [`WriteDeadline`] (a write timeout of 500 ms, a minimum rate of
/// 1 MiB/s) into a pipe of 64 KiB, whose other end takes `chunk` bytes every `pause` ms. Returns
/// how much was written before the deadline cut the writer off, or None if all of it went.
async fn trickle(total: usize, chunk: usize, pause: u64) -> Option<usize> {
    let (server, mut client) = tokio::io::duplex(64 << 10);
    let mut writer = WriteDeadline::new(server, Duration::from_millis(500), 1 << 20);
    tokio::spawn(async move {
        let mut buf = vec![0u8; chunk];
        while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    });
    let mut written = 0;
    let piece = vec![b'x'; 4096];
    while written < total {
        match writer.write(&piece).await {
            Ok(n) => written += n,
            Err(e) => {
                assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
                return Some(written);
            }
        }
    }
    None
}

/// A client taking an answer a trickle at a time (1 KiB every 50 ms: each write waits far less
/// than the write timeout) is cut off once it kept the writes waiting for longer than it earned
/// at the minimum rate; one taking 64 KiB every 20 ms (3.2 MiB/s) never is.
#[tokio::test(start_paused = true)]
async fn a_client_taking_its_answer_under_the_minimum_rate_is_cut_off() {
    let cut = trickle(1 << 20, 1024, 50).await;
    assert!(
        cut.is_some_and(|n| n < 256 << 10),
        "cut off after {cut:?} bytes"
    );
    assert_eq!(trickle(8 << 20, 64 << 10, 20).await, None);
}

/// A client that keeps taking its answer faster than the minimum rate gets all of it, though its
/// pauses keep the server's writes waiting far longer in all than the write timeout: what it
/// takes between them earns the waiting back.
#[tokio::test]
async fn a_client_taking_its_answer_fast_enough_gets_all_of_it() {
    let (addr, _stop, _) = start(Limits {
        min_write_rate: 4 << 20,
        write_timeout: Duration::from_secs(2),
        ..limits(1, 30_000)
    })
    .await;
    let mut reader = TcpStream::connect(addr).await.unwrap();
    reader.write_all(&request("/big")).await.unwrap();
    let mut got = 0;
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = vec![0u8; 1 << 20];
        // 16 pauses of 300 ms (4.8 s against a write timeout of 2 s), each after 4 MiB, which
        // earns 1 s at the minimum rate.
        while got < 64 << 20 {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {got} bytes");
            got += n;
            if got % (4 << 20) < n {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    })
    .await
    .expect("the whole answer");
}

/// Failed accepts are said at the first failure, then at most once a minute with the count since,
/// and the accept that ends a streak once after each of those lines: near the limit, accepts fail
/// and work by turns, and each turn was two lines.
#[test]
fn failed_accepts_are_said_at_the_first_then_once_a_minute() {
    let start = Instant::now();
    let at = |s: u64| start + Duration::from_secs(s);
    let mut failures = AcceptFailures::default();
    assert_eq!(failures.accepted(), None, "no streak to end");
    assert_eq!(failures.failed(at(0)), Some(1));
    for s in 1..30 {
        assert_eq!(failures.failed(at(s)), None, "{s} s into the streak");
    }
    assert_eq!(failures.accepted(), Some(30), "the end of the streak said");
    // Failing and working by turns within the minute: nothing more is said.
    for s in 30..60 {
        assert_eq!(failures.failed(at(s)), None, "{s} s");
        assert_eq!(failures.accepted(), None, "{s} s");
    }
    assert_eq!(
        failures.failed(at(60)),
        Some(60),
        "a minute on, with the count since"
    );
    assert_eq!(failures.failed(at(61)), None);
    assert_eq!(failures.accepted(), Some(2), "the streak that was said");
}
