//! One-line progress bars on stderr, for the waits a person sits through:
//! [`Progress`] for long transfers (bytes), [`WaitBar`] for waits counted
//! in things (jobs ended, resources ready, work left to drain).
//!
//! A bar is shown only when stderr is a terminal (and never with `--json`),
//! redrawn at most ten times a second, and takes one line that nothing
//! else writes to: text for the person goes above it ([`WaitBar::println`]).

use std::io::{IsTerminal, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
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

/// Erases the terminal line the cursor is on (and returns to its start).
const CLEAR_LINE: &str = "\r\x1b[2K";

/// A bar for a wait: `label [#####.....] 3 of 5 unit  note  12s`. A task
/// redraws it at most ten times a second (and once a second for the
/// clock) while the wait goes on; [`WaitBar::finish`], or dropping it,
/// erases it.
#[derive(Debug)]
pub(crate) struct WaitBar {
    line: Option<Arc<Mutex<BarLine>>>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

#[derive(Debug)]
struct BarLine {
    label: String,
    unit: &'static str,
    done: u64,
    total: u64,
    note: String,
    started: Instant,
    /// What the terminal shows now (nothing before the first draw).
    shown: Option<String>,
}

impl WaitBar {
    /// A bar for `total` units, shown only when stderr is a terminal and
    /// the output is not JSON. Needs a tokio runtime (its redraw task).
    pub(crate) fn new(label: impl Into<String>, unit: &'static str, total: u64, json: bool) -> Self {
        if json || !std::io::stderr().is_terminal() {
            return Self::hidden();
        }
        Self::on_terminal(label.into(), unit, total)
    }

    /// A bar that never shows (a no-op for every call).
    pub(crate) fn hidden() -> Self {
        Self { line: None, ticker: None }
    }

    fn on_terminal(label: String, unit: &'static str, total: u64) -> Self {
        let line = Arc::new(Mutex::new(BarLine {
            label,
            unit,
            done: 0,
            total,
            note: String::new(),
            started: Instant::now(),
            shown: None,
        }));
        let drawn = Arc::clone(&line);
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(REDRAW);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                every.tick().await;
                lock(&drawn).redraw();
            }
        });
        Self { line: Some(line), ticker: Some(ticker) }
    }

    /// Whether the bar is on the terminal (false when hidden).
    pub(crate) fn is_shown(&self) -> bool {
        self.line.is_some()
    }

    /// `done` of `total` units (drawn at the next tick).
    pub(crate) fn set(&self, done: u64, total: u64) {
        if let Some(line) = &self.line {
            let mut line = lock(line);
            line.done = done;
            line.total = total;
        }
    }

    /// A short text after the count, such as what is still running.
    pub(crate) fn note(&self, note: impl Into<String>) {
        if let Some(line) = &self.line {
            lock(line).note = note.into();
        }
    }

    /// Writes `text` on stderr above the bar (or just writes it, without a bar).
    pub(crate) fn println(&self, text: &str) {
        match &self.line {
            Some(line) => {
                let mut line = lock(line);
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{CLEAR_LINE}{text}");
                let _ = err.flush();
                line.shown = None;
                line.redraw();
            }
            None => eprintln!("{text}"),
        }
    }

    /// Erases the bar: the wait is over.
    pub(crate) fn finish(mut self) {
        self.clear();
    }

    fn clear(&mut self) {
        if let Some(ticker) = self.ticker.take() {
            ticker.abort();
        }
        if let Some(line) = self.line.take()
            && lock(&line).shown.take().is_some()
        {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(CLEAR_LINE.as_bytes());
            let _ = err.flush();
        }
    }
}

impl Drop for WaitBar {
    fn drop(&mut self) {
        // A wait that failed: the error is printed on a clean line.
        self.clear();
    }
}

/// The bar's state; a panic elsewhere while it was held leaves it usable.
fn lock(line: &Mutex<BarLine>) -> std::sync::MutexGuard<'_, BarLine> {
    line.lock().unwrap_or_else(PoisonError::into_inner)
}

impl BarLine {
    /// Draws the bar if it differs from what the terminal shows.
    fn redraw(&mut self) {
        let width = crossterm::terminal::size().map_or(80, |(columns, _)| usize::from(columns));
        let text = self.render(width);
        if self.shown.as_deref() == Some(text.as_str()) {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "{CLEAR_LINE}{text}");
        let _ = err.flush();
        self.shown = Some(text);
    }

    /// The line, cut to `width` columns (a line that wrapped could not be erased).
    fn render(&self, width: usize) -> String {
        let fraction = if self.total == 0 { 1.0 } else { (self.done as f64 / self.total as f64).min(1.0) };
        let filled = (fraction * WIDTH as f64) as usize;
        let note = if self.note.is_empty() { String::new() } else { format!("  {}", self.note) };
        let elapsed = match self.started.elapsed().as_secs() {
            s @ 0..60 => format!("{s}s"),
            s => crate::output::duration(Duration::from_secs(s)),
        };
        let text = format!(
            "{} [{}{}] {} of {} {}{note}  {elapsed}",
            self.label,
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            self.done,
            self.total,
            self.unit,
        );
        text.chars().take(width.saturating_sub(1)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(done: u64, total: u64, note: &str) -> BarLine {
        BarLine {
            label: "waiting".into(),
            unit: "jobs ended",
            done,
            total,
            note: note.into(),
            started: Instant::now(),
            shown: None,
        }
    }

    #[test]
    fn a_bar_shows_its_count_and_fits_the_terminal() {
        let text = line(1, 4, "3 running").render(200);
        assert!(text.starts_with("waiting [#######.......................] 1 of 4 jobs ended  3 running  "), "{text}");
        assert_eq!(line(0, 0, "").render(200).matches('#').count(), WIDTH, "nothing to wait for is done");
        assert_eq!(line(9, 4, "").render(200).matches('#').count(), WIDTH, "never past full");
        assert_eq!(line(1, 4, "3 running").render(20).chars().count(), 19);
    }

    #[tokio::test]
    async fn a_hidden_bar_does_nothing() {
        let bar = WaitBar::new("waiting", "jobs", 3, true);
        assert!(!bar.is_shown(), "never with --json");
        bar.set(1, 3);
        bar.note("x");
        bar.finish();
    }
}
