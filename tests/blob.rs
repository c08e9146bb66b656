//! The blob channel against the real `hearthd`: raw frames, the client
//! library's streaming helpers, and crashes (a client and the daemon killed
//! with SIGKILL in the middle of a put).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::task::{Context, Poll};
use std::time::Duration;

use common::{RawConn, StateDir, wait_for};
use hearth::client::{BlobClient, ClientError, PutOptions};
use hearth::protocol::ErrorCode;
use hearth::protocol::blob::BlobHash;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

fn hash_of(data: &[u8]) -> BlobHash {
    BlobHash::from_digest(&Sha256::digest(data).into())
}

/// Deterministic, incompressible-looking bytes.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn tmp_dir(state: &StateDir) -> PathBuf {
    state.state_dir().join("blobs/tmp")
}

fn tmp_files(state: &StateDir) -> Vec<PathBuf> {
    std::fs::read_dir(tmp_dir(state)).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}

/// Every content file in the store (sidecars excluded).
fn content_files(state: &StateDir) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let root = state.state_dir().join("blobs/sha256");
    for dir in std::fs::read_dir(root).unwrap().flatten() {
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if !name.ends_with(".json") && !name.starts_with('.') {
                out.push(file.path());
            }
        }
    }
    out
}

fn code(e: &ClientError) -> ErrorCode {
    e.code().cloned().unwrap_or_else(|| panic!("expected a daemon error, got {e:?}"))
}

async fn client(state: &StateDir) -> BlobClient {
    BlobClient::connect(state.socket()).await.expect("connect to the blob channel")
}

#[tokio::test]
async fn round_trips_at_frame_boundaries() {
    let state = StateDir::new();
    let max = 64 * 1024;
    let _daemon = state.start(&["--max-frame", "64KiB"]);
    let mut c = client(&state).await;
    assert_eq!(c.max_frame(), max as u64);
    // Empty, one byte, exactly one data frame, one byte over, several frames.
    for (i, len) in [0, 1, max, max + 1, 3 * max + 17].into_iter().enumerate() {
        let data = pattern(len, i as u64);
        let stored = c.put_bytes(&data, PutOptions::new()).await.unwrap();
        assert_eq!(stored.hash, hash_of(&data), "{len} bytes");
        assert_eq!(stored.size, len as u64);
        assert!(!stored.existed);
        assert_eq!(c.get_bytes(&stored.hash).await.unwrap(), data, "{len} bytes");
        assert_eq!(c.stat(&stored.hash).await.unwrap().size, len as u64);
        // A range that ends at the last byte.
        if len > 0 {
            let mut tail = Vec::new();
            let header = c.get_to_writer(&stored.hash, Some((len as u64 - 1, 10)), &mut tail).await.unwrap();
            assert_eq!((header.offset, header.length), (len as u64 - 1, 1));
            assert_eq!(tail, &data[len - 1..]);
        }
    }
    assert_eq!(c.usage().await.unwrap().count, 5);

    // On the wire: a data frame of exactly max_frame is taken, one byte more
    // ends the connection with frame_too_large and stores nothing.
    let mut raw = RawConn::open(state.socket(), "blob");
    assert_eq!(raw.request(&json!({"type": "put"})), json!({"type": "ready"}));
    raw.send_frame(&vec![7u8; max]);
    raw.send_frame(b"");
    let stored = raw.read_json().unwrap();
    assert_eq!(stored["type"], "stored", "{stored}");
    assert_eq!(stored["hash"], json!(hash_of(&vec![7u8; max])));
    let mut raw = RawConn::open(state.socket(), "blob");
    assert_eq!(raw.request(&json!({"type": "put"})), json!({"type": "ready"}));
    raw.send_frame(&vec![8u8; max + 1]);
    assert_eq!(raw.read_json().unwrap()["code"], "frame_too_large");
    assert!(raw.is_closed());
    assert!(wait_for(Duration::from_secs(10), || tmp_files(&state).is_empty()));
    assert!(!c.has(&hash_of(&vec![8u8; max + 1])).await.unwrap());
    assert_eq!(c.usage().await.unwrap().count, 6);
}

#[tokio::test]
async fn raw_streams_and_their_errors() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let data = pattern(1000, 9);
    let hash = hash_of(&data);
    let mut raw = RawConn::open(state.socket(), "blob");
    let header = json!({"type": "put", "sha256": hash, "size": 1000, "media_type": "image/png", "name": "p.png"});
    assert_eq!(raw.request(&header), json!({"type": "ready"}));
    raw.send_frame(&data[..400]);
    raw.send_frame(&data[400..]);
    raw.send_frame(b"");
    assert_eq!(raw.read_json().unwrap(), json!({"type": "stored", "hash": hash, "size": 1000, "existed": false}));

    // A put naming stored content is answered at once: no data travels.
    let again = raw.request(&json!({"type": "put", "sha256": hash, "pin": true}));
    assert_eq!(again, json!({"type": "stored", "hash": hash, "size": 1000, "existed": true}));
    let stat = raw.request(&json!({"type": "stat", "hash": hash}));
    assert_eq!((stat["pinned"].clone(), stat["media_type"].clone()), (json!(true), json!("image/png")));

    // A range: header, data frames, end marker.
    let content = raw.request(&json!({"type": "get", "hash": hash, "offset": 990}));
    assert_eq!(
        content,
        json!({"type": "content", "hash": hash, "size": 1000, "offset": 990, "length": 10, "media_type": "image/png"})
    );
    assert_eq!(raw.read_frame().unwrap(), &data[990..]);
    assert_eq!(raw.read_frame().unwrap(), b"");
    // An empty range at the very end is fine; past it is not.
    let content = raw.request(&json!({"type": "get", "hash": hash, "offset": 1000}));
    assert_eq!(content["length"], 0);
    assert_eq!(raw.read_frame().unwrap(), b"");
    let past = raw.request(&json!({"type": "get", "hash": hash, "offset": 1001}));
    assert_eq!(past["code"], "range_not_satisfiable");

    // Bad requests keep the connection usable.
    let bad = raw.request(&json!({"type": "stat", "hash": "sha256:../../etc/passwd"}));
    assert_eq!(bad["code"], "invalid_request");
    let missing = raw.request(&json!({"type": "get", "hash": hash_of(b"nope")}));
    assert_eq!(missing["code"], "blob_not_found");
    let bad = raw.request(&json!({"type": "put", "media_type": "text/html\r\nX: 1"}));
    assert_eq!(bad["code"], "invalid_request");
    let pinned = raw.request(&json!({"type": "delete", "hash": hash}));
    assert_eq!(pinned["code"], "blob_pinned");
    let deleted = raw.request(&json!({"type": "delete", "hash": hash, "force": true}));
    assert_eq!(deleted, json!({"type": "deleted", "hash": hash, "size": 1000}));
    assert_eq!(
        raw.request(&json!({"type": "has", "hash": hash})),
        json!({"type": "has", "hash": hash, "present": false})
    );
}

#[tokio::test]
async fn mismatches_are_rejected_and_leave_nothing() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut c = client(&state).await;
    let data = pattern(3 * 1024 * 1024 + 5, 1);
    let wrong = hash_of(b"something else");

    let e = c.put_bytes(&data, PutOptions::new().sha256(wrong.clone())).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::HashMismatch);
    // More data than announced: refused as soon as it shows (the client stops early).
    let e = c.put_reader(&data[..], PutOptions::new().size(1024 * 1024)).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::SizeMismatch);
    // Less data than announced.
    let e = c.put_reader(&data[..], PutOptions::new().size(data.len() as u64 + 1)).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::SizeMismatch);

    // The connection is still in step, and nothing is visible.
    assert!(!c.has(&hash_of(&data)).await.unwrap());
    assert!(!c.has(&wrong).await.unwrap());
    assert_eq!(c.usage().await.unwrap().count, 0);
    assert!(wait_for(Duration::from_secs(10), || tmp_files(&state).is_empty()), "{:?}", tmp_files(&state));
    assert!(content_files(&state).is_empty());

    // The same data with the right expectations goes in.
    let opts = PutOptions::new().sha256(hash_of(&data)).size(data.len() as u64);
    assert_eq!(c.put_bytes(&data, opts).await.unwrap().hash, hash_of(&data));
}

#[tokio::test]
async fn concurrent_puts_of_the_same_content_store_it_once() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let data = std::sync::Arc::new(pattern(3 * 1024 * 1024, 2));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (socket, data) = (state.socket().to_owned(), data.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = BlobClient::connect(&socket).await.unwrap();
            c.put_bytes(&data, PutOptions::new()).await.unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    assert!(results.iter().all(|r| r.hash == hash_of(&data) && r.size == data.len() as u64));
    assert_eq!(results.iter().filter(|r| !r.existed).count(), 1, "exactly one put added the content: {results:?}");
    assert_eq!(content_files(&state).len(), 1);
    assert!(wait_for(Duration::from_secs(10), || tmp_files(&state).is_empty()));
    let mut c = client(&state).await;
    assert_eq!(c.get_bytes(&hash_of(&data)).await.unwrap(), *data);
    let usage = c.usage().await.unwrap();
    assert_eq!((usage.count, usage.bytes), (1, data.len() as u64));
}

/// A `hearth blob put -` whose stdin the test feeds, started and waited
/// for until the daemon has some of its data in a temp file.
fn start_streaming_put(state: &StateDir) -> std::process::Child {
    let mut child = state
        .hearth()
        .args(["--no-spawn", "blob", "put", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hearth blob put");
    let mut stdin = child.stdin.take().unwrap();
    let chunk = pattern(1024 * 1024, 3);
    for _ in 0..4 {
        stdin.write_all(&chunk).unwrap();
    }
    let arrived = wait_for(Duration::from_secs(20), || {
        tmp_files(state).iter().any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))
    });
    assert!(arrived, "the put's data never reached the daemon");
    // Keep stdin open: the put is in the middle of its stream.
    std::mem::forget(stdin);
    child
}

#[tokio::test]
async fn a_client_killed_mid_put_leaves_nothing() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    let mut put = start_streaming_put(&state);
    put.kill().unwrap(); // SIGKILL
    common::wait_child(&mut put, common::COMMAND_LIMIT, "the killed put");
    assert!(wait_for(Duration::from_secs(10), || tmp_files(&state).is_empty()), "{:?}", tmp_files(&state));
    assert!(content_files(&state).is_empty());
    let mut c = client(&state).await;
    assert_eq!(c.usage().await.unwrap().count, 0);
    assert!(c.list(None, None).await.unwrap().blobs.is_empty());
}

#[tokio::test]
async fn a_daemon_killed_during_a_put_keeps_what_it_acknowledged_and_nothing_else() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let kept = pattern(200_000, 4);
    let hash = client(&state).await.put_bytes(&kept, PutOptions::new().name("kept")).await.unwrap().hash;

    let mut put = start_streaming_put(&state);
    daemon.kill9();
    let status = common::wait_child(&mut put, common::COMMAND_LIMIT, "the interrupted put");
    assert!(!status.success(), "the interrupted put must fail");
    assert!(!tmp_files(&state).is_empty(), "the crash left a partial temp file (else this test proves nothing)");

    let _daemon = state.start(&[]);
    assert!(tmp_files(&state).is_empty(), "start-up removes unfinished puts: {:?}", tmp_files(&state));
    assert_eq!(content_files(&state).len(), 1, "only the acknowledged blob is stored");
    let mut c = client(&state).await;
    assert_eq!(c.get_bytes(&hash).await.unwrap(), kept);
    assert_eq!(c.stat(&hash).await.unwrap().name.as_deref(), Some("kept"));
    assert_eq!(c.usage().await.unwrap().count, 1);
}

/// A put whose reader has stalled (a pipe whose writer is alive but idle)
/// still sees the daemon go away: it fails at once instead of waiting for
/// input that may never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_waiting_on_a_stalled_reader_fails_when_the_daemon_dies() {
    let state = StateDir::new();
    let mut daemon = state.start(&[]);
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let put = tokio::spawn({
        let mut c = client(&state).await;
        async move { c.put_reader(reader, PutOptions::new()).await }
    });
    tokio::io::AsyncWriteExt::write_all(&mut writer, &pattern(1_500_000, 9)).await.unwrap();
    assert!(
        wait_for(Duration::from_secs(20), || tmp_files(&state)
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 0))),
        "the put's data never reached the daemon"
    );
    daemon.kill9();
    // `writer` stays open: only the connection can end the put.
    let result =
        tokio::time::timeout(Duration::from_secs(20), put).await.expect("the put noticed the daemon's death").unwrap();
    assert!(matches!(result, Err(ClientError::Closed)), "{result:?}");
    drop(writer);
}

#[tokio::test]
async fn collection_removes_least_recently_used_unpinned_blobs() {
    let state = StateDir::new();
    let _daemon = state.start(&["--blob-max-bytes", "12KiB"]);
    let mut c = client(&state).await;
    let blob = |seed| pattern(4096, seed);
    let a = c.put_bytes(&blob(10), PutOptions::new().pin(true)).await.unwrap().hash;
    let b = c.put_bytes(&blob(11), PutOptions::new()).await.unwrap().hash;
    let cc = c.put_bytes(&blob(12), PutOptions::new()).await.unwrap().hash;
    c.get_bytes(&b).await.unwrap(); // b is now more recent than cc
    // 16 KiB > 12 KiB: the put wakes the background collection.
    let d = c.put_bytes(&blob(13), PutOptions::new()).await.unwrap().hash;
    let mut probe = client(&state).await;
    let mut gone = false;
    for _ in 0..200 {
        if !probe.has(&cc).await.unwrap() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the background pass collects the least recently used blob");
    for kept in [&a, &b, &d] {
        assert!(c.has(kept).await.unwrap(), "{kept}");
    }
    let usage = c.usage().await.unwrap();
    assert_eq!((usage.count, usage.bytes, usage.budget_bytes), (3, 12288, Some(12288)));

    // An explicit pass down to nothing keeps only the pinned blob.
    let report = c.gc(Some(0)).await.unwrap();
    assert_eq!((report.removed, report.freed_bytes), (2, 8192));
    assert_eq!(report.usage.count, 1);
    assert!(c.has(&a).await.unwrap());
    c.set_pinned(&a, false).await.unwrap();
    assert_eq!(c.gc(Some(0)).await.unwrap().removed, 1);
    assert!(content_files(&state).is_empty());

    // The status channel reports the store.
    let mut status = RawConn::open(state.socket(), "status");
    let report: Value = status.request(&json!({"type": "status"}));
    assert_eq!(report["services"]["blob"]["count"], 0);
    assert_eq!(report["services"]["blob"]["budget_bytes"], 12288);
    assert!(report["channels"].as_array().unwrap().contains(&json!("blob")));
}

/// Hashes and counts what is written to it.
#[derive(Default)]
struct HashSink {
    hasher: Sha256,
    len: u64,
}

impl AsyncWrite for HashSink {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.hasher.update(buf);
        self.len += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn hash_file(path: &Path) -> BlobHash {
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut buf).unwrap() {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    BlobHash::from_digest(&hasher.finalize().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_gib_sparse_file_round_trips() {
    let state = StateDir::new();
    let _daemon = state.start(&[]);
    // 4 GiB of holes with a few bytes in the middle and at the end: offsets
    // beyond 32 bits, a final frame that is not full.
    let size: u64 = (4 << 30) + 3;
    let path = state.dir.path().join("sparse.bin");
    {
        use std::io::{Seek, SeekFrom};
        let mut file = std::fs::File::create(&path).unwrap();
        file.set_len(size).unwrap();
        file.seek(SeekFrom::Start(3 << 30)).unwrap();
        file.write_all(b"middle").unwrap();
        file.seek(SeekFrom::Start(size - 3)).unwrap();
        file.write_all(b"end").unwrap();
    }
    let expected = tokio::task::spawn_blocking({
        let path = path.clone();
        move || hash_file(&path)
    });
    let mut c = client(&state).await;
    let file = tokio::fs::File::open(&path).await.unwrap();
    let stored = c.put_reader(file, PutOptions::new().size(size)).await.unwrap();
    assert_eq!(stored.size, size);
    assert_eq!(stored.hash, expected.await.unwrap());

    // Stored sparse: the store did not write 4 GiB of zeros.
    use std::os::unix::fs::MetadataExt;
    let stored_file = content_files(&state).pop().unwrap();
    let meta = std::fs::metadata(&stored_file).unwrap();
    assert_eq!(meta.len(), size);
    assert!(meta.blocks() * 512 < 64 << 20, "{} bytes allocated", meta.blocks() * 512);

    let mut sink = HashSink::default();
    let header = c.get_to_writer(&stored.hash, None, &mut sink).await.unwrap();
    assert_eq!((header.size, header.length), (size, size));
    assert_eq!(sink.len, size);
    assert_eq!(BlobHash::from_digest(&sink.hasher.finalize().into()), stored.hash);

    let mut tail = Vec::new();
    c.get_to_writer(&stored.hash, Some((3 << 30, 6)), &mut tail).await.unwrap();
    assert_eq!(tail, b"middle");
}
