//! roomline.yaml: the LiveKit server (with environment overrides), SIP listeners, RTP,
//! HTTP, limits and logging.

use super::Ctx;
use crate::config::error::Origin;
use crate::config::raw::{self, Spanned};
use crate::config::types::{self, Secret, Transport};
use crate::config::{
    HttpConfig, LimitsConfig, Listener, LiveKitConfig, LogFormat, LoggingConfig, RtpConfig,
    SipConfig, TlsFiles, UnmatchedInbound, defaults,
};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

pub(super) type DaemonParts = (
    LiveKitConfig,
    SipConfig,
    RtpConfig,
    HttpConfig,
    LimitsConfig,
    LoggingConfig,
);

pub(super) fn daemon_settings(
    cx: &mut Ctx<'_>,
    file: &Path,
    d: raw::Daemon,
) -> Option<DaemonParts> {
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
    section: Option<&Spanned<raw::LiveKit>>,
    var: &'static str,
    field: &str,
    get: impl Fn(&raw::LiveKit) -> Option<&Spanned<String>>,
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
    l: Option<&Spanned<raw::LiveKit>>,
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

fn sip_settings(cx: &mut Ctx<'_>, file: &Path, s: Option<&Spanned<raw::Sip>>) -> Option<SipConfig> {
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

fn listener(cx: &mut Ctx<'_>, file: &Path, l: &Spanned<raw::Listener>) -> Option<Listener> {
    let v = &l.value;
    let transport = cx.parse(file, &v.transport, types::parse_transport);
    let address = cx.parse(file, &v.address, parse_socket_addr);
    let transport = transport?;
    if let (Some(ca), false) = (&v.client_ca, transport == Transport::Tls) {
        cx.err_at(
            file,
            ca,
            format!(
                "client_ca applies only to tls listeners, not {}",
                transport.as_str()
            ),
        );
        return None;
    }
    let tls = match (transport, &v.cert, &v.key) {
        (Transport::Tls, Some(c), Some(k)) => Some(TlsFiles {
            cert: c.value.clone().into(),
            key: k.value.clone().into(),
            client_ca: match &v.client_ca {
                Some(ca) if ca.value.trim().is_empty() => {
                    cx.err_at(file, ca, "client_ca is empty: expected a PEM file path");
                    return None;
                }
                Some(ca) => Some(ca.value.clone().into()),
                None => None,
            },
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
    r: Option<&Spanned<raw::Rtp>>,
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
    l: Option<&Spanned<raw::Limits>>,
) -> Option<LimitsConfig> {
    let l = l.map(|l| &l.value);
    let mut positive = |s: Option<&Spanned<u32>>, default: u32, what: &str| match s {
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
    // one source never gets more than the whole rate: a larger value is a mistake to
    // point at (no silent clamp), the default is the global rate
    let per_source = l.and_then(|l| l.max_calls_per_second_per_source.as_ref());
    let max_calls_per_second_per_source = match (per_source, max_calls_per_second) {
        (Some(v), Some(global)) if v.value > global => {
            cx.err_at(
                file,
                v,
                format!(
                    "max_calls_per_second_per_source ({}) must not exceed max_calls_per_second ({global})",
                    v.value
                ),
            );
            None
        }
        (Some(v), _) if v.value == 0 => {
            cx.err_at(
                file,
                v,
                "max_calls_per_second_per_source must be at least 1",
            );
            None
        }
        (Some(v), _) => Some(v.value),
        (None, global) => global,
    };
    let drain_timeout = cx.duration_or(
        file,
        l.and_then(|l| l.drain_timeout.as_ref()),
        defaults::DRAIN_TIMEOUT,
    );
    Some(LimitsConfig {
        max_concurrent_calls: max_concurrent_calls?,
        max_calls_per_second: max_calls_per_second?,
        max_calls_per_second_per_source: max_calls_per_second_per_source?,
        drain_timeout: drain_timeout?,
    })
}

fn logging_settings(
    cx: &mut Ctx<'_>,
    file: &Path,
    l: Option<&Spanned<raw::Logging>>,
) -> Option<LoggingConfig> {
    let l = l.map(|l| &l.value);
    let level = cx.parse_or(
        file,
        l.and_then(|l| l.level.as_ref()),
        defaults::LOG_LEVEL,
        |v| types::parse_log_filter(v).map(|_| v.to_string()),
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
