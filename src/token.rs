//! LiveKit access tokens (JWT HS256) signed with the configured API key and secret:
//! what `roomline token` prints, and later what the bridge joins rooms with.

use crate::config::LiveKitConfig;
use livekit_api::access_token::{AccessToken, SIPGrants, VideoGrants};
use std::time::Duration;

/// What a token grants.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub identity: String,
    pub name: Option<String>,
    /// Participant kind claim (`sip`, `agent`, ...); empty leaves it to the server.
    pub kind: Option<String>,
    /// Join this room (publish, subscribe, data, update own metadata).
    pub room: Option<String>,
    /// Room administration: create, list, admin (of `room` if given).
    pub room_admin: bool,
    /// LiveKit SIP API: place calls (`sip.call`).
    pub sip_call: bool,
    /// LiveKit SIP API: manage trunks and rules (`sip.admin`).
    pub sip_admin: bool,
    pub ttl: Duration,
}

pub fn mint(lk: &LiveKitConfig, req: &TokenRequest) -> Result<String, String> {
    if req.identity.trim().is_empty() {
        return Err("identity must not be empty".into());
    }
    if req.room.is_none() && !req.room_admin && !req.sip_call && !req.sip_admin {
        return Err(
            "the token would grant nothing: give --room, --room-admin, --sip-call or --sip-admin"
                .into(),
        );
    }
    if req.ttl.is_zero() {
        return Err("ttl must be greater than zero".into());
    }
    let join = req.room.is_some();
    let grants = VideoGrants {
        room_join: join,
        room: req.room.clone().unwrap_or_default(),
        can_publish: Some(join),
        can_subscribe: Some(join),
        can_publish_data: Some(join),
        can_update_own_metadata: Some(join),
        room_admin: req.room_admin,
        room_create: req.room_admin,
        room_list: req.room_admin,
        ..Default::default()
    };
    let mut token = AccessToken::with_api_key(&lk.api_key, lk.api_secret.expose())
        .with_identity(&req.identity)
        .with_ttl(req.ttl)
        .with_grants(grants)
        .with_sip_grants(SIPGrants {
            admin: req.sip_admin,
            call: req.sip_call,
        });
    if let Some(name) = &req.name {
        token = token.with_name(name);
    }
    if let Some(kind) = &req.kind {
        token = token.with_kind(kind);
    }
    token
        .to_jwt()
        .map_err(|e| format!("cannot sign token: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use livekit_api::access_token::{Claims, TokenVerifier};

    fn lk() -> LiveKitConfig {
        LiveKitConfig {
            url: "ws://127.0.0.1:7880".into(),
            api_key: "devkey".into(),
            api_secret: Secret::new("secret"),
            reconnect_window: crate::livekit::DEFAULT_RECONNECT_WINDOW,
            hold_tone: false,
        }
    }

    #[test]
    fn token_carries_the_requested_grants_and_verifies() {
        let req = TokenRequest {
            identity: "sip_test".into(),
            kind: Some("sip".into()),
            room: Some("lobby".into()),
            sip_call: true,
            ttl: Duration::from_secs(600),
            ..Default::default()
        };
        let jwt = mint(&lk(), &req).unwrap();
        let claims: Claims = TokenVerifier::with_api_key("devkey", "secret")
            .verify(&jwt)
            .unwrap();
        assert_eq!(claims.sub, "sip_test");
        assert_eq!(claims.iss, "devkey");
        assert_eq!(claims.kind, "sip");
        assert!(claims.video.room_join && claims.video.room == "lobby");
        assert!(claims.sip.call && !claims.sip.admin);
        assert!(claims.exp - claims.nbf <= 600);
        assert!(
            TokenVerifier::with_api_key("devkey", "wrong")
                .verify(&jwt)
                .is_err()
        );
    }

    #[test]
    fn empty_grants_are_refused() {
        let req = TokenRequest {
            identity: "x".into(),
            ttl: Duration::from_secs(60),
            ..Default::default()
        };
        assert!(mint(&lk(), &req).unwrap_err().contains("grant nothing"));
    }
}
