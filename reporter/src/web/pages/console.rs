//! `/changesets`: commits of `repository`, newest first, against the builders that built them —
//! a console view. Each cell holds that builder's builds of the commit.

use std::collections::HashMap;

use maud::{html, Markup};

use super::{badge, layout, limit_suffix, maybe, when, Section};
use crate::web::params::encode;
use crate::web::view::{changeset_url, ConsoleBuild, ConsoleView};

pub fn console(v: &ConsoleView, limit_param: Option<usize>, api: &str) -> Markup {
    let limit = limit_suffix(limit_param);
    layout(
        "Changesets",
        Section::Changesets,
        api,
        html! {
            h1 { "Changesets" }
            @if v.commits.is_empty() {
                p.empty { "No commits with builds yet." }
            } @else {
                table.console {
                    thead {
                        tr {
                            th { "Commit" } th { "Author" } th { "Date" }
                            @for b in &v.builders { th.builder { (b) } }
                        }
                    }
                    tbody {
                        @for c in &v.commits {
                            @let cells = by_builder(&c.builds);
                            tr {
                                td.commit {
                                    a href=(changeset_url(&c.hash)) {
                                        code { (c.hash_abbrev.as_deref().unwrap_or(&c.hash)) }
                                    }
                                    " " (maybe(&c.subject))
                                }
                                td { (maybe(&c.author)) }
                                td { @match &c.commiter_date { Some(t) => (when(t)), None => span.none { "—" } } }
                                @for builder in &v.builders {
                                    td.cell {
                                        @for b in cells.get(builder.as_str()).into_iter().flatten() {
                                            a href=(b.url) title={ (b.builder) " #" (b.number) } { (badge(b.result)) }
                                            " "
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if let Some(cursor) = &v.next {
                p.pager { a rel="next" href={ "/changesets?before=" (encode(cursor)) (limit) } { "Older commits →" } }
            }
        },
    )
}

/// A commit's builds by builder, found once per commit: looking for each cell's builds among all
/// of them made a commit built by thousands of builders take seconds to draw.
fn by_builder(builds: &[ConsoleBuild]) -> HashMap<&str, Vec<&ConsoleBuild>> {
    let mut cells: HashMap<&str, Vec<&ConsoleBuild>> = HashMap::new();
    for b in builds {
        cells.entry(b.builder.as_str()).or_default().push(b);
    }
    cells
}
