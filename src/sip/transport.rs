//! SIP transports, the async shell under the endpoint: UDP sockets, TCP and TLS listeners
//! with stream framing (`sip::framing`, 64 KiB per message), and outbound TCP/TLS
//! connections. Every received message reaches the endpoint over one bounded channel
//! together with its [`Flow`], the way back to its sender. Nothing here parses SIP.
//! Keep-alives stop here: a CRLFCRLF ping on a stream gets its CRLF pong, a datagram of
//! CRLFs is dropped (RFC 5626 section 3.5.1).
//!
//! Bounds: the endpoint channel is bounded (a full channel drops datagrams and pauses
//! stream readers), connections are capped, a stream that sends no complete message within
//! [`FIRST_MESSAGE_TIMEOUT`] or a TLS handshake slower than [`TLS_HANDSHAKE_TIMEOUT`] is
//! closed, and a framing error (missing Content-Length, oversized message) closes the
//! stream, which is out of step after it.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, watch};

use super::framing::{Frame, StreamFramer, is_datagram_keepalive};
use super::tls::{self, ClientTls, ServerTls};
use crate::config::{Listener, Transport};
use crate::ops::metrics as m;

/// Largest message on a stream (RFC 3261 section 18.3 leaves it to us).
pub const MAX_STREAM_MESSAGE: usize = 64 * 1024;
/// Most concurrent TCP/TLS connections, inbound and outbound together.
pub const MAX_CONNECTIONS: usize = 2048;
/// A new inbound stream must deliver a complete message this soon.
pub const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A stream that carries nothing (not even a keep-alive) this long is closed, so idle
/// connections cannot hold the connection slots; a call's later requests reconnect.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Queued outgoing messages per stream connection.
const STREAM_QUEUE: usize = 256;
/// Received messages queued for the endpoint.
pub const ENDPOINT_QUEUE: usize = 4096;

/// How to send back to where a message came from (or to a peer we connected to).
#[derive(Clone)]
pub struct Flow {
    pub transport: Transport,
    /// Our address on this flow (the listener's, or the connection's local end).
    pub local: SocketAddr,
    pub remote: SocketAddr,
    conn: Conn,
}

#[derive(Clone)]
enum Conn {
    Udp(Arc<UdpSocket>),
    Stream { id: u64, tx: mpsc::Sender<Vec<u8>> },
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}->{}",
            self.transport.as_str(),
            self.local,
            self.remote
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    #[error("the connection is closed")]
    Closed,
    #[error("the send queue is full")]
    Full,
    #[error("send failed: {0}")]
    Io(String),
}

impl Flow {
    pub fn is_reliable(&self) -> bool {
        self.transport != Transport::Udp
    }

    /// Sends one message, never blocking: a full socket buffer or queue drops it (the
    /// transaction layer retransmits over UDP).
    pub fn send(&self, bytes: &[u8]) -> Result<(), SendError> {
        let r = match &self.conn {
            Conn::Udp(sock) => match sock.try_send_to(bytes, self.remote) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(SendError::Full),
                Err(e) => Err(SendError::Io(e.to_string())),
            },
            Conn::Stream { tx, .. } => tx.try_send(bytes.to_vec()).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::Full,
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            }),
        };
        if r.is_err() {
            metrics::counter!(m::SIP_SEND_FAILURES, "transport" => self.transport.as_str())
                .increment(1);
        }
        r
    }

    /// The same socket towards another address (UDP only; a stream flow is returned as is).
    pub fn to(&self, remote: SocketAddr) -> Flow {
        let mut f = self.clone();
        if matches!(f.conn, Conn::Udp(_)) {
            f.remote = remote;
        }
        f
    }

    /// Identifies the connection of a stream flow (None for UDP).
    pub fn connection_id(&self) -> Option<u64> {
        match &self.conn {
            Conn::Udp(_) => None,
            Conn::Stream { id, .. } => Some(*id),
        }
    }

    /// Whether the flow can still carry messages.
    pub fn is_open(&self) -> bool {
        match &self.conn {
            Conn::Udp(_) => true,
            Conn::Stream { tx, .. } => !tx.is_closed(),
        }
    }
}

/// A message (or a framing failure) from the network.
pub struct Received {
    pub bytes: Vec<u8>,
    pub flow: Flow,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot bind {transport} {address}: {error}")]
    Bind {
        transport: &'static str,
        address: SocketAddr,
        error: std::io::Error,
    },
    #[error("TLS listener {address}: {error}")]
    Tls { address: SocketAddr, error: String },
}

struct Shared {
    tx: mpsc::Sender<Received>,
    connections: AtomicUsize,
    next_id: AtomicU64,
    stop: watch::Receiver<bool>,
    tls_client: ClientTls,
}

/// The bound transports. Dropping it does not stop the listeners; `shutdown` does.
pub struct Transports {
    udp: Vec<(SocketAddr, Arc<UdpSocket>)>,
    streams: Vec<(Transport, SocketAddr)>,
    /// TLS listeners by configured address, for reloading their certificates.
    tls_servers: Vec<(SocketAddr, Arc<ServerTls>)>,
    shared: Arc<Shared>,
    stop_tx: watch::Sender<bool>,
}

impl Transports {
    /// Binds every listener (all or nothing) and starts their tasks. Received messages go
    /// to `tx`.
    pub async fn bind(
        listeners: &[Listener],
        tx: mpsc::Sender<Received>,
    ) -> Result<Transports, BindError> {
        let (stop_tx, stop) = watch::channel(false);
        let shared = Arc::new(Shared {
            tx,
            connections: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            stop,
            tls_client: ClientTls::new(),
        });
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        let mut tls_servers = Vec::new();
        for l in listeners {
            match l.transport {
                Transport::Udp => {
                    let sock = bind_udp(l.address).map_err(|error| BindError::Bind {
                        transport: "udp",
                        address: l.address,
                        error,
                    })?;
                    let local = sock.local_addr().unwrap_or(l.address);
                    udp.push((local, Arc::new(sock)));
                }
                Transport::Tcp | Transport::Tls => {
                    let acceptor = match (&l.transport, &l.tls) {
                        (Transport::Tls, Some(files)) => {
                            let tls = ServerTls::new(files).map_err(|error| BindError::Tls {
                                address: l.address,
                                error,
                            })?;
                            let tls = Arc::new(tls);
                            tls_servers.push((l.address, tls.clone()));
                            Some(tls)
                        }
                        (Transport::Tls, None) => {
                            return Err(BindError::Tls {
                                address: l.address,
                                error: "no certificate and key configured".into(),
                            });
                        }
                        _ => None,
                    };
                    let listener =
                        TcpListener::bind(l.address)
                            .await
                            .map_err(|error| BindError::Bind {
                                transport: l.transport.as_str(),
                                address: l.address,
                                error,
                            })?;
                    let local = listener.local_addr().unwrap_or(l.address);
                    tcp.push((l.transport, local, listener, acceptor));
                }
            }
        }
        for (local, sock) in &udp {
            tokio::spawn(udp_reader(sock.clone(), *local, shared.clone()));
        }
        let mut streams = Vec::new();
        for (transport, local, listener, acceptor) in tcp {
            streams.push((transport, local));
            tokio::spawn(accept_loop(
                transport,
                listener,
                acceptor,
                local,
                shared.clone(),
            ));
        }
        Ok(Transports {
            udp,
            streams,
            tls_servers,
            shared,
            stop_tx,
        })
    }

    /// Local addresses of the listeners, as bound (ports resolved).
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        let mut v: Vec<(Transport, SocketAddr)> =
            self.udp.iter().map(|(a, _)| (Transport::Udp, *a)).collect();
        v.extend(self.streams.iter().copied());
        v
    }

    /// A UDP flow towards `remote` from the first UDP listener of the same address family
    /// (preferring one bound to the same loopback-ness).
    pub fn udp_flow(&self, remote: SocketAddr) -> Option<Flow> {
        let same_family = |a: &SocketAddr| a.is_ipv4() == remote.is_ipv4();
        let pick = self
            .udp
            .iter()
            .filter(|(a, _)| same_family(a))
            .find(|(a, _)| {
                a.ip().is_unspecified() || a.ip().is_loopback() == remote.ip().is_loopback()
            })
            .or_else(|| self.udp.iter().find(|(a, _)| same_family(a)))
            .or_else(|| self.udp.first())?;
        Some(Flow {
            transport: Transport::Udp,
            local: pick.0,
            remote,
            conn: Conn::Udp(pick.1.clone()),
        })
    }

    /// The listener address of a transport (for Via and Contact), same family as `remote`.
    pub fn listener(&self, transport: Transport, remote: SocketAddr) -> Option<SocketAddr> {
        self.local_addrs()
            .into_iter()
            .filter(|(t, _)| *t == transport)
            .map(|(_, a)| a)
            .find(|a| a.is_ipv4() == remote.is_ipv4())
    }

    /// Opens a TCP or TLS connection to `remote` (`server_name` for TLS verification).
    pub async fn connect(
        &self,
        transport: Transport,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<Flow, String> {
        if self.shared.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            return Err("too many connections".into());
        }
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(remote))
            .await
            .map_err(|_| format!("connecting to {remote} timed out"))?
            .map_err(|e| format!("cannot connect to {remote}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        match transport {
            Transport::Tcp => Ok(start_stream(
                Transport::Tcp,
                stream,
                local,
                remote,
                self.shared.clone(),
                None,
            )),
            Transport::Tls => {
                let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
                    .map_err(|e| format!("bad TLS server name {server_name:?}: {e}"))?;
                let client = self.shared.tls_client.config_for(server_name)?;
                let connector = tokio_rustls::TlsConnector::from(client);
                let tls =
                    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, connector.connect(name, stream))
                        .await
                        .map_err(|_| format!("TLS handshake with {remote} timed out"))?
                        .map_err(|e| {
                            let why = format!(
                                "TLS handshake with {server_name} ({remote}) failed: {e}"
                            );
                            if tls::is_certificate_error(&e) {
                                tracing::warn!(host = %server_name, %remote, error = %e, "TLS: the peer's certificate is refused");
                            }
                            why
                        })?;
                Ok(start_stream(
                    Transport::Tls,
                    tls,
                    local,
                    remote,
                    self.shared.clone(),
                    None,
                ))
            }
            Transport::Udp => self
                .udp_flow(remote)
                .ok_or_else(|| "no UDP listener".to_string()),
        }
    }

    /// Re-reads the TLS files after a configuration load: each TLS listener's certificate,
    /// key and client CAs (same address as at bind; a listener added or moved needs a
    /// restart), and the trunks' CA files. New handshakes use the result; established
    /// connections keep theirs. A file that cannot be read is logged and the previous
    /// configuration stays (for a trunk's CA file: that trunk cannot connect until fixed).
    pub fn reload_tls(&self, cfg: &crate::config::Config) {
        for (address, server) in &self.tls_servers {
            let Some(files) = cfg
                .sip
                .listeners
                .iter()
                .find(|l| l.address == *address && l.transport == Transport::Tls)
                .and_then(|l| l.tls.as_ref())
            else {
                continue;
            };
            match server.reload(files) {
                Ok(()) => tracing::info!(
                    listener = %address,
                    cert = %files.cert.display(),
                    mutual = files.client_ca.is_some(),
                    "TLS certificate loaded"
                ),
                Err(e) => tracing::error!(
                    listener = %address,
                    error = %e,
                    "TLS files not reloaded; the previous certificate stays in use"
                ),
            }
        }
        for e in self.shared.tls_client.configure(&cfg.trunks) {
            tracing::error!(error = %e, "trunk CA file not loaded; TLS to that trunk fails until fixed");
        }
    }

    /// Open stream connections.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// Stops accepting and closes every stream connection.
    pub fn shutdown(&self) {
        let _ = self.stop_tx.send(true);
    }
}

/// Resolves once the flag is set (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        // [::] and 0.0.0.0 may both be configured on one port
        sock.set_only_v6(true)?;
    }
    // room for bursts of signalling
    let _ = sock.set_recv_buffer_size(1 << 20);
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    UdpSocket::from_std(sock.into())
}

async fn udp_reader(sock: Arc<UdpSocket>, local: SocketAddr, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 65536];
    let mut stop = shared.stop.clone();
    loop {
        let (n, from) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors (port unreachable) surface here on Linux; keep serving
                    tracing::debug!(%local, error = %e, "UDP receive error");
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        if is_datagram_keepalive(&buf[..n]) {
            // RFC 5626 section 3.5.1's CRLFCRLF, sent over UDP: no message, no answer
            tracing::trace!(%local, remote = %from, "UDP keep-alive");
            continue;
        }
        let flow = Flow {
            transport: Transport::Udp,
            local,
            remote: from,
            conn: Conn::Udp(sock.clone()),
        };
        let msg = Received {
            bytes: buf[..n].to_vec(),
            flow,
        };
        if shared.tx.try_send(msg).is_err() {
            metrics::counter!(m::SIP_DROPPED, "reason" => "overload").increment(1);
        }
    }
}

async fn accept_loop(
    transport: Transport,
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    local: SocketAddr,
    shared: Arc<Shared>,
) {
    let mut stop = shared.stop.clone();
    loop {
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(%local, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        if shared.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
            metrics::counter!(m::SIP_DROPPED, "reason" => "connections").increment(1);
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().unwrap_or(local);
        match &tls {
            None => {
                start_stream(
                    transport,
                    stream,
                    local,
                    remote,
                    shared.clone(),
                    Some(FIRST_MESSAGE_TIMEOUT),
                );
            }
            Some(tls) => {
                // the configuration in force now: a reload applies from the next handshake
                let acceptor = tls.acceptor();
                let shared = shared.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => {
                            start_stream(
                                Transport::Tls,
                                tls,
                                local,
                                remote,
                                shared,
                                Some(FIRST_MESSAGE_TIMEOUT),
                            );
                        }
                        Ok(Err(e)) if tls::is_certificate_error(&e) => {
                            tracing::info!(%remote, error = %e, "TLS handshake refused: client certificate")
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%remote, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
}

/// Starts the reader and writer tasks of one stream connection; returns its flow.
fn start_stream<S>(
    transport: Transport,
    stream: S,
    local: SocketAddr,
    remote: SocketAddr,
    shared: Arc<Shared>,
    first_message_timeout: Option<Duration>,
) -> Flow
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    shared.connections.fetch_add(1, Ordering::Relaxed);
    metrics::gauge!(m::SIP_CONNECTIONS).increment(1.0);
    let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
    let flow = Flow {
        transport,
        local,
        remote,
        conn: Conn::Stream { id, tx },
    };
    let (read, write) = tokio::io::split(stream);
    let (closed_tx, closed_rx) = watch::channel(false);
    tokio::spawn(stream_writer(write, rx, closed_rx, shared.stop.clone()));
    let reader_flow = flow.clone();
    tokio::spawn(async move {
        stream_reader(read, reader_flow, shared.clone(), first_message_timeout).await;
        let _ = closed_tx.send(true);
        shared.connections.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(m::SIP_CONNECTIONS).decrement(1.0);
    });
    flow
}

async fn stream_writer<W: AsyncWrite + Unpin>(
    mut write: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut closed: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(bytes) => {
                    if write.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            _ = stopped(&mut closed) => break,
            _ = stopped(&mut stop) => break,
        }
    }
    rx.close();
    let _ = tokio::time::timeout(Duration::from_secs(1), write.shutdown()).await;
}

async fn stream_reader<R: AsyncRead + Unpin>(
    mut read: R,
    flow: Flow,
    shared: Arc<Shared>,
    mut first_message_timeout: Option<Duration>,
) {
    // accepted connections are closed when idle; ours (to trunks) we keep
    let idle = first_message_timeout.map(|_| IDLE_TIMEOUT);
    let mut framer = StreamFramer::new(MAX_STREAM_MESSAGE);
    let mut buf = vec![0u8; 16 * 1024];
    let mut stop = shared.stop.clone();
    loop {
        // deliver what is complete
        while let Some(frame) = framer.next() {
            match frame {
                Ok(Frame::Message(bytes)) => {
                    first_message_timeout = None;
                    let msg = Received {
                        bytes,
                        flow: flow.clone(),
                    };
                    // a full endpoint queue pauses this reader (TCP flow control)
                    if shared.tx.send(msg).await.is_err() {
                        return;
                    }
                }
                Ok(Frame::KeepAlive) => {
                    // RFC 5626 section 4.4.1: answer a CRLFCRLF ping with a CRLF pong
                    let _ = flow.send(b"\r\n");
                }
                Err(e) => {
                    metrics::counter!(m::SIP_DROPPED, "reason" => "framing").increment(1);
                    tracing::info!(remote = %flow.remote, transport = flow.transport.as_str(),
                        error = %e, "closing a SIP connection that is out of step");
                    return;
                }
            }
        }
        let read_fut = read.read(&mut buf);
        let limit = first_message_timeout
            .or(idle)
            .unwrap_or(Duration::from_secs(365 * 86_400));
        let n = tokio::select! {
            r = tokio::time::timeout(limit, read_fut) => match r.ok() {
                None => {
                    tracing::debug!(remote = %flow.remote, first = first_message_timeout.is_some(),
                        "no SIP traffic on a connection; closing");
                    return;
                }
                Some(Ok(0)) | Some(Err(_)) => return,
                Some(Ok(n)) => n,
            },
            _ = stopped(&mut stop) => return,
        };
        framer.push(&buf[..n]);
    }
}

/// The local address the system would use to reach `remote` (for Via/Contact/SDP when a
/// listener is bound to an unspecified address).
pub fn local_ip_towards(remote: IpAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if remote.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(SocketAddr::new(remote, 9)).ok()?;
    s.local_addr().ok().map(|a| a.ip())
}
