//! Transaction matching, sans-IO: which transaction a received message belongs to.
//! Requests at a server (RFC 3261 section 17.2.3): the branch of the top Via, its
//! sent-by, and the method, where an ACK belongs to its INVITE and a CANCEL has its own
//! transaction (section 9.2 finds the INVITE it cancels). A branch without the magic
//! cookie comes from an RFC 2543 peer: the Request-URI, the From and To tags, the Call-ID,
//! the CSeq and the whole top Via identify its transaction instead, and its ACK matches
//! the INVITE whatever To tag our response gave it. Responses at a client (section
//! 17.1.3): the branch and the CSeq method, so the answers to an INVITE and to its CANCEL
//! (same branch) go to their own transactions. Tests: `txkey_*`.

use super::message::{Message, StartLine};
use super::uri::{NameAddr, Via};

/// Identifies a server transaction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerKey {
    /// The branch, or (RFC 2543) the fields that identify the transaction.
    id: String,
    /// The top Via's sent-by, host lower-cased and the transport's port filled in.
    sent_by: String,
    /// The method of the request that created the transaction (INVITE for an ACK).
    method: String,
    /// RFC 2543 only: the request's To tag (none for an initial INVITE).
    to_tag: Option<String>,
}

fn tag(msg: &Message, header: &str) -> Option<String> {
    msg.header(header)
        .and_then(|v| NameAddr::parse(v).ok())
        .and_then(|n| n.tag().map(str::to_string))
}

/// sent-by for comparison: host case-insensitive, the default port made explicit.
fn normalized_sent_by(via: &Via) -> String {
    let port = via
        .port
        .unwrap_or(if via.transport == "TLS" { 5061 } else { 5060 });
    format!("{}:{port}", via.host.to_ascii_lowercase())
}

impl ServerKey {
    /// The key of a received request whose top Via is `via`.
    pub fn of(msg: &Message, via: &Via) -> ServerKey {
        let method = msg.method().unwrap_or("");
        let key_method = if method == "ACK" { "INVITE" } else { method };
        let sent_by = normalized_sent_by(via);
        if via.rfc3261_branch() {
            return ServerKey {
                id: via.branch().unwrap_or("").to_string(),
                sent_by,
                method: key_method.to_string(),
                to_tag: None,
            };
        }
        let ruri = match &msg.start {
            StartLine::Request { uri, .. } => uri.as_str(),
            StartLine::Response { .. } => "",
        };
        let cseq = msg.cseq().map(|(n, _)| n).unwrap_or(0);
        ServerKey {
            id: format!(
                "2543 {ruri} {} {} {cseq} {}",
                tag(msg, "From").unwrap_or_default(),
                msg.header("Call-ID").unwrap_or(""),
                via.branch().unwrap_or(""),
            ),
            sent_by,
            method: key_method.to_string(),
            to_tag: tag(msg, "To"),
        }
    }

    /// The INVITE transaction a CANCEL with this key cancels (section 9.2): same branch
    /// and sent-by (or RFC 2543 fields), method INVITE.
    pub fn cancelled_invite(&self) -> ServerKey {
        ServerKey {
            method: "INVITE".into(),
            ..self.clone()
        }
    }

    /// For an RFC 2543 ACK: the key of an initial INVITE it may acknowledge (the INVITE
    /// had no To tag; the ACK carries the one our final response gave). None for RFC 3261
    /// keys, which need no second look.
    pub fn without_to_tag(&self) -> Option<ServerKey> {
        self.to_tag.as_ref()?;
        Some(ServerKey {
            to_tag: None,
            ..self.clone()
        })
    }

    /// Whether a request with key `other` belongs to this transaction (the ACK rule of
    /// RFC 2543 included).
    pub fn matches(&self, other: &ServerKey) -> bool {
        self == other || other.without_to_tag().is_some_and(|k| k == *self)
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    /// The branch (RFC 3261 keys) or the RFC 2543 identity, for logs.
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// Identifies a client transaction (section 17.1.3): our branch and the CSeq method.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    pub branch: String,
    pub method: String,
}

impl ClientKey {
    pub fn new(branch: &str, method: &str) -> ClientKey {
        ClientKey {
            branch: branch.to_string(),
            method: method.to_string(),
        }
    }

    /// The transaction a received response belongs to: its top Via's branch and its
    /// CSeq method.
    pub fn of_response(msg: &Message, via: &Via) -> ClientKey {
        ClientKey {
            branch: via.branch().unwrap_or("").to_string(),
            method: msg.cseq().map(|(_, m)| m).unwrap_or("").to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message;

    fn msg(text: &str) -> (Message, Via) {
        let m = message::parse(text.replace('\n', "\r\n").as_bytes()).unwrap();
        let via = Via::top(m.headers_named("Via")).unwrap();
        (m, via)
    }

    fn request(method: &str, cseq_method: &str, via: &str, to_tag: &str) -> ServerKey {
        let (m, v) = msg(&format!(
            "{method} sip:x@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP {via}\nFrom: <sip:a@b>;tag=f1\n\
             To: <sip:x@192.0.2.1>{to_tag}\nCall-ID: c1\nCSeq: 7 {cseq_method}\nMax-Forwards: 70\n\
             Content-Length: 0\n\n"
        ));
        ServerKey::of(&m, &v)
    }

    #[test]
    fn txkey_rfc3261_branch_sent_by_and_method() {
        let invite = request("INVITE", "INVITE", "h1.example:5060;branch=z9hG4bKa", "");
        // a retransmission (the default port written or not, host case aside)
        assert_eq!(
            invite,
            request("INVITE", "INVITE", "H1.EXAMPLE;branch=z9hG4bKa", "")
        );
        // the ACK of a non-2xx final belongs to the INVITE
        assert_eq!(
            invite,
            request("ACK", "ACK", "h1.example;branch=z9hG4bKa", ";tag=ours")
        );
        // the same branch from another host, or with another method, is another one
        assert_ne!(
            invite,
            request("INVITE", "INVITE", "h2.example;branch=z9hG4bKa", "")
        );
        assert_ne!(
            invite,
            request("INVITE", "INVITE", "h1.example:5070;branch=z9hG4bKa", "")
        );
        let options = request("OPTIONS", "OPTIONS", "h1.example;branch=z9hG4bKa", "");
        assert_ne!(invite, options);
        // a CANCEL has its own transaction and names the INVITE's
        let cancel = request("CANCEL", "CANCEL", "h1.example;branch=z9hG4bKa", "");
        assert_ne!(cancel, invite);
        assert_eq!(cancel.cancelled_invite(), invite);
        assert!(invite.without_to_tag().is_none());
    }

    #[test]
    fn txkey_rfc2543_fields_identify_the_transaction() {
        let invite = request("INVITE", "INVITE", "old.example;branch=1", "");
        assert_eq!(
            invite,
            request("INVITE", "INVITE", "old.example;branch=1", "")
        );
        // no branch at all is fine too
        let bare = request("INVITE", "INVITE", "old.example", "");
        assert_eq!(bare, request("INVITE", "INVITE", "old.example", ""));
        assert_ne!(bare, invite);
        // the ACK carries the To tag of our response: it still matches the INVITE
        let ack = request("ACK", "ACK", "old.example;branch=1", ";tag=ours");
        assert_ne!(ack, invite);
        assert!(invite.matches(&ack));
        assert!(!invite.matches(&request("ACK", "ACK", "other.example;branch=1", ";tag=x")));
        // another To tag, CSeq method or top Via: another transaction
        let bye = request("BYE", "BYE", "old.example;branch=1", ";tag=t1");
        assert!(!bye.matches(&request("BYE", "BYE", "old.example;branch=1", ";tag=t2")));
        assert!(!bye.matches(&request("BYE", "BYE", "old.example;branch=2", ";tag=t1")));
        assert!(bye.matches(&request("BYE", "BYE", "old.example;branch=1", ";tag=t1")));
        let cancel = request("CANCEL", "CANCEL", "old.example;branch=1", "");
        assert_eq!(cancel.cancelled_invite(), invite);
    }

    #[test]
    fn txkey_rfc2543_request_uri_and_cseq_count() {
        let (a, va) = msg(
            "OPTIONS sip:x@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP old.example\n\
             From: <sip:a@b>;tag=f1\nTo: <sip:x@192.0.2.1>\nCall-ID: c1\nCSeq: 1 OPTIONS\n\
             Max-Forwards: 70\nContent-Length: 0\n\n",
        );
        let (b, vb) = msg(
            "OPTIONS sip:y@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP old.example\n\
             From: <sip:a@b>;tag=f1\nTo: <sip:x@192.0.2.1>\nCall-ID: c1\nCSeq: 1 OPTIONS\n\
             Max-Forwards: 70\nContent-Length: 0\n\n",
        );
        let (c, vc) = msg(
            "OPTIONS sip:x@192.0.2.1 SIP/2.0\nVia: SIP/2.0/UDP old.example\n\
             From: <sip:a@b>;tag=f1\nTo: <sip:x@192.0.2.1>\nCall-ID: c1\nCSeq: 2 OPTIONS\n\
             Max-Forwards: 70\nContent-Length: 0\n\n",
        );
        let ka = ServerKey::of(&a, &va);
        assert_ne!(ka, ServerKey::of(&b, &vb));
        assert_ne!(ka, ServerKey::of(&c, &vc));
    }

    #[test]
    fn txkey_client_branch_and_cseq_method() {
        let resp = |cseq: &str| {
            msg(&format!(
                "SIP/2.0 200 OK\nVia: SIP/2.0/UDP us.example;branch=z9hG4bKours\n\
                 From: <sip:a@b>;tag=f1\nTo: <sip:x@y>;tag=t\nCall-ID: c1\nCSeq: 3 {cseq}\n\
                 Content-Length: 0\n\n"
            ))
        };
        let (m, v) = resp("INVITE");
        let invite = ClientKey::of_response(&m, &v);
        assert_eq!(invite, ClientKey::new("z9hG4bKours", "INVITE"));
        let (m, v) = resp("CANCEL");
        assert_ne!(ClientKey::of_response(&m, &v), invite);
    }
}
