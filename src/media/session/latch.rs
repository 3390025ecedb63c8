//! Where the phone is: symmetric RTP (RFC 4961). The first valid packet fixes where RTP
//! goes; a new source takes over only after `RELATCH_PACKETS` packets in a row while the
//! current one has been quiet for `RELATCH_QUIET`, so one stray packet never moves it.
//! Also the address forms SDP and dual-stack sockets give (`canonical`, `usable`).

use super::{RELATCH_PACKETS, RELATCH_QUIET};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// A candidate source whose packets are further apart than this starts counting again.
const CANDIDATE_GAP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy)]
struct Source {
    addr: SocketAddr,
    packets: u32,
    last: Instant,
}

/// What the latch makes of a packet from some address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offer {
    /// From the latched source.
    Current,
    /// The latch moved to this packet's source (the first packet, or a confirmed rebinding).
    Latched,
    /// From elsewhere: dropped (it may count toward a rebinding).
    Refused,
}

/// The latched source and the candidate that may replace it. Tests: `session::tests`
/// (`latching_*`).
#[derive(Debug, Default)]
pub(super) struct Latch {
    latched: Option<Source>,
    candidate: Option<Source>,
}

impl Latch {
    /// A packet from `from` (canonical) at `now`.
    pub(super) fn offer(&mut self, now: Instant, from: SocketAddr) -> Offer {
        let Some(current) = &mut self.latched else {
            self.latch_to(now, from);
            return Offer::Latched;
        };
        if current.addr == from {
            current.last = now;
            current.packets = current.packets.saturating_add(1);
            self.candidate = None;
            return Offer::Current;
        }
        let quiet = now.saturating_duration_since(current.last) >= RELATCH_QUIET;
        let candidate = match &mut self.candidate {
            Some(c) if c.addr == from && now.saturating_duration_since(c.last) <= CANDIDATE_GAP => {
                c.packets += 1;
                c.last = now;
                *c
            }
            slot => {
                let c = Source {
                    addr: from,
                    packets: 1,
                    last: now,
                };
                *slot = Some(c);
                c
            }
        };
        if candidate.packets >= RELATCH_PACKETS && quiet {
            self.latch_to(now, from);
            return Offer::Latched;
        }
        Offer::Refused
    }

    /// The latched source's address, if any.
    pub(super) fn addr(&self) -> Option<SocketAddr> {
        self.latched.map(|l| l.addr)
    }

    /// Forgets the source (a new SDP address): the next packet latches again.
    pub(super) fn reset(&mut self) {
        *self = Latch::default();
    }

    fn latch_to(&mut self, now: Instant, addr: SocketAddr) {
        self.latched = Some(Source {
            addr,
            packets: 1,
            last: now,
        });
        self.candidate = None;
    }
}

/// An IPv4-mapped IPv6 address (from a dual-stack socket) as the IPv4 address it is.
pub(super) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), addr.port()),
            None => addr,
        },
        IpAddr::V4(_) => addr,
    }
}

/// A usable remote address: not unspecified (0.0.0.0 is hold), not port 0.
pub(super) fn usable(addr: Option<SocketAddr>) -> Option<SocketAddr> {
    addr.map(canonical)
        .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
}
