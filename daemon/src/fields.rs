//! The text log format's fields: `name=value`, with every value that could be mistaken for
//! something else quoted and escaped, so a file name or a peer's string can never forge a
//! line or a field.
//!
//! - A value made only of safe characters (letters, digits and `-_.:/@+,%~[]`) is written as
//!   it is: `pipe=scada`, `addr=127.0.0.1:28101`, `size=4096`.
//! - Any other value is written in double quotes, with `"` and `\` escaped, control characters
//!   (newline, carriage return, tab, escape, ...) and Unicode line separators and direction
//!   overrides as `\n`, `\r`, `\t` or `\u{1b}`: `path="a b.txt"`,
//!   `path="x\nINFO delivered path=evil"`, `path="k=v name.bin"`.
//! - A string recorded as such (`field = "text"`, a `String`) is always quoted, as before.
//! - The message (written by us) is not quoted, but its control characters are escaped: one
//!   event is always one line.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::Writer;

/// The text format's field formatter (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct QuotedFields;

impl<'a> MakeVisitor<Writer<'a>> for QuotedFields {
    type Visitor = QuotedVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        QuotedVisitor {
            writer: target,
            first: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's or span's fields; made by [`QuotedFields`].
#[derive(Debug)]
pub struct QuotedVisitor<'a> {
    writer: Writer<'a>,
    first: bool,
    result: fmt::Result,
}

impl QuotedVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str, always_quote: bool) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        let sep = if std::mem::take(&mut self.first) {
            ""
        } else {
            " "
        };
        let name = field.name();
        self.result = if name == "message" {
            write!(self.writer, "{sep}{}", Controls(value))
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            if always_quote || !is_safe(value) {
                write!(self.writer, "{sep}{name}=\"{}\"", Escaped(value))
            } else {
                write!(self.writer, "{sep}{name}={value}")
            }
        };
    }
}

impl Visit for QuotedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.write(field, value, field.name() != "message");
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.write(field, &value.to_string(), false);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"), false);
    }
}

impl VisitOutput<fmt::Result> for QuotedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for QuotedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// True when `value` can stand unquoted: not empty, and only letters, digits and
/// `-_.:/@+,%~[]` (no space, `=`, quote, backslash, control or non-ASCII character).
pub fn is_safe(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/@+,%~[]".contains(&b))
}

/// Displays a string with `"`, `\`, control characters, Unicode line separators and direction
/// controls escaped (the rest of Unicode as it is): a field value inside quotes.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escape(f, self.0, true)
    }
}

/// Displays a message with only its control characters (and the other characters of
/// [`needs_escape`]) escaped: one event stays one line, quotes stay as written.
struct Controls<'a>(&'a str);

impl fmt::Display for Controls<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        escape(f, self.0, false)
    }
}

/// Writes `text` with line breaks and the characters of [`needs_escape`] escaped, and with
/// `quotes`, `"` and `\` too.
fn escape(f: &mut fmt::Formatter<'_>, text: &str, quotes: bool) -> fmt::Result {
    for c in text.chars() {
        match c {
            '"' if quotes => f.write_str("\\\"")?,
            '\\' if quotes => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\r' => f.write_str("\\r")?,
            '\t' => f.write_str("\\t")?,
            c if needs_escape(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
            c => f.write_char(c)?,
        }
    }
    Ok(())
}

/// Characters that could break a line or hide text on a terminal: C0 and C1 controls, DEL,
/// line and paragraph separators, bidirectional overrides and isolates, zero-width marks.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// The text lines `emit` logs, through the same layer setup as a log file.
    fn lines(emit: impl FnOnce()) -> String {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let out = buf.clone();
        let make = move || Sink(out.clone());
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(make)
            .with_ansi(false)
            .without_time()
            .fmt_fields(QuotedFields);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = buf.lock().expect("lock").clone();
        // Without a timestamp the line starts with the level, padded to five characters.
        let text = String::from_utf8(bytes).expect("utf-8");
        text.lines()
            .map(str::trim_start)
            .collect::<Vec<_>>()
            .join("\n")
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn safe_values_stay_bare_and_others_are_quoted() {
        let out = lines(|| {
            let path = "a b.txt";
            tracing::info!(pipe = %"scada", path = %path, size = 12u64, addr = %"127.0.0.1:80", "delivered");
        });
        assert_eq!(
            out.trim_end(),
            r#"INFO gapsync_daemon::fields::tests: delivered pipe=scada path="a b.txt" size=12 addr=127.0.0.1:80"#
        );
    }

    #[test]
    fn a_name_cannot_forge_a_line_or_a_field() {
        let out = lines(|| {
            for name in [
                "x\nINFO delivered path=evil",
                "k=v name.bin",
                "q\"uote\\",
                "\u{1b}[31mred\r",
            ] {
                tracing::info!(path = %name, "delivered");
            }
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "one line per event: {out}");
        assert_eq!(
            lines[0],
            r#"INFO gapsync_daemon::fields::tests: delivered path="x\nINFO delivered path=evil""#
        );
        assert_eq!(
            lines[1],
            r#"INFO gapsync_daemon::fields::tests: delivered path="k=v name.bin""#
        );
        assert_eq!(
            lines[2],
            r#"INFO gapsync_daemon::fields::tests: delivered path="q\"uote\\""#
        );
        assert_eq!(
            lines[3],
            r#"INFO gapsync_daemon::fields::tests: delivered path="\u{1b}[31mred\r""#
        );
    }

    #[test]
    fn strings_errors_debug_values_and_messages() {
        let out = lines(|| {
            let e = std::io::Error::other("disk full");
            tracing::warn!(spool_file = "deleted", error = %e, kind = ?Some(1), empty = %"", "line one\nline \"two\"");
        });
        assert_eq!(
            out.trim_end(),
            r#"WARN gapsync_daemon::fields::tests: line one\nline "two" spool_file="deleted" error="disk full" kind="Some(1)" empty="""#
        );
    }

    #[test]
    fn span_fields_are_quoted_too() {
        let out = lines(|| {
            let span = tracing::info_span!("conn", peer = %"evil peer=1");
            let _g = span.enter();
            tracing::info!("hello");
        });
        assert!(out.contains(r#"conn{peer="evil peer=1"}"#), "{out}");
    }

    #[test]
    fn the_safe_set() {
        for v in [
            "scada",
            "127.0.0.1:28101",
            "[::1]:80",
            "plant/2026/a-b_c.bin",
            "12.5",
            "5m30s",
            "a+b@c,d%e~f",
        ] {
            assert!(is_safe(v), "{v}");
        }
        for v in [
            "",
            "a b",
            "k=v",
            "a\"",
            "a\\b",
            "a\nb",
            "é",
            "a\tb",
            "x\u{202e}y",
        ] {
            assert!(!is_safe(v), "{v:?}");
        }
        assert_eq!(Escaped("\u{202e}\u{7f}é").to_string(), "\\u{202e}\\u{7f}é");
    }
}
