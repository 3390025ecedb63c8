//! SIP message syntax and validity, sans-IO: the checks every received message passes
//! before anything acts on it (RFC 3261 sections 7, 8.2.2, 18.3, 20 and 25), with the
//! verdict the daemon answers with. Used by the endpoint on receipt and by
//! `roomline sip parse`. Tests: `tests/sip_torture.rs` runs the RFC 4475 messages.

use std::fmt;

use super::uri::split_list_raw as split_list;

/// RFC 3261 section 7.3.3: compact header names.
const COMPACT: &[(&str, &str)] = &[
    ("a", "Accept-Contact"),
    ("b", "Referred-By"),
    ("c", "Content-Type"),
    ("d", "Request-Disposition"),
    ("e", "Content-Encoding"),
    ("f", "From"),
    ("i", "Call-ID"),
    ("j", "Reject-Contact"),
    ("k", "Supported"),
    ("l", "Content-Length"),
    ("m", "Contact"),
    ("n", "Identity-Info"),
    ("o", "Event"),
    ("r", "Refer-To"),
    ("s", "Subject"),
    ("t", "To"),
    ("u", "Allow-Events"),
    ("v", "Via"),
    ("x", "Session-Expires"),
    ("y", "Identity"),
];

/// Headers that may appear once only.
const SINGLE: &[&str] = &[
    "call-id",
    "cseq",
    "from",
    "to",
    "max-forwards",
    "content-length",
    "content-type",
];

/// Where a request goes wrong, and what the daemon answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// Not even a start line we can answer: dropped.
    Unanswerable(String),
    /// 400 Bad Request, with the reason in the reason phrase.
    BadRequest(String),
    /// 505 Version Not Supported.
    Version(String),
}

impl Invalid {
    /// The status the daemon answers a request with; None means it is dropped.
    pub fn status(&self) -> Option<u16> {
        match self {
            Invalid::Unanswerable(_) => None,
            Invalid::BadRequest(_) => Some(400),
            Invalid::Version(_) => Some(505),
        }
    }

    pub fn reason(&self) -> &str {
        match self {
            Invalid::Unanswerable(r) | Invalid::BadRequest(r) | Invalid::Version(r) => r,
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.status() {
            Some(s) => write!(f, "{s}: {}", self.reason()),
            None => write!(f, "dropped: {}", self.reason()),
        }
    }
}

/// A parse failure: what was wrong, and whether the message was a request (answered)
/// or a response (never answered: no response is ever sent to a response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub is_response: bool,
    /// The request line names ACK: never answered either (RFC 3261 section 17.1.1.3,
    /// an ACK has no response), even when it is malformed.
    pub is_ack: bool,
    pub invalid: Invalid,
}

impl ParseError {
    /// The status to answer with, if any.
    pub fn status(&self) -> Option<u16> {
        if self.is_response || self.is_ack {
            None
        } else {
            self.invalid.status()
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_response {
            write!(f, "invalid response, dropped: {}", self.invalid.reason())
        } else {
            write!(f, "{}", self.invalid)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { status: u16, reason: String },
}

/// One header with its name canonicalised (compact forms expanded) and its value
/// unfolded (line continuations replaced by a space).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// A syntactically valid message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
    /// Bytes after the message that Content-Length excluded (ignored on UDP).
    pub trailing: usize,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// CSeq number and method (validated on parse).
    pub fn cseq(&self) -> Option<(u32, &str)> {
        let v = self.header("CSeq")?;
        let mut it = v.split_ascii_whitespace();
        Some((it.next()?.parse().ok()?, it.next()?))
    }
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.chars().all(is_token_char)
}

fn canonical_name(name: &str) -> String {
    if name.len() == 1
        && let Some((_, full)) = COMPACT.iter().find(|(c, _)| c.eq_ignore_ascii_case(name))
    {
        return full.to_string();
    }
    name.to_string()
}

/// Parses one message from a datagram (or a framed stream message).
pub fn parse(data: &[u8]) -> Result<Message, ParseError> {
    // Leading CRLFs are keep-alives (RFC 5626) and skipped (RFC 3261 section 7.5).
    let start = data
        .iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(data.len());
    let data = &data[start..];
    let is_response = data.starts_with(b"SIP/");
    let is_ack = data.starts_with(b"ACK ");
    let fail = |invalid| ParseError {
        is_response,
        is_ack,
        invalid,
    };
    let (head_end, body_start) = find_head_end(data).ok_or_else(|| {
        fail(Invalid::Unanswerable(
            "no blank line after the headers".into(),
        ))
    })?;
    let head = std::str::from_utf8(&data[..head_end])
        .map_err(|_| fail(Invalid::Unanswerable("headers are not UTF-8".into())))?;
    let mut lines = head.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let first = lines.next().unwrap_or("");
    let start_line = if is_response {
        parse_status_line(first)
    } else {
        parse_request_line(first)
    }
    .map_err(fail)?;
    let headers = parse_headers(lines).map_err(fail)?;
    let msg_body = &data[body_start..];
    let msg = Message {
        start: start_line,
        headers,
        body: Vec::new(),
        trailing: 0,
    };
    let (body_len, trailing) = body_length(&msg, msg_body.len()).map_err(fail)?;
    let mut msg = msg;
    msg.body = msg_body[..body_len].to_vec();
    msg.trailing = trailing;
    check_headers(&msg).map_err(fail)?;
    Ok(msg)
}

fn find_head_end(data: &[u8]) -> Option<(usize, usize)> {
    let crlf = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    let lf = data
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn parse_version(v: &str) -> Result<(), Invalid> {
    let upper = v.to_ascii_uppercase();
    let Some(num) = upper.strip_prefix("SIP/") else {
        return Err(Invalid::BadRequest(format!("bad SIP version {v:?}")));
    };
    let ok_shape = num.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.bytes().all(|c| c.is_ascii_digit())
            && b.bytes().all(|c| c.is_ascii_digit())
    });
    if !ok_shape {
        return Err(Invalid::BadRequest(format!("bad SIP version {v:?}")));
    }
    if num != "2.0" {
        return Err(Invalid::Version(format!(
            "SIP version {v} is not supported"
        )));
    }
    Ok(())
}

/// RFC 3261 section 25.1: Request-Line = Method SP Request-URI SP SIP-Version CRLF.
fn parse_request_line(line: &str) -> Result<StartLine, Invalid> {
    let parts: Vec<&str> = line.split(' ').collect();
    if parts.len() < 2 || !is_token(parts[0]) {
        return Err(Invalid::Unanswerable(format!(
            "not a SIP request line: {:.80}",
            line
        )));
    }
    if parts.len() != 3 {
        return Err(Invalid::BadRequest(
            "request line must be Method SP Request-URI SP SIP-Version, single spaces and nothing after".into(),
        ));
    }
    let (method, uri, version) = (parts[0], parts[1], parts[2]);
    parse_version(version)?;
    check_request_uri(uri)?;
    Ok(StartLine::Request {
        method: method.to_string(),
        uri: uri.to_string(),
    })
}

fn check_request_uri(uri: &str) -> Result<(), Invalid> {
    if uri.starts_with('<') || uri.ends_with('>') {
        return Err(Invalid::BadRequest(
            "Request-URI must not be enclosed in <>".into(),
        ));
    }
    if uri.contains(|c: char| c.is_ascii_control() || c == '<' || c == '>' || c == '"') {
        return Err(Invalid::BadRequest(
            "Request-URI contains a character it may not".into(),
        ));
    }
    let scheme_ok = uri.split_once(':').is_some_and(|(s, rest)| {
        !rest.is_empty()
            && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if !scheme_ok {
        return Err(Invalid::BadRequest(
            "Request-URI is not an absolute URI".into(),
        ));
    }
    let lower = uri.to_ascii_lowercase();
    // The user part may hold '?' (user-unreserved); headers follow the host.
    let host_part = uri.split_once('@').map_or(uri, |(_, h)| h);
    if (lower.starts_with("sip:") || lower.starts_with("sips:")) && host_part.contains('?') {
        // RFC 3261 section 19.1.1: headers are not allowed in a Request-URI.
        return Err(Invalid::BadRequest(
            "Request-URI must not carry URI headers ('?')".into(),
        ));
    }
    Ok(())
}

/// RFC 3261 section 25.1: Status-Line = SIP-Version SP Status-Code SP Reason-Phrase CRLF.
fn parse_status_line(line: &str) -> Result<StartLine, Invalid> {
    let mut it = line.splitn(3, ' ');
    let version = it.next().unwrap_or("");
    let code = it.next().unwrap_or("");
    let reason = it.next().unwrap_or("");
    parse_version(version)?;
    let status: u16 = code
        .parse()
        .ok()
        .filter(|s| (100..=699).contains(s) && code.len() == 3)
        .ok_or_else(|| Invalid::BadRequest(format!("bad status code {code:?}")))?;
    Ok(StartLine::Response {
        status,
        reason: reason.to_string(),
    })
}

fn parse_headers<'a>(lines: impl Iterator<Item = &'a str>) -> Result<Vec<Header>, Invalid> {
    let mut headers: Vec<Header> = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // RFC 3261 section 7.3.1: a continuation line folds into the previous header.
            let last = headers
                .last_mut()
                .ok_or_else(|| Invalid::BadRequest("continuation line before any header".into()))?;
            let t = line.trim();
            if !t.is_empty() {
                if !last.value.is_empty() {
                    last.value.push(' ');
                }
                last.value.push_str(t);
            }
            continue;
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| Invalid::BadRequest(format!("header line without ':': {:.60}", line)))?;
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return Err(Invalid::BadRequest(format!("bad header name {name:?}")));
        }
        headers.push(Header {
            name: canonical_name(name),
            value: value.trim().to_string(),
        });
    }
    Ok(headers)
}

/// RFC 3261 section 18.3: Content-Length bounds the body; on a datagram a larger value
/// than the bytes present is an error, and bytes beyond it are discarded.
fn body_length(msg: &Message, available: usize) -> Result<(usize, usize), Invalid> {
    let values: Vec<&str> = msg.headers_named("Content-Length").collect();
    let Some(v) = values.first() else {
        return Ok((available, 0));
    };
    if !v.bytes().all(|b| b.is_ascii_digit()) || v.is_empty() {
        return Err(Invalid::BadRequest(format!("bad Content-Length {v:?}")));
    }
    let n: usize = v
        .parse()
        .map_err(|_| Invalid::BadRequest(format!("Content-Length {v} is too large")))?;
    if n > available {
        return Err(Invalid::BadRequest(format!(
            "Content-Length {n} is larger than the {available} body bytes received"
        )));
    }
    Ok((n, available - n))
}

fn check_headers(msg: &Message) -> Result<(), Invalid> {
    for single in SINGLE {
        if msg.headers_named(single).count() > 1 {
            return Err(Invalid::BadRequest(format!(
                "more than one {} header",
                canonical_display(single)
            )));
        }
    }
    let required: &[&str] = &["Via", "From", "To", "Call-ID", "CSeq"];
    for name in required {
        if msg.header(name).is_none() {
            return Err(Invalid::BadRequest(format!("missing {name} header")));
        }
    }
    if msg
        .header("Call-ID")
        .is_some_and(|c| c.is_empty() || c.contains(char::is_whitespace))
    {
        return Err(Invalid::BadRequest("bad Call-ID".into()));
    }
    check_cseq(msg)?;
    if let Some(mf) = msg.header("Max-Forwards") {
        let ok = !mf.is_empty()
            && mf.bytes().all(|b| b.is_ascii_digit())
            && mf.parse::<u32>().is_ok_and(|n| n <= 255);
        if !ok {
            return Err(Invalid::BadRequest(format!("bad Max-Forwards {mf:?}")));
        }
    }
    if let Some(e) = msg.header("Expires")
        && (!e.bytes().all(|b| b.is_ascii_digit()) || e.is_empty() || e.parse::<u32>().is_err())
    {
        return Err(Invalid::BadRequest(format!("bad Expires {:.40}", e)));
    }
    for v in msg.headers_named("Via") {
        check_via(v)?;
    }
    for name in ["From", "To"] {
        let v = msg.header(name).unwrap_or("");
        check_name_addr(v)
            .map_err(|why| Invalid::BadRequest(format!("bad {name} header: {why}")))?;
    }
    for v in msg.headers_named("Contact") {
        if v == "*" {
            continue;
        }
        for part in split_list(v) {
            check_name_addr(part)
                .map_err(|why| Invalid::BadRequest(format!("bad Contact header: {why}")))?;
        }
    }
    if let Some(ct) = msg.header("Content-Type") {
        check_media_type(ct)?;
    }
    Ok(())
}

fn canonical_display(lower: &str) -> &'static str {
    match lower {
        "call-id" => "Call-ID",
        "cseq" => "CSeq",
        "from" => "From",
        "to" => "To",
        "max-forwards" => "Max-Forwards",
        "content-length" => "Content-Length",
        _ => "Content-Type",
    }
}

/// RFC 3261 section 8.1.1.5 / 20.16: CSeq = 1*DIGIT LWS Method, the number below 2**31,
/// the method that of the request.
fn check_cseq(msg: &Message) -> Result<(), Invalid> {
    let v = msg.header("CSeq").unwrap_or("");
    let mut it = v.split_ascii_whitespace();
    let (num, method) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
    if it.next().is_some()
        || !is_token(method)
        || num.is_empty()
        || !num.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(Invalid::BadRequest(format!("bad CSeq {v:?}")));
    }
    if num.parse::<u32>().map_or(true, |n| n >= 1 << 31) {
        return Err(Invalid::BadRequest(format!(
            "CSeq number {:.20} is out of range",
            num
        )));
    }
    if let Some(m) = msg.method()
        && m != method
    {
        return Err(Invalid::BadRequest(format!(
            "CSeq method {method} does not match the request method {m}"
        )));
    }
    Ok(())
}

/// Generic parameters: `*( SEMI name [ EQUAL value ] )`, LWS allowed around `;` and `=`.
fn check_params(s: &str) -> Result<(), String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(());
    }
    let Some(rest) = s.strip_prefix(';') else {
        return Err(format!("unexpected text {:.30}", s));
    };
    let mut quoted = false;
    let mut parts = Vec::new();
    let mut from = 0;
    for (i, c) in rest.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => {
                parts.push(&rest[from..i]);
                from = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&rest[from..]);
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim())),
            None => (p.trim(), None),
        };
        if !is_token(name) {
            return Err("empty or malformed parameter".into());
        }
        if let Some(v) = value {
            let ok = if let Some(q) = v.strip_prefix('"') {
                q.ends_with('"') && !q.is_empty()
            } else {
                !v.is_empty() && v.chars().all(|c| is_token_char(c) || "[]:".contains(c))
            };
            if !ok {
                return Err(format!("bad value of parameter {name}"));
            }
        }
    }
    Ok(())
}

/// RFC 3261 section 20.42 (Via): sent-protocol LWS sent-by *( SEMI via-params ), as a list.
fn check_via(v: &str) -> Result<(), Invalid> {
    let bad = |why: &str| Invalid::BadRequest(format!("bad Via header: {why}"));
    for hop in split_list(v) {
        if hop.is_empty() {
            return Err(bad("empty element"));
        }
        // sent-protocol: name SLASH version SLASH transport, LWS allowed around '/'.
        let mut rest = hop;
        let mut fields = Vec::new();
        for i in 0..3 {
            let r = rest.trim_start();
            let end = r
                .find(|c: char| c == '/' || c.is_whitespace())
                .unwrap_or(r.len());
            let tok = &r[..end];
            if !is_token(tok) {
                return Err(bad("malformed sent-protocol"));
            }
            fields.push(tok);
            rest = r[end..].trim_start();
            if i < 2 {
                rest = rest
                    .strip_prefix('/')
                    .ok_or_else(|| bad("malformed sent-protocol"))?;
            }
        }
        if !fields[0].eq_ignore_ascii_case("SIP") || fields[1] != "2.0" {
            return Err(bad("sent-protocol is not SIP/2.0"));
        }
        let rest = rest.trim_start();
        let end = rest.find(';').unwrap_or(rest.len());
        check_host_port(rest[..end].trim()).map_err(|w| bad(&w))?;
        check_params(&rest[end..]).map_err(|w| bad(&w))?;
    }
    Ok(())
}

fn check_host_port(s: &str) -> Result<(), String> {
    let (host, port) = if let Some(r) = s.strip_prefix('[') {
        let (h, after) = r.split_once(']').ok_or("unclosed '['")?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("bad IPv6 address".into());
        }
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
            .all(|c| c.is_ascii_alphanumeric() || "-.:".contains(c))
    {
        return Err(format!("bad host {:.40}", host));
    }
    if let Some(p) = port
        && (p.is_empty()
            || p.len() > 5
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u32>().map_or(true, |n| n > 65535))
    {
        return Err(format!("bad port {:.10}", p));
    }
    Ok(())
}

/// RFC 3261 section 20.10 / 25.1: (name-addr / addr-spec) *( SEMI param ). In addr-spec
/// form the URI may not contain ',', '?' or ';' (those need <>), so ';' starts params.
fn check_name_addr(v: &str) -> Result<(), String> {
    let v = v.trim();
    if v.is_empty() {
        return Err("empty".into());
    }
    let after_display = if let Some(q) = v.strip_prefix('"') {
        // quoted display name
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
        let end = end.ok_or("unterminated display name")?;
        let rest = q[end + 1..].trim_start();
        if !rest.starts_with('<') {
            return Err("display name without <URI>".into());
        }
        rest
    } else {
        v
    };
    if let Some(lt) = after_display.find('<') {
        let display = &after_display[..lt];
        if !display.trim().split_ascii_whitespace().all(is_token) {
            return Err("bad display name".into());
        }
        let inner_end = after_display.find('>').ok_or("unclosed '<'")?;
        if inner_end < lt {
            return Err("'>' before '<'".into());
        }
        let uri = &after_display[lt + 1..inner_end];
        if uri.starts_with(char::is_whitespace) || uri.ends_with(char::is_whitespace) {
            return Err("whitespace inside <>".into());
        }
        check_uri(uri)?;
        check_params(&after_display[inner_end + 1..])
    } else {
        let end = after_display.find(';').unwrap_or(after_display.len());
        let uri = after_display[..end].trim();
        if uri.contains('?') || uri.contains(',') {
            return Err("a URI with '?' or ',' must be enclosed in <>".into());
        }
        check_uri(uri)?;
        check_params(&after_display[end..])
    }
}

fn check_uri(uri: &str) -> Result<(), String> {
    let ok = uri.split_once(':').is_some_and(|(s, rest)| {
        !rest.is_empty()
            && s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    });
    if !ok || uri.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == '"') {
        return Err(format!("bad URI {:.60}", uri));
    }
    Ok(())
}

/// RFC 3261 section 20.15: media-type = m-type SLASH m-subtype *(SEMI m-parameter).
fn check_media_type(v: &str) -> Result<(), Invalid> {
    let end = v.find(';').unwrap_or(v.len());
    let ok = v[..end]
        .split_once('/')
        .is_some_and(|(t, s)| is_token(t.trim()) && is_token(s.trim()));
    if !ok {
        return Err(Invalid::BadRequest(format!("bad Content-Type {:.40}", v)));
    }
    check_params(&v[end..]).map_err(|w| Invalid::BadRequest(format!("bad Content-Type: {w}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTIONS: &str = "OPTIONS sip:u@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:u@example.com>\r\nCall-ID: abc@x\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn a_plain_request_parses() {
        let m = parse(OPTIONS.as_bytes()).unwrap();
        assert_eq!(m.method(), Some("OPTIONS"));
        assert_eq!(m.cseq(), Some((1, "OPTIONS")));
        assert_eq!(m.header("call-id"), Some("abc@x"));
        assert!(m.body.is_empty());
    }

    #[test]
    fn compact_names_and_folding() {
        let msg = OPTIONS
            .replace("Call-ID: abc@x", "i: abc@x")
            .replace("CSeq: 1 OPTIONS", "CSeq: 1\r\n  OPTIONS");
        let m = parse(msg.as_bytes()).unwrap();
        assert_eq!(m.header("Call-ID"), Some("abc@x"));
        assert_eq!(m.header("CSeq"), Some("1 OPTIONS"));
    }

    #[test]
    fn verdicts() {
        let bad = |from: &str, to: &str| parse(OPTIONS.replace(from, to).as_bytes()).unwrap_err();
        assert_eq!(bad("SIP/2.0\r\nVia", "SIP/3.0\r\nVia").status(), Some(505));
        assert_eq!(bad("CSeq: 1 OPTIONS", "CSeq: 1 INVITE").status(), Some(400));
        assert_eq!(
            bad("Content-Length: 0", "Content-Length: 10").status(),
            Some(400)
        );
        assert_eq!(bad("Call-ID: abc@x\r\n", "").status(), Some(400));
        assert_eq!(
            bad("Max-Forwards: 70", "Max-Forwards: 70\r\nCSeq: 2 OPTIONS").status(),
            Some(400)
        );
        assert_eq!(bad("192.0.2.1:5060", "192.0.2.1:99999").status(), Some(400));
        assert!(parse(b"garbage").is_err());
        assert_eq!(parse(b"\r\n\r\n").unwrap_err().status(), None);
        // A response is never answered.
        let resp = b"SIP/2.0 200 OK\r\nCSeq: 1 OPTIONS\r\n\r\n";
        let e = parse(resp).unwrap_err();
        assert!(e.is_response && e.status().is_none());
        // Nor is an ACK, however malformed (RFC 3261 section 17.1.1.3).
        let ack = OPTIONS
            .replace("OPTIONS sip", "ACK sip")
            .replace("1 OPTIONS", "1 INVITE");
        let e = parse(ack.as_bytes()).unwrap_err();
        assert!(e.is_ack && e.status().is_none(), "{e}");
    }

    #[test]
    fn content_length_bounds_the_body() {
        let msg = OPTIONS.replace("Content-Length: 0", "Content-Length: 3") + "abcdef";
        let m = parse(msg.as_bytes()).unwrap();
        assert_eq!(m.body, b"abc");
        assert_eq!(m.trailing, 3);
    }

    #[test]
    fn list_splitting_respects_quotes_and_brackets() {
        assert_eq!(
            split_list(r#""a, b" <sip:x@y>, <sip:z@w;p=1,2>"#),
            vec![r#""a, b" <sip:x@y>"#, "<sip:z@w;p=1,2>"]
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A tiny xorshift so the test needs no crate.
        let mut x: u64 = 0x9E3779B97F4A7C15;
        let base = OPTIONS.as_bytes();
        for _ in 0..20_000 {
            let mut m = base.to_vec();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % m.len();
                m[i] = (x >> 32) as u8;
            }
            let _ = parse(&m);
        }
    }
}
