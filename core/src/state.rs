//! What the core remembers about a build while it runs, and how that memory is rebuilt from a
//! store when an event arrives for a build that is not in memory (after a restart, or in a later
//! `ingest`).

use std::collections::BTreeMap;

use bson::DateTime;
use buildstore_schema::{BuildDoc, Channel, RepoBuildEntry, StepDoc};

use super::doc_size::{
    document_field_len, document_len, end_reserve, started_step_len, step_end_reserve,
    string_over_null,
};
use super::inline_log::InlineLog;
use super::mutation::InlineUpdate;

/// A build as a store holds it: enough to carry on folding events into it.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSnapshot {
    pub build: BuildDoc,
    pub steps: Vec<StepDoc>,
    pub logs: Vec<LogSnapshot>,
}

/// One channel of one step's full log, as far as the core needs it: its length, its first and
/// last `min(len, window)` bytes, and whether the step document's inline field holds all of it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogSnapshot {
    pub step_id: String,
    pub channel: Channel,
    pub len: u64,
    /// The whole log when `inline_whole`.
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    /// The inline field is the whole log, not cut to an inline limit (which may have been
    /// another than the one the core runs with now).
    pub inline_whole: bool,
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
    /// BSON bytes of the build document once it has ended (see
    /// [`super::doc_size::end_reserve`]).
    pub doc_bytes: usize,
    /// BSON bytes each property takes in it, so that setting one again counts the difference.
    pub property_bytes: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct StepState {
    pub finished: bool,
    pub logs: [InlineLog; 3],
    /// BSON bytes of the step document without its inline logs and its `text`, which grow later,
    /// and with the fields of its end, counted from its start (see
    /// [`super::doc_size::step_end_reserve`]).
    pub base_bytes: usize,
    /// Bytes its `text` takes beyond a null.
    pub text_bytes: usize,
    /// Bytes of each inline log field as the document holds it now. A store written with a
    /// higher inline limit may hold more than the limit in force, until the next chunk.
    pub inline_bytes: [usize; 3],
}

impl StepState {
    /// A step that has just started, as `doc`.
    pub fn started(doc: &StepDoc) -> StepState {
        StepState {
            base_bytes: started_step_len(&doc.id, &doc.build, &doc.name) + step_end_reserve(doc),
            ..StepState::default()
        }
    }

    /// A step as a store holds it.
    pub(crate) fn stored(doc: &StepDoc) -> StepState {
        let text_bytes = string_over_null(doc.text.as_deref());
        // In the order of `channel_index`.
        let inline_bytes = Channel::ALL.map(|c| doc.log(c).len());
        let varying = text_bytes + inline_bytes.iter().sum::<usize>();
        StepState {
            finished: doc.result.is_some(),
            logs: Default::default(),
            // A stored document has a BSON form; were it to fail, the started size is the floor.
            base_bytes: document_len(doc).map_or_else(
                |_| started_step_len(&doc.id, &doc.build, &doc.name),
                |len| len.saturating_sub(varying),
            ) + step_end_reserve(doc),
            text_bytes,
            inline_bytes,
        }
    }

    pub fn log_mut(&mut self, channel: Channel) -> &mut InlineLog {
        &mut self.logs[channel_index(channel)]
    }

    /// Bytes the step document would take with `text` of `text_bytes` bytes, and the inline log
    /// of each channel at most the larger of `limit` and what it holds now.
    pub fn bytes_with(&self, text_bytes: usize, limit: usize) -> usize {
        self.bytes(text_bytes, |_, held| limit.max(held))
    }

    /// Bytes the step document would take once a chunk is appended to `channel`: that field
    /// holds at most `limit` bytes afterwards, the others what they hold now.
    pub fn bytes_after_chunk(&self, channel: Channel, limit: usize) -> usize {
        let at = channel_index(channel);
        self.bytes(
            self.text_bytes,
            |i, held| if i == at { limit } else { held },
        )
    }

    /// The base, a text of `text_bytes`, and `inline(channel index, bytes held)` for each log.
    fn bytes(&self, text_bytes: usize, inline: impl Fn(usize, usize) -> usize) -> usize {
        self.inline_bytes.iter().enumerate().fold(
            self.base_bytes.saturating_add(text_bytes),
            |n, (i, held)| n.saturating_add(inline(i, *held)),
        )
    }

    /// A chunk of `appended` bytes changed the inline field of `channel` as `update` says.
    pub fn count_inline(&mut self, channel: Channel, update: &InlineUpdate, appended: usize) {
        let held = &mut self.inline_bytes[channel_index(channel)];
        *held = match update {
            InlineUpdate::Append => *held + appended,
            InlineUpdate::Replace(value) | InlineUpdate::Spill { value, .. } => value.len(),
        };
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

    /// The state of the build `doc`, its size counted; an error says why `doc` has no BSON form
    /// (a NUL character in a property's name or in a key of its value).
    pub fn from_doc(doc: &BuildDoc) -> Result<BuildState, String> {
        let mut state = BuildState::uncounted(doc);
        for (name, p) in &doc.properties {
            let bytes = document_field_len(name, document_len(p)?);
            state.property_bytes.insert(name.clone(), bytes);
        }
        state.doc_bytes = document_len(doc)? + end_reserve(doc.result, doc.time_end);
        Ok(state)
    }

    /// The state of the build `doc`, its size not counted yet.
    fn uncounted(doc: &BuildDoc) -> BuildState {
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
            doc_bytes: 0,
            property_bytes: BTreeMap::new(),
        }
    }

    /// Rebuilds the state from a snapshot; `limit` is the inline log limit in force.
    pub fn restore(snapshot: &BuildSnapshot, limit: usize) -> BuildState {
        // A stored document has a BSON form; were it to fail, nothing is counted for it.
        let mut state = BuildState::from_doc(&snapshot.build)
            .unwrap_or_else(|_| BuildState::uncounted(&snapshot.build));
        for step in &snapshot.steps {
            let Ok(number) = u32::try_from(step.step) else {
                continue;
            };
            state.steps.insert(number, StepState::stored(step));
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
                    InlineLog::restore(log.len, &log.head, &log.tail, limit, log.inline_whole);
            }
        }
        state
    }
}
