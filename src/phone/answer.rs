//! The phone answers (`roomline call --listen`): a test phone or carrier for outbound
//! calls. INVITEs come from the endpoint (its checks and, with credentials, its digest
//! challenge) like the daemon's; each call is a shell with the shared UAS leg: 100, the
//! session-timer check (422/420), SDP answered (488 if nothing in common; our offer in
//! the 200 for a late offer), 180, then 200 after `--answer-after`, then it talks
//! (`talk`) like a dialled call.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::report::CallReport;
use super::{PHONE_TRUNK, Phone, talk};
use crate::call::bridge::{MediaLeg, MediaSetup};
use crate::call::leg::Leg;
use crate::call::outcome::Outcome;
use crate::call::shell::{self, Shell, Summary, now};
use crate::media::socket;
use crate::media::timeout::MediaTimeoutConfig;
use crate::sip::body;
use crate::sip::endpoint::InboundInvite;
use crate::sip::sdp::Local;

/// Answers `calls` calls (0: until stopped), handing each report to `done` as it ends.
/// Err when no call came within the timeout (before the first call).
pub(crate) async fn serve(
    phone: &mut Phone,
    calls: u32,
    mut done: impl FnMut(CallReport),
) -> Result<u32, String> {
    let mut served = 0u32;
    while calls == 0 || served < calls {
        let inv = if served == 0 {
            let mut stop = phone.shutdown.clone();
            let first = async {
                tokio::select! {
                    inv = phone.invites.recv() => inv,
                    _ = stop.wait_for(|s| *s) => None,
                }
            };
            match tokio::time::timeout(phone.opts.timeout, first).await {
                Ok(Some(inv)) => inv,
                Ok(None) => return Err("stopped before any call".into()),
                Err(_) => {
                    return Err(format!(
                        "timeout: no call within {:.1} s",
                        phone.opts.timeout.as_secs_f64()
                    ));
                }
            }
        } else {
            let mut stop = phone.shutdown.clone();
            tokio::select! {
                inv = phone.invites.recv() => match inv {
                    Some(inv) => inv,
                    None => break,
                },
                _ = stop.wait_for(|s| *s) => break,
            }
        };
        served += 1;
        done(answer(phone, inv, u64::from(served)).await);
    }
    Ok(served)
}

/// One call, from its INVITE to its end.
async fn answer(phone: &Phone, inv: InboundInvite, seq: u64) -> CallReport {
    let InboundInvite {
        invite,
        config,
        events,
        ..
    } = inv;
    let start = invite.at;
    let caller = invite
        .from()
        .and_then(|f| f.uri().ok())
        .map(|u| u.to_string())
        .unwrap_or_default();
    let mut report = CallReport {
        peer: format!(
            "from {caller} at {} ({})",
            invite.flow.remote,
            invite.flow.transport.as_str()
        ),
        expect_tone: phone.opts.expect_tone,
        ..Default::default()
    };
    let offer = body::sdp(&invite.msg);
    report.note(
        Duration::ZERO,
        format!(
            "<- INVITE {}{}",
            invite.request_uri().unwrap_or(""),
            if offer.is_some() { " (SDP)" } else { "" }
        ),
    );
    let (_control_tx, control_rx) = mpsc::channel(1);
    let mut shell = Shell::new(
        phone.ctx.clone(),
        config,
        phone.shutdown.clone(),
        control_rx,
        seq,
        start,
    );
    let settings = shell::timer_settings(&shell.cfg, PHONE_TRUNK);
    let local = shell.local_on(&invite.flow);
    shell.leg = Some(Leg::uas(&invite, local, phone.ctx.timers, settings));
    shell.events = Some(events);
    let (outcome, heard) = match ring(phone, &mut shell, offer, &mut report, start).await {
        Ok(()) => {
            report.answered_after = Some(now().saturating_duration_since(start));
            let (o, heard) = talk::talk(&mut shell, &phone.opts, &mut report, start).await;
            (o, Some(heard))
        }
        Err(o) => {
            if report.failure.is_none() {
                report.failure = Some(format!("{o} ({} sent)", o.status()));
            }
            (o, None)
        }
    };
    let summary = Summary {
        direction: "inbound",
        trunk: PHONE_TRUNK,
        tried: &[],
        rule: "",
        room: "",
        caller: &caller,
        called: "",
    };
    shell.finish(outcome, summary).await;
    talk::conclude(&mut report, heard, &phone.opts);
    report
}

/// Sends a response to the INVITE through the leg.
fn respond(
    shell: &mut Shell,
    status: u16,
    sdp: Option<String>,
    report: &mut CallReport,
    start: Instant,
) {
    let Some(leg) = shell.leg.as_mut() else {
        return;
    };
    let Some(mut out) = leg.invite_response(status) else {
        return;
    };
    let with_sdp = if sdp.is_some() { " (SDP)" } else { "" };
    // the status line without "SIP/2.0"
    let line = out.start.split_once(' ').map_or("", |(_, l)| l).to_string();
    if let Some(sdp) = sdp {
        out = out.body("application/sdp", sdp);
    }
    leg.respond_invite(now(), status, out);
    shell.flush();
    report.note(
        now().saturating_duration_since(start),
        format!("-> {line}{with_sdp}"),
    );
}

/// From the INVITE to our 200: Ok once answered.
async fn ring(
    phone: &Phone,
    shell: &mut Shell,
    offer: Option<Vec<u8>>,
    report: &mut CallReport,
    start: Instant,
) -> Result<(), Outcome> {
    respond(shell, 100, None, report, start);
    let Some(leg) = shell.leg.as_mut() else {
        return Err(Outcome::Internal("no leg".into()));
    };
    leg.accept_invite_timer()?;
    leg.create_uas_dialog().map_err(Outcome::BadSdp)?;
    let flow = leg.flow().clone();
    let bound = socket::bind_pair(&phone.ctx.ports, flow.local.ip(), 8).map_err(|e| {
        report.failure = Some(format!("no RTP ports: {e}"));
        Outcome::NoPorts
    })?;
    let local = Local {
        codecs: crate::config::defaults::CODECS.to_vec(),
        address: phone.ctx.endpoint.advertised(&flow).ip(),
        rtp_port: bound.guard.pair().rtp,
        session_id: rand::random_range(1..u32::MAX as u64),
        session_version: 1,
    };
    let setup = MediaSetup {
        identity: "roomline-call".into(),
        hold_tone: false,
        timeouts: MediaTimeoutConfig {
            timeout: shell.cfg.rtp.media_timeout,
            initial: shell.cfg.rtp.media_timeout_initial,
        },
        signalling: flow.remote.ip(),
        encryption: shell
            .cfg
            .trunk(PHONE_TRUNK)
            .map(|t| t.media_encryption)
            .unwrap_or_default(),
    };
    let mut media = MediaLeg::new(bound, local, setup);
    match &offer {
        Some(o) => {
            media.answer_offer(now(), o).map_err(|r| {
                report.failure = Some(format!("no codec in common: {}", r.text));
                Outcome::NoCommonCodec(r.warning(&shell.cfg.sip.user_agent))
            })?;
        }
        None => {
            media.first_offer();
        }
    }
    shell.media = Some(media);
    respond(shell, 180, None, report, start);
    let answer_at = now() + phone.opts.answer_after;
    while now() < answer_at {
        let deadline = shell.next_deadline(Some(answer_at));
        shell.step(std::future::pending::<()>(), deadline).await?;
        shell.drive().await?;
    }
    let sdp = shell.media.as_ref().map(|m| m.sdp.clone());
    respond(shell, 200, sdp, report, start);
    let t = now();
    shell.answered(t);
    if let Some(m) = shell.media.as_mut() {
        m.start_pipeline(t);
    }
    Ok(())
}
