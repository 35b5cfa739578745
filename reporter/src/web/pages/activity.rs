//! `/`: recent builds in three columns per sourcestamp — the sourcestamp, its changes, its builds —
//! with a filter form, links that narrow or widen the view, and a link to older builds.

use maud::{html, Markup};

use super::{badge, changes, layout, Section};
use crate::store::{BuildCursor, BuildQuery};
use crate::web::params::{explicit_limit, result_param, ActivityParams};
use crate::web::view::{changeset_url, result_names, ActivityRow, BuildSummary, SourceStamp};

pub fn activity(
    params: &ActivityParams,
    rows: &[ActivityRow],
    next: Option<&BuildCursor>,
) -> Markup {
    let q = &params.query;
    let api = format!("/api{}", params.link(|_| {}).trim_end_matches('?'));
    layout(
        "Builds",
        Section::Activity,
        if api == "/api" { "/api/" } else { &api },
        html! {
            h1 { "Builds" }
            (filter_form(q))
            (active_filters(params))
            @if rows.is_empty() {
                p.empty { "No builds match." }
            } @else {
                table.activity {
                    thead { tr { th { "Sourcestamp" } th { "Changes" } th { "Builds" } } }
                    tbody {
                        @for row in rows {
                            tr {
                                td.sourcestamp { (sourcestamp(params, &row.sourcestamp)) }
                                td.changes { (changes(&row.changes)) }
                                td.builds { (builds(params, &row.builds)) }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = next {
                p.pager {
                    a rel="next" href=(params.link(|q| q.before = Some(cursor.clone()))) { "Older builds →" }
                }
            }
        },
    )
}

fn filter_form(q: &BuildQuery) -> Markup {
    let text = |name: &'static str, value: &Option<String>| {
        html! {
            label { (name) " " input type="text" name=(name) value=[value.as_deref()]; }
        }
    };
    let time = |name: &'static str, value: Option<bson::DateTime>| {
        let v = value.and_then(|t| t.try_to_rfc3339_string().ok());
        html! {
            label { (name) " " input type="text" name=(name) placeholder="2026-11-23" value=[v]; }
        }
    };
    let selected = q.result.map(result_param);
    html! {
        form.filters method="get" action="/" {
            (text("master", &q.master))
            (text("builder", &q.builder))
            (text("branch", &q.branch))
            (text("changeset", &q.changeset))
            label {
                "result "
                select name="result" {
                    option value="" { "any" }
                    @for name in result_names() {
                        option value=(name) selected[selected.as_deref() == Some(name)] { (name) }
                    }
                }
            }
            (time("since", q.since))
            (time("until", q.until))
            // The page size chosen in the URL stays when the filters change.
            @if let Some(limit) = explicit_limit(q.limit) {
                input type="hidden" name="limit" value=(limit);
            }
            button type="submit" { "Filter" }
        }
    }
}

/// Each filter in use, with a link that drops it (and the page cursor, which belongs to it).
fn active_filters(params: &ActivityParams) -> Markup {
    let q = &params.query;
    let mut chips: Vec<(&str, String, String)> = Vec::new();
    let mut chip = |name: &'static str, value: Option<String>, drop: fn(&mut BuildQuery)| {
        if let Some(v) = value {
            chips.push((
                name,
                v,
                params.link(|q| {
                    drop(q);
                    q.before = None;
                }),
            ));
        }
    };
    chip("master", q.master.clone(), |q| q.master = None);
    chip("builder", q.builder.clone(), |q| q.builder = None);
    chip("branch", q.branch.clone(), |q| q.branch = None);
    chip("result", q.result.map(result_param), |q| q.result = None);
    chip("changeset", q.changeset.clone(), |q| q.changeset = None);
    let time = |t: Option<bson::DateTime>| t.and_then(|t| t.try_to_rfc3339_string().ok());
    chip("since", time(q.since), |q| q.since = None);
    chip("until", time(q.until), |q| q.until = None);
    html! {
        @if !chips.is_empty() {
            ul.chips {
                @for (name, value, widen) in &chips {
                    li { (name) " = " code { (value) } " " a href=(widen) title="remove this filter" { "×" } }
                }
            }
        }
    }
}

fn sourcestamp(params: &ActivityParams, s: &SourceStamp) -> Markup {
    html! {
        @if let Some(repo) = &s.repository { div.repository { (repo) } }
        // An empty branch would be a link with no text that widens the view (an empty filter is none).
        @if let Some(branch) = s.branch.as_ref().filter(|b| !b.is_empty()) {
            div { "branch " a href=(params.link(|q| { q.branch = Some(branch.clone()); q.before = None; })) { (branch) } }
        }
        @match &s.changeset {
            Some(c) => div {
                a.changeset href=(changeset_url(c)) { code { (c) } }
            },
            None => div.nightly { "nightly" },
        }
    }
}

fn builds(params: &ActivityParams, builds: &[BuildSummary]) -> Markup {
    html! {
        ul.buildlist {
            @for b in builds {
                li {
                    a href=(params.link(|q| { q.builder = Some(b.builder.clone()); q.before = None; })) { (b.builder) }
                    " "
                    a href=(b.url) { "#" (b.number) }
                    " " (badge(b.result))
                    " " span.platform { (b.platform) }
                }
            }
        }
    }
}
