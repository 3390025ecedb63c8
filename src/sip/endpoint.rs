//! The SIP endpoint task: every received message passes here first. It applies the
//! receive-side checks (`sip::message`), stamps Via `received`/`rport`, routes responses
//! and in-dialog requests to the task that owns the Call-ID over a channel, answers what
//! needs no call (OPTIONS, 4xx/5xx for bad or unwanted requests, 481 for unknown dialogs)
//! with its own transactions (`txtable`, matched per RFC 3261 section 17.2.3), and admits
//! new INVITEs through `admission`: draining and admission limits (503), per-source flood
//! limit (dropped), RFC 3261 section 8.2 request checks, trunk matching by source address
//! (403 or drop), and digest auth (401 with qop=auth, 403). An admitted INVITE goes to the
//! call manager with its own event channel. This task owns its tables; nothing is shared
//! with call tasks but channels. Tests: `tests/sip_endpoint.rs` (RFC 4475 over UDP, sipp
//! scenarios, transaction matching on the wire) and the unit tests below.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::admission::{self, IN_DIALOG, NOT_IMPLEMENTED, SourceLimiter};
pub use super::admission::{ACCEPT, ALLOW, SUPPORTED};
use super::build::{self, Outgoing};
use super::call_rate::CallRate;
use super::digest::{Authenticator, Verdict};
use super::incoming::Linger;
pub use super::incoming::{Incoming, SipEvent};
use super::message::{self, Message};
use super::refusals::{Refusal, Refusals};
use super::transaction::Timers;
use super::transport::{Flow, Received, Transports};
use super::txkey::ServerKey;
use super::txtable::TxTable;
use super::uri::{self, Uri, Via};
use crate::clock::{now, unix_secs};
use crate::config::defaults;
use crate::config::{Config, RuleAction, Transport, UnmatchedInbound};
use crate::dialplan::trunk_match::{self as matching, InboundMatch};
use crate::dialplan::{self, CallSummary};
use crate::ops::metrics as m;

/// Entries in the endpoint's own transaction table (rejections, OPTIONS).
const MAX_TRANSACTIONS: usize = 16_384;
/// Responses kept for retransmitted requests of calls that have ended.
const MAX_LINGER: usize = 8192;
/// Queued events per call.
pub const CALL_QUEUE: usize = 64;

/// An admitted inbound INVITE, for the call manager.
pub struct InboundInvite {
    pub invite: Incoming,
    /// The trunk it came through.
    pub trunk: String,
    /// The configuration in force when it arrived: the call keeps it.
    pub config: Arc<Config>,
    /// Everything else with this Call-ID.
    pub events: mpsc::Receiver<SipEvent>,
}

enum Command {
    Register {
        call_id: String,
        tx: mpsc::Sender<SipEvent>,
        /// Requests with the Call-ID go to `tx` too (a dialog); else only responses do.
        requests: bool,
        done: oneshot::Sender<bool>,
    },
    Unregister {
        call_id: String,
        linger: Vec<Linger>,
    },
    Drain,
    /// A call from this source ended as a refusal that cost nothing (a wrong PIN): its
    /// calls-per-second token is given back.
    Refund(IpAddr),
    /// A liveness round trip (the systemd watchdog).
    Ping(oneshot::Sender<()>),
}

/// What call tasks, registrations and the daemon use to talk to the endpoint.
#[derive(Clone)]
pub struct EndpointHandle {
    cmd: mpsc::Sender<Command>,
    pub transports: Arc<Transports>,
    /// Calls in progress (inbound and outbound), for admission.
    pub active_calls: Arc<AtomicUsize>,
    pub public_ip: Option<IpAddr>,
    pub user_agent: String,
}

impl EndpointHandle {
    /// Routes every message with `call_id` to the returned receiver (outbound calls).
    /// None if the Call-ID is taken.
    pub async fn register(&self, call_id: &str) -> Option<mpsc::Receiver<SipEvent>> {
        self.register_route(call_id, true).await
    }

    /// Routes the responses with `call_id` to the returned receiver (a lone client
    /// transaction: a registration, a ping). Requests with it are the endpoint's own, so
    /// a request looped back to this daemon (a trunk whose address is the daemon itself)
    /// is answered like any other. None if the Call-ID is taken.
    pub async fn register_responses(&self, call_id: &str) -> Option<mpsc::Receiver<SipEvent>> {
        self.register_route(call_id, false).await
    }

    async fn register_route(
        &self,
        call_id: &str,
        requests: bool,
    ) -> Option<mpsc::Receiver<SipEvent>> {
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        let (done, ok) = oneshot::channel();
        self.cmd
            .send(Command::Register {
                call_id: call_id.to_string(),
                tx,
                requests,
                done,
            })
            .await
            .ok()?;
        ok.await.ok()?.then_some(rx)
    }

    /// The Call-ID is done; its late retransmissions get `linger` answers for a while.
    pub fn unregister(&self, call_id: &str, linger: Vec<Linger>) {
        let _ = self.cmd.try_send(Command::Unregister {
            call_id: call_id.to_string(),
            linger,
        });
    }

    /// A round trip through the endpoint task: false if it does not answer within
    /// `limit` (a stuck runtime or endpoint).
    pub async fn ping(&self, limit: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.cmd.try_send(Command::Ping(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(limit, rx).await, Ok(Ok(())))
    }

    /// Gives back the calls-per-second token of a call from `source` that was refused
    /// after admission at no cost (a wrong PIN).
    pub fn refund_call(&self, source: IpAddr) {
        let _ = self.cmd.try_send(Command::Refund(source));
    }

    /// Stop admitting calls: INVITE gets 503, OPTIONS 503.
    pub async fn drain(&self) {
        let _ = self.cmd.send(Command::Drain).await;
    }

    /// The host:port we are reachable at on `flow` (Via, Contact): the public IP when
    /// configured, else the flow's local address (or the route's source address for a
    /// wildcard listener).
    pub fn advertised(&self, flow: &Flow) -> SocketAddr {
        let ip = self.public_ip.unwrap_or_else(|| {
            let ip = flow.local.ip();
            if ip.is_unspecified() {
                super::transport::local_ip_towards(flow.remote.ip()).unwrap_or(ip)
            } else {
                ip
            }
        });
        let port = if flow.is_reliable() {
            // a connection's local port is ephemeral: advertise the listener's
            self.transports
                .listener(flow.transport, flow.remote)
                .map_or(flow.local.port(), |a| a.port())
        } else {
            flow.local.port()
        };
        SocketAddr::new(ip, port)
    }

    /// A Via for a request we send on `flow`.
    pub fn via(&self, flow: &Flow, branch: &str) -> String {
        format!("{};branch={branch};rport", self.via_sent_by(flow))
    }

    /// The Via of our requests on `flow` up to its parameters: protocol and sent-by.
    pub fn via_sent_by(&self, flow: &Flow) -> String {
        format!(
            "SIP/2.0/{} {}",
            flow.transport.as_str().to_ascii_uppercase(),
            uri::host_port(self.advertised(flow))
        )
    }

    /// Our Contact on `flow`.
    pub fn contact(&self, flow: &Flow) -> String {
        let t = match flow.transport {
            Transport::Udp => "",
            Transport::Tcp => ";transport=tcp",
            Transport::Tls => ";transport=tls",
        };
        let scheme = if flow.transport == Transport::Tls {
            "sips"
        } else {
            "sip"
        };
        format!(
            "<{scheme}:roomline@{}{t}>",
            uri::host_port(self.advertised(flow))
        )
    }
}

/// Where the messages of a Call-ID go.
struct Route {
    tx: mpsc::Sender<SipEvent>,
    /// Requests too (a call's dialog), not only responses (a ping, a registration).
    requests: bool,
}

/// Everything the endpoint task owns.
pub struct Endpoint {
    handle: EndpointHandle,
    rx: mpsc::Receiver<Received>,
    cmd_rx: mpsc::Receiver<Command>,
    config: watch::Receiver<Arc<Config>>,
    calls_tx: mpsc::Sender<InboundInvite>,
    /// The task that owns each Call-ID.
    routes: HashMap<String, Route>,
    txs: TxTable,
    linger: HashMap<(String, ServerKey), (Instant, Linger)>,
    linger_order: VecDeque<(Instant, (String, ServerKey))>,
    auth: Authenticator,
    limiter: SourceLimiter,
    call_rate: CallRate,
    refusals: Refusals,
    draining: bool,
    timers: Timers,
    last_sweep: Instant,
}

impl Endpoint {
    /// Binds the listeners of `config` and returns the endpoint (run it with
    /// [`Endpoint::run`]), its handle, and the stream of admitted INVITEs.
    pub async fn bind(
        config: watch::Receiver<Arc<Config>>,
        timers: Timers,
    ) -> Result<
        (Endpoint, EndpointHandle, mpsc::Receiver<InboundInvite>),
        super::transport::BindError,
    > {
        let cfg = config.borrow().clone();
        let (tx, rx) = mpsc::channel(super::transport::ENDPOINT_QUEUE);
        let transports = Arc::new(Transports::bind(&cfg.sip.listeners, tx).await?);
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (calls_tx, calls_rx) = mpsc::channel(256);
        let handle = EndpointHandle {
            cmd: cmd_tx,
            transports,
            active_calls: Arc::new(AtomicUsize::new(0)),
            public_ip: cfg.sip.public_ip,
            user_agent: cfg.sip.user_agent.clone(),
        };
        let mut key = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut key);
        let t = now();
        let ep = Endpoint {
            handle: handle.clone(),
            rx,
            cmd_rx,
            config,
            calls_tx,
            routes: HashMap::new(),
            txs: TxTable::new(MAX_TRANSACTIONS),
            linger: HashMap::new(),
            linger_order: VecDeque::new(),
            auth: Authenticator::new(
                defaults::SIP_REALM,
                key,
                cfg.sip.auth_nonce_ttl.as_secs(),
                65_536,
            ),
            limiter: SourceLimiter::new(
                defaults::SOURCE_REQUESTS_PER_SECOND,
                defaults::SOURCE_REQUESTS_BURST,
            ),
            call_rate: CallRate::new(cfg.limits.max_calls_per_second, t),
            refusals: Refusals::new(),
            draining: false,
            timers,
            last_sweep: t,
        };
        Ok((ep, handle, calls_rx))
    }

    /// Runs until every handle is dropped and the transports close.
    pub async fn run(mut self) {
        loop {
            let next_timer = self
                .txs
                .poll_timeout()
                .unwrap_or_else(|| now() + Duration::from_secs(1))
                .min(now() + Duration::from_secs(1));
            tokio::select! {
                r = self.rx.recv() => match r {
                    Some(r) => self.on_received(r),
                    None => break,
                },
                c = self.cmd_rx.recv() => match c {
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(next_timer)) => {}
            }
            self.on_timers();
        }
        tracing::debug!("SIP endpoint stopped");
    }

    fn on_command(&mut self, c: Command) {
        match c {
            Command::Register {
                call_id,
                tx,
                requests,
                done,
            } => {
                let free = self.routes.get(&call_id).is_none_or(|r| r.tx.is_closed());
                if free {
                    self.routes.insert(call_id, Route { tx, requests });
                }
                let _ = done.send(free);
            }
            Command::Unregister { call_id, linger } => {
                self.routes.remove(&call_id);
                let t = now();
                for l in linger {
                    if self.linger.len() >= MAX_LINGER
                        && let Some((_, k)) = self.linger_order.pop_front()
                    {
                        self.linger.remove(&k);
                    }
                    let key = (call_id.clone(), l.key.clone());
                    self.linger_order.push_back((t, key.clone()));
                    self.linger.insert(key, (t, l));
                }
            }
            Command::Drain => {
                self.draining = true;
            }
            Command::Refund(source) => {
                let rate = self.config.borrow().limits.max_calls_per_second;
                self.call_rate.refund(source, rate);
            }
            Command::Ping(done) => {
                let _ = done.send(());
            }
        }
    }

    fn on_timers(&mut self) {
        let t = now();
        self.txs.handle_timeout(t);
        self.flush();
        for line in self.refusals.poll(t) {
            line.log("", "");
        }
        if t.saturating_duration_since(self.last_sweep) >= Duration::from_secs(5) {
            self.last_sweep = t;
            self.limiter.sweep(t);
            self.routes.retain(|_, r| !r.tx.is_closed());
            let linger_for = self.timers.t1 * 64;
            while let Some((at, _)) = self.linger_order.front() {
                if t.saturating_duration_since(*at) < linger_for {
                    break;
                }
                let (_, k) = self.linger_order.pop_front().expect("front");
                self.linger.remove(&k);
            }
            metrics::gauge!(m::SIP_ENDPOINT_TRANSACTIONS).set(self.txs.len() as f64);
        }
    }

    /// Sends what the endpoint's transactions want sent.
    fn flush(&mut self) {
        while let Some((flow, bytes)) = self.txs.poll_transmit() {
            let _ = flow.send(&bytes);
        }
    }

    fn on_received(&mut self, r: Received) {
        let t = now();
        let msg = match message::parse(&r.bytes) {
            Ok(msg) => msg,
            Err(e) => {
                metrics::counter!(m::SIP_INVALID, "status" => e.status().map_or("drop".to_string(), |s| s.to_string())).increment(1);
                tracing::debug!(remote = %r.flow.remote, error = %e, "invalid SIP message");
                if let Some(status) = e.status()
                    && let Some(bytes) = best_effort_response(&r.bytes, status, e.invalid.reason())
                {
                    let _ = r.flow.send(&bytes);
                }
                return;
            }
        };
        if msg.trailing > 0 && !r.flow.is_reliable() {
            tracing::debug!(remote = %r.flow.remote, bytes = msg.trailing, "ignoring bytes after Content-Length");
        }
        let Ok(mut via) = Via::top(msg.headers_named("Via")) else {
            return;
        };
        if msg.is_request() {
            metrics::counter!(m::SIP_REQUESTS, "method" => metric_method(msg.method().unwrap_or(""))).increment(1);
            via.stamp_received(r.flow.remote);
            let mut msg = msg;
            set_top_via(&mut msg, &via);
            let flow = if r.flow.is_reliable() {
                r.flow
            } else {
                let to = via.response_address().unwrap_or(r.flow.remote);
                r.flow.to(to)
            };
            self.on_request(Incoming {
                msg,
                flow,
                via,
                at: t,
            });
        } else {
            let status = match &msg.start {
                message::StartLine::Response { status, .. } => *status,
                _ => 0,
            };
            metrics::counter!(m::SIP_RESPONSES, "class" => status_class(status)).increment(1);
            let call_id = msg.header("Call-ID").unwrap_or("").to_string();
            let inc = Incoming {
                msg,
                flow: r.flow,
                via,
                at: t,
            };
            match self.routes.get(&call_id) {
                Some(r) => {
                    if r.tx.try_send(SipEvent::Response(inc)).is_err() {
                        metrics::counter!(m::SIP_DROPPED, "reason" => "call_queue").increment(1);
                    }
                }
                // RFC 3261 section 17.1.3: a response matching no transaction is dropped
                None => {
                    metrics::counter!(m::SIP_DROPPED, "reason" => "no_transaction").increment(1)
                }
            }
        }
    }

    fn reply(&mut self, req: &Incoming, out: Outgoing) {
        let status: u16 = out
            .start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(500);
        self.reply_status(req, status, out);
    }

    /// Answers `req` through a server transaction of the endpoint's own (retransmitted
    /// finals for INVITE until ACK; absorbed request retransmissions).
    fn reply_status(&mut self, req: &Incoming, status: u16, mut out: Outgoing) {
        count_response_sent(status);
        out.push("Server", &self.handle.user_agent);
        self.txs.respond(
            req.at,
            req.server_key(),
            req.flow.clone(),
            self.timers,
            status,
            out.to_bytes(),
        );
        self.flush();
    }

    fn respond(&mut self, req: &Incoming, status: u16) {
        let out = build::response_to(&req.msg, status, Some(&build::new_tag()));
        self.reply_status(req, status, out);
    }

    fn on_request(&mut self, req: Incoming) {
        let method = req.method().to_string();
        let call_id = req.call_id().to_string();
        // 1. a Call-ID owned by a call (a ping's or registration's own request looped
        // back to us is the endpoint's to answer)
        if let Some(r) = self.routes.get(&call_id) {
            if r.tx.is_closed() {
                self.routes.remove(&call_id);
            } else if r.requests {
                if r.tx.try_send(SipEvent::Request(req)).is_err() {
                    metrics::counter!(m::SIP_DROPPED, "reason" => "call_queue").increment(1);
                }
                return;
            }
        }
        // 2. a retransmission of what an ended call answered
        let key = req.server_key();
        if let Some((_, l)) = self.linger.get(&(call_id.clone(), key.clone())) {
            let _ = l.flow.send(&l.bytes);
            return;
        }
        // 3. our own transactions (RFC 3261 section 17.2.3: branch, sent-by and method):
        // retransmissions, the ACK of our final
        if self.txs.on_request(req.at, &key, &method) {
            self.flush();
            return;
        }
        match method.as_str() {
            // an ACK matching nothing is dropped
            "ACK" => return,
            "CANCEL" => {
                // the INVITE it cancels was answered here already (or never seen)
                let answered = self.txs.contains(&key.cancelled_invite());
                self.respond(&req, if answered { 200 } else { 481 });
                return;
            }
            _ => {}
        }
        // 4. the flood limit, before any work
        if matches!(method.as_str(), "INVITE" | "OPTIONS" | "REGISTER")
            && !self.limiter.allow(req.flow.remote.ip(), req.at)
        {
            metrics::counter!(m::SIP_DROPPED, "reason" => "rate_limit").increment(1);
            let detail = format!("method={method}");
            self.refused(&req, "flood_limit", detail, None, "", "");
            return;
        }
        // 5. RFC 3261 section 8.2 checks, in the section's order
        if let Some(out) = admission::check_request(&req) {
            self.reply(&req, out);
            return;
        }
        let has_to_tag = req.to().is_some_and(|t| t.tag().is_some());
        match method.as_str() {
            "OPTIONS" => {
                let status = if self.draining { 503 } else { 200 };
                let mut out = build::response_to(&req.msg, status, Some(&build::new_tag()));
                out.push("Allow", ALLOW);
                out.push("Accept", ACCEPT);
                out.push("Accept-Encoding", "identity");
                if !SUPPORTED.is_empty() {
                    out.push("Supported", SUPPORTED);
                }
                if self.draining {
                    out.push("Retry-After", "30");
                }
                self.reply_status(&req, status, out);
            }
            "INVITE" if has_to_tag => {
                // a re-INVITE for a dialog we do not have
                self.respond(&req, 481);
            }
            "INVITE" => self.on_new_invite(req),
            // REFER and NOTIFY may start a dialog (RFC 3515, RFC 6665): not served here
            m if NOT_IMPLEMENTED.contains(&m) && !has_to_tag => {
                let out = build::response_to(&req.msg, 501, Some(&build::new_tag()))
                    .header("Allow", ALLOW);
                self.reply(&req, out);
            }
            m if IN_DIALOG.contains(&m) => self.respond(&req, 481),
            _ => unreachable!("check_request answers every other method"),
        }
    }

    /// Logs a refusal through the aggregation (`refusals`): the first of its source and
    /// reason at once, the rest as one line per interval.
    fn refused(
        &mut self,
        req: &Incoming,
        reason: &'static str,
        detail: String,
        status: Option<u16>,
        caller: &str,
        called: &str,
    ) {
        let r = Refusal::new(req.flow.remote.ip(), reason, detail, status);
        if let Some(line) = self.refusals.record(r, req.at) {
            line.log(caller, called);
        }
    }

    /// A 503 with Retry-After for an INVITE refused by a limit.
    fn refuse_busy(&mut self, req: &Incoming, reason: &'static str, retry_after: &str) {
        metrics::counter!(m::CALLS_REFUSED, "reason" => reason).increment(1);
        self.refused(req, reason, String::new(), Some(503), "", "");
        let out = build::response_to(&req.msg, 503, Some(&build::new_tag()))
            .header("Retry-After", retry_after);
        self.reply(req, out);
    }

    fn on_new_invite(&mut self, req: Incoming) {
        let cfg = self.config.borrow().clone();
        if self.draining {
            return self.refuse_busy(&req, "draining", "30");
        }
        let active = self.handle.active_calls.load(Ordering::Relaxed);
        if active >= cfg.limits.max_concurrent_calls as usize {
            return self.refuse_busy(&req, "max_concurrent", "10");
        }
        // who is calling whom
        let called = called_number(&req);
        let caller = req
            .from()
            .and_then(|f| f.uri().ok())
            .and_then(|u| u.user_decoded())
            .map(|u| matching::number_from_user(&u))
            .unwrap_or_default();
        let trunk =
            match matching::match_inbound(&cfg.trunks, req.flow.remote.ip(), &called, &caller) {
                InboundMatch::Trunk(t) => t,
                InboundMatch::NoTrunk { nearest } => {
                    metrics::counter!(m::CALLS_REFUSED, "reason" => "no_trunk").increment(1);
                    let drop = cfg.sip.unmatched_inbound == UnmatchedInbound::Drop;
                    let status = (!drop).then_some(403);
                    let detail = format!("nearest trunk failed on {}", nearest.as_str());
                    self.refused(&req, "no_trunk", detail, status, &caller, &called);
                    if drop {
                        return;
                    }
                    return self.respond(&req, 403);
                }
            };
        // digest auth the trunk demands
        if let Some(creds) = trunk.inbound.as_ref().and_then(|i| i.auth.as_ref()) {
            let now_s = unix_secs();
            // `sip.auth_nonce_ttl` of the configuration in force (it may have been reloaded)
            self.auth.set_nonce_ttl(cfg.sip.auth_nonce_ttl.as_secs());
            match admission::verify_invite(&mut self.auth, creds, &req, now_s) {
                Some(Verdict::Authorized) => {
                    metrics::counter!(m::SIP_AUTH, "result" => "success").increment(1);
                }
                verdict @ (None | Some(Verdict::Stale)) => {
                    let stale = verdict.is_some();
                    metrics::counter!(m::SIP_AUTH, "result" => if stale { "stale" } else { "challenge" }).increment(1);
                    let out = admission::challenge(&mut self.auth, creds, &req, now_s, stale);
                    return self.reply(&req, out);
                }
                Some(Verdict::Rejected(why)) => {
                    metrics::counter!(m::SIP_AUTH, "result" => "rejected").increment(1);
                    // the why quotes the request: debug only, the aggregated line names the trunk
                    tracing::debug!(trunk = %trunk.name, source = %req.flow.remote.ip(),
                        reason = ?why, "INVITE with wrong credentials");
                    let detail = format!("trunk={}", trunk.name);
                    self.refused(&req, "auth_failed", detail, Some(403), &caller, &called);
                    return self.respond(&req, 403);
                }
            }
        }
        // the dialplan's refusals cost nothing: answered here, before the call rate
        let summary = CallSummary {
            caller: &caller,
            called: &called,
            trunk: &trunk.name,
            call_id: "",
            random: "",
        };
        let refusal = match dialplan::rule_for(&cfg, &summary) {
            None => Some(("no_route", "no rule matches".to_string(), 404, None)),
            Some(rule) => match &rule.action {
                RuleAction::Reject { status, reason } => Some((
                    "rejected",
                    format!("rule={}", rule.name),
                    *status,
                    reason.clone(),
                )),
                RuleAction::Join(_) => None,
            },
        };
        if let Some((label, detail, status, reason)) = refusal {
            metrics::counter!(m::CALLS_TOTAL, "direction" => "inbound", "trunk" => trunk.name.clone(), "outcome" => label)
                .increment(1);
            self.refused(&req, label, detail, Some(status), &caller, &called);
            let tag = build::new_tag();
            let out = match &reason {
                Some(r) => build::response_with_reason(&req.msg, status, r, Some(&tag)),
                None => build::response_to(&req.msg, status, Some(&tag)),
            };
            return self.reply_status(&req, status, out);
        }
        let limits = &cfg.limits;
        if let Err(why) = self.call_rate.allow(
            req.flow.remote.ip(),
            limits.max_calls_per_second,
            limits.max_calls_per_second_per_source,
            req.at,
        ) {
            return self.refuse_busy(&req, why.label(), "1");
        }
        // admitted: the call task owns this Call-ID from now on
        let call_id = req.call_id().to_string();
        let (tx, rx) = mpsc::channel(CALL_QUEUE);
        let trunk_name = trunk.name.clone();
        let inbound = InboundInvite {
            invite: req,
            trunk: trunk_name,
            config: cfg,
            events: rx,
        };
        match self.calls_tx.try_send(inbound) {
            Ok(()) => {
                self.routes.insert(call_id, Route { tx, requests: true });
            }
            Err(e) => {
                let inbound = e.into_inner();
                self.refuse_busy(&inbound.invite, "overload", "5");
            }
        }
    }
}

/// The called number: the Request-URI's user part, or the To URI's when the Request-URI
/// has none (as some PBXes send).
pub fn called_number(req: &Incoming) -> String {
    let from_ruri = req
        .request_uri()
        .and_then(|u| Uri::parse(u).ok())
        .and_then(|u| u.user_decoded());
    let user = from_ruri.or_else(|| {
        req.to()
            .and_then(|t| t.uri().ok())
            .and_then(|u| u.user_decoded())
    });
    user.map(|u| matching::number_from_user(&u))
        .unwrap_or_default()
}

/// Replaces the first element of the first Via header with `via`.
fn set_top_via(msg: &mut Message, via: &Via) {
    if let Some(h) = msg
        .headers
        .iter_mut()
        .find(|h| h.name.eq_ignore_ascii_case("Via"))
    {
        let elems = uri::split_list(&h.value);
        let mut v = via.to_string();
        for rest in elems.iter().skip(1) {
            v.push_str(", ");
            v.push_str(rest);
        }
        h.value = v;
    }
}

fn metric_method(m: &str) -> &'static str {
    match m {
        "INVITE" => "INVITE",
        "ACK" => "ACK",
        "BYE" => "BYE",
        "CANCEL" => "CANCEL",
        "OPTIONS" => "OPTIONS",
        "INFO" => "INFO",
        "UPDATE" => "UPDATE",
        "REGISTER" => "REGISTER",
        "NOTIFY" => "NOTIFY",
        "REFER" => "REFER",
        "PRACK" => "PRACK",
        _ => "other",
    }
}

/// Counts a response sent by the endpoint or a call task (`roomline_sip_responses_sent_total`;
/// retransmissions and 100 Trying are not counted).
pub fn count_response_sent(status: u16) {
    metrics::counter!(m::SIP_RESPONSES_SENT, "class" => status_class(status)).increment(1);
}

pub fn status_class(status: u16) -> &'static str {
    match status / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "6xx",
    }
}

/// A response to a request that failed the syntax checks: the headers a response needs
/// (Via, From, To, Call-ID, CSeq), copied raw from whatever could be read, the reason
/// in the phrase. A request missing some of them still gets its 400 (RFC 4475 section
/// 3.3.1) with those it has; None only without a Via, which the sender needs to match the
/// response to its transaction (then nothing is sent).
pub fn best_effort_response(data: &[u8], status: u16, reason: &str) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines = head.split("\r\n");
    let first = lines.next()?;
    if first.starts_with("SIP/") {
        return None;
    }
    let mut wanted: Vec<(String, String)> = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let canon = match name.to_ascii_lowercase().as_str() {
            "via" | "v" => "Via",
            "from" | "f" => "From",
            "to" | "t" => "To",
            "call-id" | "i" => "Call-ID",
            "cseq" => "CSeq",
            _ => continue,
        };
        let value = value.trim();
        if value.is_empty() || value.contains(['\r', '\n']) {
            continue;
        }
        wanted.push((canon.to_string(), value.to_string()));
    }
    let has = |n: &str| wanted.iter().any(|(k, _)| k == n);
    if !has("Via") {
        return None;
    }
    let phrase = format!("{} ({})", build::reason_phrase(status), reason);
    let mut out = Outgoing::response(status, &phrase);
    let mut seen_single: Vec<&str> = Vec::new();
    for (n, v) in &wanted {
        if n != "Via" {
            if seen_single.contains(&n.as_str()) {
                continue;
            }
            seen_single.push(n.as_str());
        }
        out.push(n, v);
    }
    Some(out.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_effort_response_copies_what_it_can() {
        let bad = b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
            f: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: 1\r\nCSeq: 1 INVITE\r\n\
            Content-Length: 99\r\n\r\n";
        let r = best_effort_response(bad, 400, "Content-Length too large").unwrap();
        let m = message::parse(&r).unwrap();
        assert!(matches!(
            m.start,
            message::StartLine::Response { status: 400, .. }
        ));
        assert_eq!(m.header("From"), Some("<sip:a@b>;tag=1"));
        assert!(best_effort_response(b"SIP/2.0 200 OK\r\n\r\n", 400, "x").is_none());
        assert!(best_effort_response(b"INVITE x SIP/2.0\r\nTo: a\r\n\r\n", 400, "x").is_none());
        // RFC 4475 section 3.3.1 (insuf): no From, To or Call-ID, still a 400
        let insuf = b"INVITE sip:x@y SIP/2.0\r\nCSeq: 1 INVITE\r\n\
            Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bK1\r\nl: 0\r\n\r\n";
        let r = best_effort_response(insuf, 400, "missing From header").unwrap();
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("SIP/2.0 400 "), "{text}");
        assert!(
            text.contains("Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bK1\r\n"),
            "{text}"
        );
        assert!(text.contains("CSeq: 1 INVITE\r\n"), "{text}");
    }
}
