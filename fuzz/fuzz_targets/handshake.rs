//! Handshake parsing: never panics; an accepted handshake re-encodes to one
//! that parses the same.
#![no_main]

use hearth::protocol::handshake::{Handshake, HandshakeReply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hs) = Handshake::parse(data) {
        let again = serde_json::to_vec(&hs).unwrap();
        assert_eq!(Handshake::parse(&again).unwrap(), hs);
    }
    // The client side decodes replies from the daemon.
    if let Ok(reply) = serde_json::from_slice::<HandshakeReply>(data) {
        let again = serde_json::to_vec(&reply).unwrap();
        assert_eq!(serde_json::from_slice::<HandshakeReply>(&again).unwrap(), reply);
    }
});
