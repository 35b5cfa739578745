//! The SQLite store's own guarantees: batches applied twice, refused gaps, paging, upgrading an
//! older file, reads served by indexes.
use super::super::{BuildCursor, CommitCursor, ResultFilter};
use super::*;
use crate::core::{Core, CoreConfig, Mutation, SpoolProgress};
use crate::synth::{lines, Shape};
use buildstore_schema::Event;
use rusqlite::params_from_iter;

async fn export_all(store: &SqliteStore) -> Vec<Document> {
    let mut all = Vec::new();
    for c in Collection::ALL {
        all.extend(store.list(c, None, usize::MAX).await.unwrap());
    }
    all
}

/// Folds a generated stream into batches of `size` events.
fn batches(size: usize) -> Vec<Batch> {
    let stream = lines(&Shape {
        events: 3_000,
        log_chunk_bytes: 700,
        ..Shape::default()
    });
    let mut core = Core::new(CoreConfig {
        inline_limit: 1024,
        ..CoreConfig::default()
    });
    let now = chrono::Utc::now();
    stream
        .chunks(size)
        .map(|chunk| {
            let mut batch = Batch::default();
            for line in chunk {
                let event = Event::parse(line).unwrap();
                batch.mutations.extend(core.apply(&event, now).unwrap());
            }
            batch
        })
        .collect()
}

#[tokio::test]
async fn applying_every_batch_twice_gives_the_same_documents_as_once() {
    let dir = tempfile::tempdir().unwrap();
    let once = open_in(dir.path(), "once.db").await;
    let twice = open_in(dir.path(), "twice.db").await;
    let batches = batches(97);
    for b in &batches {
        once.apply(b.clone().into()).await.unwrap();
        twice.apply(b.clone().into()).await.unwrap();
        twice.apply(b.clone().into()).await.unwrap();
    }
    // And a whole replay after the fact, as after a crash before the confirmation.
    for b in &batches[batches.len() / 2..] {
        twice.apply(b.clone().into()).await.unwrap();
    }
    let a = export_all(&once).await;
    assert!(a.len() > 400);
    assert_eq!(a, export_all(&twice).await);
    let truncated = once
        .list(Collection::Steps, None, usize::MAX)
        .await
        .unwrap();
    assert!(truncated
        .iter()
        .any(|s| s.get_bool("log_truncated") == Ok(true)));
}

#[tokio::test]
async fn the_index_columns_agree_with_the_documents_after_any_batching() {
    // Small batches: a build's indexed fields (result, changeset, end) change in later batches
    // than the one that created it, and a write that leaves them alone skips the columns.
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    for b in &batches(7) {
        store.apply(b.clone().into()).await.unwrap();
    }
    let conn = store.conn.lock().unwrap();
    let mut finished = 0;
    for c in Collection::ALL {
        let cols = columns(c);
        let names: String = cols.iter().map(|n| format!(", {n}")).collect();
        let mut st = conn
            .prepare(&format!("SELECT _id, doc{names} FROM {c}"))
            .unwrap();
        let mut rows = st.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            let id: String = row.get(0).unwrap();
            let doc: Vec<u8> = row.get(1).unwrap();
            let kept: Vec<SqlValue> = (0..cols.len()).map(|i| row.get(i + 2).unwrap()).collect();
            assert_eq!(kept, column_values(c, cols, &id, &doc).unwrap(), "{c}/{id}");
            if c == Collection::Builds
                && kept[cols.iter().position(|n| *n == "result").unwrap()] != SqlValue::Null
            {
                finished += 1;
            }
        }
    }
    assert!(
        finished > 10,
        "builds finished after the batch that started them"
    );
}

#[tokio::test]
async fn a_log_chunk_that_would_leave_a_gap_is_refused_and_nothing_of_its_batch_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    let first = batches(10_000).remove(0);
    // Every log chunk but the first of each log: the store would have a gap at offset 0.
    let (logs, rest): (Vec<Mutation>, Vec<Mutation>) = first
        .mutations
        .into_iter()
        .partition(|m| matches!(m, Mutation::AppendLog { .. }));
    let logs: Vec<Mutation> = logs
        .into_iter()
        .filter(|m| matches!(m, Mutation::AppendLog { offset, .. } if *offset > 0))
        .collect();
    store
        .apply(Arc::new(Batch {
            mutations: rest,
            ..Batch::default()
        }))
        .await
        .unwrap();
    let before = export_all(&store).await;
    let err = store
        .apply(Arc::new(Batch {
            mutations: logs,
            events: vec!["k".into()],
            ..Batch::default()
        }))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LogConflict { .. }), "{err}");
    assert_eq!(export_all(&store).await, before);
    assert!(store
        .applied_events(&["k".into()])
        .await
        .unwrap()
        .applied
        .is_empty());
}

#[tokio::test]
async fn reads_page_by_id_and_filter_builds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    for b in batches(500) {
        store.apply(b.into()).await.unwrap();
    }
    let all = store
        .list(Collection::Builds, None, usize::MAX)
        .await
        .unwrap();
    let page = store
        .list(Collection::Builds, Some(all[9].get_str("_id").unwrap()), 5)
        .await
        .unwrap();
    assert_eq!(page, all[10..15].to_vec());
    let q = BuildQuery {
        builder: Some("docs".into()),
        limit: 3,
        ..BuildQuery::default()
    };
    let found = store.find_builds(&q, |_| {}).await.unwrap();
    assert!(!found.is_empty() && found.len() <= 3);
    assert!(found.iter().all(|b| b.get_str("builder") == Ok("docs")));
    let times: Vec<_> = found
        .iter()
        .map(|b| b.get_datetime("time_start").unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
}

/// The layout of version 1, as a store file written then has it.
const LAYOUT_1: &str = "
    CREATE TABLE log_chunks (
        step_id TEXT NOT NULL, channel TEXT NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL,
        PRIMARY KEY (step_id, channel, offset)) WITHOUT ROWID;
    CREATE TABLE applied_events (key TEXT PRIMARY KEY) WITHOUT ROWID;
    CREATE TABLE builders (_id TEXT PRIMARY KEY, doc BLOB NOT NULL, master_id, name);
    CREATE TABLE builds (_id TEXT PRIMARY KEY, doc BLOB NOT NULL, builder, number, changeset, time_start);
    CREATE TABLE steps (_id TEXT PRIMARY KEY, doc BLOB NOT NULL, build, step);
    CREATE TABLE repository (_id TEXT PRIMARY KEY, doc BLOB NOT NULL, commiter_date);
    CREATE INDEX builders_master_id ON builders (master_id, name);
    CREATE INDEX builds_builder_number ON builds (builder, number DESC);
    CREATE INDEX builds_changeset ON builds (changeset);
    CREATE INDEX builds_time_start ON builds (time_start DESC);
    CREATE INDEX steps_build ON steps (build, step);
    CREATE INDEX repository_commiter_date ON repository (commiter_date DESC);
    PRAGMA user_version = 1;";

fn build_doc(id: &str, master: Bson, branch: &str, result: Option<i32>, start: i64) -> Document {
    bson::doc! {
        "_id": id, "builder": "linux", "number": 1_i64, "changeset": Bson::Null,
        "time_start": bson::DateTime::from_millis(start), "time_end": Bson::Null,
        "result": result, "slaves": [], "steps": [], "master_id": master, "build_id": 1_i64,
        "branch": branch, "repository": Bson::Null, "codebase": Bson::Null, "reason": Bson::Null,
        "properties": {}, "changes": [],
    }
}

/// The `_id`s of the builds `f` asks for, at most ten.
async fn found(store: &SqliteStore, f: impl FnOnce(&mut BuildQuery)) -> Vec<String> {
    let mut q = BuildQuery {
        limit: 10,
        ..BuildQuery::default()
    };
    f(&mut q);
    let docs = store.find_builds(&q, |_| {}).await.unwrap();
    docs.iter()
        .map(|d| d.get_str("_id").unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_version_1_file_gains_the_new_columns_and_its_builds_are_found_by_master_branch_and_result(
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    {
        let old = Connection::open(&path).unwrap();
        old.execute_batch(LAYOUT_1).unwrap();
        for doc in [
            build_doc("7/1", Bson::Int64(7), "main", None, 2_000),
            build_doc("m2/1", Bson::String("m2".into()), "release", Some(2), 1_000),
        ] {
            let start = doc.get_datetime("time_start").unwrap().timestamp_millis();
            old.execute(
                "INSERT INTO builds (_id, doc, builder, number, changeset, time_start)
                 VALUES (?1, ?2, 'linux', 1, NULL, ?3)",
                params![
                    doc.get_str("_id").unwrap(),
                    bson::to_vec(&doc).unwrap(),
                    start
                ],
            )
            .unwrap();
        }
    }
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    assert_eq!(
        found(&store, |q| q.master = Some("7".into())).await,
        ["7/1"]
    );
    assert_eq!(
        found(&store, |q| q.master = Some("m2".into())).await,
        ["m2/1"]
    );
    let release = found(&store, |q| q.branch = Some("release".into())).await;
    assert_eq!(release, ["m2/1"]);
    let running = found(&store, |q| q.result = Some(ResultFilter::Running)).await;
    assert_eq!(running, ["7/1"]);
    let failed = found(&store, |q| q.result = Some(ResultFilter::Finished(2))).await;
    assert_eq!(failed, ["m2/1"]);
    assert_eq!(found(&store, |_| {}).await, ["7/1", "m2/1"]);
    drop(store);
    // Opening the upgraded file again changes nothing.
    let store = SqliteStore::open(path.to_str().unwrap()).await.unwrap();
    let conn = store.conn.lock().unwrap();
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, LAYOUT_VERSION);
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'builds'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for spec in INDEXES
        .iter()
        .filter(|s| s.collection == Collection::Builds)
    {
        let name = format!("builds_{}", spec.name);
        assert!(indexes.contains(&name), "{name} missing: {indexes:?}");
    }
}

/// How SQLite would run `select`: one line per step of its plan.
fn plan(conn: &Connection, select: &queries::Select) -> String {
    let mut st = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", select.sql))
        .unwrap();
    let lines: Vec<String> = st
        .query_map(params_from_iter(&select.values), |r| r.get(3))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    lines.join(" | ")
}

/// Each listing read walks one index in its order, `_id` tie-break included, and stops at the
/// limit: SQLite sorts nothing ("TEMP B-TREE") and never scans the table itself.
#[tokio::test]
async fn listing_reads_walk_an_index_in_order_instead_of_sorting_what_they_match() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    let conn = store.conn.lock().unwrap();
    let t = bson::DateTime::from_millis(1_000);
    let after = Some(BuildCursor {
        time_start: t,
        id: "m/1".into(),
    });
    fn builds(f: impl FnOnce(&mut BuildQuery)) -> queries::Select {
        let mut q = BuildQuery {
            limit: 50,
            ..BuildQuery::default()
        };
        f(&mut q);
        queries::builds(&q)
    }
    let cases = [
        ("builds_time_start_id", builds(|_| {})),
        (
            "builds_time_start_id",
            builds(|q| {
                q.since = Some(bson::DateTime::from_millis(0));
                q.before = after.clone();
            }),
        ),
        (
            "builds_master_time",
            builds(|q| q.master = Some("m".into())),
        ),
        (
            "builds_master_time",
            builds(|q| q.master = Some("7".into())),
        ),
        (
            "builds_master_builder_time",
            builds(|q| {
                q.master = Some("7".into());
                q.builder = Some("linux".into());
            }),
        ),
        (
            "builds_branch_time",
            builds(|q| q.branch = Some("main".into())),
        ),
        (
            "builds_changeset_time",
            builds(|q| {
                q.branch = Some("main".into());
                q.changeset = Some("abc".into());
            }),
        ),
        (
            "builds_builder_time",
            builds(|q| q.builder = Some("linux".into())),
        ),
        (
            "builds_result_time",
            builds(|q| q.result = Some(ResultFilter::Running)),
        ),
        (
            "builds_result_time",
            builds(|q| q.result = Some(ResultFilter::Finished(2))),
        ),
        ("steps_build", queries::steps("m/1", 50)),
        (
            "repository_commiter_date_id",
            queries::undated_commits(
                Some(&CommitCursor {
                    commiter_date: None,
                    id: "ab".into(),
                }),
                50,
            ),
        ),
        (
            "repository_commiter_date_id",
            queries::dated_commits(&CommitQuery {
                before: Some(CommitCursor {
                    commiter_date: Some(t),
                    id: "ab".into(),
                }),
                limit: 50,
            })
            .unwrap(),
        ),
    ];
    for (index, select) in &cases {
        let plan = plan(&conn, select);
        assert!(
            plan.split(|c: char| c.is_whitespace() || c == '|')
                .any(|word| word == *index),
            "{}: {plan}",
            select.sql
        );
        assert!(!plan.contains("TEMP B-TREE"), "{}: {plan}", select.sql);
        assert!(
            !plan
                .split(" | ")
                .any(|step| step.starts_with("SCAN") && !step.contains("INDEX")),
            "{}: {plan}",
            select.sql
        );
    }
    // With the cursor the walk starts at the cursor's time, not at the newest build.
    let paged = plan(
        &conn,
        &builds(|q| {
            q.branch = Some("main".into());
            q.before = after;
        }),
    );
    assert!(paged.contains("(branch=? AND time_start<?)"), "{paged}");
}

/// `export` and the web view open the store while the daemon writes to it: an open that
/// committed anything made the daemon's batch in progress fail and retry.
#[tokio::test]
async fn opening_a_store_at_the_current_layout_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let path = path.to_str().unwrap();
    let writer = SqliteStore::open(path).await.unwrap();
    for batch in batches(500) {
        writer.apply(Arc::new(batch)).await.unwrap();
    }
    let conn = rusqlite::Connection::open(path).unwrap();
    let data_version = |conn: &rusqlite::Connection| -> i64 {
        conn.pragma_query_value(None, "data_version", |r| r.get(0))
            .unwrap()
    };
    let before = data_version(&conn);
    let reader = SqliteStore::open(path).await.unwrap();
    assert_eq!(data_version(&conn), before, "the open committed a change");
    assert_eq!(export_all(&reader).await, export_all(&writer).await);
}

/// A new store file, closed again, and a plain connection to it.
async fn new_store_file(dir: &tempfile::TempDir) -> (String, rusqlite::Connection) {
    let path = dir.path().join("store.db").to_str().unwrap().to_owned();
    drop(SqliteStore::open(&path).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    (path, conn)
}

/// Some indexes came without a new layout version, so an open that skipped every file at this
/// version would leave them out, and a query naming one would fail.
#[tokio::test]
async fn a_missing_index_is_made_at_the_open_of_a_file_at_this_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (path, conn) = new_store_file(&dir).await;
    let path = path.as_str();
    conn.execute_batch("DROP INDEX builds_changeset_time")
        .unwrap();
    let store = SqliteStore::open(path).await.unwrap();
    let query = BuildQuery {
        changeset: Some("eb57b4930f682387ca57a2506b1dbd03f5144c04".into()),
        limit: 10,
        ..BuildQuery::default()
    };
    assert_eq!(
        store.find_builds(&query, |_| {}).await.unwrap(),
        Vec::<Document>::new()
    );
    let count: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'builds_changeset_time'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(count, 1);
}

/// The spool's progress came without a new layout version: a file made before it is not written
/// to at its open (a reader's open must not write), has no progress, and gains the table with
/// the first batch that records some; each spool's last batch is what it holds.
#[tokio::test]
async fn a_file_without_spool_progress_gains_it_with_the_first_batch_that_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let (path, conn) = new_store_file(&dir).await;
    conn.execute_batch("DROP TABLE spool_progress").unwrap();
    let data_version = || -> i64 {
        conn.pragma_query_value(None, "data_version", |r| r.get(0))
            .unwrap()
    };
    let before = data_version();
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(data_version(), before, "the open wrote to the file");
    assert_eq!(store.spool_progress("a").await.unwrap(), None);
    let at = |spool: &str, through, last: Option<(i64, &str)>| SpoolProgress {
        spool: spool.into(),
        through,
        last: last.map(|(id, key)| (id, key.to_owned())),
    };
    let recorded = [
        at("a", 40, Some((39, "m/e39"))),
        at("b", 7, None),
        at("a", 44, Some((44, "m/e44"))),
    ];
    for p in &recorded {
        let batch = Batch {
            progress: Some(p.clone()),
            ..Batch::default()
        };
        store.apply(Arc::new(batch)).await.unwrap();
    }
    assert_eq!(
        store.spool_progress("a").await.unwrap().as_ref(),
        Some(&recorded[2])
    );
    assert_eq!(
        store.spool_progress("b").await.unwrap().as_ref(),
        Some(&recorded[1])
    );
}

#[tokio::test]
async fn a_file_of_a_newer_layout_is_refused_not_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (path, conn) = new_store_file(&dir).await;
    let path = path.as_str();
    conn.pragma_update(None, "user_version", LAYOUT_VERSION + 1)
        .unwrap();
    conn.pragma_update(None, "journal_mode", "DELETE").unwrap();
    let Err(err) = SqliteStore::open(path).await else {
        panic!("a newer file was opened")
    };
    assert_eq!(
        err.to_string(),
        format!(
            "sqlite store {path}: written by a newer buildstore (layout {}; this one knows up to \
             {LAYOUT_VERSION}); use that version, or a new store file",
            LAYOUT_VERSION + 1
        )
    );
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, LAYOUT_VERSION + 1);
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "delete");
}
