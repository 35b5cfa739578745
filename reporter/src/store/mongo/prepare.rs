//! Preparing a database for the store: the `$jsonSchema` validators generated from the schema
//! types, the documented indexes, and the indexes of the GridFS bucket. Running it again on a
//! prepared database changes nothing, and needs no more than the `readWrite` role: `collMod`,
//! which only `dbAdmin` may run, is sent only when a validator differs from the schema's.

use std::collections::HashMap;

use bson::{doc, Bson, Document};
use buildstore_schema::{Collection, INDEXES};
use futures::TryStreamExt;
use mongodb::IndexModel;

use super::plan::{BUCKET, PIECE_END};
use super::{corrupt, MongoStore};
use crate::store::StoreError;

/// Server error codes met here.
const UNAUTHORIZED: i32 = 13;
const NAMESPACE_EXISTS: i32 = 48;

pub(super) async fn prepare(store: &MongoStore) -> Result<(), StoreError> {
    // One look at what exists, rather than one per collection: every start prepares the store.
    let names: Vec<&str> = Collection::ALL.iter().map(|c| c.name()).collect();
    let mut existing = collection_options(store, doc! {"name": {"$in": names}}).await?;
    for (collection, validator) in buildstore_schema::validator::validators() {
        let schema =
            bson::to_document(&validator).map_err(|e| corrupt(collection, "$jsonSchema", e))?;
        let options = doc! {
            "validator": {"$jsonSchema": schema},
            "validationLevel": "moderate",
            "validationAction": "error",
        };
        let current = existing.remove(collection.name());
        set_validator(store, collection, options, current).await?;
    }
    for c in Collection::ALL {
        let models: Vec<IndexModel> = INDEXES
            .iter()
            .filter(|s| s.collection == c)
            .map(|s| {
                let keys: Document = s
                    .keys
                    .iter()
                    .map(|(f, d)| ((*f).to_owned(), Bson::Int32(*d)))
                    .collect();
                IndexModel::builder()
                    .keys(keys)
                    .options(
                        mongodb::options::IndexOptions::builder()
                            .name(s.name.to_owned())
                            .build(),
                    )
                    .build()
            })
            .collect();
        store
            .coll(c)
            .create_indexes(models)
            .await
            .map_err(|e| store.err(e))?;
    }
    // The indexes the GridFS specification asks of a bucket, and the one reads use.
    let files = store.db.collection::<Document>(&format!("{BUCKET}.files"));
    files
        .create_indexes([
            IndexModel::builder()
                .keys(doc! {"filename": 1, "uploadDate": 1})
                .build(),
            IndexModel::builder()
                .keys(doc! {"filename": 1, PIECE_END: 1})
                .build(),
        ])
        .await
        .map_err(|e| store.err(e))?;
    let chunks = store.db.collection::<Document>(&format!("{BUCKET}.chunks"));
    chunks
        .create_index(
            IndexModel::builder()
                .keys(doc! {"files_id": 1, "n": 1})
                .options(
                    mongodb::options::IndexOptions::builder()
                        .unique(true)
                        .build(),
                )
                .build(),
        )
        .await
        .map_err(|e| store.err(e))?;
    Ok(())
}

/// Creates `collection` with `options` (its validator), or brings the options of the existing
/// collection (`current`, if it existed) to these.
async fn set_validator(
    store: &MongoStore,
    collection: Collection,
    options: Document,
    current: Option<Document>,
) -> Result<(), StoreError> {
    let name = collection.name();
    let current = match current {
        Some(current) => current,
        None => {
            let mut create = doc! {"create": name};
            create.extend(options.clone());
            match store.db.run_command(create).await {
                Ok(_) => return Ok(()),
                // Another writer made it since the look.
                Err(e) if code(&e) == Some(NAMESPACE_EXISTS) => {}
                Err(e) => return Err(store.err(e)),
            }
            collection_options(store, doc! {"name": name})
                .await?
                .remove(name)
                .unwrap_or_default()
        }
    };
    if options
        .iter()
        .all(|(k, v)| current.get(k).is_some_and(|c| same(c, v)))
    {
        return Ok(());
    }
    let mut modify = doc! {"collMod": name};
    modify.extend(options);
    match store.db.run_command(modify).await {
        Ok(_) => Ok(()),
        // The documents are written all the same; the validator is a second check of them.
        Err(e) if code(&e) == Some(UNAUTHORIZED) => {
            tracing::warn!(
                store = %store.location,
                collection = name,
                error = %store.redact.driver(&e),
                "the collection's validator is not the one this version writes, and the user may \
                 not change it (collMod needs the dbAdmin role): documents are written all the \
                 same; run buildstore init once as a user with dbAdmin"
            );
            Ok(())
        }
        Err(e) => Err(store.err(e)),
    }
}

/// The collections `filter` selects, by name, with the options each was created or last
/// modified with.
async fn collection_options(
    store: &MongoStore,
    filter: Document,
) -> Result<HashMap<String, Document>, StoreError> {
    let specs: Vec<Document> = store
        .db
        .list_collections()
        .filter(filter)
        .await
        .map_err(|e| store.err(e))?
        .with_type::<Document>()
        .try_collect()
        .await
        .map_err(|e| store.err(e))?;
    Ok(specs
        .into_iter()
        .filter_map(|spec| {
            let name = spec.get_str("name").ok()?.to_owned();
            let options = spec.get_document("options").cloned().unwrap_or_default();
            Some((name, options))
        })
        .collect())
}

fn code(e: &mongodb::error::Error) -> Option<i32> {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// Whether two values are the same, a number whatever its BSON type (a server or a tool may
/// give back a 64-bit integer that fits in 32 bits as a 32-bit one), a document whatever the
/// order of its fields.
fn same(a: &Bson, b: &Bson) -> bool {
    fn number(v: &Bson) -> Option<f64> {
        match v {
            Bson::Int32(i) => Some(f64::from(*i)),
            Bson::Int64(i) => Some(*i as f64),
            Bson::Double(d) => Some(*d),
            _ => None,
        }
    }
    match (a, b) {
        (Bson::Document(x), Bson::Document(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        (Bson::Array(x), Bson::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(v, w)| same(v, w))
        }
        _ => match (number(a), number(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::same;
    use bson::{bson, Bson};

    #[test]
    fn values_are_the_same_whatever_their_number_types_and_field_order() {
        let ours = bson!({"bsonType": "object", "properties": {"n": {"minimum": 0_i64}}, "required": ["a", "b"]});
        let back = bson!({"required": ["a", "b"], "properties": {"n": {"minimum": 0_i32}}, "bsonType": "object"});
        assert!(same(&ours, &back));
        let changed = bson!({"bsonType": "object", "properties": {"n": {"minimum": 1_i32}}, "required": ["a", "b"]});
        assert!(!same(&ours, &changed));
        let reordered = bson!({"bsonType": "object", "properties": {"n": {"minimum": 0}}, "required": ["b", "a"]});
        assert!(!same(&ours, &reordered), "a list's order counts");
        assert!(!same(&Bson::String("1".into()), &Bson::Int32(1)));
    }
}
