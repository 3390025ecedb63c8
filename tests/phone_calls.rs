//! Calls from a real SIP phone, pjsip (PyPI `pjsua2-python`, tests/peers/phone.py), into
//! the daemon: G.722 wideband and PCMA, audio both ways with the phone's own codecs,
//! jitter buffer and recorder as the independent implementation. The room side is the
//! LiveKit Python SDK. A tone above 4 kHz crossing in both directions shows the whole
//! path is wideband (16 kHz) with G.722, which no G.711 leg could carry.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::livekit::LiveKitServer;
use common::roomline::{Roomline, Setup, listener_bg, tone_agent_bg, wait_participants};
use common::{PeerRun, run_roompeer, within};

const CALLER: &str = "+15551230000";
const CALLED: &str = "+15550100";

/// Audio tests take the CPU they measure with; one at a time.
static MEDIA: Mutex<()> = Mutex::new(());

fn phone(args: &[String], timeout: Duration) -> PeerRun {
    common::run_phone(args, timeout)
}

/// One call: the phone plays `phone_hz` and records; a room participant publishes
/// `room_hz`; another records the phone. Both sides must hear the other's tone.
fn call_both_ways(codec: &str, phone_hz: u32, room_hz: u32, room: &str) {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let lk = LiveKitServer::start();
    let plan = format!(
        "rules:\n  - name: phone\n    match:\n      called: \"{CALLED}\"\n    room: {room}\n"
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let dir = tempfile::tempdir().unwrap();
    let rate = if codec == "G722" { 16000 } else { 8000 };
    let play = common::tone_wav(dir.path(), phone_hz, rate, 12);
    let heard = dir.path().join("heard.wav");
    let identity = format!("sip_{CALLER}");
    let listener = listener_bg(&lk, room, &identity, 30);
    let publisher = tone_agent_bg(&lk, room, "agent", room_hz, 8);
    wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "listener")
            && ps.iter().any(|p| p["identity"] == "agent")
    });
    let seconds = 6.0;
    let run = phone(
        &[
            "call".into(),
            format!("sip:{CALLED}@{}", rl.sip_addr()),
            "--codec".into(),
            codec.into(),
            "--from-user".into(),
            CALLER.into(),
            "--play".into(),
            play.display().to_string(),
            "--record".into(),
            heard.display().to_string(),
            "--seconds".into(),
            seconds.to_string(),
        ],
        Duration::from_secs(60),
    );
    let report = run.expect_ok().clone();
    let want_codec = if codec == "G722" {
        "G722/16000"
    } else {
        "PCMA/8000"
    };
    assert_eq!(report["codec"], want_codec, "{}", run.describe());
    // the phone heard the room's tone (its own decoder and recorder)
    let analysis = run_roompeer(
        ["analyze-wav".to_string(), heard.display().to_string()],
        Duration::from_secs(60),
    );
    let a = analysis.expect_ok().clone();
    let hz = analysis.f64("dominant_hz");
    assert!(
        within(hz, f64::from(room_hz), 0.02),
        "the phone heard {hz} Hz: {a}"
    );
    assert!(
        analysis.f64("nonsilent_seconds") >= 4.0,
        "the phone heard too little of the tone: {a}"
    );
    // the room heard the phone's tone
    let heard_room = listener.join().unwrap();
    let r = heard_room.expect_ok().clone();
    let hz = heard_room.f64("dominant_hz");
    assert!(
        within(hz, f64::from(phone_hz), 0.02),
        "the room heard {hz} Hz: {r}"
    );
    let connected = report["connected_s"].as_f64().unwrap_or(seconds);
    let frames = heard_room.f64("frames_nonsilent");
    let expected = (connected - 0.5) * 100.0;
    assert!(
        frames >= 0.9 * expected,
        "{frames} of about {expected} tone frames reached the room: {r}"
    );
    let _ = publisher.join();
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// G.722 from a real phone: 1 kHz from the phone reaches the room, 440 Hz from the room
/// reaches the phone.
#[test]
fn g722_phone_call_carries_audio_both_ways() {
    call_both_ways("G722", 1000, 440, "phone-g722");
}

/// The path is wideband end to end with G.722: 5 kHz from the phone and 6 kHz from the
/// room both arrive (a G.711 leg cuts everything above 4 kHz).
#[test]
fn g722_phone_call_is_wideband_both_ways() {
    call_both_ways("G722", 5000, 6000, "phone-g722-wideband");
}

/// PCMA from a real phone: 1 kHz one way, 440 Hz the other.
#[test]
fn pcma_phone_call_carries_audio_both_ways() {
    call_both_ways("PCMA", 1000, 440, "phone-pcma");
}
