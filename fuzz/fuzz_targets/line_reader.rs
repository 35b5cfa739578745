//! The socket's line reader against a plain model of it, for any input, line limit and read
//! buffer size, read as the daemon reads (the lines whole in the buffer first) and without
//! that: lines split at `\n`, one `\r` before it dropped, a line longer than the limit (counted
//! without that `\r`) reported with its length and skipped, and a last line without `\n` still
//! a line.
#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::BufReader;

// The reader is one file that needs only tokio: compiling it here spares the fuzz build the
// whole daemon and its dependencies.
#[path = "../../reporter/src/lines.rs"]
#[allow(dead_code)]
mod lines;
use lines::{buffered_line, next_line, RawLine};

/// Runs a future that never waits: reading from a byte slice is always ready.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

fn model(input: &[u8], limit: usize) -> Vec<RawLine> {
    let mut parts: Vec<&[u8]> = input.split(|b| *b == b'\n').collect();
    if parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop(); // the input ended with a newline, or was empty
    }
    parts
        .into_iter()
        .map(|p| {
            let p = p.strip_suffix(b"\r").unwrap_or(p);
            if p.len() > limit {
                RawLine::TooLong(p.len())
            } else {
                RawLine::Line(p.to_vec())
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let [limit, buffer, input @ ..] = data else {
        return;
    };
    let limit = usize::from(*limit % 64);
    let buffer = usize::from(*buffer % 16) + 1;
    let mut reader = BufReader::with_capacity(buffer, input);
    let mut got = Vec::new();
    while let Some(line) = ready(next_line(&mut reader, limit)).expect("reading a slice") {
        got.push(line);
    }
    let expected = model(input, limit);
    assert_eq!(got, expected);
    // As the daemon reads: the lines already in the buffer first, the reader for the rest.
    let mut reader = BufReader::with_capacity(buffer, input);
    let mut got = Vec::new();
    loop {
        if let Some(line) = buffered_line(&mut reader, limit) {
            got.push(RawLine::Line(line));
            continue;
        }
        match ready(next_line(&mut reader, limit)).expect("reading a slice") {
            Some(line) => got.push(line),
            None => break,
        }
    }
    assert_eq!(got, expected, "buffered lines first");
});
