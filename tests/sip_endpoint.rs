//! The SIP endpoint of a running `roomline run`, seen from the wire: every RFC 4475 torture
//! message (../shared/test-data/rfc4475, one test per file) sent over UDP gets the answer
//! expected.tsv lists, or none, and the daemon keeps serving; no response is ever answered;
//! sipp scenarios over UDP and TCP (OPTIONS, CANCEL before answer, BYE from either side);
//! digest authentication (challenge, wrong password, stale nonce) with a client in this
//! file; a retransmitted INVITE absorbed by its transaction; the per-source flood limit; an
//! oversized TCP message; and a call over TLS with OpenSSL's `s_client` as the phone's TLS.
//!
//! Why some of it is not sipp: sipp 3.6.1 computes only MD5 digests and answers the first
//! `WWW-Authenticate` it gets ("createAuthHeader: authentication must use MD5 or
//! AKAv1-MD5"), while Roomline offers SHA-256 first and MD5 second (RFC 8760 section 2.4).
//! So the digest tests use the small UA below: it picks the first algorithm it supports,
//! as RFC 8760 asks, and computes RFC 7616 digests with the md-5/sha2 crates directly, not
//! with Roomline's `sip::digest`. sipp has no TLS either.
//!
//! Every daemon and peer process is started by the harness and stopped by PID; all traffic
//! stays on 127.0.0.0/8. Waits are bounded; nothing here asserts how fast anything is.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{
    Roomline, RtpPeer, Setup, Sipp, SippRun, free_media_port, free_port, list_participants,
    room_service, sipp_args, wait_participants,
};

const CALLER: &str = "+15551230000";
const CALLED: &str = "+15550100";
/// How long "nothing comes back" is watched for.
const SILENCE: Duration = Duration::from_secs(1);
/// Upper bound for any expected answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------
// A SIP message as the test reads it (independent of Roomline's parser)
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Sip {
    start: String,
    /// (name as written, value) with folded lines joined.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    text: String,
}

fn long_name(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    match n.as_str() {
        "i" => "call-id".into(),
        "v" => "via".into(),
        "f" => "from".into(),
        "t" => "to".into(),
        "l" => "content-length".into(),
        "c" => "content-type".into(),
        "m" => "contact".into(),
        "k" => "supported".into(),
        "e" => "content-encoding".into(),
        _ => n,
    }
}

impl Sip {
    fn parse(bytes: &[u8]) -> Option<Sip> {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (head, body) = match bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            Some(i) => (&text[..i], bytes[i + 4..].to_vec()),
            None => (text.as_str(), Vec::new()),
        };
        let mut lines = head.split("\r\n");
        let start = lines.next()?.to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
        Some(Sip {
            start,
            headers,
            body,
            text,
        })
    }

    fn status(&self) -> Option<u16> {
        self.start
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
    }

    fn is_response(&self) -> bool {
        self.start.starts_with("SIP/2.0 ")
    }

    fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        let want = long_name(name);
        self.headers
            .iter()
            .find(|(n, _)| long_name(n) == want)
            .map(|(_, v)| v.as_str())
    }

    fn headers_named(&self, name: &str) -> Vec<&str> {
        let want = long_name(name);
        self.headers
            .iter()
            .filter(|(n, _)| long_name(n) == want)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn call_id(&self) -> &str {
        self.header("Call-ID").unwrap_or("")
    }

    /// The CSeq method.
    fn cseq_method(&self) -> &str {
        self.header("CSeq")
            .and_then(|c| c.split_whitespace().nth(1))
            .unwrap_or("")
    }

    /// The first element of the first Via.
    fn top_via(&self) -> Option<String> {
        let v = self.header("Via")?;
        Some(v.split(',').next().unwrap_or(v).trim().to_string())
    }

    /// The URI of the Contact (between < and >, or the whole value).
    fn contact_uri(&self) -> Option<String> {
        let c = self.header("Contact")?;
        Some(match (c.find('<'), c.find('>')) {
            (Some(a), Some(b)) if a < b => c[a + 1..b].to_string(),
            _ => c.split(';').next().unwrap_or(c).trim().to_string(),
        })
    }

    /// The items of comma-separated headers `name`, lower-cased and trimmed.
    fn tokens(&self, name: &str) -> BTreeSet<String> {
        self.headers_named(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|t| {
                t.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .filter(|t| !t.is_empty())
            .collect()
    }
}

/// The Content-Length of a message head (full or compact name), None without one.
fn content_length(head: &str) -> Option<usize> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        (long_name(n) == "content-length").then(|| v.trim().parse().ok())?
    })
}

fn data_dir() -> PathBuf {
    std::env::var_os("ROOMLINE_RFC4475")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/test-data/rfc4475")
        })
}

fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand_u32()
    )
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.subsec_nanos() ^ (t.as_secs() as u32).rotate_left(13)).wrapping_mul(2_654_435_761)
}

// ---------------------------------------------------------------------------------------
// Daemons
// ---------------------------------------------------------------------------------------

/// A daemon configuration for tests where no call reaches LiveKit (every INVITE is
/// rejected or refused before a room is joined): LiveKit's URL names a loopback port
/// nobody listens on, so no LiveKit server has to run for them.
fn offline_setup() -> Setup {
    Setup {
        livekit_url: format!("ws://127.0.0.1:{}", free_port()),
        api_key: "devkey".into(),
        api_secret: "secret".into(),
        trunks: vec![(
            "local".into(),
            "inbound:\n  allowed_addresses: [127.0.0.1/32]\n".into(),
        )],
        dialplans: Vec::new(),
        sip_extra: String::new(),
        rtp_extra: String::new(),
        limits: String::new(),
        log_level: "info,roomline=debug".into(),
        logging: String::new(),
        bind_ip: "127.0.0.1".into(),
        env: Vec::new(),
    }
}

/// Every call the dialplan routes is rejected with this (it proves the INVITE went all
/// the way through the endpoint's checks, trunk matching and auth to the dialplan).
const DIALPLAN_REJECT: u16 = 486;

fn reject_all_plan() -> String {
    format!(
        "rules:\n  - name: busy\n    reject: {{status: {DIALPLAN_REJECT}, reason: Busy Here}}\n"
    )
}

fn room_plan(room: &str, extra: &str) -> String {
    format!("rules:\n  - name: room\n    room: {room}\n{extra}")
}

/// Waits until the phone's participant (identity `sip_<caller>`) is in `room`, fully
/// joined (state ACTIVE: its peer connection is up), and the only one of its identity.
fn wait_phone_in_room(lk: &LiveKitServer, room: &str) {
    let identity = format!("sip_{CALLER}");
    wait_participants(lk, room, Duration::from_secs(30), |ps| {
        let mine: Vec<_> = ps
            .iter()
            .filter(|p| p["identity"] == identity.as_str())
            .collect();
        mine.len() == 1 && mine[0]["state"] == "ACTIVE"
    });
}

/// Waits until sipp's message log contains `needle` (sipp reached that point).
fn wait_sipp_log(sipp: &Sipp, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sipp.messages_so_far().contains(needle) {
        assert!(
            Instant::now() < deadline,
            "sipp's log has no {needle:?} within 30 s:\n{}",
            sipp.messages_so_far()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_phone_gone(lk: &LiveKitServer, room: &str) {
    let identity = format!("sip_{CALLER}");
    wait_participants(lk, room, Duration::from_secs(30), |ps| {
        !ps.iter().any(|p| p["identity"] == identity.as_str())
    });
}

fn active_calls(rl: &Roomline) -> u64 {
    rl.counts()["active"].as_u64().unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------
// A UDP peer for the torture messages
// ---------------------------------------------------------------------------------------

/// A UDP socket on 127.45.x.y port 5060, a loopback address of its own per test.
///
/// Why port 5060: the torture messages keep their Via headers untouched, and most name a
/// host without a port. Roomline answers a UDP request as RFC 3261 section 18.2.2 says:
/// to the `received` address it stamps (the packet's source IP, since the Via host is
/// not it) and the sent-by port, 5060 when none is given (or the source port when the
/// Via asks for `rport`, as mpart01's does). A socket on the source IP and port 5060
/// therefore gets every answer a correct daemon sends, with no rewriting of the messages.
/// The distinct address also gives each test its own flood-limit bucket.
fn torture_socket() -> UdpSocket {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = (std::process::id() % 200) as u8 + 1;
    for _ in 0..2000 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ip = Ipv4Addr::new(
            127,
            45,
            base.wrapping_add((n / 250) as u8),
            (n % 250) as u8 + 1,
        );
        if let Ok(s) = UdpSocket::bind(SocketAddrV4::new(ip, 5060)) {
            return s;
        }
    }
    panic!("no 127.45.x.y:5060 UDP address is free (is something bound to 0.0.0.0:5060?)");
}

fn recv_udp(sock: &UdpSocket, until: Instant) -> Option<Sip> {
    let mut buf = vec![0u8; 65536];
    loop {
        let left = until.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                if let Some(m) = Sip::parse(&buf[..n]) {
                    return Some(m);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

/// Every message that arrives on `sock` within `window`.
fn collect_udp(sock: &UdpSocket, window: Duration) -> Vec<Sip> {
    let until = Instant::now() + window;
    let mut out = Vec::new();
    while let Some(m) = recv_udp(sock, until) {
        out.push(m);
    }
    out
}

fn options_text(via_host: &str, transport: &str, call_id: &str, target: &str) -> String {
    format!(
        "OPTIONS sip:{target} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {via_host};branch=z9hG4bK-{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{via_host}>;tag={}\r\n\
         To: <sip:{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        unique("b"),
        rand_u32()
    )
}

/// The daemon still serves: an OPTIONS from `sock` gets 200 with Allow. Other messages
/// arriving meanwhile (late retransmissions) are skipped.
fn assert_still_serving(sock: &UdpSocket, rl: &Roomline, after: &str) {
    let me = sock.local_addr().unwrap();
    let call_id = unique("alive");
    let msg = options_text(&me.to_string(), "UDP", &call_id, &rl.sip_addr());
    sock.send_to(msg.as_bytes(), rl.sip_addr()).unwrap();
    let until = Instant::now() + ANSWER_WITHIN;
    loop {
        let m = recv_udp(sock, until).unwrap_or_else(|| {
            panic!(
                "after {after}: no answer to OPTIONS within {ANSWER_WITHIN:?}\n{}",
                rl.log_tail(40)
            )
        });
        if m.call_id() == call_id {
            assert_eq!(m.status(), Some(200), "after {after}: {}", m.text);
            assert!(m.header("Allow").is_some(), "after {after}: {}", m.text);
            return;
        }
    }
}

/// ACK for a non-2xx final response to an INVITE (RFC 3261 section 17.1.1.3): the
/// request's Request-URI, the response's top Via (same branch), From, To with tag and
/// Call-ID, the CSeq number with method ACK.
fn ack_for(ruri: &str, resp: &Sip) -> String {
    let cseq_n = resp
        .header("CSeq")
        .and_then(|c| c.split_whitespace().next())
        .unwrap_or("1");
    format!(
        "ACK {ruri} SIP/2.0\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq_n} ACK\r\n\
         Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        resp.top_via().unwrap_or_default(),
        resp.header("From").unwrap_or(""),
        resp.header("To").unwrap_or(""),
        resp.call_id(),
    )
}

// ---------------------------------------------------------------------------------------
// RFC 4475 torture messages over UDP
// ---------------------------------------------------------------------------------------

/// (kind, daemon_response) of a file in expected.tsv.
fn expected(name: &str) -> (String, String) {
    let path = data_dir().join("expected.tsv");
    let tsv = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let row = tsv
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        .find(|cols| cols[0] == name)
        .unwrap_or_else(|| panic!("{name} is not in expected.tsv"));
    (row[2].to_string(), row[4].to_string())
}

/// What the daemon must do with a message, read from expected.tsv's `daemon_response`.
#[derive(Debug)]
enum Expect {
    /// A final response with one of these statuses and these headers present.
    Final {
        statuses: Vec<u16>,
        headers: Vec<&'static str>,
    },
    /// Nothing comes back.
    Nothing,
}

/// The final response a valid request "handled normally" gets here: a new INVITE reaches
/// the dialplan (which rejects every call with 486 in these tests); an INVITE whose To
/// has a tag names a dialog this daemon does not have, and gets 481 (RFC 3261 section
/// 12.2.2; wsinv's does); OPTIONS gets 200; the methods of a registrar or messaging
/// server get 405 with Allow (Roomline is a UA).
fn handled_normally(req: &Sip) -> Expect {
    let to_tag = req.header("To").is_some_and(|t| {
        t.split(';')
            .skip(1)
            .any(|p| p.trim().to_ascii_lowercase().starts_with("tag"))
    });
    match req.method() {
        "INVITE" if to_tag => Expect::Final {
            statuses: vec![481],
            headers: vec![],
        },
        "INVITE" => Expect::Final {
            statuses: vec![DIALPLAN_REJECT],
            headers: vec![],
        },
        "OPTIONS" => Expect::Final {
            statuses: vec![200],
            headers: vec!["Allow", "Accept"],
        },
        "REGISTER" | "MESSAGE" | "SUBSCRIBE" | "PUBLISH" => Expect::Final {
            statuses: vec![405],
            headers: vec!["Allow"],
        },
        m => panic!("no rule for a normally handled {m}"),
    }
}

fn expectation(response: &str, req: &Sip) -> Expect {
    let fin = |statuses: &[u16], headers: &[&'static str]| Expect::Final {
        statuses: statuses.to_vec(),
        headers: headers.to_vec(),
    };
    let r = response;
    if r.starts_with("parsed; no matching transaction so dropped") || r.starts_with("dropped") {
        Expect::Nothing
    } else if r.starts_with("400, or handled") || r.starts_with("400 (or handled liberally") {
        match handled_normally(req) {
            Expect::Final { mut statuses, .. } => {
                statuses.push(400);
                fin(&statuses, &[])
            }
            Expect::Nothing => unreachable!(),
        }
    } else if r.starts_with("400") {
        fin(&[400], &[])
    } else if r.starts_with("505") {
        fin(&[505], &[])
    } else if r.starts_with("416") {
        fin(&[416], &[])
    } else if r.starts_with("420 with Unsupported") {
        fin(&[420], &["Unsupported"])
    } else if r.starts_with("415 with Accept") {
        fin(&[415], &["Accept"])
    } else if r.starts_with("406") {
        fin(&[406], &[])
    } else if r.starts_with("405 or 501 (not a registrar) or 401") {
        fin(&[405, 501, 401], &[])
    } else if r.starts_with("405 or 501") {
        fin(&[405, 501], &["Allow"])
    } else if r.starts_with("processed as by an endpoint (200 to OPTIONS)") {
        fin(&[200], &["Allow"])
    } else if r.starts_with("handled normally (REGISTER: 405 or 501") {
        fin(&[405, 501], &["Allow"])
    } else if r.starts_with("handled normally") || r.starts_with("only the first message is read") {
        handled_normally(req)
    } else {
        panic!("expected.tsv response {r:?} has no rule in this test: add one")
    }
}

fn torture_daemon() -> Roomline {
    // a trunk for any loopback source (each test sends from its own 127.45.x.y)
    Roomline::start(
        offline_setup()
            .trunk("local", "inbound:\n  allowed_addresses: [127.0.0.0/8]\n")
            .dialplan("main", &reject_all_plan()),
    )
}

fn torture(name: &str) {
    let (kind, response) = expected(name);
    let data = std::fs::read(data_dir().join(format!("{name}.dat"))).unwrap();
    let req = Sip::parse(&data).expect("the test's reader splits the message");
    let method = req.method().to_string();
    let want = if kind == "response" {
        Expect::Nothing
    } else {
        expectation(&response, &req)
    };
    let rl = torture_daemon();
    let sock = torture_socket();
    // the bytes exactly as in the file
    sock.send_to(&data, rl.sip_addr()).unwrap();
    match &want {
        Expect::Nothing => {
            let got = collect_udp(&sock, SILENCE);
            assert!(
                got.is_empty(),
                "{name} ({response}): expected no answer, got:\n{}",
                got.iter()
                    .map(|m| m.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n----\n")
            );
        }
        Expect::Final { statuses, headers } => {
            let until = Instant::now() + ANSWER_WITHIN;
            let mut seen = Vec::new();
            let fin = loop {
                let m = recv_udp(&sock, until).unwrap_or_else(|| {
                    panic!(
                        "{name} ({response}): no final response within {ANSWER_WITHIN:?}; got {:?}\n{}",
                        seen,
                        rl.log_tail(40)
                    )
                });
                assert!(
                    m.is_response(),
                    "{name}: the daemon sent a request: {}",
                    m.text
                );
                seen.push(m.status());
                if m.status().is_some_and(|s| s >= 200) {
                    break m;
                }
                // provisional responses: only to an INVITE
                assert_eq!(
                    method, "INVITE",
                    "{name}: provisional to {method}: {}",
                    m.text
                );
            };
            let status = fin.status().unwrap();
            assert!(
                statuses.contains(&status),
                "{name} ({response}): got {status}, expected one of {statuses:?}:\n{}",
                fin.text
            );
            for h in headers {
                assert!(
                    fin.header(h).is_some(),
                    "{name}: {status} without {h}:\n{}",
                    fin.text
                );
            }
            // the response belongs to this request
            if let Some(cid) = req.header("Call-ID") {
                assert_eq!(fin.call_id(), cid, "{name}: Call-ID of the response");
            }
            if let Some(cseq) = req.header("CSeq") {
                let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
                assert_eq!(
                    norm(fin.header("CSeq").unwrap_or("")),
                    norm(cseq),
                    "{name}: CSeq"
                );
            }
            if status == 420 {
                // Unsupported lists every option of Require (RFC 3261 section 8.2.2.3)
                let unsupported = fin.tokens("Unsupported");
                for opt in req.tokens("Require") {
                    assert!(
                        unsupported.contains(&opt),
                        "{name}: {opt} not in {unsupported:?}"
                    );
                }
            }
            if method == "INVITE" && status >= 300 && status != 400 {
                let ruri = req.start.split_whitespace().nth(1).unwrap_or("");
                sock.send_to(ack_for(ruri, &fin).as_bytes(), rl.sip_addr())
                    .unwrap();
            }
            if name == "dblreq" {
                // only the first message (the REGISTER) is read: nothing answers the INVITE
                let later = collect_udp(&sock, SILENCE);
                assert!(
                    later.iter().all(|m| m.cseq_method() == "REGISTER"),
                    "dblreq: the second message was answered: {later:?}"
                );
            }
        }
    }
    assert_still_serving(&sock, &rl, name);
    rl.assert_no_leaks(Duration::from_secs(20));
}

macro_rules! torture {
    ($($name:ident),* $(,)?) => { mod rfc4475 { $( #[test] fn $name() { super::torture(stringify!($name)); } )* } };
}

torture!(
    wsinv, intmeth, esc01, escnull, longreq, dblreq, mpart01, unreason, noreason, badinv01, clerr,
    ncl, scalar02, ltgtruri, lwsruri, trws, escruri, baddate, regbadct, badaspec, badvers,
    mismatch01, badbranch, insuf, unkscm, novelsc, bext01, invut, regaut01, multi01, bcast, zeromf,
    cparam01, cparam02, sdp01, inv2543,
);

#[test]
fn every_listed_torture_file_has_a_test() {
    let tsv = std::fs::read_to_string(data_dir().join("expected.tsv")).unwrap();
    let src = include_str!("sip_endpoint.rs");
    let mut n = 0;
    for name in tsv.lines().skip(1).filter_map(|l| l.split('\t').next()) {
        n += 1;
        assert!(
            src.contains(&format!(" {name},")),
            "{name} from expected.tsv has no test here"
        );
    }
    assert!(n >= 36);
}

/// test.dat (not from the RFC, not in expected.tsv) has no SIP version: refused with 400
/// or dropped, never answered as a request, and the daemon keeps serving.
#[test]
fn request_line_without_version_is_refused_and_the_daemon_keeps_serving() {
    let rl = torture_daemon();
    let sock = torture_socket();
    let data = std::fs::read(data_dir().join("test.dat")).unwrap();
    sock.send_to(&data, rl.sip_addr()).unwrap();
    let got = collect_udp(&sock, SILENCE);
    assert!(
        got.iter().all(|m| m.status() == Some(400)),
        "test.dat: {got:?}"
    );
    assert_still_serving(&sock, &rl, "test.dat");
}

/// No response is ever sent to a response (RFC 3261 section 17.1.3, 18.1.2): the torture
/// responses, and well-formed and malformed responses matching no transaction, over UDP
/// and over TCP; the daemon keeps serving on both.
#[test]
fn no_response_is_ever_sent_to_a_response() {
    let rl = torture_daemon();
    let sock = torture_socket();
    let me = sock.local_addr().unwrap();
    let mut sent: Vec<Vec<u8>> = ["unreason", "noreason", "bcast"]
        .iter()
        .map(|n| std::fs::read(data_dir().join(format!("{n}.dat"))).unwrap())
        .collect();
    let made = |status: &str, cseq: &str| {
        format!(
            "SIP/2.0 {status}\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{}\r\n\
             From: <sip:a@{me}>;tag=1\r\nTo: <sip:b@{}>;tag=2\r\nCall-ID: {}\r\nCSeq: {cseq}\r\n\
             Content-Length: 0\r\n\r\n",
            unique("r"),
            rl.sip_addr(),
            unique("stray"),
        )
        .into_bytes()
    };
    sent.push(made("200 OK", "1 INVITE"));
    sent.push(made("180 Ringing", "1 INVITE"));
    sent.push(made("503 Service Unavailable", "2 BYE"));
    sent.push(made("401 Unauthorized", "1 OPTIONS"));
    // malformed responses: a status out of range, and CSeq missing its method
    sent.push(made("99 Odd", "1 INVITE"));
    sent.push(made("200 OK", "1"));
    for m in &sent {
        sock.send_to(m, rl.sip_addr()).unwrap();
    }
    let got = collect_udp(&sock, SILENCE);
    assert!(got.is_empty(), "answers to responses over UDP: {got:?}");
    assert_still_serving(&sock, &rl, "responses over UDP");

    let mut tcp = TcpStream::connect(rl.sip_addr()).unwrap();
    let local = tcp.local_addr().unwrap();
    let over_tcp = String::from_utf8(made("200 OK", "1 INVITE"))
        .unwrap()
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    tcp.write_all(over_tcp.as_bytes()).unwrap();
    let conn = StreamConn::new(tcp);
    assert!(
        conn.recv(SILENCE).is_none(),
        "an answer to a response over TCP"
    );
    // the same connection still serves
    let cid = unique("tcp-alive");
    conn.send(&options_text(
        &local.to_string(),
        "TCP",
        &cid,
        &rl.sip_addr(),
    ));
    let m = conn
        .recv_call(&cid, ANSWER_WITHIN)
        .expect("OPTIONS over TCP answered");
    assert_eq!(m.status(), Some(200), "{}", m.text);
}

/// An ACK is never answered either (RFC 3261 section 17.1.1.3): not a malformed one (no
/// Request-URI, as a UAC that lost its dialog's target sends; a CSeq method that is not
/// ACK), and not one that matches no transaction.
#[test]
fn malformed_or_stray_ack_gets_no_response() {
    let rl = torture_daemon();
    let sock = torture_socket();
    let me = sock.local_addr().unwrap();
    let ack = |ruri: &str, cseq: &str| {
        format!(
            "ACK {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{}\r\n\
             From: <sip:a@{me}>;tag=1\r\nTo: <sip:b@{}>;tag=2\r\nCall-ID: {}\r\nCSeq: {cseq}\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            unique("ack"),
            rl.sip_addr(),
            unique("stray-ack"),
        )
    };
    let target = format!("sip:b@{}", rl.sip_addr());
    for m in [
        ack("", "1 ACK"),
        ack(&target, "1 INVITE"),
        ack(&target, "1 ACK"),
    ] {
        sock.send_to(m.as_bytes(), rl.sip_addr()).unwrap();
    }
    let got = collect_udp(&sock, SILENCE);
    assert!(got.is_empty(), "answers to ACKs: {got:?}");
    assert_still_serving(&sock, &rl, "ACKs");
}

// ---------------------------------------------------------------------------------------
// Stream connections (TCP, and TLS through openssl s_client)
// ---------------------------------------------------------------------------------------

enum StreamEvent {
    Msg(Sip),
    Closed,
}

/// A SIP stream connection: messages are framed by Content-Length on a reader thread.
struct StreamConn {
    writer: std::sync::Mutex<Box<dyn Write + Send>>,
    rx: mpsc::Receiver<StreamEvent>,
    closed: std::sync::atomic::AtomicBool,
}

impl StreamConn {
    fn new(tcp: TcpStream) -> StreamConn {
        let reader = tcp.try_clone().unwrap();
        StreamConn::from_parts(Box::new(tcp), Box::new(reader))
    }

    fn from_parts(writer: Box<dyn Write + Send>, mut reader: Box<dyn Read + Send>) -> StreamConn {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = vec![0u8; 16384];
            loop {
                // frame what we have
                loop {
                    while buf.starts_with(b"\r\n") {
                        buf.drain(..2);
                    }
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        break;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len = content_length(&head).unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        break;
                    }
                    let msg: Vec<u8> = buf.drain(..end + 4 + len).collect();
                    if let Some(m) = Sip::parse(&msg) {
                        let _ = tx.send(StreamEvent::Msg(m));
                    }
                }
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => {
                        let _ = tx.send(StreamEvent::Closed);
                        return;
                    }
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        StreamConn {
            writer: std::sync::Mutex::new(writer),
            rx,
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn send(&self, text: &str) {
        let mut w = self.writer.lock().unwrap();
        w.write_all(text.as_bytes()).expect("write to the stream");
        w.flush().expect("flush the stream");
    }

    /// The next message within `within`; None on timeout or once the peer closed.
    fn recv(&self, within: Duration) -> Option<Sip> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        match self.rx.recv_timeout(within) {
            Ok(StreamEvent::Msg(m)) => Some(m),
            Ok(StreamEvent::Closed) => {
                self.closed.store(true, Ordering::Relaxed);
                None
            }
            Err(_) => None,
        }
    }

    /// The next message of `call_id` within `within` (others skipped).
    fn recv_call(&self, call_id: &str, within: Duration) -> Option<Sip> {
        let until = Instant::now() + within;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            let m = self.recv(left)?;
            if m.call_id() == call_id {
                return Some(m);
            }
        }
    }

    /// Whether the peer closed the connection within `within` (messages before it are
    /// returned too).
    fn wait_closed(&self, within: Duration) -> (bool, Vec<Sip>) {
        let until = Instant::now() + within;
        let mut got = Vec::new();
        loop {
            if self.closed.load(Ordering::Relaxed) {
                return (true, got);
            }
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return (false, got);
            };
            match self.rx.recv_timeout(left) {
                Ok(StreamEvent::Msg(m)) => got.push(m),
                Ok(StreamEvent::Closed) => {
                    self.closed.store(true, Ordering::Relaxed);
                }
                Err(_) => return (false, got),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// A small UA (digest client, raw retransmissions, TLS calls)
// ---------------------------------------------------------------------------------------

enum Wire {
    Udp { sock: UdpSocket, to: String },
    Stream(StreamConn),
}

/// One phone: its wire to the daemon, its Via/Contact address and transport name.
struct Ua {
    wire: Wire,
    local: SocketAddr,
    transport: &'static str,
    call_id: String,
    from_tag: String,
    rtp: RtpPeer,
}

impl Ua {
    fn udp(rl: &Roomline) -> Ua {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = sock.local_addr().unwrap();
        Ua::with(
            Wire::Udp {
                sock,
                to: rl.sip_addr(),
            },
            local,
            "UDP",
        )
    }

    fn tcp(rl: &Roomline) -> Ua {
        let tcp = TcpStream::connect(rl.sip_addr()).unwrap();
        let local = tcp.local_addr().unwrap();
        Ua::with(Wire::Stream(StreamConn::new(tcp)), local, "TCP")
    }

    fn with(wire: Wire, local: SocketAddr, transport: &'static str) -> Ua {
        Ua {
            wire,
            local,
            transport,
            call_id: unique("ua-call"),
            from_tag: format!("{}", rand_u32()),
            rtp: RtpPeer::bind(),
        }
    }

    fn send(&self, text: &str) {
        match &self.wire {
            Wire::Udp { sock, to } => {
                sock.send_to(text.as_bytes(), to.as_str()).unwrap();
            }
            Wire::Stream(c) => c.send(text),
        }
    }

    /// The next message of this UA's call within `within`.
    fn recv(&self, within: Duration) -> Option<Sip> {
        match &self.wire {
            Wire::Udp { sock, .. } => {
                let until = Instant::now() + within;
                loop {
                    let m = recv_udp(sock, until)?;
                    if m.call_id() == self.call_id {
                        return Some(m);
                    }
                }
            }
            Wire::Stream(c) => c.recv_call(&self.call_id, within),
        }
    }

    /// Responses with CSeq method `method` until a final one: (provisional statuses, final).
    fn final_response(&self, method: &str, rl: &Roomline) -> (Vec<u16>, Sip) {
        let until = Instant::now() + Duration::from_secs(30);
        let mut prov = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let m = self.recv(left).unwrap_or_else(|| {
                panic!(
                    "no final response to {method} (provisional: {prov:?})\n{}",
                    rl.log_tail(40)
                )
            });
            if !m.is_response() || m.cseq_method() != method {
                continue;
            }
            match m.status() {
                Some(s) if s >= 200 => return (prov, m),
                Some(s) => prov.push(s),
                None => {}
            }
        }
    }

    fn sdp(&self) -> String {
        format!(
            "v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-15\r\na=ptime:20\r\n",
            self.rtp.port()
        )
    }

    fn ruri(&self, rl: &Roomline) -> String {
        format!("sip:{CALLED}@{}", rl.sip_addr())
    }

    fn invite(&self, rl: &Roomline, cseq: u32, branch: &str, extra: &str) -> String {
        let sdp = self.sdp();
        let scheme = if self.transport == "TLS" {
            "sips"
        } else {
            "sip"
        };
        let tp = match self.transport {
            "TCP" => ";transport=tcp",
            "TLS" => ";transport=tls",
            _ => "",
        };
        format!(
            "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/{t} {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: \"Caller\" <sip:{CALLER}@{me}>;tag={tag}\r\n\
             To: <sip:{CALLED}@{host}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} INVITE\r\n\
             Contact: <{scheme}:phone@{me}{tp}>\r\n{extra}Content-Type: application/sdp\r\n\
             Content-Length: {len}\r\n\r\n{sdp}",
            ruri = self.ruri(rl),
            t = self.transport,
            me = self.local,
            tag = self.from_tag,
            host = rl.sip_addr(),
            cid = self.call_id,
            len = sdp.len(),
        )
    }

    /// ACK of a non-2xx final (same branch as the INVITE).
    fn ack_non2xx(&self, rl: &Roomline, resp: &Sip) -> String {
        ack_for(&self.ruri(rl), resp)
    }

    /// A request inside the dialog a 2xx created: to its Contact, its To with tag, a new
    /// branch.
    fn in_dialog(&self, method: &str, cseq: u32, ok: &Sip) -> String {
        let target = ok.contact_uri().expect("Contact in the 2xx");
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/{t} {me};branch=z9hG4bK-{b};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n\
             Content-Length: 0\r\n\r\n",
            t = self.transport,
            me = self.local,
            b = unique("d"),
            from = ok.header("From").unwrap_or(""),
            to = ok.header("To").unwrap_or(""),
            cid = self.call_id,
        )
    }

    fn cancel(&self, rl: &Roomline, branch: &str) -> String {
        format!(
            "CANCEL {ruri} SIP/2.0\r\nVia: SIP/2.0/{t} {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: \"Caller\" <sip:{CALLER}@{me}>;tag={tag}\r\n\
             To: <sip:{CALLED}@{host}>\r\nCall-ID: {cid}\r\nCSeq: 1 CANCEL\r\n\
             Content-Length: 0\r\n\r\n",
            ruri = self.ruri(rl),
            t = self.transport,
            me = self.local,
            tag = self.from_tag,
            host = rl.sip_addr(),
            cid = self.call_id,
        )
    }
}

// --- digest (RFC 7616), computed here with md-5 and sha2, not with Roomline's code ------

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(algorithm: &str, data: &str) -> String {
    use sha2::Digest;
    match algorithm {
        "MD5" => hex(&md5::Md5::digest(data.as_bytes())),
        "SHA-256" => hex(&sha2::Sha256::digest(data.as_bytes())),
        a => panic!("no {a} here"),
    }
}

/// The parameters of a `Digest ...` challenge.
fn challenge_params(value: &str) -> std::collections::HashMap<String, String> {
    let re = regex::Regex::new(r#"([A-Za-z-]+)\s*=\s*(?:"([^"]*)"|([^,\s]+))"#).unwrap();
    let rest = value
        .trim()
        .strip_prefix("Digest")
        .expect("a Digest challenge");
    re.captures_iter(rest)
        .map(|c| {
            let v = c.get(2).or(c.get(3)).map_or("", |m| m.as_str());
            (c[1].to_ascii_lowercase(), v.to_string())
        })
        .collect()
}

/// The first challenge of a 401 whose algorithm this client supports (RFC 8760 section
/// 2.4 orders them by the server's preference), answered as an Authorization header.
fn authorization(resp: &Sip, algorithm: &str, user: &str, pass: &str, uri: &str) -> String {
    let challenges = resp.headers_named("WWW-Authenticate");
    let ch = challenges
        .iter()
        .map(|c| challenge_params(c))
        .find(|p| p.get("algorithm").map(String::as_str).unwrap_or("MD5") == algorithm)
        .unwrap_or_else(|| panic!("no {algorithm} challenge in {challenges:?}"));
    let realm = &ch["realm"];
    let nonce = &ch["nonce"];
    assert!(
        ch.get("qop")
            .is_some_and(|q| q.split(',').any(|x| x.trim() == "auth")),
        "qop=auth offered: {ch:?}"
    );
    let cnonce = format!("{:08x}", rand_u32());
    let nc = "00000001";
    let ha1 = hash(algorithm, &format!("{user}:{realm}:{pass}"));
    let ha2 = hash(algorithm, &format!("INVITE:{uri}"));
    let response = hash(
        algorithm,
        &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"),
    );
    format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", \
         uri=\"{uri}\", response=\"{response}\", algorithm={algorithm}, qop=auth, nc={nc}, \
         cnonce=\"{cnonce}\"\r\n"
    )
}

/// The daemon's 401: SHA-256 offered first, then MD5, both with qop=auth (RFC 8760).
fn assert_challenge(resp: &Sip, stale: bool) {
    assert_eq!(resp.status(), Some(401), "{}", resp.text);
    let chs: Vec<_> = resp
        .headers_named("WWW-Authenticate")
        .iter()
        .map(|c| challenge_params(c))
        .collect();
    let algs: Vec<&str> = chs.iter().map(|c| c["algorithm"].as_str()).collect();
    assert_eq!(algs, ["SHA-256", "MD5"], "{}", resp.text);
    for c in &chs {
        assert!(c["qop"].split(',').any(|q| q.trim() == "auth"), "{c:?}");
        assert!(!c["nonce"].is_empty() && !c["realm"].is_empty(), "{c:?}");
        assert_eq!(
            c.get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
            stale,
            "stale in {}",
            resp.text
        );
    }
}

const AUTH_TRUNK: &str =
    "inbound:\n  allowed_addresses: [127.0.0.1/32]\n  auth: {username: u, password: p}\n";

/// INVITE -> 401 (ACKed) -> INVITE with credentials: the final response to the second.
fn authenticated_invite(ua: &Ua, rl: &Roomline, algorithm: &str, password: &str) -> Sip {
    let b1 = format!("z9hG4bK-{}", unique("inv1"));
    ua.send(&ua.invite(rl, 1, &b1, ""));
    let (_, challenge) = ua.final_response("INVITE", rl);
    assert_challenge(&challenge, false);
    ua.send(&ua.ack_non2xx(rl, &challenge));
    let auth = authorization(&challenge, algorithm, "u", password, &ua.ruri(rl));
    let b2 = format!("z9hG4bK-{}", unique("inv2"));
    ua.send(&ua.invite(rl, 2, &b2, &auth));
    let (_, fin) = ua.final_response("INVITE", rl);
    fin
}

/// A digest-authenticated call: challenged, answered with the right password (SHA-256,
/// the first algorithm offered, over UDP; MD5 over TCP), established (200 with SDP, the
/// phone in the room), hung up by the phone (BYE 200), and gone from the room.
fn digest_call(tcp: bool, algorithm: &str) {
    let lk = LiveKitServer::start();
    let room = if tcp {
        "auth-call-tcp"
    } else {
        "auth-call-udp"
    };
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk("local", AUTH_TRUNK)
            .dialplan("main", &room_plan(room, "")),
    );
    let ua = if tcp { Ua::tcp(&rl) } else { Ua::udp(&rl) };
    let ok = authenticated_invite(&ua, &rl, algorithm, "p");
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    assert!(
        String::from_utf8_lossy(&ok.body).contains("m=audio"),
        "SDP answer: {}",
        ok.text
    );
    ua.send(&ua.in_dialog("ACK", 2, &ok));
    wait_phone_in_room(&lk, room);
    ua.send(&ua.in_dialog("BYE", 3, &ok));
    let (_, bye_ok) = ua.final_response("BYE", &rl);
    assert_eq!(bye_ok.status(), Some(200), "{}", bye_ok.text);
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
    // the challenge and the success are both counted
    assert_eq!(auth_count(&rl, "challenge"), 1.0);
    assert_eq!(auth_count(&rl, "success"), 1.0);
    assert_eq!(auth_count(&rl, "rejected"), 0.0);
}

/// `roomline_sip_auth_total{result}` (0 when the sample is absent).
fn auth_count(rl: &Roomline, result: &str) -> f64 {
    rl.metric(&format!("roomline_sip_auth_total{{result=\"{result}\"}}"))
        .unwrap_or(0.0)
}

#[test]
fn digest_challenge_answered_with_sha256_establishes_the_call_udp() {
    digest_call(false, "SHA-256");
}

#[test]
fn digest_challenge_answered_with_md5_establishes_the_call_tcp() {
    digest_call(true, "MD5");
}

/// The right username with a wrong password gets 403 (after the 401), over UDP and TCP;
/// no call is left.
fn wrong_password(tcp: bool) {
    let rl = Roomline::start(
        offline_setup()
            .trunk("local", AUTH_TRUNK)
            .dialplan("main", &reject_all_plan()),
    );
    let ua = if tcp { Ua::tcp(&rl) } else { Ua::udp(&rl) };
    let fin = authenticated_invite(&ua, &rl, "SHA-256", "not-p");
    assert_eq!(fin.status(), Some(403), "{}", fin.text);
    ua.send(&ua.ack_non2xx(&rl, &fin));
    rl.assert_no_leaks(Duration::from_secs(20));
    // a failed authentication is counted as such, never as a success
    assert_eq!(auth_count(&rl, "challenge"), 1.0);
    assert_eq!(auth_count(&rl, "rejected"), 1.0);
    assert_eq!(auth_count(&rl, "success"), 0.0);
}

#[test]
fn digest_wrong_password_gets_403_udp() {
    wrong_password(false);
}

#[test]
fn digest_wrong_password_gets_403_tcp() {
    wrong_password(true);
}

/// With `sip.auth_nonce_ttl: 1s`, a right answer to a nonce older than that gets a new
/// 401 with stale=true on every challenge; answering the fresh nonce goes through (the
/// dialplan's 486 here, so no room is needed).
fn stale_nonce(tcp: bool) {
    let rl = Roomline::start(
        offline_setup()
            .trunk("local", AUTH_TRUNK)
            .dialplan("main", &reject_all_plan())
            .sip_extra("  auth_nonce_ttl: 1s\n"),
    );
    let ua = if tcp { Ua::tcp(&rl) } else { Ua::udp(&rl) };
    let b1 = format!("z9hG4bK-{}", unique("inv1"));
    ua.send(&ua.invite(&rl, 1, &b1, ""));
    let (_, challenge) = ua.final_response("INVITE", &rl);
    assert_challenge(&challenge, false);
    ua.send(&ua.ack_non2xx(&rl, &challenge));
    // nonces carry whole seconds: more than 1 s must pass, so wait 2.5 s
    std::thread::sleep(Duration::from_millis(2500));
    let auth = authorization(&challenge, "SHA-256", "u", "p", &ua.ruri(&rl));
    let b2 = format!("z9hG4bK-{}", unique("inv2"));
    ua.send(&ua.invite(&rl, 2, &b2, &auth));
    let (_, again) = ua.final_response("INVITE", &rl);
    assert_challenge(&again, true);
    ua.send(&ua.ack_non2xx(&rl, &again));
    // the fresh nonce is accepted
    let auth = authorization(&again, "SHA-256", "u", "p", &ua.ruri(&rl));
    let b3 = format!("z9hG4bK-{}", unique("inv3"));
    ua.send(&ua.invite(&rl, 3, &b3, &auth));
    let (_, fin) = ua.final_response("INVITE", &rl);
    assert_eq!(fin.status(), Some(DIALPLAN_REJECT), "{}", fin.text);
    ua.send(&ua.ack_non2xx(&rl, &fin));
    rl.assert_no_leaks(Duration::from_secs(20));
}

#[test]
fn digest_expired_nonce_gets_401_stale_udp() {
    stale_nonce(false);
}

#[test]
fn digest_expired_nonce_gets_401_stale_tcp() {
    stale_nonce(true);
}

/// sipp's side of digest auth: its INVITE is challenged (401 with a SHA-256 and an MD5
/// challenge, in that order), it ACKs, and answers the MD5 challenge's live nonce with a
/// response that is not the digest of the password: 403, ACKed. (sipp cannot compute the
/// digest itself here: `-au/-ap` answers only the first challenge, and only with MD5.)
fn sipp_wrong_digest(tcp: bool) {
    let rl = Roomline::start(
        offline_setup()
            .trunk("local", AUTH_TRUNK)
            .dialplan("main", &reject_all_plan()),
    );
    let ack = |cseq: u32| {
        format!(
            r#"  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: {cseq} ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"#
        )
    };
    let second = invite_xml("[branch]")
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace(
            "      Max-Forwards: 70\n      Content-Type",
            "      Authorization: Digest username=\"u\", realm=\"roomline\", nonce=\"[$nonce]\", uri=\"sip:[service]@[remote_ip]:[remote_port]\", response=\"00000000000000000000000000000000\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"0a4f113b\"\n      Max-Forwards: 70\n      Content-Type",
        );
    assert!(second.contains("Authorization"), "{second}");
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="wrong-digest">
{first}  <recv response="100" optional="true"/>
  <recv response="401">
    <action>
      <ereg regexp="nonce=&quot;([^&quot;]+)&quot;, algorithm=MD5" search_in="msg" check_it="true" assign_to="all,nonce"/>
    </action>
  </recv>
{ack1}{second}  <recv response="100" optional="true"/>
  <recv response="403"/>
{ack2}  <Reference variables="all"/>
</scenario>
"#,
        first = invite_xml("[branch]"),
        ack1 = ack(1),
        ack2 = ack(2),
    );
    let mut args = sipp_args(&rl.sip_addr(), tcp);
    args.extend(
        ["-s", CALLED, "-mi", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(["-mp".to_string(), free_media_port().to_string()]);
    let run = Sipp::spawn(Some(&xml), &args).wait(Duration::from_secs(60));
    run.expect_success();
    let finals: Vec<u16> = run
        .received_statuses()
        .into_iter()
        .filter(|s| *s >= 200)
        .collect();
    assert_eq!(finals, vec![401, 403], "{}", run.describe());
    let challenge = run.first_received("SIP/2.0 401");
    assert_challenge(
        &Sip::parse(challenge.replace('\n', "\r\n").as_bytes()).unwrap(),
        false,
    );
    rl.assert_no_leaks(Duration::from_secs(20));
}

#[test]
fn sipp_invite_challenged_then_wrong_digest_gets_403_udp() {
    sipp_wrong_digest(false);
}

#[test]
fn sipp_invite_challenged_then_wrong_digest_gets_403_tcp() {
    sipp_wrong_digest(true);
}

/// RFC 3261 section 17.2.3: a server transaction is the branch, the top Via's sent-by
/// and the method (an ACK belongs to its INVITE). Requests sharing one branch value, as
/// RFC 4475's messages do, but differing in sent-by or method each get their own answer
/// (their own Call-ID, CSeq and status); a true retransmission gets the first answer
/// again, the same To tag and all; an RFC 2543 branch (no magic cookie) is matched by
/// its other fields. The daemon keeps serving.
#[test]
fn requests_sharing_a_branch_get_their_own_answers() {
    let rl = Roomline::start(offline_setup().dialplan("main", &reject_all_plan()));
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sock.local_addr().unwrap().to_string();
    let target = rl.sip_addr();
    let shared = format!("z9hG4bK-{}", unique("shared"));
    let request = |method: &str, sent_by: &str, branch: &str, call_id: &str| {
        format!(
            "{method} sip:{CALLED}@{target} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {sent_by};branch={branch};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=f-{call_id}\r\n\
             To: <sip:{CALLED}@{target}>\r\nCall-ID: {call_id}\r\nCSeq: 7 {method}\r\n\
             Contact: <sip:probe@{me}>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let ask = |text: &str| -> Sip {
        let call_id = Sip::parse(text.as_bytes()).unwrap().call_id().to_string();
        sock.send_to(text.as_bytes(), &target).unwrap();
        let until = Instant::now() + ANSWER_WITHIN;
        loop {
            let m = recv_udp(&sock, until)
                .unwrap_or_else(|| panic!("no answer to\n{text}\n{}", rl.log_tail(30)));
            if m.call_id() == call_id && m.status().is_some_and(|s| s >= 200) {
                return m;
            }
        }
    };
    let c1 = unique("c1");
    let first_text = request("OPTIONS", &me, &shared, &c1);
    let first = ask(&first_text);
    assert_eq!(first.status(), Some(200), "{}", first.text);
    // the same request again: the cached answer, byte for byte
    let again = ask(&first_text);
    assert_eq!(
        again.text, first.text,
        "a retransmission gets the first answer"
    );
    // same branch, another sent-by (a host elsewhere; the answer still comes here by
    // received/rport): its own 200
    let c2 = unique("c2");
    let other_host = ask(&request("OPTIONS", "198.51.100.7:5099", &shared, &c2));
    assert_eq!(other_host.status(), Some(200), "{}", other_host.text);
    assert_eq!(other_host.call_id(), c2);
    assert_ne!(other_host.header("To"), first.header("To"));
    // same branch and sent-by, other methods: their own answers
    let c3 = unique("c3");
    let register = ask(&request("REGISTER", &me, &shared, &c3));
    assert!(
        matches!(register.status(), Some(405 | 501)),
        "{}",
        register.text
    );
    assert_eq!(register.header("CSeq"), Some("7 REGISTER"));
    let c4 = unique("c4");
    let bye = ask(&request("BYE", &me, &shared, &c4));
    assert_eq!(bye.status(), Some(481), "{}", bye.text);
    assert_eq!(bye.call_id(), c4);
    // the first is still its own transaction
    assert_eq!(ask(&first_text).text, first.text);
    // RFC 2543 branches: the same value with different From tag or Call-ID is another
    // request; the very same message is a retransmission
    let old = request("OPTIONS", &me, "2543-shared", &unique("o1"));
    let old_first = ask(&old);
    assert_eq!(ask(&old).text, old_first.text);
    let other_old = ask(&request("OPTIONS", &me, "2543-shared", &unique("o2")));
    assert_ne!(other_old.call_id(), old_first.call_id());
    assert_still_serving(&sock, &rl, "requests sharing a branch");
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// The same INVITE bytes sent twice from one UDP socket (same branch): the transaction
/// absorbs the copy and re-sends its last provisional response; exactly one call and one
/// participant exist; a CANCEL then ends it (200, 487) and nothing is left.
#[test]
fn retransmitted_invite_is_absorbed_by_its_transaction() {
    let lk = LiveKitServer::start();
    let room = "retransmitted-invite";
    let rl = Roomline::start(Setup::new(&lk).dialplan(
        "main",
        &room_plan(
            room,
            "    answer: on_first_track\n    ringing_timeout: 20s\n",
        ),
    ));
    let ua = Ua::udp(&rl);
    let branch = format!("z9hG4bK-{}", unique("retrans"));
    let invite = ua.invite(&rl, 1, &branch, "");
    ua.send(&invite);
    let until = Instant::now() + ANSWER_WITHIN;
    let mut first = Vec::new();
    while !first.contains(&180) {
        let m = ua
            .recv(until.saturating_duration_since(Instant::now()))
            .expect("100/180 to the INVITE");
        first.push(m.status().unwrap_or(0));
    }
    wait_phone_in_room(&lk, room);
    // the retransmission: byte for byte the same
    ua.send(&invite);
    let again = ua
        .recv(ANSWER_WITHIN)
        .expect("a provisional response again");
    assert_eq!(again.status(), Some(180), "{}", again.text);
    // one call, one participant: the 180 again is the copy's answer from the call's own
    // transaction, so the copy has been handled (and started nothing else)
    assert_eq!(active_calls(&rl), 1, "{}", rl.counts());
    let identity = format!("sip_{CALLER}");
    let ps = list_participants(&lk, room);
    assert_eq!(
        ps.iter()
            .filter(|p| p["identity"] == identity.as_str())
            .count(),
        1,
        "{ps:?}"
    );
    ua.send(&ua.cancel(&rl, &branch));
    let (_, cancel_ok) = ua.final_response("CANCEL", &rl);
    assert_eq!(cancel_ok.status(), Some(200), "{}", cancel_ok.text);
    let (_, fin) = ua.final_response("INVITE", &rl);
    assert_eq!(fin.status(), Some(487), "{}", fin.text);
    ua.send(&ua.ack_non2xx(&rl, &fin));
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

// ---------------------------------------------------------------------------------------
// sipp scenarios (UDP and TCP)
// ---------------------------------------------------------------------------------------

fn sipp_run(rl: &Roomline, tcp: bool, xml: &str, extra: &[&str]) -> SippRun {
    let mut args = sipp_args(&rl.sip_addr(), tcp);
    args.extend(extra.iter().map(|s| s.to_string()));
    Sipp::spawn(Some(xml), &args).wait(Duration::from_secs(60))
}

const OPTIONS_XML: &str = r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="options">
  <send retrans="500">
    <![CDATA[
      OPTIONS sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:ping@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 OPTIONS
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#;

/// An OPTIONS ping gets 200 with Allow (the methods Roomline serves) and Accept
/// (application/sdp among them).
fn options_ping(tcp: bool) {
    let rl = Roomline::start(offline_setup());
    let run = sipp_run(&rl, tcp, OPTIONS_XML, &["-s", "ping"]);
    run.expect_success();
    assert_eq!(run.received_statuses(), vec![200], "{}", run.describe());
    let ok = Sip::parse(run.received()[0].replace('\n', "\r\n").as_bytes()).unwrap();
    let allow = ok.tokens("Allow");
    for m in ["invite", "ack", "cancel", "bye", "options"] {
        assert!(allow.contains(m), "Allow lacks {m}: {}", ok.text);
    }
    assert!(
        ok.tokens("Accept").contains("application/sdp"),
        "Accept: {}",
        ok.text
    );
}

#[test]
fn sipp_options_ping_gets_200_with_allow_and_accept_udp() {
    options_ping(false);
}

#[test]
fn sipp_options_ping_gets_200_with_allow_and_accept_tcp() {
    options_ping(true);
}

const SDP: &str = "v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0 101
      a=rtpmap:0 PCMU/8000
      a=rtpmap:101 telephone-event/8000
      a=fmtp:101 0-15
      a=ptime:20";

fn invite_xml(branch: &str) -> String {
    format!(
        r#"  <send retrans="500">
    <![CDATA[
      INVITE sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch={branch}
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 INVITE
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Type: application/sdp
      Content-Length: [len]

      {SDP}
    ]]>
  </send>
"#
    )
}

const ACK_2XX_XML: &str = r#"  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:+15551230000@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Contact: <sip:sipp@[local_ip]:[local_port];transport=[transport]>
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
"#;

/// A UAC that calls, waits for a request from the test (the "go" INFO, see [`send_go`])
/// before it cancels, and ACKs the 487.
fn cancel_xml() -> String {
    format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="cancel">
{invite}  <recv response="100" optional="true"/>
  <recv response="180"/>
  <recv request="INFO"/>
  <send retrans="500">
    <![CDATA[
      CANCEL sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-cancel-[call_number]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>
      Call-ID: [call_id]
      CSeq: 1 CANCEL
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
  <recv response="487"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=z9hG4bK-cancel-[call_number]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
</scenario>
"#,
        invite = invite_xml("z9hG4bK-cancel-[call_number]")
    )
}

/// Tells the sipp UAC with Call-ID `call_id` listening on `sipp_port` to go on: an INFO
/// (from the test, not from the daemon) that its scenario waits for. Over TCP sipp takes
/// it on its listening socket; the connection is returned, for the caller to keep open
/// until sipp is done (closing it at once may lose the INFO unread).
#[must_use]
fn send_go(tcp: bool, sipp_port: u16, call_id: &str) -> Option<TcpStream> {
    let transport = if tcp { "TCP" } else { "UDP" };
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = sock.local_addr().unwrap();
    let info = format!(
        "INFO sip:sipp@127.0.0.1:{sipp_port} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {me};branch=z9hG4bK-{}\r\n\
         From: <sip:test@{me}>;tag=go\r\nTo: <sip:sipp@127.0.0.1:{sipp_port}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INFO\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        unique("go")
    );
    if tcp {
        let mut s = TcpStream::connect(("127.0.0.1", sipp_port)).unwrap();
        s.write_all(info.as_bytes()).unwrap();
        Some(s)
    } else {
        sock.send_to(info.as_bytes(), ("127.0.0.1", sipp_port))
            .unwrap();
        None
    }
}

fn sipp_port(args: &[String]) -> u16 {
    let i = args.iter().position(|a| a == "-p").unwrap();
    args[i + 1].parse().unwrap()
}

/// CANCEL before answer: the call rings (answer on_first_track, nobody publishes), the
/// phone's participant is in the room, sipp cancels: 200 to the CANCEL, 487 to the
/// INVITE, the participant leaves and nothing is left.
fn cancel_before_answer(tcp: bool) {
    let lk = LiveKitServer::start();
    let room = if tcp { "cancel-tcp" } else { "cancel-udp" };
    let rl = Roomline::start(Setup::new(&lk).dialplan(
        "main",
        &room_plan(
            room,
            "    answer: on_first_track\n    ringing_timeout: 20s\n",
        ),
    ));
    let call_id = unique("sipp-cancel");
    let mut args = sipp_args(&rl.sip_addr(), tcp);
    let port = sipp_port(&args);
    args.extend(
        ["-s", CALLED, "-cid_str", &call_id, "-mi", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(["-mp".to_string(), free_media_port().to_string()]);
    let sipp = Sipp::spawn(Some(&cancel_xml()), &args);
    // ringing, and in the room: now cancel
    wait_sipp_log(&sipp, "SIP/2.0 180 Ringing");
    wait_phone_in_room(&lk, room);
    assert_eq!(active_calls(&rl), 1);
    let _go = send_go(tcp, port, &call_id);
    let run = sipp.wait(Duration::from_secs(60));
    run.expect_success();
    let got = run.received();
    let find = |status: &str, method: &str| {
        got.iter().any(|m| {
            m.starts_with(&format!("SIP/2.0 {status}"))
                && m.lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("cseq:") && l.ends_with(method))
        })
    };
    assert!(find("200", "CANCEL"), "200 to CANCEL:\n{}", run.describe());
    assert!(find("487", "INVITE"), "487 to INVITE:\n{}", run.describe());
    assert!(
        !got.iter()
            .any(|m| m.starts_with("SIP/2.0 200") && m.contains("INVITE\n")),
        "the call was answered:\n{}",
        run.describe()
    );
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

#[test]
fn sipp_cancel_before_answer_gets_487_and_leaves_the_room_udp() {
    cancel_before_answer(false);
}

#[test]
fn sipp_cancel_before_answer_gets_487_and_leaves_the_room_tcp() {
    cancel_before_answer(true);
}

/// The phone hangs up: call answered once in the room (200), ACK, BYE -> 200, the
/// participant leaves.
fn bye_from_phone(tcp: bool) {
    let lk = LiveKitServer::start();
    let room = if tcp {
        "bye-phone-tcp"
    } else {
        "bye-phone-udp"
    };
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &room_plan(room, "")));
    let call_id = unique("sipp-bye");
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bye-from-phone">
{invite}  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
{ack}  <recv request="INFO"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#,
        invite = invite_xml("[branch]"),
        ack = ACK_2XX_XML
    );
    let mut args = sipp_args(&rl.sip_addr(), tcp);
    let port = sipp_port(&args);
    args.extend(
        ["-s", CALLED, "-cid_str", &call_id, "-mi", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(["-mp".to_string(), free_media_port().to_string()]);
    let sipp = Sipp::spawn(Some(&xml), &args);
    // answered (sipp sent its ACK) and in the room: now hang up
    wait_sipp_log(&sipp, "CSeq: 1 ACK");
    wait_phone_in_room(&lk, room);
    let _go = send_go(tcp, port, &call_id);
    let run = sipp.wait(Duration::from_secs(60));
    run.expect_success();
    let finals: Vec<u16> = run
        .received_statuses()
        .into_iter()
        .filter(|s| *s >= 200)
        .collect();
    assert_eq!(
        finals,
        vec![200, 200],
        "200 to INVITE and BYE:\n{}",
        run.describe()
    );
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

#[test]
fn sipp_bye_from_the_phone_ends_the_call_udp() {
    bye_from_phone(false);
}

#[test]
fn sipp_bye_from_the_phone_ends_the_call_tcp() {
    bye_from_phone(true);
}

/// The room is deleted during the call: the daemon sends BYE with a Reason header
/// (`Q.850;cause=16;text="room closed"`), sipp answers 200; nothing is left.
fn bye_from_daemon(tcp: bool) {
    let lk = LiveKitServer::start();
    let room = if tcp {
        "bye-daemon-tcp"
    } else {
        "bye-daemon-udp"
    };
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &room_plan(room, "")));
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bye-from-daemon">
{invite}  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
{ack}  <recv request="BYE"/>
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
</scenario>
"#,
        invite = invite_xml("[branch]"),
        ack = ACK_2XX_XML
    );
    let mut args = sipp_args(&rl.sip_addr(), tcp);
    args.extend(
        ["-s", CALLED, "-mi", "127.0.0.1"]
            .iter()
            .map(|s| s.to_string()),
    );
    args.extend(["-mp".to_string(), free_media_port().to_string()]);
    let sipp = Sipp::spawn(Some(&xml), &args);
    // answered (sipp sent its ACK) and in the room: now close the room
    wait_sipp_log(&sipp, "CSeq: 1 ACK");
    wait_phone_in_room(&lk, room);
    let (status, body) = room_service(&lk, "DeleteRoom", room, serde_json::json!({ "room": room }));
    assert_eq!(status, 200, "DeleteRoom: {body}");
    let run = sipp.wait(Duration::from_secs(60));
    run.expect_success();
    let bye = run.first_received("BYE ");
    let bye = Sip::parse(bye.replace('\n', "\r\n").as_bytes()).unwrap();
    let reason = bye
        .header("Reason")
        .unwrap_or_else(|| panic!("BYE without Reason:\n{}", bye.text));
    // RFC 3326: the cause of a normal clearing, and why
    assert!(
        reason.starts_with("Q.850")
            && reason.contains("cause=16")
            && reason.contains("room closed"),
        "Reason: {reason}"
    );
    rl.assert_no_leaks(Duration::from_secs(20));
}

#[test]
fn sipp_bye_from_the_daemon_when_the_room_is_deleted_udp() {
    bye_from_daemon(false);
}

#[test]
fn sipp_bye_from_the_daemon_when_the_room_is_deleted_tcp() {
    bye_from_daemon(true);
}

// ---------------------------------------------------------------------------------------
// Floods and size
// ---------------------------------------------------------------------------------------

/// One source sends OPTIONS far beyond its burst (200) as fast as it can: it gets fewer
/// answers than it sent, and no more than the token bucket allows (burst + rate x the
/// time the exchange took); another source is answered meanwhile and after.
#[test]
fn flood_from_one_source_is_limited_while_another_is_served() {
    let rl = Roomline::start(offline_setup());
    let flood = UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = flood.local_addr().unwrap();
    let reader = {
        let sock = flood.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut n = 0usize;
            let mut last = None;
            let mut buf = vec![0u8; 65536];
            sock.set_read_timeout(Some(Duration::from_millis(1500)))
                .unwrap();
            while let Ok((len, _)) = sock.recv_from(&mut buf) {
                if Sip::parse(&buf[..len]).is_some_and(|m| m.status() == Some(200)) {
                    n += 1;
                    last = Some(Instant::now());
                }
            }
            (n, last)
        })
    };
    const SENT: usize = 600;
    let t0 = Instant::now();
    for i in 0..SENT {
        let msg = options_text(
            &me.to_string(),
            "UDP",
            &format!("flood-{i}"),
            &rl.sip_addr(),
        );
        flood.send_to(msg.as_bytes(), rl.sip_addr()).unwrap();
    }
    // another source (its own address) is answered right after the burst
    let other = UdpSocket::bind("127.0.0.2:0").unwrap();
    assert_still_serving(&other, &rl, "a flood from another source");
    let (answered, last) = reader.join().unwrap();
    let span = last.map_or(Duration::ZERO, |l| l.saturating_duration_since(t0));
    let allowed = 200.0 + 100.0 * span.as_secs_f64() + 5.0;
    eprintln!("flood: {answered} of {SENT} answered over {span:?} (bucket allows {allowed:.0})");
    assert!(answered > 0, "the flooding source got no answer at all");
    assert!(answered < SENT, "every one of {SENT} OPTIONS was answered");
    assert!(
        (answered as f64) <= allowed,
        "{answered} answers, more than burst + rate x {span:?} = {allowed:.0}"
    );
    // the flooder itself is served again once its bucket refills: the reader stopped
    // after 1.5 s without an answer, and the bucket needs 10 ms for a token
    assert_still_serving(&flood, &rl, "the flood, once the bucket refilled");
    assert_still_serving(&other, &rl, "the flood");
}

/// A TCP message larger than 64 KiB (a Content-Length beyond the limit, and a header that
/// never ends) gets its connection closed; the daemon keeps serving, its memory bounded.
#[test]
fn oversized_tcp_message_closes_the_connection() {
    let rl = Roomline::start(offline_setup());
    let rss_before = rss_kib(rl.pid());
    // 1. Content-Length over the limit: closed (a 513 may come first)
    let tcp = TcpStream::connect(rl.sip_addr()).unwrap();
    let local = tcp.local_addr().unwrap();
    let conn = StreamConn::new(tcp.try_clone().unwrap());
    let big = 100 * 1024;
    let head = options_text(&local.to_string(), "TCP", &unique("big"), &rl.sip_addr()).replace(
        "Content-Length: 0",
        &format!("Content-Type: application/sdp\r\nContent-Length: {big}"),
    );
    conn.send(&head);
    let _ = (&tcp).write_all(&vec![b'a'; big]);
    let (closed, got) = conn.wait_closed(ANSWER_WITHIN);
    assert!(
        closed,
        "connection still open after a {big}-byte body: {got:?}"
    );
    assert!(
        got.iter()
            .all(|m| m.status().is_some_and(|s| s == 513 || s == 400)),
        "{got:?}"
    );
    // 2. a header line that never ends: closed while we keep writing; we stop at 16 MiB
    let mut tcp = TcpStream::connect(rl.sip_addr()).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let conn = StreamConn::new(tcp.try_clone().unwrap());
    let _ = tcp.write_all(b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nX-Long: ");
    let chunk = vec![b'x'; 16 * 1024];
    let mut written = 0usize;
    while written < 16 * 1024 * 1024 {
        match tcp.write(&chunk) {
            Ok(n) => written += n,
            Err(_) => break,
        }
    }
    let (closed, _) = conn.wait_closed(ANSWER_WITHIN);
    assert!(
        closed,
        "connection still open after {written} bytes of one header"
    );
    // still serving, on UDP and on a new TCP connection
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    assert_still_serving(&sock, &rl, "oversized TCP messages");
    let tcp = TcpStream::connect(rl.sip_addr()).unwrap();
    let local = tcp.local_addr().unwrap();
    let conn = StreamConn::new(tcp);
    let cid = unique("after-big");
    conn.send(&options_text(
        &local.to_string(),
        "TCP",
        &cid,
        &rl.sip_addr(),
    ));
    let m = conn
        .recv_call(&cid, ANSWER_WITHIN)
        .expect("OPTIONS over a new TCP connection");
    assert_eq!(m.status(), Some(200));
    let rss_after = rss_kib(rl.pid());
    eprintln!("daemon RSS: {rss_before} KiB before, {rss_after} KiB after ({written} bytes sent)");
    // far less than what was sent: the daemon did not buffer it
    assert!(
        rss_after.saturating_sub(rss_before) < 8 * 1024,
        "RSS grew from {rss_before} to {rss_after} KiB"
    );
}

/// `roomline_sip_invalid_messages_total` over all its labels, from /metrics.
fn invalid_messages(rl: &Roomline) -> f64 {
    let (status, body) = rl.get("/metrics").expect("/metrics");
    assert_eq!(status, 200);
    body.lines()
        .filter(|l| l.starts_with("roomline_sip_invalid_messages_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// RFC 5626 keep-alives over UDP (linphone sends CRLFCRLF every 30 s): no answer, not an
/// invalid message. A datagram that is not SIP, sent after them from the same socket, is
/// counted, so once it shows in /metrics the keep-alives have been handled too.
#[test]
fn udp_crlf_keepalives_are_not_invalid_messages_and_get_no_answer() {
    let rl = Roomline::start(offline_setup());
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let before = invalid_messages(&rl);
    for ping in ["\r\n\r\n", "\r\n\r\n", "\r\n"] {
        sock.send_to(ping.as_bytes(), rl.sip_addr()).unwrap();
    }
    sock.send_to(b"NOT SIP AT ALL\r\n\r\n", rl.sip_addr())
        .unwrap();
    let deadline = Instant::now() + ANSWER_WITHIN;
    while invalid_messages(&rl) < before + 1.0 {
        assert!(
            Instant::now() < deadline,
            "the non-SIP datagram was never counted as invalid\n{}",
            rl.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        invalid_messages(&rl),
        before + 1.0,
        "only the non-SIP datagram is invalid, not the keep-alives"
    );
    // nothing answered them: the first datagram back is the answer to this OPTIONS
    let me = sock.local_addr().unwrap();
    let call_id = unique("after-keepalive");
    let msg = options_text(&me.to_string(), "UDP", &call_id, &rl.sip_addr());
    sock.send_to(msg.as_bytes(), rl.sip_addr()).unwrap();
    sock.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer to OPTIONS");
    let first = Sip::parse(&buf[..n])
        .unwrap_or_else(|| panic!("not SIP: {:?}", String::from_utf8_lossy(&buf[..n])));
    assert_eq!(first.call_id(), call_id, "{}", first.text);
    assert_eq!(first.status(), Some(200), "{}", first.text);
}

/// RFC 5626 section 4.4.1 on TCP: each CRLFCRLF ping gets exactly one CRLF pong, the
/// connection stays in step (an OPTIONS on it is answered next), nothing is invalid.
#[test]
fn tcp_crlfcrlf_ping_gets_one_crlf_pong() {
    let rl = Roomline::start(offline_setup());
    let before = invalid_messages(&rl);
    let mut tcp = TcpStream::connect(rl.sip_addr()).unwrap();
    tcp.set_read_timeout(Some(ANSWER_WITHIN)).unwrap();
    let mut pong = [0u8; 2];
    tcp.write_all(b"\r\n\r\n").unwrap();
    tcp.read_exact(&mut pong).expect("a pong to the first ping");
    assert_eq!(&pong, b"\r\n");
    // two pings in one segment: two pongs
    let mut pongs = [0u8; 4];
    tcp.write_all(b"\r\n\r\n\r\n\r\n").unwrap();
    tcp.read_exact(&mut pongs).expect("pongs to two pings");
    assert_eq!(&pongs, b"\r\n\r\n");
    // the next bytes are the answer to an OPTIONS: no extra CRLF came with the pongs
    let local = tcp.local_addr().unwrap();
    let call_id = unique("after-ping");
    let msg = options_text(&local.to_string(), "TCP", &call_id, &rl.sip_addr());
    tcp.write_all(msg.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tcp.read_exact(&mut byte).expect("the answer to OPTIONS");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(head.starts_with("SIP/2.0 200 "), "{head:?}");
    assert!(head.contains(&call_id), "{head}");
    assert_eq!(
        invalid_messages(&rl),
        before,
        "a ping is not an invalid message"
    );
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------

/// A self-signed P-256 certificate for localhost / 127.0.0.1: (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(st.success(), "openssl req failed");
    (cert, key)
}

/// `openssl s_client` as the phone's TLS: it verifies the daemon's certificate against
/// `ca` (for the name localhost) and relays plain SIP on its stdin/stdout. Killed by PID
/// on drop.
struct TlsClient {
    child: Child,
}

impl Drop for TlsClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_connect(port: u16, ca: &Path, log: &Path) -> (TlsClient, StreamConn) {
    tls_connect_with(port, ca, log, &[])
}

/// `tls_connect` with more `s_client` arguments (e.g. `-cert`/`-key` for mutual TLS).
fn tls_connect_with(port: u16, ca: &Path, log: &Path, extra: &[&Path]) -> (TlsClient, StreamConn) {
    let mut child = Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
        ])
        .args([
            "-servername",
            "localhost",
            "-connect",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("-CAfile")
        .arg(ca)
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("openssl s_client");
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    (
        TlsClient { child },
        StreamConn::from_parts(Box::new(stdin), Box::new(stdout)),
    )
}

/// A call over TLS: OPTIONS -> 200 with Allow, then INVITE -> 100/180/200 with SDP and a
/// sips Contact, ACK, the phone in the room, BYE -> 200, gone; all on one TLS connection
/// made by OpenSSL, which verified the daemon's certificate.
#[test]
fn tls_options_and_call_with_openssl_client() {
    let lk = LiveKitServer::start();
    let room = "tls-call";
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let tls_port = free_port();
    let rl = Roomline::start(
        Setup::new(&lk)
            .dialplan("main", &room_plan(room, ""))
            .sip_extra(&format!(
                "    - transport: tls\n      address: 127.0.0.1:{tls_port}\n      cert: {}\n      key: {}\n",
                cert.display(),
                key.display()
            )),
    );
    let log = certs.path().join("s_client.log");
    let (_client, conn) = tls_connect(tls_port, &cert, &log);
    // the address the phone names in Via/Contact: TLS has no port of its own here (the
    // connection's local end is s_client's), responses go back on the connection
    let local: SocketAddr = "127.0.0.1:5061".parse().unwrap();
    let cid = unique("tls-options");
    conn.send(&options_text(
        &local.to_string(),
        "TLS",
        &cid,
        &format!("127.0.0.1:{tls_port}"),
    ));
    let ok = conn.recv_call(&cid, ANSWER_WITHIN).unwrap_or_else(|| {
        panic!(
            "no answer to OPTIONS over TLS; s_client: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    assert!(ok.tokens("Allow").contains("invite"), "{}", ok.text);

    let ua = Ua::with(Wire::Stream(conn), local, "TLS");
    let branch = format!("z9hG4bK-{}", unique("tls"));
    ua.send(&ua.invite(&rl, 1, &branch, ""));
    let (_, ok) = ua.final_response("INVITE", &rl);
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    let contact = ok.contact_uri().unwrap_or_default();
    assert!(
        contact.starts_with("sips:") || contact.contains("transport=tls"),
        "Contact over TLS: {contact}"
    );
    ua.send(&ua.in_dialog("ACK", 1, &ok));
    wait_phone_in_room(&lk, room);
    ua.send(&ua.in_dialog("BYE", 2, &ok));
    let (_, bye_ok) = ua.final_response("BYE", &rl);
    assert_eq!(bye_ok.status(), Some(200), "{}", bye_ok.text);
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// sipp answers the challenge itself (`-au/-ap`, its `[authentication]` keyword): sipp
/// knows MD5 only and takes the first challenge, so the trunk is configured with
/// `algorithms: [md5]` (the operator's switch for such peers); the call is then up and
/// ended by sipp's BYE, and nothing is left.
fn sipp_native_digest(tcp: bool) {
    let lk = LiveKitServer::start();
    let room = if tcp {
        "sipp-digest-tcp"
    } else {
        "sipp-digest-udp"
    };
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk(
                "local",
                "inbound:\n  allowed_addresses: [127.0.0.1/32]\n  auth: {username: u, password: p, algorithms: [md5]}\n",
            )
            .dialplan("main", &room_plan(room, "")),
    );
    let second = invite_xml("[branch]")
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace(
            "      Max-Forwards: 70\n      Content-Type",
            "      [authentication]\n      Max-Forwards: 70\n      Content-Type",
        );
    let xml = format!(
        r#"<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="sipp-digest">
{first}  <recv response="100" optional="true"/>
  <recv response="401" auth="true"/>
  <send>
    <![CDATA[
      ACK sip:[service]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
{second}  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="200" rtd="true" rrs="true"/>
  <send>
    <![CDATA[
      ACK [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 2 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <pause milliseconds="1000"/>
  <send retrans="500">
    <![CDATA[
      BYE [next_url] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: "Caller" <sip:{CALLER}@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      To: <sip:[service]@[remote_ip]:[remote_port]>[peer_tag_param]
      Call-ID: [call_id]
      CSeq: 3 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="200"/>
</scenario>
"#,
        first = invite_xml("[branch]"),
    );
    let mut args = sipp_args(&rl.sip_addr(), tcp);
    // the digest uri must be the Request-URI (RFC 3261 section 22.4); sipp's default is
    // the bare remote address, which the daemon refuses as a mismatch
    let auth_uri = format!("{CALLED}@{}", rl.sip_addr()); // sipp adds the "sip:"
    args.extend(
        [
            "-s",
            CALLED,
            "-mi",
            "127.0.0.1",
            "-au",
            "u",
            "-ap",
            "p",
            "-auth_uri",
            &auth_uri,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(["-mp".to_string(), free_media_port().to_string()]);
    let run = Sipp::spawn(Some(&xml), &args).wait(Duration::from_secs(60));
    run.expect_success();
    let finals: Vec<u16> = run
        .received_statuses()
        .into_iter()
        .filter(|s| *s >= 200)
        .collect();
    assert_eq!(finals, vec![401, 200, 200], "{}", run.describe());
    let challenge = run.first_received("SIP/2.0 401");
    assert_eq!(
        challenge.matches("WWW-Authenticate:").count(),
        1,
        "one challenge, MD5 only: {challenge}"
    );
    assert!(
        challenge.contains("algorithm=MD5") && challenge.contains("qop=\"auth\""),
        "{challenge}"
    );
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

#[test]
fn sipp_answers_an_md5_only_challenge_and_the_call_is_up_udp() {
    sipp_native_digest(false);
}

#[test]
fn sipp_answers_an_md5_only_challenge_and_the_call_is_up_tcp() {
    sipp_native_digest(true);
}

// ---------------------------------------------------------------------------------------
// Dialog features seen from the phone: hold by re-INVITE, INFO DTMF, early media, the
// public address, IPv6, the unmatched-INVITE policy, backup addresses
// ---------------------------------------------------------------------------------------

/// An in-dialog request with an SDP body (re-INVITE, UPDATE) or another body (INFO).
fn in_dialog_with_body(
    ua: &Ua,
    method: &str,
    cseq: u32,
    ok: &Sip,
    ctype: &str,
    body: &str,
) -> String {
    let req = ua.in_dialog(method, cseq, ok);
    let req = req.replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Contact: <sip:phone@{}>\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            ua.local,
            body.len()
        ),
    );
    assert!(req.ends_with(body));
    req
}

/// Sets up a call through the raw UA and returns the 200 (already ACKed).
fn answered_call(ua: &Ua, rl: &Roomline) -> Sip {
    let branch = format!("z9hG4bK-{}", unique("call"));
    ua.send(&ua.invite(rl, 1, &branch, ""));
    let (_, ok) = ua.final_response("INVITE", rl);
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    ua.send(&ua.in_dialog("ACK", 1, &ok));
    ok
}

fn rtp_count_within(ua: &Ua, window: Duration) -> usize {
    let before = ua.rtp.received().len();
    std::thread::sleep(window);
    ua.rtp.received().len() - before
}

/// RFC 3264 section 8.4: a re-INVITE with a sendonly offer (the phone puts the call on
/// hold) is answered recvonly and the daemon stops sending RTP; a sendrecv offer resumes.
#[test]
fn reinvite_to_hold_is_answered_recvonly_and_resume_sendrecv() {
    let lk = LiveKitServer::start();
    let room = "hold-reinvite";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &room_plan(room, "")));
    let ua = Ua::udp(&rl);
    let ok = answered_call(&ua, &rl);
    wait_phone_in_room(&lk, room);
    assert!(
        rtp_count_within(&ua, Duration::from_millis(600)) > 10,
        "RTP flows before hold"
    );
    let hold = ua
        .sdp()
        .replace("a=ptime:20\r\n", "a=ptime:20\r\na=sendonly\r\n");
    ua.send(&in_dialog_with_body(
        &ua,
        "INVITE",
        2,
        &ok,
        "application/sdp",
        &hold,
    ));
    let (_, held) = ua.final_response("INVITE", &rl);
    assert_eq!(held.status(), Some(200), "{}", held.text);
    let answer = String::from_utf8_lossy(&held.body).into_owned();
    assert!(
        answer.contains("a=recvonly"),
        "hold answered recvonly: {answer}"
    );
    ua.send(&ua.in_dialog("ACK", 2, &held));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        rtp_count_within(&ua, Duration::from_millis(800)),
        0,
        "no RTP while on hold"
    );
    let resume = ua
        .sdp()
        .replace("a=ptime:20\r\n", "a=ptime:20\r\na=sendrecv\r\n");
    ua.send(&in_dialog_with_body(
        &ua,
        "INVITE",
        3,
        &ok,
        "application/sdp",
        &resume,
    ));
    let (_, resumed) = ua.final_response("INVITE", &rl);
    assert_eq!(resumed.status(), Some(200), "{}", resumed.text);
    assert!(String::from_utf8_lossy(&resumed.body).contains("a=sendrecv"));
    ua.send(&ua.in_dialog("ACK", 3, &resumed));
    assert!(
        rtp_count_within(&ua, Duration::from_millis(600)) > 10,
        "RTP flows again"
    );
    ua.send(&ua.in_dialog("BYE", 4, &ok));
    let (_, bye) = ua.final_response("BYE", &rl);
    assert_eq!(bye.status(), Some(200));
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// The phone's SDP with its media at `port` (PCMU and telephone-event, sendrecv).
fn sdp_at(port: u16) -> String {
    format!(
        "v=0\r\no=phone 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
         a=fmtp:101 0-15\r\na=ptime:20\r\na=sendrecv\r\n"
    )
}

/// The dominant frequency of `packets` PCMU packets `peer` receives, once it has had
/// a second more of them (the tone may start after some silence); waits up to 15 s.
fn heard_on(peer: &RtpPeer, packets: usize) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<_> = peer.received().into_iter().filter(|p| p.pt == 0).collect();
        if got.len() >= packets + 50 {
            let payload: Vec<u8> = got[got.len() - packets..]
                .iter()
                .flat_map(|p| p.payload.iter().copied())
                .collect();
            let heard = common::roomline::analyze_ulaw(&payload);
            return heard["dominant_hz"].as_f64().unwrap_or(0.0);
        }
        assert!(
            Instant::now() < deadline,
            "only {} PCMU packets at port {} (waiting for {})",
            got.len(),
            peer.port(),
            packets + 50
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// RFC 3311 and RFC 3264 on an inbound call, audio checked by frequency: an UPDATE with
/// an offer moves the room's 440 Hz to the new address it names (200 with our answer);
/// a re-INVITE without SDP gets our offer in the 200 and the answer in the ACK moves the
/// audio again; a request with a CSeq lower than one seen gets 500 (RFC 3261 section
/// 12.2.2) and the call goes on.
#[test]
fn update_and_offerless_reinvite_move_the_audio_and_a_stale_cseq_gets_500() {
    let lk = LiveKitServer::start();
    let room = "update-late-offer";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &room_plan(room, "")));
    let publisher = common::roomline::roompeer_bg(
        &lk,
        "publish-tone",
        &[
            "--room",
            room,
            "--identity",
            "tone",
            "--freq",
            "440",
            "--seconds",
            "30",
            "--wait-timeout",
            "60",
        ],
    );
    common::roomline::wait_participant(&lk, room, "tone");
    let ua = Ua::udp(&rl);
    let ok = answered_call(&ua, &rl);
    wait_phone_in_room(&lk, room);
    let first = heard_on(&ua.rtp, 100);
    assert!(
        common::within(first, 440.0, 0.02),
        "the phone heard {first} Hz"
    );
    // UPDATE: the media moves to phone2
    let phone2 = RtpPeer::bind();
    ua.send(&in_dialog_with_body(
        &ua,
        "UPDATE",
        2,
        &ok,
        "application/sdp",
        &sdp_at(phone2.port()),
    ));
    let (_, updated) = ua.final_response("UPDATE", &rl);
    assert_eq!(updated.status(), Some(200), "{}", updated.text);
    let answer = String::from_utf8_lossy(&updated.body).into_owned();
    assert!(
        answer.contains("m=audio") && answer.contains("a=sendrecv"),
        "{answer}"
    );
    let hz = heard_on(&phone2, 100);
    assert!(common::within(hz, 440.0, 0.02), "after the UPDATE: {hz} Hz");
    // re-INVITE without SDP: our offer in the 200, the answer (phone3) in the ACK
    let phone3 = RtpPeer::bind();
    let reinvite = ua.in_dialog("INVITE", 3, &ok).replace(
        "Content-Length: 0\r\n",
        &format!("Contact: <sip:phone@{}>\r\nContent-Length: 0\r\n", ua.local),
    );
    ua.send(&reinvite);
    let (_, offered) = ua.final_response("INVITE", &rl);
    assert_eq!(offered.status(), Some(200), "{}", offered.text);
    let offer = String::from_utf8_lossy(&offered.body).into_owned();
    assert!(
        offer.contains("m=audio") && offer.contains("PCMU/8000"),
        "our offer: {offer}"
    );
    ua.send(&in_dialog_with_body(
        &ua,
        "ACK",
        3,
        &ok,
        "application/sdp",
        &sdp_at(phone3.port()),
    ));
    let hz = heard_on(&phone3, 100);
    assert!(
        common::within(hz, 440.0, 0.02),
        "after the late-offer ACK: {hz} Hz"
    );
    // out of order: CSeq 2 after 3
    ua.send(&ua.in_dialog("OPTIONS", 2, &ok));
    let (_, stale) = ua.final_response("OPTIONS", &rl);
    assert_eq!(stale.status(), Some(500), "{}", stale.text);
    ua.send(&ua.in_dialog("OPTIONS", 4, &ok));
    let (_, fresh) = ua.final_response("OPTIONS", &rl);
    assert_eq!(fresh.status(), Some(200), "{}", fresh.text);
    ua.send(&ua.in_dialog("BYE", 5, &ok));
    let (_, bye) = ua.final_response("BYE", &rl);
    assert_eq!(bye.status(), Some(200), "{}", bye.text);
    wait_phone_gone(&lk, room);
    let _ = publisher.join();
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// SIP INFO with application/dtmf-relay is a DTMF input too: the digit reaches the room
/// as a SipDTMF packet (the LiveKit Python SDK's sip_dtmf_received), and the INFO gets 200.
#[test]
fn info_dtmf_relay_reaches_the_room() {
    let lk = LiveKitServer::start();
    let room = "info-dtmf";
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &room_plan(room, "")));
    let observer = {
        let mut args = vec!["session".to_string()];
        args.extend(lk.peer_args());
        args.extend(
            [
                "--room",
                room,
                "--identity",
                "observer",
                "--seconds",
                "40",
                "--until-dtmf",
                "2",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        std::thread::spawn(move || common::run_roompeer(args, Duration::from_secs(60)))
    };
    wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "observer")
    });
    let ua = Ua::udp(&rl);
    let ok = answered_call(&ua, &rl);
    wait_phone_in_room(&lk, room);
    // Time for the participant's data channel to open, and a key-press gap between the
    // digits. Without them (the two digits sent at once, right after the join) the
    // observer once got "#" before "7", both at the same instant; whether Roomline, the
    // SFU or the SDK reorders them is not known yet.
    std::thread::sleep(Duration::from_millis(500));
    for (i, d) in ["7", "#"].iter().enumerate() {
        let body = format!("Signal={d}\r\nDuration=160\r\n");
        ua.send(&in_dialog_with_body(
            &ua,
            "INFO",
            2 + i as u32,
            &ok,
            "application/dtmf-relay",
            &body,
        ));
        let (_, r) = ua.final_response("INFO", &rl);
        assert_eq!(r.status(), Some(200), "{}", r.text);
        std::thread::sleep(Duration::from_millis(300));
    }
    let run = observer.join().unwrap();
    let report = run.expect_ok();
    let digits: Vec<String> = report["dtmf_received"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d["digit"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(digits, vec!["7".to_string(), "#".to_string()], "{report}");
    ua.send(&ua.in_dialog("BYE", 10, &ok));
    let _ = ua.final_response("BYE", &rl);
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// `early_media: true`: the daemon answers 183 with SDP while it waits for the room, and
/// RTP flows to the phone before the 200 (which here waits for the first remote track).
#[test]
fn early_media_rule_sends_183_with_sdp_and_rtp_before_the_answer() {
    let lk = LiveKitServer::start();
    let room = "early-media";
    let rl = Roomline::start(Setup::new(&lk).dialplan(
        "main",
        &room_plan(
            room,
            "    early_media: true\n    answer: on_first_track\n    ringing_timeout: 30s\n",
        ),
    ));
    let ua = Ua::udp(&rl);
    let branch = format!("z9hG4bK-{}", unique("early"));
    ua.send(&ua.invite(&rl, 1, &branch, ""));
    let until = Instant::now() + Duration::from_secs(30);
    let progress = loop {
        let m = ua
            .recv(until.saturating_duration_since(Instant::now()))
            .expect("a 183");
        if m.status() == Some(183) {
            break m;
        }
        assert!(
            m.status().is_some_and(|s| s < 200),
            "final before 183: {}",
            m.text
        );
    };
    let sdp = String::from_utf8_lossy(&progress.body).into_owned();
    assert!(
        sdp.contains("m=audio ") && sdp.contains("PCMU"),
        "183 carries SDP: {sdp}"
    );
    assert!(
        progress.header("To").is_some_and(|t| t.contains("tag=")),
        "early dialog tag"
    );
    wait_phone_in_room(&lk, room);
    assert!(
        rtp_count_within(&ua, Duration::from_millis(600)) > 10,
        "early media flows before the answer"
    );
    // an agent's audio arrives: now the call is answered
    let mut args = vec!["publish-tone".to_string()];
    args.extend(lk.peer_args());
    args.extend(
        [
            "--room",
            room,
            "--identity",
            "agent",
            "--seconds",
            "2",
            "--wait-timeout",
            "30",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    let agent = std::thread::spawn(move || common::run_roompeer(args, Duration::from_secs(60)));
    let (_, ok) = ua.final_response("INVITE", &rl);
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    ua.send(&ua.in_dialog("ACK", 1, &ok));
    let _ = agent.join();
    ua.send(&ua.in_dialog("BYE", 2, &ok));
    let _ = ua.final_response("BYE", &rl);
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// `sip.public_ip` (1:1 NAT): Contact and the SDP connection address carry it.
#[test]
fn public_ip_is_written_in_contact_and_sdp() {
    let lk = LiveKitServer::start();
    let room = "public-ip";
    let rl = Roomline::start(
        Setup::new(&lk)
            .sip_extra("  public_ip: 203.0.113.10\n")
            .dialplan("main", &room_plan(room, "")),
    );
    let ua = Ua::udp(&rl);
    let ok = answered_call(&ua, &rl);
    let contact = ok.header("Contact").unwrap_or("").to_string();
    assert!(contact.contains("@203.0.113.10:"), "Contact: {contact}");
    let sdp = String::from_utf8_lossy(&ok.body).into_owned();
    assert!(sdp.contains("c=IN IP4 203.0.113.10"), "SDP: {sdp}");
    // the dialog still works: our BYE reaches the daemon at the address we used
    ua.send(&ua.in_dialog("BYE", 2, &ok).replacen(
        &format!("BYE {} ", ok.contact_uri().unwrap()),
        &format!("BYE sip:roomline@{} ", rl.sip_addr()),
        1,
    ));
    let (_, bye) = ua.final_response("BYE", &rl);
    assert_eq!(bye.status(), Some(200));
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// An IPv6 listener: OPTIONS over [::1] gets 200, answered to the IPv6 source.
#[test]
fn ipv6_listener_answers_options() {
    let sock = UdpSocket::bind("[::1]:0").expect("IPv6 loopback");
    let probe = UdpSocket::bind("[::1]:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let rl = Roomline::start(offline_setup().sip_extra(&format!(
        "    - transport: udp\n      address: \"[::1]:{port}\"\n"
    )));
    let me = sock.local_addr().unwrap();
    let req = format!(
        "OPTIONS sip:[::1]:{port} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{b};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=1\r\nTo: <sip:[::1]:{port}>\r\n\
         Call-ID: {cid}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
        b = unique("v6"),
        cid = unique("v6call"),
    );
    sock.send_to(req.as_bytes(), ("::1", port)).unwrap();
    let r = recv_udp(&sock, Instant::now() + Duration::from_secs(5)).expect("an answer over IPv6");
    assert_eq!(r.status(), Some(200), "{}", r.text);
    assert!(r.header("Allow").is_some());
    let _ = rl.counts();
}

/// `sip.unmatched_inbound: drop`: an INVITE no trunk accepts gets no answer at all (the
/// default, reject, answers 403 as other tests show).
#[test]
fn unmatched_invite_is_dropped_when_configured() {
    let rl = Roomline::start(
        offline_setup()
            .trunk("local", "inbound:\n  allowed_addresses: [127.0.0.9/32]\n")
            .sip_extra("  unmatched_inbound: drop\n")
            .dialplan("main", &reject_all_plan()),
    );
    let ua = Ua::udp(&rl);
    let branch = format!("z9hG4bK-{}", unique("drop"));
    ua.send(&ua.invite(&rl, 1, &branch, ""));
    assert!(
        ua.recv(Duration::from_millis(1500)).is_none(),
        "nothing comes back"
    );
    let line = rl.wait_log("request refused", Duration::from_secs(5));
    assert!(
        line.contains("reason=no_trunk") && line.contains("status=none"),
        "{line}"
    );
}

/// A trunk's backup carrier may deliver its calls: calls from the backup's outbound
/// address are accepted under the primary trunk (`sip.trunkID`).
#[test]
fn calls_from_the_backup_trunks_address_belong_to_the_primary() {
    let lk = LiveKitServer::start();
    let room = "backup-inbound";
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk(
                "local",
                &format!(
                    "inbound:\n  numbers: [\"{CALLED}\"]\n  allowed_addresses: [127.0.0.9/32]\n\
                     outbound:\n  address: 127.0.0.9\nbackup: spare\n"
                ),
            )
            .trunk("spare", "outbound:\n  address: 127.0.0.1:5999\n")
            .dialplan("main", &room_plan(room, "")),
    );
    let ua = Ua::udp(&rl);
    let ok = answered_call(&ua, &rl);
    let identity = format!("sip_{CALLER}");
    let ps = wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == identity.as_str())
    });
    let me = ps
        .iter()
        .find(|p| p["identity"] == identity.as_str())
        .unwrap();
    assert_eq!(me["attributes"]["sip.trunkID"], "local", "{me}");
    ua.send(&ua.in_dialog("BYE", 2, &ok));
    let _ = ua.final_response("BYE", &rl);
    wait_phone_gone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// A TLS listener of the daemon with certificates from `pki`'s CA, the files at fixed
/// paths in `dir` (so a renewal overwrites them); `extra` adds listener lines.
fn tls_daemon(lk: &LiveKitServer, room: &str, dir: &Path, port: u16, extra: &str) -> Roomline {
    Roomline::start(
        Setup::new(lk)
            .dialplan("main", &room_plan(room, ""))
            .sip_extra(&format!(
                "    - transport: tls\n      address: 127.0.0.1:{port}\n      cert: {}\n      key: {}\n{extra}",
                dir.join("served.pem").display(),
                dir.join("served.key").display()
            )),
    )
}

/// Installs a certificate as the one the daemon's files name (write, then rename, as a
/// renewal tool does).
fn install_served(dir: &Path, cert: &Path, key: &Path) {
    for (from, to) in [(cert, "served.pem"), (key, "served.key")] {
        let tmp = dir.join(format!("{to}.new"));
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, dir.join(to)).unwrap();
    }
}

/// A renewed certificate is served after a reload (SIGHUP), without a restart, while a
/// call set up over TLS before the reload stays up on its connection: its phone stays in
/// the room, and its BYE on the same connection is answered.
#[test]
fn a_renewed_certificate_is_served_after_reload_and_the_call_before_it_stays_up() {
    let lk = LiveKitServer::start();
    let room = "tls-renewal";
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(dir.path(), "rl");
    let (old_cert, old_key) = pki.leaf("old", "localhost", "DNS:localhost,IP:127.0.0.1");
    let (new_cert, new_key) = pki.leaf("new", "localhost", "DNS:localhost,IP:127.0.0.1");
    install_served(dir.path(), &old_cert, &old_key);
    let port = free_port();
    let rl = tls_daemon(&lk, room, dir.path(), port, "");
    let at = format!("127.0.0.1:{port}");
    let old_fp = common::pki::fingerprint_of_file(&old_cert);
    let new_fp = common::pki::fingerprint_of_file(&new_cert);
    assert_ne!(old_fp, new_fp);
    assert_eq!(common::pki::served_fingerprint(&at), old_fp);

    // a call over TLS, verified against the CA
    let log = dir.path().join("s_client.log");
    let (_client, conn) = tls_connect(port, &pki.ca_cert, &log);
    let local: SocketAddr = "127.0.0.1:5061".parse().unwrap();
    let ua = Ua::with(Wire::Stream(conn), local, "TLS");
    let branch = format!("z9hG4bK-{}", unique("renew"));
    ua.send(&ua.invite(&rl, 1, &branch, ""));
    let (_, ok) = ua.final_response("INVITE", &rl);
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    ua.send(&ua.in_dialog("ACK", 1, &ok));
    wait_phone_in_room(&lk, room);

    // renew and reload
    install_served(dir.path(), &new_cert, &new_key);
    let loaded = |rl: &Roomline| rl.log().matches("TLS certificate loaded").count();
    let before = loaded(&rl);
    rl.signal("HUP");
    let until = Instant::now() + ANSWER_WITHIN;
    while loaded(&rl) == before {
        assert!(Instant::now() < until, "no reload:\n{}", rl.log_tail(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        common::pki::served_fingerprint(&at),
        new_fp,
        "the renewed certificate"
    );

    // the call set up before it is still there and ends normally on its connection
    assert_eq!(active_calls(&rl), 1);
    wait_phone_in_room(&lk, room);
    ua.send(&ua.in_dialog("BYE", 2, &ok));
    let (_, bye_ok) = ua.final_response("BYE", &rl);
    assert_eq!(bye_ok.status(), Some(200), "{}", bye_ok.text);
    wait_phone_gone(&lk, room);

    // a broken renewal (key missing) keeps the certificate that works
    std::fs::write(dir.path().join("served.key"), "not a key\n").unwrap();
    rl.signal("HUP");
    rl.wait_log("TLS files not reloaded", ANSWER_WITHIN);
    assert_eq!(common::pki::served_fingerprint(&at), new_fp);

    // without a signal: the files changing on disk are noticed and reloaded
    let (third_cert, third_key) = pki.leaf("third", "localhost", "DNS:localhost,IP:127.0.0.1");
    let third_fp = common::pki::fingerprint_of_file(&third_cert);
    install_served(dir.path(), &third_cert, &third_key);
    let until = Instant::now() + Duration::from_secs(15);
    while common::pki::served_fingerprint(&at) != third_fp {
        assert!(
            Instant::now() < until,
            "file change not noticed:\n{}",
            rl.log_tail(20)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// Mutual TLS: with `client_ca`, a client without a certificate, or with one from another
/// CA, cannot talk to the listener (the refusal is logged); one with a certificate from
/// that CA gets its OPTIONS answered.
#[test]
fn mutual_tls_listener_accepts_only_clients_with_a_certificate_from_its_ca() {
    let lk = LiveKitServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(dir.path(), "rl");
    let clients = common::pki::Pki::new(dir.path(), "carriers");
    let other = common::pki::Pki::new(dir.path(), "other");
    let (cert, key) = pki.leaf("server", "localhost", "DNS:localhost,IP:127.0.0.1");
    install_served(dir.path(), &cert, &key);
    let (good_cert, good_key) = clients.leaf("carrier", "carrier.example", "DNS:carrier.example");
    let (bad_cert, bad_key) = other.leaf("stranger", "stranger.example", "DNS:stranger.example");
    let port = free_port();
    let rl = tls_daemon(
        &lk,
        "mtls",
        dir.path(),
        port,
        &format!("      client_ca: {}\n", clients.ca_cert.display()),
    );
    let options = |conn: &StreamConn, tag: &str| {
        let cid = unique(tag);
        conn.send(&options_text(
            "127.0.0.1:5061",
            "TLS",
            &cid,
            &format!("127.0.0.1:{port}"),
        ));
        conn.recv_call(&cid, Duration::from_secs(3))
    };
    let log = dir.path().join("s_client.log");
    for (what, extra) in [
        ("no certificate", vec![]),
        (
            "another CA's certificate",
            vec![Path::new("-cert"), &bad_cert, Path::new("-key"), &bad_key],
        ),
    ] {
        let (_c, conn) = tls_connect_with(port, &pki.ca_cert, &log, &extra);
        assert!(options(&conn, "mtls-refused").is_none(), "{what}: answered");
        let (closed, _) = conn.wait_closed(Duration::from_secs(5));
        assert!(closed, "{what}: the connection stays open");
    }
    rl.wait_log("TLS handshake refused: client certificate", ANSWER_WITHIN);
    let extra = [Path::new("-cert"), &good_cert, Path::new("-key"), &good_key];
    let (_c, conn) = tls_connect_with(port, &pki.ca_cert, &log, &extra);
    let ok = options(&conn, "mtls-ok").unwrap_or_else(|| {
        panic!(
            "no answer with a client certificate; s_client: {}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            rl.log_tail(20)
        )
    });
    assert_eq!(ok.status(), Some(200), "{}", ok.text);
    rl.assert_no_leaks(Duration::from_secs(10));
}
