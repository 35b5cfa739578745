//! The spool's promises: order, durability across reopening, release only of what was confirmed,
//! group commits, the in-memory handoff, and backpressure instead of silent drops.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use buildstore_schema::Event;

use super::*;

fn lines(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{{\"n\":{i}}}")).collect()
}

fn event(i: usize) -> Event {
    Event::parse(&format!(
        r#"{{"type":"builder_state","master_id":"m","event_id":"e{i}","builder":"b","state":"idle"}}"#
    ))
    .expect("a valid event")
}

/// A writer on `spool` that counts the bytes it holds in `held`, up to `limit`.
fn writer(
    spool: &Spool,
    held: &Arc<AtomicU64>,
    limit: u64,
) -> (Appender, tokio::task::JoinHandle<()>) {
    let handoff = Arc::new(Handoff::new(usize::MAX));
    Appender::start(spool.clone(), handoff, Arc::clone(held), limit)
}

fn text(read: &[Spooled]) -> Vec<String> {
    read.iter().map(|s| s.line.clone()).collect()
}

#[test]
fn events_come_out_in_order_and_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.append(&lines(3)).unwrap();
    let second = spool.append(&lines(5)[3..]).unwrap();
    assert_eq!(second, first + 3, "ids run on from group to group");
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let got = spool.read(first, 100, usize::MAX).unwrap();
    assert_eq!(text(&got), lines(5));
    assert_eq!(
        got.iter().map(|s| s.id).collect::<Vec<_>>(),
        (first..first + 5).collect::<Vec<_>>()
    );
    assert_eq!(
        spool.depth(),
        Depth {
            events: 5,
            bytes: lines(5).iter().map(|l| l.len() as u64).sum()
        }
    );
    assert_eq!(spool.next_id(), first + 5);
}

#[test]
fn a_read_may_start_and_end_inside_a_group() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.append(&lines(6)).unwrap();
    let got = spool.read(first + 2, 3, usize::MAX).unwrap();
    assert_eq!(text(&got), lines(6)[2..5].to_vec());
    assert_eq!(got[0].id, first + 2);
}

#[test]
fn release_frees_whole_groups_and_a_reopened_spool_goes_on_after_what_was_released() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.append(&lines(2)).unwrap();
    let second = spool.append(&lines(2)).unwrap();
    let freed = spool.release(second).unwrap();
    assert_eq!(
        freed,
        (lines(2)[0].len() + lines(2)[1].len()) as u64,
        "the first group only: the second is confirmed in part"
    );
    assert_eq!(spool.oldest().unwrap(), Some(second + 1));
    assert_eq!(text(&spool.read(first, 10, usize::MAX).unwrap()), lines(2));
    drop(spool);
    // A start after a crash takes up the group where the store's confirmations left it.
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.oldest().unwrap(), Some(second + 1));
    spool.release(second + 1).unwrap();
    assert_eq!(spool.oldest().unwrap(), None);
    assert_eq!(spool.depth(), Depth::default());
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    let next = spool.append(&lines(1)).unwrap();
    assert!(
        next > second + 1,
        "a released id is never handed out again, even by a reopened spool"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_appends_are_durable_and_handed_over_in_id_order() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let handoff = Arc::new(Handoff::new(usize::MAX));
    let (appender, _task) = Appender::start(
        spool.clone(),
        Arc::clone(&handoff),
        Arc::new(AtomicU64::new(0)),
        u64::MAX,
    );
    let mut tasks = Vec::new();
    for i in 0..500 {
        let a = appender.clone();
        tasks.push(tokio::spawn(async move {
            (a.append(event(i), event(i).to_line()).await.unwrap(), i)
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    assert_eq!(ids.len(), 500);
    assert!(ids.windows(2).all(|w| w[1].0 == w[0].0 + 1), "no id twice");
    assert_eq!(spool.depth().events, 500);

    let handed = handoff.take(ids[0].0, 1000);
    assert_eq!(
        handed.len(),
        500,
        "the durable events are waiting in memory"
    );
    for ((id, e), (spooled, i)) in handed.iter().zip(&ids) {
        assert_eq!((id, e), (spooled, &event(*i)));
    }
    // And the file holds the same events, as the drain would read them after a restart.
    let read = spool.read(ids[0].0, 1000, usize::MAX).unwrap();
    for (s, (id, e)) in read.iter().zip(&handed) {
        assert_eq!((&s.id, &Event::parse(&s.line).unwrap()), (id, e));
    }
}

#[tokio::test]
async fn past_the_limit_appends_are_refused_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let held = Arc::new(AtomicU64::new(0));
    let one = event(0).to_line().len() as u64;
    let (appender, _task) = writer(&spool, &held, one * 2 + one / 2);
    let first = appender.append(event(0), event(0).to_line()).await.unwrap();
    appender.append(event(1), event(1).to_line()).await.unwrap();
    let err = appender
        .append(event(2), event(2).to_line())
        .await
        .unwrap_err();
    assert!(
        matches!(err, AppendError::Full(SpoolFull { held, .. }) if held == one * 2),
        "{err}"
    );
    assert!(err.to_string().contains("the spool is full"));
    assert_eq!(
        spool.depth().events,
        2,
        "the refused line is not in the spool"
    );
    held.fetch_sub(spool.release(first).unwrap(), Ordering::Relaxed);
    appender.append(event(2), event(2).to_line()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submitted_run_gets_consecutive_ids_as_far_as_it_fits() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let run = |from: usize, n: usize| -> Vec<(Event, String)> {
        (from..from + n)
            .map(|i| (event(i), event(i).to_line()))
            .collect()
    };
    let bytes = |events: Vec<(Event, String)>| -> u64 {
        events.iter().map(|(_, line)| line.len() as u64).sum()
    };
    // Room for events 0 to 79, then for 100 to 119.
    let limit = bytes(run(0, 80)) + bytes(run(100, 20));
    let (appender, _task) = writer(&spool, &Arc::new(AtomicU64::new(0)), limit);
    // Runs submitted at the same time share group commits but are never interleaved.
    let mut tasks = Vec::new();
    for r in 0..8 {
        let a = appender.clone();
        let mut events = run(r * 10, 10);
        tasks.push(tokio::spawn(async move {
            let pending = a.submit(&mut events, &Sequence::default()).await.unwrap();
            assert!(events.is_empty(), "all of it fits");
            (pending.durable().await.unwrap(), r)
        }));
    }
    for t in tasks {
        let (first, r) = t.await.unwrap();
        let read = spool.read(first, 10, usize::MAX).unwrap();
        let got: Vec<Event> = read
            .iter()
            .map(|s| Event::parse(&s.line).unwrap())
            .collect();
        let sent: Vec<Event> = run(r * 10, 10).into_iter().map(|(e, _)| e).collect();
        assert_eq!(got, sent, "run {r} from id {first}");
    }
    // 80 lines are held: of a run of 30, the first 20 are taken and 10 are left to the caller.
    let mut events = run(100, 30);
    let first = appender
        .submit(&mut events, &Sequence::default())
        .await
        .unwrap();
    first.durable().await.unwrap();
    assert_eq!(events, run(120, 10));
    assert_eq!(spool.depth().events, 100);
    let err = appender.submit(&mut events, &Sequence::default()).await;
    assert!(matches!(err, Err(AppendError::Full(_))));
    assert_eq!(events.len(), 10, "nothing is taken from a refused run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_gives_up_waiting_for_the_writer_leaves_no_bytes_counted() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let held = Arc::new(AtomicU64::new(0));
    let (appender, _task) = writer(&spool, &held, u64::MAX);
    // The writer stalls on its first group (as on a slow disk) and the queue behind it fills.
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (unstall, unstalled) = std::sync::mpsc::channel::<()>();
    let s = spool.clone();
    let staller = std::thread::spawn(move || {
        let _held = s.lock();
        locked.send(()).unwrap();
        let _ = unstalled.recv();
    });
    is_locked.recv().unwrap();
    let (mut pending, mut queued) = (Vec::new(), 0);
    // Submitted until one has to wait for room, and gives up.
    for i in 0.. {
        assert!(
            i <= 3 * writer::GROUP_LINES,
            "the writer's queue never filled"
        );
        let line = event(i).to_line();
        let len = line.len() as u64;
        let mut run = vec![(event(i), line)];
        match tokio::time::timeout(
            Duration::from_millis(100),
            appender.submit(&mut run, &Sequence::default()),
        )
        .await
        {
            Ok(p) => pending.push(p.unwrap()),
            Err(_) => break,
        }
        queued += len;
    }
    unstall.send(()).unwrap();
    staller.join().unwrap();
    for p in pending {
        p.durable().await.unwrap();
    }
    assert_eq!(
        held.load(Ordering::SeqCst),
        queued,
        "only what was queued counts against the limit"
    );
    assert_eq!(spool.depth().bytes, queued);
}

#[test]
fn the_depth_kept_while_running_equals_what_a_reopened_spool_counts() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.append(&lines(4)).unwrap();
    spool.append(&lines(6)).unwrap();
    spool.append(&["é".repeat(100)]).unwrap();
    spool.release(first + 3).unwrap();
    let kept = spool.depth();
    assert_eq!(kept.events, 7);
    drop(spool);
    assert_eq!(Spool::open(dir.path()).unwrap().depth(), kept);
}

#[test]
fn a_group_released_in_part_counts_only_its_waiting_events() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.append(&lines(10)).unwrap();
    let whole = spool.depth();
    spool.release(first + 3).unwrap();
    spool.release(first + 5).unwrap();
    let kept = spool.depth();
    assert_eq!(kept.events, 4, "six of the ten were released");
    assert_eq!(kept.bytes, whole.bytes, "the group is still on disk");
    drop(spool);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(spool.depth(), kept);
    spool.release(first + 9).unwrap();
    assert_eq!(spool.depth(), Depth::default());
}

#[test]
fn a_spool_of_the_one_row_per_event_layout_is_converted_in_order() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = rusqlite::Connection::open(dir.path().join("spool.db")).unwrap();
        conn.execute_batch(
            "CREATE TABLE events (id INTEGER PRIMARY KEY AUTOINCREMENT, line TEXT NOT NULL);",
        )
        .unwrap();
        for line in lines(5000) {
            conn.execute("INSERT INTO events (line) VALUES (?1)", [line])
                .unwrap();
        }
        conn.execute("DELETE FROM events WHERE id <= 10", [])
            .unwrap();
    }
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.oldest().unwrap().unwrap();
    assert!(first > 5000, "converted ids come after every old one");
    assert_eq!(
        text(&spool.read(0, 10_000, usize::MAX).unwrap()),
        lines(5000)[10..]
    );
    assert_eq!(spool.depth().events, 4990);
    assert_eq!(spool.next_id(), first + 4990);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_write_fails_the_later_submissions_of_its_sequence_fail_unwritten() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let held = Arc::new(AtomicU64::new(0));
    let (appender, _task) = writer(&spool, &held, u64::MAX);
    let one = |i: usize| vec![(event(i), event(i).to_line())];
    // Another process holds the spool's write lock: the next write fails.
    let other = rusqlite::Connection::open(dir.path().join("spool.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let connection = Sequence::default();
    let failed = appender.submit(&mut one(0), &connection).await.unwrap();
    assert!(matches!(failed.durable().await, Err(AppendError::Spool(_))));
    other.execute_batch("COMMIT").unwrap();
    // The client resends from event 0. Event 1, queued by its connection behind the failed
    // write, must not be stored as well, nor ahead of event 0.
    let behind = appender.submit(&mut one(1), &connection).await.unwrap();
    assert!(matches!(
        behind.durable().await,
        Err(AppendError::AfterFailure)
    ));
    assert_eq!(spool.depth().events, 0, "nothing was written");
    assert_eq!(held.load(Ordering::SeqCst), 0, "nor counted as held");
    let mut resent = one(0);
    resent.extend(one(1));
    let first = appender
        .submit(&mut resent, &Sequence::default())
        .await
        .unwrap()
        .durable()
        .await
        .unwrap();
    let sent = vec![event(0).to_line(), event(1).to_line()];
    assert_eq!(text(&spool.read(first, 10, usize::MAX).unwrap()), sent);
}

/// A commit may report a failure and still have reached the file. The sender is told nothing
/// of the group was kept, so a group found there is taken out again rather than applied.
#[test]
fn a_group_found_in_the_spool_after_its_append_failed_is_taken_out() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.append(&lines(2)).unwrap();
    // The group a failed append left behind, not counted in the depth.
    let conn = spool.lock();
    conn.execute(
        "INSERT INTO groups (last, first, lines) VALUES (?1, ?2, ?3)",
        params![first + 4, first + 2, joined(&lines(3))],
    )
    .unwrap();
    assert!(!spool.undo_failed_group(&conn, first + 4), "taken out");
    drop(conn);
    assert_eq!(text(&spool.read(first, 10, usize::MAX).unwrap()), lines(2));
    assert_eq!(spool.depth().events, 2);
}

#[test]
fn releasing_a_group_the_depth_missed_does_not_wrap_the_depth() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let first = spool.append(&lines(2)).unwrap();
    // As if an append had failed after reaching the file, and the group could not be removed.
    spool.events.store(0, Ordering::Relaxed);
    spool.bytes.store(0, Ordering::Relaxed);
    spool.release(first + 1).unwrap();
    assert_eq!(
        spool.depth(),
        Depth {
            events: 0,
            bytes: 0
        }
    );
}

/// After an outage the spool may hold a gigabyte: the drain reads it back a bounded slice at a
/// time, and a line longer than the bound on its own still comes out.
#[test]
fn a_read_stops_at_its_byte_budget_but_always_takes_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let long: Vec<String> = (0..5).map(|i| format!("{i}{}", "x".repeat(99))).collect();
    let first = spool.append(&long[..2]).unwrap();
    spool.append(&long[2..]).unwrap();
    assert_eq!(text(&spool.read(first, 10, 250).unwrap()), long[..2]);
    assert_eq!(text(&spool.read(first + 1, 10, 300).unwrap()), long[1..4]);
    assert_eq!(text(&spool.read(first, 10, 10).unwrap()), long[..1]);
    assert_eq!(text(&spool.read(first, 10, usize::MAX).unwrap()), long);
}

/// A spool that grew through an outage gives the space back once it is drained.
#[test]
fn a_drained_spool_gives_its_disk_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let size = || spool_size(dir.path());
    let line = "x".repeat(1 << 20);
    let mut last = 0;
    for _ in 0..20 {
        last = spool.append(std::slice::from_ref(&line)).unwrap();
    }
    assert!(size() > 20 << 20, "{} bytes", size());
    spool.release(last - 1).unwrap();
    assert!(size() > 1 << 20, "one event still waits: {} bytes", size());
    spool.release(last).unwrap();
    assert!(size() < 1 << 20, "{} bytes after the spool emptied", size());
    let again = spool.append(&lines(3)).unwrap();
    assert_eq!(text(&spool.read(again, 10, usize::MAX).unwrap()), lines(3));
}

/// A spool file as an earlier version made it: without `auto_vacuum`.
fn older_spool(dir: &std::path::Path) -> rusqlite::Connection {
    let old = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
    old.execute_batch(
        "CREATE TABLE groups (last INTEGER PRIMARY KEY AUTOINCREMENT, first INTEGER NOT NULL,
                              lines BLOB NOT NULL);",
    )
    .unwrap();
    old
}

/// The bytes the spool in `dir` takes on disk, its write-ahead log included.
fn spool_size(dir: &std::path::Path) -> u64 {
    ["spool.db", "spool.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

fn auto_vacuum(spool: &Spool) -> i64 {
    spool
        .lock()
        .query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
        .unwrap()
}

/// A spool file of an earlier version, made without `auto_vacuum`, gets it when found empty.
#[test]
fn an_older_spool_found_empty_can_give_space_back_from_then_on() {
    let dir = tempfile::tempdir().unwrap();
    let old = older_spool(dir.path());
    drop(old);
    let spool = Spool::open(dir.path()).unwrap();
    assert_eq!(auto_vacuum(&spool), 2, "incremental");
}

/// Not empty at start, a spool of an earlier version gets `auto_vacuum` the first time it
/// empties, and gives its space back then.
#[test]
fn an_older_spool_not_empty_at_start_gives_space_back_once_drained() {
    let dir = tempfile::tempdir().unwrap();
    let old = older_spool(dir.path());
    let line = "x".repeat(1 << 20);
    for id in 1..=8 {
        old.execute(
            "INSERT INTO groups (last, first, lines) VALUES (?1, ?1, ?2)",
            params![id, joined(std::slice::from_ref(&line))],
        )
        .unwrap();
    }
    drop(old);
    let spool = Spool::open(dir.path()).unwrap();
    spool.release(8).unwrap();
    assert_eq!(auto_vacuum(&spool), 2, "incremental");
    let size = spool_size(dir.path());
    assert!(size < 1 << 20, "{size} bytes after the spool emptied");
}

/// Giving back more bytes than are held (as when a failed group that stayed in the spool is
/// released later, after its bytes were given back) leaves the count at zero, not wrapped around
/// to a spool that looks full for good.
#[test]
fn giving_back_more_than_is_held_leaves_zero() {
    let held = AtomicU64::new(3);
    super::subtract(&held, 5);
    assert_eq!(held.load(Ordering::Relaxed), 0);
}

/// The files in `dir` with their bytes, but for what SQLite makes for any reader of a database
/// in write-ahead-log mode: the log's shared-memory index, and an empty log where there was none.
fn files(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut all: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.to_string_lossy().ends_with("-shm"))
        .map(|p| (p.clone(), std::fs::read(&p).unwrap()))
        .filter(|(p, bytes)| !(p.to_string_lossy().ends_with("-wal") && bytes.is_empty()))
        .collect();
    all.sort();
    all
}

#[test]
fn a_spool_damaged_in_the_middle_is_refused_at_open_and_left_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path()).unwrap();
    let line = "x".repeat(200);
    for _ in 0..200 {
        spool.append(&vec![line.clone(); 10]).unwrap();
    }
    drop(spool);
    // Whole pages in the middle of the file, where neither opening nor counting what waits
    // would read them.
    let file = dir.path().join("spool.db");
    let mut bytes = std::fs::read(&file).unwrap();
    let page = 4096;
    assert!(bytes.len() > 40 * page, "a spool of many pages");
    bytes[20 * page..30 * page].fill(0xAB);
    std::fs::write(&file, &bytes).unwrap();
    let before = files(dir.path());

    let refused = Spool::open(dir.path()).map(|_| ()).unwrap_err();
    assert!(matches!(refused, SpoolError::Damaged { .. }), "{refused}");
    let said = refused.to_string();
    assert!(said.contains("spool.db is damaged"), "{said}");
    assert!(said.contains("may hold acknowledged events"), "{said}");
    let after = files(dir.path());
    let names = |f: &[(std::path::PathBuf, Vec<u8>)]| {
        f.iter()
            .map(|(p, b)| (p.clone(), b.len()))
            .collect::<Vec<_>>()
    };
    assert!(
        after == before,
        "the damaged file was changed: {:?} -> {:?}",
        names(&before),
        names(&after)
    );
}

/// Another program's file named `spool.db` is refused and left byte for byte as it was: its
/// write-ahead log not checkpointed, no lock file made beside it.
#[test]
fn a_spool_file_of_another_program_is_refused_and_left_as_it_is() {
    for (tables, says) in [
        (
            "CREATE TABLE accounts (id INTEGER, name TEXT); INSERT INTO accounts VALUES (1, 'x')",
            "holds tables, but not a spool's",
        ),
        // The spool's own table names, not its tables.
        (
            "CREATE TABLE groups (x); CREATE TABLE released (y); INSERT INTO groups VALUES (1)",
            "holds tables, but not a spool's",
        ),
        ("", "is not an SQLite database"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("spool.db");
        if tables.is_empty() {
            std::fs::write(&file, "notes of another program, not SQLite\n").unwrap();
        } else {
            // As a program that died with its last write still in the write-ahead log left it:
            // copied while its owner holds it open.
            let elsewhere = tempfile::tempdir().unwrap();
            let owned = elsewhere.path().join("theirs.db");
            let owner = rusqlite::Connection::open(&owned).unwrap();
            owner
                .execute_batch(&format!(
                    "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0; {tables};"
                ))
                .unwrap_or_else(|e| panic!("{tables}: {e}"));
            std::fs::copy(&owned, &file).unwrap();
            let log = elsewhere.path().join("theirs.db-wal");
            assert!(std::fs::metadata(&log).unwrap().len() > 0, "a log to keep");
            std::fs::copy(&log, dir.path().join("spool.db-wal")).unwrap();
        }
        let before = files(dir.path());
        let refused = Spool::open(dir.path()).map(|_| ()).unwrap_err();
        assert!(
            matches!(refused, SpoolError::NotASpool { .. }),
            "{tables}: {refused}"
        );
        assert!(refused.to_string().contains(says), "{refused}");
        assert!(
            files(dir.path()) == before,
            "{tables}: the files were changed"
        );
    }
}
