//! The frame decoder, fed in arbitrary chunks: never panics, never yields
//! more payload than arrived, and a frame it yields re-encodes to the bytes
//! it came from.
#![no_main]

use bytes::{Bytes, BytesMut};
use hearth::protocol::frame::{FrameCodec, FrameError};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let max = 1 + usize::from(split) * 97;
    let mut codec = FrameCodec::new(max);
    let mut buf = BytesMut::new();
    let mut consumed = Vec::new();
    let chunk = 1 + usize::from(split % 13);
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    assert!(frame.len() <= max);
                    let mut again = BytesMut::new();
                    codec.encode(Bytes::copy_from_slice(&frame), &mut again).expect("a decoded frame re-encodes");
                    consumed.extend_from_slice(&again);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max: m }) => {
                    assert!(len as usize > m);
                    return;
                }
                Err(e) => panic!("decode failed unexpectedly: {e}"),
            }
        }
    }
    // Everything decoded is a prefix of the input.
    assert!(rest.starts_with(&consumed));
    let _ = codec.decode_eof(&mut buf);
});
