//! Shared helpers for Roomline's integration tests (include with `mod common;`).
//!
//! The tests use REAL peers, installed by `scripts/install-test-deps`:
//! * `livekit-server` (see [`livekit::LiveKitServer`]),
//! * the Python room peer `tests/peers/roompeer.py` in a venv (see [`run_roompeer`]).
//!
//! Missing tools make the tests panic with instructions; they are never silently skipped,
//! since a skipped test would hide failures.
//!
//! Tool lookup (env overrides the default):
//! * `ROOMLINE_TOOLS`           default `$HOME/.cache/roomline`
//! * `ROOMLINE_LIVEKIT_SERVER`  default `$ROOMLINE_TOOLS/bin/livekit-server`
//! * `ROOMLINE_PYTHON`          default `$ROOMLINE_TOOLS/venv/bin/python`
#![allow(dead_code)]

pub mod livekit;
pub mod pause;
pub mod pki;
pub mod roomline;
pub mod uac;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to fix a missing tool; included in every "not found" panic.
pub const INSTALL_HINT: &str = "run `scripts/install-test-deps` (it installs livekit-server, \
     sipp, sox and the Python venv for tests/peers/roompeer.py; set ROOMLINE_TOOLS / \
     ROOMLINE_LIVEKIT_SERVER / ROOMLINE_PYTHON to use other locations)";

/// The repository root (the crate's manifest directory).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `$ROOMLINE_TOOLS`, default `$HOME/.cache/roomline` (same rule as scripts/install-test-deps).
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ROOMLINE_TOOLS").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .expect("neither ROOMLINE_TOOLS nor HOME is set: cannot locate the test tools");
    PathBuf::from(home).join(".cache").join("roomline")
}

/// Path of a tool: `$env_var` if set, else `default`. Panics (with [`INSTALL_HINT`]) if it
/// is not an existing file.
pub fn tool_path(env_var: &str, default: PathBuf, what: &str) -> PathBuf {
    let (path, origin) = match std::env::var_os(env_var).filter(|v| !v.is_empty()) {
        Some(p) => (PathBuf::from(p), format!("from ${env_var}")),
        None => (default, format!("default location; ${env_var} not set")),
    };
    if !path.is_file() {
        panic!(
            "{what} not found at {} ({origin}): {INSTALL_HINT}",
            path.display()
        );
    }
    path
}

/// The venv Python that has `livekit`, `livekit-api` and `numpy`.
pub fn python() -> PathBuf {
    tool_path(
        "ROOMLINE_PYTHON",
        tools_dir().join("venv").join("bin").join("python"),
        "Python for the room peer",
    )
}

/// `tests/peers/roompeer.py`.
pub fn roompeer_script() -> PathBuf {
    repo_root().join("tests").join("peers").join("roompeer.py")
}

/// The last `lines` lines of a (log) file, for failure messages.
pub fn tail_file(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("<cannot open {}>", path.display());
    };
    // read at most the last 64 KiB
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits for `child` up to `timeout`; on timeout kills it (SIGKILL, by its PID via
/// `Child::kill`) and reaps it. Returns `None` on timeout.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// Sends `signal` (e.g. "TERM") to `pid` with kill(1). Returns whether kill succeeded.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Stops a child process: SIGTERM, wait up to `grace`, then SIGKILL; always reaps it.
/// Returns true if it exited within the grace period.
pub fn stop_child(child: &mut Child, grace: Duration) -> bool {
    if let Ok(Some(_)) = child.try_wait() {
        return true;
    }
    send_signal(child.id(), "TERM");
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Result of one `roompeer.py` run.
#[derive(Debug)]
pub struct PeerRun {
    /// `None` if the run was killed on timeout.
    pub status: Option<ExitStatus>,
    /// The JSON object printed on stdout (`Value::Null` if stdout was not valid JSON).
    pub json: serde_json::Value,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
    pub args: Vec<String>,
}

impl PeerRun {
    /// Whether the peer exited 0 and reported `"ok": true`.
    pub fn is_ok(&self) -> bool {
        self.status.is_some_and(|s| s.success()) && self.json["ok"] == serde_json::Value::Bool(true)
    }

    /// The report, or a panic that shows everything needed to debug the run.
    pub fn expect_ok(&self) -> &serde_json::Value {
        assert!(self.is_ok(), "roompeer failed:\n{}", self.describe());
        &self.json
    }

    /// A numeric field of the report; panics with the whole run if absent or not a number.
    pub fn f64(&self, key: &str) -> f64 {
        self.json[key].as_f64().unwrap_or_else(|| {
            panic!(
                "roompeer report has no numeric {key:?}:\n{}",
                self.describe()
            )
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "args: {:?}\nstatus: {}\nelapsed: {:.2?}\nstdout: {}\nstderr (tail):\n{}",
            self.args,
            self.status
                .map_or("killed after timeout".to_string(), |s| s.to_string()),
            self.elapsed,
            self.stdout.trim(),
            last_lines(&self.stderr, 40),
        )
    }
}

fn last_lines(text: &str, n: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// Runs `python tests/peers/roompeer.py ARGS...`, killing it after `timeout`.
/// Does not panic on a failed run (tests may expect failures): see [`PeerRun::expect_ok`].
pub fn run_roompeer<I, S>(args: I, timeout: Duration) -> PeerRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let script = roompeer_script();
    assert!(script.is_file(), "missing {}", script.display());
    run_peer(&python(), &[script.as_os_str()], args, timeout)
}

/// Runs a peer program (`program PREFIX... ARGS...`) that prints one JSON report on
/// stdout (the last line starting with `{` counts), killing it after `timeout`. Does not
/// panic on a failed run.
pub fn run_peer<I, S>(
    program: &Path,
    prefix: &[&std::ffi::OsStr],
    args: I,
    timeout: Duration,
) -> PeerRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_string()).collect();
    // stdout/stderr go to files: no pipe can fill up and block the child
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let started = Instant::now();
    let mut child = Command::new(program)
        .args(prefix)
        .args(&args)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}: {INSTALL_HINT}", program.display()));
    let status = wait_timeout(&mut child, timeout);
    let elapsed = started.elapsed();
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(serde_json::Value::Null);
    PeerRun {
        status,
        json,
        stdout,
        stderr,
        elapsed,
        args,
    }
}

/// `tests/peers/phone.py ARGS...` (pjsua2, in the room peer's venv).
pub fn run_phone<I, S>(args: I, timeout: Duration) -> PeerRun
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let script = repo_root().join("tests/peers/phone.py");
    run_peer(&python(), &[script.as_os_str()], args, timeout)
}

/// `got` is within `rel` (relative) of `want`.
pub fn within(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= want * rel
}

/// A 16-bit mono WAV of a `hz` sine at half scale, `rate` samples per second, made by sox
/// in `dir`.
pub fn tone_wav(dir: &Path, hz: u32, rate: u32, seconds: u32) -> PathBuf {
    let path = dir.join(format!("tone{hz}_{rate}.wav"));
    let st = Command::new("sox")
        .args(["-n", "-r", &rate.to_string(), "-c", "1", "-b", "16"])
        .arg(&path)
        .args([
            "synth",
            &seconds.to_string(),
            "sine",
            &hz.to_string(),
            "vol",
            "0.5",
        ])
        .status()
        .expect("sox");
    assert!(st.success());
    path
}
