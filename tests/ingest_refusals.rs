//! Integration tests: what the real `buildstore ingest` refuses (bad lines, events the rules
//! reject, ids and values no store could keep), and that what it refuses changes nothing.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn a_bad_line_is_reported_by_number_and_field_and_the_lines_before_it_stay_applied() {
    let db = Db::new();
    let bad = r#"{"type":"step_started","master_id":"m","build_id":1,"step":"one","name":"t"}"#;
    let later = r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#;
    let out = db.ingest_text(&[BUILD, STEP, bad, later].join("\n"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert_says(&out, "line 3: field `step`:");
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

/// A line longer than `--line-limit` (16 MiB by default) is a bad line, read to its end and not
/// kept: input without newlines, such as /dev/zero named by mistake, took all the memory there
/// was. The line after it is a line of its own.
#[test]
fn a_line_past_the_line_limit_is_a_bad_line_and_the_next_line_is_read() {
    let db = Db::new();
    let long = format!(
        r#"{{"type":"builder_added","builder":"{}"}}"#,
        "b".repeat(5000)
    );
    let finished = r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#;
    let out = db.ingest_text(
        &[BUILD, &long, finished].join("\n"),
        &["--keep-going", "--line-limit", "1024"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_says(
        &out,
        &format!(
            "line 2: line of {} bytes is longer than the line limit of 1024 bytes",
            long.len()
        ),
    );
    assert_eq!(db.doc("builds", "m/1")["result"], 0, "the line after it");
    let out = db.ingest_text(BUILD, &["--line-limit", "100"]);
    assert_says(&out, "--line-limit must be at least 1024 bytes");
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
        assert_says(&out, message);
        assert_says(&out, "2 events applied");
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
        assert_says(&out, "3 events applied, 1 duplicates skipped");
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
    assert_says(&out, "line 2: unknown step 4 of build m/1");
    assert_says(&out, "line 3: unknown step 4 of build m/1");
    assert_says(&out, "line 4: unknown build m/2");
    assert_says(&out, "line 5: unknown step 0");
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
    assert_says(&out, "1 lines rejected");
    let build = db.doc("builds", "m/1");
    let properties = build["properties"].as_object().expect("properties");
    assert_eq!(properties.len(), 15);
    assert!(!properties.contains_key("p15"));
    assert_eq!(build["result"], 0, "the events after the refused one apply");
}

/// A bad value of almost a megabyte made a message of almost a megabyte per line: the message
/// keeps its start, which names the line and the field, and its end, and says how much it left
/// out between them. Both kinds of refusal: a line that is no event, and an event the rules
/// refuse.
#[test]
fn a_message_quoting_a_huge_bad_value_is_cut_short_and_still_names_the_field() {
    let db = Db::new();
    let lines = huge_bad_values();
    let out = db.ingest_text(&lines.join("\n"), &["--keep-going"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.len() < 4096, "{} bytes on stderr", err.len());
    for (line, field) in [(1, "time"), (2, "hash")] {
        let message = err
            .lines()
            .find(|l| l.contains(&format!("line {line}: field `{field}`")))
            .unwrap_or_else(|| panic!("line {line}: {err}"));
        assert!(message.contains("bytes left out"), "{message}");
    }
}

#[test]
fn a_whole_number_beyond_64_bits_is_refused_rather_than_stored_rounded() {
    let db = Db::new();
    let wide = r#"{"type":"property","master_id":"m","build_id":1,"name":"n","value":[18446744073709551617]}"#;
    let fits = r#"{"type":"property","master_id":"m","build_id":1,"name":"f","value":18446744073709551615e0}"#;
    let out = db.ingest_text(&[BUILD, wide, fits].join("\n"), &["--keep-going"]);
    assert_eq!(out.status.code(), Some(1));
    assert_says(
        &out,
        "line 2: the whole number 18446744073709551617 does not fit in 64 bits",
    );
    let properties = &db.doc("builds", "m/1")["properties"];
    assert!(properties.get("n").is_none(), "{properties}");
    assert_eq!(
        properties["f"]["value"], 1.844_674_407_370_955_2e19,
        "a double stays a double"
    );
}

#[test]
fn an_object_giving_a_key_twice_is_refused_rather_than_one_value_picked() {
    let db = Db::new();
    let twice =
        r#"{"type":"property","master_id":"m","build_id":1,"name":"n","value":{"v":1,"v":2}}"#;
    let once = r#"{"type":"property","master_id":"m","build_id":1,"name":"o","value":{"v":1,"w":{"v":2}}}"#;
    let out = db.ingest_text(&[BUILD, twice, once].join("\n"), &["--keep-going"]);
    assert_eq!(out.status.code(), Some(1));
    assert_says(
        &out,
        "line 2: the key \"v\" is given twice in one object (at column",
    );
    let properties = &db.doc("builds", "m/1")["properties"];
    assert!(properties.get("n").is_none(), "{properties}");
    assert_eq!(properties["o"]["value"]["w"]["v"], 2, "{properties}");
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
    assert_says(
        &out,
        "line 2: field `value`: cannot be stored (the key \"$oid\"",
    );
    assert_says(&out, "line 3: field `name`: the property name \"$date\"");
    assert_says(
        &out,
        "line 4: field `value`: cannot be stored (the key \"$numberLong\"",
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

/// Every reader of a build descends its property values, some of them recursively: a value
/// nested deeper than 64 arrays or objects is refused, and one at the limit reads back whole.
#[test]
fn property_values_nested_deeper_than_64_levels_are_refused_and_64_read_back() {
    let db = Db::new();
    let nested = |depth: usize| format!("{}1{}", r#"{"a":"#.repeat(depth), "}".repeat(depth));
    let property = |name: &str, depth: usize| {
        format!(
            r#"{{"type":"property","master_id":"m","build_id":1,"name":"{name}","value":{}}}"#,
            nested(depth)
        )
    };
    let (deep, too_deep) = (property("deep", 64), property("too_deep", 65));
    let text = [BUILD, deep.as_str(), too_deep.as_str()].join("\n");
    let out = db.ingest_text(&text, &["--keep-going"]);
    assert_says(
        &out,
        "line 3: field `value`: cannot be stored (nested more than 64",
    );
    // Read back by export, and by a later run that reloads the build to finish it.
    let finish = r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#;
    assert!(db.ingest_text(finish, &[]).status.success());
    let build = db.doc("builds", "m/1");
    let mut value = &build["properties"]["deep"]["value"];
    for _ in 0..64 {
        value = &value["a"];
    }
    assert_eq!(*value, json!(1));
    assert_eq!(build["result"], 0);
    assert!(build["properties"].get("too_deep").is_none());
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
    assert_says(&out, "line 1: field `event_id` must not be empty");
    assert_says(&out, "line 2: field `event_id` must not be empty");
    assert_says(&out, " 0 duplicates skipped");
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
    assert_says(&out, "line 1: field `build_id` must not contain `/`");
    assert_says(&out, "line 2: field `master_id` must not contain `/`");
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
    assert_says(&out, "line 1: field `build_id` must not be `..`");
    assert_says(&out, "line 2: field `master_id` must not be `.`");
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
    // FETCH_HEAD would count as a commit, and the build be linked under it.
    let db = Db::new();
    let out = db.ingest_text(lines[0], &["--proper-changeset", "[A-Z_]+"]);
    assert!(!out.status.success());
    assert_says(
        &out,
        "--proper-changeset \"[A-Z_]+\" takes FETCH_HEAD for a commit hash, so builds \
         started at it would be linked into repository",
    );
}

/// A pattern written without `^` and `$` matches the whole changeset all the same: a hash inside
/// a longer revision does not make it final, nor link the build under it.
#[test]
fn a_proper_changeset_pattern_matches_the_whole_changeset() {
    let db = Db::new();
    let hash = "eb57b4930f682387ca57a2506b1dbd03f5144c04";
    let build = r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"changeset":"FETCH_HEAD","time":0}"#;
    let muddled = format!(
        r#"{{"type":"property","master_id":"m","build_id":1,"name":"got_revision","value":"FETCH_HEAD {hash}"}}"#
    );
    let real =
        format!(r#"{{"type":"changeset","master_id":"m","build_id":1,"changeset":"{hash}"}}"#);
    let end = r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#;
    let lines = [build, &muddled, &real, end].join("\n");
    let out = db.ingest_text(&lines, &["--proper-changeset", "[0-9a-f]{40}"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        db.doc("builds", "m/1")["changeset"],
        hash,
        "corrected past the muddle"
    );
    let linked: Vec<Value> = db.export("repository");
    assert_eq!(linked.len(), 1, "{linked:?}");
    assert_eq!(linked[0]["_id"], hash);
}
