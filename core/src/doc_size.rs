//! How big the documents of a build may grow.
//!
//! MongoDB refuses a document over 16 MiB, and it would refuse it for good: every retry of the
//! batch fails, and every event behind it waits. So the rules refuse, one event at a time, an
//! event that would take a build or step document past that size, and the inline log limit has a
//! ceiling that leaves a step document room for the rest of its fields. The sizes are counted
//! from the BSON the stores write; small fields that change later (a result, an end time) fit in
//! the margin kept below MongoDB's limit.

use serde::Serialize;

/// The largest document the rules let a build or a step grow to: MongoDB's 16 MiB, less a margin
/// for the few bytes not counted.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024 - 16 * 1024;

/// The highest inline log limit: three channels at the limit leave a step document about 10 MiB
/// for everything else.
pub const MAX_INLINE_LIMIT: usize = 2 * 1024 * 1024;
const _: () = assert!(MAX_DOCUMENT_BYTES - 3 * MAX_INLINE_LIMIT >= 10 * 1024 * 1024 - 16 * 1024);

/// BSON bytes of `value` written as a document; more than any document may take if it cannot be
/// written as one.
pub(crate) fn document_len<T: Serialize>(value: &T) -> usize {
    bson::to_vec(value).map_or(usize::MAX, |bytes| bytes.len())
}

/// BSON bytes of the field `name` holding `value` inside a document: a type byte, the name and
/// its terminating zero, and the value.
pub(crate) fn field_len<T: Serialize>(name: &str, value: &T) -> usize {
    match bson::to_bson(value) {
        Ok(value) => {
            let mut alone = bson::Document::new();
            alone.insert(name, value);
            // Alone in a document, the field is all of it but the length (4 bytes) and the
            // terminating zero.
            document_len(&alone).saturating_sub(5)
        }
        Err(_) => usize::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts add up to what a whole document takes.
    #[test]
    fn fields_add_up_to_the_document() {
        let value = serde_json::json!({"a": [1, "two", {"three": 3.0}], "b": null, "c": "text"});
        let doc = bson::to_document(&value).expect("a document");
        let fields: usize = doc.iter().map(|(k, v)| field_len(k, v)).sum();
        // A document: its length (4 bytes), its fields, a terminating zero.
        assert_eq!(4 + fields + 1, document_len(&doc));
    }
}
