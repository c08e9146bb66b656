//! Raw frames over a real socket against the real `hearthd`: the handshake,
//! the status channel, and every kind of bad input. Each misbehaving
//! connection must affect only itself.

mod common;

use std::time::{Duration, Instant};

use common::{RawConn, StateDir, wait_for};
use serde_json::{Value, json};

fn code(v: &Value) -> &str {
    v["code"].as_str().or_else(|| v["error"]["code"].as_str()).unwrap_or("<none>")
}

/// The daemon still serves a fresh connection.
fn assert_serving(state: &StateDir) {
    let mut c = RawConn::open(state.socket(), "status");
    assert_eq!(c.request(&json!({"type": "ping"})), json!({"type": "pong"}));
}

#[test]
fn handshake_ping_status_shutdown() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let mut c = RawConn::connect(state.socket());
    let reply = c.handshake("status");
    assert_eq!(reply["ok"], json!(true));
    assert_eq!(reply["protocol"], json!(1));
    assert_eq!(reply["channel"], json!("status"));
    assert_eq!(reply["daemon"]["pid"], json!(daemon.pid()));
    assert_eq!(reply["max_frame"], json!(16 * 1024 * 1024));

    assert_eq!(c.request(&json!({"type": "ping"})), json!({"type": "pong"}));
    let status = c.request(&json!({"type": "status"}));
    assert_eq!(status["type"], "status");
    assert_eq!(status["pid"], json!(daemon.pid()));
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["protocol"], 1);
    assert_eq!(status["health"]["state"], "healthy");
    assert_eq!(status["connections"]["active"], 1);
    assert!(status["connections"]["total"].as_u64().unwrap() >= 2);
    assert!(status["channels"].as_array().unwrap().contains(&json!("status")));
    assert_eq!(status["socket"], json!(state.socket()));
    assert_eq!(status["state_dir"], json!(state.state_dir()));
    assert!(status["started_at"].as_str().unwrap().ends_with('Z'));

    let ack = c.request(&json!({"type": "shutdown", "reason": "raw test"}));
    assert_eq!(ack["type"], "shutting_down");
    assert_eq!(daemon.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(!state.socket().exists(), "socket removed on clean exit");
    assert!(!state.paths.info_file().exists(), "info file removed on clean exit");
    assert!(daemon.log_text().contains("raw test"), "the reason is logged");
}

#[test]
fn handshake_refusals_have_their_own_codes() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let cases = [
        (json!({"channel": "nope", "protocol": 1}), "unknown_channel"),
        (json!({"channel": "status", "protocol": 2}), "unsupported_protocol"),
        (json!({"channel": "status"}), "invalid_handshake"),
        (json!({"type": "ping"}), "invalid_handshake"),
        (json!([1, 2, 3]), "invalid_handshake"),
    ];
    for (handshake, expected) in cases {
        let mut c = RawConn::connect(state.socket());
        c.send_json(&handshake);
        let reply = c.read_json().expect("a refusal");
        assert_eq!(reply["ok"], json!(false), "{handshake}: {reply}");
        assert_eq!(code(&reply), expected, "{handshake}: {reply}");
        assert_eq!(reply["protocol"], 1);
        assert!(c.is_closed(), "closed after a refusal");
    }
    let mut c = RawConn::connect(state.socket());
    c.send_frame(b"{not json");
    assert_eq!(code(&c.read_json().unwrap()), "invalid_handshake");
    assert_serving(&state);
}

#[test]
fn only_an_object_with_the_named_fields_is_a_handshake() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let refused: &[&[u8]] = &[
        // An array, even one whose values would fill the fields in order.
        br#"["status",1]"#,
        br#"["status",1,"app/1"]"#,
        br#""status""#,
        b"1",
        b"null",
        b"",
        // The fields' types are exact.
        br#"{"channel":"status","protocol":1.0}"#,
        br#"{"channel":"status","protocol":"1"}"#,
        br#"{"channel":"status","protocol":-1}"#,
        br#"{"channel":["status"],"protocol":1}"#,
        br#"{"channel":"status","protocol":1,"client":5}"#,
        // One object, once: no field twice, nothing after it.
        br#"{"channel":"status","channel":"queue","protocol":1}"#,
        br#"{"channel":"status","protocol":1} {}"#,
        b"{\"channel\":\"st\xffatus\",\"protocol\":1}",
    ];
    for frame in refused {
        let mut c = RawConn::connect(state.socket());
        c.send_frame(frame);
        let reply = c.read_json().expect("a refusal");
        let shown = String::from_utf8_lossy(frame);
        assert_eq!(reply["ok"], json!(false), "{shown}: {reply}");
        assert_eq!(code(&reply), "invalid_handshake", "{shown}: {reply}");
        assert!(c.is_closed(), "{shown}: closed after the refusal");
    }
    let accepted: &[&[u8]] = &[
        br#"{"channel":"status","protocol":1}"#,
        br#"{"protocol":1,"channel":"status","client":"app/1.0"}"#,
        br#"{"channel":"status","protocol":1,"client":null}"#,
        // Fields a channel does not take are left to it; status takes none and ignores them.
        br#"{"channel":"status","protocol":1,"doc":"settings"}"#,
        b" {\"channel\":\"status\",\"protocol\":1}\n",
    ];
    for frame in accepted {
        let mut c = RawConn::connect(state.socket());
        c.send_frame(frame);
        let reply = c.read_json().expect("a reply");
        assert_eq!(reply["ok"], json!(true), "{}: {reply}", String::from_utf8_lossy(frame));
        assert_eq!(c.request(&json!({"type": "ping"})), json!({"type": "pong"}));
    }
    assert_serving(&state);
}

#[test]
fn request_errors_keep_the_connection_usable() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut c = RawConn::open(state.socket(), "status");

    c.send_frame(b"{\"type\": \"ping\"");
    assert_eq!(code(&c.read_json().unwrap()), "malformed_json");
    c.send_frame(b"\xff\xfe\xfd");
    assert_eq!(code(&c.read_json().unwrap()), "malformed_json");
    assert_eq!(code(&c.request(&json!({"type": "frobnicate"}))), "unknown_request");
    assert_eq!(code(&c.request(&json!({"no_type": 1}))), "invalid_request");
    assert_eq!(code(&c.request(&json!({"type": "shutdown", "reason": 42}))), "invalid_request");

    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    c.send_frame(deep.as_bytes());
    assert_eq!(code(&c.read_json().unwrap()), "malformed_json");
    let deep = format!(r#"{{"type":"ping","x":{}{}}}"#, "{\"a\":".repeat(10_000), "}".repeat(10_000));
    c.send_frame(deep.as_bytes());
    assert_eq!(code(&c.read_json().unwrap()), "malformed_json");

    // An empty frame is not JSON either.
    c.send_frame(b"");
    assert_eq!(code(&c.read_json().unwrap()), "malformed_json");

    assert_eq!(c.request(&json!({"type": "ping"})), json!({"type": "pong"}));
}

#[test]
fn oversize_length_prefixes_close_only_that_connection() {
    let state = StateDir::new();
    let _daemon = state.start(&["--max-frame", "64KiB"]);
    for len in [64 * 1024 + 1, 1 << 24, u32::MAX as usize] {
        // Before the handshake the cap is the small pre-handshake one.
        let mut c = RawConn::connect(state.socket());
        c.send_raw(&(len as u32).to_be_bytes()).unwrap();
        let reply = c.read_json().expect("a refusal");
        assert_eq!(code(&reply), "frame_too_large", "{reply}");
        assert!(c.is_closed());

        // After it, the configured maximum applies.
        let mut c = RawConn::open(state.socket(), "status");
        c.send_raw(&(len as u32).to_be_bytes()).unwrap();
        let reply = c.read_json().expect("an error frame");
        assert_eq!(reply["type"], "error");
        assert_eq!(code(&reply), "frame_too_large", "{reply}");
        assert!(reply["message"].as_str().unwrap().contains(&len.to_string()));
        assert!(c.is_closed());
    }
    // A frame of exactly the maximum is fine (and is not JSON, so it is an error reply).
    let mut c = RawConn::open(state.socket(), "status");
    c.send_frame(&vec![b' '; 64 * 1024]);
    assert_eq!(code(&c.read_json().unwrap()), "malformed_json");
    assert_eq!(c.request(&json!({"type": "ping"})), json!({"type": "pong"}));
    assert_serving(&state);
}

#[test]
fn truncated_frames_and_abrupt_closes_are_contained() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    for bytes in [&b"\x00\x00"[..], b"\x00\x00\x00\x10{\"type\"", b"\x00\x00\x00\x05"] {
        let mut c = RawConn::open(state.socket(), "status");
        c.send_raw(bytes).unwrap();
        drop(c);
        let mut c = RawConn::connect(state.socket());
        c.send_raw(bytes).unwrap();
        drop(c);
    }
    assert_serving(&state);
}

#[test]
fn stalled_handshakes_and_half_frames_time_out() {
    let state = StateDir::new();
    let _daemon = state.start(&["--handshake-timeout", "300ms", "--connection-idle-timeout", "500ms"]);

    // Nothing at all, then half a handshake frame.
    let mut silent = RawConn::connect(state.socket());
    let mut half = RawConn::connect(state.socket());
    half.send_raw(b"\x00\x00\x00\x30{\"channel\":").unwrap();
    // Meanwhile others are served.
    assert_serving(&state);
    for c in [&mut silent, &mut half] {
        let started = Instant::now();
        let reply = c.read_json().expect("a refusal");
        assert_eq!(code(&reply), "handshake_timeout", "{reply}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(c.is_closed());
    }

    // After the handshake: idle, and stalled in the middle of a frame.
    let mut idle = RawConn::open(state.socket(), "status");
    let mut stalled = RawConn::open(state.socket(), "status");
    stalled.send_raw(b"\x00\x00\x00\x10{\"ty").unwrap();
    assert_serving(&state);
    for c in [&mut idle, &mut stalled] {
        let reply = c.read_json().expect("an error frame");
        assert_eq!(code(&reply), "idle_timeout", "{reply}");
        assert!(c.is_closed());
    }
}

#[test]
fn a_reader_that_never_reads_is_cut_off_and_others_are_served() {
    let state = StateDir::new();
    let _daemon = state.start(&["--write-timeout", "300ms"]);
    let mut slow = RawConn::open(state.socket(), "status");
    slow.stream.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    // Pipeline status requests without reading until the daemon can no
    // longer write its answers; it must then give up on this connection.
    let request = {
        let payload = br#"{"type":"status"}"#;
        let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(payload);
        frame.repeat(256)
    };
    let started = Instant::now();
    while slow.send_raw(&request).is_ok() {
        assert!(started.elapsed() < Duration::from_secs(30), "the daemon kept reading forever");
    }
    assert_serving(&state);
    // The daemon closes its end: reading drains the buffered answers, then ends.
    slow.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    while slow.read_frame().is_some() {
        assert!(started.elapsed() < Duration::from_secs(20), "the slow reader's connection was not closed");
    }
    assert_serving(&state);
}

#[test]
fn connection_cap_refuses_with_its_own_code_and_recovers() {
    let state = StateDir::new();
    let _daemon = state.start(&["--max-connections", "4"]);
    // The readiness probe's connection may hold a slot until the daemon sees it close.
    let mut held: Vec<RawConn> = Vec::new();
    assert!(wait_for(Duration::from_secs(10), || {
        while held.len() < 4 {
            let Some(mut c) = RawConn::try_connect(state.socket()) else { return false };
            if c.handshake("status")["ok"] != json!(true) {
                return false;
            }
            held.push(c);
        }
        true
    }));
    let mut over = RawConn::connect(state.socket());
    let reply = over.read_json().expect("a refusal without sending anything");
    assert_eq!(reply["ok"], json!(false));
    assert_eq!(code(&reply), "too_many_connections");
    assert!(over.is_closed());
    drop(held);
    // Slots come back as soon as the daemon sees the closes.
    assert!(wait_for(Duration::from_secs(10), || {
        RawConn::try_connect(state.socket()).is_some_and(|mut c| c.handshake("status")["ok"] == json!(true))
    }));
    let mut c = RawConn::open(state.socket(), "status");
    let status = c.request(&json!({"type": "status"}));
    assert!(status["connections"]["refused_busy"].as_u64().unwrap() >= 1);
    assert_eq!(status["limits"]["max_connections"], 4);
}

#[test]
fn channels_not_served_are_refused_at_the_handshake() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut c = RawConn::open(state.socket(), "status");
    let served = c.request(&json!({"type": "status"}))["channels"].clone();
    for channel in ["pool", "queue", "blob"] {
        if served.as_array().unwrap().contains(&json!(channel)) {
            continue;
        }
        let mut c = RawConn::connect(state.socket());
        let reply = c.handshake(channel);
        assert_eq!(code(&reply), "channel_unavailable", "{channel}: {reply}");
    }
}
