//! buildstore: turns the events of a build master into denormalized build documents.
//!
//! - [`core`]: the pure rules, events → mutations.
//! - [`store`]: where mutations go (the embedded SQLite store; MongoDB later).
//! - [`pipeline`]: the shell that reads events, de-duplicates them, recovers builds from the store
//!   and writes batches.

pub mod core;
pub mod export;
pub mod pipeline;
pub mod serve;
pub mod spool;
pub mod store;
pub mod synth;
