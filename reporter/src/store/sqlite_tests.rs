//! The SQLite store's own guarantees: batches applied twice, refused gaps, paging.
use super::*;
use crate::core::{Core, CoreConfig};
use crate::synth::{lines, Shape};
use buildstore_schema::Event;

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
    let once = SqliteStore::open(dir.path().join("once.db").to_str().unwrap())
        .await
        .unwrap();
    let twice = SqliteStore::open(dir.path().join("twice.db").to_str().unwrap())
        .await
        .unwrap();
    let batches = batches(97);
    for b in &batches {
        once.apply(b).await.unwrap();
        twice.apply(b).await.unwrap();
        twice.apply(b).await.unwrap();
    }
    // And a whole replay after the fact, as after a crash before the confirmation.
    for b in &batches[batches.len() / 2..] {
        twice.apply(b).await.unwrap();
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
async fn a_log_chunk_that_would_leave_a_gap_is_refused_and_nothing_of_its_batch_applied() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db").to_str().unwrap())
        .await
        .unwrap();
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
        .apply(&Batch {
            mutations: rest,
            events: vec![],
        })
        .await
        .unwrap();
    let before = export_all(&store).await;
    let err = store
        .apply(&Batch {
            mutations: logs,
            events: vec!["k".into()],
        })
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::LogConflict { .. }), "{err}");
    assert_eq!(export_all(&store).await, before);
    assert!(store
        .applied_events(&["k".into()])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn reads_page_by_id_and_filter_builds() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("s.db").to_str().unwrap())
        .await
        .unwrap();
    for b in batches(500) {
        store.apply(&b).await.unwrap();
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
    let found = store.find_builds(&q).await.unwrap();
    assert!(!found.is_empty() && found.len() <= 3);
    assert!(found.iter().all(|b| b.get_str("builder") == Ok("docs")));
    let times: Vec<_> = found
        .iter()
        .map(|b| b.get_datetime("time_start").unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "newest first");
}
