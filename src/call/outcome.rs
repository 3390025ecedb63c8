//! How a call ended, classified once (design principle 5): each outcome maps here, and
//! only here, to the SIP status answered before the call was up, the Reason header of a
//! BYE after it, the LiveKit leave reason, and the metric label. Tests: `outcome_*`.

use crate::livekit::LeaveReason;
use std::fmt;

/// Why a call ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The phone hung up (BYE) after the call was up.
    CallerHangup,
    /// The caller gave up before the answer (CANCEL).
    CallerCancelled,
    /// The room was deleted (or closed) under the call.
    RoomClosed,
    /// The participant was removed from the room.
    ParticipantRemoved,
    /// Hung up from the room side through the API (not a failure).
    RoomHangup,
    /// LiveKit ended the participant for another reason (text from the server).
    LiveKitLeft(String),
    /// The connection to LiveKit was lost and nothing brought it back within
    /// `livekit.reconnect_window` (what happened).
    LiveKitUnreachable(String),
    /// A dialplan rule rejects the call with this status.
    Rejected { status: u16, reason: Option<String> },
    /// No dialplan rule matched.
    NoRoute,
    /// No codec in common (the Warning text).
    NoCommonCodec(String),
    /// The INVITE had no (usable) SDP offer and none could be made.
    BadSdp(String),
    /// No RTP port free.
    NoPorts,
    /// LiveKit could not be joined (unreachable, refused): the reason.
    LiveKitUnavailable(String),
    /// Nobody answered in the room in time (`answer: on_first_track`).
    RingingTimeout,
    /// The caller entered the wrong PIN too often, or none in time.
    PinFailed,
    /// No RTP for too long.
    MediaTimeout,
    /// Our 2xx was never acknowledged.
    NoAck,
    /// The session timer ran out: the refresher did not refresh (RFC 4028).
    SessionExpired,
    /// A request of ours in the dialog got 481 or 408, or no answer: the peer lost it.
    DialogGone,
    /// The INVITE's Session-Expires is below our Min-SE (422 with it, RFC 4028).
    IntervalTooSmall(u32),
    /// The INVITE requires an extension this trunk does not use (420 Unsupported).
    Unsupported(String),
    /// The daemon is stopping.
    Shutdown,
    /// The call's limit was reached (max call duration).
    MaxDuration,
    /// The call was transferred elsewhere (REFER accepted and completed).
    Transferred,
    /// Something failed inside Roomline.
    Internal(String),
}

impl Outcome {
    /// The final response to the INVITE when the call ends before answer.
    pub fn status(&self) -> u16 {
        match self {
            Outcome::CallerHangup | Outcome::CallerCancelled => 487,
            // design.md section 1: a room that goes away before the answer ends the call
            // with 487 (the request is terminated), a removal with 486 (the room said no)
            Outcome::RoomClosed => 487,
            Outcome::ParticipantRemoved => 486,
            Outcome::RoomHangup => 487,
            Outcome::LiveKitLeft(_) => 480,
            Outcome::LiveKitUnreachable(_) => 503,
            Outcome::Rejected { status, .. } => *status,
            Outcome::NoRoute => 404,
            Outcome::NoCommonCodec(_) => 488,
            Outcome::BadSdp(_) => 400,
            Outcome::NoPorts | Outcome::LiveKitUnavailable(_) | Outcome::Shutdown => 503,
            Outcome::RingingTimeout => 480,
            Outcome::PinFailed => 403,
            Outcome::MediaTimeout
            | Outcome::NoAck
            | Outcome::MaxDuration
            | Outcome::SessionExpired
            | Outcome::DialogGone => 408,
            Outcome::IntervalTooSmall(_) => 422,
            Outcome::Unsupported(_) => 420,
            Outcome::Transferred => 487,
            Outcome::Internal(_) => 500,
        }
    }

    /// Retry-After seconds for a 503 (RFC 3261 section 20.33): the caller may try again.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Outcome::NoPorts | Outcome::LiveKitUnavailable(_) => Some(10),
            Outcome::Shutdown => Some(30),
            _ => None,
        }
    }

    /// Headers the final response to an unanswered INVITE carries for this outcome.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if let Some(s) = self.retry_after() {
            h.push(("Retry-After", s.to_string()));
        }
        match self {
            Outcome::NoCommonCodec(w) => h.push(("Warning", w.clone())),
            Outcome::IntervalTooSmall(min) => h.push(("Min-SE", min.to_string())),
            Outcome::Unsupported(tags) => h.push(("Unsupported", tags.clone())),
            _ => {}
        }
        h
    }

    /// Whether the peer ended the call (no BYE of ours then).
    pub fn remote_ended(&self) -> bool {
        matches!(self, Outcome::CallerHangup | Outcome::CallerCancelled)
    }

    /// The Reason header (RFC 3326) of our BYE after answer, Q.850 cause and text.
    pub fn reason_header(&self) -> String {
        let (cause, text) = match self {
            Outcome::RoomClosed => (16, "room closed"),
            Outcome::ParticipantRemoved => (16, "participant removed"),
            Outcome::RoomHangup => (16, "hung up from the room"),
            Outcome::SessionExpired => (102, "session timer expired"),
            Outcome::DialogGone => (41, "dialog lost"),
            Outcome::LiveKitLeft(_) => (16, "left the room"),
            // Q.850 38 "network out of order": the network (here LiveKit) failed for
            // longer than a moment; not a clearing either side asked for
            Outcome::LiveKitUnreachable(_) => (38, "LiveKit unreachable"),
            Outcome::MediaTimeout => (102, "media timeout"),
            Outcome::NoAck => (102, "no ACK"),
            Outcome::PinFailed => (21, "wrong PIN"),
            Outcome::Shutdown => (16, "service shutting down"),
            Outcome::MaxDuration => (16, "maximum call duration"),
            Outcome::Transferred => (16, "call transferred"),
            Outcome::Internal(_) => (41, "internal error"),
            _ => (16, "normal clearing"),
        };
        format!("Q.850;cause={cause};text=\"{text}\"")
    }

    /// What we tell LiveKit when we leave the room.
    pub fn leave_reason(&self) -> LeaveReason {
        match self {
            Outcome::RingingTimeout => LeaveReason::UserUnavailable,
            Outcome::PinFailed => LeaveReason::UserRejected,
            _ => LeaveReason::ClientInitiated,
        }
    }

    /// The bounded metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::CallerHangup => "caller_hangup",
            Outcome::CallerCancelled => "cancelled",
            Outcome::RoomClosed => "room_closed",
            Outcome::ParticipantRemoved => "participant_removed",
            Outcome::RoomHangup => "room_hangup",
            Outcome::LiveKitLeft(_) => "livekit_left",
            Outcome::LiveKitUnreachable(_) => "livekit_unreachable",
            Outcome::Rejected { .. } => "rejected",
            Outcome::NoRoute => "no_route",
            Outcome::NoCommonCodec(_) => "no_codec",
            Outcome::BadSdp(_) => "bad_sdp",
            Outcome::NoPorts => "no_ports",
            Outcome::LiveKitUnavailable(_) => "livekit_unavailable",
            Outcome::RingingTimeout => "ringing_timeout",
            Outcome::PinFailed => "pin_failed",
            Outcome::MediaTimeout => "media_timeout",
            Outcome::NoAck => "no_ack",
            Outcome::SessionExpired => "session_expired",
            Outcome::DialogGone => "dialog_gone",
            Outcome::IntervalTooSmall(_) => "interval_too_small",
            Outcome::Unsupported(_) => "unsupported",
            Outcome::Shutdown => "shutdown",
            Outcome::MaxDuration => "max_duration",
            Outcome::Transferred => "transferred",
            Outcome::Internal(_) => "error",
        }
    }

    /// The `sip.callStatus`-style word for the summary line.
    pub fn completed(&self) -> bool {
        matches!(
            self,
            Outcome::CallerHangup
                | Outcome::RoomClosed
                | Outcome::ParticipantRemoved
                | Outcome::RoomHangup
                | Outcome::LiveKitLeft(_)
                | Outcome::Shutdown
                | Outcome::MaxDuration
                | Outcome::Transferred
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Rejected { status, reason } => {
                write!(f, "rejected {status}")?;
                if let Some(r) = reason {
                    write!(f, " {r}")?;
                }
                Ok(())
            }
            Outcome::NoCommonCodec(w) => write!(f, "no common codec ({w})"),
            Outcome::BadSdp(w) => write!(f, "bad SDP ({w})"),
            Outcome::LiveKitUnavailable(w) => write!(f, "LiveKit unavailable ({w})"),
            Outcome::LiveKitLeft(w) => write!(f, "left the room ({w})"),
            Outcome::LiveKitUnreachable(w) => write!(f, "LiveKit unreachable ({w})"),
            Outcome::Internal(w) => write!(f, "internal error ({w})"),
            other => f.write_str(other.label()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_statuses_and_labels() {
        assert_eq!(Outcome::CallerCancelled.status(), 487);
        assert_eq!(Outcome::NoRoute.status(), 404);
        assert_eq!(Outcome::NoCommonCodec("x".into()).status(), 488);
        assert_eq!(Outcome::LiveKitUnavailable("down".into()).status(), 503);
        assert_eq!(
            Outcome::LiveKitUnavailable("down".into()).retry_after(),
            Some(10)
        );
        assert_eq!(Outcome::NoPorts.status(), 503);
        assert_eq!(
            Outcome::Rejected {
                status: 603,
                reason: None
            }
            .status(),
            603
        );
        assert_eq!(Outcome::CallerHangup.retry_after(), None);
        assert!(
            Outcome::RoomClosed
                .reason_header()
                .starts_with("Q.850;cause=16;")
        );
        assert_eq!(
            Outcome::RingingTimeout.leave_reason(),
            LeaveReason::UserUnavailable
        );
        // a hangup from the room side is a normal end, not an error
        for o in [
            Outcome::RoomHangup,
            Outcome::RoomClosed,
            Outcome::ParticipantRemoved,
        ] {
            assert!(o.completed(), "{o}");
            assert_ne!(o.label(), "error");
            assert!(o.reason_header().starts_with("Q.850;cause=16;"), "{o}");
        }
        assert_eq!(
            Outcome::RoomHangup.reason_header(),
            "Q.850;cause=16;text=\"hung up from the room\""
        );
        assert_eq!(
            Outcome::IntervalTooSmall(120).response_headers(),
            vec![("Min-SE", "120".to_string())]
        );
        assert_eq!(Outcome::IntervalTooSmall(120).status(), 422);
        // a LiveKit outage longer than the window is a network failure, not a clearing
        let lost = Outcome::LiveKitUnreachable("x".into());
        assert_eq!(
            lost.reason_header(),
            "Q.850;cause=38;text=\"LiveKit unreachable\""
        );
        assert_eq!(lost.label(), "livekit_unreachable");
        assert!(!lost.completed());
        assert_eq!(
            Outcome::SessionExpired.reason_header(),
            "Q.850;cause=102;text=\"session timer expired\""
        );
        // labels are bounded words
        for o in [
            Outcome::MediaTimeout,
            Outcome::Internal("x".into()),
            Outcome::NoAck,
            Outcome::SessionExpired,
            Outcome::Unsupported("timer".into()),
        ] {
            assert!(
                o.label()
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_')
            );
        }
    }
}
