//! buildstore: turns the events of a build master into denormalized build documents.
//!
//! - [`core`]: the pure rules, events → mutations.
//! - [`store`]: where mutations go: the embedded SQLite store, or MongoDB.
//! - [`pipeline`]: the shell that de-duplicates events, recovers builds from the store and
//!   writes batches; `ingest` reads a stream through it.
//! - [`spool`] and [`serve`]: the durable spool and the socket daemon in front of it.
//! - [`web`]: the pages and JSON API that show builds from any store.
//! - `http`: the HTTP server under the pages and the metrics, with its connection limits.
//! - `lines`: protocol lines read with a length limit, for `ingest` and the socket alike.
//! - [`Reporter`]: the same durable path for a build master written in Rust.

pub use buildstore_core as core;
mod clip;
mod embed;
pub mod export;
mod http;
mod lines;
pub mod pipeline;
pub mod serve;
pub mod spool;
pub mod store;
pub mod synth;
pub mod web;

pub use embed::{Reporter, ReporterConfig, ReporterError, ReporterStats};
