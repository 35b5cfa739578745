//! Full logs: `/steps/{step id}/logs/{channel}` streams the whole text, window by window, so a log
//! of any size is served in bounded memory; `/api/steps/...` returns one bounded window as JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use buildstore_schema::{Channel, Collection};

use super::params::{self, LogWindow};
use super::{path_text, PathText, WebError};
use crate::store::Store;

/// Bytes read from the store per window of a streamed log.
const STREAM_WINDOW: usize = 256 * 1024;

/// The step and channel a log path names: `{step id}/logs/{channel}`. Step ids hold slashes, so
/// the channel is found from the end.
fn parse(path: &str) -> Result<(String, Channel), WebError> {
    let (step, channel) = path.rsplit_once("/logs/").ok_or_else(|| {
        WebError::NotFound(format!(
            "{path:?} is not a log path: expected /steps/STEP_ID/logs/stdout|stderr|header"
        ))
    })?;
    let channel = Channel::parse(channel).ok_or_else(|| {
        WebError::NotFound(format!(
            "{channel:?} is not a log channel: expected stdout, stderr or header"
        ))
    })?;
    Ok((step.to_owned(), channel))
}

async fn existing_step(store: &dyn Store, path: &str) -> Result<(String, Channel), WebError> {
    let (step, channel) = parse(path)?;
    if store.get(Collection::Steps, &step).await?.is_none() {
        return Err(WebError::NotFound(format!("there is no step {step:?}")));
    }
    Ok((step, channel))
}

pub async fn full_log(
    State(store): State<Arc<dyn Store>>,
    path: PathText,
    RawQuery(q): RawQuery,
) -> Response {
    let found = async {
        let path = path_text(path)?;
        params::no_params(q.as_deref())?;
        existing_step(store.as_ref(), &path).await
    };
    let (step, channel) = match found.await {
        Ok(found) => found,
        Err(e) => return e.page(),
    };
    // The stream ends at the first empty window: the end of the log as it is while being read.
    let chunks = futures::stream::try_unfold(0u64, move |offset| {
        let store = Arc::clone(&store);
        let step = step.clone();
        async move {
            let bytes = store
                .read_log(&step, channel, offset, STREAM_WINDOW)
                .await?;
            if bytes.is_empty() {
                return Ok::<_, crate::store::StoreError>(None);
            }
            let next = offset + bytes.len() as u64;
            Ok(Some((bytes, next)))
        }
    });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// One window of a log, cut back to a whole UTF-8 character so `text` is exact and the next
/// window starts where this one ended.
#[derive(serde::Serialize)]
struct Window {
    step: String,
    channel: &'static str,
    offset: u64,
    /// Bytes of the whole log.
    length: u64,
    text: String,
    /// Where the next window starts, or null at the end of the log.
    next_offset: Option<u64>,
}

async fn window(store: &dyn Store, path: &str, w: LogWindow) -> Result<Window, WebError> {
    let (step, channel) = existing_step(store, path).await?;
    // Two reads, while a writer may append in between: the length is read after the text and
    // is never less than what the text shows, so a window never reaches past `length`.
    let bytes = store.read_log(&step, channel, w.offset, w.limit).await?;
    let length = store.log_len(&step, channel).await?.unwrap_or(0);
    let (text, used) = utf8_window(bytes);
    let end = w.offset + used as u64;
    // A window at or past the end shows nothing, and says nothing about the log's length.
    let length = if used == 0 { length } else { length.max(end) };
    Ok(Window {
        step,
        channel: channel.as_str(),
        offset: w.offset,
        length,
        next_offset: (end < length).then_some(end),
        text,
    })
}

/// The text of a window and how many of its bytes that text covers. A character cut by the
/// window's end is left to the next window, even when the window starts inside one (after an
/// offset chosen by hand); anything else that is not UTF-8 is shown replaced rather than hidden.
fn utf8_window(bytes: Vec<u8>) -> (String, usize) {
    let end = without_cut_end(&bytes);
    (String::from_utf8_lossy(&bytes[..end]).into_owned(), end)
}

/// How many of `bytes` are left once a character cut by their end is left out; all of them when
/// that would leave none, so that a window too small for its first character still moves on.
fn without_cut_end(bytes: &[u8]) -> usize {
    let n = bytes.len();
    // The last character starts at most three continuation bytes before the end.
    for back in 1..=n.min(4) {
        let b = bytes[n - back];
        if b & 0xC0 != 0x80 {
            let width = match b {
                0xC0..=0xDF => 2,
                0xE0..=0xEF => 3,
                0xF0..=0xF7 => 4,
                _ => 1,
            };
            return if width > back && back < n {
                n - back
            } else {
                n
            };
        }
    }
    n
}

pub async fn log_window(
    State(store): State<Arc<dyn Store>>,
    path: PathText,
    RawQuery(q): RawQuery,
) -> Response {
    let result = async {
        let path = path_text(path)?;
        let w = params::log_params(q.as_deref())?;
        window(store.as_ref(), &path, w).await
    }
    .await;
    match result {
        Ok(w) => Json(w).into_response(),
        Err(e) => e.json(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_path_names_its_step_and_channel_from_the_end() {
        let (step, channel) = parse("m/1/7/logs/x/logs/stderr").unwrap();
        assert_eq!((step.as_str(), channel), ("m/1/7/logs/x", Channel::Stderr));
        assert!(parse("m/1/7/logs/stdin").is_err());
        assert!(parse("m/1/7").is_err());
    }

    #[test]
    fn a_window_never_splits_a_character() {
        let text = "aé€".as_bytes().to_vec(); // 1 + 2 + 3 bytes
        assert_eq!(utf8_window(text[..4].to_vec()), ("aé".to_owned(), 3));
        assert_eq!(utf8_window(text.clone()), ("aé€".to_owned(), 6));
        // A window too small for its first character still moves on.
        assert_eq!(utf8_window(text[1..2].to_vec()).1, 1);
        assert_eq!(
            utf8_window(b"a\xffb".to_vec()),
            ("a\u{fffd}b".to_owned(), 3)
        );
    }

    #[test]
    fn a_window_starting_inside_a_character_still_leaves_the_one_cut_at_its_end() {
        let text = "é€😀".as_bytes().to_vec(); // 2 + 3 + 4 bytes
        let (shown, used) = utf8_window(text[1..7].to_vec());
        assert_eq!((shown.as_str(), used), ("\u{fffd}€", 4));
        // The next window starts at the cut character and shows it whole.
        assert_eq!(utf8_window(text[1 + used..].to_vec()), ("😀".to_owned(), 4));
    }
}
