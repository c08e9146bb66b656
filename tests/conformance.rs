//! The Rust client's runner of the language-neutral conformance suite
//! (`tests/conformance/*.json`, format in its README), and the check that
//! every request, response and error code of the protocol has a case.
//!
//! Cases go through the crate's own code: `Client::connect_with` for the
//! ordinary handshake, `Handshake` and `HandshakeReply` for the others,
//! `Connection` for every frame.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::StateDir;
use hearth::client::{Client, ClientError, ConnectOptions};
use hearth::connection::Connection;
use hearth::protocol::blob::{BlobChannel, BlobRequest};
use hearth::protocol::error::ErrorCode;
use hearth::protocol::frame::{DEFAULT_MAX_FRAME, FrameError};
use hearth::protocol::handshake::{Accepted, Channel, Handshake, HandshakeReply};
use hearth::protocol::pool::{PoolChannel, PoolRequest};
use hearth::protocol::process::{ProcessChannel, ProcessRequest};
use hearth::protocol::queue::{Base64, QueueChannel, QueueRequest};
use hearth::protocol::status::{StatusChannel, StatusRequest};
use hearth::protocol::{ChannelProtocol, PROTOCOL_VERSION, Request};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::UnixStream;

fn suite_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance")
}

fn load(name: &str) -> Value {
    let path = suite_dir().join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(suite_dir())
        .expect("tests/conformance")
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".json"))
        .collect();
    names.sort();
    names
}

type Captures = BTreeMap<String, Value>;

/// The keys that make an object pattern a matcher rather than a shape.
const MATCHERS: [&str; 3] = ["$capture", "$one_of", "$contains"];

// --- patterns ---------------------------------------------------------------

fn type_matcher(name: &str, value: &Value) -> Option<bool> {
    Some(match name {
        "$any" => true,
        "$string" => value.is_string(),
        "$int" => value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0),
        "$number" => value.is_number(),
        "$bool" => value.is_boolean(),
        "$array" => value.is_array(),
        "$object" => value.is_object(),
        "$null" => value.is_null(),
        _ => return None,
    })
}

/// Matches `value` against `pattern` (README "Patterns"); the error names the path.
fn matches(pattern: &Value, value: &Value, caps: &mut Captures, path: &str) -> Result<(), String> {
    match pattern {
        Value::String(p) if p.starts_with("$$") => literal(&Value::String(p[1..].to_owned()), value, path),
        Value::String(p) if p.starts_with('$') => match type_matcher(p, value) {
            Some(true) => Ok(()),
            Some(false) => Err(format!("{path}: expected {p}, got {value}")),
            None if p == "$absent" => Err(format!("{path}: $absent is allowed only as an object value")),
            None => Err(format!("{path}: unknown matcher {p:?} in the case file")),
        },
        Value::Object(map) if MATCHERS.iter().any(|k| map.contains_key(*k)) => matcher(map, value, caps, path),
        Value::Object(map) => {
            let Some(object) = value.as_object() else {
                return Err(format!("{path}: expected an object, got {value}"));
            };
            for (key, wanted) in map {
                let here = format!("{path}.{key}");
                match (wanted.as_str(), object.get(key)) {
                    (Some("$absent"), None) => {}
                    (Some("$absent"), Some(got)) => return Err(format!("{here}: expected absent, got {got}")),
                    (_, None) => return Err(format!("{here}: missing in {value}")),
                    (_, Some(got)) => matches(wanted, got, caps, &here)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => {
            let Some(array) = value.as_array().filter(|a| a.len() == items.len()) else {
                return Err(format!("{path}: expected an array of {}, got {value}", items.len()));
            };
            for (i, (p, v)) in items.iter().zip(array).enumerate() {
                matches(p, v, caps, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => literal(pattern, value, path),
    }
}

fn literal(pattern: &Value, value: &Value, path: &str) -> Result<(), String> {
    let equal = match (pattern, value) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64() && (a.as_i128() == b.as_i128()),
        _ => pattern == value,
    };
    if equal { Ok(()) } else { Err(format!("{path}: expected {pattern}, got {value}")) }
}

fn matcher(map: &Map<String, Value>, value: &Value, caps: &mut Captures, path: &str) -> Result<(), String> {
    if let Some(name) = map.get("$capture") {
        if let Some(inner) = map.get("match") {
            matches(inner, value, caps, path)?;
        }
        caps.insert(name.as_str().ok_or("$capture takes a name")?.to_owned(), value.clone());
        return Ok(());
    }
    if let Some(options) = map.get("$one_of").and_then(Value::as_array) {
        for option in options {
            let mut trial = caps.clone();
            if matches(option, value, &mut trial, path).is_ok() {
                *caps = trial;
                return Ok(());
            }
        }
        return Err(format!("{path}: {value} matches none of {}", Value::Array(options.clone())));
    }
    if let Some(wanted) = map.get("$contains").and_then(Value::as_array) {
        let Some(array) = value.as_array() else { return Err(format!("{path}: expected an array, got {value}")) };
        for (i, pattern) in wanted.iter().enumerate() {
            let hit = array.iter().find_map(|element| {
                let mut trial = caps.clone();
                matches(pattern, element, &mut trial, path).ok().map(|()| trial)
            });
            match hit {
                Some(trial) => *caps = trial,
                None => return Err(format!("{path}: no element matches $contains[{i}] {pattern} in {value}")),
            }
        }
        return Ok(());
    }
    Err(format!("{path}: unknown matcher object {}", Value::Object(map.clone())))
}

/// `"${name}"` becomes the captured value; `${name}` inside a string its text.
fn substitute(value: &Value, caps: &Captures) -> Result<Value, String> {
    Ok(match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("${").and_then(|r| r.strip_suffix('}')).filter(|n| !n.contains('$')) {
                return caps.get(name).cloned().ok_or_else(|| format!("${{{name}}} was never captured"));
            }
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("${") {
                let Some(len) = rest[start..].find('}') else { break };
                let name = &rest[start + 2..start + len];
                let captured = caps.get(name).ok_or_else(|| format!("${{{name}}} was never captured"))?;
                out.push_str(&rest[..start]);
                match captured {
                    Value::String(text) => out.push_str(text),
                    other => out.push_str(&other.to_string()),
                }
                rest = &rest[start + len + 1..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, caps)).collect::<Result<_, _>>()?),
        Value::Object(map) => Value::Object(
            map.iter().map(|(k, v)| Ok((k.clone(), substitute(v, caps)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

// --- running ----------------------------------------------------------------

fn b64(text: &Value) -> Result<Vec<u8>, String> {
    Base64::decode(text.as_str().ok_or("base64 must be a string")?).map(|b| b.0)
}

async fn read(conn: &mut Connection, timeout: Duration, what: &str) -> Result<Option<Bytes>, String> {
    match tokio::time::timeout(timeout, conn.read_frame()).await {
        Err(_) => Err(format!("timed out after {timeout:?} waiting for {what}")),
        Ok(Ok(frame)) => Ok(frame),
        Ok(Err(FrameError::Io(e)))
            if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(None)
        }
        Ok(Err(e)) => Err(format!("reading {what}: {e}")),
    }
}

async fn read_json(conn: &mut Connection, timeout: Duration, what: &str) -> Result<Value, String> {
    let frame = read(conn, timeout, what).await?.ok_or_else(|| format!("the connection closed waiting for {what}"))?;
    serde_json::from_slice(&frame).map_err(|e| format!("{what}: not JSON ({e}): {:?}", String::from_utf8_lossy(&frame)))
}

/// A connection the steps drive frame by frame: the crate's client after its
/// own handshake, or a bare `Connection`.
enum Conn {
    Status(Client<StatusChannel>),
    Pool(Client<PoolChannel>),
    Queue(Client<QueueChannel>),
    Blob(Client<BlobChannel>),
    Process(Client<ProcessChannel>),
    Bare(Connection),
}

impl Conn {
    fn get(&mut self) -> &mut Connection {
        match self {
            Conn::Status(c) => c.connection(),
            Conn::Pool(c) => c.connection(),
            Conn::Queue(c) => c.connection(),
            Conn::Blob(c) => c.connection(),
            Conn::Process(c) => c.connection(),
            Conn::Bare(c) => c,
        }
    }
}

/// The ordinary handshake of the crate's client; returns it and the accepted reply as JSON.
async fn client_connect<C: ChannelProtocol>(
    socket: &Path,
    timeout: Duration,
) -> Result<(Client<C>, Value), ClientError> {
    let options = ConnectOptions::new(socket).client_name("hearth-conformance/1").timeout(timeout);
    let client = Client::<C>::connect_with(&options).await?;
    let reply = serde_json::to_value(HandshakeReply::Accepted(Accepted {
        protocol: PROTOCOL_VERSION,
        daemon: client.daemon().clone(),
        channel: C::CHANNEL,
        max_frame: client.max_frame(),
    }))
    .expect("reply encodes");
    Ok((client, reply))
}

enum Opened {
    Ready(Conn),
    Refused,
}

async fn open(case: &Value, socket: &Path, timeout: Duration, caps: &mut Captures) -> Result<(Opened, usize), String> {
    let channel = case["channel"].as_str().ok_or("a case needs a channel")?;
    let handshake = case.get("handshake");
    let steps = case["steps"].as_array().ok_or("a case needs steps")?;
    if handshake.and_then(Value::as_str) == Some("none") {
        let stream = UnixStream::connect(socket).await.map_err(|e| format!("connect: {e}"))?;
        return Ok((Opened::Ready(Conn::Bare(Connection::new(stream, DEFAULT_MAX_FRAME))), 0));
    }
    let first = steps.first();
    let refused_expected = first.and_then(|s| s.get("expect_refused")).is_some();
    let result = match handshake {
        None => {
            let connected = match Channel::from_name(channel) {
                Some(Channel::Status) => client_connect(socket, timeout).await.map(|(c, r)| (Conn::Status(c), r)),
                Some(Channel::Pool) => client_connect(socket, timeout).await.map(|(c, r)| (Conn::Pool(c), r)),
                Some(Channel::Queue) => client_connect(socket, timeout).await.map(|(c, r)| (Conn::Queue(c), r)),
                Some(Channel::Blob) => client_connect(socket, timeout).await.map(|(c, r)| (Conn::Blob(c), r)),
                Some(Channel::Sync) => {
                    return Err("a sync case names its document: give it \"handshake\": {\"doc\": ...}".into());
                }
                Some(Channel::Process) => client_connect(socket, timeout).await.map(|(c, r)| (Conn::Process(c), r)),
                None => return Err(format!("the Rust client has no channel {channel:?}")),
            };
            match connected {
                Ok((conn, reply)) => Ok((conn, reply)),
                Err(ClientError::Refused { error, .. }) => Err(error.code.as_str().to_owned()),
                Err(e) => return Err(format!("connect: {e}")),
            }
        }
        Some(Value::Object(extra)) => {
            // The crate's handshake, with the case's fields added or replaced.
            let known = Channel::from_name(channel).ok_or_else(|| format!("unknown channel {channel:?}"))?;
            let mut frame = serde_json::to_value(Handshake::new(known, Some("hearth-conformance/1".into())))
                .expect("handshake encodes");
            let fields = frame.as_object_mut().expect("an object");
            for (key, value) in extra {
                if value.is_null() {
                    fields.remove(key);
                } else {
                    fields.insert(key.clone(), value.clone());
                }
            }
            let stream = UnixStream::connect(socket).await.map_err(|e| format!("connect: {e}"))?;
            let mut conn = Connection::new(stream, DEFAULT_MAX_FRAME);
            conn.write_json(&frame).await.map_err(|e| format!("handshake: {e}"))?;
            let raw = read(&mut conn, timeout, "the handshake reply").await?.ok_or("closed before the reply")?;
            let reply: HandshakeReply = serde_json::from_slice(&raw).map_err(|e| format!("handshake reply: {e}"))?;
            match reply {
                HandshakeReply::Accepted(accepted) => {
                    conn.set_max_frame(usize::try_from(accepted.max_frame).unwrap_or(usize::MAX));
                    let value = serde_json::from_slice(&raw).map_err(|e| e.to_string())?;
                    Ok((Conn::Bare(conn), value))
                }
                HandshakeReply::Refused(refused) => Err(refused.error.code.as_str().to_owned()),
            }
        }
        Some(other) => return Err(format!("bad handshake {other}")),
    };
    match result {
        Err(code) if refused_expected => {
            let wanted = first.and_then(|s| s["expect_refused"].as_str()).unwrap_or_default();
            if code != wanted {
                return Err(format!("step 0: refused with {code}, expected {wanted}"));
            }
            Ok((Opened::Refused, 1))
        }
        Err(code) => Err(format!("the handshake was refused: {code}")),
        Ok(_) if refused_expected => Err("step 0: expected a refusal, the handshake was accepted".into()),
        Ok((conn, reply)) => match first.and_then(|s| s.get("expect_accepted")) {
            Some(pattern) => {
                matches(pattern, &reply, caps, "accepted")?;
                Ok((Opened::Ready(conn), 1))
            }
            None => Ok((Opened::Ready(conn), 0)),
        },
    }
}

async fn run_case(case: &Value, socket: &Path) -> Result<(), String> {
    let timeout = Duration::from_millis(case.get("timeout_ms").and_then(Value::as_u64).unwrap_or(10_000));
    let mut caps = Captures::new();
    let steps = case["steps"].as_array().ok_or("a case needs steps")?;
    let (opened, start) = open(case, socket, timeout, &mut caps).await?;
    let mut conn = match opened {
        Opened::Ready(conn) => conn,
        Opened::Refused if steps.len() == 1 => return Ok(()),
        Opened::Refused => return Err("steps after a refused client handshake cannot run".into()),
    };
    for (index, step) in steps.iter().enumerate().skip(start) {
        run_step(conn.get(), step, &mut caps, timeout)
            .await
            .map_err(|e| format!("step {index} {}: {e}", truncate(&step.to_string(), 200)))?;
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

async fn run_step(conn: &mut Connection, step: &Value, caps: &mut Captures, timeout: Duration) -> Result<(), String> {
    let map = step.as_object().ok_or("a step is an object")?;
    let kinds: Vec<&String> = map.keys().filter(|k| *k != "allow").collect();
    let [kind] = kinds[..] else { return Err(format!("a step has exactly one action, not {kinds:?}")) };
    let arg = substitute(&map[kind], caps)?;
    let write = |e: FrameError| format!("write: {e}");
    match kind.as_str() {
        "send" => conn.write_json(&arg).await.map_err(write),
        "send_text" => conn.write_raw(Bytes::from(arg.as_str().ok_or("text")?.to_owned())).await.map_err(write),
        "send_raw" => conn.write_raw(Bytes::from(b64(&arg)?)).await.map_err(write),
        "send_bytes" => {
            // Outside the framing on purpose: flush what is queued first.
            conn.flush().await.map_err(write)?;
            let bytes = b64(&arg)?;
            let stream = conn.stream();
            let mut written = 0;
            while written < bytes.len() {
                stream.writable().await.map_err(|e| format!("write: {e}"))?;
                match stream.try_write(&bytes[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(format!("write: {e}")),
                }
            }
            Ok(())
        }
        "expect" => {
            let got =
                read_json(conn, timeout, &format!("a frame matching {}", truncate(&arg.to_string(), 120))).await?;
            matches(&arg, &got, caps, "$")
        }
        "expect_until" => {
            let allow = substitute(map.get("allow").unwrap_or(&json!([])), caps)?;
            let allow = allow.as_array().ok_or("allow is an array")?;
            for _ in 0..1000 {
                let got = read_json(conn, timeout, "the end of the stream").await?;
                let Err(end) = matches(&arg, &got, caps, "$") else { return Ok(()) };
                if !allow.iter().any(|p| matches(p, &got, &mut caps.clone(), "$").is_ok()) {
                    return Err(format!("a frame matches neither the end nor `allow`: {end}"));
                }
            }
            Err("1000 frames without the end of the stream".into())
        }
        "expect_data" => {
            let mut data = Vec::new();
            let mut hasher = Sha256::new();
            let mut length = 0usize;
            loop {
                let frame = read(conn, timeout, "a data frame or the end marker")
                    .await?
                    .ok_or("closed inside a data stream")?;
                if frame.is_empty() {
                    break;
                }
                length += frame.len();
                hasher.update(&frame);
                if arg.is_string() {
                    data.extend_from_slice(&frame);
                }
            }
            if arg.is_string() {
                let wanted = b64(&arg)?;
                return if data == wanted { Ok(()) } else { Err(format!("data {data:?} is not {wanted:?}")) };
            }
            let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
            if Some(length as u64) == arg["length"].as_u64() && Some(digest.as_str()) == arg["sha256"].as_str() {
                Ok(())
            } else {
                Err(format!("data of {length} bytes, sha256 {digest}; expected {arg}"))
            }
        }
        "expect_refused" => {
            let code = arg.as_str().ok_or("a code")?;
            let got = read_json(conn, timeout, &format!("a refusal {code}")).await?;
            let reply: HandshakeReply = serde_json::from_value(got.clone()).map_err(|e| format!("{got}: {e}"))?;
            match reply {
                HandshakeReply::Refused(r) if r.error.code == ErrorCode::from_code(code) => matches(
                    &json!({"ok": false, "protocol": 1, "error": {"code": code, "message": "$string"}}),
                    &got,
                    caps,
                    "$",
                ),
                other => Err(format!("expected a refusal {code}, got {other:?}")),
            }
        }
        "expect_closed" => match read(conn, timeout, "the daemon to close the connection").await? {
            None => Ok(()),
            Some(frame) => Err(format!("expected the connection to close, got {:?}", String::from_utf8_lossy(&frame))),
        },
        "expect_accepted" => Err("expect_accepted is allowed only as the first step".into()),
        other => Err(format!("unknown step {other:?}")),
    }
}

fn run_file(name: &str) {
    let doc = load(name);
    let state = StateDir::new();
    if let Some(config) = doc["config"].as_str() {
        state.write_config(config);
    }
    let args: Vec<&str> =
        doc["daemon_args"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let daemon = state.start(&args);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let cases = doc["cases"].as_array().expect("cases");
    for case in cases {
        let name = case["name"].as_str().unwrap_or("<unnamed>");
        if let Err(e) = runtime.block_on(run_case(case, state.socket())) {
            panic!("{name}: {e}\n--- daemon log (tail) ---\n{}", tail(&daemon.log_text(), 30));
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

macro_rules! conformance_files {
    ($($test:ident => $file:literal,)+) => {
        $(
            #[test]
            fn $test() {
                run_file($file);
            }
        )+

        #[test]
        fn every_file_has_a_test() {
            let tested = BTreeSet::from([$($file),+]);
            for name in files() {
                assert!(tested.contains(name.as_str()), "tests/conformance/{name} has no test in tests/conformance.rs");
            }
        }
    };
}

conformance_files! {
    handshake => "handshake.json",
    status => "status.json",
    pool => "pool.json",
    queue => "queue.json",
    blob => "blob.json",
    errors => "errors.json",
    timeouts => "timeouts.json",
    disabled => "disabled.json",
    events => "events.json",
    sync => "sync.json",
    process => "process.json",
}

// --- coverage ---------------------------------------------------------------

/// `(tag, JSON)` of every tagged example in proto-docs.
fn doc_examples() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-docs");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("proto-docs") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let mut current: Option<(String, String)> = None;
        for line in text.lines() {
            match &mut current {
                None => current = line.strip_prefix("```json ").map(|tag| (tag.trim().to_owned(), String::new())),
                Some((tag, body)) if line.trim_start() == "```" => {
                    if let Ok(value) = serde_json::from_str(body) {
                        out.push((std::mem::take(tag), value));
                    }
                    current = None;
                }
                Some((_, body)) => {
                    body.push_str(line);
                    body.push('\n');
                }
            }
        }
    }
    out
}

#[derive(Default)]
struct Seen {
    /// (channel, request type) sent by some case.
    sent: BTreeSet<(String, String)>,
    /// (channel, response type) expected by some case.
    expected: BTreeSet<(String, String)>,
    /// Error codes some case expects.
    codes: BTreeSet<String>,
}

fn collect_pattern(channel: &str, pattern: &Value, seen: &mut Seen) {
    if let Some(kind) = pattern.get("type").and_then(Value::as_str) {
        seen.expected.insert((channel.to_owned(), kind.to_owned()));
        if kind == "error"
            && let Some(code) = pattern.get("code").and_then(Value::as_str)
        {
            seen.codes.insert(code.to_owned());
        }
    }
    if let Some(code) = pattern.pointer("/error/code").and_then(Value::as_str) {
        seen.codes.insert(code.to_owned());
    }
}

fn seen() -> Seen {
    let mut seen = Seen::default();
    for name in files() {
        for case in load(&name)["cases"].as_array().expect("cases") {
            let channel = case["channel"].as_str().expect("channel");
            for step in case["steps"].as_array().expect("steps") {
                if let Some(kind) = step.pointer("/send/type").and_then(Value::as_str) {
                    seen.sent.insert((channel.to_owned(), kind.to_owned()));
                }
                for key in ["expect", "expect_until"] {
                    if let Some(pattern) = step.get(key) {
                        collect_pattern(channel, pattern, &mut seen);
                    }
                }
                for pattern in step.get("allow").and_then(Value::as_array).into_iter().flatten() {
                    collect_pattern(channel, pattern, &mut seen);
                }
                if let Some(code) = step.get("expect_refused").and_then(Value::as_str) {
                    seen.codes.insert(code.to_owned());
                }
            }
        }
    }
    seen
}

fn request_types() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("status", StatusRequest::TYPES),
        ("pool", PoolRequest::TYPES),
        ("queue", QueueRequest::TYPES),
        ("blob", BlobRequest::TYPES),
        ("process", ProcessRequest::TYPES),
    ])
}

#[test]
fn every_request_type_has_a_case() {
    let seen = seen();
    let mut wanted: BTreeSet<(String, String)> = request_types()
        .into_iter()
        .flat_map(|(channel, types)| types.iter().map(move |t| (channel.to_owned(), (*t).to_owned())))
        .collect();
    for (tag, example) in doc_examples() {
        if let (Some(channel), Some(kind)) = (tag.strip_suffix(".request"), example["type"].as_str()) {
            wanted.insert((channel.to_owned(), kind.to_owned()));
        }
    }
    let missing: Vec<String> = wanted.difference(&seen.sent).map(|(c, t)| format!("{c}.{t}")).collect();
    assert!(missing.is_empty(), "requests no conformance case sends: {missing:?}");
}

#[test]
fn every_response_type_in_proto_docs_has_a_case() {
    let seen = seen();
    let wanted: BTreeSet<(String, String)> = doc_examples()
        .into_iter()
        .filter_map(|(tag, example)| {
            Some((tag.strip_suffix(".response")?.to_owned(), example["type"].as_str()?.to_owned()))
        })
        .collect();
    assert!(wanted.len() >= 30, "only {} response types found in proto-docs", wanted.len());
    let missing: Vec<String> = wanted.difference(&seen.expected).map(|(c, t)| format!("{c}.{t}")).collect();
    assert!(missing.is_empty(), "responses no conformance case expects: {missing:?}");
}

/// The codes the README says no case can provoke, from its table.
fn unprovokable() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(suite_dir().join("README.md")).expect("README");
    let table = readme.split("| code | why no case provokes it |").nth(1).expect("the README's table of codes");
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .flat_map(|l| l.split('|').nth(1).unwrap_or_default().split('`').skip(1).step_by(2).map(str::to_owned))
        .collect()
}

#[test]
fn every_error_code_has_a_case_or_a_reason() {
    let seen = seen();
    let excused = unprovokable();
    assert!(excused.len() >= 5, "the README's table lists {excused:?}");
    for code in ErrorCode::ALL {
        let code = code.as_str();
        let covered = seen.codes.contains(code);
        assert!(
            covered || excused.contains(code),
            "no conformance case expects `{code}` and the README gives no reason"
        );
        assert!(!(covered && excused.contains(code)), "`{code}` has a case: take it out of the README's table");
    }
}
