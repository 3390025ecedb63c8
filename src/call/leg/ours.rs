//! The leg's own requests in the dialog (part of `call::leg`): the ACK of the 2xx to our
//! INVITE, our BYE (after the ACK of our 2xx, RFC 3261 section 15), REFER (`transfer`),
//! session refreshes (RFC 4028 section 10: UPDATE without a body when the peer allows it,
//! else a re-INVITE offering the session unchanged; 422, 491, 405/501, 481/408 handled),
//! and the responses to all of them.

use std::time::{Duration, Instant};

use super::{
    Client, ClientTx, Leg, LegEvent, Local, Offers, Purpose, Transmit, allows_update, collect,
};
use crate::call::transfer::{self, Transfer};
use crate::sip::admission::{ALLOW, SUPPORTED};
use crate::sip::body;
use crate::sip::build::{self, Outgoing};
use crate::sip::dialog::Dialog;
use crate::sip::incoming::Incoming;
use crate::sip::message::Message;
use crate::sip::session_timer::{self as st, Interval, Refresher, SessionTimer};
use crate::sip::transaction::{
    ClientInvite, ClientInviteState, ClientNonInvite, ClientNonInviteState,
};
use crate::sip::transport::Flow;
use crate::sip::txkey::ClientKey;

impl Leg {
    /// UAC: the 2xx to our INVITE (key `invite`, CSeq `cseq`) arrived: the dialog, our
    /// ACK (RFC 3261 section 13.2.2.4: a new request of the dialog, kept for retransmitted
    /// 2xx), what the peer allows, the session timer its 2xx set (section 7.2 of RFC 4028).
    pub fn confirm_uac(
        &mut self,
        now: Instant,
        mut dialog: Dialog,
        invite: ClientKey,
        cseq: u32,
        response: &Message,
    ) {
        let via = format!("{};branch={};rport", self.local.via, build::new_branch());
        let mut ack = dialog.request("ACK", &via, &self.local.contact);
        ack.set("CSeq", format!("{cseq} ACK"));
        let bytes = ack.to_bytes();
        self.out.push_back(Transmit {
            flow: self.flow.clone(),
            bytes: bytes.clone(),
        });
        self.dialog = Some(dialog);
        self.request_flow = Some(self.flow.clone());
        self.uac_ack = Some((invite, bytes));
        self.peer_allows_update = allows_update(response);
        if self.settings.enabled {
            self.timer = st::uac_decide(response).map(|iv| SessionTimer::new(now, iv));
        }
    }

    /// Whether our requests still need a flow (a UAS leg whose dialog is up).
    pub fn needs_request_flow(&self) -> bool {
        self.request_flow.is_none() && self.dialog.is_some() && self.invite_final_sent()
    }

    /// Where our requests go from now on, and who we are there.
    pub fn set_request_flow(&mut self, flow: Flow, local: Local) {
        self.request_flow = Some(flow);
        self.local = local;
    }

    /// The call is over: sends our BYE (with `reason`) if the dialog is up and the peer
    /// did not end it, after the ACK of our 2xx if that is still to come. New requests get
    /// 481 from now on.
    pub fn hang_up(&mut self, now: Instant, reason: &str) {
        self.ended = true;
        self.timer = None;
        if self.bye_sent || self.peer_ended || self.dialog.is_none() {
            return;
        }
        let up = match &self.uas {
            Some(u) => matches!(u.final_status, Some(200..=299)),
            None => self.uac_ack.is_some(),
        };
        if !up {
            return;
        }
        if self
            .uas
            .as_ref()
            .is_some_and(|u| !u.acked && !u.tx.is_terminated())
        {
            self.bye_after_ack = Some(reason.to_string());
            return;
        }
        self.send_bye(now, reason);
    }

    pub(super) fn send_bye(&mut self, now: Instant, reason: &str) {
        self.bye_after_ack = None;
        if let Some((mut out, key, flow, cseq)) = self.new_request("BYE") {
            out.push("Reason", reason);
            self.bye_sent = true;
            self.start_client(now, key, Purpose::Bye, out, flow, cseq);
        }
    }

    /// Sends a REFER (RFC 3515) in the dialog; the outcome comes as `LegEvent::Transfer`.
    pub fn start_transfer(
        &mut self,
        now: Instant,
        to: &str,
        headers: &[(String, String)],
        reply: tokio::sync::oneshot::Sender<Result<(), transfer::Failure>>,
    ) {
        let up = self
            .uas
            .as_ref()
            .map_or(self.uac_ack.is_some(), |u| u.acked);
        if self.transfer.is_some() {
            let _ = reply.send(Err("a transfer is already in progress".into()));
            return;
        }
        let Some(refer_to) = self.dialog.as_ref().filter(|_| up && !self.ended).map(|d| {
            (
                transfer::refer_to(to, d),
                format!("<{}>", transfer::local_uri(&d.local)),
            )
        }) else {
            let _ = reply.send(Err("the call is not up".into()));
            return;
        };
        let Some((mut out, key, flow, _)) = self.new_request("REFER") else {
            return;
        };
        out.push("Refer-To", refer_to.0);
        out.push("Referred-By", refer_to.1);
        for (k, v) in headers {
            out.push(k, v);
        }
        let mut t = Transfer::new(now, key, flow.clone(), self.timers, out.to_bytes(), reply);
        for bytes in t.take_output() {
            self.out.push_back(Transmit {
                flow: flow.clone(),
                bytes,
            });
        }
        self.transfer = Some(t);
    }

    /// A new request in the dialog: the message, its client key, its flow, its CSeq.
    fn new_request(&mut self, method: &str) -> Option<(Outgoing, ClientKey, Flow, u32)> {
        let dialog = self.dialog.as_mut()?;
        let branch = build::new_branch();
        let via = format!("{};branch={branch};rport", self.local.via);
        let mut out = dialog.request(method, &via, &self.local.contact);
        out.push("User-Agent", &self.local.user_agent);
        let flow = self
            .request_flow
            .clone()
            .unwrap_or_else(|| self.flow.clone());
        Some((
            out,
            ClientKey::new(&branch, method),
            flow,
            dialog.local_cseq,
        ))
    }

    fn start_client(
        &mut self,
        now: Instant,
        key: ClientKey,
        purpose: Purpose,
        request: Outgoing,
        flow: Flow,
        cseq: u32,
    ) {
        let reliable = flow.is_reliable();
        let mut tx = if key.method == "INVITE" {
            ClientTx::Invite(ClientInvite::new(
                now,
                reliable,
                self.timers,
                request.to_bytes(),
            ))
        } else {
            ClientTx::NonInvite(ClientNonInvite::new(
                now,
                reliable,
                self.timers,
                request.to_bytes(),
            ))
        };
        match &mut tx {
            ClientTx::Invite(t) => collect(t, &flow, &mut self.out),
            ClientTx::NonInvite(t) => collect(t, &flow, &mut self.out),
        };
        self.clients.push(Client {
            key,
            purpose,
            tx,
            flow,
            request,
            cseq,
        });
    }

    /// Whether a refresh of ours (a re-INVITE only, with `invite_only`) awaits its final
    /// response.
    pub(super) fn refresh_in_flight(&self, invite_only: bool) -> bool {
        self.clients.iter().any(|c| {
            matches!(c.purpose, Purpose::Refresh { .. })
                && match &c.tx {
                    ClientTx::Invite(t) => {
                        matches!(
                            t.state(),
                            ClientInviteState::Calling | ClientInviteState::Proceeding
                        )
                    }
                    ClientTx::NonInvite(t) => {
                        !invite_only
                            && matches!(
                                t.state(),
                                ClientNonInviteState::Trying | ClientNonInviteState::Proceeding
                            )
                    }
                }
        })
    }

    /// A session refresh of ours (RFC 4028 section 10): UPDATE without a body when the
    /// peer allows it, else a re-INVITE offering the session unchanged.
    pub(super) fn send_refresh(&mut self, now: Instant, secs: u32, media: Option<&mut dyn Offers>) {
        if self.ended || self.refresh_in_flight(false) {
            return;
        }
        if self.offer_outstanding() {
            // an offer of ours awaits its answer: try again shortly
            if let Some(t) = self.timer.as_mut() {
                t.retry_in(now, Duration::from_secs(1));
            }
            return;
        }
        let method = if self.peer_allows_update {
            "UPDATE"
        } else {
            "INVITE"
        };
        let Some((mut out, key, flow, cseq)) = self.new_request(method) else {
            return;
        };
        out.push("Supported", SUPPORTED);
        for (h, v) in st::request_headers(secs, self.settings.min_se, true) {
            out.push(h, v);
        }
        if method == "INVITE" {
            out.push("Allow", ALLOW);
            if let Some(m) = media {
                out = out.body("application/sdp", m.offer());
            }
        }
        tracing::debug!(call_id = %self.call_id, method, secs, "session refresh");
        self.start_client(now, key, Purpose::Refresh { secs }, out, flow, cseq);
    }

    /// A response with this call's Call-ID. False when it belongs to nothing here.
    pub fn on_response(
        &mut self,
        now: Instant,
        resp: &Incoming,
        media: Option<&mut dyn Offers>,
    ) -> bool {
        let key = resp.client_key();
        let status = resp.status();
        // a retransmitted 2xx to the INVITE, or to our re-INVITE: ACK it again
        for ack in [&self.uac_ack, &self.reinvite_ack].into_iter().flatten() {
            if ack.0 == key && (200..300).contains(&status) {
                self.out.push_back(Transmit {
                    flow: self
                        .request_flow
                        .clone()
                        .unwrap_or_else(|| self.flow.clone()),
                    bytes: ack.1.clone(),
                });
                return true;
            }
        }
        if let Some(t) = self.transfer.as_mut()
            && *t.key() == key
        {
            let done = t.on_response(resp);
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
            return true;
        }
        let Some(i) = self.clients.iter().position(|c| c.key == key) else {
            return false;
        };
        let c = &mut self.clients[i];
        let to_tu = match &mut c.tx {
            ClientTx::Invite(t) => {
                let (request, msg) = (&c.request, &resp.msg);
                let r = t.on_response(now, status, || {
                    build::ack_for_failure(request, msg).to_bytes()
                });
                collect(t, &c.flow, &mut self.out);
                r
            }
            ClientTx::NonInvite(t) => {
                let r = t.on_response(now, status);
                collect(t, &c.flow, &mut self.out);
                r
            }
        };
        if to_tu && status >= 200 {
            let (purpose, cseq, method) = (c.purpose, c.cseq, c.key.method.clone());
            if let Purpose::Refresh { secs } = purpose {
                self.refresh_answered(now, resp, &method, cseq, secs, media);
            }
        }
        true
    }

    /// The final response to our session refresh.
    fn refresh_answered(
        &mut self,
        now: Instant,
        resp: &Incoming,
        method: &str,
        cseq: u32,
        secs: u32,
        media: Option<&mut dyn Offers>,
    ) {
        let status = resp.status();
        if (200..300).contains(&status) {
            if method == "INVITE" {
                self.ack_reinvite(resp, cseq);
                if let (Some(m), Some(answer)) = (media, body::sdp(&resp.msg)) {
                    m.answered(now, &answer);
                }
            }
            let iv = st::uac_decide(&resp.msg).unwrap_or(Interval {
                secs,
                refresher: Refresher::Us,
            });
            if let Some(t) = self.timer.as_mut() {
                t.refreshed(now, iv);
            }
            return;
        }
        let retry = match status {
            422 => st::retry_after_422(secs, &resp.msg).map(|s| {
                if let Some(t) = self.timer.as_mut() {
                    t.raise_interval(s);
                }
                Duration::ZERO
            }),
            // RFC 3261 section 14.1: the owner of the Call-ID waits 2.1-4 s, the other 0-2 s
            491 => Some(Duration::from_millis(if self.uas.is_some() {
                rand::random_range(0..2000)
            } else {
                rand::random_range(2100..4000)
            })),
            405 | 501 if method == "UPDATE" => {
                self.peer_allows_update = false;
                Some(Duration::ZERO)
            }
            408 | 481 => {
                self.events.push_back(LegEvent::DialogGone);
                self.timer = None;
                None
            }
            _ => Some(Duration::from_secs(u64::from(secs / 4).max(1))),
        };
        if let (Some(after), Some(t)) = (retry, self.timer.as_mut()) {
            t.retry_in(now, after);
        }
    }

    /// ACK of a 2xx to our re-INVITE (RFC 3261 section 13.2.2.4), kept for its
    /// retransmissions.
    fn ack_reinvite(&mut self, resp: &Incoming, cseq: u32) {
        let Some(dialog) = self.dialog.as_mut() else {
            return;
        };
        let via = format!("{};branch={};rport", self.local.via, build::new_branch());
        let mut ack = dialog.request("ACK", &via, &self.local.contact);
        ack.set("CSeq", format!("{cseq} ACK"));
        let bytes = ack.to_bytes();
        self.out.push_back(Transmit {
            flow: self
                .request_flow
                .clone()
                .unwrap_or_else(|| self.flow.clone()),
            bytes: bytes.clone(),
        });
        self.reinvite_ack = Some((resp.client_key(), bytes));
    }
}
