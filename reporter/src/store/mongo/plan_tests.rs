//! The planner, stated as tests: what each mutation sends and why it is safe to send twice.

use super::*;
use crate::core::{Core, CoreConfig};
use buildstore_schema::Event;
use serde_json::json;

fn now() -> bson::DateTime {
    bson::DateTime::from_millis(1_800_000_000_000)
}

fn fold(core: &mut Core, events: &[serde_json::Value]) -> Vec<Mutation> {
    let t = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    events
        .iter()
        .flat_map(|e| {
            core.apply(&Event::from_value(e.clone()).unwrap(), t)
                .unwrap()
        })
        .collect()
}

fn build_with_step(limit: usize) -> (Core, Vec<Mutation>) {
    let mut core = Core::new(CoreConfig {
        inline_limit: limit,
        ..CoreConfig::default()
    });
    let ms = fold(
        &mut core,
        &[
            json!({"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1}),
            json!({"type":"step_started","master_id":"m","build_id":1,"step":0,"name":"s"}),
        ],
    );
    (core, ms)
}

fn log(text: &str) -> serde_json::Value {
    json!({"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","text":text})
}

#[test]
fn a_batch_is_one_ordered_update_per_collection_touched() {
    let (_, ms) = build_with_step(1 << 20);
    let p = plan(&ms, &["m/e1".into()], now());
    let names: Vec<&str> = p.updates.iter().map(|(c, _)| c.name()).collect();
    assert_eq!(names, ["builders", "builds", "steps"]);
    assert!(p.chunks.is_empty() && p.files.is_empty());
    assert_eq!(p.events, ["m/e1"]);
    let builds = &p.updates[1].1;
    assert!(builds[0].upsert, "build_started upserts with $setOnInsert");
    assert_eq!(
        builds[1].q,
        doc! {"_id": "m/1", "steps": {"$ne": "m/1/0"}},
        "the step is added once"
    );
}

#[test]
fn log_chunks_are_guarded_by_the_stored_size_and_appended_literally() {
    let (mut core, _) = build_with_step(1 << 20);
    let ms = fold(&mut core, &[log("$HOME is "), log("/root\n")]);
    let p = plan(&ms, &[], now());
    let steps = &p.updates[0].1;
    assert_eq!(steps.len(), 1, "both chunks merged into one statement");
    assert_eq!(steps[0].q, doc! {"_id": "m/1/0", "log_bytes.stdout": 0_i64});
    let Update::Pipeline(stages) = &steps[0].u else {
        panic!("{:?}", steps[0].u)
    };
    assert_eq!(
        stages[0],
        doc! {"$set": {"stdout": {"$concat": ["$stdout", {"$literal": "$HOME is /root\n"}]}, "log_bytes.stdout": 15_i64}}
    );
    assert!(
        p.files.is_empty(),
        "a log within the limit lives in the step document only"
    );
}

#[test]
fn a_log_past_the_limit_goes_whole_to_gridfs_from_the_crossing_on() {
    let (mut core, _) = build_with_step(256);
    let first = fold(&mut core, &[log(&"a".repeat(200))]);
    let crossing = fold(
        &mut core,
        &[log(&"b".repeat(100)), log(&"c".repeat(300_000))],
    );
    let p = plan(&first, &[], now());
    assert!(p.files.is_empty());
    let p = plan(&crossing, &[], now());
    let offsets: Vec<i64> = p
        .files
        .iter()
        .map(|f| {
            f.get_document("metadata")
                .unwrap()
                .get_i64("offset")
                .unwrap()
        })
        .collect();
    assert_eq!(
        offsets,
        [0, 200],
        "what the document held, then the new text"
    );
    let lengths: Vec<i64> = p
        .files
        .iter()
        .map(|f| f.get_i64("length").unwrap())
        .collect();
    assert_eq!(lengths, [200, 300_100]);
    assert_eq!(
        p.chunks.len(),
        1 + 2,
        "300 100 bytes make two 255 KiB chunks"
    );
    assert_eq!(p.files[1].get_str("filename").unwrap(), "m/1/0/stdout");
    // A batch sent again writes the same chunks, not new ones beside them.
    let ids = |p: &Plan| -> Vec<bson::oid::ObjectId> {
        p.chunks
            .iter()
            .map(|c| c.get_object_id("_id").unwrap())
            .collect()
    };
    let again = plan(&crossing, &[], now());
    assert_eq!(ids(&again), ids(&p));
    let mut distinct = ids(&p);
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "each chunk its own id");
    let Update::Operators(set) = &p.updates[0].1[0].u else {
        panic!()
    };
    assert_eq!(
        set.get_document("$set").unwrap().get_bool("log_truncated"),
        Ok(true)
    );
}

#[test]
fn merging_chunks_across_the_crossing_keeps_the_spilled_prefix_exact() {
    let (mut core, _) = build_with_step(256);
    let ms = fold(
        &mut core,
        &[log("x"), log(&"y".repeat(100)), log(&"z".repeat(300))],
    );
    let merged = coalesce_logs(&ms[..]);
    let Mutation::AppendLog {
        offset,
        text,
        inline,
        ..
    } = &merged[0]
    else {
        panic!()
    };
    assert_eq!((*offset, text.len()), (0, 401));
    assert!(matches!(inline, InlineUpdate::Spill { earlier, .. } if earlier.is_empty()));
}

#[test]
fn linking_a_build_never_collides_on_the_commit_id() {
    let mut core = Core::new(CoreConfig::default());
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let ms = fold(
        &mut core,
        &[
            json!({"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"changeset":hash,"repository":"git://r"}),
            json!({"type":"build_finished","master_id":"m","build_id":1,"result":0}),
        ],
    );
    let p = plan(&ms, &[], now());
    // The link goes out before the build's own update: a redo starts from the build document.
    let (c, repo) = p.updates.first().unwrap();
    assert_eq!(*c, Collection::Repository);
    assert_eq!(repo.len(), 3);
    assert!(
        repo[0].upsert && repo[0].q == doc! {"_id": hash},
        "only the plain _id filter upserts"
    );
    assert!(!repo[1].upsert && !repo[2].upsert);
    assert_eq!(
        repo[0].u,
        Update::Operators(doc! {"$setOnInsert": {"builds": [], "repository_uri": "git://r"}})
    );
}

#[test]
fn property_names_with_dots_are_set_as_one_field() {
    let (mut core, _) = build_with_step(1 << 20);
    let ms = fold(
        &mut core,
        &[
            json!({"type":"property","master_id":"m","build_id":1,"name":"a.b","value":1,"source":"s"}),
        ],
    );
    let p = plan(&ms, &[], now());
    assert!(matches!(&p.updates[0].1[0].u, Update::Pipeline(_)));
    let ms = fold(
        &mut core,
        &[
            json!({"type":"property","master_id":"m","build_id":1,"name":"ab","value":1,"source":"s"}),
        ],
    );
    let p = plan(&ms, &[], now());
    assert_eq!(
        p.updates[0].1[0].u,
        Update::Operators(doc! {"$set": {"properties.ab": {"value": 1_i64, "source": "s"}}})
    );
}
