//! The `blob` channel: a content-addressed store (sha256), streamed over the
//! socket.
//!
//! Most requests are one JSON frame answered by one JSON frame. `put` and
//! `get` stream raw data frames (any bytes, not JSON) between JSON frames:
//!
//! ```text
//!   put                                         get
//!   client              daemon                  client              daemon
//!   -- {"type":"put",...} -->                   -- {"type":"get",...} -->
//!   <-- {"type":"ready"} --                     <-- {"type":"content",...} --
//!   -- raw data frame ------>  (any number,     <-- raw data frame ----  (until `length`
//!   -- raw data frame ------>   each ≤ max_frame)<-- raw data frame ----   bytes were sent)
//!   -- empty frame --------->  end marker       <-- empty frame -------  end marker
//!   <-- {"type":"stored",...} --
//! ```
//!
//! A put the daemon rejects part-way is answered with an `error` frame at once;
//! the daemon then discards data frames up to the end marker, so the
//! connection stays in step. A get that fails part-way ends with the end
//! marker before `length` bytes, followed by one `error` frame. The long form
//! is `proto-docs/blob.md`.
//!
//! ```
//! use hearth::protocol::blob::BlobHash;
//! let hash: BlobHash = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".parse().unwrap();
//! assert_eq!(hash.hex(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
//! assert!("sha256:E3B0".parse::<BlobHash>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::WireError;
use super::handshake::Channel;
use super::{ChannelProtocol, Request, Response};

/// The `blob` channel.
#[derive(Debug)]
pub struct BlobChannel;

impl ChannelProtocol for BlobChannel {
    const CHANNEL: Channel = Channel::Blob;
    type Request = BlobRequest;
    type Response = BlobResponse;
}

/// The prefix of every content address.
pub const HASH_PREFIX: &str = "sha256:";

/// Longest `name` a blob may carry, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// Longest `media_type` a blob may carry, in bytes.
pub const MAX_MEDIA_TYPE_LEN: usize = 127;

/// Most blobs one `list` page returns.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// `list` page size when the request gives none.
pub const DEFAULT_LIST_LIMIT: u32 = 100;

/// A content address: `sha256:` and 64 lowercase hex digits. Nothing else
/// parses, so a `BlobHash` is always safe to turn into a file name.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlobHash(String);

/// A string that is not a content address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid blob hash {shown:?}: expected \"sha256:\" and 64 lowercase hex digits")]
pub struct InvalidHash {
    shown: String,
}

impl BlobHash {
    /// Parses `sha256:<64 lowercase hex>`.
    pub fn parse(s: &str) -> Result<BlobHash, InvalidHash> {
        let valid = s.len() == HASH_PREFIX.len() + 64
            && s.starts_with(HASH_PREFIX)
            && s.as_bytes()[HASH_PREFIX.len()..].iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if valid {
            Ok(BlobHash(s.to_owned()))
        } else {
            let mut shown: String = s.chars().take(80).collect();
            if shown.len() < s.len() {
                shown.push('…');
            }
            Err(InvalidHash { shown })
        }
    }

    /// The address of a sha256 digest.
    pub fn from_digest(digest: &[u8; 32]) -> BlobHash {
        use std::fmt::Write;
        let mut s = String::with_capacity(HASH_PREFIX.len() + 64);
        s.push_str(HASH_PREFIX);
        for b in digest {
            let _ = write!(s, "{b:02x}");
        }
        BlobHash(s)
    }

    /// The full address, `sha256:…`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64 hex digits.
    pub fn hex(&self) -> &str {
        &self.0[HASH_PREFIX.len()..]
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", self.0)
    }
}

impl FromStr for BlobHash {
    type Err = InvalidHash;
    fn from_str(s: &str) -> Result<Self, InvalidHash> {
        BlobHash::parse(s)
    }
}

impl Serialize for BlobHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        BlobHash::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A request on the `blob` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlobRequest {
    /// Store a blob → `ready`, then raw data frames and an empty frame → `stored`.
    Put(PutRequest),
    /// Stream a blob (or a byte range of it) → `content`, raw data frames, an empty frame.
    Get(GetRequest),
    /// A blob's metadata → `stat`.
    Stat {
        /// The blob.
        hash: BlobHash,
    },
    /// Whether a blob is stored → `has`.
    Has {
        /// The blob.
        hash: BlobHash,
    },
    /// Remove a blob → `deleted`.
    Delete {
        /// The blob.
        hash: BlobHash,
        /// Remove it even if it is pinned.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// One page of blobs, in hash order → `list`.
    List {
        /// The `next_cursor` of the previous page; absent for the first page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
        /// Blobs per page (1 to 1000, default 100).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Protect a blob from garbage collection → `pin_state`.
    Pin {
        /// The blob.
        hash: BlobHash,
    },
    /// Let garbage collection remove a blob again → `pin_state`.
    Unpin {
        /// The blob.
        hash: BlobHash,
    },
    /// Remove least-recently-used unpinned blobs until the store fits its budget → `gc`.
    Gc {
        /// Collect down to this many bytes instead of the configured budget.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target_bytes: Option<u64>,
    },
    /// The store's totals, budget and HTTP URL → `usage`.
    Usage,
}

impl Request for BlobRequest {
    const TYPES: &'static [&'static str] =
        &["put", "get", "stat", "has", "delete", "list", "pin", "unpin", "gc", "usage"];
}

/// The header frame of a put. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutRequest {
    /// The content's address, if the client knows it: the put fails with
    /// `hash_mismatch` when the data hashes otherwise, and is answered
    /// `stored` at once (no data sent) when the blob is already stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<BlobHash>,
    /// The content's length, if the client knows it: the put fails with
    /// `size_mismatch` as soon as the data disagrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// A media type such as `image/png` (stored as given, served over HTTP
    /// only if it is on the allowlist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// A name for people (a file name, a label); not unique, never a path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Pin the blob (also when it was already stored).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pin: bool,
}

/// A get, optionally of a byte range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetRequest {
    /// The blob.
    pub hash: BlobHash,
    /// First byte to send (default 0); at most the blob's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Most bytes to send (default: to the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
}

/// A response on the `blob` channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BlobResponse {
    /// The put header is accepted: send the data frames, then an empty frame.
    Ready,
    /// The put is durable (or the content was already stored).
    Stored(Stored),
    /// The header of a get: `length` bytes of raw data frames and an empty frame follow.
    Content(Content),
    /// A blob's metadata.
    Stat(BlobInfo),
    /// Whether a blob is stored.
    Has {
        /// The blob asked about.
        hash: BlobHash,
        /// Whether it is stored.
        present: bool,
    },
    /// The blob is gone.
    Deleted {
        /// The blob.
        hash: BlobHash,
        /// Bytes freed.
        size: u64,
    },
    /// One page of blobs.
    List {
        /// Blobs in ascending hash order.
        blobs: Vec<BlobInfo>,
        /// Pass it back as `cursor` for the next page; absent on the last page.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        next_cursor: Option<String>,
    },
    /// A blob's pin after `pin` or `unpin`.
    PinState {
        /// The blob.
        hash: BlobHash,
        /// Whether it is pinned now.
        pinned: bool,
    },
    /// What a collection removed.
    Gc(GcReport),
    /// The store's totals.
    Usage(Usage),
    /// The request failed; the connection stays usable.
    Error(WireError),
}

impl Response for BlobResponse {
    fn from_error(error: WireError) -> Self {
        BlobResponse::Error(error)
    }
    fn into_result(self) -> Result<Self, WireError> {
        match self {
            BlobResponse::Error(e) => Err(e),
            other => Ok(other),
        }
    }
}

/// The answer to a finished put.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The content's address.
    pub hash: BlobHash,
    /// Its length in bytes.
    pub size: u64,
    /// True when the content was already stored (this put added nothing).
    pub existed: bool,
}

/// The header of a streamed get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Content {
    /// The blob.
    pub hash: BlobHash,
    /// The whole blob's size.
    pub size: u64,
    /// The first byte that follows.
    pub offset: u64,
    /// How many bytes follow.
    pub length: u64,
    /// The stored media type, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
}

/// A blob's metadata (its sidecar).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobInfo {
    /// The content's address.
    pub hash: BlobHash,
    /// Its length in bytes.
    pub size: u64,
    /// The media type given at put, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The name given at put, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether garbage collection leaves it alone.
    pub pinned: bool,
    /// When it was first stored, ms since the epoch.
    pub created_at_ms: u64,
    /// When it was last put, read or stat'ed, ms since the epoch (coarse: see proto-docs).
    pub last_access_at_ms: u64,
}

/// What a collection did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Blobs removed.
    pub removed: u64,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// The size the pass collected down to; absent when there was none (no budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_bytes: Option<u64>,
    /// The store after the pass.
    pub usage: Usage,
}

/// The store's totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Blobs stored.
    pub count: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Pinned blobs.
    pub pinned_count: u64,
    /// Their total size in bytes.
    pub pinned_bytes: u64,
    /// The size budget (`blob.max_bytes`); absent when unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_bytes: Option<u64>,
    /// The HTTP read server's base URL; a blob is at `<http_url>/blob/<hash>`.
    /// Absent when the HTTP server is disabled or could not start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::decode_request;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn hashes_are_strict() {
        assert!(BlobHash::parse(EMPTY).is_ok());
        for bad in [
            "",
            "sha256:",
            &EMPTY[..EMPTY.len() - 1],
            &format!("{EMPTY}0"),
            &EMPTY.to_uppercase(),
            &EMPTY.replace("sha256:", "SHA256:"),
            &EMPTY.replace("sha256:", "sha512:"),
            &EMPTY.replace('e', "g"),
            &format!("sha256:../{}", &EMPTY[10..]),
            &EMPTY.replace("e3", "é"),
        ] {
            assert!(BlobHash::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(BlobHash::from_digest(&[0xab; 32]).hex(), "ab".repeat(32));
    }

    #[test]
    fn a_bad_hash_is_an_invalid_request() {
        let err = decode_request::<BlobRequest>(br#"{"type":"stat","hash":"sha256:../../etc/passwd"}"#).unwrap_err();
        assert_eq!(err.code, crate::protocol::ErrorCode::InvalidRequest);
        assert!(err.message.contains("64 lowercase hex"), "{}", err.message);
    }

    #[test]
    fn every_listed_type_is_known_to_serde() {
        for kind in BlobRequest::TYPES {
            let frame = format!(r#"{{"type":"{kind}","hash":"{EMPTY}"}}"#);
            let result = decode_request::<BlobRequest>(frame.as_bytes());
            assert!(result.is_ok(), "{kind}: {result:?}");
        }
    }
}
