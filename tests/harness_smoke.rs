//! Smoke test of the test harness itself, with real peers and no Roomline code: a real
//! livekit-server, the Python room peer (`tests/peers/roompeer.py`) and its audio oracle.
//! If these fail, end-to-end tests built on the harness cannot be trusted. Also the unit
//! tests of the load tools' analysis (`scripts/soak`, `scripts/bench`), which need no peers.
//!
//! Needs `scripts/install-test-deps` to have been run (the tests panic, with that hint,
//! when a tool is missing; they are never skipped).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::livekit::LiveKitServer;
use common::{INSTALL_HINT, run_roompeer};

const PEER_TIMEOUT: Duration = Duration::from_secs(120);

fn unique_room(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn within(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= want * rel
}

/// A 1000 Hz tone published by one room participant reaches another one through a real
/// livekit-server (Opus, WebRTC over loopback), at the right frequency and nearly all of it.
#[test]
fn tone_crosses_livekit_between_two_room_peers() {
    let t0 = Instant::now();
    let mut server = LiveKitServer::start();
    let started_in = t0.elapsed();
    let room = unique_room("smoke-tone");
    let mut args = vec!["tone-pair".to_string()];
    args.extend(server.peer_args());
    // the peer's own --timeout fires first, so a hang is reported as JSON with logs
    args.extend(
        [
            "--room",
            &room,
            "--freq",
            "1000",
            "--seconds",
            "3",
            "--timeout",
            "90",
        ]
        .map(String::from),
    );
    let run = run_roompeer(&args, PEER_TIMEOUT);
    let report = run.expect_ok();
    eprintln!(
        "livekit-server ready in {started_in:.2?}; tone-pair took {:.2?}: dominant_hz={} \
         frames_received={} frames_expected={} rms={} first_tone_latency_ms={}",
        run.elapsed,
        report["dominant_hz"],
        report["frames_received"],
        report["frames_expected"],
        report["rms"],
        report["first_tone_latency_ms"],
    );

    let dominant = run.f64("dominant_hz");
    let received = run.f64("frames_received");
    let expected = run.f64("frames_expected");
    let rms = run.f64("rms");
    assert!(
        within(dominant, 1000.0, 0.02),
        "dominant frequency {dominant} Hz is not within 2% of 1000 Hz\n{}",
        run.describe()
    );
    // the publisher really sent 3 s of tone in 10 ms frames
    assert_eq!(
        expected,
        300.0,
        "publisher sent an unexpected tone length\n{}",
        run.describe()
    );
    assert!(
        received >= 0.9 * expected,
        "only {received} of {expected} tone frames arrived\n{}",
        run.describe()
    );
    // more than a few extra frames would mean warm-up audio leaked into the measurement
    // or audio was duplicated
    assert!(
        received <= expected + 10.0,
        "{received} non-silent frames for {expected} sent\n{}",
        run.describe()
    );
    // sent at 0.3 peak (RMS 0.212); Opus must neither drop nor boost it much
    assert!(
        (0.1..0.35).contains(&rms),
        "received RMS {rms} implausible\n{}",
        run.describe()
    );

    // the peers really went through THIS server (not some other one on a default port)
    let log = std::fs::read_to_string(server.log_path()).unwrap_or_default();
    assert!(
        log.contains(&room),
        "room {room} never appeared in the server log; tail:\n{}",
        server.log_tail(40)
    );

    let pid = server.pid();
    assert!(
        process_exists(pid),
        "livekit-server pid {pid} vanished during the test"
    );
    let t_stop = Instant::now();
    let graceful = server.stop();
    eprintln!(
        "livekit-server stopped in {:.2?} (graceful: {graceful})",
        t_stop.elapsed()
    );
    assert!(
        !process_exists(pid),
        "livekit-server pid {pid} still exists after stop()"
    );
}

/// The oracle's analysis functions give the right answers on synthetic signals (440,
/// 1000, 3000 Hz, two tones, silence, gaps) and would notice a wrong frequency.
#[test]
fn oracle_selftest() {
    let run = run_roompeer(["selftest"], Duration::from_secs(60));
    let report = run.expect_ok();
    let checks = report["checks"].as_array().expect("checks array");
    assert!(
        checks.len() >= 10,
        "selftest ran only {} checks\n{}",
        checks.len(),
        run.describe()
    );
    for c in checks {
        assert_eq!(c["ok"], serde_json::Value::Bool(true), "check failed: {c}");
    }
    assert!(
        checks.iter().any(|c| c["name"] == "440_is_not_1000"),
        "{}",
        run.describe()
    );
}

/// Cross-check of the oracle with an independent generator (sox): a 440 Hz tone is
/// reported as 440 Hz, i.e. NOT as the 1000 Hz the smoke test expects, and its length in
/// non-silent frames is right.
#[test]
fn oracle_tells_440_from_1000_on_sox_audio() {
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone440.wav");
    // 1 s of 440 Hz at -10 dBFS, then 0.5 s of silence: 48 kHz mono 16-bit
    let status = Command::new("sox")
        .args(["-n", "-r", "48000", "-c", "1", "-b", "16"])
        .arg(&wav)
        .args(["synth", "1", "sine", "440", "vol", "0.3", "pad", "0", "0.5"])
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("cannot run sox: {e}: {INSTALL_HINT}"));
    assert!(status.success(), "sox failed: {status}");

    let run = run_roompeer(
        ["analyze-wav", wav.to_str().unwrap()],
        Duration::from_secs(60),
    );
    run.expect_ok();
    let dominant = run.f64("dominant_hz");
    assert!(
        within(dominant, 440.0, 0.02),
        "sox 440 Hz analysed as {dominant} Hz\n{}",
        run.describe()
    );
    assert!(
        !within(dominant, 1000.0, 0.02),
        "440 Hz passes as 1000 Hz\n{}",
        run.describe()
    );
    let nonsilent = run.f64("frames_nonsilent");
    assert!(
        (99.0..=101.0).contains(&nonsilent),
        "1 s tone gave {nonsilent} frames\n{}",
        run.describe()
    );
    assert_eq!(run.f64("frames_10ms"), 150.0, "{}", run.describe());
}

/// The peer fails loudly and cleanly (exit status 1, `"ok": false` JSON) when nothing is
/// published in the room, instead of hanging or reporting an empty success.
#[test]
fn listen_without_publisher_fails_cleanly() {
    let server = LiveKitServer::start();
    let room = unique_room("smoke-empty");
    let mut args = vec!["listen".to_string()];
    args.extend(server.peer_args());
    args.extend(
        [
            "--room",
            &room,
            "--identity",
            "lonely",
            "--seconds",
            "2",
            "--wait-timeout",
            "2",
        ]
        .map(String::from),
    );
    let run = run_roompeer(&args, Duration::from_secs(60));
    assert!(
        !run.is_ok(),
        "listen in an empty room succeeded?\n{}",
        run.describe()
    );
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        run.describe()
    );
    assert_eq!(
        run.json["ok"],
        serde_json::Value::Bool(false),
        "{}",
        run.describe()
    );
    let error = run.json["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("no audio track"),
        "unexpected error {error:?}\n{}",
        run.describe()
    );
    // it did connect (the failure is the missing audio, not the connection)
    assert!(
        run.stderr.contains("lonely connected"),
        "{}",
        run.describe()
    );
}

/// The soak tool's parsing and report logic (`scripts/bench/soak_report.py`: sipp's step
/// and error logs, RTP segments, per-call outcomes, the drift fit and the end check) and
/// the harness pieces it shares with the benchmark (the sipp phone scenario, the PCMU tone
/// check), on made-up data: `scripts/bench/test_soak.py` (Python unittest, no peers).
#[test]
fn soak_tool_selftest() {
    let out = Command::new(common::python())
        .args(["-m", "unittest", "-v", "test_soak"])
        .current_dir(common::repo_root().join("scripts").join("bench"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run the soak tool's unit tests");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let ran: usize = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("Ran ")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0);
    assert!(ran >= 14, "only {ran} unit tests ran\n{text}");
}
