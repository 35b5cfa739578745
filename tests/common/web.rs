//! A running `buildstore web` and an HTTP client for its pages.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use serde_json::{json, Value};

use super::daemon::free_port;
use super::Db;

/// `buildstore web` on a free port, stopped with SIGTERM when dropped.
pub struct WebServer {
    child: Child,
    pub base: String,
}

/// A response, read whole.
pub struct Page {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Page {
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("a page is UTF-8")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("an /api answer is JSON")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl WebServer {
    pub fn start(db: &Db) -> WebServer {
        let port = free_port();
        let mut child = db
            .cmd()
            .args(["web", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start buildstore web");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert!(
            line.starts_with("buildstore web: serving"),
            "buildstore web did not start: {line:?}"
        );
        WebServer {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// The server of a running `buildstore serve --web`.
    pub fn at(port: u16) -> String {
        format!("http://127.0.0.1:{port}")
    }

    pub fn get(&self, path: &str) -> Page {
        get(&format!("{}{path}", self.base))
    }

    /// GET `path`, which must answer 200 with a content type starting with `content_type`.
    fn ok(&self, path: &str, content_type: &str) -> Page {
        let page = self.get(path);
        let body = String::from_utf8_lossy(&page.body);
        assert_eq!(page.status, 200, "{path}: {body}");
        assert!(
            page.content_type.starts_with(content_type),
            "{path}: {}",
            page.content_type
        );
        page
    }

    /// GET `path`, which must answer 200 with JSON.
    pub fn json(&self, path: &str) -> Value {
        self.ok(path, "application/json").json()
    }

    /// GET `path`, which must answer 200 with HTML; its text.
    pub fn html(&self, path: &str) -> String {
        self.ok(path, "text/html; charset=utf-8").text()
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        super::send_signal(&self.child, "TERM");
        self.child.wait().expect("wait")
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        super::send_signal(&self.child, "TERM");
        let _ = self.child.wait();
    }
}

/// GET a URL; any status is an answer, read whole however big.
pub fn get(url: &str) -> Page {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut response = agent.get(url).call().expect("the server answers");
    let headers = response
        .headers()
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect::<Vec<_>>();
    let content_type = headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let body = response
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .expect("read the body");
    Page {
        status: response.status().as_u16(),
        content_type,
        headers,
        body,
    }
}

/// A build whose every text field (names, properties, changes, logs, commit) holds markup that
/// would run a script or break out of an attribute if it reached a page unescaped.
pub fn hostile_stream() -> String {
    const P: &str = "<script>document.title='XSS'</script>\"><img src=x onerror=\"document.body.dataset.xss=1\">";
    let t = |s: i64| format!("2026-11-20T10:00:{s:02}Z");
    // A master id may not contain `/` (it is joined into `_id`s): its payload goes without.
    let m = format!("m{}", P.replace('/', ""));
    let events = vec![
        json!({"type":"builder_added","master_id":m,"time":t(0),"builder":format!("b{P}"),
               "category":format!("c{P}"),"tags":[P],"slaves":[format!("w{P}")]}),
        json!({"type":"builder_state","master_id":m,"time":t(0),"builder":format!("b{P}"),"state":format!("s{P}")}),
        json!({"type":"build_started","master_id":m,"time":t(1),"builder":format!("b{P}"),"build_id":1,
               "number":1,"slaves":[P],"changeset":format!("r{P}"),"branch":format!("br{P}"),
               "repository":format!("repo{P}"),"reason":format!("why{P}"),
               "properties":{P:{"value":P,"source":P},"platform":{"value":P,"source":"x"}},
               "changes":[{"revision":P,"author":P,"comments":P,"files":[P],"when":t(0),
                           "branch":P,"repository":P}]}),
        json!({"type":"step_started","master_id":m,"time":t(2),"build_id":1,"step":0,"name":P}),
        json!({"type":"log","master_id":m,"build_id":1,"step":0,"channel":"stdout","offset":0,"text":P}),
        json!({"type":"log","master_id":m,"build_id":1,"step":0,"channel":"stderr","offset":0,"text":P}),
        json!({"type":"step_finished","master_id":m,"time":t(3),"build_id":1,"step":0,"result":2,"text":P}),
        json!({"type":"property","master_id":m,"build_id":1,"name":format!("p{P}"),"value":{"k":P},"source":P}),
        json!({"type":"changeset","master_id":m,"build_id":1,"changeset":"0123456789abcdef0123456789abcdef01234567"}),
        json!({"type":"build_finished","master_id":m,"time":t(4),"build_id":1,"result":2}),
        json!({"type":"commit","master_id":m,"hash":"0123456789abcdef0123456789abcdef01234567",
               "repository_uri":P,"hash_abbrev":P,"subject":P,"author_name":P,"author_email":P,
               "author_date":t(0),"commiter_name":P,"commiter_email":P,"commiter_date":t(0)}),
    ];
    events.iter().map(|e| format!("{e}\n")).collect()
}
