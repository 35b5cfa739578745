//! What the core remembers about a build while it runs, and how that memory is rebuilt from a
//! store when an event arrives for a build that is not in memory (after a restart, or in a later
//! `ingest`).

use std::collections::BTreeMap;

use bson::DateTime;
use buildstore_schema::{BuildDoc, Channel, RepoBuildEntry, StepDoc};

use super::doc_size::{document_len, field_len};
use super::inline_log::InlineLog;

/// A build as a store holds it: enough to carry on folding events into it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSnapshot {
    pub build: BuildDoc,
    pub steps: Vec<StepDoc>,
    pub logs: Vec<LogSnapshot>,
}

/// One channel of one step's full log, as far as the core needs it: its length, and its first and
/// last `min(len, window)` bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSnapshot {
    pub step_id: String,
    pub channel: Channel,
    pub len: u64,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BuildState {
    pub id: String,
    pub builder: String,
    pub number: i64,
    pub codebase: Option<String>,
    pub repository: Option<String>,
    pub changeset: Option<String>,
    pub time_start: DateTime,
    pub result: Option<i32>,
    pub time_end: Option<DateTime>,
    pub steps: BTreeMap<u32, StepState>,
    /// BSON bytes of the build document.
    pub doc_bytes: usize,
    /// BSON bytes each property takes in it, so that setting one again counts the difference.
    pub property_bytes: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct StepState {
    pub finished: bool,
    pub logs: [InlineLog; 3],
    /// BSON bytes of the step document without its inline logs and its `text`, which grow later.
    pub base_bytes: usize,
    /// Bytes of its `text`.
    pub text_bytes: usize,
}

impl StepState {
    pub fn new(doc: &StepDoc) -> StepState {
        let text_bytes = doc.text.as_ref().map_or(0, String::len);
        let inline = doc.stdout.len() + doc.stderr.len() + doc.headers.len();
        StepState {
            finished: doc.result.is_some(),
            logs: Default::default(),
            base_bytes: document_len(doc).saturating_sub(inline + text_bytes),
            text_bytes,
        }
    }

    pub fn log_mut(&mut self, channel: Channel) -> &mut InlineLog {
        &mut self.logs[channel_index(channel)]
    }
}

fn channel_index(channel: Channel) -> usize {
    match channel {
        Channel::Stdout => 0,
        Channel::Stderr => 1,
        Channel::Header => 2,
    }
}

impl BuildState {
    pub fn finished(&self) -> bool {
        self.result.is_some()
    }

    /// The entry this build gets in `repository`.
    pub fn repo_entry(&self) -> RepoBuildEntry {
        RepoBuildEntry {
            build: self.id.clone(),
            builder: self.builder.clone(),
            number: self.number,
            result: self.result,
            time_start: self.time_start,
            time_end: self.time_end,
        }
    }

    pub fn from_doc(doc: &BuildDoc) -> BuildState {
        BuildState {
            id: doc.id.clone(),
            builder: doc.builder.clone(),
            number: doc.number,
            codebase: doc.codebase.clone(),
            repository: doc.repository.clone(),
            changeset: doc.changeset.clone(),
            time_start: doc.time_start,
            result: doc.result,
            time_end: doc.time_end,
            steps: BTreeMap::new(),
            doc_bytes: document_len(doc),
            property_bytes: doc
                .properties
                .iter()
                .map(|(name, p)| (name.clone(), field_len(name, p)))
                .collect(),
        }
    }

    /// Rebuilds the state from a snapshot; `limit` is the inline log limit in force.
    pub fn restore(snapshot: &BuildSnapshot, limit: usize) -> BuildState {
        let mut state = BuildState::from_doc(&snapshot.build);
        for step in &snapshot.steps {
            let Ok(number) = u32::try_from(step.step) else {
                continue;
            };
            state.steps.insert(number, StepState::new(step));
        }
        for log in &snapshot.logs {
            let step = log
                .step_id
                .rsplit('/')
                .next()
                .and_then(|n| n.parse::<u32>().ok())
                .and_then(|n| state.steps.get_mut(&n));
            if let Some(step) = step {
                *step.log_mut(log.channel) =
                    InlineLog::restore(log.len, &log.head, &log.tail, limit);
            }
        }
        state
    }
}
