//! Integration tests: the real `buildstore` binary's commands as a user meets them: a pipe into
//! `ingest -`, one writer per store, `export`, errors for bad commands, the environment, `status`
//! and `--help`.

mod common;

use std::io::Write as _;
use std::process::Command;

use common::*;

/// `ingest -` running, and the pipe to its standard input.
fn ingest_from_pipe(db: &Db) -> (std::process::Child, std::process::ChildStdin) {
    ingest_from_pipe_with(db, &[])
}

/// `ingest ARGS -` running, and the pipe to its standard input; its standard error is kept.
fn ingest_from_pipe_with(
    db: &Db,
    args: &[&str],
) -> (std::process::Child, std::process::ChildStdin) {
    let mut ingest = db
        .cmd()
        .arg("ingest")
        .args(args)
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ingest");
    let pipe = ingest.stdin.take().expect("stdin");
    (ingest, pipe)
}

/// Waits (up to 20 s) until `collection` holds `count` documents, as `export` sees them while
/// another process writes the store; fails with `otherwise`.
fn wait_for_documents(db: &Db, collection: &str, count: usize, otherwise: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = db
            .cmd()
            .args(["export", collection])
            .output()
            .expect("run export");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).lines().count() == count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{otherwise}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A master piping its events into `ingest -` sees its documents as it goes, not when a chunk of
/// a thousand events fills or the pipe closes.
#[test]
fn events_from_a_pipe_are_applied_when_the_pipe_pauses() {
    let db = Db::new();
    let (mut ingest, mut pipe) = ingest_from_pipe(&db);
    // The pause comes in the middle of a line, as with a writer that buffers by blocks.
    let finish = r#"{"type":"build_finished","master_id":"m","build_id":1,"result":0}"#;
    write!(pipe, "{BUILD}\n{STEP}\n{}", &finish[..20]).expect("write");
    pipe.flush().expect("flush");
    wait_for_documents(&db, "steps", 1, "nothing applied while the pipe stays open");
    writeln!(pipe, "{}", &finish[20..]).expect("write");
    drop(pipe);
    assert!(ingest.wait().expect("wait").success());
    assert_eq!(
        db.doc("builds", "m/1")["result"],
        0,
        "the line cut by the pause"
    );

    // Input that pauses right after a whole chunk: that chunk is applied before the wait too,
    // or a stop during the pause would lose what was read from the pipe.
    let db = Db::new();
    let (mut ingest, mut pipe) = ingest_from_pipe_with(&db, &["--batch-events", "2"]);
    writeln!(pipe, "{BUILD}\n{STEP}").expect("write");
    pipe.flush().expect("flush");
    wait_for_documents(&db, "steps", 1, "a whole chunk waits for more input");
    drop(pipe);
    assert!(ingest.wait().expect("wait").success());

    // So is a chunk ended by a bad line that `--keep-going` reports, and the report comes then.
    let db = Db::new();
    let (mut ingest, mut pipe) = ingest_from_pipe_with(&db, &["--keep-going"]);
    writeln!(pipe, "{BUILD}\nnot json").expect("write");
    pipe.flush().expect("flush");
    wait_for_documents(
        &db,
        "builds",
        1,
        "the lines before a bad one wait for more input",
    );
    // Read on a thread: a report held back until the end would never come while the pipe is
    // open, and the test must fail rather than wait for it.
    let errors = ingest.stderr.take().expect("stderr");
    let (said, heard) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut first = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(errors), &mut first);
        let _ = said.send(first);
    });
    let first = heard
        .recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_default();
    assert!(first.contains("line 2: not valid JSON"), "{first:?}");
    drop(pipe);
    assert_eq!(ingest.wait().expect("wait").code(), Some(1));

    // A bad line ends the run at once, though the pipe stays open.
    let db = Db::new();
    let (mut ingest, mut pipe) = ingest_from_pipe(&db);
    writeln!(pipe, "{BUILD}\nnot json").expect("write");
    pipe.flush().expect("flush");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = ingest.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(15) {
            let _ = ingest.kill();
            panic!("ingest waits for the pipe after a bad line");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    drop(pipe);
}

/// Each writer keeps what it wrote in memory (a log's length, a build's steps): two at once on one
/// store lost log text, both reporting every event applied. The second is refused instead.
#[test]
fn one_process_writes_a_store_at_a_time() {
    let db = Db::new();
    let (mut first, mut pipe) = ingest_from_pipe(&db);
    writeln!(pipe, "{BUILD}").expect("write");
    pipe.flush().expect("flush");
    // The first holds the store once its build is applied.
    wait_for_documents(&db, "builds", 1, "the first ingest applies nothing");
    let second = db.ingest_text(STEP, &[]);
    assert_eq!(second.status.code(), Some(1));
    assert!(
        stderr(&second).contains("is written by another buildstore process"),
        "{}",
        stderr(&second)
    );
    // Reading goes on meanwhile.
    assert_eq!(db.export("builds").len(), 1);
    drop(pipe);
    assert!(first.wait().expect("wait").success());
    let out = db.ingest_text(STEP, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.export("steps").len(), 1);
}

#[test]
fn export_prints_extended_json_sorted_by_id() {
    let db = Db::new();
    db.ingest_ok(&example("two-masters.jsonl"));
    let builds = db.export("builds");
    let ids: Vec<&str> = builds.iter().filter_map(|b| b["_id"].as_str()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted);
    assert!(
        builds[0]["time_start"]["$date"].is_string(),
        "dates are Extended JSON"
    );
}

#[test]
fn clear_errors_for_bad_commands() {
    let db = Db::new();
    let out = db
        .cmd()
        .args(["ingest", "/no/such/file.jsonl"])
        .output()
        .expect("run");
    assert_says(&out, "cannot open /no/such/file.jsonl");
    // A path that opens but cannot be read as a stream is named too.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().display().to_string();
    let out = db.cmd().args(["ingest", &path]).output().expect("run");
    assert!(
        !out.status.success()
            && stderr(&out).contains(&format!("cannot read {path}: it is a directory")),
        "{}",
        stderr(&out)
    );
    // An in-memory database, or an SQLite URI (SQLite would open another file than the one
    // buildstore locks and checks), is refused, and nothing is made; so is a path whose file
    // name would hold URI parameters or whitespace at either end.
    let memory = "an in-memory database would lose every document";
    for (location, says) in [
        ("sqlite::memory:", memory),
        ("sqlite:file::memory:", memory),
        ("sqlite:file:x.db?mode=memory", memory),
        (
            "sqlite:file:x.db",
            "takes a file path, not an SQLite URI (file:...)",
        ),
        (
            "sqlite:x.db?mode=ro",
            "`?` does not start SQLite URI parameters there",
        ),
        ("sqlite: x.db", "the path starts or ends with whitespace"),
        ("sqlite:x.db\n", "the path starts or ends with whitespace"),
    ] {
        let out = Db::at(location.into())
            .cmd()
            .current_dir(dir.path())
            .args(["ingest", "-"])
            .output()
            .expect("run");
        assert!(stderr(&out).contains(says), "{location}: {}", stderr(&out));
        let made = std::fs::read_dir(dir.path()).expect("list").count();
        assert_eq!(made, 0, "{location}: nothing made");
    }
    // An empty location, from the environment too, is said to be empty.
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .env("BUILDSTORE_STORE", "")
        .args(["export", "builds"])
        .output()
        .expect("run");
    assert_says(
        &out,
        "the store location is empty (an empty --store or BUILDSTORE_STORE)",
    );
    // A URL's slashes would name a file at the root.
    let name = format!("bs-url-{}.db", std::process::id());
    let out = Db::at(format!("sqlite://{name}")).ingest_text("", &[]);
    assert_says(&out, "takes a file path, not a URL with //");
    assert!(!std::path::Path::new("/").join(&name).exists());
    assert!(!std::path::Path::new("/")
        .join(format!("{name}.lock"))
        .exists());
    // Commands that only read say so too, rather than that no store is at "//NAME".
    for command in [&["export", "builds"][..], &["log", "m/1/0", "stdout"]] {
        let out = Db::at(format!("sqlite://{name}"))
            .cmd()
            .args(command)
            .output()
            .expect("run");
        assert_says(&out, "takes a file path, not a URL with //");
    }
    // A directory where the store file should be leaves no lock file beside it.
    let folder = dir.path().join("folder.db");
    std::fs::create_dir(&folder).expect("mkdir");
    let out = Db::at(format!("sqlite:{}", folder.display())).ingest_text("", &[]);
    assert!(!out.status.success());
    assert!(
        !dir.path().join("folder.db.lock").exists(),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir(&folder).expect("rmdir");
    // A MongoDB URI that does not parse is said to be one.
    let out = Db::at("mongodb://us:er:pw@127.0.0.1:1/db".into())
        .cmd()
        .args(["export", "builds"])
        .output()
        .expect("run");
    assert!(
        stderr(&out).contains("the MongoDB URI of the store is not valid")
            && stderr(&out).contains("password must be URL encoded")
            && !stderr(&out).contains("pw"),
        "{}",
        stderr(&out)
    );
    assert!(
        db.ingest_text("", &[]).status.success(),
        "creates the store"
    );
    let out = db.log("m/1/0", "stdout");
    assert!(
        !out.status.success() && stderr(&out).contains("no step \"m/1/0\""),
        "{}",
        stderr(&out)
    );
    let out = db.cmd().args(["export", "build"]).output().expect("run");
    assert!(
        stderr(&out).contains("unknown collection \"build\""),
        "{}",
        stderr(&out)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["--store", "postgres://x", "export", "builds"])
        .output()
        .expect("run");
    assert!(
        stderr(&out).contains("\"postgres://x\" is not understood"),
        "{}",
        stderr(&out)
    );
    // Each cause is said once, though several layers quote the one they wrap; and in words
    // that say what is wrong, where SQLite says "unable to open database file".
    let out = Db::at("sqlite:/no/such/dir/store.db".into()).ingest_text("", &[]);
    assert_eq!(
        stderr(&out)
            .matches("its directory /no/such/dir does not exist")
            .count(),
        1,
        "{}",
        stderr(&out)
    );
    let out = Db::at(format!("sqlite:{}", dir.path().display())).ingest_text("", &[]);
    assert_says(&out, "it is a directory, not a store file");
    for limit in ["10", "3000000"] {
        let out = db.ingest_text("", &["--inline-log-limit", limit]);
        assert!(
            stderr(&out).contains("--inline-log-limit must be between 256 and 2097152 bytes"),
            "{}",
            stderr(&out)
        );
    }
}

#[test]
fn commands_that_fail_on_their_arguments_leave_no_new_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("fresh.db");
    let db = Db::at(format!("sqlite:{}", path.display()));
    let cases: [(&[&str], &str); 10] = [
        (
            &["ingest", "/no/such/file.jsonl"],
            "cannot open /no/such/file.jsonl",
        ),
        (&["ingest", ""], "a value is required for '<FILE>'"),
        (
            &["serve", "--reply-timeout", "0"],
            "--reply-timeout <SECONDS>': must be at least 1 second",
        ),
        (&["ingest", "/"], "cannot read /: it is a directory"),
        (
            &["ingest", "--inline-log-limit", "5", "-"],
            "--inline-log-limit must be",
        ),
        (
            &["ingest", "--proper-changeset", "", "-"],
            "--proper-changeset \"\" takes nothing but the empty string",
        ),
        (
            &["serve", "--proper-changeset", "^[A-Z_]+"],
            "--proper-changeset \"^[A-Z_]+\" takes FETCH_HEAD for a commit hash",
        ),
        (
            &["serve", "--line-limit", "0"],
            "--line-limit must be at least 1024 bytes",
        ),
        (
            &["serve", "--metrics", "nowhere"],
            "--metrics \"nowhere\" is not",
        ),
        (
            &["status", "--metrics", "127.0.0.1:9"],
            "no buildstore serve answers",
        ),
    ];
    for (args, says) in cases {
        let out = db.cmd().args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert!(!path.exists(), "{args:?} created the store");
    }
}

#[test]
fn commands_that_only_read_refuse_a_store_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo.db");
    let db = Db::at(format!("sqlite:{}", typo.display()));
    for args in [&["export", "builds"][..], &["log", "m/1/0", "stdout"]] {
        let out = db.cmd().args(args).output().expect("run");
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains(&format!("`buildstore {}` only reads", args[0])),
            "{args:?}: {}",
            stderr(&out)
        );
        assert!(!typo.exists(), "{args:?} created an empty store");
    }
    // Nor is an empty file made into one.
    std::fs::write(&typo, b"").expect("an empty file");
    let out = db.cmd().args(["export", "builds"]).output().expect("run");
    assert_says(&out, "is an empty file, not a store");
    assert!(!out.status.success());
    assert_eq!(std::fs::metadata(&typo).expect("still there").len(), 0);
    // Nor an SQLite database with nothing in it, as a tool makes one.
    std::fs::remove_file(&typo).expect("remove");
    let made = rusqlite::Connection::open(&typo).expect("open");
    made.execute_batch("PRAGMA user_version = 0; VACUUM;")
        .expect("write its header");
    drop(made);
    let before = std::fs::read(&typo).expect("read");
    assert!(!before.is_empty());
    for args in [&["export", "builds"][..], &["log", "m/1/0", "stdout"]] {
        let out = db.cmd().args(args).output().expect("run");
        assert_says(&out, "is an empty SQLite database, not a store");
        assert!(!out.status.success(), "{args:?}");
    }
    assert_eq!(
        std::fs::read(&typo).expect("read"),
        before,
        "left as it was"
    );
}

#[test]
fn the_store_can_be_chosen_through_the_environment() {
    let db = Db::new();
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .env("BUILDSTORE_STORE", &db.location)
        .args(["ingest"])
        .arg(example("nightly.jsonl"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!db.export("builds").is_empty());
}

#[test]
fn status_gives_up_on_an_address_that_never_answers() {
    // Something that accepts connections but never speaks HTTP, like the socket feed's port.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr").to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["status", "--metrics", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run status");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("buildstore status still waits after 60 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no answer within 5 s")
            && stderr(&out).contains("the daemon's --metrics address?"),
        "{}",
        stderr(&out)
    );
    drop(silent);
}

#[test]
fn help_teaches_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .arg("--help")
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    for word in [
        "ingest",
        "export",
        "log",
        "--store",
        "sqlite:PATH",
        "docs/events.md",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    // `--store` is offered after the commands that open the store, not after `status`.
    let help = |command: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
            .args([command, "--help"])
            .output()
            .expect("run");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for command in ["ingest", "serve", "web", "init", "export", "log"] {
        assert!(help(command).contains("--store <STORE>"), "{command}");
    }
    assert!(!help("status").contains("--store"), "{}", help("status"));
}

/// `--store` after the command names the store as well as before it, and wins over one given
/// before it (the later word on the line).
#[test]
fn the_store_may_be_named_after_the_command() {
    let db = Db::new();
    let nightly = example("nightly.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .env_remove("BUILDSTORE_STORE")
        .arg("--store")
        .arg("sqlite:/no/such/dir/x.db")
        .args(["ingest", "--store", &db.location])
        .arg(&nightly)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(db.export("builds").len(), 1);
}

/// `status` pointed at another web server (any port answering 200) fails, rather than print that
/// page as the daemon's metrics and pass a health check.
#[test]
fn status_refuses_a_page_without_buildstore_metrics() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = [0u8; 1024];
            let _ = std::io::Read::read(&mut stream, &mut request);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["status", "--metrics", &addr.to_string()])
        .output()
        .expect("status");
    assert_says(
        &out,
        "something else answers there: its page holds no buildstore metrics",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
}

/// `status` pointed at the socket feed, which answers a request line with a JSON error and keeps
/// the connection open, says so at once rather than wait for the end of the answer.
#[test]
fn status_refuses_an_answer_that_is_not_http_at_once() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut request = [0u8; 1024];
        let _ = std::io::Read::read(&mut stream, &mut request);
        let _ = stream.write_all(b"{\"error\":\"not valid JSON\",\"line\":1}\n");
        // Open until the client goes.
        let _ = std::io::Read::read(&mut stream, &mut request);
    });
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_buildstore"))
        .args(["status", "--metrics", &addr.to_string()])
        .output()
        .expect("status");
    assert_eq!(out.status.code(), Some(1));
    assert_says(&out, &format!("{addr} answered {{\"error\""));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "waited {:?}, as for an address that never answers",
        started.elapsed()
    );
    let _ = held.join();
}

/// A mongodb+srv URI whose DNS records cannot be found is said to be that, not a bad URI.
#[test]
fn a_mongodb_srv_uri_without_its_dns_records_says_so() {
    let db = Db::at("mongodb+srv://cluster0.example.invalid/builds".to_owned());
    let out = db.cmd().args(["export", "builds"]).output().expect("run");
    assert_says(
        &out,
        "cannot look up the DNS records of the mongodb+srv URI",
    );
}

/// A commit event of its own for each `i`: each makes one document in `repository`.
fn commit_line(i: u64) -> String {
    format!(
        r#"{{"type":"commit","master_id":"m","event_id":"c{i}","hash":"{i:040x}","repository_uri":"https://example.org/r.git","subject":"change {i}","author_name":"Dev","author_email":"dev@example.org","author_date":"2026-01-01T00:00:00Z","commiter_name":"Dev","commiter_email":"dev@example.org","commiter_date":"2026-01-01T00:00:00Z"}}"#
    )
}

/// SIGINT or SIGTERM while `ingest -` reads a live pipe stops the reading after the last whole
/// line and applies every line read, which could not be read from the pipe again. The command
/// says after which line it stopped, and ends with the status of a process that signal ended.
#[test]
fn a_signal_during_ingest_applies_every_line_read_and_says_where_it_stopped() {
    for (signal, status) in [("INT", 130), ("TERM", 143)] {
        let db = Db::new();
        let (mut ingest, mut pipe) = ingest_from_pipe(&db);
        // As fast as the pipe takes them: no pause, so lines are always on their way in.
        let feeder = std::thread::spawn(move || {
            for i in 0.. {
                if writeln!(pipe, "{}", commit_line(i)).is_err() {
                    return i;
                }
            }
            unreachable!()
        });
        // Once documents arrive, ingest has taken the signals over: it took them before it
        // read a line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        // (Looked at in the file: `export` of a collection growing at its end would not end.)
        let path = db.location.trim_start_matches("sqlite:").to_owned();
        let applied = || {
            rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| {
                    c.query_row("SELECT EXISTS (SELECT 1 FROM repository)", [], |r| {
                        r.get::<_, bool>(0)
                    })
                })
                .unwrap_or(false)
        };
        while !applied() {
            assert!(std::time::Instant::now() < deadline, "nothing applied");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        send_signal(&ingest, signal);
        let mut err = ingest.stderr.take().expect("stderr");
        let said = std::thread::spawn(move || {
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut said);
            said
        });
        let exit = loop {
            if let Some(exit) = ingest.try_wait().expect("wait") {
                break exit;
            }
            if std::time::Instant::now() > deadline {
                let _ = ingest.kill();
                panic!("SIG{signal}: ingest did not stop");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let said = said.join().expect("stderr");
        let sent = feeder.join().expect("feeder");
        assert_eq!(exit.code(), Some(status), "SIG{signal}: {said}");
        let lines: usize = said
            .split_once(&format!("stopped by SIG{signal} after line "))
            .and_then(|(_, rest)| rest.split(':').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("SIG{signal}: no line number in: {said}"));
        assert!(
            lines > 0 && (lines as u64) < sent,
            "{lines} of {sent}: {said}"
        );
        assert!(
            said.contains(&format!(
                "{lines} events applied, 0 duplicates skipped, 0 lines rejected"
            )),
            "{said}"
        );
        assert_eq!(
            db.export("repository").len(),
            lines,
            "SIG{signal}: every line read is in the store, and nothing after it"
        );
    }
}
