//! Event protocol v1: what a build master sends, one JSON object per line.
//!
//! Parsing goes through [`Event::parse`], which reports the offending field by name: the sender of
//! a bad line has to be able to fix it from the message alone.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::value::{EventIdent, Ident, ResultCode, Timestamp, MAX_ID_BYTES};

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
    #[error("empty line: an event is one JSON object per line")]
    EmptyLine,
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
    #[error(
        "the whole number {0} does not fit in 64 bits, so no document can hold it exactly; \
         send it as a string"
    )]
    WideInteger(String),
    #[error(
        "the key {key:?} is given twice in one object (at column {column}); readers differ on \
         which value counts: send each key once"
    )]
    KeyTwice { key: String, column: usize },
}

impl Event {
    /// The line a spool keeps for this event, read from `line` (its text as sent, without
    /// whitespace around it): an id or a time the event lacks is given to it and added at the
    /// end of the line's object, where it wins over a `null` given before it (read back with
    /// [`Event::from_spooled`], which takes the last of a key given twice). The line is not
    /// written out again, which would change how its numbers are spelled or spell out every
    /// default, and could make it many times as long.
    pub fn stamp(&mut self, line: String, id: impl FnOnce() -> String, now: Timestamp) -> String {
        let mut added = String::new();
        if self.event_id.is_none() {
            let id = id();
            let written = serde_json::to_string(&id).unwrap_or_default();
            added.push_str(&format!(",\"event_id\":{written}"));
            self.event_id = Some(id);
        }
        if self.time.is_none() {
            let written = serde_json::to_string(&now).unwrap_or_default();
            added.push_str(&format!(",\"time\":{written}"));
            self.time = Some(now);
        }
        if added.is_empty() {
            return line;
        }
        crate::json_line::with_fields(&line, &added)
    }

    /// Parses one line of the protocol.
    pub fn parse(line: &str) -> Result<Event, EventError> {
        Event::from_value(crate::json_line::parse(line)?)
    }

    /// Reads back a line a spool keeps: one that [`Event::parse`] took when it came, and that
    /// [`Event::stamp`] may have given an id or a time at its end, after a `null` of the same
    /// key. So a key given twice keeps its last value here, and a whole number beyond 64 bits
    /// (which an earlier version accepted and acknowledged) is read as the nearest double. It is
    /// otherwise read as `parse` reads it, by the same reader.
    pub fn from_spooled(line: &str) -> Result<Event, EventError> {
        let value = crate::json_value::from_str(line, crate::json_value::Repeats::KeepLast)
            .map_err(|(e, _)| EventError::from_json(e))?;
        Event::from_value(value)
    }

    /// Builds an event from an already parsed JSON value.
    pub fn from_value(value: Value) -> Result<Event, EventError> {
        let mut obj = match value {
            Value::Object(o) => o,
            other => return Err(EventError::NotObject(json_kind(&other))),
        };
        whole_numbers_as_integers(&mut obj);
        let ty = match obj.get("type") {
            None => return Err(EventError::MissingType),
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(EventError::TypeNotString),
        };
        // An unknown type is the line's first fault: naming a field that type lacks would send
        // its author after the wrong one.
        if !EVENT_TYPES.contains(&ty.as_str()) {
            return Err(EventError::UnknownType(ty));
        }
        let master_id = obj
            .get("master_id")
            .ok_or_else(|| EventError::Field("missing field `master_id`".into()))
            .and_then(|v| field::<Ident>("master_id", v))?;
        let event_id = optional::<String>(&obj, "event_id")?;
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
        event.check()?;
        Ok(event)
    }

    /// The rules on ids and names that the JSON schema cannot state. Parsing checks them; an
    /// event built in code (the embedding API) is taken as its line parses back, so it is
    /// checked too.
    fn check(&self) -> Result<(), EventError> {
        self.master_id
            .check_in_event("master_id")
            .map_err(EventError::Field)?;
        match self.event_id.as_deref() {
            // An empty id would make every event that has one a duplicate of the first.
            Some("") => {
                return Err(EventError::Field(
                    "field `event_id` must not be empty (leave the field out instead)".into(),
                ))
            }
            Some(id) if id.len() > MAX_ID_BYTES => {
                return Err(EventError::Field(format!(
                    "field `event_id`: {} bytes, at most {MAX_ID_BYTES}",
                    id.len()
                )))
            }
            _ => {}
        }
        if let Some(build_id) = self.build_id() {
            build_id
                .check_in_event("build_id")
                .map_err(EventError::Field)?;
        }
        check_name_lengths(&self.kind)
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
    let (builder, state) = match kind {
        EventKind::BuilderAdded(e) => (Some(&e.builder), None),
        EventKind::BuilderState(e) => (Some(&e.builder), Some(&e.state)),
        EventKind::BuilderRemoved(e) => (Some(&e.builder), None),
        EventKind::BuildStarted(e) => (Some(&e.builder), None),
        _ => (None, None),
    };
    for (field, value) in [("builder", builder), ("state", state)] {
        if let Some(v) = value.filter(|v| v.len() > MAX_NAME_BYTES) {
            return Err(EventError::Field(format!(
                "field `{field}`: {} bytes, at most {MAX_NAME_BYTES}",
                v.len()
            )));
        }
    }
    Ok(())
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
        // The parser's words for a few common mistakes say little to a sender (its "lone
        // leading surrogate" is said of a trailing one too).
        let what = match what {
            "expected ident" | "expected value" => {
                "expected a JSON value (an object, an array, a string, a number, true, false or \
                 null)"
            }
            "unexpected end of hex escape" | "lone leading surrogate in hex escape" => {
                "a \\u escape holds half of a UTF-16 surrogate pair without the other half, which \
                 is no character"
            }
            other => other,
        };
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

/// JSON Schema counts `1.0` and `-0` as integers, and so the published schema does: a whole
/// number written as a double, in a field of the event itself, is taken as that integer (the
/// parser reads it as a double, which an integer field refuses). A property's `value` keeps its
/// form, where `2.0` is a double.
fn whole_numbers_as_integers(obj: &mut Map<String, Value>) {
    use crate::json_line::TWO_TO_63;
    for (name, v) in obj.iter_mut() {
        let Value::Number(n) = v else { continue };
        if name == "value" || n.is_i64() || n.is_u64() {
            continue;
        }
        if let Some(f) = n.as_f64() {
            if f.fract() != 0.0 {
                continue;
            }
            if (-TWO_TO_63..TWO_TO_63).contains(&f) {
                *v = Value::from(f as i64);
            } else if (TWO_TO_63..2.0 * TWO_TO_63).contains(&f) {
                // Only `offset` takes so large a number, as `u64`.
                *v = Value::from(f as u64);
            }
        }
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
