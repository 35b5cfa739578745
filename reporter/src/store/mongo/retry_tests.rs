//! What the store does with a batch it cannot send: try again, unless the caller retries.

use std::time::{Duration, Instant};

use super::*;

/// A store on a port where nothing listens, each attempt waiting out a short server selection.
async fn unreachable() -> MongoStore {
    MongoStore::open(&unreachable_uri(200)).await.unwrap()
}

fn batch() -> Batch {
    Batch {
        events: vec!["m\u{0}e1".into()],
        ..Batch::default()
    }
}

#[tokio::test]
async fn a_caller_that_retries_itself_gets_the_first_transient_error_at_once() {
    let store = unreachable().await;
    store.leave_retries_to_caller();
    let started = Instant::now();
    let failed = store.apply(batch().into()).await;
    assert!(
        matches!(failed, Err(StoreError::Unreachable { .. })),
        "{failed:?}"
    );
    // The store's own retries would wait at least 16 s between attempts.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn between_its_own_attempts_the_store_waits_long_enough_to_ride_out_an_election() {
    let waited: Duration = (1..ATTEMPTS).map(backoff).sum();
    assert!(waited >= Duration::from_secs(12), "{waited:?}");
}

#[test]
fn a_failed_server_selection_says_what_each_server_said() {
    let driver =
        "Kind: Server selection timeout: No available servers. Topology: { Type: Unknown, \
        Servers: [ { Address: 127.0.0.1:9, Type: Unknown, Error: Kind: I/O error: Connection \
        refused (os error 111), labels: {\"RetryableError\"}, source: None, server response: None \
        } ] }, labels: {}, source: None, server response: None";
    assert_eq!(
        super::selection_summary(driver),
        "127.0.0.1:9: I/O error: Connection refused (os error 111)"
    );
    assert_eq!(super::selection_summary("something else"), "something else");
}
