//! Refused INVITEs (and flood-limited requests) for the log, aggregated, sans-IO: the
//! first refusal of a (source, reason, detail) is logged at once, further ones within
//! `INTERVAL` are counted and logged as one line when the interval ends, so a flood
//! writes a line per source and reason every interval instead of one per request. The
//! shell (the endpoint) records, polls on its timer and writes the lines (`Line::log`).
//! Bounded: `MAX_KEYS` keys; refusals beyond them are counted on one overflow line.
//! Tests: `refusals_*`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long refusals of one key are summed before their line.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Keys tracked at once.
const MAX_KEYS: usize = 1024;
/// First lines written per interval (a flood from many, maybe forged, source addresses
/// is counted on the overflow line beyond them).
const MAX_FIRSTS: u32 = 64;
/// Detail text kept per key (a rule, trunk or reason; config names are short).
const MAX_DETAIL: usize = 160;

/// One refusal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Refusal {
    pub source: IpAddr,
    /// A bounded label: no_trunk, auth_failed, rejected, no_route, call_rate, ...
    pub reason: &'static str,
    /// What refused it: `rule=blocked`, `trunk=carrier`, `nearest=...` (bounded).
    pub detail: String,
    /// The status sent (None: dropped silently).
    pub status: Option<u16>,
}

impl Refusal {
    pub fn new(source: IpAddr, reason: &'static str, detail: String, status: Option<u16>) -> Self {
        let mut detail = detail;
        if detail.len() > MAX_DETAIL {
            let mut cut = MAX_DETAIL;
            while !detail.is_char_boundary(cut) {
                cut -= 1;
            }
            detail.truncate(cut);
        }
        Refusal {
            source,
            reason,
            detail,
            status,
        }
    }
}

/// A log line to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// None: the overflow line (refusals of keys beyond the table).
    pub refusal: Option<Refusal>,
    /// Refusals this line stands for.
    pub count: u64,
    /// The first of its key (logged at once) or a summary of an interval.
    pub first: bool,
}

impl Line {
    /// Writes the line (INFO): `request refused` with source, reason, detail, status and
    /// count; the caller and called number of a first line come from the shell.
    pub fn log(&self, caller: &str, called: &str) {
        let window = INTERVAL.as_secs();
        match &self.refusal {
            Some(r) => {
                let status = r
                    .status
                    .map_or_else(|| "none".to_string(), |s| s.to_string());
                if self.first {
                    tracing::info!(source = %r.source, reason = %r.reason, detail = %r.detail,
                        status = %status, count = self.count, caller = %crate::logging::Phone(caller),
                        called = %crate::logging::Phone(called), "request refused");
                } else {
                    tracing::info!(source = %r.source, reason = %r.reason, detail = %r.detail,
                        status = %status, count = self.count, window_s = window, "request refused");
                }
            }
            None => {
                tracing::info!(
                    count = self.count,
                    window_s = window,
                    "requests refused from more sources than are itemised"
                );
            }
        }
    }
}

struct Entry {
    since: Instant,
    count: u64,
}

/// The aggregation table.
pub struct Refusals {
    entries: HashMap<Refusal, Entry>,
    overflow: u64,
    overflow_since: Option<Instant>,
    /// First lines written in the interval that began at `firsts_since`.
    firsts: u32,
    firsts_since: Option<Instant>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self::new()
    }
}

impl Refusals {
    pub fn new() -> Self {
        Refusals {
            entries: HashMap::new(),
            overflow: 0,
            overflow_since: None,
            firsts: 0,
            firsts_since: None,
        }
    }

    /// Records a refusal; Some: the line to write now (the first of its key).
    pub fn record(&mut self, r: Refusal, now: Instant) -> Option<Line> {
        if let Some(e) = self.entries.get_mut(&r) {
            e.count += 1;
            return None;
        }
        if self
            .firsts_since
            .is_none_or(|s| now.saturating_duration_since(s) >= INTERVAL)
        {
            self.firsts = 0;
            self.firsts_since = Some(now);
        }
        if self.entries.len() >= MAX_KEYS || self.firsts >= MAX_FIRSTS {
            self.overflow += 1;
            self.overflow_since.get_or_insert(now);
            return None;
        }
        self.firsts += 1;
        self.entries.insert(
            r.clone(),
            Entry {
                since: now,
                count: 0,
            },
        );
        Some(Line {
            refusal: Some(r),
            count: 1,
            first: true,
        })
    }

    /// The summary lines of intervals that ended by `now`. A key with nothing more in
    /// its interval is forgotten (its next refusal is logged at once again).
    pub fn poll(&mut self, now: Instant) -> Vec<Line> {
        let mut out = Vec::new();
        let due = |since: Instant| now.saturating_duration_since(since) >= INTERVAL;
        self.entries.retain(|r, e| {
            if !due(e.since) {
                return true;
            }
            if e.count == 0 {
                return false;
            }
            out.push(Line {
                refusal: Some(r.clone()),
                count: e.count,
                first: false,
            });
            e.count = 0;
            e.since = now;
            true
        });
        if self.overflow_since.is_some_and(due) {
            out.push(Line {
                refusal: None,
                count: self.overflow,
                first: false,
            });
            self.overflow = 0;
            self.overflow_since = None;
        }
        out.sort_by(|a, b| {
            let key = |l: &Line| {
                l.refusal
                    .as_ref()
                    .map(|r| (r.source, r.reason, r.detail.clone()))
            };
            key(a).cmp(&key(b))
        });
        out
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn r(src: u8, reason: &'static str) -> Refusal {
        Refusal::new(
            IpAddr::from(Ipv4Addr::new(192, 0, 2, src)),
            reason,
            "rule=blocked".into(),
            Some(403),
        )
    }

    #[test]
    fn refusals_a_flood_is_one_line_per_key_and_interval() {
        let t0 = Instant::now();
        let mut a = Refusals::new();
        let mut lines = Vec::new();
        // 200/s from one source for 20 s, and 1/s from another
        for ms in (0..20_000u64).step_by(5) {
            let now = t0 + Duration::from_millis(ms);
            lines.extend(a.record(r(1, "rejected"), now));
            if ms % 1000 == 0 {
                lines.extend(a.record(r(2, "no_trunk"), now));
            }
            if ms % 100 == 0 {
                lines.extend(a.poll(now));
            }
        }
        lines.extend(a.poll(t0 + Duration::from_secs(40)));
        lines.extend(a.poll(t0 + Duration::from_secs(60)));
        let of = |src: u8| -> Vec<&Line> {
            lines
                .iter()
                .filter(|l| {
                    l.refusal
                        .as_ref()
                        .is_some_and(|x| x.source == r(src, "x").source)
                })
                .collect()
        };
        let flood = of(1);
        assert!(flood.len() <= 4, "{flood:?}");
        assert!(flood[0].first && flood[0].count == 1);
        assert_eq!(
            flood.iter().map(|l| l.count).sum::<u64>(),
            4000,
            "every refusal counted"
        );
        let slow = of(2);
        assert!(slow.len() <= 4, "{slow:?}");
        assert_eq!(slow.iter().map(|l| l.count).sum::<u64>(), 20);
        assert_eq!(a.keys(), 0, "quiet keys are forgotten");
    }

    #[test]
    fn refusals_a_lone_refusal_is_logged_at_once_and_once() {
        let t0 = Instant::now();
        let mut a = Refusals::new();
        let first = a.record(r(1, "no_route"), t0).expect("logged at once");
        assert_eq!(first.count, 1);
        assert!(a.poll(t0 + INTERVAL).is_empty(), "nothing more to say");
        assert!(a.record(r(1, "no_route"), t0 + INTERVAL * 2).is_some());
    }

    #[test]
    fn refusals_the_table_is_bounded_and_overflow_counted() {
        let t0 = Instant::now();
        let mut a = Refusals::new();
        let mut logged = 0;
        // many sources (forged ones, say): at most MAX_FIRSTS lines at once per interval,
        // at most MAX_KEYS tracked, the rest counted
        let mut lines = Vec::new();
        for round in 0..40u32 {
            let now = t0 + Duration::from_secs(u64::from(round) * 3);
            for i in 0..500u32 {
                let src = IpAddr::from(Ipv4Addr::from(0x0a00_0000 + round * 500 + i));
                logged += usize::from(
                    a.record(Refusal::new(src, "no_trunk", String::new(), None), now)
                        .is_some(),
                );
            }
            assert!(a.keys() <= MAX_KEYS);
            lines.extend(a.poll(now));
        }
        lines.extend(a.poll(t0 + Duration::from_secs(200)));
        assert!(logged <= 64 * 13, "{logged} first lines");
        let overflow: Vec<&Line> = lines.iter().filter(|l| l.refusal.is_none()).collect();
        assert!(overflow.len() <= 13, "{}", overflow.len());
        assert_eq!(
            logged as u64 + overflow.iter().map(|l| l.count).sum::<u64>(),
            40 * 500,
            "every refusal counted"
        );
        let long = Refusal::new(r(1, "x").source, "x", "é".repeat(200), None);
        assert!(long.detail.len() <= MAX_DETAIL);
    }
}
