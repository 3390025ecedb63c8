//! Crash recovery, as an operator meets it: three calls are up (sipp phones, participants
//! in a real livekit-server room), the daemon is SIGKILLed, systemd (here: the test)
//! starts it again with the same configuration and state directory. Each phone gets a
//! BYE with a Reason saying what happened soon after the new start, and the orphaned
//! participants are removed from the room (ListParticipants) rather than left until
//! LiveKit times them out.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{self, Roomline, Setup, Sipp, list_participants, wait_participants};
use common::uac::uac_answered_then;

const ROOM: &str = "crash-room";

/// A phone that calls, ACKs the 200, then waits (up to 3 minutes) for the daemon's BYE,
/// logs its Reason and answers 200.
fn phone_waiting_for_bye(caller: &str) -> String {
    let then = r#"  <recv request="BYE" timeout="180000"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:]
      [last_Call-ID:]
      [last_CSeq:]
      Content-Length: 0
    ]]>
  </send>"#;
    uac_answered_then("uac-awaits-bye", caller, "[media_port]", then)
}

fn sip_participants(lk: &LiveKitServer) -> usize {
    list_participants(lk, ROOM)
        .iter()
        .filter(|p| {
            p["identity"]
                .as_str()
                .is_some_and(|i| i.starts_with("sip_"))
        })
        .count()
}

#[test]
fn calls_left_by_a_crash_get_bye_and_their_participants_leave_after_restart() {
    let lk = LiveKitServer::start();
    let state = tempfile::tempdir().unwrap();
    let state_dir = state.path().join("roomline");
    let mut rl = Roomline::start(
        Setup::new(&lk)
            .dialplan(
                "main",
                &format!("rules:\n  - name: main\n    match:\n      called: \"+15550100\"\n    room: {ROOM}\n"),
            )
            // what systemd's StateDirectory=roomline passes
            .env("STATE_DIRECTORY", &state_dir.display().to_string())
            .log_level("info"),
    );
    let phones = Sipp::spawn(
        Some(&phone_waiting_for_bye("+155512300[call_number]")),
        &[
            rl.sip_addr(),
            "-i".into(),
            "127.0.0.1".into(),
            "-p".into(),
            roomline::free_port().to_string(),
            "-s".into(),
            "+15550100".into(),
            "-mi".into(),
            "127.0.0.1".into(),
            "-mp".into(),
            roomline::free_media_port().to_string(),
            "-m".into(),
            "3".into(),
            "-l".into(),
            "3".into(),
            "-r".into(),
            "5".into(),
            "-timeout".into(),
            "200s".into(),
            "-timeout_error".into(),
        ],
    );
    // all three up: answered, their participants in the room, journaled
    wait_participants(&lk, ROOM, Duration::from_secs(60), |ps| {
        ps.iter()
            .filter(|p| {
                p["identity"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("sip_"))
            })
            .count()
            == 3
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while phones
        .received_so_far()
        .iter()
        .filter(|m| m.starts_with("SIP/2.0 200"))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "{}", phones.messages_so_far());
        std::thread::sleep(Duration::from_millis(100));
    }
    let journal = state_dir.join("calls.journal");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(&journal)
        .unwrap_or_default()
        .lines()
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "the journal does not list 3 calls"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // the crash, and the new start
    rl.kill_and_restart();
    let restarted = Instant::now();

    // each phone gets its BYE, with the Reason, within seconds of the new start
    let run = phones.wait(Duration::from_secs(60));
    let took = restarted.elapsed();
    run.expect_success();
    let byes: Vec<String> = run
        .received()
        .into_iter()
        .filter(|m| m.starts_with("BYE "))
        .collect();
    assert_eq!(byes.len(), 3, "{}", run.describe());
    for b in &byes {
        assert!(
            b.lines().any(|l| l.starts_with("Reason: Q.850;cause=41")),
            "{b}"
        );
    }
    eprintln!("3 BYEs within {took:?} of the restart");
    assert!(took < Duration::from_secs(30), "BYEs took {took:?}");

    // no orphaned participant left: removed by the new daemon, not timed out by LiveKit
    let deadline = Instant::now() + Duration::from_secs(10);
    while sip_participants(&lk) > 0 {
        assert!(
            Instant::now() < deadline,
            "orphaned participants still in the room 10 s after the restart: {:?}",
            list_participants(&lk, ROOM)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("room clear {:?} after the restart", restarted.elapsed());
    let log = rl.log();
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ended a call left by a previous run"))
        .collect();
    assert_eq!(ended.len(), 3, "{log}");
    for l in &ended {
        assert!(l.contains("BYE answered 200"), "{l}");
        assert!(
            l.contains("participant removed") || l.contains("participant already gone"),
            "{l}"
        );
    }
    assert!(
        ended.iter().any(|l| l.contains("participant removed")),
        "LiveKit had already dropped every participant itself: {ended:?}"
    );
    // the journal is empty again once the orphans are ended
    let deadline = Instant::now() + Duration::from_secs(10);
    while !crash_journal_is_empty(&journal) {
        assert!(Instant::now() < deadline, "journal not emptied");
        std::thread::sleep(Duration::from_millis(100));
    }
    rl.assert_no_leaks(Duration::from_secs(10));
}

/// Whether every call the journal lists has also ended in it (ups and downs balance).
fn crash_journal_is_empty(path: &std::path::Path) -> bool {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut live = std::collections::BTreeSet::new();
    for line in text.lines() {
        let Some((_, json)) = line.split_once(' ') else {
            continue;
        };
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        let key = v["key"].as_str().unwrap().to_string();
        if v["op"] == "up" {
            live.insert(key);
        } else {
            live.remove(&key);
        }
    }
    live.is_empty()
}
