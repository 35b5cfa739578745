//! The daemon's limits, through real sockets: each open connection is counted on its own, a
//! client that stops reading is disconnected without holding up the others and cannot make the
//! daemon hold more than a bounded amount of replies for it, a full spool
//! refuses new events with an error instead of dropping them, running out of file descriptors
//! pauses accepting rather than spinning, and a daemon that is stopping takes no new clients.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::daemon::*;
use common::*;
use serde_json::Value;

fn state(id: &str) -> String {
    format!(
        r#"{{"type":"builder_state","master_id":"m","event_id":"{id}","builder":"b","state":"idle"}}"#
    )
}

/// A connection kept open between exchanges.
struct Conn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _ = s.set_read_timeout(Some(Duration::from_secs(20)));
        Conn {
            writer: s.try_clone().expect("clone"),
            reader: BufReader::new(s),
        }
    }

    fn peer_name(&self) -> String {
        self.writer.local_addr().expect("address").to_string()
    }

    fn exchange(&mut self, lines: &[String]) -> Vec<Value> {
        for l in lines {
            self.writer
                .write_all(format!("{l}\n").as_bytes())
                .expect("send");
        }
        lines
            .iter()
            .map(|_| {
                let mut reply = String::new();
                self.reader.read_line(&mut reply).expect("reply");
                serde_json::from_str(&reply).unwrap_or_else(|_| panic!("JSON reply: {reply:?}"))
            })
            .collect()
    }
}

/// The per-connection series of `peer` in a status: "received" → value, and so on.
fn counts_of(status: &HashMap<String, f64>, peer: &str) -> HashMap<String, f64> {
    status
        .iter()
        .filter(|(k, _)| k.contains(&format!("peer=\"{peer}\"")))
        .filter_map(|(k, v)| {
            let what = k.strip_prefix("connection_lines_")?.split_once("_total")?.0;
            Some((what.to_owned(), *v))
        })
        .collect()
}

#[test]
fn each_open_connection_has_its_own_counts_and_leaves_the_metrics_when_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let mut a = Conn::open(daemon.port);
    let mut b = Conn::open(daemon.port);
    let replies = a.exchange(&[state("a1"), "{oops".into(), state("a2")]);
    assert!(replies[1]["error"].is_string(), "{replies:?}");
    b.exchange(&[state("b1")]);

    let status = daemon.status();
    let of_a = counts_of(&status, &a.peer_name());
    let of_b = counts_of(&status, &b.peer_name());
    assert_eq!(of_a["received"], 3.0, "{status:?}");
    assert_eq!(of_a["acknowledged"], 2.0, "{status:?}");
    assert_eq!(of_a["rejected"], 1.0, "{status:?}");
    assert_eq!(of_b["received"], 1.0, "{status:?}");
    assert_eq!(of_b["acknowledged"], 1.0, "{status:?}");
    assert_eq!(of_b["rejected"], 0.0, "{status:?}");
    assert_eq!(status["connections_open"], 2.0);
    assert_eq!(status["events_received_total"], 4.0);

    let gone = a.peer_name();
    drop(a);
    daemon.wait_until("the closed connection leaves the metrics", |s| {
        counts_of(s, &gone).is_empty() && s["connections_open"] == 1.0
    });
    assert_eq!(counts_of(&daemon.status(), &b.peer_name())["received"], 1.0);
    daemon.kill();
}

#[test]
fn a_client_that_stops_reading_is_disconnected_and_does_not_hold_up_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &["--reply-timeout", "5"]);

    // A client that only writes: once its replies fill the socket buffers and the daemon's
    // bounded queue, the daemon stops reading it, and its writes stall. Good events and bad
    // lines, whose replies wait in different ways (for the spool, or not at all).
    let stalled = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    let _ = stalled.set_write_timeout(Some(Duration::from_secs(1)));
    let (writes, lines_per_write) = (2_000, 1_000);
    let mut sent = 0usize;
    for i in 0..writes {
        let chunk: String = (0..lines_per_write)
            .map(|j| match j % 2 {
                0 => state(&format!("s{i}-{j}")) + "\n",
                _ => "{oops\n".to_owned(),
            })
            .collect();
        match (&stalled).write_all(chunk.as_bytes()) {
            Ok(()) => sent += lines_per_write,
            Err(_) => break,
        }
    }
    assert!(
        sent < writes * lines_per_write,
        "the daemon kept reading a client that never reads"
    );

    // Meanwhile another client is served as usual.
    let replies = exchange(daemon.port, &[&state("other")]);
    assert_eq!(replies[0]["ack"], "other", "{replies:?}");

    // The stalled client is dropped after the reply timeout, having had only part of its replies.
    daemon.wait_until("the stalled client is disconnected", |s| {
        s["connections_open"] == 0.0
    });
    let _ = stalled.set_read_timeout(Some(Duration::from_secs(20)));
    let mut replies = Vec::new();
    let _ = (&stalled).read_to_end(&mut replies); // EOF or reset, but never a hang
    let answered = replies.iter().filter(|b| **b == b'\n').count();
    assert!(
        answered < sent,
        "{answered} replies to {sent} lines: it was not cut off"
    );
    // Every line received is accounted for: answered, or counted as unanswered (its client
    // sends it again).
    let s = daemon.status();
    assert!(s["events_unanswered_total"] > 0.0, "{s:?}");
    assert_eq!(
        s["events_received_total"],
        s["events_acknowledged_total"] + s["events_rejected_total"] + s["events_unanswered_total"],
        "{s:?}"
    );

    let replies = exchange(daemon.port, &[&state("after")]);
    assert_eq!(replies[0]["ack"], "after", "{replies:?}");
    daemon.kill();
}

#[test]
fn past_spool_max_events_are_refused_with_an_error_and_accepted_once_the_store_catches_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "full") else {
        return; // needs a server this test can stop
    };
    let peer_port = peer.port;
    let spool_max = 100_000u64;
    let daemon = Daemon::on(
        &uri,
        &dir.path().join("spool"),
        free_port(),
        &[
            "--spool-max",
            &spool_max.to_string(),
            "--line-limit",
            "50000",
        ],
    );
    let lines = buildstore::synth::lines_of(3_000);
    peer.kill();

    // One connection sends everything; the daemon takes events until the spool is full, refuses
    // the next with an error to be retried, and closes the connection.
    let stream = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut writer = stream.try_clone().expect("clone");
    let sending = lines.clone();
    let sender = std::thread::spawn(move || {
        for l in sending {
            if writer.write_all(format!("{l}\n").as_bytes()).is_err() {
                return; // closed by the daemon
            }
        }
    });
    let replies: Vec<Value> = BufReader::new(stream)
        .lines()
        .map_while(Result::ok)
        .map(|r| serde_json::from_str(&r).expect("JSON reply"))
        .collect();
    let _ = sender.join();
    let (refusal, acks) = replies.split_last().expect("replies");
    let accepted = acks.len();
    assert!(
        accepted > 0 && accepted < lines.len(),
        "{accepted} accepted"
    );
    assert!(acks.iter().all(|r| r["ack"].is_string()), "{acks:?}");
    assert!(
        refusal["error"]
            .as_str()
            .is_some_and(|e| e.contains("spool is full")),
        "{refusal}"
    );
    assert_eq!(refusal["retry"], true, "{refusal}");
    assert_eq!(refusal["closing"], true, "{refusal}");
    assert_eq!(refusal["line"], accepted + 1, "{refusal}");
    let status = daemon.status();
    assert!(status["spool_bytes"] <= spool_max as f64, "{status:?}");
    assert_eq!(status["spool_events"], accepted as f64, "{status:?}");

    // The store comes back: the backlog drains and the refused events are taken when resent.
    let peer = restart_peer(dir.path(), peer_port);
    daemon.wait_until("the spool drains", |s| s["spool_events"] == 0.0);
    let deadline = Instant::now() + Duration::from_secs(120);
    let refused = lines[accepted..].to_vec();
    assert_eq!(
        client(daemon.port, refused.clone(), deadline).0,
        refused.len()
    );
    daemon.wait_until("everything is applied", |s| {
        s["events_applied_total"] + s["events_duplicate_total"] == lines.len() as f64
    });
    assert!(daemon.stop().success());

    assert_same_as_one_clean_ingest(&Db::at(peer.uri("full")), &lines, dir.path());
    peer.kill();
}

/// CPU time a process has used so far (Linux).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .expect("stat fields");
    let ticks: u64 = [11, 12] // utime and stime, counted from the state field
        .iter()
        .map(|&i| fields[i].parse::<u64>().expect("ticks"))
        .sum();
    ticks as f64 / 100.0 // USER_HZ
}

#[test]
fn out_of_file_descriptors_the_daemon_pauses_accepting_and_serves_again_once_some_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let pid = daemon.child.id().to_string();
    let limited = std::process::Command::new("prlimit")
        .args(["--pid", &pid, "--nofile=48:48"])
        .status();
    if !limited.is_ok_and(|s| s.success()) {
        eprintln!("prlimit is not available: skipped");
        return;
    }
    // More idle connections than descriptors left: the kernel completes them, accept fails.
    let idle: Vec<TcpStream> = (0..60)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", daemon.port)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_seconds(daemon.child.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_seconds(daemon.child.id()) - before;
    // Retrying a failed accept at once would keep a core busy all that time.
    assert!(
        used < 0.5,
        "the daemon used {used} s of CPU in 2 s while idle"
    );
    drop(idle);
    let mut s = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    writeln!(s, "{}", state("after")).expect("send");
    let mut reply = String::new();
    let _ = BufReader::new(s).read_line(&mut reply);
    assert!(
        reply.contains(r#"{"ack":"after"}"#),
        "served again: {reply:?}"
    );
    // Said once, not at each of the ten or so pauses; and its end.
    let (_, log) = daemon.stop_and_log();
    assert_eq!(log.matches("accept failed").count(), 1, "{log}");
    assert_eq!(
        log.matches("socket feed: accepting again").count(),
        1,
        "{log}"
    );
}

#[test]
fn once_stopping_the_daemon_refuses_new_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), free_port(), &[]);
    let port = daemon.port;
    // An open connection whose client has not closed keeps the daemon lingering for 2 s. One
    // round trip first, so that the daemon has surely accepted it before the stop.
    let mut open = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    open.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    writeln!(open, "{}", state("first")).expect("send");
    let mut reply = String::new();
    BufReader::new(&open).read_line(&mut reply).expect("ack");
    assert!(reply.contains(r#"{"ack":"first"}"#), "{reply:?}");
    daemon.terminate();
    // Until the daemon exits, after its linger of up to 2 s, a refusal can only come from the
    // stop, not from the process being gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            let running = daemon.child.try_wait().expect("wait").is_none();
            assert!(running, "new clients connected until the daemon exited");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon neither stops nor exits"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(open);
    assert!(daemon.child.wait().expect("wait").success());
}

/// The signals a process catches, from its mask in /proc (Linux).
fn caught_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .expect("SigCgt")
}

#[test]
fn a_stop_sent_the_moment_the_daemon_says_ready_is_graceful() {
    // A supervisor may stop the daemon as soon as it is ready; had it not caught the signals
    // by then, the default action would end it at once, dropping what it had not answered.
    for _ in 0..5 {
        let dir = tempfile::tempdir().expect("tempdir");
        let daemon = Daemon::start(dir.path(), free_port(), &[]);
        let caught = caught_signals(daemon.child.id());
        for (name, number) in [("SIGTERM", 15), ("SIGINT", 2)] {
            assert_ne!(
                caught & 1 << (number - 1),
                0,
                "{name} not caught when ready"
            );
        }
        assert!(daemon.stop().success());
    }
}

/// A stop ends within the grace period even when the store hangs on a write (another program
/// holds its lock) and a request to the metrics never ends; the event it could not apply is
/// applied at the next start.
#[test]
fn a_stop_ends_within_the_grace_period_whatever_hangs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(dir.path(), free_port(), &["--grace", "2"]);
    let lock = rusqlite::Connection::open(dir.path().join("store.db")).expect("open the store");
    lock.execute_batch("BEGIN EXCLUSIVE")
        .expect("lock the store");
    let replies = exchange(daemon.port, &[&state("late")]);
    assert!(replies[0]["ack"].is_string(), "{}", replies[0]);
    let mut half = TcpStream::connect(("127.0.0.1", daemon.metrics)).expect("metrics");
    half.write_all(b"GET /metrics HTTP/1.1\r\n")
        .expect("half a request");
    std::thread::sleep(Duration::from_millis(500));
    let asked = Instant::now();
    daemon.terminate();
    let status = daemon.exited_by(
        asked + Duration::from_secs(6),
        "the stop takes over 6 s with --grace 2",
    );
    assert!(status.success(), "{status:?}");
    drop(half);
    lock.execute_batch("ROLLBACK").expect("unlock the store");
    // With nothing left to apply, even a stop with no grace at all does not say something is.
    let daemon = Daemon::start(dir.path(), free_port(), &["--grace", "0"]);
    daemon.wait_until("the spooled event applied", |s| {
        s["events_applied_total"] >= 1.0
    });
    let (status, log) = daemon.stop_and_log();
    assert!(status.success(), "{status:?}");
    assert!(!log.contains("left in the spool"), "{log}");
    assert_eq!(store(dir.path()).export("builders").len(), 1);
}

/// A bad value of almost a megabyte is quoted in part: in the error reply to its line, and in the
/// daemon's log when the rules refuse an event that was acknowledged.
#[test]
fn a_huge_bad_value_is_quoted_in_part_in_the_reply_and_in_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let [bad_time, bad_hash] = huge_bad_values();
    let replies = exchange(daemon.port, &[&bad_time, &bad_hash]);
    let error = replies[0]["error"].as_str().unwrap_or_default();
    assert!(error.len() < 1100, "a reply of {} bytes", error.len());
    assert!(error.starts_with("field `time`:"), "{error}");
    assert!(error.contains("bytes left out"), "{error}");
    assert!(replies[1]["ack"].is_string(), "{:?}", replies[1]);
    daemon.wait_until("the commit refused by the rules", |s| {
        s["events_rule_rejected_total"] >= 1.0
    });
    let (_, log) = daemon.stop_and_log();
    let refused = log
        .lines()
        .find(|l| l.contains("event rejected by the rules"))
        .unwrap_or_else(|| panic!("no warning of the refused event: {log}"));
    assert!(
        refused.len() < 1500,
        "a log line of {} bytes",
        refused.len()
    );
    assert!(refused.contains("field `hash`"), "{refused}");
    assert!(refused.contains("bytes left out"), "{refused}");
}

/// Resident memory of a process, in bytes (Linux).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

#[test]
fn a_client_that_does_not_read_cannot_pile_up_long_replies_in_the_daemon() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &["--reply-timeout", "120"]);
    let before = rss(daemon.child.id());
    // Each ack quotes its event's id of 256 bytes (an error reply is cut to about 1 KiB, so acks
    // are the long replies now): 200,000 of them would be 50 MiB of replies. The daemon stops
    // reading once its queue of replies is full, in entries or in bytes.
    let s = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    s.set_write_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    // Written a megabyte at a time, so that the daemon reads whole runs.
    let mut s = std::io::BufWriter::with_capacity(1 << 20, s);
    let mut sent = 0;
    let pad = "i".repeat(240);
    while sent < 200_000
        && s.write_all(format!("{}\n", state(&format!("{pad}{sent:>16}"))).as_bytes())
            .is_ok()
    {
        sent += 1;
    }
    assert!(
        sent < 200_000,
        "the daemon kept reading from a client that reads nothing"
    );
    let grown = rss(daemon.child.id()).saturating_sub(before);
    assert!(
        grown < 64 << 20,
        "the daemon grew by {} MiB for {sent} lines",
        grown >> 20
    );
    daemon.kill();
}
