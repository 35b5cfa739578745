//! Integration tests: what the real `buildstore` binary prints, and where: its standard output
//! and standard error closed or full, and its log's level and colours.

mod common;

use std::process::{Command, Stdio};

use common::daemon::{free_port, Daemon};
use common::*;

/// `ingest` reports bad lines and its summary on standard error. Standard error closed (a pipe
/// into `head -1`) or full is no reason to stop applying events, nor to panic: the run applies
/// every good event and exits 1 for the bad lines, as it would with standard error open.
#[test]
fn ingest_applies_everything_when_its_standard_error_is_closed_or_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut lines = vec![BUILD.to_owned()];
    lines.extend((0..50).map(|i| format!("not json {i}")));
    lines.push(STEP.to_owned());
    let file = write_lines(dir.path(), "mixed.jsonl", &lines);
    let file = file.display().to_string();

    let db = Db::new();
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = db
        .cmd()
        .args(["ingest", "--keep-going", &file])
        .stderr(full)
        .output()
        .expect("run ingest");
    assert_eq!(out.status.code(), Some(1), "standard error full");
    assert_eq!(db.export("steps").len(), 1, "standard error full");

    let db = Db::new();
    let mut ingest = db
        .cmd()
        .args(["ingest", "--keep-going", &file])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ingest");
    drop(ingest.stderr.take());
    assert_eq!(
        ingest.wait().expect("wait").code(),
        Some(1),
        "standard error closed"
    );
    assert_eq!(db.export("steps").len(), 1, "standard error closed");
}

/// `web` prints the address it serves once; whoever started it may not read that.
#[test]
fn web_serves_when_its_standard_output_is_closed() {
    let db = Db::new();
    db.ingest_ok(&example_files()[0]);
    let port = free_port();
    let mut web = db
        .cmd()
        .args(["web", "--listen", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start web");
    drop(web.stdout.take());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = web.try_wait().expect("wait") {
            let out = web.wait_with_output().expect("output");
            panic!("web ended ({status}): {}", stderr(&out));
        }
        assert!(std::time::Instant::now() < deadline, "web never listened");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let page = common::web::get(&format!("{}/", common::web::WebServer::at(port)));
    assert_eq!(page.status, 200, "{}", page.text());
    send_signal(&web, "TERM");
    let out = web.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A `BUILDSTORE_LOG` that would log nothing by mistake is refused: `warning` was read as the
/// name of a module to log, and a filter that did not parse as unset, so a typo in a service
/// file hid the store's errors. Empty, it is accepted (that it then logs warnings, as unset, is
/// checked beside `log_filter`).
#[test]
fn a_log_level_that_would_hide_the_warnings_is_refused() {
    let db = Db::new();
    db.ingest_ok(&example_files()[0]);
    let export_with = |value: &str| {
        db.cmd()
            .env("BUILDSTORE_LOG", value)
            .args(["export", "builds"])
            .output()
            .expect("run export")
    };
    for (value, says) in [
        ("warning", "\"warning\" is not a log level"),
        ("verbose", "\"verbose\" is not a log level"),
        ("debug,bogus=[", "is not a log filter"),
    ] {
        let out = export_with(value);
        assert_eq!(out.status.code(), Some(1), "{value}");
        assert_says(&out, says);
        assert_says(&out, "use error, warn, info, debug or trace");
    }
    // Help and the version answer all the same.
    for flag in ["--version", "--help"] {
        let out = db
            .cmd()
            .env("BUILDSTORE_LOG", "warning")
            .arg(flag)
            .output()
            .expect("run");
        assert!(out.status.success(), "{flag}: {}", stderr(&out));
    }
    for value in ["", "WARN", "info", "3", "warn,buildstore::serve=debug"] {
        let out = export_with(value);
        assert!(out.status.success(), "{value:?}: {}", stderr(&out));
    }
}

#[test]
fn logs_written_to_a_pipe_carry_no_colour_codes() {
    let db = Db::new();
    let mut cmd = db.cmd();
    cmd.env("BUILDSTORE_LOG", "debug");
    let out = cmd
        .args(["ingest", &example_files()[0].display().to_string()])
        .output()
        .expect("run ingest");
    let err = stderr(&out);
    assert!(err.contains("DEBUG"), "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
}

/// Output that cannot be written is an error (a full disk) or the end of it (a closed pipe), as
/// for `export`, never a panic.
#[test]
fn status_reports_an_output_it_cannot_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(dir.path(), free_port(), &[]);
    let metrics = format!("127.0.0.1:{}", daemon.metrics);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["status", "--metrics", &metrics])
        .stdout(full)
        .output()
        .expect("status");
    assert_says(&out, "writing to standard output");
    assert_eq!(out.status.code(), Some(1));
    let mut status = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["status", "--metrics", &metrics])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("status");
    drop(status.stdout.take());
    let out = status.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", stderr(&out));
    daemon.kill();
}
