//! Connecting to MongoDB: the URI's options with buildstore's defaults, credentials kept out of
//! every message, and where a store's reads go.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use mongodb::options::{
    ClientOptions, DatabaseOptions, ReadConcern, ReadPreference, SelectionCriteria,
};
use mongodb::Client;

use super::exec::Redactor;
use super::MongoStore;
use crate::store::StoreError;

/// Server selection timeout when the URI does not set `serverSelectionTimeoutMS`.
pub const DEFAULT_SELECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a store's reads go.
#[derive(Clone, Copy)]
enum Reads {
    Primary,
    AsTheUriSays,
}

impl MongoStore {
    /// Connects lazily: an unreachable server is reported by the first operation, after the
    /// server selection timeout. Reads go to the primary,
    /// whatever the URI says, unlike those of [`MongoStore::open_read_only`].
    pub async fn open(uri: &str) -> Result<MongoStore, StoreError> {
        MongoStore::open_with(uri, Reads::Primary).await
    }

    /// Like [`MongoStore::open`], for a program that only reads (the web view, `export`, `log`):
    /// its reads follow the URI's `readPreference` and `readConcernLevel`, so that they may go to
    /// a secondary when the URI asks for one. Nothing is folded from what it reads, so a
    /// secondary that lags behind shows older builds, and loses nothing.
    pub async fn open_read_only(uri: &str) -> Result<MongoStore, StoreError> {
        MongoStore::open_with(uri, Reads::AsTheUriSays).await
    }

    async fn open_with(uri: &str, reads: Reads) -> Result<MongoStore, StoreError> {
        let mut options = ClientOptions::parse(uri).await.map_err(|e| {
            let message = Redactor {
                secrets: uri_secrets(uri),
            }
            .driver(&e);
            // A mongodb+srv URI is looked up as it is parsed: a failed lookup is no bad URI.
            match e.kind.as_ref() {
                mongodb::error::ErrorKind::DnsResolve { .. } => StoreError::SrvLookup(message),
                _ => StoreError::BadMongoUri(message),
            }
        })?;
        let secrets: Vec<String> = options
            .credential
            .as_ref()
            .map(|c| {
                [c.username.clone(), c.password.clone()]
                    .into_iter()
                    .flatten()
                    .collect()
            })
            .unwrap_or_default();
        options
            .server_selection_timeout
            .get_or_insert(DEFAULT_SELECTION_TIMEOUT);
        options.app_name.get_or_insert_with(|| "buildstore".into());
        let db_name = options
            .default_database
            .clone()
            .unwrap_or_else(|| "buildstore".into());
        let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
        let location = format!("mongodb://{}/{db_name}", hosts.join(","));
        // The batches go out as plain commands, which the driver sends without the URI's write
        // concern (`w`, `journal`, `wtimeoutMS`): each command carries it instead.
        let write_concern = options
            .write_concern
            .as_ref()
            .and_then(|w| bson::to_document(w).ok())
            .filter(|w| !w.is_empty());
        let client = Client::with_options(options).map_err(|e| StoreError::Mongo {
            location: location.clone(),
            message: Redactor {
                secrets: secrets.clone(),
            }
            .driver(&e),
        })?;
        let db = match reads {
            // What a batch is folded from must include every write before it: reads go to the
            // primary, at its own view, whatever the URI asks for (a secondary may lag behind).
            Reads::Primary => client.database_with_options(
                &db_name,
                DatabaseOptions::builder()
                    .selection_criteria(SelectionCriteria::ReadPreference(ReadPreference::Primary))
                    .read_concern(ReadConcern::local())
                    .build(),
            ),
            Reads::AsTheUriSays => client.database(&db_name),
        };
        Ok(MongoStore {
            db,
            write_concern,
            retries: AtomicBool::new(true),
            location,
            redact: Redactor { secrets },
        })
    }
}

/// The user name and password written in a URI, to keep them out of messages even when the URI
/// itself cannot be parsed.
fn uri_secrets(uri: &str) -> Vec<String> {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    let Some((userinfo, _)) = rest.split_once('@') else {
        return vec![];
    };
    userinfo.split(':').map(str::to_owned).collect()
}

/// What each server said, out of the driver's description of a failed server selection (which
/// dumps its whole view of the topology): `host:port: error` for each, or the text as it was.
pub(super) fn selection_summary(text: &str) -> String {
    let servers: Vec<String> = text
        .split("Address: ")
        .skip(1)
        .filter_map(|server| {
            let (address, rest) = server.split_once(',')?;
            let error = rest.split_once("Error: Kind: ")?.1;
            let error = error.split_once(", labels:").map_or(error, |(e, _)| e);
            Some(format!("{address}: {error}"))
        })
        .collect();
    if servers.is_empty() {
        text.to_owned()
    } else {
        servers.join("; ")
    }
}
