//! `roomline diagnose`: what an operator checks first when calls fail, each with a clear
//! verdict: the configuration, LiveKit reachability and credentials (a real RoomService
//! call with a token from the configured key and secret), the SIP listener ports (free to
//! bind, or held by a running Roomline that answers OPTIONS), the RTP range (how much of
//! it other programs hold), and every trunk's outbound side (an OPTIONS answered); with
//! `--call NUMBER`, a test call into the daemon by the test phone (`phone`).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use crate::config::{Config, Transport};
use crate::sip::build::{self, Outgoing};
use crate::sip::message;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub item: String,
    pub verdict: Verdict,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        }
    }
}

fn check(item: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        item: item.into(),
        verdict,
        detail: detail.into(),
    }
}

/// Sends one OPTIONS over UDP from an ephemeral socket and waits for a final response.
fn options_udp(to: SocketAddr, timeout: Duration) -> Result<(u16, Duration), String> {
    let bind = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" };
    let sock = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
    sock.connect(to).map_err(|e| e.to_string())?;
    let local = sock.local_addr().map_err(|e| e.to_string())?;
    let local = if local.ip().is_unspecified() {
        crate::sip::transport::local_ip_towards(to.ip())
            .map(|ip| SocketAddr::new(ip, local.port()))
            .unwrap_or(local)
    } else {
        local
    };
    let host = crate::sip::uri::host_port(local);
    let target = crate::sip::uri::host_port(to);
    let req = Outgoing::request("OPTIONS", &format!("sip:{target}"))
        .header(
            "Via",
            format!("SIP/2.0/UDP {host};branch={};rport", build::new_branch()),
        )
        .header("Max-Forwards", "70")
        .header(
            "From",
            format!("<sip:diagnose@{host}>;tag={}", build::new_tag()),
        )
        .header("To", format!("<sip:{target}>"))
        .header("Call-ID", build::new_call_id())
        .header("CSeq", "1 OPTIONS")
        .header(
            "User-Agent",
            concat!("roomline-diagnose/", env!("CARGO_PKG_VERSION")),
        )
        .to_bytes();
    let t0 = crate::clock::now();
    let mut next_send = t0;
    let mut interval = Duration::from_millis(500);
    let mut buf = [0u8; 65536];
    while t0.elapsed() < timeout {
        if crate::clock::now() >= next_send {
            sock.send(&req).map_err(|e| e.to_string())?;
            next_send = crate::clock::now() + interval;
            interval = (interval * 2).min(Duration::from_secs(4));
        }
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        match sock.recv(&mut buf) {
            Ok(n) => {
                if let Ok(m) = message::parse(&buf[..n])
                    && let message::StartLine::Response { status, .. } = m.start
                    && status >= 200
                {
                    return Ok((status, t0.elapsed()));
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err("connection refused (nothing listens there)".into());
            }
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("no answer within {timeout:?}"))
}

/// Runs every check. `livekit` does the LiveKit round trip (async, with a timeout).
pub async fn run(cfg: &Config) -> Vec<Check> {
    let mut out = vec![check(
        "configuration",
        Verdict::Ok,
        format!(
            "{}: valid ({} trunks, {} rules)",
            cfg.files.config.display(),
            cfg.trunks.len(),
            cfg.rules.len()
        ),
    )];
    out.push(livekit(cfg).await);
    for l in &cfg.sip.listeners {
        out.push(listener(l.transport, l.address));
    }
    out.push(rtp_range(cfg));
    for t in &cfg.trunks {
        let Some(addr) = crate::trunk::client::TrunkAddr::of(t) else {
            continue;
        };
        let item = format!("trunk {} ({})", t.name, addr.host_port());
        if addr.transport != Transport::Udp {
            out.push(check(
                item,
                Verdict::Warn,
                format!(
                    "{} trunks are not probed here; see /health/detailed while running",
                    addr.transport.as_str()
                ),
            ));
            continue;
        }
        match addr.resolve().await {
            Err(e) => out.push(check(item, Verdict::Fail, e)),
            Ok(sa) => {
                let r =
                    tokio::task::spawn_blocking(move || options_udp(sa, Duration::from_secs(4)))
                        .await
                        .unwrap_or_else(|e| Err(e.to_string()));
                out.push(match r {
                    Ok((status, rtt)) if status < 500 && status != 408 => check(
                        item,
                        Verdict::Ok,
                        format!(
                            "answered OPTIONS {status} in {:.0} ms",
                            rtt.as_secs_f64() * 1e3
                        ),
                    ),
                    Ok((status, _)) => {
                        check(item, Verdict::Fail, format!("answered OPTIONS {status}"))
                    }
                    Err(e) => check(item, Verdict::Fail, e),
                });
            }
        }
    }
    out
}

async fn livekit(cfg: &Config) -> Check {
    let base = crate::livekit::http_base(&cfg.livekit.url);
    let token = match crate::token::mint(
        &cfg.livekit,
        &crate::token::TokenRequest {
            identity: "roomline-diagnose".into(),
            room_admin: true,
            ttl: Duration::from_secs(60),
            ..Default::default()
        },
    ) {
        Ok(t) => t,
        Err(e) => {
            return check(
                "livekit",
                Verdict::Fail,
                format!("cannot mint a token: {e}"),
            );
        }
    };
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
    {
        Ok(c) => c,
        Err(e) => return check("livekit", Verdict::Fail, e.to_string()),
    };
    let t0 = crate::clock::now();
    let resp = client
        .post(format!("{base}/twirp/livekit.RoomService/ListRooms"))
        .bearer_auth(token)
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await;
    match resp {
        Err(e) => check(
            "livekit",
            Verdict::Fail,
            format!("cannot reach {base}: {e}"),
        ),
        Ok(r) if r.status().is_success() => check(
            "livekit",
            Verdict::Ok,
            format!(
                "{base} reachable, key {} accepted ({:.0} ms)",
                cfg.livekit.api_key,
                t0.elapsed().as_secs_f64() * 1e3
            ),
        ),
        Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => check(
            "livekit",
            Verdict::Fail,
            format!("{base} refuses the credentials (401): check livekit.api_key / api_secret"),
        ),
        Ok(r) => check(
            "livekit",
            Verdict::Fail,
            format!("{base} answered {}", r.status()),
        ),
    }
}

fn listener(transport: Transport, addr: SocketAddr) -> Check {
    let item = format!("sip {} {addr}", transport.as_str());
    let bound = match transport {
        Transport::Udp => UdpSocket::bind(addr).map(|_| ()),
        _ => std::net::TcpListener::bind(addr).map(|_| ()),
    };
    match bound {
        Ok(()) => check(item, Verdict::Ok, "free to bind"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // held: by a running Roomline (answers OPTIONS) or by another program
            if transport == Transport::Udp {
                let probe = if addr.ip().is_unspecified() {
                    SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port())
                } else {
                    addr
                };
                match options_udp(probe, Duration::from_secs(2)) {
                    Ok((status, _)) => check(
                        item,
                        if status == 200 {
                            Verdict::Ok
                        } else {
                            Verdict::Warn
                        },
                        format!(
                            "in use by a SIP server that answers OPTIONS {status} (a running daemon?)"
                        ),
                    ),
                    Err(_) => check(
                        item,
                        Verdict::Fail,
                        "in use by another program that does not speak SIP",
                    ),
                }
            } else {
                check(item, Verdict::Warn, "in use (a running daemon?)")
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => check(
            item,
            Verdict::Fail,
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)",
        ),
        Err(e) => check(item, Verdict::Fail, e.to_string()),
    }
}

fn rtp_range(cfg: &Config) -> Check {
    let (start, end) = (cfg.rtp.ports.start, cfg.rtp.ports.end);
    let item = format!("rtp {start}-{end}");
    let pairs: Vec<u16> = (start..end).step_by(2).filter(|p| p % 2 == 0).collect();
    let mut taken = 0usize;
    for p in &pairs {
        if UdpSocket::bind(("0.0.0.0", *p)).is_err() {
            taken += 1;
        }
    }
    let total = pairs.len();
    let detail = format!("{} of {total} RTP ports free to bind", total - taken);
    let verdict = if total == 0 || taken == total {
        Verdict::Fail
    } else if taken * 10 > total {
        Verdict::Warn
    } else {
        Verdict::Ok
    };
    check(item, verdict, detail)
}

/// `roomline diagnose --call NUMBER`: the end-to-end check. `roomline call` (the test
/// phone, `phone`) calls NUMBER at the daemon's own UDP listener from 127.0.0.1 with a
/// 1 kHz tone for 3 s; the dialplan routes it like any call. Ok when it is answered and
/// RTP flows both ways. Credentials: `auth` (USER:PASSWORD), else those of the first
/// inbound trunk with credentials that admits 127.0.0.1.
pub async fn test_call(cfg: &Config, number: &str, auth: Option<&str>) -> Check {
    use crate::phone::{self, Mode, audio::Source};
    let item = format!("test call to {}", crate::logging::Phone(number));
    let Some(listener) = cfg
        .sip
        .listeners
        .iter()
        .find(|l| l.transport == Transport::Udp)
    else {
        return check(item, Verdict::Fail, "no UDP listener to call");
    };
    let ip = match listener.address.ip() {
        ip if ip.is_unspecified() => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    let to = format!(
        "sip:{number}@{}",
        crate::sip::uri::host_port(SocketAddr::new(ip, listener.address.port()))
    );
    let (target, number) = match phone::parse_to(&to, None) {
        Ok(x) => x,
        Err(e) => return check(item, Verdict::Fail, e),
    };
    let local = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    let auth = match auth {
        Some(a) => match a.split_once(':') {
            Some((u, p)) => Some((u.to_string(), p.to_string())),
            None => return check(item, Verdict::Fail, "--call-auth: expected USER:PASSWORD"),
        },
        None => cfg
            .trunks
            .iter()
            .filter_map(|t| t.inbound.as_ref())
            .filter(|i| {
                i.allowed_addresses.is_empty()
                    || i.allowed_addresses.iter().any(|n| n.contains(&local))
            })
            .find_map(|i| i.auth.as_ref())
            .map(|c| (c.username.clone(), c.password.expose().to_string())),
    };
    let opts = phone::Options {
        mode: Mode::Dial { target, number },
        from: "roomline-diagnose".into(),
        auth,
        bind: local,
        source: Source::Tone { hz: 1000.0 },
        record: None,
        dtmf: String::new(),
        duration: Duration::from_secs(3),
        timeout: Duration::from_secs(15),
        answer_after: Duration::ZERO,
        expect_tone: None,
        rtp_ports: crate::config::PortRange {
            start: 40000,
            end: 40999,
        },
        ca_file: None,
    };
    let mut report = None;
    if let Err(e) = phone::run(opts, |r| report = Some(r)).await {
        return check(item, Verdict::Fail, e);
    }
    let Some(r) = report else {
        return check(item, Verdict::Fail, "no report");
    };
    if let Some(f) = &r.failure {
        return check(item, Verdict::Fail, f.clone());
    }
    let st = r.stats.unwrap_or_default();
    let detail = format!(
        "answered in {:.2} s ({}), RTP sent {} received {} (lost {})",
        r.answered_after.unwrap_or_default().as_secs_f64(),
        r.codec.as_deref().unwrap_or("?"),
        st.tx.packets,
        st.rx.packets,
        st.rx.lost
    );
    match r.audio_failure() {
        Some(why) => check(item, Verdict::Fail, format!("{detail}: {why}")),
        None => check(item, Verdict::Ok, detail),
    }
}

/// Prints the report; the exit status (0 if nothing failed).
pub fn print(checks: &[Check]) -> bool {
    for c in checks {
        println!("{:<4} {}: {}", c.verdict.word(), c.item, c.detail);
    }
    let failed = checks.iter().filter(|c| c.verdict == Verdict::Fail).count();
    if failed == 0 {
        println!("verdict: ok");
    } else {
        println!(
            "verdict: {failed} check{} failed",
            if failed == 1 { "" } else { "s" }
        );
    }
    failed == 0
}
