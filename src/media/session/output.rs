//! What a phone leg gives its owner: datagrams toward the phone, 20 ms frames toward the
//! room, events, and the counters for metrics and the call summary.

use super::FrameKind;
use crate::media::dtmf::DtmfDigit;
use crate::media::rtp::Ssrc;
use std::net::SocketAddr;
use std::time::Duration;

/// One datagram toward the phone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub to: SocketAddr,
    /// Send from the RTCP socket (RTP port + 1). RTCP under rtcp-mux shares the RTP
    /// socket and has `rtcp: false`; tell RTCP from RTP by the bytes (`rtp::is_rtcp`).
    pub rtcp: bool,
    pub bytes: Vec<u8>,
}

/// 20 ms of the phone's audio at the codec rate, for the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneFrame {
    pub samples: Vec<i16>,
    /// `Decoded` if any of it came from packets and none was concealed, `Concealed` if
    /// any was concealed, `Silence` otherwise.
    pub kind: FrameKind,
}

/// Something the call task acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaEvent {
    /// One key press from the phone (reported once, when it ends).
    Dtmf(DtmfDigit),
    /// No RTP from the phone for the timeout (reported once): end the call.
    Timeout {
        after: Duration,
        before_first_packet: bool,
    },
    /// RTP now goes where the phone's packets come from.
    Latched(SocketAddr),
    /// The phone's audio stream restarted under a new SSRC; playout resynchronized.
    SsrcChanged { old: Ssrc, new: Ssrc },
}

/// Why `send_dtmf` refused a digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendDtmfError {
    #[error("telephone-event was not negotiated with the phone")]
    NotNegotiated,
    #[error("too many digits queued toward the phone")]
    QueueFull,
}

/// Phone -> us.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ReceiveStats {
    /// RTP packets accepted from the phone (audio, events, comfort noise) and their bytes
    /// on the wire.
    pub packets: u64,
    pub bytes: u64,
    /// Packets missing from the phone's sequence numbers, summed over its streams.
    pub lost: u64,
    /// RFC 3550 interarrival jitter.
    pub jitter_ms: f64,
    /// Packets that came after their playout slot.
    pub late: u64,
    /// Packets the jitter buffer dropped otherwise: duplicates, overflow, delay
    /// adjustment, resynchronization, unconfirmed sequence jumps.
    pub discarded: u64,
    /// Playout frames concealed (repeated with fade; Opus: FEC or its concealment).
    pub concealed_frames: u64,
    /// Of those, Opus frames rebuilt from the next packet's in-band FEC.
    pub fec_frames: u64,
    /// Key presses reported.
    pub dtmf_events: u64,
    /// Datagrams that are not RTP, or carry a payload type not negotiated.
    pub invalid: u64,
    /// Valid packets from an address other than the phone's.
    pub wrong_source: u64,
    /// SRTP/SRTCP packets refused: authentication failed, replayed, too old, wrong MKI.
    pub srtp_failed: u64,
    /// Packets not used because our direction does not receive.
    pub ignored: u64,
    pub ssrc_changes: u64,
    /// 20 ms frames handed out, and frames skipped or dropped for a late owner.
    pub frames: u64,
    pub frames_skipped: u64,
    /// Frames toward the room: the phone's Opus packet passed as is, slots lost while
    /// passing (nothing sent), and PCM to encode.
    pub passthrough_frames: u64,
    pub passthrough_gaps: u64,
    pub transcoded_frames: u64,
}

/// Us -> phone.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SendStats {
    /// RTP packets (audio and events) and their bytes on the wire.
    pub packets: u64,
    pub bytes: u64,
    /// What the phone's last RTCP report said about our stream.
    pub lost: Option<i64>,
    pub jitter_ms: Option<f64>,
    /// Digits sent, and the event packets they took.
    pub dtmf_events: u64,
    pub dtmf_packets: u64,
    /// Send ticks skipped because the owner was late, and datagrams dropped because it
    /// did not drain them.
    pub ticks_skipped: u64,
    pub dropped: u64,
    /// Opus frames not sent for DTX (silence the phone asked us not to send).
    pub dtx_frames: u64,
    /// Audio frames toward the phone: a room track's Opus packet passed as is, or the
    /// mix encoded (DTX frames included).
    pub passthrough_frames: u64,
    pub transcoded_frames: u64,
}

/// Counters of one phone leg, for metrics and the per-call summary.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct MediaStats {
    pub rx: ReceiveStats,
    pub tx: SendStats,
    /// From the phone's RTCP reports on our SRs.
    pub rtt: Option<Duration>,
    pub rtcp_sent: u64,
    pub rtcp_received: u64,
    /// RTCP datagrams refused: malformed or from a foreign address.
    pub rtcp_invalid: u64,
    /// Times the RTP destination was (re)latched.
    pub latches: u64,
}
