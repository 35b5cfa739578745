//! Reading JSON into a [`Value`] while refusing an object that gives a key twice.
//!
//! JSON readers differ on such an object: most keep the last value, some the first, some refuse
//! it. A sender that writes `"text"` twice has a bug, and storing whichever value this reader
//! happens to keep would hide it; so the line is refused, and the error names the key.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses `text` as one JSON value. On a key given twice in one object, the error is the
/// parser's (with its position) and the key is in the returned `Option`.
pub(crate) fn from_str(text: &str) -> Result<Value, (serde_json::Error, Option<String>)> {
    let twice = RefCell::new(None);
    let mut reader = serde_json::Deserializer::from_str(text);
    let read = UniqueKeys { twice: &twice }
        .deserialize(&mut reader)
        .and_then(|value| reader.end().map(|()| value));
    read.map_err(|e| (e, twice.into_inner()))
}

/// Reads one value, noting in `twice` the first key an object gives twice.
#[derive(Clone, Copy)]
struct UniqueKeys<'a> {
    twice: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for UniqueKeys<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for UniqueKeys<'_> {
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
            if fields.contains_key(&key) {
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
        from_str(text).err().and_then(|(_, key)| key)
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
            from_str(text).ok(),
            serde_json::from_str::<Value>(text).ok()
        );
    }

    #[test]
    fn other_errors_are_the_parser_s_own() {
        let (e, key) = from_str(r#"{"a":1} x"#).unwrap_err();
        assert_eq!(key, None);
        assert!(e.to_string().starts_with("trailing characters"), "{e}");
        assert_eq!(from_str("[1,").unwrap_err().1, None);
    }
}
