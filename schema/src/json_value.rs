//! Reading JSON text into a [`Value`]: one reader for lines as they come and for lines as the
//! spool keeps them, so that the two can never read one line differently.
//!
//! As a line comes, an object that gives a key twice refuses it. JSON readers differ on such an
//! object: most keep the last value, some the first, some refuse it. A sender that writes
//! `"text"` twice has a bug, and storing whichever value this reader happens to keep would hide
//! it. A spooled line may repeat a key on purpose (see `Event::stamp`): there the last one counts.
//!
//! serde_json's own reader of [`Value`] is not used: built with its `raw_value` option (which
//! other crates of a program may turn on), it reads an object with one special key as the JSON
//! text that key holds, so it and this reader would not agree on every line.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// What to do with an object that gives a key twice.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Repeats {
    /// Refuse it: the error is the parser's (with its position), and the key is returned.
    Refuse,
    /// Keep the last value, in the place of the first.
    KeepLast,
}

/// Parses `text` as one JSON value. With [`Repeats::Refuse`], an object that gives a key twice
/// is an error and the key is in the returned `Option`.
pub(crate) fn from_str(
    text: &str,
    repeats: Repeats,
) -> Result<Value, (serde_json::Error, Option<String>)> {
    let twice = RefCell::new(None);
    let mut reader = serde_json::Deserializer::from_str(text);
    let seed = Reader {
        repeats,
        twice: &twice,
    };
    let read = seed
        .deserialize(&mut reader)
        .and_then(|value| reader.end().map(|()| value));
    read.map_err(|e| (e, twice.into_inner()))
}

/// Reads one value, noting in `twice` the key an object gave twice when that refuses it.
#[derive(Clone, Copy)]
struct Reader<'a> {
    repeats: Repeats,
    twice: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Reader<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Reader<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON text has no spelling for NaN or the infinities, so the parser never gives one.
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(self)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut fields = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if self.repeats == Repeats::Refuse && fields.contains_key(&key) {
                let e = de::Error::custom(format_args!("the key {key:?} is given twice"));
                *self.twice.borrow_mut() = Some(key);
                return Err(e);
            }
            let value = map.next_value_seed(self)?;
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn twice(text: &str) -> Option<String> {
        from_str(text, Repeats::Refuse)
            .err()
            .and_then(|(_, key)| key)
    }

    #[test]
    fn a_key_given_twice_in_one_object_is_named() {
        assert_eq!(twice(r#"{"a":1,"a":2}"#).as_deref(), Some("a"));
        assert_eq!(
            twice(r#"{"a":{"b":[{"c":1,"d":2,"c":null}]}}"#).as_deref(),
            Some("c")
        );
        // Escapes spell the same key differently.
        assert_eq!(twice(r#"{"a":1,"\u0061":2}"#).as_deref(), Some("a"));
    }

    #[test]
    fn the_same_key_in_different_objects_is_no_repeat() {
        let text = r#"{"a":{"a":1},"b":[{"a":1},{"a":2}],"c":"a","n":-1.5e3,"t":true,"z":null}"#;
        assert_eq!(
            from_str(text, Repeats::Refuse).ok(),
            serde_json::from_str::<Value>(text).ok()
        );
    }

    #[test]
    fn other_errors_are_the_parser_s_own() {
        let (e, key) = from_str(r#"{"a":1} x"#, Repeats::Refuse).unwrap_err();
        assert_eq!(key, None);
        assert!(e.to_string().starts_with("trailing characters"), "{e}");
        assert_eq!(from_str("[1,", Repeats::Refuse).unwrap_err().1, None);
    }

    #[test]
    fn kept_repeats_keep_the_last_value_in_the_first_place() {
        let read = from_str(r#"{"b":1,"a":2,"b":3}"#, Repeats::KeepLast).unwrap();
        assert_eq!(read.to_string(), r#"{"b":3,"a":2}"#);
    }

    /// An object that serde_json's own reader, built with `raw_value`, would read as the text it
    /// holds is an object like any other here, in both modes. (The workspace's tests build
    /// serde_json with `raw_value`, which the web server's crates turn on; this crate's alone do
    /// not, and `tests/serve.rs` checks the daemon itself.)
    #[test]
    fn no_key_is_special() {
        let text = r#"{"$serde_json::private::RawValue":"not json"}"#;
        for repeats in [Repeats::Refuse, Repeats::KeepLast] {
            let read = from_str(text, repeats).unwrap();
            assert_eq!(read["$serde_json::private::RawValue"], "not json");
        }
    }
}
