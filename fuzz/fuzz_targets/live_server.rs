//! A live in-process daemon (the real accept loop, router, sessions and
//! handlers on a real socket) fed arbitrary byte streams.
//!
//! Input layout: the first byte picks how the stream starts (raw bytes, or a
//! valid handshake for one of the channels, so that the fuzzer reaches the
//! request handlers); the rest is split at `0xFF` bytes into pieces, each
//! sent as one frame, except pieces starting with `0xFE`, sent raw (broken
//! length prefixes, half frames). After each input the daemon must still
//! answer a ping on a fresh connection.
//!
//! The queue and pool services are disabled: fuzzed requests must never run
//! programs (a `submit` or a `define` can name any command). The blob
//! channel is on (its store lives in a temp dir), without its HTTP server.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use hearth::client::StatusClient;
use hearth::daemon::{Config, Daemon, Instance};
use hearth::paths::Paths;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;

struct Live {
    runtime: Runtime,
    socket: PathBuf,
}

fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let dir = tempfile::Builder::new().prefix("hearth-fuzz-").tempdir().expect("temp dir").keep();
        let paths = Paths::new(dir.join("state"));
        let mut config = Config::default();
        config.queue.enabled = false;
        config.pool.enabled = false;
        config.blob.http = false;
        config.server.connection_idle_timeout = hearth::units::HumanDuration(Duration::from_secs(2));
        config.server.handshake_timeout = hearth::units::HumanDuration(Duration::from_secs(2));
        config.server.max_frame = hearth::units::ByteSize(64 * 1024);
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let socket = paths.socket().to_owned();
        runtime.block_on(async {
            let mut instance = Instance::acquire(paths).expect("lock");
            let listener = instance.bind().expect("bind");
            let daemon = Daemon::start(instance, listener, config).await.expect("start");
            tokio::spawn(daemon.run_until(std::future::pending()));
        });
        Live { runtime, socket }
    })
}

fn frame(piece: &[u8]) -> Vec<u8> {
    let mut out = (piece.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(piece);
    out
}

fuzz_target!(|data: &[u8]| {
    let live = live();
    let Some((&start, rest)) = data.split_first() else { return };
    let mut bytes = Vec::new();
    let channel = ["status", "pool", "queue", "blob"].get(usize::from(start % 5));
    if let Some(channel) = channel {
        bytes.extend(frame(format!(r#"{{"channel":"{channel}","protocol":1}}"#).as_bytes()));
    }
    for piece in rest.split(|b| *b == 0xFF) {
        match piece.split_first() {
            Some((0xFE, raw)) => bytes.extend_from_slice(raw),
            _ => bytes.extend(frame(piece)),
        }
    }
    live.runtime.block_on(async {
        let mut stream = UnixStream::connect(&live.socket).await.expect("the daemon accepts");
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        // Read whatever the daemon answers, until it closes or goes quiet.
        let mut sink = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
        // Whatever that connection did, the daemon still serves others.
        let mut client = StatusClient::connect(&live.socket).await.expect("the daemon still accepts");
        client.ping().await.expect("the daemon still answers");
    });
});
