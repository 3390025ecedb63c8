//! The SIP endpoint task: every received message passes here first. It applies the
//! receive-side checks (`sip::message`), stamps Via `received`/`rport`, routes responses
//! and in-dialog requests to the task that owns the Call-ID over a channel, answers what
//! needs no call (OPTIONS, 4xx/5xx for bad or unwanted requests, 481 for unknown dialogs)
//! with its own transactions, and admits new INVITEs: draining and admission limits (503),
//! per-source flood limit (dropped), RFC 3261 section 8.2 request checks (405/501, 416,
//! 420, 415, 406), trunk matching by source address (403 or drop), and digest auth (401
//! with qop=auth, 403). An admitted INVITE goes to the call manager with its own event
//! channel. This task owns its tables; nothing is shared with call tasks but channels.
//! Tests: `tests/sip_endpoint.rs` (RFC 4475 over UDP, sipp scenarios) and the unit tests
//! below.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::build::{self, Outgoing};
use super::digest::{Algorithm, Authenticator, Verdict};
use super::message::{self, Message};
use super::transaction::{Output, ServerInvite, ServerNonInvite, Timers};
use super::transport::{Flow, Received, Transports};
use super::uri::{self, NameAddr, Uri, UriError, Via};
use crate::config::defaults;
use crate::config::{Config, DigestAlgorithm, Transport, UnmatchedInbound};
use crate::dialplan::trunk_match::{self as matching, InboundMatch};
use crate::ops::metrics as m;

/// Methods Roomline implements (the Allow header).
pub const ALLOW: &str = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE";
/// Body types we read (the Accept header).
pub const ACCEPT: &str =
    "application/sdp, multipart/mixed, application/dtmf-relay, application/dtmf";
/// Option tags we support (Supported). None of the common extensions is claimed yet.
pub const SUPPORTED: &str = "";
/// Methods we know but do not serve outside a dialog: 405 (RFC 3261 section 8.2.1).
const NOT_ALLOWED: &[&str] = &["REGISTER", "SUBSCRIBE", "PUBLISH", "MESSAGE", "PRACK"];
/// In-dialog methods: outside a known dialog they get 481.
const IN_DIALOG: &[&str] = &["BYE", "INFO", "UPDATE", "NOTIFY", "REFER"];
/// Known methods we do not implement: 501 outside a dialog.
const NOT_IMPLEMENTED: &[&str] = &["NOTIFY", "REFER"];
/// Entries in the endpoint's own transaction table (rejections, OPTIONS).
const MAX_TRANSACTIONS: usize = 16_384;
/// Sources tracked by the flood limit.
const MAX_SOURCES: usize = 16_384;
/// Responses kept for retransmitted requests of calls that have ended.
const MAX_LINGER: usize = 8192;
/// Queued events per call.
pub const CALL_QUEUE: usize = 64;

/// A message for the task owning a Call-ID.
#[derive(Debug)]
pub struct Incoming {
    pub msg: Message,
    /// Where it came from and how to answer it (for UDP requests: towards the Via's
    /// received/rport address, on the socket it arrived on).
    pub flow: Flow,
    /// The top Via, stamped with received/rport (requests); as received (responses).
    pub via: Via,
    pub at: Instant,
}

impl Incoming {
    pub fn method(&self) -> &str {
        self.msg.method().unwrap_or("")
    }

    /// The status of a response (0 for a request).
    pub fn status(&self) -> u16 {
        match &self.msg.start {
            message::StartLine::Response { status, .. } => *status,
            _ => 0,
        }
    }

    pub fn call_id(&self) -> &str {
        self.msg.header("Call-ID").unwrap_or("")
    }

    pub fn cseq(&self) -> Option<(u32, &str)> {
        self.msg.cseq()
    }

    pub fn from(&self) -> Option<NameAddr> {
        NameAddr::parse(self.msg.header("From")?).ok()
    }

    pub fn to(&self) -> Option<NameAddr> {
        NameAddr::parse(self.msg.header("To")?).ok()
    }

    pub fn request_uri(&self) -> Option<&str> {
        match &self.msg.start {
            message::StartLine::Request { uri, .. } => Some(uri),
            _ => None,
        }
    }

    /// The branch of the top Via (or a key made from the RFC 2543 fields without one).
    pub fn branch(&self) -> String {
        transaction_branch(&self.msg, &self.via)
    }

    /// Sends a response built by the caller on this request's flow.
    pub fn reply(&self, out: &Outgoing) {
        let _ = self.flow.send(&out.to_bytes());
    }
}

/// RFC 3261 section 17.2.3: the branch identifies the transaction; requests from RFC 2543
/// peers (no magic cookie) are keyed by the fields that identify it there.
fn transaction_branch(msg: &Message, via: &Via) -> String {
    if via.rfc3261_branch() {
        return via.branch().unwrap_or("").to_string();
    }
    let from_tag = msg
        .header("From")
        .and_then(|f| NameAddr::parse(f).ok())
        .and_then(|n| n.tag().map(str::to_string))
        .unwrap_or_default();
    let cseq = msg.cseq().map(|(n, _)| n).unwrap_or(0);
    format!(
        "2543:{}:{}:{}:{}:{}",
        msg.header("Call-ID").unwrap_or(""),
        cseq,
        from_tag,
        via.sent_by(),
        via.branch().unwrap_or("")
    )
}

/// What the endpoint sends a call task.
#[derive(Debug)]
pub enum SipEvent {
    Request(Incoming),
    Response(Incoming),
}

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

/// A response to re-send when a request arrives again after its call has ended.
#[derive(Debug, Clone)]
pub struct Linger {
    pub branch: String,
    pub bytes: Vec<u8>,
    pub flow: Flow,
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
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
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

/// Per-source token buckets (the flood limit), bounded.
struct SourceLimiter {
    rate: f64,
    burst: f64,
    buckets: HashMap<IpAddr, (f64, Instant)>,
    order: VecDeque<IpAddr>,
}

impl SourceLimiter {
    fn new(rate: u32, burst: u32) -> Self {
        SourceLimiter {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Takes a token for `ip`; false when it is over its rate.
    fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if !self.buckets.contains_key(&ip) {
            while self.buckets.len() >= MAX_SOURCES {
                match self.order.pop_front() {
                    Some(old) => {
                        self.buckets.remove(&old);
                    }
                    None => break,
                }
            }
            self.buckets.insert(ip, (self.burst, now));
            self.order.push_back(ip);
        }
        let (tokens, last) = self.buckets.get_mut(&ip).expect("inserted above");
        let dt = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + dt * self.rate).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets sources whose bucket has refilled (idle ones).
    fn sweep(&mut self, now: Instant) {
        let full = self.burst / self.rate;
        self.buckets
            .retain(|_, (_, last)| now.saturating_duration_since(*last).as_secs_f64() < full);
        let b = &self.buckets;
        self.order.retain(|ip| b.contains_key(ip));
    }
}

/// Global new-call rate (admission), a token bucket.
struct CallRate {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl CallRate {
    fn allow(&mut self, rate: u32, now: Instant) -> bool {
        self.rate = f64::from(rate.max(1));
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

enum EndpointTx {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

struct TxEntry {
    tx: EndpointTx,
    flow: Flow,
}

/// The endpoint's own transactions, keyed by (branch, method class).
#[derive(Default)]
struct TxTable {
    entries: HashMap<(String, bool), TxEntry>,
    order: VecDeque<(String, bool)>,
    timers: BinaryHeap<Reverse<(Instant, (String, bool))>>,
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
    linger: HashMap<(String, String), (Instant, Linger)>,
    linger_order: VecDeque<(Instant, (String, String))>,
    auth: Authenticator,
    limiter: SourceLimiter,
    call_rate: CallRate,
    draining: bool,
    timers: Timers,
    last_sweep: Instant,
}

#[expect(
    clippy::disallowed_methods,
    reason = "wall clock for a Unix time; crate::clock::unix_secs is the shared reader"
)]
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
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
            txs: TxTable::default(),
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
            call_rate: CallRate {
                rate: 1.0,
                tokens: f64::from(cfg.limits.max_calls_per_second.max(1)),
                last: t,
            },
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
                .timers
                .peek()
                .map(|Reverse((t, _))| *t)
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
                    let key = (call_id.clone(), l.branch.clone());
                    self.linger_order.push_back((t, key.clone()));
                    self.linger.insert(key, (t, l));
                }
            }
            Command::Drain => {
                self.draining = true;
            }
            Command::Ping(done) => {
                let _ = done.send(());
            }
        }
    }

    fn on_timers(&mut self) {
        let t = now();
        while let Some(Reverse((at, _))) = self.txs.timers.peek() {
            if *at > t {
                break;
            }
            let Reverse((_, key)) = self.txs.timers.pop().expect("peeked");
            let Some(entry) = self.txs.entries.get_mut(&key) else {
                continue;
            };
            match &mut entry.tx {
                EndpointTx::Invite(tx) => {
                    if tx.poll_timeout().is_some_and(|d| d <= t) {
                        tx.handle_timeout(t);
                    }
                }
                EndpointTx::NonInvite(tx) => {
                    if tx.poll_timeout().is_some_and(|d| d <= t) {
                        tx.handle_timeout(t);
                    }
                }
            }
            self.drive_tx(&key);
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
            metrics::gauge!(m::SIP_ENDPOINT_TRANSACTIONS).set(self.txs.entries.len() as f64);
        }
    }

    /// Sends a transaction's output, re-arms its timer, forgets it once terminated.
    fn drive_tx(&mut self, key: &(String, bool)) {
        let Some(entry) = self.txs.entries.get_mut(key) else {
            return;
        };
        let (outputs, next, done) = match &mut entry.tx {
            EndpointTx::Invite(tx) => {
                let mut o = Vec::new();
                while let Some(x) = tx.poll_output() {
                    o.push(x);
                }
                (o, tx.poll_timeout(), tx.is_terminated())
            }
            EndpointTx::NonInvite(tx) => {
                let mut o = Vec::new();
                while let Some(x) = tx.poll_output() {
                    o.push(x);
                }
                (o, tx.poll_timeout(), tx.is_terminated())
            }
        };
        for o in outputs {
            if let Output::Send(bytes) = o {
                let _ = entry.flow.send(&bytes);
            }
        }
        if done {
            self.txs.entries.remove(key);
        } else if let Some(at) = next {
            self.txs.timers.push(Reverse((at, key.clone())));
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
        let bytes = out.to_bytes();
        let method = req.method();
        let is_invite = method == "INVITE";
        let key = (req.branch(), is_invite);
        let t = req.at;
        let reliable = req.flow.is_reliable();
        if self.txs.entries.len() >= MAX_TRANSACTIONS {
            // full: answer without keeping state
            let _ = req.flow.send(&bytes);
            return;
        }
        let tx = if is_invite {
            let mut tx = ServerInvite::new(t, reliable, self.timers);
            let _ = tx.respond(t, status, bytes);
            EndpointTx::Invite(tx)
        } else {
            let mut tx = ServerNonInvite::new(t, reliable, self.timers);
            let _ = tx.respond(t, status, bytes);
            EndpointTx::NonInvite(tx)
        };
        self.txs.entries.insert(
            key.clone(),
            TxEntry {
                tx,
                flow: req.flow.clone(),
            },
        );
        self.txs.order.push_back(key.clone());
        while self.txs.order.len() > MAX_TRANSACTIONS {
            if let Some(k) = self.txs.order.pop_front()
                && self.txs.entries.contains_key(&k)
                && k != key
            {
                self.txs.entries.remove(&k);
            }
        }
        if self.txs.order.len() > self.txs.entries.len() * 2 + 64 {
            let e = &self.txs.entries;
            self.txs.order.retain(|k| e.contains_key(k));
        }
        self.drive_tx(&key);
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
        let branch = req.branch();
        if let Some((_, l)) = self.linger.get(&(call_id.clone(), branch.clone())) {
            let _ = l.flow.send(&l.bytes);
            return;
        }
        // 3. our own transactions: retransmissions, ACK of our final, CANCEL of it
        let is_invite_class = method == "INVITE" || method == "ACK";
        let key = (branch.clone(), is_invite_class);
        if let Some(entry) = self.txs.entries.get_mut(&key) {
            match (&mut entry.tx, method.as_str()) {
                (EndpointTx::Invite(tx), "ACK") => {
                    tx.on_ack(req.at);
                }
                (EndpointTx::Invite(tx), "INVITE") => tx.on_request(req.at),
                (EndpointTx::NonInvite(tx), _) => tx.on_request(req.at),
                _ => {}
            }
            self.drive_tx(&key);
            return;
        }
        match method.as_str() {
            // an ACK matching nothing (RFC 3261 section 17.2.3) is dropped
            "ACK" => return,
            "CANCEL" => {
                // the INVITE it cancels was answered here already (or never seen)
                let answered = self.txs.entries.contains_key(&(branch.clone(), true));
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
            return;
        }
        // 5. RFC 3261 section 8.2 checks, in the section's order
        if let Some(out) = self.check_request(&req) {
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

    /// RFC 3261 section 8.2.1-8.2.3 on an out-of-dialog request: the response for one we
    /// refuse, or None to go on.
    fn check_request(&self, req: &Incoming) -> Option<Outgoing> {
        let method = req.method();
        let tag = build::new_tag();
        let resp = |status| build::response_to(&req.msg, status, Some(&tag));
        // 8.2.1 method inspection (method names are case-sensitive)
        let known = matches!(method, "INVITE" | "OPTIONS") || IN_DIALOG.contains(&method);
        if !known {
            let status = if NOT_ALLOWED.contains(&method) {
                405
            } else {
                501
            };
            return Some(resp(status).header("Allow", ALLOW));
        }
        // 8.2.2.1 To and Request-URI
        let uri = req.request_uri().unwrap_or("");
        if let Err(UriError::UnsupportedScheme(_)) = Uri::parse(uri) {
            return Some(resp(416));
        }
        if let Some(to) = req.to()
            && let Err(UriError::UnsupportedScheme(_)) = to.uri()
        {
            return Some(resp(416));
        }
        // 8.2.2.3 Require
        let unsupported: Vec<String> = uri::tokens(req.msg.headers_named("Require"))
            .into_iter()
            .filter(|t| !SUPPORTED.split(',').any(|s| s.trim() == t))
            .collect();
        if !unsupported.is_empty() {
            return Some(resp(420).header("Unsupported", unsupported.join(", ")));
        }
        // 8.2.3 content processing
        if let Some(enc) = req.msg.header("Content-Encoding")
            && uri::tokens(std::iter::once(enc))
                .iter()
                .any(|e| e != "identity")
        {
            return Some(
                resp(415)
                    .header("Accept", ACCEPT)
                    .header("Accept-Encoding", "identity"),
            );
        }
        if !req.msg.body.is_empty() {
            let ct = req
                .msg
                .header("Content-Type")
                .map(media_type)
                .unwrap_or_default();
            let ok = match method {
                "INVITE" | "UPDATE" | "OPTIONS" => {
                    ct == "application/sdp" || ct == "multipart/mixed"
                }
                "INFO" => matches!(
                    ct.as_str(),
                    "application/dtmf-relay" | "application/dtmf" | "application/sdp"
                ),
                "NOTIFY" => ct == "message/sipfrag",
                _ => true,
            };
            if !ok {
                return Some(resp(415).header("Accept", ACCEPT));
            }
        }
        // we answer an INVITE with SDP: the caller must accept it (section 8.2.3)
        if method == "INVITE" && !accepts_sdp(&req.msg) {
            return Some(resp(406).header("Accept", "application/sdp"));
        }
        None
    }

    fn on_new_invite(&mut self, req: Incoming) {
        let cfg = self.config.borrow().clone();
        if self.draining {
            metrics::counter!(m::CALLS_REFUSED, "reason" => "draining").increment(1);
            let out = build::response_to(&req.msg, 503, Some(&build::new_tag()))
                .header("Retry-After", "30");
            return self.reply(&req, out);
        }
        let active = self.handle.active_calls.load(Ordering::Relaxed);
        if active >= cfg.limits.max_concurrent_calls as usize {
            metrics::counter!(m::CALLS_REFUSED, "reason" => "max_concurrent").increment(1);
            let out = build::response_to(&req.msg, 503, Some(&build::new_tag()))
                .header("Retry-After", "10");
            return self.reply(&req, out);
        }
        // who is calling whom
        let called = called_number(&req);
        let caller = req
            .from()
            .and_then(|f| f.uri().ok())
            .and_then(|u| u.user_decoded())
            .map(|u| matching::number_from_user(&u))
            .unwrap_or_default();
        let trunk = match matching::match_inbound(
            &cfg.trunks,
            req.flow.remote.ip(),
            &called,
            &caller,
        ) {
            InboundMatch::Trunk(t) => t,
            InboundMatch::NoTrunk { nearest } => {
                metrics::counter!(m::CALLS_REFUSED, "reason" => "no_trunk").increment(1);
                tracing::info!(source = %req.flow.remote.ip(), called = %crate::logging::Phone(&called),
                    caller = %crate::logging::Phone(&caller), failed = nearest.as_str(),
                    "INVITE matches no trunk");
                if cfg.sip.unmatched_inbound == UnmatchedInbound::Drop {
                    return;
                }
                return self.respond(&req, 403);
            }
        };
        // digest auth the trunk demands
        if let Some(creds) = trunk.inbound.as_ref().and_then(|i| i.auth.as_ref()) {
            let uri = req.request_uri().unwrap_or("").to_string();
            let now_s = unix_secs();
            // `sip.auth_nonce_ttl` of the configuration in force (it may have been reloaded)
            self.auth.set_nonce_ttl(cfg.sip.auth_nonce_ttl.as_secs());
            let header = req.msg.header("Authorization").map(str::to_string);
            let verdict = header.as_ref().map(|h| {
                self.auth.verify(
                    now_s,
                    "INVITE",
                    &uri,
                    h,
                    &creds.username,
                    creds.password.expose(),
                )
            });
            // the algorithm used must be one the trunk allows
            let verdict = match (verdict, &header) {
                (Some(Verdict::Authorized), Some(h)) => {
                    let used = super::digest::DigestParams::parse(h)
                        .ok()
                        .and_then(|p| p.get("algorithm").map(str::to_ascii_lowercase))
                        .unwrap_or_else(|| "md5".into());
                    let allowed = creds.algorithms.iter().any(|a| match a {
                        DigestAlgorithm::Md5 => used == "md5",
                        DigestAlgorithm::Sha256 => used == "sha-256",
                    });
                    if allowed {
                        Some(Verdict::Authorized)
                    } else {
                        Some(Verdict::Rejected(super::digest::Rejection::Header(
                            super::digest::DigestError::UnsupportedAlgorithm(used),
                        )))
                    }
                }
                (v, _) => v,
            };
            match verdict {
                Some(Verdict::Authorized) => {}
                None | Some(Verdict::Stale) => {
                    let stale = verdict.is_some();
                    metrics::counter!(m::SIP_AUTH, "result" => if stale { "stale" } else { "challenge" }).increment(1);
                    let mut out = build::response_to(&req.msg, 401, Some(&build::new_tag()));
                    // RFC 8760 section 2.4: one challenge per algorithm, the preferred first
                    for alg in &creds.algorithms {
                        let a = match alg {
                            DigestAlgorithm::Md5 => Algorithm::Md5,
                            DigestAlgorithm::Sha256 => Algorithm::Sha256,
                        };
                        out.push("WWW-Authenticate", self.auth.challenge(now_s, a, stale));
                    }
                    return self.reply(&req, out);
                }
                Some(Verdict::Rejected(why)) => {
                    metrics::counter!(m::SIP_AUTH, "result" => "rejected").increment(1);
                    tracing::info!(trunk = %trunk.name, source = %req.flow.remote.ip(),
                        reason = ?why, "INVITE with wrong credentials");
                    return self.respond(&req, 403);
                }
            }
        }
        if !self
            .call_rate
            .allow(cfg.limits.max_calls_per_second, req.at)
        {
            metrics::counter!(m::CALLS_REFUSED, "reason" => "call_rate").increment(1);
            let out = build::response_to(&req.msg, 503, Some(&build::new_tag()))
                .header("Retry-After", "1");
            return self.reply(&req, out);
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
                metrics::counter!(m::CALLS_REFUSED, "reason" => "overload").increment(1);
                let out = build::response_to(&inbound.invite.msg, 503, Some(&build::new_tag()))
                    .header("Retry-After", "5");
                self.reply(&inbound.invite, out);
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

/// `type/subtype` of a Content-Type, lower-cased, parameters dropped.
pub fn media_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether a request's Accept (if any) admits application/sdp.
fn accepts_sdp(msg: &Message) -> bool {
    let values: Vec<&str> = msg.headers_named("Accept").collect();
    if values.is_empty() {
        return true;
    }
    let all: Vec<String> = values
        .iter()
        .flat_map(|v| uri::split_list(v))
        .map(media_type)
        .collect();
    // an empty Accept header means no body at all is acceptable
    all.iter()
        .any(|t| t == "application/sdp" || t == "application/*" || t == "*/*")
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
    fn source_limiter_is_bounded_and_refills() {
        let t0 = Instant::now();
        let mut l = SourceLimiter::new(10, 20);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let granted = (0..100).filter(|_| l.allow(ip, t0)).count();
        assert_eq!(granted, 20, "burst");
        assert!(l.allow(ip, t0 + Duration::from_millis(100)), "refilled one");
        for i in 0..(MAX_SOURCES as u32 + 100) {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            l.allow(ip, t0);
        }
        assert!(l.buckets.len() <= MAX_SOURCES);
        l.sweep(t0 + Duration::from_secs(10));
        assert!(l.buckets.is_empty());
    }

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

    #[test]
    fn accept_and_media_types() {
        let m = |accept: &str| {
            let text = format!(
                "OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\n\
                 To: <sip:x@y>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n{accept}Content-Length: 0\r\n\r\n"
            );
            message::parse(text.as_bytes()).unwrap()
        };
        assert!(accepts_sdp(&m("")));
        assert!(accepts_sdp(&m(
            "Accept: text/plain, application/SDP;level=1\r\n"
        )));
        assert!(accepts_sdp(&m("Accept: */*\r\n")));
        assert!(!accepts_sdp(&m("Accept: text/nobodyknowsthis\r\n")));
        assert_eq!(media_type(" Application/SDP ; x=1"), "application/sdp");
    }
}
