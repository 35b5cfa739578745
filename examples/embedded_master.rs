//! A build master written in Rust, reporting through `buildstore::Reporter`: four builders run
//! builds concurrently, each sending its events as they happen.
//!
//!     cargo run -p buildstore --example embedded_master -- sqlite:embedded.db
//!     buildstore --store sqlite:embedded.db export builds

use std::sync::Arc;

use buildstore::{Reporter, ReporterConfig};
use buildstore_schema::Event;
use serde_json::json;

async fn run_build(
    reporter: Arc<Reporter>,
    builder: &str,
    build_id: i64,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let send = |v: serde_json::Value| {
        let reporter = Arc::clone(&reporter);
        async move {
            reporter
                .send(Event::from_value(v)?)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })
        }
    };
    let hash = format!("{:040x}", build_id * 7919);
    send(json!({"type": "build_started", "master_id": "rust-master", "builder": builder, "build_id": build_id,
                "number": build_id, "changeset": "FETCH_HEAD", "event_id": format!("{build_id}-start")})).await?;
    for (step, name) in ["git", "compile", "test"].iter().enumerate() {
        let base = json!({"master_id": "rust-master", "build_id": build_id, "step": step});
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            v.as_object_mut()
                .into_iter()
                .for_each(|o| o.extend(extra.as_object().cloned().unwrap_or_default()));
            v
        };
        send(with(json!({"type": "step_started", "name": name, "event_id": format!("{build_id}-{step}-start")}))).await?;
        send(with(
            json!({"type": "log", "channel": "stdout", "text": format!("{name} on {builder}: ok\n"),
                         "offset": 0, "event_id": format!("{build_id}-{step}-log")}),
        ))
        .await?;
        if *name == "git" {
            send(json!({"type": "property", "master_id": "rust-master", "build_id": build_id, "name": "got_revision",
                        "value": hash, "source": "Git", "event_id": format!("{build_id}-rev")})).await?;
        }
        send(with(json!({"type": "step_finished", "result": 0, "event_id": format!("{build_id}-{step}-end")}))).await?;
        tokio::task::yield_now().await;
    }
    send(json!({"type": "build_finished", "master_id": "rust-master", "build_id": build_id, "result": 0,
                "event_id": format!("{build_id}-end")})).await?;
    Ok(())
}

#[tokio::main]
async fn main() {
    // Said in words, not as the error's Debug form that a `main` returning an error prints.
    if let Err(e) = run().await {
        eprintln!("embedded_master: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let store = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "sqlite:embedded.db".into());
    let spool = std::env::args()
        .nth(2)
        .unwrap_or_else(|| "embedded.spool".into());
    let reporter = Arc::new(Reporter::start(ReporterConfig::new(store, spool)).await?);
    let mut builds = Vec::new();
    for (i, builder) in ["linux", "macos", "windows", "docs"].iter().enumerate() {
        for n in 0..3 {
            let r = Arc::clone(&reporter);
            let build_id = (i * 100 + n) as i64;
            builds.push(tokio::spawn(async move {
                run_build(r, builder, build_id).await
            }));
        }
    }
    for b in builds {
        b.await??;
    }
    reporter.flush().await?;
    let stats = reporter.stats();
    // Run again on the same store, every event is a duplicate: its ids are the same.
    println!(
        "{} events applied, {} duplicates skipped, {} refused by the rules",
        stats.applied, stats.duplicates, stats.rejected
    );
    // Every build task has ended, and with it its handle: this one is the last.
    let reporter = Arc::into_inner(reporter).ok_or("a build still holds the reporter")?;
    let left = reporter.shutdown().await;
    if left > 0 {
        println!("{left} events left in the spool for the next start");
    }
    Ok(())
}
