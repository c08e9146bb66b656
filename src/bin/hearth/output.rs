//! Printing: JSON for scripts, short text for people.

use std::time::Duration;

use serde::Serialize;

use crate::error::CliError;

/// Prints `value` as pretty JSON on stdout.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value).map_err(|e| CliError::new("internal", e.to_string()))?;
    println!("{text}");
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
        println!("  {:width$}  {value}", format!("{label}:"), width = width + 1);
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
        println!("{}", line.join("  ").trim_end());
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
