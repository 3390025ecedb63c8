//! Process operations: systemd notifications, the signals the daemon obeys, metrics, the
//! configuration file watch, and the supervision of the tasks the daemon cannot lose.

pub mod critical;
pub mod metrics;
pub mod watch;

use tokio::signal::unix::{SignalKind, signal};

/// Tells systemd (when started with `Type=notify`) about a state change. Outside systemd
/// this does nothing.
pub fn notify(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The watchdog period systemd asks for (`WATCHDOG_USEC`), as sd_watchdog_enabled(3)
/// reads it: only if `WATCHDOG_PID` is unset or names this process.
pub fn watchdog_usec() -> Option<u64> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.trim().parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then_some(usec)
}

/// Resolves once the flag is set (or its sender is gone). Holds no watch guard across
/// an await, so the future stays `Send`.
pub async fn flag_set(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A signal the daemon acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload the configuration.
    Reload,
    /// SIGTERM or SIGINT: stop.
    Stop,
}

/// Signal streams, installed once at start so no signal is lost between waits.
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Self> {
        Ok(Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.hup.recv() => Signal::Reload,
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
        }
    }
}
