//! The web view: server-rendered pages of builds, steps, logs, changesets and builders, each with a
//! JSON twin under `/api`. It only reads, through the [`Store`] trait, so it works on every store;
//! `buildstore web` serves it alone and `buildstore serve --web` beside the socket feed.
//!
//! - [`params`]: query parameters, parsed strictly (a bad one is a 400 that names it).
//! - [`view`]: documents → what a page shows (pure).
//! - `pages`: the view as HTML; `routes`: the HTTP shell that reads the store.
//! - `log_tail`: how much of each log a build page carries.
//! - `logs`: full logs, streamed.

mod log_tail;
mod logs;
mod pages;
pub mod params;
mod routes;
pub mod view;

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::store::{Store, StoreError};

pub use routes::router;

/// Why a page could not be shown.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("the store could not be read: {0}")]
    Store(#[from] StoreError),
}

impl From<params::ParamError> for WebError {
    fn from(e: params::ParamError) -> WebError {
        WebError::BadRequest(e.0)
    }
}

/// The rest of a path as text: a path that does not decode to UTF-8 names nothing, which is the
/// client's mistake (400) and gets the pages' own error rather than the router's.
type PathText = Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>;

fn path_text(path: PathText) -> Result<String, WebError> {
    path.map(|axum::extract::Path(p)| p)
        .map_err(|e| WebError::BadRequest(format!("the path is not understood: {e}")))
}

impl WebError {
    /// The status of the answer; a store error is also logged, since it is the server's trouble.
    fn status(&self) -> StatusCode {
        if let WebError::Store(e) = self {
            tracing::warn!(error = %e, "request failed");
        }
        match self {
            WebError::BadRequest(_) => StatusCode::BAD_REQUEST,
            WebError::NotFound(_) => StatusCode::NOT_FOUND,
            WebError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            // A store that is down is the server's trouble, and may pass: say so, and not "bug".
            WebError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The error as an HTML page.
    pub fn page(&self) -> Response {
        let status = self.status();
        let body = pages::error(status.as_u16(), &self.to_string());
        (status, body).into_response()
    }

    /// The error as the JSON twins give it: `{"error": "..."}`.
    pub fn json(&self) -> Response {
        let body = serde_json::json!({ "error": self.to_string() });
        (self.status(), axum::Json(body)).into_response()
    }
}

/// Headers that keep a page inert even if some text slipped through unescaped: no scripts, no
/// content sniffing, no framing. The pages need none of those, nor the JSON twins, whose strings
/// come from the events: a browser that sniffed one as HTML would run them. Style attributes are
/// allowed: the step bars are placed with them, and only the pages themselves write them.
async fn with_safety_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; style-src-attr 'unsafe-inline'; img-src 'self'; form-action 'self'; frame-ancestors 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Serves the pages on `listener` until `stop` turns true, then lets the requests under way finish
/// for a few seconds and drops the rest.
pub async fn serve(listener: TcpListener, store: Arc<dyn Store>, stop: watch::Receiver<bool>) {
    crate::http::serve(
        listener,
        router(store),
        crate::http::Limits::default(),
        stop,
        "web pages",
    )
    .await;
}
