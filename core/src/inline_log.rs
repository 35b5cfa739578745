//! The inline copy of a step's log that lives in the step document.
//!
//! The store keeps every byte of a log; the document keeps at most `limit` bytes of it per channel
//! so that reading a build stays instant. Past the limit the field keeps the head (how it started)
//! and the tail (how it ended), with a marker saying how much is left out.

use super::mutation::InlineUpdate;

/// How the marker between the head and the tail of a cut inline field ends: what follows it is
/// the end of the log.
pub const MARKER_END: &str = " bytes truncated by buildstore ...]\n";

/// Room kept for the marker: "\n[... N bytes truncated by buildstore ...]\n" with N up to 20 digits.
const MARKER_RESERVE: usize = 64;

/// The smallest inline limit that leaves room for a head, a tail and the marker.
pub const MIN_INLINE_LIMIT: usize = 256;

/// What the core remembers of one channel of one step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct InlineLog {
    /// Bytes in the full log.
    len: u64,
    /// The whole log while it fits the limit; the head once it does not.
    head: String,
    /// The last bytes of the log once it outgrew the limit; empty before.
    tail: String,
    truncated: bool,
}

impl InlineLog {
    /// Rebuilds the state from what a store holds: the log's length, its first and last
    /// `min(len, limit)` bytes (cut anywhere; partial characters at the cuts are dropped), and
    /// whether the stored inline field still holds the whole log (then `head` is all of it).
    ///
    /// The stored field decides the mode, not the current limit, which may differ from the
    /// limit the field was written with. A whole field over a lowered limit stays whole until
    /// the next chunk, which spills all of it (a store that keeps full logs only past the limit
    /// has it nowhere else). A cut field stays cut under a raised limit: appending to it as if
    /// it were whole would paste new text after the marker.
    pub fn restore(len: u64, head: &[u8], tail: &[u8], limit: usize, whole: bool) -> InlineLog {
        if whole {
            return InlineLog {
                len,
                head: valid_prefix(head).to_owned(),
                ..InlineLog::default()
            };
        }
        // Head and tail leave out more than the marker's length, so a cut field is always
        // shorter than its log and is never taken for a whole one. Only under a raised limit
        // does this keep them below half the limit.
        let keep = half(limit).min(
            usize::try_from(len.saturating_sub(MARKER_RESERVE as u64) / 2).unwrap_or(usize::MAX),
        );
        InlineLog {
            len,
            head: prefix(valid_prefix(head), keep).to_owned(),
            tail: suffix(valid_suffix(tail), keep).to_owned(),
            truncated: true,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `text` and says how the inline field changes.
    pub fn append(&mut self, text: &str, limit: usize) -> InlineUpdate {
        self.len += text.len() as u64;
        if !self.truncated {
            if self.head.len() + text.len() <= limit {
                self.head.push_str(text);
                return InlineUpdate::Append;
            }
            let earlier = std::mem::take(&mut self.head);
            let mut full = earlier.clone();
            full.push_str(text);
            let half = half(limit);
            self.head = prefix(&full, half).to_owned();
            self.tail = suffix(&full, half).to_owned();
            self.truncated = true;
            return InlineUpdate::Spill {
                value: self.inline(),
                earlier,
            };
        }
        let half = half(limit);
        if text.len() >= half {
            self.tail = suffix(text, half).to_owned();
        } else {
            self.tail.push_str(text);
            let keep = suffix(&self.tail, half).len();
            self.tail.drain(..self.tail.len() - keep);
        }
        InlineUpdate::Replace(self.inline())
    }

    /// The value of the inline field.
    pub fn inline(&self) -> String {
        if !self.truncated {
            return self.head.clone();
        }
        let omitted = self.len - self.head.len() as u64 - self.tail.len() as u64;
        format!("{}\n[... {omitted}{MARKER_END}{}", self.head, self.tail)
    }
}

fn half(limit: usize) -> usize {
    limit.saturating_sub(MARKER_RESERVE) / 2
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The longest suffix of `s` of at most `max` bytes that starts on a character boundary.
fn suffix(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

fn valid_prefix(bytes: &[u8]) -> &str {
    match std::str::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    }
}

fn valid_suffix(bytes: &[u8]) -> &str {
    // A cut inside a character leaves at most three continuation bytes in front.
    (0..4.min(bytes.len() + 1))
        .find_map(|skip| std::str::from_utf8(&bytes[skip..]).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMIT: usize = 256;

    #[test]
    fn small_logs_are_appended_inline_as_they_come() {
        let mut log = InlineLog::default();
        assert_eq!(log.append("hello ", LIMIT), InlineUpdate::Append);
        assert_eq!(log.append("world", LIMIT), InlineUpdate::Append);
        assert_eq!(log.inline(), "hello world");
        assert_eq!(log.len(), 11);
    }

    #[test]
    fn past_the_limit_the_field_keeps_head_marker_and_tail_within_the_limit() {
        let mut log = InlineLog::default();
        let mut full = String::new();
        let mut last = InlineUpdate::Append;
        for i in 0..100 {
            let line = format!("line {i:03}\n");
            full.push_str(&line);
            last = log.append(&line, LIMIT);
        }
        let InlineUpdate::Replace(inline) = last else {
            panic!("expected a replace")
        };
        assert!(inline.len() <= LIMIT, "{} bytes", inline.len());
        assert!(inline.starts_with("line 000\nline 001\n"));
        assert!(inline.ends_with("line 098\nline 099\n"));
        let head = &full[..half(LIMIT)];
        let tail = &full[full.len() - half(LIMIT)..];
        let omitted = full.len() - head.len() - tail.len();
        assert_eq!(inline, format!("{head}\n[... {omitted}{MARKER_END}{tail}"));
    }

    #[test]
    fn one_huge_chunk_is_cut_the_same_way() {
        let mut log = InlineLog::default();
        let text = "x".repeat(10 * LIMIT);
        let InlineUpdate::Spill {
            value: inline,
            earlier,
        } = log.append(&text, LIMIT)
        else {
            panic!()
        };
        assert!(inline.len() <= LIMIT);
        assert!(inline.contains(&format!(
            "[... {} bytes truncated",
            10 * LIMIT - 2 * half(LIMIT)
        )));
        assert_eq!(earlier, "", "nothing came before the chunk");
    }

    #[test]
    fn the_chunk_that_crosses_the_limit_hands_over_what_came_before() {
        let mut log = InlineLog::default();
        assert_eq!(log.append("abc", LIMIT), InlineUpdate::Append);
        let update = log.append(&"d".repeat(LIMIT), LIMIT);
        assert!(
            matches!(&update, InlineUpdate::Spill { earlier, .. } if earlier == "abc"),
            "{update:?}"
        );
        assert!(matches!(log.append("e", LIMIT), InlineUpdate::Replace(_)));
    }

    #[test]
    fn cuts_never_split_a_character() {
        let mut log = InlineLog::default();
        for _ in 0..200 {
            log.append("é€😀", LIMIT);
        }
        let inline = log.inline();
        assert!(inline.len() <= LIMIT);
        assert!(inline.starts_with('é') && inline.ends_with('😀'));
    }

    #[test]
    fn restoring_from_a_store_gives_the_same_inline_value_and_future() {
        let mut live = InlineLog::default();
        let mut full = String::new();
        for i in 0..60 {
            let chunk = format!("{i}: ünïcödé output\n");
            full.push_str(&chunk);
            live.append(&chunk, LIMIT);
        }
        let mut restored = restore_cut(&full, LIMIT, LIMIT);
        assert_eq!(restored.inline(), live.inline());
        assert_eq!(
            restored.append("more\n", LIMIT),
            live.append("more\n", LIMIT)
        );

        let small = InlineLog::restore(5, b"hello", b"hello", LIMIT, true);
        assert_eq!(small.inline(), "hello");
    }

    /// A log whose stored field is cut, restored under `limit` from what a store hands back: its
    /// first and last `window` bytes.
    fn restore_cut(full: &str, window: usize, limit: usize) -> InlineLog {
        let bytes = full.as_bytes();
        let n = window.min(bytes.len());
        let (head, tail) = (&bytes[..n], &bytes[bytes.len() - n..]);
        InlineLog::restore(bytes.len() as u64, head, tail, limit, false)
    }

    /// The parts of a cut inline value, checked against the full log it stands for.
    fn assert_cut_from(inline: &str, full: &str, limit: usize) {
        let (head, rest) = inline.split_once("\n[... ").expect("a marker");
        let (omitted, tail) = rest
            .split_once(" bytes truncated by buildstore ...]\n")
            .expect("a marker");
        assert!(inline.len() <= limit, "{} bytes", inline.len());
        assert!(full.starts_with(head) && full.ends_with(tail), "{inline:?}");
        let omitted: usize = omitted.parse().expect("a count");
        assert_eq!(omitted, full.len() - head.len() - tail.len());
        assert!(inline.len() < full.len(), "a cut value never looks whole");
    }

    #[test]
    fn a_whole_field_restored_under_a_lowered_limit_spills_all_of_it_with_the_next_chunk() {
        let full = "0123456789".repeat(100); // kept whole under a limit of 4096
        let mut log = InlineLog::restore(1000, full.as_bytes(), full.as_bytes(), LIMIT, true);
        assert_eq!(log.inline(), full, "untouched until something is appended");
        let InlineUpdate::Spill { value, earlier } = log.append("more", LIMIT) else {
            panic!("expected a spill")
        };
        assert_eq!(
            earlier, full,
            "the text held only inline goes to the full log"
        );
        assert_cut_from(&value, &(full + "more"), LIMIT);
    }

    #[test]
    fn a_cut_field_restored_under_a_raised_limit_stays_cut() {
        // A log cut under the smallest limit, carried on under a limit that would fit it whole:
        // the stored field has a marker, so an `Append` would paste text after it.
        let mut full: String = (0..40).map(|i| format!("line {i:02}\n")).collect();
        let mut log = restore_cut(&full, LIMIT, 4096);
        for chunk in ["next\n", "and more\n"] {
            full.push_str(chunk);
            let InlineUpdate::Replace(value) = log.append(chunk, 4096) else {
                panic!("expected a replace")
            };
            assert_cut_from(&value, &full, 4096);
        }
        // So short a log keeps less than half the limit at each end, never the same bytes twice.
        let short = InlineLog::restore(300, &[b'x'; 300], &[b'x'; 300], 4096, false);
        assert_cut_from(&short.inline(), &"x".repeat(300), 4096);
    }
}
