//! Integration tests: the rules as the real `buildstore ingest` applies them to the example
//! streams in `examples/events/` and to generated streams, replayed and split across runs, checked
//! through `buildstore export` and `buildstore log`.

mod common;

use common::*;
use serde_json::Value;

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
    let lines = buildstore::synth::lines_of(4_000);
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
