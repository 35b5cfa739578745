//! Error messages cut to a length a reply or a log line can carry. A message often quotes what a
//! sender sent (a bad time, an unknown type, a commit hash), and quoted whole, a value of a
//! megabyte made a megabyte of reply or of log for each line that carried it.

use std::borrow::Cow;

/// Longest message kept whole, in bytes.
const MAX: usize = 1024;
/// What a cut message keeps of its start, which names the field at fault...
const HEAD: usize = 640;
/// ...and of its end, which often says what was expected.
const TAIL: usize = 256;

/// `message`, or its start and end around a note of how many bytes were left out between them.
pub fn clipped(message: &str) -> Cow<'_, str> {
    if message.len() <= MAX {
        return Cow::Borrowed(message);
    }
    let head = floor_boundary(message, HEAD);
    let tail = ceil_boundary(message, message.len() - TAIL);
    Cow::Owned(format!(
        "{} … ({} bytes left out) … {}",
        &message[..head],
        tail - head,
        &message[tail..]
    ))
}

/// The char boundary at or before `i`.
fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The char boundary at or after `i`.
fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::clipped;

    #[test]
    fn a_message_of_ordinary_length_is_kept_whole() {
        let message = format!("field `time`: {:?} is not a time", "x".repeat(900));
        assert!(message.len() <= super::MAX);
        assert_eq!(clipped(&message), message);
    }

    #[test]
    fn a_long_message_keeps_its_start_and_end_and_says_how_much_is_left_out() {
        let value = "x".repeat(900_000);
        let message = format!("field `time`: {value:?}, expected an RFC 3339 time");
        let cut = clipped(&message);
        assert!(cut.len() < 1100, "{} bytes", cut.len());
        assert!(cut.starts_with("field `time`: \"xxx"), "{cut}");
        assert!(cut.ends_with("xxx\", expected an RFC 3339 time"), "{cut}");
        let left_out = message.len() - super::HEAD - super::TAIL;
        assert!(
            cut.contains(&format!(" … ({left_out} bytes left out) … ")),
            "{cut}"
        );
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // Four-byte characters, shifted by 0 to 3 bytes at either end: the cut points fall
        // inside them, and move to the nearest boundary within what is kept.
        for pad in 0..4 {
            for end in 0..4 {
                let message = format!("{}{}{}", "a".repeat(pad), "𝄞".repeat(2000), "b".repeat(end));
                let cut = clipped(&message);
                let (head, rest) = cut.split_once(" … (").expect("a note");
                let (note, tail) = rest.split_once(") … ").expect("a note");
                let whole = |kept: usize, shift: usize| shift + (kept - shift) / 4 * 4;
                assert_eq!(head.len(), whole(super::HEAD, pad), "{pad}, {end}");
                assert_eq!(tail.len(), whole(super::TAIL, end), "{pad}, {end}");
                let left_out = message.len() - head.len() - tail.len();
                assert_eq!(note, format!("{left_out} bytes left out"));
            }
        }
    }
}
