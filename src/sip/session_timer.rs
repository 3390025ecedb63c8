//! Session timers (RFC 4028), sans-IO: reading and writing Session-Expires and Min-SE,
//! the decisions of a UAS (422 for a too-small interval, the interval and refresher of
//! the 2xx) and of a UAC (what a 2xx decided, the retry after a 422), and the timer of a
//! running session on a virtual clock: when we are the refresher, a refresh is due at
//! half the interval (section 10) and the session expires at its end unless a refresh
//! succeeded; when the peer refreshes, the session expires at the interval minus the
//! smaller of 32 s and a third of it (section 10), and the owner then ends the call with
//! a BYE. Roles in the headers (`refresher=uac|uas`) are those of the transaction that
//! carried them; here they become `Refresher::Us` or `Refresher::Peer`. Tests:
//! `session_timer_*`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::message::Message;
use super::uri::{self, Params};

/// The smallest interval RFC 4028 allows (section 4): 90 s.
pub const MIN_INTERVAL: u32 = 90;

/// A trunk's session-timer settings, in seconds (validated: both at least 90 s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Off: we neither ask for nor run a timer, and `Require: timer` gets 420.
    pub enabled: bool,
    /// The interval we ask for, and the most we grant a peer asking more.
    pub expires: u32,
    /// The smallest interval we accept (our Min-SE).
    pub min_se: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            enabled: true,
            expires: 1800,
            min_se: MIN_INTERVAL,
        }
    }
}

/// Who refreshes the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Us,
    Peer,
}

/// A negotiated session interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub secs: u32,
    pub refresher: Refresher,
}

/// The `refresher` parameter: the role in the transaction that carried it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Uac,
    Uas,
}

/// A Session-Expires header: delta-seconds and the refresher parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub secs: u32,
    pub refresher: Option<Role>,
}

/// The Session-Expires of a message, if it has a readable one.
pub fn session_expires(msg: &Message) -> Option<SessionExpires> {
    let v = msg.header("Session-Expires")?;
    let (secs, params) = v.split_once(';').unwrap_or((v, ""));
    let secs: u32 = secs.trim().parse().ok()?;
    let params = Params::parse(&format!(";{params}"));
    let refresher = match params.value("refresher").map(str::to_ascii_lowercase) {
        Some(r) if r == "uac" => Some(Role::Uac),
        Some(r) if r == "uas" => Some(Role::Uas),
        _ => None,
    };
    Some(SessionExpires { secs, refresher })
}

/// The Min-SE of a message (its delta-seconds; parameters ignored).
pub fn min_se(msg: &Message) -> Option<u32> {
    let v = msg.header("Min-SE")?;
    v.split(';').next()?.trim().parse().ok()
}

/// Whether the message lists the `timer` option tag in Supported or Require.
pub fn supports_timer(msg: &Message) -> bool {
    uri::tokens(
        msg.headers_named("Supported")
            .chain(msg.headers_named("Require")),
    )
    .iter()
    .any(|t| t == "timer")
}

/// Whether the message requires the `timer` option tag.
pub fn requires_timer(msg: &Message) -> bool {
    uri::tokens(msg.headers_named("Require"))
        .iter()
        .any(|t| t == "timer")
}

/// What a UAS does with the timer headers of an INVITE, re-INVITE or UPDATE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UasDecision {
    /// 422 Session Interval Too Small, with this Min-SE (section 9).
    TooSmall { min_se: u32 },
    /// The 2xx carries this interval (`uas_headers`) and the timer runs from it.
    Run(Interval),
    /// No session timer.
    Off,
}

/// Section 9: a request without Session-Expires runs no timer; one below our Min-SE gets
/// 422; otherwise we grant its interval, lowered to ours if it asks more (never below
/// its Min-SE), and the refresher it named (us when it named none: we then need nothing
/// of the peer).
pub fn uas_decide(settings: &Settings, req: &Message) -> UasDecision {
    if !settings.enabled {
        return UasDecision::Off;
    }
    let Some(se) = session_expires(req) else {
        return UasDecision::Off;
    };
    if se.secs < settings.min_se {
        return UasDecision::TooSmall {
            min_se: settings.min_se,
        };
    }
    let floor = min_se(req)
        .unwrap_or(MIN_INTERVAL)
        .max(settings.min_se)
        .max(MIN_INTERVAL);
    let secs = se.secs.min(settings.expires.max(floor));
    let refresher = match se.refresher {
        Some(Role::Uac) => Refresher::Peer,
        Some(Role::Uas) | None => Refresher::Us,
    };
    UasDecision::Run(Interval { secs, refresher })
}

/// The headers of our 2xx (we are the UAS of the request) for `iv`: Session-Expires with
/// the refresher as the request's roles name it, and `Require: timer` when the peer
/// refreshes (section 9).
pub fn uas_headers(iv: Interval) -> Vec<(&'static str, String)> {
    let role = match iv.refresher {
        Refresher::Peer => "uac",
        Refresher::Us => "uas",
    };
    let mut h = vec![("Session-Expires", format!("{};refresher={role}", iv.secs))];
    if iv.refresher == Refresher::Peer {
        h.push(("Require", "timer".into()));
    }
    h
}

/// The headers of a request we send: the interval we ask for and our Min-SE; in a
/// refresh we name ourselves refresher (`uac`), in a first INVITE the UAS chooses.
pub fn request_headers(secs: u32, min_se: u32, refresh: bool) -> Vec<(&'static str, String)> {
    let se = if refresh {
        format!("{secs};refresher=uac")
    } else {
        secs.to_string()
    };
    vec![("Session-Expires", se), ("Min-SE", min_se.to_string())]
}

/// What a 2xx to our INVITE, re-INVITE or UPDATE decided (section 7.2): no
/// Session-Expires, no timer; `refresher=uas` the peer refreshes; `uac` (or none) we do.
pub fn uac_decide(resp: &Message) -> Option<Interval> {
    let se = session_expires(resp)?;
    let refresher = match se.refresher {
        Some(Role::Uas) => Refresher::Peer,
        Some(Role::Uac) | None => Refresher::Us,
    };
    Some(Interval {
        secs: se.secs.max(MIN_INTERVAL),
        refresher,
    })
}

/// Section 7.4: after a 422 the request is retried with the Min-SE it names as the
/// interval. None when the 422 asks for nothing more than we sent (no loop).
pub fn retry_after_422(sent: u32, resp: &Message) -> Option<u32> {
    let wanted = min_se(resp)?;
    (wanted > sent).then_some(wanted)
}

/// What the timer asks of its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerOutput {
    /// Send a refresh now (we are the refresher).
    Refresh,
    /// The session expired without a refresh: end the call with a BYE.
    Expired,
}

/// The timer of a running session.
#[derive(Debug, Clone)]
pub struct SessionTimer {
    interval: Interval,
    refresh_at: Option<Instant>,
    expire_at: Option<Instant>,
    out: VecDeque<TimerOutput>,
}

/// Section 10: the side that does not refresh gives up this long before the end.
fn expiry_margin(secs: u32) -> Duration {
    Duration::from_secs(u64::from((secs / 3).min(32)))
}

impl SessionTimer {
    /// The timer of a session whose 2xx was sent or received at `now`.
    pub fn new(now: Instant, interval: Interval) -> SessionTimer {
        let mut t = SessionTimer {
            interval,
            refresh_at: None,
            expire_at: None,
            out: VecDeque::new(),
        };
        t.refreshed(now, interval);
        t
    }

    pub fn interval(&self) -> Interval {
        self.interval
    }

    /// A refresh succeeded at `now` (ours, or the peer's), with the interval it agreed.
    pub fn refreshed(&mut self, now: Instant, interval: Interval) {
        self.interval = interval;
        let secs = Duration::from_secs(u64::from(interval.secs));
        match interval.refresher {
            Refresher::Us => {
                self.refresh_at = now.checked_add(secs / 2);
                self.expire_at = now.checked_add(secs);
            }
            Refresher::Peer => {
                self.refresh_at = None;
                self.expire_at = now.checked_add(secs - expiry_margin(interval.secs));
            }
        }
    }

    /// A 422 to our refresh named a larger Min-SE: later refreshes ask for `secs`; the
    /// session still ends when it would have.
    pub fn raise_interval(&mut self, secs: u32) {
        self.interval.secs = self.interval.secs.max(secs);
    }

    /// Our refresh failed at `now` in a way worth another try `after` later (a 491, a
    /// 5xx): it is tried again if the session is still alive then.
    pub fn retry_in(&mut self, now: Instant, after: Duration) {
        let at = now.checked_add(after);
        self.refresh_at = match (at, self.expire_at) {
            (Some(at), Some(end)) if at < end => Some(at),
            _ => None,
        };
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.refresh_at, self.expire_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.expire_at.is_some_and(|at| at <= now) {
            self.expire_at = None;
            self.refresh_at = None;
            self.out.push_back(TimerOutput::Expired);
            return;
        }
        if self.refresh_at.is_some_and(|at| at <= now) {
            self.refresh_at = None;
            self.out.push_back(TimerOutput::Refresh);
        }
    }

    pub fn poll_output(&mut self) -> Option<TimerOutput> {
        self.out.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::message;

    fn req(extra: &str) -> Message {
        let text = format!(
            "INVITE sip:x@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
             From: <sip:a@b>;tag=f\r\nTo: <sip:x@192.0.2.1>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
             Max-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n"
        );
        message::parse(text.as_bytes()).unwrap()
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn session_timer_headers_are_read() {
        let m = req("x: 1800;Refresher=UAC\r\nMin-SE: 120;x=1\r\nk: 100rel, timer\r\n");
        assert_eq!(
            session_expires(&m),
            Some(SessionExpires {
                secs: 1800,
                refresher: Some(Role::Uac)
            })
        );
        assert_eq!(min_se(&m), Some(120));
        assert!(supports_timer(&m));
        assert!(!requires_timer(&m));
        assert!(requires_timer(&req("Require: timer\r\n")));
        assert_eq!(session_expires(&req("Session-Expires: soon\r\n")), None);
    }

    #[test]
    fn session_timer_uas_grants_refuses_and_lowers() {
        let s = Settings::default();
        assert_eq!(uas_decide(&s, &req("")), UasDecision::Off);
        assert_eq!(
            uas_decide(&s, &req("Session-Expires: 60\r\n")),
            UasDecision::TooSmall { min_se: 90 }
        );
        assert_eq!(
            uas_decide(&s, &req("Session-Expires: 90;refresher=uac\r\n")),
            UasDecision::Run(Interval {
                secs: 90,
                refresher: Refresher::Peer
            })
        );
        // more than we like is lowered, never below the request's Min-SE
        assert_eq!(
            uas_decide(&s, &req("Session-Expires: 7200\r\n")),
            UasDecision::Run(Interval {
                secs: 1800,
                refresher: Refresher::Us
            })
        );
        assert_eq!(
            uas_decide(
                &s,
                &req("Session-Expires: 7200;refresher=uas\r\nMin-SE: 3600\r\n")
            ),
            UasDecision::Run(Interval {
                secs: 3600,
                refresher: Refresher::Us
            })
        );
        let strict = Settings { min_se: 300, ..s };
        assert_eq!(
            uas_decide(&strict, &req("Session-Expires: 200\r\n")),
            UasDecision::TooSmall { min_se: 300 }
        );
        let off = Settings {
            enabled: false,
            ..s
        };
        assert_eq!(
            uas_decide(&off, &req("Session-Expires: 60\r\n")),
            UasDecision::Off
        );
        let h = uas_headers(Interval {
            secs: 90,
            refresher: Refresher::Peer,
        });
        assert_eq!(
            h,
            vec![
                ("Session-Expires", "90;refresher=uac".to_string()),
                ("Require", "timer".to_string())
            ]
        );
        let h = uas_headers(Interval {
            secs: 1800,
            refresher: Refresher::Us,
        });
        assert_eq!(
            h,
            vec![("Session-Expires", "1800;refresher=uas".to_string())]
        );
    }

    #[test]
    fn session_timer_uac_reads_the_2xx_and_retries_a_422() {
        assert_eq!(uac_decide(&req("")), None);
        assert_eq!(
            uac_decide(&req("Session-Expires: 900;refresher=uas\r\n")),
            Some(Interval {
                secs: 900,
                refresher: Refresher::Peer
            })
        );
        assert_eq!(
            uac_decide(&req("Session-Expires: 900\r\n")),
            Some(Interval {
                secs: 900,
                refresher: Refresher::Us
            })
        );
        assert_eq!(retry_after_422(90, &req("Min-SE: 120\r\n")), Some(120));
        assert_eq!(retry_after_422(120, &req("Min-SE: 120\r\n")), None);
        assert_eq!(retry_after_422(120, &req("")), None);
        assert_eq!(
            request_headers(1800, 90, false),
            vec![
                ("Session-Expires", "1800".to_string()),
                ("Min-SE", "90".to_string())
            ]
        );
        assert_eq!(request_headers(90, 90, true)[0].1, "90;refresher=uac");
    }

    /// Runs the timer on a virtual clock until `until`, refreshing successfully when
    /// `answer_refreshes`; returns (seconds since start, output).
    fn run(
        t: &mut SessionTimer,
        t0: Instant,
        until: u64,
        answer_refreshes: bool,
    ) -> Vec<(u64, TimerOutput)> {
        let mut seen = Vec::new();
        while let Some(at) = t.poll_timeout() {
            if at > t0 + secs(until) {
                break;
            }
            t.handle_timeout(at);
            while let Some(o) = t.poll_output() {
                seen.push((at.duration_since(t0).as_secs(), o));
                if o == TimerOutput::Refresh && answer_refreshes {
                    let iv = t.interval();
                    t.refreshed(at, iv);
                }
            }
        }
        seen
    }

    #[test]
    fn session_timer_we_refresh_at_half_the_interval() {
        let t0 = Instant::now();
        let iv = Interval {
            secs: 90,
            refresher: Refresher::Us,
        };
        let mut t = SessionTimer::new(t0, iv);
        let seen = run(&mut t, t0, 200, true);
        assert_eq!(
            seen,
            vec![
                (45, TimerOutput::Refresh),
                (90, TimerOutput::Refresh),
                (135, TimerOutput::Refresh),
                (180, TimerOutput::Refresh)
            ]
        );
        // refreshes that fail: the session ends at its expiry
        let mut t = SessionTimer::new(t0, iv);
        let seen = run(&mut t, t0, 200, false);
        assert_eq!(
            seen,
            vec![(45, TimerOutput::Refresh), (90, TimerOutput::Expired)]
        );
        // a 491 retried later, still in time
        let mut t = SessionTimer::new(t0, iv);
        t.handle_timeout(t0 + secs(45));
        assert_eq!(t.poll_output(), Some(TimerOutput::Refresh));
        t.retry_in(t0 + secs(45), secs(3));
        assert_eq!(t.poll_timeout(), Some(t0 + secs(48)));
        t.retry_in(t0 + secs(89), secs(3));
        assert_eq!(
            t.poll_timeout(),
            Some(t0 + secs(90)),
            "no retry after the end"
        );
    }

    #[test]
    fn session_timer_peer_refreshes_or_we_give_up_before_the_end() {
        let t0 = Instant::now();
        let iv = Interval {
            secs: 90,
            refresher: Refresher::Peer,
        };
        let mut t = SessionTimer::new(t0, iv);
        // the peer refreshes at 40 s and 80 s, then stops: 90 - 30 = 60 s after the last
        t.handle_timeout(t0 + secs(40));
        t.refreshed(t0 + secs(40), iv);
        t.handle_timeout(t0 + secs(80));
        t.refreshed(t0 + secs(80), iv);
        assert_eq!(t.poll_output(), None);
        assert_eq!(t.poll_timeout(), Some(t0 + secs(140)));
        t.handle_timeout(t0 + secs(139));
        assert_eq!(t.poll_output(), None);
        t.handle_timeout(t0 + secs(140));
        assert_eq!(t.poll_output(), Some(TimerOutput::Expired));
        assert_eq!(t.poll_timeout(), None);
        // a long interval gives up 32 s before its end
        let mut t = SessionTimer::new(
            t0,
            Interval {
                secs: 1800,
                refresher: Refresher::Peer,
            },
        );
        assert_eq!(t.poll_timeout(), Some(t0 + secs(1768)));
        // the peer may hand the refreshing over to us
        t.refreshed(
            t0 + secs(100),
            Interval {
                secs: 1800,
                refresher: Refresher::Us,
            },
        );
        assert_eq!(t.poll_timeout(), Some(t0 + secs(1000)));
    }
}
