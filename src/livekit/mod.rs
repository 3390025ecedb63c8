//! The LiveKit participant: joins a room as kind SIP over LiveKit's signalling protocol
//! (WebSocket + protobuf, protocol 16, two peer connections) with str0m as the WebRTC
//! engine, publishes one Opus track from 20 ms PCM frames and delivers every subscribed
//! remote audio track decoded at the phone's sample rate.
//!
//! The rest of Roomline sees only this module's types: no str0m or protobuf type crosses
//! the boundary. One tokio task per participant ([`session`]) owns the WebSocket, both
//! str0m peer connections, their UDP sockets, the codecs and the clock.
//!
//! Files: `bootstrap` (join: token, handshake, local address, spawn), `session` (the
//! task's loop, commands, routing of signalling messages), `lifecycle` (join, resume,
//! rejoin, leave: sans-IO), `recovery` (resume and rejoin as the lifecycle asks), `pump`
//! (datagrams and timers into str0m, its events out), `negotiation` (SDP offers and
//! answers, trickle), `roster` (participants, tracks, subscriptions: sans-IO), `publish`
//! (our Opus track), `receive` (subscriber m-lines to tracks, one stream per SSRC),
//! `remote_stream` (one SSRC's numbering, reordering, concealment and decoder), `stall`
//! (expected room audio that does not arrive), `data` (data channels), `peer`
//! (one str0m connection and its socket), `signal` (the WebSocket protocol), `sdp`,
//! `audio` (codecs).
//!
//! ```text
//! Participant::join(opts) -> (ParticipantHandle, mpsc::Receiver<ParticipantEvent>)
//!   handle.push_audio(&[i16])     20 ms frame at 8 or 16 kHz -> Opus -> publisher PC
//!   handle.set_attributes(map)    UpdateParticipantMetadata
//!   handle.send_dtmf('5')         DataPacket{sip_dtmf} on `_reliable`
//!   handle.leave(reason)          LeaveRequest, then the task ends
//!   events: AudioFrame per remote track, participant joined/left, track
//!           published/unpublished, data, DTMF, Reconnecting/Reconnected,
//!           Disconnected(reason)
//! ```
//!
//! Losing the signalling connection (or a peer connection) does not end the call: the
//! task resumes the session (`reconnect=1`, ICE restarts, `sync_state`) and, if the
//! server refuses that or asks for it (leave with action RECONNECT, or a server
//! shutting down), joins again as a new participant (same identity and attributes, new
//! sid; the track is published and remote tracks subscribed again), with backoff, for
//! up to `reconnect_window` (a LiveKit restart). The handle keeps working throughout
//! (audio pushed meanwhile is dropped); only a leave with action DISCONNECT, or the
//! window passing, ends the participant.

mod audio;
mod bootstrap;
mod data;
mod lifecycle;
mod negotiation;
mod peer;
mod publish;
mod pump;
mod receive;
mod recovery;
mod remote_stream;
mod roster;
mod sdp;
mod session;
mod signal;
mod stall;

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

pub use crate::media::session::RoomPayload;
pub use audio::{opus_complexity, opus_encoder};
pub use signal::JoinError;

/// The default of [`JoinOptions::reconnect_window`]: `livekit.reconnect_window`'s,
/// longer than a LiveKit restart takes.
pub const DEFAULT_RECONNECT_WINDOW: Duration = crate::config::defaults::RECONNECT_WINDOW;

/// Phone-side sample rates the participant encodes from and decodes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleRate {
    Hz8000,
    Hz16000,
}

impl SampleRate {
    pub fn hz(self) -> u32 {
        match self {
            SampleRate::Hz8000 => 8000,
            SampleRate::Hz16000 => 16000,
        }
    }

    /// Samples in one 20 ms mono frame.
    pub fn samples_per_20ms(self) -> usize {
        self.hz() as usize / 50
    }
}

/// What a join needs. The token is minted here from the API key and secret.
#[derive(Clone)]
pub struct JoinOptions {
    /// `ws://`, `wss://`, `http://` or `https://` base URL of the LiveKit server.
    pub url: String,
    pub api_key: String,
    pub api_secret: String,
    pub room: String,
    pub identity: String,
    pub name: String,
    /// Participant kind claim; `sip` for calls.
    pub kind: ParticipantKind,
    pub attributes: HashMap<String, String>,
    pub metadata: String,
    /// Rate of the PCM frames pushed in and of the decoded remote audio handed out.
    pub sample_rate: SampleRate,
    /// Name of the published audio track.
    pub track_name: String,
    /// How long `join` may take until the participant is ACTIVE (subscriber connected).
    pub join_timeout: Duration,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// How long after the session broke (LiveKit restarting, the network to it down)
    /// the participant keeps trying to resume or rejoin before it ends with
    /// [`DisconnectReason::Unreachable`].
    pub reconnect_window: Duration,
    /// Agents to dispatch to the room (name, metadata), through the token's room
    /// configuration.
    pub agents: Vec<(String, Option<String>)>,
}

impl fmt::Debug for JoinOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinOptions")
            .field("url", &self.url)
            .field("api_key", &self.api_key)
            .field("api_secret", &"<redacted>")
            .field("room", &self.room)
            .field("identity", &self.identity)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("attributes", &self.attributes)
            .field("sample_rate", &self.sample_rate)
            .finish_non_exhaustive()
    }
}

impl JoinOptions {
    /// Options for a SIP participant with the usual defaults (16 kHz, 20 s join timeout,
    /// 24 h token like LiveKit's own SIP service).
    pub fn sip(
        url: impl Into<String>,
        api_key: impl Into<String>,
        api_secret: impl Into<String>,
        room: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        let identity = identity.into();
        JoinOptions {
            url: url.into(),
            api_key: api_key.into(),
            api_secret: api_secret.into(),
            room: room.into(),
            name: identity.clone(),
            identity,
            kind: ParticipantKind::Sip,
            attributes: HashMap::new(),
            metadata: String::new(),
            sample_rate: SampleRate::Hz16000,
            track_name: "phone".into(),
            join_timeout: Duration::from_secs(20),
            token_ttl: Duration::from_secs(24 * 3600),
            reconnect_window: DEFAULT_RECONNECT_WINDOW,
            agents: Vec::new(),
        }
    }
}

/// LiveKit participant kinds (the ones Roomline meets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParticipantKind {
    Standard,
    Ingress,
    Egress,
    Sip,
    Agent,
    Other(i32),
}

impl ParticipantKind {
    pub(crate) fn from_proto(k: i32) -> Self {
        match k {
            0 => Self::Standard,
            1 => Self::Ingress,
            2 => Self::Egress,
            3 => Self::Sip,
            4 => Self::Agent,
            n => Self::Other(n),
        }
    }

    /// The token claim value.
    pub fn claim(self) -> &'static str {
        match self {
            Self::Standard | Self::Other(_) => "standard",
            Self::Ingress => "ingress",
            Self::Egress => "egress",
            Self::Sip => "sip",
            Self::Agent => "agent",
        }
    }
}

/// A remote participant as the room reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteParticipant {
    pub sid: String,
    pub identity: String,
    pub name: String,
    pub kind: ParticipantKind,
    pub attributes: HashMap<String, String>,
    pub metadata: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackKind {
    Audio,
    Video,
    Data,
}

/// Decoded audio of one remote track at the phone's sample rate (mono).
#[derive(Debug, Clone)]
pub struct RemoteAudioFrame {
    pub participant_identity: String,
    pub track_sid: String,
    pub sample_rate: u32,
    pub samples: Vec<i16>,
    /// The Opus packet `samples` were decoded from (none for a concealed frame), which
    /// an Opus phone leg may pass through.
    pub opus: Option<Vec<u8>>,
}

/// Why the participant is no longer in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DisconnectReason {
    /// We left (`ParticipantHandle::leave`).
    ClientInitiated,
    /// Server LeaveRequest; the reason name as LiveKit spells it (`PARTICIPANT_REMOVED`,
    /// `ROOM_DELETED`, `DUPLICATE_IDENTITY`, ...) and its action: `DISCONNECT`, or
    /// `RESUME` / `RECONNECT` when recovering as asked failed.
    Server { reason: String, action: String },
    /// Signalling WebSocket closed or silent past the ping timeout, and resuming or
    /// joining again failed.
    SignalLost(String),
    /// A peer connection failed (ICE/DTLS).
    PeerFailed(String),
    /// The session broke (the server went away, or the network to it) and no resume or
    /// rejoin worked within the reconnect window: LiveKit was out of reach `down_for`.
    Unreachable { down_for: Duration, why: String },
    /// The handle and every clone of it were dropped.
    HandleDropped,
}

impl DisconnectReason {
    /// The server said it is shutting down (`SERVER_SHUTDOWN`): a restart, not an end.
    pub(crate) fn is_server_shutdown(&self) -> bool {
        matches!(self, Self::Server { reason, .. } if reason == lifecycle::SERVER_SHUTDOWN)
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ClientInitiated => write!(f, "left"),
            Self::Server { reason, action } => write!(f, "server: {reason} ({action})"),
            Self::SignalLost(why) => write!(f, "signalling lost: {why}"),
            Self::PeerFailed(why) => write!(f, "peer connection failed: {why}"),
            Self::Unreachable { down_for, why } => {
                write!(f, "LiveKit unreachable for {}s: {why}", down_for.as_secs())
            }
            Self::HandleDropped => write!(f, "handle dropped"),
        }
    }
}

/// What the participant reports, in order. The receiver must be polled: audio frames are
/// dropped (and counted) when the queue is full, other events wait for room.
#[derive(Debug, Clone)]
pub enum ParticipantEvent {
    ParticipantJoined(RemoteParticipant),
    /// Attributes, name or metadata of a known participant changed.
    ParticipantUpdated(RemoteParticipant),
    ParticipantLeft {
        sid: String,
        identity: String,
    },
    TrackPublished {
        participant_identity: String,
        track_sid: String,
        kind: TrackKind,
        name: String,
    },
    TrackUnpublished {
        participant_identity: String,
        track_sid: String,
    },
    /// A remote audio track's media is now being received (its subscriber m-line exists).
    TrackSubscribed {
        participant_identity: String,
        track_sid: String,
    },
    /// Our own track was accepted by the server.
    LocalTrackPublished {
        track_sid: String,
    },
    /// Someone in the room subscribed to our track (first subscriber).
    LocalTrackSubscribed {
        track_sid: String,
    },
    /// The publisher peer connection is up: pushed audio now reaches the room.
    PublisherConnected,
    AudioFrame(RemoteAudioFrame),
    Data {
        participant_identity: String,
        topic: Option<String>,
        payload: Vec<u8>,
    },
    Dtmf {
        participant_identity: String,
        code: u32,
        digit: String,
    },
    /// The session is being recovered: a resume (`full: false`; same sid and track) or a
    /// new join (`full: true`). Audio pushed meanwhile is dropped.
    Reconnecting {
        full: bool,
        reason: String,
    },
    /// Recovered. After a full rejoin `sid` is new, our track is published again
    /// ([`LocalTrackPublished`](Self::LocalTrackPublished),
    /// [`PublisherConnected`](Self::PublisherConnected) follow) and remote tracks are
    /// subscribed again.
    Reconnected {
        sid: String,
        resumed: bool,
        /// How long the session was broken.
        down_for: Duration,
    },
    /// Terminal: nothing follows.
    Disconnected(DisconnectReason),
}

/// Failure scenarios for tests (`ParticipantHandle::simulate`).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Simulate {
    /// SignalRequest.simulate node_failure: the server closes the participant without a
    /// leave (and expects a resume, which it then refuses: full rejoin).
    NodeFailure,
    /// SignalRequest.simulate migration.
    Migration,
    /// SignalRequest.simulate server_leave: leave SERVER_SHUTDOWN.
    ServerLeave,
    /// Client side: drop the signalling WebSocket without a leave, as a network glitch
    /// would; the peer connections stay up and the session is resumed.
    SignalDrop,
}

/// Errors of handle operations (the participant task is gone, or bad input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandleError {
    #[error("the participant has left the room")]
    Gone,
    #[error("audio queue full, frame dropped")]
    QueueFull,
    #[error("a 20 ms frame at {rate} Hz has {want} samples, got {got}")]
    BadFrame { rate: u32, want: usize, got: usize },
    #[error("invalid DTMF digit {0:?}")]
    BadDigit(char),
}

pub(crate) enum Command {
    Audio(Vec<i16>, RoomPayload),
    SetAttributes(HashMap<String, String>),
    Dtmf {
        code: u32,
        digit: char,
    },
    Data {
        payload: Vec<u8>,
        topic: Option<String>,
        reliable: bool,
    },
    Leave {
        reason: LeaveReason,
        done: oneshot::Sender<()>,
    },
    Simulate(Simulate),
    SetSampleRate(SampleRate),
}

/// Why we leave (maps to LiveKit's DisconnectReason in the LeaveRequest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// Normal hang-up.
    ClientInitiated,
    /// The callee was unavailable (busy, no answer).
    UserUnavailable,
    /// The callee rejected the call.
    UserRejected,
}

/// Handle to a joined participant; cheap to clone. Dropping every clone makes the
/// participant leave.
#[derive(Clone)]
pub struct ParticipantHandle {
    cmd: mpsc::Sender<Command>,
    /// Changes on a full rejoin.
    sid: watch::Receiver<String>,
    identity: String,
    room: String,
    /// Changes with `set_sample_rate`.
    sample_rate: watch::Receiver<SampleRate>,
}

impl fmt::Debug for ParticipantHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParticipantHandle")
            .field("sid", &*self.sid.borrow())
            .field("identity", &self.identity)
            .field("room", &self.room)
            .finish()
    }
}

impl ParticipantHandle {
    /// Our participant sid (`PA_...`); a full rejoin changes it.
    pub fn sid(&self) -> String {
        self.sid.borrow().clone()
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn room(&self) -> &str {
        &self.room
    }

    pub fn sample_rate(&self) -> SampleRate {
        *self.sample_rate.borrow()
    }

    /// Changes the rate of the PCM pushed in and of the remote audio handed out (an
    /// outbound call learns its codec only from the answer). Opus keeps its 48 kHz RTP
    /// clock, so the published track goes on without a break.
    pub async fn set_sample_rate(&self, rate: SampleRate) -> Result<(), HandleError> {
        self.send(Command::SetSampleRate(rate)).await?;
        // the handle's own checks follow once the task has switched
        let mut rx = self.sample_rate.clone();
        let _ = tokio::time::timeout(Duration::from_secs(2), rx.wait_for(|r| *r == rate)).await;
        Ok(())
    }

    /// Queues one 20 ms mono frame for publishing; never blocks (a full queue drops the
    /// frame and says so). Frames pushed before the publisher connection is up are
    /// dropped by the task.
    pub fn push_audio(&self, frame: &[i16]) -> Result<(), HandleError> {
        self.push_audio_coded(frame, RoomPayload::Pcm)
    }

    /// `push_audio` with what to send for it: the PCM encoded, the phone's Opus packet
    /// as it is (the PCM is then only measured for the audio level), or nothing.
    pub fn push_audio_coded(&self, frame: &[i16], payload: RoomPayload) -> Result<(), HandleError> {
        let rate = *self.sample_rate.borrow();
        let want = rate.samples_per_20ms();
        if frame.len() != want {
            return Err(HandleError::BadFrame {
                rate: rate.hz(),
                want,
                got: frame.len(),
            });
        }
        self.cmd
            .try_send(Command::Audio(frame.to_vec(), payload))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => HandleError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => HandleError::Gone,
            })
    }

    /// Sets (merges) our attributes; an empty value deletes a key.
    pub async fn set_attributes(
        &self,
        attributes: HashMap<String, String>,
    ) -> Result<(), HandleError> {
        self.send(Command::SetAttributes(attributes)).await
    }

    /// Sends one DTMF digit (`0-9`, `*`, `#`, `A-D`) to the room as a SipDTMF packet.
    pub async fn send_dtmf(&self, digit: char) -> Result<(), HandleError> {
        let code = dtmf_code(digit).ok_or(HandleError::BadDigit(digit))?;
        self.send(Command::Dtmf { code, digit }).await
    }

    /// Sends a user data packet to the room.
    pub async fn send_data(
        &self,
        payload: Vec<u8>,
        topic: Option<String>,
        reliable: bool,
    ) -> Result<(), HandleError> {
        self.send(Command::Data {
            payload,
            topic,
            reliable,
        })
        .await
    }

    /// Leaves the room and waits (up to 5 s) until the task has told the server and
    /// closed its connections. A `Disconnected(ClientInitiated)` event follows.
    pub async fn leave(&self, reason: LeaveReason) -> Result<(), HandleError> {
        let (done, wait) = oneshot::channel();
        self.send(Command::Leave { reason, done }).await?;
        let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        Ok(())
    }

    /// Triggers a failure scenario (tests only).
    #[doc(hidden)]
    pub async fn simulate(&self, scenario: Simulate) -> Result<(), HandleError> {
        self.send(Command::Simulate(scenario)).await
    }

    async fn send(&self, cmd: Command) -> Result<(), HandleError> {
        self.cmd.send(cmd).await.map_err(|_| HandleError::Gone)
    }
}

/// The HTTP(S) base of the LiveKit server for a `ws(s)://` or `http(s)://` URL.
pub fn http_base(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else {
        url.to_string()
    }
}

/// RFC 4733 event code of a DTMF digit (`0-9`, `*`, `#`, `A-D`, either case).
pub fn dtmf_code(digit: char) -> Option<u32> {
    crate::media::dtmf::DtmfDigit::from_char(digit).map(|d| u32::from(d.event_code()))
}

/// Entry point.
pub struct Participant;

impl Participant {
    /// Joins the room: signalling handshake, JoinResponse, subscriber connection up
    /// (the server then marks us ACTIVE). Publishing starts in the background; see
    /// [`ParticipantEvent::PublisherConnected`].
    pub async fn join(
        opts: JoinOptions,
    ) -> Result<(ParticipantHandle, mpsc::Receiver<ParticipantEvent>), JoinError> {
        bootstrap::join(opts).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn livekit_base_urls() {
        assert_eq!(http_base("ws://127.0.0.1:7880"), "http://127.0.0.1:7880");
        assert_eq!(http_base("wss://lk.example.com/"), "https://lk.example.com");
        assert_eq!(
            http_base("https://lk.example.com"),
            "https://lk.example.com"
        );
    }

    #[test]
    fn dtmf_codes_follow_rfc4733() {
        assert_eq!(dtmf_code('0'), Some(0));
        assert_eq!(dtmf_code('9'), Some(9));
        assert_eq!(dtmf_code('*'), Some(10));
        assert_eq!(dtmf_code('#'), Some(11));
        assert_eq!(dtmf_code('A'), Some(12));
        assert_eq!(dtmf_code('d'), Some(15));
        assert_eq!(dtmf_code('x'), None);
    }
}
