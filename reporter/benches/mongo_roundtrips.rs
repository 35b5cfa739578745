//! What the MongoDB store sends: round trips per event and bytes sent per log byte, counted by the
//! wire-protocol test peer while `buildstore ingest` (the real binary) writes a generated stream,
//! next to the same figures for one batch per event (what a one-write-per-event reporter costs),
//! measured in the same run.
//!
//! Run: `cargo bench -p buildstore --bench mongo_roundtrips` (needs the `.venv` that scripts/test
//! creates; BENCH_EVENTS=N to change the size).

// The peer launcher of the integration tests; the bench uses only part of it.
#[allow(dead_code)]
#[path = "../../tests/common/mongo.rs"]
mod mongo;

use std::io::Write;
use std::process::Command;

use buildstore::synth::{lines, Shape};

struct Figures {
    events: usize,
    round_trips: i64,
    bytes: i64,
}

fn run(peer: &mongo::Peer, db: &str, file: &std::path::Path, batch: usize) -> Figures {
    let admin = peer.uri("admin");
    let reset = tokio::runtime::Runtime::new()
        .expect("runtime")
        .block_on(async {
            let client = mongodb::Client::with_uri_str(&admin).await.expect("client");
            client
                .database("admin")
                .run_command(bson::doc! {"buildstorePeerReset": 1})
                .await
        });
    reset.expect("reset peer counters");
    let status = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args([
            "--store",
            &peer.uri(db),
            "ingest",
            "--batch-events",
            &batch.to_string(),
        ])
        .arg(file)
        .status()
        .expect("run buildstore ingest");
    assert!(status.success(), "ingest failed");
    let stats = mongo::peer_stats(&admin).expect("peer stats");
    let int = |v: Option<&bson::Bson>| {
        v.and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)))
            .unwrap_or(0)
    };
    Figures {
        events: std::fs::read_to_string(file)
            .map(|t| t.lines().count())
            .unwrap_or(0),
        round_trips: int(stats.get("messages")),
        bytes: int(stats.get("bytesReceived")),
    }
}

fn write(path: &std::path::Path, lines: &[String]) -> u64 {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut log_bytes = 0;
    for line in lines {
        writeln!(f, "{line}").expect("write");
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if v["type"] == "log" {
                log_bytes += v["text"].as_str().map_or(0, str::len) as u64;
            }
        }
    }
    f.flush().expect("flush");
    log_bytes
}

fn main() {
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // Realistic logs: compile and test output in 4 KiB chunks.
    let shape = Shape {
        events,
        log_chunk_bytes: 4096,
        log_chunks_per_step: 8,
        ..Shape::default()
    };
    let stream = lines(&shape);
    let dir = tempfile::tempdir().expect("tempdir");
    let all = dir.path().join("all.jsonl");
    let all_log = write(&all, &stream);
    // The baseline sends a batch per event; a tenth of the stream gives its ratios.
    let few = dir.path().join("few.jsonl");
    let few_log = write(&few, &stream[..stream.len() / 10]);

    let peer = mongo::Peer::start(0, None);
    let batched = run(&peer, "batched", &all, 1000);
    let single = run(&peer, "single", &few, 1);
    peer.kill();

    println!(
        "events: {} ({:.1} MiB of log text)",
        batched.events,
        all_log as f64 / 1048576.0
    );
    println!(
        "{:<28} {:>14} {:>22}",
        "", "round trips/event", "bytes sent/log byte"
    );
    for (name, f, log) in [
        ("batches of 1000 (default)", &batched, all_log),
        ("one batch per event", &single, few_log),
    ] {
        println!(
            "{name:<28} {:>14.4} {:>22.3}",
            f.round_trips as f64 / f.events as f64,
            f.bytes as f64 / log as f64
        );
    }
}
