//! The room -> phone mixer, sans-IO: one input per remote track (decoded PCM at the phone
//! rate), one mixed frame per tick on the caller's clock. Time is always an argument.
//!
//! - Ticks: `poll_timeout()` says when the next frame is due; `poll_frame(now, out)`
//!   yields every frame due by `now` (call it until it returns `None`). A caller that falls
//!   more than `max_catch_up` frames behind skips ahead instead of bursting.
//! - Inputs are keyed by track and carry their owner's identity. Tracks owned by the
//!   mixer's local participant (the caller on the phone) are never mixed, so nobody hears
//!   themself back; their audio is discarded on `push`.
//! - Each input queues what `push` gives it and starts contributing once it holds
//!   `prefill`; an input without a whole frame at a tick is muted for that tick and
//!   buffers again, without holding back the others. A queue past `max_queue` (a sender
//!   clock faster than ours) sheds its oldest samples.
//! - Summing is in 32 bits followed by a soft limiter: samples below
//!   `LIMITER_THRESHOLD` pass unchanged, louder ones are compressed smoothly (tanh knee)
//!   toward full scale, so the sum never wraps or hard-clips.
//! - At most `MAX_TRACKS` inputs: a room with more audio tracks has the later ones
//!   refused until an input goes, so no room can grow a call's memory without bound.
//! - Passthrough (issue 19): a pushed frame may carry the coded packet it was decoded
//!   from (`push_coded`). Inputs are always decoded and mixed, so the mix is ready the
//!   moment it is needed; when a tick's frame is exactly one such pushed frame of the
//!   only audible input (every other contributor at or below `AUDIBLE_PEAK`),
//!   `take_passthrough` hands out its packet, which the owner may send instead of
//!   encoding the mix. Test: `mixer_passes_one_audible_track_through_*`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Inputs mixed at most (a caller cannot follow more talkers at once anyway).
pub const MAX_TRACKS: usize = 16;

/// A contributor whose frame peaks at or below this (about -60 dBFS) is not audible: it
/// does not stop another track's packet from passing through.
pub const AUDIBLE_PEAK: u16 = 32;

/// Sums at or below this magnitude pass the limiter unchanged (about -2.5 dBFS).
pub const LIMITER_THRESHOLD: i32 = 24_576;

/// Mixer settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixerConfig {
    /// Sample rate of the inputs and of the output (the phone rate: 8000 or 16000).
    pub sample_rate: u32,
    /// The tick, which is also the output frame length.
    pub frame: Duration,
    /// Audio an input must hold before it (re)starts contributing.
    pub prefill: Duration,
    /// Most audio an input holds; beyond it the oldest samples are dropped.
    pub max_queue: Duration,
    /// How many overdue frames `poll_frame` still produces before skipping ahead.
    pub max_catch_up: u32,
}

impl Default for MixerConfig {
    fn default() -> Self {
        MixerConfig {
            sample_rate: 8000,
            frame: Duration::from_millis(20),
            prefill: Duration::from_millis(40),
            max_queue: Duration::from_millis(200),
            max_catch_up: 5,
        }
    }
}

/// Counters of one input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputStats {
    /// Samples accepted by `push`.
    pub pushed_samples: u64,
    /// Ticks this input contributed a frame to.
    pub mixed_frames: u64,
    /// Ticks this input was playing but had less than a frame (it was muted).
    pub starved_ticks: u64,
    /// Samples dropped because the queue exceeded `max_queue`.
    pub overflow_samples: u64,
    /// Samples discarded because the track belongs to the local participant.
    pub excluded_samples: u64,
}

/// Counters of the mixer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MixerStats {
    /// Frames produced.
    pub frames: u64,
    /// Frames skipped because the caller fell more than `max_catch_up` behind.
    pub skipped_frames: u64,
    /// Output samples the limiter compressed.
    pub limited_samples: u64,
    /// Tracks refused because `MAX_TRACKS` inputs were there.
    pub refused_tracks: u64,
}

/// What one mixed frame was made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MixInfo {
    /// Inputs that contributed audio (0: the frame is silence).
    pub contributors: usize,
    /// Contributors whose frame peaked above `AUDIBLE_PEAK`.
    pub audible: usize,
    /// Samples of this frame the limiter compressed.
    pub limited: usize,
}

/// Why a `push` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixerError {
    #[error("no mixer input for track {0}")]
    UnknownTrack(String),
    #[error("the mixer has {MAX_TRACKS} inputs already")]
    TooManyTracks,
}

#[derive(Debug)]
struct Input {
    owner: String,
    queue: VecDeque<i16>,
    /// The pushed frames `queue` holds, oldest first, with their packets.
    segments: VecDeque<Segment>,
    playing: bool,
    stats: InputStats,
}

/// One pushed frame still (partly) in an input's queue.
#[derive(Debug)]
struct Segment {
    /// Samples of it still queued.
    left: usize,
    /// Its coded packet, while none of its samples has been taken apart from it.
    packet: Option<Vec<u8>>,
}

impl Input {
    /// `n` samples leave the front of the queue: the packet of the frame they are
    /// exactly, if it had one.
    fn consume(&mut self, mut n: usize) -> Option<Vec<u8>> {
        if let Some(front) = self.segments.front_mut()
            && front.left == n
            && front.packet.is_some()
        {
            return self.segments.pop_front().and_then(|s| s.packet);
        }
        while n > 0 {
            let Some(front) = self.segments.front_mut() else {
                break;
            };
            let take = front.left.min(n);
            front.left -= take;
            front.packet = None;
            n -= take;
            if front.left == 0 {
                self.segments.pop_front();
            }
        }
        None
    }
}

/// The mixer. See the module documentation. Tests: `mixer_*`.
#[derive(Debug)]
pub struct Mixer {
    config: MixerConfig,
    local_owner: String,
    frame_samples: usize,
    prefill_samples: usize,
    max_queue_samples: usize,
    inputs: BTreeMap<String, Input>,
    next_tick: Instant,
    acc: Vec<i32>,
    /// The packet of the last frame, when it can be passed through.
    pass: Option<Vec<u8>>,
    stats: MixerStats,
}

impl Mixer {
    /// A mixer for the participant `local_owner` (whose own tracks are never mixed),
    /// with its first tick due at `now`.
    #[must_use]
    pub fn new(config: MixerConfig, local_owner: impl Into<String>, now: Instant) -> Self {
        let mut config = config;
        config.sample_rate = config.sample_rate.max(1000);
        config.frame = config.frame.max(Duration::from_millis(1));
        let samples =
            |d: Duration| (d.as_micros() * u128::from(config.sample_rate) / 1_000_000) as usize;
        let frame_samples = samples(config.frame).max(1);
        let prefill_samples = samples(config.prefill).max(frame_samples);
        let max_queue_samples = samples(config.max_queue).max(prefill_samples + frame_samples);
        Mixer {
            config,
            local_owner: local_owner.into(),
            frame_samples,
            prefill_samples,
            max_queue_samples,
            inputs: BTreeMap::new(),
            next_tick: now,
            acc: vec![0; frame_samples],
            pass: None,
            stats: MixerStats::default(),
        }
    }

    /// Samples in one output frame.
    #[must_use]
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Adds an input for `track`, published by `owner`. Re-adding a track resets it. A new
    /// track is refused while `MAX_TRACKS` inputs are there.
    pub fn add_track(
        &mut self,
        track: impl Into<String>,
        owner: impl Into<String>,
    ) -> Result<(), MixerError> {
        let track = track.into();
        if self.inputs.len() >= MAX_TRACKS && !self.inputs.contains_key(&track) {
            self.stats.refused_tracks += 1;
            return Err(MixerError::TooManyTracks);
        }
        self.inputs.insert(
            track,
            Input {
                owner: owner.into(),
                queue: VecDeque::with_capacity(self.max_queue_samples),
                segments: VecDeque::new(),
                playing: false,
                stats: InputStats::default(),
            },
        );
        Ok(())
    }

    /// Removes the input for `track`; its queued audio is dropped.
    pub fn remove_track(&mut self, track: &str) -> Option<InputStats> {
        self.inputs.remove(track).map(|i| i.stats)
    }

    /// Removes every input published by `owner` (the participant left).
    pub fn remove_owner(&mut self, owner: &str) {
        self.inputs.retain(|_, input| input.owner != owner);
    }

    /// Tracks with an input, in order.
    pub fn tracks(&self) -> impl Iterator<Item = &str> {
        self.inputs.keys().map(String::as_str)
    }

    /// Queues decoded audio of `track` (at the mixer's sample rate).
    pub fn push(&mut self, track: &str, samples: &[i16]) -> Result<(), MixerError> {
        self.push_coded(track, samples, None)
    }

    /// `push`, with the coded packet `samples` were decoded from (see the module
    /// documentation: passthrough).
    pub fn push_coded(
        &mut self,
        track: &str,
        samples: &[i16],
        packet: Option<Vec<u8>>,
    ) -> Result<(), MixerError> {
        let max = self.max_queue_samples;
        let input = self
            .inputs
            .get_mut(track)
            .ok_or_else(|| MixerError::UnknownTrack(track.to_owned()))?;
        if input.owner == self.local_owner {
            input.stats.excluded_samples += samples.len() as u64;
            return Ok(());
        }
        if samples.is_empty() {
            return Ok(());
        }
        input.stats.pushed_samples += samples.len() as u64;
        input.queue.extend(samples);
        input.segments.push_back(Segment {
            left: samples.len(),
            packet,
        });
        if input.queue.len() > max {
            let excess = input.queue.len() - max;
            input.queue.drain(..excess);
            input.consume(excess);
            input.stats.overflow_samples += excess as u64;
        }
        Ok(())
    }

    /// When the next frame is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_tick
    }

    /// The next frame due by `now`, written to `out` (which must hold `frame_samples()`;
    /// extra room is left untouched), or `None` when no frame is due.
    ///
    /// # Panics
    /// If `out` is shorter than a frame.
    pub fn poll_frame(&mut self, now: Instant, out: &mut [i16]) -> Option<MixInfo> {
        assert!(
            out.len() >= self.frame_samples,
            "output shorter than a frame"
        );
        if now < self.next_tick {
            return None;
        }
        let behind = now.duration_since(self.next_tick);
        let max_behind = self.config.frame * self.config.max_catch_up;
        if behind > max_behind {
            // Skip the frames the caller cannot catch up with; the inputs' queues are
            // left alone (their own limits and the prefill take care of them).
            let frame_us = self.config.frame.as_micros();
            let skip = (behind.as_micros() / frame_us) as u32;
            self.next_tick += self.config.frame * skip;
            self.stats.skipped_frames += u64::from(skip);
        }
        self.next_tick += self.config.frame;
        Some(self.mix(&mut out[..self.frame_samples]))
    }

    /// The packet of the frame `poll_frame` gave last, when that frame is exactly one
    /// pushed frame of the only audible input (see the module documentation).
    pub fn take_passthrough(&mut self) -> Option<Vec<u8>> {
        self.pass.take()
    }

    fn mix(&mut self, out: &mut [i16]) -> MixInfo {
        let n = self.frame_samples;
        self.acc.iter_mut().for_each(|a| *a = 0);
        let mut contributors = 0;
        let mut audible = 0;
        self.pass = None;
        for input in self.inputs.values_mut() {
            if input.owner == self.local_owner {
                continue;
            }
            if !input.playing {
                if input.queue.len() < self.prefill_samples {
                    continue;
                }
                input.playing = true;
            }
            if input.queue.len() < n {
                // Starved: mute for this tick and buffer up again.
                input.playing = false;
                input.stats.starved_ticks += 1;
                continue;
            }
            let mut peak = 0u16;
            for (a, s) in self.acc.iter_mut().zip(input.queue.drain(..n)) {
                *a += i32::from(s);
                peak = peak.max(s.unsigned_abs());
            }
            let packet = input.consume(n);
            input.stats.mixed_frames += 1;
            contributors += 1;
            if peak > AUDIBLE_PEAK {
                audible += 1;
                self.pass = packet;
            } else if audible == 0 && self.pass.is_none() {
                // a silent frame passes if nothing audible comes
                self.pass = packet;
            }
        }
        if audible > 1 || (audible == 0 && contributors > 1) {
            self.pass = None;
        }
        let mut limited = 0;
        for (o, &a) in out.iter_mut().zip(&self.acc) {
            let (s, was_limited) = soft_limit(a);
            *o = s;
            limited += usize::from(was_limited);
        }
        self.stats.frames += 1;
        self.stats.limited_samples += limited as u64;
        MixInfo {
            contributors,
            audible,
            limited,
        }
    }

    /// Counters of `track`'s input.
    #[must_use]
    pub fn input_stats(&self, track: &str) -> Option<InputStats> {
        self.inputs.get(track).map(|i| i.stats)
    }

    /// Samples queued for `track`.
    #[must_use]
    pub fn queued(&self, track: &str) -> Option<usize> {
        self.inputs.get(track).map(|i| i.queue.len())
    }

    #[must_use]
    pub fn stats(&self) -> &MixerStats {
        &self.stats
    }
}

/// The soft limiter: identity up to `LIMITER_THRESHOLD`, then a tanh knee that
/// approaches but never exceeds full scale. Returns the sample and whether it was changed.
#[inline]
#[must_use]
pub fn soft_limit(sum: i32) -> (i16, bool) {
    let magnitude = sum.unsigned_abs();
    if magnitude <= LIMITER_THRESHOLD as u32 {
        return (sum as i16, false);
    }
    let headroom = f64::from(i32::from(i16::MAX) - LIMITER_THRESHOLD);
    let over = f64::from(magnitude - LIMITER_THRESHOLD as u32);
    let limited = f64::from(LIMITER_THRESHOLD) + headroom * (over / headroom).tanh();
    let limited = (limited as i32).min(i32::from(i16::MAX));
    let s = if sum < 0 { -limited } else { limited };
    (s as i16, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_signal::{goertzel_power, sine};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds 20 ms of each source per tick and collects the output.
    struct Bench {
        mixer: Mixer,
        t0: Instant,
        tick: u64,
        out: Vec<i16>,
        infos: Vec<MixInfo>,
    }

    impl Bench {
        fn new(rate: u32, local: &str) -> Self {
            let t0 = Instant::now();
            let config = MixerConfig {
                sample_rate: rate,
                ..MixerConfig::default()
            };
            Bench {
                mixer: Mixer::new(config, local, t0),
                t0,
                tick: 0,
                out: Vec::new(),
                infos: Vec::new(),
            }
        }

        /// One 20 ms step: push what `feed` gives, then poll every due frame.
        fn step(&mut self, feed: &[(&str, &[i16])]) {
            for (track, samples) in feed {
                self.mixer.push(track, samples).expect("known track");
            }
            let now = self.t0 + ms(20 * self.tick);
            let mut frame = vec![0i16; self.mixer.frame_samples()];
            while let Some(info) = self.mixer.poll_frame(now, &mut frame) {
                self.out.extend_from_slice(&frame);
                self.infos.push(info);
            }
            self.tick += 1;
        }
    }

    #[test]
    fn mixer_three_tones_mixed_caller_excluded() {
        let rate = 8000;
        let mut b = Bench::new(rate, "sip_caller");
        b.mixer.add_track("TR_a", "alice").unwrap();
        b.mixer.add_track("TR_b", "bob").unwrap();
        b.mixer.add_track("TR_c", "carol").unwrap();
        b.mixer.add_track("TR_self", "sip_caller").unwrap();
        let tones = [
            ("TR_a", 400.0),
            ("TR_b", 700.0),
            ("TR_c", 1100.0),
            ("TR_self", 1700.0),
        ];
        let signals: Vec<Vec<i16>> = tones
            .iter()
            .map(|(_, f)| sine(*f, 0.25, rate, 160 * 100, 0.0))
            .collect();
        for k in 0..100 {
            let chunks: Vec<(&str, &[i16])> = tones
                .iter()
                .zip(&signals)
                .map(|((t, _), s)| (*t, &s[160 * k..160 * (k + 1)]))
                .collect();
            b.step(&chunks);
        }
        assert_eq!(b.out.len(), 100 * 160, "one frame per tick");
        // Prefill (40 ms): silence for the first tick, then all three.
        assert_eq!(b.infos[0].contributors, 0);
        assert!(b.infos[2..].iter().all(|i| i.contributors == 3));
        let tail = &b.out[160 * 10..];
        let power = |f: f64| goertzel_power(tail, f, rate);
        let (p4, p7, p11, pself) = (power(400.0), power(700.0), power(1100.0), power(1700.0));
        println!("mixer powers: 400 {p4:e}, 700 {p7:e}, 1100 {p11:e}, own 1700 {pself:e}");
        for p in [p7, p11] {
            assert!(p > p4 * 0.8 && p < p4 * 1.25, "{p4:e} vs {p:e}");
        }
        assert!(pself < p4 * 1e-6, "own track leaked: {pself:e}");
        let st = b.mixer.input_stats("TR_self").unwrap();
        assert_eq!((st.mixed_frames, st.excluded_samples), (0, 16_000));
        // Three tones at 0.25 sum to at most 0.75 of full scale: under the limiter.
        assert_eq!(b.mixer.stats().limited_samples, 0);
    }

    #[test]
    fn mixer_starved_input_is_muted_without_stalling() {
        let rate = 8000;
        let mut b = Bench::new(rate, "me");
        b.mixer.add_track("A", "alice").unwrap();
        b.mixer.add_track("B", "bob").unwrap();
        let a = sine(500.0, 0.3, rate, 160 * 100, 0.0);
        let bb = sine(900.0, 0.3, rate, 160 * 100, 0.0);
        for k in 0..100 {
            let fa = &a[160 * k..160 * (k + 1)];
            let fb = &bb[160 * k..160 * (k + 1)];
            // Bob stops sending after 30 ticks and comes back at 70.
            if (30..70).contains(&k) {
                b.step(&[("A", fa)]);
            } else {
                b.step(&[("A", fa), ("B", fb)]);
            }
        }
        assert_eq!(b.infos.len(), 100, "no tick was skipped or stalled");
        // While Bob is silent, Alice still plays every tick.
        let gap = &b.out[160 * 40..160 * 65];
        assert!(goertzel_power(gap, 500.0, rate) > 1e9);
        assert!(goertzel_power(gap, 900.0, rate) < goertzel_power(gap, 500.0, rate) * 1e-6);
        assert!(b.infos[40..65].iter().all(|i| i.contributors == 1));
        // Bob comes back after refilling his prefill.
        assert!(b.infos[75..].iter().all(|i| i.contributors == 2));
        let bob = b.mixer.input_stats("B").unwrap();
        assert_eq!(bob.starved_ticks, 1, "{bob:?}");
        assert_eq!(b.mixer.input_stats("A").unwrap().starved_ticks, 0);
    }

    /// Tracks that start, end and are re-published under a new sid (what a room does on
    /// an agent handover) are each picked up within the prefill, and mixed while they
    /// overlap; a removed track leaves nothing behind.
    #[test]
    fn mixer_picks_up_tracks_that_start_end_and_are_republished() {
        let rate = 8000;
        let mut b = Bench::new(rate, "me");
        let a = sine(500.0, 0.3, rate, 160 * 200, 0.0);
        let bb = sine(800.0, 0.3, rate, 160 * 200, 0.0);
        let frame = |s: &[i16], k: usize| s[160 * k..160 * (k + 1)].to_vec();
        for k in 0..200 {
            let mut feed: Vec<(String, Vec<i16>)> = Vec::new();
            // A: ticks 0..50, then unpublished at 60
            if k == 0 {
                b.mixer.add_track("TR_a", "agent-a").unwrap();
            }
            if k < 50 {
                feed.push(("TR_a".into(), frame(&a, k)));
            }
            if k == 60 {
                b.mixer.remove_track("TR_a");
            }
            // B: a new participant from tick 55 on (first push adds it, as PhoneMedia does)
            if k == 55 {
                b.mixer.add_track("TR_b", "agent-b").unwrap();
            }
            if k >= 55 {
                feed.push(("TR_b".into(), frame(&bb, k)));
            }
            // A re-publishes (new sid) at tick 120 and overlaps B
            if k == 120 {
                b.mixer.add_track("TR_a2", "agent-a").unwrap();
            }
            if k >= 120 {
                feed.push(("TR_a2".into(), frame(&a, k)));
            }
            let refs: Vec<(&str, &[i16])> = feed
                .iter()
                .map(|(t, s)| (t.as_str(), s.as_slice()))
                .collect();
            b.step(&refs);
        }
        let window = |from: usize, to: usize| &b.out[160 * from..160 * to];
        let heard = |w: &[i16], hz: f64| goertzel_power(w, hz, rate) > 1e9;
        assert!(heard(window(5, 48), 500.0) && !heard(window(5, 48), 800.0));
        assert!(heard(window(60, 118), 800.0) && !heard(window(60, 118), 500.0));
        assert!(heard(window(125, 200), 800.0) && heard(window(125, 200), 500.0));
        assert!(b.infos[57..120].iter().all(|i| i.contributors == 1));
        assert!(b.infos[122..].iter().all(|i| i.contributors == 2));
        assert_eq!(b.mixer.tracks().collect::<Vec<_>>(), ["TR_a2", "TR_b"]);
    }

    #[test]
    fn mixer_bursty_delivery_within_prefill_plays_continuously() {
        // Audio arriving 40 ms at a time every other tick fits the 40 ms prefill.
        let rate = 16_000;
        let mut b = Bench::new(rate, "me");
        b.mixer.add_track("A", "alice").unwrap();
        let a = sine(1000.0, 0.3, rate, 320 * 200, 0.0);
        for k in 0..200 {
            if k % 2 == 0 {
                b.step(&[("A", &a[320 * k..320 * (k + 2)])]);
            } else {
                b.step(&[]);
            }
        }
        assert!(b.infos[1..].iter().all(|i| i.contributors == 1));
        // Sample for sample the input, delayed by the prefill.
        assert_eq!(&b.out[320..], &a[..320 * 199]);
    }

    #[test]
    fn mixer_overflow_drops_oldest_and_catch_up_is_bounded() {
        let t0 = Instant::now();
        let mut m = Mixer::new(MixerConfig::default(), "me", t0);
        m.add_track("A", "alice").unwrap();
        let ramp: Vec<i16> = (0..4000).map(|i| i as i16).collect();
        m.push("A", &ramp).unwrap();
        assert_eq!(m.queued("A"), Some(1600), "200 ms at 8 kHz");
        assert_eq!(m.input_stats("A").unwrap().overflow_samples, 2400);
        let mut out = [0i16; 160];
        let info = m.poll_frame(t0, &mut out).unwrap();
        assert_eq!(info.contributors, 1);
        assert_eq!(out[0], 2400, "oldest samples were dropped");
        assert!(m.poll_frame(t0, &mut out).is_none());
        assert_eq!(m.poll_timeout(), t0 + ms(20));
        // 60 ms late: three frames due (20, 40, 60 ms).
        let mut n = 0;
        while m.poll_frame(t0 + ms(80), &mut out).is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
        // 10 s late: at most max_catch_up + 1 frames, the rest skipped.
        let mut n = 0;
        while m.poll_frame(t0 + ms(10_080), &mut out).is_some() {
            n += 1;
        }
        assert!(n <= 6, "{n}");
        assert!(m.stats().skipped_frames >= 490);
        assert_eq!(m.poll_timeout(), t0 + ms(10_100));
        assert_eq!(
            m.push("nope", &[0]),
            Err(MixerError::UnknownTrack("nope".into()))
        );
        m.remove_owner("alice");
        assert_eq!(m.tracks().count(), 0);
    }

    #[test]
    fn mixer_limiter_is_transparent_below_threshold_and_never_wraps() {
        for s in [-LIMITER_THRESHOLD, -1000, 0, 1, 12_345, LIMITER_THRESHOLD] {
            assert_eq!(soft_limit(s), (s as i16, false));
        }
        let mut prev = i16::MIN;
        for sum in (-200_000..=200_000).step_by(7) {
            let (s, _) = soft_limit(sum);
            assert!(s >= prev, "monotonic at {sum}");
            prev = s;
        }
        assert_eq!(soft_limit(i32::MAX).0, i16::MAX);
        assert_eq!(soft_limit(i32::MIN).0, -i16::MAX);
        // Four full-scale in-phase inputs: peaks compressed, sign and shape kept.
        let t0 = Instant::now();
        let mut m = Mixer::new(MixerConfig::default(), "me", t0);
        let tone = sine(250.0, 1.0, 8000, 640, 0.0);
        for k in 0..4 {
            let track = format!("T{k}");
            m.add_track(track.clone(), format!("p{k}")).unwrap();
            m.push(&track, &tone).unwrap();
        }
        let mut out = [0i16; 160];
        let info = m.poll_frame(t0, &mut out).unwrap();
        assert_eq!(info.contributors, 4);
        assert!(info.limited > 0);
        for (o, t) in out.iter().zip(&tone) {
            assert_eq!(o.signum(), t.signum());
            assert!(o.unsigned_abs() >= t.unsigned_abs().min(LIMITER_THRESHOLD as u16));
        }
    }

    #[test]
    fn mixer_refuses_tracks_beyond_the_limit_until_one_goes() {
        let t0 = Instant::now();
        let mut m = Mixer::new(MixerConfig::default(), "me", t0);
        for k in 0..MAX_TRACKS {
            m.add_track(format!("T{k}"), format!("p{k}")).unwrap();
        }
        assert_eq!(m.add_track("T_new", "late"), Err(MixerError::TooManyTracks));
        assert_eq!(
            m.push("T_new", &[0; 160]),
            Err(MixerError::UnknownTrack("T_new".into()))
        );
        // re-adding one that is there still resets it
        m.add_track("T0", "p0").unwrap();
        assert_eq!(m.stats().refused_tracks, 1);
        m.remove_track("T3");
        m.add_track("T_new", "late").unwrap();
        assert_eq!(m.tracks().count(), MAX_TRACKS);
    }

    /// A pushed frame's packet comes out when the tick's frame is exactly that frame of
    /// the only audible input; not when two are audible, not when the frames do not line
    /// up with the ticks; a silent second input does not count.
    #[test]
    fn mixer_passes_one_audible_track_through_only() {
        let t0 = Instant::now();
        let mut m = Mixer::new(MixerConfig::default(), "me", t0);
        let mut out = vec![0i16; 160];
        let tone = sine(440.0, 0.3, 8000, 160, 0.0);
        m.add_track("a", "alice").unwrap();
        m.add_track("b", "bob").unwrap();
        for k in 0..3u8 {
            m.push_coded("a", &tone, Some(vec![k])).unwrap();
        }
        m.poll_frame(t0, &mut out).unwrap();
        assert_eq!(m.take_passthrough(), Some(vec![0]));
        assert_eq!(m.take_passthrough(), None, "taken once");
        // bob is silent: alice still passes
        m.push_coded("b", &[3; 160], Some(vec![9])).unwrap();
        m.push_coded("b", &[3; 160], Some(vec![9])).unwrap();
        let info = m.poll_frame(t0 + ms(20), &mut out).unwrap();
        assert_eq!((info.contributors, info.audible), (2, 1));
        assert_eq!(m.take_passthrough(), Some(vec![1]));
        // bob talks: a mix
        m.push_coded("b", &tone, Some(vec![8])).unwrap();
        m.push_coded("a", &tone, Some(vec![3])).unwrap();
        let info = m.poll_frame(t0 + ms(40), &mut out).unwrap();
        assert_eq!((info.contributors, info.audible), (2, 1));
        assert_eq!(
            m.take_passthrough(),
            Some(vec![2]),
            "bob's silent frame still"
        );
        let info = m.poll_frame(t0 + ms(60), &mut out).unwrap();
        assert_eq!(info.audible, 2);
        assert_eq!(m.take_passthrough(), None);
        // frames that do not line up with the ticks never pass
        let mut m = Mixer::new(MixerConfig::default(), "me", t0);
        m.add_track("a", "alice").unwrap();
        for k in 0..6u8 {
            m.push_coded("a", &tone[..100], Some(vec![k])).unwrap();
        }
        for k in 0..3 {
            m.poll_frame(t0 + ms(20 * k), &mut out).unwrap();
            assert_eq!(m.take_passthrough(), None);
        }
    }
}
