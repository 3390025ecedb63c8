//! The adaptive jitter buffer for the phone -> room direction, sans-IO: `push(now, packet)`
//! as packets arrive, `pop(now)` once per frame tick, which yields the next frame in
//! sequence order, a `Lost` slot to conceal, or nothing. Time is always an argument.
//!
//! Playout is clocked by RTP timestamps: every `pop` advances the playout timestamp by
//! one frame, so silence suppression and sender pauses keep their timing. The playout
//! delay `D` (how far behind the earliest-arriving packets playout runs) follows a target
//! derived from the interarrival jitter of RFC 3550 section 6.4.1 / appendix A.8 and from a
//! recent high percentile of packet delay; the buffer moves toward it one frame at a time,
//! by holding a tick (stretch) or skipping a frame (shrink).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::rtp::{ExtSeqNo, RtpPacket, SeqNo, SeqUnwrapper, Ssrc, TimestampUnwrapper};

/// RFC 3550 appendix A.1: a forward jump of more than this many sequence numbers is not
/// taken as loss but as a possible restart of the sender.
pub const MAX_DROPOUT: i64 = 3000;
/// RFC 3550 appendix A.1: a packet more than this far behind the highest is not taken as
/// reordering but as a possible restart of the sender.
pub const MAX_MISORDER: i64 = 100;

/// How many recent packet delays the target is computed from (2 s of 20 ms packets).
const DELAY_WINDOW: usize = 100;
/// The percentile of recent packet delay the target covers; later packets are concealed.
const DELAY_PERCENTILE: usize = 95;
/// The target falls by at most one frame per this many packets (2 s at 20 ms).
const TARGET_DECAY_PACKETS: i64 = 100;
/// Minimum ticks between two stretches, and between two shrinks.
const STRETCH_COOLDOWN: u64 = 5;
const SHRINK_COOLDOWN: u64 = 10;

/// Jitter buffer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// RTP clock rate of the stream (8000 for G.711).
    pub clock_rate: u32,
    /// Audio per packet, which is also the `pop` interval (the `ptime`, normally 20 ms).
    pub frame: Duration,
    /// Lowest target playout delay.
    pub min_delay: Duration,
    /// Highest target playout delay.
    pub max_delay: Duration,
    /// Most packets held at once; on overflow the oldest is dropped.
    pub max_packets: usize,
    /// A timestamp this far from where playout expects it (sender restart or pause
    /// without advancing timestamps) resynchronizes the buffer.
    pub resync_after: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            clock_rate: 8000,
            frame: Duration::from_millis(20),
            min_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_packets: 25,
            resync_after: Duration::from_secs(1),
        }
    }
}

/// What `push` did with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored for playout.
    Buffered,
    /// The stream restarted (new SSRC, confirmed sequence jump, or timestamp jump): the
    /// buffer was flushed and the packet stored as the first of the new stream.
    Resynced,
    /// Already buffered or already played.
    Duplicate,
    /// Its playout slot has passed.
    TooLate,
    /// A sequence jump beyond RFC 3550 appendix A.1's limits: held back until the next
    /// packet confirms the new sequence (then both are played) or not (then dropped).
    Held,
}

/// One played packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub seq: ExtSeqNo,
    pub packet: RtpPacket,
}

/// What to play for one tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The next packet in sequence.
    Frame(Frame),
    /// The packet for this slot is missing while later ones are here: conceal it.
    Lost { seq: ExtSeqNo, timestamp: u32 },
    /// Nothing to play: still buffering, buffer ran dry, a pause in the sender's
    /// timestamps, or a held tick to grow the delay.
    Empty,
}

/// Counters for RTCP and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JitterStats {
    pub received: u64,
    pub buffered: u64,
    pub duplicates: u64,
    pub too_late: u64,
    pub held: u64,
    pub resyncs: u64,
    /// Packets discarded by a resync.
    pub flushed: u64,
    /// Packets dropped because the buffer held `max_packets`.
    pub overflow_drops: u64,
    /// Buffered packets whose slot passed without them being due (timestamp anomalies).
    pub expired: u64,
    pub played: u64,
    /// `Lost` slots.
    pub lost: u64,
    /// `Empty` slots while playing that consumed a sequence slot (dry buffer or pause).
    pub underruns: u64,
    /// `Empty` ticks inserted to grow the delay (no sequence slot consumed).
    pub stretches: u64,
    /// Frame slots skipped to shrink the delay.
    pub shrinks: u64,
    /// Buffered packets dropped by those skips (a skipped slot may have been empty).
    pub shrunk_packets: u64,
}

#[derive(Debug, Clone)]
struct Buffered {
    packet: RtpPacket,
    ts: u64,
    arrival_us: i64,
}

#[derive(Debug, Clone, Copy)]
struct Playing {
    /// Extended timestamp of the slot the next `pop` fills.
    play_ts: u64,
    /// Sequence number expected in that slot.
    next_seq: u64,
}

/// The adaptive jitter buffer. See the module documentation.
/// Tests: `jitter_*` and `random_schedules_*`.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    frame_ts: u64,
    frame_us: i64,
    base: Option<Instant>,
    ssrc: Option<Ssrc>,
    seqs: SeqUnwrapper,
    tss: TimestampUnwrapper,
    packets: BTreeMap<u64, Buffered>,
    playing: Option<Playing>,
    /// RFC 3550 appendix A.1 `bad_seq`, with the packet that set it.
    probation: Option<(SeqNo, RtpPacket)>,
    /// Highest played extended sequence number and a bitmap of the 128 before it.
    last_played: Option<u64>,
    played_bits: u128,
    /// RFC 3550 appendix A.8 state, in microseconds.
    last_transit: Option<i64>,
    jitter_us: f64,
    /// Transit times (arrival minus timestamp) of recent packets.
    transits: VecDeque<i64>,
    target_us: i64,
    ticks: u64,
    last_stretch: u64,
    last_shrink: u64,
    stats: JitterStats,
}

impl JitterBuffer {
    /// A buffer with `config`, sanitized: frame at least 1 ms, `min_delay <= max_delay`,
    /// at least 2 packets.
    #[must_use]
    pub fn new(config: JitterConfig) -> Self {
        let mut config = config;
        config.clock_rate = config.clock_rate.max(1000);
        config.frame = config.frame.max(Duration::from_millis(1));
        config.max_delay = config.max_delay.max(config.min_delay);
        config.max_packets = config.max_packets.max(2);
        let frame_us = config.frame.as_micros() as i64;
        let frame_ts = (frame_us as u64 * u64::from(config.clock_rate) / 1_000_000).max(1);
        JitterBuffer {
            frame_ts,
            frame_us,
            target_us: config.min_delay.as_micros() as i64,
            config,
            base: None,
            ssrc: None,
            seqs: SeqUnwrapper::new(),
            tss: TimestampUnwrapper::new(),
            packets: BTreeMap::new(),
            playing: None,
            probation: None,
            last_played: None,
            played_bits: 0,
            last_transit: None,
            jitter_us: 0.0,
            transits: VecDeque::with_capacity(DELAY_WINDOW),
            ticks: 0,
            last_stretch: 0,
            last_shrink: 0,
            stats: JitterStats::default(),
        }
    }

    fn micros(&mut self, now: Instant) -> i64 {
        let base = *self.base.get_or_insert(now);
        now.saturating_duration_since(base).as_micros() as i64
    }

    fn ts_us(&self, ts: u64) -> i64 {
        (u128::from(ts) * 1_000_000 / u128::from(self.config.clock_rate)) as i64
    }

    /// Takes a packet that arrived at `now`.
    pub fn push(&mut self, now: Instant, packet: RtpPacket) -> PushOutcome {
        self.stats.received += 1;
        let arrival_us = self.micros(now);
        let mut resynced = false;
        if self.ssrc != Some(packet.ssrc) {
            if self.ssrc.is_some() {
                self.resync();
                resynced = true;
            }
            self.ssrc = Some(packet.ssrc);
        }
        if let Some(highest) = self.seqs.highest() {
            // RFC 3550 appendix A.1: sequence jumps beyond MAX_DROPOUT ahead or
            // MAX_MISORDER behind need a second, consecutive packet to be believed.
            // Test: `jitter_sequence_jump_needs_confirmation`.
            let delta = i64::from(packet.seq.delta(highest.seq()));
            if !(-MAX_MISORDER..=MAX_DROPOUT).contains(&delta) {
                match self.probation.take() {
                    Some((expected, held)) if expected == packet.seq => {
                        self.resync();
                        self.insert(arrival_us, held);
                        self.insert(arrival_us, packet);
                        return PushOutcome::Resynced;
                    }
                    _ => {
                        self.stats.held += 1;
                        self.probation = Some((packet.seq.next(), packet));
                        return PushOutcome::Held;
                    }
                }
            }
        }
        self.probation = None;
        match self.insert(arrival_us, packet) {
            PushOutcome::Buffered if resynced => PushOutcome::Resynced,
            outcome => outcome,
        }
    }

    fn insert(&mut self, arrival_us: i64, packet: RtpPacket) -> PushOutcome {
        let highest_before = self.seqs.highest();
        let (Some(seq), Some(ts)) = (self.seqs.peek(packet.seq), self.tss.peek(packet.timestamp))
        else {
            // From before the first packet of the stream, across a wrap.
            self.stats.too_late += 1;
            return PushOutcome::TooLate;
        };
        if self.packets.contains_key(&seq.0) || self.was_played(seq.0) {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        let mut outcome = PushOutcome::Buffered;
        if let Some(play) = self.playing
            && highest_before.is_none_or(|h| seq > h)
        {
            // A new packet whose timestamp is far from the playout clock: the sender
            // restarted its timestamps or paused without advancing them.
            // Test: `jitter_timestamp_jump_resyncs`.
            let offset = self.ts_us(ts) - self.ts_us(play.play_ts);
            let limit = self.config.resync_after.as_micros() as i64;
            if offset < -limit || offset > limit + self.config.max_delay.as_micros() as i64 {
                self.resync();
                outcome = PushOutcome::Resynced;
            }
        }
        let (Some(seq), Some(ts)) = (
            self.seqs.unwrap(packet.seq),
            self.tss.unwrap(packet.timestamp),
        ) else {
            self.stats.too_late += 1;
            return PushOutcome::TooLate;
        };
        self.observe_transit(arrival_us - self.ts_us(ts));
        if let Some(play) = self.playing
            && ts < play.play_ts
        {
            self.stats.too_late += 1;
            return PushOutcome::TooLate;
        }
        self.packets.insert(
            seq.0,
            Buffered {
                packet,
                ts,
                arrival_us,
            },
        );
        self.stats.buffered += 1;
        while self.packets.len() > self.config.max_packets {
            if let Some((old_seq, old)) = self.packets.pop_first() {
                self.stats.overflow_drops += 1;
                if let Some(play) = &mut self.playing {
                    play.play_ts = play.play_ts.max(old.ts + self.frame_ts);
                    play.next_seq = play.next_seq.max(old_seq + 1);
                }
            }
        }
        outcome
    }

    /// RFC 3550 section 6.4.1 / appendix A.8 interarrival jitter,
    /// `J += (|D(i-1,i)| - J) / 16`, plus the recent-delay window for the target.
    /// Test: `jitter_rfc3550_interarrival_estimate`.
    fn observe_transit(&mut self, transit: i64) {
        if let Some(prev) = self.last_transit {
            let d = (transit - prev).abs() as f64;
            self.jitter_us += (d - self.jitter_us) / 16.0;
        }
        self.last_transit = Some(transit);
        if self.transits.len() == DELAY_WINDOW {
            self.transits.pop_front();
        }
        self.transits.push_back(transit);
        self.update_target();
    }

    fn update_target(&mut self) {
        let min = self.transits.iter().copied().min().unwrap_or(0);
        let mut excess: Vec<i64> = self.transits.iter().map(|t| t - min).collect();
        let percentile = if excess.is_empty() {
            0
        } else {
            let k = (excess.len() - 1) * DELAY_PERCENTILE / 100;
            *excess.select_nth_unstable(k).1
        };
        let from_jitter = (4.0 * self.jitter_us) as i64;
        let wanted = (percentile.max(from_jitter) + self.frame_us / 10).clamp(
            self.config.min_delay.as_micros() as i64,
            self.config.max_delay.as_micros() as i64,
        );
        // Rise at once (late packets cost audio); fall by at most a frame per
        // TARGET_DECAY_PACKETS packets, so a passing spike does not cause churn.
        self.target_us = if wanted >= self.target_us || self.transits.len() < 2 {
            wanted
        } else {
            (self.target_us - self.frame_us / TARGET_DECAY_PACKETS).max(wanted)
        };
    }

    fn was_played(&self, seq: u64) -> bool {
        match self.last_played {
            Some(last) if seq <= last => {
                let back = last - seq;
                back < 128 && (self.played_bits >> back) & 1 == 1
            }
            _ => false,
        }
    }

    fn mark_played(&mut self, seq: u64) {
        match self.last_played {
            Some(last) if seq <= last => {
                let back = last - seq;
                if back < 128 {
                    self.played_bits |= 1 << back;
                }
            }
            Some(last) => {
                let shift = seq - last;
                self.played_bits = if shift >= 128 {
                    0
                } else {
                    self.played_bits << shift
                };
                self.played_bits |= 1;
                self.last_played = Some(seq);
            }
            None => {
                self.played_bits = 1;
                self.last_played = Some(seq);
            }
        }
    }

    fn resync(&mut self) {
        self.stats.resyncs += 1;
        self.stats.flushed += self.packets.len() as u64;
        self.packets.clear();
        self.seqs.reset();
        self.tss.reset();
        self.playing = None;
        self.probation = None;
        self.last_played = None;
        self.played_bits = 0;
        self.last_transit = None;
        self.transits.clear();
        self.update_target();
    }

    /// The playout delay now: how far playout runs behind the earliest-arriving packets.
    fn delay_us(&self, now_us: i64, play: &Playing) -> Option<i64> {
        let min = self.transits.iter().copied().min()?;
        Some(now_us - min - self.ts_us(play.play_ts))
    }

    /// What to play for the tick at `now`. Call once per `frame`.
    pub fn pop(&mut self, now: Instant) -> Playout {
        let now_us = self.micros(now);
        self.ticks += 1;
        let mut play = match self.playing {
            Some(play) => play,
            None => {
                let Some(head) = self.packets.first_key_value().map(|(s, b)| (*s, b)) else {
                    return Playout::Empty;
                };
                let (seq, head) = head;
                if now_us - head.arrival_us < self.target_us {
                    return Playout::Empty;
                }
                self.last_stretch = self.ticks;
                self.last_shrink = self.ticks;
                Playing {
                    play_ts: head.ts,
                    next_seq: seq,
                }
            }
        };

        if let Some(delay) = self.delay_us(now_us, &play) {
            if delay < self.target_us && self.ticks - self.last_stretch >= STRETCH_COOLDOWN {
                // Grow the delay by one frame: hold playout for this tick.
                self.last_stretch = self.ticks;
                self.stats.stretches += 1;
                self.playing = Some(play);
                return Playout::Empty;
            }
            if delay > self.target_us + 2 * self.frame_us
                && self.ticks - self.last_shrink >= SHRINK_COOLDOWN
            {
                // Shrink the delay by one frame: skip this slot's packet.
                self.last_shrink = self.ticks;
                self.stats.shrinks += 1;
                if let Some(entry) = self.packets.first_entry()
                    && entry.get().ts <= play.play_ts
                {
                    let (seq, _) = entry.remove_entry();
                    self.stats.shrunk_packets += 1;
                    play.next_seq = play.next_seq.max(seq + 1);
                } else {
                    play.next_seq += 1;
                }
                play.play_ts += self.frame_ts;
            }
        }

        while let Some(entry) = self.packets.first_entry() {
            if entry.get().ts + self.frame_ts <= play.play_ts {
                entry.remove();
                self.stats.expired += 1;
            } else {
                break;
            }
        }

        let out = match self.packets.first_entry() {
            Some(entry) if entry.get().ts <= play.play_ts => {
                let (seq, b) = entry.remove_entry();
                play.play_ts = b.ts + self.frame_ts;
                play.next_seq = seq + 1;
                self.mark_played(seq);
                self.stats.played += 1;
                Playout::Frame(Frame {
                    seq: ExtSeqNo(seq),
                    packet: b.packet,
                })
            }
            Some(entry) if *entry.key() > play.next_seq => {
                let lost = Playout::Lost {
                    seq: ExtSeqNo(play.next_seq),
                    timestamp: play.play_ts as u32,
                };
                play.play_ts += self.frame_ts;
                play.next_seq += 1;
                self.stats.lost += 1;
                lost
            }
            _ => {
                play.play_ts += self.frame_ts;
                play.next_seq += 1;
                self.stats.underruns += 1;
                Playout::Empty
            }
        };
        self.playing = Some(play);
        out
    }

    /// The packet the next `pop` plays, if it is already here: after a `Lost` slot, the
    /// packet right behind the loss (whose Opus in-band FEC rebuilds the lost one).
    #[must_use]
    pub fn peek_next(&self) -> Option<&RtpPacket> {
        let play = self.playing?;
        self.packets.get(&play.next_seq).map(|b| &b.packet)
    }

    /// Packets held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// The playout delay the buffer is steering toward.
    #[must_use]
    pub fn target_delay(&self) -> Duration {
        Duration::from_micros(self.target_us.max(0) as u64)
    }

    /// The current playout delay, once playing.
    #[must_use]
    pub fn current_delay(&mut self, now: Instant) -> Option<Duration> {
        let now_us = self.micros(now);
        let play = self.playing?;
        self.delay_us(now_us, &play)
            .map(|d| Duration::from_micros(d.max(0) as u64))
    }

    /// RFC 3550 interarrival jitter.
    #[must_use]
    pub fn jitter(&self) -> Duration {
        Duration::from_micros(self.jitter_us as u64)
    }

    /// RFC 3550 interarrival jitter in timestamp units, as an RTCP report block carries it.
    #[must_use]
    pub fn jitter_rtp_units(&self) -> u32 {
        (self.jitter_us * f64::from(self.config.clock_rate) / 1_000_000.0) as u32
    }

    /// RTP timestamp of the slot the next `pop` fills, once playing.
    #[must_use]
    pub fn next_playout_timestamp(&self) -> Option<u32> {
        self.playing.map(|p| p.play_ts as u32)
    }

    /// The SSRC being played.
    #[must_use]
    pub fn ssrc(&self) -> Option<Ssrc> {
        self.ssrc
    }

    #[must_use]
    pub fn stats(&self) -> &JitterStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_signal::XorShift;
    use std::collections::{BTreeSet, HashMap};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn pkt(seq: u16, ts: u32) -> RtpPacket {
        RtpPacket::new(0, SeqNo(seq), ts, Ssrc(1), seq.to_be_bytes().to_vec())
    }

    /// Pops until the first non-Empty and returns how many ticks that took.
    fn pop_frames(jb: &mut JitterBuffer, t0: Instant, from_tick: u64, n: u64) -> Vec<Playout> {
        (from_tick..from_tick + n)
            .map(|k| jb.pop(t0 + ms(20 * k)))
            .collect()
    }

    fn frame_seqs(out: &[Playout]) -> Vec<u64> {
        out.iter()
            .filter_map(|p| match p {
                Playout::Frame(f) => Some(f.seq.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn jitter_in_order_stream_plays_everything_after_target_delay() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        for k in 0..50u64 {
            assert_eq!(
                jb.push(t0 + ms(20 * k), pkt(k as u16, 160 * k as u32)),
                PushOutcome::Buffered
            );
            out.push(jb.pop(t0 + ms(20 * k + 5)));
        }
        let first = out
            .iter()
            .position(|p| matches!(p, Playout::Frame(_)))
            .expect("plays");
        assert!(first <= 2, "starts within the 20 ms minimum delay: {first}");
        assert_eq!(
            frame_seqs(&out),
            (0..(50 - first) as u64).collect::<Vec<_>>()
        );
        assert!(out[first..].iter().all(|p| matches!(p, Playout::Frame(_))));
        assert_eq!(jb.jitter(), Duration::ZERO);
        assert_eq!(jb.target_delay(), ms(20));
        assert_eq!((jb.stats().stretches, jb.stats().shrinks), (0, 0));
    }

    #[test]
    fn jitter_reordered_packets_play_in_order() {
        let t0 = Instant::now();
        let config = JitterConfig {
            min_delay: ms(60),
            ..JitterConfig::default()
        };
        let mut jb = JitterBuffer::new(config);
        let order = [1u16, 0, 3, 2, 5, 4, 7, 6, 9, 8];
        for (k, &s) in order.iter().enumerate() {
            jb.push(t0 + ms(20 * k as u64), pkt(s, 160 * u32::from(s)));
        }
        let out = pop_frames(&mut jb, t0, 3, 20);
        assert_eq!(frame_seqs(&out), (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn jitter_duplicates_are_dropped_before_and_after_playout() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        assert_eq!(jb.push(t0, pkt(10, 1600)), PushOutcome::Buffered);
        assert_eq!(jb.push(t0, pkt(10, 1600)), PushOutcome::Duplicate);
        jb.push(t0 + ms(20), pkt(11, 1760));
        let out = pop_frames(&mut jb, t0, 1, 3);
        assert_eq!(frame_seqs(&out), vec![10, 11]);
        assert_eq!(jb.push(t0 + ms(80), pkt(10, 1600)), PushOutcome::Duplicate);
        assert_eq!(jb.stats().duplicates, 2);
    }

    #[test]
    fn jitter_missing_packet_is_reported_lost_then_too_late() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for s in [0u16, 1, 3, 4] {
            jb.push(t0 + ms(20 * u64::from(s)), pkt(s, 160 * u32::from(s)));
        }
        let out = pop_frames(&mut jb, t0, 1, 5);
        let kinds: Vec<String> = out
            .iter()
            .map(|p| match p {
                Playout::Frame(f) => format!("F{}", f.seq),
                Playout::Lost { seq, timestamp } => format!("L{seq}@{timestamp}"),
                Playout::Empty => "E".into(),
            })
            .collect();
        assert_eq!(kinds, vec!["F0", "F1", "L2@320", "F3", "F4"]);
        assert_eq!(jb.push(t0 + ms(120), pkt(2, 320)), PushOutcome::TooLate);
        assert_eq!(jb.stats().lost, 1);
    }

    #[test]
    fn jitter_plays_across_sequence_and_timestamp_wrap() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let ts0 = u32::MAX - 800;
        let mut out = Vec::new();
        for k in 0..20u16 {
            let seq = 65_530u16.wrapping_add(k);
            let ts = ts0.wrapping_add(160 * u32::from(k));
            assert_eq!(
                jb.push(t0 + ms(20 * u64::from(k)), pkt(seq, ts)),
                PushOutcome::Buffered
            );
            out.push(jb.pop(t0 + ms(20 * u64::from(k) + 5)));
        }
        let seqs = frame_seqs(&out);
        assert!(seqs.len() >= 18);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(seqs.contains(&65_536), "crossed the wrap: {seqs:?}");
    }

    #[test]
    fn jitter_ssrc_change_resyncs() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for k in 0..5u16 {
            jb.push(t0 + ms(20 * u64::from(k)), pkt(k, 160 * u32::from(k)));
        }
        pop_frames(&mut jb, t0, 1, 3);
        let mut other = pkt(40_000, 9_999_999);
        other.ssrc = Ssrc(2);
        assert_eq!(jb.push(t0 + ms(100), other), PushOutcome::Resynced);
        assert_eq!(jb.ssrc(), Some(Ssrc(2)));
        assert_eq!(jb.len(), 1);
        assert_eq!(jb.stats().resyncs, 1);
        assert!(jb.stats().flushed >= 1);
        let out = pop_frames(&mut jb, t0, 6, 3);
        assert_eq!(frame_seqs(&out), vec![40_000]);
    }

    #[test]
    fn jitter_sequence_jump_needs_confirmation() {
        // RFC 3550 appendix A.1: one stray packet far ahead is held and dropped; two in a
        // row restart the stream (and both are played).
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for k in 0..3u16 {
            jb.push(t0 + ms(20 * u64::from(k)), pkt(k, 160 * u32::from(k)));
        }
        assert_eq!(jb.push(t0 + ms(60), pkt(30_000, 480)), PushOutcome::Held);
        assert_eq!(jb.push(t0 + ms(60), pkt(3, 480)), PushOutcome::Buffered);
        assert_eq!(jb.stats().resyncs, 0);
        assert_eq!(jb.push(t0 + ms(80), pkt(20_000, 640)), PushOutcome::Held);
        assert_eq!(
            jb.push(t0 + ms(100), pkt(20_001, 800)),
            PushOutcome::Resynced
        );
        assert_eq!(jb.len(), 2);
        let out = pop_frames(&mut jb, t0, 6, 4);
        assert_eq!(frame_seqs(&out), vec![20_000, 20_001]);
        // Far behind (more than MAX_MISORDER) is held too.
        assert_eq!(jb.push(t0 + ms(200), pkt(19_000, 0)), PushOutcome::Held);
    }

    #[test]
    fn jitter_timestamp_jump_resyncs() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for k in 0..5u16 {
            jb.push(t0 + ms(20 * u64::from(k)), pkt(k, 160 * u32::from(k)));
        }
        pop_frames(&mut jb, t0, 1, 3);
        // Same SSRC, next sequence number, timestamps restarted far ahead.
        assert_eq!(
            jb.push(t0 + ms(100), pkt(5, 80_000_000)),
            PushOutcome::Resynced
        );
        let out = pop_frames(&mut jb, t0, 6, 3);
        assert_eq!(frame_seqs(&out), vec![5]);
        // And a sender that paused 5 s without advancing its timestamps (playout kept
        // ticking meanwhile).
        pop_frames(&mut jb, t0, 9, 250);
        assert_eq!(
            jb.push(t0 + ms(5200), pkt(6, 80_000_160)),
            PushOutcome::Resynced
        );
        assert_eq!(jb.stats().resyncs, 2);
    }

    #[test]
    fn jitter_silence_suppression_gap_is_not_loss() {
        // Sequence numbers continue, timestamps and arrival jump by 1 s (RFC 3551
        // section 4.1 silence suppression): Empty slots, then playout resumes in time.
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut out = Vec::new();
        for k in 0..100u64 {
            let (seq, send) = if k < 10 {
                (k, k)
            } else if k >= 60 {
                (k - 50, k)
            } else {
                (u64::MAX, k)
            };
            if seq != u64::MAX {
                jb.push(t0 + ms(20 * send), pkt(seq as u16, 160 * send as u32));
            }
            out.push(jb.pop(t0 + ms(20 * k + 5)));
        }
        assert_eq!(jb.stats().lost, 0);
        assert_eq!(frame_seqs(&out), (0..(50 - 1)).collect::<Vec<_>>());
        assert!(jb.stats().underruns >= 49);
    }

    #[test]
    fn jitter_depth_is_bounded() {
        let t0 = Instant::now();
        let config = JitterConfig {
            max_packets: 8,
            ..JitterConfig::default()
        };
        let mut jb = JitterBuffer::new(config);
        // A 2 s burst arriving at once (e.g. after a stall) never holds more than 8.
        for k in 0..100u16 {
            jb.push(t0, pkt(k, 160 * u32::from(k)));
            assert!(jb.len() <= 8);
        }
        assert_eq!(jb.stats().overflow_drops, 92);
        // Such a burst looks like 2 s of jitter, so the target goes to max_delay and the
        // buffer then sheds the excess; whatever plays is in order and from the last 8.
        let out = pop_frames(&mut jb, t0, 1, 30);
        let seqs = frame_seqs(&out);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]));
        assert!(seqs.iter().all(|s| (92..100).contains(s)), "{seqs:?}");
        assert_eq!(seqs.len() as u64 + jb.stats().shrunk_packets, 8);
        assert_eq!(jb.target_delay(), ms(200));
    }

    #[test]
    fn jitter_rfc3550_interarrival_estimate() {
        // RFC 3550 section 6.4.1: transit alternating by 10 ms gives |D| = 10 ms per
        // packet, so J converges to 10 ms (80 timestamp units at 8 kHz).
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for k in 0..300u64 {
            let extra = if k % 2 == 0 { 0 } else { 10 };
            jb.push(t0 + ms(20 * k + extra), pkt(k as u16, 160 * k as u32));
            jb.pop(t0 + ms(20 * k + 15));
        }
        let j = jb.jitter_rtp_units();
        assert!((79..=80).contains(&j), "J = {j}");
        assert!(jb.target_delay() >= ms(40), "target follows 4 J");
    }

    #[test]
    fn jitter_target_grows_with_jitter_and_shrinks_back() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut rng = XorShift::new(7);
        let mut k = 0u64;
        let mut run = |jb: &mut JitterBuffer, n: u64, jitter_ms: u64| {
            let mut arrivals: Vec<(u64, u64)> = (k..k + n)
                .map(|i| (20 * i + rng.below(jitter_ms + 1), i))
                .collect();
            arrivals.sort();
            let mut a = arrivals.into_iter().peekable();
            for tick in k..k + n {
                let now = 20 * tick + 10;
                while let Some(&(at, i)) = a.peek() {
                    if at > now {
                        break;
                    }
                    jb.push(t0 + ms(at), pkt(i as u16, 160 * i as u32));
                    a.next();
                }
                jb.pop(t0 + ms(now));
            }
            k += n;
            jb.current_delay(t0 + ms(20 * k + 10)).expect("playing")
        };
        let calm = run(&mut jb, 200, 2);
        let calm_target = jb.target_delay();
        let stormy = run(&mut jb, 500, 80);
        let stormy_target = jb.target_delay();
        let calm_again = run(&mut jb, 1000, 2);
        println!(
            "delay/target: calm {calm:?}/{calm_target:?}, jitter 0-80 ms {stormy:?}/{stormy_target:?}, calm again {calm_again:?}/{:?}",
            jb.target_delay()
        );
        assert!(calm_target <= ms(25));
        assert!(stormy_target >= ms(70), "{stormy_target:?}");
        assert!(stormy >= stormy_target);
        assert!(jb.target_delay() <= ms(25));
        assert!(calm_again <= ms(60), "delay came back down: {calm_again:?}");
        assert!(jb.stats().stretches > 0 && jb.stats().shrinks > 0);
    }

    /// One simulated call leg: packets every 20 ms with network delay, jitter,
    /// reordering, loss, duplication and late arrivals; pops every 20 ms.
    struct Schedule {
        seed: u64,
        packets: u64,
        jitter_ms: u64,
        loss_pct: u64,
        dup_pct: u64,
        late_pct: u64,
    }

    fn run_schedule(s: &Schedule) -> JitterStats {
        let t0 = Instant::now();
        let config = JitterConfig::default();
        let mut jb = JitterBuffer::new(config);
        let mut rng = XorShift::new(s.seed);
        let first_seq = 65_000u16; // crosses the wrap
        let first_ts = u32::MAX - 16_000;
        // (arrival µs, index)
        let mut arrivals: Vec<(u64, u64)> = Vec::new();
        let mut never_sent = BTreeSet::new();
        for i in 0..s.packets {
            if rng.chance(s.loss_pct) {
                never_sent.insert(i);
                continue;
            }
            let mut delay = 30_000 + rng.below(s.jitter_ms * 1000 + 1);
            if rng.chance(s.late_pct) {
                delay += 150_000 + rng.below(300_000);
            }
            arrivals.push((20_000 * i + delay, i));
            if rng.chance(s.dup_pct) {
                arrivals.push((20_000 * i + delay + rng.below(60_000), i));
            }
        }
        arrivals.sort();
        let seq_of = |i: u64| first_seq.wrapping_add(i as u16);
        let ts_of = |i: u64| first_ts.wrapping_add(160 * i as u32);

        let mut pushed_ok: HashMap<u64, u64> = HashMap::new(); // index -> arrival µs
        let mut slots: Vec<(u64, Playout)> = Vec::new();
        let mut at_last_frame = JitterStats::default();
        let mut a = arrivals.into_iter().peekable();
        let ticks = s.packets + 40;
        for tick in 0..ticks {
            let now_us = 20_000 * tick + 7_000;
            while let Some(&(at, i)) = a.peek() {
                if at > now_us {
                    break;
                }
                a.next();
                let next_slot = jb.next_playout_timestamp();
                let outcome = jb.push(t0 + Duration::from_micros(at), pkt(seq_of(i), ts_of(i)));
                match outcome {
                    PushOutcome::Buffered => {
                        assert!(
                            pushed_ok.insert(i, at).is_none(),
                            "seed {}: {i} twice",
                            s.seed
                        );
                        if let Some(slot) = next_slot {
                            assert!(ts_of(i).wrapping_sub(slot) as i32 >= 0);
                        }
                    }
                    PushOutcome::TooLate => {
                        let slot = next_slot.expect("late only while playing");
                        assert!(
                            (ts_of(i).wrapping_sub(slot) as i32) < 0,
                            "seed {}: {i} refused but its slot had not passed",
                            s.seed
                        );
                    }
                    PushOutcome::Duplicate => assert!(pushed_ok.contains_key(&i)),
                    other => panic!("seed {}: unexpected {other:?}", s.seed),
                }
                assert!(jb.len() <= config.max_packets);
            }
            let out = jb.pop(t0 + Duration::from_micros(now_us));
            if matches!(out, Playout::Frame(_)) {
                at_last_frame = *jb.stats();
            }
            slots.push((now_us, out));
        }

        // Output is in order without duplicates, Lost slots included.
        let mut last: Option<u64> = None;
        let mut played = BTreeSet::new();
        let mut lost = Vec::new();
        for (now_us, p) in &slots {
            let seq = match p {
                Playout::Frame(f) => {
                    let i = f.seq.0 - u64::from(first_seq);
                    assert_eq!(f.packet.payload, seq_of(i).to_be_bytes().to_vec());
                    let arrived = pushed_ok[&i];
                    let waited = now_us - arrived;
                    assert!(
                        waited <= (config.max_delay + 2 * config.frame).as_micros() as u64,
                        "seed {}: {i} waited {waited} µs",
                        s.seed
                    );
                    played.insert(i);
                    f.seq.0
                }
                Playout::Lost { seq, .. } => {
                    lost.push(seq.0 - u64::from(first_seq));
                    seq.0
                }
                Playout::Empty => continue,
            };
            assert!(
                last.is_none_or(|l| seq > l),
                "seed {}: out of order",
                s.seed
            );
            last = Some(seq);
        }
        let st = *jb.stats();
        // Every packet that arrived in time was played, except those the buffer dropped
        // deliberately (shrinking the delay, overflow) and those still buffered.
        let accepted = pushed_ok.len() as u64;
        assert_eq!(
            accepted,
            st.played + st.overflow_drops + st.expired + st.shrunk_packets + jb.len() as u64,
            "seed {}: {st:?}",
            s.seed
        );
        assert_eq!(st.resyncs, 0);
        assert!(played.iter().all(|i| pushed_ok.contains_key(i)));
        // A slot reported Lost never had its packet accepted (it would have played, or
        // arrived after the slot and been refused as too late).
        if st.overflow_drops + st.expired == 0 {
            assert!(
                lost.iter().all(|i| !pushed_ok.contains_key(i)),
                "seed {}",
                s.seed
            );
        }
        // Each sequence number from the first to the last played had exactly one fate.
        let first = slots
            .iter()
            .find_map(|(_, p)| match p {
                Playout::Frame(f) => Some(f.seq.0),
                _ => None,
            })
            .expect("something played");
        let span = last.expect("played") - first + 1;
        let f = at_last_frame;
        assert_eq!(
            span,
            f.played + f.lost + f.underruns + f.shrinks + f.overflow_drops,
            "seed {}: {f:?}",
            s.seed
        );
        // Packets lost on the network inside the played span were all concealed.
        let concealable = never_sent
            .iter()
            .filter(|&&i| {
                i + u64::from(first_seq) > first && i + u64::from(first_seq) < first + span
            })
            .count() as u64;
        // Delay adjustments stay rare: at most one per 40 packets (0.8 s).
        assert!(
            st.stretches + st.shrinks <= s.packets / 40,
            "seed {}: {st:?}",
            s.seed
        );
        let skipped_empty = f.shrinks - f.shrunk_packets;
        assert!(
            f.lost + f.underruns + skipped_empty >= concealable,
            "seed {}: {f:?}",
            s.seed
        );
        st
    }

    #[test]
    fn random_schedules_keep_order_and_bounds() {
        let mut schedules = Vec::new();
        for seed in 1..=40u64 {
            schedules.push(Schedule {
                seed,
                packets: 1500,
                jitter_ms: [0, 10, 40, 80, 150][seed as usize % 5],
                loss_pct: [0, 1, 5, 10][seed as usize % 4],
                dup_pct: [0, 2, 10][seed as usize % 3],
                late_pct: [0, 1, 3][seed as usize % 3],
            });
        }
        let mut total = JitterStats::default();
        for s in &schedules {
            let st = run_schedule(s);
            println!(
                "seed {:2} jitter {:3} ms loss {:2}% dup {:2}% late {}%: played {} lost {} \
                 underruns {} too late {} stretches {} shrinks {} (dropping {})",
                s.seed,
                s.jitter_ms,
                s.loss_pct,
                s.dup_pct,
                s.late_pct,
                st.played,
                st.lost,
                st.underruns,
                st.too_late,
                st.stretches,
                st.shrinks,
                st.shrunk_packets
            );
            total.played += st.played;
            total.lost += st.lost;
            total.too_late += st.too_late;
            total.duplicates += st.duplicates;
            total.stretches += st.stretches;
            total.shrinks += st.shrinks;
            total.underruns += st.underruns;
            total.overflow_drops += st.overflow_drops;
        }
        println!("{} schedules: {total:?}", schedules.len());
        assert!(total.lost > 0 && total.too_late > 0 && total.duplicates > 0);
    }
}
