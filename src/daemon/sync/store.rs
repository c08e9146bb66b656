//! The document files under `<state-dir>/sync/`: one per document,
//! `<name with / as ~>.am`.
//!
//! ```text
//!   "HSYNC\0\0\x01"            8 bytes: magic and format version 1
//!   len (u32 BE) | payload    a record: Automerge chunks (a compacted
//!   len (u32 BE) | payload    document, or the changes of one write)
//!   ...
//! ```
//!
//! A write appends one record; loading concatenates the payloads and hands
//! them to Automerge, which checks each chunk's checksum. A record cut short
//! at the end was never acknowledged (a crash during its append): it is
//! cut off. Anything else that does not load is moved aside to
//! `<file>.unreadable-<unix-ms>` (never overwritten) and reported in
//! health; the document then starts empty.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use automerge::AutoCommit;

use crate::daemon::fsutil;
use crate::protocol::sync::DocName;

/// The first bytes of every document file.
pub(crate) const MAGIC: &[u8; 8] = b"HSYNC\0\0\x01";

/// Bytes of a record's length prefix.
pub(crate) const RECORD_HEADER: usize = 4;

/// A document read from its file.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) doc: AutoCommit,
    /// Bytes of the file's first record when it is a compacted document (else 0).
    pub(crate) base_bytes: u64,
    /// Bytes of the records after it.
    pub(crate) appended_bytes: u64,
    /// Where an unreadable file was moved, if it was.
    pub(crate) moved_aside: Option<(PathBuf, String)>,
}

/// The store directory.
#[derive(Debug, Clone)]
pub(crate) struct StoreDir {
    dir: PathBuf,
}

impl StoreDir {
    /// Opens (creating, mode 0700) `dir`.
    pub(crate) fn open(dir: PathBuf) -> io::Result<StoreDir> {
        fsutil::private_subdir(&dir)?;
        Ok(StoreDir { dir })
    }

    /// The file of a document.
    pub(crate) fn path_of(&self, name: &DocName) -> PathBuf {
        self.dir.join(format!("{}.am", name.file_stem()))
    }

    /// Every stored document and the bytes of its file, by name.
    pub(crate) fn list(&self) -> io::Result<Vec<(DocName, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".am")) else { continue };
            let Some(name) = DocName::from_file_stem(stem) else { continue };
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((name, len));
        }
        out.sort();
        Ok(out)
    }

    /// Whether a document has a file.
    pub(crate) fn exists(&self, name: &DocName) -> bool {
        self.path_of(name).exists()
    }

    /// Bytes of a document's file (0 when it has none).
    pub(crate) fn stored_bytes(&self, name: &DocName) -> u64 {
        std::fs::metadata(self.path_of(name)).map(|m| m.len()).unwrap_or(0)
    }

    /// Reads a document: an empty one when it has no file; the file moved
    /// aside (and an empty document) when it cannot be read.
    pub(crate) fn load(&self, name: &DocName) -> io::Result<Loaded> {
        let path = self.path_of(name);
        let bytes = match fsutil::read_small(&path, u64::MAX) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Loaded { doc: AutoCommit::new(), base_bytes: 0, appended_bytes: 0, moved_aside: None });
            }
            Err(e) => return Err(e),
        };
        match parse(&bytes) {
            Ok(parsed) => {
                if parsed.valid_len < bytes.len() {
                    // The tail is an append cut short by a crash: never acknowledged.
                    tracing::warn!(
                        doc = %name,
                        kept = parsed.valid_len,
                        dropped = bytes.len() - parsed.valid_len,
                        "cutting off an incomplete last record"
                    );
                    let file = std::fs::OpenOptions::new().write(true).open(&path)?;
                    file.set_len(parsed.valid_len as u64)?;
                    file.sync_all()?;
                }
                Ok(Loaded {
                    doc: parsed.doc,
                    base_bytes: parsed.base_bytes,
                    appended_bytes: parsed.valid_len as u64 - parsed.base_bytes - MAGIC.len() as u64,
                    moved_aside: None,
                })
            }
            Err(why) => {
                let aside = path.with_extension(format!("am.unreadable-{}", crate::time::now_ms()));
                std::fs::rename(&path, &aside)?;
                fsutil::fsync_dir(&self.dir)?;
                tracing::error!(doc = %name, moved_to = %aside.display(), "document file cannot be read: {why}");
                Ok(Loaded { doc: AutoCommit::new(), base_bytes: 0, appended_bytes: 0, moved_aside: Some((aside, why)) })
            }
        }
    }
}

struct Parsed {
    doc: AutoCommit,
    /// Bytes up to the end of the last complete record.
    valid_len: usize,
    base_bytes: u64,
}

/// Records of a file's bytes, as payload ranges, and where the complete ones end.
pub(crate) fn records(bytes: &[u8]) -> Result<(Vec<std::ops::Range<usize>>, usize), String> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err("it does not start with the document file's magic bytes".into());
    }
    let mut at = MAGIC.len();
    let mut out = Vec::new();
    while bytes.len() - at >= RECORD_HEADER {
        let len = u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let end = at + RECORD_HEADER + len;
        if end > bytes.len() {
            break;
        }
        out.push(at + RECORD_HEADER..end);
        at = end;
    }
    Ok((out, at))
}

fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let (ranges, valid_len) = records(bytes)?;
    let mut all = Vec::with_capacity(valid_len);
    for r in &ranges {
        all.extend_from_slice(&bytes[r.clone()]);
    }
    let doc = AutoCommit::load(&all).map_err(|e| format!("Automerge cannot load it: {e}"))?;
    // A compacted file starts with one document chunk (Automerge's magic,
    // then chunk type 0); its size is the base the compaction policy weighs.
    let base_bytes =
        ranges.first().filter(|r| bytes.get(r.start + 8) == Some(&0)).map_or(0, |r| (r.len() + RECORD_HEADER) as u64);
    Ok(Parsed { doc, valid_len, base_bytes })
}

/// Encodes one record.
pub(crate) fn record(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Builds the compacted form of the first `cut` bytes of `path` in
/// `tmp`: the document they hold, saved whole as one record, synced.
/// Returns the compacted file's length.
pub(crate) fn compact_into(path: &Path, cut: u64, tmp: &Path) -> io::Result<u64> {
    let mut bytes = Vec::new();
    File::open(path)?.take(cut).read_to_end(&mut bytes)?;
    let parsed = parse(&bytes).map_err(io::Error::other)?;
    let mut doc = parsed.doc;
    let saved = doc.save();
    let _ = std::fs::remove_file(tmp);
    let mut file = fsutil::create_new(tmp, 0o600)?;
    file.write_all(MAGIC)?;
    file.write_all(&record(&saved))?;
    file.sync_all()?;
    Ok((MAGIC.len() + RECORD_HEADER + saved.len()) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::transaction::Transactable;
    use automerge::{ROOT, ReadDoc};

    fn name(s: &str) -> DocName {
        DocName::parse(s).unwrap()
    }

    fn change(doc: &mut AutoCommit, key: &str, v: i64) -> Vec<u8> {
        doc.put(ROOT, key, v).unwrap();
        doc.commit();
        doc.get_last_local_change().unwrap().raw_bytes().to_vec()
    }

    #[test]
    fn records_load_and_a_torn_tail_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreDir::open(dir.path().join("sync")).unwrap();
        let doc_name = name("notebook/a");
        assert!(store.load(&doc_name).unwrap().doc.get_heads().is_empty());
        let mut doc = AutoCommit::new();
        let mut file = MAGIC.to_vec();
        for i in 0..3 {
            file.extend(record(&change(&mut doc, "k", i)));
        }
        let good = file.len();
        file.extend(&record(&change(&mut doc, "k", 99))[..10]);
        std::fs::write(store.path_of(&doc_name), &file).unwrap();
        let mut loaded = store.load(&doc_name).unwrap();
        assert_eq!(loaded.doc.get(ROOT, "k").unwrap().unwrap().0.to_i64(), Some(2));
        assert!(loaded.moved_aside.is_none());
        assert_eq!(std::fs::metadata(store.path_of(&doc_name)).unwrap().len() as usize, good);
        assert_eq!(loaded.doc.get_heads().len(), 1);
        assert_eq!(store.list().unwrap(), vec![(doc_name, good as u64)]);
    }

    #[test]
    fn an_unreadable_file_is_moved_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreDir::open(dir.path().join("sync")).unwrap();
        let doc_name = name("broken");
        let mut bytes = MAGIC.to_vec();
        bytes.extend(record(b"not automerge at all"));
        std::fs::write(store.path_of(&doc_name), &bytes).unwrap();
        let loaded = store.load(&doc_name).unwrap();
        let (aside, why) = loaded.moved_aside.expect("moved aside");
        assert!(why.contains("Automerge"), "{why}");
        assert_eq!(std::fs::read(&aside).unwrap(), bytes, "kept byte for byte");
        assert!(!store.exists(&doc_name));
        std::fs::write(store.path_of(&doc_name), b"garbage").unwrap();
        assert!(store.load(&doc_name).unwrap().moved_aside.is_some());
    }

    #[test]
    fn compaction_keeps_the_document() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.am");
        let mut doc = AutoCommit::new();
        let mut file = MAGIC.to_vec();
        for i in 0..50 {
            file.extend(record(&change(&mut doc, &format!("k{}", i % 5), i)));
        }
        std::fs::write(&path, &file).unwrap();
        let tmp = dir.path().join("d.am.compact");
        let len = compact_into(&path, file.len() as u64, &tmp).unwrap();
        assert_eq!(std::fs::metadata(&tmp).unwrap().len(), len);
        let parsed = parse(&std::fs::read(&tmp).unwrap()).unwrap();
        let mut loaded = parsed.doc;
        assert_eq!(loaded.get_heads(), doc.get_heads());
        assert!(parsed.base_bytes > 0);
    }
}
