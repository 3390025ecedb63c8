//! What `roomline call` reports about one call: the SIP exchange with its timings, how
//! the call went, the RTP figures, DTMF, and the tone heard; and the verdict (exit
//! status): the call failed (not answered, refused, no answer at all, ended by a media
//! timeout), the audio failed (no RTP at all, or `--expect-tone` not heard for a second),
//! or both worked.

use std::fmt::Write as _;
use std::time::Duration;

use super::audio::{Heard, ToneHeard};
use crate::media::session::MediaStats;

/// The expected tone must be heard at least this long.
pub const EXPECT_TONE_SECONDS: f64 = 1.0;

/// Exit status when the call failed.
pub const EXIT_CALL_FAILED: u8 = 1;
/// Exit status when the call worked but its audio did not.
pub const EXIT_AUDIO_FAILED: u8 = 3;

/// How a call went, for the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    CallFailed,
    AudioFailed,
}

impl Verdict {
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Ok => 0,
            Verdict::CallFailed => EXIT_CALL_FAILED,
            Verdict::AudioFailed => EXIT_AUDIO_FAILED,
        }
    }
}

/// Everything printed about one call.
#[derive(Debug, Default)]
pub struct CallReport {
    /// Who the call was with (the Request-URI we called, or the caller).
    pub peer: String,
    /// The SIP exchange: time since the start, direction and message.
    pub sip: Vec<(Duration, String)>,
    pub answered_after: Option<Duration>,
    pub codec: Option<String>,
    /// How long the call was up.
    pub talked: Duration,
    /// How the call ended once up ("we hung up", "the peer hung up").
    pub ended: String,
    /// Why the call failed, if it did (a SIP status, a timeout, a transport error).
    pub failure: Option<String>,
    pub stats: Option<MediaStats>,
    pub dtmf_sent: String,
    pub dtmf_received: String,
    pub heard: Heard,
    pub expect_tone: Option<f64>,
    /// Where the recording went, or why it could not be written.
    pub recorded: Option<Result<String, String>>,
}

impl CallReport {
    pub fn note(&mut self, at: Duration, line: impl Into<String>) {
        // bounded: a hostile peer cannot grow the report without end
        if self.sip.len() < 200 {
            self.sip.push((at, line.into()));
        }
    }

    /// The tone asked for with `--expect-tone`, if heard.
    pub fn expected_heard(&self) -> Option<ToneHeard> {
        self.expect_tone.and_then(|hz| self.heard.tone_near(hz))
    }

    /// Why the audio failed, if it did.
    pub fn audio_failure(&self) -> Option<String> {
        let received = self.stats.map_or(0, |s| s.rx.packets);
        if received == 0 {
            return Some("no RTP received".into());
        }
        if let Some(want) = self.expect_tone {
            return match self.expected_heard() {
                Some(t) if t.seconds >= EXPECT_TONE_SECONDS => None,
                Some(t) => Some(format!(
                    "{want} Hz heard only {:.1} s (at least {EXPECT_TONE_SECONDS:.1} s expected)",
                    t.seconds
                )),
                None => Some(format!("{want} Hz not heard")),
            };
        }
        None
    }

    pub fn verdict(&self) -> Verdict {
        if self.failure.is_some() {
            Verdict::CallFailed
        } else if self.audio_failure().is_some() {
            Verdict::AudioFailed
        } else {
            Verdict::Ok
        }
    }

    /// The report as printed: one labelled line per fact, the SIP exchange first.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "call:   {}", self.peer);
        for (i, (at, line)) in self.sip.iter().enumerate() {
            let label = if i == 0 { "sip:" } else { "" };
            let _ = writeln!(s, "{label:<7} {:>8.3} s  {line}", at.as_secs_f64());
        }
        match (&self.failure, self.answered_after) {
            (Some(f), _) => {
                let _ = writeln!(s, "result: call failed: {f}");
            }
            (None, Some(after)) => {
                let _ = writeln!(
                    s,
                    "answer: after {:.2} s, codec {}, up {:.1} s, {}",
                    after.as_secs_f64(),
                    self.codec.as_deref().unwrap_or("?"),
                    self.talked.as_secs_f64(),
                    self.ended
                );
            }
            (None, None) => {}
        }
        if let Some(st) = &self.stats {
            let expected = st.rx.packets + st.rx.lost;
            let loss = if expected > 0 {
                100.0 * st.rx.lost as f64 / expected as f64
            } else {
                0.0
            };
            let peer_view = match st.tx.lost {
                Some(l) => format!(", the peer reports {l} of ours lost"),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "rtp:    sent {} packets, received {} (lost {}, {loss:.1} %), jitter {:.1} ms{peer_view}",
                st.tx.packets, st.rx.packets, st.rx.lost, st.rx.jitter_ms
            );
        }
        if !self.dtmf_sent.is_empty() || !self.dtmf_received.is_empty() {
            let _ = writeln!(
                s,
                "dtmf:   sent {:?}, received {:?}",
                self.dtmf_sent, self.dtmf_received
            );
        }
        if self.answered_after.is_some() {
            let heard = match self.heard.dominant() {
                Some(t) => format!(
                    "{:.1} Hz for {:.1} s (from {:.1} s), audible {:.1} s",
                    t.hz,
                    t.seconds,
                    t.first_at,
                    self.heard.audible_seconds()
                ),
                None => "silence".into(),
            };
            let _ = writeln!(s, "heard:  {heard}");
        }
        match &self.recorded {
            Some(Ok(path)) => {
                let _ = writeln!(s, "record: {path}");
            }
            Some(Err(e)) => {
                let _ = writeln!(s, "record: {e}");
            }
            None => {}
        }
        if self.failure.is_none() {
            match self.audio_failure() {
                Some(why) => {
                    let _ = writeln!(s, "result: audio failed: {why}");
                }
                None => {
                    let _ = match self.expected_heard() {
                        Some(t) => writeln!(s, "result: ok, expected tone heard ({:.1} Hz)", t.hz),
                        None => writeln!(s, "result: ok"),
                    };
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::audio::{Player, Recording, Source};

    fn up(stats_rx: u64) -> CallReport {
        let mut r = CallReport {
            peer: "sip:+15550100@127.0.0.1:5060".into(),
            answered_after: Some(Duration::from_millis(1200)),
            codec: Some("G722".into()),
            ended: "we hung up".into(),
            ..Default::default()
        };
        let mut st = MediaStats::default();
        st.rx.packets = stats_rx;
        r.stats = Some(st);
        r
    }

    #[test]
    fn phone_report_verdicts() {
        let mut failed = up(0);
        failed.failure = Some("403 Forbidden".into());
        assert_eq!(failed.verdict(), Verdict::CallFailed);
        assert!(
            failed
                .render()
                .contains("result: call failed: 403 Forbidden")
        );

        assert_eq!(up(0).verdict(), Verdict::AudioFailed);
        assert_eq!(up(100).verdict(), Verdict::Ok);

        let mut rec = Recording::new(8000);
        let mut p = Player::new(Source::Tone { hz: 440.0 }, 8000);
        for _ in 0..100 {
            rec.push(&p.next_frame().unwrap());
        }
        let mut ok = up(100);
        ok.heard = rec.analyse();
        ok.expect_tone = Some(440.0);
        assert_eq!(ok.verdict(), Verdict::Ok, "{}", ok.render());
        assert!(ok.render().contains("heard:  440.0 Hz for 2.0 s"));
        ok.expect_tone = Some(1000.0);
        assert_eq!(ok.verdict(), Verdict::AudioFailed);
        assert!(
            ok.render()
                .contains("result: audio failed: 1000 Hz not heard")
        );
        assert_eq!(Verdict::AudioFailed.exit_code(), 3);
    }
}
