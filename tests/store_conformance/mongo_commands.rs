//! What the MongoDB store sends, as the test peer counts it: how many round trips a stream
//! takes, and the write concern its commands carry.

use crate::common::mongo::{fresh_database, peer_stats, real_server, Peer};
use crate::common::{example, write_lines, Db};

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
    let lines = buildstore::synth::lines(&buildstore::synth::Shape {
        events: 20_000,
        ..Default::default()
    });
    let file = write_lines(dir.path(), "gen.jsonl", &lines);
    let db = Db::at(peer.uri("roundtrips"));
    db.ingest_ok(&file);
    let stats = peer_stats(&peer.uri("admin")).expect("peer stats");
    let commands = stats.get_document("commands").expect("commands");
    let writes_and_reads: i64 = ["update", "insert", "find", "getMore", "aggregate"]
        .iter()
        .map(|c| {
            commands
                .get(*c)
                .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)))
                .unwrap_or(0)
        })
        .sum();
    let per_event = writes_and_reads as f64 / lines.len() as f64;
    assert!(
        per_event <= 0.01,
        "{writes_and_reads} round trips for {} events: {commands}",
        lines.len()
    );
    peer.kill();
}
