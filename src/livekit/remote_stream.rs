//! One remote audio stream (one SSRC on a subscriber m-line), sans-IO: its own sequence
//! numbering, a short reorder window, loss concealment and its own decoder. A new SSRC
//! gets a new `RemoteStream`: nothing of the stream it replaces (sequence numbers,
//! decoder state, held packets) carries over, so a track that starts with sequence
//! numbers behind the previous one's is played from its first packet. Time is always an
//! argument; playout timing is the mixer's (`media::mixer`).
//!
//! - In order: a packet is decoded as it arrives when it is the next one expected.
//! - Reordered: later packets wait (at most [`REORDER_PACKETS`] of them, at most
//!   [`REORDER_WAIT`]) for a missing earlier one; a packet behind the one played last is
//!   dropped as late (unless it is far behind: then the sender restarted its numbering).
//! - Lost: when the wait ends, a gap of up to [`MAX_CONCEALED`] packets is concealed
//!   (Opus FEC from the packet after the gap for its last slot, Opus PLC before that;
//!   silence for G.711), so the mixer's queue keeps its length; a longer gap is skipped.
//! - A jump forward of more than `MAX_DROPOUT` restarts the numbering (RFC 3550 A.1).
//!
//! - Each decoded Opus frame goes out with its packet (`FrameSink`), which the phone
//!   leg may send on as it is (passthrough, `media::session::passthrough`); a
//!   concealed frame has none.
//!
//! Tests: `remote_stream_*` and `random_*` below.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::SampleRate;
use super::audio::{RemoteCodec, TrackDecoder};
use crate::media::jitter::{MAX_DROPOUT, MAX_MISORDER};
use crate::media::rtp::{SeqNo, SeqUnwrapper};

/// Packets held after a gap before the gap counts as lost.
pub(super) const REORDER_PACKETS: usize = 3;
/// Longest a packet waits for an earlier missing one.
pub(super) const REORDER_WAIT: Duration = Duration::from_millis(60);
/// The longest gap concealed (100 ms of 20 ms packets); a longer one is skipped.
pub(super) const MAX_CONCEALED: u64 = 5;

/// Where a stream's frames go: decoded PCM, with the Opus packet it was decoded from.
pub(super) trait FrameSink {
    fn frame(&mut self, samples: Vec<i16>, packet: Option<&[u8]>);
}

/// PCM only.
impl FrameSink for Vec<Vec<i16>> {
    fn frame(&mut self, samples: Vec<i16>, _: Option<&[u8]>) {
        self.push(samples);
    }
}

/// PCM and packet.
impl FrameSink for Vec<(Vec<i16>, Option<Vec<u8>>)> {
    fn frame(&mut self, samples: Vec<i16>, packet: Option<&[u8]>) {
        self.push((samples, packet.map(<[u8]>::to_vec)));
    }
}

/// Counters of one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct StreamStats {
    pub received: u64,
    pub decoded: u64,
    pub concealed: u64,
    /// Behind the last played packet (or before the first one across a wrap).
    pub late: u64,
    pub duplicates: u64,
    /// Sequence slots given up without concealment (gaps longer than `MAX_CONCEALED`).
    pub skipped: u64,
    /// The sender's numbering jumped and playout restarted from the new number.
    pub restarts: u64,
    pub decode_errors: u64,
}

#[derive(Debug)]
struct Held {
    codec: RemoteCodec,
    payload: Vec<u8>,
    arrived: Instant,
}

pub(super) struct RemoteStream {
    seqs: SeqUnwrapper,
    /// Extended sequence number of the next packet to play.
    next: Option<u64>,
    held: BTreeMap<u64, Held>,
    decoder: TrackDecoder,
    /// Samples in the last decoded frame: the length of a concealed one.
    frame_samples: usize,
    stats: StreamStats,
}

impl RemoteStream {
    pub(super) fn new(rate: SampleRate) -> RemoteStream {
        RemoteStream {
            seqs: SeqUnwrapper::new(),
            next: None,
            held: BTreeMap::new(),
            decoder: TrackDecoder::new(rate),
            frame_samples: rate.samples_per_20ms(),
            stats: StreamStats::default(),
        }
    }

    pub(super) fn stats(&self) -> StreamStats {
        self.stats
    }

    /// One RTP packet (`seq` as on the wire); the frames it completes, in order, go to
    /// `out` (decoded PCM at the phone rate).
    pub(super) fn push(
        &mut self,
        now: Instant,
        seq: u16,
        codec: RemoteCodec,
        payload: &[u8],
        out: &mut impl FrameSink,
    ) {
        self.stats.received += 1;
        let Some(ext) = self.seqs.unwrap(SeqNo(seq)) else {
            self.stats.late += 1;
            return;
        };
        let mut s = ext.0;
        match self.next {
            None => self.next = Some(s),
            Some(n) if s < n => {
                if n - s <= MAX_MISORDER as u64 {
                    self.stats.late += 1;
                    return;
                }
                s = self.restart(seq);
            }
            Some(n) if s - n > MAX_DROPOUT as u64 => s = self.restart(seq),
            Some(_) => {}
        }
        if Some(s) == self.next && self.held.is_empty() {
            self.decode(codec, payload, out);
            self.next = Some(s + 1);
            return;
        }
        if self.held.contains_key(&s) {
            self.stats.duplicates += 1;
            return;
        }
        self.held.insert(
            s,
            Held {
                codec,
                payload: payload.to_vec(),
                arrived: now,
            },
        );
        self.release(now, out);
    }

    /// When a held packet stops waiting for the gap before it.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.held.values().map(|h| h.arrived + REORDER_WAIT).min()
    }

    pub(super) fn handle_timeout(&mut self, now: Instant, out: &mut impl FrameSink) {
        self.release(now, out);
    }

    /// The sender restarted its numbering at `seq`: playout follows from there.
    fn restart(&mut self, seq: u16) -> u64 {
        self.stats.restarts += 1;
        self.stats.skipped += self.held.len() as u64;
        self.held.clear();
        self.seqs.reset();
        let s = self.seqs.unwrap(SeqNo(seq)).map_or(u64::from(seq), |e| e.0);
        self.next = Some(s);
        s
    }

    /// Plays what is in order; gives up on a gap once enough is held behind it or the
    /// oldest held packet waited long enough.
    fn release(&mut self, now: Instant, out: &mut impl FrameSink) {
        loop {
            let Some(mut next) = self.next else { return };
            while let Some(h) = self.held.remove(&next) {
                self.decode(h.codec, &h.payload, out);
                next += 1;
            }
            self.next = Some(next);
            let Some((&first, _)) = self.held.first_key_value() else {
                return;
            };
            let waited = self.poll_timeout().is_some_and(|at| now >= at);
            if self.held.len() <= REORDER_PACKETS && !waited {
                return;
            }
            let gap = first - next;
            if gap <= MAX_CONCEALED {
                let h = &self.held[&first];
                let (codec, fec) = (h.codec, h.payload.clone());
                for k in 0..gap {
                    let from_fec = (k + 1 == gap).then_some(fec.as_slice());
                    match self.decoder.conceal(codec, from_fec, self.frame_samples) {
                        Ok(frame) => {
                            self.stats.concealed += 1;
                            out.frame(frame, None);
                        }
                        Err(e) => {
                            self.stats.decode_errors += 1;
                            tracing::debug!(error = %e, "cannot conceal a lost packet");
                        }
                    }
                }
            } else {
                self.stats.skipped += gap;
            }
            self.next = Some(first);
        }
    }

    fn decode(&mut self, codec: RemoteCodec, payload: &[u8], out: &mut impl FrameSink) {
        match self.decoder.decode(codec, payload) {
            Ok(samples) if !samples.is_empty() => {
                self.stats.decoded += 1;
                self.frame_samples = samples.len();
                let packet = (codec == RemoteCodec::Opus).then_some(payload);
                out.frame(samples, packet);
            }
            Ok(_) => {}
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::debug!(error = %e, "cannot decode remote audio");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::livekit::audio::OpusEncoder;
    use crate::media::test_signal::{XorShift, goertzel_power, sine};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `n` Opus packets of a 0.3 tone at `hz`, 20 ms each, at `rate`.
    fn opus_tone(rate: SampleRate, hz: f64, n: usize) -> Vec<Vec<u8>> {
        let mut enc = OpusEncoder::new(rate).unwrap();
        let len = rate.samples_per_20ms();
        let pcm = sine(hz, 0.3, rate.hz(), len * n, 0.0);
        pcm.chunks(len).map(|f| enc.encode(f).unwrap()).collect()
    }

    #[test]
    fn remote_stream_plays_in_order_packets_at_once_from_any_first_number() {
        let rate = SampleRate::Hz8000;
        let packets = opus_tone(rate, 600.0, 50);
        for first in [0u16, 1, 30_000, 65_500, 65_535] {
            let t0 = Instant::now();
            let mut s = RemoteStream::new(rate);
            let mut out: Vec<Vec<i16>> = Vec::new();
            for (k, p) in packets.iter().enumerate() {
                let before = out.len();
                s.push(
                    t0 + ms(20 * k as u64),
                    first.wrapping_add(k as u16),
                    RemoteCodec::Opus,
                    p,
                    &mut out,
                );
                assert_eq!(
                    out.len(),
                    before + 1,
                    "packet {k} from {first} played at once"
                );
            }
            assert_eq!(s.poll_timeout(), None);
            let pcm: Vec<i16> = out.concat();
            assert_eq!(pcm.len(), 50 * 160);
            let tail = &pcm[160 * 10..];
            assert!(goertzel_power(tail, 600.0, 8000) > goertzel_power(tail, 900.0, 8000) * 100.0);
        }
    }

    #[test]
    fn remote_stream_reorders_and_conceals_a_loss() {
        let rate = SampleRate::Hz16000;
        let packets = opus_tone(rate, 1000.0, 10);
        let t0 = Instant::now();
        let mut s = RemoteStream::new(rate);
        let mut out: Vec<Vec<i16>> = Vec::new();
        let seq = |k: usize| 100u16 + k as u16;
        s.push(t0, seq(0), RemoteCodec::Opus, &packets[0], &mut out);
        // 2 before 1: held, then both in order
        s.push(
            t0 + ms(40),
            seq(2),
            RemoteCodec::Opus,
            &packets[2],
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(s.poll_timeout(), Some(t0 + ms(40) + REORDER_WAIT));
        s.push(
            t0 + ms(45),
            seq(1),
            RemoteCodec::Opus,
            &packets[1],
            &mut out,
        );
        assert_eq!(out.len(), 3);
        // 3 is lost: 4 waits until the reorder wait is over, then 3 is concealed
        s.push(
            t0 + ms(80),
            seq(4),
            RemoteCodec::Opus,
            &packets[4],
            &mut out,
        );
        assert_eq!(out.len(), 3);
        s.handle_timeout(t0 + ms(80) + REORDER_WAIT - ms(1), &mut out);
        assert_eq!(out.len(), 3);
        s.handle_timeout(t0 + ms(80) + REORDER_WAIT, &mut out);
        assert_eq!(out.len(), 5, "concealed 3, then 4");
        assert!(out.iter().all(|f| f.len() == 320));
        // the late 3 is dropped; a duplicate too
        s.push(
            t0 + ms(150),
            seq(3),
            RemoteCodec::Opus,
            &packets[3],
            &mut out,
        );
        s.push(
            t0 + ms(150),
            seq(4),
            RemoteCodec::Opus,
            &packets[4],
            &mut out,
        );
        assert_eq!(out.len(), 5);
        // a gap longer than MAX_CONCEALED with enough held behind it: skipped at once
        for k in 0..=REORDER_PACKETS as u64 {
            s.push(
                t0 + ms(300),
                seq(12 + k as usize),
                RemoteCodec::Opus,
                &packets[5],
                &mut out,
            );
        }
        assert_eq!(out.len(), 5 + REORDER_PACKETS + 1);
        let st = s.stats();
        assert_eq!((st.concealed, st.late, st.skipped), (1, 2, 7), "{st:?}");
        // a jump far ahead restarts the numbering
        s.push(
            t0 + ms(400),
            seq(20_000),
            RemoteCodec::Opus,
            &packets[6],
            &mut out,
        );
        s.push(
            t0 + ms(420),
            seq(20_001),
            RemoteCodec::Opus,
            &packets[7],
            &mut out,
        );
        assert_eq!(out.len(), 5 + REORDER_PACKETS + 3);
        assert_eq!(s.stats().restarts, 1);
    }

    /// Seeded random streams: random first sequence number (wraps included), random
    /// reordering within the window, duplicates and single losses. Whatever the order,
    /// every packet is played or concealed exactly once and nothing is played twice,
    /// and the tone comes through.
    #[test]
    fn random_arrival_orders_play_every_slot_once() {
        let rate = SampleRate::Hz8000;
        let packets = opus_tone(rate, 700.0, 100);
        for seed in 1..=200u64 {
            let mut rng = XorShift::new(seed);
            let first = rng.below(65_536) as u16;
            let t0 = Instant::now();
            // arrival order: each packet delayed by 0..2 slots, some duplicated, some lost
            let mut arrivals: Vec<(u64, usize)> = Vec::new();
            let mut lost = Vec::new();
            for k in 0..packets.len() {
                if k > 0 && k < packets.len() - 1 && rng.chance(3) {
                    lost.push(k);
                    continue;
                }
                let at = 20 * k as u64 + rng.below(40);
                arrivals.push((at, k));
                if rng.chance(5) {
                    arrivals.push((at + rng.below(30), k));
                }
            }
            arrivals.sort();
            let mut s = RemoteStream::new(rate);
            let mut out: Vec<Vec<i16>> = Vec::new();
            for (at, k) in arrivals {
                let now = t0 + ms(at);
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now, &mut out);
                }
                s.push(
                    now,
                    first.wrapping_add(k as u16),
                    RemoteCodec::Opus,
                    &packets[k],
                    &mut out,
                );
            }
            s.handle_timeout(t0 + ms(10_000), &mut out);
            let st = s.stats();
            assert_eq!(
                out.len() as u64,
                st.decoded + st.concealed,
                "seed {seed}: {st:?}"
            );
            // packet 0 may come late behind packet 1 (then it is late, not played)
            assert!(
                st.decoded + st.concealed + st.skipped >= packets.len() as u64 - 1
                    && st.decoded + st.concealed + st.skipped <= packets.len() as u64,
                "seed {seed}: every slot once: {st:?}, {} lost",
                lost.len()
            );
            assert_eq!(st.restarts, 0, "seed {seed}");
            let pcm = out.concat();
            let tail = &pcm[pcm.len() / 4..];
            assert!(
                goertzel_power(tail, 700.0, 8000) > goertzel_power(tail, 1200.0, 8000) * 100.0,
                "seed {seed}"
            );
        }
    }

    /// Each decoded Opus frame comes with the packet it was decoded from (what an Opus
    /// phone leg may pass through); a concealed one has none.
    #[test]
    fn remote_stream_frames_carry_their_packet_and_concealed_ones_none() {
        let rate = SampleRate::Hz16000;
        let packets = opus_tone(rate, 600.0, 6);
        let t0 = Instant::now();
        let mut s = RemoteStream::new(rate);
        let mut out: Vec<(Vec<i16>, Option<Vec<u8>>)> = Vec::new();
        for k in [0usize, 1, 3, 4, 5] {
            s.push(
                t0 + ms(20 * k as u64),
                100 + k as u16,
                RemoteCodec::Opus,
                &packets[k],
                &mut out,
            );
        }
        s.handle_timeout(t0 + ms(200), &mut out);
        let carried: Vec<Option<&Vec<u8>>> = out.iter().map(|(_, p)| p.as_ref()).collect();
        let expected: Vec<Option<&Vec<u8>>> = vec![
            Some(&packets[0]),
            Some(&packets[1]),
            None,
            Some(&packets[3]),
            Some(&packets[4]),
            Some(&packets[5]),
        ];
        assert_eq!(carried, expected);
        assert!(out.iter().all(|(f, _)| f.len() == 320));
    }
}
