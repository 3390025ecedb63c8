//! What the endpoint checks before a request is served, sans-IO: the per-source flood
//! limit (token buckets, bounded; the new-call rate is `call_rate`), RFC 3261 section 8.2
//! request inspection (405/501, 416, 420, 415, 406), and digest verification of an
//! INVITE against its trunk's credentials (the algorithm must be one the trunk allows).
//! Tests: `admission_*`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

use super::build::{self, Outgoing};
use super::digest::{Algorithm, Authenticator, DigestError, DigestParams, Rejection, Verdict};
use super::incoming::Incoming;
use super::message::Message;
use super::uri::{self, Uri, UriError};
use crate::config::{Credentials, DigestAlgorithm};

/// Methods Roomline implements (the Allow header).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";
/// Body types we read (the Accept header).
pub const ACCEPT: &str =
    "application/sdp, multipart/mixed, application/dtmf-relay, application/dtmf";
/// Option tags we support (Supported): session timers (RFC 4028).
pub const SUPPORTED: &str = "timer";
/// Methods we know but do not serve outside a dialog: 405 (RFC 3261 section 8.2.1).
const NOT_ALLOWED: &[&str] = &["REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "PRACK"];
/// In-dialog methods: outside a known dialog they get 481.
pub const IN_DIALOG: &[&str] = &["BYE", "INFO", "UPDATE", "NOTIFY", "REFER"];
/// Known methods we do not implement: 501 outside a dialog.
pub const NOT_IMPLEMENTED: &[&str] = &["NOTIFY", "REFER"];
/// Sources tracked by the flood limit.
const MAX_SOURCES: usize = 16_384;

/// Per-source token buckets (the flood limit), bounded.
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    order: VecDeque<IpAddr>,
}

impl SourceLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        SourceLimiter {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Takes a token for `ip`; false when it is over its rate.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) {
            while self.buckets.len() >= MAX_SOURCES {
                match self.order.pop_front() {
                    Some(old) => {
                        self.buckets.remove(&old);
                    }
                    None => break,
                }
            }
            self.buckets.insert(ip, (self.burst, now));
            self.order.push_back(ip);
        }
        let (tokens, last) = self.buckets.get_mut(&ip).expect("inserted above");
        let dt = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + dt * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose bucket has refilled (idle ones).
    pub fn sweep(&mut self, now: Instant) {
        let full = self.burst / self.rate;
        self.buckets
            .retain(|_, (_, last)| now.saturating_duration_since(*last).as_secs_f64() < full);
        let b = &self.buckets;
        self.order.retain(|ip| b.contains_key(ip));
    }
}

/// RFC 3261 section 8.2.1-8.2.3 on an out-of-dialog request: the response for one we
/// refuse, or None to go on.
pub fn check_request(req: &Incoming) -> Option<Outgoing> {
    let method = req.method();
    let tag = build::new_tag();
    let resp = |status| build::response_to(&req.msg, status, Some(&tag));
    // 8.2.1 method inspection (method names are case-sensitive)
    let known = matches!(method, "INVITE" | "OPTIONS") || IN_DIALOG.contains(&method);
    if !known {
        let status = if NOT_ALLOWED.contains(&method) {
            405
        } else {
            501
        };
        return Some(resp(status).header("Allow", ALLOW));
    }
    // 8.2.2.1 To and Request-URI
    let uri = req.request_uri().unwrap_or("");
    if let Err(UriError::UnsupportedScheme(_)) = Uri::parse(uri) {
        return Some(resp(416));
    }
    if let Some(to) = req.to()
        && let Err(UriError::UnsupportedScheme(_)) = to.uri()
    {
        return Some(resp(416));
    }
    // 8.2.2.3 Require
    let unsupported: Vec<String> = uri::tokens(req.msg.headers_named("Require"))
        .into_iter()
        .filter(|t| !SUPPORTED.split(',').any(|s| s.trim() == t))
        .collect();
    if !unsupported.is_empty() {
        return Some(resp(420).header("Unsupported", unsupported.join(", ")));
    }
    // 8.2.3 content processing
    if let Some(enc) = req.msg.header("Content-Encoding")
        && uri::tokens(std::iter::once(enc))
            .iter()
            .any(|e| e != "identity")
    {
        return Some(
            resp(415)
                .header("Accept", ACCEPT)
                .header("Accept-Encoding", "identity"),
        );
    }
    if !req.msg.body.is_empty() {
        let ct = req
            .msg
            .header("Content-Type")
            .map(media_type)
            .unwrap_or_default();
        let ok = match method {
            "INVITE" | "UPDATE" | "OPTIONS" => ct == "application/sdp" || ct == "multipart/mixed",
            "INFO" => matches!(
                ct.as_str(),
                "application/dtmf-relay" | "application/dtmf" | "application/sdp"
            ),
            "NOTIFY" => ct == "message/sipfrag",
            _ => true,
        };
        if !ok {
            return Some(resp(415).header("Accept", ACCEPT));
        }
    }
    // we answer an INVITE with SDP: the caller must accept it (section 8.2.3)
    if method == "INVITE" && !accepts_sdp(&req.msg) {
        return Some(resp(406).header("Accept", "application/sdp"));
    }
    None
}

/// `type/subtype` of a Content-Type, lower-cased, parameters dropped.
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a request's Accept (if any) admits application/sdp.
pub fn accepts_sdp(msg: &Message) -> bool {
    let values: Vec<&str> = msg.headers_named("Accept").collect();
    if values.is_empty() {
        return true;
    }
    let all: Vec<String> = values
        .iter()
        .flat_map(|v| uri::split_list(v))
        .map(media_type)
        .collect();
    // an empty Accept header means no body at all is acceptable
    all.iter()
        .any(|t| t == "application/sdp" || t == "application/*" || t == "*/*")
}

/// The digest verdict on an INVITE for a trunk with `creds`: authorized only with an
/// algorithm the trunk allows. None: no Authorization at all (challenge).
pub fn verify_invite(
    auth: &mut Authenticator,
    creds: &Credentials,
    req: &Incoming,
    now_s: u64,
) -> Option<Verdict> {
    let uri = req.request_uri().unwrap_or("");
    let header = req.msg.header("Authorization")?;
    let verdict = auth.verify(
        now_s,
        "INVITE",
        uri,
        header,
        &creds.username,
        creds.password.expose(),
    );
    if verdict != Verdict::Authorized {
        return Some(verdict);
    }
    let used = DigestParams::parse(header)
        .ok()
        .and_then(|p| p.get("algorithm").map(str::to_ascii_lowercase))
        .unwrap_or_else(|| "md5".into());
    let allowed = creds.algorithms.iter().any(|a| match a {
        DigestAlgorithm::Md5 => used == "md5",
        DigestAlgorithm::Sha256 => used == "sha-256",
    });
    Some(if allowed {
        Verdict::Authorized
    } else {
        Verdict::Rejected(Rejection::Header(DigestError::UnsupportedAlgorithm(used)))
    })
}

/// 401 with one challenge per algorithm the trunk allows, the preferred first (RFC 8760
/// section 2.4).
pub fn challenge(
    auth: &mut Authenticator,
    creds: &Credentials,
    req: &Incoming,
    now_s: u64,
    stale: bool,
) -> Outgoing {
    let mut out = build::response_to(&req.msg, 401, Some(&build::new_tag()));
    for alg in &creds.algorithms {
        let a = match alg {
            DigestAlgorithm::Md5 => Algorithm::Md5,
            DigestAlgorithm::Sha256 => Algorithm::Sha256,
        };
        out.push("WWW-Authenticate", auth.challenge(now_s, a, stale));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message;
    use std::time::Duration;

    #[test]
    fn admission_source_limiter_is_bounded_and_refills() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(10, 20);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let granted = (0..100).filter(|_| l.allow(ip, t0)).count();
        assert_eq!(granted, 20, "burst");
        assert!(l.allow(ip, t0 + Duration::from_millis(100)), "refilled one");
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.allow(ip, t0);
        }
        assert!(l.buckets.len() <= MAX_SOURCES);
        l.sweep(t0 + Duration::from_secs(10));
        assert!(l.buckets.is_empty());
    }

    #[test]
    fn admission_accept_and_media_types() {
        let m = |accept: &str| {
            let text = format!(
                "OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
                 To: <sip:x@y>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n{accept}Content-Length: 0\r\n\r\n"
            );
            message::parse(text.as_bytes()).unwrap()
        };
        assert!(accepts_sdp(&m("")));
        assert!(accepts_sdp(&m(
            "Accept: text/plain, application/SDP;level=1\r\n"
        )));
        assert!(accepts_sdp(&m("Accept: */*\r\n")));
        assert!(!accepts_sdp(&m("Accept: text/nobodyknowsthis\r\n")));
        assert_eq!(media_type(" Application/SDP ; x=1"), "application/sdp");
    }
}
