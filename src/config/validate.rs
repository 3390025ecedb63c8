//! Turns raw YAML values into a validated `Config`, collecting every error with its
//! location. Nothing here touches the disk; environment variables come in as a function.

use super::error::{ConfigError, Origin};
use super::loader::Parsed;
use super::raw::{self, S};
use super::types::{self, Secret, Transport, normalize_number};
use super::*;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

struct Ctx<'a> {
    errors: &'a mut Vec<ConfigError>,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl Ctx<'_> {
    fn err(&mut self, origin: Origin, msg: impl Into<String>) {
        self.errors.push(ConfigError::new(origin, msg));
    }

    fn err_at<T>(&mut self, file: &Path, s: &S<T>, msg: impl Into<String>) {
        self.err(Origin::at(file, s.referenced), msg);
    }

    /// Parses a spanned string with `f`, reporting a failure at its location.
    fn parse<T>(
        &mut self,
        file: &Path,
        s: &S<String>,
        f: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        match f(&s.value) {
            Ok(v) => Some(v),
            Err(msg) => {
                self.err_at(file, s, msg);
                None
            }
        }
    }

    /// Like `parse`, for an optional value with a default written as text.
    fn parse_or<T>(
        &mut self,
        file: &Path,
        s: Option<&S<String>>,
        default: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        match s {
            Some(s) => self.parse(file, s, f),
            None => Some(f(default).expect("built-in default is valid")),
        }
    }

    fn duration_or(
        &mut self,
        file: &Path,
        s: Option<&S<String>>,
        default: Duration,
    ) -> Option<Duration> {
        match s {
            None => Some(default),
            Some(s) => {
                let d = self.parse(file, s, types::parse_duration)?;
                if d.is_zero() {
                    self.err_at(file, s, "duration must be greater than zero");
                    return None;
                }
                Some(d)
            }
        }
    }
}

/// Returns a `Config` only if every part validated; errors go to `errors`.
pub(super) fn validate(
    daemon: Option<Parsed<raw::Daemon>>,
    trunks: Vec<Parsed<raw::Trunk>>,
    dialplans: Vec<Parsed<raw::Dialplan>>,
    files: SourceFiles,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<ConfigError>,
) -> Option<Config> {
    let mut cx = Ctx { errors, env };
    let before = cx.errors.len();
    let daemon = daemon.and_then(|d| daemon_settings(&mut cx, &d.file, d.value));
    let (trunks, trunk_names) = trunk_set(&mut cx, trunks);
    let rules = rule_set(&mut cx, dialplans, &trunks, &trunk_names);
    let (livekit, sip, rtp, http, limits, logging) = daemon?;
    if cx.errors.len() != before {
        return None;
    }
    Some(Config {
        livekit,
        sip,
        rtp,
        http,
        limits,
        logging,
        trunks,
        rules,
        files,
    })
}

type DaemonParts = (
    LiveKitConfig,
    SipConfig,
    RtpConfig,
    HttpConfig,
    LimitsConfig,
    LoggingConfig,
);

fn daemon_settings(cx: &mut Ctx<'_>, file: &Path, d: raw::Daemon) -> Option<DaemonParts> {
    let livekit = livekit_settings(cx, file, d.livekit.as_ref());
    let sip = sip_settings(cx, file, d.sip.as_ref());
    let rtp = rtp_settings(
        cx,
        file,
        d.rtp.as_ref(),
        sip.as_ref().and_then(|s| s.public_ip),
    );
    let http = {
        let listen = d.http.as_ref().and_then(|h| h.value.listen.as_ref());
        cx.parse_or(file, listen, defaults::HTTP_LISTEN, parse_socket_addr)
            .map(|listen| HttpConfig { listen })
    };
    let limits = limits_settings(cx, file, d.limits.as_ref());
    let logging = logging_settings(cx, file, d.logging.as_ref());
    Some((livekit?, sip?, rtp?, http?, limits?, logging?))
}

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("invalid listen address {s:?}: expected IP:port such as 0.0.0.0:5060 or [::]:5060")
    })
}

fn parse_public_ip(s: &str) -> Result<IpAddr, String> {
    match s.trim().parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(format!(
            "invalid public IP {s:?}: expected the address peers should send to, not a wildcard"
        )),
        Ok(ip) => Ok(ip),
        Err(_) => Err(format!(
            "invalid public IP {s:?}: expected an IPv4 or IPv6 address"
        )),
    }
}

/// A value from the file, unless its environment variable is set.
fn env_or_file(
    cx: &mut Ctx<'_>,
    file: &Path,
    section: Option<&S<raw::LiveKit>>,
    var: &'static str,
    field: &str,
    get: impl Fn(&raw::LiveKit) -> Option<&S<String>>,
) -> Option<(String, Origin)> {
    if let Some(v) = (cx.env)(var).filter(|v| !v.is_empty()) {
        return Some((v, Origin::Env(var)));
    }
    if let Some(s) = section.and_then(|l| get(&l.value)) {
        return Some((s.value.clone(), Origin::at(file, s.referenced)));
    }
    let origin = match section {
        Some(l) => Origin::at(file, l.referenced),
        None => Origin::File(file.to_path_buf()),
    };
    cx.err(
        origin,
        format!("livekit.{field} is required (or set {var})"),
    );
    None
}

fn livekit_settings(
    cx: &mut Ctx<'_>,
    file: &Path,
    l: Option<&S<raw::LiveKit>>,
) -> Option<LiveKitConfig> {
    let url = env_or_file(cx, file, l, "LIVEKIT_URL", "url", |l| l.url.as_ref());
    let key = env_or_file(cx, file, l, "LIVEKIT_API_KEY", "api_key", |l| {
        l.api_key.as_ref()
    });
    let secret = env_or_file(cx, file, l, "LIVEKIT_API_SECRET", "api_secret", |l| {
        l.api_secret.as_ref()
    });
    let (url, url_origin) = url?;
    let scheme_ok = ["ws://", "wss://", "http://", "https://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len());
    if !scheme_ok {
        cx.err(
            url_origin,
            format!("invalid LiveKit URL {url:?}: expected ws://, wss://, http:// or https:// and a host, such as ws://127.0.0.1:7880"),
        );
        return None;
    }
    let (api_key, key_origin) = key?;
    if api_key.trim() != api_key {
        cx.err(key_origin, "LiveKit API key has leading or trailing spaces");
        return None;
    }
    Some(LiveKitConfig {
        url,
        api_key,
        api_secret: Secret::new(secret?.0),
    })
}

fn sip_settings(cx: &mut Ctx<'_>, file: &Path, s: Option<&S<raw::Sip>>) -> Option<SipConfig> {
    let s = s.map(|s| &s.value);
    let listeners = match s.and_then(|s| s.listeners.as_ref()) {
        None => defaults::SIP_LISTENERS
            .iter()
            .map(|(t, a)| Listener {
                transport: types::parse_transport(t).expect("default transport"),
                address: a.parse().expect("default address"),
                tls: None,
            })
            .collect(),
        Some(list) => {
            let mut out: Vec<Listener> = Vec::new();
            let mut ok = true;
            if list.value.is_empty() {
                cx.err_at(
                    file,
                    list,
                    "sip.listeners is empty: expected at least one listener",
                );
                ok = false;
            }
            for l in &list.value {
                match listener(cx, file, l) {
                    Some(new) => {
                        if out
                            .iter()
                            .any(|o| o.transport == new.transport && o.address == new.address)
                        {
                            cx.err_at(
                                file,
                                l,
                                format!(
                                    "duplicate listener {} {}",
                                    new.transport.as_str(),
                                    new.address
                                ),
                            );
                            ok = false;
                        } else {
                            out.push(new);
                        }
                    }
                    None => ok = false,
                }
            }
            if !ok {
                return None;
            }
            out
        }
    };
    let public_ip = match s.and_then(|s| s.public_ip.as_ref()) {
        Some(p) => Some(cx.parse(file, p, parse_public_ip)?),
        None => None,
    };
    let user_agent = match s.and_then(|s| s.user_agent.as_ref()) {
        Some(ua) if ua.value.trim().is_empty() || ua.value.contains(['\r', '\n']) => {
            cx.err_at(file, ua, "user_agent must be non-empty text on one line");
            return None;
        }
        Some(ua) => ua.value.clone(),
        None => defaults::SIP_USER_AGENT.to_string(),
    };
    let unmatched_inbound = cx.parse_or(
        file,
        s.and_then(|s| s.unmatched_inbound.as_ref()),
        defaults::UNMATCHED_INBOUND,
        |v| match v {
            "reject" => Ok(UnmatchedInbound::Reject),
            "drop" => Ok(UnmatchedInbound::Drop),
            _ => Err(format!(
                "invalid unmatched_inbound {v:?}: expected reject or drop"
            )),
        },
    )?;
    let ttl_raw = s.and_then(|s| s.auth_nonce_ttl.as_ref());
    let auth_nonce_ttl = cx.duration_or(file, ttl_raw, defaults::AUTH_NONCE_TTL)?;
    if let Some(raw) = ttl_raw
        && auth_nonce_ttl.subsec_nanos() != 0
    {
        // nonces carry their issue time in whole seconds
        cx.err_at(
            file,
            raw,
            "auth_nonce_ttl must be a whole number of seconds (at least 1s)",
        );
        return None;
    }
    Some(SipConfig {
        listeners,
        public_ip,
        user_agent,
        unmatched_inbound,
        auth_nonce_ttl,
    })
}

fn listener(cx: &mut Ctx<'_>, file: &Path, l: &S<raw::Listener>) -> Option<Listener> {
    let v = &l.value;
    let transport = cx.parse(file, &v.transport, types::parse_transport);
    let address = cx.parse(file, &v.address, parse_socket_addr);
    let transport = transport?;
    let tls = match (transport, &v.cert, &v.key) {
        (Transport::Tls, Some(c), Some(k)) => Some(TlsFiles {
            cert: c.value.clone().into(),
            key: k.value.clone().into(),
        }),
        (Transport::Tls, _, _) => {
            cx.err_at(file, l, "a tls listener needs both cert and key");
            return None;
        }
        (_, None, None) => None,
        (t, c, k) => {
            let at = c.as_ref().or(k.as_ref()).expect("one is set");
            cx.err_at(
                file,
                at,
                format!(
                    "cert and key apply only to tls listeners, not {}",
                    t.as_str()
                ),
            );
            return None;
        }
    };
    Some(Listener {
        transport,
        address: address?,
        tls,
    })
}

fn rtp_settings(
    cx: &mut Ctx<'_>,
    file: &Path,
    r: Option<&S<raw::Rtp>>,
    sip_public_ip: Option<IpAddr>,
) -> Option<RtpConfig> {
    let r = r.map(|r| &r.value);
    let ports = cx.parse_or(
        file,
        r.and_then(|r| r.port_range.as_ref()),
        defaults::RTP_PORT_RANGE,
        types::parse_port_range,
    );
    let public_ip = match r.and_then(|r| r.public_ip.as_ref()) {
        Some(p) => cx.parse(file, p, parse_public_ip).map(Some),
        None => Some(sip_public_ip),
    };
    let media_timeout = cx.duration_or(
        file,
        r.and_then(|r| r.media_timeout.as_ref()),
        defaults::MEDIA_TIMEOUT,
    );
    let media_timeout_initial = cx.duration_or(
        file,
        r.and_then(|r| r.media_timeout_initial.as_ref()),
        defaults::MEDIA_TIMEOUT_INITIAL,
    );
    Some(RtpConfig {
        ports: ports?,
        public_ip: public_ip?,
        media_timeout: media_timeout?,
        media_timeout_initial: media_timeout_initial?,
    })
}

fn limits_settings(
    cx: &mut Ctx<'_>,
    file: &Path,
    l: Option<&S<raw::Limits>>,
) -> Option<LimitsConfig> {
    let l = l.map(|l| &l.value);
    let mut positive = |s: Option<&S<u32>>, default: u32, what: &str| match s {
        None => Some(default),
        Some(v) if v.value == 0 => {
            cx.err_at(file, v, format!("{what} must be at least 1"));
            None
        }
        Some(v) => Some(v.value),
    };
    let max_concurrent_calls = positive(
        l.and_then(|l| l.max_concurrent_calls.as_ref()),
        defaults::MAX_CONCURRENT_CALLS,
        "max_concurrent_calls",
    );
    let max_calls_per_second = positive(
        l.and_then(|l| l.max_calls_per_second.as_ref()),
        defaults::MAX_CALLS_PER_SECOND,
        "max_calls_per_second",
    );
    let drain_timeout = cx.duration_or(
        file,
        l.and_then(|l| l.drain_timeout.as_ref()),
        defaults::DRAIN_TIMEOUT,
    );
    Some(LimitsConfig {
        max_concurrent_calls: max_concurrent_calls?,
        max_calls_per_second: max_calls_per_second?,
        drain_timeout: drain_timeout?,
    })
}

fn logging_settings(
    cx: &mut Ctx<'_>,
    file: &Path,
    l: Option<&S<raw::Logging>>,
) -> Option<LoggingConfig> {
    let l = l.map(|l| &l.value);
    let level = cx.parse_or(
        file,
        l.and_then(|l| l.level.as_ref()),
        defaults::LOG_LEVEL,
        |v| crate::logging::parse_filter(v).map(|_| v.to_string()),
    );
    let format = cx.parse_or(
        file,
        l.and_then(|l| l.format.as_ref()),
        defaults::LOG_FORMAT,
        |v| match v {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("invalid log format {v:?}: expected human or json")),
        },
    );
    Some(LoggingConfig {
        level: level?,
        format: format?,
    })
}

fn credentials(
    cx: &mut Ctx<'_>,
    file: &Path,
    a: &S<raw::Auth>,
    inbound: bool,
) -> Option<Credentials> {
    let v = &a.value;
    let mut algorithms = Vec::new();
    match &v.algorithms {
        Some(list) if !inbound => {
            cx.err_at(
                file,
                list,
                "algorithms applies to inbound.auth only (outbound answers whatever the carrier offers)",
            );
            return None;
        }
        Some(list) => {
            if list.value.is_empty() {
                cx.err_at(
                    file,
                    list,
                    "algorithms must name at least one of sha-256, md5",
                );
                return None;
            }
            for a in &list.value {
                let alg = match a.value.to_ascii_lowercase().as_str() {
                    "sha-256" | "sha256" => DigestAlgorithm::Sha256,
                    "md5" => DigestAlgorithm::Md5,
                    _ => {
                        cx.err_at(
                            file,
                            a,
                            format!(
                                "unknown digest algorithm {:?}: expected sha-256 or md5",
                                a.value
                            ),
                        );
                        return None;
                    }
                };
                if !algorithms.contains(&alg) {
                    algorithms.push(alg);
                }
            }
        }
        None => {
            for a in defaults::AUTH_ALGORITHMS {
                algorithms.push(if *a == "md5" {
                    DigestAlgorithm::Md5
                } else {
                    DigestAlgorithm::Sha256
                });
            }
        }
    }
    if v.username.value.is_empty() || v.username.value.contains([':', '\r', '\n', '"']) {
        cx.err_at(
            file,
            &v.username,
            "username must be non-empty and contain no ':', quote or line break",
        );
        return None;
    }
    let password = match (&v.password, &v.password_env) {
        (Some(p), None) if !p.value.is_empty() => p.value.clone(),
        (Some(p), None) => {
            cx.err_at(file, p, "password is empty");
            return None;
        }
        (None, Some(var)) => match (cx.env)(&var.value).filter(|s| !s.is_empty()) {
            Some(p) => p,
            None => {
                cx.err_at(
                    file,
                    var,
                    format!(
                        "environment variable {} (password_env) is not set",
                        var.value
                    ),
                );
                return None;
            }
        },
        (Some(_), Some(var)) => {
            cx.err_at(file, var, "give either password or password_env, not both");
            return None;
        }
        (None, None) => {
            cx.err_at(file, a, "auth needs a password or password_env");
            return None;
        }
    };
    Some(Credentials {
        algorithms,
        username: v.username.value.clone(),
        password: Secret::new(password),
    })
}

/// Headers a trunk may not set: Roomline writes them itself.
const MANAGED_HEADERS: &[&str] = &[
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "content-length",
    "content-type",
    "max-forwards",
    "authorization",
    "proxy-authorization",
    "route",
    "record-route",
    "expires",
    "allow",
    "supported",
    "require",
];

fn header_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
}

fn inbound(cx: &mut Ctx<'_>, file: &Path, i: &S<raw::Inbound>) -> Option<InboundTrunk> {
    let v = &i.value;
    let before = cx.errors.len();
    let numbers: Vec<String> = v
        .numbers
        .iter()
        .filter_map(|n| cx.parse(file, n, types::parse_number))
        .collect();
    let allowed_addresses = v
        .allowed_addresses
        .iter()
        .filter_map(|a| cx.parse(file, a, types::parse_net))
        .collect();
    let allowed_numbers = v
        .allowed_numbers
        .iter()
        .filter_map(|n| cx.parse(file, n, types::parse_number_pattern))
        .collect();
    let auth = v.auth.as_ref().map(|a| credentials(cx, file, a, true));
    let mut seen = HashMap::new();
    for (n, s) in numbers.iter().zip(&v.numbers) {
        if let Some(first) = seen.insert(normalize_number(n).to_string(), n.clone()) {
            cx.err_at(
                file,
                s,
                format!("number {n:?} is listed twice in this trunk (also as {first:?})"),
            );
        }
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(InboundTrunk {
        numbers,
        allowed_addresses,
        allowed_numbers,
        auth: auth.flatten(),
    })
}

fn outbound(cx: &mut Ctx<'_>, file: &Path, o: &S<raw::Outbound>) -> Option<OutboundTrunk> {
    let v = &o.value;
    let before = cx.errors.len();
    let target = cx.parse(file, &v.address, types::parse_sip_target);
    let transport = v
        .transport
        .as_ref()
        .map(|t| (t, cx.parse(file, t, types::parse_transport)));
    let transport = match (&target, transport) {
        (Some(t), Some((s, Some(tr)))) => {
            if t.transport.is_some_and(|u| u != tr) {
                cx.err_at(
                    file,
                    s,
                    format!(
                        "transport {} contradicts the transport in address {:?}",
                        tr.as_str(),
                        v.address.value
                    ),
                );
            }
            tr
        }
        (Some(t), None) => t.transport.unwrap_or(Transport::Udp),
        _ => Transport::Udp,
    };
    let from_number = v
        .from_number
        .as_ref()
        .and_then(|n| cx.parse(file, n, types::parse_number));
    let auth = v.auth.as_ref().map(|a| credentials(cx, file, a, false));
    let mut headers = Vec::new();
    for (name, value) in &v.headers {
        if !header_ok(name) {
            cx.err_at(
                file,
                value,
                format!("invalid header name {name:?}: expected a SIP token such as X-Account"),
            );
        } else if MANAGED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
            cx.err_at(
                file,
                value,
                format!("header {name} is set by Roomline and cannot be configured"),
            );
        } else if value.value.contains(['\r', '\n']) {
            cx.err_at(
                file,
                value,
                format!("header {name} value contains a line break"),
            );
        } else {
            headers.push((name.clone(), value.value.clone()));
        }
    }
    let register = match &v.register {
        None => None,
        Some(r) => {
            let expires =
                cx.duration_or(file, r.value.expires.as_ref(), defaults::REGISTER_EXPIRES);
            if let (Some(d), Some(s)) = (expires, r.value.expires.as_ref())
                && d < Duration::from_secs(60)
            {
                cx.err_at(file, s, "register expires must be at least 60s");
            }
            let user = r.value.user.as_ref().and_then(|u| {
                let ok = !u.value.is_empty()
                    && u.value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c));
                if ok {
                    Some(u.value.clone())
                } else {
                    cx.err_at(
                        file,
                        u,
                        "invalid register user: expected a SIP user part such as 15550100",
                    );
                    None
                }
            });
            expires.map(|expires| RegisterConfig { expires, user })
        }
    };
    let options_interval = match &v.options_interval {
        None => None,
        Some(s) => match cx.parse(file, s, types::parse_duration) {
            Some(d) if d.is_zero() => None,
            Some(d) if d < Duration::from_secs(1) => {
                cx.err_at(
                    file,
                    s,
                    "options_interval must be at least 1s (or 0s for no pings)",
                );
                None
            }
            other => other,
        },
    };
    if cx.errors.len() != before {
        return None;
    }
    Some(OutboundTrunk {
        target: target?,
        transport,
        from_number,
        auth: auth.flatten(),
        headers,
        register,
        options_interval,
        early_media: v
            .early_media
            .as_ref()
            .map_or(defaults::OUTBOUND_EARLY_MEDIA, |b| b.value),
    })
}

/// A trunk's `session_timers`: both intervals whole seconds of at least 90 s (RFC 4028
/// section 4), `expires` not below `min_se`.
fn session_timers(
    cx: &mut Ctx<'_>,
    file: &Path,
    v: Option<&S<raw::SessionTimers>>,
) -> Option<SessionTimers> {
    let d = SessionTimers::default();
    let Some(v) = v else {
        return Some(d);
    };
    let before = cx.errors.len();
    let mut interval = |s: Option<&S<String>>, default: Duration, key: &str| {
        let value = cx.duration_or(file, s, default)?;
        if value < Duration::from_secs(90) || value.subsec_nanos() != 0 {
            if let Some(s) = s {
                cx.err_at(
                    file,
                    s,
                    format!("session_timers.{key} must be whole seconds, at least 90s (RFC 4028)"),
                );
            }
            return None;
        }
        Some(value)
    };
    let expires = interval(v.value.expires.as_ref(), d.expires, "expires");
    let min_se = interval(v.value.min_se.as_ref(), d.min_se, "min_se");
    if let (Some(e), Some(m), Some(s)) = (expires, min_se, v.value.expires.as_ref())
        && e < m
    {
        cx.err_at(
            file,
            s,
            "session_timers.expires must not be below session_timers.min_se",
        );
    }
    if cx.errors.len() != before {
        return None;
    }
    Some(SessionTimers {
        enabled: v.value.enabled.as_ref().map_or(d.enabled, |b| b.value),
        expires: expires?,
        min_se: min_se?,
    })
}

/// The valid trunks, sorted by name, and the names of every trunk file that defined one
/// (valid or not), so references to an invalid trunk are not reported twice.
fn trunk_set(cx: &mut Ctx<'_>, parsed: Vec<Parsed<raw::Trunk>>) -> (Vec<Trunk>, Vec<String>) {
    let mut trunks: Vec<(Trunk, &Parsed<raw::Trunk>)> = Vec::new();
    let mut defined: Vec<(String, &Parsed<raw::Trunk>)> = Vec::new();
    for p in &parsed {
        let file = &p.file;
        let v = &p.value;
        let name = match &v.name {
            Some(n) => {
                if let Err(m) = types::check_name(&n.value) {
                    cx.err_at(file, n, m);
                    continue;
                }
                n.value.clone()
            }
            None => {
                let stem = file.file_stem().and_then(|s| s.to_str()).unwrap_or("");
                if let Err(m) = types::check_name(stem) {
                    cx.err(
                        Origin::File(file.clone()),
                        format!(
                            "{m} (the trunk name comes from the file name; set `name:` instead)"
                        ),
                    );
                    continue;
                }
                stem.to_string()
            }
        };
        if let Some((_, other)) = defined.iter().find(|(n, _)| *n == name) {
            let origin = v.name.as_ref().map_or(Origin::File(file.clone()), |n| {
                Origin::at(file, n.referenced)
            });
            cx.err(
                origin,
                format!(
                    "duplicate trunk name {name:?}: also defined in {}",
                    other.file.display()
                ),
            );
            continue;
        }
        defined.push((name.clone(), p));
        if let Some(b) = &v.backup {
            if b.value == name {
                cx.err_at(file, b, "a trunk cannot be its own backup");
            } else if !parsed_name_exists(&parsed, &b.value) {
                cx.err_at(
                    file,
                    b,
                    format!(
                        "backup trunk {:?} is not defined in {}",
                        b.value,
                        file.parent().unwrap_or(Path::new(".")).display()
                    ),
                );
            }
        }
        if v.inbound.is_none() && v.outbound.is_none() {
            cx.err(
                Origin::File(file.clone()),
                "a trunk needs an inbound or an outbound section",
            );
            continue;
        }
        let inb = v.inbound.as_ref().map(|i| inbound(cx, file, i));
        let outb = v.outbound.as_ref().map(|o| outbound(cx, file, o));
        if matches!(inb, Some(None)) || matches!(outb, Some(None)) {
            continue;
        }
        let Some(session_timers) = session_timers(cx, file, v.session_timers.as_ref()) else {
            continue;
        };
        let trunk = Trunk {
            name,
            file: file.clone(),
            inbound: inb.flatten(),
            outbound: outb.flatten(),
            backup: v.backup.as_ref().map(|b| b.value.clone()),
            session_timers,
        };
        trunks.push((trunk, p));
    }
    // Backups: exist, are not the trunk itself, and both sides can place calls.
    for (t, p) in &trunks {
        let Some(b) = p.value.backup.as_ref() else {
            continue;
        };
        let file = &p.file;
        if let Some((bt, _)) = trunks
            .iter()
            .find(|(x, _)| x.name == b.value && x.name != t.name)
        {
            if t.outbound.is_none() {
                cx.err_at(
                    file,
                    b,
                    "a backup applies to outbound calls: this trunk has no outbound section",
                );
            } else if bt.outbound.is_none() {
                cx.err_at(
                    file,
                    b,
                    format!("backup trunk {:?} has no outbound section", b.value),
                );
            } else if bt.backup.as_deref() == Some(t.name.as_str()) {
                cx.err_at(
                    file,
                    b,
                    format!(
                        "trunks {:?} and {:?} name each other as backup",
                        t.name, b.value
                    ),
                );
            }
        }
    }
    ambiguity(cx, &trunks);
    let names = defined.into_iter().map(|(n, _)| n).collect();
    let mut out: Vec<Trunk> = trunks.into_iter().map(|(t, _)| t).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, names)
}

fn parsed_name_exists(parsed: &[Parsed<raw::Trunk>], name: &str) -> bool {
    parsed.iter().any(|p| match &p.value.name {
        Some(n) => n.value == name,
        None => p.file.file_stem().and_then(|s| s.to_str()) == Some(name),
    })
}

/// Two inbound trunks are ambiguous when one call could match both: their numbers overlap
/// (an empty list is any number), their source addresses overlap (empty is any), and their
/// caller filters overlap (empty is any caller; a regex may match anything).
fn ambiguity(cx: &mut Ctx<'_>, trunks: &[(Trunk, &Parsed<raw::Trunk>)]) {
    for (i, (a, _)) in trunks.iter().enumerate() {
        for (b, pb) in &trunks[i + 1..] {
            let (Some(ia), Some(ib)) = (&a.inbound, &b.inbound) else {
                continue;
            };
            // calls from a shared backup's addresses are taken by the primary trunk
            // (trunk::matching): two primaries of one backup must not both take one
            if let (Some(ba), Some(bb)) = (&a.backup, &b.backup)
                && ba == bb
                && !ia.allowed_addresses.is_empty()
                && !ib.allowed_addresses.is_empty()
            {
                let numbers_overlap = ia.numbers.is_empty()
                    || ib.numbers.is_empty()
                    || ia.numbers.iter().any(|n| {
                        ib.numbers
                            .iter()
                            .any(|m| normalize_number(m) == normalize_number(n))
                    });
                let callers_overlap = ia.allowed_numbers.is_empty()
                    || ib.allowed_numbers.is_empty()
                    || ia
                        .allowed_numbers
                        .iter()
                        .any(|x| ib.allowed_numbers.iter().any(|y| x.may_overlap(y)));
                if numbers_overlap && callers_overlap {
                    let origin = pb
                        .value
                        .backup
                        .as_ref()
                        .map_or(Origin::File(pb.file.clone()), |s| {
                            Origin::at(&pb.file, s.referenced)
                        });
                    cx.err(
                        origin,
                        format!(
                            "trunks {:?} and {:?} share the backup {ba:?} and could take the same call from its addresses; give them distinct numbers or allowed_numbers",
                            a.name, b.name
                        ),
                    );
                }
            }
            let shared_number = if ia.numbers.is_empty() || ib.numbers.is_empty() {
                Some("any number".to_string())
            } else {
                ia.numbers
                    .iter()
                    .find(|n| {
                        ib.numbers
                            .iter()
                            .any(|m| normalize_number(m) == normalize_number(n))
                    })
                    .map(|n| format!("number {n}"))
            };
            let nets_overlap = ia.allowed_addresses.is_empty()
                || ib.allowed_addresses.is_empty()
                || ia.allowed_addresses.iter().any(|x| {
                    ib.allowed_addresses
                        .iter()
                        .any(|y| x.contains(&y.network()) || y.contains(&x.network()))
                });
            let callers_overlap = ia.allowed_numbers.is_empty()
                || ib.allowed_numbers.is_empty()
                || ia
                    .allowed_numbers
                    .iter()
                    .any(|x| ib.allowed_numbers.iter().any(|y| x.may_overlap(y)));
            if let (Some(what), true, true) = (shared_number, nets_overlap, callers_overlap) {
                let origin = pb
                    .value
                    .inbound
                    .as_ref()
                    .map_or(Origin::File(pb.file.clone()), |s| {
                        Origin::at(&pb.file, s.referenced)
                    });
                cx.err(
                    origin,
                    format!(
                        "inbound side of trunk {:?} overlaps trunk {:?} ({}): a call to {what} from the same address and caller would match both; give them distinct numbers, allowed_addresses or allowed_numbers",
                        b.name,
                        a.name,
                        a.file.display()
                    ),
                );
            }
        }
    }
}

fn rule_set(
    cx: &mut Ctx<'_>,
    dialplans: Vec<Parsed<raw::Dialplan>>,
    trunks: &[Trunk],
    trunk_names: &[String],
) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut names: BTreeMap<String, Origin> = BTreeMap::new();
    let mut catch_all: Option<(String, Origin)> = None;
    for p in &dialplans {
        let file = &p.file;
        if p.value.rules.is_empty() {
            cx.err(
                Origin::File(file.clone()),
                "rules is empty: expected at least one rule",
            );
        }
        for r in &p.value.rules {
            let here = Origin::at(file, r.referenced);
            let name = &r.value.name;
            if let Err(m) = types::check_name(&name.value) {
                cx.err_at(file, name, m);
            } else if let Some(first) = names.get(&name.value) {
                cx.err_at(
                    file,
                    name,
                    format!(
                        "duplicate rule name {:?}: first defined at {first}",
                        name.value
                    ),
                );
            } else {
                names.insert(name.value.clone(), Origin::at(file, name.referenced));
            }
            if let Some((first, at)) = &catch_all {
                cx.err(here.clone(), format!("rule {:?} can never match: rule {first:?} at {at} matches every call before it", name.value));
            }
            if let Some(rule) = rule(cx, file, r, trunks, trunk_names) {
                if rule.trunks.is_empty()
                    && rule.called.is_none()
                    && rule.caller.is_none()
                    && catch_all.is_none()
                {
                    catch_all = Some((rule.name.clone(), here));
                }
                rules.push(rule);
            }
        }
    }
    rules
}

fn rule(
    cx: &mut Ctx<'_>,
    file: &Path,
    r: &S<raw::Rule>,
    trunks: &[Trunk],
    trunk_names: &[String],
) -> Option<Rule> {
    let v = &r.value;
    let before = cx.errors.len();
    let (mut rule_trunks, mut called, mut caller) = (Vec::new(), None, None);
    let mut broken = false;
    if let Some(m) = &v.matcher {
        for t in &m.value.trunks {
            match trunks.iter().find(|x| x.name == t.value) {
                // Defined but invalid: its own errors are already reported.
                None if trunk_names.contains(&t.value) => broken = true,
                None => cx.err_at(file, t, format!("unknown trunk {:?}: expected one of the trunks defined in the trunks directory", t.value)),
                Some(x) if x.inbound.is_none() => cx.err_at(file, t, format!("trunk {:?} has no inbound section, so no call arrives through it", t.value)),
                Some(_) => rule_trunks.push(t.value.clone()),
            }
        }
        called = m
            .value
            .called
            .as_ref()
            .and_then(|c| cx.parse(file, c, types::parse_number_pattern));
        caller = m
            .value
            .caller
            .as_ref()
            .and_then(|c| cx.parse(file, c, types::parse_number_pattern));
    }
    let action = match (&v.room, &v.reject) {
        (Some(_), Some(rej)) => {
            cx.err_at(file, rej, "a rule has either room or reject, not both");
            None
        }
        (None, None) => {
            cx.err_at(
                file,
                r,
                "a rule needs room (where to send the call) or reject (a SIP status)",
            );
            None
        }
        (None, Some(rej)) => {
            let join_only: [(&str, bool); 6] = [
                ("pin", v.pin.is_some()),
                ("participant", v.participant.is_some()),
                ("agents", !v.agents.is_empty()),
                ("answer", v.answer.is_some()),
                ("ringing_timeout", v.ringing_timeout.is_some()),
                ("early_media", v.early_media.is_some()),
            ];
            for (key, set) in join_only {
                if set {
                    cx.err_at(
                        file,
                        rej,
                        format!("{key} applies only to rules with room, not to reject rules"),
                    );
                }
            }
            let status = rej.value.status.value;
            if !(400..=699).contains(&status) {
                cx.err_at(file, &rej.value.status, format!("invalid reject status {status}: expected a SIP failure status from 400 to 699"));
            }
            let reason = rej.value.reason.as_ref().map(|s| s.value.clone());
            if let Some(s) = rej
                .value
                .reason
                .as_ref()
                .filter(|s| s.value.contains(['\r', '\n']))
            {
                cx.err_at(file, s, "reason contains a line break");
            }
            Some(RuleAction::Reject { status, reason })
        }
        (Some(room), None) => join_room(cx, file, v, room).map(|j| RuleAction::Join(Box::new(j))),
    };
    if broken || cx.errors.len() != before {
        return None;
    }
    Some(Rule {
        name: v.name.value.clone(),
        file: file.to_path_buf(),
        trunks: rule_trunks,
        called,
        caller,
        action: action?,
    })
}

fn join_room(cx: &mut Ctx<'_>, file: &Path, v: &raw::Rule, room: &S<String>) -> Option<JoinRoom> {
    let room = cx.parse(file, room, types::parse_template);
    let pin = v.pin.as_ref().and_then(|p| {
        cx.parse(file, p, |s| {
            if !s.is_empty() && s.len() <= 16 && s.chars().all(|c| c.is_ascii_digit()) {
                Ok(s.to_string())
            } else {
                Err(format!("invalid pin {s:?}: expected 1 to 16 digits"))
            }
        })
    });
    let part = v.participant.as_ref().map(|p| &p.value);
    let identity = cx.parse_or(
        file,
        part.and_then(|p| p.identity.as_ref()),
        defaults::RULE_IDENTITY,
        types::parse_template,
    );
    let name = cx.parse_or(
        file,
        part.and_then(|p| p.name.as_ref()),
        defaults::RULE_NAME,
        types::parse_template,
    );
    let metadata = part
        .and_then(|p| p.metadata.as_ref())
        .map(|m| m.value.clone());
    let mut attributes = Vec::new();
    for (k, val) in part.map(|p| &p.attributes).into_iter().flatten() {
        if k.is_empty() || k.starts_with("sip.") {
            cx.err_at(file, val, format!("attribute {k:?}: keys starting with \"sip.\" are set by Roomline; choose another key"));
        } else if let Some(t) = cx.parse(file, val, types::parse_template) {
            attributes.push((k.clone(), t));
        }
    }
    let mut agents = Vec::new();
    for a in &v.agents {
        if a.value.name.value.trim().is_empty() {
            cx.err_at(file, &a.value.name, "agent name is empty");
        } else {
            agents.push(AgentDispatch {
                name: a.value.name.value.clone(),
                metadata: a.value.metadata.as_ref().map(|m| m.value.clone()),
            });
        }
    }
    let answer = cx.parse_or(
        file,
        v.answer.as_ref(),
        defaults::RULE_ANSWER,
        |s| match s {
            "on_join" => Ok(AnswerMode::OnJoin),
            "on_first_track" => Ok(AnswerMode::OnFirstTrack),
            _ => Err(format!(
                "invalid answer {s:?}: expected on_join or on_first_track"
            )),
        },
    );
    let ringing_timeout = cx.duration_or(
        file,
        v.ringing_timeout.as_ref(),
        defaults::RULE_RINGING_TIMEOUT,
    );
    let early_media = v
        .early_media
        .as_ref()
        .map_or(defaults::RULE_EARLY_MEDIA, |e| e.value);
    let pin = match (&v.pin, pin) {
        (Some(_), None) => return None,
        (_, p) => p,
    };
    Some(JoinRoom {
        room: room?,
        pin,
        identity: identity?,
        name: name?,
        metadata,
        attributes,
        agents,
        answer: answer?,
        ringing_timeout: ringing_timeout?,
        early_media,
    })
}
