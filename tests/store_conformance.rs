//! One conformance suite for every store: the SQLite store, and the MongoDB store on the
//! wire-protocol test peer, or on a real server when `MONGODB_URI` is set. The same streams must
//! give the same `export` output (compared as parsed JSON) and the same `buildstore log` bytes.

#[path = "store_conformance/commit_limits.rs"]
mod commit_limits;
mod common;
#[path = "store_conformance/listing.rs"]
mod listing;
#[path = "store_conformance/mongo_commands.rs"]
mod mongo_commands;
#[path = "store_conformance/vanished.rs"]
mod vanished;

use std::time::{Duration, Instant};

use common::mongo::{fresh_database, on_database, peer_command_count, real_server, Peer};
use common::*;
use serde_json::Value;

fn mongo(name: &str) -> Db {
    Db::at(fresh_database(name))
}

fn parsed(db: &Db) -> Vec<(String, Vec<Value>)> {
    ["builders", "builds", "steps", "repository"]
        .iter()
        .map(|c| (c.to_string(), db.export(c)))
        .collect()
}

/// Every step channel's full log, as `buildstore log` prints it.
fn logs(db: &Db) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for step in db.export("steps") {
        let id = step["_id"].as_str().expect("step id").to_owned();
        for channel in ["stdout", "stderr", "header"] {
            let o = db.log(&id, channel);
            assert!(o.status.success(), "log {id} {channel}: {}", stderr(&o));
            out.push((id.clone(), channel.to_owned(), o.stdout));
        }
    }
    out
}

#[test]
fn every_example_stream_gives_the_same_documents_and_logs_in_every_store() {
    for file in example_files() {
        let sqlite = Db::new();
        sqlite.ingest_ok(&file);
        let mongo = mongo("examples");
        mongo.ingest_ok(&file);
        assert_eq!(parsed(&mongo), parsed(&sqlite), "{}", file.display());
        assert_eq!(logs(&mongo), logs(&sqlite), "{}", file.display());
    }
}

#[test]
fn replaying_a_stream_and_a_random_prefix_leaves_the_mongodb_documents_unchanged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut rng = fastrand::Rng::with_seed(7);
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let db = mongo("replay");
        db.ingest_ok(&file);
        let once = parsed(&db);
        db.ingest_ok(&file);
        let prefix = write_lines(
            dir.path(),
            "prefix.jsonl",
            &lines[..rng.usize(1..lines.len())],
        );
        db.ingest_ok(&prefix);
        assert_eq!(parsed(&db), once, "{}", file.display());
    }
}

/// Running builds are recovered from MongoDB by the next run, big logs from GridFS included.
#[test]
fn a_stream_split_across_runs_gives_the_same_documents_as_one_run_on_mongodb() {
    let dir = tempfile::tempdir().expect("tempdir");
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let whole = Db::new();
        whole.ingest_ok(&file);
        for cut in [lines.len() / 3, lines.len() * 3 / 4] {
            let db = mongo("split");
            db.ingest_ok(&write_lines(dir.path(), "a.jsonl", &lines[..cut]));
            db.ingest_ok(&write_lines(dir.path(), "b.jsonl", &lines[cut..]));
            assert_eq!(
                parsed(&db),
                parsed(&whole),
                "{} cut at {cut}",
                file.display()
            );
            assert_eq!(logs(&db), logs(&whole), "{} cut at {cut}", file.display());
        }
    }
}

#[test]
fn a_generated_stream_of_concurrent_builds_matches_across_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = buildstore::synth::lines(&buildstore::synth::Shape {
        events: 3_000,
        log_chunk_bytes: 2_000,
        ..Default::default()
    });
    let file = write_lines(dir.path(), "gen.jsonl", &lines);
    let sqlite = Db::new();
    let mongo = mongo("generated");
    for db in [&sqlite, &mongo] {
        let out = db.ingest(&file, &["--inline-log-limit", "4096"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    assert_eq!(parsed(&mongo), parsed(&sqlite));
}

#[test]
fn init_creates_the_documented_indexes_and_validators_and_can_run_twice() {
    let db = mongo("init");
    for _ in 0..2 {
        let out = db.cmd().arg("init").output().expect("run init");
        assert!(out.status.success(), "{}", stderr(&out));
    }
    on_database(&db.location, |database| async move {
        for spec in buildstore_schema::INDEXES {
            let names = database
                .collection::<bson::Document>(spec.collection.name())
                .list_index_names()
                .await
                .expect("list indexes");
            assert!(
                names.contains(&spec.name.to_string()),
                "{} lacks {}: {names:?}",
                spec.collection,
                spec.name
            );
        }
        let specs: Vec<mongodb::results::CollectionSpecification> = {
            use futures::TryStreamExt;
            database
                .list_collections()
                .await
                .expect("list")
                .try_collect()
                .await
                .expect("collect")
        };
        for c in buildstore_schema::Collection::ALL {
            let spec = specs
                .iter()
                .find(|s| s.name == c.name())
                .unwrap_or_else(|| panic!("{c} not created"));
            let validator = spec.options.validator.as_ref().expect("validator");
            let schema = validator.get_document("$jsonSchema").expect("$jsonSchema");
            assert_eq!(schema.get_str("bsonType"), Ok("object"), "{c}");
            assert_eq!(
                spec.options.validation_level,
                Some(mongodb::options::ValidationLevel::Moderate),
                "{c}"
            );
        }
    });
}

#[test]
fn an_unreachable_server_is_a_clear_error_within_the_selection_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let db = Db::at(format!(
        "mongodb://builder:s3cr3t-pw@127.0.0.1:{port}/x?serverSelectionTimeoutMS=1500"
    ));
    let start = Instant::now();
    let out = db.ingest(&example("nightly.jsonl"), &[]);
    let took = start.elapsed();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("cannot reach MongoDB at mongodb://127.0.0.1:"),
        "{err}"
    );
    assert!(
        !err.contains("s3cr3t-pw") && !err.contains("builder:"),
        "credentials leaked: {err}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_server_killed_mid_ingest_then_restarted_is_fixed_by_running_the_ingest_again() {
    if real_server().is_some() {
        return; // needs a server this test can kill
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let lines = buildstore::synth::lines_of(30_000);
    let file = write_lines(dir.path(), "gen.jsonl", &lines);
    let expected = Db::new();
    expected.ingest_ok(&file);

    // The journal stands for a real server's: what was acknowledged survives the kill.
    let journal = dir.path().join("peer.journal");
    let peer = Peer::start(0, Some(&journal));
    let port = peer.port;
    let uri = format!("{}?serverSelectionTimeoutMS=20000", peer.uri("killed"));
    let db = Db::at(uri);
    let mut ingest = db
        .cmd()
        .arg("ingest")
        .arg(&file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ingest");
    // Kill it well into the stream: once the peer has taken 20 update commands (of about a
    // hundred this ingest sends), whatever the machine's speed.
    let admin = format!("mongodb://127.0.0.1:{port}/admin");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let updates = peer_command_count(&admin, "update").unwrap_or(0);
        if updates >= 20 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ingest never got going"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        ingest.try_wait().expect("ingest status").is_none(),
        "the kill comes mid-ingest"
    );
    peer.kill();
    std::thread::sleep(Duration::from_millis(300));
    let peer = Peer::start(port, Some(&journal));
    let out = ingest.wait_with_output().expect("ingest ends");
    // Either the ingest carried on against the restarted server (the driver reconnects; a batch
    // cut off mid-command is retried), or it failed with a message naming the store.
    if !out.status.success() {
        assert!(stderr(&out).contains("MongoDB"), "{}", stderr(&out));
    }
    // Whatever the first run left, a second run completes it without doubling anything.
    db.ingest_ok(&file);
    assert_eq!(parsed(&db), parsed(&expected));
    peer.kill();
}

#[allow(dead_code)]
#[path = "../examples/queries.rs"]
mod queries;

/// The Rust versions of the documented queries, run on the example streams.
#[test]
fn the_documented_queries_answer_on_the_example_streams() {
    let db = mongo("queries");
    for file in example_files() {
        db.ingest_ok(&file);
    }
    on_database(&db.location, |d| async move {
        let fetch_head = events(&example("fetch-head-corrected.jsonl"));
        let start = fetch_head
            .iter()
            .find(|e| e["type"] == "build_started")
            .expect("build");
        let master = start["master_id"].as_str().expect("string master id");
        let builder = start["builder"].as_str().expect("builder");
        let builds = queries::last_builds(&d, master, builder)
            .await
            .expect("last builds");
        assert!(!builds.is_empty());
        let numbers: Vec<i64> = builds
            .iter()
            .map(|b| {
                b.get_i64("number")
                    .or(b.get_i32("number").map(i64::from))
                    .expect("number")
            })
            .collect();
        assert!(
            numbers.windows(2).all(|w| w[0] >= w[1]),
            "by number, highest first: {numbers:?}"
        );
        let hash = builds[0].get_str("changeset").expect("corrected changeset");
        let of_changeset = queries::builds_of_changeset(&d, hash)
            .await
            .expect("builds of changeset");
        assert!(of_changeset
            .iter()
            .all(|b| b.get_str("changeset") == Ok(hash)));
        let since = bson::DateTime::from_millis(0);
        let failed = queries::failed_since(&d, since)
            .await
            .expect("failed builds");
        assert!(failed
            .iter()
            .all(|b| b.get_i32("result") == Ok(2) || b.get_i64("result") == Ok(2)));
        let build_id = builds[0].get_str("_id").expect("id");
        let steps = queries::steps_of_build(&d, build_id).await.expect("steps");
        assert!(!steps.is_empty() && steps.iter().all(|s| !s.contains_key("stdout")));
        let commits = queries::recent_commits(&d).await.expect("commits");
        assert!(
            commits.iter().any(|c| c.get_str("_id") == Ok(hash)),
            "the corrected commit is listed"
        );
        let builders = queries::builders_of(&d, master).await.expect("builders");
        assert!(builders.iter().any(|b| b.get_str("name") == Ok(builder)));
    });
}

/// What the daemon's retries rely on: a batch applied twice, or a tail of batches replayed, leaves
/// the same documents and logs as applying each once, on every store.
#[test]
fn batches_applied_twice_leave_the_same_documents_and_logs_in_every_store() {
    use buildstore::core::{Batch, Core, CoreConfig};
    use buildstore::store;
    use buildstore_schema::{Channel, Collection, Event};

    let stream = buildstore::synth::lines(&buildstore::synth::Shape {
        events: 2_000,
        log_chunk_bytes: 3_000,
        ..Default::default()
    });
    let mut core = Core::new(CoreConfig {
        inline_limit: 4096,
        ..CoreConfig::default()
    });
    let now = chrono::Utc::now();
    let batches: Vec<Batch> = stream
        .chunks(83)
        .map(|chunk| {
            let mut b = Batch::default();
            for line in chunk {
                b.mutations.extend(
                    core.apply(&Event::parse(line).expect("event"), now)
                        .expect("applies"),
                );
            }
            b
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let sqlite = store::open(&format!("sqlite:{}", dir.path().join("s.db").display()))
            .await
            .expect("sqlite");
        let mongo = store::open(&fresh_database("twice")).await.expect("mongo");
        mongo.init().await.expect("init");
        for b in &batches {
            sqlite.apply(b.clone().into()).await.expect("sqlite apply");
            mongo.apply(b.clone().into()).await.expect("mongo apply");
            mongo
                .apply(b.clone().into())
                .await
                .expect("mongo apply again");
        }
        for b in &batches[batches.len() / 2..] {
            mongo.apply(b.clone().into()).await.expect("mongo replay");
        }
        let to_json = |docs: Vec<bson::Document>| -> Vec<Value> {
            docs.iter()
                .map(|d| serde_json::from_str(&buildstore::export::to_line(d)).expect("json"))
                .collect()
        };
        let mut truncated = 0;
        for c in Collection::ALL {
            let a = to_json(sqlite.list(c, None, usize::MAX).await.expect("list"));
            let b = to_json(mongo.list(c, None, usize::MAX).await.expect("list"));
            assert_eq!(a, b, "{c}");
            if c == Collection::Steps {
                for step in &a {
                    truncated += usize::from(step["log_truncated"] == true);
                    let id = step["_id"].as_str().expect("id");
                    for ch in Channel::ALL {
                        let x = sqlite
                            .read_log(id, ch, 0, usize::MAX)
                            .await
                            .expect("read sqlite");
                        let y = mongo
                            .read_log(id, ch, 0, usize::MAX)
                            .await
                            .expect("read mongo");
                        assert_eq!(x, y, "{id} {}", ch.as_str());
                        let (o, m) = (x.len() as u64 / 3, 5000);
                        let xs = sqlite.read_log(id, ch, o, m).await.expect("range sqlite");
                        let ys = mongo.read_log(id, ch, o, m).await.expect("range mongo");
                        assert_eq!(xs, ys, "{id} {} range", ch.as_str());
                    }
                }
            }
        }
        assert!(
            truncated > 10,
            "the stream has logs past the inline limit ({truncated})"
        );
    });
}

/// A step with a 100 MiB log: cut inline, whole in GridFS, streamed back byte for byte.
#[test]
fn a_hundred_mebibyte_log_is_streamed_back_whole_from_every_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let chunk_lines = 2 << 20 >> 6; // 2 MiB chunks of 64-byte lines
    let mut expected = String::with_capacity(100 << 20);
    let mut lines = vec![
        r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"time":0}"#.to_owned(),
        r#"{"type":"step_started","master_id":"m","build_id":1,"step":0,"name":"compile","time":1}"#.to_owned(),
    ];
    for chunk in 0..50 {
        let start = expected.len();
        for i in 0..chunk_lines {
            expected.push_str(&format!(
                "{:>58} {:04}\n",
                format!("chunk {chunk} line {i}"),
                chunk
            ));
        }
        let event = serde_json::json!({"type": "log", "master_id": "m", "build_id": 1, "step": 0,
            "channel": "stdout", "text": &expected[start..], "offset": start});
        lines.push(event.to_string());
    }
    lines.push(
        r#"{"type":"step_finished","master_id":"m","build_id":1,"step":0,"result":0,"time":2}"#
            .to_owned(),
    );
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let file = write_lines(dir.path(), "big.jsonl", &refs);
    assert!(expected.len() >= 100 << 20);
    for db in [Db::new(), mongo("hundred")] {
        db.ingest_ok(&file);
        let step = db.doc("steps", "m/1/0");
        assert_eq!(step["log_bytes"]["stdout"], expected.len());
        assert!(step["stdout"].as_str().expect("inline").len() <= 1 << 20);
        let out = db.log("m/1/0", "stdout");
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            out.stdout == expected.as_bytes(),
            "{}: {} bytes back",
            db.location,
            out.stdout.len()
        );
    }
}

#[test]
fn a_write_the_server_rejects_names_the_document_and_the_event() {
    let db = mongo("rejected");
    let out = db.cmd().arg("init").output().expect("init");
    assert!(out.status.success(), "{}", stderr(&out));
    // A constraint buildstore does not expect: build numbers unique. A master restart breaks it.
    on_database(&db.location, |d| async move {
        let builds = d.collection::<bson::Document>("builds");
        let unique = mongodb::options::IndexOptions::builder()
            .unique(true)
            .build();
        builds
            .create_index(
                mongodb::IndexModel::builder()
                    .keys(bson::doc! {"number": 1})
                    .options(unique)
                    .build(),
            )
            .await
            .expect("index");
    });
    let out = db.ingest(&example("master-restart.jsonl"), &[]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("MongoDB rejected the build_started write to builds document \""),
        "{err}"
    );
    assert!(err.contains("E11000") || err.contains("11000"), "{err}");
}

/// A step whose log is written by two runs with different inline limits. The stored inline field
/// decides how the second run carries on, not its own limit: nothing of the full log is lost, and
/// the inline field is either the whole log or a head and a tail around a correct count.
#[test]
fn a_log_carried_on_under_another_inline_limit_stays_whole_in_every_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut full = String::new();
    let mut lines = vec![
        r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"time":0}"#.to_owned(),
        r#"{"type":"step_started","master_id":"m","build_id":1,"step":0,"name":"compile","time":1}"#.to_owned(),
    ];
    for i in 0..30 {
        let text = format!("{:>60} {i:03}\n", "compiling unit");
        let event = serde_json::json!({"type": "log", "master_id": "m", "build_id": 1, "step": 0,
            "channel": "stdout", "text": &text, "offset": full.len()});
        full.push_str(&text);
        lines.push(event.to_string());
    }
    // 20 chunks (1,300 bytes) in the first run: whole under 4096, cut under 256.
    let first: Vec<&str> = lines[..22].iter().map(String::as_str).collect();
    let rest: Vec<&str> = lines[22..].iter().map(String::as_str).collect();
    let first = write_lines(dir.path(), "first.jsonl", &first);
    let rest = write_lines(dir.path(), "rest.jsonl", &rest);
    for (before, after) in [("4096", "256"), ("256", "4096")] {
        let sqlite = Db::new();
        let mongo = mongo("limits");
        for db in [&sqlite, &mongo] {
            for (file, limit) in [(&first, before), (&rest, after)] {
                let out = db.ingest(file, &["--inline-log-limit", limit]);
                assert!(out.status.success(), "{}", stderr(&out));
            }
            let what = format!("{} with limit {before} then {after}", db.location);
            let out = db.log("m/1/0", "stdout");
            assert!(out.status.success(), "{what}: {}", stderr(&out));
            assert_eq!(String::from_utf8_lossy(&out.stdout), full, "{what}");
            let step = db.doc("steps", "m/1/0");
            assert_eq!(step["log_bytes"]["stdout"], full.len(), "{what}");
            let inline = step["stdout"].as_str().expect("inline");
            let (head, rest) = inline.split_once("\n[... ").expect("a cut field");
            let (omitted, tail) = rest
                .split_once(" bytes truncated by buildstore ...]\n")
                .expect("a cut field");
            assert!(
                full.starts_with(head) && full.ends_with(tail),
                "{what}: {inline}"
            );
            assert_eq!(
                omitted.parse::<usize>().ok(),
                Some(full.len() - head.len() - tail.len()),
                "{what}: {inline}"
            );
            assert!(inline.len() <= after.parse().expect("limit"), "{what}");
            assert_eq!(step["log_truncated"], true, "{what}");
        }
        assert_eq!(parsed(&mongo), parsed(&sqlite), "{before} then {after}");
    }
}
