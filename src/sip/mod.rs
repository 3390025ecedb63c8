//! SIP side of the bridge. So far, all sans-IO: digest authentication, receive-side
//! message checks, SDP offer/answer. Transports,
//! transactions and dialogs over rsipstack come next, behind this module's own types.
pub mod digest;
pub mod message;
pub mod sdp;
