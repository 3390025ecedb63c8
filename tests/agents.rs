//! A real LiveKit Agents worker (PyPI `livekit-agents`, tests/peers/agent_worker.py) on
//! calls through Roomline, as a voice-AI operator runs it: a dialplan rule dispatches the
//! agent when a phone (pjsua2, tests/peers/phone.py) calls in; the agent places a call
//! itself with CreateSIPParticipant through Roomline's API. Asserted is what the agent and
//! the phone observe: the SIP participant's attributes in the room (`sip.phoneNumber`,
//! `sip.trunkID`, `sip.callID` equal to the API's `sip_call_id`, header-mapped
//! attributes), the agent's tone heard by the phone at its frequency, the phone's DTMF
//! received by the agent, and the BYE the phone gets when the agent removes the SIP
//! participant. One livekit-server and one worker serve the tests of this file that run
//! at the same time (the worker takes ~10 s to start); each job runs in a process of its
//! own (the framework's process executor, with two warm processes), so the two jobs share
//! no event loop and no LiveKit FFI client (tests/peers/agent_worker.py says why).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{Roomline, Setup, free_port, header};
use common::{run_phone, run_roompeer, within};
use serde_json::{Value, json};

const AGENT: &str = "roomline-test-agent";
const CALLER: &str = "+15551230000";
const CALLED: &str = "+15550100";
const CALLEE: &str = "+15551230001";

/// The agent worker process, stopped by PID on drop.
struct Worker {
    child: Child,
    reports: tempfile::TempDir,
    log: PathBuf,
}

impl Drop for Worker {
    fn drop(&mut self) {
        common::stop_child(&mut self.child, Duration::from_secs(10));
    }
}

/// What the tests share; the last test to let go of it stops both processes (the worker
/// first: fields drop in order).
struct Shared {
    worker: Worker,
    lk: LiveKitServer,
}

static SHARED: Mutex<Weak<Shared>> = Mutex::new(Weak::new());

fn shared() -> Arc<Shared> {
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let lk = LiveKitServer::start();
    let worker = start_worker(&lk);
    let s = Arc::new(Shared { worker, lk });
    *slot = Arc::downgrade(&s);
    s
}

fn agents_python() -> PathBuf {
    common::tool_path(
        "ROOMLINE_AGENTS_PYTHON",
        common::tools_dir()
            .join("agents-venv")
            .join("bin")
            .join("python"),
        "the LiveKit Agents venv",
    )
}

fn start_worker(lk: &LiveKitServer) -> Worker {
    let reports = tempfile::Builder::new()
        .prefix("roomline-agent-")
        .tempdir()
        .unwrap();
    let out = reports.path().join("worker.stdout");
    let log = reports.path().join("worker.log");
    let child = Command::new(agents_python())
        .arg(common::repo_root().join("tests/peers/agent_worker.py"))
        .args(["--url", &lk.url(), "--api-key", lk.api_key()])
        .args(["--api-secret", lk.api_secret(), "--agent-name", AGENT])
        .arg("--reports")
        .arg(reports.path())
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start the agent worker");
    let mut w = Worker {
        child,
        reports,
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        if text.contains("\"registered\"") {
            return w;
        }
        if let Ok(Some(st)) = w.child.try_wait() {
            panic!(
                "the agent worker exited ({st}):\n{}",
                common::tail_file(&w.log, 40)
            );
        }
        assert!(
            Instant::now() < deadline,
            "the agent worker did not register in 120 s:\n{}",
            common::tail_file(&w.log, 40)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Shared {
    /// The agent's report of its job in `room`, once the job is done.
    fn report(&self, room: &str, within: Duration) -> Value {
        let path = self.worker.reports.path().join(format!("{room}.json"));
        let deadline = Instant::now() + within;
        loop {
            let v: Value = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or(Value::Null);
            if v["done"] == true {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "no finished agent job in {room} within {within:?} (so far: {v})\n{}",
                self.log_for(&v)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The worker's log for a failure message: the lines of the job's own process (the
    /// report's `pid`; a line carries its writer's PID, continuation lines such as
    /// tracebacks follow their line), then the end of the whole log (dispatch, process
    /// pool, shutdown).
    fn log_for(&self, report: &Value) -> String {
        let mut out = String::new();
        if let Some(pid) = report["pid"].as_u64() {
            let text = std::fs::read_to_string(&self.worker.log).unwrap_or_default();
            let tag = format!(" [{pid}] ");
            let mut ours = false;
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| {
                    let b = l.as_bytes();
                    if b.len() > 5 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' {
                        ours = l.contains(&tag);
                    }
                    ours
                })
                .collect();
            let from = lines.len().saturating_sub(60);
            out += &format!("the job's process ({pid}):\n{}\n", lines[from..].join("\n"));
        }
        out + "worker log (end):\n" + &common::tail_file(&self.worker.log, 30)
    }

    /// AgentDispatchService.CreateDispatch on the livekit-server.
    fn dispatch(&self, room: &str, metadata: &Value) {
        use livekit_api::access_token::{AccessToken, VideoGrants};
        let token = AccessToken::with_api_key(self.lk.api_key(), self.lk.api_secret())
            .with_identity("test-admin")
            .with_ttl(Duration::from_secs(60))
            .with_grants(VideoGrants {
                room_admin: true,
                room: room.to_string(),
                ..Default::default()
            })
            .to_jwt()
            .unwrap();
        let body = json!({"room": room, "agent_name": AGENT, "metadata": metadata.to_string()});
        let (status, text) = self.lk.twirp(
            "livekit.AgentDispatchService/CreateDispatch",
            &token,
            &body.to_string(),
        );
        assert_eq!(status, 200, "CreateDispatch: {text}");
    }
}

/// The agent's job went as planned; its view of the SIP participant's attributes.
fn agent_saw<'a>(s: &Shared, report: &'a Value, phone: &common::PeerRun) -> &'a Value {
    let why = || {
        format!(
            "{report}\nphone: {}\n{}",
            phone.describe(),
            s.log_for(report)
        )
    };
    assert_eq!(
        report["errors"],
        json!([]),
        "the agent's job failed: {}",
        why()
    );
    assert_eq!(report["removed"], true, "{}", why());
    assert_eq!(report["participant"]["kind"], 3, "kind SIP: {}", why());
    &report["participant"]["attributes"]
}

fn is_call_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 16 && s.starts_with("SCL_") && s[4..].chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// The phone heard `hz` (its own recording, analysed by the room peer's analyser).
fn assert_heard(wav: &std::path::Path, hz: f64) {
    let a = run_roompeer(
        ["analyze-wav".to_string(), wav.display().to_string()],
        Duration::from_secs(60),
    );
    let r = a.expect_ok().clone();
    assert!(
        within(a.f64("dominant_hz"), hz, 0.02),
        "the phone heard {} Hz, not the agent's {hz} Hz: {r}",
        a.f64("dominant_hz")
    );
    assert!(
        a.f64("nonsilent_seconds") >= 2.0,
        "the phone heard too little of the agent: {r}"
    );
}

/// A phone calls a number whose rule dispatches the agent. The agent receives the job,
/// sees the caller's number, the trunk and the carrier's headers as attributes, speaks
/// (440 Hz, the phone hears it), hears the phone's DTMF, and hangs up by removing the SIP
/// participant: the phone gets a BYE.
#[test]
fn a_dispatched_agent_answers_a_phone_call_and_hangs_up() {
    let s = shared();
    let room = "agent-inbound";
    let meta = json!({"mode": "inbound", "tone_hz": 440, "tone_seconds": 6, "expect_dtmf": "1#"});
    let plan = format!(
        "rules:\n  - name: agent-line\n    match:\n      called: \"{CALLED}\"\n    room: {room}\n    \
         answer: on_first_track\n    ringing_timeout: 60s\n    agents:\n      - name: {AGENT}\n        metadata: '{meta}'\n"
    );
    let trunk = "inbound:\n  allowed_addresses: [127.0.0.1/32]\n  include_headers: x_headers\n  \
                 headers_to_attributes:\n    X-Customer-Tier: customer.tier\n";
    let rl = Roomline::start(
        Setup::new(&s.lk)
            .trunk("local", trunk)
            .dialplan("main", &plan),
    );
    let dir = tempfile::tempdir().unwrap();
    let heard = dir.path().join("heard.wav");
    let phone = run_phone(
        [
            "call".to_string(),
            format!("sip:{CALLED}@{}", rl.sip_addr()),
            "--codec".into(),
            "PCMU".into(),
            "--from-user".into(),
            CALLER.into(),
            "--record".into(),
            heard.display().to_string(),
            "--seconds".into(),
            "45".into(),
            "--dtmf".into(),
            "1#".into(),
            "--header".into(),
            "X-Twilio-CallSid: CA0123456789abcdef0123456789abcdef".into(),
            "--header".into(),
            "X-Customer-Tier: gold".into(),
            "--timeout".into(),
            "90".into(),
        ],
        Duration::from_secs(120),
    );
    let report = s.report(room, Duration::from_secs(60));
    let attrs = agent_saw(&s, &report, &phone);
    let p = phone.expect_ok().clone();
    // what the agent read
    assert_eq!(attrs["sip.phoneNumber"], CALLER, "{report}");
    assert_eq!(attrs["sip.trunkPhoneNumber"], CALLED, "{report}");
    assert_eq!(attrs["sip.trunkID"], "local", "{report}");
    assert_eq!(attrs["sip.ruleID"], "agent-line", "{report}");
    assert_eq!(attrs["customer.tier"], "gold", "{report}");
    assert_eq!(attrs["sip.h.x-customer-tier"], "gold", "{report}");
    assert_eq!(
        attrs["sip.twilio.callSid"], "CA0123456789abcdef0123456789abcdef",
        "{report}"
    );
    assert!(is_call_id(&attrs["sip.callID"]), "{report}");
    assert!(
        attrs["sip.callIDFull"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{report}"
    );
    assert_eq!(report["participant"]["identity"], format!("sip_{CALLER}"));
    assert!(
        report["dtmf"].as_str().unwrap_or("").contains("1#"),
        "the agent got the phone's DTMF: {report}"
    );
    // what the phone observed: the agent's voice, then the agent's hang-up
    assert_eq!(
        p["ended_by_remote"],
        true,
        "the phone got a BYE: {}",
        phone.describe()
    );
    assert_heard(&heard, 440.0);
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// The agent, in a room of its own, calls a phone with CreateSIPParticipant through
/// Roomline's API (the Python server SDK inside the agent). The attribute `sip.callID` is
/// the `sip_call_id` the API returned; the request's attribute reaches the callee as a
/// header (`attributes_to_headers`) and the callee's 200 OK header comes back as an
/// attribute (`headers_to_attributes`); the callee hears the agent (660 Hz), the agent
/// hears the callee's DTMF, and removing the participant sends the callee a BYE.
#[test]
fn an_agent_places_a_call_with_create_sip_participant() {
    let s = shared();
    let room = "agent-outbound";
    let callee_port = free_port();
    let trunk = format!(
        "outbound:\n  address: 127.0.0.1:{callee_port}\n  from_number: \"{CALLED}\"\n  \
         include_headers: x_headers\n  headers_to_attributes:\n    X-Callee-Ref: callee.ref\n  \
         attributes_to_headers:\n    customer.id: X-Customer-Id\n    sip.callID: X-LK-Call-Id\n"
    );
    let rl = Roomline::start(Setup::new(&s.lk).trunk("carrier", &trunk));
    let dir = tempfile::tempdir().unwrap();
    let heard = dir.path().join("heard.wav");
    let heard_arg = heard.display().to_string();
    let callee = std::thread::spawn(move || {
        run_phone(
            [
                "answer",
                "--local-port",
                &callee_port.to_string(),
                "--record",
                &heard_arg,
                "--seconds",
                "45",
                "--dtmf",
                "2#",
                "--header",
                "X-Callee-Ref: r-77",
                "--timeout",
                "90",
            ],
            Duration::from_secs(120),
        )
    });
    std::thread::sleep(Duration::from_secs(1));
    let meta = json!({
        "mode": "outbound",
        "api_url": format!("http://127.0.0.1:{}", rl.http_port),
        "request": {
            "sip_trunk_id": "carrier",
            "sip_call_to": CALLEE,
            "participant_identity": "callee",
            "participant_attributes": {"customer.id": "c-42"},
            "wait_until_answered": true,
        },
        "tone_hz": 660,
        "tone_seconds": 6,
        "expect_dtmf": "2#",
    });
    s.dispatch(room, &meta);
    let report = s.report(room, Duration::from_secs(90));
    let phone = callee.join().unwrap();
    let attrs = agent_saw(&s, &report, &phone);
    let p = phone.expect_ok().clone();
    let created = &report["created"];
    assert!(is_call_id(&created["sip_call_id"]), "{report}");
    assert_eq!(
        attrs["sip.callID"], created["sip_call_id"],
        "sip.callID is the API's sip_call_id: {report}"
    );
    assert_eq!(created["participant_identity"], "callee", "{report}");
    assert_eq!(attrs["sip.phoneNumber"], CALLEE, "{report}");
    assert_eq!(attrs["sip.trunkPhoneNumber"], CALLED, "{report}");
    assert_eq!(attrs["sip.trunkID"], "carrier", "{report}");
    assert_eq!(attrs["sip.hostname"], "127.0.0.1", "{report}");
    assert_eq!(attrs["customer.id"], "c-42", "{report}");
    assert_eq!(attrs["callee.ref"], "r-77", "{report}");
    assert_eq!(attrs["sip.h.x-callee-ref"], "r-77", "{report}");
    let invite = p["invite"]
        .as_str()
        .unwrap_or_default()
        .replace("\r\n", "\n");
    assert_eq!(
        attrs["sip.callIDFull"].as_str(),
        header(&invite, "Call-ID"),
        "{report}\n{invite}"
    );
    assert!(
        attrs["sip.callTag"].as_str().is_some_and(|t| !t.is_empty()),
        "{report}"
    );
    assert_eq!(header(&invite, "X-Customer-Id"), Some("c-42"), "{invite}");
    assert_eq!(
        header(&invite, "X-LK-Call-Id"),
        created["sip_call_id"].as_str(),
        "{invite}"
    );
    assert!(
        report["dtmf"].as_str().unwrap_or("").contains("2#"),
        "the agent got the callee's DTMF: {report}"
    );
    assert_eq!(
        p["ended_by_remote"],
        true,
        "the callee got a BYE: {}",
        phone.describe()
    );
    assert_heard(&heard, 660.0);
    rl.assert_no_leaks(Duration::from_secs(20));
}
