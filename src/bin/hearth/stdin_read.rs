//! Standard input as an `AsyncRead` that never blocks the runtime.
//!
//! A read of a pipe can wait forever (the writer is idle but alive), and a
//! blocking read inside the runtime would stop it from noticing anything
//! else, such as the daemon dropping the connection. So a plain thread reads
//! stdin and hands chunks over a small bounded channel; the thread is never
//! joined, and it ends with the process.

use std::io::{self, Read};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

/// How much the reading thread takes per read.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight: the memory bound is `CHUNK * (DEPTH + 1)`.
const DEPTH: usize = 4;

pub(crate) struct StdinRead {
    chunks: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

impl StdinRead {
    pub(crate) fn spawn() -> io::Result<Self> {
        let (tx, chunks) = mpsc::channel(DEPTH);
        std::thread::Builder::new().name("stdin".into()).spawn(move || {
            let mut stdin = io::stdin().lock();
            loop {
                let mut buf = vec![0; CHUNK];
                let read = match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(Bytes::from(buf))
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = read.is_err();
                if tx.blocking_send(read).is_err() || failed {
                    break;
                }
            }
        })?;
        Ok(Self { chunks, current: Bytes::new() })
    }
}

impl AsyncRead for StdinRead {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        while self.current.is_empty() {
            match self.chunks.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                // The thread ended: end of input.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Some(Ok(chunk))) => self.current = chunk,
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current[..n]);
        self.current.advance(n);
        Poll::Ready(Ok(()))
    }
}
