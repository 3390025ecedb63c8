//! `PhoneMediaConfig`: how to run one phone leg, from what SDP negotiated and the owner's
//! choices (latching, timeouts, identity).

use super::{DEFAULT_DTMF_DURATION, PHONE_FRAME};
use crate::media::g711::G711;
use crate::media::plc::PhoneCodec;
use crate::media::rtp::Ssrc;
use crate::media::sdes::SrtpKeys;
use crate::media::timeout::MediaTimeoutConfig;
use crate::sip::sdp::{Codec, Direction, Negotiated};
use std::net::SocketAddr;
use std::time::Duration;

/// How to run one phone leg. `from_negotiated` fills it from the SDP outcome; `latch` and
/// the timeouts are the owner's (trunk configuration, private SDP address).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneMediaConfig {
    pub codec: PhoneCodec,
    /// The codec's negotiated payload type.
    pub payload_type: u8,
    /// The RFC 4733 telephone-event payload type, if negotiated.
    pub dtmf_payload_type: Option<u8>,
    /// The negotiated packetization (`a=ptime`). We send at it when it is 10-60 ms in
    /// 10 ms steps, else at 20 ms; it is also the first guess of the phone's, which is
    /// then read from the packets.
    pub ptime: Duration,
    /// Where RTP goes per SDP; `None` (or 0.0.0.0 or port 0): nothing is sent.
    pub remote_rtp: Option<SocketAddr>,
    /// Our direction (`Negotiated::direction`).
    pub direction: Direction,
    /// RTCP shares the RTP port (RFC 5761 section 4); otherwise it goes to the RTP port
    /// + 1. Test: `rtcp_reports_go_to_port_plus_one_or_the_rtp_port_with_mux`.
    pub rtcp_mux: bool,
    /// Symmetric RTP: send where the phone's packets come from.
    pub latch: bool,
    pub timeouts: MediaTimeoutConfig,
    /// Our SSRC, random from the owner. The initial sequence number and timestamp are
    /// derived from it.
    pub local_ssrc: Ssrc,
    /// RTCP CNAME.
    pub cname: String,
    /// The caller's participant identity: room tracks it owns are never mixed.
    pub local_identity: String,
    /// Tone length of each digit from `send_dtmf`.
    pub dtmf_duration: Duration,
    /// SRTP keys (SDES): every datagram out is protected, every one in must authenticate.
    /// `None`: plain RTP.
    pub srtp: Option<SrtpKeys>,
}

impl PhoneMediaConfig {
    /// Defaults: the codec's static payload type, no telephone-event, 20 ms, no remote,
    /// `SendRecv`, no rtcp-mux, no latching, the default timeouts, a CNAME from the SSRC.
    #[must_use]
    pub fn new(codec: PhoneCodec, local_ssrc: Ssrc, local_identity: impl Into<String>) -> Self {
        PhoneMediaConfig {
            codec,
            payload_type: codec.payload_type(),
            dtmf_payload_type: None,
            ptime: PHONE_FRAME,
            remote_rtp: None,
            direction: Direction::SendRecv,
            rtcp_mux: false,
            latch: false,
            timeouts: MediaTimeoutConfig::default(),
            local_ssrc,
            cname: format!("roomline-{local_ssrc}"),
            local_identity: local_identity.into(),
            dtmf_duration: DEFAULT_DTMF_DURATION,
            srtp: None,
        }
    }

    /// The configuration for what SDP negotiated (codec, payload types, ptime, remote
    /// address, direction, rtcp-mux); latching off and default timeouts.
    #[must_use]
    pub fn from_negotiated(
        negotiated: &Negotiated,
        local_ssrc: Ssrc,
        local_identity: impl Into<String>,
    ) -> Self {
        let mut config =
            PhoneMediaConfig::new(phone_codec(negotiated.codec), local_ssrc, local_identity);
        config.payload_type = negotiated.payload_type;
        config.dtmf_payload_type = negotiated.dtmf_payload_type;
        config.ptime = Duration::from_millis(u64::from(negotiated.ptime_ms));
        config.remote_rtp = negotiated.remote_rtp;
        config.direction = negotiated.direction;
        config.rtcp_mux = negotiated.rtcp_mux;
        config
    }
}

/// The media codec for an SDP codec.
#[must_use]
pub fn phone_codec(codec: Codec) -> PhoneCodec {
    match codec {
        Codec::Pcmu => PhoneCodec::G711(G711::Pcmu),
        Codec::Pcma => PhoneCodec::G711(G711::Pcma),
        Codec::G722 => PhoneCodec::G722,
    }
}
