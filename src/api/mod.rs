//! HTTP listener: liveness, readiness, LiveKit reachability, a detailed JSON health view,
//! and Prometheus metrics. Call control joins it in later work.

use crate::config::Config;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub mod twirp;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The outcome of the last configuration load.
#[derive(Debug, Clone)]
pub struct ReloadStatus {
    pub ok: bool,
    /// What caused it: `start`, `signal` (SIGHUP) or `file` (a changed file).
    pub trigger: &'static str,
    pub at_unix: u64,
    /// Every error, as `file:line:column: message`.
    pub errors: Vec<String>,
}

/// What the handlers read. Everything is owned by the daemon task and published through
/// watch channels; handlers never lock anything.
#[derive(Clone)]
pub struct AppState {
    pub started: Instant,
    pub config: watch::Receiver<Arc<Config>>,
    pub reload: watch::Receiver<ReloadStatus>,
    pub draining: watch::Receiver<bool>,
    pub metrics: Option<PrometheusHandle>,
    pub http: reqwest::Client,
    /// The running calls (None in tests of the HTTP side alone).
    pub calls: Option<crate::call::Calls>,
    /// The bound SIP listeners.
    pub sip_listeners: Vec<(crate::config::Transport, std::net::SocketAddr)>,
    /// Trunk health and registration state.
    pub trunks: Option<watch::Receiver<crate::trunk::monitor::States>>,
}

/// How long a LiveKit probe may take before the server counts as unreachable.
pub const LIVEKIT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The routes the daemon serves.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/health/ready", get(ready))
        .route("/health/livekit", get(livekit))
        .route("/health/sip", get(sip))
        .route("/health/detailed", get(detailed))
        .route("/metrics", get(metrics))
        .route(
            "/twirp/livekit.SIP/CreateSIPParticipant",
            post(twirp::create_sip_participant),
        )
        .route(
            "/twirp/livekit.SIP/TransferSIPParticipant",
            post(twirp::transfer_sip_participant),
        )
        .with_state(state)
}

/// One round trip to the LiveKit server: GET / must answer 200.
pub async fn probe_livekit(client: &reqwest::Client, url: &str) -> Result<Duration, String> {
    let t0 = crate::clock::now();
    let base = crate::livekit::http_base(url);
    let resp = client
        .get(format!("{base}/"))
        .timeout(LIVEKIT_PROBE_TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                format!("no answer from {base} within {LIVEKIT_PROBE_TIMEOUT:?}")
            } else {
                format!("cannot reach {base}: {}", root_cause(&e))
            }
        })?;
    let rtt = t0.elapsed();
    metrics::histogram!(crate::ops::metrics::LIVEKIT_PROBE_SECONDS).record(rtt.as_secs_f64());
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("{base} answered {}", resp.status()));
    }
    Ok(rtt)
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

async fn ready(State(s): State<AppState>) -> Response {
    if *s.draining.borrow() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining\n".into(),
        );
    }
    let url = s.config.borrow().livekit.url.clone();
    match probe_livekit(&s.http, &url).await {
        Ok(_) => text(StatusCode::OK, "ready\n".into()),
        Err(e) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: LiveKit unreachable: {e}\n"),
        ),
    }
}

async fn sip(State(s): State<AppState>) -> Response {
    let listeners: Vec<String> = s
        .sip_listeners
        .iter()
        .map(|(t, a)| format!("{}:{a}", t.as_str()))
        .collect();
    let draining = *s.draining.borrow();
    let ok = !listeners.is_empty() && !draining;
    let body = serde_json::json!({
        "ok": ok,
        "listeners": listeners,
        "draining": draining,
        "calls": s.calls.as_ref().map(|c| c.counts()),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn livekit(State(s): State<AppState>) -> Response {
    let url = s.config.borrow().livekit.url.clone();
    let (status, body) = match probe_livekit(&s.http, &url).await {
        Ok(rtt) => (
            StatusCode::OK,
            serde_json::json!({"ok": true, "url": url, "rtt_ms": rtt.as_secs_f64() * 1e3}),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"ok": false, "url": url, "error": e}),
        ),
    };
    (status, axum::Json(body)).into_response()
}

async fn detailed(State(s): State<AppState>) -> Response {
    let cfg = s.config.borrow().clone();
    let reload = s.reload.borrow().clone();
    let states = s
        .trunks
        .as_ref()
        .map(|t| t.borrow().clone())
        .unwrap_or_default();
    let trunks: Vec<serde_json::Value> = cfg
        .trunks
        .iter()
        .map(|t| {
            let st = states.get(&t.name);
            serde_json::json!({
                "name": t.name,
                "inbound": t.inbound.is_some(),
                "outbound": t.outbound.as_ref().map(|o| o.target.to_string()),
                "backup": t.backup,
                "health": st.map(|x| &x.health),
                "registration": st.and_then(|x| x.registration.as_ref()),
            })
        })
        .collect();
    // every task alive in the runtime (calls, SIP, API, LiveKit connections...): what a
    // leak of spawned tasks would show, where `calls.tasks` counts only call tasks
    let runtime = tokio::runtime::Handle::current().metrics();
    let body = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": s.started.elapsed().as_secs(),
        "draining": *s.draining.borrow(),
        "calls": s.calls.as_ref().map(|c| c.counts()),
        "runtime": {
            "alive_tasks": runtime.num_alive_tasks(),
            "workers": runtime.num_workers(),
        },
        "sip_listeners": s.sip_listeners.iter().map(|(t, a)| format!("{}:{a}", t.as_str())).collect::<Vec<_>>(),
        "config": {
            "file": cfg.files.config.display().to_string(),
            "trunks": trunks,
            "rules": cfg.rules.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        },
        "last_reload": {
            "ok": reload.ok,
            "trigger": reload.trigger,
            "at_unix": reload.at_unix,
            "errors": reload.errors,
        },
    });
    axum::Json(body).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    match &s.metrics {
        Some(h) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            h.render(),
        )
            .into_response(),
        None => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed\n".into(),
        ),
    }
}
