//! Event protocol v1: what a build master sends, one JSON object per line.
//!
//! Parsing goes through [`Event::parse`], which reports the offending field by name: the sender of
//! a bad line has to be able to fix it from the message alone.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::value::{EventIdent, Ident, ResultCode, Timestamp};

/// One event: the envelope fields every type shares, plus the type-specific body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    /// The build master that sent the event; part of every `_id` it touches.
    #[schemars(with = "EventIdent")]
    pub master_id: Ident,
    /// Unique per sender, and not empty. An event whose id was already applied is ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub event_id: Option<String>,
    /// When it happened; defaults to the time buildstore received it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The type-specific part of an event, selected by its `type` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    BuilderAdded(BuilderAdded),
    BuilderState(BuilderState),
    BuilderRemoved(BuilderRemoved),
    BuildStarted(BuildStarted),
    StepStarted(StepStarted),
    Log(Log),
    StepFinished(StepFinished),
    Property(Property),
    Changeset(Changeset),
    BuildFinished(BuildFinished),
    Commit(Commit),
}

/// Every value of `type`, in protocol order.
pub const EVENT_TYPES: [&str; 11] = [
    "builder_added",
    "builder_state",
    "builder_removed",
    "build_started",
    "step_started",
    "log",
    "step_finished",
    "property",
    "changeset",
    "build_finished",
    "commit",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuilderAdded {
    pub builder: String,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub slaves: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuilderState {
    pub builder: String,
    /// Free text from the master, e.g. `idle`, `building`, `offline`.
    pub state: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuilderRemoved {
    pub builder: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuildStarted {
    pub builder: String,
    /// Unique per master and never reused, unlike `number`.
    #[schemars(with = "EventIdent")]
    pub build_id: Ident,
    pub number: i64,
    #[serde(default)]
    pub slaves: Vec<String>,
    /// What caused the build; may be symbolic (FETCH_HEAD, HEAD, a branch) or empty.
    #[serde(default)]
    pub changeset: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub repository: Option<String>,
    #[serde(default)]
    pub codebase: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, PropertyValue>,
    #[serde(default)]
    pub changes: Vec<Change>,
}

/// A property's value with where it came from (Buildbot's "source").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PropertyValue {
    pub value: Value,
    #[serde(default)]
    pub source: Option<String>,
}

/// A change (commit, push) that went into the build, as the master saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Change {
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub author: Option<String>,
    #[serde(default)]
    pub comments: Option<String>,
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub when: Option<Timestamp>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub repository: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepStarted {
    #[schemars(with = "EventIdent")]
    pub build_id: Ident,
    pub step: u32,
    pub name: String,
}

/// Which log of a step a chunk of text belongs to.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Stdout,
    Stderr,
    Header,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Stdout, Channel::Stderr, Channel::Header];

    /// The name used in events and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
            Channel::Header => "header",
        }
    }

    /// The step document field holding this channel (the 2010 schema says `headers`).
    pub fn field(self) -> &'static str {
        match self {
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
            Channel::Header => "headers",
        }
    }

    /// Accepts the event name or the document field name.
    pub fn parse(s: &str) -> Option<Channel> {
        match s {
            "stdout" => Some(Channel::Stdout),
            "stderr" => Some(Channel::Stderr),
            "header" | "headers" => Some(Channel::Header),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Log {
    #[schemars(with = "EventIdent")]
    pub build_id: Ident,
    pub step: u32,
    pub channel: Channel,
    pub text: String,
    /// Byte offset of `text` within this channel of this step; makes a re-sent chunk harmless.
    #[serde(default)]
    pub offset: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepFinished {
    #[schemars(with = "EventIdent")]
    pub build_id: Ident,
    pub step: u32,
    pub result: ResultCode,
    /// The master's one-line summary of the step, e.g. "compile failed".
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Property {
    #[schemars(with = "EventIdent")]
    pub build_id: Ident,
    pub name: String,
    /// Any JSON value, `null` included; the field itself is required.
    pub value: Value,
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Changeset {
    #[schemars(with = "EventIdent")]
    pub build_id: Ident,
    pub changeset: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuildFinished {
    #[schemars(with = "EventIdent")]
    pub build_id: Ident,
    pub result: ResultCode,
}

/// Commit metadata as `git log` gives it; field names as the 2010 schema spells them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Commit {
    pub hash: String,
    pub repository_uri: String,
    #[serde(default)]
    pub hash_abbrev: Option<String>,
    pub subject: String,
    pub author_name: String,
    pub author_email: String,
    pub author_date: Timestamp,
    pub commiter_name: String,
    pub commiter_email: String,
    pub commiter_date: Timestamp,
}

/// Why a line is not a valid event. Every message names the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EventError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("an event must be a JSON object, got {0}")]
    NotObject(&'static str),
    #[error("missing field `type`")]
    MissingType,
    #[error("field `type`: expected a string")]
    TypeNotString,
    #[error("field `type`: unknown event type {0:?} (expected one of: {list})", list = EVENT_TYPES.join(", "))]
    UnknownType(String),
    #[error("{0}")]
    Field(String),
}

impl Event {
    /// Parses one line of the protocol.
    pub fn parse(line: &str) -> Result<Event, EventError> {
        let value: Value = serde_json::from_str(line).map_err(EventError::from_json)?;
        Event::from_value(value)
    }

    /// Builds an event from an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Event, EventError> {
        let obj = match value {
            Value::Object(o) => o,
            other => return Err(EventError::NotObject(json_kind(&other))),
        };
        let ty = match obj.get("type") {
            None => return Err(EventError::MissingType),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(EventError::TypeNotString),
        };
        let master_id = obj
            .get("master_id")
            .ok_or_else(|| EventError::Field("missing field `master_id`".into()))
            .and_then(|v| field::<Ident>("master_id", v))?;
        master_id
            .check_in_event("master_id")
            .map_err(EventError::Field)?;
        let event_id = optional::<String>(&obj, "event_id")?;
        // An empty id would make every event that has one a duplicate of the first.
        if event_id.as_deref() == Some("") {
            return Err(EventError::Field(
                "field `event_id` must not be empty (leave it out to have one assigned)".into(),
            ));
        }
        let time = optional::<Timestamp>(&obj, "time")?;
        let obj = Value::Object(obj);
        let kind = match ty.as_str() {
            "builder_added" => EventKind::BuilderAdded(body(&obj)?),
            "builder_state" => EventKind::BuilderState(body(&obj)?),
            "builder_removed" => EventKind::BuilderRemoved(body(&obj)?),
            "build_started" => EventKind::BuildStarted(body(&obj)?),
            "step_started" => EventKind::StepStarted(body(&obj)?),
            "log" => EventKind::Log(body(&obj)?),
            "step_finished" => EventKind::StepFinished(body(&obj)?),
            "property" => {
                // A missing `value` would otherwise read as null.
                if obj.get("value").is_none() {
                    return Err(EventError::Field("missing field `value`".into()));
                }
                EventKind::Property(body(&obj)?)
            }
            "changeset" => EventKind::Changeset(body(&obj)?),
            "build_finished" => EventKind::BuildFinished(body(&obj)?),
            "commit" => EventKind::Commit(body(&obj)?),
            _ => return Err(EventError::UnknownType(ty)),
        };
        let event = Event {
            master_id,
            event_id,
            time,
            kind,
        };
        if let Some(build_id) = event.build_id() {
            build_id
                .check_in_event("build_id")
                .map_err(EventError::Field)?;
        }
        check_name_lengths(&event.kind)?;
        Ok(event)
    }

    /// The protocol name of this event's type.
    pub fn type_name(&self) -> &'static str {
        match &self.kind {
            EventKind::BuilderAdded(_) => "builder_added",
            EventKind::BuilderState(_) => "builder_state",
            EventKind::BuilderRemoved(_) => "builder_removed",
            EventKind::BuildStarted(_) => "build_started",
            EventKind::StepStarted(_) => "step_started",
            EventKind::Log(_) => "log",
            EventKind::StepFinished(_) => "step_finished",
            EventKind::Property(_) => "property",
            EventKind::Changeset(_) => "changeset",
            EventKind::BuildFinished(_) => "build_finished",
            EventKind::Commit(_) => "commit",
        }
    }

    /// The build this event belongs to, for the event types that belong to one.
    pub fn build_id(&self) -> Option<&Ident> {
        match &self.kind {
            EventKind::BuildStarted(e) => Some(&e.build_id),
            EventKind::StepStarted(e) => Some(&e.build_id),
            EventKind::Log(e) => Some(&e.build_id),
            EventKind::StepFinished(e) => Some(&e.build_id),
            EventKind::Property(e) => Some(&e.build_id),
            EventKind::Changeset(e) => Some(&e.build_id),
            EventKind::BuildFinished(e) => Some(&e.build_id),
            EventKind::BuilderAdded(_)
            | EventKind::BuilderState(_)
            | EventKind::BuilderRemoved(_)
            | EventKind::Commit(_) => None,
        }
    }

    /// Serializes the event back into one protocol line.
    pub fn to_line(&self) -> String {
        // Serializing plain data into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The longest builder name or builder state an event may give, in bytes. A commit document lists
/// up to 10,000 builds with their builder's name, which must fit in one document.
pub const MAX_NAME_BYTES: usize = 1024;

fn check_name_lengths(kind: &EventKind) -> Result<(), EventError> {
    let names = match kind {
        EventKind::BuilderAdded(e) => vec![("builder", &e.builder)],
        EventKind::BuilderState(e) => vec![("builder", &e.builder), ("state", &e.state)],
        EventKind::BuilderRemoved(e) => vec![("builder", &e.builder)],
        EventKind::BuildStarted(e) => vec![("builder", &e.builder)],
        _ => vec![],
    };
    match names.iter().find(|(_, v)| v.len() > MAX_NAME_BYTES) {
        Some((field, v)) => Err(EventError::Field(format!(
            "field `{field}`: {} bytes, at most {MAX_NAME_BYTES}",
            v.len()
        ))),
        None => Ok(()),
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn field<T: serde::de::DeserializeOwned>(name: &str, v: &Value) -> Result<T, EventError> {
    T::deserialize(v).map_err(|e| EventError::Field(format!("field `{name}`: {e}")))
}

fn optional<T: serde::de::DeserializeOwned>(
    obj: &Map<String, Value>,
    name: &str,
) -> Result<Option<T>, EventError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => field(name, v).map(Some),
    }
}

impl EventError {
    /// A line that is not JSON, located by column only: an event is one line, and the line
    /// number that matters is the input's, which the caller adds.
    pub fn from_json(e: serde_json::Error) -> EventError {
        let text = e.to_string();
        let what = text
            .rsplit_once(" at line ")
            .map_or(text.as_str(), |(what, _)| what);
        EventError::Json(format!("{what} at column {}", e.column()))
    }
}

/// Serde names the Rust type a value should have been; a sender knows the protocol's shape.
fn protocol_words(message: String) -> String {
    message
        .replace(
            "expected struct PropertyValue",
            r#"expected an object such as {"value": ..., "source": "..."}"#,
        )
        .replace(
            "expected struct Change",
            r#"expected an object such as {"revision": "...", "author": "...", "files": [...]}"#,
        )
}

fn body<T: serde::de::DeserializeOwned>(obj: &Value) -> Result<T, EventError> {
    serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        let inner = protocol_words(e.into_inner().to_string());
        if path == "." || path.is_empty() {
            EventError::Field(inner)
        } else {
            EventError::Field(format!("field `{path}`: {inner}"))
        }
    })
}

#[cfg(test)]
mod tests {
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
        assert_eq!(err("[1]"), "an event must be a JSON object, got an array");
        assert_eq!(err(r#"{"master_id":1}"#), "missing field `type`");
        assert!(err(r#"{"type":"bogus","master_id":1}"#).contains("unknown event type \"bogus\""));
        assert_eq!(
            err(r#"{"type":"builder_removed"}"#),
            "missing field `master_id`"
        );
        assert_eq!(
            err(r#"{"type":"builder_removed","master_id":1}"#),
            "missing field `builder`"
        );
        let e =
            err(r#"{"type":"step_started","master_id":1,"build_id":1,"step":"two","name":"x"}"#);
        assert!(e.starts_with("field `step`:"), "{e}");
        let e = err(
            r#"{"type":"log","master_id":1,"build_id":1,"step":0,"channel":"stdin","text":""}"#,
        );
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
        let e =
            err(r#"{"type":"changeset","master_id":1,"build_id":1,"changeset":"x","time":"soon"}"#);
        assert!(e.starts_with("field `time`:"), "{e}");
        assert_eq!(
            err("{\"type\":"),
            "not valid JSON: EOF while parsing a value at column 8"
        );
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
        let long_id = "m".repeat(crate::value::MAX_ID_BYTES + 1);
        let e = err(&format!(
            r#"{{"type":"builder_removed","master_id":"{long_id}","builder":"b"}}"#
        ));
        assert!(
            e.starts_with("field `master_id`: 257 bytes, at most 256"),
            "{e}"
        );
        let e = err(&format!(
            r#"{{"type":"build_finished","master_id":"m","build_id":"{long_id}","result":0}}"#
        ));
        assert!(
            e.starts_with("field `build_id`: 257 bytes, at most 256"),
            "{e}"
        );
        let name = "b".repeat(MAX_NAME_BYTES + 1);
        for line in [
            format!(r#"{{"type":"builder_added","master_id":"m","builder":"{name}"}}"#),
            format!(r#"{{"type":"builder_removed","master_id":"m","builder":"{name}"}}"#),
            format!(
                r#"{{"type":"build_started","master_id":"m","build_id":1,"builder":"{name}","number":1}}"#
            ),
        ] {
            let e = err(&line);
            assert!(
                e.starts_with("field `builder`: 1025 bytes, at most 1024"),
                "{e}"
            );
        }
        let e = err(&format!(
            r#"{{"type":"builder_state","master_id":"m","builder":"b","state":"{name}"}}"#
        ));
        assert!(
            e.starts_with("field `state`: 1025 bytes, at most 1024"),
            "{e}"
        );
        // At the limit is fine.
        let id = "m".repeat(crate::value::MAX_ID_BYTES);
        let name = &name[1..];
        let ok = Event::parse(&format!(
            r#"{{"type":"build_started","master_id":"{id}","build_id":"{id}","builder":"{name}","number":1}}"#
        ));
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        let e = Event::parse(
            r#"{"type":"builder_removed","master_id":"m","builder":"b","future":true}"#,
        )
        .unwrap();
        assert_eq!(e.type_name(), "builder_removed");
    }
}
