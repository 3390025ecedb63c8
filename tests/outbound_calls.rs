//! Outbound calls end to end: a room asks Roomline (LiveKit's SIP API, Twirp) to dial a
//! number through a trunk. Real peers only: livekit-server, the real `roomline run`
//! daemon, sipp as the carrier (UAS, registrar, OPTIONS responder), a test RTP socket as
//! the phone's media, LiveKit's Python SDKs as the API caller (`tests/peers/sipclient.py`,
//! protobuf bodies) and in the room (`tests/peers/roompeer.py`), raw HTTP for JSON bodies.
//! What is asserted is what a user observes: SIP on the wire as sipp saw it, the API's
//! answer or error, tone frequencies on the far side, participants and attributes in the
//! room, trunk state in /health/detailed and /metrics, and that nothing is left behind.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{self, Roomline, RtpPeer, Setup, Sipp, SippRun, free_port, header};
use common::{run_roompeer, within};
use serde_json::{Value, json};

/// The number the room dials.
const CALLEE: &str = "+15551230001";
/// The trunk's from_number.
const FROM: &str = "+15550100";
/// Digest credentials the carrier (sipp) demands and the trunk answers with.
const AUTH_USER: &str = "acct-1234";
const AUTH_PASS: &str = "s3cret-out";

fn identity() -> String {
    format!("sip_{CALLEE}")
}

// ---------------------------------------------------------------------------------------
// sipp scenarios (sipp trims the leading whitespace of every line of a message)
// ---------------------------------------------------------------------------------------

/// A whole scenario. sipp refuses a variable that is assigned but never read, so the
/// captures the building blocks make are all read once, by a log action at the end.
fn scenario(name: &str, body: &str) -> String {
    let mut vars: Vec<&str> = body
        .split("assign_to=\"")
        .skip(1)
        .filter_map(|r| r.split('"').next())
        .filter(|v| !v.starts_with("auth_ok"))
        .collect();
    vars.sort();
    vars.dedup();
    let reads: Vec<String> = vars.iter().map(|v| format!("[${v}]")).collect();
    let log = if reads.is_empty() {
        String::new()
    } else {
        format!(
            "  <nop hide=\"true\"><action><log message=\"{}\"/></action></nop>\n",
            reads.join(" ")
        )
    };
    format!(
        "<?xml version=\"1.0\" encoding=\"ISO-8859-1\" ?>\n<scenario name=\"{name}\">\n{body}\n{log}</scenario>\n"
    )
}

fn cdata_send(lines: &[String], retrans: bool) -> String {
    let r = if retrans { " retrans=\"500\"" } else { "" };
    format!(
        "  <send{r}>\n    <![CDATA[\n{}\n    ]]>\n  </send>\n",
        lines
            .iter()
            .map(|l| format!("      {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn with_body(lines: &mut Vec<String>, body: Option<(&str, &str)>) {
    match body {
        Some((ctype, text)) => {
            lines.push(format!("Content-Type: {ctype}"));
            lines.push("Content-Length: [len]".into());
            lines.push(String::new());
            lines.extend(text.lines().map(str::to_string));
        }
        None => lines.push("Content-Length: 0".into()),
    }
}

/// A response to the last request sipp received. `to_tag`: add sipp's tag (the first
/// response of the dialog side; in-dialog requests already carry it).
fn response(
    status: &str,
    to_tag: bool,
    extra: &[&str],
    body: Option<(&str, &str)>,
    retrans: bool,
) -> String {
    let mut l: Vec<String> = vec![
        format!("SIP/2.0 {status}"),
        "[last_Via:]".into(),
        "[last_From:]".into(),
        if to_tag {
            "[last_To:];tag=[pid]SIPpTag01[call_number]".into()
        } else {
            "[last_To:]".into()
        },
        "[last_Call-ID:]".into(),
        "[last_CSeq:]".into(),
    ];
    // a registrar's 200 lists the bindings instead of a Contact of its own
    if !extra.iter().any(|e| e.contains("Contact")) {
        l.push("Contact: <sip:callee@[local_ip]:[local_port]>".into());
    }
    l.push("Server: sipp-carrier".into());
    l.extend(extra.iter().map(|s| s.to_string()));
    with_body(&mut l, body);
    cdata_send(&l, retrans)
}

/// A request sipp (the callee) sends in the dialog, to the Contact the daemon gave.
fn uas_request(method: &str, cseq: u32, extra: &[&str], body: Option<(&str, &str)>) -> String {
    let mut l: Vec<String> = vec![
        format!("{method} [$contact_uri] SIP/2.0"),
        "Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]".into(),
        "Max-Forwards: 70".into(),
        "From: <sip:callee@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]".into(),
        "To:[$peer_from]".into(),
        "Call-ID: [call_id]".into(),
        format!("CSeq: {cseq} {method}"),
        "Contact: <sip:callee@[local_ip]:[local_port]>".into(),
    ];
    l.extend(extra.iter().map(|s| s.to_string()));
    with_body(&mut l, body);
    cdata_send(&l, true)
}

/// Receives an INVITE and keeps what in-dialog requests and late responses need: the
/// daemon's Contact URI, its From header (our To), the INVITE's CSeq number.
fn recv_invite(extra_action: &str) -> String {
    format!(
        r#"  <recv request="INVITE">
    <action>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="contact_uri"/>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="peer_from"/>
      <ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="invite_cseq"/>
      {extra_action}
    </action>
  </recv>
"#
    )
}

/// INVITE, 401 with an MD5 challenge, ACK, the INVITE again: its Authorization must be
/// right for AUTH_USER/AUTH_PASS, else sipp answers 403 and fails the call.
fn invite_with_challenge() -> String {
    let mut s = recv_invite("");
    s += &response(
        "401 Unauthorized",
        true,
        &["WWW-Authenticate: Digest realm=\"carrier.test\", nonce=\"4f1c0e9d7a\", algorithm=MD5"],
        None,
        false,
    );
    s += "  <recv request=\"ACK\"/>\n";
    s += &recv_invite(&format!(
        "<verifyauth assign_to=\"auth_ok\" username=\"{AUTH_USER}\" password=\"{AUTH_PASS}\"/>"
    ));
    s += "  <nop hide=\"true\" test=\"auth_ok\" next=\"authenticated\"/>\n";
    s += &response("403 Forbidden", true, &[], None, false);
    s += "  <recv request=\"ACK\"/>\n";
    // a wrong answer fails the sipp run
    s += "  <recv request=\"NEVER\" timeout=\"100\"/>\n";
    s += "  <label id=\"authenticated\"/>\n";
    s
}

fn sdp_answer(port: &str) -> String {
    format!(
        "v=0\no=callee 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\n\
         m=audio {port} RTP/AVP 0 101\na=rtpmap:0 PCMU/8000\na=rtpmap:101 telephone-event/8000\n\
         a=fmtp:101 0-15\na=ptime:20\na=sendrecv"
    )
}

/// 180, then (after `ring_ms`) 200 with PCMU at `rtp_port`, then the ACK.
fn answer(rtp_port: &str, ring_ms: u64) -> String {
    let mut s = response("180 Ringing", true, &[], None, false);
    if ring_ms > 0 {
        s += &format!("  <pause milliseconds=\"{ring_ms}\"/>\n");
    }
    s += &response(
        "200 OK",
        true,
        &[],
        Some(("application/sdp", &sdp_answer(rtp_port))),
        true,
    );
    s += "  <recv request=\"ACK\"/>\n";
    s
}

/// The daemon hangs up: BYE (its Reason kept in $reason), 200.
fn await_bye() -> String {
    let mut s = String::from(
        r#"  <recv request="BYE" timeout="60000">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Reason:" assign_to="reason"/>
    </action>
  </recv>
"#,
    );
    s += &response("200 OK", false, &[], None, false);
    s
}

/// The callee hangs up after `ms`: BYE, 200.
fn hang_up_after(ms: u64) -> String {
    let mut s = format!("  <pause milliseconds=\"{ms}\"/>\n");
    s += &uas_request("BYE", 20, &[], None);
    s += "  <recv response=\"200\"/>\n";
    s
}

/// A sipp process acting as the carrier on its own 127.0.0.1 port.
struct Uas {
    sipp: Sipp,
    port: u16,
}

impl Uas {
    fn start(xml: &str, calls: u32) -> Uas {
        let port = free_port();
        let args: Vec<String> = [
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-m",
            &calls.to_string(),
            "-mi",
            "127.0.0.1",
            "-mp",
            &roomline::free_media_port().to_string(),
            "-timeout",
            "90s",
            "-timeout_error",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let sipp = Sipp::spawn(Some(xml), &args);
        // ready once its SIP port is bound; a scenario sipp refuses makes it exit at once
        // instead: say why, not "no answer" later
        let exited = |pid: u32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            matches!(state, None | Some("Z"))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while roomline::udp_rx_queues(port).is_empty() {
            if exited(sipp.pid()) {
                let run = sipp.wait(Duration::from_secs(5));
                panic!(
                    "sipp exited at start:\n{}\nscenario:\n{xml}",
                    run.describe()
                );
            }
            assert!(
                Instant::now() < deadline,
                "sipp did not bind UDP port {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Uas { sipp, port }
    }

    /// A trunk whose outbound side is this sipp (UDP).
    fn trunk(&self, extra: &str) -> String {
        format!(
            "outbound:\n  address: 127.0.0.1:{}\n  from_number: \"{FROM}\"\n{extra}",
            self.port
        )
    }

    fn received_so_far(&self) -> Vec<String> {
        trace_messages(&self.sipp.messages_so_far(), "message received")
    }

    fn sent_so_far(&self) -> Vec<String> {
        trace_messages(&self.sipp.messages_so_far(), "message sent")
    }

    /// Waits until sipp has received a message starting with `start` (e.g. "INVITE").
    fn wait_received(&self, start: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self
                .received_so_far()
                .into_iter()
                .find(|m| m.starts_with(start))
            {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "sipp received no {start:?} within {within:?}:\n{}",
                self.sipp.messages_so_far()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait(self, timeout: Duration) -> SippRun {
        self.sipp.wait(timeout)
    }
}

/// Messages of a sipp `-trace_msg` log whose block header contains `kind`
/// ("message received" or "message sent").
fn trace_messages(trace: &str, kind: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut header_next = false;
    for line in trace.lines() {
        if line.starts_with("----------") {
            if let Some(m) = cur.take() {
                out.push(m.trim().to_string());
            }
            header_next = true;
            continue;
        }
        if header_next {
            header_next = false;
            if line.contains(kind) {
                cur = Some(String::new());
            }
            continue;
        }
        if let Some(m) = cur.as_mut() {
            m.push_str(line.trim_end_matches('\r'));
            m.push('\n');
        }
    }
    if let Some(m) = cur.take() {
        out.push(m.trim().to_string());
    }
    out.retain(|m| !m.is_empty());
    out
}

fn start_line(msg: &str) -> &str {
    msg.lines().next().unwrap_or("")
}

fn cseq_number(msg: &str) -> u32 {
    header(msg, "CSeq")
        .and_then(|c| c.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no CSeq in:\n{msg}"))
}

fn top_via_branch(msg: &str) -> String {
    let via = header(msg, "Via").unwrap_or_else(|| panic!("no Via in:\n{msg}"));
    via.split(';')
        .find_map(|p| p.trim().strip_prefix("branch="))
        .unwrap_or_else(|| panic!("no branch in {via}"))
        .to_string()
}

/// The audio address of an SDP body in a SIP message (c= and m=audio).
fn sdp_audio_addr(msg: &str) -> SocketAddr {
    let ip = msg
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap_or_else(|| panic!("no c= line in:\n{msg}"))
        .trim();
    let port = msg
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no m=audio line in:\n{msg}"));
    format!("{ip}:{port}").parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// The API callers
// ---------------------------------------------------------------------------------------

/// A token signed with the dev key: `sip_call` decides the sip.call grant; `room_admin`
/// for rooms.
fn token(lk: &LiveKitServer, sip_call: bool, secret: Option<&str>) -> String {
    use livekit_api::access_token::{AccessToken, SIPGrants, VideoGrants};
    AccessToken::with_api_key(lk.api_key(), secret.unwrap_or(lk.api_secret()))
        .with_identity("api-caller")
        .with_ttl(Duration::from_secs(600))
        .with_grants(VideoGrants {
            room_admin: true,
            room_create: true,
            room_list: true,
            ..Default::default()
        })
        .with_sip_grants(SIPGrants {
            admin: false,
            call: sip_call,
        })
        .to_jwt()
        .expect("token")
}

/// One HTTP response: status, Content-Type, body.
struct HttpResponse {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl HttpResponse {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "HTTP {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// POST /twirp/livekit.SIP/METHOD on the daemon, raw HTTP/1.1.
fn twirp(
    rl: &Roomline,
    method: &str,
    content_type: &str,
    token: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(("127.0.0.1", rl.http_port)).expect("connect to roomline");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "POST /twirp/livekit.SIP/{method} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\
         Content-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response: {}", String::from_utf8_lossy(&resp)));
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut body = resp[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let content_type = header(&head, "Content-Type").unwrap_or("").to_string();
    if header(&head, "Transfer-Encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        content_type,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = data.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
}

/// CreateSIPParticipant with a JSON body and a sip.call token.
fn create_json(rl: &Roomline, lk: &LiveKitServer, req: &Value) -> HttpResponse {
    twirp(
        rl,
        "CreateSIPParticipant",
        "application/json",
        Some(&token(lk, true, None)),
        req.to_string().as_bytes(),
    )
}

/// A field of a JSON response, under its proto name or its lowerCamelCase JSON name
/// (protobuf's JSON mapping allows both).
fn field<'a>(v: &'a Value, snake: &str) -> &'a Value {
    if !v[snake].is_null() {
        return &v[snake];
    }
    let mut camel = String::new();
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            camel.extend(c.to_uppercase());
            up = false;
        } else {
            camel.push(c);
        }
    }
    &v[camel]
}

/// LiveKit's Python server SDK (livekit-api) against the daemon's API: its JSON report
/// (`{"ok": true, "response": ...}` or `{"ok": false, "code", "message", "status",
/// "metadata", "error_type"}`). `token`: sent verbatim, else the SDK signs its own with the
/// dev key (with the grant each call needs).
fn sdk(
    rl: &Roomline,
    lk: &LiveKitServer,
    command: &str,
    req: &Value,
    token: Option<&str>,
) -> Value {
    run_sdk(
        rl.http_port,
        lk.api_key(),
        lk.api_secret(),
        command,
        req,
        token,
    )
}

/// LiveKit's server SDKs, each driving Roomline's API through the same small program
/// interface (command, request JSON in, one JSON report out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sdk {
    /// `livekit-api` (PyPI), tests/peers/sipclient.py
    Python,
    /// `github.com/livekit/server-sdk-go/v2`, tests/peers/sdk-go
    Go,
    /// `livekit-server-sdk` (npm), tests/peers/sdk-node/client.cjs
    Node,
}

fn run_sdk(
    port: u16,
    key: &str,
    secret: &str,
    command: &str,
    req: &Value,
    token: Option<&str>,
) -> Value {
    run_sdk_with(Sdk::Python, port, key, secret, command, req, token)
}

fn run_sdk_with(
    sdk: Sdk,
    port: u16,
    key: &str,
    secret: &str,
    command: &str,
    req: &Value,
    token: Option<&str>,
) -> Value {
    let url = format!("http://127.0.0.1:{port}");
    let mut args: Vec<String> = vec![
        command.into(),
        "--url".into(),
        url,
        "--request".into(),
        req.to_string(),
    ];
    match token {
        Some(t) => args.extend(["--token".into(), t.into()]),
        None => args.extend([
            "--api-key".into(),
            key.into(),
            "--api-secret".into(),
            secret.into(),
        ]),
    }
    let timeout = Duration::from_secs(90);
    let run = match sdk {
        Sdk::Python => {
            let script = common::repo_root().join("tests/peers/sipclient.py");
            common::run_peer(&common::python(), &[script.as_os_str()], &args, timeout)
        }
        Sdk::Go => {
            let bin = common::tool_path(
                "ROOMLINE_SDK_GO",
                common::tools_dir().join("bin").join("roomline-sdk-go"),
                "the Go SDK client",
            );
            common::run_peer(&bin, &[], &args, timeout)
        }
        Sdk::Node => {
            let script = common::repo_root().join("tests/peers/sdk-node/client.cjs");
            let dir = std::env::var_os("ROOMLINE_SDK_NODE")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| common::tools_dir().join("sdk-node"));
            args.extend(["--sdk-dir".into(), dir.display().to_string()]);
            common::run_peer(
                std::path::Path::new("node"),
                &[script.as_os_str()],
                &args,
                timeout,
            )
        }
    };
    if run.json.is_null() {
        panic!("{sdk:?} SDK {command}: no report\n{}", run.describe());
    }
    run.json
}

/// A call id of Roomline's own, as LiveKit's (`SCL_` and 12 base57 characters).
fn is_call_id(v: impl AsRef<str>) -> bool {
    let v = v.as_ref();
    v.len() == 16 && v.starts_with("SCL_") && v[4..].chars().all(|c| c.is_ascii_alphanumeric())
}

fn create_request(trunk: &str, room: &str, extra: Value) -> Value {
    let mut v = json!({
        "sip_trunk_id": trunk,
        "sip_call_to": CALLEE,
        "room_name": room,
    });
    if let (Some(o), Value::Object(e)) = (v.as_object_mut(), extra) {
        o.extend(e);
    }
    v
}

// ---------------------------------------------------------------------------------------
// The room and the daemon
// ---------------------------------------------------------------------------------------

fn phone_participant(lk: &LiveKitServer, room: &str) -> Option<Value> {
    roomline::list_participants(lk, room)
        .into_iter()
        .find(|p| p["identity"] == identity().as_str())
}

/// Waits until the phone's participant has `sip.callStatus` = `status`; its entry.
fn wait_call_status(lk: &LiveKitServer, room: &str, status: &str) -> Value {
    let ps = roomline::wait_participants(lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| {
            p["identity"] == identity().as_str() && p["attributes"]["sip.callStatus"] == status
        })
    });
    ps.into_iter()
        .find(|p| p["identity"] == identity().as_str())
        .unwrap()
}

fn wait_room_empty_of_phone(lk: &LiveKitServer, room: &str) {
    roomline::wait_participants(lk, room, Duration::from_secs(30), |ps| {
        !ps.iter().any(|p| p["identity"] == identity().as_str())
    });
}

fn detailed(rl: &Roomline) -> Value {
    let (status, body) = rl.get("/health/detailed").expect("/health/detailed");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn trunk_state(rl: &Roomline, name: &str) -> Value {
    detailed(rl)["config"]["trunks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no trunk {name} in /health/detailed"))
}

/// Polls /health/detailed until `pred` holds for the trunk's entry.
fn wait_trunk<F: Fn(&Value) -> bool>(
    rl: &Roomline,
    name: &str,
    within: Duration,
    pred: F,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let t = trunk_state(rl, name);
        if pred(&t) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "trunk {name} did not reach the expected state within {within:?}: {t}\n{}",
            rl.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of one metric sample in /metrics (`name{labels}`), if present.
fn metric(rl: &Roomline, sample: &str) -> Option<f64> {
    let (_, text) = rl.get("/metrics").expect("/metrics");
    text.lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A UDP socket standing for a trunk that must never be called.
fn silent_trunk() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn assert_nothing_sent_to(sock: &UdpSocket) {
    let mut buf = [0u8; 4096];
    if let Ok((n, from)) = sock.recv_from(&mut buf) {
        panic!(
            "the daemon sent SIP to the trunk from {from}:\n{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// LiveKit's Python SDK (protobuf) dials through a trunk whose carrier challenges the
/// INVITE with a 401: the daemon answers with the trunk's credentials, the callee answers,
/// the SDK gets the participant and the Call-ID, the room sees the SIP attributes, a
/// 1 kHz tone from the phone is heard in the room, a 440 Hz tone published in the room
/// reaches the phone's RTP socket, the request's DTMF ("1w2") arrives as RFC 4733 events
/// with the pause, and removing the participant ends the call with BYE.
#[test]
fn sdk_dials_through_a_401_challenge_and_audio_flows_both_ways() {
    let lk = LiveKitServer::start();
    let room = "outbound-audio";
    let phone = RtpPeer::bind();
    let mut xml = invite_with_challenge();
    xml += &answer(&phone.port().to_string(), 0);
    xml += &await_bye();
    let uas = Uas::start(&scenario("uas-401", &xml), 1);
    let auth = format!("  auth:\n    username: {AUTH_USER}\n    password: {AUTH_PASS}\n");
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk(&auth)));

    // a listener is in the room before the call
    let listener = {
        let mut args = vec!["listen".to_string()];
        args.extend(lk.peer_args());
        let id = identity();
        args.extend(
            [
                "--room",
                room,
                "--identity",
                "listener",
                "--seconds",
                "12",
                "--from-identity",
                &id,
                "--wait-timeout",
                "40",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        std::thread::spawn(move || run_roompeer(args, Duration::from_secs(90)))
    };
    roomline::wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "listener")
    });

    let report = sdk(
        &rl,
        &lk,
        "create",
        &create_request(
            "carrier",
            room,
            json!({
                "wait_until_answered": true,
                "dtmf": "1w2",
                "participant_attributes": {"campaign": "spring"},
            }),
        ),
        None,
    );
    assert_eq!(report["ok"], true, "CreateSIPParticipant failed: {report}");
    let resp = &report["response"];
    assert_eq!(
        resp["participant_identity"],
        identity().as_str(),
        "{report}"
    );
    assert_eq!(resp["room_name"], room, "{report}");
    assert!(
        resp["participant_id"]
            .as_str()
            .is_some_and(|s| s.starts_with("PA_")),
        "{report}"
    );

    // the wire: INVITE without credentials, 401, INVITE with the right digest answer
    let invites: Vec<String> = uas
        .received_so_far()
        .into_iter()
        .filter(|m| m.starts_with("INVITE "))
        .collect();
    assert!(invites.len() >= 2, "two INVITEs expected: {invites:#?}");
    let (first, second) = (&invites[0], invites.last().unwrap());
    assert!(header(first, "Authorization").is_none(), "{first}");
    let authz = header(second, "Authorization").unwrap_or_else(|| panic!("{second}"));
    assert!(authz.starts_with("Digest "), "{authz}");
    assert!(
        authz.contains(&format!("username=\"{AUTH_USER}\"")),
        "{authz}"
    );
    assert!(authz.contains("realm=\"carrier.test\""), "{authz}");
    assert!(authz.contains("nonce=\"4f1c0e9d7a\""), "{authz}");
    assert_eq!(header(first, "Call-ID"), header(second, "Call-ID"));
    assert!(
        cseq_number(second) > cseq_number(first),
        "a new CSeq for the retry"
    );
    assert!(start_line(first).starts_with(&format!("INVITE sip:{CALLEE}@127.0.0.1:{}", uas.port)));
    assert!(header(first, "From").unwrap().contains(FROM), "{first}");
    for codec in [
        "PCMU/8000",
        "PCMA/8000",
        "G722/8000",
        "telephone-event/8000",
    ] {
        assert!(first.contains(codec), "offer lacks {codec}:\n{first}");
    }
    let call_id = header(second, "Call-ID").unwrap().to_string();
    let lk_call_id = resp["sip_call_id"].as_str().unwrap_or_default().to_string();
    assert!(is_call_id(&lk_call_id), "{report}");
    let daemon_rtp = sdp_audio_addr(second);

    // the room: the SIP attributes LiveKit's own service sets
    let p = wait_call_status(&lk, room, "active");
    let attrs = &p["attributes"];
    assert_eq!(attrs["sip.callID"], lk_call_id.as_str(), "{p}");
    assert_eq!(attrs["sip.callIDFull"], call_id.as_str(), "{p}");
    assert_eq!(attrs["sip.hostname"], "127.0.0.1", "{p}");
    assert_eq!(attrs["sip.trunkID"], "carrier", "{p}");
    assert_eq!(attrs["sip.phoneNumber"], CALLEE, "{p}");
    assert_eq!(attrs["sip.trunkPhoneNumber"], FROM, "{p}");
    assert_eq!(attrs["campaign"], "spring", "{p}");

    // phone -> room: 4 s of 1 kHz from the phone's RTP socket (symmetric RTP: the same
    // socket the daemon sends to)
    let tone_seconds = 4u32;
    let dir = tempfile::tempdir().unwrap();
    let tone = std::fs::read(roomline::ulaw_tone_file(dir.path(), 1000, tone_seconds)).unwrap();
    let payloads: Vec<Vec<u8>> = tone.chunks(160).map(<[u8]>::to_vec).collect();
    let sender = phone.send_stream(daemon_rtp, 0, 160, payloads);

    // room -> phone: 3 s of 440 Hz published in the room
    let publisher = {
        let mut args = vec!["publish-tone".to_string()];
        args.extend(lk.peer_args());
        args.extend(
            [
                "--room",
                room,
                "--identity",
                "agent",
                "--freq",
                "440",
                "--seconds",
                "3",
                "--lead-silence",
                "1.5",
                "--wait-timeout",
                "30",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        std::thread::spawn(move || run_roompeer(args, Duration::from_secs(90)))
    };
    sender.join().unwrap();
    let published = publisher.join().unwrap();
    published.expect_ok();
    let heard = listener.join().unwrap();
    let report = heard.expect_ok();
    eprintln!("listener: {report}");
    let hz = heard.f64("dominant_hz");
    let frames = heard.f64("frames_nonsilent");
    let expected = f64::from(tone_seconds) * 100.0;
    assert!(within(hz, 1000.0, 0.02), "the room heard {hz} Hz: {report}");
    assert!(
        frames >= 0.9 * expected,
        "{frames} of {expected} tone frames reached the room: {report}"
    );

    // the room's tone has ended at the phone: look at what it got
    let got = phone.wait_for(
        Duration::from_secs(10),
        "silence after the room's tone",
        |p| roomline::ulaw_sound_then_silence(p, 0, 10),
    );
    let audio: Vec<u8> = got
        .iter()
        .filter(|p| p.pt == 0 && p.from == daemon_rtp)
        .flat_map(|p| p.payload.clone())
        .collect();
    assert!(!audio.is_empty(), "no PCMU from the daemon at the phone");
    let phone_heard = roomline::analyze_ulaw(&audio);
    eprintln!("phone: {phone_heard}");
    let hz = phone_heard["dominant_hz"].as_f64().unwrap_or(0.0);
    let frames = phone_heard["frames_nonsilent"].as_f64().unwrap_or(0.0);
    assert!(
        within(hz, 440.0, 0.02),
        "the phone heard {hz} Hz: {phone_heard}"
    );
    assert!(
        frames >= 0.85 * 300.0,
        "{frames} of 300 tone frames reached the phone: {phone_heard}"
    );

    // the request's DTMF: '1', a 0.5 s pause, '2', as RFC 4733 events
    let events: Vec<(u8, Instant)> = got
        .iter()
        .filter(|p| p.pt == 101 && p.payload.len() >= 4)
        .map(|p| (p.payload[0], p.at))
        .collect();
    let mut digits: Vec<(u8, Instant)> = Vec::new();
    for (e, at) in events {
        if digits.last().is_none_or(|(d, _)| *d != e) {
            digits.push((e, at));
        }
    }
    assert_eq!(
        digits.iter().map(|(d, _)| *d).collect::<Vec<_>>(),
        vec![1, 2],
        "RFC 4733 events for 1 then 2"
    );
    let gap = digits[1].1.duration_since(digits[0].1);
    assert!(
        gap >= Duration::from_millis(500),
        "the 'w' pause was {gap:?}"
    );

    // removing the participant ends the call: BYE
    let (st, body) = roomline::room_service(
        &lk,
        "RemoveParticipant",
        room,
        json!({"room": room, "identity": identity()}),
    );
    assert_eq!(st, 200, "{body}");
    let run = uas.wait(Duration::from_secs(30));
    run.expect_success();
    let bye = run.first_received("BYE ");
    assert_eq!(header(&bye, "Call-ID"), Some(call_id.as_str()));
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// A JSON body (raw HTTP): the answer is JSON too, with the participant and the Call-ID;
/// the callee's BYE ends the call and the participant leaves the room.
#[test]
fn json_request_places_a_call_and_the_callees_bye_removes_the_participant() {
    let lk = LiveKitServer::start();
    let room = "outbound-json";
    let mut xml = recv_invite("");
    xml += &answer("[media_port]", 0);
    xml += &hang_up_after(2000);
    let uas = Uas::start(&scenario("uas-bye", &xml), 1);
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));

    let resp = create_json(
        &rl,
        &lk,
        &create_request("carrier", room, json!({"wait_until_answered": true})),
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert!(
        resp.content_type.starts_with("application/json"),
        "{}",
        resp.content_type
    );
    let v = resp.json();
    assert_eq!(
        field(&v, "participant_identity"),
        identity().as_str(),
        "{v}"
    );
    assert_eq!(field(&v, "room_name"), room, "{v}");
    let invite = uas.wait_received("INVITE ", Duration::from_secs(5));
    assert!(
        is_call_id(field(&v, "sip_call_id").as_str().unwrap_or("")),
        "{v}"
    );
    let up = wait_call_status(&lk, room, "active");
    assert_eq!(
        &up["attributes"]["sip.callID"],
        field(&v, "sip_call_id"),
        "{up}"
    );
    assert_eq!(
        up["attributes"]["sip.callIDFull"],
        header(&invite, "Call-ID").unwrap(),
        "{up}"
    );

    let run = uas.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(
        run.received_statuses(),
        vec![200],
        "the daemon answers the callee's BYE with 200:\n{}",
        run.describe()
    );
    wait_room_empty_of_phone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// Nobody answers within ringing_timeout: the daemon CANCELs the INVITE (same branch and
/// CSeq number, RFC 3261 section 9.1), ACKs the 487, and the SDK caller gets
/// deadline_exceeded; the participant leaves.
#[test]
fn ringing_timeout_sends_cancel_and_the_caller_gets_an_error() {
    let lk = LiveKitServer::start();
    let room = "outbound-ringing";
    let mut xml = recv_invite("");
    xml += &response("180 Ringing", true, &[], None, false);
    xml += "  <recv request=\"CANCEL\" timeout=\"30000\"/>\n";
    xml += &response("200 OK", true, &[], None, false);
    // the 487 answers the INVITE: its CSeq, not the CANCEL's
    xml += &cdata_send(
        &[
            "SIP/2.0 487 Request Terminated".into(),
            "[last_Via:]".into(),
            "[last_From:]".into(),
            "[last_To:];tag=[pid]SIPpTag01[call_number]".into(),
            "[last_Call-ID:]".into(),
            "CSeq: [$invite_cseq] INVITE".into(),
            "Content-Length: 0".into(),
        ],
        false,
    );
    xml += "  <recv request=\"ACK\"/>\n";
    let uas = Uas::start(&scenario("uas-ringing", &xml), 1);
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));

    let report = sdk(
        &rl,
        &lk,
        "create",
        &create_request(
            "carrier",
            room,
            json!({"wait_until_answered": true, "ringing_timeout": "2s"}),
        ),
        None,
    );
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["code"], "deadline_exceeded", "{report}");
    assert_eq!(report["error_type"], "SipCallError", "{report}");
    assert_eq!(report["metadata"]["sip_status_code"], "408", "{report}");

    let run = uas.wait(Duration::from_secs(30));
    run.expect_success();
    let invite = &run.first_received("INVITE ");
    let cancel = &run.first_received("CANCEL ");
    assert_eq!(
        start_line(cancel).replace("CANCEL", ""),
        start_line(invite).replace("INVITE", "")
    );
    assert_eq!(top_via_branch(cancel), top_via_branch(invite));
    assert_eq!(cseq_number(cancel), cseq_number(invite));
    assert_eq!(header(cancel, "Call-ID"), header(invite, "Call-ID"));
    let ack = &run.first_received("ACK ");
    assert_eq!(
        top_via_branch(ack),
        top_via_branch(invite),
        "the 487's ACK is in the INVITE's transaction"
    );
    wait_room_empty_of_phone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// The callee is busy: the SDK caller gets a SipCallError with status 486 (Twirp
/// resource_exhausted, as LiveKit's SIP service reports it); the 486 is ACKed.
#[test]
fn busy_486_reaches_the_sdk_caller_with_its_status() {
    let lk = LiveKitServer::start();
    let room = "outbound-busy";
    let mut xml = recv_invite("");
    xml += &response("486 Busy Here", true, &[], None, false);
    xml += "  <recv request=\"ACK\"/>\n";
    let uas = Uas::start(&scenario("uas-busy", &xml), 1);
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));
    let report = sdk(
        &rl,
        &lk,
        "create",
        &create_request("carrier", room, json!({"wait_until_answered": true})),
        None,
    );
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["error_type"], "SipCallError", "{report}");
    assert_eq!(report["code"], "resource_exhausted", "{report}");
    assert_eq!(report["metadata"]["sip_status_code"], "486", "{report}");
    assert_eq!(report["metadata"]["sip_status"], "Busy Here", "{report}");
    let run = uas.wait(Duration::from_secs(30));
    run.expect_success();
    wait_room_empty_of_phone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// The callee's UAS for a call that completes: answers, the callee hangs up after 1 s.
fn completing_uas() -> Uas {
    let mut xml = recv_invite("");
    xml += &answer("[media_port]", 0);
    xml += &hang_up_after(1000);
    Uas::start(&scenario("uas-complete", &xml), 1)
}

/// A trunk `primary` (outbound side as given) with `backup` (the sipp `backup`) behind it.
fn failover_setup(lk: &LiveKitServer, primary_outbound: &str, backup: &Uas) -> Setup {
    Setup::new(lk)
        .trunk(
            "primary",
            &format!("outbound:\n{primary_outbound}  from_number: \"{FROM}\"\nbackup: backup\n"),
        )
        .trunk("backup", &backup.trunk(""))
}

/// The call placed on `primary` completes through `backup`: the API answers with the
/// backup's Call-ID, the failover is counted, the callee's BYE ends it.
fn assert_completed_through_backup(
    rl: &Roomline,
    lk: &LiveKitServer,
    room: &str,
    backup: Uas,
) -> String {
    assert_completed_through_backup_with(rl, lk, room, backup, json!({"wait_until_answered": true}))
}

fn assert_completed_through_backup_with(
    rl: &Roomline,
    lk: &LiveKitServer,
    room: &str,
    backup: Uas,
    extra: Value,
) -> String {
    let resp = create_json(rl, lk, &create_request("primary", room, extra));
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let v = resp.json();
    let invite = backup.wait_received("INVITE ", Duration::from_secs(5));
    let call_id = header(&invite, "Call-ID").unwrap().to_string();
    // one call id across both attempts; the SIP Call-ID is the answered attempt's
    assert!(
        is_call_id(field(&v, "sip_call_id").as_str().unwrap_or("")),
        "{v}"
    );
    let up = wait_call_status(lk, room, "active");
    assert_eq!(
        &up["attributes"]["sip.callID"],
        field(&v, "sip_call_id"),
        "{up}"
    );
    assert_eq!(up["attributes"]["sip.callIDFull"], call_id.as_str(), "{up}");
    assert_eq!(
        metric(rl, "roomline_trunk_failovers_total{trunk=\"primary\"}"),
        Some(1.0),
        "one failover counted"
    );
    let run = backup.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(run.received_statuses(), vec![200], "{}", run.describe());
    wait_room_empty_of_phone(lk, room);
    call_id
}

/// The primary trunk is down (TCP, nothing listening: the connection is refused): the
/// call goes out through the backup trunk and completes.
#[test]
fn primary_trunk_with_nothing_listening_fails_over_to_the_backup() {
    let lk = LiveKitServer::start();
    let room = "outbound-failover-down";
    let dead = free_port();
    let backup = completing_uas();
    let rl = Roomline::start(failover_setup(
        &lk,
        &format!("  address: 127.0.0.1:{dead}\n  transport: tcp\n"),
        &backup,
    ));
    assert_completed_through_backup(&rl, &lk, room, backup);
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// The primary trunk is silent over UDP (a socket that never answers, as a dead host
/// that drops packets): the INVITE is retransmitted (Timer A) and, with no response at
/// all for 5 s (`call::outbound::NO_RESPONSE_FAILOVER`, well before Timer B's 32 s), the
/// call moves to the backup, where it completes within the default ringing timeout.
#[test]
fn primary_trunk_silent_over_udp_fails_over_without_waiting_for_timer_b() {
    let lk = LiveKitServer::start();
    let room = "outbound-failover-timer-b";
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    // the socket is held so that no one else gets the port, and read to see the INVITEs
    dead.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let backup = completing_uas();
    let rl = Roomline::start(failover_setup(
        &lk,
        &format!("  address: 127.0.0.1:{dead_port}\n"),
        &backup,
    ));
    let reader = std::thread::spawn(move || {
        let mut invites = 0;
        let mut buf = [0u8; 4096];
        let until = Instant::now() + Duration::from_secs(20);
        while Instant::now() < until {
            if let Ok((n, _)) = dead.recv_from(&mut buf)
                && buf[..n].starts_with(b"INVITE ")
            {
                invites += 1;
            }
            if invites >= 3 {
                break;
            }
        }
        invites
    });
    assert_completed_through_backup_with(
        &rl,
        &lk,
        room,
        backup,
        json!({"wait_until_answered": true}),
    );
    assert!(
        reader.join().unwrap() >= 3,
        "the INVITE to the primary was retransmitted"
    );
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// The primary trunk answers 503: the daemon ACKs it and the call completes through the
/// backup, under a new Call-ID.
#[test]
fn primary_trunk_answering_503_fails_over_to_the_backup() {
    let lk = LiveKitServer::start();
    let room = "outbound-failover-503";
    let mut xml = recv_invite("");
    xml += &response("503 Service Unavailable", true, &[], None, false);
    xml += "  <recv request=\"ACK\"/>\n";
    let primary = Uas::start(&scenario("uas-503", &xml), 1);
    let backup = completing_uas();
    let rl = Roomline::start(failover_setup(
        &lk,
        &format!("  address: 127.0.0.1:{}\n", primary.port),
        &backup,
    ));
    let backup_call = assert_completed_through_backup(&rl, &lk, room, backup);
    let run = primary.wait(Duration::from_secs(30));
    run.expect_success();
    let invite = run.first_received("INVITE ");
    assert_ne!(
        header(&invite, "Call-ID"),
        Some(backup_call.as_str()),
        "a new call on the backup"
    );
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// wait_until_answered=false: the API answers once the participant is in the room, while
/// the phone still rings (sipp has sent no 200 yet); the call then completes: the callee
/// answers, the participant turns active, the callee's BYE ends it.
#[test]
fn not_waiting_for_the_answer_returns_once_joined_and_the_call_still_completes() {
    let lk = LiveKitServer::start();
    let room = "outbound-nowait";
    let mut xml = recv_invite("");
    xml += &answer("[media_port]", 6000);
    xml += &hang_up_after(2000);
    let uas = Uas::start(&scenario("uas-slow-answer", &xml), 1);
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));

    let resp = create_json(
        &rl,
        &lk,
        &create_request("carrier", room, json!({"wait_until_answered": false})),
    );
    // what the callee had sent when the API answered
    let sent_then = uas.sent_so_far();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    let v = resp.json();
    assert!(
        !sent_then.iter().any(|m| m.starts_with("SIP/2.0 200")),
        "the API answered only after the callee did: {v}\n{sent_then:#?}"
    );
    assert_eq!(
        field(&v, "participant_identity"),
        identity().as_str(),
        "{v}"
    );
    assert!(
        field(&v, "participant_id")
            .as_str()
            .is_some_and(|s| s.starts_with("PA_")),
        "{v}"
    );
    let joined = phone_participant(&lk, room).expect("the participant is in the room");
    let status = joined["attributes"]["sip.callStatus"]
        .as_str()
        .unwrap_or("");
    assert!(
        status == "dialing" || status == "ringing",
        "still ringing when the API answered: {joined}"
    );

    // the call goes on: answered, then ended by the callee
    let invite = uas.wait_received("INVITE ", Duration::from_secs(5));
    assert!(
        is_call_id(field(&v, "sip_call_id").as_str().unwrap_or("")),
        "{v}"
    );
    let up = wait_call_status(&lk, room, "active");
    assert_eq!(&up["attributes"]["sip.callID"], field(&v, "sip_call_id"));
    assert_eq!(
        up["attributes"]["sip.callIDFull"],
        header(&invite, "Call-ID").unwrap()
    );
    let run = uas.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(run.received_statuses(), vec![200], "{}", run.describe());
    wait_room_empty_of_phone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// A field Roomline does not support is refused by name (400 invalid_argument), whether
/// the body is JSON (raw HTTP) or protobuf (the SDK), and nothing is dialled.
#[test]
fn an_unsupported_field_is_refused_by_name_in_json_and_protobuf() {
    let lk = LiveKitServer::start();
    let room = "outbound-unsupported";
    let trunk = silent_trunk();
    let port = trunk.local_addr().unwrap().port();
    let rl = Roomline::start(Setup::new(&lk).trunk(
        "carrier",
        &format!("outbound:\n  address: 127.0.0.1:{port}\n  from_number: \"{FROM}\"\n"),
    ));
    let req = create_request(
        "carrier",
        room,
        json!({"krisp_enabled": true, "wait_until_answered": true}),
    );
    let resp = create_json(&rl, &lk, &req);
    assert_eq!(resp.status, 400, "{}", String::from_utf8_lossy(&resp.body));
    let v = resp.json();
    assert_eq!(v["code"], "invalid_argument", "{v}");
    assert!(
        v["msg"].as_str().unwrap_or("").contains("krisp_enabled"),
        "{v}"
    );

    let report = sdk(&rl, &lk, "create", &req, None);
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["code"], "invalid_argument", "{report}");
    assert_eq!(report["status"], 400, "{report}");
    assert!(
        report["message"]
            .as_str()
            .unwrap_or("")
            .contains("krisp_enabled"),
        "{report}"
    );

    assert_nothing_sent_to(&trunk);
    assert!(roomline::list_participants(&lk, room).is_empty());
    rl.assert_no_leaks(Duration::from_secs(5));
}

/// Auth: a token without the sip.call grant gets 403 permission_denied (the SDK with that
/// token, and raw JSON), no token or a token signed with another secret 401
/// unauthenticated; nothing is dialled.
#[test]
fn a_token_without_the_sip_call_grant_gets_403() {
    let lk = LiveKitServer::start();
    let room = "outbound-grant";
    let trunk = silent_trunk();
    let port = trunk.local_addr().unwrap().port();
    let rl = Roomline::start(Setup::new(&lk).trunk(
        "carrier",
        &format!("outbound:\n  address: 127.0.0.1:{port}\n  from_number: \"{FROM}\"\n"),
    ));
    let req = create_request("carrier", room, json!({"wait_until_answered": true}));
    let no_grant = token(&lk, false, None);

    let report = sdk(&rl, &lk, "create", &req, Some(&no_grant));
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["status"], 403, "{report}");
    assert_eq!(report["code"], "permission_denied", "{report}");

    let body = req.to_string();
    let resp = twirp(
        &rl,
        "CreateSIPParticipant",
        "application/json",
        Some(&no_grant),
        body.as_bytes(),
    );
    assert_eq!(resp.status, 403);
    assert_eq!(resp.json()["code"], "permission_denied");
    let resp = twirp(
        &rl,
        "CreateSIPParticipant",
        "application/json",
        None,
        body.as_bytes(),
    );
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["code"], "unauthenticated");
    let forged = token(&lk, true, Some("not-the-secret-at-all-0123456789"));
    let resp = twirp(
        &rl,
        "CreateSIPParticipant",
        "application/json",
        Some(&forged),
        body.as_bytes(),
    );
    assert_eq!(resp.status, 401);
    assert_eq!(resp.json()["code"], "unauthenticated");
    // the transfer API checks the grant too
    let transfer = json!({"participant_identity": identity(), "room_name": room, "transfer_to": "+15559990000"});
    let resp = twirp(
        &rl,
        "TransferSIPParticipant",
        "application/json",
        Some(&no_grant),
        transfer.to_string().as_bytes(),
    );
    assert_eq!(resp.status, 403);

    assert_nothing_sent_to(&trunk);
    assert!(roomline::list_participants(&lk, room).is_empty());
    rl.assert_no_leaks(Duration::from_secs(5));
}

/// The room is deleted during the call: the callee gets a BYE whose Reason says so, and
/// the daemon keeps nothing.
#[test]
fn deleting_the_room_sends_bye_with_a_reason() {
    let lk = LiveKitServer::start();
    let room = "outbound-delete";
    let mut xml = recv_invite("");
    xml += &answer("[media_port]", 0);
    xml += &await_bye();
    let uas = Uas::start(&scenario("uas-delete", &xml), 1);
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));
    let resp = create_json(
        &rl,
        &lk,
        &create_request("carrier", room, json!({"wait_until_answered": true})),
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    wait_call_status(&lk, room, "active");
    let (st, body) = roomline::room_service(&lk, "DeleteRoom", room, json!({"room": room}));
    assert_eq!(st, 200, "{body}");
    let run = uas.wait(Duration::from_secs(30));
    run.expect_success();
    let bye = run.first_received("BYE ");
    let reason = header(&bye, "Reason").unwrap_or_else(|| panic!("BYE without Reason:\n{bye}"));
    assert!(reason.starts_with("Q.850;cause="), "{reason}");
    assert!(reason.contains("room closed"), "{reason}");
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// OPTIONS pings: a trunk whose carrier answers them is up in /health/detailed and in
/// roomline_trunk_up; a trunk where nothing listens (TCP, refused) is down; the pings
/// repeat at options_interval.
#[test]
fn options_pings_show_trunk_health_up_and_down() {
    let lk = LiveKitServer::start();
    let mut xml = String::from("  <recv request=\"OPTIONS\"/>\n");
    xml += &response(
        "200 OK",
        true,
        &[
            "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS",
            "Accept: application/sdp",
        ],
        None,
        false,
    );
    let uas = Uas::start(&scenario("uas-options", &xml), 2);
    let alive_port = uas.port;
    let dead = free_port();
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk("alive", &uas.trunk("  options_interval: 1s\n"))
            .trunk(
                "dead",
                &format!(
                    "outbound:\n  address: 127.0.0.1:{dead}\n  transport: tcp\n  from_number: \"{FROM}\"\n  options_interval: 1s\n"
                ),
            ),
    );
    let alive = wait_trunk(&rl, "alive", Duration::from_secs(15), |t| {
        t["health"]["state"] == "up"
    });
    assert_eq!(alive["health"]["status"], 200, "{alive}");
    let down = wait_trunk(&rl, "dead", Duration::from_secs(15), |t| {
        t["health"]["state"] == "down"
    });
    assert!(
        down["health"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{down}"
    );
    assert_eq!(metric(&rl, "roomline_trunk_up{trunk=\"alive\"}"), Some(1.0));
    assert_eq!(metric(&rl, "roomline_trunk_up{trunk=\"dead\"}"), Some(0.0));

    // sipp ends after answering two pings: they repeat
    let run = uas.wait(Duration::from_secs(20));
    run.expect_success();
    let pings: Vec<String> = run
        .received()
        .into_iter()
        .filter(|m| m.starts_with("OPTIONS "))
        .collect();
    assert!(pings.len() >= 2, "{}", run.describe());
    assert!(start_line(&pings[0]).starts_with(&format!("OPTIONS sip:127.0.0.1:{alive_port} ")));
    assert_ne!(
        header(&pings[0], "Call-ID"),
        header(&pings[1], "Call-ID"),
        "each ping is its own request"
    );
    rl.assert_no_leaks(Duration::from_secs(5));
}

/// A trunk whose address is the daemon itself (a loop, or a test set-up) is up: the
/// daemon answers its own OPTIONS like anyone else's, and the ping gets that 200.
#[test]
fn a_trunk_pointing_at_the_daemon_itself_is_up() {
    let lk = LiveKitServer::start();
    let rl = Roomline::start(Setup::new(&lk));
    std::fs::write(
        rl.dir().join("trunks/myself.yaml"),
        format!(
            "outbound:\n  address: {}\n  from_number: \"{FROM}\"\n  options_interval: 1s\n",
            rl.sip_addr()
        ),
    )
    .unwrap();
    rl.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while detailed(&rl)["last_reload"]["trigger"] != "signal" {
        assert!(Instant::now() < deadline, "no reload: {}", rl.log_tail(20));
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = wait_trunk(&rl, "myself", Duration::from_secs(15), |t| {
        t["health"]["state"] == "up"
    });
    assert_eq!(t["health"]["status"], 200, "{t}");
    assert_eq!(
        metric(&rl, "roomline_trunk_up{trunk=\"myself\"}"),
        Some(1.0)
    );
    rl.assert_no_leaks(Duration::from_secs(5));
}

/// A REGISTER answered with a digest challenge (nonce `nonce`), checked by sipp, then 200
/// granting `granted` seconds.
fn registration(nonce: &str, granted: u32, n: u32) -> String {
    let mut s = String::from("  <recv request=\"REGISTER\"/>\n");
    s += &response(
        "401 Unauthorized",
        true,
        &[&format!(
            "WWW-Authenticate: Digest realm=\"registrar.test\", nonce=\"{nonce}\", algorithm=MD5"
        )],
        None,
        false,
    );
    s += &format!(
        "  <recv request=\"REGISTER\">\n    <action>\n      <verifyauth assign_to=\"auth_ok{n}\" username=\"{AUTH_USER}\" password=\"{AUTH_PASS}\"/>\n    </action>\n  </recv>\n"
    );
    s += &format!("  <nop hide=\"true\" test=\"auth_ok{n}\" next=\"registered{n}\"/>\n");
    s += &response("403 Forbidden", true, &[], None, false);
    s += "  <recv request=\"NEVER\" timeout=\"100\"/>\n";
    s += &format!("  <label id=\"registered{n}\"/>\n");
    s += &response(
        "200 OK",
        true,
        &[&format!("[last_Contact:];expires={granted}")],
        None,
        false,
    );
    s
}

/// The REGISTERs sipp received, retransmissions (same branch) left out.
fn registers(run: &SippRun) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in run
        .received()
        .into_iter()
        .filter(|m| m.starts_with("REGISTER "))
    {
        if !out.iter().any(|o| top_via_branch(o) == top_via_branch(&m)) {
            out.push(m);
        }
    }
    out
}

/// REGISTER against a registrar (sipp) that demands digest auth: the daemon answers the
/// challenge, shows the registration in /health/detailed and roomline_trunk_registered,
/// and refreshes it before the (short) expiry the registrar granted, answering the new
/// challenge, in the same Call-ID with a higher CSeq.
#[test]
fn register_answers_the_digest_challenge_and_refreshes_before_expiry() {
    let lk = LiveKitServer::start();
    let mut xml = registration("reg-nonce-1", 6, 1);
    xml += &registration("reg-nonce-2", 3600, 2);
    let uas = Uas::start(&scenario("registrar", &xml), 1);
    let port = uas.port;
    let auth = format!(
        "  auth:\n    username: {AUTH_USER}\n    password: {AUTH_PASS}\n  register:\n    expires: 60s\n"
    );
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk(&auth)));
    let t = wait_trunk(&rl, "carrier", Duration::from_secs(15), |t| {
        t["registration"]["state"] == "registered"
    });
    assert_eq!(t["registration"]["expires_s"], 6, "{t}");
    assert_eq!(
        metric(&rl, "roomline_trunk_registered{trunk=\"carrier\"}"),
        Some(1.0)
    );

    // the refresh: sipp's scenario ends once the refreshed registration is granted
    let run = uas.wait(Duration::from_secs(40));
    run.expect_success();
    let regs = registers(&run);
    assert_eq!(regs.len(), 4, "{}", run.describe());
    let aor = format!("sip:{AUTH_USER}@127.0.0.1:{port}");
    for (i, r) in regs.iter().enumerate() {
        assert!(
            start_line(r).starts_with(&format!("REGISTER sip:127.0.0.1:{port} ")),
            "{r}"
        );
        assert!(header(r, "To").unwrap().contains(&aor), "{r}");
        assert!(header(r, "From").unwrap().contains(&aor), "{r}");
        assert!(
            header(r, "Contact").unwrap().contains("roomline@127.0.0.1"),
            "{r}"
        );
        assert_eq!(header(r, "Expires"), Some("60"), "{r}");
        assert_eq!(
            header(r, "Call-ID"),
            header(&regs[0], "Call-ID"),
            "one Call-ID for the registration"
        );
        if i > 0 {
            assert!(
                cseq_number(r) > cseq_number(&regs[i - 1]),
                "CSeq grows: {r}"
            );
        }
    }
    assert!(header(&regs[0], "Authorization").is_none());
    assert!(
        header(&regs[1], "Authorization")
            .unwrap()
            .contains("nonce=\"reg-nonce-1\"")
    );
    assert!(
        header(&regs[3], "Authorization")
            .unwrap()
            .contains("nonce=\"reg-nonce-2\"")
    );
    let t = wait_trunk(&rl, "carrier", Duration::from_secs(10), |t| {
        t["registration"]["expires_s"] == 3600
    });
    assert_eq!(t["registration"]["state"], "registered", "{t}");
    rl.assert_no_leaks(Duration::from_secs(5));
}

/// SIGTERM: the daemon un-registers (REGISTER with Expires: 0 for the same binding, in
/// the registration's Call-ID) before it exits; `register.user` is the address-of-record.
#[test]
fn sigterm_unregisters_before_exit() {
    let lk = LiveKitServer::start();
    let mut xml = String::from("  <recv request=\"REGISTER\"/>\n");
    xml += &response(
        "200 OK",
        true,
        &["[last_Contact:];expires=3600"],
        None,
        false,
    );
    xml += "  <recv request=\"REGISTER\" timeout=\"60000\"/>\n";
    xml += &response("200 OK", true, &[], None, false);
    let uas = Uas::start(&scenario("registrar-unregister", &xml), 1);
    let port = uas.port;
    let mut rl = Roomline::start(Setup::new(&lk).trunk(
        "carrier",
        &uas.trunk("  register:\n    expires: 3600s\n    user: \"15550100\"\n"),
    ));
    wait_trunk(&rl, "carrier", Duration::from_secs(15), |t| {
        t["registration"]["state"] == "registered"
    });
    rl.assert_no_leaks(Duration::from_secs(5));
    rl.signal("TERM");
    assert_eq!(
        rl.wait_exit(Duration::from_secs(30)),
        Some(0),
        "exit status after SIGTERM"
    );
    let run = uas.wait(Duration::from_secs(10));
    run.expect_success();
    let regs = registers(&run);
    assert_eq!(regs.len(), 2, "{}", run.describe());
    let (reg, unreg) = (&regs[0], &regs[1]);
    let aor = format!("sip:15550100@127.0.0.1:{port}");
    assert!(header(reg, "To").unwrap().contains(&aor), "{reg}");
    assert_eq!(header(reg, "Expires"), Some("3600"), "{reg}");
    assert_eq!(header(unreg, "Expires"), Some("0"), "{unreg}");
    assert_eq!(
        header(unreg, "Contact"),
        header(reg, "Contact"),
        "the same binding is removed"
    );
    assert_eq!(header(unreg, "Call-ID"), header(reg, "Call-ID"));
    assert!(header(unreg, "To").unwrap().contains(&aor), "{unreg}");
    assert!(cseq_number(unreg) > cseq_number(reg));
}

/// `roomline dial` (the CLI over the API): a call that is answered exits 0 and prints the
/// participant as JSON; a busy callee makes it exit non-zero, saying 486.
#[test]
fn roomline_dial_places_a_call_and_reports_a_busy_callee() {
    let lk = LiveKitServer::start();
    let room = "outbound-cli";
    let answering = completing_uas();
    let mut xml = recv_invite("");
    xml += &response("486 Busy Here", true, &[], None, false);
    xml += "  <recv request=\"ACK\"/>\n";
    let busy = Uas::start(&scenario("uas-busy", &xml), 1);
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk("carrier", &answering.trunk(""))
            .trunk("busy-line", &busy.trunk("")),
    );
    let dial = |trunk: &str| {
        let dir = tempfile::tempdir().unwrap();
        let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_roomline"))
            .arg("dial")
            .arg("--config")
            .arg(rl.config_path())
            .args(["--trunk", trunk, "--to", CALLEE, "--room", room, "--wait"])
            .env_remove("LIVEKIT_URL")
            .env_remove("LIVEKIT_API_KEY")
            .env_remove("LIVEKIT_API_SECRET")
            .env_remove("ROOMLINE_CONFIG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("run roomline dial");
        let status = common::wait_timeout(&mut child, Duration::from_secs(60))
            .expect("roomline dial did not finish within 60 s");
        (
            status,
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default(),
        )
    };

    let (status, stdout, stderr) = dial("carrier");
    assert!(
        status.success(),
        "roomline dial failed ({status}): {stdout} {stderr}"
    );
    let v: Value =
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(
        field(&v, "participant_identity"),
        identity().as_str(),
        "{v}"
    );
    assert_eq!(field(&v, "room_name"), room, "{v}");
    answering.wait_received("INVITE ", Duration::from_secs(5));
    assert!(
        is_call_id(field(&v, "sip_call_id").as_str().unwrap_or("")),
        "{v}"
    );
    answering.wait(Duration::from_secs(30)).expect_success();
    wait_room_empty_of_phone(&lk, room);

    let (status, stdout, stderr) = dial("busy-line");
    assert!(
        !status.success(),
        "roomline dial succeeded on a busy line: {stdout}"
    );
    assert!(stderr.contains("486"), "stderr does not say 486: {stderr}");
    busy.wait(Duration::from_secs(30)).expect_success();
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// The callee's side of a transfer: it answers, gets the REFER (Refer-To kept in
/// $refer_to), accepts it with 202, reports `SIP/2.0 100 Trying` then `final_frag` in
/// NOTIFYs (message/sipfrag, Event: refer).
fn transfer_scenario(final_frag: &str) -> String {
    let mut s = recv_invite("");
    s += &answer("[media_port]", 0);
    s += r#"  <recv request="REFER" timeout="60000">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Refer-To:" assign_to="refer_to"/>
    </action>
  </recv>
"#;
    s += &response("202 Accepted", false, &[], None, false);
    s += &uas_request(
        "NOTIFY",
        10,
        &["Event: refer", "Subscription-State: active;expires=60"],
        Some(("message/sipfrag;version=2.0", "SIP/2.0 100 Trying")),
    );
    s += "  <recv response=\"200\"/>\n";
    s += &uas_request(
        "NOTIFY",
        11,
        &[
            "Event: refer",
            "Subscription-State: terminated;reason=noresource",
        ],
        Some((
            "message/sipfrag;version=2.0",
            &format!("SIP/2.0 {final_frag}"),
        )),
    );
    s += "  <recv response=\"200\"/>\n";
    s
}

fn answered_call(rl: &Roomline, lk: &LiveKitServer, room: &str) {
    let resp = create_json(
        rl,
        lk,
        &create_request("carrier", room, json!({"wait_until_answered": true})),
    );
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    wait_call_status(lk, room, "active");
}

/// TransferSIPParticipant (the SDK): the callee gets a REFER in the dialog, answers 202,
/// reports 100 then 200 in sipfrag NOTIFYs (both answered 200); the API reports a
/// successful transfer and the daemon then ends its leg with BYE.
#[test]
fn transfer_by_refer_succeeds_and_the_call_ends_with_bye() {
    let lk = LiveKitServer::start();
    let room = "outbound-transfer";
    let mut xml = transfer_scenario("200 OK");
    xml += &await_bye();
    let uas = Uas::start(&scenario("uas-transfer", &xml), 1);
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));
    answered_call(&rl, &lk, room);

    let report = sdk(
        &rl,
        &lk,
        "transfer",
        &json!({
            "participant_identity": identity(),
            "room_name": room,
            "transfer_to": "+15559990000",
        }),
        None,
    );
    assert_eq!(
        report["ok"], true,
        "TransferSIPParticipant failed: {report}"
    );
    assert_eq!(
        report["response"]["status"], "STS_TRANSFER_SUCCESSFUL",
        "{report}"
    );

    let run = uas.wait(Duration::from_secs(30));
    run.expect_success();
    let invite = &run.first_received("INVITE ");
    let refer = &run.first_received("REFER ");
    assert_eq!(
        header(refer, "Call-ID"),
        header(invite, "Call-ID"),
        "REFER in the call's dialog"
    );
    let refer_to = header(refer, "Refer-To").unwrap_or_else(|| panic!("{refer}"));
    assert!(
        refer_to.starts_with("<sip:+15559990000@127.0.0.1:"),
        "a bare number goes to the callee's host: {refer_to}"
    );
    assert!(header(refer, "Referred-By").is_some(), "{refer}");
    assert_eq!(
        run.received_statuses(),
        vec![200, 200],
        "both NOTIFYs answered 200:\n{}",
        run.describe()
    );
    let bye = &run.first_received("BYE ");
    assert!(
        header(bye, "Reason").is_some_and(|r| r.contains("transferred")),
        "{bye}"
    );
    wait_room_empty_of_phone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// The transfer target refuses (NOTIFY sipfrag 486): the API returns an error carrying
/// the 486 (the SDK raises SipCallError with sip_status_code 486 and sip_transfer_reason
/// STR_REJECTED), and the call stays up (the participant is active again, no BYE) until the
/// callee hangs up.
#[test]
fn a_refused_transfer_returns_an_error_and_the_call_stays_up() {
    let lk = LiveKitServer::start();
    let room = "outbound-transfer-refused";
    let mut xml = transfer_scenario("486 Busy Here");
    xml += &hang_up_after(5000);
    let uas = Uas::start(&scenario("uas-transfer-refused", &xml), 1);
    let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));
    answered_call(&rl, &lk, room);

    let report = sdk(
        &rl,
        &lk,
        "transfer",
        &json!({
            "participant_identity": identity(),
            "room_name": room,
            "transfer_to": "sip:agent@127.0.0.1",
        }),
        None,
    );
    assert_eq!(report["ok"], false, "{report}");
    // what LiveKit's SDK makes of it: a SipCallError with the target's status
    assert_eq!(report["error_type"], "SipCallError", "{report}");
    assert_eq!(report["metadata"]["sip_status_code"], "486", "{report}");
    assert_eq!(report["metadata"]["sip_status"], "Busy Here", "{report}");
    assert_eq!(
        report["metadata"]["sip_transfer_reason"], "STR_REJECTED",
        "{report}"
    );
    assert!(
        report["message"].as_str().unwrap_or("").contains("486"),
        "{report}"
    );
    // the call is still up
    let p = wait_call_status(&lk, room, "active");
    assert_eq!(p["identity"], identity().as_str());
    assert!(
        !uas.received_so_far().iter().any(|m| m.starts_with("BYE ")),
        "the daemon hung up after a failed transfer"
    );
    let run = uas.wait(Duration::from_secs(30));
    run.expect_success();
    assert_eq!(
        run.received_statuses(),
        vec![200, 200, 200],
        "{}",
        run.describe()
    );
    wait_room_empty_of_phone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(15));
}

// ---------------------------------------------------------------------------------------
// LiveKit's other server SDKs (Go, Node) against the same API
// ---------------------------------------------------------------------------------------

/// What every SDK must get from Roomline's API: a placed call (`sip_call_id` is a call
/// id `SCL_...`), the SIP status of a refused call from the error, a transfer (REFER, then
/// BYE), and a clear refusal of a request with 100 headers (nothing dialled). `full`:
/// all of it, else only the 100 headers (the Python SDK's other scenarios are above).
fn sdk_scenarios(sdk: Sdk, full: bool) {
    let lk = LiveKitServer::start();
    let tag = format!("{sdk:?}").to_lowercase();
    let req = |room: &str, extra: Value| {
        let mut extra = extra;
        extra["participant_identity"] = json!(identity());
        create_request("carrier", room, extra)
    };
    // 100 headers: refused by name, nothing dialled
    {
        let room = format!("sdk-{tag}-headers");
        let trunk = silent_trunk();
        let port = trunk.local_addr().unwrap().port();
        let rl = Roomline::start(Setup::new(&lk).trunk(
            "carrier",
            &format!("outbound:\n  address: 127.0.0.1:{port}\n  from_number: \"{FROM}\"\n"),
        ));
        let headers: serde_json::Map<String, Value> = (0..100)
            .map(|i| (format!("X-Header-{i}"), json!("v")))
            .collect();
        let report = run_sdk_with(
            sdk,
            rl.http_port,
            lk.api_key(),
            lk.api_secret(),
            "create",
            &req(
                &room,
                json!({"headers": headers, "wait_until_answered": true}),
            ),
            None,
        );
        assert_eq!(report["ok"], false, "{sdk:?}: {report}");
        assert_eq!(report["code"], "invalid_argument", "{sdk:?}: {report}");
        assert!(
            report["message"]
                .as_str()
                .unwrap_or("")
                .contains("100 headers, at most 32"),
            "{sdk:?}: {report}"
        );
        assert_nothing_sent_to(&trunk);
        assert!(roomline::list_participants(&lk, &room).is_empty());
        rl.assert_no_leaks(Duration::from_secs(5));
    }
    if !full {
        return;
    }
    // a busy callee: the SIP status comes back in the error
    {
        let room = format!("sdk-{tag}-busy");
        let mut xml = recv_invite("");
        xml += &response("486 Busy Here", true, &[], None, false);
        xml += "  <recv request=\"ACK\"/>\n";
        let uas = Uas::start(&scenario("uas-busy", &xml), 1);
        let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));
        let report = run_sdk_with(
            sdk,
            rl.http_port,
            lk.api_key(),
            lk.api_secret(),
            "create",
            &req(&room, json!({"wait_until_answered": true})),
            None,
        );
        assert_eq!(report["ok"], false, "{sdk:?}: {report}");
        assert_eq!(report["code"], "resource_exhausted", "{sdk:?}: {report}");
        assert_eq!(
            report["metadata"]["sip_status_code"], "486",
            "{sdk:?}: {report}"
        );
        assert_eq!(
            report["metadata"]["sip_status"], "Busy Here",
            "{sdk:?}: {report}"
        );
        if sdk == Sdk::Node {
            // the Node SDK's own reading of it
            assert_eq!(report["error_type"], "SipCallError", "{report}");
            assert_eq!(report["sip_status_code"], 486, "{report}");
        }
        uas.wait(Duration::from_secs(30)).expect_success();
        wait_room_empty_of_phone(&lk, &room);
        rl.assert_no_leaks(Duration::from_secs(15));
    }
    // a call placed, then transferred
    {
        let room = format!("sdk-{tag}-transfer");
        let mut xml = transfer_scenario("200 OK");
        xml += &await_bye();
        let uas = Uas::start(&scenario("uas-transfer", &xml), 1);
        let rl = Roomline::start(Setup::new(&lk).trunk("carrier", &uas.trunk("")));
        let report = run_sdk_with(
            sdk,
            rl.http_port,
            lk.api_key(),
            lk.api_secret(),
            "create",
            &req(&room, json!({"wait_until_answered": true})),
            None,
        );
        assert_eq!(report["ok"], true, "{sdk:?}: {report}");
        let r = &report["response"];
        assert_eq!(r["participant_identity"], identity().as_str(), "{report}");
        assert_eq!(r["room_name"], room.as_str(), "{report}");
        let call_id = r["sip_call_id"].as_str().unwrap_or_default();
        assert!(
            call_id.starts_with("SCL_") && call_id.len() == 16,
            "{sdk:?}: {report}"
        );
        let p = wait_call_status(&lk, &room, "active");
        assert_eq!(p["attributes"]["sip.callID"], call_id, "{p}");
        let report = run_sdk_with(
            sdk,
            rl.http_port,
            lk.api_key(),
            lk.api_secret(),
            "transfer",
            &json!({
                "participant_identity": identity(),
                "room_name": room,
                "transfer_to": "+15559990000",
            }),
            None,
        );
        assert_eq!(report["ok"], true, "{sdk:?} transfer: {report}");
        let run = uas.wait(Duration::from_secs(30));
        run.expect_success();
        let refer = run.first_received("REFER ");
        assert!(
            header(&refer, "Refer-To").is_some_and(|r| r.starts_with("<sip:+15559990000@")),
            "{refer}"
        );
        let bye = run.first_received("BYE ");
        assert!(
            header(&bye, "Reason").is_some_and(|r| r.contains("transferred")),
            "{bye}"
        );
        wait_room_empty_of_phone(&lk, &room);
        rl.assert_no_leaks(Duration::from_secs(15));
    }
}

/// LiveKit's Go server SDK (server-sdk-go v2) places, reads a refused call's status,
/// transfers, and is refused 100 headers.
#[test]
fn go_sdk_places_reads_a_refusal_and_transfers() {
    sdk_scenarios(Sdk::Go, true);
}

/// LiveKit's Node server SDK (livekit-server-sdk) does the same.
#[test]
fn node_sdk_places_reads_a_refusal_and_transfers() {
    sdk_scenarios(Sdk::Node, true);
}

/// The Python SDK's request with 100 headers is refused by name (its other scenarios are
/// the tests above).
#[test]
fn python_sdk_request_with_100_headers_is_refused() {
    sdk_scenarios(Sdk::Python, false);
}

// ---------------------------------------------------------------------------------------
// TLS to the carrier
// ---------------------------------------------------------------------------------------

/// A TLS carrier: `openssl s_server` on 127.0.0.1 with the given certificate. What the
/// daemon sends arrives on its stdout (read on a thread, one SIP message at a time by
/// Content-Length); what is written to its stdin goes back. Killed by PID on drop.
struct TlsCarrier {
    child: std::process::Child,
    port: u16,
    stdin: std::process::ChildStdin,
    rx: std::sync::mpsc::Receiver<String>,
}

impl TlsCarrier {
    fn start(cert: &std::path::Path, key: &std::path::Path) -> TlsCarrier {
        let port = free_port();
        let mut child = Command::new("openssl")
            .args([
                "s_server",
                "-quiet",
                "-accept",
                &format!("127.0.0.1:{port}"),
            ])
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            (k.eq_ignore_ascii_case("content-length") || k == "l")
                                .then(|| v.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if buf.len() < end + 4 + len {
                        break;
                    }
                    let msg: Vec<u8> = buf.drain(..end + 4 + len).collect();
                    let _ = tx.send(String::from_utf8_lossy(&msg).into_owned());
                }
                match stdout.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        // s_server listens once it has read its files
        let until = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "s_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        TlsCarrier {
            child,
            port,
            stdin,
            rx,
        }
    }

    fn recv(&self, within: Duration) -> Option<String> {
        self.rx.recv_timeout(within).ok()
    }

    /// Answers `request` with `status` (a final response, copying what RFC 3261 8.2.6
    /// says to copy).
    fn respond(&mut self, request: &str, status: &str) {
        let mut out = format!("SIP/2.0 {status}\r\n");
        for l in request.lines() {
            let name = l
                .split(':')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match name.as_str() {
                "via" | "from" | "call-id" | "cseq" => out += &format!("{l}\r\n"),
                "to" => out += &format!("{l};tag=tls-carrier\r\n"),
                _ => {}
            }
        }
        out += "Content-Length: 0\r\n\r\n";
        self.stdin.write_all(out.as_bytes()).unwrap();
        self.stdin.flush().unwrap();
    }
}

impl Drop for TlsCarrier {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Outbound TLS to a carrier whose certificate comes from a private CA named by the
/// trunk's `ca_file`: the handshake verifies the certificate for the trunk's host, the
/// INVITE goes out with a sips: Request-URI on that connection, and the carrier's 486
/// reaches the API caller.
#[test]
fn outbound_tls_verifies_the_carrier_against_the_trunks_ca_file() {
    let lk = LiveKitServer::start();
    let room = "outbound-tls";
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(dir.path(), "carrier");
    let (cert, key) = pki.leaf("carrier", "127.0.0.1", "IP:127.0.0.1");
    let mut carrier = TlsCarrier::start(&cert, &key);
    let rl = Roomline::start(Setup::new(&lk).trunk(
        "secure",
        &format!(
            "outbound:\n  address: sips:127.0.0.1:{}\n  from_number: \"{FROM}\"\n  ca_file: {}\n",
            carrier.port,
            pki.ca_cert.display()
        ),
    ));
    let (rl_ref, lk_ref) = (&rl, &lk);
    std::thread::scope(|s| {
        let api = s.spawn(move || {
            create_json(
                rl_ref,
                lk_ref,
                &create_request("secure", room, json!({"wait_until_answered": true})),
            )
        });
        let invite = carrier
            .recv(Duration::from_secs(15))
            .unwrap_or_else(|| panic!("no INVITE over TLS:\n{}", rl.log_tail(30)));
        assert!(
            invite.starts_with(&format!("INVITE sips:{CALLEE}@127.0.0.1:{}", carrier.port)),
            "{invite}"
        );
        assert!(invite.contains("SIP/2.0/TLS"), "Via over TLS: {invite}");
        carrier.respond(&invite, "486 Busy Here");
        let ack = carrier.recv(Duration::from_secs(10)).expect("ACK");
        assert!(ack.starts_with("ACK sips:"), "{ack}");
        let resp = api.join().unwrap();
        let v = resp.json();
        assert_eq!(resp.status, 429, "{v}");
        assert_eq!(v["meta"]["sip_status_code"], "486", "{v}");
    });
    wait_room_empty_of_phone(&lk, room);
    rl.assert_no_leaks(Duration::from_secs(15));
}

/// The carrier presents a certificate from the right CA but for another name: the
/// handshake is refused with a log line that says so, and the call fails over to the
/// backup trunk, where it completes.
#[test]
fn outbound_tls_to_a_carrier_with_the_wrong_name_fails_over_to_the_backup() {
    let lk = LiveKitServer::start();
    let room = "outbound-tls-wrong-name";
    let dir = tempfile::tempdir().unwrap();
    let pki = common::pki::Pki::new(dir.path(), "carrier");
    let (cert, key) = pki.leaf("impostor", "wrong.example", "DNS:wrong.example");
    let carrier = TlsCarrier::start(&cert, &key);
    let backup = completing_uas();
    let rl = Roomline::start(failover_setup(
        &lk,
        &format!(
            "  address: sips:127.0.0.1:{}\n  ca_file: {}\n",
            carrier.port,
            pki.ca_cert.display()
        ),
        &backup,
    ));
    assert_completed_through_backup(&rl, &lk, room, backup);
    let line = rl.wait_log(
        "TLS: the peer's certificate is refused",
        Duration::from_secs(5),
    );
    assert!(
        line.contains("NotValidForName") || line.contains("not valid for name"),
        "{line}"
    );
    assert!(
        line.contains(&format!("127.0.0.1:{}", carrier.port)),
        "{line}"
    );
    assert!(
        carrier.recv(Duration::from_millis(200)).is_none(),
        "nothing sent in clear"
    );
    rl.assert_no_leaks(Duration::from_secs(15));
}
