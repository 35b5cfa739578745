//! How big the documents of a build may grow.
//!
//! MongoDB refuses a document over 16 MiB, and it would refuse it for good: every retry of the
//! batch fails, and every event behind it waits. So the rules refuse, one event at a time, an
//! event that would take a build or step document past that size, and the inline log limit has a
//! ceiling that leaves a step document room for the rest of its fields. The sizes are counted
//! from the BSON the stores write, to the byte, with room for the fields of the end from the
//! start (see [`end_reserve`]); the margin kept below MongoDB's limit is for what a store
//! adds of its own.

use std::sync::OnceLock;

use bson::DateTime;
use buildstore_schema::{LogBytes, StepDoc};
use serde::Serialize;

/// The largest document the rules let a build or a step grow to: MongoDB's 16 MiB, less a margin
/// for the few bytes not counted.
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024 - 16 * 1024;

/// The highest inline log limit: three channels at the limit leave a step document about 10 MiB
/// for everything else.
pub const MAX_INLINE_LIMIT: usize = 2 * 1024 * 1024;
const _: () = assert!(MAX_DOCUMENT_BYTES - 3 * MAX_INLINE_LIMIT >= 10 * 1024 * 1024 - 16 * 1024);

/// The most builds a commit document lists: the most recently linked ones. Every build of a commit
/// can still be found in `builds` by its `changeset`.
pub const MAX_COMMIT_BUILDS: usize = 10_000;

/// The most bytes a commit document may take without its `builds`: the metadata of a `commit`
/// event, or the hash and repository a linked build brought.
pub const MAX_COMMIT_METADATA_BYTES: usize = 256 * 1024;

/// BSON bytes of an entry of a commit's `builds` whose two strings are empty and whose result and
/// end time are set, without the array index it is kept under.
const COMMIT_ENTRY_FIXED_BYTES: usize = 97;

/// The bytes an entry of a commit's `builds` takes in the array, for a build `_id` and a builder
/// name of these lengths: the fixed part, then a type byte and an index of up to 5 digits and its
/// zero, then the two strings.
const fn commit_entry_len(id_len: usize, builder_len: usize) -> usize {
    COMMIT_ENTRY_FIXED_BYTES + 1 + 5 + 1 + id_len + builder_len
}

/// The most bytes one entry takes: a build `_id` is two ids and a slash.
const MAX_COMMIT_ENTRY_BYTES: usize = commit_entry_len(
    2 * buildstore_schema::MAX_ID_BYTES + 1,
    buildstore_schema::MAX_NAME_BYTES,
);

// A commit document at its limits (metadata, and as many of the longest entries as it keeps, in
// an array field with its own header) fits: MongoDB never refuses a link.
const _: () = assert!(
    MAX_COMMIT_METADATA_BYTES + 32 + MAX_COMMIT_BUILDS * MAX_COMMIT_ENTRY_BYTES
        <= MAX_DOCUMENT_BYTES
);

/// BSON bytes of `value` written as a document, or why it has no BSON form (a key holding a NUL
/// character).
pub(crate) fn document_len<T: Serialize>(value: &T) -> Result<usize, String> {
    bson::to_vec(value)
        .map(|bytes| bytes.len())
        .map_err(|e| e.to_string())
}

/// Whether the entry of build `id` of `builder` fits the room a commit keeps for each entry. Only a
/// build recovered from a store written before ids and names had their limits can be too long.
pub(crate) fn commit_entry_fits(id: &str, builder: &str) -> bool {
    commit_entry_len(id.len(), builder.len()) <= MAX_COMMIT_ENTRY_BYTES
}

/// The repository URI a build brings to a commit document that linking creates: the build's, unless
/// the document would then take more than [`MAX_COMMIT_METADATA_BYTES`] (a later `commit` event
/// sets one anyway).
pub(crate) fn linked_uri(hash: &str, uri: Option<&str>) -> Option<String> {
    let uri = uri?;
    let bytes = document_len(&bson::doc! {"_id": hash, "repository_uri": uri, "builds": []});
    bytes
        .is_ok_and(|b| b <= MAX_COMMIT_METADATA_BYTES)
        .then(|| uri.to_owned())
}

/// BSON bytes a field that holds null gains when it gets an `int32`, a date or a boolean: a null
/// is a type byte and the name, a value adds its own bytes.
const NULL_TO_INT32: usize = 4;
const NULL_TO_DATE: usize = 8;
const NULL_TO_BOOL: usize = 1;

/// BSON bytes the fields of a build's or a step's end (`result`, `time_end`) take beyond the
/// nulls it starts with, for those still null. They are counted from the start, so that the end
/// is never refused for want of room, and a document counts the same in memory as read back from
/// a store, ended or not.
pub(crate) fn end_reserve(result: Option<i32>, time_end: Option<DateTime>) -> usize {
    result.map_or(NULL_TO_INT32, |_| 0) + time_end.map_or(NULL_TO_DATE, |_| 0)
}

/// The same for a step, whose end sets `successful` too.
pub(crate) fn step_end_reserve(doc: &StepDoc) -> usize {
    end_reserve(doc.result, doc.time_end) + doc.successful.map_or(NULL_TO_BOOL, |_| 0)
}

/// BSON bytes an optional string field holding `value` takes beyond a null: its length (4
/// bytes), its bytes and a terminating zero.
pub(crate) fn string_over_null(value: Option<&str>) -> usize {
    value.map_or(0, |v| 4 + v.len() + 1)
}

/// BSON bytes of a field `name` holding a document of `len` bytes: a type byte, the name and its
/// terminating zero, and the document.
pub(crate) fn document_field_len(name: &str, len: usize) -> usize {
    name.len() + 2 + len
}

/// BSON bytes of a field `name` holding the string `value`: a type byte, the name and its
/// terminating zero, the string's length (4 bytes), the string and its terminating zero.
pub(crate) fn string_field_len(name: &str, value: &str) -> usize {
    name.len() + 2 + 4 + value.len() + 1
}

/// BSON bytes of a step document as `step_started` makes it, worked out from its strings rather
/// than by writing it out: every step starts with the same fields, and only these three vary.
pub(crate) fn started_step_len(id: &str, build: &str, name: &str) -> usize {
    static EMPTY: OnceLock<usize> = OnceLock::new();
    let empty = *EMPTY.get_or_init(|| {
        document_len(&started_step("", "", 0, "", DateTime::from_millis(0))).unwrap_or(0)
    });
    empty + id.len() + build.len() + name.len()
}

/// A step document as it is when the step starts.
pub(crate) fn started_step(
    id: &str,
    build: &str,
    step: u32,
    name: &str,
    time: DateTime,
) -> StepDoc {
    StepDoc {
        id: id.to_owned(),
        build: build.to_owned(),
        step: step.into(),
        name: name.to_owned(),
        time_start: time,
        time_end: None,
        result: None,
        successful: None,
        text: None,
        stdout: String::new(),
        stderr: String::new(),
        headers: String::new(),
        log_truncated: false,
        log_bytes: LogBytes::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The parts add up to what a whole document takes.
    #[test]
    fn fields_add_up_to_the_document() {
        let inner = bson::doc! {"a": [1, "two"], "b": null};
        let doc = bson::doc! {"name": "a string", "inner": inner.clone()};
        let inner_len = document_len(&inner).expect("a document");
        let fields = string_field_len("name", "a string") + document_field_len("inner", inner_len);
        // A document: its length (4 bytes), its fields, a terminating zero.
        assert_eq!(document_len(&doc), Ok(4 + fields + 1));
    }

    #[test]
    fn a_started_step_is_counted_from_its_strings() {
        let doc = started_step(
            "m1/7/12",
            "m1/7",
            12,
            "compile",
            DateTime::from_millis(1_800_000_000_000),
        );
        assert_eq!(
            Ok(started_step_len(&doc.id, &doc.build, &doc.name)),
            document_len(&doc)
        );
    }

    #[test]
    fn a_commit_at_its_limits_fits_in_a_document() {
        let time = Some(DateTime::from_millis(1_800_000_000_000));
        let entry = |build: &str, builder: &str| buildstore_schema::RepoBuildEntry {
            build: build.to_owned(),
            builder: builder.to_owned(),
            number: i64::MAX,
            result: Some(2),
            time_start: DateTime::from_millis(0),
            time_end: time,
        };
        assert_eq!(document_len(&entry("", "")), Ok(COMMIT_ENTRY_FIXED_BYTES));
        let longest = entry(
            &format!(
                "{}/{}",
                "m".repeat(buildstore_schema::MAX_ID_BYTES),
                "b".repeat(buildstore_schema::MAX_ID_BYTES)
            ),
            &"n".repeat(buildstore_schema::MAX_NAME_BYTES),
        );
        // The metadata at its limit, all of it in one field.
        let mut commit = bson::doc! {"_id": "c", "subject": ""};
        let room = MAX_COMMIT_METADATA_BYTES - document_len(&commit).unwrap();
        commit.insert("subject", "s".repeat(room));
        assert_eq!(document_len(&commit), Ok(MAX_COMMIT_METADATA_BYTES));
        let builds = vec![bson::to_bson(&longest).unwrap(); MAX_COMMIT_BUILDS];
        commit.insert("builds", builds);
        let bytes = document_len(&commit).unwrap();
        assert!(bytes <= MAX_DOCUMENT_BYTES, "{bytes}");
    }

    #[test]
    fn a_key_holding_a_nul_has_no_bson_form() {
        let doc = bson::doc! {"a\u{0}b": 1};
        assert!(document_len(&doc).is_err());
    }
}
