//! `/builds/{id}`: one build — its facts, its steps with a bar showing when each ran within the
//! build, the failed step highlighted, the last lines of each log, properties and changes.

use maud::{html, Markup};

use super::{badge, changes, duration, layout, maybe, when, Section};
use crate::web::params::{encode, path};
use crate::web::view::{builder_url, changeset_url, BuildView, StepView};

pub fn build(b: &BuildView) -> Markup {
    let s = &b.summary;
    let title = format!("{} #{}", s.builder, s.number);
    let builder_link = builder_url(&s.master, &s.builder);
    layout(
        &title,
        Section::None,
        &path("/api/builds/", &s.id),
        html! {
            h1 { a href=(builder_link) { (s.builder) } " #" (s.number) " " (badge(s.result)) }
            dl.facts {
                dt { "Builder" } dd { a href=(builder_link) { (s.builder) } }
                dt { "Number" } dd { (s.number) }
                dt { "Result" } dd { (badge(s.result)) }
                dt { "Master" } dd { a href={ "/?master=" (encode(&s.master)) } { (s.master) } }
                dt { "Category" } dd { (maybe(&b.category)) }
                dt { "Platform" } dd { (s.platform) }
                dt { "Started" } dd { (when(&s.time_start)) }
                dt { "Finished" } dd {
                    @match &s.time_end { Some(t) => (when(t)), None => span.none { "still running" } }
                }
                dt { "Duration" } dd { (duration(b.duration_ms)) }
                dt { "Workers" } dd { (b.slaves.join(", ")) }
                dt { "Reason" } dd { (maybe(&b.reason)) }
                dt { "Repository" } dd { (maybe(&b.sourcestamp.repository)) }
                dt { "Branch" } dd { (maybe(&b.sourcestamp.branch)) }
                dt { "Changeset" } dd {
                    @match &b.sourcestamp.changeset {
                        Some(c) => a href=(changeset_url(c)) { code { (c) } },
                        None => span.none { "nightly" },
                    }
                }
            }
            h2 { "Steps" }
            @if b.steps.is_empty() {
                p.empty { "No steps yet." }
            } @else {
                table.steps data-span-ms=(b.duration_ms) {
                    thead { tr { th { "#" } th { "Step" } th { "Result" } th { "Duration" } th.timeline { "When, within the build" } th { "Logs" } } }
                    tbody { @for step in &b.steps { (step_row(step)) } }
                }
            }
            @if b.more_steps {
                p.note { "Only the first " (b.steps.len()) " steps are shown; the JSON twin lists the same." }
            }
            @let logged: Vec<&StepView> = b.steps.iter().filter(|s| s.logs.iter().any(|l| !l.tail.is_empty())).collect();
            @if !logged.is_empty() {
                h2 { "Logs" }
                @for step in logged {
                    @for log in step.logs.iter().filter(|l| !l.tail.is_empty()) {
                        details.log id={ "log-" (step.step) "-" (log.channel) } open[step.failed] {
                            summary {
                                (step.name) " — " (log.channel) " (" (log.bytes) " bytes"
                                @if (log.tail.len() as i64) < log.bytes { ", its last lines below" }
                                "; " a href=(log.url) { "full log" } ")"
                            }
                            pre { (log.tail) }
                        }
                    }
                }
            }
            h2 { "Properties" }
            @if b.properties.is_empty() {
                p.empty { "No properties." }
            } @else {
                table.properties {
                    thead { tr { th { "Name" } th { "Value" } th { "Source" } } }
                    tbody {
                        @for p in &b.properties {
                            tr { td { (p.name) } td { code { (p.value) } } td { (maybe(&p.source)) } }
                        }
                    }
                }
            }
            h2 { "Changes" }
            (changes(&b.changes))
        },
    )
}

/// A step row: the bar's offset and width are percentages of the build's time span, so a long
/// step stands out at a glance.
fn step_row(step: &StepView) -> Markup {
    let class = format!(
        "step result-{}{}",
        step.result.name,
        if step.failed { " failed" } else { "" }
    );
    let bar = format!(
        "margin-left:{:.3}%;width:{:.3}%",
        step.bar.offset_pct, step.bar.width_pct
    );
    html! {
        tr class=(class) id={ "step-" (step.step) } data-duration-ms=(step.duration_ms) data-offset-ms=(step.offset_ms) {
            td { (step.step) }
            td.name {
                (step.name)
                @if let Some(t) = &step.text { div.text { (t) } }
            }
            td { (badge(step.result)) }
            td.duration { (duration(step.duration_ms)) }
            td.timeline { div.track { div.bar style=(bar) {} } }
            td.logs {
                @for log in &step.logs {
                    a href=(log.url) { (log.channel) } " "
                }
            }
        }
    }
}
