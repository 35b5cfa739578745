//! Integration tests: the places a store may be. A path that cannot hold a store is refused in
//! words that say why, and another program's database, named by mistake, is refused by every
//! command and left byte for byte as it was.

mod common;

use std::process::Command;

use common::*;

/// Places that cannot hold a store are refused in words that say why, by writers and readers,
/// and leave no lock file behind; a symbolic link to a store not made yet is where it is made.
#[test]
fn a_store_path_that_cannot_hold_a_store_is_refused_in_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let at = |name: &str| dir.path().join(name);
    let fifo = at("fifo.db");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    std::os::unix::fs::symlink("/no/such/dir/x.db", at("nowhere.db")).expect("link");
    std::os::unix::fs::symlink(at("loop2.db"), at("loop1.db")).expect("link");
    std::os::unix::fs::symlink(at("loop1.db"), at("loop2.db")).expect("link");
    let not_regular = "it is not a regular file (a device, a FIFO or a socket)";
    let cases = [
        ("sqlite:".to_owned(), "names no file: write sqlite:PATH"),
        ("sqlite:/dev/null".to_owned(), not_regular),
        (format!("sqlite:{}", fifo.display()), not_regular),
        (
            format!("sqlite:{}", at("nowhere.db").display()),
            "it is a symbolic link to /no/such/dir/x.db, and its directory /no/such/dir does not exist",
        ),
        (
            format!("sqlite:{}", at("loop1.db").display()),
            "it is a symbolic link that leads to no file",
        ),
    ];
    for (location, says) in cases {
        let db = Db::at(location.clone());
        let out = db.ingest_text("", &[]);
        assert_says(&out, says);
        assert!(!out.status.success(), "{location}");
        let out = db.cmd().args(["export", "builds"]).output().expect("run");
        assert_says(&out, says);
        assert!(!out.status.success(), "{location}: export");
    }
    let mut left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["fifo.db", "loop1.db", "loop2.db", "nowhere.db"],
        "no lock file or store made"
    );

    std::fs::create_dir(at("data")).expect("mkdir");
    std::os::unix::fs::symlink(at("data/builds.db"), at("link.db")).expect("link");
    let db = Db::at(format!("sqlite:{}", at("link.db").display()));
    let out = db.ingest_text("", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        at("data/builds.db").is_file(),
        "the store is made where the link leads"
    );
}

/// A database of another program named by mistake is refused by every command, readers and
/// writers alike, and left byte for byte as it was: its write-ahead log not checkpointed, no
/// tables added, no lock file made beside it, its own `user_version` not taken for a layout.
#[test]
fn a_database_of_another_program_is_refused_and_left_as_it_was() {
    refused_and_left_as_it_was(
        "CREATE TABLE accounts (id INTEGER, name TEXT); INSERT INTO accounts VALUES (1, 'x');",
    );
}

/// A table of its own named `builds` does not make another program's database a store.
#[test]
fn a_database_of_another_program_with_a_builds_table_is_refused_too() {
    refused_and_left_as_it_was(
        "CREATE TABLE builds (id INTEGER, name TEXT); INSERT INTO builds VALUES (1, 'x');",
    );
}

fn refused_and_left_as_it_was(tables: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("accounts.db");
    // Held open, so that its last write stays in the write-ahead log.
    let owner = rusqlite::Connection::open(&path).expect("open");
    owner
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; PRAGMA user_version = 7;
             {tables}"
        ))
        .expect("a table of its own");
    let files = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").path())
            // The shared-memory index of the log is rewritten by every reader, SQLite's own
            // doing; the database and its log are what must not change.
            .filter(|p| !p.to_string_lossy().ends_with("-shm"))
            .collect();
        names.sort();
        names
            .into_iter()
            .map(|p| (p.clone(), std::fs::read(&p).expect("read")))
            .collect::<Vec<_>>()
    };
    let before = files();
    let db = Db::at(format!("sqlite:{}", path.display()));
    let nightly = example("nightly.jsonl");
    let ingest = ["ingest", nightly.to_str().expect("utf-8 path")];
    for args in [
        &["export", "builds"][..],
        &["log", "m/1/0", "stdout"],
        &["init"],
        &ingest,
    ] {
        let out = db.cmd().args(args).output().expect("run");
        assert_says(&out, "the file holds tables, but not a buildstore store's");
        assert!(!out.status.success(), "{args:?}");
        assert!(files() == before, "{args:?} changed the files");
    }
    drop(owner);
}
