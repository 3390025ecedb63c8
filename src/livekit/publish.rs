//! Our audio track: the AddTrackRequest, the publisher connection's offer (one send-only
//! Opus m-line whose msid track id is the request's cid, plus the data channels), its
//! ICE restart, and each 20 ms phone frame encoded to Opus and written with its RFC 6464
//! audio level (the server computes active speakers only from that extension).
//!
//! The stream starts when someone listens: frames are dropped until [`SUBSCRIBER_SETTLE`]
//! after the server says the first subscriber's downtrack is up (`TrackSubscribed`), or
//! [`LISTENER_WAIT`] after the connection came up, whichever is first; the encoder
//! starts then. An Opus decoder that joins a stream in the middle of a steady sound
//! plays its first 0.1-0.8 s too loud (up to twice the level; measured with libopus for
//! joins from about 0.4 s into a stream, whatever the encoder's loss and prediction
//! settings), and every subscriber joined ours in the middle because we sent from the
//! moment the publisher connected. The server reports the downtrack up when it has
//! taken the subscriber's side of the negotiation, before that client has applied the
//! server's answer: packets sent at once were lost to it often enough (its decoder then
//! began in the middle again, about one call in six in the test); 150 ms later they are
//! not. Frames dropped meanwhile reached nobody: the server forwards to no one before a
//! subscriber (a hidden one, such as an egress recorder, does not trigger the event:
//! hence the fallback). A subscriber that joins later still joins the stream in the
//! middle. Test: `tests/room_audio_level.rs`.
//!
//! An Opus phone's packets are written as they came (`RoomPayload::Opus`, issue 19
//! passthrough) on the same 48 kHz clock; their level is measured on the PCM the phone
//! leg decoded anyway. A slot the phone lost (`RoomPayload::Skip`) is left empty: the
//! clock moves on and the receivers conceal it (FEC from the next packet).

use std::time::{Duration, Instant};

use livekit_protocol as proto;
use str0m::Event as RtcEvent;
use str0m::change::SdpPendingOffer;
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};

use super::audio::{self, OpusEncoder};
use super::data::DataChannels;
use super::peer::Peer;
use super::{RoomPayload, SampleRate};

/// Audio writes refused in a row (10 s of frames) before the publisher counts as failed.
const MAX_WRITE_FAILURES: u32 = 500;
/// How long after the connection came up frames wait for a (non-hidden) subscriber.
pub(super) const LISTENER_WAIT: Duration = Duration::from_secs(3);
/// From the first subscriber's `TrackSubscribed` to the stream's first frame.
pub(super) const SUBSCRIBER_SETTLE: Duration = Duration::from_millis(150);

/// A fresh client track id (AddTrackRequest.cid, msid track id).
fn new_cid() -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let id: String = (0..12)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect();
    format!("roomline-{id}")
}

pub(super) struct Publisher {
    /// Client track id: AddTrackRequest.cid == msid track id in our offer.
    cid: String,
    track_name: String,
    sid: Option<String>,
    /// The server's TrackInfo of our track (sync_state on resume).
    track_info: Option<proto::TrackInfo>,
    mid: Option<Mid>,
    pending: Option<SdpPendingOffer>,
    rate: SampleRate,
    encoder: OpusEncoder,
    /// Frames are sent (see the module documentation); `up_since`: when frames first
    /// found the connection up while nobody listened.
    listening: bool,
    up_since: Option<Instant>,
    /// When the stream starts for the first subscriber.
    starts_at: Option<Instant>,
    dropped_before_listener: u64,
    /// RTP time of the next frame at 48 kHz.
    rtp_time: u64,
    pub(super) frames_sent: u64,
    /// Of the frames, those encoded here and those the phone's Opus packet was.
    pub(super) frames_encoded: u64,
    pub(super) frames_passed: u64,
    dropped_before_connect: u64,
    /// Writes refused in a row (see `write_frame`), and frames lost that way.
    write_failures: u32,
    pub(super) frames_dropped: u64,
}

impl Publisher {
    pub(super) fn new(rate: SampleRate, track_name: &str) -> Result<Publisher, String> {
        Ok(Publisher {
            cid: new_cid(),
            track_name: track_name.to_string(),
            sid: None,
            track_info: None,
            mid: None,
            pending: None,
            rate,
            encoder: OpusEncoder::new(rate)?,
            listening: false,
            up_since: None,
            starts_at: None,
            dropped_before_listener: 0,
            rtp_time: 0,
            frames_sent: 0,
            frames_encoded: 0,
            frames_passed: 0,
            dropped_before_connect: 0,
            write_failures: 0,
            frames_dropped: 0,
        })
    }

    /// Our track's sid once the server published it.
    pub(super) fn sid(&self) -> Option<&str> {
        self.sid.as_deref()
    }

    /// The offer exists (a resume restarts its ICE).
    pub(super) fn offered(&self) -> bool {
        self.mid.is_some()
    }

    /// A new session (full rejoin): a new cid, published again from scratch, and a new
    /// stream for its first subscriber. The RTP clock goes on.
    pub(super) fn reset(&mut self) -> Result<(), String> {
        self.cid = new_cid();
        self.sid = None;
        self.track_info = None;
        self.mid = None;
        self.pending = None;
        self.listening = false;
        self.up_since = None;
        self.starts_at = None;
        self.encoder = OpusEncoder::new(self.rate)?;
        Ok(())
    }

    /// The phone's rate changed: a new encoder (the 48 kHz RTP clock goes on).
    pub(super) fn set_rate(&mut self, rate: SampleRate) -> Result<(), String> {
        self.encoder = OpusEncoder::new(rate)?;
        self.rate = rate;
        Ok(())
    }

    /// The server's TrackSubscribed for `track_sid` at `now`: `true` if it is ours. A
    /// stream waiting for a listener starts [`SUBSCRIBER_SETTLE`] later.
    pub(super) fn subscribed(&mut self, now: Instant, track_sid: &str) -> bool {
        if self.sid.as_deref() != Some(track_sid) {
            return false;
        }
        if !self.listening && self.starts_at.is_none() {
            self.starts_at = Some(now + SUBSCRIBER_SETTLE);
        }
        true
    }

    /// Publishing starts with this; the offer follows the server's track_published.
    pub(super) fn add_track_request(&self) -> proto::AddTrackRequest {
        proto::AddTrackRequest {
            cid: self.cid.clone(),
            name: self.track_name.clone(),
            r#type: proto::TrackType::Audio as i32,
            source: proto::TrackSource::Microphone as i32,
            disable_red: true,
            audio_features: vec![proto::AudioTrackFeature::TfNoDtx as i32],
            ..Default::default()
        }
    }

    /// The server's track_published: `true` if it is ours (the offer is due).
    pub(super) fn published(&mut self, response: &proto::TrackPublishedResponse) -> bool {
        match &response.track {
            Some(track) if response.cid == self.cid => {
                tracing::debug!(sid = %track.sid, "local track published");
                self.sid = Some(track.sid.clone());
                self.track_info = Some(track.clone());
                true
            }
            _ => false,
        }
    }

    /// Our track as sync_state describes it on resume.
    pub(super) fn sync_tracks(&self) -> Vec<proto::TrackPublishedResponse> {
        match &self.track_info {
            Some(track) => vec![proto::TrackPublishedResponse {
                cid: self.cid.clone(),
                track: Some(track.clone()),
            }],
            None => Vec::new(),
        }
    }

    /// The first offer on the publisher connection, or `None` if it was made already.
    pub(super) fn offer(
        &mut self,
        peer: &mut Peer,
        data: &mut DataChannels,
        events: &mut Vec<RtcEvent>,
    ) -> Result<Option<String>, String> {
        if self.mid.is_some() {
            return Ok(None);
        }
        let mut api = peer.rtc.sdp_api();
        let mid = api.add_media(
            MediaKind::Audio,
            Direction::SendOnly,
            Some(format!("{}-stream", self.cid)),
            Some(self.cid.clone()),
            None,
        );
        data.add_to_offer(&mut api);
        let Some((offer, pending)) = api.apply() else {
            return Err("publisher offer had no changes".into());
        };
        peer.drain(events)?;
        self.mid = Some(mid);
        self.pending = Some(pending);
        Ok(Some(offer.to_sdp_string()))
    }

    /// An offer with new ICE credentials (resume).
    pub(super) fn ice_restart_offer(
        &mut self,
        peer: &mut Peer,
        events: &mut Vec<RtcEvent>,
    ) -> Result<String, String> {
        let mut api = peer.rtc.sdp_api();
        api.ice_restart(true);
        let Some((offer, pending)) = api.apply() else {
            return Err("ICE restart offer had no changes".into());
        };
        peer.drain(events)?;
        self.pending = Some(pending);
        Ok(offer.to_sdp_string())
    }

    /// The server's answer to our offer (ignored without one pending).
    pub(super) fn answer(
        &mut self,
        peer: &mut Peer,
        sdp: &str,
        events: &mut Vec<RtcEvent>,
    ) -> Result<(), String> {
        let Some(pending) = self.pending.take() else {
            tracing::debug!("answer without a pending offer ignored");
            return Ok(());
        };
        tracing::trace!(sdp, "publisher answer");
        peer.accept_answer(pending, sdp, events)
    }

    /// Whether a frame that found the connection up at `now` is sent (see the module
    /// documentation); counts the ones that are not.
    fn listener_gate(&mut self, now: Instant) -> bool {
        if self.listening {
            return true;
        }
        let since = *self.up_since.get_or_insert(now);
        let why = if self.starts_at.is_some_and(|at| now >= at) {
            "first subscriber: the stream starts"
        } else if now.duration_since(since) >= LISTENER_WAIT {
            "no subscriber yet: the stream starts anyway"
        } else {
            self.dropped_before_listener += 1;
            return false;
        };
        tracing::debug!(dropped = self.dropped_before_listener, "{why}");
        self.listening = true;
        true
    }

    /// One 20 ms frame toward the room; dropped unless the connection is `up`. A write
    /// str0m refuses (too many payloads waiting: a host too busy to keep up) loses the
    /// frame like a dropped packet; only 10 s of refusals in a row fail the publisher.
    /// str0m's events on the way (the timers that ran, the send) go to `events`.
    pub(super) fn write_frame(
        &mut self,
        peer: &mut Peer,
        pcm: &[i16],
        payload: RoomPayload,
        up: bool,
        now: Instant,
        events: &mut Vec<RtcEvent>,
    ) -> Result<(), String> {
        let rtp_time = self.rtp_time;
        self.rtp_time += audio::TICKS_20MS;
        let Some(mid) = self.mid.filter(|_| up && peer.connected) else {
            self.dropped_before_connect += 1;
            return Ok(());
        };
        if !self.listener_gate(now) {
            return Ok(());
        }
        let packet = match payload {
            RoomPayload::Pcm => {
                self.frames_encoded += 1;
                self.encoder.encode(pcm)?
            }
            RoomPayload::Opus(packet) => {
                self.frames_passed += 1;
                packet
            }
            // a lost slot of the phone's packets: the room's receivers conceal it
            RoomPayload::Skip => return Ok(()),
        };
        let level = audio::audio_level_dbov(pcm);
        // a task running late (an overloaded host) has str0m's timers to catch up on
        // first: queued payloads leave only when they run
        peer.handle_timeout(now, events)?;
        let Some(writer) = peer.rtc.writer(mid) else {
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
            now,
            MediaTime::new(rtp_time, Frequency::FORTY_EIGHT_KHZ),
            packet,
        );
        match written {
            Ok(()) => {
                self.frames_sent += 1;
                self.write_failures = 0;
            }
            Err(e) => {
                self.write_failures += 1;
                self.frames_dropped += 1;
                if self.write_failures == 1 || self.write_failures.is_multiple_of(50) {
                    tracing::debug!(error = %e, failures = self.write_failures, "audio frame not written");
                }
                if self.write_failures >= MAX_WRITE_FAILURES {
                    return Err(format!(
                        "write audio: {e} ({} frames in a row)",
                        self.write_failures
                    ));
                }
            }
        }
        peer.drain(events)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn publisher_starts_the_stream_for_its_first_subscriber_or_after_the_wait() {
        let t0 = Instant::now();
        let mut p = Publisher::new(SampleRate::Hz8000, "phone").unwrap();
        assert!(!p.listener_gate(t0));
        assert!(!p.listener_gate(t0 + ms(1000)));
        // someone else's track, or before ours is published: nothing changes
        assert!(!p.subscribed(t0 + ms(1000), "TR_other"));
        p.sid = Some("TR_ours".into());
        assert!(p.subscribed(t0 + ms(1000), "TR_ours"));
        // the subscriber settles first
        assert!(!p.listener_gate(t0 + ms(1000) + SUBSCRIBER_SETTLE - ms(1)));
        assert!(p.listener_gate(t0 + ms(1000) + SUBSCRIBER_SETTLE));
        assert!(p.listener_gate(t0 + ms(1200)));
        // a new session waits for its own first subscriber again
        p.reset().unwrap();
        assert!(!p.listener_gate(t0 + ms(5000)));
        assert!(!p.listener_gate(t0 + ms(5000) + LISTENER_WAIT - ms(1)));
        // nobody (visible) subscribes: the stream starts after the wait
        assert!(p.listener_gate(t0 + ms(5000) + LISTENER_WAIT));
        assert!(p.listener_gate(t0 + ms(9000)));
        assert_eq!(p.dropped_before_listener, 5);
    }
}
