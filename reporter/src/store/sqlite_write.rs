//! The SQLite store's write path: one batch in one transaction. The text a batch adds to a log is
//! appended as one chunk at its offset, each document the batch touches is loaded once, changed
//! in memory and written back once, and the batch's event keys are recorded so that the events
//! count as applied, and with them how far into the spool they go.

use std::collections::HashMap;

use buildstore_schema::{Channel, Collection};
use rusqlite::types::Value as SqlValue;
use rusqlite::vtab::array::Array;
use rusqlite::{params, params_from_iter, Transaction};

use super::{column_values, columns, load_bytes, log_len, per_collection};
use crate::core::{Batch, Mutation};
use crate::store::docs::{DocSet, Loader};
use crate::store::StoreError;

/// Loads documents inside the batch's transaction, and remembers the column values each one had.
struct TxLoader<'a, E> {
    tx: &'a Transaction<'a>,
    err: E,
    columns: HashMap<(Collection, String), Vec<SqlValue>>,
}

impl<E: Fn(rusqlite::Error) -> StoreError> Loader for TxLoader<'_, E> {
    fn load(&mut self, collection: Collection, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let bytes = load_bytes(self.tx, collection, id).map_err(&self.err)?;
        if let Some(bytes) = &bytes {
            let values = column_values(collection, columns(collection), id, bytes)?;
            self.columns.insert((collection, id.to_owned()), values);
        }
        Ok(bytes)
    }
}

pub(super) fn apply_batch(
    tx: &Transaction,
    batch: &Batch,
    err: &(impl Fn(rusqlite::Error) -> StoreError + Clone),
) -> Result<(), StoreError> {
    let mut docs = DocSet::default();
    let mut loader = TxLoader {
        tx,
        err: err.clone(),
        columns: HashMap::new(),
    };
    let mut lens: HashMap<(&str, Channel), u64> = HashMap::new();
    // The batch's new text of each log, from the offset it starts at: one row per log and batch
    // rather than one per chunk.
    let mut appended: HashMap<(&str, Channel), (u64, Vec<u8>)> = HashMap::new();
    for m in &batch.mutations {
        if let Mutation::AppendLog {
            step_id,
            channel,
            offset,
            text,
            ..
        } = m
        {
            let key = (step_id.as_str(), *channel);
            let len = match lens.get(&key) {
                Some(n) => *n,
                None => log_len(tx, step_id, *channel).map_err(err)?.unwrap_or(0),
            };
            let end = offset + text.len() as u64;
            if end <= len {
                continue; // applied before: this batch is a retry
            }
            if *offset != len {
                return Err(StoreError::LogConflict {
                    step_id: step_id.clone(),
                    channel: channel.as_str(),
                    len,
                    offset: *offset,
                });
            }
            appended
                .entry(key)
                .or_insert_with(|| (*offset, Vec::new()))
                .1
                .extend_from_slice(text.as_bytes());
            lens.insert(key, end);
        }
        docs.apply(m, &mut loader)?;
    }
    for ((step_id, channel), (offset, data)) in appended {
        tx.prepare_cached(
            "INSERT INTO log_chunks (step_id, channel, offset, data) VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut st| st.execute(params![step_id, channel.as_str(), offset as i64, data]))
        .map_err(err)?;
    }
    for (collection, id, bytes) in docs.into_writes()? {
        let values = column_values(collection, columns(collection), &id, &bytes)?;
        let statements = statements(collection);
        // Most writes change a document but none of its indexed fields (a log line, a step's
        // end): writing the document alone leaves every index of the table untouched.
        let unchanged = loader.columns.get(&(collection, id.clone())) == Some(&values);
        let mut row = vec![SqlValue::Text(id), SqlValue::Blob(bytes)];
        let sql = if unchanged {
            &statements.document_only
        } else {
            row.extend(values);
            &statements.upsert
        };
        tx.prepare_cached(sql)
            .and_then(|mut st| st.execute(params_from_iter(row)))
            .map_err(err)?;
    }
    // One statement for all the keys, bound as one array: it saves binding and stepping a
    // statement per key (about an eighth of what recording a key took).
    let keys: Array = std::rc::Rc::new(batch.events.iter().cloned().map(SqlValue::Text).collect());
    tx.prepare_cached("INSERT OR IGNORE INTO applied_events (key) SELECT value FROM rarray(?1)")
        .and_then(|mut st| st.execute([keys]))
        .map_err(err)?;
    // The last batch's, whatever it says: one spool's batches are written in order, and a lower
    // one only means more is folded again.
    if let Some(p) = &batch.progress {
        let (last_id, last_key) = p.last.clone().unzip();
        tx.prepare_cached(
            "INSERT OR REPLACE INTO spool_progress (spool, through, last_id, last_key)
             VALUES (?1, ?2, ?3, ?4)",
        )
        .and_then(|mut st| st.execute(params![p.spool, p.through, last_id, last_key]))
        .map_err(err)?;
    }
    Ok(())
}

/// The two ways a document is written back.
struct Statements {
    /// Insert, or replace the document and its columns.
    upsert: String,
    /// Replace the document of an existing row; its columns stay.
    document_only: String,
}

fn statements(collection: Collection) -> &'static Statements {
    static ALL: std::sync::OnceLock<[Statements; 4]> = std::sync::OnceLock::new();
    per_collection(&ALL, collection, |c| {
        let cols = columns(c);
        let names: String = cols.iter().map(|c| format!(", {c}")).collect();
        let marks: String = (0..cols.len()).map(|i| format!(", ?{}", i + 3)).collect();
        let updates: String = cols
            .iter()
            .map(|c| format!(", {c} = excluded.{c}"))
            .collect();
        Statements {
            upsert: format!(
                "INSERT INTO {c} (_id, doc{names}) VALUES (?1, ?2{marks})
                 ON CONFLICT(_id) DO UPDATE SET doc = excluded.doc{updates}"
            ),
            document_only: format!("UPDATE {c} SET doc = ?2 WHERE _id = ?1"),
        }
    })
}
