//! The sync channel of a live in-process daemon fed arbitrary frames: JSON
//! requests, Automerge sync messages (valid ones from the corpus, mutated),
//! and broken framing, on view, replica and control connections.
//!
//! Input layout: the first byte picks the handshake (document and mode,
//! some names invalid); the rest is split at `0xFF` bytes into pieces, each
//! sent as one frame, except pieces starting with `0xFE`, sent raw, and
//! pieces starting with `0xFD`, sent as a frame with an Automerge sync
//! message's first byte (0x42) put back in front. After each input the
//! daemon must still serve: a fresh view peer of the same document gets
//! its value, and a fresh replica of it syncs to the same JSON.
#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use hearth::client::{ReplicaClient, SyncClient};
use hearth::daemon::{Config, Daemon, Instance};
use hearth::paths::Paths;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

struct Live {
    runtime: Runtime,
    paths: Paths,
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        // libFuzzer's main, not Rust's, runs this process: SIGPIPE is not
        // ignored as in a Rust program (or hearthd), and a write to a peer
        // that closed (the harness's or the daemon's) would kill it.
        // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
        #[allow(unsafe_code)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        }
        let dir = tempfile::Builder::new().prefix("hearth-fuzz-sync-").tempdir().expect("temp dir").keep();
        let paths = Paths::new(dir.join("state"));
        let mut config = Config::default();
        config.queue.enabled = false;
        config.pool.enabled = false;
        config.blob.enabled = false;
        config.server.connection_idle_timeout = hearth::units::HumanDuration(Duration::from_secs(2));
        config.server.max_frame = hearth::units::ByteSize(256 * 1024);
        config.sync.max_sync_message = hearth::units::ByteSize(64 * 1024);
        config.sync.max_value_size = hearth::units::ByteSize(16 * 1024);
        config.sync.max_doc_size = hearth::units::ByteSize(4 << 20);
        config.sync.peer_write_timeout = hearth::units::HumanDuration(Duration::from_secs(2));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let mut instance = Instance::acquire(paths.clone()).expect("lock");
            let listener = instance.bind().expect("bind");
            let daemon = Daemon::start(instance, listener, config).await.expect("start");
            tokio::spawn(daemon.run_until(std::future::pending()));
        });
        Live { runtime, paths }
    })
}

fn frame(piece: &[u8]) -> Vec<u8> {
    let mut out = (piece.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(piece);
    out
}

const DOCS: [&str; 6] = ["fuzz", "fuzz/b", "settings", "", "../up", "Fuzz"];

fuzz_target!(|data: &[u8]| {
    let live = live();
    let Some((&start, rest)) = data.split_first() else { return };
    let doc = DOCS[usize::from(start) % DOCS.len()];
    let mode = if start & 0x80 != 0 { "replica" } else { "view" };
    let handshake = if doc.is_empty() {
        format!(r#"{{"channel":"sync","protocol":1,"mode":"{mode}"}}"#)
    } else {
        format!(r#"{{"channel":"sync","protocol":1,"doc":"{doc}","mode":"{mode}"}}"#)
    };
    let mut bytes = frame(handshake.as_bytes());
    for piece in rest.split(|b| *b == 0xFF) {
        match piece.split_first() {
            Some((0xFE, raw)) => bytes.extend_from_slice(raw),
            Some((0xFD, message)) => {
                let mut m = vec![0x42];
                m.extend_from_slice(message);
                bytes.extend(frame(&m));
            }
            _ => bytes.extend(frame(piece)),
        }
    }
    live.runtime.block_on(async {
        let socket = live.paths.socket();
        let mut stream = UnixStream::connect(socket).await.expect("the daemon accepts");
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        let mut sink = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
        drop(stream);
        // The daemon still serves the document, and both modes agree on it.
        let check = async {
            let mut view = SyncClient::open(socket, "fuzz").await.expect("a view peer joins");
            let (_, value) = view.get(&[]).await.expect("get answers");
            let mut replica = ReplicaClient::open(socket, "fuzz").await.expect("a replica joins");
            replica.sync().await.expect("a replica syncs");
            let (_, after) = view.get(&[]).await.expect("get answers");
            assert_eq!(value, after, "nobody else writes during the check");
        };
        tokio::time::timeout(Duration::from_secs(30), check).await.expect("the daemon answers within 30s");
    });
});
