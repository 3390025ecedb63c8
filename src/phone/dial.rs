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
use crate::call::bridge::{MediaLeg, MediaSetup};
use crate::call::leg::Leg;
use crate::call::outbound::attempt::{self, Attempt, Challenged, Target};
use crate::call::outcome::Outcome;
use crate::call::shell::{self, Shell, Summary, Wake, now};
use crate::config::Transport;
use crate::media::socket;
use crate::media::timeout::MediaTimeoutConfig;
use crate::sip::body;
use crate::sip::build;
use crate::sip::incoming::Incoming;
use crate::sip::sdp::Local;
use crate::sip::transaction::ClientInviteState;
use crate::sip::uri;

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
        codecs: target.codecs.clone(),
        address: phone.ctx.endpoint.advertised(&flow).ip(),
        rtp_port: bound.guard.pair().rtp,
        session_id: rand::random_range(1..u32::MAX as u64),
        session_version: 1,
    };
    let setup = MediaSetup {
        identity: "roomline-call".into(),
        hold_tone: false,
        timeouts: MediaTimeoutConfig {
            timeout: phone.cfg.rtp.media_timeout,
            initial: phone.cfg.rtp.media_timeout_initial,
        },
        signalling: flow.remote.ip(),
        encryption: phone
            .cfg
            .trunk(PHONE_TRUNK)
            .map(|t| t.media_encryption)
            .unwrap_or_default(),
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
                cancel(shell, a, report, start).await;
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
    let status = a.take_response(&resp)?;
    let at = resp.at.saturating_duration_since(start);
    let sdp = body::sdp(&resp.msg);
    let with_sdp = if sdp.is_some() { " (SDP)" } else { "" };
    let line = format!("{status} {}", resp.reason());
    report.note(at, format!("<- {line}{with_sdp}"));
    let none = HashMap::new();
    match status {
        100..=199 => {
            if let (Some(sdp), Some(m)) = (sdp, shell.media.as_mut()) {
                let _ = m.take_answer(now(), &sdp);
            }
            None
        }
        200..=299 => Some(answered(shell, a, &resp, sdp, report, start)),
        401 | 407 => {
            let credentials = phone.opts.auth.clone().or_else(|| a.target.auth.clone());
            match a.answer_challenge(shell, &resp, credentials.as_ref(), &[], &none) {
                Challenged::Resent => {
                    let user = credentials.map(|c| c.0).unwrap_or_default();
                    report.note(now() - start, format!("-> INVITE (digest, user {user:?})"));
                    None
                }
                Challenged::Refused => Some(Dialled::Failed(format!(
                    "{line}: our credentials were refused"
                ))),
                Challenged::NoCredentials => Some(Dialled::Failed(format!(
                    "{line}: credentials asked, none given (--user, --password)"
                ))),
                Challenged::Unsupported => Some(Dialled::Failed(format!(
                    "{line}: no digest challenge we support"
                ))),
            }
        }
        422 => match a.retry_422(shell, &resp, &[], &none) {
            Some(secs) => {
                report.note(now() - start, format!("-> INVITE (Session-Expires {secs})"));
                None
            }
            None => Some(Dialled::Failed(line)),
        },
        _ => Some(Dialled::Failed(line)),
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
    if let Err(e) = a.confirm(shell, resp) {
        return Dialled::Failed(format!("unusable 2xx: {e}"));
    }
    report.note(now() - start, "-> ACK");
    let taken = match (sdp, shell.media.as_mut()) {
        (Some(sdp), Some(m)) => m.take_answer(now(), &sdp),
        _ => Ok(()),
    };
    shell.answered(now());
    if let Err(r) = taken {
        return Dialled::Failed(format!("unusable SDP answer: {}", r.text));
    }
    if shell.media.as_ref().is_none_or(|m| m.pm.is_none()) {
        return Dialled::Failed("answered without a usable SDP answer".into());
    }
    Dialled::Answered
}

/// CANCEL the ringing INVITE (`Attempt::cancel`); a 2xx that crossed it is confirmed
/// (ACK) and the call is then hung up (BYE) as it ends.
async fn cancel(shell: &mut Shell, a: &mut Attempt, report: &mut CallReport, start: Instant) {
    report.note(now() - start, "-> CANCEL");
    let Some(resp) = a.cancel(shell).await else {
        return;
    };
    let status = resp.status();
    report.note(
        resp.at.saturating_duration_since(start),
        format!("<- {status} {}", resp.reason()),
    );
    if (200..300).contains(&status) && a.confirm(shell, &resp).is_ok() {
        report.note(now() - start, "-> ACK");
    }
}
