//! The connection path: the accept loop hands each connection to its own
//! task (`server`), which checks the peer and routes its handshake to a
//! channel (`router`); the channel's handler then reads requests and writes
//! responses through a [`session::Session`].

pub(crate) mod router;
pub(crate) mod server;
pub(crate) mod session;
