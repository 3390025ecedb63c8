//! RTP packets (RFC 3550 section 5): parsing and serializing, the `Ssrc`/`SeqNo` newtypes,
//! and the unwrapping of 16-bit sequence numbers and 32-bit timestamps into extended values
//! (RFC 3550 appendix A.1).

use std::fmt;

/// Size of the fixed RTP header (RFC 3550 section 5.1).
pub const RTP_HEADER_LEN: usize = 12;
/// The only RTP version in use (RFC 3550 section 5.1, `V`).
pub const RTP_VERSION: u8 = 2;
/// At most 15 contributing sources fit in the 4-bit CC field (RFC 3550 section 5.1).
pub const MAX_CSRC: usize = 15;

/// Synchronization source identifier (RFC 3550 section 5.1, `SSRC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

impl fmt::Display for Ssrc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

/// A 16-bit RTP sequence number (RFC 3550 section 5.1), compared modulo 2^16.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// The sequence number after this one, wrapping at 2^16.
    #[must_use]
    pub fn next(self) -> SeqNo {
        SeqNo(self.0.wrapping_add(1))
    }

    /// Signed distance `self - earlier` modulo 2^16, in -32768..=32767.
    #[must_use]
    pub fn delta(self, earlier: SeqNo) -> i16 {
        self.0.wrapping_sub(earlier.0) as i16
    }
}

impl fmt::Display for SeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An extended sequence number: the 16-bit `SeqNo` plus the count of wraps above it
/// (RFC 3550 appendix A.1, `cycles + max_seq`). Totally ordered, never wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtSeqNo(pub u64);

impl ExtSeqNo {
    /// The 16-bit sequence number on the wire.
    #[must_use]
    pub fn seq(self) -> SeqNo {
        SeqNo(self.0 as u16)
    }

    /// The number of 2^16 wraps (RFC 3550 appendix A.1 `cycles`, shifted down).
    #[must_use]
    pub fn cycles(self) -> u64 {
        self.0 >> 16
    }
}

impl fmt::Display for ExtSeqNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A header extension (RFC 3550 section 5.3.1): a 16-bit profile-defined value and data
/// whose length is a whole number of 32-bit words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpExtension {
    pub profile: u16,
    pub data: Vec<u8>,
}

/// One RTP packet (RFC 3550 section 5.1), owning its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpPacket {
    pub marker: bool,
    /// 7-bit payload type (0..=127).
    pub payload_type: u8,
    pub seq: SeqNo,
    pub timestamp: u32,
    pub ssrc: Ssrc,
    /// Contributing sources, at most [`MAX_CSRC`].
    pub csrc: Vec<Ssrc>,
    pub extension: Option<RtpExtension>,
    pub payload: Vec<u8>,
    /// Number of padding octets after the payload, including the count octet itself
    /// (RFC 3550 section 5.1, `P`); 0 means no padding.
    pub padding: u8,
}

/// Why a datagram is not a valid RTP packet, or a packet cannot be serialized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    #[error("RTP packet too short: {len} bytes, need at least {need}")]
    Truncated { len: usize, need: usize },
    #[error("RTP version {0}, expected 2")]
    BadVersion(u8),
    #[error("RTP padding count is zero")]
    ZeroPadding,
    #[error("RTP padding of {padding} bytes exceeds the {available} bytes after the header")]
    PaddingTooLong { padding: usize, available: usize },
    #[error("RTP payload type {0} is out of range (0..=127)")]
    PayloadTypeOutOfRange(u8),
    #[error("{0} CSRCs, at most 15 allowed")]
    TooManyCsrc(usize),
    #[error("RTP header extension of {0} bytes is not a whole number of 32-bit words")]
    ExtensionNotWordAligned(usize),
    #[error("RTP header extension of {0} bytes is longer than 65535 words")]
    ExtensionTooLong(usize),
}

impl RtpPacket {
    /// A packet with no CSRCs, extension or padding.
    #[must_use]
    pub fn new(payload_type: u8, seq: SeqNo, timestamp: u32, ssrc: Ssrc, payload: Vec<u8>) -> Self {
        RtpPacket {
            marker: false,
            payload_type,
            seq,
            timestamp,
            ssrc,
            csrc: Vec::new(),
            extension: None,
            payload,
            padding: 0,
        }
    }

    /// Parses one datagram. Checks RFC 3550 section 5.1 (version, CSRC count, padding)
    /// and 5.3.1 (extension length) against the datagram length; never panics.
    /// Tests: `parse_*` and `rejects_*` below.
    pub fn parse(buf: &[u8]) -> Result<RtpPacket, RtpError> {
        if buf.len() < RTP_HEADER_LEN {
            return Err(RtpError::Truncated {
                len: buf.len(),
                need: RTP_HEADER_LEN,
            });
        }
        let b0 = buf[0];
        let version = b0 >> 6;
        if version != RTP_VERSION {
            return Err(RtpError::BadVersion(version));
        }
        let has_padding = b0 & 0x20 != 0;
        let has_extension = b0 & 0x10 != 0;
        let csrc_count = usize::from(b0 & 0x0f);
        let marker = buf[1] & 0x80 != 0;
        let payload_type = buf[1] & 0x7f;
        let seq = SeqNo(u16::from_be_bytes([buf[2], buf[3]]));
        let timestamp = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
        let ssrc = Ssrc(u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]));

        let mut pos = RTP_HEADER_LEN;
        let csrc_end = pos + 4 * csrc_count;
        let csrc_bytes = buf.get(pos..csrc_end).ok_or(RtpError::Truncated {
            len: buf.len(),
            need: csrc_end,
        })?;
        let csrc = csrc_bytes
            .chunks_exact(4)
            .map(|c| Ssrc(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        pos = csrc_end;

        let extension = if has_extension {
            let head_end = pos + 4;
            let head = buf.get(pos..head_end).ok_or(RtpError::Truncated {
                len: buf.len(),
                need: head_end,
            })?;
            let profile = u16::from_be_bytes([head[0], head[1]]);
            let words = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let data_end = head_end + 4 * words;
            let data = buf.get(head_end..data_end).ok_or(RtpError::Truncated {
                len: buf.len(),
                need: data_end,
            })?;
            pos = data_end;
            Some(RtpExtension {
                profile,
                data: data.to_vec(),
            })
        } else {
            None
        };

        let mut end = buf.len();
        let mut padding = 0u8;
        if has_padding {
            let count = buf[end - 1];
            if count == 0 {
                return Err(RtpError::ZeroPadding);
            }
            let available = end - pos;
            if usize::from(count) > available {
                return Err(RtpError::PaddingTooLong {
                    padding: usize::from(count),
                    available,
                });
            }
            padding = count;
            end -= usize::from(count);
        }

        Ok(RtpPacket {
            marker,
            payload_type,
            seq,
            timestamp,
            ssrc,
            csrc,
            extension,
            payload: buf[pos..end].to_vec(),
            padding,
        })
    }

    /// The serialized length of this packet.
    #[must_use]
    pub fn wire_len(&self) -> usize {
        RTP_HEADER_LEN
            + 4 * self.csrc.len()
            + self.extension.as_ref().map_or(0, |e| 4 + e.data.len())
            + self.payload.len()
            + usize::from(self.padding)
    }

    /// Appends the wire form to `out`. Padding octets are zero except the final count.
    pub fn write_to(&self, out: &mut Vec<u8>) -> Result<(), RtpError> {
        if self.payload_type > 0x7f {
            return Err(RtpError::PayloadTypeOutOfRange(self.payload_type));
        }
        if self.csrc.len() > MAX_CSRC {
            return Err(RtpError::TooManyCsrc(self.csrc.len()));
        }
        if let Some(ext) = &self.extension {
            if ext.data.len() % 4 != 0 {
                return Err(RtpError::ExtensionNotWordAligned(ext.data.len()));
            }
            if ext.data.len() / 4 > usize::from(u16::MAX) {
                return Err(RtpError::ExtensionTooLong(ext.data.len()));
            }
        }
        out.reserve(self.wire_len());
        let b0 = (RTP_VERSION << 6)
            | (u8::from(self.padding > 0) << 5)
            | (u8::from(self.extension.is_some()) << 4)
            | self.csrc.len() as u8;
        out.push(b0);
        out.push((u8::from(self.marker) << 7) | self.payload_type);
        out.extend_from_slice(&self.seq.0.to_be_bytes());
        out.extend_from_slice(&self.timestamp.to_be_bytes());
        out.extend_from_slice(&self.ssrc.0.to_be_bytes());
        for c in &self.csrc {
            out.extend_from_slice(&c.0.to_be_bytes());
        }
        if let Some(ext) = &self.extension {
            out.extend_from_slice(&ext.profile.to_be_bytes());
            out.extend_from_slice(&((ext.data.len() / 4) as u16).to_be_bytes());
            out.extend_from_slice(&ext.data);
        }
        out.extend_from_slice(&self.payload);
        if self.padding > 0 {
            out.extend(std::iter::repeat_n(0u8, usize::from(self.padding) - 1));
            out.push(self.padding);
        }
        Ok(())
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Result<Vec<u8>, RtpError> {
        let mut out = Vec::with_capacity(self.wire_len());
        self.write_to(&mut out)?;
        Ok(out)
    }
}

/// RFC 5761 section 4: on a multiplexed RTP/RTCP port, a datagram whose second octet is
/// 192..=223 (RTCP packet types 192-223, i.e. RTP payload types 64-95 with the marker set)
/// is RTCP. Test: `rtcp_mux_demultiplexing`.
#[must_use]
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

/// Places a value of `bits` width next to the previous highest extended value, taking
/// the nearest candidate (RFC 3550 appendix A.1). Returns `None` if that would fall
/// below zero (a packet from before the first one received, across a wrap).
fn unwrap_near(highest: u64, value: u64, bits: u32) -> Option<u64> {
    let modulus = 1u64 << bits;
    let half = modulus / 2;
    let low = highest & (modulus - 1);
    let forward = value.wrapping_sub(low) & (modulus - 1);
    if forward < half {
        Some(highest + forward)
    } else {
        highest.checked_sub(modulus - forward)
    }
}

/// Extends 16-bit sequence numbers to 64 bits, following the nearest-candidate rule of
/// RFC 3550 appendix A.1: a number within half the space ahead of the highest seen
/// advances (crossing a wrap increments the cycle count); one behind it is a reordered
/// packet and does not move the highest. Tests: `seq_unwrap_*`.
#[derive(Debug, Clone, Default)]
pub struct SeqUnwrapper {
    highest: Option<u64>,
}

impl SeqUnwrapper {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The extended number for `seq`, updating the highest seen. `None` only for a
    /// packet that precedes the first packet across a wrap (it can never be in order).
    pub fn unwrap(&mut self, seq: SeqNo) -> Option<ExtSeqNo> {
        let ext = self.peek(seq)?;
        if self.highest.is_none_or(|h| ext.0 > h) {
            self.highest = Some(ext.0);
        }
        Some(ext)
    }

    /// The extended number `unwrap` would return, without updating state.
    #[must_use]
    pub fn peek(&self, seq: SeqNo) -> Option<ExtSeqNo> {
        match self.highest {
            None => Some(ExtSeqNo(u64::from(seq.0))),
            Some(h) => unwrap_near(h, u64::from(seq.0), 16).map(ExtSeqNo),
        }
    }

    /// The highest extended sequence number seen.
    #[must_use]
    pub fn highest(&self) -> Option<ExtSeqNo> {
        self.highest.map(ExtSeqNo)
    }

    /// Forgets the stream (new SSRC or resynchronization).
    pub fn reset(&mut self) {
        self.highest = None;
    }
}

/// Extends 32-bit RTP timestamps to 64 bits with the same nearest-candidate rule as
/// [`SeqUnwrapper`] (a timestamp behind the highest by less than 2^31 is older).
/// Tests: `ts_unwrap_*`.
#[derive(Debug, Clone, Default)]
pub struct TimestampUnwrapper {
    highest: Option<u64>,
}

impl TimestampUnwrapper {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The extended timestamp for `ts`, updating the highest seen. `None` only for a
    /// timestamp that precedes the first one seen across a wrap.
    pub fn unwrap(&mut self, ts: u32) -> Option<u64> {
        let ext = self.peek(ts)?;
        if self.highest.is_none_or(|h| ext > h) {
            self.highest = Some(ext);
        }
        Some(ext)
    }

    /// The extended timestamp `unwrap` would return, without updating state.
    #[must_use]
    pub fn peek(&self, ts: u32) -> Option<u64> {
        match self.highest {
            None => Some(u64::from(ts)),
            Some(h) => unwrap_near(h, u64::from(ts), 32),
        }
    }

    #[must_use]
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    pub fn reset(&mut self) {
        self.highest = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RtpPacket {
        RtpPacket {
            marker: true,
            payload_type: 0,
            seq: SeqNo(0xfffe),
            timestamp: 0xdead_beef,
            ssrc: Ssrc(0x1234_5678),
            csrc: vec![Ssrc(1), Ssrc(2)],
            extension: Some(RtpExtension {
                profile: 0xbede,
                data: vec![0x10, 0xaa, 0, 0],
            }),
            payload: vec![0xff; 160],
            padding: 4,
        }
    }

    #[test]
    fn parse_minimal_header() {
        let buf = [
            0x80, 0x08, 0x00, 0x01, 0x00, 0x00, 0x00, 0xa0, 0xca, 0xfe, 0xba, 0xbe, 1, 2, 3,
        ];
        let p = RtpPacket::parse(&buf).expect("valid");
        assert!(!p.marker);
        assert_eq!(p.payload_type, 8);
        assert_eq!(p.seq, SeqNo(1));
        assert_eq!(p.timestamp, 160);
        assert_eq!(p.ssrc, Ssrc(0xcafe_babe));
        assert!(p.csrc.is_empty());
        assert_eq!(p.extension, None);
        assert_eq!(p.payload, vec![1, 2, 3]);
        assert_eq!(p.padding, 0);
    }

    #[test]
    fn parse_header_only_gives_empty_payload() {
        let buf = [0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            RtpPacket::parse(&buf).expect("valid").payload,
            Vec::<u8>::new()
        );
    }

    #[test]
    fn parse_round_trips_csrc_extension_padding_marker() {
        let p = sample();
        let bytes = p.to_bytes().expect("serializable");
        assert_eq!(bytes.len(), p.wire_len());
        assert_eq!(bytes[0], 0x80 | 0x20 | 0x10 | 2);
        assert_eq!(bytes[1], 0x80);
        assert_eq!(*bytes.last().expect("non-empty"), 4);
        assert_eq!(RtpPacket::parse(&bytes).expect("valid"), p);
    }

    #[test]
    fn parse_round_trips_every_csrc_count() {
        for n in 0..=MAX_CSRC {
            let mut p = RtpPacket::new(96, SeqNo(7), 9, Ssrc(3), vec![5; 3]);
            p.csrc = (0..n as u32).map(Ssrc).collect();
            let bytes = p.to_bytes().expect("serializable");
            assert_eq!(RtpPacket::parse(&bytes).expect("valid"), p, "{n} CSRCs");
        }
    }

    #[test]
    fn parse_padding_that_fills_everything_after_header() {
        // RFC 3550 section 5.1: padding may take all octets after the header.
        let mut buf = vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        buf.extend_from_slice(&[0, 0, 0, 4]);
        let p = RtpPacket::parse(&buf).expect("valid");
        assert!(p.payload.is_empty());
        assert_eq!(p.padding, 4);
    }

    #[test]
    fn rejects_truncated_headers() {
        let full = sample().to_bytes().expect("serializable");
        // Every prefix shorter than header + CSRCs + extension must be rejected.
        let needed = RTP_HEADER_LEN + 8 + 8;
        for len in 0..needed {
            match RtpPacket::parse(&full[..len]) {
                Err(RtpError::Truncated { .. }) => {}
                other => panic!("prefix of {len} bytes: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_bad_version() {
        for v in [0u8, 1, 3] {
            let mut buf = [0u8; 12];
            buf[0] = v << 6;
            assert_eq!(RtpPacket::parse(&buf), Err(RtpError::BadVersion(v)));
        }
    }

    #[test]
    fn rejects_padding_longer_than_payload() {
        // 12-byte header, 2 payload bytes, padding count 3 is fine; 15 is not.
        let mut buf = vec![0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9, 3];
        assert!(RtpPacket::parse(&buf).is_err());
        buf[13] = 2;
        assert_eq!(RtpPacket::parse(&buf).expect("valid").payload, vec![9u8; 0]);
        buf[13] = 200;
        assert_eq!(
            RtpPacket::parse(&buf),
            Err(RtpError::PaddingTooLong {
                padding: 200,
                available: 2
            })
        );
        // Padding must not eat into the extension either.
        let mut p = RtpPacket::new(0, SeqNo(0), 0, Ssrc(0), vec![]);
        p.extension = Some(RtpExtension {
            profile: 1,
            data: vec![0; 4],
        });
        p.padding = 1;
        let mut bytes = p.to_bytes().expect("serializable");
        *bytes.last_mut().expect("non-empty") = 2;
        assert!(matches!(
            RtpPacket::parse(&bytes),
            Err(RtpError::PaddingTooLong { .. })
        ));
    }

    #[test]
    fn rejects_zero_padding_count() {
        let buf = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];
        assert_eq!(RtpPacket::parse(&buf), Err(RtpError::ZeroPadding));
    }

    #[test]
    fn rejects_extension_length_overflow() {
        // Extension header claims 0xffff words but the datagram ends right after it.
        let buf = [
            0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xbe, 0xde, 0xff, 0xff, 1, 2,
        ];
        assert_eq!(
            RtpPacket::parse(&buf),
            Err(RtpError::Truncated {
                len: buf.len(),
                need: 16 + 4 * 0xffff
            })
        );
        // CSRC count larger than the datagram.
        let buf = [0x8f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert!(matches!(
            RtpPacket::parse(&buf),
            Err(RtpError::Truncated { need: 72, .. })
        ));
    }

    #[test]
    fn rejects_nothing_by_panicking_on_arbitrary_bytes() {
        // A cheap fuzz: every mutation of a valid packet parses or errors, never panics,
        // and whatever parses serializes back to the same bytes.
        let base = sample().to_bytes().expect("serializable");
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut buf = base.clone();
            let len = (state as usize) % (buf.len() + 1);
            buf.truncate(len);
            if !buf.is_empty() {
                let i = (state >> 20) as usize % buf.len();
                buf[i] = (state >> 40) as u8;
            }
            if let Ok(p) = RtpPacket::parse(&buf) {
                let again = p.to_bytes().expect("parsed packets serialize");
                assert_eq!(RtpPacket::parse(&again).expect("valid"), p);
            }
        }
    }

    #[test]
    fn serialize_rejects_invalid_fields() {
        let mut p = RtpPacket::new(128, SeqNo(0), 0, Ssrc(0), vec![]);
        assert_eq!(p.to_bytes(), Err(RtpError::PayloadTypeOutOfRange(128)));
        p.payload_type = 0;
        p.csrc = vec![Ssrc(0); 16];
        assert_eq!(p.to_bytes(), Err(RtpError::TooManyCsrc(16)));
        p.csrc.clear();
        p.extension = Some(RtpExtension {
            profile: 0,
            data: vec![0; 3],
        });
        assert_eq!(p.to_bytes(), Err(RtpError::ExtensionNotWordAligned(3)));
    }

    #[test]
    fn rtcp_mux_demultiplexing() {
        // RFC 5761 section 4: RTCP SR (200) and RR (201) vs RTP PT 0 and PT 96 with marker.
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201, 0, 7]));
        assert!(!is_rtcp(&[0x80, 0x00]));
        assert!(!is_rtcp(&[0x80, 0x80 | 96]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn seq_no_next_and_delta_wrap() {
        assert_eq!(SeqNo(65535).next(), SeqNo(0));
        assert_eq!(SeqNo(2).delta(SeqNo(65534)), 4);
        assert_eq!(SeqNo(65534).delta(SeqNo(2)), -4);
    }

    #[test]
    fn seq_unwrap_counts_cycles_across_wrap() {
        let mut u = SeqUnwrapper::new();
        let mut last = None;
        for i in 0..200_000u64 {
            let seq = SeqNo((65_000 + i) as u16);
            let ext = u.unwrap(seq).expect("in order");
            assert_eq!(ext.0, 65_000 + i);
            assert_eq!(ext.seq(), seq);
            last = Some(ext);
        }
        let last = last.expect("ran");
        assert_eq!(last.cycles(), (65_000 + 199_999) >> 16);
        assert_eq!(u.highest(), Some(last));
    }

    #[test]
    fn seq_unwrap_reordered_packets_across_wrap() {
        // RFC 3550 A.1: a reordered packet just before the wrap stays in the old cycle.
        let mut u = SeqUnwrapper::new();
        assert_eq!(u.unwrap(SeqNo(65534)), Some(ExtSeqNo(65534)));
        assert_eq!(u.unwrap(SeqNo(1)), Some(ExtSeqNo(65537)));
        assert_eq!(u.unwrap(SeqNo(65535)), Some(ExtSeqNo(65535)));
        assert_eq!(u.unwrap(SeqNo(0)), Some(ExtSeqNo(65536)));
        assert_eq!(u.highest(), Some(ExtSeqNo(65537)));
        assert_eq!(u.unwrap(SeqNo(2)), Some(ExtSeqNo(65538)));
        // A duplicate maps to the same extended number.
        assert_eq!(u.unwrap(SeqNo(1)), Some(ExtSeqNo(65537)));
    }

    #[test]
    fn seq_unwrap_before_first_packet_across_wrap_is_none() {
        let mut u = SeqUnwrapper::new();
        assert_eq!(u.unwrap(SeqNo(3)), Some(ExtSeqNo(3)));
        assert_eq!(u.unwrap(SeqNo(1)), Some(ExtSeqNo(1)));
        assert_eq!(u.unwrap(SeqNo(65535)), None);
        assert_eq!(u.peek(SeqNo(4)), Some(ExtSeqNo(4)));
        assert_eq!(u.highest(), Some(ExtSeqNo(3)));
        u.reset();
        assert_eq!(u.unwrap(SeqNo(65535)), Some(ExtSeqNo(65535)));
    }

    #[test]
    fn seq_unwrap_half_range_jump_is_backward() {
        let mut u = SeqUnwrapper::new();
        u.unwrap(SeqNo(40_000));
        assert_eq!(u.unwrap(SeqNo(7_231)), Some(ExtSeqNo(72_767)));
        let mut u = SeqUnwrapper::new();
        u.unwrap(SeqNo(40_000));
        assert_eq!(u.unwrap(SeqNo(7_232)), Some(ExtSeqNo(7_232)));
    }

    #[test]
    fn ts_unwrap_across_wrap() {
        let mut u = TimestampUnwrapper::new();
        let start = u32::MAX - 479;
        let mut ts = start;
        for i in 0..10u64 {
            assert_eq!(u.unwrap(ts), Some(u64::from(start) + 160 * i));
            ts = ts.wrapping_add(160);
        }
        assert_eq!(u.highest(), Some(u64::from(start) + 1440));
    }

    #[test]
    fn ts_unwrap_reordered_and_old() {
        let mut u = TimestampUnwrapper::new();
        assert_eq!(u.unwrap(100), Some(100));
        assert_eq!(u.unwrap(u32::MAX - 59), None);
        assert_eq!(u.unwrap(20), Some(20));
        assert_eq!(u.unwrap(4_000_000_000), None);
        let mut u = TimestampUnwrapper::new();
        assert_eq!(u.unwrap(u32::MAX), Some(u64::from(u32::MAX)));
        assert_eq!(u.unwrap(159), Some(u64::from(u32::MAX) + 160));
        assert_eq!(u.unwrap(u32::MAX - 160), Some(u64::from(u32::MAX) - 160));
        assert_eq!(u.highest(), Some(u64::from(u32::MAX) + 160));
    }
}
