//! The `buildstore` command line: ingest event streams, export documents, print full logs.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{bail, Context};
use buildstore::core::{ChangesetPolicy, CoreConfig, MAX_INLINE_LIMIT, MIN_INLINE_LIMIT};
use buildstore::pipeline::IngestOptions;
use buildstore::store::{self, Store};
use buildstore_schema::{Channel, Collection};
use clap::{Parser, Subcommand};

/// Prints a line to standard error. Standard error closed or full is no reason to stop, nor to
/// panic: `ingest 2>&1 | head -1` still applies every event, and nothing else could report it.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

#[path = "main/ingest.rs"]
mod ingest_command;
#[path = "main/output.rs"]
mod output;

#[derive(Parser)]
#[command(
    name = "buildstore",
    version,
    about = "Turns build-master events into denormalized build documents",
    long_about = "Turns the events of a build master (builders, builds, steps, logs, properties, \
changesets) into the documents of the collections builders, builds, steps and repository, ready \
to query.\n\nEvents are JSON objects, one per line (protocol v1, see docs/events.md). The \
documents are described in docs/builddata.md.",
    after_help = "Examples:\n  buildstore ingest examples/events/fetch-head-corrected.jsonl\n  \
buildstore export builds\n  buildstore log 'm1/7/2' stdout\n  \
buildstore --store sqlite:/var/lib/buildstore/builds.db export repository\n  \
BUILDSTORE_STORE=mongodb://localhost:27017/builds buildstore ingest events.jsonl"
)]
struct Cli {
    #[arg(
        long,
        help = STORE_HELP,
        env = "BUILDSTORE_STORE",
        default_value = "sqlite:buildstore.db"
    )]
    store: String,
    #[command(subcommand)]
    command: Command,
}

/// The first sentence of both spellings of `--store`'s help.
macro_rules! store_places {
    () => {
        "Where documents are kept: sqlite:PATH (the embedded store) or a MongoDB URI, \
         mongodb://HOST[:PORT]/DATABASE?OPTIONS"
    };
}

const STORE_HELP: &str = concat!(
    store_places!(),
    " (database `buildstore` if none is given; the server selection timeout is 10 s unless \
     serverSelectionTimeoutMS says otherwise)"
);

/// `--store` given after the command, as the commands that open the store take it (the one
/// before the command goes for every command; `status` opens no store, and takes no other).
#[derive(clap::Args)]
struct StoreArg {
    #[arg(long = "store", value_name = "STORE", help = STORE_AFTER_HELP)]
    store: Option<String>,
}

const STORE_AFTER_HELP: &str = concat!(
    store_places!(),
    ". Given here, it wins over --store before the command and BUILDSTORE_STORE; without \
     either, sqlite:buildstore.db"
);

#[derive(Subcommand)]
enum Command {
    /// Apply a stream of events (JSON lines) to the store.
    ///
    /// Each line is one event. A bad line is reported with its line number; the lines before it
    /// stay applied. Events whose event_id was applied before are skipped, so a stream can be
    /// ingested again safely. Exits 1 if any line was rejected. SIGINT or SIGTERM stops the
    /// reading after the last whole line, applies what was read, and exits 130 or 143.
    Ingest {
        #[command(flatten)]
        at: StoreArg,
        /// File of events, or - for standard input.
        #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new())]
        file: String,
        /// Report bad lines and carry on with the rest instead of stopping at the first.
        #[arg(long)]
        keep_going: bool,
        /// Most bytes of each log channel kept inline in step documents (256 to 2097152); the store
        /// keeps the rest.
        #[arg(long, value_name = "BYTES", default_value_t = CoreConfig::DEFAULT_INLINE_LIMIT)]
        inline_log_limit: usize,
        /// Regular expression of a proper (final, linkable) changeset, matched against the whole
        /// changeset.
        #[arg(long, value_name = "REGEX", default_value = ChangesetPolicy::DEFAULT_PATTERN)]
        proper_changeset: String,
        /// Most events written to the store as one batch.
        #[arg(long, value_name = "N", default_value_t = 1000,
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_events: u32,
        /// Longest line taken, in bytes (at least 1024); a longer one is a bad line.
        #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
        line_limit: usize,
    },
    /// Serve the socket feed: events as JSON lines over TCP or a Unix socket, each acknowledged
    /// once it is durably spooled, applied to the store in batches.
    ///
    /// Every line gets one reply, in order: {"ack": EVENT_ID} or {"error": ..., "line": N}; after
    /// an error marked "closing", the daemon closes the connection.
    /// SIGTERM or SIGINT stops it: it answers what it received, drains the spool into the store
    /// for up to --grace, and exits 0; what is left is applied at the next start.
    Serve {
        #[command(flatten)]
        at: StoreArg,
        /// tcp://IP:PORT or unix:PATH (mode 0600); may be given several times.
        #[arg(long, value_name = "ADDRESS", default_value = "tcp://127.0.0.1:9989")]
        listen: Vec<buildstore::serve::Listen>,
        /// Directory of the spool [default: next to an embedded store, else ./buildstore.spool].
        #[arg(long, value_name = "DIR")]
        spool: Option<std::path::PathBuf>,
        /// Bytes the spool may hold while the store is behind; past it, events get an error. At
        /// least twice --line-limit.
        #[arg(long, value_name = "BYTES", default_value_t = 1 << 30)]
        spool_max: u64,
        /// Longest accepted line, in bytes (at least 1024).
        #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
        line_limit: usize,
        /// Shared secret clients send first as {"type":"hello","token":...}; required on
        /// addresses other than loopback.
        #[arg(long, env = "BUILDSTORE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Seconds a client may leave its replies unread (with the buffers full) before it is
        /// disconnected, so that it holds no memory of the daemon's.
        #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = whole_seconds)]
        reply_timeout: u64,
        /// Seconds (at most 86400) to answer what was received and keep draining the spool into
        /// the store after SIGTERM; connections still open then are closed. A second SIGTERM or
        /// SIGINT, a second or more later, stops at once (the spool keeps the rest for the next
        /// start).
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        grace: u64,
        /// Most bytes of each log channel kept inline in step documents (256 to 2097152); the store
        /// keeps the rest.
        #[arg(long, value_name = "BYTES", default_value_t = CoreConfig::DEFAULT_INLINE_LIMIT)]
        inline_log_limit: usize,
        /// Regular expression of a proper (final, linkable) changeset, matched against the whole
        /// changeset.
        #[arg(long, value_name = "REGEX", default_value = ChangesetPolicy::DEFAULT_PATTERN)]
        proper_changeset: String,
        /// Address of the Prometheus endpoint (GET /metrics), or "off".
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9990")]
        metrics: String,
        /// Also serve the web pages and their JSON API here (as `buildstore web` does).
        #[arg(long, value_name = "IP:PORT")]
        web: Option<std::net::SocketAddr>,
    },
    /// Serve the web pages and their JSON API (docs/api.md), read-only, from any store.
    ///
    /// Pages: / (builds by sourcestamp, with filters), /builds/ID, /steps/ID/logs/CHANNEL,
    /// /changesets, /builders; the same data as JSON under /api. SIGTERM or SIGINT stops it.
    Web {
        #[command(flatten)]
        at: StoreArg,
        /// Address to listen on.
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8010")]
        listen: std::net::SocketAddr,
    },
    /// Print the metrics of a running `buildstore serve`.
    Status {
        /// The daemon's --metrics address.
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9990")]
        metrics: std::net::SocketAddr,
    },
    /// Create the indexes and document validators the store needs. Harmless to run again;
    /// ingest runs it too.
    Init {
        #[command(flatten)]
        at: StoreArg,
    },
    /// Print a collection as MongoDB Extended JSON (relaxed), one document per line, by _id.
    Export {
        #[command(flatten)]
        at: StoreArg,
        /// builders, builds, steps or repository.
        collection: Collection,
    },
    /// Print the full text of one log of a step.
    Log {
        #[command(flatten)]
        at: StoreArg,
        /// The step _id, e.g. m1/7/2.
        step_id: String,
        /// stdout, stderr or header.
        #[arg(value_parser = parse_channel)]
        channel: Channel,
    },
}

/// A number of seconds, at least one, said in those words rather than as a range of integers.
fn whole_seconds(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(0) => Err("must be at least 1 second".to_owned()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number of seconds")),
    }
}

fn parse_channel(s: &str) -> Result<Channel, String> {
    Channel::parse(s)
        .ok_or_else(|| format!("unknown channel {s:?} (expected stdout, stderr or header)"))
}

/// How long the end of the program waits for work left on blocking threads: a store write a stop
/// gave up on, blocked by another program's lock. What it was writing is still in the spool (or
/// in the input of `ingest`), and applying it again changes nothing.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    // The stack of the main thread for every thread: folding and reading documents descend
    // property values, nested up to 64 deep, some of it recursively, and a debug build's frames
    // are large.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_stack_size(8 << 20)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            note!("buildstore: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(cli_main());
    runtime.shutdown_timeout(EXIT_WAIT);
    code
}

async fn cli_main() -> ExitCode {
    use std::io::IsTerminal;
    // First, so that --help and --version answer whatever BUILDSTORE_LOG says.
    let cli = Cli::parse();
    let filter = match log_filter(std::env::var_os("BUILDSTORE_LOG")) {
        Ok(filter) => filter,
        Err(e) => {
            note!("buildstore: {}", describe(&e));
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal; plain text for a log file or the journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            note!("buildstore: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// What to log, from `BUILDSTORE_LOG`: warnings when it is unset or empty. A value that would
/// log nothing by mistake is refused: `warning` or `verbose` reads as the name of a module to
/// log, and a filter that does not parse was taken as unset, so a typo in a service file hid the
/// store's errors. So a bare word must be a level; a module is named with its level
/// (`buildstore=debug`).
fn log_filter(value: Option<std::ffi::OsString>) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    let Some(value) = value else {
        return Ok("warn".into());
    };
    let Some(text) = value.to_str() else {
        bail!("BUILDSTORE_LOG is not UTF-8 text");
    };
    if text.trim().is_empty() {
        return Ok("warn".into());
    }
    let explain = "use error, warn, info, debug or trace, or a filter such as \
                   warn,buildstore::serve=debug";
    for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = !directive.contains(['=', '[', ':']);
        // A level as the filter reads one: a name, or a number from 0 (off) to 5 (trace).
        let known = directive
            .parse::<tracing_subscriber::filter::LevelFilter>()
            .is_ok();
        if level && !known {
            bail!("BUILDSTORE_LOG={text:?}: {directive:?} is not a log level; {explain}");
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(text)
        .with_context(|| format!("BUILDSTORE_LOG={text:?} is not a log filter; {explain}"))
}

/// The error and its causes, each said once: several layers end their message with the error
/// they wrap (SQLite's "unable to open database file" would otherwise be printed three times).
fn describe(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

impl Command {
    /// The `--store` given after the command, if any, and None for `status`, which has none.
    fn store(&self) -> Option<&str> {
        match self {
            Command::Ingest { at, .. }
            | Command::Serve { at, .. }
            | Command::Web { at, .. }
            | Command::Init { at }
            | Command::Export { at, .. }
            | Command::Log { at, .. } => at.store.as_deref(),
            Command::Status { .. } => None,
        }
    }
}

async fn run(mut cli: Cli) -> anyhow::Result<ExitCode> {
    // The one command that needs no store.
    if let Command::Status { metrics } = cli.command {
        return status(metrics).await;
    }
    // Given after the command, it is the later word: it wins over one given before.
    if let Some(store) = cli.command.store() {
        cli.store = store.to_owned();
    }
    let reader = match cli.command {
        Command::Web { .. } => Some("web"),
        Command::Export { .. } => Some("export"),
        Command::Log { .. } => Some("log"),
        _ => None,
    };
    // A form of location that names no store file is said to be one first (`sqlite://x.db`).
    let sqlite = match reader {
        Some(_) => store::sqlite_path(&cli.store)?,
        None => None,
    };
    if let (Some(command), Some(path)) = (reader, sqlite) {
        // Only reading: a mistyped path should be an error, not a new empty store; nor should
        // an empty file (SQLite would take it for a new database and make a store of it). A
        // place that cannot hold a store is said to be one first, with the reason.
        store::check_sqlite_place(path)?;
        match std::fs::metadata(path) {
            Err(_) => bail!(
                "no store at {path:?}: `buildstore {command}` only reads; ingest or serve creates it"
            ),
            Ok(meta) if meta.is_file() && meta.len() == 0 => bail!(
                "{path:?} is an empty file, not a store: `buildstore {command}` only reads; \
                 ingest or serve creates one"
            ),
            Ok(_) if store::is_empty_database(path)? => bail!(
                "{path:?} is an empty SQLite database, not a store: `buildstore {command}` \
                 only reads; ingest or serve creates one"
            ),
            Ok(_) => {}
        }
    }
    // Each command checks its own arguments before it opens the store: one that fails on them
    // leaves no new, empty store behind.
    let location = cli.store;
    match cli.command {
        Command::Ingest {
            file,
            keep_going,
            inline_log_limit,
            proper_changeset,
            batch_events,
            line_limit,
            ..
        } => {
            let config = core_config(inline_log_limit, &proper_changeset)?;
            let line_limit = checked_line_limit(line_limit)?;
            let input = match file.as_str() {
                "-" => None,
                path => {
                    let file = tokio::fs::File::open(path)
                        .await
                        .with_context(|| format!("cannot open {path}"))?;
                    // Opening a directory works; reading it does not. Found now, before the
                    // store is made.
                    if file.metadata().await.is_ok_and(|m| m.is_dir()) {
                        bail!("cannot read {path}: it is a directory, not a file of events");
                    }
                    Some(file)
                }
            };
            let store = store::open_for_writing(&location)
                .await
                .context("opening the store")?;
            store.init().await.context("preparing the store")?;
            let options = IngestOptions {
                keep_going,
                chunk_events: batch_events as usize,
                line_limit,
                ..IngestOptions::default()
            };
            ingest_command::run(store.as_ref(), &file, input, config, options).await
        }
        Command::Serve {
            listen,
            spool,
            spool_max,
            line_limit,
            token,
            reply_timeout,
            grace,
            inline_log_limit,
            proper_changeset,
            metrics,
            web,
            ..
        } => {
            let core = core_config(inline_log_limit, &proper_changeset)?;
            let metrics = metrics_address(&metrics)?;
            let line_limit = checked_line_limit(line_limit)?;
            let token = token.filter(|t| !t.is_empty());
            let grace = std::time::Duration::from_secs(grace);
            let config = buildstore::serve::ServeConfig {
                listen,
                spool: spool.unwrap_or_else(|| default_spool(&location)),
                spool_max,
                line_limit,
                token,
                reply_timeout: std::time::Duration::from_secs(reply_timeout),
                grace,
                core,
                metrics,
                web,
            };
            // Addresses first: one in use leaves no store behind.
            let bound = buildstore::serve::bind(&config).await?;
            let store = store::open_for_writing(&location)
                .await
                .context("opening the store")?;
            let store: std::sync::Arc<dyn Store> = std::sync::Arc::from(store);
            let preparing = store::prepare_or_later(&store)
                .await
                .context("preparing the store")?;
            let web = match web {
                None => None,
                Some(_) => Some(std::sync::Arc::from(
                    store::open_read_only(&location)
                        .await
                        .context("opening the store for the web pages")?,
                )),
            };
            let stores = buildstore::serve::Stores {
                store,
                web,
                preparing,
            };
            buildstore::serve::run(config, bound, stores).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { metrics } => status(metrics).await,
        Command::Web { listen, .. } => {
            web(
                listen,
                std::sync::Arc::from(open_read_only(&location).await?),
            )
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Init { .. } => {
            let store = open(&location).await?;
            store.init().await.context("preparing the store")?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Export { collection, .. } => {
            output::export(open_read_only(&location).await?.as_ref(), collection).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Log {
            step_id, channel, ..
        } => output::print_log(open_read_only(&location).await?.as_ref(), &step_id, channel).await,
    }
}

/// The store at `location`, opened (and for SQLite, created) once a command's arguments check out.
async fn open(location: &str) -> anyhow::Result<Box<dyn Store>> {
    store::open(location).await.context("opening the store")
}

/// Like [`open`], for the commands that only read: a MongoDB store's reads follow the URI's
/// `readPreference`.
async fn open_read_only(location: &str) -> anyhow::Result<Box<dyn Store>> {
    store::open_read_only(location)
        .await
        .context("opening the store")
}

/// `buildstore web`: the pages alone, until SIGTERM or SIGINT.
async fn web(listen: std::net::SocketAddr, store: std::sync::Arc<dyn Store>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the web pages"))?;
    let address = listener.local_addr().unwrap_or(listen);
    let mut signals =
        buildstore::serve::StopSignals::install().context("cannot catch SIGTERM and SIGINT")?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(buildstore::web::serve(listener, store, stopped));
    // Whoever started the pages may not read what this prints: that is no reason to stop.
    if let Err(e) = writeln!(
        std::io::stdout(),
        "buildstore web: serving http://{address}/"
    ) {
        tracing::warn!(error = %e, "could not print the address of the pages");
    }
    signals.recv().await;
    let _ = stop.send(true);
    server.await.context("the web server stopped abnormally")?;
    Ok(())
}

/// The `--metrics` address, or `None` for "off".
fn metrics_address(metrics: &str) -> anyhow::Result<Option<std::net::SocketAddr>> {
    match metrics {
        "off" => Ok(None),
        addr => Ok(Some(addr.parse().with_context(|| {
            format!("--metrics {addr:?} is not an IP:PORT address (or \"off\")")
        })?)),
    }
}

/// The shortest `--line-limit`: an event with a few fields takes a few hundred bytes.
const MIN_LINE_LIMIT: usize = 1024;

/// `--line-limit`, refused below [`MIN_LINE_LIMIT`]. Checked here rather than by clap, so that a
/// refused value exits with status 1 like the other refused settings.
fn checked_line_limit(bytes: usize) -> anyhow::Result<usize> {
    if bytes < MIN_LINE_LIMIT {
        bail!("--line-limit must be at least {MIN_LINE_LIMIT} bytes");
    }
    Ok(bytes)
}

async fn status(metrics: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let text = buildstore::serve::metrics::fetch(metrics)
        .await
        .with_context(|| format!("no buildstore serve answers on {metrics}"))?;
    let mut out = std::io::stdout().lock();
    if output::emit(&mut out, text.as_bytes())? {
        output::flush(&mut out)?;
    }
    Ok(ExitCode::SUCCESS)
}

fn core_config(inline_log_limit: usize, proper_changeset: &str) -> anyhow::Result<CoreConfig> {
    if !(MIN_INLINE_LIMIT..=MAX_INLINE_LIMIT).contains(&inline_log_limit) {
        bail!(
            "--inline-log-limit must be between {MIN_INLINE_LIMIT} and {MAX_INLINE_LIMIT} bytes: \
             a step document keeps three logs at that limit, and MongoDB holds at most 16 MiB"
        );
    }
    let changesets = ChangesetPolicy::new(proper_changeset)
        .map_err(|e| anyhow::anyhow!("--proper-changeset {proper_changeset:?} {e}"))?;
    Ok(CoreConfig {
        inline_limit: inline_log_limit,
        changesets,
    })
}

/// The spool lives next to an embedded store (`PATH.spool/`), else in the working directory.
fn default_spool(store: &str) -> std::path::PathBuf {
    match store.strip_prefix("sqlite:") {
        Some(path) => format!("{path}.spool").into(),
        None => "buildstore.spool".into(),
    }
}

#[cfg(test)]
mod tests {
    /// An empty `BUILDSTORE_LOG` (as a service file may leave it) logs warnings, as unset does.
    #[test]
    fn an_empty_log_filter_is_read_as_unset() {
        for empty in ["", "  "] {
            let filter = super::log_filter(Some(empty.into())).expect("accepted");
            assert_eq!(filter.to_string(), "warn", "{empty:?}");
        }
    }
}
