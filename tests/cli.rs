//! Integration tests: the real `buildstore` binary on the example streams in `examples/events/`
//! and on generated streams, checked through `buildstore export` and `buildstore log`.

mod common;

use std::io::Write as _;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

#[test]
fn every_example_stream_ingests_without_rejections() {
    for file in example_files() {
        let db = Db::new();
        let out = db.ingest(&file, &[]);
        assert!(out.status.success(), "{}: {}", file.display(), stderr(&out));
        assert!(
            stderr(&out).contains(" 0 lines rejected"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn a_build_started_at_fetch_head_is_corrected_by_got_revision_and_linked() {
    let file = example("fetch-head-corrected.jsonl");
    let evs = events(&file);
    let start = evs
        .iter()
        .find(|e| e["type"] == "build_started" && e["changeset"] == "FETCH_HEAD")
        .expect("a build started at FETCH_HEAD");
    let hash = evs
        .iter()
        .find(|e| e["type"] == "property" && e["name"] == "got_revision")
        .and_then(|e| e["value"].as_str())
        .expect("a got_revision property");
    let commit = evs
        .iter()
        .find(|e| e["type"] == "commit")
        .expect("a commit event");
    let db = Db::new();
    db.ingest_ok(&file);
    let id = build_doc_id(start);
    let build = db.doc("builds", &id);
    assert_eq!(build["changeset"], hash);
    let repo = db.doc("repository", hash);
    let entry = repo["builds"]
        .as_array()
        .expect("builds list")
        .iter()
        .find(|b| b["build"] == id.as_str());
    let entry = entry.expect("the build is linked into repository");
    assert_eq!(entry["result"], build["result"]);
    assert_eq!(entry["number"], build["number"]);
    assert_eq!(repo["subject"], commit["subject"]);
    assert_eq!(repo["commiter_name"], commit["commiter_name"]);
    assert!(db
        .export("repository")
        .iter()
        .all(|d| d["_id"].as_str().is_some_and(|h| h.len() == 40)));
}

#[test]
fn a_nightly_without_changes_keeps_a_null_changeset_and_creates_no_repository_entry() {
    let db = Db::new();
    db.ingest_ok(&example("nightly.jsonl"));
    let builds = db.export("builds");
    assert!(!builds.is_empty());
    for b in &builds {
        assert_eq!(b["changeset"], Value::Null, "{b}");
        assert_eq!(b["changes"], serde_json::json!([]));
    }
    assert!(db.export("repository").is_empty());
}

#[test]
fn a_test_step_ending_with_warnings_after_a_long_clobber() {
    let db = Db::new();
    db.ingest_ok(&example("failing-tests-after-clobber.jsonl"));
    let build = db.export("builds").into_iter().next().expect("one build");
    assert_eq!(build["result"], 1, "the build ends with WARNINGS");
    let steps: Vec<Value> = build["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|id| db.doc("steps", id.as_str().expect("step ids are strings")))
        .collect();
    let duration = |s: &Value| {
        let t = |f: &str| {
            chrono::DateTime::parse_from_rfc3339(s[f]["$date"].as_str().expect("date"))
                .expect("rfc3339")
        };
        (t("time_end") - t("time_start")).num_seconds()
    };
    let longest = steps.iter().max_by_key(|s| duration(s)).expect("steps");
    assert!(
        longest["name"]
            .as_str()
            .is_some_and(|n| n.contains("clobber")),
        "longest step: {}",
        longest["name"]
    );
    let test = steps
        .iter()
        .find(|s| s["result"] == 1)
        .expect("a step with WARNINGS");
    assert_eq!(test["successful"], false);
    for field in ["stdout", "stderr", "headers"] {
        assert!(
            !test[field].as_str().unwrap_or_default().is_empty(),
            "{field} of the test step"
        );
    }
    assert!(steps
        .iter()
        .filter(|s| s["result"] == 0)
        .all(|s| s["successful"] == true));
    assert_eq!(build["steps"].as_array().map(Vec::len), Some(steps.len()));
}

#[test]
fn two_masters_with_the_same_builder_names_stay_apart() {
    let db = Db::new();
    db.ingest_ok(&example("two-masters.jsonl"));
    let builders = db.export("builders");
    let mut names: Vec<&str> = builders.iter().filter_map(|b| b["name"].as_str()).collect();
    names.sort();
    names.dedup();
    assert!(
        builders.len() > names.len(),
        "some builder names exist on both masters"
    );
    let masters: Vec<&Value> = builders.iter().map(|b| &b["master_id"]).collect();
    assert!(
        masters.iter().any(|m| m.is_number()) && masters.iter().any(|m| m.is_string()),
        "master ids keep their type"
    );
    let builds = db.export("builds");
    let ids: std::collections::HashSet<&Value> = builds.iter().map(|b| &b["_id"]).collect();
    assert_eq!(ids.len(), builds.len());
    assert!(builds.iter().all(
        |b| b["_id"].as_str().is_some_and(|id| id.starts_with(&format!(
            "{}/",
            match &b["master_id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            }
        )))
    ));
}

#[test]
fn a_master_restart_reusing_build_numbers_keeps_both_builds() {
    let db = Db::new();
    db.ingest_ok(&example("master-restart.jsonl"));
    let builds = db.export("builds");
    let mut seen = std::collections::HashMap::new();
    let mut reused = false;
    for b in &builds {
        let key = (b["builder"].to_string(), b["number"].to_string());
        reused |= seen.insert(key, b["_id"].clone()).is_some();
    }
    assert!(
        reused,
        "a builder/number pair appears twice, under two _ids"
    );
}

fn log_text(evs: &[Value], build: &Value, step: u64, channel: &str) -> String {
    let mut chunks: Vec<(u64, &str)> = evs
        .iter()
        .filter(|e| {
            e["type"] == "log"
                && e["build_id"] == *build
                && e["step"] == step
                && e["channel"] == channel
        })
        .map(|e| {
            (
                e["offset"].as_u64().unwrap_or(0),
                e["text"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    chunks.sort();
    chunks.into_iter().map(|(_, t)| t).collect()
}

#[test]
fn a_log_over_the_inline_limit_is_cut_in_the_document_and_kept_whole_in_the_store() {
    let file = example("big-log.jsonl");
    let evs = events(&file);
    let (big, full) = evs
        .iter()
        .filter(|e| e["type"] == "log" && e["channel"] == "stdout")
        .map(|e| {
            (
                e,
                log_text(
                    &evs,
                    &e["build_id"],
                    e["step"].as_u64().expect("step"),
                    "stdout",
                ),
            )
        })
        .max_by_key(|(_, text)| text.len())
        .expect("a stdout log");
    assert!(full.len() > 1 << 20, "the example log exceeds 1 MiB");
    let db = Db::new();
    db.ingest_ok(&file);
    let step_id = format!("{}/{}", build_doc_id(big), big["step"]);
    let step = db.doc("steps", &step_id);
    assert_eq!(step["log_truncated"], true);
    assert_eq!(step["log_bytes"]["stdout"], full.len());
    let inline = step["stdout"].as_str().expect("stdout");
    assert!(inline.len() <= 1 << 20);
    assert!(inline.contains("bytes truncated by buildstore"));
    assert!(full.starts_with(inline.split("\n[... ").next().expect("head")));
    assert!(full.ends_with(inline.rsplit(" ...]\n").next().expect("tail")));
    let out = db.log(&step_id, "stdout");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8(out.stdout).expect("utf-8"),
        full,
        "buildstore log prints every byte"
    );

    let small = Db::new();
    let out = small.ingest(&file, &["--inline-log-limit", "4096"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        small.doc("steps", &step_id)["stdout"]
            .as_str()
            .expect("stdout")
            .len()
            <= 4096
    );
}

#[test]
fn ingesting_a_stream_again_changes_nothing() {
    for file in example_files() {
        let db = Db::new();
        db.ingest_ok(&file);
        let once = db.export_all();
        let out = db.ingest(&file, &[]);
        assert!(
            stderr(&out).contains(" 0 events applied"),
            "{}",
            stderr(&out)
        );
        assert_eq!(db.export_all(), once, "{}", file.display());
    }
}

#[test]
fn ingesting_a_prefix_again_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let db = Db::new();
        db.ingest_ok(&file);
        let once = db.export_all();
        let prefix = write_lines(dir.path(), "prefix.jsonl", &lines[..lines.len() * 2 / 3]);
        db.ingest_ok(&prefix);
        assert_eq!(db.export_all(), once, "{}", file.display());
    }
}

/// Builds that are still running when one `ingest` ends are recovered from the store by the next.
#[test]
fn a_stream_split_across_runs_gives_the_same_documents_as_one_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    for file in example_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        let whole = Db::new();
        whole.ingest_ok(&file);
        let expected = whole.export_all();
        for cut in [lines.len() / 3, lines.len() / 2, lines.len() - 2] {
            let db = Db::new();
            db.ingest_ok(&write_lines(dir.path(), "a.jsonl", &lines[..cut]));
            db.ingest_ok(&write_lines(dir.path(), "b.jsonl", &lines[cut..]));
            assert_eq!(
                db.export_all(),
                expected,
                "{} cut at line {cut}",
                file.display()
            );
        }
    }
}

#[test]
fn a_generated_stream_of_concurrent_builds_survives_splits_and_replays() {
    let lines = buildstore::synth::lines(&buildstore::synth::Shape {
        events: 4_000,
        ..Default::default()
    });
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let all = write_lines(dir.path(), "all.jsonl", &lines);
    let whole = Db::new();
    whole.ingest_ok(&all);
    let expected = whole.export_all();
    assert!(whole.export("repository").len() > 50);
    let db = Db::new();
    for part in lines.chunks(1_111) {
        db.ingest_ok(&write_lines(dir.path(), "part.jsonl", part));
    }
    db.ingest_ok(&all);
    assert_eq!(db.export_all(), expected);
}

const BUILD: &str =
    r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"time":0}"#;
const STEP: &str =
    r#"{"type":"step_started","master_id":"m","build_id":1,"step":0,"name":"s","time":1}"#;

#[test]
fn a_bad_line_is_reported_by_number_and_field_and_the_lines_before_it_stay_applied() {
    let db = Db::new();
    let bad = r#"{"type":"step_started","master_id":"m","build_id":1,"step":"one","name":"t"}"#;
    let later = r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#;
    let out = db.ingest_text(&[BUILD, STEP, bad, later].join("\n"), &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("line 3: field `step`:"), "{err}");
    assert_eq!(
        db.doc("builds", "m/1")["steps"],
        serde_json::json!(["m/1/0"])
    );
    assert_eq!(
        db.doc("builds", "m/1")["result"],
        Value::Null,
        "nothing after the bad line was applied"
    );

    let db = Db::new();
    let out = db.ingest_text(
        &[BUILD, bad, "not json", "", later].join("\n"),
        &["--keep-going"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("line 2: field `step`") && err.contains("line 3: not valid JSON"),
        "{err}"
    );
    assert_eq!(
        db.doc("builds", "m/1")["result"],
        0,
        "--keep-going applied the later line"
    );
}

/// One event per batch: the store writes each batch while the next is folded, and a bad line or
/// a rejected event still stops the run right there.
#[test]
fn with_one_event_per_batch_the_run_still_stops_at_the_first_bad_line_or_rejected_event() {
    let finished = r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#;
    let unknown = r#"{"type":"step_finished","master_id":"m","build_id":1,"step":4,"result":0}"#;
    for (third, message) in [
        ("not json", "line 3: not valid JSON"),
        (unknown, "line 3: unknown step 4 of build m/1"),
    ] {
        let db = Db::new();
        let out = db.ingest_text(
            &[BUILD, STEP, third, finished].join("\n"),
            &["--batch-events", "1"],
        );
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains(message), "{err}");
        assert!(err.contains("2 events applied"), "{err}");
        assert_eq!(
            db.doc("builds", "m/1")["steps"],
            serde_json::json!(["m/1/0"])
        );
        assert_eq!(db.doc("builds", "m/1")["result"], Value::Null, "{third}");

        // The step again, with the same `event_id`, right behind its first copy's batch.
        let step = STEP.replace(r#""time":1"#, r#""time":1,"event_id":"s0""#);
        let db = Db::new();
        let out = db.ingest_text(
            &[BUILD, &step, &step, third, finished].join("\n"),
            &["--batch-events", "1", "--keep-going"],
        );
        let err = stderr(&out);
        assert!(
            err.contains("3 events applied, 1 duplicates skipped"),
            "{err}"
        );
        assert_eq!(db.doc("builds", "m/1")["result"], 0, "{third}");
    }
}

#[test]
fn events_for_unknown_builds_or_steps_are_rejected_and_change_nothing() {
    let db = Db::new();
    let lines = [
        BUILD,
        r#"{"type":"log","master_id":"m","build_id":1,"step":4,"channel":"stdout","text":"x"}"#,
        r#"{"type":"step_finished","master_id":"m","build_id":1,"step":4,"result":0}"#,
        r#"{"type":"property","master_id":"m","build_id":2,"name":"p","value":1}"#,
        r#"{"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","text":"x","offset":0}"#,
    ];
    let out = db.ingest_text(&lines.join("\n"), &["--keep-going"]);
    let err = stderr(&out);
    assert!(err.contains("line 2: unknown step 4 of build m/1"), "{err}");
    assert!(err.contains("line 3: unknown step 4 of build m/1"), "{err}");
    assert!(err.contains("line 4: unknown build m/2"), "{err}");
    assert!(err.contains("line 5: unknown step 0"), "{err}");
    assert!(db.export("steps").is_empty());
    assert_eq!(db.export("builds").len(), 1);
}

#[test]
fn a_property_that_would_outgrow_mongodbs_document_limit_is_rejected_and_the_build_carries_on() {
    let db = Db::new();
    let big = "x".repeat(1 << 20);
    let mut lines = vec![BUILD.to_owned()];
    for i in 0..16 {
        lines.push(format!(
            r#"{{"type":"property","master_id":"m","build_id":1,"name":"p{i}","value":"{big}"}}"#
        ));
    }
    lines.push(r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#.into());
    let out = db.ingest_text(&lines.join("\n"), &["--keep-going"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("line 17: build m/1 would grow to") && err.contains("MongoDB holds at most"),
        "{err}"
    );
    assert!(err.contains("1 lines rejected"), "{err}");
    let build = db.doc("builds", "m/1");
    let properties = build["properties"].as_object().expect("properties");
    assert_eq!(properties.len(), 15);
    assert!(!properties.contains_key("p15"));
    assert_eq!(build["result"], 0, "the events after the refused one apply");
}

#[test]
fn a_whole_number_beyond_64_bits_is_refused_rather_than_stored_rounded() {
    let db = Db::new();
    let wide = r#"{"type":"property","master_id":"m","build_id":1,"name":"n","value":[18446744073709551617]}"#;
    let fits = r#"{"type":"property","master_id":"m","build_id":1,"name":"f","value":18446744073709551615e0}"#;
    let out = db.ingest_text(&[BUILD, wide, fits].join("\n"), &["--keep-going"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("line 2: the whole number 18446744073709551617 does not fit in 64 bits"),
        "{err}"
    );
    let properties = &db.doc("builds", "m/1")["properties"];
    assert!(properties.get("n").is_none(), "{properties}");
    assert_eq!(
        properties["f"]["value"], 1.844_674_407_370_955_2e19,
        "a double stays a double"
    );
}

#[test]
fn keys_that_bson_reads_as_typed_values_are_refused_and_the_build_stays_readable() {
    let db = Db::new();
    let lines = [
        BUILD,
        r#"{"type":"property","master_id":"m","build_id":1,"name":"q","value":{"a":1,"$oid":"x"}}"#,
        r#"{"type":"property","master_id":"m","build_id":1,"name":"$date","value":"garbage"}"#,
        r#"{"type":"property","master_id":"m","build_id":1,"name":"n","value":{"$numberLong":"5"}}"#,
        r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#,
    ];
    let out = db.ingest_text(&lines.join("\n"), &["--keep-going"]);
    let err = stderr(&out);
    assert!(
        err.contains("line 2: field `value`: cannot be stored (the key \"$oid\""),
        "{err}"
    );
    assert!(
        err.contains("line 3: field `name`: the property name \"$date\""),
        "{err}"
    );
    assert!(
        err.contains("line 4: field `value`: cannot be stored (the key \"$numberLong\""),
        "{err}"
    );
    let build = db.doc("builds", "m/1");
    assert_eq!(
        build["properties"],
        json!({}),
        "nothing was stored as another type"
    );
    assert_eq!(
        build["result"], 0,
        "the build reads back and takes later events"
    );
}

#[test]
fn an_empty_event_id_is_rejected_rather_than_taken_as_a_duplicate() {
    let db = Db::new();
    let lines = [
        r#"{"type":"builder_added","master_id":"m","builder":"a","event_id":""}"#,
        r#"{"type":"builder_added","master_id":"m","builder":"b","event_id":""}"#,
        r#"{"type":"builder_added","master_id":"m","builder":"c"}"#,
    ];
    let out = db.ingest_text(&lines.join("\n"), &["--keep-going"]);
    let err = stderr(&out);
    assert!(
        err.contains("line 1: field `event_id` must not be empty"),
        "{err}"
    );
    assert!(
        err.contains("line 2: field `event_id` must not be empty"),
        "{err}"
    );
    assert!(err.contains(" 0 duplicates skipped"), "{err}");
    let names: Vec<Value> = db
        .export("builders")
        .into_iter()
        .map(|b| b["name"].clone())
        .collect();
    assert_eq!(names, ["c"]);
}

#[test]
fn ids_with_a_slash_are_rejected_rather_than_merged_into_another_build() {
    // Joined with `/`, both would be the build `a/b/c`: the second would land in the first.
    let db = Db::new();
    let lines = [
        r#"{"type":"build_started","master_id":"a","build_id":"b/c","builder":"x","number":1,"time":"2026-01-01T00:00:00Z"}"#,
        r#"{"type":"build_started","master_id":"a/b","build_id":"c","builder":"y","number":2,"time":"2026-01-01T00:00:00Z"}"#,
        r#"{"type":"build_started","master_id":"a","build_id":"c","builder":"lin/64","number":3,"time":"2026-01-01T00:00:00Z"}"#,
    ];
    let out = db.ingest_text(&lines.join("\n"), &["--keep-going"]);
    let err = stderr(&out);
    assert!(
        err.contains("line 1: field `build_id` must not contain `/`"),
        "{err}"
    );
    assert!(
        err.contains("line 2: field `master_id` must not contain `/`"),
        "{err}"
    );
    let builds: Vec<(Value, Value)> = db
        .export("builds")
        .into_iter()
        .map(|b| (b["_id"].clone(), b["builder"].clone()))
        .collect();
    assert_eq!(builds, [(json!("a/c"), json!("lin/64"))]);
}

#[test]
fn dot_and_dot_dot_are_rejected_as_ids_since_no_browser_could_reach_their_pages() {
    let db = Db::new();
    let lines = [
        r#"{"type":"build_started","master_id":"m","build_id":"..","builder":"x","number":1,"time":0}"#,
        r#"{"type":"builder_added","master_id":".","builder":"x"}"#,
        r#"{"type":"build_started","master_id":"m","build_id":"...","builder":"x","number":2,"time":0}"#,
    ];
    let out = db.ingest_text(&lines.join("\n"), &["--keep-going"]);
    let err = stderr(&out);
    assert!(
        err.contains("line 1: field `build_id` must not be `..`"),
        "{err}"
    );
    assert!(
        err.contains("line 2: field `master_id` must not be `.`"),
        "{err}"
    );
    let builds: Vec<Value> = db
        .export("builds")
        .into_iter()
        .map(|b| b["_id"].clone())
        .collect();
    assert_eq!(builds, [json!("m/...")]);
    let builders: Vec<Value> = db
        .export("builders")
        .into_iter()
        .map(|b| b["_id"].clone())
        .collect();
    assert_eq!(
        builders,
        [json!("m/x")],
        "only the builder of the build accepted"
    );
}

#[test]
fn a_file_starting_with_a_byte_order_mark_ingests() {
    let db = Db::new();
    let text = format!("\u{feff}{BUILD}\r\n{STEP}\r\n");
    let out = db.ingest_text(&text, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.export("steps").len(), 1);
}

#[test]
fn a_proper_changeset_pattern_can_be_configured() {
    let db = Db::new();
    let lines = [
        r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"changeset":"trunk","time":0}"#,
        r#"{"type":"changeset","master_id":"m","build_id":1,"changeset":"r1234"}"#,
        r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#,
    ];
    let out = db.ingest_text(&lines.join("\n"), &["--proper-changeset", "^r[0-9]+$"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.doc("repository", "r1234")["builds"][0]["build"], "m/1");
    let out = Db::new().ingest_text("", &["--proper-changeset", "("]);
    assert_says(&out, "--proper-changeset");
}

/// `ingest -` running, and the pipe to its standard input.
fn ingest_from_pipe(db: &Db) -> (std::process::Child, std::process::ChildStdin) {
    let mut ingest = db
        .cmd()
        .args(["ingest", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ingest");
    let pipe = ingest.stdin.take().expect("stdin");
    (ingest, pipe)
}

/// Waits (up to 20 s) until `collection` holds `count` documents, as `export` sees them while
/// another process writes the store; fails with `otherwise`.
fn wait_for_documents(db: &Db, collection: &str, count: usize, otherwise: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = db
            .cmd()
            .args(["export", collection])
            .output()
            .expect("run export");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{otherwise}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A master piping its events into `ingest -` sees its documents as it goes, not when a chunk of
/// a thousand events fills or the pipe closes.
#[test]
fn events_from_a_pipe_are_applied_when_the_pipe_pauses() {
    let db = Db::new();
    let (mut ingest, mut pipe) = ingest_from_pipe(&db);
    // The pause comes in the middle of a line, as with a writer that buffers by blocks.
    let finish = r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#;
    write!(pipe, "{BUILD}\n{STEP}\n{}", &finish[..20]).expect("write");
    pipe.flush().expect("flush");
    wait_for_documents(&db, "steps", 1, "nothing applied while the pipe stays open");
    writeln!(pipe, "{}", &finish[20..]).expect("write");
    drop(pipe);
    assert!(ingest.wait().expect("wait").success());
    assert_eq!(
        db.doc("builds", "m/1")["result"],
        0,
        "the line cut by the pause"
    );

    // A bad line ends the run at once, though the pipe stays open.
    let db = Db::new();
    let (mut ingest, mut pipe) = ingest_from_pipe(&db);
    writeln!(pipe, "{BUILD}\nnot json").expect("write");
    pipe.flush().expect("flush");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = ingest.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(15) {
            let _ = ingest.kill();
            panic!("ingest waits for the pipe after a bad line");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    drop(pipe);
}

/// Each writer keeps what it wrote in memory (a log's length, a build's steps): two at once on one
/// store lost log text, both reporting every event applied. The second is refused instead.
#[test]
fn one_process_writes_a_store_at_a_time() {
    let db = Db::new();
    let (mut first, mut pipe) = ingest_from_pipe(&db);
    writeln!(pipe, "{BUILD}").expect("write");
    pipe.flush().expect("flush");
    // The first holds the store once its build is applied.
    wait_for_documents(&db, "builds", 1, "the first ingest applies nothing");
    let second = db.ingest_text(STEP, &[]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("is written by another buildstore process"),
        "{}",
        stderr(&second)
    );
    // Reading goes on meanwhile.
    assert_eq!(db.export("builds").len(), 1);
    drop(pipe);
    assert!(first.wait().expect("wait").success());
    let out = db.ingest_text(STEP, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.export("steps").len(), 1);
}

#[test]
fn export_prints_extended_json_sorted_by_id() {
    let db = Db::new();
    db.ingest_ok(&example("two-masters.jsonl"));
    let builds = db.export("builds");
    let ids: Vec<&str> = builds.iter().filter_map(|b| b["_id"].as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert!(
        builds[0]["time_start"]["$date"].is_string(),
        "dates are Extended JSON"
    );
}

#[test]
fn clear_errors_for_bad_commands() {
    let db = Db::new();
    let out = db
        .cmd()
        .args(["ingest", "/no/such/file.jsonl"])
        .output()
        .expect("run");
    assert_says(&out, "cannot open /no/such/file.jsonl");
    // A path that opens but cannot be read as a stream is named too.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().display().to_string();
    let out = db.cmd().args(["ingest", &path]).output().expect("run");
    assert!(
        !out.status.success()
            && stderr(&out).contains(&format!("cannot read {path}: it is a directory")),
        "{}",
        stderr(&out)
    );
    for memory in [
        "sqlite::memory:",
        "sqlite:file::memory:",
        "sqlite:file:x.db?mode=memory",
    ] {
        let out = Db::at(memory.into())
            .cmd()
            .current_dir(dir.path())
            .args(["ingest", "-"])
            .output()
            .expect("run");
        assert!(
            stderr(&out).contains("an in-memory database would lose every document"),
            "{memory}: {}",
            stderr(&out)
        );
        let made = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(made, 0, "{memory}: nothing made");
    }
    // An empty location, from the environment too, is said to be empty.
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .env("BUILDSTORE_STORE", "")
        .args(["export", "builds"])
        .output()
        .expect("run");
    assert_says(
        &out,
        "the store location is empty (an empty --store or BUILDSTORE_STORE)",
    );
    // A URL's slashes would name a file at the root.
    let name = format!("bs-url-{}.db", std::process::id());
    let out = Db::at(format!("sqlite://{name}")).ingest_text("", &[]);
    assert_says(&out, "takes a file path, not a URL with //");
    assert!(!std::path::Path::new("/").join(&name).exists());
    assert!(!std::path::Path::new("/")
        .join(format!("{name}.lock"))
        .exists());
    // A directory where the store file should be leaves no lock file beside it.
    let folder = dir.path().join("folder.db");
    std::fs::create_dir(&folder).expect("mkdir");
    let out = Db::at(format!("sqlite:{}", folder.display())).ingest_text("", &[]);
    assert!(!out.status.success());
    assert!(
        !dir.path().join("folder.db.lock").exists(),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir(&folder).expect("rmdir");
    // A MongoDB URI that does not parse is said to be one.
    let out = Db::at("mongodb://us:er:pw@127.0.0.1:1/db".into())
        .cmd()
        .args(["export", "builds"])
        .output()
        .expect("run");
    assert!(
        stderr(&out).contains("the MongoDB URI of the store is not valid")
            && stderr(&out).contains("password must be URL encoded")
            && !stderr(&out).contains("pw"),
        "{}",
        stderr(&out)
    );
    assert!(
        db.ingest_text("", &[]).status.success(),
        "creates the store"
    );
    let out = db.log("m/1/0", "stdout");
    assert!(
        !out.status.success() && stderr(&out).contains("no step \"m/1/0\""),
        "{}",
        stderr(&out)
    );
    let out = db.cmd().args(["export", "build"]).output().expect("run");
    assert!(
        stderr(&out).contains("unknown collection \"build\""),
        "{}",
        stderr(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["--store", "postgres://x", "export", "builds"])
        .output()
        .expect("run");
    assert!(
        stderr(&out).contains("\"postgres://x\" is not understood"),
        "{}",
        stderr(&out)
    );
    // Each cause is said once, though several layers quote the one they wrap.
    let out = Db::at("sqlite:/no/such/dir/store.db".into()).ingest_text("", &[]);
    assert_eq!(
        stderr(&out).matches("unable to open database file").count(),
        1,
        "{}",
        stderr(&out)
    );
    for limit in ["10", "3000000"] {
        let out = db.ingest_text("", &["--inline-log-limit", limit]);
        assert!(
            stderr(&out).contains("--inline-log-limit must be between 256 and 2097152 bytes"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn commands_that_fail_on_their_arguments_leave_no_new_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fresh.db");
    let db = Db::at(format!("sqlite:{}", path.display()));
    let cases: [(&[&str], &str); 6] = [
        (
            &["ingest", "/no/such/file.jsonl"],
            "cannot open /no/such/file.jsonl",
        ),
        (&["ingest", "/"], "cannot read /: it is a directory"),
        (
            &["ingest", "--inline-log-limit", "5", "-"],
            "--inline-log-limit must be",
        ),
        (
            &["serve", "--line-limit", "0"],
            "--line-limit must be at least 1024 bytes",
        ),
        (
            &["serve", "--metrics", "nowhere"],
            "--metrics \"nowhere\" is not",
        ),
        (
            &["status", "--metrics", "127.0.0.1:9"],
            "no buildstore serve answers",
        ),
    ];
    for (args, says) in cases {
        let out = db.cmd().args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(!path.exists(), "{args:?} created the store");
    }
}

#[test]
fn commands_that_only_read_refuse_a_store_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo.db");
    let db = Db::at(format!("sqlite:{}", typo.display()));
    for args in [&["export", "builds"][..], &["log", "m/1/0", "stdout"]] {
        let out = db.cmd().args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains(&format!("`buildstore {}` only reads", args[0])),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!typo.exists(), "{args:?} created an empty store");
    }
    // Nor is an empty file made into one.
    std::fs::write(&typo, b"").expect("an empty file");
    let out = db.cmd().args(["export", "builds"]).output().expect("run");
    assert_says(&out, "is an empty file, not a store");
    assert_eq!(std::fs::metadata(&typo).expect("still there").len(), 0);
}

#[test]
fn the_store_can_be_chosen_through_the_environment() {
    let db = Db::new();
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .env("BUILDSTORE_STORE", &db.location)
        .args(["ingest"])
        .arg(example("nightly.jsonl"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!db.export("builds").is_empty());
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let db = Db::new();
    let mut cmd = db.cmd();
    cmd.env("BUILDSTORE_LOG", "debug");
    let out = cmd
        .args(["ingest", &example_files()[0].display().to_string()])
        .output()
        .expect("run ingest");
    let err = stderr(&out);
    assert!(err.contains("DEBUG"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}

#[test]
fn status_gives_up_on_an_address_that_never_answers() {
    // Something that accepts connections but never speaks HTTP, like the socket feed's port.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["status", "--metrics", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run status");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("buildstore status still waits after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no answer within 5 s")
            && stderr(&out).contains("the daemon's --metrics address?"),
        "{}",
        stderr(&out)
    );
    drop(silent);
}

#[test]
fn help_teaches_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .arg("--help")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "ingest",
        "export",
        "log",
        "--store",
        "sqlite:PATH",
        "docs/events.md",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
}
