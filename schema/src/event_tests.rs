//! The parsing of event lines: what is accepted, and the errors that name what is wrong.

use super::*;

fn err(line: &str) -> String {
    Event::parse(line).unwrap_err().to_string()
}

#[test]
fn parses_a_build_start_with_properties_and_changes() {
    let e = Event::parse(
        r#"{"type":"build_started","master_id":1,"event_id":"e1","time":"2026-01-01T00:00:00Z",
            "builder":"linux","build_id":"b7","number":3,"changeset":"FETCH_HEAD",
            "properties":{"platform":{"value":"linux64","source":"builder"}},
            "changes":[{"revision":"abc","author":"me","files":["a.c"],"when":1700000000}]}"#,
    )
    .unwrap();
    assert_eq!(e.master_id, Ident::Int(1));
    assert_eq!(e.build_id(), Some(&Ident::Str("b7".into())));
    let EventKind::BuildStarted(b) = &e.kind else {
        panic!("wrong kind")
    };
    assert_eq!(b.properties["platform"].source.as_deref(), Some("builder"));
    assert_eq!(b.changes[0].files, vec!["a.c"]);
    assert_eq!(Event::parse(&e.to_line()).unwrap(), e);
}

#[test]
fn errors_name_the_field_at_fault() {
    assert!(err("{").starts_with("not valid JSON"));
    assert_eq!(
        err("\u{feff}{\"type\":\"builder_added\"}"),
        "not valid JSON: the line starts with a byte-order mark (U+FEFF): send UTF-8 without one"
    );
    assert_eq!(
        err(" \r"),
        "empty line: an event is one JSON object per line"
    );
    assert_eq!(err("[1]"), "an event must be a JSON object, got an array");
    assert_eq!(
        err(r#"{"type":"builder_removed","master_id":1,"builder":"a","builder":"b"}"#),
        "the key \"builder\" is given twice in one object (at column 63); readers differ on \
         which value counts: send each key once"
    );
    assert_eq!(err(r#"{"master_id":1}"#), "missing field `type`");
    assert!(err(r#"{"type":"bogus","master_id":1}"#).contains("unknown event type \"bogus\""));
    // Named before any field the line lacks: no type has a `master_id` to miss.
    assert!(err(r#"{"type":"bogus"}"#).contains("unknown event type \"bogus\""));
    assert_eq!(
        err(r#"{"type":"builder_removed"}"#),
        "missing field `master_id`"
    );
    assert_eq!(
        err(r#"{"type":"builder_removed","master_id":1}"#),
        "missing field `builder`"
    );
    let e = err(r#"{"type":"step_started","master_id":1,"build_id":1,"step":"two","name":"x"}"#);
    assert!(e.starts_with("field `step`:"), "{e}");
    let e =
        err(r#"{"type":"log","master_id":1,"build_id":1,"step":0,"channel":"stdin","text":""}"#);
    assert!(
        e.starts_with("field `channel`:") && e.contains("stdout"),
        "{e}"
    );
    let e = err(r#"{"type":"build_finished","master_id":1,"build_id":1,"result":9}"#);
    assert!(e.starts_with("field `result`:"), "{e}");
    let e = err(
        r#"{"type":"build_started","master_id":1,"builder":"b","build_id":1,"number":1,"properties":{"p":{"value":1,"source":5}}}"#,
    );
    assert!(e.starts_with("field `properties.p.source`:"), "{e}");
    let e = err(r#"{"type":"property","master_id":1,"build_id":1,"name":"p"}"#);
    assert_eq!(e, "missing field `value`");
    let e = err(r#"{"type":"changeset","master_id":1,"build_id":1,"changeset":"x","time":"soon"}"#);
    assert!(e.starts_with("field `time`:"), "{e}");
    assert_eq!(
        err("{\"type\":"),
        "not valid JSON: EOF while parsing a value at column 8"
    );
    assert_eq!(
        err("not json"),
        "not valid JSON: expected a JSON value (an object, an array, a string, a number, true, \
         false or null) at column 2"
    );
    for lone in [
        r#"{"type":"\ud800"}"#,
        r#"{"type":"\udc00"}"#,
        r#"{"type":"\ud800\u0041"}"#,
    ] {
        let e = err(lone);
        assert!(
            e.starts_with("not valid JSON: a \\u escape holds half of a UTF-16 surrogate pair"),
            "{lone}: {e}"
        );
    }
    let e = err(
        r#"{"type":"changeset","master_id":1,"build_id":1,"changeset":"x","time":"2026-03-12T14:07:31"}"#,
    );
    assert!(
        e.ends_with("the time zone is missing: add Z for UTC or an offset such as +02:00"),
        "{e}"
    );
    let e = err(
        r#"{"type":"build_started","master_id":1,"builder":"b","build_id":1,"number":1,"properties":{"p":"v"}}"#,
    );
    assert!(
        e.ends_with(r#"expected an object such as {"value": ..., "source": "..."}"#),
        "{e}"
    );
    let e = err(r#"{"type":"builder_removed","master_id":1,"builder":"b","event_id":""}"#);
    assert!(e.starts_with("field `event_id` must not be empty"), "{e}");
}

#[test]
fn master_and_build_ids_must_not_contain_a_slash() {
    // Both would be the build `a/b/c`: the second build would overwrite the first.
    let e = err(
        r#"{"type":"build_started","master_id":"a/b","build_id":"c","builder":"x","number":1}"#,
    );
    assert!(
        e.starts_with("field `master_id` must not contain `/`"),
        "{e}"
    );
    let e = err(
        r#"{"type":"build_started","master_id":"a","build_id":"b/c","builder":"x","number":1}"#,
    );
    assert!(
        e.starts_with("field `build_id` must not contain `/`"),
        "{e}"
    );
    let e = err(
        r#"{"type":"log","master_id":"a","build_id":"b/c","step":0,"channel":"stdout","text":"t"}"#,
    );
    assert!(
        e.starts_with("field `build_id` must not contain `/`"),
        "{e}"
    );
    // A builder's `_id` is the master id, a slash, then the rest: its name may hold slashes.
    let ok = Event::parse(
        r#"{"type":"build_started","master_id":"a","build_id":7,"builder":"linux/x86-64","number":1}"#,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn ids_builder_names_and_states_have_a_length_limit() {
    let id = "m".repeat(crate::value::MAX_ID_BYTES + 1);
    let name = "b".repeat(MAX_NAME_BYTES + 1);
    let ids = "257 bytes, at most 256";
    let names = "1025 bytes, at most 1024";
    for (line, field, limit) in [
        (
            r#""type":"builder_removed","master_id":"ID","builder":"b""#,
            "master_id",
            ids,
        ),
        (
            r#""type":"build_finished","master_id":"m","build_id":"ID","result":0"#,
            "build_id",
            ids,
        ),
        (
            r#""type":"builder_removed","master_id":"m","builder":"b","event_id":"ID""#,
            "event_id",
            ids,
        ),
        (
            r#""type":"builder_added","master_id":"m","builder":"NAME""#,
            "builder",
            names,
        ),
        (
            r#""type":"builder_removed","master_id":"m","builder":"NAME""#,
            "builder",
            names,
        ),
        (
            r#""type":"build_started","master_id":"m","build_id":1,"builder":"NAME","number":1"#,
            "builder",
            names,
        ),
        (
            r#""type":"builder_state","master_id":"m","builder":"b","state":"NAME""#,
            "state",
            names,
        ),
    ] {
        let e = err(&format!(
            "{{{}}}",
            line.replace("ID", &id).replace("NAME", &name)
        ));
        assert!(e.starts_with(&format!("field `{field}`: {limit}")), "{e}");
    }
    // At the limit is fine.
    let (id, name) = (&id[1..], &name[1..]);
    let ok = Event::parse(&format!(
        r#"{{"type":"build_started","master_id":"{id}","build_id":"{id}","builder":"{name}","number":1}}"#
    ));
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    let e =
        Event::parse(r#"{"type":"builder_removed","master_id":"m","builder":"b","future":true}"#)
            .unwrap();
    assert_eq!(e.type_name(), "builder_removed");
}

/// The schema says `integer`, which in JSON Schema takes `1.0` and `-0`: so does the parser, for
/// the event's own fields. A property's value keeps its form.
#[test]
fn whole_numbers_written_as_doubles_are_taken_as_integers() {
    let e = Event::parse(
        r#"{"type":"build_started","master_id":7.0,"builder":"b","build_id":-0,"number":1.0,
            "time":1773391277.0}"#,
    )
    .unwrap();
    assert_eq!(e.master_id, Ident::Int(7));
    assert_eq!(e.build_id(), Some(&Ident::Int(0)));
    let EventKind::BuildStarted(b) = &e.kind else {
        panic!("wrong kind")
    };
    assert_eq!(b.number, 1);
    let line = r#"{"type":"step_started","master_id":"m","build_id":1,"step":2e0,"name":"s"}"#;
    let EventKind::StepStarted(s) = Event::parse(line).unwrap().kind else {
        panic!("wrong kind")
    };
    assert_eq!(s.step, 2);
    let line = r#"{"type":"property","master_id":"m","build_id":1,"name":"p","value":2.0}"#;
    let EventKind::Property(p) = Event::parse(line).unwrap().kind else {
        panic!("wrong kind")
    };
    assert!(p.value.is_f64(), "{:?}", p.value);
    // Up to 2^64 for an offset, as when written as an integer.
    let line = r#"{"type":"log","master_id":"m","build_id":1,"step":0,"channel":"stdout","text":"x","offset":1e19}"#;
    let EventKind::Log(l) = Event::parse(line).unwrap().kind else {
        panic!("wrong kind")
    };
    assert_eq!(l.offset, Some(10_000_000_000_000_000_000));
    // Not whole, or past what the field holds: still refused where an integer is due.
    let start = r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":"#;
    assert!(err(&format!("{start}1.5}}")).contains("number"));
    assert!(err(&format!("{start}1e19}}")).contains("number"));
    assert!(err(&line.replace("1e19", "2e19")).contains("offset"));
}

/// The daemon spools the client's own line with the id and the time it lacked added at the end,
/// after a `null` the line may give for them: read back, the added values count.
#[test]
fn a_stamped_line_reads_back_as_the_stamped_event() {
    let line =
        r#"{"type":"builder_removed","master_id":1,"builder":"a","event_id":null,"time":null}"#;
    let mut event = Event::parse(line).unwrap();
    let now = Timestamp::now();
    let spooled = event.stamp(line.to_owned(), || "d-7".to_owned(), now);
    assert_eq!(event.event_id.as_deref(), Some("d-7"));
    assert_eq!(Event::from_spooled(&spooled).unwrap(), event);
    // Sent so, it would be refused: the spool's reading is not the socket's.
    assert!(err(&spooled).contains("is given twice"), "{spooled}");
}

/// Whatever a line holds in fields the event does not know, the spool reads back the event the
/// socket took: an event acknowledged and then unreadable in the spool would be lost.
#[test]
fn the_spool_reads_back_every_line_parsing_takes_as_parsing_took_it() {
    for line in [
        r#"{"type":"builder_removed","master_id":1,"builder":"a","x":{"$serde_json::private::RawValue":"not json"}}"#,
        r#"{"type":"builder_removed","master_id":1,"builder":"a","x":{"$serde_json::private::RawValue":"{\"builder\":\"b\"}"}}"#,
        r#"{"type":"builder_removed","master_id":1,"builder":"a","x":[{"a":1},{"a":2}],"y":1e400}"#,
    ] {
        match Event::parse(line) {
            Ok(event) => assert_eq!(Event::from_spooled(line), Ok(event), "{line}"),
            Err(e) => assert!(Event::from_spooled(line).is_err(), "{line}: {e}"),
        }
    }
}
