//! Roomline: a SIP-to-LiveKit telephony bridge.
//!
//! Module map:
//! - `config`: strict YAML configuration, validated into an immutable snapshot.
//! - `logging`: tracing setup and the `Phone` redacting wrapper for numbers.
//! - `token`: LiveKit access tokens signed with the configured key and secret.
//! - `daemon`: the `roomline run` process shell (HTTP health, signals, systemd notify).
//! - `sip`: the SIP side; so far digest authentication (sans-IO).
pub mod api;
pub mod config;
pub mod daemon;
pub mod dialplan;
pub mod logging;
pub mod media;
pub mod ops;
pub mod sip;
pub mod token;
pub mod trunk;
