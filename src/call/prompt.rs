//! Tones a call plays to the phone itself (the PIN prompt, the wrong-PIN signal), as
//! 20 ms frames at the phone's rate, pushed into the mixer like a room track. Sans-IO.
//! Tests: `prompt_*`.

use std::f64::consts::PI;

/// One segment: up to two frequencies (0 = none; both 0 = silence) for a number of
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment {
    pub hz: f64,
    pub hz2: f64,
    pub ms: u32,
}

const fn tone(hz: f64, ms: u32) -> Segment {
    Segment { hz, hz2: 0.0, ms }
}

/// A short rising two-tone beep: "enter your PIN".
pub const PIN_PROMPT: &[Segment] = &[tone(660.0, 160), tone(0.0, 40), tone(880.0, 200)];

/// Three low beeps: "wrong PIN".
pub const PIN_WRONG: &[Segment] = &[
    tone(400.0, 150),
    tone(0.0, 100),
    tone(400.0, 150),
    tone(0.0, 100),
    tone(400.0, 150),
];

/// The North American ringback tone (440 + 480 Hz, 2 s on, 4 s off), played into the
/// room while an outbound call rings (`play_dialtone`).
pub const RINGBACK: &[Segment] = &[
    Segment {
        hz: 440.0,
        hz2: 480.0,
        ms: 2000,
    },
    tone(0.0, 4000),
];

/// What the phone hears while the call rides out a LiveKit outage
/// (`livekit.hold_tone`): a short 620 Hz beep every 4 s, far from any tone a test or a
/// carrier uses.
pub const HOLD: &[Segment] = &[tone(620.0, 250), tone(0.0, 3750)];

/// Plays segments frame by frame.
#[derive(Debug, Clone)]
pub struct Prompt {
    rate: u32,
    samples: Vec<i16>,
    pos: usize,
}

impl Prompt {
    pub fn new(segments: &[Segment], rate: u32) -> Prompt {
        let mut samples = Vec::new();
        for s in segments {
            let n = (u64::from(rate) * u64::from(s.ms) / 1000) as usize;
            for i in 0..n {
                let v = if s.hz > 0.0 {
                    // -12 dBFS with 5 ms ramps against clicks
                    let ramp = (rate as usize / 200).max(1);
                    let env = (i.min(n - 1 - i).min(ramp) as f64) / ramp as f64;
                    let t = i as f64 / f64::from(rate);
                    let mut x = (2.0 * PI * s.hz * t).sin();
                    if s.hz2 > 0.0 {
                        x = 0.5 * (x + (2.0 * PI * s.hz2 * t).sin());
                    }
                    0.25 * env * x * 32767.0
                } else {
                    0.0
                };
                samples.push(v as i16);
            }
        }
        Prompt {
            rate,
            samples,
            pos: 0,
        }
    }

    /// The next 20 ms frame, starting over at the end.
    pub fn next_frame_looped(&mut self) -> Vec<i16> {
        if self.pos >= self.samples.len() {
            self.pos = 0;
        }
        self.next_frame().unwrap_or_default()
    }

    /// The next 20 ms frame (padded with silence at the end), or None when done.
    pub fn next_frame(&mut self) -> Option<Vec<i16>> {
        if self.pos >= self.samples.len() {
            return None;
        }
        let n = self.rate as usize / 50;
        let end = (self.pos + n).min(self.samples.len());
        let mut f = self.samples[self.pos..end].to_vec();
        f.resize(n, 0);
        self.pos += n;
        Some(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_frames_cover_the_segments() {
        let mut p = Prompt::new(PIN_PROMPT, 8000);
        let mut frames = 0;
        let mut peak = 0i16;
        while let Some(f) = p.next_frame() {
            assert_eq!(f.len(), 160);
            peak = peak.max(f.iter().copied().map(i16::abs).max().unwrap());
            frames += 1;
        }
        assert_eq!(frames, 20, "400 ms in 20 ms frames");
        assert!(peak > 7000 && peak < 9000, "about -12 dBFS: {peak}");
        let mut w = Prompt::new(PIN_WRONG, 16000);
        assert_eq!(w.next_frame().unwrap().len(), 320);
        // the hold tone goes round: 4 s is 200 frames, the beep is the first 250 ms
        let mut h = Prompt::new(HOLD, 8000);
        let loud: Vec<bool> = (0..400)
            .map(|_| h.next_frame_looped().iter().any(|s| s.abs() > 1000))
            .collect();
        // 250 ms is 12.5 frames: 13 with sound
        assert_eq!(loud.iter().filter(|l| **l).count(), 2 * 13, "{loud:?}");
        assert!(loud[0] && loud[200] && !loud[100]);
    }
}
