//! The `[sync]` section of `config.toml`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{ByteSize, HumanDuration};

/// The sync channel: limits, room upkeep and the settings document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Serve the `sync` channel.
    pub enabled: bool,
    /// Largest stored size of one document (its compacted form plus the
    /// changes appended since); writes that would pass it are refused.
    pub max_doc_size: ByteSize,
    /// Documents the store may hold; creating one more is refused.
    pub max_docs: u64,
    /// Peers one room may have at once.
    pub max_peers_per_room: u64,
    /// Largest Automerge sync message a replica peer may send.
    pub max_sync_message: ByteSize,
    /// Largest value one `write` operation may carry (as JSON).
    pub max_value_size: ByteSize,
    /// Writes one peer may have waiting for their commit at once; past
    /// this the daemon reads nothing more from that peer until one commits.
    pub max_pending_writes: u64,
    /// Patches a room keeps for peers that fall behind; a view peer further
    /// behind than this gets a fresh `snapshot` instead.
    pub patch_log_bytes: ByteSize,
    /// A peer that takes no frame for this long is disconnected (`peer_too_slow`).
    pub peer_write_timeout: HumanDuration,
    /// A room with no peers unloads after this long (its document stays on disk).
    pub idle_unload: HumanDuration,
    /// Compact a document once the changes appended since its last
    /// compaction exceed both this and its compacted size.
    pub compact_min_bytes: ByteSize,
    /// Mirror the `settings` document to `<state-dir>/settings.json` and
    /// merge a person's edits of that file back in.
    pub settings_mirror: bool,
    /// Defaults of the `settings` document: keys it gets when they are missing.
    pub settings_defaults: BTreeMap<String, toml::Value>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_doc_size: ByteSize(64 << 20),
            max_docs: 10_000,
            max_peers_per_room: 256,
            max_sync_message: ByteSize(8 << 20),
            max_value_size: ByteSize(1 << 20),
            max_pending_writes: 64,
            patch_log_bytes: ByteSize(1 << 20),
            peer_write_timeout: HumanDuration(Duration::from_secs(10)),
            idle_unload: HumanDuration(Duration::from_secs(60)),
            compact_min_bytes: ByteSize(1 << 20),
            settings_mirror: true,
            settings_defaults: BTreeMap::new(),
        }
    }
}

impl SyncConfig {
    /// Lowers the limits left at their defaults to `max_frame` (a sync
    /// message or a value travels in one frame): a small
    /// `server.max_frame` alone is a valid configuration. A limit set
    /// above `max_frame` is still refused by [`SyncConfig::validate`].
    pub fn fit_defaults_to_frame(&mut self, max_frame: u64) {
        let defaults = Self::default();
        for (limit, default) in [
            (&mut self.max_sync_message, defaults.max_sync_message),
            (&mut self.max_value_size, defaults.max_value_size),
        ] {
            if *limit == default && limit.0 > max_frame {
                limit.0 = max_frame;
            }
        }
    }

    /// Checks ranges that types cannot express; `max_frame` is `server.max_frame`.
    pub fn validate(&self, max_frame: u64) -> Result<(), String> {
        if self.max_sync_message.0 > max_frame {
            return Err(format!(
                "sync.max_sync_message ({}) must not exceed server.max_frame ({max_frame} bytes)",
                self.max_sync_message
            ));
        }
        if self.max_value_size.0 > max_frame {
            return Err(format!(
                "sync.max_value_size ({}) must not exceed server.max_frame ({max_frame} bytes)",
                self.max_value_size
            ));
        }
        for (key, n) in [
            ("sync.max_docs", self.max_docs),
            ("sync.max_peers_per_room", self.max_peers_per_room),
            ("sync.max_pending_writes", self.max_pending_writes),
        ] {
            if n == 0 {
                return Err(format!("{key} must be at least 1"));
            }
        }
        if self.max_doc_size.0 < 4096 || self.max_sync_message.0 < 1024 || self.max_value_size.0 < 64 {
            return Err(
                "sync.max_doc_size must be at least 4KiB, sync.max_sync_message 1KiB, sync.max_value_size 64 bytes"
                    .into(),
            );
        }
        if self.peer_write_timeout.0.is_zero() {
            return Err("sync.peer_write_timeout must be longer than 0s".into());
        }
        if self.settings_defaults.contains_key(super::settings::SCHEMA_KEY) {
            return Err(format!(
                "sync.settings_defaults must not set {:?}: the daemon owns it",
                super::settings::SCHEMA_KEY
            ));
        }
        Ok(())
    }
}
