//! The queries of docs/builddata.md, written for the Rust `mongodb` driver.
//!
//! Run against a store filled by `buildstore --store mongodb://... ingest`:
//!
//!     cargo run -p buildstore --example queries -- mongodb://localhost:27017/buildstore

use bson::{doc, DateTime, Document};
use futures::TryStreamExt;
use mongodb::{Client, Database};

/// The last 20 builds of a builder of a master, by number.
pub async fn last_builds(
    db: &Database,
    master_id: &str,
    builder: &str,
) -> mongodb::error::Result<Vec<Document>> {
    db.collection::<Document>("builds")
        .find(doc! {"builder": builder, "master_id": master_id})
        .sort(doc! {"number": -1})
        .limit(20)
        .await?
        .try_collect()
        .await
}

/// All builds of a changeset, newest first.
pub async fn builds_of_changeset(
    db: &Database,
    hash: &str,
) -> mongodb::error::Result<Vec<Document>> {
    db.collection::<Document>("builds")
        .find(doc! {"changeset": hash})
        .sort(doc! {"time_start": -1})
        .await?
        .try_collect()
        .await
}

/// Failed builds (FAILURE) since a date, newest first.
pub async fn failed_since(db: &Database, since: DateTime) -> mongodb::error::Result<Vec<Document>> {
    db.collection::<Document>("builds")
        .find(doc! {"result": 2, "time_start": {"$gte": since}})
        .sort(doc! {"time_start": -1})
        .await?
        .try_collect()
        .await
}

/// The steps of a build in order, without their logs.
pub async fn steps_of_build(
    db: &Database,
    build_id: &str,
) -> mongodb::error::Result<Vec<Document>> {
    db.collection::<Document>("steps")
        .find(doc! {"build": build_id})
        .projection(doc! {"stdout": 0, "stderr": 0, "headers": 0})
        .sort(doc! {"step": 1})
        .await?
        .try_collect()
        .await
}

/// Commits with metadata, newest first, with their builds' results.
pub async fn recent_commits(db: &Database) -> mongodb::error::Result<Vec<Document>> {
    db.collection::<Document>("repository")
        .find(doc! {"commiter_date": {"$exists": true}})
        .projection(
            doc! {"hash_abbrev": 1, "subject": 1, "commiter_name": 1, "commiter_date": 1,
            "builds.builder": 1, "builds.number": 1, "builds.result": 1},
        )
        .sort(doc! {"commiter_date": -1})
        .limit(50)
        .await?
        .try_collect()
        .await
}

/// The builders of a master.
pub async fn builders_of(db: &Database, master_id: &str) -> mongodb::error::Result<Vec<Document>> {
    db.collection::<Document>("builders")
        .find(doc! {"master_id": master_id})
        .sort(doc! {"name": 1})
        .await?
        .try_collect()
        .await
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let uri = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "mongodb://localhost:27017/buildstore".into());
    let client = Client::with_uri_str(&uri).await?;
    let db = client
        .default_database()
        .unwrap_or_else(|| client.database("buildstore"));
    for commit in recent_commits(&db).await? {
        println!("{commit}");
    }
    Ok(())
}
