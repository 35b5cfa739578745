//! The rules of logs, stated as tests of the fold: offsets, the inline limit, and a build
//! carried on from what the store holds.

use super::*;

#[test]
fn log_offsets_make_resent_chunks_harmless() {
    let mut core = with_step(1 << 20);
    assert_eq!(
        appended(&log(&mut core, "hello ", Some(0)).unwrap()),
        [(0, "hello ")]
    );
    assert!(
        log(&mut core, "hello ", Some(0)).unwrap().is_empty(),
        "same chunk again"
    );
    assert_eq!(
        appended(&log(&mut core, "lo world", Some(3)).unwrap()),
        [(6, "world")],
        "overlap: only the new part"
    );
    assert_eq!(
        appended(&log(&mut core, "!", None).unwrap()),
        [(11, "!")],
        "no offset: appended at the end"
    );
    let e = log(&mut core, "late", Some(20)).unwrap_err();
    assert!(e.to_string().contains("a chunk is missing"), "{e}");
}

#[test]
fn an_overlap_that_would_split_a_character_is_an_error() {
    let mut core = with_step(1 << 20);
    log(&mut core, "é", Some(0)).unwrap(); // two bytes
    let e = log(&mut core, "éa", Some(1)).unwrap_err();
    assert!(
        matches!(e, RuleError::LogSplitsCharacter { offset: 1, .. }),
        "{e:?}"
    );
}

#[test]
fn logs_over_the_inline_limit_switch_to_head_and_tail() {
    let mut core = with_step(300);
    let ms = log(&mut core, &"a".repeat(200), None).unwrap();
    assert!(matches!(
        &ms[0],
        Mutation::AppendLog {
            inline: InlineUpdate::Append,
            ..
        }
    ));
    let ms = log(&mut core, &"b".repeat(200), None).unwrap();
    let Mutation::AppendLog {
        inline: InlineUpdate::Spill { value: v, earlier },
        offset: 200,
        ..
    } = &ms[0]
    else {
        panic!("{ms:?}")
    };
    assert_eq!(earlier, &"a".repeat(200));
    assert!(v.len() <= 300 && v.starts_with('a') && v.ends_with('b') && v.contains("truncated"));
}

#[test]
fn a_restored_build_carries_on_where_the_store_left_it() {
    use buildstore_schema::{Channel, StepDoc};
    let mut core = with_step(1 << 20);
    let ms = start(&mut Core::new(CoreConfig::default()), Some("FETCH_HEAD"));
    let Mutation::StartBuild(doc) = ms[1].clone() else {
        panic!()
    };
    let mut doc = *doc;
    doc.steps = vec!["m1/7/0".into()];
    let step = StepDoc {
        id: "m1/7/0".into(),
        build: "m1/7".into(),
        step: 0,
        name: "compile".into(),
        time_start: doc.time_start,
        time_end: None,
        result: None,
        successful: None,
        text: None,
        stdout: "abc".into(),
        stderr: String::new(),
        headers: String::new(),
        log_truncated: false,
        log_bytes: buildstore_schema::LogBytes {
            stdout: 3,
            ..Default::default()
        },
    };
    let snapshot = BuildSnapshot {
        build: doc,
        steps: vec![step],
        logs: vec![crate::LogSnapshot {
            step_id: "m1/7/0".into(),
            channel: Channel::Stdout,
            len: 3,
            head: b"abc".to_vec(),
            tail: b"abc".to_vec(),
            inline_whole: true,
        }],
    };
    core.clear();
    let finished = ev(json!({"type":"build_finished","build_id":7,"result":0}));
    assert_eq!(Core::build_of(&finished).as_deref(), Some("m1/7"));
    assert!(!core.has_build("m1/7"), "cleared: the caller loads it");
    core.restore(&snapshot);
    assert!(
        log(&mut core, "abc", Some(0)).unwrap().is_empty(),
        "the restored log length is known"
    );
    assert_eq!(appended(&log(&mut core, "d", None).unwrap()), [(3, "d")]);
    assert!(
        start(&mut core, None).is_empty(),
        "the restored build is known"
    );
    assert_eq!(
        changesets(&apply(
            &mut core,
            json!({"type":"changeset","build_id":7,"changeset":HASH})
        )),
        [HASH]
    );
}
