//! `buildstore serve`: the socket feed. Build masters that are not written in Rust send events
//! over TCP or a Unix socket; each event is acknowledged once it is durably in the spool, and a
//! drain task applies the spool to the store in batches. An acknowledged event reaches the store
//! even if the store is down for hours or the daemon is killed.

mod connection;
mod drain;
pub(crate) mod engine;
mod grace;
pub mod metrics;
mod replies;
mod unix_socket;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::core::CoreConfig;
use crate::spool::SpoolError;
use crate::store::Store;

use self::engine::Engine;

pub use connection::Shared;
pub use drain::DrainCounters;

/// Whether only this machine can reach `addr`: `[::ffff:127.0.0.1]` is 127.0.0.1 too.
fn loopback(addr: &SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Where the daemon listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            return addr
                .parse()
                .map(Listen::Tcp)
                .map_err(|e| format!("{s:?}: {e} (expected tcp://IP:PORT)"));
        }
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.is_empty() {
                return Ok(Listen::Unix(path.into()));
            }
        }
        Err(format!(
            "{s:?} is not a listen address (expected tcp://IP:PORT or unix:/PATH)"
        ))
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "tcp://{addr}"),
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl Listen {
    /// Where it listens, so that `unix:a.sock`, `unix:./a.sock` and `unix:../dir/a.sock` are one
    /// place: the socket's directory with its links and `..` resolved, and its name. (The
    /// socket's own name is not followed: it may be a stale socket the daemon replaces.)
    fn place(&self) -> Listen {
        match self {
            Listen::Tcp(_) => self.clone(),
            Listen::Unix(path) => {
                let absolute = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                let real = match (absolute.parent(), absolute.file_name()) {
                    (Some(dir), Some(name)) => std::fs::canonicalize(dir).map(|d| d.join(name)),
                    _ => Ok(absolute.clone()),
                };
                Listen::Unix(real.unwrap_or(absolute))
            }
        }
    }
}

/// Settings of the daemon.
pub struct ServeConfig {
    pub listen: Vec<Listen>,
    pub spool: PathBuf,
    pub spool_max: u64,
    pub line_limit: usize,
    pub token: Option<String>,
    /// How long a client may leave its replies unread before it is disconnected.
    pub reply_timeout: Duration,
    pub grace: Duration,
    pub core: CoreConfig,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Where the web pages are served, if anywhere.
    pub web: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listening on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is not a loopback address: a token is required (--token or BUILDSTORE_TOKEN; an \
         empty one counts as none)"
    )]
    TokenRequired(SocketAddr),
    #[error(
        "--spool-max ({spool_max} bytes) must be at least twice --line-limit ({line_limit} \
         bytes): an event that fits no empty spool would be refused forever"
    )]
    SpoolTooSmall { spool_max: u64, line_limit: usize },
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("listening on unix:{0}: the path exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("listening on unix:{0}: another process is listening there")]
    SocketInUse(PathBuf),
    #[error(
        "listening on unix:{path}: a socket is there and connecting to it failed ({source}), so \
         buildstore cannot tell whether another process uses it; refusing to replace it",
        path = path.display()
    )]
    SocketUnknown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is given twice to --listen")]
    ListenTwice(String),
    #[error("{first} and {second} would take the same port: give each one of its own")]
    AddressTwice { first: String, second: String },
    #[error("--grace must be at most {max} seconds (one day)", max = MAX_GRACE.as_secs())]
    GraceTooLong,
    #[error("--token must be at most {MAX_TOKEN_BYTES} bytes")]
    TokenTooLong,
    #[error("cannot catch SIGTERM and SIGINT: {0}")]
    Signals(#[source] std::io::Error),
}

/// The longest `--token`, so that its hello fits in the line a client may send before it.
pub const MAX_TOKEN_BYTES: usize = 1024;
const _: () = assert!(MAX_TOKEN_BYTES + 64 < connection::HELLO_LIMIT);

/// The longest `--grace`: a stop is meant to end.
pub const MAX_GRACE: Duration = Duration::from_secs(24 * 3600);

/// How long a scrape of the metrics under way when the drain has ended may take to be answered.
const METRICS_LAST_SCRAPE: Duration = Duration::from_secs(1);

/// Checks the settings that need nothing opened, so that a daemon refused on its flags leaves
/// no store or spool behind.
fn check_settings(config: &ServeConfig) -> Result<(), ServeError> {
    let (listen, line_limit, spool_max) = (&config.listen, config.line_limit, config.spool_max);
    let token = config.token.as_deref();
    // Twice, since the line spooled may be longer than the one read, by the event id and time
    // added.
    if line_limit as u64 > spool_max / 2 {
        return Err(ServeError::SpoolTooSmall {
            spool_max,
            line_limit,
        });
    }
    if config.grace > MAX_GRACE {
        return Err(ServeError::GraceTooLong);
    }
    // The hello that carries the token must fit in a line read before the hello.
    if token.is_some_and(|t| t.len() > MAX_TOKEN_BYTES) {
        return Err(ServeError::TokenTooLong);
    }
    for (i, l) in listen.iter().enumerate() {
        if let Some(first) = listen[..i].iter().find(|e| e.place() == l.place()) {
            let name = if first == l {
                l.to_string()
            } else {
                format!("{l} (also as {first})")
            };
            return Err(ServeError::ListenTwice(name));
        }
        if let Listen::Tcp(addr) = l {
            if !loopback(addr) && token.is_none() {
                return Err(ServeError::TokenRequired(*addr));
            }
        }
    }
    // Each would find the address taken by the daemon itself, and say another process has it.
    let feeds = listen.iter().filter_map(|l| match l {
        Listen::Tcp(addr) => Some((format!("--listen {l}"), *addr)),
        Listen::Unix(_) => None,
    });
    let pages = [("--metrics", config.metrics), ("--web", config.web)]
        .into_iter()
        .filter_map(|(flag, addr)| addr.map(|a| (format!("{flag} {a}"), a)));
    let tcp: Vec<(String, SocketAddr)> = feeds.chain(pages).collect();
    for (i, (second, b)) in tcp.iter().enumerate() {
        if let Some((first, _)) = tcp[..i].iter().find(|(_, a)| same_port(*a, *b)) {
            return Err(ServeError::AddressTwice {
                first: first.clone(),
                second: second.clone(),
            });
        }
    }
    Ok(())
}

/// Whether two TCP addresses cannot both be bound: one port (not 0, which picks a free one) on
/// one IP, or on any IP and another of its family, or on any IPv6 address, which takes the
/// IPv4 ones too where the system is dual-stack (Linux by default).
fn same_port(a: SocketAddr, b: SocketAddr) -> bool {
    let any_v6 = |x: SocketAddr| x.is_ipv6() && x.ip().is_unspecified();
    let overlap = if a.is_ipv4() == b.is_ipv4() {
        a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
    } else {
        any_v6(a) || any_v6(b)
    };
    a.port() != 0 && a.port() == b.port() && overlap
}

/// Checks the settings and takes every address of `config`, and the stop signals, before
/// anything is made on disk: a start that fails here (an address in use) leaves no store or
/// spool behind.
pub async fn bind(config: &ServeConfig) -> Result<Bound, ServeError> {
    let signals = StopSignals::install().map_err(ServeError::Signals)?;
    check_settings(config)?;
    Bound::all(config, signals).await
}

/// What the daemon writes and reads.
pub struct Stores {
    pub store: Arc<dyn Store>,
    /// A handle of its own for the web pages, so that their reads do not queue behind the
    /// drain's writes (the store's own handle serves them otherwise).
    pub web: Option<Arc<dyn Store>>,
    /// The store's preparing in the background, if it was down at start: its failures count in
    /// the metrics.
    pub preparing: Option<crate::store::Preparing>,
}

/// Runs the daemon on the addresses `bind` took until SIGTERM or SIGINT, then answers what was
/// received, drains the spool for up to the grace period and returns.
pub async fn run(config: ServeConfig, bound: Bound, stores: Stores) -> Result<(), ServeError> {
    let Stores {
        store,
        web: web_store,
        preparing,
    } = stores;
    let web_store = web_store.unwrap_or_else(|| Arc::clone(&store));
    // The spool is opened after every address is taken: no other file is being made while a
    // socket's umask is set.
    let engine = match Engine::start(
        &config.spool,
        config.spool_max,
        store,
        config.core,
        config.grace,
    )
    .await
    {
        Ok(engine) => engine,
        // The sockets made go with `bound`.
        Err(e) => return Err(e.into()),
    };
    engine.count_errors_of(preparing.as_ref());
    let shared = Arc::new(Shared::new(
        engine.appender.clone(),
        config.line_limit,
        config.token.clone(),
        config.reply_timeout,
    ));
    let stop = engine.stop.subscribe();

    let mut listeners = JoinSet::new();
    let mut socket_files = Vec::new();
    for (listener, needs_token) in bound.tcp {
        listeners.spawn(accept_loop(
            listener,
            Arc::clone(&shared),
            needs_token,
            stop.clone(),
        ));
    }
    for (socket, needs_token) in bound.unix {
        let name = format!("unix:{}", socket.file.path().display());
        socket_files.push(socket.file);
        let feed = UnixFeed {
            name,
            listener: socket.listener,
        };
        listeners.spawn(accept_loop(
            feed,
            Arc::clone(&shared),
            needs_token,
            stop.clone(),
        ));
    }
    // The metrics answer until the spool has drained, so that `buildstore status` follows the
    // drain at a stop; they end after it, on a stop of their own.
    let (metrics_stop, metrics_stopped) = tokio::sync::watch::channel(false);
    let metrics_task = bound.metrics.map(|listener| {
        let m = Arc::new(metrics::Metrics {
            connections: Arc::clone(&shared.stats),
            drain: Arc::clone(&engine.counters),
            spool: engine.spool.clone(),
        });
        tokio::spawn(metrics::serve(listener, m, metrics_stopped))
    });
    if let Some(listener) = bound.web {
        listeners.spawn(crate::web::serve(listener, web_store, stop.clone()));
    }
    // Whoever started the daemon may not read what it prints: that is no reason to stop.
    if let Err(e) = writeln!(std::io::stdout(), "buildstore serve: ready") {
        tracing::warn!(error = %e, "could not print that the daemon is ready");
    }

    let mut signals = bound.signals;
    signals.recv().await;
    tracing::info!("stopping: no new connections; answering what was received");
    let _ = engine.stop.send(true);
    // A store that is down would keep the drain going for the whole grace period: a second
    // signal ends it now. Nothing acknowledged is lost; the spool keeps what was not applied.
    let second = async {
        signals.recv_later().await;
        tracing::warn!(
            "stopping now, at a second signal: what the spool holds is applied at the next start"
        );
    };
    let mut second = std::pin::pin!(second);
    // Answering is bounded by the grace period too: a client that does not read its replies,
    // or a request to the web view that never ends, does not hold the stop up.
    let answered = async {
        let all = async { while listeners.join_next().await.is_some() {} };
        if tokio::time::timeout(config.grace, all).await.is_err() {
            tracing::warn!("grace period over: closing the connections still open");
        }
    };
    let now = tokio::select! {
        () = answered => false,
        () = &mut second => true,
    };
    // Connections still open are dropped now: their clients resend what was not acknowledged.
    drop(listeners);
    drop(shared);
    if now {
        engine.finish(std::future::ready(())).await;
    } else {
        engine.finish(second).await;
    }
    let _ = metrics_stop.send(true);
    if let Some(mut task) = metrics_task {
        // A scrape under way gets its answer; one that does not end does not hold the exit, nor
        // the spool (the metrics keep a handle on it) for a caller of `run` that goes on.
        if tokio::time::timeout(METRICS_LAST_SCRAPE, &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
    // The listeners are gone: each socket file goes with its `SocketFile`.
    drop(socket_files);
    Ok(())
}

/// The daemon's listening sockets, each with whether it needs a hello with the token, and the
/// stop signals, caught from the moment the first socket is made.
pub struct Bound {
    tcp: Vec<(TcpListener, bool)>,
    unix: Vec<(unix_socket::BoundSocket, bool)>,
    metrics: Option<TcpListener>,
    web: Option<TcpListener>,
    signals: StopSignals,
}

impl Bound {
    /// Binds every address of `config`; on a failure, the sockets already made are removed.
    async fn all(config: &ServeConfig, signals: StopSignals) -> Result<Bound, ServeError> {
        let mut bound = Bound {
            tcp: Vec::new(),
            unix: Vec::new(),
            metrics: None,
            web: None,
            signals,
        };
        // On a failure, the sockets already made go with `bound`.
        bound.bind(config).await.map(|()| bound)
    }

    async fn bind(&mut self, config: &ServeConfig) -> Result<(), ServeError> {
        let tcp = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServeError::Listen {
                    address: format!("{what}{addr}"),
                    source,
                })
        };
        // The address taken is logged: with port 0 the system chose it.
        let taken = |l: &tokio::net::TcpListener, asked: SocketAddr| {
            l.local_addr().map_or(asked.to_string(), |a| a.to_string())
        };
        for l in &config.listen {
            match l {
                Listen::Tcp(addr) => {
                    let listener = tcp("tcp://", *addr).await?;
                    tracing::info!(address = %taken(&listener, *addr), "listening");
                    let needs_token = !loopback(addr) || config.token.is_some();
                    self.tcp.push((listener, needs_token));
                }
                Listen::Unix(path) => {
                    let socket = unix_socket::BoundSocket::bind(path)?;
                    tracing::info!(path = %path.display(), "listening");
                    self.unix.push((socket, config.token.is_some()));
                }
            }
        }
        if let Some(addr) = config.metrics {
            let listener = tcp("metrics http://", addr).await?;
            tracing::info!(address = %taken(&listener, addr), "serving the metrics");
            self.metrics = Some(listener);
        }
        if let Some(addr) = config.web {
            let listener = tcp("web http://", addr).await?;
            tracing::info!(address = %taken(&listener, addr), "serving the web pages");
            self.web = Some(listener);
        }
        Ok(())
    }
}

/// The stop signal that came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caught {
    Term,
    Int,
}

impl Caught {
    pub fn name(self) -> &'static str {
        match self {
            Caught::Term => "SIGTERM",
            Caught::Int => "SIGINT",
        }
    }

    /// The status a shell gives a process this signal ended: 128 and the signal's number.
    pub fn exit_status(self) -> u8 {
        match self {
            Caught::Term => 128 + 15,
            Caught::Int => 128 + 2,
        }
    }
}

/// SIGTERM and SIGINT, caught from the moment this is made. Made before a daemon says it is
/// ready, so that a stop sent right after that is graceful rather than the default exit, which
/// would drop what was read but not yet answered.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    /// A second signal stops at once only if it comes this long after the first: one that
    /// comes with it (a terminal's SIGINT and a wrapper's SIGTERM) is the same stop.
    const SAME_STOP: Duration = Duration::from_secs(1);

    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for a second signal, one that comes at least [`StopSignals::SAME_STOP`] from now.
    /// One that came with the first, such as a terminal's SIGINT and a wrapper's SIGTERM sent
    /// together, does not count.
    pub async fn recv_later(&mut self) {
        tokio::time::sleep(Self::SAME_STOP).await;
        while tokio::time::timeout(Duration::ZERO, self.recv())
            .await
            .is_ok()
        {}
        self.recv().await;
    }

    /// Waits for either signal, and says which came.
    pub async fn recv(&mut self) -> Caught {
        tokio::select! {
            _ = self.term.recv() => Caught::Term,
            _ = self.int.recv() => Caught::Int,
        }
    }
}

/// A listening socket of either kind.
trait Accept: Send + 'static {
    type Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static;
    /// The next connection and a name for its peer.
    fn accept(
        &self,
    ) -> impl std::future::Future<Output = std::io::Result<(Self::Stream, String)>> + Send;
}

impl Accept for TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<(Self::Stream, String)> {
        let (stream, peer) = TcpListener::accept(self).await?;
        // Replies are small lines: send each at once.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer.to_string()))
    }
}

/// A Unix listener and the name its clients go by: they are unnamed, and the socket tells them
/// apart from TCP ones.
struct UnixFeed {
    listener: UnixListener,
    name: String,
}

impl Accept for UnixFeed {
    type Stream = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<(Self::Stream, String)> {
        let (stream, _) = self.listener.accept().await?;
        Ok((stream, self.name.clone()))
    }
}

/// Accepts connections until `stop`, then waits for the open ones to finish.
async fn accept_loop<L: Accept>(
    listener: L,
    shared: Arc<Shared>,
    needs_token: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut failures = crate::http::AcceptFailures::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    failures.log_accepted("socket feed");
                    connections.spawn(connection::serve(stream, peer, Arc::clone(&shared), needs_token, stop.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, typically: the listener stays ready, and accepting
                    // again at once would fail again at once, in a loop.
                    if !failures.pause("socket feed", &e, &mut stop).await {
                        break;
                    }
                }
            },
            // A connection's task is freed when it ends, not when the daemon stops.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    // New clients are refused from now on, rather than connecting to wait for replies that
    // never come.
    drop(listener);
    while connections.join_next().await.is_some() {}
}
