//! Room tracks that replace one another reach the other side from their first packet
//! (issue 22): participants of the LiveKit Python SDK (`roompeer.py tone-sequence`) play
//! tones one after another (an agent handover: A leaves, B joins), overlapping (B joins
//! while A plays: both heard, mixed), one participant unpublishes and publishes again, or
//! an agent restarts (its identity joins again on a new connection while the old one,
//! which never left, is still there; the server closes the old session).
//! LiveKit reuses the subscriber's transceivers for the new tracks, and every new track
//! starts at a random RTP sequence number, often behind the last one heard on that
//! transceiver. Each scenario runs against the pure-Rust participant (decoded audio per
//! track) and through the daemon to a real phone (pjsua2, tests/peers/phone.py), whose
//! recording must hold every tone.
//!
//! Needs `scripts/install-test-deps` (the harness panics with that hint otherwise).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::livekit::LiveKitServer;
use common::roomline::{Roomline, Setup};
use common::{PeerRun, python, run_roompeer};
use roomline::livekit::{JoinOptions, LeaveReason, Participant, ParticipantEvent, SampleRate};

const PEER_TIMEOUT: Duration = Duration::from_secs(180);
/// Tone amplitude of the Python publishers.
const AMPLITUDE: f64 = 0.3;
/// A 20 ms frame holds a tone when its amplitude there is at least this.
const PRESENT: f64 = 0.05;
/// Share of a tone's 20 ms frames that must be heard ("from its first packet", less
/// the codec's ramp at either end).
const HEARD: f64 = 0.9;

fn unique_room(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// One tone of a scenario: who plays it, at what frequency, for how long.
#[derive(Clone, Copy)]
struct Step {
    identity: &'static str,
    hz: f64,
    seconds: f64,
}

const fn step(identity: &'static str, hz: f64, seconds: f64) -> Step {
    Step {
        identity,
        hz,
        seconds,
    }
}

/// Four participants, one after another (each leaves before the next joins).
const SEQUENTIAL: &[Step] = &[
    step("agent-a", 500.0, 1.5),
    step("agent-b", 800.0, 1.5),
    step("agent-c", 1100.0, 1.5),
    step("agent-d", 1400.0, 1.5),
];
/// Three participants, each joining while the previous one plays (half way through
/// its tone, so about the last second overlaps, the join taking the rest).
const OVERLAP: &[Step] = &[
    step("agent-a", 500.0, 4.0),
    step("agent-b", 800.0, 4.0),
    step("agent-c", 1100.0, 4.0),
];
/// An agent that restarts: one identity, each step a new connection that joins while
/// the previous one (which never leaves) is still in the room; the server closes the
/// old session as a duplicate identity.
const RESTART: &[Step] = &[
    step("agent-a", 500.0, 1.5),
    step("agent-a", 800.0, 1.5),
    step("agent-a", 1100.0, 1.5),
];
/// One participant publishing three tracks in turn.
const REPUBLISH: &[Step] = &[
    step("agent-a", 500.0, 1.5),
    step("agent-a", 800.0, 1.5),
    step("agent-a", 1100.0, 1.5),
];

/// `roompeer.py tone-sequence` arguments for a scenario.
fn sequence_args(
    server: &LiveKitServer,
    room: &str,
    mode: &str,
    steps: &[Step],
    wait_for: &str,
) -> Vec<String> {
    let mut args = vec!["tone-sequence".to_string()];
    args.extend(server.peer_args());
    args.extend(
        [
            "--room",
            room,
            "--mode",
            mode,
            "--wait-for-identity",
            wait_for,
            "--wait-timeout",
            "60",
            "--amplitude",
            &AMPLITUDE.to_string(),
        ]
        .map(String::from),
    );
    for s in steps {
        args.push("--step".into());
        args.push(format!("{}:{}:{}", s.identity, s.hz, s.seconds));
    }
    args
}

/// Amplitude of a tone at `hz` in `frame` (a DFT bin at exactly `hz`, Hann window).
fn tone_amplitude(frame: &[i16], rate: u32, hz: f64) -> f64 {
    let n = frame.len() as f64;
    let (mut re, mut im, mut wsum) = (0.0, 0.0, 0.0);
    for (i, &s) in frame.iter().enumerate() {
        let w = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * i as f64 / n).cos();
        let phase = 2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate);
        let x = f64::from(s) / 32768.0 * w;
        re += x * phase.cos();
        im -= x * phase.sin();
        wsum += w;
    }
    2.0 * (re * re + im * im).sqrt() / wsum
}

/// 20 ms steps (40 ms windows) of `samples` in which the tone at `hz` is present.
fn frames_with_tone(samples: &[i16], rate: u32, hz: f64) -> usize {
    let hop = rate as usize / 50;
    samples
        .windows(2 * hop)
        .step_by(hop)
        .filter(|w| tone_amplitude(w, rate, hz) >= PRESENT)
        .count()
}

#[test]
fn tone_detector_finds_each_tone_and_nothing_else() {
    let rate = 8000;
    let tone = |hz: f64, n: usize| -> Vec<i16> {
        (0..n)
            .map(|i| {
                (AMPLITUDE
                    * 32767.0
                    * (2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate)).sin())
                    as i16
            })
            .collect()
    };
    let a = tone(500.0, 8000);
    let b = tone(800.0, 8000);
    let mixed: Vec<i16> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert!(frames_with_tone(&a, rate, 500.0) >= 48);
    assert_eq!(frames_with_tone(&a, rate, 800.0), 0);
    assert_eq!(frames_with_tone(&b, rate, 500.0), 0);
    assert!(frames_with_tone(&mixed, rate, 500.0) >= 48);
    assert!(frames_with_tone(&mixed, rate, 800.0) >= 48);
    assert_eq!(frames_with_tone(&vec![0; 8000], rate, 1100.0), 0);
}

/// The steps the Python peer reported, in the order their tones started.
fn reported_steps(run: &PeerRun) -> Vec<serde_json::Value> {
    let report = run.expect_ok();
    report["steps"].as_array().expect("steps").clone()
}

/// The Rust participant (8 kHz) in a room where `steps` play in `mode`: every track's
/// decoded audio holds its tone for at least [`HEARD`] of the frames sent.
async fn participant_hears_every_tone(mode: &str, steps: &[Step]) {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room(&format!("handover-{mode}"));
    let identity = "sip_listener";
    let opts = JoinOptions::sip(
        server.url(),
        server.api_key(),
        server.api_secret(),
        &room,
        identity,
    );
    let mut opts = opts;
    opts.sample_rate = SampleRate::Hz8000;
    let (handle, mut events) = Participant::join(opts).await.expect("join");
    let args = sequence_args(&server, &room, mode, steps, identity);
    let python = std::thread::spawn(move || run_roompeer(&args, PEER_TIMEOUT));
    let mut by_track: HashMap<String, Vec<i16>> = HashMap::new();
    let mut unpublished: HashSet<String> = HashSet::new();
    let mut next_event = async |by_track: &mut HashMap<String, Vec<i16>>,
                                unpublished: &mut HashSet<String>| {
        match tokio::time::timeout(Duration::from_millis(100), events.recv()).await {
            Ok(Some(ParticipantEvent::AudioFrame(f))) => by_track
                .entry(f.track_sid.clone())
                .or_default()
                .extend_from_slice(&f.samples),
            Ok(Some(ParticipantEvent::TrackUnpublished { track_sid, .. })) => {
                unpublished.insert(track_sid);
            }
            Ok(Some(ParticipantEvent::Disconnected(r))) => panic!("disconnected: {r}"),
            Ok(None) => panic!("events ended"),
            _ => {}
        }
    };
    let t0 = Instant::now();
    while !python.is_finished() && t0.elapsed() < PEER_TIMEOUT {
        next_event(&mut by_track, &mut unpublished).await;
    }
    let run = python.join().expect("python thread");
    let reported = reported_steps(&run);
    assert_eq!(reported.len(), steps.len(), "{}", run.describe());
    // every track has ended (its publishers left or unpublished it, or were replaced):
    // each must be reported unpublished, which is what takes it out of the call's mixer
    let ended: HashSet<String> = reported
        .iter()
        .map(|s| s["track_sid"].as_str().expect("track sid").to_string())
        .collect();
    let t1 = Instant::now();
    while !ended.is_subset(&unpublished) && t1.elapsed() < Duration::from_secs(20) {
        next_event(&mut by_track, &mut unpublished).await;
    }
    handle
        .leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave");
    let missing: Vec<&String> = ended.difference(&unpublished).collect();
    assert!(
        missing.is_empty(),
        "tracks that ended but were never reported unpublished: {missing:?}"
    );
    let mut failures = Vec::new();
    for s in &reported {
        let track = s["track_sid"].as_str().expect("track sid");
        let hz = s["freq"].as_f64().expect("freq");
        let sent = s["tone_frames_20ms"].as_f64().expect("frames");
        let heard = by_track
            .get(track)
            .map_or(0, |samples| frames_with_tone(samples, 8000, hz));
        eprintln!(
            "{} {track}: {hz} Hz heard in {heard} of {sent} frames",
            s["identity"]
        );
        if (heard as f64) < HEARD * sent {
            failures.push(format!("{hz} Hz ({track}): {heard} of {sent} frames"));
        }
    }
    assert!(
        failures.is_empty(),
        "tones missed: {failures:?}\n{}",
        run.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_hears_each_of_four_sequential_participants() {
    participant_hears_every_tone("sequential", SEQUENTIAL).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_hears_overlapping_participants() {
    participant_hears_every_tone("overlap", OVERLAP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_hears_a_republished_track() {
    participant_hears_every_tone("republish", REPUBLISH).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_hears_an_agent_that_restarts() {
    participant_hears_every_tone("restart", RESTART).await;
}

// --- Through the daemon to a real phone -------------------------------------------------

const CALLER: &str = "+15551230000";
const CALLED: &str = "+15550100";

/// How long the call stays up after the sequence before the room ends it.
const DRAIN: Duration = Duration::from_secs(2);

/// Phone tests take the CPU they measure with; one at a time.
static PHONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `tests/peers/phone.py` (pjsua2) with `args`, killed after `timeout`.
fn phone(args: &[String], timeout: Duration) -> PeerRun {
    let script = common::repo_root().join("tests/peers/phone.py");
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = std::process::Command::new(python())
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

/// A PCMU call from a pjsua2 phone into a room where `steps` play in `mode`; once the
/// sequence is over the room removes the caller (the daemon hangs up). The phone's
/// recording must hold every tone for at least [`HEARD`] of its frames, and in `overlap`
/// mode each pair that overlapped must be heard together (mixed) for most of the
/// overlap. Frames lost to a stop of the whole machine (`common::pause`: everything on
/// these shared virtual machines now and then stops for 0.5-8 s) are allowed, no others.
fn phone_hears_every_tone(mode: &str, steps: &[Step]) {
    let _one = PHONE.lock().unwrap_or_else(|e| e.into_inner());
    let machine = common::pause::PauseWatch::start();
    let lk = LiveKitServer::start();
    let room = unique_room(&format!("phone-{mode}"));
    let plan = format!(
        "rules:\n  - name: phone\n    match:\n      called: \"{CALLED}\"\n    room: {room}\n"
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let identity = format!("sip_{CALLER}");
    let args = sequence_args(&lk, &room, mode, steps, &identity);
    let sequence = std::thread::spawn(move || run_roompeer(&args, PEER_TIMEOUT));
    let dir = tempfile::tempdir().unwrap();
    let heard = dir.path().join("heard.wav");
    let phone_args: Vec<String> = vec![
        "call".into(),
        format!("sip:{CALLED}@{}", rl.sip_addr()),
        "--codec".into(),
        "PCMU".into(),
        "--from-user".into(),
        CALLER.into(),
        "--record".into(),
        heard.display().to_string(),
        "--seconds".into(),
        "150".into(),
        "--timeout".into(),
        "170".into(),
    ];
    let call = std::thread::spawn(move || phone(&phone_args, Duration::from_secs(180)));
    let run = sequence.join().expect("sequence thread");
    // the sequence is over: the room ends the call, once the last tone has had time to
    // reach the phone's recording. The peer leaves 0.3 s after its last frame; what is
    // still on its way (the SFU, the daemon's mixer queue, the phone's jitter buffer, all
    // deeper after the machine stalled) was cut off by an immediate hangup: the last
    // tone's end missing from the recording, the recording ending inside that tone.
    std::thread::sleep(DRAIN);
    let (status, body) = common::roomline::room_service(
        &lk,
        "RemoveParticipant",
        &room,
        serde_json::json!({ "room": room, "identity": identity }),
    );
    let call = call.join().expect("phone thread");
    assert_eq!(status, 200, "RemoveParticipant: {body}\n{}", run.describe());
    let report = call.expect_ok().clone();
    assert_eq!(report["codec"], "PCMU/8000", "{}", call.describe());
    assert_eq!(report["ended_by_remote"], true, "{}", call.describe());
    let reported = reported_steps(&run);
    assert_eq!(reported.len(), steps.len(), "{}", run.describe());
    let freqs: Vec<String> = reported
        .iter()
        .map(|s| format!("{}", s["freq"].as_f64().unwrap()))
        .collect();
    let analysis = run_roompeer(
        [
            "analyze-wav".to_string(),
            heard.display().to_string(),
            "--tones".into(),
            freqs.join(","),
        ],
        Duration::from_secs(60),
    );
    let a = analysis.expect_ok().clone();
    eprintln!("the phone heard: {}", a["presence"]);
    // frames lost to stops of the whole machine (common::pause) are allowed, those only:
    // the tone reaches the phone up to about half a second after it was sent
    let stopped_frames = |from: f64, to: f64| machine.stops_between(from - 0.5, to + 0.5) / 0.02;
    let stops = machine.stops();
    if !stops.is_empty() {
        eprintln!("the machine stopped (start, end in Unix seconds): {stops:?}");
    }
    let mut failures = Vec::new();
    for (s, f) in reported.iter().zip(&freqs) {
        let sent = s["tone_frames_20ms"].as_f64().unwrap();
        let got = a["presence"]["tones"][f]["present_20ms"]
            .as_f64()
            .unwrap_or(0.0);
        let stopped = stopped_frames(
            s["tone_start_unix"].as_f64().unwrap(),
            s["tone_end_unix"].as_f64().unwrap(),
        );
        if got < HEARD * sent - stopped {
            failures.push(format!(
                "{f} Hz: {got} of {sent} frames ({stopped:.0} frames of machine stops allowed)"
            ));
        }
    }
    if mode == "overlap" {
        for pair in reported.windows(2) {
            let overlap = pair[0]["tone_end_unix"].as_f64().unwrap()
                - pair[1]["tone_start_unix"].as_f64().unwrap();
            if overlap < 0.3 {
                continue;
            }
            let (f0, f1) = (
                pair[0]["freq"].as_f64().unwrap(),
                pair[1]["freq"].as_f64().unwrap(),
            );
            let both = run_roompeer(
                [
                    "analyze-wav".to_string(),
                    heard.display().to_string(),
                    "--tones".into(),
                    format!("{f0},{f1}"),
                ],
                Duration::from_secs(60),
            );
            let together = both.expect_ok()["presence"]["all_present_20ms"]
                .as_f64()
                .unwrap_or(0.0);
            eprintln!(
                "{f0} Hz and {f1} Hz overlapped {overlap:.2} s, heard together in {together} steps"
            );
            let stopped = stopped_frames(
                pair[1]["tone_start_unix"].as_f64().unwrap(),
                pair[0]["tone_end_unix"].as_f64().unwrap(),
            );
            if together < 0.8 * overlap * 50.0 - 5.0 - stopped {
                failures.push(format!(
                    "{f0}+{f1} Hz: together in {together} steps of a {overlap:.2} s overlap ({stopped:.0} steps of machine stops allowed)"
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the phone missed: {failures:?}\n{a}\n{}\n{}",
        run.describe(),
        rl.log_tail(80)
    );
    // every track was heard, so no stall may have been reported (a track of a replaced
    // session that stayed "expected" would be)
    let (_, metrics) = rl.get("/metrics").expect("metrics");
    let stalls: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("roomline_room_audio_stalls_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(stalls, 0.0, "stalls reported:\n{}", rl.log_tail(80));
    rl.assert_no_leaks(Duration::from_secs(20));
}

#[test]
fn phone_hears_each_of_four_sequential_participants() {
    phone_hears_every_tone("sequential", SEQUENTIAL);
}

#[test]
fn phone_hears_overlapping_participants_mixed() {
    phone_hears_every_tone("overlap", OVERLAP);
}

#[test]
fn phone_hears_a_republished_track() {
    phone_hears_every_tone("republish", REPUBLISH);
}

#[test]
fn phone_hears_an_agent_that_restarts() {
    phone_hears_every_tone("restart", RESTART);
}
