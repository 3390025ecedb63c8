//! Roomline: a SIP-to-LiveKit telephony bridge.
//!
//! Module map:
//! - `config`: strict YAML configuration, validated into an immutable snapshot.
//! - `dialplan`: call routing, a pure function of the configuration and the call.
//! - `trunk`: trunks at run time (inbound matching so far).
//! - `sip`: the SIP side; so far sans-IO cores: digest auth, message checks, SDP.
//! - `media`: the RTP side; so far sans-IO cores: RTP, G.711, DTMF, jitter buffer.
//! - `livekit`: the LiveKit participant (signalling and WebRTC).
//! - `token`: LiveKit access tokens signed with the configured key and secret.
//! - `logging`: tracing setup and the `Phone` redacting wrapper for numbers.
//! - `daemon`, `api`, `ops`: the `roomline run` process shell (HTTP health, signals,
//!   systemd notify).
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
pub mod livekit;
pub mod logging;
pub mod media;
pub mod ops;
pub mod sip;
pub mod token;
pub mod trunk;
