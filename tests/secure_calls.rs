//! Secure trunks from the wire: SRTP (SDES) on the phone leg with TLS signalling, against a
//! real SRTP implementation (pjsip's, PyPI `pjsua2-python`, tests/peers/phone.py, with
//! SRTP mandatory) as the phone calling in and as the carrier called out, audio both ways
//! checked by frequency in each suite pjsua2 has; the `media_encryption` policy matrix
//! with sipp offers (plain, SRTP, broken or missing `a=crypto`, unknown suite, short key);
//! the API's `require` through LiveKit's Python SDK; a renewed certificate served while an
//! SRTP call over TLS keeps its audio.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::pki::Pki;
use common::roomline::{
    self, Roomline, Setup, free_port, roompeer_bg, sipp_args, wait_participants,
};
use common::uac::{non_2xx_ack, uac_answered_then_bye};
use common::{PeerRun, run_roompeer, within};

const CALLER: &str = "+15551230000";

/// Audio tests take the CPU they measure with; one at a time.
static MEDIA: Mutex<()> = Mutex::new(());

fn media_lock() -> MutexGuard<'static, ()> {
    MEDIA.lock().unwrap_or_else(|e| e.into_inner())
}

/// The SDES suites pjsua2 (PyPI pjsua2-python 2.15.1) speaks with us. Its libsrtp is
/// built without AES-GCM: it refuses `AEAD_AES_128_GCM` itself, so GCM end to end is
/// tested with our own SRTP context as the phone's
/// (`aead_aes_128_gcm_end_to_end_against_our_own_srtp_context`).
const SUITES: [&str; 2] = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"];

/// A room listener recording `from_identity` and a publisher of `room_hz`, both in the
/// room before the call.
fn room_side(
    lk: &LiveKitServer,
    room: &str,
    from_identity: &str,
    room_hz: u32,
    seconds: u32,
) -> (JoinHandle<PeerRun>, JoinHandle<PeerRun>) {
    let listener = roompeer_bg(
        lk,
        "listen",
        &[
            "--room",
            room,
            "--identity",
            "listener",
            "--seconds",
            &(seconds + 20).to_string(),
            "--from-identity",
            from_identity,
            "--wait-timeout",
            "60",
        ],
    );
    let publisher = roompeer_bg(
        lk,
        "publish-tone",
        &[
            "--room",
            room,
            "--identity",
            "agent",
            "--freq",
            &room_hz.to_string(),
            "--seconds",
            &seconds.to_string(),
            "--frame-ms",
            "20",
            "--wait-timeout",
            "60",
        ],
    );
    wait_participants(lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "listener")
            && ps.iter().any(|p| p["identity"] == "agent")
    });
    (listener, publisher)
}

/// The phone heard `room_hz` (its recording), the room heard `phone_hz`, for at least
/// `min_s` seconds each.
fn assert_audio_both_ways(
    what: &str,
    heard: &Path,
    listener: JoinHandle<PeerRun>,
    phone_hz: u32,
    room_hz: u32,
    min_s: f64,
) {
    let analysis = run_roompeer(
        ["analyze-wav".to_string(), heard.display().to_string()],
        Duration::from_secs(60),
    );
    let a = analysis.expect_ok().clone();
    let hz = analysis.f64("dominant_hz");
    assert!(
        within(hz, f64::from(room_hz), 0.02),
        "{what}: the phone heard {hz} Hz: {a}"
    );
    assert!(
        analysis.f64("nonsilent_seconds") >= min_s,
        "{what}: the phone heard too little of the room's tone: {a}"
    );
    let room = listener.join().unwrap();
    let r = room.expect_ok().clone();
    let hz = room.f64("dominant_hz");
    assert!(
        within(hz, f64::from(phone_hz), 0.02),
        "{what}: the room heard {hz} Hz: {r}"
    );
    assert!(
        room.f64("frames_nonsilent") >= min_s * 50.0,
        "{what}: too little of the phone's tone reached the room: {r}"
    );
}

/// The daemon's summary line of the `nth` call (from 0) to `called`.
fn summary_line(rl: &Roomline, called: &str, nth: usize) -> String {
    let needle = format!("called={called}");
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(l) = rl
            .log()
            .lines()
            .filter(|l| l.contains("call ended") && l.contains(&needle))
            .nth(nth)
        {
            return l.to_string();
        }
        assert!(
            Instant::now() < until,
            "no summary line for {called}:\n{}",
            rl.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The daemon's TLS listener lines, its certificate and key from `pki` for 127.0.0.1.
fn tls_listener(pki: &Pki, name: &str, port: u16) -> String {
    let (cert, key) = pki.leaf(name, "localhost", "DNS:localhost,IP:127.0.0.1");
    format!(
        "    - transport: tls\n      address: 127.0.0.1:{port}\n      cert: {}\n      key: {}\n",
        cert.display(),
        key.display()
    )
}

fn phone_args(base: &[&str], extra: &[String]) -> Vec<String> {
    let mut v: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    v.extend(extra.iter().cloned());
    v
}

/// No `inline:` key of these SDPs is anywhere in the daemon's log.
fn assert_no_key_in_log(rl: &Roomline, sdps: &[&str]) {
    let log = rl.log();
    for sdp in sdps {
        for line in sdp.lines().filter(|l| l.starts_with("a=crypto:")) {
            let key = line
                .split("inline:")
                .nth(1)
                .and_then(|k| k.split(['|', ' ']).next())
                .unwrap_or("");
            assert!(
                key.len() > 20 && !log.contains(key),
                "an SRTP key reached the log: {line}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// A real SRTP phone calling in, over TLS
// ---------------------------------------------------------------------------------------

/// pjsua2 with SRTP mandatory calls over TLS (verifying the daemon's certificate) into a
/// trunk that requires SRTP, once per suite; 1 kHz from the phone reaches the room and
/// 440 Hz from the room reaches the phone; the summary line names the suite, and the key
/// is in no log line (the daemon logs at debug).
#[test]
fn pjsua2_calls_in_over_tls_with_srtp_in_each_suite() {
    let _media = media_lock();
    let lk = LiveKitServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "rl");
    let port = free_port();
    let mut plan = String::from("rules:\n");
    for (i, _) in SUITES.iter().enumerate() {
        plan += &format!(
            "  - name: s{i}\n    match:\n      called: \"+1555010{i}\"\n    room: srtp-in-{i}\n"
        );
    }
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk(
                "local",
                "inbound:\n  allowed_addresses: [127.0.0.1/32]\nmedia_encryption: require\n",
            )
            .dialplan("main", &plan)
            .sip_extra(&tls_listener(&pki, "served", port)),
    );
    let play = common::tone_wav(dir.path(), 1000, 8000, 14);
    for (i, suite) in SUITES.iter().enumerate() {
        let room = format!("srtp-in-{i}");
        let called = format!("+1555010{i}");
        let heard = dir.path().join(format!("heard-{i}.wav"));
        // the first call rekeys mid-call: pjsua's re-INVITE carries new keys
        let rekey = i == 0;
        let (listener, publisher) = room_side(&lk, &room, &format!("sip_{CALLER}"), 440, 10);
        let run = common::run_phone(
            phone_args(
                &[
                    "call",
                    &format!("sip:{called}@127.0.0.1:{port};transport=tls"),
                    "--codec",
                    "PCMU",
                    "--from-user",
                    CALLER,
                    "--seconds",
                    "6",
                    "--transport",
                    "tls",
                    "--srtp",
                    "mandatory",
                    "--srtp-suite",
                    suite,
                ],
                &[
                    "--ca".into(),
                    pki.ca_cert.display().to_string(),
                    "--play".into(),
                    play.display().to_string(),
                    "--record".into(),
                    heard.display().to_string(),
                    "--reinvite-after".into(),
                    if rekey { "2.5" } else { "0" }.into(),
                ],
            ),
            Duration::from_secs(60),
        );
        let report = run.expect_ok().clone();
        let reoffer = report["reinvite_sdp"].as_str().unwrap_or("").to_string();
        if rekey {
            let key = |sdp: &str| {
                sdp.split("inline:")
                    .nth(1)
                    .map(|k| k.chars().take(40).collect::<String>())
            };
            assert!(
                key(&reoffer).is_some()
                    && key(&reoffer) != key(report["local_sdp"].as_str().unwrap_or("")),
                "the re-INVITE carries a new key: {reoffer}"
            );
            rl.wait_log("SRTP rekeyed", Duration::from_secs(5));
        }
        let offer = report["local_sdp"].as_str().unwrap_or("").to_string();
        assert!(
            offer.contains("RTP/SAVP") && offer.contains(&format!("a=crypto:1 {suite} ")),
            "{suite}: the phone offered SRTP with {suite}: {offer}"
        );
        assert_audio_both_ways(suite, &heard, listener, 1000, 440, 4.0);
        let _ = publisher.join();
        let line = summary_line(&rl, &called, 0);
        assert!(line.contains(&format!("srtp=\"{suite}\"")), "{line}");
        assert!(line.contains("srtp_failed=0"), "{line}");
        assert_no_key_in_log(&rl, &[&offer, &reoffer]);
    }
    let m = rl
        .metric("roomline_calls_media_encryption_total{direction=\"inbound\",encryption=\"AES_CM_128_HMAC_SHA1_80\"}")
        .unwrap_or(0.0);
    assert_eq!(m, 1.0, "one inbound call per suite in the metric");
    rl.assert_no_leaks(Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------
// A real SRTP carrier called out, over TLS, through the API
// ---------------------------------------------------------------------------------------

/// Waits until something accepts TCP connections on 127.0.0.1:`port`.
fn wait_tcp(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on TCP {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CreateSIPParticipant through LiveKit's Python SDK (tests/peers/sipclient.py).
fn create_participant(rl: &Roomline, lk: &LiveKitServer, req: &serde_json::Value) -> PeerRun {
    let script = common::repo_root().join("tests/peers/sipclient.py");
    let args: Vec<String> = vec![
        "create".into(),
        "--url".into(),
        format!("http://127.0.0.1:{}", rl.http_port),
        "--request".into(),
        req.to_string(),
        "--api-key".into(),
        lk.api_key().into(),
        "--api-secret".into(),
        lk.api_secret().into(),
    ];
    common::run_peer(
        &common::python(),
        &[script.as_os_str()],
        &args,
        Duration::from_secs(90),
    )
}

/// The API asks for `require` on a trunk whose own policy is `disable`: the call offers
/// only RTP/SAVP, to pjsua2 answering over TLS (its certificate checked against the
/// trunk's `ca_file` for 127.0.0.1) with SRTP mandatory; audio both ways in each suite
/// (the carrier picks the suite from our offer).
#[test]
fn api_require_calls_a_pjsua2_carrier_over_tls_with_srtp_in_each_suite() {
    let _media = media_lock();
    let lk = LiveKitServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "carrier");
    let (cert, key) = pki.leaf("carrier", "carrier", "IP:127.0.0.1");
    let port = free_port();
    let rl = Roomline::start(Setup::new(&lk).trunk(
        "carrier",
        &format!(
            "outbound:\n  address: sips:127.0.0.1:{port}\n  ca_file: {}\nmedia_encryption: disable\n",
            pki.ca_cert.display()
        ),
    ));
    let play = common::tone_wav(dir.path(), 1000, 8000, 14);
    for (i, suite) in SUITES.iter().enumerate() {
        let room = format!("srtp-out-{i}");
        let heard = dir.path().join(format!("carrier-heard-{i}.wav"));
        let (listener, publisher) = room_side(&lk, &room, "carrier-phone", 440, 10);
        let args = phone_args(
            &[
                "answer",
                "--codec",
                "PCMU",
                "--seconds",
                "6",
                "--transport",
                "tls",
                "--srtp",
                "mandatory",
                "--srtp-suite",
                suite,
            ],
            &[
                "--local-port".into(),
                port.to_string(),
                "--cert".into(),
                cert.display().to_string(),
                "--key".into(),
                key.display().to_string(),
                "--play".into(),
                play.display().to_string(),
                "--record".into(),
                heard.display().to_string(),
            ],
        );
        let phone = std::thread::spawn(move || common::run_phone(args, Duration::from_secs(60)));
        wait_tcp(port);
        let created = create_participant(
            &rl,
            &lk,
            &serde_json::json!({
                "sip_trunk_id": "carrier",
                "sip_call_to": "+15557770000",
                "room_name": room,
                "participant_identity": "carrier-phone",
                "wait_until_answered": true,
                "media_encryption": "SIP_MEDIA_ENCRYPT_REQUIRE",
            }),
        );
        assert!(created.is_ok(), "{suite}: {}", created.describe());
        let run = phone.join().unwrap();
        let report = run.expect_ok().clone();
        let invite = report["invite"].as_str().unwrap_or("").to_string();
        assert!(
            invite.contains("m=audio")
                && invite.contains("RTP/SAVP")
                && !invite.contains("RTP/AVP "),
            "{suite}: only SRTP offered: {invite}"
        );
        for s in [
            "AES_CM_128_HMAC_SHA1_80",
            "AEAD_AES_128_GCM",
            "AES_CM_128_HMAC_SHA1_32",
        ] {
            assert!(invite.contains(s), "{suite}: we offer {s}: {invite}");
        }
        assert_audio_both_ways(suite, &heard, listener, 1000, 440, 4.0);
        let _ = publisher.join();
        let line = summary_line(&rl, "+15557770000", i);
        assert!(line.contains(&format!("srtp=\"{suite}\"")), "{line}");
        assert!(line.contains("direction=\"outbound\""), "{line}");
        assert_no_key_in_log(&rl, &[&invite]);
    }
    rl.assert_no_leaks(Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------
// The policy matrix on the wire (sipp offers)
// ---------------------------------------------------------------------------------------

/// A 30-octet key||salt (AES_CM_128 suites) in base64.
const KEY30: &str = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw";

/// A sipp scenario of `common::uac` with its offer turned into `proto` with these
/// `a=crypto` values.
fn with_offer(scenario: &str, proto: &str, crypto: &[&str]) -> String {
    let lines: String = crypto
        .iter()
        .map(|c| format!("      a=crypto:{c}\n"))
        .collect();
    scenario
        .replace(
            "m=audio [media_port] RTP/AVP 0 101",
            &format!("m=audio [media_port] {proto} 0 101"),
        )
        .replace(
            "      a=fmtp:101 0-15\n",
            &format!("      a=fmtp:101 0-15\n{lines}"),
        )
}

/// A UAC whose INVITE is refused with 488 (after optional 100/180), then ACKs.
fn refused_488(proto: &str, crypto: &[&str]) -> String {
    let invite = with_offer(&common::uac::invite(CALLER, "[media_port]"), proto, crypto);
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac-488">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="488"/>
{ack}
</scenario>
"#,
        ack = non_2xx_ack(CALLER, 4)
    )
}

fn call_args(rl: &Roomline, called: &str) -> Vec<String> {
    let mut args = sipp_args(&rl.sip_addr(), false);
    args.extend(["-s".into(), called.into(), "-mi".into(), "127.0.0.1".into()]);
    args.extend(["-mp".into(), roomline::free_media_port().to_string()]);
    args
}

/// `media_encryption` on the wire, one trunk per policy (told apart by the number
/// called): a plain offer to `require` and an SRTP offer to `disable` get 488 with a
/// Warning that says why; `allow` takes either (SRTP answered with RTP/SAVP and our own
/// key under the offer's tag); a missing or broken `a=crypto`, an unknown suite and a key
/// of the wrong length get 488 with a Warning naming the problem and never the key.
/// Nothing is left behind, and no offered key reaches the log.
#[test]
fn the_media_encryption_policy_matrix_on_the_wire() {
    let lk = LiveKitServer::start();
    let trunk = |number: &str, policy: &str| {
        format!(
            "inbound:\n  numbers: [\"{number}\"]\n  allowed_addresses: [127.0.0.1/32]\nmedia_encryption: {policy}\n"
        )
    };
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk("local", &trunk("+15550201", "disable"))
            .trunk("allowing", &trunk("+15550202", "allow"))
            .trunk("requiring", &trunk("+15550203", "require"))
            .dialplan(
                "main",
                "rules:\n  - name: all\n    match: {}\n    room: srtp-policy\n",
            ),
    );
    let good = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY30}");
    let refused = |called: &str, proto: &str, crypto: &[&str], why: &str| {
        let run = roomline::sipp(
            Some(&refused_488(proto, crypto)),
            &call_args(&rl, called),
            Duration::from_secs(30),
        );
        run.expect_success();
        let resp = run.first_received("SIP/2.0 488");
        let warning = roomline::header(&resp, "Warning").unwrap_or("");
        assert!(
            warning.starts_with("305 ") || warning.starts_with("306 "),
            "{called} {proto} {crypto:?}: {resp}"
        );
        assert!(
            warning.contains(why),
            "{called} {proto} {crypto:?}: the Warning says {why:?}: {warning}"
        );
        assert!(!warning.contains(KEY30), "no key in a Warning: {warning}");
    };
    // plain to require, SRTP to disable
    refused("+15550203", "RTP/AVP", &[], "requires SRTP");
    refused(
        "+15550201",
        "RTP/SAVP",
        &[&good],
        "media_encryption is disable",
    );
    // what a broken SRTP offer gets
    refused("+15550203", "RTP/SAVP", &[], "without a=crypto");
    refused(
        "+15550203",
        "RTP/SAVP",
        &["1 AES_CM_128_HMAC_SHA1_80 inline"],
        "malformed",
    );
    refused(
        "+15550203",
        "RTP/SAVP",
        &[&format!("1 F8_128_HMAC_SHA1_80 inline:{KEY30}")],
        "no supported crypto suite",
    );
    refused(
        "+15550202",
        "RTP/SAVP",
        &["1 AES_CM_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OQ=="],
        "expected 30",
    );
    // allow takes either
    let answered = |proto: &str, crypto: &[&str]| {
        let scenario = with_offer(&uac_answered_then_bye(CALLER, 1000), proto, crypto);
        let run = roomline::sipp(
            Some(&scenario),
            &call_args(&rl, "+15550202"),
            Duration::from_secs(40),
        );
        run.expect_success();
        run.first_received("SIP/2.0 200")
    };
    let plain = answered("RTP/AVP", &[]);
    assert!(
        plain.contains("RTP/AVP") && !plain.contains("a=crypto"),
        "{plain}"
    );
    let srtp = answered("RTP/SAVP", &[&good]);
    assert!(srtp.contains("RTP/SAVP"), "{srtp}");
    let crypto = srtp
        .lines()
        .find(|l| l.starts_with("a=crypto:"))
        .unwrap_or_else(|| panic!("no a=crypto in the answer: {srtp}"));
    assert!(
        crypto.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:") && !crypto.contains(KEY30),
        "our own key under the offer's tag: {crypto}"
    );
    let log = rl.log();
    assert!(!log.contains(KEY30), "an offered key reached the log");
    let ours = crypto.split("inline:").nth(1).unwrap_or("").trim();
    assert!(!log.contains(ours), "our key reached the log");
    rl.assert_no_leaks(Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------
// Certificate renewal under a running SRTP call
// ---------------------------------------------------------------------------------------

/// A renewed certificate is served after SIGHUP while a call set up over TLS + SRTP
/// before it keeps its audio both ways: pjsua2's call runs 9 s with the reload in its
/// first seconds, and both sides hear the other's tone for most of it.
#[test]
fn a_renewed_certificate_is_served_while_an_srtp_call_over_tls_keeps_its_audio() {
    let _media = media_lock();
    let lk = LiveKitServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "rl");
    let (old_cert, old_key) = pki.leaf("old", "localhost", "DNS:localhost,IP:127.0.0.1");
    let (new_cert, new_key) = pki.leaf("new", "localhost", "DNS:localhost,IP:127.0.0.1");
    let install = |cert: &Path, key: &Path| {
        for (from, to) in [(cert, "served.pem"), (key, "served.key")] {
            let tmp = dir.path().join(format!("{to}.new"));
            std::fs::copy(from, &tmp).unwrap();
            std::fs::rename(&tmp, dir.path().join(to)).unwrap();
        }
    };
    install(&old_cert, &old_key);
    let port = free_port();
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk(
                "local",
                "inbound:\n  allowed_addresses: [127.0.0.1/32]\nmedia_encryption: require\n",
            )
            .dialplan(
                "main",
                "rules:\n  - name: all\n    match: {}\n    room: srtp-renewal\n",
            )
            .sip_extra(&format!(
                "    - transport: tls\n      address: 127.0.0.1:{port}\n      cert: {}\n      key: {}\n",
                dir.path().join("served.pem").display(),
                dir.path().join("served.key").display()
            )),
    );
    let at = format!("127.0.0.1:{port}");
    let new_fp = common::pki::fingerprint_of_file(&new_cert);
    assert_eq!(
        common::pki::served_fingerprint(&at),
        common::pki::fingerprint_of_file(&old_cert)
    );
    let play = common::tone_wav(dir.path(), 1000, 8000, 16);
    let heard = dir.path().join("heard.wav");
    let (listener, publisher) = room_side(&lk, "srtp-renewal", &format!("sip_{CALLER}"), 440, 13);
    let args = phone_args(
        &[
            "call",
            &format!("sip:+15550100@127.0.0.1:{port};transport=tls"),
            "--codec",
            "PCMU",
            "--from-user",
            CALLER,
            "--seconds",
            "9",
            "--transport",
            "tls",
            "--srtp",
            "mandatory",
        ],
        &[
            "--ca".into(),
            pki.ca_cert.display().to_string(),
            "--play".into(),
            play.display().to_string(),
            "--record".into(),
            heard.display().to_string(),
        ],
    );
    let phone = std::thread::spawn(move || common::run_phone(args, Duration::from_secs(60)));
    // the call is up: renew and reload
    rl.wait_log("inbound call answered", Duration::from_secs(30));
    let loaded = |rl: &Roomline| rl.log().matches("TLS certificate loaded").count();
    let before = loaded(&rl);
    install(&new_cert, &new_key);
    rl.signal("HUP");
    let until = Instant::now() + Duration::from_secs(10);
    while loaded(&rl) == before {
        assert!(Instant::now() < until, "no reload:\n{}", rl.log_tail(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        common::pki::served_fingerprint(&at),
        new_fp,
        "the renewed certificate"
    );
    let run = phone.join().unwrap();
    let report = run.expect_ok().clone();
    assert!(
        report["connected_s"].as_f64().unwrap_or(0.0) >= 8.5,
        "the call stayed up: {report}"
    );
    // the reload came within the call's first seconds: 7 s of tone means it went on
    assert_audio_both_ways("after the reload", &heard, listener, 1000, 440, 7.0);
    let _ = publisher.join();
    let line = summary_line(&rl, "+15550100", 0);
    assert!(line.contains("srtp=\"AES_CM_128_HMAC_SHA1_80\""), "{line}");
    rl.assert_no_leaks(Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------
// AEAD_AES_128_GCM end to end, with our own SRTP context as the phone's
// ---------------------------------------------------------------------------------------

/// 16-bit mono PCM at 8 kHz as a WAV file (for roompeer's analyze-wav).
fn write_wav(path: &Path, samples: &[i16]) {
    let data = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

/// pjsua2's libsrtp has no AES-GCM (it refuses the suite itself), so GCM end to end has
/// our own SRTP context (media::srtp, the same code as the daemon's, checked against the
/// RFC 7714 vectors) as the phone's: sipp offers RTP/SAVP with one AEAD_AES_128_GCM key
/// and keeps the dialog; the test protects a 1 kHz PCMU stream with that key toward the
/// daemon and unprotects what comes back with the key of the daemon's answer. The room
/// hears 1 kHz, the phone side decodes 440 Hz, and no packet fails authentication.
#[test]
fn aead_aes_128_gcm_end_to_end_against_our_own_srtp_context() {
    use ::roomline::media::g711::G711;
    use ::roomline::media::sdes;
    use ::roomline::media::srtp::{MasterKey, SrtpContext, SrtpSuite};
    let _media = media_lock();
    let lk = LiveKitServer::start();
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk(
                "local",
                "inbound:\n  allowed_addresses: [127.0.0.1/32]\nmedia_encryption: require\n",
            )
            .dialplan(
                "main",
                "rules:\n  - name: all\n    match: {}\n    room: srtp-gcm\n",
            ),
    );
    // pjsua2's build refuses GCM itself (if it ever gains it, this test should use it)
    let pj = common::run_phone(
        [
            "call",
            &format!("sip:+15550100@{}", rl.sip_addr()),
            "--srtp",
            "mandatory",
            "--srtp-suite",
            "AEAD_AES_128_GCM",
        ],
        Duration::from_secs(30),
    );
    assert!(
        !pj.is_ok() && pj.describe().contains("PJMEDIA_SRTP_ENOTSUPCRYPTO"),
        "pjsua2 speaks GCM now: {}",
        pj.describe()
    );
    let (listener, publisher) = room_side(&lk, "srtp-gcm", &format!("sip_{CALLER}"), 440, 10);
    let ours = MasterKey::generate(SrtpSuite::AeadAes128Gcm);
    let offered = sdes::format(1, &ours);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    let media_port = sock.local_addr().unwrap().port().to_string();
    let scenario = with_offer(
        &uac_answered_then_bye(CALLER, 7000),
        "RTP/SAVP",
        &[&offered],
    )
    .replace("m=audio [media_port]", &format!("m=audio {media_port}"));
    let sipp = roomline::Sipp::spawn(Some(&scenario), &call_args(&rl, "+15550100"));
    let until = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        if let Some(m) = sipp
            .received_so_far()
            .into_iter()
            .find(|m| m.starts_with("SIP/2.0 200"))
        {
            break m;
        }
        assert!(Instant::now() < until, "no 200 OK:\n{}", rl.log_tail(20));
        std::thread::sleep(Duration::from_millis(20));
    };
    let value = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("a=crypto:"))
        .unwrap_or_else(|| panic!("no a=crypto in the answer: {answer}"));
    let theirs = sdes::parse(value).expect("the daemon's a=crypto");
    assert_eq!((theirs.tag, theirs.suite), (1, SrtpSuite::AeadAes128Gcm));
    let port: u16 = answer
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("the answer's RTP port");
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let (mut tx, mut rx) = (SrtpContext::new(&ours), SrtpContext::new(&theirs.key));
    let (mut heard, mut failed, mut packets) = (Vec::new(), 0u32, 0u32);
    let mut pcm = Vec::new();
    let mut buf = vec![0u8; 1500];
    let start = Instant::now();
    let mut next = start;
    for n in 0u32..300 {
        // 20 ms of 1 kHz, PCMU, protected with our GCM key
        let tone: Vec<i16> = (0..160)
            .map(|i| {
                let t = f64::from(n * 160 + i) / 8000.0;
                (8000.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
            })
            .collect();
        let mut pkt = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef];
        pkt[2..4].copy_from_slice(&(n as u16).to_be_bytes());
        pkt[4..8].copy_from_slice(&(n * 160).to_be_bytes());
        pcm.clear();
        let mut payload = Vec::new();
        G711::Pcmu.encode(&tone, &mut payload);
        pkt.extend_from_slice(&payload);
        let len = pkt.len();
        pkt.resize(len + 16, 0);
        let len = tx.protect_rtp(&mut pkt, len).unwrap();
        sock.send_to(&pkt[..len], to).unwrap();
        next += Duration::from_millis(20);
        // what the daemon sends meanwhile
        while Instant::now() < next {
            let Ok((n, _)) = sock.recv_from(&mut buf) else {
                continue;
            };
            if buf[1] >= 192 && buf[1] <= 223 {
                continue; // SRTCP
            }
            match rx.unprotect_rtp(&mut buf, n) {
                Ok(plain) => {
                    packets += 1;
                    G711::Pcmu.decode(&buf[12..plain], &mut pcm);
                    heard.extend_from_slice(&pcm);
                    pcm.clear();
                }
                Err(_) => failed += 1,
            }
        }
    }
    let run = sipp.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(failed, 0, "packets from the daemon that failed GCM");
    assert!(packets >= 250, "{packets} SRTP packets from the daemon");
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("gcm-heard.wav");
    write_wav(&wav, &heard);
    assert_audio_both_ways("AEAD_AES_128_GCM", &wav, listener, 1000, 440, 4.0);
    let _ = publisher.join();
    let line = summary_line(&rl, "+15550100", 0);
    assert!(line.contains("srtp=\"AEAD_AES_128_GCM\""), "{line}");
    assert!(line.contains("srtp_failed=0"), "{line}");
    rl.assert_no_leaks(Duration::from_secs(20));
}
