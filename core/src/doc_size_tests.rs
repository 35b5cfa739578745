//! The rules that keep every document within what MongoDB can hold.

use super::*;
use crate::{MAX_DOCUMENT_BYTES, MAX_INLINE_LIMIT};

const MIB: usize = 1024 * 1024;

fn property(core: &mut Core, name: &str, bytes: usize) -> Result<Vec<Mutation>, RuleError> {
    core.apply(
        &ev(json!({"type":"property","build_id":7,"name":name,"value":"x".repeat(bytes)})),
        now(),
    )
}

fn too_large(result: Result<Vec<Mutation>, RuleError>) -> (String, usize) {
    match result {
        Err(RuleError::DocumentTooLarge { document, bytes }) => (document, bytes),
        other => panic!("expected DocumentTooLarge, got {other:?}"),
    }
}

#[test]
fn a_property_that_would_outgrow_the_build_document_is_refused_and_the_build_carries_on() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, None);
    for i in 0..15 {
        property(&mut core, &format!("p{i}"), MIB).expect("15 MiB of properties fit");
    }
    let (document, bytes) = too_large(property(&mut core, "p15", MIB));
    assert_eq!(document, "build m1/7");
    assert!(bytes > MAX_DOCUMENT_BYTES, "{bytes}");
    // The refused one took no room: a small one still fits, and the build goes on.
    property(&mut core, "small", 100).expect("a small property fits");
    assert!(!finish(&mut core).is_empty());
}

#[test]
fn setting_a_property_again_counts_only_the_difference() {
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, None);
    for i in 0..15 {
        property(&mut core, &format!("p{i}"), MIB).expect("fits");
    }
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
    let mut core = Core::new(CoreConfig::default());
    start(&mut core, Some("FETCH_HEAD"));
    for i in 0..15 {
        property(&mut core, &format!("p{i}"), MIB).expect("fits");
    }
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
    let mut first = Core::new(CoreConfig::default());
    let ms = start(&mut first, None);
    let Mutation::StartBuild(doc) = &ms[1] else {
        panic!("{ms:?}")
    };
    let mut build = (**doc).clone();
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

#[test]
fn the_count_is_the_size_of_the_document_the_mutations_make() {
    let mut core = Core::new(CoreConfig::default());
    let mut mutations = start(&mut core, Some("FETCH_HEAD"));
    mutations.extend(apply(
        &mut core,
        json!({"type":"step_started","build_id":7,"step":0,"name":"git"}),
    ));
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
    // The build document as a store makes it from those mutations.
    let mut doc = None;
    for m in mutations {
        match m {
            Mutation::StartBuild(d) => doc = Some(*d),
            Mutation::StartStep { doc: step, .. } => {
                doc.as_mut().expect("started").steps.push(step.id.clone())
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
            _ => {}
        }
    }
    let doc = doc.expect("started");
    assert_eq!(doc.changeset.as_deref(), Some(HASH));
    assert_eq!(
        core.builds["m1/7"].doc_bytes,
        crate::doc_size::document_len(&doc)
    );
}
