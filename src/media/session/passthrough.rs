//! Opus passthrough (issue 19 part 2): when the phone speaks Opus, its packets go to the
//! room as they came, and one room track's packets go to the phone as they came, instead
//! of decode, mix and encode. What is saved is the encoder, the costly half; both
//! directions keep decoding, because that is what makes every switch seamless:
//!
//! - Room -> phone: the mixer decodes and mixes every track as before and knows, per
//!   tick, whether the frame is exactly one pushed frame of the only audible track
//!   (`Mixer::take_passthrough`). Then the send tick sends that packet instead of
//!   encoding the mix; otherwise it encodes the mix. Either way the packet gets our
//!   SSRC, the next sequence number and the tick's timestamp (`send::send_tick`), so the
//!   phone sees one continuous stream. When a second track becomes audible the mix is
//!   already there (its decoder and the mixer's prefill ran all along): mixing takes the
//!   very next tick. Passthrough resumes after `RESUME_TICKS` passable ticks in a row,
//!   so double talk with short pauses does not flap between the two encoders.
//! - Phone -> room: each playout tick that pops exactly one whole 20 ms Opus packet and
//!   decodes it hands that packet along with the PCM (`RoomPayload::Opus`). The PCM is
//!   still there for the track's audio level (active speakers), the PIN reader and the
//!   test phone's recording. A frame the jitter buffer concealed or filled while the
//!   phone's packets were passing is not re-encoded (`RoomPayload::Skip`): the room's
//!   receivers conceal the gap themselves, with the FEC of the next packet, which passes
//!   untouched. Other frames (before the first packet, another packetization, a stereo
//!   or odd packet) are encoded as before (`RoomPayload::Pcm`).
//!
//! The cost of decoding is what a switch needs: an Opus decoder that starts cold at a
//! switch would play its first frame from nothing (a concealed or half-level frame), and
//! the mixer would need its prefill (40 ms) before the new mix could start, a gap.
//! Tests: `passthrough_*` in `session::tests`, `mixer_passes_*` in `media::mixer`.

use super::{FrameKind, PHONE_FRAME, PhoneMedia};
use crate::media::opus::passable;
use crate::media::plc::PhoneCodec;
use std::collections::VecDeque;

/// Passable send ticks in a row before the room's packets pass through again after
/// mixing (100 ms at 20 ms).
pub const RESUME_TICKS: u32 = 5;

/// What goes to the room for one 20 ms frame of the phone's audio.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RoomPayload {
    /// Encode the PCM.
    #[default]
    Pcm,
    /// Send this Opus packet as it came from the phone (the PCM is its decoding).
    Opus(Vec<u8>),
    /// A slot lost while the phone's packets pass through: send nothing.
    Skip,
}

/// Passthrough state of a phone leg.
#[derive(Debug, Default)]
pub(super) struct Passthrough {
    /// The phone leg is Opus at 20 ms.
    uplink: bool,
    downlink: bool,
    /// The phone's packet of each ready frame (`None`: encode), oldest first.
    coded: VecDeque<Option<Vec<u8>>>,
    /// What goes with the frame handed out last.
    last: RoomPayload,
    /// The phone's packets are passing (the last frame with audio was passed).
    passing_up: bool,
    /// Send ticks since the last one that could not pass (saturates).
    passable_ticks: u32,
}

impl Passthrough {
    pub(super) fn new(codec: PhoneCodec, send_ptime: std::time::Duration) -> Passthrough {
        let opus = codec == PhoneCodec::Opus;
        Passthrough {
            uplink: opus,
            downlink: opus && send_ptime == PHONE_FRAME,
            passable_ticks: RESUME_TICKS,
            ..Passthrough::default()
        }
    }
}

impl PhoneMedia {
    /// A room track's packet worth keeping with its decoded frame for passthrough.
    pub(super) fn room_packet(&self, packet: Option<Vec<u8>>) -> Option<Vec<u8>> {
        packet.filter(|p| self.pass.downlink && passable(p, PHONE_FRAME))
    }

    /// Send tick: fills `out.payload` with the room's packet if this tick passes it
    /// through (see the module documentation).
    pub(super) fn passthrough_payload(&mut self) -> bool {
        match self.mixer.take_passthrough() {
            Some(packet) => {
                self.pass.passable_ticks = self.pass.passable_ticks.saturating_add(1);
                if self.pass.passable_ticks <= RESUME_TICKS {
                    return false;
                }
                self.out.payload.clear();
                self.out.payload.extend_from_slice(&packet);
                self.stats.tx.passthrough_frames += 1;
                true
            }
            None => {
                self.pass.passable_ticks = 0;
                false
            }
        }
    }

    /// Playout: the packet that goes with the frame this tick made ready; `packet` is
    /// the one popped if the frame is exactly that packet decoded.
    pub(super) fn tag_ready_frame(&mut self, packet: Option<Vec<u8>>) {
        let packet = packet.filter(|p| {
            self.pass.uplink && self.receive_ptime() == PHONE_FRAME && passable(p, PHONE_FRAME)
        });
        self.pass.coded.push_back(packet);
    }

    /// A ready frame leaves (handed out or dropped): what goes to the room with it.
    pub(super) fn untag_frame(&mut self, kind: FrameKind) {
        let packet = self.pass.coded.pop_front().flatten();
        self.pass.last = match packet {
            Some(p) => {
                self.pass.passing_up = true;
                self.stats.rx.passthrough_frames += 1;
                RoomPayload::Opus(p)
            }
            None if self.pass.passing_up && kind != FrameKind::Decoded => {
                self.stats.rx.passthrough_gaps += 1;
                RoomPayload::Skip
            }
            None => {
                self.pass.passing_up = false;
                self.stats.rx.transcoded_frames += 1;
                RoomPayload::Pcm
            }
        };
    }

    /// What goes to the room with the frame `poll_phone_frame*` gave last.
    pub fn take_room_payload(&mut self) -> RoomPayload {
        std::mem::take(&mut self.pass.last)
    }
}
