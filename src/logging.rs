//! Logging: tracing subscriber setup (human or JSON, level from `LOG_LEVEL` or config)
//! and `Phone`, the wrapper every phone number goes through before it reaches a log line.

use crate::config::LogFormat;
use crate::config::types::parse_log_filter;
use std::fmt;
use std::io::IsTerminal;
use tracing::level_filters::LevelFilter;

/// Installs the global subscriber. `LOG_LEVEL`, when set, wins over `level`.
/// Logs go to stderr (journald captures it under systemd).
pub fn init(level: &str, format: LogFormat) -> Result<(), String> {
    let (source, level) = match std::env::var("LOG_LEVEL") {
        Ok(v) if !v.trim().is_empty() => ("LOG_LEVEL", v),
        _ => ("logging.level", level.to_string()),
    };
    let filter = parse_log_filter(&level).map_err(|e| format!("{source}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let res = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    res.map_err(|e| e.to_string())
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
