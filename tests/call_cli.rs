//! `roomline call`, the test phone, against the real daemon, a real livekit-server and
//! the LiveKit Python SDK as the room side: a call into a room reports the room's tone
//! (and the room hears the phone's), a wrong password reports the 403, a dead address
//! the timeout, `--listen` answers an outbound call placed with `roomline dial`, and bad
//! arguments get a clear error. What is asserted is what a user reads: the printed
//! report and the exit status.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::livekit::LiveKitServer;
use common::roomline::{
    Roomline, Setup, daemon_binary, free_port, listener_bg, tone_agent_bg, wait_participants,
};
use common::{wait_timeout, within};

const CALLER: &str = "+15551230000";
const CALLED: &str = "+15550100";

/// Audio tests take the CPU they measure with; one at a time.
static MEDIA: Mutex<()> = Mutex::new(());

/// Runs `roomline ARGS`, killed after `limit`; (exit code, stdout, stderr).
fn roomline(args: &[String], limit: Duration) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let err = dir.path().join("err");
    let mut child = Command::new(daemon_binary())
        .args(args)
        .env_remove("ROOMLINE_CALL_PASSWORD")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run roomline");
    let status = wait_timeout(&mut child, limit);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    (
        status.and_then(|s| s.code()),
        std::fs::read_to_string(out).unwrap_or_default(),
        std::fs::read_to_string(err).unwrap_or_default(),
    )
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The frequency on the report's `heard:` line.
fn heard_hz(report: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.strip_prefix("heard:"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|hz| hz.parse().ok())
        .unwrap_or_else(|| panic!("no frequency heard in the report:\n{report}"))
}

/// The phone calls the daemon; the room publishes 440 Hz and records the phone. The
/// phone reports 440 Hz heard (exit 0 with --expect-tone), the room hears its 1 kHz.
#[test]
fn call_into_the_daemon_reports_the_room_tone() {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let lk = LiveKitServer::start();
    let room = "call-cli";
    let plan = format!(
        "rules:\n  - name: phone\n    match:\n      called: \"{CALLED}\"\n    room: {room}\n"
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let identity = format!("sip_{CALLER}");
    let listener = listener_bg(&lk, room, &identity, 20);
    let publisher = tone_agent_bg(&lk, room, "agent", 440, 12);
    wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "listener")
            && ps.iter().any(|p| p["identity"] == "agent")
    });
    let to = format!("sip:{CALLED}@{}", rl.sip_addr());
    let (code, out, err) = roomline(
        &args(&[
            "call",
            "--to",
            &to,
            "--from",
            CALLER,
            "--tone",
            "1000",
            "--expect-tone",
            "440",
            "--duration",
            "6s",
            "--dtmf",
            "1#",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "stdout:\n{out}\nstderr:\n{err}");
    for want in [
        "-> INVITE",
        "<- 200 OK (SDP)",
        "-> ACK",
        "-> BYE",
        "rtp:    sent",
        "dtmf:   sent \"1#\"",
        "result: ok, expected tone heard",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    let hz = heard_hz(&out);
    assert!(within(hz, 440.0, 0.02), "the phone heard {hz} Hz:\n{out}");
    let heard = listener.join().unwrap();
    let r = heard.expect_ok().clone();
    let hz = heard.f64("dominant_hz");
    assert!(within(hz, 1000.0, 0.02), "the room heard {hz} Hz: {r}");
    assert!(
        heard.f64("frames_nonsilent") >= 300.0,
        "the room heard too little: {r}"
    );
    let _ = publisher.join();
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// A trunk with digest auth: the wrong password gets the 401 answered and then the 403,
/// printed, exit 1; nothing is left behind in the daemon.
#[test]
fn wrong_password_reports_the_403() {
    let lk = LiveKitServer::start();
    let setup = Setup::new(&lk)
        .trunk(
            "local",
            "inbound:\n  allowed_addresses: [127.0.0.1/32]\n  auth:\n    username: alice\n    password: right-one\n",
        )
        .dialplan(
            "main",
            "rules:\n  - name: phone\n    match:\n      called: \"+15550100\"\n    room: auth-room\n",
        );
    let rl = Roomline::start(setup);
    let to = format!("sip:{CALLED}@{}", rl.sip_addr());
    let (code, out, err) = roomline(
        &args(&[
            "call",
            "--to",
            &to,
            "--user",
            "alice",
            "--password",
            "wrong",
            "--tone",
            "440",
        ]),
        Duration::from_secs(40),
    );
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("<- 401 Unauthorized"), "{out}");
    assert!(out.contains("-> INVITE (digest, user \"alice\")"), "{out}");
    assert!(out.contains("<- 403 Forbidden"), "{out}");
    assert!(out.contains("result: call failed: 403 Forbidden"), "{out}");
    // `roomline diagnose --call` places the same call with the trunk's own credentials
    let config = rl.config_path().display().to_string();
    let (_, out, err) = roomline(
        &args(&["diagnose", "--config", &config, "--call", CALLED]),
        Duration::from_secs(60),
    );
    let line = out
        .lines()
        .find(|l| l.contains("test call to"))
        .unwrap_or_else(|| panic!("no test call line:\n{out}\n{err}"));
    assert!(
        line.starts_with("ok   test call to +15****00: answered in"),
        "{out}"
    );
    assert!(
        line.contains("received") && !line.contains("received 0 "),
        "{out}"
    );
    // without credentials: the 401 itself is the failure
    let (code, out, _) = roomline(&args(&["call", "--to", &to]), Duration::from_secs(40));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("401 Unauthorized: credentials asked, none given"),
        "{out}"
    );
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// Nobody at the address: over UDP the phone reports the timeout (no response at all),
/// over TCP the refused connection; exit 1 both.
#[test]
fn dead_address_reports_the_timeout() {
    let port = free_port();
    let (code, out, err) = roomline(
        &args(&[
            "call",
            "--to",
            &format!("sip:{CALLED}@127.0.0.1:{port}"),
            "--timeout",
            "3s",
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("-> INVITE"), "{out}");
    assert!(
        out.contains(&format!(
            "result: call failed: timeout: no response from 127.0.0.1:{port} within 3.0 s"
        )),
        "{out}"
    );
    let (code, out, _) = roomline(
        &args(&[
            "call",
            "--to",
            &format!("sip:{CALLED}@127.0.0.1:{port};transport=tcp"),
        ]),
        Duration::from_secs(30),
    );
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("result: call failed: cannot reach"), "{out}");
    assert!(out.contains("refused"), "{out}");
}

/// `--listen` as the carrier of an outbound call: `roomline dial` places it through a
/// trunk pointing at the phone, which challenges the daemon (digest both ways), answers
/// after a ring, plays 660 Hz and expects the room's 440 Hz.
#[test]
fn listen_answers_an_outbound_call_from_roomline_dial() {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let lk = LiveKitServer::start();
    let phone_port = free_port();
    let trunk = format!(
        "outbound:\n  address: 127.0.0.1:{phone_port}\n  from_number: \"+15550100\"\n  auth:\n    username: bob\n    password: carrier-secret\n"
    );
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &trunk));
    let room = "dial-room";
    let listen = format!("127.0.0.1:{phone_port}");
    let phone = std::thread::spawn(move || {
        roomline(
            &args(&[
                "call",
                "--listen",
                &listen,
                "--user",
                "bob",
                "--password",
                "carrier-secret",
                "--answer-after",
                "1s",
                "--tone",
                "660",
                "--expect-tone",
                "440",
                "--duration",
                "6s",
                "--timeout",
                "60s",
                "--rtp-ports",
                "41000-41199",
            ]),
            Duration::from_secs(90),
        )
    });
    let callee = "+15550123";
    let identity = format!("sip_{callee}");
    let listener = listener_bg(&lk, room, &identity, 20);
    let publisher = tone_agent_bg(&lk, room, "agent", 440, 12);
    wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "listener")
            && ps.iter().any(|p| p["identity"] == "agent")
    });
    let config = rl.config_path().display().to_string();
    let (code, out, err) = roomline(
        &args(&[
            "dial", "--config", &config, "--trunk", "carrier", "--to", callee, "--room", room,
            "--wait",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "roomline dial: {out}\n{err}");
    let (code, out, err) = phone.join().unwrap();
    assert_eq!(
        code,
        Some(0),
        "stdout:\n{out}\nstderr:\n{err}\n{}",
        rl.log_tail(40)
    );
    for want in [
        "listening: udp",
        &format!("<- INVITE sip:{callee}@"),
        "-> 180 Ringing",
        "-> 200 OK (SDP)",
        "result: ok, expected tone heard",
    ] {
        assert!(out.contains(want), "no {want:?} in:\n{out}");
    }
    let hz = heard_hz(&out);
    assert!(within(hz, 440.0, 0.02), "the phone heard {hz} Hz:\n{out}");
    let heard = listener.join().unwrap();
    let r = heard.expect_ok().clone();
    let hz = heard.f64("dominant_hz");
    assert!(within(hz, 660.0, 0.02), "the room heard {hz} Hz: {r}");
    let _ = publisher.join();
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// Bad arguments: a clear message on stderr and exit 2, nothing dialled.
#[test]
fn bad_arguments_get_a_clear_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["call"], "give --to (to place a call) or --listen"),
        (
            &["call", "--to", "sip:127.0.0.1:5060"],
            "no user part (the number to call)",
        ),
        (
            &["call", "--to", "http://example.com"],
            "expected a SIP URI",
        ),
        (
            &["call", "--to", "sip:1@127.0.0.1", "--tone", "0"],
            "--tone 0: expected a frequency from 20 to 7000 Hz",
        ),
        (
            &["call", "--to", "sip:1@127.0.0.1", "--dtmf", "12x"],
            "'x' is not a key",
        ),
        (
            &["call", "--to", "sip:1@127.0.0.1", "--duration", "soon"],
            "--duration",
        ),
        (
            &[
                "call",
                "--to",
                "sip:1@127.0.0.1",
                "--listen",
                "127.0.0.1:5099",
            ],
            "cannot be used with",
        ),
        (
            &[
                "call",
                "--to",
                "sip:1@127.0.0.1",
                "--wav",
                "/nonexistent.wav",
            ],
            "cannot read /nonexistent.wav",
        ),
    ];
    for (argv, want) in cases {
        let (code, out, err) = roomline(&args(argv), Duration::from_secs(20));
        assert_eq!(code, Some(2), "{argv:?}: stdout {out}\nstderr {err}");
        assert!(err.contains(want), "{argv:?}: no {want:?} in {err}");
    }
    // --trunk needs a configuration that has it
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("trunks")).unwrap();
    std::fs::create_dir_all(dir.path().join("dialplans")).unwrap();
    std::fs::write(
        dir.path().join("roomline.yaml"),
        "livekit:\n  url: ws://127.0.0.1:7880\n  api_key: k\n  api_secret: s\n",
    )
    .unwrap();
    let config = dir.path().join("roomline.yaml").display().to_string();
    let (code, _, err) = roomline(
        &args(&[
            "call", "--config", &config, "--trunk", "nope", "--to", "+1555",
        ]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--trunk \"nope\": no such trunk"), "{err}");
}

/// The phone's output is the report, not a log: `roomline call --help` documents the
/// exit statuses a script relies on.
#[test]
fn help_documents_the_exit_statuses() {
    let o: Output = Command::new(daemon_binary())
        .args(["call", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains("Exit 0 ok, 1 the call failed, 3 the audio failed"),
        "{text}"
    );
}

/// Phone to phone, no daemon: `--listen` with a TLS listener answers one call over TLS
/// (`sips:`, our CA) and one through a configured trunk over TCP (`--trunk`, its
/// from_number), each side hearing the other's tone.
#[test]
fn phone_to_phone_over_tls_and_through_a_trunk() {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(dir.path(), "phone");
    let (cert, key) = pki.leaf("answerer", "answerer", "IP:127.0.0.1");
    let (udp_tcp, tls) = (free_port(), free_port());
    let (cert_s, key_s) = (cert.display().to_string(), key.display().to_string());
    let answerer = std::thread::spawn(move || {
        roomline(
            &args(&[
                "call",
                "--listen",
                &format!("127.0.0.1:{udp_tcp}"),
                "--tls-listen",
                &format!("127.0.0.1:{tls}"),
                "--cert",
                &cert_s,
                "--key",
                &key_s,
                "--calls",
                "2",
                "--tone",
                "660",
                "--expect-tone",
                "440",
                "--duration",
                "8s",
                "--timeout",
                "60s",
                "--rtp-ports",
                "41200-41399",
            ]),
            Duration::from_secs(120),
        )
    });
    std::thread::sleep(Duration::from_millis(500));
    let ca = pki.ca_cert.display().to_string();
    let (code, out, err) = roomline(
        &args(&[
            "call",
            "--to",
            &format!("sips:{CALLED}@127.0.0.1:{tls}"),
            "--ca",
            &ca,
            "--tone",
            "440",
            "--expect-tone",
            "660",
            "--duration",
            "3s",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "TLS call:\n{out}\n{err}");
    assert!(
        out.contains(&format!(
            "sips:{CALLED}@127.0.0.1:{tls};transport=tls (tls)"
        )),
        "{out}"
    );
    assert!(within(heard_hz(&out), 660.0, 0.02), "{out}");
    // through a trunk of a configuration
    std::fs::create_dir_all(dir.path().join("trunks")).unwrap();
    std::fs::create_dir_all(dir.path().join("dialplans")).unwrap();
    std::fs::write(
        dir.path().join("roomline.yaml"),
        "livekit:\n  url: ws://127.0.0.1:7880\n  api_key: k\n  api_secret: s\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("trunks/peer.yaml"),
        format!("outbound:\n  address: 127.0.0.1:{udp_tcp}\n  transport: tcp\n  from_number: \"+15557654321\"\n"),
    )
    .unwrap();
    let config = dir.path().join("roomline.yaml").display().to_string();
    let (code, out, err) = roomline(
        &args(&[
            "call",
            "--config",
            &config,
            "--trunk",
            "peer",
            "--to",
            CALLED,
            "--tone",
            "440",
            "--expect-tone",
            "660",
            "--duration",
            "3s",
        ]),
        Duration::from_secs(60),
    );
    assert_eq!(code, Some(0), "trunk call:\n{out}\n{err}");
    assert!(
        out.contains(&format!(
            "sip:{CALLED}@127.0.0.1:{udp_tcp};transport=tcp (tcp)"
        )),
        "{out}"
    );
    let (code, out, err) = answerer.join().unwrap();
    assert_eq!(code, Some(0), "answerer:\n{out}\n{err}");
    assert_eq!(
        out.matches("result: ok, expected tone heard").count(),
        2,
        "{out}"
    );
    assert!(out.contains("(tls)") && out.contains("(tcp)"), "{out}");
    assert!(
        out.contains("from sip:+15557654321@"),
        "the trunk's from_number: {out}"
    );
    assert_eq!(out.matches("the peer hung up (BYE)").count(), 2, "{out}");
}
