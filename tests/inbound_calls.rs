//! Inbound calls end to end: real livekit-server, the real `roomline run` daemon, sipp as
//! the phone (and a test RTP socket where a test must see exactly what the daemon
//! sends), the LiveKit Python SDK in the room. What is asserted is what a user observes:
//! SIP statuses on the wire, tone frequencies on the other side, participants and their
//! attributes in the room, and that no call, port or participant is left behind.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{
    self, Roomline, Rtp, RtpPeer, Setup, Sipp, SippRun, header, roompeer_bg, sipp_args,
    tone_agent_bg, wait_participant, wait_room_empty_of,
};
use common::uac::{invite, non_2xx_ack, sip_identity, uac_refused};
use common::{PeerRun, run_roompeer, within};

const CALLER: &str = "+15551230000";

/// Tests that measure audio (tone frequency and frame counts) run one at a time: on a
/// 2-core machine two of them side by side starve each other's media clocks. Tests that
/// only look at signalling and room state run alongside them.
static MEDIA: Mutex<()> = Mutex::new(());

fn media_lock() -> MutexGuard<'static, ()> {
    MEDIA.lock().unwrap_or_else(|e| e.into_inner())
}

/// How a UAC scenario ends once its `during` part is done.
#[derive(Clone, Copy, PartialEq, Eq)]
enum End {
    /// The phone hangs up: BYE, then the 200.
    Bye,
    /// The phone waits (up to 40 s) for the daemon's BYE and answers it with 200.
    AwaitBye,
}

/// A UAC: INVITE (PCMU + telephone-event, media at `sdp_port`) from `caller`, ACK, the
/// given actions, then `end`. `[service]` is the called number (sipp `-s`).
fn uac(caller: &str, sdp_port: &str, during: &str, end: End) -> String {
    let end = match end {
        End::Bye => format!(
            r#"  <send retrans="500">
    <![CDATA[
      BYE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200" crlf="true"/>"#
        ),
        End::AwaitBye => r#"  <recv request="BYE" timeout="40000"/>
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
  </send>"#
            .to_string(),
    };
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
{during}
{end}
</scenario>
"#,
        invite = invite(caller, sdp_port)
    )
}

/// A UAC that gives up while it rings: INVITE, 180, a pause, CANCEL (same branch as the
/// INVITE), the CANCEL's 200, the INVITE's 487, ACK.
fn uac_cancel(caller: &str, ring_ms: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac-cancel">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180"/>
  <pause milliseconds="{ring_ms}"/>
  <send>
    <![CDATA[
      CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch-4]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
{ack}
</scenario>
"#,
        invite = invite(caller, "[media_port]"),
        ack = non_2xx_ack(caller, 7)
    )
}

/// The original scenario of the first test: UAC from [`CALLER`], ending with its BYE.
fn uac_scenario(sdp_port: &str, during: &str) -> String {
    uac(CALLER, sdp_port, during, End::Bye)
}

/// sipp arguments for one call to `called` at the daemon, media on 127.0.0.1.
fn call_args(rl: &Roomline, called: &str) -> Vec<String> {
    let mut args = sipp_args(&rl.sip_addr(), false);
    args.extend(["-s".into(), called.into(), "-mi".into(), "127.0.0.1".into()]);
    args.extend(["-mp".into(), roomline::free_media_port().to_string()]);
    args
}

/// Asserts sipp received a BYE whose Reason header is exactly `reason`.
fn assert_bye_reason(run: &SippRun, reason: &str) {
    let bye = run.first_received("BYE ");
    assert_eq!(
        header(&bye, "Reason"),
        Some(reason),
        "Reason of the daemon's BYE:\n{bye}\n{}",
        run.describe()
    );
}

/// Waits until sipp has received the 200 to its INVITE; returns that response.
fn wait_answer(sipp: &Sipp, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        if let Some(m) = sipp.received_so_far().into_iter().find(|m| {
            m.starts_with("SIP/2.0 200") && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
        }) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no 200 to the INVITE within {within:?}:\n{}",
            sipp.messages_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the daemon's SDP (in a 200) says its RTP is.
fn sdp_rtp_addr(msg: &str) -> SocketAddr {
    let ip = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))
        .unwrap_or_else(|| panic!("no c= line in\n{msg}"));
    let port = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no m=audio line in\n{msg}"));
    format!("{ip}:{port}").parse().unwrap()
}

fn has_identity(ps: &[serde_json::Value], identity: &str) -> bool {
    ps.iter().any(|p| p["identity"] == identity)
}

fn remove_participant(lk: &LiveKitServer, room: &str, identity: &str) {
    let (status, body) = roomline::room_service(
        lk,
        "RemoveParticipant",
        room,
        serde_json::json!({ "room": room, "identity": identity }),
    );
    assert_eq!(status, 200, "RemoveParticipant: {body}");
}

/// The G.711 payload of the packets of payload type `pt` that arrived in `[from, to)`.
fn payload_between(pkts: &[Rtp], pt: u8, from: Instant, to: Instant) -> Vec<u8> {
    pkts.iter()
        .filter(|p| p.pt == pt && p.at >= from && p.at < to)
        .flat_map(|p| p.payload.iter().copied())
        .collect()
}

fn one_room_plan(number: &str, room: &str) -> String {
    format!("rules:\n  - name: tone\n    match:\n      called: \"{number}\"\n    room: {room}\n")
}

/// sipp streams a 1 kHz PCMU tone (sox-made file, sipp's rtp_stream); a Python
/// participant already in the room hears 1 kHz in at least 90 % of the tone's frames.
#[test]
fn sipp_pcmu_tone_reaches_the_room_at_1khz() {
    let lk = LiveKitServer::start();
    let room = "inbound-tone-1k";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let identity = format!("sip_{CALLER}");
    let listener = {
        let mut args = vec!["listen".to_string()];
        args.extend(lk.peer_args());
        args.extend(
            [
                "--room",
                room,
                "--identity",
                "listener",
                "--seconds",
                "20",
                "--from-identity",
                &identity,
                "--wait-timeout",
                "40",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        std::thread::spawn(move || run_roompeer(args, Duration::from_secs(90)))
    };
    // the listener is in the room before the call arrives
    roomline::wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "listener")
    });
    let tone_seconds = 4;
    let sipp_dir = tempfile::tempdir().unwrap();
    let tone = roomline::ulaw_tone_file(sipp_dir.path(), 1000, tone_seconds + 2);
    let during = format!(
        r#"  <nop><action><exec rtp_stream="{},-1,0"/></action></nop>
  <pause milliseconds="{}"/>
  <nop><action><exec rtp_stream="pause"/></action></nop>
  <pause milliseconds="300"/>"#,
        tone.display(),
        tone_seconds * 1000
    );
    let mut args = sipp_args(&rl.sip_addr(), false);
    args.extend([
        "-s".into(),
        "+15550100".into(),
        "-mi".into(),
        "127.0.0.1".into(),
    ]);
    args.extend(["-mp".into(), roomline::free_media_port().to_string()]);
    let run = Sipp::spawn(Some(&uac_scenario("[media_port]", &during)), &args)
        .wait(Duration::from_secs(60));
    run.expect_success();
    assert_eq!(
        run.received_statuses()
            .iter()
            .filter(|s| **s >= 200)
            .copied()
            .collect::<Vec<_>>(),
        vec![200, 200],
        "200 to the INVITE and to the BYE:\n{}",
        run.describe()
    );
    let heard = listener.join().unwrap();
    let report = heard.expect_ok();
    eprintln!("listener report: {report}");
    let hz = heard.f64("dominant_hz");
    let frames = heard.f64("frames_nonsilent");
    let expected = f64::from(tone_seconds) * 100.0;
    assert!(within(hz, 1000.0, 0.02), "heard {hz} Hz: {report}");
    assert!(
        frames >= 0.9 * expected,
        "{frames} of {expected} tone frames arrived: {report}"
    );
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// A Python participant publishes 440 Hz; the test's RTP socket is the phone's media
/// address in the SDP and records what the daemon sends: G.711 mu-law at 50 packets/s,
/// one SSRC, consecutive sequence numbers, timestamps 160 apart, and, decoded by sox,
/// 440 Hz in at least 90 % of the tone's frames.
#[test]
fn room_tone_reaches_the_phone_as_440hz_pcmu() {
    let _media = media_lock();
    let lk = LiveKitServer::start();
    let room = "inbound-tone-440";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let tone_seconds = 4.0;
    let publisher = tone_agent_bg(&lk, room, "tone", 440, 4);
    wait_participant(&lk, room, "tone");
    let rtp = RtpPeer::bind();
    let sipp = Sipp::spawn(
        Some(&uac(CALLER, &rtp.port().to_string(), "", End::AwaitBye)),
        &call_args(&rl, "+15550100"),
    );
    wait_answer(&sipp, Duration::from_secs(30));
    let published = publisher.join().unwrap();
    let report = published.expect_ok().clone();
    // the tone has ended at the phone: it got the tone's last packets
    rtp.wait_for(Duration::from_secs(10), "silence after the tone", |p| {
        roomline::ulaw_sound_then_silence(p, 0, 10)
    });
    remove_participant(&lk, room, &sip_identity(CALLER));
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();

    let pkts = rtp.received();
    assert!(
        pkts.len() > 100,
        "only {} RTP packets from the daemon",
        pkts.len()
    );
    assert!(
        pkts.iter().all(|p| p.pt == 0),
        "payload types: {:?}",
        pkts.iter()
            .map(|p| p.pt)
            .collect::<std::collections::BTreeSet<_>>()
    );
    assert!(pkts.iter().all(|p| p.ssrc == pkts[0].ssrc), "one SSRC");
    assert!(
        pkts.iter().all(|p| p.payload.len() == 160),
        "20 ms of PCMU per packet"
    );
    for w in pkts.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "sequence numbers continue: {:?} -> {:?}",
            (w[0].seq, w[0].ts),
            (w[1].seq, w[1].ts)
        );
        // 160 per packet; more after ticks the daemon skipped when its task was starved
        // (it skips ahead rather than burst: the timestamp follows the clock, RFC 3550)
        let step = w[1].ts.wrapping_sub(w[0].ts);
        assert!(
            step % 160 == 0 && (160..=160 * 50).contains(&step),
            "timestamps advance by whole 20 ms frames: seq {} -> {}, ts {} -> {}",
            w[0].seq,
            w[1].seq,
            w[0].ts,
            w[1].ts
        );
    }
    let span = pkts
        .last()
        .unwrap()
        .at
        .duration_since(pkts[0].at)
        .as_secs_f64();
    let rate = (pkts.len() - 1) as f64 / span;
    assert!(
        within(rate, 50.0, 0.1),
        "{rate:.1} packets/s over {span:.1} s"
    );

    let payload: Vec<u8> = pkts
        .iter()
        .flat_map(|p| p.payload.iter().copied())
        .collect();
    let heard = roomline::analyze_ulaw(&payload);
    eprintln!("publisher: {report}\nphone heard: {heard}");
    let hz = heard["dominant_hz"].as_f64().unwrap_or(0.0);
    assert!(within(hz, 440.0, 0.02), "the phone heard {hz} Hz: {heard}");
    let frames = heard["frames_nonsilent"].as_f64().unwrap();
    let sent = report["tone_frames_10ms"].as_f64().unwrap();
    assert_eq!(sent, tone_seconds * 100.0, "{report}");
    assert!(
        frames >= 0.9 * sent,
        "{frames} of {sent} tone frames reached the phone: {heard}"
    );
    assert!(
        frames <= sent + 10.0,
        "{frames} non-silent frames for {sent} sent: {heard}"
    );
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// sipp plays the RFC 4733 pcaps shipped with it (1, 5, 9, #; payload type 101, as
/// negotiated) during the call: a Python participant in the room gets `sip_dtmf_received`
/// for exactly those digits, in order, from the phone's participant.
#[test]
fn phone_dtmf_from_sipp_pcaps_reaches_the_room() {
    let lk = LiveKitServer::start();
    let room = "inbound-dtmf-in";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let observer = roompeer_bg(
        &lk,
        "session",
        &[
            "--room",
            room,
            "--identity",
            "observer",
            "--seconds",
            "60",
            "--until-dtmf",
            "4",
        ],
    );
    wait_participant(&lk, room, "observer");
    // The pcaps come from one recorded call (one SSRC, rising sequence numbers and
    // timestamps): played in recording order they form one plausible stream.
    let mut during = String::from(r#"  <pause milliseconds="1500"/>"#);
    for d in ["1", "5", "9", "pound"] {
        let pcap = format!("/usr/share/sip-tester/dtmf_2833_{d}.pcap");
        during.push_str(&format!(
            "\n  <nop><action><exec play_pcap_audio=\"{pcap}\"/></action></nop>\n  <pause milliseconds=\"600\"/>"
        ));
    }
    during.push_str("\n  <pause milliseconds=\"1000\"/>");
    let run = Sipp::spawn(
        Some(&uac(CALLER, "[media_port]", &during, End::Bye)),
        &call_args(&rl, "+15550100"),
    )
    .wait(Duration::from_secs(60));
    run.expect_success();
    let seen = observer.join().unwrap();
    let report = seen.expect_ok();
    let dtmf = report["dtmf_received"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let digits: Vec<&str> = dtmf
        .iter()
        .map(|d| d["digit"].as_str().unwrap_or("?"))
        .collect();
    let codes: Vec<u64> = dtmf
        .iter()
        .map(|d| d["code"].as_u64().unwrap_or(99))
        .collect();
    assert_eq!(digits, ["1", "5", "9", "#"], "{report}");
    assert_eq!(codes, [1, 5, 9, 11], "{report}");
    assert!(
        dtmf.iter()
            .all(|d| d["from_identity"] == sip_identity(CALLER).as_str()),
        "{report}"
    );
    rl.assert_no_leaks(Duration::from_secs(10));
    let ended = rl.wait_log("call ended", Duration::from_secs(10));
    assert!(
        ended.contains("dtmf_in=4") && ended.contains("dtmf_out=0"),
        "{ended}"
    );
}

/// One RFC 4733 event as the phone received it: the packets with one timestamp.
#[derive(Debug)]
struct PhoneEvent {
    ts: u32,
    code: u8,
    marker_first: bool,
    durations: Vec<u16>,
    end_bits: Vec<bool>,
}

fn rfc4733_events(pkts: &[Rtp], pt: u8) -> Vec<PhoneEvent> {
    let mut out: Vec<PhoneEvent> = Vec::new();
    for p in pkts.iter().filter(|p| p.pt == pt) {
        assert!(
            p.payload.len() >= 4,
            "telephone-event payload of {} bytes",
            p.payload.len()
        );
        let dur = u16::from_be_bytes([p.payload[2], p.payload[3]]);
        let end = p.payload[1] & 0x80 != 0;
        match out.last_mut() {
            Some(e) if e.ts == p.ts => {
                assert_eq!(e.code, p.payload[0], "one event code per timestamp");
                e.durations.push(dur);
                e.end_bits.push(end);
            }
            _ => out.push(PhoneEvent {
                ts: p.ts,
                code: p.payload[0],
                marker_first: p.marker,
                durations: vec![dur],
                end_bits: vec![end],
            }),
        }
    }
    out
}

/// A Python participant sends DTMF with `publish_dtmf` (1, 5, 9, #): the phone's RTP
/// socket receives RFC 4733 telephone-events on payload type 101 (as negotiated), one
/// event per digit with the right codes, the marker on its first packet, durations that
/// grow, and end-bit packets to close it; audio resumes after each event in the same
/// stream (one SSRC, consecutive sequence numbers).
#[test]
fn room_dtmf_reaches_the_phone_as_rfc4733_events() {
    let lk = LiveKitServer::start();
    let room = "inbound-dtmf-out";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let rtp = RtpPeer::bind();
    let sipp = Sipp::spawn(
        Some(&uac(CALLER, &rtp.port().to_string(), "", End::AwaitBye)),
        &call_args(&rl, "+15550100"),
    );
    wait_answer(&sipp, Duration::from_secs(30));
    let identity = sip_identity(CALLER);
    let sender = roompeer_bg(
        &lk,
        "session",
        &[
            "--room",
            room,
            "--identity",
            "keypad",
            "--seconds",
            "60",
            "--wait-for-identity",
            &identity,
            "--send-dtmf",
            "159#",
            "--dtmf-interval",
            "0.5",
            // stays until the call's participant is gone: leaving right after the last
            // publish_dtmf may take that digit along
            "--until-left",
            &identity,
        ],
    );
    // wait until the last event has been closed (end bit) at the phone
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let pkts = rtp.received();
        let ev = rfc4733_events(&pkts, 101);
        // every event closed, and audio after the last (its end retransmissions are in)
        let audio_after_events = pkts
            .iter()
            .rposition(|p| p.pt == 101)
            .is_some_and(|last| pkts[last..].iter().any(|p| p.pt == 0));
        if ev.len() >= 4
            && ev.iter().all(|e| e.end_bits.last() == Some(&true))
            && audio_after_events
        {
            break ev;
        }
        assert!(
            Instant::now() < deadline,
            "telephone-events at the phone: {ev:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    remove_participant(&lk, room, &identity);
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    let keypad = sender.join().unwrap();
    assert_eq!(
        keypad.expect_ok()["ended_by"],
        "conditions",
        "{}",
        keypad.describe()
    );
    // the summary line counts the four digits sent to the phone (and none from it)
    let ended = rl.wait_log("call ended", Duration::from_secs(10));
    assert!(
        ended.contains("dtmf_out=4") && ended.contains("dtmf_in=0"),
        "{ended}"
    );
    assert!(ended.contains("outcome=participant_removed"), "{ended}");

    eprintln!("events: {events:?}");
    let codes: Vec<u8> = events.iter().map(|e| e.code).collect();
    assert_eq!(codes, [1, 5, 9, 11], "{events:?}");
    for e in &events {
        assert!(
            e.marker_first,
            "marker on the first packet of an event: {e:?}"
        );
        assert!(
            e.durations.windows(2).all(|w| w[1] >= w[0]),
            "durations never shrink: {e:?}"
        );
        assert!(
            e.durations.last() > e.durations.first(),
            "durations grow: {e:?}"
        );
        let first_end = e.end_bits.iter().position(|b| *b).expect("an end bit");
        assert!(
            e.end_bits[first_end..].iter().all(|b| *b),
            "nothing after the end: {e:?}"
        );
        assert!(
            e.durations[first_end..]
                .iter()
                .all(|d| *d == e.durations[first_end]),
            "end retransmissions repeat the final duration: {e:?}"
        );
        // at least 40 ms long (320 at 8 kHz): a key press, not a blip
        assert!(e.durations[first_end] >= 320, "{e:?}");
    }
    let pkts = rtp.received();
    assert!(
        pkts.iter().all(|p| p.ssrc == pkts[0].ssrc),
        "one SSRC for audio and events"
    );
    for w in pkts.windows(2) {
        assert_eq!(
            w[1].seq,
            w[0].seq.wrapping_add(1),
            "one sequence across audio and events"
        );
    }
    // after each event, audio resumes no earlier than the event's end on the RTP clock
    for e in &events {
        let end = e.ts.wrapping_add(u32::from(*e.durations.last().unwrap()));
        let last = pkts
            .iter()
            .rposition(|p| p.pt == 101 && p.ts == e.ts)
            .unwrap();
        if let Some(a) = pkts[last..].iter().find(|p| p.pt == 0) {
            assert!(
                a.ts.wrapping_sub(end) < 1 << 31,
                "audio at {} resumes before the event ended at {end}",
                a.ts
            );
        }
    }
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// Routing: two rules send two called numbers to two rooms (two calls at once, each
/// lands in its own room only, with its rule as sip.ruleID); a reject rule answers its
/// status and reason phrase; a number no rule matches gets 404.
#[test]
fn dialplan_routes_numbers_to_rooms_rejects_and_404s() {
    let lk = LiveKitServer::start();
    let plan = r#"rules:
  - name: sales
    match:
      called: "+15550100"
    room: route-sales
  - name: support
    match:
      called: "+15550101"
    room: route-support
  - name: busy
    match:
      called: "+15550102"
    reject:
      status: 486
      reason: Busy Here
"#;
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", plan));
    let (a, b) = ("+15551230001", "+15551230002");
    let hold = r#"  <pause milliseconds="4000"/>"#;
    let call_a = Sipp::spawn(
        Some(&uac(a, "[media_port]", hold, End::Bye)),
        &call_args(&rl, "+15550100"),
    );
    let call_b = Sipp::spawn(
        Some(&uac(b, "[media_port]", hold, End::Bye)),
        &call_args(&rl, "+15550101"),
    );
    wait_answer(&call_a, Duration::from_secs(30));
    wait_answer(&call_b, Duration::from_secs(30));
    // both calls are up (the 200 follows the join): each is in its room, and only there
    let sales = roomline::list_participants(&lk, "route-sales");
    let support = roomline::list_participants(&lk, "route-support");
    let ids = |ps: &[serde_json::Value]| {
        ps.iter()
            .map(|p| p["identity"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&sales), [sip_identity(a)], "route-sales: {sales:?}");
    assert_eq!(
        ids(&support),
        [sip_identity(b)],
        "route-support: {support:?}"
    );
    assert_eq!(sales[0]["attributes"]["sip.ruleID"], "sales", "{sales:?}");
    assert_eq!(
        support[0]["attributes"]["sip.ruleID"], "support",
        "{support:?}"
    );
    for run in [
        call_a.wait(Duration::from_secs(30)),
        call_b.wait(Duration::from_secs(30)),
    ] {
        run.expect_success();
        assert_eq!(run.finals(), [200, 200], "{}", run.describe());
    }

    let busy = roomline::sipp(
        Some(&uac_refused(CALLER, 486)),
        &call_args(&rl, "+15550102"),
        Duration::from_secs(30),
    );
    busy.expect_success();
    assert_eq!(busy.finals(), [486], "{}", busy.describe());
    let line = busy.first_received("SIP/2.0 486");
    assert!(
        line.starts_with("SIP/2.0 486 Busy Here\n"),
        "the rule's reason phrase: {line}"
    );

    let unknown = roomline::sipp(
        Some(&uac_refused(CALLER, 404)),
        &call_args(&rl, "+15550199"),
        Duration::from_secs(30),
    );
    unknown.expect_success();
    assert_eq!(unknown.finals(), [404], "{}", unknown.describe());
    // refused calls never reached a room
    for room in ["route-sales", "route-support"] {
        wait_room_empty_of(&lk, room, &sip_identity(CALLER));
    }
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// What the test phone sends: PCMU silence and RFC 4733 key presses on payload type 101,
/// one RTP stream (one SSRC, consecutive sequence numbers, timestamps on the 8 kHz
/// clock), paced at 20 ms per packet, from the RTP peer's socket.
struct PhoneStream<'a> {
    rtp: &'a RtpPeer,
    to: SocketAddr,
    seq: u16,
    ts: u32,
    next: Instant,
}

impl<'a> PhoneStream<'a> {
    fn new(rtp: &'a RtpPeer, to: SocketAddr) -> Self {
        PhoneStream {
            rtp,
            to,
            seq: 1000,
            ts: 80_000,
            next: Instant::now(),
        }
    }

    fn send(&mut self, marker: bool, pt: u8, ts: u32, payload: &[u8]) {
        if let Some(d) = self.next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        self.next =
            self.next.max(Instant::now() - Duration::from_millis(40)) + Duration::from_millis(20);
        let mut pkt = vec![0x80, if marker { 0x80 | pt } else { pt }];
        pkt.extend_from_slice(&self.seq.to_be_bytes());
        pkt.extend_from_slice(&ts.to_be_bytes());
        pkt.extend_from_slice(&0x0bad_cafe_u32.to_be_bytes());
        pkt.extend_from_slice(payload);
        self.rtp.send_to(self.to, &pkt);
        self.seq = self.seq.wrapping_add(1);
    }

    fn silence(&mut self, ms: u64) {
        for _ in 0..ms / 20 {
            self.send(false, 0, self.ts, &[0xff; 160]);
            self.ts = self.ts.wrapping_add(160);
        }
    }

    /// One key press: 140 ms of event packets with growing durations (the first with the
    /// marker), then the end packet three times (RFC 4733 section 2.5.1.4).
    fn key(&mut self, digit: char) {
        let code = match digit {
            '0'..='9' => digit as u8 - b'0',
            '*' => 10,
            '#' => 11,
            _ => panic!("no key {digit:?}"),
        };
        let start = self.ts;
        for i in 1..=7u16 {
            let d = (160 * i).to_be_bytes();
            self.send(i == 1, 101, start, &[code, 10, d[0], d[1]]);
        }
        let d = 1280u16.to_be_bytes();
        for _ in 0..3 {
            self.send(false, 101, start, &[code, 0x80 | 10, d[0], d[1]]);
        }
        self.ts = start.wrapping_add(160 * 10);
    }

    fn keys(&mut self, keys: &str) {
        for k in keys.chars() {
            self.key(k);
            self.silence(100);
        }
    }
}

/// A PIN rule: the daemon answers at once and plays its prompt (660/880 Hz); the caller
/// keys the right PIN (RFC 4733, ending with '#') and then joins the room. Another caller
/// keys three wrong PINs: each is answered with the low "wrong PIN" beeps (400 Hz), the
/// third ends the call with a BYE whose Reason says so, and that caller never appears in
/// the room.
#[test]
fn pin_rule_admits_the_right_pin_and_refuses_wrong_ones() {
    let _media = media_lock();
    let lk = LiveKitServer::start();
    let room = "pin-room";
    let plan = format!(
        r#"rules:
  - name: conference
    match:
      called: "+15550103"
    room: {room}
    pin: "4321"
"#
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));

    // the right PIN
    let rtp = RtpPeer::bind();
    let sipp = Sipp::spawn(
        Some(&uac(CALLER, &rtp.port().to_string(), "", End::AwaitBye)),
        &call_args(&rl, "+15550103"),
    );
    let ok = wait_answer(&sipp, Duration::from_secs(30));
    let mut phone = PhoneStream::new(&rtp, sdp_rtp_addr(&ok));
    phone.silence(1000);
    let prompt = roomline::analyze_ulaw(&payload_between(
        &rtp.received(),
        0,
        Instant::now() - Duration::from_secs(60),
        Instant::now(),
    ));
    eprintln!("prompt: {prompt}");
    let hz = prompt["dominant_hz"].as_f64().unwrap_or(0.0);
    assert!(
        within(hz, 660.0, 0.02) || within(hz, 880.0, 0.02),
        "prompt at {hz} Hz: {prompt}"
    );
    let frames = prompt["frames_nonsilent"].as_f64().unwrap();
    assert!(
        (30.0..=45.0).contains(&frames),
        "360 ms of prompt tones: {frames} frames: {prompt}"
    );
    assert!(
        !has_identity(
            &roomline::list_participants(&lk, room),
            &sip_identity(CALLER)
        ),
        "in the room before the PIN"
    );
    phone.keys("4321#");
    let p = wait_participant(&lk, room, &sip_identity(CALLER));
    assert_eq!(p["attributes"]["sip.ruleID"], "conference", "{p}");
    remove_participant(&lk, room, &sip_identity(CALLER));
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    drop(rtp);

    // three wrong PINs
    let caller = "+15551230002";
    let rtp = RtpPeer::bind();
    let sipp = Sipp::spawn(
        Some(&uac(caller, &rtp.port().to_string(), "", End::AwaitBye)),
        &call_args(&rl, "+15550103"),
    );
    let ok = wait_answer(&sipp, Duration::from_secs(30));
    let mut phone = PhoneStream::new(&rtp, sdp_rtp_addr(&ok));
    phone.silence(600);
    for (i, pin) in ["1234", "0000", "43210"].into_iter().enumerate() {
        phone.keys(pin);
        let t = Instant::now();
        phone.keys("#");
        if i < 2 {
            phone.silence(1200);
            let wrong = roomline::analyze_ulaw(&payload_between(
                &rtp.received(),
                0,
                t,
                t + Duration::from_millis(1300),
            ));
            eprintln!("after wrong PIN {}: {wrong}", i + 1);
            let hz = wrong["dominant_hz"].as_f64().unwrap_or(0.0);
            assert!(
                within(hz, 400.0, 0.02),
                "wrong-PIN signal at {hz} Hz: {wrong}"
            );
            let frames = wrong["frames_nonsilent"].as_f64().unwrap();
            assert!(
                frames >= 35.0,
                "450 ms of wrong-PIN beeps: {frames} frames: {wrong}"
            );
        }
        assert!(
            !has_identity(
                &roomline::list_participants(&lk, room),
                &sip_identity(caller)
            ),
            "a wrong PIN let the caller in"
        );
    }
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    assert_bye_reason(&run, "Q.850;cause=21;text=\"wrong PIN\"");
    assert!(!has_identity(
        &roomline::list_participants(&lk, room),
        &sip_identity(caller)
    ));
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// The phone hangs up (BYE): 200 to it, and the participant leaves the room.
#[test]
fn caller_bye_takes_the_participant_out_of_the_room() {
    let lk = LiveKitServer::start();
    let room = "teardown-bye";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let sipp = Sipp::spawn(
        Some(&uac(
            CALLER,
            "[media_port]",
            r#"  <pause milliseconds="2000"/>"#,
            End::Bye,
        )),
        &call_args(&rl, "+15550100"),
    );
    wait_answer(&sipp, Duration::from_secs(30));
    assert!(has_identity(
        &roomline::list_participants(&lk, room),
        &sip_identity(CALLER)
    ));
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(run.finals(), [200, 200], "{}", run.describe());
    wait_room_empty_of(&lk, room, &sip_identity(CALLER));
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// The caller gives up while the call rings (`answer: on_first_track`, nobody publishes:
/// the participant is already in the room, waiting): CANCEL gets 200, the INVITE 487,
/// and the participant is gone from the room.
#[test]
fn caller_cancel_gets_487_and_leaves_no_participant() {
    let lk = LiveKitServer::start();
    let room = "teardown-cancel";
    let plan = format!(
        r#"rules:
  - name: ring
    match:
      called: "+15550100"
    room: {room}
    answer: on_first_track
    ringing_timeout: 60s
"#
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let ring_ms = 6000;
    let sipp = Sipp::spawn(
        Some(&uac_cancel(CALLER, ring_ms)),
        &call_args(&rl, "+15550100"),
    );
    let p = wait_participant(&lk, room, &sip_identity(CALLER));
    assert!(
        !sipp.messages_so_far().contains("CANCEL sip:"),
        "the participant joined after the scenario's {ring_ms} ms of ringing: the CANCEL \
         did not meet a joined participant"
    );
    assert_eq!(p["attributes"]["sip.callStatus"], "ringing", "{p}");
    let run = sipp.wait(Duration::from_secs(40));
    run.expect_success();
    assert_eq!(
        run.finals(),
        [200, 487],
        "200 to the CANCEL, 487 to the INVITE:\n{}",
        run.describe()
    );
    wait_room_empty_of(&lk, room, &sip_identity(CALLER));
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// The room is deleted under an active call (RoomService DeleteRoom): the daemon sends
/// BYE with a Reason saying so, and no participant is left.
#[test]
fn deleted_room_ends_the_call_with_bye_and_reason() {
    let lk = LiveKitServer::start();
    let room = "teardown-delete";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let sipp = Sipp::spawn(
        Some(&uac(CALLER, "[media_port]", "", End::AwaitBye)),
        &call_args(&rl, "+15550100"),
    );
    wait_answer(&sipp, Duration::from_secs(30));
    wait_participant(&lk, room, &sip_identity(CALLER));
    let (status, body) =
        roomline::room_service(&lk, "DeleteRoom", room, serde_json::json!({ "room": room }));
    assert_eq!(status, 200, "DeleteRoom: {body}");
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    assert_bye_reason(&run, "Q.850;cause=16;text=\"room closed\"");
    wait_room_empty_of(&lk, room, &sip_identity(CALLER));
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// The participant is removed (RoomService RemoveParticipant with its identity): the
/// daemon sends BYE with a Reason saying so, and the room is left without it.
#[test]
fn removed_participant_ends_the_call_with_bye_and_reason() {
    let lk = LiveKitServer::start();
    let room = "teardown-remove";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let sipp = Sipp::spawn(
        Some(&uac(CALLER, "[media_port]", "", End::AwaitBye)),
        &call_args(&rl, "+15550100"),
    );
    wait_answer(&sipp, Duration::from_secs(30));
    wait_participant(&lk, room, &sip_identity(CALLER));
    remove_participant(&lk, room, &sip_identity(CALLER));
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    assert_bye_reason(&run, "Q.850;cause=16;text=\"participant removed\"");
    wait_room_empty_of(&lk, room, &sip_identity(CALLER));
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// No RTP from the phone: with `media_timeout_initial: 3s` a call that never sends a
/// packet gets the daemon's BYE (Reason: media timeout); with `media_timeout: 2s` so does
/// a call whose RTP stops after a second of tone. The participant leaves both times.
#[test]
fn media_timeout_ends_the_call_with_bye() {
    let lk = LiveKitServer::start();
    let room = "teardown-media";
    let rl = Roomline::start(
        Setup::new(&lk)
            .dialplan("main", &one_room_plan("+15550100", room))
            .rtp_extra("  media_timeout: 2s\n  media_timeout_initial: 3s\n"),
    );
    let reason = "Q.850;cause=102;text=\"media timeout\"";
    // never a packet
    let run = roomline::sipp(
        Some(&uac(CALLER, "[media_port]", "", End::AwaitBye)),
        &call_args(&rl, "+15550100"),
        Duration::from_secs(40),
    );
    run.expect_success();
    assert_bye_reason(&run, reason);
    wait_room_empty_of(&lk, room, &sip_identity(CALLER));

    // a second of tone, then nothing
    let dir = tempfile::tempdir().unwrap();
    let tone = roomline::ulaw_tone_file(dir.path(), 1000, 3);
    let during = format!(
        r#"  <nop><action><exec rtp_stream="{},-1,0"/></action></nop>
  <pause milliseconds="1000"/>
  <nop><action><exec rtp_stream="pause"/></action></nop>"#,
        tone.display()
    );
    let caller = "+15551230002";
    let run = roomline::sipp(
        Some(&uac(caller, "[media_port]", &during, End::AwaitBye)),
        &call_args(&rl, "+15550100"),
        Duration::from_secs(40),
    );
    run.expect_success();
    assert_bye_reason(&run, reason);
    wait_room_empty_of(&lk, room, &sip_identity(caller));
    let timeouts: Vec<String> = rl
        .log()
        .lines()
        .filter(|l| l.contains("media timeout call_id"))
        .map(String::from)
        .collect();
    assert_eq!(timeouts.len(), 2, "{timeouts:?}");
    assert!(
        timeouts[0].contains("before_first_packet=true"),
        "{timeouts:?}"
    );
    assert!(
        timeouts[1].contains("before_first_packet=false"),
        "{timeouts:?}"
    );
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// LiveKit is unreachable when the call comes (the daemon's livekit url is a closed
/// port): the INVITE gets 503 with Retry-After, after ringing.
#[test]
fn unreachable_livekit_gets_503_with_retry_after() {
    let closed = roomline::free_port();
    let setup = Setup {
        livekit_url: format!("ws://127.0.0.1:{closed}"),
        api_key: common::livekit::DEV_API_KEY.into(),
        api_secret: common::livekit::DEV_API_SECRET.into(),
        trunks: vec![(
            "local".into(),
            "inbound:\n  allowed_addresses: [127.0.0.1/32]\n".into(),
        )],
        dialplans: Vec::new(),
        sip_extra: String::new(),
        rtp_extra: String::new(),
        livekit_extra: String::new(),
        limits: String::new(),
        log_level: "info,roomline=debug".into(),
        logging: String::new(),
        bind_ip: "127.0.0.1".into(),
        env: Vec::new(),
    }
    .dialplan("main", &one_room_plan("+15550100", "nowhere"));
    let rl = Roomline::start(setup);
    let run = roomline::sipp(
        Some(&uac_refused(CALLER, 503)),
        &call_args(&rl, "+15550100"),
        Duration::from_secs(40),
    );
    run.expect_success();
    assert_eq!(run.finals(), [503], "{}", run.describe());
    let resp = run.first_received("SIP/2.0 503");
    let retry: u32 = header(&resp, "Retry-After")
        .and_then(|v| {
            v.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("503 without a Retry-After seconds value:\n{resp}"));
    assert!(retry > 0, "{resp}");
    assert!(
        run.received_statuses().contains(&180),
        "it rang first: {}",
        run.describe()
    );
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// SIGTERM with `drain_timeout: 1s` while two calls are up: both get the daemon's BYE
/// (Reason: service shutting down) and answer it, both participants leave the room, and
/// the daemon exits 0. (The daemon is gone afterwards, so instead of `assert_no_leaks`
/// the test checks the exit status, the empty room and the log's last word.)
#[test]
fn shutdown_sends_bye_to_every_call_and_exits_0() {
    let lk = LiveKitServer::start();
    let room = "teardown-shutdown";
    let mut rl = Roomline::start(
        Setup::new(&lk)
            .dialplan("main", &one_room_plan("+15550100", room))
            .limits("  drain_timeout: 1s\n"),
    );
    let callers = ["+15551230001", "+15551230002"];
    let calls: Vec<Sipp> = callers
        .iter()
        .map(|c| {
            Sipp::spawn(
                Some(&uac(c, "[media_port]", "", End::AwaitBye)),
                &call_args(&rl, "+15550100"),
            )
        })
        .collect();
    for (c, s) in callers.iter().zip(&calls) {
        wait_answer(s, Duration::from_secs(30));
        wait_participant(&lk, room, &sip_identity(c));
    }
    assert_eq!(rl.counts()["active"], 2, "{}", rl.counts());
    rl.signal("TERM");
    for s in calls {
        let run = s.wait(Duration::from_secs(30));
        run.expect_success();
        assert_bye_reason(&run, "Q.850;cause=16;text=\"service shutting down\"");
    }
    assert_eq!(
        rl.wait_exit(Duration::from_secs(20)),
        Some(0),
        "exit status:\n{}",
        rl.log_tail(40)
    );
    for c in callers {
        wait_room_empty_of(&lk, room, &sip_identity(c));
    }
    let log = rl.log();
    assert!(
        log.lines().last().is_some_and(|l| l.contains("stopped")),
        "{}",
        rl.log_tail(20)
    );
    assert!(
        !log.contains("calls still active at exit"),
        "{}",
        rl.log_tail(40)
    );
}

/// In the room the call is a participant of kind SIP, identity `sip_<caller>` and name
/// `Phone <caller>` by default, with LiveKit's own SIP attributes: sip.callID (a call id
/// `SCL_...` of our own), sip.callIDFull (the INVITE's Call-ID), sip.callTag (its
/// From-tag), sip.trunkID, sip.ruleID, sip.phoneNumber (caller), sip.trunkPhoneNumber
/// (called), sip.hostname (the From host) and sip.callStatus, which is `active` while the call is
/// up (the server's view) and ends `hangup` (what a Python participant in the room sees
/// change, in call order).
#[test]
fn participant_is_kind_sip_with_the_sip_attributes() {
    let lk = LiveKitServer::start();
    let room = "attrs-room";
    let plan = format!(
        "rules:\n  - name: attrs\n    match:\n      called: \"+15550100\"\n    room: {room}\n"
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let identity = sip_identity(CALLER);
    let until = format!("{identity}:sip.callStatus=hangup");
    let observer = roompeer_bg(
        &lk,
        "session",
        &[
            "--room",
            room,
            "--identity",
            "observer",
            "--seconds",
            "40",
            "--until-attribute",
            &until,
        ],
    );
    wait_participant(&lk, room, "observer");
    let sipp = Sipp::spawn(
        Some(&uac(
            CALLER,
            "[media_port]",
            r#"  <pause milliseconds="3000"/>"#,
            End::Bye,
        )),
        &call_args(&rl, "+15550100"),
    );
    let ok = wait_answer(&sipp, Duration::from_secs(30));
    let call_id = header(&ok, "Call-ID").unwrap();
    let ps = roomline::wait_participants(&lk, room, Duration::from_secs(10), |ps| {
        ps.iter().any(|p| {
            p["identity"] == identity.as_str() && p["attributes"]["sip.callStatus"] == "active"
        })
    });
    let p = ps
        .iter()
        .find(|p| p["identity"] == identity.as_str())
        .unwrap();
    assert_eq!(p["kind"], "SIP", "{p}");
    assert_eq!(p["name"], format!("Phone {CALLER}").as_str(), "{p}");
    let lk_call_id = p["attributes"]["sip.callID"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        lk_call_id.len() == 16 && lk_call_id.starts_with("SCL_"),
        "sip.callID is a call id of our own: {p}"
    );
    let from_tag = header(&ok, "From")
        .and_then(|f| f.split("tag=").nth(1))
        .unwrap()
        .to_string();
    let want = serde_json::json!({
        "sip.callID": lk_call_id,
        "sip.callIDFull": call_id,
        "sip.callTag": from_tag,
        "sip.hostname": "127.0.0.1",
        "sip.trunkID": "local",
        "sip.ruleID": "attrs",
        "sip.phoneNumber": CALLER,
        "sip.trunkPhoneNumber": "+15550100",
        "sip.callStatus": "active",
    });
    assert_eq!(p["attributes"], want, "{p}");
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();

    let seen = observer.join().unwrap();
    let report = seen.expect_ok();
    assert_eq!(
        report["conditions_met"], true,
        "sip.callStatus never became hangup: {report}"
    );
    let me = &report["participants"][identity.as_str()];
    assert_eq!(me["kind"], "SIP", "{report}");
    assert_eq!(me["name"], format!("Phone {CALLER}").as_str(), "{report}");
    assert_eq!(me["attributes"]["sip.callIDFull"], call_id, "{report}");
    assert_eq!(
        me["attributes"]["sip.callID"],
        lk_call_id.as_str(),
        "{report}"
    );
    let statuses: Vec<&str> = report["attribute_changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["identity"] == identity.as_str())
        .filter_map(|c| c["changed"]["sip.callStatus"].as_str())
        .collect();
    // each observed status comes later in the call than the one before, and the last is
    // hangup (the join itself carried the first one)
    let order = ["ringing", "active", "hangup"];
    let ranks: Vec<usize> = statuses
        .iter()
        .map(|s| order.iter().position(|o| o == s).unwrap_or(99))
        .collect();
    assert!(
        ranks.windows(2).all(|w| w[0] < w[1]) && ranks.iter().all(|r| *r < 3),
        "sip.callStatus changes {statuses:?}: {report}"
    );
    assert_eq!(statuses.last(), Some(&"hangup"), "{report}");
    wait_room_empty_of(&lk, room, &identity);
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// The summary line of each call at LOG_LEVEL=info: "call ended" with the outcome and
/// the status for an answered call hung up by the caller, "request refused" with the
/// reason and status for a call no rule routes, and
/// phone numbers only in redacted form: neither the caller's full number nor the called
/// one appears anywhere in the log.
#[test]
fn call_summary_is_logged_at_info_without_full_numbers() {
    let lk = LiveKitServer::start();
    let room = "summary-room";
    let mut setup = Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room));
    setup.log_level = "info".into();
    let rl = Roomline::start(setup);
    let run = roomline::sipp(
        Some(&uac(
            CALLER,
            "[media_port]",
            r#"  <pause milliseconds="1000"/>"#,
            End::Bye,
        )),
        &call_args(&rl, "+15550100"),
        Duration::from_secs(30),
    );
    run.expect_success();
    let run = roomline::sipp(
        Some(&uac_refused(CALLER, 404)),
        &call_args(&rl, "+15550199"),
        Duration::from_secs(30),
    );
    run.expect_success();
    rl.assert_no_leaks(Duration::from_secs(10));
    let log = rl.log();
    let ended: Vec<&str> = log.lines().filter(|l| l.contains("call ended")).collect();
    assert_eq!(ended.len(), 1, "{log}");
    // the call no rule routes is refused by the endpoint: one "request refused" line
    let refused: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("request refused"))
        .collect();
    assert_eq!(refused.len(), 1, "{log}");
    for (line, words) in [
        (
            ended[0],
            &["outcome=caller_hangup", "status=200", "answered=true"][..],
        ),
        (
            refused[0],
            &["reason=no_route", "status=404", "count=1"][..],
        ),
    ] {
        assert!(line.contains(" INFO "), "{line}");
        for w in words {
            assert!(line.contains(w), "{w} missing in {line}");
        }
        assert!(
            line.contains("caller=+15*******00"),
            "the redacted caller in {line}"
        );
    }
    assert!(ended[0].contains("called=+15****00"), "{}", ended[0]);
    for full in [CALLER, "15551230000", "+15550100", "+15550199"] {
        assert!(!log.contains(full), "{full} in the info log:\n{log}");
    }
    assert!(
        !log.contains(" DEBUG "),
        "debug lines at LOG_LEVEL=info:\n{log}"
    );
}

/// Ten calls at once into ten rooms (sipp's rtp_stream, a different tone per call:
/// 500, 600, ... 1400 Hz), one Python listener per room: all ten are up together, each
/// listener hears its own call's frequency (within 2 %: no call leaks into another room)
/// in at least 90 % of the tone's frames (the same threshold as the single call: the
/// 2-core machine carries ten calls without losing frames, measured 500-506 of 500).
#[test]
fn ten_concurrent_calls_into_ten_rooms_all_carry_audio() {
    let _media = media_lock();
    let lk = LiveKitServer::start();
    let plan =
        "rules:\n  - name: ten\n    match:\n      called: \"+155502*\"\n    room: ten-{called}\n";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", plan));
    let n = 10;
    let tone_seconds = 5u32;
    let calls: Vec<(String, String, u32)> = (0..n)
        .map(|i| {
            (
                format!("+1555123100{i}"),
                format!("+1555020{i}"),
                500 + 100 * i as u32,
            )
        })
        .collect();
    let room_of = |called: &str| format!("ten-{called}");
    let listeners: Vec<JoinHandle<PeerRun>> = calls
        .iter()
        .map(|(caller, called, _)| {
            let room = room_of(called);
            let from = sip_identity(caller);
            roompeer_bg(
                &lk,
                "listen",
                &[
                    "--room",
                    &room,
                    "--identity",
                    "listener",
                    "--from-identity",
                    &from,
                    "--seconds",
                    "12",
                    "--wait-timeout",
                    "90",
                ],
            )
        })
        .collect();
    for (_, called, _) in &calls {
        roomline::wait_participants(&lk, &room_of(called), Duration::from_secs(90), |ps| {
            has_identity(ps, "listener")
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let sipps: Vec<Sipp> = calls
        .iter()
        .map(|(caller, called, hz)| {
            let tone = roomline::ulaw_tone_file(dir.path(), *hz, tone_seconds + 2);
            let during = format!(
                r#"  <pause milliseconds="1000"/>
  <nop><action><exec rtp_stream="{},-1,0"/></action></nop>
  <pause milliseconds="{}"/>
  <nop><action><exec rtp_stream="pause"/></action></nop>"#,
                tone.display(),
                tone_seconds * 1000
            );
            Sipp::spawn(
                Some(&uac(caller, "[media_port]", &during, End::AwaitBye)),
                &call_args(&rl, called),
            )
        })
        .collect();
    // all ten calls are up at the same time (nothing ends them until the test does)
    let deadline = Instant::now() + Duration::from_secs(60);
    while rl.counts()["participants"] != n {
        if Instant::now() >= deadline {
            // what each phone got: the call that did not make it, and why
            let phones: Vec<String> = calls
                .iter()
                .zip(&sipps)
                .map(|((caller, called, _), s)| {
                    let got: Vec<String> = s
                        .received_so_far()
                        .iter()
                        .map(|m| m.lines().next().unwrap_or("").to_string())
                        .collect();
                    let stderr =
                        std::fs::read_to_string(s.dir().join("stderr")).unwrap_or_default();
                    let said = stderr.lines().last().unwrap_or("");
                    format!("{caller} -> {called}: received {got:?}; sipp stderr: {said}")
                })
                .collect();
            panic!(
                "not all {n} calls joined: {}\n{}",
                rl.counts(),
                phones.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(rl.counts()["active"], n, "{}", rl.counts());
    let reports: Vec<PeerRun> = listeners.into_iter().map(|l| l.join().unwrap()).collect();
    for (caller, called, _) in &calls {
        remove_participant(&lk, &room_of(called), &sip_identity(caller));
    }
    for s in sipps {
        s.wait(Duration::from_secs(30)).expect_success();
    }
    let expected = f64::from(tone_seconds) * 100.0;
    let mut summary = Vec::new();
    for ((_, called, hz), heard) in calls.iter().zip(&reports) {
        let report = heard.expect_ok();
        let got = heard.f64("dominant_hz");
        let frames = heard.f64("frames_nonsilent");
        summary.push(format!(
            "{called}: {hz} Hz -> {got:.1} Hz, {frames}/{expected} frames"
        ));
        assert!(
            within(got, f64::from(*hz), 0.02),
            "{called} heard {got} Hz, not {hz}: {report}"
        );
        // How much of the tone the room hears moves with the machine's load, not with
        // correctness: sipp's pause is only the tone's minimum length, and a call task
        // starved of CPU conceals while it waits and skips ahead after (10 calls on a
        // loaded 2-core machine heard 86-113 % of it). Only gross loss (a call that
        // carries audio for a fraction of the time) or duplication (every frame twice)
        // fails.
        assert!(
            frames >= 0.7 * expected,
            "{called}: {frames} of {expected} tone frames: {report}"
        );
        assert!(
            frames <= 1.3 * expected,
            "{called}: {frames} frames for {expected}: {report}"
        );
    }
    eprintln!("{}", summary.join("\n"));
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// The phone's side of a transfer it carries out: the daemon's REFER arrives in the
/// dialog, the phone accepts it (202) and reports `SIP/2.0 100 Trying` then `final_frag`
/// in NOTIFYs (message/sipfrag, Event: refer).
fn phone_transfer_steps(final_frag: &str) -> String {
    let notify = |cseq: u32, state: &str, frag: &str| {
        format!(
            r#"  <send retrans="500">
    <![CDATA[
      NOTIFY sip:roomline@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} NOTIFY
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Event: refer
      Subscription-State: {state}
      Max-Forwards: 70
      Content-Type: message/sipfrag;version=2.0
      Content-Length: [len]

      {frag}
    ]]>
  </send>
  <recv response="200"/>
"#
        )
    };
    format!(
        r#"  <recv request="REFER" timeout="40000"/>
  <send>
    <![CDATA[
      SIP/2.0 202 Accepted
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0
    ]]>
  </send>
{}{}"#,
        notify(2, "active;expires=60", "SIP/2.0 100 Trying"),
        notify(
            3,
            "terminated;reason=noresource",
            &format!("SIP/2.0 {final_frag}")
        ),
    )
}

fn transfer_api(
    rl: &Roomline,
    lk: &LiveKitServer,
    room: &str,
    to: &str,
) -> (u16, serde_json::Value) {
    use livekit_api::access_token::{AccessToken, SIPGrants};
    use std::io::{Read, Write};
    let token = AccessToken::with_api_key(lk.api_key(), lk.api_secret())
        .with_identity("test-api")
        .with_ttl(Duration::from_secs(60))
        .with_sip_grants(SIPGrants {
            admin: false,
            call: true,
        })
        .to_jwt()
        .unwrap();
    let body = serde_json::json!({
        "participant_identity": sip_identity(CALLER),
        "room_name": room,
        "transfer_to": to,
    })
    .to_string();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", rl.http_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /twirp/livekit.SIP/TransferSIPParticipant HTTP/1.1\r\nHost: 127.0.0.1\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let json = resp
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

/// TransferSIPParticipant on an inbound call: the phone gets REFER with the target in
/// Refer-To, accepts and reports success by NOTIFY; the API answers success and the
/// daemon then ends its leg with a BYE whose Reason says so.
#[test]
fn inbound_call_is_transferred_by_refer() {
    let lk = LiveKitServer::start();
    let room = "inbound-transfer";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let rtp = RtpPeer::bind();
    let sipp = Sipp::spawn(
        Some(&uac(
            CALLER,
            &rtp.port().to_string(),
            &phone_transfer_steps("200 OK"),
            End::AwaitBye,
        )),
        &call_args(&rl, "+15550100"),
    );
    wait_answer(&sipp, Duration::from_secs(30));
    roomline::wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| {
            p["identity"] == sip_identity(CALLER).as_str()
                && p["attributes"]["sip.callStatus"] == "active"
        })
    });
    let (status, json) = transfer_api(&rl, &lk, room, "sip:agent@127.0.0.1:5999");
    assert_eq!(status, 200, "{json}");
    let run = sipp.wait(Duration::from_secs(60));
    run.expect_success();
    let refer = run.first_received("REFER ");
    assert!(
        header(&refer, "Refer-To").is_some_and(|v| v.contains("sip:agent@127.0.0.1:5999")),
        "{refer}"
    );
    assert_bye_reason(&run, "Q.850;cause=16;text=\"call transferred\"");
    rl.assert_no_leaks(Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------
// Session timers (RFC 4028) with a carrier that requires them
// ---------------------------------------------------------------------------------------

/// A request the caller (sipp, the UAC) sends in its dialog: `extra` headers, an SDP
/// offer at `sdp_port` if given.
fn uac_request(method: &str, cseq: u32, extra: &str, sdp_port: Option<&str>) -> String {
    let body = match sdp_port {
        Some(port) => format!(
            "Content-Type: application/sdp\n      Content-Length: [len]\n\n      v=0\n      \
             o=user1 53655765 2353687638 IN IP[local_ip_type] [local_ip]\n      s=-\n      \
             c=IN IP[media_ip_type] [media_ip]\n      t=0 0\n      m=audio {port} RTP/AVP 0 101\n      \
             a=rtpmap:0 PCMU/8000\n      a=rtpmap:101 telephone-event/8000\n      a=ptime:20"
        ),
        None => "Content-Length: 0".into(),
    };
    format!(
        r#"  <send retrans="500">
    <![CDATA[
      {method} sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
{extra}      {body}
    ]]>
  </send>"#
    )
}

/// A 2xx sipp receives must carry `value` in `header` (else the run fails).
fn recv_200_with(header: &str, value: &str, var: &str) -> String {
    format!(
        r#"  <recv response="200">
    <action>
      <ereg regexp="{value}" search_in="hdr" header="{header}:" check_it="true" assign_to="{var}"/>
    </action>
  </recv>"#
    )
}

/// A carrier that requires session timers calls in (RFC 4028: `Require: timer`,
/// `Session-Expires: 90;refresher=uac`, it refreshes): the 200 grants 90 s with the
/// carrier as refresher (`Require: timer`); the carrier refreshes twice, by UPDATE and by
/// re-INVITE, each answered with the interval; the call outlives both and the phone's
/// 1 kHz is still heard in the room after them; then the carrier stops refreshing and,
/// 60 s after its last refresh (90 s minus a third), the daemon ends the call with BYE
/// (Reason: session timer expired); the participant leaves and nothing is left behind.
/// About 90 s long: it runs alongside the other tests of this file.
#[test]
fn session_timer_refreshed_by_the_carrier_then_expired_ends_with_bye() {
    let lk = LiveKitServer::start();
    let room = "inbound-session-timer";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &one_room_plan("+15550100", room)));
    let sipp_dir = tempfile::tempdir().unwrap();
    let tone = roomline::ulaw_tone_file(sipp_dir.path(), 1000, 4);
    let timer = "      Supported: timer\n      Require: timer\n      Session-Expires: 90;refresher=uac\n      Min-SE: 90\n";
    let ack = |cseq: u32| {
        format!(
            r#"  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>"#
        )
    };
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac-session-timer">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200">
    <action>
      <ereg regexp="90;refresher=uac" search_in="hdr" header="Session-Expires:" check_it="true" assign_to="se0"/>
      <ereg regexp="timer" search_in="hdr" header="Require:" check_it="true" assign_to="req0"/>
    </action>
  </recv>
{ack1}
  <nop><action><exec rtp_stream="{tone},-1,0"/></action></nop>
  <pause milliseconds="10000"/>
{update}
{ok_update}
  <pause milliseconds="10000"/>
{reinvite}
{ok_reinvite}
{ack3}
  <recv request="BYE" timeout="90000">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Reason:" assign_to="reason"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
  <nop hide="true"><action><log message="[$se0] [$req0] [$se2] [$se3] [$reason]"/></action></nop>
</scenario>
"#,
        invite = common::uac::invite_with(CALLER, "[media_port]", timer),
        tone = tone.display(),
        ack1 = ack(1),
        update = uac_request("UPDATE", 2, timer, None),
        ok_update = recv_200_with("Session-Expires", "90;refresher=uac", "se2"),
        reinvite = uac_request("INVITE", 3, timer, Some("[media_port]")),
        ok_reinvite = recv_200_with("Session-Expires", "90;refresher=uac", "se3"),
        ack3 = ack(3),
    );
    // sipp's limit for the whole run, 60 s in `sipp_args`, is too short for this call
    let mut args = call_args(&rl, "+15550100");
    if let Some(i) = args.iter().position(|a| a == "-timeout") {
        args[i + 1] = "150s".into();
    }
    let sipp = Sipp::spawn(Some(&xml), &args);
    wait_answer(&sipp, Duration::from_secs(30));
    wait_participant(&lk, room, &sip_identity(CALLER));
    // the second refresh (the re-INVITE) is answered
    let deadline = Instant::now() + Duration::from_secs(60);
    let refreshed_at = loop {
        let done = sipp
            .received_so_far()
            .iter()
            .any(|m| m.starts_with("SIP/2.0 200") && header(m, "CSeq") == Some("3 INVITE"));
        if done {
            break Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "no 200 to the refresh re-INVITE:\n{}",
            sipp.messages_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    // after both refreshes the phone is still heard in the room
    let identity = sip_identity(CALLER);
    let heard = run_roompeer(
        {
            let mut args = vec!["listen".to_string()];
            args.extend(lk.peer_args());
            args.extend(
                [
                    "--room",
                    room,
                    "--identity",
                    "listener",
                    "--seconds",
                    "6",
                    "--from-identity",
                    &identity,
                    "--wait-timeout",
                    "20",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            args
        },
        Duration::from_secs(60),
    );
    let report = heard.expect_ok();
    let hz = heard.f64("dominant_hz");
    assert!(
        within(hz, 1000.0, 0.02),
        "after two refreshes the room heard {hz} Hz: {report}"
    );
    assert!(heard.f64("frames_nonsilent") >= 400.0, "{report}");
    // then no refresh: the daemon's BYE, no sooner than the session's end allows
    let run = sipp.wait(Duration::from_secs(120));
    let bye_seen = Instant::now();
    run.expect_success();
    assert_bye_reason(&run, "Q.850;cause=102;text=\"session timer expired\"");
    let waited = bye_seen.duration_since(refreshed_at);
    assert!(
        waited >= Duration::from_secs(55),
        "BYE {waited:?} after the last refresh; the session had 90 s (BYE due after 60 s)"
    );
    wait_room_empty_of(&lk, room, &identity);
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// A carrier sends hostile headers: a 4000-byte X-Twilio-CallSid, 150 X- headers, an
/// empty one, a header with a bare control character. The call is answered as usual; in
/// the room the oversized value is dropped (no `sip.twilio.callSid`), at most 64
/// `sip.h.*` attributes are taken, every value is at most 1024 bytes, and the trunk's
/// mapped header still arrives.
#[test]
fn hostile_carrier_headers_give_bounded_attributes() {
    let lk = LiveKitServer::start();
    let room = "hostile-headers";
    let plan = format!(
        "rules:\n  - name: hostile\n    match:\n      called: \"+15550100\"\n    room: {room}\n"
    );
    let trunk = "inbound:\n  allowed_addresses: [127.0.0.1/32]\n  include_headers: all\n  \
                 headers_to_attributes:\n    X-Customer-Tier: customer.tier\n";
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk("local", trunk)
            .dialplan("main", &plan),
    );
    let mut extra = vec![
        format!("X-Twilio-CallSid: {}", "A".repeat(4000)),
        "X-Customer-Tier: gold".to_string(),
        "X-Empty:".to_string(),
        "X-Bell: a\u{7}b".to_string(),
    ];
    extra.extend((0..150).map(|i| format!("X-Pad-{i}: value-{i}")));
    let hdrs = extra.join("\n      ");
    let xml = uac(
        CALLER,
        "[media_port]",
        r#"  <pause milliseconds="2000"/>"#,
        End::Bye,
    )
    .replacen(
        "Max-Forwards: 70\n",
        &format!("Max-Forwards: 70\n      {hdrs}\n"),
        1,
    );
    assert!(xml.contains("X-Pad-149"), "headers not inserted:\n{xml}");
    let sipp = Sipp::spawn(Some(&xml), &call_args(&rl, "+15550100"));
    wait_answer(&sipp, Duration::from_secs(30));
    let identity = sip_identity(CALLER);
    let p = wait_participant(&lk, room, &identity);
    let attrs = p["attributes"].as_object().unwrap();
    assert_eq!(
        attrs.get("customer.tier").and_then(|v| v.as_str()),
        Some("gold")
    );
    assert!(!attrs.contains_key("sip.twilio.callSid"), "{p}");
    assert!(!attrs.contains_key("sip.h.x-twilio-callsid"), "{p}");
    assert!(!attrs.contains_key("sip.h.x-bell"), "{p}");
    let included = attrs.keys().filter(|k| k.starts_with("sip.h.")).count();
    assert_eq!(included, 64, "{p}");
    assert!(
        attrs
            .values()
            .all(|v| v.as_str().is_some_and(|s| s.len() <= 1024)),
        "{p}"
    );
    sipp.wait(Duration::from_secs(30)).expect_success();
    wait_room_empty_of(&lk, room, &identity);
    rl.assert_no_leaks(Duration::from_secs(10));
}
