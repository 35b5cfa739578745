//! `buildstore ingest` as a command: the pipeline over a file or standard input, what it says
//! at the end, and how it stops at SIGINT or SIGTERM. Reading then ends after the last whole
//! line and what was read is applied, since lines taken from a pipe could not be read again; a
//! second signal ends the process at once.

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use buildstore::core::{Core, CoreConfig};
use buildstore::pipeline::{ingest, Applier, IngestOptions, LineError};
use buildstore::serve::{Caught, StopSignals};
use buildstore::store::Store;
use tokio::io::BufReader;

/// Ingests `input` (the opened `file`, or standard input for `None`) into `store`.
pub async fn run(
    store: &dyn Store,
    file: &str,
    input: Option<tokio::fs::File>,
    config: CoreConfig,
    mut options: IngestOptions,
) -> anyhow::Result<ExitCode> {
    let mut signals = StopSignals::install().context("cannot catch SIGTERM and SIGINT")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    options.stop = Some(stopped);
    let caught: Arc<OnceLock<Caught>> = Arc::default();
    let watcher = {
        let caught = Arc::clone(&caught);
        let file = file.to_owned();
        tokio::spawn(async move {
            let first = signals.recv().await;
            let _ = caught.set(first);
            let _ = stop.send(true);
            note!(
                "buildstore: {file}: {}: applying what was read, then stopping (another signal \
                 stops at once)",
                first.name()
            );
            signals.recv_later().await;
            note!(
                "buildstore: {file}: stopped at once; what was being written is not applied: \
                 ingest the input again (events already applied are skipped)"
            );
            std::process::exit(i32::from(first.exit_status()));
        })
    };
    let mut applier = Applier::new(Core::new(config));
    let mut on_error = |e: &LineError| note!("buildstore: {file}: {e}");
    let input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match input {
        Some(f) => Box::new(f),
        None => Box::new(stdin_on_its_own_thread()),
    };
    let report = ingest(
        store,
        &mut applier,
        BufReader::with_capacity(1 << 20, input),
        &options,
        &mut on_error,
    )
    .await;
    watcher.abort();
    let report = report.with_context(|| file.to_owned())?;
    note!(
        "buildstore: {file}: {} events applied, {} duplicates skipped, {} lines rejected{}",
        report.applied,
        report.duplicates,
        report.rejected,
        if report.stopped_early {
            " (stopped at the first bad line; --keep-going carries on)"
        } else {
            ""
        }
    );
    if let (Some(lines), Some(signal)) = (report.interrupted_after, caught.get()) {
        note!(
            "buildstore: {file}: stopped by {} after line {lines}: the lines up to it are \
             applied, those after it are not (events already applied are skipped if they are \
             ingested again)",
            signal.name()
        );
        return Ok(ExitCode::from(signal.exit_status()));
    }
    Ok(if report.rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Standard input, read on a thread of its own rather than on the runtime's blocking threads,
/// which the end of the program waits for: after a stop, a read still waiting on a silent pipe
/// would hold the exit up, and swallow the signals sent meanwhile.
fn stdin_on_its_own_thread() -> impl tokio::io::AsyncRead + Unpin + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<std::io::Cursor<Vec<u8>>>>(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        // One buffer for every read; each chunk sent is as long as what was read (from a live
        // pipe, often one line), not a fresh 64 KiB.
        let mut buffer = vec![0; 64 << 10];
        loop {
            let read = match std::io::Read::read(&mut stdin, &mut buffer) {
                Ok(0) => return, // the end: the channel closes
                Ok(n) => Ok(std::io::Cursor::new(buffer[..n].to_vec())),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
            let failed = read.is_err();
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
        }
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    tokio_util::io::StreamReader::new(Box::pin(chunks))
}
