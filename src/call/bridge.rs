//! The media half of a call, shared by both directions: the phone's RTP leg
//! (`PhoneMedia` over its sockets and ports) and the LiveKit participant, and the
//! plumbing between them: phone frames to the room, room tracks to the mixer, DTMF both
//! ways, attribute updates. The call task owns one and drives it after every wake-up.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::attributes::{self, CallStatus};
use super::encryption;
use super::leg::Offers;
use super::outcome::Outcome;
use super::prompt::{self, Prompt};
use crate::clock::now;
use crate::config::MediaEncryption;
use crate::livekit::{DisconnectReason, ParticipantEvent, ParticipantHandle, SampleRate};
use crate::media::dtmf::DtmfDigit;
use crate::media::rtp::Ssrc;
use crate::media::sdes::{SdesOffer, SrtpKeys};
use crate::media::session::{MediaEvent, MediaStats, PhoneMedia, PhoneMediaConfig};
use crate::media::socket::{self, PortGuard, RtpSockets};
use crate::media::srtp::SrtpSuite;
use crate::media::timeout::MediaTimeoutConfig;
use crate::ops::metrics as m;
use crate::sip::sdp::{self, Codec, Local, Negotiated, Rejection};

/// The one latch rule (symmetric RTP, RFC 4961): RTP goes where the phone's packets come
/// from unless its SDP names a public address that is also where its signalling comes
/// from (then only that address is listened to). A private, loopback or foreign address
/// in SDP means NAT or a media server elsewhere.
pub fn latches(remote_rtp: Option<SocketAddr>, signalling: IpAddr) -> bool {
    remote_rtp.is_none_or(|a| !is_public(a.ip()) || a.ip() != signalling)
}

fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_private() || a.is_loopback() || a.is_link_local()),
        IpAddr::V6(a) => !(a.is_loopback() || a.is_unique_local() || a.is_unicast_link_local()),
    }
}

/// What the pipeline of a leg is built with.
#[derive(Debug, Clone)]
pub struct MediaSetup {
    /// The participant identity (the caller's own audio is never mixed back).
    pub identity: String,
    pub timeouts: MediaTimeoutConfig,
    /// Where the peer's signalling comes from (the latch rule).
    pub signalling: IpAddr,
    /// Play `prompt::HOLD` to the phone while LiveKit is out of reach
    /// (`livekit.hold_tone`); silence otherwise.
    pub hold_tone: bool,
    /// The call's SRTP policy (the trunk's, or stricter from the API).
    pub encryption: MediaEncryption,
}

/// The mixer track of the hold tone, and its owner (never a room participant's).
const HOLD_TRACK: &str = "hold";
const HOLD_OWNER: &str = "\u{0}roomline-hold";

/// The phone's RTP: sockets, ports, SDP offer/answer, and (once media flows) the
/// pipeline.
pub struct MediaLeg {
    pub sockets: RtpSockets,
    _ports: PortGuard,
    pub pm: Option<PhoneMedia>,
    pub negotiated: Option<Negotiated>,
    pub local: Local,
    /// Our current SDP (offer or answer).
    pub sdp: String,
    /// The trunk's codecs, preferred first: all we offer and accept.
    codecs: Vec<Codec>,
    setup: MediaSetup,
    /// The SRTP keys SDES agreed (`None`: plain RTP).
    srtp: Option<SrtpKeys>,
    /// Our open offer's keys, until its answer.
    sdes_offer: Option<SdesOffer>,
    /// DTMF digits sent to the phone (RFC 4733), for the summary line.
    pub dtmf_out: u64,
    frames_seen: u64,
    next_sample: u64,
    /// Frames by path already added to the metric.
    paths: FramePaths,
    /// Playing while the participant reconnects.
    hold: Option<Prompt>,
}

impl MediaLeg {
    pub fn new(bound: socket::BoundPorts, local: Local, setup: MediaSetup) -> MediaLeg {
        MediaLeg {
            sockets: bound.sockets,
            _ports: bound.guard,
            pm: None,
            negotiated: None,
            codecs: local.codecs.clone(),
            local,
            sdp: String::new(),
            setup,
            srtp: None,
            sdes_offer: None,
            dtmf_out: 0,
            frames_seen: 0,
            next_sample: 50,
            paths: FramePaths::default(),
            hold: None,
        }
    }

    /// LiveKit is out of reach (`true`) or back: the hold tone starts or stops.
    fn hold(&mut self, on: bool) {
        if on {
            if self.setup.hold_tone && self.hold.is_none() {
                self.hold = Some(Prompt::new(prompt::HOLD, self.rate().hz()));
            }
        } else if self.hold.take().is_some()
            && let Some(pm) = self.pm.as_mut()
        {
            pm.remove_track(HOLD_TRACK);
        }
    }

    /// The call moved to another trunk: its signalling source changes.
    pub fn set_setup(&mut self, setup: MediaSetup) {
        self.setup = setup;
    }

    pub fn codec(&self) -> Option<Codec> {
        self.negotiated.as_ref().map(|n| n.codec)
    }

    /// The room side's rate: 16 kHz for the wideband codecs (G.722, Opus), else 8 kHz.
    pub fn rate(&self) -> SampleRate {
        match self.codec() {
            Some(Codec::G722 | Codec::Opus) => SampleRate::Hz16000,
            _ => SampleRate::Hz8000,
        }
    }

    /// Another trunk's codecs (an outbound call failing over): what the next offer
    /// lists.
    pub fn set_codecs(&mut self, codecs: &[Codec]) {
        self.codecs = codecs.to_vec();
    }

    /// The SRTP suite the call's media uses (`None`: plain RTP).
    pub fn srtp_suite(&self) -> Option<SrtpSuite> {
        self.srtp.as_ref().map(SrtpKeys::suite)
    }

    /// Our first offer: every codec the trunk takes, preferred first; RTP/SAVP with a key per
    /// suite unless the policy is `disable`.
    pub fn first_offer(&mut self) -> String {
        self.local.codecs = self.codecs.clone();
        if self.srtp.take().is_some() {
            // an earlier attempt's keys: its early-media pipeline goes with them
            self.pm = None;
            self.negotiated = None;
        }
        self.sdes_offer = encryption::offer(self.setup.encryption);
        let crypto = self
            .sdes_offer
            .as_ref()
            .map(SdesOffer::attributes)
            .unwrap_or_default();
        self.sdp = sdp::offer_with(&self.local, &crypto);
        self.sdp.clone()
    }

    /// Answers an offer: the first one with any codec of ours, later ones keeping the
    /// codec in use (the room's sample rate follows it). The pipeline, if running,
    /// follows the new address and direction.
    pub fn answer_offer(&mut self, now: Instant, offer: &[u8]) -> Result<String, Rejection> {
        let text = String::from_utf8_lossy(offer);
        let offer = sdp::parse(&text).map_err(|e| Rejection {
            warning_code: 399,
            text: e.to_string(),
        })?;
        let mut local = self.local.clone();
        match &self.negotiated {
            Some(n) => {
                local.codecs = vec![n.codec];
                local.session_version += 1;
            }
            None => local.codecs = self.codecs.clone(),
        }
        let (policy, current) = (self.setup.encryption, self.srtp.as_ref());
        let mut keys = None;
        let (negotiated, answer) = sdp::answer_with(&offer, &local, &mut |m| {
            let taken = encryption::answer_section(policy, current, m)?;
            Ok(taken.map(|(k, value)| {
                keys = Some(k);
                value
            }))
        })?;
        tracing::debug!(direction = ?negotiated.direction, remote = ?negotiated.remote_rtp,
            srtp = negotiated.srtp, "SDP offer answered");
        self.local = local;
        self.sdp = answer.clone();
        self.set_keys(keys);
        self.apply(now, negotiated, false);
        Ok(answer)
    }

    /// The keys negotiation agreed on: a running pipeline rekeys what changed.
    fn set_keys(&mut self, keys: Option<SrtpKeys>) {
        if let (Some(new), Some(old)) = (keys.as_ref(), self.srtp.as_ref())
            && new != old
        {
            tracing::debug!(suite = %new.suite(), local = new.local != old.local,
                remote = new.remote != old.remote, "SRTP rekeyed");
        }
        if let (Some(k), Some(pm)) = (keys.as_ref(), self.pm.as_mut()) {
            pm.set_srtp(k);
        }
        if keys.is_some() {
            self.srtp = keys;
        }
    }

    /// The peer's answer to our offer: the pipeline starts (or follows it).
    pub fn take_answer(&mut self, now: Instant, answer: &[u8]) -> Result<(), Rejection> {
        let text = String::from_utf8_lossy(answer);
        let parsed = sdp::parse(&text).map_err(|e| Rejection {
            warning_code: 399,
            text: e.to_string(),
        })?;
        let n = sdp::read_answer(&parsed, &self.local)?;
        let m = sdp::answered_section(&parsed).expect("read_answer found it");
        // no open offer but keys in use: the 2xx repeating a 183's answer, or an answer to
        // our re-offer of the session as it is
        let offered =
            (self.sdes_offer.clone()).or_else(|| self.srtp.as_ref().map(SdesOffer::current));
        let keys = encryption::read_answer(self.setup.encryption, offered.as_ref(), m)?;
        if keys.is_none() && self.srtp.is_some() {
            return Err(Rejection {
                warning_code: 305,
                text: "the answer drops SRTP on a call whose media is SRTP".into(),
            });
        }
        if let Some(k) = keys.as_ref()
            && self.sdp.matches("a=crypto:").count() > 1
        {
            // what we re-offer from now on is the key in use only
            self.local.session_version += 1;
            self.sdp = sdp::offer_with(&self.local, &[crate::media::sdes::format(k.tag, &k.local)]);
        }
        self.sdes_offer = None;
        self.set_keys(keys);
        self.apply(now, n, true);
        Ok(())
    }

    /// Starts the pipeline for what was negotiated (at the answer, or a 183).
    pub fn start_pipeline(&mut self, now: Instant) {
        if self.pm.is_none()
            && let Some(n) = self.negotiated.clone()
        {
            self.apply(now, n, true);
        }
    }

    /// Takes a negotiation: a running pipeline follows it (restarting on a new codec);
    /// with `start`, a pipeline starts if there is none.
    fn apply(&mut self, now: Instant, negotiated: Negotiated, start: bool) {
        let restart = self.negotiated.as_ref().is_none_or(|n| {
            n.codec != negotiated.codec
                || n.payload_type != negotiated.payload_type
                || n.recv_payload_type != negotiated.recv_payload_type
                || n.opus != negotiated.opus
        });
        if let Some(pm) = self.pm.as_mut()
            && !restart
        {
            pm.set_remote(now, negotiated.remote_rtp, negotiated.direction);
            self.negotiated = Some(negotiated);
            return;
        }
        if self.pm.is_none() && !start {
            self.negotiated = Some(negotiated);
            return;
        }
        if self.setup.encryption == MediaEncryption::Require && self.srtp.is_none() {
            // negotiation refuses this; never send plain RTP on a call that requires SRTP
            tracing::error!("SRTP required but no keys: media not started");
            return;
        }
        let ssrc = Ssrc(rand::random());
        let mut config = PhoneMediaConfig::from_negotiated(&negotiated, ssrc, &self.setup.identity);
        config.latch = latches(negotiated.remote_rtp, self.setup.signalling);
        config.timeouts = self.setup.timeouts;
        config.srtp = self.srtp.clone();
        self.pm = Some(PhoneMedia::new(config, now, crate::clock::wall()));
        self.negotiated = Some(negotiated);
    }

    /// Queues a key toward the phone as RFC 4733 events (counted by `source`).
    pub fn send_dtmf(&mut self, now: Instant, digit: char, source: &'static str) {
        let (Some(d), Some(pm)) = (DtmfDigit::from_char(digit), self.pm.as_mut()) else {
            return;
        };
        match pm.send_dtmf(now, d) {
            Ok(()) => {
                self.dtmf_out += 1;
                metrics::counter!(m::DTMF_EVENTS, "direction" => "to_phone", "source" => source)
                    .increment(1);
            }
            Err(e) => tracing::debug!(error = %e, digit = %digit, "DTMF not sent"),
        }
    }

    pub fn stats(&self) -> Option<MediaStats> {
        self.pm.as_ref().map(|pm| pm.stats())
    }

    /// Adds the frames each path carried since the last report to
    /// `roomline_media_frames_total` (about once a second, and at the end).
    pub fn report_paths(&mut self) {
        let Some(s) = self.stats() else { return };
        let now = FramePaths::of(&s);
        let before = std::mem::replace(&mut self.paths, now);
        for ((direction, path), (n, b)) in FramePaths::LABELS
            .iter()
            .zip(now.counts().into_iter().zip(before.counts()))
        {
            if n > b {
                metrics::counter!(m::MEDIA_FRAMES, "direction" => *direction, "path" => *path)
                    .increment(n - b);
            }
        }
    }

    /// Frames by path so far (a new `PhoneMedia` after a codec change starts at 0).
    pub fn paths(&self) -> FramePaths {
        self.paths
    }
}

impl Offers for MediaLeg {
    fn answer(&mut self, now: Instant, offer: &[u8]) -> Result<String, Rejection> {
        self.answer_offer(now, offer)
    }

    fn offer(&mut self) -> String {
        if self.negotiated.is_none() {
            return self.first_offer();
        }
        // the session as it is: an SRTP call re-offers the key in use
        self.sdes_offer = self.srtp.as_ref().map(SdesOffer::current);
        self.sdp.clone()
    }

    fn answered(&mut self, now: Instant, answer: &[u8]) {
        if let Err(r) = self.take_answer(now, answer) {
            tracing::info!(warning = %r.text, "unusable SDP answer");
        }
    }
}

/// The LiveKit participant of a call.
pub struct Room {
    pub handle: ParticipantHandle,
    pub events: mpsc::Receiver<ParticipantEvent>,
    counter: Arc<AtomicUsize>,
}

impl Room {
    pub fn new(
        handle: ParticipantHandle,
        events: mpsc::Receiver<ParticipantEvent>,
        counter: Arc<AtomicUsize>,
    ) -> Room {
        counter.fetch_add(1, Ordering::Relaxed);
        Room {
            handle,
            events,
            counter,
        }
    }

    /// Sets attributes without waiting (the call task never blocks on LiveKit).
    pub fn set_attributes(&self, attrs: &[(&str, &str)]) {
        self.set_attribute_map(
            attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }

    /// Like `set_attributes`, for a map built by `call::attributes`.
    pub fn set_attribute_map(&self, map: HashMap<String, String>) {
        if map.is_empty() {
            return;
        }
        let h = self.handle.clone();
        tokio::spawn(async move {
            let _ = h.set_attributes(map).await;
        });
    }

    pub fn send_dtmf(&self, digit: char) {
        let h = self.handle.clone();
        tokio::spawn(async move {
            let _ = h.send_dtmf(digit).await;
        });
    }

    /// Leaves the room (status `hangup` first), bounded.
    pub async fn leave(self, outcome: &Outcome) {
        let h = self.handle.clone();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            h.set_attributes(HashMap::from([(
                attributes::CALL_STATUS.into(),
                CallStatus::Hangup.as_str().into(),
            )])),
        )
        .await;
        let _ = h.leave(outcome.leave_reason()).await;
    }
}

impl Drop for Room {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Audio frames of a phone leg by direction and path (passthrough, issue 19).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FramePaths {
    pub to_room_passthrough: u64,
    pub to_room_transcoded: u64,
    pub to_phone_passthrough: u64,
    pub to_phone_transcoded: u64,
}

impl FramePaths {
    const LABELS: [(&'static str, &'static str); 4] = [
        ("to_room", "passthrough"),
        ("to_room", "transcoded"),
        ("to_phone", "passthrough"),
        ("to_phone", "transcoded"),
    ];

    fn of(s: &MediaStats) -> FramePaths {
        FramePaths {
            to_room_passthrough: s.rx.passthrough_frames,
            to_room_transcoded: s.rx.transcoded_frames,
            to_phone_passthrough: s.tx.passthrough_frames,
            to_phone_transcoded: s.tx.transcoded_frames,
        }
    }

    fn counts(self) -> [u64; 4] {
        [
            self.to_room_passthrough,
            self.to_room_transcoded,
            self.to_phone_passthrough,
            self.to_phone_transcoded,
        ]
    }
}

/// What a room event means for the call.
pub enum RoomSignal {
    Nothing,
    /// The first remote audio track is here.
    TrackSubscribed,
    /// The participant is gone: the call ends.
    Ended(Outcome),
}

/// What the phone's media asks of the call.
pub enum PhoneSignal {
    Digit(char),
    Timeout {
        after: std::time::Duration,
        before_first_packet: bool,
    },
}

/// Maps a LiveKit disconnect to the call's outcome.
pub fn disconnect_outcome(reason: DisconnectReason) -> Outcome {
    match reason {
        DisconnectReason::Server { reason, .. }
            if reason == "ROOM_DELETED" || reason == "ROOM_CLOSED" =>
        {
            Outcome::RoomClosed
        }
        DisconnectReason::Server { reason, .. } if reason == "PARTICIPANT_REMOVED" => {
            Outcome::ParticipantRemoved
        }
        DisconnectReason::Unreachable { .. } => Outcome::LiveKitUnreachable(reason.to_string()),
        other => Outcome::LiveKitLeft(other.to_string()),
    }
}

/// Handles one room event: audio into the mixer, DTMF toward the phone, the end.
pub fn on_room_event(media: Option<&mut MediaLeg>, ev: Option<ParticipantEvent>) -> RoomSignal {
    let Some(ev) = ev else {
        return RoomSignal::Ended(Outcome::LiveKitLeft("participant task ended".into()));
    };
    match ev {
        ParticipantEvent::AudioFrame(f) => {
            if let Some(pm) = media.and_then(|m| m.pm.as_mut()) {
                pm.push_room_audio_coded(&f.track_sid, &f.participant_identity, &f.samples, f.opus);
            }
        }
        ParticipantEvent::TrackSubscribed { .. } => return RoomSignal::TrackSubscribed,
        ParticipantEvent::TrackUnpublished { track_sid, .. } => {
            if let Some(pm) = media.and_then(|m| m.pm.as_mut()) {
                pm.remove_track(&track_sid);
            }
        }
        ParticipantEvent::Dtmf { digit, .. } => {
            if let (Some(d), Some(m)) = (digit.chars().next(), media) {
                m.send_dtmf(now(), d, "rtp");
            }
        }
        ParticipantEvent::Reconnecting { .. } => {
            if let Some(m) = media {
                m.hold(true);
            }
        }
        ParticipantEvent::Reconnected { .. } => {
            if let Some(m) = media {
                m.hold(false);
            }
        }
        ParticipantEvent::Disconnected(reason) => {
            if let Some(m) = media {
                m.hold(false);
            }
            return RoomSignal::Ended(disconnect_outcome(reason));
        }
        _ => {}
    }
    RoomSignal::Nothing
}

/// Sends due RTP, moves phone frames to the room, collects phone events.
pub fn drive_media(
    media: &mut MediaLeg,
    room: Option<&Room>,
    live: bool,
    forward: bool,
    frame: &mut Vec<i16>,
    mut on_frame: impl FnMut(&mut PhoneMedia, &[i16]),
) -> Vec<PhoneSignal> {
    let mut out = Vec::new();
    let Some(pm) = media.pm.as_mut() else {
        return out;
    };
    let t = now();
    #[expect(
        clippy::disallowed_methods,
        reason = "the frame cost metric measures real work, not the (pausable) call clock"
    )]
    let started = std::time::Instant::now();
    let mut frames = 0u32;
    let mut report = false;
    pm.handle_timeout(t);
    while let Some(tr) = pm.poll_transmit(t) {
        if live {
            let _ = media.sockets.try_send(&tr);
        }
        pm.recycle(tr.bytes);
    }
    while pm.poll_phone_frame_into(t, frame).is_some() {
        frames += 1;
        let payload = pm.take_room_payload();
        on_frame(pm, frame);
        // the hold tone plays at the phone's frame pace
        if let Some(hold) = media.hold.as_mut() {
            pm.push_room_audio(HOLD_TRACK, HOLD_OWNER, &hold.next_frame_looped());
        }
        if forward && let Some(room) = room {
            let _ = room.handle.push_audio_coded(frame, payload);
        }
    }
    // about once a second per call: the work of one 20 ms frame, and the buffer depth
    media.frames_seen += u64::from(frames);
    if frames > 0 && media.frames_seen >= media.next_sample {
        media.next_sample = media.frames_seen + 50;
        let codec = media.negotiated.as_ref().map_or("none", |n| n.codec.name());
        metrics::histogram!(m::MEDIA_FRAME_SECONDS, "codec" => codec)
            .record(started.elapsed().as_secs_f64() / f64::from(frames));
        metrics::histogram!(m::JITTER_BUFFER_DELAY_SECONDS).record(pm.jitter_delay().as_secs_f64());
        report = true;
    }
    while let Some(ev) = pm.poll_event() {
        match ev {
            MediaEvent::Dtmf(d) => {
                metrics::counter!(m::DTMF_EVENTS, "direction" => "from_phone", "source" => "rtp")
                    .increment(1);
                out.push(PhoneSignal::Digit(d.as_char()));
            }
            MediaEvent::Timeout {
                after,
                before_first_packet,
            } => out.push(PhoneSignal::Timeout {
                after,
                before_first_packet,
            }),
            MediaEvent::Latched(addr) => tracing::debug!(%addr, "RTP latched"),
            MediaEvent::SsrcChanged { .. } => {}
        }
    }
    if report {
        media.report_paths();
    }
    out
}

/// Feeds a received datagram to the pipeline (dropped before media starts).
pub fn on_packet(media: &mut MediaLeg, rtcp: bool, from: SocketAddr, data: &[u8]) {
    let Some(pm) = media.pm.as_mut() else {
        return;
    };
    let t = now();
    if rtcp {
        pm.handle_rtcp(t, from, data);
    } else {
        pm.handle_rtp(t, from, data);
    }
}

/// Receives on the leg's sockets, or never when there is none.
pub async fn media_recv(m: Option<&MediaLeg>, buf: &mut [u8]) -> std::io::Result<socket::Datagram> {
    match m {
        Some(m) => m.sockets.recv(buf).await,
        None => std::future::pending().await,
    }
}

/// Records the RTP figures of an ended call.
pub fn record_media_metrics(stats: &MediaStats, codec: &'static str) {
    metrics::counter!(m::RTP_PACKETS, "direction" => "rx", "codec" => codec)
        .increment(stats.rx.packets);
    metrics::counter!(m::RTP_PACKETS, "direction" => "tx", "codec" => codec)
        .increment(stats.tx.packets);
    metrics::counter!(m::RTP_LOST, "direction" => "rx", "codec" => codec).increment(stats.rx.lost);
    metrics::counter!(m::RTP_LOST, "direction" => "tx", "codec" => codec)
        .increment(stats.tx.lost.unwrap_or(0).max(0) as u64);
    metrics::histogram!(m::RTP_JITTER_SECONDS, "codec" => codec)
        .record(stats.rx.jitter_ms / 1000.0);
}
