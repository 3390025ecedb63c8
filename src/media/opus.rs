//! Opus, sans-IO, on the one Opus binding of the project (the `opus` crate over libopus),
//! for both edges: the encoder settings every Opus encoder here is built with (the
//! LiveKit side's and the phone leg's), and the phone leg's own codec (RFC 7587): a mono
//! encoder at the phone rate shaped by the peer's fmtp (bitrate, bandwidth, FEC, DTX),
//! and a decoder that conceals a lost packet from the next one's in-band FEC, else with
//! libopus's PLC. RTP carries Opus on a 48 kHz clock whatever the audio rate.

use crate::sip::sdp::OpusParams;
use std::sync::Mutex;
use std::time::Duration;

/// libopus state is `Send` but not `Sync`; a call task's media is borrowed across
/// awaits, so it must be `Sync`. The mutex is only ever reached through `get_mut`
/// (exclusive access, no locking).
fn exclusive<T>(m: &mut Mutex<T>) -> &mut T {
    m.get_mut().unwrap_or_else(|e| e.into_inner())
}

/// The RTP clock of Opus (RFC 7587 section 4.1).
pub const OPUS_RTP_CLOCK: u32 = 48_000;

/// Opus encoder complexity (0-10) by audio rate. Chosen by `scripts/bench/opus_quality`
/// (PESQ on spoken sentences through the phone leg and this encoder; libopus 1.6.1):
/// - 8 kHz (PCMU, PCMA): 1. PESQ 3.94 against 3.99 at 5 and 4.01 at 10 (PCMU alone
///   scores 4.04), for well under half the encoder's time: complexities 2-5 use SILK's
///   delayed-decision quantizer with 2 states, which has no SIMD version.
/// - 16 kHz (G.722, Opus phones): 6. PESQ 3.99 against 3.78 at 5 and 4.08 at 10, at the
///   cost of 5 (3 states run libopus's AVX2 quantizer); below 4 wideband speech loses
///   0.2-0.7.
pub fn complexity_for(rate_hz: u32) -> i32 {
    if rate_hz <= 8_000 { 1 } else { 6 }
}

/// How an Opus encoder is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    /// Input rate (8000, 12000, 16000, 24000 or 48000).
    pub rate_hz: u32,
    pub complexity: i32,
    pub bitrate: u32,
    /// In-band FEC, tuned for `loss_percent` expected loss.
    pub fec: bool,
    pub loss_percent: i32,
    pub dtx: bool,
    pub cbr: bool,
    /// The widest audio band to encode (the receiver's `maxplaybackrate`).
    pub max_bandwidth: opus::Bandwidth,
}

/// A mono VoIP-mode encoder with `s`.
pub fn encoder(s: &EncoderSettings) -> Result<opus::Encoder, String> {
    let mut enc = opus::Encoder::new(s.rate_hz, opus::Channels::Mono, opus::Application::Voip)
        .map_err(|e| format!("opus encoder: {e}"))?;
    let settings = [
        enc.set_bitrate(opus::Bitrate::Bits(s.bitrate as i32)),
        enc.set_inband_fec(s.fec),
        enc.set_packet_loss_perc(s.loss_percent),
        enc.set_dtx(s.dtx),
        enc.set_vbr(!s.cbr),
        enc.set_max_bandwidth(s.max_bandwidth),
        enc.set_complexity(s.complexity),
    ];
    for r in settings {
        r.map_err(|e| format!("opus encoder setting: {e}"))?;
    }
    Ok(enc)
}

/// The widest band worth encoding for a receiver that plays at most `rate` Hz.
fn bandwidth_for(rate: u32) -> opus::Bandwidth {
    match rate {
        0..=8_000 => opus::Bandwidth::Narrowband,
        8_001..=12_000 => opus::Bandwidth::Mediumband,
        12_001..=16_000 => opus::Bandwidth::Wideband,
        16_001..=24_000 => opus::Bandwidth::Superwideband,
        _ => opus::Bandwidth::Fullband,
    }
}

/// The audio length of an Opus packet (its TOC and frame count), if it parses.
pub fn packet_duration(payload: &[u8]) -> Option<Duration> {
    let samples = opus::packet::get_nb_samples(payload, OPUS_RTP_CLOCK).ok()?;
    Some(Duration::from_micros(
        samples as u64 * 1_000_000 / u64::from(OPUS_RTP_CLOCK),
    ))
}

/// Whether an Opus packet can be forwarded as is where `frame` of mono audio is due
/// (passthrough, issue 19): it parses, lasts exactly `frame` and is mono (RFC 6716
/// section 3.1: the TOC's `s` bit), as our fmtp (`stereo=0`) asks of both sides.
pub fn passable(payload: &[u8], frame: Duration) -> bool {
    payload.first().is_some_and(|toc| toc & 0x04 == 0) && packet_duration(payload) == Some(frame)
}

/// The phone leg's Opus encoder (room -> phone): mono at the phone rate, at most the
/// bitrate and band the peer asks for, FEC if it can use it, DTX if it prefers it.
pub struct PhoneEncoder {
    enc: Mutex<opus::Encoder>,
    buf: Vec<u8>,
    dtx: bool,
}

impl std::fmt::Debug for PhoneEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneEncoder")
            .field("dtx", &self.dtx)
            .finish()
    }
}

impl PhoneEncoder {
    pub fn new(rate_hz: u32, peer: &OpusParams) -> Result<PhoneEncoder, String> {
        let enc = encoder(&EncoderSettings {
            rate_hz,
            complexity: complexity_for(rate_hz),
            bitrate: peer.send_bitrate(),
            fec: peer.use_inband_fec,
            loss_percent: if peer.use_inband_fec { 5 } else { 0 },
            dtx: peer.use_dtx,
            cbr: peer.cbr,
            max_bandwidth: bandwidth_for(peer.max_playback_rate),
        })?;
        Ok(PhoneEncoder {
            enc: Mutex::new(enc),
            buf: vec![0; 1500],
            dtx: peer.use_dtx,
        })
    }

    /// Encodes one frame (10, 20, 40 or 60 ms) into `out` (cleared). False when there
    /// is nothing to send: a DTX frame (RFC 7587 section 3.1.3: at most 2 octets, the
    /// receiver conceals the gap) or an encoder error.
    pub fn encode(&mut self, pcm: &[i16], out: &mut Vec<u8>) -> bool {
        out.clear();
        let Ok(n) = exclusive(&mut self.enc).encode(pcm, &mut self.buf) else {
            return false;
        };
        if self.dtx && n <= 2 {
            return false;
        }
        out.extend_from_slice(&self.buf[..n]);
        true
    }
}

/// The phone leg's Opus decoder (phone -> room), mono at the phone rate.
pub struct PhoneDecoder {
    dec: Mutex<opus::Decoder>,
    rate_hz: u32,
    buf: Vec<i16>,
    /// Samples of the last decoded packet: what a concealed one stands for.
    last_samples: usize,
}

impl std::fmt::Debug for PhoneDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhoneDecoder")
            .field("rate_hz", &self.rate_hz)
            .field("last_samples", &self.last_samples)
            .finish()
    }
}

impl PhoneDecoder {
    pub fn new(rate_hz: u32) -> Result<PhoneDecoder, String> {
        let dec = opus::Decoder::new(rate_hz, opus::Channels::Mono)
            .map_err(|e| format!("opus decoder: {e}"))?;
        Ok(PhoneDecoder {
            dec: Mutex::new(dec),
            rate_hz,
            // 120 ms, the longest packet
            buf: vec![0; rate_hz as usize * 120 / 1000],
            last_samples: rate_hz as usize / 50,
        })
    }

    /// Decodes a packet, appending its audio to `out`. Err for a corrupt packet (the
    /// caller conceals it).
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) -> Result<(), String> {
        let n = exclusive(&mut self.dec)
            .decode(payload, &mut self.buf, false)
            .map_err(|e| format!("opus decode: {e}"))?;
        self.last_samples = n.max(1);
        out.extend_from_slice(&self.buf[..n]);
        Ok(())
    }

    /// Audio for a lost packet, appended to `out`: rebuilt from the in-band FEC of the
    /// packet that follows the loss (`next`) when given and it carries FEC, else libopus's
    /// concealment. As long as the last decoded packet.
    pub fn conceal(&mut self, next: Option<&[u8]>, out: &mut Vec<i16>) {
        let samples = self.last_samples.min(self.buf.len());
        let (input, fec) = match next {
            Some(p) => (p, true),
            None => (&[][..], false),
        };
        let dec = exclusive(&mut self.dec);
        let n = match dec.decode(input, &mut self.buf[..samples], fec) {
            Ok(n) => n,
            // a next packet libopus refuses: plain concealment
            Err(_) => dec
                .decode(&[], &mut self.buf[..samples], false)
                .unwrap_or(0),
        };
        if n == 0 {
            out.extend(std::iter::repeat_n(0, samples));
        } else {
            out.extend_from_slice(&self.buf[..n]);
        }
    }

    /// Samples the last packet decoded to.
    #[must_use]
    pub fn last_samples(&self) -> usize {
        self.last_samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_signal::{dominant_frequency, sine, snr_db};

    fn params(fmtp: &str) -> OpusParams {
        OpusParams::parse(fmtp)
    }

    /// A 6 kHz tone (above what G.711's 8 kHz sampling can carry) goes through the phone
    /// leg's Opus at 16 kHz with its frequency intact.
    #[test]
    fn opus_wideband_tone_survives_the_phone_codec() {
        let p = params("maxplaybackrate=16000;useinbandfec=1");
        let mut enc = PhoneEncoder::new(16_000, &p).unwrap();
        let mut dec = PhoneDecoder::new(16_000).unwrap();
        let pcm = sine(6000.0, 0.3, 16_000, 320 * 100, 0.0);
        let mut out = Vec::new();
        let mut pkt = Vec::new();
        for frame in pcm.chunks(320) {
            assert!(enc.encode(frame, &mut pkt));
            assert_eq!(packet_duration(&pkt), Some(Duration::from_millis(20)));
            dec.decode(&pkt, &mut out).unwrap();
        }
        let f = dominant_frequency(&out[320 * 10..], 16_000);
        assert!((f - 6000.0).abs() < 20.0, "{f} Hz");
    }

    /// Loss of every 10th packet: FEC from the next packet beats plain PLC, which beats
    /// silence.
    #[test]
    fn opus_fec_beats_plc_under_loss() {
        let p = params("useinbandfec=1");
        let mut enc = PhoneEncoder::new(16_000, &p).unwrap();
        let pcm = sine(440.0, 0.3, 16_000, 320 * 200, 0.0);
        let packets: Vec<Vec<u8>> = pcm
            .chunks(320)
            .map(|f| {
                let mut out = Vec::new();
                assert!(enc.encode(f, &mut out));
                out
            })
            .collect();
        let run = |fec: bool| {
            let mut dec = PhoneDecoder::new(16_000).unwrap();
            let mut out = Vec::new();
            for (i, pkt) in packets.iter().enumerate() {
                if i > 20 && i % 10 == 0 {
                    let next = packets.get(i + 1).map(|v| v.as_slice());
                    dec.conceal(if fec { next } else { None }, &mut out);
                } else {
                    dec.decode(pkt, &mut out).unwrap();
                }
            }
            (0..320)
                .map(|lag| {
                    snr_db(
                        &pcm[3200..pcm.len() - 320],
                        &out[3200 + lag..out.len() - 320 + lag],
                    )
                })
                .fold(f64::MIN, f64::max)
        };
        let (with_fec, plc) = (run(true), run(false));
        println!("opus 10% loss: SNR with FEC {with_fec:.1} dB, PLC only {plc:.1} dB");
        assert!(with_fec > plc, "{with_fec} vs {plc}");
        assert!(plc > 0.0);
    }

    /// DTX: silence yields packets of at most 2 octets, which are not sent.
    #[test]
    fn opus_dtx_sends_nothing_for_silence() {
        let mut enc = PhoneEncoder::new(16_000, &params("usedtx=1")).unwrap();
        let mut out = Vec::new();
        let sent = (0..100).filter(|_| enc.encode(&[0; 320], &mut out)).count();
        assert!(sent < 20, "{sent} of 100 silent frames sent");
        let mut plain = PhoneEncoder::new(16_000, &params("")).unwrap();
        assert!((0..100).all(|_| plain.encode(&[0; 320], &mut out)));
    }

    #[test]
    fn corrupt_packets_are_errors_and_durations_none() {
        let mut dec = PhoneDecoder::new(16_000).unwrap();
        let mut out = Vec::new();
        // a TOC announcing code 3 with a frame count of 0 is invalid
        assert!(dec.decode(&[0x03, 0x00], &mut out).is_err());
        assert_eq!(packet_duration(&[]), None);
        dec.conceal(Some(&[0x03, 0x00]), &mut out);
        assert_eq!(out.len(), 320);
    }
}
