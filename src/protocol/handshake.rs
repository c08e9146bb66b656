//! The handshake: the first frame of every connection names a channel and a
//! protocol version; the daemon accepts or refuses it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::PROTOCOL_VERSION;
pub use super::channel::Channel;
use super::error::{ErrorCode, WireError};

/// The first frame a client sends.
///
/// ```
/// use hearth::protocol::handshake::{Channel, Handshake};
/// let hs = Handshake::new(Channel::Status, Some("my-app/1.2.0".into()));
/// assert_eq!(
///     serde_json::to_string(&hs).unwrap(),
///     r#"{"channel":"status","protocol":1,"client":"my-app/1.2.0"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handshake {
    /// The channel this connection will talk to.
    pub channel: Channel,
    /// The protocol version the client speaks.
    pub protocol: u32,
    /// `<name>/<version>` of the client, for the daemon's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Fields a channel takes beyond these (such as the document a sync
    /// connection opens); the channel's service reads and checks them.
    #[serde(flatten, default, skip_serializing_if = "Map::is_empty")]
    pub params: Map<String, Value>,
}

impl Handshake {
    /// A handshake for `channel` at this library's protocol version.
    pub fn new(channel: Channel, client: Option<String>) -> Self {
        Self { channel, protocol: PROTOCOL_VERSION, client, params: Map::new() }
    }

    /// The same handshake with a channel's extra field `name` set to `value`.
    pub fn with_param(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.params.insert(name.to_owned(), value.into());
        self
    }

    /// Parses a handshake frame the way the daemon does, classifying every
    /// failure with its own code: not an object with `channel` and `protocol`
    /// (`invalid_handshake`), another protocol (`unsupported_protocol`), a
    /// channel that does not exist (`unknown_channel`).
    pub fn parse(frame: &[u8]) -> Result<Handshake, WireError> {
        // `params` takes every other field; being flattened, it also makes
        // serde read the frame as a map only, so an array is refused.
        #[derive(Deserialize)]
        struct Raw {
            channel: String,
            protocol: u64,
            #[serde(default)]
            client: Option<String>,
            #[serde(flatten)]
            params: Map<String, Value>,
        }
        let raw: Raw = serde_json::from_slice(frame).map_err(|e| {
            WireError::new(
                ErrorCode::InvalidHandshake,
                format!(
                    "the first frame must be a handshake like \
                     {{\"channel\":\"status\",\"protocol\":1}}: {e}"
                ),
            )
        })?;
        if raw.protocol != u64::from(PROTOCOL_VERSION) {
            return Err(WireError::new(
                ErrorCode::UnsupportedProtocol,
                format!("this daemon speaks protocol {PROTOCOL_VERSION}; the client asked for {}", raw.protocol),
            ));
        }
        let channel = Channel::from_name(&raw.channel).ok_or_else(|| {
            WireError::new(
                ErrorCode::UnknownChannel,
                format!("no channel named {:?}; channels are {}", truncate(&raw.channel, 64), Channel::names()),
            )
        })?;
        let client = raw.client.map(|c| truncate(&c, 128).to_owned());
        Ok(Handshake { channel, protocol: PROTOCOL_VERSION, client, params: raw.params })
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Who answered: the daemon's version and pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonIdent {
    /// The daemon's semver version.
    pub version: String,
    /// The daemon's process id.
    pub pid: u32,
}

/// The daemon's answer to a handshake.
///
/// On the wire an accepted handshake is
/// `{"ok":true,"protocol":1,"daemon":{...},"channel":"status","max_frame":16777216}`
/// and a refused one `{"ok":false,"protocol":1,"error":{"code":...,"message":...}}`
/// (with `daemon` when the peer is allowed to know it), after which the
/// daemon closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ReplyWire", into = "ReplyWire")]
pub enum HandshakeReply {
    /// The channel is ready for requests.
    Accepted(Accepted),
    /// The connection is refused and will be closed.
    Refused(Refused),
}

/// An accepted handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The protocol version in use.
    pub protocol: u32,
    /// The daemon that answered.
    pub daemon: DaemonIdent,
    /// The channel now open.
    pub channel: Channel,
    /// The maximum frame size the daemon accepts on this connection.
    pub max_frame: u64,
}

/// A refused handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The protocol version the daemon speaks.
    pub protocol: u32,
    /// The daemon, unless the peer may not know it (another user).
    pub daemon: Option<DaemonIdent>,
    /// Why.
    pub error: WireError,
}

#[derive(Serialize, Deserialize)]
struct ReplyWire {
    ok: bool,
    protocol: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    daemon: Option<DaemonIdent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    channel: Option<Channel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_frame: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<WireError>,
}

impl From<HandshakeReply> for ReplyWire {
    fn from(reply: HandshakeReply) -> Self {
        match reply {
            HandshakeReply::Accepted(a) => ReplyWire {
                ok: true,
                protocol: a.protocol,
                daemon: Some(a.daemon),
                channel: Some(a.channel),
                max_frame: Some(a.max_frame),
                error: None,
            },
            HandshakeReply::Refused(r) => ReplyWire {
                ok: false,
                protocol: r.protocol,
                daemon: r.daemon,
                channel: None,
                max_frame: None,
                error: Some(r.error),
            },
        }
    }
}

impl TryFrom<ReplyWire> for HandshakeReply {
    type Error = String;

    fn try_from(w: ReplyWire) -> Result<Self, String> {
        if w.ok {
            Ok(HandshakeReply::Accepted(Accepted {
                protocol: w.protocol,
                daemon: w.daemon.ok_or("accepted handshake without `daemon`")?,
                channel: w.channel.ok_or("accepted handshake without `channel`")?,
                max_frame: w.max_frame.ok_or("accepted handshake without `max_frame`")?,
            }))
        } else {
            Ok(HandshakeReply::Refused(Refused {
                protocol: w.protocol,
                daemon: w.daemon,
                error: w.error.ok_or("refused handshake without `error`")?,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(frame: &str) -> ErrorCode {
        Handshake::parse(frame.as_bytes()).unwrap_err().code
    }

    #[test]
    fn parse_classifies_failures() {
        assert_eq!(code_of("not json"), ErrorCode::InvalidHandshake);
        assert_eq!(code_of(r#"{"type":"ping"}"#), ErrorCode::InvalidHandshake);
        assert_eq!(code_of(r#"{"channel":"status","protocol":-1}"#), ErrorCode::InvalidHandshake);
        assert_eq!(code_of(r#"{"channel":"status","protocol":2}"#), ErrorCode::UnsupportedProtocol);
        assert_eq!(code_of(r#"{"channel":"nope","protocol":1}"#), ErrorCode::UnknownChannel);
        // Only an object is a handshake, even one whose values would fit in order.
        assert_eq!(code_of(r#"["status",1]"#), ErrorCode::InvalidHandshake);
        assert_eq!(code_of(r#"["status",1,"app/1"]"#), ErrorCode::InvalidHandshake);
        let hs = Handshake::parse(br#"{"channel":"status","protocol":1,"doc":"settings"}"#).unwrap();
        assert_eq!(hs.params.get("doc").and_then(Value::as_str), Some("settings"));
        assert_eq!(serde_json::to_value(&hs).unwrap()["doc"], "settings");
        let hs = Handshake::parse(br#"{"channel":"queue","protocol":1}"#).unwrap();
        assert_eq!(hs.channel, Channel::Queue);
    }

    #[test]
    fn replies_roundtrip() {
        let accepted = HandshakeReply::Accepted(Accepted {
            protocol: 1,
            daemon: DaemonIdent { version: "1.0.0".into(), pid: 7 },
            channel: Channel::Blob,
            max_frame: 1024,
        });
        let json = serde_json::to_string(&accepted).unwrap();
        assert!(json.starts_with(r#"{"ok":true,"protocol":1"#), "{json}");
        assert_eq!(serde_json::from_str::<HandshakeReply>(&json).unwrap(), accepted);

        let refused: HandshakeReply =
            serde_json::from_str(r#"{"ok":false,"protocol":1,"error":{"code":"unknown_channel","message":"no"}}"#)
                .unwrap();
        let HandshakeReply::Refused(r) = refused else { panic!("expected a refusal") };
        assert_eq!(r.error.code, ErrorCode::UnknownChannel);
        assert!(serde_json::from_str::<HandshakeReply>(r#"{"ok":true,"protocol":1}"#).is_err());
    }
}
