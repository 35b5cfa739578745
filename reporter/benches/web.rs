//! Page latency of the web view on a SQLite store holding 100 k builds: each page and JSON twin
//! is requested over HTTP many times, one request at a time, and its median and 99th percentile
//! are reported next to a baseline measured in the same run — the static style sheet, which costs
//! the same HTTP round trip and no store read — so the figures mean something on a noisy machine.
//!
//! Run: `cargo bench -p buildstore --bench web` (BENCH_BUILDS=N to change the size,
//! BENCH_STORE=sqlite:PATH to keep or reuse the store).

use std::sync::Arc;
use std::time::{Duration, Instant};

use buildstore::core::{Core, CoreConfig};
use buildstore::pipeline::{ingest, Applier, IngestOptions};
use buildstore::store;
use buildstore::synth::{lines, Shape};

const REQUESTS: usize = 200;
/// Events per build in the generated stream (start, 3 steps with one log chunk each, property,
/// changeset, finish, commit), to size the stream for a number of builds.
const EVENTS_PER_BUILD: usize = 14;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Median and p99 of `REQUESTS` sequential GETs of `url`, which must answer 200.
fn measure(agent: &ureq::Agent, url: &str) -> (Duration, Duration) {
    let mut times = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let start = Instant::now();
        let mut response = agent.get(url).call().expect("the page answers");
        let body = response.body_mut().read_to_vec().expect("read the page");
        times.push(start.elapsed());
        assert_eq!(response.status(), 200, "{url}");
        std::hint::black_box(body);
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let builds: usize = std::env::var("BENCH_BUILDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("temporary directory");
    let location = std::env::var("BENCH_STORE")
        .unwrap_or_else(|_| format!("sqlite:{}", dir.path().join("web.db").display()));
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let store: Arc<dyn store::Store> = runtime.block_on(async {
        let s = store::open(&location).await.expect("open the store");
        s.init().await.expect("init the store");
        Arc::from(s)
    });

    let have = runtime
        .block_on(store.find_builds(
            &store::BuildQuery {
                limit: builds,
                ..Default::default()
            },
            |_| {},
        ))
        .map(|b| b.len())
        .unwrap_or(0);
    if have < builds {
        eprintln!("generating {builds} builds ...");
        let stream = lines(&Shape {
            events: builds * EVENTS_PER_BUILD,
            concurrent: 20,
            steps_per_build: 3,
            log_chunks_per_step: 1,
            log_chunk_bytes: 200,
            log_offsets: true,
            seed: 7,
        })
        .join("\n");
        let start = Instant::now();
        runtime.block_on(async {
            let mut applier = Applier::new(Core::new(CoreConfig::default()));
            ingest(
                store.as_ref(),
                &mut applier,
                std::io::Cursor::new(stream.into_bytes()),
                &IngestOptions::default(),
                &mut |e| panic!("generated events apply: {e}"),
            )
            .await
            .expect("ingest");
        });
        eprintln!("ingested in {:.1} s", start.elapsed().as_secs_f64());
    }
    let (sample, sample_start, sample_changeset) = runtime.block_on(async {
        let latest = store
            .find_builds(
                &store::BuildQuery {
                    limit: 1,
                    ..Default::default()
                },
                |_| {},
            )
            .await
            .expect("a build");
        let build = latest.first().expect("a build");
        (
            build.get_str("_id").expect("a build id").to_owned(),
            build
                .get_datetime("time_start")
                .expect("a start")
                .to_chrono(),
            build
                .get_str("changeset")
                .unwrap_or("FETCH_HEAD")
                .to_owned(),
        )
    });
    // The last half hour of builds: a window that holds some thousands of them.
    let window = format!(
        "/?since={}&until={}",
        (sample_start - chrono::Duration::minutes(30)).format("%Y-%m-%dT%H:%M:%SZ"),
        sample_start.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let count = runtime
        .block_on(store.find_builds(
            &store::BuildQuery {
                limit: usize::MAX,
                ..Default::default()
            },
            |_| {},
        ))
        .map(|b| b.len())
        .unwrap_or(0);

    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = runtime.spawn(buildstore::web::serve(
        listener,
        Arc::clone(&store),
        stopped,
    ));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let base = format!("http://{addr}");

    let pages = [
        "/",
        "/api",
        "/?builder=docs",
        "/?master=m1&result=failure",
        "/?branch=main&limit=200",
        // Two filters, one of them narrow: the narrow one's index must be the one walked.
        &format!("/?changeset={sample_changeset}&branch=main"),
        &window,
        &format!("/builds/{sample}"),
        &format!("/api/builds/{sample}"),
        &format!("/steps/{sample}/0/logs/stdout"),
        "/changesets",
        "/api/changesets",
        "/builders",
    ];
    let (base_p50, base_p99) = measure(&agent, &format!("{base}/style.css"));
    println!("web pages on a SQLite store with {count} builds, {REQUESTS} requests each");
    println!(
        "{:<40} {:>9} {:>9} {:>12}",
        "page", "p50 ms", "p99 ms", "p50 / base"
    );
    println!(
        "{:<40} {:>9.2} {:>9.2} {:>12}",
        "/style.css (baseline)",
        ms(base_p50),
        ms(base_p99),
        "1.0"
    );
    for page in pages {
        let (p50, p99) = measure(&agent, &format!("{base}{page}"));
        println!(
            "{:<40} {:>9.2} {:>9.2} {:>12.1}",
            page,
            ms(p50),
            ms(p99),
            p50.as_secs_f64() / base_p50.as_secs_f64()
        );
    }
    let _ = stop.send(true);
    let _ = runtime.block_on(server);
}
