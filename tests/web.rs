//! The web view over HTTP, on the real binary: every page and its JSON twin on both stores,
//! filters and paging, errors, escaping, big logs, and how soon the pages show new events.

mod common;

use std::time::{Duration, Instant};

use common::daemon::{exchange, free_port, Daemon};
use common::mongo::fresh_database;
use common::web::{get, hostile_stream, WebServer};
use common::*;
use serde_json::{json, Value};

/// A store holding every example stream.
fn examples_store(db: &Db) {
    for file in example_files() {
        db.ingest_ok(&file);
    }
}

fn stores() -> Vec<(&'static str, Db)> {
    vec![
        ("sqlite", Db::new()),
        ("mongodb", Db::at(fresh_database("web"))),
    ]
}

/// Every build `_id` the activity pages list, following `next` with pages of `limit`.
fn all_build_ids(web: &WebServer, filters: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/api?limit={limit}{filters}");
        if let Some(b) = &before {
            path.push_str(&format!("&before={}", urlencode(b)));
        }
        let page = web.json(&path);
        for row in page["rows"].as_array().expect("rows") {
            for b in row["builds"].as_array().expect("builds") {
                ids.push(b["id"].as_str().expect("id").to_owned());
            }
        }
        match page["next"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return ids,
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Build ids in the store, newest first, as `export` sees them.
fn exported_build_ids(db: &Db) -> Vec<String> {
    let mut builds = db.export("builds");
    builds.sort_by(|a, b| {
        let t = |d: &Value| d["time_start"]["$date"].as_str().unwrap_or("").to_owned();
        t(b).cmp(&t(a))
            .then_with(|| b["_id"].as_str().cmp(&a["_id"].as_str()))
    });
    builds
        .iter()
        .map(|b| b["_id"].as_str().expect("id").to_owned())
        .collect()
}

#[test]
fn every_page_and_its_json_twin_answer_with_the_same_data_on_both_stores() {
    let mut twins: Vec<Vec<Value>> = Vec::new();
    for (name, db) in stores() {
        examples_store(&db);
        let web = WebServer::start(&db);
        let build = "bm03/18391";
        let step = "bm03/18391/3";
        for path in ["/", "/changesets", "/builders", "/builds/bm03/18391"] {
            let html = web.html(path);
            assert!(
                html.contains("class=\"legend\""),
                "{name} {path}: no legend"
            );
            assert!(
                html.contains("<span class=\"badge result-unfinished\">unfinished</span>"),
                "{name} {path}: the legend lacks the steps never finished"
            );
        }
        // The failed build: its failed step is marked, its log linked, its facts shown.
        let page = web.html(&format!("/builds/{build}"));
        assert!(page.contains("libtessel-win64-debug"), "{name}");
        assert!(
            page.contains("class=\"step result-warnings failed\""),
            "{name}: the test step that made the build warn"
        );
        let failing = web.html("/builds/bm04/88102");
        assert!(
            failing.contains("class=\"step result-failure failed\""),
            "{name}: the failed compile"
        );
        assert!(
            page.contains(&format!("href=\"/steps/{step}/logs/stdout\"")),
            "{name}"
        );
        assert!(page.contains("win64"), "{name}: platform from the property");
        let log = web.get(&format!("/steps/{step}/logs/stdout"));
        assert_eq!(log.status, 200);
        assert_eq!(log.content_type, "text/plain; charset=utf-8");
        assert_eq!(
            log.body,
            db.log(step, "stdout").stdout,
            "{name}: the full log"
        );
        let window = web.json(&format!("/api/steps/{step}/logs/stdout?limit=100"));
        assert_eq!(window["offset"], 0);
        assert_eq!(window["next_offset"], 100);
        assert_eq!(
            window["length"].as_u64(),
            Some(log.body.len() as u64),
            "{name}"
        );
        twins.push(
            [
                "/api",
                &format!("/api/builds/{build}"),
                "/api/changesets",
                "/api/builders",
            ]
            .iter()
            .map(|p| web.json(p))
            .collect(),
        );
    }
    assert_eq!(twins[0], twins[1], "the JSON twins differ between stores");
    let [activity, build, console, builders] = &twins[0][..] else {
        unreachable!()
    };
    assert_eq!(build["result"]["name"], "warnings");
    let failed: Vec<&Value> = build["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["failed"] == true)
        .collect();
    assert_eq!(failed.len(), 1, "one failed step");
    assert!(activity["rows"].as_array().unwrap().len() >= 5);
    assert!(!console["commits"].as_array().unwrap().is_empty());
    assert!(!builders["masters"].as_array().unwrap().is_empty());
}

#[test]
fn filters_narrow_the_view_and_paging_visits_every_build_once() {
    for (name, db) in stores() {
        examples_store(&db);
        let web = WebServer::start(&db);
        let everything = exported_build_ids(&db);
        assert_eq!(all_build_ids(&web, "", 2), everything, "{name}: pages of 2");
        assert_eq!(all_build_ids(&web, "", 500), everything, "{name}: one page");
        let builds = db.export("builds");
        let expect = |keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
            everything
                .iter()
                .filter(|id| keep(builds.iter().find(|b| b["_id"] == **id).unwrap()))
                .cloned()
                .collect()
        };
        let failed = expect(&|b| b["result"] == 2);
        assert!(!failed.is_empty());
        assert_eq!(all_build_ids(&web, "&result=failure", 3), failed, "{name}");
        assert_eq!(all_build_ids(&web, "&result=2", 3), failed, "{name}");
        let running = expect(&|b| b["result"].is_null());
        assert_eq!(all_build_ids(&web, "&result=running", 3), running, "{name}");
        let bm03 = expect(&|b| b["master_id"] == "bm03");
        assert!(!bm03.is_empty());
        assert_eq!(all_build_ids(&web, "&master=bm03", 3), bm03, "{name}");
        let linux = expect(&|b| b["builder"] == "libtessel-linux64-opt");
        assert!(!linux.is_empty());
        assert_eq!(
            all_build_ids(&web, "&builder=libtessel-linux64-opt", 1),
            linux,
            "{name}"
        );
        let main = expect(&|b| b["branch"] == "main");
        assert_eq!(all_build_ids(&web, "&branch=main", 4), main, "{name}");
        let later =
            expect(&|b| b["time_start"]["$date"].as_str().unwrap_or("") >= "2026-03-13T00:00:00Z");
        assert!(!later.is_empty() && later.len() < everything.len());
        assert_eq!(all_build_ids(&web, "&since=2026-03-13", 4), later, "{name}");
        let earlier: Vec<String> =
            expect(&|b| !later.contains(&b["_id"].as_str().unwrap().to_owned()));
        assert_eq!(
            all_build_ids(&web, "&until=2026-03-13", 4),
            earlier,
            "{name}"
        );
        // Two filters at once, and the page's links: each chip widens back.
        let html = web.html("/?result=failure&master=bm03");
        assert!(
            html.contains("href=\"?master=bm03\""),
            "{name}: drop result"
        );
        assert!(
            html.contains("href=\"?result=failure\""),
            "{name}: drop master"
        );
        // The filter form keeps a page size given in the URL, and adds none otherwise.
        let hidden = "<input type=\"hidden\" name=\"limit\" value=\"3\">";
        assert!(web.html("/?limit=3&master=bm03").contains(hidden), "{name}");
        assert!(
            !web.html("/?master=bm03").contains("name=\"limit\""),
            "{name}"
        );
    }
}

#[test]
fn bad_parameters_and_unknown_ids_get_clear_errors_not_500s() {
    let db = Db::new();
    examples_store(&db);
    let web = WebServer::start(&db);
    let cases = [
        ("/?bulder=x", 400, "unknown parameter \"bulder\""),
        (
            "/?limit=0",
            400,
            "limit must be a whole number from 1 to 500",
        ),
        ("/?result=broken", 400, "result must be one of"),
        ("/?since=yesterday", 400, "since must be a date"),
        ("/?before=garbage", 400, "not a cursor"),
        ("/?builder=a&builder=b", 400, "given twice"),
        ("/changesets?before=x", 400, "not a cursor"),
        ("/builders?limit=x", 400, "limit must be"),
        ("/builds/bm03/18391?x=1", 400, "unknown parameter \"x\""),
        ("/builds/nope/1", 404, "there is no build \"nope/1\""),
        ("/steps/bm03/18391/3/logs/stdin", 404, "not a log channel"),
        ("/steps/bm03/18391/99/logs/stdout", 404, "there is no step"),
        ("/no/such/page", 404, "there is no page"),
        (
            "/builders?limit=101",
            400,
            "limit must be a whole number from 1 to 100",
        ),
        ("/builds/%FF", 400, "the path is not understood"),
        (
            "/?builder=%FF",
            400,
            "`builder`: value \"%FF\" is not UTF-8 once percent-decoded",
        ),
        (
            "/builds/bm03/18391?x=1",
            400,
            "this page takes no parameters",
        ),
    ];
    for (path, status, message) in cases {
        let page = web.get(path);
        assert_eq!(page.status, status, "{path}");
        assert_eq!(page.content_type, "text/html; charset=utf-8", "{path}");
        let escaped = message.replace('"', "&quot;");
        assert!(page.text().contains(&escaped), "{path}: {}", page.text());
        let api = if path.starts_with("/?") {
            format!("/api{}", &path[1..])
        } else {
            format!("/api{path}")
        };
        let answer = web.get(&api);
        assert_eq!(answer.status, status, "{api}");
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{api}"
        );
        let error = answer.json()["error"].as_str().unwrap_or("").to_owned();
        assert!(error.contains(message), "{api}: {error}");
    }
    for bad in ["limit=0", "offset=18446744073709551615"] {
        let window = web.get(&format!("/api/steps/bm03/18391/3/logs/stdout?{bad}"));
        assert_eq!(window.status, 400, "{bad}");
    }
    // Everything only reads: another method is told so, in the form it was sent to.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for path in ["/api", "/builds/bm03/18391"] {
        let mut answer = agent
            .post(&format!("{}{path}", web.base))
            .send("{}")
            .expect("an answer");
        assert_eq!(answer.status().as_u16(), 405, "{path}");
        assert_eq!(answer.headers()["allow"], "GET,HEAD", "{path}");
        let body = answer.body_mut().read_to_string().expect("a body");
        assert!(body.contains("POST is not served here"), "{path}: {body}");
    }
}

/// The "JSON" link of a page leads to the same data: its query goes along.
#[test]
fn each_pages_json_link_keeps_the_pages_parameters() {
    let db = Db::new();
    examples_store(&db);
    let web = WebServer::start(&db);
    for (page, twin) in [
        ("/changesets?limit=1", "/api/changesets?limit=1"),
        ("/builders?limit=2", "/api/builders?limit=2"),
        (
            "/?limit=1&result=failure",
            "/api?result=failure&amp;limit=1",
        ),
        ("/changesets", "/api/changesets"),
    ] {
        let html = web.html(page);
        assert!(
            html.contains(&format!("class=\"api\" href=\"{twin}\"")),
            "{page}: {html}"
        );
    }
    let next = web.json("/api/builders?limit=2")["next"].clone();
    let after = next.as_str().expect("a second page of builders");
    let query = format!("limit=2&after={}", urlencode(after));
    let html = web.html(&format!("/builders?{query}"));
    let twin = format!("/api/builders?{query}");
    assert!(
        html.contains(&format!("href=\"{}\"", twin.replace('&', "&amp;"))),
        "{html}"
    );
    assert_ne!(
        web.json(&twin),
        web.json("/api/builders?limit=2"),
        "the second page"
    );
}

#[test]
fn text_from_events_is_escaped_on_every_page() {
    let db = Db::new();
    let out = db.ingest_text(&hostile_stream(), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let web = WebServer::start(&db);
    let build = web.json("/api")["rows"][0]["builds"][0]["url"]
        .as_str()
        .expect("the build is listed")
        .to_owned();
    let step = web.json(&format!("/api{build}"))["steps"][0]["logs"][0]["url"]
        .as_str()
        .expect("the log is linked")
        .to_owned();
    for path in ["/", "/changesets", "/builders", build.as_str()] {
        let page = web.get(path);
        assert_eq!(page.status, 200, "{path}");
        let html = page.text();
        assert!(
            !html.contains("<script"),
            "{path}: a script element got through"
        );
        assert!(!html.contains("<img"), "{path}: an img element got through");
        assert!(
            html.contains("&lt;script&gt;"),
            "{path}: the text is still shown"
        );
        assert!(
            page.header("content-security-policy")
                .is_some_and(|c| c.contains("default-src 'none'")),
            "{path}: no CSP"
        );
    }
    // A builder's state is free text: shown, it adds no class of its own to the page.
    let builders = web.get("/builders").text();
    assert!(
        builders.contains("<span class=\"status\">s&lt;script"),
        "{builders}"
    );
    // The log is plain text, and the JSON twins JSON, never sniffed as HTML.
    let log = web.get(&step);
    assert_eq!(log.content_type, "text/plain; charset=utf-8");
    assert_eq!(log.header("x-content-type-options"), Some("nosniff"));
    for api in [
        "/api".to_owned(),
        format!("/api{build}"),
        "/api/builders".into(),
        format!("/api{step}"),
    ] {
        let answer = web.get(&api);
        assert_eq!(answer.content_type, "application/json", "{api}");
        assert_eq!(
            answer.header("x-content-type-options"),
            Some("nosniff"),
            "{api}"
        );
    }
}

#[test]
fn a_log_over_16_mib_streams_whole_on_both_stores() {
    let line = "0123456789abcdef".repeat(63) + "\n"; // 1 KiB
    let chunk = line.repeat(512); // 512 KiB
    let chunks = 34; // 17 MiB
    let mut stream = String::new();
    stream += &format!(
        "{}\n",
        json!({"type":"build_started","master_id":"big","time":"2026-11-20T10:00:00Z","builder":"linux64","build_id":1,"number":1})
    );
    stream += &format!(
        "{}\n",
        json!({"type":"step_started","master_id":"big","time":"2026-11-20T10:00:01Z","build_id":1,"step":0,"name":"compile"})
    );
    for i in 0..chunks {
        stream += &format!(
            "{}\n",
            json!({"type":"log","master_id":"big","build_id":1,"step":0,"channel":"stdout","offset":i * chunk.len(),"text":chunk})
        );
    }
    for (name, db) in stores() {
        let out = db.ingest_text(&stream, &[]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let web = WebServer::start(&db);
        let log = web.get("/steps/big/1/0/logs/stdout");
        assert_eq!(log.status, 200);
        assert_eq!(log.body.len(), chunks * chunk.len(), "{name}");
        assert!(
            log.body.chunks(chunk.len()).all(|c| c == chunk.as_bytes()),
            "{name}"
        );
        let last = web.json(&format!(
            "/api/steps/big/1/0/logs/stdout?offset={}",
            chunks * chunk.len() - 10
        ));
        assert_eq!(last["text"], &line[line.len() - 10..], "{name}");
        assert_eq!(last["next_offset"], Value::Null);
        assert_eq!(last["length"], chunks * chunk.len(), "{name}");
        // A window at or past the end is empty, and the log as long as it is.
        for past in [chunks * chunk.len(), chunks * chunk.len() + 5_000_000] {
            let window = web.json(&format!("/api/steps/big/1/0/logs/stdout?offset={past}"));
            assert_eq!(
                (&window["text"], &window["length"], &window["next_offset"]),
                (&json!(""), &json!(chunks * chunk.len()), &Value::Null),
                "{name}: offset {past}"
            );
        }
    }
}

/// `buildstore serve --web` on a SQLite store in `dir`: the daemon, its socket port, its web port.
fn serve_with_web(dir: &std::path::Path) -> (Daemon, u16, u16) {
    let port = free_port();
    let web_port = free_port();
    let web = format!("127.0.0.1:{web_port}");
    (Daemon::start(dir, port, &["--web", &web]), port, web_port)
}

#[test]
fn serve_with_web_shows_an_event_within_a_second_of_its_ack() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, port, web_port) = serve_with_web(dir.path());
    let base = WebServer::at(web_port);
    assert_eq!(get(&format!("{base}/builds/m1/1")).status, 404);
    let started = json!({"type":"build_started","master_id":"m1","builder":"linux64","build_id":1,"number":7,"time":"2026-11-20T10:00:00Z"}).to_string();
    let finished = json!({"type":"build_finished","master_id":"m1","build_id":1,"result":2,"time":"2026-11-20T10:01:00Z"}).to_string();
    for (line, expect) in [(&started, "running"), (&finished, "failure")] {
        let replies = exchange(port, &[line]);
        assert!(replies[0].get("ack").is_some(), "{replies:?}");
        let acked = Instant::now();
        loop {
            let page = get(&format!("{base}/api/builds/m1/1"));
            if page.status == 200 && page.json()["result"]["name"] == expect {
                break;
            }
            assert!(
                acked.elapsed() < Duration::from_secs(1),
                "the page did not show {expect:?} within a second of the ack"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(daemon.stop().success());
}

#[test]
fn web_refuses_a_store_that_does_not_exist() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::at(format!("sqlite:{}", dir.path().join("typo.db").display()));
    let out = db
        .cmd()
        .args(["web", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no store at"), "{}", stderr(&out));
    assert!(!dir.path().join("typo.db").exists());
}

#[test]
fn a_slow_reader_of_a_big_log_does_not_hold_up_the_daemons_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (daemon, port, web_port) = serve_with_web(dir.path());
    let chunk = "x".repeat(511) + "\n";
    let chunk = chunk.repeat(1024); // 512 KiB
    let mut lines = vec![
        json!({"type":"build_started","master_id":"m1","builder":"linux64","build_id":1,"number":1}).to_string(),
        json!({"type":"step_started","master_id":"m1","build_id":1,"step":0,"name":"test"}).to_string(),
    ];
    for i in 0..16 {
        lines.push(
            json!({"type":"log","master_id":"m1","build_id":1,"step":0,"channel":"stdout",
                          "offset": i * chunk.len(),"text":chunk})
            .to_string(),
        );
    }
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    assert!(exchange(port, &refs).iter().all(|r| r.get("ack").is_some()));
    let base = WebServer::at(web_port);
    let applied = Instant::now();
    while get(&format!("{base}/api/steps/m1/1/0/logs/stdout?limit=1")).json()["length"]
        != 16 * chunk.len()
    {
        assert!(
            applied.elapsed() < Duration::from_secs(60),
            "the log was not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A client that asks for the 8 MiB log and reads almost nothing of it.
    let mut reader = std::net::TcpStream::connect(("127.0.0.1", web_port)).expect("connect");
    use std::io::{Read, Write};
    write!(
        reader,
        "GET /steps/m1/1/0/logs/stdout HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    .expect("send");
    let mut first = [0u8; 1024];
    reader.read_exact(&mut first).expect("the log starts");
    let stopping = Instant::now();
    assert!(daemon.stop().success());
    assert!(
        stopping.elapsed() < Duration::from_secs(15),
        "the stop waited {:?} for the reader",
        stopping.elapsed()
    );
    drop(reader);
}

#[test]
fn ids_with_any_characters_are_linked_and_found_again() {
    // Any character but `/` in a build id (events refuse that one); a builder name may hold `/`.
    let db = Db::new();
    let build = json!({"type":"build_started","master_id":"m 1","builder":"linux/64",
                       "build_id":"a#b?c%d&é","number":1,"time":"2026-11-20T10:00:00Z"});
    let step = json!({"type":"step_started","master_id":"m 1","build_id":"a#b?c%d&é","step":0,
                      "name":"test","time":"2026-11-20T10:00:01Z"});
    let log = json!({"type":"log","master_id":"m 1","build_id":"a#b?c%d&é","step":0,
                     "channel":"stdout","offset":0,"text":"ok\n"});
    let out = db.ingest_text(&format!("{build}\n{step}\n{log}\n"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let web = WebServer::start(&db);
    let listed = &web.json("/api?master=m%201&builder=linux%2F64")["rows"][0]["builds"][0];
    assert_eq!(listed["id"], "m 1/a#b?c%d&é");
    let url = listed["url"].as_str().expect("url");
    assert_eq!(url, "/builds/m%201/a%23b%3Fc%25d%26%C3%A9");
    assert!(web.html(url).contains("linux/64"));
    let page = web.json(&format!("/api{url}"));
    let log_url = page["steps"][0]["logs"][0]["url"]
        .as_str()
        .expect("log url");
    assert_eq!(web.get(log_url).body, b"ok\n");
}

const HASH: &str = "4f2b8c1e9a7d3b5c6f0e1d2c3b4a59687f6e5d4c";

#[test]
fn an_empty_branch_or_abbreviation_leaves_no_link_without_text() {
    let db = Db::new();
    let build = json!({"type":"build_started","master_id":"m","builder":"linux","build_id":1,
                       "number":1,"branch":"","changeset":HASH,"time":"2026-11-20T10:00:00Z"});
    let commit = json!({"type":"commit","master_id":"m","hash":HASH,"hash_abbrev":"",
                        "repository_uri":"r","subject":"s","author_name":"a","author_email":"e",
                        "author_date":"2026-11-20T09:00:00Z","commiter_name":"c",
                        "commiter_email":"e","commiter_date":"2026-11-20T09:00:00Z"});
    let finished = json!({"type":"build_finished","master_id":"m","build_id":1,"result":0,
                          "time":"2026-11-20T10:01:00Z"});
    let out = db.ingest_text(&format!("{build}\n{commit}\n{finished}\n"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let web = WebServer::start(&db);
    let index = web.html("/");
    assert!(index.contains("linux"), "{index}");
    assert!(index.contains(&format!("<code>{HASH}</code>")), "{index}");
    assert!(
        !index.contains("branch="),
        "a link to an empty branch: {index}"
    );
    let console = web.html("/changesets");
    assert!(
        console.contains(&format!("<code>{}</code>", &HASH[..7])),
        "{console}"
    );
    assert!(!console.contains("<code></code>"), "{console}");
}
