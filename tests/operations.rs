//! Operating Roomline, as an operator and the programs around it see it: configuration
//! reloads during calls (valid, invalid, a trunk file swapped for its backup copy),
//! draining on SIGTERM, admission limits, the Prometheus scrape, the systemd notify
//! protocol, `roomline diagnose`, `scripts/validate-config`, and a Kamailio dispatcher in
//! front of two daemons that moves new calls to the survivor when one drains.
//!
//! Everything is real: livekit-server, the `roomline run` daemon, sipp as the phones,
//! the LiveKit Python SDK in the rooms, Debian's kamailio. What is asserted is what a
//! user observes: SIP statuses on the wire, tones heard in the room, participants and
//! their attributes, HTTP answers, metrics text, notify datagrams, exit statuses.
//!
//! Phones that must stay up until the test says so run a sipp scenario that waits for an
//! INFO request; the test sends it straight to sipp's port ([`Phone::tell`]), never
//! through the daemon, so a call ends exactly when the test needs it to, not after a
//! guessed pause.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::UdpSocket;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{
    self, Roomline, RtpPeer, Setup, Sipp, SippRun, header, roompeer_bg, wait_participant,
    wait_room_empty_of,
};
use common::uac::{invite, non_2xx_ack, sip_identity, uac_refused};

/// The heaviest tests (audio measured in a room; two daemons and a proxy) run one at a
/// time: on a 2-core machine they would starve each other's media clocks.
static HEAVY: Mutex<()> = Mutex::new(());

fn heavy_lock() -> MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------
// Phones (sipp)
// ---------------------------------------------------------------------------------------

/// An in-dialog request of the UAC (ACK or BYE): to the remote target, along the Route
/// set a record-routing proxy (Kamailio) put in the 200 (RFC 3261 section 12.2.1.1).
fn in_dialog(caller: &str, method: &str, cseq: u32) -> String {
    format!(
        r#"
      {method} [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      [routes]
      From: "Caller" <sip:{caller}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} {method}
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
"#
    )
}

/// A UAC: INVITE from `caller` (media at `sdp_port`), the 200 (its Record-Route kept),
/// ACK, the `during` part, then the phone hangs up (BYE, its 200).
fn uac(caller: &str, sdp_port: &str, during: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[{ack}]]>
  </send>
{during}
  <send retrans="500">
    <![CDATA[{bye}]]>
  </send>
  <recv response="200" crlf="true"/>
</scenario>
"#,
        invite = invite(caller, sdp_port),
        ack = in_dialog(caller, "ACK", 1),
        bye = in_dialog(caller, "BYE", 2),
    )
}

/// A UAC for bursts: each call is either refused with 503 (then ACKed) or answered
/// (ACK, half a second, BYE). sipp counts both as successful calls; the trace tells
/// which was which.
fn uac_admitted_or_503(caller: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="uac-admitted-or-503">
{invite}
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
  <recv response="503" optional="true" next="1"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[{ack}]]>
  </send>
  <pause milliseconds="500"/>
  <send retrans="500">
    <![CDATA[{bye}]]>
  </send>
  <recv response="200" next="2"/>
  <label id="1"/>
{refused_ack}
  <label id="2"/>
</scenario>
"#,
        invite = invite(caller, "[media_port]"),
        ack = in_dialog(caller, "ACK", 1),
        bye = in_dialog(caller, "BYE", 2),
        refused_ack = non_2xx_ack(caller, 10),
    )
}

/// An OPTIONS request answered with `status`.
fn options_scenario(status: u16) -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options">
  <send retrans="500">
    <![CDATA[
      OPTIONS sip:[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:probe@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To: <sip:[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Accept: application/sdp
      Content-Length: 0
    ]]>
  </send>
  <recv response="{status}"/>
</scenario>
"#
    )
}

/// A UAS that answers every OPTIONS with 200 (a carrier's health check), until stopped.
const OPTIONS_UAS: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options-uas">
  <recv request="OPTIONS"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag02[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>
</scenario>
"#;

/// Part of a `during`: streams a raw mu-law file in a loop (sipp's rtp_stream).
fn stream(file: &Path) -> String {
    format!(
        r#"  <nop><action><exec rtp_stream="{},-1,0"/></action></nop>"#,
        file.display()
    )
}

/// Part of a `during`: stops the stream.
const STOP_STREAM: &str = r#"  <nop><action><exec rtp_stream="pause"/></action></nop>"#;

/// Part of a `during`: waits (up to two minutes) for the test's go-ahead, [`Phone::tell`].
const WAIT_TOLD: &str = r#"  <recv request="INFO" timeout="120000"/>"#;

fn pause(ms: u64) -> String {
    format!(r#"  <pause milliseconds="{ms}"/>"#)
}

/// The Retry-After seconds of a response (panics if there is none).
fn retry_after(resp: &str) -> u32 {
    header(resp, "Retry-After")
        .and_then(|v| {
            v.split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no Retry-After seconds in\n{resp}"))
}

/// One phone: a sipp process running one call (or `-m N` calls) at `target`.
struct Phone {
    sipp: Sipp,
    /// sipp's SIP port on 127.0.0.1.
    port: u16,
}

impl Phone {
    /// Calls `called` at `target` (host:port of the daemon or of the proxy).
    fn call(target: &str, called: &str, scenario: &str) -> Phone {
        Phone::call_with(target, called, scenario, &[])
    }

    fn call_with(target: &str, called: &str, scenario: &str, extra: &[&str]) -> Phone {
        let port = roomline::free_port();
        let mut args: Vec<String> = vec![
            target.to_string(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-s".into(),
            called.into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-mp".into(),
            roomline::free_media_port().to_string(),
            "-timeout".into(),
            "150s".into(),
            "-timeout_error".into(),
        ];
        if !extra.contains(&"-m") {
            args.extend(["-m".into(), "1".into()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        Phone {
            sipp: Sipp::spawn(Some(scenario), &args),
            port,
        }
    }

    /// Waits until the INVITE got its 200; returns that response.
    fn wait_answer(&self, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self.sipp.received_so_far().into_iter().find(|m| {
                m.starts_with("SIP/2.0 200")
                    && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
            }) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "no 200 to the INVITE within {within:?}:\n{}",
                self.sipp.messages_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The Call-ID of the (first) call, from what sipp sent.
    fn call_id(&self) -> String {
        let trace = self.sipp.messages_so_far();
        trace
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix("Call-ID:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| panic!("no Call-ID in sipp's trace:\n{trace}"))
    }

    fn infos_received(&self) -> usize {
        self.sipp
            .received_so_far()
            .iter()
            .filter(|m| m.starts_with("INFO "))
            .count()
    }

    /// Lets a scenario waiting in [`WAIT_TOLD`] go on: sends it an INFO in its dialog,
    /// straight to sipp's port (the daemon never sees it), and waits until sipp logged
    /// it received. sipp does not answer it.
    fn tell(&self) {
        let before = self.infos_received();
        let call_id = self.call_id();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = sock.local_addr().unwrap();
        let seq = 100 + before;
        let msg = format!(
            "INFO sip:sipp@127.0.0.1:{port} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch=z9hG4bK-test-tell-{seq}-{nonce}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:test@127.0.0.1>;tag=test-tell\r\n\
             To: <sip:sipp@127.0.0.1>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: {seq} INFO\r\n\
             Content-Length: 0\r\n\r\n",
            port = self.port,
            nonce = std::process::id(),
        );
        for _attempt in 0..5 {
            sock.send_to(msg.as_bytes(), ("127.0.0.1", self.port))
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if self.infos_received() > before {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!(
            "sipp did not take the INFO:\n{}",
            self.sipp.messages_so_far()
        );
    }

    fn wait(self, within: Duration) -> SippRun {
        self.sipp.wait(within)
    }
}

// ---------------------------------------------------------------------------------------
// Rooms and daemons
// ---------------------------------------------------------------------------------------

fn one_room_plan(rule: &str, number: &str, room: &str) -> String {
    format!("rules:\n  - name: {rule}\n    match:\n      called: \"{number}\"\n    room: {room}\n")
}

/// The participant `identity` in `room` once `pred` holds for it.
fn wait_participant_where<F>(
    lk: &LiveKitServer,
    room: &str,
    identity: &str,
    mut pred: F,
) -> serde_json::Value
where
    F: FnMut(&serde_json::Value) -> bool,
{
    let ps = roomline::wait_participants(lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == identity && pred(p))
    });
    ps.into_iter().find(|p| p["identity"] == identity).unwrap()
}

fn detailed(rl: &Roomline) -> serde_json::Value {
    let (status, body) = rl.get("/health/detailed").expect("/health/detailed");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

/// Waits until /health/detailed satisfies `pred`; returns it.
fn wait_detailed<F>(rl: &Roomline, within: Duration, what: &str, mut pred: F) -> serde_json::Value
where
    F: FnMut(&serde_json::Value) -> bool,
{
    let deadline = Instant::now() + within;
    loop {
        let v = detailed(rl);
        if pred(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}: {v}\n{}",
            rl.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn names(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .or_else(|| x["name"].as_str().map(str::to_string))
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn metrics_text(rl: &Roomline) -> String {
    let (status, body) = rl.get("/metrics").expect("/metrics");
    assert_eq!(status, 200, "{body}");
    body
}

// ---------------------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------------------

/// One sample of a scrape.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed scrape: samples, and `# TYPE` / `# HELP` per family.
#[derive(Debug, Default)]
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
    help: BTreeMap<String, String>,
}

fn is_metric_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Parses Prometheus text exposition format 0.0.4 strictly: every line is a comment
/// (`# HELP`, `# TYPE`), blank, or `name{label="value",...} value [timestamp]`; panics on
/// anything else.
fn parse_prometheus(text: &str) -> Scrape {
    let mut out = Scrape::default();
    for (n, line) in text.lines().enumerate() {
        let at = || format!("line {}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap_or("");
            let name = parts.next().unwrap_or("").to_string();
            let tail = parts.next().unwrap_or("").to_string();
            match kind {
                "TYPE" => {
                    assert!(is_metric_name(&name), "{}", at());
                    assert!(
                        ["counter", "gauge", "summary", "histogram", "untyped"]
                            .contains(&tail.as_str()),
                        "unknown type: {}",
                        at()
                    );
                    assert!(
                        out.types.insert(name, tail).is_none(),
                        "a second TYPE line: {}",
                        at()
                    );
                }
                "HELP" => {
                    assert!(is_metric_name(&name), "{}", at());
                    out.help.insert(name, tail);
                }
                _ => {}
            }
            continue;
        }
        assert!(
            !line.starts_with('#'),
            "a comment without a space: {}",
            at()
        );
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => panic!("no value: {}", at()),
        };
        assert!(is_metric_name(name), "bad metric name: {}", at());
        let mut labels = BTreeMap::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            // label="value" pairs; values escape \\, \" and \n
            let mut chars = body.char_indices().peekable();
            let end;
            loop {
                let (start, c) = chars
                    .next()
                    .unwrap_or_else(|| panic!("unterminated labels: {}", at()));
                if c == '}' {
                    end = start + 1;
                    break;
                }
                if c == ',' {
                    continue;
                }
                let mut key = String::from(c);
                loop {
                    let (_, c) = chars
                        .next()
                        .unwrap_or_else(|| panic!("label without '=': {}", at()));
                    if c == '=' {
                        break;
                    }
                    key.push(c);
                }
                assert!(is_label_name(&key), "bad label name {key:?}: {}", at());
                assert_eq!(
                    chars.next().map(|x| x.1),
                    Some('"'),
                    "label value not quoted: {}",
                    at()
                );
                let mut value = String::new();
                loop {
                    let (_, c) = chars
                        .next()
                        .unwrap_or_else(|| panic!("unterminated value: {}", at()));
                    match c {
                        '"' => break,
                        '\\' => match chars.next().map(|x| x.1) {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?}: {}", at()),
                        },
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "label twice: {}", at());
            }
            &body[end..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let value = fields
            .next()
            .unwrap_or_else(|| panic!("no value: {}", at()));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {}", at())),
        };
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .unwrap_or_else(|_| panic!("bad timestamp: {}", at()));
        }
        assert!(fields.next().is_none(), "trailing text: {}", at());
        out.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

impl Scrape {
    /// The family a sample belongs to (`x_sum`, `x_count`, `x_bucket` of a summary or
    /// histogram `x` belong to `x`).
    fn family_of(&self, sample: &str) -> String {
        for suffix in ["_sum", "_count", "_bucket"] {
            if let Some(base) = sample.strip_suffix(suffix)
                && matches!(
                    self.types.get(base).map(String::as_str),
                    Some("summary" | "histogram")
                )
            {
                return base.to_string();
            }
        }
        sample.to_string()
    }

    fn families(&self) -> BTreeSet<String> {
        self.samples
            .iter()
            .map(|s| self.family_of(&s.name))
            .collect()
    }

    /// The label names of a family's samples, without `quantile` / `le`.
    fn label_sets(&self, family: &str) -> BTreeSet<Vec<String>> {
        self.samples
            .iter()
            .filter(|s| self.family_of(&s.name) == family)
            .map(|s| {
                s.labels
                    .keys()
                    .filter(|k| *k != "quantile" && *k != "le")
                    .cloned()
                    .collect()
            })
            .collect()
    }

    /// The value of sample `name` with exactly `labels` (None if absent).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }
}

// ---------------------------------------------------------------------------------------
// Audio
// ---------------------------------------------------------------------------------------

/// The samples of a 16-bit PCM mono WAV file (roompeer's `--wav`), as floats, and the rate.
fn read_wav(path: &Path) -> (Vec<f32>, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WAVE");
    let mut off = 12;
    let mut rate = 0;
    while off + 8 <= bytes.len() {
        let id = &bytes[off..off + 4];
        let len = u32::from_le_bytes(bytes[off + 4..off + 8].try_into().unwrap()) as usize;
        let body = &bytes[off + 8..(off + 8 + len).min(bytes.len())];
        if id == b"fmt " {
            let channels = u16::from_le_bytes([body[2], body[3]]);
            rate = u32::from_le_bytes(body[4..8].try_into().unwrap());
            let bits = u16::from_le_bytes([body[14], body[15]]);
            assert_eq!((channels, bits), (1, 16), "mono 16-bit");
        } else if id == b"data" {
            let samples = body
                .chunks_exact(2)
                .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) / 32768.0)
                .collect();
            return (samples, rate);
        }
        off += 8 + len + (len & 1);
    }
    panic!("no data chunk in {}", path.display());
}

/// Goertzel power of `freq` in `frame`.
fn goertzel(frame: &[f32], rate: u32, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / f64::from(rate);
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for x in frame {
        let s = f64::from(*x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// For each 10 ms frame of a recording: which of `tones` it carries (the one with ten
/// times the power of every other), or None for silence (RMS below 0.01, -40 dBFS, the
/// room peer's threshold) and for anything else.
fn tone_per_frame(samples: &[f32], rate: u32, tones: &[f64]) -> Vec<Option<f64>> {
    let n = (rate / 100) as usize;
    samples
        .chunks_exact(n)
        .map(|frame| {
            let rms = (frame.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>() / n as f64).sqrt();
            if rms < 0.01 {
                return None;
            }
            let powers: Vec<f64> = tones.iter().map(|f| goertzel(frame, rate, *f)).collect();
            let (best, p) = powers
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .unwrap();
            powers
                .iter()
                .enumerate()
                .all(|(i, q)| i == best || *p > 10.0 * q)
                .then_some(tones[best])
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Reloads
// ---------------------------------------------------------------------------------------

/// A valid dialplan change applied by SIGHUP while a call is up: the call keeps the
/// snapshot it started with (still in its room, its rule in `sip.ruleID`) and keeps
/// carrying audio: a listener in its room hears the phone's 1 kHz before the reload and
/// the 600 Hz tone the phone only starts once the reload is in force, for at least 90 %
/// of its three seconds. The next call follows the new rule into the new room while the
/// first is still up. /health/detailed and the metrics show the reload.
#[test]
fn valid_reload_during_a_call_keeps_its_audio_and_the_next_call_follows_the_new_rule() {
    let _heavy = heavy_lock();
    let lk = LiveKitServer::start();
    let (before, after) = ("reload-before", "reload-after");
    let rl = Roomline::start(
        Setup::new(&lk).dialplan("main", &one_room_plan("first", "+15550100", before)),
    );
    let (caller_a, caller_b) = ("+15551230001", "+15551230002");
    let wav_dir = tempfile::tempdir().unwrap();
    let wav = wav_dir.path().join("heard.wav");
    let listener = roompeer_bg(
        &lk,
        "listen",
        &[
            "--room",
            before,
            "--identity",
            "listener",
            "--from-identity",
            &sip_identity(caller_a),
            "--seconds",
            "90",
            "--wait-timeout",
            "60",
            "--wav",
            wav.to_str().unwrap(),
        ],
    );
    wait_participant(&lk, before, "listener");

    let tones = tempfile::tempdir().unwrap();
    let (tone_1k, tone_600) = (
        roomline::ulaw_tone_file(tones.path(), 1000, 2),
        roomline::ulaw_tone_file(tones.path(), 600, 2),
    );
    let tone_ms = 3000;
    let during = [
        stream(&tone_1k),
        WAIT_TOLD.to_string(),
        stream(&tone_600),
        pause(tone_ms),
        STOP_STREAM.to_string(),
        pause(500),
    ]
    .join("\n");
    let a = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac(caller_a, "[media_port]", &during),
    );
    a.wait_answer(Duration::from_secs(30));
    // the phone's track is in the room before the configuration changes
    wait_participant_where(&lk, before, &sip_identity(caller_a), |p| {
        p["tracks"].as_array().is_some_and(|t| !t.is_empty())
    });
    // the caller talks for a second before the reload (not a wait for anything: the
    // listener's frames of 1 kHz, counted below, are this part of the conversation)
    std::thread::sleep(Duration::from_secs(1));

    std::fs::write(
        rl.dir().join("dialplans/main.yaml"),
        one_room_plan("second", "+15550100", after),
    )
    .unwrap();
    rl.signal("HUP");
    let v = wait_detailed(&rl, Duration::from_secs(10), "the reload", |v| {
        v["last_reload"]["trigger"] == "signal"
    });
    assert_eq!(v["last_reload"]["ok"], true, "{v}");
    assert_eq!(names(&v["config"]["rules"]), ["second"], "{v}");
    assert!(
        rl.log().contains("configuration reloaded"),
        "{}",
        rl.log_tail(20)
    );
    let m = parse_prometheus(&metrics_text(&rl));
    assert_eq!(
        m.value("roomline_config_reloads_total", &[("result", "ok")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("roomline_config_last_reload_success", &[]),
        Some(1.0)
    );

    // the call in progress kept its configuration: same room, same rule
    let p = wait_participant(&lk, before, &sip_identity(caller_a));
    assert_eq!(p["attributes"]["sip.ruleID"], "first", "{p}");
    assert_eq!(p["attributes"]["sip.callStatus"], "active", "{p}");
    // and its audio: the 600 Hz tone starts only now
    a.tell();

    // the next call follows the new rule
    let b = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac(caller_b, "[media_port]", WAIT_TOLD),
    );
    b.wait_answer(Duration::from_secs(30));
    let pb = wait_participant(&lk, after, &sip_identity(caller_b));
    assert_eq!(pb["attributes"]["sip.ruleID"], "second", "{pb}");
    assert!(
        !roomline::list_participants(&lk, before)
            .iter()
            .any(|p| p["identity"] == sip_identity(caller_b).as_str()),
        "the new call is not in the old room"
    );
    assert_eq!(rl.counts()["active"], 2, "{}", rl.counts());
    b.tell();
    let run = b.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(run.finals(), [200, 200], "{}", run.describe());

    let run = a.wait(Duration::from_secs(60));
    run.expect_success();
    assert_eq!(
        run.finals(),
        [200, 200],
        "200 to the INVITE and to the BYE: {}",
        run.describe()
    );
    assert!(
        !run.received().iter().any(|m| m.starts_with("BYE ")),
        "the daemon did not end the call: {}",
        run.describe()
    );
    let heard = listener.join().unwrap();
    let report = heard.expect_ok();
    let (samples, rate) = read_wav(&wav);
    let frames = tone_per_frame(&samples, rate, &[1000.0, 600.0]);
    let k1 = frames.iter().filter(|f| **f == Some(1000.0)).count();
    let k600 = frames.iter().filter(|f| **f == Some(600.0)).count();
    let last_1k = frames.iter().rposition(|f| *f == Some(1000.0));
    let first_600 = frames.iter().position(|f| *f == Some(600.0));
    eprintln!("listener: {report}\n1 kHz frames: {k1}, 600 Hz frames: {k600}");
    assert!(
        k1 >= 50,
        "the room heard {k1} frames of 1 kHz before the reload: {report}"
    );
    let want = tone_ms as usize / 10;
    assert!(
        k600 * 10 >= want * 9,
        "the room heard {k600} of {want} frames of the 600 Hz tone sent after the reload: {report}"
    );
    assert!(
        k600 <= want + want / 10,
        "{k600} frames of 600 Hz for {want} sent: {report}"
    );
    assert!(
        last_1k < first_600,
        "1 kHz, then 600 Hz: {last_1k:?} {first_600:?}"
    );
    wait_room_empty_of(&lk, before, &sip_identity(caller_a));
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// A dialplan file broken on disk is noticed by the watcher and refused: the errors (file,
/// line, column) are in /health/detailed `last_reload` and the log, the metrics say the
/// last reload failed, the daemon stays ready, and calls are still routed by the old
/// configuration (room and `sip.ruleID` of the old rule). A SIGHUP with the file still
/// broken is refused the same way.
#[test]
fn invalid_reload_is_refused_visibly_and_the_old_config_still_routes_calls() {
    let lk = LiveKitServer::start();
    let room = "invalid-kept";
    let rl = Roomline::start(
        Setup::new(&lk).dialplan("main", &one_room_plan("kept", "+15550100", room)),
    );
    let plan = rl.dir().join("dialplans/main.yaml");
    let broken = format!(
        "{}    answer: whenever\n",
        one_room_plan("kept", "+15550100", "invalid-new")
    );
    std::fs::write(&plan, &broken).unwrap();
    let v = wait_detailed(&rl, Duration::from_secs(15), "the watcher's reload", |v| {
        v["last_reload"]["trigger"] == "file"
    });
    assert_eq!(v["last_reload"]["ok"], false, "{v}");
    let errors = names(&v["last_reload"]["errors"]);
    assert_eq!(errors.len(), 1, "{v}");
    let want =
        "dialplans/main.yaml:6:13: invalid answer \"whenever\": expected on_join or on_first_track";
    assert!(errors[0].ends_with(want), "{errors:?}");
    assert!(
        errors[0].starts_with(rl.dir().to_str().unwrap()),
        "{errors:?}"
    );
    assert_eq!(
        names(&v["config"]["rules"]),
        ["kept"],
        "the old rules serve: {v}"
    );
    let log = rl.log();
    assert!(log.contains("configuration reload refused"), "{log}");
    assert!(log.contains(want), "{log}");
    let m = parse_prometheus(&metrics_text(&rl));
    assert_eq!(
        m.value("roomline_config_last_reload_success", &[]),
        Some(0.0)
    );
    assert_eq!(
        m.value("roomline_config_reloads_total", &[("result", "failed")]),
        Some(1.0)
    );
    assert_eq!(
        m.value("roomline_config_reloads_total", &[("result", "ok")]),
        None
    );
    assert_eq!(m.value("roomline_config_rules", &[]), Some(1.0));
    assert_eq!(
        rl.get("/health/ready").map(|r| r.0),
        Some(200),
        "still ready"
    );

    // a SIGHUP does not apply it either
    rl.signal("HUP");
    let v = wait_detailed(&rl, Duration::from_secs(10), "the SIGHUP reload", |v| {
        v["last_reload"]["trigger"] == "signal"
    });
    assert_eq!(v["last_reload"]["ok"], false, "{v}");
    assert!(names(&v["last_reload"]["errors"])[0].ends_with(want), "{v}");
    let m = parse_prometheus(&metrics_text(&rl));
    assert_eq!(
        m.value("roomline_config_reloads_total", &[("result", "failed")]),
        Some(2.0)
    );

    // the old configuration still routes calls
    let caller = "+15551230003";
    let a = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac(caller, "[media_port]", WAIT_TOLD),
    );
    a.wait_answer(Duration::from_secs(30));
    let p = wait_participant(&lk, room, &sip_identity(caller));
    assert_eq!(p["attributes"]["sip.ruleID"], "kept", "{p}");
    a.tell();
    let run = a.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(run.finals(), [200, 200], "{}", run.describe());
    assert!(roomline::list_participants(&lk, "invalid-new").is_empty());
    wait_room_empty_of(&lk, room, &sip_identity(caller));
    rl.assert_no_leaks(Duration::from_secs(10));
}

fn carrier_trunk(comment: &str, outbound_port: u16) -> String {
    format!(
        "# {comment}\ninbound:\n  numbers: [\"+15550100\"]\n  allowed_addresses: [127.0.0.1/32]\n\
         outbound:\n  address: 127.0.0.1:{outbound_port}\n  from_number: \"+15550100\"\n"
    )
}

/// The operator's path for a failing carrier (README, "Reloading the configuration"):
/// the trunk file is swapped for its backup copy kept outside `trunks/` (the failing
/// one moved out, the copy copied in), and the watcher applies it without a signal. The
/// call in progress survives (still in the room as `carrier-a`, its own hang-up answered
/// 200, never a BYE from the daemon); the next call is attributed to the new trunk
/// (`sip.trunkID` = `carrier-b`), and both show in `roomline_calls_total` by trunk.
#[test]
fn trunk_file_swapped_for_its_backup_copy_keeps_calls_and_moves_the_next_one() {
    let lk = LiveKitServer::start();
    let room = "swap-room";
    let mut setup = Setup::new(&lk).dialplan("main", &one_room_plan("line", "+15550100", room));
    setup.trunks = vec![(
        "carrier-a".into(),
        carrier_trunk("the carrier in service", roomline::free_port()),
    )];
    let rl = Roomline::start(setup);
    let spare = rl.dir().join("trunks.spare");
    std::fs::create_dir(&spare).unwrap();
    std::fs::write(
        spare.join("carrier-b.yaml"),
        carrier_trunk(
            "the backup carrier, kept ready outside trunks/",
            roomline::free_port(),
        ),
    )
    .unwrap();
    let v = detailed(&rl);
    assert_eq!(names(&v["config"]["trunks"]), ["carrier-a"], "{v}");

    let tones = tempfile::tempdir().unwrap();
    let tone = roomline::ulaw_tone_file(tones.path(), 800, 2);
    let (caller_a, caller_b) = ("+15551230004", "+15551230005");
    let during = format!("{}\n{WAIT_TOLD}", stream(&tone));
    let a = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac(caller_a, "[media_port]", &during),
    );
    a.wait_answer(Duration::from_secs(30));
    let p = wait_participant(&lk, room, &sip_identity(caller_a));
    assert_eq!(p["attributes"]["sip.trunkID"], "carrier-a", "{p}");

    // the swap, as an operator does it: the failing trunk out, its backup in
    let trunks = rl.dir().join("trunks");
    std::fs::rename(trunks.join("carrier-a.yaml"), spare.join("carrier-a.yaml")).unwrap();
    std::fs::copy(spare.join("carrier-b.yaml"), trunks.join("carrier-b.yaml")).unwrap();
    let v = wait_detailed(&rl, Duration::from_secs(15), "the swapped trunk", |v| {
        names(&v["config"]["trunks"]) == ["carrier-b"]
    });
    assert_eq!(v["last_reload"]["ok"], true, "{v}");
    assert_eq!(v["last_reload"]["trigger"], "file", "{v}");

    // the call in progress survives ...
    let p = wait_participant(&lk, room, &sip_identity(caller_a));
    assert_eq!(p["attributes"]["sip.trunkID"], "carrier-a", "{p}");
    assert_eq!(p["attributes"]["sip.callStatus"], "active", "{p}");
    // ... and the next call comes in on the backup trunk
    let b = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac(caller_b, "[media_port]", WAIT_TOLD),
    );
    b.wait_answer(Duration::from_secs(30));
    let pb = wait_participant(&lk, room, &sip_identity(caller_b));
    assert_eq!(pb["attributes"]["sip.trunkID"], "carrier-b", "{pb}");
    assert_eq!(rl.counts()["active"], 2, "{}", rl.counts());

    a.tell();
    let run = a.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(run.finals(), [200, 200], "{}", run.describe());
    assert!(
        !run.received().iter().any(|m| m.starts_with("BYE ")),
        "{}",
        run.describe()
    );
    b.tell();
    let run = b.wait(Duration::from_secs(30));
    run.expect_success();
    wait_room_empty_of(&lk, room, &sip_identity(caller_a));
    wait_room_empty_of(&lk, room, &sip_identity(caller_b));
    rl.assert_no_leaks(Duration::from_secs(10));
    let m = parse_prometheus(&metrics_text(&rl));
    for trunk in ["carrier-a", "carrier-b"] {
        assert_eq!(
            m.value(
                "roomline_calls_total",
                &[
                    ("direction", "inbound"),
                    ("trunk", trunk),
                    ("outcome", "caller_hangup")
                ]
            ),
            Some(1.0),
            "{trunk}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Draining
// ---------------------------------------------------------------------------------------

/// SIGTERM with a call up and `drain_timeout: 60s`: the daemon stops admitting (a new
/// INVITE gets 503 with Retry-After, OPTIONS gets 503, /health/ready says draining,
/// `roomline_draining` is 1, the refusal is counted) while the active call goes on; while
/// draining exactly that one call holds a port pair, a participant and a task. When its
/// phone hangs up (BYE answered 200, no BYE from the daemon), the daemon exits 0 before
/// the deadline: its last log line is "stopped", the room is empty.
#[test]
fn sigterm_with_an_active_call_refuses_new_ones_lets_it_finish_and_exits_0() {
    let lk = LiveKitServer::start();
    let room = "drain-room";
    let mut rl = Roomline::start(
        Setup::new(&lk)
            .dialplan("main", &one_room_plan("drain", "+15550100", room))
            .limits("  drain_timeout: 60s\n"),
    );
    let caller = "+15551230006";
    let tones = tempfile::tempdir().unwrap();
    let tone = roomline::ulaw_tone_file(tones.path(), 800, 2);
    let during = format!("{}\n{WAIT_TOLD}\n{STOP_STREAM}", stream(&tone));
    let a = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac(caller, "[media_port]", &during),
    );
    a.wait_answer(Duration::from_secs(30));
    wait_participant(&lk, room, &sip_identity(caller));

    rl.signal("TERM");
    // what a load balancer sees first: OPTIONS answered 503
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let run = roomline::sipp(
            Some(&options_scenario(503)),
            &roomline::sipp_args(&rl.sip_addr(), false),
            Duration::from_secs(30),
        );
        if run.success() {
            let resp = run.first_received("SIP/2.0 503");
            assert!(retry_after(&resp) > 0, "{resp}");
            break;
        }
        assert_eq!(run.finals(), [200], "{}", run.describe());
        assert!(Instant::now() < deadline, "OPTIONS still answered 200");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, body) = rl
        .get("/health/ready")
        .expect("/health/ready while draining");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("draining"), "{body}");
    let run = roomline::sipp(
        Some(&uac_refused("+15551230007", 503)),
        &{
            let mut args = roomline::sipp_args(&rl.sip_addr(), false);
            args.extend(["-s".into(), "+15550100".into()]);
            args
        },
        Duration::from_secs(30),
    );
    run.expect_success();
    assert_eq!(run.finals(), [503], "{}", run.describe());
    let resp = run.first_received("SIP/2.0 503");
    assert!(retry_after(&resp) > 0, "{resp}");
    let m = parse_prometheus(&metrics_text(&rl));
    assert_eq!(m.value("roomline_draining", &[]), Some(1.0));
    assert_eq!(
        m.value("roomline_calls_refused_total", &[("reason", "draining")]),
        Some(1.0)
    );
    // the refused INVITE left nothing behind: exactly the one call holds resources
    let c = rl.counts();
    // (rtp_ports_in_use counts RTP/RTCP pairs)
    for k in ["active", "rtp_ports_in_use", "participants", "tasks"] {
        assert_eq!(c[k], 1, "{k}: {c}");
    }
    let p = wait_participant(&lk, room, &sip_identity(caller));
    assert_eq!(p["attributes"]["sip.callStatus"], "active", "{p}");

    a.tell();
    let run = a.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(run.finals(), [200, 200], "{}", run.describe());
    assert!(
        !run.received().iter().any(|m| m.starts_with("BYE ")),
        "{}",
        run.describe()
    );
    assert_eq!(
        rl.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        rl.log_tail(40)
    );
    let log = rl.log();
    assert!(log.contains("draining: waiting for active calls"), "{log}");
    assert!(!log.contains("drain deadline reached"), "{log}");
    assert!(!log.contains("calls still active at exit"), "{log}");
    assert!(
        log.lines().last().is_some_and(|l| l.contains("stopped")),
        "{}",
        rl.log_tail(10)
    );
    wait_room_empty_of(&lk, room, &sip_identity(caller));
}

// ---------------------------------------------------------------------------------------
// Admission
// ---------------------------------------------------------------------------------------

/// `limits.max_concurrent_calls: 1`: with one call up, the next INVITE gets 503 with a
/// Retry-After (counted as `max_concurrent`); once the first call ends, a new one is
/// admitted again.
#[test]
fn max_concurrent_calls_refuses_the_call_beyond_the_limit_until_one_ends() {
    let lk = LiveKitServer::start();
    let room = "limit-room";
    let rl = Roomline::start(
        Setup::new(&lk)
            .dialplan("main", &one_room_plan("limit", "+15550100", room))
            .limits("  max_concurrent_calls: 1\n"),
    );
    let a = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac("+15551230010", "[media_port]", WAIT_TOLD),
    );
    a.wait_answer(Duration::from_secs(30));
    let refused = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac_refused("+15551230011", 503),
    )
    .wait(Duration::from_secs(30));
    refused.expect_success();
    assert_eq!(refused.finals(), [503], "{}", refused.describe());
    let resp = refused.first_received("SIP/2.0 503");
    assert!(retry_after(&resp) > 0, "{resp}");
    assert!(
        !roomline::list_participants(&lk, room)
            .iter()
            .any(|p| p["identity"] == sip_identity("+15551230011").as_str())
    );
    let m = parse_prometheus(&metrics_text(&rl));
    assert_eq!(
        m.value(
            "roomline_calls_refused_total",
            &[("reason", "max_concurrent")]
        ),
        Some(1.0)
    );

    a.tell();
    a.wait(Duration::from_secs(30)).expect_success();
    wait_detailed(&rl, Duration::from_secs(10), "the call's end", |v| {
        v["calls"]["active"] == 0
    });
    let c = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac("+15551230012", "[media_port]", &pause(500)),
    )
    .wait(Duration::from_secs(30));
    c.expect_success();
    assert_eq!(c.finals(), [200, 200], "{}", c.describe());
    let m = parse_prometheus(&metrics_text(&rl));
    assert_eq!(
        m.value(
            "roomline_calls_refused_total",
            &[("reason", "max_concurrent")]
        ),
        Some(1.0)
    );
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// `limits.max_calls_per_second: 1`: a burst of ten INVITEs (sipp at 50 calls/s) gets
/// at least one call admitted and the rest refused with 503 and Retry-After; the refusals
/// are counted as `call_rate` (the global limit the operator set, which a lone source
/// meets with the default per-source cap), one for each 503 on the wire.
#[test]
fn max_calls_per_second_refuses_a_burst_beyond_the_rate() {
    let lk = LiveKitServer::start();
    let rl = Roomline::start(
        Setup::new(&lk)
            .dialplan("main", &one_room_plan("rate", "+15550100", "rate-room"))
            .limits("  max_calls_per_second: 1\n"),
    );
    // a caller number per call (sipp's [call_number]): one identity per participant
    let run = Phone::call_with(
        &rl.sip_addr(),
        "+15550100",
        &uac_admitted_or_503("+155512399[call_number]"),
        &["-m", "10", "-r", "50", "-rp", "1000"],
    )
    .wait(Duration::from_secs(60));
    run.expect_success();
    let invite_finals: Vec<String> = run
        .received()
        .into_iter()
        .filter(|m| {
            m.starts_with("SIP/2.0 ")
                && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
                && !m.starts_with("SIP/2.0 1")
        })
        .collect();
    let admitted = invite_finals
        .iter()
        .filter(|m| m.starts_with("SIP/2.0 200"))
        .count();
    let refused: Vec<&String> = invite_finals
        .iter()
        .filter(|m| m.starts_with("SIP/2.0 503"))
        .collect();
    assert_eq!(admitted + refused.len(), 10, "{}", run.describe());
    assert!(admitted >= 1, "{}", run.describe());
    assert!(
        refused.len() >= 5,
        "{} refused: {}",
        refused.len(),
        run.describe()
    );
    for r in &refused {
        assert!(retry_after(r) > 0, "{r}");
    }
    let m = parse_prometheus(&metrics_text(&rl));
    assert_eq!(
        m.value("roomline_calls_refused_total", &[("reason", "call_rate")]),
        Some(refused.len() as f64)
    );
    rl.assert_no_leaks(Duration::from_secs(15));
}

// ---------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------

/// The metric families the README documents (the first column of its "Metrics" table),
/// each with its documented label names (`name{a,b}`).
fn documented_metrics() -> BTreeMap<String, BTreeSet<String>> {
    let readme = std::fs::read_to_string(common::repo_root().join("README.md")).unwrap();
    let start = readme
        .find("Metrics (labels are bounded")
        .expect("the README's metrics table");
    readme[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|row| row.split('`').nth(1))
        .filter(|m| m.starts_with("roomline_"))
        .map(|m| {
            let (name, labels) = m.split_once('{').unwrap_or((m, "}"));
            let labels = labels.trim_end_matches('}');
            (
                name.to_string(),
                labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(str::to_string)
                    .collect(),
            )
        })
        .collect()
}

/// A scrape of /metrics after real traffic (an answered call whose phone sent exactly
/// 100 RTP packets, a call no rule routes, an INVITE from an address no trunk allows, an
/// OPTIONS, a reload, a readiness probe, a trunk with OPTIONS pings) parses as
/// Prometheus text: every sample has a TYPE and HELP, every family is one the README
/// documents, and each has exactly the documented label set; label values are bounded
/// (no phone number, no address). The values match what happened on the wire.
#[test]
fn metrics_scrape_parses_with_the_documented_names_and_label_sets() {
    let lk = LiveKitServer::start();
    let room = "metrics-room";
    let rl = Roomline::start(
        Setup::new(&lk).dialplan("main", &one_room_plan("metrics", "+15550100", room)),
    );
    // a trunk with OPTIONS pings, answered by a sipp UAS (roomline_trunk_up)
    let carrier_port = roomline::free_port();
    let _carrier = Sipp::spawn(
        Some(OPTIONS_UAS),
        &["-i", "127.0.0.1", "-p", &carrier_port.to_string()].map(String::from),
    );
    std::fs::write(
        rl.dir().join("trunks/pinged.yaml"),
        format!("outbound:\n  address: 127.0.0.1:{carrier_port}\n  options_interval: 1s\n"),
    )
    .unwrap();
    rl.signal("HUP");
    wait_detailed(&rl, Duration::from_secs(10), "the reload", |v| {
        v["last_reload"]["trigger"] == "signal" && v["last_reload"]["ok"] == true
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while parse_prometheus(&metrics_text(&rl)).value("roomline_trunk_up", &[("trunk", "pinged")])
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "trunk_up: {}", metrics_text(&rl));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(rl.get("/health/ready").map(|r| r.0), Some(200));

    // an answered call: the phone sends exactly 100 packets of PCMU
    let caller = "+15551230020";
    let rtp = RtpPeer::bind();
    let a = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac(caller, &rtp.port().to_string(), WAIT_TOLD),
    );
    let ok = a.wait_answer(Duration::from_secs(30));
    wait_participant(&lk, room, &sip_identity(caller));
    let daemon_rtp: std::net::SocketAddr = {
        let ip = ok
            .lines()
            .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))
            .unwrap();
        let port = ok
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))
            .and_then(|r| r.split_whitespace().next())
            .unwrap();
        format!("{ip}:{port}").parse().unwrap()
    };
    let silence = vec![0xffu8; 160];
    rtp.send_stream(daemon_rtp, 0, 160, vec![silence; 100])
        .join()
        .unwrap();
    // the daemon has read all 100 from its RTP socket before the phone hangs up
    roomline::wait_udp_read(daemon_rtp.port(), Duration::from_secs(10));
    a.tell();
    a.wait(Duration::from_secs(30)).expect_success();
    // a call no rule routes, an INVITE from an address no trunk allows, an OPTIONS
    Phone::call(&rl.sip_addr(), "+15550199", &uac_refused(caller, 404))
        .wait(Duration::from_secs(30))
        .expect_success();
    {
        let mut args = roomline::sipp_args(&rl.sip_addr(), false);
        args[2] = "127.0.0.9".into();
        args.extend(["-s".into(), "+15550100".into()]);
        roomline::sipp(
            Some(&uac_refused(caller, 403)),
            &args,
            Duration::from_secs(30),
        )
        .expect_success();
    }
    roomline::sipp(
        Some(&options_scenario(200)),
        &roomline::sipp_args(&rl.sip_addr(), false),
        Duration::from_secs(30),
    )
    .expect_success();
    rl.assert_no_leaks(Duration::from_secs(10));

    let text = metrics_text(&rl);
    let m = parse_prometheus(&text);
    let documented = documented_metrics();
    assert!(documented.len() >= 25, "{documented:?}");
    // every sample's family is typed, described and documented
    for fam in m.families() {
        assert!(
            m.types.contains_key(&fam),
            "{fam} has no TYPE line:\n{text}"
        );
        assert!(
            m.help.get(&fam).is_some_and(|h| !h.trim().is_empty()),
            "{fam} has no HELP text:\n{text}"
        );
        let labels = documented
            .get(&fam)
            .unwrap_or_else(|| panic!("{fam} is exported but not in the README's metrics list"));
        let want: Vec<String> = labels.iter().cloned().collect();
        assert_eq!(
            m.label_sets(&fam),
            BTreeSet::from([want]),
            "{fam}: the labels exported are not the README's"
        );
        if m.types[&fam] == "counter" {
            assert!(fam.ends_with("_total"), "counter {fam}");
        }
    }
    // the families this traffic produces, with their label sets
    let expected: &[(&str, &str, &[&str])] = &[
        ("roomline_build_info", "gauge", &["version"]),
        ("roomline_calls_active", "gauge", &[]),
        (
            "roomline_calls_total",
            "counter",
            &["direction", "outcome", "trunk"],
        ),
        ("roomline_calls_refused_total", "counter", &["reason"]),
        ("roomline_call_setup_seconds", "", &["direction", "trunk"]),
        (
            "roomline_call_duration_seconds",
            "",
            &["direction", "trunk"],
        ),
        ("roomline_livekit_join_seconds", "", &[]),
        (
            "roomline_sip_requests_received_total",
            "counter",
            &["method"],
        ),
        ("roomline_sip_responses_sent_total", "counter", &["class"]),
        (
            "roomline_sip_responses_received_total",
            "counter",
            &["class"],
        ),
        (
            "roomline_rtp_packets_total",
            "counter",
            &["codec", "direction"],
        ),
        (
            "roomline_rtp_lost_packets_total",
            "counter",
            &["codec", "direction"],
        ),
        ("roomline_rtp_jitter_seconds", "", &["codec"]),
        ("roomline_jitter_buffer_delay_seconds", "", &[]),
        ("roomline_media_frame_seconds", "", &["codec"]),
        ("roomline_trunk_up", "gauge", &["trunk"]),
        ("roomline_config_reloads_total", "counter", &["result"]),
        ("roomline_config_last_reload_success", "gauge", &[]),
        ("roomline_config_trunks", "gauge", &[]),
        ("roomline_config_rules", "gauge", &[]),
        ("roomline_draining", "gauge", &[]),
        ("roomline_livekit_probe_seconds", "", &[]),
    ];
    for (fam, ty, labels) in expected {
        let sets = m.label_sets(fam);
        let want: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        assert_eq!(sets, BTreeSet::from([want]), "label set of {fam}:\n{text}");
        if ty.is_empty() {
            assert!(
                matches!(m.types[*fam].as_str(), "summary" | "histogram"),
                "{fam}: {}",
                m.types[*fam]
            );
            let count = m
                .samples
                .iter()
                .filter(|s| s.name == format!("{fam}_count"))
                .map(|s| s.value)
                .sum::<f64>();
            assert!(count >= 1.0, "{fam}_count: {text}");
        } else {
            assert_eq!(m.types[*fam], *ty, "TYPE of {fam}");
        }
    }
    // label values are bounded: no phone number, no address
    for s in &m.samples {
        for v in s.labels.values() {
            let digits = v.chars().filter(char::is_ascii_digit).count();
            assert!(
                !v.contains("+1555") && !v.contains("127.0.0") && digits < 7,
                "unbounded label value in {s:?}"
            );
        }
    }
    // the values are what happened
    let v = |name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?}:\n{text}"))
    };
    assert_eq!(
        v(
            "roomline_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert_eq!(v("roomline_calls_active", &[]), 0.0);
    let inbound = |outcome| {
        [
            ("direction", "inbound"),
            ("trunk", "local"),
            ("outcome", outcome),
        ]
    };
    assert_eq!(v("roomline_calls_total", &inbound("caller_hangup")), 1.0);
    assert_eq!(v("roomline_calls_total", &inbound("no_route")), 1.0);
    assert_eq!(
        v("roomline_calls_refused_total", &[("reason", "no_trunk")]),
        1.0
    );
    assert_eq!(
        v(
            "roomline_rtp_packets_total",
            &[("direction", "rx"), ("codec", "PCMU")]
        ),
        100.0
    );
    let tx = v(
        "roomline_rtp_packets_total",
        &[("direction", "tx"), ("codec", "PCMU")],
    );
    let at_phone = rtp.received().iter().filter(|p| p.pt == 0).count() as f64;
    assert!(
        tx > 0.0 && tx == at_phone,
        "tx {tx}, the phone got {at_phone}"
    );
    assert_eq!(
        v(
            "roomline_rtp_lost_packets_total",
            &[("direction", "rx"), ("codec", "PCMU")]
        ),
        0.0
    );
    assert!(
        v(
            "roomline_sip_requests_received_total",
            &[("method", "INVITE")]
        ) >= 3.0
    );
    assert!(
        v(
            "roomline_sip_requests_received_total",
            &[("method", "OPTIONS")]
        ) >= 1.0
    );
    assert!(v("roomline_sip_requests_received_total", &[("method", "BYE")]) >= 1.0);
    // every response but retransmissions and 100 Trying: the 200s to the answered call's
    // INVITE, to its BYE (an in-dialog answer) and to the OPTIONS; the 404 and the 403
    assert_eq!(
        v("roomline_sip_responses_sent_total", &[("class", "2xx")]),
        3.0
    );
    assert_eq!(
        v("roomline_sip_responses_sent_total", &[("class", "4xx")]),
        2.0
    );
    assert!(v("roomline_sip_responses_received_total", &[("class", "2xx")]) >= 1.0);
    assert_eq!(v("roomline_config_reloads_total", &[("result", "ok")]), 1.0);
    assert_eq!(v("roomline_config_last_reload_success", &[]), 1.0);
    assert_eq!(v("roomline_config_trunks", &[]), 2.0);
    assert_eq!(v("roomline_config_rules", &[]), 1.0);
    assert_eq!(v("roomline_draining", &[]), 0.0);
    assert_eq!(v("roomline_trunk_up", &[("trunk", "pinged")]), 1.0);
}

// ---------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------

/// CLOCK_MONOTONIC in microseconds, read by another process (Python's time.monotonic_ns
/// reads CLOCK_MONOTONIC on Linux), to bracket the daemon's MONOTONIC_USEC.
fn monotonic_usec() -> u64 {
    let out = Command::new("python3")
        .args(["-c", "import time; print(time.monotonic_ns() // 1000)"])
        .output()
        .expect("python3");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("a number")
}

/// The notify protocol (sd_notify(3)) captured on a test's datagram socket given as
/// NOTIFY_SOCKET: READY=1 once SIP and HTTP are bound (a call placed right after it is
/// answered); each reload, valid or not, is RELOADING=1 with a MONOTONIC_USEC taken
/// during the reload, then READY=1 (the daemon goes on serving); SIGTERM gives
/// STOPPING=1, and the daemon exits 0. Nothing else is sent.
#[test]
fn systemd_notify_messages_on_a_test_socket() {
    let lk = LiveKitServer::start();
    let room = "notify-room";
    let sock_dir = tempfile::tempdir().unwrap();
    let sock_path = sock_dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let next = |what: &str| -> String {
        let mut buf = [0u8; 4096];
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notify message ({what}): {e}"));
        // sd_notify(3) messages are newline-separated assignments
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(msg.ends_with('\n'), "{msg:?}");
        msg.trim_end().to_string()
    };
    let mut rl = Roomline::start(
        Setup::new(&lk)
            .dialplan("main", &one_room_plan("notify", "+15550100", room))
            .env("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
    );
    assert_eq!(next("start"), "READY=1");
    let run = Phone::call(
        &rl.sip_addr(),
        "+15550100",
        &uac("+15551230030", "[media_port]", &pause(500)),
    )
    .wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(run.finals(), [200, 200], "{}", run.describe());

    let plan = rl.dir().join("dialplans/main.yaml");
    let mut reloads = Vec::new();
    for (content, ok) in [
        (one_room_plan("notify2", "+15550100", room), true),
        ("rules:\n  - name: [\n".to_string(), false),
    ] {
        std::fs::write(&plan, content).unwrap();
        let t0 = monotonic_usec();
        rl.signal("HUP");
        let msg = next("reload");
        let t1 = monotonic_usec();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 2, "{msg:?}");
        assert_eq!(lines[0], "RELOADING=1", "{msg:?}");
        let usec: u64 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{msg:?}"));
        assert!(
            t0 <= usec && usec <= t1,
            "MONOTONIC_USEC {usec} not within [{t0}, {t1}]"
        );
        assert_eq!(next("after the reload"), "READY=1");
        let v = detailed(&rl);
        assert_eq!(v["last_reload"]["ok"], ok, "{v}");
        reloads.push(usec);
    }
    assert!(reloads[0] < reloads[1]);
    rl.assert_no_leaks(Duration::from_secs(10));

    rl.signal("TERM");
    assert_eq!(next("stop"), "STOPPING=1");
    assert_eq!(
        rl.wait_exit(Duration::from_secs(20)),
        Some(0),
        "{}",
        rl.log_tail(20)
    );
    sock.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 4096];
    assert!(sock.recv(&mut buf).is_err(), "nothing after STOPPING=1");
}

// ---------------------------------------------------------------------------------------
// roomline diagnose, scripts/validate-config
// ---------------------------------------------------------------------------------------

/// Copies the daemon's configuration into a new directory (roomline.yaml with `edit`
/// applied, trunks and dialplans as they are, plus `extra_trunks`); the new
/// roomline.yaml's path.
fn config_copy(
    rl: &Roomline,
    dir: &Path,
    edit: impl Fn(String) -> String,
    extra_trunks: &[(&str, String)],
) -> PathBuf {
    for sub in ["trunks", "dialplans"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(rl.dir().join(sub)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    for (name, yaml) in extra_trunks {
        std::fs::write(dir.join("trunks").join(format!("{name}.yaml")), yaml).unwrap();
    }
    let text = std::fs::read_to_string(rl.config_path()).unwrap();
    let path = dir.join("roomline.yaml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

/// Runs `program args` with the LiveKit variables cleared: (exit code, stdout, stderr).
fn run_tool(program: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(common::repo_root())
        .env_remove("LIVEKIT_URL")
        .env_remove("LIVEKIT_API_KEY")
        .env_remove("LIVEKIT_API_SECRET")
        .env_remove("ROOMLINE_CONFIG")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `roomline diagnose` against a real livekit-server and a running daemon: one verdict
/// line per item (configuration, livekit, each SIP listener held by the running daemon,
/// the RTP range, a trunk whose peer answers OPTIONS) and `verdict: ok`, exit 0; the same
/// through `scripts/diagnose`. A wrong API secret gives a FAIL line for livekit and exit
/// 1; a trunk nobody answers gives a FAIL line for it; an invalid configuration exit 64.
#[test]
fn diagnose_gives_a_verdict_per_check_and_fails_on_a_wrong_secret() {
    let lk = LiveKitServer::start();
    let rl = Roomline::start(Setup::new(&lk));
    let bin = roomline::daemon_binary();
    let dead_port = roomline::free_port();
    let peer = format!("outbound:\n  address: {}\n", rl.sip_addr());
    let dead = format!("outbound:\n  address: 127.0.0.1:{dead_port}\n");

    let good_dir = tempfile::tempdir().unwrap();
    let good = config_copy(&rl, good_dir.path(), |t| t, &[("peer", peer.clone())]);
    let (code, out, err) = run_tool(&bin, &["diagnose", "--config", good.to_str().unwrap()], &[]);
    eprintln!("{out}");
    assert_eq!(code, Some(0), "{out}\n{err}");
    let lines: Vec<&str> = out.lines().collect();
    let line = |prefix: &str| -> &str {
        lines
            .iter()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?}:\n{out}"))
    };
    assert!(
        line("ok   configuration: ").ends_with("valid (2 trunks, 0 rules)"),
        "{out}"
    );
    let base = lk.http_url();
    assert!(
        line("ok   livekit: ").starts_with(&format!(
            "ok   livekit: {base} reachable, key devkey accepted ("
        )),
        "{out}"
    );
    assert_eq!(
        line(&format!("ok   sip udp {}", rl.sip_addr())),
        format!(
            "ok   sip udp {}: in use by a SIP server that answers OPTIONS 200 (a running daemon?)",
            rl.sip_addr()
        )
    );
    assert_eq!(
        line(&format!("warn sip tcp {}", rl.sip_addr())),
        format!("warn sip tcp {}: in use (a running daemon?)", rl.sip_addr())
    );
    // (other programs may hold a few of the range's ports: only the total is known)
    let (rtp_lo, rtp_hi) = rl.rtp_ports;
    assert!(
        line(&format!("ok   rtp {rtp_lo}-{rtp_hi}: ")).ends_with(&format!(
            " of {} RTP ports free to bind",
            (rtp_hi - rtp_lo) / 2
        )),
        "{out}"
    );
    assert!(
        line(&format!(
            "ok   trunk peer ({}): answered OPTIONS 200 in ",
            rl.sip_addr()
        ))
        .ends_with(" ms"),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    assert_eq!(lines.last(), Some(&"verdict: ok"), "{out}");

    // the wrapper script gives the same report
    let (code, script_out, err) = run_tool(
        &common::repo_root().join("scripts/diagnose"),
        &["--config", good.to_str().unwrap()],
        &[("ROOMLINE_BIN", bin.to_str().unwrap())],
    );
    assert_eq!(code, Some(0), "{script_out}\n{err}");
    assert_eq!(script_out.lines().count(), lines.len(), "{script_out}");
    assert_eq!(script_out.lines().last(), Some("verdict: ok"));

    // a wrong API secret: LiveKit refuses the credentials
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong = config_copy(
        &rl,
        wrong_dir.path(),
        |t| t.replace("api_secret: secret", "api_secret: not-the-secret"),
        &[],
    );
    let (code, out, err) = run_tool(
        &bin,
        &["diagnose", "--config", wrong.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1), "{out}\n{err}");
    assert_eq!(
        out.lines().find(|l| l.starts_with("FAIL")),
        Some(
            format!(
                "FAIL livekit: {base} refuses the credentials (401): check livekit.api_key / api_secret"
            )
            .as_str()
        ),
        "{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("FAIL")).count(),
        1,
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("verdict: 1 check failed"), "{out}");

    // a trunk nobody answers
    let dead_dir = tempfile::tempdir().unwrap();
    let dead_cfg = config_copy(&rl, dead_dir.path(), |t| t, &[("dead", dead)]);
    let (code, out, err) = run_tool(
        &bin,
        &["diagnose", "--config", dead_cfg.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, Some(1), "{out}\n{err}");
    let fail: Vec<&str> = out.lines().filter(|l| l.starts_with("FAIL")).collect();
    assert_eq!(fail.len(), 1, "{out}");
    assert!(
        fail[0].starts_with(&format!("FAIL trunk dead (127.0.0.1:{dead_port}): ")),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("verdict: 1 check failed"), "{out}");

    // an invalid configuration
    let (code, out, err) = run_tool(
        &bin,
        &[
            "diagnose",
            "--config",
            "tests/broken/unknown-key/roomline.yaml",
        ],
        &[],
    );
    assert_eq!(code, Some(64), "{out}\n{err}");
    assert!(
        err.contains("roomline.yaml:5:3: invalid YAML: unknown field `region`"),
        "{err}"
    );
    rl.assert_no_leaks(Duration::from_secs(5));
}

/// `scripts/validate-config` as a CI pipeline runs it: exit 0 on the repository's
/// examples (with and without `--github`, no annotation); exit 64 on the broken fixture
/// `tests/broken/many-errors`, printing exactly `roomline check`'s file:line:column
/// lines, and with `--github` one `::error file=...,line=...,col=...::message` per
/// located error; exit 64 for a configuration file that does not exist.
#[test]
fn validate_config_script_for_ci_pipelines() {
    let script = common::repo_root().join("scripts/validate-config");
    let bin = roomline::daemon_binary();
    let env = [("ROOMLINE_BIN", bin.to_str().unwrap())];
    let (code, out, err) = run_tool(&script, &[], &env);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(
        out.trim(),
        "roomline.yaml: configuration is valid (4 trunks, 4 dialplan rules)"
    );
    let (code, out, err) = run_tool(&script, &["--github", "roomline.yaml"], &env);
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(!out.contains("::error"), "{out}");

    let fixture = "tests/broken/many-errors/roomline.yaml";
    let expected =
        std::fs::read_to_string(common::repo_root().join("tests/broken/many-errors/expected.txt"))
            .unwrap();
    let (code, out, err) = run_tool(&script, &[fixture], &env);
    assert_eq!(code, Some(64), "{out}\n{err}");
    assert_eq!(out.trim_end(), expected.trim_end());

    let (code, out, err) = run_tool(&script, &["--github", fixture], &env);
    assert_eq!(code, Some(64), "{out}\n{err}");
    let located: Vec<&str> = expected
        .lines()
        .filter(|l| l.starts_with("tests/broken/"))
        .collect();
    assert_eq!(located.len(), 19, "{expected}");
    let annotations: Vec<&str> = out.lines().filter(|l| l.starts_with("::error ")).collect();
    assert_eq!(annotations.len(), located.len(), "{out}");
    for (l, a) in located.iter().zip(&annotations) {
        let mut parts = l.splitn(4, ':');
        let (file, line, col, msg) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap().trim_start(),
        );
        assert_eq!(
            *a,
            format!("::error file={file},line={line},col={col}::{msg}")
        );
    }
    for l in &located {
        assert!(out.lines().any(|o| o == *l), "{l} missing in\n{out}");
    }

    let (code, _, err) = run_tool(&script, &["tests/broken/nowhere/roomline.yaml"], &env);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("does not exist"), "{err}");
}

// ---------------------------------------------------------------------------------------
// Kamailio in front of two daemons
// ---------------------------------------------------------------------------------------

/// Debian's kamailio, run in the foreground with its own configuration, pid file and
/// runtime directory in a temp dir, in its own process group; stopped by PID on drop.
struct Kamailio {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    log: PathBuf,
}

/// Debian's module directory for this architecture (/usr/lib/<multiarch>/kamailio/modules).
fn kamailio_modules() -> PathBuf {
    std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("kamailio/modules"))
        .find(|p| p.join("dispatcher.so").is_file())
        .unwrap_or_else(|| panic!("kamailio's modules not found: {}", common::INSTALL_HINT))
}

impl Kamailio {
    /// A dispatcher proxy on 127.0.0.1:<free port> balancing INVITEs round-robin over
    /// `destinations` (sip:host:port), pinging them with OPTIONS every second: a
    /// destination that answers anything but 2xx (or nothing) is inactive until it
    /// answers 200 again.
    fn start(destinations: &[String]) -> Kamailio {
        let kamailio = Path::new("/usr/sbin/kamailio");
        assert!(
            kamailio.is_file(),
            "kamailio not found: {}",
            common::INSTALL_HINT
        );
        let dir = tempfile::Builder::new()
            .prefix("roomline-kamailio-")
            .tempdir()
            .unwrap();
        let port = roomline::free_port();
        let list: String = destinations
            .iter()
            .map(|d| format!("1 {d} 0 0\n"))
            .collect();
        std::fs::write(dir.path().join("dispatcher.list"), list).unwrap();
        let modules = [
            "tm",
            "sl",
            "rr",
            "pv",
            "maxfwd",
            "textops",
            "siputils",
            "xlog",
            "dispatcher",
        ]
        .iter()
        .map(|m| format!("loadmodule \"{m}.so\"\n"))
        .collect::<String>();
        let mpath = kamailio_modules();
        let mpath = mpath.display();
        let cfg = format!(
            r#"#!KAMAILIO
debug=2
log_stderror=yes
children=2
auto_aliases=no
disable_tcp=yes
listen=udp:127.0.0.1:{port}
mpath="{mpath}"
{modules}
modparam("tm", "fr_timer", 3000)
modparam("rr", "enable_full_lr", 1)
modparam("dispatcher", "list_file", "{list}")
modparam("dispatcher", "ds_ping_interval", 1)
modparam("dispatcher", "ds_probing_mode", 1)
modparam("dispatcher", "ds_probing_threshold", 1)
modparam("dispatcher", "ds_inactive_threshold", 1)
modparam("dispatcher", "ds_ping_method", "OPTIONS")
modparam("dispatcher", "ds_ping_from", "sip:dispatcher@127.0.0.1:{port}")
modparam("dispatcher", "ds_ping_reply_codes", "class=2")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route()) {{
            t_relay();
            exit;
        }}
        if (is_method("ACK")) {{
            if (t_check_trans()) {{
                t_relay();
            }}
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) {{
            t_relay();
        }}
        exit;
    }}
    if (!is_method("INVITE")) {{
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }}
    record_route();
    if (!ds_select_dst("1", "4")) {{
        xlog("L_NOTICE", "roomline-test: no destination for $ci\n");
        sl_send_reply("503", "No Roomline available");
        exit;
    }}
    xlog("L_NOTICE", "roomline-test: INVITE $ci to $du\n");
    t_relay();
    exit;
}}

event_route[dispatcher:dst-down] {{
    xlog("L_NOTICE", "roomline-test: destination down $ru\n");
}}

event_route[dispatcher:dst-up] {{
    xlog("L_NOTICE", "roomline-test: destination up $ru\n");
}}
"#,
            list = dir.path().join("dispatcher.list").display(),
        );
        let cfg_path = dir.path().join("kamailio.cfg");
        std::fs::write(&cfg_path, cfg).unwrap();
        let run_dir = dir.path().join("run");
        std::fs::create_dir(&run_dir).unwrap();
        let log = dir.path().join("kamailio.log");
        let child = Command::new(kamailio)
            .arg("-f")
            .arg(&cfg_path)
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .arg("-Y")
            .arg(&run_dir)
            .arg("-w")
            .arg(dir.path())
            .current_dir(dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("kamailio.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start kamailio");
        let mut k = Kamailio {
            child,
            dir,
            port,
            log,
        };
        // listening once it answers an OPTIONS (405 from this configuration)
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = k.child.try_wait() {
                panic!("kamailio exited ({st}):\n{}", k.log_text());
            }
            let run = roomline::sipp(
                Some(&options_scenario(405)),
                &{
                    let mut a = roomline::sipp_args(&k.addr(), false);
                    a.extend(["-recv_timeout".into(), "1000".into()]);
                    a
                },
                Duration::from_secs(10),
            );
            if run.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "kamailio does not answer:\n{}",
                k.log_text()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        k
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "kamailio did not log {needle:?} within {within:?}:\n{}",
                common::tail_file(&self.log, 40)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        common::stop_child(&mut self.child, Duration::from_secs(10));
        if std::thread::panicking() {
            eprintln!(
                "---- kamailio log (tail) ----\n{}",
                common::tail_file(&self.log, 60)
            );
        }
        if std::env::var_os("ROOMLINE_KEEP_LOGS").is_some() {
            let keep = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            eprintln!("kamailio log kept in {}", keep.keep().display());
        }
    }
}

/// Kamailio's dispatcher in front of two daemons on 127.0.0.2 and 127.0.0.3 (round
/// robin, OPTIONS pings every second). Two calls through it land one on each daemon
/// (each daemon routes into its own room). One daemon gets SIGTERM with its call still
/// up (drain_timeout 60 s): it answers the pings 503, Kamailio marks it down, and the
/// next three calls all land on the survivor and get 200 (the draining daemon never sees
/// them: no refusal counted). The draining daemon's call goes on until its phone hangs up
/// through the proxy (BYE answered 200); then that daemon exits 0. The survivor ends with
/// no leaks.
#[test]
fn kamailio_dispatcher_moves_new_calls_to_the_survivor_when_one_drains() {
    let _heavy = heavy_lock();
    let lk = LiveKitServer::start();
    let start = |ip: &str, room: &str| {
        Roomline::start(
            Setup::new(&lk)
                .bind_ip(ip)
                .dialplan("main", &one_room_plan("lb", "+15550100", room))
                .limits("  drain_timeout: 60s\n"),
        )
    };
    let mut daemons = [start("127.0.0.2", "lb-two"), start("127.0.0.3", "lb-three")];
    let rooms = ["lb-two", "lb-three"];
    let destinations: Vec<String> = daemons
        .iter()
        .map(|d| format!("sip:{}", d.sip_addr()))
        .collect();
    let kam = Kamailio::start(&destinations);
    let tones = tempfile::tempdir().unwrap();
    let tone = roomline::ulaw_tone_file(tones.path(), 700, 2);
    let held = format!("{}\n{WAIT_TOLD}\n{STOP_STREAM}", stream(&tone));

    // two calls: one on each daemon
    let first: Vec<(String, Phone)> = ["+15551230041", "+15551230042"]
        .iter()
        .map(|c| {
            let p = Phone::call(&kam.addr(), "+15550100", &uac(c, "[media_port]", &held));
            let ok = p.wait_answer(Duration::from_secs(30));
            // the proxy stays in the dialog: the daemon's 200 carries its Record-Route
            let rr = header(&ok, "Record-Route").unwrap_or_default();
            assert!(rr.starts_with(&format!("<sip:{};lr", kam.addr())), "{ok}");
            (c.to_string(), p)
        })
        .collect();
    let mut on = [None, None];
    for (caller, _) in &first {
        let deadline = Instant::now() + Duration::from_secs(30);
        let which = loop {
            if let Some(i) = (0..2).find(|i| {
                roomline::list_participants(&lk, rooms[*i])
                    .iter()
                    .any(|p| p["identity"] == sip_identity(caller).as_str())
            }) {
                break i;
            }
            assert!(Instant::now() < deadline, "{caller} is in no room");
            std::thread::sleep(Duration::from_millis(100));
        };
        assert!(
            on[which].is_none(),
            "both calls on daemon {which}:\n{}",
            kam.log_text()
        );
        on[which] = Some(caller.clone());
    }
    for d in &daemons {
        assert_eq!(d.counts()["active"], 1, "{}", d.counts());
    }

    // drain the first daemon (127.0.0.2) with its call up
    let (draining, survivor) = (0, 1);
    daemons[draining].signal("TERM");
    kam.wait_log(
        &format!("roomline-test: destination down {}", destinations[draining]),
        Duration::from_secs(15),
    );
    assert!(
        !kam.log_text()
            .contains(&format!("destination down {}", destinations[survivor])),
        "{}",
        kam.log_text()
    );
    let later: Vec<(String, Phone)> = ["+15551230043", "+15551230044", "+15551230045"]
        .iter()
        .map(|c| {
            let p = Phone::call(&kam.addr(), "+15550100", &uac(c, "[media_port]", WAIT_TOLD));
            p.wait_answer(Duration::from_secs(30));
            (c.to_string(), p)
        })
        .collect();
    for (caller, _) in &later {
        wait_participant(&lk, rooms[survivor], &sip_identity(caller));
    }
    assert_eq!(
        daemons[survivor].counts()["active"],
        4,
        "{}",
        daemons[survivor].counts()
    );
    let m = parse_prometheus(&metrics_text(&daemons[draining]));
    assert_eq!(m.value("roomline_draining", &[]), Some(1.0));
    assert_eq!(
        m.value("roomline_calls_refused_total", &[("reason", "draining")]),
        None,
        "no new INVITE reached the draining daemon"
    );
    assert_eq!(daemons[draining].counts()["active"], 1);

    // the draining daemon's call completes: the phone hangs up through the proxy
    let drained_caller = on[draining].clone().unwrap();
    for (caller, phone) in first {
        phone.tell();
        let run = phone.wait(Duration::from_secs(30));
        run.expect_success();
        assert_eq!(run.finals(), [200, 200], "{caller}: {}", run.describe());
        assert!(
            run.messages
                .contains(&format!("Route: <sip:{};lr", kam.addr())),
            "the BYE went through the proxy: {}",
            run.describe()
        );
        assert!(
            !run.received().iter().any(|m| m.starts_with("BYE ")),
            "{}",
            run.describe()
        );
    }
    assert_eq!(
        daemons[draining].wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        daemons[draining].log_tail(30)
    );
    let log = daemons[draining].log();
    assert!(!log.contains("drain deadline reached"), "{log}");
    assert!(!log.contains("calls still active at exit"), "{log}");
    wait_room_empty_of(&lk, rooms[draining], &sip_identity(&drained_caller));

    for (caller, phone) in later {
        phone.tell();
        let run = phone.wait(Duration::from_secs(30));
        run.expect_success();
        assert_eq!(run.finals(), [200, 200], "{caller}: {}", run.describe());
    }
    daemons[survivor].assert_no_leaks(Duration::from_secs(10));
}
