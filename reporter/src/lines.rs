//! Reading protocol lines with a length limit, from a socket or an ingested file. An overlong
//! line is reported and skipped to its end, and the reading carries on: one bad line never costs
//! the good ones after it (the framing codecs we could use instead end the stream at the first
//! error).

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

/// One line as read.
#[derive(Debug, PartialEq, Eq)]
pub enum RawLine {
    /// The line's bytes, without the newline (and without a `\r` before it).
    Line(Vec<u8>),
    /// The line was longer than the limit; its bytes were skipped.
    TooLong(usize),
}

/// The refusal of a line longer than `limit`, `len` bytes long: the same words from `ingest`
/// and from the socket.
pub fn too_long(len: usize, limit: usize) -> String {
    format!("line of {len} bytes is longer than the line limit of {limit} bytes")
}

/// Reads the next line, or `None` at the end of the stream. A last line without a newline
/// counts as a line.
pub async fn next_line<R: AsyncBufRead + Unpin>(
    input: &mut R,
    limit: usize,
) -> std::io::Result<Option<RawLine>> {
    let mut line = Vec::new();
    let mut skipped = 0usize;
    // Whether the bytes skipped so far end with a `\r`.
    let mut skipped_cr = false;
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            if line.is_empty() && skipped == 0 {
                return Ok(None);
            }
            return Ok(Some(finish(line, skipped, skipped_cr, limit)));
        }
        let (part, found) = match buf.iter().position(|b| *b == b'\n') {
            Some(at) => (&buf[..at], Some(at + 1)),
            None => (buf, None),
        };
        // One byte past the limit is kept for a `\r` that the end of the line drops.
        if skipped == 0 && line.len() + part.len() <= limit.saturating_add(1) {
            line.extend_from_slice(part);
        } else {
            if let Some(&last) = part.last().or(line.last()) {
                skipped_cr = last == b'\r';
            }
            skipped += line.len() + part.len();
            line.clear();
        }
        let used = found.unwrap_or(buf.len());
        input.consume(used);
        if found.is_some() {
            return Ok(Some(finish(line, skipped, skipped_cr, limit)));
        }
    }
}

/// The line read, or how long it was when it is over the limit (a final `\r` not counted).
fn finish(line: Vec<u8>, skipped: usize, skipped_cr: bool, limit: usize) -> RawLine {
    let line = trim_cr(line);
    match skipped {
        0 if line.len() <= limit => RawLine::Line(line),
        0 => RawLine::TooLong(line.len()),
        _ => RawLine::TooLong(skipped - usize::from(skipped_cr)),
    }
}

/// The next line if the reader's buffer holds all of it and it is within the limit: what a
/// client sent in one write is taken line by line without waiting on the socket. `None` when
/// the rest of the line is still to be read (or it is too long): [`next_line`] handles that.
pub fn buffered_line<R: AsyncRead + Unpin>(
    input: &mut BufReader<R>,
    limit: usize,
) -> Option<Vec<u8>> {
    let buf = input.buffer();
    let at = buf.iter().position(|b| *b == b'\n')?;
    let line = &buf[..at];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > limit {
        return None;
    }
    let line = line.to_vec();
    input.consume(at + 1);
    Some(line)
}

fn trim_cr(mut line: Vec<u8>) -> Vec<u8> {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn all(input: &[u8], limit: usize, buffer: usize) -> Vec<RawLine> {
        let mut r = BufReader::with_capacity(buffer, input);
        let mut out = Vec::new();
        while let Some(l) = next_line(&mut r, limit).await.unwrap() {
            out.push(l);
        }
        out
    }

    #[tokio::test]
    async fn lines_split_on_newlines_whatever_the_buffer_size() {
        for buffer in [1, 3, 64] {
            let got = all(b"ab\r\n\ncd\nlast", 10, buffer).await;
            assert_eq!(
                got,
                vec![
                    RawLine::Line(b"ab".to_vec()),
                    RawLine::Line(vec![]),
                    RawLine::Line(b"cd".to_vec()),
                    RawLine::Line(b"last".to_vec())
                ],
                "buffer {buffer}"
            );
        }
    }

    #[tokio::test]
    async fn an_overlong_line_is_skipped_and_the_next_one_read() {
        for buffer in [2, 7, 1024] {
            let got = all(b"ok\n0123456789abcdef\nfine\n0123456789abcdef", 8, buffer).await;
            assert_eq!(
                got,
                vec![
                    RawLine::Line(b"ok".to_vec()),
                    RawLine::TooLong(16),
                    RawLine::Line(b"fine".to_vec()),
                    RawLine::TooLong(16)
                ],
                "buffer {buffer}"
            );
        }
    }

    #[tokio::test]
    async fn only_whole_buffered_lines_within_the_limit_are_taken_without_waiting() {
        let mut r = BufReader::with_capacity(64, &b"ab\r\n0123456789\ncd\npart"[..]);
        // Nothing is buffered before the first read.
        assert_eq!(buffered_line(&mut r, 8), None);
        assert_eq!(
            next_line(&mut r, 8).await.unwrap(),
            Some(RawLine::Line(b"ab".to_vec()))
        );
        // The overlong line is left to `next_line`, which skips it.
        assert_eq!(buffered_line(&mut r, 8), None);
        assert_eq!(
            next_line(&mut r, 8).await.unwrap(),
            Some(RawLine::TooLong(10))
        );
        assert_eq!(buffered_line(&mut r, 8), Some(b"cd".to_vec()));
        // A line without its newline may still grow: it is not taken.
        assert_eq!(buffered_line(&mut r, 8), None);
        assert_eq!(
            next_line(&mut r, 8).await.unwrap(),
            Some(RawLine::Line(b"part".to_vec()))
        );
    }

    #[tokio::test]
    async fn a_line_ending_in_crlf_has_the_same_limit_as_one_ending_in_lf() {
        for buffer in [1, 4, 64] {
            let got = all(b"abcd\r\nabcde\r\nabcd\nabcd\r", 4, buffer).await;
            assert_eq!(
                got,
                vec![
                    RawLine::Line(b"abcd".to_vec()),
                    RawLine::TooLong(5),
                    RawLine::Line(b"abcd".to_vec()),
                    RawLine::Line(b"abcd".to_vec()),
                ],
                "buffer {buffer}"
            );
        }
        let mut r = BufReader::with_capacity(64, &b"x\nabcd\r\nabcde\r\n"[..]);
        assert_eq!(
            next_line(&mut r, 4).await.unwrap(),
            Some(RawLine::Line(b"x".to_vec()))
        );
        assert_eq!(buffered_line(&mut r, 4), Some(b"abcd".to_vec()));
        assert_eq!(
            buffered_line(&mut r, 4),
            None,
            "over the limit: left to next_line"
        );
    }

    #[tokio::test]
    async fn bytes_that_are_not_utf8_are_passed_on_for_the_parser_to_reject() {
        assert_eq!(
            all(b"\xff\xfe\n", 8, 8).await,
            vec![RawLine::Line(vec![0xff, 0xfe])]
        );
    }
}
