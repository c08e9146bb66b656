//! The channels: one list, from which the [`Channel`] enum, its wire
//! names, the per-service summaries of `status` and the generic dispatch
//! ([`Channel::visit`]) are all made.
//!
//! Everything that must know every channel (the handshake's error text,
//! proto-docs' check, the golden frames, the fuzz targets, the daemon's
//! router) goes through this list, so a new channel is one line here.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::WireError;

/// A channel's request and response types.
pub trait ChannelProtocol {
    /// The channel named in the handshake.
    const CHANNEL: Channel;
    /// Requests a client sends.
    type Request: Request;
    /// Responses the daemon sends.
    type Response: Response;
}

/// A request enum, internally tagged by `"type"`.
pub trait Request: Serialize + DeserializeOwned + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// Every `type` this channel accepts.
    const TYPES: &'static [&'static str];
}

/// A response enum, internally tagged by `"type"`, with an `error` variant.
pub trait Response: Serialize + DeserializeOwned + std::fmt::Debug + PartialEq + Send + Sync + 'static {
    /// The `{"type":"error",...}` response.
    fn from_error(error: WireError) -> Self;
    /// `Err` for the `error` variant, the response otherwise.
    fn into_result(self) -> Result<Self, WireError>;
}

/// Something done with one channel's protocol types, whichever channel it
/// is: see [`Channel::visit`].
pub trait ChannelVisitor {
    /// What the visit gives back.
    type Output;
    /// Called with the channel's protocol type.
    fn visit<C: ChannelProtocol>(self) -> Self::Output;
}

macro_rules! channels {
    ($(
        $(#[$doc:meta])*
        $variant:ident = $name:literal => $proto:ty $(, summary $field:ident: $summary:ty)?;
    )+) => {
        /// A service on the socket. Each connection talks to exactly one channel.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum Channel {
            $( $(#[$doc])* #[serde(rename = $name)] $variant, )+
        }

        impl Channel {
            /// Every channel of protocol version 1, in documentation order.
            pub const ALL: &'static [Channel] = &[$(Channel::$variant,)+];

            /// The wire name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Channel::$variant => $name,)+
                }
            }

            /// Calls `visitor` with this channel's protocol type.
            pub fn visit<V: ChannelVisitor>(self, visitor: V) -> V::Output {
                match self {
                    $(Channel::$variant => visitor.visit::<$proto>(),)+
                }
            }
        }

        /// One summary per service that runs, keyed by channel name, in
        /// `status` and `heartbeat.json`; a service that does not run is absent.
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct ServiceSummaries {
            $($(
                #[doc = concat!("The `", $name, "` service's summary.")]
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $field: Option<$summary>,
            )?)+
        }
    };
}

channels! {
    /// `ping`, `status`, `shutdown`.
    Status = "status" => super::status::StatusChannel;
    /// Prewarmed resources.
    Pool = "pool" => super::pool::PoolChannel, summary pool: super::pool::PoolSummary;
    /// The durable job queue.
    Queue = "queue" => super::queue::QueueChannel, summary queue: super::queue::QueueSummary;
    /// The content-addressed blob store.
    Blob = "blob" => super::blob::BlobChannel, summary blob: super::blob::Usage;
    /// Live Automerge documents shared by every window.
    Sync = "sync" => super::sync::SyncChannel, summary sync: super::sync::SyncSummary;
    /// Supervised long-running processes.
    Process = "process" => super::process::ProcessChannel, summary process: super::process::ProcessSummary;
}

impl Channel {
    /// Parses a wire name.
    pub fn from_name(name: &str) -> Option<Channel> {
        Channel::ALL.iter().copied().find(|c| c.as_str() == name)
    }

    /// The wire names, comma-separated, for messages.
    pub fn names() -> String {
        Channel::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
    }
}

impl std::fmt::Display for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Name;

    impl ChannelVisitor for Name {
        type Output = Channel;
        fn visit<C: ChannelProtocol>(self) -> Channel {
            C::CHANNEL
        }
    }

    #[test]
    fn the_list_agrees_with_itself() {
        for &channel in Channel::ALL {
            assert_eq!(channel.visit(Name), channel, "{channel} dispatches to its own protocol type");
            assert_eq!(Channel::from_name(channel.as_str()), Some(channel));
            let json = serde_json::to_string(&channel).unwrap();
            assert_eq!(json, format!("\"{channel}\""));
        }
        assert_eq!(Channel::names(), "status, pool, queue, blob, sync, process");
    }
}
