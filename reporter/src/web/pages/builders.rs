//! `/builders`: the builders of each master with their status and their latest builds.

use maud::{html, Markup};

use super::{badge, layout, limit_suffix, maybe, Section};
use crate::web::params::encode;
use crate::web::view::BuildersView;

pub fn builders(v: &BuildersView, limit_param: Option<usize>, api: &str) -> Markup {
    let limit = limit_suffix(limit_param);
    layout(
        "Builders",
        Section::Builders,
        api,
        html! {
            h1 { "Builders" }
            @if v.masters.is_empty() {
                p.empty { "No builders yet." }
            }
            @for m in &v.masters {
                h2 { "Master " a href={ "/?master=" (encode(&m.master)) } { (m.master) } }
                table.builders {
                    thead { tr { th { "Builder" } th { "Status" } th { "Category" } th { "Workers" } th { "Latest builds" } } }
                    tbody {
                        @for b in &m.builders {
                            tr {
                                td { a href=(b.url) { (b.name) } }
                                td { span.status { (b.status) } }
                                td { (maybe(&b.category)) }
                                td { (b.slaves.join(", ")) }
                                td {
                                    @for build in &b.last_builds {
                                        a href=(build.url) { "#" (build.number) } " " (badge(build.result)) " "
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(after) = &v.next {
                p.pager { a rel="next" href={ "/builders?after=" (encode(after)) (limit) } { "More builders →" } }
            }
        },
    )
}
