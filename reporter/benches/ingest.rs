//! Ingest throughput: `buildstore ingest` (the real binary, fresh SQLite store) over a generated
//! stream of 100 k events, next to the single-core rate of merely parsing the same lines, measured
//! in the same run so the ratio holds on a noisy machine.
//!
//! Run: `cargo bench -p buildstore --bench ingest` (BENCH_EVENTS=N to change the size).

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use buildstore::synth::lines_of;
use buildstore_schema::Event;

const RUNS: usize = 3;

fn best<F: FnMut() -> Duration>(mut f: F) -> Duration {
    (0..RUNS).map(|_| f()).min().unwrap_or_default()
}

fn main() {
    let events: usize = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let stream = lines_of(events);
    let dir = tempfile::tempdir().expect("temporary directory");
    // BENCH_STREAM=PATH keeps the generated stream there, e.g. to profile an ingest of it.
    let file = std::env::var_os("BENCH_STREAM")
        .map_or_else(|| dir.path().join("events.jsonl"), Into::into);
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).expect("create stream file"));
    for line in &stream {
        writeln!(f, "{line}").expect("write stream file");
    }
    f.flush().expect("write stream file");
    drop(f);
    let n = stream.len() as f64;
    let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);

    let parse = best(|| {
        let start = Instant::now();
        for line in &stream {
            std::hint::black_box(Event::parse(line).expect("generated events parse"));
        }
        start.elapsed()
    });

    let mut run = 0;
    let ingest = best(|| {
        run += 1;
        let db = dir.path().join(format!("run{run}.db"));
        let start = Instant::now();
        let status = Command::new(env!("CARGO_BIN_EXE_buildstore"))
            .arg("--store")
            .arg(format!("sqlite:{}", db.display()))
            .arg("ingest")
            .arg(&file)
            .status()
            .expect("run buildstore ingest");
        let elapsed = start.elapsed();
        assert!(status.success(), "ingest failed");
        elapsed
    });

    let parse_rate = n / parse.as_secs_f64();
    let ingest_rate = n / ingest.as_secs_f64();
    println!(
        "events: {} ({:.1} MiB), best of {RUNS} runs",
        stream.len(),
        bytes as f64 / 1048576.0
    );
    println!("parse only (1 core): {parse_rate:>10.0} events/s");
    println!("buildstore ingest:   {ingest_rate:>10.0} events/s  (SQLite store, synchronous=FULL)");
    println!("ingest / parse:      {:>10.2}", ingest_rate / parse_rate);
}
