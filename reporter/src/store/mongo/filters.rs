//! The filters of the listing queries (builds, commits), built to lead with the fields of the
//! indexes `init` creates. Pure: no I/O.

use bson::{doc, Bson, Document};

use crate::store::{integer_master, BuildQuery, CommitCursor, CommitQuery, ResultFilter};

/// The filter of a [`BuildQuery`]: every condition on a field that leads one of the `builds`
/// indexes, the cursor as a range on `time_start` with a tie-break on `_id`.
pub(super) fn builds_filter(q: &BuildQuery) -> Document {
    let mut filter = Document::new();
    if let Some(m) = &q.master {
        // Integer and string master ids are different values to MongoDB.
        let mut ids = vec![Bson::String(m.clone())];
        ids.extend(integer_master(m).map(Bson::Int64));
        filter.insert("master_id", doc! {"$in": ids});
    }
    if let Some(b) = &q.builder {
        filter.insert("builder", b);
    }
    if let Some(b) = &q.branch {
        filter.insert("branch", b);
    }
    match q.result {
        Some(ResultFilter::Finished(code)) => {
            filter.insert("result", code);
        }
        Some(ResultFilter::Running) => {
            filter.insert("result", Bson::Null);
        }
        None => {}
    }
    if let Some(c) = &q.changeset {
        filter.insert("changeset", c);
    }
    let mut time = Document::new();
    if let Some(t) = q.since {
        time.insert("$gte", t);
    }
    if let Some(t) = q.until {
        time.insert("$lt", t);
    }
    if let Some(c) = &q.before {
        let t = c.time_start;
        // `$lte` beside `$or`: the range part bounds the index scan on its own.
        time.insert("$lte", t);
        filter.insert(
            "$or",
            vec![
                doc! {"time_start": {"$lt": t}},
                doc! {"time_start": t, "_id": {"$lt": &c.id}},
            ],
        );
    }
    if !time.is_empty() {
        filter.insert("time_start", time);
    }
    filter
}

/// The filter of a [`CommitQuery`]. A missing `commiter_date` sorts below every date, so the
/// commits without one come last in `commiter_date` descending order by themselves; `null` in a
/// filter matches a missing field.
pub(super) fn commits_filter(q: &CommitQuery) -> Document {
    match &q.before {
        None => Document::new(),
        Some(CommitCursor {
            commiter_date: Some(d),
            id,
        }) => doc! {"$or": [
            {"commiter_date": {"$lt": *d}},
            {"commiter_date": *d, "_id": {"$lt": id}},
            {"commiter_date": Bson::Null},
        ]},
        Some(CommitCursor {
            commiter_date: None,
            id,
        }) => doc! {"commiter_date": Bson::Null, "_id": {"$lt": id}},
    }
}
