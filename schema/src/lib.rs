//! The shapes buildstore speaks: events that come in (protocol v1) and the documents that go out
//! (the collections `builders`, `builds`, `steps` and `repository`, named as the 2010 schema named
//! them). No I/O lives here; every other part of buildstore depends on these types.

pub mod collection;
pub mod document;
pub mod event;
pub mod json_line;
pub mod json_schema;
mod json_value;
pub mod validator;
pub mod value;

pub use collection::{Collection, IndexSpec, INDEXES};
pub use document::{
    BuildDoc, BuilderDoc, ChangeDoc, CommitDoc, LogBytes, PropertyDoc, RepoBuildEntry, StepDoc,
};
pub use event::{Channel, Event, EventError, EventKind, MAX_NAME_BYTES};
pub use value::{Ident, ResultCode, Timestamp, MAX_ID_BYTES};
