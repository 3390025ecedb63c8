//! `scripts/demo-call`, the README's first call, against the daemon as
//! `scripts/setup-and-run` starts it: the repository's example trunks and dialplans (only
//! the ports differ, so that tests can run side by side), a real livekit-server, and the
//! room peer the script starts with the LiveKit Python SDK. The script's two lines must
//! say that each side heard the other's tone.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::livekit::LiveKitServer;
use common::roomline::{Roomline, Setup, daemon_binary};
use common::{repo_root, wait_timeout, within};

/// The YAML files of an example directory, by name without `.yaml`.
fn example_files(dir: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = std::fs::read_dir(repo_root().join(dir))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The frequency after `prefix` ("... heard 440.0 Hz ...").
fn hz_after(line: &str, prefix: &str) -> f64 {
    line.strip_prefix(prefix)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no frequency after {prefix:?} in {line:?}"))
}

#[test]
fn demo_call_hears_both_directions_with_the_example_configuration() {
    let lk = LiveKitServer::start();
    let mut setup = Setup::new(&lk);
    setup.trunks = example_files("trunks");
    setup.dialplans = example_files("dialplans");
    assert!(
        setup.trunks.iter().any(|(n, _)| n == "local"),
        "the example has trunks/local.yaml"
    );
    let rl = Roomline::start(setup);
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut child = Command::new("bash")
        .arg(repo_root().join("scripts/demo-call"))
        .env("ROOMLINE_SIP", rl.sip_addr())
        .env("ROOMLINE_BIN", daemon_binary())
        .env("ROOMLINE_PYTHON", common::python())
        .env("LIVEKIT_URL", lk.url())
        .env("LIVEKIT_API_KEY", lk.api_key())
        .env("LIVEKIT_API_SECRET", lk.api_secret())
        .env_remove("DEMO_VERBOSE")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let status = wait_timeout(&mut child, Duration::from_secs(150));
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = std::fs::read_to_string(out).unwrap_or_default();
    let err = std::fs::read_to_string(err).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "scripts/demo-call: {status:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "two lines, one per direction:\n{out}");
    let to_room = hz_after(lines[0], "phone -> room: the room heard ");
    assert!(
        within(to_room, 1000.0, 0.02) && lines[0].ends_with(": ok"),
        "{out}"
    );
    let to_phone = hz_after(lines[1], "room -> phone: the phone heard ");
    assert!(
        within(to_phone, 440.0, 0.02) && lines[1].ends_with(": ok"),
        "{out}"
    );
    // the example dialplan routed it: the conference rule, after its PIN
    let log = rl.log();
    assert!(log.contains("rule=conference"), "{}", rl.log_tail(40));
    rl.assert_no_leaks(Duration::from_secs(20));
}
