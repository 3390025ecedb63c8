//! Configuration errors: each one names where it comes from (file:line:column, or the
//! environment variable) and says what was expected.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a configuration value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A position in a YAML file (1-based line and column).
    At {
        file: PathBuf,
        line: u32,
        column: u32,
    },
    /// A whole file (missing, unreadable, empty).
    File(PathBuf),
    /// An environment variable that overrides the file.
    Env(&'static str),
}

impl Origin {
    pub fn at(file: &Path, loc: serde_saphyr::Location) -> Self {
        if loc.line() == 0 {
            return Origin::File(file.to_path_buf());
        }
        Origin::At {
            file: file.to_path_buf(),
            line: loc.line() as u32,
            column: loc.column() as u32,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::At { file, line, column } => write!(f, "{}:{line}:{column}", file.display()),
            Origin::File(file) => write!(f, "{}", file.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// One configuration error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    pub message: String,
}

impl ConfigError {
    pub fn new(origin: Origin, message: impl Into<String>) -> Self {
        ConfigError {
            origin,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// Every error found in one load, in file order. Never empty.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            writeln!(f, "{e}")?;
        }
        let n = self.0.len();
        write!(
            f,
            "{n} configuration error{}",
            if n == 1 { "" } else { "s" }
        )
    }
}

impl std::error::Error for ConfigErrors {}

/// Turns a serde-saphyr error into our form: its location and a message without the
/// snippet, the position prefix, or hints meant for the library's users.
pub fn from_yaml(file: &Path, err: &serde_saphyr::Error) -> ConfigError {
    let origin = match err.location() {
        Some(loc) => Origin::at(file, loc),
        None => Origin::File(file.to_path_buf()),
    };
    let text = err.without_snippet().to_string();
    let mut msg = text.lines().next().unwrap_or("").trim();
    msg = msg.strip_prefix("error: ").unwrap_or(msg);
    // "line 4 column 3: unknown field ..." -> "unknown field ..."
    if msg.starts_with("line ")
        && let Some((_, rest)) = msg.split_once(": ")
    {
        msg = rest;
    }
    // "... at line 5, column 3" repeats the location we print first.
    if let Some(i) = msg.rfind(" at line ") {
        msg = &msg[..i];
    }
    let msg = msg
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(msg)
        .replace(
            "expected mapping start",
            "expected a mapping of `key: value` pairs",
        )
        .replace("expected sequence start", "expected a list")
        .replace("expected string scalar", "expected a string");
    ConfigError::new(origin, format!("invalid YAML: {msg}"))
}
