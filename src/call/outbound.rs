//! An outbound call, one task: a room asked (CreateSIPParticipant) to dial a number
//! through a trunk. The participant joins first (`sip.callStatus` dialing, then ringing,
//! active, hangup); the INVITE goes to the trunk with our SDP offer; a 401/407 is answered
//! with the trunk's credentials (again only for a stale nonce); 180/183 ring (183 with
//! SDP starts early media); 2xx is ACKed and the call is up; a transport error, a
//! timeout or 408/5xx/6xx moves the call to the trunk's backup once, while the ringing
//! timeout allows; the ringing timeout sends CANCEL. Up: audio both ways, DTMF both ways
//! (and the request's `dtmf` digits with 'w' pauses), BYE either way, max call duration.
//! Tests: `tests/outbound_calls.rs`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::attributes;
use super::bridge::{self, MediaLeg, PhoneSignal, Room, RoomSignal};
use super::outcome::Outcome;
use super::{ActiveGuard, CallContext, CallControl};
use crate::config::{Config, Transport, Trunk};
use crate::livekit::{
    JoinError, JoinOptions, Participant, ParticipantEvent, ParticipantHandle, ParticipantKind,
    SampleRate,
};
use crate::logging::Phone;
use crate::media::socket;
use crate::media::timeout::MediaTimeoutConfig;
use crate::ops::metrics as m;
use crate::sip::body;
use crate::sip::build::{self, Outgoing};
use crate::sip::dialog::Dialog;
use crate::sip::digest::{self, Challenge};
use crate::sip::endpoint::{self, Incoming, Linger, SipEvent};
use crate::sip::sdp::{self, Local};
use crate::sip::transaction::{
    ClientInvite, ClientInviteState, ClientNonInvite, Output, ServerNonInvite,
};
use crate::sip::transport::Flow;
use crate::sip::uri;

const BIND_ATTEMPTS: usize = 8;
/// With a backup to go to, a trunk that has not answered the INVITE at all (not even
/// 100 Trying) this long counts as down, long before Timer B's 32 s.
pub const NO_RESPONSE_FAILOVER: Duration = Duration::from_secs(5);
/// How long we wait for the 487 after our CANCEL.
const CANCEL_WAIT: Duration = Duration::from_secs(5);
/// Pause for each 'w' in the request's DTMF string.
const DTMF_PAUSE: Duration = Duration::from_millis(500);
/// Between two digits of the request's DTMF string.
const DTMF_GAP: Duration = Duration::from_millis(250);

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A CreateSIPParticipant request, validated against the configuration.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub trunk: String,
    pub call_to: String,
    /// From number (`sip_number`), else the trunk's `from_number`.
    pub from_number: Option<String>,
    pub room: String,
    pub identity: Option<String>,
    pub name: Option<String>,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    /// Digits to send once answered; 'w' waits 0.5 s.
    pub dtmf: String,
    /// Play a ringing tone into the room while the phone rings.
    pub play_dialtone: bool,
    pub wait_until_answered: bool,
    pub ringing_timeout: Duration,
    pub max_call_duration: Option<Duration>,
    /// Extra headers on the INVITE (after the trunk's).
    pub headers: Vec<(String, String)>,
    pub display_name: Option<String>,
    /// Which 200 OK headers become `sip.h.*` attributes; None: the trunk's setting.
    pub include_headers: Option<crate::config::IncludeHeaders>,
    /// Leave the numbers out of the attributes and the default identity and name.
    pub hide_phone_number: bool,
}

/// What the API caller gets back.
#[derive(Debug, Clone)]
pub struct Started {
    pub participant_sid: String,
    pub identity: String,
    pub room: String,
    pub call_id: String,
}

/// Why a dial failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// The callee (or the carrier) refused: the final SIP status and reason.
    Sip { status: u16, reason: String },
    /// Nobody answered in time (after CANCEL).
    NoAnswer,
    /// The room could not be joined.
    LiveKit(String),
    /// No RTP ports.
    NoPorts,
    /// Every trunk tried failed at the transport level (no answer at all).
    Unreachable(String),
    /// The call ended before the answer for another reason.
    Ended(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Sip { status, reason } => write!(f, "sip status {status}: {reason}"),
            DialError::NoAnswer => f.write_str("no answer before the ringing timeout"),
            DialError::LiveKit(e) => write!(f, "cannot join the room: {e}"),
            DialError::NoPorts => f.write_str("no RTP ports free"),
            DialError::Unreachable(e) => write!(f, "trunk unreachable: {e}"),
            DialError::Ended(e) => write!(f, "call ended before the answer: {e}"),
        }
    }
}

/// A trunk to try: its name and where to send.
#[derive(Debug, Clone)]
struct Target {
    trunk: String,
    host: String,
    port: u16,
    transport: Transport,
    from_number: Option<String>,
    auth: Option<(String, String)>,
    headers: Vec<(String, String)>,
    early_media: bool,
    mapping: crate::config::HeaderMapping,
}

impl Target {
    fn of(t: &Trunk) -> Option<Target> {
        let o = t.outbound.as_ref()?;
        let transport = o.target.transport.unwrap_or(o.transport);
        Some(Target {
            trunk: t.name.clone(),
            host: o.target.host.clone(),
            port: o.target.port.unwrap_or(transport.default_port()),
            transport,
            from_number: o.from_number.clone(),
            auth: o
                .auth
                .as_ref()
                .map(|a| (a.username.clone(), a.password.expose().to_string())),
            headers: o.headers.clone(),
            early_media: o.early_media,
            mapping: o.mapping.clone(),
        })
    }

    fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Whether a final status (or its absence) moves the call to the backup trunk (design
/// section 4): a timeout, 408, 5xx and 6xx.
pub fn fails_over(status: u16) -> bool {
    status == 408 || (500..700).contains(&status)
}

/// The first challenge of a 401/407 whose algorithm we support, SHA-256 preferred.
fn pick_challenge(resp: &Incoming) -> Option<(Challenge, bool)> {
    let proxy = resp.status() == 407;
    let name = if proxy {
        "Proxy-Authenticate"
    } else {
        "WWW-Authenticate"
    };
    let mut all: Vec<Challenge> = resp
        .msg
        .headers_named(name)
        .filter_map(|v| Challenge::parse(v).ok())
        .collect();
    all.sort_by_key(|c| match c.algorithm {
        digest::Algorithm::Sha256 => 0,
        _ => 1,
    });
    all.into_iter().next().map(|c| (c, proxy))
}

struct Attempt {
    target: Target,
    flow: Flow,
    call_id: String,
    events: mpsc::Receiver<SipEvent>,
    local_tag: String,
    from: String,
    to: String,
    ruri: String,
    cseq: u32,
    branch: String,
    tx: ClientInvite,
    /// The INVITE as sent (for CANCEL).
    invite: Outgoing,
    auth_tries: u32,
    provisional: bool,
    /// Anything came back for this INVITE (even 100 Trying).
    responded: bool,
    sent_at: Instant,
    cancel: Option<(String, ClientNonInvite)>,
}

type JoinResult = Result<(ParticipantHandle, mpsc::Receiver<ParticipantEvent>), JoinError>;

struct Call {
    ctx: Arc<CallContext>,
    cfg: Arc<Config>,
    req: OutboundRequest,
    seq: u64,
    active: ActiveGuard,
    shutdown: watch::Receiver<bool>,
    control: mpsc::Receiver<CallControl>,
    reply: Option<oneshot::Sender<Result<Started, DialError>>>,
    media: Option<MediaLeg>,
    room: Option<Room>,
    identity: String,
    attempt: Option<Attempt>,
    dialog: Option<Dialog>,
    /// Non-INVITE requests we answered in the dialog, by branch.
    answered: HashMap<String, ServerNonInvite>,
    bye: Option<(String, ClientNonInvite, Flow)>,
    started: Instant,
    answered_at: Option<Instant>,
    ringing_deadline: Instant,
    hangup_deadline: Option<Instant>,
    early: bool,
    ringing_reported: bool,
    dtmf_queue: std::collections::VecDeque<char>,
    dtmf_next: Instant,
    dialtone: Option<super::prompt::Prompt>,
    dialtone_next: Instant,
    frame: Vec<i16>,
    last_status: Option<(u16, String)>,
    tried: Vec<String>,
    transfer: Option<super::transfer::Transfer>,
    /// The transfer ended the call (the BYE follows).
    transferred: bool,
    /// Another trunk is left to try after this attempt.
    more_targets: bool,
    /// Our call id (`sip.callID`, the API's `sip_call_id`): one for every attempt.
    lk_call_id: String,
    /// The attributes we joined with (for `attributes_to_headers`).
    attributes: HashMap<String, String>,
}

/// Runs one outbound call; `reply` gets the result the API waits for.
pub async fn run(
    ctx: Arc<CallContext>,
    cfg: Arc<Config>,
    req: OutboundRequest,
    reply: oneshot::Sender<Result<Started, DialError>>,
    shutdown: watch::Receiver<bool>,
    control: mpsc::Receiver<CallControl>,
    seq: u64,
) {
    let active = ActiveGuard::new(ctx.endpoint.active_calls.clone());
    let identity = req.identity.clone().unwrap_or_else(|| {
        if req.hide_phone_number {
            crate::dialplan::hidden_identity(&req.call_to)
        } else {
            format!("sip_{}", req.call_to)
        }
    });
    let t = now();
    let ringing_deadline = t + req.ringing_timeout;
    let mut call = Call {
        ctx,
        cfg,
        req,
        seq,
        active,
        shutdown,
        control,
        reply: Some(reply),
        media: None,
        room: None,
        identity,
        attempt: None,
        dialog: None,
        answered: HashMap::new(),
        bye: None,
        started: t,
        answered_at: None,
        ringing_deadline,
        hangup_deadline: None,
        early: false,
        ringing_reported: false,
        dtmf_queue: Default::default(),
        dtmf_next: t,
        dialtone: None,
        dialtone_next: t,
        frame: Vec::new(),
        last_status: None,
        tried: Vec::new(),
        transfer: None,
        transferred: false,
        more_targets: false,
        lk_call_id: attributes::new_call_id(),
        attributes: HashMap::new(),
    };
    let outcome = call.run().await;
    call.finish(outcome).await;
}

enum Fail {
    /// Try the next trunk.
    Next(String),
    End(Outcome, DialError),
}

impl Call {
    fn targets(&self) -> Vec<Target> {
        let mut out = Vec::new();
        if let Some(t) = self.cfg.trunk(&self.req.trunk) {
            if let Some(x) = Target::of(t) {
                out.push(x);
            }
            if let Some(b) = t.backup.as_deref().and_then(|b| self.cfg.trunk(b))
                && let Some(x) = Target::of(b)
            {
                out.push(x);
            }
        }
        // OPTIONS health: a trunk known to be down goes after one that is not
        if out.len() == 2
            && let Some(states) = &self.ctx.trunk_states
        {
            let states = states.borrow();
            let down = |name: &str| {
                states
                    .get(name)
                    .is_some_and(|s| matches!(s.health, crate::trunk::monitor::Health::Down { .. }))
            };
            if down(&out[0].trunk) && !down(&out[1].trunk) {
                tracing::info!(primary = %out[0].trunk, backup = %out[1].trunk,
                    "the primary trunk is down (OPTIONS); trying the backup first");
                out.swap(0, 1);
            }
        }
        out
    }

    fn caller_number(&self, target: &Target) -> String {
        self.req
            .from_number
            .clone()
            .or_else(|| target.from_number.clone())
            .unwrap_or_else(|| "roomline".into())
    }

    fn reply_once(&mut self, r: Result<Started, DialError>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(r);
        }
    }

    fn started_info(&self) -> Option<Started> {
        let room = self.room.as_ref()?;
        Some(Started {
            participant_sid: room.handle.sid(),
            identity: room.handle.identity().to_string(),
            room: room.handle.room().to_string(),
            call_id: self.lk_call_id.clone(),
        })
    }

    async fn run(&mut self) -> Outcome {
        let targets = self.targets();
        if targets.is_empty() {
            let e = format!("trunk {:?} has no outbound side", self.req.trunk);
            self.reply_once(Err(DialError::Unreachable(e.clone())));
            return Outcome::Internal(e);
        }
        // RTP first: the offer needs our port
        let bind_ip = self
            .ctx
            .endpoint
            .transports
            .local_addrs()
            .first()
            .map(|(_, a)| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let bound = match socket::bind_pair(&self.ctx.ports, bind_ip, BIND_ATTEMPTS) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "no RTP ports for an outbound call");
                self.reply_once(Err(DialError::NoPorts));
                return Outcome::NoPorts;
            }
        };
        // join the room (status dialing)
        let opts = self.join_options(&targets[0]);
        self.attributes = opts.attributes.clone();
        let join = tokio::spawn(Participant::join(opts));
        let joined: JoinResult = match join.await {
            Ok(r) => r,
            Err(e) => Err(JoinError::Signal(e.to_string())),
        };
        let (handle, events) = match joined {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, room = %crate::logging::Masked(&self.req.room), "cannot join for an outbound call");
                self.reply_once(Err(DialError::LiveKit(e.to_string())));
                return Outcome::LiveKitUnavailable(e.to_string());
            }
        };
        self.room = Some(Room::new(handle, events, self.ctx.participants.clone()));
        if self.req.play_dialtone {
            self.dialtone = Some(super::prompt::Prompt::new(super::prompt::RINGBACK, 8000));
        }
        // the media leg, with our offer
        let mut attempts = targets.into_iter().peekable();
        let mut next = attempts.next();
        let mut media_bound = Some(bound);
        loop {
            let Some(target) = next.take() else {
                let (status, reason) = self
                    .last_status
                    .clone()
                    .unwrap_or((503, "no trunk answered".into()));
                let err = DialError::Sip {
                    status,
                    reason: reason.clone(),
                };
                self.reply_once(Err(err));
                return Outcome::Rejected {
                    status,
                    reason: Some(reason),
                };
            };
            if now() >= self.ringing_deadline {
                self.reply_once(Err(DialError::NoAnswer));
                return Outcome::RingingTimeout;
            }
            self.tried.push(target.trunk.clone());
            self.more_targets = attempts.peek().is_some();
            match self.attempt(target, &mut media_bound).await {
                Ok(()) => break,
                Err(Fail::Next(why)) => {
                    tracing::info!(trunk = %self.tried.last().cloned().unwrap_or_default(), %why, "outbound attempt failed");
                    next = attempts.next();
                    if let Some(n) = &next {
                        metrics::counter!(m::TRUNK_FAILOVERS, "trunk" => self.req.trunk.clone())
                            .increment(1);
                        tracing::info!(backup = %n.trunk, "failing over to the backup trunk");
                    }
                }
                Err(Fail::End(outcome, err)) => {
                    self.reply_once(Err(err));
                    return outcome;
                }
            }
        }
        // answered
        let info = self.started_info();
        if let Some(info) = info {
            self.reply_once(Ok(info));
        }
        self.connected().await
    }

    fn join_options(&self, target: &Target) -> JoinOptions {
        let lk = &self.cfg.livekit;
        let mut o = JoinOptions::sip(
            lk.url.clone(),
            lk.api_key.clone(),
            lk.api_secret.expose().to_string(),
            self.req.room.clone(),
            self.identity.clone(),
        );
        o.name = self.req.name.clone().unwrap_or_else(|| {
            let n = if self.req.hide_phone_number {
                crate::dialplan::masked_number(&self.req.call_to)
            } else {
                self.req.call_to.clone()
            };
            format!("Phone {n}")
        });
        o.kind = ParticipantKind::Sip;
        o.metadata = self.req.metadata.clone();
        o.attributes = self.req.attributes.clone();
        o.attributes
            .extend(attributes::outbound(&attributes::OutboundCall {
                call_id: &self.lk_call_id,
                trunk: &self.req.trunk,
                call_to: &self.req.call_to,
                from_number: &self.caller_number(target),
                hostname: &target.host,
                hide_phone_number: self.req.hide_phone_number,
            }));
        o.sample_rate = SampleRate::Hz8000;
        o.join_timeout = Duration::from_secs(10);
        o
    }

    async fn flow_to(&self, target: &Target) -> Result<Flow, String> {
        let addr: SocketAddr = match target.host.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, target.port),
            Err(_) => tokio::time::timeout(
                Duration::from_secs(3),
                tokio::net::lookup_host(target.host_port()),
            )
            .await
            .map_err(|_| format!("resolving {} timed out", target.host))?
            .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", target.host))?,
        };
        match target.transport {
            Transport::Udp => self
                .ctx
                .endpoint
                .transports
                .udp_flow(addr)
                .ok_or_else(|| "no UDP listener".to_string()),
            t => {
                self.ctx
                    .endpoint
                    .transports
                    .connect(t, addr, &target.host)
                    .await
            }
        }
    }

    /// One try through one trunk: Ok once answered.
    async fn attempt(
        &mut self,
        target: Target,
        bound: &mut Option<socket::BoundPorts>,
    ) -> Result<(), Fail> {
        let flow = match self.flow_to(&target).await {
            Ok(f) => f,
            Err(e) => return Err(Fail::Next(e)),
        };
        let call_id = build::new_call_id();
        let Some(events) = self.ctx.endpoint.register(&call_id).await else {
            return Err(Fail::End(
                Outcome::Internal("endpoint gone".into()),
                DialError::Ended("the SIP endpoint stopped".into()),
            ));
        };
        if self.media.is_none() {
            let Some(b) = bound.take() else {
                return Err(Fail::End(Outcome::NoPorts, DialError::NoPorts));
            };
            let sdp_ip = self
                .ctx
                .rtp_public_ip
                .unwrap_or_else(|| self.ctx.endpoint.advertised(&flow).ip());
            let local = Local {
                codecs: super::inbound::PHONE_CODECS.to_vec(),
                address: sdp_ip,
                rtp_port: b.guard.pair().rtp,
                session_id: rand::random_range(1..u32::MAX as u64),
                session_version: 1,
            };
            let offer = sdp::offer(&local);
            self.media = Some(MediaLeg::new(b, local, offer));
        }
        let from_number = self.caller_number(&target);
        let local_tag = build::new_tag();
        let advertised = self.ctx.endpoint.advertised(&flow);
        let from_host = uri::host_port(advertised);
        let display = match &self.req.display_name {
            Some(d) if d.is_empty() => String::new(),
            Some(d) => format!("\"{}\" ", d.replace('"', "")),
            None => format!("\"{from_number}\" "),
        };
        let transport_param = match target.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let scheme = if target.transport == Transport::Tls {
            "sips"
        } else {
            "sip"
        };
        let from = format!("{display}<{scheme}:{from_number}@{from_host}>;tag={local_tag}");
        let to = format!("<{scheme}:{}@{}>", self.req.call_to, target.host_port());
        let ruri = format!(
            "{scheme}:{}@{}{transport_param}",
            self.req.call_to,
            target.host_port()
        );
        let mut attempt = Attempt {
            target,
            flow,
            call_id,
            events,
            local_tag,
            from,
            to,
            ruri,
            cseq: 0,
            branch: String::new(),
            tx: ClientInvite::new(now(), true, self.ctx.timers, Vec::new()),
            invite: Outgoing::request("INVITE", "sip:x"),
            auth_tries: 0,
            provisional: false,
            responded: false,
            sent_at: now(),
            cancel: None,
        };
        self.send_invite(&mut attempt, None);
        tracing::info!(call_id = %attempt.call_id, trunk = %attempt.target.trunk,
            to = %Phone(&self.req.call_to), room = %crate::logging::Masked(&self.req.room), "outbound call");
        self.attempt = Some(attempt);
        // wait_until_answered=false: the caller hears back once the participant is in
        // the room and the INVITE is out; the rest of the call shows in the room
        if !self.req.wait_until_answered
            && let Some(info) = self.started_info()
        {
            self.reply_once(Ok(info));
        }
        self.ringing().await
    }

    fn send_invite(&self, a: &mut Attempt, authorization: Option<(bool, String)>) {
        a.cseq += 1;
        a.branch = build::new_branch();
        let via = self.ctx.endpoint.via(&a.flow, &a.branch);
        let sdp = self
            .media
            .as_ref()
            .map(|m| m.sdp.clone())
            .unwrap_or_default();
        let mut out = Outgoing::request("INVITE", &a.ruri).header("Via", via);
        out.push("Max-Forwards", "70");
        out.push("From", &a.from);
        out.push("To", &a.to);
        out.push("Call-ID", &a.call_id);
        out.push("CSeq", format!("{} INVITE", a.cseq));
        out.push("Contact", self.ctx.endpoint.contact(&a.flow));
        out.push("Allow", endpoint::ALLOW);
        out.push("User-Agent", &self.ctx.endpoint.user_agent);
        if let Some((proxy, value)) = authorization {
            out.push(
                if proxy {
                    "Proxy-Authorization"
                } else {
                    "Authorization"
                },
                value,
            );
        }
        for (k, v) in a.target.headers.iter().chain(self.req.headers.iter()) {
            out.push(k, v);
        }
        for (k, v) in
            attributes::to_headers(&self.attributes, &a.target.mapping.attributes_to_headers)
        {
            out.push(&k, v);
        }
        let out = out.body("application/sdp", sdp);
        a.tx = ClientInvite::new(now(), a.flow.is_reliable(), self.ctx.timers, out.to_bytes());
        a.invite = out;
        drive_client(&mut a.tx, &a.flow);
    }

    /// Until the final response to our INVITE (through this trunk).
    async fn ringing(&mut self) -> Result<(), Fail> {
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = self.ringing_deadline;
            let timer = self
                .attempt
                .as_ref()
                .and_then(|a| a.tx.poll_timeout())
                .unwrap_or(deadline)
                .min(deadline)
                .min(now() + Duration::from_millis(20))
                .min(if self.dialtone.is_some() {
                    self.dialtone_next
                } else {
                    deadline
                });
            let Some(a) = self.attempt.as_mut() else {
                return Err(Fail::Next("no attempt".into()));
            };
            tokio::select! {
                ev = a.events.recv() => {
                    match ev {
                        Some(SipEvent::Response(resp)) => {
                            if let Some(r) = self.on_invite_response(resp) {
                                return r;
                            }
                        }
                        Some(SipEvent::Request(req)) => {
                            if let Some(o) = self.on_request(req) {
                                self.cancel().await;
                                return Err(Fail::End(o.clone(), DialError::Ended(o.to_string())));
                            }
                        }
                        None => return Err(Fail::End(Outcome::Internal("endpoint gone".into()), DialError::Ended("endpoint gone".into()))),
                    }
                }
                r = bridge::media_recv(self.media.as_ref(), &mut buf) => {
                    if let (Ok(rcv), Some(m)) = (r, self.media.as_mut()) {
                        bridge::on_packet(m, rcv.rtcp, rcv.from, &buf[..rcv.len]);
                    }
                }
                ev = recv_room(self.room.as_mut()) => {
                    if let RoomSignal::Ended(o) = bridge::on_room_event(self.media.as_mut(), ev, "") {
                        self.room = None;
                        self.cancel().await;
                        return Err(Fail::End(o.clone(), DialError::Ended(o.to_string())));
                    }
                }
                _ = self.shutdown.changed() => {
                    self.cancel().await;
                    return Err(Fail::End(Outcome::Shutdown, DialError::Ended("service shutting down".into())));
                }
                c = self.control.recv() => {
                    if let Some(CallControl::Hangup) = c {
                        self.cancel().await;
                        return Err(Fail::End(Outcome::CallerHangup, DialError::Ended("hung up".into())));
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(timer)) => {}
            }
            // timers of the INVITE transaction
            let t = now();
            let Some(a) = self.attempt.as_mut() else {
                continue;
            };
            if a.tx.poll_timeout().is_some_and(|d| d <= t) {
                a.tx.handle_timeout(t);
            }
            let mut timed_out = false;
            while let Some(o) = a.tx.poll_output() {
                match o {
                    Output::Send(b) => {
                        let _ = a.flow.send(&b);
                    }
                    Output::Timeout | Output::TransportError => timed_out = true,
                }
            }
            if timed_out && a.tx.state() != ClientInviteState::Accepted {
                self.last_status = Some((408, "no response from the trunk".into()));
                return Err(Fail::Next("no response (Timer B)".into()));
            }
            if self.more_targets
                && !a.responded
                && now().saturating_duration_since(a.sent_at) >= NO_RESPONSE_FAILOVER
            {
                self.last_status = Some((408, "no response from the trunk".into()));
                return Err(Fail::Next(format!(
                    "no response within {NO_RESPONSE_FAILOVER:?}"
                )));
            }
            self.tick_ringing();
            if now() >= self.ringing_deadline {
                self.cancel().await;
                return Err(Fail::End(Outcome::RingingTimeout, DialError::NoAnswer));
            }
        }
    }

    /// While ringing: early media flows if any, else the dial tone plays into the room.
    fn tick_ringing(&mut self) {
        let early = self.early;
        if let Some(m) = self.media.as_mut()
            && m.pm.is_some()
        {
            let _ =
                bridge::drive_media(m, self.room.as_ref(), early, early, &mut self.frame, |_| {});
        }
        if early {
            return;
        }
        let t = now();
        if let (Some(p), Some(room)) = (self.dialtone.as_mut(), self.room.as_ref()) {
            let mut n = 0;
            while self.dialtone_next <= t && n < 5 {
                let f = match p.next_frame() {
                    Some(f) => f,
                    None => {
                        *p = super::prompt::Prompt::new(super::prompt::RINGBACK, 8000);
                        p.next_frame().unwrap_or_default()
                    }
                };
                let _ = room.handle.push_audio(&f);
                self.dialtone_next += Duration::from_millis(20);
                n += 1;
            }
            if self.dialtone_next <= t {
                self.dialtone_next = t + Duration::from_millis(20);
            }
        }
    }

    /// Handles a response to our INVITE; Some(result) when this attempt is decided.
    fn on_invite_response(&mut self, resp: Incoming) -> Option<Result<(), Fail>> {
        let a = self.attempt.as_mut()?;
        if resp.branch() != a.branch {
            // a response to the CANCEL, or from an earlier INVITE of this call
            if let Some((b, tx)) = a.cancel.as_mut()
                && *b == resp.branch()
                && resp.cseq().map(|(_, m)| m) == Some("CANCEL")
            {
                tx.on_response(resp.at, resp.status());
            }
            return None;
        }
        let status = resp.status();
        a.responded = true;
        let to_tu = {
            let invite = a.invite.clone();
            let msg = resp.msg.clone();
            a.tx.on_response(resp.at, status, || {
                ack_for_failure(&invite, &msg).to_bytes()
            })
        };
        drive_client(&mut a.tx, &a.flow);
        if !to_tu {
            return None;
        }
        match status {
            100 => None,
            101..=199 => {
                a.provisional = true;
                if !self.ringing_reported && (status == 180 || status == 183) {
                    self.ringing_reported = true;
                    if let Some(r) = &self.room {
                        r.set_attributes(&[attributes::CallStatus::Ringing.attribute()]);
                    }
                }
                if let Some(r) = &self.room {
                    r.set_attribute_map(attributes::outbound_provisional(&resp.msg));
                }
                if let Some(answer) = body::sdp(&resp.msg) {
                    let forward = self.attempt.as_ref().is_some_and(|a| a.target.early_media);
                    self.apply_answer(&answer);
                    self.early = forward && self.media.as_ref().is_some_and(|m| m.pm.is_some());
                }
                None
            }
            200..=299 => Some(self.on_answered(resp)),
            401 | 407 => {
                let creds = a.target.auth.clone();
                let tries = a.auth_tries;
                match (creds, pick_challenge(&resp)) {
                    (Some((user, pass)), Some((challenge, proxy)))
                        if tries == 0 || challenge.stale =>
                    {
                        if tries >= 3 {
                            return Some(Err(Fail::End(
                                Outcome::Rejected {
                                    status,
                                    reason: Some("authentication failed".into()),
                                },
                                DialError::Sip {
                                    status,
                                    reason: "authentication failed".into(),
                                },
                            )));
                        }
                        let a = self.attempt.as_mut()?;
                        a.auth_tries += 1;
                        let cnonce = build::new_tag();
                        let value =
                            digest::answer(&challenge, "INVITE", &a.ruri, &user, &pass, &cnonce, 1);
                        let mut a = self.attempt.take()?;
                        self.send_invite(&mut a, Some((proxy, value)));
                        self.attempt = Some(a);
                        None
                    }
                    _ => {
                        let reason = reason_of(&resp);
                        self.last_status = Some((status, reason.clone()));
                        Some(Err(Fail::End(
                            Outcome::Rejected {
                                status,
                                reason: Some(reason.clone()),
                            },
                            DialError::Sip { status, reason },
                        )))
                    }
                }
            }
            _ => {
                let reason = reason_of(&resp);
                self.last_status = Some((status, reason.clone()));
                if fails_over(status) {
                    Some(Err(Fail::Next(format!("{status} {reason}"))))
                } else {
                    Some(Err(Fail::End(
                        Outcome::Rejected {
                            status,
                            reason: Some(reason.clone()),
                        },
                        DialError::Sip { status, reason },
                    )))
                }
            }
        }
    }

    fn timeouts(&self) -> MediaTimeoutConfig {
        MediaTimeoutConfig {
            timeout: self.cfg.rtp.media_timeout,
            initial: self.cfg.rtp.media_timeout_initial,
        }
    }

    /// An SDP answer (in a 183 or the 2xx).
    fn apply_answer(&mut self, answer: &[u8]) {
        let timeouts = self.timeouts();
        let identity = self.identity.clone();
        let Some(m) = self.media.as_mut() else {
            return;
        };
        let text = String::from_utf8_lossy(answer).into_owned();
        let Ok(parsed) = sdp::parse(&text) else {
            return;
        };
        match sdp::read_answer(&parsed, &m.local) {
            Ok(n) => {
                m.latch = n.remote_rtp.is_none_or(|a| !is_public(a.ip()));
                m.start(n, &identity, timeouts);
            }
            Err(r) => tracing::info!(warning = %r.text, "unusable SDP answer"),
        }
    }

    fn on_answered(&mut self, resp: Incoming) -> Result<(), Fail> {
        let Some(a) = self.attempt.as_mut() else {
            return Err(Fail::Next("no attempt".into()));
        };
        let mut dialog = match Dialog::uac(&a.call_id, &a.from, &a.local_tag, a.cseq, &resp.msg) {
            Ok(d) => d,
            Err(e) => {
                return Err(Fail::End(
                    Outcome::Internal(e.clone()),
                    DialError::Ended(format!("bad 2xx: {e}")),
                ));
            }
        };
        // ACK (RFC 3261 section 13.2.2.4): a new transaction-less request in the dialog
        let branch = build::new_branch();
        let via = self.ctx.endpoint.via(&a.flow, &branch);
        let contact = self.ctx.endpoint.contact(&a.flow);
        let mut ack = dialog.request("ACK", &via, &contact);
        // the ACK's CSeq number is the INVITE's
        ack.set("CSeq", format!("{} ACK", a.cseq));
        let _ = a.flow.send(&ack.to_bytes());
        a.cancel = None;
        self.dialog = Some(dialog);
        if let Some(sdp) = body::sdp(&resp.msg) {
            self.apply_answer(&sdp);
        }
        if self.media.as_ref().is_none_or(|m| m.pm.is_none()) {
            return Err(Fail::End(
                Outcome::NoCommonCodec("no usable SDP answer".into()),
                DialError::Ended("the callee answered without usable SDP".into()),
            ));
        }
        let Some(a) = self.attempt.as_ref() else {
            return Err(Fail::Next("no attempt".into()));
        };
        self.answered_at = Some(now());
        self.early = false;
        self.dialtone = None;
        metrics::histogram!(m::CALL_SETUP_SECONDS, "direction" => "outbound", "trunk" => a.target.trunk.clone())
            .record(now().saturating_duration_since(self.started).as_secs_f64());
        let rate = self
            .media
            .as_ref()
            .map(|m| m.rate())
            .unwrap_or(SampleRate::Hz8000);
        if let Some(room) = &self.room {
            let h = room.handle.clone();
            tokio::spawn(async move {
                let _ = h.set_sample_rate(rate).await;
            });
            // LiveKit's `automation` while the request's digits go out, then `active`
            let status = if self.req.dtmf.is_empty() {
                attributes::CallStatus::Active
            } else {
                attributes::CallStatus::Automation
            };
            let mut mapping = a.target.mapping.clone();
            if let Some(i) = self.req.include_headers {
                mapping.include = i;
            }
            room.set_attribute_map(attributes::outbound_answered(&resp.msg, &mapping, status));
        }
        self.hangup_deadline = self.req.max_call_duration.map(|d| now() + d);
        tracing::info!(call_id = %a.call_id, trunk = %a.target.trunk, "outbound call answered");
        Ok(())
    }

    /// CANCEL the INVITE (RFC 3261 section 9.1) and wait briefly for its 487.
    async fn cancel(&mut self) {
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        if !a.provisional {
            // no provisional yet: a CANCEL might overtake the INVITE; give up on it
            return;
        }
        let mut c = Outgoing::request("CANCEL", &a.ruri);
        if let Some(v) = a.invite.get("Via") {
            c.push("Via", v);
        }
        c.push("Max-Forwards", "70");
        c.push("From", &a.from);
        c.push("To", &a.to);
        c.push("Call-ID", &a.call_id);
        c.push("CSeq", format!("{} CANCEL", a.cseq));
        c.push("Reason", "SIP;cause=487;text=\"ringing timeout\"");
        let mut tx =
            ClientNonInvite::new(now(), a.flow.is_reliable(), self.ctx.timers, c.to_bytes());
        drive_client_non_invite(&mut tx, &a.flow);
        a.cancel = Some((a.branch.clone(), tx));
        let deadline = tokio::time::Instant::now() + CANCEL_WAIT;
        loop {
            let Some(a) = self.attempt.as_mut() else {
                return;
            };
            let done = matches!(
                a.tx.state(),
                ClientInviteState::Completed | ClientInviteState::Terminated
            );
            if done {
                return;
            }
            tokio::select! {
                ev = a.events.recv() => match ev {
                    Some(SipEvent::Response(resp)) => {
                        if resp.status() >= 200 && resp.cseq().map(|(_, m)| m) == Some("INVITE") && resp.branch() == a.branch {
                            let invite = a.invite.clone();
                            let msg = resp.msg.clone();
                            let st = resp.status();
                            a.tx.on_response(resp.at, st, || ack_for_failure(&invite, &msg).to_bytes());
                            drive_client(&mut a.tx, &a.flow);
                            if (200..300).contains(&st) {
                                // the 2xx crossed our CANCEL: take the call, then hang up
                                let _ = self.on_answered(resp);
                                let o = Outcome::RingingTimeout;
                                self.send_bye(&o).await;
                                return;
                            }
                        } else if let Some((b, tx)) = a.cancel.as_mut()
                            && *b == resp.branch()
                        {
                            tx.on_response(resp.at, resp.status());
                        }
                    }
                    Some(SipEvent::Request(_)) => {}
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            let t = now();
            if let Some(a) = self.attempt.as_mut() {
                if a.tx.poll_timeout().is_some_and(|d| d <= t) {
                    a.tx.handle_timeout(t);
                }
                drive_client(&mut a.tx, &a.flow);
                if let Some((_, tx)) = a.cancel.as_mut() {
                    if tx.poll_timeout().is_some_and(|d| d <= t) {
                        tx.handle_timeout(t);
                    }
                    drive_client_non_invite(tx, &a.flow);
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return;
            }
        }
    }

    /// The call is up.
    async fn connected(&mut self) -> Outcome {
        let mut buf = vec![0u8; 2048];
        // the request's DTMF digits, paced
        self.dtmf_queue = self.req.dtmf.chars().collect();
        self.dtmf_next = now() + Duration::from_millis(500);
        loop {
            let mut deadline = now() + Duration::from_millis(100);
            if !self.dtmf_queue.is_empty() {
                deadline = deadline.min(self.dtmf_next);
            }
            if let Some(pm) = self.media.as_ref().and_then(|m| m.pm.as_ref()) {
                deadline = deadline.min(pm.poll_timeout());
            }
            if let Some(h) = self.hangup_deadline {
                deadline = deadline.min(h);
            }
            if let Some(t) = self.transfer.as_ref() {
                deadline = deadline.min(t.poll_timeout());
            }
            if let Some(a) = self.attempt.as_ref()
                && let Some(t) = a.tx.poll_timeout()
            {
                deadline = deadline.min(t);
            }
            let Some(a) = self.attempt.as_mut() else {
                return Outcome::Internal("no dialog".into());
            };
            let step: Option<Outcome> = tokio::select! {
                ev = a.events.recv() => match ev {
                    Some(SipEvent::Request(req)) => self.on_request(req),
                    Some(SipEvent::Response(resp)) => {
                        // a retransmitted 2xx: ACK again (RFC 3261 section 13.2.2.4)
                        if (200..300).contains(&resp.status()) && resp.cseq().map(|(_, m)| m) == Some("INVITE") {
                            self.reack();
                            None
                        } else if let Some((b, tx, _)) = self.bye.as_mut() && *b == resp.branch() {
                            tx.on_response(resp.at, resp.status());
                            None
                        } else if let Some(t) = self.transfer.as_mut() && t.branch() == resp.branch() {
                            let done = t.on_response(&resp);
                            self.transfer_done(done)
                        } else {
                            None
                        }
                    }
                    None => Some(Outcome::Internal("the SIP endpoint stopped".into())),
                },
                r = bridge::media_recv(self.media.as_ref(), &mut buf) => {
                    if let (Ok(rcv), Some(m)) = (r, self.media.as_mut()) {
                        bridge::on_packet(m, rcv.rtcp, rcv.from, &buf[..rcv.len]);
                    }
                    None
                }
                ev = recv_room(self.room.as_mut()) => {
                    match bridge::on_room_event(self.media.as_mut(), ev, "") {
                        RoomSignal::Ended(o) => {
                            self.room = None;
                            Some(o)
                        }
                        _ => None,
                    }
                }
                _ = self.shutdown.changed() => Some(Outcome::Shutdown),
                c = self.control.recv() => match c {
                    Some(CallControl::Hangup) => Some(Outcome::Internal("hung up by the API".into())),
                    Some(CallControl::Transfer { to, headers, reply }) => {
                        self.start_transfer(&to, &headers, reply);
                        None
                    }
                    None => None,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => None,
            };
            if let Some(o) = step {
                return o;
            }
            if self.hangup_deadline.is_some_and(|h| now() >= h) {
                return Outcome::MaxDuration;
            }
            if let Some(t) = self.transfer.as_mut() {
                let done = t.handle_timeout(now());
                if let Some(o) = self.transfer_done(done) {
                    return o;
                }
            }
            let t = now();
            if let Some(a) = self.attempt.as_mut() {
                if a.tx.poll_timeout().is_some_and(|d| d <= t) {
                    a.tx.handle_timeout(t);
                }
                drive_client(&mut a.tx, &a.flow);
            }
            let flow = self.attempt.as_ref().map(|a| a.flow.clone());
            if let Some(flow) = flow {
                self.answered.retain(|_, tx| {
                    if tx.poll_timeout().is_some_and(|d| d <= t) {
                        tx.handle_timeout(t);
                    }
                    while let Some(Output::Send(b)) = tx.poll_output() {
                        let _ = flow.send(&b);
                    }
                    !tx.is_terminated()
                });
            }
            self.drive_dtmf();
            if let Some(m) = self.media.as_mut() {
                let room = self.room.as_ref();
                let signals = bridge::drive_media(m, room, true, true, &mut self.frame, |_| {});
                for s in signals {
                    match s {
                        PhoneSignal::Digit(d) => {
                            if let Some(r) = &self.room {
                                r.send_dtmf(d);
                            }
                        }
                        PhoneSignal::Timeout {
                            after,
                            before_first_packet,
                        } => {
                            tracing::info!(?after, before_first_packet, "media timeout");
                            return Outcome::MediaTimeout;
                        }
                    }
                }
            }
        }
    }

    fn start_transfer(
        &mut self,
        to: &str,
        headers: &[(String, String)],
        reply: oneshot::Sender<Result<(), super::transfer::Failure>>,
    ) {
        let (flow, call_id) = match self.attempt.as_ref() {
            Some(a) => (a.flow.clone(), a.call_id.clone()),
            None => {
                let _ = reply.send(Err("the call is not up".into()));
                return;
            }
        };
        super::transfer::begin(
            &mut self.transfer,
            self.dialog.as_mut(),
            &self.ctx.endpoint,
            flow,
            self.ctx.timers,
            to,
            headers,
            reply,
            self.room.as_ref(),
            &call_id,
        );
    }

    /// A finished transfer: success ends the call, failure lets it go on.
    fn transfer_done(&mut self, done: Option<super::transfer::Done>) -> Option<Outcome> {
        let call_id = self
            .attempt
            .as_ref()
            .map(|a| a.call_id.clone())
            .unwrap_or_default();
        let o = super::transfer::conclude(&mut self.transfer, done, self.room.as_ref(), &call_id);
        if o.is_some() {
            self.transferred = true;
        }
        o
    }

    fn reack(&mut self) {
        let Some(a) = self.attempt.as_ref() else {
            return;
        };
        let Some(d) = self.dialog.as_mut() else {
            return;
        };
        let branch = build::new_branch();
        let via = self.ctx.endpoint.via(&a.flow, &branch);
        let contact = self.ctx.endpoint.contact(&a.flow);
        let mut ack = d.request("ACK", &via, &contact);
        ack.set("CSeq", format!("{} ACK", a.cseq));
        let _ = a.flow.send(&ack.to_bytes());
    }

    /// Sends the request's digits toward the phone, honouring 'w' pauses.
    fn drive_dtmf(&mut self) {
        let t = now();
        while self.dtmf_next <= t {
            let Some(c) = self.dtmf_queue.pop_front() else {
                return;
            };
            if self.dtmf_queue.is_empty()
                && let Some(r) = &self.room
            {
                r.set_attributes(&[attributes::CallStatus::Active.attribute()]);
            }
            if c == 'w' || c == 'W' {
                self.dtmf_next = t + DTMF_PAUSE;
                continue;
            }
            if let (Some(d), Some(pm)) = (
                crate::media::dtmf::DtmfDigit::from_char(c),
                self.media.as_mut().and_then(|m| m.pm.as_mut()),
            ) {
                match pm.send_dtmf(t, d) {
                    Ok(()) => metrics::counter!(m::DTMF_EVENTS, "direction" => "to_phone", "source" => "api")
                        .increment(1),
                    Err(e) => tracing::info!(error = %e, "request DTMF not sent"),
                }
            }
            self.dtmf_next = t + DTMF_GAP;
        }
    }

    /// Answers an in-dialog request (BYE, INFO, OPTIONS, re-INVITE refused).
    fn on_request(&mut self, req: Incoming) -> Option<Outcome> {
        let branch = req.branch();
        if let Some(tx) = self.answered.get_mut(&branch) {
            tx.on_request(req.at);
            return None;
        }
        let method = req.method().to_string();
        if method == "ACK" {
            return None;
        }
        let in_dialog = self.dialog.as_ref().is_some_and(|d| d.matches(&req.msg));
        let local_tag = self
            .attempt
            .as_ref()
            .map(|a| a.local_tag.clone())
            .unwrap_or_default();
        let mut pending_end: Option<Outcome> = None;
        let status = if !in_dialog {
            481
        } else {
            match method.as_str() {
                "BYE" => 200,
                "INFO" => {
                    if let Some(d) = body::info_dtmf(&req.msg)
                        && let Some(r) = &self.room
                    {
                        r.send_dtmf(d);
                    }
                    200
                }
                "OPTIONS" => 200,
                "NOTIFY" => match self.transfer.as_mut() {
                    Some(t) => {
                        let (st, done) = t.on_notify(&req);
                        if let Some(o) = self.transfer_done(done) {
                            pending_end = Some(o);
                        }
                        st
                    }
                    None => 481,
                },
                // a re-INVITE we cannot renegotiate yet: the session goes on as it is
                "INVITE" | "UPDATE" => 488,
                _ => 501,
            }
        };
        let mut out = build::response_to(&req.msg, status, Some(&local_tag));
        endpoint::count_response_sent(status);
        out.push("Server", &self.ctx.endpoint.user_agent);
        if status == 501 || (method == "OPTIONS" && status == 200) {
            out.push("Allow", endpoint::ALLOW);
        }
        if method == "INVITE" {
            // a one-shot response: the INVITE server transaction is not kept
            let _ = req.flow.send(&out.to_bytes());
        } else {
            let mut tx = ServerNonInvite::new(req.at, req.flow.is_reliable(), self.ctx.timers);
            let _ = tx.respond(req.at, status, out.to_bytes());
            while let Some(Output::Send(b)) = tx.poll_output() {
                let _ = req.flow.send(&b);
            }
            self.answered.insert(branch, tx);
        }
        if method == "BYE" && in_dialog {
            return Some(Outcome::CallerHangup);
        }
        pending_end
    }

    async fn send_bye(&mut self, outcome: &Outcome) {
        let Some(a) = self.attempt.as_ref() else {
            return;
        };
        let Some(d) = self.dialog.as_mut() else {
            return;
        };
        let flow = a.flow.clone();
        let branch = build::new_branch();
        let via = self.ctx.endpoint.via(&flow, &branch);
        let contact = self.ctx.endpoint.contact(&flow);
        let mut out = d.request("BYE", &via, &contact);
        out.push("Reason", outcome.reason_header());
        out.push("User-Agent", &self.ctx.endpoint.user_agent);
        let mut tx =
            ClientNonInvite::new(now(), flow.is_reliable(), self.ctx.timers, out.to_bytes());
        drive_client_non_invite(&mut tx, &flow);
        self.bye = Some((branch, tx, flow));
    }

    async fn finish(&mut self, outcome: Outcome) {
        if self.answered_at.is_some() && outcome != Outcome::CallerHangup && self.bye.is_none() {
            self.send_bye(&outcome).await;
        }
        if let Some(room) = self.room.take() {
            room.leave(&outcome).await;
        }
        let stats = self.media.as_ref().and_then(|m| m.stats());
        let codec = self
            .media
            .as_ref()
            .and_then(|m| m.codec())
            .map(|c| c.name())
            .unwrap_or("none");
        self.media = None;
        self.active.release();
        let trunk = self
            .attempt
            .as_ref()
            .map(|a| a.target.trunk.clone())
            .unwrap_or_else(|| self.req.trunk.clone());
        let duration = self
            .answered_at
            .map(|a| now().saturating_duration_since(a))
            .unwrap_or_default();
        metrics::counter!(m::CALLS_TOTAL, "direction" => "outbound", "trunk" => trunk.clone(), "outcome" => outcome.label())
            .increment(1);
        if self.answered_at.is_some() {
            metrics::histogram!(m::CALL_DURATION_SECONDS, "direction" => "outbound", "trunk" => trunk.clone())
                .record(duration.as_secs_f64());
            if let Some(s) = &stats {
                bridge::record_media_metrics(s, codec);
            }
        }
        let (rxp, rxl, txp, txl, jit) = stats
            .as_ref()
            .map(|s| {
                (
                    s.rx.packets,
                    s.rx.lost,
                    s.tx.packets,
                    s.tx.lost.unwrap_or(0).max(0) as u64,
                    s.rx.jitter_ms,
                )
            })
            .unwrap_or_default();
        let call_id = self
            .attempt
            .as_ref()
            .map(|a| a.call_id.clone())
            .unwrap_or_default();
        tracing::info!(
            call_id = %call_id,
            seq = self.seq,
            direction = "outbound",
            trunk = %trunk,
            tried = ?self.tried,
            room = %crate::logging::Masked(&self.req.room),
            called = %Phone(&self.req.call_to),
            codec,
            answered = self.answered_at.is_some(),
            duration_s = format!("{:.1}", duration.as_secs_f64()),
            outcome = %outcome,
            rx_packets = rxp, rx_lost = rxl, tx_packets = txp, tx_lost = txl,
            jitter_ms = format!("{jit:.1}"),
            "call ended"
        );
        // wait (bounded) for the BYE's answer, then hand late retransmissions over
        let deadline = tokio::time::Instant::now() + Duration::from_secs(35);
        while let Some((b, tx, flow)) = self.bye.as_mut() {
            if tx.is_terminated()
                || tx.state() == crate::sip::transaction::ClientNonInviteState::Completed
            {
                break;
            }
            let Some(a) = self.attempt.as_mut() else {
                break;
            };
            let t = tx
                .poll_timeout()
                .unwrap_or_else(|| now() + Duration::from_millis(100));
            tokio::select! {
                ev = a.events.recv() => match ev {
                    Some(SipEvent::Response(resp)) if resp.branch() == *b => {
                        tx.on_response(resp.at, resp.status());
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(t)) => {}
            }
            let t = now();
            if tx.poll_timeout().is_some_and(|d| d <= t) {
                tx.handle_timeout(t);
            }
            drive_client_non_invite(tx, flow);
            if tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        if let Some(a) = self.attempt.as_ref() {
            let linger: Vec<Linger> = self
                .answered
                .iter()
                .filter_map(|(branch, tx)| {
                    tx.last_response().map(|bytes| Linger {
                        branch: branch.clone(),
                        bytes: bytes.to_vec(),
                        flow: a.flow.clone(),
                    })
                })
                .collect();
            self.ctx.endpoint.unregister(&a.call_id, linger);
        }
    }
}

fn is_public(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(a) => !(a.is_private() || a.is_loopback() || a.is_link_local()),
        std::net::IpAddr::V6(a) => {
            !(a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local())
        }
    }
}

fn reason_of(resp: &Incoming) -> String {
    match &resp.msg.start {
        crate::sip::message::StartLine::Response { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

/// RFC 3261 section 17.1.1.3: the ACK of a non-2xx final, in the INVITE's transaction:
/// the INVITE's Request-URI, top Via, From, Call-ID and CSeq number; the response's To.
fn ack_for_failure(invite: &Outgoing, resp: &crate::sip::message::Message) -> Outgoing {
    let ruri = invite
        .start
        .split(' ')
        .nth(1)
        .unwrap_or("sip:invalid")
        .to_string();
    let mut ack = Outgoing::request("ACK", &ruri);
    if let Some(v) = invite.get("Via") {
        ack.push("Via", v);
    }
    ack.push("Max-Forwards", "70");
    if let Some(f) = invite.get("From") {
        ack.push("From", f);
    }
    if let Some(t) = resp.header("To") {
        ack.push("To", t);
    }
    if let Some(c) = invite.get("Call-ID") {
        ack.push("Call-ID", c);
    }
    if let Some(cs) = invite.get("CSeq") {
        let n = cs.split_whitespace().next().unwrap_or("1");
        ack.push("CSeq", format!("{n} ACK"));
    }
    for r in invite
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Route"))
    {
        ack.push("Route", &r.1);
    }
    ack
}

fn drive_client(tx: &mut ClientInvite, flow: &Flow) {
    while let Some(o) = tx.poll_output() {
        if let Output::Send(b) = o {
            let _ = flow.send(&b);
        }
    }
}

fn drive_client_non_invite(tx: &mut ClientNonInvite, flow: &Flow) {
    while let Some(o) = tx.poll_output() {
        if let Output::Send(b) = o {
            let _ = flow.send(&b);
        }
    }
}

async fn recv_room(room: Option<&mut Room>) -> Option<ParticipantEvent> {
    match room {
        Some(r) => r.events.recv().await,
        None => std::future::pending().await,
    }
}
