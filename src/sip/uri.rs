//! Typed views of the SIP header values the endpoint acts on, sans-IO: URIs (RFC 3261
//! section 19.1, `tel:` of RFC 3966), name-addr values (From, To, Contact, Route; section
//! 20.10), Via (section 20.42 with RFC 3581 `rport`), and token lists (Require, Supported,
//! Allow, Accept). Values reaching here passed `sip::message`'s syntax checks; these
//! parsers still never panic on odd input. Tests: `uri_*`, `name_addr_*`, `via_*`.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// URI schemes Roomline serves. Anything else in a Request-URI is answered 416
/// (RFC 3261 section 8.2.2.1). Tests: `uri_schemes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Sip => "sip",
            Scheme::Sips => "sips",
            Scheme::Tel => "tel",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriError {
    /// A scheme other than sip, sips or tel (the scheme, lower-cased).
    UnsupportedScheme(String),
    Malformed(String),
}

impl fmt::Display for UriError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UriError::UnsupportedScheme(s) => write!(f, "unsupported URI scheme {s:?}"),
            UriError::Malformed(why) => write!(f, "malformed URI: {why}"),
        }
    }
}

/// `name[=value]` parameters in order, names compared case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// Parses `;a=b;c` (the leading `;` optional; whitespace around `;` and `=` allowed).
    pub fn parse(s: &str) -> Params {
        let mut out = Vec::new();
        let s = s.trim();
        let s = s.strip_prefix(';').unwrap_or(s);
        if s.trim().is_empty() {
            return Params(out);
        }
        for part in split_outside_quotes(s, ';') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            match part.split_once('=') {
                Some((n, v)) => out.push((n.trim().to_string(), Some(v.trim().to_string()))),
                None => out.push((part.to_string(), None)),
            }
        }
        Params(out)
    }

    /// The value of `name`: `Some(None)` for a flag without value, `None` if absent.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// The value of `name`, if present with a value.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.get(name).flatten()
    }

    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets (replacing) `name`.
    pub fn set(&mut self, name: &str, value: Option<String>) {
        if let Some(slot) = self
            .0
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            slot.1 = value;
        } else {
            self.0.push((name.to_string(), value));
        }
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in &self.0 {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

/// Splits on `sep` outside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut escape, mut from) = (false, false, 0);
    for (i, c) in s.char_indices() {
        if escape {
            escape = false;
            continue;
        }
        match c {
            '\\' if quoted => escape = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[from..i]);
                from = i + c.len_utf8();
            }
            _ => {}
        }
    }
    out.push(&s[from..]);
    out
}

/// Splits a header value on commas outside quotes and angle brackets (RFC 3261 section
/// 7.3.1: a list header may be one line with commas or several lines), dropping empty
/// elements.
pub fn split_list(v: &str) -> Vec<&str> {
    let mut out = split_list_raw(v);
    out.retain(|s| !s.is_empty());
    out
}

/// [`split_list`] keeping empty elements (the syntax checks refuse them).
pub fn split_list_raw(v: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut angle, mut escape, mut from) = (false, false, false, 0);
    for (i, c) in v.char_indices() {
        if escape {
            escape = false;
            continue;
        }
        match c {
            '\\' if quoted => escape = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            ',' if !quoted && !angle => {
                out.push(v[from..i].trim());
                from = i + 1;
            }
            _ => {}
        }
    }
    out.push(v[from..].trim());
    out
}

/// The tokens of list headers such as Require, Supported, Allow, lower-cased, from every
/// instance of the header.
pub fn tokens<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    values
        .flat_map(split_list)
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Percent-decoding (RFC 3261 section 19.1.2, RFC 3986 section 2.1); invalid escapes are
/// kept as written.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A sip:, sips: or tel: URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// The user part as written (percent-encoded); for tel:, the number with its
    /// parameters stripped into `params`.
    pub user: Option<String>,
    /// Host (IPv6 without brackets); empty for tel:.
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
    /// URI headers (`?a=b`), as written without the `?`.
    pub headers: Option<String>,
}

impl Uri {
    /// Parses an absolute URI. Tests: `uri_*`.
    pub fn parse(s: &str) -> Result<Uri, UriError> {
        let s = s.trim();
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| UriError::Malformed("no scheme".into()))?;
        let lower = scheme.to_ascii_lowercase();
        let scheme = match lower.as_str() {
            "sip" => Scheme::Sip,
            "sips" => Scheme::Sips,
            "tel" => Scheme::Tel,
            _ => {
                let valid = lower
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic())
                    && lower
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
                return Err(if valid {
                    UriError::UnsupportedScheme(lower)
                } else {
                    UriError::Malformed("bad scheme".into())
                });
            }
        };
        if scheme == Scheme::Tel {
            let (number, params) = match rest.split_once(';') {
                Some((n, p)) => (n, Params::parse(p)),
                None => (rest, Params::default()),
            };
            if number.is_empty() {
                return Err(UriError::Malformed("empty tel: number".into()));
            }
            return Ok(Uri {
                scheme,
                user: Some(number.to_string()),
                host: String::new(),
                port: None,
                params,
                headers: None,
            });
        }
        let (rest, headers) = match rest.split_once('?') {
            // '?' may occur in the user part (user-unreserved); headers follow the host
            Some((a, b)) if !b.contains('@') => (a, Some(b.to_string())),
            _ => (rest, None),
        };
        let (user, hostpart) = match rest.rsplit_once('@') {
            Some((u, h)) => {
                // user[:password]
                let user = u.split_once(':').map_or(u, |(u, _)| u);
                (Some(user.to_string()), h)
            }
            None => (None, rest),
        };
        let (hostport, params) = match hostpart.split_once(';') {
            Some((h, p)) => (h, Params::parse(p)),
            None => (hostpart, Params::default()),
        };
        let (host, port) = split_host_port(hostport).map_err(UriError::Malformed)?;
        Ok(Uri {
            scheme,
            user: user.filter(|u| !u.is_empty()),
            host,
            port,
            params,
            headers,
        })
    }

    /// The user part decoded (`%2B1555` -> `+1555`), without user parameters.
    pub fn user_decoded(&self) -> Option<String> {
        let u = self.user.as_deref()?;
        let base = u.split(';').next().unwrap_or(u);
        Some(percent_decode(base))
    }

    /// `transport` parameter, lower-cased.
    pub fn transport(&self) -> Option<String> {
        self.params
            .value("transport")
            .map(|t| t.to_ascii_lowercase())
    }

    /// The host as an IP address, if it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme.as_str())?;
        if self.scheme == Scheme::Tel {
            write!(f, "{}", self.user.as_deref().unwrap_or(""))?;
            return write!(f, "{}", self.params);
        }
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            write!(f, "{}", self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// `host[:port]`, IPv6 in brackets. The host is returned without brackets.
pub fn split_host_port(s: &str) -> Result<(String, Option<u16>), String> {
    let s = s.trim();
    let (host, port) = if let Some(r) = s.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or("unclosed '['")?;
        h.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "bad IPv6 address".to_string())?;
        (h, after.strip_prefix(':'))
    } else {
        match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:_".contains(c))
    {
        return Err(format!("bad host {:.40}", host));
    }
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|_| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| format!("bad port {:.10}", p))?,
        ),
    };
    Ok((host.to_string(), port))
}

/// `host:port` for a socket address, IPv6 in brackets.
pub fn host_port(addr: SocketAddr) -> String {
    match addr {
        SocketAddr::V4(a) => format!("{}:{}", a.ip(), a.port()),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    }
}

/// A host for a URI or Via: IPv6 in brackets.
pub fn host_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// A name-addr or addr-spec value with its header parameters (From, To, Contact, Route,
/// Record-Route, Refer-To). Tests: `name_addr_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name as written (quotes removed).
    pub display: Option<String>,
    /// The URI text as written between `<>` (or the bare addr-spec).
    pub uri_text: String,
    pub params: Params,
}

impl NameAddr {
    pub fn parse(v: &str) -> Result<NameAddr, UriError> {
        let v = v.trim();
        let bad = |why: &str| UriError::Malformed(why.to_string());
        let (display, rest) = if let Some(q) = v.strip_prefix('"') {
            let mut escape = false;
            let mut end = None;
            for (i, c) in q.char_indices() {
                if escape {
                    escape = false;
                } else if c == '\\' {
                    escape = true;
                } else if c == '"' {
                    end = Some(i);
                    break;
                }
            }
            let end = end.ok_or_else(|| bad("unterminated display name"))?;
            (
                Some(q[..end].replace("\\\"", "\"")),
                q[end + 1..].trim_start(),
            )
        } else if let Some(lt) = v.find('<') {
            let d = v[..lt].trim();
            ((!d.is_empty()).then(|| d.to_string()), &v[lt..])
        } else {
            (None, v)
        };
        if let Some(inner) = rest.strip_prefix('<') {
            let end = inner.find('>').ok_or_else(|| bad("unclosed '<'"))?;
            Ok(NameAddr {
                display,
                uri_text: inner[..end].trim().to_string(),
                params: Params::parse(&inner[end + 1..]),
            })
        } else {
            // addr-spec: parameters after the URI belong to the header (section 20.10)
            let (uri, params) = match rest.split_once(';') {
                Some((u, p)) => (u.trim(), Params::parse(p)),
                None => (rest.trim(), Params::default()),
            };
            if uri.is_empty() {
                return Err(bad("empty"));
            }
            Ok(NameAddr {
                display,
                uri_text: uri.to_string(),
                params,
            })
        }
    }

    pub fn uri(&self) -> Result<Uri, UriError> {
        Uri::parse(&self.uri_text)
    }

    pub fn tag(&self) -> Option<&str> {
        self.params.value("tag")
    }
}

impl fmt::Display for NameAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "\"{}\" ", d.replace('"', "\\\""))?;
        }
        write!(f, "<{}>{}", self.uri_text, self.params)
    }
}

/// One Via element (RFC 3261 section 20.42, RFC 3581). Tests: `via_*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via {
    /// `UDP`, `TCP`, `TLS`, ... upper-cased.
    pub transport: String,
    /// sent-by host, IPv6 without brackets.
    pub host: String,
    pub port: Option<u16>,
    pub params: Params,
}

/// The magic cookie of RFC 3261 branches (section 8.1.1.7).
pub const BRANCH_COOKIE: &str = "z9hG4bK";

impl Via {
    pub fn parse(v: &str) -> Result<Via, UriError> {
        let bad = |why: &str| UriError::Malformed(format!("Via: {why}"));
        let v = v.trim();
        // SIP / 2.0 / UDP (LWS allowed around the slashes)
        let mut rest = v;
        let mut fields = Vec::new();
        for i in 0..3 {
            let r = rest.trim_start();
            let end = r
                .find(|c: char| c == '/' || c.is_whitespace())
                .unwrap_or(r.len());
            fields.push(&r[..end]);
            rest = r[end..].trim_start();
            if i < 2 {
                rest = rest.strip_prefix('/').ok_or_else(|| bad("sent-protocol"))?;
            }
        }
        let rest = rest.trim_start();
        let end = rest.find(';').unwrap_or(rest.len());
        let (host, port) = split_host_port(&rest[..end]).map_err(|w| bad(&w))?;
        Ok(Via {
            transport: fields[2].to_ascii_uppercase(),
            host,
            port,
            params: Params::parse(&rest[end..]),
        })
    }

    /// The topmost Via of a message: the first element of the first Via header.
    pub fn top<'a>(mut values: impl Iterator<Item = &'a str>) -> Result<Via, UriError> {
        let first = values
            .next()
            .ok_or_else(|| UriError::Malformed("no Via".into()))?;
        let elem = split_list(first)
            .into_iter()
            .next()
            .ok_or_else(|| UriError::Malformed("empty Via".into()))?;
        Via::parse(elem)
    }

    pub fn branch(&self) -> Option<&str> {
        self.params.value("branch")
    }

    /// Whether the branch carries the RFC 3261 magic cookie.
    pub fn rfc3261_branch(&self) -> bool {
        self.branch().is_some_and(|b| b.starts_with(BRANCH_COOKIE))
    }

    /// sent-by as written, `host[:port]`.
    pub fn sent_by(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => format!("{h}:{p}"),
            None => h,
        }
    }

    /// RFC 3261 section 18.2.1 and RFC 3581 section 4: the server records the packet's
    /// source in `received` when it differs from sent-by and, when the client asked with
    /// an empty `rport`, the source port in it. Tests: `via_received_and_rport`.
    pub fn stamp_received(&mut self, source: SocketAddr) {
        let host_ip: Option<IpAddr> = self.host.parse().ok();
        if host_ip != Some(source.ip()) {
            self.params.set("received", Some(source.ip().to_string()));
        }
        if self.params.get("rport") == Some(None) {
            self.params.set("rport", Some(source.port().to_string()));
        }
    }

    /// Where a response to a request with this (stamped) Via goes over UDP (RFC 3261
    /// section 18.2.2, RFC 3581 section 4): received (or sent-by) host, rport (or the
    /// sent-by port, or 5060). None when the host is a name we would have to resolve.
    pub fn response_address(&self) -> Option<SocketAddr> {
        let ip: IpAddr = match self.params.value("received") {
            Some(r) => r
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .ok()?,
            None => self.host.parse().ok()?,
        };
        let port = self
            .params
            .value("rport")
            .and_then(|p| p.parse().ok())
            .or(self.port)
            .unwrap_or(5060);
        Some(SocketAddr::new(ip, port))
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SIP/2.0/{} {}{}",
            self.transport,
            self.sent_by(),
            self.params
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_schemes() {
        assert_eq!(Uri::parse("sip:a@b").unwrap().scheme, Scheme::Sip);
        assert_eq!(Uri::parse("SIPS:a@b").unwrap().scheme, Scheme::Sips);
        assert_eq!(Uri::parse("tel:+15550100").unwrap().scheme, Scheme::Tel);
        assert_eq!(
            Uri::parse("http://example.com/"),
            Err(UriError::UnsupportedScheme("http".into()))
        );
        assert_eq!(
            Uri::parse("NEWSCHEME:foo@bar"),
            Err(UriError::UnsupportedScheme("newscheme".into()))
        );
        assert!(matches!(Uri::parse("1x:foo"), Err(UriError::Malformed(_))));
        assert!(matches!(Uri::parse("nothing"), Err(UriError::Malformed(_))));
    }

    #[test]
    fn uri_parts_and_display() {
        let u = Uri::parse("sip:%2B15550100;npdi@[2001:db8::1]:5070;transport=TCP;lr?X=1").unwrap();
        assert_eq!(u.user.as_deref(), Some("%2B15550100;npdi"));
        assert_eq!(u.user_decoded().as_deref(), Some("+15550100"));
        assert_eq!(u.host, "2001:db8::1");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.transport().as_deref(), Some("tcp"));
        assert!(u.params.has("lr"));
        assert_eq!(u.headers.as_deref(), Some("X=1"));
        assert_eq!(
            u.to_string(),
            "sip:%2B15550100;npdi@[2001:db8::1]:5070;transport=TCP;lr?X=1"
        );
        let u = Uri::parse("sip:alice:secret@example.com").unwrap();
        assert_eq!(u.user.as_deref(), Some("alice"));
        assert_eq!(u.port, None);
        let t = Uri::parse("tel:+1-555-0100;phone-context=example.com").unwrap();
        assert_eq!(t.user.as_deref(), Some("+1-555-0100"));
        assert_eq!(t.params.value("phone-context"), Some("example.com"));
        assert!(Uri::parse("sip:a@host:99999").is_err());
        assert!(Uri::parse("sip:a@").is_err());
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("a%20b"), "a b");
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(r#""Bob \"B\"" <sip:bob@biloxi.com>;tag=a6c85cf"#).unwrap();
        assert_eq!(n.display.as_deref(), Some("Bob \"B\""));
        assert_eq!(n.uri_text, "sip:bob@biloxi.com");
        assert_eq!(n.tag(), Some("a6c85cf"));
        let n = NameAddr::parse("Anonymous <sip:c8oqz84zk7z@privacy.org>;tag=hyh8").unwrap();
        assert_eq!(n.display.as_deref(), Some("Anonymous"));
        assert_eq!(n.tag(), Some("hyh8"));
        // addr-spec: the parameter belongs to the header, not the URI
        let n = NameAddr::parse("sip:+15550100@carrier.example;tag=1928301774").unwrap();
        assert_eq!(n.uri_text, "sip:+15550100@carrier.example");
        assert_eq!(n.tag(), Some("1928301774"));
        assert_eq!(
            n.uri().unwrap().user_decoded().as_deref(),
            Some("+15550100")
        );
        assert_eq!(
            n.to_string(),
            "<sip:+15550100@carrier.example>;tag=1928301774"
        );
        assert!(NameAddr::parse("<sip:x@y").is_err());
        assert!(NameAddr::parse("\"open <sip:x@y>").is_err());
    }

    #[test]
    fn via_parse_and_display() {
        let v = Via::parse("SIP / 2.0 / udp 192.0.2.1:5062 ;branch=z9hG4bK776;rport").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, "192.0.2.1");
        assert_eq!(v.port, Some(5062));
        assert_eq!(v.branch(), Some("z9hG4bK776"));
        assert!(v.rfc3261_branch());
        assert_eq!(v.params.get("rport"), Some(None));
        assert_eq!(
            v.to_string(),
            "SIP/2.0/UDP 192.0.2.1:5062;branch=z9hG4bK776;rport"
        );
        let v = Via::top(
            ["SIP/2.0/TCP [2001:db8::9]:5060;branch=1, SIP/2.0/UDP x.example"].into_iter(),
        )
        .unwrap();
        assert_eq!(v.host, "2001:db8::9");
        assert!(!v.rfc3261_branch());
        assert_eq!(v.sent_by(), "[2001:db8::9]:5060");
    }

    #[test]
    fn via_received_and_rport() {
        let src: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        // RFC 3581: empty rport filled in; sent-by differs: received added
        let mut v = Via::parse("SIP/2.0/UDP 10.0.0.5:5060;branch=z9hG4bKa;rport").unwrap();
        v.stamp_received(src);
        assert_eq!(v.params.value("received"), Some("198.51.100.7"));
        assert_eq!(v.params.value("rport"), Some("40000"));
        assert_eq!(v.response_address(), Some(src));
        // no rport: reply to received host, sent-by port
        let mut v = Via::parse("SIP/2.0/UDP 10.0.0.5:5070;branch=z9hG4bKa").unwrap();
        v.stamp_received(src);
        assert_eq!(v.params.value("rport"), None);
        assert_eq!(
            v.response_address(),
            Some("198.51.100.7:5070".parse().unwrap())
        );
        // same host as the source: no received
        let mut v = Via::parse("SIP/2.0/UDP 198.51.100.7;branch=z9hG4bKa").unwrap();
        v.stamp_received(src);
        assert!(!v.params.has("received"));
        assert_eq!(
            v.response_address(),
            Some("198.51.100.7:5060".parse().unwrap())
        );
        // a host name: received tells where to answer
        let mut v = Via::parse("SIP/2.0/UDP pc33.example.com;branch=z9hG4bKa").unwrap();
        v.stamp_received(src);
        assert_eq!(
            v.response_address(),
            Some("198.51.100.7:5060".parse().unwrap())
        );
    }

    #[test]
    fn lists_and_tokens() {
        assert_eq!(
            tokens(["100rel, Timer", "replaces"].into_iter()),
            vec!["100rel", "timer", "replaces"]
        );
        assert_eq!(
            split_list(r#""a, b" <sip:x@y>, <sip:z@w;p=1,2>"#),
            vec![r#""a, b" <sip:x@y>"#, "<sip:z@w;p=1,2>"]
        );
        assert!(split_list(" , ").is_empty());
    }
}
