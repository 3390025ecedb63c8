//! The pure-Rust LiveKit participant (`roomline::livekit`) against a real livekit-server
//! and the LiveKit Python SDK peer (`tests/peers/roompeer.py`): join, publish a tone
//! that Python measures, receive a tone that Python publishes, refuse a bad secret with
//! the server's reason; DTMF both ways, kind and attributes as Python sees them; server
//! leaves; resume after a lost signalling connection and full rejoin after a simulated
//! node failure, with audio flowing again both ways.
//!
//! Needs `scripts/install-test-deps` (the harness panics with that hint otherwise).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::livekit::LiveKitServer;
use common::{run_roompeer, within};
use roomline::livekit::{
    DisconnectReason, JoinError, JoinOptions, LeaveReason, Participant, ParticipantEvent,
    ParticipantHandle, ParticipantKind, SampleRate, Simulate,
};
use tokio::sync::mpsc;

const PEER_TIMEOUT: Duration = Duration::from_secs(120);

fn unique_room(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// Logs of the participant under test (`RUST_LOG=roomline=debug` to see them).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn opts(server: &LiveKitServer, room: &str, identity: &str, rate: SampleRate) -> JoinOptions {
    let mut o = JoinOptions::sip(
        server.url(),
        server.api_key(),
        server.api_secret(),
        room,
        identity,
    );
    o.name = format!("Phone {identity}");
    o.sample_rate = rate;
    o.attributes
        .insert("sip.callStatus".to_string(), "active".to_string());
    o.attributes
        .insert("sip.phoneNumber".to_string(), "+15550100".to_string());
    o
}

/// A participant's event stream with a backlog: waiting for one event keeps the others
/// (except audio frames) for later waits.
struct Events {
    rx: mpsc::Receiver<ParticipantEvent>,
    backlog: std::collections::VecDeque<ParticipantEvent>,
}

impl Events {
    fn new(rx: mpsc::Receiver<ParticipantEvent>) -> Self {
        Events {
            rx,
            backlog: Default::default(),
        }
    }

    /// The first event (backlog first) matching `pred`; panics after `timeout` or on
    /// Disconnected.
    async fn wait_for<F>(&mut self, timeout: Duration, what: &str, mut pred: F) -> ParticipantEvent
    where
        F: FnMut(&ParticipantEvent) -> bool,
    {
        if let Some(i) = self.backlog.iter().position(&mut pred) {
            return self.backlog.remove(i).expect("index just found");
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
                Ok(None) => panic!("event stream ended while waiting for {what}"),
                Ok(Some(ev)) if pred(&ev) => return ev,
                Ok(Some(ParticipantEvent::Disconnected(r))) => {
                    panic!("disconnected ({r}) while waiting for {what}")
                }
                Ok(Some(ParticipantEvent::AudioFrame(_))) => {}
                Ok(Some(ev)) => self.backlog.push_back(ev),
            }
        }
    }
}

/// 20 ms frames of a sine at `freq` (0.3 peak) or silence, phase-continuous.
struct Tone {
    rate: u32,
    freq: f64,
    n: u64,
}

impl Tone {
    fn frame(&mut self, on: bool) -> Vec<i16> {
        let len = self.rate as usize / 50;
        let out = (0..len)
            .map(|i| {
                if !on {
                    return 0;
                }
                let t = (self.n + i as u64) as f64 / self.rate as f64;
                (0.3 * 32767.0 * (2.0 * std::f64::consts::PI * self.freq * t).sin()) as i16
            })
            .collect();
        self.n += len as u64;
        out
    }
}

/// Pushes `seconds` of tone (or silence) in real time, 20 ms per frame.
async fn play(
    handle: &ParticipantHandle,
    tone: &mut Tone,
    seconds: f64,
    on: bool,
    ticker: &mut tokio::time::Interval,
) -> usize {
    let frames = (seconds * 50.0).round() as usize;
    for _ in 0..frames {
        ticker.tick().await;
        handle.push_audio(&tone.frame(on)).expect("push_audio");
    }
    frames
}

/// Frequency of a clean tone by zero crossings (interpolated) over the longest run of
/// non-silent 20 ms frames. Returns (hz, non-silent frames, samples analysed).
fn tone_frequency(samples: &[i16], rate: u32) -> (Option<f64>, usize, usize) {
    let frame = rate as usize / 50;
    let loud: Vec<bool> = samples
        .chunks_exact(frame)
        .map(|f| {
            let rms = (f.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / f.len() as f64).sqrt()
                / 32768.0;
            rms >= 0.01
        })
        .collect();
    let nonsilent = loud.iter().filter(|&&l| l).count();
    // longest run of loud frames, trimming one frame at each edge (codec ramp)
    let (mut best, mut cur_start, mut best_len) = (0usize, 0usize, 0usize);
    for (i, &l) in loud.iter().chain(std::iter::once(&false)).enumerate() {
        if !l {
            if i - cur_start > best_len {
                best_len = i - cur_start;
                best = cur_start;
            }
            cur_start = i + 1;
        }
    }
    if best_len < 5 {
        return (None, nonsilent, 0);
    }
    let run = &samples[(best + 1) * frame..(best + best_len - 1) * frame];
    let mut crossings = Vec::new();
    for i in 1..run.len() {
        let (a, b) = (run[i - 1] as f64, run[i] as f64);
        if a < 0.0 && b >= 0.0 {
            crossings.push((i - 1) as f64 + (-a) / (b - a));
        }
    }
    if crossings.len() < 3 {
        return (None, nonsilent, run.len());
    }
    let periods = (crossings.len() - 1) as f64;
    let span = crossings[crossings.len() - 1] - crossings[0];
    (Some(periods * rate as f64 / span), nonsilent, run.len())
}

#[test]
fn tone_estimator_is_accurate_and_discriminating() {
    for (freq, rate) in [(440.0, 16000), (1000.0, 8000), (440.0, 8000)] {
        let mut t = Tone { rate, freq, n: 0 };
        let mut s: Vec<i16> = (0..10).flat_map(|_| t.frame(false)).collect();
        s.extend((0..100).flat_map(|_| t.frame(true)));
        s.extend((0..10).flat_map(|_| t.frame(false)));
        let (hz, loud, _) = tone_frequency(&s, rate);
        let hz = hz.unwrap();
        assert!(within(hz, freq, 0.002), "{freq} Hz at {rate} measured {hz}");
        assert_eq!(loud, 100);
    }
    assert_eq!(tone_frequency(&vec![0i16; 16000], 16000).0, None);
}

/// The Rust participant joins as kind SIP and publishes a 1 kHz tone for 3 s; a Python
/// SDK participant subscribed to it hears 1 kHz and nearly every frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_publishes_tone_python_measures_it() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-pub");
    let (handle, mut events) =
        Participant::join(opts(&server, &room, "sip_pub", SampleRate::Hz16000))
            .await
            .expect("join");
    assert!(handle.sid().starts_with("PA_"), "sid {}", handle.sid());

    // the Python listener records our audio for 7 s after it subscribed
    let mut args = vec!["listen".to_string()];
    args.extend(server.peer_args());
    args.extend(
        [
            "--room",
            &room,
            "--identity",
            "py-listener",
            "--from-identity",
            "sip_pub",
            "--seconds",
            "7",
            "--wait-timeout",
            "30",
        ]
        .map(String::from),
    );
    let listener = std::thread::spawn(move || run_roompeer(&args, PEER_TIMEOUT));

    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut tone = Tone {
        rate: 16000,
        freq: 1000.0,
        n: 0,
    };
    // silence until the server tells us someone subscribed (RTP flows meanwhile)
    let t0 = Instant::now();
    let mut joined_kind = None;
    let mut subscribed = false;
    while !subscribed {
        assert!(
            t0.elapsed() < Duration::from_secs(45),
            "nobody subscribed to our track"
        );
        ticker.tick().await;
        handle.push_audio(&tone.frame(false)).expect("push");
        while let Ok(ev) = events.try_recv() {
            match ev {
                ParticipantEvent::ParticipantJoined(p) if p.identity == "py-listener" => {
                    joined_kind = Some(p.kind)
                }
                ParticipantEvent::LocalTrackSubscribed { .. } => subscribed = true,
                ParticipantEvent::Disconnected(r) => panic!("disconnected: {r}"),
                _ => {}
            }
        }
    }
    eprintln!("subscribed after {:.2?}", t0.elapsed());
    play(&handle, &mut tone, 1.0, false, &mut ticker).await;
    let tone_frames = play(&handle, &mut tone, 3.0, true, &mut ticker).await;
    // keep the track alive with silence until the listener is done
    while !listener.is_finished() {
        play(&handle, &mut tone, 0.2, false, &mut ticker).await;
    }
    let run = listener.join().expect("listener thread");
    // the listener has left: we see it go (and saw it come)
    let mut left = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !left {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ParticipantEvent::ParticipantJoined(p))) if p.identity == "py-listener" => {
                joined_kind = Some(p.kind)
            }
            Ok(Some(ParticipantEvent::ParticipantLeft { identity, .. }))
                if identity == "py-listener" =>
            {
                left = true
            }
            Ok(Some(ParticipantEvent::Disconnected(r))) => panic!("disconnected: {r}"),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    handle
        .leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave");
    let mut disconnected = None;
    while let Some(ev) = events.recv().await {
        if let ParticipantEvent::Disconnected(r) = ev {
            disconnected = Some(r);
        }
    }
    assert_eq!(
        disconnected,
        Some(DisconnectReason::ClientInitiated),
        "the event stream ends with our own leave"
    );
    assert_eq!(
        joined_kind,
        Some(ParticipantKind::Standard),
        "listener seen joining"
    );
    assert!(left, "listener seen leaving");
    let report = run.expect_ok();
    eprintln!(
        "listener: dominant_hz={} frames_nonsilent={} rms={} subscribed_after_s={}",
        report["dominant_hz"],
        report["frames_nonsilent"],
        report["rms"],
        report["subscribed_after_s"]
    );
    let expected = (tone_frames * 2) as f64; // 10 ms frames
    let dominant = run.f64("dominant_hz");
    let received = run.f64("frames_nonsilent");
    assert!(
        within(dominant, 1000.0, 0.02),
        "dominant {dominant} Hz is not within 2% of 1000 Hz\n{}",
        run.describe()
    );
    assert!(
        received >= 0.9 * expected,
        "only {received} of {expected} tone frames arrived\n{}",
        run.describe()
    );
    assert!(
        received <= expected + 10.0,
        "{received} non-silent frames for {expected} sent\n{}",
        run.describe()
    );
    assert_eq!(report["from_identity"], "sip_pub");
}

/// A Python SDK participant publishes 440 Hz; the Rust participant subscribes and
/// receives decoded 16 kHz PCM at 440 Hz, about 3 s of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_publishes_tone_rust_receives_it() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-sub");
    let mut args = vec!["publish-tone".to_string()];
    args.extend(server.peer_args());
    args.extend(
        [
            "--room",
            &room,
            "--identity",
            "py-tone",
            "--freq",
            "440",
            "--seconds",
            "3",
            "--lead-silence",
            "1",
            "--tail",
            "1",
            "--wait-timeout",
            "40",
        ]
        .map(String::from),
    );
    let publisher = std::thread::spawn(move || run_roompeer(&args, PEER_TIMEOUT));

    let (handle, events) = Participant::join(opts(&server, &room, "sip_sub", SampleRate::Hz16000))
        .await
        .expect("join");
    let mut events = Events::new(events);
    let ev = events.wait_for(Duration::from_secs(40), "py-tone's track subscribed", |e| {
        matches!(e, ParticipantEvent::TrackSubscribed { participant_identity, .. } if participant_identity == "py-tone")
    })
    .await;
    let ParticipantEvent::TrackSubscribed { track_sid, .. } = ev else {
        unreachable!()
    };
    let mut samples: Vec<i16> = Vec::new();
    let mut frames = 0usize;
    let t0 = Instant::now();
    while !publisher.is_finished() && t0.elapsed() < Duration::from_secs(60) {
        match tokio::time::timeout(Duration::from_millis(100), events.rx.recv()).await {
            Ok(Some(ParticipantEvent::AudioFrame(f))) if f.track_sid == track_sid => {
                assert_eq!(f.sample_rate, 16000);
                assert_eq!(f.participant_identity, "py-tone");
                frames += 1;
                samples.extend_from_slice(&f.samples);
            }
            Ok(Some(ParticipantEvent::Disconnected(r))) => panic!("disconnected: {r}"),
            Ok(None) => panic!("events ended"),
            _ => {}
        }
    }
    let run = publisher.join().expect("publisher thread");
    handle
        .leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave");
    run.expect_ok();
    let (hz, loud, analysed) = tone_frequency(&samples, 16000);
    eprintln!(
        "rust received {frames} frames, {} samples; {loud} non-silent 20 ms frames; \
         {hz:?} Hz over {analysed} samples",
        samples.len()
    );
    let hz = hz.unwrap_or_else(|| panic!("no tone in the received audio\n{}", run.describe()));
    assert!(
        within(hz, 440.0, 0.02),
        "received {hz} Hz, not within 2% of 440 Hz\n{}",
        run.describe()
    );
    // 3 s of tone = 150 frames of 20 ms
    assert!(
        loud >= 135,
        "only {loud} of 150 tone frames arrived\n{}",
        run.describe()
    );
    assert!(
        loud <= 160,
        "{loud} non-silent frames for 150 sent\n{}",
        run.describe()
    );
}

/// A wrong API secret fails the join quickly with the server's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secret_is_refused_with_the_servers_reason() {
    init_logs();
    let server = LiveKitServer::start();
    let mut o = opts(
        &server,
        &unique_room("lk-bad"),
        "sip_bad",
        SampleRate::Hz8000,
    );
    o.api_secret = "not-the-secret".into();
    let t0 = Instant::now();
    let err = Participant::join(o)
        .await
        .expect_err("join with a bad secret");
    let msg = err.to_string();
    eprintln!("join error after {:.2?}: {msg}", t0.elapsed());
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "took {:.2?}",
        t0.elapsed()
    );
    match &err {
        JoinError::Rejected { status, reason } => {
            assert_eq!(*status, 401, "{msg}");
            assert!(
                reason.to_lowercase().contains("invalid token"),
                "reason is not the server's: {msg}"
            );
            assert!(
                reason.contains("signature is invalid"),
                "reason does not say what is wrong: {msg}"
            );
            // the server echoes the token; the error must not carry it
            assert!(!msg.contains("eyJ"), "token leaked into the error: {msg}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

/// POSTs a Twirp JSON request to the server's RoomService with an admin token.
fn room_service(
    server: &LiveKitServer,
    method: &str,
    room: &str,
    body: serde_json::Value,
) -> (u16, String) {
    use livekit_api::access_token::{AccessToken, VideoGrants};
    let token = AccessToken::with_api_key(server.api_key(), server.api_secret())
        .with_identity("test-admin")
        .with_ttl(Duration::from_secs(60))
        .with_grants(VideoGrants {
            room_admin: true,
            room_create: true,
            room_list: true,
            room: room.to_string(),
            ..Default::default()
        })
        .to_jwt()
        .expect("admin token");
    server.twirp(
        &format!("livekit.RoomService/{method}"),
        &token,
        &body.to_string(),
    )
}

/// Two Rust participants in one room: each sees the other join as kind SIP with its
/// attributes; DTMF and data packets cross the server both ways; an attribute update is
/// seen by the other side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_data_and_attributes_between_two_rust_participants() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-data");
    let (a, a_events) = Participant::join(opts(&server, &room, "sip_a", SampleRate::Hz8000))
        .await
        .expect("join a");
    let (b, b_events) = Participant::join(opts(&server, &room, "sip_b", SampleRate::Hz8000))
        .await
        .expect("join b");
    let (mut a_events, mut b_events) = (Events::new(a_events), Events::new(b_events));
    // b sees a (already there at join) and a sees b (joined later)
    for (events, other) in [(&mut b_events, "sip_a"), (&mut a_events, "sip_b")] {
        let ev = events
            .wait_for(
                Duration::from_secs(15),
                "the other participant",
                |e| matches!(e, ParticipantEvent::ParticipantJoined(p) if p.identity == other),
            )
            .await;
        let ParticipantEvent::ParticipantJoined(p) = ev else {
            unreachable!()
        };
        assert_eq!(p.kind, ParticipantKind::Sip, "{p:?}");
        assert_eq!(p.name, format!("Phone {other}"));
        assert_eq!(
            p.attributes.get("sip.callStatus").map(String::as_str),
            Some("active"),
            "{p:?}"
        );
    }
    // sent right away: packets wait in the task until the data channel is open
    a.send_dtmf('5').await.expect("send dtmf");
    let ev = b_events
        .wait_for(Duration::from_secs(5), "dtmf from a", |e| {
            matches!(e, ParticipantEvent::Dtmf { .. })
        })
        .await;
    let ParticipantEvent::Dtmf {
        participant_identity,
        code,
        digit,
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(
        (participant_identity.as_str(), code, digit.as_str()),
        ("sip_a", 5, "5")
    );
    b.send_dtmf('#').await.expect("send dtmf");
    let ev = a_events
        .wait_for(Duration::from_secs(5), "dtmf from b", |e| {
            matches!(e, ParticipantEvent::Dtmf { .. })
        })
        .await;
    let ParticipantEvent::Dtmf {
        participant_identity,
        code,
        digit,
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(
        (participant_identity.as_str(), code, digit.as_str()),
        ("sip_b", 11, "#")
    );

    b.send_data(b"hello".to_vec(), Some("greeting".into()), true)
        .await
        .expect("send data");
    let ev = a_events
        .wait_for(Duration::from_secs(5), "data from b", |e| {
            matches!(e, ParticipantEvent::Data { .. })
        })
        .await;
    let ParticipantEvent::Data {
        participant_identity,
        topic,
        payload,
    } = ev
    else {
        unreachable!()
    };
    assert_eq!(participant_identity, "sip_b");
    assert_eq!(topic.as_deref(), Some("greeting"));
    assert_eq!(payload, b"hello");

    let mut attrs = std::collections::HashMap::new();
    attrs.insert("sip.callStatus".to_string(), "hangup".to_string());
    a.set_attributes(attrs).await.expect("set attributes");
    let ev = b_events.wait_for(Duration::from_secs(5), "a's attribute update", |e| {
        matches!(e, ParticipantEvent::ParticipantUpdated(p)
            if p.identity == "sip_a" && p.attributes.get("sip.callStatus").map(String::as_str) == Some("hangup"))
    })
    .await;
    let ParticipantEvent::ParticipantUpdated(p) = ev else {
        unreachable!()
    };
    assert_eq!(
        p.attributes.get("sip.phoneNumber").map(String::as_str),
        Some("+15550100"),
        "other attributes kept"
    );

    a.leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave a");
    b_events.wait_for(Duration::from_secs(10), "a leaving", |e| {
        matches!(e, ParticipantEvent::ParticipantLeft { identity, .. } if identity == "sip_a")
    })
    .await;
    b.leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave b");
}

/// RemoveParticipant ends the participant with PARTICIPANT_REMOVED; DeleteRoom ends
/// another one with ROOM_DELETED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_removal_and_room_deletion_end_the_participant_with_the_reason() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-kick");
    let (_a, mut a_events) =
        Participant::join(opts(&server, &room, "sip_kick", SampleRate::Hz8000))
            .await
            .expect("join");
    let (_b, mut b_events) =
        Participant::join(opts(&server, &room, "sip_stay", SampleRate::Hz8000))
            .await
            .expect("join");
    let (status, resp) = room_service(
        &server,
        "RemoveParticipant",
        &room,
        serde_json::json!({"room": room, "identity": "sip_kick"}),
    );
    assert_eq!(status, 200, "RemoveParticipant: {resp}");
    let reason = last_reason(&mut a_events).await;
    assert_eq!(
        reason,
        DisconnectReason::Server {
            reason: "PARTICIPANT_REMOVED".into(),
            action: "DISCONNECT".into()
        }
    );
    let (status, resp) = room_service(
        &server,
        "DeleteRoom",
        &room,
        serde_json::json!({"room": room}),
    );
    assert_eq!(status, 200, "DeleteRoom: {resp}");
    let reason = last_reason(&mut b_events).await;
    assert_eq!(
        reason,
        DisconnectReason::Server {
            reason: "ROOM_DELETED".into(),
            action: "DISCONNECT".into()
        }
    );
}

/// SignalRequest.simulate server_leave: a leave SERVER_SHUTDOWN with action DISCONNECT
/// ends the participant with that reason; nothing tries to reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_leave_with_disconnect_is_not_recovered() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-srvleave");
    let (handle, mut events) =
        Participant::join(opts(&server, &room, "sip_srvleave", SampleRate::Hz8000))
            .await
            .expect("join");
    handle
        .simulate(Simulate::ServerLeave)
        .await
        .expect("simulate");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let reason = loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ParticipantEvent::Disconnected(r))) => break r,
            Ok(Some(ev)) => seen.push(ev),
            Ok(None) => panic!("events ended without Disconnected"),
            Err(_) => panic!("no Disconnected within 10 s; events {seen:?}"),
        }
    };
    assert_eq!(
        reason,
        DisconnectReason::Server {
            reason: "SERVER_SHUTDOWN".into(),
            action: "DISCONNECT".into()
        }
    );
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, ParticipantEvent::Reconnecting { .. })),
        "tried to reconnect: {seen:?}"
    );
}

/// Drains events until the terminal one; panics if it does not come within 10 s.
async fn last_reason(events: &mut mpsc::Receiver<ParticipantEvent>) -> DisconnectReason {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ParticipantEvent::Disconnected(r))) => {
                assert!(events.recv().await.is_none(), "events after Disconnected");
                return r;
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("events ended without Disconnected"),
            Err(_) => panic!("no Disconnected within 10 s"),
        }
    }
}

/// Two Python publishers at once (440 Hz and 1000 Hz): the Rust participant gets two
/// separate decoded streams, each with its own publisher's frequency.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_python_publishers_arrive_as_two_streams() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-two");
    let spawn = |identity: &str, freq: &str| {
        let mut args = vec!["publish-tone".to_string()];
        args.extend(server.peer_args());
        args.extend(
            [
                "--room",
                &room,
                "--identity",
                identity,
                "--freq",
                freq,
                "--seconds",
                "3",
                "--lead-silence",
                "1",
                "--tail",
                "1",
                "--wait-timeout",
                "40",
            ]
            .map(String::from),
        );
        std::thread::spawn(move || run_roompeer(&args, PEER_TIMEOUT))
    };
    let low = spawn("py-440", "440");
    let high = spawn("py-1000", "1000");
    let (handle, events) = Participant::join(opts(&server, &room, "sip_two", SampleRate::Hz8000))
        .await
        .expect("join");
    let mut events = Events::new(events);
    let mut by_track: std::collections::HashMap<String, (String, Vec<i16>)> = Default::default();
    let t0 = Instant::now();
    while !(low.is_finished() && high.is_finished()) && t0.elapsed() < Duration::from_secs(60) {
        match tokio::time::timeout(Duration::from_millis(100), events.rx.recv()).await {
            Ok(Some(ParticipantEvent::AudioFrame(f))) => {
                assert_eq!(f.sample_rate, 8000);
                by_track
                    .entry(f.track_sid.clone())
                    .or_insert_with(|| (f.participant_identity.clone(), Vec::new()))
                    .1
                    .extend_from_slice(&f.samples);
            }
            Ok(Some(ParticipantEvent::Disconnected(r))) => panic!("disconnected: {r}"),
            Ok(None) => panic!("events ended"),
            _ => {}
        }
    }
    for run in [low.join().unwrap(), high.join().unwrap()] {
        run.expect_ok();
    }
    handle
        .leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave");
    assert_eq!(
        by_track.len(),
        2,
        "streams: {:?}",
        by_track
            .iter()
            .map(|(k, v)| (k, &v.0, v.1.len()))
            .collect::<Vec<_>>()
    );
    let mut seen = Vec::new();
    for (track, (identity, samples)) in &by_track {
        let (hz, loud, _) = tone_frequency(samples, 8000);
        eprintln!("{identity} {track}: {hz:?} Hz, {loud} non-silent 20 ms frames");
        let want = match identity.as_str() {
            "py-440" => 440.0,
            "py-1000" => 1000.0,
            other => panic!("audio from unexpected participant {other:?}"),
        };
        let hz = hz.unwrap_or_else(|| panic!("no tone from {identity}"));
        assert!(within(hz, want, 0.02), "{identity}: {hz} Hz, want {want}");
        assert!(
            (135..=160).contains(&loud),
            "{identity}: {loud} tone frames of 150"
        );
        seen.push(identity.clone());
    }
    seen.sort();
    assert_eq!(seen, ["py-1000", "py-440"]);
}

/// Runs `roompeer.py session` with the server's arguments plus `extra`, in a thread.
fn spawn_session(
    server: &LiveKitServer,
    room: &str,
    identity: &str,
    extra: &[&str],
) -> std::thread::JoinHandle<common::PeerRun> {
    let mut args = vec!["session".to_string()];
    args.extend(server.peer_args());
    args.extend(["--room", room, "--identity", identity].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    std::thread::spawn(move || run_roompeer(&args, PEER_TIMEOUT))
}

/// Waits until the Python session peer `identity` has announced (attribute
/// `roompeer.ready=1`) that it is connected and has seen us.
async fn wait_python_ready(events: &mut Events, identity: &str) {
    events
        .wait_for(Duration::from_secs(40), "the Python peer's readiness", |e| {
            matches!(e, ParticipantEvent::ParticipantJoined(p) | ParticipantEvent::ParticipantUpdated(p)
                if p.identity == identity
                    && p.attributes.get("roompeer.ready").map(String::as_str) == Some("1"))
        })
        .await;
}

/// DTMF both ways with the Python SDK: `publish_dtmf` of '7' and '#' arrives as
/// `ParticipantEvent::Dtmf` with those digits; our '5' arrives in Python as
/// `sip_dtmf_received` with digit 5 from our identity.
///
/// Python's digits come first, and ours only once both arrived: Python leaves as soon as
/// it has ours, and `publish_dtmf` returns before its packet has left, so a peer that
/// leaves right after its last digit may take it along (the server drops data from a
/// participant that has left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dtmf_both_ways_with_the_python_sdk() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-dtmf");
    let (handle, events) = Participant::join(opts(&server, &room, "sip_dtmf", SampleRate::Hz8000))
        .await
        .expect("join");
    let mut events = Events::new(events);
    let python = spawn_session(
        &server,
        &room,
        "py-dtmf",
        &[
            "--wait-for-identity",
            "sip_dtmf",
            "--announce-ready",
            "--send-dtmf",
            "7#",
            "--until-dtmf",
            "1",
            "--seconds",
            "40",
        ],
    );
    wait_python_ready(&mut events, "py-dtmf").await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let what = format!("DTMF from Python (got {got:?})");
        let ev = events
            .wait_for(Duration::from_secs(20), &what, |e| {
                matches!(e, ParticipantEvent::Dtmf { .. })
            })
            .await;
        let ParticipantEvent::Dtmf {
            participant_identity,
            code,
            digit,
        } = ev
        else {
            unreachable!()
        };
        got.push((participant_identity, code, digit));
    }
    handle.send_dtmf('5').await.expect("send dtmf");
    let run = python.join().expect("python thread");
    handle
        .leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave");
    let report = run.expect_ok();
    eprintln!(
        "rust got {got:?}; python got {} (sent {})",
        report["dtmf_received"], report["dtmf_sent"]
    );
    assert_eq!(
        got,
        [
            ("py-dtmf".to_string(), 7, "7".to_string()),
            ("py-dtmf".to_string(), 11, "#".to_string())
        ]
    );
    assert_eq!(report["conditions_met"], true, "{}", run.describe());
    let first = &report["dtmf_received"][0];
    assert_eq!(first["digit"], "5", "{}", run.describe());
    assert_eq!(first["code"], 5, "{}", run.describe());
    assert_eq!(first["from_identity"], "sip_dtmf", "{}", run.describe());
}

/// The Python SDK sees the Rust participant as kind SIP with its name and `sip.*`
/// attributes, and sees an attribute update (other attributes kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sees_kind_sip_and_attributes_with_their_update() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-attrs");
    let (handle, events) = Participant::join(opts(&server, &room, "sip_attrs", SampleRate::Hz8000))
        .await
        .expect("join");
    let mut events = Events::new(events);
    let python = spawn_session(
        &server,
        &room,
        "py-attrs",
        &[
            "--wait-for-identity",
            "sip_attrs",
            "--announce-ready",
            "--until-attribute",
            "sip_attrs:sip.callStatus=hangup",
            "--seconds",
            "40",
        ],
    );
    wait_python_ready(&mut events, "py-attrs").await;
    let mut attrs = std::collections::HashMap::new();
    attrs.insert("sip.callStatus".to_string(), "hangup".to_string());
    handle.set_attributes(attrs).await.expect("set attributes");
    let run = python.join().expect("python thread");
    handle
        .leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave");
    let report = run.expect_ok();
    let me = &report["participants"]["sip_attrs"];
    eprintln!(
        "python saw sip_attrs as {me}; changes {}",
        report["attribute_changes"]
    );
    assert_eq!(report["conditions_met"], true, "{}", run.describe());
    assert_eq!(me["kind"], "SIP", "{}", run.describe());
    assert_eq!(me["sid"], handle.sid(), "{}", run.describe());
    assert_eq!(me["name"], "Phone sip_attrs", "{}", run.describe());
    assert_eq!(
        me["attributes"]["sip.phoneNumber"],
        "+15550100",
        "{}",
        run.describe()
    );
    assert_eq!(
        me["attributes"]["sip.callStatus"],
        "hangup",
        "{}",
        run.describe()
    );
    let changes = report["attribute_changes"].as_array().expect("changes");
    assert!(
        changes
            .iter()
            .any(|c| c["identity"] == "sip_attrs" && c["changed"]["sip.callStatus"] == "hangup"),
        "no attribute change event for sip.callStatus\n{}",
        run.describe()
    );
}

/// Pushes silence in real time (20 ms frames) until an event matching `pred` arrives;
/// other events are kept in the backlog. Frames refused while the participant recovers
/// (queue full) are fine. Panics after `timeout` or on Disconnected.
async fn pump_until<F>(
    handle: &ParticipantHandle,
    events: &mut Events,
    tone: &mut Tone,
    ticker: &mut tokio::time::Interval,
    timeout: Duration,
    what: &str,
    mut pred: F,
) -> ParticipantEvent
where
    F: FnMut(&ParticipantEvent) -> bool,
{
    if let Some(i) = events.backlog.iter().position(&mut pred) {
        return events.backlog.remove(i).expect("index just found");
    }
    let t0 = Instant::now();
    loop {
        ticker.tick().await;
        let _ = handle.push_audio(&tone.frame(false));
        while let Ok(ev) = events.rx.try_recv() {
            match ev {
                ev if pred(&ev) => return ev,
                ParticipantEvent::Disconnected(r) => {
                    panic!("disconnected ({r}) while waiting for {what}")
                }
                ParticipantEvent::AudioFrame(_) => {}
                ev => events.backlog.push_back(ev),
            }
        }
        assert!(
            t0.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
    }
}

/// After a recovery: 1 s of silence, 3 s of 1 kHz tone, 1 s of silence, then the
/// attribute `test.done=1` that ends the Python session; silence until it has.
async fn tone_then_done(
    handle: &ParticipantHandle,
    tone: &mut Tone,
    ticker: &mut tokio::time::Interval,
    python: &std::thread::JoinHandle<common::PeerRun>,
) -> usize {
    play(handle, tone, 1.0, false, ticker).await;
    let frames = play(handle, tone, 3.0, true, ticker).await;
    play(handle, tone, 1.0, false, ticker).await;
    let mut done = std::collections::HashMap::new();
    done.insert("test.done".to_string(), "1".to_string());
    handle.set_attributes(done).await.expect("set attributes");
    while !python.is_finished() {
        play(handle, tone, 0.2, false, ticker).await;
    }
    frames
}

/// The Python recording of `track_sid` holds the tone: 1 kHz within 2% and at least 90%
/// of the `tone_frames` (20 ms) sent.
fn assert_tone_heard(run: &common::PeerRun, track_sid: &str, tone_frames: usize) {
    let report = run.expect_ok();
    assert_eq!(report["conditions_met"], true, "{}", run.describe());
    let tracks = report["tracks"].as_array().expect("tracks");
    let Some(track) = tracks.iter().find(|t| t["track_sid"] == track_sid) else {
        panic!(
            "Python did not record track {track_sid}\n{}",
            run.describe()
        );
    };
    eprintln!(
        "python recorded {} track(s); {track_sid}: {track}",
        tracks.len()
    );
    let dominant = track["dominant_hz"].as_f64().unwrap_or(0.0);
    let received = track["frames_nonsilent"].as_f64().unwrap_or(0.0);
    let expected = (tone_frames * 2) as f64;
    assert!(
        within(dominant, 1000.0, 0.02),
        "dominant {dominant} Hz is not within 2% of 1000 Hz\n{}",
        run.describe()
    );
    assert!(
        received >= 0.9 * expected && received <= expected + 10.0,
        "{received} non-silent 10 ms frames for {expected} sent\n{}",
        run.describe()
    );
}

/// Start of the recovery tests: the Rust participant publishes silence until the Python
/// session (recording everything from `identity`) has subscribed to its track.
async fn recovery_setup(
    server: &LiveKitServer,
    room: &str,
    identity: &str,
) -> (
    ParticipantHandle,
    Events,
    std::thread::JoinHandle<common::PeerRun>,
    String,
) {
    let (handle, events) = Participant::join(opts(server, room, identity, SampleRate::Hz16000))
        .await
        .expect("join");
    let mut events = Events::new(events);
    let done = format!("{identity}:test.done=1");
    let python = spawn_session(
        server,
        room,
        "py-rec",
        &[
            "--record",
            "--from-identity",
            identity,
            "--until-attribute",
            &done,
            "--seconds",
            "90",
        ],
    );
    let ev = events
        .wait_for(Duration::from_secs(20), "our track published", |e| {
            matches!(e, ParticipantEvent::LocalTrackPublished { .. })
        })
        .await;
    let ParticipantEvent::LocalTrackPublished { track_sid } = ev else {
        unreachable!()
    };
    (handle, events, python, track_sid)
}

/// A lost signalling connection (dropped by us without a leave) is resumed: same sid,
/// same track, the server's subscriber ICE restart answered, our publisher ICE-restarted,
/// and the Python listener hears the tone sent afterwards on the same track.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_signalling_is_resumed_and_audio_flows_again() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-resume");
    let (handle, mut events, python, track_sid) =
        recovery_setup(&server, &room, "sip_resume").await;
    let sid = handle.sid();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut tone = Tone {
        rate: 16000,
        freq: 1000.0,
        n: 0,
    };
    let long = Duration::from_secs(45);
    pump_until(
        &handle,
        &mut events,
        &mut tone,
        &mut ticker,
        long,
        "Python subscribed",
        |e| matches!(e, ParticipantEvent::LocalTrackSubscribed { .. }),
    )
    .await;
    handle
        .simulate(Simulate::SignalDrop)
        .await
        .expect("simulate");
    let ev = pump_until(
        &handle,
        &mut events,
        &mut tone,
        &mut ticker,
        long,
        "Reconnected",
        |e| matches!(e, ParticipantEvent::Reconnected { .. }),
    )
    .await;
    eprintln!("{ev:?}; backlog {:?}", events.backlog);
    assert!(
        matches!(&ev, ParticipantEvent::Reconnected { sid: s, resumed: true } if *s == sid),
        "{ev:?}"
    );
    assert!(
        events
            .backlog
            .iter()
            .any(|e| matches!(e, ParticipantEvent::Reconnecting { full: false, .. })),
        "no Reconnecting event: {:?}",
        events.backlog
    );
    assert_eq!(handle.sid(), sid, "a resume keeps the sid");
    let frames = tone_then_done(&handle, &mut tone, &mut ticker, &python).await;
    let run = python.join().expect("python thread");
    handle
        .leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave");
    assert_tone_heard(&run, &track_sid, frames);
    assert!(
        !events
            .backlog
            .iter()
            .any(|e| matches!(e, ParticipantEvent::Reconnecting { full: true, .. })),
        "the resume fell back to a rejoin: {:?}",
        events.backlog
    );
}

/// SignalRequest.simulate node_failure: the server drops the participant without a leave;
/// the resume is refused (leave STATE_MISMATCH / RECONNECT) and the participant joins
/// again with a new sid and track, which the Python listener subscribes and hears; a
/// Python publisher's track known before the failure is subscribed again and its 440 Hz
/// tone arrives after the rejoin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_failure_leads_to_a_full_rejoin_and_audio_flows_again() {
    init_logs();
    let server = LiveKitServer::start();
    let room = unique_room("lk-rejoin");
    let (handle, mut events, python, old_track) =
        recovery_setup(&server, &room, "sip_rejoin").await;
    let old_sid = handle.sid();
    let mut args = vec!["publish-tone".to_string()];
    args.extend(server.peer_args());
    args.extend(
        [
            "--room",
            &room,
            "--identity",
            "py-tone",
            "--freq",
            "440",
            "--seconds",
            "15",
            "--lead-silence",
            "0",
            "--tail",
            "0.5",
            "--wait-timeout",
            "40",
        ]
        .map(String::from),
    );
    let publisher = std::thread::spawn(move || run_roompeer(&args, PEER_TIMEOUT));
    events
        .wait_for(
            Duration::from_secs(40),
            "py-tone's track subscribed before the failure",
            |e| matches!(e, ParticipantEvent::TrackSubscribed { participant_identity, .. } if participant_identity == "py-tone"),
        )
        .await;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    let mut tone = Tone {
        rate: 16000,
        freq: 1000.0,
        n: 0,
    };
    let long = Duration::from_secs(45);
    pump_until(
        &handle,
        &mut events,
        &mut tone,
        &mut ticker,
        long,
        "Python subscribed",
        |e| matches!(e, ParticipantEvent::LocalTrackSubscribed { .. }),
    )
    .await;
    handle
        .simulate(Simulate::NodeFailure)
        .await
        .expect("simulate");
    let ev = pump_until(
        &handle,
        &mut events,
        &mut tone,
        &mut ticker,
        long,
        "Reconnected",
        |e| matches!(e, ParticipantEvent::Reconnected { .. }),
    )
    .await;
    eprintln!("{ev:?}; backlog {:?}", events.backlog);
    let ParticipantEvent::Reconnected { sid, resumed } = ev else {
        unreachable!()
    };
    assert!(!resumed, "node failure cannot be resumed");
    assert_ne!(sid, old_sid, "a full rejoin is a new participant");
    assert_eq!(handle.sid(), sid, "the handle follows the new sid");
    assert!(
        events
            .backlog
            .iter()
            .any(|e| matches!(e, ParticipantEvent::Reconnecting { full: true, .. })),
        "no full Reconnecting event: {:?}",
        events.backlog
    );
    let ev = pump_until(
        &handle,
        &mut events,
        &mut tone,
        &mut ticker,
        long,
        "new track published",
        |e| matches!(e, ParticipantEvent::LocalTrackPublished { .. }),
    )
    .await;
    let ParticipantEvent::LocalTrackPublished { track_sid } = ev else {
        unreachable!()
    };
    assert_ne!(track_sid, old_track, "a rejoin publishes a new track");
    pump_until(
        &handle,
        &mut events,
        &mut tone,
        &mut ticker,
        long,
        "Python subscribed again",
        |e| matches!(e, ParticipantEvent::LocalTrackSubscribed { track_sid: t } if *t == track_sid),
    )
    .await;
    let frames = tone_then_done(&handle, &mut tone, &mut ticker, &python).await;
    // py-tone's audio received since the rejoin's subscriptions (queued meanwhile)
    let mut py_samples = Vec::new();
    while let Ok(ev) = events.rx.try_recv() {
        if let ParticipantEvent::AudioFrame(f) = ev
            && f.participant_identity == "py-tone"
        {
            py_samples.extend_from_slice(&f.samples);
        }
    }
    let run = python.join().expect("python thread");
    handle
        .leave(LeaveReason::ClientInitiated)
        .await
        .expect("leave");
    assert_tone_heard(&run, &track_sid, frames);
    let (hz, loud, _) = tone_frequency(&py_samples, 16000);
    eprintln!("after the rejoin: py-tone {hz:?} Hz, {loud} non-silent 20 ms frames");
    let hz = hz.expect("no tone from py-tone after the rejoin");
    assert!(within(hz, 440.0, 0.02), "py-tone after the rejoin: {hz} Hz");
    assert!(
        loud >= 100,
        "only {loud} frames of py-tone after the rejoin"
    );
    let tone_run = publisher.join().expect("publisher thread");
    tone_run.expect_ok();
}
