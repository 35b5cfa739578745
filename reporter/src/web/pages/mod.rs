//! The HTML pages, rendered from the view structs with maud, which escapes every value it is
//! given: text from events never reaches the page as markup. No JavaScript: links and a GET form
//! are all a reader needs, and every URL can be edited by hand.

mod activity;
mod build;
mod builders;
mod console;

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};

use super::view::{human_duration, result_names, ChangeView, Outcome};

pub use activity::activity;
pub use build::build;
pub use builders::builders;
pub use console::console;

/// The style sheet every page links to.
pub const STYLE: &str = include_str!("style.css");

/// Which part of the site a page belongs to, so the navigation can mark it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Activity,
    Changesets,
    Builders,
    None,
}

/// The frame of every page: title, navigation, the result legend, and a link to the JSON twin.
fn layout(title: &str, section: Section, api: &str, body: Markup) -> Markup {
    let nav = [
        (Section::Activity, "/", "Activity"),
        (Section::Changesets, "/changesets", "Changesets"),
        (Section::Builders, "/builders", "Builders"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · buildstore" }
                link rel="stylesheet" href="/style.css";
            }
            body {
                header {
                    nav {
                        strong { "buildstore" }
                        @for (s, href, label) in nav {
                            a href=(href) class=[(s == section).then_some("current")] { (label) }
                        }
                        a.api href=(api) { "JSON" }
                    }
                }
                main { (body) }
                footer { (legend()) }
            }
        }
    }
}

/// What each colour means; the badges also always carry the result's name.
fn legend() -> Markup {
    html! {
        ul.legend aria-label="Result colours" {
            @for name in result_names().chain([Outcome::UNFINISHED.name]) {
                li { span class={ "badge result-" (name) } { (name) } }
            }
        }
    }
}

/// A result as a coloured badge with its name.
fn badge(result: Outcome) -> Markup {
    html! { span class={ "badge result-" (result.name) } { (result.name) } }
}

fn when(t: &DateTime<Utc>) -> Markup {
    html! {
        time datetime=(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)) {
            (t.format("%Y-%m-%d %H:%M:%S UTC"))
        }
    }
}

fn maybe<T: std::fmt::Display>(value: &Option<T>) -> Markup {
    match value {
        Some(v) => html! { (v) },
        None => html! { span.none { "—" } },
    }
}

/// Changes as both the activity rows and the build page list them: who, when, what, which files.
fn changes(changes: &[ChangeView]) -> Markup {
    html! {
        @if changes.is_empty() {
            span.none { "no changes" }
        }
        @for c in changes {
            div.change {
                div {
                    strong { (maybe(&c.author)) }
                    @if let Some(t) = &c.when { " " (when(t)) }
                    @if let Some(r) = &c.revision { " " code { (r) } }
                }
                @if let Some(comments) = &c.comments { div.comments { (comments) } }
                @if !c.files.is_empty() {
                    ul.files { @for f in &c.files { li { (f) } } }
                }
            }
        }
    }
}

/// `&limit=N` for a "next page" link, when the page was asked for a limit of its own.
fn limit_suffix(limit: Option<usize>) -> String {
    limit.map(|l| format!("&limit={l}")).unwrap_or_default()
}

fn duration(ms: i64) -> Markup {
    html! { (human_duration(ms)) }
}

/// A page that explains what went wrong: a bad parameter (400), an unknown build (404), a store
/// that cannot be read (503).
pub fn error(status: u16, message: &str) -> Markup {
    let title = match status {
        400 => "Bad request",
        404 => "Not found",
        405 => "Method not allowed",
        _ => "Unavailable",
    };
    layout(
        title,
        Section::None,
        "/api",
        html! {
            h1 { (status) " " (title) }
            p.error { (message) }
            p { a href="/" { "Back to the latest builds" } }
        },
    )
}
