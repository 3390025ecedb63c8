//! Riding out LiveKit outages (issue 16, item 1): a real livekit-server that the test
//! stops and starts again (same ports and keys; the new process knows no rooms), the
//! real daemon, sipp as the phone's signalling with the test's RTP socket as its media
//! (it sends a 1 kHz PCMU tone all along and records what the daemon sends), and the
//! LiveKit Python SDK in the room (publishes 440 Hz, records the phone's audio).
//!
//! What is asserted is what the people on the call notice: the call is not hung up, and
//! after LiveKit is back each side hears the other's tone again (by frequency), soon
//! after the server is ready (meanwhile silence, or the hold tone when configured); or,
//! when LiveKit stays away longer than `livekit.reconnect_window`, the phone gets a BYE
//! whose Reason says so.
//!
//! The issue's figure is "a tone crosses both ways again within 2 s of LiveKit being
//! ready". The assertion allows [`BACK_WITHIN`] (2 s + 3 s): the room side is a Python
//! process whose own reconnect, publish and subscribe take part of that time, and the
//! machine that runs the suite is a shared, loaded 2-core VM. The figures measured are
//! printed (`--nocapture`).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::livekit::LiveKitServer;
use common::roomline::{
    self, Roomline, Rtp, RtpPeer, Setup, Sipp, SippRun, header, roompeer_bg, sipp_args,
    wait_participant,
};
use common::uac::{sip_identity, uac_answered_then};
use common::{PeerRun, within};

const CALLER: &str = "+15551230077";
const PHONE_HZ: f64 = 1000.0;
const ROOM_HZ: f64 = 440.0;
/// `livekit.hold_tone`'s beep (`call::prompt::HOLD`).
const HOLD_HZ: f64 = 620.0;
/// How soon after LiveKit is ready each side must hear the other's tone again: the
/// issue's 2 s, plus 3 s for the Python peer's own reconnect and the machine's load.
const BACK_WITHIN: Duration = Duration::from_secs(5);

/// The audio tests run one at a time (two side by side starve each other's media
/// clocks on a 2-core machine).
static MEDIA: Mutex<()> = Mutex::new(());

fn media_lock() -> MutexGuard<'static, ()> {
    MEDIA.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The phone: INVITE (PCMU, media at `sdp_port`), ACK, then it waits up to 3 minutes
/// for the daemon's BYE and answers it.
fn uac_await_bye(sdp_port: u16) -> String {
    uac(
        sdp_port,
        r#"  <recv request="BYE" timeout="180000"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0
    ]]>
  </send>"#,
    )
}

/// The phone hangs up `after_ms` after its ACK: BYE, then the 200 (within 10 s).
fn uac_hangs_up(sdp_port: u16, after_ms: u64) -> String {
    uac(
        sdp_port,
        &format!(
            r#"  <pause milliseconds="{after_ms}"/>
  <send retrans="500">
    <![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" timeout="10000"/>"#
        ),
    )
}

/// INVITE, the answer, ACK, then `end`.
fn uac(sdp_port: u16, end: &str) -> String {
    uac_answered_then("uac", CALLER, &sdp_port.to_string(), end)
}

fn plan(room: &str) -> String {
    format!("rules:\n  - name: outage\n    match:\n      called: \"+15550177\"\n    room: {room}\n")
}

/// A call from sipp whose media is `rtp`: returns sipp and the daemon's RTP address.
fn call(rl: &Roomline, rtp: &RtpPeer) -> (Sipp, SocketAddr) {
    call_with(rl, &uac_await_bye(rtp.port()))
}

fn call_with(rl: &Roomline, scenario: &str) -> (Sipp, SocketAddr) {
    let mut args = sipp_args(&rl.sip_addr(), false);
    args.extend(["-s".into(), "+15550177".into()]);
    let sipp = Sipp::spawn(Some(scenario), &args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        if let Some(m) = sipp.received_so_far().into_iter().find(|m| {
            m.starts_with("SIP/2.0 200") && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
        }) {
            break m;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 to the INVITE:\n{}",
            sipp.messages_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let ip = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))
        .expect("c= line");
    let port = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next())
        .expect("m=audio line");
    (sipp, format!("{ip}:{port}").parse().unwrap())
}

/// The phone's tone: 1 kHz PCMU, 20 ms a packet, paced in real time from `rtp` to
/// `to` until `stop` (the phone keeps talking through the outage).
fn phone_talks(rtp: &RtpPeer, to: SocketAddr, stop: &AtomicBool) {
    let dir = tempfile::tempdir().unwrap();
    let tone = std::fs::read(roomline::ulaw_tone_file(dir.path(), PHONE_HZ as u32, 2)).unwrap();
    let frames: Vec<&[u8]> = tone.chunks_exact(160).collect();
    let t0 = Instant::now();
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let due = t0 + Duration::from_millis(20 * i as u64);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let mut pkt = vec![0x80, 0];
        pkt.extend_from_slice(&(i as u16).to_be_bytes());
        pkt.extend_from_slice(&((i as u32).wrapping_mul(160)).to_be_bytes());
        pkt.extend_from_slice(&0x0077_0077u32.to_be_bytes());
        pkt.extend_from_slice(frames[i % frames.len()]);
        rtp.send_to(to, &pkt);
        i += 1;
    }
}

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A room participant (`room-<tag>`) that connects (retrying while LiveKit is not
/// there), publishes 440 Hz for `seconds` and records the phone.
fn room_side(lk: &LiveKitServer, room: &str, tag: &str, seconds: u32) -> JoinHandle<PeerRun> {
    roompeer_bg(
        lk,
        "exchange",
        &[
            "--room",
            room,
            "--identity",
            &format!("room-{tag}"),
            "--from-identity",
            &sip_identity(CALLER),
            "--freq",
            &ROOM_HZ.to_string(),
            "--expect-freq",
            &PHONE_HZ.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--frame-ms",
            "20",
            "--connect-timeout",
            "5",
            "--wait-timeout",
            "60",
            "--timeout",
            "120",
        ],
    )
}

/// Zero crossings of `samples` as a frequency at 8 kHz.
fn crossing_hz(samples: &[i16]) -> f64 {
    let crossings = samples
        .windows(2)
        .filter(|w| (w[0] < 0) != (w[1] < 0))
        .count();
    crossings as f64 * 8000.0 / (2.0 * samples.len() as f64)
}

/// When the phone first got 100 ms (5 packets in a row) of `hz` (within 5 %, by zero
/// crossings) among the packets that arrived after `since`.
fn first_tone_at_phone(pkts: &[Rtp], since: Instant, hz: f64) -> Option<Instant> {
    let after: Vec<&Rtp> = pkts.iter().filter(|p| p.at >= since && p.pt == 0).collect();
    after.windows(5).find_map(|w| {
        if w.iter().any(|p| roomline::ulaw_is_silent(&p.payload)) {
            return None;
        }
        let pcm: Vec<i16> = w
            .iter()
            .flat_map(|p| p.payload.iter().map(|o| roomline::ulaw_to_linear(*o)))
            .collect();
        within(crossing_hz(&pcm), hz, 0.05).then_some(w[0].at)
    })
}

/// Checks one exchange: the room heard the phone's 1 kHz, the phone heard the room's
/// 440 Hz (the oracle's frequency on what arrived after `since`); returns how long
/// after `since` / `since_unix` each side first heard the other.
fn heard_both_ways(
    rtp: &RtpPeer,
    peer: JoinHandle<PeerRun>,
    since: Instant,
    since_unix: f64,
) -> (Duration, Duration) {
    let run = peer.join().unwrap();
    let report = run.expect_ok().clone();
    let room_hz = report["dominant_hz"].as_f64().unwrap_or_else(|| {
        panic!(
            "the room heard nothing from the phone: {report}\n{}",
            run.describe()
        )
    });
    assert!(
        within(room_hz, PHONE_HZ, 0.02),
        "the room heard {room_hz} Hz from the phone: {report}"
    );
    let heard_unix = report["tone_heard_unix"].as_f64().unwrap_or_else(|| {
        panic!(
            "the room never heard {PHONE_HZ} Hz from the phone: {report}\n{}",
            run.describe()
        )
    });
    let room_heard_after = Duration::from_secs_f64((heard_unix - since_unix).max(0.0));
    let pkts = rtp.received();
    let at = first_tone_at_phone(&pkts, since, ROOM_HZ).unwrap_or_else(|| {
        panic!(
            "the phone never heard {ROOM_HZ} Hz after the mark ({} packets after it)",
            pkts.iter().filter(|p| p.at >= since).count()
        )
    });
    let payload: Vec<u8> = pkts
        .iter()
        .filter(|p| p.at >= at && p.pt == 0)
        .flat_map(|p| p.payload.iter().copied())
        .collect();
    let heard = roomline::analyze_ulaw(&payload);
    let hz = heard["dominant_hz"].as_f64().unwrap_or(0.0);
    assert!(
        within(hz, ROOM_HZ, 0.02),
        "the phone heard {hz} Hz: {heard}"
    );
    (room_heard_after, at.duration_since(since))
}

/// How LiveKit goes away.
#[derive(Clone, Copy, Debug)]
enum Down {
    /// SIGKILL: sockets close, nothing said (a crash, a node lost).
    Killed,
    /// SIGTERM: the server says SERVER_SHUTDOWN to everyone, then exits (a restart).
    Stopped,
}

/// A call is up with audio both ways; LiveKit goes away for `down` and comes back
/// empty; the call is still up and both sides hear each other again soon after
/// LiveKit is ready.
fn rides_out(down: Duration, how: Down, hold_tone: bool) {
    let _media = media_lock();
    let mut lk = LiveKitServer::start();
    let room = format!("outage-{}", down.as_secs());
    let rl = Roomline::start(
        Setup::new(&lk)
            .livekit_extra(&format!("  hold_tone: {hold_tone}\n"))
            .dialplan("main", &plan(&room)),
    );
    let rtp = RtpPeer::bind();
    let (sipp, daemon) = call(&rl, &rtp);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| phone_talks(&rtp, daemon, &stop));
        // the phone stops talking however this ends (a panic too: the scope waits)
        let _quiet = StopOnDrop(&stop);
        // before: audio both ways
        let before = room_side(&lk, &room, "before", 4);
        let (t, t_unix) = (Instant::now(), unix_now());
        let (to_room, to_phone) = heard_both_ways(&rtp, before, t, t_unix);
        eprintln!(
            "before the outage: the room heard the phone after {to_room:.2?}, the phone the room after {to_phone:.2?} (from the peer's start)"
        );

        let went = Instant::now();
        match how {
            Down::Killed => lk.kill(),
            Down::Stopped => {
                lk.stop();
            }
        }
        // the room side comes back as soon as it can (it retries connecting)
        let sleep = down.saturating_sub(went.elapsed());
        std::thread::sleep(sleep.saturating_sub(Duration::from_secs(1)));
        let after = room_side(&lk, &room, "after", 6);
        std::thread::sleep(down.saturating_sub(went.elapsed()));
        let ready = lk.start_again();
        let ready_unix = unix_now();
        eprintln!(
            "LiveKit {how:?}, ready again after {:.2?}",
            ready.duration_since(went)
        );
        // meanwhile the phone heard silence, or the hold tone when configured
        let outage: Vec<Rtp> = rtp
            .received()
            .into_iter()
            .filter(|p| p.at >= went && p.at < ready)
            .collect();
        let hold = first_tone_at_phone(&outage, went, HOLD_HZ);
        assert_eq!(
            hold.is_some(),
            hold_tone,
            "hold tone configured: {hold_tone}; heard at {:?} ({} packets during the outage)",
            hold.map(|at| at.duration_since(went)),
            outage.len()
        );
        if !hold_tone {
            assert!(
                outage.iter().all(|p| roomline::ulaw_is_silent(&p.payload)),
                "the phone heard something other than silence during the outage"
            );
        }
        let (to_room, to_phone) = heard_both_ways(&rtp, after, ready, ready_unix);
        eprintln!(
            "after LiveKit was ready: the room heard the phone after {to_room:.2?}, the phone heard the room after {to_phone:.2?}"
        );
        assert!(
            to_room <= BACK_WITHIN && to_phone <= BACK_WITHIN,
            "audio back {to_room:.2?} (to the room) and {to_phone:.2?} (to the phone) after LiveKit was ready; allowed {BACK_WITHIN:?}\n{}",
            rl.log_tail(60)
        );
        assert!(
            !sipp.received_so_far().iter().any(|m| m.starts_with("BYE ")),
            "the phone got a BYE:\n{}",
            sipp.messages_so_far()
        );
    });
    assert_eq!(
        rl.metric("roomline_livekit_reconnects_total{result=\"rejoined\"}"),
        Some(1.0),
        "{}",
        rl.log_tail(60)
    );
    // the call goes on until the room ends it
    let (status, body) = roomline::room_service(
        &lk,
        "RemoveParticipant",
        &room,
        serde_json::json!({ "room": room, "identity": sip_identity(CALLER) }),
    );
    assert_eq!(status, 200, "RemoveParticipant: {body}");
    let run: SippRun = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// LiveKit killed mid-call and back 3 s later (the issue's restart: the call used to
/// end 1.5 s in with `cause=16`).
#[test]
fn call_rides_out_livekit_killed_for_3s() {
    rides_out(Duration::from_secs(3), Down::Killed, false);
}

/// LiveKit shut down (SERVER_SHUTDOWN to every participant) and back 15 s later; the
/// phone hears the hold tone meanwhile (`livekit.hold_tone: true`).
#[test]
fn call_rides_out_livekit_restarted_after_15s() {
    rides_out(Duration::from_secs(15), Down::Stopped, true);
}

/// LiveKit gone for longer than `livekit.reconnect_window` (4 s here): the phone gets a
/// BYE with `Reason: Q.850;cause=38` ("network out of order"), and the metrics count
/// the call as `livekit_unreachable` and the outage as given up.
#[test]
fn call_ends_with_cause_38_when_livekit_stays_away_past_the_window() {
    let mut lk = LiveKitServer::start();
    let room = "outage-window";
    let rl = Roomline::start(
        Setup::new(&lk)
            .livekit_extra("  reconnect_window: 4s\n")
            .dialplan("main", &plan(room)),
    );
    let rtp = RtpPeer::bind();
    let (sipp, _daemon) = call(&rl, &rtp);
    wait_participant(&lk, room, &sip_identity(CALLER));
    let went = Instant::now();
    lk.kill();
    let run = sipp.wait(Duration::from_secs(30));
    let gone_after = went.elapsed();
    run.expect_success();
    let bye = run.first_received("BYE ");
    assert_eq!(
        header(&bye, "Reason"),
        Some("Q.850;cause=38;text=\"LiveKit unreachable\""),
        "{bye}"
    );
    eprintln!("BYE {gone_after:.2?} after LiveKit was killed (window 4 s)");
    assert!(
        gone_after >= Duration::from_secs(4),
        "BYE before the window passed: {gone_after:.2?}"
    );
    assert_eq!(
        rl.metric(
            "roomline_calls_total{direction=\"inbound\",trunk=\"local\",outcome=\"livekit_unreachable\"}"
        ),
        Some(1.0),
        "{}",
        rl.log_tail(40)
    );
    assert_eq!(
        rl.metric("roomline_livekit_reconnects_total{result=\"gave_up\"}"),
        Some(1.0)
    );
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// The phone hangs up while LiveKit is away (default 30 s window): its BYE gets 200
/// at once, the call ends as the caller's hangup, and nothing is left behind.
#[test]
fn phone_hangs_up_during_an_outage() {
    let mut lk = LiveKitServer::start();
    let room = "outage-hangup";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan(room)));
    let rtp = RtpPeer::bind();
    let (sipp, _daemon) = call_with(&rl, &uac_hangs_up(rtp.port(), 4000));
    wait_participant(&lk, room, &sip_identity(CALLER));
    lk.kill();
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(
        rl.metric(
            "roomline_calls_total{direction=\"inbound\",trunk=\"local\",outcome=\"caller_hangup\"}"
        ),
        Some(1.0),
        "{}",
        rl.log_tail(40)
    );
    rl.assert_no_leaks(Duration::from_secs(10));
}
