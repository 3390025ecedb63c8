//! The participant's task: one tokio task per participant owns the signalling WebSocket,
//! both str0m peer connections with their UDP sockets, and the cores (lifecycle, roster,
//! publisher, receiver, data channels). This file is the shell: the task's loop, the
//! handle's commands, and the routing of signalling messages to the cores. Its clock
//! (tokio's, so tests may pause it) is the only time source handed to str0m and the
//! cores.
//!
//! The loop runs what the lifecycle asks (`lifecycle.rs`): while joining or live it waits
//! on the WebSocket, the handle's commands, both sockets and the earliest timer; while a
//! resume or rejoin is due it carries that out (`recovery.rs`); at the end it tears down
//! and reports why.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use livekit_protocol as proto;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::data::DataChannels;
use super::lifecycle::{Input, LeaveAction, Lifecycle, Output};
use super::peer::{Peer, Role};
use super::publish::Publisher;
use super::receive::Receiver;
use super::roster::Roster;
use super::signal::{self, JoinError, Ws};
use super::stall::StallChange;
use super::{
    Command, DisconnectReason, JoinOptions, LeaveReason, ParticipantEvent, RemoteAudioFrame,
    SampleRate, Simulate,
};
use crate::ops::metrics as m;

use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;

const UDP_BUF: usize = 2048;
/// How long closing a signalling connection may take.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The task's clock: tokio's (`crate::clock`), so a paused test clock drives str0m and
/// the cores too.
pub(super) fn now() -> Instant {
    crate::clock::now()
}

/// Why a step of the loop failed, as the lifecycle takes it.
#[derive(Debug)]
pub(super) enum Failure {
    /// The signalling connection failed (resume it).
    Signal(String),
    /// A peer connection failed for good.
    Peer(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Signal(why) | Failure::Peer(why) => f.write_str(why),
        }
    }
}

impl Failure {
    pub(super) fn input(self) -> Input {
        match self {
            Failure::Signal(why) => Input::SignalLost(why),
            Failure::Peer(why) => Input::PeerFailed(why),
        }
    }
}

pub(super) type Step = Result<(), Failure>;

/// What `bootstrap` hands the task.
pub(super) struct Parts {
    pub opts: JoinOptions,
    pub token: String,
    pub local_ip: IpAddr,
    pub ws: Ws,
    pub publisher: Peer,
    pub subscriber: Peer,
    pub publish: Publisher,
    pub local_sid: String,
    pub local_identity: String,
    pub lifecycle: Lifecycle,
    pub sid_tx: watch::Sender<String>,
    pub rate_tx: watch::Sender<SampleRate>,
    pub cmd_rx: mpsc::Receiver<Command>,
    pub events: mpsc::Sender<ParticipantEvent>,
    pub active: oneshot::Sender<Result<(), JoinError>>,
}

pub(super) struct Session {
    pub(super) opts: JoinOptions,
    pub(super) rate: SampleRate,
    /// The token of the current session (a full rejoin mints a new one).
    pub(super) token: String,
    pub(super) local_ip: IpAddr,
    /// Our sid as the handle sees it.
    pub(super) sid_tx: watch::Sender<String>,
    /// The phone-side rate as the handle sees it.
    rate_tx: watch::Sender<SampleRate>,
    /// Last subscriber offer (server) and our answer: sync_state on resume.
    pub(super) sub_offer: Option<proto::SessionDescription>,
    pub(super) sub_answer: Option<proto::SessionDescription>,
    /// Id of our last publisher offer.
    pub(super) offer_id: u32,
    pub(super) local_sid: String,
    pub(super) local_identity: String,
    pub(super) ws_tx: SplitSink<Ws, Message>,
    pub(super) ws_rx: SplitStream<Ws>,
    cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<ParticipantEvent>,
    pub(super) publisher: Peer,
    pub(super) subscriber: Peer,
    pub(super) pub_buf: Vec<u8>,
    pub(super) sub_buf: Vec<u8>,
    pub(super) lifecycle: Lifecycle,
    pub(super) roster: Roster,
    pub(super) receiver: Receiver,
    pub(super) publish: Publisher,
    pub(super) data: DataChannels,
    request_id: u32,
    rtt_ms: i64,
    pub(super) refresh_token: Option<String>,
    /// Fires once the subscriber connection is up (join returns then).
    pub(super) active: Option<oneshot::Sender<Result<(), JoinError>>>,
    leave_done: Option<oneshot::Sender<()>>,
    events_dropped: u64,
}

impl Session {
    pub(super) fn new(p: Parts) -> Session {
        let (ws_tx, ws_rx) = p.ws.split();
        Session {
            rate: p.opts.sample_rate,
            receiver: Receiver::new(p.opts.sample_rate, now()),
            opts: p.opts,
            token: p.token,
            local_ip: p.local_ip,
            sid_tx: p.sid_tx,
            rate_tx: p.rate_tx,
            sub_offer: None,
            sub_answer: None,
            offer_id: 0,
            roster: Roster::new(&p.local_sid, &p.local_identity),
            local_sid: p.local_sid,
            local_identity: p.local_identity,
            ws_tx,
            ws_rx,
            cmd_rx: p.cmd_rx,
            events: p.events,
            publisher: p.publisher,
            subscriber: p.subscriber,
            pub_buf: vec![0; UDP_BUF],
            sub_buf: vec![0; UDP_BUF],
            lifecycle: p.lifecycle,
            publish: p.publish,
            data: DataChannels::default(),
            request_id: 0,
            rtt_ms: 0,
            refresh_token: None,
            active: Some(p.active),
            leave_done: None,
            events_dropped: 0,
        }
    }

    pub(super) async fn run(mut self, join: proto::JoinResponse) {
        if let Err(e) = self.start(join).await {
            self.lifecycle.handle_input(now(), e.input());
        }
        loop {
            while let Some(out) = self.lifecycle.poll_output() {
                match out {
                    Output::Ping => {
                        let ping = Req::PingReq(proto::Ping {
                            timestamp: crate::clock::unix_millis(),
                            rtt: self.rtt_ms,
                        });
                        if let Err(e) = self.send(ping).await {
                            self.lifecycle.handle_input(now(), Input::SignalLost(e));
                        }
                    }
                    Output::Reconnecting { full, reason } => {
                        self.emit(ParticipantEvent::Reconnecting { full, reason })
                            .await;
                    }
                    Output::Resume(rr) => {
                        let result = self.resume(rr).await;
                        self.lifecycle.handle_input(now(), result);
                    }
                    Output::Rejoin { attempt } => {
                        let result = self.rejoin(attempt).await;
                        self.lifecycle.handle_input(now(), result);
                    }
                    Output::Reconnected { resumed, down_for } => {
                        let down_ms = down_for.as_millis() as u64;
                        let result = if resumed {
                            tracing::info!(sid = %self.local_sid, down_ms, "LiveKit session resumed");
                            "resumed"
                        } else {
                            tracing::info!(sid = %self.local_sid, down_ms, "joined the LiveKit room again");
                            "rejoined"
                        };
                        metrics::counter!(m::LIVEKIT_RECONNECTS, "result" => result).increment(1);
                        self.emit(ParticipantEvent::Reconnected {
                            sid: self.local_sid.clone(),
                            resumed,
                            down_for,
                        })
                        .await;
                    }
                    Output::SendLeave(reason) => self.send_leave(reason).await,
                    Output::End(reason) => {
                        if matches!(reason, DisconnectReason::Unreachable { .. }) {
                            metrics::counter!(m::LIVEKIT_RECONNECTS, "result" => "gave_up")
                                .increment(1);
                        }
                        return self.finish(reason).await;
                    }
                }
            }
            if self.lifecycle.is_connected() {
                if let Err(e) = self.step().await {
                    self.lifecycle.handle_input(now(), e.input());
                }
            } else if let Some(at) = self.lifecycle.poll_timeout() {
                self.wait_offline(at).await;
            }
        }
    }

    /// Between rejoin attempts: waits until `at`, taking the handle's commands
    /// meanwhile (audio and data are dropped; attributes are kept for the rejoin's
    /// token; a leave ends the participant now).
    async fn wait_offline(&mut self, at: Instant) {
        let deadline = tokio::time::Instant::from_std(at);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    self.lifecycle.handle_timeout(now());
                    return;
                }
                cmd = self.cmd_rx.recv() => match cmd {
                    None => {
                        self.lifecycle.handle_input(now(), Input::Leave(LeaveReason::ClientInitiated));
                        return;
                    }
                    Some(Command::Leave { reason, done }) => {
                        self.leave_done = Some(done);
                        self.lifecycle.handle_input(now(), Input::Leave(reason));
                        return;
                    }
                    Some(Command::SetAttributes(attributes)) => self.remember_attributes(&attributes),
                    Some(Command::SetSampleRate(rate)) => self.set_rate(rate),
                    Some(Command::Audio(..) | Command::Dtmf { .. } | Command::Data { .. } | Command::Simulate(_)) => {}
                },
            }
        }
    }

    /// Attributes set since the join: a rejoin's token carries them (an empty value
    /// deletes a key, as the server does).
    fn remember_attributes(&mut self, attributes: &HashMap<String, String>) {
        for (k, v) in attributes {
            if v.is_empty() {
                self.opts.attributes.remove(k);
            } else {
                self.opts.attributes.insert(k.clone(), v.clone());
            }
        }
    }

    fn set_rate(&mut self, rate: SampleRate) {
        if rate != self.rate {
            match self.publish.set_rate(rate) {
                Ok(()) => {
                    self.rate = rate;
                    self.receiver.set_rate(rate);
                    tracing::debug!(rate = rate.hz(), "phone sample rate changed");
                }
                Err(e) => tracing::warn!(error = %e, "cannot change the sample rate"),
            }
        }
        let _ = self.rate_tx.send(self.rate);
    }

    /// Handles a JoinResponse (the first, or a rejoin's): known participants and their
    /// tracks, then publishing (add_track; the offer follows track_published).
    pub(super) async fn start(&mut self, join: proto::JoinResponse) -> Step {
        for p in join.other_participants {
            self.participant_update(p).await?;
        }
        let add = Req::AddTrack(self.publish.add_track_request());
        self.send(add).await.map_err(Failure::Signal)
    }

    /// One wake-up of the loop while joining or live.
    async fn step(&mut self) -> Step {
        let mut deadline = self
            .publisher
            .timeout
            .min(self.subscriber.timeout)
            .min(self.receiver.poll_timeout());
        if let Some(at) = self.lifecycle.poll_timeout() {
            deadline = deadline.min(at);
        }
        let deadline = tokio::time::Instant::from_std(deadline);
        tokio::select! {
            msg = signal::recv(&mut self.ws_rx) => match msg {
                Ok(Some(m)) => {
                    self.lifecycle.handle_input(now(), Input::SignalMessage);
                    self.on_signal(m).await
                }
                Ok(None) => Err(Failure::Signal("signalling closed".into())),
                Err(e) => Err(Failure::Signal(e)),
            },
            cmd = self.cmd_rx.recv() => match cmd {
                Some(c) => self.on_command(c).await,
                None => {
                    self.lifecycle.handle_input(now(), Input::Leave(LeaveReason::ClientInitiated));
                    Ok(())
                }
            },
            r = self.publisher.socket.recv_from(&mut self.pub_buf) => {
                self.on_datagram(Role::Publisher, r).await
            }
            r = self.subscriber.socket.recv_from(&mut self.sub_buf) => {
                self.on_datagram(Role::Subscriber, r).await
            }
            _ = tokio::time::sleep_until(deadline) => self.on_timeout().await,
        }
    }

    /// Sends the LeaveRequest and reads until the server has handled it and closed the
    /// connection (bounded). Closing our socket with the server's last responses still
    /// unread makes the kernel reset the connection, and the server then drops the
    /// leave it had not read yet: the participant would stay in the room until its peer
    /// connections time out.
    async fn send_leave(&mut self, reason: LeaveReason) {
        let proto_reason = match reason {
            LeaveReason::ClientInitiated => proto::DisconnectReason::ClientInitiated,
            LeaveReason::UserUnavailable => proto::DisconnectReason::UserUnavailable,
            LeaveReason::UserRejected => proto::DisconnectReason::UserRejected,
        };
        let _ = self
            .send(Req::Leave(proto::LeaveRequest {
                can_reconnect: false,
                reason: proto_reason as i32,
                action: proto::leave_request::Action::Disconnect as i32,
                regions: None,
            }))
            .await;
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            while let Some(Ok(_)) = self.ws_rx.next().await {}
        })
        .await;
    }

    /// The end: peers and signalling closed, `join` or the handle told why.
    async fn finish(mut self, reason: DisconnectReason) {
        tracing::info!(sid = %self.local_sid, %reason, frames_sent = self.publish.frames_sent,
            frames_encoded = self.publish.frames_encoded, frames_passed = self.publish.frames_passed,
            frames_dropped = self.publish.frames_dropped,
            events_dropped = self.events_dropped, "left LiveKit room");
        let stalled = self.receiver.stalled();
        if stalled > 0 {
            metrics::gauge!(m::ROOM_AUDIO_STALLED_TRACKS).decrement(stalled as f64);
        }
        let mut ignored = Vec::new();
        for peer in [&mut self.publisher, &mut self.subscriber] {
            peer.rtc.disconnect();
            let _ = peer.drain(&mut ignored);
        }
        let _ = futures_util::SinkExt::close(&mut self.ws_tx).await;
        if let Some(active) = self.active.take() {
            let _ = active.send(Err(JoinError::Signal(format!(
                "disconnected before the connection was up: {reason}"
            ))));
        }
        let _ = self
            .events
            .send(ParticipantEvent::Disconnected(reason))
            .await;
        if let Some(done) = self.leave_done.take() {
            let _ = done.send(());
        }
    }

    pub(super) async fn send(&mut self, msg: Req) -> Result<(), String> {
        signal::send(&mut self.ws_tx, msg).await
    }

    pub(super) async fn emit(&mut self, ev: ParticipantEvent) {
        // control events wait for room in the queue; a consumer that stopped reading
        // only loses events (the receiver was dropped)
        let _ = self.events.send(ev).await;
    }

    /// Remote audio toward the call. Audio never waits: a full queue drops the frame
    /// (counted); what the queue took counts as delivered for the stall watch.
    pub(super) fn deliver_audio(&mut self, frames: Vec<RemoteAudioFrame>) {
        let Some(last) = frames.last() else { return };
        let track = last.track_sid.clone();
        let mut delivered = false;
        for frame in frames {
            match self.events.try_send(ParticipantEvent::AudioFrame(frame)) {
                Ok(()) => delivered = true,
                Err(_) => self.events_dropped += 1,
            }
        }
        if delivered && let Some(change) = self.receiver.delivered(now(), &track) {
            self.report_stall(change);
        }
    }

    /// The log line and metrics of room audio that stalls or comes back.
    pub(super) fn report_stall(&mut self, change: StallChange) {
        match change {
            StallChange::Stalled {
                track,
                identity,
                silent_for,
            } => {
                tracing::warn!(sid = %self.local_sid, %track, participant = %crate::logging::Masked(&identity),
                    silent_s = silent_for.as_secs(),
                    "room audio expected but none reaches the call: a remote track is published and subscribed, and nothing of it arrived");
                metrics::counter!(m::ROOM_AUDIO_STALLS).increment(1);
                metrics::gauge!(m::ROOM_AUDIO_STALLED_TRACKS).increment(1.0);
            }
            StallChange::Cleared {
                track,
                identity,
                audio,
            } => {
                tracing::info!(sid = %self.local_sid, %track, participant = %crate::logging::Masked(&identity),
                    audio, "room audio stall over");
                metrics::gauge!(m::ROOM_AUDIO_STALLED_TRACKS).decrement(1.0);
            }
        }
    }

    async fn on_command(&mut self, cmd: Command) -> Step {
        match cmd {
            Command::Audio(pcm, payload) => {
                let up = !self.lifecycle.peer_down();
                let mut events = Vec::new();
                self.publish
                    .write_frame(&mut self.publisher, &pcm, payload, up, now(), &mut events)
                    .map_err(Failure::Peer)?;
                self.process_rtc_events(Role::Publisher, events).await
            }
            Command::SetAttributes(attributes) => {
                self.remember_attributes(&attributes);
                self.request_id += 1;
                let req = Req::UpdateMetadata(proto::UpdateParticipantMetadata {
                    attributes,
                    request_id: self.request_id,
                    ..Default::default()
                });
                self.send(req).await.map_err(Failure::Signal)
            }
            Command::Dtmf { code, digit } => {
                let value = proto::data_packet::Value::SipDtmf(proto::SipDtmf {
                    code,
                    digit: digit.to_string(),
                });
                self.send_data(value, true).await
            }
            Command::Data {
                payload,
                topic,
                reliable,
            } => {
                #[allow(deprecated)]
                let value = proto::data_packet::Value::User(proto::UserPacket {
                    payload,
                    topic,
                    ..Default::default()
                });
                self.send_data(value, reliable).await
            }
            Command::Leave { reason, done } => {
                self.leave_done = Some(done);
                self.lifecycle.handle_input(now(), Input::Leave(reason));
                Ok(())
            }
            Command::Simulate(scenario) => self.simulate(scenario).await,
            Command::SetSampleRate(rate) => {
                self.set_rate(rate);
                Ok(())
            }
        }
    }

    async fn send_data(&mut self, value: proto::data_packet::Value, reliable: bool) -> Step {
        let mut events = Vec::new();
        self.data
            .send(
                &mut self.publisher,
                &self.local_identity,
                &self.local_sid,
                value,
                reliable,
                &mut events,
            )
            .map_err(Failure::Peer)?;
        self.process_rtc_events(Role::Publisher, events).await
    }

    async fn simulate(&mut self, scenario: Simulate) -> Step {
        use proto::simulate_scenario::Scenario;
        let scenario = match scenario {
            Simulate::SignalDrop => {
                tracing::info!("simulating a lost signalling connection");
                return Err(Failure::Signal("simulated signalling loss".into()));
            }
            Simulate::NodeFailure => Scenario::NodeFailure(true),
            Simulate::Migration => Scenario::Migration(true),
            Simulate::ServerLeave => Scenario::ServerLeave(true),
        };
        self.send(Req::Simulate(proto::SimulateScenario {
            scenario: Some(scenario),
        }))
        .await
        .map_err(Failure::Signal)
    }

    async fn on_signal(&mut self, msg: Resp) -> Step {
        match msg {
            Resp::Offer(offer) => self.on_subscriber_offer(offer).await,
            Resp::Answer(answer) => self.on_publisher_answer(answer).await,
            Resp::Trickle(t) => self.on_trickle(t).await,
            Resp::Update(update) => {
                for p in update.participants {
                    self.participant_update(p).await?;
                }
                Ok(())
            }
            Resp::TrackPublished(tp) => {
                if self.publish.published(&tp)
                    && let Some(sid) = self.publish.sid().map(str::to_string)
                {
                    self.emit(ParticipantEvent::LocalTrackPublished { track_sid: sid })
                        .await;
                    self.publisher_offer().await?;
                }
                Ok(())
            }
            Resp::TrackSubscribed(ts) => {
                if self.publish.subscribed(now(), &ts.track_sid) {
                    self.emit(ParticipantEvent::LocalTrackSubscribed {
                        track_sid: ts.track_sid,
                    })
                    .await;
                }
                Ok(())
            }
            Resp::TrackUnpublished(tu) => {
                tracing::debug!(sid = %tu.track_sid, "track unpublished by server");
                Ok(())
            }
            Resp::Leave(leave) => {
                let reason = signal::disconnect_reason_name(leave.reason);
                tracing::info!(%reason, action = %signal::leave_action_name(leave.action),
                    "server asked us to leave");
                use proto::leave_request::Action;
                let action = match Action::try_from(leave.action) {
                    Ok(Action::Resume) => LeaveAction::Resume,
                    Ok(Action::Reconnect) => LeaveAction::Reconnect,
                    _ => LeaveAction::Disconnect,
                };
                self.lifecycle
                    .handle_input(now(), Input::ServerLeave { reason, action });
                Ok(())
            }
            Resp::RefreshToken(token) => {
                self.refresh_token = Some(token);
                Ok(())
            }
            Resp::PongResp(pong) => {
                self.rtt_ms = (crate::clock::unix_millis() - pong.last_ping_timestamp).max(0);
                Ok(())
            }
            Resp::RequestResponse(r) => {
                if r.reason != proto::request_response::Reason::Ok as i32 {
                    tracing::warn!(request_id = r.request_id, reason = r.reason, message = %r.message,
                        "LiveKit refused a request");
                }
                Ok(())
            }
            Resp::SubscriptionResponse(r) => {
                if r.err != 0 {
                    tracing::warn!(track = %r.track_sid, err = r.err, "subscription failed");
                }
                Ok(())
            }
            Resp::RoomUpdate(_)
            | Resp::SpeakersChanged(_)
            | Resp::ConnectionQuality(_)
            | Resp::Mute(_)
            | Resp::Pong(_) => Ok(()),
            other => {
                tracing::trace!(
                    msg = signal::response_name(&other),
                    "signal message ignored"
                );
                Ok(())
            }
        }
    }

    /// A participant appeared, changed or left: events, and subscriptions to new audio.
    pub(super) async fn participant_update(&mut self, p: proto::ParticipantInfo) -> Step {
        let mut events = Vec::new();
        let subscribe = self.roster.update(&p, &mut events);
        self.emit_roster(events).await;
        self.subscribe(subscribe).await
    }

    /// Emits roster events; a track that is gone takes its receive state along.
    pub(super) async fn emit_roster(&mut self, events: Vec<ParticipantEvent>) {
        for ev in events {
            if let ParticipantEvent::TrackUnpublished { track_sid, .. } = &ev {
                self.receiver.remove_track(track_sid);
            }
            self.emit(ev).await;
        }
    }

    pub(super) async fn subscribe(&mut self, track_sids: Vec<String>) -> Step {
        if track_sids.is_empty() {
            return Ok(());
        }
        tracing::debug!(tracks = ?track_sids, "subscribing");
        self.send(Req::Subscription(proto::UpdateSubscription {
            track_sids,
            subscribe: true,
            participant_tracks: Vec::new(),
        }))
        .await
        .map_err(Failure::Signal)
    }

    /// Answers the handle's `sid` watch and what `join` needs after a rejoin.
    pub(super) fn new_local(&mut self, sid: String, identity: String) {
        self.local_sid = sid.clone();
        self.local_identity = identity;
        let _ = self.sid_tx.send(sid);
    }
}
