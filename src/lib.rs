//! Roomline: a SIP-to-LiveKit telephony bridge. ARCHITECTURE.md is the map; in short:
//!
//! - `config`: strict YAML configuration, validated into an immutable snapshot.
//! - `dialplan`: routing, pure functions: which trunk an inbound call came through, and
//!   which rule (room or reject) it follows.
//! - `sip`: the SIP side: sans-IO cores (message checks, transactions, dialogs, framing,
//!   digest auth, SDP) and their shells (transports, the endpoint task).
//! - `media`: the RTP side: sans-IO cores (RTP, RTCP, G.711, G.722, DTMF, jitter buffer,
//!   concealment, mixer, timeouts, port pool), `PhoneMedia` composing them, and sockets.
//! - `livekit`: the LiveKit participant (signalling, WebRTC through str0m, Opus).
//! - `call`: one task per call (inbound, outbound), the call manager, transfers.
//! - `trunk`: trunks at run time: requests to them, OPTIONS health, registration.
//! - `api`, `ops`, `daemon`: the `roomline run` process shell (HTTP health, metrics and
//!   LiveKit's SIP API; systemd notify, signals, file watch; start, reload, drain).
//! - `phone`: `roomline call`, a test phone (dials or answers) built from the `sip`,
//!   `call` and `media` pieces above, with a tone source and a recorder in place of a room.
//! - `clock`: the one place that reads the clock (tokio's, or the wall clock).
//! - `logging`, `token`, `diagnose`: tracing setup and number masking; access tokens;
//!   `roomline diagnose`.

// Unit tests start their virtual clocks at a real instant; the non-test build (also in the
// lint gate) keeps the rule for the code itself.
#![cfg_attr(
    test,
    allow(
        clippy::disallowed_methods,
        reason = "unit tests take a real instant as their virtual clock's origin"
    )
)]

pub mod api;
pub mod call;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod diagnose;
pub mod dialplan;
#[doc(hidden)]
pub mod fuzzing;
pub mod journal;
pub mod livekit;
pub mod logging;
pub mod media;
pub mod ops;
pub mod phone;
pub mod sip;
pub mod token;
pub mod trunk;
