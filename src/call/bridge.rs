//! The media half of a call, shared by both directions: the phone's RTP leg
//! (`PhoneMedia` over its sockets and ports) and the LiveKit participant, and the
//! plumbing between them: phone frames to the room, room tracks to the mixer, DTMF both
//! ways, attribute updates. The call task owns one and drives it after every wake-up.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;

use super::outcome::Outcome;
use crate::livekit::{DisconnectReason, ParticipantEvent, ParticipantHandle, SampleRate};
use crate::media::dtmf::DtmfDigit;
use crate::media::rtp::Ssrc;
use crate::media::session::{MediaEvent, MediaStats, PhoneMedia, PhoneMediaConfig};
use crate::media::socket::{self, PortGuard, RtpSockets};
use crate::media::timeout::MediaTimeoutConfig;
use crate::ops::metrics as m;
use crate::sip::sdp::{Codec, Local, Negotiated};

/// The phone's RTP: sockets, ports, and (once media flows) the pipeline.
pub struct MediaLeg {
    pub sockets: RtpSockets,
    _ports: PortGuard,
    pub pm: Option<PhoneMedia>,
    pub negotiated: Option<Negotiated>,
    pub local: Local,
    pub latch: bool,
    /// Our current SDP (offer or answer).
    pub sdp: String,
    frames_seen: u64,
    next_sample: u64,
}

impl MediaLeg {
    pub fn new(bound: socket::BoundPorts, local: Local, sdp: String) -> MediaLeg {
        MediaLeg {
            sockets: bound.sockets,
            _ports: bound.guard,
            pm: None,
            negotiated: None,
            local,
            latch: true,
            sdp,
            frames_seen: 0,
            next_sample: 50,
        }
    }

    pub fn codec(&self) -> Option<Codec> {
        self.negotiated.as_ref().map(|n| n.codec)
    }

    pub fn rate(&self) -> SampleRate {
        match self.codec() {
            Some(Codec::G722) => SampleRate::Hz16000,
            _ => SampleRate::Hz8000,
        }
    }

    /// Starts (or restarts, after a codec change) the pipeline for `negotiated`.
    pub fn start(&mut self, negotiated: Negotiated, identity: &str, timeouts: MediaTimeoutConfig) {
        let restart = self.negotiated.as_ref().is_none_or(|n| {
            n.codec != negotiated.codec || n.payload_type != negotiated.payload_type
        });
        if let Some(pm) = self.pm.as_mut()
            && !restart
        {
            pm.set_remote(now(), negotiated.remote_rtp, negotiated.direction);
            self.negotiated = Some(negotiated);
            return;
        }
        let ssrc = Ssrc(rand::random());
        let mut config = PhoneMediaConfig::from_negotiated(&negotiated, ssrc, identity);
        config.latch = self.latch;
        config.timeouts = timeouts;
        self.pm = Some(PhoneMedia::new(config, now(), crate::clock::wall()));
        self.negotiated = Some(negotiated);
    }

    pub fn stats(&self) -> Option<MediaStats> {
        self.pm.as_ref().map(|pm| pm.stats())
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
            h.set_attributes(HashMap::from([("sip.callStatus".into(), "hangup".into())])),
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
        other => Outcome::LiveKitLeft(other.to_string()),
    }
}

/// Handles one room event: audio into the mixer, DTMF toward the phone, the end.
pub fn on_room_event(
    media: Option<&mut MediaLeg>,
    ev: Option<ParticipantEvent>,
    call_id: &str,
) -> RoomSignal {
    let Some(ev) = ev else {
        return RoomSignal::Ended(Outcome::LiveKitLeft("participant task ended".into()));
    };
    let pm = media.and_then(|m| m.pm.as_mut());
    match ev {
        ParticipantEvent::AudioFrame(f) => {
            if let Some(pm) = pm {
                pm.push_room_audio(&f.track_sid, &f.participant_identity, &f.samples);
            }
        }
        ParticipantEvent::TrackSubscribed { .. } => return RoomSignal::TrackSubscribed,
        ParticipantEvent::TrackUnpublished { track_sid, .. } => {
            if let Some(pm) = pm {
                pm.remove_track(&track_sid);
            }
        }
        ParticipantEvent::Dtmf { digit, .. } => {
            if let Some(d) = digit.chars().next().and_then(DtmfDigit::from_char)
                && let Some(pm) = pm
            {
                match pm.send_dtmf(now(), d) {
                    Ok(()) => metrics::counter!(m::DTMF_EVENTS, "direction" => "to_phone", "source" => "rtp")
                        .increment(1),
                    Err(e) => tracing::debug!(%call_id, error = %e, "DTMF not sent"),
                }
            }
        }
        ParticipantEvent::Disconnected(reason) => {
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
    mut on_frame: impl FnMut(&mut PhoneMedia),
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
    pm.handle_timeout(t);
    while let Some(tr) = pm.poll_transmit(t) {
        if live {
            let _ = media.sockets.try_send(&tr);
        }
        pm.recycle(tr.bytes);
    }
    while pm.poll_phone_frame_into(t, frame).is_some() {
        frames += 1;
        on_frame(pm);
        if forward && let Some(room) = room {
            let _ = room.handle.push_audio(frame);
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
