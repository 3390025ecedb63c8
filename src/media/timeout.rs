//! Media timeout, sans-IO: a call whose phone sends no RTP for `timeout` (default 15 s),
//! or none at all within `initial` of the start (default 30 s), is over. The call task
//! feeds `on_media(now)` for every valid RTP packet from the phone, sleeps until
//! `poll_timeout()`, and ends the call with the reason `handle_timeout(now)` returns.
//! While the phone holds the call (a=sendonly/inactive) the timer is paused.

use std::time::{Duration, Instant};

use crate::config::defaults::{MEDIA_TIMEOUT, MEDIA_TIMEOUT_INITIAL};

/// Timeout settings; a zero duration disables that timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaTimeoutConfig {
    /// Longest gap between two RTP packets.
    pub timeout: Duration,
    /// Longest wait for the first RTP packet (and for the first after a resume from
    /// hold, if none came before it).
    pub initial: Duration,
}

impl Default for MediaTimeoutConfig {
    fn default() -> Self {
        MediaTimeoutConfig {
            timeout: MEDIA_TIMEOUT,
            initial: MEDIA_TIMEOUT_INITIAL,
        }
    }
}

/// Why media timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTimeoutReason {
    /// No RTP ever arrived.
    NoMedia,
    /// RTP arrived, then stopped.
    MediaStopped,
}

impl MediaTimeoutReason {
    /// A bounded label for metrics and logs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            MediaTimeoutReason::NoMedia => "no_media",
            MediaTimeoutReason::MediaStopped => "media_stopped",
        }
    }
}

/// The timeout fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaTimedOut {
    pub reason: MediaTimeoutReason,
    /// How long the line had been silent (since the last packet, or since the timer
    /// started or resumed).
    pub silent_for: Duration,
}

/// The media timeout state machine. Tests: `media_timeout_*`.
#[derive(Debug, Clone)]
pub struct MediaTimeout {
    config: MediaTimeoutConfig,
    /// When the current wait started: start, resume, or the last packet.
    since: Instant,
    seen_media: bool,
    paused: bool,
    fired: bool,
}

impl MediaTimeout {
    /// Starts the timer at `now` (the call's media started: answer sent or received).
    #[must_use]
    pub fn new(config: MediaTimeoutConfig, now: Instant) -> Self {
        MediaTimeout {
            config,
            since: now,
            seen_media: false,
            paused: false,
            fired: false,
        }
    }

    /// An RTP packet from the phone arrived at `now`.
    pub fn on_media(&mut self, now: Instant) {
        self.seen_media = true;
        self.since = self.since.max(now);
    }

    /// The phone put the call on hold: no deadline until `resume`.
    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// The call is off hold at `now`: the wait starts again from `now`.
    pub fn resume(&mut self, now: Instant) {
        if self.paused {
            self.paused = false;
            self.since = self.since.max(now);
        }
    }

    fn limit(&self) -> Duration {
        if self.seen_media {
            self.config.timeout
        } else {
            self.config.initial
        }
    }

    /// When `handle_timeout` should next be called; `None` while paused, disabled or
    /// after the timeout fired.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let limit = self.limit();
        if self.paused || self.fired || limit.is_zero() {
            return None;
        }
        Some(self.since + limit)
    }

    /// Checks the deadline at `now`; reports the timeout once.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<MediaTimedOut> {
        let deadline = self.poll_timeout()?;
        if now < deadline {
            return None;
        }
        self.fired = true;
        Some(MediaTimedOut {
            reason: if self.seen_media {
                MediaTimeoutReason::MediaStopped
            } else {
                MediaTimeoutReason::NoMedia
            },
            silent_for: now.saturating_duration_since(self.since),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn media_timeout_before_first_packet_is_30s() {
        let t0 = Instant::now();
        let mut m = MediaTimeout::new(MediaTimeoutConfig::default(), t0);
        assert_eq!(m.poll_timeout(), Some(t0 + s(30)));
        assert_eq!(m.handle_timeout(t0 + s(29)), None);
        let fired = m.handle_timeout(t0 + s(30)).expect("fires");
        assert_eq!(fired.reason, MediaTimeoutReason::NoMedia);
        assert_eq!(fired.silent_for, s(30));
        assert_eq!(m.handle_timeout(t0 + s(31)), None, "once");
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn media_timeout_after_media_is_15s_from_the_last_packet() {
        let t0 = Instant::now();
        let mut m = MediaTimeout::new(MediaTimeoutConfig::default(), t0);
        for k in 0..100 {
            m.on_media(t0 + Duration::from_millis(20 * k));
        }
        let last = t0 + Duration::from_millis(1980);
        assert_eq!(m.poll_timeout(), Some(last + s(15)));
        // A stale (reordered) event does not move the deadline back.
        m.on_media(t0);
        assert_eq!(m.poll_timeout(), Some(last + s(15)));
        assert_eq!(m.handle_timeout(last + s(14)), None);
        let fired = m.handle_timeout(last + s(16)).expect("fires");
        assert_eq!(fired.reason, MediaTimeoutReason::MediaStopped);
        assert_eq!(fired.silent_for, s(16));
        assert_eq!(MediaTimeoutReason::MediaStopped.as_str(), "media_stopped");
    }

    #[test]
    fn media_timeout_pauses_on_hold_and_can_be_disabled() {
        let t0 = Instant::now();
        let mut m = MediaTimeout::new(MediaTimeoutConfig::default(), t0);
        m.on_media(t0 + s(1));
        m.pause();
        assert_eq!(m.poll_timeout(), None);
        assert_eq!(m.handle_timeout(t0 + s(600)), None);
        m.resume(t0 + s(600));
        assert_eq!(m.poll_timeout(), Some(t0 + s(615)));

        let mut off = MediaTimeout::new(
            MediaTimeoutConfig {
                timeout: Duration::ZERO,
                initial: s(5),
            },
            t0,
        );
        assert_eq!(off.poll_timeout(), Some(t0 + s(5)));
        off.on_media(t0 + s(1));
        assert_eq!(off.poll_timeout(), None);
        assert_eq!(off.handle_timeout(t0 + s(3600)), None);
    }
}
