//! The phone leg of one call's media, sans-IO: `PhoneMedia` composes the RTP, jitter
//! buffer, playout, mixer, RFC 4733, RTCP and media-timeout cores into one state machine
//! that the call task feeds with datagrams, room audio and time, and drains for datagrams
//! toward the phone, 20 ms frames toward the room, and events. Time is always an argument.
//!
//! - Inputs: `handle_rtp`, `handle_rtcp`, `push_room_audio` / `remove_track`,
//!   `send_dtmf`, `set_remote` (re-INVITE), `handle_timeout`.
//! - Outputs: `poll_transmit` (RTP and RTCP toward the phone), `poll_phone_frame` (the
//!   phone's audio for the room), `poll_event`, `poll_timeout`, `stats`.
//! - Clocks: the send tick (the mixer's, every send ptime), the playout tick (every
//!   20 ms) and the RTCP timer are schedules of the form `previous + period`, so they never
//!   drift with the owner's wake-ups; an owner more than `MAX_CATCH_UP` frames late skips
//!   ahead instead of bursting. `handle_timeout(now)` and every `poll_*` advance all of
//!   them to `now`, so `poll_timeout()` is never in the past after `handle_timeout`.
//! - Phone -> room: a datagram is checked (parses, payload type is ours, comes from the
//!   phone), then telephone-events go to the `DtmfReceiver` and audio to the
//!   `JitterBuffer`, which runs at the phone's own packetization (read from the payload
//!   size, so 30 ms packets work whatever the SDP said). Each playout tick pops the buffer
//!   as often as needed, decodes with concealment (`PlayoutDecoder`) into a FIFO and hands
//!   out exactly 20 ms. There is one frame every 20 ms from the start, silence before
//!   the first packet and while nothing arrives, so the room track keeps a steady clock.
//! - Room -> phone: room tracks go into the `Mixer` (the caller's own identity is never
//!   mixed), one frame per send tick is encoded and sent, silence included, so NATs and
//!   the phone's own media timeout stay happy. A DTMF event replaces audio for its
//!   duration (same clock, no audio packet inside the event).
//! - Symmetric RTP (`latch`): the first valid packet fixes where RTP goes; a new source
//!   takes over only after `RELATCH_PACKETS` packets while the current one has been quiet
//!   for `RELATCH_QUIET`, so one stray packet never moves it. Without `latch`, only the
//!   SDP address is listened to.
//! - Direction (ours, as `sdp::Negotiated` gives it): RTP is sent only if it `sends()`
//!   and there is a remote address; incoming audio and DTMF are used only if it
//!   `receives()`. RTCP flows whenever there is an address. The media timeout runs only
//!   while `SendRecv` (the phone may well send nothing while it holds the call).
//!
//! Files: this one holds `PhoneMedia` (its inputs, outputs, schedules and playout);
//! `config` (`PhoneMediaConfig`), `output` (datagrams, frames, events, counters), `latch`
//! (symmetric RTP), `loss` (packets lost for the statistics), `send` (room -> phone: the
//! send tick, RFC 4733 events, the transmit queue), `passthrough` (Opus packets passed
//! through both ways instead of re-encoded, issue 19).

mod config;
mod latch;
mod loss;
mod output;
mod passthrough;
mod secure;
mod send;

pub use config::{PhoneMediaConfig, phone_codec};
pub use output::{
    MediaEvent, MediaStats, PhoneFrame, ReceiveStats, SendDtmfError, SendStats, Transmit,
};
pub use passthrough::{RESUME_TICKS, RoomPayload};

use latch::{Latch, Offer, canonical, usable};
use loss::LossCounter;
use passthrough::Passthrough;
use secure::Secure;
use send::OutgoingEvent;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use super::dtmf::{DtmfDigit, DtmfReceiver, DtmfReceiverConfig, DtmfSenderConfig};
use super::g722::{G722_RTP_CLOCK_RATE, G722Encoder};
use super::jitter::{JitterBuffer, JitterConfig, JitterStats};
use super::mixer::{Mixer, MixerConfig, MixerError};
use super::opus::{PhoneEncoder, packet_duration};
use super::plc::{DEFAULT_FADE_FRAMES, PhoneCodec, PlayoutDecoder};
use super::rtcp::{NtpTime, RtcpSession};
use super::rtp::{RtpPacket, SeqNo, Ssrc, is_rtcp};
use super::timeout::{MediaTimeout, MediaTimeoutReason};
use crate::sip::sdp::Direction;

pub use super::plc::FrameKind;

/// The frame toward the room: always 20 ms (160 samples at 8 kHz, 320 at 16 kHz).
pub const PHONE_FRAME: Duration = Duration::from_millis(20);
/// The RTP clock of G.711 and G.722 (RFC 3551 section 4.5.2); Opus runs on 48 kHz
/// (`PhoneCodec::rtp_clock_rate`), and so do its telephone-events.
/// Tests: `g722_room_audio_is_sent_on_the_8khz_rtp_clock`, `opus_*`.
pub const RTP_CLOCK_RATE: u32 = G722_RTP_CLOCK_RATE;
/// Comfort noise (RFC 3389), payload type 13: accepted from the phone and played as the
/// silence it stands for. Test: `pcmu_tone_from_the_phone_comes_out_in_continuous_frames`.
pub const COMFORT_NOISE_PAYLOAD_TYPE: u8 = 13;
/// Overdue ticks still produced before a late owner's schedule skips ahead.
pub const MAX_CATCH_UP: u32 = 5;
/// Consecutive packets a new source must send before it takes the latch over.
pub const RELATCH_PACKETS: u32 = 5;
/// How long the latched source must have been silent for a new one to take over.
pub const RELATCH_QUIET: Duration = Duration::from_millis(100);
/// Packets of a new size needed before the receive packetization changes mid-stream.
const PTIME_CONFIRM_PACKETS: u32 = 3;
/// Frames toward the room held for an owner that does not drain them.
const MAX_READY_FRAMES: usize = 10;
/// Jitter-buffer pops allowed within one playout tick.
const MAX_POPS_PER_TICK: usize = 8;
/// Datagrams held for an owner that does not drain them.
const MAX_QUEUED_TRANSMITS: usize = 64;
/// Events held for an owner that does not drain them.
const MAX_QUEUED_EVENTS: usize = 64;
/// Spare datagram buffers kept for reuse.
const MAX_SPARE_BUFFERS: usize = 8;
/// Digits queued toward the phone at most.
pub const MAX_QUEUED_DIGITS: usize = 32;
/// Audio between two queued digits.
pub const DTMF_INTER_DIGIT: Duration = Duration::from_millis(60);
/// The default tone length of a digit sent to the phone.
pub const DEFAULT_DTMF_DURATION: Duration = Duration::from_millis(100);

/// What a payload type is to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    Audio,
    Event,
    ComfortNoise,
}

/// The phone leg of one call. See the module documentation. Tests: `session::tests`.
#[derive(Debug)]
pub struct PhoneMedia {
    codec: PhoneCodec,
    /// The codec's RTP clock (8000, Opus 48000), which telephone-events share.
    clock_rate: u32,
    payload_type: u8,
    recv_payload_type: u8,
    dtmf_payload_type: Option<u8>,
    recv_dtmf_payload_type: Option<u8>,
    latch: bool,
    rtcp_mux: bool,
    direction: Direction,
    t0: Instant,
    wall0: SystemTime,
    /// Audio samples in 20 ms.
    frame_samples: usize,

    // Where the phone is.
    sdp_remote: Option<SocketAddr>,
    /// The last address SDP gave (kept through a hold), which a non-latching leg
    /// listens to.
    known_remote: Option<SocketAddr>,
    /// The phone's RTP source when latching.
    source: Latch,
    rtcp_source: Option<SocketAddr>,

    // Phone -> room.
    rx_ssrc: Option<Ssrc>,
    rx_frame: Duration,
    ptime_pending: Option<(Duration, u32)>,
    jitter: JitterBuffer,
    decoder: PlayoutDecoder,
    dtmf_rx: DtmfReceiver,
    loss: LossCounter,
    fifo: VecDeque<i16>,
    /// Lengths and kinds of what `fifo` holds, oldest first.
    segments: VecDeque<(usize, FrameKind)>,
    ready: usize,
    next_playout: Instant,
    /// Counters of replaced jitter buffers and decoders.
    retired_late: u64,
    retired_discarded: u64,
    retired_concealed: u64,
    retired_fec: u64,

    // Room -> phone.
    send_ptime: Duration,
    ts_per_tick: u64,
    mixer: Mixer,
    mix_buf: Vec<i16>,
    g722: G722Encoder,
    opus: Option<PhoneEncoder>,
    out: RtpPacket,
    tx_seq: SeqNo,
    tx_ts_base: u32,
    tx_tick: u64,
    tx_marker: bool,
    dtmf_tx: DtmfSenderConfig,
    dtmf_duration: Duration,
    dtmf_gap_ticks: u32,
    dtmf_queue: VecDeque<DtmfDigit>,
    dtmf_active: Option<OutgoingEvent>,
    dtmf_wait: u32,
    transmits: VecDeque<Transmit>,
    spare: Vec<Vec<u8>>,

    rtcp: RtcpSession,
    timeout: MediaTimeout,
    events: VecDeque<MediaEvent>,
    stats: MediaStats,
    /// SRTP, when SDES agreed on keys (`secure`).
    secure: Option<Secure>,
    /// Opus packets passed through (`passthrough`).
    pass: Passthrough,
}

/// splitmix64, to derive the initial sequence number and timestamp from the SSRC.
fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn samples_in(d: Duration, rate: u32) -> usize {
    (d.as_micros() * u128::from(rate) / 1_000_000) as usize
}

/// Our packetization: the SDP's when it is 10-60 ms in 10 ms steps (Opus: a frame size
/// it has, 10, 20, 40 or 60 ms) and within the phone's maxptime, else 20 ms.
fn send_ptime(ptime: Duration, codec: PhoneCodec, maxptime: Option<Duration>) -> Duration {
    let ms = ptime.as_millis();
    let whole = ptime.subsec_nanos().is_multiple_of(1_000_000);
    let sizes_ok = match codec {
        PhoneCodec::Opus => matches!(ms, 10 | 20 | 40 | 60),
        _ => (10..=60).contains(&ms) && ms.is_multiple_of(10),
    };
    if whole && sizes_ok && maxptime.is_none_or(|m| ptime <= m) {
        ptime
    } else {
        PHONE_FRAME
    }
}

fn jitter_for(frame: Duration, clock_rate: u32) -> JitterBuffer {
    JitterBuffer::new(JitterConfig {
        clock_rate,
        frame,
        ..JitterConfig::default()
    })
}

fn jitter_discards(s: &JitterStats) -> u64 {
    s.duplicates + s.overflow_drops + s.expired + s.shrunk_packets + s.flushed + s.held
}

impl PhoneMedia {
    /// A phone leg starting at `now`; `wall` is the wall-clock time at `now` (read by the
    /// owner), from which RTCP's NTP timestamps are derived. The first RTP packet is due
    /// at `now`.
    #[must_use]
    pub fn new(config: PhoneMediaConfig, now: Instant, wall: SystemTime) -> Self {
        let codec = config.codec;
        let rate = codec.sample_rate();
        let clock_rate = codec.rtp_clock_rate();
        let frame_samples = samples_in(PHONE_FRAME, rate);
        let rx_frame = if (10..=120).contains(&config.ptime.as_millis()) {
            config.ptime
        } else {
            PHONE_FRAME
        };
        let send_ptime = send_ptime(config.ptime, codec, config.maxptime);
        let mixer = Mixer::new(
            MixerConfig {
                sample_rate: rate,
                frame: send_ptime,
                prefill: (send_ptime + PHONE_FRAME).max(Duration::from_millis(40)),
                max_catch_up: MAX_CATCH_UP,
                ..MixerConfig::default()
            },
            config.local_identity.clone(),
            now,
        );
        let mix_buf = vec![0; mixer.frame_samples()];
        // RFC 3550 section 5.1: the initial sequence number and timestamp should be
        // random; they follow from the SSRC, which the owner draws at random.
        // Test: `initial_sequence_and_timestamp_follow_the_ssrc`.
        let seed = mix64(u64::from(config.local_ssrc.0));
        let payload_type = config.payload_type & 0x7f;
        let mut out = RtpPacket::new(
            payload_type,
            SeqNo(seed as u16),
            0,
            config.local_ssrc,
            Vec::with_capacity(mixer.frame_samples()),
        );
        out.marker = true;
        let mut timeout = MediaTimeout::new(config.timeouts, now);
        if config.direction != Direction::SendRecv {
            timeout.pause();
        }
        // RFC 4733 section 2.1: events on the audio codec's clock (8000, Opus 48000), or
        // the one SDP gave them
        let dtmf_tx = DtmfSenderConfig {
            clock_rate: config.dtmf_clock_rate,
            packet_interval: send_ptime,
            ..DtmfSenderConfig::default()
        };
        let remote = usable(config.remote_rtp);
        let opus = match codec {
            PhoneCodec::Opus => PhoneEncoder::new(rate, &config.opus).ok(),
            _ => None,
        };
        PhoneMedia {
            codec,
            clock_rate,
            payload_type,
            recv_payload_type: config.recv_payload_type & 0x7f,
            dtmf_payload_type: config.dtmf_payload_type.map(|pt| pt & 0x7f),
            recv_dtmf_payload_type: config
                .recv_dtmf_payload_type
                .or(config.dtmf_payload_type)
                .map(|pt| pt & 0x7f),
            latch: config.latch,
            rtcp_mux: config.rtcp_mux,
            direction: config.direction,
            t0: now,
            wall0: wall,
            frame_samples,
            sdp_remote: remote,
            known_remote: remote,
            source: Latch::default(),
            rtcp_source: None,
            rx_ssrc: None,
            rx_frame,
            ptime_pending: None,
            jitter: jitter_for(rx_frame, clock_rate),
            decoder: PlayoutDecoder::new(codec, samples_in(rx_frame, rate), DEFAULT_FADE_FRAMES)
                .with_payload_types([payload_type, config.recv_payload_type & 0x7f]),
            dtmf_rx: DtmfReceiver::new(DtmfReceiverConfig {
                clock_rate: config.dtmf_clock_rate,
                ..DtmfReceiverConfig::default()
            }),
            loss: LossCounter::default(),
            fifo: VecDeque::with_capacity(frame_samples * (MAX_READY_FRAMES + 8)),
            segments: VecDeque::with_capacity(MAX_READY_FRAMES + 8),
            ready: 0,
            next_playout: now,
            retired_late: 0,
            retired_discarded: 0,
            retired_concealed: 0,
            retired_fec: 0,
            ts_per_tick: samples_in(send_ptime, clock_rate) as u64,
            send_ptime,
            mixer,
            mix_buf,
            g722: G722Encoder::new(),
            opus,
            out,
            tx_seq: SeqNo(seed as u16),
            tx_ts_base: (seed >> 32) as u32,
            tx_tick: 0,
            tx_marker: true,
            dtmf_tx,
            dtmf_duration: config.dtmf_duration,
            dtmf_gap_ticks: DTMF_INTER_DIGIT
                .as_micros()
                .div_ceil(send_ptime.as_micros())
                .max(1) as u32,
            dtmf_queue: VecDeque::new(),
            dtmf_active: None,
            dtmf_wait: 0,
            transmits: VecDeque::with_capacity(8),
            spare: Vec::with_capacity(MAX_SPARE_BUFFERS),
            rtcp: RtcpSession::new(config.local_ssrc, config.cname, clock_rate, now),
            timeout,
            events: VecDeque::new(),
            stats: MediaStats::default(),
            secure: config.srtp.as_ref().map(Secure::new),
            pass: Passthrough::new(codec, send_ptime),
        }
    }

    // ---- inputs ------------------------------------------------------------------

    /// A datagram that arrived on the RTP port from `from` at `now`. RTCP on that port
    /// (rtcp-mux) goes to `handle_rtcp`; anything invalid or foreign is dropped and
    /// counted.
    pub fn handle_rtp(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        if is_rtcp(bytes) {
            self.handle_rtcp(now, from, bytes);
            return;
        }
        let Some(mut secure) = self.secure.take() else {
            return self.handle_plain_rtp(now, from, bytes, bytes.len());
        };
        match secure.unprotect(bytes, false) {
            Ok(plain) => self.handle_plain_rtp(now, from, plain, bytes.len()),
            Err(_) => self.stats.rx.srtp_failed += 1,
        }
        self.secure = Some(secure);
    }

    /// An RTP packet in the clear (unprotected if SRTP is on) that was `wire_len` octets.
    fn handle_plain_rtp(&mut self, now: Instant, from: SocketAddr, bytes: &[u8], wire_len: usize) {
        let Ok(packet) = RtpPacket::parse(bytes) else {
            self.stats.rx.invalid += 1;
            return;
        };
        let pt = packet.payload_type;
        let kind = if pt == self.recv_payload_type || pt == self.payload_type {
            Payload::Audio
        } else if Some(pt) == self.recv_dtmf_payload_type || Some(pt) == self.dtmf_payload_type {
            Payload::Event
        } else if packet.payload_type == COMFORT_NOISE_PAYLOAD_TYPE {
            Payload::ComfortNoise
        } else {
            self.stats.rx.invalid += 1;
            return;
        };
        if !self.accept_source(now, canonical(from)) {
            self.stats.rx.wrong_source += 1;
            return;
        }
        self.stats.rx.packets += 1;
        self.stats.rx.bytes += wire_len as u64;
        self.timeout.on_media(now);
        self.rtcp.on_rtp_received(&packet);
        self.loss.on_packet(packet.ssrc, packet.seq);
        if !self.direction.receives() {
            self.stats.rx.ignored += 1;
            return;
        }
        match kind {
            Payload::Event => {
                if self.dtmf_rx.handle_packet(now, &packet).is_err() {
                    self.stats.rx.invalid += 1;
                }
                self.collect_dtmf();
            }
            // Nothing to decode: playout conceals, then plays silence.
            Payload::ComfortNoise => {}
            Payload::Audio => {
                if packet.payload.is_empty() {
                    return;
                }
                if let Some(old) = self.rx_ssrc
                    && old != packet.ssrc
                {
                    // The jitter buffer resynchronizes by itself on the new SSRC; the
                    // decoder starts over too (G.722 is stateful).
                    self.retire_decoder();
                    self.ptime_pending = None;
                    self.stats.rx.ssrc_changes += 1;
                    self.emit(MediaEvent::SsrcChanged {
                        old,
                        new: packet.ssrc,
                    });
                }
                self.rx_ssrc = Some(packet.ssrc);
                self.observe_packetization(&packet.payload);
                self.jitter.push(now, packet);
            }
        }
    }

    /// An RTCP datagram from `from` at `now`: reports and RTT go into the statistics.
    pub fn handle_rtcp(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let from = canonical(from);
        let allowed = self.latch || self.known_remote.is_some_and(|r| r.ip() == from.ip());
        if !allowed {
            self.stats.rtcp_invalid += 1;
            return;
        }
        let Some(mut secure) = self.secure.take() else {
            return self.handle_plain_rtcp(now, from, bytes);
        };
        match secure.unprotect(bytes, true) {
            Ok(plain) => self.handle_plain_rtcp(now, from, plain),
            Err(_) => self.stats.rx.srtp_failed += 1,
        }
        self.secure = Some(secure);
    }

    fn handle_plain_rtcp(&mut self, now: Instant, from: SocketAddr, bytes: &[u8]) {
        let wall = self.ntp(now);
        if self.rtcp.handle_rtcp(now, wall, bytes).is_err() {
            self.stats.rtcp_invalid += 1;
            return;
        }
        self.stats.rtcp_received += 1;
        // Symmetric RTCP: answer where the phone's RTCP comes from, if it is the phone.
        if self.latch && !self.rtcp_mux && self.rtp_peer().is_some_and(|p| p.ip() == from.ip()) {
            self.rtcp_source = Some(from);
        }
    }

    /// Decoded audio of a room track at the phone rate (normally 20 ms per call). The
    /// track is added to the mixer on first sight (up to `mixer::MAX_TRACKS` of them);
    /// tracks owned by the caller's own identity are never mixed.
    pub fn push_room_audio(&mut self, track_sid: &str, owner_identity: &str, samples: &[i16]) {
        self.push_room_audio_coded(track_sid, owner_identity, samples, None);
    }

    /// `push_room_audio` with the Opus packet `samples` were decoded from, which may
    /// then go to the phone as it is (`passthrough`).
    pub fn push_room_audio_coded(
        &mut self,
        track_sid: &str,
        owner_identity: &str,
        samples: &[i16],
        packet: Option<Vec<u8>>,
    ) {
        let packet = self.room_packet(packet);
        match self.mixer.push_coded(track_sid, samples, packet) {
            Err(MixerError::UnknownTrack(_))
                if self.mixer.add_track(track_sid, owner_identity).is_ok() =>
            {
                let packet = None; // the first frame of a track only fills its prefill
                let _ = self.mixer.push_coded(track_sid, samples, packet);
            }
            _ => {}
        }
    }

    /// The room track is gone (unsubscribed, participant left).
    pub fn remove_track(&mut self, track_sid: &str) {
        self.mixer.remove_track(track_sid);
    }

    /// Queues a key press toward the phone as RFC 4733 events, sent from the next send
    /// tick on with `DTMF_INTER_DIGIT` of audio between digits.
    pub fn send_dtmf(&mut self, now: Instant, digit: DtmfDigit) -> Result<(), SendDtmfError> {
        if self.dtmf_payload_type.is_none() {
            return Err(SendDtmfError::NotNegotiated);
        }
        if self.dtmf_queue.len() >= MAX_QUEUED_DIGITS {
            return Err(SendDtmfError::QueueFull);
        }
        self.drive(now);
        self.dtmf_queue.push_back(digit);
        Ok(())
    }

    /// New SRTP keys (a re-INVITE or UPDATE): what changed is rekeyed, the rest keeps its
    /// state. A plain leg turns SRTP; an SRTP leg never goes back to plain.
    pub fn set_srtp(&mut self, keys: &crate::media::sdes::SrtpKeys) {
        match self.secure.as_mut() {
            Some(s) => s.rekey(keys),
            None => self.secure = Some(Secure::new(keys)),
        }
    }

    /// The SRTP suite in use, `None` for plain RTP.
    #[must_use]
    pub fn srtp_suite(&self) -> Option<crate::media::srtp::SrtpSuite> {
        self.secure.as_ref().map(Secure::suite)
    }

    /// A re-INVITE changed the remote address or our direction. A new address drops the
    /// latch (the next packets latch again); `None` (hold) keeps it for the resume.
    pub fn set_remote(
        &mut self,
        now: Instant,
        remote_rtp: Option<SocketAddr>,
        direction: Direction,
    ) {
        self.drive(now);
        let remote = usable(remote_rtp);
        if remote.is_some() && remote != self.known_remote {
            self.known_remote = remote;
            self.source.reset();
            self.rtcp_source = None;
        }
        self.sdp_remote = remote;
        self.direction = direction;
        if direction == Direction::SendRecv {
            self.timeout.resume(now);
        } else {
            self.timeout.pause();
        }
        // An RTCP report held back for want of an address is due now.
        self.drive(now);
    }

    /// Runs every timer due by `now`: send and playout ticks (their output waits in
    /// `poll_transmit` / `poll_phone_frame`), RTCP, the DTMF end timeout and the media
    /// timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drive(now);
    }

    // ---- outputs -----------------------------------------------------------------

    /// The next datagram toward the phone, if any is due by `now`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        self.drive(now);
        self.transmits.pop_front()
    }

    /// Gives a sent datagram's buffer back for reuse (optional).
    pub fn recycle(&mut self, bytes: Vec<u8>) {
        if self.spare.len() < MAX_SPARE_BUFFERS {
            self.spare.push(bytes);
        }
    }

    /// The next 20 ms of the phone's audio, if a frame is due by `now`: one every 20 ms
    /// from the start, silence before the first packet.
    pub fn poll_phone_frame(&mut self, now: Instant) -> Option<PhoneFrame> {
        self.drive(now);
        if self.ready == 0 {
            return None;
        }
        let mut samples = Vec::with_capacity(self.frame_samples);
        let kind = self.poll_phone_frame_into(now, &mut samples)?;
        Some(PhoneFrame { samples, kind })
    }

    /// `poll_phone_frame` into the caller's buffer (cleared first), without allocating.
    pub fn poll_phone_frame_into(&mut self, now: Instant, out: &mut Vec<i16>) -> Option<FrameKind> {
        self.drive(now);
        if self.ready == 0 {
            return None;
        }
        out.clear();
        self.stats.rx.frames += 1;
        Some(self.take_frame(Some(out)))
    }

    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` is next needed: the next send or playout tick, RTCP report,
    /// DTMF end timeout or media timeout.
    #[must_use]
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.mixer.poll_timeout().min(self.next_playout);
        for d in [self.timeout.poll_timeout(), self.dtmf_rx.poll_timeout()]
            .into_iter()
            .flatten()
        {
            t = t.min(d);
        }
        if self.rtcp_destination().is_some() {
            t = t.min(self.rtcp.poll_timeout());
        }
        t
    }

    #[must_use]
    pub fn stats(&self) -> MediaStats {
        let mut s = self.stats;
        let j = self.jitter.stats();
        s.rx.lost = self.loss.lost();
        s.rx.jitter_ms = self.jitter.jitter().as_secs_f64() * 1000.0;
        s.rx.late = self.retired_late + j.too_late;
        s.rx.discarded = self.retired_discarded + jitter_discards(j);
        s.rx.concealed_frames = self.retired_concealed + self.decoder.stats().concealed;
        s.rx.fec_frames = self.retired_fec + self.decoder.stats().fec_recovered;
        let r = self.rtcp.stats();
        s.tx.lost = r.remote_cumulative_lost.map(i64::from);
        s.tx.jitter_ms = r
            .remote_jitter
            .map(|j| f64::from(j) * 1000.0 / f64::from(self.clock_rate));
        s.rtt = r.rtt;
        s.rtcp_sent = r.reports_sent;
        s
    }

    /// Where RTP goes now, if we send: the latched source or the SDP address.
    #[must_use]
    pub fn remote(&self) -> Option<SocketAddr> {
        self.rtp_destination()
    }

    #[must_use]
    pub fn codec(&self) -> PhoneCodec {
        self.codec
    }

    #[must_use]
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Samples in a 20 ms frame (160 or 320).
    #[must_use]
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Our packetization toward the phone.
    #[must_use]
    pub fn send_ptime(&self) -> Duration {
        self.send_ptime
    }

    /// The phone's packetization, as read from its packets.
    #[must_use]
    pub fn receive_ptime(&self) -> Duration {
        self.rx_frame
    }

    /// The jitter buffer's playout delay target now (for the depth metric).
    pub fn jitter_delay(&self) -> Duration {
        self.jitter.target_delay()
    }

    // ---- internals ---------------------------------------------------------------

    fn ntp(&self, now: Instant) -> NtpTime {
        NtpTime::from_system_time(self.wall0 + now.saturating_duration_since(self.t0))
    }

    /// Where the phone is for RTP, whatever our direction: nowhere without an SDP
    /// address, else the latched source if any.
    fn rtp_peer(&self) -> Option<SocketAddr> {
        let sdp = self.sdp_remote?;
        Some(self.source.addr().unwrap_or(sdp))
    }

    fn rtp_destination(&self) -> Option<SocketAddr> {
        self.rtp_peer().filter(|_| self.direction.sends())
    }

    /// RTCP goes to the RTP address under rtcp-mux, else where the phone's RTCP comes
    /// from (latching), else to the RTP port + 1. RFC 3264 section 5.1: RTCP continues
    /// while a stream is sendonly, recvonly or inactive. Tests: `rtcp_reports_*`,
    /// `hold_stops_rtp_but_not_rtcp`.
    fn rtcp_destination(&self) -> Option<SocketAddr> {
        let rtp = self.rtp_peer()?;
        if self.rtcp_mux {
            return Some(rtp);
        }
        if let Some(src) = self.rtcp_source {
            return Some(src);
        }
        Some(SocketAddr::new(rtp.ip(), rtp.port().checked_add(1)?))
    }

    /// Symmetric RTP (RFC 4961) when latching, the SDP address otherwise.
    /// Tests: `latching_*`, `without_latch_*`.
    fn accept_source(&mut self, now: Instant, from: SocketAddr) -> bool {
        if !self.latch {
            return self.known_remote == Some(from);
        }
        match self.source.offer(now, from) {
            Offer::Current => true,
            Offer::Latched => {
                self.rtcp_source = None;
                self.stats.latches += 1;
                self.emit(MediaEvent::Latched(from));
                true
            }
            Offer::Refused => false,
        }
    }

    /// The phone's packetization, from the payload: its size for G.711 and G.722 (both
    /// carry 8 octets per ms at 64 kbit/s), its TOC for Opus (RFC 6716 section 3.1). A
    /// new size is taken at once before any audio, else after `PTIME_CONFIRM_PACKETS`
    /// packets in a row.
    fn observe_packetization(&mut self, payload: &[u8]) {
        let frame = match self.codec {
            PhoneCodec::Opus => match packet_duration(payload) {
                Some(d) if d.subsec_nanos().is_multiple_of(1_000_000) => d,
                _ => return,
            },
            _ => {
                if !payload.len().is_multiple_of(8) {
                    return;
                }
                Duration::from_millis((payload.len() / 8) as u64)
            }
        };
        if !(10..=120).contains(&frame.as_millis()) {
            return;
        }
        if frame == self.rx_frame {
            self.ptime_pending = None;
            return;
        }
        let confirmed = if self.jitter.stats().received == 0 {
            true
        } else {
            let n = match self.ptime_pending {
                Some((f, n)) if f == frame => n + 1,
                _ => 1,
            };
            self.ptime_pending = Some((frame, n));
            n >= PTIME_CONFIRM_PACKETS
        };
        if confirmed {
            let old = std::mem::replace(&mut self.jitter, jitter_for(frame, self.clock_rate));
            let s = old.stats();
            self.retired_late += s.too_late;
            self.retired_discarded += jitter_discards(s) + old.len() as u64;
            self.rx_frame = frame;
            self.ptime_pending = None;
            self.retire_decoder();
        }
    }

    fn retire_decoder(&mut self) {
        let fresh = PlayoutDecoder::new(
            self.codec,
            samples_in(self.rx_frame, self.codec.sample_rate()),
            DEFAULT_FADE_FRAMES,
        )
        .with_payload_types([self.payload_type, self.recv_payload_type]);
        let old = std::mem::replace(&mut self.decoder, fresh);
        self.retired_concealed += old.stats().concealed;
        self.retired_fec += old.stats().fec_recovered;
    }

    /// Queues an event for the owner; an owner that does not drain loses the oldest.
    fn emit(&mut self, event: MediaEvent) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    fn collect_dtmf(&mut self) {
        while let Some(ev) = self.dtmf_rx.poll_event() {
            self.stats.rx.dtmf_events += 1;
            self.emit(MediaEvent::Dtmf(ev.digit));
        }
    }

    /// Advances every schedule to `now`.
    fn drive(&mut self, now: Instant) {
        if let Some(t) = self.timeout.handle_timeout(now) {
            self.emit(MediaEvent::Timeout {
                after: t.silent_for,
                before_first_packet: t.reason == MediaTimeoutReason::NoMedia,
            });
        }
        self.dtmf_rx.handle_timeout(now);
        self.collect_dtmf();

        loop {
            let skipped_before = self.mixer.stats().skipped_frames;
            if self.mixer.poll_frame(now, &mut self.mix_buf).is_none() {
                break;
            }
            let skipped = self.mixer.stats().skipped_frames - skipped_before;
            let at = self.mixer.poll_timeout() - self.send_ptime;
            self.send_tick(at, skipped);
        }

        while self.next_playout <= now {
            let behind = now.duration_since(self.next_playout);
            if behind > PHONE_FRAME * MAX_CATCH_UP {
                let skip = (behind.as_micros() / PHONE_FRAME.as_micros()) as u32;
                self.next_playout += PHONE_FRAME * skip;
                self.stats.rx.frames_skipped += u64::from(skip);
            }
            let at = self.next_playout;
            self.next_playout += PHONE_FRAME;
            self.playout_tick(at);
        }

        if let Some(to) = self.rtcp_destination()
            && now >= self.rtcp.poll_timeout()
        {
            let wall = self.ntp(now);
            let jitter = self.jitter.jitter_rtp_units();
            if let Some(bytes) = self.rtcp.handle_timeout(now, wall, jitter) {
                let rtcp = !self.rtcp_mux;
                self.queue(Transmit { to, rtcp, bytes });
            }
        }
    }

    /// One playout tick at `at`: make sure the FIFO holds the frame, popping the jitter
    /// buffer (at its own packetization) as often as needed.
    fn playout_tick(&mut self, at: Instant) {
        let need = (self.ready + 1) * self.frame_samples;
        let aligned = self.fifo.len() + self.frame_samples == need;
        let mut packet = None;
        let mut pops = 0;
        while self.fifo.len() < need {
            if pops == MAX_POPS_PER_TICK {
                let missing = need - self.fifo.len();
                self.fifo.extend(std::iter::repeat_n(0, missing));
                self.push_segment(missing, FrameKind::Silence);
                break;
            }
            let playout = self.jitter.pop(at);
            let next = match playout {
                super::jitter::Playout::Lost { .. } => {
                    self.jitter.peek_next().map(|p| p.payload.as_slice())
                }
                _ => None,
            };
            let (kind, samples) = self.decoder.play_before(&playout, next);
            self.fifo.extend(samples.iter().copied());
            let len = samples.len();
            self.push_segment(len, kind);
            pops += 1;
            // passthrough: this frame is exactly this packet, decoded
            packet = match playout {
                super::jitter::Playout::Frame(f)
                    if pops == 1
                        && aligned
                        && kind == FrameKind::Decoded
                        && len == self.frame_samples =>
                {
                    Some(f.packet.payload)
                }
                _ => None,
            };
        }
        self.tag_ready_frame(packet);
        self.ready += 1;
        if self.ready > MAX_READY_FRAMES {
            self.take_frame(None);
            self.stats.rx.frames_skipped += 1;
        }
    }

    fn push_segment(&mut self, len: usize, kind: FrameKind) {
        if len == 0 {
            return;
        }
        match self.segments.back_mut() {
            Some((n, k)) if *k == kind => *n += len,
            _ => self.segments.push_back((len, kind)),
        }
    }

    /// Takes the oldest ready frame out of the FIFO (into `out` if given).
    fn take_frame(&mut self, out: Option<&mut Vec<i16>>) -> FrameKind {
        let n = self.frame_samples.min(self.fifo.len());
        match out {
            Some(out) => out.extend(self.fifo.drain(..n)),
            None => {
                self.fifo.drain(..n);
            }
        }
        self.ready -= 1;
        let (mut decoded, mut concealed) = (false, false);
        let mut remaining = n;
        while remaining > 0 {
            let Some((len, kind)) = self.segments.front_mut() else {
                break;
            };
            let take = (*len).min(remaining);
            decoded |= *kind == FrameKind::Decoded;
            concealed |= *kind == FrameKind::Concealed;
            *len -= take;
            remaining -= take;
            if *len == 0 {
                self.segments.pop_front();
            }
        }
        let kind = if concealed {
            FrameKind::Concealed
        } else if decoded {
            FrameKind::Decoded
        } else {
            FrameKind::Silence
        };
        self.untag_frame(kind);
        kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::dtmf::{TelephoneEvent, dtmf_send_sequence};
    use crate::media::g711::G711;
    use crate::media::g722::G722Decoder;
    use crate::media::rtcp::ReportBlock;
    use crate::media::rtcp::{RtcpPacket, build_receiver_report, parse_compound};
    use crate::media::test_signal::{XorShift, dominant_frequency, goertzel_power, sine};
    use std::collections::BTreeMap;
    use std::f64::consts::PI;

    const PCMU: PhoneCodec = PhoneCodec::G711(G711::Pcmu);
    const PCMA: PhoneCodec = PhoneCodec::G711(G711::Pcma);
    const DTMF_PT: u8 = 101;
    const LOCAL_SSRC: Ssrc = Ssrc(0x1234_5678);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn phone_addr() -> SocketAddr {
        addr("127.0.0.1:5000")
    }

    fn sdp_addr() -> SocketAddr {
        addr("192.0.2.1:4000")
    }

    fn config(codec: PhoneCodec) -> PhoneMediaConfig {
        let mut c = PhoneMediaConfig::new(codec, LOCAL_SSRC, "sip_caller");
        c.remote_rtp = Some(phone_addr());
        c.dtmf_payload_type = Some(DTMF_PT);
        c
    }

    fn decode(codec: PhoneCodec, payloads: &[Vec<u8>]) -> Vec<i16> {
        let mut out = Vec::new();
        let mut g722 = G722Decoder::new();
        let mut opus = crate::media::opus::PhoneDecoder::new(16_000).expect("decoder");
        for p in payloads {
            match codec {
                PhoneCodec::G711(law) => law.decode(p, &mut out),
                PhoneCodec::G722 => g722.decode(p, &mut out),
                PhoneCodec::Opus => opus.decode(p, &mut out).expect("valid Opus"),
            }
        }
        out
    }

    /// A simulated phone sending a tone in RTP packets of `ptime_ms`.
    struct Phone {
        codec: PhoneCodec,
        /// The payload type its audio goes on (the codec's own by default).
        pt: u8,
        ptime_ms: u32,
        ssrc: u32,
        seq: u16,
        ts: u32,
        freq: f64,
        sent_samples: usize,
        g722: G722Encoder,
        opus: Option<crate::media::opus::PhoneEncoder>,
        payloads: Vec<Vec<u8>>,
    }

    impl Phone {
        fn new(codec: PhoneCodec, ptime_ms: u32, freq: f64) -> Self {
            Phone {
                codec,
                pt: codec.payload_type(),
                ptime_ms,
                ssrc: 0xdee0_ee8f,
                seq: 65_500,
                ts: u32::MAX - 2000,
                freq,
                sent_samples: 0,
                g722: G722Encoder::new(),
                opus: (codec == PhoneCodec::Opus).then(|| {
                    let p = crate::sip::sdp::OpusParams::parse("useinbandfec=1");
                    crate::media::opus::PhoneEncoder::new(16_000, &p).expect("encoder")
                }),
                payloads: Vec::new(),
            }
        }

        fn packet(&mut self) -> Vec<u8> {
            let rate = self.codec.sample_rate();
            let n = (rate * self.ptime_ms / 1000) as usize;
            let phase = 2.0 * PI * self.freq * self.sent_samples as f64 / f64::from(rate);
            let pcm = sine(self.freq, 0.3, rate, n, phase);
            self.sent_samples += n;
            let mut payload = Vec::new();
            match self.codec {
                PhoneCodec::G711(law) => law.encode(&pcm, &mut payload),
                PhoneCodec::G722 => self.g722.encode(&pcm, &mut payload),
                PhoneCodec::Opus => {
                    let enc = self.opus.as_mut().expect("an Opus phone has its encoder");
                    assert!(enc.encode(&pcm, &mut payload));
                }
            }
            self.payloads.push(payload.clone());
            let advance = self.codec.rtp_clock_rate() / 1000 * self.ptime_ms;
            self.rtp(self.pt, payload, advance)
        }

        fn rtp(&mut self, pt: u8, payload: Vec<u8>, advance: u32) -> Vec<u8> {
            let mut p = RtpPacket::new(pt, SeqNo(self.seq), self.ts, Ssrc(self.ssrc), payload);
            p.marker = self.payloads.len() == 1 && pt == self.pt;
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(advance);
            p.to_bytes().expect("valid packet")
        }

        /// The RFC 4733 packets of one press, one per 20 ms (audio suppressed meanwhile).
        fn press(&mut self, digit: DtmfDigit) -> Vec<Vec<u8>> {
            let steps = dtmf_send_sequence(&DtmfSenderConfig::default(), digit, ms(100), self.ts);
            let packets = steps
                .iter()
                .map(|s| {
                    let p = s.to_rtp(DTMF_PT, SeqNo(self.seq), Ssrc(self.ssrc));
                    self.seq = self.seq.wrapping_add(1);
                    p.to_bytes().expect("valid packet")
                })
                .collect();
            self.ts = self.ts.wrapping_add(160 * steps.len() as u32);
            packets
        }

        fn reference(&self) -> Vec<i16> {
            decode(self.codec, &self.payloads)
        }
    }

    struct RoomTrack {
        sid: &'static str,
        owner: &'static str,
        pcm: Vec<i16>,
        pos: usize,
        /// The room's Opus encoder of a track whose packets come along (passthrough).
        opus: Option<std::sync::Mutex<opus::Encoder>>,
        /// The track sends (else it is quiet: nothing is pushed).
        on: bool,
    }

    /// A virtual-clock owner: wakes at `poll_timeout` (or when a datagram arrives),
    /// calls `handle_timeout`, drains everything, and feeds 20 ms of each room track per
    /// phone frame, as the room side would.
    struct Sim {
        m: PhoneMedia,
        t0: Instant,
        now: Instant,
        inbound: BTreeMap<(Instant, u64), (SocketAddr, Vec<u8>)>,
        order: u64,
        frames: Vec<PhoneFrame>,
        sent: Vec<(Instant, Transmit)>,
        events: Vec<(Instant, MediaEvent)>,
        tracks: Vec<RoomTrack>,
        /// What went to the room with each frame.
        uplink: Vec<RoomPayload>,
        /// The room packets pushed, by payload.
        room_packets: std::collections::HashSet<Vec<u8>>,
    }

    impl Sim {
        fn new(config: PhoneMediaConfig) -> Sim {
            let t0 = Instant::now();
            Sim {
                m: PhoneMedia::new(
                    config,
                    t0,
                    SystemTime::UNIX_EPOCH + Duration::from_secs(1 << 31),
                ),
                t0,
                now: t0,
                inbound: BTreeMap::new(),
                order: 0,
                frames: Vec::new(),
                sent: Vec::new(),
                events: Vec::new(),
                tracks: Vec::new(),
                uplink: Vec::new(),
                room_packets: std::collections::HashSet::new(),
            }
        }

        fn at(&self, ms_: u64) -> Instant {
            self.t0 + ms(ms_)
        }

        fn deliver(&mut self, at_ms: u64, from: SocketAddr, bytes: Vec<u8>) {
            self.order += 1;
            self.inbound
                .insert((self.at(at_ms), self.order), (from, bytes));
        }

        /// `count` packets of `phone`, one per ptime from `start_ms`.
        fn stream(&mut self, phone: &mut Phone, from: SocketAddr, start_ms: u64, count: u64) {
            for k in 0..count {
                let p = phone.packet();
                self.deliver(start_ms + k * u64::from(phone.ptime_ms), from, p);
            }
        }

        fn add_track(&mut self, sid: &'static str, owner: &'static str, freq: f64) {
            let rate = self.m.codec().sample_rate();
            let pcm = sine(freq, 0.3, rate, rate as usize * 4, 0.0);
            self.tracks.push(RoomTrack {
                sid,
                owner,
                pcm,
                pos: 0,
                opus: None,
                on: true,
            });
        }

        /// A room track whose Opus packets (20 ms, mono, 48 kHz clock) come with its
        /// decoded frames, as the participant delivers them.
        fn add_coded_track(&mut self, sid: &'static str, owner: &'static str, freq: f64) {
            self.add_track(sid, owner, freq);
            let enc = crate::media::opus::encoder(&crate::media::opus::EncoderSettings {
                rate_hz: 16_000,
                complexity: 1,
                bitrate: 32_000,
                fec: true,
                loss_percent: 5,
                dtx: false,
                cbr: false,
                max_bandwidth: opus::Bandwidth::Fullband,
            })
            .expect("encoder");
            self.tracks.last_mut().expect("added").opus = Some(std::sync::Mutex::new(enc));
        }

        fn set_track(&mut self, sid: &str, on: bool) {
            for t in self.tracks.iter_mut().filter(|t| t.sid == sid) {
                t.on = on;
            }
        }

        fn run_until(&mut self, end: Instant) {
            loop {
                let mut next = self.m.poll_timeout();
                if let Some((&(t, _), _)) = self.inbound.first_key_value() {
                    next = next.min(t);
                }
                if next >= end {
                    break;
                }
                // An input (set_remote, send_dtmf) may leave work due right away.
                self.step(next.max(self.now));
            }
            self.now = end;
        }

        fn step(&mut self, now: Instant) {
            self.now = now;
            while let Some(entry) = self.inbound.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let (from, bytes) = entry.remove();
                self.m.handle_rtp(now, from, &bytes);
            }
            self.m.handle_timeout(now);
            self.drain();
            assert!(self.m.poll_timeout() > now, "poll_timeout in the past");
        }

        fn drain(&mut self) {
            let now = self.now;
            while let Some(t) = self.m.poll_transmit(now) {
                self.sent.push((now, t));
            }
            while let Some(f) = self.m.poll_phone_frame(now) {
                assert_eq!(f.samples.len(), self.m.frame_samples());
                self.frames.push(f);
                self.uplink.push(self.m.take_room_payload());
                let n = self.m.frame_samples();
                for t in self.tracks.iter_mut().filter(|t| t.on) {
                    let pcm = &t.pcm[t.pos..t.pos + n];
                    let packet = t.opus.as_mut().map(|enc| {
                        let enc = enc.get_mut().expect("encoder");
                        enc.encode_vec(pcm, 400).expect("encodes")
                    });
                    if let Some(p) = &packet {
                        self.room_packets.insert(p.clone());
                    }
                    self.m.push_room_audio_coded(t.sid, t.owner, pcm, packet);
                    t.pos = (t.pos + n) % (t.pcm.len() - n);
                }
            }
            while let Some(e) = self.m.poll_event() {
                self.events.push((now, e));
            }
        }

        /// RTP sent: (time, destination, packet).
        fn rtp(&self) -> Vec<(Instant, SocketAddr, RtpPacket)> {
            self.sent
                .iter()
                .filter(|(_, t)| !t.rtcp && !is_rtcp(&t.bytes))
                .map(|(at, t)| (*at, t.to, RtpPacket::parse(&t.bytes).expect("valid RTP")))
                .collect()
        }

        fn rtcp(&self) -> Vec<(Instant, &Transmit)> {
            self.sent
                .iter()
                .filter(|(_, t)| t.rtcp || is_rtcp(&t.bytes))
                .map(|(at, t)| (*at, t))
                .collect()
        }

        fn samples(&self) -> Vec<i16> {
            self.frames
                .iter()
                .flat_map(|f| f.samples.iter().copied())
                .collect()
        }

        fn events(&self) -> Vec<MediaEvent> {
            self.events.iter().map(|(_, e)| *e).collect()
        }
    }

    /// Where `reference` appears whole and in order in `out`.
    fn find(out: &[i16], reference: &[i16]) -> Option<usize> {
        let probe = &reference[..64.min(reference.len())];
        (0..=out.len().saturating_sub(reference.len())).find(|&o| {
            &out[o..o + probe.len()] == probe && &out[o..o + reference.len()] == reference
        })
    }

    /// The phone's stream comes out whole: every sample of its decoding, in order, in
    /// frames that are all decoded (never concealed) from the first to the last.
    fn assert_continuous(sim: &Sim, reference: &[i16], freq: f64) {
        let n = sim.m.frame_samples();
        let out = sim.samples();
        let at = find(&out, reference).expect("the whole stream, without a gap");
        assert!(
            sim.frames[..at / n]
                .iter()
                .all(|f| f.kind == FrameKind::Silence)
        );
        assert_decoded_within(&sim.frames, n, at, reference.len());
        let rate = sim.m.codec().sample_rate();
        let f = dominant_frequency(reference, rate);
        assert!((f - freq).abs() < 1.0, "{f} Hz");
        let heard = dominant_frequency(&out[at..at + reference.len()], rate);
        assert!((heard - freq).abs() < 1.0, "{heard} Hz");
    }

    /// Frames wholly inside `len` samples from `at` are all decoded.
    fn assert_decoded_within(frames: &[PhoneFrame], n: usize, at: usize, len: usize) {
        let (first, end) = (at.div_ceil(n), (at + len) / n);
        let inside = &frames[first..end];
        assert!(inside.len() >= len / n - 1);
        let bad: Vec<usize> = (first..end)
            .filter(|&i| frames[i].kind != FrameKind::Decoded)
            .collect();
        assert!(
            bad.is_empty(),
            "frames {bad:?} inside the stream were not decoded"
        );
    }

    #[test]
    fn pcmu_tone_from_the_phone_comes_out_in_continuous_frames() {
        let mut sim = Sim::new(config(PCMU));
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        sim.stream(&mut phone, phone_addr(), 7, 100);
        // Comfort noise (RFC 3389) after the talkspurt: accepted, played as silence.
        let cn = phone.rtp(COMFORT_NOISE_PAYLOAD_TYPE, vec![60], 160);
        sim.deliver(2007, phone_addr(), cn);
        sim.run_until(sim.at(2200));
        assert_eq!(sim.frames.len(), 110, "one frame per 20 ms from the start");
        assert!(sim.frames.iter().all(|f| f.samples.len() == 160));
        assert_continuous(&sim, &phone.reference(), 1000.0);
        assert_eq!(sim.frames.last().map(|f| f.kind), Some(FrameKind::Silence));
        let st = sim.m.stats();
        assert_eq!((st.rx.packets, st.rx.invalid, st.rx.lost), (101, 0, 0));
        assert_eq!(
            st.rx.concealed_frames, DEFAULT_FADE_FRAMES as u64,
            "the fade at the end"
        );
        assert!(st.rx.bytes >= 100 * 172);
    }

    #[test]
    fn lost_packets_are_counted_and_concealed() {
        let mut sim = Sim::new(config(PCMU));
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        for k in 0..100u64 {
            let p = phone.packet();
            if ![30, 31, 60].contains(&k) {
                sim.deliver(5 + 20 * k, phone_addr(), p);
            }
        }
        sim.run_until(sim.at(2200));
        let st = sim.m.stats();
        assert_eq!((st.rx.packets, st.rx.lost), (97, 3));
        // Concealed: 2 + 1 frames for the gaps, 3 for the fade after the last packet.
        assert_eq!(st.rx.concealed_frames, 2 + 1 + 3);
        assert_eq!(sim.frames.len(), 110);
        let concealed = sim
            .frames
            .iter()
            .filter(|f| f.kind == FrameKind::Concealed)
            .count();
        assert!((3..=6).contains(&concealed), "{concealed}");
    }

    #[test]
    fn g722_tone_from_the_phone_comes_out_at_16khz() {
        let mut c = config(PhoneCodec::G722);
        c.payload_type = 9;
        let mut sim = Sim::new(c);
        let mut phone = Phone::new(PhoneCodec::G722, 20, 1000.0);
        sim.stream(&mut phone, phone_addr(), 3, 100);
        sim.run_until(sim.at(2200));
        assert_eq!(sim.frames.len(), 110);
        assert!(sim.frames.iter().all(|f| f.samples.len() == 320));
        assert_continuous(&sim, &phone.reference(), 1000.0);
        assert_eq!(
            phone.payloads[0].len(),
            160,
            "8 kHz RTP clock, 160 octets per 20 ms"
        );
    }

    #[test]
    fn pcma_30ms_packets_come_out_as_continuous_20ms_frames() {
        // The SDP said nothing (20 ms assumed); the phone sends 30 ms.
        let mut sim = Sim::new(config(PCMA));
        let mut phone = Phone::new(PCMA, 30, 1000.0);
        sim.stream(&mut phone, phone_addr(), 11, 66);
        sim.run_until(sim.at(2200));
        assert_eq!(sim.m.receive_ptime(), ms(30));
        assert_eq!(sim.frames.len(), 110);
        assert!(sim.frames.iter().all(|f| f.samples.len() == 160));
        assert_continuous(&sim, &phone.reference(), 1000.0);
        assert_eq!(sim.m.stats().rx.discarded, 0);
    }

    /// The RTP payloads of a classic little-endian pcap of Ethernet/IPv4/UDP frames,
    /// with their capture times.
    fn pcap_datagrams(bytes: &[u8]) -> Vec<(Duration, Vec<u8>)> {
        let le =
            |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
        assert_eq!(le(0), 0xa1b2_c3d4, "classic pcap");
        let mut out = Vec::new();
        let mut pos = 24;
        while pos + 16 <= bytes.len() {
            let t = Duration::from_secs(u64::from(le(pos)))
                + Duration::from_micros(u64::from(le(pos + 4)));
            let len = le(pos + 8) as usize;
            let frame = &bytes[pos + 16..pos + 16 + len];
            pos += 16 + len;
            let ip = &frame[14..];
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            out.push((t, ip[ihl + 8..].to_vec()));
        }
        out
    }

    #[test]
    fn sipp_g711a_pcap_with_30ms_packets_plays_without_a_gap() {
        // SIPp's g711a.pcap (Debian sip-tester): 7 s of speech in 30 ms PCMA packets,
        // captured with 25-35 ms between packets.
        let path = std::path::Path::new("/usr/share/sip-tester/g711a.pcap");
        let bytes = std::fs::read(path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: run `scripts/install-test-deps` (Debian package sip-tester)",
                path.display()
            )
        });
        let datagrams = pcap_datagrams(&bytes);
        assert!(datagrams.len() > 200);
        let mut sim = Sim::new(config(PCMA));
        let base = datagrams[0].0;
        let mut payloads = Vec::new();
        for (t, d) in &datagrams {
            let p = RtpPacket::parse(d).expect("RTP in the capture");
            assert_eq!((p.payload_type, p.payload.len()), (8, 240));
            payloads.push(p.payload);
            sim.deliver(5 + (*t - base).as_millis() as u64, phone_addr(), d.clone());
        }
        sim.run_until(sim.at(7400));
        assert_eq!(sim.m.receive_ptime(), ms(30));
        assert_eq!(sim.frames.len(), 370);
        let reference = decode(PCMA, &payloads);
        let out = sim.samples();
        let at = find(&out, &reference).expect("every packet played, in order, without a gap");
        assert_decoded_within(&sim.frames, 160, at, reference.len());
        let st = sim.m.stats();
        assert_eq!(
            (st.rx.late, st.rx.discarded, st.rx.concealed_frames),
            (0, 0, DEFAULT_FADE_FRAMES as u64)
        );
    }

    #[test]
    fn room_tone_goes_to_the_latched_address_as_pcmu_50_packets_per_second() {
        let mut c = config(PCMU);
        c.remote_rtp = Some(sdp_addr());
        c.latch = true;
        let mut sim = Sim::new(c);
        sim.add_track("TR_alice", "alice", 440.0);
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        sim.stream(&mut phone, phone_addr(), 100, 150);
        sim.run_until(sim.at(3000));
        assert_eq!(sim.events(), vec![MediaEvent::Latched(phone_addr())]);
        let rtp = sim.rtp();
        for (at, to, _) in &rtp {
            let want = if *at < sim.at(100) {
                sdp_addr()
            } else {
                phone_addr()
            };
            assert_eq!(*to, want);
        }
        let second = rtp
            .iter()
            .filter(|(at, _, _)| (sim.at(1000)..sim.at(2000)).contains(at))
            .count();
        assert_eq!(second, 50, "50 packets per second");
        assert_eq!(rtp.len(), 150);
        for (k, (_, _, p)) in rtp.iter().enumerate() {
            assert_eq!(
                (p.payload_type, p.ssrc, p.payload.len()),
                (0, LOCAL_SSRC, 160)
            );
            assert_eq!(p.marker, k == 0, "marker on the first packet only");
            if k > 0 {
                let prev = &rtp[k - 1].2;
                assert_eq!(p.seq, prev.seq.next());
                assert_eq!(p.timestamp, prev.timestamp.wrapping_add(160));
            }
        }
        let payloads: Vec<Vec<u8>> = rtp[50..]
            .iter()
            .map(|(_, _, p)| p.payload.clone())
            .collect();
        let heard = decode(PCMU, &payloads);
        let f = dominant_frequency(&heard, 8000);
        assert!((f - 440.0).abs() < 1.0, "{f} Hz");
        let st = sim.m.stats();
        assert_eq!((st.tx.packets, st.latches), (150, 1));
    }

    #[test]
    fn a_negotiated_30ms_ptime_is_what_we_send() {
        let mut c = config(PCMA);
        c.ptime = ms(30);
        let mut sim = Sim::new(c);
        sim.add_track("TR_alice", "alice", 440.0);
        let mut phone = Phone::new(PCMA, 30, 1000.0);
        sim.stream(&mut phone, phone_addr(), 4, 66);
        sim.run_until(sim.at(2100));
        assert_eq!(sim.m.send_ptime(), ms(30));
        let rtp = sim.rtp();
        assert_eq!(rtp.len(), 70);
        for w in rtp.windows(2) {
            assert_eq!(w[1].0 - w[0].0, ms(30));
            assert_eq!(w[1].2.timestamp, w[0].2.timestamp.wrapping_add(240));
            assert_eq!(w[1].2.payload.len(), 240);
        }
        let payloads: Vec<Vec<u8>> = rtp[3..].iter().map(|(_, _, p)| p.payload.clone()).collect();
        let heard = decode(PCMA, &payloads);
        for packet in heard.chunks(240) {
            let power = packet.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / 240.0;
            assert!(
                power.sqrt() > 5000.0,
                "20 ms room frames never starve 30 ms ticks"
            );
        }
        let f = dominant_frequency(&heard, 8000);
        assert!((f - 440.0).abs() < 1.0, "{f} Hz");
        // Toward the room it is 20 ms frames all the same.
        assert_eq!(sim.frames.len(), 105);
        assert_continuous(&sim, &phone.reference(), 1000.0);
    }

    #[test]
    fn g722_room_audio_is_sent_on_the_8khz_rtp_clock() {
        let mut sim = Sim::new(config(PhoneCodec::G722));
        sim.add_track("TR_alice", "alice", 440.0);
        sim.run_until(sim.at(1000));
        let rtp = sim.rtp();
        assert_eq!(rtp.len(), 50);
        for w in rtp.windows(2) {
            assert_eq!(w[1].2.timestamp, w[0].2.timestamp.wrapping_add(160));
            assert_eq!((w[1].2.payload_type, w[1].2.payload.len()), (9, 160));
        }
        let payloads: Vec<Vec<u8>> = rtp.iter().map(|(_, _, p)| p.payload.clone()).collect();
        let heard = decode(PhoneCodec::G722, &payloads);
        assert_eq!(heard.len(), 50 * 320);
        let f = dominant_frequency(&heard[4000..], 16_000);
        assert!((f - 440.0).abs() < 1.0, "{f} Hz");
    }

    /// PCMU on a dynamic payload type (RFC 3551 allows it): decoded, not concealed.
    #[test]
    fn a_static_codec_on_a_dynamic_payload_type_is_decoded() {
        let mut c = config(PCMU);
        c.payload_type = 112;
        c.recv_payload_type = 112;
        let mut sim = Sim::new(c);
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        phone.pt = 112;
        sim.stream(&mut phone, phone_addr(), 3, 50);
        sim.run_until(sim.at(1200));
        // every packet decoded in order (only the fade after the stream's end is concealed)
        assert_continuous(&sim, &phone.reference(), 1000.0);
        assert_eq!(
            sim.m.stats().rx.concealed_frames,
            u64::from(DEFAULT_FADE_FRAMES)
        );
    }

    /// An Opus phone (dynamic payload type 111, 48 kHz clock): its 6 kHz tone (beyond
    /// G.711) comes out of the leg as continuous 16 kHz frames.
    #[test]
    fn opus_tone_from_the_phone_comes_out_at_16khz() {
        let mut sim = Sim::new(config(PhoneCodec::Opus));
        let mut phone = Phone::new(PhoneCodec::Opus, 20, 6000.0);
        sim.stream(&mut phone, phone_addr(), 3, 100);
        sim.run_until(sim.at(2200));
        assert_eq!(sim.frames.len(), 110);
        assert!(sim.frames.iter().all(|f| f.samples.len() == 320));
        let s = sim.samples();
        let f = dominant_frequency(&s[320 * 20..320 * 90], 16_000);
        assert!((f - 6000.0).abs() < 20.0, "{f} Hz");
        assert_eq!(sim.m.receive_ptime(), ms(20));
        // 40 ms Opus packets are read from the TOC
        let mut sim = Sim::new(config(PhoneCodec::Opus));
        let mut phone = Phone::new(PhoneCodec::Opus, 40, 1000.0);
        sim.stream(&mut phone, phone_addr(), 3, 50);
        sim.run_until(sim.at(2200));
        assert_eq!(sim.m.receive_ptime(), ms(40));
        let s = sim.samples();
        let f = dominant_frequency(&s[320 * 20..320 * 90], 16_000);
        assert!((f - 1000.0).abs() < 5.0, "{f} Hz");
    }

    /// A lost Opus packet is rebuilt from the in-band FEC of the one after it.
    #[test]
    fn opus_loss_is_concealed_from_the_next_packets_fec() {
        let mut sim = Sim::new(config(PhoneCodec::Opus));
        let mut phone = Phone::new(PhoneCodec::Opus, 20, 440.0);
        for k in 0..100u64 {
            let p = phone.packet();
            if k % 10 != 5 {
                sim.deliver(3 + 20 * k, phone_addr(), p);
            }
        }
        sim.run_until(sim.at(2400));
        let st = sim.m.stats();
        assert!(st.rx.fec_frames >= 8, "{st:?}");
        let s = sim.samples();
        let f = dominant_frequency(&s[320 * 20..320 * 90], 16_000);
        assert!((f - 440.0).abs() < 2.0, "{f} Hz");
    }

    /// Room audio toward an Opus phone: 20 ms packets on the 48 kHz clock with the
    /// negotiated payload type, a 5 kHz tone intact; DTX (the phone's `usedtx=1`) sends
    /// nothing for silence and marks the next talkspurt.
    #[test]
    fn opus_room_audio_is_sent_on_the_48khz_clock() {
        let mut c = config(PhoneCodec::Opus);
        c.payload_type = 96;
        c.recv_payload_type = 96;
        let mut sim = Sim::new(c);
        sim.add_track("TR_alice", "alice", 5000.0);
        sim.run_until(sim.at(1000));
        let rtp = sim.rtp();
        assert!(rtp.len() >= 49, "{}", rtp.len());
        for w in rtp.windows(2) {
            assert_eq!(w[1].2.timestamp, w[0].2.timestamp.wrapping_add(960));
            assert_eq!(w[1].2.payload_type, 96);
        }
        let payloads: Vec<Vec<u8>> = rtp.iter().map(|(_, _, p)| p.payload.clone()).collect();
        let heard = decode(PhoneCodec::Opus, &payloads);
        let f = dominant_frequency(&heard[4000..], 16_000);
        assert!((f - 5000.0).abs() < 20.0, "{f} Hz");

        let mut c = config(PhoneCodec::Opus);
        c.opus = crate::sip::sdp::OpusParams::parse("usedtx=1");
        let mut sim = Sim::new(c);
        sim.run_until(sim.at(2000));
        let st = sim.m.stats();
        assert!(st.tx.dtx_frames > 50, "{st:?}");
        assert!(
            sim.rtp().len() < 30,
            "{} packets of silence",
            sim.rtp().len()
        );
    }

    /// RFC 4733 with Opus: telephone-events on the 48 kHz clock, both ways.
    #[test]
    fn opus_dtmf_runs_on_the_48khz_clock() {
        let mut sim = Sim::new(config(PhoneCodec::Opus));
        sim.m
            .send_dtmf(sim.now, DtmfDigit::from_char('5').unwrap())
            .unwrap();
        sim.run_until(sim.at(600));
        let events: Vec<RtpPacket> = sim
            .rtp()
            .into_iter()
            .map(|(_, _, p)| p)
            .filter(|p| p.payload_type == DTMF_PT)
            .collect();
        let last = events.last().expect("event packets");
        let duration = u16::from_be_bytes([last.payload[2], last.payload[3]]);
        assert_eq!(duration, 4800, "100 ms at 48 kHz");
        // the phone's digit at 48 kHz is heard
        let cfg = DtmfSenderConfig {
            clock_rate: 48_000,
            ..DtmfSenderConfig::default()
        };
        let mut sim = Sim::new(config(PhoneCodec::Opus));
        let steps = dtmf_send_sequence(&cfg, DtmfDigit::from_char('7').unwrap(), ms(100), 4242);
        for (i, st) in steps.iter().enumerate() {
            let p = st.to_rtp(DTMF_PT, SeqNo(100 + i as u16), Ssrc(9));
            sim.deliver(10 + 20 * i as u64, phone_addr(), p.to_bytes().unwrap());
        }
        sim.run_until(sim.at(1000));
        assert!(
            sim.events()
                .contains(&MediaEvent::Dtmf(DtmfDigit::from_char('7').unwrap())),
            "{:?}",
            sim.events()
        );
    }

    #[test]
    fn the_callers_own_track_is_never_mixed_back() {
        let mut sim = Sim::new(config(PCMU));
        sim.add_track("TR_self", "sip_caller", 1000.0);
        sim.run_until(sim.at(1000));
        let rtp = sim.rtp();
        assert_eq!(rtp.len(), 50);
        assert!(
            rtp.iter()
                .all(|(_, _, p)| p.payload.iter().all(|&b| b == G711::Pcmu.silence())),
            "only the caller's own track: silence is sent, and still sent"
        );
        sim.add_track("TR_bob", "bob", 440.0);
        sim.run_until(sim.at(2000));
        let payloads: Vec<Vec<u8>> = sim.rtp()[60..]
            .iter()
            .map(|(_, _, p)| p.payload.clone())
            .collect();
        let heard = decode(PCMU, &payloads);
        let (own, bob) = (
            goertzel_power(&heard, 1000.0, 8000),
            goertzel_power(&heard, 440.0, 8000),
        );
        assert!(own < bob * 1e-4, "own {own:e} vs bob {bob:e}");
        sim.m.remove_track("TR_bob");
        sim.tracks.retain(|t| t.sid != "TR_bob");
        sim.run_until(sim.at(2200));
        let last = sim.rtp();
        let (_, _, p) = last.last().expect("sent");
        assert!(p.payload.iter().all(|&b| b == G711::Pcmu.silence()));
    }

    #[test]
    fn without_latch_packets_from_another_address_are_dropped_and_counted() {
        let mut c = config(PCMU);
        c.remote_rtp = Some(sdp_addr());
        let mut sim = Sim::new(c);
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        sim.stream(&mut phone, phone_addr(), 0, 50);
        sim.run_until(sim.at(1200));
        assert!(sim.frames.iter().all(|f| f.kind == FrameKind::Silence));
        assert!(sim.rtp().iter().all(|(_, to, _)| *to == sdp_addr()));
        assert!(sim.events().is_empty());
        let st = sim.m.stats();
        assert_eq!((st.rx.packets, st.rx.wrong_source, st.latches), (0, 50, 0));
        // The SDP address itself is heard.
        let mut from_sdp = Phone::new(PCMU, 20, 1000.0);
        sim.stream(&mut from_sdp, sdp_addr(), 1200, 50);
        sim.run_until(sim.at(2400));
        assert_eq!(sim.m.stats().rx.packets, 50);
        assert!(sim.frames.iter().any(|f| f.kind == FrameKind::Decoded));
    }

    #[test]
    fn latching_ignores_strays_and_parallel_streams_and_follows_a_rebinding() {
        let mut c = config(PCMU);
        c.remote_rtp = Some(sdp_addr());
        c.latch = true;
        let mut sim = Sim::new(c);
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        // The phone sends from :5000 for 1 s, then (NAT rebinding) from :5002.
        sim.stream(&mut phone, phone_addr(), 0, 50);
        let moved = addr("127.0.0.1:5002");
        sim.stream(&mut phone, moved, 1000, 50);
        // One stray packet, then a parallel stream while the phone keeps sending.
        let mut stray = Phone::new(PCMU, 20, 300.0);
        stray.ssrc = 77;
        sim.stream(&mut stray, addr("127.0.0.1:6666"), 305, 1);
        sim.stream(&mut stray, addr("127.0.0.1:7777"), 405, 20);
        sim.run_until(sim.at(2000));

        assert_eq!(
            sim.events(),
            vec![
                MediaEvent::Latched(phone_addr()),
                MediaEvent::Latched(moved)
            ]
        );
        let (latched_at, _) = sim.events[1];
        assert!(latched_at >= sim.at(1000 + 20 * u64::from(RELATCH_PACKETS - 1)));
        assert!(latched_at <= sim.at(1000 + 20 * u64::from(RELATCH_PACKETS + 1)));
        for (at, to, _) in sim.rtp() {
            let want = if at < latched_at { phone_addr() } else { moved };
            assert_eq!(to, want, "at {:?}", at - sim.t0);
        }
        // The stray and the parallel stream never reached playout.
        let out = sim.samples();
        let first = out.iter().position(|&s| s != 0).expect("audio");
        let stretch = &out[first..first + 8000 * 9 / 10];
        assert!(
            goertzel_power(stretch, 300.0, 8000) < goertzel_power(stretch, 1000.0, 8000) * 1e-4
        );
        let st = sim.m.stats();
        assert_eq!(st.latches, 2);
        assert_eq!(st.rx.wrong_source, 1 + 20 + u64::from(RELATCH_PACKETS - 1));
    }

    #[test]
    fn ssrc_change_mid_call_keeps_audio_flowing() {
        let codec = PhoneCodec::G722;
        let mut sim = Sim::new(config(codec));
        let mut first = Phone::new(codec, 20, 1000.0);
        sim.stream(&mut first, phone_addr(), 5, 50);
        // A re-INVITE to another media server: new SSRC, sequence and timestamps.
        let mut second = Phone::new(codec, 20, 700.0);
        (second.ssrc, second.seq, second.ts) = (0x0bad_cafe, 12, 777_777);
        sim.stream(&mut second, phone_addr(), 1005, 50);
        sim.run_until(sim.at(2200));
        assert_eq!(
            sim.events(),
            vec![MediaEvent::SsrcChanged {
                old: Ssrc(0xdee0_ee8f),
                new: Ssrc(0x0bad_cafe)
            }]
        );
        let out = sim.samples();
        // What the jitter buffer still held of the old stream is flushed at the switch.
        let flushed = sim.m.jitter.stats().flushed as usize;
        assert!(flushed <= 2, "{flushed} packets flushed");
        let old = first.reference();
        let played = &old[..old.len() - 320 * flushed];
        let a = find(&out, played).expect("first stream until the switch");
        // The new stream decodes from a fresh G.722 state, whole and in order.
        let b = find(&out, &second.reference()).expect("second stream whole");
        let gap_frames = (b - (a + played.len())) / 320;
        assert!(gap_frames <= 3, "{gap_frames} frames between the streams");
        let f = dominant_frequency(&out[b..b + 16_000], 16_000);
        assert!((f - 700.0).abs() < 1.0);
        assert_eq!(sim.m.stats().rx.ssrc_changes, 1);
    }

    #[test]
    fn an_owner_that_never_drains_events_holds_only_the_newest() {
        let t0 = Instant::now();
        let mut m = PhoneMedia::new(config(PCMU), t0, SystemTime::UNIX_EPOCH);
        // a phone that changes SSRC on every packet: one event each
        for k in 0..200u32 {
            let p = RtpPacket::new(0, SeqNo(k as u16), k * 160, Ssrc(1000 + k), vec![0xff; 160]);
            let mut bytes = Vec::new();
            p.write_to(&mut bytes).unwrap();
            m.handle_rtp(t0 + ms(u64::from(k) * 20), phone_addr(), &bytes);
        }
        let events: Vec<MediaEvent> = std::iter::from_fn(|| m.poll_event()).collect();
        assert_eq!(events.len(), MAX_QUEUED_EVENTS);
        assert_eq!(
            events.last(),
            Some(&MediaEvent::SsrcChanged {
                old: Ssrc(1198),
                new: Ssrc(1199)
            })
        );
        assert_eq!(m.stats().rx.ssrc_changes, 199);
    }

    #[test]
    fn dtmf_from_the_phone_is_one_event_per_press() {
        let mut sim = Sim::new(config(PCMU));
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        let mut t = 0;
        let mut send = |sim: &mut Sim, packets: Vec<Vec<u8>>| {
            for p in packets {
                sim.deliver(t, phone_addr(), p);
                t += 20;
            }
        };
        for round in 0..3 {
            let audio: Vec<Vec<u8>> = (0..10).map(|_| phone.packet()).collect();
            send(&mut sim, audio);
            let digit = [DtmfDigit::D1, DtmfDigit::Pound, DtmfDigit::D1][round];
            let press = phone.press(digit);
            send(&mut sim, press);
        }
        sim.run_until(sim.at(t + 1000));
        assert_eq!(
            sim.events(),
            vec![
                MediaEvent::Dtmf(DtmfDigit::D1),
                MediaEvent::Dtmf(DtmfDigit::Pound),
                MediaEvent::Dtmf(DtmfDigit::D1)
            ]
        );
        let st = sim.m.stats();
        assert_eq!((st.rx.dtmf_events, st.rx.lost, st.rx.invalid), (3, 0, 0));
    }

    #[test]
    fn send_dtmf_sends_rfc4733_events_without_audio_in_between() {
        let mut sim = Sim::new(config(PCMU));
        sim.add_track("TR_alice", "alice", 440.0);
        sim.run_until(sim.at(205));
        let now = sim.now;
        sim.m.send_dtmf(now, DtmfDigit::D5).expect("negotiated");
        sim.m.send_dtmf(now, DtmfDigit::Star).expect("negotiated");
        sim.run_until(sim.at(1000));
        let rtp: Vec<RtpPacket> = sim.rtp().into_iter().map(|(_, _, p)| p).collect();
        for w in rtp.windows(2) {
            assert_eq!(
                w[1].seq,
                w[0].seq.next(),
                "one sequence across audio and events"
            );
        }
        let kinds: String = rtp
            .iter()
            .map(|p| if p.payload_type == DTMF_PT { 'E' } else { 'a' })
            .collect();
        // 100 ms = 5 intervals: 4 updates and 3 end packets; 60 ms of audio between.
        let first = kinds.find('E').expect("events sent");
        assert_eq!(first, 11, "the tick after the request");
        assert_eq!(&kinds[first..first + 20], "EEEEEEEaaaEEEEEEEaaa", "{kinds}");
        for (i, digit) in [(first, DtmfDigit::D5), (first + 10, DtmfDigit::Star)] {
            let event = &rtp[i..i + 7];
            let before = &rtp[i - 1];
            let after = &rtp[i + 7];
            let ts = event[0].timestamp;
            assert_eq!(
                ts,
                before.timestamp.wrapping_add(160),
                "starts on the audio clock"
            );
            let parsed: Vec<TelephoneEvent> = event
                .iter()
                .map(|p| TelephoneEvent::parse(&p.payload).expect("event payload"))
                .collect();
            assert!(
                event.iter().all(|p| p.timestamp == ts),
                "one timestamp per event"
            );
            let durations: Vec<u16> = parsed.iter().map(|e| e.duration).collect();
            assert_eq!(durations, vec![160, 320, 480, 640, 800, 800, 800]);
            let ends: Vec<bool> = parsed.iter().map(|e| e.end).collect();
            assert_eq!(ends, vec![false, false, false, false, true, true, true]);
            assert!(parsed.iter().all(|e| e.event == digit.event_code()));
            let markers: Vec<bool> = event.iter().map(|p| p.marker).collect();
            assert_eq!(
                markers,
                vec![true, false, false, false, false, false, false]
            );
            // Audio resumes as a new talkspurt, past the event's end.
            assert!(after.marker && after.payload_type == 0);
            assert_eq!(after.timestamp, ts.wrapping_add(7 * 160));
        }
        let st = sim.m.stats();
        assert_eq!((st.tx.dtmf_events, st.tx.dtmf_packets), (2, 14));

        let mut plain = config(PCMU);
        plain.dtmf_payload_type = None;
        let mut m = PhoneMedia::new(plain, sim.t0, SystemTime::UNIX_EPOCH);
        assert_eq!(
            m.send_dtmf(sim.t0, DtmfDigit::D1),
            Err(SendDtmfError::NotNegotiated)
        );
    }

    #[test]
    fn media_timeout_fires_at_30s_without_packets_and_15s_after_the_last() {
        let mut sim = Sim::new(config(PCMU));
        sim.run_until(sim.at(60_000));
        assert_eq!(
            sim.events,
            vec![(
                sim.at(30_000),
                MediaEvent::Timeout {
                    after: Duration::from_secs(30),
                    before_first_packet: true
                }
            )]
        );

        let mut sim = Sim::new(config(PCMU));
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        sim.stream(&mut phone, phone_addr(), 0, 100);
        sim.run_until(sim.at(60_000));
        assert_eq!(
            sim.events,
            vec![(
                sim.at(1980 + 15_000),
                MediaEvent::Timeout {
                    after: Duration::from_secs(15),
                    before_first_packet: false
                }
            )]
        );
    }

    #[test]
    fn hold_stops_rtp_but_not_rtcp() {
        let mut sim = Sim::new(config(PCMU));
        sim.run_until(sim.at(1000));
        assert_eq!(sim.rtp().len(), 50);
        // The phone holds with a=inactive: no RTP, RTCP goes on. (What was due by the
        // time of the change, the tick at 1 s, still goes out.)
        let now = sim.now;
        sim.m
            .set_remote(now, Some(phone_addr()), Direction::Inactive);
        sim.drain();
        sim.run_until(sim.at(9000));
        assert_eq!(sim.rtp().len(), 51);
        let rtcp_on_hold = sim
            .rtcp()
            .iter()
            .filter(|(at, _)| *at > sim.at(1000))
            .count();
        assert!(rtcp_on_hold >= 1);
        // The old way, c=0.0.0.0: nothing at all.
        let now = sim.now;
        sim.m
            .set_remote(now, Some(addr("0.0.0.0:4000")), Direction::RecvOnly);
        sim.drain();
        let sent = sim.sent.len();
        sim.run_until(sim.at(20_000));
        assert_eq!(sim.sent.len(), sent);
        assert_eq!(sim.m.remote(), None);
        // No media timeout while held, though the phone sent nothing for 20 s.
        assert!(sim.events.is_empty());
        // Resume: a new talkspurt on the same clock and sequence.
        let now = sim.now;
        sim.m
            .set_remote(now, Some(phone_addr()), Direction::SendRecv);
        sim.drain();
        sim.run_until(sim.at(21_000));
        let rtp = sim.rtp();
        assert_eq!(rtp.len(), 51 + 49);
        let ((t_before, _, last_before), (t_after, _, first_after)) = (&rtp[50], &rtp[51]);
        assert_eq!(*t_after, sim.at(20_020));
        assert_eq!(first_after.seq, last_before.seq.next());
        assert!(first_after.marker, "RFC 3551 section 4.1: a new talkspurt");
        let ticks = ((*t_after - *t_before).as_millis() / 20) as u32;
        assert_eq!(
            first_after.timestamp,
            last_before.timestamp.wrapping_add(160 * ticks)
        );
        assert!(rtp[52..].iter().all(|(_, _, p)| !p.marker));
    }

    #[test]
    fn peer_recvonly_means_we_send_but_ignore_its_audio() {
        let mut c = config(PCMU);
        c.direction = Direction::SendOnly;
        let mut sim = Sim::new(c);
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        sim.stream(&mut phone, phone_addr(), 0, 50);
        sim.run_until(sim.at(1200));
        assert!(sim.frames.iter().all(|f| f.kind == FrameKind::Silence));
        assert_eq!(sim.rtp().len(), 60);
        assert_eq!(sim.m.stats().rx.ignored, 50);
        // (The tick due at the change still goes out.)
        // And the phone's own hold (a=sendonly, so we are recvonly): we stop sending.
        let now = sim.now;
        sim.m
            .set_remote(now, Some(phone_addr()), Direction::RecvOnly);
        sim.drain();
        sim.run_until(sim.at(2000));
        assert_eq!(sim.rtp().len(), 61);
    }

    #[test]
    fn poll_timeout_is_never_in_the_past_and_the_send_schedule_does_not_drift() {
        // 10 minutes of an owner that wakes up to 15 ms late.
        let t0 = Instant::now();
        let mut m = PhoneMedia::new(config(PCMU), t0, SystemTime::UNIX_EPOCH);
        let mut rng = XorShift::new(42);
        let end = t0 + Duration::from_secs(600);
        let mut packets: Vec<RtpPacket> = Vec::with_capacity(30_000);
        let mut frames = 0u64;
        let mut buf = Vec::new();
        loop {
            let due = m.poll_timeout();
            if due >= end {
                break;
            }
            let now = (due + Duration::from_micros(rng.below(15_000)))
                .min(end - Duration::from_micros(1));
            m.handle_timeout(now);
            assert!(m.poll_timeout() > now, "poll_timeout in the past");
            while let Some(t) = m.poll_transmit(now) {
                if !t.rtcp {
                    packets.push(RtpPacket::parse(&t.bytes).expect("RTP"));
                }
                m.recycle(t.bytes);
            }
            while m.poll_phone_frame_into(now, &mut buf).is_some() {
                frames += 1;
            }
        }
        assert_eq!(packets.len(), 30_000, "exactly 50 per second");
        assert_eq!(frames, 30_000);
        let ts0 = packets[0].timestamp;
        for (k, p) in packets.iter().enumerate() {
            assert_eq!(
                p.timestamp,
                ts0.wrapping_add(160 * k as u32),
                "no drift, no skip"
            );
            assert_eq!(p.seq, SeqNo(packets[0].seq.0.wrapping_add(k as u16)));
        }
        let st = m.stats();
        assert_eq!((st.tx.ticks_skipped, st.rx.frames_skipped), (0, 0));
        assert!(st.rtcp_sent >= 80, "{} reports in 10 min", st.rtcp_sent);
    }

    #[test]
    fn a_late_owner_skips_ahead_instead_of_bursting() {
        let mut sim = Sim::new(config(PCMU));
        sim.run_until(sim.at(1000));
        // The owner stalls for 500 ms (25 ticks).
        let sent = sim.rtp().len();
        let frames = sim.frames.len();
        sim.step(sim.at(1500));
        let burst = sim.rtp().len() - sent;
        assert!(
            burst <= MAX_CATCH_UP as usize + 1,
            "{burst} packets at once"
        );
        assert!(sim.frames.len() - frames <= MAX_CATCH_UP as usize + 1);
        sim.run_until(sim.at(2000));
        let rtp = sim.rtp();
        for w in rtp.windows(2) {
            assert_eq!(w[1].2.seq, w[0].2.seq.next());
            let step = w[1].2.timestamp.wrapping_sub(w[0].2.timestamp);
            assert!(
                step == 160 || (w[1].2.marker && step > 160),
                "timestamps follow time"
            );
        }
        // Time, not packets, sets the timestamp: 2 s after the start.
        let (first, last) = (&rtp[0].2, &rtp[rtp.len() - 1].2);
        assert_eq!(last.timestamp.wrapping_sub(first.timestamp), 160 * 99);
        let st = sim.m.stats();
        assert!(st.tx.ticks_skipped > 0 && st.rx.frames_skipped > 0);
    }

    #[test]
    fn rtcp_reports_go_to_port_plus_one_or_the_rtp_port_with_mux() {
        for mux in [false, true] {
            let mut c = config(PCMU);
            c.rtcp_mux = mux;
            let mut sim = Sim::new(c);
            let mut phone = Phone::new(PCMU, 20, 1000.0);
            sim.stream(&mut phone, phone_addr(), 0, 1000);
            sim.run_until(sim.at(20_000));
            let reports = sim.rtcp();
            assert!(
                (3..=8).contains(&reports.len()),
                "{} reports in 20 s",
                reports.len()
            );
            let mut last = sim.t0;
            for (i, (at, t)) in reports.iter().enumerate() {
                let gap = *at - last;
                let (lo, hi) = if i == 0 { (1250, 3750) } else { (2500, 7500) };
                assert!(gap >= ms(lo) && gap <= ms(hi), "report {i} after {gap:?}");
                last = *at;
                let want = if mux {
                    phone_addr()
                } else {
                    addr("127.0.0.1:5001")
                };
                assert_eq!((t.to, t.rtcp), (want, !mux));
                let packets = parse_compound(&t.bytes).expect("valid RTCP");
                match &packets[0] {
                    RtcpPacket::SenderReport { ssrc, reports, .. } => {
                        assert_eq!(*ssrc, LOCAL_SSRC);
                        assert_eq!(reports[0].ssrc, Ssrc(0xdee0_ee8f));
                    }
                    other => panic!("SR expected: {other:?}"),
                }
            }
        }
        // The phone's reports: on port + 1 or muxed on the RTP port; garbage is counted.
        let mut sim = Sim::new(config(PCMU));
        let rr = build_receiver_report(
            Ssrc(0xdee0_ee8f),
            &[ReportBlock {
                ssrc: LOCAL_SSRC,
                fraction_lost: 0,
                cumulative_lost: 7,
                highest_seq: 100,
                jitter: 80,
                lsr: 0,
                dlsr: 0,
            }],
            "phone",
        );
        let now = sim.at(10);
        sim.m.handle_rtcp(now, addr("127.0.0.1:5001"), &rr);
        sim.m.handle_rtp(now, phone_addr(), &rr);
        sim.m
            .handle_rtcp(now, addr("127.0.0.1:5001"), &[0x80, 201, 0, 9]);
        sim.m.handle_rtcp(now, addr("198.51.100.7:5001"), &rr);
        let st = sim.m.stats();
        assert_eq!((st.rtcp_received, st.rtcp_invalid), (2, 2));
        assert_eq!((st.tx.lost, st.tx.jitter_ms), (Some(7), Some(10.0)));
        assert_eq!(st.rx.invalid, 0, "muxed RTCP is not an invalid RTP packet");
    }

    #[test]
    fn initial_sequence_and_timestamp_follow_the_ssrc() {
        let first = |ssrc: u32| {
            let mut c = config(PCMU);
            c.local_ssrc = Ssrc(ssrc);
            let t0 = Instant::now();
            let mut m = PhoneMedia::new(c, t0, SystemTime::UNIX_EPOCH);
            let t = m.poll_transmit(t0).expect("first packet due at once");
            let p = RtpPacket::parse(&t.bytes).expect("RTP");
            assert!(p.marker);
            (p.seq, p.timestamp)
        };
        assert_eq!(first(1), first(1));
        let (a, b) = (first(1), first(2));
        assert!(a.0 != b.0 && a.1 != b.1);
    }

    /// The phone's view of our stream: one SSRC, sequence numbers +1, timestamps +960
    /// (20 ms at 48 kHz) from packet to packet with no tick missing, the marker on the
    /// first packet only.
    fn assert_one_continuous_stream(rtp: &[(Instant, SocketAddr, RtpPacket)]) {
        assert!(rtp[0].2.marker);
        for w in rtp.windows(2) {
            let (a, b) = (&w[0].2, &w[1].2);
            assert_eq!(b.ssrc, LOCAL_SSRC);
            assert_eq!(b.seq.0, a.seq.0.wrapping_add(1), "contiguous sequence");
            assert_eq!(
                b.timestamp,
                a.timestamp.wrapping_add(960),
                "no tick missing"
            );
            assert_eq!(w[1].0.duration_since(w[0].0), ms(20));
            assert!(!b.marker, "no marker inside the stream");
        }
    }

    /// Packets of `rtp` sent in [from, to) ms that are room packets passed as they came,
    /// and the number of packets sent then.
    fn passed(sim: &Sim, from: u64, to: u64) -> (usize, usize) {
        let rtp = sim.rtp();
        let within: Vec<_> = rtp
            .iter()
            .filter(|(t, _, _)| *t >= sim.at(from) && *t < sim.at(to))
            .collect();
        let n = within
            .iter()
            .filter(|(_, _, p)| sim.room_packets.contains(&p.payload))
            .count();
        (n, within.len())
    }

    /// Passthrough toward the phone: one audible room track's packets go as they came;
    /// a second track starting makes the very next frames a mix (both tones), and once
    /// it stops the packets pass again; the phone sees one continuous stream throughout.
    #[test]
    fn passthrough_one_track_passes_then_mixes_without_gap_then_passes_again() {
        let mut sim = Sim::new(config(PhoneCodec::Opus));
        sim.add_coded_track("TR_alice", "alice", 1000.0);
        sim.add_coded_track("TR_bob", "bob", 3000.0);
        sim.set_track("TR_bob", false);
        sim.run_until(sim.at(1000));
        let (p, n) = passed(&sim, 200, 1000);
        assert_eq!((p, n), (40, 40), "alice alone passes through");
        sim.set_track("TR_bob", true);
        sim.run_until(sim.at(2000));
        let (p, n) = passed(&sim, 1100, 2000);
        assert_eq!((p, n), (0, 45), "two voices are mixed");
        // the switch: bob's first frame (after the mixer's prefill) is mixed, the ticks
        // before it still pass alice's packets, and no tick is missing
        let (p, n) = passed(&sim, 1000, 1100);
        assert_eq!(n, 5);
        assert!((1..=3).contains(&p), "{p} passed at the switch");
        let rtp = sim.rtp();
        let payloads: Vec<Vec<u8>> = rtp
            .iter()
            .filter(|(t, _, _)| *t >= sim.at(1200) && *t < sim.at(2000))
            .map(|(_, _, p)| p.payload.clone())
            .collect();
        let heard = decode(PhoneCodec::Opus, &payloads);
        for f in [1000.0, 3000.0] {
            let power = goertzel_power(&heard[1600..], f, 16_000);
            assert!(power > 0.01, "{f} Hz heard at {power}");
        }
        sim.set_track("TR_bob", false);
        sim.run_until(sim.at(3000));
        let (p, n) = passed(&sim, 2300, 3000);
        assert_eq!((p, n), (35, 35), "alice alone passes through again");
        let (p, _) = passed(&sim, 2000, 2300);
        assert!(p > 0 && p < 15, "{p}: resumes after the hold-off");
        assert_one_continuous_stream(&rtp);
        assert_one_continuous_stream(&sim.rtp());
        let st = sim.m.stats();
        assert_eq!(
            st.tx.passthrough_frames + st.tx.transcoded_frames,
            st.tx.packets,
            "{st:?}"
        );
        assert_eq!(st.tx.passthrough_frames as usize, passed(&sim, 0, 3000).0);
        // the tone passed through is the room's, intact
        let all: Vec<Vec<u8>> = sim
            .rtp()
            .iter()
            .map(|(_, _, p)| p.payload.clone())
            .collect();
        let heard = decode(PhoneCodec::Opus, &all[100..]);
        let f = dominant_frequency(&heard[320 * 40..], 16_000);
        assert!((f - 1000.0).abs() < 5.0, "{f} Hz");
    }

    /// A quiet second track (digital silence) does not stop the first one's packets;
    /// DTMF toward the phone takes its ticks and the stream stays continuous around it.
    #[test]
    fn passthrough_ignores_a_silent_track_and_yields_to_dtmf() {
        let mut sim = Sim::new(config(PhoneCodec::Opus));
        sim.add_coded_track("TR_alice", "alice", 1000.0);
        sim.add_coded_track("TR_quiet", "quiet", 1000.0);
        sim.tracks[1].pcm.iter_mut().for_each(|s| *s /= 2000);
        sim.run_until(sim.at(1000));
        assert_eq!(passed(&sim, 200, 1000), (40, 40));
        sim.m
            .send_dtmf(sim.now, DtmfDigit::from_char('5').unwrap())
            .unwrap();
        sim.run_until(sim.at(2000));
        let rtp = sim.rtp();
        let events = rtp
            .iter()
            .filter(|(_, _, p)| p.payload_type == DTMF_PT)
            .count();
        assert!(events >= 5, "{events}");
        let audio: Vec<_> = rtp
            .iter()
            .filter(|(_, _, p)| p.payload_type != DTMF_PT)
            .collect();
        for w in audio.windows(2) {
            assert_eq!(
                w[1].2.seq.0,
                w[0].2
                    .seq
                    .0
                    .wrapping_add(1 + events as u16 * u16::from(w[1].2.marker))
            );
        }
        assert_eq!(passed(&sim, 1500, 2000), (25, 25));
    }

    /// The phone's Opus packets go to the room as they came; a lost one leaves its slot
    /// empty (the room's receivers conceal it with the next packet's FEC) instead of
    /// being re-encoded; PCM goes along for the level. Packets of 40 ms are transcoded.
    #[test]
    fn passthrough_phone_packets_go_to_the_room_as_they_came() {
        let mut sim = Sim::new(config(PhoneCodec::Opus));
        let mut phone = Phone::new(PhoneCodec::Opus, 20, 6000.0);
        for k in 0..100u64 {
            let p = phone.packet();
            if k != 50 {
                sim.deliver(3 + 20 * k, phone_addr(), p);
            }
        }
        sim.run_until(sim.at(2400));
        let sent: Vec<&Vec<u8>> = sim
            .uplink
            .iter()
            .filter_map(|u| match u {
                RoomPayload::Opus(p) => Some(p),
                _ => None,
            })
            .collect();
        let expected: Vec<&Vec<u8>> = phone
            .payloads
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != 50)
            .map(|(_, p)| p)
            .collect();
        assert_eq!(sent, expected, "every packet as it came, in order");
        let first = sim
            .uplink
            .iter()
            .position(|u| matches!(u, RoomPayload::Opus(_)))
            .unwrap();
        assert!(sim.uplink[..first].iter().all(|u| *u == RoomPayload::Pcm));
        assert_eq!(sim.uplink[first + 50], RoomPayload::Skip, "the lost slot");
        let st = sim.m.stats();
        assert_eq!(st.rx.passthrough_frames, 99);
        assert!(st.rx.passthrough_gaps >= 1, "{st:?}");
        // the PCM still comes (level, PIN, recording)
        let s = sim.samples();
        let f = dominant_frequency(&s[320 * 20..320 * 90], 16_000);
        assert!((f - 6000.0).abs() < 20.0, "{f} Hz");

        let mut sim = Sim::new(config(PhoneCodec::Opus));
        let mut phone = Phone::new(PhoneCodec::Opus, 40, 1000.0);
        sim.stream(&mut phone, phone_addr(), 3, 50);
        sim.run_until(sim.at(2200));
        assert!(sim.uplink.iter().all(|u| *u == RoomPayload::Pcm));
        // G.711 never passes
        let mut sim = Sim::new(config(PCMU));
        let mut phone = Phone::new(PCMU, 20, 1000.0);
        sim.stream(&mut phone, phone_addr(), 3, 50);
        sim.add_coded_track("TR_alice", "alice", 1000.0);
        sim.run_until(sim.at(1200));
        assert!(sim.uplink.iter().all(|u| *u == RoomPayload::Pcm));
        assert_eq!(sim.m.stats().tx.passthrough_frames, 0);
    }

    /// Random SSRCs (so random first sequence numbers and timestamps) and random talk
    /// turns of two room tracks: one continuous stream whatever the switches, room
    /// packets pass whenever one track has talked alone for a while, never while both
    /// talk.
    #[test]
    fn passthrough_random_turns_keep_one_continuous_stream() {
        let mut rng = XorShift::new(0x5eed_0019);
        for _ in 0..6 {
            let mut c = config(PhoneCodec::Opus);
            c.local_ssrc = Ssrc(rng.next_u64() as u32);
            let mut sim = Sim::new(c.clone());
            sim.add_coded_track("TR_a", "a", 700.0);
            sim.add_coded_track("TR_b", "b", 2300.0);
            let mut t = 0;
            let mut turns = Vec::new();
            for _ in 0..8 {
                let (a, b) = match rng.next_u64() % 4 {
                    0 => (true, false),
                    1 => (false, true),
                    2 => (true, true),
                    _ => (false, false),
                };
                sim.set_track("TR_a", a);
                sim.set_track("TR_b", b);
                let len = 300 + 20 * (rng.next_u64() % 20);
                sim.run_until(sim.at(t + len));
                turns.push((t, t + len, a, b));
                t += len;
            }
            let rtp = sim.rtp();
            assert!(rtp[0].2.ssrc == c.local_ssrc);
            for w in rtp.windows(2) {
                assert_eq!(w[1].2.seq.0, w[0].2.seq.0.wrapping_add(1));
                assert_eq!(w[1].2.timestamp, w[0].2.timestamp.wrapping_add(960));
                assert!(!w[1].2.marker);
            }
            for (from, to, a, b) in turns {
                let (p, n) = passed(&sim, from + 200, to);
                match (a, b) {
                    (true, true) => assert_eq!(p, 0, "both talk {from}-{to}"),
                    (true, false) | (false, true) => assert_eq!(p, n, "one talks {from}-{to}"),
                    _ => {}
                }
            }
        }
    }
}
