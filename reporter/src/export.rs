//! Documents as MongoDB Extended JSON v2 (relaxed), the format `buildstore export` prints: dates as
//! `{"$date": "..."}`, numbers as plain JSON numbers, fields in document order.

use bson::{Bson, Document};

/// One document as one line of relaxed Extended JSON.
pub fn to_line(doc: &Document) -> String {
    let value = Bson::Document(doc.clone()).into_relaxed_extjson();
    serde_json::to_string(&value).unwrap_or_default()
}
