//! The functional core: folds events into per-build state and emits the [`Mutation`]s that turn
//! them into documents. Nothing here does I/O; every rule of the documented schema (changeset
//! correction, FETCH_HEAD filtering, inline log limits, idempotent replays) lives and is tested
//! here, and the stores only carry the mutations out.

mod changeset;
mod doc_size;
mod fold;
mod inline_log;
mod mutation;
mod state;
mod storable;

pub use changeset::{ChangesetPolicy, PatternError, MAX_HASH_BYTES};
pub use doc_size::{
    MAX_COMMIT_BUILDS, MAX_COMMIT_METADATA_BYTES, MAX_DOCUMENT_BYTES, MAX_INLINE_LIMIT,
};
pub use fold::{Core, CoreConfig, RuleError};
pub use inline_log::{InlineLog, MARKER_END, MIN_INLINE_LIMIT};
pub use mutation::{Batch, InlineUpdate, Mutation, SpoolProgress};
pub use state::{BuildSnapshot, LogSnapshot};
pub use storable::check_standalone;

use buildstore_schema::Ident;

/// `_id` of a builder document.
pub fn builder_id(master_id: &Ident, builder: &str) -> String {
    format!("{master_id}/{builder}")
}

/// `_id` of a build document. The build number is not part of it: numbers restart with the master.
pub fn build_id(master_id: &Ident, build_id: &Ident) -> String {
    format!("{master_id}/{build_id}")
}

/// `_id` of a step document.
pub fn step_id(build_doc_id: &str, step: u32) -> String {
    format!("{build_doc_id}/{step}")
}

/// The key under which an applied `event_id` is remembered (ids are unique per sender).
pub fn event_key(master_id: &Ident, event_id: &str) -> String {
    format!("{master_id}/{event_id}")
}
