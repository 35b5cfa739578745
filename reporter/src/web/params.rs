//! Query parameters of the pages, parsed strictly: a parameter the page does not know, one given
//! twice, or a value that does not parse is a [`ParamError`] that names it, which the pages show
//! as a 400. Pure: no I/O, so every rule here is a unit test.

use std::fmt::Write as _;

use buildstore_schema::ResultCode;
use chrono::{DateTime, NaiveDate, Utc};

use crate::store::{BuildCursor, BuildQuery, CommitCursor, CommitQuery, ResultFilter};

/// Rows of a page when `limit` is not given, and the most a page may ask for.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 500;

/// The `limit` a page's links and forms carry on: only one that is not the default, so that the
/// usual links stay short.
pub fn explicit_limit(limit: usize) -> Option<usize> {
    (limit != DEFAULT_LIMIT).then_some(limit)
}

/// A parameter the page cannot use, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

/// The query string as name/value pairs, percent-decoded. Bytes that decode to no UTF-8 are an
/// error rather than replaced: `builder=%FF` would otherwise ask for a builder named "\u{fffd}".
fn pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ParamError> {
    let decode = |part: &str| {
        let spaced = part.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .map(|text| text.into_owned())
            .ok()
    };
    query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let not_utf8 = |what: String| {
                ParamError(format!(
                    "{what} is not UTF-8 once percent-decoded; encode text as UTF-8"
                ))
            };
            let name = decode(name).ok_or_else(|| not_utf8(format!("parameter name {name:?}")))?;
            let value =
                decode(value).ok_or_else(|| not_utf8(format!("`{name}`: value {value:?}")))?;
            Ok((name, value))
        })
        .collect()
}

/// Takes each known parameter at most once; anything else is an error naming it.
struct Reader {
    known: &'static [&'static str],
    pairs: Vec<(String, String)>,
}

impl Reader {
    fn new(query: Option<&str>, known: &'static [&'static str]) -> Result<Reader, ParamError> {
        let pairs = pairs(query)?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            if !known.contains(&name.as_str()) {
                let takes = if known.is_empty() {
                    "this page takes no parameters".to_owned()
                } else {
                    format!("this page takes {}", known.join(", "))
                };
                return Err(ParamError(format!("unknown parameter {name:?}; {takes}")));
            }
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ParamError(format!("parameter {name:?} is given twice")));
            }
        }
        Ok(Reader { known, pairs })
    }

    /// The value of `name`; an empty value counts as absent, so an empty form field widens.
    fn get(&self, name: &str) -> Option<&str> {
        debug_assert!(self.known.contains(&name));
        self.pairs
            .iter()
            .find(|(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_owned)
    }

    fn limit(&self) -> Result<usize, ParamError> {
        self.limit_up_to(MAX_LIMIT)
    }

    fn limit_up_to(&self, max: usize) -> Result<usize, ParamError> {
        let Some(v) = self.get("limit") else {
            return Ok(DEFAULT_LIMIT.min(max));
        };
        v.parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ParamError(format!(
                    "limit must be a whole number from 1 to {max}, not {v:?}"
                ))
            })
    }

    fn time(&self, name: &str) -> Result<Option<DateTime<Utc>>, ParamError> {
        self.get(name).map(|v| parse_time(name, v)).transpose()
    }
}

/// A date (`2026-11-23`, midnight UTC) or an RFC 3339 date-time, within what the pages can write
/// back into their links (years 0000 to 9999 in UTC, to the millisecond).
fn parse_time(name: &str, v: &str) -> Result<DateTime<Utc>, ParamError> {
    let t = DateTime::parse_from_rfc3339(v)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map(|d| d.and_time(Default::default()).and_utc())
        })
        .map_err(|_| {
            ParamError(format!(
                "{name} must be a date like 2026-11-23 or a date-time like 2026-11-23T14:00:00Z, not {v:?}"
            ))
        })?;
    if bson::DateTime::from_millis(t.timestamp_millis())
        .try_to_rfc3339_string()
        .is_err()
    {
        return Err(ParamError(format!(
            "{name} must fall within the years 0000 to 9999 in UTC, not {v:?}"
        )));
    }
    Ok(t)
}

/// `t` as the stored times are kept, to the millisecond, rounded up: builds start at whole
/// milliseconds, so "at or after" and "before" a time between two of them mean the same as the
/// next one.
/// Within the last millisecond of year 9999, the one it is in: the next would be past what the
/// links can hold.
fn to_millis(t: DateTime<Utc>) -> bson::DateTime {
    /// 9999-12-31T23:59:59.999Z.
    const LAST: i64 = 253_402_300_799_999;
    let part_of_a_milli = !t.timestamp_subsec_nanos().is_multiple_of(1_000_000);
    bson::DateTime::from_millis((t.timestamp_millis() + i64::from(part_of_a_milli)).min(LAST))
}

/// `success`, `failure`, ... (Buildbot's names), `running`, or the numeric code.
fn parse_result(v: &str) -> Result<ResultFilter, ParamError> {
    if v == "running" {
        return Ok(ResultFilter::Running);
    }
    if let Some(i) = ResultCode::NAMES.iter().position(|n| *n == v) {
        return Ok(ResultFilter::Finished(i as i32));
    }
    v.parse::<i64>()
        .ok()
        .and_then(ResultCode::new)
        .map(|c| ResultFilter::Finished(c.code()))
        .ok_or_else(|| {
            ParamError(format!(
                "result must be one of {}, running, or a code 0 to 6, not {v:?}",
                ResultCode::NAMES.join(", ")
            ))
        })
}

/// The text of a result filter, as the pages write it into links.
pub fn result_param(filter: ResultFilter) -> String {
    match filter {
        ResultFilter::Running => "running".into(),
        ResultFilter::Finished(code) => ResultCode::new(code.into())
            .map(|c| c.name().to_owned())
            .unwrap_or_else(|| code.to_string()),
    }
}

/// A cursor is the last row's time in epoch milliseconds (`-` for none) and its `_id`:
/// `1763900000000:m1/42`. Opaque to users; they follow the "older" link.
fn parse_cursor(name: &str, v: &str) -> Result<(Option<bson::DateTime>, String), ParamError> {
    let bad = || {
        ParamError(format!(
            "{name} is not a cursor from a page's \"older\" link: {v:?}"
        ))
    };
    let (time, id) = v.split_once(':').ok_or_else(bad)?;
    if id.is_empty() {
        return Err(bad());
    }
    let time = match time {
        "-" => None,
        ms => Some(bson::DateTime::from_millis(ms.parse().map_err(|_| bad())?)),
    };
    Ok((time, id.to_owned()))
}

pub fn cursor_text(time: Option<bson::DateTime>, id: &str) -> String {
    match time {
        Some(t) => format!("{}:{id}", t.timestamp_millis()),
        None => format!("-:{id}"),
    }
}

/// The filters of `/`: which builds, grouped by sourcestamp.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityParams {
    pub query: BuildQuery,
}

impl ActivityParams {
    pub const NAMES: &'static [&'static str] = &[
        "master",
        "builder",
        "branch",
        "result",
        "changeset",
        "since",
        "until",
        "limit",
        "before",
    ];

    pub fn parse(query: Option<&str>) -> Result<ActivityParams, ParamError> {
        let r = Reader::new(query, Self::NAMES)?;
        // Compared as given: two times within one millisecond are still in order.
        let (since, until) = (r.time("since")?, r.time("until")?);
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                return Err(ParamError("since must be earlier than until".into()));
            }
        }
        let before = match r.get("before") {
            None => None,
            Some(v) => {
                let (time, id) = parse_cursor("before", v)?;
                let time_start = time.ok_or_else(|| {
                    ParamError(format!("before needs a time in its cursor: {v:?}"))
                })?;
                Some(BuildCursor { time_start, id })
            }
        };
        let query = BuildQuery {
            master: r.text("master"),
            builder: r.text("builder"),
            branch: r.text("branch"),
            result: r.get("result").map(parse_result).transpose()?,
            changeset: r.text("changeset"),
            since: since.map(to_millis),
            until: until.map(to_millis),
            before,
            limit: r.limit()?,
        };
        // Both within one millisecond: the links could not say so (they would read since = until).
        if let (Some(s), Some(u)) = (query.since, query.until) {
            if s >= u {
                return Err(ParamError(
                    "since and until fall within one millisecond, and builds start at whole \
                     milliseconds: no build can have started between them"
                        .into(),
                ));
            }
        }
        Ok(ActivityParams { query })
    }

    /// The query string of these filters with `change` applied: the pages build their links
    /// (narrowing, widening, paging) from it.
    pub fn link(&self, change: impl FnOnce(&mut BuildQuery)) -> String {
        let mut q = self.query.clone();
        change(&mut q);
        let mut out = String::new();
        let mut push = |name: &str, value: &str| {
            let sep = if out.is_empty() { '?' } else { '&' };
            let _ = write!(out, "{sep}{name}={}", encode(value));
        };
        let time = |t: bson::DateTime| {
            t.try_to_rfc3339_string()
                .unwrap_or_else(|_| t.timestamp_millis().to_string())
        };
        for (name, value) in [
            ("master", q.master.clone()),
            ("builder", q.builder.clone()),
            ("branch", q.branch.clone()),
            ("result", q.result.map(result_param)),
            ("changeset", q.changeset.clone()),
            ("since", q.since.map(time)),
            ("until", q.until.map(time)),
            ("limit", explicit_limit(q.limit).map(|l| l.to_string())),
            (
                "before",
                q.before
                    .as_ref()
                    .map(|c| cursor_text(Some(c.time_start), &c.id)),
            ),
        ] {
            if let Some(v) = value {
                push(name, &v);
            }
        }
        if out.is_empty() {
            "?".into()
        } else {
            out
        }
    }
}

/// `/changesets`: pages of commits.
pub fn commit_params(query: Option<&str>) -> Result<CommitQuery, ParamError> {
    let r = Reader::new(query, &["limit", "before"])?;
    let before = r
        .get("before")
        .map(|v| parse_cursor("before", v))
        .transpose()?
        .map(|(commiter_date, id)| CommitCursor { commiter_date, id });
    Ok(CommitQuery {
        before,
        limit: r.limit()?,
    })
}

/// `/builders`: pages of builders in `_id` order, after the builder `after`.
#[derive(Debug, Clone, PartialEq)]
pub struct BuilderParams {
    pub after: Option<String>,
    pub limit: usize,
}

pub fn builder_params(query: Option<&str>) -> Result<BuilderParams, ParamError> {
    let r = Reader::new(query, &["limit", "after"])?;
    Ok(BuilderParams {
        after: r.text("after"),
        limit: r.limit_up_to(MAX_BUILDERS)?,
    })
}

/// Most builders `/builders` shows at once: each costs a read of its latest builds.
pub const MAX_BUILDERS: usize = 100;

/// Most bytes one `/api` log request returns.
pub const MAX_LOG_WINDOW: usize = 1 << 20;

/// `/api/steps/{id}/logs/{channel}`: a window of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogWindow {
    pub offset: u64,
    pub limit: usize,
}

pub fn log_params(query: Option<&str>) -> Result<LogWindow, ParamError> {
    let r = Reader::new(query, &["offset", "limit"])?;
    let offset = match r.get("offset") {
        None => 0,
        // The stores count offsets in i64.
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|o| i64::try_from(*o).is_ok())
            .ok_or_else(|| {
                ParamError(format!(
                    "offset must be a byte offset (a whole number), not {v:?}"
                ))
            })?,
    };
    let limit = match r.get("limit") {
        None => MAX_LOG_WINDOW,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LOG_WINDOW).contains(n))
            .ok_or_else(|| {
                ParamError(format!(
                    "limit must be a number of bytes from 1 to {MAX_LOG_WINDOW}, not {v:?}"
                ))
            })?,
    };
    Ok(LogWindow { offset, limit })
}

/// Pages that take no parameters still refuse unknown ones, so a typo is not silently ignored.
pub fn no_params(query: Option<&str>) -> Result<(), ParamError> {
    Reader::new(query, &[]).map(|_| ())
}

/// Characters escaped in a link's path or query value: all but the unreserved ones and `:` and
/// `/`, which both may hold as they are. `/` matters in paths: ids hold slashes, and the routes
/// take the rest of the path as the id.
const LINK: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'/');

/// A query value as links write it.
pub fn encode(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, LINK).to_string()
}

/// The path of a document whose `_id` may hold slashes and any other character.
pub fn path(prefix: &str, id: &str) -> String {
    format!(
        "{prefix}{}",
        percent_encoding::utf8_percent_encode(id, LINK)
    )
}

#[cfg(test)]
#[path = "params_tests.rs"]
mod tests;
