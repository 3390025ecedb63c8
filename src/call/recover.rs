//! Crash recovery: at start, the end of what a crash left behind (`end_orphans`): a BYE
//! in each orphaned dialog with a Reason saying why, and its participant removed from its room (LiveKit's RoomService
//! RemoveParticipant). Both run in parallel per call; a failure is logged, never retried
//! forever: the journal entry goes once both were tried. A call's own entry is written by
//! `Shell::journal` (when it is answered and when its participant joins) and removed by
//! the shell when the call ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Transport};
use crate::journal::{Entry, Journal};
use crate::sip::dialog::Dialog;
use crate::sip::endpoint::EndpointHandle;
use crate::sip::transaction::Timers;
use crate::sip::transport::Flow;
use crate::trunk::client::{self, Request};

/// The Reason of the BYE that ends an orphaned call: a temporary failure (Q.850 41).
pub const ORPHAN_REASON: &str = "Q.850;cause=41;text=\"call lost in a restart of the bridge\"";
/// CSeq numbers skipped over the journal's: refreshes after the entry was written used
/// some (a UAS accepts a higher CSeq, RFC 3261 section 12.2.2).
const CSEQ_MARGIN: u32 = 100;

/// Ends every call of `orphans` (a previous run's, left by its crash) and takes each off
/// the journal.
pub async fn end_orphans(
    ep: EndpointHandle,
    cfg: Arc<Config>,
    journal: Journal,
    orphans: Vec<Entry>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for e in orphans {
        let (ep, cfg, journal) = (ep.clone(), cfg.clone(), journal.clone());
        tasks.spawn(async move {
            let (bye, removed) = tokio::join!(send_bye(&ep, &e), remove_participant(&cfg, &e));
            tracing::info!(call_id = %e.call_id, room = %crate::logging::Masked(&e.room),
                identity = %crate::logging::Masked(&e.identity),
                bye = %bye.unwrap_or_else(|e| e), participant = %removed.unwrap_or_else(|e| e),
                "ended a call left by a previous run");
            journal.down(&e.key);
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Where the BYE goes: like the call's own in-dialog requests, the route set's first
/// hop or the remote target, the recorded source when that names a private address.
async fn bye_flow(ep: &EndpointHandle, d: &Dialog, e: &Entry) -> Result<Flow, String> {
    let source: SocketAddr = e
        .remote_addr
        .parse()
        .map_err(|_| format!("bad address {:?}", e.remote_addr))?;
    let transport = match e.transport.as_str() {
        "udp" => Transport::Udp,
        "tcp" => Transport::Tcp,
        "tls" => Transport::Tls,
        other => return Err(format!("unknown transport {other:?}")),
    };
    let dest = d.destination(source).ok();
    let (addr, host) = match &dest {
        Some(dst) => match (dst.nat, dst.uri.ip()) {
            (Some(a), _) => (a, dst.uri.host.clone()),
            (None, Some(ip)) => (
                SocketAddr::new(ip, dst.uri.port.unwrap_or(5060)),
                dst.uri.host.clone(),
            ),
            (None, None) => (source, dst.uri.host.clone()),
        },
        None => (source, source.ip().to_string()),
    };
    match transport {
        Transport::Udp => ep
            .transports
            .udp_flow(addr)
            .ok_or_else(|| "no UDP listener".to_string()),
        t => ep.transports.connect(t, addr, &host).await,
    }
}

async fn send_bye(ep: &EndpointHandle, e: &Entry) -> Result<String, String> {
    let d = Dialog {
        call_id: e.call_id.clone(),
        local_tag: e.local_tag.clone(),
        remote_tag: e.remote_tag.clone(),
        local: e.local.clone(),
        remote: e.remote.clone(),
        remote_target: e.remote_target.clone(),
        route_set: e.route_set.clone(),
        local_cseq: e.local_cseq,
        remote_cseq: e.remote_cseq,
    };
    let flow = bye_flow(ep, &d, e).await?;
    let (ruri, routes) = d.request_target();
    let mut headers: Vec<(String, String)> = routes
        .into_iter()
        .map(|r| ("Route".to_string(), r))
        .collect();
    headers.push(("Reason".into(), ORPHAN_REASON.into()));
    let mut req = Request {
        method: "BYE",
        ruri,
        from: d.local.clone(),
        to: d.remote.clone(),
        headers,
        call_id: d.call_id.clone(),
        cseq: d.local_cseq.saturating_add(CSEQ_MARGIN),
    };
    match client::exchange(ep, &flow, Timers::default(), &mut req, None).await {
        Ok(resp) => Ok(format!("BYE answered {}", resp.status())),
        Err(err) => Err(format!("BYE failed: {err}")),
    }
}

/// RoomService RemoveParticipant (a participant already gone is fine).
async fn remove_participant(cfg: &Config, e: &Entry) -> Result<String, String> {
    if e.room.is_empty() || e.identity.is_empty() {
        return Ok("not in a room".into());
    }
    let token = crate::token::mint(
        &cfg.livekit,
        &crate::token::TokenRequest {
            identity: "roomline-recovery".into(),
            // LiveKit wants the admin grant for the participant's own room
            room: Some(e.room.clone()),
            room_admin: true,
            ttl: Duration::from_secs(60),
            ..Default::default()
        },
    )?;
    let base = crate::livekit::http_base(&cfg.livekit.url);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({"room": e.room, "identity": e.identity}).to_string();
    let resp = client
        .post(format!(
            "{base}/twirp/livekit.RoomService/RemoveParticipant"
        ))
        .bearer_auth(token)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|err| format!("LiveKit unreachable: {err}"))?;
    match resp.status().as_u16() {
        200 => Ok("participant removed".into()),
        404 => Ok("participant already gone".into()),
        s => Err(format!("RemoveParticipant answered {s}")),
    }
}
