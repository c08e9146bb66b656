//! Every channel's request decoding (what the daemon does with a frame) and
//! response decoding (what a client does): never panics, whatever decodes
//! re-encodes to a value that decodes the same, and the daemon's decoding
//! agrees with serde's.
#![no_main]

use std::fmt::Debug;

use hearth::protocol::{Channel, ChannelProtocol, ChannelVisitor, Request, decode_request};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn request<R: Request>(frame: &[u8]) {
    if let Ok(req) = decode_request::<R>(frame) {
        let again = serde_json::to_vec(&req).unwrap();
        assert_eq!(decode_request::<R>(&again).unwrap(), req);
        // The daemon's own decoding (never into buffered values) agrees with
        // serde's wherever both take the frame.
        if let Ok(by_serde) = serde_json::from_slice::<R>(frame) {
            assert_eq!(by_serde, req);
        }
    }
}

fn response<T: Serialize + DeserializeOwned + PartialEq + Debug>(frame: &[u8]) {
    if let Ok(resp) = serde_json::from_slice::<T>(frame) {
        let again = serde_json::to_vec(&resp).unwrap();
        let back: T = serde_json::from_slice(&again).unwrap();
        // Floats (rates) may not survive a round trip bit for bit; compare the JSON.
        assert_eq!(serde_json::to_vec(&back).unwrap(), again);
    }
}

/// One frame through one channel's request or response decoding.
struct Decode<'a> {
    frame: &'a [u8],
    request: bool,
}

impl ChannelVisitor for Decode<'_> {
    type Output = ();
    fn visit<C: ChannelProtocol>(self) {
        if self.request { request::<C::Request>(self.frame) } else { response::<C::Response>(self.frame) }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, frame)) = data.split_first() else { return };
    // The first byte picks the channel (every channel of the one list) and the direction.
    let which = usize::from(which);
    let channel = Channel::ALL[(which / 2) % Channel::ALL.len()];
    channel.visit(Decode { frame, request: which % 2 == 0 });
});
