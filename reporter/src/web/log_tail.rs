//! How much of its logs a build page carries. A step document keeps up to the inline limit of each
//! log (1 MiB by default), and a build may have a thousand steps, so a page that carried every
//! inline log whole could run to gigabytes. It carries the end of each log instead, where a
//! failing step says why, within a budget for the whole page that the failed steps draw on
//! first; the full log is a link away.

use bson::Document;
use buildstore_schema::Channel;

use super::view::StepView;

/// Most bytes of the end of one log a build page carries.
pub const TAIL_BYTES: usize = 4 * 1024;
/// Most bytes of log ends a build page carries in all.
pub const PAGE_TAIL_BYTES: usize = 256 * 1024;

/// What a build page shows of a log whose inline field is `field` and whose full length is
/// `full_len`: at most [`TAIL_BYTES`] of the end of the log.
pub fn page_tail(field: &str, full_len: u64) -> &str {
    let end = if buildstore_schema::StepDoc::holds_whole(field, full_len) {
        field
    } else {
        after_marker(field)
    };
    tail(end, TAIL_BYTES)
}

/// Cuts each inline log of a step document, as the store reads it, to what a build page shows of
/// it ([`page_tail`]): a page of a thousand steps then holds kilobytes of each, not the megabytes
/// each document may hold. A field that is missing or of another type is left for the reading
/// of the document to report.
pub fn keep_page_tails(doc: &mut Document) {
    for c in Channel::ALL {
        let full = crate::store::raw_log_len(doc, c);
        if let Ok(text) = doc.get_str(c.field()) {
            let kept = page_tail(text, full).to_owned();
            doc.insert(c.field(), kept);
        }
    }
}

/// The end of a log whose inline field `cut` does not hold it whole. A cut field is its head, a
/// marker and its tail: only what follows the marker is the end of the log. The last marker is
/// taken: one that the log's own text holds can only come later, and what follows it is still
/// the end of the log. The tail was cut at any byte, so it starts at its first whole line when
/// it has one.
pub fn after_marker(cut: &str) -> &str {
    let Some(i) = cut.rfind(crate::core::MARKER_END) else {
        return cut;
    };
    let end = &cut[i + crate::core::MARKER_END.len()..];
    match end.find('\n') {
        Some(i) if i + 1 < end.len() => &end[i + 1..],
        _ => end,
    }
}

/// The end of `text`: at most `max` bytes, from the start of a line when one begins within
/// them, and never from inside a character.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    if text.as_bytes()[start - 1] == b'\n' {
        return &text[start..];
    }
    let window = &text[start..];
    match window.find('\n') {
        Some(i) if i + 1 < window.len() => &window[i + 1..],
        _ => window,
    }
}

/// Empties the tails that do not fit the page's budget: the failed steps' tails are kept first,
/// then the others in step order.
pub fn fit_page(steps: &mut [StepView]) {
    let mut left = PAGE_TAIL_BYTES;
    let (failed, others): (Vec<&mut StepView>, Vec<&mut StepView>) =
        steps.iter_mut().partition(|s| s.failed);
    for step in failed.into_iter().chain(others) {
        for log in &mut step.logs {
            if log.tail.len() <= left {
                left -= log.tail.len();
            } else {
                log.tail.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A step document as read for a build page keeps only what the page shows of each log,
    /// whatever the log's size: the end of a whole one, what follows the marker of a cut one.
    #[test]
    fn a_step_read_for_a_page_keeps_the_end_of_each_log_only() {
        let whole = "x".repeat(99) + "\n";
        let whole = whole.repeat(10_000) + "error: it broke\n";
        let cut = format!(
            "head\n{}\n[... 9000 bytes truncated by buildstore ...]\nrest\ntail end\n",
            "y".repeat(5000)
        );
        let mut doc = bson::doc! {
            "stdout": whole.clone(),
            "stderr": cut.clone(),
            "headers": "",
            "log_bytes": {"stdout": whole.len() as i64, "stderr": 20_000_i64, "headers": 0_i64},
        };
        keep_page_tails(&mut doc);
        let out = doc.get_str("stdout").unwrap();
        assert!(out.len() <= TAIL_BYTES && out.ends_with("error: it broke\n"));
        assert_eq!(out, tail(&whole, TAIL_BYTES));
        assert_eq!(doc.get_str("stderr").unwrap(), "tail end\n");
        assert_eq!(doc.get_str("headers").unwrap(), "");
        assert_eq!(
            doc.get_document("log_bytes").unwrap().get_i64("stderr"),
            Ok(20_000)
        );
    }

    #[test]
    fn a_short_log_is_its_own_tail() {
        assert_eq!(tail("make: ok\n", 100), "make: ok\n");
    }

    #[test]
    fn a_tail_starts_at_a_line_when_one_begins_within_it() {
        let text = "first line\nsecond line\nerror: it broke\n";
        assert_eq!(tail(text, 20), "error: it broke\n");
        // The window begins right after a line break: that whole line is kept.
        assert_eq!(tail(text, 28), "second line\nerror: it broke\n");
    }

    #[test]
    fn the_end_of_a_cut_log_is_what_follows_its_marker() {
        let cut = "first\n\n[... 900 bytes truncated by buildstore ...]\nput 17\nlast\n";
        assert_eq!(after_marker(cut), "last\n", "from its first whole line");
        let one_line = "first\n\n[... 900 bytes truncated by buildstore ...]\nrt of the last\n";
        assert_eq!(
            after_marker(one_line),
            "rt of the last\n",
            "a part rather than nothing"
        );
        assert_eq!(after_marker("no marker\n"), "no marker\n");
        // A log that quotes the marker: the end is still a suffix of the log.
        let quoting = "a\n[... 5 bytes truncated by buildstore ...]\nb 1 bytes truncated by buildstore ...]\nc\n";
        assert_eq!(after_marker(quoting), "c\n");
    }

    #[test]
    fn a_tail_without_a_line_start_is_cut_at_a_character() {
        let text = "ééééé"; // 10 bytes, no line break
        assert_eq!(tail(text, 5), "éé");
        assert_eq!(tail("x\né€", 4), "€");
    }
}
