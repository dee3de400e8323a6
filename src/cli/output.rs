//! How results are printed: readable tables and key/value blocks by default, the API's JSON
//! unchanged with `--json`, ids only with `-q`.

use std::io::Write;

use serde_json::Value;

/// `println!` for command output: a reader that went away (`herald ... | head`) ends the
/// process quietly with success, as other command-line tools do, instead of a panic.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::cli::output::write_line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}

/// Writes one line to stdout; see [`outln!`].
pub fn write_line(line: std::fmt::Arguments<'_>) {
    write_all(format!("{line}\n").as_bytes());
}

/// Set once stdout's reader went away: later output is dropped.
static STDOUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes bytes to stdout. If the reader went away (`herald ... | head`), output stops but
/// the command carries on: a publish or redelivery half done because nobody read its
/// progress would lose work.
pub fn write_all(bytes: &[u8]) {
    use std::sync::atomic::Ordering;
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STDOUT_CLOSED.store(true, Ordering::Relaxed);
            return;
        }
        eprintln!("herald: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Whether stdout's reader went away: a command that only prints (`events tail`) stops.
pub fn stdout_closed() -> bool {
    STDOUT_CLOSED.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Table,
    Json,
    Quiet,
}

/// Prints the API's JSON, pretty.
pub fn json(value: &Value) {
    crate::outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("a JSON value serializes")
    );
}

/// Prints JSON on one line (NDJSON, for output that goes on as it comes).
pub fn json_line(value: &Value) {
    crate::outln!("{value}");
}

/// Text from the server made safe for a terminal: control characters (an escape sequence
/// that would move the cursor or retitle the window, a carriage return that would hide what
/// came before) are shown escaped (`\u{1b}`, `\r`), never passed through.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return text.into();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

/// Prints rows under headers, columns padded to their widest cell; cells are made
/// [`printable`] first.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|cell| printable(cell).into_owned())
                .collect()
        })
        .collect();
    let rows = &rows;
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i + 1 == widths.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        crate::outln!("{}", out.trim_end());
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
}

/// Prints `key  value` lines, keys aligned, values made [`printable`].
pub fn fields(pairs: &[(&str, String)]) {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (key, value) in pairs {
        crate::outln!("{key:<width$}  {}", printable(value));
    }
}

/// A JSON value as a table cell: strings bare, null as `-`, anything else as compact JSON.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// At most `max` characters of `text` on one line, `…` where it was cut.
pub fn excerpt(text: &str, max: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() <= max {
        flat
    } else {
        let mut cut: String = flat.chars().take(max).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(printable("plain, ünïcode"), "plain, ünïcode");
        assert_eq!(
            printable("\u{1b}]0;owned\u{7}a\rb\nc"),
            "\\u{1b}]0;owned\\u{7}a\\rb\\nc"
        );
    }
}
