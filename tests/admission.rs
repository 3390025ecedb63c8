//! Fair admission under a flood, as an operator would try it: one source that a trunk
//! accepts floods INVITEs to a number the dialplan rejects (sipp at 200 calls/s, from
//! 127.0.0.2), another source no trunk accepts sends a burst (127.0.0.4), while a third
//! (127.0.0.3) places ordinary calls into a room. Every ordinary call is answered (the
//! refusals spend none of the calls-per-second allowance), and the daemon's log at info
//! shows the refusals aggregated, a line per source and reason per interval with counts
//! that add up to what was refused, not a line per INVITE.
//!
//! Real peers: livekit-server, the `roomline run` daemon, sipp as the phones.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{self, Roomline, Setup, Sipp, header};
use common::uac::{uac_answered_then_bye, uac_refused};

const ROOM_NUMBER: &str = "+15550100";
const BLOCKED: &str = "+15550199";

fn sipp_from(rl: &Roomline, ip: &str, called: &str, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        rl.sip_addr(),
        "-i".into(),
        ip.into(),
        "-p".into(),
        roomline::free_port().to_string(),
        "-s".into(),
        called.into(),
        "-mi".into(),
        ip.into(),
        "-mp".into(),
        roomline::free_media_port().to_string(),
        "-timeout".into(),
        "90s".into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// The `key=value` of a human log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split(' ').next()
}

#[test]
fn a_flood_to_a_rejected_number_does_not_lock_out_other_callers() {
    let lk = LiveKitServer::start();
    let plan = format!(
        "rules:\n\
         \x20 - name: blocked\n    match:\n      called: \"{BLOCKED}\"\n    reject:\n      status: 403\n\
         \x20 - name: main\n    match:\n      called: \"{ROOM_NUMBER}\"\n    room: fair-room\n"
    );
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk(
                "local",
                "inbound:\n  allowed_addresses: [127.0.0.2/32, 127.0.0.3/32]\n",
            )
            .dialplan("main", &plan)
            .limits("  max_calls_per_second: 50\n")
            .log_level("info"),
    );

    // the flood: 3,000 INVITEs at 200/s (15 s), each refused with 403 by the dialplan
    // (or dropped by the per-source flood limit beyond 100/s)
    let flood = Sipp::spawn(
        Some(&uac_refused("+15557770000", 403)),
        &sipp_from(
            &rl,
            "127.0.0.2",
            BLOCKED,
            &[
                "-m",
                "3000",
                "-r",
                "200",
                "-l",
                "3000",
                "-max_invite_retrans",
                "2",
            ],
        ),
    );
    std::thread::sleep(Duration::from_secs(2));
    // a burst from a source no trunk accepts
    let stranger = UdpSocket::bind("127.0.0.4:0").unwrap();
    let me = stranger.local_addr().unwrap();
    for i in 0..300 {
        let invite = format!(
            "INVITE sip:{ROOM_NUMBER}@{dst} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKstr{i}\r\n\
             From: <sip:+15558880000@{me}>;tag=s{i}\r\nTo: <sip:{ROOM_NUMBER}@{dst}>\r\n\
             Call-ID: stranger-{i}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            dst = rl.sip_addr()
        );
        stranger.send_to(invite.as_bytes(), rl.sip_addr()).unwrap();
    }
    // meanwhile ten ordinary calls, two a second, each from its own caller number
    let legit = Sipp::spawn(
        Some(&uac_answered_then_bye("+155512399[call_number]", 500)),
        &sipp_from(
            &rl,
            "127.0.0.3",
            ROOM_NUMBER,
            &["-m", "10", "-r", "2", "-timeout_error"],
        ),
    )
    .wait(Duration::from_secs(90));
    let flood = flood.wait(Duration::from_secs(40));

    // every ordinary call was answered
    legit.expect_success();
    let answered = legit
        .received()
        .iter()
        .filter(|m| {
            m.starts_with("SIP/2.0 200") && header(m, "CSeq").is_some_and(|c| c.ends_with("INVITE"))
        })
        .count();
    assert_eq!(answered, 10, "{}", legit.describe());
    let refused_403 = flood.finals().iter().filter(|s| **s == 403).count();
    assert!(
        refused_403 > 1000,
        "the flood was not a flood: {refused_403} refused\n{}",
        flood.describe()
    );

    // the log: a few aggregated lines whose counts add up to every refusal; wait for the
    // interval (10 s) to end so the last summaries are written
    let rejected_total = || {
        rl.metric(r#"roomline_calls_total{direction="inbound",trunk="local",outcome="rejected"}"#)
            .unwrap_or(0.0) as u64
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = rl.log();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("request refused"))
            .collect();
        let sum = |source: &str, reason: &str| -> u64 {
            lines
                .iter()
                .filter(|l| {
                    field(l, "source") == Some(source) && field(l, "reason") == Some(reason)
                })
                .map(|l| field(l, "count").and_then(|c| c.parse().ok()).unwrap_or(0))
                .sum()
        };
        let count_lines = |source: &str, reason: &str| {
            lines
                .iter()
                .filter(|l| {
                    field(l, "source") == Some(source) && field(l, "reason") == Some(reason)
                })
                .count()
        };
        let rejected = sum("127.0.0.2", "rejected");
        // beyond its flood-limit burst (200) the stranger's INVITEs are dropped unanswered
        let strangers = sum("127.0.0.4", "no_trunk") + sum("127.0.0.4", "flood_limit");
        if rejected == rejected_total() && strangers == 300 {
            eprintln!(
                "{} refusal lines in all; rejected: {rejected} in {} lines, no_trunk: {strangers} in {} lines, \
                 flood_limit: {} in {} lines; log {} lines",
                lines.len(),
                count_lines("127.0.0.2", "rejected"),
                count_lines("127.0.0.4", "no_trunk"),
                sum("127.0.0.2", "flood_limit"),
                count_lines("127.0.0.2", "flood_limit"),
                log.lines().count()
            );
            assert!(
                rejected as usize >= refused_403,
                "{rejected} < {refused_403}"
            );
            // first line + one per 10 s interval of a ~15 s flood
            assert!(count_lines("127.0.0.2", "rejected") <= 4, "{log}");
            assert!(count_lines("127.0.0.4", "no_trunk") <= 2, "{log}");
            assert!(count_lines("127.0.0.4", "flood_limit") <= 2, "{log}");
            assert!(lines.len() <= 16, "{}", lines.join("\n"));
            let first = lines
                .iter()
                .find(|l| field(l, "reason") == Some("rejected"))
                .unwrap();
            assert_eq!(field(first, "detail"), Some("rule=blocked"), "{first}");
            assert_eq!(field(first, "status"), Some("403"), "{first}");
            assert!(log.lines().count() < 200, "{log}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusal counts in the log ({rejected} rejected, {strangers} no_trunk or flood_limit) \
             do not add up to {} rejected and 300:\n{}",
            rejected_total(),
            lines.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let refused_rate = rl
        .metric(r#"roomline_calls_refused_total{reason="call_rate"}"#)
        .unwrap_or(0.0);
    assert_eq!(refused_rate, 0.0, "no call was refused for the rate");
    rl.assert_no_leaks(Duration::from_secs(15));
}
