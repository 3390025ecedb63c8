//! G.722 sub-band ADPCM at 64 kbit/s (ITU-T G.722 mode 1), 16 kHz PCM <-> one octet per
//! sample pair, for RTP payload type 9 (RFC 3551 section 4.5.2). Bit-exact with the
//! spandsp implementation of the ITU-T algorithm (test `g722_interop_with_spandsp`), except
//! that decoder output on overload saturates where spandsp 0.0.6 wraps.
//!
//! Written here rather than taken from the `audio-codec` crate (the obvious candidate): its
//! 0.4.13 G.722 starts the decoder's scale factors at 0 and the encoder's at 4x the
//! ITU-T initial values (DETL = 32, DETH = 8), so its streams differ from the reference
//! at the start of every call, and its 8 kHz mode has an operator-precedence bug.
//!
//! RFC 3551 section 4.5.2: the RTP clock rate of G.722 is 8000 Hz although the audio is
//! sampled at 16 kHz, so a 20 ms packet carries 160 octets, 320 samples, and advances the
//! timestamp by 160 (`G722_RTP_CLOCK_RATE`).

/// RTP payload type of G.722 (RFC 3551 section 6, table 4).
pub const G722_PAYLOAD_TYPE: u8 = 9;
/// The RTP timestamp rate of G.722, 8000 for historical reasons (RFC 3551 section 4.5.2).
pub const G722_RTP_CLOCK_RATE: u32 = 8000;
/// The audio sample rate of G.722.
pub const G722_SAMPLE_RATE: u32 = 16_000;

/// QMF coefficients (G.722 table 11), applied symmetrically.
const QMF: [i32; 12] = [3, -11, 12, 32, -210, 951, 3876, -805, 362, -156, 53, -11];
/// Low-band quantizer decision levels (G.722 table 6, scaled).
const Q6: [i32; 32] = [
    0, 35, 72, 110, 150, 190, 233, 276, 323, 370, 422, 473, 530, 587, 650, 714, 786, 858, 940,
    1023, 1121, 1219, 1339, 1458, 1612, 1765, 1980, 2195, 2557, 2919, 0, 0,
];
/// Low-band 6-bit codes for negative / positive differences, by quantizer interval.
const ILN: [i32; 32] = [
    0, 63, 62, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14, 13, 12, 11,
    10, 9, 8, 7, 6, 5, 4, 0,
];
const ILP: [i32; 32] = [
    0, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41, 40, 39,
    38, 37, 36, 35, 34, 33, 32, 0,
];
/// Low-band log scale factor multipliers (G.722 table 8, WL).
const WL: [i32; 8] = [-60, -30, 58, 172, 334, 538, 1198, 3042];
/// 4-bit low-band code -> WL index (RIL4).
const RL42: [i32; 16] = [0, 7, 6, 5, 4, 3, 2, 1, 7, 6, 5, 4, 3, 2, 1, 0];
/// Inverse log table (ILB).
const ILB: [i32; 32] = [
    2048, 2093, 2139, 2186, 2233, 2282, 2332, 2383, 2435, 2489, 2543, 2599, 2656, 2714, 2774, 2834,
    2896, 2960, 3025, 3091, 3158, 3228, 3298, 3371, 3444, 3520, 3597, 3676, 3756, 3838, 3922, 4008,
];
/// 4-bit inverse quantizer (QM4), used for prediction on both sides.
const QM4: [i32; 16] = [
    0, -20456, -12896, -8968, -6288, -4240, -2584, -1200, 20456, 12896, 8968, 6288, 4240, 2584,
    1200, 0,
];
/// 6-bit inverse quantizer (QM6), the decoder's low-band output at 64 kbit/s.
const QM6: [i32; 64] = [
    -136, -136, -136, -136, -24808, -21904, -19008, -16704, -14984, -13512, -12280, -11192, -10232,
    -9360, -8576, -7856, -7192, -6576, -6000, -5456, -4944, -4464, -4008, -3576, -3168, -2776,
    -2400, -2032, -1688, -1360, -1040, -728, 24808, 21904, 19008, 16704, 14984, 13512, 12280,
    11192, 10232, 9360, 8576, 7856, 7192, 6576, 6000, 5456, 4944, 4464, 4008, 3576, 3168, 2776,
    2400, 2032, 1688, 1360, 1040, 728, 432, 136, -432, -136,
];
/// High-band 2-bit codes and inverse quantizer (QM2), log scale factor multipliers (WH).
const IHN: [i32; 3] = [0, 1, 0];
const IHP: [i32; 3] = [0, 3, 2];
const QM2: [i32; 4] = [-7408, -1616, 7408, 1616];
const WH: [i32; 3] = [0, -214, 798];
const RH2: [i32; 4] = [2, 1, 2, 1];

#[inline]
fn sat16(x: i32) -> i32 {
    x.clamp(i32::from(i16::MIN), i32::from(i16::MAX))
}

/// The adaptive predictor and scale factor of one sub-band (blocks 3 and 4 of G.722).
#[derive(Debug, Clone)]
struct Band {
    /// Predicted signal (SL / SH).
    s: i32,
    /// Pole and zero predictor outputs.
    sp: i32,
    sz: i32,
    /// Reconstructed signal, partially reconstructed signal, quantized difference history.
    r: [i32; 3],
    p: [i32; 3],
    d: [i32; 7],
    /// Pole and zero predictor coefficients.
    a: [i32; 3],
    b: [i32; 7],
    /// Log scale factor (NBL / NBH) and scale factor (DETL / DETH).
    nb: i32,
    det: i32,
}

impl Band {
    fn new(det: i32) -> Self {
        Band {
            s: 0,
            sp: 0,
            sz: 0,
            r: [0; 3],
            p: [0; 3],
            d: [0; 7],
            a: [0; 3],
            b: [0; 7],
            nb: 0,
            det,
        }
    }

    /// Blocks 3L/3H LOGSCL + SCALEL (or LOGSCH + SCALEH): adapt the scale factor.
    #[inline]
    fn adapt_scale(&mut self, w: i32, nb_max: i32, shift: i32) {
        self.nb = (((self.nb * 127) >> 7) + w).clamp(0, nb_max);
        let wd1 = (self.nb >> 6) & 31;
        let wd2 = shift - (self.nb >> 11);
        let wd3 = if wd2 < 0 {
            ILB[wd1 as usize] << -wd2
        } else {
            ILB[wd1 as usize] >> wd2
        };
        self.det = wd3 << 2;
    }

    /// Block 4: reconstruction, predictor adaptation and prediction, given the
    /// quantized difference `d`.
    fn block4(&mut self, d: i32) {
        // RECONS, PARREC
        self.d[0] = d;
        self.r[0] = sat16(self.s + d);
        self.p[0] = sat16(self.sz + d);

        // UPPOL2
        let sg0 = self.p[0] >> 15;
        let sg1 = self.p[1] >> 15;
        let sg2 = self.p[2] >> 15;
        let wd1 = sat16(self.a[1] << 2);
        let wd2 = (if sg0 == sg1 { -wd1 } else { wd1 }).min(32767);
        let mut wd3 = (wd2 >> 7) + if sg0 == sg2 { 128 } else { -128 };
        wd3 += (self.a[2] * 32512) >> 15;
        let ap2 = wd3.clamp(-12288, 12288);

        // UPPOL1
        let wd1 = if sg0 == sg1 { 192 } else { -192 };
        let wd2 = (self.a[1] * 32640) >> 15;
        let limit = sat16(15360 - ap2);
        let ap1 = sat16(wd1 + wd2).clamp(-limit, limit);

        // UPZERO
        let step = if d == 0 { 0 } else { 128 };
        let sgd = d >> 15;
        let mut bp = [0i32; 7];
        for ((bp, &d), &b) in bp.iter_mut().zip(&self.d).zip(&self.b).skip(1) {
            let wd2 = if d >> 15 == sgd { step } else { -step };
            *bp = sat16(wd2 + ((b * 32640) >> 15));
        }

        // DELAYA
        for i in (1..7).rev() {
            self.d[i] = self.d[i - 1];
            self.b[i] = bp[i];
        }
        for i in (1..3).rev() {
            self.r[i] = self.r[i - 1];
            self.p[i] = self.p[i - 1];
        }
        self.a[1] = ap1;
        self.a[2] = ap2;

        // FILTEP
        let wd1 = (self.a[1] * sat16(self.r[1] + self.r[1])) >> 15;
        let wd2 = (self.a[2] * sat16(self.r[2] + self.r[2])) >> 15;
        self.sp = sat16(wd1 + wd2);

        // FILTEZ
        let mut sz = 0;
        for i in (1..7).rev() {
            sz += (self.b[i] * sat16(self.d[i] + self.d[i])) >> 15;
        }
        self.sz = sat16(sz);

        // PREDIC
        self.s = sat16(self.sp + self.sz);
    }
}

/// G.722 encoder, 64 kbit/s, 16 kHz input. One instance per stream (it is stateful).
/// Tests: `g722_*`.
#[derive(Debug, Clone)]
pub struct G722Encoder {
    x: [i32; 24],
    low: Band,
    high: Band,
}

impl Default for G722Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Encoder {
    /// A fresh encoder in the ITU-T initial state.
    #[must_use]
    pub fn new() -> Self {
        G722Encoder {
            x: [0; 24],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Encodes 16 kHz PCM, appending one octet per two samples to `out`. An odd trailing
    /// sample is ignored: feed whole 20 ms frames (320 samples).
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len() / 2);
        for pair in pcm.chunks_exact(2) {
            out.push(self.encode_pair(pair[0], pair[1]));
        }
    }

    /// Encodes one pair of 16 kHz samples to one G.722 octet.
    #[inline]
    pub fn encode_pair(&mut self, first: i16, second: i16) -> u8 {
        // Transmit QMF: split into a low and a high band at 8 kHz each.
        self.x.copy_within(2..24, 0);
        self.x[22] = i32::from(first);
        self.x[23] = i32::from(second);
        let mut sumodd = 0;
        let mut sumeven = 0;
        for i in 0..12 {
            sumodd += self.x[2 * i] * QMF[i];
            sumeven += self.x[2 * i + 1] * QMF[11 - i];
        }
        let xlow = (sumeven + sumodd) >> 14;
        let xhigh = (sumeven - sumodd) >> 14;

        // Block 1L: SUBTRA, QUANTL
        let el = sat16(xlow - self.low.s);
        let wd = if el >= 0 { el } else { -(el + 1) };
        let mut i = 1;
        while i < 30 {
            if wd < (Q6[i] * self.low.det) >> 12 {
                break;
            }
            i += 1;
        }
        let ilow = if el < 0 { ILN[i] } else { ILP[i] };
        // Block 2L INVQAL, 3L, 4L
        let ril = (ilow >> 2) as usize;
        let dlow = (self.low.det * QM4[ril]) >> 15;
        self.low.adapt_scale(WL[RL42[ril] as usize], 18432, 8);
        self.low.block4(dlow);

        // Block 1H: SUBTRA, QUANTH
        let eh = sat16(xhigh - self.high.s);
        let wd = if eh >= 0 { eh } else { -(eh + 1) };
        let mih = if wd >= (564 * self.high.det) >> 12 {
            2
        } else {
            1
        };
        let ihigh = if eh < 0 { IHN[mih] } else { IHP[mih] };
        // Block 2H INVQAH, 3H, 4H
        let dhigh = (self.high.det * QM2[ihigh as usize]) >> 15;
        self.high
            .adapt_scale(WH[RH2[ihigh as usize] as usize], 22528, 10);
        self.high.block4(dhigh);

        ((ihigh << 6) | ilow) as u8
    }
}

/// G.722 decoder, 64 kbit/s, 16 kHz output. One instance per stream.
/// Tests: `g722_*`.
#[derive(Debug, Clone)]
pub struct G722Decoder {
    x: [i32; 24],
    low: Band,
    high: Band,
}

impl Default for G722Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl G722Decoder {
    /// A fresh decoder in the ITU-T initial state.
    #[must_use]
    pub fn new() -> Self {
        G722Decoder {
            x: [0; 24],
            low: Band::new(32),
            high: Band::new(8),
        }
    }

    /// Decodes G.722 octets, appending two 16 kHz samples per octet to `out`.
    pub fn decode(&mut self, data: &[u8], out: &mut Vec<i16>) {
        out.reserve(data.len() * 2);
        for &code in data {
            let [a, b] = self.decode_octet(code);
            out.push(a);
            out.push(b);
        }
    }

    /// Decodes one octet to two 16 kHz samples.
    #[inline]
    pub fn decode_octet(&mut self, code: u8) -> [i16; 2] {
        let code = i32::from(code);
        let ilr = (code & 0x3f) as usize;
        let ihigh = ((code >> 6) & 0x03) as usize;

        // Block 5L: INVQBL, RECONS, LIMIT (the 6-bit code gives the output)
        let rlow = (self.low.s + ((self.low.det * QM6[ilr]) >> 15)).clamp(-16384, 16383);
        // Blocks 2L, 3L, 4L use the 4 most significant bits, as the encoder does.
        let ril = ilr >> 2;
        let dlowt = (self.low.det * QM4[ril]) >> 15;
        self.low.adapt_scale(WL[RL42[ril] as usize], 18432, 8);
        self.low.block4(dlowt);

        // Block 2H INVQAH, 5H RECONS, 6H LIMIT, 3H, 4H
        let dhigh = (self.high.det * QM2[ihigh]) >> 15;
        let rhigh = (dhigh + self.high.s).clamp(-16384, 16383);
        self.high.adapt_scale(WH[RH2[ihigh] as usize], 22528, 10);
        self.high.block4(dhigh);

        // Receive QMF. The shift by 11 covers the filters' DC gain (4096), the sum of
        // two filters and the 15-bit input of the ADPCM; saturated rather than wrapped.
        self.x.copy_within(2..24, 0);
        self.x[22] = rlow + rhigh;
        self.x[23] = rlow - rhigh;
        let mut xout1 = 0;
        let mut xout2 = 0;
        for i in 0..12 {
            xout2 += self.x[2 * i] * QMF[i];
            xout1 += self.x[2 * i + 1] * QMF[11 - i];
        }
        [sat16(xout1 >> 11) as i16, sat16(xout2 >> 11) as i16]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_signal::{XorShift, dominant_frequency, goertzel_power, sine, snr_db};

    /// The best SNR over lags 0..40 and its lag. The QMF pair delays the signal by about
    /// 22 samples; on a pure tone a lag a whole period shorter fits as well.
    fn best_alignment(reference: &[i16], decoded: &[i16]) -> (usize, f64) {
        (0..40)
            .map(|lag| {
                let n = reference.len() - lag;
                (lag, snr_db(&reference[..n], &decoded[lag..lag + n]))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .expect("lags")
    }

    fn round_trip(pcm: &[i16]) -> (Vec<u8>, Vec<i16>) {
        let mut enc = G722Encoder::new();
        let mut dec = G722Decoder::new();
        let mut bytes = Vec::new();
        let mut out = Vec::new();
        for frame in pcm.chunks(320) {
            let start = bytes.len();
            enc.encode(frame, &mut bytes);
            assert_eq!(bytes.len() - start, frame.len() / 2);
            dec.decode(&bytes[start..], &mut out);
        }
        (bytes, out)
    }

    #[test]
    fn g722_tone_round_trip_keeps_frequency_and_snr() {
        // 1 s of a 1 kHz tone at -10 dBFS, 16 kHz, in 20 ms frames.
        let pcm = sine(1000.0, 0.316, 16_000, 16_000, 0.3);
        let (bytes, out) = round_trip(&pcm);
        assert_eq!(bytes.len(), 8000, "64 kbit/s");
        assert_eq!(out.len(), pcm.len());
        // Skip the first 100 ms while the ADPCM adapts.
        let skip = 1600;
        let f = dominant_frequency(&out[skip..], 16_000);
        assert!((f - 1000.0).abs() < 1.0, "dominant {f} Hz");
        let (lag, snr) = best_alignment(&pcm[skip..], &out[skip..]);
        println!("G.722 1 kHz -10 dBFS: SNR {snr:.1} dB at a delay of {lag} samples");
        assert!(snr > 30.0, "SNR {snr:.1} dB");
    }

    #[test]
    fn g722_snr_across_tones_and_levels() {
        // The high band carries 4-8 kHz with 2 bits, so tones there have a lower floor.
        for (freq, amp, floor) in [
            (300.0, 0.5, 30.0),
            (1000.0, 0.05, 30.0),
            (1000.0, 0.9, 30.0),
            (3000.0, 0.3, 30.0),
            (5000.0, 0.3, 15.0),
        ] {
            let pcm = sine(freq, amp, 16_000, 16_000, 0.0);
            let (_, out) = round_trip(&pcm);
            let f = dominant_frequency(&out[1600..], 16_000);
            assert!((f - freq).abs() < 1.0, "{freq} Hz came out at {f} Hz");
            let (lag, snr) = best_alignment(&pcm[1600..], &out[1600..]);
            println!("G.722 {freq} Hz at {amp}: SNR {snr:.1} dB, delay {lag}");
            assert!(snr > floor, "{freq} Hz at {amp}: SNR {snr:.1} dB");
        }
    }

    #[test]
    fn g722_silence_stays_quiet_and_noise_survives() {
        let (_, out) = round_trip(&[0i16; 3200]);
        assert!(out.iter().all(|&s| s.abs() <= 4), "idle noise");
        // Full-scale white noise: no panic, no wrap-around (outputs stay bounded by
        // saturation) and the decoded energy is of the same order.
        let mut rng = XorShift::new(11);
        let noise: Vec<i16> = (0..16_000).map(|_| rng.next_u64() as i16).collect();
        let (_, out) = round_trip(&noise);
        let e_in: f64 = noise.iter().map(|&s| f64::from(s).powi(2)).sum();
        let e_out: f64 = out.iter().map(|&s| f64::from(s).powi(2)).sum();
        assert!(
            e_out > e_in * 0.1 && e_out < e_in * 3.0,
            "{e_in} vs {e_out}"
        );
    }

    #[test]
    fn g722_two_tones_in_both_bands() {
        // 1 kHz in the low band and 6 kHz in the high band both survive; 3.5 kHz (absent)
        // stays far below.
        let a = sine(1000.0, 0.3, 16_000, 16_000, 0.0);
        let b = sine(6000.0, 0.2, 16_000, 16_000, 0.0);
        let pcm: Vec<i16> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
        let (_, out) = round_trip(&pcm);
        let tail = &out[1600..];
        let p1 = goertzel_power(tail, 1000.0, 16_000);
        let p6 = goertzel_power(tail, 6000.0, 16_000);
        let p35 = goertzel_power(tail, 3500.0, 16_000);
        assert!(p6 > p1 * 0.2 && p6 < p1, "{p1:e} {p6:e}");
        assert!(p35 < p6 / 1000.0, "{p35:e} {p6:e}");
    }

    /// A tiny C program around spandsp's g722_encode/g722_decode (64 kbit/s, 16 kHz,
    /// unpacked): `h enc|dec < in > out`. Built with the system C compiler when
    /// `libspandsp-dev` is installed (scripts/install-test-deps installs it); the interop
    /// test fails, never skips, without it.
    const SPANDSP_HARNESS: &str = r#"
#include <stdio.h>
#include <stdint.h>
#include <string.h>
#include <spandsp.h>
int main(int argc, char **argv) {
    static uint8_t in[1 << 22];
    static int16_t pcm[1 << 22];
    static uint8_t code[1 << 22];
    size_t n = fread(in, 1, sizeof(in), stdin);
    if (argc < 2) return 2;
    if (strcmp(argv[1], "enc") == 0) {
        g722_encode_state_t *s = g722_encode_init(NULL, 64000, 0);
        memcpy(pcm, in, n);
        int len = g722_encode(s, code, pcm, (int)(n / 2));
        fwrite(code, 1, (size_t)len, stdout);
    } else {
        g722_decode_state_t *s = g722_decode_init(NULL, 64000, 0);
        int len = g722_decode(s, pcm, in, (int)n);
        fwrite(pcm, 2, (size_t)len, stdout);
    }
    return 0;
}
"#;

    fn spandsp_harness(dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
        const HINT: &str = "install libspandsp-dev and a C compiler (scripts/install-test-deps)";
        if !std::path::Path::new("/usr/include/spandsp/g722.h").exists() {
            return Err(format!("spandsp headers not found: {HINT}"));
        }
        let src = dir.join("g722_harness.c");
        let bin = dir.join("g722_harness");
        std::fs::write(&src, SPANDSP_HARNESS).map_err(|e| e.to_string())?;
        let status = std::process::Command::new("cc")
            .arg("-O1")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .arg("-lspandsp")
            .status()
            .map_err(|e| format!("cannot run cc: {e}: {HINT}"))?;
        if !status.success() {
            return Err(format!("building the spandsp harness failed: {HINT}"));
        }
        Ok(bin)
    }

    fn run(bin: &std::path::Path, mode: &str, input: &[u8]) -> Vec<u8> {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let mut child = Command::new(bin)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn harness");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write");
        let out = child.wait_with_output().expect("harness output");
        assert!(out.status.success());
        out.stdout
    }

    #[test]
    fn g722_interop_with_spandsp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = spandsp_harness(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        // Tones, a sweep of levels, silence and noise: exercises both bands, the scale
        // factor limits and the predictor limits.
        let mut pcm = sine(1000.0, 0.3, 16_000, 8000, 0.0);
        pcm.extend(sine(440.0, 0.9, 16_000, 8000, 0.0));
        pcm.extend(sine(6500.0, 0.5, 16_000, 8000, 0.0));
        pcm.extend(std::iter::repeat_n(0, 3200));
        let mut rng = XorShift::new(3);
        pcm.extend((0..16_000).map(|i| {
            let level = (i / 1600 + 1) as u64; // rising noise level
            ((rng.next_u64() % (6000 * level)) as i64 - (3000 * level) as i64) as i16
        }));
        let pcm_bytes: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();

        let theirs = run(&bin, "enc", &pcm_bytes);
        let (ours, our_pcm) = round_trip(&pcm);
        assert_eq!(theirs.len(), ours.len());
        let first_diff = theirs.iter().zip(&ours).position(|(a, b)| a != b);
        assert_eq!(first_diff, None, "encoders differ");

        // Their decoder on our stream equals our decoder on it, sample for sample.
        let decoded: Vec<i16> = run(&bin, "dec", &ours)
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(decoded.len(), our_pcm.len());
        // spandsp 0.0.6 casts the QMF output to int16 where we saturate (as WebRTC and
        // later spandsp do), so on overload it wraps to the opposite sign. Anything else
        // must match exactly.
        let diffs: Vec<(usize, i16, i16)> = decoded
            .iter()
            .zip(&our_pcm)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i, *a, *b))
            .collect();
        for &(i, theirs, ours) in &diffs {
            let wrapped = (ours == i16::MAX && theirs < 0) || (ours == i16::MIN && theirs > 0);
            assert!(
                wrapped,
                "decoders differ at {i}: spandsp {theirs}, ours {ours}"
            );
        }
        assert!(diffs.len() < 5, "{diffs:?}");
        println!(
            "G.722: {} octets bit-exact with spandsp's encoder; decoder equal except {} \
             overload samples spandsp wraps and we saturate",
            ours.len(),
            diffs.len()
        );
    }
}
