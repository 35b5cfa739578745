//! The HTTP shell: each route reads what its page needs from the store, turns it into a view
//! (`view`), and renders it as HTML (`pages`) or, under `/api`, as JSON. Nothing is cached, so a
//! page shows what the store holds at the moment it is asked for.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use buildstore_schema::{BuildDoc, BuilderDoc, Collection, CommitDoc, StepDoc};
use serde::de::DeserializeOwned;

use super::params::{self, ActivityParams, BuilderParams};
use super::view::{self, ActivityRow, BuildView, BuildersView, ConsoleView};
use super::{log_tail, logs, pages, path_text, with_safety_headers, PathText, WebError};
use crate::store::{BuildCursor, BuildQuery, CommitQuery, Store};

/// Most steps a build page lists.
pub const MAX_STEPS: usize = 1000;
/// Latest builds shown per builder on `/builders`.
const BUILDS_PER_BUILDER: usize = 5;

type Shared = Arc<dyn Store>;

/// Every page and its JSON twin.
pub fn router(store: Arc<dyn Store>) -> Router {
    Router::new()
        .route("/", get(activity_page))
        .route("/api", get(activity_json))
        .route("/api/", get(activity_json))
        .route("/builds/{*id}", get(build_page))
        .route("/api/builds/{*id}", get(build_json))
        .route("/steps/{*path}", get(logs::full_log))
        .route("/api/steps/{*path}", get(logs::log_window))
        .route("/changesets", get(console_page))
        .route("/api/changesets", get(console_json))
        .route("/builders", get(builders_page))
        .route("/api/builders", get(builders_json))
        .route("/style.css", get(style))
        .fallback(not_found)
        .method_not_allowed_fallback(wrong_method)
        // On every answer, whichever route or error made it: one missed is a page a browser
        // might sniff as HTML.
        .layer(axum::middleware::map_response(with_safety_headers))
        .with_state(store)
}

fn html(result: Result<maud::Markup, WebError>) -> Response {
    match result {
        Ok(markup) => markup.into_response(),
        Err(e) => e.page(),
    }
}

fn json<T: serde::Serialize>(result: Result<T, WebError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => e.json(),
    }
}

/// A document of a collection, as its typed struct.
pub(super) fn typed<T: DeserializeOwned>(
    collection: Collection,
    doc: bson::Document,
) -> Result<T, WebError> {
    let id = doc.get_str("_id").unwrap_or("?").to_owned();
    typed_as(collection, &id, doc)
}

/// A document read by its id, as its typed struct; a damaged one is named by that id even when
/// its own `_id` is what is damaged.
fn typed_as<T: DeserializeOwned>(
    collection: Collection,
    id: &str,
    doc: bson::Document,
) -> Result<T, WebError> {
    let id = id.to_owned();
    bson::from_document(doc).map_err(|e| {
        WebError::Store(crate::store::StoreError::Corrupt {
            collection,
            id,
            message: e.to_string(),
        })
    })
}

fn typed_all<T: DeserializeOwned>(
    collection: Collection,
    docs: Vec<bson::Document>,
) -> Result<Vec<T>, WebError> {
    docs.into_iter().map(|d| typed(collection, d)).collect()
}

#[derive(serde::Serialize)]
struct Activity {
    rows: Vec<ActivityRow>,
    /// The `before` of the next page, when this one was full.
    next: Option<String>,
}

async fn activity(
    store: &dyn Store,
    query: Option<&str>,
) -> Result<(ActivityParams, Vec<ActivityRow>, Option<BuildCursor>), WebError> {
    let p = ActivityParams::parse(query)?;
    // One build more than the page shows tells whether an older page exists.
    let one_more = BuildQuery {
        limit: p.query.limit + 1,
        ..p.query.clone()
    };
    let builds: Vec<BuildDoc> = typed_all(
        Collection::Builds,
        store.find_builds(&one_more, view::keep_list_fields).await?,
    )?;
    let (shown, last) = view::page(&builds, p.query.limit);
    let next = last.map(view::build_cursor);
    Ok((p, view::activity_rows(shown), next))
}

async fn activity_page(State(store): State<Shared>, RawQuery(q): RawQuery) -> Response {
    html(
        activity(store.as_ref(), q.as_deref())
            .await
            .map(|(p, rows, next)| pages::activity(&p, &rows, next.as_ref())),
    )
}

async fn activity_json(State(store): State<Shared>, RawQuery(q): RawQuery) -> Response {
    json(
        activity(store.as_ref(), q.as_deref())
            .await
            .map(|(_, rows, next)| Activity {
                rows,
                next: next.map(|c| params::cursor_text(Some(c.time_start), &c.id)),
            }),
    )
}

async fn build(
    store: &dyn Store,
    id: PathText,
    query: Option<&str>,
) -> Result<BuildView, WebError> {
    let id = &path_text(id)?;
    params::no_params(query)?;
    let doc = store
        .get(Collection::Builds, id)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("there is no build {id:?}")))?;
    let build: BuildDoc = typed_as(Collection::Builds, id, doc)?;
    let builder_id = format!("{}/{}", build.master_id, build.builder);
    let builder: Option<BuilderDoc> = match store.get(Collection::Builders, &builder_id).await? {
        Some(d) => Some(typed_as(Collection::Builders, &builder_id, d)?),
        None => None,
    };
    let mut steps: Vec<StepDoc> = typed_all(
        Collection::Steps,
        store
            .build_steps(id, MAX_STEPS + 1, log_tail::keep_page_tails)
            .await?,
    )?;
    let more = steps.len() > MAX_STEPS;
    steps.truncate(MAX_STEPS);
    Ok(view::build_view(
        &build,
        builder.as_ref(),
        &steps,
        more,
        bson::DateTime::now(),
    ))
}

async fn build_page(State(store): State<Shared>, id: PathText, RawQuery(q): RawQuery) -> Response {
    html(
        build(store.as_ref(), id, q.as_deref())
            .await
            .map(|b| pages::build(&b)),
    )
}

async fn build_json(State(store): State<Shared>, id: PathText, RawQuery(q): RawQuery) -> Response {
    json(build(store.as_ref(), id, q.as_deref()).await)
}

async fn console(
    store: &dyn Store,
    query: Option<&str>,
) -> Result<(ConsoleView, CommitQuery), WebError> {
    let q = params::commit_params(query)?;
    let one_more = CommitQuery {
        limit: q.limit + 1,
        ..q.clone()
    };
    let commits: Vec<CommitDoc> =
        typed_all(Collection::Repository, store.find_commits(&one_more).await?)?;
    Ok((view::console(&commits, q.limit), q))
}

/// The JSON twin of a page: the same path under `/api`, with the same query.
fn api_twin(path: &str, query: Option<&str>) -> String {
    match query.filter(|q| !q.is_empty()) {
        Some(q) => format!("/api{path}?{q}"),
        None => format!("/api{path}"),
    }
}

async fn console_page(State(store): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let api = api_twin("/changesets", q.as_deref());
    html(
        console(store.as_ref(), q.as_deref())
            .await
            .map(|(v, q)| pages::console(&v, params::explicit_limit(q.limit), &api)),
    )
}

async fn console_json(State(store): State<Shared>, RawQuery(q): RawQuery) -> Response {
    json(console(store.as_ref(), q.as_deref()).await.map(|(v, _)| v))
}

async fn builders(
    store: &dyn Store,
    query: Option<&str>,
) -> Result<(BuildersView, BuilderParams), WebError> {
    let p = params::builder_params(query)?;
    let docs: Vec<BuilderDoc> = typed_all(
        Collection::Builders,
        store
            .list(Collection::Builders, p.after.as_deref(), p.limit + 1)
            .await?,
    )?;
    // Only the builders shown need their latest builds.
    let (shown, last) = view::page(&docs, p.limit);
    let next = last.map(|b| b.id.clone());
    let queries: Vec<BuildQuery> = shown
        .iter()
        .map(|b| BuildQuery {
            master: Some(b.master_id.to_string()),
            builder: Some(b.name.clone()),
            limit: BUILDS_PER_BUILDER,
            ..BuildQuery::default()
        })
        .collect();
    let latest = queries
        .iter()
        .map(|q| store.find_builds(q, view::keep_badge_fields));
    let latest = futures::future::try_join_all(latest).await?;
    let mut rows = Vec::with_capacity(shown.len());
    for (b, builds) in shown.iter().cloned().zip(latest) {
        rows.push((b, typed_all(Collection::Builds, builds)?));
    }
    Ok((view::builders_view(rows, next), p))
}

async fn builders_page(State(store): State<Shared>, RawQuery(q): RawQuery) -> Response {
    let api = api_twin("/builders", q.as_deref());
    html(
        builders(store.as_ref(), q.as_deref())
            .await
            .map(|(v, p)| pages::builders(&v, params::explicit_limit(p.limit), &api)),
    )
}

async fn builders_json(State(store): State<Shared>, RawQuery(q): RawQuery) -> Response {
    json(builders(store.as_ref(), q.as_deref()).await.map(|(v, _)| v))
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        pages::STYLE,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    let e = WebError::NotFound(format!("there is no page {}", uri.path()));
    if uri.path().starts_with("/api") {
        e.json()
    } else {
        e.page()
    }
}

/// Everything here only reads: any method but GET and HEAD gets an answer that says so, in the
/// form of the page or API it was sent to.
async fn wrong_method(method: Method, uri: Uri) -> Response {
    let e = WebError::MethodNotAllowed(format!(
        "{method} is not served here: the pages and their JSON only answer GET and HEAD"
    ));
    let mut response = if uri.path().starts_with("/api") {
        e.json()
    } else {
        e.page()
    };
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
    response
}
