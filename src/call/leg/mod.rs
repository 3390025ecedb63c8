//! One SIP dialog leg, sans-IO, owned by both call directions: everything a call does in
//! its dialog once there is one, the same way inbound and outbound.
//!
//! - Requests from the peer: transaction matching (RFC 3261 section 17.2.3, `txkey`) with
//!   retransmissions answered from a bounded table; 481 outside the dialog (482 for a
//!   merged INVITE); CSeq order (section 12.2.2: a lower CSeq gets 500); BYE, CANCEL
//!   (of the initial INVITE before and after its final response), INFO (DTMF), OPTIONS,
//!   NOTIFY (of our transfer), UPDATE and re-INVITE (an offer answered keeping the codec,
//!   hold and resume; without an offer, ours goes in the 2xx and the answer in the ACK);
//!   491 while an offer of ours is outstanding; 501 for the rest.
//! - The initial INVITE as UAS: its responses through its transaction, the 2xx resent
//!   until the ACK (and an answer in that ACK for a late offer), no ACK at all reported.
//! - Our own requests in the dialog: BYE (after the ACK of our 2xx, RFC 3261 section 15),
//!   session refreshes, REFER (`transfer`); the ACK of a 2xx (ours to the peer's
//!   retransmitted 2xx again).
//! - Session timers (RFC 4028, `sip::session_timer`): the interval of the initial
//!   transaction, refreshes by either side (422 below our Min-SE), ours at half the
//!   interval by UPDATE when the peer allows it, else by re-INVITE with the session's SDP
//!   unchanged; 422, 491 and 405/501 handled; expiry reported.
//!
//! Time comes in as `now`; what to send comes out of `poll_transmit` with its flow, what
//! the call must act on out of `poll_event`. Media offer/answer goes through `Offers`
//! (the call's `MediaLeg`). Tests: `leg_*` below; `tests/inbound_calls.rs`,
//! `tests/outbound_calls.rs`, `tests/sip_endpoint.rs` on the wire.

mod ours;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Instant;

use super::outcome::Outcome;
use super::transfer::{self, Transfer};
use crate::sip::admission::{ACCEPT, ALLOW, SUPPORTED};
use crate::sip::body;
use crate::sip::build::{self, Outgoing};
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::count_response_sent;
use crate::sip::incoming::{Incoming, Linger};
use crate::sip::message::Message;
use crate::sip::sdp::Rejection;
use crate::sip::session_timer::{
    self as st, Interval, SessionTimer, Settings, TimerOutput, UasDecision,
};
use crate::sip::transaction::{
    ClientInvite, ClientNonInvite, ClientNonInviteState, Output, ServerInvite, ServerInviteState,
    Timers, Transaction,
};
use crate::sip::transport::Flow;
use crate::sip::txkey::{ClientKey, ServerKey};
use crate::sip::txtable::TxTable;
use crate::sip::uri;

/// In-dialog answers a leg keeps for retransmissions (a flood of requests forgets the
/// oldest first).
pub const MAX_ANSWERED: usize = 64;

/// Who we are on the flow our requests take: Contact, the Via up to its parameters
/// (`EndpointHandle::via_sent_by`), and our agent name.
#[derive(Debug, Clone)]
pub struct Local {
    pub contact: String,
    pub via: String,
    pub user_agent: String,
}

/// Bytes to send and the flow they go on.
#[derive(Debug)]
pub struct Transmit {
    pub flow: Flow,
    pub bytes: Vec<u8>,
}

/// What the call must act on.
#[derive(Debug)]
pub enum LegEvent {
    /// The peer hung up (its BYE was answered 200).
    Bye,
    /// The peer cancelled the INVITE before its final response (487 sent).
    Cancelled,
    /// A key pressed, sent by SIP INFO.
    Dtmf(char),
    /// The 2xx of the initial INVITE was never acknowledged.
    NoAck,
    /// The session timer ran out without a refresh.
    SessionExpired,
    /// A request of ours found the dialog gone (481, 408, or no answer at all).
    DialogGone,
    /// Our transfer finished.
    Transfer(transfer::Done),
}

/// The media side of offer/answer, as the leg needs it (the call's `MediaLeg`).
pub trait Offers {
    /// The peer's offer: our answer, or why not (488 with its Warning).
    fn answer(&mut self, now: Instant, offer: &[u8]) -> Result<String, Rejection>;
    /// Our offer (in the 2xx to a re-INVITE without one, in our re-INVITE): the session
    /// as it is.
    fn offer(&mut self) -> String;
    /// The peer's answer to our offer.
    fn answered(&mut self, now: Instant, answer: &[u8]);
}

/// The initial INVITE, when we are its UAS.
#[derive(Debug)]
struct UasInvite {
    msg: Message,
    flow: Flow,
    key: ServerKey,
    cseq: u32,
    tx: ServerInvite,
    final_status: Option<u16>,
    /// Our 2xx carried the offer (the INVITE had none): the ACK brings the answer.
    offered: bool,
    acked: bool,
}

/// A re-INVITE of the peer whose 2xx awaits its ACK.
#[derive(Debug)]
struct PeerReinvite {
    cseq: u32,
    key: ServerKey,
    /// Our 2xx carried the offer.
    offered: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Bye,
    Refresh { secs: u32 },
}

#[derive(Debug)]
enum ClientTx {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

/// A request of ours in flight.
#[derive(Debug)]
struct Client {
    key: ClientKey,
    purpose: Purpose,
    tx: ClientTx,
    flow: Flow,
    request: Outgoing,
    cseq: u32,
}

/// One dialog leg.
pub struct Leg {
    call_id: String,
    local_tag: String,
    timers: Timers,
    local: Local,
    settings: Settings,
    /// The flow of the initial INVITE.
    flow: Flow,
    /// Where our requests go (the shell sets it once the dialog is up).
    request_flow: Option<Flow>,
    dialog: Option<Dialog>,
    uas: Option<UasInvite>,
    /// UAC: the initial INVITE's key and our ACK of its 2xx (sent again for each 2xx).
    uac_ack: Option<(ClientKey, Vec<u8>)>,
    /// The ACK of our last re-INVITE's 2xx, for its retransmissions.
    reinvite_ack: Option<(ClientKey, Vec<u8>)>,
    answered: TxTable,
    peer_reinvite: Option<PeerReinvite>,
    clients: Vec<Client>,
    transfer: Option<Transfer>,
    /// The interval a 2xx of ours will grant (UAS, initial INVITE).
    pending_interval: Option<Interval>,
    timer: Option<SessionTimer>,
    peer_allows_update: bool,
    /// A BYE waiting for the ACK of our 2xx: its Reason.
    bye_after_ack: Option<String>,
    bye_sent: bool,
    /// The peer ended the call (BYE, or CANCEL before the answer): no BYE of ours.
    peer_ended: bool,
    /// The call is over: new requests get 481.
    ended: bool,
    out: VecDeque<Transmit>,
    events: VecDeque<LegEvent>,
}

fn allows_update(msg: &Message) -> bool {
    uri::tokens(msg.headers_named("Allow"))
        .iter()
        .any(|m| m.eq_ignore_ascii_case("update"))
}

/// Collects a transaction's output for `flow`; true if it gave up (timeout, transport).
fn collect(tx: &mut impl Transaction, flow: &Flow, out: &mut VecDeque<Transmit>) -> bool {
    let mut failed = false;
    while let Some(o) = tx.poll_output() {
        match o {
            Output::Send(bytes) => out.push_back(Transmit {
                flow: flow.clone(),
                bytes,
            }),
            Output::Timeout | Output::TransportError => failed = true,
        }
    }
    failed
}

impl Leg {
    fn new(
        call_id: &str,
        local_tag: String,
        flow: Flow,
        local: Local,
        timers: Timers,
        settings: Settings,
    ) -> Leg {
        Leg {
            call_id: call_id.to_string(),
            local_tag,
            timers,
            local,
            settings,
            flow,
            request_flow: None,
            dialog: None,
            uas: None,
            uac_ack: None,
            reinvite_ack: None,
            answered: TxTable::new(MAX_ANSWERED),
            peer_reinvite: None,
            clients: Vec::new(),
            transfer: None,
            pending_interval: None,
            timer: None,
            peer_allows_update: false,
            bye_after_ack: None,
            bye_sent: false,
            peer_ended: false,
            ended: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// The leg of an inbound call, from its INVITE (the dialog comes with
    /// `create_uas_dialog` once the call is routed).
    pub fn uas(invite: &Incoming, local: Local, timers: Timers, settings: Settings) -> Leg {
        let mut leg = Leg::new(
            invite.call_id(),
            build::new_tag(),
            invite.flow.clone(),
            local,
            timers,
            settings,
        );
        leg.peer_allows_update = allows_update(&invite.msg);
        leg.uas = Some(UasInvite {
            msg: invite.msg.clone(),
            flow: invite.flow.clone(),
            key: invite.server_key(),
            cseq: invite.cseq().map(|(n, _)| n).unwrap_or(0),
            tx: ServerInvite::new(invite.at, invite.flow.is_reliable(), timers),
            final_status: None,
            offered: false,
            acked: false,
        });
        leg
    }

    /// The leg of one outbound attempt (its Call-ID and our From tag) before an answer:
    /// requests get 481 until `confirm_uac`.
    pub fn uac(
        call_id: &str,
        local_tag: &str,
        flow: Flow,
        local: Local,
        timers: Timers,
        settings: Settings,
    ) -> Leg {
        Leg::new(
            call_id,
            local_tag.to_string(),
            flow,
            local,
            timers,
            settings,
        )
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn local_tag(&self) -> &str {
        &self.local_tag
    }

    pub fn dialog(&self) -> Option<&Dialog> {
        self.dialog.as_ref()
    }

    /// UAS: the initial INVITE as received.
    pub fn invite(&self) -> Option<&Message> {
        self.uas.as_ref().map(|u| &u.msg)
    }

    /// The flow of the initial INVITE.
    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    pub fn transfer_running(&self) -> bool {
        self.transfer.is_some()
    }

    /// The session interval in force, if a session timer runs.
    pub fn session_interval(&self) -> Option<Interval> {
        self.timer.as_ref().map(SessionTimer::interval)
    }

    /// UAS: the dialog of the INVITE (RFC 3261 section 12.1.1).
    pub fn create_uas_dialog(&mut self) -> Result<(), String> {
        let uas = self.uas.as_ref().ok_or("not a UAS leg")?;
        self.dialog = Some(Dialog::uas(&uas.msg, &self.local_tag)?);
        Ok(())
    }

    /// UAS: the session-timer headers of the INVITE (RFC 4028 section 9): the call goes on
    /// (the interval waits for our 2xx), or is refused with 422 or 420.
    pub fn accept_invite_timer(&mut self) -> Result<(), Outcome> {
        let Some(uas) = self.uas.as_ref() else {
            return Ok(());
        };
        if !self.settings.enabled && st::requires_timer(&uas.msg) {
            return Err(Outcome::Unsupported("timer".into()));
        }
        match st::uas_decide(&self.settings, &uas.msg) {
            UasDecision::TooSmall { min_se } => Err(Outcome::IntervalTooSmall(min_se)),
            UasDecision::Run(iv) => {
                self.pending_interval = Some(iv);
                Ok(())
            }
            UasDecision::Off => Ok(()),
        }
    }

    /// UAS: a response to the INVITE, its headers filled: our tag (not on 100), and on
    /// 101-299 what a dialog needs (Record-Route copied, Contact, Allow, Supported); a 2xx
    /// carries the session interval.
    pub fn invite_response(&self, status: u16) -> Option<Outgoing> {
        let uas = self.uas.as_ref()?;
        let tag = (status != 100).then_some(self.local_tag.as_str());
        let mut out = build::response_to(&uas.msg, status, tag);
        if (101..300).contains(&status) {
            for rr in uas.msg.headers_named("Record-Route") {
                out.push("Record-Route", rr);
            }
            out.push("Contact", &self.local.contact);
            out.push("Allow", ALLOW);
            if self.settings.enabled {
                out.push("Supported", SUPPORTED);
            }
        }
        if (200..300).contains(&status)
            && let Some(iv) = self.pending_interval
        {
            for (h, v) in st::uas_headers(iv) {
                out.push(h, v);
            }
        }
        Some(out)
    }

    /// UAS: sends a response to the INVITE through its transaction. A 2xx starts the
    /// session timer; a 2xx to an INVITE without an offer carried ours.
    pub fn respond_invite(&mut self, now: Instant, status: u16, mut out: Outgoing) {
        let Some(uas) = self.uas.as_mut() else {
            return;
        };
        out.push("Server", &self.local.user_agent);
        match uas.tx.respond(now, status, out.to_bytes()) {
            Ok(()) => {
                if status >= 200 {
                    uas.final_status = Some(status);
                }
                if status != 100 {
                    count_response_sent(status);
                }
                if (200..300).contains(&status) {
                    uas.offered = body::sdp(&uas.msg).is_none();
                    self.timer = self.pending_interval.map(|iv| SessionTimer::new(now, iv));
                }
            }
            Err(e) => {
                tracing::debug!(call_id = %self.call_id, error = %e, status, "response not sent")
            }
        }
        collect(&mut uas.tx, &uas.flow, &mut self.out);
    }

    /// UAS: the final response to an INVITE the call ends before answering, as the
    /// outcome says (status, Reason phrase, Retry-After, Warning, Min-SE, Unsupported).
    pub fn refuse_invite(&mut self, now: Instant, outcome: &Outcome) {
        let Some(uas) = self.uas.as_ref() else {
            return;
        };
        if uas.final_status.is_some() {
            return;
        }
        let status = outcome.status();
        let mut out = match outcome {
            Outcome::Rejected {
                reason: Some(r), ..
            } => build::response_with_reason(&uas.msg, status, r, Some(&self.local_tag)),
            _ => build::response_to(&uas.msg, status, Some(&self.local_tag)),
        };
        for (h, v) in outcome.response_headers() {
            out.push(h, v);
        }
        self.respond_invite(now, status, out);
    }

    /// UAS: whether the INVITE got its final response.
    pub fn invite_final_sent(&self) -> bool {
        self.uas.as_ref().is_some_and(|u| u.final_status.is_some())
    }

    /// A request of the peer with this call's Call-ID.
    pub fn on_request(&mut self, now: Instant, req: &Incoming, media: Option<&mut dyn Offers>) {
        let key = req.server_key();
        let method = req.method();
        if self.on_initial_invite(now, req, &key) {
            if method == "ACK"
                && let Some(m) = media
            {
                self.ack_answer(now, req, true, m);
            }
            return;
        }
        // retransmissions of what we answered, and the ACK of a 300-699 to a re-INVITE
        if self.answered.on_request(now, &key, method) {
            self.drain_answered();
            return;
        }
        match method {
            "ACK" => {
                let cseq = req.cseq().map(|(n, _)| n);
                if let Some(p) = self.peer_reinvite.take_if(|p| Some(p.cseq) == cseq) {
                    self.answered.ack_2xx(now, &p.key);
                    self.drain_answered();
                    if p.offered
                        && let Some(m) = media
                    {
                        self.ack_answer(now, req, false, m);
                    }
                }
                return; // never a response to an ACK
            }
            "CANCEL" => {
                // the re-INVITE it cancels was answered at once (RFC 3261 section 9.2)
                let known = self.answered.contains(&key.cancelled_invite());
                return self.reply(now, req, if known { 200 } else { 481 }, &[]);
            }
            _ => {}
        }
        if self.ended {
            return self.reply(now, req, 481, &[]);
        }
        let in_dialog = self.dialog.as_ref().is_some_and(|d| d.matches(&req.msg));
        if !in_dialog {
            // RFC 3261 section 8.2.2.2: an INVITE without a To tag here is a merged request
            let merged = method == "INVITE" && req.to().is_some_and(|t| t.tag().is_none());
            return self.reply(now, req, if merged { 482 } else { 481 }, &[]);
        }
        let cseq = req.cseq().map(|(n, _)| n).unwrap_or(0);
        if !self
            .dialog
            .as_mut()
            .is_some_and(|d| d.accept_remote_cseq(cseq))
        {
            // section 12.2.2: out of order
            return self.reply(now, req, 500, &[]);
        }
        match method {
            "BYE" => {
                self.reply(now, req, 200, &[]);
                self.refuse_invite(now, &Outcome::CallerHangup);
                self.ended = true;
                self.peer_ended = true;
                self.timer = None;
                self.events.push_back(LegEvent::Bye);
            }
            "INFO" => match body::info_dtmf(&req.msg) {
                Some(d) => {
                    self.reply(now, req, 200, &[]);
                    self.events.push_back(LegEvent::Dtmf(d));
                }
                None if req.msg.body.is_empty() => self.reply(now, req, 200, &[]),
                None => self.reply(
                    now,
                    req,
                    415,
                    &[("Accept", "application/dtmf-relay, application/dtmf")],
                ),
            },
            "OPTIONS" => {
                self.reply(
                    now,
                    req,
                    200,
                    &[
                        ("Allow", ALLOW),
                        ("Accept", ACCEPT),
                        ("Supported", SUPPORTED),
                    ],
                );
            }
            "NOTIFY" => {
                let Some(t) = self.transfer.as_mut() else {
                    return self.reply(now, req, 481, &[]);
                };
                let (status, done) = t.on_notify(req);
                self.reply(now, req, status, &[]);
                if let Some(d) = done {
                    self.transfer = None;
                    self.events.push_back(LegEvent::Transfer(d));
                }
            }
            "UPDATE" | "INVITE" => self.on_offer_request(now, req, key, cseq, media),
            _ => self.reply(now, req, 501, &[("Allow", ALLOW)]),
        }
    }

    /// The initial INVITE (UAS): a retransmission, an ACK of its final, a CANCEL of it.
    /// True when handled.
    fn on_initial_invite(&mut self, now: Instant, req: &Incoming, key: &ServerKey) -> bool {
        let Some(uas) = self.uas.as_mut() else {
            return false;
        };
        match req.method() {
            "INVITE" if uas.key == *key => uas.tx.on_request(now),
            // the ACK of a 300-699 (same transaction) or of our 2xx (its own, by CSeq)
            "ACK" if uas.key.matches(key) || req.cseq().map(|(n, _)| n) == Some(uas.cseq) => {
                if uas.key.matches(key) && !matches!(uas.final_status, Some(200..=299)) {
                    uas.tx.on_ack(now);
                } else if matches!(uas.final_status, Some(200..=299)) && !uas.acked {
                    uas.tx.on_ack(now);
                    uas.acked = true;
                    collect(&mut uas.tx, &uas.flow, &mut self.out);
                    if let Some(reason) = self.bye_after_ack.take() {
                        self.send_bye(now, &reason);
                    }
                    return true;
                } else {
                    return true;
                }
            }
            "CANCEL" if key.cancelled_invite() == uas.key => {
                let pending = uas.final_status.is_none();
                self.reply(now, req, 200, &[]);
                if pending {
                    self.refuse_invite(now, &Outcome::CallerCancelled);
                    self.ended = true;
                    self.peer_ended = true;
                    self.events.push_back(LegEvent::Cancelled);
                }
                return true;
            }
            _ => return false,
        }
        collect(&mut uas.tx, &uas.flow, &mut self.out);
        true
    }

    /// The answer in an ACK to our offer (a late-offer INVITE, or a re-INVITE without
    /// one). Only the first ACK of the initial INVITE counts.
    fn ack_answer(&mut self, now: Instant, ack: &Incoming, initial: bool, media: &mut dyn Offers) {
        if initial {
            let Some(uas) = self.uas.as_mut() else {
                return;
            };
            if !uas.offered {
                return;
            }
            uas.offered = false;
        }
        if let Some(answer) = body::sdp(&ack.msg) {
            media.answered(now, &answer);
        }
    }

    /// UPDATE or re-INVITE (RFC 3311, RFC 3261 section 14.2): a session refresh, a target
    /// refresh, and an offer to answer (or, for a re-INVITE without one, ours to make).
    fn on_offer_request(
        &mut self,
        now: Instant,
        req: &Incoming,
        key: ServerKey,
        cseq: u32,
        media: Option<&mut dyn Offers>,
    ) {
        let invite = req.method() == "INVITE";
        let offer = body::sdp(&req.msg);
        let up = self.uas.as_ref().map_or(self.uac_ack.is_some(), |u| {
            matches!(u.final_status, Some(200..=299))
        });
        let ours_pending = self.refresh_in_flight(true) || self.offer_outstanding();
        // section 14.2 and RFC 3311 section 5.2: glare, or an offer while ours is open
        if (invite && (!up || ours_pending)) || (offer.is_some() && ours_pending) {
            return self.reply(now, req, 491, &[]);
        }
        let decision = st::uas_decide(&self.settings, &req.msg);
        if let UasDecision::TooSmall { min_se } = decision {
            return self.reply(now, req, 422, &[("Min-SE", &min_se.to_string())]);
        }
        if let Some(d) = self.dialog.as_mut() {
            d.refresh_target(&req.msg);
        }
        let mut sdp: Option<String> = None;
        let mut offered = false;
        if let Some(media) = media {
            match offer {
                Some(o) => match media.answer(now, &o) {
                    Ok(a) => sdp = Some(a),
                    Err(r) => {
                        let warning = r.warning(&self.local.user_agent);
                        return self.reply(now, req, 488, &[("Warning", &warning)]);
                    }
                },
                None if invite => {
                    sdp = Some(media.offer());
                    offered = true;
                }
                None => {}
            }
        } else if offer.is_some() {
            let warning = format!("399 {} \"no media\"", self.local.user_agent);
            return self.reply(now, req, 488, &[("Warning", &warning)]);
        }
        let mut out = build::response_to(&req.msg, 200, Some(&self.local_tag));
        out.push("Contact", &self.local.contact);
        out.push("Allow", ALLOW);
        if self.settings.enabled {
            out.push("Supported", SUPPORTED);
        }
        // RFC 4028 section 9: a request without Session-Expires in a session that has a
        // timer keeps it, with us refreshing (which asks nothing of the peer): a carrier
        // that wants the timer still gets its refreshes after, say, a hold
        let decision = match (decision, self.timer.as_ref()) {
            (UasDecision::Off, Some(t)) if self.settings.enabled => UasDecision::Run(Interval {
                secs: t.interval().secs,
                refresher: st::Refresher::Us,
            }),
            (d, _) => d,
        };
        if let UasDecision::Run(iv) = decision {
            for (h, v) in st::uas_headers(iv) {
                out.push(h, v);
            }
            match self.timer.as_mut() {
                Some(t) => t.refreshed(now, iv),
                None => self.timer = Some(SessionTimer::new(now, iv)),
            }
        }
        if let Some(s) = sdp {
            out = out.body("application/sdp", s);
        }
        self.send_answer(now, req, key.clone(), 200, out);
        if invite {
            self.peer_reinvite = Some(PeerReinvite { cseq, key, offered });
        }
    }

    /// Answers a request with `status` and `headers` through a transaction of its own.
    fn reply(&mut self, now: Instant, req: &Incoming, status: u16, headers: &[(&str, &str)]) {
        let mut out = build::response_to(&req.msg, status, Some(&self.local_tag));
        for (h, v) in headers {
            out.push(h, v);
        }
        self.send_answer(now, req, req.server_key(), status, out);
    }

    fn send_answer(
        &mut self,
        now: Instant,
        req: &Incoming,
        key: ServerKey,
        status: u16,
        mut out: Outgoing,
    ) {
        out.push("Server", &self.local.user_agent);
        count_response_sent(status);
        self.answered.respond(
            now,
            key,
            req.flow.clone(),
            self.timers,
            status,
            out.to_bytes(),
        );
        self.drain_answered();
    }

    /// Our offer in the 2xx to a re-INVITE awaits its answer in the ACK (while that
    /// transaction lives: an ACK that never comes does not block offers forever).
    fn offer_outstanding(&self) -> bool {
        self.peer_reinvite
            .as_ref()
            .is_some_and(|p| p.offered && self.answered.contains(&p.key))
    }

    /// What the table of our answers wants sent.
    fn drain_answered(&mut self) {
        while let Some((flow, bytes)) = self.answered.poll_transmit() {
            self.out.push_back(Transmit { flow, bytes });
        }
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut min = |t: Option<Instant>| {
            if let Some(t) = t {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        };
        min(self.uas.as_ref().and_then(|u| u.tx.poll_timeout()));
        min(self.answered.poll_timeout());
        for c in &self.clients {
            min(match &c.tx {
                ClientTx::Invite(t) => t.poll_timeout(),
                ClientTx::NonInvite(t) => t.poll_timeout(),
            });
        }
        min(self.transfer.as_ref().map(Transfer::poll_timeout));
        min(self.timer.as_ref().and_then(SessionTimer::poll_timeout));
        at
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, media: Option<&mut dyn Offers>) {
        if let Some(uas) = self.uas.as_mut() {
            uas.tx.handle_timeout(now);
            let gave_up = collect(&mut uas.tx, &uas.flow, &mut self.out);
            if gave_up && matches!(uas.final_status, Some(200..=299)) && !uas.acked {
                self.events.push_back(LegEvent::NoAck);
                if let Some(reason) = self.bye_after_ack.take() {
                    self.send_bye(now, &reason);
                }
            }
        }
        self.answered.handle_timeout(now);
        self.drain_answered();
        let mut gone = false;
        for c in &mut self.clients {
            let failed = match &mut c.tx {
                ClientTx::Invite(t) => {
                    t.handle_timeout(now);
                    collect(t, &c.flow, &mut self.out)
                }
                ClientTx::NonInvite(t) => {
                    t.handle_timeout(now);
                    collect(t, &c.flow, &mut self.out)
                }
            };
            gone |= failed && matches!(c.purpose, Purpose::Refresh { .. });
        }
        self.clients.retain(|c| match &c.tx {
            ClientTx::Invite(t) => !t.is_terminated(),
            ClientTx::NonInvite(t) => !t.is_terminated(),
        });
        if gone && !self.ended {
            self.events.push_back(LegEvent::DialogGone);
            self.timer = None;
        }
        if let Some(t) = self.transfer.as_mut() {
            let done = t.handle_timeout(now);
            for bytes in t.take_output() {
                self.out.push_back(Transmit {
                    flow: t.flow().clone(),
                    bytes,
                });
            }
            if let Some(d) = done {
                self.transfer = None;
                self.events.push_back(LegEvent::Transfer(d));
            }
        }
        let mut refresh = None;
        if let Some(t) = self.timer.as_mut() {
            t.handle_timeout(now);
            while let Some(o) = t.poll_output() {
                match o {
                    TimerOutput::Refresh => refresh = Some(t.interval().secs),
                    TimerOutput::Expired => self.events.push_back(LegEvent::SessionExpired),
                }
            }
        }
        if let Some(secs) = refresh {
            self.send_refresh(now, secs, media);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<LegEvent> {
        self.events.pop_front()
    }

    /// Nothing left to wait for after the end: the INVITE's final confirmed (an answered
    /// call need not wait for its ACK) and our BYE answered or given up.
    pub fn is_settled(&self) -> bool {
        let invite_done = self.uas.as_ref().is_none_or(|u| {
            matches!(u.final_status, Some(200..=299))
                || u.tx.is_terminated()
                || u.tx.state() == ServerInviteState::Confirmed
        });
        let bye_done = self.bye_after_ack.is_none()
            && !self.clients.iter().any(|c| {
                c.purpose == Purpose::Bye
                    && matches!(&c.tx, ClientTx::NonInvite(t)
                        if matches!(t.state(), ClientNonInviteState::Trying | ClientNonInviteState::Proceeding))
            });
        invite_done && bye_done
    }

    /// The answers to re-send for late retransmissions once the call task is gone.
    pub fn linger(&self) -> Vec<Linger> {
        self.answered
            .last_responses()
            .map(|(key, bytes, flow)| Linger {
                key: key.clone(),
                bytes: bytes.to_vec(),
                flow: flow.clone(),
            })
            .collect()
    }
}
