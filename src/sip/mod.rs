//! SIP side of the bridge. So far: digest authentication (sans-IO). Transports,
//! transactions and dialogs over rsipstack come next, behind this module's own types.
pub mod digest;
pub mod message;
