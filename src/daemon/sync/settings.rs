//! The built-in `settings` document: its defaults and schema version, and
//! its mirror `<state-dir>/settings.json`, which a person may edit.
//!
//! The mirror is written atomically (temp file, fsync, rename), never in
//! place, so a reader never sees half a file. Before each write the daemon
//! records the exact bytes in `sync/settings.mirror.json`; the watcher
//! ignores any content whose hash it wrote itself, so the daemon never
//! takes its own (possibly stale) mirror for a person's edit. A person's
//! edit is merged as the difference between what the daemon last wrote
//! and what the file now holds, applied to the current document: keys the
//! person did not touch keep whatever the apps wrote meanwhile. An edit
//! that is not a JSON object, or that changes `schema_version`, is
//! refused: reported in health and the log, never applied.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::rooms::Rooms;
use crate::daemon::events::EventBus;
use crate::daemon::fsutil;
use crate::protocol::Channel;
use crate::protocol::event::EventData;
use crate::protocol::sync::{DocName, PatchOp, PathElem, SETTINGS_DOC};
use crate::protocol::{ErrorCode, WireError};

/// The key that holds the schema version.
pub(crate) const SCHEMA_KEY: &str = "schema_version";

/// The schema version this daemon writes.
pub(crate) const SCHEMA_VERSION: i64 = 1;

/// The largest settings.json the watcher reads.
const MAX_MIRROR_BYTES: u64 = 4 << 20;

/// Hashes of recent mirror writes remembered (events can arrive late).
const RECENT_WRITES: usize = 16;

/// How long after its last event the watcher reads the file (an editor's
/// save can be several events).
const SETTLE: Duration = Duration::from_millis(20);

/// One migration: the operations that take a document from version `n`
/// to `n + 1`, given its JSON.
type Migration = fn(&Map<String, Value>) -> Vec<PatchOp>;

/// `MIGRATIONS[n]` takes version `n` to `n + 1`. Version 0 is a document
/// without `schema_version` (created by hand, or before versioning): its
/// keys are kept as they are and the version is stamped.
const MIGRATIONS: [Migration; 1] = [|_| Vec::new()];

fn key(k: &str) -> PathElem {
    PathElem::Key(k.to_owned())
}

/// The settings document's name.
pub(crate) fn settings_doc() -> DocName {
    DocName::parse(SETTINGS_DOC).expect("a valid name")
}

/// Why a settings document cannot be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UpgradeError {
    /// Written by a newer daemon: left as it is.
    #[error(
        "the settings document has schema version {0}; this daemon knows up to {SCHEMA_VERSION} and leaves it as it is"
    )]
    Newer(i64),
    /// `schema_version` is not an integer.
    #[error("the settings document's schema_version is {0}, not an integer")]
    Invalid(String),
}

/// The operations that migrate `current` to [`SCHEMA_VERSION`] and fill
/// in missing defaults (never overwriting a value that is there).
pub(crate) fn upgrade_ops(current: &Value, defaults: &Map<String, Value>) -> Result<Vec<PatchOp>, UpgradeError> {
    let empty = Map::new();
    let map = current.as_object().unwrap_or(&empty);
    let version = match map.get(SCHEMA_KEY) {
        None => 0,
        Some(v) => v.as_i64().ok_or_else(|| UpgradeError::Invalid(v.to_string()))?,
    };
    if version > SCHEMA_VERSION {
        return Err(UpgradeError::Newer(version));
    }
    let mut ops = Vec::new();
    for migration in MIGRATIONS.iter().skip(usize::try_from(version.max(0)).unwrap_or(0)) {
        ops.extend(migration(map));
    }
    if version != SCHEMA_VERSION {
        ops.push(PatchOp::Put { path: vec![key(SCHEMA_KEY)], value: Value::from(SCHEMA_VERSION), kind: None });
    }
    fill_defaults(map, defaults, &mut Vec::new(), &mut ops);
    Ok(ops)
}

fn fill_defaults(
    current: &Map<String, Value>,
    defaults: &Map<String, Value>,
    at: &mut Vec<PathElem>,
    ops: &mut Vec<PatchOp>,
) {
    for (k, default) in defaults {
        at.push(key(k));
        match (current.get(k), default) {
            (None, _) => ops.push(PatchOp::Put { path: at.clone(), value: default.clone(), kind: None }),
            (Some(Value::Object(have)), Value::Object(want)) => fill_defaults(have, want, at, ops),
            (Some(_), _) => {}
        }
        at.pop();
    }
}

/// The operations that turn `base` into `edited`, for the keys that differ
/// (`schema_version` excepted), made safe to apply to `current`: a delete of
/// a key already gone is dropped, a put under a parent already gone puts
/// the parent.
pub(crate) fn merge_ops(base: &Value, edited: &Value, current: &Value) -> Vec<PatchOp> {
    let mut ops = Vec::new();
    diff(base, edited, &mut Vec::new(), &mut ops);
    ops.into_iter().filter_map(|op| rebase(op, current, edited)).collect()
}

fn diff(base: &Value, edited: &Value, at: &mut Vec<PathElem>, ops: &mut Vec<PatchOp>) {
    match (base, edited) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, ev) in e {
                if at.is_empty() && k == SCHEMA_KEY {
                    continue;
                }
                at.push(key(k));
                match b.get(k) {
                    Some(bv) if bv == ev => {}
                    Some(bv) => diff(bv, ev, at, ops),
                    None => ops.push(PatchOp::Put { path: at.clone(), value: ev.clone(), kind: None }),
                }
                at.pop();
            }
            for k in b.keys().filter(|k| !e.contains_key(*k)) {
                if at.is_empty() && k == SCHEMA_KEY {
                    continue;
                }
                let mut path = at.clone();
                path.push(key(k));
                ops.push(PatchOp::Delete { path, count: None });
            }
        }
        (b, e) if b != e => ops.push(PatchOp::Put { path: at.clone(), value: e.clone(), kind: None }),
        _ => {}
    }
}

fn lookup<'a>(value: &'a Value, path: &[PathElem]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, step| match (v, step) {
        (Value::Object(m), PathElem::Key(k)) => m.get(k),
        _ => None,
    })
}

fn rebase(op: PatchOp, current: &Value, edited: &Value) -> Option<PatchOp> {
    match op {
        PatchOp::Delete { path, .. } => lookup(current, &path).map(|_| PatchOp::Delete { path, count: None }),
        PatchOp::Put { path, value, kind } => {
            // The deepest ancestor that is still a map in the document.
            let mut depth = path.len() - 1;
            while depth > 0 && !matches!(lookup(current, &path[..depth]), Some(Value::Object(_))) {
                depth -= 1;
            }
            if depth == path.len() - 1 {
                return Some(PatchOp::Put { path, value, kind });
            }
            let parent = path[..=depth].to_vec();
            lookup(edited, &parent).map(|v| PatchOp::Put { path: parent, value: v.clone(), kind: None })
        }
        other => Some(other),
    }
}

/// A refused edit of settings.json, for health.
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub(crate) at_ms: u64,
    pub(crate) why: String,
}

/// The mirror and its watcher.
#[derive(Debug)]
pub(crate) struct Mirror {
    pub(crate) file: PathBuf,
    record: PathBuf,
    recent: Mutex<VecDeque<[u8; 32]>>,
    /// What the daemon last wrote, parsed: the base a person's edit is measured against.
    last: Mutex<Option<Value>>,
    refused: Mutex<Option<Refused>>,
    pub(crate) merged: AtomicU64,
    pub(crate) writes: AtomicU64,
    wake: Notify,
    /// Where merged and refused edits are published.
    events: Arc<EventBus>,
}

fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Mirror {
    pub(crate) fn new(state_dir: &Path, store_dir: &Path, events: Arc<EventBus>) -> Arc<Mirror> {
        let record = store_dir.join("settings.mirror.json");
        let last = fsutil::read_small(&record, MAX_MIRROR_BYTES).ok().and_then(|b| serde_json::from_slice(&b).ok());
        Arc::new(Mirror {
            file: state_dir.join("settings.json"),
            record,
            recent: Mutex::new(VecDeque::new()),
            last: Mutex::new(last),
            refused: Mutex::new(None),
            merged: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            wake: Notify::new(),
            events,
        })
    }

    pub(crate) fn refused(&self) -> Option<Refused> {
        self.refused.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn is_ours(&self, bytes: &[u8]) -> bool {
        let h = hash(bytes);
        self.recent.lock().unwrap_or_else(PoisonError::into_inner).contains(&h)
    }

    /// Whether settings.json holds text the daemon did not write: a
    /// person's edit not merged yet (or one already refused).
    fn holds_unmerged_edit(&self) -> bool {
        fsutil::read_small(&self.file, MAX_MIRROR_BYTES + 1).is_ok_and(|bytes| !self.is_ours(&bytes))
    }

    /// Writes `value` to the mirror unless it already holds it. The record
    /// goes first, so a crash between the two leaves content that the next
    /// start recognises as the daemon's own.
    fn write(&self, value: &Value) -> std::io::Result<bool> {
        let mut text = serde_json::to_vec_pretty(value).map_err(std::io::Error::other)?;
        text.push(b'\n');
        // The file already says what the document says (the daemon wrote it,
        // or merged it from there): nothing to write. Bytes other than the
        // daemon's text are then a person's (the edit it merged, or a newer
        // one on its way to the watcher), never to be written over.
        if self.last.lock().unwrap_or_else(PoisonError::into_inner).as_ref() == Some(value) && self.file.exists() {
            return Ok(false);
        }
        {
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.push_back(hash(&text));
            while recent.len() > RECENT_WRITES {
                recent.pop_front();
            }
        }
        fsutil::write_atomic(&self.record, &text, 0o600, true)?;
        if self.refused().is_some() && self.file.exists() {
            // Keep the person's refused text rather than writing over it.
            let aside = self.file.with_extension(format!("json.rejected-{}", crate::time::now_ms()));
            let _ = std::fs::rename(&self.file, aside);
        }
        fsutil::write_atomic(&self.file, &text, 0o600, true)?;
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(value.clone());
        self.writes.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    fn refuse(&self, why: String) {
        tracing::warn!(file = %self.file.display(), "refusing an edit of settings.json: {why}");
        // The same edit read again (the file is checked before each mirror
        // write while it sits there) is not news.
        let again = self.refused().is_some_and(|r| r.why == why);
        let event = EventData::SyncSettingsEdit { applied: false, reason: Some(why.clone()) };
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(Refused { at_ms: crate::time::now_ms(), why });
        if !again {
            self.events.publish(Channel::Sync, event);
        }
    }

    /// Reads settings.json and merges a person's edit in, if it holds one.
    async fn check_file(&self, rooms: &Rooms) -> Result<(), WireError> {
        let bytes = match fsutil::read_small(&self.file, MAX_MIRROR_BYTES + 1) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                self.refuse(format!("cannot read it: {e}"));
                return Ok(());
            }
        };
        if self.is_ours(&bytes) {
            return Ok(());
        }
        if bytes.len() as u64 > MAX_MIRROR_BYTES {
            self.refuse(format!("it is larger than {MAX_MIRROR_BYTES} bytes"));
            return Ok(());
        }
        let edited: Value = match serde_json::from_slice(&bytes) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => {
                self.refuse("it is not a JSON object".into());
                return Ok(());
            }
            Err(e) => {
                self.refuse(format!("it is not valid JSON: {e}"));
                return Ok(());
            }
        };
        let room = rooms.open(&settings_doc()).await?;
        let (_, current) = room.get(&[])?;
        if let Some(v) = edited.get(SCHEMA_KEY)
            && Some(v) != current.get(SCHEMA_KEY)
        {
            self.refuse(format!(
                "it sets {SCHEMA_KEY} to {v}; the daemon manages the schema version ({})",
                current.get(SCHEMA_KEY).unwrap_or(&Value::Null)
            ));
            return Ok(());
        }
        let base = self.last.lock().unwrap_or_else(PoisonError::into_inner).clone().unwrap_or_else(|| current.clone());
        let ops = merge_ops(&base, &edited, &current);
        *self.refused.lock().unwrap_or_else(PoisonError::into_inner) = None;
        if ops.is_empty() {
            return Ok(());
        }
        tracing::info!(ops = ops.len(), "merging an edit of settings.json");
        let applied = room.write(&rooms.writer, &ops, None)?;
        if let Some(durable) = applied.durable {
            durable
                .await
                .map_err(|_| WireError::new(ErrorCode::ShuttingDown, "the sync store closed"))?
                .map_err(|e| WireError::new(ErrorCode::StoreFailed, e.to_string()))?;
        }
        // The next mirror write measures later edits against the file as
        // the person left it.
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(edited);
        self.merged.fetch_add(1, Ordering::Relaxed);
        self.events.publish(Channel::Sync, EventData::SyncSettingsEdit { applied: true, reason: None });
        Ok(())
    }
}

/// Applies migrations and defaults to the settings document (at start).
pub(crate) async fn upgrade(rooms: &Rooms, defaults: &Map<String, Value>) -> Result<Option<UpgradeError>, WireError> {
    let room = rooms.open(&settings_doc()).await?;
    let (_, current) = room.get(&[])?;
    let ops = match upgrade_ops(&current, defaults) {
        Ok(ops) => ops,
        Err(e) => {
            tracing::warn!("{e}");
            return Ok(Some(e));
        }
    };
    if !ops.is_empty() {
        let applied = room.write(&rooms.writer, &ops, None)?;
        if let Some(durable) = applied.durable {
            let _ = durable.await;
        }
    }
    Ok(None)
}

/// Keeps settings.json equal to the document, and merges a person's edits,
/// until `stop`.
pub(crate) async fn run(mirror: Arc<Mirror>, rooms: Arc<Rooms>, stop: CancellationToken) {
    // An edit made while the daemon was down comes in first.
    if let Err(e) = mirror.check_file(&rooms).await {
        tracing::warn!("cannot merge settings.json: {e}");
    }
    let watcher = watch_file(&mirror);
    if let Err(e) = &watcher {
        tracing::warn!("cannot watch {}: {e}; edits of it are merged at the next start", mirror.file.display());
    }
    let name = settings_doc();
    loop {
        let room = tokio::select! {
            () = stop.cancelled() => return,
            room = rooms.open(&name) => match room {
                Ok(room) => room,
                Err(e) => {
                    tracing::warn!("the settings room cannot open: {e}");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let mut durable = room.subscribe_durable();
        // The file is written when the document changes, never because it
        // was read: a person's editor may be halfway through its save.
        let mut stale = true;
        loop {
            if stale && mirror.holds_unmerged_edit() {
                // A person's edit whose wake-up has not been handled yet
                // would be lost under the write: merge it first.
                if let Err(e) = mirror.check_file(&rooms).await {
                    tracing::warn!("cannot merge settings.json: {e}");
                }
            }
            if stale && let Ok((_, value)) = room.get(&[]) {
                stale = false;
                let writer = mirror.clone();
                if let Ok(Err(e)) = tokio::task::spawn_blocking(move || writer.write(&value)).await {
                    tracing::warn!(file = %mirror.file.display(), "cannot write the settings mirror: {e}");
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = room.closed.cancelled() => break,
                changed = durable.changed() => match changed {
                    Ok(()) => stale = true,
                    Err(_) => break,
                },
                () = mirror.wake.notified() => {
                    // Let an editor's burst of events settle, then read once.
                    tokio::time::sleep(SETTLE).await;
                    if let Err(e) = mirror.check_file(&rooms).await {
                        tracing::warn!("cannot merge settings.json: {e}");
                    }
                }
            }
        }
    }
}

/// Starts a watcher on the state directory that wakes the mirror task when
/// settings.json changes. (The directory, not the file: a rename over the
/// file replaces it.)
fn watch_file(mirror: &Arc<Mirror>) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let target = mirror.file.file_name().map(std::ffi::OsStr::to_owned);
    let weak = Arc::downgrade(mirror);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reads (the daemon's own among them) are not edits: waking on them
        // would read the file again, forever.
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        if event.paths.iter().any(|p| p.file_name().map(std::ffi::OsStr::to_owned) == target)
            && let Some(mirror) = weak.upgrade()
        {
            mirror.wake.notify_one();
        }
    })?;
    let dir = mirror.file.parent().unwrap_or(Path::new("."));
    watcher.watch(dir, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn defaults(v: &Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn apply(mut doc: Value, ops: &[PatchOp]) -> Value {
        for op in ops {
            crate::protocol::sync::apply_patch(&mut doc, &[], op).unwrap();
        }
        doc
    }

    #[test]
    fn upgrade_stamps_the_version_and_fills_missing_defaults_only() {
        let d = defaults(&json!({"theme": "system", "editor": {"font_size": 13, "wrap": true}}));
        let doc = json!({"editor": {"font_size": 16}, "mine": 1});
        let ops = upgrade_ops(&doc, &d).unwrap();
        assert_eq!(
            apply(doc, &ops),
            json!({"schema_version": 1, "theme": "system", "editor": {"font_size": 16, "wrap": true}, "mine": 1})
        );
        let done = json!({"schema_version": 1, "theme": "dark", "editor": {"font_size": 1, "wrap": false}});
        assert!(upgrade_ops(&done, &d).unwrap().is_empty());
        assert_eq!(upgrade_ops(&json!({"schema_version": 9}), &d), Err(UpgradeError::Newer(9)));
        assert!(matches!(upgrade_ops(&json!({"schema_version": "x"}), &d), Err(UpgradeError::Invalid(_))));
    }

    #[test]
    fn an_edit_merges_only_what_the_person_changed() {
        let base = json!({"schema_version": 1, "theme": "light", "font": 12, "gone": true, "nested": {"a": 1}});
        // Meanwhile an app changed `font` and added `new`.
        let current =
            json!({"schema_version": 1, "theme": "light", "font": 14, "gone": true, "new": 1, "nested": {"a": 1}});
        // The person edited a stale copy: changed the theme, removed `gone`, nested.b added.
        let edited = json!({"schema_version": 1, "theme": "dark", "font": 12, "nested": {"a": 1, "b": 2}});
        let ops = merge_ops(&base, &edited, &current);
        assert_eq!(
            apply(current, &ops),
            json!({"schema_version": 1, "theme": "dark", "font": 14, "new": 1, "nested": {"a": 1, "b": 2}})
        );
    }

    #[test]
    fn merges_survive_keys_gone_from_the_document() {
        let base = json!({"a": {"x": 1}, "d": 1});
        let current = json!({});
        let edited = json!({"a": {"x": 2}});
        let ops = merge_ops(&base, &edited, &current);
        assert_eq!(apply(current, &ops), json!({"a": {"x": 2}}));
    }

    #[test]
    fn the_mirror_knows_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("sync");
        std::fs::create_dir(&store).unwrap();
        let mirror = Mirror::new(dir.path(), &store, Arc::new(EventBus::new(16)));
        assert!(mirror.write(&json!({"a": 1})).unwrap());
        assert!(!mirror.write(&json!({"a": 1})).unwrap(), "unchanged content is not rewritten");
        let bytes = std::fs::read(&mirror.file).unwrap();
        assert!(mirror.is_ours(&bytes));
        assert!(!mirror.is_ours(b"{\"a\": 2}\n"));
        assert_eq!(std::fs::read(store.join("settings.mirror.json")).unwrap(), bytes);
        // A restart recognises the last write through the record.
        let again = Mirror::new(dir.path(), &store, Arc::new(EventBus::new(16)));
        assert_eq!(*again.last.lock().unwrap(), Some(json!({"a": 1})));
        // A person's newer edit is never written over with what the file said before it.
        std::fs::write(&mirror.file, b"{\"a\": ").unwrap();
        assert!(!mirror.write(&json!({"a": 1})).unwrap());
        assert_eq!(std::fs::read(&mirror.file).unwrap(), b"{\"a\": ");
    }
}
