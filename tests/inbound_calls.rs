//! Inbound calls end to end: real livekit-server, the real `roomline run` daemon, sipp as
//! the phone (and a test RTP socket where a test must see exactly what the daemon
//! sends), the LiveKit Python SDK in the room. What is asserted is what a user observes:
//! SIP statuses on the wire, tone frequencies on the other side, participants and their
//! attributes in the room, and that no call, port or participant is left behind.

mod common;

use std::time::Duration;

use common::livekit::LiveKitServer;
use common::roomline::{self, Roomline, Setup, Sipp, sipp_args};
use common::run_roompeer;

const CALLER: &str = "+15551230000";

fn within(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= want * rel
}

/// A UAC: INVITE (PCMU + telephone-event), ACK, then the given actions, then BYE.
/// `[service]` is the called number (sipp `-s`).
fn uac_scenario(sdp_port: &str, during_call: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac">
  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio {sdp_port} RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
{during_call}
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
  <recv response="200" crlf="true"/>
</scenario>
"#
    )
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
                "--room", room, "--identity", "listener", "--seconds", "20",
                "--from-identity", &identity, "--wait-timeout", "40",
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
    args.extend(["-s".into(), "+15550100".into(), "-mi".into(), "127.0.0.1".into()]);
    args.extend(["-mp".into(), roomline::free_port().to_string()]);
    let run = Sipp::spawn(Some(&uac_scenario("[media_port]", &during)), &args)
        .wait(Duration::from_secs(60));
    run.expect_success();
    assert_eq!(
        run.received_statuses().iter().filter(|s| **s >= 200).copied().collect::<Vec<_>>(),
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
