//! The rules, stated as tests of the fold.

use super::*;
use crate::{InlineUpdate, Mutation};
use buildstore_schema::RepoBuildEntry;
use serde_json::{json, Value};

#[path = "fold_log_tests.rs"]
mod logs;

const HASH: &str = "4f2b8c1d9e0a7b6c5d4e3f2a1b0c9d8e7f6a5b4c";
const OTHER: &str = "aaaaaaaaaabbbbbbbbbbccccccccccdddddddddd";

fn now() -> chrono::DateTime<Utc> {
    chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap()
}

fn ev(v: Value) -> Event {
    let mut v = v;
    v.as_object_mut()
        .unwrap()
        .entry("master_id")
        .or_insert(json!("m1"));
    Event::from_value(v).unwrap()
}

fn apply(core: &mut Core, v: Value) -> Vec<Mutation> {
    core.apply(&ev(v), now()).unwrap()
}

fn fail(core: &mut Core, v: Value) -> RuleError {
    core.apply(&ev(v), now()).unwrap_err()
}

fn start(core: &mut Core, changeset: Option<&str>) -> Vec<Mutation> {
    apply(
        core,
        json!({"type":"build_started","builder":"linux","build_id":7,"number":1,"changeset":changeset}),
    )
}

fn links(ms: &[Mutation]) -> Vec<&str> {
    ms.iter()
        .filter_map(|m| match m {
            Mutation::LinkBuildToCommit { hash, .. } => Some(hash.as_str()),
            _ => None,
        })
        .collect()
}

fn changesets(ms: &[Mutation]) -> Vec<&str> {
    ms.iter()
        .filter_map(|m| match m {
            Mutation::SetChangeset { changeset, .. } => Some(changeset.as_str()),
            _ => None,
        })
        .collect()
}

fn finish(core: &mut Core) -> Vec<Mutation> {
    apply(
        core,
        json!({"type":"build_finished","build_id":7,"result":0}),
    )
}

#[test]
fn ids_combine_master_and_build_id_never_the_number() {
    let mut core = Core::new(CoreConfig::default());
    let ms = start(&mut core, None);
    let Mutation::StartBuild(doc) = &ms[1] else {
        panic!("{ms:?}")
    };
    assert_eq!(doc.id, "m1/7");
    assert_eq!(doc.build_id, Ident::Int(7));
    assert!(matches!(&ms[0], Mutation::EnsureBuilder { id, .. } if id == "m1/linux"));
    let ms = apply(
        &mut core,
        json!({"type":"step_started","build_id":7,"step":0,"name":"git"}),
    );
    assert!(matches!(&ms[0], Mutation::StartStep { doc, position: 0 } if doc.id == "m1/7/0"));
}

#[test]
fn an_empty_starting_changeset_is_stored_as_null() {
    let mut core = Core::new(CoreConfig::default());
    let ms = start(&mut core, Some(""));
    let Mutation::StartBuild(doc) = &ms[1] else {
        panic!()
    };
    assert_eq!(doc.changeset, None);
}

#[test]
fn a_symbolic_changeset_is_corrected_by_got_revision_and_the_finished_build_linked() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, Some("FETCH_HEAD"));
    let ms = apply(
        &mut core,
        json!({"type":"property","build_id":7,"name":"got_revision","value":HASH,"source":"Git"}),
    );
    assert_eq!(changesets(&ms), [HASH]);
    assert!(
        links(&ms).is_empty(),
        "not linked before the build finishes"
    );
    let ms = finish(&mut core);
    assert_eq!(links(&ms), [HASH]);
}

#[test]
fn a_proper_changeset_is_final() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, Some(HASH));
    let ms = apply(
        &mut core,
        json!({"type":"changeset","build_id":7,"changeset":"FETCH_HEAD"}),
    );
    assert!(ms.is_empty());
    let ms = apply(
        &mut core,
        json!({"type":"changeset","build_id":7,"changeset":OTHER}),
    );
    assert!(ms.is_empty(), "a proper hash is not replaced either");
    assert_eq!(links(&finish(&mut core)), [HASH]);
}

#[test]
fn symbolic_values_replace_each_other_until_a_proper_one_arrives() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, Some("FETCH_HEAD"));
    assert_eq!(
        changesets(&apply(
            &mut core,
            json!({"type":"changeset","build_id":7,"changeset":"main"})
        )),
        ["main"]
    );
    assert!(apply(
        &mut core,
        json!({"type":"changeset","build_id":7,"changeset":""})
    )
    .is_empty());
    assert_eq!(
        changesets(&apply(
            &mut core,
            json!({"type":"changeset","build_id":7,"changeset":HASH})
        )),
        [HASH]
    );
}

#[test]
fn builds_without_a_proper_changeset_are_never_linked() {
    for changeset in [None, Some("FETCH_HEAD"), Some("HEAD"), Some("4f2b8c1")] {
        let mut core = Core::new(CoreConfig::default());
        start(&mut core, changeset);
        assert!(links(&finish(&mut core)).is_empty(), "{changeset:?}");
    }
}

#[test]
fn a_proper_hash_arriving_after_the_finish_links_the_build_then() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, Some("FETCH_HEAD"));
    assert!(links(&finish(&mut core)).is_empty());
    let ms = apply(
        &mut core,
        json!({"type":"changeset","build_id":7,"changeset":HASH}),
    );
    assert_eq!(links(&ms), [HASH]);
    let Mutation::LinkBuildToCommit { entry, .. } = &ms[1] else {
        panic!()
    };
    assert_eq!(
        (entry.build.as_str(), entry.result, entry.number),
        ("m1/7", Some(0), 1)
    );
}

#[test]
fn got_revision_in_the_initial_properties_counts_too() {
    let mut core = Core::new(CoreConfig::default());
    let ms = apply(
        &mut core,
        json!({"type":"build_started","builder":"b","build_id":7,"number":1,"codebase":"app",
               "properties":{"got_revision":{"value":{"app":HASH,"lib":OTHER},"source":"Git"}}}),
    );
    assert_eq!(changesets(&ms), [HASH]);
}

fn entry(ms: &[Mutation]) -> &RepoBuildEntry {
    ms.iter()
        .find_map(|m| match m {
            Mutation::LinkBuildToCommit { entry, .. } => Some(entry),
            _ => None,
        })
        .expect("a link")
}

/// A build finished again (a master that reports it twice, a result changed by hand) is linked
/// again, and its entry in `repository` says how it ended the last time.
#[test]
fn a_repeated_finish_links_the_build_again_with_its_new_result_and_end() {
    let mut core = Core::new(CoreConfig::default());
    apply(
        &mut core,
        json!({"type":"build_started","builder":"linux","build_id":7,"number":3,"changeset":HASH,
               "time":"2026-03-12T10:00:00Z"}),
    );
    let first = apply(
        &mut core,
        json!({"type":"build_finished","build_id":7,"result":2,"time":"2026-03-12T10:05:00Z"}),
    );
    let again = apply(
        &mut core,
        json!({"type":"build_finished","build_id":7,"result":0,"time":"2026-03-12T10:09:00Z"}),
    );
    let date = |t: &str| DateTime::from_chrono(t.parse::<chrono::DateTime<Utc>>().unwrap());
    let expected = |result, end| RepoBuildEntry {
        build: "m1/7".into(),
        builder: "linux".into(),
        number: 3,
        result: Some(result),
        time_start: date("2026-03-12T10:00:00Z"),
        time_end: Some(date(end)),
    };
    assert_eq!(links(&first), [HASH]);
    assert_eq!(*entry(&first), expected(2, "2026-03-12T10:05:00Z"));
    assert_eq!(links(&again), [HASH]);
    assert_eq!(*entry(&again), expected(0, "2026-03-12T10:09:00Z"));
}

/// Buildbot fills a multi-codebase `got_revision` a checkout at a time.
#[test]
fn a_build_takes_only_its_own_codebases_revision_from_got_revision() {
    let mut core = Core::new(CoreConfig::default());
    apply(
        &mut core,
        json!({"type":"build_started","builder":"b","build_id":7,"number":1,"codebase":"app"}),
    );
    let got = |map: Value| json!({"type":"property","build_id":7,"name":"got_revision","value":map,"source":"Git"});
    let lib_first = apply(&mut core, got(json!({"lib": OTHER})));
    assert_eq!(
        changesets(&lib_first),
        [""; 0],
        "lib's revision is not the build's"
    );
    let both = apply(&mut core, got(json!({"lib": OTHER, "app": HASH})));
    assert_eq!(changesets(&both), [HASH]);
    assert_eq!(links(&finish(&mut core)), [HASH]);
}

#[test]
fn a_repeated_build_or_step_start_changes_nothing() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, Some("FETCH_HEAD"));
    assert!(start(&mut core, Some("other")).is_empty());
    apply(
        &mut core,
        json!({"type":"step_started","build_id":7,"step":0,"name":"git"}),
    );
    assert!(apply(
        &mut core,
        json!({"type":"step_started","build_id":7,"step":0,"name":"git"})
    )
    .is_empty());
}

#[test]
fn steps_are_positioned_by_number_even_when_they_start_out_of_order() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, None);
    for (step, expected) in [(0, 0), (2, 1), (1, 1), (10, 3)] {
        let ms = apply(
            &mut core,
            json!({"type":"step_started","build_id":7,"step":step,"name":"s"}),
        );
        assert!(
            matches!(&ms[0], Mutation::StartStep { position, .. } if *position == expected),
            "{step}"
        );
    }
}

#[test]
fn events_for_unknown_builds_and_steps_are_errors() {
    let mut core = Core::new(CoreConfig::default());
    let e = fail(
        &mut core,
        json!({"type":"step_started","build_id":9,"step":0,"name":"x"}),
    );
    assert_eq!(
        e.to_string(),
        "unknown build m1/9: no build_started was applied for it"
    );
    start(&mut core, None);
    let e = fail(
        &mut core,
        json!({"type":"step_finished","build_id":7,"step":3,"result":0}),
    );
    assert_eq!(
        e.to_string(),
        "unknown step 3 of build m1/7: no step_started was applied for it"
    );
    let e = fail(
        &mut core,
        json!({"type":"log","build_id":7,"step":3,"channel":"stdout","text":"x"}),
    );
    assert!(matches!(e, RuleError::UnknownStep { step: 3, .. }));
}

#[test]
fn a_finished_step_carries_its_result_and_text() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, None);
    apply(
        &mut core,
        json!({"type":"step_started","build_id":7,"step":0,"name":"test"}),
    );
    let ms = apply(
        &mut core,
        json!({"type":"step_finished","build_id":7,"step":0,"result":1,"text":"tests: 2 warnings"}),
    );
    assert!(
        matches!(&ms[0], Mutation::FinishStep { result: 1, text: Some(t), .. } if t == "tests: 2 warnings")
    );
}

fn log(core: &mut Core, text: &str, offset: Option<u64>) -> Result<Vec<Mutation>, RuleError> {
    let mut v = json!({"type":"log","build_id":7,"step":0,"channel":"stdout","text":text});
    if let Some(o) = offset {
        v["offset"] = json!(o);
    }
    core.apply(&ev(v), now())
}

fn appended(ms: &[Mutation]) -> Vec<(u64, &str)> {
    ms.iter()
        .filter_map(|m| match m {
            Mutation::AppendLog { offset, text, .. } => Some((*offset, text.as_str())),
            _ => None,
        })
        .collect()
}

fn with_step(limit: usize) -> Core {
    let mut core = Core::new(CoreConfig {
        inline_limit: limit,
        ..CoreConfig::default()
    });
    start(&mut core, None);
    apply(
        &mut core,
        json!({"type":"step_started","build_id":7,"step":0,"name":"compile"}),
    );
    core
}

#[test]
fn finished_builds_are_evicted_only_when_asked_and_not_while_still_on_their_way() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, None);
    finish(&mut core);
    assert_eq!(core.builds_in_memory(), 1);
    core.evict_finished(|id| id == "m1/7");
    assert_eq!(
        core.builds_in_memory(),
        1,
        "its batch is not in the store yet"
    );
    core.evict_finished(|_| false);
    assert_eq!(core.builds_in_memory(), 0);
}

#[test]
fn commits_need_a_full_hash_and_default_the_abbreviation() {
    let core = &mut Core::new(CoreConfig::default());
    let commit = |hash: &str| {
        json!({"type":"commit","hash":hash,"repository_uri":"git://x","subject":"s","author_name":"a",
               "author_email":"a@x","author_date":0,"commiter_name":"c","commiter_email":"c@x","commiter_date":0})
    };
    let ms = apply(core, commit(HASH));
    let Mutation::UpsertCommit(doc) = &ms[0] else {
        panic!()
    };
    assert_eq!(doc.hash_abbrev.as_deref(), Some("4f2b8c1"));
    assert!(doc.builds.is_empty());
    // An empty abbreviation would leave the commit nothing to be shown or clicked by.
    let mut empty = commit(HASH);
    empty["hash_abbrev"] = json!("");
    let ms = apply(core, empty);
    let Mutation::UpsertCommit(doc) = &ms[0] else {
        panic!()
    };
    assert_eq!(doc.hash_abbrev.as_deref(), Some("4f2b8c1"));
    assert_eq!(
        fail(core, commit("FETCH_HEAD")).to_string(),
        "field `hash`: \"FETCH_HEAD\" is not a full commit hash"
    );
}

#[test]
fn a_hash_in_upper_case_names_the_same_commit_as_in_lower_case() {
    let upper = HASH.to_uppercase();
    // As the starting changeset, as a correction, and as a commit's own hash.
    let mut core = Core::new(CoreConfig::default());
    let ms = start(&mut core, Some(&upper));
    let Mutation::StartBuild(doc) = &ms[1] else {
        panic!("{ms:?}")
    };
    assert_eq!(doc.changeset.as_deref(), Some(HASH));
    assert_eq!(links(&finish(&mut core)), [HASH]);

    let mut core = Core::new(CoreConfig::default());
    start(&mut core, Some("FETCH_HEAD"));
    let ms = apply(
        &mut core,
        json!({"type":"changeset","build_id":7,"changeset":upper}),
    );
    assert_eq!(changesets(&ms), [HASH]);
    assert_eq!(links(&finish(&mut core)), [HASH]);

    let ms = apply(
        &mut core,
        json!({"type":"commit","hash":upper,"repository_uri":"git://x","subject":"s","author_name":"a",
               "author_email":"a@x","author_date":0,"commiter_name":"c","commiter_email":"c@x","commiter_date":0}),
    );
    let Mutation::UpsertCommit(doc) = &ms[0] else {
        panic!()
    };
    assert_eq!(
        (
            doc.id.as_str(),
            doc.hash.as_deref(),
            doc.hash_abbrev.as_deref()
        ),
        (HASH, Some(HASH), Some("4f2b8c1"))
    );
}

#[test]
fn builder_lifecycle() {
    let core = &mut Core::new(CoreConfig::default());
    let ms = apply(
        core,
        json!({"type":"builder_added","builder":"linux","category":"ci","tags":["x"],"slaves":["w1"]}),
    );
    assert!(
        matches!(&ms[0], Mutation::AddBuilder { id, category: Some(c), .. } if id == "m1/linux" && c == "ci")
    );
    let ms = apply(core, json!({"type":"builder_removed","builder":"linux"}));
    assert!(matches!(&ms[0], Mutation::SetBuilderStatus { status, .. } if status == "removed"));
    assert_eq!(
        fail(
            core,
            json!({"type":"builder_state","builder":"","state":"idle"})
        ),
        RuleError::Empty("builder")
    );
}

#[test]
fn event_time_is_used_and_defaults_to_the_time_received() {
    let core = &mut Core::new(CoreConfig::default());
    let ms = apply(
        core,
        json!({"type":"build_started","builder":"b","build_id":1,"number":1,"time":"2026-05-01T10:00:00.250Z"}),
    );
    let Mutation::StartBuild(doc) = &ms[1] else {
        panic!()
    };
    assert_eq!(doc.time_start.timestamp_millis(), 1_777_629_600_250);
    let ms = apply(
        core,
        json!({"type":"build_started","builder":"b","build_id":2,"number":2}),
    );
    let Mutation::StartBuild(doc) = &ms[1] else {
        panic!()
    };
    assert_eq!(doc.time_start.timestamp_millis(), now().timestamp_millis());
}

/// BSON reads `{"$date": 1}` as a date and `{"$oid": "x"}` as a broken object id: stored, such a
/// value would change, or leave a build document that no longer reads back.
#[test]
fn keys_and_property_names_starting_with_a_dollar_are_refused() {
    let core = &mut Core::new(CoreConfig::default());
    let e = fail(
        core,
        json!({"type":"build_started","builder":"b","build_id":7,"number":1,
               "properties":{"p":{"value":{"a":[{"$oid":"x"}]},"source":"s"}}}),
    );
    assert_eq!(
        e.to_string(),
        "field `properties.p.value`: cannot be stored (the key \"$oid\" starts with `$`, which \
         BSON and MongoDB read as a typed value or an operator)"
    );
    let e = fail(
        core,
        json!({"type":"build_started","builder":"b","build_id":7,"number":1,
               "properties":{"$date":{"value":1,"source":"s"}}}),
    );
    assert_eq!(
        e.to_string(),
        "field `properties`: the property name \"$date\" starts with `$`, which BSON and \
         MongoDB read as a typed value or an operator"
    );
    start(core, None);
    let e = fail(
        core,
        json!({"type":"property","build_id":7,"name":"n","value":{"$numberLong":"5"}}),
    );
    assert!(
        e.to_string()
            .starts_with("field `value`: cannot be stored (the key \"$numberLong\""),
        "{e}"
    );
    let e = fail(
        core,
        json!({"type":"property","build_id":7,"name":"$oid","value":1}),
    );
    assert!(
        e.to_string()
            .starts_with("field `name`: the property name \"$oid\" starts with `$`"),
        "{e}"
    );
    let e = fail(
        core,
        json!({"type":"property","build_id":7,"name":"a\0b","value":1}),
    );
    assert_eq!(
        e.to_string(),
        "field `name`: the property name \"a\\0b\" holds a NUL character"
    );
    // A `$` elsewhere than at the start of a key is plain text.
    let ms = apply(
        core,
        json!({"type":"property","build_id":7,"name":"price$","value":{"a$":"$oid"}}),
    );
    assert!(matches!(&ms[0], Mutation::SetProperty { .. }));
}

#[test]
fn property_values_that_bson_cannot_hold_are_refused_not_nulled() {
    let core = &mut Core::new(CoreConfig::default());
    let big = json!({"type":"build_started","builder":"b","build_id":7,"number":1,
                     "properties":{"size":{"value":18446744073709551615u64,"source":"x"}}});
    let e = fail(core, big);
    assert_eq!(
        e.to_string(),
        "field `properties.size.value`: cannot be stored (the whole number 18446744073709551615 \
         is above 9223372036854775807, the largest a document holds)"
    );
    start(core, None);
    let e = fail(
        core,
        json!({"type":"property","build_id":7,"name":"n","value":[1, 18446744073709551615u64]}),
    );
    assert!(e.to_string().starts_with("field `value`:"), "{e}");
    let ms = apply(
        core,
        json!({"type":"property","build_id":7,"name":"n","value":{"a":[1,2.5,null,"x"]}}),
    );
    assert!(
        matches!(&ms[0], Mutation::SetProperty { property, .. } if property.value.as_document().is_some())
    );
}

#[path = "doc_size_tests.rs"]
mod doc_size;
