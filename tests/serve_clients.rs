//! `buildstore serve` as its clients see it: the example client in Python, and what the daemon
//! adds to an event sent without an id or a time.

mod common;

use std::process::Command;
use std::time::Duration;

use common::daemon::*;
use common::*;

/// `examples/socket_client.py`, run against the daemon at `port` on `file`.
fn python_client(file: &std::path::Path, port: u16) -> std::process::Output {
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/socket_client.py");
    Command::new("python3")
        .arg(example)
        .arg(file)
        .args(["127.0.0.1", &port.to_string()])
        .output()
        .expect("run python3")
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
    let out = python_client(&file, daemon.port);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("\"ack\"")
            .count(),
        3
    );
    // Many more lines than its window: it sends more as the replies come.
    let many = buildstore::synth::lines(&buildstore::synth::Shape {
        events: 3_000,
        ..Default::default()
    });
    let out = python_client(&write_lines(dir.path(), "many.jsonl", &many), daemon.port);
    assert!(out.status.success(), "{}", stderr(&out));
    let replies = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(replies, many.len());
    let bad = write_lines(dir.path(), "bad.jsonl", &["{not json"]);
    let out = python_client(&bad, daemon.port);
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
