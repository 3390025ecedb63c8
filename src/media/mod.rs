//! Media pipeline cores, sans-IO: RTP packets and sequence unwrapping, G.711, RFC 4733
//! telephone events, and the adaptive jitter buffer. Time is always an argument.
//!
//! - `rtp`: RTP packet parse/serialize, `Ssrc`, `SeqNo`, sequence/timestamp unwrapping.
//! - `g711`: PCMU/PCMA, bit-exact with ITU-T G.191.
//! - `dtmf`: RFC 4733 telephone-events: payload, digit mapping, receiver, sender.
//! - `jitter`: adaptive jitter buffer (`push(now, packet)`, `pop(now)`).
//! - `ports`: RTP port pairs from the configured range, with a drain period before reuse.
pub mod dtmf;
pub mod g711;
pub mod jitter;
pub mod ports;
pub mod rtp;

#[cfg(test)]
pub(crate) mod test_signal;
