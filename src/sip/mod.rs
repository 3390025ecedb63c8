//! The SIP side of the bridge, our own stack on our own strict parser. Sans-IO cores:
//! `message` (receive-side syntax checks), `uri` (typed header values), `build`
//! (outgoing messages), `body` (SDP in multipart, INFO DTMF), `digest` (auth),
//! `sdp` (offer/answer; SRTP keys in SDP are `media::sdes`), `dialog` (RFC 3261
//! section 12), `transaction` (section 17 state machines and timers), `framing` (stream
//! framing). The async shell: `transport` (UDP, TCP, TLS sockets; `tls` holds their
//! reloadable rustls configurations) and `endpoint` (the task that checks, answers and
//! routes every message). Call logic sees these types only, never a third-party SIP
//! crate's.
pub mod body;
pub mod build;
pub mod dialog;
pub mod digest;
pub mod endpoint;
pub mod framing;
pub mod message;
pub mod sdp;
pub mod tls;
pub mod transaction;
pub mod transport;
pub mod uri;
