//! Printing: JSON for scripts, short text for people.
//!
//! Everything the CLI writes on stdout goes through [`Stdout`] (the
//! `outln!` macro, [`json`], and the streams of `blob get`,
//! `queue logs`, `daemon logs`). When the reader has gone
//! (`hearth queue list | head -1`), the command ends right there, quietly,
//! with [`EXIT_STDOUT_CLOSED`], as a Unix tool killed by SIGPIPE does; any
//! other failure to write stdout is an `io_error`. A write that fails
//! unwinds with a [`StdoutEnded`], which `main` turns into the exit status,
//! so no command has to handle it and none can forget to.

use std::fmt;
use std::io::{self, Write};
use std::time::Duration;

use serde::Serialize;

use crate::error::CliError;

// Ending a command by unwinding needs unwinding.
#[cfg(panic = "abort")]
compile_error!("hearth ends a command whose stdout was closed by unwinding; it cannot be built with panic = abort");

/// Exit status when stdout was closed before everything was written: what
/// a shell reports for a process killed by SIGPIPE (128 + 13).
pub(crate) const EXIT_STDOUT_CLOSED: u8 = 141;

/// `println!` for the CLI: through [`Stdout`].
macro_rules! outln {
    () => {{ $crate::output::print(format_args!("\n")); }};
    ($($arg:tt)*) => {{ $crate::output::print(format_args!("{}\n", format_args!($($arg)*))); }};
}

/// Why writing stdout ended the command (the payload of its unwind).
#[derive(Debug)]
pub(crate) enum StdoutEnded {
    /// The reader closed it (`EPIPE`).
    Closed,
    /// Anything else (a full disk behind a redirection).
    Failed(io::Error),
}

/// The CLI's stdout. A write either succeeds or ends the command (see the
/// module docs); it never returns an error.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(io::stdout().lock().write(buf).unwrap_or_else(|e| ended(e)))
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush().unwrap_or_else(|e| ended(e));
        Ok(())
    }
}

/// Writes `bytes` as they are and flushes them (streamed output).
pub(crate) fn bytes_out(bytes: &[u8]) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        ended(e);
    }
}

/// What `outln!` calls.
pub(crate) fn print(args: fmt::Arguments<'_>) {
    if let Err(e) = io::stdout().lock().write_fmt(args) {
        ended(e);
    }
}

fn ended(e: io::Error) -> ! {
    let why = if e.kind() == io::ErrorKind::BrokenPipe { StdoutEnded::Closed } else { StdoutEnded::Failed(e) };
    // Not a panic: resume_unwind skips the panic hook, so nothing is printed.
    std::panic::resume_unwind(Box::new(why))
}

/// Runs a command; a write to stdout that ended it becomes its exit status
/// (quiet for a closed stdout) or its error. Any other panic goes on.
pub(crate) fn catching_stdout_end(command: impl FnOnce() -> Result<u8, CliError>) -> Result<u8, CliError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(command)) {
        Ok(result) => result,
        Err(payload) => match payload.downcast::<StdoutEnded>() {
            Ok(ended) => match *ended {
                StdoutEnded::Closed => Ok(EXIT_STDOUT_CLOSED),
                StdoutEnded::Failed(e) => Err(CliError::new("io_error", format!("cannot write to stdout: {e}"))),
            },
            Err(other) => std::panic::resume_unwind(other),
        },
    }
}

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::new("internal", e.to_string()))?;
    outln!("{text}");
    Ok(())
}

/// Prints an error on stderr: as JSON with `--json`, else as text with its code and hint.
pub(crate) fn error(e: &CliError, as_json: bool) {
    if as_json {
        let value = serde_json::json!({
            "error": { "code": e.code, "message": e.message, "hint": e.hint }
        });
        eprintln!("{value}");
        return;
    }
    eprintln!("hearth: error: {} ({})", e.message, e.code);
    if let Some(hint) = &e.hint {
        eprintln!("hint: {hint}");
    }
}

/// `1h 2m`, `3m 4s`, `5.6s`, `78ms`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis() as u64;
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{}.{}s", s, (ms % 1000) / 100),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// `512 B`, `1.5 KiB`, `3.0 GiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Prints aligned `label: value` lines.
pub(crate) fn fields(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
    for (label, value) in rows {
        outln!("  {:width$}  {value}", format!("{label}:"), width = width + 1);
    }
}

/// Prints rows as aligned columns (the first row is the header).
pub(crate) fn table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, w)| format!("{cell:w$}")).collect();
        outln!("{}", line.join("  ").trim_end());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration(Duration::from_millis(78)), "78ms");
        assert_eq!(duration(Duration::from_millis(5_600)), "5.6s");
        assert_eq!(duration(Duration::from_secs(184)), "3m 4s");
        assert_eq!(duration(Duration::from_secs(3_720)), "1h 2m");
        assert_eq!(duration(Duration::from_secs(90_000)), "1d 1h");
    }

    #[test]
    fn sizes() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }
}
