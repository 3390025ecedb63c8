//! The test phone's audio, sans-IO: what it sends (a tone, a WAV file, or silence) as
//! 20 ms frames at the call's rate, what it heard (kept for the report and `--record`),
//! and the analysis of it: 100 ms blocks, audible or not, each with its dominant
//! frequency (`media::tone`). Tests: `phone_audio_*`.

use std::f64::consts::PI;
use std::path::Path;

use crate::media::tone::dominant_frequency;

/// A 100 ms block counts as audible at this RMS (-40 dBFS, the tests' peer's threshold).
pub const AUDIBLE_RMS: f64 = 0.01 * 32768.0;
/// Blocks the analysis works on.
pub const BLOCK_MS: u32 = 100;
/// Amplitude of the tone we send (fraction of full scale, about -10 dBFS).
const TONE_AMPLITUDE: f64 = 0.3;
/// Most audio kept (10 minutes at 16 kHz, 19 MB): a longer call keeps its first 10 minutes.
const MAX_RECORDED_SAMPLES: usize = 16_000 * 600;

/// What the phone sends.
#[derive(Debug, Clone)]
pub enum Source {
    Silence,
    Tone {
        hz: f64,
    },
    /// Mono 16-bit samples at `rate`, played once, then silence.
    Wav {
        samples: Vec<i16>,
        rate: u32,
    },
}

impl Source {
    /// Reads a WAV file (16-bit PCM; stereo is mixed down).
    pub fn wav(path: &Path) -> Result<Source, String> {
        let mut r = hound::WavReader::open(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let spec = r.spec();
        if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
            return Err(format!(
                "{}: 16-bit PCM WAV expected ({} bits, {:?})",
                path.display(),
                spec.bits_per_sample,
                spec.sample_format
            ));
        }
        let channels = usize::from(spec.channels.max(1));
        let all: Vec<i16> = r
            .samples::<i16>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let samples = all
            .chunks(channels)
            .map(|c| (c.iter().map(|&s| i32::from(s)).sum::<i32>() / c.len() as i32) as i16)
            .collect();
        Ok(Source::Wav {
            samples,
            rate: spec.sample_rate,
        })
    }

    pub fn describe(&self) -> String {
        match self {
            Source::Silence => "silence".into(),
            Source::Tone { hz } => format!("a {hz} Hz tone"),
            Source::Wav { samples, rate } => format!(
                "a WAV file ({:.1} s at {rate} Hz)",
                samples.len() as f64 / f64::from(*rate)
            ),
        }
    }
}

/// Plays a `Source` in 20 ms frames at the call's rate.
#[derive(Debug)]
pub struct Player {
    source: Source,
    rate: u32,
    /// Samples (at the call's rate) played so far.
    pos: u64,
}

impl Player {
    pub fn new(source: Source, rate: u32) -> Player {
        Player {
            source,
            rate,
            pos: 0,
        }
    }

    /// The next 20 ms; None for silence (nothing to mix).
    pub fn next_frame(&mut self) -> Option<Vec<i16>> {
        let n = self.rate as usize / 50;
        let start = self.pos;
        self.pos += n as u64;
        match &self.source {
            Source::Silence => None,
            Source::Tone { hz } => Some(
                (0..n as u64)
                    .map(|i| {
                        let t = (start + i) as f64 / f64::from(self.rate);
                        (TONE_AMPLITUDE * 32767.0 * (2.0 * PI * hz * t).sin()) as i16
                    })
                    .collect(),
            ),
            Source::Wav { samples, rate } => {
                // linear interpolation from the file's rate to the call's
                let step = f64::from(*rate) / f64::from(self.rate);
                let at = |k: u64| -> Option<i16> {
                    let x = k as f64 * step;
                    let i = x as usize;
                    let a = *samples.get(i)?;
                    let b = samples.get(i + 1).copied().unwrap_or(a);
                    let f = x - i as f64;
                    Some((f64::from(a) + (f64::from(b) - f64::from(a)) * f) as i16)
                };
                at(start)?;
                Some((0..n as u64).map(|i| at(start + i).unwrap_or(0)).collect())
            }
        }
    }
}

/// What the phone heard, at the call's rate.
#[derive(Debug, Default)]
pub struct Recording {
    pub rate: u32,
    pub samples: Vec<i16>,
}

impl Recording {
    pub fn new(rate: u32) -> Recording {
        Recording {
            rate,
            samples: Vec::new(),
        }
    }

    pub fn push(&mut self, frame: &[i16]) {
        let room = MAX_RECORDED_SAMPLES.saturating_sub(self.samples.len());
        self.samples
            .extend_from_slice(&frame[..frame.len().min(room)]);
    }

    /// Writes a mono 16-bit WAV file.
    pub fn write_wav(&self, path: &Path) -> Result<(), String> {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: self.rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let err = |e: hound::Error| format!("cannot write {}: {e}", path.display());
        let mut w = hound::WavWriter::create(path, spec).map_err(err)?;
        for &s in &self.samples {
            w.write_sample(s).map_err(err)?;
        }
        w.finalize().map_err(err)
    }

    /// The analysis of what was heard.
    pub fn analyse(&self) -> Heard {
        let block = (self.rate * BLOCK_MS / 1000) as usize;
        let mut blocks = Vec::new();
        if block > 0 {
            for (i, b) in self.samples.chunks_exact(block).enumerate() {
                let rms =
                    (b.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / b.len() as f64).sqrt();
                let hz = (rms >= AUDIBLE_RMS).then(|| dominant_frequency(b, self.rate));
                blocks.push(Block { index: i, hz });
            }
        }
        Heard { blocks }
    }
}

/// One 100 ms block: its dominant frequency if it was audible.
#[derive(Debug, Clone, Copy)]
pub struct Block {
    pub index: usize,
    pub hz: Option<f64>,
}

/// The analysis of a recording.
#[derive(Debug, Default)]
pub struct Heard {
    pub blocks: Vec<Block>,
}

/// A tone heard: its frequency (the median of its blocks), how long, from when.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ToneHeard {
    pub hz: f64,
    pub seconds: f64,
    pub first_at: f64,
}

/// Whether `hz` is `want` within 2 % (at least 10 Hz).
pub fn same_tone(hz: f64, want: f64) -> bool {
    (hz - want).abs() <= (want * 0.02).max(10.0)
}

impl Heard {
    /// Seconds of audible audio.
    pub fn audible_seconds(&self) -> f64 {
        self.blocks.iter().filter(|b| b.hz.is_some()).count() as f64 * f64::from(BLOCK_MS) / 1000.0
    }

    /// The blocks near `want`, as a tone (None if none).
    pub fn tone_near(&self, want: f64) -> Option<ToneHeard> {
        let mut hz: Vec<(usize, f64)> = self
            .blocks
            .iter()
            .filter_map(|b| b.hz.filter(|h| same_tone(*h, want)).map(|h| (b.index, h)))
            .collect();
        if hz.is_empty() {
            return None;
        }
        let first = hz[0].0;
        let n = hz.len();
        hz.sort_by(|a, b| a.1.total_cmp(&b.1));
        Some(ToneHeard {
            hz: hz[n / 2].1,
            seconds: n as f64 * f64::from(BLOCK_MS) / 1000.0,
            first_at: first as f64 * f64::from(BLOCK_MS) / 1000.0,
        })
    }

    /// The tone heard longest (blocks grouped by `same_tone` around each block's
    /// frequency), if anything was audible.
    pub fn dominant(&self) -> Option<ToneHeard> {
        let mut best: Option<ToneHeard> = None;
        for b in &self.blocks {
            let Some(hz) = b.hz else { continue };
            if let Some(t) = self.tone_near(hz)
                && best.is_none_or(|x| t.seconds > x.seconds)
            {
                best = Some(t);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_audio_tone_is_heard_as_itself() {
        let mut p = Player::new(Source::Tone { hz: 440.0 }, 8000);
        let mut rec = Recording::new(8000);
        // half a second of silence, then two seconds of tone
        for _ in 0..25 {
            rec.push(&[0; 160]);
        }
        for _ in 0..100 {
            let f = p.next_frame().unwrap();
            assert_eq!(f.len(), 160);
            rec.push(&f);
        }
        let heard = rec.analyse();
        assert_eq!(heard.blocks.len(), 25);
        assert!((heard.audible_seconds() - 2.0).abs() < 0.01);
        let t = heard.dominant().unwrap();
        assert!((t.hz - 440.0).abs() < 1.0, "{t:?}");
        assert!((t.seconds - 2.0).abs() < 0.01 && (t.first_at - 0.5).abs() < 0.01);
        assert!(heard.tone_near(1000.0).is_none());
    }

    #[test]
    fn phone_audio_longest_tone_wins_and_silence_is_nothing() {
        let mut rec = Recording::new(16000);
        let mut a = Player::new(Source::Tone { hz: 660.0 }, 16000);
        let mut b = Player::new(Source::Tone { hz: 1000.0 }, 16000);
        for _ in 0..10 {
            rec.push(&a.next_frame().unwrap());
        }
        for _ in 0..50 {
            rec.push(&b.next_frame().unwrap());
        }
        let t = rec.analyse().dominant().unwrap();
        assert!(
            (t.hz - 1000.0).abs() < 1.0 && (t.seconds - 1.0).abs() < 0.01,
            "{t:?}"
        );
        assert!(Recording::new(8000).analyse().dominant().is_none());
        assert!(Player::new(Source::Silence, 8000).next_frame().is_none());
    }

    #[test]
    fn phone_audio_wav_round_trip_and_resampling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let mut rec = Recording::new(16000);
        let mut p = Player::new(Source::Tone { hz: 500.0 }, 16000);
        for _ in 0..50 {
            rec.push(&p.next_frame().unwrap());
        }
        rec.write_wav(&path).unwrap();
        let src = Source::wav(&path).unwrap();
        // played at 8 kHz: one second of the same tone, then nothing
        let mut p8 = Player::new(src, 8000);
        let mut back = Recording::new(8000);
        while let Some(f) = p8.next_frame() {
            back.push(&f);
        }
        assert_eq!(back.samples.len(), 8000);
        let t = back.analyse().dominant().unwrap();
        assert!((t.hz - 500.0).abs() < 2.0, "{t:?}");
        assert!(Source::wav(&dir.path().join("missing.wav")).is_err());
    }
}
