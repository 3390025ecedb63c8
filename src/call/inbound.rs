//! An inbound call, one task: the INVITE's server transaction and the dialog, the phone's
//! RTP (`media::session::PhoneMedia` over `media::socket`), and the LiveKit participant.
//! Flow: 100 Trying at once; the dialplan decides (reject, 404, or a room); SDP answer
//! (488 with Warning if nothing in common), RTP ports (503 if none); 180 Ringing (or 183
//! with SDP for early media) while joining; 200 OK once joined (`answer: on_join`) or when
//! the first remote audio track arrives (`on_first_track`, within the ringing timeout);
//! with a PIN, answer first, collect digits until '#', then join. While up: audio both
//! ways, DTMF both ways (RFC 4733 and SIP INFO), re-INVITE/UPDATE (hold), BYE either way.
//! Every end goes through `finish`, which answers or hangs up, leaves the room, frees the
//! ports and logs one summary line. Tests: `tests/inbound_calls.rs`.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::attributes;
use super::bridge::{self, MediaLeg, PhoneSignal, Room, RoomSignal};
use super::outcome::Outcome;
use super::prompt::{self, Prompt};
use super::{ActiveGuard, CallContext, CallControl, Registration};
use crate::config::{AnswerMode, Config};
use crate::dialplan::trunk_match as matching;
use crate::dialplan::{self, CallSummary, Decision, JoinPlan};
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
use crate::sip::endpoint::{self, InboundInvite, Incoming, Linger, SipEvent};
use crate::sip::sdp::{self, Codec, Local};
use crate::sip::transaction::{ClientNonInvite, Output, ServerInvite, ServerNonInvite};
use crate::sip::transport::Flow;

/// Digits a PIN entry may hold before '#'.
const PIN_MAX_DIGITS: usize = 32;
/// Wrong PINs before the call is ended.
const PIN_TRIES: u32 = 3;
/// Time for one PIN attempt.
const PIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The identity owning the prompt track in the mixer (never a room participant's).
const PROMPT_OWNER: &str = "\u{0}roomline-prompt";
/// How long the call waits for the last transactions after it ended.
const LINGER_LIMIT: Duration = Duration::from_secs(40);
/// RTP port pairs tried when some are taken by other programs.
const BIND_ATTEMPTS: usize = 8;

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The codecs Roomline offers and accepts on the phone leg, preferred first when we offer.
pub const PHONE_CODECS: &[Codec] = &[Codec::G722, Codec::Pcmu, Codec::Pcma];

struct PinEntry {
    pin: String,
    digits: String,
    tries: u32,
    deadline: Instant,
}

/// Client transaction for our BYE.
struct ByeTx {
    branch: String,
    tx: ClientNonInvite,
    flow: Flow,
}

type JoinResult = Result<(ParticipantHandle, mpsc::Receiver<ParticipantEvent>), JoinError>;

struct Call {
    ctx: Arc<CallContext>,
    cfg: Arc<Config>,
    trunk: String,
    invite: Incoming,
    invite_branch: String,
    invite_cseq: u32,
    events: mpsc::Receiver<SipEvent>,
    shutdown: watch::Receiver<bool>,
    control: mpsc::Receiver<CallControl>,
    /// Puts the call in the registry (for the API) once it is in its room.
    registration: Option<Registration>,
    transfer: Option<super::transfer::Transfer>,
    active: ActiveGuard,
    seq: u64,
    call_id: String,
    local_tag: String,
    tx: ServerInvite,
    final_sent: bool,
    dialog: Option<Dialog>,
    answered_at: Option<Instant>,
    early: bool,
    /// A re-INVITE's server transaction: branch, CSeq, machine.
    reinvite: Option<(String, u32, ServerInvite)>,
    /// Non-INVITE requests we answered (absorbing their retransmissions): by branch.
    answered: HashMap<String, ServerNonInvite>,
    /// Our BYE, once sent.
    bye: Option<ByeTx>,
    media: Option<MediaLeg>,
    plan: Option<JoinPlan>,
    /// Our call id (`sip.callID`, `SCL_...`).
    lk_call_id: String,
    join: Option<JoinHandle<JoinResult>>,
    join_started: Option<Instant>,
    room: Option<Room>,
    pin: Option<PinEntry>,
    prompt: Option<Prompt>,
    ringing_deadline: Option<Instant>,
    started: Instant,
    called: String,
    caller: String,
    sdp_version: u64,
    frame: Vec<i16>,
    dtmf_in: u64,
    dtmf_out: u64,
}

/// Runs one inbound call to its end.
pub async fn run(
    ctx: Arc<CallContext>,
    inv: InboundInvite,
    shutdown: watch::Receiver<bool>,
    control: mpsc::Receiver<CallControl>,
    registration: Registration,
    seq: u64,
) {
    let InboundInvite {
        invite,
        trunk,
        config,
        events,
    } = inv;
    let t = invite.at;
    let call_id = invite.call_id().to_string();
    let invite_branch = invite.branch();
    let invite_cseq = invite.cseq().map(|(n, _)| n).unwrap_or(0);
    let called = endpoint::called_number(&invite);
    let caller = invite
        .from()
        .and_then(|f| f.uri().ok())
        .and_then(|u| u.user_decoded())
        .map(|u| matching::number_from_user(&u))
        .unwrap_or_default();
    let reliable = invite.flow.is_reliable();
    let active = ActiveGuard::new(ctx.endpoint.active_calls.clone());
    let mut call = Call {
        tx: ServerInvite::new(t, reliable, ctx.timers),
        ctx,
        cfg: config,
        trunk,
        invite,
        invite_branch,
        invite_cseq,
        events,
        shutdown,
        control,
        registration: Some(registration),
        transfer: None,
        active,
        seq,
        call_id,
        local_tag: build::new_tag(),
        lk_call_id: attributes::new_call_id(),
        final_sent: false,
        dialog: None,
        answered_at: None,
        early: false,
        reinvite: None,
        answered: HashMap::new(),
        bye: None,
        media: None,
        plan: None,
        join: None,
        join_started: None,
        room: None,
        pin: None,
        prompt: None,
        ringing_deadline: None,
        started: t,
        called,
        caller,
        sdp_version: 1,
        frame: Vec::new(),
        dtmf_in: 0,
        dtmf_out: 0,
    };
    let outcome = match call.start() {
        Ok(()) => call.main_loop().await,
        Err(o) => o,
    };
    call.finish(outcome).await;
}

async fn join_opt(j: Option<&mut JoinHandle<JoinResult>>) -> JoinResult {
    match j {
        Some(j) => match j.await {
            Ok(r) => r,
            Err(e) => Err(JoinError::Signal(format!("join task failed: {e}"))),
        },
        None => std::future::pending().await,
    }
}

fn is_private_or_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_private() || a.is_loopback() || a.is_link_local(),
        IpAddr::V6(a) => a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local(),
    }
}

async fn recv_room(room: Option<&mut Room>) -> Option<ParticipantEvent> {
    match room {
        Some(r) => r.events.recv().await,
        None => std::future::pending().await,
    }
}

impl Call {
    fn sample_rate(&self) -> SampleRate {
        self.media.as_ref().map_or(SampleRate::Hz8000, |m| m.rate())
    }

    /// Sends a response to the INVITE through its transaction.
    fn respond_invite(&mut self, status: u16, out: Outgoing) {
        let mut out = out;
        out.push("Server", &self.ctx.endpoint.user_agent);
        let bytes = out.to_bytes();
        match self.tx.respond(now(), status, bytes) {
            Ok(()) => {
                if status >= 200 {
                    self.final_sent = true;
                }
                if status != 100 {
                    endpoint::count_response_sent(status);
                }
            }
            Err(e) => {
                tracing::debug!(call_id = %self.call_id, error = %e, status, "response not sent")
            }
        }
        self.drive_tx();
    }

    /// A response to the INVITE that creates (or confirms) the dialog: our tag, Contact,
    /// Record-Route copied (RFC 3261 section 12.1.1).
    fn dialog_response(&self, status: u16) -> Outgoing {
        let mut out = build::response_to(&self.invite.msg, status, Some(&self.local_tag));
        for rr in self.invite.msg.headers_named("Record-Route") {
            out.push("Record-Route", rr);
        }
        out.push("Contact", self.ctx.endpoint.contact(&self.invite.flow));
        out.push("Allow", endpoint::ALLOW);
        out
    }

    /// Routes the call, negotiates SDP, binds RTP, starts ringing and joining. Errors end
    /// the call before answer.
    fn start(&mut self) -> Result<(), Outcome> {
        let trying = build::response_to(&self.invite.msg, 100, None);
        self.respond_invite(100, trying);
        let random = build::new_tag();
        let summary = CallSummary {
            trunk: &self.trunk,
            called: &self.called,
            caller: &self.caller,
            call_id: &self.call_id,
            random: &random,
        };
        let plan = match dialplan::route(&self.cfg, &summary) {
            Decision::Reject {
                rule,
                status,
                reason,
            } => {
                tracing::info!(call_id = %self.call_id, %rule, status, "dialplan rejects the call");
                return Err(Outcome::Rejected { status, reason });
            }
            Decision::NoRule => return Err(Outcome::NoRoute),
            Decision::Join(plan) => *plan,
        };
        self.dialog =
            Some(Dialog::uas(&self.invite.msg, &self.local_tag).map_err(Outcome::BadSdp)?);
        // SDP: answer the offer, or offer ourselves in the 200 (late offer)
        let bind_ip = match self.invite.flow.local.ip() {
            ip if ip.is_unspecified() => ip,
            ip => ip,
        };
        let sdp_ip = self
            .ctx
            .rtp_public_ip
            .unwrap_or_else(|| self.ctx.endpoint.advertised(&self.invite.flow).ip());
        let bound = socket::bind_pair(&self.ctx.ports, bind_ip, BIND_ATTEMPTS).map_err(|e| {
            tracing::warn!(call_id = %self.call_id, error = %e, "no RTP ports");
            Outcome::NoPorts
        })?;
        let local = Local {
            codecs: PHONE_CODECS.to_vec(),
            address: sdp_ip,
            rtp_port: bound.guard.pair().rtp,
            session_id: rand::random_range(1..u32::MAX as u64),
            session_version: self.sdp_version,
        };
        let (negotiated, answer) = match body::sdp(&self.invite.msg) {
            Some(offer) => {
                let text = String::from_utf8_lossy(&offer).into_owned();
                let offer = sdp::parse(&text).map_err(|e| Outcome::BadSdp(e.to_string()))?;
                let (n, a) = sdp::answer(&offer, &local)
                    .map_err(|r| Outcome::NoCommonCodec(r.warning(&self.cfg.sip.user_agent)))?;
                (Some(n), a)
            }
            // late offer: we offer in the 200, the answer comes in the ACK
            None => (None, sdp::offer(&local)),
        };
        let latch = negotiated.as_ref().is_none_or(|n| {
            n.remote_rtp.is_none_or(|a| {
                is_private_or_loopback(a.ip()) || a.ip() != self.invite.flow.remote.ip()
            })
        });
        let mut leg = MediaLeg::new(bound, local, answer);
        leg.negotiated = negotiated;
        leg.latch = latch;
        let codec = leg.codec().map_or("offered", |c| c.name());
        self.media = Some(leg);
        tracing::info!(call_id = %self.call_id, trunk = %self.trunk, rule = %plan.rule,
            room = %crate::logging::Masked(&plan.room), caller = %Phone(&self.caller),
            called = %Phone(&self.called), codec, "inbound call");
        let pin = plan.pin.clone();
        let early_media = plan.early_media;
        self.plan = Some(plan);
        if let Some(pin) = pin {
            // answer first, then the caller enters the PIN; the room comes after it
            self.answer();
            self.prompt = Some(Prompt::new(prompt::PIN_PROMPT, self.sample_rate().hz()));
            self.pin = Some(PinEntry {
                pin,
                digits: String::new(),
                tries: 0,
                deadline: now() + PIN_TIMEOUT,
            });
        } else {
            if early_media {
                let sdp = self
                    .media
                    .as_ref()
                    .map(|m| m.sdp.clone())
                    .unwrap_or_default();
                let out = self.dialog_response(183).body("application/sdp", sdp);
                self.respond_invite(183, out);
                self.early = true;
                self.start_media();
            } else {
                let out = self.dialog_response(180);
                self.respond_invite(180, out);
            }
            self.start_join();
        }
        Ok(())
    }

    /// Creates the media pipeline (at answer or 183; after the ACK for a late offer).
    fn start_media(&mut self) {
        let identity = self
            .plan
            .as_ref()
            .map(|p| p.identity.clone())
            .unwrap_or_default();
        let timeouts = MediaTimeoutConfig {
            timeout: self.cfg.rtp.media_timeout,
            initial: self.cfg.rtp.media_timeout_initial,
        };
        let Some(m) = self.media.as_mut() else {
            return;
        };
        if m.pm.is_some() {
            return;
        }
        if let Some(n) = m.negotiated.clone() {
            m.start(n, &identity, timeouts);
        }
    }

    fn join_options(&self, plan: &JoinPlan) -> JoinOptions {
        let lk = &self.cfg.livekit;
        let mut o = JoinOptions::sip(
            lk.url.clone(),
            lk.api_key.clone(),
            lk.api_secret.expose().to_string(),
            plan.room.clone(),
            plan.identity.clone(),
        );
        o.name = plan.name.clone();
        o.kind = ParticipantKind::Sip;
        o.metadata = plan.metadata.clone().unwrap_or_default();
        o.attributes = self.join_attributes(plan);
        o.sample_rate = self.sample_rate();
        o.agents = plan.agents.clone();
        o.join_timeout = Duration::from_secs(10);
        o
    }

    /// The participant's attributes at join (`call::attributes`).
    fn join_attributes(&self, plan: &JoinPlan) -> HashMap<String, String> {
        let facts = attributes::InboundFacts {
            call_id: &self.lk_call_id,
            trunk: &self.trunk,
            caller: &self.caller,
            called: &self.called,
            mapping: self
                .cfg
                .trunk(&self.trunk)
                .and_then(|t| t.inbound.as_ref())
                .map(|i| &i.mapping),
        };
        let status = match self.answered_at {
            Some(_) => attributes::CallStatus::Active,
            None => attributes::CallStatus::Ringing,
        };
        attributes::inbound_join(plan, &self.invite.msg, &facts, status)
    }

    fn start_join(&mut self) {
        let Some(plan) = self.plan.as_ref() else {
            return;
        };
        let opts = self.join_options(plan);
        self.join_started = Some(now());
        self.join = Some(tokio::spawn(Participant::join(opts)));
    }

    /// 200 OK with our SDP.
    fn answer(&mut self) {
        if self.final_sent {
            return;
        }
        let sdp = self
            .media
            .as_ref()
            .map(|m| m.sdp.clone())
            .unwrap_or_default();
        let mut out = self.dialog_response(200);
        // the trunk's attributes_to_headers, from the attributes we join with
        if let Some(plan) = self.plan.as_ref()
            && let Some(i) = self.cfg.trunk(&self.trunk).and_then(|t| t.inbound.as_ref())
        {
            let attrs = self.join_attributes(plan);
            for (k, v) in attributes::to_headers(&attrs, &i.mapping.attributes_to_headers) {
                out.push(&k, v);
            }
        }
        let out = out.body("application/sdp", sdp);
        self.respond_invite(200, out);
        let t = now();
        self.answered_at = Some(t);
        self.start_media();
        metrics::histogram!(m::CALL_SETUP_SECONDS, "direction" => "inbound", "trunk" => self.trunk.clone())
            .record(t.saturating_duration_since(self.started).as_secs_f64());
        if let Some(room) = &self.room {
            let h = room.handle.clone();
            tokio::spawn(async move {
                let _ = h
                    .set_attributes(HashMap::from([("sip.callStatus".into(), "active".into())]))
                    .await;
            });
        }
        tracing::info!(call_id = %self.call_id, trunk = %self.trunk, "inbound call answered");
    }

    fn next_deadline(&self) -> Instant {
        let mut d = now() + Duration::from_secs(1);
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                d = d.min(x);
            }
        };
        min(self.tx.poll_timeout());
        min(self
            .reinvite
            .as_ref()
            .and_then(|(_, _, t)| t.poll_timeout()));
        for t in self.answered.values() {
            min(t.poll_timeout());
        }
        min(self.bye.as_ref().and_then(|b| b.tx.poll_timeout()));
        min(self
            .media
            .as_ref()
            .and_then(|m| m.pm.as_ref())
            .map(|pm| pm.poll_timeout()));
        min(self.ringing_deadline);
        min(self.transfer.as_ref().map(|t| t.poll_timeout()));
        min(self.pin.as_ref().map(|p| p.deadline));
        d
    }

    async fn main_loop(&mut self) -> Outcome {
        let mut buf = vec![0u8; 2048];
        loop {
            let deadline = tokio::time::Instant::from_std(self.next_deadline());
            let step: Result<(), Outcome> = tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_sip(ev),
                    None => Err(Outcome::Internal("the SIP endpoint stopped".into())),
                },
                _ = self.shutdown.changed() => Err(Outcome::Shutdown),
                c = self.control.recv() => match c {
                    Some(CallControl::Hangup) => Err(Outcome::Internal("hung up by the API".into())),
                    Some(CallControl::Transfer { to, headers, reply }) => {
                        self.start_transfer(&to, &headers, reply);
                        Ok(())
                    }
                    None => Ok(()),
                },
                r = bridge::media_recv(self.media.as_ref(), &mut buf) => {
                    match r {
                        Ok(rcv) => self.on_packet(rcv.rtcp, rcv.from, &buf[..rcv.len]),
                        Err(e) => tracing::debug!(call_id = %self.call_id, error = %e, "RTP receive error"),
                    }
                    Ok(())
                }
                ev = recv_room(self.room.as_mut()) => self.on_room(ev),
                r = join_opt(self.join.as_mut()) => {
                    self.join = None;
                    self.on_joined(r)
                }
                _ = tokio::time::sleep_until(deadline) => Ok(()),
            };
            if let Err(o) = step {
                return o;
            }
            if let Err(o) = self.drive() {
                return o;
            }
        }
    }

    fn on_packet(&mut self, rtcp: bool, from: SocketAddr, data: &[u8]) {
        let Some(pm) = self.media.as_mut().and_then(|m| m.pm.as_mut()) else {
            return; // before answer: dropped
        };
        let t = now();
        if rtcp {
            pm.handle_rtcp(t, from, data);
        } else {
            pm.handle_rtp(t, from, data);
        }
    }

    /// Sends what the transactions want sent; reacts to their timeouts.
    fn drive_tx(&mut self) {
        let t = now();
        if self.tx.poll_timeout().is_some_and(|d| d <= t) {
            self.tx.handle_timeout(t);
        }
        while let Some(o) = self.tx.poll_output() {
            if let Output::Send(b) = o {
                let _ = self.invite.flow.send(&b);
            }
        }
    }

    /// Timers, transmissions, frames and events: called after every wake-up.
    fn drive(&mut self) -> Result<(), Outcome> {
        let t = now();
        // the INVITE transaction: Timer L without ACK means the 2xx was never confirmed
        if self.tx.poll_timeout().is_some_and(|d| d <= t) {
            self.tx.handle_timeout(t);
        }
        let mut no_ack = false;
        while let Some(o) = self.tx.poll_output() {
            match o {
                Output::Send(b) => {
                    let _ = self.invite.flow.send(&b);
                }
                Output::Timeout => no_ack = self.answered_at.is_some(),
                Output::TransportError => {}
            }
        }
        if no_ack {
            return Err(Outcome::NoAck);
        }
        if let Some((_, _, tx)) = self.reinvite.as_mut() {
            if tx.poll_timeout().is_some_and(|d| d <= t) {
                tx.handle_timeout(t);
            }
            while let Some(o) = tx.poll_output() {
                if let Output::Send(b) = o {
                    let _ = self.invite.flow.send(&b);
                }
            }
            if tx.is_terminated() {
                self.reinvite = None;
            }
        }
        self.drive_answered(t);
        if let Some(d) = self.ringing_deadline
            && t >= d
            && !self.final_sent
        {
            return Err(Outcome::RingingTimeout);
        }
        if let Some(p) = &self.pin
            && t >= p.deadline
        {
            return Err(Outcome::PinFailed);
        }
        if let Some(tr) = self.transfer.as_mut() {
            let done = tr.handle_timeout(t);
            if let Some(o) = self.transfer_done(done) {
                return Err(o);
            }
        }
        self.drive_media(t)
    }

    fn drive_answered(&mut self, t: Instant) {
        let flow = self.invite.flow.clone();
        self.answered.retain(|_, tx| {
            if tx.poll_timeout().is_some_and(|d| d <= t) {
                tx.handle_timeout(t);
            }
            while let Some(o) = tx.poll_output() {
                if let Output::Send(b) = o {
                    let _ = flow.send(&b);
                }
            }
            !tx.is_terminated()
        });
    }

    fn drive_media(&mut self, _t: Instant) -> Result<(), Outcome> {
        let live = self.answered_at.is_some() || self.early;
        let forward = self.pin.is_none();
        let Some(m) = self.media.as_mut() else {
            return Ok(());
        };
        let prompt = &mut self.prompt;
        let signals = bridge::drive_media(
            m,
            self.room.as_ref(),
            live,
            forward,
            &mut self.frame,
            |pm| {
                // the prompt plays at the phone's frame pace
                if let Some(p) = prompt.as_mut() {
                    match p.next_frame() {
                        Some(f) => pm.push_room_audio("prompt", PROMPT_OWNER, &f),
                        None => {
                            pm.remove_track("prompt");
                            *prompt = None;
                        }
                    }
                }
            },
        );
        for sig in signals {
            match sig {
                PhoneSignal::Digit(d) => self.on_digit(d)?,
                PhoneSignal::Timeout {
                    after,
                    before_first_packet,
                } => {
                    if self.answered_at.is_some() {
                        tracing::info!(call_id = %self.call_id, ?after, before_first_packet, "media timeout");
                        return Err(Outcome::MediaTimeout);
                    }
                }
            }
        }
        Ok(())
    }

    fn start_transfer(
        &mut self,
        to: &str,
        headers: &[(String, String)],
        reply: tokio::sync::oneshot::Sender<Result<(), super::transfer::Failure>>,
    ) {
        let up = self.answered_at.is_some() && self.tx.is_acked();
        super::transfer::begin(
            &mut self.transfer,
            if up { self.dialog.as_mut() } else { None },
            &self.ctx.endpoint,
            self.invite.flow.clone(),
            self.ctx.timers,
            to,
            headers,
            reply,
            self.room.as_ref(),
            &self.call_id,
        );
    }

    /// A finished transfer: success ends the call (BYE), failure lets it go on.
    fn transfer_done(&mut self, done: Option<super::transfer::Done>) -> Option<Outcome> {
        super::transfer::conclude(&mut self.transfer, done, self.room.as_ref(), &self.call_id)
    }

    /// A key the caller pressed (RFC 4733 or INFO).
    fn on_digit(&mut self, d: char) -> Result<(), Outcome> {
        self.dtmf_in += 1;
        if let Some(p) = self.pin.as_mut() {
            if d == '#' {
                if p.digits == p.pin {
                    tracing::info!(call_id = %self.call_id, "PIN accepted");
                    self.pin = None;
                    self.prompt = None;
                    if let Some(pm) = self.media.as_mut().and_then(|m| m.pm.as_mut()) {
                        pm.remove_track("prompt");
                    }
                    self.start_join();
                } else {
                    p.tries += 1;
                    tracing::info!(call_id = %self.call_id, tries = p.tries, "wrong PIN");
                    if p.tries >= PIN_TRIES {
                        return Err(Outcome::PinFailed);
                    }
                    p.digits.clear();
                    p.deadline = now() + PIN_TIMEOUT;
                    self.prompt = Some(Prompt::new(prompt::PIN_WRONG, self.sample_rate().hz()));
                }
            } else if p.digits.len() < PIN_MAX_DIGITS {
                p.digits.push(d);
            }
            return Ok(());
        }
        if let Some(room) = &self.room {
            let h = room.handle.clone();
            tokio::spawn(async move {
                let _ = h.send_dtmf(d).await;
            });
        }
        Ok(())
    }

    fn on_joined(&mut self, r: JoinResult) -> Result<(), Outcome> {
        let (handle, events) = match r {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(call_id = %self.call_id, error = %e, "cannot join the LiveKit room");
                return Err(Outcome::LiveKitUnavailable(e.to_string()));
            }
        };
        if let Some(t0) = self.join_started {
            metrics::histogram!(m::LIVEKIT_JOIN_SECONDS)
                .record(now().saturating_duration_since(t0).as_secs_f64());
        }
        tracing::debug!(call_id = %self.call_id, sid = %handle.sid(), room = %handle.room(), "joined");
        self.room = Some(Room::new(handle, events, self.ctx.participants.clone()));
        if let Some(reg) = self.registration.take()
            && let Some(plan) = &self.plan
        {
            reg.register(plan.room.clone(), plan.identity.clone());
        }
        let mode = self.plan.as_ref().map_or(AnswerMode::OnJoin, |p| p.answer);
        if self.answered_at.is_some() {
            // after a PIN: already answered
            let h = self.room.as_ref().map(|r| r.handle.clone());
            if let Some(h) = h {
                tokio::spawn(async move {
                    let _ = h
                        .set_attributes(HashMap::from([("sip.callStatus".into(), "active".into())]))
                        .await;
                });
            }
        } else if mode == AnswerMode::OnJoin {
            self.answer();
        } else {
            let timeout = self
                .plan
                .as_ref()
                .map_or(Duration::from_secs(30), |p| p.ringing_timeout);
            self.ringing_deadline = Some(self.started + timeout);
        }
        Ok(())
    }

    fn on_room(&mut self, ev: Option<ParticipantEvent>) -> Result<(), Outcome> {
        match bridge::on_room_event(self.media.as_mut(), ev, &self.call_id) {
            RoomSignal::Nothing => Ok(()),
            RoomSignal::TrackSubscribed => {
                let mode = self.plan.as_ref().map(|p| p.answer);
                if mode == Some(AnswerMode::OnFirstTrack) && !self.final_sent {
                    self.ringing_deadline = None;
                    self.answer();
                }
                Ok(())
            }
            RoomSignal::Ended(o) => {
                self.room = None;
                Err(o)
            }
        }
    }

    /// Answers a non-INVITE request through a transaction of its own.
    fn answer_request(&mut self, req: &Incoming, out: Outgoing) {
        let status: u16 = out
            .start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        let mut out = out;
        out.push("Server", &self.ctx.endpoint.user_agent);
        endpoint::count_response_sent(status);
        let mut tx = ServerNonInvite::new(req.at, req.flow.is_reliable(), self.ctx.timers);
        let _ = tx.respond(req.at, status, out.to_bytes());
        while let Some(o) = tx.poll_output() {
            if let Output::Send(b) = o {
                let _ = req.flow.send(&b);
            }
        }
        self.answered.insert(req.branch(), tx);
    }

    fn reply(&mut self, req: &Incoming, status: u16) {
        let out = build::response_to(&req.msg, status, Some(&self.local_tag));
        self.answer_request(req, out);
    }

    fn on_sip(&mut self, ev: SipEvent) -> Result<(), Outcome> {
        match ev {
            SipEvent::Response(resp) => {
                if let Some(bye) = self.bye.as_mut()
                    && resp.branch() == bye.branch
                {
                    bye.tx.on_response(resp.at, resp.status());
                } else if let Some(t) = self.transfer.as_mut()
                    && t.branch() == resp.branch()
                {
                    let done = t.on_response(&resp);
                    if let Some(o) = self.transfer_done(done) {
                        return Err(o);
                    }
                }
                Ok(())
            }
            SipEvent::Request(req) => self.on_request(req),
        }
    }

    fn on_request(&mut self, req: Incoming) -> Result<(), Outcome> {
        let method = req.method().to_string();
        let branch = req.branch();
        // retransmissions first
        if method == "INVITE" && branch == self.invite_branch {
            self.tx.on_request(req.at);
            self.drive_tx();
            return Ok(());
        }
        if let Some(tx) = self.answered.get_mut(&branch)
            && method != "ACK"
        {
            tx.on_request(req.at);
            return Ok(());
        }
        let cseq = req.cseq().map(|(n, _)| n).unwrap_or(0);
        match method.as_str() {
            "ACK" => {
                if cseq == self.invite_cseq {
                    let to_tu = self.tx.on_ack(req.at);
                    if to_tu && self.answered_at.is_some() {
                        self.on_ack_sdp(&req);
                    }
                } else if let Some((_, rc, tx)) = self.reinvite.as_mut()
                    && *rc == cseq
                {
                    tx.on_ack(req.at);
                }
                Ok(())
            }
            "CANCEL" => {
                if branch != self.invite_branch {
                    self.reply(&req, 481);
                    return Ok(());
                }
                self.reply(&req, 200);
                if self.final_sent {
                    Ok(())
                } else {
                    Err(Outcome::CallerCancelled)
                }
            }
            _ => {
                let in_dialog = self.dialog.as_ref().is_some_and(|d| d.matches(&req.msg));
                if !in_dialog {
                    // another INVITE with this Call-ID but not of this dialog: merged
                    // (RFC 3261 section 8.2.2.2), or a stranger
                    let status = if method == "INVITE" { 482 } else { 481 };
                    let out = build::response_to(&req.msg, status, Some(&build::new_tag()));
                    endpoint::count_response_sent(status);
                    req.reply(&out);
                    return Ok(());
                }
                let fresh = self
                    .dialog
                    .as_mut()
                    .is_some_and(|d| d.accept_remote_cseq(cseq));
                if !fresh {
                    self.reply(&req, 500);
                    return Ok(());
                }
                self.on_dialog_request(req, &method)
            }
        }
    }

    fn on_dialog_request(&mut self, req: Incoming, method: &str) -> Result<(), Outcome> {
        match method {
            "BYE" => {
                self.reply(&req, 200);
                if !self.final_sent {
                    let out = build::response_to(&self.invite.msg, 487, Some(&self.local_tag));
                    self.respond_invite(487, out);
                }
                Err(Outcome::CallerHangup)
            }
            "INFO" => {
                match body::info_dtmf(&req.msg) {
                    Some(d) => {
                        self.reply(&req, 200);
                        metrics::counter!(m::DTMF_EVENTS, "direction" => "from_phone", "source" => "info")
                            .increment(1);
                        self.on_digit(d)?;
                    }
                    None if req.msg.body.is_empty() => self.reply(&req, 200),
                    None => {
                        let out = build::response_to(&req.msg, 415, Some(&self.local_tag))
                            .header("Accept", "application/dtmf-relay, application/dtmf");
                        self.answer_request(&req, out);
                    }
                }
                Ok(())
            }
            "OPTIONS" => {
                let out = build::response_to(&req.msg, 200, Some(&self.local_tag))
                    .header("Allow", endpoint::ALLOW)
                    .header("Accept", endpoint::ACCEPT);
                self.answer_request(&req, out);
                Ok(())
            }
            "UPDATE" => {
                match self.renegotiate(&req) {
                    Ok(Some(sdp)) => {
                        let out = build::response_to(&req.msg, 200, Some(&self.local_tag))
                            .header("Contact", self.ctx.endpoint.contact(&self.invite.flow))
                            .body("application/sdp", sdp);
                        self.answer_request(&req, out);
                    }
                    Ok(None) => {
                        let out = build::response_to(&req.msg, 200, Some(&self.local_tag))
                            .header("Contact", self.ctx.endpoint.contact(&self.invite.flow));
                        self.answer_request(&req, out);
                    }
                    Err(warning) => {
                        let out = build::response_to(&req.msg, 488, Some(&self.local_tag))
                            .header("Warning", warning);
                        self.answer_request(&req, out);
                    }
                }
                Ok(())
            }
            "INVITE" => {
                self.on_reinvite(req);
                Ok(())
            }
            "NOTIFY" => {
                let (status, done) = match self.transfer.as_mut() {
                    Some(t) => t.on_notify(&req),
                    None => (481, None),
                };
                self.reply(&req, status);
                match self.transfer_done(done) {
                    Some(o) => Err(o),
                    None => Ok(()),
                }
            }
            _ => {
                let out = build::response_to(&req.msg, 501, Some(&self.local_tag))
                    .header("Allow", endpoint::ALLOW);
                self.answer_request(&req, out);
                Ok(())
            }
        }
    }

    /// A re-INVITE (RFC 3261 section 14.2): answer its offer (hold, new address), or
    /// offer our current SDP when it has none.
    fn on_reinvite(&mut self, req: Incoming) {
        if let Some((b, _, _)) = &self.reinvite
            && *b == req.branch()
            && let Some((_, _, tx)) = self.reinvite.as_mut()
        {
            tx.on_request(req.at);
            return;
        }
        let cseq = req.cseq().map(|(n, _)| n).unwrap_or(0);
        let mut tx = ServerInvite::new(req.at, req.flow.is_reliable(), self.ctx.timers);
        if let Some(d) = self.dialog.as_mut() {
            d.refresh_target(&req.msg);
        }
        let (status, out) = match self.renegotiate(&req) {
            Ok(sdp) => {
                let sdp = sdp.unwrap_or_else(|| {
                    self.media
                        .as_ref()
                        .map(|m| m.sdp.clone())
                        .unwrap_or_default()
                });
                let out = build::response_to(&req.msg, 200, Some(&self.local_tag))
                    .header("Contact", self.ctx.endpoint.contact(&self.invite.flow))
                    .header("Allow", endpoint::ALLOW)
                    .body("application/sdp", sdp);
                (200, out)
            }
            Err(warning) => (
                488,
                build::response_to(&req.msg, 488, Some(&self.local_tag)).header("Warning", warning),
            ),
        };
        let mut out = out;
        out.push("Server", &self.ctx.endpoint.user_agent);
        let _ = tx.respond(req.at, status, out.to_bytes());
        while let Some(o) = tx.poll_output() {
            if let Output::Send(b) = o {
                let _ = self.invite.flow.send(&b);
            }
        }
        self.reinvite = Some((req.branch(), cseq, tx));
    }

    /// Answers an SDP offer in a re-INVITE or UPDATE, keeping the codec in use: the new
    /// answer (None without an offer), or the Warning of a 488.
    fn renegotiate(&mut self, req: &Incoming) -> Result<Option<String>, String> {
        let agent = self.cfg.sip.user_agent.clone();
        let Some(offer) = body::sdp(&req.msg) else {
            return Ok(None);
        };
        let Some(m) = self.media.as_mut() else {
            return Err(format!("399 {agent} \"no media\""));
        };
        let text = String::from_utf8_lossy(&offer).into_owned();
        let offer = sdp::parse(&text).map_err(|e| format!("399 {agent} \"{e}\""))?;
        self.sdp_version += 1;
        let mut local = m.local.clone();
        // keep the codec in use: the room's sample rate follows it
        if let Some(n) = &m.negotiated {
            local.codecs = vec![n.codec];
        }
        local.session_version = self.sdp_version;
        let (negotiated, answer) = sdp::answer(&offer, &local).map_err(|r| r.warning(&agent))?;
        if let Some(pm) = m.pm.as_mut() {
            pm.set_remote(now(), negotiated.remote_rtp, negotiated.direction);
        }
        tracing::info!(call_id = %self.call_id, direction = ?negotiated.direction,
            remote = ?negotiated.remote_rtp, "media renegotiated");
        m.negotiated = Some(negotiated);
        m.local = local;
        m.sdp = answer.clone();
        Ok(Some(answer))
    }

    /// The SDP answer in the ACK of a late-offer call (RFC 3264 section 5).
    fn on_ack_sdp(&mut self, ack: &Incoming) {
        let Some(answer) = body::sdp(&ack.msg) else {
            return;
        };
        let Some(m) = self.media.as_mut() else {
            return;
        };
        let text = String::from_utf8_lossy(&answer).into_owned();
        let Ok(parsed) = sdp::parse(&text) else {
            return;
        };
        if let Ok(n) = sdp::read_answer(&parsed, &m.local) {
            m.latch = n.remote_rtp.is_none_or(|a| {
                is_private_or_loopback(a.ip()) || a.ip() != self.invite.flow.remote.ip()
            });
            let identity = self
                .plan
                .as_ref()
                .map(|p| p.identity.clone())
                .unwrap_or_default();
            let timeouts = MediaTimeoutConfig {
                timeout: self.cfg.rtp.media_timeout,
                initial: self.cfg.rtp.media_timeout_initial,
            };
            m.start(n, &identity, timeouts);
            let rate = m.rate();
            if let Some(room) = &self.room
                && room.handle.sample_rate() != rate
            {
                let h = room.handle.clone();
                tokio::spawn(async move {
                    let _ = h.set_sample_rate(rate).await;
                });
            }
        }
    }

    /// Sends our BYE (with the Reason) in the dialog.
    async fn send_bye(&mut self, outcome: &Outcome) {
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        let flow = match dialog.destination(self.invite.flow.remote) {
            _ if self.invite.flow.is_reliable() && self.invite.flow.is_open() => {
                self.invite.flow.clone()
            }
            Ok(dest) => {
                let addr = match (dest.nat, dest.uri.ip()) {
                    (Some(a), _) => Some(a),
                    (None, Some(ip)) => Some(SocketAddr::new(ip, dest.uri.port.unwrap_or(5060))),
                    (None, None) => {
                        let host = format!("{}:{}", dest.uri.host, dest.uri.port.unwrap_or(5060));
                        tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(host))
                            .await
                            .ok()
                            .and_then(|r| r.ok())
                            .and_then(|mut it| it.next())
                    }
                };
                match addr {
                    Some(a) if !self.invite.flow.is_reliable() => self.invite.flow.to(a),
                    Some(a) => match self
                        .ctx
                        .endpoint
                        .transports
                        .connect(self.invite.flow.transport, a, &dest.uri.host)
                        .await
                    {
                        Ok(f) => f,
                        Err(e) => {
                            tracing::info!(call_id = %self.call_id, error = %e, "cannot reach the caller for BYE");
                            return;
                        }
                    },
                    None => self.invite.flow.clone(),
                }
            }
            Err(_) => self.invite.flow.clone(),
        };
        let branch = build::new_branch();
        let via = self.ctx.endpoint.via(&flow, &branch);
        let contact = self.ctx.endpoint.contact(&flow);
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        let mut out = dialog.request("BYE", &via, &contact);
        out.push("Reason", outcome.reason_header());
        out.push("User-Agent", &self.ctx.endpoint.user_agent);
        let mut tx =
            ClientNonInvite::new(now(), flow.is_reliable(), self.ctx.timers, out.to_bytes());
        while let Some(o) = tx.poll_output() {
            if let Output::Send(b) = o {
                let _ = flow.send(&b);
            }
        }
        self.bye = Some(ByeTx { branch, tx, flow });
    }

    /// Ends the call: the final response or our BYE, out of the room, ports freed, one
    /// summary line; then waits (bounded) for the last transactions.
    async fn finish(&mut self, outcome: Outcome) {
        let t_end = now();
        // stop joining: dropping the handle makes a half-joined participant leave
        if let Some(j) = self.join.take() {
            j.abort();
        }
        let remote_ended = matches!(outcome, Outcome::CallerHangup | Outcome::CallerCancelled);
        if !self.final_sent {
            let status = outcome.status();
            let mut out = match &outcome {
                Outcome::Rejected {
                    reason: Some(r), ..
                } => {
                    build::response_with_reason(&self.invite.msg, status, r, Some(&self.local_tag))
                }
                _ => build::response_to(&self.invite.msg, status, Some(&self.local_tag)),
            };
            if let Some(s) = outcome.retry_after() {
                out.push("Retry-After", s.to_string());
            }
            if let Outcome::NoCommonCodec(w) = &outcome {
                out.push("Warning", w);
            }
            self.respond_invite(status, out);
        } else if self.answered_at.is_some() && !remote_ended {
            self.send_bye(&outcome).await;
        }
        // leave the room
        if let Some(room) = self.room.take() {
            room.leave(&outcome).await;
        }
        let stats = self
            .media
            .as_ref()
            .and_then(|m| m.pm.as_ref())
            .map(|pm| pm.stats());
        let codec = self
            .media
            .as_ref()
            .and_then(|m| m.codec())
            .map(|c| c.name())
            .unwrap_or("none");
        self.media = None; // sockets closed, ports back to the pool (after a drain period)
        self.active.release();
        let duration = self
            .answered_at
            .map(|a| t_end.saturating_duration_since(a))
            .unwrap_or_default();
        let (rx_packets, rx_lost, tx_packets, tx_lost, jitter_ms) = match &stats {
            Some(s) => (
                s.rx.packets,
                s.rx.lost,
                s.tx.packets,
                s.tx.lost.unwrap_or(0).max(0) as u64,
                s.rx.jitter_ms,
            ),
            None => (0, 0, 0, 0, 0.0),
        };
        let trunk = self.trunk.clone();
        metrics::counter!(m::CALLS_TOTAL, "direction" => "inbound", "trunk" => trunk.clone(), "outcome" => outcome.label())
            .increment(1);
        if self.answered_at.is_some() {
            metrics::histogram!(m::CALL_DURATION_SECONDS, "direction" => "inbound", "trunk" => trunk.clone())
                .record(duration.as_secs_f64());
            metrics::counter!(m::RTP_PACKETS, "direction" => "rx", "codec" => codec)
                .increment(rx_packets);
            metrics::counter!(m::RTP_PACKETS, "direction" => "tx", "codec" => codec)
                .increment(tx_packets);
            metrics::counter!(m::RTP_LOST, "direction" => "rx", "codec" => codec)
                .increment(rx_lost);
            metrics::counter!(m::RTP_LOST, "direction" => "tx", "codec" => codec)
                .increment(tx_lost);
            metrics::histogram!(m::RTP_JITTER_SECONDS, "codec" => codec).record(jitter_ms / 1000.0);
        }
        let (rule, room) = self
            .plan
            .as_ref()
            .map(|p| (p.rule.clone(), p.room.clone()))
            .unwrap_or_default();
        tracing::info!(
            call_id = %self.call_id,
            seq = self.seq,
            direction = "inbound",
            trunk = %trunk,
            rule = %rule,
            room = %crate::logging::Masked(&room),
            caller = %Phone(&self.caller),
            called = %Phone(&self.called),
            codec,
            answered = self.answered_at.is_some(),
            duration_s = format!("{:.1}", duration.as_secs_f64()),
            outcome = %outcome,
            status = if self.answered_at.is_some() { 200 } else { outcome.status() },
            rx_packets, rx_lost, tx_packets, tx_lost,
            jitter_ms = format!("{jitter_ms:.1}"),
            dtmf_in = self.dtmf_in,
            dtmf_out = self.dtmf_out,
            "call ended"
        );
        self.linger().await;
    }

    /// Keeps absorbing retransmissions until the INVITE transaction (awaiting the ACK of
    /// a non-2xx final) and our BYE have finished, bounded; then hands the endpoint the
    /// answers to re-send for late retransmissions.
    async fn linger(&mut self) {
        let deadline = tokio::time::Instant::now() + LINGER_LIMIT;
        loop {
            let invite_done = self.tx.is_terminated()
                || self.tx.is_acked()
                || matches!(
                    self.tx.state(),
                    crate::sip::transaction::ServerInviteState::Confirmed
                )
                || (self.answered_at.is_some() && self.tx.is_acked());
            let bye_done = self.bye.as_ref().is_none_or(|b| {
                b.tx.is_terminated()
                    || matches!(
                        b.tx.state(),
                        crate::sip::transaction::ClientNonInviteState::Completed
                    )
            });
            if (invite_done || self.answered_at.is_some()) && bye_done {
                break;
            }
            let next = tokio::time::Instant::from_std(self.next_deadline()).min(deadline);
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(SipEvent::Request(req)) => {
                        let branch = req.branch();
                        let method = req.method().to_string();
                        if branch == self.invite_branch && method == "INVITE" {
                            self.tx.on_request(req.at);
                        } else if method == "ACK" && req.cseq().map(|(n, _)| n) == Some(self.invite_cseq) {
                            self.tx.on_ack(req.at);
                        } else if let Some(tx) = self.answered.get_mut(&branch) {
                            tx.on_request(req.at);
                        } else if method == "CANCEL" {
                            self.reply(&req, 200);
                        } else if method != "ACK" {
                            self.reply(&req, 481);
                        }
                    }
                    Some(SipEvent::Response(resp)) => {
                        if let Some(bye) = self.bye.as_mut() && resp.branch() == bye.branch {
                            bye.tx.on_response(resp.at, resp.status());
                        }
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(next) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let t = now();
            self.drive_tx();
            self.drive_answered(t);
            if let Some(b) = self.bye.as_mut() {
                if b.tx.poll_timeout().is_some_and(|d| d <= t) {
                    b.tx.handle_timeout(t);
                }
                while let Some(o) = b.tx.poll_output() {
                    if let Output::Send(bytes) = o {
                        let _ = b.flow.send(&bytes);
                    }
                }
            }
        }
        let linger: Vec<Linger> = self
            .answered
            .iter()
            .filter_map(|(branch, tx)| {
                tx.last_response().map(|bytes| Linger {
                    branch: branch.clone(),
                    bytes: bytes.to_vec(),
                    flow: self.invite.flow.clone(),
                })
            })
            .collect();
        self.ctx.endpoint.unregister(&self.call_id, linger);
    }
}
