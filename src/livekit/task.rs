//! The participant task: one tokio task per participant owns the signalling WebSocket,
//! both str0m peer connections with their UDP sockets, the Opus encoder and decoders,
//! and the room state. Its clock (tokio's, so tests may pause it) is the only time
//! source handed to str0m.

use std::collections::{HashMap, HashSet, VecDeque};
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
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

use super::audio::{self, OpusEncoder, RemoteCodec, TrackDecoder};
use super::peer::{Peer, Role};
use super::sdp;
use super::signal::{self, First, JoinError, Ws};
use super::{
    Command, DisconnectReason, JoinOptions, LeaveReason, ParticipantEvent, ParticipantHandle,
    ParticipantKind, RemoteAudioFrame, RemoteParticipant, SampleRate, Simulate, TrackKind,
};

use proto::signal_request::Message as Req;
use proto::signal_response::Message as Resp;

const EVENT_QUEUE: usize = 1024;
const COMMAND_QUEUE: usize = 64;
const UDP_BUF: usize = 2048;
const PENDING_DATA_MAX: usize = 64;
const PEER_CLOSED_GRACE: Duration = Duration::from_secs(2);
/// More recoveries than this within [`RECOVERY_WINDOW`] end the participant.
const MAX_RECOVERIES: usize = 5;
const RECOVERY_WINDOW: Duration = Duration::from_secs(60);
/// Full rejoin attempts per recovery, with this backoff before each retry.
const REJOIN_ATTEMPTS: u32 = 3;
const REJOIN_BACKOFF: Duration = Duration::from_millis(500);
/// How long closing a dead signalling connection may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Audio writes refused in a row (10 s of frames) before the publisher counts as failed.
const MAX_WRITE_FAILURES: u32 = 500;

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
    let (sid_tx, sid_rx) = watch::channel(local.sid.clone());
    let (rate_tx, rate_rx) = watch::channel(opts.sample_rate);
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
    let cid = new_cid();
    // the identity is usually made from the caller's number (`sip_{caller}`): redacted
    // like every phone number unless debug logging is on
    tracing::info!(room = %crate::logging::Masked(&room), sid = %local.sid, identity = %crate::logging::Masked(&local.identity),
        server = %join.server_version, publisher = %publisher.local_addr(),
        subscriber = %subscriber.local_addr(), "joined LiveKit room");

    let task = Task {
        rate: opts.sample_rate,
        track_name: opts.track_name.clone(),
        token,
        local_ip,
        sid_tx,
        rate_tx,
        recoveries: VecDeque::new(),
        sub_offer: None,
        sub_answer: None,
        offer_id: 0,
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
            track_info: None,
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
            write_failures: 0,
            frames_dropped: 0,
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
        opts: opts.clone(),
    };
    let handle = ParticipantHandle {
        cmd: cmd_tx,
        sid: sid_rx,
        identity: local.identity.clone(),
        room,
        sample_rate: rate_rx,
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

/// A fresh client track id (AddTrackRequest.cid, msid track id).
fn new_cid() -> String {
    format!("roomline-{}", random_id(12))
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
    /// The server's TrackInfo of our track (sync_state on resume).
    track_info: Option<proto::TrackInfo>,
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
    /// Writes refused in a row (see `publish_frame`), and frames lost that way.
    write_failures: u32,
    frames_dropped: u64,
    /// Data packets (bytes, reliable) sent before their channel opened.
    pending_data: Vec<(Vec<u8>, bool)>,
}

struct Task {
    opts: JoinOptions,
    rate: SampleRate,
    track_name: String,
    /// The token of the current session (a full rejoin mints a new one).
    token: String,
    local_ip: IpAddr,
    /// Our sid as the handle sees it.
    sid_tx: watch::Sender<String>,
    /// The phone-side rate as the handle sees it.
    rate_tx: watch::Sender<SampleRate>,
    /// When the recent recoveries started.
    recoveries: VecDeque<Instant>,
    /// Last subscriber offer (server) and our answer: sync_state on resume.
    sub_offer: Option<proto::SessionDescription>,
    sub_answer: Option<proto::SessionDescription>,
    /// Id of our last publisher offer.
    offer_id: u32,
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
    /// A peer connection closed or failed. The server closes the peers of a removed
    /// participant at about the moment it sends the LeaveRequest, so the task waits
    /// [`PEER_CLOSED_GRACE`] for that reason before recovering.
    peer_down: Option<PeerDown>,
}

struct PeerDown {
    at: Instant,
    why: String,
    role: Role,
    /// Only ICE disconnected (it may come back by itself), not closed.
    ice_only: bool,
}

/// How to get the session back.
struct Recovery {
    /// Full rejoin (new participant) rather than resume.
    full: bool,
    /// ReconnectReason for the resume query.
    rr: proto::ReconnectReason,
    /// What happened; also the terminal reason if recovery fails.
    reason: DisconnectReason,
}

enum RecoverError {
    /// Try a full rejoin (resume) or again (rejoin): why.
    Retry(String),
    /// The server ended the participant.
    Gone(DisconnectReason),
}

/// How the main loop ended.
enum End {
    /// We left on request: tell the server.
    Leave(LeaveReason),
    /// Gone for another reason (nothing more to tell the server).
    Gone(DisconnectReason),
    /// The session broke: resume it or join again.
    Recover(Recovery),
}

impl Task {
    async fn run(mut self, join: proto::JoinResponse) {
        let mut end = match self.start(join).await {
            Ok(()) => self.main_loop().await,
            Err(e) => End::Gone(DisconnectReason::SignalLost(e)),
        };
        while let End::Recover(how) = end {
            end = self.recover(how).await;
        }
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
                // Read until the server has handled the leave and closed the connection
                // (bounded). Closing our socket with the server's last responses still
                // unread makes the kernel reset the connection, and the server then
                // drops the leave it had not read yet: the participant would stay in
                // the room until its peer connections time out.
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    while let Some(Ok(_)) = self.ws_rx.next().await {}
                })
                .await;
                DisconnectReason::ClientInitiated
            }
            End::Gone(reason) => reason,
            End::Recover(_) => unreachable!("recovered above"),
        };
        tracing::info!(sid = %self.local_sid, %reason, frames_sent = self.publish.frames_sent,
            frames_dropped = self.publish.frames_dropped,
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
            if let Some(down) = &self.peer_down {
                deadline = deadline.min(down.at + PEER_CLOSED_GRACE);
            }
            let deadline = tokio::time::Instant::from_std(deadline);
            let step = tokio::select! {
                msg = signal::recv(&mut self.ws_rx) => match msg {
                    Ok(Some(m)) => {
                        self.last_signal = now();
                        self.on_signal(m).await
                    }
                    Ok(None) => Err(signal_lost("signalling closed".into())),
                    Err(e) => Err(signal_lost(e)),
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

    /// Gets the session back after `how` broke it: resume first unless the server asked
    /// for a full rejoin (or refuses the resume), then up to [`REJOIN_ATTEMPTS`] rejoins.
    /// Returns how the recovered session ended, or why recovery failed.
    async fn recover(&mut self, how: Recovery) -> End {
        if self.active.is_some() {
            // still joining: `join` reports the failure
            return End::Gone(how.reason);
        }
        let t = now();
        while self
            .recoveries
            .front()
            .is_some_and(|at| t.duration_since(*at) > RECOVERY_WINDOW)
        {
            self.recoveries.pop_front();
        }
        if self.recoveries.len() >= MAX_RECOVERIES {
            tracing::warn!(reason = %how.reason, "too many reconnects; giving up");
            return End::Gone(how.reason);
        }
        self.recoveries.push_back(t);
        tracing::info!(reason = %how.reason, full = how.full, "recovering the LiveKit session");
        self.emit(ParticipantEvent::Reconnecting {
            full: how.full,
            reason: how.reason.to_string(),
        })
        .await;
        if !how.full {
            match self.resume(how.rr).await {
                Ok(()) => {
                    tracing::info!(sid = %self.local_sid, "LiveKit session resumed");
                    self.emit(ParticipantEvent::Reconnected {
                        sid: self.local_sid.clone(),
                        resumed: true,
                    })
                    .await;
                    return self.main_loop().await;
                }
                Err(RecoverError::Gone(reason)) => return End::Gone(reason),
                Err(RecoverError::Retry(why)) => {
                    tracing::info!(%why, "resume failed; joining again");
                    self.emit(ParticipantEvent::Reconnecting {
                        full: true,
                        reason: why,
                    })
                    .await;
                }
            }
        }
        let mut last = String::new();
        for attempt in 1..=REJOIN_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(REJOIN_BACKOFF * (1 << (attempt - 2))).await;
            }
            match self.rejoin().await {
                Ok(()) => {
                    tracing::info!(sid = %self.local_sid, attempt, "joined the LiveKit room again");
                    self.emit(ParticipantEvent::Reconnected {
                        sid: self.local_sid.clone(),
                        resumed: false,
                    })
                    .await;
                    return self.main_loop().await;
                }
                Err(RecoverError::Gone(reason)) => return End::Gone(reason),
                Err(RecoverError::Retry(why)) => {
                    tracing::info!(%why, attempt, "rejoin failed");
                    last = why;
                }
            }
        }
        End::Gone(match how.reason {
            DisconnectReason::SignalLost(why) => {
                DisconnectReason::SignalLost(format!("{why}; rejoining failed: {last}"))
            }
            other => other,
        })
    }

    /// Closes what is left of the signalling connection (no leave: the session goes on).
    async fn close_signal(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, futures_util::SinkExt::close(&mut self.ws_tx))
            .await;
    }

    fn adopt_signal(&mut self, ws: Ws) {
        let (tx, rx) = ws.split();
        self.ws_tx = tx;
        self.ws_rx = rx;
        let t = now();
        self.last_signal = t;
        self.next_ping = t + self.ping_interval;
    }

    /// Resume (reference 3.11): a new signalling connection for the same participant
    /// (`reconnect=1&sid=`), sync_state, and an ICE restart of the publisher; the server
    /// ICE-restarts the subscriber with a new offer, answered in the main loop.
    async fn resume(&mut self, rr: proto::ReconnectReason) -> Result<(), RecoverError> {
        self.close_signal().await;
        let token = self
            .refresh_token
            .clone()
            .unwrap_or_else(|| self.token.clone());
        let resume = signal::Resume {
            sid: self.local_sid.clone(),
            reason: rr as i32,
        };
        let (ws, first) = signal::connect_with(&self.opts, &token, Some(&resume))
            .await
            .map_err(|e| RecoverError::Retry(e.to_string()))?;
        match first {
            First::Reconnect(r) => {
                tracing::debug!(last_message_seq = r.last_message_seq, "reconnect response")
            }
            First::Leave(leave) => {
                return Err(match leave_end(&leave) {
                    End::Gone(reason) => RecoverError::Gone(reason),
                    _ => RecoverError::Retry(format!(
                        "the server refused the resume: {}",
                        signal::disconnect_reason_name(leave.reason)
                    )),
                });
            }
            First::Join(_) => {
                return Err(RecoverError::Retry(
                    "the server answered the resume with a join".into(),
                ));
            }
        }
        self.adopt_signal(ws);
        self.peer_down = None;
        let publish_tracks = match &self.publish.track_info {
            Some(track) => vec![proto::TrackPublishedResponse {
                cid: self.publish.cid.clone(),
                track: Some(track.clone()),
            }],
            None => Vec::new(),
        };
        let sync = proto::SyncState {
            answer: self.sub_answer.clone(),
            offer: self.sub_offer.clone(),
            subscription: Some(proto::UpdateSubscription {
                track_sids: self.subscribed.iter().cloned().collect(),
                subscribe: true,
                participant_tracks: Vec::new(),
            }),
            publish_tracks,
            ..Default::default()
        };
        self.send(Req::SyncState(sync))
            .await
            .map_err(RecoverError::Retry)?;
        if self.publish.mid.is_some() {
            match self.publisher_ice_restart().await {
                Ok(()) => {}
                Err(End::Gone(reason)) => return Err(RecoverError::Gone(reason)),
                Err(_) => {
                    return Err(RecoverError::Retry("publisher ICE restart failed".into()));
                }
            }
        }
        Ok(())
    }

    /// Full rejoin: new signalling connection, new participant (sid), new peer
    /// connections; the track is published again and known remote audio re-subscribed.
    async fn rejoin(&mut self) -> Result<(), RecoverError> {
        self.close_signal().await;
        let mut ignored = Vec::new();
        for peer in [&mut self.publisher, &mut self.subscriber] {
            peer.rtc.disconnect();
            let _ = peer.drain(&mut ignored);
        }
        let token =
            signal::mint_token(&self.opts).map_err(|e| RecoverError::Retry(e.to_string()))?;
        let (ws, join) = match signal::connect(&self.opts, &token).await {
            Ok(x) => x,
            Err(JoinError::LeftImmediately { reason }) => {
                return Err(RecoverError::Gone(DisconnectReason::Server {
                    reason,
                    action: "DISCONNECT".into(),
                }));
            }
            Err(e) => return Err(RecoverError::Retry(e.to_string())),
        };
        let t = now();
        let publisher =
            Peer::new(Role::Publisher, self.local_ip, t).map_err(RecoverError::Retry)?;
        let subscriber =
            Peer::new(Role::Subscriber, self.local_ip, t).map_err(RecoverError::Retry)?;
        self.publisher = publisher;
        self.subscriber = subscriber;
        self.token = token;
        self.ping_interval = Duration::from_secs(join.ping_interval.clamp(1, 60) as u64);
        self.ping_timeout = Duration::from_secs(join.ping_timeout.clamp(2, 120) as u64);
        self.adopt_signal(ws);
        let local = join.participant.clone().unwrap_or_default();
        tracing::info!(old = %self.local_sid, new = %local.sid, "rejoined as a new participant");
        self.local_sid = local.sid.clone();
        self.local_identity = local.identity.clone();
        let _ = self.sid_tx.send(local.sid);
        self.refresh_token = None;
        self.data_sequence = 0;
        self.offer_id = 0;
        self.peer_down = None;
        self.sub_offer = None;
        self.sub_answer = None;
        self.sub_mids.clear();
        self.decoders.clear();
        self.subscribed.clear();
        let p = &mut self.publish;
        p.cid = new_cid();
        p.sid = None;
        p.track_info = None;
        p.mid = None;
        p.pending = None;
        p.reliable = None;
        p.lossy = None;
        p.reliable_open = false;
        p.lossy_open = false;
        // participants that left while we were away
        let present: HashSet<String> = join
            .other_participants
            .iter()
            .map(|p| p.sid.clone())
            .collect();
        let gone: Vec<String> = self
            .participants
            .keys()
            .filter(|sid| !present.contains(*sid))
            .cloned()
            .collect();
        for sid in gone {
            self.participant_gone(&sid).await;
        }
        // known participants: only changes are reported; new tracks are subscribed
        self.start(join).await.map_err(RecoverError::Retry)?;
        // tracks known before need a new subscription on the new connection
        let again: Vec<String> = self
            .tracks
            .iter()
            .filter(|(sid, t)| t.kind == TrackKind::Audio && !self.subscribed.contains(*sid))
            .map(|(sid, _)| sid.clone())
            .collect();
        if !again.is_empty() {
            self.subscribed.extend(again.iter().cloned());
            tracing::debug!(tracks = ?again, "subscribing again");
            self.send(Req::Subscription(proto::UpdateSubscription {
                track_sids: again,
                subscribe: true,
                participant_tracks: Vec::new(),
            }))
            .await
            .map_err(RecoverError::Retry)?;
        }
        Ok(())
    }

    async fn simulate(&mut self, scenario: Simulate) -> Result<(), End> {
        use proto::simulate_scenario::Scenario;
        let scenario = match scenario {
            Simulate::SignalDrop => {
                tracing::info!("simulating a lost signalling connection");
                return Err(signal_lost("simulated signalling loss".into()));
            }
            Simulate::NodeFailure => Scenario::NodeFailure(true),
            Simulate::Migration => Scenario::Migration(true),
            Simulate::ServerLeave => Scenario::ServerLeave(true),
        };
        self.send(Req::Simulate(proto::SimulateScenario {
            scenario: Some(scenario),
        }))
        .await
        .map_err(signal_lost)
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
        if let Some(down) = &self.peer_down
            && t >= down.at + PEER_CLOSED_GRACE
        {
            return Err(End::Recover(Recovery {
                full: false,
                rr: match down.role {
                    Role::Publisher => proto::ReconnectReason::RrPublisherFailed,
                    Role::Subscriber => proto::ReconnectReason::RrSubscriberFailed,
                },
                reason: DisconnectReason::PeerFailed(down.why.clone()),
            }));
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
                return Err(signal_lost(format!(
                    "no message from the server for {:?}",
                    self.ping_timeout
                )));
            }
            let timestamp = unix_ms();
            self.send(Req::PingReq(proto::Ping {
                timestamp,
                rtt: self.rtt_ms,
            }))
            .await
            .map_err(signal_lost)?;
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
                    match state {
                        IceConnectionState::Disconnected => self.peer_went_down(
                            role,
                            format!("{} ICE disconnected", role.name()),
                            true,
                        ),
                        // back (e.g. after an ICE restart)
                        IceConnectionState::Connected | IceConnectionState::Completed
                            if self
                                .peer_down
                                .as_ref()
                                .is_some_and(|d| d.ice_only && d.role == role) =>
                        {
                            self.peer_down = None;
                        }
                        _ => {}
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
                    self.peer_went_down(
                        role,
                        format!("{} DTLS/SCTP closed by the server", role.name()),
                        false,
                    );
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn peer_went_down(&mut self, role: Role, why: String, ice_only: bool) {
        match &mut self.peer_down {
            None => {
                tracing::debug!(%why, "peer connection down; waiting briefly for the server's reason");
                self.peer_down = Some(PeerDown {
                    at: now(),
                    why,
                    role,
                    ice_only,
                });
            }
            Some(down) if down.ice_only && !ice_only => {
                down.why = why;
                down.role = role;
                down.ice_only = false;
            }
            Some(_) => {}
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
            Command::Simulate(scenario) => self.simulate(scenario).await,
            Command::SetSampleRate(rate) => {
                if rate != self.rate {
                    match OpusEncoder::new(rate) {
                        Ok(enc) => {
                            self.publish.encoder = enc;
                            self.rate = rate;
                            self.decoders.clear();
                            tracing::debug!(rate = rate.hz(), "phone sample rate changed");
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot change the sample rate"),
                    }
                }
                let _ = self.rate_tx.send(self.rate);
                Ok(())
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
        // a task running late (an overloaded host) has str0m's timers to catch up on
        // first: queued payloads leave only when they run
        let mut events = Vec::new();
        self.publisher.handle_timeout(t, &mut events)?;
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
        let written = writer.audio_level(-(level as i8), level < 50).write(
            pt,
            t,
            MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ),
            packet,
        );
        match written {
            Ok(()) => {
                self.publish.frames_sent += 1;
                self.publish.write_failures = 0;
            }
            // str0m refuses a write while too many payloads wait unsent (a host too busy
            // to keep up): the frame is lost like a dropped packet, the call goes on;
            // only a publisher that stays stuck for seconds counts as failed
            Err(e) => {
                self.publish.write_failures += 1;
                self.publish.frames_dropped += 1;
                if self.publish.write_failures == 1
                    || self.publish.write_failures.is_multiple_of(50)
                {
                    tracing::debug!(error = %e, failures = self.publish.write_failures, "audio frame not written");
                }
                if self.publish.write_failures >= MAX_WRITE_FAILURES {
                    return Err(format!(
                        "write audio: {e} ({} frames in a row)",
                        self.publish.write_failures
                    ));
                }
            }
        }
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
                    self.publish.track_info = Some(track.clone());
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
            Resp::Leave(leave) => Err(leave_end(&leave)),
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
        let answer_desc = proto::SessionDescription {
            r#type: "answer".into(),
            sdp: answer.clone(),
            id: offer.id,
            mid_to_track_id: HashMap::new(),
        };
        self.send(Req::Answer(answer_desc.clone()))
            .await
            .map_err(signal_lost)?;
        self.sub_answer = Some(answer_desc);
        self.sub_offer = Some(offer);
        let ufrag = sdp::ice_ufrag(&answer);
        if self.subscriber.trickled_ufrag.is_none() || self.subscriber.trickled_ufrag != ufrag {
            // first answer, or an ICE restart: our candidate for these credentials
            self.subscriber.trickled_ufrag = ufrag.clone().or(Some(String::new()));
            let mid = sdp::first_mid(&answer).unwrap_or_else(|| "0".into());
            self.trickle(Role::Subscriber, &mid, ufrag)
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
        self.send_publisher_offer(offer.to_sdp_string()).await?;
        self.process_rtc_events(Role::Publisher, events).await
    }

    /// Sends a publisher offer, and our candidate if its ICE credentials are new.
    async fn send_publisher_offer(&mut self, sdp_text: String) -> Result<(), End> {
        tracing::trace!(sdp = %sdp_text, "publisher offer");
        self.offer_id += 1;
        self.send(Req::Offer(proto::SessionDescription {
            r#type: "offer".into(),
            sdp: sdp_text.clone(),
            id: self.offer_id,
            mid_to_track_id: HashMap::new(),
        }))
        .await
        .map_err(signal_lost)?;
        let ufrag = sdp::ice_ufrag(&sdp_text);
        if self.publisher.trickled_ufrag.is_none() || self.publisher.trickled_ufrag != ufrag {
            self.publisher.trickled_ufrag = ufrag.clone().or(Some(String::new()));
            let first = sdp::first_mid(&sdp_text).unwrap_or_else(|| "0".into());
            self.trickle(Role::Publisher, &first, ufrag)
                .await
                .map_err(signal_lost)?;
        }
        Ok(())
    }

    /// ICE restart of the publisher connection (our offer with new credentials).
    async fn publisher_ice_restart(&mut self) -> Result<(), End> {
        let mut api = self.publisher.rtc.sdp_api();
        api.ice_restart(true);
        let Some((offer, pending)) = api.apply() else {
            return Err(peer_failed("ICE restart offer had no changes".into()));
        };
        let mut events = Vec::new();
        self.publisher.drain(&mut events).map_err(peer_failed)?;
        self.publish.pending = Some(pending);
        self.send_publisher_offer(offer.to_sdp_string()).await?;
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
            self.participant_gone(&p.sid).await;
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

    async fn participant_gone(&mut self, participant_sid: &str) {
        if let Some(old) = self.participants.remove(participant_sid) {
            let gone: Vec<String> = self
                .tracks
                .iter()
                .filter(|(_, t)| t.participant_sid == participant_sid)
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

/// The signalling connection broke: resume.
fn signal_lost(e: String) -> End {
    End::Recover(Recovery {
        full: false,
        rr: proto::ReconnectReason::RrSignalDisconnected,
        reason: DisconnectReason::SignalLost(e),
    })
}

/// A server LeaveRequest: its action says whether to stop, resume or join again.
fn leave_end(leave: &proto::LeaveRequest) -> End {
    let reason_name = signal::disconnect_reason_name(leave.reason);
    let action_name = signal::leave_action_name(leave.action);
    tracing::info!(reason = %reason_name, action = %action_name, "server asked us to leave");
    let reason = DisconnectReason::Server {
        reason: reason_name,
        action: action_name,
    };
    use proto::leave_request::Action;
    match Action::try_from(leave.action) {
        Ok(Action::Resume) => End::Recover(Recovery {
            full: false,
            rr: proto::ReconnectReason::RrUnknown,
            reason,
        }),
        Ok(Action::Reconnect) => End::Recover(Recovery {
            full: true,
            rr: proto::ReconnectReason::RrUnknown,
            reason,
        }),
        _ => End::Gone(reason),
    }
}

#[expect(
    clippy::disallowed_methods,
    reason = "wall clock for a Unix time; crate::clock::unix_millis is the shared reader"
)]
fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
