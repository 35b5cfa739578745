//! A real browser for the tests that need one: headless Chromium driven through chromedriver,
//! and the checks the web view's pages must pass in it (colours, bar widths, no script run).
//!
//! The API is blocking, so call it from plain `#[test]`s, not from inside a Tokio runtime: each
//! call runs on the browser's own runtime.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

use super::daemon::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How far a measured pixel width may be from the one the page's numbers call for: layout
/// rounds to device pixels, and a bar of a few pixels may be given a minimum width.
pub const TOLERANCE_PX: f64 = 2.0;

/// A headless Chromium with one window, and the chromedriver that runs it. Dropping it ends the
/// session (so that chromedriver stops Chromium) and then chromedriver.
pub struct Browser {
    rt: tokio::runtime::Runtime,
    client: Option<Client>,
    driver: Child,
    // Holds Chromium's profile and chromedriver's log; removed after both have stopped.
    _dir: tempfile::TempDir,
}

impl Browser {
    pub fn start() -> Browser {
        for binary in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: the browser tests need Debian's Chromium and its driver \
                 (`apt-get install chromium chromium-driver`, which scripts/test does)"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("chromedriver.log");
        let port = free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Chromium stays in chromedriver's process group, and killing chromedriver alone
            // would leave it running: the group is what `stop` kills.
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        wait_until_ready(&mut driver, port, &log);

        let profile = dir.path().join("profile");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-quic",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // No TLS: chromedriver is on loopback, so fantoccini needs no TLS feature, only a plain
        // HTTP connector.
        let session = rt.block_on(
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&format!("http://127.0.0.1:{port}")),
        );
        let client = match session {
            Ok(client) => client,
            Err(e) => {
                stop(&mut driver);
                panic!(
                    "no Chromium session: {e}\nchromedriver's log:\n{}",
                    log_tail(&log)
                );
            }
        };
        Browser {
            rt,
            client: Some(client),
            driver,
            _dir: dir,
        }
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("the session is open")
    }

    /// Loads `url` and returns once its load event has fired, images and styles included.
    pub fn goto(&self, url: &str) {
        self.rt
            .block_on(self.client().goto(url))
            .unwrap_or_else(|e| panic!("load {url}: {e}"));
    }

    /// The value of the JavaScript expression `expr` in the current page, as JSON (`undefined`
    /// comes back as null, DOM nodes as references: return plain data).
    pub fn execute(&self, expr: &str) -> Value {
        self.rt
            .block_on(self.client().execute(&format!("return ({expr});"), vec![]))
            .unwrap_or_else(|e| panic!("execute {expr}: {e}"))
    }

    /// A PNG of the window as shown, written to `path` (its folder is made if missing).
    pub fn screenshot(&self, path: &Path) {
        let png = self
            .rt
            .block_on(self.client().screenshot())
            .expect("screenshot");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot folder");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Ends the session, failing if that fails; dropping does the same but quietly.
    pub fn close(mut self) {
        let client = self.client.take().expect("the session is open");
        self.rt.block_on(client.close()).expect("end the session");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // Bounded: a test that failed because the browser hung must not hang here too.
            let _ = self.rt.block_on(async {
                tokio::time::timeout(Duration::from_secs(10), client.close()).await
            });
        }
        stop(&mut self.driver);
    }
}

/// Kills chromedriver and whatever of Chromium is still running in its process group.
fn stop(driver: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", driver.id())])
        .status();
    let _ = driver.wait();
}

/// Polls chromedriver's status until it says it is ready; fails at once if it exited (say,
/// because another process took the port between `free_port` and its bind).
fn wait_until_ready(driver: &mut Child, port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let url = format!("http://127.0.0.1:{port}/status");
    loop {
        if let Ok(Some(status)) = driver.try_wait() {
            panic!(
                "chromedriver exited with {status}; its log:\n{}",
                log_tail(log)
            );
        }
        if let Ok(mut response) = ureq::get(&url).call() {
            let body = response.body_mut().read_to_string().unwrap_or_default();
            let ready =
                serde_json::from_str::<Value>(&body).is_ok_and(|v| v["value"]["ready"] == true);
            if ready {
                return;
            }
        }
        if Instant::now() > deadline {
            stop(driver);
            panic!(
                "chromedriver did not answer on port {port} within 20 s; its log:\n{}",
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Where a test puts the screenshots it takes: `screenshots/` in cargo's target folder, so that
/// they outlive the run for a person to look at.
pub fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("screenshots")
        .join(name)
}

/// Checks that `path` is a whole PNG of a real window (signature, a header chunk first, an end
/// chunk last, every chunk within the file, a window-sized image, more than a blank page's bytes)
/// and returns its width and height.
pub fn assert_png(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let what = path.display();
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{what} is not a PNG"
    );
    let mut chunks = Vec::new();
    let mut at = 8;
    while at + 12 <= bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = String::from_utf8_lossy(&bytes[at + 4..at + 8]).into_owned();
        assert!(
            at + 12 + len <= bytes.len(),
            "{what}: chunk {kind} runs past the end"
        );
        chunks.push((kind, at + 8));
        at += 12 + len;
    }
    assert_eq!(at, bytes.len(), "{what}: bytes after the last chunk");
    assert_eq!(
        chunks.first().map(|c| c.0.as_str()),
        Some("IHDR"),
        "{what}: no header"
    );
    assert_eq!(
        chunks.last().map(|c| c.0.as_str()),
        Some("IEND"),
        "{what}: cut short"
    );
    assert!(
        chunks.iter().any(|c| c.0 == "IDAT"),
        "{what}: no image data"
    );
    let header = &bytes[chunks[0].1..];
    let width = u32::from_be_bytes(header[0..4].try_into().unwrap());
    let height = u32::from_be_bytes(header[4..8].try_into().unwrap());
    assert!(
        width >= 640 && height >= 480,
        "{what}: {width}×{height} is no window"
    );
    // Measured here: a blank 1280×857 window is 5.0 KB, one heading and a table row 9.1 KB.
    assert!(
        bytes.len() > 6_500,
        "{what}: {} bytes, as if nothing was drawn",
        bytes.len()
    );
    (width, height)
}

/// The step rows of `table.steps`, as an array.
const STEP_ROWS: &str = "Array.from(document.querySelectorAll('table.steps tr.step'))";
/// How a message names the step row `r`: its cells' text.
const ROW_TEXT: &str =
    "Array.from(r.cells, c => c.textContent.trim()).filter(t => t).join(' | ').slice(0, 80)";

/// Failed steps (`tr.step.failed`) show another background than every step that did not fail.
/// The colour compared is the one a person sees: the first cell's if it paints one over the
/// row's, else the row's own.
pub fn assert_failed_rows_highlighted(page: &Browser) {
    let rows = page.execute(&format!(
        "{STEP_ROWS}.map(r => {{
            const paint = e => {{
                const c = e ? getComputedStyle(e).backgroundColor : 'rgba(0, 0, 0, 0)';
                return c === 'rgba(0, 0, 0, 0)' || c === 'transparent' ? null : c;
            }};
            return {{
                failed: r.classList.contains('failed'),
                colour: paint(r.cells[0]) || paint(r) || 'transparent',
                text: {ROW_TEXT},
            }};
        }})"
    ));
    let rows = rows.as_array().expect("rows");
    let (failed, others): (Vec<&Value>, Vec<&Value>) =
        rows.iter().partition(|r| r["failed"] == true);
    assert!(
        !failed.is_empty() && !others.is_empty(),
        "the page needs failed and other steps to compare: {rows:#?}"
    );
    for f in &failed {
        for o in &others {
            assert_ne!(
                f["colour"], o["colour"],
                "failed step {} looks like step {}",
                f["text"], o["text"]
            );
        }
    }
}

/// Every step's bar is as wide as its `data-duration-ms` says, on one scale for all rows
/// (fitted to the rows, since the page's build span is not on it), within [`TOLERANCE_PX`];
/// the tracks are all as wide, and each bar lies inside its track.
pub fn assert_bars_proportional(page: &Browser) {
    let rows = page.execute(&format!(
        "{STEP_ROWS}.map(r => {{
            const box = e => {{
                if (!e) return null;
                const b = e.getBoundingClientRect();
                return {{ left: b.left, width: b.width }};
            }};
            const bar = r.querySelector('td.timeline .track .bar');
            return {{
                duration: r.getAttribute('data-duration-ms'),
                bar: box(bar),
                track: box(bar && bar.closest('.track')),
                text: {ROW_TEXT},
            }};
        }})"
    ));
    let rows = rows.as_array().expect("rows");
    let px = |v: &Value| v.as_f64().expect("a pixel measure");
    let measured: Vec<(f64, f64, &Value)> = rows
        .iter()
        .map(|r| {
            let duration = r["duration"]
                .as_str()
                .and_then(|d| d.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("step {} has no data-duration-ms", r["text"]));
            assert!(
                r["bar"].is_object(),
                "step {} has no td.timeline .track .bar",
                r["text"]
            );
            (duration, px(&r["bar"]["width"]), r)
        })
        .collect();
    let mut durations: Vec<f64> = measured.iter().map(|m| m.0).collect();
    durations.sort_by(f64::total_cmp);
    durations.dedup();
    assert!(
        durations.iter().filter(|d| **d > 0.0).count() >= 2,
        "the page needs steps of two different durations to compare: {rows:#?}"
    );

    let track_width = px(&measured[0].2["track"]["width"]);
    for (_, _, r) in &measured {
        let (track, bar) = (&r["track"], &r["bar"]);
        assert!(
            (px(&track["width"]) - track_width).abs() <= 0.5,
            "the track of step {} is {} px wide, the first one {track_width} px",
            r["text"],
            track["width"]
        );
        let (start, end) = (px(&track["left"]), px(&track["left"]) + track_width);
        let (left, right) = (px(&bar["left"]), px(&bar["left"]) + px(&bar["width"]));
        assert!(
            left >= start - TOLERANCE_PX && right <= end + TOLERANCE_PX,
            "the bar of step {} ({left}..{right} px) leaves its track ({start}..{end} px)",
            r["text"]
        );
    }

    // Least squares through the origin: no one row's rounding sets the scale for the others.
    let scale = measured.iter().map(|(d, w, _)| d * w).sum::<f64>()
        / measured.iter().map(|(d, _, _)| d * d).sum::<f64>();
    let widest = measured.iter().map(|m| m.1).fold(0.0, f64::max);
    assert!(
        widest > 2.0 * TOLERANCE_PX,
        "no bar is drawn (the widest is {widest} px): is .bar a block with a width?"
    );
    let report: Vec<String> = measured
        .iter()
        .map(|(d, w, r)| {
            format!(
                "{:>10} ms → {w:7.2} px, expected {:7.2}: {}",
                d,
                d * scale,
                r["text"]
            )
        })
        .collect();
    for (d, w, r) in &measured {
        assert!(
            (w - d * scale).abs() <= TOLERANCE_PX,
            "the bar of step {} is not in proportion to its duration:\n{}",
            r["text"],
            report.join("\n")
        );
    }
}

/// Every step's bar starts where in the build the step started: its left edge sits
/// `data-offset-ms` into the track, on the scale of the table's `data-span-ms` (the build's time
/// span) over the track's width, within [`TOLERANCE_PX`].
pub fn assert_bars_placed_at_their_start(page: &Browser) {
    let span = page.execute("document.querySelector('table.steps').getAttribute('data-span-ms')");
    let span: f64 = span
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("table.steps has data-span-ms");
    assert!(span > 0.0, "the build has no time span");
    let rows = page.execute(&format!(
        "{STEP_ROWS}.map(r => {{
            const bar = r.querySelector('td.timeline .track .bar');
            const track = bar.closest('.track').getBoundingClientRect();
            return {{
                offset: r.getAttribute('data-offset-ms'),
                left: bar.getBoundingClientRect().left - track.left,
                track: track.width,
                text: {ROW_TEXT},
            }};
        }})"
    ));
    let rows = rows.as_array().expect("rows");
    assert!(
        rows.iter()
            .any(|r| r["left"].as_f64().unwrap_or(0.0) > 2.0 * TOLERANCE_PX),
        "no bar starts later than its build: nothing to compare"
    );
    for r in rows {
        let offset: f64 = r["offset"]
            .as_str()
            .and_then(|o| o.parse().ok())
            .unwrap_or_else(|| panic!("step {} has no data-offset-ms", r["text"]));
        let track = r["track"].as_f64().expect("track width");
        let left = r["left"].as_f64().expect("bar position");
        let expected = offset / span * track;
        assert!(
            (left - expected).abs() <= TOLERANCE_PX,
            "the bar of step {} starts {left:.1} px into its track, expected {expected:.1}",
            r["text"]
        );
    }
}

/// Nothing a build's data put on the page ran or could run: the title is not the one the
/// payloads set, no `data-xss` on the body, no `script` element at all, and no element with an
/// inline event handler (`<img onerror>` and the like).
pub fn assert_no_script_ran(page: &Browser) {
    let found = page.execute(
        "{
            title: document.title,
            xss: 'xss' in document.body.dataset ? String(document.body.dataset.xss) : null,
            scripts: Array.from(document.querySelectorAll('script'), s => s.outerHTML.slice(0, 120)),
            handlers: Array.from(document.querySelectorAll('*')).flatMap(e =>
                Array.from(e.attributes)
                    .filter(a => a.name.startsWith('on'))
                    .map(a => `<${e.localName} ${a.name}=\"${a.value}\">`)),
        }",
    );
    let scripts = found["scripts"].as_array().expect("scripts");
    let handlers = found["handlers"].as_array().expect("handlers");
    let bad = found["title"] == "XSS"
        || !found["xss"].is_null()
        || !scripts.is_empty()
        || !handlers.is_empty();
    assert!(!bad, "a script ran or could run on the page: {found:#}");
}
