//! `buildstore serve` through real sockets: acknowledgements, bad input, tokens, and no
//! acknowledged event lost when the daemon is killed.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running daemon on a SQLite store in `dir`.
struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(dir: &Path, port: u16, extra: &[&str]) -> Daemon {
        let mut child = Command::new(env!("CARGO_BIN_EXE_buildstore"))
            .env_remove("BUILDSTORE_STORE")
            .arg("--store")
            .arg(format!("sqlite:{}", dir.join("store.db").display()))
            .args(["serve", "--listen", &format!("tcp://127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(
            line.trim(),
            "buildstore serve: ready",
            "daemon did not start"
        );
        Daemon { child, port }
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait")
    }
}

fn store(dir: &Path) -> Db {
    Db::at(format!("sqlite:{}", dir.join("store.db").display()))
}

/// Sends lines on one connection and returns one reply per line.
fn exchange(port: u16, lines: &[&str]) -> Vec<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    for l in lines {
        s.write_all(l.as_bytes()).expect("send");
        s.write_all(b"\n").expect("send");
    }
    let mut r = BufReader::new(s);
    lines
        .iter()
        .map(|_| {
            let mut reply = String::new();
            r.read_line(&mut reply).expect("reply");
            serde_json::from_str(&reply).unwrap_or_else(|_| panic!("reply is JSON: {reply:?}"))
        })
        .collect()
}

#[test]
fn every_line_gets_one_reply_in_order_and_only_valid_events_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let stream = std::fs::read_to_string(example("fetch-head-corrected.jsonl")).expect("read");
    let valid: Vec<&str> = stream.lines().collect();
    let long = "x".repeat(1 << 21);
    let bad = [
        "{",
        "[]",
        r#"{"type":"bogus","master_id":"m"}"#,
        r#"{"type":"step_started","master_id":"m","build_id":1,"step":"two","name":"x"}"#,
        long.as_str(),
        "",
    ];
    let mut mixed = Vec::new();
    for (i, v) in valid.iter().enumerate() {
        mixed.push(*v);
        mixed.push(bad[i % bad.len()]);
    }
    let replies = exchange(daemon.port, &mixed);
    for (i, (line, reply)) in mixed.iter().zip(&replies).enumerate() {
        if i % 2 == 0 {
            let sent: Value = serde_json::from_str(line).expect("json");
            assert_eq!(reply["ack"], sent["event_id"], "line {}: {reply}", i + 1);
        } else {
            assert_eq!(reply["line"], i + 1, "{reply}");
            assert!(reply["error"].is_string(), "{reply}");
        }
    }
    assert!(replies[9]["error"]
        .as_str()
        .is_some_and(|e| e.contains("longer than the limit")));
    // Events without an event_id get one, returned in the ack; a duplicate is acknowledged.
    let replies = exchange(
        daemon.port,
        &[
            r#"{"type":"builder_state","master_id":"zz","builder":"b","state":"idle"}"#,
            valid[0],
        ],
    );
    assert!(
        replies[0]["ack"]
            .as_str()
            .is_some_and(|id| id.starts_with("bs-")),
        "{}",
        replies[0]
    );
    assert_eq!(
        replies[1]["ack"],
        serde_json::from_str::<Value>(valid[0]).expect("json")["event_id"]
    );
    assert!(
        daemon.stop().success(),
        "SIGTERM ends the daemon with status 0"
    );

    let expected = Db::new();
    expected.ingest_ok(&example("fetch-head-corrected.jsonl"));
    let got = store(dir.path());
    for c in ["builds", "steps", "repository"] {
        assert_eq!(got.export(c), expected.export(c), "{c}");
    }
}

#[test]
fn a_listener_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .env_remove("BUILDSTORE_TOKEN")
        .arg("--store")
        .arg(format!("sqlite:{}", dir.path().join("s.db").display()))
        .args(["serve", "--listen", "tcp://0.0.0.0:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("is not a loopback address: a token is required"),
        "{}",
        stderr(&out)
    );
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

    let mut s = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    s.write_all(b"{\"type\":\"hello\",\"token\":\"guess\"}\n")
        .expect("send");
    s.write_all(event.as_bytes()).expect("send");
    let mut text = String::new();
    let _ = std::io::Read::read_to_string(&mut s, &mut text);
    assert!(text.contains("wrong token"), "{text}");
    assert_eq!(text.lines().count(), 1, "closed after the error: {text}");
    let replies = exchange(daemon.port, &[event]);
    assert!(
        replies[0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("needs {\"type\":\"hello\"")),
        "{}",
        replies[0]
    );
    daemon.kill();
}

/// A client that sends its events with a window of unacknowledged ones, and after a lost
/// connection reconnects and resends everything not acknowledged. Returns how many events were
/// acknowledged and over how many connections.
fn client(port: u16, events: Vec<String>, deadline: Instant) -> (usize, usize) {
    let mut acked = 0;
    let mut connections = 0;
    while acked < events.len() {
        assert!(
            Instant::now() < deadline,
            "client gave up: {acked} of {} acknowledged",
            events.len()
        );
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        connections += 1;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut writer = stream.try_clone().expect("clone");
        let mut reader = BufReader::new(stream);
        let mut sent = acked;
        loop {
            while sent < events.len() && sent - acked < 200 {
                if writer
                    .write_all(format!("{}\n", events[sent]).as_bytes())
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            let mut reply = String::new();
            match reader.read_line(&mut reply) {
                Ok(n) if n > 0 => {
                    let v: Value = serde_json::from_str(&reply).expect("reply is JSON");
                    assert!(v["ack"].is_string(), "{v}");
                    acked += 1;
                    if acked == events.len() {
                        break;
                    }
                }
                _ => break, // the daemon went away: reconnect and resend from `acked`
            }
        }
    }
    (acked, connections)
}

#[test]
fn a_killed_daemon_loses_no_acknowledged_event_and_doubles_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = buildstore::synth::lines(&buildstore::synth::Shape {
        events: 50_000,
        ..Default::default()
    });
    // Each build's events go through one client, in order, as a master would send them.
    let clients = 4;
    let mut parts: Vec<Vec<String>> = vec![Vec::new(); clients];
    for line in &lines {
        let v: Value = serde_json::from_str(line).expect("json");
        let key = v.get("build_id").map(|b| b.to_string()).unwrap_or_default();
        let n = key
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31).wrapping_add(b.into()))
            % clients;
        parts[n].push(line.clone());
    }
    let port = free_port();
    let mut daemon = Daemon::start(dir.path(), port, &[]);
    let deadline = Instant::now() + Duration::from_secs(240);
    let handles: Vec<_> = parts
        .into_iter()
        .map(|p| std::thread::spawn(move || client(port, p, deadline)))
        .collect();
    let mut rng = fastrand::Rng::with_seed(99);
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(rng.u64(150..1200)));
        daemon.kill();
        std::thread::sleep(Duration::from_millis(rng.u64(0..300)));
        daemon = Daemon::start(dir.path(), port, &[]);
    }
    let results: Vec<(usize, usize)> = handles
        .into_iter()
        .map(|h| h.join().expect("client"))
        .collect();
    assert_eq!(results.iter().map(|r| r.0).sum::<usize>(), lines.len());
    let connections: usize = results.iter().map(|r| r.1).sum();
    assert!(
        connections > clients,
        "the kills came mid-stream: {connections} connections"
    );
    assert!(daemon.stop().success());

    let all: Vec<&str> = lines.iter().map(String::as_str).collect();
    let expected = Db::new();
    expected.ingest_ok(&write_lines(dir.path(), "all.jsonl", &all));
    let got = store(dir.path());
    for c in ["builders", "builds", "steps", "repository"] {
        assert_eq!(got.export(c), expected.export(c), "{c}");
    }
}
