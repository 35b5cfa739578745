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
/// last store error; then the stdout log of the step asked for, as the store holds it.
type Counts = (f64, f64, f64, Option<String>, Vec<u8>);

/// Sends `before` to a daemon over `store`, calls `tamper` once those are applied, then sends
/// `after` in one write, and reads `step`'s log once everything went through the drain.
fn run(
    store: &str,
    dir: &Path,
    (before, after): (&[&str], &[&str]),
    step: &str,
    tamper: impl FnOnce(),
) -> Counts {
    let daemon = Daemon::on(store, &dir.join("spool"), free_port(), &[]);
    let through = |n: usize| {
        daemon.wait_until("the events through the drain", move |m| {
            count(m, "events_applied_total") + count(m, "events_rule_rejected_total") >= n as f64
        })
    };
    exchange(daemon.port, before);
    through(before.len());
    tamper();
    exchange(daemon.port, after);
    let m = through(before.len() + after.len());
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
        Db::at(store.to_owned()).log(step, "stdout").stdout,
    )
}

/// Runs `sql` on the SQLite store file, as another program would.
fn sqlite_tamper(file: &Path, sql: &str) {
    rusqlite::Connection::open(file)
        .and_then(|conn| conn.execute_batch(sql))
        .expect("change the store file");
}

/// [`run`] on a fresh SQLite store, tampered with by running `sql` on its file.
fn on_sqlite(stream: (&[&str], &[&str]), step: &str, sql: &str) -> Counts {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("store.db");
    let store = format!("sqlite:{}", file.display());
    run(&store, dir.path(), stream, step, || {
        sqlite_tamper(&file, sql)
    })
}

/// [`run`] on a fresh MongoDB database, tampered with by `tamper` given its URI.
fn on_mongo(
    name: &str,
    stream: (&[&str], &[&str]),
    step: &str,
    tamper: impl FnOnce(&str),
) -> Counts {
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = fresh_database(name);
    run(&uri, dir.path(), stream, step, || tamper(&uri))
}

/// Deletes what `filters` match, collection by collection, through the driver.
fn mongo_delete(uri: &str, filters: Vec<(&'static str, bson::Document)>) {
    on_database(uri, |d| async move {
        for (c, q) in filters {
            d.collection::<bson::Document>(c)
                .delete_many(q)
                .await
                .expect("delete");
        }
    })
}

#[test]
fn events_of_a_build_deleted_under_the_daemon_are_rejected_in_every_store() {
    let stream = (&BEFORE[..], &AFTER[..]);
    let sqlite = on_sqlite(stream, STEP, "DELETE FROM builds; DELETE FROM steps;");
    assert_eq!(
        without_error(&sqlite),
        (3.0, 3.0, 1.0, vec![]),
        "{sqlite:?}"
    );
    let mongo = on_mongo("vanished", stream, STEP, |uri| {
        mongo_delete(
            uri,
            vec![("builds", bson::doc! {}), ("steps", bson::doc! {})],
        )
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
    let stream = (&BEFORE[..], &AFTER[..]);
    let sqlite = on_sqlite(
        stream,
        STEP,
        "INSERT INTO log_chunks (step_id, channel, offset, data) VALUES ('m/1/0', 'stdout', 2, x'78')",
    );
    let (_, _, errors, last, _) = &sqlite;
    assert_eq!(*errors, 1.0, "SQLite: {last:?}");
    assert!(
        last.as_deref().is_some_and(|e| e.contains(
            "log stdout of step m/1/0 holds 3 bytes, but a chunk was written for offset 2"
        )),
        "{last:?}"
    );
    let mongo = on_mongo("log_extended", stream, STEP, |uri| {
        on_database(uri, |d| async move {
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

/// Build 2 beside build 1 of [`BEFORE`]: the same, with its log sent without offsets.
fn two_builds() -> Vec<String> {
    let lines = BEFORE.iter().map(|l| l.to_string());
    lines
        .clone()
        .chain(lines.map(|l| other(&l).replace(",\"offset\":0", "")))
        .collect()
}

fn other(line: &str) -> String {
    line.replace("\"build_id\":1", "\"build_id\":2")
}

/// A MongoDB store holds part of a batch it says does not fit: the rest was written. Folded
/// again, a chunk of another build sent without an offset is found already there rather than
/// appended a second time.
#[test]
fn a_batch_folded_again_does_not_double_another_builds_log() {
    let before = two_builds();
    let before: Vec<&str> = before.iter().map(String::as_str).collect();
    // In one write, so that they are folded into one batch.
    let chunk = other(
        r#"{"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","text":"b\n"}"#,
    );
    let after = [chunk.as_str(), AFTER[0]];
    let stream = (&before[..], &after[..]);

    let sqlite = on_sqlite(
        stream,
        "m/2/0",
        "DELETE FROM builds WHERE _id = 'm/1'; DELETE FROM steps WHERE build = 'm/1';",
    );
    assert_eq!(String::from_utf8_lossy(&sqlite.4), "a\nb\n");
    assert_eq!(sqlite.2, 1.0, "one batch did not fit: {sqlite:?}");
    let mongo = on_mongo("refold_other", stream, "m/2/0", |uri| {
        let build = vec![
            ("builds", bson::doc! {"_id": "m/1"}),
            ("steps", bson::doc! {"build": "m/1"}),
        ];
        mongo_delete(uri, build)
    });
    assert_eq!(String::from_utf8_lossy(&mongo.4), "a\nb\n", "MongoDB");
    // Else the two lines fell into two batches, and nothing was folded again.
    assert_eq!(mongo.2, 1.0, "one batch did not fit: {mongo:?}");
}

/// A log chunk sent without an offset is pinned to its offset before its batch is written. Its
/// build deleted meanwhile, the chunk is rejected when folded again, and its pin goes: a
/// corrected chunk sent again under its id must not be held to the old offset.
#[test]
fn the_pin_of_a_chunk_whose_build_vanished_goes_with_it() {
    let before = two_builds();
    let before: Vec<&str> = before.iter().map(String::as_str).collect();
    let unplaced =
        r#"{"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","text":"b\n"}"#;
    let theirs = other(unplaced);
    let after = [theirs.as_str(), unplaced];
    let dir = tempfile::tempdir().expect("tempdir");
    let uri = fresh_database("dropped_pin");
    let counts = run(&uri, dir.path(), (&before, &after), "m/2/0", || {
        mongo_delete(
            &uri,
            vec![
                ("builds", bson::doc! {"_id": "m/1"}),
                ("steps", bson::doc! {"build": "m/1"}),
            ],
        )
    });
    assert_eq!(String::from_utf8_lossy(&counts.4), "a\nb\n");
    assert_eq!(
        counts.1, 1.0,
        "the chunk of the deleted build rejected: {counts:?}"
    );
    // One key for each applied event, and nothing else: no pin left, whatever its form.
    let keys = on_database(&uri, |d| async move {
        d.collection::<bson::Document>("applied_events")
            .count_documents(bson::doc! {})
            .await
            .expect("count")
    });
    assert_eq!(keys as f64, counts.0, "{counts:?}");
}
