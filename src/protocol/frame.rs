//! The frame codec: a 4-byte big-endian length, then that many bytes.
//!
//! ```text
//! +----------+----------+----------+----------+---- ... ----+
//! |  len[0]  |  len[1]  |  len[2]  |  len[3]  |   payload   |
//! +----------+----------+----------+----------+---- ... ----+
//!  u32, big-endian: the payload length N        N bytes
//! ```
//!
//! An empty payload (`N = 0`) is a valid frame; the blob channel uses it as the
//! end marker of a streamed transfer. A length above the codec's maximum is
//! rejected as soon as the four length bytes arrive, before any of the
//! payload is buffered.
//!
//! ```
//! use bytes::BytesMut;
//! use hearth::protocol::frame::FrameCodec;
//! use tokio_util::codec::{Decoder, Encoder};
//!
//! let mut codec = FrameCodec::new(1024);
//! let mut buf = BytesMut::new();
//! codec.encode(bytes::Bytes::from_static(br#"{"type":"ping"}"#), &mut buf).unwrap();
//! assert_eq!(&buf[..4], &[0, 0, 0, 15]);
//! assert_eq!(&buf[4..], br#"{"type":"ping"}"#);
//!
//! let frame = codec.decode(&mut buf).unwrap().unwrap();
//! assert_eq!(&frame[..], br#"{"type":"ping"}"#);
//! ```
//!
//! Unlike `LengthDelimitedCodec`, this codec never reserves the announced
//! length up front: a peer that announces 16 MiB and sends nothing costs
//! nothing, and memory grows only with the bytes that actually arrive. (The
//! daemon's [`Connection`](crate::connection::Connection) reserves a large
//! frame's length only once its read budget has admitted the frame.)
//! Its errors are typed, so the daemon can name the announced length in the
//! `frame_too_large` error it sends back.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use tokio_util::codec::{Decoder, Encoder};

/// Bytes in the length prefix.
pub const HEADER_LEN: usize = 4;

/// The default maximum payload size of one frame: 16 MiB.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// The largest amount the decoder reserves in one step while a frame arrives.
const RESERVE_STEP: usize = 64 * 1024;

/// A framing failure. Each one ends the connection it happened on.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more than the maximum frame size.
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// The announced (or attempted) payload length.
        len: u64,
        /// The maximum in force on this connection.
        max: usize,
    },
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({received} of {expected} bytes received)")]
    Truncated {
        /// Bytes of the frame (header included) that did arrive.
        received: usize,
        /// Bytes the frame needed (header included), when the header was complete.
        expected: usize,
    },
    /// A value could not be encoded as JSON.
    #[error("cannot encode frame as JSON: {0}")]
    Encode(#[source] serde_json::Error),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes and decodes length-prefixed frames, with a maximum that can change
/// during the life of a connection (small before the handshake, larger after).
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec that refuses payloads larger than `max` bytes.
    pub fn new(max: usize) -> Self {
        // The prefix is a u32: nothing above u32::MAX can be framed at all.
        Self { max: max.min(u32::MAX as usize) }
    }

    /// The maximum payload size in force.
    pub fn max_frame(&self) -> usize {
        self.max
    }

    /// Changes the maximum payload size for the frames that follow.
    pub fn set_max_frame(&mut self, max: usize) {
        self.max = max.min(u32::MAX as usize);
    }

    fn check_len(&self, len: usize) -> Result<(), FrameError> {
        if len > self.max {
            return Err(FrameError::TooLarge { len: len as u64, max: self.max });
        }
        Ok(())
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl Decoder for FrameCodec {
    type Item = Bytes;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len: len as u64, max: self.max });
        }
        let total = HEADER_LEN + len;
        if src.len() < total {
            src.reserve((total - src.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        Ok(Some(src.split_to(len).freeze()))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => {
                let expected = if src.len() >= HEADER_LEN {
                    HEADER_LEN + u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
                } else {
                    HEADER_LEN
                };
                Err(FrameError::Truncated { received: src.len(), expected })
            }
        }
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.check_len(item.len())?;
        dst.reserve(HEADER_LEN + item.len());
        dst.put_u32(item.len() as u32);
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// A value to be sent as one JSON frame, serialized straight into the
/// connection's write buffer.
///
/// A value whose encoding exceeds the maximum is refused with
/// [`FrameError::TooLarge`] naming its full length, and leaves the buffer as
/// it was; the buffer never holds more than the maximum of it meanwhile
/// (past the maximum the encoder only counts).
#[derive(Debug)]
pub struct Json<'a, T: ?Sized>(pub &'a T);

impl<T: Serialize + ?Sized> Encoder<Json<'_, T>> for FrameCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Json<'_, T>, dst: &mut BytesMut) -> Result<(), FrameError> {
        let start = dst.len();
        dst.put_u32(0);
        let mut out = Capped { dst: &mut *dst, room: self.max, len: 0 };
        let written = serde_json::to_writer(&mut out, item.0);
        let len = out.len;
        if let Err(e) = written {
            dst.truncate(start);
            return Err(FrameError::Encode(e));
        }
        if let Err(e) = self.check_len(len) {
            dst.truncate(start);
            return Err(e);
        }
        dst[start..start + HEADER_LEN].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

/// Appends to a buffer up to `room` bytes, and counts the rest without
/// keeping it: an answer too large to send costs at most one frame of memory.
struct Capped<'a> {
    dst: &'a mut BytesMut,
    room: usize,
    len: usize,
}

impl std::io::Write for Capped<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let keep = buf.len().min(self.room.saturating_sub(self.len));
        self.dst.extend_from_slice(&buf[..keep]);
        self.len += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `value` encoded as JSON, counted without keeping the bytes.
///
/// ```
/// assert_eq!(hearth::protocol::frame::json_len(&["a", "b\n"]), 11);
/// ```
pub fn json_len<T: Serialize + ?Sized>(value: &T) -> u64 {
    struct Counter(u64);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing to a counter cannot fail; a value serde cannot encode counts what it got to.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Encodes one payload as a complete frame (prefix included).
///
/// ```
/// assert_eq!(hearth::protocol::frame::encode_frame(b"{}"), [0, 0, 0, 2, b'{', b'}']);
/// ```
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversize_prefix_is_rejected_before_the_payload() {
        let mut codec = FrameCodec::new(16);
        let mut buf = BytesMut::from(&u32::MAX.to_be_bytes()[..]);
        match codec.decode(&mut buf) {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u64::from(u32::MAX));
                assert_eq!(max, 16);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
    }

    #[test]
    fn partial_frames_wait_and_do_not_reserve_the_whole_announced_length() {
        let mut codec = FrameCodec::new(DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::new();
        buf.put_u32(DEFAULT_MAX_FRAME as u32);
        buf.put_slice(b"abc");
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024 * 1024, "capacity {}", buf.capacity());
    }

    #[test]
    fn eof_mid_frame_is_truncated() {
        let mut codec = FrameCodec::new(1024);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 10, 1, 2][..]);
        match codec.decode_eof(&mut buf) {
            Err(FrameError::Truncated { received: 6, expected: 14 }) => {}
            other => panic!("expected Truncated, got {other:?}"),
        }
        let mut buf = BytesMut::from(&[0u8, 0][..]);
        assert!(matches!(codec.decode_eof(&mut buf), Err(FrameError::Truncated { received: 2, expected: 4 })));
        assert!(codec.decode_eof(&mut BytesMut::new()).unwrap().is_none());
    }

    #[test]
    fn json_frames_are_checked_against_the_maximum() {
        let mut codec = FrameCodec::new(8);
        let mut buf = BytesMut::from(&b"keep"[..]);
        let err = codec.encode(Json(&"this string is too long"), &mut buf).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { len: 25, max: 8 }), "the full length is named: {err}");
        assert_eq!(&buf[..], b"keep", "a refused frame leaves the buffer as it was");
        codec.encode(Json(&1234), &mut buf).unwrap();
        assert_eq!(&buf[..], b"keep\0\0\0\x041234");
    }

    #[test]
    fn empty_frame_roundtrips() {
        let mut codec = FrameCodec::new(8);
        let mut buf = BytesMut::new();
        codec.encode(Bytes::new(), &mut buf).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 0]);
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().len(), 0);
    }
}
