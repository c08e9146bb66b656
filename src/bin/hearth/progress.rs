//! A one-line progress bar on stderr for long transfers: shown only when
//! stderr is a terminal and the transfer is large, redrawn at most ten
//! times a second.

use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Transfers smaller than this finish too fast to need a bar.
const THRESHOLD: u64 = 32 * 1024 * 1024;
const REDRAW: Duration = Duration::from_millis(100);
const WIDTH: usize = 30;

#[derive(Debug)]
pub(crate) struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
    enabled: bool,
}

impl Progress {
    /// A bar for `total` bytes (hidden when the size is unknown or small,
    /// or stderr is not a terminal).
    pub(crate) fn new(label: &'static str, total: Option<u64>) -> Self {
        let enabled = total.is_some_and(|t| t >= THRESHOLD) && std::io::stderr().is_terminal();
        Self { label, total: total.unwrap_or(0), done: 0, started: Instant::now(), drawn: None, enabled }
    }

    fn add(&mut self, n: usize) {
        self.done += n as u64;
        if self.enabled && self.drawn.is_none_or(|t| t.elapsed() >= REDRAW) {
            self.draw();
        }
    }

    fn draw(&mut self) {
        let fraction = if self.total == 0 { 1.0 } else { (self.done as f64 / self.total as f64).min(1.0) };
        let filled = (fraction * WIDTH as f64) as usize;
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let line = format!(
            "\r{} [{}{}] {:>3.0}% {} / {}  {}/s ",
            self.label,
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            fraction * 100.0,
            crate::output::bytes(self.done),
            crate::output::bytes(self.total),
            crate::output::bytes(rate as u64),
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        let _ = err.flush();
        self.drawn = Some(Instant::now());
    }

    /// Draws the final state and ends the line.
    pub(crate) fn finish(&mut self) {
        if self.enabled {
            self.draw();
            eprintln!();
            self.enabled = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // A transfer that failed: end the bar's line before the error is printed.
        if self.enabled && self.drawn.is_some() {
            eprintln!();
        }
    }
}

/// Counts what is read through it.
pub(crate) struct ProgressRead<'a, R> {
    pub(crate) inner: R,
    pub(crate) progress: &'a mut Progress,
}

impl<R: AsyncRead + Unpin> AsyncRead for ProgressRead<'_, R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.progress.add(n);
        }
        poll
    }
}

/// Counts what is written through it.
pub(crate) struct ProgressWrite<'a, W> {
    pub(crate) inner: W,
    pub(crate) progress: &'a mut Progress,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for ProgressWrite<'_, W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            self.progress.add(n);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
