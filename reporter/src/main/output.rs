//! `export` and `log`: documents and log text written to standard output. A closed pipe
//! (`| head`) ends the output quietly.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use buildstore::store::Store;
use buildstore_schema::{Channel, Collection};

/// Writes to stdout; a closed pipe (`| head`) ends the output quietly.
pub fn emit(out: &mut impl Write, bytes: &[u8]) -> anyhow::Result<bool> {
    match out.write_all(bytes) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

pub async fn export(store: &dyn Store, collection: Collection) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut after: Option<String> = None;
    loop {
        let page = store.list(collection, after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = last.get_str("_id").ok().map(str::to_owned);
        for doc in &page {
            let mut line = buildstore::export::to_line(doc);
            line.push('\n');
            if !emit(&mut out, line.as_bytes())? {
                return Ok(());
            }
        }
        if after.is_none() {
            break;
        }
    }
    flush(&mut out)
}

/// Flushes stdout; a closed pipe ends the output quietly, as in [`emit`].
pub fn flush(out: &mut impl Write) -> anyhow::Result<()> {
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

pub async fn print_log(
    store: &dyn Store,
    step_id: &str,
    channel: Channel,
) -> anyhow::Result<ExitCode> {
    if store.get(Collection::Steps, step_id).await?.is_none() {
        bail!("no step {step_id:?} in the store");
    }
    let len = store.log_len(step_id, channel).await?.unwrap_or(0);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut offset = 0u64;
    while offset < len {
        let piece = store.read_log(step_id, channel, offset, 1 << 20).await?;
        if piece.is_empty() {
            break;
        }
        offset += piece.len() as u64;
        if !emit(&mut out, &piece)? {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
