//! Trunks at run time: OPTIONS pings that track each outbound side's health, and the
//! REGISTER client for trunks that deliver calls only to registered contacts (register at
//! start and on every configuration load, refresh before expiry, back off on failure,
//! register again when a TCP/TLS connection drops, un-register on shutdown). One task per
//! trunk and job; a supervisor restarts them when the configuration changes and publishes
//! every trunk's state (for /health/detailed, metrics and failover) on a watch channel.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::client::{self, ExchangeError, Request, TrunkAddr};
use crate::config::{Config, Trunk};
use crate::ops::metrics as m;
use crate::sip::build;
use crate::sip::endpoint::EndpointHandle;
use crate::sip::transaction::Timers;

/// Longest wait between two REGISTER attempts after failures.
const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Refresh this long before the granted expiry (at least), RFC 3261 section 10.2.4.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// Health of a trunk's outbound side, from OPTIONS pings.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// Not pinged yet (or pings are off).
    Unknown,
    Up {
        status: u16,
        rtt_ms: f64,
        at_unix: u64,
    },
    Down {
        reason: String,
        at_unix: u64,
    },
}

/// Registration state of a trunk that registers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Registration {
    Registering,
    Registered {
        expires_s: u64,
        at_unix: u64,
    },
    Failed {
        reason: String,
        retry_in_s: u64,
        at_unix: u64,
    },
    Unregistered,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TrunkState {
    pub health: Health,
    pub registration: Option<Registration>,
}

pub type States = HashMap<String, TrunkState>;

enum Report {
    Health(String, Health),
    Registration(String, Registration),
}

struct Job {
    fingerprint: String,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Starts the supervisor; returns the trunk states and the task (which ends, after
/// un-registering, once `stop` is set).
pub fn start(
    ep: EndpointHandle,
    timers: Timers,
    mut config: watch::Receiver<Arc<Config>>,
    mut stop: watch::Receiver<bool>,
) -> (watch::Receiver<States>, JoinHandle<()>) {
    let (states_tx, states_rx) = watch::channel(States::new());
    let task = tokio::spawn(async move {
        let (report_tx, mut reports) = mpsc::channel::<Report>(64);
        let mut pings: HashMap<String, Job> = HashMap::new();
        let mut registers: HashMap<String, Job> = HashMap::new();
        let mut cfg = config.borrow_and_update().clone();
        loop {
            apply(
                &ep,
                timers,
                &cfg,
                &mut pings,
                &mut registers,
                &report_tx,
                &states_tx,
            );
            tokio::select! {
                r = config.changed() => {
                    if r.is_err() { break; }
                    cfg = config.borrow_and_update().clone();
                }
                rep = reports.recv() => {
                    if let Some(rep) = rep {
                        states_tx.send_modify(|s| match rep {
                            Report::Health(name, h) => {
                                let up = matches!(h, Health::Up { .. });
                                metrics::gauge!(m::TRUNK_UP, "trunk" => name.clone()).set(if up { 1.0 } else { 0.0 });
                                if let Some(e) = s.get_mut(&name) { e.health = h; }
                            }
                            Report::Registration(name, r) => {
                                let ok = matches!(r, Registration::Registered { .. });
                                metrics::gauge!(m::TRUNK_REGISTERED, "trunk" => name.clone()).set(if ok { 1.0 } else { 0.0 });
                                if let Some(e) = s.get_mut(&name) { e.registration = Some(r); }
                            }
                        });
                    }
                }
                _ = crate::ops::flag_set(&mut stop) => break,
            }
        }
        // shutdown: pings stop, registrations un-register (bounded)
        for (_, j) in pings.drain() {
            let _ = j.stop.send(true);
            j.task.abort();
        }
        let waits: Vec<JoinHandle<()>> = registers
            .drain()
            .map(|(_, j)| {
                let _ = j.stop.send(true);
                j.task
            })
            .collect();
        for t in waits {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    });
    (states_rx, task)
}

fn ping_fingerprint(t: &Trunk) -> Option<String> {
    let o = t.outbound.as_ref()?;
    let interval = o.options_interval?;
    Some(format!(
        "{:?}|{}|{:?}",
        TrunkAddr::of(t),
        interval.as_millis(),
        o.auth.as_ref().map(|a| &a.username)
    ))
}

fn register_fingerprint(t: &Trunk) -> Option<String> {
    let o = t.outbound.as_ref()?;
    let r = o.register.as_ref()?;
    Some(format!(
        "{:?}|{}|{:?}|{:?}|{:?}",
        TrunkAddr::of(t),
        r.expires.as_secs(),
        o.auth.as_ref().map(|a| (&a.username, a.password.expose())),
        o.from_number,
        r.user
    ))
}

/// (Re)starts the jobs the configuration asks for; stops the others.
fn apply(
    ep: &EndpointHandle,
    timers: Timers,
    cfg: &Config,
    pings: &mut HashMap<String, Job>,
    registers: &mut HashMap<String, Job>,
    report: &mpsc::Sender<Report>,
    states: &watch::Sender<States>,
) {
    states.send_modify(|s| {
        s.retain(|name, _| cfg.trunk(name).is_some_and(|t| t.outbound.is_some()));
        for t in cfg.trunks.iter().filter(|t| t.outbound.is_some()) {
            let e = s.entry(t.name.clone()).or_insert(TrunkState {
                health: Health::Unknown,
                registration: None,
            });
            if register_fingerprint(t).is_none() {
                e.registration = None;
            }
        }
    });
    let wanted_pings: HashMap<String, String> = cfg
        .trunks
        .iter()
        .filter_map(|t| ping_fingerprint(t).map(|f| (t.name.clone(), f)))
        .collect();
    pings.retain(|name, job| {
        let keep = wanted_pings.get(name) == Some(&job.fingerprint);
        if !keep {
            let _ = job.stop.send(true);
            job.task.abort();
        }
        keep
    });
    for (name, fp) in wanted_pings {
        if pings.contains_key(&name) {
            continue;
        }
        let Some(t) = cfg.trunk(&name).cloned() else {
            continue;
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(ping_loop(ep.clone(), timers, t, report.clone(), stop_rx));
        pings.insert(
            name,
            Job {
                fingerprint: fp,
                stop: stop_tx,
                task,
            },
        );
    }
    let wanted_regs: HashMap<String, String> = cfg
        .trunks
        .iter()
        .filter_map(|t| register_fingerprint(t).map(|f| (t.name.clone(), f)))
        .collect();
    // a changed or removed registration un-registers (its task does, when stopped)
    registers.retain(|name, job| {
        let keep = wanted_regs.get(name) == Some(&job.fingerprint);
        if !keep {
            let _ = job.stop.send(true);
        }
        keep
    });
    for (name, fp) in wanted_regs {
        if registers.contains_key(&name) {
            continue;
        }
        let Some(t) = cfg.trunk(&name).cloned() else {
            continue;
        };
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(register_loop(
            ep.clone(),
            timers,
            t,
            report.clone(),
            stop_rx,
        ));
        registers.insert(
            name,
            Job {
                fingerprint: fp,
                stop: stop_tx,
                task,
            },
        );
    }
}

async fn ping_loop(
    ep: EndpointHandle,
    timers: Timers,
    trunk: Trunk,
    report: mpsc::Sender<Report>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(addr) = TrunkAddr::of(&trunk) else {
        return;
    };
    let Some(interval) = trunk.outbound.as_ref().and_then(|o| o.options_interval) else {
        return;
    };
    let creds = trunk
        .outbound
        .as_ref()
        .and_then(|o| o.auth.as_ref())
        .map(|a| (a.username.clone(), a.password.expose().to_string()));
    loop {
        let t0 = crate::clock::now();
        let health = match addr.flow(&ep).await {
            Err(e) => Health::Down {
                reason: e,
                at_unix: crate::clock::unix_secs(),
            },
            Ok(flow) => {
                let local = ep.advertised(&flow);
                let mut req = Request {
                    method: "OPTIONS",
                    ruri: addr.uri(None),
                    from: format!(
                        "<sip:roomline@{}>;tag={}",
                        crate::sip::uri::host_port(local),
                        build::new_tag()
                    ),
                    to: format!("<{}>", addr.uri(None)),
                    headers: vec![("Accept".into(), "application/sdp".into())],
                    call_id: build::new_call_id(),
                    cseq: 1,
                };
                let c = creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
                match client::exchange(&ep, &flow, timers, &mut req, c).await {
                    // any answer but a failure of the server itself means it is there
                    Ok(r) if r.status() < 500 && r.status() != 408 => Health::Up {
                        status: r.status(),
                        rtt_ms: t0.elapsed().as_secs_f64() * 1e3,
                        at_unix: crate::clock::unix_secs(),
                    },
                    Ok(r) => Health::Down {
                        reason: format!("answered {}", r.status()),
                        at_unix: crate::clock::unix_secs(),
                    },
                    Err(ExchangeError::Shutdown) => return,
                    Err(e) => Health::Down {
                        reason: e.to_string(),
                        at_unix: crate::clock::unix_secs(),
                    },
                }
            }
        };
        if let Health::Down { reason, .. } = &health {
            tracing::info!(trunk = %trunk.name, %reason, "trunk OPTIONS ping failed");
        }
        if report
            .send(Report::Health(trunk.name.clone(), health))
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = crate::ops::flag_set(&mut stop) => return,
        }
    }
}

async fn register_loop(
    ep: EndpointHandle,
    timers: Timers,
    trunk: Trunk,
    report: mpsc::Sender<Report>,
    mut stop: watch::Receiver<bool>,
) {
    let Some(addr) = TrunkAddr::of(&trunk) else {
        return;
    };
    let Some(o) = trunk.outbound.clone() else {
        return;
    };
    let Some(reg) = o.register.clone() else {
        return;
    };
    let user = reg
        .user
        .clone()
        .or_else(|| o.auth.as_ref().map(|a| a.username.clone()))
        .or_else(|| o.from_number.clone())
        .unwrap_or_else(|| "roomline".into());
    let creds = o
        .auth
        .as_ref()
        .map(|a| (a.username.clone(), a.password.expose().to_string()));
    let call_id = build::new_call_id();
    let from_tag = build::new_tag();
    let mut cseq = 1u32;
    let mut failures = 0u32;
    let mut registered_flow: Option<crate::sip::transport::Flow>;
    let say = |r: Registration| {
        let report = report.clone();
        let name = trunk.name.clone();
        async move {
            let _ = report.send(Report::Registration(name, r)).await;
        }
    };
    say(Registration::Registering).await;
    loop {
        let outcome = async {
            let flow = addr.flow(&ep).await.map_err(|e| (e, None))?;
            let aor = addr.uri(Some(&user));
            let mut req = Request {
                method: "REGISTER",
                ruri: addr.uri(None),
                from: format!("<{aor}>;tag={from_tag}"),
                to: format!("<{aor}>"),
                headers: vec![
                    ("Contact".into(), ep.contact(&flow)),
                    ("Expires".into(), reg.expires.as_secs().to_string()),
                ],
                call_id: call_id.clone(),
                cseq,
            };
            let c = creds.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
            let r = client::exchange(&ep, &flow, timers, &mut req, c)
                .await
                .map_err(|e| (e.to_string(), None))?;
            cseq = req.cseq + 1;
            if (200..300).contains(&r.status()) {
                let granted = granted_expires(&r).unwrap_or(reg.expires.as_secs());
                Ok((flow, granted))
            } else {
                let retry = r
                    .msg
                    .header("Retry-After")
                    .and_then(|v| v.split(';').next()?.trim().parse::<u64>().ok());
                Err((format!("answered {}", r.status()), retry))
            }
        }
        .await;
        let wait = match outcome {
            Ok((flow, granted)) => {
                failures = 0;
                tracing::info!(trunk = %trunk.name, expires_s = granted, "registered");
                say(Registration::Registered {
                    expires_s: granted,
                    at_unix: crate::clock::unix_secs(),
                })
                .await;
                registered_flow = Some(flow);
                // refresh at the earlier of 80 % and expiry minus the margin
                let g = Duration::from_secs(granted.max(1));

                g.mul_f64(0.8)
                    .min(g.saturating_sub(REFRESH_MARGIN))
                    .max(Duration::from_secs(5))
            }
            Err((reason, retry_after)) => {
                failures += 1;
                let backoff =
                    Duration::from_secs(1u64 << failures.min(9)).min(REGISTER_BACKOFF_MAX);
                let wait = retry_after.map(Duration::from_secs).unwrap_or(backoff);
                tracing::warn!(trunk = %trunk.name, %reason, retry_in_s = wait.as_secs(), "REGISTER failed");
                say(Registration::Failed {
                    reason,
                    retry_in_s: wait.as_secs(),
                    at_unix: crate::clock::unix_secs(),
                })
                .await;
                registered_flow = None;
                wait
            }
        };
        // wait for the refresh, a dropped connection, or the stop
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    if registered_flow.as_ref().is_some_and(|f| !f.is_open()) {
                        tracing::info!(trunk = %trunk.name, "registration connection closed; registering again");
                        break;
                    }
                }
                _ = crate::ops::flag_set(&mut stop) => {
                    unregister(&ep, timers, &addr, &user, &call_id, &from_tag, cseq, creds.as_ref()).await;
                    say(Registration::Unregistered).await;
                    return;
                }
            }
        }
    }
}

/// Expires granted in a 2xx: the Contact's expires parameter, else the Expires header.
fn granted_expires(r: &crate::sip::endpoint::Incoming) -> Option<u64> {
    let from_contact = r.msg.headers_named("Contact").find_map(|c| {
        crate::sip::uri::split_list(c).into_iter().find_map(|e| {
            crate::sip::uri::NameAddr::parse(e)
                .ok()?
                .params
                .value("expires")?
                .parse()
                .ok()
        })
    });
    from_contact.or_else(|| r.msg.header("Expires")?.trim().parse().ok())
}

#[allow(clippy::too_many_arguments)]
async fn unregister(
    ep: &EndpointHandle,
    timers: Timers,
    addr: &TrunkAddr,
    user: &str,
    call_id: &str,
    from_tag: &str,
    cseq: u32,
    creds: Option<&(String, String)>,
) {
    let Ok(flow) = addr.flow(ep).await else {
        return;
    };
    let aor = addr.uri(Some(user));
    let mut req = Request {
        method: "REGISTER",
        ruri: addr.uri(None),
        from: format!("<{aor}>;tag={from_tag}"),
        to: format!("<{aor}>"),
        headers: vec![
            ("Contact".into(), ep.contact(&flow)),
            ("Expires".into(), "0".into()),
        ],
        call_id: call_id.to_string(),
        cseq,
    };
    let c = creds.map(|(u, p)| (u.as_str(), p.as_str()));
    let quick = Timers {
        t1: timers.t1.min(Duration::from_millis(50)),
        ..timers
    };
    match tokio::time::timeout(
        Duration::from_secs(4),
        client::exchange(ep, &flow, quick, &mut req, c),
    )
    .await
    {
        Ok(Ok(r)) => tracing::info!(status = r.status(), "un-registered"),
        _ => tracing::info!("un-register got no answer"),
    }
}
