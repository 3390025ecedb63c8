//! Calls: one task per call owns its dialog, its server and client transactions, its
//! media pipeline and its LiveKit participant (design principle 2). The call manager
//! spawns the tasks, counts them, and ends them all on shutdown. Submodules:
//! `inbound` (a phone call into a room), `outcome` (how a call ended, classified once),
//! `prompt` (the tones a call plays to the phone itself).

pub mod inbound;
pub mod outcome;
pub mod prompt;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::media::socket::SharedPortPool;
use crate::ops::metrics as m;
use crate::sip::endpoint::{EndpointHandle, InboundInvite};
use crate::sip::transaction::Timers;

/// What the manager tells a running call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// End the call now (daemon shutdown): BYE, or 503 before answer.
    Shutdown,
}

/// Services every call uses.
pub struct CallContext {
    pub endpoint: EndpointHandle,
    pub ports: SharedPortPool,
    pub timers: Timers,
    /// Address written in SDP when configured (`rtp.public_ip`, else `sip.public_ip`).
    pub rtp_public_ip: Option<IpAddr>,
    /// Participants currently joined (for the no-leak checks of tests and /health).
    pub participants: Arc<AtomicUsize>,
}

/// Counts of what calls hold, for health, metrics and tests.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CallCounts {
    pub active: usize,
    pub rtp_ports_in_use: usize,
    pub participants: usize,
    pub tasks: usize,
}

/// Held by a call task for its lifetime: counts it as active until dropped (also on a
/// panic), so admission never over-counts.
pub struct ActiveGuard {
    active: Arc<AtomicUsize>,
    released: bool,
}

impl ActiveGuard {
    pub fn new(active: Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(m::CALLS_ACTIVE).increment(1.0);
        ActiveGuard {
            active,
            released: false,
        }
    }

    /// The call is over (its task may still finish a transaction).
    pub fn release(&mut self) {
        if !self.released {
            self.released = true;
            self.active.fetch_sub(1, Ordering::Relaxed);
            metrics::gauge!(m::CALLS_ACTIVE).decrement(1.0);
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.release();
    }
}

/// Handle on the running calls.
#[derive(Clone)]
pub struct Calls {
    ctx: Arc<CallContext>,
    tasks: Arc<AtomicUsize>,
    shutdown: watch::Sender<bool>,
}

impl Calls {
    pub fn counts(&self) -> CallCounts {
        let rtp_ports_in_use = self
            .ctx
            .ports
            .lock()
            .map(|p| p.in_use())
            .unwrap_or_default();
        CallCounts {
            active: self.ctx.endpoint.active_calls.load(Ordering::Relaxed),
            rtp_ports_in_use,
            participants: self.ctx.participants.load(Ordering::Relaxed),
            tasks: self.tasks.load(Ordering::Relaxed),
        }
    }

    /// Ends every call (BYE with a Reason, or 503 before answer).
    pub fn shutdown_all(&self) {
        let _ = self.shutdown.send(true);
    }

    /// Waits until no call task is left, up to `limit`. True if none is left.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.tasks.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until no call is active (tasks may still be finishing their last
    /// transaction), up to `limit`.
    pub async fn wait_no_active(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.ctx.endpoint.active_calls.load(Ordering::Relaxed) == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

static CALL_SEQ: AtomicU64 = AtomicU64::new(1);

/// Spawns a task per admitted INVITE. Returns the handle on the calls.
pub fn start(ctx: CallContext, mut invites: mpsc::Receiver<InboundInvite>) -> Calls {
    let ctx = Arc::new(ctx);
    let tasks = Arc::new(AtomicUsize::new(0));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let calls = Calls {
        ctx: ctx.clone(),
        tasks: tasks.clone(),
        shutdown,
    };
    tokio::spawn(async move {
        while let Some(inv) = invites.recv().await {
            let seq = CALL_SEQ.fetch_add(1, Ordering::Relaxed);
            let ctx = ctx.clone();
            let tasks = tasks.clone();
            let shutdown = shutdown_rx.clone();
            tasks.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let task = tokio::spawn(inbound::run(ctx, inv, shutdown, seq));
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "call task failed");
                }
                tasks.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
    calls
}
