//! SDP offer/answer for the phone leg (RFC 4566 syntax, RFC 3264 negotiation), sans-IO:
//! parse an offer, choose the codec (the offerer's preference among the codecs the trunk
//! allows), and write the answer; or write an offer for an outbound call and read its
//! answer. Time, addresses and session ids come in as arguments.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// A phone codec Roomline speaks on RTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Pcmu,
    Pcma,
    G722,
}

impl Codec {
    pub const ALL: [Codec; 3] = [Codec::Pcmu, Codec::Pcma, Codec::G722];

    /// The static payload type (RFC 3551 table 4).
    pub fn static_pt(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    /// Audio sample rate (G.722 samples at 16 kHz, though its RTP clock is 8000: RFC 3551 4.5.2).
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::G722 => 16_000,
            _ => 8_000,
        }
    }

    fn from_rtpmap(name: &str, clock: u32) -> Option<Codec> {
        let c = match name.to_ascii_uppercase().as_str() {
            "PCMU" => Codec::Pcmu,
            "PCMA" => Codec::Pcma,
            "G722" => Codec::G722,
            _ => return None,
        };
        (clock == 8000).then_some(c)
    }

    fn from_static(pt: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.static_pt() == pt)
    }
}

/// Media direction (RFC 3264 section 6.1), from the describing side's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn attr(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn parse(a: &str) -> Option<Direction> {
        Some(match a {
            "sendrecv" => Direction::SendRecv,
            "sendonly" => Direction::SendOnly,
            "recvonly" => Direction::RecvOnly,
            "inactive" => Direction::Inactive,
            _ => return None,
        })
    }

    /// The direction an answer takes to this offered one.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// One m= section as parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaSection {
    pub media: String,
    pub port: u16,
    pub proto: String,
    pub formats: Vec<String>,
    /// (payload type, encoding name, clock rate)
    pub rtpmap: Vec<(u8, String, u32)>,
    pub fmtp: Vec<(u8, String)>,
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    pub ptime: Option<u32>,
    pub rtcp_mux: bool,
    /// a=rtcp:port [IN IP4 addr] (RFC 3605)
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// The values of the section's `a=crypto` lines (RFC 4568), at most `MAX_CRYPTO`.
    pub crypto: Crypto,
}

/// Most `a=crypto` lines kept per media section (the rest are ignored).
pub const MAX_CRYPTO: usize = 16;

/// The `a=crypto` values of one media section. They carry keys: `Debug` shows only how
/// many there are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Crypto(pub Vec<String>);

impl std::fmt::Debug for Crypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Crypto({} lines, ***)", self.0.len())
    }
}

impl Crypto {
    pub fn values(&self) -> Vec<&str> {
        self.0.iter().map(String::as_str).collect()
    }
}

/// A parsed session description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp {
    pub origin_session: String,
    pub origin_version: u64,
    pub connection: Option<IpAddr>,
    pub direction: Option<Direction>,
    pub media: Vec<MediaSection>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdpError(pub String);

impl std::fmt::Display for SdpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "bad SDP: {}", self.0)
    }
}

fn parse_conn(v: &str) -> Result<IpAddr, SdpError> {
    // c=IN IP4 192.0.2.1[/ttl]
    let mut it = v.split_ascii_whitespace();
    let (net, kind, addr) = (it.next(), it.next(), it.next());
    if net != Some("IN") || !matches!(kind, Some("IP4") | Some("IP6")) {
        return Err(SdpError(format!("unsupported connection line {v:?}")));
    }
    let addr = addr.unwrap_or("").split('/').next().unwrap_or("");
    addr.parse()
        .map_err(|_| SdpError(format!("connection address {addr:?} is not an IP address")))
}

/// Parses SDP text (CRLF or LF line ends).
pub fn parse(text: &str) -> Result<Sdp, SdpError> {
    let mut sdp = Sdp {
        origin_session: String::new(),
        origin_version: 0,
        connection: None,
        direction: None,
        media: Vec::new(),
    };
    let mut saw_v = false;
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .filter(|(k, _)| k.len() == 1)
            .ok_or_else(|| SdpError(format!("line {line:.40?} is not type=value")))?;
        let m = sdp.media.last_mut();
        match (key, m) {
            ("v", _) => {
                if value != "0" {
                    return Err(SdpError(format!("version {value} is not 0")));
                }
                saw_v = true;
            }
            ("o", _) => {
                let f: Vec<&str> = value.split_ascii_whitespace().collect();
                if f.len() != 6 {
                    return Err(SdpError("o= line needs 6 fields".into()));
                }
                sdp.origin_session = f[1].to_string();
                sdp.origin_version = f[2]
                    .parse()
                    .map_err(|_| SdpError("o= version is not a number".into()))?;
            }
            ("c", None) => sdp.connection = Some(parse_conn(value)?),
            ("c", Some(m)) => m.connection = Some(parse_conn(value)?),
            ("m", _) => {
                let f: Vec<&str> = value.split_ascii_whitespace().collect();
                if f.len() < 4 {
                    return Err(SdpError(format!(
                        "m= line {value:?} needs media, port, proto and formats"
                    )));
                }
                let port = f[1].split('/').next().unwrap_or("");
                let port: u16 = port
                    .parse()
                    .map_err(|_| SdpError(format!("m= port {port:?} is not a port")))?;
                sdp.media.push(MediaSection {
                    media: f[0].to_string(),
                    port,
                    proto: f[2].to_string(),
                    formats: f[3..].iter().map(|s| s.to_string()).collect(),
                    rtpmap: Vec::new(),
                    fmtp: Vec::new(),
                    connection: None,
                    direction: None,
                    ptime: None,
                    rtcp_mux: false,
                    rtcp: None,
                    crypto: Crypto::default(),
                });
            }
            ("a", m) => {
                let (name, val) = value.split_once(':').unwrap_or((value, ""));
                match (name, m) {
                    (d, None) if Direction::parse(d).is_some() => {
                        sdp.direction = Direction::parse(d)
                    }
                    (d, Some(m)) if Direction::parse(d).is_some() => {
                        m.direction = Direction::parse(d)
                    }
                    ("rtpmap", Some(m)) => {
                        let (pt, enc) = val
                            .split_once(' ')
                            .ok_or_else(|| SdpError("bad rtpmap".into()))?;
                        let pt: u8 = pt
                            .trim()
                            .parse()
                            .map_err(|_| SdpError("bad rtpmap payload type".into()))?;
                        let mut parts = enc.trim().split('/');
                        let name = parts.next().unwrap_or("").to_string();
                        let clock: u32 = parts
                            .next()
                            .unwrap_or("")
                            .parse()
                            .map_err(|_| SdpError("bad rtpmap clock rate".into()))?;
                        m.rtpmap.push((pt, name, clock));
                    }
                    ("fmtp", Some(m)) => {
                        if let Some((pt, params)) = val.split_once(' ')
                            && let Ok(pt) = pt.trim().parse()
                        {
                            m.fmtp.push((pt, params.trim().to_string()));
                        }
                    }
                    ("ptime", Some(m)) => {
                        m.ptime = val.trim().parse().ok().filter(|p| (10..=120).contains(p))
                    }
                    ("rtcp-mux", Some(m)) => m.rtcp_mux = true,
                    ("crypto", Some(m)) if m.crypto.0.len() < MAX_CRYPTO => {
                        m.crypto.0.push(val.trim().to_string())
                    }
                    ("rtcp", Some(m)) => {
                        let mut it = val.split_ascii_whitespace();
                        let port = it.next().and_then(|p| p.parse().ok());
                        let rest: Vec<&str> = it.collect();
                        let addr = if rest.len() == 3 {
                            parse_conn(&rest.join(" ")).ok()
                        } else {
                            None
                        };
                        m.rtcp = port.map(|p| (p, addr));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !saw_v {
        return Err(SdpError("no v= line".into()));
    }
    Ok(sdp)
}

/// What this side offers or accepts.
#[derive(Debug, Clone)]
pub struct Local {
    /// Codecs the trunk allows, in our preference order (used when we offer).
    pub codecs: Vec<Codec>,
    /// Address and RTP port written in the SDP.
    pub address: IpAddr,
    pub rtp_port: u16,
    pub session_id: u64,
    pub session_version: u64,
}

/// The outcome of negotiation: what to send and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    pub payload_type: u8,
    /// RFC 4733 telephone-event payload type, if both sides have it.
    pub dtmf_payload_type: Option<u8>,
    /// Where to send RTP (None: the remote is on hold with 0.0.0.0 or a zero port).
    pub remote_rtp: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub ptime_ms: u32,
    /// Our direction (what we may do).
    pub direction: Direction,
    pub rtcp_mux: bool,
    /// The section is SRTP (RTP/SAVP with `a=crypto`): keys come from SDES.
    pub srtp: bool,
}

/// Why an offer cannot be answered: 488 Not Acceptable Here with this Warning (RFC 3261
/// section 20.43 codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub warning_code: u16,
    pub text: String,
}

impl Rejection {
    pub const STATUS: u16 = 488;

    /// The Warning header value, with our agent name.
    pub fn warning(&self, agent: &str) -> String {
        format!(
            "{} {} \"{}\"",
            self.warning_code,
            agent,
            self.text.replace('"', "'")
        )
    }
}

fn is_rtp_avp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/AVP")
}

/// RTP/SAVP (RFC 3711 section 12): SRTP keyed by SDES.
pub fn is_rtp_savp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/SAVP")
}

/// What `answer_with` asks of the SRTP policy for a media section it could take: `Ok(None)`
/// to take it as plain RTP, `Ok(Some(value))` to take it as SRTP with this `a=crypto`
/// value in the answer, `Err` to refuse it (the first refusal is the 488's Warning when no
/// section is taken).
pub type Secure<'a> = dyn FnMut(&MediaSection) -> Result<Option<String>, Rejection> + 'a;

/// Plain RTP only: an RTP/SAVP section is refused.
pub fn plain_only(m: &MediaSection) -> Result<Option<String>, Rejection> {
    if is_rtp_savp(&m.proto) {
        return Err(Rejection {
            warning_code: 305,
            text: "Incompatible media format: SRTP (RTP/SAVP) is not enabled on this trunk".into(),
        });
    }
    Ok(None)
}

/// The codec and payload type a media section's formats name, in its order.
fn codecs_in(m: &MediaSection) -> Vec<(u8, Option<Codec>, bool)> {
    m.formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .map(|pt| match m.rtpmap.iter().find(|(p, _, _)| *p == pt) {
            Some((_, name, clock)) => (
                pt,
                Codec::from_rtpmap(name, *clock),
                name.eq_ignore_ascii_case("telephone-event") && *clock == 8000,
            ),
            None if pt < 96 => (pt, Codec::from_static(pt), false),
            None => (pt, None, false),
        })
        .collect()
}

/// Answers `offer` with plain RTP only (`answer_with` and `plain_only`).
pub fn answer(offer: &Sdp, local: &Local) -> Result<(Negotiated, String), Rejection> {
    answer_with(offer, local, &mut plain_only)
}

/// Answers `offer`: the first audio section over RTP/AVP or RTP/SAVP with a codec we allow
/// and that `secure` takes is accepted; every other section is refused with port 0, in the
/// offer's order (RFC 3264 section 6).
pub fn answer_with(
    offer: &Sdp,
    local: &Local,
    secure: &mut Secure<'_>,
) -> Result<(Negotiated, String), Rejection> {
    let mut chosen: Option<(usize, Negotiated, Option<String>)> = None;
    let mut saw_audio = false;
    let mut refused: Option<Rejection> = None;
    for (i, m) in offer.media.iter().enumerate() {
        if chosen.is_some() || m.media != "audio" || m.port == 0 {
            continue;
        }
        saw_audio = true;
        if !is_rtp_avp(&m.proto) && !is_rtp_savp(&m.proto) {
            continue;
        }
        let offered = codecs_in(m);
        let Some((pt, codec)) = offered
            .iter()
            .find_map(|(pt, c, _)| c.filter(|c| local.codecs.contains(c)).map(|c| (*pt, c)))
        else {
            continue;
        };
        let crypto = match secure(m) {
            Ok(c) => c,
            Err(r) => {
                refused.get_or_insert(r);
                continue;
            }
        };
        let dtmf = offered.iter().find(|(_, _, te)| *te).map(|(pt, _, _)| *pt);
        let addr = m.connection.or(offer.connection);
        let on_hold_addr = addr.is_none_or(|a| a.is_unspecified());
        let remote_rtp = (!on_hold_addr).then(|| SocketAddr::new(addr.expect("checked"), m.port));
        let remote_rtcp = if m.rtcp_mux {
            remote_rtp
        } else {
            match (m.rtcp, addr) {
                (Some((p, a)), Some(base)) => Some(SocketAddr::new(a.unwrap_or(base), p)),
                _ => remote_rtp.map(|r| SocketAddr::new(r.ip(), r.port().wrapping_add(1))),
            }
        };
        let offered_dir = m
            .direction
            .or(offer.direction)
            .unwrap_or(Direction::SendRecv);
        let mut direction = offered_dir.answer();
        if on_hold_addr {
            // RFC 3264 section 8.4: c=0.0.0.0 is the old way to put a call on hold.
            direction = match direction {
                Direction::SendRecv | Direction::SendOnly => Direction::RecvOnly,
                d => d,
            };
        }
        chosen = Some((
            i,
            Negotiated {
                codec,
                payload_type: pt,
                dtmf_payload_type: dtmf,
                remote_rtp: remote_rtp.filter(|_| direction.sends()),
                remote_rtcp,
                ptime_ms: m.ptime.unwrap_or(20),
                direction,
                rtcp_mux: m.rtcp_mux,
                srtp: crypto.is_some(),
            },
            crypto,
        ));
    }
    let Some((index, neg, crypto)) = chosen else {
        if let Some(r) = refused {
            return Err(r);
        }
        return Err(if saw_audio {
            Rejection {
                warning_code: 305,
                text: "Incompatible media format: no offered codec is allowed on this trunk".into(),
            }
        } else {
            Rejection {
                warning_code: 304,
                text: "Media type not available: no audio stream offered".into(),
            }
        });
    };
    let mut sdp = session_header(local);
    for (i, m) in offer.media.iter().enumerate() {
        if i == index {
            write_audio(
                &mut sdp,
                local,
                neg.payload_type,
                neg.codec,
                neg.dtmf_payload_type,
                neg.ptime_ms,
                neg.direction,
                neg.rtcp_mux,
                crypto.as_deref(),
            );
        } else {
            let _ = write!(
                sdp,
                "m={} 0 {} {}\r\n",
                m.media,
                m.proto,
                m.formats.first().map_or("0", |f| f.as_str())
            );
        }
    }
    Ok((neg, sdp))
}

fn session_header(local: &Local) -> String {
    let ip = match local.address {
        IpAddr::V4(a) => format!("IP4 {a}"),
        IpAddr::V6(a) => format!("IP6 {a}"),
    };
    format!(
        "v=0\r\no=roomline {} {} IN {ip}\r\ns=roomline\r\nc=IN {ip}\r\nt=0 0\r\n",
        local.session_id, local.session_version
    )
}

#[allow(clippy::too_many_arguments)]
fn write_audio(
    sdp: &mut String,
    local: &Local,
    pt: u8,
    codec: Codec,
    dtmf: Option<u8>,
    ptime: u32,
    dir: Direction,
    mux: bool,
    crypto: Option<&str>,
) {
    let proto = if crypto.is_some() {
        "RTP/SAVP"
    } else {
        "RTP/AVP"
    };
    let _ = write!(sdp, "m=audio {} {proto} {pt}", local.rtp_port);
    if let Some(d) = dtmf {
        let _ = write!(sdp, " {d}");
    }
    let _ = write!(sdp, "\r\na=rtpmap:{pt} {}/8000\r\n", codec.name());
    if let Some(d) = dtmf {
        let _ = write!(
            sdp,
            "a=rtpmap:{d} telephone-event/8000\r\na=fmtp:{d} 0-16\r\n"
        );
    }
    let _ = write!(sdp, "a=ptime:{ptime}\r\n");
    if mux {
        sdp.push_str("a=rtcp-mux\r\n");
    }
    if let Some(c) = crypto {
        let _ = write!(sdp, "a=crypto:{c}\r\n");
    }
    let _ = write!(sdp, "a={}\r\n", dir.attr());
}

/// The dynamic payload type Roomline offers telephone-event on.
pub const OFFER_DTMF_PT: u8 = 101;

/// An offer for an outbound call: every allowed codec in preference order, plus
/// telephone-event, over plain RTP.
pub fn offer(local: &Local) -> String {
    offer_with(local, &[])
}

/// `offer`, over RTP/SAVP with these `a=crypto` values when there are any (SDES).
pub fn offer_with(local: &Local, crypto: &[String]) -> String {
    let mut sdp = session_header(local);
    let proto = if crypto.is_empty() {
        "RTP/AVP"
    } else {
        "RTP/SAVP"
    };
    let pts: Vec<String> = local
        .codecs
        .iter()
        .map(|c| c.static_pt().to_string())
        .collect();
    let _ = write!(
        sdp,
        "m=audio {} {proto} {} {OFFER_DTMF_PT}\r\n",
        local.rtp_port,
        pts.join(" ")
    );
    for c in crypto {
        let _ = write!(sdp, "a=crypto:{c}\r\n");
    }
    for c in &local.codecs {
        let _ = write!(sdp, "a=rtpmap:{} {}/8000\r\n", c.static_pt(), c.name());
    }
    let _ = write!(
        sdp,
        "a=rtpmap:{OFFER_DTMF_PT} telephone-event/8000\r\na=fmtp:{OFFER_DTMF_PT} 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
    );
    sdp
}

/// The audio section an answer accepted (RTP/AVP or RTP/SAVP, port not 0).
pub fn answered_section(answer_sdp: &Sdp) -> Option<&MediaSection> {
    answer_sdp.media.iter().find(|m| {
        m.media == "audio" && m.port != 0 && (is_rtp_avp(&m.proto) || is_rtp_savp(&m.proto))
    })
}

/// Reads the answer to our `offer`: the answerer must pick one of the codecs we offered.
/// `srtp` says whether the accepted section has SRTP (its keys are the caller's business).
pub fn read_answer(answer_sdp: &Sdp, local: &Local) -> Result<Negotiated, Rejection> {
    let m = answered_section(answer_sdp).ok_or_else(|| Rejection {
        warning_code: 304,
        text: "the answer accepted no audio stream".into(),
    })?;
    let offered = codecs_in(m);
    let (pt, codec) = offered
        .iter()
        .find_map(|(pt, c, _)| c.filter(|c| local.codecs.contains(c)).map(|c| (*pt, c)))
        .ok_or_else(|| Rejection {
            warning_code: 305,
            text: "the answer chose a codec we did not offer".into(),
        })?;
    let addr = m
        .connection
        .or(answer_sdp.connection)
        .filter(|a| !a.is_unspecified());
    let direction = m
        .direction
        .or(answer_sdp.direction)
        .unwrap_or(Direction::SendRecv)
        .answer();
    let remote_rtp = addr.map(|a| SocketAddr::new(a, m.port));
    Ok(Negotiated {
        codec,
        payload_type: pt,
        dtmf_payload_type: offered.iter().find(|(_, _, te)| *te).map(|(p, _, _)| *p),
        remote_rtp: remote_rtp.filter(|_| direction.sends()),
        remote_rtcp: if m.rtcp_mux {
            remote_rtp
        } else {
            remote_rtp.map(|r| SocketAddr::new(r.ip(), r.port().wrapping_add(1)))
        },
        ptime_ms: m.ptime.unwrap_or(20),
        direction,
        rtcp_mux: m.rtcp_mux,
        srtp: is_rtp_savp(&m.proto) || !m.crypto.0.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(codecs: &[Codec]) -> Local {
        Local {
            codecs: codecs.to_vec(),
            address: "192.0.2.10".parse().unwrap(),
            rtp_port: 10000,
            session_id: 42,
            session_version: 1,
        }
    }

    const SIPP_OFFER: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

    #[test]
    fn offerer_preference_among_allowed_codecs() {
        let offer = parse(SIPP_OFFER).unwrap();
        let (n, sdp) = answer(&offer, &local(&Codec::ALL)).unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.dtmf_payload_type),
            (Codec::Pcma, 8, Some(101))
        );
        assert_eq!(n.remote_rtp, Some("127.0.0.1:6000".parse().unwrap()));
        assert_eq!(n.remote_rtcp, Some("127.0.0.1:6001".parse().unwrap()));
        assert!(sdp.contains("m=audio 10000 RTP/AVP 8 101\r\n"), "{sdp}");
        assert!(
            sdp.contains("a=rtpmap:101 telephone-event/8000\r\n") && sdp.contains("a=sendrecv\r\n")
        );
        // The trunk allows PCMU only: PCMU is chosen though offered second.
        let (n, _) = answer(&offer, &local(&[Codec::Pcmu])).unwrap();
        assert_eq!((n.codec, n.payload_type), (Codec::Pcmu, 0));
    }

    #[test]
    fn no_common_codec_is_488_with_warning_305() {
        let offer = parse(&SIPP_OFFER.replace("RTP/AVP 8 0 101", "RTP/AVP 8 101")).unwrap();
        let r = answer(&offer, &local(&[Codec::Pcmu, Codec::G722])).unwrap_err();
        assert_eq!(r.warning_code, 305);
        assert!(
            r.warning("roomline")
                .starts_with("305 roomline \"Incompatible media format")
        );
        let video_only = parse("v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 5000 RTP/AVP 31\r\n").unwrap();
        assert_eq!(
            answer(&video_only, &local(&Codec::ALL))
                .unwrap_err()
                .warning_code,
            304
        );
        let srtp = parse(&SIPP_OFFER.replace("RTP/AVP", "RTP/SAVP")).unwrap();
        assert_eq!(
            answer(&srtp, &local(&Codec::ALL)).unwrap_err().warning_code,
            305
        );
    }

    #[test]
    fn other_sections_are_refused_in_order() {
        let text = "v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 5002 RTP/AVP 31\r\nm=audio 5000 RTP/AVP 9 0\r\na=rtpmap:9 G722/8000\r\nm=audio 5004 RTP/AVP 0\r\n";
        let (n, sdp) = answer(&parse(text).unwrap(), &local(&Codec::ALL)).unwrap();
        assert_eq!(n.codec, Codec::G722);
        assert_eq!(n.codec.sample_rate(), 16_000);
        let m_lines: Vec<&str> = sdp.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            m_lines,
            vec![
                "m=video 0 RTP/AVP 31",
                "m=audio 10000 RTP/AVP 9",
                "m=audio 0 RTP/AVP 0"
            ]
        );
    }

    #[test]
    fn hold_and_direction() {
        // RFC 3264 section 8.4: sendonly offer -> recvonly answer; we do not send.
        let offer = parse(&format!("{SIPP_OFFER}a=sendonly\r\n")).unwrap();
        let (n, sdp) = answer(&offer, &local(&Codec::ALL)).unwrap();
        assert_eq!(n.direction, Direction::RecvOnly);
        assert!(n.remote_rtp.is_none() && sdp.contains("a=recvonly\r\n"));
        // Old-style hold with c=0.0.0.0.
        let offer = parse(&SIPP_OFFER.replace("c=IN IP4 127.0.0.1", "c=IN IP4 0.0.0.0")).unwrap();
        let (n, _) = answer(&offer, &local(&Codec::ALL)).unwrap();
        assert_eq!((n.direction, n.remote_rtp), (Direction::RecvOnly, None));
        let offer = parse(&format!("{SIPP_OFFER}a=inactive\r\n")).unwrap();
        assert_eq!(
            answer(&offer, &local(&Codec::ALL)).unwrap().0.direction,
            Direction::Inactive
        );
    }

    #[test]
    fn dynamic_payload_types_ptime_rtcp_mux_and_ipv6() {
        let text = "v=0\r\no=a 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 112 96\r\na=rtpmap:112 pcmu/8000\r\na=rtpmap:96 telephone-event/8000\r\na=ptime:30\r\na=rtcp-mux\r\n";
        let (n, sdp) = answer(&parse(text).unwrap(), &local(&Codec::ALL)).unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.dtmf_payload_type, n.ptime_ms),
            (Codec::Pcmu, 112, Some(96), 30)
        );
        assert!(n.rtcp_mux && n.remote_rtcp == n.remote_rtp);
        assert_eq!(n.remote_rtp, Some("[2001:db8::1]:7000".parse().unwrap()));
        assert!(
            sdp.contains("a=rtpmap:112 PCMU/8000")
                && sdp.contains("a=ptime:30")
                && sdp.contains("a=rtcp-mux")
        );
    }

    #[test]
    fn our_offer_and_its_answer() {
        let l = local(&[Codec::G722, Codec::Pcmu]);
        let o = offer(&l);
        let parsed = parse(&o).unwrap();
        assert_eq!(parsed.media[0].formats, vec!["9", "0", "101"]);
        // The far end answers as our own answer() would, choosing PCMU.
        let far = Local {
            codecs: vec![Codec::Pcmu],
            address: "198.51.100.5".parse().unwrap(),
            rtp_port: 20000,
            session_id: 7,
            session_version: 1,
        };
        let (_, ans) = answer(&parsed, &far).unwrap();
        let n = read_answer(&parse(&ans).unwrap(), &l).unwrap();
        assert_eq!((n.codec, n.dtmf_payload_type), (Codec::Pcmu, Some(101)));
        assert_eq!(n.remote_rtp, Some("198.51.100.5:20000".parse().unwrap()));
    }

    #[test]
    fn malformed_sdp_is_an_error_not_a_panic() {
        for bad in [
            "",
            "x",
            "v=1\r\n",
            "v=0\r\nm=audio\r\n",
            "v=0\r\nm=audio 99999 RTP/AVP 0\r\n",
            "v=0\r\nc=IN IP4 nope\r\n",
            "v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtpmap:x PCMU/8000\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }
}
