//! SIP digest authentication, sans-IO: challenges and their verification for inbound
//! trunks (RFC 3261 section 22, qop=auth and SHA-256 from RFC 7616), and answers to a
//! carrier's 401/407 for outbound calls. Time and secrets come in as arguments.
//!
//! Nonces are stateless and self-expiring: `ts || counter || HMAC-SHA256(key, ts || counter)`,
//! so a challenge costs no memory. Replay protection keeps the highest nonce-count seen per
//! nonce in a bounded table (oldest entries go first), so no challenge grows state without
//! bound.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

/// Hash algorithm of a digest exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    pub fn parse(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    /// Lower-case hex of the hash of `data`.
    fn hex(self, data: &str) -> String {
        let bytes: Vec<u8> = match self {
            Algorithm::Md5 => Md5::digest(data.as_bytes()).to_vec(),
            Algorithm::Sha256 => Sha256::digest(data.as_bytes()).to_vec(),
        };
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            let _ = write!(out, "{b:02x}");
        }
        out
    }
}

/// Why a digest header could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DigestError {
    NotDigest,
    Malformed(&'static str),
    Missing(&'static str),
    UnsupportedAlgorithm(String),
    UnsupportedQop(String),
}

impl std::fmt::Display for DigestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DigestError::NotDigest => f.write_str("not a Digest header"),
            DigestError::Malformed(what) => write!(f, "malformed digest header: {what}"),
            DigestError::Missing(p) => write!(f, "digest header lacks {p}"),
            DigestError::UnsupportedAlgorithm(a) => write!(f, "unsupported digest algorithm {a:?}"),
            DigestError::UnsupportedQop(q) => write!(f, "unsupported qop {q:?}"),
        }
    }
}

/// The `name=value` parameters of a `Digest ...` header, values unquoted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestParams(Vec<(String, String)>);

impl DigestParams {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn require(&self, name: &'static str) -> Result<&str, DigestError> {
        self.get(name).ok_or(DigestError::Missing(name))
    }

    /// Parses the value of WWW-Authenticate, Proxy-Authenticate, Authorization or
    /// Proxy-Authorization.
    pub fn parse(value: &str) -> Result<DigestParams, DigestError> {
        let v = value.trim_start();
        let scheme_end = v.find(|c: char| c.is_ascii_whitespace()).unwrap_or(v.len());
        if !v[..scheme_end].eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest);
        }
        let mut rest = v[scheme_end..].trim_start();
        let mut params = Vec::new();
        while !rest.is_empty() {
            let eq = rest
                .find('=')
                .ok_or(DigestError::Malformed("parameter without '='"))?;
            let name = rest[..eq].trim();
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(DigestError::Malformed("bad parameter name"));
            }
            rest = rest[eq + 1..].trim_start();
            let value;
            if let Some(q) = rest.strip_prefix('"') {
                // quoted-string with backslash escapes
                let mut out = String::new();
                let mut chars = q.char_indices();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => match chars.next() {
                            Some((_, e)) => out.push(e),
                            None => return Err(DigestError::Malformed("dangling escape")),
                        },
                        '"' => {
                            end = Some(i);
                            break;
                        }
                        _ => out.push(c),
                    }
                }
                let end = end.ok_or(DigestError::Malformed("unterminated quoted string"))?;
                value = out;
                rest = q[end + 1..].trim_start();
            } else {
                let end = rest.find(',').unwrap_or(rest.len());
                value = rest[..end].trim().to_string();
                if value.is_empty() {
                    return Err(DigestError::Malformed("empty parameter value"));
                }
                if value.contains(|c: char| c.is_ascii_whitespace() || c == '=' || c == '"') {
                    return Err(DigestError::Malformed("unquoted value is not a token"));
                }
                rest = &rest[end..];
            }
            if params
                .iter()
                .any(|(k, _): &(String, String)| k.eq_ignore_ascii_case(name))
            {
                return Err(DigestError::Malformed("duplicate parameter"));
            }
            params.push((name.to_string(), value));
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r.trim_start();
            } else if !rest.is_empty() {
                return Err(DigestError::Malformed("expected ',' between parameters"));
            }
        }
        Ok(DigestParams(params))
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// A challenge from a 401/407, as a client answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// The server offered qop=auth (we then always use it).
    pub qop_auth: bool,
    pub stale: bool,
}

impl Challenge {
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let p = DigestParams::parse(value)?;
        let algorithm = match p.get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a)
                .ok_or_else(|| DigestError::UnsupportedAlgorithm(a.to_string()))?,
        };
        let qop_auth = match p.get("qop") {
            None => false,
            Some(q) => {
                if q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")) {
                    true
                } else {
                    return Err(DigestError::UnsupportedQop(q.to_string()));
                }
            }
        };
        Ok(Challenge {
            realm: p.require("realm")?.to_string(),
            nonce: p.require("nonce")?.to_string(),
            opaque: p.get("opaque").map(str::to_string),
            algorithm,
            qop_auth,
            stale: p
                .get("stale")
                .is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// The header value of this challenge (WWW-Authenticate / Proxy-Authenticate).
    pub fn to_header(&self) -> String {
        let mut h = format!(
            "Digest realm={}, nonce={}",
            quote(&self.realm),
            quote(&self.nonce)
        );
        if let Some(o) = &self.opaque {
            let _ = write!(h, ", opaque={}", quote(o));
        }
        let _ = write!(h, ", algorithm={}", self.algorithm.name());
        if self.qop_auth {
            h.push_str(", qop=\"auth\"");
        }
        if self.stale {
            h.push_str(", stale=true");
        }
        h
    }
}

/// RFC 3261 section 22.4 / RFC 7616 section 3.4.1: the response digest.
#[allow(clippy::too_many_arguments)]
fn response(
    alg: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    qop: Option<(&str, &str)>, // (nc, cnonce) with qop=auth
) -> String {
    let ha1 = alg.hex(&format!("{username}:{realm}:{password}"));
    let ha2 = alg.hex(&format!("{method}:{uri}"));
    match qop {
        Some((nc, cnonce)) => alg.hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")),
        None => alg.hex(&format!("{ha1}:{nonce}:{ha2}")),
    }
}

/// Client side: the Authorization / Proxy-Authorization value answering `challenge`.
/// `cnonce` should be fresh random text; `nc` counts uses of the same nonce from 1.
pub fn answer(
    challenge: &Challenge,
    method: &str,
    uri: &str,
    username: &str,
    password: &str,
    cnonce: &str,
    nc: u32,
) -> String {
    let c = challenge;
    let nc_text = format!("{nc:08x}");
    let qop = c.qop_auth.then_some((nc_text.as_str(), cnonce));
    let resp = response(
        c.algorithm,
        username,
        &c.realm,
        password,
        method,
        uri,
        &c.nonce,
        qop,
    );
    let mut h = format!(
        "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}",
        quote(username),
        quote(&c.realm),
        quote(&c.nonce),
        quote(uri),
        quote(&resp),
        c.algorithm.name()
    );
    if c.qop_auth {
        let _ = write!(h, ", qop=auth, nc={nc_text}, cnonce={}", quote(cnonce));
    }
    if let Some(o) = &c.opaque {
        let _ = write!(h, ", opaque={}", quote(o));
    }
    h
}

/// The outcome of checking credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Credentials are right and fresh.
    Authorized,
    /// Right credentials on an expired nonce: challenge again with stale=true.
    Stale,
    /// Wrong or unusable credentials: answer 403.
    Rejected(Rejection),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Header(DigestError),
    /// qop must be auth: we always offer it, so its absence is a downgrade.
    QopMissing,
    WrongRealm,
    /// The nonce was not made by us (or by an earlier key).
    ForeignNonce,
    WrongUsername,
    UriMismatch,
    WrongResponse,
    /// The nonce-count did not increase: a replayed request.
    Replay,
}

/// Server side of digest auth for one realm.
pub struct Authenticator {
    realm: String,
    key: [u8; 32],
    nonce_ttl_secs: u64,
    counter: u64,
    /// Highest nonce-count seen per nonce, with insertion order for eviction.
    counts: HashMap<String, (u64, u32)>,
    order: VecDeque<String>,
    capacity: usize,
}

const NONCE_RAW: usize = 8 + 8 + 16;

impl Authenticator {
    /// `key` must be secret and random (made once at start); `nonce_ttl_secs` is how long a
    /// nonce is accepted; `capacity` bounds the replay table.
    pub fn new(realm: &str, key: [u8; 32], nonce_ttl_secs: u64, capacity: usize) -> Self {
        Authenticator {
            realm: realm.to_string(),
            key,
            nonce_ttl_secs,
            counter: 0,
            counts: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Changes how long nonces are accepted (a reloaded `sip.auth_nonce_ttl`); applies to
    /// nonces already issued too, since they carry only their issue time.
    pub fn set_nonce_ttl(&mut self, nonce_ttl_secs: u64) {
        self.nonce_ttl_secs = nonce_ttl_secs;
    }

    pub fn realm(&self) -> &str {
        &self.realm
    }

    fn mac(&self, ts: u64, n: u64) -> [u8; 16] {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("any key length");
        m.update(&ts.to_be_bytes());
        m.update(&n.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut out = [0u8; 16];
        out.copy_from_slice(&full[..16]);
        out
    }

    fn new_nonce(&mut self, now_secs: u64) -> String {
        self.counter = self.counter.wrapping_add(1);
        let mut raw = Vec::with_capacity(NONCE_RAW);
        raw.extend_from_slice(&now_secs.to_be_bytes());
        raw.extend_from_slice(&self.counter.to_be_bytes());
        raw.extend_from_slice(&self.mac(now_secs, self.counter));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// The issue time of a nonce we made, or None for any other text.
    fn nonce_time(&self, nonce: &str) -> Option<u64> {
        let raw = URL_SAFE_NO_PAD.decode(nonce).ok()?;
        if raw.len() != NONCE_RAW {
            return None;
        }
        let ts = u64::from_be_bytes(raw[0..8].try_into().ok()?);
        let n = u64::from_be_bytes(raw[8..16].try_into().ok()?);
        let want = self.mac(ts, n);
        // constant-time comparison
        let diff = want
            .iter()
            .zip(&raw[16..])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        (diff == 0).then_some(ts)
    }

    /// A fresh challenge (WWW-Authenticate or Proxy-Authenticate value).
    pub fn challenge(&mut self, now_secs: u64, algorithm: Algorithm, stale: bool) -> String {
        let nonce = self.new_nonce(now_secs);
        Challenge {
            realm: self.realm.clone(),
            nonce,
            opaque: None,
            algorithm,
            qop_auth: true,
            stale,
        }
        .to_header()
    }

    /// Checks an Authorization value for `method` and `request_uri` against the expected
    /// `username`/`password`.
    pub fn verify(
        &mut self,
        now_secs: u64,
        method: &str,
        request_uri: &str,
        header: &str,
        username: &str,
        password: &str,
    ) -> Verdict {
        match self.check(now_secs, method, request_uri, header, username, password) {
            Ok(v) => v,
            Err(r) => Verdict::Rejected(r),
        }
    }

    fn check(
        &mut self,
        now: u64,
        method: &str,
        request_uri: &str,
        header: &str,
        username: &str,
        password: &str,
    ) -> Result<Verdict, Rejection> {
        let p = DigestParams::parse(header).map_err(Rejection::Header)?;
        let field = |n: &'static str| p.require(n).map_err(Rejection::Header);
        let alg = match p.get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::parse(a).ok_or_else(|| {
                Rejection::Header(DigestError::UnsupportedAlgorithm(a.to_string()))
            })?,
        };
        match p.get("qop") {
            Some(q) if q.eq_ignore_ascii_case("auth") => {}
            Some(q) => {
                return Err(Rejection::Header(DigestError::UnsupportedQop(
                    q.to_string(),
                )));
            }
            None => return Err(Rejection::QopMissing),
        }
        if field("realm")? != self.realm {
            return Err(Rejection::WrongRealm);
        }
        let nonce = field("nonce")?;
        let issued = self.nonce_time(nonce).ok_or(Rejection::ForeignNonce)?;
        if field("username")? != username {
            return Err(Rejection::WrongUsername);
        }
        let uri = field("uri")?;
        if uri != request_uri {
            return Err(Rejection::UriMismatch);
        }
        let nc_text = field("nc")?;
        let nc = u32::from_str_radix(nc_text, 16)
            .ok()
            .filter(|_| nc_text.len() == 8)
            .ok_or(Rejection::Header(DigestError::Malformed(
                "nc is not 8 hex digits",
            )))?;
        let cnonce = field("cnonce")?;
        let want = response(
            alg,
            username,
            &self.realm,
            password,
            method,
            uri,
            nonce,
            Some((nc_text, cnonce)),
        );
        let got = field("response")?.to_ascii_lowercase();
        let same = want.len() == got.len()
            && want
                .bytes()
                .zip(got.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if !same {
            return Err(Rejection::WrongResponse);
        }
        if now.saturating_sub(issued) > self.nonce_ttl_secs || issued > now.saturating_add(5) {
            return Ok(Verdict::Stale);
        }
        self.record_count(now, nonce, issued, nc)?;
        Ok(Verdict::Authorized)
    }

    /// RFC 7616 section 3.4.5 (nc): each use of a nonce must carry a higher count.
    fn record_count(
        &mut self,
        now: u64,
        nonce: &str,
        issued: u64,
        nc: u32,
    ) -> Result<(), Rejection> {
        if let Some((_, last)) = self.counts.get_mut(nonce) {
            if nc <= *last {
                return Err(Rejection::Replay);
            }
            *last = nc;
            return Ok(());
        }
        // Forget expired nonces first, then the oldest if still full.
        while let Some(front) = self.order.front() {
            let expired = self
                .counts
                .get(front)
                .is_none_or(|(t, _)| now.saturating_sub(*t) > self.nonce_ttl_secs);
            if expired || self.counts.len() >= self.capacity {
                let k = self.order.pop_front().expect("front exists");
                self.counts.remove(&k);
            } else {
                break;
            }
        }
        self.counts.insert(nonce.to_string(), (issued, nc));
        self.order.push_back(nonce.to_string());
        Ok(())
    }

    /// How many nonces the replay table holds (bounded by `capacity`).
    pub fn tracked_nonces(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2617_md5_example() {
        // RFC 2617 section 3.5 (qop=auth), the classic test vector.
        let r = response(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "dcd98b7102dd2f0e8b11d0f600bfb0c093",
            Some(("00000001", "0a4f113b")),
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
    }

    #[test]
    fn rfc7616_sha256_and_md5_examples() {
        // RFC 7616 section 3.9.1.
        let args = |alg| {
            response(
                alg,
                "Mufasa",
                "http-auth@example.org",
                "Circle of Life",
                "GET",
                "/dir/index.html",
                "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
                Some(("00000001", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")),
            )
        };
        assert_eq!(
            args(Algorithm::Sha256),
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
        assert_eq!(args(Algorithm::Md5), "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn parses_quoted_and_token_params() {
        let p = DigestParams::parse(
            r#"Digest realm="a \"q\" realm", nonce="n,1", algorithm=SHA-256, qop="auth,auth-int", stale=TRUE"#,
        )
        .unwrap();
        assert_eq!(p.get("realm"), Some(r#"a "q" realm"#));
        assert_eq!(p.get("NONCE"), Some("n,1"));
        let c = Challenge::parse(
            r#"Digest realm="r", nonce="n", qop="auth-int,auth", algorithm=sha-256, stale=true"#,
        )
        .unwrap();
        assert!(c.qop_auth && c.stale && c.algorithm == Algorithm::Sha256);
        for bad in [
            "Basic realm=x",
            "Digest realm",
            "Digest realm=\"x",
            "Digest realm=x realm=y",
            "Digest a=1, a=2",
            "Digest a=",
        ] {
            assert!(DigestParams::parse(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            Challenge::parse("Digest realm=r, nonce=n, algorithm=SHA-512"),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(matches!(
            Challenge::parse("Digest realm=r, nonce=n, qop=auth-int"),
            Err(DigestError::UnsupportedQop(_))
        ));
    }

    fn server() -> Authenticator {
        Authenticator::new("roomline", [7u8; 32], 300, 64)
    }

    fn client_answer(challenge: &str, password: &str, nc: u32) -> String {
        let c = Challenge::parse(challenge).unwrap();
        answer(
            &c,
            "INVITE",
            "sip:+15550100@127.0.0.1",
            "carrier",
            password,
            "c0ffee",
            nc,
        )
    }

    #[test]
    fn full_exchange_both_algorithms() {
        for alg in [Algorithm::Md5, Algorithm::Sha256] {
            let mut s = server();
            let ch = s.challenge(1000, alg, false);
            assert!(
                ch.contains("qop=\"auth\"") && ch.contains(alg.name()),
                "{ch}"
            );
            let auth = client_answer(&ch, "pw", 1);
            let v = s.verify(
                1001,
                "INVITE",
                "sip:+15550100@127.0.0.1",
                &auth,
                "carrier",
                "pw",
            );
            assert_eq!(v, Verdict::Authorized);
        }
    }

    #[test]
    fn wrong_password_username_uri_and_realm_are_rejected() {
        let mut s = server();
        let ch = s.challenge(1000, Algorithm::Md5, false);
        let uri = "sip:+15550100@127.0.0.1";
        let bad = client_answer(&ch, "guess", 1);
        assert_eq!(
            s.verify(1001, "INVITE", uri, &bad, "carrier", "pw"),
            Verdict::Rejected(Rejection::WrongResponse)
        );
        let good = client_answer(&ch, "pw", 1);
        assert_eq!(
            s.verify(1001, "INVITE", uri, &good, "other", "pw"),
            Verdict::Rejected(Rejection::WrongUsername)
        );
        assert_eq!(
            s.verify(1001, "INVITE", "sip:x@y", &good, "carrier", "pw"),
            Verdict::Rejected(Rejection::UriMismatch)
        );
        // Method is covered by the hash: the same header on a BYE fails.
        assert_eq!(
            s.verify(1001, "BYE", uri, &good, "carrier", "pw"),
            Verdict::Rejected(Rejection::WrongResponse)
        );
        let mut other = Authenticator::new("elsewhere", [7u8; 32], 300, 64);
        assert_eq!(
            other.verify(1001, "INVITE", uri, &good, "carrier", "pw"),
            Verdict::Rejected(Rejection::WrongRealm)
        );
    }

    #[test]
    fn forged_nonce_and_missing_qop_are_rejected() {
        let mut s = server();
        let forged = Challenge {
            realm: "roomline".into(),
            nonce: URL_SAFE_NO_PAD.encode([0u8; NONCE_RAW]),
            opaque: None,
            algorithm: Algorithm::Md5,
            qop_auth: true,
            stale: false,
        };
        let auth = answer(&forged, "INVITE", "sip:a@b", "carrier", "pw", "x", 1);
        assert_eq!(
            s.verify(1, "INVITE", "sip:a@b", &auth, "carrier", "pw"),
            Verdict::Rejected(Rejection::ForeignNonce)
        );
        // A nonce made with another key (e.g. before a restart) is foreign too.
        let mut old = Authenticator::new("roomline", [9u8; 32], 300, 64);
        let ch = old.challenge(1, Algorithm::Md5, false);
        let auth = client_answer(&ch, "pw", 1);
        assert_eq!(
            s.verify(
                2,
                "INVITE",
                "sip:+15550100@127.0.0.1",
                &auth,
                "carrier",
                "pw"
            ),
            Verdict::Rejected(Rejection::ForeignNonce)
        );
        // Without qop (RFC 2069 style) is a downgrade we refuse.
        let ch = s.challenge(1, Algorithm::Md5, false);
        let mut c = Challenge::parse(&ch).unwrap();
        c.qop_auth = false;
        let auth = answer(&c, "INVITE", "sip:a@b", "carrier", "pw", "x", 1);
        assert_eq!(
            s.verify(2, "INVITE", "sip:a@b", &auth, "carrier", "pw"),
            Verdict::Rejected(Rejection::QopMissing)
        );
    }

    #[test]
    fn expired_nonce_is_stale_only_when_the_response_is_right() {
        let mut s = server();
        let ch = s.challenge(1000, Algorithm::Sha256, false);
        let uri = "sip:+15550100@127.0.0.1";
        let good = client_answer(&ch, "pw", 1);
        assert_eq!(
            s.verify(1301, "INVITE", uri, &good, "carrier", "pw"),
            Verdict::Stale
        );
        let bad = client_answer(&ch, "nope", 1);
        assert_eq!(
            s.verify(1301, "INVITE", uri, &bad, "carrier", "pw"),
            Verdict::Rejected(Rejection::WrongResponse)
        );
        let again = s.challenge(1301, Algorithm::Sha256, true);
        assert!(again.ends_with("stale=true"), "{again}");
        assert_eq!(
            s.verify(1300, "INVITE", uri, &good, "carrier", "pw"),
            Verdict::Authorized
        );
    }

    #[test]
    fn nonce_count_replay_is_rejected() {
        let mut s = server();
        let ch = s.challenge(10, Algorithm::Md5, false);
        let uri = "sip:+15550100@127.0.0.1";
        let first = client_answer(&ch, "pw", 1);
        assert_eq!(
            s.verify(11, "INVITE", uri, &first, "carrier", "pw"),
            Verdict::Authorized
        );
        assert_eq!(
            s.verify(12, "INVITE", uri, &first, "carrier", "pw"),
            Verdict::Rejected(Rejection::Replay)
        );
        let second = client_answer(&ch, "pw", 2);
        assert_eq!(
            s.verify(12, "INVITE", uri, &second, "carrier", "pw"),
            Verdict::Authorized
        );
        assert_eq!(
            s.verify(13, "INVITE", uri, &first, "carrier", "pw"),
            Verdict::Rejected(Rejection::Replay)
        );
    }

    #[test]
    fn replay_table_stays_bounded() {
        let mut s = Authenticator::new("roomline", [1u8; 32], 300, 16);
        let uri = "sip:+15550100@127.0.0.1";
        for i in 0..1000 {
            let ch = s.challenge(i, Algorithm::Md5, false);
            let auth = client_answer(&ch, "pw", 1);
            assert_eq!(
                s.verify(i, "INVITE", uri, &auth, "carrier", "pw"),
                Verdict::Authorized
            );
            assert!(s.tracked_nonces() <= 16);
        }
        // Challenges themselves keep no state.
        for i in 0..1000 {
            s.challenge(2000 + i, Algorithm::Md5, false);
        }
        assert!(s.tracked_nonces() <= 16);
    }
}
