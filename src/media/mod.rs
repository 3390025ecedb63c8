//! Media pipeline cores, sans-IO: RTP/RTCP, G.711, G.722 and Opus, RFC 4733 telephone events,
//! the adaptive jitter buffer with concealment, the mixer and the media timeout, composed
//! into one call's phone leg (`session`); time is always an argument. `socket` is the
//! only module here that does IO.
//!
//! - `rtcp`: RTCP SR/RR/SDES/BYE parse and build, reception stats, RTT, per-call stats.
//! - `rtp`: RTP packet parse/serialize, `Ssrc`, `SeqNo`, sequence/timestamp unwrapping.
//! - `srtp`: SRTP/SRTCP (RFC 3711, RFC 7714) protect/unprotect in place, per direction.
//! - `sdes`: SDES (RFC 4568) `a=crypto` attributes: parse/format, our keys, offer/answer.
//! - `g711`: PCMU/PCMA, bit-exact with ITU-T G.191.
//! - `g722`: G.722 64 kbit/s SB-ADPCM, bit-exact with spandsp.
//! - `opus`: Opus (RFC 7587) on the one binding both edges use: encoder settings, the
//!   phone leg's encoder (per the peer's fmtp, DTX) and decoder (in-band FEC, PLC).
//! - `dtmf`: RFC 4733 telephone-events: payload, digit mapping, receiver, sender.
//! - `jitter`: adaptive jitter buffer (`push(now, packet)`, `pop(now)`).
//! - `mixer`: room -> phone mixer: one input per remote track, caller-clocked 20 ms ticks,
//!   own tracks excluded, starved inputs muted, soft-limited sum.
//! - `plc`: phone -> room playout: G.711/G.722 decoding with repeat-and-fade concealment,
//!   Opus with FEC and its own concealment.
//! - `tone`: tone measurement (Goertzel power, dominant frequency).
//! - `timeout`: media timeout (no RTP for N s, longer before the first packet).
//! - `ports`: RTP port pairs from the configured range, with a drain period before reuse.
//! - `session`: `PhoneMedia`, the phone leg of one call composed from the cores above:
//!   RTP/RTCP in and out, symmetric RTP, playout toward the room in 20 ms frames, the
//!   room mix toward the phone, DTMF both ways, hold, media timeout, stats.
//! - `socket`: the thin tokio shell: the RTP/RTCP socket pair of a call, bound from the
//!   shared port pool and released on drop.
pub mod dtmf;
pub mod g711;
pub mod g722;
pub mod jitter;
pub mod mixer;
pub mod opus;
pub mod plc;
pub mod ports;
pub mod rtcp;
pub mod rtp;
pub mod sdes;
pub mod session;
pub mod socket;
pub mod srtp;
pub mod timeout;
pub mod tone;

#[cfg(test)]
pub(crate) mod test_signal;
