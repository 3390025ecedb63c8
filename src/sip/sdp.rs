//! SDP offer/answer for the phone leg (RFC 4566 syntax, RFC 3264 negotiation), sans-IO:
//! parse an offer, choose the codec (the offerer's preference among the codecs the trunk
//! allows), and write the answer; or write an offer for an outbound call and read its
//! answer. Time, addresses and session ids come in as arguments.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// A phone codec Roomline speaks on RTP (the names a trunk's `codecs` list takes are
/// `config::Codec`'s; its SDP side is here).
pub use crate::config::Codec;

/// The dynamic payload type Roomline offers Opus on (WebRTC's habit; any is accepted).
pub const OFFER_OPUS_PT: u8 = 111;
/// The dynamic payload type Roomline offers telephone-event/8000 on.
pub const OFFER_DTMF_PT: u8 = 101;
/// The dynamic payload type Roomline offers telephone-event/48000 on, with Opus (RFC 4733
/// section 2.1: events run on the audio codec's clock).
pub const OFFER_DTMF_48K_PT: u8 = 110;
/// The audio rate the phone leg decodes Opus to and encodes it from (the room side's
/// wideband rate): what our `maxplaybackrate` and `sprop-maxcapturerate` say.
pub const OPUS_PHONE_RATE: u32 = 16_000;
/// The bitrate we ask of an Opus peer (`maxaveragebitrate`) and send at most: plenty for
/// wideband speech with in-band FEC.
pub const OPUS_BITRATE: u32 = 32_000;
/// The largest packet duration we take (`a=maxptime`): libopus decodes up to 120 ms.
pub const OPUS_MAXPTIME: u32 = 120;

impl Codec {
    /// The static payload type (RFC 3551 table 4); Opus has none.
    pub fn static_pt(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::G722 => Some(9),
            Codec::Opus => None,
        }
    }

    /// The payload type we offer the codec on.
    pub fn offer_pt(self) -> u8 {
        self.static_pt().unwrap_or(OFFER_OPUS_PT)
    }

    /// The rtpmap encoding name (also the metric label).
    pub fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The RTP clock rate: 8000 for G.711 and G.722 (RFC 3551 4.5.2), 48000 for Opus
    /// whatever it carries (RFC 7587 section 4.1).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus => 48_000,
            _ => 8_000,
        }
    }

    /// The audio rate of the phone leg: G.722 samples at 16 kHz, Opus is decoded to and
    /// encoded from 16 kHz (`OPUS_PHONE_RATE`), G.711 is 8 kHz.
    pub fn sample_rate(self) -> u32 {
        match self {
            Codec::G722 => 16_000,
            Codec::Opus => OPUS_PHONE_RATE,
            _ => 8_000,
        }
    }

    /// The rtpmap value (`opus/48000/2`: RFC 7587 section 7 always names 2 channels).
    fn rtpmap(self) -> String {
        match self {
            Codec::Opus => "opus/48000/2".into(),
            c => format!("{}/{}", c.name(), c.clock_rate()),
        }
    }

    fn from_rtpmap(name: &str, clock: u32) -> Option<Codec> {
        let c = match name.to_ascii_uppercase().as_str() {
            "PCMU" => Codec::Pcmu,
            "PCMA" => Codec::Pcma,
            "G722" => Codec::G722,
            "OPUS" => Codec::Opus,
            _ => return None,
        };
        (clock == c.clock_rate()).then_some(c)
    }

    fn from_static(pt: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.static_pt() == Some(pt))
    }
}

/// The Opus parameters (RFC 7587 section 6.1) one side's fmtp declares. Each is what
/// that side wants to receive or says it sends; a parameter that is missing, malformed
/// or out of range takes its RFC default (a broken fmtp never fails the offer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusParams {
    /// The highest audio rate the side plays (8000-48000; default 48000).
    pub max_playback_rate: u32,
    /// The highest rate it captures (8000-48000; default 48000).
    pub sprop_max_capture_rate: u32,
    /// The most it wants to receive, in bit/s (6000-510000; None: no limit).
    pub max_average_bitrate: Option<u32>,
    /// It prefers to receive stereo (we always send mono, which is always allowed).
    pub stereo: bool,
    /// It can decode in-band FEC: send it (default off).
    pub use_inband_fec: bool,
    /// It prefers DTX: send nothing for silence (default off).
    pub use_dtx: bool,
    /// It prefers constant bitrate.
    pub cbr: bool,
}

impl Default for OpusParams {
    fn default() -> Self {
        OpusParams {
            max_playback_rate: 48_000,
            sprop_max_capture_rate: 48_000,
            max_average_bitrate: None,
            stereo: false,
            use_inband_fec: false,
            use_dtx: false,
            cbr: false,
        }
    }
}

impl OpusParams {
    /// Reads an fmtp value (`key=value;key=value`), leniently: unknown keys, keys
    /// without a value, junk values and out-of-range numbers are ignored or clamped.
    pub fn parse(fmtp: &str) -> OpusParams {
        let mut p = OpusParams::default();
        for item in fmtp.split(';').take(64) {
            let Some((k, v)) = item.split_once('=') else {
                continue;
            };
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            let num = || v.parse::<u64>().ok();
            let flag = || match v {
                "1" => Some(true),
                "0" => Some(false),
                _ => None,
            };
            let rate = || num().map(|r| r.clamp(8_000, 48_000) as u32);
            match k.as_str() {
                "maxplaybackrate" => p.max_playback_rate = rate().unwrap_or(p.max_playback_rate),
                "sprop-maxcapturerate" => {
                    p.sprop_max_capture_rate = rate().unwrap_or(p.sprop_max_capture_rate)
                }
                "maxaveragebitrate" => {
                    if let Some(b) = num() {
                        p.max_average_bitrate = Some(b.clamp(6_000, 510_000) as u32);
                    }
                }
                "stereo" => p.stereo = flag().unwrap_or(p.stereo),
                "useinbandfec" => p.use_inband_fec = flag().unwrap_or(p.use_inband_fec),
                "usedtx" => p.use_dtx = flag().unwrap_or(p.use_dtx),
                "cbr" => p.cbr = flag().unwrap_or(p.cbr),
                _ => {}
            }
        }
        p
    }

    /// What we declare: we play and capture 16 kHz mono, want at most `OPUS_BITRATE`,
    /// decode in-band FEC, and take DTX or not as the sender likes (no `usedtx`).
    fn ours() -> String {
        format!(
            "maxplaybackrate={OPUS_PHONE_RATE};sprop-maxcapturerate={OPUS_PHONE_RATE};maxaveragebitrate={OPUS_BITRATE};stereo=0;sprop-stereo=0;useinbandfec=1;minptime=10"
        )
    }

    /// The bitrate to send to this side at: ours, or less if it asks.
    pub fn send_bitrate(&self) -> u32 {
        self.max_average_bitrate
            .map_or(OPUS_BITRATE, |b| b.min(OPUS_BITRATE))
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
    /// a=maxptime (RFC 4566 section 6)
    pub maxptime: Option<u32>,
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
                    maxptime: None,
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
                            && m.fmtp.len() < 32
                        {
                            m.fmtp.push((pt, params.trim().to_string()));
                        }
                    }
                    ("ptime", Some(m)) => {
                        m.ptime = val.trim().parse().ok().filter(|p| (10..=120).contains(p))
                    }
                    ("maxptime", Some(m)) => {
                        m.maxptime = val.trim().parse().ok().filter(|p| (10..=120).contains(p))
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
    /// The payload type we send the codec with (the one the peer's SDP names).
    pub payload_type: u8,
    /// The payload type the peer sends it with (the one our SDP names; the same when we
    /// answer, maybe another when we offered).
    pub recv_payload_type: u8,
    /// RFC 4733 telephone-event payload type (at the codec's clock rate), if both sides
    /// have it: we send with it.
    pub dtmf_payload_type: Option<u8>,
    /// The telephone-event payload type the peer sends with.
    pub recv_dtmf_payload_type: Option<u8>,
    /// The telephone-event clock (the codec's, unless the peer offered events only on
    /// another: then event durations count on that one).
    pub dtmf_clock_rate: u32,
    /// Where to send RTP (None: the remote is on hold with 0.0.0.0 or a zero port).
    pub remote_rtp: Option<SocketAddr>,
    pub remote_rtcp: Option<SocketAddr>,
    pub ptime_ms: u32,
    /// The peer's `a=maxptime`, if any.
    pub maxptime_ms: Option<u32>,
    /// Our direction (what we may do).
    pub direction: Direction,
    pub rtcp_mux: bool,
    /// With Opus: the peer's parameters (its fmtp, defaults where it says nothing).
    pub opus: Option<OpusParams>,
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

/// One format of a media section: its payload type, the codec it is (if ours), and its
/// telephone-event clock rate (if it is telephone-event).
struct Format {
    pt: u8,
    codec: Option<Codec>,
    event_clock: Option<u32>,
}

/// The formats a media section names, in its order.
fn formats_in(m: &MediaSection) -> Vec<Format> {
    m.formats
        .iter()
        .filter_map(|f| f.parse::<u8>().ok())
        .filter(|pt| *pt < 128)
        .map(|pt| match m.rtpmap.iter().find(|(p, _, _)| *p == pt) {
            Some((_, name, clock)) => Format {
                pt,
                codec: Codec::from_rtpmap(name, *clock),
                event_clock: name
                    .eq_ignore_ascii_case("telephone-event")
                    .then_some(*clock),
            },
            None if pt < 96 => Format {
                pt,
                codec: Codec::from_static(pt),
                event_clock: None,
            },
            None => Format {
                pt,
                codec: None,
                event_clock: None,
            },
        })
        .collect()
}

/// The telephone-event of a section and its clock: the one on `codec`'s clock (RFC 4733
/// section 2.1), else the first offered on another (common with Opus: baresip 1.0 and
/// many PBXs offer only `telephone-event/8000`; its durations then count at 8000).
fn events_for(formats: &[Format], codec: Codec) -> Option<(u8, u32)> {
    let events = || {
        formats
            .iter()
            .filter_map(|f| Some((f.pt, f.event_clock?)))
            .filter(|(_, clock)| (8_000..=48_000).contains(clock))
    };
    events()
        .find(|(_, clock)| *clock == codec.clock_rate())
        .or_else(|| events().next())
}

/// The peer's Opus parameters for payload type `pt` of `m`.
fn opus_params(m: &MediaSection, codec: Codec, pt: u8) -> Option<OpusParams> {
    (codec == Codec::Opus).then(|| {
        m.fmtp
            .iter()
            .find(|(p, _)| *p == pt)
            .map_or_else(OpusParams::default, |(_, f)| OpusParams::parse(f))
    })
}

/// The codecs of a trunk as a Warning's text shows them.
fn codec_names(codecs: &[Codec]) -> String {
    codecs
        .iter()
        .map(|c| c.config_name())
        .collect::<Vec<_>>()
        .join(", ")
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
        let offered = formats_in(m);
        let Some((pt, codec)) = offered.iter().find_map(|f| {
            f.codec
                .filter(|c| local.codecs.contains(c))
                .map(|c| (f.pt, c))
        }) else {
            continue;
        };
        let crypto = match secure(m) {
            Ok(c) => c,
            Err(r) => {
                refused.get_or_insert(r);
                continue;
            }
        };
        let events = events_for(&offered, codec);
        let dtmf = events.map(|(pt, _)| pt);
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
                recv_payload_type: pt,
                dtmf_payload_type: dtmf,
                recv_dtmf_payload_type: dtmf,
                dtmf_clock_rate: events.map_or(codec.clock_rate(), |(_, c)| c),
                remote_rtp: remote_rtp.filter(|_| direction.sends()),
                remote_rtcp,
                ptime_ms: m.ptime.unwrap_or(20),
                maxptime_ms: m.maxptime,
                direction,
                rtcp_mux: m.rtcp_mux,
                opus: opus_params(m, codec, pt),
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
                text: format!(
                    "Incompatible media format: no offered codec is allowed on this trunk (it takes {})",
                    codec_names(&local.codecs)
                ),
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
            let proto = if crypto.is_some() {
                "RTP/SAVP"
            } else {
                "RTP/AVP"
            };
            let _ = write!(
                sdp,
                "m=audio {} {proto} {}",
                local.rtp_port, neg.payload_type
            );
            if let Some(d) = neg.dtmf_payload_type {
                let _ = write!(sdp, " {d}");
            }
            sdp.push_str("\r\n");
            write_format(&mut sdp, neg.payload_type, neg.codec);
            if let Some(d) = neg.dtmf_payload_type {
                write_events(&mut sdp, d, neg.dtmf_clock_rate);
            }
            write_tail(
                &mut sdp,
                neg.ptime_ms,
                neg.codec,
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

/// `a=rtpmap` (and Opus's `a=fmtp`) of one codec.
fn write_format(sdp: &mut String, pt: u8, codec: Codec) {
    let _ = write!(sdp, "a=rtpmap:{pt} {}\r\n", codec.rtpmap());
    if codec == Codec::Opus {
        let _ = write!(sdp, "a=fmtp:{pt} {}\r\n", OpusParams::ours());
    }
}

fn write_events(sdp: &mut String, pt: u8, clock: u32) {
    let _ = write!(
        sdp,
        "a=rtpmap:{pt} telephone-event/{clock}\r\na=fmtp:{pt} 0-16\r\n"
    );
}

/// ptime, maxptime (with Opus), rtcp-mux, `a=crypto` (SDES), direction.
fn write_tail(
    sdp: &mut String,
    ptime: u32,
    codec: Codec,
    dir: Direction,
    mux: bool,
    crypto: Option<&str>,
) {
    let _ = write!(sdp, "a=ptime:{ptime}\r\n");
    if codec == Codec::Opus {
        let _ = write!(sdp, "a=maxptime:{OPUS_MAXPTIME}\r\n");
    }
    if mux {
        sdp.push_str("a=rtcp-mux\r\n");
    }
    if let Some(c) = crypto {
        let _ = write!(sdp, "a=crypto:{c}\r\n");
    }
    let _ = write!(sdp, "a={}\r\n", dir.attr());
}

/// An offer for an outbound call: every allowed codec in preference order, plus
/// telephone-event on each clock rate they use (8000, and 48000 with Opus), over plain RTP.
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
    let mut pts: Vec<String> = local
        .codecs
        .iter()
        .map(|c| c.offer_pt().to_string())
        .collect();
    let events = offered_events(&local.codecs);
    pts.extend(events.iter().map(|(pt, _)| pt.to_string()));
    let _ = write!(
        sdp,
        "m=audio {} {proto} {}\r\n",
        local.rtp_port,
        pts.join(" ")
    );
    for c in crypto {
        let _ = write!(sdp, "a=crypto:{c}\r\n");
    }
    for c in &local.codecs {
        write_format(&mut sdp, c.offer_pt(), *c);
    }
    for (pt, clock) in &events {
        write_events(&mut sdp, *pt, *clock);
    }
    let first = local.codecs.first().copied().unwrap_or(Codec::Pcmu);
    let with_opus = if local.codecs.contains(&Codec::Opus) {
        Codec::Opus
    } else {
        first
    };
    write_tail(&mut sdp, 20, with_opus, Direction::SendRecv, false, None);
    sdp
}

/// The telephone-event formats an offer of `codecs` carries: (payload type, clock).
fn offered_events(codecs: &[Codec]) -> Vec<(u8, u32)> {
    let mut out = Vec::new();
    if codecs.iter().any(|c| c.clock_rate() == 8_000) {
        out.push((OFFER_DTMF_PT, 8_000));
    }
    if codecs.contains(&Codec::Opus) {
        out.push((OFFER_DTMF_48K_PT, 48_000));
    }
    out
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
    let answered = formats_in(m);
    let (pt, codec) = answered
        .iter()
        .find_map(|f| {
            f.codec
                .filter(|c| local.codecs.contains(c))
                .map(|c| (f.pt, c))
        })
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
    let events = events_for(&answered, codec);
    let dtmf = events.map(|(pt, _)| pt);
    let dtmf_clock_rate = events.map_or(codec.clock_rate(), |(_, c)| c);
    Ok(Negotiated {
        codec,
        payload_type: pt,
        // the peer sends with the payload types of our offer (RFC 3264 section 6.1)
        recv_payload_type: codec.offer_pt(),
        dtmf_payload_type: dtmf,
        recv_dtmf_payload_type: dtmf.and_then(|_| {
            offered_events(&local.codecs)
                .into_iter()
                .find(|(_, clock)| *clock == dtmf_clock_rate)
                .map(|(pt, _)| pt)
        }),
        dtmf_clock_rate,
        remote_rtp: remote_rtp.filter(|_| direction.sends()),
        remote_rtcp: if m.rtcp_mux {
            remote_rtp
        } else {
            remote_rtp.map(|r| SocketAddr::new(r.ip(), r.port().wrapping_add(1)))
        },
        ptime_ms: m.ptime.unwrap_or(20),
        maxptime_ms: m.maxptime,
        direction,
        rtcp_mux: m.rtcp_mux,
        opus: opus_params(m, codec, pt),
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

    const BARESIP_OPUS: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 96 101\r\na=rtpmap:96 opus/48000/2\r\na=fmtp:96 stereo=1;sprop-stereo=1;maxaveragebitrate=20000;useinbandfec=1;usedtx=1\r\na=rtpmap:101 telephone-event/48000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=maxptime:40\r\na=sendrecv\r\n";

    #[test]
    fn opus_offer_is_answered_with_its_payload_type_and_our_fmtp() {
        let offer = parse(BARESIP_OPUS).unwrap();
        let (n, sdp) = answer(&offer, &local(&Codec::ALL)).unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.recv_payload_type),
            (Codec::Opus, 96, 96)
        );
        assert_eq!(n.dtmf_payload_type, Some(101), "telephone-event/48000");
        assert_eq!(n.maxptime_ms, Some(40));
        let p = n.opus.unwrap();
        assert!(p.stereo && p.use_inband_fec && p.use_dtx && !p.cbr);
        assert_eq!(p.max_average_bitrate, Some(20_000));
        assert_eq!(p.send_bitrate(), 20_000);
        assert_eq!(p.max_playback_rate, 48_000, "RFC 7587 default");
        assert!(sdp.contains("m=audio 10000 RTP/AVP 96 101\r\n"), "{sdp}");
        assert!(sdp.contains("a=rtpmap:96 opus/48000/2\r\n"), "{sdp}");
        assert!(
            sdp.contains("a=fmtp:96 maxplaybackrate=16000;sprop-maxcapturerate=16000;maxaveragebitrate=32000;stereo=0;sprop-stereo=0;useinbandfec=1"),
            "{sdp}"
        );
        assert!(
            sdp.contains("a=rtpmap:101 telephone-event/48000\r\n"),
            "{sdp}"
        );
        assert!(sdp.contains("a=maxptime:120\r\n") && sdp.contains("a=ptime:20\r\n"));
        // our answer parses back to the same choice
        let back = parse(&sdp).unwrap();
        let m = &back.media[0];
        assert_eq!(m.formats, vec!["96", "101"]);
    }

    #[test]
    fn telephone_event_follows_the_codec_clock() {
        // Opus with only telephone-event/8000 (baresip 1.0, many PBXs): taken, durations
        // at 8000
        let offer =
            parse(&BARESIP_OPUS.replace("telephone-event/48000", "telephone-event/8000")).unwrap();
        let (n, sdp) = answer(&offer, &local(&Codec::ALL)).unwrap();
        assert_eq!(
            (n.codec, n.dtmf_payload_type, n.dtmf_clock_rate),
            (Codec::Opus, Some(101), 8_000)
        );
        assert!(
            sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"),
            "{sdp}"
        );
        // both clocks offered, PCMU chosen: the 8000 one
        let text = "v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0 111 110 101\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\n";
        let (n, _) = answer(&parse(text).unwrap(), &local(&Codec::ALL)).unwrap();
        assert_eq!(
            (n.codec, n.dtmf_payload_type, n.dtmf_clock_rate),
            (Codec::Pcmu, Some(101), 8_000)
        );
        let (n, _) = answer(&parse(text).unwrap(), &local(&[Codec::Opus])).unwrap();
        assert_eq!(
            (n.codec, n.dtmf_payload_type, n.dtmf_clock_rate),
            (Codec::Opus, Some(110), 48_000)
        );
    }

    #[test]
    fn the_trunk_list_decides_what_is_accepted() {
        let offer = parse(BARESIP_OPUS).unwrap();
        let r = answer(&offer, &local(&[Codec::Pcmu, Codec::Pcma])).unwrap_err();
        assert_eq!(r.warning_code, 305);
        assert!(r.text.contains("it takes pcmu, pcma"), "{}", r.text);
        // the offerer's order among the allowed ones: Opus first when the phone says so
        let both = BARESIP_OPUS.replace("RTP/AVP 96 101", "RTP/AVP 96 0 101");
        let (n, _) = answer(&parse(&both).unwrap(), &local(&Codec::ALL)).unwrap();
        assert_eq!(n.codec, Codec::Opus);
        let (n, _) = answer(&parse(&both).unwrap(), &local(&[Codec::Pcmu])).unwrap();
        assert_eq!(n.codec, Codec::Pcmu);
    }

    #[test]
    fn our_opus_offer_and_an_answer_on_another_payload_type() {
        let l = local(&[Codec::Opus, Codec::G722, Codec::Pcmu]);
        let o = offer(&l);
        let parsed = parse(&o).unwrap();
        assert_eq!(parsed.media[0].formats, vec!["111", "9", "0", "101", "110"]);
        assert!(
            o.contains("a=rtpmap:111 opus/48000/2\r\na=fmtp:111 maxplaybackrate=16000"),
            "{o}"
        );
        assert!(o.contains("a=rtpmap:110 telephone-event/48000\r\n"), "{o}");
        assert!(o.contains("a=rtpmap:101 telephone-event/8000\r\n"), "{o}");
        assert!(o.contains("a=maxptime:120\r\n"), "{o}");
        // the answerer names Opus 98 and events 99 (RFC 3264 allows it): we send with
        // those and receive with ours
        let ans = "v=0\r\no=b 1 1 IN IP4 198.51.100.5\r\ns=-\r\nc=IN IP4 198.51.100.5\r\nt=0 0\r\nm=audio 20000 RTP/AVP 98 99\r\na=rtpmap:98 OPUS/48000/2\r\na=fmtp:98 maxplaybackrate=8000;useinbandfec=1\r\na=rtpmap:99 telephone-event/48000\r\n";
        let n = read_answer(&parse(ans).unwrap(), &l).unwrap();
        assert_eq!(
            (n.codec, n.payload_type, n.recv_payload_type),
            (Codec::Opus, 98, OFFER_OPUS_PT)
        );
        assert_eq!(
            (n.dtmf_payload_type, n.recv_dtmf_payload_type),
            (Some(99), Some(OFFER_DTMF_48K_PT))
        );
        let p = n.opus.unwrap();
        assert_eq!((p.max_playback_rate, p.use_inband_fec), (8_000, true));
        // an offer without Opus has no 48 kHz events
        assert!(!offer(&local(&[Codec::Pcmu])).contains("48000"));
        assert!(!offer(&local(&[Codec::Opus])).contains("/8000"));
    }

    #[test]
    fn broken_opus_fmtp_gets_rfc_defaults_not_an_error() {
        for fmtp in [
            "",
            ";;;",
            "=",
            "maxplaybackrate",
            "maxplaybackrate=",
            "maxplaybackrate=abc;useinbandfec=yes;stereo=2",
            "maxaveragebitrate=0;maxplaybackrate=1",
            "maxaveragebitrate=99999999999999999999999;sprop-maxcapturerate=-5",
            "useinbandfec=1;useinbandfec=0",
            "\u{0}\u{7f};usedtx=1",
        ] {
            let p = OpusParams::parse(fmtp);
            assert!((8_000..=48_000).contains(&p.max_playback_rate), "{fmtp:?}");
            assert!(
                p.max_average_bitrate
                    .is_none_or(|b| (6_000..=510_000).contains(&b)),
                "{fmtp:?}"
            );
            let text = BARESIP_OPUS.replace(
                "a=fmtp:96 stereo=1;sprop-stereo=1;maxaveragebitrate=20000;useinbandfec=1;usedtx=1",
                &format!("a=fmtp:96 {fmtp}"),
            );
            if let Ok(offer) = parse(&text) {
                let (n, sdp) = answer(&offer, &local(&Codec::ALL)).unwrap();
                assert_eq!(n.codec, Codec::Opus);
                assert!(parse(&sdp).is_ok());
            }
        }
        assert_eq!(
            OpusParams::parse("maxaveragebitrate=0").max_average_bitrate,
            Some(6_000)
        );
        assert_eq!(
            OpusParams::parse("maxplaybackrate=1").max_playback_rate,
            8_000
        );
        assert!(!OpusParams::parse("useinbandfec=yes").use_inband_fec);
    }

    /// Hostile Opus offers: every one is parsed or refused with an error, answered or
    /// refused with a 488 reason, never a panic.
    #[test]
    fn hostile_opus_offers_never_panic() {
        let head = "v=0\r\no=a 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
        let cases = [
            // Opus on a clock other than 48000 is not Opus
            "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/8000/2\r\n",
            // no rtpmap for a dynamic payload type
            "m=audio 5000 RTP/AVP 96\r\n",
            // payload type out of range
            "m=audio 5000 RTP/AVP 300\r\na=rtpmap:300 opus/48000/2\r\n",
            "m=audio 5000 RTP/AVP 200\r\na=rtpmap:200 opus/48000/2\r\n",
            // rtpmap without a clock
            "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus\r\n",
            // channels junk, fmtp for another payload type, fmtp without params
            "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/junk\r\na=fmtp:97 maxplaybackrate=1\r\na=fmtp:96\r\n",
            // two rtpmaps for one payload type
            "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\na=rtpmap:96 PCMU/8000\r\n",
            // maxptime and ptime out of range
            "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\na=ptime:0\r\na=maxptime:100000\r\n",
            // many fmtp lines
            "m=audio 5000 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n",
            "m=audio 0 RTP/AVP 96\r\na=rtpmap:96 opus/48000/2\r\n",
        ];
        let mut many = cases[8].to_string();
        for _ in 0..1000 {
            many.push_str("a=fmtp:96 maxaveragebitrate=1;stereo=1\r\n");
        }
        let mut answered = 0;
        for body in cases.iter().map(|c| c.to_string()).chain([many]) {
            let text = format!("{head}{body}");
            let Ok(offer) = parse(&text) else {
                continue;
            };
            match answer(&offer, &local(&Codec::ALL)) {
                Ok((n, sdp)) => {
                    answered += 1;
                    assert!(parse(&sdp).is_ok(), "{sdp}");
                    if n.codec == Codec::Opus {
                        assert_eq!(n.ptime_ms, 20);
                        assert!(n.maxptime_ms.is_none_or(|m| m <= 120));
                    }
                }
                Err(r) => assert!([304, 305].contains(&r.warning_code), "{r:?}"),
            }
            let _ = read_answer(&offer, &local(&Codec::ALL));
        }
        assert!(answered >= 3, "{answered}");
    }
}
