//! The SIP side of the bridge, our own stack on our own strict parser. Sans-IO cores:
//! `message` (receive-side syntax checks), `uri` (typed header values), `build`
//! (outgoing messages), `body` (SDP in multipart, INFO DTMF), `digest` (auth), `sdp`
//! (offer/answer; SRTP keys in SDP are `media::sdes`), `dialog` (RFC 3261 section 12),
//! `transaction` (section 17 state machines and timers), `txkey` (matching messages to
//! transactions, sections 17.1.3 and 17.2.3), `txtable` (a bounded table of server
//! transactions), `session_timer` (RFC 4028), `admission` (what the endpoint checks
//! before serving a request), `framing` (stream framing), `incoming` (a received message
//! with its flow and keys). The async shell: `transport` (UDP, TCP, TLS sockets; `tls`
//! holds their reloadable rustls configurations) and `endpoint` (the task that checks,
//! answers and routes every message). Call logic sees these types only, never a
//! third-party SIP crate's.
pub mod admission;
pub mod body;
pub mod build;
pub mod call_rate;
pub mod dialog;
pub mod digest;
pub mod endpoint;
pub mod framing;
pub mod incoming;
pub mod message;
pub mod refusals;
pub mod sdp;
pub mod session_timer;
pub mod tls;
pub mod transaction;
pub mod transport;
pub mod txkey;
pub mod txtable;
pub mod uri;
