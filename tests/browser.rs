//! Pages in a real browser (headless Chromium): first the checks themselves, on fixture pages that
//! follow the build page's contract, so that a check that cannot fail is caught; then the real
//! pages of `buildstore web`, with screenshots under `target/screenshots/`.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use common::browser::*;

/// A build's steps as (name, start ms, duration ms, result), on a span of 60 s.
const STEPS: &[(&str, u64, u64, &str)] = &[
    ("checkout", 0, 3_000, "success"),
    ("compile", 3_000, 30_000, "success"),
    ("skipped lint", 33_000, 0, "skipped"),
    ("test", 33_000, 21_000, "failure"),
    ("upload", 54_000, 6_000, "warnings"),
];
const SPAN_MS: f64 = 60_000.0;

const XSS_TITLE: &str = "<script>document.title='XSS'</script>";
const XSS_ATTRIBUTE: &str = "\"><img src=x onerror=\"document.body.dataset.xss=1\">";

/// A build page after the contract: `table.steps`, a `tr.step result-…` per step (`failed` too
/// when it failed) with `data-duration-ms`, and a bar sized in percent of the build's span inside
/// a fixed-width track. `text` goes into every field that shows a step's data, as is: escaping
/// is the caller's to do or to leave out.
fn build_page(text: &dyn Fn(&str) -> String) -> String {
    let rows: String = STEPS
        .iter()
        .map(|&(name, start, duration, result)| {
            let failed = if result == "failure" { " failed" } else { "" };
            format!(
                r#"<tr class="step result-{result}{failed}" data-duration-ms="{duration}">
<td class="name" title="{name}">{name}</td><td class="result">{result}</td>
<td class="timeline"><div class="track"><div class="bar" style="margin-left:{:.4}%;width:{:.4}%"></div></div></td></tr>
"#,
                100.0 * start as f64 / SPAN_MS,
                100.0 * duration as f64 / SPAN_MS,
                name = text(name),
            )
        })
        .collect();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Build 42 · fixture</title>
<style>
body {{ font: 14px sans-serif; margin: 2em; }}
table.steps {{ border-collapse: collapse; }}
tr.step td {{ padding: 4px 12px; border-bottom: 1px solid #ddd; }}
tr.step.failed {{ background: #fde2e1; }}
td.timeline .track {{ width: 480px; height: 14px; background: #eef; }}
.bar {{ height: 100%; min-width: 1px; background: #4a7fc1; }}
tr.failed .bar {{ background: #c0392b; }}
</style></head>
<body><h1 title="{heading}">Build 42: {heading}</h1>
<table class="steps">
{rows}</table></body></html>
"#,
        heading = text("fixture"),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// Every field of the page carries both payloads after its own text.
fn with_payloads(s: &str) -> String {
    format!("{s} {XSS_TITLE} {XSS_ATTRIBUTE}")
}

/// Serves `pages` as path → HTML on a free loopback port until the test process ends, one thread
/// per connection because Chromium opens connections it may never send a request on. Anything
/// else (the favicon, the payloads' `src=x`) is a 404.
fn serve(pages: Vec<(&'static str, String)>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("address"));
    let pages = std::sync::Arc::new(pages);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let pages = pages.clone();
            std::thread::spawn(move || answer(stream, &pages));
        }
    });
    base
}

fn answer(mut stream: TcpStream, pages: &[(&str, String)]) {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match pages.iter().find(|(p, _)| *p == path) {
        Some((_, html)) => ("200 OK", html.as_str()),
        None => ("404 Not Found", "not found"),
    };
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
}

#[test]
fn the_checks_pass_on_a_page_that_follows_the_contract() {
    let site = serve(vec![
        ("/build", build_page(&|s| s.to_owned())),
        ("/escaped", build_page(&|s| escape(&with_payloads(s)))),
    ]);
    let browser = Browser::start();

    browser.goto(&format!("{site}/build"));
    assert_eq!(browser.execute("document.title"), "Build 42 · fixture");
    assert_failed_rows_highlighted(&browser);
    assert_bars_proportional(&browser);
    let png = screenshot_path("browser-self-test.png");
    let _ = std::fs::remove_file(&png);
    browser.screenshot(&png);
    assert_png(&png);

    browser.goto(&format!("{site}/escaped"));
    // The payloads are on the page as text, so the check below looked at them.
    let shown = browser.execute("document.querySelector('td.name').textContent");
    assert!(
        shown.as_str().is_some_and(|t| t.contains(XSS_TITLE)),
        "{shown}"
    );
    assert_no_script_ran(&browser);
    browser.close();
}

#[test]
#[should_panic(expected = "a script ran or could run")]
fn the_escaping_check_fails_on_a_page_that_does_not_escape() {
    let site = serve(vec![("/unescaped", build_page(&|s| with_payloads(s)))]);
    let browser = Browser::start();
    browser.goto(&format!("{site}/unescaped"));
    assert_no_script_ran(&browser);
}

/// The real pages of `buildstore web` on the example streams: the build whose clobber step took
/// a third of its time and whose test step made it warn.
#[test]
fn the_real_pages_render_with_highlighted_steps_and_proportional_bars() {
    let db = common::Db::new();
    for file in common::example_files() {
        db.ingest_ok(&file);
    }
    let web = common::web::WebServer::start(&db);
    let browser = Browser::start();
    for (name, path) in [
        ("index", "/"),
        ("build", "/builds/bm03/18391"),
        ("changesets", "/changesets"),
        ("builders", "/builders"),
        ("log", "/steps/bm03/18391/3/logs/stdout"),
    ] {
        browser.goto(&format!("{}{path}", web.base));
        let png = screenshot_path(&format!("{name}.png"));
        let _ = std::fs::remove_file(&png);
        browser.screenshot(&png);
        assert_png(&png);
        if name == "build" {
            assert_eq!(
                browser.execute("document.title"),
                "libtessel-win64-debug #1288 · buildstore"
            );
            assert_eq!(
                browser.execute("document.querySelectorAll('tr.step.failed').length"),
                1
            );
            assert_failed_rows_highlighted(&browser);
            assert_bars_proportional(&browser);
            assert_bars_placed_at_their_start(&browser);
        }
        // UPDATE_SCREENSHOTS=1 refreshes the pictures the README shows.
        if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
            let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
            std::fs::create_dir_all(&docs).expect("docs/screenshots");
            std::fs::copy(&png, docs.join(format!("{name}.png"))).expect("copy the screenshot");
        }
    }
    browser.close();
}

#[test]
fn markup_in_events_runs_nowhere_in_the_real_pages() {
    let db = common::Db::new();
    let out = db.ingest_text(&common::web::hostile_stream(), &[]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let web = common::web::WebServer::start(&db);
    let build = web.json("/api")["rows"][0]["builds"][0]["url"]
        .as_str()
        .expect("the build is listed")
        .to_owned();
    let browser = Browser::start();
    for path in ["/", build.as_str(), "/changesets", "/builders"] {
        browser.goto(&format!("{}{path}", web.base));
        let text = browser.execute("document.body.textContent");
        assert!(
            text.as_str()
                .is_some_and(|t| t.contains("<script>document.title='XSS'</script>")),
            "{path}: the payload is shown as text"
        );
        assert_no_script_ran(&browser);
    }
    browser.close();
}
