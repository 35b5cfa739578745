//! Mutations: the core's output and every store's input. Each one is safe to apply twice (delivery
//! into a store is at-least-once), which is why they carry whole values, positions and offsets
//! rather than increments.

use bson::DateTime;
use buildstore_schema::{
    BuildDoc, Channel, CommitDoc, Ident, PropertyDoc, RepoBuildEntry, StepDoc,
};

#[derive(Debug, Clone, PartialEq)]
pub enum Mutation {
    /// (Re-)announce a builder: status back to "offline", description replaced.
    AddBuilder {
        id: String,
        name: String,
        master_id: Ident,
        category: Option<String>,
        tags: Vec<String>,
        slaves: Vec<String>,
    },
    /// Set a builder's status, creating the builder if it was never announced.
    SetBuilderStatus {
        id: String,
        name: String,
        master_id: Ident,
        status: String,
    },
    /// Create the builder (status "offline") only if it does not exist yet.
    EnsureBuilder {
        id: String,
        name: String,
        master_id: Ident,
    },
    /// Insert a new build document; an existing one is left alone.
    StartBuild(Box<BuildDoc>),
    /// Insert a new step document and put its `_id` at `position` of the build's `steps` (unless
    /// the list has it already).
    StartStep {
        doc: Box<StepDoc>,
        position: usize,
    },
    /// Append `text` to the full log at byte `offset` (skipped if the log is already longer), and
    /// update the inline field of the step document accordingly.
    AppendLog {
        step_id: String,
        channel: Channel,
        offset: u64,
        text: String,
        inline: InlineUpdate,
    },
    FinishStep {
        step_id: String,
        result: i32,
        text: Option<String>,
        time: DateTime,
    },
    SetProperty {
        build_id: String,
        name: String,
        property: PropertyDoc,
    },
    SetChangeset {
        build_id: String,
        changeset: String,
    },
    FinishBuild {
        build_id: String,
        result: i32,
        time: DateTime,
    },
    /// Upsert `entry` (keyed by its build) into `builds` of the commit `hash`, creating the
    /// repository document if needed (`repository_uri` is only used then). The entry goes last (a
    /// relinked build moves there), and past [`crate::MAX_COMMIT_BUILDS`] entries the first ones
    /// (linked longest ago) go.
    LinkBuildToCommit {
        hash: String,
        repository_uri: Option<String>,
        entry: RepoBuildEntry,
    },
    /// Set a commit's metadata; its `builds` are left as they are (empty for a new document).
    UpsertCommit(Box<CommitDoc>),
}

/// How an appended log chunk changes the inline field of the step.
#[derive(Debug, Clone, PartialEq)]
pub enum InlineUpdate {
    /// The field still holds the whole log: append the same text.
    Append,
    /// The log is past the inline limit: the field becomes this (head, marker, tail) and the step
    /// gets `log_truncated: true`.
    Replace(String),
    /// Like `Replace`, for the chunk with which the log outgrew the limit. `earlier` is the log
    /// before this chunk, which until now the step document held whole: a store that keeps full
    /// logs only past the limit saves it now.
    Spill { value: String, earlier: String },
}

/// What a store applies atomically: the mutations of some events, and those events' keys so that
/// they are recognised as applied from then on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub mutations: Vec<Mutation>,
    pub events: Vec<String>,
    /// The keys of log chunks folded without an offset, each with the offset it was folded at.
    /// A store that may keep part of a batch (MongoDB) records them before anything else: folded
    /// again after a crash, such a chunk goes where it went the first time, rather than after
    /// itself.
    pub pins: Vec<(String, u64)>,
    /// Keys pinned by an earlier attempt whose events were rejected when folded again (their
    /// build was deleted meanwhile): their pins go, or a corrected event sent again under the
    /// same id would be held to the old offset.
    pub dropped_pins: Vec<String>,
    /// How far into a spool the batch's events go, recorded with the batch: a batch the store
    /// took but whose events were never released from the spool (the process killed in between)
    /// is then known to be in the store, and is not folded again.
    pub progress: Option<SpoolProgress>,
}

/// A position in a spool: every event of spool `spool` with an id up to `through` is in the
/// store. `spool` names one spool file, so that a new spool, whose ids start again, is never
/// taken for an old one; `last` is the spool id and key of the batch's last event that has a
/// key (lines the spool could not read are skipped, so its id may be below `through`), by
/// which a spool file checks that the progress is of its own events and not of a copy's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolProgress {
    pub spool: String,
    pub through: i64,
    pub last: Option<(i64, String)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
            && self.events.is_empty()
            && self.pins.is_empty()
            && self.dropped_pins.is_empty()
            && self.progress.is_none()
    }
}
