//! Where an SQLite store may be: the checks made before a file is opened for a store, so that a
//! place that cannot hold one is refused in words that say why, and another program's database
//! is refused and left as it was.

use rusqlite::Connection;

use super::sql_error;
use crate::store::StoreError;

/// What an SQLite file holds, looked at read-only, so that it is left as it was: a read-write
/// connection would checkpoint its write-ahead log when it closes, for one.
#[derive(PartialEq)]
enum Holds {
    /// No file, or an empty one: a store is made there.
    Nothing,
    /// A database with no tables, such as one a tool made and never wrote.
    NoTables,
    /// A store's `builds` table.
    Store,
    /// Tables, but no store's `builds`: a database of another program.
    Other,
}

fn holds(path: &str) -> Result<Holds, StoreError> {
    let p = std::path::Path::new(path);
    if !p.is_file() || p.metadata().is_ok_and(|m| m.len() == 0) {
        return Ok(Holds::Nothing);
    }
    let err = sql_error(path);
    let conn =
        Connection::open_with_flags(p, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(&err)?;
    // Every layout has kept a document per row, `_id` and `doc`: a `builds` table of another
    // program's own does not make its file a store.
    let (any, builds): (bool, bool) = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master),
                    EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'builds')
                    AND (SELECT count(*) FROM pragma_table_info('builds')
                         WHERE name IN ('_id', 'doc')) = 2",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(&err)?;
    Ok(match (any, builds) {
        (false, _) => Holds::NoTables,
        (true, true) => Holds::Store,
        (true, false) => Holds::Other,
    })
}

/// Refuses a path that cannot hold a store ([`check_place`]), and a file that holds something
/// but no store's `builds` table: a database of another program, left as it was.
pub(crate) fn refuse_foreign(path: &str) -> Result<(), StoreError> {
    check_place(path)?;
    if holds(path)? == Holds::Other {
        return Err(StoreError::NotAStore(path.to_owned()));
    }
    Ok(())
}

/// Refuses a store path that is a directory, a device, a FIFO or a socket, a loop of symbolic
/// links, or whose directory does not exist (that of the file a link leads to, for a link to a
/// store not made yet), in those words: SQLite says "unable to open database file" or "disk I/O
/// error" to them.
pub fn check_place(path: &str) -> Result<(), StoreError> {
    let p = std::path::Path::new(path);
    let refuse = |why: String| {
        Err(StoreError::NoPlace {
            path: path.to_owned(),
            why,
        })
    };
    if p.is_dir() {
        return refuse("it is a directory, not a store file".to_owned());
    }
    if p.exists() {
        if !p.is_file() {
            return refuse(
                "it is not a regular file (a device, a FIFO or a socket), and a store is one"
                    .to_owned(),
            );
        }
        return Ok(());
    }
    // `exists` is false for a link that leads nowhere (yet) and for a loop of links.
    if let (Ok(target), Err(e)) = (std::fs::read_link(p), p.metadata()) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return refuse(format!("it is a symbolic link that leads to no file ({e})"));
        }
        // A link to nowhere yet: the store is made where it leads, if that place can hold one.
        let target = p.parent().unwrap_or(p).join(&target);
        return match check_place(&target.to_string_lossy()) {
            Err(StoreError::NoPlace { why, .. }) => refuse(format!(
                "it is a symbolic link to {}, and {why}",
                target.display()
            )),
            other => other,
        };
    }
    match p.parent() {
        Some(dir) if !dir.as_os_str().is_empty() && !dir.is_dir() => {
            refuse(format!("its directory {} does not exist", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Whether the file at `path` is an SQLite database with nothing in it, such as one a tool made
/// and never wrote: a reader takes it for no store, rather than make one of it.
pub fn is_empty_database(path: &str) -> Result<bool, StoreError> {
    Ok(holds(path)? == Holds::NoTables)
}
