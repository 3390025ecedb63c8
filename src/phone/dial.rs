//! The phone places a call: our offer, the outbound call's INVITE
//! (`call::outbound::attempt`) on a shell of its own, provisional responses noted, one
//! digest answer to a 401/407 (again only for a stale nonce), a 422 answered with the
//! interval asked, the 2xx confirmed on the shared leg (which ACKs it), a final refusal
//! or no answer at all reported; CANCEL when nobody answers within the timeout. Then the
//! call talks (`talk`) and hangs up through the leg.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::report::CallReport;
use super::{PHONE_TRUNK, Phone, talk};
use crate::call::bridge::{MediaLeg, MediaSetup, PHONE_CODECS};
use crate::call::leg::Leg;
use crate::call::outbound::attempt::{self, Attempt, Target, pick_challenge};
use crate::call::outcome::Outcome;
use crate::call::shell::{self, Shell, Summary, Wake, now};
use crate::config::Transport;
use crate::media::socket;
use crate::media::timeout::MediaTimeoutConfig;
use crate::sip::body;
use crate::sip::build;
use crate::sip::dialog::Dialog;
use crate::sip::digest;
use crate::sip::incoming::{Incoming, SipEvent};
use crate::sip::sdp::Local;
use crate::sip::session_timer as st;
use crate::sip::transaction::{ClientInviteState, ClientNonInvite};
use crate::sip::txkey::ClientKey;
use crate::sip::uri;

/// Digest answers at most (the second only for a stale nonce).
const MAX_AUTH_TRIES: u32 = 2;
/// INVITEs re-sent after a 422.
const MAX_422_RETRIES: u32 = 2;
/// How long we wait for the INVITE's final response after our CANCEL.
const CANCEL_WAIT: Duration = Duration::from_secs(3);

/// How the INVITE ended.
enum Dialled {
    Answered,
    Failed(String),
}

/// Places the call to `number` at `target` and reports it.
pub(crate) async fn place(phone: &Phone, target: Target, number: &str) -> CallReport {
    let start = now();
    let mut report = CallReport {
        expect_tone: phone.opts.expect_tone,
        ..Default::default()
    };
    let (_control_tx, control_rx) = mpsc::channel(1);
    let mut shell = Shell::new(
        phone.ctx.clone(),
        phone.cfg.clone(),
        phone.shutdown.clone(),
        control_rx,
        1,
        start,
    );
    let (outcome, heard) = match dial(phone, &mut shell, target, number, &mut report, start).await {
        Ok(()) => {
            let (o, heard) = talk::talk(&mut shell, &phone.opts, &mut report, start).await;
            (o, Some(heard))
        }
        Err(o) => (o, None),
    };
    let summary = Summary {
        direction: "outbound",
        trunk: PHONE_TRUNK,
        tried: &[],
        rule: "",
        room: "",
        caller: &phone.opts.from,
        called: number,
    };
    shell.finish(outcome, summary).await;
    talk::conclude(&mut report, heard, &phone.opts);
    report
}

/// Until answered (Ok) or failed (the report says why).
async fn dial(
    phone: &Phone,
    shell: &mut Shell,
    target: Target,
    number: &str,
    report: &mut CallReport,
    start: Instant,
) -> Result<(), Outcome> {
    let fail = |report: &mut CallReport, why: String| {
        report.failure = Some(why.clone());
        Outcome::Internal(why)
    };
    let scheme = if target.transport == Transport::Tls {
        "sips"
    } else {
        "sip"
    };
    let transport_param = match target.transport {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    };
    let host = target.host_port();
    let ruri = format!("{scheme}:{number}@{host}{transport_param}");
    report.peer = format!("{ruri} ({})", target.transport.as_str());
    let transports = &phone.ctx.endpoint.transports;
    let flow = match attempt::flow_to(transports, &target).await {
        Ok(f) => f,
        Err(e) => return Err(fail(report, format!("cannot reach {host}: {e}"))),
    };
    let call_id = build::new_call_id();
    let Some(events) = phone.ctx.endpoint.register(&call_id).await else {
        return Err(fail(report, "the SIP endpoint stopped".into()));
    };
    let bound = socket::bind_pair(&phone.ctx.ports, flow.local.ip(), 8)
        .map_err(|e| fail(report, format!("no RTP ports: {e}")))?;
    let local = Local {
        codecs: PHONE_CODECS.to_vec(),
        address: phone.ctx.endpoint.advertised(&flow).ip(),
        rtp_port: bound.guard.pair().rtp,
        session_id: rand::random_range(1..u32::MAX as u64),
        session_version: 1,
    };
    let setup = MediaSetup {
        identity: "roomline-call".into(),
        timeouts: MediaTimeoutConfig {
            timeout: phone.cfg.rtp.media_timeout,
            initial: phone.cfg.rtp.media_timeout_initial,
        },
        signalling: flow.remote.ip(),
    };
    let mut media = MediaLeg::new(bound, local, setup);
    media.first_offer();
    shell.media = Some(media);
    let local_tag = build::new_tag();
    let timer = shell::timer_settings(&phone.cfg, PHONE_TRUNK);
    shell.leg = Some(Leg::uac(
        &call_id,
        &local_tag,
        flow.clone(),
        shell.local_on(&flow),
        phone.ctx.timers,
        timer,
    ));
    shell.events = Some(events);
    let from_host = uri::host_port(phone.ctx.endpoint.advertised(&flow));
    let from = &phone.opts.from;
    let mut a = Attempt::new(
        target,
        flow,
        format!("<{scheme}:{from}@{from_host}>;tag={local_tag}"),
        format!("<{scheme}:{number}@{host}>"),
        ruri,
        timer,
        phone.ctx.timers,
    );
    a.send_invite(shell, &[], &HashMap::new());
    report.note(now() - start, "-> INVITE");
    let deadline = start + phone.opts.timeout;
    let result = ringing(phone, shell, &mut a, report, start, deadline).await;
    match result {
        Ok(Dialled::Answered) => {
            report.answered_after = Some(now() - start);
            Ok(())
        }
        Ok(Dialled::Failed(why)) => {
            report.failure = Some(why.clone());
            Err(Outcome::Rejected {
                status: 500,
                reason: Some(why),
            })
        }
        Err(o) => {
            if report.failure.is_none() {
                report.failure = Some(match o {
                    Outcome::Shutdown => "interrupted before the answer".into(),
                    _ => o.to_string(),
                });
            }
            Err(o)
        }
    }
}

/// Until the INVITE's final response, the timeout, or the end.
async fn ringing(
    phone: &Phone,
    shell: &mut Shell,
    a: &mut Attempt,
    report: &mut CallReport,
    start: Instant,
    deadline: Instant,
) -> Result<Dialled, Outcome> {
    loop {
        let mut timer = deadline.min(now() + Duration::from_millis(20));
        if let Some(t) = a.tx.poll_timeout() {
            timer = timer.min(t);
        }
        let wake_at = shell.next_deadline(Some(timer));
        let wake = shell.step(std::future::pending::<()>(), wake_at).await?;
        shell.drive().await?;
        if let Wake::Response(resp) = wake
            && let Some(d) = on_response(phone, shell, a, *resp, report, start)
        {
            return Ok(d);
        }
        let t = now();
        let driven = a.flow.drive(&mut a.tx, t);
        if driven.failed() && a.tx.state() != ClientInviteState::Accepted {
            report.note(t - start, "no response (transaction timeout)");
            return Ok(Dialled::Failed(format!(
                "timeout: no response from {} (transaction timeout, RFC 3261 Timer B)",
                a.target.host_port()
            )));
        }
        if t >= deadline {
            let why = if a.responded {
                format!(
                    "timeout: not answered within {:.1} s",
                    phone.opts.timeout.as_secs_f64()
                )
            } else {
                format!(
                    "timeout: no response from {} within {:.1} s",
                    a.target.host_port(),
                    phone.opts.timeout.as_secs_f64()
                )
            };
            report.note(t - start, "timeout");
            if a.provisional {
                cancel(phone, shell, a, report, start).await;
            }
            return Ok(Dialled::Failed(why));
        }
    }
}

/// A response to our INVITE: Some when the INVITE is decided.
fn on_response(
    phone: &Phone,
    shell: &mut Shell,
    a: &mut Attempt,
    resp: Incoming,
    report: &mut CallReport,
    start: Instant,
) -> Option<Dialled> {
    if resp.client_key() != a.key {
        if let Some((k, tx)) = a.cancel.as_mut()
            && *k == resp.client_key()
        {
            tx.on_response(resp.at, resp.status());
        }
        return None;
    }
    let status = resp.status();
    a.responded = true;
    let to_tu = {
        let (invite, msg) = (&a.invite, &resp.msg);
        a.tx.on_response(resp.at, status, || {
            build::ack_for_failure(invite, msg).to_bytes()
        })
    };
    a.flow.drive(&mut a.tx, now());
    if !to_tu {
        return None;
    }
    let at = resp.at.saturating_duration_since(start);
    let sdp = body::sdp(&resp.msg);
    let with_sdp = if sdp.is_some() { " (SDP)" } else { "" };
    report.note(at, format!("<- {status} {}{with_sdp}", resp.reason()));
    match status {
        100..=199 => {
            if status > 100 {
                a.provisional = true;
            }
            if let (Some(sdp), Some(m)) = (sdp, shell.media.as_mut()) {
                let _ = m.take_answer(now(), &sdp);
            }
            None
        }
        200..=299 => Some(answered(shell, a, &resp, sdp, report, start)),
        401 | 407 => {
            let Some((user, pass)) = phone.opts.auth.clone().or_else(|| a.target.auth.clone())
            else {
                return Some(Dialled::Failed(format!(
                    "{status} {}: credentials asked, none given (--user, --password)",
                    resp.reason()
                )));
            };
            match pick_challenge(&resp) {
                Some((challenge, proxy))
                    if (a.auth_tries == 0 || challenge.stale) && a.auth_tries < MAX_AUTH_TRIES =>
                {
                    a.auth_tries += 1;
                    let cnonce = build::new_tag();
                    let value =
                        digest::answer(&challenge, "INVITE", &a.ruri, &user, &pass, &cnonce, 1);
                    a.authorization = Some((proxy, value));
                    a.send_invite(shell, &[], &HashMap::new());
                    report.note(now() - start, format!("-> INVITE (digest, user {user:?})"));
                    None
                }
                Some(_) => Some(Dialled::Failed(format!(
                    "{status} {}: our credentials were refused",
                    resp.reason()
                ))),
                None => Some(Dialled::Failed(format!(
                    "{status} {}: no digest challenge we support",
                    resp.reason()
                ))),
            }
        }
        422 => match st::retry_after_422(a.session_expires, &resp.msg)
            .filter(|_| a.retries_422 < MAX_422_RETRIES)
        {
            Some(secs) => {
                a.retries_422 += 1;
                a.session_expires = secs;
                a.send_invite(shell, &[], &HashMap::new());
                report.note(now() - start, format!("-> INVITE (Session-Expires {secs})"));
                None
            }
            None => Some(Dialled::Failed(format!("{status} {}", resp.reason()))),
        },
        _ => Some(Dialled::Failed(format!("{status} {}", resp.reason()))),
    }
}

/// The 2xx: the dialog is confirmed on the leg (which sends the ACK), the answer starts
/// the media.
fn answered(
    shell: &mut Shell,
    a: &mut Attempt,
    resp: &Incoming,
    sdp: Option<Vec<u8>>,
    report: &mut CallReport,
    start: Instant,
) -> Dialled {
    let call_id = shell.call_id();
    let Some(leg) = shell.leg.as_mut() else {
        return Dialled::Failed("no leg".into());
    };
    let dialog = match Dialog::uac(&call_id, &a.from, leg.local_tag(), a.cseq, &resp.msg) {
        Ok(d) => d,
        Err(e) => return Dialled::Failed(format!("unusable 2xx: {e}")),
    };
    leg.confirm_uac(now(), dialog, a.key.clone(), a.cseq, &resp.msg);
    shell.flush();
    report.note(now() - start, "-> ACK");
    shell.answered_at = Some(now());
    if let (Some(sdp), Some(m)) = (sdp, shell.media.as_mut())
        && let Err(r) = m.take_answer(now(), &sdp)
    {
        return Dialled::Failed(format!("unusable SDP answer: {}", r.text));
    }
    if shell.media.as_ref().is_none_or(|m| m.pm.is_none()) {
        return Dialled::Failed("answered without a usable SDP answer".into());
    }
    Dialled::Answered
}

/// CANCEL the ringing INVITE and wait briefly for its final response (ACKed by the
/// transaction); a 2xx crossing it is left to the leg's end (no dialog: nothing to BYE).
async fn cancel(
    phone: &Phone,
    shell: &mut Shell,
    a: &mut Attempt,
    report: &mut CallReport,
    start: Instant,
) {
    let c = a.cancel_request(&shell.call_id());
    let mut tx = ClientNonInvite::new(now(), a.flow.is_reliable(), phone.ctx.timers, c.to_bytes());
    a.flow.drive(&mut tx, now());
    a.cancel = Some((ClientKey::new(&a.key.branch, "CANCEL"), tx));
    report.note(now() - start, "-> CANCEL");
    let until = now() + CANCEL_WAIT;
    while now() < until
        && !matches!(
            a.tx.state(),
            ClientInviteState::Completed | ClientInviteState::Terminated
        )
    {
        let wait = (now() + Duration::from_millis(50)).min(until);
        if let Some(SipEvent::Response(resp)) = shell.next_sip(wait).await {
            if resp.client_key() == a.key {
                let status = resp.status();
                let (invite, msg) = (&a.invite, &resp.msg);
                a.tx.on_response(resp.at, status, || {
                    build::ack_for_failure(invite, msg).to_bytes()
                });
                report.note(
                    resp.at.saturating_duration_since(start),
                    format!("<- {status} {}", resp.reason()),
                );
            } else if let Some((k, tx)) = a.cancel.as_mut()
                && *k == resp.client_key()
            {
                tx.on_response(resp.at, resp.status());
            }
        }
        a.flow.drive(&mut a.tx, now());
        if let Some((_, tx)) = a.cancel.as_mut() {
            a.flow.drive(tx, now());
        }
    }
}
