//! What the API asks of an outbound call and what it gets back (part of
//! `call::outbound`): the validated CreateSIPParticipant request (and the identity it
//! gives the participant), the participant that joined, and why a dial failed.

use std::collections::HashMap;
use std::time::Duration;

/// A CreateSIPParticipant request, validated against the configuration.
#[derive(Debug, Clone)]
pub struct OutboundRequest {
    pub trunk: String,
    pub call_to: String,
    /// From number (`sip_number`), else the trunk's `from_number`.
    pub from_number: Option<String>,
    pub room: String,
    pub identity: Option<String>,
    pub name: Option<String>,
    pub metadata: String,
    pub attributes: HashMap<String, String>,
    /// Digits to send once answered; 'w' waits 0.5 s.
    pub dtmf: String,
    /// Play a ringing tone into the room while the phone rings.
    pub play_dialtone: bool,
    pub wait_until_answered: bool,
    pub ringing_timeout: Duration,
    pub max_call_duration: Option<Duration>,
    /// Extra headers on the INVITE (after the trunk's).
    pub headers: Vec<(String, String)>,
    pub display_name: Option<String>,
    /// Which 200 OK headers become `sip.h.*` attributes; None: the trunk's setting.
    pub include_headers: Option<crate::config::IncludeHeaders>,
    /// Leave the numbers out of the attributes and the default identity and name.
    pub hide_phone_number: bool,
    /// The SRTP policy the request asks for (`None`: the trunk's). Each attempt uses the
    /// stricter of this and its trunk's `media_encryption`.
    pub media_encryption: Option<crate::config::MediaEncryption>,
}

impl OutboundRequest {
    /// The participant's identity: the request's, else `sip_` and the number called
    /// (a hash of it under `hide_phone_number`, LiveKit's form).
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            if self.hide_phone_number {
                crate::dialplan::hidden_identity(&self.call_to)
            } else {
                format!("sip_{}", self.call_to)
            }
        })
    }
}

/// What the API caller gets back.
#[derive(Debug, Clone)]
pub struct Started {
    pub participant_sid: String,
    pub identity: String,
    pub room: String,
    pub call_id: String,
}

/// Why a dial failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialError {
    /// The callee (or the carrier) refused: the final SIP status and reason.
    Sip { status: u16, reason: String },
    /// Nobody answered in time (after CANCEL).
    NoAnswer,
    /// The room could not be joined.
    LiveKit(String),
    /// No RTP ports.
    NoPorts,
    /// Every trunk tried failed at the transport level (no answer at all).
    Unreachable(String),
    /// The call ended before the answer for another reason.
    Ended(String),
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DialError::Sip { status, reason } => write!(f, "sip status {status}: {reason}"),
            DialError::NoAnswer => f.write_str("no answer before the ringing timeout"),
            DialError::LiveKit(e) => write!(f, "cannot join the room: {e}"),
            DialError::NoPorts => f.write_str("no RTP ports free"),
            DialError::Unreachable(e) => write!(f, "trunk unreachable: {e}"),
            DialError::Ended(e) => write!(f, "call ended before the answer: {e}"),
        }
    }
}
