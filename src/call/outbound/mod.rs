//! An outbound call, one task: what only a call the room places does. The participant
//! joins first (`sip.callStatus` dialing, then ringing, active, hangup); the INVITE goes
//! to the trunk with our SDP offer and session-timer request; a 401/407 is answered with
//! the trunk's credentials (again only for a stale nonce), a 422 with the interval it
//! asks; 180/183 ring (183 with SDP starts early media); 2xx is ACKed and the call is up;
//! a transport error, a timeout or 408/5xx/6xx moves the call to the trunk's backup once,
//! while the ringing timeout allows; the ringing timeout sends CANCEL. Up: everything in
//! the dialog is the shared leg's (`leg`, `shell`); here only the request's `dtmf`
//! digits (with 'w' pauses) and the max call duration. Tests: `tests/outbound_calls.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

pub(crate) mod attempt;
mod request;

use attempt::{Attempt, Challenged, Target, fails_over};
pub use request::{DialError, OutboundRequest, Started};

use super::attributes::{self, CallStatus};
use super::bridge::{MediaLeg, MediaSetup, Room};
use super::leg::Leg;
use super::outcome::Outcome;
use super::shell::{self, MediaMode, Shell, Summary, Wake, now};
use super::{CallContext, CallControl};
use crate::config::{Config, Transport};
use crate::livekit::{JoinError, JoinOptions, Participant, ParticipantKind, SampleRate};
use crate::logging::Phone;
use crate::media::socket;
use crate::media::timeout::MediaTimeoutConfig;
use crate::ops::metrics as m;
use crate::sip::body;
use crate::sip::build;
use crate::sip::incoming::Incoming;
use crate::sip::sdp::Local;
use crate::sip::transaction::ClientInviteState;
use crate::sip::uri;

/// With a backup to go to, a trunk that has not answered the INVITE at all (not even
/// 100 Trying) this long counts as down, long before Timer B's 32 s.
pub const NO_RESPONSE_FAILOVER: Duration = Duration::from_secs(5);
/// Pause for each 'w' in the request's DTMF string.
const DTMF_PAUSE: Duration = Duration::from_millis(500);
/// Between two digits of the request's DTMF string.
const DTMF_GAP: Duration = Duration::from_millis(250);

/// One outbound call's own state; the rest is the shell's.
struct OutboundCall {
    shell: Shell,
    req: OutboundRequest,
    reply: Option<oneshot::Sender<Result<Started, DialError>>>,
    identity: String,
    attempt: Option<Attempt>,
    ringing_deadline: Instant,
    hangup_deadline: Option<Instant>,
    early: bool,
    ringing_reported: bool,
    dtmf_queue: std::collections::VecDeque<char>,
    dtmf_next: Instant,
    dialtone: Option<super::prompt::Prompt>,
    dialtone_next: Instant,
    last_status: Option<(u16, String)>,
    tried: Vec<String>,
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
    let identity = req.identity();
    let t = now();
    let mut call = OutboundCall {
        shell: Shell::new(ctx, cfg, shutdown, control, seq, t),
        ringing_deadline: t + req.ringing_timeout,
        req,
        reply: Some(reply),
        identity,
        attempt: None,
        hangup_deadline: None,
        early: false,
        ringing_reported: false,
        dtmf_queue: Default::default(),
        dtmf_next: t,
        dialtone: None,
        dialtone_next: t,
        last_status: None,
        tried: Vec::new(),
        more_targets: false,
        lk_call_id: attributes::new_call_id(),
        attributes: HashMap::new(),
    };
    let outcome = call.run().await;
    let (trunk, caller) = match &call.attempt {
        Some(a) => (a.target.trunk.clone(), call.caller_number(&a.target)),
        None => (call.req.trunk.clone(), String::new()),
    };
    let summary = Summary {
        direction: "outbound",
        trunk: &trunk,
        tried: &call.tried,
        rule: "",
        room: &call.req.room,
        caller: &caller,
        called: &call.req.call_to,
    };
    call.shell.finish(outcome, summary).await;
}

enum Fail {
    /// Try the next trunk.
    Next(String),
    End(Outcome, DialError),
}

impl Fail {
    /// The call ends before the answer for `o`.
    fn ended(o: Outcome) -> Fail {
        let e = DialError::Ended(o.to_string());
        Fail::End(o, e)
    }
}

impl OutboundCall {
    fn caller_number(&self, target: &Target) -> String {
        self.req
            .from_number
            .clone()
            .or_else(|| target.from_number.clone())
            .unwrap_or_else(|| "roomline".into())
    }

    fn reply_once(&mut self, r: Result<Started, DialError>) {
        if let Some(reply) = self.reply.take() {
            let _ = reply.send(r);
        }
    }

    fn started_info(&self) -> Option<Started> {
        let room = self.shell.room.as_ref()?;
        Some(Started {
            participant_sid: room.handle.sid(),
            identity: room.handle.identity().to_string(),
            room: room.handle.room().to_string(),
            call_id: self.lk_call_id.clone(),
        })
    }

    async fn run(&mut self) -> Outcome {
        let targets = attempt::targets(
            &self.shell.cfg,
            &self.req.trunk,
            self.shell.ctx.trunk_states.as_ref(),
        );
        if targets.is_empty() {
            let e = format!("trunk {:?} has no outbound side", self.req.trunk);
            self.reply_once(Err(DialError::Unreachable(e.clone())));
            return Outcome::Internal(e);
        }
        // RTP first: the offer needs our port
        let bind_ip = self
            .shell
            .ctx
            .endpoint
            .transports
            .local_addrs()
            .first()
            .map(|(_, a)| a.ip())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let bound = match socket::bind_pair(
            &self.shell.ctx.ports,
            bind_ip,
            super::inbound::BIND_ATTEMPTS,
        ) {
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
        let joined = match tokio::spawn(Participant::join(opts)).await {
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
        self.shell.set_room(Room::new(
            handle,
            events,
            self.shell.ctx.participants.clone(),
        ));
        if self.req.play_dialtone {
            self.dialtone = Some(super::prompt::Prompt::new(super::prompt::RINGBACK, 8000));
        }
        let mut attempts = targets.into_iter().peekable();
        let mut next = attempts.next();
        let mut media_bound = Some(bound);
        loop {
            let Some(target) = next.take() else {
                let (status, reason) = self
                    .last_status
                    .clone()
                    .unwrap_or((503, "no trunk answered".into()));
                self.reply_once(Err(DialError::Sip {
                    status,
                    reason: reason.clone(),
                }));
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
        if let Some(info) = self.started_info() {
            self.reply_once(Ok(info));
        }
        self.connected().await
    }

    fn join_options(&self, target: &Target) -> JoinOptions {
        let lk = &self.shell.cfg.livekit;
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
            .extend(attributes::outbound(&attributes::OutboundKeys {
                call_id: &self.lk_call_id,
                trunk: &self.req.trunk,
                call_to: &self.req.call_to,
                from_number: &self.caller_number(target),
                hostname: &target.host,
                hide_phone_number: self.req.hide_phone_number,
            }));
        o.sample_rate = SampleRate::Hz8000;
        o.join_timeout = Duration::from_secs(10);
        o.reconnect_window = lk.reconnect_window;
        o
    }
    /// One try through one trunk: Ok once answered.
    async fn attempt(
        &mut self,
        target: Target,
        bound: &mut Option<socket::BoundPorts>,
    ) -> Result<(), Fail> {
        let flow = attempt::flow_to(&self.shell.ctx.endpoint.transports, &target)
            .await
            .map_err(Fail::Next)?;
        let call_id = build::new_call_id();
        let Some(events) = self.shell.ctx.endpoint.register(&call_id).await else {
            return Err(Fail::End(
                Outcome::Internal("endpoint gone".into()),
                DialError::Ended("the SIP endpoint stopped".into()),
            ));
        };
        // the previous attempt's Call-ID goes back to the endpoint
        self.shell.linger().await;
        let setup = MediaSetup {
            identity: self.identity.clone(),
            timeouts: MediaTimeoutConfig {
                timeout: self.shell.cfg.rtp.media_timeout,
                initial: self.shell.cfg.rtp.media_timeout_initial,
            },
            signalling: flow.remote.ip(),
            hold_tone: self.shell.cfg.livekit.hold_tone,
            encryption: self
                .req
                .media_encryption
                .map_or(target.encryption, |m| m.max(target.encryption)),
        };
        match self.shell.media.as_mut() {
            // a new dialog: a new offer (fresh keys, this trunk's SRTP policy and codecs)
            Some(m) => {
                m.set_setup(setup);
                m.set_codecs(&target.codecs);
                m.first_offer();
            }
            None => {
                let b = bound
                    .take()
                    .ok_or(Fail::End(Outcome::NoPorts, DialError::NoPorts))?;
                let sdp_ip = self
                    .shell
                    .ctx
                    .rtp_public_ip
                    .unwrap_or_else(|| self.shell.ctx.endpoint.advertised(&flow).ip());
                let local = Local {
                    codecs: target.codecs.clone(),
                    address: sdp_ip,
                    rtp_port: b.guard.pair().rtp,
                    session_id: rand::random_range(1..u32::MAX as u64),
                    session_version: 1,
                };
                let mut media = MediaLeg::new(b, local, setup);
                media.first_offer();
                self.shell.media = Some(media);
            }
        }
        let from_number = self.caller_number(&target);
        let local_tag = build::new_tag();
        let from_host = uri::host_port(self.shell.ctx.endpoint.advertised(&flow));
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
        let host = target.host_port();
        let timer = shell::timer_settings(&self.shell.cfg, &target.trunk);
        let local = self.shell.local_on(&flow);
        self.shell.leg = Some(Leg::uac(
            &call_id,
            &local_tag,
            flow.clone(),
            local,
            self.shell.ctx.timers,
            timer,
        ));
        self.shell.events = Some(events);
        let mut attempt = Attempt::new(
            target,
            flow,
            format!("{display}<{scheme}:{from_number}@{from_host}>;tag={local_tag}"),
            format!("<{scheme}:{}@{host}>", self.req.call_to),
            format!("{scheme}:{}@{host}{transport_param}", self.req.call_to),
            timer,
            self.shell.ctx.timers,
        );
        attempt.send_invite(&self.shell, &self.req.headers, &self.attributes);
        tracing::info!(%call_id, trunk = %attempt.target.trunk,
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

    /// Until the final response to our INVITE (through this trunk).
    async fn ringing(&mut self) -> Result<(), Fail> {
        loop {
            let Some(a) = self.attempt.as_ref() else {
                return Err(Fail::Next("no attempt".into()));
            };
            let mut timer = self.ringing_deadline.min(now() + Duration::from_millis(20));
            for t in [
                a.tx.poll_timeout(),
                self.dialtone.as_ref().map(|_| self.dialtone_next),
            ]
            .into_iter()
            .flatten()
            {
                timer = timer.min(t);
            }
            let deadline = self.shell.next_deadline(Some(timer));
            let wake = match self
                .shell
                .step(std::future::pending::<()>(), deadline)
                .await
            {
                Ok(w) => w,
                Err(o) => {
                    self.cancel().await;
                    return Err(Fail::ended(o));
                }
            };
            if let Err(o) = self.shell.drive().await {
                self.cancel().await;
                return Err(Fail::ended(o));
            }
            if let Wake::Response(resp) = wake
                && let Some(r) = self.on_invite_response(*resp)
            {
                return r;
            }
            // timers of the INVITE transaction
            let t = now();
            let Some(a) = self.attempt.as_mut() else {
                continue;
            };
            let driven = a.flow.drive(&mut a.tx, t);
            if driven.failed() && a.tx.state() != ClientInviteState::Accepted {
                self.last_status = Some((408, "no response from the trunk".into()));
                return Err(Fail::Next("no response (Timer B)".into()));
            }
            if self.more_targets
                && !a.responded
                && t.saturating_duration_since(a.sent_at) >= NO_RESPONSE_FAILOVER
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
        if self.shell.media.as_ref().is_some_and(|m| m.pm.is_some()) {
            let mode = MediaMode {
                live: early,
                forward: early,
                timeout_ends: false,
            };
            let _ = self.shell.drive_media(mode, |_, _| {});
            self.shell.digits.clear();
        }
        if early {
            return;
        }
        let t = now();
        if let (Some(p), Some(room)) = (self.dialtone.as_mut(), self.shell.room.as_ref()) {
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

    /// Handles a response to our INVITE (or its CANCEL); Some(result) when this attempt is
    /// decided.
    fn on_invite_response(&mut self, resp: Incoming) -> Option<Result<(), Fail>> {
        let a = self.attempt.as_mut()?;
        let status = a.take_response(&resp)?;
        match status {
            100 => None,
            101..=199 => {
                let forward = a.target.early_media;
                if !self.ringing_reported && (status == 180 || status == 183) {
                    self.ringing_reported = true;
                    if let Some(r) = &self.shell.room {
                        r.set_attributes(&[CallStatus::Ringing.attribute()]);
                    }
                }
                if let Some(r) = &self.shell.room {
                    r.set_attribute_map(attributes::outbound_provisional(&resp.msg));
                }
                if let Some(answer) = body::sdp(&resp.msg)
                    && let Some(m) = self.shell.media.as_mut()
                {
                    let _ = m.take_answer(now(), &answer);
                    self.early = forward && m.pm.is_some();
                }
                None
            }
            200..=299 => Some(self.on_answered(resp)),
            401 | 407 => self.on_challenge(&resp),
            422 => match a.retry_422(&self.shell, &resp, &self.req.headers, &self.attributes) {
                Some(secs) => {
                    tracing::info!(secs, "422: the trunk wants a longer session interval");
                    None
                }
                None => Some(Err(self.refused(&resp))),
            },
            _ if fails_over(status) => {
                let reason = resp.reason().to_string();
                self.last_status = Some((status, reason.clone()));
                Some(Err(Fail::Next(format!("{status} {reason}"))))
            }
            _ => Some(Err(self.refused(&resp))),
        }
    }

    /// A final refusal of the call.
    fn refused(&mut self, resp: &Incoming) -> Fail {
        let (status, reason) = (resp.status(), resp.reason().to_string());
        self.last_status = Some((status, reason.clone()));
        Fail::End(
            Outcome::Rejected {
                status,
                reason: Some(reason.clone()),
            },
            DialError::Sip { status, reason },
        )
    }

    /// A 401/407: answered once with the trunk's credentials (again for a stale nonce).
    fn on_challenge(&mut self, resp: &Incoming) -> Option<Result<(), Fail>> {
        let a = self.attempt.as_mut()?;
        let status = resp.status();
        let credentials = a.target.auth.clone();
        match a.answer_challenge(
            &self.shell,
            resp,
            credentials.as_ref(),
            &self.req.headers,
            &self.attributes,
        ) {
            Challenged::Resent => None,
            Challenged::Refused => Some(Err(Fail::End(
                Outcome::Rejected {
                    status,
                    reason: Some("authentication failed".into()),
                },
                DialError::Sip {
                    status,
                    reason: "authentication failed".into(),
                },
            ))),
            Challenged::NoCredentials | Challenged::Unsupported => Some(Err(self.refused(resp))),
        }
    }

    fn on_answered(&mut self, resp: Incoming) -> Result<(), Fail> {
        let Some(a) = self.attempt.as_mut() else {
            return Err(Fail::Next("no attempt".into()));
        };
        a.confirm(&mut self.shell, &resp).map_err(|e| {
            Fail::End(
                Outcome::Internal(e.clone()),
                DialError::Ended(format!("bad 2xx: {e}")),
            )
        })?;
        if let (Some(sdp), Some(m)) = (body::sdp(&resp.msg), self.shell.media.as_mut())
            && let Err(r) = m.take_answer(now(), &sdp)
        {
            tracing::info!(warning = %r.text, "unusable SDP answer");
        }
        if self.shell.media.as_ref().is_none_or(|m| m.pm.is_none()) {
            return Err(Fail::End(
                Outcome::NoCommonCodec("no usable SDP answer".into()),
                DialError::Ended("the callee answered without usable SDP".into()),
            ));
        }
        let t = now();
        self.shell.answered(t);
        self.early = false;
        self.dialtone = None;
        let trunk = self
            .attempt
            .as_ref()
            .map(|a| a.target.trunk.clone())
            .unwrap_or_default();
        metrics::histogram!(m::CALL_SETUP_SECONDS, "direction" => "outbound", "trunk" => trunk.clone())
            .record(t.saturating_duration_since(self.shell.started).as_secs_f64());
        if let (Some(room), Some(a)) = (&self.shell.room, &self.attempt) {
            // LiveKit's `automation` while the request's digits go out, then `active`
            let status = if self.req.dtmf.is_empty() {
                CallStatus::Active
            } else {
                CallStatus::Automation
            };
            let mut mapping = a.target.mapping.clone();
            if let Some(i) = self.req.include_headers {
                mapping.include = i;
            }
            room.set_attribute_map(attributes::outbound_answered(&resp.msg, &mapping, status));
        }
        self.hangup_deadline = self.req.max_call_duration.map(|d| t + d);
        tracing::info!(call_id = %self.shell.call_id(), %trunk, "outbound call answered");
        Ok(())
    }

    /// CANCEL the INVITE (`Attempt::cancel`); a 2xx that crossed the CANCEL makes the
    /// call, which is then hung up.
    async fn cancel(&mut self) {
        let Some(a) = self.attempt.as_mut() else {
            return;
        };
        if let Some(resp) = a.cancel(&mut self.shell).await
            && (200..300).contains(&resp.status())
        {
            let _ = self.on_answered(resp);
        }
    }

    /// The call is up.
    async fn connected(&mut self) -> Outcome {
        self.dtmf_queue = self.req.dtmf.chars().collect();
        self.dtmf_next = now() + Duration::from_millis(500);
        let mode = MediaMode {
            live: true,
            forward: true,
            timeout_ends: true,
        };
        loop {
            let mut own = now() + Duration::from_millis(100);
            if !self.dtmf_queue.is_empty() {
                own = own.min(self.dtmf_next);
            }
            if let Some(h) = self.hangup_deadline {
                own = own.min(h);
            }
            let deadline = self.shell.next_deadline(Some(own));
            if let Err(o) = self
                .shell
                .step(std::future::pending::<()>(), deadline)
                .await
            {
                return o;
            }
            if let Err(o) = self.shell.drive().await {
                return o;
            }
            if self.hangup_deadline.is_some_and(|h| now() >= h) {
                return Outcome::MaxDuration;
            }
            self.drive_dtmf();
            if let Err(o) = self.shell.drive_media(mode, |_, _| {}) {
                return o;
            }
            while let Some(d) = self.shell.digits.pop_front() {
                if let Some(r) = &self.shell.room {
                    r.send_dtmf(d);
                }
            }
        }
    }

    /// Sends the request's digits toward the phone, honouring 'w' pauses.
    fn drive_dtmf(&mut self) {
        let t = now();
        while self.dtmf_next <= t {
            let Some(c) = self.dtmf_queue.pop_front() else {
                return;
            };
            if self.dtmf_queue.is_empty()
                && let Some(r) = &self.shell.room
            {
                r.set_attributes(&[CallStatus::Active.attribute()]);
            }
            if c == 'w' || c == 'W' {
                self.dtmf_next = t + DTMF_PAUSE;
                continue;
            }
            if let Some(m) = self.shell.media.as_mut() {
                m.send_dtmf(t, c, "api");
            }
            self.dtmf_next = t + DTMF_GAP;
        }
    }
}
