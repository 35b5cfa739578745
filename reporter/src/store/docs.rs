//! What each mutation does to whole documents, for stores that keep documents whole (the SQLite
//! store, and the test double of any store). The MongoDB store expresses the same effects as update
//! operators; the store conformance tests hold the two to the same output.

/// hashbrown for `entry_ref` (find a document without making a key), hashed with aHash: fast, and
/// keyed at random per process, since ids come from clients.
type HashMap<K, V> = hashbrown::HashMap<K, V, ahash::RandomState>;

use buildstore_schema::{BuildDoc, BuilderDoc, Collection, CommitDoc, StepDoc};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::StoreError;
use crate::core::{InlineUpdate, Mutation, MAX_COMMIT_BUILDS};

/// Reads a document (as BSON bytes) from the store while a batch is being applied.
pub trait Loader {
    fn load(&mut self, collection: Collection, id: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// The documents one batch touches: loaded on first use, changed in memory, written back once.
#[derive(Default)]
pub struct DocSet {
    builders: HashMap<String, Option<BuilderDoc>>,
    builds: HashMap<String, Option<BuildDoc>>,
    steps: HashMap<String, Option<StepDoc>>,
    commits: HashMap<String, Option<CommitDoc>>,
}

/// A document type and the slot of a [`DocSet`] that holds it.
trait Doc: Serialize + DeserializeOwned + Sized {
    const COLLECTION: Collection;
    fn slot(set: &mut DocSet) -> &mut HashMap<String, Option<Self>>;
}

macro_rules! doc_slot {
    ($ty:ty, $collection:expr, $field:ident) => {
        impl Doc for $ty {
            const COLLECTION: Collection = $collection;
            fn slot(set: &mut DocSet) -> &mut HashMap<String, Option<Self>> {
                &mut set.$field
            }
        }
    };
}
doc_slot!(BuilderDoc, Collection::Builders, builders);
doc_slot!(BuildDoc, Collection::Builds, builds);
doc_slot!(StepDoc, Collection::Steps, steps);
doc_slot!(CommitDoc, Collection::Repository, commits);

impl DocSet {
    /// The document `id` (loaded if needed), to be written back: every document of the set is.
    fn entry<T: Doc>(
        &mut self,
        id: &str,
        loader: &mut dyn Loader,
    ) -> Result<&mut Option<T>, StoreError> {
        let slot = T::slot(self);
        if !slot.contains_key(id) {
            let doc = match loader.load(T::COLLECTION, id)? {
                None => None,
                // Straight from the bytes to the type: no intermediate `Document`.
                Some(raw) => {
                    Some(
                        bson::from_slice::<T>(&raw).map_err(|e| StoreError::Corrupt {
                            collection: T::COLLECTION,
                            id: id.to_owned(),
                            message: e.to_string(),
                        })?,
                    )
                }
            };
            return Ok(slot.entry_ref(id).insert(doc).into_mut());
        }
        // Present: looked up by reference, without making a key.
        Ok(slot.entry_ref(id).or_insert(None))
    }

    /// Like [`DocSet::entry`], for mutations that need the document to exist.
    fn existing<T: Doc>(
        &mut self,
        id: &str,
        loader: &mut dyn Loader,
    ) -> Result<&mut T, StoreError> {
        self.entry::<T>(id, loader)?
            .as_mut()
            .ok_or_else(|| StoreError::Missing {
                collection: T::COLLECTION,
                id: id.to_owned(),
            })
    }

    /// Applies one mutation. For [`Mutation::AppendLog`] this is the inline field only: the caller
    /// stores the full text and calls this only when the chunk was new.
    pub fn apply(
        &mut self,
        mutation: &Mutation,
        loader: &mut dyn Loader,
    ) -> Result<(), StoreError> {
        match mutation {
            Mutation::AddBuilder {
                id,
                name,
                master_id,
                category,
                tags,
                slaves,
            } => {
                *self.entry::<BuilderDoc>(id, loader)? = Some(BuilderDoc {
                    id: id.clone(),
                    name: name.clone(),
                    master_id: master_id.clone(),
                    status: "offline".into(),
                    category: category.clone(),
                    tags: tags.clone(),
                    slaves: slaves.clone(),
                });
            }
            Mutation::SetBuilderStatus {
                id,
                name,
                master_id,
                status,
            } => {
                let doc = self.entry::<BuilderDoc>(id, loader)?;
                doc.get_or_insert_with(|| new_builder(id, name, master_id))
                    .status = status.clone();
            }
            Mutation::EnsureBuilder {
                id,
                name,
                master_id,
            } => {
                self.entry::<BuilderDoc>(id, loader)?
                    .get_or_insert_with(|| new_builder(id, name, master_id));
            }
            Mutation::StartBuild(doc) => {
                self.entry::<BuildDoc>(&doc.id, loader)?
                    .get_or_insert_with(|| (**doc).clone());
            }
            Mutation::StartStep { doc, position } => {
                self.entry::<StepDoc>(&doc.id, loader)?
                    .get_or_insert_with(|| (**doc).clone());
                let build = self.existing::<BuildDoc>(&doc.build, loader)?;
                if !build.steps.contains(&doc.id) {
                    let at = (*position).min(build.steps.len());
                    build.steps.insert(at, doc.id.clone());
                }
            }
            Mutation::AppendLog {
                step_id,
                channel,
                offset,
                text,
                inline,
            } => {
                let step = self.existing::<StepDoc>(step_id, loader)?;
                let field = step.log_mut(*channel);
                match inline {
                    InlineUpdate::Append => field.push_str(text),
                    InlineUpdate::Replace(value) | InlineUpdate::Spill { value, .. } => {
                        field.clone_from(value);
                        step.log_truncated = true;
                    }
                }
                step.log_bytes
                    .set(*channel, (*offset + text.len() as u64) as i64);
            }
            Mutation::FinishStep {
                step_id,
                result,
                text,
                time,
            } => {
                let step = self.existing::<StepDoc>(step_id, loader)?;
                step.time_end = Some(*time);
                step.result = Some(*result);
                step.successful = Some(*result == 0);
                step.text.clone_from(text);
            }
            Mutation::SetProperty {
                build_id,
                name,
                property,
            } => {
                let build = self.existing::<BuildDoc>(build_id, loader)?;
                build.properties.insert(name.clone(), property.clone());
            }
            Mutation::SetChangeset {
                build_id,
                changeset,
            } => {
                self.existing::<BuildDoc>(build_id, loader)?.changeset = Some(changeset.clone());
            }
            Mutation::FinishBuild {
                build_id,
                result,
                time,
            } => {
                let build = self.existing::<BuildDoc>(build_id, loader)?;
                build.result = Some(*result);
                build.time_end = Some(*time);
            }
            Mutation::LinkBuildToCommit {
                hash,
                repository_uri,
                entry,
            } => {
                let doc = self
                    .entry::<CommitDoc>(hash, loader)?
                    .get_or_insert_with(|| CommitDoc {
                        repository_uri: repository_uri.clone(),
                        ..empty_commit(hash)
                    });
                // A relinked build moves to the end: the list is in order of last link, and a
                // MongoDB store can repeat the same two steps safely (see its plan).
                doc.builds.retain(|b| b.build != entry.build);
                doc.builds.push(entry.clone());
                let over = doc.builds.len().saturating_sub(MAX_COMMIT_BUILDS);
                doc.builds.drain(..over);
            }
            Mutation::UpsertCommit(commit) => {
                let doc = self
                    .entry::<CommitDoc>(&commit.id, loader)?
                    .get_or_insert_with(|| empty_commit(&commit.id));
                let builds = std::mem::take(&mut doc.builds);
                *doc = CommitDoc {
                    builds,
                    ..(**commit).clone()
                };
            }
        }
        Ok(())
    }

    /// The changed documents as BSON bytes, in a stable order: by collection, then by id.
    pub fn into_writes(self) -> Result<Vec<(Collection, String, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        serialize(self.builders, &mut out)?;
        serialize(self.builds, &mut out)?;
        serialize(self.steps, &mut out)?;
        serialize(self.commits, &mut out)?;
        out.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        Ok(out)
    }
}

/// Adds the documents of one slot to `out` as BSON bytes.
fn serialize<T: Doc>(
    slot: HashMap<String, Option<T>>,
    out: &mut Vec<(Collection, String, Vec<u8>)>,
) -> Result<(), StoreError> {
    for (id, doc) in slot {
        let Some(doc) = doc else { continue };
        match bson::to_vec(&doc) {
            Ok(bytes) => out.push((T::COLLECTION, id, bytes)),
            Err(e) => {
                return Err(StoreError::Corrupt {
                    collection: T::COLLECTION,
                    message: e.to_string(),
                    id,
                })
            }
        }
    }
    Ok(())
}

fn new_builder(id: &str, name: &str, master_id: &buildstore_schema::Ident) -> BuilderDoc {
    BuilderDoc {
        id: id.to_owned(),
        name: name.to_owned(),
        master_id: master_id.clone(),
        status: "offline".into(),
        category: None,
        tags: vec![],
        slaves: vec![],
    }
}

fn empty_commit(hash: &str) -> CommitDoc {
    CommitDoc {
        id: hash.to_owned(),
        hash: None,
        hash_abbrev: None,
        subject: None,
        author_name: None,
        author_email: None,
        author_date: None,
        commiter_name: None,
        commiter_email: None,
        commiter_date: None,
        repository_uri: None,
        builds: vec![],
    }
}
