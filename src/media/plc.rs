//! Phone -> room playout, sans-IO: turns each `jitter::Playout` into one frame of PCM at
//! the phone rate, decoding G.711 or G.722 and concealing gaps: the last frame is
//! repeated with a linear fade to silence over `fade_frames` frames, then silence.
//!
//! Both `Lost` slots and `Empty` ticks after audio are concealed: an empty tick while
//! playing is a packet that has not arrived (or a tick held to grow the jitter buffer),
//! and a fade is what both want; a real pause ends in silence after the fade. Before the
//! first packet, output is silence. Packets whose payload type is not the stream's codec
//! (telephone-events belong to `dtmf` before the jitter buffer) are concealed too.
//! Opus phones are concealed by libopus: a lost packet from the in-band FEC of the one
//! after it when that one is already here, else Opus's own concealment (which also fades
//! out); an empty tick likewise, for `fade_frames`, then silence.

use super::g711::G711;
use super::g722::{G722_PAYLOAD_TYPE, G722Decoder};
use super::jitter::Playout;
use super::opus::PhoneDecoder;

/// Frames over which a concealment fades out (60 ms at 20 ms frames).
pub const DEFAULT_FADE_FRAMES: u32 = 3;

/// The phone leg's audio codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhoneCodec {
    G711(G711),
    /// G.722 at 64 kbit/s (16 kHz audio, 8 kHz RTP clock).
    G722,
    /// Opus (RFC 7587): 16 kHz audio here, 48 kHz RTP clock, dynamic payload type.
    Opus,
}

impl PhoneCodec {
    /// The static RTP payload type (Opus: the one we offer it on).
    #[must_use]
    pub fn payload_type(self) -> u8 {
        match self {
            PhoneCodec::G711(law) => law.payload_type(),
            PhoneCodec::G722 => G722_PAYLOAD_TYPE,
            PhoneCodec::Opus => crate::sip::sdp::OFFER_OPUS_PT,
        }
    }

    /// The audio sample rate (not the RTP clock rate).
    #[must_use]
    pub fn sample_rate(self) -> u32 {
        match self {
            PhoneCodec::G711(_) => 8000,
            PhoneCodec::G722 => 16_000,
            PhoneCodec::Opus => crate::sip::sdp::OPUS_PHONE_RATE,
        }
    }

    /// The RTP clock rate: 8000, Opus 48000.
    #[must_use]
    pub fn rtp_clock_rate(self) -> u32 {
        match self {
            PhoneCodec::Opus => super::opus::OPUS_RTP_CLOCK,
            _ => 8000,
        }
    }
}

/// What a playout frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Decoded from a packet.
    Decoded,
    /// Repeated from the last decoded frame, fading.
    Concealed,
    /// Silence: before the first packet, or after a concealment faded out.
    Silence,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlcStats {
    pub decoded: u64,
    pub concealed: u64,
    pub silence: u64,
    /// Frames whose payload type was not the codec's, or that did not decode (concealed).
    pub foreign_payloads: u64,
    /// Opus frames rebuilt from the next packet's in-band FEC (counted as concealed too).
    pub fec_recovered: u64,
}

/// Decoder plus concealment for one phone stream. Tests: `plc_*`.
#[derive(Debug)]
pub struct PlayoutDecoder {
    codec: PhoneCodec,
    /// The payload types that carry the codec (the two sides' SDP may name two).
    payload_types: [u8; 2],
    g722: G722Decoder,
    opus: Option<PhoneDecoder>,
    fade_frames: u32,
    frame_samples: usize,
    /// The last decoded frame.
    last: Vec<i16>,
    /// Concealed frames since the last decoded one.
    run: u32,
    out: Vec<i16>,
    stats: PlcStats,
}

impl PlayoutDecoder {
    /// A decoder for `codec` whose frames are `frame_samples` long (160 for G.711 and 320
    /// for G.722 at 20 ms) and whose concealments fade over `fade_frames` frames.
    #[must_use]
    pub fn new(codec: PhoneCodec, frame_samples: usize, fade_frames: u32) -> Self {
        PlayoutDecoder {
            codec,
            payload_types: [codec.payload_type(); 2],
            g722: G722Decoder::new(),
            opus: match codec {
                PhoneCodec::Opus => PhoneDecoder::new(codec.sample_rate()).ok(),
                _ => None,
            },
            fade_frames: fade_frames.max(1),
            frame_samples: frame_samples.max(1),
            last: Vec::new(),
            run: 0,
            out: Vec::with_capacity(frame_samples),
            stats: PlcStats::default(),
        }
    }

    /// The payload types the codec arrives on (the negotiated ones).
    #[must_use]
    pub fn with_payload_types(mut self, pts: [u8; 2]) -> Self {
        self.payload_types = pts;
        self
    }

    /// The frame to play for one jitter-buffer tick. A decoded frame is as long as its
    /// packet's audio; a concealed one as long as the last decoded; silence is
    /// `frame_samples` long.
    pub fn play(&mut self, playout: &Playout) -> (FrameKind, &[i16]) {
        self.play_before(playout, None)
    }

    /// `play`, knowing the payload of the packet that follows a `Lost` slot if it is
    /// already buffered (Opus rebuilds the lost one from its in-band FEC).
    pub fn play_before(&mut self, playout: &Playout, next: Option<&[u8]>) -> (FrameKind, &[i16]) {
        let kind = match playout {
            Playout::Frame(frame) if self.payload_types.contains(&frame.packet.payload_type) => {
                self.out.clear();
                let ok = match (self.codec, self.opus.as_mut()) {
                    (PhoneCodec::G711(law), _) => {
                        law.decode(&frame.packet.payload, &mut self.out);
                        true
                    }
                    (PhoneCodec::G722, _) => {
                        self.g722.decode(&frame.packet.payload, &mut self.out);
                        true
                    }
                    (PhoneCodec::Opus, Some(dec)) => {
                        dec.decode(&frame.packet.payload, &mut self.out).is_ok()
                    }
                    (PhoneCodec::Opus, None) => false,
                };
                if ok && !self.out.is_empty() {
                    self.last.clear();
                    self.last.extend_from_slice(&self.out);
                    self.run = 0;
                    self.stats.decoded += 1;
                    FrameKind::Decoded
                } else {
                    self.stats.foreign_payloads += 1;
                    self.conceal(None)
                }
            }
            Playout::Frame(_) => {
                self.stats.foreign_payloads += 1;
                self.conceal(None)
            }
            Playout::Lost { .. } => self.conceal(next),
            Playout::Empty => self.conceal(None),
        };
        (kind, &self.out)
    }

    fn conceal(&mut self, next: Option<&[u8]>) -> FrameKind {
        self.out.clear();
        if self.last.is_empty() || self.run >= self.fade_frames {
            self.out.resize(self.frame_samples, 0);
            self.stats.silence += 1;
            return FrameKind::Silence;
        }
        if let Some(dec) = self.opus.as_mut() {
            dec.conceal(next, &mut self.out);
            if next.is_some() {
                // rebuilt from FEC: as good as decoded, the fade starts over
                self.run = 0;
                self.stats.fec_recovered += 1;
            } else {
                self.run += 1;
            }
            self.stats.concealed += 1;
            return FrameKind::Concealed;
        }
        // Gain falls linearly from 1 to 0 across the whole fade, continuing from frame
        // to frame.
        let n = self.last.len() as u64;
        let total = n * u64::from(self.fade_frames);
        let start = n * u64::from(self.run);
        self.out.extend(self.last.iter().enumerate().map(|(i, &s)| {
            let remaining = total - (start + i as u64);
            (i64::from(s) * remaining as i64 / total as i64) as i16
        }));
        self.run += 1;
        self.stats.concealed += 1;
        FrameKind::Concealed
    }

    #[must_use]
    pub fn codec(&self) -> PhoneCodec {
        self.codec
    }

    #[must_use]
    pub fn stats(&self) -> &PlcStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711::G711;
    use crate::media::g722::G722Encoder;
    use crate::media::jitter::{Frame, JitterBuffer, JitterConfig};
    use crate::media::rtp::{ExtSeqNo, RtpPacket, SeqNo, Ssrc};
    use crate::media::test_signal::{XorShift, sine, snr_db};
    use std::time::{Duration, Instant};

    fn frame(seq: u16, pt: u8, payload: Vec<u8>) -> Playout {
        Playout::Frame(Frame {
            seq: ExtSeqNo(u64::from(seq)),
            packet: RtpPacket::new(pt, SeqNo(seq), 160 * u32::from(seq), Ssrc(1), payload),
        })
    }

    fn rms(s: &[i16]) -> f64 {
        (s.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / s.len() as f64).sqrt()
    }

    #[test]
    fn plc_repeats_with_fade_then_silence() {
        let law = G711::Pcmu;
        let mut d = PlayoutDecoder::new(PhoneCodec::G711(law), 160, 3);
        // Before anything arrives: silence.
        let (k, s) = d.play(&Playout::Empty);
        assert_eq!((k, s.len()), (FrameKind::Silence, 160));
        assert!(s.iter().all(|&x| x == 0));

        let pcm = sine(1000.0, 0.5, 8000, 160, 0.0);
        let mut payload = Vec::new();
        law.encode(&pcm, &mut payload);
        let (k, decoded) = d.play(&frame(1, 0, payload));
        assert_eq!(k, FrameKind::Decoded);
        let decoded = decoded.to_vec();

        let mut levels = Vec::new();
        let lost = Playout::Lost {
            seq: ExtSeqNo(2),
            timestamp: 320,
        };
        for _ in 0..3 {
            let (k, s) = d.play(&lost);
            assert_eq!(k, FrameKind::Concealed);
            assert_eq!(s.len(), 160);
            levels.push(rms(s));
        }
        // First concealed sample is the repeated one at full gain; levels fall.
        assert!(levels.windows(2).all(|w| w[1] < w[0]), "{levels:?}");
        assert!(levels[0] > rms(&decoded) * 0.7 && levels[2] < rms(&decoded) * 0.3);
        // Then silence, for Lost and Empty alike.
        for p in [&lost, &Playout::Empty] {
            let (k, s) = d.play(p);
            assert_eq!(k, FrameKind::Silence);
            assert!(s.iter().all(|&x| x == 0));
        }
        // A foreign payload type (e.g. telephone-event) is not decoded as audio.
        let (k, _) = d.play(&frame(3, 101, vec![1, 0x80, 0, 160]));
        assert_eq!(k, FrameKind::Silence);
        assert_eq!(d.stats().foreign_payloads, 1);
        // Audio resumes at full level and the fade restarts for the next gap.
        let mut payload = Vec::new();
        law.encode(&pcm, &mut payload);
        assert_eq!(d.play(&frame(4, 0, payload)).0, FrameKind::Decoded);
        assert_eq!(d.play(&Playout::Empty).0, FrameKind::Concealed);
        let st = d.stats();
        assert_eq!((st.decoded, st.concealed, st.silence), (2, 4, 4));
    }

    /// A tone through RTP with random single losses, a jitter buffer and this decoder:
    /// output is one frame per tick, and concealment beats zero-filling.
    fn lossy_run(codec: PhoneCodec, seed: u64) -> (f64, f64, u64) {
        let rate = codec.sample_rate();
        let n = (rate / 50) as usize;
        let packets = 500usize;
        let pcm = sine(1000.0, 0.3, rate, n * packets, 0.0);
        let mut g722 = G722Encoder::new();
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let mut dec = PlayoutDecoder::new(codec, n, DEFAULT_FADE_FRAMES);
        let mut rng = XorShift::new(seed);
        let mut out = Vec::new();
        let mut zero_filled = Vec::new();
        let mut first_seq = None;
        for k in 0..packets + 10 {
            if k < packets {
                let mut payload = Vec::new();
                let frame = &pcm[n * k..n * (k + 1)];
                match codec {
                    PhoneCodec::G711(law) => law.encode(frame, &mut payload),
                    PhoneCodec::G722 => g722.encode(frame, &mut payload),
                    PhoneCodec::Opus => unreachable!("Opus has tests of its own"),
                }
                let lost = k > 20 && rng.chance(5);
                if !lost {
                    let p = RtpPacket::new(
                        codec.payload_type(),
                        SeqNo(k as u16),
                        160 * k as u32,
                        Ssrc(7),
                        payload,
                    );
                    jb.push(t0 + Duration::from_millis(20 * k as u64 + 5), p);
                }
            }
            let playout = jb.pop(t0 + Duration::from_millis(20 * k as u64 + 10));
            if let Playout::Frame(f) = &playout {
                first_seq.get_or_insert(f.seq.0 as usize);
            }
            let concealed = matches!(playout, Playout::Lost { .. });
            let (_, s) = dec.play(&playout);
            assert_eq!(s.len(), n, "one frame per tick");
            if first_seq.is_some() {
                out.extend_from_slice(s);
                if concealed {
                    zero_filled.extend(std::iter::repeat_n(0, n));
                } else {
                    zero_filled.extend_from_slice(s);
                }
            }
        }
        let start = first_seq.expect("played") * n;
        let len = out.len().min(pcm.len() - start) - n * 10;
        // G.722 delays the signal by its QMFs; compare at the best lag.
        let best = |x: &[i16]| {
            (0..40)
                .map(|lag| snr_db(&pcm[start..start + len - 40], &x[lag..lag + len - 40]))
                .fold(f64::MIN, f64::max)
        };
        (best(&out), best(&zero_filled), dec.stats().concealed)
    }

    #[test]
    fn plc_beats_zero_fill_under_loss() {
        for codec in [PhoneCodec::G711(G711::Pcma), PhoneCodec::G722] {
            let (concealed, zeroed, n) = lossy_run(codec, 5);
            println!(
                "{codec:?} 5% loss: SNR concealed {concealed:.1} dB vs zero-filled {zeroed:.1} dB ({n} frames)"
            );
            assert!(n > 10);
            assert!(concealed > zeroed + 3.0, "{concealed} vs {zeroed}");
        }
    }
}
