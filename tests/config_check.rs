//! `roomline check` as an operator runs it: the examples pass, and every broken fixture
//! under tests/broken/ fails with exit status 64 and exactly the errors in its
//! expected.txt (file:line:column and message, all of them, in reading order).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `roomline check` from the repository root with the LiveKit variables cleared,
/// then set from `env`.
fn check(config: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomline"));
    cmd.current_dir(repo()).args(["check", "--config", config]);
    for var in [
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
        "ROOMLINE_CONFIG",
        "LOG_LEVEL",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("run roomline")
}

#[test]
fn examples_are_valid() {
    let out = check("roomline.yaml", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.trim(),
        "roomline.yaml: configuration is valid (4 trunks, 4 dialplan rules)"
    );
}

#[test]
fn broken_fixtures_fail_with_the_expected_errors() {
    let dir = repo().join("tests/broken");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    assert!(cases.len() >= 6, "fixtures missing in {}", dir.display());
    for case in cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let config = format!("tests/broken/{name}/roomline.yaml");
        let out = check(&config, &[]);
        let expected = std::fs::read_to_string(case.join("expected.txt")).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(64),
            "{name}: exit status; stderr:\n{stderr}"
        );
        assert_eq!(
            stderr.trim_end(),
            expected.trim_end(),
            "{name}: errors differ"
        );
        assert!(out.stdout.is_empty(), "{name}: nothing on stdout");
    }
}

#[test]
fn every_error_is_reported_at_once() {
    let out = check("tests/broken/many-errors/roomline.yaml", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let located = stderr
        .lines()
        .filter(|l| l.starts_with("tests/broken/many-errors/"))
        .count();
    assert_eq!(located, 19, "{stderr}");
    // Errors from all three kinds of file.
    for f in [
        "roomline.yaml:",
        "trunks/carrier.yaml:",
        "dialplans/10-main.yaml:",
        "dialplans/20-other.yaml:",
    ] {
        assert!(stderr.contains(f), "no error from {f}\n{stderr}");
    }
    assert!(stderr.trim_end().ends_with("19 configuration errors"));
}

#[test]
fn environment_overrides_the_file() {
    // The credentials can come from the environment alone...
    let env = [
        ("LIVEKIT_URL", "wss://lk.example"),
        ("LIVEKIT_API_KEY", "k"),
        ("LIVEKIT_API_SECRET", "s"),
    ];
    let out = check("tests/broken/missing-livekit/roomline.yaml", &env);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...and a bad override is reported against the variable, not the file.
    let out = check("roomline.yaml", &[("LIVEKIT_URL", "ftp://lk.example")]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "environment variable LIVEKIT_URL: invalid LiveKit URL \"ftp://lk.example\""
        ),
        "{stderr}"
    );
}

#[test]
fn missing_config_file_is_a_clear_error() {
    let out = check("tests/no-such-dir/roomline.yaml", &[]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("tests/no-such-dir/roomline.yaml: cannot read file:"),
        "{stderr}"
    );
    assert!(Path::new(&repo()).join("roomline.yaml").exists());
}

#[test]
fn srtp_over_cleartext_signalling_is_valid_with_a_located_warning() {
    let out = check("tests/warned/srtp-cleartext/roomline.yaml", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let at = "tests/warned/srtp-cleartext/trunks/carrier.yaml:1:19: warning:";
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{at} media_encryption require over tcp signalling: the SRTP keys travel in \
             cleartext SDP (use transport tls)\n\
             {at} media_encryption require on an inbound trunk without a tls listener: the \
             SRTP keys travel in cleartext SDP"
        )
    );
    // the TLS trunk gets none, and the examples none at all
    assert!(!stderr.contains("secure.yaml"));
    let out = check("roomline.yaml", &[]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn media_encryption_and_tls_settings_reach_the_snapshot() {
    use roomline::config::{MediaEncryption, Transport};
    let cfg = roomline::config::load(&repo().join("tests/warned/srtp-cleartext/roomline.yaml"))
        .expect("valid");
    let carrier = cfg.trunk("carrier").unwrap();
    assert_eq!(carrier.media_encryption, MediaEncryption::Require);
    let secure = cfg.trunk("secure").unwrap();
    assert_eq!(secure.media_encryption, MediaEncryption::Allow);
    let out = secure.outbound.as_ref().unwrap();
    assert_eq!(out.transport, Transport::Tls);
    assert_eq!(
        out.ca_file.as_deref(),
        Some(Path::new("/etc/roomline/carrier-ca.pem"))
    );
    assert_eq!(cfg.warnings.len(), 2);
    // the default is LiveKit's: disable
    let examples = roomline::config::load(&repo().join("roomline.yaml")).expect("valid");
    assert!(
        examples
            .trunks
            .iter()
            .all(|t| t.media_encryption == MediaEncryption::Disable)
    );
}
