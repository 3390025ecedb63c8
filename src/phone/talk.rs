//! The phone's answered call, both directions alike: the source plays into the media
//! leg's mixer at the phone's frame pace (as a room track would), every frame heard is
//! recorded, the digits go out as RFC 4733 events (250 ms apart, 'w' pauses 500 ms), the
//! peer's digits are collected, and we hang up after the duration. Everything SIP is the
//! shell's (`call::shell`): the peer's BYE, re-INVITEs, session refreshes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::audio::{Player, Recording};
use super::report::CallReport;
use super::{Options, SOURCE_OWNER};
use crate::call::outcome::Outcome;
use crate::call::shell::{MediaMode, Shell, now};

const DTMF_FIRST: Duration = Duration::from_millis(1000);
const DTMF_GAP: Duration = Duration::from_millis(250);
const DTMF_PAUSE: Duration = Duration::from_millis(500);

/// Runs the answered call until it ends: the outcome and what was heard, with the
/// report's SIP, RTP and DTMF parts filled in (`conclude` adds the rest once the call is
/// hung up: the analysis takes a moment the BYE should not wait for).
pub(super) async fn talk(
    shell: &mut Shell,
    opts: &Options,
    report: &mut CallReport,
    start: Instant,
) -> (Outcome, Recording) {
    let rate = shell.media.as_ref().map_or(8000, |m| m.rate().hz());
    report.codec = shell
        .media
        .as_ref()
        .and_then(|m| m.codec().map(|c| format!("{}/{}", c.name(), m.rate().hz())));
    let mut player = Player::new(opts.source.clone(), rate);
    let mut recording = Recording::new(rate);
    let mut digits: VecDeque<char> = opts.dtmf.chars().collect();
    let up_at = now();
    let mut dtmf_next = up_at + DTMF_FIRST;
    let hangup_at = up_at + opts.duration;
    let mode = MediaMode {
        live: true,
        forward: false,
        timeout_ends: true,
    };
    let outcome = loop {
        let mut own = (now() + Duration::from_millis(100)).min(hangup_at);
        if !digits.is_empty() {
            own = own.min(dtmf_next);
        }
        let deadline = shell.next_deadline(Some(own));
        if let Err(o) = shell.step(std::future::pending::<()>(), deadline).await {
            break o;
        }
        if let Err(o) = shell.drive().await {
            break o;
        }
        let t = now();
        if t >= hangup_at {
            report.note(t - start, "-> BYE (duration reached)");
            break Outcome::RoomHangup;
        }
        while dtmf_next <= t
            && let Some(c) = digits.pop_front()
        {
            if c == 'w' || c == 'W' {
                dtmf_next = t + DTMF_PAUSE;
                continue;
            }
            if let Some(m) = shell.media.as_mut() {
                m.send_dtmf(t, c, "api");
                report.dtmf_sent.push(c);
            }
            dtmf_next = t + DTMF_GAP;
        }
        let r = shell.drive_media(mode, |pm, frame| {
            recording.push(frame);
            if let Some(f) = player.next_frame() {
                pm.push_room_audio("source", SOURCE_OWNER, &f);
            }
        });
        if let Err(o) = r {
            break o;
        }
        while let Some(d) = shell.digits.pop_front() {
            if report.dtmf_received.len() < 64 {
                report.dtmf_received.push(d);
            }
        }
    };
    let end = now();
    report.talked = end.saturating_duration_since(up_at);
    report.ended = match &outcome {
        Outcome::RoomHangup => "we hung up".into(),
        Outcome::Shutdown => {
            report.note(end - start, "-> BYE (interrupted)");
            "we hung up (interrupted)".into()
        }
        Outcome::CallerHangup => {
            report.note(end - start, "<- BYE");
            "the peer hung up (BYE)".into()
        }
        Outcome::MediaTimeout => {
            report.failure = Some("media timeout: no RTP from the peer".into());
            "media timeout".into()
        }
        other => {
            report.failure = Some(format!("the call ended: {other}"));
            other.to_string()
        }
    };
    report.stats = shell.media.as_ref().and_then(|m| m.stats());
    (outcome, recording)
}

/// What was heard, into the report (and the WAV file of `--record`).
pub(super) fn conclude(report: &mut CallReport, recording: Option<Recording>, opts: &Options) {
    let Some(recording) = recording else {
        return;
    };
    report.heard = recording.analyse();
    if let Some(path) = &opts.record {
        report.recorded = Some(
            recording
                .write_wav(path)
                .map(|()| format!("{} ({} Hz, mono)", path.display(), recording.rate)),
        );
    }
}
