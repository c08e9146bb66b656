//! Checked-in frames of protocol 1 (tests/data/v1-*.frame) must keep
//! decoding: a change that breaks one breaks deployed clients or daemons.

use std::path::Path;

use bytes::BytesMut;
use hearth::protocol::frame::FrameCodec;
use hearth::protocol::handshake::{Handshake, HandshakeReply};
use hearth::protocol::{Channel, ChannelProtocol, ChannelVisitor};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::codec::Decoder;

fn decodes_as<T: Serialize + DeserializeOwned>(payload: &[u8]) -> Result<(), String> {
    let typed: T = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let original: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    let again = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    if again != original {
        return Err(format!("re-encodes as {again}"));
    }
    Ok(())
}

/// Decodes a frame as a channel's request or response type.
struct Golden<'a> {
    payload: &'a [u8],
    request: bool,
}

impl ChannelVisitor for Golden<'_> {
    type Output = Result<(), String>;
    fn visit<C: ChannelProtocol>(self) -> Self::Output {
        if self.request { decodes_as::<C::Request>(self.payload) } else { decodes_as::<C::Response>(self.payload) }
    }
}

#[test]
fn golden_frames_keep_decoding() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("v1-").and_then(|n| n.strip_suffix(".frame")) else { continue };
        let kind = rest.split('-').next().unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        let payload = FrameCodec::default().decode(&mut buf).unwrap().expect("one whole frame");
        assert!(buf.is_empty(), "{name}: trailing bytes");
        let by_channel = kind.rsplit_once('_').and_then(|(channel, dir)| Some((Channel::from_name(channel)?, dir)));
        let result = match (kind, by_channel) {
            ("handshake", _) => decodes_as::<Handshake>(&payload),
            ("handshake_reply", _) => decodes_as::<HandshakeReply>(&payload),
            (_, Some((channel, "request"))) => channel.visit(Golden { payload: &payload, request: true }),
            (_, Some((channel, "response"))) => channel.visit(Golden { payload: &payload, request: false }),
            (other, _) => {
                Err(format!("unknown kind {other}: `handshake`, `handshake_reply`, `<channel>_request|response`"))
            }
        };
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        checked += 1;
    }
    assert!(checked >= 48, "only {checked} golden frames");
}
