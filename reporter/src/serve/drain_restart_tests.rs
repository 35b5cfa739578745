//! The drain at a restart: it goes on where the store confirmed, never folds again a batch the
//! store took before a kill, and takes recorded progress only for the spool that wrote it.

use std::time::Instant;

use super::*;

/// Drains `spool` (nothing in memory) into `store` until it is empty or `grace` is over, as one
/// start of the daemon would; what it counted.
async fn drain_once(spool: &Spool, store: Arc<dyn Apply>, grace: Duration) -> Arc<DrainCounters> {
    let handoff = Arc::new(Handoff::new(usize::MAX));
    handoff.close();
    let (_stop, stopped) = watch::channel(true);
    let counters = Arc::new(DrainCounters::default());
    drain(spool, handoff, store, Arc::clone(&counters), stopped, grace).await;
    counters
}

/// The late events of a build, the first of which the rules refuse (its step's end comes before
/// the build started); a second fold, once the build exists, would take it.
const REFUSED_THEN_TAKEN: [&str; 5] = [
    r#"{"type":"step_finished","master_id":"mx","event_id":"x1","time":1767323045,"build_id":1,"step":0,"result":2,"text":"refused: no such build yet"}"#,
    r#"{"type":"builder_added","master_id":"mx","event_id":"x2","time":1767323045,"builder":"bx"}"#,
    r#"{"type":"build_started","master_id":"mx","event_id":"x3","time":1767323045,"builder":"bx","build_id":1,"number":1}"#,
    r#"{"type":"step_started","master_id":"mx","event_id":"x4","time":1767323046,"build_id":1,"step":0,"name":"compile"}"#,
    r#"{"type":"step_finished","master_id":"mx","event_id":"x5","time":1767323047,"build_id":1,"step":0,"result":0,"text":"ok"}"#,
];

/// A stream of a little more than one batch, with [`REFUSED_THEN_TAKEN`] near the end of the
/// first batch.
fn with_a_late_build() -> Vec<String> {
    let mut lines = crate::synth::lines_of(BATCH_EVENTS + 300);
    let at = BATCH_EVENTS - REFUSED_THEN_TAKEN.len() - 10;
    lines.splice(at..at, REFUSED_THEN_TAKEN.iter().map(|l| l.to_string()));
    lines
}

/// Opens the spool and store in `dir` again, as the next start does, and drains the spool:
/// everything is released, and nothing the store had is folded again.
async fn restart_and_drain(dir: &std::path::Path) -> (Spool, Arc<SqliteStore>, Arc<DrainCounters>) {
    let spool = Spool::open(&dir.join("spool")).unwrap();
    let store = Arc::new(open_in(dir, "s.db").await);
    let counted = drain_once(&spool, Arc::clone(&store) as _, Duration::from_secs(60)).await;
    assert_eq!(spool.depth().events, 0, "everything released");
    assert_eq!(
        counted.duplicates.load(Ordering::SeqCst),
        0,
        "nothing the store had was folded again"
    );
    (spool, store, counted)
}

/// Asserts that `store` holds what one clean fold of `lines` leaves.
async fn assert_as_one_clean_fold(dir: &std::path::Path, store: &SqliteStore, lines: &[String]) {
    let events: Vec<Event> = lines.iter().map(|l| Event::parse(l).unwrap()).collect();
    let clean = open_in(dir, "clean.db").await;
    let mut applier = Applier::new(Core::new(CoreConfig::default()));
    applier.apply_chunk(&clean, &events, false).await.unwrap();
    assert_eq!(export(store).await, export(&clean).await);
}

/// A group of the spool can straddle two batches. When the store confirmed the first and the
/// daemon stopped before the second, the next start goes on after what was confirmed: folding
/// the group again from its start would take an event the rules refused the first time (a
/// step's end sent before its build started) now that its build exists, and skip the events
/// that came after it as applied.
#[tokio::test]
async fn a_restart_goes_on_inside_a_group_where_the_store_confirmed_it() {
    let dir = tempfile::tempdir().unwrap();
    // All in the first batch, which the store takes.
    let lines = with_a_late_build();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let first = spool.append(&lines).unwrap();
    let whole = spool.depth();

    let down = Arc::new(FailingWrite::at(dir.path(), 1, Failure::ForGood).await);
    let counted = drain_once(&spool, Arc::clone(&down) as _, Duration::from_millis(500)).await;
    assert!(counted.store_errors.load(Ordering::SeqCst) >= 1);
    assert!(
        spool.oldest().unwrap() > Some(first),
        "the first batch was confirmed"
    );
    assert_eq!(
        spool.depth(),
        Depth {
            events: (lines.len() - BATCH_EVENTS) as u64,
            bytes: whole.bytes
        },
        "the first batch's events no longer wait, but the group stays whole on disk"
    );
    drop(down);
    drop(spool);

    let (_, store, _) = restart_and_drain(dir.path()).await;
    let got = export(&*store).await;
    let step = got
        .iter()
        .find(|d| d.get_str("_id") == Ok("mx/1/0"))
        .expect("the step");
    assert_eq!(
        step.get_i32("result"),
        Ok(0),
        "the step's real end was taken"
    );
    assert_as_one_clean_fold(dir.path(), &store, &lines).await;
}

/// How far into `spool` the store has its events, by the progress recorded under its name.
async fn through(store: &dyn Apply, spool: &Spool) -> Option<i64> {
    let p = store.spool_progress(spool.uid()).await.unwrap();
    p.map(|p| p.through)
}

/// A batch the store took, but whose events the spool did not release (the daemon was killed
/// in between), is not folded again at the next start: the store recorded how far into the
/// spool the batch went. Folded again, the event the rules refused would now be taken.
#[tokio::test]
async fn a_batch_the_store_took_before_a_kill_is_not_folded_again() {
    taken_before_a_kill(false).await;
}

/// The same, for a batch the drain took from the writer in memory, as it does while it keeps up.
#[tokio::test]
async fn a_batch_handed_over_in_memory_and_taken_before_a_kill_is_not_folded_again() {
    taken_before_a_kill(true).await;
}

async fn taken_before_a_kill(handed_over: bool) {
    let dir = tempfile::tempdir().unwrap();
    let lines = with_a_late_build();
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let first = spool.append(&lines).unwrap();
    let whole = spool.depth();
    let handoff = Arc::new(Handoff::new(usize::MAX));
    if handed_over {
        let events = lines.iter().map(|l| (Event::parse(l).unwrap(), l.len()));
        handoff.push(first, events.collect());
    }
    handoff.close();

    let killed = Arc::new(FailingWrite::at(dir.path(), 0, Failure::UnheardThenDown).await);
    let counted = Arc::new(DrainCounters::default());
    let (stop, stopped) = watch::channel(false);
    let store = Arc::clone(&killed) as Arc<dyn Apply>;
    let grace = Duration::from_millis(100);
    let task = tokio::spawn(drain(
        &spool,
        handoff,
        store,
        Arc::clone(&counted),
        stopped,
        grace,
    ));
    // Stopped once the store has the first batch (however slow the machine), as a kill would.
    let deadline = Instant::now() + Duration::from_secs(60);
    while through(&killed.inner, &spool).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the first batch was never written"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
    assert_eq!(
        counted.rejected.load(Ordering::SeqCst),
        0,
        "nothing counted"
    );
    assert_eq!(spool.depth(), whole, "nothing released");
    assert_eq!(
        through(&killed.inner, &spool).await,
        Some(BATCH_EVENTS as i64),
        "the store knows how far the batch went"
    );
    drop(killed);
    drop(spool);

    let (spool, store, counted) = restart_and_drain(dir.path()).await;
    assert_eq!(counted.rejected.load(Ordering::SeqCst), 0);
    assert_eq!(
        counted.applied.load(Ordering::SeqCst),
        (lines.len() - BATCH_EVENTS) as u64
    );
    assert!(
        through(&*store, &spool).await >= Some(lines.len() as i64),
        "the last batch moved the store's progress on"
    );

    assert_as_one_clean_fold(dir.path(), &store, &lines).await;
}

/// The progress a store recorded for another spool, or for this one before the spool's current
/// events (a spool made again at the same place starts its ids again), moves nothing.
#[tokio::test]
async fn progress_recorded_for_another_spool_is_not_taken_for_this_one() {
    let dir = tempfile::tempdir().unwrap();
    let lines = crate::synth::lines_of(200);
    let events: Vec<Event> = lines.iter().map(|l| Event::parse(l).unwrap()).collect();
    let store = Arc::new(open_in(dir.path(), "s.db").await);
    let old = Spool::open(&dir.path().join("old")).unwrap();
    old.append(&lines).unwrap();
    drain_once(&old, Arc::clone(&store) as _, Duration::from_secs(60)).await;
    assert!(through(&*store, &old).await >= Some(lines.len() as i64));
    drop(old);
    std::fs::remove_dir_all(dir.path().join("old")).unwrap();

    // Made again where the old one was: the same ids, and events the store has not seen.
    let new = Spool::open(&dir.path().join("old")).unwrap();
    assert_eq!(store.spool_progress(new.uid()).await.unwrap(), None);
    let fresh = from_other_masters(&lines);
    new.append(&fresh).unwrap();
    let counted = drain_once(&new, Arc::clone(&store) as _, Duration::from_secs(60)).await;
    let applied = counted.applied.load(Ordering::SeqCst) + counted.rejected.load(Ordering::SeqCst);
    let duplicates = counted.duplicates.load(Ordering::SeqCst);
    assert_eq!(
        applied + duplicates,
        events.len() as u64,
        "every event of the new spool was folded"
    );
    assert!(applied > 0, "the new master's events were applied");
}

/// An older copy of a spool (restored from a backup, say) has the spool's name but gives out
/// ids the store already has progress past. Its new events are applied, not taken for those,
/// and it takes a new name, so that its own progress is never confused with the other's.
#[tokio::test]
async fn an_older_copy_of_a_spool_takes_a_new_name_and_its_events_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let (spool, copy, store, lines) = drained_beside_a_copy(dir.path(), 200).await;
    let name = spool.uid().to_string();
    drop(spool);

    let older = Spool::open(&copy).unwrap();
    assert_eq!(older.uid(), name, "a copy has the same name");
    let fresh = from_other_masters(&lines[..50]);
    older.append(&fresh).unwrap();
    let counted = drain_once(&older, Arc::clone(&store) as _, Duration::from_secs(60)).await;
    assert_eq!(
        counted.applied.load(Ordering::SeqCst) + counted.rejected.load(Ordering::SeqCst),
        fresh.len() as u64,
        "the copy's new events were folded"
    );
    assert_eq!(older.depth().events, 0);
    drop(older);
    let older = Spool::open(&copy).unwrap();
    assert_ne!(older.uid(), name, "the copy took a new name, for good");
    assert_eq!(through(&*store, &older).await, Some(fresh.len() as i64));
}

/// `lines` as another master would send them: the same events, with keys the store has not seen.
fn from_other_masters(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            l.replace(r#""master_id":"m1""#, r#""master_id":"m3""#)
                .replace(r#""master_id":2"#, r#""master_id":"m4""#)
        })
        .collect()
}

/// A spool in `dir` copied while still empty (the copy's directory is returned), then fed a
/// stream of about `events` events and drained into the store, also returned.
async fn drained_beside_a_copy(
    dir: &std::path::Path,
    events: usize,
) -> (Spool, std::path::PathBuf, Arc<SqliteStore>, Vec<String>) {
    let (original, copy) = (dir.join("spool"), dir.join("copy"));
    drop(Spool::open(&original).unwrap());
    copy_spool(&original, &copy);
    let store = Arc::new(open_in(dir, "s.db").await);
    let lines = crate::synth::lines_of(events);
    let spool = Spool::open(&original).unwrap();
    spool.append(&lines).unwrap();
    drain_once(&spool, Arc::clone(&store) as _, Duration::from_secs(60)).await;
    (spool, copy, store, lines)
}

/// Copies the spool directory `from` to `to`, as a backup or a machine's image would.
fn copy_spool(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir(to).unwrap();
    for file in std::fs::read_dir(from).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, to.join(file.file_name().unwrap())).unwrap();
    }
}

/// Two copies of one spool run side by side (a machine's image copied with its spool) and feed
/// one store: both have the same name, and each records its progress under it. A copy that
/// restarts with events waiting finds the other's progress there, but not the other's event at
/// the id it names: it takes a new name and folds its own events, losing none of them.
#[tokio::test]
async fn a_copy_run_beside_its_original_takes_no_progress_of_the_other_for_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (first, b, store, lines) = drained_beside_a_copy(dir.path(), 300).await;
    assert_eq!(through(&*store, &first).await, Some(lines.len() as i64));

    let theirs = from_other_masters(&crate::synth::lines(&crate::synth::Shape {
        events: 500,
        seed: 7,
        ..Default::default()
    }));
    assert!(theirs.len() > lines.len());
    let second = Spool::open(&b).unwrap();
    assert_eq!(second.uid(), first.uid());
    second.append(&theirs).unwrap();
    drop(second);
    let second = Spool::open(&b).unwrap();
    let counted = drain_once(&second, Arc::clone(&store) as _, Duration::from_secs(60)).await;
    assert_eq!(
        counted.applied.load(Ordering::SeqCst) + counted.rejected.load(Ordering::SeqCst),
        theirs.len() as u64,
        "every event of the copy was folded"
    );
    drop(second);
    let second = Spool::open(&b).unwrap();
    assert_ne!(second.uid(), first.uid(), "the copy took a name of its own");
}

/// Progress at or past the first id this run gave out cannot be of an earlier run of this file,
/// even when the store's event there has the same key: the spool takes a new name and the event
/// is folded.
#[tokio::test]
async fn progress_past_what_earlier_runs_gave_out_is_never_taken() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open_in(dir.path(), "s.db").await);
    let spool = Spool::open(&dir.path().join("spool")).unwrap();
    let line = REFUSED_THEN_TAKEN[1];
    let first = spool.append(&[line.to_string()]).unwrap();
    assert_eq!(first, spool.opened_next());
    let event = Event::parse(line).unwrap();
    let key = event_key(&event.master_id, event.event_id.as_deref().unwrap());
    let progress = SpoolProgress {
        spool: spool.uid().to_string(),
        through: first,
        last: Some((first, key)),
    };
    store
        .apply(Arc::new(Batch {
            progress: Some(progress),
            ..Batch::default()
        }))
        .await
        .unwrap();
    let counted = drain_once(&spool, Arc::clone(&store) as _, Duration::from_secs(60)).await;
    assert_eq!(
        counted.applied.load(Ordering::SeqCst),
        1,
        "folded, not released"
    );
    assert_eq!(spool.depth().events, 0);
}
