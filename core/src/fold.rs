//! The fold: one event in, the mutations it implies out, per-build state updated on the way.
//!
//! An event is applied whole or not at all: every check happens before any state changes, so a
//! rejected event leaves both the state and (since it yields no mutations) the store untouched.

use std::collections::HashMap;

use bson::DateTime;
use buildstore_schema::event::{
    BuildFinished, BuildStarted, Changeset, Commit, Log, Property, StepFinished, StepStarted,
};
use buildstore_schema::{BuildDoc, ChangeDoc, CommitDoc, Event, EventKind, Ident, PropertyDoc};
use chrono::Utc;

use super::changeset::{got_revision, ChangesetPolicy};
use super::doc_size::{
    commit_entry_fits, document_field_len, document_len, linked_uri, started_step,
    string_field_len, string_over_null, MAX_COMMIT_METADATA_BYTES, MAX_DOCUMENT_BYTES,
    MAX_INLINE_LIMIT,
};
use super::inline_log::MIN_INLINE_LIMIT;
use super::mutation::Mutation;
use super::state::{BuildSnapshot, BuildState, StepState};
use super::storable::{check_name, check_value, one_line};

/// The knobs of the rules.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Most bytes of each log channel kept inline in the step document, from
    /// [`MIN_INLINE_LIMIT`] to [`MAX_INLINE_LIMIT`] ([`Core::new`] keeps it between them).
    pub inline_limit: usize,
    pub changesets: ChangesetPolicy,
}

impl CoreConfig {
    pub const DEFAULT_INLINE_LIMIT: usize = 1024 * 1024;
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            inline_limit: Self::DEFAULT_INLINE_LIMIT,
            changesets: ChangesetPolicy::default(),
        }
    }
}

/// Why an event cannot be applied. Each message names what is wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("unknown build {0}: no build_started was applied for it")]
    UnknownBuild(String),
    #[error("unknown step {step} of build {build}: no step_started was applied for it")]
    UnknownStep { build: String, step: u32 },
    #[error("field `offset`: {offset} is past the end of {channel} of step {step_id} ({len} bytes so far); a chunk is missing")]
    LogGap {
        step_id: String,
        channel: &'static str,
        offset: u64,
        len: u64,
    },
    #[error("field `offset`: {offset} overlaps the stored log of step {step_id} in the middle of a UTF-8 character")]
    LogSplitsCharacter { step_id: String, offset: u64 },
    #[error("field `hash`: {0:?} is not a full commit hash")]
    ImproperCommitHash(String),
    #[error("field `{0}` must not be empty")]
    Empty(&'static str),
    #[error("field `{field}`: {message}")]
    Unstorable { field: String, message: String },
    #[error("{document} would grow to {bytes} bytes, past the {MAX_DOCUMENT_BYTES} a document may take (MongoDB holds at most 16 MiB)")]
    DocumentTooLarge { document: String, bytes: usize },
    #[error("commit {hash}: its metadata would take {bytes} bytes, past the {MAX_COMMIT_METADATA_BYTES} it may take (the rest of the document is kept for its builds)")]
    CommitTooLarge { hash: String, bytes: usize },
}

/// The fold over events, with the state of the builds it has seen.
#[derive(Debug, Clone)]
pub struct Core {
    config: CoreConfig,
    builds: HashMap<String, BuildState>,
}

impl Core {
    /// A core with the given rules. The inline limit is kept between [`MIN_INLINE_LIMIT`] and
    /// [`MAX_INLINE_LIMIT`].
    pub fn new(mut config: CoreConfig) -> Core {
        config.inline_limit = config
            .inline_limit
            .clamp(MIN_INLINE_LIMIT, MAX_INLINE_LIMIT);
        Core {
            config,
            builds: HashMap::new(),
        }
    }

    pub fn config(&self) -> &CoreConfig {
        &self.config
    }

    /// Whether the build `id` is in memory. An event for a build that is not needs it loaded from
    /// the store first (it may not exist there) and handed to [`Core::restore`].
    pub fn has_build(&self, id: &str) -> bool {
        self.builds.contains_key(id)
    }

    /// The `_id` of the build an event belongs to, if it belongs to one.
    pub fn build_of(event: &Event) -> Option<String> {
        Some(super::build_id(&event.master_id, event.build_id()?))
    }

    /// Puts a build read back from the store into memory.
    pub fn restore(&mut self, snapshot: &BuildSnapshot) {
        let state = BuildState::restore(snapshot, self.config.inline_limit);
        self.builds.insert(state.id.clone(), state);
    }

    /// Forgets finished builds, except those `keep` holds on to. Call only once their mutations
    /// are in the store: a later event for one of them reloads it from there. `keep` is true for
    /// the builds whose mutations are still on their way to the store, which a reload would see
    /// without them.
    pub fn evict_finished(&mut self, keep: impl Fn(&str) -> bool) {
        self.builds.retain(|id, b| !b.finished() || keep(id));
    }

    /// Forgets everything, e.g. after a store write failed and memory may be ahead of the store.
    pub fn clear(&mut self) {
        self.builds.clear();
    }

    /// Builds held in memory.
    pub fn builds_in_memory(&self) -> usize {
        self.builds.len()
    }

    /// Applies one event received at `received` (used when the event carries no `time`).
    pub fn apply(
        &mut self,
        event: &Event,
        received: chrono::DateTime<Utc>,
    ) -> Result<Vec<Mutation>, RuleError> {
        let time =
            bson::DateTime::from_millis(event.time.map_or(received, |t| t.0).timestamp_millis());
        let master = &event.master_id;
        match &event.kind {
            EventKind::BuilderAdded(e) => {
                non_empty("builder", &e.builder)?;
                let id = super::builder_id(master, &e.builder);
                let doc = buildstore_schema::BuilderDoc {
                    id: id.clone(),
                    name: e.builder.clone(),
                    master_id: master.clone(),
                    status: String::new(),
                    category: e.category.clone(),
                    tags: e.tags.clone(),
                    slaves: e.slaves.clone(),
                };
                // Counted with the longest status a later builder_state may set.
                let bytes = document_len(&doc).unwrap_or(0) + buildstore_schema::MAX_NAME_BYTES;
                fits(|| format!("builder {id}"), bytes)?;
                Ok(vec![Mutation::AddBuilder {
                    id,
                    name: doc.name,
                    master_id: doc.master_id,
                    category: doc.category,
                    tags: doc.tags,
                    slaves: doc.slaves,
                }])
            }
            EventKind::BuilderState(e) => {
                non_empty("builder", &e.builder)?;
                Ok(vec![builder_status(master, &e.builder, &e.state)])
            }
            EventKind::BuilderRemoved(e) => {
                non_empty("builder", &e.builder)?;
                Ok(vec![builder_status(master, &e.builder, "removed")])
            }
            EventKind::BuildStarted(e) => self.build_started(master, e, time),
            EventKind::StepStarted(e) => self.step_started(master, e, time),
            EventKind::Log(e) => self.log(master, e),
            EventKind::StepFinished(e) => self.step_finished(master, e, time),
            EventKind::Property(e) => self.property(master, e),
            EventKind::Changeset(e) => self.changeset(master, e),
            EventKind::BuildFinished(e) => self.build_finished(master, e, time),
            EventKind::Commit(e) => self.commit(e),
        }
    }

    fn build_mut(
        &mut self,
        master: &Ident,
        build_id: &Ident,
    ) -> Result<&mut BuildState, RuleError> {
        let id = super::build_id(master, build_id);
        self.builds.get_mut(&id).ok_or(RuleError::UnknownBuild(id))
    }

    fn build_started(
        &mut self,
        master: &Ident,
        e: &BuildStarted,
        time: DateTime,
    ) -> Result<Vec<Mutation>, RuleError> {
        non_empty("builder", &e.builder)?;
        let id = super::build_id(master, &e.build_id);
        if self.builds.contains_key(&id) {
            // A build is started once; a repeat is a re-sent event.
            return Ok(vec![]);
        }
        let doc = BuildDoc {
            id: id.clone(),
            builder: e.builder.clone(),
            number: e.number,
            changeset: e
                .changeset
                .as_deref()
                .filter(|c| !c.is_empty())
                .map(|c| self.config.changesets.canonical(c).into_owned()),
            time_start: time,
            time_end: None,
            result: None,
            slaves: e.slaves.clone(),
            steps: vec![],
            master_id: master.clone(),
            build_id: e.build_id.clone(),
            branch: e.branch.clone(),
            repository: e.repository.clone(),
            codebase: e.codebase.clone(),
            reason: e.reason.clone(),
            properties: e
                .properties
                .iter()
                .map(|(name, p)| {
                    check_name("properties", name)?;
                    let doc = property_doc(
                        &format!("properties.{name}.value"),
                        &p.value,
                        p.source.clone(),
                    )?;
                    Ok((name.clone(), doc))
                })
                .collect::<Result<_, RuleError>>()?,
            changes: e
                .changes
                .iter()
                .map(|c| ChangeDoc {
                    revision: c.revision.clone(),
                    author: c.author.clone(),
                    comments: c.comments.clone(),
                    files: c.files.clone(),
                    when: c.when.map(|w| w.to_bson()),
                    branch: c.branch.clone(),
                    repository: c.repository.clone(),
                })
                .collect(),
        };
        let mut state = BuildState::from_doc(&doc).map_err(|message| RuleError::Unstorable {
            field: "properties".into(),
            message: format!("cannot be stored ({})", one_line(&message)),
        })?;
        let mut out = vec![
            Mutation::EnsureBuilder {
                id: super::builder_id(master, &e.builder),
                name: e.builder.clone(),
                master_id: master.clone(),
            },
            Mutation::StartBuild(Box::new(doc)),
        ];
        // A got_revision among the initial properties corrects the changeset like a later one.
        if let Some(rev) = e.properties.get("got_revision") {
            if let Some(rev) = got_revision(&rev.value, state.codebase.as_deref()) {
                out.extend(offer_changeset(&mut state, &rev, &self.config.changesets));
            }
        }
        // Counted with the changeset a got_revision may have set; nothing is kept before this.
        fits(|| format!("build {id}"), state.doc_bytes)?;
        self.builds.insert(id, state);
        Ok(out)
    }

    fn step_started(
        &mut self,
        master: &Ident,
        e: &StepStarted,
        time: DateTime,
    ) -> Result<Vec<Mutation>, RuleError> {
        let limit = self.config.inline_limit;
        let build = self.build_mut(master, &e.build_id)?;
        if build.steps.contains_key(&e.step) {
            return Ok(vec![]);
        }
        let position = build.steps.range(..e.step).count();
        let doc = started_step(
            &super::step_id(&build.id, e.step),
            &build.id,
            e.step,
            &e.name,
            time,
        );
        let step = StepState::started(&doc);
        // Room for its three logs at the inline limit, and for the id in the build's `steps`,
        // where it takes the next index whatever its position.
        fits(|| format!("step {}", doc.id), step.bytes_with(0, limit))?;
        let listed = build
            .doc_bytes
            .saturating_add(string_field_len(&build.steps.len().to_string(), &doc.id));
        fits(|| format!("build {}", build.id), listed)?;
        build.doc_bytes = listed;
        build.steps.insert(e.step, step);
        Ok(vec![Mutation::StartStep {
            doc: Box::new(doc),
            position,
        }])
    }

    fn log(&mut self, master: &Ident, e: &Log) -> Result<Vec<Mutation>, RuleError> {
        let limit = self.config.inline_limit;
        let build = self.build_mut(master, &e.build_id)?;
        let build_doc_id = build.id.clone();
        let step = build
            .steps
            .get_mut(&e.step)
            .ok_or_else(|| RuleError::UnknownStep {
                build: build_doc_id.clone(),
                step: e.step,
            })?;
        let step_id = super::step_id(&build_doc_id, e.step);
        let len = step.log_mut(e.channel).len();
        let offset = e.offset.unwrap_or(len);
        let end = offset.saturating_add(e.text.len() as u64);
        if offset > len {
            return Err(RuleError::LogGap {
                step_id,
                channel: e.channel.as_str(),
                offset,
                len,
            });
        }
        if end <= len || e.text.is_empty() {
            return Ok(vec![]); // already there: a re-sent chunk
        }
        // Only the part past what is stored is new.
        let skip = usize::try_from(len - offset).unwrap_or(usize::MAX);
        let new = e
            .text
            .get(skip..)
            .ok_or(RuleError::LogSplitsCharacter {
                step_id: step_id.clone(),
                offset,
            })?
            .to_owned();
        // A limit raised since the step started could let its logs outgrow the document.
        fits(
            || format!("step {step_id}"),
            step.bytes_after_chunk(e.channel, limit),
        )?;
        let inline = step.log_mut(e.channel).append(&new, limit);
        step.count_inline(e.channel, &inline, new.len());
        Ok(vec![Mutation::AppendLog {
            step_id,
            channel: e.channel,
            offset: len,
            text: new,
            inline,
        }])
    }

    fn step_finished(
        &mut self,
        master: &Ident,
        e: &StepFinished,
        time: DateTime,
    ) -> Result<Vec<Mutation>, RuleError> {
        let limit = self.config.inline_limit;
        let build = self.build_mut(master, &e.build_id)?;
        let build_doc_id = build.id.clone();
        let step = build.steps.get_mut(&e.step).ok_or(RuleError::UnknownStep {
            build: build_doc_id.clone(),
            step: e.step,
        })?;
        let text_bytes = string_over_null(e.text.as_deref());
        fits(
            || format!("step {}", super::step_id(&build_doc_id, e.step)),
            step.bytes_with(text_bytes, limit),
        )?;
        step.text_bytes = text_bytes;
        step.finished = true;
        Ok(vec![Mutation::FinishStep {
            step_id: super::step_id(&build_doc_id, e.step),
            result: e.result.code(),
            text: e.text.clone(),
            time,
        }])
    }

    fn property(&mut self, master: &Ident, e: &Property) -> Result<Vec<Mutation>, RuleError> {
        non_empty("name", &e.name)?;
        let policy = self.config.changesets.clone();
        let property = property_doc("value", &e.value, e.source.clone())?;
        check_name("name", &e.name)?;
        let value_bytes = document_len(&property).map_err(|message| RuleError::Unstorable {
            field: "value".into(),
            message: format!("cannot be stored ({})", one_line(&message)),
        })?;
        let bytes = document_field_len(&e.name, value_bytes);
        let build = self.build_mut(master, &e.build_id)?;
        let earlier = build.property_bytes.get(&e.name).copied().unwrap_or(0);
        let with_it = build
            .doc_bytes
            .saturating_sub(earlier)
            .saturating_add(bytes);
        // A got_revision may become the changeset too.
        let revision = (e.name == "got_revision")
            .then(|| got_revision(&e.value, build.codebase.as_deref()))
            .flatten()
            .filter(|rev| takes_changeset(build, rev, &policy));
        let copies = if revision.is_some() { bytes } else { 0 };
        fits(
            || format!("build {}", build.id),
            with_it.saturating_add(copies),
        )?;
        build.doc_bytes = with_it;
        build.property_bytes.insert(e.name.clone(), bytes);
        let mut out = vec![Mutation::SetProperty {
            build_id: build.id.clone(),
            name: e.name.clone(),
            property,
        }];
        if let Some(rev) = revision {
            out.extend(offer_changeset(build, &rev, &policy));
        }
        Ok(out)
    }

    fn changeset(&mut self, master: &Ident, e: &Changeset) -> Result<Vec<Mutation>, RuleError> {
        let policy = self.config.changesets.clone();
        let build = self.build_mut(master, &e.build_id)?;
        // An offer that changes nothing takes no room, however long it is.
        if !takes_changeset(build, &e.changeset, &policy) {
            return Ok(vec![]);
        }
        let earlier = string_over_null(build.changeset.as_deref());
        fits(
            || format!("build {}", build.id),
            build
                .doc_bytes
                .saturating_add(string_over_null(Some(&e.changeset)))
                .saturating_sub(earlier),
        )?;
        Ok(offer_changeset(build, &e.changeset, &policy))
    }

    fn build_finished(
        &mut self,
        master: &Ident,
        e: &BuildFinished,
        time: DateTime,
    ) -> Result<Vec<Mutation>, RuleError> {
        let policy = self.config.changesets.clone();
        let build = self.build_mut(master, &e.build_id)?;
        build.result = Some(e.result.code());
        build.time_end = Some(time);
        let mut out = vec![Mutation::FinishBuild {
            build_id: build.id.clone(),
            result: e.result.code(),
            time,
        }];
        out.extend(link_if_proper(build, &policy));
        Ok(out)
    }

    fn commit(&self, e: &Commit) -> Result<Vec<Mutation>, RuleError> {
        if !self.config.changesets.is_proper(&e.hash) {
            return Err(RuleError::ImproperCommitHash(e.hash.clone()));
        }
        let hash = self.config.changesets.canonical(&e.hash).into_owned();
        let abbrev = e
            .hash_abbrev
            .clone()
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| hash.chars().take(7).collect());
        let doc = CommitDoc {
            id: hash.clone(),
            hash: Some(hash),
            hash_abbrev: Some(abbrev),
            subject: Some(e.subject.clone()),
            author_name: Some(e.author_name.clone()),
            author_email: Some(e.author_email.clone()),
            author_date: Some(e.author_date.to_bson()),
            commiter_name: Some(e.commiter_name.clone()),
            commiter_email: Some(e.commiter_email.clone()),
            commiter_date: Some(e.commiter_date.to_bson()),
            repository_uri: Some(e.repository_uri.clone()),
            builds: vec![],
        };
        let bytes = document_len(&doc).unwrap_or(0);
        if bytes > MAX_COMMIT_METADATA_BYTES {
            return Err(RuleError::CommitTooLarge {
                hash: e.hash.clone(),
                bytes,
            });
        }
        Ok(vec![Mutation::UpsertCommit(Box::new(doc))])
    }
}

/// Whether a document of `bytes` bytes may be stored; `document` names it for the error.
fn fits(document: impl FnOnce() -> String, bytes: usize) -> Result<(), RuleError> {
    if bytes > MAX_DOCUMENT_BYTES {
        return Err(RuleError::DocumentTooLarge {
            document: document(),
            bytes,
        });
    }
    Ok(())
}

pub(crate) fn non_empty(field: &'static str, value: &str) -> Result<(), RuleError> {
    if value.is_empty() {
        Err(RuleError::Empty(field))
    } else {
        Ok(())
    }
}

fn builder_status(master: &Ident, builder: &str, status: &str) -> Mutation {
    Mutation::SetBuilderStatus {
        id: super::builder_id(master, builder),
        name: builder.to_owned(),
        master_id: master.clone(),
        status: status.to_owned(),
    }
}

/// A property as stored, once [`check_value`] found that it has a BSON form.
fn property_doc(
    field: &str,
    value: &serde_json::Value,
    source: Option<String>,
) -> Result<PropertyDoc, RuleError> {
    check_value(field, value)?;
    let value = bson::to_bson(value).map_err(|e| RuleError::Unstorable {
        field: field.to_owned(),
        message: format!("cannot be stored ({})", one_line(&e.to_string())),
    })?;
    Ok(PropertyDoc { value, source })
}

/// Changeset correction: a new value replaces the build's changeset unless that one is already a
/// proper hash (final) or the new value is empty. A finished build that just got a proper hash is
/// linked into `repository` now.
fn offer_changeset(
    build: &mut BuildState,
    candidate: &str,
    policy: &ChangesetPolicy,
) -> Vec<Mutation> {
    if !takes_changeset(build, candidate, policy) {
        return vec![];
    }
    let candidate = &*policy.canonical(candidate);
    let earlier = string_over_null(build.changeset.as_deref());
    build.doc_bytes = build
        .doc_bytes
        .saturating_add(string_over_null(Some(candidate)))
        .saturating_sub(earlier);
    build.changeset = Some(candidate.to_owned());
    let mut out = vec![Mutation::SetChangeset {
        build_id: build.id.clone(),
        changeset: candidate.to_owned(),
    }];
    out.extend(link_if_proper(build, policy));
    out
}

/// Whether `candidate` would replace the build's changeset (see [`offer_changeset`]).
fn takes_changeset(build: &BuildState, candidate: &str, policy: &ChangesetPolicy) -> bool {
    let candidate = policy.canonical(candidate);
    let current = build.changeset.as_deref();
    !(candidate.is_empty()
        || current == Some(&*candidate)
        || current.is_some_and(|c| policy.is_proper(c)))
}

/// FETCH_HEAD filtering: only a finished build with a proper changeset goes into `repository`.
fn link_if_proper(build: &BuildState, policy: &ChangesetPolicy) -> Option<Mutation> {
    let hash = build.changeset.as_deref().filter(|c| policy.is_proper(c))?;
    if !commit_entry_fits(&build.id, &build.builder) {
        return None;
    }
    build.finished().then(|| Mutation::LinkBuildToCommit {
        hash: hash.to_owned(),
        repository_uri: linked_uri(hash, build.repository.as_deref()),
        entry: build.repo_entry(),
    })
}

#[cfg(test)]
#[path = "fold_tests.rs"]
mod tests;
