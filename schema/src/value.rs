//! Small value types shared by events and documents: identifiers that senders give as strings or
//! integers, timestamps given as RFC 3339 or epoch seconds, and Buildbot's result codes.

use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use schemars::JsonSchema;
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A master id or build id. Senders use either strings or integers; the value is stored exactly as
/// given (an integer stays an integer in the documents) and rendered as text inside `_id`s.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, JsonSchema)]
#[schemars(untagged)]
pub enum Ident {
    Int(i64),
    Str(String),
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ident::Int(i) => write!(f, "{i}"),
            Ident::Str(s) => f.write_str(s),
        }
    }
}

impl Serialize for Ident {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ident::Int(i) => s.serialize_i64(*i),
            Ident::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for Ident {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ident;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-empty string or an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ident, E> {
                Ok(Ident::Int(v))
            }
            fn visit_i32<E: de::Error>(self, v: i32) -> Result<Ident, E> {
                Ok(Ident::Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ident, E> {
                i64::try_from(v)
                    .map(Ident::Int)
                    .map_err(|_| E::custom(format!("integer {v} is too large for an id")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ident, E> {
                if v.is_empty() {
                    return Err(E::custom("an id must not be empty"));
                }
                Ok(Ident::Str(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The schema of an id as an event gives it: an [`Ident`] whose string form is neither empty nor
/// contains `/`. The parts of an `_id` are joined with `/`, so an id holding one could name
/// another build's documents: master `a/b` with build `c`, and master `a` with build `b/c`, would
/// both be `a/b/c`. Documents keep plain [`Ident`]s, so that a store written before this rule
/// still reads and validates.
pub struct EventIdent;

impl JsonSchema for EventIdent {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EventIdent".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A master id or build id: an integer, or a non-empty string without `/`",
            "anyOf": [
                {"type": "integer", "format": "int64"},
                {"type": "string", "minLength": 1, "pattern": "^[^/]*$"}
            ]
        })
    }
}

/// The longest `master_id` or `build_id` an event may give, in bytes. A build's `_id` holds both,
/// and a commit document lists up to 10,000 of them, which must fit in one document.
pub const MAX_ID_BYTES: usize = 256;

impl Ident {
    /// Refuses an id an event may not give (see [`EventIdent`]); `field` names it in the message.
    pub fn check_in_event(&self, field: &str) -> Result<(), String> {
        match self {
            Ident::Str(s) if s.contains('/') => Err(format!(
                "field `{field}` must not contain `/` (ids are joined with `/` into document ids, \
                 so `{s}` could name another build's documents)"
            )),
            // The web view puts ids in its paths as segments, and browsers resolve these two
            // away before they ask, so such a build's pages could not be reached.
            Ident::Str(s) if s == "." || s == ".." => Err(format!(
                "field `{field}` must not be `{s}` (ids are segments of the web view's paths, \
                 where `.` and `..` mean this and the parent folder)"
            )),
            Ident::Str(s) if s.len() > MAX_ID_BYTES => Err(format!(
                "field `{field}`: {} bytes, at most {MAX_ID_BYTES} (ids are part of document ids)",
                s.len()
            )),
            _ => Ok(()),
        }
    }
}

/// A point in time as events carry it: an RFC 3339 string or seconds since the Unix epoch
/// (fractions allowed). Documents keep it as a UTC BSON date, so precision is milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub DateTime<Utc>);

impl Timestamp {
    /// Years 0000 to 9999 in UTC: what RFC 3339 can write, so every time read can be written back.
    const MILLIS: std::ops::RangeInclusive<i64> = -62_167_219_200_000..=253_402_300_799_999;

    /// A time with the millisecond precision that is stored: cutting below it here makes an
    /// event read back from its own line equal to the event first read.
    fn from_millis(millis: i64) -> Option<Timestamp> {
        if !Self::MILLIS.contains(&millis) {
            return None;
        }
        Utc.timestamp_millis_opt(millis).single().map(Timestamp)
    }

    /// Now, at the precision that is stored.
    pub fn now() -> Timestamp {
        let now = Utc::now();
        Self::from_millis(now.timestamp_millis()).unwrap_or(Timestamp(now))
    }

    /// The BSON date this timestamp is stored as (milliseconds, UTC).
    pub fn to_bson(self) -> bson::DateTime {
        bson::DateTime::from_millis(self.0.timestamp_millis())
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "RFC 3339 date-time, or seconds since the Unix epoch",
            "oneOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number"}
            ]
        })
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl V {
            fn from_secs<E: de::Error>(secs: f64) -> Result<Timestamp, E> {
                // Outside ±10 000 years a number is a unit mistake, not a date.
                if !secs.is_finite() || secs.abs() > 2.5e11 {
                    return Err(E::custom(format!(
                        "{secs} is not a plausible epoch time in seconds"
                    )));
                }
                // Cut below the millisecond, as a string's fraction is. The float's own error
                // (0.123 s is a hair under 123 ms) is taken out first by rounding to whole
                // microseconds.
                let micros = (secs * 1e6).round() as i64;
                Timestamp::from_millis(micros.div_euclid(1000))
                    .ok_or_else(|| E::custom(format!("{secs} is out of range for a date")))
            }
        }
        impl Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 date-time string or epoch seconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                V::from_secs(v as f64)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                V::from_secs(v as f64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                V::from_secs(v)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                let t = DateTime::parse_from_rfc3339(v).map_err(|e| {
                    // The usual slip: a local time without its zone, which chrono calls a
                    // premature end.
                    let hint = if v.len() == 19 && v.as_bytes().get(10) == Some(&b'T') {
                        ", the time zone is missing: add Z for UTC or an offset such as +02:00"
                            .to_owned()
                    } else {
                        format!(" ({e})")
                    };
                    E::custom(format!("{v:?} is not an RFC 3339 date-time{hint}"))
                })?;
                Timestamp::from_millis(t.timestamp_millis()).ok_or_else(|| {
                    E::custom(format!("{v:?} is out of range (years 0000 to 9999 in UTC)"))
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Buildbot's result of a step or build: SUCCESS=0 WARNINGS=1 FAILURE=2 SKIPPED=3 EXCEPTION=4
/// RETRY=5 CANCELLED=6. Anything else is rejected where it enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, JsonSchema)]
#[schemars(transparent)]
pub struct ResultCode(#[schemars(range(min = 0, max = 6))] u8);

impl ResultCode {
    pub const SUCCESS: ResultCode = ResultCode(0);
    pub const WARNINGS: ResultCode = ResultCode(1);
    pub const FAILURE: ResultCode = ResultCode(2);
    pub const NAMES: [&'static str; 7] = [
        "success",
        "warnings",
        "failure",
        "skipped",
        "exception",
        "retry",
        "cancelled",
    ];

    pub fn new(code: i64) -> Option<Self> {
        (0..=6).contains(&code).then_some(ResultCode(code as u8))
    }
    pub fn code(self) -> i32 {
        self.0.into()
    }
    pub fn name(self) -> &'static str {
        Self::NAMES[usize::from(self.0)]
    }
}

impl<'de> Deserialize<'de> for ResultCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        ResultCode::new(v).ok_or_else(|| {
            de::Error::custom(format!(
                "{v} is not a result; expected 0 (SUCCESS) to 6 (CANCELLED)"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_the_type_they_were_given() {
        let i: Ident = serde_json::from_str("42").unwrap();
        let s: Ident = serde_json::from_str("\"m1\"").unwrap();
        assert_eq!(i, Ident::Int(42));
        assert_eq!(s, Ident::Str("m1".into()));
        assert_eq!(serde_json::to_string(&i).unwrap(), "42");
        assert!(serde_json::from_str::<Ident>("\"\"").is_err());
        assert!(serde_json::from_str::<Ident>("1.5").is_err());
    }

    #[test]
    fn timestamps_accept_rfc3339_and_epoch_seconds() {
        let a: Timestamp = serde_json::from_str("\"2026-01-02T03:04:05Z\"").unwrap();
        let b: Timestamp = serde_json::from_str("1767323045").unwrap();
        let c: Timestamp = serde_json::from_str("1767323045.5").unwrap();
        assert_eq!(a, b);
        assert_eq!(c.0.timestamp_millis(), 1767323045500);
        assert!(serde_json::from_str::<Timestamp>("\"yesterday\"").is_err());
        // Below a millisecond is cut, from a number as from a string, and a float's error does
        // not cost a millisecond.
        let cut: Timestamp = serde_json::from_str("\"2026-01-02T03:04:05.0009Z\"").unwrap();
        let cut_number: Timestamp = serde_json::from_str("1767323045.0009").unwrap();
        assert_eq!(cut, cut_number);
        assert_eq!(cut.0.timestamp_millis(), 1767323045000);
        let before: Timestamp = serde_json::from_str("-0.0009").unwrap();
        assert_eq!(before.0.timestamp_millis(), -1);
        for (number, millis) in [("1767323045.123", 123), ("1767323045.999", 999)] {
            let t: Timestamp = serde_json::from_str(number).unwrap();
            assert_eq!(t.0.timestamp_millis(), 1767323045000 + millis, "{number}");
        }
        // Below a millisecond is not kept, so a time written back reads the same.
        let fine: Timestamp = serde_json::from_str("\"2026-03-12T14:07:32.0111Z\"").unwrap();
        let again: Timestamp =
            serde_json::from_str(&serde_json::to_string(&fine).unwrap()).unwrap();
        assert_eq!(fine, again);
        // Only the years RFC 3339 can write back are accepted.
        assert!(serde_json::from_str::<Timestamp>("\"0000-01-01T00:00:00+01:00\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("\"9999-12-31T23:59:59-01:00\"").is_err());
        assert!(serde_json::from_str::<Timestamp>("-2e11").is_err());
        let first: Timestamp = serde_json::from_str("\"0000-01-01T00:00:00Z\"").unwrap();
        let again: Timestamp =
            serde_json::from_str(&serde_json::to_string(&first).unwrap()).unwrap();
        assert_eq!(first, again);
        assert!(serde_json::from_str::<Timestamp>("1e300").is_err());
    }

    #[test]
    fn results_outside_buildbots_range_are_rejected() {
        assert_eq!(
            serde_json::from_str::<ResultCode>("2").unwrap(),
            ResultCode::FAILURE
        );
        let err = serde_json::from_str::<ResultCode>("7")
            .unwrap_err()
            .to_string();
        assert!(err.contains("7 is not a result"), "{err}");
    }
}
