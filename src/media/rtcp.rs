//! RTCP for the phone leg (RFC 3550 section 6), sans-IO: parsing compound packets (SR,
//! RR, SDES CNAME, BYE; others skipped), building SR/RR + SDES CNAME compounds and BYE,
//! and `RtcpSession`, which keeps the reception statistics of RFC 3550 appendix A.3,
//! LSR/DLSR from the phone's sender reports, round-trip time from the phone's reports on
//! our stream, the report timer, and the per-call `RtcpStats` for metrics and logs.
//!
//! Time comes in twice: `Instant` for intervals and NTP wall-clock time (`NtpTime`, from a
//! `SystemTime` the caller reads) for what goes on the wire. Interarrival jitter is the
//! jitter buffer's (`JitterBuffer::jitter_rtp_units`), passed in when a report is built.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::rtp::{RtpPacket, SeqUnwrapper, Ssrc};

/// RTCP packet types (RFC 3550 section 12.1).
pub const RTCP_SR: u8 = 200;
pub const RTCP_RR: u8 = 201;
pub const RTCP_SDES: u8 = 202;
pub const RTCP_BYE: u8 = 203;
pub const RTCP_APP: u8 = 204;
/// SDES item type CNAME (RFC 3550 section 6.5.1).
pub const SDES_CNAME: u8 = 1;
/// The minimum report interval (RFC 3550 section 6.2).
pub const MIN_REPORT_INTERVAL: Duration = Duration::from_secs(5);
/// At most 31 report blocks fit one SR/RR (5-bit count).
const MAX_REPORT_BLOCKS: usize = 31;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp: seconds since 1900 in the high 32 bits, fraction in the low.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NtpTime(pub u64);

impl NtpTime {
    /// The NTP time of a wall-clock reading.
    #[must_use]
    pub fn from_system_time(t: SystemTime) -> Self {
        let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = since.as_secs() + NTP_UNIX_OFFSET;
        let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
        NtpTime((secs << 32) | frac)
    }

    /// The middle 32 bits, as LSR carries them (RFC 3550 section 6.4.1).
    #[must_use]
    pub fn middle32(self) -> u32 {
        (self.0 >> 16) as u32
    }
}

/// A reception report block (RFC 3550 section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// The source reported on.
    pub ssrc: Ssrc,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost, a signed 24-bit value (duplicates can make it negative).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub highest_seq: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP time of the last SR from the source (0: none).
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

/// The sender info of an SR (RFC 3550 section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderInfo {
    pub ntp: NtpTime,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One packet of a compound RTCP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: Ssrc,
        info: SenderInfo,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: Ssrc,
        reports: Vec<ReportBlock>,
    },
    /// SDES: the CNAME of each chunk that has one.
    SourceDescription { cnames: Vec<(Ssrc, String)> },
    Bye {
        sources: Vec<Ssrc>,
        reason: Option<String>,
    },
    /// APP, feedback and others: skipped.
    Other { packet_type: u8 },
}

/// Why an RTCP packet was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtcpError {
    #[error("RTCP packet shorter than its header or length")]
    Truncated,
    #[error("RTCP version is not 2")]
    BadVersion,
    #[error("RTCP {0} packet body inconsistent with its count")]
    BadBody(u8),
    #[error("RTCP padding larger than the packet")]
    BadPadding,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn parse_block(b: &[u8]) -> ReportBlock {
    // Cumulative lost: 24-bit two's complement.
    let lost = (i32::from(b[5]) << 16) | (i32::from(b[6]) << 8) | i32::from(b[7]);
    let lost = (lost << 8) >> 8;
    ReportBlock {
        ssrc: Ssrc(be32(&b[0..4])),
        fraction_lost: b[4],
        cumulative_lost: lost,
        highest_seq: be32(&b[8..12]),
        jitter: be32(&b[12..16]),
        lsr: be32(&b[16..20]),
        dlsr: be32(&b[20..24]),
    }
}

fn parse_blocks(body: &[u8], count: usize, pt: u8) -> Result<Vec<ReportBlock>, RtcpError> {
    // Profile-specific extensions may follow the blocks (RFC 3550 section 6.4.1).
    if body.len() < 24 * count {
        return Err(RtcpError::BadBody(pt));
    }
    Ok(body.chunks_exact(24).take(count).map(parse_block).collect())
}

fn parse_sdes(body: &[u8], count: usize) -> Result<Vec<(Ssrc, String)>, RtcpError> {
    let mut cnames = Vec::new();
    let mut at = 0;
    for _ in 0..count {
        if body.len() < at + 4 {
            return Err(RtcpError::BadBody(RTCP_SDES));
        }
        let ssrc = Ssrc(be32(&body[at..]));
        at += 4;
        // Items until a null octet, then padding to the next 32-bit boundary.
        loop {
            let Some(&kind) = body.get(at) else {
                return Err(RtcpError::BadBody(RTCP_SDES));
            };
            if kind == 0 {
                at = (at + 4) & !3;
                break;
            }
            let len = usize::from(*body.get(at + 1).ok_or(RtcpError::BadBody(RTCP_SDES))?);
            let text = body
                .get(at + 2..at + 2 + len)
                .ok_or(RtcpError::BadBody(RTCP_SDES))?;
            if kind == SDES_CNAME {
                cnames.push((ssrc, String::from_utf8_lossy(text).into_owned()));
            }
            at += 2 + len;
        }
    }
    Ok(cnames)
}

/// Parses a compound RTCP packet (RFC 3550 section 6.1). Every packet must be
/// well-formed; unknown types are returned as `Other`.
/// Tests: `rtcp_parse_*`, `rtcp_build_*`.
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    let mut out = Vec::new();
    let mut rest = buf;
    if rest.is_empty() {
        return Err(RtcpError::Truncated);
    }
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(RtcpError::Truncated);
        }
        if rest[0] >> 6 != 2 {
            return Err(RtcpError::BadVersion);
        }
        let padded = rest[0] & 0x20 != 0;
        let count = usize::from(rest[0] & 0x1f);
        let pt = rest[1];
        let len = 4 * (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1);
        if rest.len() < len {
            return Err(RtcpError::Truncated);
        }
        let mut packet = &rest[..len];
        rest = &rest[len..];
        if padded {
            let pad = usize::from(packet[len - 1]);
            if pad == 0 || pad > len - 4 {
                return Err(RtcpError::BadPadding);
            }
            packet = &packet[..len - pad];
        }
        let body = &packet[4..];
        let parsed = match pt {
            RTCP_SR => {
                if body.len() < 24 {
                    return Err(RtcpError::BadBody(pt));
                }
                RtcpPacket::SenderReport {
                    ssrc: Ssrc(be32(body)),
                    info: SenderInfo {
                        ntp: NtpTime(
                            (u64::from(be32(&body[4..])) << 32) | u64::from(be32(&body[8..])),
                        ),
                        rtp_timestamp: be32(&body[12..]),
                        packet_count: be32(&body[16..]),
                        octet_count: be32(&body[20..]),
                    },
                    reports: parse_blocks(&body[24..], count, pt)?,
                }
            }
            RTCP_RR => {
                if body.len() < 4 {
                    return Err(RtcpError::BadBody(pt));
                }
                RtcpPacket::ReceiverReport {
                    ssrc: Ssrc(be32(body)),
                    reports: parse_blocks(&body[4..], count, pt)?,
                }
            }
            RTCP_SDES => RtcpPacket::SourceDescription {
                cnames: parse_sdes(body, count)?,
            },
            RTCP_BYE => {
                if body.len() < 4 * count {
                    return Err(RtcpError::BadBody(pt));
                }
                let sources = body
                    .chunks_exact(4)
                    .take(count)
                    .map(|b| Ssrc(be32(b)))
                    .collect();
                let tail = &body[4 * count..];
                let reason = match tail.first() {
                    Some(&n) if n > 0 => {
                        let text = tail
                            .get(1..1 + usize::from(n))
                            .ok_or(RtcpError::BadBody(pt))?;
                        Some(String::from_utf8_lossy(text).into_owned())
                    }
                    _ => None,
                };
                RtcpPacket::Bye { sources, reason }
            }
            other => RtcpPacket::Other { packet_type: other },
        };
        out.push(parsed);
    }
    Ok(out)
}

fn put_header(out: &mut Vec<u8>, count: usize, pt: u8) -> usize {
    out.push(0x80 | count as u8);
    out.push(pt);
    out.extend_from_slice(&[0, 0]); // length, patched by `finish`
    out.len() - 4
}

fn finish(out: &mut Vec<u8>, start: usize) {
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
    let words = ((out.len() - start) / 4 - 1) as u16;
    out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
}

fn put_block(out: &mut Vec<u8>, b: &ReportBlock) {
    out.extend_from_slice(&b.ssrc.0.to_be_bytes());
    out.push(b.fraction_lost);
    let lost = b.cumulative_lost.clamp(-0x80_0000, 0x7f_ffff);
    out.extend_from_slice(&lost.to_be_bytes()[1..]);
    out.extend_from_slice(&b.highest_seq.to_be_bytes());
    out.extend_from_slice(&b.jitter.to_be_bytes());
    out.extend_from_slice(&b.lsr.to_be_bytes());
    out.extend_from_slice(&b.dlsr.to_be_bytes());
}

fn put_sdes_cname(out: &mut Vec<u8>, ssrc: Ssrc, cname: &str) {
    let start = put_header(out, 1, RTCP_SDES);
    out.extend_from_slice(&ssrc.0.to_be_bytes());
    let text = &cname.as_bytes()[..cname.len().min(255)];
    out.push(SDES_CNAME);
    out.push(text.len() as u8);
    out.extend_from_slice(text);
    // The item list ends with at least one null octet, padded to 32 bits.
    out.push(0);
    finish(out, start);
}

/// Builds a compound RR + SDES CNAME (RFC 3550 sections 6.1 and 6.4.2). At most 31
/// blocks are sent.
#[must_use]
pub fn build_receiver_report(ssrc: Ssrc, reports: &[ReportBlock], cname: &str) -> Vec<u8> {
    let reports = &reports[..reports.len().min(MAX_REPORT_BLOCKS)];
    let mut out = Vec::with_capacity(8 + 24 * reports.len() + 12 + cname.len());
    let start = put_header(&mut out, reports.len(), RTCP_RR);
    out.extend_from_slice(&ssrc.0.to_be_bytes());
    reports.iter().for_each(|b| put_block(&mut out, b));
    finish(&mut out, start);
    put_sdes_cname(&mut out, ssrc, cname);
    out
}

/// Builds a compound SR + SDES CNAME (RFC 3550 sections 6.1 and 6.4.1).
#[must_use]
pub fn build_sender_report(
    ssrc: Ssrc,
    info: &SenderInfo,
    reports: &[ReportBlock],
    cname: &str,
) -> Vec<u8> {
    let reports = &reports[..reports.len().min(MAX_REPORT_BLOCKS)];
    let mut out = Vec::with_capacity(28 + 24 * reports.len() + 12 + cname.len());
    let start = put_header(&mut out, reports.len(), RTCP_SR);
    out.extend_from_slice(&ssrc.0.to_be_bytes());
    out.extend_from_slice(&info.ntp.0.to_be_bytes());
    out.extend_from_slice(&info.rtp_timestamp.to_be_bytes());
    out.extend_from_slice(&info.packet_count.to_be_bytes());
    out.extend_from_slice(&info.octet_count.to_be_bytes());
    reports.iter().for_each(|b| put_block(&mut out, b));
    finish(&mut out, start);
    put_sdes_cname(&mut out, ssrc, cname);
    out
}

/// Builds a BYE (RFC 3550 section 6.6) for `ssrc`. Sent inside a compound after an
/// SR/RR (see `RtcpSession::build_bye`).
fn put_bye(out: &mut Vec<u8>, ssrc: Ssrc, reason: Option<&str>) {
    let start = put_header(out, 1, RTCP_BYE);
    out.extend_from_slice(&ssrc.0.to_be_bytes());
    if let Some(reason) = reason {
        let text = &reason.as_bytes()[..reason.len().min(255)];
        out.push(text.len() as u8);
        out.extend_from_slice(text);
    }
    finish(out, start);
}

/// Per-call media statistics for metrics and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RtcpStats {
    /// RTP packets received from the phone (duplicates included, as RFC 3550 counts).
    pub packets_received: u64,
    /// Packets expected from the phone's sequence numbers.
    pub packets_expected: u64,
    /// Cumulative packets lost (expected - received; negative with duplicates).
    pub packets_lost: i64,
    /// Fraction lost in the last report interval, in 1/256.
    pub fraction_lost: u8,
    /// Interarrival jitter at the last report, in timestamp units.
    pub jitter: u32,
    pub packets_sent: u64,
    pub octets_sent: u64,
    pub reports_sent: u64,
    pub reports_received: u64,
    /// What the phone last reported about our stream.
    pub remote_fraction_lost: Option<u8>,
    pub remote_cumulative_lost: Option<i32>,
    pub remote_jitter: Option<u32>,
    /// Round-trip time from the phone's last report with an LSR of ours.
    pub rtt: Option<Duration>,
    /// The phone sent BYE.
    pub bye_received: bool,
}

/// RTCP state of one phone leg. Tests: `rtcp_session_*`.
#[derive(Debug, Clone)]
pub struct RtcpSession {
    local_ssrc: Ssrc,
    cname: String,
    clock_rate: u32,
    interval: Duration,
    rng: u64,
    next_report: Instant,
    // reception (RFC 3550 appendix A.3)
    remote: Option<Ssrc>,
    seqs: SeqUnwrapper,
    base_seq: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    last_sr: Option<(u32, Instant)>,
    // sending
    sent_rtp: Option<(u32, Instant)>,
    sent_since_report: bool,
    /// NTP middle 32 bits of the SRs we sent lately, for RTT.
    our_srs: Vec<u32>,
    stats: RtcpStats,
}

impl RtcpSession {
    /// A session for our stream `local_ssrc` with the RTP clock `clock_rate` (8000 for
    /// G.711 and G.722), reporting every `MIN_REPORT_INTERVAL` randomized to 0.5-1.5x
    /// (RFC 3550 section 6.3.1); the first report is due after half an interval.
    #[must_use]
    pub fn new(local_ssrc: Ssrc, cname: impl Into<String>, clock_rate: u32, now: Instant) -> Self {
        let mut s = RtcpSession {
            local_ssrc,
            cname: cname.into(),
            clock_rate: clock_rate.max(1),
            interval: MIN_REPORT_INTERVAL,
            rng: u64::from(local_ssrc.0) | 1 << 40,
            next_report: now,
            remote: None,
            seqs: SeqUnwrapper::new(),
            base_seq: 0,
            received: 0,
            expected_prior: 0,
            received_prior: 0,
            last_sr: None,
            sent_rtp: None,
            sent_since_report: false,
            our_srs: Vec::new(),
            stats: RtcpStats::default(),
        };
        s.next_report = now + s.randomized(s.interval / 2);
        s
    }

    fn randomized(&mut self, d: Duration) -> Duration {
        // xorshift64; 0.5..1.5 of `d`.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        let factor = 0.5 + (x >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(factor)
    }

    /// Every RTP packet received from the phone (before the jitter buffer).
    pub fn on_rtp_received(&mut self, packet: &RtpPacket) {
        if self.remote != Some(packet.ssrc) {
            // A new source: its statistics start over (RFC 3550 appendix A.1).
            self.remote = Some(packet.ssrc);
            self.seqs.reset();
            self.received = 0;
            self.expected_prior = 0;
            self.received_prior = 0;
            self.last_sr = None;
            self.base_seq = u64::from(packet.seq.0);
        }
        if self.seqs.unwrap(packet.seq).is_some() {
            self.received += 1;
            self.stats.packets_received += 1;
        }
    }

    /// Every RTP packet we send to the phone, at `now`.
    pub fn on_rtp_sent(&mut self, now: Instant, packet: &RtpPacket) {
        self.stats.packets_sent += 1;
        self.stats.octets_sent += packet.payload.len() as u64;
        self.sent_rtp = Some((packet.timestamp, now));
        self.sent_since_report = true;
    }

    /// An RTCP compound from the phone, received at `now` (wall clock `wall`).
    pub fn handle_rtcp(
        &mut self,
        now: Instant,
        wall: NtpTime,
        buf: &[u8],
    ) -> Result<Vec<RtcpPacket>, RtcpError> {
        let packets = parse_compound(buf)?;
        self.stats.reports_received += 1;
        for p in &packets {
            match p {
                RtcpPacket::SenderReport {
                    ssrc,
                    info,
                    reports,
                } => {
                    if self.remote.is_none_or(|r| r == *ssrc) {
                        self.last_sr = Some((info.ntp.middle32(), now));
                    }
                    self.take_blocks(wall, reports);
                }
                RtcpPacket::ReceiverReport { reports, .. } => self.take_blocks(wall, reports),
                RtcpPacket::Bye { sources, .. }
                    if self.remote.is_none_or(|r| sources.contains(&r)) =>
                {
                    self.stats.bye_received = true;
                }
                _ => {}
            }
        }
        Ok(packets)
    }

    fn take_blocks(&mut self, wall: NtpTime, reports: &[ReportBlock]) {
        for b in reports.iter().filter(|b| b.ssrc == self.local_ssrc) {
            self.stats.remote_fraction_lost = Some(b.fraction_lost);
            self.stats.remote_cumulative_lost = Some(b.cumulative_lost);
            self.stats.remote_jitter = Some(b.jitter);
            // RFC 3550 section 6.4.1: RTT = A - LSR - DLSR, in 1/65536 s, for an LSR
            // that is one of our SRs. Test: `rtcp_session_rtt_from_lsr_dlsr`.
            if b.lsr != 0 && self.our_srs.contains(&b.lsr) {
                let rtt = wall.middle32().wrapping_sub(b.lsr).wrapping_sub(b.dlsr);
                if rtt < 1 << 31 {
                    self.stats.rtt =
                        Some(Duration::from_micros(u64::from(rtt) * 1_000_000 / 65_536));
                }
            }
        }
    }

    /// The report block on the phone's stream at `now` (RFC 3550 appendix A.3), with
    /// `jitter` from the jitter buffer, starting a new loss interval. `None` before the
    /// first packet.
    pub fn report_block(&mut self, now: Instant, jitter: u32) -> Option<ReportBlock> {
        let ssrc = self.remote?;
        let highest = self.seqs.highest()?.0;
        let expected = highest + 1 - self.base_seq.min(highest + 1);
        let lost = expected as i64 - self.received as i64;
        let expected_interval = expected - self.expected_prior.min(expected);
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => {
                let delay = now.saturating_duration_since(at);
                (
                    lsr,
                    (delay.as_micros() * 65_536 / 1_000_000).min(u128::from(u32::MAX)) as u32,
                )
            }
            None => (0, 0),
        };
        self.stats.packets_expected = expected;
        self.stats.packets_lost = lost;
        self.stats.fraction_lost = fraction_lost;
        self.stats.jitter = jitter;
        Some(ReportBlock {
            ssrc,
            fraction_lost,
            cumulative_lost: lost.clamp(-0x80_0000, 0x7f_ffff) as i32,
            highest_seq: highest as u32,
            jitter,
            lsr,
            dlsr,
        })
    }

    /// When the next report is due.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        self.next_report
    }

    /// The report due at `now`, if any: an SR when we sent RTP since the last report,
    /// else an RR, each with a block on the phone's stream and our CNAME.
    pub fn handle_timeout(&mut self, now: Instant, wall: NtpTime, jitter: u32) -> Option<Vec<u8>> {
        if now < self.next_report {
            return None;
        }
        self.next_report = now + self.randomized(self.interval);
        Some(self.build_report(now, wall, jitter))
    }

    /// A report now, regardless of the timer (for example before BYE).
    pub fn build_report(&mut self, now: Instant, wall: NtpTime, jitter: u32) -> Vec<u8> {
        let blocks: Vec<ReportBlock> = self.report_block(now, jitter).into_iter().collect();
        self.stats.reports_sent += 1;
        match self.sent_rtp {
            Some((ts, at)) if self.sent_since_report => {
                self.sent_since_report = false;
                let elapsed = now.saturating_duration_since(at);
                let ticks = elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000;
                let info = SenderInfo {
                    ntp: wall,
                    rtp_timestamp: ts.wrapping_add(ticks as u32),
                    packet_count: self.stats.packets_sent as u32,
                    octet_count: self.stats.octets_sent as u32,
                };
                if self.our_srs.len() == 4 {
                    self.our_srs.remove(0);
                }
                self.our_srs.push(wall.middle32());
                build_sender_report(self.local_ssrc, &info, &blocks, &self.cname)
            }
            _ => build_receiver_report(self.local_ssrc, &blocks, &self.cname),
        }
    }

    /// A final report followed by BYE (RFC 3550 section 6.6), for when we end the call.
    pub fn build_bye(
        &mut self,
        now: Instant,
        wall: NtpTime,
        jitter: u32,
        reason: Option<&str>,
    ) -> Vec<u8> {
        let mut out = self.build_report(now, wall, jitter);
        put_bye(&mut out, self.local_ssrc, reason);
        out
    }

    #[must_use]
    pub fn stats(&self) -> &RtcpStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::rtp::SeqNo;

    fn rtp(seq: u16, ssrc: u32) -> RtpPacket {
        RtpPacket::new(
            0,
            SeqNo(seq),
            160 * u32::from(seq),
            Ssrc(ssrc),
            vec![0xff; 160],
        )
    }

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: Ssrc(0x1234_5678),
            fraction_lost: 25,
            cumulative_lost: -3,
            highest_seq: 0x0001_0005,
            jitter: 80,
            lsr: 0xAABB_CCDD,
            dlsr: 65_536,
        }
    }

    #[test]
    fn rtcp_build_rr_layout_and_round_trip() {
        let bytes = build_receiver_report(Ssrc(0xDEAD_BEEF), &[block()], "roomline@host");
        // RR: V=2, RC=1, PT=201, length 7 words (32 bytes).
        assert_eq!(&bytes[..4], &[0x81, 201, 0, 7]);
        assert_eq!(&bytes[4..8], &0xDEAD_BEEFu32.to_be_bytes());
        // Cumulative lost -3 as 24-bit two's complement.
        assert_eq!(&bytes[12..16], &[25, 0xff, 0xff, 0xfd]);
        // Then SDES, V=2, SC=1, PT=202, 32-bit aligned.
        assert_eq!(&bytes[32..34], &[0x81, 202]);
        assert_eq!(bytes.len() % 4, 0);
        let parsed = parse_compound(&bytes).unwrap();
        assert_eq!(
            parsed,
            vec![
                RtcpPacket::ReceiverReport {
                    ssrc: Ssrc(0xDEAD_BEEF),
                    reports: vec![block()],
                },
                RtcpPacket::SourceDescription {
                    cnames: vec![(Ssrc(0xDEAD_BEEF), "roomline@host".into())],
                },
            ]
        );
    }

    #[test]
    fn rtcp_build_sr_and_bye_round_trip() {
        let info = SenderInfo {
            ntp: NtpTime(0x0102_0304_0506_0708),
            rtp_timestamp: 160_000,
            packet_count: 1000,
            octet_count: 160_000,
        };
        let mut bytes = build_sender_report(Ssrc(9), &info, &[], "x");
        assert_eq!(&bytes[..4], &[0x80, 200, 0, 6]);
        put_bye(&mut bytes, Ssrc(9), Some("call ended"));
        let parsed = parse_compound(&bytes).unwrap();
        assert_eq!(parsed.len(), 3);
        assert_eq!(
            parsed[0],
            RtcpPacket::SenderReport {
                ssrc: Ssrc(9),
                info,
                reports: vec![],
            }
        );
        assert_eq!(
            parsed[2],
            RtcpPacket::Bye {
                sources: vec![Ssrc(9)],
                reason: Some("call ended".into()),
            }
        );
    }

    #[test]
    fn rtcp_parse_rejects_malformed_and_skips_unknown() {
        assert_eq!(parse_compound(&[]), Err(RtcpError::Truncated));
        assert_eq!(parse_compound(&[0x81, 201, 0]), Err(RtcpError::Truncated));
        // Version 1.
        assert_eq!(
            parse_compound(&[0x41, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BadVersion)
        );
        // Length says 2 words, only 1 present.
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 2, 0, 0, 0, 1]),
            Err(RtcpError::Truncated)
        );
        // RC=1 but no block.
        assert_eq!(
            parse_compound(&[0x81, 201, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::BadBody(201))
        );
        // Padding count beyond the packet.
        assert_eq!(
            parse_compound(&[0xA0, 201, 0, 1, 0, 0, 0, 9]),
            Err(RtcpError::BadPadding)
        );
        // An RR with padding (P bit, 4 padding octets), then APP: both accepted.
        let mut buf = vec![0xA0, 201, 0, 2, 0, 0, 0, 1, 0, 0, 0, 4];
        buf.extend_from_slice(&[0x80, RTCP_APP, 0, 2, 0, 0, 0, 1, b'n', b'a', b'm', b'e']);
        assert_eq!(
            parse_compound(&buf).unwrap(),
            vec![
                RtcpPacket::ReceiverReport {
                    ssrc: Ssrc(1),
                    reports: vec![],
                },
                RtcpPacket::Other {
                    packet_type: RTCP_APP
                },
            ]
        );
        // BYE without reason, two sources.
        let bye = [0x82, 203, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(
            parse_compound(&bye).unwrap(),
            vec![RtcpPacket::Bye {
                sources: vec![Ssrc(1), Ssrc(2)],
                reason: None,
            }]
        );
    }

    #[test]
    fn rtcp_session_loss_fraction_and_extended_seq_across_wrap() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(1), "me", 8000, t0);
        assert_eq!(s.report_block(t0, 0), None, "nothing received yet");
        // 65530..=65535, then 0..=9 with 3, 4 and 7 lost: expected 16, received 13.
        for seq in (65_530u16..=65_535).chain(0..10) {
            if ![3, 4, 7].contains(&seq) {
                s.on_rtp_received(&rtp(seq, 77));
            }
        }
        let b = s.report_block(t0, 42).unwrap();
        assert_eq!(b.ssrc, Ssrc(77));
        assert_eq!(b.highest_seq, 65_536 + 9, "one cycle");
        assert_eq!(b.cumulative_lost, 3);
        assert_eq!(b.fraction_lost, (3 * 256 / 16) as u8);
        assert_eq!(b.jitter, 42);
        assert_eq!((b.lsr, b.dlsr), (0, 0));
        // Next interval: 10 in order plus a late duplicate -> nothing lost this time,
        // and the duplicate makes the cumulative count one lower.
        for seq in 10..20 {
            s.on_rtp_received(&rtp(seq, 77));
        }
        s.on_rtp_received(&rtp(15, 77));
        let b = s.report_block(t0, 0).unwrap();
        assert_eq!((b.fraction_lost, b.cumulative_lost), (0, 2));
        let st = s.stats();
        assert_eq!(
            (st.packets_received, st.packets_expected, st.packets_lost),
            (24, 26, 2)
        );
        // A new SSRC starts over.
        s.on_rtp_received(&rtp(500, 78));
        let b = s.report_block(t0, 0).unwrap();
        assert_eq!(
            (b.ssrc, b.highest_seq, b.cumulative_lost),
            (Ssrc(78), 500, 0)
        );
    }

    #[test]
    fn rtcp_session_lsr_dlsr_from_the_phones_sr() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(1), "me", 8000, t0);
        s.on_rtp_received(&rtp(1, 77));
        let info = SenderInfo {
            ntp: NtpTime(0x1111_2222_3333_4444),
            rtp_timestamp: 0,
            packet_count: 0,
            octet_count: 0,
        };
        let sr = build_sender_report(Ssrc(77), &info, &[], "phone");
        s.handle_rtcp(t0, NtpTime(0), &sr).unwrap();
        let b = s.report_block(t0 + Duration::from_millis(1500), 0).unwrap();
        assert_eq!(b.lsr, 0x2222_3333);
        assert_eq!(b.dlsr, 65_536 * 3 / 2);
    }

    #[test]
    fn rtcp_session_rtt_from_lsr_dlsr() {
        let t0 = Instant::now();
        let wall0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut s = RtcpSession::new(Ssrc(1), "me", 8000, t0);
        s.on_rtp_sent(t0, &rtp(1, 1));
        let ours = s.build_report(t0, NtpTime::from_system_time(wall0), 0);
        let RtcpPacket::SenderReport { info, .. } = &parse_compound(&ours).unwrap()[0] else {
            panic!("we sent RTP, so an SR");
        };
        assert_eq!(info.packet_count, 1);
        // The phone holds our SR for 250 ms; its RR reaches us 350 ms after we sent.
        let rr = build_receiver_report(
            Ssrc(77),
            &[ReportBlock {
                ssrc: Ssrc(1),
                fraction_lost: 12,
                cumulative_lost: 5,
                highest_seq: 100,
                jitter: 30,
                lsr: info.ntp.middle32(),
                dlsr: 65_536 / 4,
            }],
            "phone",
        );
        let wall1 = NtpTime::from_system_time(wall0 + Duration::from_millis(350));
        s.handle_rtcp(t0 + Duration::from_millis(350), wall1, &rr)
            .unwrap();
        let st = s.stats();
        let rtt = st.rtt.expect("rtt").as_micros() as i64;
        assert!((rtt - 100_000).abs() < 100, "{rtt}");
        assert_eq!(
            (
                st.remote_fraction_lost,
                st.remote_cumulative_lost,
                st.remote_jitter
            ),
            (Some(12), Some(5), Some(30))
        );
        // No RTP sent since: the next report is an RR.
        let next = s.build_report(t0 + Duration::from_secs(5), wall1, 0);
        assert_eq!(next[1], RTCP_RR);
    }

    #[test]
    fn rtcp_session_timer_and_bye() {
        let t0 = Instant::now();
        let mut s = RtcpSession::new(Ssrc(5), "me", 8000, t0);
        let first = s.poll_timeout() - t0;
        assert!(first >= Duration::from_millis(1250) && first <= Duration::from_millis(3750));
        assert_eq!(s.handle_timeout(t0, NtpTime(0), 0), None);
        let mut at = s.poll_timeout();
        for _ in 0..20 {
            let report = s.handle_timeout(at, NtpTime(0), 0).expect("due");
            assert_eq!(report[1], RTCP_RR);
            let gap = s.poll_timeout() - at;
            assert!(gap >= Duration::from_millis(2500) && gap <= Duration::from_millis(7500));
            at = s.poll_timeout();
        }
        let bye = s.build_bye(at, NtpTime(0), 0, Some("bye"));
        let parsed = parse_compound(&bye).unwrap();
        assert!(matches!(parsed.last(), Some(RtcpPacket::Bye { .. })));
        // The phone's BYE is noticed.
        s.on_rtp_received(&rtp(1, 77));
        let mut theirs = build_receiver_report(Ssrc(77), &[], "p");
        put_bye(&mut theirs, Ssrc(77), None);
        s.handle_rtcp(at, NtpTime(0), &theirs).unwrap();
        assert!(s.stats().bye_received);
    }

    #[test]
    fn rtcp_ntp_time_of_the_unix_epoch() {
        let t = NtpTime::from_system_time(UNIX_EPOCH + Duration::from_millis(500));
        assert_eq!(t.0 >> 32, NTP_UNIX_OFFSET);
        assert_eq!(t.0 & 0xffff_ffff, 1 << 31);
    }
}
