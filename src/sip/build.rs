//! Building outgoing SIP messages, sans-IO: responses to received requests (RFC 3261
//! section 8.2.6: Via, From, To with our tag, Call-ID and CSeq copied), requests, reason
//! phrases, and the identifiers the endpoint mints (tags, branches, Call-IDs).
//! Content-Length is always written. Tests: `response_*`, `request_*`.

use super::message::Message;
use rand::Rng;

/// An outgoing message: start line, headers in order, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub start: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Outgoing {
    pub fn request(method: &str, uri: &str) -> Outgoing {
        Outgoing {
            start: format!("{method} {uri} SIP/2.0"),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn response(status: u16, reason: &str) -> Outgoing {
        Outgoing {
            start: format!("SIP/2.0 {status} {}", sanitize_reason(reason)),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Appends a header (values with line breaks are cut at the first one).
    pub fn header(mut self, name: &str, value: impl AsRef<str>) -> Outgoing {
        self.push(name, value);
        self
    }

    pub fn push(&mut self, name: &str, value: impl AsRef<str>) {
        let v = value.as_ref();
        let v = v.split(['\r', '\n']).next().unwrap_or("");
        self.headers.push((name.to_string(), v.to_string()));
    }

    /// Replaces every header named `name` with one of `value`.
    pub fn set(&mut self, name: &str, value: impl AsRef<str>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.push(name, value);
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: impl Into<Vec<u8>>) -> Outgoing {
        self.set("Content-Type", content_type);
        self.body = body.into();
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.body.len());
        out.extend_from_slice(self.start.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case("Content-Length") {
                continue;
            }
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes());
        out.extend_from_slice(&self.body);
        out
    }
}

fn sanitize_reason(r: &str) -> String {
    r.chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect::<String>()
}

/// RFC 3261 section 21 reason phrases (and the few extensions Roomline sends).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match status / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// A response to `req` (RFC 3261 section 8.2.6.2): every Via (the top one as stamped on
/// receipt), From, To (with `to_tag` added when the request's To has none), Call-ID and
/// CSeq, in that order. 100 Trying never carries a To tag (section 8.2.6.1).
pub fn response_to(req: &Message, status: u16, to_tag: Option<&str>) -> Outgoing {
    response_with_reason(req, status, reason_phrase(status), to_tag)
}

pub fn response_with_reason(
    req: &Message,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
) -> Outgoing {
    let mut out = Outgoing::response(status, reason);
    for h in &req.headers {
        if h.name.eq_ignore_ascii_case("Via") {
            out.push("Via", &h.value);
        }
    }
    if let Some(f) = req.header("From") {
        out.push("From", f);
    }
    if let Some(t) = req.header("To") {
        let has_tag = super::uri::NameAddr::parse(t)
            .map(|n| n.tag().is_some())
            .unwrap_or(true);
        match to_tag {
            Some(tag) if !has_tag && status != 100 => out.push("To", format!("{t};tag={tag}")),
            _ => out.push("To", t),
        }
    }
    if let Some(c) = req.header("Call-ID") {
        out.push("Call-ID", c);
    }
    if let Some(c) = req.header("CSeq") {
        out.push("CSeq", c);
    }
    // RFC 3261 section 8.2.6.1: a 100 Trying copies the request's Timestamp
    if status == 100
        && let Some(ts) = req.header("Timestamp")
    {
        out.push("Timestamp", ts);
    }
    out
}

/// RFC 3261 section 17.1.1.3: the ACK of a 300-699 final, in the INVITE's transaction:
/// the INVITE's Request-URI, top Via, From, Call-ID, CSeq number and Route; the
/// response's To.
pub fn ack_for_failure(invite: &Outgoing, resp: &Message) -> Outgoing {
    let ruri = invite
        .start
        .split(' ')
        .nth(1)
        .unwrap_or("sip:invalid")
        .to_string();
    let mut ack = Outgoing::request("ACK", &ruri);
    if let Some(v) = invite.get("Via") {
        ack.push("Via", v);
    }
    ack.push("Max-Forwards", "70");
    if let Some(f) = invite.get("From") {
        ack.push("From", f);
    }
    if let Some(t) = resp.header("To") {
        ack.push("To", t);
    }
    if let Some(c) = invite.get("Call-ID") {
        ack.push("Call-ID", c);
    }
    if let Some(cs) = invite.get("CSeq") {
        let n = cs.split_whitespace().next().unwrap_or("1");
        ack.push("CSeq", format!("{n} ACK"));
    }
    for r in invite
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Route"))
    {
        ack.push("Route", &r.1);
    }
    ack
}

fn random_token(n: usize) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| CHARS[rng.random_range(0..CHARS.len())] as char)
        .collect()
}

/// A From/To tag (RFC 3261 section 19.3: at least 32 bits of randomness).
pub fn new_tag() -> String {
    random_token(12)
}

/// A transaction branch with the magic cookie (section 8.1.1.7).
pub fn new_branch() -> String {
    format!("{}{}", super::uri::BRANCH_COOKIE, random_token(16))
}

/// A Call-ID (section 8.1.1.4): globally unique, no host name needed.
pub fn new_call_id() -> String {
    random_token(24)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message;

    const INVITE: &str = "INVITE sip:+15550100@roomline.example SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;received=192.0.2.9\r\n\
        Via: SIP/2.0/UDP 192.0.2.2;branch=z9hG4bK2\r\n\
        Max-Forwards: 70\r\n\
        From: <sip:+15550111@carrier.example>;tag=abc\r\n\
        To: <sip:+15550100@roomline.example>\r\n\
        Call-ID: c1@192.0.2.1\r\n\
        CSeq: 1 INVITE\r\n\
        Timestamp: 54\r\n\
        Content-Length: 0\r\n\r\n";

    #[test]
    fn response_copies_the_dialog_headers_and_adds_the_tag() {
        let req = message::parse(INVITE.as_bytes()).unwrap();
        let r = response_to(&req, 180, Some("t1")).to_bytes();
        let text = String::from_utf8(r.clone()).unwrap();
        assert!(text.starts_with("SIP/2.0 180 Ringing\r\n"), "{text}");
        let parsed = message::parse(&r).unwrap();
        let vias: Vec<&str> = parsed.headers_named("Via").collect();
        assert_eq!(vias.len(), 2);
        assert!(vias[0].contains("received=192.0.2.9"));
        assert_eq!(
            parsed.header("To"),
            Some("<sip:+15550100@roomline.example>;tag=t1")
        );
        assert_eq!(parsed.header("CSeq"), Some("1 INVITE"));
        assert_eq!(parsed.header("Content-Length"), Some("0"));
        assert_eq!(parsed.header("Timestamp"), None);
    }

    #[test]
    fn response_100_has_no_tag_and_keeps_timestamp() {
        let req = message::parse(INVITE.as_bytes()).unwrap();
        let r = message::parse(&response_to(&req, 100, Some("t1")).to_bytes()).unwrap();
        assert_eq!(r.header("To"), Some("<sip:+15550100@roomline.example>"));
        assert_eq!(r.header("Timestamp"), Some("54"));
    }

    #[test]
    fn response_keeps_an_existing_tag_and_sanitizes_reason() {
        let with_tag = INVITE.replace(
            "To: <sip:+15550100@roomline.example>",
            "To: <sip:+15550100@roomline.example>;tag=zz",
        );
        let req = message::parse(with_tag.as_bytes()).unwrap();
        let out = response_with_reason(&req, 603, "Decline\r\nX-Injected: 1", Some("t1"));
        let r = message::parse(&out.to_bytes()).unwrap();
        assert_eq!(
            r.header("To"),
            Some("<sip:+15550100@roomline.example>;tag=zz")
        );
        assert_eq!(r.header("X-Injected"), None);
    }

    #[test]
    fn request_with_body_has_its_length() {
        let out = Outgoing::request("INFO", "sip:a@b")
            .header("Via", "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx")
            .header("From", "<sip:r@127.0.0.1>;tag=1")
            .header("To", "<sip:a@b>;tag=2")
            .header("Call-ID", "x")
            .header("CSeq", "2 INFO")
            .header("Content-Length", "999")
            .body("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n");
        let m = message::parse(&out.to_bytes()).unwrap();
        assert_eq!(m.header("Content-Length"), Some("24"));
        assert_eq!(m.body, b"Signal=5\r\nDuration=160\r\n");
        assert_eq!(m.header("Content-Type"), Some("application/dtmf-relay"));
    }

    #[test]
    fn identifiers_are_fresh() {
        assert!(new_branch().starts_with("z9hG4bK"));
        assert_ne!(new_tag(), new_tag());
        assert_ne!(new_call_id(), new_call_id());
        assert_eq!(reason_phrase(487), "Request Terminated");
        assert_eq!(reason_phrase(499), "Client Error");
    }
}
