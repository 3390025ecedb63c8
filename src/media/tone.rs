//! Tone measurement, sans-IO: the power at a frequency (Goertzel) and the dominant
//! frequency of a block of PCM. The tests' audio oracle and `roomline call`'s report of
//! what it heard use the same code.

use std::f64::consts::PI;

/// Power of `samples` at `freq` (Goertzel).
pub fn goertzel_power(samples: &[i16], freq: f64, rate: u32) -> f64 {
    let coeff = 2.0 * (2.0 * PI * freq / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    s1 * s1 + s2 * s2 - coeff * s1 * s2
}

/// The frequency with the most power between 20 Hz and Nyquist, to 0.1 Hz.
pub fn dominant_frequency(samples: &[i16], rate: u32) -> f64 {
    let best = |samples: &[i16], from: f64, to: f64, step: f64| {
        let mut f = from;
        let (mut best_f, mut best_p) = (from, f64::MIN);
        while f <= to {
            let p = goertzel_power(samples, f, rate);
            if p > best_p {
                best_p = p;
                best_f = f;
            }
            f += step;
        }
        best_f
    };
    // Coarse scan on a 50 ms block (main lobe +-20 Hz, so a 5 Hz grid cannot miss the
    // peak), then a fine scan on everything.
    let block = &samples[..samples.len().min(rate as usize / 20)];
    let coarse = best(block, 20.0, f64::from(rate) / 2.0 - 20.0, 5.0);
    best(samples, coarse - 10.0, coarse + 10.0, 0.1)
}
