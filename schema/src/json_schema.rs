//! JSON Schemas generated from the Rust types, so the published protocol and document shapes can
//! never drift from what the code accepts and writes. The checked-in copies live next to this
//! crate's manifest; a test fails when they are stale.

use schemars::generate::SchemaSettings;
use serde_json::{json, Value};

use crate::document::{BuildDoc, BuilderDoc, CommitDoc, StepDoc};
use crate::event::Event;

/// Path of the checked-in event schema, relative to the `schema` crate.
pub const EVENTS_FILE: &str = "events.schema.json";
/// Path of the checked-in document schema, relative to the `schema` crate.
pub const DOCUMENTS_FILE: &str = "documents.schema.json";

fn generator() -> schemars::SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

/// The schema of one protocol v1 event line.
pub fn events_schema() -> Value {
    let mut schema = generator().into_root_schema_for::<Event>().to_value();
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            json!("https://buildstore.dev/schema/events-v1.json"),
        );
        obj.insert("title".into(), json!("buildstore event, protocol v1"));
    }
    schema
}

/// The schemas of the four collections' documents, keyed by collection name.
pub fn documents_schema() -> Value {
    let mut gen = generator();
    let builders = gen.subschema_for::<BuilderDoc>();
    let builds = gen.subschema_for::<BuildDoc>();
    let steps = gen.subschema_for::<StepDoc>();
    let repository = gen.subschema_for::<CommitDoc>();
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://buildstore.dev/schema/documents.json",
        "title": "buildstore documents",
        "description": "Dates are BSON dates in the stores; in JSON they appear as MongoDB Extended JSON.",
        "properties": {
            "builders": builders,
            "builds": builds,
            "steps": steps,
            "repository": repository,
        },
        "$defs": gen.take_definitions(true),
    })
}

/// Renders a schema the way it is checked in.
pub fn render(schema: &Value) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// Regenerate with `UPDATE_SCHEMA=1 cargo test -p buildstore-schema`.
    fn check(file: &str, schema: &Value) {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let fresh = render(schema);
        if std::env::var_os("UPDATE_SCHEMA").is_some() {
            std::fs::write(&path, &fresh).expect("write schema");
            return;
        }
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == fresh,
            "{file} is stale: run `UPDATE_SCHEMA=1 cargo test -p buildstore-schema` and commit it"
        );
    }

    #[test]
    fn checked_in_event_schema_is_current() {
        check(EVENTS_FILE, &events_schema());
    }

    #[test]
    fn checked_in_document_schema_is_current() {
        check(DOCUMENTS_FILE, &documents_schema());
    }

    #[test]
    fn event_schema_lists_every_type() {
        let text = render(&events_schema());
        for ty in crate::event::EVENT_TYPES {
            assert!(
                text.contains(&format!("\"{ty}\"")),
                "{ty} missing from the schema"
            );
        }
    }
}
