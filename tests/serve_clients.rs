//! `buildstore serve` as its clients see it: the example clients in Python and Rust, what the
//! daemon adds to an event sent without an id or a time, and the token a client must say hello
//! with.

mod common;

use std::io::{Read, Write as _};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;
use serde_json::Value;

/// `examples/socket_client.py`, started against the daemon at `port` on `file`; it prints each
/// reply to `replies`.
fn python_client(file: &std::path::Path, port: u16, replies: std::process::Stdio) -> Client {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/socket_client.py");
    let child = Command::new("python3")
        .arg(example)
        .arg(file)
        .args(["127.0.0.1", &port.to_string()])
        .stdout(replies)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    Client(Some(child))
}

/// The Python example's run to its end, with the replies it printed.
fn python_run(file: &std::path::Path, port: u16) -> std::process::Output {
    python_client(file, port, std::process::Stdio::piped()).finish()
}

/// A running example client, killed if the test ends before it does: it would retry forever.
struct Client(Option<std::process::Child>);

/// How long an example client may take to finish its stream.
const FINISH_WITHIN: Duration = Duration::from_secs(180);

impl Client {
    /// Waits for the client to end, and fails the test if it has not within [`FINISH_WITHIN`]:
    /// a client that regressed into retrying forever fails the test rather than hang it.
    fn finish(mut self) -> std::process::Output {
        let mut child = self.0.take().expect("running");
        // Read while waiting: a client that fills a pipe nobody reads would never end.
        let stdout = read_all(child.stdout.take());
        let stderr = read_all(child.stderr.take());
        let deadline = Instant::now() + FINISH_WITHIN;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the example client did not finish within {FINISH_WITHIN:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::process::Output {
            status,
            stdout: stdout.join().expect("stdout reader"),
            stderr: stderr.join().expect("stderr reader"),
        }
    }

    /// Whether the client is still running.
    fn running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Everything `pipe` gives until it closes, read on a thread of its own.
fn read_all<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        bytes
    })
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `examples/socket_client.rs`, built with the workspace's examples (`cargo test --workspace`
/// builds them before it runs the tests).
fn rust_client_bin() -> std::path::PathBuf {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_buildstore"))
        .parent()
        .expect("target directory")
        .join("examples/socket_client");
    assert!(
        bin.exists(),
        "{} is not built: run cargo test --workspace, which builds the examples",
        bin.display()
    );
    bin
}

/// The Rust example client, started against the daemon at `port` on `file`.
fn rust_client(file: &std::path::Path, port: u16) -> Client {
    let child = Command::new(rust_client_bin())
        .arg(file)
        .arg(format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the Rust example client");
    Client(Some(child))
}

/// Both example clients reconnect and send again what was not acknowledged when the daemon is
/// killed in the middle of their stream and started again: the store ends as one clean ingest
/// of the stream.
#[test]
fn the_example_clients_resend_across_a_daemon_killed_mid_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let daemon = Daemon::start(dir.path(), port, &[]);
    let lines = buildstore::synth::lines_of(40_000);
    let file = write_lines(dir.path(), "stream.jsonl", &lines);
    let mut rust = rust_client(&file, port);
    let mut python = python_client(&file, port, std::process::Stdio::null());
    daemon.wait_until("part of the stream received", |s| {
        s["events_received_total"] > 2_000.0
    });
    // Neither is done before the kill, so that both have to come back.
    assert!(rust.running() && python.running(), "a client ended early");
    daemon.kill();
    let daemon = Daemon::start(dir.path(), port, &[]);
    let out = rust.finish();
    assert!(out.status.success(), "Rust client: {}", stderr(&out));
    let out = python.finish();
    assert!(out.status.success(), "Python client: {}", stderr(&out));
    // Each came back to the daemon started again.
    assert!(daemon.status()["connections_total"] >= 2.0);
    assert!(daemon.stop().success());
    assert_same_as_one_clean_ingest(&store(dir.path()), &lines, dir.path());
}

/// How a connection ends that the daemon could not end on purpose: a reset, half a reply. A
/// listener in the test stands in for a daemon killed at such a moment, and checks what the Rust
/// example sends on the next connection. It gave up at a reset, losing the rest of its stream,
/// and took half an ack for a whole one, never sending that event again.
#[test]
fn the_rust_example_sends_again_after_a_reset_or_half_a_reply() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().expect("tempdir");
    let lines: Vec<String> = (0..5)
        .map(|i| format!(r#"{{"type":"builder_state","master_id":"m","event_id":"e{i}","builder":"b","state":"idle"}}"#))
        .collect();
    let file = write_lines(dir.path(), "five.jsonl", &lines);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("address").port();
    // The next connection, within 30 s; reads on it fail after 30 s rather than hang.
    let accept = || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).expect("blocking");
                    conn.set_read_timeout(Some(Duration::from_secs(30)))
                        .expect("timeout");
                    return conn;
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("the client did not connect: {e}"),
            }
        }
    };
    let next_line = |reader: &mut BufReader<TcpStream>| {
        let mut line = String::new();
        reader.read_line(&mut line).expect("read");
        line.trim_end().to_owned()
    };
    // Every line the client sent on `conn`, then its close, once this side has ended writing.
    let until_closed = |conn: TcpStream, mut reader: BufReader<TcpStream>| {
        conn.shutdown(std::net::Shutdown::Write).expect("end");
        let _ = reader.read_to_end(&mut Vec::new());
    };
    let client = rust_client(&file, port);
    // A reset: one byte read, and the socket closed with the rest unread.
    let mut conn = accept();
    conn.read_exact(&mut [0u8]).expect("read");
    drop(conn);
    // Half a reply: e0 acknowledged, and the ack of e1 cut short.
    let mut conn = accept();
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    assert_eq!(next_line(&mut reader), lines[0], "sent again from e0");
    conn.write_all(b"{\"ack\":\"e0\"}\n{\"ack\":\"e")
        .expect("reply");
    until_closed(conn, reader);
    // Every reply, in order.
    let mut conn = accept();
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    for (i, line) in lines.iter().enumerate().skip(1) {
        assert_eq!(&next_line(&mut reader), line, "from e1 on");
        writeln!(conn, r#"{{"ack":"e{i}"}}"#).expect("ack");
    }
    let out = client.finish();
    assert!(out.status.success(), "{}", stderr(&out));

    // An error that closes the connection for good (here, a hello the listener wants) ends the
    // client with an error, rather than count the line as sent and go on.
    let client = rust_client(&file, port);
    let mut conn = accept();
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    for line in &lines {
        assert_eq!(&next_line(&mut reader), line);
    }
    conn.write_all(b"{\"error\":\"this listener needs a hello\",\"line\":1,\"closing\":true}\n")
        .expect("reply");
    until_closed(conn, reader);
    let out = client.finish();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_says(&out, "this listener needs a hello");
}

/// The Python example stops when its own output closes (`| head`), rather than take that for
/// the daemon gone and send again forever; and it says how to run it when its arguments are not
/// a file and an optional host and port.
#[test]
fn the_python_example_stops_when_its_output_closes_and_says_how_to_run_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let many = buildstore::synth::lines_of(50_000);
    let file = write_lines(dir.path(), "many.jsonl", &many);
    let mut client = python_client(&file, daemon.port, std::process::Stdio::piped());
    let mut stdout = client
        .0
        .as_mut()
        .and_then(|c| c.stdout.take())
        .expect("stdout");
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).expect("the first replies");
    drop(stdout);
    let out = client.finish();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_says(&out, "standard output closed; stopping");
    assert!(!stderr(&out).contains("retrying"), "{}", stderr(&out));
    assert!(daemon.stop().success());

    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/socket_client.py");
    let name = file.display().to_string();
    for args in [
        &[][..],
        &[name.as_str(), "127.0.0.1"],
        &[name.as_str(), "h", "port"],
        &[name.as_str(), "h", "99999"],
    ] {
        let out = Command::new("python3")
            .arg(&example)
            .args(args)
            .output()
            .expect("run python3");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_says(
            &out,
            "usage: python3 socket_client.py EVENTS.jsonl [HOST PORT]",
        );
    }
    let out = Command::new("python3")
        .arg(&example)
        .arg(dir.path().join("missing.jsonl"))
        .output()
        .expect("run python3");
    assert_eq!(out.status.code(), Some(1));
    assert_says(&out, "cannot read the events");
}

/// The Rust example says so of an address it cannot resolve, rather than retry for ever as if
/// the daemon were down.
#[test]
fn the_rust_example_refuses_an_address_it_cannot_resolve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = write_lines(dir.path(), "one.jsonl", &buildstore::synth::lines_of(1));
    let out = Command::new(rust_client_bin())
        .arg(&file)
        .arg("no-such-address")
        .output()
        .expect("run the Rust example client");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_says(&out, "socket_client: \"no-such-address\" is no HOST:PORT");
}

/// The Python example splits its file at newlines only: a log line may hold U+2028 or U+0085,
/// which JSON leaves unescaped. It exits 1 when the daemon refuses a line.
#[test]
fn the_python_example_feeds_every_event_and_says_when_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let text = "pass\u{2028}next\u{85}end";
    let log = format!(
        r#"{{"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","offset":0,"text":"{text}"}}"#
    );
    let file = write_lines(dir.path(), "events.jsonl", &[BUILD, STEP, &log]);
    let out = python_run(&file, daemon.port);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("\"ack\"")
            .count(),
        3
    );
    // Many more lines than its window: it sends more as the replies come.
    let many = buildstore::synth::lines_of(3_000);
    let out = python_run(&write_lines(dir.path(), "many.jsonl", &many), daemon.port);
    assert!(out.status.success(), "{}", stderr(&out));
    let replies = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(replies, many.len());
    let bad = write_lines(dir.path(), "bad.jsonl", &["{not json"]);
    let out = python_run(&bad, daemon.port);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(daemon.stop().success());
    assert_eq!(
        store(dir.path()).log("m/1/0", "stdout").stdout,
        text.as_bytes()
    );
}

/// An event without a `time` happened when the daemon received it, not when the store got it:
/// here the store is locked for a while, as by a long transaction of another program. An event
/// without an id gets one added, and the rest of its line is spooled as sent.
#[test]
fn events_without_a_time_keep_the_time_they_were_received() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let lock = rusqlite::Connection::open(dir.path().join("store.db")).expect("open the store");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the store");
    let sent = chrono::Utc::now();
    // Three hundred empty changes: written out again as events, each would spell out its seven
    // fields, and the line would be 20 times as long.
    let changes = vec!["{}"; 300].join(",");
    let build = format!(
        r#"{{"type":"build_started","master_id":"m","build_id":1,"builder":"b","number":1,"changes":[{changes}]}}"#
    );
    // Nor is a number written in another way: 9e15 as a JSON value is 9000000000000000.0.
    let numbers = vec!["9e15"; 180].join(",");
    let property = format!(
        r#"{{"type":"property","master_id":"m","build_id":1,"name":"n","value":[{numbers}]}}"#
    );
    let replies = exchange(daemon.port, &[&build, &property]);
    assert!(replies[0]["ack"].is_string(), "{}", replies[0]);
    assert!(replies[1]["ack"].is_string(), "{}", replies[1]);
    let lines = (build.len() + property.len()) as f64;
    let spooled = daemon.status()["spool_bytes"];
    assert!(
        spooled < lines + 200.0,
        "{spooled} bytes spooled for {lines}"
    );
    // Killed while the store is locked, the daemon has applied nothing, and whatever it had
    // folded is gone with it. The next daemon folds the spooled lines seconds later: only a time
    // written into the line at the door keeps the time the event was received.
    daemon.kill();
    std::thread::sleep(Duration::from_secs(3));
    lock.execute_batch("ROLLBACK").expect("unlock the store");
    drop(lock);
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    daemon.wait_until("the event applied", |s| s["events_applied_total"] >= 1.0);
    assert!(daemon.stop().success());
    let doc = store(dir.path()).doc("builds", "m/1");
    let started = doc["time_start"]["$date"].as_str().expect("a date");
    let started = chrono::DateTime::parse_from_rfc3339(started).expect("RFC 3339");
    let late = started.signed_duration_since(sent);
    assert!(
        late < chrono::Duration::seconds(2),
        "stored as {started}, sent at {sent}: {late:?} later"
    );
}

/// Sends `bytes` on a new connection and returns the one reply the daemon gives before it closes
/// the connection, which says so (`closing`). A daemon that kept the connection open would leave
/// the read waiting: it fails after `wait` instead.
fn last_word(port: u16, bytes: &[u8], wait: Duration) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(wait)).expect("timeout");
    s.write_all(bytes).expect("send");
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut text);
    assert_eq!(text.lines().count(), 1, "closed after the error: {text}");
    let reply: Value = serde_json::from_str(&text).expect("JSON reply");
    assert_eq!(reply["closing"], true, "{reply}");
    reply
}

#[test]
fn a_wrong_token_is_rejected_and_the_connection_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &["--token", "s3cret"]);
    let event = r#"{"type":"builder_state","master_id":"m","builder":"b","state":"idle"}"#;
    let replies = exchange(
        daemon.port,
        &[r#"{"type":"hello","token":"s3cret"}"#, event],
    );
    assert_eq!(replies[0]["hello"], "ok");
    assert!(replies[1]["ack"].is_string(), "{}", replies[1]);

    let reply = last_word(
        daemon.port,
        format!("{{\"type\":\"hello\",\"token\":\"guess\"}}\n{event}").as_bytes(),
        Duration::from_secs(10),
    );
    assert!(
        reply["error"]
            .as_str()
            .is_some_and(|e| e.contains("wrong token")),
        "{reply}"
    );
    let replies = exchange(daemon.port, &[event]);
    assert!(
        replies[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("needs {\"type\":\"hello\"")),
        "{}",
        replies[0]
    );
    assert_eq!(replies[0]["closing"], true, "{}", replies[0]);
    // Nor is a line that is not even an event: no service before the hello.
    for first in ["{oops", "\u{1}not json"] {
        let sent = format!("{first}\n{{\"type\":\"hello\",\"token\":\"s3cret\"}}\n{event}\n");
        let reply = last_word(daemon.port, sent.as_bytes(), Duration::from_secs(10));
        assert!(
            reply["error"]
                .as_str()
                .is_some_and(|e| e.contains("needs {\"type\":\"hello\"")),
            "{reply}"
        );
    }
    // A client without the token holds little of the daemon, and not for long: a line before
    // the hello is read up to 4 KiB only, and the hello must come within 10 s.
    let port = daemon.port;
    let silent = std::thread::spawn(move || last_word(port, b"", Duration::from_secs(30)));
    let started = std::time::Instant::now();
    let unended = format!("{{\"type\":\"hello\",\"token\":\"{}", "x".repeat(1 << 20));
    let reply = last_word(daemon.port, unended.as_bytes(), Duration::from_secs(30));
    assert_eq!(
        reply["error"], "no hello within 10 s: closing the connection",
        "{reply}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    let reply = silent.join().expect("the silent client");
    assert_eq!(
        reply["error"], "no hello within 10 s: closing the connection",
        "{reply}"
    );
    let hello = format!(
        "{{\"type\":\"hello\",\"token\":\"s3cret\",\"pad\":\"{}\"}}",
        "x".repeat(5000)
    );
    let sent = format!("{hello}\n{event}\n");
    let reply = last_word(daemon.port, sent.as_bytes(), Duration::from_secs(10));
    assert!(
        reply["error"].as_str().is_some_and(|e| e.contains(
            "line of 5042 bytes is longer than the 4096 bytes a line may have before the hello"
        )),
        "a hello longer than 4 KiB is not read: {reply}"
    );
    // Every line answered counts as received, the two hellos that never came included, but for
    // the hello answered "ok", which is no event: each was acknowledged or rejected.
    let m = daemon.status();
    assert_eq!(
        m["events_received_total"],
        m["events_acknowledged_total"] + m["events_rejected_total"],
        "{m:?}"
    );
    daemon.kill();

    // A hello is read up to 4 KiB whatever the line limit: the longest token fits under the
    // smallest limit.
    let token = "t".repeat(1024);
    let small_dir = dir.path().join("small");
    std::fs::create_dir(&small_dir).expect("mkdir");
    let small = Daemon::start(
        &small_dir,
        free_port(),
        &["--token", &token, "--line-limit", "1024"],
    );
    let hello = format!(r#"{{"type":"hello","token":"{token}"}}"#);
    let replies = exchange(small.port, &[&hello, event]);
    assert_eq!(replies[0]["hello"], "ok", "{}", replies[0]);
    assert!(replies[1]["ack"].is_string(), "{}", replies[1]);
    small.kill();
}
