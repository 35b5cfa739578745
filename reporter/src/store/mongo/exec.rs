//! Sending planned commands: size-bounded multi-statement `update`/`insert` commands, write errors
//! mapped to the document and mutation they concern, statements that matched nothing looked into,
//! and retries with backoff for the errors a server or network recovers from.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bson::{doc, Bson, Document};
use buildstore_schema::Collection;
use futures::TryStreamExt;
use mongodb::error::{Error, ErrorKind};
use mongodb::Database;

use super::plan::{Plan, Statement, APPLIED_EVENTS, BUCKET, PIN_OFFSET, SPOOL_PROGRESS};
use crate::core::Batch;
use crate::store::{raw_log_len, whole, StoreError};

/// Most bytes of statements per command, well under MongoDB's 16 MiB document limit.
const COMMAND_BYTES: usize = 8 << 20;
/// Most statements per command (MongoDB's maxWriteBatchSize is 100 000).
const COMMAND_STATEMENTS: usize = 10_000;
/// Most keys in the one statement that unpins them: an event key may be a few KiB long.
const KEYS_PER_UNPIN: usize = 1000;

/// Server error codes that mean "try again": network, elections, shutdowns, timeouts.
const TRANSIENT_CODES: &[i32] = &[
    6, 7, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 134,
];

/// Whether an error is worth retrying.
pub fn is_transient(e: &Error) -> bool {
    if e.contains_label("RetryableWriteError") || e.contains_label("TransientTransactionError") {
        return true;
    }
    match e.kind.as_ref() {
        ErrorKind::Io(_)
        | ErrorKind::ServerSelection { .. }
        | ErrorKind::ConnectionPoolCleared { .. } => true,
        ErrorKind::Command(c) => TRANSIENT_CODES.contains(&c.code),
        _ => false,
    }
}

/// How to describe a driver error without credentials.
pub struct Redactor {
    pub secrets: Vec<String>,
}

impl Redactor {
    /// A driver error as a person reads it: what went wrong, then what caused it, without the
    /// labels and empty fields (`source: None, server response: None`) of its own `Display`.
    pub fn driver(&self, e: &Error) -> String {
        let mut text = e.kind.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            let part = c
                .downcast_ref::<Error>()
                .map_or_else(|| c.to_string(), |d| d.kind.to_string());
            text.push_str(": ");
            text.push_str(&part);
            cause = c.source();
        }
        self.text(&text)
    }

    /// `e` with each secret starred out where it stands on its own, not inside a longer word:
    /// a user named `us` leaves "must" as it is.
    pub fn text(&self, e: &impl std::fmt::Display) -> String {
        let mut s = e.to_string();
        for secret in self.secrets.iter().filter(|s| !s.is_empty()) {
            s = star_out(&s, secret);
        }
        s
    }
}

fn star_out(text: &str, secret: &str) -> String {
    let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(secret) {
        let (before, after) = (&rest[..at], &rest[at + secret.len()..]);
        // Inside a word: a word character runs on into the secret at either end.
        let joined_before = word(secret.chars().next()) && word(before.chars().next_back());
        let joined_after = word(secret.chars().next_back()) && word(after.chars().next());
        let alone = !(joined_before || joined_after);
        out.push_str(before);
        out.push_str(if alone { "***" } else { secret });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// A failure to apply a batch, before it is turned into a [`StoreError`].
pub enum Failure {
    Transient(Error),
    /// The server wrote the batch's commands but could not confirm them to the write concern
    /// (a replica set's majority did not answer in time): the batch is not counted as applied,
    /// and sending it again, which changes nothing already written, is worth a try.
    Unconfirmed(StoreError),
    Fatal(StoreError),
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        Failure::Fatal(e)
    }
}

pub fn driver_failure(e: Error, location: &str, redact: &Redactor) -> Failure {
    if is_transient(&e) {
        Failure::Transient(e)
    } else {
        Failure::Fatal(StoreError::Mongo {
            location: location.to_owned(),
            message: redact.driver(&e),
        })
    }
}

/// Splits documents into groups that fit one command.
fn groups(docs: Vec<Document>) -> Vec<Vec<Document>> {
    let mut out: Vec<Vec<Document>> = Vec::new();
    let mut size = 0;
    for d in docs {
        let len = bson::to_vec(&d).map(|v| v.len()).unwrap_or(0);
        if out
            .last()
            .is_none_or(|g| g.len() >= COMMAND_STATEMENTS || size + len > COMMAND_BYTES)
        {
            out.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(g) = out.last_mut() {
            g.push(d);
        }
    }
    out
}

/// Sends the whole plan: the pins of log chunks folded without an offset, the GridFS pieces,
/// the updates, the event keys, then how far into its spool the batch goes. A failure leaves
/// part of it applied; sending the same plan again, or folding the events again from what the
/// store then holds, completes it. The pins make that true of a chunk without an offset too,
/// even folded again by another process (after a crash): it is folded at its pinned offset, and
/// found already there.
pub async fn send(
    db: &Database,
    plan: &Plan,
    batch: &Batch,
    write_concern: Option<&Document>,
    location: &str,
    redact: &Redactor,
) -> Result<(), Failure> {
    let to = Target {
        db,
        write_concern,
        location,
        redact,
    };
    let pins = &batch.pins;
    let pin_docs = pins
        .iter()
        .map(|(key, offset)| doc! {"_id": key, PIN_OFFSET: i64::try_from(*offset).unwrap_or(i64::MAX)})
        .collect();
    insert_all(&to, APPLIED_EVENTS, pin_docs).await?;
    drop_pins(&to, &batch.dropped_pins).await?;
    // See `plan::SEND_ORDER` for why the full logs go first; a file after its chunks.
    for (part, docs) in [("chunks", &plan.chunks), ("files", &plan.files)] {
        let collection = format!("{BUCKET}.{part}");
        insert_all(&to, &collection, docs.clone()).await?;
    }
    for (collection, statements) in &plan.updates {
        let mut start = 0;
        for group in groups(statements.iter().map(Statement::to_document).collect()) {
            let n = group.len();
            let reply =
                db.run_command(to.command(
                    doc! {"update": collection.name(), "updates": group, "ordered": true},
                ))
                .await
                .map_err(|e| driver_failure(e, location, redact))?;
            unconfirmed(&reply, collection.name(), location)?;
            if let Some(err) = first_write_error(&reply) {
                let s = usize::try_from(err.0)
                    .ok()
                    .and_then(|i| statements.get(start + i));
                return Err(Failure::Fatal(StoreError::WriteRejected {
                    collection: collection.name().to_owned(),
                    id: s.map(|s| s.id.clone()).unwrap_or_default(),
                    mutation: s.map_or("?", |s| s.what),
                    message: err.1,
                }));
            }
            let matched = reply.get("n").and_then(whole).unwrap_or(0);
            if matched < n as i64 {
                check_misses(&to, *collection, &statements[start..start + n]).await?;
            }
            start += n;
        }
    }
    let pinned: HashSet<&str> = pins.iter().map(|(k, _)| k.as_str()).collect();
    let keys = plan
        .events
        .iter()
        .filter(|k| !pinned.contains(k.as_str()))
        .map(|k| doc! {"_id": k})
        .collect();
    insert_all(&to, APPLIED_EVENTS, keys).await?;
    // The pinned keys become keys of applied events once everything else is written.
    for chunk in pins.chunks(KEYS_PER_UNPIN) {
        let keys: Vec<&str> = chunk.iter().map(|(k, _)| k.as_str()).collect();
        let unpin = doc! {
            "q": {"_id": {"$in": keys}},
            "u": {"$unset": {PIN_OFFSET: ""}},
            "multi": true,
        };
        let command = doc! {"update": APPLIED_EVENTS, "updates": [unpin], "ordered": true};
        on_keys(&to, APPLIED_EVENTS, command, "unpin").await?;
    }
    // Last: a batch cut off before it is folded again from the spool, as before.
    // The last batch's, whatever it says: one spool's batches are sent in order, and a lower
    // one only means more is folded again.
    if let Some(p) = &batch.progress {
        let (last_id, last_key) = p.last.clone().unzip();
        let set = doc! {
            "q": {"_id": &p.spool},
            "u": {"$set": {"through": p.through, "last_id": last_id, "last_key": last_key}},
            "upsert": true,
        };
        let command = doc! {"update": SPOOL_PROGRESS, "updates": [set], "ordered": true};
        on_keys(&to, SPOOL_PROGRESS, command, "spool progress").await?;
    }
    Ok(())
}

/// Deletes the pins of `keys`, whose events were rejected (see `Batch::dropped_pins`); a key
/// recorded as applied meanwhile stays.
async fn drop_pins(to: &Target<'_>, keys: &[String]) -> Result<(), Failure> {
    for chunk in keys.chunks(KEYS_PER_UNPIN) {
        let delete = doc! {"q": {"_id": {"$in": chunk}, PIN_OFFSET: {"$exists": true}}, "limit": 0};
        let command = doc! {"delete": APPLIED_EVENTS, "deletes": [delete]};
        on_keys(to, APPLIED_EVENTS, command, "drop pin").await?;
    }
    Ok(())
}

/// Runs one write `command` on the bookkeeping `collection` (event keys, spool progress); `what`
/// names it in errors.
async fn on_keys(
    to: &Target<'_>,
    collection: &str,
    command: Document,
    what: &'static str,
) -> Result<(), Failure> {
    let reply = to
        .db
        .run_command(to.command(command))
        .await
        .map_err(|e| driver_failure(e, to.location, to.redact))?;
    unconfirmed(&reply, collection, to.location)?;
    match first_write_error(&reply) {
        Some(err) => Err(Failure::Fatal(StoreError::WriteRejected {
            collection: collection.to_owned(),
            id: String::new(),
            mutation: what,
            message: err.1,
        })),
        None => Ok(()),
    }
}

/// Where a batch's commands go, and how.
struct Target<'a> {
    db: &'a Database,
    write_concern: Option<&'a Document>,
    location: &'a str,
    redact: &'a Redactor,
}

impl Target<'_> {
    /// `command` with the write concern the URI asked for.
    fn command(&self, mut command: Document) -> Document {
        if let Some(w) = self.write_concern {
            command.insert("writeConcern", w.clone());
        }
        command
    }
}

/// Some statements of a group matched no document. A guard that finds its change already made
/// (a batch sent again) is fine; a document that is not there, or a log that does not end where
/// the chunk starts, means the store no longer holds what the batch was folded from (another
/// writer, a document deleted meanwhile). Like SQLite, the store then says the batch does not
/// fit, and its events are folded again from what the store holds, rather than their changes
/// being dropped without a word.
async fn check_misses(
    to: &Target<'_>,
    collection: Collection,
    group: &[Statement],
) -> Result<(), Failure> {
    let failure = |e| driver_failure(e, to.location, to.redact);
    let mut ids: Vec<&str> = group
        .iter()
        .filter(|s| !s.upsert)
        .map(|s| s.id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let mut stored: HashMap<String, Document> = HashMap::new();
    for chunk in ids.chunks(COMMAND_STATEMENTS) {
        let mut cursor = to
            .db
            .collection::<Document>(collection.name())
            .find(doc! {"_id": {"$in": chunk}})
            .projection(doc! {"log_bytes": 1})
            .await
            .map_err(failure)?;
        while let Some(d) = cursor.try_next().await.map_err(failure)? {
            if let Ok(id) = d.get_str("_id").map(str::to_owned) {
                stored.insert(id, d);
            }
        }
    }
    for s in group.iter().filter(|s| !s.upsert) {
        let Some(d) = stored.get(&s.id) else {
            return Err(Failure::Fatal(StoreError::Missing {
                collection,
                id: s.id.clone(),
            }));
        };
        if let Some(g) = s.log {
            let len = raw_log_len(d, g.channel);
            // The chunk was not written: a log at its end already holds it, any other does not.
            if len < g.end {
                return Err(Failure::Fatal(StoreError::LogConflict {
                    step_id: s.id.clone(),
                    channel: g.channel.as_str(),
                    len,
                    offset: g.offset,
                }));
            }
        }
    }
    Ok(())
}

/// Inserts documents with deterministic `_id`s: a duplicate key means "already there".
async fn insert_all(to: &Target<'_>, collection: &str, docs: Vec<Document>) -> Result<(), Failure> {
    let (db, location, redact) = (to.db, to.location, to.redact);
    for group in groups(docs) {
        let ids: Vec<Bson> = group
            .iter()
            .map(|d| d.get("_id").cloned().unwrap_or(Bson::Null))
            .collect();
        let reply = db
            .run_command(
                to.command(doc! {"insert": collection, "documents": group, "ordered": false}),
            )
            .await
            .map_err(|e| driver_failure(e, location, redact))?;
        unconfirmed(&reply, collection, location)?;
        let errors = reply.get_array("writeErrors").cloned().unwrap_or_default();
        for e in errors.iter().filter_map(Bson::as_document) {
            if e.get_i32("code").ok() == Some(11000) {
                continue;
            }
            let index = e
                .get_i32("index")
                .ok()
                .and_then(|i| usize::try_from(i).ok());
            return Err(Failure::Fatal(StoreError::WriteRejected {
                collection: collection.to_owned(),
                id: index
                    .and_then(|i| ids.get(i))
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                mutation: "insert",
                message: e.get_str("errmsg").unwrap_or("write error").to_owned(),
            }));
        }
    }
    Ok(())
}

/// A reply's `writeConcernError`, if it has one, as the failure of the batch.
fn unconfirmed(reply: &Document, collection: &str, location: &str) -> Result<(), Failure> {
    let Ok(e) = reply.get_document("writeConcernError") else {
        return Ok(());
    };
    let code = e.get_i32("code").unwrap_or(0);
    let text = e.get_str("errmsg").unwrap_or("no message");
    Err(Failure::Unconfirmed(StoreError::Mongo {
        location: location.to_owned(),
        message: format!(
            "the writes to {collection} were not confirmed to the write concern: {text} (code {code})"
        ),
    }))
}

fn first_write_error(reply: &Document) -> Option<(i32, String)> {
    let errors = reply.get_array("writeErrors").ok()?;
    let e = errors.first()?.as_document()?;
    let code = e.get_i32("code").unwrap_or(0);
    let msg = e.get_str("errmsg").unwrap_or("write error");
    Some((
        e.get_i32("index").unwrap_or(0),
        format!("{msg} (code {code})"),
    ))
}

/// Backoff before retry `attempt` (1-based): 100 ms doubling, capped at 5 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_driver_error_reads_without_its_labels_and_empty_fields_and_keeps_secrets_out() {
        let refused = std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection to db.example.org refused",
        );
        let e = Error::from(refused);
        // What the driver's own Display adds, and the message leaves out.
        assert!(e.to_string().contains("labels: {}"), "{e}");
        let redact = Redactor {
            secrets: vec!["db.example.org".into()],
        };
        assert_eq!(redact.driver(&e), "I/O error: connection to *** refused");
    }

    #[test]
    fn a_secret_is_starred_out_where_it_stands_alone_not_inside_words() {
        let redact = Redactor {
            secrets: vec!["us".into(), "b".into(), "p@ss".into()],
        };
        assert_eq!(
            redact.text(&"user us: password must be URL encoded, by b"),
            "user ***: password must be URL encoded, by ***"
        );
        assert_eq!(
            redact.text(&"mongodb://us:p@ss@host/db"),
            "mongodb://***:***@host/db"
        );
        assert_eq!(redact.text(&"xp@ssx"), "xp@ssx");
    }
}
