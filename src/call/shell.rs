//! The async shell both call directions share around their sans-IO parts. It owns the
//! call's SIP leg (`leg::Leg`), its phone media (`bridge::MediaLeg`) and its participant
//! (`bridge::Room`), the channels in (SIP events, shutdown, API control) and the clock:
//! `step` waits for what comes next and handles what is the same in both directions (SIP
//! through the leg, RTP into the pipeline, room events, shutdown, transfer requests);
//! `drive` runs the leg's timers, sends what is due and turns the leg's events into the
//! call's; `drive_media` moves audio; `finish` ends the call the one way both directions
//! end (final response or BYE with a Reason, out of the room, ports freed, metrics, one
//! summary line) and lingers, bounded, for the last transactions before handing the
//! endpoint the answers to re-send. What differs (routing, PIN and answer policy;
//! dialling, digest, failover, CANCEL) stays in `inbound` and `outbound`.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::attributes::CallStatus;
use super::bridge::{self, MediaLeg, PhoneSignal, Room, RoomSignal};
use super::encryption;
use super::leg::{Leg, LegEvent, Local, Offers};
use super::outcome::Outcome;
use super::transfer::{self, Done};
use super::{ActiveGuard, CallContext, CallControl};
use crate::config::Config;
use crate::livekit::{ParticipantEvent, SampleRate};
use crate::logging::{Masked, Phone};
use crate::media::session::PhoneMedia;
use crate::ops::metrics as m;
use crate::sip::incoming::{Incoming, SipEvent};
use crate::sip::session_timer::Settings;
use crate::sip::transport::Flow;

/// How long a call that ended waits, at most, for its last transactions (a BYE's answer,
/// the ACK of a final response: Timers F and H are 64*T1 = 32 s).
pub const LINGER: Duration = Duration::from_secs(40);

/// The call tasks' clock (tokio's, so tests may pause it).
pub use crate::clock::now;

/// What woke a call that the direction has to handle itself.
pub enum Wake<T> {
    /// Nothing for the direction (handled here, or a timer).
    Nothing,
    /// A response the leg does not own (an outbound INVITE's, its CANCEL's).
    Response(Box<Incoming>),
    /// The first remote audio track is here.
    TrackSubscribed,
    /// The direction's own future completed.
    Extra(T),
}

/// How the phone's media runs now.
#[derive(Debug, Clone, Copy)]
pub struct MediaMode {
    /// RTP goes to the phone (answered, or early media).
    pub live: bool,
    /// The phone's audio goes to the room.
    pub forward: bool,
    /// A media timeout ends the call.
    pub timeout_ends: bool,
}

/// What the summary line and the metrics say about a call besides its media.
pub struct Summary<'a> {
    pub direction: &'static str,
    pub trunk: &'a str,
    pub tried: &'a [String],
    pub rule: &'a str,
    pub room: &'a str,
    pub caller: &'a str,
    pub called: &'a str,
}

/// One call task's shared state.
pub struct Shell {
    pub ctx: Arc<CallContext>,
    pub cfg: Arc<Config>,
    pub leg: Option<Leg>,
    pub events: Option<mpsc::Receiver<SipEvent>>,
    pub media: Option<MediaLeg>,
    pub room: Option<Room>,
    shutdown: watch::Receiver<bool>,
    /// API requests; None once the sender is gone.
    control: Option<mpsc::Receiver<CallControl>>,
    active: ActiveGuard,
    pub seq: u64,
    pub started: Instant,
    pub answered_at: Option<Instant>,
    /// Counts the call under its SRTP suite in /health/detailed once answered.
    srtp_guard: Option<super::SrtpGuard>,
    /// Keys the caller pressed (RTP and INFO), oldest first, for the direction to use.
    pub digits: VecDeque<char>,
    pub dtmf_in: u64,
    pub frame: Vec<i16>,
    buf: Vec<u8>,
    /// The sample rate last asked of the participant.
    room_rate: Option<SampleRate>,
    /// The call's key in the journal once it is written there (`recover`).
    pub journaled: Option<String>,
}

async fn recv_opt<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_room(room: Option<&mut Room>) -> Option<ParticipantEvent> {
    match room {
        Some(r) => r.events.recv().await,
        None => std::future::pending().await,
    }
}

fn offers(media: &mut Option<MediaLeg>) -> Option<&mut dyn Offers> {
    media.as_mut().map(|m| m as &mut dyn Offers)
}

impl Shell {
    pub fn new(
        ctx: Arc<CallContext>,
        cfg: Arc<Config>,
        shutdown: watch::Receiver<bool>,
        control: mpsc::Receiver<CallControl>,
        seq: u64,
        started: Instant,
    ) -> Shell {
        let active = ActiveGuard::new(ctx.endpoint.active_calls.clone());
        Shell {
            ctx,
            cfg,
            leg: None,
            events: None,
            media: None,
            room: None,
            shutdown,
            control: Some(control),
            active,
            seq,
            started,
            answered_at: None,
            srtp_guard: None,
            digits: VecDeque::new(),
            dtmf_in: 0,
            frame: Vec::new(),
            buf: vec![0u8; 2048],
            room_rate: None,
            journaled: None,
        }
    }

    /// The call is answered at `t`: its media encryption counts in /health/detailed and it
    /// enters the journal of active calls (ended by the next start after a crash).
    pub fn answered(&mut self, t: Instant) {
        self.answered_at = Some(t);
        if let Some(suite) = self.media.as_ref().and_then(MediaLeg::srtp_suite) {
            self.srtp_guard = Some(super::SrtpGuard::new(self.ctx.srtp_calls.clone(), suite));
        }
        self.journal();
    }

    /// Writes (or rewrites) the call's journal entry, once it is answered.
    pub fn journal(&mut self) {
        let Some(journal) = self.ctx.journal.clone() else {
            return;
        };
        if self.answered_at.is_none() {
            return;
        }
        let Some(leg) = self.leg.as_ref() else {
            return;
        };
        let Some(d) = leg.dialog() else {
            return;
        };
        let flow = leg.flow();
        let (room, identity) = self
            .room
            .as_ref()
            .map(|r| (r.handle.room().to_string(), r.handle.identity().to_string()))
            .unwrap_or_default();
        let key = format!("{};{}", d.call_id, d.local_tag);
        journal.up(crate::journal::Entry {
            key: key.clone(),
            call_id: d.call_id.clone(),
            local_tag: d.local_tag.clone(),
            remote_tag: d.remote_tag.clone(),
            local: d.local.clone(),
            remote: d.remote.clone(),
            remote_target: d.remote_target.clone(),
            route_set: d.route_set.clone(),
            local_cseq: d.local_cseq,
            remote_cseq: d.remote_cseq,
            transport: flow.transport.as_str().to_string(),
            remote_addr: flow.remote.to_string(),
            room,
            identity,
        });
        self.journaled = Some(key);
    }

    /// Who we are on `flow` (Contact, Via, agent) for the leg.
    pub fn local_on(&self, flow: &Flow) -> Local {
        Local {
            contact: self.ctx.endpoint.contact(flow),
            via: self.ctx.endpoint.via_sent_by(flow),
            user_agent: self.ctx.endpoint.user_agent.clone(),
        }
    }

    pub fn call_id(&self) -> String {
        self.leg
            .as_ref()
            .map(|l| l.call_id().to_string())
            .unwrap_or_default()
    }

    /// The participant joined the room.
    pub fn set_room(&mut self, room: Room) {
        self.room_rate = Some(room.handle.sample_rate());
        self.room = Some(room);
        self.journal();
    }

    /// Waits until something happens or `deadline`, and handles what both directions
    /// handle alike. Err: the call ends with that outcome.
    pub async fn step<T>(
        &mut self,
        extra: impl Future<Output = T>,
        deadline: Instant,
    ) -> Result<Wake<T>, Outcome> {
        tokio::select! {
            ev = recv_opt(self.events.as_mut()) => match ev {
                Some(SipEvent::Request(req)) => {
                    if let Some(leg) = self.leg.as_mut() {
                        leg.on_request(now(), &req, offers(&mut self.media));
                    }
                    self.flush();
                    Ok(Wake::Nothing)
                }
                Some(SipEvent::Response(resp)) => {
                    let mine = self
                        .leg
                        .as_mut()
                        .is_some_and(|leg| leg.on_response(now(), &resp, offers(&mut self.media)));
                    self.flush();
                    Ok(if mine { Wake::Nothing } else { Wake::Response(Box::new(resp)) })
                }
                None => Err(Outcome::Internal("the SIP endpoint stopped".into())),
            },
            _ = self.shutdown.changed() => Err(Outcome::Shutdown),
            c = recv_opt(self.control.as_mut()) => match c {
                Some(CallControl::Hangup) => Err(Outcome::RoomHangup),
                Some(CallControl::Transfer { to, headers, reply }) => {
                    self.start_transfer(&to, &headers, reply);
                    Ok(Wake::Nothing)
                }
                None => {
                    self.control = None;
                    Ok(Wake::Nothing)
                }
            },
            r = bridge::media_recv(self.media.as_ref(), &mut self.buf) => {
                match (r, self.media.as_mut()) {
                    (Ok(rcv), Some(m)) => bridge::on_packet(m, rcv.rtcp, rcv.from, &self.buf[..rcv.len]),
                    (Err(e), _) => tracing::debug!(error = %e, "RTP receive error"),
                    _ => {}
                }
                Ok(Wake::Nothing)
            }
            ev = recv_room(self.room.as_mut()) => match bridge::on_room_event(self.media.as_mut(), ev) {
                RoomSignal::Nothing => Ok(Wake::Nothing),
                RoomSignal::TrackSubscribed => Ok(Wake::TrackSubscribed),
                RoomSignal::Ended(o) => {
                    // the participant is gone: nothing to leave
                    self.room = None;
                    Err(o)
                }
            },
            x = extra => Ok(Wake::Extra(x)),
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => Ok(Wake::Nothing),
        }
    }

    /// The next SIP message for this call, if one comes before `deadline` (for waits that
    /// care about nothing else, like the answer to a CANCEL).
    pub async fn next_sip(&mut self, deadline: Instant) -> Option<SipEvent> {
        tokio::select! {
            ev = recv_opt(self.events.as_mut()) => ev,
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => None,
        }
    }

    /// The earliest of the leg's and the media's timers, `other`, and a second from now.
    pub fn next_deadline(&self, other: Option<Instant>) -> Instant {
        let mut d = now() + Duration::from_secs(1);
        for t in [
            self.leg.as_ref().and_then(Leg::poll_timeout),
            self.media
                .as_ref()
                .and_then(|m| m.pm.as_ref())
                .map(PhoneMedia::poll_timeout),
            other,
        ]
        .into_iter()
        .flatten()
        {
            d = d.min(t);
        }
        d
    }

    /// Sends what the leg wants sent.
    pub fn flush(&mut self) {
        if let Some(leg) = self.leg.as_mut() {
            while let Some(t) = leg.poll_transmit() {
                let _ = t.flow.send(&t.bytes);
            }
        }
    }

    /// The leg's timers and events; the request flow of a UAS leg once its dialog is up;
    /// the participant's sample rate after a codec change.
    pub async fn drive(&mut self) -> Result<(), Outcome> {
        if let Some(leg) = self.leg.as_mut() {
            leg.handle_timeout(now(), offers(&mut self.media));
        }
        self.flush();
        if self.leg.as_ref().is_some_and(Leg::needs_request_flow) {
            let flow = self.dialog_flow().await;
            let local = self.local_on(&flow);
            if let Some(leg) = self.leg.as_mut() {
                leg.set_request_flow(flow, local);
            }
        }
        self.follow_rate();
        while let Some(ev) = self.leg.as_mut().and_then(Leg::poll_event) {
            match ev {
                LegEvent::Bye => return Err(Outcome::CallerHangup),
                LegEvent::Cancelled => return Err(Outcome::CallerCancelled),
                LegEvent::NoAck => return Err(Outcome::NoAck),
                LegEvent::SessionExpired => return Err(Outcome::SessionExpired),
                LegEvent::DialogGone => return Err(Outcome::DialogGone),
                LegEvent::Dtmf(d) => {
                    metrics::counter!(m::DTMF_EVENTS, "direction" => "from_phone", "source" => "info")
                        .increment(1);
                    self.dtmf_in += 1;
                    self.digits.push_back(d);
                }
                LegEvent::Transfer(done) => {
                    if let Some(o) = self.transfer_done(done) {
                        return Err(o);
                    }
                }
            }
        }
        Ok(())
    }

    /// The participant follows the phone's codec rate (a late offer or a codec change
    /// settles it after the join).
    fn follow_rate(&mut self) {
        let (Some(room), Some(m)) = (&self.room, &self.media) else {
            return;
        };
        if m.pm.is_none() || self.room_rate == Some(m.rate()) {
            return;
        }
        let rate = m.rate();
        self.room_rate = Some(rate);
        let h = room.handle.clone();
        tokio::spawn(async move {
            let _ = h.set_sample_rate(rate).await;
        });
    }

    /// Sends due RTP, moves the phone's frames to the room (and shows each to
    /// `on_frame`), collects its keys; a media timeout ends the call when `mode` says so.
    pub fn drive_media(
        &mut self,
        mode: MediaMode,
        on_frame: impl FnMut(&mut PhoneMedia, &[i16]),
    ) -> Result<(), Outcome> {
        let Some(m) = self.media.as_mut() else {
            return Ok(());
        };
        let signals = bridge::drive_media(
            m,
            self.room.as_ref(),
            mode.live,
            mode.forward,
            &mut self.frame,
            on_frame,
        );
        for s in signals {
            match s {
                PhoneSignal::Digit(d) => {
                    self.dtmf_in += 1;
                    self.digits.push_back(d);
                }
                PhoneSignal::Timeout {
                    after,
                    before_first_packet,
                } if mode.timeout_ends => {
                    tracing::info!(call_id = %self.call_id(), ?after, before_first_packet, "media timeout");
                    return Err(Outcome::MediaTimeout);
                }
                PhoneSignal::Timeout { .. } => {}
            }
        }
        Ok(())
    }

    /// A transfer asked through the API (REFER in the dialog; `sip.callStatus`
    /// transferring while it runs).
    pub fn start_transfer(
        &mut self,
        to: &str,
        headers: &[(String, String)],
        reply: oneshot::Sender<Result<(), transfer::Failure>>,
    ) {
        let Some(leg) = self.leg.as_mut() else {
            let _ = reply.send(Err("the call is not up".into()));
            return;
        };
        let before = leg.transfer_running();
        leg.start_transfer(now(), to, headers, reply);
        if !before && leg.transfer_running() {
            tracing::info!(call_id = %leg.call_id(), "transferring the call");
            if let Some(r) = &self.room {
                r.set_attributes(&[CallStatus::Transferring.attribute()]);
            }
        }
        self.flush();
    }

    /// A finished transfer: success ends the call (the BYE follows), a failure lets it
    /// go on (`sip.callStatus` active again).
    fn transfer_done(&mut self, done: Done) -> Option<Outcome> {
        match done {
            Done::Transferred => Some(Outcome::Transferred),
            Done::Failed(why) => {
                tracing::info!(call_id = %self.call_id(), %why, "transfer failed; the call goes on");
                if let Some(r) = &self.room {
                    r.set_attributes(&[CallStatus::Active.attribute()]);
                }
                None
            }
        }
    }

    /// Where the requests of a UAS dialog go (RFC 3261 section 12.2.1.1): the open
    /// connection the INVITE came on, else the route set or remote target (the INVITE's
    /// source when that names a private address: NAT), a new connection over TCP/TLS.
    async fn dialog_flow(&self) -> Flow {
        let Some(leg) = self.leg.as_ref() else {
            unreachable!("only called with a leg")
        };
        let invite_flow = leg.flow().clone();
        if invite_flow.is_reliable() && invite_flow.is_open() {
            return invite_flow;
        }
        let Some(dest) = leg
            .dialog()
            .and_then(|d| d.destination(invite_flow.remote).ok())
        else {
            return invite_flow;
        };
        let port = dest.uri.port.unwrap_or(5060);
        let addr = match (dest.nat, dest.uri.ip()) {
            (Some(a), _) => Some(a),
            (None, Some(ip)) => Some(SocketAddr::new(ip, port)),
            (None, None) => {
                let host = format!("{}:{port}", dest.uri.host);
                tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(host))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .and_then(|mut it| it.next())
            }
        };
        match addr {
            Some(a) if !invite_flow.is_reliable() => invite_flow.to(a),
            Some(a) => self
                .ctx
                .endpoint
                .transports
                .connect(invite_flow.transport, a, &dest.uri.host)
                .await
                .unwrap_or_else(|e| {
                    tracing::info!(call_id = %leg.call_id(), error = %e, "cannot reach the peer's target; using the INVITE's flow");
                    invite_flow.clone()
                }),
            None => invite_flow,
        }
    }

    /// Ends the call: the final response or our BYE (with the outcome's Reason), out of
    /// the room, ports freed, metrics and one summary line; then the linger.
    pub async fn finish(&mut self, outcome: Outcome, summary: Summary<'_>) {
        let t_end = now();
        if let Some(leg) = self.leg.as_mut() {
            leg.refuse_invite(t_end, &outcome);
            leg.hang_up(t_end, &outcome.reason_header());
        }
        self.flush();
        if let Some(room) = self.room.take() {
            room.leave(&outcome).await;
        }
        if let (Some(j), Some(key)) = (&self.ctx.journal, self.journaled.take()) {
            j.down(&key);
        }
        if let Some(m) = self.media.as_mut() {
            m.report_paths();
        }
        let paths = self.media.as_ref().map(MediaLeg::paths).unwrap_or_default();
        let stats = self.media.as_ref().and_then(MediaLeg::stats);
        let codec = self
            .media
            .as_ref()
            .and_then(MediaLeg::codec)
            .map_or("none", |c| c.name());
        let dtmf_out = self.media.as_ref().map_or(0, |m| m.dtmf_out);
        let srtp = encryption::label(self.media.as_ref().and_then(MediaLeg::srtp_suite));
        let srtp_failed = stats.as_ref().map_or(0, |s| s.rx.srtp_failed);
        // sockets closed, ports back to the pool
        self.media = None;
        self.srtp_guard = None;
        self.active.release();
        let answered = self.answered_at.is_some();
        let duration = self
            .answered_at
            .map(|a| t_end.saturating_duration_since(a))
            .unwrap_or_default();
        let trunk = summary.trunk.to_string();
        metrics::counter!(m::CALLS_TOTAL, "direction" => summary.direction, "trunk" => trunk.clone(), "outcome" => outcome.label())
            .increment(1);
        if answered {
            metrics::histogram!(m::CALL_DURATION_SECONDS, "direction" => summary.direction, "trunk" => trunk)
                .record(duration.as_secs_f64());
            if let Some(s) = &stats {
                bridge::record_media_metrics(s, codec);
            }
            metrics::counter!(m::CALLS_MEDIA_ENCRYPTION, "direction" => summary.direction, "encryption" => srtp)
                .increment(1);
        }
        let (rx_packets, rx_lost, tx_packets, tx_lost, jitter_ms, tx_ticks_skipped) = stats
            .as_ref()
            .map(|s| {
                (
                    s.rx.packets,
                    s.rx.lost,
                    s.tx.packets,
                    s.tx.lost.unwrap_or(0).max(0) as u64,
                    s.rx.jitter_ms,
                    s.tx.ticks_skipped,
                )
            })
            .unwrap_or_default();
        tracing::info!(
            call_id = %self.call_id(),
            seq = self.seq,
            direction = summary.direction,
            trunk = %summary.trunk,
            tried = ?summary.tried,
            rule = %summary.rule,
            room = %Masked(summary.room),
            caller = %Phone(summary.caller),
            called = %Phone(summary.called),
            codec,
            srtp,
            srtp_failed,
            answered,
            duration_s = format!("{:.1}", duration.as_secs_f64()),
            outcome = %outcome,
            status = if answered { 200 } else { outcome.status() },
            rx_packets, rx_lost, tx_packets, tx_lost,
            // send ticks the call task was too late for: phone audio never sent
            tx_ticks_skipped,
            jitter_ms = format!("{jitter_ms:.1}"),
            dtmf_in = self.dtmf_in,
            dtmf_out,
            // 20 ms frames by path (Opus passthrough, issue 19)
            to_room_passthrough = paths.to_room_passthrough,
            to_room_transcoded = paths.to_room_transcoded,
            to_phone_passthrough = paths.to_phone_passthrough,
            to_phone_transcoded = paths.to_phone_transcoded,
            "call ended"
        );
        self.linger().await;
    }

    /// Hands the current leg's Call-ID back to the endpoint once its last transactions
    /// are done (bounded by `LINGER`), with the answers to re-send for late
    /// retransmissions. Also used for an outbound attempt that failed over.
    pub async fn linger(&mut self) {
        let deadline = tokio::time::Instant::now() + LINGER;
        let Some(leg) = self.leg.as_mut() else {
            return;
        };
        while !leg.is_settled() && tokio::time::Instant::now() < deadline {
            let next = leg
                .poll_timeout()
                .map_or(deadline, tokio::time::Instant::from_std)
                .min(deadline);
            tokio::select! {
                ev = recv_opt(self.events.as_mut()) => match ev {
                    Some(SipEvent::Request(req)) => leg.on_request(now(), &req, None),
                    Some(SipEvent::Response(resp)) => {
                        leg.on_response(now(), &resp, None);
                    }
                    None => break,
                },
                _ = tokio::time::sleep_until(next) => {}
            }
            leg.handle_timeout(now(), None);
            while let Some(t) = leg.poll_transmit() {
                let _ = t.flow.send(&t.bytes);
            }
        }
        self.ctx.endpoint.unregister(leg.call_id(), leg.linger());
    }
}

/// The session-timer settings of `trunk` (defaults if it is gone from the configuration).
pub fn timer_settings(cfg: &Config, trunk: &str) -> Settings {
    let t = cfg
        .trunk(trunk)
        .map(|t| t.session_timers)
        .unwrap_or_default();
    Settings {
        enabled: t.enabled,
        expires: u32::try_from(t.expires.as_secs()).unwrap_or(u32::MAX),
        min_se: u32::try_from(t.min_se.as_secs()).unwrap_or(u32::MAX),
    }
}
