//! The blob HTTP read server through the real `curl` (and raw TCP for what
//! curl will not send), and the `hearth blob` CLI end to end.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{CurlResponse, StateDir, curl, stderr, stdout};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SECRET: &[u8] = b"TOP-SECRET-OUTSIDE-THE-STORE";

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

fn json_of(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "hearth failed: {}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(out)))
}

/// Stores `data` through the CLI; returns its hash.
fn put(state: &StateDir, data: &[u8], extra: &[&str]) -> String {
    let path = state.dir.path().join(format!("in-{}", sha256_hex(data)));
    std::fs::write(&path, data).unwrap();
    let mut args = vec!["--json", "blob", "put", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    json_of(&state.run(&args))["hash"].as_str().unwrap().to_owned()
}

fn port_of(url: &str) -> u16 {
    let authority = url.strip_prefix("http://").unwrap().split('/').next().unwrap();
    authority.rsplit(':').next().unwrap().parse().unwrap()
}

/// Sends raw request bytes over TCP and returns the whole answer as text.
fn raw_http(port: u16, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn assert_blob_headers(r: &CurlResponse, hash: &str, len: usize) {
    assert_eq!(r.header("etag"), Some(format!("\"{hash}\"").as_str()));
    assert_eq!(r.header("cache-control"), Some("public, max-age=31536000, immutable"));
    assert_eq!(r.header("accept-ranges"), Some("bytes"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.header("content-length"), Some(len.to_string().as_str()));
    assert!(r.headers.iter().all(|(n, _)| !n.starts_with("access-control-")), "no CORS by default: {:?}", r.headers);
}

#[test]
fn get_head_ranges_and_etags() {
    let state = StateDir::new();
    let _daemon = state.start(&["--blob-http-port", "0"]);
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
    let hash = put(&state, &data, &["--media-type", "image/png"]);
    let url = format!("{}/blob/{hash}", state.blob_url());
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");

    let r = curl(&["-I", &url]);
    assert_eq!(r.status, 200);
    assert_blob_headers(&r, &hash, 1000);
    assert_eq!(r.header("content-type"), Some("image/png"));
    let head = raw_http(
        port_of(&url),
        format!("HEAD /blob/{hash} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n", port_of(&url))
            .as_bytes(),
    );
    assert!(head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"), "HEAD sends no body: {head:?}");

    let r = curl(&[&url]);
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data);

    let range = |spec: &str| curl(&["-H", &format!("Range: bytes={spec}"), &url]);
    let r = range("0-0");
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 0-0/1000")));
    assert_eq!(r.body, &data[..1]);
    assert_eq!(r.header("content-length"), Some("1"));
    let r = range("999-999");
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 999-999/1000")));
    assert_eq!(r.body, &data[999..]);
    let r = range("-10");
    assert_eq!((r.status, r.header("content-range")), (206, Some("bytes 990-999/1000")));
    assert_eq!(r.body, &data[990..]);
    let r = range("100-");
    assert_eq!(r.body, &data[100..]);
    let r = range("1000-");
    assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */1000")));
    let r = range("5000-6000");
    assert_eq!(r.status, 416);

    let r = curl(&["-H", &format!("If-None-Match: \"{hash}\""), &url]);
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = curl(&["-X", "POST", &url]);
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));

    // A stored text/html blob is served as inert bytes.
    let html = b"<script>alert(document.domain)</script>";
    let hash = put(&state, html, &["--media-type", "text/html"]);
    let r = curl(&[&format!("{}/blob/{hash}", state.blob_url())]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(r.body, html);
    // An empty blob: 200 with no body, and any range is unsatisfiable.
    let empty = put(&state, b"", &[]);
    let r = curl(&[&format!("{}/blob/{empty}", state.blob_url())]);
    assert_eq!((r.status, r.header("content-length")), (200, Some("0")));
    let r = curl(&["-r", "0-0", &format!("{}/blob/{empty}", state.blob_url())]);
    assert_eq!((r.status, r.header("content-range")), (416, Some("bytes */0")));
}

#[test]
fn foreign_hosts_and_path_attacks_get_4xx_and_nothing_outside_the_store() {
    let state = StateDir::new();
    let _daemon = state.start(&["--blob-http-port", "0"]);
    let hash = put(&state, b"inside the store", &[]);
    let hex = hash.strip_prefix("sha256:").unwrap().to_owned();
    // Files outside the store that an attack would love to read: one in the
    // state directory, one named like a blob but outside blobs/sha256.
    std::fs::write(state.state_dir().join("secret.txt"), SECRET).unwrap();
    std::fs::write(state.state_dir().join("blobs").join(&hex[..63]), SECRET).unwrap();
    std::fs::write(state.state_dir().join(format!("blobs/sha256/{}/{hex}.json.bak", &hex[..2])), SECRET).unwrap();
    let base = state.blob_url();
    let port = port_of(&base);

    // DNS rebinding: a foreign Host is refused even for a good path.
    let good = format!("{base}/blob/{hash}");
    for host in [format!("evil.example:{port}"), "127.0.0.1".into(), format!("localhost.evil.example:{port}")] {
        let r = curl(&["-H", &format!("Host: {host}"), &good]);
        assert_eq!(r.status, 403, "Host: {host}");
    }
    for host in [format!("localhost:{port}"), format!("LOCALHOST:{port}"), format!("[::1]:{port}")] {
        assert_eq!(curl(&["-H", &format!("Host: {host}"), &good]).status, 200, "Host: {host}");
    }

    let upper = hex.to_uppercase();
    let encoded_hex: String = hex.bytes().map(|b| format!("%{b:02x}")).collect();
    let attacks = [
        "/blob/../secret.txt".to_owned(),
        "/blob/../../secret.txt".to_owned(),
        "/../secret.txt".to_owned(),
        "/secret.txt".to_owned(),
        format!("/blob/sha256:{hex}/../../../secret.txt"),
        "/blob/%2e%2e/secret.txt".to_owned(),
        "/blob/%2e%2e%2fsecret.txt".to_owned(),
        "/blob/..%2f..%2fsecret.txt".to_owned(),
        format!("/blob/sha256%3A{hex}"),
        format!("/blob/sha256:{encoded_hex}"),
        format!("/blob/sha256:{upper}"),
        format!("/blob/SHA256:{hex}"),
        format!("/blob/sha256:{}", &hex[..63]),
        format!("/blob/sha256:{hex}0"),
        format!("/blob/sha256:{hex}%00"),
        format!("/blob/sha256:{hex}.json"),
        format!("/blob/sha256:{hex}.json.bak"),
        format!("/blob/sha256:{}%00.json", &hex[..63]),
        format!("/blob/sha256:..%5C..%5C{}", &hex[6..]),
        format!("/blob/sha256:{hex}\\..\\secret.txt"),
        format!("/blob/{hex}"),
        "/blob/".to_owned(),
        "/".to_owned(),
    ];
    for path in &attacks {
        let r = curl(&["--path-as-is", "-g", &format!("{base}{path}")]);
        assert!((400..500).contains(&r.status), "{path}: {}", r.status);
        assert!(!r.body.windows(SECRET.len()).any(|w| w == SECRET), "{path} leaked the secret");
    }
    // What curl will not send: a raw NUL, a raw backslash, an absolute-form
    // target naming another host.
    let close = "Connection: close\r\n\r\n";
    let requests = [
        format!("GET /blob/sha256:{}\0 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}", &hex[..63]),
        format!("GET /blob/..\\..\\secret.txt HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}"),
        format!("GET http://evil.example/blob/{hash} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{close}"),
        format!("GET /blob/{hash} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nHost: evil.example\r\n{close}"),
        format!("GET /blob/{hash} HTTP/1.1\r\n{close}"),
    ];
    for request in &requests {
        let answer = raw_http(port, request.as_bytes());
        let status: u16 = answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert!((400..500).contains(&status), "{request:?} → {answer:?}");
        assert!(!answer.contains(std::str::from_utf8(SECRET).unwrap()), "{request:?} leaked the secret");
    }
    assert_eq!(curl(&[&good]).body, b"inside the store");
}

#[test]
fn the_port_is_stable_across_restarts_and_headers_time_out() {
    let state = StateDir::new();
    state.write_config("[blob]\nhttp_header_timeout = \"1s\"\n");
    let mut daemon = state.start(&[]);
    let first = state.blob_url();
    daemon.stop();
    let _daemon = state.start(&[]);
    assert_eq!(state.blob_url(), first, "the port of the previous run is reused when free");

    // A client that never finishes its headers is disconnected.
    let mut stream = TcpStream::connect(("127.0.0.1", port_of(&first))).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(b"GET /blob/").unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = stream.read_to_end(&mut buf);
    assert!(read.is_ok(), "the server closes the connection ({read:?})");
    assert!(started.elapsed() < Duration::from_secs(14), "closed by the header timeout, not the test's");
}

#[test]
fn cli_end_to_end() {
    let state = StateDir::new();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let file = state.dir.path().join("photo.png");
    std::fs::write(&file, &data).unwrap();

    // The blob commands start the daemon.
    let out = state.run(&["blob", "put", file.to_str().unwrap(), "--pin"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let hash = stdout(&out).trim().to_owned();
    assert_eq!(hash, format!("sha256:{}", sha256_hex(&data)));
    let again = json_of(&state.run(&["--json", "blob", "put", file.to_str().unwrap()]));
    assert_eq!((again["hash"].as_str(), again["existed"].as_bool()), (Some(hash.as_str()), Some(true)));

    let info = json_of(&state.run(&["--json", "blob", "stat", &hash]));
    assert_eq!(info["size"], 300_000);
    assert_eq!(info["media_type"], "image/png", "guessed from the extension");
    assert_eq!(info["name"], "photo.png");
    assert_eq!(info["pinned"], true);

    let out = state.dir.path().join("copy.png");
    let got = json_of(&state.run(&["--json", "blob", "get", &hash, "-o", out.to_str().unwrap()]));
    assert_eq!((got["size"].as_u64(), got["path"].as_str()), (Some(300_000), out.to_str()));
    assert_eq!(std::fs::read(&out).unwrap(), data);
    // Bare hex in upper case is accepted on the command line.
    let got = state.run(&["blob", "get", &hash[7..].to_uppercase()]);
    assert_eq!(got.stdout, data);

    let url = stdout(&state.run(&["blob", "url", &hash])).trim().to_owned();
    assert_eq!(url, format!("{}/blob/{hash}", state.blob_url()));
    assert_eq!(curl(&[&url]).body, data);
    let status = json_of(&state.run(&["--json", "status"]));
    assert_eq!(status["services"]["blob"]["count"], 1);
    assert_eq!(status["services"]["blob"]["http_url"], state.blob_url());

    let mut stdin_put = state
        .hearth()
        .args(["--json", "blob", "put", "-", "--name", "from stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    stdin_put.stdin.take().unwrap().write_all(b"piped").unwrap();
    let piped = json_of(&common::output_within(stdin_put, common::COMMAND_LIMIT, "blob put -"));
    let piped_hash = piped["hash"].as_str().unwrap().to_owned();

    let listed = json_of(&state.run(&["--json", "blob", "ls"]));
    let hashes: Vec<&str> = listed.as_array().unwrap().iter().map(|b| b["hash"].as_str().unwrap()).collect();
    assert_eq!(hashes.len(), 2);
    assert!(hashes.windows(2).all(|w| w[0] < w[1]), "hash order");
    assert!(stdout(&state.run(&["blob", "ls"])).contains("from stdin"));

    let out = state.run(&["--json", "blob", "rm", &hash]);
    assert!(!out.status.success());
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "blob_pinned");
    assert!(state.run(&["blob", "unpin", &hash]).status.success());
    let gc = json_of(&state.run(&["--json", "blob", "gc", "--target", "0"]));
    assert_eq!((gc["removed"].as_u64(), gc["usage"]["count"].as_u64()), (Some(2), Some(0)));
    let out = state.run(&["blob", "get", &piped_hash]);
    assert!(stderr(&out).contains("blob_not_found"), "{}", stderr(&out));
    let out = state.run(&["blob", "stat", "not-a-hash"]);
    assert!(stderr(&out).contains("invalid_hash"), "{}", stderr(&out));
    assert!(state.run(&["daemon", "stop"]).status.success());
}

#[test]
fn the_http_server_can_be_disabled_and_the_channel_too() {
    let state = StateDir::new();
    let mut daemon = state.start(&["--blob-http", "false"]);
    assert!(state.daemon_info()["endpoints"].get("blob_http").is_none());
    let hash = put(&state, b"no http", &[]);
    let out = state.run(&["--json", "blob", "url", &hash]);
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "http_unavailable");
    let status = json_of(&state.run(&["--json", "status"]));
    assert_eq!(status["health"]["state"], "healthy", "disabled is not a failure");
    daemon.stop();

    state.write_config("[blob]\nenabled = false\n");
    let _daemon = state.start(&[]);
    let out = state.run(&["--json", "blob", "ls"]);
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "channel_unavailable");
    assert!(err["error"]["message"].as_str().unwrap().contains("blob.enabled = false"), "{err}");
    let status = json_of(&state.run(&["--json", "status"]));
    assert!(!status["channels"].as_array().unwrap().contains(&serde_json::json!("blob")));
    assert!(status["services"].get("blob").is_none());
}

#[test]
fn a_store_that_cannot_open_leaves_the_other_channels_serving() {
    let state = StateDir::new();
    state.write_config("");
    std::fs::write(state.state_dir().join("blobs"), b"not a directory").unwrap();
    let _daemon = state.start(&[]);
    let status = json_of(&state.run(&["--json", "status"]));
    assert_eq!(status["health"]["state"], "unhealthy");
    assert_eq!(status["health"]["reasons"][0]["code"], "blob_unavailable");
    let out = state.run(&["--json", "blob", "ls"]);
    let err: Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["error"]["code"], "channel_unavailable");
    assert!(err["error"]["message"].as_str().unwrap().contains("blob store"), "{err}");
}

/// The local addresses with a listening TCP socket on `port`, from the kernel's tables.
fn listening_addresses(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; state 0A is LISTEN.
            let (Some(local), Some(state)) = (fields.get(1), fields.get(3)) else { continue };
            let Some((ip, p)) = local.split_once(':') else { continue };
            if *state == "0A" && u16::from_str_radix(p, 16) == Ok(port) {
                found.push(ip.to_owned());
            }
        }
    }
    found
}

#[test]
fn the_http_server_listens_on_loopback_only() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let url = state.blob_url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    // 127.0.0.1 as the kernel writes it (little-endian hex), and nothing else:
    // not 0.0.0.0, not :: (which would take IPv4 too on a dual-stack socket).
    assert_eq!(listening_addresses(port_of(&url)), ["0100007F"], "{url}");
}

/// The status code of a raw HTTP answer.
fn status_of(answer: &str) -> u16 {
    answer.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

#[test]
fn a_request_head_over_16_kib_or_100_fields_gets_431() {
    let state = StateDir::new();
    let _daemon = state.start(&["--blob-http-port", "0"]);
    let hash = put(&state, b"a small blob", &[]);
    let port = port_of(&state.blob_url());
    let start = format!("GET /blob/{hash} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n");
    let end = "Connection: close\r\n\r\n";
    // A head (request line, headers, blank line) of exactly `size` bytes.
    let head = |size: usize| {
        let pad = size - start.len() - "X-Pad: \r\n".len() - end.len();
        format!("{start}X-Pad: {}\r\n{end}", "a".repeat(pad))
    };
    assert_eq!(head(16 * 1024).len(), 16 * 1024);
    assert!(raw_http(port, head(16 * 1024).as_bytes()).starts_with("HTTP/1.1 200 "), "16 KiB is within the limit");
    let answer = raw_http(port, head(16 * 1024 + 100).as_bytes());
    assert_eq!(status_of(&answer), 431, "{answer}");
    let answer = raw_http(port, head(64 * 1024).as_bytes());
    assert_eq!(status_of(&answer), 431, "{answer}");
    // 100 header fields in all are fine; 101 are not.
    let fields = |n: usize| format!("{start}{}{end}", (0..n - 2).map(|i| format!("X-{i}: 1\r\n")).collect::<String>());
    assert_eq!(status_of(&raw_http(port, fields(100).as_bytes())), 200);
    assert_eq!(status_of(&raw_http(port, fields(101).as_bytes())), 431);
    // Only that connection: the server serves on.
    assert_eq!(curl(&[&format!("{}/blob/{hash}", state.blob_url())]).body, b"a small blob");
}

#[test]
fn absolute_form_targets_are_served_only_when_they_name_this_server() {
    let state = StateDir::new();
    let _daemon = state.start(&["--blob-http-port", "0"]);
    let hash = put(&state, b"absolute", &[]);
    let port = port_of(&state.blob_url());
    let get = |target: &str, host: Option<&str>| {
        let host = host.map(|h| format!("Host: {h}\r\n")).unwrap_or_default();
        status_of(&raw_http(port, format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").as_bytes()))
    };
    let here = format!("127.0.0.1:{port}");
    // Named by any loopback name with the port, in any case and scheme; the
    // Host (which must be there, and loopback too) need not be the same name.
    for authority in [here.clone(), format!("localhost:{port}"), format!("LocalHost:{port}"), format!("[::1]:{port}")] {
        assert_eq!(get(&format!("http://{authority}/blob/{hash}"), Some(&here)), 200, "{authority}");
    }
    assert_eq!(get(&format!("https://{here}/blob/{hash}"), Some(&format!("localhost:{port}"))), 200);
    // Anything else is 403: another host, no port, user info, a foreign or missing Host.
    for authority in
        ["evil.example".to_owned(), format!("evil.example:{port}"), "127.0.0.1".into(), format!("u@{here}")]
    {
        assert_eq!(get(&format!("http://{authority}/blob/{hash}"), Some(&here)), 403, "{authority}");
    }
    assert_eq!(get(&format!("http://{here}/blob/{hash}"), Some("evil.example")), 403);
    assert_eq!(get(&format!("http://{here}/blob/{hash}"), None), 403);
}

#[test]
fn host_names_match_without_regard_to_case_and_nothing_else() {
    let state = StateDir::new();
    let _daemon = state.start(&["--blob-http-port", "0"]);
    let hash = put(&state, b"hosts", &[]);
    let url = format!("{}/blob/{hash}", state.blob_url());
    let port = port_of(&url);
    let status = |host: &str| curl(&["-H", &format!("Host: {host}"), &url]).status;
    for host in [format!("LOCALHOST:{port}"), format!("LocalHost:{port}"), format!("localhost:{port}")] {
        assert_eq!(status(&host), 200, "Host: {host}");
    }
    // Other spellings of loopback, a trailing dot, another port, no port: 403.
    for host in [
        format!("127.1:{port}"),
        format!("[0:0:0:0:0:0:0:1]:{port}"),
        format!("localhost.:{port}"),
        format!("localhost:{}", port.wrapping_add(1)),
        "localhost".to_owned(),
    ] {
        assert_eq!(status(&host), 403, "Host: {host}");
    }
}
