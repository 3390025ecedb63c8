//! A received message as the endpoint hands it to the task that owns its Call-ID (a
//! call, a registration, a ping), with the flow to answer on and the keys that match it
//! to a transaction (`txkey`). Also what the endpoint and those tasks exchange about it:
//! `SipEvent`, and `Linger` (an answer re-sent after its call has ended).

use std::time::Instant;

use super::build::Outgoing;
use super::message::{self, Message};
use super::transport::Flow;
use super::txkey::{ClientKey, ServerKey};
use super::uri::{NameAddr, Via};

/// A message for the task owning a Call-ID.
#[derive(Debug)]
pub struct Incoming {
    pub msg: Message,
    /// Where it came from and how to answer it (for UDP requests: towards the Via's
    /// received/rport address, on the socket it arrived on).
    pub flow: Flow,
    /// The top Via, stamped with received/rport (requests); as received (responses).
    pub via: Via,
    pub at: Instant,
}

impl Incoming {
    pub fn method(&self) -> &str {
        self.msg.method().unwrap_or("")
    }

    /// The status of a response (0 for a request).
    pub fn status(&self) -> u16 {
        match &self.msg.start {
            message::StartLine::Response { status, .. } => *status,
            _ => 0,
        }
    }

    /// The reason phrase of a response.
    pub fn reason(&self) -> &str {
        match &self.msg.start {
            message::StartLine::Response { reason, .. } => reason,
            _ => "",
        }
    }

    pub fn call_id(&self) -> &str {
        self.msg.header("Call-ID").unwrap_or("")
    }

    pub fn cseq(&self) -> Option<(u32, &str)> {
        self.msg.cseq()
    }

    pub fn from(&self) -> Option<NameAddr> {
        NameAddr::parse(self.msg.header("From")?).ok()
    }

    pub fn to(&self) -> Option<NameAddr> {
        NameAddr::parse(self.msg.header("To")?).ok()
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.msg.start {
            message::StartLine::Request { uri, .. } => Some(uri),
            _ => None,
        }
    }

    /// The server transaction a request belongs to (RFC 3261 section 17.2.3).
    pub fn server_key(&self) -> ServerKey {
        ServerKey::of(&self.msg, &self.via)
    }

    /// The client transaction a response belongs to (RFC 3261 section 17.1.3).
    pub fn client_key(&self) -> ClientKey {
        ClientKey::of_response(&self.msg, &self.via)
    }

    /// Sends a response built by the caller on this request's flow.
    pub fn reply(&self, out: &Outgoing) {
        let _ = self.flow.send(&out.to_bytes());
    }
}

/// What the endpoint sends a call task.
#[derive(Debug)]
pub enum SipEvent {
    Request(Incoming),
    Response(Incoming),
}

/// A response to re-send when a request arrives again after its call has ended.
#[derive(Debug, Clone)]
pub struct Linger {
    pub key: ServerKey,
    pub bytes: Vec<u8>,
    pub flow: Flow,
}
