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
    let files = SourceFiles {
        config: path.to_path_buf(),
        trunks_dir,
        dialplans_dir,
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
    match serde_saphyr::from_str::<T>(&text) {
        Ok(value) => Some(Parsed {
            file: file.to_path_buf(),
            value,
        }),
        Err(e) => {
            errors.push(from_yaml(file, &e));
            None
        }
    }
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
