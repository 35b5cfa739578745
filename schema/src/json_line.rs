//! Reading a protocol line as JSON without changing any number in it, and without choosing
//! between two values of one key.
//!
//! The JSON parser turns a whole number that fits neither `i64` nor `u64` into the nearest
//! double, which keeps only its first 16 or 17 digits. Stored that way, a build number or a
//! database id would read back as a different number with no sign that anything happened, so
//! such a line is refused instead, with the number in the message.

use serde_json::Value;

use crate::json_value::{self, Repeats};
use crate::EventError;

/// Parses one line as JSON, refusing whole numbers beyond 64 bits and an object that gives a key
/// twice (see [`crate::json_value`]).
pub fn parse(line: &str) -> Result<Value, EventError> {
    if trim(line).is_empty() {
        return Err(EventError::EmptyLine);
    }
    let value: Value = json_value::from_str(line, Repeats::Refuse).map_err(|(e, twice)| {
        if let Some(key) = twice {
            EventError::KeyTwice {
                key,
                column: e.column(),
            }
        // Editors on Windows start a file with one; the parser calls it just "expected value".
        } else if line.starts_with('\u{feff}') {
            EventError::Json(
                "the line starts with a byte-order mark (U+FEFF): send UTF-8 without one".into(),
            )
        } else {
            EventError::from_json(e)
        }
    })?;
    // Only a double as large as 2^63 can have come from such a number, so the line itself is read
    // again only then: a line without one costs one walk of its values.
    if has_huge_whole_double(&value) {
        if let Some(number) = first_wide_integer(line) {
            return Err(EventError::WideInteger(number.to_owned()));
        }
    }
    Ok(value)
}

/// `object`, the text of a JSON object without whitespace around it, with `fields` (`,"name":
/// value` pairs) added before its closing brace (see [`crate::Event::stamp`]). A field added
/// wins over one of the same name in the line (a `null`).
pub(crate) fn with_fields(object: &str, fields: &str) -> String {
    match object.strip_suffix('}') {
        Some(open) => format!("{open}{fields}}}"),
        None => object.to_owned(),
    }
}

/// `line` without the whitespace JSON allows around a value (space, tab, CR, LF). Other
/// whitespace, such as a no-break space, is not JSON's, and stays to be refused.
pub fn trim(line: &str) -> &str {
    line.trim_matches([' ', '\t', '\r', '\n'])
}

/// 2^63: a double this large in magnitude is past what `i64` holds.
pub(crate) const TWO_TO_63: f64 = 9_223_372_036_854_775_808.0;

fn has_huge_whole_double(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.as_f64().is_some_and(|f| {
            !n.is_i64() && !n.is_u64() && f.abs() >= TWO_TO_63 && f.fract() == 0.0
        }),
        Value::Array(items) => items.iter().any(has_huge_whole_double),
        Value::Object(fields) => fields.values().any(has_huge_whole_double),
        _ => false,
    }
}

/// The first number in `json` (outside strings) written without a fraction or an exponent whose
/// value fits neither `i64` nor `u64`.
fn first_wide_integer(json: &str) -> Option<&str> {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included; the line already parsed, so it is closed.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                i += 1;
                while i < bytes.len()
                    && matches!(bytes[i], b'0'..=b'9' | b'.' | b'e' | b'E' | b'+' | b'-')
                {
                    i += 1;
                }
                let number = &json[start..i];
                let whole = !number.contains(['.', 'e', 'E']);
                if whole && number.parse::<i64>().is_err() && number.parse::<u64>().is_err() {
                    return Some(number);
                }
            }
            _ => i += 1,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(line: &str) -> String {
        match parse(line) {
            Err(EventError::WideInteger(n)) => n,
            other => panic!("{line}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn whole_numbers_beyond_64_bits_are_refused_with_the_number() {
        assert_eq!(
            refused(r#"{"v": 18446744073709551616}"#),
            "18446744073709551616"
        );
        assert_eq!(
            refused(r#"{"v": -9223372036854775809}"#),
            "-9223372036854775809"
        );
        assert_eq!(
            refused(r#"{"a": [1, {"b": 123456789012345678901234567890}]}"#),
            "123456789012345678901234567890"
        );
    }

    #[test]
    fn numbers_that_keep_their_value_pass() {
        for line in [
            r#"{"v": 18446744073709551615}"#,
            r#"{"v": -9223372036854775808}"#,
            r#"{"v": 1e19, "w": 18446744073709551616.0, "x": -1.5e300}"#,
            r#"{"v": "18446744073709551616", "w": "\"99999999999999999999"}"#,
        ] {
            assert!(parse(line).is_ok(), "{line}");
        }
    }

    #[test]
    fn a_wide_number_next_to_a_large_double_is_still_found() {
        // The double is what makes the line be read again; the refusal names the whole number.
        assert_eq!(
            refused(r#"{"d": 2e19, "s": "12345678901234567890123", "v": 99999999999999999999}"#),
            "99999999999999999999"
        );
    }

    #[test]
    fn only_jsons_whitespace_is_trimmed() {
        assert_eq!(trim(" \t{}\r\n"), "{}");
        assert_eq!(trim("\u{a0}{}"), "\u{a0}{}");
    }

    #[test]
    fn the_message_says_what_to_do() {
        let e = parse(r#"{"v": 18446744073709551616}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("18446744073709551616") && e.contains("64 bits"),
            "{e}"
        );
        assert!(e.contains("as a string"), "{e}");
    }
}
