//! Collection names and the indexes that the documented queries rely on. Every store creates the
//! same indexes (SQLite on columns that copy the indexed fields out of each document, MongoDB as
//! ordinary indexes).

use std::fmt;
use std::str::FromStr;

/// The four collections of the documented schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Collection {
    Builders,
    Builds,
    Steps,
    Repository,
}

impl Collection {
    pub const ALL: [Collection; 4] = [
        Collection::Builders,
        Collection::Builds,
        Collection::Steps,
        Collection::Repository,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Collection::Builders => "builders",
            Collection::Builds => "builds",
            Collection::Steps => "steps",
            Collection::Repository => "repository",
        }
    }
}

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Collection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Collection::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| {
                format!("unknown collection {s:?} (expected builders, builds, steps or repository)")
            })
    }
}

/// One index: its name and its keys (field, 1 ascending / -1 descending).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexSpec {
    pub collection: Collection,
    pub name: &'static str,
    pub keys: &'static [(&'static str, i32)],
}

/// The indexes behind the queries in `docs/builddata.md` and the listings of the web view. The
/// listings sort by time and then `_id`, so the time-ordered indexes end in `_id`: MongoDB takes a
/// sort from an index only when the index covers the whole sort.
pub const INDEXES: &[IndexSpec] = &[
    IndexSpec {
        collection: Collection::Builders,
        name: "master_id",
        keys: &[("master_id", 1), ("name", 1)],
    },
    IndexSpec {
        collection: Collection::Builds,
        name: "builder_number",
        keys: &[("builder", 1), ("number", -1)],
    },
    IndexSpec {
        collection: Collection::Builds,
        name: "changeset_time",
        keys: &[("changeset", 1), ("time_start", -1), ("_id", -1)],
    },
    IndexSpec {
        collection: Collection::Builds,
        name: "time_start_id",
        keys: &[("time_start", -1), ("_id", -1)],
    },
    IndexSpec {
        collection: Collection::Builds,
        name: "master_time",
        keys: &[("master_id", 1), ("time_start", -1), ("_id", -1)],
    },
    IndexSpec {
        collection: Collection::Builds,
        name: "branch_time",
        keys: &[("branch", 1), ("time_start", -1), ("_id", -1)],
    },
    IndexSpec {
        collection: Collection::Builds,
        name: "result_time",
        keys: &[("result", 1), ("time_start", -1), ("_id", -1)],
    },
    IndexSpec {
        collection: Collection::Builds,
        name: "master_builder_time",
        keys: &[
            ("master_id", 1),
            ("builder", 1),
            ("time_start", -1),
            ("_id", -1),
        ],
    },
    IndexSpec {
        collection: Collection::Builds,
        name: "builder_time",
        keys: &[("builder", 1), ("time_start", -1), ("_id", -1)],
    },
    IndexSpec {
        collection: Collection::Steps,
        name: "build",
        keys: &[("build", 1), ("step", 1)],
    },
    IndexSpec {
        collection: Collection::Repository,
        name: "commiter_date_id",
        keys: &[("commiter_date", -1), ("_id", -1)],
    },
];
