//! Remote audio, sans-IO: which track each subscriber m-line carries (rebuilt from every
//! subscriber offer, since LiveKit reuses transceivers for other tracks), one
//! [`RemoteStream`] per SSRC (sequence numbering, reordering, concealment, decoder), and
//! the watch for expected audio that does not arrive (`stall`).
//!
//! The subscriber connection runs in str0m's RTP mode: str0m decrypts and reports each
//! RTP packet, and the stream state is ours. str0m's own frame mode keeps one
//! depacketizer per m-line across SSRCs, and drops every packet of a new stream whose
//! sequence numbers are behind the last one it played on that m-line: a track that
//! replaced another (an agent handover, a re-published track) was not heard at all when
//! it happened to start behind (issue 22). Here a new SSRC on an m-line starts a new
//! stream and the old one is dropped with everything it held.
//!
//! Tests: `receiver_*` and `random_*` below.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::audio::RemoteCodec;
use super::remote_stream::RemoteStream;
use super::stall::{StallChange, StallWatch};
use super::{RemoteAudioFrame, SampleRate};

/// Streams tracked at most (a room's audio tracks are subscribed one m-line each; a
/// hostile SFU cannot grow the table beyond this).
const MAX_STREAMS: usize = 64;

/// What a subscriber m-line carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MidTrack {
    track_sid: String,
    /// The owner's identity; empty until the roster names it.
    identity: String,
    /// The roster said the track is gone: packets still in flight are dropped until an
    /// offer maps the m-line to another track (a stream made of them would reach the
    /// call after the track's end, and the call would keep a mixer input for it).
    gone: bool,
}

struct Stream {
    mid: String,
    track_sid: String,
    stream: RemoteStream,
}

pub(super) struct Receiver {
    rate: SampleRate,
    mids: HashMap<String, MidTrack>,
    /// By SSRC.
    streams: HashMap<u32, Stream>,
    stalls: StallWatch,
    /// Packets on an m-line no track is mapped to (yet).
    unmapped: u64,
    frames: Vec<(Vec<i16>, Option<Vec<u8>>)>,
}

impl Receiver {
    pub(super) fn new(rate: SampleRate, now: Instant) -> Receiver {
        Receiver {
            rate,
            mids: HashMap::new(),
            streams: HashMap::new(),
            stalls: StallWatch::new(now),
            unmapped: 0,
            frames: Vec::new(),
        }
    }

    /// The phone's rate changed: streams start again at the new one.
    pub(super) fn set_rate(&mut self, rate: SampleRate) {
        self.rate = rate;
        self.streams.clear();
    }

    /// A new session (full rejoin): nothing is subscribed yet.
    pub(super) fn reset(&mut self) {
        self.mids.clear();
        self.streams.clear();
    }

    /// Tracks stalled right now (see `stall`).
    pub(super) fn stalled(&self) -> usize {
        self.stalls.stalled()
    }

    /// A subscriber offer mapped `tracks` (mid -> track sid); `owner` names a track's
    /// participant when known. Returns the tracks that are new (newly subscribed).
    /// Streams whose m-line now carries another track (or none) are dropped.
    pub(super) fn offer(
        &mut self,
        tracks: HashMap<String, String>,
        owner: impl Fn(&str) -> Option<String>,
    ) -> Vec<(String, String)> {
        let old: HashSet<&String> = self.mids.values().map(|m| &m.track_sid).collect();
        let gone: HashSet<&String> = self
            .mids
            .values()
            .filter(|m| m.gone)
            .map(|m| &m.track_sid)
            .collect();
        let mut new = Vec::new();
        let mut map = HashMap::new();
        for (mid, track_sid) in tracks {
            let identity = owner(&track_sid).unwrap_or_default();
            if !old.contains(&track_sid) {
                new.push((track_sid.clone(), identity.clone()));
            }
            let gone = gone.contains(&track_sid);
            map.insert(
                mid,
                MidTrack {
                    track_sid,
                    identity,
                    gone,
                },
            );
        }
        self.mids = map;
        let mids = &self.mids;
        self.streams
            .retain(|_, s| mids.get(&s.mid).is_some_and(|m| m.track_sid == s.track_sid));
        new
    }

    /// The track is gone: its streams too, and its packets still in flight.
    pub(super) fn remove_track(&mut self, track_sid: &str) {
        self.streams.retain(|_, s| s.track_sid != track_sid);
        for m in self.mids.values_mut().filter(|m| m.track_sid == track_sid) {
            m.gone = true;
        }
    }

    /// One RTP packet of a subscriber m-line; decoded frames go to `out`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn packet(
        &mut self,
        now: Instant,
        mid: &str,
        ssrc: u32,
        seq: u16,
        codec: RemoteCodec,
        payload: &[u8],
        owner: impl Fn(&str) -> Option<String>,
        out: &mut Vec<RemoteAudioFrame>,
    ) {
        let Some(mapped) = self.mids.get_mut(mid) else {
            self.unmapped += 1;
            if self.unmapped == 1 || self.unmapped.is_multiple_of(500) {
                tracing::debug!(
                    mid,
                    ssrc,
                    packets = self.unmapped,
                    "RTP on an m-line without a track"
                );
            }
            return;
        };
        if mapped.gone {
            return;
        }
        if mapped.identity.is_empty()
            && let Some(name) = owner(&mapped.track_sid)
        {
            // the offer came before the participant update that names the owner
            mapped.identity = name;
        }
        let current = self
            .streams
            .get(&ssrc)
            .is_some_and(|s| s.mid == mid && s.track_sid == mapped.track_sid);
        if !current {
            // a new stream on this m-line replaces whatever it carried before
            let replaced: Vec<u32> = self
                .streams
                .iter()
                .filter(|(k, s)| **k == ssrc || s.mid == mid)
                .map(|(k, _)| *k)
                .collect();
            for old in &replaced {
                if let Some(s) = self.streams.remove(old) {
                    tracing::debug!(mid, old_ssrc = old, track = %s.track_sid, stats = ?s.stream.stats(),
                        "remote stream replaced");
                }
            }
            if self.streams.len() >= MAX_STREAMS {
                return;
            }
            tracing::debug!(mid, ssrc, seq, track = %mapped.track_sid, "new remote stream");
            self.streams.insert(
                ssrc,
                Stream {
                    mid: mid.to_string(),
                    track_sid: mapped.track_sid.clone(),
                    stream: RemoteStream::new(self.rate),
                },
            );
        }
        let s = self.streams.get_mut(&ssrc).expect("just ensured");
        s.stream.push(now, seq, codec, payload, &mut self.frames);
        let (track, identity) = (mapped.track_sid.clone(), mapped.identity.clone());
        self.deliver(&track, &identity, out);
    }

    fn deliver(&mut self, track: &str, identity: &str, out: &mut Vec<RemoteAudioFrame>) {
        for (samples, opus) in self.frames.drain(..) {
            out.push(RemoteAudioFrame {
                opus,
                participant_identity: identity.to_string(),
                track_sid: track.to_string(),
                sample_rate: self.rate.hz(),
                samples,
            });
        }
    }

    /// The earliest of the streams' reorder waits and the next stall check.
    pub(super) fn poll_timeout(&self) -> Instant {
        self.streams
            .values()
            .filter_map(|s| s.stream.poll_timeout())
            .fold(self.stalls.poll_timeout(), Instant::min)
    }

    /// Frames released by ended reorder waits go to `out`; `expected` are the audio
    /// tracks that should be heard now (subscribed, not muted: the roster's).
    pub(super) fn handle_timeout<'a>(
        &mut self,
        now: Instant,
        expected: impl Iterator<Item = (&'a str, &'a str)>,
        out: &mut Vec<RemoteAudioFrame>,
        stalls: &mut Vec<StallChange>,
    ) {
        let due: Vec<u32> = self
            .streams
            .iter()
            .filter(|(_, s)| s.stream.poll_timeout().is_some_and(|at| now >= at))
            .map(|(k, _)| *k)
            .collect();
        for ssrc in due {
            let Some(s) = self.streams.get_mut(&ssrc) else {
                continue;
            };
            s.stream.handle_timeout(now, &mut self.frames);
            let track = s.track_sid.clone();
            let identity = self
                .mids
                .get(&s.mid)
                .map(|m| m.identity.clone())
                .unwrap_or_default();
            self.deliver(&track, &identity, out);
        }
        self.stalls.check(now, expected, stalls);
    }

    /// Audio of `track` reached the call (the session's queue took it).
    pub(super) fn delivered(&mut self, now: Instant, track: &str) -> Option<StallChange> {
        self.stalls.delivered(now, track)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::livekit::audio::OpusEncoder;
    use crate::media::test_signal::{XorShift, goertzel_power, sine};
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn opus_tone(hz: f64, n: usize) -> Vec<Vec<u8>> {
        let mut enc = OpusEncoder::new(SampleRate::Hz8000).unwrap();
        let pcm = sine(hz, 0.3, 8000, 160 * n, 0.0);
        pcm.chunks(160).map(|f| enc.encode(f).unwrap()).collect()
    }

    fn no_owner(_: &str) -> Option<String> {
        None
    }

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(m, t)| (m.to_string(), t.to_string()))
            .collect()
    }

    /// The failure of issue 22: a new track on a reused m-line whose first sequence
    /// number is behind the last one heard there is played from its first packet.
    #[test]
    fn receiver_plays_a_new_ssrc_with_lower_sequence_numbers_from_its_first_packet() {
        let t0 = Instant::now();
        let mut r = Receiver::new(SampleRate::Hz8000, t0);
        let a = opus_tone(440.0, 50);
        let b = opus_tone(880.0, 50);
        let new = r.offer(map(&[("1", "TR_a")]), |_| Some("agent-a".into()));
        assert_eq!(new, [("TR_a".to_string(), "agent-a".to_string())]);
        let mut out = Vec::new();
        for (k, p) in a.iter().enumerate() {
            let now = t0 + ms(20 * k as u64);
            r.packet(
                now,
                "1",
                1111,
                40_000 + k as u16,
                RemoteCodec::Opus,
                p,
                no_owner,
                &mut out,
            );
        }
        assert_eq!(out.len(), 50);
        assert!(
            out.iter()
                .all(|f| f.track_sid == "TR_a" && f.participant_identity == "agent-a")
        );
        // agent-b's track takes m-line 1 over, numbered from 100
        r.remove_track("TR_a");
        let new = r.offer(map(&[("1", "TR_b")]), |_| None);
        assert_eq!(new, [("TR_b".to_string(), String::new())]);
        out.clear();
        for (k, p) in b.iter().enumerate() {
            let now = t0 + ms(2000 + 20 * k as u64);
            // the owner is named once the roster knows it
            r.packet(
                now,
                "1",
                2222,
                100 + k as u16,
                RemoteCodec::Opus,
                p,
                |_| Some("agent-b".into()),
                &mut out,
            );
            assert_eq!(out.len(), k + 1, "packet {k} of the new stream");
        }
        assert!(
            out.iter()
                .all(|f| f.track_sid == "TR_b" && f.participant_identity == "agent-b")
        );
        let pcm: Vec<i16> = out.iter().flat_map(|f| f.samples.iter().copied()).collect();
        let tail = &pcm[1600..];
        assert!(goertzel_power(tail, 880.0, 8000) > goertzel_power(tail, 440.0, 8000) * 100.0);
        assert_eq!(r.streams.len(), 1);
        // packets on an m-line no offer mapped: ignored
        r.packet(
            t0,
            "7",
            3333,
            1,
            RemoteCodec::Opus,
            &b[0],
            no_owner,
            &mut out,
        );
        assert_eq!(r.unmapped, 1);
    }

    /// Two tracks at once on two m-lines (overlap), then one re-published on a third
    /// SSRC of the same m-line before the offer that maps it arrives: the old stream is
    /// replaced at the first packet of the new SSRC and nothing is lost.
    #[test]
    fn receiver_keeps_streams_apart_and_replaces_one_per_mline() {
        let t0 = Instant::now();
        let mut r = Receiver::new(SampleRate::Hz8000, t0);
        r.offer(map(&[("1", "TR_a"), ("2", "TR_b")]), no_owner);
        let a = opus_tone(500.0, 20);
        let mut out = Vec::new();
        for k in 0..20u16 {
            let now = t0 + ms(20 * u64::from(k));
            r.packet(
                now,
                "1",
                10,
                5000 + k,
                RemoteCodec::Opus,
                &a[k as usize],
                no_owner,
                &mut out,
            );
            r.packet(
                now,
                "2",
                20,
                60_000 + k,
                RemoteCodec::Opus,
                &a[k as usize],
                no_owner,
                &mut out,
            );
        }
        let count =
            |out: &[RemoteAudioFrame], t: &str| out.iter().filter(|f| f.track_sid == t).count();
        assert_eq!((count(&out, "TR_a"), count(&out, "TR_b")), (20, 20));
        out.clear();
        for k in 0..20u16 {
            r.packet(
                t0 + ms(500),
                "2",
                30,
                7 + k,
                RemoteCodec::Opus,
                &a[k as usize],
                no_owner,
                &mut out,
            );
        }
        assert_eq!(count(&out, "TR_b"), 20);
        assert_eq!(r.streams.len(), 2);
        assert!(!r.streams.contains_key(&20));
    }

    /// A track the roster reports gone while its last packets are still in flight: they
    /// make no new stream and no frame (the call already removed the track from its
    /// mixer), also when an offer still lists it; the next track on that m-line plays.
    #[test]
    fn receiver_drops_late_packets_of_a_track_that_is_gone() {
        let t0 = Instant::now();
        let mut r = Receiver::new(SampleRate::Hz8000, t0);
        let a = opus_tone(440.0, 20);
        r.offer(map(&[("1", "TR_a")]), no_owner);
        let mut out = Vec::new();
        let send = |r: &mut Receiver, out: &mut Vec<RemoteAudioFrame>, ssrc, k: usize| {
            let now = t0 + ms(20 * k as u64);
            let seq = 1000 + k as u16;
            r.packet(
                now,
                "1",
                ssrc,
                seq,
                RemoteCodec::Opus,
                &a[k % 20],
                no_owner,
                out,
            );
        };
        for k in 0..10 {
            send(&mut r, &mut out, 1, k);
        }
        assert_eq!(out.len(), 10);
        r.remove_track("TR_a");
        out.clear();
        for k in 10..15 {
            send(&mut r, &mut out, 1, k);
        }
        assert!(
            out.is_empty(),
            "late packets of a gone track: {}",
            out.len()
        );
        assert!(r.streams.is_empty());
        // an offer that still lists it does not bring it back
        assert!(r.offer(map(&[("1", "TR_a")]), no_owner).is_empty());
        send(&mut r, &mut out, 1, 15);
        assert!(out.is_empty());
        // the m-line's next track plays
        let new = r.offer(map(&[("1", "TR_b")]), no_owner);
        assert_eq!(new, [("TR_b".to_string(), String::new())]);
        for k in 16..26 {
            send(&mut r, &mut out, 2, k);
        }
        assert_eq!(out.len(), 10);
        assert!(out.iter().all(|f| f.track_sid == "TR_b"));
    }

    /// Seeded random handovers: streams replace one another on a few m-lines with random
    /// first sequence numbers and random SSRCs, some overlapping on different m-lines.
    /// Every packet of every stream is played (in order, nothing missing), attributed to
    /// the track its m-line was mapped to.
    #[test]
    fn random_handovers_play_every_packet_of_every_stream() {
        let packets = opus_tone(600.0, 30);
        for seed in 1..=100u64 {
            let mut rng = XorShift::new(seed);
            let t0 = Instant::now();
            let mut r = Receiver::new(SampleRate::Hz8000, t0);
            let mut now = t0;
            for round in 0..6 {
                let mids = 1 + rng.below(3) as usize;
                let tracks: Vec<(String, String)> = (0..mids)
                    .map(|m| (m.to_string(), format!("TR_{seed}_{round}_{m}")))
                    .collect();
                let pairs: Vec<(&str, &str)> = tracks
                    .iter()
                    .map(|(m, t)| (m.as_str(), t.as_str()))
                    .collect();
                r.offer(map(&pairs), no_owner);
                let streams: Vec<(u32, u16)> = (0..mids)
                    .map(|_| (rng.next_u64() as u32, rng.below(65_536) as u16))
                    .collect();
                let mut out = Vec::new();
                for (k, packet) in packets.iter().enumerate() {
                    now += ms(20);
                    for (m, (ssrc, first)) in streams.iter().enumerate() {
                        let seq = first.wrapping_add(k as u16);
                        r.packet(
                            now,
                            &m.to_string(),
                            *ssrc,
                            seq,
                            RemoteCodec::Opus,
                            packet,
                            no_owner,
                            &mut out,
                        );
                    }
                }
                for (_, t) in &tracks {
                    let n = out.iter().filter(|f| &f.track_sid == t).count();
                    assert_eq!(n, packets.len(), "seed {seed} round {round}: {t}");
                }
                assert!(r.streams.len() <= mids, "seed {seed}: old streams dropped");
            }
        }
    }
}
