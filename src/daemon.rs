//! `roomline run`: bind the listeners, tell systemd we are ready, reload the configuration
//! on SIGHUP (a new snapshot only if it validates), stop on SIGTERM/SIGINT.

use crate::config::{self, Config};
use crate::ops::{self, Signal, Signals};
use sd_notify::NotifyState;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use tokio::sync::watch;

/// Exit status for a configuration that does not validate (systemd does not restart on it).
pub const EXIT_CONFIG: u8 = 64;
/// Exit status for a failure at run time (a listener that cannot bind, ...).
pub const EXIT_RUNTIME: u8 = 1;

pub async fn run(path: &Path, initial: Config) -> ExitCode {
    let http_addr = initial.http.listen;
    let (snapshot_tx, _snapshot_rx) = watch::channel(Arc::new(initial));
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
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let http = tokio::spawn(async move {
        axum::serve(listener, crate::api::router())
            .with_graceful_shutdown(async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            })
            .await
    });
    tracing::info!(http = %http_addr, version = env!("CARGO_PKG_VERSION"), "roomline ready");
    ops::notify(&[NotifyState::Ready]);

    loop {
        match signals.next().await {
            Signal::Reload => {
                let mut state = vec![NotifyState::Reloading];
                state.extend(NotifyState::monotonic_usec_now().ok());
                ops::notify(&state);
                match config::load(path) {
                    Ok(cfg) => {
                        tracing::info!(
                            trunks = cfg.trunks.len(),
                            rules = cfg.rules.len(),
                            "configuration reloaded"
                        );
                        snapshot_tx.send_replace(Arc::new(cfg));
                    }
                    Err(errs) => {
                        for e in &errs.0 {
                            tracing::error!(error = %e, "configuration reload refused");
                        }
                        tracing::error!(
                            errors = errs.0.len(),
                            "configuration reload refused; the previous configuration stays in force"
                        );
                    }
                }
                ops::notify(&[NotifyState::Ready]);
            }
            Signal::Stop => break,
        }
    }
    tracing::info!("stopping");
    ops::notify(&[NotifyState::Stopping]);
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
