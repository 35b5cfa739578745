//! The SQL behind the listing reads (builds, a build's steps, commits), built apart from running it
//! so that the tests can ask SQLite how it would run each one. Every filter is on a column that
//! [`super::columns`] keeps, in the form the column holds it (see [`super::column_value`]), so that
//! the indexes of `INDEXES` serve it.

use bson::Document;
use buildstore_schema::Collection;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection};

use super::super::{
    integer_master, BuildQuery, CommitCursor, CommitQuery, EachDoc, ResultFilter, StoreError,
};
use super::decode;

/// A `SELECT _id, doc ...` and its parameters, in the order of its `?`s.
#[derive(Debug)]
pub(super) struct Select {
    pub sql: String,
    pub values: Vec<SqlValue>,
}

impl Select {
    /// The rows of `table` that match one of `branches`, which must not overlap, sorted by `order`
    /// (terms such as `"time_start DESC"`), at most `limit`. The columns `order` names are
    /// selected too, because a compound SELECT sorts by its result columns only.
    fn new(table: &str, branches: Vec<Filters>, order: &[&str], limit: usize) -> Select {
        let mut columns = vec!["_id", "doc"];
        columns.extend(
            order
                .iter()
                .filter_map(|term| term.split(' ').next())
                .filter(|c| *c != "_id"),
        );
        let columns = columns.join(", ");
        let mut selects = Vec::new();
        let mut values = Vec::new();
        for f in branches {
            let mut sql = format!("SELECT {columns} FROM {table}");
            if !f.clauses.is_empty() {
                sql.push_str(" WHERE ");
                sql.push_str(&f.clauses.join(" AND "));
            }
            selects.push(sql);
            values.extend(f.values);
        }
        values.push(SqlValue::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
        Select {
            sql: format!(
                "{} ORDER BY {} LIMIT ?",
                selects.join(" UNION ALL "),
                order.join(", ")
            ),
            values,
        }
    }

    pub fn run(
        &self,
        conn: &Connection,
        collection: Collection,
        err: &impl Fn(rusqlite::Error) -> StoreError,
    ) -> Result<Vec<Document>, StoreError> {
        self.run_each(conn, collection, err, |_| {})
    }

    /// Like [`Select::run`], with `each` applied to every document as it is read, so that only
    /// what it leaves of each is held.
    pub fn run_each(
        &self,
        conn: &Connection,
        collection: Collection,
        err: &impl Fn(rusqlite::Error) -> StoreError,
        each: EachDoc,
    ) -> Result<Vec<Document>, StoreError> {
        let mut st = conn.prepare_cached(&self.sql).map_err(err)?;
        let mut rows = st.query(params_from_iter(&self.values)).map_err(err)?;
        let mut docs = Vec::new();
        while let Some(row) = rows.next().map_err(err)? {
            let id: String = row.get(0).map_err(err)?;
            let bytes = row.get_ref(1).and_then(|v| Ok(v.as_blob()?)).map_err(err)?;
            let mut doc = decode(collection, &id, bytes)?;
            each(&mut doc);
            docs.push(doc);
        }
        Ok(docs)
    }
}

/// Conditions joined by `AND`, each with the values of its `?`s.
#[derive(Default)]
struct Filters {
    clauses: Vec<String>,
    values: Vec<SqlValue>,
}

impl Filters {
    fn add(&mut self, clause: &str, values: impl IntoIterator<Item = SqlValue>) {
        self.clauses.push(clause.to_owned());
        self.values.extend(values);
    }
}

fn text(s: &str) -> SqlValue {
    SqlValue::Text(s.to_owned())
}

fn millis(t: bson::DateTime) -> SqlValue {
    SqlValue::Integer(t.timestamp_millis())
}

pub(super) fn builds(q: &BuildQuery) -> Select {
    // The column holds an integer master id as INTEGER and a string one as TEXT, and SQLite never
    // finds one equal to the other, so a master given as "7" is looked up as both. Each is one
    // range of master_time, already in time order, and the UNION ALL under the ORDER BY merges the
    // two as they come, where `master_id IN (7, '7')` would sort every build of the master.
    let masters = match q.master.as_deref() {
        None => vec![None],
        Some(m) => match integer_master(m) {
            Some(n) => vec![Some(SqlValue::Integer(n)), Some(text(m))],
            None => vec![Some(text(m))],
        },
    };
    let branches = masters
        .into_iter()
        .map(|master| {
            let mut f = Filters::default();
            if let Some(id) = master {
                f.add("master_id = ?", [id]);
            }
            add_build_filters(&mut f, q);
            f
        })
        .collect();
    // A changeset names a handful of builds, but SQLite, without statistics, may walk the index
    // of another filter instead (all builds of a branch, say): tell it.
    let table = if q.changeset.is_some() {
        "builds INDEXED BY builds_changeset_time"
    } else {
        "builds"
    };
    Select::new(table, branches, &["time_start DESC", "_id DESC"], q.limit)
}

/// Every condition of `q` but its master.
fn add_build_filters(f: &mut Filters, q: &BuildQuery) {
    if let Some(b) = &q.builder {
        f.add("builder = ?", [text(b)]);
    }
    if let Some(b) = &q.branch {
        f.add("branch = ?", [text(b)]);
    }
    match q.result {
        Some(ResultFilter::Finished(code)) => f.add("result = ?", [SqlValue::Integer(code.into())]),
        Some(ResultFilter::Running) => f.add("result IS NULL", []),
        None => {}
    }
    if let Some(c) = &q.changeset {
        f.add("changeset = ?", [text(c)]);
    }
    if let Some(t) = q.since {
        f.add("time_start >= ?", [millis(t)]);
    }
    if let Some(t) = q.until {
        f.add("time_start < ?", [millis(t)]);
    }
    if let Some(c) = &q.before {
        // Said as a range on time_start plus a tie-break, rather than as one OR, so that the
        // range narrows the index scan.
        f.add(
            "time_start <= ? AND (time_start < ? OR _id < ?)",
            [millis(c.time_start), millis(c.time_start), text(&c.id)],
        );
    }
}

pub(super) fn steps(build_id: &str, limit: usize) -> Select {
    let mut f = Filters::default();
    f.add("build = ?", [text(build_id)]);
    Select::new("steps", vec![f], &["step"], limit)
}

/// The first part of the commits order: commits with a `commiter_date` after the cursor, newest
/// first. `None` when the cursor is already among the commits without one. The two parts are
/// read apart because each is then one range of an index, where a single query would need an OR
/// across both.
pub(super) fn dated_commits(q: &CommitQuery) -> Option<Select> {
    let mut f = Filters::default();
    match &q.before {
        None => f.add("commiter_date IS NOT NULL", []),
        Some(CommitCursor {
            commiter_date: Some(d),
            id,
        }) => f.add(
            "commiter_date <= ? AND (commiter_date < ? OR _id < ?)",
            [millis(*d), millis(*d), text(id)],
        ),
        Some(CommitCursor {
            commiter_date: None,
            ..
        }) => return None,
    }
    Some(Select::new(
        "repository",
        vec![f],
        &["commiter_date DESC", "_id DESC"],
        q.limit,
    ))
}

/// The second part: up to `limit` commits without a `commiter_date`, after the cursor if it is
/// among them.
pub(super) fn undated_commits(before: Option<&CommitCursor>, limit: usize) -> Select {
    let mut f = Filters::default();
    f.add("commiter_date IS NULL", []);
    if let Some(CommitCursor {
        commiter_date: None,
        id,
    }) = before
    {
        f.add("_id < ?", [text(id)]);
    }
    Select::new("repository", vec![f], &["_id DESC"], limit)
}
