//! Checked-in frames of protocol 1 (tests/data/v1-*.frame) must keep
//! decoding: a change that breaks one breaks deployed clients or daemons.

use std::path::Path;

use bytes::BytesMut;
use hearth::protocol::blob::{BlobRequest, BlobResponse};
use hearth::protocol::frame::FrameCodec;
use hearth::protocol::handshake::{Handshake, HandshakeReply};
use hearth::protocol::pool::{PoolRequest, PoolResponse};
use hearth::protocol::queue::{QueueRequest, QueueResponse};
use hearth::protocol::status::{StatusRequest, StatusResponse};
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
        let result = match kind {
            "handshake" => decodes_as::<Handshake>(&payload),
            "handshake_reply" => decodes_as::<HandshakeReply>(&payload),
            "status_request" => decodes_as::<StatusRequest>(&payload),
            "status_response" => decodes_as::<StatusResponse>(&payload),
            "pool_request" => decodes_as::<PoolRequest>(&payload),
            "pool_response" => decodes_as::<PoolResponse>(&payload),
            "queue_request" => decodes_as::<QueueRequest>(&payload),
            "queue_response" => decodes_as::<QueueResponse>(&payload),
            "blob_request" => decodes_as::<BlobRequest>(&payload),
            "blob_response" => decodes_as::<BlobResponse>(&payload),
            other => Err(format!("unknown kind {other}: teach tests/golden.rs")),
        };
        result.unwrap_or_else(|e| panic!("{name}: {e}"));
        checked += 1;
    }
    assert!(checked >= 37, "only {checked} golden frames");
}
