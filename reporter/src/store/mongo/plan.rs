//! How a batch of mutations becomes MongoDB commands: one ordered `update` command per collection
//! carrying all of that collection's statements, plus inserts for GridFS and for the applied event
//! keys. Every statement is safe to repeat (deterministic `_id`s, upserts, `$setOnInsert`, guards
//! on `log_bytes` and on array membership), so a batch that failed halfway is completed by sending
//! it again. Pure: no I/O, tested without a server.

use bson::{doc, Binary, Bson, Document};
use buildstore_schema::{Channel, Collection};

use crate::core::{InlineUpdate, Mutation, MAX_COMMIT_BUILDS};

/// GridFS chunk size: the driver's default (255 KiB).
pub const CHUNK_SIZE: usize = 255 * 1024;
/// The GridFS bucket holding full logs.
pub const BUCKET: &str = "logs";
/// Applied event keys.
pub const APPLIED_EVENTS: &str = "applied_events";
/// Where each spool's last id in the store is kept (see `Batch::progress`): one document per
/// spool, `{_id: SPOOL, through: ID, last_id: ID, last_key: KEY}`.
pub const SPOOL_PROGRESS: &str = "spool_progress";
/// The field of a key in [`APPLIED_EVENTS`] that holds a pinned log chunk's offset while its
/// batch is being written (see `Batch::pins`).
pub const PIN_OFFSET: &str = "offset";

/// One update statement and what it is for (named in errors).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub q: Document,
    pub u: Update,
    pub upsert: bool,
    pub id: String,
    pub what: &'static str,
    /// For a log chunk: the log it extends, to tell a chunk applied before from a log that does
    /// not fit when the statement matches nothing.
    pub log: Option<LogGuard>,
}

/// The stored size a log chunk's statement requires, and the size it leaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogGuard {
    pub channel: Channel,
    pub offset: u64,
    pub end: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    Operators(Document),
    Pipeline(Vec<Document>),
}

impl Statement {
    pub fn to_document(&self) -> Document {
        let u = match &self.u {
            Update::Operators(d) => Bson::Document(d.clone()),
            Update::Pipeline(p) => Bson::Array(p.iter().cloned().map(Bson::Document).collect()),
        };
        doc! {"q": self.q.clone(), "u": u, "upsert": self.upsert, "multi": false}
    }
}

/// The commands of one batch. They are sent GridFS first, then the updates, then the event keys.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Per collection in [`SEND_ORDER`], its statements in mutation order.
    pub updates: Vec<(Collection, Vec<Statement>)>,
    /// GridFS chunk documents, then file documents (a file appears only once its chunks exist).
    pub chunks: Vec<Document>,
    pub files: Vec<Document>,
    pub events: Vec<String>,
}

fn bson<T: serde::Serialize>(v: &T) -> Bson {
    // The document types serialize to BSON by construction.
    bson::to_bson(v).unwrap_or(Bson::Null)
}

fn without_id(doc: Bson) -> Document {
    match doc {
        Bson::Document(mut d) => {
            d.remove("_id");
            d
        }
        _ => Document::new(),
    }
}

fn stmt(id: &str, q: Document, u: Document, upsert: bool, what: &'static str) -> Statement {
    Statement {
        q,
        u: Update::Operators(u),
        upsert,
        id: id.to_owned(),
        what,
        log: None,
    }
}

/// Merges the log chunks of one step channel within a batch into one, at the place of the first:
/// fewer statements, fewer GridFS files, every byte sent once. Other mutations never touch a
/// channel's inline field or size, so moving later chunks forward is safe.
pub fn coalesce_logs(mutations: &[Mutation]) -> Vec<Mutation> {
    let mut out: Vec<Mutation> = Vec::with_capacity(mutations.len());
    let mut open: std::collections::HashMap<(String, Channel), usize> = Default::default();
    for m in mutations {
        if let Mutation::AppendLog {
            step_id,
            channel,
            offset,
            text,
            inline,
        } = m
        {
            if let Some(&at) = open.get(&(step_id.clone(), *channel)) {
                if let Mutation::AppendLog {
                    offset: first,
                    text: merged,
                    inline: merged_inline,
                    ..
                } = &mut out[at]
                {
                    if *first + merged.len() as u64 == *offset {
                        let before = merged.len();
                        merged.push_str(text);
                        *merged_inline = match (
                            std::mem::replace(merged_inline, InlineUpdate::Append),
                            inline,
                        ) {
                            (InlineUpdate::Append, InlineUpdate::Append) => InlineUpdate::Append,
                            // The log crossed the limit inside the merged chunk: what came before the
                            // merged chunk is the crossing chunk's `earlier` minus our first part.
                            (InlineUpdate::Append, InlineUpdate::Spill { value, earlier }) => {
                                InlineUpdate::Spill {
                                    value: value.clone(),
                                    earlier: earlier[..earlier.len().saturating_sub(before)]
                                        .to_owned(),
                                }
                            }
                            (InlineUpdate::Spill { earlier, .. }, InlineUpdate::Replace(value)) => {
                                InlineUpdate::Spill {
                                    value: value.clone(),
                                    earlier,
                                }
                            }
                            (_, later) => later.clone(),
                        };
                        continue;
                    }
                }
            }
            open.insert((step_id.clone(), *channel), out.len());
        }
        out.push(m.clone());
    }
    out
}

/// The order in which a batch's update commands are sent. A batch cut off halfway (a crash, an
/// outage that outlasts the retries) is redone from what the build and step documents say, since
/// that is what the fold reloads. So whatever is derived from them must be written first: a
/// commit's link to a build before the build's corrected changeset, a step pushed onto its
/// build's list before the step document exists, and the full log in GridFS (sent before all of
/// these) before the step's `log_bytes` counts it. Otherwise the redo would find the step or
/// build already changed, take the event as applied, and never write the rest.
const SEND_ORDER: [Collection; 4] = [
    Collection::Repository,
    Collection::Builders,
    Collection::Builds,
    Collection::Steps,
];

/// Plans the commands for `mutations` and the event keys of the batch.
pub fn plan(mutations: &[Mutation], events: &[String], now: bson::DateTime) -> Plan {
    let mut by: Vec<(Collection, Vec<Statement>)> =
        SEND_ORDER.iter().map(|c| (*c, Vec::new())).collect();
    let mut chunks = Vec::new();
    let mut files = Vec::new();
    let mut push = |c: Collection, s: Statement| {
        if let Some((_, list)) = by.iter_mut().find(|(k, _)| *k == c) {
            list.push(s);
        }
    };
    for m in coalesce_logs(mutations) {
        match &m {
            Mutation::AddBuilder {
                id,
                name,
                master_id,
                category,
                tags,
                slaves,
            } => push(
                Collection::Builders,
                stmt(
                    id,
                    doc! {"_id": id},
                    doc! {"$set": {"name": name, "master_id": bson(master_id), "status": "offline",
                    "category": bson(category), "tags": bson(tags), "slaves": bson(slaves)}},
                    true,
                    "builder_added",
                ),
            ),
            Mutation::SetBuilderStatus {
                id,
                name,
                master_id,
                status,
            } => push(
                Collection::Builders,
                stmt(
                    id,
                    doc! {"_id": id},
                    doc! {"$set": {"status": status},
                    "$setOnInsert": {"name": name, "master_id": bson(master_id), "category": Bson::Null,
                                     "tags": [], "slaves": []}},
                    true,
                    "builder status",
                ),
            ),
            Mutation::EnsureBuilder {
                id,
                name,
                master_id,
            } => push(
                Collection::Builders,
                stmt(
                    id,
                    doc! {"_id": id},
                    doc! {"$setOnInsert": {"name": name, "master_id": bson(master_id), "status": "offline",
                    "category": Bson::Null, "tags": [], "slaves": []}},
                    true,
                    "builder of a started build",
                ),
            ),
            Mutation::StartBuild(b) => push(
                Collection::Builds,
                stmt(
                    &b.id,
                    doc! {"_id": &b.id},
                    doc! {"$setOnInsert": without_id(bson(b))},
                    true,
                    "build_started",
                ),
            ),
            Mutation::StartStep { doc: s, position } => {
                push(
                    Collection::Steps,
                    stmt(
                        &s.id,
                        doc! {"_id": &s.id},
                        doc! {"$setOnInsert": without_id(bson(s))},
                        true,
                        "step_started",
                    ),
                );
                push(
                    Collection::Builds,
                    stmt(
                        &s.build,
                        doc! {"_id": &s.build, "steps": {"$ne": &s.id}},
                        doc! {"$push": {"steps": {"$each": [&s.id], "$position": *position as i64}}},
                        false,
                        "step_started (build's step list)",
                    ),
                );
            }
            Mutation::AppendLog {
                step_id,
                channel,
                offset,
                text,
                inline,
            } => {
                let field = channel.field();
                let size = format!("log_bytes.{field}");
                let end = (*offset + text.len() as u64) as i64;
                let q = doc! {"_id": step_id, &size: *offset as i64};
                let u = match inline {
                    InlineUpdate::Append => Update::Pipeline(vec![doc! {"$set": {
                        field: {"$concat": [format!("${field}"), {"$literal": text}]},
                        &size: end,
                    }}]),
                    InlineUpdate::Replace(value) | InlineUpdate::Spill { value, .. } => {
                        Update::Operators(
                            doc! {"$set": {field: value, &size: end, "log_truncated": true}},
                        )
                    }
                };
                push(
                    Collection::Steps,
                    Statement {
                        q,
                        u,
                        upsert: false,
                        id: step_id.clone(),
                        what: "log",
                        log: Some(LogGuard {
                            channel: *channel,
                            offset: *offset,
                            end: end as u64,
                        }),
                    },
                );
                // Past the inline limit the step document no longer holds the whole log: from the
                // chunk that crossed it on, the full text lives in GridFS.
                if let InlineUpdate::Spill { earlier, .. } = inline {
                    gridfs_piece(
                        step_id,
                        *channel,
                        0,
                        earlier.as_bytes(),
                        now,
                        &mut chunks,
                        &mut files,
                    );
                }
                if !matches!(inline, InlineUpdate::Append) {
                    gridfs_piece(
                        step_id,
                        *channel,
                        *offset,
                        text.as_bytes(),
                        now,
                        &mut chunks,
                        &mut files,
                    );
                }
            }
            Mutation::FinishStep {
                step_id,
                result,
                text,
                time,
            } => push(
                Collection::Steps,
                stmt(
                    step_id,
                    doc! {"_id": step_id},
                    doc! {"$set": {"time_end": *time, "result": *result, "successful": *result == 0,
                    "text": bson(text)}},
                    false,
                    "step_finished",
                ),
            ),
            Mutation::SetProperty {
                build_id,
                name,
                property,
            } => push(
                Collection::Builds,
                set_property(build_id, name, bson(property)),
            ),
            Mutation::SetChangeset {
                build_id,
                changeset,
            } => push(
                Collection::Builds,
                stmt(
                    build_id,
                    doc! {"_id": build_id},
                    doc! {"$set": {"changeset": changeset}},
                    false,
                    "changeset",
                ),
            ),
            Mutation::FinishBuild {
                build_id,
                result,
                time,
            } => push(
                Collection::Builds,
                stmt(
                    build_id,
                    doc! {"_id": build_id},
                    doc! {"$set": {"result": *result, "time_end": *time}},
                    false,
                    "build_finished",
                ),
            ),
            Mutation::LinkBuildToCommit {
                hash,
                repository_uri,
                entry,
            } => {
                let mut on_insert = doc! {"builds": []};
                if let Some(uri) = repository_uri {
                    on_insert.insert("repository_uri", uri);
                }
                let entry = bson(entry);
                let build = entry
                    .as_document()
                    .and_then(|d| d.get_str("build").ok())
                    .unwrap_or_default()
                    .to_owned();
                // Create the commit document if needed, take this build's entry out, add it last
                // (dropping the first past the limit): three statements that never collide on
                // `_id` and give the same list when the whole plan is sent again. The push only
                // matches while the build is not listed: a retry may run while the first attempt
                // is still on the server, and two pulls followed by two pushes would otherwise
                // list the build twice.
                for s in [
                    stmt(
                        hash,
                        doc! {"_id": hash},
                        doc! {"$setOnInsert": on_insert},
                        true,
                        "link build to commit",
                    ),
                    stmt(
                        hash,
                        doc! {"_id": hash},
                        doc! {"$pull": {"builds": {"build": &build}}},
                        false,
                        "link build to commit",
                    ),
                    stmt(
                        hash,
                        doc! {"_id": hash, "builds.build": {"$ne": &build}},
                        doc! {"$push": {"builds": {
                            "$each": [entry],
                            "$slice": -(MAX_COMMIT_BUILDS as i64),
                        }}},
                        false,
                        "link build to commit",
                    ),
                ] {
                    push(Collection::Repository, s);
                }
            }
            Mutation::UpsertCommit(c) => {
                let mut set = without_id(bson(c));
                set.remove("builds");
                push(
                    Collection::Repository,
                    stmt(
                        &c.id,
                        doc! {"_id": &c.id},
                        doc! {"$set": set, "$setOnInsert": {"builds": []}},
                        true,
                        "commit",
                    ),
                );
            }
        }
    }
    by.retain(|(_, list)| !list.is_empty());
    Plan {
        updates: by,
        chunks,
        files,
        events: events.to_vec(),
    }
}

/// `properties.NAME`, or `$setField` for names that a dotted path would misread.
fn set_property(build_id: &str, name: &str, property: Bson) -> Statement {
    if name.contains('.') {
        return Statement {
            q: doc! {"_id": build_id},
            u: Update::Pipeline(vec![doc! {"$set": {"properties": {"$setField": {
            "field": {"$literal": name}, "input": "$properties", "value": {"$literal": property}}}}}]),
            upsert: false,
            id: build_id.to_owned(),
            what: "property",
            log: None,
        };
    }
    stmt(
        build_id,
        doc! {"_id": build_id},
        doc! {"$set": {format!("properties.{name}"): property}},
        false,
        "property",
    )
}

/// The field of a GridFS piece that says where it ends in its log (its offset plus its length),
/// indexed with the file name: a read finds the pieces of its window without the ones before.
pub const PIECE_END: &str = "metadata.end";

/// The GridFS file name of one channel of one step; a log is the files of that name by offset.
pub fn log_file_name(step_id: &str, channel: Channel) -> String {
    format!("{step_id}/{}", channel.as_str())
}

fn gridfs_piece(
    step_id: &str,
    channel: Channel,
    offset: u64,
    bytes: &[u8],
    now: bson::DateTime,
    chunks: &mut Vec<Document>,
    files: &mut Vec<Document>,
) {
    if bytes.is_empty() {
        return;
    }
    let filename = log_file_name(step_id, channel);
    // The end is part of the id: a redo of a cut-off batch may merge a different run of chunks
    // into the piece at this offset, and a longer piece must not be taken for the shorter one
    // already there. Readers take overlapping pieces byte by byte.
    let file_id = format!("{filename}/{offset}-{}", offset + bytes.len() as u64);
    for (n, part) in bytes.chunks(CHUNK_SIZE).enumerate() {
        chunks.push(doc! {
            "_id": chunk_id(&file_id, n),
            "files_id": &file_id,
            "n": n as i32,
            "data": Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: part.to_vec() },
        });
    }
    files.push(doc! {
        "_id": &file_id,
        "length": bytes.len() as i64,
        "chunkSize": CHUNK_SIZE as i32,
        "uploadDate": now,
        "filename": filename,
        "metadata": {
            "step": step_id,
            "channel": channel.as_str(),
            "offset": offset as i64,
            "end": (offset + bytes.len() as u64) as i64,
        },
    });
}

/// The id of chunk `n` of the piece `file_id`: an ObjectId, as GridFS readers expect, and the
/// same at every attempt of a batch. A re-sent chunk is then refused by `_id` as already there,
/// also before the bucket's unique (files_id, n) index exists: a store down at start gets its
/// indexes in the background while batches are written, and a chunk with a new id at each
/// attempt was stored once per attempt then, which doubled the log's text and made the index
/// impossible to create.
fn chunk_id(file_id: &str, n: usize) -> bson::oid::ObjectId {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(file_id.as_bytes())
        .chain_update([0])
        .chain_update((n as u64).to_be_bytes())
        .finalize();
    let mut id = [0u8; 12];
    id.copy_from_slice(&digest[..12]);
    bson::oid::ObjectId::from_bytes(id)
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
