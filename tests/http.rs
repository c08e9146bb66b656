//! The daemon's HTTP server beyond blobs: `/metrics` (checked by a real
//! OpenMetrics parser), the dashboard's key, cookie, headers, sections and
//! event stream, and the `[http]` settings with the old `blob.http_*` names.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{CurlResponse, StateDir, curl, stdout, wait_for};
use serde_json::Value;

const PATIENCE: Duration = Duration::from_secs(30);

fn http_url(state: &StateDir) -> String {
    state.daemon_info()["endpoints"]["http"].as_str().expect("endpoints.http").to_owned()
}

fn port_of(url: &str) -> u16 {
    let authority = url.strip_prefix("http://").unwrap().split('/').next().unwrap();
    authority.rsplit(':').next().unwrap().parse().unwrap()
}

/// The URL `hearth dashboard` prints (with the key).
fn dashboard_url(state: &StateDir) -> String {
    let out = state.run(&["dashboard", "--no-open"]);
    assert!(out.status.success(), "hearth dashboard: {}", common::stderr(&out));
    stdout(&out).trim().to_owned()
}

/// Exchanges the key for the session cookie; returns `name=value`.
fn session_cookie(state: &StateDir) -> String {
    let r = curl(&[&dashboard_url(state)]);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    let set = r.header("set-cookie").expect("a session cookie").to_owned();
    set.split(';').next().unwrap().to_owned()
}

fn get_with(cookie: &str, url: &str) -> CurlResponse {
    curl(&["-H", &format!("Cookie: {cookie}"), url])
}

/// The Python interpreter with `prometheus_client` (.ci/run installs it).
fn python() -> String {
    std::env::var("HEARTH_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Parses metrics text with the reference Python parser; returns the
/// families it found with their type and samples, or its error.
fn parse_metrics(text: &[u8], openmetrics: bool) -> Result<Value, String> {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as prom
text = sys.stdin.read()
parse = om if sys.argv[1] == "om" else prom
out = {}
for family in parse(text):
    out[family.name] = {"type": family.type, "unit": family.unit,
                        "samples": [[s.name, s.labels, s.value] for s in family.samples]}
print(json.dumps(out))
"#;
    let mut child = Command::new(python())
        .args(["-c", script, if openmetrics { "om" } else { "prom" }])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {} ({e}); .ci/run installs prometheus-client", python()))?;
    child.stdin.take().unwrap().write_all(text).unwrap();
    let out = common::output_within(child, Duration::from_secs(60), "the metrics parser");
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&out.stdout).expect("the parser prints JSON"))
}

fn sample(families: &Value, family: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families[family]["samples"].as_array()?.iter().find_map(|s| {
        let matches = s[0] == name && labels.iter().all(|(k, v)| s[1][*k] == *v);
        matches.then(|| s[2].as_f64()).flatten()
    })
}

#[test]
fn metrics_are_valid_openmetrics_and_count_what_happened() {
    let state = StateDir::new();
    let _daemon = state.start(&["--http-port", "0"]);
    assert!(state.run(&["run", "--", "true"]).status.success());
    let out = state.run(&["run", "--queue", "flaky", "--max-attempts", "1", "--", "false"]);
    assert!(!out.status.success());
    let url = format!("{}/metrics", http_url(&state));
    let blob = Command::new("sh")
        .args(["-c", "printf 'twelve bytes' | \"$0\" blob put -"])
        .arg(common::hearth_bin())
        .env("HEARTH_STATE_DIR", state.state_dir())
        .output()
        .unwrap();
    assert!(blob.status.success(), "{}", String::from_utf8_lossy(&blob.stderr));
    let set = state.run(&["sync", "set", "notes/metrics", "title", "\"scraped\""]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));

    let r = curl(&[&url]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/openmetrics-text; version=1.0.0; charset=utf-8"));
    assert!(r.body.ends_with(b"# EOF\n"));
    let families = parse_metrics(&r.body, true).unwrap_or_else(|e| panic!("not valid OpenMetrics: {e}"));
    let jobs = |queue, state| {
        sample(&families, "hearth_queue_jobs", "hearth_queue_jobs", &[("queue", queue), ("state", state)])
    };
    assert_eq!(jobs("default", "succeeded"), Some(1.0), "{}", families["hearth_queue_jobs"]);
    assert_eq!(jobs("flaky", "dead"), Some(1.0));
    let attempts = |queue, outcome| {
        let labels = [("queue", queue), ("outcome", outcome)];
        sample(
            &families,
            "hearth_queue_attempt_duration_seconds",
            "hearth_queue_attempt_duration_seconds_count",
            &labels,
        )
    };
    assert_eq!(attempts("default", "succeeded"), Some(1.0));
    assert_eq!(attempts("flaky", "failed"), Some(1.0));
    assert_eq!(families["hearth_queue_attempt_duration_seconds"]["type"], "histogram");
    assert_eq!(families["hearth_queue_attempt_duration_seconds"]["unit"], "seconds");
    let submits = [("channel", "queue"), ("type", "submit")];
    let timed = sample(&families, "hearth_request_duration_seconds", "hearth_request_duration_seconds_count", &submits);
    assert!(timed >= Some(2.0), "every submit is timed: {timed:?}");
    let never = [("channel", "pool"), ("type", "drain")];
    let zero = sample(&families, "hearth_request_duration_seconds", "hearth_request_duration_seconds_count", &never);
    assert_eq!(zero, Some(0.0), "types never used are there, at 0");
    let commits = sample(
        &families,
        "hearth_store_sync_duration_seconds",
        "hearth_store_sync_duration_seconds_count",
        &[("store", "queue")],
    );
    assert!(commits >= Some(4.0), "the queue's commits are timed: {commits:?}");
    let blob_syncs = sample(
        &families,
        "hearth_store_sync_duration_seconds",
        "hearth_store_sync_duration_seconds_count",
        &[("store", "blob")],
    );
    assert!(blob_syncs >= Some(1.0), "{blob_syncs:?}");
    assert!(sample(&families, "hearth_blob_put_bytes", "hearth_blob_put_bytes_total", &[]) >= Some(12.0));
    assert!(sample(&families, "hearth_blob_objects", "hearth_blob_objects", &[]) >= Some(1.0));
    assert_eq!(sample(&families, "hearth_health", "hearth_health", &[("state", "healthy")]), Some(1.0));
    assert!(sample(&families, "hearth_connections_accepted", "hearth_connections_accepted_total", &[]) >= Some(4.0));
    assert_eq!(families["hearth_connections_accepted"]["type"], "counter");
    // Per channel, whatever the channel: counted at the handshake.
    let opened = |channel| {
        let labels = [("channel", channel)];
        sample(&families, "hearth_channel_connections_opened", "hearth_channel_connections_opened_total", &labels)
    };
    assert!(opened("queue") >= Some(2.0), "{}", families["hearth_channel_connections_opened"]);
    assert!(opened("blob") >= Some(1.0));
    assert!(opened("sync") >= Some(1.0));
    assert_eq!(opened("pool"), Some(0.0), "a channel nobody opened is there, at 0");
    let open = sample(&families, "hearth_channel_connections", "hearth_channel_connections", &[("channel", "pool")]);
    assert_eq!(open, Some(0.0));
    assert!(sample(&families, "hearth_sync_rooms", "hearth_sync_rooms", &[]) >= Some(1.0));
    assert!(sample(&families, "hearth_sync_writes", "hearth_sync_writes_total", &[]) >= Some(1.0));
    assert_eq!(
        sample(&families, "hearth_build", "hearth_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        Some(1.0)
    );
    assert_eq!(sample(&families, "hearth_pool_target", "hearth_pool_target", &[("pool", "venv")]), Some(0.0));

    // The Prometheus text format, for a scraper that asks only for it.
    let plain = curl(&["-H", "Accept: text/plain;version=0.0.4", &url]);
    assert_eq!(plain.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let families = parse_metrics(&plain.body, false).unwrap_or_else(|e| panic!("not valid Prometheus text: {e}"));
    assert!(families.get("hearth_queue_jobs").is_some());
}

#[test]
fn malformed_metrics_requests_get_4xx() {
    let state = StateDir::new();
    let _daemon = state.start(&["--http-port", "0"]);
    let url = format!("{}/metrics", http_url(&state));
    assert_eq!(curl(&["-X", "POST", &url]).status, 405);
    assert_eq!(curl(&["-X", "POST", &url]).header("allow"), Some("GET, HEAD"));
    assert_eq!(curl(&["-X", "DELETE", &url]).status, 405);
    assert_eq!(curl(&[&format!("{url}?name[]=x")]).status, 400);
    assert_eq!(curl(&["-H", "Accept: application/json", &url]).status, 406);
    let port = port_of(&url).to_string();
    let with_body = raw(
        &port,
        "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    );
    assert!(with_body.starts_with("HTTP/1.1 400"), "{with_body}");
    assert_eq!(curl(&[&format!("{url}/extra")]).status, 404);
    let head = raw(&port, "HEAD /metrics HTTP/1.1\r\nHost: 127.0.0.1:PORT\r\nConnection: close\r\n\r\n");
    assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "HEAD: headers only: {head}");
    // The Host check stands in front of every route.
    let foreign = curl(&["-H", "Host: evil.example", &url]);
    assert_eq!(foreign.status, 403);
    let rebound = curl(&["-H", &format!("Host: attacker.example:{port}"), &url]);
    assert_eq!(rebound.status, 403);
}

/// Sends a raw request (with `PORT` in it replaced) and returns the whole answer.
fn raw(port: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.replace("PORT", port).as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn the_dashboard_needs_its_key_and_then_a_cookie_only_this_daemon_gave() {
    let state = StateDir::new();
    let mut daemon = state.start(&["--http-port", "0"]);
    let info = state.daemon_info();
    let page = info["endpoints"]["dashboard"].as_str().unwrap().to_owned();
    let secret = info["dashboard_secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 64, "32 random bytes, hex");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(state.paths.info_file()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the key is kept where only its user can read it");

    // Without the key or the cookie, every dashboard path is refused.
    for path in ["", "app.js", "app.css", "api/sections", "api/queue", "events", "nope"] {
        let r = curl(&[&format!("{page}{path}")]);
        assert_eq!(r.status, 403, "{path}");
        assert!(r.header("content-security-policy").is_some(), "{path}");
    }
    let wrong = curl(&[&format!("{page}?token={}", "0".repeat(64))]);
    assert_eq!(wrong.status, 403);
    assert!(wrong.header("set-cookie").is_none());
    let elsewhere = curl(&[&format!("{page}api/sections?token={secret}")]);
    assert_eq!(elsewhere.status, 403, "the key is only taken at the dashboard's root");

    // The key buys a session cookie that scripts cannot read and other
    // sites' requests do not carry, and a page that moves on without it.
    let url = dashboard_url(&state);
    assert_eq!(url, format!("{page}?token={secret}"));
    let entered = curl(&[&url]);
    assert_eq!(entered.status, 200);
    let set = entered.header("set-cookie").unwrap();
    let port = port_of(&page);
    assert!(set.starts_with(&format!("hearth_{port}=")), "{set}");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/dashboard/"] {
        assert!(set.split("; ").any(|a| a == attribute), "{attribute} in {set}");
    }
    assert!(!set.contains(&secret), "the cookie is not the key");
    assert!(String::from_utf8_lossy(&entered.body).contains("url=/dashboard/"));

    let cookie = set.split(';').next().unwrap().to_owned();
    let index = get_with(&cookie, &page);
    assert_eq!(index.status, 200);
    assert_eq!(index.header("content-type"), Some("text/html; charset=utf-8"));
    let csp = index.header("content-security-policy").unwrap();
    for directive in ["default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    assert_eq!(index.header("x-frame-options"), Some("DENY"));
    assert_eq!(index.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(index.header("x-content-type-options"), Some("nosniff"));
    assert!(index.header("access-control-allow-origin").is_none());
    let html = String::from_utf8_lossy(&index.body);
    assert!(!html.contains("<script>") && !html.contains(" style="), "no inline code for the CSP to allow");
    assert_eq!(
        get_with(&cookie, &format!("{page}app.js")).header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    let forged = format!("hearth_{port}={}", "a".repeat(64));
    assert_eq!(get_with(&forged, &page).status, 403);
    assert_eq!(get_with(&format!("hearth_{port}={secret}"), &page).status, 403, "the key is not a session");
    assert_eq!(curl(&["-X", "POST", "-H", &format!("Cookie: {cookie}"), &page]).status, 405, "read-only");
    let rebound = curl(&["-H", &format!("Cookie: {cookie}"), "-H", "Host: evil.example", &page]);
    assert_eq!(rebound.status, 403, "the Host check stays");

    // A new start is a new key and a new session: the old cookie is refused.
    daemon.stop();
    let _daemon = state.start(&[]);
    assert_ne!(state.daemon_info()["dashboard_secret"].as_str().unwrap(), secret);
    let page = state.daemon_info()["endpoints"]["dashboard"].as_str().unwrap().to_owned();
    assert_eq!(get_with(&cookie, &page).status, 403);
}

#[test]
fn the_sections_show_what_clients_see() {
    let state = StateDir::new();
    let _daemon = state.start(&["--http-port", "0"]);
    let out = state.run(&["run", "--", "sh", "-c", "echo out-line; echo err-line >&2"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let cookie = session_cookie(&state);
    let page = state.daemon_info()["endpoints"]["dashboard"].as_str().unwrap().to_owned();
    let api = |path: &str| {
        let r = get_with(&cookie, &format!("{page}api/{path}"));
        (r.status, serde_json::from_slice::<Value>(&r.body).unwrap_or(Value::Null))
    };
    let (status, sections) = api("sections");
    assert_eq!(status, 200);
    assert_eq!(sections["sections"], serde_json::json!(["overview", "queue", "pools", "blobs"]));
    let (_, overview) = api("overview");
    assert_eq!(overview["status"]["pid"], state.daemon_info()["pid"]);
    assert_eq!(overview["status"]["health"]["state"], "healthy");
    let (_, queue) = api("queue");
    assert_eq!(queue["stats"]["states"]["succeeded"], 1);
    assert_eq!(queue["jobs"][0]["argv"][0], "sh");
    assert_eq!(queue["dead"], serde_json::json!([]));
    let id = queue["jobs"][0]["id"].as_u64().unwrap();
    let (status, job) = api(&format!("job/{id}"));
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["attempts"][0]["outcome"], "succeeded");
    assert!(job["stdout"]["text"].as_str().unwrap().contains("out-line"), "{job}");
    assert!(job["stderr"]["text"].as_str().unwrap().contains("err-line"), "{job}");
    assert_eq!(api("job/999999").0, 404);
    assert_eq!(api("job/x").0, 404);
    assert_eq!(api("nothing").0, 404);
    let (_, pools) = api("pools");
    assert_eq!(pools["pools"]["pools"][0]["name"], "venv");
    let (_, blobs) = api("blobs");
    assert_eq!(blobs["usage"]["count"], 0);
    // The dashboard's own connections are not clients.
    let (_, overview) = api("overview");
    assert_eq!(overview["status"]["connections"]["active"], 0);
}

/// An open event stream, read line by line.
struct Events {
    reader: BufReader<TcpStream>,
}

impl Events {
    fn open(state: &StateDir, cookie: &str, last_event_id: Option<&str>) -> (String, Events) {
        let port = port_of(&http_url(state));
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        let request = format!(
            "GET /dashboard/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: {cookie}\r\n\
             Accept: text/event-stream\r\n{resume}\r\n"
        );
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            head.push_str(&line);
            if line == "\r\n" || line.is_empty() {
                break;
            }
        }
        (head, Events { reader })
    }

    /// The next message: its fields, in order (comments skipped), or
    /// `None` when the stream ends.
    fn next(&mut self) -> Option<Vec<(String, String)>> {
        let mut fields = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches('\n');
            if line.is_empty() {
                if fields.is_empty() {
                    continue;
                }
                return Some(fields);
            }
            // Chunked transfer framing: a size line before each chunk.
            if line.bytes().all(|b| b.is_ascii_hexdigit() || b == b'\r') {
                continue;
            }
            let line = line.trim_end_matches('\r');
            if line.starts_with(':') {
                continue;
            }
            let (name, value) = line.split_once(": ").unwrap_or((line, ""));
            fields.push((name.to_owned(), value.to_owned()));
        }
    }

    /// The next event message (`id` and `data`), skipping `retry:` and others.
    fn next_event(&mut self) -> (u64, Value) {
        loop {
            let fields = self.next().expect("the stream goes on");
            let id = fields.iter().find(|(n, _)| n == "id");
            let data = fields.iter().find(|(n, _)| n == "data");
            if let (Some((_, id)), Some((_, data))) = (id, data) {
                return (id.parse().unwrap(), serde_json::from_str(data).unwrap());
            }
        }
    }
}

#[test]
fn events_stream_as_sse_and_resume_from_last_event_id() {
    let state = StateDir::new();
    let _daemon = state.start(&["--http-port", "0"]);
    let cookie = session_cookie(&state);
    let (head, mut events) = Events::open(&state, &cookie, None);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/event-stream"), "{head}");
    let first = events.next().unwrap();
    assert_eq!(first[0], ("retry".to_owned(), "2000".to_owned()), "{first:?}");

    assert!(state.run(&["run", "--", "true"]).status.success());
    let (seq, event) = events.next_event();
    assert_eq!(event["type"], "event");
    assert_eq!(event["seq"], seq, "the id is the event's sequence number");
    assert_eq!(event["kind"], "job_state");
    assert_eq!(event["to"], "queued");
    let mut last = seq;
    while last < seq + 2 {
        let (next, event) = events.next_event();
        assert_eq!(next, last + 1, "in order, none missing");
        assert_eq!(event["kind"], "job_state");
        last = next;
    }
    drop(events);

    // The browser reconnects with the last id it saw: what it missed comes first.
    assert!(state.run(&["run", "--", "true"]).status.success());
    let (head, mut resumed) = Events::open(&state, &cookie, Some(&seq.to_string()));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (replayed, _) = resumed.next_event();
    assert_eq!(replayed, seq + 1, "resumed right after Last-Event-ID");

    let (head, _) = Events::open(&state, &cookie, Some("not-a-number"));
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    let (head, _) = Events::open(&state, "hearth_1=nope", None);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[test]
fn event_streams_are_capped_and_the_cap_frees_up() {
    let state = StateDir::new();
    state.write_config("[http]\nmax_event_streams = 2\n");
    let _daemon = state.start(&["--http-port", "0"]);
    let cookie = session_cookie(&state);
    let (a, _one) = Events::open(&state, &cookie, None);
    let (b, two) = Events::open(&state, &cookie, None);
    assert!(a.starts_with("HTTP/1.1 200") && b.starts_with("HTTP/1.1 200"));
    let (c, _) = Events::open(&state, &cookie, None);
    assert!(c.starts_with("HTTP/1.1 503"), "{c}");
    assert!(c.to_ascii_lowercase().contains("retry-after: 10"), "{c}");
    drop(two);
    // The server notices the closed stream at its next write (an event).
    let freed = wait_for(PATIENCE, || {
        let _ = state.run(&["queue", "submit", "--", "true"]);
        Events::open(&state, &cookie, None).0.starts_with("HTTP/1.1 200")
    });
    assert!(freed, "a closed stream gives its place back");
}

#[test]
fn the_http_section_and_the_old_blob_keys() {
    let state = StateDir::new();
    state.write_config("[blob]\nhttp_port = 0\nhttp_header_timeout = \"1s\"\n");
    let daemon = state.start(&[]);
    let log = || std::fs::read_to_string(&daemon.log).unwrap_or_default();
    assert!(wait_for(PATIENCE, || log().contains("blob.http_port is deprecated")), "{}", log());
    assert!(log().contains("blob.http_header_timeout is deprecated"), "{}", log());
    let url = http_url(&state);
    assert_eq!(state.daemon_info()["endpoints"]["blob_http"].as_str(), Some(url.as_str()), "blobs keep their URL");
    // The old header timeout is the server's: a client that never finishes
    // its headers is closed after a second.
    let mut stream = TcpStream::connect(("127.0.0.1", port_of(&url))).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(b"GET /metr").unwrap();
    let started = Instant::now();
    let _ = stream.read_to_end(&mut Vec::new());
    assert!(started.elapsed() < Duration::from_secs(10), "closed by http.header_timeout");
    drop(daemon);

    let state = StateDir::new();
    state.write_config("[http]\nmetrics = false\ndashboard = false\n");
    let _daemon = state.start(&["--http-port", "0"]);
    let info = state.daemon_info();
    assert!(info["endpoints"].get("metrics").is_none() && info["endpoints"].get("dashboard").is_none());
    assert!(info.get("dashboard_secret").is_none());
    let url = http_url(&state);
    assert_eq!(curl(&[&format!("{url}/metrics")]).status, 404);
    assert_eq!(curl(&[&format!("{url}/dashboard/")]).status, 404);
    let out = state.run(&["--json", "dashboard", "--no-open"]);
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "dashboard_unavailable");

    let state = StateDir::new();
    state.write_config("[http]\nenabled = false\n");
    let _daemon = state.start(&[]);
    let info = state.daemon_info();
    assert!(info["endpoints"].get("http").is_none() && info["endpoints"].get("blob_http").is_none(), "{info}");
    let status: Value = serde_json::from_slice(&state.run(&["--json", "status"]).stdout).unwrap();
    assert_eq!(status["health"]["state"], "healthy", "turned off is not a failure");
}

#[test]
fn a_taken_port_makes_the_server_unavailable_and_says_so() {
    let holder = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    let state = StateDir::new();
    let _daemon = state.start(&["--http-port", &port]);
    let status: Value = serde_json::from_slice(&state.run(&["--json", "status"]).stdout).unwrap();
    let codes: Vec<&str> =
        status["health"]["reasons"].as_array().unwrap().iter().map(|r| r["code"].as_str().unwrap()).collect();
    assert!(codes.contains(&"http_unavailable"), "{status}");
    assert!(codes.contains(&"blob_http_unavailable"), "{status}");
    assert_eq!(status["health"]["state"], "degraded");
    assert!(state.daemon_info()["endpoints"].get("http").is_none());
}

#[test]
fn pool_counters_and_build_times_survive_a_restart() {
    let state = StateDir::new();
    state.write_config("[pool.quick]\ncreate = [\"sh\", \"-c\", \"mkdir -p {path}/work\"]\nsize = 1\n");
    let mut daemon = state.start(&["--http-port", "0"]);
    let metrics = |state: &StateDir| {
        let r = curl(&[&format!("{}/metrics", http_url(state))]);
        parse_metrics(&r.body, true).unwrap()
    };
    let ready = || {
        sample(
            &metrics(&state),
            "hearth_pool_resources",
            "hearth_pool_resources",
            &[("pool", "quick"), ("state", "ready")],
        )
    };
    assert!(wait_for(PATIENCE, || ready() == Some(1.0)), "the pool warms up");
    let out = state.run(&["--json", "pool", "take", "quick"]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let m = metrics(&state);
    let warm = sample(&m, "hearth_pool_warm_takes", "hearth_pool_warm_takes_total", &[("pool", "quick")]);
    assert_eq!(warm, Some(1.0));
    assert_eq!(sample(&m, "hearth_pool_warm_hit_ratio", "hearth_pool_warm_hit_ratio", &[("pool", "quick")]), Some(1.0));
    let builds = sample(
        &m,
        "hearth_pool_build_duration_seconds",
        "hearth_pool_build_duration_seconds_count",
        &[("pool", "quick")],
    );
    assert!(builds >= Some(1.0), "{builds:?}");
    daemon.stop();

    let _daemon = state.start(&["--http-port", "0"]);
    let m = metrics(&state);
    assert_eq!(sample(&m, "hearth_pool_takes", "hearth_pool_takes_total", &[("pool", "quick")]), Some(1.0), "kept");
    assert_eq!(sample(&m, "hearth_pool_warm_takes", "hearth_pool_warm_takes_total", &[("pool", "quick")]), Some(1.0));
    let kept = sample(
        &m,
        "hearth_pool_build_duration_seconds",
        "hearth_pool_build_duration_seconds_count",
        &[("pool", "quick")],
    );
    assert!(kept >= builds, "build times are kept too: {kept:?} after {builds:?}");
}
