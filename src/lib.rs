//! hearth: a per-user singleton daemon that desktop apps, CLIs and scripts
//! share over one Unix socket.
//!
//! - [`protocol`]: the wire contract (frames, handshake, one request and one
//!   response enum per channel, error codes).
//! - [`client`]: an async client, a blocking wrapper, and
//!   [`ensure_daemon_running`](client::ensure_daemon_running), which a desktop
//!   app calls at launch.
//! - [`connection`]: the framed connection both sides use.
//! - [`paths`]: where the state directory and the socket are.
//! - [`sys`]: the few system calls hearth makes, each wrapped once.
//! - [`time`]: timestamps as the protocol writes them.
//! - `daemon` (feature `daemon`): the server (its module docs map its files
//!   and list what a new channel touches); `units` (feature `daemon`):
//!   human sizes and durations in settings; `unit_files` (feature `cli`):
//!   the systemd and launchd files `hearth daemon install` writes.
//!
//! A desktop app depends on the light client only:
//! `hearth = { version = "0.1", default-features = false, features = ["client"] }`.

// The library never prints: it returns errors and logs through `tracing`.
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod connection;
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "client")]
pub mod paths;
#[cfg(feature = "client")]
pub mod protocol;
#[cfg(feature = "client")]
pub mod sys;
#[cfg(feature = "client")]
pub mod time;
#[cfg(feature = "cli")]
pub mod unit_files;
#[cfg(feature = "daemon")]
pub mod units;

/// The README's Rust examples compile as doctests, so they stay true.
#[cfg(all(doctest, feature = "client"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
