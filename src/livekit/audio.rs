//! Codecs at the LiveKit edge: Opus encoding of 20 ms phone-rate PCM, decoding of remote
//! Opus (and G.711, which other gateways may publish; G.711 itself is `media::g711`)
//! straight to the phone rate, and the
//! RFC 6464 audio level of a frame.

use super::SampleRate;
use crate::media::g711::{alaw_to_linear, ulaw_to_linear};

/// Opus RTP clock (RFC 7587: always 48 kHz).
pub(crate) const OPUS_CLOCK: u64 = 48_000;
/// RTP ticks in 20 ms at the Opus clock.
pub(crate) const TICKS_20MS: u64 = OPUS_CLOCK / 50;

/// Opus encoder complexity (0-10) for the phone's audio toward the room, by phone rate.
/// Chosen by `scripts/bench/opus_quality` (PESQ on spoken sentences through the phone
/// leg and this encoder; libopus 1.6.1):
/// - 8 kHz (PCMU, PCMA): 1. PESQ 3.94 against 3.99 at 5 and 4.01 at 10 (PCMU alone
///   scores 4.04), for well under half the encoder's time: complexities 2-5 use SILK's
///   delayed-decision quantizer with 2 states, which has no SIMD version.
/// - 16 kHz (G.722): 6. PESQ 3.99 against 3.78 at 5 and 4.08 at 10, at the cost of 5
///   (3 states run libopus's AVX2 quantizer); below 4 wideband speech loses 0.2-0.7.
const OPUS_COMPLEXITY_NARROWBAND: i32 = 1;
const OPUS_COMPLEXITY_WIDEBAND: i32 = 6;

/// The complexity Roomline encodes at for a phone rate.
pub fn opus_complexity(rate: SampleRate) -> i32 {
    match rate {
        SampleRate::Hz8000 => OPUS_COMPLEXITY_NARROWBAND,
        SampleRate::Hz16000 => OPUS_COMPLEXITY_WIDEBAND,
    }
}

/// The encoder the phone's audio goes through toward the room, at `complexity`: VoIP
/// mode, 32 kbit/s (plenty for speech at phone bandwidth), in-band FEC for 5 % expected
/// loss (helps on lossy uplinks), no DTX. Public for the benches and
/// `examples/opus_quality`, which measure exactly this configuration.
pub fn opus_encoder(rate_hz: u32, complexity: i32) -> Result<opus::Encoder, String> {
    let mut enc = opus::Encoder::new(rate_hz, opus::Channels::Mono, opus::Application::Voip)
        .map_err(|e| format!("opus encoder: {e}"))?;
    let settings = [
        enc.set_bitrate(opus::Bitrate::Bits(32_000)),
        enc.set_inband_fec(true),
        enc.set_packet_loss_perc(5),
        enc.set_dtx(false),
        enc.set_complexity(complexity),
    ];
    for r in settings {
        r.map_err(|e| format!("opus encoder setting: {e}"))?;
    }
    Ok(enc)
}

pub(crate) struct OpusEncoder {
    enc: opus::Encoder,
    out: Vec<u8>,
}

impl OpusEncoder {
    pub(crate) fn new(rate: SampleRate) -> Result<Self, String> {
        let enc = opus_encoder(rate.hz(), opus_complexity(rate))?;
        Ok(OpusEncoder {
            enc,
            out: vec![0; 1500],
        })
    }

    /// One 20 ms frame -> one Opus packet.
    pub(crate) fn encode(&mut self, pcm: &[i16]) -> Result<Vec<u8>, String> {
        let n = self
            .enc
            .encode(pcm, &mut self.out)
            .map_err(|e| format!("opus encode: {e}"))?;
        Ok(self.out[..n].to_vec())
    }
}

/// Which codec a remote track's payload is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RemoteCodec {
    Opus,
    Pcmu,
    Pcma,
}

/// Decoder for one remote track, output at the phone rate, mono.
pub(crate) struct TrackDecoder {
    rate: SampleRate,
    opus: Option<opus::Decoder>,
    buf: Vec<i16>,
}

impl TrackDecoder {
    pub(crate) fn new(rate: SampleRate) -> Self {
        TrackDecoder {
            rate,
            opus: None,
            // 120 ms at 16 kHz is the largest Opus frame
            buf: vec![0; 16_000 * 120 / 1000],
        }
    }

    pub(crate) fn decode(
        &mut self,
        codec: RemoteCodec,
        payload: &[u8],
    ) -> Result<Vec<i16>, String> {
        match codec {
            RemoteCodec::Opus => {
                if self.opus.is_none() {
                    self.opus = Some(
                        opus::Decoder::new(self.rate.hz(), opus::Channels::Mono)
                            .map_err(|e| format!("opus decoder: {e}"))?,
                    );
                }
                let dec = self.opus.as_mut().expect("just created");
                let n = dec
                    .decode(payload, &mut self.buf, false)
                    .map_err(|e| format!("opus decode: {e}"))?;
                Ok(self.buf[..n].to_vec())
            }
            RemoteCodec::Pcmu => Ok(self.widen(payload.iter().map(|&b| ulaw_to_linear(b)))),
            RemoteCodec::Pcma => Ok(self.widen(payload.iter().map(|&b| alaw_to_linear(b)))),
        }
    }

    /// `samples` of audio for a lost packet, continuing the stream: Opus rebuilds it
    /// from the in-band FEC of the packet that follows the loss (`next`) when there is
    /// one, else its packet loss concealment extrapolates; G.711 has neither, silence
    /// stands in. `samples` is a whole Opus frame (2.5 ms multiples), normally the last
    /// decoded frame's length.
    pub(crate) fn conceal(
        &mut self,
        codec: RemoteCodec,
        next: Option<&[u8]>,
        samples: usize,
    ) -> Result<Vec<i16>, String> {
        let samples = samples.min(self.buf.len());
        match (codec, self.opus.as_mut()) {
            (RemoteCodec::Opus, Some(dec)) => {
                let (input, fec) = match next {
                    Some(p) => (p, true),
                    None => (&[][..], false),
                };
                let n = dec
                    .decode(input, &mut self.buf[..samples], fec)
                    .map_err(|e| format!("opus concealment: {e}"))?;
                Ok(self.buf[..n].to_vec())
            }
            _ => Ok(vec![0; samples]),
        }
    }

    /// 8 kHz samples -> phone rate (linear interpolation when the phone side is 16 kHz).
    fn widen(&self, samples: impl Iterator<Item = i16>) -> Vec<i16> {
        let s: Vec<i16> = samples.collect();
        match self.rate {
            SampleRate::Hz8000 => s,
            SampleRate::Hz16000 => {
                let mut out = Vec::with_capacity(s.len() * 2);
                for (i, &x) in s.iter().enumerate() {
                    let next = *s.get(i + 1).unwrap_or(&x);
                    out.push(x);
                    out.push(((x as i32 + next as i32) / 2) as i16);
                }
                out
            }
        }
    }
}

/// RFC 6464 audio level of a frame in -dBov, 0 (loudest) ..= 127 (silence).
pub(crate) fn audio_level_dbov(pcm: &[i16]) -> u8 {
    if pcm.is_empty() {
        return 127;
    }
    let sum: f64 = pcm.iter().map(|&s| (s as f64) * (s as f64)).sum();
    let rms = (sum / pcm.len() as f64).sqrt() / 32768.0;
    if rms <= 0.0 {
        return 127;
    }
    let db = -20.0 * rms.log10();
    db.round().clamp(0.0, 127.0) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(freq: f64, rate: u32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| {
                (0.3 * 32767.0 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin())
                    as i16
            })
            .collect()
    }

    #[test]
    fn g711_payloads_widen_to_the_phone_rate() {
        let mut narrow = TrackDecoder::new(SampleRate::Hz8000);
        let mut wide = TrackDecoder::new(SampleRate::Hz16000);
        // mu-law 0x80 / 0x00 are the extremes, 0xff silence
        let payload = [0x80u8, 0x00, 0xff];
        assert_eq!(
            narrow.decode(RemoteCodec::Pcmu, &payload).unwrap(),
            vec![32124, -32124, 0]
        );
        let w = wide.decode(RemoteCodec::Pcmu, &payload).unwrap();
        assert_eq!(w.len(), 6);
        assert_eq!((w[0], w[1], w[2]), (32124, 0, -32124));
        assert_eq!(narrow.decode(RemoteCodec::Pcma, &[0xd5]).unwrap(), vec![8]);
    }

    #[test]
    fn audio_level_of_full_scale_and_silence() {
        assert_eq!(audio_level_dbov(&[0; 320]), 127);
        let square: Vec<i16> = (0..320)
            .map(|i| if i % 2 == 0 { 32767 } else { -32767 })
            .collect();
        assert_eq!(audio_level_dbov(&square), 0);
        // a 0.3 peak sine has RMS 0.212 -> 13.5 dBov
        let l = audio_level_dbov(&tone(1000.0, 16000, 320));
        assert!((13..=14).contains(&l), "{l}");
    }

    /// A 1 kHz tone through Opus at each phone rate (the encoder settings the
    /// participant publishes with): the frequency survives and the waveform SNR, after
    /// aligning for the codec's delay, stays above a floor set a few dB under what was
    /// measured (8 kHz: 21.5 dB at complexity 1, 16 kHz: 19.2 dB at complexity 6, on
    /// this tone at 32 kbit/s; Opus is perceptual, so waveform SNR is lower than G.711's;
    /// speech quality is measured by `scripts/bench/opus_quality`).
    #[test]
    fn opus_tone_round_trip_keeps_frequency_and_snr() {
        use crate::media::test_signal::{dominant_frequency, sine, snr_db};
        for (rate, floor) in [(SampleRate::Hz8000, 16.0), (SampleRate::Hz16000, 16.0)] {
            let mut enc = OpusEncoder::new(rate).unwrap();
            let mut dec = TrackDecoder::new(rate);
            let n = rate.samples_per_20ms();
            let pcm = sine(1000.0, 0.3, rate.hz(), n * 100, 0.0);
            let mut out = Vec::new();
            for frame in pcm.chunks(n) {
                let pkt = enc.encode(frame).unwrap();
                out.extend(dec.decode(RemoteCodec::Opus, &pkt).unwrap());
            }
            let f = dominant_frequency(&out[n * 10..], rate.hz());
            assert!((f - 1000.0).abs() < 10.0, "{f} Hz at {rate:?}");
            // skip the first 200 ms, then find the codec's delay
            let skip = n * 10;
            let best = (0..n)
                .map(|lag| {
                    snr_db(
                        &pcm[skip..pcm.len() - n],
                        &out[skip + lag..out.len() - n + lag],
                    )
                })
                .fold(f64::MIN, f64::max);
            println!("opus at {} Hz: 1 kHz SNR {best:.1} dB", rate.hz());
            assert!(best > floor, "SNR {best:.1} dB at {rate:?}");
        }
    }

    #[test]
    fn opus_round_trip_at_both_phone_rates() {
        for rate in [SampleRate::Hz8000, SampleRate::Hz16000] {
            let mut enc = OpusEncoder::new(rate).unwrap();
            let mut dec = TrackDecoder::new(rate);
            let n = rate.samples_per_20ms();
            let pcm = tone(440.0, rate.hz(), n * 10);
            let mut out = Vec::new();
            for frame in pcm.chunks(n) {
                let pkt = enc.encode(frame).unwrap();
                assert!(!pkt.is_empty() && pkt.len() < 400);
                let samples = dec.decode(RemoteCodec::Opus, &pkt).unwrap();
                assert_eq!(samples.len(), n);
                out.extend(samples);
            }
            // energy survives the codec
            let tail = &out[n * 5..];
            let rms =
                (tail.iter().map(|&s| (s as f64).powi(2)).sum::<f64>() / tail.len() as f64).sqrt();
            assert!(rms > 3000.0, "rms {rms} at {:?}", rate);
        }
    }
}
