//! The rules that keep every document within what MongoDB can hold.

use std::collections::BTreeMap;

use super::*;
use crate::state::{BuildState, StepState};
use crate::{ChangesetPolicy, MAX_COMMIT_METADATA_BYTES, MAX_DOCUMENT_BYTES, MAX_INLINE_LIMIT};

const MIB: usize = 1024 * 1024;

fn property(core: &mut Core, name: &str, bytes: usize) -> Result<Vec<Mutation>, RuleError> {
    core.apply(
        &ev(json!({"type":"property","build_id":7,"name":name,"value":"x".repeat(bytes)})),
        now(),
    )
}

/// A build started at `changeset` that holds 15 MiB of properties, `p0` to `p14`: one more MiB
/// does not fit.
fn with_15_mib_of_properties(changeset: Option<&str>) -> Core {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, changeset);
    for i in 0..15 {
        property(&mut core, &format!("p{i}"), MIB).expect("15 MiB of properties fit");
    }
    core
}

/// The document of build m1/7 as it starts.
fn started_build() -> buildstore_schema::BuildDoc {
    match &start(&mut Core::new(CoreConfig::default()), None)[1] {
        Mutation::StartBuild(doc) => (**doc).clone(),
        other => panic!("{other:?}"),
    }
}

fn too_large(result: Result<Vec<Mutation>, RuleError>) -> (String, usize) {
    match result {
        Err(RuleError::DocumentTooLarge { document, bytes }) => (document, bytes),
        other => panic!("expected DocumentTooLarge, got {other:?}"),
    }
}

#[test]
fn a_property_that_would_outgrow_the_build_document_is_refused_and_the_build_carries_on() {
    let mut core = with_15_mib_of_properties(None);
    let (document, bytes) = too_large(property(&mut core, "p15", MIB));
    assert_eq!(document, "build m1/7");
    assert!(bytes > MAX_DOCUMENT_BYTES, "{bytes}");
    // The refused one took no room: a small one still fits, and the build goes on.
    property(&mut core, "small", 100).expect("a small property fits");
    assert!(!finish(&mut core).is_empty());
}

#[test]
fn setting_a_property_again_counts_only_the_difference() {
    let mut core = with_15_mib_of_properties(None);
    // Setting the same name again replaces the value, whatever its size was.
    property(&mut core, "p0", MIB).expect("the same size again fits");
    property(&mut core, "p0", 10).expect("a smaller value fits");
    property(&mut core, "p15", MIB).expect("the room p0 gave back is free");
    too_large(property(&mut core, "p16", MIB));
}

#[test]
fn a_build_started_with_too_much_is_refused_and_not_remembered() {
    let mut core = Core::new(CoreConfig::default());
    let properties: serde_json::Map<String, Value> = (0..17)
        .map(|i| (format!("p{i}"), json!({"value": "x".repeat(MIB)})))
        .collect();
    let event = ev(
        json!({"type":"build_started","builder":"linux","build_id":7,"number":1,
                         "properties": properties}),
    );
    let (document, _) = too_large(core.apply(&event, now()));
    assert_eq!(document, "build m1/7");
    assert_eq!(
        fail(
            &mut core,
            json!({"type":"build_finished","build_id":7,"result":0})
        ),
        RuleError::UnknownBuild("m1/7".into())
    );
}

#[test]
fn a_changeset_that_would_outgrow_the_build_document_is_refused() {
    let mut core = with_15_mib_of_properties(Some("FETCH_HEAD"));
    let huge = json!({"type":"changeset","build_id":7,"changeset":"y".repeat(MIB)});
    assert!(matches!(
        core.apply(&ev(huge), now()),
        Err(RuleError::DocumentTooLarge { .. })
    ));
    // Refused whole: the changeset is still the one it was, and a proper hash still corrects it.
    let ms = apply(
        &mut core,
        json!({"type":"changeset","build_id":7,"changeset":HASH}),
    );
    assert_eq!(changesets(&ms), [HASH]);
}

/// Nearly full, a build whose changeset is final still takes a changeset or `got_revision` sent
/// again: they change nothing, so they take no room.
#[test]
fn an_offer_of_a_changeset_that_changes_nothing_takes_no_room() {
    let mut core = with_15_mib_of_properties(Some(HASH));
    let long = "y".repeat(MIB);
    let again = json!({"type":"changeset","build_id":7,"changeset":long});
    assert_eq!(apply(&mut core, again), []);
    // About 150 KiB are left. A got_revision of 100 KiB that names no revision of this build
    // is stored as a property, without room for a copy as its changeset.
    property(&mut core, "filler", 858 * 1024).expect("room for one more property");
    let names_none = json!({"x": "z".repeat(100 * 1024), "y": HASH});
    let got = json!({"type":"property","build_id":7,"name":"got_revision","value":names_none});
    assert!(changesets(&apply(&mut core, got)).is_empty());
    // Nor one that names the build's own changeset again (through the default codebase).
    let names_it = json!({"": HASH, "x": "z".repeat(100 * 1024)});
    let got = json!({"type":"property","build_id":7,"name":"got_revision","value":names_it});
    assert!(changesets(&apply(&mut core, got)).is_empty());
}

#[test]
fn a_step_text_that_would_outgrow_the_step_document_is_refused() {
    let mut core = with_step(MAX_INLINE_LIMIT);
    // Three logs at the inline limit take 6 MiB; the text may not take the other 10.
    let finish_step = |text: String| {
        ev(json!({"type":"step_finished","build_id":7,"step":0,"result":0,"text":text}))
    };
    let (document, _) = too_large(core.apply(&finish_step("t".repeat(10 * MIB)), now()));
    assert_eq!(document, "step m1/7/0");
    core.apply(&finish_step("done".into()), now())
        .expect("a short text fits");
}

#[test]
fn a_restored_build_counts_the_properties_the_store_holds() {
    let mut build = started_build();
    for i in 0..15 {
        build.properties.insert(
            format!("p{i}"),
            buildstore_schema::PropertyDoc {
                value: bson::Bson::String("x".repeat(MIB)),
                source: None,
            },
        );
    }
    let mut core = Core::new(CoreConfig::default());
    core.restore(&BuildSnapshot {
        build,
        steps: vec![],
        logs: vec![],
    });
    too_large(property(&mut core, "p15", MIB));
    property(&mut core, "p0", MIB).expect("replacing a stored property counts the difference");
}

#[test]
fn the_inline_limit_is_kept_under_a_ceiling() {
    let core = Core::new(CoreConfig {
        inline_limit: 10 * MIB,
        ..CoreConfig::default()
    });
    assert_eq!(core.config().inline_limit, MAX_INLINE_LIMIT);
}

/// The build and step documents a store makes from `mutations`, as far as these tests need.
fn documents(
    mutations: Vec<Mutation>,
) -> (
    buildstore_schema::BuildDoc,
    BTreeMap<String, buildstore_schema::StepDoc>,
) {
    let mut doc = None;
    let mut steps = BTreeMap::new();
    for m in mutations {
        match m {
            Mutation::StartBuild(d) => doc = Some(*d),
            Mutation::StartStep {
                doc: step,
                position,
            } => {
                let build = doc.as_mut().expect("started");
                build.steps.insert(position, step.id.clone());
                steps.insert(step.id.clone(), *step);
            }
            Mutation::SetProperty { name, property, .. } => {
                doc.as_mut()
                    .expect("started")
                    .properties
                    .insert(name, property);
            }
            Mutation::SetChangeset { changeset, .. } => {
                doc.as_mut().expect("started").changeset = Some(changeset)
            }
            Mutation::FinishStep {
                step_id,
                result,
                text,
                time,
            } => {
                let step = steps.get_mut(&step_id).expect("started");
                step.time_end = Some(time);
                step.result = Some(result);
                step.successful = Some(result == 0);
                step.text = text;
            }
            Mutation::FinishBuild { result, time, .. } => {
                let build = doc.as_mut().expect("started");
                build.result = Some(result);
                build.time_end = Some(time);
            }
            _ => {}
        }
    }
    (doc.expect("started"), steps)
}

/// What the core counts for a step: its base (its end included), its text and its inline logs.
fn step_count(step: &crate::state::StepState) -> usize {
    step.base_bytes + step.text_bytes + step.inline_bytes.iter().sum::<usize>()
}

/// The count is the size the document has once it has ended, to the byte, whatever the events
/// did to it, and the same as the count of a build read back from a store: a rule never depends
/// on whether the build stayed in memory or was read back between two runs.
#[test]
fn the_count_is_the_size_of_the_ended_document_the_mutations_make() {
    for changeset in [Some("FETCH_HEAD"), None] {
        let mut core = Core::new(CoreConfig::default());
        let mut mutations = apply(
            &mut core,
            json!({"type":"build_started","builder":"linux","build_id":7,"number":1,
                   "changeset":changeset,"properties":{"got_revision":{"value":"main"}}}),
        );
        // Started in reverse order, each goes first in `steps`, and its index there is the next.
        for step in (0..12).rev() {
            mutations.extend(apply(
                &mut core,
                json!({"type":"step_started","build_id":7,"step":step,"name":"git"}),
            ));
        }
        for (name, bytes) in [("a", 300), ("b", 5000), ("a", 20), ("got_revision", 0)] {
            let value = if bytes == 0 {
                json!(HASH)
            } else {
                json!("v".repeat(bytes))
            };
            mutations.extend(apply(
                &mut core,
                json!({"type":"property","build_id":7,"name":name,"value":value}),
            ));
        }
        let (running, _) = documents(mutations.clone());
        let from_store = BuildState::from_doc(&running).unwrap();
        assert_eq!(from_store.doc_bytes, core.builds["m1/7"].doc_bytes);

        for (step, text) in [(0, Some("ok")), (1, None), (2, Some("")), (0, None)] {
            mutations.extend(apply(
                &mut core,
                json!({"type":"step_finished","build_id":7,"step":step,"result":0,"text":text}),
            ));
        }
        mutations.extend(apply(
            &mut core,
            json!({"type":"build_finished","build_id":7,"result":2}),
        ));
        let (ended, steps) = documents(mutations);
        assert_eq!(ended.changeset.as_deref(), Some(HASH));
        assert_eq!(
            Ok(core.builds["m1/7"].doc_bytes),
            crate::doc_size::document_len(&ended),
            "started at {changeset:?}"
        );
        let from_store = BuildState::from_doc(&ended).unwrap();
        assert_eq!(from_store.doc_bytes, core.builds["m1/7"].doc_bytes);
        for (number, state) in &core.builds["m1/7"].steps {
            let id = format!("m1/7/{number}");
            let stored = StepState::stored(&steps[&id]);
            assert_eq!(step_count(state), step_count(&stored), "{id}");
            if *number <= 2 {
                let len = crate::doc_size::document_len(&steps[&id]);
                assert_eq!(Ok(step_count(state)), len, "{id}");
            }
        }
    }
}

#[test]
fn a_got_revision_counts_twice_since_it_may_become_the_changeset_too() {
    let mut core = with_15_mib_of_properties(Some("FETCH_HEAD"));
    // 0.9 MiB would fit once; as the changeset too, it would not.
    too_large(property(&mut core, "got_revision", MIB * 9 / 10));
}

#[test]
fn a_got_revision_among_the_initial_properties_counts_as_the_changeset_too() {
    let mut core = Core::new(CoreConfig::default());
    let event = ev(
        json!({"type":"build_started","builder":"linux","build_id":7,"number":1,
                         "changeset":"FETCH_HEAD",
                         "properties":{"got_revision":{"value":"r".repeat(9 * MIB)}}}),
    );
    let (document, _) = too_large(core.apply(&event, now()));
    assert_eq!(document, "build m1/7");
}

#[test]
fn a_step_that_leaves_no_room_for_its_logs_is_refused() {
    let mut core = Core::new(CoreConfig {
        inline_limit: MAX_INLINE_LIMIT,
        ..CoreConfig::default()
    });
    start(&mut core, None);
    let (document, _) = too_large(core.apply(
        &ev(json!({"type":"step_started","build_id":7,"step":0,"name":"n".repeat(10 * MIB)})),
        now(),
    ));
    assert_eq!(document, "step m1/7/0");
    // Not remembered: a log for it is an unknown step.
    assert!(matches!(
        log(&mut core, "x", Some(0)),
        Err(RuleError::UnknownStep { .. })
    ));
}

#[test]
fn a_chunk_is_refused_when_a_raised_inline_limit_would_outgrow_the_step() {
    // Started under a small limit, a step with a long name fits...
    let mut small = Core::new(CoreConfig {
        inline_limit: 256,
        ..CoreConfig::default()
    });
    start(&mut small, None);
    let ms = apply(
        &mut small,
        json!({"type":"step_started","build_id":7,"step":0,"name":"n".repeat(15 * MIB)}),
    );
    let Mutation::StartStep { doc: step, .. } = &ms[0] else {
        panic!("{ms:?}")
    };
    // ...but read back under a limit of 2 MiB, its logs may not grow to that.
    let mut big = Core::new(CoreConfig {
        inline_limit: MAX_INLINE_LIMIT,
        ..CoreConfig::default()
    });
    big.restore(&BuildSnapshot {
        build: started_build(),
        steps: vec![(**step).clone()],
        logs: vec![],
    });
    let (document, _) = too_large(log(&mut big, &"x".repeat(MIB), Some(0)));
    assert_eq!(document, "step m1/7/0");
}

#[test]
fn a_restored_step_counts_what_the_store_holds() {
    // Written under a limit of 2 MiB: a long name and three full inline logs.
    let mut first = with_step(MAX_INLINE_LIMIT);
    let ms = apply(
        &mut first,
        json!({"type":"step_started","build_id":7,"step":1,"name":"n".repeat(9 * MIB)}),
    );
    let Mutation::StartStep { doc: step, .. } = &ms[0] else {
        panic!("{ms:?}")
    };
    let mut step = (**step).clone();
    for field in [&mut step.stdout, &mut step.stderr, &mut step.headers] {
        *field = "o".repeat(2 * MIB);
    }
    // Read back under a smaller limit, the logs it holds still count.
    let mut core = Core::new(CoreConfig {
        inline_limit: 256,
        ..CoreConfig::default()
    });
    core.restore(&BuildSnapshot {
        build: started_build(),
        steps: vec![step],
        logs: vec![],
    });
    let finish_step = ev(
        json!({"type":"step_finished","build_id":7,"step":1,"result":0,
                               "text":"t".repeat(2 * MIB)}),
    );
    let (document, _) = too_large(core.apply(&finish_step, now()));
    assert_eq!(document, "step m1/7/1");
}

#[test]
fn a_nul_character_in_a_property_key_is_unstorable_not_too_large() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, None);
    for (name, value) in [("a\u{0}b", json!(1)), ("ok", json!({"k\u{0}": 1}))] {
        let err = core
            .apply(
                &ev(json!({"type":"property","build_id":7,"name":name,"value":value})),
                now(),
            )
            .unwrap_err();
        assert!(matches!(err, RuleError::Unstorable { .. }), "{err:?}");
    }
    let event = ev(
        json!({"type":"build_started","builder":"linux","build_id":8,"number":2,
                         "properties":{"a\u{0}":{"value":1}}}),
    );
    assert!(matches!(
        core.apply(&event, now()),
        Err(RuleError::Unstorable { .. })
    ));
}

const HASH: &str = "eb57b4930f682387ca57a2506b1dbd03f5144c04";

fn commit_event(subject: &str) -> Value {
    json!({"type":"commit","hash":HASH,"subject":subject,"author_name":"a","author_email":"a@x",
           "author_date":"2026-03-12T10:52:40Z","commiter_name":"c","commiter_email":"c@x",
           "commiter_date":"2026-03-12T12:58:03Z","repository_uri":"https://git.example.org/r.git"})
}

/// A commit document keeps room for the builds listed in it, so its metadata has a limit of its
/// own, far below a whole document's.
#[test]
fn a_commit_whose_metadata_would_crowd_out_its_builds_is_refused() {
    let mut core = Core::new(CoreConfig::default());
    apply(&mut core, commit_event(&"s".repeat(200 * 1024)));
    match fail(
        &mut core,
        commit_event(&"s".repeat(MAX_COMMIT_METADATA_BYTES)),
    ) {
        RuleError::CommitTooLarge { hash, bytes } => {
            assert_eq!(hash, HASH);
            assert!(bytes > MAX_COMMIT_METADATA_BYTES, "{bytes}");
        }
        other => panic!("expected CommitTooLarge, got {other:?}"),
    }
}

/// A build's repository becomes the URI of the commit document its link creates, unless it would
/// take the document past the metadata limit: then the document has none until a `commit` event.
#[test]
fn a_linked_build_brings_its_repository_to_the_commit_only_if_it_fits() {
    for (uri_len, kept) in [(100, true), (MAX_COMMIT_METADATA_BYTES, false)] {
        let mut core = Core::new(CoreConfig::default());
        apply(
            &mut core,
            json!({"type":"build_started","builder":"linux","build_id":7,"number":1,
                   "changeset":HASH,"repository":"r".repeat(uri_len)}),
        );
        let out = finish(&mut core);
        let uri = out.iter().find_map(|m| match m {
            Mutation::LinkBuildToCommit { repository_uri, .. } => Some(repository_uri.clone()),
            _ => None,
        });
        assert_eq!(uri.expect("linked").is_some(), kept, "{uri_len}");
    }
}

/// A changeset too long to be a commit document's `_id` is never proper, whatever the pattern.
#[test]
fn an_overlong_changeset_is_never_linked() {
    for (len, linked) in [(crate::MAX_HASH_BYTES, 1), (crate::MAX_HASH_BYTES + 1, 0)] {
        let mut core = Core::new(CoreConfig {
            changesets: ChangesetPolicy::new("^a+$").expect("pattern"),
            ..CoreConfig::default()
        });
        start(&mut core, Some(&"a".repeat(len)));
        assert_eq!(links(&finish(&mut core)).len(), linked, "{len}");
    }
}

/// A builder document is counted with the longest status a later `builder_state` may give it.
#[test]
fn a_builder_whose_document_would_not_fit_is_refused() {
    let added =
        |slaves: &[String]| ev(json!({"type":"builder_added","builder":"linux","slaves":slaves}));
    // One worker's name sized so that the document takes `bytes` with the longest status.
    let sized = |bytes: usize| {
        let mut doc = buildstore_schema::BuilderDoc {
            id: "m1/linux".into(),
            name: "linux".into(),
            master_id: buildstore_schema::Ident::Str("m1".into()),
            status: "s".repeat(buildstore_schema::MAX_NAME_BYTES),
            category: None,
            tags: vec![],
            slaves: vec![String::new()],
        };
        let empty = crate::doc_size::document_len(&doc).expect("bson");
        doc.slaves = vec!["w".repeat(bytes - empty)];
        doc.slaves
    };
    let mut core = Core::new(CoreConfig::default());
    core.apply(&added(&sized(MAX_DOCUMENT_BYTES)), now())
        .expect("a document at the limit, status counted, fits");
    // Without the status counted this one would fit: only the room kept for it refuses it.
    let over = sized(MAX_DOCUMENT_BYTES + 1);
    let (document, bytes) = too_large(core.apply(&added(&over), now()));
    assert_eq!(document, "builder m1/linux");
    assert_eq!(bytes, MAX_DOCUMENT_BYTES + 1);
}

/// A build recovered from a store written before builder names had a limit is not listed in its
/// commit if its entry would not fit the room each entry has; one within the limit is.
#[test]
fn a_recovered_build_too_long_for_its_commit_entry_is_not_linked() {
    for (len, linked) in [(buildstore_schema::MAX_NAME_BYTES, 1), (4096, 0)] {
        let mut doc = started_build();
        doc.builder = "b".repeat(len);
        doc.changeset = Some(HASH.into());
        let mut core = Core::new(CoreConfig::default());
        core.restore(&BuildSnapshot {
            build: doc,
            steps: vec![],
            logs: vec![],
        });
        assert_eq!(links(&finish(&mut core)).len(), linked, "{len}");
    }
}
