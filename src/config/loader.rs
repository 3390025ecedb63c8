//! Reads the configuration files from disk, applies environment overrides, and hands the
//! raw values to validation. Every error from every file is collected.

use super::error::{ConfigError, ConfigErrors, Origin, from_yaml};
use super::raw::{self, Parsed, Spanned};
use super::{Config, SourceFiles, defaults, validate};
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};

/// Loads and validates the configuration at `path`, with overrides from the process
/// environment (`LIVEKIT_URL`, `LIVEKIT_API_KEY`, `LIVEKIT_API_SECRET`, and the variables
/// named by `password_env`).
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// As [`load`], reading environment variables through `env`.
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let daemon: Option<Parsed<raw::Daemon>> = parse_file(path, true, &mut errors);
    let base = path.parent().unwrap_or(Path::new(""));
    let dir = |configured: Option<&Spanned<String>>, default: &str| -> PathBuf {
        let d = configured.map(|s| s.value.as_str()).unwrap_or(default);
        base.join(d)
    };
    let (trunks_dir, dialplans_dir) = match &daemon {
        Some(d) => (
            dir(d.value.trunks_dir.as_ref(), defaults::TRUNKS_DIR),
            dir(d.value.dialplans_dir.as_ref(), defaults::DIALPLANS_DIR),
        ),
        None => (
            base.join(defaults::TRUNKS_DIR),
            base.join(defaults::DIALPLANS_DIR),
        ),
    };
    let trunks: Vec<Parsed<raw::Trunk>> = parse_dir(&trunks_dir, &mut errors);
    let dialplans: Vec<Parsed<raw::Dialplan>> = parse_dir(&dialplans_dir, &mut errors);
    // the state directory: the file's `state_dir`, else the first of systemd's
    // STATE_DIRECTORY (colon-separated), else none (no journal)
    let state_dir = match daemon.as_ref().and_then(|d| d.value.state_dir.as_ref()) {
        Some(s) => Some(base.join(&s.value)),
        None => env(defaults::STATE_DIRECTORY_ENV)
            .and_then(|v| v.split(':').next().map(str::to_string))
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from),
    };
    let files = SourceFiles {
        config: path.to_path_buf(),
        trunks_dir,
        dialplans_dir,
        state_dir,
    };
    let result = validate::validate(daemon, trunks, dialplans, files.clone(), env, &mut errors);
    match result {
        Some(cfg) if errors.is_empty() => Ok(cfg),
        _ => {
            sort_errors(&mut errors, &files);
            if errors.is_empty() {
                errors.push(ConfigError::new(
                    Origin::File(path.to_path_buf()),
                    "invalid configuration",
                ));
            }
            Err(ConfigErrors(errors))
        }
    }
}

fn parse_file<T: DeserializeOwned>(
    file: &Path,
    allow_empty: bool,
    errors: &mut Vec<ConfigError>,
) -> Option<Parsed<T>> {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::new(
                Origin::File(file.to_path_buf()),
                format!("cannot read file: {e}"),
            ));
            return None;
        }
    };
    let blank = text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#') || l == "---"
    });
    if blank && !allow_empty {
        errors.push(ConfigError::new(
            Origin::File(file.to_path_buf()),
            "file is empty",
        ));
        return None;
    }
    // an unknown key stops serde at the first one: report it, blank the key and its value
    // (line numbers stay), parse again, so every unknown key of the file and the other
    // errors of its known keys are reported together
    let mut text = text;
    let mut unknown = Vec::new();
    for _ in 0..MAX_UNKNOWN_KEYS {
        match serde_saphyr::from_str::<T>(&text) {
            Ok(value) => {
                errors.append(&mut unknown);
                return Some(Parsed {
                    file: file.to_path_buf(),
                    value,
                });
            }
            Err(e) => {
                let err = from_yaml(file, &e);
                let blanked = match (&err.origin, err.message.contains("unknown field")) {
                    (Origin::At { line, column, .. }, true) => {
                        blank_entry(&text, *line as usize, *column as usize)
                    }
                    _ => None,
                };
                unknown.push(err);
                match blanked {
                    Some(t) if t != text => text = t,
                    _ => break,
                }
            }
        }
    }
    errors.append(&mut unknown);
    None
}

/// Unknown keys reported per file before giving up on it.
const MAX_UNKNOWN_KEYS: usize = 64;

/// `text` with the block-mapping entry whose key starts at `line`:`column` (1-based)
/// replaced by blanks: the key's line from the key on, and the lines of its value (more
/// indented, or a sequence at the key's own indentation). None for a key in flow style
/// (`{a: 1}`), which is not blanked (the first unknown key is reported alone).
pub fn blank_entry(text: &str, line: usize, column: usize) -> Option<String> {
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let first = lines.get(line.checked_sub(1)?)?;
    let indent = column.checked_sub(1)?;
    let chars: Vec<char> = first.chars().collect();
    if chars.len() < indent || !chars[..indent].iter().all(|c| *c == ' ' || *c == '-') {
        return None;
    }
    lines[line - 1] = chars[..indent].iter().collect();
    let indent_of = |l: &str| l.len() - l.trim_start_matches(' ').len();
    for l in lines.iter_mut().skip(line) {
        let t = l.trim();
        let continues = t.is_empty()
            || t.starts_with('#')
            || indent_of(l) > indent
            || (indent_of(l) == indent && (t == "-" || t.starts_with("- ")));
        if !continues {
            break;
        }
        l.clear();
    }
    Some(lines.join("\n"))
}

/// Parses every `*.yaml` / `*.yml` file of `dir`, in file-name order.
fn parse_dir<T: DeserializeOwned>(dir: &Path, errors: &mut Vec<ConfigError>) -> Vec<Parsed<T>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(ConfigError::new(
                Origin::File(dir.to_path_buf()),
                format!("cannot read directory: {e}"),
            ));
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|x| x.to_str()),
                    Some("yaml") | Some("yml")
                )
        })
        .collect();
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    files
        .iter()
        .filter_map(|f| parse_file(f, false, errors))
        .collect()
}

/// Orders errors as a reader goes through the files: the environment and roomline.yaml
/// first, then trunks, then dialplans, each by file name, line and column.
fn sort_errors(errors: &mut [ConfigError], files: &SourceFiles) {
    errors.sort_by_key(|e| match &e.origin {
        Origin::Env(_) => (0, PathBuf::new(), 0, 0),
        Origin::File(f) | Origin::At { file: f, .. } => {
            let rank = if f.starts_with(&files.dialplans_dir) {
                3
            } else if f.starts_with(&files.trunks_dir) {
                2
            } else {
                1
            };
            let (line, col) = match &e.origin {
                Origin::At { line, column, .. } => (*line, *column),
                _ => (0, 0),
            };
            (rank, f.clone(), line, col)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_entry_blanks_a_key_and_its_value_and_keeps_line_numbers() {
        let text = "a: 1\nbogus:\n  x: 1\n  y:\n  - 2\nc: 3\n";
        let out = blank_entry(text, 2, 1).unwrap();
        assert_eq!(out, "a: 1\n\n\n\n\nc: 3\n");
        // a key in a list item: the item's marker stays, so do its other keys
        let text = "l:\n  - name: a\n    bogus: [1,\n      2]\n    room: r\n  - name: b\n";
        let out = blank_entry(text, 3, 5).unwrap();
        assert_eq!(out, "l:\n  - name: a\n    \n\n    room: r\n  - name: b\n");
        let text = "l:\n  - bogus: 1\n    name: a\n";
        assert_eq!(blank_entry(text, 2, 5).unwrap(), "l:\n  - \n    name: a\n");
        // a sequence at the key's own indentation is its value
        let text = "bogus:\n- 1\n- 2\nc: 3";
        assert_eq!(blank_entry(text, 1, 1).unwrap(), "\n\n\nc: 3");
        // flow style is left alone
        assert!(blank_entry("a: {b: 1, bogus: 2}\n", 1, 11).is_none());
        assert!(blank_entry("a: 1\n", 9, 1).is_none());
    }

    #[test]
    fn every_unknown_key_of_a_file_is_reported_with_its_other_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.yaml");
        std::fs::write(
            &file,
            "inbound:\n  numbers: [\"+15550100\"]\n  allowed_adresses: [10.0.0.0/8]\n\
             outbound:\n  adress: x\n  address: sip.example\nbogus: 1\n",
        )
        .unwrap();
        let mut errors = Vec::new();
        let parsed: Option<Parsed<raw::Trunk>> = parse_file(&file, false, &mut errors);
        assert!(parsed.is_some(), "the rest of the file is still read");
        let at: Vec<(u32, bool)> = errors
            .iter()
            .map(|e| match &e.origin {
                Origin::At { line, .. } => (*line, e.message.contains("unknown field")),
                _ => (0, false),
            })
            .collect();
        assert_eq!(at, [(3, true), (5, true), (7, true)], "{errors:?}");
    }
}
