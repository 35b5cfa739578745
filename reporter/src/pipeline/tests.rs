//! The applier's de-duplication rules: an `event_id` is applied once, whether its copies come in
//! one chunk, in a chunk folded while the previous one is still being written, after its key
//! left memory, or after a restart; a rejected event does not count as seen; and a log chunk
//! without an offset, folded again, goes where its pin says.

use super::*;
use crate::core::CoreConfig;
use crate::store::{open_in, KnownEvents};

fn event(id: &str, json: &str) -> Event {
    let line = json.replacen('{', &format!(r#"{{"master_id":"m","event_id":"{id}","#), 1);
    Event::parse(&line).unwrap()
}

fn build(id: &str) -> Event {
    event(
        id,
        r#"{"type":"build_started","builder":"b","build_id":1,"number":1,"time":0}"#,
    )
}

fn step(id: &str) -> Event {
    event(
        id,
        r#"{"type":"step_started","build_id":1,"step":0,"name":"s","time":1}"#,
    )
}

fn applier() -> Applier {
    Applier::new(Core::new(CoreConfig::default()))
}

#[tokio::test]
async fn a_second_copy_in_the_same_chunk_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    let outcomes = applier()
        .apply_chunk(&store, &[build("a"), build("a")], false)
        .await
        .unwrap();
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Duplicate]);
}

#[tokio::test]
async fn a_rejected_event_does_not_count_as_seen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    // The step comes before its build: rejected. Sent again after it, it applies.
    let outcomes = applier()
        .apply_chunk(&store, &[step("s"), build("b"), step("s")], false)
        .await
        .unwrap();
    assert!(matches!(outcomes[0], Outcome::Rejected(_)), "{outcomes:?}");
    assert_eq!(outcomes[1..], [Outcome::Applied, Outcome::Applied]);
}

#[tokio::test]
async fn a_copy_folded_while_the_first_is_being_written_is_a_duplicate_until_the_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    let mut applier = applier();
    let first = applier.prepare(&store, &[build("a")], false).await.unwrap();
    // The first batch is not in the store yet.
    let next = applier.prepare(&store, &[build("a")], false).await.unwrap();
    assert_eq!(next.outcomes, [Outcome::Duplicate]);

    // The store did not take the first batch: both are folded again, from what the store holds.
    drop((first, next));
    applier.forget();
    let again = applier.prepare(&store, &[build("a")], false).await.unwrap();
    assert_eq!(again.outcomes, [Outcome::Applied]);
}

#[tokio::test]
async fn after_a_restart_the_store_knows_what_was_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    applier()
        .apply_chunk(&store, &[build("a")], false)
        .await
        .unwrap();
    let outcomes = applier()
        .apply_chunk(&store, &[build("a"), step("s")], false)
        .await
        .unwrap();
    assert_eq!(outcomes, [Outcome::Duplicate, Outcome::Applied]);
}

#[tokio::test]
async fn a_copy_that_only_the_dropped_generation_of_keys_remembered_is_still_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    let mut applier = Applier::with_key_memory(Core::new(CoreConfig::default()), 3);
    let log = || {
        event(
            "l",
            r#"{"type":"log","build_id":1,"step":0,"channel":"stdout","text":"hello\n"}"#,
        )
    };
    let filler = |id: &str| {
        event(
            id,
            r#"{"type":"builder_state","builder":"b","state":"idle"}"#,
        )
    };
    applier
        .apply_chunk(&store, &[build("b"), step("s"), log()], false)
        .await
        .unwrap();
    // The keys of the first chunk move to the older generation...
    applier
        .apply_chunk(&store, &[filler("f1"), filler("f2")], false)
        .await
        .unwrap();
    // ...which this chunk drops: the copy of the log chunk must be asked about, not re-applied.
    let outcomes = applier
        .apply_chunk(&store, &[filler("f3"), log()], false)
        .await
        .unwrap();
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Duplicate]);
    let step = crate::store::Store::get(&store, buildstore_schema::Collection::Steps, "m/1/0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(step.get_str("stdout").unwrap(), "hello\n", "the text once");
}

fn unplaced_log(id: &str) -> Event {
    event(
        id,
        r#"{"type":"log","build_id":1,"step":0,"channel":"stdout","text":"hello\n"}"#,
    )
}

/// A store that has pinned log chunks: a MongoDB store after a crash in the middle of a batch.
struct Pinned<'a> {
    store: &'a crate::store::SqliteStore,
    pins: Vec<(String, u64)>,
}

#[async_trait::async_trait]
impl Apply for Pinned<'_> {
    async fn apply(&self, batch: std::sync::Arc<Batch>) -> Result<(), StoreError> {
        self.store.apply(batch).await
    }
    async fn applied_events(&self, keys: &[String]) -> Result<KnownEvents, StoreError> {
        let mut known = self.store.applied_events(keys).await?;
        known.pinned = self.pins.iter().cloned().collect();
        Ok(known)
    }
    async fn load_builds(
        &self,
        ids: &[String],
        log_window: usize,
    ) -> Result<Vec<crate::core::BuildSnapshot>, StoreError> {
        self.store.load_builds(ids, log_window).await
    }
    async fn spool_progress(
        &self,
        spool: &str,
    ) -> Result<Option<crate::core::SpoolProgress>, StoreError> {
        self.store.spool_progress(spool).await
    }
}

fn appended(batch: &Batch) -> Vec<u64> {
    batch
        .mutations
        .iter()
        .filter_map(|m| match m {
            Mutation::AppendLog { offset, .. } => Some(*offset),
            _ => None,
        })
        .collect()
}

/// A log chunk without an offset is pinned to where it was folded, so that a store that may keep
/// part of a batch can put it there again; folded again before its batch was sent (the batch
/// before it failed), it is pinned again, where its log then ends.
#[tokio::test]
async fn a_chunk_without_offset_is_pinned_each_time_it_is_folded() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    let mut applier = applier();
    applier
        .apply_chunk(&store, &[build("b"), step("s"), unplaced_log("l1")], false)
        .await
        .unwrap();
    let chunk = [unplaced_log("l2")];
    let first = applier.prepare(&store, &chunk, false).await.unwrap();
    assert_eq!(first.batch.pins, [("m/l2".to_owned(), 6)]);
    assert_eq!(appended(&first.batch), [6]);
    // Its batch was never sent (the one before it failed); meanwhile another chunk went first.
    applier.forget();
    applier
        .apply_chunk(&store, &[unplaced_log("l3")], false)
        .await
        .unwrap();
    let again = applier.prepare(&store, &chunk, false).await.unwrap();
    assert_eq!(again.batch.pins, [("m/l2".to_owned(), 12)]);
    assert_eq!(appended(&again.batch), [12]);
}

/// After a crash in the middle of a batch, its chunk's text is in the log but its key is not
/// recorded as applied: the chunk goes to the offset pinned for it, where it is already.
#[tokio::test]
async fn a_pinned_chunk_folded_by_another_process_is_found_already_there() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_in(dir.path(), "s.db").await;
    // The text of l2 reached the log; its key did not.
    let events = [build("b"), step("s"), unplaced_log("l1"), unplaced_log("x")];
    applier().apply_chunk(&store, &events, false).await.unwrap();
    let pinned = Pinned {
        store: &store,
        pins: vec![("m/l2".to_owned(), 6)],
    };
    let prepared = applier()
        .prepare(&pinned, &[unplaced_log("l2")], false)
        .await
        .unwrap();
    assert_eq!(prepared.outcomes, [Outcome::Applied]);
    assert_eq!(appended(&prepared.batch), [0u64; 0], "not appended again");
    assert_eq!(
        prepared.batch.pins,
        [("m/l2".to_owned(), 6)],
        "pinned again"
    );
}
