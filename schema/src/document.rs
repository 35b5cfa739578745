//! The documents buildstore writes, one struct per collection. Field names follow the 2010
//! "Build data format" exactly (`slaves`, `commiter_name`, ...); fields it did not have are marked
//! as extras in `docs/builddata.md`. Every store holds these same documents, so `export` prints the
//! same thing whichever store is behind it.

use std::collections::BTreeMap;

use bson::{Bson, DateTime};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::value::Ident;

/// `builders`: one document per builder of a master. `_id` = "{master_id}/{builder}".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuilderDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    pub master_id: Ident,
    /// "offline" when added, then the master's state (idle, building, ...), "removed" at the end.
    pub status: String,
    pub category: Option<String>,
    pub tags: Vec<String>,
    pub slaves: Vec<String>,
}

/// `builds`: one document per build. `_id` = "{master_id}/{build_id}".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct BuildDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub builder: String,
    pub number: i64,
    /// What the build ran for: symbolic at first, corrected to a hash by a later step.
    pub changeset: Option<String>,
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub time_start: DateTime,
    #[schemars(with = "Option<chrono::DateTime<chrono::Utc>>")]
    pub time_end: Option<DateTime>,
    /// Buildbot's result code; null while the build runs.
    pub result: Option<i32>,
    pub slaves: Vec<String>,
    /// Step `_id`s in step order.
    pub steps: Vec<String>,
    pub master_id: Ident,
    pub build_id: Ident,
    pub branch: Option<String>,
    pub repository: Option<String>,
    pub codebase: Option<String>,
    pub reason: Option<String>,
    pub properties: BTreeMap<String, PropertyDoc>,
    pub changes: Vec<ChangeDoc>,
}

/// A build property with where it came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PropertyDoc {
    #[schemars(with = "serde_json::Value")]
    pub value: Bson,
    pub source: Option<String>,
}

/// A change that went into a build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChangeDoc {
    pub revision: Option<String>,
    pub author: Option<String>,
    pub comments: Option<String>,
    pub files: Vec<String>,
    #[schemars(with = "Option<chrono::DateTime<chrono::Utc>>")]
    pub when: Option<DateTime>,
    pub branch: Option<String>,
    pub repository: Option<String>,
}

/// `steps`: one document per step. `_id` = "{build _id}/{step}".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StepDoc {
    #[serde(rename = "_id")]
    pub id: String,
    /// The build `_id`.
    pub build: String,
    pub step: i64,
    pub name: String,
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub time_start: DateTime,
    #[schemars(with = "Option<chrono::DateTime<chrono::Utc>>")]
    pub time_end: Option<DateTime>,
    pub result: Option<i32>,
    /// True iff the result is SUCCESS; null while the step runs.
    pub successful: Option<bool>,
    /// The master's summary of the finished step.
    pub text: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub headers: String,
    /// Set once any of the three fields above lost its middle to the inline limit.
    pub log_truncated: bool,
    /// Size in bytes of each full log, however much of it is inline.
    pub log_bytes: LogBytes,
}

impl StepDoc {
    /// The inline field of `channel`'s log.
    pub fn log(&self, channel: crate::Channel) -> &str {
        match channel {
            crate::Channel::Stdout => &self.stdout,
            crate::Channel::Stderr => &self.stderr,
            crate::Channel::Header => &self.headers,
        }
    }

    /// Bytes of `channel`'s full log, as `log_bytes` counts them.
    pub fn log_len(&self, channel: crate::Channel) -> u64 {
        u64::try_from(self.log_bytes.get(channel)).unwrap_or(0)
    }

    /// The inline field of `channel` when it holds the whole log (see [`StepDoc::holds_whole`]).
    pub fn whole_log(&self, channel: crate::Channel) -> Option<&str> {
        let text = self.log(channel);
        StepDoc::holds_whole(text, self.log_len(channel)).then_some(text)
    }

    /// Whether an inline log field holds the whole of a log `full_len` bytes long: whether it
    /// is as long. A field cut to an inline limit is always shorter: it leaves out more bytes
    /// than its marker takes. For readers of a raw document too.
    pub fn holds_whole(field: &str, full_len: u64) -> bool {
        field.len() as u64 == full_len
    }

    /// The inline field of `channel`'s log, to change it.
    pub fn log_mut(&mut self, channel: crate::Channel) -> &mut String {
        match channel {
            crate::Channel::Stdout => &mut self.stdout,
            crate::Channel::Stderr => &mut self.stderr,
            crate::Channel::Header => &mut self.headers,
        }
    }
}

/// Bytes of the full log per channel (field names as in the step document).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogBytes {
    pub stdout: i64,
    pub stderr: i64,
    pub headers: i64,
}

impl LogBytes {
    pub fn get(&self, channel: crate::Channel) -> i64 {
        match channel {
            crate::Channel::Stdout => self.stdout,
            crate::Channel::Stderr => self.stderr,
            crate::Channel::Header => self.headers,
        }
    }

    pub fn set(&mut self, channel: crate::Channel, bytes: i64) {
        match channel {
            crate::Channel::Stdout => self.stdout = bytes,
            crate::Channel::Stderr => self.stderr = bytes,
            crate::Channel::Header => self.headers = bytes,
        }
    }
}

/// `repository`: one document per commit. `_id` = the full hash.
///
/// A build can be linked before the commit's metadata arrives, so the metadata fields are absent
/// (not null) until a `commit` event fills them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CommitDoc {
    #[serde(rename = "_id")]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_abbrev: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<chrono::DateTime<chrono::Utc>>")]
    pub author_date: Option<DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commiter_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commiter_email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<chrono::DateTime<chrono::Utc>>")]
    pub commiter_date: Option<DateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_uri: Option<String>,
    pub builds: Vec<RepoBuildEntry>,
}

/// A finished build linked to the commit it ran for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RepoBuildEntry {
    /// The build `_id`.
    pub build: String,
    pub builder: String,
    pub number: i64,
    // Only a finished build is linked, so its result and end are always there: the schema says
    // so (the types stay optional to read what a build's state holds).
    #[schemars(with = "i32")]
    pub result: Option<i32>,
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub time_start: DateTime,
    #[schemars(with = "chrono::DateTime<chrono::Utc>")]
    pub time_end: Option<DateTime>,
}
