//! `ingest`: a stream of JSON lines through the applier. Lines are read and parsed on a task of
//! their own, in chunks, while the store writes the chunk folded before; a bad line, a pause of
//! the input or a stop ends a chunk.

use buildstore_schema::Event;
use tokio::io::AsyncBufRead;

use super::{Applier, Outcome, Prepared};
use crate::lines::{next_line, too_long, RawLine};
use crate::store::{Apply, StoreError};

/// Options of [`ingest`].
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Carry on after a bad line instead of stopping there.
    pub keep_going: bool,
    /// Most events per batch.
    pub chunk_events: usize,
    /// Most bytes of event text per batch.
    pub chunk_bytes: usize,
    /// Longest line taken: a longer one is a bad line, read to its end and not kept (a file
    /// with no newline, such as /dev/zero by mistake, took all the memory there was).
    pub line_limit: usize,
    /// Once this turns true (a signal), reading stops at the end of the last whole line: what
    /// was read is applied, and the run ends (see [`IngestReport::interrupted_after`]). Lines
    /// taken from a pipe would otherwise be lost with the process.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            keep_going: false,
            chunk_events: 1000,
            chunk_bytes: 16 << 20,
            line_limit: 16 << 20,
            stop: None,
        }
    }
}

/// A rejected input line.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: u64,
    pub message: String,
}

impl LineError {
    /// The error of line `line`, its message cut short if a value it quotes is long.
    fn new(line: u64, message: &str) -> LineError {
        LineError {
            line,
            message: crate::clip::clipped(message).into_owned(),
        }
    }
}

/// What an ingest run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub applied: u64,
    pub duplicates: u64,
    pub rejected: u64,
    /// True when a bad line stopped the run (without `keep_going`).
    pub stopped_early: bool,
    /// Set when [`IngestOptions::stop`] ended the run: the number of lines read whole, which
    /// were applied (or reported); nothing after them was. Not set when a bad line ended the
    /// run first ([`IngestReport::stopped_early`]).
    pub interrupted_after: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("reading events: {0}")]
    Read(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
}

const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";

/// A parsed line, or why it is not an event.
enum Line {
    Event(u64, Box<Event>),
    Bad(LineError),
}

/// Lines handed from the reader to the ingest loop.
struct Chunk {
    lines: Vec<Line>,
    /// The input paused after them.
    paused: bool,
    /// The stop came: the last chunk, after this many lines read whole.
    stopped_after: Option<u64>,
}

impl Chunk {
    /// The lines read so far, which leave `lines` empty for the next chunk.
    fn take(lines: &mut Vec<Line>, paused: bool) -> Chunk {
        Chunk {
            lines: std::mem::take(lines),
            paused,
            stopped_after: None,
        }
    }
}

/// How long input may be silent before what came so far is applied.
const PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

/// Reads and parses lines into chunks of at most `chunk_events` events or `chunk_bytes` bytes; a
/// bad line ends its chunk, and so does a pause of the input, which the chunk says (`true`; an
/// empty chunk says a pause after a chunk that went out whole).
/// Runs as its own task so that parsing overlaps the store's writes.
async fn read_chunks<R: AsyncBufRead + Unpin>(
    mut input: R,
    options: IngestOptions,
    out: tokio::sync::mpsc::Sender<std::io::Result<Chunk>>,
) {
    let mut stop = options.stop.clone();
    let chunk_events = options.chunk_events.max(1);
    let mut chunk = Vec::new();
    let mut bytes = 0usize;
    let mut number = 0u64;
    // A chunk went out whole (full, or ended by a bad line) with no pause after it: the
    // ingest loop folds it and waits for the next one, so a pause must still be told.
    let mut untold = false;
    loop {
        // Input that pauses, such as a pipe from a live master, has what came so far applied
        // before the wait, not once a chunk fills: the documents follow the master, and a run
        // interrupted during a pause has applied all it read, which a rerun could not read
        // again from a pipe. A pause in the middle of a line counts too.
        // A stop is looked at before each line (input that never pauses never makes a read
        // wait) and while a read waits, never while a chunk is handed over, which would drop it
        // halfway. A line half read when the stop comes is not taken.
        let stopped = stop.as_ref().is_some_and(|s| *s.borrow());
        let read = next_line(&mut input, options.line_limit);
        tokio::pin!(read);
        // A line already buffered needs no timer. A reader that only refills its buffer (a
        // file, read on a blocking thread) answers within moments: only input still silent
        // after `PAUSE` is a pause, or a file would be cut into a chunk at every refill.
        let read = if stopped {
            None
        } else {
            match futures::poll!(read.as_mut()) {
                std::task::Poll::Ready(read) => Some(read),
                std::task::Poll::Pending => {
                    match until_stopped(&mut stop, tokio::time::timeout(PAUSE, read.as_mut())).await
                    {
                        Some(Ok(read)) => Some(read),
                        Some(Err(_)) => {
                            if !chunk.is_empty() || untold {
                                bytes = 0;
                                untold = false;
                                if out.send(Ok(Chunk::take(&mut chunk, true))).await.is_err() {
                                    return;
                                }
                            }
                            until_stopped(&mut stop, read.as_mut()).await
                        }
                        None => None,
                    }
                }
            }
        };
        let Some(read) = read else {
            let last = Chunk {
                lines: chunk,
                paused: false,
                stopped_after: Some(number),
            };
            let _ = out.send(Ok(last)).await;
            return;
        };
        let raw = match read {
            Ok(raw) => raw,
            Err(e) => {
                let _ = out.send(Err(e)).await;
                return;
            }
        };
        let eof = raw.is_none();
        let mut close = eof;
        if let Some(raw) = raw {
            number += 1;
            let parsed = match &raw {
                RawLine::Line(buf) => {
                    // Editors on some systems start a text file with a UTF-8 byte-order mark.
                    let line = match buf.strip_prefix(UTF8_BOM) {
                        Some(rest) if number == 1 => rest,
                        _ => &buf[..],
                    };
                    bytes += buf.len() + 1;
                    parse_line(line)
                }
                RawLine::TooLong(len) => Err(too_long(*len, options.line_limit)),
            };
            match parsed {
                Ok(None) => {}
                Ok(Some(event)) => chunk.push(Line::Event(number, Box::new(event))),
                Err(message) => {
                    chunk.push(Line::Bad(LineError::new(number, &message)));
                    close = true;
                }
            }
        }
        if (close || chunk.len() >= chunk_events || bytes >= options.chunk_bytes)
            && !chunk.is_empty()
        {
            bytes = 0;
            untold = true;
            if out.send(Ok(Chunk::take(&mut chunk, false))).await.is_err() {
                return; // the consumer stopped early
            }
        }
        if eof {
            return;
        }
    }
}

/// `work`'s output, or None if `stop` turns true first.
async fn until_stopped<F: std::future::Future>(
    stop: &mut Option<tokio::sync::watch::Receiver<bool>>,
    work: F,
) -> Option<F::Output> {
    let Some(stop) = stop else {
        return Some(work.await);
    };
    tokio::select! {
        biased;
        Ok(_) = stop.wait_for(|stopped| *stopped) => None,
        done = work => Some(done),
    }
}

/// Applies a JSONL event stream. Bad lines are reported through `on_error` with their line
/// number; the lines before a bad one stay applied. The store writes each chunk while the next
/// one is folded.
pub async fn ingest<R: AsyncBufRead + Unpin + Send + 'static>(
    store: &dyn Apply,
    applier: &mut Applier,
    input: R,
    options: &IngestOptions,
    on_error: &mut (dyn FnMut(&LineError) + Send),
) -> Result<IngestReport, IngestError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(2);
    let reader = tokio::spawn(read_chunks(input, options.clone(), tx));
    let mut report = IngestReport::default();
    let keep_going = options.keep_going;
    let result = async {
        // The chunk folded last: the store writes it while the next one is folded.
        let mut folded: Option<Folded> = None;
        // The input paused after the chunk folded last: that one is written now, with nothing
        // folded beside it, rather than once more input comes.
        let mut paused = false;
        // Where a stop ended the input: said in the report only if the run ends there, not at a
        // bad line of the same chunk.
        let mut stopped_after = None;
        loop {
            // A read error ends the run too, but only once what was read before is written.
            // Nor is more input waited for after a chunk that ends the run.
            let ends = folded.as_ref().is_some_and(|f| f.ends_run(keep_going));
            let (mut next, unreadable) = if std::mem::take(&mut paused) || ends {
                (Some(Folded::split(Vec::new())), None)
            } else {
                match rx.recv().await {
                    Some(Ok(chunk)) => {
                        paused = chunk.paused;
                        if chunk.stopped_after.is_some() {
                            stopped_after = chunk.stopped_after;
                        }
                        (Some(Folded::split(chunk.lines)), None)
                    }
                    Some(Err(e)) => (None, Some(e)),
                    None => (None, None),
                }
            };
            let fold_next = next.as_ref().is_some_and(|n| !n.events.is_empty()) && !ends;
            let write = async {
                match folded.as_mut().and_then(|f| f.prepared.as_mut()) {
                    Some(p) => store.apply(std::mem::take(&mut p.batch).into()).await,
                    None => Ok(()),
                }
            };
            let prepare = async {
                match &mut next {
                    Some(n) if fold_next => {
                        Some(applier.prepare(store, &n.events, !keep_going).await)
                    }
                    _ => None,
                }
            };
            let (written, prepared) = tokio::join!(write, prepare);
            if let Err(e) = written {
                applier.forget();
                return Err(e.into());
            }
            let prepared = prepared.transpose();
            if let Some(mut f) = folded.take() {
                let next = prepared.as_ref().ok().and_then(Option::as_ref);
                let outcomes = f
                    .prepared
                    .take()
                    .map(|p| applier.confirmed(p, next))
                    .unwrap_or_default();
                if !f.report(outcomes, &mut report, keep_going, on_error) {
                    report.stopped_early = true;
                    return Ok(());
                }
            }
            if let Some(e) = unreadable {
                return Err(e.into());
            }
            let Some(mut n) = next else {
                report.interrupted_after = stopped_after;
                return Ok(());
            };
            n.prepared = prepared?;
            folded = Some(n);
        }
    }
    .await;
    // The reader may be waiting for input that comes much later, or never (a live pipe after
    // a bad line): it is not waited for.
    drop(rx);
    reader.abort();
    let _ = reader.await;
    result.map(|()| report)
}

/// A chunk of input: its events (folded into a batch once `prepared`), their line numbers, and
/// the bad line that ended it, if one did.
struct Folded {
    events: Vec<Event>,
    lines: Vec<u64>,
    bad: Option<LineError>,
    prepared: Option<Prepared>,
}

impl Folded {
    fn split(chunk: Vec<Line>) -> Folded {
        let mut f = Folded {
            events: Vec::with_capacity(chunk.len()),
            lines: Vec::with_capacity(chunk.len()),
            bad: None,
            prepared: None,
        };
        for item in chunk {
            match item {
                Line::Event(n, e) => {
                    f.lines.push(n);
                    f.events.push(*e);
                }
                Line::Bad(e) => f.bad = Some(e),
            }
        }
        f
    }

    /// Whether the run stops after this chunk: it holds a bad line or a rejected event.
    fn ends_run(&self, keep_going: bool) -> bool {
        let rejected = self
            .prepared
            .as_ref()
            .is_some_and(|p| p.outcomes.iter().any(|o| matches!(o, Outcome::Rejected(_))));
        !keep_going && (self.bad.is_some() || rejected)
    }

    /// Counts the chunk's `outcomes` (the store has it) and reports its errors; false when the
    /// run stops here.
    fn report(
        self,
        outcomes: Vec<Outcome>,
        report: &mut IngestReport,
        keep_going: bool,
        on_error: &mut (dyn FnMut(&LineError) + Send),
    ) -> bool {
        for (outcome, line) in outcomes.into_iter().zip(&self.lines) {
            match outcome {
                Outcome::Applied => report.applied += 1,
                Outcome::Duplicate => report.duplicates += 1,
                Outcome::Rejected(e) => {
                    report.rejected += 1;
                    on_error(&LineError::new(*line, &e.to_string()));
                    if !keep_going {
                        return false;
                    }
                }
            }
        }
        if let Some(e) = self.bad {
            report.rejected += 1;
            on_error(&e);
            if !keep_going {
                return false;
            }
        }
        true
    }
}

/// One line of input: `None` for a blank line.
fn parse_line(raw: &[u8]) -> Result<Option<Event>, String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("not valid UTF-8 ({e})"))?;
    let text = buildstore_schema::json_line::trim(text);
    if text.is_empty() {
        return Ok(None);
    }
    Event::parse(text).map(Some).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use buildstore_schema::Collection;

    use super::*;
    use crate::core::{Core, CoreConfig};
    use crate::store::{open_in, Store};

    /// `n` lines, each adding a builder of its own.
    fn builder_lines(n: usize) -> String {
        (0..n)
            .map(|i| {
                format!(r#"{{"type":"builder_added","master_id":"m","builder":"b{i}"}}"#) + "\n"
            })
            .collect()
    }

    /// Options whose stop is the returned sender's, set from the start to `stopped`.
    fn stoppable(stopped: bool) -> (tokio::sync::watch::Sender<bool>, IngestOptions) {
        let (stop, receiver) = tokio::sync::watch::channel(stopped);
        let options = IngestOptions {
            stop: Some(receiver),
            ..IngestOptions::default()
        };
        (stop, options)
    }

    /// Ingests `input` from a pipe left open, stopped 100 ms in: the report and the bad lines.
    async fn stopped_while_open(input: &[u8]) -> (IngestReport, Vec<LineError>) {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(dir.path(), "s.db").await;
        let (mut writer, reader) = tokio::io::duplex(1 << 16);
        writer.write_all(input).await.unwrap();
        let (stop, options) = stoppable(false);
        let mut applier = Applier::new(Core::new(CoreConfig::default()));
        let mut errors = Vec::new();
        let mut on_error = |e: &LineError| errors.push(e.clone());
        let run = ingest(
            &store,
            &mut applier,
            tokio::io::BufReader::new(reader),
            &options,
            &mut on_error,
        );
        let stopping = async {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            stop.send(true).unwrap();
        };
        let both = async { tokio::join!(run, stopping) };
        let (report, ()) = tokio::time::timeout(std::time::Duration::from_secs(10), both)
            .await
            .expect("the stop ends a run whose input is still open");
        drop(writer);
        (report.unwrap(), errors)
    }

    /// A stop ends the run at the last whole line of an input that is still open: the whole
    /// lines are applied, the half line after them is neither applied nor reported as bad.
    #[tokio::test]
    async fn a_stop_applies_the_whole_lines_read_and_leaves_a_half_line() {
        let input = builder_lines(3) + r#"{"type":"builder_added","mas"#;
        let (report, errors) = stopped_while_open(input.as_bytes()).await;
        assert_eq!(report.interrupted_after, Some(3));
        assert_eq!((report.applied, report.rejected), (3, 0));
        assert!(errors.is_empty(), "{errors:?}");
    }

    /// Input that sets a stop at its read number `at` (from 0), and is always ready.
    struct StopOnRead {
        input: std::io::Cursor<Vec<u8>>,
        stop: Option<tokio::sync::watch::Sender<bool>>,
        at: usize,
    }

    impl StopOnRead {
        fn new(input: String, stop: tokio::sync::watch::Sender<bool>, at: usize) -> StopOnRead {
            let input = std::io::Cursor::new(input.into_bytes());
            let stop = Some(stop);
            StopOnRead { input, stop, at }
        }
    }

    impl tokio::io::AsyncRead for StopOnRead {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            if self.at == 0 {
                if let Some(stop) = self.stop.take() {
                    let _ = stop.send(true);
                }
            }
            self.at = self.at.saturating_sub(1);
            std::pin::Pin::new(&mut self.input).poll_read(cx, buf)
        }
    }

    /// Ingests `input`, read 4 KiB at a time, into a new store, with a stop set at read `at`:
    /// the report, and the store.
    async fn ingest_stopped_at_read(
        dir: &std::path::Path,
        input: String,
        at: usize,
    ) -> (IngestReport, crate::store::SqliteStore) {
        let store = open_in(dir, "s.db").await;
        let (stop, options) = stoppable(false);
        let reader = StopOnRead::new(input, stop, at);
        let mut applier = Applier::new(Core::new(CoreConfig::default()));
        let report = ingest(
            &store,
            &mut applier,
            tokio::io::BufReader::with_capacity(4096, reader),
            &options,
            &mut |_: &LineError| {},
        )
        .await
        .unwrap();
        (report, store)
    }

    /// A stop that comes while lines keep coming, none of them ever waited for: the run ends
    /// soon after, at a whole line, and what it says it applied is what the store holds.
    #[tokio::test]
    async fn a_stop_midway_through_input_that_is_always_ready_ends_the_run_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        // About 70 lines a read: the stop comes in the fifth read, around line 285.
        let (report, store) = ingest_stopped_at_read(dir.path(), builder_lines(20_000), 4).await;
        let Some(through) = report.interrupted_after else {
            panic!("the run was not stopped: {report:?}");
        };
        assert!((200..20_000).contains(&through), "{report:?}");
        assert_eq!(report.applied, through);
        let stored = Store::list(&store, Collection::Builders, None, 30_000)
            .await
            .unwrap();
        assert_eq!(
            stored.len() as u64,
            through,
            "each line read was applied, and no other"
        );
    }

    /// A stop seen in the chunk that holds an event the rules refuse: the refused event ended the
    /// run, and the lines after it were not applied, so the report does not say they were.
    #[tokio::test]
    async fn a_refused_event_read_before_a_stop_is_where_the_run_ended() {
        let dir = tempfile::tempdir().unwrap();
        let refused = r#"{"type":"step_started","master_id":"m","build_id":1,"step":0,"name":"t"}"#;
        let input = format!("{refused}\n{}", builder_lines(1000));
        let (report, _) = ingest_stopped_at_read(dir.path(), input, 0).await;
        assert!(report.stopped_early);
        assert_eq!(report.interrupted_after, None);
        assert_eq!((report.applied, report.rejected), (0, 1));
    }

    /// Input that is always ready never makes a read wait: the stop is seen before the next
    /// line all the same.
    #[tokio::test]
    async fn a_stop_is_seen_while_lines_keep_coming() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_in(dir.path(), "s.db").await;
        let (stop, options) = stoppable(true);
        let mut applier = Applier::new(Core::new(CoreConfig::default()));
        let report = ingest(
            &store,
            &mut applier,
            std::io::Cursor::new(builder_lines(5000).into_bytes()),
            &options,
            &mut |_: &LineError| {},
        )
        .await
        .unwrap();
        assert_eq!(report.interrupted_after, Some(0));
        assert_eq!(report.applied, 0);
        drop(stop);
    }
}
