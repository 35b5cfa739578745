//! The listing reads behind the web view (`find_builds`, `build_steps`, `find_commits`) give the
//! same answers on every store. The expected answers are written out in full: the fixture is
//! small enough to sort by hand.

use std::rc::Rc;

use bson::Document;
use buildstore::store::{
    self, BuildCursor, BuildQuery, CommitCursor, CommitQuery, ResultFilter, Store,
};
use serde_json::{json, Value};

use crate::common::{stderr, Db};

/// The epoch second that the fixture's times count from.
const T0: i64 = 1_800_000_000;

/// A build of the fixture: master (as JSON, so `7` is an integer and `"7"` a string), build id,
/// builder, branch, start (seconds after [`T0`]) and result (`None`: still running).
type Build = (
    &'static str,
    u32,
    &'static str,
    &'static str,
    i64,
    Option<i32>,
);

/// Several builds start at the same second, so that their order rests on the `_id` tie-break.
const BUILDS: &[Build] = &[
    ("7", 1, "linux", "main", 0, Some(0)),
    (r#""7""#, 2, "linux", "main", 0, Some(2)),
    (r#""m2""#, 3, "mac", "release", 0, None),
    ("7", 4, "mac", "release", 30, Some(2)),
    (r#""m2""#, 5, "linux", "main", 60, None),
    (r#""7""#, 6, "mac", "main", 60, Some(0)),
    ("7", 7, "linux", "release", 90, Some(1)),
    (r#""07""#, 8, "linux", "main", 90, Some(0)),
    ("70", 9, "mac", "main", 120, Some(2)),
    (r#""m2""#, 10, "linux", "release", 150, Some(0)),
];

/// Every build of the fixture, newest first, ties by `_id` descending.
const NEWEST_FIRST: [&str; 10] = [
    "m2/10", "70/9", "7/7", "07/8", "m2/5", "7/6", "7/4", "m2/3", "7/2", "7/1",
];

/// Steps of build `7/1`, in the order they start.
const STEPS_STARTED: [u32; 5] = [2, 0, 11, 1, 10];

/// `commit` events: which hash, and its `commiter_date` (seconds after [`T0`]). Equal dates are
/// ordered by `_id`. The finished builds 7 to 10 link their commits, which no event describes.
const COMMITS: [(u32, i64); 5] = [(1, 10), (2, 10), (4, 20), (100, 20), (6, 30)];

/// The full commit hash the fixture uses for `n`; hashes sort as their numbers do.
fn hash(n: u32) -> String {
    format!("{n:0>40}")
}

fn stream() -> String {
    let mut events = Vec::new();
    for &(master, build, builder, branch, start, result) in BUILDS {
        let master: Value = serde_json::from_str(master).expect("master as JSON");
        events.push(
            json!({"type": "build_started", "master_id": master, "build_id": build,
            "builder": builder, "number": build, "branch": branch, "changeset": hash(build),
            "repository": "https://example.org/p.git", "time": T0 + start}),
        );
        let steps: &[u32] = match build {
            1 => &STEPS_STARTED,
            4 => &[0],
            _ => &[],
        };
        for &step in steps {
            events.push(
                json!({"type": "step_started", "master_id": master, "build_id": build,
                "step": step, "name": format!("step {step}"), "time": T0 + start + 1}),
            );
        }
        if let Some(result) = result {
            events.push(json!({"type": "build_finished", "master_id": master,
                "build_id": build, "result": result, "time": T0 + start + 20}));
        }
    }
    for (n, date) in COMMITS {
        events.push(json!({"type": "commit", "master_id": "m2", "hash": hash(n),
            "repository_uri": "https://example.org/p.git", "subject": format!("change {n}"),
            "author_name": "Dev", "author_email": "dev@example.org", "author_date": T0 + date,
            "commiter_name": "Dev", "commiter_email": "dev@example.org",
            "commiter_date": T0 + date}));
    }
    events.iter().map(|e| format!("{e}\n")).collect()
}

/// A store holding the fixture, opened through the library and read synchronously.
struct Opened {
    location: String,
    store: Box<dyn Store>,
    rt: Rc<tokio::runtime::Runtime>,
}

impl Opened {
    fn builds(&self, q: &BuildQuery) -> Vec<String> {
        let found = self.rt.block_on(self.store.find_builds(q, |_| {}));
        ids(&found.expect("find_builds"))
    }

    fn steps(&self, build: &str, limit: usize) -> Vec<i64> {
        let found = self
            .rt
            .block_on(self.store.build_steps(build, limit, |_| {}));
        found
            .expect("build_steps")
            .iter()
            .map(|s| s.get_i64("step").expect("step number"))
            .collect()
    }

    fn commits(&self, q: &CommitQuery) -> Vec<Document> {
        self.rt
            .block_on(self.store.find_commits(q))
            .expect("find_commits")
    }
}

fn ids(docs: &[Document]) -> Vec<String> {
    docs.iter()
        .map(|d| d.get_str("_id").expect("_id").to_owned())
        .collect()
}

/// The fixture ingested into a fresh SQLite store and a fresh MongoDB database. The [`Db`]s are
/// kept alongside because the SQLite file lives as long as its `Db`.
fn stores() -> (Vec<Db>, Vec<Opened>) {
    let text = stream();
    let dbs = vec![Db::new(), super::mongo("listing")];
    let rt = Rc::new(tokio::runtime::Runtime::new().expect("runtime"));
    let opened = dbs
        .iter()
        .map(|db| {
            let out = db.ingest_text(&text, &[]);
            assert!(out.status.success(), "{}: {}", db.location, stderr(&out));
            let store = rt.block_on(store::open(&db.location)).expect("open");
            Opened {
                location: db.location.clone(),
                store,
                rt: Rc::clone(&rt),
            }
        })
        .collect();
    (dbs, opened)
}

fn query(limit: usize, f: impl FnOnce(&mut BuildQuery)) -> BuildQuery {
    let mut q = BuildQuery {
        limit,
        ..BuildQuery::default()
    };
    f(&mut q);
    q
}

fn at(seconds: i64) -> bson::DateTime {
    bson::DateTime::from_millis((T0 + seconds) * 1000)
}

/// Every page of `q`, each continuing from the last build of the one before.
fn build_pages(s: &Opened, mut q: BuildQuery) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..=NEWEST_FIRST.len() {
        let found =
            s.rt.block_on(s.store.find_builds(&q, |_| {}))
                .expect("find_builds");
        assert!(found.len() <= q.limit, "{}: a page too long", s.location);
        seen.extend(ids(&found));
        let Some(last) = found.last().filter(|_| found.len() == q.limit) else {
            return seen;
        };
        q.before = Some(BuildCursor {
            time_start: *last.get_datetime("time_start").expect("time_start"),
            id: last.get_str("_id").expect("_id").to_owned(),
        });
    }
    panic!("{}: the pages never end: {seen:?}", s.location);
}

#[test]
fn pages_of_builds_taken_with_the_cursor_visit_every_build_once_newest_first_on_both_stores() {
    let (_dbs, stores) = stores();
    let of_master_7 = ["7/7", "7/6", "7/4", "7/2", "7/1"];
    let on_main = ["70/9", "07/8", "m2/5", "7/6", "7/2", "7/1"];
    for s in &stores {
        assert_eq!(
            s.builds(&query(100, |_| {})),
            NEWEST_FIRST,
            "{}",
            s.location
        );
        for limit in 1..=4 {
            let all = build_pages(s, query(limit, |_| {}));
            assert_eq!(all, NEWEST_FIRST, "{} by {limit}", s.location);
            let master = build_pages(s, query(limit, |q| q.master = Some("7".into())));
            assert_eq!(master, of_master_7, "{} by {limit}", s.location);
            let main = build_pages(s, query(limit, |q| q.branch = Some("main".into())));
            assert_eq!(main, on_main, "{} by {limit}", s.location);
        }
    }
}

#[test]
fn a_master_id_given_as_text_matches_an_integer_and_a_string_master_id() {
    let (_dbs, stores) = stores();
    let master = |m: &str| query(100, |q| q.master = Some(m.into()));
    for s in &stores {
        // 7/1, 7/4 and 7/7 have the integer 7; 7/2 and 7/6 the string "7".
        let seven = ["7/7", "7/6", "7/4", "7/2", "7/1"];
        assert_eq!(s.builds(&master("7")), seven, "{}", s.location);
        // Only the text an integer prints as names it: "07" is the string master alone.
        assert_eq!(s.builds(&master("07")), ["07/8"], "{}", s.location);
        assert_eq!(s.builds(&master("70")), ["70/9"], "{}", s.location);
        let m2 = ["m2/10", "m2/5", "m2/3"];
        assert_eq!(s.builds(&master("m2")), m2, "{}", s.location);
        assert!(s.builds(&master("8")).is_empty(), "{}", s.location);
    }
}

#[test]
fn running_builds_are_found_by_result_running_and_finished_ones_by_their_code() {
    let (_dbs, stores) = stores();
    let result = |r: ResultFilter| query(100, |q| q.result = Some(r));
    for s in &stores {
        let running = s.builds(&result(ResultFilter::Running));
        assert_eq!(running, ["m2/5", "m2/3"], "{}", s.location);
        let success = s.builds(&result(ResultFilter::Finished(0)));
        assert_eq!(success, ["m2/10", "07/8", "7/6", "7/1"], "{}", s.location);
        let warnings = s.builds(&result(ResultFilter::Finished(1)));
        assert_eq!(warnings, ["7/7"], "{}", s.location);
        let failed = s.builds(&result(ResultFilter::Finished(2)));
        assert_eq!(failed, ["70/9", "7/4", "7/2"], "{}", s.location);
        assert!(s.builds(&result(ResultFilter::Finished(4))).is_empty());
    }
}

#[test]
fn builds_are_filtered_by_builder_branch_changeset_and_a_window_that_includes_its_start_only() {
    let (_dbs, stores) = stores();
    for s in &stores {
        let mac = s.builds(&query(100, |q| q.builder = Some("mac".into())));
        assert_eq!(mac, ["70/9", "7/6", "7/4", "m2/3"], "{}", s.location);
        let release = s.builds(&query(100, |q| q.branch = Some("release".into())));
        assert_eq!(release, ["m2/10", "7/7", "7/4", "m2/3"], "{}", s.location);
        let of_hash = s.builds(&query(100, |q| q.changeset = Some(hash(4))));
        assert_eq!(of_hash, ["7/4"], "{}", s.location);
        let window = s.builds(&query(100, |q| {
            q.since = Some(at(60));
            q.until = Some(at(120));
        }));
        assert_eq!(window, ["7/7", "07/8", "m2/5", "7/6"], "{}", s.location);
        let all_at_once = s.builds(&query(100, |q| {
            q.master = Some("7".into());
            q.builder = Some("linux".into());
            q.branch = Some("main".into());
            q.result = Some(ResultFilter::Finished(2));
            q.until = Some(at(30));
        }));
        assert_eq!(all_at_once, ["7/2"], "{}", s.location);
        assert_eq!(
            s.builds(&query(2, |_| {})),
            NEWEST_FIRST[..2],
            "{}",
            s.location
        );
        assert!(s.builds(&query(0, |_| {})).is_empty(), "{}", s.location);
    }
}

#[test]
fn a_builds_steps_come_in_step_order_up_to_the_limit() {
    let (_dbs, stores) = stores();
    for s in &stores {
        assert_eq!(s.steps("7/1", 100), [0, 1, 2, 10, 11], "{}", s.location);
        assert_eq!(s.steps("7/1", 3), [0, 1, 2], "{}", s.location);
        assert_eq!(s.steps("7/4", 100), [0], "{}", s.location);
        assert!(s.steps("7/2", 100).is_empty(), "{}", s.location);
        assert!(s.steps("7/1", 0).is_empty(), "{}", s.location);
        // What the reader does to each document as it is read is in what it gets, for each one.
        let marked =
            s.rt.block_on(s.store.build_steps("7/1", 100, |d| {
                d.insert("name", "seen as read");
            }))
            .expect("build_steps");
        assert_eq!(marked.len(), 5, "{}", s.location);
        for d in &marked {
            assert_eq!(d.get_str("name"), Ok("seen as read"), "{}", s.location);
        }
    }
}

/// Every page of commits, each continuing from the last commit of the one before.
fn commit_pages(s: &Opened, limit: usize) -> Vec<String> {
    let mut q = CommitQuery {
        before: None,
        limit,
    };
    let mut seen = Vec::new();
    for _ in 0..=20 {
        let found = s.commits(&q);
        assert!(found.len() <= limit, "{}: a page too long", s.location);
        seen.extend(ids(&found));
        let Some(last) = found.last().filter(|_| found.len() == limit) else {
            return seen;
        };
        q.before = Some(CommitCursor {
            commiter_date: last.get_datetime("commiter_date").ok().copied(),
            id: last.get_str("_id").expect("_id").to_owned(),
        });
    }
    panic!("{}: the pages never end: {seen:?}", s.location);
}

#[test]
fn commits_come_newest_first_and_commits_without_metadata_come_last() {
    let (_dbs, stores) = stores();
    let expected: Vec<String> = [6, 100, 4, 2, 1, 10, 9, 8, 7].map(hash).to_vec();
    for s in &stores {
        let all = s.commits(&CommitQuery {
            before: None,
            limit: 100,
        });
        assert_eq!(ids(&all), expected, "{}", s.location);
        let undated: Vec<bool> = all
            .iter()
            .map(|c| !c.contains_key("commiter_date"))
            .collect();
        assert_eq!(
            undated,
            [false, false, false, false, false, true, true, true, true]
        );
        for limit in 1..=4 {
            let pages = commit_pages(s, limit);
            assert_eq!(pages, expected, "{} by {limit}", s.location);
        }
    }
}
