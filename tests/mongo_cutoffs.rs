//! MongoDB batches that fail partway, through the real binary on the test peer: one the server
//! did not confirm to its write concern is sent again, and one cut off after its documents, or
//! after any of its commands, is completed without doubling anything.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::mongo::{fail_point, on_database, write_concern_fail_point};
use common::*;

/// A write the server could not confirm to its write concern is not counted as applied: the batch
/// is sent again, which changes nothing already written, and a server that never confirms makes
/// the run fail with a message that says why.
#[test]
fn a_mongodb_write_not_confirmed_to_the_write_concern_is_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "concern") else {
        return; // the fail point is the test peer's (a real server needs test commands)
    };
    let file = example("fetch-head-corrected.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&file)
        .expect("read")
        .lines()
        .map(str::to_owned)
        .collect();
    write_concern_fail_point(&peer, bson::doc! {"times": 2}.into(), &["update"]);
    let db = Db::at(uri);
    let out = db.ingest(&file, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stderr(&out)
            .matches("retrying a batch the server did not confirm")
            .count(),
        2,
        "{}",
        stderr(&out)
    );
    assert_same_as_one_clean_ingest(&db, &lines, dir.path());

    let db = Db::at(peer.uri("never"));
    write_concern_fail_point(&peer, "alwaysOn".into(), &["insert"]);
    let out = db.ingest(&file, &["--batch-events", "100000"]);
    write_concern_fail_point(&peer, "off".into(), &["insert"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_says(
        &out,
        "not confirmed to the write concern: waiting for replication timed out (code 64)",
    );
    peer.kill();
}

/// A MongoDB batch cut off after its documents were written (the insert of its event ids is
/// refused, as by a server stepping down) is completed by sending the same batch again: log
/// chunks sent without an offset are not appended twice.
#[test]
fn a_mongodb_batch_cut_off_after_its_documents_is_completed_without_doubling_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "cutoff") else {
        return; // the fail point is the test peer's (a real server needs test commands)
    };
    let daemon = Daemon::on(&uri, &dir.path().join("spool"), free_port(), &[]);
    // Error 91 (shutting down) is transient: the daemon tries again.
    let fail_inserts = |mode: bson::Bson| fail_point(&peer, mode, &["insert"], 91);
    let lines = buildstore::synth::lines(&buildstore::synth::Shape {
        events: 500,
        log_offsets: false,
        ..Default::default()
    });
    let (first, rest) = lines.split_at(lines.len() / 2);
    let deadline = Instant::now() + Duration::from_secs(60);
    let applied = |n: usize| {
        move |s: &HashMap<String, f64>| {
            s["events_applied_total"] + s["events_duplicate_total"] >= n as f64
        }
    };
    assert_eq!(client(daemon.port, first.to_vec(), deadline).0, first.len());
    daemon.wait_until("the first half applied", applied(first.len()));
    let store = Db::at(peer.uri("cutoff"));
    let log_bytes = || -> f64 {
        let steps = store.export("steps");
        let sizes = steps.iter().flat_map(|s| {
            ["stdout", "stderr", "headers"].map(|c| s["log_bytes"][c].as_f64().unwrap_or(0.0))
        });
        sizes.sum()
    };
    let before = log_bytes();
    // The second half, in the middle of its builds' logs, fails after its documents are written,
    // a few times over: the first insert (the pins of its log chunks sent without an offset)
    // and the updates run, the insert of its event keys fails, and so does every insert after.
    fail_inserts(bson::doc! {"skip": 1}.into());
    assert_eq!(client(daemon.port, rest.to_vec(), deadline).0, rest.len());
    daemon.wait_until("failed writes", |s| s["store_errors_in_a_row"] >= 2.0);
    assert!(log_bytes() > before, "no log text written before the cut");
    fail_inserts("off".into());
    daemon.wait_until("everything applied", applied(lines.len()));
    assert_eq!(daemon.status()["store_errors_in_a_row"], 0.0);
    assert!(daemon.stop().success());
    assert_same_as_one_clean_ingest(&Db::at(peer.uri("cutoff")), &lines, dir.path());
    peer.kill();
}

/// A MongoDB batch cut off after any one of its write commands, as when the process dies there,
/// is completed by running the same ingest again: the documents and the full log are those of
/// one clean run. The batch spreads over every collection: a log past the inline limit (its
/// full text in GridFS, its size in the step) and a changeset correction after the build
/// finished (the changeset in the build, the link in `repository`). Its log chunk comes without
/// an offset: the rerun, another process, must not append it after itself.
#[test]
fn a_mongodb_batch_cut_off_after_any_command_is_completed_by_a_rerun() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, _)) = stoppable_peer(dir.path(), "unused") else {
        return; // the fail point is the test peer's (a real server needs test commands)
    };
    let t = "2026-03-12T10:00:00Z";
    let hash = "eb57b4930f682387ca57a2506b1dbd03f5144c04";
    let start = [
        format!(
            r#"{{"type":"build_started","master_id":"m","event_id":"e1","time":"{t}","builder":"b","build_id":1,"number":1,"changeset":"FETCH_HEAD"}}"#
        ),
        format!(
            r#"{{"type":"step_started","master_id":"m","event_id":"e2","time":"{t}","build_id":1,"step":0,"name":"s"}}"#
        ),
        format!(
            r#"{{"type":"log","master_id":"m","event_id":"e3","build_id":1,"step":0,"channel":"stdout","text":"{}\n","offset":0}}"#,
            "A".repeat(200)
        ),
    ];
    let rest = [
        format!(
            r#"{{"type":"log","master_id":"m","event_id":"e4","build_id":1,"step":0,"channel":"stdout","text":"{}\n"}}"#,
            "B".repeat(200)
        ),
        format!(
            r#"{{"type":"step_finished","master_id":"m","event_id":"e5","time":"{t}","build_id":1,"step":0,"result":0}}"#
        ),
        format!(
            r#"{{"type":"build_finished","master_id":"m","event_id":"e6","time":"{t}","build_id":1,"result":0}}"#
        ),
        format!(
            r#"{{"type":"property","master_id":"m","event_id":"e7","build_id":1,"name":"got_revision","value":"{hash}","source":"Git"}}"#
        ),
    ];
    let (start_file, rest_file) = (
        write_lines(dir.path(), "start.jsonl", &start),
        write_lines(dir.path(), "rest.jsonl", &rest),
    );
    let limit = ["--inline-log-limit", "256"];
    let expected = Db::new();
    for file in [&start_file, &rest_file] {
        assert!(expected.ingest(file, &limit).status.success());
    }
    let full_log = |db: &Db| db.log("m/1/0", "stdout").stdout;
    assert_eq!(full_log(&expected).len(), 402);
    // Error 2 (bad value) is not transient: the run stops at once, as a killed one would.
    let fail_writes = |mode: bson::Bson| fail_point(&peer, mode, &["insert", "update"], 2);
    for skip in 0.. {
        let db = Db::at(peer.uri(&format!("cut{skip}")));
        assert!(db.ingest(&start_file, &limit).status.success());
        fail_writes(bson::doc! {"skip": skip}.into());
        let cut = db.ingest(&rest_file, &limit);
        fail_writes("off".into());
        let rerun = db.ingest(&rest_file, &limit);
        assert!(rerun.status.success(), "{}", stderr(&rerun));
        // Every event is known as applied from then on, the chunk pinned to its offset too.
        let again = db.ingest(&rest_file, &limit);
        assert!(
            stderr(&again).contains("0 events applied, 4 duplicates skipped"),
            "cut after {skip} writes: {}",
            stderr(&again)
        );
        for c in ["builders", "builds", "steps", "repository"] {
            assert_eq!(
                db.export(c),
                expected.export(c),
                "cut after {skip} writes: {c}"
            );
        }
        assert_eq!(
            full_log(&db),
            full_log(&expected),
            "cut after {skip} writes"
        );
        if cut.status.success() {
            assert!(
                skip >= 4,
                "the batch has fewer writes than expected: {skip}"
            );
            break; // every write of the batch ran: each cut-off point was tried
        }
    }
    peer.kill();
}

/// A batch whose log went to GridFS, sent again and again while the bucket's unique index on
/// (files_id, n) does not exist (a daemon started while its store was down creates it in the
/// background, while it writes): each chunk is stored once, and the log reads back as sent.
/// Chunks got a new id at each attempt, and each attempt stored them again.
#[test]
fn log_chunks_sent_again_before_the_bucket_has_its_indexes_are_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "chunkids") else {
        return; // the fail point is the test peer's (a real server needs test commands)
    };
    let daemon = Daemon::on(
        &uri,
        &dir.path().join("spool"),
        free_port(),
        &["--inline-log-limit", "256"],
    );
    // Without its collection, the bucket has no index but `_id` until the next start.
    on_database(&peer.uri("chunkids"), |db| async move {
        db.collection::<bson::Document>("logs.chunks")
            .drop()
            .await
            .expect("drop");
    });
    let text = "x".repeat(299_999) + "\n";
    let lines = [
        BUILD.to_owned(),
        STEP.to_owned(),
        serde_json::json!({"type":"log","master_id":"m","build_id":1,"step":0,
                           "channel":"stdout","offset":0,"text":text})
        .to_string(),
    ];
    let acked = |lines: &[String]| {
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        exchange(daemon.port, &refs)
            .iter()
            .all(|r| r.get("ack").is_some())
    };
    assert!(acked(&lines[..2]));
    daemon.wait_until("the step applied", |s| s["events_applied_total"] >= 2.0);
    // The log's batch: the step's update fails after its GridFS inserts ran, three times at
    // least.
    fail_point(&peer, "alwaysOn".into(), &["update"], 91);
    assert!(acked(&lines[2..]));
    daemon.wait_until("three failed attempts", |s| s["store_errors_total"] >= 3.0);
    fail_point(&peer, "off".into(), &["update"], 91);
    daemon.wait_until("every event applied", |s| s["events_applied_total"] >= 3.0);
    assert!(daemon.stop().success());

    let db = Db::at(peer.uri("chunkids"));
    let chunks = on_database(&db.location, |db| async move {
        db.collection::<bson::Document>("logs.chunks")
            .count_documents(bson::doc! {})
            .await
            .expect("count")
    });
    assert_eq!(chunks, 2, "300,000 bytes make two chunks of 255 KiB");
    let log = db.log("m/1/0", "stdout");
    assert!(log.stdout == text.as_bytes(), "{} bytes", log.stdout.len());
    peer.kill();
}
