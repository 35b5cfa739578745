//! What the MongoDB store sends, as the test peer counts it: how many round trips a stream
//! takes, the write concern its commands carry, and the commands that need more than the
//! `readWrite` role.

use crate::common::mongo::{
    command_count, fail_point, fresh_database, on_database, peer_command_count, peer_stats,
    real_server, Peer,
};
use crate::common::{assert_says, example, stderr, write_lines, Db, BUILD, STEP};

/// The URI's write concern goes with every command that writes a batch (the driver leaves it out
/// of plain commands). On a peer of its own: it notes the concern each command last came with.
#[test]
fn batches_are_written_with_the_uris_write_concern() {
    let options = "?w=majority&journal=true&wtimeoutMS=5000";
    if real_server().is_some() {
        // A real server takes it; only the peer shows what each command carried.
        Db::at(format!("{}{options}", fresh_database("write_concern")))
            .ingest_ok(&example("fetch-head-corrected.jsonl"));
        return;
    }
    let peer = Peer::start(0, None);
    Db::at(format!("{}{options}", peer.uri("write_concern")))
        .ingest_ok(&example("fetch-head-corrected.jsonl"));
    let stats = peer_stats(&peer.uri("admin")).expect("peer stats");
    peer.kill();
    let concerns = stats.get_document("writeConcerns").expect("writeConcerns");
    let as_i64 = |b: &bson::Bson| b.as_i64().or(b.as_i32().map(i64::from));
    for command in ["update", "insert"] {
        let got = concerns
            .get_document(command)
            .unwrap_or_else(|_| panic!("{command} without a write concern: {concerns}"));
        assert_eq!(
            (
                got.get_str("w").ok(),
                got.get_bool("j").ok(),
                got.get("wtimeout").and_then(as_i64),
                got.len()
            ),
            (Some("majority"), Some(true), Some(5000), 3),
            "{command}: {got}"
        );
    }
}

/// Builds start, run and finish across many batches; round trips are counted by the peer.
#[test]
fn ingest_takes_at_most_one_round_trip_per_hundred_events() {
    if real_server().is_some() {
        return; // only the peer counts round trips
    }
    let peer = Peer::start(0, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = buildstore::synth::lines_of(20_000);
    let file = write_lines(dir.path(), "gen.jsonl", &lines);
    let db = Db::at(peer.uri("roundtrips"));
    db.ingest_ok(&file);
    let stats = peer_stats(&peer.uri("admin")).expect("peer stats");
    let commands = stats.get_document("commands").expect("commands");
    let writes_and_reads: i64 = ["update", "insert", "find", "getMore", "aggregate"]
        .iter()
        .map(|c| command_count(&stats, c))
        .sum();
    let per_event = writes_and_reads as f64 / lines.len() as f64;
    assert!(
        per_event <= 0.01,
        "{writes_and_reads} round trips for {} events: {commands}",
        lines.len()
    );
    peer.kill();
}

/// Every `ingest` and every start of the daemon prepares the store: on a prepared database that
/// is one look at its collections, not a `create` and a look for each.
#[test]
fn a_prepared_database_is_looked_at_once() {
    if real_server().is_some() {
        return; // only the peer counts commands
    }
    let peer = Peer::start(0, None);
    let db = Db::at(peer.uri("looked_at_once"));
    let init = || {
        let out = db.cmd().arg("init").output().expect("run init");
        assert!(out.status.success(), "{}", stderr(&out));
    };
    init();
    let counts = || {
        let stats = peer_stats(&peer.uri("admin")).expect("peer stats");
        ["listCollections", "create", "collMod"].map(|c| command_count(&stats, c))
    };
    let before = counts();
    init();
    let after = counts();
    peer.kill();
    let sent: Vec<i64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    assert_eq!(sent, [1, 0, 0], "listCollections, create, collMod");
}

/// A database prepared before is prepared again without `collMod`, which an application's user
/// with the `readWrite` role may not run (it needs `dbAdmin`): every `ingest` and every start of
/// the daemon prepares the store. A validator that differs from this version's is changed when
/// the user may, and left with a warning when not: the documents are written all the same.
#[test]
fn a_prepared_database_is_prepared_again_without_the_dbadmin_role() {
    if real_server().is_some() {
        return; // the refusal is the peer's fail point
    }
    let peer = Peer::start(0, None);
    let db = Db::at(peer.uri("again"));
    let init = || db.cmd().arg("init").output().expect("run init");
    assert!(init().status.success());
    // Error 13 (Unauthorized) is what a user without the dbAdmin role gets for collMod.
    let refuse_coll_mod = |mode: &str| fail_point(&peer, mode.into(), &["collMod"], 13);
    refuse_coll_mod("alwaysOn");
    let out = init();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stderr(&out).contains("collMod"), "{}", stderr(&out));
    db.ingest_ok(&example("nightly.jsonl"));

    // The validator of an older version.
    refuse_coll_mod("off");
    let builds_validator = || {
        on_database(&db.location, |database| async move {
            let reply = database
                .run_command(bson::doc! {"listCollections": 1, "filter": {"name": "builds"}})
                .await
                .expect("listCollections");
            let batch = reply
                .get_document("cursor")
                .and_then(|c| c.get_array("firstBatch"))
                .expect("firstBatch")
                .clone();
            batch[0]
                .as_document()
                .and_then(|spec| spec.get_document("options").ok())
                .and_then(|o| o.get_document("validator").ok())
                .cloned()
                .expect("a validator")
        })
    };
    let schemas = builds_validator();
    on_database(&db.location, |database| async move {
        database
            .run_command(bson::doc! {
                "collMod": "builds",
                "validator": {"$jsonSchema": {"bsonType": "object"}},
            })
            .await
            .expect("collMod")
    });
    refuse_coll_mod("alwaysOn");
    let out = init();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_says(&out, "collMod needs the dbAdmin role");
    db.ingest_ok(&example("fetch-head-corrected.jsonl"));
    refuse_coll_mod("off");
    let out = init();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        builds_validator(),
        schemas,
        "the validator of this version again"
    );
    peer.kill();
}

/// A live build adds a GridFS piece per batch to a log past the inline limit: reading the log
/// takes a query for the pieces and one for their chunks whatever their number. It took a query
/// per piece, over every piece before the window too, and the tail of a long build's log was
/// quadratic to read.
#[test]
fn a_log_in_many_gridfs_pieces_is_read_in_a_few_queries() {
    if real_server().is_some() {
        return; // only the peer counts queries
    }
    let peer = Peer::start(0, None);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lines = vec![BUILD.to_owned(), STEP.to_owned()];
    let mut text = String::new();
    for i in 0..300 {
        let chunk = format!("line {i:04} of the build's output\n");
        lines.push(
            serde_json::json!({"type":"log","master_id":"m","build_id":1,"step":0,
                "channel":"stdout","offset":text.len(),"text":chunk})
            .to_string(),
        );
        text.push_str(&chunk);
    }
    let file = write_lines(dir.path(), "pieces.jsonl", &lines);
    let db = Db::at(peer.uri("pieces"));
    let out = db.ingest(&file, &["--batch-events", "1", "--inline-log-limit", "256"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Queries, not the batches of their answers (getMore).
    let finds = || peer_command_count(&peer.uri("admin"), "find").expect("peer stats");
    let before = finds();
    let log = db.log("m/1/0", "stdout");
    let read = finds() - before;
    assert_eq!(String::from_utf8_lossy(&log.stdout), text);
    // The step (for the log's length, then for each window), its pieces, their chunks.
    assert!(read <= 6, "{read} queries to read a log of 300 pieces");
    // Pieces written before their end was kept are read all the same.
    on_database(&db.location, |database| async move {
        database
            .collection::<bson::Document>("logs.files")
            .update_many(bson::doc! {}, bson::doc! {"$unset": {"metadata.end": ""}})
            .await
            .expect("unset")
    });
    assert_eq!(
        String::from_utf8_lossy(&db.log("m/1/0", "stdout").stdout),
        text
    );
    peer.kill();
}
