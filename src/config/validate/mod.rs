//! Turns raw YAML values into a validated `Config`, collecting every error with its
//! location. Nothing here touches the disk; environment variables come in as a function.
//! `Ctx` carries the error list; `daemon` checks roomline.yaml, `trunk` the trunk files
//! (and that no call could match two trunks), `dialplan` the rules.

mod daemon;
mod dialplan;
mod trunk;

use super::error::{ConfigError, Origin};
use super::raw::{self, Parsed, Spanned};
use super::{Config, SourceFiles, types};
use std::path::Path;
use std::time::Duration;

/// The validation context: where errors go and how environment variables are read.
struct Ctx<'a> {
    errors: &'a mut Vec<ConfigError>,
    env: &'a dyn Fn(&str) -> Option<String>,
    warnings: Vec<ConfigError>,
}

impl Ctx<'_> {
    fn warn_at<T>(&mut self, file: &Path, s: &Spanned<T>, msg: impl Into<String>) {
        self.warnings
            .push(ConfigError::new(Origin::at(file, s.referenced), msg));
    }

    fn err(&mut self, origin: Origin, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(origin, msg));
    }

    fn err_at<T>(&mut self, file: &Path, s: &Spanned<T>, msg: impl Into<String>) {
        self.err(Origin::at(file, s.referenced), msg);
    }

    /// Parses a spanned string with `f`, reporting a failure at its location.
    fn parse<T>(
        &mut self,
        file: &Path,
        s: &Spanned<String>,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match f(&s.value) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.err_at(file, s, msg);
                None
            }
        }
    }

    /// Like `parse`, for an optional value with a default written as text.
    fn parse_or<T>(
        &mut self,
        file: &Path,
        s: Option<&Spanned<String>>,
        default: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match s {
            Some(s) => self.parse(file, s, f),
            None => Some(f(default).expect("built-in default is valid")),
        }
    }

    fn duration_or(
        &mut self,
        file: &Path,
        s: Option<&Spanned<String>>,
        default: Duration,
    ) -> Option<Duration> {
        match s {
            None => Some(default),
            Some(s) => {
                let d = self.parse(file, s, types::parse_duration)?;
                if d.is_zero() {
                    self.err_at(file, s, "duration must be greater than zero");
                    return None;
                }
                Some(d)
            }
        }
    }
}

/// Returns a `Config` only if every part validated; errors go to `errors`.
pub(super) fn validate(
    daemon: Option<Parsed<raw::Daemon>>,
    trunks: Vec<Parsed<raw::Trunk>>,
    dialplans: Vec<Parsed<raw::Dialplan>>,
    files: SourceFiles,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let mut cx = Ctx {
        errors,
        env,
        warnings: Vec::new(),
    };
    let before = cx.errors.len();
    let daemon = daemon.and_then(|d| daemon::daemon_settings(&mut cx, &d.file, d.value));
    let tls_listener = daemon.as_ref().is_some_and(|d| {
        d.1.listeners
            .iter()
            .any(|l| l.transport == types::Transport::Tls)
    });
    let (trunks, trunk_names) = trunk::trunk_set(&mut cx, trunks, tls_listener);
    let rules = dialplan::rule_set(&mut cx, dialplans, &trunks, &trunk_names);
    let (livekit, sip, rtp, http, limits, logging) = daemon?;
    if cx.errors.len() != before {
        return None;
    }
    Some(Config {
        livekit,
        sip,
        rtp,
        http,
        limits,
        logging,
        trunks,
        rules,
        files,
        warnings: cx.warnings,
    })
}
