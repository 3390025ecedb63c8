//! The phone's audio reaches the room at its own level from the first moment (issue 22:
//! the first 0.5-0.75 s of a call peaked at up to twice the tone's amplitude). A real
//! phone (pjsua2, tests/peers/phone.py) plays a 0.5-amplitude tone into a call through
//! the daemon; a LiveKit Python SDK participant records the caller's track; the level
//! of the first second from the tone's onset must be within 1 dB of the steady level.
//!
//! Needs `scripts/install-test-deps` (the harness panics with that hint otherwise).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{Roomline, Setup, roompeer_bg, wait_participants};
use common::{PeerRun, python, run_roompeer};

const CALLER: &str = "+15551230000";
const CALLED: &str = "+15550100";

/// Audio tests take the CPU they measure with; one at a time.
static MEDIA: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn phone(args: &[String], timeout: Duration) -> PeerRun {
    let script = common::repo_root().join("tests/peers/phone.py");
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(python())
        .arg(&script)
        .args(args)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start phone.py");
    let status = common::wait_timeout(&mut child, timeout);
    let stdout = std::fs::read_to_string(&out).unwrap_or_default();
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
        stderr: std::fs::read_to_string(&err).unwrap_or_default(),
        elapsed: started.elapsed(),
        args: args.to_vec(),
    }
}

/// One call with `codec`: the room's recording of the phone's 1 kHz tone, analysed from
/// its onset (`analyze-wav --levels`).
fn room_levels(codec: &str, room: &str) -> serde_json::Value {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let lk = LiveKitServer::start();
    let plan = format!(
        "rules:\n  - name: phone\n    match:\n      called: \"{CALLED}\"\n    room: {room}\n"
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let dir = tempfile::tempdir().unwrap();
    let rate = if codec == "G722" { 16000 } else { 8000 };
    let play = common::tone_wav(dir.path(), 1000, rate, 12);
    let recorded = dir.path().join("room.wav");
    let identity = format!("sip_{CALLER}");
    let listener = roompeer_bg(
        &lk,
        "listen",
        &[
            "--room",
            room,
            "--identity",
            "listener",
            "--seconds",
            "30",
            "--from-identity",
            &identity,
            "--wait-timeout",
            "60",
            "--wav",
            &recorded.display().to_string(),
        ],
    );
    wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "listener")
    });
    let call = phone(
        &[
            "call".into(),
            format!("sip:{CALLED}@{}", rl.sip_addr()),
            "--codec".into(),
            codec.into(),
            "--from-user".into(),
            CALLER.into(),
            "--play".into(),
            play.display().to_string(),
            "--seconds".into(),
            "6".into(),
        ],
        Duration::from_secs(60),
    );
    call.expect_ok();
    let heard = listener.join().unwrap();
    heard.expect_ok();
    let analysis = run_roompeer(
        [
            "analyze-wav".to_string(),
            recorded.display().to_string(),
            "--levels".into(),
        ],
        Duration::from_secs(60),
    );
    let levels = analysis.expect_ok()["levels"].clone();
    eprintln!("{codec}: the room heard the phone at {levels}");
    rl.assert_no_leaks(Duration::from_secs(20));
    levels
}

/// The first second of the phone's tone in the room is within 1 dB of its steady level
/// (RMS), none of its 100 ms is more than 1 dB louder than that, and its peaks (the
/// second highest of its 100 ms peaks, so that one glitch does not count) are within
/// 1 dB of the steady peaks: the loud start peaked at up to twice the level for the
/// first few hundred ms.
fn first_second_at_steady_level(codec: &str, room: &str) {
    let levels = room_levels(codec, room);
    let level_db = levels["first_second_rms_db"]
        .as_f64()
        .unwrap_or_else(|| panic!("no levels: {levels}"));
    let loudest_db = levels["first_second_loudest_100ms_db"].as_f64().unwrap();
    let peak_db = levels["first_second_peak_db"].as_f64().unwrap();
    assert!(
        level_db.abs() <= 1.0,
        "{codec}: first second {level_db} dB from the steady level: {levels}"
    );
    assert!(
        loudest_db <= 1.0,
        "{codec}: a 100 ms of the first second is {loudest_db} dB above the steady level: {levels}"
    );
    assert!(
        peak_db <= 1.0,
        "{codec}: the first second peaks {peak_db} dB above the steady peaks: {levels}"
    );
}

#[test]
fn pcmu_phone_audio_starts_at_its_steady_level_in_the_room() {
    first_second_at_steady_level("PCMU", "level-pcmu");
}

#[test]
fn g722_phone_audio_starts_at_its_steady_level_in_the_room() {
    first_second_at_steady_level("G722", "level-g722");
}
