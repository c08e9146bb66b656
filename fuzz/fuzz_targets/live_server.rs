//! A live in-process daemon (the real accept loop, router, sessions and
//! handlers on a real socket) fed arbitrary byte streams.
//!
//! Input layout: the first byte picks how the stream starts (raw bytes, or a
//! valid handshake for one of the channels, so that the fuzzer reaches the
//! request handlers); the rest is split at `0xFF` bytes into pieces, each
//! sent as one frame, except pieces starting with `0xFE`, sent raw (broken
//! length prefixes, half frames). After each input the daemon must still
//! answer a ping on a fresh connection, unless the input asked it to stop
//! (`shutdown` on the status channel, which any peer of the same user may
//! send): then its task must have ended cleanly, and it is started again.
//!
//! The queue and pool services are disabled: fuzzed requests must never run
//! programs (a `submit` or a `define` can name any command). The blob
//! channel is on (its store lives in a temp dir), without its HTTP server.
#![no_main]

use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use hearth::client::{ClientError, StatusClient};
use hearth::daemon::{Config, Daemon, Instance};
use hearth::paths::Paths;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

struct Live {
    runtime: Runtime,
    paths: Paths,
    config: Config,
    daemon: Mutex<Option<JoinHandle<()>>>,
}

/// Starts the daemon on `paths`; the task ends only when a request stops it.
async fn start_daemon(paths: &Paths, config: &Config) -> JoinHandle<()> {
    let mut instance = Instance::acquire(paths.clone()).expect("lock");
    let listener = instance.bind().expect("bind");
    let daemon = Daemon::start(instance, listener, config.clone()).await.expect("start");
    tokio::spawn(daemon.run_until(std::future::pending()))
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
        let handle = runtime.block_on(start_daemon(&paths, &config));
        Live { runtime, paths, config, daemon: Mutex::new(Some(handle)) }
    })
}

async fn ping(socket: &Path) -> Result<(), ClientError> {
    StatusClient::connect(socket).await?.ping().await.map(drop)
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
        let mut stream = UnixStream::connect(live.paths.socket()).await.expect("the daemon accepts");
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        // Read whatever the daemon answers, until it closes or goes quiet.
        let mut sink = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
        // Whatever that connection did, the daemon still serves others...
        let socket = live.paths.socket();
        if let Err(e) = ping(socket).await {
            // ...unless it was asked to stop: then it stops cleanly, in time.
            let handle = live.daemon.lock().unwrap().take().expect("a daemon task");
            match tokio::time::timeout(Duration::from_secs(30), handle).await {
                Ok(Ok(())) => {}
                Ok(Err(join)) => panic!("the daemon task failed: {join}"),
                Err(_) => panic!("the daemon neither answers ({e}) nor stops"),
            }
            let handle = start_daemon(&live.paths, &live.config).await;
            *live.daemon.lock().unwrap() = Some(handle);
            ping(socket).await.expect("the restarted daemon answers");
        }
    });
});
