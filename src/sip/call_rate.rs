//! The new-call rate, sans-IO: the global calls-per-second allowance shared fairly
//! between source addresses. Only calls that pass every free check (trunk, digest auth,
//! dialplan) reach it, so refusals that cost nothing never spend it; a call whose PIN
//! fails gets its token back (`refund`). Three token buckets decide:
//! - the global one (`limits.max_calls_per_second`, one second of burst);
//! - each source's cap (`limits.max_calls_per_second_per_source`, never above the global);
//! - each source's fair share: the global rate divided by the sources that asked in the
//!   last `ACTIVE` window. A call within its share may take any global token; a call over
//!   its share only one above `RESERVE` of the burst, so the reserve (and the refill that
//!   restores it) is kept for sources within their share. One source alone gets the whole
//!   rate; a flooder gets what the others leave, never their share.
//!
//! Bounded: at most `MAX_SOURCES` sources are tracked (the oldest forgotten first).
//! Tests: `call_rate_*`.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Sources tracked.
const MAX_SOURCES: usize = 4096;
/// A source counts towards the fair share for this long after its last call attempt.
const ACTIVE: Duration = Duration::from_secs(2);
/// Part of the global burst only calls within their fair share may take.
const RESERVE: f64 = 0.5;

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// The global allowance is spent (for this source's share).
    Global,
    /// The source is over `max_calls_per_second_per_source`.
    Source,
}

impl RateRefusal {
    /// The bounded metric and log label.
    pub fn label(self) -> &'static str {
        match self {
            RateRefusal::Global => "call_rate",
            RateRefusal::Source => "source_call_rate",
        }
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Bucket {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
    }
}

struct Source {
    cap: Bucket,
    share: Bucket,
    seen: Instant,
}

/// The global call rate with per-source caps and fair shares.
pub struct CallRate {
    global: Bucket,
    sources: HashMap<IpAddr, Source>,
    order: VecDeque<IpAddr>,
    /// Sources seen within `ACTIVE` at the last count, and when it was counted.
    active: usize,
    counted: Instant,
}

impl CallRate {
    pub fn new(rate: u32, now: Instant) -> Self {
        CallRate {
            global: Bucket::full(f64::from(rate.max(1)), now),
            sources: HashMap::new(),
            order: VecDeque::new(),
            active: 0,
            counted: now,
        }
    }

    /// Takes a token for a call from `source` under `rate` calls/s in all and
    /// `per_source` from one source (the configuration in force).
    pub fn allow(
        &mut self,
        source: IpAddr,
        rate: u32,
        per_source: u32,
        now: Instant,
    ) -> Result<(), RateRefusal> {
        let rate = f64::from(rate.max(1));
        let cap_rate = f64::from(per_source.max(1)).min(rate);
        self.global.refill(rate, rate, now);
        if !self.sources.contains_key(&source) {
            while self.sources.len() >= MAX_SOURCES {
                match self.order.pop_front() {
                    Some(old) => {
                        self.sources.remove(&old);
                    }
                    None => break,
                }
            }
            self.sources.insert(
                source,
                Source {
                    cap: Bucket::full(cap_rate, now),
                    share: Bucket::full(rate, now),
                    seen: now,
                },
            );
            self.order.push_back(source);
            self.active += 1;
        }
        if now.saturating_duration_since(self.counted) >= Duration::from_secs(1) {
            self.count_active(now);
        }
        let share_rate = rate / self.active.max(1) as f64;
        let s = self.sources.get_mut(&source).expect("inserted above");
        s.seen = now;
        s.cap.refill(cap_rate, cap_rate, now);
        s.share.refill(share_rate, share_rate.max(1.0), now);
        if s.cap.tokens < 1.0 {
            return Err(RateRefusal::Source);
        }
        let within_share = s.share.tokens >= 1.0;
        let floor = if within_share {
            1.0
        } else {
            1.0 + RESERVE * rate
        };
        if self.global.tokens < floor {
            return Err(RateRefusal::Global);
        }
        self.global.tokens -= 1.0;
        s.cap.tokens -= 1.0;
        if within_share {
            s.share.tokens -= 1.0;
        }
        Ok(())
    }

    /// Gives back the token of a call from `source` that turned out to cost nothing (a
    /// wrong PIN).
    pub fn refund(&mut self, source: IpAddr, rate: u32) {
        let rate = f64::from(rate.max(1));
        self.global.tokens = (self.global.tokens + 1.0).min(rate);
        if let Some(s) = self.sources.get_mut(&source) {
            s.cap.tokens += 1.0;
            s.share.tokens += 1.0;
        }
    }

    /// Counts the active sources and forgets the long idle ones.
    fn count_active(&mut self, now: Instant) {
        self.counted = now;
        let idle = |s: &Source| now.saturating_duration_since(s.seen) >= ACTIVE * 5;
        self.sources.retain(|_, s| !idle(s));
        let kept = &self.sources;
        self.order.retain(|ip| kept.contains_key(ip));
        self.active = self
            .sources
            .values()
            .filter(|s| now.saturating_duration_since(s.seen) < ACTIVE)
            .count()
            .max(1);
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from(Ipv4Addr::new(192, 0, 2, n))
    }

    /// Drives the limiter for `secs` seconds on a virtual clock: each source asks at its
    /// rate (calls/s); returns the calls admitted per source.
    fn run(rate: u32, per_source: u32, demand: &[(IpAddr, u32)], secs: u64) -> Vec<u64> {
        let t0 = Instant::now();
        let mut r = CallRate::new(rate, t0);
        let mut admitted = vec![0u64; demand.len()];
        // 1 ms steps; a source with rate d asks whenever its schedule says so
        for ms in 0..secs * 1000 {
            let now = t0 + Duration::from_millis(ms);
            for (i, (src, d)) in demand.iter().enumerate() {
                let due = (ms * u64::from(*d)) / 1000 != ((ms + 1) * u64::from(*d)) / 1000;
                if due && r.allow(*src, rate, per_source, now).is_ok() {
                    admitted[i] += 1;
                }
            }
        }
        admitted
    }

    #[test]
    fn call_rate_one_source_gets_the_whole_rate() {
        let got = run(50, 50, &[(ip(1), 200)], 20);
        // burst (50) + 20 s at 50/s
        assert!((1000..=1050).contains(&got[0]), "{got:?}");
    }

    #[test]
    fn call_rate_a_flooder_cannot_starve_a_source_within_its_share() {
        // one source at 4x the global rate, another at 5/s: every call of the second
        // is admitted, the flooder gets the rest
        let got = run(50, 50, &[(ip(1), 200), (ip(2), 5)], 20);
        assert_eq!(got[1], 100, "{got:?}");
        assert!(
            got[0] >= 800,
            "the flooder still gets what is left: {got:?}"
        );
        assert!(got[0] + got[1] <= 50 + 20 * 50, "{got:?}");
    }

    #[test]
    fn call_rate_two_flooders_share_evenly() {
        let got = run(40, 40, &[(ip(1), 200), (ip(2), 200)], 30);
        let (a, b) = (got[0] as f64, got[1] as f64);
        assert!((a - b).abs() / (a + b) < 0.1, "{got:?}");
    }

    #[test]
    fn call_rate_per_source_cap() {
        let got = run(50, 10, &[(ip(1), 100)], 10);
        assert!((100..=110).contains(&got[0]), "{got:?}");
        let t0 = Instant::now();
        let mut r = CallRate::new(50, t0);
        let refusals: Vec<_> = (0..20).map(|_| r.allow(ip(3), 50, 10, t0)).collect();
        assert_eq!(refusals.iter().filter(|r| r.is_ok()).count(), 10);
        assert_eq!(refusals[15], Err(RateRefusal::Source));
    }

    #[test]
    fn call_rate_refund_gives_the_token_back() {
        let t0 = Instant::now();
        let mut r = CallRate::new(2, t0);
        assert!(r.allow(ip(1), 2, 2, t0).is_ok());
        assert!(r.allow(ip(1), 2, 2, t0).is_ok());
        assert_eq!(r.allow(ip(1), 2, 2, t0), Err(RateRefusal::Source));
        r.refund(ip(1), 2);
        assert!(r.allow(ip(1), 2, 2, t0).is_ok());
    }

    #[test]
    fn call_rate_tracks_a_bounded_number_of_sources() {
        let t0 = Instant::now();
        let mut r = CallRate::new(1000, t0);
        for i in 0..(MAX_SOURCES as u32 + 500) {
            let src = IpAddr::from(Ipv4Addr::from(0x0a00_0000 + i));
            let _ = r.allow(src, 1000, 1000, t0);
        }
        assert!(r.tracked() <= MAX_SOURCES);
        let _ = r.allow(ip(1), 1000, 1000, t0 + Duration::from_secs(60));
        assert_eq!(r.tracked(), 1, "idle sources are forgotten");
    }
}
