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
mod decode;
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
/// deeply) is `malformed_json`; not an object, or without a string `type`,
/// is `invalid_request`; a `type` this channel does not have is
/// `unknown_request`; a known type with bad fields is `invalid_request`.
///
/// The frame is read twice, and never into a tree of buffered values: a
/// frame costs about its own size in memory, whatever it holds (see
/// `decode.rs`).
pub fn decode_request<R: Request>(frame: &[u8]) -> Result<R, WireError> {
    use decode::Kind;
    let probe = decode::probe(frame).map_err(|e| malformed(&e))?;
    let kind = match probe.kind {
        Kind::Type(kind) => kind,
        Kind::NotAnObject | Kind::Missing => {
            return Err(WireError::new(
                ErrorCode::InvalidRequest,
                "a request must be a JSON object with a string \"type\"",
            ));
        }
        Kind::NotAString => return Err(WireError::new(ErrorCode::InvalidRequest, "\"type\" must be a string")),
        Kind::Duplicate => return Err(WireError::new(ErrorCode::InvalidRequest, "duplicate field `type`")),
    };
    if !R::TYPES.contains(&kind.as_ref()) {
        let shown = clip(&kind, 64);
        return Err(WireError::new(
            ErrorCode::UnknownRequest,
            format!("unknown request type {shown:?}; this channel accepts: {}", R::TYPES.join(", ")),
        ));
    }
    if probe.values > R::MAX_VALUES {
        return Err(WireError::new(
            ErrorCode::InvalidRequest,
            format!(
                "a {kind} request holds {} JSON values; this channel takes at most {}",
                probe.values,
                R::MAX_VALUES
            ),
        ));
    }
    R::decode(&kind, frame)
}

fn malformed(e: &serde_json::Error) -> WireError {
    WireError::new(ErrorCode::MalformedJson, format!("request is not valid JSON: {e}"))
}

/// The error for a request of type `kind` whose fields do not decode. serde
/// quotes the value it did not expect, which may be most of the frame: the
/// message keeps the start of it.
pub(crate) fn invalid_fields(kind: &str, e: &serde_json::Error) -> WireError {
    if e.is_syntax() || e.is_eof() {
        return malformed(e);
    }
    WireError::new(ErrorCode::InvalidRequest, clip(&format!("invalid {kind} request: {e}"), 1024))
}

/// `text` cut to at most `max` characters, `…` marking the cut: for messages
/// that quote what a peer sent.
///
/// ```
/// assert_eq!(hearth::protocol::clip("abcdef", 3), "abc…");
/// assert_eq!(hearth::protocol::clip("abc", 3), "abc");
/// ```
pub fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => std::borrow::Cow::Borrowed(text),
        Some((at, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..at])),
    }
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
        assert_eq!(code(b"[]"), ErrorCode::InvalidRequest);
        assert_eq!(code(br#""x""#), ErrorCode::InvalidRequest);
        assert_eq!(code(b"7"), ErrorCode::InvalidRequest);
        assert_eq!(code(b"{}"), ErrorCode::InvalidRequest);
        assert_eq!(code(br#"{"type":"ping","type":"ping"}"#), ErrorCode::InvalidRequest);
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
    fn a_frame_of_tiny_values_is_refused_by_its_count() {
        let many = format!(r#"{{"type":"ping","x":[{}0]}}"#, "[],".repeat(StatusRequest::MAX_VALUES));
        let err = decode_request::<StatusRequest>(many.as_bytes()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert!(err.message.contains("JSON values"), "{}", err.message);
        let few = format!(r#"{{"type":"ping","x":[{}0]}}"#, "[],".repeat(100));
        assert_eq!(decode_request::<StatusRequest>(few.as_bytes()).unwrap(), StatusRequest::Ping);
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
