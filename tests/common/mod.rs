//! Helpers shared by the integration tests: the real `buildstore` binary run against a store,
//! and the example streams.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/events")
}

pub fn example(name: &str) -> PathBuf {
    examples().join(name)
}

pub fn example_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(examples())
        .expect("examples/events exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected the six example streams, found {files:?}"
    );
    files
}

/// The smallest build the rules accept, and a step of it.
pub const BUILD: &str =
    r#"{"type":"build_started","master_id":"m","builder":"b","build_id":1,"number":1,"time":0}"#;
pub const STEP: &str =
    r#"{"type":"step_started","master_id":"m","build_id":1,"step":0,"name":"s","time":1}"#;

/// A fresh SQLite store in a temporary directory.
pub struct Db {
    _dir: Option<tempfile::TempDir>,
    pub location: String,
}

impl Db {
    /// A fresh embedded store in a temporary directory.
    pub fn new() -> Db {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = format!("sqlite:{}", dir.path().join("store.db").display());
        Db {
            _dir: Some(dir),
            location,
        }
    }

    /// A store at `location`, e.g. a fresh MongoDB database.
    pub fn at(location: String) -> Db {
        Db {
            _dir: None,
            location,
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_buildstore"));
        c.env_remove("BUILDSTORE_STORE")
            .arg("--store")
            .arg(&self.location);
        c
    }

    pub fn ingest(&self, file: &Path, args: &[&str]) -> Output {
        self.cmd()
            .arg("ingest")
            .args(args)
            .arg(file)
            .output()
            .expect("run ingest")
    }

    pub fn ingest_ok(&self, file: &Path) {
        let out = self.ingest(file, &[]);
        assert!(
            out.status.success(),
            "ingest {} failed: {}",
            file.display(),
            stderr(&out)
        );
    }

    pub fn ingest_text(&self, text: &str, args: &[&str]) -> Output {
        let mut child = self
            .cmd()
            .arg("ingest")
            .args(args)
            .arg("-")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingest");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write stdin");
        child.wait_with_output().expect("wait ingest")
    }

    pub fn export_raw(&self, collection: &str) -> String {
        let out = self
            .cmd()
            .args(["export", collection])
            .output()
            .expect("run export");
        assert!(out.status.success(), "export failed: {}", stderr(&out));
        String::from_utf8(out.stdout).expect("utf-8 export")
    }

    pub fn export(&self, collection: &str) -> Vec<Value> {
        self.export_raw(collection)
            .lines()
            .map(|l| serde_json::from_str(l).expect("export lines are JSON"))
            .collect()
    }

    pub fn export_all(&self) -> String {
        ["builders", "builds", "steps", "repository"]
            .iter()
            .map(|c| format!("== {c}\n{}", self.export_raw(c)))
            .collect()
    }

    pub fn doc(&self, collection: &str, id: &str) -> Value {
        self.export(collection)
            .into_iter()
            .find(|d| d["_id"] == id)
            .unwrap_or_else(|| panic!("no {collection} document {id}"))
    }

    pub fn log(&self, step_id: &str, channel: &str) -> Output {
        self.cmd()
            .args(["log", step_id, channel])
            .output()
            .expect("run log")
    }
}

/// Sends the signal of that name (`TERM`, `INT`, ...) to `child`, without waiting for it.
pub fn send_signal(child: &std::process::Child, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status();
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Fails the test, showing what the command said, unless its standard error contains `text`.
#[track_caller]
pub fn assert_says(out: &Output, text: &str) {
    let said = stderr(out);
    assert!(said.contains(text), "expected {text:?} in: {said}");
}

pub fn events(file: &Path) -> Vec<Value> {
    std::fs::read_to_string(file)
        .expect("read stream")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("example lines are JSON"))
        .collect()
}

pub fn build_doc_id(e: &Value) -> String {
    let part = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
    format!("{}/{}", part(&e["master_id"]), part(&e["build_id"]))
}

pub fn write_lines(dir: &Path, name: &str, lines: &[impl AsRef<str>]) -> PathBuf {
    let path = dir.join(name);
    let mut text = lines
        .iter()
        .map(AsRef::as_ref)
        .collect::<Vec<&str>>()
        .join("\n");
    text.push('\n');
    std::fs::write(&path, text).expect("write stream");
    path
}
pub mod browser;
pub mod daemon;
pub mod mongo;
pub mod web;

/// Two lines, each with a bad value of 900,000 bytes: a `time` that is no time (refused as the
/// line is read), and a commit `hash` that is no hash (refused by the rules).
pub fn huge_bad_values() -> [String; 2] {
    [
        format!(
            r#"{{"type":"builder_added","master_id":"m","builder":"b","time":"{}"}}"#,
            "x".repeat(900_000)
        ),
        format!(
            r#"{{"type":"commit","master_id":"m","hash":"{}","repository_uri":"r","subject":"s","author_name":"a","author_email":"e","author_date":1,"commiter_name":"c","commiter_email":"e","commiter_date":1}}"#,
            "g".repeat(900_000)
        ),
    ]
}
