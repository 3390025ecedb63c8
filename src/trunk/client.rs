//! One out-of-dialog request to a trunk and its final response, with the trunk's digest
//! credentials answering a 401/407 (once, again only for a stale nonce): what OPTIONS
//! pings and REGISTER use. The request's Call-ID is routed to this task by the endpoint
//! for as long as the exchange lasts.

use std::net::SocketAddr;
use std::time::Duration;

use crate::clock::now;
use crate::config::{Transport, Trunk};
use crate::sip::build::{self, Outgoing};
use crate::sip::digest::{self, Challenge};
use crate::sip::endpoint::{EndpointHandle, Incoming, SipEvent};
use crate::sip::transaction::{ClientNonInvite, Output, Timers};
use crate::sip::transport::Flow;

/// Where a trunk's outbound side is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkAddr {
    pub host: String,
    pub port: u16,
    pub transport: Transport,
}

impl TrunkAddr {
    pub fn of(t: &Trunk) -> Option<TrunkAddr> {
        let o = t.outbound.as_ref()?;
        let transport = o.target.transport.unwrap_or(o.transport);
        Some(TrunkAddr {
            host: o.target.host.clone(),
            port: o.target.port.unwrap_or(transport.default_port()),
            transport,
        })
    }

    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub fn uri(&self, user: Option<&str>) -> String {
        let scheme = if self.transport == Transport::Tls {
            "sips"
        } else {
            "sip"
        };
        let t = match self.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        match user {
            Some(u) => format!("{scheme}:{u}@{}{t}", self.host_port()),
            None => format!("{scheme}:{}{t}", self.host_port()),
        }
    }

    /// Resolves the host (an IP literal, or a name through the system resolver).
    pub async fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::lookup_host(self.host_port()),
        )
        .await
        .map_err(|_| format!("resolving {} timed out", self.host))?
        .map_err(|e| format!("cannot resolve {}: {e}", self.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", self.host))
    }

    /// A flow to the trunk: a UDP socket of ours, or a new TCP/TLS connection.
    pub async fn flow(&self, ep: &EndpointHandle) -> Result<Flow, String> {
        let addr = self.resolve().await?;
        match self.transport {
            Transport::Udp => ep
                .transports
                .udp_flow(addr)
                .ok_or_else(|| "no UDP listener".to_string()),
            t => ep.transports.connect(t, addr, &self.host).await,
        }
    }
}

/// A request to send: method, Request-URI, From/To, extra headers, body.
pub struct Request {
    pub method: &'static str,
    pub ruri: String,
    pub from: String,
    pub to: String,
    pub headers: Vec<(String, String)>,
    pub call_id: String,
    pub cseq: u32,
}

/// Why an exchange failed before a final response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// No response within 64*T1 (Timer F).
    Timeout,
    Transport(String),
    Shutdown,
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Timeout => f.write_str("no response"),
            ExchangeError::Transport(e) => write!(f, "transport error: {e}"),
            ExchangeError::Shutdown => f.write_str("shutting down"),
        }
    }
}

/// Sends `req` on `flow` and returns its final response; answers one challenge with
/// `creds` (username, password), and more only while the server says the nonce was stale.
/// The request's CSeq is advanced for every retry (and left at the last one used).
pub async fn exchange(
    ep: &EndpointHandle,
    flow: &Flow,
    timers: Timers,
    req: &mut Request,
    creds: Option<(&str, &str)>,
) -> Result<Incoming, ExchangeError> {
    let Some(mut events) = ep.register_responses(&req.call_id).await else {
        return Err(ExchangeError::Shutdown);
    };
    let result = exchange_on(ep, flow, timers, req, creds, &mut events).await;
    ep.unregister(&req.call_id, Vec::new());
    result
}

async fn exchange_on(
    ep: &EndpointHandle,
    flow: &Flow,
    timers: Timers,
    req: &mut Request,
    creds: Option<(&str, &str)>,
    events: &mut tokio::sync::mpsc::Receiver<SipEvent>,
) -> Result<Incoming, ExchangeError> {
    let mut authorization: Option<(bool, String)> = None;
    let mut tries = 0;
    loop {
        let branch = build::new_branch();
        let mut out = Outgoing::request(req.method, &req.ruri).header("Via", ep.via(flow, &branch));
        out.push("Max-Forwards", "70");
        out.push("From", &req.from);
        out.push("To", &req.to);
        out.push("Call-ID", &req.call_id);
        out.push("CSeq", format!("{} {}", req.cseq, req.method));
        out.push("User-Agent", &ep.user_agent);
        for (k, v) in &req.headers {
            out.push(k, v);
        }
        if let Some((proxy, v)) = &authorization {
            out.push(
                if *proxy {
                    "Proxy-Authorization"
                } else {
                    "Authorization"
                },
                v,
            );
        }
        let mut tx = ClientNonInvite::new(now(), flow.is_reliable(), timers, out.to_bytes());
        let resp = loop {
            let mut timeout = false;
            while let Some(o) = tx.poll_output() {
                match o {
                    Output::Send(b) => {
                        if let Err(e) = flow.send(&b)
                            && flow.is_reliable()
                        {
                            return Err(ExchangeError::Transport(e.to_string()));
                        }
                    }
                    Output::Timeout => timeout = true,
                    Output::TransportError => {
                        return Err(ExchangeError::Transport("transport error".into()));
                    }
                }
            }
            if timeout || tx.is_terminated() {
                return Err(ExchangeError::Timeout);
            }
            let deadline = tx
                .poll_timeout()
                .unwrap_or_else(|| now() + Duration::from_secs(1));
            tokio::select! {
                ev = events.recv() => match ev {
                    Some(SipEvent::Response(r)) if r.branch() == branch => {
                        let st = r.status();
                        if tx.on_response(r.at, st) && st >= 200 {
                            break r;
                        }
                    }
                    Some(_) => {}
                    None => return Err(ExchangeError::Shutdown),
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    tx.handle_timeout(now());
                }
            }
        };
        let status = resp.status();
        if (status == 401 || status == 407)
            && let Some((user, pass)) = creds
        {
            let name = if status == 407 {
                "Proxy-Authenticate"
            } else {
                "WWW-Authenticate"
            };
            let mut challenges: Vec<Challenge> = resp
                .msg
                .headers_named(name)
                .filter_map(|v| Challenge::parse(v).ok())
                .collect();
            challenges.sort_by_key(|c| match c.algorithm {
                digest::Algorithm::Sha256 => 0,
                _ => 1,
            });
            if let Some(c) = challenges.into_iter().next()
                && (tries == 0 || c.stale)
                && tries < 3
            {
                tries += 1;
                let v = digest::answer(&c, req.method, &req.ruri, user, pass, &build::new_tag(), 1);
                authorization = Some((status == 407, v));
                req.cseq += 1;
                continue;
            }
        }
        return Ok(resp);
    }
}
