//! An inbound call, one task: what only a call into a room does. 100 Trying at once;
//! the INVITE's session-timer request checked (422, 420); the dialplan decides (reject,
//! 404, or a room); SDP answered (488 with Warning if nothing in common; our offer in the
//! 200 when the INVITE has none), RTP ports (503 if none); 180 Ringing (or 183 with SDP
//! for early media) while joining; 200 OK once joined (`answer: on_join`) or when the
//! first remote audio track arrives (`on_first_track`, within the ringing timeout); with
//! a PIN, answer first, collect digits until '#', then join. Everything in the dialog
//! (BYE, CANCEL, re-INVITE, UPDATE, INFO, session timers, our BYE) is the shared leg's
//! (`leg`, `shell`). Tests: `tests/inbound_calls.rs`, `tests/sip_endpoint.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::attributes::{self, CallStatus};
use super::bridge::{MediaLeg, MediaSetup, Room};
use super::leg::Leg;
use super::outcome::Outcome;
use super::prompt::{self, Prompt};
use super::shell::{self, MediaMode, Shell, Summary, Wake, now};
use super::{CallContext, CallControl, Registration};
use crate::config::AnswerMode;
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
use crate::sip::endpoint::{self, InboundInvite};
use crate::sip::sdp::{self, Local};

/// Digits a PIN entry may hold before '#'.
const PIN_MAX_DIGITS: usize = 32;
/// Wrong PINs before the call is ended.
const PIN_TRIES: u32 = 3;
/// Time for one PIN attempt.
const PIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The identity owning the prompt track in the mixer (never a room participant's).
const PROMPT_OWNER: &str = "\u{0}roomline-prompt";
/// RTP port pairs tried when some are taken by other programs.
pub const BIND_ATTEMPTS: usize = 8;

struct PinEntry {
    pin: String,
    digits: String,
    tries: u32,
    deadline: Instant,
}

type JoinResult = Result<(ParticipantHandle, mpsc::Receiver<ParticipantEvent>), JoinError>;

/// One inbound call's own state; the rest is the shell's.
struct InboundCall {
    shell: Shell,
    trunk: String,
    /// The INVITE's offer, if any.
    offer: Option<Vec<u8>>,
    /// Puts the call in the registry (for the API) once it is in its room.
    registration: Option<Registration>,
    plan: Option<JoinPlan>,
    join: Option<JoinHandle<JoinResult>>,
    join_started: Option<Instant>,
    pin: Option<PinEntry>,
    prompt: Option<Prompt>,
    ringing_deadline: Option<Instant>,
    early: bool,
    called: String,
    caller: String,
    /// Our call id (`sip.callID`, `SCL_...`).
    lk_call_id: String,
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
    let called = endpoint::called_number(&invite);
    let source = invite.flow.remote.ip();
    let caller = invite
        .from()
        .and_then(|f| f.uri().ok())
        .and_then(|u| u.user_decoded())
        .map(|u| matching::number_from_user(&u))
        .unwrap_or_default();
    let mut shell = Shell::new(ctx, config, shutdown, control, seq, invite.at);
    let settings = shell::timer_settings(&shell.cfg, &trunk);
    let local = shell.local_on(&invite.flow);
    shell.leg = Some(Leg::uas(&invite, local, shell.ctx.timers, settings));
    shell.events = Some(events);
    let mut call = InboundCall {
        shell,
        trunk,
        offer: crate::sip::body::sdp(&invite.msg),
        registration: Some(registration),
        plan: None,
        join: None,
        join_started: None,
        pin: None,
        prompt: None,
        ringing_deadline: None,
        early: false,
        called,
        caller,
        lk_call_id: attributes::new_call_id(),
    };
    let outcome = match call.start() {
        Ok(()) => call.main_loop().await,
        Err(o) => o,
    };
    if matches!(outcome, Outcome::PinFailed) {
        // a wrong PIN costs nothing: the call's calls-per-second token goes back
        call.shell.ctx.endpoint.refund_call(source);
    }
    let (rule, room) = call
        .plan
        .as_ref()
        .map(|p| (p.rule.clone(), p.room.clone()))
        .unwrap_or_default();
    let summary = Summary {
        direction: "inbound",
        trunk: &call.trunk,
        tried: std::slice::from_ref(&call.trunk),
        rule: &rule,
        room: &room,
        caller: &call.caller,
        called: &call.called,
    };
    call.shell.finish(outcome, summary).await;
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

impl InboundCall {
    fn leg(&mut self) -> &mut Leg {
        self.shell
            .leg
            .as_mut()
            .expect("an inbound call has its leg")
    }

    fn sample_rate(&self) -> SampleRate {
        self.shell
            .media
            .as_ref()
            .map_or(SampleRate::Hz8000, MediaLeg::rate)
    }

    /// A response to the INVITE with the dialog's headers (and `headers`).
    fn respond(&mut self, status: u16, headers: Vec<(String, String)>, body: Option<String>) {
        let leg = self.leg();
        let Some(mut out) = leg.invite_response(status) else {
            return;
        };
        for (k, v) in headers {
            out.push(&k, v);
        }
        if let Some(sdp) = body {
            out = out.body("application/sdp", sdp);
        }
        leg.respond_invite(now(), status, out);
        self.shell.flush();
    }

    /// Routes the call, checks its session timer, negotiates SDP, binds RTP, starts
    /// ringing and joining. Errors end the call before answer.
    fn start(&mut self) -> Result<(), Outcome> {
        self.respond(100, Vec::new(), None);
        self.leg().accept_invite_timer()?;
        let random = crate::sip::build::new_tag();
        let call_id = self.shell.call_id();
        let summary = CallSummary {
            trunk: &self.trunk,
            called: &self.called,
            caller: &self.caller,
            call_id: &call_id,
            random: &random,
        };
        let plan = match dialplan::route(&self.shell.cfg, &summary) {
            Decision::Reject {
                rule,
                status,
                reason,
            } => {
                tracing::info!(%call_id, %rule, status, "dialplan rejects the call");
                return Err(Outcome::Rejected { status, reason });
            }
            Decision::NoRule => return Err(Outcome::NoRoute),
            Decision::Join(plan) => *plan,
        };
        self.leg().create_uas_dialog().map_err(Outcome::BadSdp)?;
        let flow = self.leg().flow().clone();
        let sdp_ip = self
            .shell
            .ctx
            .rtp_public_ip
            .unwrap_or_else(|| self.shell.ctx.endpoint.advertised(&flow).ip());
        let bound = socket::bind_pair(&self.shell.ctx.ports, flow.local.ip(), BIND_ATTEMPTS)
            .map_err(|e| {
                tracing::warn!(%call_id, error = %e, "no RTP ports");
                Outcome::NoPorts
            })?;
        let codecs = self.shell.cfg.trunk(&self.trunk).map_or_else(
            || crate::config::defaults::CODECS.to_vec(),
            |t| t.codecs.clone(),
        );
        let local = Local {
            codecs,
            address: sdp_ip,
            rtp_port: bound.guard.pair().rtp,
            session_id: rand::random_range(1..u32::MAX as u64),
            session_version: 1,
        };
        let setup = MediaSetup {
            identity: plan.identity.clone(),
            timeouts: MediaTimeoutConfig {
                timeout: self.shell.cfg.rtp.media_timeout,
                initial: self.shell.cfg.rtp.media_timeout_initial,
            },
            signalling: flow.remote.ip(),
            hold_tone: self.shell.cfg.livekit.hold_tone,
            encryption: self
                .shell
                .cfg
                .trunk(&self.trunk)
                .map(|t| t.media_encryption)
                .unwrap_or_default(),
        };
        let mut media = MediaLeg::new(bound, local, setup);
        match &self.offer {
            Some(offer) => {
                sdp::parse(&String::from_utf8_lossy(offer))
                    .map_err(|e| Outcome::BadSdp(e.to_string()))?;
                media.answer_offer(now(), offer).map_err(|r| {
                    Outcome::NoCommonCodec(r.warning(&self.shell.cfg.sip.user_agent))
                })?;
            }
            // late offer: we offer in the 200, the answer comes in the ACK
            None => {
                media.first_offer();
            }
        }
        let codec = media.codec().map_or("offered", |c| c.name());
        let srtp = super::encryption::label(media.srtp_suite());
        self.shell.media = Some(media);
        tracing::info!(%call_id, trunk = %self.trunk, rule = %plan.rule,
            room = %crate::logging::Masked(&plan.room), caller = %Phone(&self.caller),
            called = %Phone(&self.called), codec, srtp, "inbound call");
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
                let sdp = self.shell.media.as_ref().map(|m| m.sdp.clone());
                self.respond(183, Vec::new(), sdp);
                self.early = true;
                if let Some(m) = self.shell.media.as_mut() {
                    m.start_pipeline(now());
                }
            } else {
                self.respond(180, Vec::new(), None);
            }
            self.start_join();
        }
        Ok(())
    }

    fn join_options(&self, plan: &JoinPlan) -> JoinOptions {
        let lk = &self.shell.cfg.livekit;
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
        o.reconnect_window = lk.reconnect_window;
        o
    }

    /// The participant's attributes at join (`call::attributes`): the rule's, the
    /// INVITE's headers as the trunk maps them, the `sip.*` keys and the status.
    fn join_attributes(&self, plan: &JoinPlan) -> HashMap<String, String> {
        let facts = attributes::InboundFacts {
            call_id: &self.lk_call_id,
            trunk: &self.trunk,
            caller: &self.caller,
            called: &self.called,
            mapping: self
                .shell
                .cfg
                .trunk(&self.trunk)
                .and_then(|t| t.inbound.as_ref())
                .map(|i| &i.mapping),
        };
        let status = match self.shell.answered_at {
            Some(_) => CallStatus::Active,
            None => CallStatus::Ringing,
        };
        let Some(invite) = self.shell.leg.as_ref().and_then(|l| l.invite()) else {
            return HashMap::new();
        };
        attributes::inbound_join(plan, invite, &facts, status)
    }

    /// The trunk's `attributes_to_headers` for our 200 OK, from the attributes we join
    /// with.
    fn answer_headers(&self) -> Vec<(String, String)> {
        let (Some(plan), Some(i)) = (
            self.plan.as_ref(),
            self.shell
                .cfg
                .trunk(&self.trunk)
                .and_then(|t| t.inbound.as_ref()),
        ) else {
            return Vec::new();
        };
        attributes::to_headers(
            &self.join_attributes(plan),
            &i.mapping.attributes_to_headers,
        )
    }

    fn start_join(&mut self) {
        let Some(plan) = self.plan.as_ref() else {
            return;
        };
        let opts = self.join_options(plan);
        self.join_started = Some(now());
        self.join = Some(tokio::spawn(Participant::join(opts)));
    }

    /// 200 OK with our SDP (an answer, or the offer of a late-offer call).
    fn answer(&mut self) {
        if self.leg().invite_final_sent() {
            return;
        }
        let sdp = self.shell.media.as_ref().map(|m| m.sdp.clone());
        let headers = self.answer_headers();
        self.respond(200, headers, sdp);
        let t = now();
        self.shell.answered(t);
        if let Some(m) = self.shell.media.as_mut() {
            m.start_pipeline(t);
        }
        metrics::histogram!(m::CALL_SETUP_SECONDS, "direction" => "inbound", "trunk" => self.trunk.clone())
            .record(t.saturating_duration_since(self.shell.started).as_secs_f64());
        if let Some(room) = &self.shell.room {
            room.set_attributes(&[CallStatus::Active.attribute()]);
        }
        tracing::info!(call_id = %self.shell.call_id(), trunk = %self.trunk, "inbound call answered");
    }

    async fn main_loop(&mut self) -> Outcome {
        loop {
            let own = [self.ringing_deadline, self.pin.as_ref().map(|p| p.deadline)]
                .into_iter()
                .flatten()
                .min();
            let deadline = self.shell.next_deadline(own);
            let step = match self
                .shell
                .step(join_opt(self.join.as_mut()), deadline)
                .await
            {
                Err(o) => return o,
                Ok(Wake::Extra(joined)) => {
                    self.join = None;
                    self.on_joined(joined)
                }
                Ok(Wake::TrackSubscribed) => {
                    let mode = self.plan.as_ref().map(|p| p.answer);
                    if mode == Some(AnswerMode::OnFirstTrack) && !self.leg().invite_final_sent() {
                        self.ringing_deadline = None;
                        self.answer();
                    }
                    Ok(())
                }
                Ok(Wake::Nothing | Wake::Response(_)) => Ok(()),
            };
            if let Err(o) = step {
                return o;
            }
            if let Err(o) = self.shell.drive().await {
                return o;
            }
            if let Err(o) = self.drive() {
                return o;
            }
        }
    }

    /// Deadlines, keys, media: after every wake-up.
    fn drive(&mut self) -> Result<(), Outcome> {
        let t = now();
        if self.ringing_deadline.is_some_and(|d| t >= d) && !self.leg().invite_final_sent() {
            return Err(Outcome::RingingTimeout);
        }
        if self.pin.as_ref().is_some_and(|p| t >= p.deadline) {
            return Err(Outcome::PinFailed);
        }
        while let Some(d) = self.shell.digits.pop_front() {
            self.on_digit(d)?;
        }
        let mode = MediaMode {
            live: self.shell.answered_at.is_some() || self.early,
            forward: self.pin.is_none(),
            timeout_ends: self.shell.answered_at.is_some(),
        };
        let prompt = &mut self.prompt;
        self.shell.drive_media(mode, |pm, _| {
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
        })?;
        // keys pressed during this media tick
        while let Some(d) = self.shell.digits.pop_front() {
            self.on_digit(d)?;
        }
        Ok(())
    }

    /// A key the caller pressed (RFC 4733 or INFO): the PIN while one is asked, else the
    /// room's.
    fn on_digit(&mut self, d: char) -> Result<(), Outcome> {
        let call_id = self.shell.call_id();
        let Some(p) = self.pin.as_mut() else {
            if let Some(room) = &self.shell.room {
                room.send_dtmf(d);
            }
            return Ok(());
        };
        if d != '#' {
            if p.digits.len() < PIN_MAX_DIGITS {
                p.digits.push(d);
            }
            return Ok(());
        }
        if p.digits == p.pin {
            tracing::info!(%call_id, "PIN accepted");
            self.pin = None;
            self.prompt = None;
            if let Some(pm) = self.shell.media.as_mut().and_then(|m| m.pm.as_mut()) {
                pm.remove_track("prompt");
            }
            self.start_join();
            return Ok(());
        }
        p.tries += 1;
        tracing::info!(%call_id, tries = p.tries, "wrong PIN");
        if p.tries >= PIN_TRIES {
            return Err(Outcome::PinFailed);
        }
        p.digits.clear();
        p.deadline = now() + PIN_TIMEOUT;
        self.prompt = Some(Prompt::new(prompt::PIN_WRONG, self.sample_rate().hz()));
        Ok(())
    }

    fn on_joined(&mut self, r: JoinResult) -> Result<(), Outcome> {
        let call_id = self.shell.call_id();
        let (handle, events) = r.map_err(|e| {
            tracing::warn!(%call_id, error = %e, "cannot join the LiveKit room");
            Outcome::LiveKitUnavailable(e.to_string())
        })?;
        if let Some(t0) = self.join_started {
            metrics::histogram!(m::LIVEKIT_JOIN_SECONDS)
                .record(now().saturating_duration_since(t0).as_secs_f64());
        }
        tracing::debug!(%call_id, sid = %handle.sid(), room = %handle.room(), "joined");
        let room = Room::new(handle, events, self.shell.ctx.participants.clone());
        self.shell.set_room(room);
        if let Some(reg) = self.registration.take()
            && let Some(plan) = &self.plan
        {
            reg.register(plan.room.clone(), plan.identity.clone());
        }
        let mode = self.plan.as_ref().map_or(AnswerMode::OnJoin, |p| p.answer);
        if self.shell.answered_at.is_some() {
            // after a PIN: already answered (and joined with status active)
            if let Some(room) = &self.shell.room {
                room.set_attributes(&[CallStatus::Active.attribute()]);
            }
        } else if mode == AnswerMode::OnJoin {
            self.answer();
        } else {
            let timeout = self
                .plan
                .as_ref()
                .map_or(Duration::from_secs(30), |p| p.ringing_timeout);
            self.ringing_deadline = Some(self.shell.started + timeout);
        }
        Ok(())
    }
}
