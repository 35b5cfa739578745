//! A running `buildstore serve` and the clients the socket tests talk to it with.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::mongo::Peer;
use super::{stderr, Db};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running daemon, on a SQLite store in `dir` unless told otherwise.
pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub metrics: u16,
    /// What the daemon logs, whole once it has exited.
    log: Option<std::thread::JoinHandle<String>>,
}

/// A test that fails midway must not leave its daemon running.
impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Daemon {
    pub fn start(dir: &Path, port: u16, extra: &[&str]) -> Daemon {
        let store = format!("sqlite:{}", dir.join("store.db").display());
        Daemon::on(&store, &dir.join("spool"), port, extra)
    }

    pub fn on(store: &str, spool: &Path, port: u16, extra: &[&str]) -> Daemon {
        let metrics = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_buildstore"))
            .env_remove("BUILDSTORE_STORE")
            // Tests read the warnings in its log.
            .env_remove("BUILDSTORE_LOG")
            .args([
                "--store",
                store,
                "serve",
                "--listen",
                &format!("tcp://127.0.0.1:{port}"),
            ])
            .arg("--spool")
            .arg(spool)
            .args(["--metrics", &format!("127.0.0.1:{metrics}")])
            // Tests compare the store after a stop: on a loaded machine the default 10 s of
            // draining could run out first, leaving events for a next start that never comes.
            .args(if extra.contains(&"--grace") {
                &[][..]
            } else {
                &["--grace", "300"][..]
            })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start serve");
        // Its log is read all along: a full pipe would block the daemon at its next warning.
        let err = child.stderr.take().expect("stderr");
        let log = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(err), &mut text);
            text
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        if line.trim() != "buildstore serve: ready" {
            let _ = child.kill();
            let _ = child.wait();
            let why = log.join().unwrap_or_default();
            panic!("the daemon did not start: {why}");
        }
        Daemon {
            child,
            port,
            metrics,
            log: Some(log),
        }
    }

    /// `buildstore status`, as name → value.
    pub fn status(&self) -> std::collections::HashMap<String, f64> {
        let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
            .args([
                "status",
                "--metrics",
                &format!("127.0.0.1:{}", self.metrics),
            ])
            .output()
            .expect("status");
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((
                    name.trim_start_matches("buildstore_").to_owned(),
                    value.parse().ok()?,
                ))
            })
            .collect()
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Polls `buildstore status` until `done` holds, and returns that status; fails the test,
    /// saying `what` it waited for, after 90 s.
    pub fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&std::collections::HashMap<String, f64>) -> bool,
    ) -> std::collections::HashMap<String, f64> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}: {status:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(self) -> std::process::ExitStatus {
        self.stop_and_log().0
    }

    /// SIGTERM, then the exit status and what the daemon logged.
    pub fn stop_and_log(mut self) -> (std::process::ExitStatus, String) {
        self.terminate();
        let status = self.child.wait().expect("wait");
        let log = self.log.take().map(|l| l.join().unwrap_or_default());
        (status, log.unwrap_or_default())
    }

    /// The exit status once the daemon has exited of itself; `what` fails the test if it has
    /// not by `deadline` (a regression must fail it, not hang it).
    pub fn exited_by(&mut self, deadline: Instant, what: &str) -> std::process::ExitStatus {
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, without waiting for the daemon to exit.
    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal of that name, without waiting.
    pub fn signal(&self, name: &str) {
        super::send_signal(&self.child, name);
    }
}

/// Runs `buildstore --store sqlite:DIR/store.db serve ARGS`, which must refuse to start, and
/// returns what it said. A daemon that starts instead is stopped, and the test fails.
pub fn refused_to_start(dir: &Path, args: &[&str]) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .env_remove("BUILDSTORE_STORE")
        .env_remove("BUILDSTORE_TOKEN")
        .arg("--store")
        .arg(format!("sqlite:{}", dir.join("store.db").display()))
        .arg("serve")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run serve");
    let mut ready = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut ready);
    if !ready.is_empty() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("wait");
    let said = stderr(&out);
    assert!(
        ready.is_empty() && !out.status.success(),
        "it started: {ready}{said}"
    );
    said
}

pub fn store(dir: &Path) -> Db {
    Db::at(format!("sqlite:{}", dir.join("store.db").display()))
}

/// Sends lines on one connection and returns one reply per line.
pub fn exchange(port: u16, lines: &[&str]) -> Vec<Value> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    for l in lines {
        s.write_all(l.as_bytes()).expect("send");
        s.write_all(b"\n").expect("send");
    }
    let mut r = BufReader::new(s);
    lines
        .iter()
        .map(|_| {
            let mut reply = String::new();
            r.read_line(&mut reply).expect("reply");
            serde_json::from_str(&reply).unwrap_or_else(|_| panic!("reply is JSON: {reply:?}"))
        })
        .collect()
}

/// A client that sends its events with a window of unacknowledged ones, and after a lost
/// connection or a refusal to be retried reconnects and resends everything not acknowledged. Returns how many events were
/// acknowledged and over how many connections.
pub fn client(port: u16, events: Vec<String>, deadline: Instant) -> (usize, usize) {
    let mut acked = 0;
    let mut connections = 0;
    while acked < events.len() {
        assert!(
            Instant::now() < deadline,
            "client gave up: {acked} of {} acknowledged",
            events.len()
        );
        let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        connections += 1;
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let mut writer = stream.try_clone().expect("clone");
        let mut reader = BufReader::new(stream);
        let mut sent = acked;
        loop {
            while sent < events.len() && sent - acked < 200 {
                if writer
                    .write_all(format!("{}\n", events[sent]).as_bytes())
                    .is_err()
                {
                    break;
                }
                sent += 1;
            }
            let mut reply = String::new();
            match reader.read_line(&mut reply) {
                Ok(n) if n > 0 => {
                    let v: Value = serde_json::from_str(&reply).expect("reply is JSON");
                    if v["retry"] == true {
                        // The daemon cannot take it now and closes: resend from here later.
                        std::thread::sleep(Duration::from_millis(200));
                        break;
                    }
                    assert!(v["ack"].is_string(), "{v}");
                    acked += 1;
                    if acked == events.len() {
                        break;
                    }
                }
                _ => break, // the daemon went away: reconnect and resend from `acked`
            }
        }
    }
    (acked, connections)
}

/// The documents in `got` equal those of one `buildstore ingest` of `lines` into a fresh store:
/// nothing lost, nothing doubled, whatever happened on the way.
pub fn assert_same_as_one_clean_ingest(got: &Db, lines: &[String], scratch: &Path) {
    let all: Vec<&str> = lines.iter().map(String::as_str).collect();
    let expected = Db::new();
    expected.ingest_ok(&super::write_lines(scratch, "all.jsonl", &all));
    for c in ["builders", "builds", "steps", "repository"] {
        assert_eq!(got.export(c), expected.export(c), "{c}");
    }
}

/// A MongoDB test peer that a test can stop and start again (journaled in `dir`), and the URI a
/// daemon reaches it with, failing fast while it is down. `None` when the tests run against a
/// real server, which a test cannot stop.
pub fn stoppable_peer(dir: &Path, db: &str) -> Option<(Peer, String)> {
    if super::mongo::real_server().is_some() {
        // Shown with --nocapture: the test passes without having run.
        eprintln!("skipped: this test stops its server or sets fail points, which only the test peer allows");
        return None;
    }
    let peer = Peer::start(0, Some(&dir.join("peer.journal")));
    let uri = format!("{}?serverSelectionTimeoutMS=500", peer.uri(db));
    Some((peer, uri))
}

/// Starts a stopped [`stoppable_peer`] again on its port, with the data it had.
pub fn restart_peer(dir: &Path, port: u16) -> Peer {
    Peer::start(port, Some(&dir.join("peer.journal")))
}
