//! Where the MongoDB store tests run: a real server when `MONGODB_URI` is set, otherwise the
//! wire-protocol test peer (`tests/mongo-peer/peer.py`, run with the virtualenv that
//! `scripts/test` creates), one per test binary.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn python() -> PathBuf {
    let venv = repo_root().join(".venv/bin/python");
    assert!(
        venv.exists(),
        "{} is missing: run scripts/test once (it creates the virtualenv the MongoDB test peer needs)",
        venv.display()
    );
    venv
}

/// A running test peer. It exits when its standard input closes, i.e. with the test process.
pub struct Peer {
    pub child: Child,
    _stdin: ChildStdin,
    pub port: u16,
}

impl Peer {
    /// Starts a peer on `port` (0: any free port), optionally with a write journal that survives
    /// a kill, as a real server's would.
    pub fn start(port: u16, journal: Option<&std::path::Path>) -> Peer {
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/mongo-peer/peer.py"))
            .args(["--port", &port.to_string(), "--exit-with-stdin"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(journal) = journal {
            cmd.arg("--journal").arg(journal);
        }
        let mut child = cmd.spawn().expect("start the MongoDB test peer");
        let stdin = child.stdin.take().expect("peer stdin");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("peer stdout"))
            .read_line(&mut line)
            .expect("read the peer's first line");
        let port = line
            .trim()
            .strip_prefix("listening on 127.0.0.1:")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from the peer: {line:?}"));
        Peer {
            child,
            _stdin: stdin,
            port,
        }
    }

    pub fn uri(&self, db: &str) -> String {
        format!("mongodb://127.0.0.1:{}/{db}", self.port)
    }

    /// Stops the peer with SIGTERM and waits.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

static SHARED: OnceLock<Mutex<Peer>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// Whether the tests run against a real server.
pub fn real_server() -> Option<String> {
    std::env::var("MONGODB_URI").ok().filter(|u| !u.is_empty())
}

/// A URI naming a fresh database on the server the tests use.
pub fn fresh_database(name: &str) -> String {
    let n = DATABASES.fetch_add(1, Ordering::SeqCst);
    let db = format!("bs_{}_{}_{n}", name, std::process::id());
    match real_server() {
        Some(base) => with_database(&base, &db),
        None => {
            let peer = SHARED.get_or_init(|| Mutex::new(Peer::start(0, None)));
            let port = peer.lock().unwrap_or_else(|p| p.into_inner()).port;
            format!("mongodb://127.0.0.1:{port}/{db}")
        }
    }
}

/// Puts `db` as the path of a MongoDB URI, keeping its hosts and options.
fn with_database(uri: &str, db: &str) -> String {
    let (scheme, rest) = uri.split_once("://").unwrap_or(("mongodb", uri));
    let (hosts, options) = match rest.split_once('?') {
        Some((h, o)) => (h, format!("?{o}")),
        None => (rest, String::new()),
    };
    let hosts = hosts.split('/').next().unwrap_or(hosts);
    format!("{scheme}://{hosts}/{db}{options}")
}

/// The peer's counters: round trips per command and bytes received.
pub fn peer_stats(uri: &str) -> Option<bson::Document> {
    if real_server().is_some() {
        return None;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(uri).await.ok()?;
        client
            .database("admin")
            .run_command(bson::doc! {"buildstorePeerStats": 1})
            .await
            .ok()
    })
}

/// How many `command` commands the peer at `uri` has taken so far (0 for one it never took), or
/// None when it cannot say (a real server).
pub fn peer_command_count(uri: &str, command: &str) -> Option<i64> {
    let stats = peer_stats(uri)?;
    stats.get_document("commands").ok()?;
    Some(command_count(&stats, command))
}

/// How many times `command` was taken, as the peer's statistics `stats` count it (0 if never).
pub fn command_count(stats: &bson::Document, command: &str) -> i64 {
    stats
        .get_document("commands")
        .ok()
        .and_then(|c| c.get(command))
        .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)))
        .unwrap_or(0)
}

/// Runs `f` on the database that a test store's URI names, through the official driver.
pub fn on_database<T, F>(uri: &str, f: impl FnOnce(mongodb::Database) -> F) -> T
where
    F: std::future::Future<Output = T>,
{
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(uri).await.expect("client");
        f(client.default_database().expect("a database in the URI")).await
    })
}

/// Sets the `failCommand` fail point of `peer`: the commands named in `commands` then fail with
/// error `code` as `mode` says (`{times: N}`, `{skip: N}`, `"alwaysOn"` or `"off"`).
pub fn fail_point(peer: &Peer, mode: bson::Bson, commands: &[&str], code: i32) {
    set_fail_point(peer, mode, commands, bson::doc! {"errorCode": code});
}

/// Makes the listed commands run and then report a write concern error (64: replication timed
/// out), as a replica set does when its majority does not answer in time.
pub fn write_concern_fail_point(peer: &Peer, mode: bson::Bson, commands: &[&str]) {
    let error = bson::doc! {"code": 64, "errmsg": "waiting for replication timed out"};
    set_fail_point(
        peer,
        mode,
        commands,
        bson::doc! {"writeConcernError": error},
    );
}

/// The `failCommand` fail point with `failure` (what the listed commands get) in its data.
fn set_fail_point(peer: &Peer, mode: bson::Bson, commands: &[&str], failure: bson::Document) {
    let mut data = bson::doc! {"failCommands": commands};
    data.extend(failure);
    on_database(&peer.uri("admin"), |db| async move {
        db.run_command(bson::doc! {
            "configureFailPoint": "failCommand",
            "mode": mode,
            "data": data,
        })
        .await
        .expect("fail point")
    });
}
