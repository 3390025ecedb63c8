//! SIP transactions, sans-IO: the four state machines of RFC 3261 section 17 (client and
//! server, INVITE and non-INVITE) with the Accepted state RFC 6026 adds for 2xx to INVITE.
//! They are byte-agnostic: the owner (a call task or the endpoint) matches messages to a
//! transaction (17.1.3, 17.2.3), builds every message itself and passes it in serialized;
//! the machine decides when bytes go out (again) on the transaction's flow, when the
//! transaction gives up, and when it ends. It never parses SIP, reads the clock, touches a
//! socket or spawns: every event takes `now`, `poll_timeout` says when to call
//! `handle_timeout`, and `poll_output` drains what to send or report.
//!
//! `reliable` means TCP or TLS: no retransmissions, and Timers D, I, J and K are zero, so
//! the states they guard end at once. One retransmission runs on every transport: the
//! UAS's 2xx to INVITE (RFC 3261 section 13.3.1.4), which `ServerInvite` does itself in
//! Accepted so that its owner need not.
//!
//! Every event first fires the timers due at its `now`, so an outcome never depends on
//! whether the owner called `handle_timeout` just before. Outputs queued by the event that
//! terminated a machine can still be drained; nothing is queued after that.
//!
//! Tests: each machine's documentation names its own; `random_events_*` drive all four
//! with seeded random events on a virtual clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// RFC 3261 section 17.1.1.2: Timer D on an unreliable transport is "at least 32 seconds".
const TIMER_D_MIN: Duration = Duration::from_secs(32);

/// Retransmission intervals never go below this, so a zero T1 or T2 cannot make
/// `handle_timeout` spin.
const MIN_INTERVAL: Duration = Duration::from_millis(1);

/// The timer values of RFC 3261 section 17.1.1.1 and table 4. Every other timer derives
/// from these three.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timers {
    /// Round-trip estimate (500 ms): the first retransmission interval, and 64*T1 is the
    /// transaction timeout (Timers B, F, H, J on UDP, L, M).
    pub t1: Duration,
    /// Longest retransmission interval for non-INVITE requests and for INVITE responses
    /// (4 s).
    pub t2: Duration,
    /// Longest time a message stays in the network (5 s): Timers I and K on UDP.
    pub t4: Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64*T1, 32 s by default: Timers B, F, H, J (UDP), L and M.
    pub fn t1_x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D on an unreliable transport: at least 32 s (17.1.1.2), and 64*T1 if T1 was
    /// raised, so that the client keeps absorbing retransmitted finals for as long as a
    /// server with the same T1 sends them (its Timer H).
    pub fn timer_d(&self) -> Duration {
        TIMER_D_MIN.max(self.t1_x64())
    }
}

/// What a machine asks its owner to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send these bytes on the transaction's flow: the first transmission or a
    /// retransmission of a request, response or ACK the owner passed in.
    Send(Vec<u8>),
    /// Timer B, F, H or L fired: the peer never answered (client) or never sent the ACK
    /// (server). For an unacknowledged 2xx the owner then ends the dialog with a BYE
    /// (RFC 3261 section 13.3.1.4).
    Timeout,
    /// The owner reported a transport error (17.1.4, 17.2.4); the transaction user should
    /// treat it as a failure of the transaction.
    TransportError,
}

/// Why `respond` refused a response. The machine is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RespondError {
    #[error("status {0} is not a SIP response code (100-699)")]
    InvalidStatus(u16),
    #[error("a final response was already sent on this transaction")]
    FinalAlreadySent,
    #[error("the transaction has terminated")]
    Terminated,
}

/// Response classes as the state machines see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// 1xx.
    Provisional,
    /// 2xx.
    Success,
    /// 300-699.
    NonSuccess,
}

fn classify(status: u16) -> Option<Class> {
    match status {
        100..=199 => Some(Class::Provisional),
        200..=299 => Some(Class::Success),
        300..=699 => Some(Class::NonSuccess),
        _ => None,
    }
}

/// A retransmission timer (A, E, G, or the UAS's 2xx timer): when it fires next, and the
/// interval that led there. `None` where an `Instant` would overflow: it never fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Retransmit {
    at: Instant,
    interval: Duration,
}

impl Retransmit {
    /// Armed with T1 (every retransmission timer starts there).
    fn start(now: Instant, t1: Duration) -> Option<Self> {
        let interval = t1.max(MIN_INTERVAL);
        Some(Retransmit {
            at: now.checked_add(interval)?,
            interval,
        })
    }

    /// After firing: next `interval` later.
    fn then(self, interval: Duration) -> Option<Self> {
        let interval = interval.max(MIN_INTERVAL);
        Some(Retransmit {
            at: self.at.checked_add(interval)?,
            interval,
        })
    }

    /// After firing: next at twice the interval, capped at `cap` if there is one.
    fn doubled(self, cap: Option<Duration>) -> Option<Self> {
        let twice = self.interval.saturating_mul(2);
        self.then(cap.map_or(twice, |cap| twice.min(cap)))
    }
}

/// The earliest pending timer. On a tie a timer that ends or gives up on the transaction
/// (`false`) goes before a retransmission (`true`): nothing is resent at the instant the
/// transaction gives up.
fn earliest<T: Copy>(timers: &[(Option<Instant>, bool, T)]) -> Option<(Instant, T)> {
    timers
        .iter()
        .filter_map(|&(at, retransmits, name)| Some((at?, retransmits, name)))
        .min_by_key(|&(at, retransmits, _)| (at, retransmits))
        .map(|(at, _, name)| (at, name))
}

fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// What every machine offers its owner: outputs to drain and a timer to run. The shell
/// side (`transport::Flow::drive`) sends the outputs on the transaction's flow.
pub trait Transaction {
    fn poll_output(&mut self) -> Option<Output>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn handle_timeout(&mut self, now: Instant);
    fn is_terminated(&self) -> bool;
}

macro_rules! transaction {
    ($($t:ty),*) => {$(
        impl Transaction for $t {
            fn poll_output(&mut self) -> Option<Output> {
                <$t>::poll_output(self)
            }
            fn poll_timeout(&self) -> Option<Instant> {
                <$t>::poll_timeout(self)
            }
            fn handle_timeout(&mut self, now: Instant) {
                <$t>::handle_timeout(self, now)
            }
            fn is_terminated(&self) -> bool {
                <$t>::is_terminated(self)
            }
        }
    )*};
}

transaction!(ServerInvite, ServerNonInvite, ClientInvite, ClientNonInvite);

// ---------------------------------------------------------------------------------------
// INVITE server transaction
// ---------------------------------------------------------------------------------------

/// States of the INVITE server transaction (RFC 3261 figure 7, RFC 6026 figure 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    Proceeding,
    Completed,
    Confirmed,
    Accepted,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerInviteTimer {
    G,
    H,
    I,
    /// RFC 3261 section 13.3.1.4's 2xx retransmission (unnamed there).
    Retransmit2xx,
    L,
}

/// The INVITE server transaction, RFC 3261 section 17.2.1 with RFC 6026 section 7.1:
///
/// - Proceeding: the TU's provisionals go out; a retransmitted INVITE re-sends the last.
/// - Completed (300-699 sent): Timer G re-sends the final on UDP at T1, 2T1, ... capped
///   at T2, and so does a retransmitted INVITE; the ACK moves to Confirmed; Timer H
///   (64*T1) without one gives `Output::Timeout`. Tests: `timer_g_*`, `timer_h_*`.
/// - Confirmed: absorbs further ACKs for Timer I (T4 on UDP, zero on TCP/TLS).
///   Tests: `timer_i_*`.
/// - Accepted (2xx sent, RFC 6026): the 2xx is re-sent at T1 doubling to T2 on every
///   transport until the ACK (13.3.1.4); retransmitted INVITEs are absorbed; ACKs go to
///   the TU. Timer L (64*T1) ends it, with `Output::Timeout` if no ACK came, which the
///   owner answers with a BYE. Tests: `accepted_*`, `timer_l_*`.
/// - A transport error is reported once and changes no state (RFC 6026 section 7.1):
///   the timers end the transaction. Tests: `server_invite_transport_error_*`.
#[derive(Debug, Clone)]
pub struct ServerInvite {
    state: ServerInviteState,
    reliable: bool,
    timers: Timers,
    out: VecDeque<Output>,
    provisional: Option<Vec<u8>>,
    final_response: Option<Vec<u8>>,
    timer_g: Option<Retransmit>,
    timer_h: Option<Instant>,
    timer_i: Option<Instant>,
    retransmit_2xx: Option<Retransmit>,
    timer_l: Option<Instant>,
    acked: bool,
    transport_failed: bool,
}

impl ServerInvite {
    /// The transaction for an INVITE that just arrived (the owner hands the request to its
    /// TU). No timer runs until the TU responds, so `now` only keeps the constructors
    /// alike. The owner sends 100 Trying through `respond` unless its TU answers within
    /// 200 ms (17.2.1).
    pub fn new(now: Instant, reliable: bool, timers: Timers) -> Self {
        let _ = now;
        ServerInvite {
            state: ServerInviteState::Proceeding,
            reliable,
            timers,
            out: VecDeque::new(),
            provisional: None,
            final_response: None,
            timer_g: None,
            timer_h: None,
            timer_i: None,
            retransmit_2xx: None,
            timer_l: None,
            acked: false,
            transport_failed: false,
        }
    }

    pub fn state(&self) -> ServerInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerInviteState::Terminated
    }

    /// Whether the ACK for the 2xx arrived (Accepted only).
    pub fn is_acked(&self) -> bool {
        self.acked
    }

    /// The TU's response, serialized. A 1xx goes out and is kept for retransmitted
    /// INVITEs; a 2xx goes out and moves to Accepted; 300-699 goes out and moves to
    /// Completed. Once a final was sent every response is refused.
    pub fn respond(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Vec<u8>,
    ) -> Result<(), RespondError> {
        self.handle_timeout(now);
        let class = classify(status).ok_or(RespondError::InvalidStatus(status))?;
        if self.final_response.is_some() {
            return Err(RespondError::FinalAlreadySent);
        }
        if self.is_terminated() {
            return Err(RespondError::Terminated);
        }
        self.out.push_back(Output::Send(bytes.clone()));
        match class {
            Class::Provisional => self.provisional = Some(bytes),
            Class::Success => {
                self.final_response = Some(bytes);
                self.state = ServerInviteState::Accepted;
                self.retransmit_2xx = Retransmit::start(now, self.timers.t1);
                self.timer_l = after(now, self.timers.t1_x64());
            }
            Class::NonSuccess => {
                self.final_response = Some(bytes);
                self.state = ServerInviteState::Completed;
                if !self.reliable {
                    self.timer_g = Retransmit::start(now, self.timers.t1);
                }
                self.timer_h = after(now, self.timers.t1_x64());
            }
        }
        Ok(())
    }

    /// A retransmission of the INVITE. Proceeding re-sends the last provisional (nothing
    /// if there was none), Completed re-sends the final; Accepted and Confirmed absorb
    /// it (RFC 6026 section 7.1). The TU never sees it. Tests: `server_invite_request_*`.
    pub fn on_request(&mut self, now: Instant) {
        self.handle_timeout(now);
        let resend = match self.state {
            ServerInviteState::Proceeding => self.provisional.clone(),
            ServerInviteState::Completed => self.final_response.clone(),
            _ => None,
        };
        if let Some(bytes) = resend {
            self.out.push_back(Output::Send(bytes));
        }
    }

    /// An ACK matched to this transaction. Returns whether the TU should see it: an ACK
    /// for a 300-699 is absorbed (Completed -> Confirmed, 17.2.1); every ACK in Accepted
    /// goes to the TU (RFC 6026 section 7.1), and the first stops the 2xx retransmissions.
    /// Tests: `timer_i_*`, `accepted_*`.
    pub fn on_ack(&mut self, now: Instant) -> bool {
        self.handle_timeout(now);
        match self.state {
            ServerInviteState::Completed => {
                self.timer_g = None;
                self.timer_h = None;
                if self.reliable {
                    self.terminate();
                } else {
                    self.state = ServerInviteState::Confirmed;
                    self.timer_i = after(now, self.timers.t4);
                }
                false
            }
            ServerInviteState::Accepted => {
                self.acked = true;
                self.retransmit_2xx = None;
                true
            }
            _ => false,
        }
    }

    /// The owner could not send on the transaction's flow. RFC 6026 section 7.1: the
    /// INVITE server transaction keeps its state (its timers end it) so that retransmitted
    /// INVITEs are still absorbed; the TU is told once.
    pub fn on_transport_error(&mut self) {
        if !self.is_terminated() && !self.transport_failed {
            self.transport_failed = true;
            self.out.push_back(Output::TransportError);
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is next due; None once terminated (and in Proceeding, where
    /// no timer runs).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(at, _)| at)
    }

    /// Fires, in order, every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, timer)) = self.next_timer() {
            if at > now {
                break;
            }
            match timer {
                ServerInviteTimer::G => {
                    self.resend_final();
                    self.timer_g = self.timer_g.and_then(|g| g.doubled(Some(self.timers.t2)));
                }
                ServerInviteTimer::H => {
                    self.out.push_back(Output::Timeout);
                    self.terminate();
                }
                ServerInviteTimer::I => self.terminate(),
                ServerInviteTimer::Retransmit2xx => {
                    self.resend_final();
                    self.retransmit_2xx = self
                        .retransmit_2xx
                        .and_then(|r| r.doubled(Some(self.timers.t2)));
                }
                ServerInviteTimer::L => {
                    if !self.acked {
                        self.out.push_back(Output::Timeout);
                    }
                    self.terminate();
                }
            }
        }
    }

    fn resend_final(&mut self) {
        if let Some(bytes) = &self.final_response {
            self.out.push_back(Output::Send(bytes.clone()));
        }
    }

    fn pending(&self) -> [(Option<Instant>, bool, ServerInviteTimer); 5] {
        [
            (self.timer_g.map(|g| g.at), true, ServerInviteTimer::G),
            (self.timer_h, false, ServerInviteTimer::H),
            (self.timer_i, false, ServerInviteTimer::I),
            (
                self.retransmit_2xx.map(|r| r.at),
                true,
                ServerInviteTimer::Retransmit2xx,
            ),
            (self.timer_l, false, ServerInviteTimer::L),
        ]
    }

    fn next_timer(&self) -> Option<(Instant, ServerInviteTimer)> {
        earliest(&self.pending())
    }

    fn terminate(&mut self) {
        self.state = ServerInviteState::Terminated;
        self.timer_g = None;
        self.timer_h = None;
        self.timer_i = None;
        self.retransmit_2xx = None;
        self.timer_l = None;
    }
}

// ---------------------------------------------------------------------------------------
// Non-INVITE server transaction
// ---------------------------------------------------------------------------------------

/// States of the non-INVITE server transaction (RFC 3261 figure 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

/// The non-INVITE server transaction, RFC 3261 section 17.2.2: Trying absorbs
/// retransmitted requests; Proceeding re-sends the last provisional for each; Completed
/// re-sends the final for each until Timer J (64*T1 on UDP, zero on TCP/TLS). A transport
/// error terminates it (17.2.4). Tests: `server_non_invite_*`, `timer_j_*`.
#[derive(Debug, Clone)]
pub struct ServerNonInvite {
    state: ServerNonInviteState,
    reliable: bool,
    timers: Timers,
    out: VecDeque<Output>,
    last_response: Option<Vec<u8>>,
    final_sent: bool,
    timer_j: Option<Instant>,
}

impl ServerNonInvite {
    /// The transaction for a non-INVITE request that just arrived. No timer runs until
    /// the TU responds (`now` only keeps the constructors alike).
    pub fn new(now: Instant, reliable: bool, timers: Timers) -> Self {
        let _ = now;
        ServerNonInvite {
            state: ServerNonInviteState::Trying,
            reliable,
            timers,
            out: VecDeque::new(),
            last_response: None,
            final_sent: false,
            timer_j: None,
        }
    }

    /// The last response sent, for re-sending after the transaction is gone.
    pub fn last_response(&self) -> Option<&[u8]> {
        self.last_response.as_deref()
    }

    pub fn state(&self) -> ServerNonInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ServerNonInviteState::Terminated
    }

    /// The TU's response, serialized: a 1xx moves to Proceeding, a final to Completed
    /// (and straight to Terminated on TCP/TLS). After a final every response is refused
    /// (17.2.2: "MUST be discarded").
    pub fn respond(
        &mut self,
        now: Instant,
        status: u16,
        bytes: Vec<u8>,
    ) -> Result<(), RespondError> {
        self.handle_timeout(now);
        let class = classify(status).ok_or(RespondError::InvalidStatus(status))?;
        if self.final_sent {
            return Err(RespondError::FinalAlreadySent);
        }
        if self.is_terminated() {
            return Err(RespondError::Terminated);
        }
        self.out.push_back(Output::Send(bytes.clone()));
        self.last_response = Some(bytes);
        if class == Class::Provisional {
            self.state = ServerNonInviteState::Proceeding;
        } else {
            self.final_sent = true;
            if self.reliable {
                self.terminate();
            } else {
                self.state = ServerNonInviteState::Completed;
                self.timer_j = after(now, self.timers.t1_x64());
            }
        }
        Ok(())
    }

    /// A retransmission of the request: re-sends the last response, nothing in Trying.
    pub fn on_request(&mut self, now: Instant) {
        self.handle_timeout(now);
        if matches!(
            self.state,
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed
        ) && let Some(bytes) = &self.last_response
        {
            self.out.push_back(Output::Send(bytes.clone()));
        }
    }

    /// The owner could not send: the TU is told and the transaction ends (17.2.4).
    pub fn on_transport_error(&mut self) {
        if !self.is_terminated() {
            self.out.push_back(Output::TransportError);
            self.terminate();
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is next due (Timer J); None otherwise.
    pub fn poll_timeout(&self) -> Option<Instant> {
        earliest(&self.pending()).map(|(at, _)| at)
    }

    fn pending(&self) -> [(Option<Instant>, bool, ()); 1] {
        [(self.timer_j, false, ())]
    }

    /// Fires Timer J if it is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.timer_j.is_some_and(|j| j <= now) {
            self.terminate();
        }
    }

    fn terminate(&mut self) {
        self.state = ServerNonInviteState::Terminated;
        self.timer_j = None;
    }
}

// ---------------------------------------------------------------------------------------
// INVITE client transaction
// ---------------------------------------------------------------------------------------

/// States of the INVITE client transaction (RFC 3261 figure 5, RFC 6026 figure 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientInviteState {
    Calling,
    Proceeding,
    Completed,
    Accepted,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientInviteTimer {
    A,
    B,
    D,
    M,
}

/// The INVITE client transaction, RFC 3261 section 17.1.1 with RFC 6026 section 7.2:
///
/// - Calling: Timer A re-sends the INVITE on UDP at T1, 2T1, 4T1, ... (no cap), Timer B
///   (64*T1) gives `Output::Timeout`. Any response stops both. Tests: `timer_a_*`,
///   `timer_b_*`.
/// - Proceeding: provisionals go to the TU; no timer runs (the TU CANCELs if it stops
///   waiting).
/// - Completed (300-699): the transaction ACKs the final itself, and re-sends that ACK
///   for each retransmitted final, which the TU does not see, until Timer D (at least
///   32 s on UDP, zero on TCP/TLS). Tests: `timer_d_*`.
/// - Accepted (2xx, RFC 6026): every 2xx goes to the TU, which ACKs each itself
///   (retransmissions and forked 2xx alike), until Timer M (64*T1). Tests: `timer_m_*`.
/// - A transport error terminates it (17.1.4). Tests: `client_invite_transport_error_*`.
#[derive(Debug, Clone)]
pub struct ClientInvite {
    state: ClientInviteState,
    reliable: bool,
    timers: Timers,
    out: VecDeque<Output>,
    request: Vec<u8>,
    ack: Option<Vec<u8>>,
    timer_a: Option<Retransmit>,
    timer_b: Option<Instant>,
    timer_d: Option<Instant>,
    timer_m: Option<Instant>,
}

impl ClientInvite {
    /// Starts the transaction: the INVITE goes out at once.
    pub fn new(now: Instant, reliable: bool, timers: Timers, request: Vec<u8>) -> Self {
        let mut out = VecDeque::new();
        out.push_back(Output::Send(request.clone()));
        ClientInvite {
            state: ClientInviteState::Calling,
            reliable,
            timers,
            out,
            request,
            ack: None,
            timer_a: if reliable {
                None
            } else {
                Retransmit::start(now, timers.t1)
            },
            timer_b: after(now, timers.t1_x64()),
            timer_d: None,
            timer_m: None,
        }
    }

    pub fn state(&self) -> ClientInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientInviteState::Terminated
    }

    /// A response matched to this transaction. Returns whether the TU should see it:
    ///
    /// - Calling/Proceeding: always. A 1xx moves to Proceeding; a 2xx to Accepted; a
    ///   300-699 to Completed, and the transaction sends the ACK that `ack` builds (called
    ///   once, on this first non-2xx final; the bytes are kept for retransmissions).
    /// - Completed: a retransmitted 300-699 re-sends the ACK and is not passed up; a 1xx
    ///   is dropped; a 2xx is passed up (a proxy forwards a late 2xx from another branch
    ///   even after a final, RFC 3261 section 16.7 step 5, and the TU must ACK and BYE it).
    /// - Accepted: every 2xx is passed up; anything else is dropped.
    /// - Terminated, or a status outside 100-699: dropped.
    pub fn on_response(
        &mut self,
        now: Instant,
        status: u16,
        ack: impl FnOnce() -> Vec<u8>,
    ) -> bool {
        self.handle_timeout(now);
        let Some(class) = classify(status) else {
            return false;
        };
        match self.state {
            ClientInviteState::Calling | ClientInviteState::Proceeding => {
                self.timer_a = None;
                self.timer_b = None;
                match class {
                    Class::Provisional => self.state = ClientInviteState::Proceeding,
                    Class::Success => {
                        self.state = ClientInviteState::Accepted;
                        self.timer_m = after(now, self.timers.t1_x64());
                    }
                    Class::NonSuccess => {
                        let ack = ack();
                        self.out.push_back(Output::Send(ack.clone()));
                        self.ack = Some(ack);
                        if self.reliable {
                            self.terminate();
                        } else {
                            self.state = ClientInviteState::Completed;
                            self.timer_d = after(now, self.timers.timer_d());
                        }
                    }
                }
                true
            }
            ClientInviteState::Completed => match class {
                Class::NonSuccess => {
                    if let Some(ack) = &self.ack {
                        self.out.push_back(Output::Send(ack.clone()));
                    }
                    false
                }
                Class::Success => true,
                Class::Provisional => false,
            },
            ClientInviteState::Accepted => class == Class::Success,
            ClientInviteState::Terminated => false,
        }
    }

    /// The owner could not send: the TU is told and the transaction ends (17.1.4).
    pub fn on_transport_error(&mut self) {
        if !self.is_terminated() {
            self.out.push_back(Output::TransportError);
            self.terminate();
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is next due; None once terminated (and in Proceeding).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(at, _)| at)
    }

    /// Fires, in order, every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, timer)) = self.next_timer() {
            if at > now {
                break;
            }
            match timer {
                ClientInviteTimer::A => {
                    self.out.push_back(Output::Send(self.request.clone()));
                    self.timer_a = self.timer_a.and_then(|a| a.doubled(None));
                }
                ClientInviteTimer::B => {
                    self.out.push_back(Output::Timeout);
                    self.terminate();
                }
                ClientInviteTimer::D | ClientInviteTimer::M => self.terminate(),
            }
        }
    }

    fn pending(&self) -> [(Option<Instant>, bool, ClientInviteTimer); 4] {
        [
            (self.timer_a.map(|a| a.at), true, ClientInviteTimer::A),
            (self.timer_b, false, ClientInviteTimer::B),
            (self.timer_d, false, ClientInviteTimer::D),
            (self.timer_m, false, ClientInviteTimer::M),
        ]
    }

    fn next_timer(&self) -> Option<(Instant, ClientInviteTimer)> {
        earliest(&self.pending())
    }

    fn terminate(&mut self) {
        self.state = ClientInviteState::Terminated;
        self.timer_a = None;
        self.timer_b = None;
        self.timer_d = None;
        self.timer_m = None;
    }
}

// ---------------------------------------------------------------------------------------
// Non-INVITE client transaction
// ---------------------------------------------------------------------------------------

/// States of the non-INVITE client transaction (RFC 3261 figure 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientNonInviteState {
    Trying,
    Proceeding,
    Completed,
    Terminated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientNonInviteTimer {
    E,
    F,
    K,
}

/// The non-INVITE client transaction, RFC 3261 section 17.1.2: Timer E re-sends the
/// request on UDP at T1 doubling to T2 in Trying, and every T2 in Proceeding; Timer F
/// (64*T1) in either gives `Output::Timeout`; the first final moves to Completed, which
/// absorbs retransmitted responses until Timer K (T4 on UDP, zero on TCP/TLS). A
/// transport error terminates it (17.1.4). Tests: `timer_e_*`, `timer_f_*`, `timer_k_*`,
/// `client_non_invite_*`.
#[derive(Debug, Clone)]
pub struct ClientNonInvite {
    state: ClientNonInviteState,
    reliable: bool,
    timers: Timers,
    out: VecDeque<Output>,
    request: Vec<u8>,
    timer_e: Option<Retransmit>,
    timer_f: Option<Instant>,
    timer_k: Option<Instant>,
}

impl ClientNonInvite {
    /// Starts the transaction: the request goes out at once.
    pub fn new(now: Instant, reliable: bool, timers: Timers, request: Vec<u8>) -> Self {
        let mut out = VecDeque::new();
        out.push_back(Output::Send(request.clone()));
        ClientNonInvite {
            state: ClientNonInviteState::Trying,
            reliable,
            timers,
            out,
            request,
            timer_e: if reliable {
                None
            } else {
                Retransmit::start(now, timers.t1)
            },
            timer_f: after(now, timers.t1_x64()),
            timer_k: None,
        }
    }

    pub fn state(&self) -> ClientNonInviteState {
        self.state
    }

    pub fn is_terminated(&self) -> bool {
        self.state == ClientNonInviteState::Terminated
    }

    /// A response matched to this transaction. Returns whether the TU should see it:
    /// provisionals in Trying/Proceeding (-> Proceeding) and the first final (->
    /// Completed); retransmitted responses in Completed, responses once terminated and
    /// statuses outside 100-699 are dropped.
    pub fn on_response(&mut self, now: Instant, status: u16) -> bool {
        self.handle_timeout(now);
        let Some(class) = classify(status) else {
            return false;
        };
        match self.state {
            ClientNonInviteState::Trying | ClientNonInviteState::Proceeding => {
                if class == Class::Provisional {
                    // Timer E keeps its pending deadline; from its next firing it runs
                    // every T2.
                    self.state = ClientNonInviteState::Proceeding;
                } else if self.reliable {
                    self.terminate();
                } else {
                    self.state = ClientNonInviteState::Completed;
                    self.timer_e = None;
                    self.timer_f = None;
                    self.timer_k = after(now, self.timers.t4);
                }
                true
            }
            ClientNonInviteState::Completed | ClientNonInviteState::Terminated => false,
        }
    }

    /// The owner could not send: the TU is told and the transaction ends (17.1.4).
    pub fn on_transport_error(&mut self) {
        if !self.is_terminated() {
            self.out.push_back(Output::TransportError);
            self.terminate();
        }
    }

    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is next due; None once terminated.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_timer().map(|(at, _)| at)
    }

    /// Fires, in order, every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((at, timer)) = self.next_timer() {
            if at > now {
                break;
            }
            match timer {
                ClientNonInviteTimer::E => {
                    self.out.push_back(Output::Send(self.request.clone()));
                    let t2 = self.timers.t2;
                    self.timer_e = match self.state {
                        ClientNonInviteState::Trying => {
                            self.timer_e.and_then(|e| e.doubled(Some(t2)))
                        }
                        _ => self.timer_e.and_then(|e| e.then(t2)),
                    };
                }
                ClientNonInviteTimer::F => {
                    self.out.push_back(Output::Timeout);
                    self.terminate();
                }
                ClientNonInviteTimer::K => self.terminate(),
            }
        }
    }

    fn pending(&self) -> [(Option<Instant>, bool, ClientNonInviteTimer); 3] {
        [
            (self.timer_e.map(|e| e.at), true, ClientNonInviteTimer::E),
            (self.timer_f, false, ClientNonInviteTimer::F),
            (self.timer_k, false, ClientNonInviteTimer::K),
        ]
    }

    fn next_timer(&self) -> Option<(Instant, ClientNonInviteTimer)> {
        earliest(&self.pending())
    }

    fn terminate(&mut self) {
        self.state = ClientNonInviteState::Terminated;
        self.timer_e = None;
        self.timer_f = None;
        self.timer_k = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn send(bytes: &[u8]) -> Output {
        Output::Send(bytes.to_vec())
    }

    /// xorshift64, so the random tests need no crate.
    struct XorShift(u64);

    impl XorShift {
        fn new(seed: u64) -> Self {
            XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).max(1))
        }

        fn below(&mut self, n: u64) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[self.below(from.len() as u64) as usize]
        }
    }

    /// What the tests need of every machine.
    trait Machine: Clone {
        fn poll_output(&mut self) -> Option<Output>;
        fn poll_timeout(&self) -> Option<Instant>;
        fn handle_timeout(&mut self, now: Instant);
        fn is_terminated(&self) -> bool;
        fn state_name(&self) -> String;
        /// Every armed timer's deadline (white box).
        fn deadlines(&self) -> Vec<Instant>;
    }

    macro_rules! machine {
        ($($t:ty),*) => {$(
            impl Machine for $t {
                fn poll_output(&mut self) -> Option<Output> {
                    <$t>::poll_output(self)
                }
                fn poll_timeout(&self) -> Option<Instant> {
                    <$t>::poll_timeout(self)
                }
                fn handle_timeout(&mut self, now: Instant) {
                    <$t>::handle_timeout(self, now)
                }
                fn is_terminated(&self) -> bool {
                    <$t>::is_terminated(self)
                }
                fn state_name(&self) -> String {
                    format!("{:?}", self.state())
                }
                fn deadlines(&self) -> Vec<Instant> {
                    self.pending().iter().filter_map(|t| t.0).collect()
                }
            }
        )*};
    }

    machine!(ServerInvite, ServerNonInvite, ClientInvite, ClientNonInvite);

    fn drain(m: &mut impl Machine) -> Vec<Output> {
        std::iter::from_fn(|| m.poll_output()).collect()
    }

    /// Runs only the machine's timers, on the virtual clock, up to `base + until`: each
    /// output with its offset from `base`.
    fn run(m: &mut impl Machine, base: Instant, until: Duration) -> Vec<(Duration, Output)> {
        let mut log = Vec::new();
        while let Some(at) = m.poll_timeout() {
            if at > base + until {
                break;
            }
            m.handle_timeout(at);
            log.extend(drain(m).into_iter().map(|o| (at - base, o)));
        }
        log
    }

    /// The offsets, in ms, of the `Send`s in a log.
    fn send_times(log: &[(Duration, Output)]) -> Vec<u128> {
        log.iter()
            .filter(|(_, o)| matches!(o, Output::Send(_)))
            .map(|(t, _)| t.as_millis())
            .collect()
    }

    /// 500, 1500, 3500, 7500, then every T2 (4 s) up to 31500: T1 doubling, capped at T2,
    /// within 64*T1.
    const CAPPED_AT_T2: [u128; 10] = [
        500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500,
    ];

    #[test]
    fn timers_default_to_rfc_values() {
        let t = Timers::default();
        assert_eq!((t.t1, t.t2, t.t4), (ms(500), ms(4000), ms(5000)));
        assert_eq!(t.t1_x64(), ms(32_000));
        assert_eq!(t.timer_d(), ms(32_000));
        let slow = Timers {
            t1: ms(1000),
            ..Timers::default()
        };
        assert_eq!(slow.timer_d(), ms(64_000));
        let fast = Timers {
            t1: ms(100),
            ..Timers::default()
        };
        assert_eq!(fast.timer_d(), ms(32_000));
    }

    // --- ServerInvite --------------------------------------------------------------------

    #[test]
    fn server_invite_request_retransmission_resends_the_last_provisional() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        tx.on_request(t0 + ms(100));
        assert!(
            drain(&mut tx).is_empty(),
            "nothing to re-send before a provisional"
        );
        tx.respond(t0 + ms(200), 100, b"100".to_vec()).unwrap();
        tx.respond(t0 + ms(300), 180, b"180".to_vec()).unwrap();
        assert_eq!(drain(&mut tx), [send(b"100"), send(b"180")]);
        tx.on_request(t0 + ms(600));
        assert_eq!(drain(&mut tx), [send(b"180")]);
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        assert_eq!(tx.poll_timeout(), None, "no timer runs in Proceeding");
    }

    #[test]
    fn server_invite_ack_before_a_final_is_ignored() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        assert!(!tx.on_ack(t0));
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        assert!(drain(&mut tx).is_empty());
    }

    #[test]
    fn timer_g_resends_a_non_2xx_final_at_t1_doubling_to_t2() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        tx.respond(t0, 486, b"486".to_vec()).unwrap();
        assert_eq!(drain(&mut tx), [send(b"486")]);
        assert_eq!(tx.state(), ServerInviteState::Completed);
        let log = run(&mut tx, t0, ms(60_000));
        assert_eq!(send_times(&log), CAPPED_AT_T2);
        assert!(log[..10].iter().all(|(_, o)| *o == send(b"486")));
        assert_eq!(log[10..], [(ms(32_000), Output::Timeout)]);
    }

    #[test]
    fn timer_g_does_not_run_on_reliable_transports() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, true, Timers::default());
        tx.respond(t0, 603, b"603".to_vec()).unwrap();
        drain(&mut tx);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_000)), "only Timer H");
        assert_eq!(
            run(&mut tx, t0, ms(60_000)),
            [(ms(32_000), Output::Timeout)]
        );
    }

    #[test]
    fn server_invite_request_in_completed_resends_the_final() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, true, Timers::default());
        tx.respond(t0, 180, b"180".to_vec()).unwrap();
        tx.respond(t0 + ms(10), 404, b"404".to_vec()).unwrap();
        drain(&mut tx);
        tx.on_request(t0 + ms(20));
        tx.on_request(t0 + ms(30));
        assert_eq!(drain(&mut tx), [send(b"404"), send(b"404")]);
    }

    #[test]
    fn timer_h_times_out_at_64_t1_without_ack_on_every_transport() {
        for reliable in [false, true] {
            let t0 = Instant::now();
            let mut tx = ServerInvite::new(t0, reliable, Timers::default());
            tx.respond(t0 + ms(1000), 500, b"500".to_vec()).unwrap();
            drain(&mut tx);
            let log = run(&mut tx, t0, ms(60_000));
            assert_eq!(log.last(), Some(&(ms(33_000), Output::Timeout)));
            assert!(tx.is_terminated());
            assert_eq!(tx.poll_timeout(), None);
            assert!(!tx.on_ack(t0 + ms(34_000)));
            tx.on_request(t0 + ms(34_000));
            assert!(drain(&mut tx).is_empty());
        }
    }

    #[test]
    fn timer_i_ack_confirms_then_absorbs_acks_and_requests_for_t4() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        tx.respond(t0, 486, b"486".to_vec()).unwrap();
        drain(&mut tx);
        let log = run(&mut tx, t0, ms(2000));
        assert_eq!(send_times(&log), [500, 1500]);
        assert!(
            !tx.on_ack(t0 + ms(2000)),
            "the ACK of a non-2xx is absorbed"
        );
        assert_eq!(tx.state(), ServerInviteState::Confirmed);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + ms(7000)),
            "Timer I = T4; G and H stop"
        );
        assert!(!tx.on_ack(t0 + ms(3000)));
        tx.on_request(t0 + ms(3000));
        assert!(drain(&mut tx).is_empty());
        assert!(run(&mut tx, t0, ms(60_000)).is_empty());
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_i_is_zero_on_reliable_transports() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, true, Timers::default());
        tx.respond(t0, 486, b"486".to_vec()).unwrap();
        assert!(!tx.on_ack(t0 + ms(50)));
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        assert_eq!(drain(&mut tx), [send(b"486")]);
    }

    #[test]
    fn accepted_2xx_is_resent_at_t1_doubling_to_t2_until_the_ack() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        tx.respond(t0, 180, b"180".to_vec()).unwrap();
        tx.respond(t0, 200, b"200".to_vec()).unwrap();
        assert_eq!(drain(&mut tx), [send(b"180"), send(b"200")]);
        assert_eq!(tx.state(), ServerInviteState::Accepted);
        let log = run(&mut tx, t0, ms(4000));
        assert_eq!(send_times(&log), [500, 1500, 3500]);
        assert!(log.iter().all(|(_, o)| *o == send(b"200")));
        assert!(!tx.is_acked());
        assert!(tx.on_ack(t0 + ms(4000)), "an ACK for a 2xx goes to the TU");
        assert!(tx.is_acked());
        assert!(tx.on_ack(t0 + ms(4100)), "every one of them");
        // RFC 6026 section 7.1: Accepted lasts until Timer L, absorbing INVITEs.
        assert_eq!(tx.state(), ServerInviteState::Accepted);
        tx.on_request(t0 + ms(5000));
        assert!(drain(&mut tx).is_empty());
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + ms(32_000)),
            "only Timer L is left"
        );
        assert!(
            run(&mut tx, t0, ms(60_000)).is_empty(),
            "no Timeout once ACKed"
        );
        assert!(tx.is_terminated());
    }

    #[test]
    fn accepted_2xx_is_resent_on_reliable_transports_too() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, true, Timers::default());
        tx.respond(t0, 200, b"200".to_vec()).unwrap();
        drain(&mut tx);
        let log = run(&mut tx, t0, ms(8000));
        assert_eq!(send_times(&log), [500, 1500, 3500, 7500]);
        assert!(tx.on_ack(t0 + ms(8000)));
        assert!(run(&mut tx, t0, ms(60_000)).is_empty());
        assert!(tx.is_terminated());
    }

    #[test]
    fn timer_l_times_out_an_unacknowledged_2xx_at_64_t1() {
        for reliable in [false, true] {
            let t0 = Instant::now();
            let mut tx = ServerInvite::new(t0, reliable, Timers::default());
            tx.respond(t0, 200, b"200".to_vec()).unwrap();
            drain(&mut tx);
            let log = run(&mut tx, t0, ms(60_000));
            assert_eq!(send_times(&log), CAPPED_AT_T2);
            assert_eq!(log.last(), Some(&(ms(32_000), Output::Timeout)));
            assert!(tx.is_terminated());
            assert_eq!(tx.poll_timeout(), None);
        }
    }

    #[test]
    fn server_invite_respond_after_a_final_is_refused() {
        let t0 = Instant::now();
        for first in [200, 486] {
            let mut tx = ServerInvite::new(t0, false, Timers::default());
            tx.respond(t0, first, b"final".to_vec()).unwrap();
            drain(&mut tx);
            for status in [180, 200, 486] {
                assert_eq!(
                    tx.respond(t0, status, b"again".to_vec()),
                    Err(RespondError::FinalAlreadySent)
                );
            }
            assert!(drain(&mut tx).is_empty());
        }
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        for status in [0, 99, 700] {
            assert_eq!(
                tx.respond(t0, status, vec![]),
                Err(RespondError::InvalidStatus(status))
            );
        }
        assert_eq!(tx.state(), ServerInviteState::Proceeding);
        assert!(drain(&mut tx).is_empty());
    }

    #[test]
    fn server_invite_transport_error_is_reported_once_and_keeps_state() {
        let t0 = Instant::now();
        let mut tx = ServerInvite::new(t0, false, Timers::default());
        tx.respond(t0, 486, b"486".to_vec()).unwrap();
        drain(&mut tx);
        tx.on_transport_error();
        tx.on_transport_error();
        assert_eq!(drain(&mut tx), [Output::TransportError]);
        assert_eq!(tx.state(), ServerInviteState::Completed);
        tx.on_request(t0 + ms(100));
        assert_eq!(
            drain(&mut tx),
            [send(b"486")],
            "still absorbs retransmissions"
        );
        let log = run(&mut tx, t0, ms(60_000));
        assert_eq!(
            log.last(),
            Some(&(ms(32_000), Output::Timeout)),
            "Timer H ends it"
        );
    }

    // --- ServerNonInvite -----------------------------------------------------------------

    #[test]
    fn server_non_invite_trying_absorbs_retransmissions() {
        let t0 = Instant::now();
        let mut tx = ServerNonInvite::new(t0, false, Timers::default());
        tx.on_request(t0 + ms(500));
        assert!(drain(&mut tx).is_empty());
        assert_eq!(tx.state(), ServerNonInviteState::Trying);
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn server_non_invite_proceeding_resends_the_last_provisional() {
        let t0 = Instant::now();
        let mut tx = ServerNonInvite::new(t0, false, Timers::default());
        tx.respond(t0, 100, b"100".to_vec()).unwrap();
        assert_eq!(tx.state(), ServerNonInviteState::Proceeding);
        tx.respond(t0, 183, b"183".to_vec()).unwrap();
        tx.on_request(t0 + ms(500));
        assert_eq!(drain(&mut tx), [send(b"100"), send(b"183"), send(b"183")]);
    }

    #[test]
    fn timer_j_completed_resends_the_final_per_retransmission_until_64_t1() {
        let t0 = Instant::now();
        let mut tx = ServerNonInvite::new(t0, false, Timers::default());
        tx.respond(t0 + ms(100), 200, b"200".to_vec()).unwrap();
        assert_eq!(tx.state(), ServerNonInviteState::Completed);
        assert_eq!(drain(&mut tx), [send(b"200")]);
        tx.on_request(t0 + ms(600));
        tx.on_request(t0 + ms(1600));
        assert_eq!(drain(&mut tx), [send(b"200"), send(b"200")]);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_100)));
        assert!(
            run(&mut tx, t0, ms(60_000)).is_empty(),
            "the server never retransmits alone"
        );
        assert!(tx.is_terminated());
        tx.on_request(t0 + ms(40_000));
        assert!(drain(&mut tx).is_empty());
    }

    #[test]
    fn timer_j_is_zero_on_reliable_transports() {
        let t0 = Instant::now();
        let mut tx = ServerNonInvite::new(t0, true, Timers::default());
        tx.respond(t0, 404, b"404".to_vec()).unwrap();
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        assert_eq!(drain(&mut tx), [send(b"404")]);
    }

    #[test]
    fn server_non_invite_refuses_responses_after_the_final() {
        let t0 = Instant::now();
        for reliable in [false, true] {
            let mut tx = ServerNonInvite::new(t0, reliable, Timers::default());
            tx.respond(t0, 202, b"202".to_vec()).unwrap();
            drain(&mut tx);
            assert_eq!(
                tx.respond(t0, 180, vec![]),
                Err(RespondError::FinalAlreadySent)
            );
            assert_eq!(
                tx.respond(t0, 500, vec![]),
                Err(RespondError::FinalAlreadySent)
            );
            assert!(drain(&mut tx).is_empty());
        }
        let mut tx = ServerNonInvite::new(t0, false, Timers::default());
        assert_eq!(
            tx.respond(t0, 42, vec![]),
            Err(RespondError::InvalidStatus(42))
        );
        assert_eq!(tx.state(), ServerNonInviteState::Trying);
    }

    #[test]
    fn server_non_invite_transport_error_terminates() {
        let t0 = Instant::now();
        let mut tx = ServerNonInvite::new(t0, false, Timers::default());
        tx.respond(t0, 180, b"180".to_vec()).unwrap();
        drain(&mut tx);
        tx.on_transport_error();
        tx.on_transport_error();
        assert_eq!(drain(&mut tx), [Output::TransportError]);
        assert!(tx.is_terminated());
        assert_eq!(tx.respond(t0, 200, vec![]), Err(RespondError::Terminated));
        tx.on_request(t0);
        assert!(drain(&mut tx).is_empty());
    }

    // --- ClientInvite --------------------------------------------------------------------

    #[test]
    fn timer_a_doubles_without_cap_until_timer_b() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b"INVITE".to_vec());
        assert_eq!(drain(&mut tx), [send(b"INVITE")]);
        assert_eq!(tx.state(), ClientInviteState::Calling);
        let log = run(&mut tx, t0, ms(60_000));
        // Seven transmissions in all, as 17.1.1.2 notes.
        assert_eq!(send_times(&log), [500, 1500, 3500, 7500, 15_500, 31_500]);
        assert!(log[..6].iter().all(|(_, o)| *o == send(b"INVITE")));
        assert_eq!(log[6..], [(ms(32_000), Output::Timeout)]);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_b_times_out_on_reliable_transports_without_retransmissions() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, true, Timers::default(), b"INVITE".to_vec());
        drain(&mut tx);
        assert_eq!(
            run(&mut tx, t0, ms(60_000)),
            [(ms(32_000), Output::Timeout)]
        );
    }

    #[test]
    fn timer_a_and_timer_b_stop_on_a_provisional() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b"INVITE".to_vec());
        drain(&mut tx);
        assert_eq!(send_times(&run(&mut tx, t0, ms(2000))), [500, 1500]);
        let no_ack = || panic!("no ACK for a provisional");
        assert!(tx.on_response(t0 + ms(2000), 100, no_ack));
        assert!(tx.on_response(t0 + ms(2100), 180, no_ack));
        assert_eq!(tx.state(), ClientInviteState::Proceeding);
        assert_eq!(tx.poll_timeout(), None, "no timer runs in Proceeding");
        assert!(drain(&mut tx).is_empty());
    }

    #[test]
    fn timer_d_acks_a_non_2xx_final_once_and_resends_it_per_retransmission() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b"INVITE".to_vec());
        drain(&mut tx);
        let built = Cell::new(0);
        let ack = || {
            built.set(built.get() + 1);
            b"ACK".to_vec()
        };
        assert!(tx.on_response(t0 + ms(100), 180, ack));
        assert!(
            tx.on_response(t0 + ms(200), 486, ack),
            "the first final goes to the TU"
        );
        assert_eq!(tx.state(), ClientInviteState::Completed);
        assert_eq!(drain(&mut tx), [send(b"ACK")]);
        assert!(
            !tx.on_response(t0 + ms(700), 486, ack),
            "retransmissions do not"
        );
        assert!(!tx.on_response(t0 + ms(1700), 486, ack));
        assert!(!tx.on_response(t0 + ms(1800), 183, ack));
        assert_eq!(drain(&mut tx), [send(b"ACK"), send(b"ACK")]);
        assert_eq!(built.get(), 1, "the ACK is built once");
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(32_200)));
        assert!(run(&mut tx, t0, ms(60_000)).is_empty());
        assert!(tx.is_terminated());
        assert!(!tx.on_response(t0 + ms(40_000), 486, ack));
        assert!(drain(&mut tx).is_empty());
        assert_eq!(built.get(), 1);
    }

    #[test]
    fn timer_d_is_zero_on_reliable_transports() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, true, Timers::default(), b"INVITE".to_vec());
        drain(&mut tx);
        assert!(tx.on_response(t0 + ms(100), 503, || b"ACK".to_vec()));
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        assert_eq!(drain(&mut tx), [send(b"ACK")], "the ACK still goes out");
    }

    #[test]
    fn timer_m_accepted_passes_every_2xx_and_never_acks() {
        for reliable in [false, true] {
            let t0 = Instant::now();
            let mut tx = ClientInvite::new(t0, reliable, Timers::default(), b"INVITE".to_vec());
            drain(&mut tx);
            let no_ack = || panic!("the TU ACKs a 2xx");
            assert!(tx.on_response(t0 + ms(300), 200, no_ack));
            assert_eq!(tx.state(), ClientInviteState::Accepted);
            assert!(
                tx.on_response(t0 + ms(800), 200, no_ack),
                "retransmitted 2xx"
            );
            assert!(
                tx.on_response(t0 + ms(900), 202, no_ack),
                "2xx from another fork"
            );
            assert!(!tx.on_response(t0 + ms(1000), 180, no_ack));
            assert!(!tx.on_response(t0 + ms(1000), 486, no_ack));
            assert!(drain(&mut tx).is_empty());
            assert_eq!(
                tx.poll_timeout(),
                Some(t0 + ms(32_300)),
                "Timer M; A and B stopped"
            );
            assert!(run(&mut tx, t0, ms(60_000)).is_empty());
            assert!(tx.is_terminated());
            assert!(!tx.on_response(t0 + ms(40_000), 200, no_ack));
        }
    }

    #[test]
    fn client_invite_2xx_after_a_non_2xx_final_is_passed_up() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b"INVITE".to_vec());
        drain(&mut tx);
        assert!(tx.on_response(t0, 486, || b"ACK".to_vec()));
        assert!(tx.on_response(t0 + ms(10), 200, || panic!("not ours to ACK")));
        assert_eq!(tx.state(), ClientInviteState::Completed);
        assert_eq!(drain(&mut tx), [send(b"ACK")]);
    }

    #[test]
    fn client_invite_transport_error_terminates() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b"INVITE".to_vec());
        tx.on_transport_error();
        tx.on_transport_error();
        assert_eq!(drain(&mut tx), [send(b"INVITE"), Output::TransportError]);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        assert!(!tx.on_response(t0, 200, Vec::new));
    }

    #[test]
    fn client_invite_statuses_outside_100_699_are_dropped() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b"INVITE".to_vec());
        drain(&mut tx);
        for status in [0, 99, 700, 999] {
            assert!(!tx.on_response(t0, status, || panic!("no ACK")));
        }
        assert_eq!(tx.state(), ClientInviteState::Calling);
        assert_eq!(tx.poll_timeout(), Some(t0 + ms(500)));
    }

    // --- ClientNonInvite -----------------------------------------------------------------

    #[test]
    fn timer_e_doubles_to_t2_in_trying_until_timer_f() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, false, Timers::default(), b"OPTIONS".to_vec());
        assert_eq!(drain(&mut tx), [send(b"OPTIONS")]);
        let log = run(&mut tx, t0, ms(60_000));
        assert_eq!(send_times(&log), CAPPED_AT_T2);
        assert!(log[..10].iter().all(|(_, o)| *o == send(b"OPTIONS")));
        assert_eq!(log[10..], [(ms(32_000), Output::Timeout)]);
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
    }

    #[test]
    fn timer_e_runs_every_t2_in_proceeding() {
        // The pending Timer E keeps its deadline; each firing in Proceeding re-arms it
        // with T2.
        for (provisional_at, expected) in [
            (
                200,
                vec![500, 4500, 8500, 12_500, 16_500, 20_500, 24_500, 28_500],
            ),
            (
                700,
                vec![
                    500, 1500, 5500, 9500, 13_500, 17_500, 21_500, 25_500, 29_500,
                ],
            ),
        ] {
            let t0 = Instant::now();
            let mut tx = ClientNonInvite::new(t0, false, Timers::default(), b"BYE".to_vec());
            drain(&mut tx);
            let mut log = run(&mut tx, t0, ms(provisional_at));
            assert!(tx.on_response(t0 + ms(provisional_at), 100));
            assert_eq!(tx.state(), ClientNonInviteState::Proceeding);
            log.extend(run(&mut tx, t0, ms(60_000)));
            assert_eq!(send_times(&log), expected);
            assert_eq!(log.last(), Some(&(ms(32_000), Output::Timeout)), "Timer F");
        }
    }

    #[test]
    fn timer_f_times_out_in_proceeding_on_every_transport() {
        for reliable in [false, true] {
            let t0 = Instant::now();
            let mut tx = ClientNonInvite::new(t0, reliable, Timers::default(), b"BYE".to_vec());
            drain(&mut tx);
            assert!(tx.on_response(t0 + ms(50), 180));
            assert!(
                tx.on_response(t0 + ms(60), 183),
                "every provisional goes to the TU"
            );
            let log = run(&mut tx, t0, ms(60_000));
            assert_eq!(log.last(), Some(&(ms(32_000), Output::Timeout)));
            if reliable {
                assert_eq!(log.len(), 1, "no retransmission on a reliable transport");
            }
            assert!(tx.is_terminated());
        }
    }

    #[test]
    fn timer_k_absorbs_retransmitted_responses_for_t4() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, false, Timers::default(), b"BYE".to_vec());
        drain(&mut tx);
        assert!(tx.on_response(t0 + ms(1000), 200));
        assert_eq!(
            drain(&mut tx),
            [send(b"BYE")],
            "Timer E at 500 ms fired first"
        );
        assert_eq!(tx.state(), ClientNonInviteState::Completed);
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + ms(6000)),
            "Timer K = T4; E and F stop"
        );
        assert!(!tx.on_response(t0 + ms(1500), 200));
        assert!(!tx.on_response(t0 + ms(1600), 180));
        assert!(!tx.on_response(t0 + ms(1700), 500));
        assert!(run(&mut tx, t0, ms(60_000)).is_empty());
        assert!(tx.is_terminated());
        assert!(!tx.on_response(t0 + ms(7000), 200));
    }

    #[test]
    fn timer_k_is_zero_on_reliable_transports() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, true, Timers::default(), b"BYE".to_vec());
        assert_eq!(
            tx.poll_timeout(),
            Some(t0 + ms(32_000)),
            "Timer F only, no Timer E"
        );
        assert!(tx.on_response(t0 + ms(100), 481));
        assert!(tx.is_terminated());
        assert_eq!(tx.poll_timeout(), None);
        assert!(!tx.on_response(t0 + ms(200), 481));
        assert_eq!(drain(&mut tx), [send(b"BYE")]);
    }

    #[test]
    fn client_non_invite_transport_error_terminates() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, false, Timers::default(), b"BYE".to_vec());
        drain(&mut tx);
        tx.on_transport_error();
        assert_eq!(drain(&mut tx), [Output::TransportError]);
        assert!(tx.is_terminated());
        tx.on_transport_error();
        assert!(drain(&mut tx).is_empty());
        assert_eq!(tx.poll_timeout(), None);
    }

    // --- Clock handling ------------------------------------------------------------------

    #[test]
    fn late_handle_timeout_fires_every_due_timer_in_order() {
        let t0 = Instant::now();
        let mut tx = ClientInvite::new(t0, false, Timers::default(), b"INVITE".to_vec());
        tx.handle_timeout(t0 + ms(40_000));
        let mut expected = vec![send(b"INVITE"); 7];
        expected.push(Output::Timeout);
        assert_eq!(drain(&mut tx), expected);
        assert!(tx.is_terminated());
    }

    #[test]
    fn events_fire_due_timers_first() {
        let t0 = Instant::now();
        let mut tx = ClientNonInvite::new(t0, true, Timers::default(), b"BYE".to_vec());
        assert!(
            !tx.on_response(t0 + ms(33_000), 200),
            "Timer F fired before it"
        );
        assert_eq!(drain(&mut tx), [send(b"BYE"), Output::Timeout]);

        let mut tx = ServerInvite::new(t0, true, Timers::default());
        tx.respond(t0, 486, b"486".to_vec()).unwrap();
        assert!(!tx.on_ack(t0 + ms(40_000)));
        assert_eq!(
            drain(&mut tx),
            [send(b"486"), Output::Timeout],
            "Timer H fired first"
        );

        // Exactly at the deadline the timer wins too.
        let mut tx = ClientInvite::new(t0, true, Timers::default(), b"INVITE".to_vec());
        assert!(!tx.on_response(t0 + ms(32_000), 180, Vec::new));
        assert!(tx.is_terminated());
    }

    #[test]
    fn zero_timers_do_not_spin() {
        let zero = Timers {
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            t4: Duration::ZERO,
        };
        let t0 = Instant::now();
        let mut ci = ClientInvite::new(t0, false, zero, b"INVITE".to_vec());
        ci.handle_timeout(t0 + ms(1000));
        assert!(ci.is_terminated());
        let mut si = ServerInvite::new(t0, false, zero);
        si.respond(t0, 200, b"200".to_vec()).unwrap();
        si.handle_timeout(t0 + ms(1000));
        assert!(si.is_terminated());
        let mut cn = ClientNonInvite::new(t0, false, zero, b"BYE".to_vec());
        cn.handle_timeout(t0 + ms(1000));
        assert!(cn.is_terminated());
        assert!(drain(&mut cn).len() <= 2);
    }

    // --- Random event sequences ----------------------------------------------------------

    const STATUSES: &[u16] = &[
        0, 99, 100, 180, 183, 200, 202, 299, 302, 404, 481, 486, 487, 500, 503, 603, 699, 700,
    ];

    /// Drives random events into machines from `make` (one per seed, on UDP or TCP at
    /// random) and checks: no panic; `poll_timeout` is the earliest deadline (nothing is
    /// due a nanosecond before it, something is due at it); nothing comes out after
    /// Terminated and `poll_timeout` is then None; and once `settle` has given the
    /// machine the event the RFC waits for without a timer (the TU's final response, or a
    /// final for a client INVITE in Proceeding), it terminates by 64*T1 + T4 (+1 s) on
    /// its timers alone.
    fn random_events<M: Machine>(
        make: impl Fn(Instant, bool) -> M,
        event: impl Fn(&mut M, Instant, &mut XorShift),
        settle: impl Fn(&mut M, Instant, &mut XorShift),
    ) {
        let timers = Timers::default();
        let bound = timers.t1_x64() + timers.t4 + ms(1000);
        for seed in 1..=1000u64 {
            let mut rng = XorShift::new(seed);
            let t0 = Instant::now();
            let mut m = make(t0, rng.chance(50));
            let mut now = t0;
            let mut done = false;
            let check = |m: &mut M, done: &mut bool, what: &str| {
                let out = drain(m);
                assert!(
                    !*done || out.is_empty(),
                    "seed {seed}: {what} after Terminated gave {out:?}"
                );
                if m.is_terminated() {
                    assert_eq!(m.poll_timeout(), None, "seed {seed}");
                    *done = true;
                }
            };
            check(&mut m, &mut done, "new");
            for _ in 0..rng.below(30) {
                now += match rng.below(4) {
                    0 => Duration::ZERO,
                    1 => ms(rng.below(1000)),
                    2 => ms(rng.below(12_000)),
                    _ => m
                        .poll_timeout()
                        .map_or(Duration::ZERO, |at| at.saturating_duration_since(now)),
                };
                assert_eq!(
                    m.poll_timeout(),
                    m.deadlines().into_iter().min(),
                    "seed {seed}"
                );
                if let Some(at) = m.poll_timeout() {
                    let mut probe = m.clone();
                    probe.handle_timeout(at - Duration::from_nanos(1));
                    assert!(
                        drain(&mut probe).is_empty(),
                        "seed {seed}: due before poll_timeout"
                    );
                    assert_eq!(probe.state_name(), m.state_name(), "seed {seed}");
                    assert_eq!(probe.poll_timeout(), Some(at), "seed {seed}");
                    probe.handle_timeout(at);
                    assert!(
                        probe.poll_timeout().is_none_or(|next| next > at),
                        "seed {seed}: not due at poll_timeout"
                    );
                }
                if rng.chance(30) {
                    m.handle_timeout(now);
                } else {
                    event(&mut m, now, &mut rng);
                }
                check(&mut m, &mut done, "an event");
            }
            settle(&mut m, now, &mut rng);
            check(&mut m, &mut done, "settle");
            let log = run(&mut m, now, bound);
            assert!(
                m.is_terminated(),
                "seed {seed}: still {} {bound:?} after the last event",
                m.state_name()
            );
            assert!(
                !done || log.is_empty(),
                "seed {seed}: timers after Terminated: {log:?}"
            );
        }
    }

    #[test]
    fn random_events_server_invite() {
        random_events(
            |now, reliable| ServerInvite::new(now, reliable, Timers::default()),
            |tx, now, rng| match rng.below(10) {
                0..=3 => {
                    let status = rng.pick(STATUSES);
                    let _ = tx.respond(now, status, status.to_string().into_bytes());
                }
                4..=5 => tx.on_request(now),
                6..=8 => {
                    tx.on_ack(now);
                }
                _ => tx.on_transport_error(),
            },
            |tx, now, rng| {
                if tx.state() == ServerInviteState::Proceeding {
                    let status = rng.pick(&[200, 486]);
                    tx.respond(now, status, b"final".to_vec()).unwrap();
                }
            },
        );
    }

    #[test]
    fn random_events_server_non_invite() {
        random_events(
            |now, reliable| ServerNonInvite::new(now, reliable, Timers::default()),
            |tx, now, rng| match rng.below(10) {
                0..=4 => {
                    let status = rng.pick(STATUSES);
                    let _ = tx.respond(now, status, status.to_string().into_bytes());
                }
                5..=8 => tx.on_request(now),
                _ => tx.on_transport_error(),
            },
            |tx, now, _| {
                if matches!(
                    tx.state(),
                    ServerNonInviteState::Trying | ServerNonInviteState::Proceeding
                ) {
                    tx.respond(now, 200, b"200".to_vec()).unwrap();
                }
            },
        );
    }

    #[test]
    fn random_events_client_invite() {
        let built = Cell::new(0u32);
        let ack = || {
            built.set(built.get() + 1);
            assert!(built.get() <= 1, "the ACK closure ran twice");
            b"ACK".to_vec()
        };
        random_events(
            |now, reliable| {
                built.set(0);
                ClientInvite::new(now, reliable, Timers::default(), b"INVITE".to_vec())
            },
            |tx, now, rng| {
                if rng.chance(10) {
                    tx.on_transport_error();
                } else {
                    let status = rng.pick(STATUSES);
                    tx.handle_timeout(now);
                    let before = tx.state();
                    let passed = tx.on_response(now, status, ack);
                    if before == ClientInviteState::Accepted {
                        assert_eq!(passed, (200..300).contains(&status));
                    }
                }
            },
            |tx, now, _| {
                if tx.state() == ClientInviteState::Proceeding {
                    assert_eq!(tx.poll_timeout(), None);
                    assert!(tx.on_response(now, 487, ack));
                }
            },
        );
    }

    #[test]
    fn random_events_client_non_invite() {
        random_events(
            |now, reliable| ClientNonInvite::new(now, reliable, Timers::default(), b"BYE".to_vec()),
            |tx, now, rng| {
                if rng.chance(10) {
                    tx.on_transport_error();
                } else {
                    let status = rng.pick(STATUSES);
                    let before = tx.state();
                    let passed = tx.on_response(now, status);
                    if before == ClientNonInviteState::Completed {
                        assert!(!passed);
                    }
                }
            },
            |_, _, _| {},
        );
    }
}
