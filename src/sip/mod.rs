//! SIP side of the bridge. So far, all sans-IO: digest authentication, receive-side
//! message checks, SDP offer/answer, transaction state machines and stream framing.
//! Transports and dialogs over rsipstack come next, behind this module's own types.
//!
//! - `digest`: digest authentication (RFC 3261 section 22, RFC 7616), both sides.
//! - `message`: receive-side syntax and validity checks with the status to answer.
//! - `sdp`: SDP offer/answer for the phone leg.
//! - `transaction`: RFC 3261 section 17 transactions (with RFC 6026 for 2xx to INVITE):
//!   byte-agnostic client and server, INVITE and non-INVITE state machines, Timers A-M.
//! - `framing`: RFC 3261 section 18.3 message framing on TCP/TLS streams, with RFC 5626
//!   CRLF keep-alives.
pub mod digest;
pub mod framing;
pub mod message;
pub mod sdp;
pub mod transaction;
