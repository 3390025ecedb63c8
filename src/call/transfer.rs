//! Call transfer by REFER (RFC 3515, RFC 5589 section 6 "basic transfer"): we send
//! REFER with Refer-To in the dialog, the phone side answers 202 and reports progress in
//! NOTIFYs carrying message/sipfrag (RFC 3420) until a final status; a 2xx there means
//! the transfer worked and our leg ends. The leg (`call::leg`) sends the REFER and hands
//! responses and NOTIFYs here; shared by both call directions. Tests:
//! `transfer_*` below, `tests/outbound_calls.rs`.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::sip::dialog::Dialog;
use crate::sip::incoming::Incoming;
use crate::sip::transaction::{ClientNonInvite, Output, Timers};
use crate::sip::transport::Flow;
use crate::sip::txkey::ClientKey;
use crate::sip::uri;

/// Default time the transfer target has to answer.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(30);

/// What `transfer_to` becomes in Refer-To: a SIP or tel URI as given, or a bare number
/// at the dialog peer's host.
pub fn refer_to(to: &str, dialog: &Dialog) -> String {
    let to = to.trim();
    let lower = to.to_ascii_lowercase();
    if lower.starts_with("sip:") || lower.starts_with("sips:") || lower.starts_with("tel:") {
        return format!("<{to}>");
    }
    let host = uri::Uri::parse(&dialog.remote_target)
        .map(|u| match u.port {
            Some(p) if u.host.contains(':') => format!("[{}]:{p}", u.host),
            Some(p) => format!("{}:{p}", u.host),
            None if u.host.contains(':') => format!("[{}]", u.host),
            None => u.host,
        })
        .unwrap_or_else(|_| "invalid".into());
    format!("<sip:{to}@{host}>")
}

/// The status of a message/sipfrag body (`SIP/2.0 200 OK`), RFC 3420.
pub fn sipfrag_status(body: &[u8]) -> Option<(u16, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().next()?.trim();
    let rest = line.strip_prefix("SIP/2.0 ")?;
    let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
    let code: u16 = code.parse().ok().filter(|c| (100..700).contains(c))?;
    Some((code, reason.trim().to_string()))
}

/// Why a transfer failed, as the API caller is told (LiveKit's SIPTransferReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The REFER, or the transfer target, was answered with a failure status.
    Rejected,
    /// Nobody answered in time.
    Timeout,
    /// The subscription ended without a final status.
    SubscriptionTerminated,
    /// Anything else (no call, one transfer at a time).
    Other,
}

/// A failed transfer: what happened, and the SIP status that refused it if one did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub message: String,
    pub reason: FailReason,
    /// The final status of the REFER or of the target (from the sipfrag), with its reason.
    pub sip: Option<(u16, String)>,
}

impl Failure {
    fn new(reason: FailReason, message: impl Into<String>) -> Failure {
        Failure {
            message: message.into(),
            reason,
            sip: None,
        }
    }

    fn rejected(status: u16, phrase: &str, message: String) -> Failure {
        Failure {
            message,
            reason: FailReason::Rejected,
            sip: Some((status, phrase.to_string())),
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Failure {
        Failure::new(FailReason::Other, message)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A transfer in progress: our REFER's transaction, then the NOTIFYs of its
/// subscription, until a final status or the deadline. Sans-IO: the leg sends what
/// `take_output` gives on `flow`.
pub struct Transfer {
    key: ClientKey,
    tx: ClientNonInvite,
    flow: Flow,
    reply: Option<oneshot::Sender<Result<(), Failure>>>,
    deadline: Instant,
    accepted: bool,
    failed: bool,
    pending: Vec<Vec<u8>>,
}

/// The end of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The target answered: our leg is to end.
    Transferred,
    /// It failed; the call goes on.
    Failed(Failure),
}

impl Transfer {
    /// The transfer whose REFER (`request`, with client key `key`) goes out on `flow`.
    pub fn new(
        now: Instant,
        key: ClientKey,
        flow: Flow,
        timers: Timers,
        request: Vec<u8>,
        reply: oneshot::Sender<Result<(), Failure>>,
    ) -> Transfer {
        Transfer {
            key,
            tx: ClientNonInvite::new(now, flow.is_reliable(), timers, request),
            flow,
            reply: Some(reply),
            deadline: now + TRANSFER_TIMEOUT,
            accepted: false,
            failed: false,
            pending: Vec::new(),
        }
    }

    pub fn key(&self) -> &ClientKey {
        &self.key
    }

    pub fn flow(&self) -> &Flow {
        &self.flow
    }

    /// The REFER's (re)transmissions due.
    pub fn take_output(&mut self) -> Vec<Vec<u8>> {
        self.drain();
        std::mem::take(&mut self.pending)
    }

    pub fn poll_timeout(&self) -> Instant {
        self.tx
            .poll_timeout()
            .unwrap_or(self.deadline)
            .min(self.deadline)
    }

    fn finish(&mut self, done: Done) -> Option<Done> {
        if let Some(r) = self.reply.take() {
            let _ = r.send(match &done {
                Done::Transferred => Ok(()),
                Done::Failed(e) => Err(e.clone()),
            });
        }
        Some(done)
    }

    /// A response to the REFER.
    pub fn on_response(&mut self, resp: &Incoming) -> Option<Done> {
        let status = resp.status();
        if !self.tx.on_response(resp.at, status) || status < 200 {
            return None;
        }
        if status < 300 {
            self.accepted = true;
            None
        } else {
            let phrase = resp.reason().to_string();
            self.finish(Done::Failed(Failure::rejected(
                status,
                &phrase,
                format!("REFER refused: {status} {phrase}"),
            )))
        }
    }

    /// A NOTIFY of the refer subscription: the status to answer it with, and the end if
    /// its sipfrag is final.
    pub fn on_notify(&mut self, req: &Incoming) -> (u16, Option<Done>) {
        let event = req.msg.header("Event").unwrap_or("");
        if !event.trim().to_ascii_lowercase().starts_with("refer") {
            return (489, None); // Bad Event (RFC 6665)
        }
        self.accepted = true;
        match sipfrag_status(&req.msg.body) {
            Some((code, _)) if code < 200 => (200, None),
            Some((code, _)) if code < 300 => (200, self.finish(Done::Transferred)),
            Some((code, reason)) => {
                let message = format!("the transfer target answered {code} {reason}");
                (
                    200,
                    self.finish(Done::Failed(Failure::rejected(code, &reason, message))),
                )
            }
            None => {
                let terminated = req
                    .msg
                    .header("Subscription-State")
                    .is_some_and(|s| s.trim().starts_with("terminated"));
                if terminated {
                    let f = Failure::new(
                        FailReason::SubscriptionTerminated,
                        "the transfer ended without a final status",
                    );
                    (200, self.finish(Done::Failed(f)))
                } else {
                    (200, None)
                }
            }
        }
    }

    /// Timers: retransmissions of the REFER (see `take_output`), its timeout, the overall
    /// deadline.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Done> {
        if self.tx.poll_timeout().is_some_and(|d| d <= now) {
            self.tx.handle_timeout(now);
        }
        self.drain();
        self.reply.as_ref()?;
        if self.failed && !self.accepted {
            return self.finish(Done::Failed(Failure::new(
                FailReason::Timeout,
                "no answer to the REFER",
            )));
        }
        if now >= self.deadline {
            return self.finish(Done::Failed(Failure::new(
                FailReason::Timeout,
                "the transfer timed out",
            )));
        }
        None
    }

    fn drain(&mut self) {
        while let Some(o) = self.tx.poll_output() {
            match o {
                Output::Send(b) => self.pending.push(b),
                Output::Timeout | Output::TransportError => self.failed = true,
            }
        }
    }
}

/// The URI of a name-addr (the dialog's local side), for Referred-By.
pub fn local_uri(local: &str) -> String {
    uri::NameAddr::parse(local)
        .map(|n| n.uri_text)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transfer_sipfrag_status() {
        assert_eq!(
            sipfrag_status(b"SIP/2.0 200 OK\r\n"),
            Some((200, "OK".into()))
        );
        assert_eq!(
            sipfrag_status(b"SIP/2.0 100 Trying"),
            Some((100, "Trying".into()))
        );
        assert_eq!(
            sipfrag_status(b"SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n"),
            Some((486, "Busy Here".into()))
        );
        assert_eq!(sipfrag_status(b"garbage"), None);
        assert_eq!(sipfrag_status(b"SIP/2.0 99 x"), None);
    }

    #[test]
    fn transfer_refer_to_forms() {
        let d = Dialog {
            call_id: "c".into(),
            local_tag: "l".into(),
            remote_tag: "r".into(),
            local: "<sip:+15550100@203.0.113.1>;tag=l".into(),
            remote: "<sip:+15550111@carrier.example>;tag=r".into(),
            remote_target: "sip:gw@198.51.100.7:5070".into(),
            route_set: Vec::new(),
            local_cseq: 1,
            remote_cseq: None,
        };
        assert_eq!(refer_to("tel:+15559990000", &d), "<tel:+15559990000>");
        assert_eq!(
            refer_to("sip:agent@pbx.example", &d),
            "<sip:agent@pbx.example>"
        );
        assert_eq!(
            refer_to("+15559990000", &d),
            "<sip:+15559990000@198.51.100.7:5070>"
        );
        assert_eq!(local_uri(&d.local), "sip:+15550100@203.0.113.1");
    }
}
