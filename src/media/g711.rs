//! G.711 PCMU (μ-law) and PCMA (A-law) for RTP payload types 0 and 8 (RFC 3551 section
//! 4.5.14), bit-exact with the ITU-T G.191 reference (`audio-codec-algorithms`, verified
//! here against the G.191 algorithm and the Sun g711.c written out in the tests).

use audio_codec_algorithms as aca;

/// RTP payload type of PCMU (RFC 3551 section 6, table 4).
pub const PCMU_PAYLOAD_TYPE: u8 = 0;
/// RTP payload type of PCMA (RFC 3551 section 6, table 4).
pub const PCMA_PAYLOAD_TYPE: u8 = 8;
/// G.711 samples at 8 kHz, one byte per sample (RFC 3551 section 4.5.14).
pub const G711_CLOCK_RATE: u32 = 8000;

/// Encodes a 16-bit linear sample to μ-law (G.711 table 2).
#[inline]
#[must_use]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    aca::encode_ulaw(sample)
}

/// Decodes a μ-law byte to a 16-bit linear sample (G.711 table 2).
#[inline]
#[must_use]
pub fn ulaw_to_linear(code: u8) -> i16 {
    aca::decode_ulaw(code)
}

/// Encodes a 16-bit linear sample to A-law (G.711 table 1).
#[inline]
#[must_use]
pub fn linear_to_alaw(sample: i16) -> u8 {
    aca::encode_alaw(sample)
}

/// Decodes an A-law byte to a 16-bit linear sample (G.711 table 1).
#[inline]
#[must_use]
pub fn alaw_to_linear(code: u8) -> i16 {
    aca::decode_alaw(code)
}

/// The two G.711 laws, as negotiated in SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum G711 {
    /// μ-law, "PCMU", payload type 0.
    Pcmu,
    /// A-law, "PCMA", payload type 8.
    Pcma,
}

impl G711 {
    /// The law for a static payload type (RFC 3551 table 4).
    #[must_use]
    pub fn from_payload_type(pt: u8) -> Option<G711> {
        match pt {
            PCMU_PAYLOAD_TYPE => Some(G711::Pcmu),
            PCMA_PAYLOAD_TYPE => Some(G711::Pcma),
            _ => None,
        }
    }

    #[must_use]
    pub fn payload_type(self) -> u8 {
        match self {
            G711::Pcmu => PCMU_PAYLOAD_TYPE,
            G711::Pcma => PCMA_PAYLOAD_TYPE,
        }
    }

    /// The SDP `rtpmap` encoding name.
    #[must_use]
    pub fn encoding_name(self) -> &'static str {
        match self {
            G711::Pcmu => "PCMU",
            G711::Pcma => "PCMA",
        }
    }

    /// The code of a zero sample (0xFF for μ-law, 0xD5 for A-law).
    #[must_use]
    pub fn silence(self) -> u8 {
        self.encode_sample(0)
    }

    #[inline]
    #[must_use]
    pub fn encode_sample(self, sample: i16) -> u8 {
        match self {
            G711::Pcmu => linear_to_ulaw(sample),
            G711::Pcma => linear_to_alaw(sample),
        }
    }

    #[inline]
    #[must_use]
    pub fn decode_sample(self, code: u8) -> i16 {
        match self {
            G711::Pcmu => ulaw_to_linear(code),
            G711::Pcma => alaw_to_linear(code),
        }
    }

    /// Appends the encoding of `pcm` (one byte per sample) to `out`.
    pub fn encode(self, pcm: &[i16], out: &mut Vec<u8>) {
        out.reserve(pcm.len());
        match self {
            G711::Pcmu => out.extend(pcm.iter().map(|&s| linear_to_ulaw(s))),
            G711::Pcma => out.extend(pcm.iter().map(|&s| linear_to_alaw(s))),
        }
    }

    /// Appends the decoding of `payload` (one sample per byte) to `out`.
    pub fn decode(self, payload: &[u8], out: &mut Vec<i16>) {
        out.reserve(payload.len());
        match self {
            G711::Pcmu => out.extend(payload.iter().map(|&c| ulaw_to_linear(c))),
            G711::Pcma => out.extend(payload.iter().map(|&c| alaw_to_linear(c))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_signal::{dominant_frequency, sine, snr_db};

    /// ITU-T G.191 (STL) `ulaw_compress`, written out from the reference algorithm:
    /// 1's complement of negative samples, 14-bit magnitude plus 33, segment by bit count.
    fn g191_ulaw_compress(x: i16) -> u8 {
        let x = i32::from(x);
        let mut absno = if x < 0 { (!x >> 2) + 33 } else { (x >> 2) + 33 };
        if absno > 0x1fff {
            absno = 0x1fff;
        }
        let mut i = absno >> 6;
        let mut segno = 1;
        while i != 0 {
            segno += 1;
            i >>= 1;
        }
        let high = 8 - segno;
        let low = 0x0f - ((absno >> segno) & 0x0f);
        let mut code = (high << 4) | low;
        if x >= 0 {
            code |= 0x80;
        }
        code as u8
    }

    /// ITU-T G.191 `ulaw_expand`.
    fn g191_ulaw_expand(code: u8) -> i16 {
        let sign = if code < 0x80 { -1 } else { 1 };
        let mantissa = !i32::from(code);
        let exponent = (mantissa >> 4) & 0x07;
        let segment = exponent + 1;
        let mantissa = mantissa & 0x0f;
        let step = 4 << segment;
        (sign * ((0x80 << exponent) + step * mantissa + step / 2 - 4 * 33)) as i16
    }

    /// ITU-T G.191 `alaw_compress`.
    fn g191_alaw_compress(x: i16) -> u8 {
        let x = i32::from(x);
        let mut ix = if x < 0 { !x >> 4 } else { x >> 4 };
        if ix > 15 {
            let mut iexp = 1;
            while ix > 16 + 15 {
                ix >>= 1;
                iexp += 1;
            }
            ix -= 16;
            ix += iexp << 4;
        }
        if x >= 0 {
            ix |= 0x80;
        }
        (ix ^ 0x55) as u8
    }

    /// ITU-T G.191 `alaw_expand`.
    fn g191_alaw_expand(code: u8) -> i16 {
        let ix = (i32::from(code) ^ 0x55) & 0x7f;
        let iexp = ix >> 4;
        let mut mant = ix & 0x0f;
        if iexp > 0 {
            mant += 16;
        }
        mant = (mant << 4) + 8;
        if iexp > 1 {
            mant <<= iexp - 1;
        }
        (if code > 127 { mant } else { -mant }) as i16
    }

    fn sun_search(val: i32, table: &[i32; 8]) -> usize {
        table.iter().position(|&end| val <= end).unwrap_or(8)
    }

    /// The classic Sun Microsystems g711.c `linear2ulaw` (with the 1994 update for
    /// unquantized 16-bit input): note `-pcm_val`, not the 1's complement of G.191.
    fn sun_linear2ulaw(x: i16) -> u8 {
        const SEG_UEND: [i32; 8] = [0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff, 0x1fff];
        let mut v = i32::from(x) >> 2;
        let mask = if v < 0 {
            v = -v;
            0x7f
        } else {
            0xff
        };
        v = v.min(8159) + (0x84 >> 2);
        let seg = sun_search(v, &SEG_UEND);
        if seg >= 8 {
            return 0x7f ^ mask;
        }
        (((seg as i32) << 4) | ((v >> (seg + 1)) & 0x0f)) as u8 ^ mask
    }

    /// Sun g711.c `ulaw2linear`.
    fn sun_ulaw2linear(code: u8) -> i16 {
        let u = !code;
        let mut t = ((i32::from(u) & 0x0f) << 3) + 0x84;
        t <<= (u & 0x70) >> 4;
        (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
    }

    /// Sun g711.c `linear2alaw`.
    fn sun_linear2alaw(x: i16) -> u8 {
        const SEG_AEND: [i32; 8] = [0x1f, 0x3f, 0x7f, 0xff, 0x1ff, 0x3ff, 0x7ff, 0xfff];
        let mut v = i32::from(x) >> 3;
        let mask = if v >= 0 {
            0xd5
        } else {
            v = -v - 1;
            0x55
        };
        let seg = sun_search(v, &SEG_AEND);
        if seg >= 8 {
            return 0x7f ^ mask;
        }
        let quant = if seg < 2 { v >> 1 } else { v >> seg };
        (((seg as i32) << 4) | (quant & 0x0f)) as u8 ^ mask
    }

    /// Sun g711.c `alaw2linear`.
    fn sun_alaw2linear(code: u8) -> i16 {
        let a = code ^ 0x55;
        let mut t = (i32::from(a) & 0x0f) << 4;
        let seg = (a & 0x70) >> 4;
        match seg {
            0 => t += 8,
            1 => t += 0x108,
            _ => {
                t += 0x108;
                t <<= seg - 1;
            }
        }
        (if a & 0x80 != 0 { t } else { -t }) as i16
    }

    #[test]
    fn pcmu_encode_matches_g191_for_all_65536_inputs() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(linear_to_ulaw(x), g191_ulaw_compress(x), "input {x}");
        }
    }

    #[test]
    fn pcma_encode_matches_g191_for_all_65536_inputs() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(linear_to_alaw(x), g191_alaw_compress(x), "input {x}");
        }
    }

    #[test]
    fn pcmu_and_pcma_decode_match_g191_and_sun_for_all_256_codes() {
        for c in 0..=255u8 {
            assert_eq!(
                ulaw_to_linear(c),
                g191_ulaw_expand(c),
                "μ-law code {c:#04x}"
            );
            assert_eq!(ulaw_to_linear(c), sun_ulaw2linear(c), "μ-law code {c:#04x}");
            assert_eq!(
                alaw_to_linear(c),
                g191_alaw_expand(c),
                "A-law code {c:#04x}"
            );
            assert_eq!(alaw_to_linear(c), sun_alaw2linear(c), "A-law code {c:#04x}");
        }
    }

    #[test]
    fn pcma_encode_matches_sun_g711c_for_all_65536_inputs() {
        for x in i16::MIN..=i16::MAX {
            assert_eq!(linear_to_alaw(x), sun_linear2alaw(x), "input {x}");
        }
    }

    #[test]
    fn pcmu_encode_vs_sun_g711c_differs_only_by_a_quarter_step_on_negatives() {
        // Sun's linear2ulaw negates (`-pcm_val`) where G.191 takes the 1's complement,
        // which moves every negative decision threshold by 4 (one 14-bit LSB). So Sun
        // encodes x as G.191 encodes x - 4; positive inputs agree exactly.
        let mut differing = 0u32;
        for x in i16::MIN..=i16::MAX {
            let sun = sun_linear2ulaw(x);
            if x >= 0 {
                assert_eq!(linear_to_ulaw(x), sun, "input {x}");
                continue;
            }
            let shifted = linear_to_ulaw(x.saturating_sub(4));
            assert_eq!(sun, shifted, "input {x}");
            if sun != linear_to_ulaw(x) {
                differing += 1;
                let step = (ulaw_to_linear(sun) - ulaw_to_linear(linear_to_ulaw(x))).abs();
                assert!(step <= 1024, "input {x}: codes one step apart");
            }
        }
        println!(
            "Sun g711.c μ-law encoder differs from G.191 on {differing} of 32768 negative inputs"
        );
        assert!(differing > 0 && differing < 8192);
    }

    #[test]
    fn known_codes() {
        // G.711: zero encodes to 0xFF (μ-law) and 0xD5 (A-law); full scale saturates.
        assert_eq!(G711::Pcmu.silence(), 0xff);
        assert_eq!(G711::Pcma.silence(), 0xd5);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(linear_to_alaw(i16::MAX), 0xaa);
        assert_eq!(alaw_to_linear(0xaa), 32256);
        assert_eq!(ulaw_to_linear(0xff), 0);
        assert_eq!(alaw_to_linear(0xd5), 8);
    }

    #[test]
    fn decode_then_encode_is_identity_on_codes() {
        // Every code is a fixed point of encode(decode(c)), except μ-law's negative zero
        // (0x7F) which re-encodes as positive zero (0xFF).
        for c in 0..=255u8 {
            let u = linear_to_ulaw(ulaw_to_linear(c));
            assert!(
                u == c || (c == 0x7f && u == 0xff),
                "μ-law {c:#04x} -> {u:#04x}"
            );
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "A-law {c:#04x}");
        }
    }

    #[test]
    fn payload_types_and_names() {
        // RFC 3551 section 6, table 4: PCMU is 0, PCMA is 8, both 8000 Hz.
        assert_eq!(G711::from_payload_type(0), Some(G711::Pcmu));
        assert_eq!(G711::from_payload_type(8), Some(G711::Pcma));
        assert_eq!(G711::from_payload_type(9), None);
        for law in [G711::Pcmu, G711::Pcma] {
            assert_eq!(G711::from_payload_type(law.payload_type()), Some(law));
        }
        assert_eq!(G711::Pcmu.encoding_name(), "PCMU");
        assert_eq!(G711::Pcma.encoding_name(), "PCMA");
    }

    #[test]
    fn buffer_encode_decode_matches_per_sample() {
        let pcm = sine(1000.0, 0.5, G711_CLOCK_RATE, 160, 0.3);
        for law in [G711::Pcmu, G711::Pcma] {
            let mut enc = vec![0xaa];
            law.encode(&pcm, &mut enc);
            assert_eq!(enc.len(), 161, "appends");
            let mut dec = Vec::new();
            law.decode(&enc[1..], &mut dec);
            for (i, &s) in pcm.iter().enumerate() {
                assert_eq!(enc[i + 1], law.encode_sample(s));
                assert_eq!(dec[i], law.decode_sample(enc[i + 1]));
            }
        }
    }

    /// One second of tone through encode + decode; returns (SNR dB, dominant frequency).
    fn tone_round_trip(law: G711, freq: f64, amplitude: f64) -> (f64, f64) {
        let pcm = sine(freq, amplitude, G711_CLOCK_RATE, 8000, 0.3);
        let mut enc = Vec::new();
        law.encode(&pcm, &mut enc);
        let mut dec = Vec::new();
        law.decode(&enc, &mut dec);
        (
            snr_db(&pcm, &dec),
            dominant_frequency(&dec, G711_CLOCK_RATE),
        )
    }

    #[test]
    fn tone_round_trip_keeps_frequency_and_snr() {
        // Floors sit just below the figures measured (printed with --nocapture); the
        // input is deterministic, so they are stable. 1000 Hz at 8 kHz repeats every 8
        // samples and so samples only 8 points of the quantizer; 1004 Hz (the ITU test
        // tone frequency) walks through all of them and gives the more honest figure.
        // (law, Hz, amplitude as a fraction of full scale, SNR floor dB)
        let cases = [
            (G711::Pcmu, 1000.0, 0.5, 42.0),  // measured 42.45
            (G711::Pcmu, 1000.0, 0.1, 40.5),  // measured 40.94
            (G711::Pcmu, 1000.0, 0.01, 35.5), // measured 35.92
            (G711::Pcmu, 1004.0, 0.5, 36.5),  // measured 36.71
            (G711::Pcma, 1000.0, 0.5, 42.0),  // measured 42.36
            (G711::Pcma, 1000.0, 0.1, 42.5),  // measured 43.11
            (G711::Pcma, 1000.0, 0.01, 33.5), // measured 33.93
            (G711::Pcma, 1004.0, 0.5, 38.5),  // measured 38.97
        ];
        for (law, freq, amplitude, floor) in cases {
            let (snr, measured) = tone_round_trip(law, freq, amplitude);
            let dbfs = 20.0 * amplitude.log10();
            println!(
                "{} {freq} Hz at {dbfs:.0} dBFS: SNR {snr:.2} dB, dominant {measured:.1} Hz",
                law.encoding_name()
            );
            assert!(
                (measured - freq).abs() <= 0.5,
                "{law:?} {freq} Hz came out at {measured} Hz"
            );
            assert!(
                snr > floor,
                "{law:?} {freq} Hz {dbfs:.0} dBFS: SNR {snr:.2} <= {floor}"
            );
            assert!(snr > 30.0);
        }
    }
}
