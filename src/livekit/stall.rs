//! Room audio that is expected but does not arrive, sans-IO: a remote audio track that
//! is published, subscribed and not muted, yet has delivered no audio toward the call
//! for [`ROOM_AUDIO_STALL`]. Whatever the cause (packets not arriving, not decodable,
//! dropped on the way), the caller hears nothing from that participant while it should;
//! the session logs it and counts it (`roomline_room_audio_stalls_total`, and the
//! tracks stalled right now in `roomline_room_audio_stalled_tracks`).
//! Tests: `stall_*`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long an expected track may deliver nothing before it counts as stalled.
pub(super) const ROOM_AUDIO_STALL: Duration = Duration::from_secs(5);
/// How often the expected tracks are looked at.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StallChange {
    /// `track` of `identity` delivered nothing for `silent_for`.
    Stalled {
        track: String,
        identity: String,
        silent_for: Duration,
    },
    /// Its audio arrives again, or it is no longer expected (muted, unsubscribed, gone).
    Cleared {
        track: String,
        identity: String,
        audio: bool,
    },
}

#[derive(Debug)]
struct Watched {
    identity: String,
    /// Last audio delivered, or when the track became expected.
    last_audio: Instant,
    stalled: bool,
}

#[derive(Debug)]
pub(super) struct StallWatch {
    tracks: HashMap<String, Watched>,
    next_check: Instant,
}

impl StallWatch {
    pub(super) fn new(now: Instant) -> StallWatch {
        StallWatch {
            tracks: HashMap::new(),
            next_check: now + CHECK_INTERVAL,
        }
    }

    pub(super) fn poll_timeout(&self) -> Instant {
        self.next_check
    }

    /// Tracks stalled right now.
    pub(super) fn stalled(&self) -> usize {
        self.tracks.values().filter(|w| w.stalled).count()
    }

    /// Audio of `track` was delivered toward the call.
    pub(super) fn delivered(&mut self, now: Instant, track: &str) -> Option<StallChange> {
        let w = self.tracks.get_mut(track)?;
        w.last_audio = now;
        if !w.stalled {
            return None;
        }
        w.stalled = false;
        Some(StallChange::Cleared {
            track: track.to_string(),
            identity: w.identity.clone(),
            audio: true,
        })
    }

    /// At [`poll_timeout`](Self::poll_timeout): `expected` are the tracks that should
    /// deliver audio now (track sid, owner identity).
    pub(super) fn check<'a>(
        &mut self,
        now: Instant,
        expected: impl Iterator<Item = (&'a str, &'a str)>,
        out: &mut Vec<StallChange>,
    ) {
        if now < self.next_check {
            return;
        }
        // a check that runs more than an interval late means this task (or the whole
        // process) did not run meanwhile: that time is nobody's silence, so it does not
        // count toward a stall (a daemon paused for 8 s on a starved machine counted its
        // own pause as a room track delivering nothing)
        let paused = now.saturating_duration_since(self.next_check);
        if paused > CHECK_INTERVAL {
            for w in self.tracks.values_mut() {
                w.last_audio = (w.last_audio + paused).min(now);
            }
        }
        self.next_check = now + CHECK_INTERVAL;
        let mut keep: HashMap<String, Watched> = HashMap::new();
        for (track, identity) in expected {
            let w = self.tracks.remove(track).unwrap_or(Watched {
                identity: identity.to_string(),
                last_audio: now,
                stalled: false,
            });
            keep.insert(track.to_string(), w);
        }
        for (track, w) in self.tracks.drain() {
            if w.stalled {
                out.push(StallChange::Cleared {
                    track,
                    identity: w.identity,
                    audio: false,
                });
            }
        }
        self.tracks = keep;
        for (track, w) in &mut self.tracks {
            let silent_for = now.duration_since(w.last_audio);
            if !w.stalled && silent_for >= ROOM_AUDIO_STALL {
                w.stalled = true;
                out.push(StallChange::Stalled {
                    track: track.clone(),
                    identity: w.identity.clone(),
                    silent_for,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn stall_reported_once_cleared_by_audio_or_by_not_being_expected() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(t0);
        let mut out = Vec::new();
        let a = [("TR_a", "agent")];
        // expected from its first check; audio keeps it fresh
        for k in 1..=4 {
            w.check(t0 + s(k), a.iter().copied(), &mut out);
            assert!(w.delivered(t0 + s(k), "TR_a").is_none());
        }
        // nothing for 5 s after the last audio (4 s): stalled at 9 s, once
        for k in 5..=12 {
            w.check(t0 + s(k), a.iter().copied(), &mut out);
        }
        assert_eq!(
            out,
            [StallChange::Stalled {
                track: "TR_a".into(),
                identity: "agent".into(),
                silent_for: s(5)
            }]
        );
        assert_eq!(w.stalled(), 1);
        out.clear();
        // audio again: cleared
        assert_eq!(
            w.delivered(t0 + s(13), "TR_a"),
            Some(StallChange::Cleared {
                track: "TR_a".into(),
                identity: "agent".into(),
                audio: true
            })
        );
        // silent again, then muted (no longer expected): cleared without audio
        for k in 14..=18 {
            w.check(t0 + s(k), a.iter().copied(), &mut out);
        }
        assert_eq!(out.len(), 1);
        w.check(t0 + s(19), std::iter::empty(), &mut out);
        assert!(matches!(&out[1], StallChange::Cleared { audio: false, .. }));
        assert_eq!(w.stalled(), 0);
        // expected again later: counts from then
        out.clear();
        w.check(t0 + s(30), a.iter().copied(), &mut out);
        w.check(t0 + s(34), a.iter().copied(), &mut out);
        assert!(out.is_empty());
        // checks only at their interval
        w.check(t0 + s(34), a.iter().copied(), &mut out);
        assert_eq!(w.poll_timeout(), t0 + s(35));
    }

    /// The watch's own pause (its task or the process not running) is not the room's
    /// silence: a check 7 s late finds no stall; silence after it still counts.
    #[test]
    fn stall_not_counted_while_the_watch_itself_was_paused() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(t0);
        let mut out = Vec::new();
        let a = [("TR_a", "agent")];
        w.check(t0 + s(1), a.iter().copied(), &mut out);
        w.delivered(t0 + s(1), "TR_a");
        // the next check was due at 2 s and runs at 9 s
        w.check(t0 + s(9), a.iter().copied(), &mut out);
        assert!(out.is_empty(), "{out:?}");
        for k in 10..=12 {
            w.check(t0 + s(k), a.iter().copied(), &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        w.check(t0 + s(13), a.iter().copied(), &mut out);
        assert!(
            matches!(&out[..], [StallChange::Stalled { silent_for, .. }] if *silent_for == s(5)),
            "{out:?}"
        );
    }
}
