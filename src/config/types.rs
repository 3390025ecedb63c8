//! Validated domain types for configuration values, with their parsers. Each parser
//! returns a message saying what was expected; the caller adds the location.

use ipnet::IpNet;
use regex::Regex;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

/// A secret (password, API secret): never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Parses `500ms`, `15s`, `2m`, `1h` (a whole number and a unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let expected = "expected a duration such as 500ms, 15s, 2m or 1h";
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: {expected}"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("invalid duration {s:?}: {expected}")),
    };
    Ok(d)
}

/// An inclusive UDP port range for RTP. RTP takes even ports and RTCP the next odd one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    /// How many RTP/RTCP port pairs the range holds (each call needs one).
    pub fn pairs(&self) -> u32 {
        let first_even = self.start + (self.start % 2);
        if first_even >= self.end {
            return 0;
        }
        (u32::from(self.end) - u32::from(first_even)).div_ceil(2)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Parses `10000-20000`.
pub fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let expected = "expected a port range such as 10000-20000";
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("invalid port range {s:?}: {expected}"))?;
    let start: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("invalid port range {s:?}: {expected}"))?;
    let end: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("invalid port range {s:?}: {expected}"))?;
    if start < 1024 {
        return Err(format!(
            "invalid port range {s:?}: ports below 1024 are reserved; expected a range within 1024-65535"
        ));
    }
    if start > end {
        return Err(format!(
            "invalid port range {s:?}: the first port must not be above the last"
        ));
    }
    let r = PortRange { start, end };
    if r.pairs() == 0 {
        return Err(format!(
            "invalid port range {s:?}: it holds no even RTP port with an RTCP port after it"
        ));
    }
    Ok(r)
}

/// Parses an IP address or a CIDR block. A bare address becomes a /32 or /128.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "invalid CIDR {s:?}: host bits are set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "invalid address {s:?}: expected an IP address or CIDR such as 192.0.2.10 or 192.0.2.0/24"
    ))
}

/// SIP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }
}

pub fn parse_transport(s: &str) -> Result<Transport, String> {
    match s.to_ascii_lowercase().as_str() {
        "udp" => Ok(Transport::Udp),
        "tcp" => Ok(Transport::Tcp),
        "tls" => Ok(Transport::Tls),
        _ => Err(format!("invalid transport {s:?}: expected udp, tcp or tls")),
    }
}

/// SRTP policy of a trunk's calls (`media_encryption`, LiveKit's names and meaning),
/// ordered from the weakest to the strictest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum MediaEncryption {
    /// Plain RTP only: an offer with only SRTP is refused (488).
    #[default]
    Disable,
    /// Either: offer SRTP with a plain fallback, answer what the peer offered.
    Allow,
    /// SRTP only: a plain offer is refused (488), plain RTP is never sent.
    Require,
}

impl MediaEncryption {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaEncryption::Disable => "disable",
            MediaEncryption::Allow => "allow",
            MediaEncryption::Require => "require",
        }
    }
}

pub fn parse_media_encryption(s: &str) -> Result<MediaEncryption, String> {
    match s.to_ascii_lowercase().as_str() {
        "disable" | "disabled" => Ok(MediaEncryption::Disable),
        "allow" => Ok(MediaEncryption::Allow),
        "require" | "required" => Ok(MediaEncryption::Require),
        _ => Err(format!(
            "invalid media_encryption {s:?}: expected disable, allow or require"
        )),
    }
}

/// A phone-leg codec a trunk may offer and accept (`codecs:` in a trunk file). The
/// SDP side of it (payload types, rtpmap names, clock rates) is `sip::sdp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Opus (RFC 7587), `opus/48000/2`, dynamic payload type.
    Opus,
    /// G.722 (16 kHz audio on an 8 kHz RTP clock), payload type 9.
    G722,
    /// G.711 mu-law, payload type 0.
    Pcmu,
    /// G.711 A-law, payload type 8.
    Pcma,
}

impl Codec {
    pub const ALL: [Codec; 4] = [Codec::Opus, Codec::G722, Codec::Pcmu, Codec::Pcma];

    /// The name in trunk files (`codecs: [opus, g722, pcmu, pcma]`).
    pub fn config_name(self) -> &'static str {
        match self {
            Codec::Opus => "opus",
            Codec::G722 => "g722",
            Codec::Pcmu => "pcmu",
            Codec::Pcma => "pcma",
        }
    }
}

/// A codec name of a trunk's `codecs` list, case-insensitive.
pub fn parse_codec(s: &str) -> Result<Codec, String> {
    Codec::ALL
        .into_iter()
        .find(|c| c.config_name().eq_ignore_ascii_case(s.trim()))
        .ok_or_else(|| format!("unknown codec {s:?}: expected opus, g722, pcmu or pcma"))
}

/// Where an outbound trunk sends its requests: `host[:port]`, optionally written as a SIP
/// URI `sip:host[:port][;transport=tcp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipTarget {
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<Transport>,
}

impl fmt::Display for SipTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

pub fn parse_sip_target(s: &str) -> Result<SipTarget, String> {
    let expected =
        "expected host[:port] or a SIP URI such as sip:sip.example.com:5060;transport=udp";
    let bad = |why: &str| format!("invalid SIP address {s:?}: {why}; {expected}");
    let mut rest = s.trim();
    let mut transport = None;
    if let Some(r) = rest.strip_prefix("sips:") {
        rest = r;
        transport = Some(Transport::Tls);
    } else if let Some(r) = rest.strip_prefix("sip:") {
        rest = r;
    } else if rest.contains("://") {
        return Err(bad("a URL scheme is not a SIP URI"));
    }
    if rest.contains('@') {
        return Err(bad("a trunk address names a host, not a user"));
    }
    let mut parts = rest.split(';');
    let hostport = parts.next().unwrap_or("");
    for param in parts {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        if k.eq_ignore_ascii_case("transport") {
            transport = Some(parse_transport(v).map_err(|e| bad(&e))?);
        } else {
            return Err(bad(&format!("unsupported URI parameter {k:?}")));
        }
    }
    let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address inside [...]"));
        }
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad("unexpected text after ']'")),
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(bad("the port must be a number from 1 to 65535")),
            Ok(p) => Some(p),
        },
    };
    let host_ok = !host.is_empty()
        && (host.parse::<IpAddr>().is_ok()
            || host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
            }));
    if !host_ok {
        return Err(bad("the host is not a valid hostname or IP address"));
    }
    Ok(SipTarget {
        host,
        port,
        transport,
    })
}

/// Strips a leading `+` (and a `tel:` scheme) so `+15550100`, `15550100` and
/// `tel:+15550100` compare equal. Visual separators are not accepted here.
pub fn normalize_number(s: &str) -> &str {
    let s = s.strip_prefix("tel:").unwrap_or(s);
    s.strip_prefix('+').unwrap_or(s)
}

/// A phone number in config: digits with an optional leading `+`.
pub fn parse_number(s: &str) -> Result<String, String> {
    let digits = normalize_number(s.trim());
    if digits.is_empty() || digits.len() > 20 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!(
            "invalid phone number {s:?}: expected digits with an optional leading +, such as +15550100"
        ));
    }
    Ok(s.trim().to_string())
}

/// How a dialplan rule or trunk matches a number.
#[derive(Debug, Clone)]
pub enum NumberPattern {
    /// Any number (`*`).
    Any,
    /// The same digits (a leading `+` is ignored on both sides).
    Exact(String),
    /// Numbers starting with these digits (`+1555*`).
    Prefix(String),
    /// A regular expression written `/.../`, matched against the number as received.
    Regex(Regex),
}

impl NumberPattern {
    pub fn matches(&self, number: &str) -> bool {
        match self {
            NumberPattern::Any => true,
            NumberPattern::Exact(d) => normalize_number(number) == d,
            NumberPattern::Prefix(d) => normalize_number(number).starts_with(d.as_str()),
            NumberPattern::Regex(re) => re.is_match(number),
        }
    }
}

impl NumberPattern {
    /// Whether some number could match both patterns. A regex is assumed to overlap
    /// anything, since that cannot be decided in general.
    pub fn may_overlap(&self, other: &NumberPattern) -> bool {
        use NumberPattern::*;
        match (self, other) {
            (Exact(a), Exact(b)) => a == b,
            (Exact(e), Prefix(p)) | (Prefix(p), Exact(e)) => e.starts_with(p.as_str()),
            (Prefix(a), Prefix(b)) => a.starts_with(b.as_str()) || b.starts_with(a.as_str()),
            _ => true,
        }
    }
}

pub fn parse_number_pattern(s: &str) -> Result<NumberPattern, String> {
    let expected = "expected a number such as +15550100, a prefix such as +1555*, or a regex such as /^\\+1555/";
    let t = s.trim();
    if t == "*" {
        return Ok(NumberPattern::Any);
    }
    if t.len() >= 2 && t.starts_with('/') && t.ends_with('/') {
        let body = &t[1..t.len() - 1];
        return Regex::new(body).map(NumberPattern::Regex).map_err(|e| {
            let first = e.to_string();
            let last = first.lines().last().unwrap_or("").trim().to_string();
            format!("invalid regex {t:?}: {last}")
        });
    }
    let (body, prefix) = match t.strip_suffix('*') {
        Some(b) => (b, true),
        None => (t, false),
    };
    let digits = normalize_number(body);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("invalid number pattern {s:?}: {expected}"));
    }
    Ok(if prefix {
        NumberPattern::Prefix(digits.to_string())
    } else {
        NumberPattern::Exact(digits.to_string())
    })
}

/// A variable a template may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateVar {
    Caller,
    Called,
    Trunk,
    CallId,
    Random,
}

impl TemplateVar {
    pub const ALL: [(&'static str, TemplateVar); 5] = [
        ("caller", TemplateVar::Caller),
        ("called", TemplateVar::Called),
        ("trunk", TemplateVar::Trunk),
        ("call_id", TemplateVar::CallId),
        ("random", TemplateVar::Random),
    ];
}

/// Values that fill a template for one call.
#[derive(Debug, Clone, Default)]
pub struct TemplateValues<'a> {
    pub caller: &'a str,
    pub called: &'a str,
    pub trunk: &'a str,
    pub call_id: &'a str,
    pub random: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Var(TemplateVar),
}

/// A text with `{caller}`, `{called}`, `{trunk}`, `{call_id}` and `{random}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

impl Template {
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn render(&self, v: &TemplateValues<'_>) -> String {
        let mut out = String::new();
        for seg in &self.segments {
            match seg {
                Segment::Text(t) => out.push_str(t),
                Segment::Var(var) => out.push_str(match var {
                    TemplateVar::Caller => v.caller,
                    TemplateVar::Called => v.called,
                    TemplateVar::Trunk => v.trunk,
                    TemplateVar::CallId => v.call_id,
                    TemplateVar::Random => v.random,
                }),
            }
        }
        out
    }

    pub fn uses(&self, var: TemplateVar) -> bool {
        self.segments.contains(&Segment::Var(var))
    }
}

pub fn parse_template(s: &str) -> Result<Template, String> {
    let names = "{caller}, {called}, {trunk}, {call_id} or {random}";
    let mut segments = Vec::new();
    let mut text = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(['{', '}']) {
        text.push_str(&rest[..i]);
        if rest[i..].starts_with('}') {
            return Err(format!("invalid template {s:?}: unmatched '}}'"));
        }
        let after = &rest[i + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("invalid template {s:?}: unclosed '{{'"))?;
        let name = &after[..close];
        let var = TemplateVar::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                format!("invalid template {s:?}: unknown placeholder {{{name}}}; expected {names}")
            })?;
        if !text.is_empty() {
            segments.push(Segment::Text(std::mem::take(&mut text)));
        }
        segments.push(Segment::Var(var));
        rest = &after[close + 1..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        segments.push(Segment::Text(text));
    }
    if segments.is_empty() {
        return Err("invalid template: it is empty".to_string());
    }
    Ok(Template {
        source: s.to_string(),
        segments,
    })
}

/// Which headers of a message become `sip.h.<name>` attributes (LiveKit's
/// `include_headers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IncludeHeaders {
    /// Only `headers_to_attributes` and the carrier defaults.
    #[default]
    None,
    /// Every `X-*` header.
    XHeaders,
    /// Every header (credentials excepted).
    All,
}

pub fn parse_include_headers(s: &str) -> Result<IncludeHeaders, String> {
    match s.trim() {
        "none" => Ok(IncludeHeaders::None),
        "x_headers" => Ok(IncludeHeaders::XHeaders),
        "all" => Ok(IncludeHeaders::All),
        _ => Err(format!(
            "invalid include_headers {s:?}: expected none, x_headers or all"
        )),
    }
}

/// A SIP header name (a token, at most 255 characters, as LiveKit checks it).
pub fn check_header_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid header name {s:?}: expected a SIP token such as X-Account"
        ))
    }
}

/// An attribute name a header may be mapped onto: not in the `sip.` namespace, which
/// Roomline owns (`sip.callID`, `sip.phoneNumber`, `sip.h.*`, the carrier defaults such
/// as `sip.twilio.callSid`, ...), so no carrier header can overwrite them.
pub fn check_mapped_attribute(s: &str) -> Result<(), String> {
    if s.trim().is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
        return Err(format!(
            "invalid attribute name {s:?}: expected 1-128 printable characters such as customer.tier"
        ));
    }
    if s.starts_with("sip.") {
        return Err(format!(
            "attribute {s:?} is reserved: names starting with \"sip.\" (sip.callID, sip.phoneNumber, sip.h.*, sip.twilio.callSid, ...) are Roomline's; map the header onto another name"
        ));
    }
    Ok(())
}

/// A name usable as a trunk or rule id, a metric label and a file stem.
pub fn check_name(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {s:?}: expected 1-64 characters of letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Checks a log filter such as `info` or `info,roomline::sip=debug` (`logging.level`,
/// `LOG_LEVEL`).
pub fn parse_log_filter(s: &str) -> Result<EnvFilter, String> {
    if s.trim().is_empty() {
        return Err("invalid log level \"\": expected error, warn, info, debug or trace".into());
    }
    let expected = "expected error, warn, info, debug, trace or off, optionally with per-module directives such as info,roomline::sip=debug";
    // A bare word that is not a level would silently mean "that target at trace level".
    const LEVELS: [&str; 6] = ["error", "warn", "info", "debug", "trace", "off"];
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !d.contains('=') && !LEVELS.contains(&d.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "invalid log level {s:?}: {d:?} is not a level; {expected}"
            ));
        }
    }
    EnvFilter::builder()
        .parse(s)
        .map_err(|e| format!("invalid log level {s:?}: {e}; {expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_names() {
        for c in Codec::ALL {
            assert_eq!(parse_codec(c.config_name()), Ok(c));
        }
        assert_eq!(parse_codec("OPUS"), Ok(Codec::Opus));
        assert_eq!(parse_codec("PCMU"), Ok(Codec::Pcmu));
        assert!(
            parse_codec("g729")
                .unwrap_err()
                .contains("expected opus, g722")
        );
        assert!(parse_codec("").is_err());
    }

    #[test]
    fn media_encryption_names() {
        for m in [
            MediaEncryption::Disable,
            MediaEncryption::Allow,
            MediaEncryption::Require,
        ] {
            assert_eq!(parse_media_encryption(m.as_str()), Ok(m));
        }
        assert_eq!(
            parse_media_encryption("REQUIRE"),
            Ok(MediaEncryption::Require)
        );
        assert!(
            parse_media_encryption("srtp")
                .unwrap_err()
                .contains("disable, allow or require")
        );
        assert_eq!(MediaEncryption::default(), MediaEncryption::Disable);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        for bad in ["", "15", "s", "1.5s", "-1s", "15 sec"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_ranges() {
        let r = parse_port_range("10000-20000").unwrap();
        assert_eq!(r.pairs(), 5000);
        assert_eq!(parse_port_range("10001-10003").unwrap().pairs(), 1);
        assert!(parse_port_range("10001-10002").is_err());
        assert!(parse_port_range("20000-10000").is_err());
        assert!(parse_port_range("80-90").is_err());
        assert!(parse_port_range("10000").is_err());
        assert!(parse_port_range("10000-70000").is_err());
    }

    #[test]
    fn nets() {
        assert_eq!(parse_net("192.0.2.7").unwrap().to_string(), "192.0.2.7/32");
        assert_eq!(
            parse_net("192.0.2.0/24").unwrap().to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(
            parse_net("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        let e = parse_net("192.0.2.1/24").unwrap_err();
        assert!(e.contains("did you mean 192.0.2.0/24"), "{e}");
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("carrier.example").is_err());
    }

    #[test]
    fn sip_targets() {
        let t = parse_sip_target("sip.carrier.example:5080").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.transport),
            ("sip.carrier.example", Some(5080), None)
        );
        let t = parse_sip_target("sip:192.0.2.1;transport=tcp").unwrap();
        assert_eq!((t.port, t.transport), (None, Some(Transport::Tcp)));
        let t = parse_sip_target("[2001:db8::1]:5060").unwrap();
        assert_eq!(t.host, "2001:db8::1");
        assert_eq!(t.to_string(), "[2001:db8::1]:5060");
        assert_eq!(
            parse_sip_target("sips:x.example").unwrap().transport,
            Some(Transport::Tls)
        );
        for bad in [
            "",
            "http://x",
            "user@host",
            "host:0",
            "host:99999",
            "bad_host!",
            "sip:h;foo=1",
            "[::1",
        ] {
            assert!(parse_sip_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn number_patterns() {
        let p = parse_number_pattern("+1555*").unwrap();
        assert!(p.matches("+15550100") && p.matches("15550100") && p.matches("tel:+15551"));
        assert!(!p.matches("+1666"));
        let e = parse_number_pattern("+15550100").unwrap();
        assert!(e.matches("15550100") && !e.matches("155501001"));
        let r = parse_number_pattern("/^\\+1900/").unwrap();
        assert!(r.matches("+19005551") && !r.matches("19005551"));
        assert!(parse_number_pattern("*").unwrap().matches("anonymous"));
        assert!(parse_number_pattern("/(/").is_err());
        assert!(parse_number_pattern("abc").is_err());
        assert!(parse_number_pattern("+").is_err());
        let p = |s| parse_number_pattern(s).unwrap();
        assert!(p("+1555*").may_overlap(&p("+15550100")));
        assert!(p("+1555*").may_overlap(&p("+15*")));
        assert!(!p("+1555*").may_overlap(&p("+1666*")));
        assert!(!p("+15550100").may_overlap(&p("+15550101")));
        assert!(p("/^1/").may_overlap(&p("+2")));
        assert!(p("*").may_overlap(&p("+2")));
    }

    #[test]
    fn templates() {
        let t = parse_template("support-{caller}-{random}").unwrap();
        let v = TemplateValues {
            caller: "+1555",
            random: "x7",
            ..Default::default()
        };
        assert_eq!(t.render(&v), "support-+1555-x7");
        assert!(t.uses(TemplateVar::Caller) && !t.uses(TemplateVar::Trunk));
        assert_eq!(parse_template("lobby").unwrap().render(&v), "lobby");
        assert!(
            parse_template("x-{nope}")
                .unwrap_err()
                .contains("unknown placeholder {nope}")
        );
        assert!(
            parse_template("x-{caller")
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(parse_template("x}").unwrap_err().contains("unmatched"));
        assert!(parse_template("").is_err());
    }

    #[test]
    fn names_and_secrets() {
        assert!(check_name("carrier-1.backup_a").is_ok());
        assert!(check_name("has space").is_err());
        assert!(check_name("").is_err());
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn log_filters() {
        assert!(parse_log_filter("info").is_ok());
        assert!(parse_log_filter("warn,roomline::sip=debug").is_ok());
        assert!(parse_log_filter("loud").is_err());
        assert!(parse_log_filter("").is_err());
    }
}
