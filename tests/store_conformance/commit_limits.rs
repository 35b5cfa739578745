//! A commit document lists at most `MAX_COMMIT_BUILDS` builds, the most recently linked, so that it
//! never grows past what MongoDB holds (a write it refuses would be refused again on every retry).
//! Both stores drop the same entries.

use buildstore::core::MAX_COMMIT_BUILDS;
use serde_json::Value;

use crate::common::mongo::on_database;
use crate::common::{stderr, Db};

const HASH: &str = "eb57b4930f682387ca57a2506b1dbd03f5144c04";

/// Builds `from..to` of master `m`, each started at [`HASH`] and finished.
fn builds(from: usize, to: usize) -> String {
    let mut text = String::new();
    for i in from..to {
        let t = 1_800_000_000 + i;
        text.push_str(&format!(
            r#"{{"type":"build_started","master_id":"m","build_id":{i},"builder":"b","number":{i},"changeset":"{HASH}","time":{t}}}"#
        ));
        text.push('\n');
        text.push_str(&format!(
            r#"{{"type":"build_finished","master_id":"m","build_id":{i},"result":0,"time":{}}}"#,
            t + 1
        ));
        text.push('\n');
    }
    text
}

fn ingest(db: &Db, text: &str) {
    let out = db.ingest_text(text, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn linked(db: &Db) -> Vec<String> {
    let commit = db.doc("repository", HASH);
    commit["builds"]
        .as_array()
        .expect("builds")
        .iter()
        .map(|e| e["build"].as_str().expect("build").to_owned())
        .collect()
}

/// A document as MongoDB holds it, from its export: whole numbers are longs there, but for a
/// build's `result`.
fn as_bson(exported: &Value) -> bson::Document {
    fn longs(doc: &mut bson::Document) {
        for (key, value) in doc.iter_mut() {
            match value {
                bson::Bson::Int32(n) if key != "result" => *value = bson::Bson::Int64((*n).into()),
                bson::Bson::Document(d) => longs(d),
                bson::Bson::Array(items) => {
                    for d in items.iter_mut().filter_map(|i| i.as_document_mut()) {
                        longs(d);
                    }
                }
                _ => {}
            }
        }
    }
    let mut doc = bson::to_document(&bson::Bson::try_from(exported.clone()).expect("ext. JSON"))
        .expect("a document");
    longs(&mut doc);
    doc
}

/// `build_finished` again for build `i` of master `m`, one day later: it links the build again.
fn finished_again(i: usize) -> String {
    format!(
        r#"{{"type":"build_finished","master_id":"m","build_id":{i},"result":2,"time":{}}}"#,
        1_800_086_400 + i
    )
}

#[test]
fn a_commit_lists_its_most_recently_linked_builds_up_to_the_limit_in_every_store() {
    let sqlite = Db::new();
    ingest(&sqlite, &builds(0, MAX_COMMIT_BUILDS));
    let full = linked(&sqlite);
    assert_eq!(full.len(), MAX_COMMIT_BUILDS);
    assert_eq!(full[0], "m/0");

    // Linking the same number of builds one by one would take the test peer minutes: MongoDB gets
    // the commit document as SQLite holds it, and both link three more builds.
    let mongo = Db::at(crate::common::mongo::fresh_database("commit_limits"));
    let out = mongo.cmd().arg("init").output().expect("init");
    assert!(out.status.success(), "{}", stderr(&out));
    let commit = as_bson(&sqlite.doc("repository", HASH));
    // Two of its builds too, to be linked again below.
    let relinked: Vec<bson::Document> = ["m/0", "m/5000"]
        .iter()
        .map(|id| as_bson(&sqlite.doc("builds", id)))
        .collect();
    on_database(&mongo.location, |d| async move {
        d.collection::<bson::Document>("repository")
            .insert_one(commit)
            .await
            .expect("insert the commit document");
        d.collection::<bson::Document>("builds")
            .insert_many(relinked)
            .await
            .expect("insert two builds");
    });
    let more = builds(MAX_COMMIT_BUILDS, MAX_COMMIT_BUILDS + 3);
    ingest(&sqlite, &more);
    ingest(&mongo, &more);

    let kept = linked(&sqlite);
    assert_eq!(kept.len(), MAX_COMMIT_BUILDS);
    assert_eq!(
        kept[..],
        [
            &full[3..],
            &["m/10000", "m/10001", "m/10002"].map(String::from)
        ]
        .concat()[..]
    );
    assert_eq!(
        mongo.doc("repository", HASH),
        sqlite.doc("repository", HASH)
    );

    // A build linked again moves to the end: one still listed takes no more room, one dropped
    // before comes back in place of the first.
    let again = format!("{}\n{}\n", finished_again(5000), finished_again(0));
    ingest(&sqlite, &again);
    ingest(&mongo, &again);
    let mut expected: Vec<String> = kept[1..]
        .iter()
        .filter(|b| *b != "m/5000")
        .cloned()
        .collect();
    expected.extend(["m/5000".to_owned(), "m/0".to_owned()]);
    assert_eq!(linked(&sqlite), expected);
    assert_eq!(
        mongo.doc("repository", HASH),
        sqlite.doc("repository", HASH)
    );
    let last = &sqlite.doc("repository", HASH)["builds"][MAX_COMMIT_BUILDS - 1];
    assert_eq!(
        (last["build"].as_str(), last["result"].as_i64()),
        (Some("m/0"), Some(2))
    );
    // Every build is still found by its changeset.
    let of_commit = sqlite
        .export("builds")
        .iter()
        .filter(|b| b["changeset"] == HASH)
        .count();
    assert_eq!(of_commit, MAX_COMMIT_BUILDS + 3);
}

/// A retry may reach the server while the first attempt of the same batch is still running there.
/// Linking a build is "take its entry out, add it last": whatever the interleaving of the two
/// attempts, the build is listed once.
#[test]
fn two_attempts_at_a_link_interleaved_on_the_server_list_the_build_once() {
    use buildstore::core::{Core, CoreConfig};
    use buildstore::store::mongo::plan::plan;
    use buildstore_schema::{Collection, Event};

    let mut core = Core::new(CoreConfig::default());
    let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("a time");
    let mutations: Vec<_> = builds(0, 1)
        .lines()
        .flat_map(|line| {
            core.apply(&Event::parse(line).expect("an event"), at)
                .expect("folds")
        })
        .collect();
    let planned = plan(&mutations, &[], bson::DateTime::from_millis(0));
    let (_, link) = planned
        .updates
        .iter()
        .find(|(c, _)| *c == Collection::Repository)
        .expect("the link's statements");
    let [create, take_out, add] = &link[..] else {
        panic!("a link is three statements: {link:?}")
    };

    let mongo = Db::at(crate::common::mongo::fresh_database("link_interleaved"));
    on_database(&mongo.location, |d| async move {
        for s in [create, take_out, take_out, add, add] {
            d.run_command(bson::doc! {
                "update": "repository",
                "updates": [s.to_document()],
                "ordered": true,
            })
            .await
            .expect("update");
        }
    });
    assert_eq!(linked(&mongo), ["m/0"]);
}
