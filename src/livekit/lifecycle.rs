//! The participant's lifecycle, sans-IO: joining, live (the signalling keep-alive, and a
//! grace period after a peer connection drops, since the server closes the peers of a
//! removed participant at about the moment it sends the reason), recovery (a resume
//! first unless the server asked for a new join or refused the resume, then full
//! rejoins with jittered backoff until the reconnect window has passed since the
//! session broke; at most [`MAX_RECOVERIES`] recoveries a minute) and the end (our leave, or gone with
//! a reason).
//!
//! The reconnect window (`livekit.reconnect_window`) is what lets a call ride out a
//! LiveKit restart: the server going away (its socket closes, or it says
//! `SERVER_SHUTDOWN`) starts an outage; rejoins follow at [`REJOIN_BACKOFF`], doubling
//! up to [`REJOIN_BACKOFF_MAX`] (short, so the call is back soon after the server is),
//! the last one at the window's end. If that fails too, the participant ends with
//! [`DisconnectReason::Unreachable`].
//!
//! The session (`session.rs`) feeds it what happened with [`Lifecycle::handle_input`],
//! calls [`Lifecycle::handle_timeout`] at [`Lifecycle::poll_timeout`], and carries out
//! what [`Lifecycle::poll_output`] asks: send a ping, resume, rejoin, send the leave,
//! tell the handle; a resume or rejoin is reported back as `Recovered` or
//! `RecoveryFailed`. It never reads a clock, touches a socket or spawns: every call takes
//! `now`. Nothing comes out after [`Output::End`].
//!
//! Tests: `lifecycle_*`, and `random_events_*` on a virtual clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::peer::Role;
use super::{DisconnectReason, LeaveReason};

/// How long a peer connection may be down before we recover it ourselves (the server's
/// LeaveRequest, if any, comes within it).
pub(super) const PEER_CLOSED_GRACE: Duration = Duration::from_secs(2);
/// More recoveries than this within [`RECOVERY_WINDOW`] end the participant.
pub(super) const MAX_RECOVERIES: usize = 5;
pub(super) const RECOVERY_WINDOW: Duration = Duration::from_secs(60);
/// Before rejoin attempt n (n >= 2) we wait `REJOIN_BACKOFF * 2^(n-2)`, at most
/// [`REJOIN_BACKOFF_MAX`], and never past the end of the reconnect window.
pub(super) const REJOIN_BACKOFF: Duration = Duration::from_millis(500);
pub(super) const REJOIN_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The leave reason of a server that is stopping: its rooms come back elsewhere or
/// after its restart, so it starts an outage, whatever the leave's action says.
pub(super) const SERVER_SHUTDOWN: &str = "SERVER_SHUTDOWN";

/// The nominal wait before rejoin `attempt` (>= 2); the wait taken is between half of it
/// and all of it ([`jittered`]).
pub(super) fn rejoin_backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(2).min(8);
    (REJOIN_BACKOFF * (1 << doublings)).min(REJOIN_BACKOFF_MAX)
}

/// `nominal` less a random share of its half, drawn from `state` (xorshift64; 0 means no
/// jitter, as in the unit tests that check exact times). When LiveKit restarts, every
/// call's participant loses it at the same moment: without jitter their rejoins would
/// reach the restarted server in lockstep, all at once, at every attempt.
pub(super) fn jittered(nominal: Duration, state: &mut u64) -> Duration {
    if *state == 0 {
        return nominal;
    }
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    // the top 16 bits as a share of 1/2
    let share = (x >> 48) as u32;
    nominal - (nominal / 2) * share / 65_536
}

/// The keep-alive the server asked for in its JoinResponse (`ping_interval`,
/// `ping_timeout`, in seconds; bounded here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Keepalive {
    pub interval: Duration,
    pub timeout: Duration,
}

impl Keepalive {
    pub(super) fn from_join(interval_s: i32, timeout_s: i32) -> Keepalive {
        Keepalive {
            interval: Duration::from_secs(interval_s.clamp(1, 60) as u64),
            timeout: Duration::from_secs(timeout_s.clamp(2, 120) as u64),
        }
    }
}

/// Why a resume is attempted (LiveKit's ReconnectReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ResumeReason {
    SignalDisconnected,
    PublisherFailed,
    SubscriberFailed,
    /// The server asked for it (leave with action RESUME).
    Unknown,
}

/// The action of a server LeaveRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LeaveAction {
    Disconnect,
    Resume,
    Reconnect,
}

impl LeaveAction {
    fn name(self) -> &'static str {
        match self {
            LeaveAction::Disconnect => "DISCONNECT",
            LeaveAction::Resume => "RESUME",
            LeaveAction::Reconnect => "RECONNECT",
        }
    }
}

/// Why a resume or rejoin failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RecoveryError {
    /// Try the next step (a rejoin, or the next rejoin attempt): why this one failed.
    Retry(String),
    /// The server ended the participant.
    Gone(DisconnectReason),
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Input {
    /// The subscriber connection is up: the join is complete (`join` returns).
    Active,
    /// A message arrived from the server (the keep-alive is satisfied).
    SignalMessage,
    /// The signalling connection broke (closed, failed, or a send failed).
    SignalLost(String),
    /// A peer connection went down; `ice_only`: only ICE disconnected (it may come back).
    PeerDown {
        role: Role,
        why: String,
        ice_only: bool,
    },
    /// ICE of `role` is connected again.
    PeerUp(Role),
    /// A peer connection failed for good (an error from str0m): not recovered.
    PeerFailed(String),
    /// The server's LeaveRequest: its reason (LiveKit's name) and action.
    ServerLeave { reason: String, action: LeaveAction },
    /// The handle asked us to leave (or every handle was dropped).
    Leave(LeaveReason),
    /// The resume or rejoin asked for worked; a rejoin brings the new keep-alive.
    Recovered { keepalive: Option<Keepalive> },
    /// It did not.
    RecoveryFailed(RecoveryError),
}

/// What the session must do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Output {
    /// Send a ping now.
    Ping,
    /// Tell the handle (`ParticipantEvent::Reconnecting`).
    Reconnecting { full: bool, reason: String },
    /// Resume the session, then report `Recovered` or `RecoveryFailed`.
    Resume(ResumeReason),
    /// Join again as a new participant (attempt 1, 2, ...), then report.
    Rejoin { attempt: u32 },
    /// Tell the handle (`ParticipantEvent::Reconnected`); the session was broken for
    /// `down_for`.
    Reconnected { resumed: bool, down_for: Duration },
    /// Send the LeaveRequest and wait for the server to close (`End` follows).
    SendLeave(LeaveReason),
    /// The participant is gone: tear down and report this reason. Nothing follows.
    End(DisconnectReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// Signalling connected, waiting for the subscriber connection.
    Joining,
    /// In the room.
    Live,
    /// Waiting for the outcome of a resume.
    Resuming,
    /// Waiting for the outcome of rejoin `attempt`.
    Rejoining {
        attempt: u32,
    },
    /// Rejoin `attempt` starts at `at`.
    RejoinBackoff {
        attempt: u32,
        at: Instant,
    },
    Ended,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct PeerDown {
    at: Instant,
    why: String,
    role: Role,
    ice_only: bool,
}

/// The lifecycle state machine. See the module documentation.
#[derive(Debug, Clone)]
pub(super) struct Lifecycle {
    state: State,
    keepalive: Keepalive,
    /// How long after the session broke rejoins go on (`livekit.reconnect_window`).
    window: Duration,
    /// When the session being recovered broke.
    broken_at: Option<Instant>,
    next_ping: Instant,
    last_signal: Instant,
    peer_down: Option<PeerDown>,
    /// When the recent recoveries started.
    recoveries: VecDeque<Instant>,
    /// What broke the session being recovered, and why the last step failed.
    recovering: Option<DisconnectReason>,
    last_failure: String,
    out: VecDeque<Output>,
    /// The rejoin backoff's random state ([`jittered`]; 0: none).
    jitter: u64,
}

impl Lifecycle {
    /// A participant whose signalling connected at `now` (state `Joining`); a broken
    /// session is recovered for at most `window`.
    pub(super) fn new(now: Instant, keepalive: Keepalive, window: Duration) -> Lifecycle {
        Lifecycle {
            state: State::Joining,
            keepalive,
            window,
            broken_at: None,
            next_ping: now + keepalive.interval,
            last_signal: now,
            peer_down: None,
            recoveries: VecDeque::new(),
            recovering: None,
            last_failure: String::new(),
            out: VecDeque::new(),
            jitter: 0,
        }
    }

    /// The rejoin backoff's jitter drawn from `seed` (the shell passes a random one;
    /// 0 keeps the nominal backoff).
    pub(super) fn with_jitter_seed(mut self, seed: u64) -> Lifecycle {
        self.jitter = seed;
        self
    }

    #[cfg(test)]
    pub(super) fn state(&self) -> State {
        self.state
    }

    /// Joining or live: the session's loop runs (signalling, peers, commands).
    pub(super) fn is_connected(&self) -> bool {
        matches!(self.state, State::Joining | State::Live)
    }

    #[cfg(test)]
    pub(super) fn is_ended(&self) -> bool {
        self.state == State::Ended
    }

    /// A peer connection is down and not yet recovered: audio is not sent meanwhile.
    pub(super) fn peer_down(&self) -> bool {
        self.peer_down.is_some()
    }

    pub(super) fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When `handle_timeout` is next due (`None`: only an input moves the machine).
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Joining | State::Live => Some(match &self.peer_down {
                Some(down) => self.next_ping.min(down.at + PEER_CLOSED_GRACE),
                None => self.next_ping,
            }),
            State::RejoinBackoff { at, .. } => Some(at),
            State::Resuming | State::Rejoining { .. } | State::Ended => None,
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Joining | State::Live => {
                if let Some(down) = &self.peer_down
                    && now >= down.at + PEER_CLOSED_GRACE
                {
                    let rr = match down.role {
                        Role::Publisher => ResumeReason::PublisherFailed,
                        Role::Subscriber => ResumeReason::SubscriberFailed,
                    };
                    let reason = DisconnectReason::PeerFailed(down.why.clone());
                    self.recover(now, Some(rr), reason);
                    return;
                }
                if now >= self.next_ping {
                    self.next_ping = now + self.keepalive.interval;
                    if now.duration_since(self.last_signal) > self.keepalive.timeout {
                        let why = format!(
                            "no message from the server for {:?}",
                            self.keepalive.timeout
                        );
                        self.recover(
                            now,
                            Some(ResumeReason::SignalDisconnected),
                            DisconnectReason::SignalLost(why),
                        );
                    } else {
                        self.out.push_back(Output::Ping);
                    }
                }
            }
            State::RejoinBackoff { attempt, at } if now >= at => {
                self.state = State::Rejoining { attempt };
                self.out.push_back(Output::Rejoin { attempt });
            }
            _ => {}
        }
    }

    pub(super) fn handle_input(&mut self, now: Instant, input: Input) {
        if self.state == State::Ended {
            return;
        }
        match input {
            Input::Leave(reason) => {
                if self.is_connected() {
                    self.out.push_back(Output::SendLeave(reason));
                }
                self.end(DisconnectReason::ClientInitiated);
            }
            Input::PeerFailed(why) => self.end(DisconnectReason::PeerFailed(why)),
            Input::Recovered { keepalive } => self.recovered(now, keepalive),
            Input::RecoveryFailed(e) => self.recovery_failed(now, e),
            _ if !self.is_connected() => {}
            Input::Active => {
                if self.state == State::Joining {
                    self.state = State::Live;
                }
            }
            Input::SignalMessage => self.last_signal = now,
            Input::SignalLost(why) => self.recover(
                now,
                Some(ResumeReason::SignalDisconnected),
                DisconnectReason::SignalLost(why),
            ),
            Input::PeerDown {
                role,
                why,
                ice_only,
            } => match &mut self.peer_down {
                None => {
                    self.peer_down = Some(PeerDown {
                        at: now,
                        why,
                        role,
                        ice_only,
                    });
                }
                // a closed connection outweighs a disconnected ICE; the grace runs on
                Some(down) if down.ice_only && !ice_only => {
                    down.why = why;
                    down.role = role;
                    down.ice_only = false;
                }
                Some(_) => {}
            },
            Input::PeerUp(role) => {
                if self
                    .peer_down
                    .as_ref()
                    .is_some_and(|d| d.ice_only && d.role == role)
                {
                    self.peer_down = None;
                }
            }
            Input::ServerLeave { reason, action } => {
                let why = DisconnectReason::Server {
                    reason,
                    action: action.name().to_string(),
                };
                match action {
                    _ if why.is_server_shutdown() => self.recover(now, None, why),
                    LeaveAction::Disconnect => self.end(why),
                    LeaveAction::Resume => self.recover(now, Some(ResumeReason::Unknown), why),
                    LeaveAction::Reconnect => self.recover(now, None, why),
                }
            }
        }
    }

    /// The session broke: resume (`Some`) or join again (`None`), within the budget.
    fn recover(&mut self, now: Instant, resume: Option<ResumeReason>, reason: DisconnectReason) {
        if self.state == State::Joining {
            // still joining: `join` reports the failure
            self.end(reason);
            return;
        }
        while self
            .recoveries
            .front()
            .is_some_and(|at| now.duration_since(*at) > RECOVERY_WINDOW)
        {
            self.recoveries.pop_front();
        }
        if self.recoveries.len() >= MAX_RECOVERIES {
            tracing::warn!(%reason, "too many reconnects; giving up");
            self.end(reason);
            return;
        }
        self.recoveries.push_back(now);
        self.broken_at = Some(now);
        tracing::info!(%reason, full = resume.is_none(), "recovering the LiveKit session");
        self.peer_down = None;
        self.out.push_back(Output::Reconnecting {
            full: resume.is_none(),
            reason: reason.to_string(),
        });
        self.recovering = Some(reason);
        self.last_failure.clear();
        match resume {
            Some(rr) => {
                self.state = State::Resuming;
                self.out.push_back(Output::Resume(rr));
            }
            None => {
                self.state = State::Rejoining { attempt: 1 };
                self.out.push_back(Output::Rejoin { attempt: 1 });
            }
        }
    }

    fn recovered(&mut self, now: Instant, keepalive: Option<Keepalive>) {
        let resumed = match self.state {
            State::Resuming => true,
            State::Rejoining { .. } => false,
            _ => return,
        };
        if let Some(k) = keepalive {
            self.keepalive = k;
        }
        self.state = State::Live;
        self.peer_down = None;
        self.recovering = None;
        let down_for = self
            .broken_at
            .take()
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        self.last_signal = now;
        self.next_ping = now + self.keepalive.interval;
        self.out
            .push_back(Output::Reconnected { resumed, down_for });
    }

    fn recovery_failed(&mut self, now: Instant, e: RecoveryError) {
        let why = match e {
            RecoveryError::Gone(reason) => {
                if matches!(self.state, State::Resuming | State::Rejoining { .. }) {
                    self.end(reason);
                }
                return;
            }
            RecoveryError::Retry(why) => why,
        };
        match self.state {
            State::Resuming => {
                tracing::info!(%why, "resume failed; joining again");
                self.out.push_back(Output::Reconnecting {
                    full: true,
                    reason: why,
                });
                self.state = State::Rejoining { attempt: 1 };
                self.out.push_back(Output::Rejoin { attempt: 1 });
            }
            State::Rejoining { attempt } => {
                tracing::debug!(%why, attempt, "rejoin failed");
                self.last_failure = why;
                let broken_at = self.broken_at.unwrap_or(now);
                let give_up_at = broken_at + self.window;
                if now < give_up_at {
                    self.state = State::RejoinBackoff {
                        attempt: attempt + 1,
                        at: (now + jittered(rejoin_backoff(attempt + 1), &mut self.jitter))
                            .min(give_up_at),
                    };
                } else {
                    let down_for = now.saturating_duration_since(broken_at);
                    let broke = match self.recovering.take() {
                        Some(reason) => reason.to_string(),
                        None => String::new(),
                    };
                    tracing::warn!(%broke, last_failure = %self.last_failure, attempts = attempt,
                        down_s = down_for.as_secs(), "LiveKit unreachable for the whole reconnect window; giving up");
                    self.end(DisconnectReason::Unreachable {
                        down_for,
                        why: format!("{broke}; last rejoin failed: {}", self.last_failure),
                    });
                }
            }
            _ => {}
        }
    }

    fn end(&mut self, reason: DisconnectReason) {
        self.state = State::Ended;
        self.peer_down = None;
        self.broken_at = None;
        self.out.push_back(Output::End(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::test_signal::XorShift;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    const KEEPALIVE: Keepalive = Keepalive {
        interval: Duration::from_secs(5),
        timeout: Duration::from_secs(15),
    };
    const WINDOW: Duration = Duration::from_secs(10);

    fn drain(l: &mut Lifecycle) -> Vec<Output> {
        std::iter::from_fn(|| l.poll_output()).collect()
    }

    fn live(t0: Instant) -> Lifecycle {
        let mut l = Lifecycle::new(t0, KEEPALIVE, WINDOW);
        l.handle_input(t0, Input::Active);
        assert_eq!(l.state(), State::Live);
        l
    }

    #[test]
    fn lifecycle_pings_on_schedule_and_resumes_when_the_server_goes_quiet() {
        let t0 = Instant::now();
        let mut l = live(t0);
        assert_eq!(l.poll_timeout(), Some(t0 + ms(5000)));
        l.handle_timeout(t0 + ms(4999));
        assert!(drain(&mut l).is_empty());
        l.handle_timeout(t0 + ms(5000));
        assert_eq!(drain(&mut l), [Output::Ping]);
        assert_eq!(l.poll_timeout(), Some(t0 + ms(10_000)));
        l.handle_input(t0 + ms(9000), Input::SignalMessage);
        l.handle_timeout(t0 + ms(10_000));
        l.handle_timeout(t0 + ms(15_000));
        l.handle_timeout(t0 + ms(20_000));
        assert_eq!(drain(&mut l), [Output::Ping, Output::Ping, Output::Ping]);
        // last message at 9 s: 25 s is more than 15 s later
        l.handle_timeout(t0 + ms(25_000));
        let out = drain(&mut l);
        assert!(
            matches!(
                &out[..],
                [
                    Output::Reconnecting { full: false, .. },
                    Output::Resume(ResumeReason::SignalDisconnected)
                ]
            ),
            "{out:?}"
        );
        assert_eq!(l.state(), State::Resuming);
        assert_eq!(l.poll_timeout(), None);
        l.handle_input(t0 + ms(26_000), Input::Recovered { keepalive: None });
        assert_eq!(
            drain(&mut l),
            [Output::Reconnected {
                resumed: true,
                down_for: ms(1000)
            }]
        );
        assert_eq!(l.poll_timeout(), Some(t0 + ms(31_000)));
    }

    #[test]
    fn lifecycle_waits_for_the_servers_reason_after_a_peer_closes() {
        let t0 = Instant::now();
        let mut l = live(t0);
        let down = |ice_only| Input::PeerDown {
            role: Role::Subscriber,
            why: "closed".into(),
            ice_only,
        };
        // ICE disconnected and back: nothing happens
        l.handle_input(t0 + ms(100), down(true));
        assert!(l.peer_down());
        assert_eq!(l.poll_timeout(), Some(t0 + ms(2100)));
        l.handle_input(t0 + ms(500), Input::PeerUp(Role::Subscriber));
        assert!(!l.peer_down());
        // closed, then the server's leave within the grace: its reason ends us
        l.handle_input(t0 + ms(1000), down(false));
        l.handle_input(t0 + ms(1000), Input::PeerUp(Role::Subscriber));
        assert!(l.peer_down(), "a closed peer does not come back by ICE");
        l.handle_input(
            t0 + ms(1500),
            Input::ServerLeave {
                reason: "PARTICIPANT_REMOVED".into(),
                action: LeaveAction::Disconnect,
            },
        );
        assert_eq!(
            drain(&mut l),
            [Output::End(DisconnectReason::Server {
                reason: "PARTICIPANT_REMOVED".into(),
                action: "DISCONNECT".into()
            })]
        );
        // no reason within the grace: resume the peer ourselves
        let mut l = live(t0);
        l.handle_input(t0 + ms(100), down(false));
        l.handle_timeout(t0 + ms(2099));
        assert!(drain(&mut l).is_empty());
        l.handle_timeout(t0 + ms(2100));
        let out = drain(&mut l);
        assert_eq!(
            out[1],
            Output::Resume(ResumeReason::SubscriberFailed),
            "{out:?}"
        );
    }

    #[test]
    fn rejoin_backoff_doubles_up_to_its_cap() {
        assert_eq!(rejoin_backoff(2), ms(500));
        assert_eq!(rejoin_backoff(3), ms(1000));
        assert_eq!(rejoin_backoff(4), REJOIN_BACKOFF_MAX);
        assert_eq!(rejoin_backoff(u32::MAX), REJOIN_BACKOFF_MAX);
    }

    /// Jittered waits stay within half and all of the nominal one, and participants
    /// seeded apart spread their rejoins instead of reaching the server together.
    #[test]
    fn rejoin_backoff_jitter_spreads_the_waits_within_half_of_the_nominal() {
        let nominal = rejoin_backoff(3);
        let mut none = 0;
        assert_eq!(jittered(nominal, &mut none), nominal, "seed 0: no jitter");
        let mut waits = Vec::new();
        for seed in 1..=200u64 {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            for _ in 0..3 {
                let w = jittered(nominal, &mut state);
                assert!(w > nominal / 2 && w <= nominal, "{w:?}");
                waits.push(w);
            }
        }
        waits.sort();
        waits.dedup();
        assert!(waits.len() > 150, "{} distinct waits of 600", waits.len());
        let spread = waits[waits.len() - 1] - waits[0];
        assert!(spread > nominal * 2 / 5, "spread {spread:?}");
    }

    /// The server is gone: resume refused, then rejoins at 0.5 s, then every 1 s, the
    /// last at the end of the window; that failing too ends the participant as
    /// unreachable, with how long and why.
    #[test]
    fn lifecycle_rejoins_with_backoff_until_the_window_passes() {
        let t0 = Instant::now();
        let mut l = live(t0);
        l.handle_input(t0, Input::SignalLost("reset".into()));
        drain(&mut l);
        l.handle_input(
            t0 + ms(100),
            Input::RecoveryFailed(RecoveryError::Retry("refused".into())),
        );
        assert_eq!(
            drain(&mut l),
            [
                Output::Reconnecting {
                    full: true,
                    reason: "refused".into()
                },
                Output::Rejoin { attempt: 1 }
            ]
        );
        let mut now = t0 + ms(200);
        let mut attempts = vec![(1, ms(100))];
        loop {
            l.handle_input(
                now,
                Input::RecoveryFailed(RecoveryError::Retry("no".into())),
            );
            if l.is_ended() {
                break;
            }
            let at = l.poll_timeout().expect("the next attempt");
            l.handle_timeout(at - Duration::from_nanos(1));
            assert!(drain(&mut l).is_empty());
            l.handle_timeout(at);
            let [Output::Rejoin { attempt }] = drain(&mut l)[..] else {
                panic!("no rejoin at {at:?}");
            };
            attempts.push((attempt, at.duration_since(t0)));
            now = at + ms(100);
        }
        // 0.1 s, then each failure (100 ms after its attempt) + backoff
        assert_eq!(
            attempts,
            [
                (1, ms(100)),
                (2, ms(700)),
                (3, ms(1800)),
                (4, ms(2900)),
                (5, ms(4000)),
                (6, ms(5100)),
                (7, ms(6200)),
                (8, ms(7300)),
                (9, ms(8400)),
                (10, ms(9500)),
                (11, ms(10_000)),
            ]
        );
        assert_eq!(
            drain(&mut l),
            [Output::End(DisconnectReason::Unreachable {
                down_for: ms(10_100),
                why: "signalling lost: reset; last rejoin failed: no".into()
            })]
        );
        assert_eq!(l.poll_timeout(), None);
    }

    /// LiveKit back within the window: the next rejoin works and the call goes on;
    /// the next outage has a whole window again.
    #[test]
    fn lifecycle_rides_out_an_outage_shorter_than_the_window() {
        let t0 = Instant::now();
        let mut l = live(t0);
        l.handle_input(t0, Input::SignalLost("reset".into()));
        l.handle_input(t0, Input::RecoveryFailed(RecoveryError::Retry("a".into())));
        let mut now = t0;
        while now < t0 + ms(8000) {
            l.handle_input(now, Input::RecoveryFailed(RecoveryError::Retry("b".into())));
            now = l.poll_timeout().unwrap();
            l.handle_timeout(now);
        }
        drain(&mut l);
        l.handle_input(
            now + ms(50),
            Input::Recovered {
                keepalive: Some(KEEPALIVE),
            },
        );
        assert_eq!(
            drain(&mut l),
            [Output::Reconnected {
                resumed: false,
                down_for: (now + ms(50)).duration_since(t0)
            }]
        );
        assert_eq!(l.state(), State::Live);
        let t1 = now + ms(1000);
        l.handle_input(t1, Input::SignalLost("again".into()));
        l.handle_input(t1, Input::RecoveryFailed(RecoveryError::Retry("a".into())));
        l.handle_input(
            t1 + ms(9000),
            Input::RecoveryFailed(RecoveryError::Retry("b".into())),
        );
        assert!(!l.is_ended(), "a new outage has its own window");
        assert_eq!(l.poll_timeout(), Some(t1 + ms(9500)));
    }

    /// A server that shuts down (a restart, a rolling upgrade) says SERVER_SHUTDOWN
    /// with action DISCONNECT: that starts an outage, not the end.
    #[test]
    fn lifecycle_rejoins_after_a_server_shutdown() {
        let t0 = Instant::now();
        let mut l = live(t0);
        l.handle_input(
            t0,
            Input::ServerLeave {
                reason: SERVER_SHUTDOWN.into(),
                action: LeaveAction::Disconnect,
            },
        );
        let out = drain(&mut l);
        assert!(
            matches!(
                &out[..],
                [
                    Output::Reconnecting { full: true, .. },
                    Output::Rejoin { attempt: 1 }
                ]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn lifecycle_follows_the_servers_leave_action() {
        let t0 = Instant::now();
        let leave = |action| Input::ServerLeave {
            reason: "X".into(),
            action,
        };
        let mut l = live(t0);
        l.handle_input(t0, leave(LeaveAction::Resume));
        assert_eq!(drain(&mut l)[1], Output::Resume(ResumeReason::Unknown));
        let mut l = live(t0);
        l.handle_input(t0, leave(LeaveAction::Reconnect));
        assert_eq!(drain(&mut l)[1], Output::Rejoin { attempt: 1 });
        l.handle_input(t0 + ms(300), Input::Recovered { keepalive: None });
        assert_eq!(
            drain(&mut l),
            [Output::Reconnected {
                resumed: false,
                down_for: ms(300)
            }]
        );
        // a resume refused for good ends with the server's reason
        let mut l = live(t0);
        l.handle_input(t0, Input::SignalLost("x".into()));
        drain(&mut l);
        let gone = DisconnectReason::Server {
            reason: "ROOM_DELETED".into(),
            action: "DISCONNECT".into(),
        };
        l.handle_input(t0, Input::RecoveryFailed(RecoveryError::Gone(gone.clone())));
        assert_eq!(drain(&mut l), [Output::End(gone)]);
    }

    #[test]
    fn lifecycle_failures_while_joining_end_the_join_and_leave_is_sent_when_connected() {
        let t0 = Instant::now();
        let mut l = Lifecycle::new(t0, KEEPALIVE, WINDOW);
        l.handle_input(t0, Input::SignalLost("x".into()));
        assert_eq!(
            drain(&mut l),
            [Output::End(DisconnectReason::SignalLost("x".into()))]
        );
        let mut l = live(t0);
        l.handle_input(t0, Input::Leave(LeaveReason::UserRejected));
        assert_eq!(
            drain(&mut l),
            [
                Output::SendLeave(LeaveReason::UserRejected),
                Output::End(DisconnectReason::ClientInitiated)
            ]
        );
        l.handle_input(t0, Input::SignalLost("late".into()));
        l.handle_timeout(t0 + ms(60_000));
        assert!(drain(&mut l).is_empty(), "nothing after the end");
    }

    #[test]
    fn lifecycle_allows_five_recoveries_a_minute() {
        let t0 = Instant::now();
        let mut l = live(t0);
        for k in 0..5u64 {
            l.handle_input(t0 + ms(k * 1000), Input::SignalLost("x".into()));
            assert_eq!(l.state(), State::Resuming);
            l.handle_input(t0 + ms(k * 1000 + 10), Input::Recovered { keepalive: None });
        }
        drain(&mut l);
        l.handle_input(t0 + ms(6000), Input::SignalLost("x".into()));
        assert!(matches!(drain(&mut l)[..], [Output::End(_)]));
        // a minute later the budget is back
        let mut l = live(t0);
        for k in 0..5u64 {
            l.handle_input(t0 + ms(k * 1000), Input::SignalLost("x".into()));
            l.handle_input(t0 + ms(k * 1000 + 10), Input::Recovered { keepalive: None });
        }
        l.handle_input(t0 + ms(61_000), Input::SignalMessage);
        l.handle_input(t0 + ms(61_000), Input::SignalLost("x".into()));
        assert_eq!(l.state(), State::Resuming);
    }

    /// Every deadline the machine could be waiting for in its current state.
    fn deadlines(l: &Lifecycle) -> Vec<Instant> {
        let mut d = Vec::new();
        match l.state {
            State::Joining | State::Live => {
                d.push(l.next_ping);
                if let Some(down) = &l.peer_down {
                    d.push(down.at + PEER_CLOSED_GRACE);
                }
            }
            State::RejoinBackoff { at, .. } => d.push(at),
            _ => {}
        }
        d
    }

    fn random_input(rng: &mut XorShift, l: &Lifecycle) -> Input {
        let role = if rng.chance(50) {
            Role::Publisher
        } else {
            Role::Subscriber
        };
        let recovering = matches!(l.state(), State::Resuming | State::Rejoining { .. });
        if recovering && rng.chance(80) {
            return match rng.below(4) {
                0 => Input::Recovered {
                    keepalive: rng.chance(50).then_some(KEEPALIVE),
                },
                1 => Input::RecoveryFailed(RecoveryError::Gone(DisconnectReason::Server {
                    reason: "ROOM_DELETED".into(),
                    action: "DISCONNECT".into(),
                })),
                _ => Input::RecoveryFailed(RecoveryError::Retry("nope".into())),
            };
        }
        match rng.below(24) {
            0..=1 => Input::Active,
            2..=9 => Input::SignalMessage,
            10..=11 => Input::SignalLost("lost".into()),
            12..=13 => Input::PeerDown {
                role,
                why: "down".into(),
                ice_only: rng.chance(50),
            },
            14..=15 => Input::PeerUp(role),
            16 => Input::PeerFailed("dtls".into()),
            17..=19 => Input::ServerLeave {
                reason: "R".into(),
                action: match rng.below(3) {
                    0 => LeaveAction::Disconnect,
                    1 => LeaveAction::Resume,
                    _ => LeaveAction::Reconnect,
                },
            },
            20 => Input::Leave(LeaveReason::ClientInitiated),
            21 => Input::Recovered { keepalive: None },
            _ => Input::RecoveryFailed(RecoveryError::Retry("stray".into())),
        }
    }

    /// What the random test has seen come out so far.
    #[derive(Default)]
    struct Observer {
        ended: bool,
        starts: Vec<Instant>,
        announced: bool,
        in_recovery: bool,
        last_attempt: u32,
        rejoin_failed_at: Option<Instant>,
        /// When the recovery under way started.
        broken_at: Option<Instant>,
        /// Outputs seen, by kind (the test checks it reached every kind).
        seen: std::collections::BTreeMap<&'static str, u32>,
    }

    impl Observer {
        fn check(&mut self, seed: u64, l: &mut Lifecycle, now: Instant) {
            for out in drain(l) {
                assert!(!self.ended, "seed {seed}: {out:?} after End");
                let kind = match &out {
                    Output::Ping => "ping",
                    Output::Reconnecting { .. } => "reconnecting",
                    Output::Resume(_) => "resume",
                    Output::Rejoin { attempt: 3.. } => "rejoin 3+",
                    Output::Rejoin { .. } => "rejoin",
                    Output::Reconnected { resumed: true, .. } => "resumed",
                    Output::Reconnected { .. } => "rejoined",
                    Output::SendLeave(_) => "leave",
                    Output::End(DisconnectReason::Unreachable { .. }) => "unreachable",
                    Output::End(_) => "end",
                };
                *self.seen.entry(kind).or_default() += 1;
                match out {
                    Output::Reconnecting { .. } => self.announced = true,
                    Output::Resume(_) => {
                        assert!(self.announced, "seed {seed}: resume unannounced");
                        assert!(!self.in_recovery, "seed {seed}: resume while recovering");
                        self.announced = false;
                        self.starts.push(now);
                        self.broken_at = Some(now);
                        self.in_recovery = true;
                        self.last_attempt = 0;
                    }
                    Output::Rejoin { attempt } => {
                        if attempt == 1 {
                            assert!(self.announced, "seed {seed}: rejoin unannounced");
                            self.announced = false;
                            if !self.in_recovery {
                                self.starts.push(now);
                                self.broken_at = Some(now);
                                self.in_recovery = true;
                            }
                        } else {
                            assert_eq!(attempt, self.last_attempt + 1, "seed {seed}");
                            let failed = self.rejoin_failed_at.expect("a failed attempt");
                            assert!(
                                now.duration_since(failed) >= rejoin_backoff(attempt) / 2
                                    || now >= self.broken_at.expect("broken") + WINDOW,
                                "seed {seed}: no backoff before attempt {attempt}"
                            );
                        }
                        self.last_attempt = attempt;
                    }
                    Output::Reconnected { down_for, .. } => {
                        let broken = self.broken_at.take().expect("a recovery");
                        assert_eq!(down_for, now.duration_since(broken), "seed {seed}");
                        self.last_attempt = 0;
                        self.in_recovery = false;
                    }
                    Output::End(DisconnectReason::Unreachable { down_for, .. }) => {
                        let broken = self.broken_at.expect("a recovery");
                        assert!(now >= broken + WINDOW, "seed {seed}: gave up early");
                        assert_eq!(down_for, now.duration_since(broken), "seed {seed}");
                        self.ended = true;
                    }
                    Output::End(_) => self.ended = true,
                    Output::Ping | Output::SendLeave(_) => {}
                }
            }
            if let State::RejoinBackoff { at, .. } = l.state {
                let broken = l.broken_at.expect("broken");
                assert!(
                    at <= broken + WINDOW,
                    "seed {seed}: a rejoin planned after the window"
                );
            }
            if self.ended {
                assert!(l.is_ended(), "seed {seed}");
                assert_eq!(l.poll_timeout(), None, "seed {seed}");
            }
            for (i, s) in self.starts.iter().enumerate() {
                let in_window = self.starts[i..]
                    .iter()
                    .filter(|t| t.duration_since(*s) <= RECOVERY_WINDOW)
                    .count();
                assert!(
                    in_window <= MAX_RECOVERIES,
                    "seed {seed}: {in_window} recoveries within a minute"
                );
            }
        }
    }

    /// Seeded random inputs and timeouts on a virtual clock. Checks: no panic;
    /// `poll_timeout` is the earliest deadline (nothing is due a nanosecond before it,
    /// something changes at it); exactly one `End`, and nothing after it; every recovery
    /// (`Resume`, or `Rejoin` attempt 1 after `Reconnecting{full: true}` without a
    /// resume) is announced by `Reconnecting`; at most `MAX_RECOVERIES` recoveries start
    /// in any `RECOVERY_WINDOW`; rejoin attempts count up from 1, each no earlier than
    /// its backoff (or at the window's end), none planned past the window; the outage's
    /// length in `Reconnected` and `Unreachable` is right, and `Unreachable` never
    /// comes before the window has passed; and once the session stops succeeding (every
    /// later step fails), the machine ends within a bound on its timers alone.
    #[test]
    fn random_events_lifecycle() {
        let mut seen = std::collections::BTreeMap::new();
        for seed in 1..=2000u64 {
            let mut rng = XorShift::new(seed);
            let t0 = Instant::now();
            // odd seeds with the production jitter, even ones without
            let jitter = if seed % 2 == 1 { seed } else { 0 };
            let mut l = Lifecycle::new(t0, KEEPALIVE, WINDOW).with_jitter_seed(jitter);
            let mut now = t0;
            let mut obs = Observer::default();
            for _ in 0..rng.below(60) {
                now += match rng.below(4) {
                    0 => Duration::ZERO,
                    1 => ms(rng.below(1000)),
                    2 => ms(rng.below(20_000)),
                    _ => l
                        .poll_timeout()
                        .map_or(Duration::ZERO, |at| at.saturating_duration_since(now)),
                };
                assert_eq!(
                    l.poll_timeout(),
                    deadlines(&l).into_iter().min(),
                    "seed {seed}"
                );
                if let Some(at) = l.poll_timeout() {
                    let mut probe = l.clone();
                    probe.handle_timeout(at - Duration::from_nanos(1));
                    assert!(
                        drain(&mut probe).is_empty(),
                        "seed {seed}: due before poll_timeout"
                    );
                    assert_eq!(probe.state(), l.state(), "seed {seed}");
                    let before = probe.poll_timeout();
                    probe.handle_timeout(at);
                    assert!(
                        !drain(&mut probe).is_empty()
                            || probe.state() != l.state()
                            || probe.poll_timeout() != before,
                        "seed {seed}: nothing happened at poll_timeout"
                    );
                }
                if rng.chance(30) {
                    l.handle_timeout(now);
                } else {
                    let input = random_input(&mut rng, &l);
                    if matches!(input, Input::RecoveryFailed(RecoveryError::Retry(_)))
                        && matches!(l.state(), State::Rejoining { .. })
                    {
                        obs.rejoin_failed_at = Some(now);
                    }
                    l.handle_input(now, input);
                }
                obs.check(seed, &mut l, now);
            }
            // From here on the network is gone: the server never answers, every step
            // fails. The machine must end on its own within keep-alive timeout + one
            // interval + the reconnect window (plus a resume and a backoff).
            let bound =
                now + KEEPALIVE.timeout + KEEPALIVE.interval * 2 + WINDOW + REJOIN_BACKOFF_MAX;
            while !l.is_ended() {
                if matches!(l.state(), State::Resuming | State::Rejoining { .. }) {
                    if matches!(l.state(), State::Rejoining { .. }) {
                        obs.rejoin_failed_at = Some(now);
                    }
                    l.handle_input(now, Input::RecoveryFailed(RecoveryError::Retry("x".into())));
                } else {
                    let at = l
                        .poll_timeout()
                        .expect("a timer while connected or waiting");
                    now = now.max(at);
                    l.handle_timeout(now);
                }
                obs.check(seed, &mut l, now);
                assert!(
                    now <= bound,
                    "seed {seed}: still {:?} at the bound",
                    l.state()
                );
            }
            for (k, n) in obs.seen {
                *seen.entry(k).or_insert(0) += n;
            }
        }
        println!("outputs over all seeds: {seen:?}");
        for kind in [
            "ping",
            "reconnecting",
            "resume",
            "rejoin",
            "rejoin 3+",
            "resumed",
            "rejoined",
            "leave",
            "end",
            "unreachable",
        ] {
            assert!(seen.get(kind).is_some_and(|n| *n >= 20), "{kind}: {seen:?}");
        }
    }
}
