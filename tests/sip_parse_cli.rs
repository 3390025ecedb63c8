//! `roomline sip parse FILE` as an operator uses it: exit 0 with the key fields for an
//! accepted message, exit 1 with the reason and the daemon's answer otherwise. It needs no
//! configuration file.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn parse_file(path: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roomline"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--config",
            "/nonexistent/roomline.yaml",
            "sip",
            "parse",
            path,
        ])
        .output()
        .unwrap()
}

fn parse_stdin(text: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomline"))
        .args(["sip", "parse", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn accepted_message_prints_key_fields() {
    let out = parse_file("../shared/test-data/rfc4475/esc01.dat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with("accepted: request INVITE sip:sips%3Auser%40example.com@example.net"),
        "{stdout}"
    );
    assert!(stdout.contains("CSeq: 234234 INVITE"), "{stdout}");
    assert!(stdout.contains("body: 150 bytes"), "{stdout}");
}

#[test]
fn rejected_message_prints_reason_and_answer() {
    let out = parse_file("../shared/test-data/rfc4475/badvers.dat");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("rejected: SIP version SIP/7.0 is not supported"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the daemon answers: 505 Version Not Supported"),
        "{stdout}"
    );
}

#[test]
fn pasted_text_with_lf_endings_and_responses() {
    let msg = "OPTIONS sip:u@example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\n\
               From: <sip:a@example.com>;tag=1\nTo: <sip:u@example.com>\nCall-ID: x1\n\
               CSeq: 7 OPTIONS\nContent-Length: 0\n\n";
    let out = parse_stdin(msg);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("read as CRLF") && stdout.contains("accepted: request OPTIONS"),
        "{stdout}"
    );

    let out = parse_stdin("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout.contains("the daemon drops it (a response is never answered)"),
        "{stdout}"
    );
}
