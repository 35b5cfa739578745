//! What the pages show, computed from documents: results with Buildbot's names, a platform guess,
//! builds grouped by sourcestamp, step timing bars, the console grid. Pure: documents and a clock
//! reading in, plain structs out. The HTML pages and their JSON twins both render these structs,
//! so the two always carry the same data.

use std::collections::{BTreeMap, BTreeSet};

use bson::Bson;
use buildstore_schema::{
    BuildDoc, BuilderDoc, ChangeDoc, Channel, CommitDoc, PropertyDoc, RepoBuildEntry, ResultCode,
    StepDoc,
};
use chrono::{DateTime, Utc};
use serde::Serialize;

use super::log_tail;
use super::params::{cursor_text, encode, path};
use crate::store::BuildCursor;

/// A build's or step's result: Buildbot's code and name, or "running" while it has none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub code: Option<i32>,
    pub name: &'static str,
}

impl Outcome {
    pub fn of(result: Option<i32>) -> Outcome {
        let name = match result {
            None => "running",
            Some(code) => ResultCode::new(code.into()).map_or("unknown", ResultCode::name),
        };
        Outcome { code: result, name }
    }

    /// A step the master never finished, in a build that did (a master that died mid-step and
    /// finished the build on its restart): it is not running.
    pub const UNFINISHED: Outcome = Outcome {
        code: None,
        name: "unfinished",
    };

    /// Failed steps are the ones a reader looks for first.
    pub fn is_failure(self) -> bool {
        matches!(self.code, Some(2) | Some(4))
    }
}

/// Every result a page may show, in the legend's order: Buildbot's, then "running".
pub fn result_names() -> impl Iterator<Item = &'static str> {
    ResultCode::NAMES.into_iter().chain(["running"])
}

fn time(t: bson::DateTime) -> DateTime<Utc> {
    t.to_chrono()
}

/// The platform a build ran on: its `platform` property, else a platform word in the builder's
/// name (`linux64-opt` → `linux64`), else "unknown".
pub fn platform(properties: &BTreeMap<String, PropertyDoc>, builder: &str) -> String {
    if let Some(Bson::String(p)) = properties.get("platform").map(|p| &p.value) {
        if !p.trim().is_empty() {
            return p.clone();
        }
    }
    // Families, and the distributions and versions old builder names go by ("WINNT 5.2",
    // "Rev3 Fedora 12x64", "Ubuntu VM 12.04").
    const FAMILIES: [&str; 18] = [
        "linux", "win", "winnt", "mac", "osx", "darwin", "android", "ios", "freebsd", "openbsd",
        "netbsd", "solaris", "wasm", "fedora", "ubuntu", "debian", "centos", "rhel",
    ];
    let words: Vec<String> = builder
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    // "OS X 10.6": the two words of one platform.
    if words.windows(2).any(|w| w[0] == "os" && w[1] == "x") {
        return "osx".into();
    }
    words
        .into_iter()
        .find(|word| {
            FAMILIES.iter().any(|f| {
                word.strip_prefix(f).is_some_and(|rest| {
                    // "win32", "macosx64", "linux": a family and a suffix of digits or "os"/"osx",
                    // so that "window" or "maculate" are not taken for platforms.
                    rest.is_empty()
                        || rest.chars().all(|c| c.is_ascii_digit())
                        || ["os", "osx", "dows"].iter().any(|s| {
                            rest.strip_prefix(s)
                                .is_some_and(|d| d.chars().all(|c| c.is_ascii_digit()))
                        })
                })
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// One build as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildSummary {
    pub id: String,
    pub url: String,
    pub master: String,
    pub builder: String,
    pub number: i64,
    pub result: Outcome,
    pub platform: String,
    pub time_start: DateTime<Utc>,
    pub time_end: Option<DateTime<Utc>>,
}

pub fn summary(b: &BuildDoc) -> BuildSummary {
    BuildSummary {
        id: b.id.clone(),
        url: path("/builds/", &b.id),
        master: b.master_id.to_string(),
        builder: b.builder.clone(),
        number: b.number,
        result: Outcome::of(b.result),
        platform: platform(&b.properties, &b.builder),
        time_start: time(b.time_start),
        time_end: b.time_end.map(time),
    }
}

/// Cuts a build document, as the store reads it for a list of builds, to what the list shows of
/// it: of its properties only `platform` (see [`summary`]), none of its step ids. A build may
/// hold megabytes of properties, and a page lists up to 500 builds.
pub fn keep_list_fields(doc: &mut bson::Document) {
    if let Ok(properties) = doc.get_document_mut("properties") {
        let platform = properties.remove("platform");
        properties.clear();
        if let Some(p) = platform {
            properties.insert("platform", p);
        }
    }
    if doc.contains_key("steps") {
        doc.insert("steps", Bson::Array(Vec::new()));
    }
}

/// Like [`keep_list_fields`], without the build's changes either: the latest builds of a builder
/// show as badges.
pub fn keep_badge_fields(doc: &mut bson::Document) {
    keep_list_fields(doc);
    if doc.contains_key("changes") {
        doc.insert("changes", Bson::Array(Vec::new()));
    }
}

/// A change that went into a build.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeView {
    pub revision: Option<String>,
    pub author: Option<String>,
    pub when: Option<DateTime<Utc>>,
    pub comments: Option<String>,
    pub files: Vec<String>,
}

fn change(c: &ChangeDoc) -> ChangeView {
    ChangeView {
        revision: c.revision.clone(),
        author: c.author.clone(),
        when: c.when.map(time),
        comments: c.comments.clone(),
        files: c.files.clone(),
    }
}

/// What a set of builds was built from. `nightly` when it names no changeset at all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SourceStamp {
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub changeset: Option<String>,
    pub nightly: bool,
}

impl SourceStamp {
    pub fn of(b: &BuildDoc) -> SourceStamp {
        SourceStamp {
            repository: b.repository.clone(),
            branch: b.branch.clone(),
            changeset: b.changeset.clone(),
            nightly: b.changeset.is_none(),
        }
    }
}

/// The builds of one builder of a master, on `/`.
pub fn builder_url(master: &str, builder: &str) -> String {
    format!("/?master={}&builder={}", encode(master), encode(builder))
}

/// Every build of a changeset, on `/`.
pub fn changeset_url(changeset: &str) -> String {
    format!("/?changeset={}", encode(changeset))
}

/// A row of `/`: a sourcestamp, its changes, its builds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ActivityRow {
    pub sourcestamp: SourceStamp,
    pub changes: Vec<ChangeView>,
    pub builds: Vec<BuildSummary>,
}

/// Groups builds (newest first) by sourcestamp; a row stands where its newest build stood, and
/// holds every distinct change of its builds.
pub fn activity_rows(builds: &[BuildDoc]) -> Vec<ActivityRow> {
    let mut rows: Vec<ActivityRow> = Vec::new();
    for b in builds {
        let stamp = SourceStamp::of(b);
        let at = match rows.iter().position(|r| r.sourcestamp == stamp) {
            Some(i) => i,
            None => {
                rows.push(ActivityRow {
                    sourcestamp: stamp,
                    changes: vec![],
                    builds: vec![],
                });
                rows.len() - 1
            }
        };
        let row = &mut rows[at];
        for c in b.changes.iter().map(change) {
            if !row.changes.contains(&c) {
                row.changes.push(c);
            }
        }
        row.builds.push(summary(b));
    }
    rows
}

/// A page of rows read with one row more than `limit`: the rows to show, and the last of them
/// when that extra row says an older page exists. So the "older" link never leads to nothing.
pub fn page<T>(rows: &[T], limit: usize) -> (&[T], Option<&T>) {
    if rows.len() > limit {
        let shown = &rows[..limit];
        (shown, shown.last())
    } else {
        (rows, None)
    }
}

/// Where the page after this build starts.
pub fn build_cursor(last: &BuildDoc) -> BuildCursor {
    BuildCursor {
        time_start: last.time_start,
        id: last.id.clone(),
    }
}

/// Where a step ran within its build's time span, in percent of the span.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Bar {
    pub offset_pct: f64,
    pub width_pct: f64,
}

/// A log of a step: its size, where to read it whole, and its last lines.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogView {
    pub channel: &'static str,
    pub bytes: i64,
    pub url: String,
    pub api_url: String,
    /// The end of the log ([`log_tail`](super::log_tail)); empty once the page's budget is spent.
    pub tail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepView {
    pub id: String,
    pub step: i64,
    pub name: String,
    pub result: Outcome,
    /// The step failed (FAILURE or EXCEPTION), or gave a build that did not succeed its result.
    pub failed: bool,
    pub text: Option<String>,
    pub time_start: DateTime<Utc>,
    pub time_end: Option<DateTime<Utc>>,
    /// Until the step's end, or until now while it runs.
    pub duration_ms: i64,
    /// When the step started, counted from the build's start.
    pub offset_ms: i64,
    pub bar: Bar,
    /// True when an inline log lost its middle to the inline limit.
    pub log_truncated: bool,
    pub logs: Vec<LogView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PropertyView {
    pub name: String,
    /// The value as JSON text.
    pub value: String,
    pub source: Option<String>,
}

/// The build page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildView {
    #[serde(flatten)]
    pub summary: BuildSummary,
    pub category: Option<String>,
    pub slaves: Vec<String>,
    pub reason: Option<String>,
    pub sourcestamp: SourceStamp,
    /// Until the build's end, or until now while it runs.
    pub duration_ms: i64,
    pub steps: Vec<StepView>,
    /// True when the build has more steps than the page shows.
    pub more_steps: bool,
    pub properties: Vec<PropertyView>,
    pub changes: Vec<ChangeView>,
}

fn millis(from: bson::DateTime, to: bson::DateTime) -> i64 {
    (to.timestamp_millis() - from.timestamp_millis()).max(0)
}

/// The build page's data. `now` ends what is still running; `more_steps` says the step list was
/// cut at the page's bound. `steps` are as [`log_tail::keep_page_tails`] leaves them as they are
/// read: each inline log cut to what the page shows of it.
pub fn build_view(
    build: &BuildDoc,
    builder: Option<&BuilderDoc>,
    steps: &[StepDoc],
    more_steps: bool,
    now: bson::DateTime,
) -> BuildView {
    let step_ends = steps.iter().map(|s| s.time_end.unwrap_or(now));
    let end = build
        .time_end
        .unwrap_or_else(|| step_ends.fold(now, bson::DateTime::max));
    let span = millis(build.time_start, end);
    let pct = |ms: i64| {
        if span == 0 {
            0.0
        } else {
            (ms as f64 * 100.0 / span as f64).clamp(0.0, 100.0)
        }
    };
    let mut steps: Vec<StepView> = steps
        .iter()
        .map(|s| {
            // A step never finished ended with its build at the latest, not now.
            let duration_ms = millis(s.time_start, s.time_end.or(build.time_end).unwrap_or(now));
            let offset_ms = millis(build.time_start, s.time_start);
            let offset_pct = pct(offset_ms);
            let result = match (s.result, build.result) {
                (None, Some(_)) => Outcome::UNFINISHED,
                _ => Outcome::of(s.result),
            };
            // Highlighted: a step that failed, or the step that gave a build that did not succeed
            // its result (a test step ending in WARNINGS is why its build warns).
            let failed = result.is_failure()
                || (build.result.is_some_and(|r| r != 0 && r != 3) && s.result == build.result);
            StepView {
                id: s.id.clone(),
                step: s.step,
                name: s.name.clone(),
                result,
                failed,
                text: s.text.clone(),
                time_start: time(s.time_start),
                time_end: s.time_end.map(time),
                duration_ms,
                offset_ms,
                bar: Bar {
                    offset_pct,
                    width_pct: pct(duration_ms).min(100.0 - offset_pct),
                },
                log_truncated: s.log_truncated,
                logs: Channel::ALL
                    .into_iter()
                    .filter(|c| s.log_bytes.get(*c) > 0)
                    .map(|c| LogView {
                        channel: c.as_str(),
                        bytes: s.log_bytes.get(c),
                        url: log_url("", &s.id, c),
                        api_url: log_url("/api", &s.id, c),
                        // Cut to its tail as it was read (`log_tail::keep_page_tails`).
                        tail: s.log(c).to_owned(),
                    })
                    .collect(),
            }
        })
        .collect();
    log_tail::fit_page(&mut steps);
    BuildView {
        summary: summary(build),
        category: builder.and_then(|b| b.category.clone()),
        slaves: build.slaves.clone(),
        reason: build.reason.clone(),
        sourcestamp: SourceStamp::of(build),
        duration_ms: span,
        steps,
        more_steps,
        properties: build
            .properties
            .iter()
            .map(|(name, p)| PropertyView {
                name: name.clone(),
                value: p.value.clone().into_relaxed_extjson().to_string(),
                source: p.source.clone(),
            })
            .collect(),
        changes: build.changes.iter().map(change).collect(),
    }
}

pub fn log_url(prefix: &str, step_id: &str, channel: Channel) -> String {
    format!(
        "{}/logs/{}",
        path(&format!("{prefix}/steps/"), step_id),
        channel.as_str()
    )
}

/// A build in the console grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleBuild {
    pub id: String,
    pub url: String,
    pub builder: String,
    pub number: i64,
    pub result: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommitRow {
    pub hash: String,
    pub hash_abbrev: Option<String>,
    pub subject: Option<String>,
    pub author: Option<String>,
    pub commiter_date: Option<DateTime<Utc>>,
    pub repository: Option<String>,
    pub builds: Vec<ConsoleBuild>,
}

/// `/changesets`: commits newest first × the builders that built them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsoleView {
    /// The grid's columns: every builder that built one of these commits.
    pub builders: Vec<String>,
    pub commits: Vec<CommitRow>,
    pub next: Option<String>,
}

/// Most cells of the console grid (commits × builders) a page shows. With many builders that each
/// built few of the commits, a page of 500 commits could hold millions of empty cells; such a
/// page shows fewer commits instead, and its next page goes on from there.
pub const MAX_CONSOLE_CELLS: usize = 50_000;

/// How many of the first `limit` commits fit in [`MAX_CONSOLE_CELLS`]; one at least.
fn rows_within_cells(commits: &[CommitDoc], limit: usize) -> usize {
    let mut builders = BTreeSet::new();
    for (i, c) in commits.iter().take(limit).enumerate() {
        builders.extend(c.builds.iter().map(|b| b.builder.as_str()));
        if i > 0 && (i + 1) * builders.len() > MAX_CONSOLE_CELLS {
            return i;
        }
    }
    limit
}

/// The console of `commits`, read with one more than `limit` (see [`page`]).
pub fn console(commits: &[CommitDoc], limit: usize) -> ConsoleView {
    let (commits, last) = page(commits, rows_within_cells(commits, limit));
    let builders: BTreeSet<&str> = commits
        .iter()
        .flat_map(|c| c.builds.iter().map(|b| b.builder.as_str()))
        .collect();
    let build = |b: &RepoBuildEntry| ConsoleBuild {
        id: b.build.clone(),
        url: path("/builds/", &b.build),
        builder: b.builder.clone(),
        number: b.number,
        result: Outcome::of(b.result),
    };
    ConsoleView {
        builders: builders.into_iter().map(str::to_owned).collect(),
        commits: commits
            .iter()
            .map(|c| CommitRow {
                hash: c.id.clone(),
                // An empty one, as an earlier version stored it, names nothing to show.
                hash_abbrev: c.hash_abbrev.clone().filter(|a| !a.is_empty()),
                subject: c.subject.clone(),
                author: c.author_name.clone(),
                commiter_date: c.commiter_date.map(time),
                repository: c.repository_uri.clone(),
                builds: c.builds.iter().map(build).collect(),
            })
            .collect(),
        next: last.map(|c| cursor_text(c.commiter_date, &c.id)),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuilderRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub category: Option<String>,
    pub tags: Vec<String>,
    pub slaves: Vec<String>,
    /// The builds page of this builder.
    pub url: String,
    pub last_builds: Vec<BuildSummary>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MasterGroup {
    pub master: String,
    pub builders: Vec<BuilderRow>,
}

/// `/builders`: builders grouped by master, in `_id` order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildersView {
    pub masters: Vec<MasterGroup>,
    /// The `after` of the next page, when this one was full.
    pub next: Option<String>,
}

/// Builders (in `_id` order) with each one's latest builds; `next` is the `after` of the next
/// page, if there is one (see [`page`]).
pub fn builders_view(
    builders: Vec<(BuilderDoc, Vec<BuildDoc>)>,
    next: Option<String>,
) -> BuildersView {
    let mut masters: Vec<MasterGroup> = Vec::new();
    for (b, builds) in builders {
        let master = b.master_id.to_string();
        let row = BuilderRow {
            url: builder_url(&master, &b.name),
            id: b.id,
            name: b.name,
            status: b.status,
            category: b.category,
            tags: b.tags,
            slaves: b.slaves,
            last_builds: builds.iter().map(summary).collect(),
        };
        match masters.last_mut() {
            Some(group) if group.master == master => group.builders.push(row),
            _ => masters.push(MasterGroup {
                master,
                builders: vec![row],
            }),
        }
    }
    BuildersView { masters, next }
}

/// A duration as people read it: `850 ms`, `42 s`, `3 min 05 s`, `2 h 07 min`.
pub fn human_duration(ms: i64) -> String {
    let s = ms / 1000;
    match ms {
        ..=999 => format!("{} ms", ms.max(0)),
        1000..=59_999 => format!("{s} s"),
        60_000..=3_599_999 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
#[path = "view_tests.rs"]
mod tests;
