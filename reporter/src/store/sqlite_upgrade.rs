//! Bringing a store file of an earlier layout to this one: the columns added since, filled from
//! the stored documents, and the indexes.

use std::collections::HashSet;

use buildstore_schema::{Collection, INDEXES};
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, Transaction, TransactionBehavior};

use super::{column_values, columns, index_name, indexes, tables, BACKFILL_PAGE, LAYOUT_VERSION};
use crate::store::StoreError;

/// Brings a file whose layout is `version` (its `user_version`) up to this one. `CREATE TABLE IF
/// NOT EXISTS` leaves an old table as it is, so the columns added since are added here and filled
/// from the documents before any index needs them. The write lock is taken first: two processes
/// opening an old file at once must not both add a column.
pub(super) fn upgrade(
    conn: &mut Connection,
    version: i64,
    err: &impl Fn(rusqlite::Error) -> StoreError,
) -> Result<(), StoreError> {
    // A file at this layout, with every index, is not written at all. Every open would
    // otherwise commit (the version, at least), and such a commit by `export` or the web view,
    // between the reads and the writes of the daemon's batch, made that batch fail with
    // "database is locked". The indexes are looked at too: some were added without a new
    // layout version, and a query naming a missing one fails.
    if version == LAYOUT_VERSION && has_every_index(conn).map_err(err)? {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    tx.execute_batch(&tables()).map_err(err)?;
    for collection in Collection::ALL {
        let present: HashSet<String> = tx
            .prepare(&format!(
                "SELECT name FROM pragma_table_info('{collection}')"
            ))
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(err)?;
        let missing: Vec<&str> = columns(collection)
            .iter()
            .copied()
            .filter(|c| !present.contains(*c))
            .collect();
        if missing.is_empty() {
            continue;
        }
        for c in &missing {
            tx.execute_batch(&format!("ALTER TABLE {collection} ADD COLUMN {c}"))
                .map_err(err)?;
        }
        backfill(&tx, collection, &missing, err)?;
    }
    tx.execute_batch(&indexes()).map_err(err)?;
    tx.pragma_update(None, "user_version", LAYOUT_VERSION)
        .map_err(err)?;
    tx.commit().map_err(err)
}

fn has_every_index(conn: &Connection) -> rusqlite::Result<bool> {
    let present: HashSet<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index'")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(INDEXES
        .iter()
        .all(|spec| present.contains(&index_name(spec))))
}

/// Sets `cols` of every row of `collection` from its stored document, as a write would have.
fn backfill(
    tx: &Transaction,
    collection: Collection,
    cols: &[&str],
    err: &impl Fn(rusqlite::Error) -> StoreError,
) -> Result<(), StoreError> {
    let sets: Vec<String> = cols.iter().map(|c| format!("{c} = ?")).collect();
    let mut update = tx
        .prepare(&format!(
            "UPDATE {collection} SET {} WHERE _id = ?",
            sets.join(", ")
        ))
        .map_err(err)?;
    let mut page = tx
        .prepare(&format!(
            "SELECT _id, doc FROM {collection} WHERE ?1 IS NULL OR _id > ?1 ORDER BY _id LIMIT ?2"
        ))
        .map_err(err)?;
    let mut after: Option<String> = None;
    loop {
        let rows: Vec<(String, Vec<u8>)> = page
            .query_map(params![after, BACKFILL_PAGE], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(|rows| rows.collect())
            .map_err(err)?;
        let Some((last, _)) = rows.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        for (id, bytes) in rows {
            let mut values = column_values(collection, cols, &id, &bytes)?;
            values.push(SqlValue::Text(id));
            update.execute(params_from_iter(values)).map_err(err)?;
        }
    }
}
