//! The participant task: one tokio task per participant owns the signalling WebSocket,
//! both str0m peer connections with their UDP sockets, the Opus encoder and decoders,
//! and the room state. Its clock (tokio's, so tests may pause it) is the only time
//! source handed to str0m.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::{SplitSink, SplitStream};
use livekit_protocol as proto;
use prost::Message as _;
use str0m::Event as RtcEvent;
use str0m::IceConnectionState;
use str0m::change::SdpPendingOffer;
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use super::audio::{self, OpusEncoder, RemoteCodec, TrackDecoder};
use super::peer::{Peer, Role};
use super::sdp;
use super::signal::{self, JoinError, Ws};
use super::{
    Command, DisconnectReason, JoinOptions, LeaveReason, ParticipantEvent, ParticipantHandle,
    ParticipantKind, RemoteAudioFrame, RemoteParticipant, SampleRate, TrackKind,
};

use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;

const EVENT_QUEUE: usize = 1024;
const COMMAND_QUEUE: usize = 64;
const UDP_BUF: usize = 2048;
const PENDING_DATA_MAX: usize = 64;
const PEER_CLOSED_GRACE: Duration = Duration::from_secs(2);

/// The task's clock: tokio's, so a paused test clock drives str0m too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

pub(crate) async fn join(
    opts: JoinOptions,
) -> Result<(ParticipantHandle, mpsc::Receiver<ParticipantEvent>), JoinError> {
    let token = signal::mint_token(&opts)?;
    let started = now();
    let (ws, join) = signal::connect(&opts, &token).await?;
    let local_ip = local_ip_towards(&opts.url).await?;
    let publisher = Peer::new(Role::Publisher, local_ip, started).map_err(JoinError::Rtc)?;
    let subscriber = Peer::new(Role::Subscriber, local_ip, started).map_err(JoinError::Rtc)?;
    let encoder = OpusEncoder::new(opts.sample_rate).map_err(JoinError::Rtc)?;

    let local = join.participant.clone().unwrap_or_default();
    let room = join
        .room
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (active_tx, active_rx) = oneshot::channel();
    let (ws_tx, ws_rx) = ws.split();
    let ping_interval = Duration::from_secs(join.ping_interval.clamp(1, 60) as u64);
    let ping_timeout = Duration::from_secs(join.ping_timeout.clamp(2, 120) as u64);
    let cid = format!("roomline-{}", random_id(12));
    tracing::info!(room = %room, sid = %local.sid, identity = %local.identity,
        server = %join.server_version, publisher = %publisher.local_addr(),
        subscriber = %subscriber.local_addr(), "joined LiveKit room");

    let task = Task {
        rate: opts.sample_rate,
        track_name: opts.track_name.clone(),
        local_sid: local.sid.clone(),
        local_identity: local.identity.clone(),
        ws_tx,
        ws_rx,
        cmd_rx,
        events: ev_tx,
        publisher,
        subscriber,
        pub_buf: vec![0; UDP_BUF],
        sub_buf: vec![0; UDP_BUF],
        participants: HashMap::new(),
        tracks: HashMap::new(),
        sub_mids: HashMap::new(),
        decoders: HashMap::new(),
        subscribed: HashSet::new(),
        publish: Publish {
            cid,
            sid: None,
            mid: None,
            pending: None,
            reliable: None,
            lossy: None,
            reliable_open: false,
            lossy_open: false,
            encoder,
            rtp_time: 0,
            frames_sent: 0,
            dropped_before_connect: 0,
            pending_data: Vec::new(),
        },
        data_sequence: 0,
        request_id: 0,
        ping_interval,
        ping_timeout,
        next_ping: started + ping_interval,
        last_signal: started,
        rtt_ms: 0,
        refresh_token: None,
        active: Some(active_tx),
        leave_done: None,
        events_dropped: 0,
        peer_down: None,
    };
    let handle = ParticipantHandle {
        cmd: cmd_tx,
        sid: local.sid.clone(),
        identity: local.identity.clone(),
        room,
        sample_rate: opts.sample_rate,
    };
    tokio::spawn(task.run(join));

    match tokio::time::timeout(opts.join_timeout, active_rx).await {
        Ok(Ok(Ok(()))) => Ok((handle, ev_rx)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(JoinError::Signal(
            "the participant task ended before the connection was up".into(),
        )),
        // dropping the handle makes the task leave
        Err(_) => Err(JoinError::Timeout(
            opts.join_timeout,
            "the subscriber connection (participant ACTIVE)",
        )),
    }
}

/// The local address the OS routes toward the signalling host: where media sockets bind.
async fn local_ip_towards(url: &str) -> Result<IpAddr, JoinError> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let target = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    // IPv4 first: LiveKit deployments advertise IPv4 candidates ("localhost" may
    // resolve to ::1 first)
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| JoinError::Socket(format!("resolve {target}: {e}")))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| JoinError::Socket(format!("{target} resolves to nothing")))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let probe =
        std::net::UdpSocket::bind(bind).map_err(|e| JoinError::Socket(format!("probe: {e}")))?;
    probe
        .connect(addr)
        .map_err(|e| JoinError::Socket(format!("no route to {addr}: {e}")))?;
    Ok(probe
        .local_addr()
        .map_err(|e| JoinError::Socket(e.to_string()))?
        .ip())
}

fn random_id(n: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

struct TrackState {
    participant_sid: String,
    participant_identity: String,
    kind: TrackKind,
}

struct Publish {
    /// Client track id: AddTrackRequest.cid == msid track id in our offer.
    cid: String,
    sid: Option<String>,
    mid: Option<Mid>,
    pending: Option<SdpPendingOffer>,
    reliable: Option<ChannelId>,
    lossy: Option<ChannelId>,
    reliable_open: bool,
    lossy_open: bool,
    encoder: OpusEncoder,
    /// RTP time of the next frame at 48 kHz.
    rtp_time: u64,
    frames_sent: u64,
    dropped_before_connect: u64,
    /// Data packets (bytes, reliable) sent before their channel opened.
    pending_data: Vec<(Vec<u8>, bool)>,
}

struct Task {
    rate: SampleRate,
    track_name: String,
    local_sid: String,
    local_identity: String,
    ws_tx: SplitSink<Ws, Message>,
    ws_rx: SplitStream<Ws>,
    cmd_rx: mpsc::Receiver<Command>,
    events: mpsc::Sender<ParticipantEvent>,
    publisher: Peer,
    subscriber: Peer,
    pub_buf: Vec<u8>,
    sub_buf: Vec<u8>,
    participants: HashMap<String, RemoteParticipant>,
    /// Remote tracks by sid.
    tracks: HashMap<String, TrackState>,
    /// Subscriber mid -> (track sid, participant identity), rebuilt on every offer.
    sub_mids: HashMap<String, (String, String)>,
    decoders: HashMap<String, TrackDecoder>,
    /// Track sids we asked to subscribe.
    subscribed: HashSet<String>,
    publish: Publish,
    data_sequence: u32,
    request_id: u32,
    ping_interval: Duration,
    ping_timeout: Duration,
    next_ping: Instant,
    last_signal: Instant,
    rtt_ms: i64,
    refresh_token: Option<String>,
    /// Fires once the subscriber connection is up (join returns then).
    active: Option<oneshot::Sender<Result<(), JoinError>>>,
    leave_done: Option<oneshot::Sender<()>>,
    events_dropped: u64,
    /// A peer connection closed or failed: when, and why. The server closes the peers
    /// of a removed participant at about the moment it sends the LeaveRequest, so the
    /// task waits [`PEER_CLOSED_GRACE`] for that reason before giving the peer's.
    peer_down: Option<(Instant, String)>,
}

/// How the main loop ended.
enum End {
    /// We left on request: tell the server.
    Leave(LeaveReason),
    /// Gone for another reason (nothing more to tell the server).
    Gone(DisconnectReason),
}

impl Task {
    async fn run(mut self, join: proto::JoinResponse) {
        let end = match self.start(join).await {
            Ok(()) => self.main_loop().await,
            Err(e) => End::Gone(DisconnectReason::SignalLost(e)),
        };
        let reason = match end {
            End::Leave(reason) => {
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
                DisconnectReason::ClientInitiated
            }
            End::Gone(reason) => reason,
        };
        tracing::info!(sid = %self.local_sid, %reason, frames_sent = self.publish.frames_sent,
            events_dropped = self.events_dropped, "left LiveKit room");
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

    /// Handles the JoinResponse: known participants and their tracks, then publishes.
    async fn start(&mut self, join: proto::JoinResponse) -> Result<(), String> {
        for p in join.other_participants {
            self.participant_update(p).await?;
        }
        // Publishing: add_track first; the offer follows track_published.
        self.send(Req::AddTrack(proto::AddTrackRequest {
            cid: self.publish.cid.clone(),
            name: self.track_name.clone(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            disable_red: true,
            audio_features: vec![proto::AudioTrackFeature::TfNoDtx as i32],
            ..Default::default()
        }))
        .await
    }

    async fn main_loop(&mut self) -> End {
        loop {
            let mut deadline = self
                .publisher
                .timeout
                .min(self.subscriber.timeout)
                .min(self.next_ping);
            if let Some((at, _)) = &self.peer_down {
                deadline = deadline.min(*at + PEER_CLOSED_GRACE);
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            let step = tokio::select! {
                msg = signal::recv(&mut self.ws_rx) => match msg {
                    Ok(Some(m)) => {
                        self.last_signal = now();
                        self.on_signal(m).await
                    }
                    Ok(None) => Err(End::Gone(DisconnectReason::SignalLost("signalling closed".into()))),
                    Err(e) => Err(End::Gone(DisconnectReason::SignalLost(e))),
                },
                cmd = self.cmd_rx.recv() => match cmd {
                    Some(c) => self.on_command(c).await,
                    None => Err(End::Leave(LeaveReason::ClientInitiated)),
                },
                r = self.publisher.socket.recv_from(&mut self.pub_buf) => {
                    self.on_datagram(Role::Publisher, r).await
                }
                r = self.subscriber.socket.recv_from(&mut self.sub_buf) => {
                    self.on_datagram(Role::Subscriber, r).await
                }
                _ = tokio::time::sleep_until(deadline) => self.on_timeout().await,
            };
            if let Err(end) = step {
                return end;
            }
        }
    }

    async fn send(&mut self, msg: Req) -> Result<(), String> {
        signal::send(&mut self.ws_tx, msg).await
    }

    async fn emit(&mut self, ev: ParticipantEvent) {
        // control events wait for room in the queue; a consumer that stopped reading
        // only loses events (the receiver was dropped)
        let _ = self.events.send(ev).await;
    }

    fn emit_audio(&mut self, frame: RemoteAudioFrame) {
        if self
            .events
            .try_send(ParticipantEvent::AudioFrame(frame))
            .is_err()
        {
            self.events_dropped += 1;
        }
    }

    async fn on_timeout(&mut self) -> Result<(), End> {
        let t = now();
        if let Some((at, why)) = &self.peer_down
            && t >= *at + PEER_CLOSED_GRACE
        {
            return Err(End::Gone(DisconnectReason::PeerFailed(why.clone())));
        }
        let mut events = Vec::new();
        self.publisher
            .handle_timeout(t, &mut events)
            .map_err(peer_failed)?;
        self.process_rtc_events(Role::Publisher, std::mem::take(&mut events))
            .await?;
        self.subscriber
            .handle_timeout(t, &mut events)
            .map_err(peer_failed)?;
        self.process_rtc_events(Role::Subscriber, events).await?;
        if t >= self.next_ping {
            self.next_ping = t + self.ping_interval;
            if t.duration_since(self.last_signal) > self.ping_timeout {
                return Err(End::Gone(DisconnectReason::SignalLost(format!(
                    "no message from the server for {:?}",
                    self.ping_timeout
                ))));
            }
            let timestamp = unix_ms();
            self.send(Req::PingReq(proto::Ping {
                timestamp,
                rtt: self.rtt_ms,
            }))
            .await
            .map_err(|e| End::Gone(DisconnectReason::SignalLost(e)))?;
        }
        Ok(())
    }

    async fn on_datagram(
        &mut self,
        role: Role,
        r: std::io::Result<(usize, SocketAddr)>,
    ) -> Result<(), End> {
        let (n, source) = match r {
            Ok(x) => x,
            Err(e) => {
                // e.g. ICMP port unreachable surfaced on Linux: not fatal
                tracing::debug!(peer = role.name(), error = %e, "UDP receive error");
                return Ok(());
            }
        };
        let mut events = Vec::new();
        let t = now();
        let result = match role {
            Role::Publisher => {
                self.publisher
                    .handle_datagram(t, source, &self.pub_buf[..n], &mut events)
            }
            Role::Subscriber => {
                self.subscriber
                    .handle_datagram(t, source, &self.sub_buf[..n], &mut events)
            }
        };
        result.map_err(peer_failed)?;
        self.process_rtc_events(role, events).await
    }

    fn peer(&mut self, role: Role) -> &mut Peer {
        match role {
            Role::Publisher => &mut self.publisher,
            Role::Subscriber => &mut self.subscriber,
        }
    }

    async fn process_rtc_events(&mut self, role: Role, events: Vec<RtcEvent>) -> Result<(), End> {
        for ev in events {
            match ev {
                RtcEvent::Connected => {
                    tracing::debug!(peer = role.name(), "peer connection up (ICE + DTLS)");
                    self.peer(role).connected = true;
                    match role {
                        Role::Subscriber => {
                            if let Some(active) = self.active.take() {
                                let _ = active.send(Ok(()));
                            }
                        }
                        Role::Publisher => self.emit(ParticipantEvent::PublisherConnected).await,
                    }
                }
                RtcEvent::IceConnectionStateChange(state) => {
                    tracing::debug!(peer = role.name(), ?state, "ICE state");
                    if state == IceConnectionState::Disconnected {
                        self.peer_went_down(format!("{} ICE disconnected", role.name()));
                    }
                }
                RtcEvent::MediaAdded(m) => {
                    tracing::debug!(peer = role.name(), mid = %m.mid, kind = ?m.kind, dir = ?m.direction, "media added");
                }
                RtcEvent::MediaData(data) if role == Role::Subscriber => {
                    self.on_media_data(data);
                }
                RtcEvent::ChannelOpen(id, label) => {
                    tracing::debug!(peer = role.name(), %label, "data channel open");
                    if role == Role::Publisher {
                        if Some(id) == self.publish.reliable {
                            self.publish.reliable_open = true;
                        } else if Some(id) == self.publish.lossy {
                            self.publish.lossy_open = true;
                        }
                        self.flush_pending_data().map_err(peer_failed)?;
                    }
                }
                RtcEvent::ChannelData(cd) => {
                    // downlink data arrives on the subscriber channels
                    self.on_data_packet(&cd.data).await;
                }
                RtcEvent::ChannelClose(id) => {
                    if Some(id) == self.publish.reliable {
                        self.publish.reliable_open = false;
                    } else if Some(id) == self.publish.lossy {
                        self.publish.lossy_open = false;
                    }
                }
                RtcEvent::Closed => {
                    self.peer_went_down(format!("{} DTLS/SCTP closed by the server", role.name()));
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn peer_went_down(&mut self, why: String) {
        if self.peer_down.is_none() {
            tracing::debug!(%why, "peer connection down; waiting briefly for the server's reason");
            self.peer_down = Some((now(), why));
        }
    }

    fn on_media_data(&mut self, data: str0m::media::MediaData) {
        let mid = data.mid.to_string();
        let Some((track_sid, mut identity)) = self.sub_mids.get(&mid).cloned() else {
            return;
        };
        let codec = match data.params.spec().codec {
            Codec::Opus => RemoteCodec::Opus,
            Codec::PCMU => RemoteCodec::Pcmu,
            Codec::PCMA => RemoteCodec::Pcma,
            _ => return,
        };
        if identity.is_empty()
            && let Some(t) = self.tracks.get(&track_sid)
        {
            // the offer came before the participant update that names the owner
            identity = t.participant_identity.clone();
            self.sub_mids
                .insert(mid, (track_sid.clone(), identity.clone()));
        }
        let rate = self.rate;
        let decoder = self
            .decoders
            .entry(track_sid.clone())
            .or_insert_with(|| TrackDecoder::new(rate));
        match decoder.decode(codec, &data.data) {
            Ok(samples) if !samples.is_empty() => self.emit_audio(RemoteAudioFrame {
                participant_identity: identity,
                track_sid,
                sample_rate: rate.hz(),
                samples,
            }),
            Ok(_) => {}
            Err(e) => tracing::debug!(track = %track_sid, error = %e, "cannot decode remote audio"),
        }
    }

    async fn on_data_packet(&mut self, bytes: &[u8]) {
        let Ok(packet) = proto::DataPacket::decode(bytes) else {
            tracing::debug!("undecodable data packet");
            return;
        };
        let identity = packet.participant_identity.clone();
        match packet.value {
            Some(proto::data_packet::Value::SipDtmf(d)) => {
                self.emit(ParticipantEvent::Dtmf {
                    participant_identity: identity,
                    code: d.code,
                    digit: d.digit,
                })
                .await
            }
            Some(proto::data_packet::Value::User(u)) => {
                #[allow(deprecated)]
                let identity = if identity.is_empty() {
                    u.participant_identity.clone()
                } else {
                    identity
                };
                self.emit(ParticipantEvent::Data {
                    participant_identity: identity,
                    topic: u.topic,
                    payload: u.payload,
                })
                .await
            }
            _ => {}
        }
    }

    async fn on_command(&mut self, cmd: Command) -> Result<(), End> {
        match cmd {
            Command::Audio(pcm) => self.publish_frame(&pcm).map_err(peer_failed),
            Command::SetAttributes(attributes) => {
                self.request_id += 1;
                let req = Req::UpdateMetadata(proto::UpdateParticipantMetadata {
                    attributes,
                    request_id: self.request_id,
                    ..Default::default()
                });
                self.send(req).await.map_err(signal_lost)
            }
            Command::Dtmf { code, digit } => {
                let value = proto::data_packet::Value::SipDtmf(proto::SipDtmf {
                    code,
                    digit: digit.to_string(),
                });
                self.send_data_packet(value, true).map_err(peer_failed)
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
                self.send_data_packet(value, reliable).map_err(peer_failed)
            }
            Command::Leave { reason, done } => {
                self.leave_done = Some(done);
                Err(End::Leave(reason))
            }
        }
    }

    fn send_data_packet(
        &mut self,
        value: proto::data_packet::Value,
        reliable: bool,
    ) -> Result<(), String> {
        let sequence = if reliable {
            self.data_sequence += 1;
            self.data_sequence
        } else {
            0
        };
        #[allow(deprecated)]
        let packet = proto::DataPacket {
            kind: if reliable {
                proto::data_packet::Kind::Reliable as i32
            } else {
                proto::data_packet::Kind::Lossy as i32
            },
            participant_identity: self.local_identity.clone(),
            participant_sid: self.local_sid.clone(),
            sequence,
            value: Some(value),
            ..Default::default()
        };
        let bytes = packet.encode_to_vec();
        let open = if reliable {
            self.publish.reliable_open
        } else {
            self.publish.lossy_open
        };
        if !open || !self.publish.pending_data.is_empty() {
            // queued until the channel opens (bounded: a call is not a file transfer)
            if self.publish.pending_data.len() < PENDING_DATA_MAX {
                self.publish.pending_data.push((bytes, reliable));
            } else {
                tracing::debug!("data channel not open; queue full, packet dropped");
            }
            return self.flush_pending_data();
        }
        self.write_channel(&bytes, reliable)
    }

    /// Sends queued data packets whose channel is open, in order.
    fn flush_pending_data(&mut self) -> Result<(), String> {
        while let Some((_, reliable)) = self.publish.pending_data.first() {
            let open = if *reliable {
                self.publish.reliable_open
            } else {
                self.publish.lossy_open
            };
            if !open {
                break;
            }
            let (bytes, reliable) = self.publish.pending_data.remove(0);
            self.write_channel(&bytes, reliable)?;
        }
        Ok(())
    }

    fn write_channel(&mut self, bytes: &[u8], reliable: bool) -> Result<(), String> {
        let id = if reliable {
            self.publish.reliable
        } else {
            self.publish.lossy
        };
        let Some(id) = id else { return Ok(()) };
        let mut events = Vec::new();
        if let Some(mut ch) = self.publisher.rtc.channel(id) {
            match ch.write(true, bytes) {
                Ok(true) => {}
                Ok(false) => tracing::debug!("data channel buffer full; packet dropped"),
                Err(e) => tracing::debug!(error = %e, "data channel write failed"),
            }
        }
        self.publisher.drain(&mut events)?;
        // events from a write are unusual (no media in); keep ICE/DTLS ones in mind
        if !events.is_empty() {
            tracing::trace!(n = events.len(), "events after data write ignored");
        }
        Ok(())
    }

    fn publish_frame(&mut self, pcm: &[i16]) -> Result<(), String> {
        let rtp_time = self.publish.rtp_time;
        self.publish.rtp_time += audio::TICKS_20MS;
        let up = self.publisher.connected && self.peer_down.is_none();
        let Some(mid) = self.publish.mid.filter(|_| up) else {
            self.publish.dropped_before_connect += 1;
            return Ok(());
        };
        let packet = self.publish.encoder.encode(pcm)?;
        let level = audio::audio_level_dbov(pcm);
        let t = now();
        let Some(writer) = self.publisher.rtc.writer(mid) else {
            return Ok(());
        };
        let Some(pt) = writer
            .payload_params()
            .find(|p| p.spec().codec == Codec::Opus)
            .map(|p| p.pt())
        else {
            return Err("the server did not accept Opus on the publisher".into());
        };
        writer
            .audio_level(-(level as i8), level < 50)
            .write(
                pt,
                t,
                MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ),
                packet,
            )
            .map_err(|e| format!("write audio: {e}"))?;
        self.publish.frames_sent += 1;
        let mut events = Vec::new();
        self.publisher.drain(&mut events)?;
        Ok(())
    }

    async fn on_signal(&mut self, msg: Resp) -> Result<(), End> {
        match msg {
            Resp::Offer(offer) => self.on_subscriber_offer(offer).await,
            Resp::Answer(answer) => self.on_publisher_answer(answer).await,
            Resp::Trickle(t) => {
                let Some(line) = sdp::candidate_from_init_json(&t.candidate_init) else {
                    return Ok(());
                };
                let role = if t.target == proto::SignalTarget::Subscriber as i32 {
                    Role::Subscriber
                } else {
                    Role::Publisher
                };
                let mut events = Vec::new();
                self.peer(role)
                    .add_remote_candidate(&line, &mut events)
                    .map_err(peer_failed)?;
                self.process_rtc_events(role, events).await
            }
            Resp::Update(update) => {
                for p in update.participants {
                    self.participant_update(p).await.map_err(signal_lost)?;
                }
                Ok(())
            }
            Resp::TrackPublished(tp) => {
                if tp.cid == self.publish.cid
                    && let Some(track) = tp.track
                {
                    tracing::debug!(sid = %track.sid, "local track published");
                    self.publish.sid = Some(track.sid.clone());
                    self.emit(ParticipantEvent::LocalTrackPublished {
                        track_sid: track.sid,
                    })
                    .await;
                    self.publisher_offer().await?;
                }
                Ok(())
            }
            Resp::TrackSubscribed(ts) => {
                if self.publish.sid.as_deref() == Some(ts.track_sid.as_str()) {
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
                let action = signal::leave_action_name(leave.action);
                tracing::info!(%reason, %action, "server asked us to leave");
                Err(End::Gone(DisconnectReason::Server { reason, action }))
            }
            Resp::RefreshToken(token) => {
                self.refresh_token = Some(token);
                Ok(())
            }
            Resp::PongResp(pong) => {
                self.rtt_ms = (unix_ms() - pong.last_ping_timestamp).max(0);
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

    async fn on_subscriber_offer(&mut self, offer: proto::SessionDescription) -> Result<(), End> {
        tracing::trace!(id = offer.id, sdp = %offer.sdp, mid_to_track_id = ?offer.mid_to_track_id, "subscriber offer");
        let mids = sdp::subscriber_tracks(&offer.sdp, &offer.mid_to_track_id);
        let mut events = Vec::new();
        let answer = self
            .subscriber
            .accept_offer(&offer.sdp, &mut events)
            .map_err(peer_failed)?;
        tracing::trace!(sdp = %answer, "subscriber answer");
        self.send(Req::Answer(proto::SessionDescription {
            r#type: "answer".into(),
            sdp: answer.clone(),
            id: offer.id,
            mid_to_track_id: HashMap::new(),
        }))
        .await
        .map_err(signal_lost)?;
        if !self.subscriber.trickled {
            self.subscriber.trickled = true;
            let mid = sdp::first_mid(&answer).unwrap_or_else(|| "0".into());
            self.trickle(Role::Subscriber, &mid, sdp::ice_ufrag(&answer))
                .await
                .map_err(signal_lost)?;
        }
        // newly mapped mids are newly subscribed tracks
        let old: HashSet<String> = self.sub_mids.values().map(|(t, _)| t.clone()).collect();
        let mut new = Vec::new();
        let mut map = HashMap::new();
        for (mid, track_sid) in mids {
            let identity = self
                .tracks
                .get(&track_sid)
                .map(|t| t.participant_identity.clone())
                .unwrap_or_default();
            if !old.contains(&track_sid) {
                new.push((track_sid.clone(), identity.clone()));
            }
            map.insert(mid, (track_sid, identity));
        }
        self.sub_mids = map;
        for (track_sid, identity) in new {
            self.emit(ParticipantEvent::TrackSubscribed {
                participant_identity: identity,
                track_sid,
            })
            .await;
        }
        self.process_rtc_events(Role::Subscriber, events).await
    }

    async fn on_publisher_answer(&mut self, answer: proto::SessionDescription) -> Result<(), End> {
        let Some(pending) = self.publish.pending.take() else {
            tracing::debug!("answer without a pending offer ignored");
            return Ok(());
        };
        tracing::trace!(sdp = %answer.sdp, "publisher answer");
        let mut events = Vec::new();
        self.publisher
            .accept_answer(pending, &answer.sdp, &mut events)
            .map_err(peer_failed)?;
        self.process_rtc_events(Role::Publisher, events).await
    }

    /// Our offer on the publisher connection: one send-only Opus m-line whose msid track
    /// id is the AddTrackRequest cid, plus the `_reliable` and `_lossy` data channels.
    async fn publisher_offer(&mut self) -> Result<(), End> {
        if self.publish.mid.is_some() {
            return Ok(());
        }
        let mut api = self.publisher.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some(format!("{}-stream", self.publish.cid)),
            Some(self.publish.cid.clone()),
            None,
        );
        let reliable = api.add_channel_with_config(ChannelConfig {
            label: "_reliable".into(),
            ordered: true,
            reliability: Reliability::Reliable,
            ..Default::default()
        });
        let lossy = api.add_channel_with_config(ChannelConfig {
            label: "_lossy".into(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..Default::default()
        });
        let Some((offer, pending)) = api.apply() else {
            return Err(peer_failed("publisher offer had no changes".into()));
        };
        let mut events = Vec::new();
        self.publisher.drain(&mut events).map_err(peer_failed)?;
        self.publish.mid = Some(mid);
        self.publish.reliable = Some(reliable);
        self.publish.lossy = Some(lossy);
        self.publish.pending = Some(pending);
        let sdp_text = offer.to_sdp_string();
        tracing::trace!(sdp = %sdp_text, "publisher offer");
        self.send(Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: sdp_text.clone(),
            id: 1,
            mid_to_track_id: HashMap::new(),
        }))
        .await
        .map_err(signal_lost)?;
        if !self.publisher.trickled {
            self.publisher.trickled = true;
            let first = sdp::first_mid(&sdp_text).unwrap_or_else(|| mid.to_string());
            self.trickle(Role::Publisher, &first, sdp::ice_ufrag(&sdp_text))
                .await
                .map_err(signal_lost)?;
        }
        self.process_rtc_events(Role::Publisher, events).await
    }

    async fn trickle(
        &mut self,
        role: Role,
        mid: &str,
        ufrag: Option<String>,
    ) -> Result<(), String> {
        let candidate = self.peer(role).local_candidate().to_string();
        let json = sdp::candidate_init_json(&candidate, mid, ufrag.as_deref());
        self.send(Req::Trickle(proto::TrickleRequest {
            candidate_init: json,
            target: role as i32,
            r#final: false,
        }))
        .await
    }

    /// A participant appeared, changed or left: events, and subscriptions to new audio.
    async fn participant_update(&mut self, p: proto::ParticipantInfo) -> Result<(), String> {
        if p.sid == self.local_sid || p.identity == self.local_identity {
            return Ok(());
        }
        if p.state == proto::participant_info::State::Disconnected as i32 {
            if let Some(old) = self.participants.remove(&p.sid) {
                let gone: Vec<String> = self
                    .tracks
                    .iter()
                    .filter(|(_, t)| t.participant_sid == p.sid)
                    .map(|(sid, _)| sid.clone())
                    .collect();
                for sid in gone {
                    self.drop_track(&sid).await;
                }
                self.emit(ParticipantEvent::ParticipantLeft {
                    sid: old.sid,
                    identity: old.identity,
                })
                .await;
            }
            return Ok(());
        }
        let info = RemoteParticipant {
            sid: p.sid.clone(),
            identity: p.identity.clone(),
            name: p.name.clone(),
            kind: ParticipantKind::from_proto(p.kind),
            attributes: p.attributes.clone(),
            metadata: p.metadata.clone(),
        };
        match self.participants.get(&p.sid) {
            None => {
                self.participants.insert(p.sid.clone(), info.clone());
                self.emit(ParticipantEvent::ParticipantJoined(info)).await;
            }
            Some(old) if *old != info => {
                self.participants.insert(p.sid.clone(), info.clone());
                self.emit(ParticipantEvent::ParticipantUpdated(info)).await;
            }
            Some(_) => {}
        }
        // tracks: new ones published, missing ones unpublished
        let current: HashSet<String> = p.tracks.iter().map(|t| t.sid.clone()).collect();
        let gone: Vec<String> = self
            .tracks
            .iter()
            .filter(|(sid, t)| t.participant_sid == p.sid && !current.contains(*sid))
            .map(|(sid, _)| sid.clone())
            .collect();
        for sid in gone {
            self.drop_track(&sid).await;
        }
        let mut to_subscribe = Vec::new();
        for t in p.tracks {
            if self.tracks.contains_key(&t.sid) {
                continue;
            }
            let kind = match proto::TrackType::try_from(t.r#type) {
                Ok(proto::TrackType::Audio) => TrackKind::Audio,
                Ok(proto::TrackType::Video) => TrackKind::Video,
                _ => TrackKind::Data,
            };
            self.tracks.insert(
                t.sid.clone(),
                TrackState {
                    participant_sid: p.sid.clone(),
                    participant_identity: p.identity.clone(),
                    kind,
                },
            );
            self.emit(ParticipantEvent::TrackPublished {
                participant_identity: p.identity.clone(),
                track_sid: t.sid.clone(),
                kind,
                name: t.name.clone(),
            })
            .await;
            if kind == TrackKind::Audio && self.subscribed.insert(t.sid.clone()) {
                to_subscribe.push(t.sid);
            }
        }
        if !to_subscribe.is_empty() {
            tracing::debug!(tracks = ?to_subscribe, "subscribing");
            self.send(Req::Subscription(proto::UpdateSubscription {
                track_sids: to_subscribe,
                subscribe: true,
                participant_tracks: Vec::new(),
            }))
            .await?;
        }
        Ok(())
    }

    async fn drop_track(&mut self, sid: &str) {
        if let Some(t) = self.tracks.remove(sid) {
            tracing::debug!(track = sid, participant = %t.participant_identity, "remote track gone");
            self.subscribed.remove(sid);
            self.decoders.remove(sid);
            let _ = t.kind;
            self.emit(ParticipantEvent::TrackUnpublished {
                participant_identity: t.participant_identity,
                track_sid: sid.to_string(),
            })
            .await;
        }
    }
}

fn peer_failed(e: String) -> End {
    End::Gone(DisconnectReason::PeerFailed(e))
}

fn signal_lost(e: String) -> End {
    End::Gone(DisconnectReason::SignalLost(e))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
