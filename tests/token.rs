//! `roomline token` against a real livekit-server: a token it mints with --room-admin is
//! accepted by the server's RoomService (the room really gets created and listed), and
//! the same request signed with another secret is refused with 401, as is a join-only token.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use common::livekit::LiveKitServer;
use std::process::Command;

fn mint(server: &LiveKitServer, secret: &str, extra: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_roomline"))
        .current_dir(common::repo_root())
        .args([
            "token",
            "--config",
            "roomline.yaml",
            "--identity",
            "token-test",
        ])
        .args(extra)
        .env("LIVEKIT_URL", server.url())
        .env("LIVEKIT_API_KEY", server.api_key())
        .env("LIVEKIT_API_SECRET", secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn twirp(server: &LiveKitServer, method: &str, token: &str, body: &str) -> (u16, String) {
    server.twirp(&format!("livekit.RoomService/{method}"), token, body)
}

#[test]
fn minted_token_is_accepted_by_livekit_and_a_forged_one_is_not() {
    let server = LiveKitServer::start();
    let room = format!("token-test-{}", std::process::id());

    let good = mint(
        &server,
        server.api_secret(),
        &["--room-admin", "--ttl", "5m"],
    );
    assert_eq!(good.split('.').count(), 3, "a JWT: {good}");
    let (status, body) = twirp(
        &server,
        "CreateRoom",
        &good,
        &format!("{{\"name\":\"{room}\"}}"),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = twirp(&server, "ListRooms", &good, "{}");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&room), "created room is listed: {body}");

    let forged = mint(&server, "not-the-secret", &["--room-admin"]);
    let (status, body) = twirp(&server, "ListRooms", &forged, "{}");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("signature is invalid"), "{body}");

    // A join-only token does not allow administration.
    let joiner = mint(&server, server.api_secret(), &["--room", &room]);
    let (status, body) = twirp(&server, "ListRooms", &joiner, "{}");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("permissions denied"), "{body}");
}
