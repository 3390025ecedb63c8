//! The phone leg's UDP sockets, the thin tokio shell around `session::PhoneMedia`: the RTP
//! and RTCP sockets of one call (`RtpSockets`), a `PortGuard` that gives the port pair
//! back to the shared `PortPool` on drop (even when the call task panics), and
//! `bind_pair`, which skips pairs another program holds.
//!
//! The call task owns an `RtpSockets` and a `PhoneMedia`, `select!`s on `recv` and on
//! `sleep_until(media.poll_timeout())`, and sends whatever `poll_transmit` yields with
//! `try_send`, which never blocks: a datagram that does not fit the socket buffer is
//! dropped, as the network would. Time is read from tokio's clock.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::net::UdpSocket;

use super::ports::{Exhausted, PortPair, PortPool};
use super::rtp::is_rtcp;
use super::session::Transmit;
use crate::clock::now;

/// The one structure calls share: the RTP port pool.
pub type SharedPortPool = Arc<Mutex<PortPool>>;

/// How many pairs `bind_pair` tries by default before giving up.
pub const DEFAULT_BIND_ATTEMPTS: usize = 8;

fn lock(pool: &Mutex<PortPool>) -> MutexGuard<'_, PortPool> {
    // The pool's methods do not panic while it is locked, so a poisoned lock holds
    // consistent state; a port must be released even then.
    pool.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A port pair taken from the pool, released (with the pool's drain period) on drop.
#[derive(Debug)]
pub struct PortGuard {
    pool: SharedPortPool,
    pair: PortPair,
    /// Already given back (skipped); nothing to do on drop.
    returned: bool,
}

impl PortGuard {
    /// Takes the least recently used free pair.
    pub fn allocate(pool: &SharedPortPool) -> Result<PortGuard, Exhausted> {
        let pair = lock(pool).allocate(now())?;
        Ok(PortGuard {
            pool: Arc::clone(pool),
            pair,
            returned: false,
        })
    }

    #[must_use]
    pub fn pair(&self) -> PortPair {
        self.pair
    }

    /// The pair could not be bound (another program holds it): back to the pool
    /// without a drain period.
    fn skip(mut self) {
        lock(&self.pool).skip(self.pair);
        self.returned = true;
    }
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        if !self.returned {
            lock(&self.pool).release(self.pair, now());
        }
    }
}

/// A datagram `RtpSockets::recv` wrote into the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Datagram {
    /// Came on the RTCP socket, or is RTCP on the RTP socket (rtcp-mux, `rtp::is_rtcp`).
    pub rtcp: bool,
    pub from: SocketAddr,
    pub len: usize,
}

/// The RTP and RTCP sockets of one call.
#[derive(Debug)]
pub struct RtpSockets {
    rtp: UdpSocket,
    rtcp: UdpSocket,
    pair: PortPair,
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

impl RtpSockets {
    /// Binds RTP on `pair.rtp` and RTCP on `pair.rtcp()` at `ip`. Must run inside a
    /// tokio runtime.
    pub fn bind(ip: IpAddr, pair: PortPair) -> io::Result<RtpSockets> {
        let rtp = bind_udp(SocketAddr::new(ip, pair.rtp))?;
        let rtcp = bind_udp(SocketAddr::new(ip, pair.rtcp()))?;
        Ok(RtpSockets { rtp, rtcp, pair })
    }

    #[must_use]
    pub fn pair(&self) -> PortPair {
        self.pair
    }

    /// The bound RTP address (what goes into the SDP, modulo NAT).
    pub fn local_rtp_addr(&self) -> io::Result<SocketAddr> {
        self.rtp.local_addr()
    }

    /// The next datagram on either socket. Cancel-safe: nothing is lost when another
    /// `select!` branch wins.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<Datagram> {
        loop {
            let on_rtcp = tokio::select! {
                r = self.rtp.readable() => { r?; false }
                r = self.rtcp.readable() => { r?; true }
            };
            let socket = if on_rtcp { &self.rtcp } else { &self.rtp };
            match socket.try_recv_from(buf) {
                Ok((len, from)) => {
                    return Ok(Datagram {
                        rtcp: on_rtcp || is_rtcp(&buf[..len]),
                        from,
                        len,
                    });
                }
                // A spurious wake-up, or an ICMP error of an earlier send: keep going.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::ConnectionRefused
                            | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends `t` from the socket it names, without waiting: `Ok(false)` when it was
    /// dropped because the socket buffer is full.
    pub fn try_send(&self, t: &Transmit) -> io::Result<bool> {
        let socket = if t.rtcp { &self.rtcp } else { &self.rtp };
        match socket.try_send_to(&t.bytes, t.to) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A bound pair with its guard. Fields drop in order: the sockets close before the
/// pair goes back to the pool.
#[derive(Debug)]
pub struct BoundPorts {
    pub sockets: RtpSockets,
    pub guard: PortGuard,
}

/// Why no pair could be bound; the call cannot take media (the call layer answers 503).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("no free RTP port pair in the configured range")]
    Exhausted,
    #[error("{attempts} RTP port pairs in a row are held by other programs")]
    InUse { attempts: usize },
    #[error("cannot bind RTP ports {rtp}/{rtcp} on {ip}: {source}", rtcp = .rtp + 1)]
    Io {
        ip: IpAddr,
        rtp: u16,
        #[source]
        source: io::Error,
    },
}

/// Allocates a pair from `pool` and binds it at `ip`. A pair whose port another program
/// holds (`AddrInUse`) is skipped for the next one, up to `max_attempts` pairs; any other
/// bind error ends the attempt (and releases the pair). Must run inside a tokio runtime.
pub fn bind_pair(
    pool: &SharedPortPool,
    ip: IpAddr,
    max_attempts: usize,
) -> Result<BoundPorts, BindError> {
    let attempts = max_attempts.max(1);
    for _ in 0..attempts {
        let guard = PortGuard::allocate(pool).map_err(|Exhausted| BindError::Exhausted)?;
        match RtpSockets::bind(ip, guard.pair()) {
            Ok(sockets) => return Ok(BoundPorts { sockets, guard }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => guard.skip(),
            Err(source) => {
                return Err(BindError::Io {
                    ip,
                    rtp: guard.pair().rtp,
                    source,
                });
            }
        }
    }
    Err(BindError::InUse { attempts })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;
    use crate::media::g711::G711;
    use crate::media::plc::PhoneCodec;
    use crate::media::rtp::Ssrc;
    use crate::media::session::{MediaStats, PhoneMedia, PhoneMediaConfig};
    use crate::media::test_signal::{dominant_frequency, sine};
    use std::net::Ipv4Addr;
    use std::time::Duration;

    /// Runs one leg for `length`: sends `tone` as a room track, returns what it heard.
    async fn run_leg(
        sockets: RtpSockets,
        config: PhoneMediaConfig,
        tone: f64,
        length: Duration,
    ) -> (Vec<i16>, MediaStats) {
        let start = tokio::time::Instant::now();
        let end = start + length;
        let mut media = PhoneMedia::new(config, start.into_std(), crate::clock::wall());
        let n = media.frame_samples();
        let pcm = sine(tone, 0.3, 8000, 8000 * 3, 0.0);
        let mut pos = 0;
        let mut heard = Vec::new();
        let mut buf = vec![0u8; 2048];
        loop {
            let now = crate::clock::now();
            while let Some(t) = media.poll_transmit(now) {
                sockets.try_send(&t).expect("send on loopback");
                media.recycle(t.bytes);
            }
            while let Some(frame) = media.poll_phone_frame(now) {
                heard.extend_from_slice(&frame.samples);
                // The room side: 20 ms of decoded remote audio per 20 ms.
                media.push_room_audio("TR_remote", "remote", &pcm[pos..pos + n]);
                pos = (pos + n) % (pcm.len() - n);
            }
            while media.poll_event().is_some() {}
            if tokio::time::Instant::now() >= end {
                break;
            }
            let deadline = tokio::time::Instant::from_std(media.poll_timeout()).min(end);
            tokio::select! {
                r = sockets.recv(&mut buf) => {
                    let r = r.expect("receive on loopback");
                    let now = crate::clock::now();
                    if r.rtcp {
                        media.handle_rtcp(now, r.from, &buf[..r.len]);
                    } else {
                        media.handle_rtp(now, r.from, &buf[..r.len]);
                    }
                }
                () = tokio::time::sleep_until(deadline) => media.handle_timeout(crate::clock::now()),
            }
        }
        (heard, media.stats())
    }

    #[tokio::test(start_paused = true)]
    async fn two_legs_exchange_tones_over_real_sockets_and_ports_return_to_the_pool() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        // A small range where the OS just found a free port; the probe stays bound, so
        // the first pair is taken by "another program" and must be skipped.
        let probe = std::net::UdpSocket::bind((ip, 0)).expect("ephemeral port");
        let held = probe.local_addr().expect("bound").port();
        let start = (held & !1).min(u16::MAX - 40);
        let pool: SharedPortPool = Arc::new(Mutex::new(PortPool::new(
            PortRange {
                start,
                end: start + 40,
            },
            Duration::from_secs(2),
        )));
        let a = bind_pair(&pool, ip, DEFAULT_BIND_ATTEMPTS).expect("pair for A");
        let b = bind_pair(&pool, ip, DEFAULT_BIND_ATTEMPTS).expect("pair for B");
        for p in [a.guard.pair(), b.guard.pair()] {
            assert!(p.rtp != held && p.rtcp() != held, "held port skipped");
        }
        assert_eq!(lock(&pool).in_use(), 2);

        let a_addr = a.sockets.local_rtp_addr().expect("bound");
        assert_eq!(a_addr.port(), a.guard.pair().rtp);
        let b_addr = b.sockets.local_rtp_addr().expect("bound");
        let codec = PhoneCodec::G711(G711::Pcmu);
        let mut ca = PhoneMediaConfig::new(codec, Ssrc(0xa), "sip_a");
        ca.remote_rtp = Some(b_addr);
        let mut cb = PhoneMediaConfig::new(codec, Ssrc(0xb), "sip_b");
        // B only knows a wrong address and learns A's by latching.
        cb.remote_rtp = Some(SocketAddr::new(ip, 9));
        cb.latch = true;
        let length = Duration::from_secs(1);
        let ((heard_a, stats_a), (heard_b, stats_b)) = tokio::join!(
            run_leg(a.sockets, ca, 1000.0, length),
            run_leg(b.sockets, cb, 440.0, length),
        );
        println!("A: {stats_a:?}\nB: {stats_b:?}");
        for (heard, want, stats) in [(heard_a, 440.0, stats_a), (heard_b, 1000.0, stats_b)] {
            assert!(heard.len() >= 8000 * 9 / 10, "{} samples", heard.len());
            let tail = &heard[heard.len() - 4000..];
            let f = dominant_frequency(tail, 8000);
            assert!((f - want).abs() < 2.0, "heard {f} Hz, want {want}");
            assert!(
                stats.rx.packets >= 40 && stats.tx.packets >= 45,
                "{stats:?}"
            );
        }

        drop(a.guard);
        drop(b.guard);
        let p = lock(&pool);
        assert_eq!((p.in_use(), p.draining()), (0, 2));
        drop(probe);
    }
}
