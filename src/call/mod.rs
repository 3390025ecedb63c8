//! Calls: one task per call owns its dialog, its server and client transactions, its
//! media pipeline and its LiveKit participant (ARCHITECTURE.md, "One task per call"). The
//! call manager (here) spawns the tasks, counts them, keeps the registry the API finds
//! calls in, and ends them all on shutdown. Submodules: `inbound` (a phone call into a
//! room) and `outbound` (a call the room places, with failover) keep only what differs
//! between the directions; `leg` (the SIP dialog leg, sans-IO) and `shell` (the task's
//! waiting, driving and ending) are shared, as are `bridge` (the phone's RTP and the
//! participant), `attributes` (LiveKit's `sip.*` attributes and the header mapping),
//! `transfer` (REFER), `outcome` (how a call ended, classified once) and `prompt` (tones
//! a call plays to the phone).

pub mod attributes;
pub mod bridge;
pub mod encryption;
pub mod inbound;
pub mod leg;
pub mod outbound;
pub mod outcome;
pub mod prompt;
pub mod recover;
pub mod shell;
pub mod transfer;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use std::collections::HashMap;

use tokio::sync::{mpsc, oneshot, watch};

use crate::media::socket::SharedPortPool;
use crate::ops::metrics as m;
use crate::sip::endpoint::{EndpointHandle, InboundInvite};
use crate::sip::transaction::Timers;

/// What the API asks of one call.
#[derive(Debug)]
pub enum CallControl {
    /// End the call.
    Hangup,
    /// Transfer the phone elsewhere (REFER); the reply comes when the transfer is done.
    Transfer {
        to: String,
        headers: Vec<(String, String)>,
        reply: tokio::sync::oneshot::Sender<Result<(), transfer::Failure>>,
    },
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
    /// Trunk health (OPTIONS) for failover ordering.
    pub trunk_states: Option<watch::Receiver<crate::trunk::monitor::States>>,
    /// Answered calls whose phone media is SRTP, by suite (`srtp::SUITES` order).
    pub srtp_calls: Arc<[AtomicUsize; 3]>,
    /// The journal of active calls (None: no state directory).
    pub journal: Option<crate::journal::Journal>,
}

/// Answered calls whose phone media is SRTP, by suite, for /health/detailed (plain RTP
/// calls are the rest of `active`).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct SrtpCalls {
    #[serde(rename = "AES_CM_128_HMAC_SHA1_80")]
    pub aes_cm_128_hmac_sha1_80: usize,
    #[serde(rename = "AEAD_AES_128_GCM")]
    pub aead_aes_128_gcm: usize,
    #[serde(rename = "AES_CM_128_HMAC_SHA1_32")]
    pub aes_cm_128_hmac_sha1_32: usize,
}

/// Counts an answered call under its SRTP suite while it lives (also on a panic).
pub struct SrtpGuard {
    counts: Arc<[AtomicUsize; 3]>,
    index: usize,
}

impl SrtpGuard {
    pub fn new(counts: Arc<[AtomicUsize; 3]>, suite: crate::media::srtp::SrtpSuite) -> Self {
        let index = crate::media::srtp::SUITES
            .iter()
            .position(|s| *s == suite)
            .unwrap_or(0);
        counts[index].fetch_add(1, Ordering::Relaxed);
        SrtpGuard { counts, index }
    }
}

impl Drop for SrtpGuard {
    fn drop(&mut self) {
        self.counts[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts of what calls hold, for health, metrics and tests.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CallCounts {
    pub active: usize,
    pub rtp_ports_in_use: usize,
    pub participants: usize,
    pub tasks: usize,
    /// Of `active`, the answered calls with SRTP media, by suite.
    pub srtp: SrtpCalls,
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
    manager: mpsc::Sender<ManagerCmd>,
}

enum ManagerCmd {
    Dial {
        cfg: Arc<crate::config::Config>,
        req: Box<outbound::OutboundRequest>,
        reply: oneshot::Sender<Result<outbound::Started, outbound::DialError>>,
    },
    Find {
        key: Participant,
        reply: oneshot::Sender<Option<mpsc::Sender<CallControl>>>,
    },
    Register {
        key: Participant,
        seq: u64,
        control: mpsc::Sender<CallControl>,
    },
    Gone {
        seq: u64,
    },
}

/// A call's participant: how the API names a call (the registry's key).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Participant {
    room: String,
    identity: String,
}

/// Lets a call put itself in the registry once it knows its room and identity (an
/// inbound call learns them from the dialplan).
pub struct Registration {
    manager: mpsc::Sender<ManagerCmd>,
    seq: u64,
    control: mpsc::Sender<CallControl>,
}

impl Registration {
    pub fn register(self, room: String, identity: String) {
        let _ = self.manager.try_send(ManagerCmd::Register {
            key: Participant { room, identity },
            seq: self.seq,
            control: self.control,
        });
    }
}

impl Calls {
    /// Places an outbound call; resolves when the participant is in the room (or, with
    /// `wait_until_answered`, when the callee answered), or with why it failed.
    pub async fn dial(
        &self,
        cfg: Arc<crate::config::Config>,
        req: outbound::OutboundRequest,
    ) -> Result<outbound::Started, outbound::DialError> {
        let (reply, rx) = oneshot::channel();
        if self
            .manager
            .send(ManagerCmd::Dial {
                cfg,
                req: Box::new(req),
                reply,
            })
            .await
            .is_err()
        {
            return Err(outbound::DialError::Ended("service shutting down".into()));
        }
        rx.await
            .unwrap_or_else(|_| Err(outbound::DialError::Ended("the call task ended".into())))
    }

    /// The control channel of the call whose participant is `identity` in `room`.
    pub async fn find(&self, room: &str, identity: &str) -> Option<mpsc::Sender<CallControl>> {
        let (reply, rx) = oneshot::channel();
        self.manager
            .send(ManagerCmd::Find {
                key: Participant {
                    room: room.into(),
                    identity: identity.into(),
                },
                reply,
            })
            .await
            .ok()?;
        rx.await.ok().flatten()
    }

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
            srtp: SrtpCalls {
                aes_cm_128_hmac_sha1_80: self.ctx.srtp_calls[0].load(Ordering::Relaxed),
                aead_aes_128_gcm: self.ctx.srtp_calls[1].load(Ordering::Relaxed),
                aes_cm_128_hmac_sha1_32: self.ctx.srtp_calls[2].load(Ordering::Relaxed),
            },
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

/// Runs the call manager: a task per admitted INVITE and per dial request, and the
/// registry of calls by room and participant identity (for the API). Returns the handle
/// on the calls and the manager's future, for the daemon to spawn as a critical task.
pub fn start(
    ctx: CallContext,
    mut invites: mpsc::Receiver<InboundInvite>,
) -> (
    Calls,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let ctx = Arc::new(ctx);
    let tasks = Arc::new(AtomicUsize::new(0));
    let (shutdown, shutdown_rx) = watch::channel(false);
    let (manager, mut cmds) = mpsc::channel::<ManagerCmd>(256);
    let calls = Calls {
        ctx: ctx.clone(),
        tasks: tasks.clone(),
        shutdown,
        manager: manager.clone(),
    };
    let manager_task = async move {
        // bounded by the calls running: each entry leaves with its call (Gone)
        let mut registry: HashMap<Participant, (u64, mpsc::Sender<CallControl>)> = HashMap::new();
        loop {
            tokio::select! {
                inv = invites.recv() => {
                    let Some(inv) = inv else { break };
                    let seq = CALL_SEQ.fetch_add(1, Ordering::Relaxed);
                    let ctx = ctx.clone();
                    let tasks = tasks.clone();
                    let shutdown = shutdown_rx.clone();
                    let (control, control_rx) = mpsc::channel(8);
                    let registration = Registration { manager: manager.clone(), seq, control };
                    let manager = manager.clone();
                    tasks.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let task = tokio::spawn(inbound::run(ctx, inv, shutdown, control_rx, registration, seq));
                        if let Err(e) = task.await {
                            tracing::error!(error = %e, "call task failed");
                        }
                        tasks.fetch_sub(1, Ordering::Relaxed);
                        let _ = manager.send(ManagerCmd::Gone { seq }).await;
                    });
                }
                cmd = cmds.recv() => match cmd {
                    Some(ManagerCmd::Dial { cfg, req, reply }) => {
                        let seq = CALL_SEQ.fetch_add(1, Ordering::Relaxed);
                        let key = Participant {
                            room: req.room.clone(),
                            identity: req.identity(),
                        };
                        let (control, control_rx) = mpsc::channel(8);
                        registry.insert(key, (seq, control));
                        let ctx = ctx.clone();
                        let tasks = tasks.clone();
                        let shutdown = shutdown_rx.clone();
                        let manager = manager.clone();
                        tasks.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(async move {
                            let task = tokio::spawn(outbound::run(ctx, cfg, *req, reply, shutdown, control_rx, seq));
                            if let Err(e) = task.await {
                                tracing::error!(error = %e, "call task failed");
                            }
                            tasks.fetch_sub(1, Ordering::Relaxed);
                            let _ = manager.send(ManagerCmd::Gone { seq }).await;
                        });
                    }
                    Some(ManagerCmd::Find { key, reply }) => {
                        let found = registry
                            .get(&key)
                            .map(|(_, control)| control.clone())
                            .filter(|control| !control.is_closed());
                        let _ = reply.send(found);
                    }
                    Some(ManagerCmd::Register { key, seq, control }) => {
                        registry.insert(key, (seq, control));
                    }
                    Some(ManagerCmd::Gone { seq }) => {
                        registry.retain(|_, (s, _)| *s != seq);
                    }
                    None => break,
                },
            }
        }
    };
    (calls, manager_task)
}
