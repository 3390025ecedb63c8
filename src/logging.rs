//! Logging: tracing subscriber setup (human or JSON, level from `LOG_LEVEL` or config;
//! control characters escaped in every line, `SafeWriter`) and `Phone`, the wrapper every phone number goes through before it reaches a log line.

use crate::config::LogFormat;
use crate::config::types::parse_log_filter;
use std::fmt;
use std::io::{self, Write};
use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. `LOG_LEVEL`, when set, wins over `level`.
/// Logs go to stderr (journald captures it under systemd).
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let (source, level) = match std::env::var("LOG_LEVEL") {
        Ok(v) if !v.trim().is_empty() => ("LOG_LEVEL", v),
        _ => ("logging.level", level.to_string()),
    };
    let filter = parse_log_filter(&level).map_err(|e| format!("{source}: {e}"))?;
    subscriber(filter, format, std::io::stderr)
        .try_init()
        .map_err(|e| e.to_string())
}

/// The one place log lines are formatted: human or JSON lines through [`SafeWriter`].
/// No ANSI colours: their escape sequences are what the writer takes out.
fn subscriber<W>(
    filter: EnvFilter,
    format: LogFormat,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(true);
    match format {
        LogFormat::Human => Box::new(
            builder
                .with_writer(SafeWriter {
                    inner: writer,
                    format,
                })
                .finish(),
        ),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_writer(SafeWriter {
                    inner: writer,
                    format,
                })
                .finish(),
        ),
    }
}

/// Escapes what a log line must not carry raw: bytes from the wire (a SIP header with
/// CR, LF, NUL or ESC) could otherwise end the line early, forge another, or drive the
/// operator's terminal. Each formatted line arrives whole (tracing-subscriber writes an
/// event in one piece) and goes on with its final newline only.
pub struct SafeWriter<W> {
    inner: W,
    format: LogFormat,
}

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for SafeWriter<W> {
    type Writer = SafeLine<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        SafeLine {
            inner: self.inner.make_writer(),
            format: self.format,
        }
    }
}

/// One line's writer (see [`SafeWriter`]).
pub struct SafeLine<W> {
    inner: W,
    format: LogFormat,
}

impl<W: Write> Write for SafeLine<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.inner
            .write_all(escape_line(&text, self.format).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Characters a log line shows escaped: C0 and C1 controls and DEL (`char::is_control`),
/// the Unicode line and paragraph separators, and the bidirectional overrides and
/// isolates (which reorder what a terminal shows).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `line` with every unsafe character escaped but a final newline. Human lines get
/// `\n`, `\r`, `\t`, `\0` or `\u{..}`; JSON lines (serde_json already escapes the C0
/// controls) get `\u00XX` for the rest, valid JSON since they only occur in strings.
pub fn escape_line(line: &str, format: LogFormat) -> String {
    let (body, newline) = match line.strip_suffix('\n') {
        Some(b) => (b, "\n"),
        None => (line, ""),
    };
    if !body.chars().any(unsafe_char) {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in body.chars() {
        if !unsafe_char(c) {
            out.push(c);
            continue;
        }
        match (format, c) {
            (LogFormat::Human, '\n') => out.push_str("\\n"),
            (LogFormat::Human, '\r') => out.push_str("\\r"),
            (LogFormat::Human, '\t') => out.push_str("\\t"),
            (LogFormat::Human, '\0') => out.push_str("\\0"),
            (LogFormat::Human, c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            (LogFormat::Json, c) => out.push_str(&format!("\\u{:04x}", c as u32)),
        }
    }
    out.push_str(newline);
    out
}

/// A phone number for a log line. Shown in full only when debug logging is on anywhere;
/// otherwise all but the first two and last two digits are masked: `+44*******89`.
pub struct Phone<'a>(pub &'a str);

impl fmt::Display for Phone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if LevelFilter::current() >= LevelFilter::DEBUG {
            f.write_str(self.0)
        } else {
            f.write_str(&redact(self.0))
        }
    }
}

/// Free text that may embed phone numbers (a room named `support-+447700900089`, an
/// identity `sip_+15551230000`): every run of 7 or more digits (with its `+`) is masked
/// as [`Phone`] masks a number, unless debug logging is on.
pub struct Masked<'a>(pub &'a str);

/// Masks the digit runs of `text` (see [`Masked`]).
pub fn mask_numbers(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let start = i;
        let plus = chars[i] == '+';
        let mut j = if plus { i + 1 } else { i };
        while j < chars.len() && chars[j].is_ascii_digit() {
            j += 1;
        }
        let digits = j - if plus { i + 1 } else { i };
        if digits >= 7 {
            let run: String = chars[start..j].iter().collect();
            out.push_str(&redact(&run));
            i = j;
        } else if digits > 0 {
            out.extend(&chars[start..j]);
            i = j;
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if LevelFilter::current() >= LevelFilter::DEBUG {
            f.write_str(self.0)
        } else {
            f.write_str(&mask_numbers(self.0))
        }
    }
}

impl fmt::Debug for Phone<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Masks a number, keeping a leading `+`, the first two and the last two characters of
/// numbers longer than six characters; shorter ones are masked whole.
pub fn redact(number: &str) -> String {
    let (plus, rest) = match number.strip_prefix('+') {
        Some(r) => ("+", r),
        None => ("", number),
    };
    let chars: Vec<char> = rest.chars().collect();
    let n = chars.len();
    if n <= 6 {
        return format!("{plus}{}", "*".repeat(n));
    }
    let mut out = String::from(plus);
    out.extend(&chars[..2]);
    out.push_str(&"*".repeat(n - 4));
    out.extend(&chars[n - 2..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// What hostile values look like in the log lines of `format`: three events, each a
    /// line of its own, no raw control character anywhere.
    fn log_hostile(format: LogFormat) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let sub = subscriber(EnvFilter::new("debug"), format, move || writer.clone());
        let hostile = "x\r\nINFO forged: admin logged in\u{1b}[2J\u{0}\u{7f}\u{9b}\u{202e}";
        tracing::subscriber::with_default(sub, || {
            tracing::info!(header = %hostile, "received {}", hostile);
            tracing::debug!(value = ?hostile, "debug value");
            tracing::warn!("plain");
        });
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn log_lines_escape_control_characters_human() {
        let text = log_hostile(LogFormat::Human);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            !lines.iter().any(|l| l.chars().any(unsafe_char)),
            "{text:?}"
        );
        assert!(lines[0].contains("x\\r\\nINFO forged"), "{}", lines[0]);
        // (tracing-subscriber writes ESC and DEL in a message as \x1b, \x7f itself)
        assert!(
            lines[0].contains("header=x\\r\\nINFO forged"),
            "{}",
            lines[0]
        );
        assert!(
            lines[0].ends_with("\\u{1b}[2J\\0\\u{7f}\\u{9b}\\u{202e}"),
            "{}",
            lines[0]
        );
        assert!(lines[2].ends_with("plain"), "{}", lines[2]);
    }

    #[test]
    fn log_lines_escape_control_characters_json() {
        let text = log_hostile(LogFormat::Json);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(
            !lines.iter().any(|l| l.chars().any(unsafe_char)),
            "{text:?}"
        );
        let hostile = "x\r\nINFO forged: admin logged in\u{1b}[2J\u{0}\u{7f}\u{9b}\u{202e}";
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        // the value survives, escaped on the way and read back whole
        assert_eq!(v["header"], hostile, "{}", lines[0]);
        assert_eq!(v["message"], format!("received {hostile}"));
    }

    #[test]
    fn escape_line_keeps_clean_lines_and_the_final_newline() {
        assert_eq!(escape_line("a b\n", LogFormat::Human), "a b\n");
        assert_eq!(escape_line("a\tb\n", LogFormat::Human), "a\\tb\n");
        assert_eq!(escape_line("a\u{7f}\n", LogFormat::Json), "a\\u007f\n");
        assert_eq!(escape_line("é ü 日本", LogFormat::Human), "é ü 日本");
    }

    #[test]
    fn redaction_keeps_only_the_ends() {
        assert_eq!(redact("+447700900089"), "+44********89");
        assert_eq!(redact("15550100123"), "15*******23");
        assert_eq!(redact("1234"), "****");
        assert_eq!(redact("+123456"), "+******");
        assert_eq!(redact(""), "");
        assert_eq!(redact("anonymous"), "an*****us");
    }

    #[test]
    fn numbers_inside_text_are_masked() {
        assert_eq!(
            mask_numbers("support-+447700900089"),
            "support-+44********89"
        );
        assert_eq!(mask_numbers("sip_15551230000"), "sip_15*******00");
        assert_eq!(mask_numbers("lobby-2001"), "lobby-2001");
        assert_eq!(
            mask_numbers("room 12 and +1 and 1234567"),
            "room 12 and +1 and 12***67"
        );
        assert_eq!(mask_numbers(""), "");
    }
}
