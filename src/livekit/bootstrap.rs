//! Joining: the token, the signalling handshake and JoinResponse, the local address the
//! media sockets bind (the one the OS routes toward the LiveKit host), both peer
//! connections and the encoder; then the participant's task is spawned and `join`
//! waits until the subscriber connection is up (the server marks us ACTIVE then).

use std::net::{IpAddr, SocketAddr};

use tokio::sync::{mpsc, oneshot, watch};

use super::lifecycle::{Keepalive, Lifecycle};
use super::peer::{Peer, Role};
use super::publish::Publisher;
use super::session::{Parts, Session, now};
use super::signal::{self, JoinError};
use super::{JoinOptions, ParticipantEvent, ParticipantHandle};

const EVENT_QUEUE: usize = 1024;
const COMMAND_QUEUE: usize = 64;

pub(super) async fn join(
    opts: JoinOptions,
) -> Result<(ParticipantHandle, mpsc::Receiver<ParticipantEvent>), JoinError> {
    let token = signal::mint_token(&opts)?;
    let started = now();
    let (ws, join) = signal::connect(&opts, &token).await?;
    let local_ip = local_ip_towards(&opts.url).await?;
    let publisher = Peer::new(Role::Publisher, local_ip, started).map_err(JoinError::Rtc)?;
    let subscriber = Peer::new(Role::Subscriber, local_ip, started).map_err(JoinError::Rtc)?;
    let publish = Publisher::new(opts.sample_rate, &opts.track_name).map_err(JoinError::Rtc)?;

    let local = join.participant.clone().unwrap_or_default();
    let (sid_tx, sid_rx) = watch::channel(local.sid.clone());
    let (rate_tx, rate_rx) = watch::channel(opts.sample_rate);
    let room = join
        .room
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
    let (active_tx, active_rx) = oneshot::channel();
    let keepalive = Keepalive::from_join(join.ping_interval, join.ping_timeout);
    // the identity is usually made from the caller's number (`sip_{caller}`): redacted
    // like every phone number unless debug logging is on
    tracing::info!(room = %crate::logging::Masked(&room), sid = %local.sid, identity = %crate::logging::Masked(&local.identity),
        server = %join.server_version, publisher = %publisher.local_addr(),
        subscriber = %subscriber.local_addr(), "joined LiveKit room");

    let join_timeout = opts.join_timeout;
    let lifecycle = Lifecycle::new(started, keepalive, opts.reconnect_window)
        .with_jitter_seed(rand::random::<u64>() | 1);
    let session = Session::new(Parts {
        opts,
        token,
        local_ip,
        ws,
        publisher,
        subscriber,
        publish,
        local_sid: local.sid.clone(),
        local_identity: local.identity.clone(),
        lifecycle,
        sid_tx,
        rate_tx,
        cmd_rx,
        events: ev_tx,
        active: active_tx,
    });
    let handle = ParticipantHandle {
        cmd: cmd_tx,
        sid: sid_rx,
        identity: local.identity,
        room,
        sample_rate: rate_rx,
    };
    tokio::spawn(session.run(join));

    match tokio::time::timeout(join_timeout, active_rx).await {
        Ok(Ok(Ok(()))) => Ok((handle, ev_rx)),
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err(JoinError::Signal(
            "the participant task ended before the connection was up".into(),
        )),
        // dropping the handle makes the task leave
        Err(_) => Err(JoinError::Timeout(
            join_timeout,
            "the subscriber connection (participant ACTIVE)",
        )),
    }
}

/// The local address the OS routes toward the signalling host: where media sockets bind.
async fn local_ip_towards(url: &str) -> Result<IpAddr, JoinError> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = rest.split('/').next().unwrap_or(rest);
    let target = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    // IPv4 first: LiveKit deployments advertise IPv4 candidates ("localhost" may
    // resolve to ::1 first)
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .map_err(|e| JoinError::Socket(format!("resolve {target}: {e}")))?
        .collect();
    let addr = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| JoinError::Socket(format!("{target} resolves to nothing")))?;
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let probe =
        std::net::UdpSocket::bind(bind).map_err(|e| JoinError::Socket(format!("probe: {e}")))?;
    probe
        .connect(addr)
        .map_err(|e| JoinError::Socket(format!("no route to {addr}: {e}")))?;
    Ok(probe
        .local_addr()
        .map_err(|e| JoinError::Socket(e.to_string()))?
        .ip())
}
