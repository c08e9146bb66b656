//! Every channel's request decoding (what the daemon does with a frame) and
//! response decoding (what a client does): never panics, and whatever
//! decodes re-encodes to a value that decodes the same.
#![no_main]

use std::fmt::Debug;

use hearth::protocol::blob::{BlobRequest, BlobResponse};
use hearth::protocol::pool::{PoolRequest, PoolResponse};
use hearth::protocol::queue::{QueueRequest, QueueResponse};
use hearth::protocol::status::{StatusRequest, StatusResponse};
use hearth::protocol::{Request, decode_request};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn request<R: Request + PartialEq + Debug>(frame: &[u8]) {
    if let Ok(req) = decode_request::<R>(frame) {
        let again = serde_json::to_vec(&req).unwrap();
        assert_eq!(decode_request::<R>(&again).unwrap(), req);
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

fuzz_target!(|data: &[u8]| {
    let Some((&which, frame)) = data.split_first() else { return };
    match which % 8 {
        0 => request::<StatusRequest>(frame),
        1 => request::<PoolRequest>(frame),
        2 => request::<QueueRequest>(frame),
        3 => request::<BlobRequest>(frame),
        4 => response::<StatusResponse>(frame),
        5 => response::<PoolResponse>(frame),
        6 => response::<QueueResponse>(frame),
        _ => response::<BlobResponse>(frame),
    }
});
