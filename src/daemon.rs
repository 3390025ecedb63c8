//! `roomline run`: bind the listeners, tell systemd we are ready, reload the configuration
//! on SIGHUP or when its files change (a new snapshot only if it validates; the old one
//! keeps serving otherwise), stop on SIGTERM/SIGINT. This task owns the configuration
//! snapshot and the reload status; the HTTP handlers read them through watch channels.

use crate::api::{AppState, ReloadStatus};
use crate::call::{self, CallContext};
use crate::config::{self, Config};
use crate::media::ports::PortPool;
use crate::ops::metrics as m;
use crate::ops::watch::{Debounce, Fingerprint};
use crate::ops::{self, Signal, Signals};
use crate::sip::endpoint::{Endpoint, EndpointHandle};
use crate::sip::transaction::Timers;
use sd_notify::NotifyState;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Exit status for a configuration that does not validate (systemd does not restart on it).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status for a failure at run time (a listener that cannot bind, ...).
pub const EXIT_RUNTIME: u8 = 1;

/// How long a released RTP port pair rests before another call may use it.
pub const PORT_DRAIN: Duration = Duration::from_secs(10);

/// How often the configuration files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

fn fingerprint(cfg: &Config) -> Fingerprint {
    // a renewed certificate (or CA file) reloads like an edited configuration
    let mut files: Vec<&Path> = Vec::new();
    for t in cfg.sip.listeners.iter().filter_map(|l| l.tls.as_ref()) {
        files.extend([t.cert.as_path(), t.key.as_path()]);
        files.extend(t.client_ca.as_deref());
    }
    files.extend(
        cfg.trunks
            .iter()
            .filter_map(|t| t.outbound.as_ref()?.ca_file.as_deref()),
    );
    Fingerprint::take(
        &cfg.files.config,
        &[&cfg.files.trunks_dir, &cfg.files.dialplans_dir],
        &files,
    )
}

/// Logs what is valid but probably not meant, at each load.
fn log_config_warnings(cfg: &Config) {
    for w in &cfg.warnings {
        tracing::warn!(origin = %w.origin, "{}", w.message);
    }
}

fn publish_config_metrics(cfg: &Config) {
    metrics::gauge!(m::CONFIG_TRUNKS).set(cfg.trunks.len() as f64);
    metrics::gauge!(m::CONFIG_RULES).set(cfg.rules.len() as f64);
}

pub async fn run(path: &Path, initial: Config) -> ExitCode {
    let started = crate::clock::now();
    let metrics_handle = match m::install() {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "metrics disabled");
            None
        }
    };
    publish_config_metrics(&initial);
    log_config_warnings(&initial);
    metrics::gauge!(m::CONFIG_LAST_RELOAD_OK).set(1.0);
    metrics::gauge!(m::DRAINING).set(0.0);
    let http_addr = initial.http.listen;
    let mut debounce = Debounce::new(fingerprint(&initial));
    let (config_tx, config_rx) = watch::channel(Arc::new(initial));
    let (reload_tx, reload_rx) = watch::channel(ReloadStatus {
        ok: true,
        trigger: "start",
        at_unix: crate::clock::unix_secs(),
        errors: Vec::new(),
    });
    let (draining_tx, draining_rx) = watch::channel(false);
    let mut signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let listener = match tokio::net::TcpListener::bind(http_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(address = %http_addr, error = %e, "cannot bind the HTTP listener");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // SIP: bind every listener before saying we are ready
    let (endpoint, sip, invites) = match Endpoint::bind(config_rx.clone(), Timers::default()).await
    {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the SIP endpoint");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // the trunks' CA files (the listeners' certificates were read at bind)
    sip.transports.reload_tls(&config_rx.borrow());
    let sip_addrs = sip.transports.local_addrs();
    // the tasks the daemon cannot run without: if one ends, the process exits (below)
    let mut critical = ops::critical::Critical::default();
    critical.spawn("SIP endpoint", endpoint.run());
    // trunk health pings and registrations (restarted on every configuration change)
    let (trunks_stop, trunks_stop_rx) = watch::channel(false);
    let (trunk_states, trunks_task) = crate::trunk::monitor::start(
        sip.clone(),
        Timers::default(),
        config_rx.clone(),
        trunks_stop_rx,
    );
    // the journal of active calls: what a crash of the previous run left is ended now
    let journal = open_journal(&config_rx.borrow(), &sip);
    let (calls, manager) = {
        let cfg = config_rx.borrow().clone();
        let ports = PortPool::new(cfg.rtp.ports, PORT_DRAIN);
        call::start(
            CallContext {
                endpoint: sip.clone(),
                ports: Arc::new(std::sync::Mutex::new(ports)),
                timers: Timers::default(),
                rtp_public_ip: cfg.rtp.public_ip.or(cfg.sip.public_ip),
                participants: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                trunk_states: Some(trunk_states.clone()),
                srtp_calls: Arc::default(),
                journal,
            },
            invites,
        )
    };
    critical.spawn("call manager", manager);
    let http_client = match reqwest::Client::builder().build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the HTTP client");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let state = AppState {
        started,
        config: config_rx,
        reload: reload_rx,
        draining: draining_rx,
        metrics: metrics_handle,
        http: http_client,
        calls: Some(calls.clone()),
        sip_listeners: sip_addrs.clone(),
        trunks: Some(trunk_states),
    };
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let http = tokio::spawn(async move {
        axum::serve(listener, crate::api::router(state))
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
    });
    let listening: Vec<String> = sip_addrs
        .iter()
        .map(|(t, a)| format!("{}:{a}", t.as_str()))
        .collect();
    tracing::info!(http = %http_addr, sip = ?listening, version = env!("CARGO_PKG_VERSION"), "roomline ready");
    ops::notify(&[NotifyState::Ready]);
    // systemd watchdog (WatchdogSec=): pinged only while the SIP endpoint answers, so a
    // stuck runtime or endpoint gets the service restarted
    if let Some(watchdog_usec) = ops::watchdog_usec() {
        let period = Duration::from_micros(watchdog_usec / 2);
        let ep = sip.clone();
        tracing::info!(
            period_ms = period.as_millis() as u64,
            "systemd watchdog enabled"
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if ep.ping(period / 2).await {
                    ops::notify(&[NotifyState::Watchdog]);
                } else {
                    tracing::warn!(
                        "the SIP endpoint did not answer; withholding the watchdog ping"
                    );
                }
            }
        });
    }

    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            sig = signals.next() => match sig {
                Signal::Reload => "signal",
                Signal::Stop => break,
            },
            ended = critical.ended() => {
                // nothing is left that could end the calls properly: exit now, so the
                // service manager restarts us and the call journal ends them
                tracing::error!(
                    task = ended.task,
                    panic = ended.panic.as_deref().unwrap_or("none (it returned)"),
                    "a task Roomline cannot run without has ended; exiting for a restart (the call journal ends the calls left behind)"
                );
                return ExitCode::from(EXIT_RUNTIME);
            }
            _ = tick.tick() => {
                let files = fingerprint(&config_tx.borrow());
                if !debounce.observe(files) {
                    continue;
                }
                "file"
            }
        };
        let mut state = vec![NotifyState::Reloading];
        state.extend(NotifyState::monotonic_usec_now().ok());
        ops::notify(&state);
        let status = reload(path, trigger, &config_tx);
        if status.ok {
            // certificates are re-read on every reload, even when only they changed
            sip.transports.reload_tls(&config_tx.borrow());
        }
        debounce.applied(fingerprint(&config_tx.borrow()));
        reload_tx.send_replace(status);
        ops::notify(&[NotifyState::Ready]);
    }
    // drain: no new calls; active ones may finish until the deadline or a second signal
    draining_tx.send_replace(true);
    metrics::gauge!(m::DRAINING).set(1.0);
    ops::notify(&[NotifyState::Stopping]);
    sip.drain().await;
    let grace = config_tx.borrow().limits.drain_timeout;
    let active = calls.counts().active;
    if active > 0 {
        tracing::info!(
            active,
            grace_s = grace.as_secs(),
            "draining: waiting for active calls (signal again to stop now)"
        );
        tokio::select! {
            done = calls.wait_no_active(grace) => {
                if !done {
                    tracing::info!(active = calls.counts().active, "drain deadline reached; ending the remaining calls");
                }
            }
            _ = signals.next() => tracing::info!("second signal: ending the remaining calls now"),
        }
    }
    calls.shutdown_all();
    if !calls.wait_no_active(Duration::from_secs(5)).await {
        tracing::warn!(active = calls.counts().active, "calls still active at exit");
    }
    // the last BYEs get their answers (bounded); registrations are withdrawn
    let _ = calls.wait_idle(Duration::from_secs(2)).await;
    let _ = trunks_stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(6), trunks_task).await;
    sip.transports.shutdown();
    tracing::info!("stopped");
    let _ = stop_tx.send(true);
    match http.await {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "HTTP listener failed");
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            tracing::error!(error = %e, "HTTP task failed");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

/// Loads and validates the configuration; swaps it in only if valid.
fn reload(
    path: &Path,
    trigger: &'static str,
    config_tx: &watch::Sender<Arc<Config>>,
) -> ReloadStatus {
    let path: PathBuf = path.to_path_buf();
    match config::load(&path) {
        Ok(cfg) => {
            // what the running process bound cannot change under it
            let old = config_tx.borrow().clone();
            for (what, changed) in [
                ("sip.listeners", old.sip.listeners != cfg.sip.listeners),
                ("http.listen", old.http.listen != cfg.http.listen),
                ("rtp.port_range", old.rtp.ports != cfg.rtp.ports),
                (
                    "sip.public_ip / rtp.public_ip",
                    old.sip.public_ip != cfg.sip.public_ip
                        || old.rtp.public_ip != cfg.rtp.public_ip,
                ),
            ] {
                if changed {
                    tracing::warn!(
                        setting = what,
                        "changed in the configuration: takes effect at the next restart"
                    );
                }
            }
            tracing::info!(
                trigger,
                trunks = cfg.trunks.len(),
                rules = cfg.rules.len(),
                "configuration reloaded"
            );
            publish_config_metrics(&cfg);
            log_config_warnings(&cfg);
            metrics::counter!(m::CONFIG_RELOADS, "result" => "ok").increment(1);
            metrics::gauge!(m::CONFIG_LAST_RELOAD_OK).set(1.0);
            config_tx.send_replace(Arc::new(cfg));
            ReloadStatus {
                ok: true,
                trigger,
                at_unix: crate::clock::unix_secs(),
                errors: Vec::new(),
            }
        }
        Err(errs) => {
            for e in &errs.0 {
                tracing::error!(trigger, error = %e, "configuration reload refused");
            }
            tracing::error!(
                trigger,
                errors = errs.0.len(),
                "configuration reload refused; the previous configuration stays in force"
            );
            metrics::counter!(m::CONFIG_RELOADS, "result" => "failed").increment(1);
            metrics::gauge!(m::CONFIG_LAST_RELOAD_OK).set(0.0);
            ReloadStatus {
                ok: false,
                trigger,
                at_unix: crate::clock::unix_secs(),
                errors: errs.0.iter().map(|e| e.to_string()).collect(),
            }
        }
    }
}

/// Opens the journal in the state directory (none configured: no journal) and ends the
/// calls it still lists in the background. A journal that cannot be read is set aside
/// and reported; a directory that cannot be written is reported: neither stops the start.
fn open_journal(cfg: &Arc<Config>, sip: &EndpointHandle) -> Option<crate::journal::Journal> {
    let Some(dir) = cfg.files.state_dir.as_ref() else {
        tracing::info!("no state directory (state_dir, STATE_DIRECTORY): calls are not journaled");
        return None;
    };
    let opened = match crate::journal::Journal::open(dir) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot open the call journal: calls are not journaled");
            return None;
        }
    };
    if let Some(aside) = &opened.set_aside {
        tracing::warn!(moved_to = %aside.display(), "the call journal could not be read: set aside");
    }
    if opened.bad > 0 {
        tracing::warn!(
            records = opened.bad,
            "call journal records skipped (torn or corrupt)"
        );
    }
    if !opened.orphans.is_empty() {
        tracing::warn!(
            calls = opened.orphans.len(),
            "calls left by a previous run: ending them"
        );
        tokio::spawn(call::recover::end_orphans(
            sip.clone(),
            cfg.clone(),
            opened.journal.clone(),
            opened.orphans,
        ));
    }
    Some(opened.journal)
}
