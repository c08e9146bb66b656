//! The receiving end of a put: a blocking thread that writes the data
//! frames to the put's temp file as they arrive, while a second thread
//! hashes them (hashing and writing each take about as long; in parallel
//! the put runs at the speed of the slower one).
//!
//! Runs of zero bytes (64 KiB-aligned pieces) are skipped with a seek
//! instead of written, so sparse files stay sparse in the store and cost
//! neither disk space nor write bandwidth. The hash covers every byte.
//! Writeback of what was written starts every few MiB, so that the fsync
//! at the end of a large put has little left to wait for.

use std::io::{self, Seek, SeekFrom, Write};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::store::{self, TempBlob};
use crate::protocol::blob::BlobHash;

/// Granularity of hole detection.
const PIECE: usize = 64 * 1024;

static ZEROS: [u8; PIECE] = [0; PIECE];

/// Writeback is started each time this much more was written.
const WRITEBACK_STEP: u64 = 8 * 1024 * 1024;

/// Frames queued for the hashing thread.
const HASH_QUEUE: usize = 4;

/// A temp file holding all the data of a put, not yet synced.
#[derive(Debug)]
pub(crate) struct Received {
    temp: TempBlob,
    hasher: Sha256,
    size: u64,
    /// Zero bytes at the end not yet materialised (the file is that much shorter).
    hole: u64,
}

struct Writer {
    temp: TempBlob,
    size: u64,
    hole: u64,
    /// File offset up to which writeback was started.
    kicked: u64,
}

/// Receives data frames until the sender is dropped, then hands back what
/// it wrote. On error the temp file is removed.
pub(crate) fn receive(temp: TempBlob, mut frames: mpsc::Receiver<Bytes>) -> io::Result<Received> {
    let (to_hasher, hash_queue) = std::sync::mpsc::sync_channel::<Bytes>(HASH_QUEUE);
    let hasher = std::thread::Builder::new().name("hearthd-hash".into()).spawn(move || {
        let mut hasher = Sha256::new();
        for frame in hash_queue {
            hasher.update(&frame);
        }
        hasher
    })?;
    let mut w = Writer { temp, size: 0, hole: 0, kicked: 0 };
    let written = (|| {
        while let Some(frame) = frames.blocking_recv() {
            to_hasher.send(frame.clone()).map_err(|_| io::Error::other("the hashing thread stopped"))?;
            w.size += frame.len() as u64;
            write_sparse(&mut w, &frame)?;
            w.start_writeback();
        }
        Ok::<(), io::Error>(())
    })();
    drop(to_hasher);
    let hasher = hasher.join().map_err(|_| io::Error::other("the hashing thread panicked"))?;
    written?;
    Ok(Received { temp: w.temp, hasher, size: w.size, hole: w.hole })
}

fn write_sparse(w: &mut Writer, data: &[u8]) -> io::Result<()> {
    let mut run_start = 0;
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + PIECE).min(data.len());
        let piece = &data[pos..end];
        if piece == &ZEROS[..piece.len()] {
            if run_start < pos {
                flush_run(w, &data[run_start..pos])?;
            }
            w.hole += piece.len() as u64;
            run_start = end;
        }
        pos = end;
    }
    if run_start < data.len() {
        flush_run(w, &data[run_start..])?;
    }
    Ok(())
}

fn flush_run(w: &mut Writer, run: &[u8]) -> io::Result<()> {
    if w.hole > 0 {
        let hole = i64::try_from(w.hole).map_err(io::Error::other)?;
        w.temp.file.seek(SeekFrom::Current(hole))?;
        w.hole = 0;
    }
    w.temp.file.write_all(run)
}

impl Writer {
    /// Asks the kernel to start writing back what was written since the
    /// last call (without waiting for it).
    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) {
        let end = self.size - self.hole;
        if end - self.kicked < WRITEBACK_STEP {
            return;
        }
        crate::sys::start_writeback(std::os::fd::AsFd::as_fd(&self.temp.file), self.kicked, end - self.kicked);
        self.kicked = end;
    }

    #[cfg(not(target_os = "linux"))]
    fn start_writeback(&mut self) {}
}

impl Received {
    /// Bytes received.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Materialises a trailing hole, makes the file read-only, syncs it, and
    /// returns it with its content address.
    pub(crate) fn finish(self) -> io::Result<(TempBlob, BlobHash)> {
        if self.hole > 0 {
            self.temp.file.set_len(self.size)?;
        }
        store::seal(&self.temp)?;
        let digest: [u8; 32] = self.hasher.finalize().into();
        Ok((self.temp, BlobHash::from_digest(&digest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::blob::store::Store;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn zero_runs_become_holes_and_the_bytes_stay_exact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("blobs"), None).unwrap();
        let temp = store.create_temp().unwrap();
        let path = temp.path.clone();
        let (tx, rx) = mpsc::channel(8);
        let mut expected = Vec::new();
        let frames: Vec<Vec<u8>> = vec![
            vec![0; 3 * PIECE],
            b"middle".to_vec(),
            vec![0; 5 * PIECE + 7],
            [vec![0; PIECE], vec![9; 10]].concat(),
            vec![0; 2 * PIECE],
        ];
        for f in &frames {
            expected.extend_from_slice(f);
            tx.blocking_send(Bytes::from(f.clone())).unwrap();
        }
        drop(tx);
        let received = receive(temp, rx).unwrap();
        assert_eq!(received.size(), expected.len() as u64);
        let (temp, hash) = received.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        let digest: [u8; 32] = Sha256::digest(&expected).into();
        assert_eq!(hash, BlobHash::from_digest(&digest));
        let blocks = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(blocks < expected.len() as u64, "{blocks} bytes allocated for {}", expected.len());
        drop(temp);
        assert!(!path.exists(), "an uncommitted temp file is removed");
    }
}
