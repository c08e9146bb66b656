//! proto-docs/ cannot drift from the code: every tagged JSON example decodes
//! with the real types and re-encodes to the same JSON, every error code is
//! documented, and every request type has an example.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use hearth::protocol::error::ErrorCode;
use hearth::protocol::event::EventKind;
use hearth::protocol::handshake::{Handshake, HandshakeReply};
use hearth::protocol::info::{DaemonInfo, Heartbeat, LaunchCode, LaunchReport};
use hearth::protocol::status::HealthCode;
use hearth::protocol::{Channel, ChannelProtocol, ChannelVisitor, Request};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Decodes `text` as `T` and checks that encoding it again gives the same JSON.
fn roundtrip<T: Serialize + DeserializeOwned>(text: &str) -> Result<(), String> {
    let original: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let typed: T = serde_json::from_str(text).map_err(|e| format!("does not decode: {e}"))?;
    let again = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if again != original {
        return Err(format!("re-encodes differently:\n  doc:  {original}\n  code: {again}"));
    }
    Ok(())
}

/// The request types of each channel, for the coverage check.
fn request_types() -> BTreeMap<&'static str, &'static [&'static str]> {
    struct Types;
    impl ChannelVisitor for Types {
        type Output = &'static [&'static str];
        fn visit<C: ChannelProtocol>(self) -> Self::Output {
            <C::Request as Request>::TYPES
        }
    }
    Channel::ALL.iter().map(|c| (c.as_str(), c.visit(Types))).collect()
}

/// Round-trips an example through a channel's request or response type.
struct Example<'a> {
    text: &'a str,
    request: bool,
}

impl ChannelVisitor for Example<'_> {
    type Output = Result<(), String>;
    fn visit<C: ChannelProtocol>(self) -> Self::Output {
        if !self.request {
            return roundtrip::<C::Response>(self.text);
        }
        roundtrip::<C::Request>(self.text)?;
        // The daemon decodes requests its own way (never into buffered
        // values): it must read every example as serde does.
        let typed: C::Request = serde_json::from_str(self.text).map_err(|e| e.to_string())?;
        let decoded = hearth::protocol::decode_request::<C::Request>(self.text.as_bytes())
            .map_err(|e| format!("the daemon does not decode it: {e}"))?;
        if decoded != typed {
            return Err(format!("the daemon decodes it as {decoded:?}, serde as {typed:?}"));
        }
        Ok(())
    }
}

fn check(tag: &str, text: &str) -> Result<(), String> {
    match tag {
        "frame.handshake" => return roundtrip::<Handshake>(text),
        "frame.handshake_reply" => return roundtrip::<HandshakeReply>(text),
        "info" => return roundtrip::<DaemonInfo>(text),
        "launch" => return roundtrip::<LaunchReport>(text),
        "heartbeat" => return roundtrip::<Heartbeat>(text),
        _ => {}
    }
    let channel = tag.split_once('.').and_then(|(channel, kind)| Some((Channel::from_name(channel)?, kind)));
    match channel {
        Some((channel, "request")) => channel.visit(Example { text, request: true }),
        Some((channel, "response")) => channel.visit(Example { text, request: false }),
        _ => Err(format!("unknown example tag {tag:?}: `<channel>.request`, `<channel>.response` or a file's tag")),
    }
}

/// Every ```json <tag> block of every proto-docs file: (file, line, tag, text).
fn examples() -> Vec<(String, usize, String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-docs");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    for path in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")) {
        let text = std::fs::read_to_string(&path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let mut current: Option<(usize, String, String)> = None;
        for (i, line) in text.lines().enumerate() {
            match &mut current {
                None => {
                    if let Some(tag) = line.strip_prefix("```json ") {
                        current = Some((i + 1, tag.trim().to_owned(), String::new()));
                    }
                }
                Some((start, tag, body)) => {
                    if line.trim_start() == "```" {
                        out.push((name.clone(), *start, tag.clone(), std::mem::take(body)));
                        current = None;
                    } else {
                        body.push_str(line);
                        body.push('\n');
                    }
                }
            }
        }
        assert!(current.is_none(), "{name}: unclosed code block");
    }
    out
}

#[test]
fn every_example_decodes_and_reencodes_exactly() {
    let examples = examples();
    assert!(examples.len() >= 15, "found only {} tagged examples", examples.len());
    let failures: Vec<String> = examples
        .iter()
        .filter_map(|(file, line, tag, text)| check(tag, text).err().map(|e| format!("{file}:{line} ({tag}): {e}")))
        .collect();
    assert!(failures.is_empty(), "proto-docs examples out of date:\n{}", failures.join("\n"));
}

#[test]
fn every_request_type_has_an_example() {
    let examples = examples();
    for (channel, types) in request_types() {
        let tag = format!("{channel}.request");
        let shown: BTreeSet<String> = examples
            .iter()
            .filter(|(_, _, t, _)| *t == tag)
            .filter_map(|(_, _, _, text)| serde_json::from_str::<Value>(text).ok()?["type"].as_str().map(str::to_owned))
            .collect();
        for kind in types {
            assert!(shown.contains(*kind), "proto-docs has no `{tag}` example of {kind:?}");
        }
    }
}

#[test]
fn every_error_code_is_documented() {
    let errors = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-docs/errors.md")).unwrap();
    for code in ErrorCode::ALL {
        let row = format!("| `{}` |", code.as_str());
        assert!(errors.contains(&row), "proto-docs/errors.md has no row for `{code}`");
    }
}

/// The rows of the first table in `file` whose first cell is a code in backticks.
fn documented_codes(file: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("proto-docs").join(file)).unwrap();
    text.lines()
        .filter_map(|line| {
            let mut cells = line.strip_prefix("| `")?.split('|');
            let code = cells.next()?.split('`').next()?.to_owned();
            Some((code, cells.next().unwrap_or("").trim().to_owned()))
        })
        .collect()
}

#[test]
fn every_health_code_is_documented_with_its_severity() {
    let rows = documented_codes("status.md");
    for code in HealthCode::ALL {
        let severity = rows
            .get(code.as_str().as_ref())
            .unwrap_or_else(|| panic!("proto-docs/status.md has no row for the health code `{code}`"));
        assert_eq!(severity, code.severity().as_str(), "proto-docs/status.md: the severity of `{code}`");
    }
    let unavailable =
        rows.get("<channel>_unavailable").expect("proto-docs/status.md documents `<channel>_unavailable`");
    for channel in Channel::ALL.iter().filter(|c| **c != Channel::Status) {
        assert_eq!(HealthCode::from_code(&format!("{channel}_unavailable")), HealthCode::Unavailable(*channel));
        assert_eq!(unavailable, HealthCode::Unavailable(*channel).severity().as_str());
    }
}

#[test]
fn every_launch_code_is_documented() {
    let rows = documented_codes("lifecycle.md");
    for code in LaunchCode::ALL {
        assert!(rows.contains_key(code.as_str()), "proto-docs/lifecycle.md has no row for the launch code `{code}`");
    }
}

#[test]
fn every_event_kind_has_an_example() {
    let shown: BTreeSet<String> = examples()
        .iter()
        .filter(|(_, _, tag, _)| tag == "status.response")
        .filter_map(|(_, _, _, text)| {
            let value: Value = serde_json::from_str(text).ok()?;
            (value["type"] == "event").then(|| value["kind"].as_str().map(str::to_owned))?
        })
        .collect();
    for kind in EventKind::ALL {
        assert!(shown.contains(kind.as_str()), "proto-docs/status.md has no example of the event kind `{kind}`");
    }
}
