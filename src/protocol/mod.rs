//! The hearth wire protocol, version 1, shared by the daemon and its clients.
//!
//! # Frames
//!
//! A connection is a `SOCK_STREAM` Unix socket carrying frames in both
//! directions. A frame is a 4-byte big-endian payload length `N`, then `N`
//! bytes of payload:
//!
//! ```text
//!   0        1        2        3        4                      4+N
//!   +--------+--------+--------+--------+---------- ... ---------+
//!   |        length N (u32, big-endian) |  payload: N bytes      |
//!   +--------+--------+--------+--------+---------- ... ---------+
//!
//!   {"type":"ping"}  (15 bytes)  is sent as
//!   00 00 00 0f 7b 22 74 79 70 65 22 3a 22 70 69 6e 67 22 7d
//! ```
//!
//! Every payload is one UTF-8 JSON object, except the raw data frames of a
//! streamed blob transfer. A length above the maximum frame size (16 MiB by
//! default; smaller before the handshake) is a protocol error: the daemon
//! answers `frame_too_large` if it can and closes that connection only.
//!
//! ```
//! use hearth::protocol::frame::encode_frame;
//! assert_eq!(
//!     encode_frame(br#"{"type":"ping"}"#),
//!     [0x00, 0x00, 0x00, 0x0f, b'{', b'"', b't', b'y', b'p', b'e', b'"', b':',
//!      b'"', b'p', b'i', b'n', b'g', b'"', b'}'],
//! );
//! ```
//!
//! # Handshake
//!
//! ```text
//!   client                                       daemon
//!     | -- {"channel":"status","protocol":1,       |
//!     |     "client":"my-app/1.0"}  ------------->  |  peer uid checked at accept
//!     | <-- {"ok":true,"protocol":1,"daemon":{...}, |
//!     |      "channel":"status","max_frame":N}      |
//!     | -- {"type":"ping"} ------------------------> |
//!     | <-- {"type":"pong"} ------------------------ |
//!     | -- {"type":"nope"} ------------------------> |  a failed request ...
//!     | <-- {"type":"error","code":"unknown_request",|  ... keeps the connection
//!     |      "message":"..."} ---------------------- |
//! ```
//!
//! A refused handshake is answered `{"ok":false,"protocol":1,"error":{...}}`
//! and the connection is closed.
//!
//! ```
//! use hearth::protocol::handshake::{Channel, Handshake};
//! use hearth::protocol::status::{StatusRequest, StatusResponse};
//! use hearth::protocol::{decode_request, ErrorCode};
//!
//! let hs = Handshake::parse(br#"{"channel":"status","protocol":1}"#).unwrap();
//! assert_eq!(hs.channel, Channel::Status);
//!
//! let req: StatusRequest = decode_request(br#"{"type":"ping"}"#).unwrap();
//! assert_eq!(req, StatusRequest::Ping);
//! let err = decode_request::<StatusRequest>(br#"{"type":"pong"}"#).unwrap_err();
//! assert_eq!(err.code, ErrorCode::UnknownRequest);
//!
//! let resp: StatusResponse = serde_json::from_str(r#"{"type":"pong"}"#).unwrap();
//! assert_eq!(resp, StatusResponse::Pong);
//! ```
//!
//! The long form, with every message, error code and limit, is `proto-docs/`.

pub mod blob;
pub mod channel;
mod codes;
pub mod error;
pub mod event;
pub mod frame;
pub mod handshake;
pub mod info;
pub mod pool;
pub mod process;
pub mod queue;
pub mod status;
pub mod sync;

pub use channel::{Channel, ChannelProtocol, ChannelVisitor, Request, Response};
pub use error::{ErrorCode, WireError};
pub use handshake::{Handshake, HandshakeReply};

/// The protocol version this library speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Decodes one request frame, classifying failures: not JSON (or nested too
/// deeply) is `malformed_json`; a `type` this channel does not have is
/// `unknown_request`; a known type with bad fields is `invalid_request`.
pub fn decode_request<R: Request>(frame: &[u8]) -> Result<R, WireError> {
    match serde_json::from_slice::<R>(frame) {
        Ok(request) => Ok(request),
        Err(err) => Err(classify_request_error::<R>(frame, &err)),
    }
}

fn classify_request_error<R: Request>(frame: &[u8], err: &serde_json::Error) -> WireError {
    if err.is_syntax() || err.is_eof() {
        return WireError::new(ErrorCode::MalformedJson, format!("request is not valid JSON: {err}"));
    }
    // The typed parse failed on the data: find out whether the type is known.
    let value = match serde_json::from_slice::<serde_json::Value>(frame) {
        Ok(value) => value,
        Err(e) => {
            return WireError::new(ErrorCode::MalformedJson, format!("request is not valid JSON: {e}"));
        }
    };
    let Some(kind) = value.get("type") else {
        return WireError::new(ErrorCode::InvalidRequest, "a request must be a JSON object with a string \"type\"");
    };
    let Some(kind) = kind.as_str() else {
        return WireError::new(ErrorCode::InvalidRequest, "\"type\" must be a string");
    };
    if !R::TYPES.contains(&kind) {
        let mut shown: String = kind.chars().take(64).collect();
        if shown.len() < kind.len() {
            shown.push('…');
        }
        return WireError::new(
            ErrorCode::UnknownRequest,
            format!("unknown request type {shown:?}; this channel accepts: {}", R::TYPES.join(", ")),
        );
    }
    WireError::new(ErrorCode::InvalidRequest, format!("invalid {kind} request: {err}"))
}

#[cfg(test)]
mod tests {
    use super::status::StatusRequest;
    use super::*;

    fn code(frame: &[u8]) -> ErrorCode {
        decode_request::<StatusRequest>(frame).unwrap_err().code
    }

    #[test]
    fn request_errors_are_classified() {
        assert_eq!(code(b"{\"type\":"), ErrorCode::MalformedJson);
        assert_eq!(code(b"\xff\xfe"), ErrorCode::MalformedJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::InvalidRequest);
        assert_eq!(code(b"{}"), ErrorCode::InvalidRequest);
        assert_eq!(code(br#"{"type":7}"#), ErrorCode::InvalidRequest);
        assert_eq!(code(br#"{"type":"frobnicate"}"#), ErrorCode::UnknownRequest);
        assert_eq!(code(br#"{"type":"shutdown","reason":5}"#), ErrorCode::InvalidRequest);
    }

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(deep.as_bytes()), ErrorCode::MalformedJson);
        let deep_obj = format!(r#"{{"type":"ping","x":{}{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(deep_obj.as_bytes()), ErrorCode::MalformedJson);
    }

    #[test]
    fn every_listed_type_is_known_to_serde() {
        for kind in StatusRequest::TYPES {
            let frame = format!(r#"{{"type":"{kind}"}}"#);
            let result = decode_request::<StatusRequest>(frame.as_bytes());
            assert!(result.is_ok(), "{kind}: {result:?}");
        }
    }
}
