//! A document the daemon has folded events into disappears from the store while it runs (a
//! cleanup script, another writer). Every store then says the next batch does not fit what it
//! holds, and the daemon folds its events again from the store: they are rejected by the rules,
//! never counted as applied while their changes went nowhere.

use std::collections::HashMap;
use std::path::Path;

use crate::common::daemon::{exchange, free_port, Daemon};
use crate::common::mongo::{fresh_database, on_database};
use crate::common::Db;

const BEFORE: [&str; 3] = [
    r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"time":1800000000}"#,
    r#"{"type":"step_started","master_id":"m","build_id":1,"step":0,"name":"compile","time":1800000001}"#,
    r#"{"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","offset":0,"text":"a\n"}"#,
];
/// The step of the stream, as the stores name it.
const STEP: &str = "m/1/0";
const AFTER: [&str; 3] = [
    r#"{"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","offset":2,"text":"b\n"}"#,
    r#"{"type":"step_finished","master_id":"m","build_id":1,"step":0,"result":0,"time":1800000002}"#,
    r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0,"time":1800000003}"#,
];

fn count(m: &HashMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// What the daemon counted: events applied, events rejected by the rules, store errors, and the
/// last store error; then the step's stdout log as the store holds it.
type Counts = (f64, f64, f64, Option<String>, Vec<u8>);

/// Runs the stream on a daemon over `store`, calling `tamper` between its two halves.
fn run(store: &str, dir: &Path, tamper: impl FnOnce()) -> Counts {
    let daemon = Daemon::on(store, &dir.join("spool"), free_port(), &[]);
    let through = |n: f64| {
        daemon.wait_until("the events through the drain", move |m| {
            count(m, "events_applied_total") + count(m, "events_rule_rejected_total") >= n
        })
    };
    exchange(daemon.port, &BEFORE);
    through(3.0);
    tamper();
    exchange(daemon.port, &AFTER);
    let m = through(6.0);
    daemon.kill();
    let last_error = m.keys().find_map(|k| {
        k.strip_prefix("store_last_error_info{error=\"")
            .and_then(|e| e.strip_suffix("\"}"))
            .map(str::to_owned)
    });
    (
        count(&m, "events_applied_total"),
        count(&m, "events_rule_rejected_total"),
        count(&m, "store_errors_total"),
        last_error,
        Db::at(store.to_owned()).log(STEP, "stdout").stdout,
    )
}

#[test]
fn events_of_a_build_deleted_under_the_daemon_are_rejected_in_every_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("store.db");
    let sqlite = run(&format!("sqlite:{}", file.display()), dir.path(), || {
        let conn = rusqlite::Connection::open(&file).expect("open the store file");
        conn.execute_batch("DELETE FROM builds; DELETE FROM steps;")
            .expect("delete the build and its step");
    });
    assert_eq!(
        without_error(&sqlite),
        (3.0, 3.0, 1.0, vec![]),
        "{sqlite:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let uri = fresh_database("vanished");
    let mongo = run(&uri, dir.path(), || {
        on_database(&uri, |d| async move {
            for c in ["builds", "steps"] {
                d.collection::<bson::Document>(c)
                    .delete_many(bson::doc! {})
                    .await
                    .expect("delete");
            }
        })
    });
    assert_eq!(without_error(&mongo), without_error(&sqlite), "{mongo:?}");
    // Which of the two documents is named first depends on how the events fell into batches.
    for (_, _, _, last, _) in [sqlite, mongo] {
        assert!(
            last.as_deref()
                .is_some_and(|e| e.contains("needs the document, which is not in the store")),
            "{last:?}"
        );
    }
}

fn without_error(c: &Counts) -> (f64, f64, f64, Vec<u8>) {
    (c.0, c.1, c.2, c.4.clone())
}

/// Another writer adds a byte to the step's log under the daemon: the daemon's next chunk no
/// longer starts where the stored log ends, and every store says so rather than drop the chunk.
#[test]
fn a_log_extended_by_another_writer_is_a_conflict_in_every_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("store.db");
    let sqlite = run(&format!("sqlite:{}", file.display()), dir.path(), || {
        let conn = rusqlite::Connection::open(&file).expect("open the store file");
        conn.execute(
            "INSERT INTO log_chunks (step_id, channel, offset, data) VALUES (?1, 'stdout', 2, ?2)",
            rusqlite::params![STEP, b"x".to_vec()],
        )
        .expect("append to the log");
    });
    let (_, _, errors, last, _) = &sqlite;
    assert_eq!(*errors, 1.0, "SQLite: {last:?}");
    assert!(
        last.as_deref().is_some_and(|e| e.contains(
            "log stdout of step m/1/0 holds 3 bytes, but a chunk was written for offset 2"
        )),
        "{last:?}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let uri = fresh_database("log_extended");
    let mongo = run(&uri, dir.path(), || {
        on_database(&uri, |d| async move {
            d.collection::<bson::Document>("steps")
                .update_one(
                    bson::doc! {"_id": STEP},
                    bson::doc! {"$set": {"stdout": "a\nx", "log_bytes.stdout": 3_i64}},
                )
                .await
                .expect("append to the log");
        })
    });
    assert_eq!(mongo, sqlite, "MongoDB against SQLite");
}

/// A MongoDB store holds part of a batch it says does not fit: the rest was written. Folded
/// again, a chunk of another build sent without an offset is found already there rather than
/// appended a second time.
#[test]
fn a_batch_folded_again_does_not_double_another_builds_log() {
    let other = |line: &str| line.replace("\"build_id\":1", "\"build_id\":2");
    let before: Vec<String> = BEFORE
        .iter()
        .map(|l| l.to_string())
        .chain(BEFORE.iter().map(|l| other(l).replace(",\"offset\":0", "")))
        .collect();
    // In one write, so that they are folded into one batch.
    let after = [
        other(
            r#"{"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","text":"b\n"}"#,
        ),
        AFTER[0].to_owned(),
    ];
    let run = |store: &str, dir: &Path, tamper: &dyn Fn()| {
        let daemon = Daemon::on(store, &dir.join("spool"), free_port(), &[]);
        let through = |n: f64| {
            daemon.wait_until("the events through the drain", move |m| {
                count(m, "events_applied_total") + count(m, "events_rule_rejected_total") >= n
            })
        };
        exchange(
            daemon.port,
            &before.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        through(6.0);
        tamper();
        exchange(
            daemon.port,
            &after.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        through(8.0);
        daemon.kill();
        Db::at(store.to_owned()).log("m/2/0", "stdout").stdout
    };

    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("store.db");
    let sqlite = run(&format!("sqlite:{}", file.display()), dir.path(), &|| {
        let conn = rusqlite::Connection::open(&file).expect("open the store file");
        conn.execute_batch(
            "DELETE FROM builds WHERE _id = 'm/1'; DELETE FROM steps WHERE build = 'm/1';",
        )
        .expect("delete build 1 and its step");
    });
    assert_eq!(String::from_utf8_lossy(&sqlite), "a\nb\n");

    let dir = tempfile::tempdir().expect("tempdir");
    let uri = fresh_database("refold_other");
    let mongo = run(&uri, dir.path(), &|| {
        on_database(&uri, |d| async move {
            for (c, q) in [
                ("builds", bson::doc! {"_id": "m/1"}),
                ("steps", bson::doc! {"build": "m/1"}),
            ] {
                d.collection::<bson::Document>(c)
                    .delete_many(q)
                    .await
                    .expect("delete");
            }
        })
    });
    assert_eq!(String::from_utf8_lossy(&mongo), "a\nb\n", "MongoDB");
}
