//! RTP port allocation, sans-IO: even RTP ports (RTCP on the next odd one) from the
//! configured range, handed out round-robin, and taken back only after a drain period so
//! a new call never receives the previous call's stragglers. Time is an argument; binding
//! the sockets (and skipping a port some other program holds) is the caller's job.

use crate::config::PortRange;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// An RTP port (even) and its RTCP port (the next one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortPair {
    pub rtp: u16,
}

impl PortPair {
    pub fn rtcp(self) -> u16 {
        self.rtp + 1
    }
}

/// Allocation failed: every pair is in use or draining. The call gets 503.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no free RTP port pair in the configured range")
    }
}

/// The pool of RTP port pairs.
#[derive(Debug)]
pub struct PortPool {
    /// Free pairs, least recently used first.
    free: VecDeque<u16>,
    /// Released pairs and when they may be used again.
    draining: VecDeque<(Instant, u16)>,
    in_use: usize,
    drain: Duration,
}

impl PortPool {
    pub fn new(range: PortRange, drain: Duration) -> Self {
        let first = range.start + range.start % 2;
        let free = (first..range.end).step_by(2).collect();
        PortPool {
            free,
            draining: VecDeque::new(),
            in_use: 0,
            drain,
        }
    }

    fn reclaim(&mut self, now: Instant) {
        while let Some(&(ready, port)) = self.draining.front() {
            if ready > now {
                break;
            }
            self.draining.pop_front();
            self.free.push_back(port);
        }
    }

    /// Takes the least recently used free pair.
    pub fn allocate(&mut self, now: Instant) -> Result<PortPair, Exhausted> {
        self.reclaim(now);
        let rtp = self.free.pop_front().ok_or(Exhausted)?;
        self.in_use += 1;
        Ok(PortPair { rtp })
    }

    /// Gives a pair back; it becomes free after the drain period.
    pub fn release(&mut self, pair: PortPair, now: Instant) {
        self.in_use = self.in_use.saturating_sub(1);
        self.draining.push_back((now + self.drain, pair.rtp));
    }

    /// A pair the caller could not bind (another program holds it): it goes to the back
    /// of the free list without a drain period.
    pub fn skip(&mut self, pair: PortPair) {
        self.in_use = self.in_use.saturating_sub(1);
        self.free.push_back(pair.rtp);
    }

    pub fn in_use(&self) -> usize {
        self.in_use
    }

    pub fn draining(&self) -> usize {
        self.draining.len()
    }

    pub fn free(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(start: u16, end: u16) -> PortPool {
        PortPool::new(PortRange { start, end }, Duration::from_secs(2))
    }

    #[test]
    fn pairs_are_even_with_rtcp_inside_the_range() {
        let mut p = pool(10001, 10008);
        let t = Instant::now();
        let got: Vec<u16> = (0..3).map(|_| p.allocate(t).unwrap().rtp).collect();
        assert_eq!(got, vec![10002, 10004, 10006]);
        assert_eq!(
            p.allocate(t),
            Err(Exhausted),
            "10008 has no RTCP port in range"
        );
        assert_eq!(PortPair { rtp: 10006 }.rtcp(), 10007);
    }

    #[test]
    fn released_ports_drain_before_reuse() {
        let mut p = pool(10000, 10003);
        let t0 = Instant::now();
        let a = p.allocate(t0).unwrap();
        let b = p.allocate(t0).unwrap();
        assert_eq!(p.allocate(t0), Err(Exhausted));
        p.release(a, t0);
        assert_eq!((p.in_use(), p.draining()), (1, 1));
        assert_eq!(p.allocate(t0 + Duration::from_millis(1999)), Err(Exhausted));
        assert_eq!(p.allocate(t0 + Duration::from_secs(2)), Ok(a));
        p.release(a, t0);
        p.release(b, t0);
        assert_eq!(p.in_use(), 0);
    }

    #[test]
    fn round_robin_spreads_reuse_and_counts_return_to_zero() {
        let mut p = pool(10000, 10009);
        let mut t = Instant::now();
        let mut seen = Vec::new();
        for _ in 0..10 {
            let x = p.allocate(t).unwrap();
            seen.push(x.rtp);
            p.release(x, t);
            t += Duration::from_secs(3);
        }
        // Least recently used first: every pair serves before any repeats.
        assert_eq!(&seen[..5], &[10000, 10002, 10004, 10006, 10008]);
        assert_eq!(seen[5], 10000);
        p.reclaim(t);
        assert_eq!((p.in_use(), p.draining(), p.free()), (0, 0, 5));
    }

    #[test]
    fn a_port_held_elsewhere_is_skipped() {
        let mut p = pool(10000, 10003);
        let t = Instant::now();
        let a = p.allocate(t).unwrap();
        p.skip(a);
        assert_eq!(p.allocate(t).unwrap().rtp, 10002);
        assert_eq!(p.allocate(t).unwrap().rtp, 10000);
    }
}
