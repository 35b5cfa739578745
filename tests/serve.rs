//! `buildstore serve` through real sockets: acknowledgements, bad input, stops, outages, and no
//! acknowledged event lost when the daemon is killed.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;
use serde_json::Value;

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
        r#"{"type":"property","master_id":"m","build_id":1,"name":"n","value":18446744073709551616}"#,
        r#"{"type":"property","master_id":"m","build_id":1,"name":"n","value":{"$date":1}}"#,
        "\u{a0}{\"type\":\"builder_added\",\"master_id\":\"m\",\"builder\":\"b\"}",
        r#"{"type":"builder_added","master_id":"m","builder":""}"#,
        // Taken, it would set a property of a build the valid lines make.
        r#"{"type":"property","master_id":"bm02","build_id":18377,"name":"a","name":"b","value":1}"#,
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
        .is_some_and(|e| e.contains("longer than the line limit")));
    assert!(
        replies[13]["error"]
            .as_str()
            .is_some_and(|e| e.contains("18446744073709551616 does not fit in 64 bits")),
        "{}",
        replies[13]
    );
    assert_eq!(
        replies[19]["error"], "field `builder` must not be empty",
        "refused at the door too"
    );
    assert_eq!(
        replies[11]["error"],
        "empty line: an event is one JSON object per line"
    );
    assert!(
        replies[21]["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("the key \"name\" is given twice in one object")),
        "{}",
        replies[21]
    );
    // Refused at the door, though the drain's rules would refuse it too: no ack for it.
    assert!(
        replies[15]["error"]
            .as_str()
            .is_some_and(|e| e.contains("the key \"$date\" starts with `$`")),
        "{}",
        replies[15]
    );
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

/// Whatever a line holds in fields the event does not know, the daemon reads its spooled line
/// back as it read the line: an acknowledged event is stored, not skipped as unreadable. The
/// store is locked while the lines come and the daemon killed, so that the next one reads them
/// from the spool file.
#[test]
fn an_acknowledged_line_is_read_back_from_the_spool_as_it_was_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let lock = rusqlite::Connection::open(dir.path().join("store.db")).expect("open the store");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the store");
    // serde_json's own reader of values, built as the daemon is, takes this key for a marker
    // and the string it holds for JSON text.
    let lines = [
        r#"{"type":"builder_added","master_id":"m","event_id":"e1","builder":"b","x":{"$serde_json::private::RawValue":"not json"}}"#,
        r#"{"type":"builder_added","master_id":"m","event_id":"e2","builder":"c","x":{"$serde_json::private::RawValue":"[1]"}}"#,
    ];
    let replies = exchange(daemon.port, &lines);
    assert_eq!(replies[0]["ack"], "e1", "{}", replies[0]);
    assert_eq!(replies[1]["ack"], "e2", "{}", replies[1]);
    daemon.kill();
    lock.execute_batch("ROLLBACK").expect("unlock the store");
    drop(lock);
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    daemon.wait_until("the spool drains", |s| s["spool_events"] == 0.0);
    assert!(daemon.stop().success());
    let got = store(dir.path());
    assert_eq!(got.doc("builders", "m/b")["name"], "b");
    assert_eq!(got.doc("builders", "m/c")["name"], "c");
}

/// At a stop, the metrics still answer while the spool drains into a store that is slow to take
/// it (here locked by another program for a while), so that `status` shows the drain going.
#[test]
fn the_metrics_answer_while_the_spool_drains_at_a_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &["--grace", "60"]);
    let lock = rusqlite::Connection::open(dir.path().join("store.db")).expect("open the store");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the store");
    let lines = buildstore::synth::lines_of(200);
    let deadline = Instant::now() + Duration::from_secs(60);
    assert_eq!(client(daemon.port, lines.clone(), deadline).0, lines.len());
    daemon.terminate();
    std::thread::sleep(Duration::from_secs(1));
    let mut daemon = daemon;
    assert!(daemon.child.try_wait().expect("wait").is_none(), "draining");
    let draining = daemon.status();
    assert!(draining["spool_events"] > 0.0, "{draining:?}");
    lock.execute_batch("ROLLBACK").expect("unlock the store");
    drop(lock);
    // Drained, it exits of itself, well within its grace period.
    let exited = daemon.exited_by(deadline, "still draining");
    assert!(exited.success(), "{exited:?}");
    assert_same_as_one_clean_ingest(&store(dir.path()), &lines, dir.path());
}

/// With the store down, the drain would go on for the whole grace period: a second signal ends
/// it at once, and the next start applies what the spool kept.
#[test]
fn a_second_signal_stops_at_once_and_the_next_start_applies_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "second") else {
        return; // needs a server this test can stop
    };
    let peer_port = peer.port;
    let spool = dir.path().join("spool");
    let daemon = Daemon::on(&uri, &spool, free_port(), &[]);
    peer.kill();
    let lines = buildstore::synth::lines_of(500);
    let deadline = Instant::now() + Duration::from_secs(60);
    assert_eq!(client(daemon.port, lines.clone(), deadline).0, lines.len());
    // A terminal's SIGINT and a wrapper's SIGTERM, sent together, are one stop.
    daemon.terminate();
    daemon.signal("INT");
    std::thread::sleep(Duration::from_secs(3));
    let mut daemon = daemon;
    assert!(
        daemon.child.try_wait().expect("wait").is_none(),
        "still draining into a store that is down (grace 300 s)"
    );
    daemon.terminate();
    let stopped = daemon.exited_by(deadline, "a second signal did not stop it");
    assert!(stopped.success(), "{stopped:?}");

    let peer = restart_peer(dir.path(), peer_port);
    let daemon = Daemon::on(&uri, &spool, free_port(), &[]);
    daemon.wait_until("the spool drains", |s| s["spool_events"] == 0.0);
    assert!(daemon.stop().success());
    assert_same_as_one_clean_ingest(&Db::at(peer.uri("second")), &lines, dir.path());
    peer.kill();
}

/// A daemon killed between the store's commit of a batch and the spool's release leaves a spool
/// that still holds events the store has. A copy of a spool taken before it drained is such a
/// spool: started on it, the daemon releases what the store recorded as taken and folds none of
/// it again, so the step's end the rules refused (it came before its build) stays refused.
#[test]
fn a_spool_holding_what_the_store_already_has_is_released_without_folding_it_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "progress") else {
        return; // needs a server this test can stop
    };
    let peer_port = peer.port;
    peer.kill();
    let spool = dir.path().join("spool");
    let daemon = Daemon::on(&uri, &spool, free_port(), &["--grace", "1"]);
    let mut lines = buildstore::synth::lines_of(300);
    lines.extend(
        [
            r#"{"type":"step_finished","master_id":"mx","event_id":"x1","build_id":1,"step":0,"result":2}"#,
            r#"{"type":"builder_added","master_id":"mx","event_id":"x2","builder":"bx"}"#,
            r#"{"type":"build_started","master_id":"mx","event_id":"x3","builder":"bx","build_id":1,"number":1}"#,
            r#"{"type":"step_started","master_id":"mx","event_id":"x4","build_id":1,"step":0,"name":"compile"}"#,
        ]
        .map(String::from),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    assert_eq!(client(daemon.port, lines.clone(), deadline).0, lines.len());
    assert!(daemon.stop().success(), "stopped after its grace period");
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy).expect("mkdir");
    for file in std::fs::read_dir(&spool).expect("spool dir") {
        let file = file.expect("entry").path();
        std::fs::copy(&file, copy.join(file.file_name().expect("name"))).expect("copy");
    }

    let peer = restart_peer(dir.path(), peer_port);
    let daemon = Daemon::on(&uri, &spool, free_port(), &[]);
    let drained = daemon.wait_until("the spool drains", |s| {
        s["spool_events"] == 0.0 && s["events_rule_rejected_total"] == 1.0
    });
    assert_eq!(
        drained["events_applied_total"],
        (lines.len() - 1) as f64,
        "{drained:?}"
    );
    assert!(daemon.stop().success());
    let db = Db::at(peer.uri("progress"));
    let exported = |db: &Db| ["builders", "builds", "steps", "repository"].map(|c| db.export(c));
    let before = exported(&db);
    let step = before[2]
        .iter()
        .find(|s| s["_id"] == "mx/1/0")
        .expect("the step");
    assert!(
        step["result"].is_null(),
        "the early end was refused: {step}"
    );

    let daemon = Daemon::on(&uri, &copy, free_port(), &[]);
    let resumed = daemon.wait_until("the copy is released", |s| s["spool_events"] == 0.0);
    for counted in [
        "events_applied_total",
        "events_duplicate_total",
        "events_rule_rejected_total",
    ] {
        assert_eq!(resumed[counted], 0.0, "{counted}: {resumed:?}");
    }
    assert!(daemon.stop().success());
    assert_eq!(exported(&db), before, "nothing folded again");
    peer.kill();
}

#[test]
fn a_killed_daemon_loses_no_acknowledged_event_and_doubles_none() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = buildstore::synth::lines_of(50_000);
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

    assert_same_as_one_clean_ingest(&store(dir.path()), &lines, dir.path());
}

#[test]
fn status_prints_what_the_daemon_received_acknowledged_and_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let lines = [
        r#"{"type":"builder_state","master_id":"m","builder":"b","state":"idle"}"#,
        "oops",
        r#"{"type":"log","master_id":"m","event_id":"lost-1","build_id":9,"step":0,"channel":"stdout","text":"x"}"#,
    ];
    exchange(daemon.port, &lines);
    let m = daemon.wait_until("both events through the drain", |m| {
        m.get("events_applied_total").copied().unwrap_or(0.0)
            + m.get("events_rule_rejected_total").copied().unwrap_or(0.0)
            >= 2.0
    });
    assert_eq!(m["events_received_total"], 3.0, "{m:?}");
    assert_eq!(m["events_acknowledged_total"], 2.0, "{m:?}");
    assert_eq!(m["events_rejected_total"], 1.0, "{m:?}");
    assert_eq!(m["events_applied_total"], 1.0, "{m:?}");
    assert_eq!(
        m["events_rule_rejected_total"], 1.0,
        "the log for an unknown build: {m:?}"
    );
    assert_eq!(m["spool_events"], 0.0, "{m:?}");
    assert!(m["connections_total"] >= 1.0);
    // Acknowledged long before the rules refused it: the log says which event it was.
    let (_, log) = daemon.stop_and_log();
    let refused = log
        .lines()
        .find(|l| l.contains("event rejected by the rules"))
        .unwrap_or_else(|| panic!("no warning of the refused event: {log}"));
    for part in [
        "master_id=m",
        "event_id=\"lost-1\"",
        "type=\"log\"",
        "unknown build m/9",
    ] {
        assert!(refused.contains(part), "{part} not in {refused}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["status", "--metrics", &format!("127.0.0.1:{}", free_port())])
        .output()
        .expect("status");
    assert!(
        !out.status.success() && stderr(&out).contains("no buildstore serve answers"),
        "{}",
        stderr(&out)
    );
}

/// The MongoDB store goes away mid-stream and comes back: the spool holds the backlog, the
/// metrics show it and its drain, and every acknowledged event arrives.
#[test]
fn a_store_outage_is_absorbed_by_the_spool_and_drained_afterwards() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "outage") else {
        return; // needs a server this test can stop
    };
    let peer_port = peer.port;
    let daemon = Daemon::on(&uri, &dir.path().join("spool"), free_port(), &[]);
    let lines = buildstore::synth::lines_of(6_000);
    let (first, rest) = lines.split_at(2_000);
    let deadline = Instant::now() + Duration::from_secs(120);
    assert_eq!(client(daemon.port, first.to_vec(), deadline).0, first.len());

    peer.kill();
    let acked = client(daemon.port, rest.to_vec(), deadline).0;
    assert_eq!(acked, rest.len(), "acknowledged while the store is down");
    // The drain counts the first failed attempt, after a server selection of 500 ms.
    let during = daemon.wait_until("a store error", |s| s["store_errors_total"] > 0.0);
    assert!(during["store_errors_in_a_row"] > 0.0, "{during:?}");
    assert!(
        during["spool_events"] > 0.0,
        "the backlog is visible: {during:?}"
    );

    let peer = restart_peer(dir.path(), peer_port);
    daemon.wait_until("the spool drains", |s| s["spool_events"] == 0.0);
    // A batch cut off by the outage may have recorded some of its events before it is sent
    // again whole; those count as duplicates the second time. The counts move just after the
    // spool is released.
    let counted =
        |m: &HashMap<String, f64>| m["events_applied_total"] + m["events_duplicate_total"];
    let after = daemon.wait_until("every event counted", |m| counted(m) >= lines.len() as f64);
    assert_eq!(counted(&after), lines.len() as f64, "{after:?}");
    assert_eq!(
        after["store_errors_in_a_row"], 0.0,
        "the store takes writes: {after:?}"
    );
    assert!(daemon.stop().success());

    assert_same_as_one_clean_ingest(&Db::at(peer.uri("outage")), &lines, dir.path());
    peer.kill();
}

/// A MongoDB store that is down when the daemon starts is what the spool is for: the daemon
/// starts, acknowledges, and applies the events and prepares the store once it answers.
#[test]
fn the_daemon_starts_while_the_mongodb_store_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "late") else {
        return; // needs a server this test can stop
    };
    let peer_port = peer.port;
    peer.kill();
    let daemon = Daemon::on(&uri, &dir.path().join("spool"), free_port(), &[]);
    let lines = buildstore::synth::lines_of(500);
    let deadline = Instant::now() + Duration::from_secs(120);
    assert_eq!(client(daemon.port, lines.clone(), deadline).0, lines.len());
    daemon.wait_until("a store error", |s| s["store_errors_total"] > 0.0);

    let peer = restart_peer(dir.path(), peer_port);
    daemon.wait_until("every event applied", |s| {
        s["events_applied_total"] >= lines.len() as f64
    });
    let db = Db::at(peer.uri("late"));
    let prepared = (0..300).any(|_| {
        let names = common::mongo::on_database(&db.location, |database| async move {
            database
                .collection::<bson::Document>("builds")
                .list_index_names()
                .await
                .unwrap_or_default()
        });
        let all = buildstore_schema::INDEXES
            .iter()
            .filter(|i| i.collection == buildstore_schema::Collection::Builds)
            .all(|i| names.contains(&i.name.to_string()));
        if !all {
            std::thread::sleep(Duration::from_millis(200));
        }
        all
    });
    assert!(
        prepared,
        "the indexes of builds were created once the store answered"
    );
    assert!(daemon.stop().success());
    assert_same_as_one_clean_ingest(&db, &lines, dir.path());
    peer.kill();
}

/// Thousands of bad lines of every kind, mixed into a valid stream over several connections:
/// each gets its error reply, every valid event is stored, and the daemon stays up.
#[test]
fn thousands_of_bad_lines_are_answered_and_the_valid_events_all_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let lines = buildstore::synth::lines_of(4_000);
    let connections = 3;
    let mut rng = fastrand::Rng::with_seed(5);
    let mut streams: Vec<Vec<(Vec<u8>, bool)>> = vec![Vec::new(); connections];
    for line in &lines {
        let v: Value = serde_json::from_str(line).expect("json");
        let key = v.get("build_id").map(|b| b.to_string()).unwrap_or_default();
        let c = key.len() % connections;
        let bad: Vec<u8> = match rng.u8(..10) {
            0 => line.as_bytes()[..rng.usize(1..line.len())].to_vec(), // truncated
            1 => vec![0xff, 0xfe, b'{', 0x80],                         // not UTF-8
            2 => {
                let mut w = v.clone();
                w["master_id"] = serde_json::json!([1]); // wrong type
                w.to_string().into_bytes()
            }
            3 => br#"{"type":"teleport","master_id":"m"}"#.to_vec(),
            4 if rng.u8(..40) == 0 => vec![b'x'; (1 << 20) + 10], // oversized
            _ => Vec::new(),
        };
        if !bad.is_empty() {
            streams[c].push((bad, false));
        }
        streams[c].push((line.clone().into_bytes(), true));
    }
    let bad_count: usize = streams
        .iter()
        .map(|s| s.iter().filter(|(_, ok)| !ok).count())
        .sum();
    assert!(bad_count > 1_000, "{bad_count} bad lines");
    let port = daemon.port;
    let handles: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            std::thread::spawn(move || {
                let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                let mut w = s.try_clone().expect("clone");
                let expected: Vec<bool> = stream.iter().map(|(_, ok)| *ok).collect();
                let writer = std::thread::spawn(move || {
                    for (bytes, _) in stream {
                        w.write_all(&bytes).expect("send");
                        w.write_all(b"\n").expect("send");
                    }
                });
                let mut r = BufReader::new(s);
                for (i, ok) in expected.iter().enumerate() {
                    let mut reply = String::new();
                    r.read_line(&mut reply).expect("reply");
                    let v: Value = serde_json::from_str(&reply).expect("reply is JSON");
                    if *ok {
                        assert!(v["ack"].is_string(), "line {}: {v}", i + 1);
                    } else {
                        assert_eq!(v["line"], i + 1, "{v}");
                    }
                }
                writer.join().expect("writer");
            })
        })
        .collect();
    for h in handles {
        h.join().expect("connection");
    }
    let m = daemon.status();
    assert_eq!(m["events_rejected_total"], bad_count as f64, "{m:?}");
    assert!(
        daemon.stop().success(),
        "the daemon stayed up and stops cleanly"
    );

    assert_same_as_one_clean_ingest(&store(dir.path()), &lines, dir.path());
}

/// SIGTERM while a client is behind on its replies: every line the daemon read is answered, and
/// the daemon waits for the client to finish before it closes, so that the replies still on
/// their way are not destroyed by a reset.
#[test]
fn stopping_answers_what_was_read_and_closes_without_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &["--reply-timeout", "300"]);
    let lines = buildstore::synth::lines_of(20_000);
    let s = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut w = s.try_clone().expect("clone");
    let sent = lines.clone();
    let (read_all, done_reading) = std::sync::mpsc::channel::<()>();
    // The client sends everything and reads nothing until the daemon is told to stop. It keeps
    // its side open until it has read every reply, so the connection ends by the stop, never
    // by the end of the client's input.
    let sender = std::thread::spawn(move || {
        for l in &sent {
            if w.write_all(l.as_bytes())
                .and_then(|()| w.write_all(b"\n"))
                .is_err()
            {
                return;
            }
        }
        let _ = done_reading.recv();
        let _ = w.shutdown(std::net::Shutdown::Write);
    });
    // The stop comes once the daemon has read what it will read: the count of lines received
    // stays still (the client does not read its replies, so the daemon stops reading at some
    // point, or it has read everything).
    let mut received = -1.0;
    let settling = Instant::now() + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = daemon.status()["events_received_total"];
        if now > 0.0 && now == received {
            break;
        }
        assert!(
            Instant::now() < settling,
            "the daemon never stopped reading"
        );
        received = now;
    }
    let stopping = std::thread::spawn(move || daemon.stop());

    let mut r = BufReader::new(s);
    let mut acked = Vec::new();
    let end = loop {
        let mut reply = String::new();
        match r.read_line(&mut reply) {
            Ok(0) => break Ok(()),
            Ok(_) => {
                let v: Value = serde_json::from_str(&reply)
                    .unwrap_or_else(|_| panic!("a whole JSON reply: {reply:?}"));
                acked.push(v["ack"].as_str().expect("an ack").to_owned());
            }
            Err(e) => break Err(e),
        }
    };
    let _ = read_all.send(());
    assert!(end.is_ok(), "the replies end with a reset: {end:?}");
    assert!(stopping.join().expect("stop").success());
    let _ = sender.join();
    // The acks are those of the first lines, in order, and the store holds those events.
    assert!(!acked.is_empty());
    for (ack, line) in acked.iter().zip(&lines) {
        let v: Value = serde_json::from_str(line).expect("json");
        assert_eq!(Some(ack.as_str()), v["event_id"].as_str());
    }
    assert_same_as_one_clean_ingest(&store(dir.path()), &lines[..acked.len()], dir.path());
}
