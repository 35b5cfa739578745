//! What `buildstore serve` refuses at start: settings that cannot work, and places that belong
//! to someone else (a file where its socket would go, a socket or a spool another daemon uses);
//! and places that look odd but are the user's to choose, which it takes.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;

use common::daemon::*;

#[test]
fn a_spool_too_small_for_the_longest_line_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let said = refused_to_start(
        dir.path(),
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--spool-max",
            "1000000",
            "--line-limit",
            "1000000",
        ],
    );
    assert!(
        said.contains("--spool-max (1000000 bytes) must be at least twice --line-limit"),
        "{said}"
    );
}

#[test]
fn a_listener_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let said = refused_to_start(dir.path(), &["--listen", "tcp://0.0.0.0:0"]);
    assert!(
        said.contains("is not a loopback address: a token is required"),
        "{said}"
    );
    // An IPv4 address written as IPv6 is that address: 10.0.0.1 needs a token, 127.0.0.1 not.
    let said = refused_to_start(dir.path(), &["--listen", "tcp://[::ffff:10.0.0.1]:0"]);
    assert!(said.contains("is not a loopback address"), "{said}");
    let mapped = free_port();
    let daemon = Daemon::start(
        dir.path(),
        free_port(),
        &["--listen", &format!("tcp://[::ffff:127.0.0.1]:{mapped}")],
    );
    let replies = exchange(
        mapped,
        &[r#"{"type":"builder_added","master_id":"m","builder":"b"}"#],
    );
    assert!(replies[0].get("ack").is_some(), "{replies:?}");
    assert!(daemon.stop().success());
}

/// Settings refused on their own are refused before the store or the spool is made.
#[test]
fn settings_refused_at_start_leave_no_store_or_spool_behind() {
    let long_token = "t".repeat(1025);
    let cases: [(&[&str], &str); 10] = [
        (
            &["--token", &long_token],
            "--token must be at most 1024 bytes",
        ),
        (
            &["--listen", "tcp://0.0.0.0:0"],
            "is not a loopback address: a token is required",
        ),
        (
            &["--spool-max", "2000000", "--line-limit", "1048576"],
            "must be at least twice --line-limit",
        ),
        (
            &["--grace", "86401"],
            "--grace must be at most 86400 seconds",
        ),
        (
            &[
                "--listen",
                "unix:/tmp/x.sock",
                "--listen",
                "unix:/tmp/x.sock",
            ],
            "unix:/tmp/x.sock is given twice to --listen",
        ),
        (
            &["--listen", "unix:x.sock", "--listen", "unix:./x.sock"],
            "unix:./x.sock (also as unix:x.sock) is given twice to --listen",
        ),
        (
            &[
                "--listen",
                "unix:/tmp/x.sock",
                "--listen",
                "unix:/tmp/../tmp/x.sock",
            ],
            "unix:/tmp/../tmp/x.sock (also as unix:/tmp/x.sock) is given twice to --listen",
        ),
        // The daemon would find the port taken by itself, and say another process has it.
        (
            &[
                "--listen",
                "tcp://127.0.0.1:45999",
                "--metrics",
                "127.0.0.1:45999",
            ],
            "--listen tcp://127.0.0.1:45999 and --metrics 127.0.0.1:45999 would take the same \
             port",
        ),
        (
            &["--metrics", "0.0.0.0:45998", "--web", "127.0.0.1:45998"],
            "--metrics 0.0.0.0:45998 and --web 127.0.0.1:45998 would take the same port",
        ),
        (
            &["--metrics", "[::]:45997", "--web", "127.0.0.1:45997"],
            "--metrics [::]:45997 and --web 127.0.0.1:45997 would take the same port",
        ),
    ];
    for (args, message) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let said = refused_to_start(dir.path(), args);
        assert!(said.contains(message), "{args:?}: {said}");
        let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

/// Sends one event over the Unix socket at `path` and returns the reply.
fn send_over(path: &Path, line: &str) -> String {
    let mut s = UnixStream::connect(path).expect("connect");
    s.write_all(format!("{line}\n").as_bytes()).expect("send");
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).expect("reply");
    reply
}

/// A directory of its own under `dir`, for one daemon's store and spool.
fn own(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).expect("mkdir");
    path
}

const EVENT: &str = r#"{"type":"builder_added","master_id":"m","builder":"b","event_id":"e1"}"#;

#[test]
fn a_unix_socket_path_holding_a_file_or_a_live_socket_is_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file given by mistake (here, a store) is not replaced by the socket.
    let file = dir.path().join("precious.db");
    std::fs::write(&file, b"precious bytes").expect("write");
    let listen = format!("unix:{}", file.display());
    let said = refused_to_start(dir.path(), &["--listen", &listen, "--metrics", "off"]);
    assert!(said.contains("exists and is not a socket"), "{said}");
    assert_eq!(
        std::fs::read(&file).expect("still there"),
        b"precious bytes"
    );

    // A running daemon's socket is not taken over by a second one.
    let sock = dir.path().join("bs.sock");
    let listen = format!("unix:{}", sock.display());
    let first = Daemon::start(&own(dir.path(), "a"), free_port(), &["--listen", &listen]);
    let said = refused_to_start(
        &own(dir.path(), "b"),
        &["--listen", &listen, "--metrics", "off"],
    );
    assert!(
        said.contains("another process is listening there"),
        "{said}"
    );
    assert!(send_over(&sock, EVENT).contains(r#""ack":"e1""#));

    // The socket a killed daemon left behind is stale: the next one takes its place.
    first.kill();
    assert!(sock.exists());
    let _next = Daemon::start(&own(dir.path(), "c"), free_port(), &["--listen", &listen]);
    assert!(send_over(&sock, EVENT).contains(r#""ack":"e1""#));
}

/// Addresses are bound before the spool is opened: a start that fails on the spool removes the
/// socket it made, as a stop does.
#[test]
fn the_unix_socket_goes_at_a_stop_and_after_a_failed_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("bs.sock");
    let listen = format!("unix:{}", sock.display());
    let _holder = Daemon::start(dir.path(), free_port(), &[]);
    let spool = dir.path().join("spool").display().to_string();
    let said = refused_to_start(
        &own(dir.path(), "b"),
        &["--listen", &listen, "--metrics", "off", "--spool", &spool],
    );
    assert!(said.contains("is in use"), "{said}");
    assert!(!sock.exists(), "a failed start left its socket");

    let daemon = Daemon::start(&own(dir.path(), "c"), free_port(), &["--listen", &listen]);
    assert!(send_over(&sock, EVENT).contains(r#""ack":"e1""#));
    assert!(daemon.stop().success());
    assert!(!sock.exists(), "a stopped daemon left its socket");
}

/// Every address is taken before anything is made on disk: an address in use (the usual failed
/// start) leaves no empty store, and no spool, behind.
#[test]
fn an_address_in_use_leaves_no_store_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let (tcp, http) = (
        format!("tcp://127.0.0.1:{port}"),
        format!("127.0.0.1:{port}"),
    );
    let free = "tcp://127.0.0.1:0";
    for args in [
        ["--listen", &tcp, "--metrics", "off", "--web", "127.0.0.1:0"],
        ["--listen", free, "--metrics", "off", "--web", &http],
        ["--listen", free, "--metrics", &http, "--web", "127.0.0.1:0"],
    ] {
        let said = refused_to_start(dir.path(), &args);
        assert!(said.contains("listening on"), "{args:?}: {said}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert!(left.is_empty(), "{args:?} left {left:?}");
    }
}

/// What a daemon with its store in `dir` and its spool at `spool` says as it refuses to start.
fn refused_with_spool(dir: &Path, spool: &Path) -> String {
    let spool = spool.display().to_string();
    let args = [
        "--listen",
        "tcp://127.0.0.1:0",
        "--metrics",
        "off",
        "--spool",
        &spool,
    ];
    refused_to_start(dir, &args)
}

#[test]
fn a_spool_path_holding_a_file_is_refused_in_those_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("spool");
    std::fs::write(&file, b"notes").expect("write");
    let said = refused_with_spool(dir.path(), &file);
    assert!(
        said.contains("a file of that name is there, and the spool is a directory"),
        "{said}"
    );
    assert_eq!(std::fs::read(&file).expect("read"), b"notes");
}

/// A spool file damaged in the middle holds acknowledged events that could never be applied:
/// the daemon refuses to start on it, rather than acknowledge new events behind them, and leaves
/// it as it is for its events to be salvaged.
#[test]
fn a_damaged_spool_is_refused_at_start_and_left_as_it_is() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    std::fs::create_dir(&spool).expect("mkdir");
    let file = spool.join("spool.db");
    let conn = rusqlite::Connection::open(&file).expect("open");
    conn.execute_batch(
        "CREATE TABLE groups (last INTEGER PRIMARY KEY AUTOINCREMENT, first INTEGER NOT NULL,
                              lines BLOB NOT NULL);",
    )
    .expect("the spool's table");
    let line = r#"{"type":"builder_state","master_id":"m","builder":"b","state":"idle"}"#;
    for i in 0..500 {
        conn.execute(
            "INSERT INTO groups (last, first, lines) VALUES (?1, ?2, ?3)",
            rusqlite::params![i * 10 + 10, i * 10 + 1, [line; 10].join("\n")],
        )
        .expect("a group");
    }
    drop(conn);
    let mut bytes = std::fs::read(&file).expect("read");
    let page = 4096;
    assert!(bytes.len() > 60 * page, "a spool of many pages");
    bytes[30 * page..40 * page].fill(0xAB);
    std::fs::write(&file, &bytes).expect("damage");

    let said = refused_with_spool(dir.path(), &spool);
    assert!(said.contains("spool.db is damaged"), "{said}");
    assert!(said.contains("may hold acknowledged events"), "{said}");
    assert!(
        std::fs::read(&file).expect("read") == bytes,
        "the file was changed"
    );
}

#[test]
fn a_spool_another_daemon_uses_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let _first = Daemon::start(dir.path(), free_port(), &[]);
    let said = refused_with_spool(&own(dir.path(), "other"), &spool);
    assert!(
        said.contains("is in use by another buildstore serve"),
        "{said}"
    );
}

/// A MongoDB store that does not answer does not keep the daemon from listening: it starts
/// within moments, not after the server selection timeout, and spools what it is sent.
#[test]
fn the_daemon_listens_at_once_while_the_store_does_not_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((peer, uri)) = stoppable_peer(dir.path(), "silent") else {
        return; // needs a server this test can stop
    };
    peer.kill();
    let uri = uri.replace(
        "serverSelectionTimeoutMS=500",
        "serverSelectionTimeoutMS=60000",
    );
    let started = std::time::Instant::now();
    let daemon = Daemon::on(&uri, &dir.path().join("spool"), free_port(), &[]);
    let waited = started.elapsed();
    assert!(
        waited < std::time::Duration::from_secs(30),
        "ready after {waited:?}"
    );
    let replies = exchange(
        daemon.port,
        &[r#"{"type":"builder_state","master_id":"m","builder":"b","state":"idle"}"#],
    );
    assert!(replies[0].get("ack").is_some(), "{replies:?}");
    daemon.kill();
}

/// A spool directory whose name starts with `file:` is that directory: SQLite, reading the spool's
/// path as a URI, opened `sp/spool.db` instead, and the daemon could not start.
#[test]
fn a_spool_directory_named_like_an_sqlite_uri_is_a_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .current_dir(dir.path())
        .env_remove("BUILDSTORE_STORE")
        .args(["--store", "sqlite:store.db", "serve", "--spool", "file:sp"])
        .args([
            "--listen",
            &format!("tcp://127.0.0.1:{port}"),
            "--metrics",
            "off",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start serve");
    let mut ready = String::new();
    let _ = BufRead::read_line(
        &mut BufReader::new(serve.stdout.take().expect("stdout")),
        &mut ready,
    );
    common::send_signal(&serve, "TERM");
    let out = serve.wait_with_output().expect("wait");
    assert_eq!(
        ready.trim(),
        "buildstore serve: ready",
        "{}",
        common::stderr(&out)
    );
    assert!(dir.path().join("file:sp").join("spool.db").is_file());
}
