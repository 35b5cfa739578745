//! What JSON can say that a document cannot hold, and how the refusal reads.
//!
//! JSON numbers have no bound, and BSON's largest whole number is `i64::MAX`. The BSON library's
//! own messages for such values run over several indented lines, which a one-line error reply
//! or log line can't show.

use buildstore_schema::{Event, EventKind};
use serde_json::Value;

use crate::fold::non_empty;
use crate::RuleError;

/// The rules that need nothing stored: an empty builder or property name, and a property name or
/// value without a BSON form. The fold applies them too; the daemon checks them as it reads a
/// line, so that the client gets the refusal instead of an acknowledgement for an event that
/// the rules would then drop.
pub fn check_standalone(event: &Event) -> Result<(), RuleError> {
    match &event.kind {
        EventKind::BuilderAdded(e) => non_empty("builder", &e.builder),
        EventKind::BuilderState(e) => non_empty("builder", &e.builder),
        EventKind::BuilderRemoved(e) => non_empty("builder", &e.builder),
        EventKind::Property(p) => {
            non_empty("name", &p.name)?;
            check_value("value", &p.value)?;
            check_name("name", &p.name)
        }
        EventKind::BuildStarted(b) => {
            non_empty("builder", &b.builder)?;
            b.properties.iter().try_for_each(|(name, p)| {
                check_name("properties", name)?;
                check_value(&format!("properties.{name}.value"), &p.value)
            })
        }
        _ => Ok(()),
    }
}

/// Refuses a property value (at `field`) without a BSON form: a whole number above `i64::MAX`,
/// or a key that starts with `$` or holds a NUL.
pub(crate) fn check_value(field: &str, value: &Value) -> Result<(), RuleError> {
    let refuse = |message: String| {
        Err(RuleError::Unstorable {
            field: field.to_owned(),
            message,
        })
    };
    if let Some(key) = dollar_key(value) {
        return refuse(format!(
            "cannot be stored (the key {key:?} starts with `$`, which BSON and MongoDB read as a \
             typed value or an operator)"
        ));
    }
    if let Some(key) = nul_key(value) {
        return refuse(format!(
            "cannot be stored (the key {key:?} holds a NUL character)"
        ));
    }
    if let Some(n) = above_i64(value) {
        return refuse(format!(
            "cannot be stored (the whole number {n} is above {}, the largest a document holds)",
            i64::MAX
        ));
    }
    if deeper_than(value, MAX_VALUE_DEPTH) {
        return refuse(format!(
            "cannot be stored (nested more than {MAX_VALUE_DEPTH} arrays or objects deep)"
        ));
    }
    Ok(())
}

/// How deep a property value may nest arrays and objects. Every reader of the build descends it
/// (BSON, the web pages, reloading the build), some of them recursively: a value nested about
/// twice as deep overflowed the stack of a debug build's threads.
pub const MAX_VALUE_DEPTH: usize = 64;

/// Whether `value` nests arrays and objects more than `depth` deep (a scalar is at depth 0).
fn deeper_than(value: &Value, depth: usize) -> bool {
    match value {
        Value::Array(items) => depth == 0 || items.iter().any(|v| deeper_than(v, depth - 1)),
        Value::Object(fields) => depth == 0 || fields.values().any(|v| deeper_than(v, depth - 1)),
        _ => false,
    }
}

/// Refuses a property name (at `field`) that cannot be a field of `properties`.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), RuleError> {
    match unstorable_name(name) {
        Some(message) => Err(RuleError::Unstorable {
            field: field.to_owned(),
            message,
        }),
        None => Ok(()),
    }
}

/// The first whole number in `value` above `i64::MAX`, if any. Parsing a line has already refused
/// whole numbers beyond `u64` and below `i64::MIN`, so these are the only ones left that BSON
/// refuses.
fn above_i64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().filter(|&n| i64::try_from(n).is_err()),
        Value::Array(items) => items.iter().find_map(above_i64),
        Value::Object(fields) => fields.values().find_map(above_i64),
        _ => None,
    }
}

/// The first object key in `value` that starts with `$`, if any. BSON reads a document whose
/// keys are `$date`, `$oid`, `$numberLong` and the like as a typed value rather than as the
/// document it is, so such a key would change the value, or leave a document that cannot be read
/// back; MongoDB reserves the prefix for operators too.
fn dollar_key(value: &Value) -> Option<&str> {
    first_key(value, &|k| k.starts_with('$'))
}

/// The first object key in `value` that holds a NUL, which BSON keys cannot.
fn nul_key(value: &Value) -> Option<&str> {
    first_key(value, &|k| k.contains('\0'))
}

/// The first object key in `value`, at any depth, for which `wrong` holds.
fn first_key<'v>(value: &'v Value, wrong: &dyn Fn(&str) -> bool) -> Option<&'v str> {
    match value {
        Value::Array(items) => items.iter().find_map(|v| first_key(v, wrong)),
        Value::Object(fields) => fields.iter().find_map(|(k, v)| {
            if wrong(k) {
                Some(k.as_str())
            } else {
                first_key(v, wrong)
            }
        }),
        _ => None,
    }
}

/// Why a property name cannot be stored, if it cannot.
fn unstorable_name(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("a property name must not be empty".to_owned())
    } else if name.contains('\0') {
        Some(format!("the property name {name:?} holds a NUL character"))
    } else if name.starts_with('$') {
        Some(format!(
            "the property name {name:?} starts with `$`, which BSON and MongoDB read as a typed \
             value or an operator"
        ))
    } else {
        None
    }
}

/// `message` on one line: every run of whitespace, line breaks included, as one space.
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_whole_number_above_i64_is_found_at_any_depth() {
        let big = i64::MAX as u64 + 1;
        assert_eq!(above_i64(&json!({"a": [1, {"b": big}]})), Some(big));
        assert_eq!(
            above_i64(&json!([i64::MAX, i64::MIN, -1, 1.5, "9223372036854775808"])),
            None
        );
        assert_eq!(above_i64(&json!(u64::MAX)), Some(u64::MAX));
    }

    #[test]
    fn keys_starting_with_a_dollar_are_found_at_any_depth() {
        assert_eq!(
            dollar_key(&json!({"a": [1, {"b": {"$date": 1}}]})),
            Some("$date")
        );
        assert_eq!(dollar_key(&json!({"a": 1, "$oid": "x"})), Some("$oid"));
        assert_eq!(dollar_key(&json!({"a$": ["$oid", {"b": "$date"}]})), None);
        assert_eq!(unstorable_name("a$b"), None);
        assert!(unstorable_name("$oid").is_some() && unstorable_name("a\0").is_some());
    }

    #[test]
    fn values_may_nest_64_arrays_or_objects_deep_and_no_more() {
        let nested = |depth: usize| {
            (0..depth).fold(json!(1), |v, i| {
                if i % 2 == 0 {
                    json!([v])
                } else {
                    json!({"a": v})
                }
            })
        };
        assert!(check_value("value", &nested(MAX_VALUE_DEPTH)).is_ok());
        let refused = check_value("value", &nested(MAX_VALUE_DEPTH + 1)).unwrap_err();
        assert!(
            refused.to_string().contains("nested more than 64"),
            "{refused}"
        );
        assert!(check_value("value", &json!({"a": [], "b": {}})).is_ok());
    }

    #[test]
    fn empty_property_names_are_refused_in_build_started_too() {
        let line = r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"properties":{"":{"value":1}}}"#;
        let refused = check_standalone(&Event::parse(line).unwrap()).unwrap_err();
        assert!(
            refused.to_string().contains("must not be empty"),
            "{refused}"
        );
    }

    #[test]
    fn messages_lose_their_line_breaks_and_indentation() {
        assert_eq!(
            one_line("no unsigned.\n      An attempt  failed."),
            "no unsigned. An attempt failed."
        );
    }
}
