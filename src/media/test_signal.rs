//! Test-only signal helpers: sine generation, SNR (the frequency measurement is
//! `media::tone`'s, re-exported), and a seeded xorshift PRNG for reproducible schedules.

use std::f64::consts::PI;

/// A sine of `freq` Hz at `amplitude` (fraction of full scale), `n` samples at `rate` Hz,
/// rounded to 16-bit PCM.
pub fn sine(freq: f64, amplitude: f64, rate: u32, n: usize, phase: f64) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let v =
                amplitude * 32767.0 * (2.0 * PI * freq * i as f64 / f64::from(rate) + phase).sin();
            v.round().clamp(-32768.0, 32767.0) as i16
        })
        .collect()
}

/// Signal-to-noise ratio in dB of `decoded` against `reference` (noise = the difference).
pub fn snr_db(reference: &[i16], decoded: &[i16]) -> f64 {
    assert_eq!(reference.len(), decoded.len());
    let (mut signal, mut noise) = (0.0f64, 0.0f64);
    for (&r, &d) in reference.iter().zip(decoded) {
        let r = f64::from(r);
        signal += r * r;
        noise += (f64::from(d) - r).powi(2);
    }
    if noise == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (signal / noise).log10()
}

pub use super::tone::{dominant_frequency, goertzel_power};

/// xorshift64: a tiny deterministic PRNG for seeded test schedules.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> Self {
        XorShift(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
