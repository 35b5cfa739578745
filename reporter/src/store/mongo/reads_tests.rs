//! Where a MongoDB store's reads go: always to the primary for a writer, which folds batches from
//! what it reads; as the URI says for a program that only reads.

use mongodb::options::{ReadConcern, ReadPreference, SelectionCriteria};

use super::*;

fn reads_of(store: &MongoStore) -> Option<&SelectionCriteria> {
    store.db.selection_criteria()
}

fn is_primary(criteria: Option<&SelectionCriteria>) -> bool {
    matches!(
        criteria,
        None | Some(SelectionCriteria::ReadPreference(ReadPreference::Primary))
    )
}

const TO_A_SECONDARY: &str =
    "mongodb://127.0.0.1:1/x?readPreference=secondaryPreferred&readConcernLevel=majority";

#[tokio::test]
async fn a_writer_reads_from_the_primary_whatever_the_uri_asks() {
    let store = MongoStore::open(TO_A_SECONDARY).await.expect("a store");
    assert!(is_primary(reads_of(&store)), "{:?}", reads_of(&store));
    assert_eq!(store.db.read_concern(), Some(&ReadConcern::local()));
}

#[tokio::test]
async fn a_reader_follows_the_read_preference_of_the_uri() {
    let store = MongoStore::open_read_only(TO_A_SECONDARY)
        .await
        .expect("a store");
    assert!(
        matches!(
            reads_of(&store),
            Some(SelectionCriteria::ReadPreference(
                ReadPreference::SecondaryPreferred { .. }
            ))
        ),
        "{:?}",
        reads_of(&store)
    );
    assert_eq!(store.db.read_concern(), Some(&ReadConcern::majority()));
}

#[tokio::test]
async fn a_reader_without_a_read_preference_reads_from_the_primary() {
    let store = MongoStore::open_read_only("mongodb://127.0.0.1:1/x")
        .await
        .expect("a store");
    assert!(is_primary(reads_of(&store)), "{:?}", reads_of(&store));
}
