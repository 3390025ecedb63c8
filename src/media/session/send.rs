//! Room -> phone: one send tick (the mixed frame encoded, or an RFC 4733 event packet in
//! its place), RTP emission, and the bounded queue of datagrams toward the phone.

use super::{MAX_QUEUED_TRANSMITS, PhoneMedia, Transmit};
use crate::media::dtmf::{DtmfSendPacket, dtmf_send_sequence};
use crate::media::plc::PhoneCodec;
use std::net::SocketAddr;
use std::time::Instant;

/// An event being sent toward the phone.
#[derive(Debug)]
pub(super) struct OutgoingEvent {
    packets: Vec<DtmfSendPacket>,
    next: usize,
}

impl PhoneMedia {
    pub(super) fn queue(&mut self, mut t: Transmit) {
        // SRTP: nothing leaves in the clear
        if let Some(secure) = self.secure.as_mut()
            && secure.protect(&mut t.bytes).is_err()
        {
            self.stats.tx.dropped += 1;
            return;
        }
        if self.transmits.len() >= MAX_QUEUED_TRANSMITS {
            self.transmits.pop_front();
            self.stats.tx.dropped += 1;
        }
        self.transmits.push_back(t);
    }

    /// One send tick at `at`; `mix_buf` holds the mixed frame. RFC 3551 section 4.1: the
    /// first packet after a stretch without audio packets (start, hold, a DTMF event,
    /// skipped ticks) has the marker bit. RFC 4733 section 2.5.1.2: no audio packet is
    /// sent while an event is (the event takes the tick). Tests: `send_dtmf_*`,
    /// `hold_stops_rtp_but_not_rtcp`, `a_late_owner_skips_ahead_instead_of_bursting`.
    pub(super) fn send_tick(&mut self, at: Instant, skipped: u64) {
        if skipped > 0 {
            self.tx_tick += skipped;
            self.tx_marker = true;
            self.stats.tx.ticks_skipped += skipped;
        }
        let ts = self
            .tx_ts_base
            .wrapping_add(self.tx_tick.wrapping_mul(self.ts_per_tick) as u32);
        self.tx_tick += 1;
        let dest = self.rtp_destination();

        if self.dtmf_active.is_none()
            && self.dtmf_wait == 0
            && dest.is_some()
            && let Some(digit) = self.dtmf_queue.pop_front()
        {
            self.dtmf_active = Some(OutgoingEvent {
                packets: dtmf_send_sequence(&self.dtmf_tx, digit, self.dtmf_duration, ts),
                next: 0,
            });
            self.stats.tx.dtmf_events += 1;
        }
        if let Some(event) = &mut self.dtmf_active {
            let step = event.packets[event.next];
            event.next += 1;
            if event.next == event.packets.len() {
                self.dtmf_active = None;
                self.dtmf_wait = self.dtmf_gap_ticks;
            }
            self.tx_marker = true;
            if let (Some(to), Some(pt)) = (dest, self.dtmf_payload_type) {
                self.out.payload_type = pt;
                self.out.marker = step.marker;
                self.out.timestamp = step.timestamp;
                self.out.payload.clear();
                self.out.payload.extend_from_slice(&step.event.to_bytes());
                self.stats.tx.dtmf_packets += 1;
                self.emit_rtp(at, to);
            }
            return;
        }
        self.dtmf_wait = self.dtmf_wait.saturating_sub(1);

        let Some(to) = dest else {
            self.tx_marker = true;
            return;
        };
        self.out.payload.clear();
        let passed = self.passthrough_payload();
        if !passed {
            self.stats.tx.transcoded_frames += 1;
        }
        match (self.codec, self.opus.as_mut()) {
            _ if passed => {}
            (PhoneCodec::G711(law), _) => law.encode(&self.mix_buf, &mut self.out.payload),
            (PhoneCodec::G722, _) => self.g722.encode(&self.mix_buf, &mut self.out.payload),
            (PhoneCodec::Opus, Some(enc)) => {
                if !enc.encode(&self.mix_buf, &mut self.out.payload) {
                    // DTX (RFC 7587 section 4.2): nothing sent, the next talkspurt's
                    // first packet has the marker bit
                    self.tx_marker = true;
                    self.stats.tx.dtx_frames += 1;
                    return;
                }
            }
            (PhoneCodec::Opus, None) => return,
        }
        self.out.payload_type = self.payload_type;
        self.out.marker = self.tx_marker;
        self.tx_marker = false;
        self.out.timestamp = ts;
        self.emit_rtp(at, to);
    }

    fn emit_rtp(&mut self, at: Instant, to: SocketAddr) {
        self.out.seq = self.tx_seq;
        let mut bytes = self.spare.pop().unwrap_or_default();
        bytes.clear();
        if self.out.write_to(&mut bytes).is_err() {
            return;
        }
        self.tx_seq = self.tx_seq.next();
        self.rtcp.on_rtp_sent(at, &self.out);
        self.stats.tx.packets += 1;
        self.stats.tx.bytes += bytes.len() as u64;
        self.queue(Transmit {
            to,
            rtcp: false,
            bytes,
        });
    }
}
