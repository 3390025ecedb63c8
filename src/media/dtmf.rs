//! DTMF over RTP as RFC 4733 telephone-events: the payload format, the event-code <->
//! digit mapping, a sans-IO receiver that turns packets into one event per key press, and
//! a sender that lays out the packet sequence for one digit.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use super::rtp::{RtpPacket, SeqNo, Ssrc};

/// The default telephone-event clock rate (RFC 4733 section 2.4, `rate` defaults to 8000).
pub const TELEPHONE_EVENT_CLOCK_RATE: u32 = 8000;
/// Length of one event in the payload (RFC 4733 section 2.3).
pub const TELEPHONE_EVENT_LEN: usize = 4;
/// Finished key presses a `DtmfReceiver` holds for its owner at most.
pub const MAX_QUEUED_EVENTS: usize = 32;

/// A DTMF key: RFC 4733 section 3.2 assigns event codes 0-9 to the digits, 10 to `*`,
/// 11 to `#` and 12-15 to A-D. Test: `event_codes_map_to_digits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DtmfDigit {
    D0,
    D1,
    D2,
    D3,
    D4,
    D5,
    D6,
    D7,
    D8,
    D9,
    Star,
    Pound,
    A,
    B,
    C,
    D,
}

impl DtmfDigit {
    const ALL: [DtmfDigit; 16] = [
        DtmfDigit::D0,
        DtmfDigit::D1,
        DtmfDigit::D2,
        DtmfDigit::D3,
        DtmfDigit::D4,
        DtmfDigit::D5,
        DtmfDigit::D6,
        DtmfDigit::D7,
        DtmfDigit::D8,
        DtmfDigit::D9,
        DtmfDigit::Star,
        DtmfDigit::Pound,
        DtmfDigit::A,
        DtmfDigit::B,
        DtmfDigit::C,
        DtmfDigit::D,
    ];
    const CHARS: [char; 16] = [
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
    ];

    /// The digit for an RFC 4733 event code; `None` for codes above 15 (not DTMF).
    #[must_use]
    pub fn from_event_code(code: u8) -> Option<DtmfDigit> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The RFC 4733 event code, 0..=15.
    #[must_use]
    pub fn event_code(self) -> u8 {
        self as u8
    }

    /// Parses `0-9 * # A-D` (also `a-d`).
    #[must_use]
    pub fn from_char(c: char) -> Option<DtmfDigit> {
        let c = c.to_ascii_uppercase();
        Self::CHARS
            .iter()
            .position(|&k| k == c)
            .and_then(|i| Self::ALL.get(i).copied())
    }

    #[must_use]
    pub fn as_char(self) -> char {
        Self::CHARS[usize::from(self.event_code())]
    }
}

impl fmt::Display for DtmfDigit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_char())
    }
}

/// One telephone-event payload (RFC 4733 section 2.3): event code, end bit, volume in
/// -dBm0 (6 bits), duration in clock-rate units since the event's RTP timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    pub event: u8,
    pub end: bool,
    pub volume: u8,
    pub duration: u16,
}

/// A telephone-event payload that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    #[error("telephone-event payload of {0} bytes, need 4")]
    Truncated(usize),
}

impl TelephoneEvent {
    /// Reads the first event of a payload (RFC 4733 section 2.3; the R bit is ignored on
    /// receipt, section 2.3.3). Extra bytes (redundant events, RFC 4733 section 2.5.1.5)
    /// are ignored. Test: `payload_round_trip_and_truncation`.
    pub fn parse(payload: &[u8]) -> Result<TelephoneEvent, DtmfError> {
        match payload {
            [event, flags, d0, d1, ..] => Ok(TelephoneEvent {
                event: *event,
                end: flags & 0x80 != 0,
                volume: flags & 0x3f,
                duration: u16::from_be_bytes([*d0, *d1]),
            }),
            _ => Err(DtmfError::Truncated(payload.len())),
        }
    }

    /// The 4-byte wire form (R bit zero, volume masked to 6 bits).
    #[must_use]
    pub fn to_bytes(self) -> [u8; TELEPHONE_EVENT_LEN] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (u8::from(self.end) << 7) | (self.volume & 0x3f),
            d[0],
            d[1],
        ]
    }
}

/// Why a key press was considered over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DtmfEnd {
    /// A packet with the E bit arrived (RFC 4733 section 2.3.2).
    EndBit,
    /// No packet for the configured timeout: the end packets were lost (RFC 4733
    /// section 2.5.2.5 soft state).
    Timeout,
    /// A new event (new RTP timestamp) or a new SSRC started before this one ended.
    Superseded,
}

/// One key press, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfEvent {
    pub digit: DtmfDigit,
    /// RTP timestamp of the event's start (of its first segment for long events).
    pub rtp_timestamp: u32,
    /// Longest duration reported for the event, summed over segments.
    pub duration: Duration,
    /// Volume of the last packet, in -dBm0.
    pub volume: u8,
    pub ended_by: DtmfEnd,
}

/// Receiver settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfReceiverConfig {
    /// The negotiated telephone-event clock rate (SDP `rtpmap`), normally 8000.
    pub clock_rate: u32,
    /// How long after the last packet of an event without an end packet it is reported.
    pub end_timeout: Duration,
}

impl Default for DtmfReceiverConfig {
    fn default() -> Self {
        DtmfReceiverConfig {
            clock_rate: TELEPHONE_EVENT_CLOCK_RATE,
            end_timeout: Duration::from_millis(500),
        }
    }
}

/// The event currently being received.
#[derive(Debug, Clone, Copy)]
struct Active {
    code: u8,
    /// Timestamp of the first segment (what the event is reported under).
    start_ts: u32,
    /// Timestamp of the current segment (RFC 4733 section 2.5.1.3).
    segment_ts: u32,
    /// Durations of completed segments.
    previous_segments: u64,
    /// Longest duration seen in the current segment.
    segment_duration: u16,
    volume: u8,
    last_packet: Instant,
}

/// RFC 4733 receiver (sans-IO). Feed it the packets of the negotiated telephone-event
/// payload type with `handle_packet`, call `handle_timeout` at `poll_timeout`, and drain
/// `poll_event`. Each key press yields exactly one `DtmfEvent`, when it ends.
///
/// An event is identified by its RTP timestamp (RFC 4733 section 2.5.2.2), never by the
/// marker bit (section 2.2.2: it may be lost), so a lost start packet, retransmitted end
/// packets (section 2.5.1.4) and reordering all still give one event.
/// Tests: `receiver_*`.
#[derive(Debug)]
pub struct DtmfReceiver {
    config: DtmfReceiverConfig,
    ssrc: Option<Ssrc>,
    /// Timestamp of the newest event seen (active or finished) and whether it finished.
    latest: Option<(u32, bool)>,
    active: Option<Active>,
    events: VecDeque<DtmfEvent>,
    non_dtmf_events: u64,
}

impl DtmfReceiver {
    #[must_use]
    pub fn new(config: DtmfReceiverConfig) -> Self {
        DtmfReceiver {
            config,
            ssrc: None,
            latest: None,
            active: None,
            events: VecDeque::new(),
            non_dtmf_events: 0,
        }
    }

    /// Takes one telephone-event packet that arrived at `now`.
    pub fn handle_packet(&mut self, now: Instant, packet: &RtpPacket) -> Result<(), DtmfError> {
        let ev = TelephoneEvent::parse(&packet.payload)?;
        if self.ssrc != Some(packet.ssrc) {
            if self.ssrc.is_some() {
                self.finish(DtmfEnd::Superseded);
            }
            self.ssrc = Some(packet.ssrc);
            self.latest = None;
        }
        let ts = packet.timestamp;
        if let Some((latest_ts, finished)) = self.latest {
            let age = ts.wrapping_sub(latest_ts) as i32;
            if age < 0 || (age == 0 && finished) {
                // An older event, or a retransmission/late update of a finished one.
                return Ok(());
            }
            if age == 0 {
                self.update(now, ev);
                return Ok(());
            }
            if self.continues_long_event(ts, ev.event) {
                if let Some(a) = &mut self.active {
                    a.previous_segments += u64::from(a.segment_duration);
                    a.segment_ts = ts;
                    a.segment_duration = 0;
                }
                self.latest = Some((ts, false));
                self.update(now, ev);
                return Ok(());
            }
            self.finish(DtmfEnd::Superseded);
        }
        self.active = Some(Active {
            code: ev.event,
            start_ts: ts,
            segment_ts: ts,
            previous_segments: 0,
            segment_duration: 0,
            volume: ev.volume,
            last_packet: now,
        });
        self.latest = Some((ts, false));
        self.update(now, ev);
        Ok(())
    }

    /// RFC 4733 section 2.5.2.3: a long event is sent as segments, each under a new
    /// timestamp that starts where the previous segment's duration ends. A new timestamp
    /// with the same code that lands there, while the event has not ended, continues it.
    /// Test: `receiver_long_event_segments_are_one_press`.
    fn continues_long_event(&self, ts: u32, code: u8) -> bool {
        let Some(a) = &self.active else {
            return false;
        };
        let gap = u64::from(ts.wrapping_sub(a.segment_ts));
        let slack = u64::from(self.config.clock_rate) / 5;
        a.code == code
            && a.segment_duration >= u16::MAX / 2
            && gap >= u64::from(a.segment_duration)
            && gap <= u64::from(a.segment_duration) + slack
    }

    fn update(&mut self, now: Instant, ev: TelephoneEvent) {
        let Some(a) = &mut self.active else {
            return;
        };
        a.segment_duration = a.segment_duration.max(ev.duration);
        a.volume = ev.volume;
        a.last_packet = now;
        if ev.end {
            self.finish(DtmfEnd::EndBit);
        }
    }

    fn finish(&mut self, ended_by: DtmfEnd) {
        let Some(a) = self.active.take() else {
            return;
        };
        if let Some((ts, _)) = self.latest {
            self.latest = Some((ts, true));
        }
        let samples = a.previous_segments + u64::from(a.segment_duration);
        let rate = u64::from(self.config.clock_rate.max(1));
        match DtmfDigit::from_event_code(a.code) {
            Some(digit) => {
                // bounded for an owner that does not drain: the oldest press goes
                if self.events.len() >= MAX_QUEUED_EVENTS {
                    self.events.pop_front();
                }
                self.events.push_back(DtmfEvent {
                    digit,
                    rtp_timestamp: a.start_ts,
                    duration: Duration::from_micros(samples * 1_000_000 / rate),
                    volume: a.volume,
                    ended_by,
                });
            }
            None => self.non_dtmf_events += 1,
        }
    }

    /// Reports an event whose end packets never came, once `end_timeout` has passed
    /// since its last packet.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.poll_timeout()
            && now >= deadline
        {
            self.finish(DtmfEnd::Timeout);
        }
    }

    /// When `handle_timeout` should next be called, if an event is in progress.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active
            .as_ref()
            .map(|a| a.last_packet + self.config.end_timeout)
    }

    /// The next finished key press, oldest first.
    pub fn poll_event(&mut self) -> Option<DtmfEvent> {
        self.events.pop_front()
    }

    /// Events with codes above 15 (fax and modem tones, RFC 4734) seen and not reported.
    #[must_use]
    pub fn non_dtmf_events(&self) -> u64 {
        self.non_dtmf_events
    }
}

/// Sender settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfSenderConfig {
    /// The negotiated telephone-event clock rate, normally 8000.
    pub clock_rate: u32,
    /// Time between packets of one event (the audio packetization, normally 20 ms).
    pub packet_interval: Duration,
    /// Volume to report, in -dBm0 (0..=63).
    pub volume: u8,
}

impl Default for DtmfSenderConfig {
    fn default() -> Self {
        DtmfSenderConfig {
            clock_rate: TELEPHONE_EVENT_CLOCK_RATE,
            packet_interval: Duration::from_millis(20),
            volume: 10,
        }
    }
}

/// One packet of an outgoing event, to be sent `offset` after the event starts, with the
/// RTP sequence number the stream assigns (RFC 4733 section 2.5.1.6: every packet,
/// retransmissions included, takes the next sequence number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfSendPacket {
    pub offset: Duration,
    pub marker: bool,
    pub timestamp: u32,
    pub event: TelephoneEvent,
}

impl DtmfSendPacket {
    /// The RTP packet for this step.
    #[must_use]
    pub fn to_rtp(&self, payload_type: u8, seq: SeqNo, ssrc: Ssrc) -> RtpPacket {
        let mut p = RtpPacket::new(
            payload_type,
            seq,
            self.timestamp,
            ssrc,
            self.event.to_bytes().to_vec(),
        );
        p.marker = self.marker;
        p
    }
}

/// The packets for one key press starting at RTP `timestamp` (RFC 4733 section 2.5.1.2):
/// one every `packet_interval`, all under the same timestamp, duration growing by one
/// interval each time, the marker bit on the first only (section 2.2.2), and the final
/// packet with the E bit sent three times with the same duration (section 2.5.1.4).
/// `duration` is rounded up to whole intervals, at least two, and capped at what the
/// 16-bit duration field holds (about 8 s at 8 kHz). Tests: `sender_*`.
#[must_use]
pub fn dtmf_send_sequence(
    config: &DtmfSenderConfig,
    digit: DtmfDigit,
    duration: Duration,
    timestamp: u32,
) -> Vec<DtmfSendPacket> {
    let rate = u64::from(config.clock_rate.max(1));
    let interval_samples =
        (config.packet_interval.as_micros() as u64 * rate / 1_000_000).clamp(1, 0x7fff);
    let max_intervals = (u64::from(u16::MAX) / interval_samples).max(2);
    let wanted = duration.as_micros() as u64 * rate / 1_000_000;
    let intervals = wanted.div_ceil(interval_samples).clamp(2, max_intervals);
    let volume = config.volume.min(63);
    let final_duration = (intervals * interval_samples) as u16;
    let mut out = Vec::with_capacity(intervals as usize + 2);
    for n in 0..intervals - 1 {
        out.push(DtmfSendPacket {
            offset: config.packet_interval * n as u32,
            marker: n == 0,
            timestamp,
            event: TelephoneEvent {
                event: digit.event_code(),
                end: false,
                volume,
                duration: ((n + 1) * interval_samples) as u16,
            },
        });
    }
    for k in 0..3 {
        out.push(DtmfSendPacket {
            offset: config.packet_interval * (intervals - 1 + k) as u32,
            marker: false,
            timestamp,
            event: TelephoneEvent {
                event: digit.event_code(),
                end: true,
                volume,
                duration: final_duration,
            },
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_signal::XorShift;

    const PT: u8 = 101;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn packet(ts: u32, code: u8, end: bool, duration: u16, marker: bool) -> RtpPacket {
        let ev = TelephoneEvent {
            event: code,
            end,
            volume: 10,
            duration,
        };
        let mut p = RtpPacket::new(PT, SeqNo(0), ts, Ssrc(7), ev.to_bytes().to_vec());
        p.marker = marker;
        p
    }

    /// A whole press as a sender emits it: (ms after start, packet).
    fn press(ts: u32, code: u8, intervals: u16) -> Vec<(u64, RtpPacket)> {
        let mut v: Vec<(u64, RtpPacket)> = (0..intervals - 1)
            .map(|n| {
                (
                    u64::from(n) * 20,
                    packet(ts, code, false, (n + 1) * 160, n == 0),
                )
            })
            .collect();
        for k in 0..3u16 {
            v.push((
                u64::from(intervals - 1 + k) * 20,
                packet(ts, code, true, intervals * 160, false),
            ));
        }
        v
    }

    fn feed(rx: &mut DtmfReceiver, t0: Instant, start_ms: u64, pkts: &[(u64, RtpPacket)]) {
        for (at, p) in pkts {
            rx.handle_packet(t0 + ms(start_ms + at), p)
                .expect("valid payload");
        }
    }

    fn drain(rx: &mut DtmfReceiver) -> Vec<DtmfEvent> {
        std::iter::from_fn(|| rx.poll_event()).collect()
    }

    #[test]
    fn event_codes_map_to_digits() {
        let expected = "0123456789*#ABCD";
        for (code, c) in expected.chars().enumerate() {
            let d = DtmfDigit::from_event_code(code as u8).expect("DTMF code");
            assert_eq!(d.as_char(), c);
            assert_eq!(d.event_code(), code as u8);
            assert_eq!(DtmfDigit::from_char(c), Some(d));
            assert_eq!(DtmfDigit::from_char(c.to_ascii_lowercase()), Some(d));
            assert_eq!(d.to_string(), c.to_string());
        }
        assert_eq!(DtmfDigit::from_event_code(16), None);
        assert_eq!(DtmfDigit::from_event_code(255), None);
        assert_eq!(DtmfDigit::from_char('E'), None);
        assert_eq!(DtmfDigit::from_char('x'), None);
    }

    #[test]
    fn payload_round_trip_and_truncation() {
        let ev = TelephoneEvent {
            event: 11,
            end: true,
            volume: 63,
            duration: 0xabcd,
        };
        assert_eq!(ev.to_bytes(), [11, 0xbf, 0xab, 0xcd]);
        assert_eq!(TelephoneEvent::parse(&ev.to_bytes()), Ok(ev));
        // The R bit is ignored on receipt; trailing bytes are ignored.
        assert_eq!(
            TelephoneEvent::parse(&[5, 0x4a, 0, 160, 9, 9]),
            Ok(TelephoneEvent {
                event: 5,
                end: false,
                volume: 10,
                duration: 160
            })
        );
        for len in 0..4 {
            assert_eq!(
                TelephoneEvent::parse(&[0; 3][..len.min(3)]),
                Err(DtmfError::Truncated(len.min(3)))
            );
        }
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        let mut p = packet(0, 1, false, 0, true);
        p.payload.truncate(2);
        assert_eq!(
            rx.handle_packet(Instant::now(), &p),
            Err(DtmfError::Truncated(2))
        );
    }

    #[test]
    fn receiver_holds_the_newest_presses_for_an_owner_that_does_not_drain() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        let presses = MAX_QUEUED_EVENTS as u32 + 8;
        for k in 0..presses {
            let code = (k % 10) as u8;
            feed(
                &mut rx,
                t0,
                u64::from(k) * 200,
                &press(1000 + k * 1600, code, 5),
            );
        }
        let events = drain(&mut rx);
        assert_eq!(events.len(), MAX_QUEUED_EVENTS);
        assert_eq!(
            events.last().map(|e| e.rtp_timestamp),
            Some(1000 + (presses - 1) * 1600)
        );
    }

    #[test]
    fn receiver_one_event_per_press_with_three_end_packets() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        feed(&mut rx, t0, 0, &press(1000, 5, 5));
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].digit, DtmfDigit::D5);
        assert_eq!(events[0].rtp_timestamp, 1000);
        assert_eq!(events[0].duration, ms(100));
        assert_eq!(events[0].ended_by, DtmfEnd::EndBit);
        assert_eq!(rx.poll_timeout(), None);
        rx.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(rx.poll_event(), None);
    }

    #[test]
    fn receiver_never_relies_on_the_marker_bit() {
        let t0 = Instant::now();
        // No marker at all.
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        let mut pkts = press(0, 1, 4);
        for (_, p) in &mut pkts {
            p.marker = false;
        }
        feed(&mut rx, t0, 0, &pkts);
        assert_eq!(drain(&mut rx).len(), 1);
        // Marker on every packet (a broken sender): still one press.
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        for (_, p) in &mut pkts {
            p.marker = true;
        }
        feed(&mut rx, t0, 0, &pkts);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].digit, DtmfDigit::D1);
    }

    #[test]
    fn receiver_lost_start_packets() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        let pkts = press(500, 9, 6);
        feed(&mut rx, t0, 0, &pkts[2..]);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].digit, DtmfDigit::D9);
        assert_eq!(events[0].duration, ms(120));
        // Only the end packets got through.
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        feed(&mut rx, t0, 0, &pkts[5..]);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].ended_by, DtmfEnd::EndBit);
    }

    #[test]
    fn receiver_lost_end_reported_after_timeout() {
        let t0 = Instant::now();
        let config = DtmfReceiverConfig {
            end_timeout: ms(300),
            ..DtmfReceiverConfig::default()
        };
        let mut rx = DtmfReceiver::new(config);
        let pkts = press(0, 10, 5);
        feed(&mut rx, t0, 0, &pkts[..4]);
        assert_eq!(rx.poll_event(), None, "not over yet");
        let deadline = rx.poll_timeout().expect("event in progress");
        assert_eq!(deadline, t0 + ms(60 + 300));
        rx.handle_timeout(deadline - ms(1));
        assert_eq!(rx.poll_event(), None);
        rx.handle_timeout(deadline);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].digit, DtmfDigit::Star);
        assert_eq!(events[0].ended_by, DtmfEnd::Timeout);
        assert_eq!(events[0].duration, ms(80));
        assert_eq!(rx.poll_timeout(), None);
        // The end packets arriving late change nothing.
        feed(&mut rx, t0, 400, &pkts[4..]);
        assert_eq!(rx.poll_event(), None);
    }

    #[test]
    fn receiver_reordered_and_late_packets() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        let mut pkts = press(160, 3, 5);
        pkts.swap(3, 4); // the first end packet overtakes the last update
        pkts.swap(0, 1); // the start packet is late
        feed(&mut rx, t0, 0, &pkts);
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].duration, ms(100));
    }

    #[test]
    fn receiver_repeated_digit_is_two_presses() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        feed(&mut rx, t0, 0, &press(0, 7, 5));
        feed(&mut rx, t0, 200, &press(1600, 7, 5));
        let digits: Vec<char> = drain(&mut rx).iter().map(|e| e.digit.as_char()).collect();
        assert_eq!(digits, vec!['7', '7']);
    }

    #[test]
    fn receiver_lost_end_superseded_by_next_press() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        let first = press(0, 1, 5);
        feed(&mut rx, t0, 0, &first[..4]);
        feed(&mut rx, t0, 120, &press(960, 2, 5));
        let events = drain(&mut rx);
        assert_eq!(events.len(), 2);
        assert_eq!(
            (events[0].digit, events[0].ended_by),
            (DtmfDigit::D1, DtmfEnd::Superseded)
        );
        assert_eq!(
            (events[1].digit, events[1].ended_by),
            (DtmfDigit::D2, DtmfEnd::EndBit)
        );
        // Stragglers of the first press (older timestamp) are ignored.
        feed(&mut rx, t0, 300, &first[4..]);
        assert_eq!(rx.poll_event(), None);
    }

    #[test]
    fn receiver_timestamp_wrap_is_not_stale() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        feed(&mut rx, t0, 0, &press(u32::MAX - 100, 4, 3));
        feed(&mut rx, t0, 200, &press(1500, 6, 3));
        let digits: Vec<char> = drain(&mut rx).iter().map(|e| e.digit.as_char()).collect();
        assert_eq!(digits, vec!['4', '6']);
    }

    #[test]
    fn receiver_long_event_segments_are_one_press() {
        // RFC 4733 section 2.5.1.3: a 10 s press at 8 kHz overflows the 16-bit duration,
        // so the sender starts a second segment at ts + 65535 (or so) without an E bit.
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        let seg2 = 1000u32 + 65_535;
        rx.handle_packet(t0, &packet(1000, 0, false, 160, true))
            .expect("valid");
        rx.handle_packet(t0 + ms(8000), &packet(1000, 0, false, 65_535, false))
            .expect("valid");
        rx.handle_packet(t0 + ms(8200), &packet(seg2, 0, false, 1600, false))
            .expect("valid");
        for _ in 0..3 {
            rx.handle_packet(t0 + ms(9900), &packet(seg2, 0, true, 14_465, false))
                .expect("valid");
        }
        let events = drain(&mut rx);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].rtp_timestamp, 1000);
        assert_eq!(events[0].duration, Duration::from_secs(10));
    }

    #[test]
    fn receiver_ssrc_change_ends_current_event() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        let first = press(5000, 8, 5);
        feed(&mut rx, t0, 0, &first[..2]);
        // New SSRC with an older timestamp: a new stream, not a stale packet.
        let mut second = press(100, 0, 3);
        for (_, p) in &mut second {
            p.ssrc = Ssrc(99);
        }
        feed(&mut rx, t0, 100, &second);
        let digits: Vec<(char, DtmfEnd)> = drain(&mut rx)
            .iter()
            .map(|e| (e.digit.as_char(), e.ended_by))
            .collect();
        assert_eq!(
            digits,
            vec![('8', DtmfEnd::Superseded), ('0', DtmfEnd::EndBit)]
        );
    }

    #[test]
    fn receiver_ignores_non_dtmf_events() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
        feed(&mut rx, t0, 0, &press(0, 32, 4)); // ANS fax tone, RFC 4734
        assert_eq!(rx.poll_event(), None);
        assert_eq!(rx.non_dtmf_events(), 1);
    }

    #[test]
    fn sender_packet_sequence_shape() {
        let config = DtmfSenderConfig::default();
        let seq = dtmf_send_sequence(&config, DtmfDigit::Pound, ms(100), 4242);
        // 100 ms = 5 intervals: 4 updates and 3 end packets.
        assert_eq!(seq.len(), 7);
        for (n, p) in seq.iter().enumerate() {
            assert_eq!(p.timestamp, 4242, "same timestamp throughout");
            assert_eq!(p.marker, n == 0, "marker on the first packet only");
            assert_eq!(p.offset, ms(20 * n as u64), "one packet every 20 ms");
            assert_eq!(p.event.event, 11);
            assert_eq!(p.event.volume, 10);
        }
        let durations: Vec<u16> = seq.iter().map(|p| p.event.duration).collect();
        assert_eq!(durations, vec![160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = seq.iter().map(|p| p.event.end).collect();
        assert_eq!(ends, vec![false, false, false, false, true, true, true]);
        let rtp = seq[0].to_rtp(PT, SeqNo(65535), Ssrc(1));
        assert!(rtp.marker);
        assert_eq!(rtp.payload_type, PT);
        assert_eq!(
            TelephoneEvent::parse(&rtp.payload).expect("valid"),
            seq[0].event
        );
    }

    #[test]
    fn sender_rounds_and_clamps_durations() {
        let config = DtmfSenderConfig {
            volume: 200,
            ..DtmfSenderConfig::default()
        };
        let short = dtmf_send_sequence(&config, DtmfDigit::D1, ms(1), 0);
        assert_eq!(short.len(), 4, "at least two intervals");
        assert_eq!(short[3].event.duration, 320);
        assert_eq!(short[0].event.volume, 63);
        let odd = dtmf_send_sequence(&config, DtmfDigit::D1, ms(90), 0);
        assert_eq!(odd.last().expect("packets").event.duration, 800);
        let long = dtmf_send_sequence(&config, DtmfDigit::D1, Duration::from_secs(60), 0);
        let last = long.last().expect("packets").event.duration;
        assert_eq!(last, 65_440, "largest multiple of 160 in 16 bits");
    }

    #[test]
    fn sender_to_receiver_loopback_with_loss() {
        let t0 = Instant::now();
        let config = DtmfSenderConfig::default();
        let digits = "0123456789*#ABCD";
        let mut rng = XorShift::new(4733);
        for round in 0..50 {
            let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
            let mut ts = 12_345u32.wrapping_mul(round + 1);
            let mut start = 0u64;
            for c in digits.chars() {
                let digit = DtmfDigit::from_char(c).expect("digit");
                let pkts = dtmf_send_sequence(&config, digit, ms(80 + rng.below(100)), ts);
                let mut sent = 0;
                for (i, p) in pkts.iter().enumerate() {
                    // Lose a third of the packets, but never all three end packets.
                    let last = i == pkts.len() - 1;
                    if rng.chance(33) && !(last && sent == 0) {
                        continue;
                    }
                    if p.event.end {
                        sent += 1;
                    }
                    let at = t0 + ms(start) + p.offset;
                    rx.handle_packet(at, &p.to_rtp(PT, SeqNo(i as u16), Ssrc(1)))
                        .expect("valid");
                }
                let span = pkts.last().expect("packets").offset;
                start += span.as_millis() as u64 + 100;
                ts = ts.wrapping_add((span.as_millis() as u32 + 100) * 8);
            }
            rx.handle_timeout(t0 + ms(start + 1000));
            let got: String = drain(&mut rx).iter().map(|e| e.digit.as_char()).collect();
            assert_eq!(got, digits, "round {round}");
        }
    }

    /// The RTP payloads of the UDP packets in a classic little-endian pcap of Ethernet
    /// frames, with their capture times.
    fn pcap_rtp(bytes: &[u8]) -> Vec<(Duration, Vec<u8>)> {
        let u32le = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        assert_eq!(u32le(bytes, 0), 0xa1b2_c3d4, "classic pcap, microseconds");
        assert_eq!(u32le(bytes, 20), 1, "Ethernet link type");
        let mut out = Vec::new();
        let mut pos = 24;
        while pos + 16 <= bytes.len() {
            let t = Duration::from_secs(u64::from(u32le(bytes, pos)))
                + Duration::from_micros(u64::from(u32le(bytes, pos + 4)));
            let len = u32le(bytes, pos + 8) as usize;
            let frame = &bytes[pos + 16..pos + 16 + len];
            pos += 16 + len;
            assert_eq!(&frame[12..14], &[0x08, 0x00], "IPv4");
            let ip = &frame[14..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            assert_eq!(ip[9], 17, "UDP");
            out.push((t, ip[ihl + 8..].to_vec()));
        }
        out
    }

    #[test]
    fn receiver_decodes_sipp_rfc4733_pcaps() {
        // The RFC 4733 captures that ship with SIPp (Debian sip-tester). Each holds one
        // digit, its final packet sent three times with the same sequence number.
        let dir = std::path::Path::new("/usr/share/sip-tester");
        assert!(
            dir.is_dir(),
            "{} not found: run `scripts/install-test-deps` (Debian package sip-tester)",
            dir.display()
        );
        let names = [
            ("0", '0'),
            ("1", '1'),
            ("2", '2'),
            ("3", '3'),
            ("4", '4'),
            ("5", '5'),
            ("6", '6'),
            ("7", '7'),
            ("8", '8'),
            ("9", '9'),
            ("star", '*'),
            ("pound", '#'),
        ];
        let t0 = Instant::now();
        for (name, digit) in names {
            let path = dir.join(format!("dtmf_2833_{name}.pcap"));
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let packets = pcap_rtp(&bytes);
            assert!(packets.len() >= 4, "{}", path.display());
            let base = packets[0].0;
            let mut rx = DtmfReceiver::new(DtmfReceiverConfig::default());
            for (t, datagram) in &packets {
                let rtp = RtpPacket::parse(datagram).expect("valid RTP in capture");
                assert_eq!(rtp.payload_type, PT);
                rx.handle_packet(t0 + (*t - base), &rtp)
                    .expect("valid event");
            }
            let events = drain(&mut rx);
            assert_eq!(events.len(), 1, "{}: {events:?}", path.display());
            assert_eq!(events[0].digit.as_char(), digit, "{}", path.display());
            assert_eq!(events[0].ended_by, DtmfEnd::EndBit);
            println!(
                "{}: digit {} lasting {:?}",
                path.display(),
                events[0].digit,
                events[0].duration
            );
        }
    }
}
