//! LiveKit's SIP API, served by Roomline: `POST /twirp/livekit.SIP/CreateSIPParticipant`
//! and `.../TransferSIPParticipant`, protobuf or JSON bodies (answered in kind), so
//! LiveKit's server SDKs and the `lk` CLI work unchanged. Auth is a LiveKit access token
//! signed with the configured key and secret that carries the `sip.call` grant (401
//! without a valid token, 403 without the grant). Request fields that make no sense for
//! a configuration-file deployment are refused by name, never ignored. SIP failures come
//! back as Twirp errors with `sip_status_code` and `sip_status` in `meta`, with the codes
//! LiveKit's own service uses. Tests: `twirp_*` below and `tests/outbound_calls.rs`.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use livekit_protocol as proto;

use super::AppState;
use crate::call::CallControl;
use crate::call::outbound::{DialError, OutboundRequest};
use crate::call::transfer::{FailReason, Failure};
use crate::config::IncludeHeaders;
use crate::config::MediaEncryption;

/// Default time the callee has to answer (LiveKit's default too).
pub const DEFAULT_RINGING_TIMEOUT: Duration = Duration::from_secs(30);

/// A Twirp error (https://twitchtv.github.io/twirp/docs/spec_v7.html#error-codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwirpError {
    pub code: &'static str,
    pub msg: String,
    pub meta: Vec<(String, String)>,
}

impl TwirpError {
    pub fn new(code: &'static str, msg: impl Into<String>) -> TwirpError {
        TwirpError {
            code,
            msg: msg.into(),
            meta: Vec::new(),
        }
    }

    pub fn http_status(&self) -> StatusCode {
        let n = match self.code {
            "canceled" => 408,
            "invalid_argument" | "out_of_range" | "malformed" => 400,
            "deadline_exceeded" => 408,
            "not_found" | "bad_route" => 404,
            "already_exists" | "aborted" => 409,
            "permission_denied" => 403,
            "unauthenticated" => 401,
            "resource_exhausted" => 429,
            "failed_precondition" => 412,
            "unimplemented" => 501,
            "unavailable" => 503,
            _ => 500,
        };
        StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// The error of a SIP final status, as LiveKit's SIP service reports it.
    pub fn from_sip(status: u16, reason: &str) -> TwirpError {
        let reason = if reason.is_empty() {
            crate::sip::build::reason_phrase(status)
        } else {
            reason
        };
        TwirpError {
            code: sip_status_code(status),
            msg: format!("sip status {status}: {reason}"),
            meta: vec![
                ("sip_status_code".into(), status.to_string()),
                ("sip_status".into(), reason.to_string()),
            ],
        }
    }
}

impl IntoResponse for TwirpError {
    fn into_response(self) -> Response {
        let meta: serde_json::Map<String, serde_json::Value> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        let mut body = serde_json::json!({ "code": self.code, "msg": self.msg });
        if !meta.is_empty() {
            body["meta"] = serde_json::Value::Object(meta);
        }
        (
            self.http_status(),
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response()
    }
}

/// The Twirp error code for a SIP final status (the grouping LiveKit's service uses).
pub fn sip_status_code(status: u16) -> &'static str {
    match status {
        301 | 302 | 404 | 410 | 481 | 604 => "not_found",
        401 | 402 | 403 | 433 | 470 | 603 | 607 | 608 => "permission_denied",
        407 | 436 | 437 | 438 | 494 => "unauthenticated",
        408 | 504 => "deadline_exceeded",
        409 | 412 | 482 | 483 => "failed_precondition",
        480 | 486 | 600 => "resource_exhausted",
        487 | 491 => "aborted",
        500..=599 => "failed_precondition",
        _ => "invalid_argument",
    }
}

/// Whether the client sent protobuf (else JSON).
fn is_protobuf(headers: &HeaderMap) -> Option<bool> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match ct.as_str() {
        "application/protobuf" | "application/x-protobuf" => Some(true),
        "application/json" => Some(false),
        _ => None,
    }
}

fn respond<M: prost::Message + serde::Serialize>(protobuf: bool, msg: &M) -> Response {
    if protobuf {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/protobuf")],
            msg.encode_to_vec(),
        )
            .into_response()
    } else {
        match serde_json::to_value(msg).map(|v| proto_names(v).to_string()) {
            Ok(body) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response(),
            Err(e) => TwirpError::new("internal", format!("cannot encode the response: {e}"))
                .into_response(),
        }
    }
}

/// JSON with the protobuf field names (`participant_identity`), as Twirp servers answer
/// by default, rather than pbjson's lowerCamelCase (parsers accept both).
fn proto_names(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| (snake_case(&k), proto_names(v)))
                .collect(),
        ),
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(proto_names).collect())
        }
        other => other,
    }
}

fn snake_case(k: &str) -> String {
    let mut out = String::with_capacity(k.len() + 4);
    for c in k.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

fn decode<M: prost::Message + Default + serde::de::DeserializeOwned>(
    protobuf: bool,
    body: &[u8],
) -> Result<M, TwirpError> {
    if protobuf {
        M::decode(body).map_err(|e| TwirpError::new("malformed", format!("bad protobuf body: {e}")))
    } else {
        serde_json::from_slice(body)
            .map_err(|e| TwirpError::new("malformed", format!("bad JSON body: {e}")))
    }
}

/// What every call of the API goes through: a known Content-Type, the token, the body.
/// Returns whether it is protobuf (the answer is encoded the same way) and the request.
fn accept<M: prost::Message + Default + serde::de::DeserializeOwned>(
    s: &AppState,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(bool, M), TwirpError> {
    let protobuf = is_protobuf(headers).ok_or_else(|| {
        TwirpError::new(
            "bad_route",
            "Content-Type must be application/json or application/protobuf",
        )
    })?;
    authorize(s, headers)?;
    Ok((protobuf, decode(protobuf, body)?))
}

/// Checks the bearer token: valid signature and expiry, the `sip.call` grant.
fn authorize(s: &AppState, headers: &HeaderMap) -> Result<(), TwirpError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
        .ok_or_else(|| {
            TwirpError::new("unauthenticated", "missing Authorization: Bearer <token>")
        })?;
    let cfg = s.config.borrow().clone();
    let verifier = livekit_api::access_token::TokenVerifier::with_api_key(
        &cfg.livekit.api_key,
        cfg.livekit.api_secret.expose(),
    );
    let claims = verifier
        .verify(token.trim())
        .map_err(|e| TwirpError::new("unauthenticated", format!("invalid token: {e}")))?;
    if !claims.sip.call {
        return Err(TwirpError::new(
            "permission_denied",
            "the token lacks the sip.call grant",
        ));
    }
    Ok(())
}

fn duration(d: Option<(i64, i32)>) -> Result<Option<Duration>, TwirpError> {
    match d {
        None => Ok(None),
        Some((s, n)) if s < 0 || n < 0 => Err(TwirpError::new(
            "invalid_argument",
            "durations must not be negative",
        )),
        Some((s, n)) => Ok(Some(Duration::new(s as u64, n as u32))),
    }
}

/// Headers a request may not set: the ones that make the INVITE what it is.
const RESERVED_HEADERS: &[&str] = &[
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "max-forwards",
    "content-length",
    "content-type",
    "route",
    "record-route",
    "authorization",
    "proxy-authorization",
];

fn check_headers(h: &HashMap<String, String>) -> Result<Vec<(String, String)>, TwirpError> {
    use crate::call::attributes::{MAX_REQUEST_HEADERS, MAX_VALUE_LEN};
    if h.len() > MAX_REQUEST_HEADERS {
        return Err(TwirpError::new(
            "invalid_argument",
            format!(
                "headers: {} headers, at most {MAX_REQUEST_HEADERS} may be set",
                h.len()
            ),
        ));
    }
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in h {
        let token = !k.is_empty()
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c));
        if !token {
            return Err(TwirpError::new(
                "invalid_argument",
                format!("header name {k:?} is not a SIP token"),
            ));
        }
        if RESERVED_HEADERS.contains(&k.to_ascii_lowercase().as_str()) {
            return Err(TwirpError::new(
                "invalid_argument",
                format!("header {k} cannot be set by the request"),
            ));
        }
        if v.contains(['\r', '\n']) {
            return Err(TwirpError::new(
                "invalid_argument",
                format!("header {k} has a line break in its value"),
            ));
        }
        if k.len() > 255 || v.len() > MAX_VALUE_LEN || v.chars().any(char::is_control) {
            return Err(TwirpError::new(
                "invalid_argument",
                format!(
                    "header {:.64}: names are at most 255 characters, values at most \
                     {MAX_VALUE_LEN} printable characters",
                    k
                ),
            ));
        }
        out.push((k.clone(), v.clone()));
    }
    out.sort();
    Ok(out)
}

/// A validated CreateSIPParticipant: the call to place and the SRTP policy of its phone
/// leg.
#[derive(Debug, Clone)]
pub struct ParticipantDial {
    pub call: OutboundRequest,
    /// The stricter of the trunk's `media_encryption` and the request's: an API caller may
    /// ask for more encryption than the trunk's default, never for less.
    pub media_encryption: MediaEncryption,
}

/// The SRTP policy a CreateSIPParticipant asks for: `media.encryption` when set, else the
/// deprecated top-level `media_encryption` (whose 0, DISABLE, cannot be told from unset,
/// so it asks for nothing). Unknown enum values are refused.
#[allow(deprecated)] // media_encryption is still sent by older SDKs
pub fn requested_media_encryption(
    r: &proto::CreateSipParticipantRequest,
) -> Result<Option<MediaEncryption>, TwirpError> {
    let from_enum = |v: i32, field: &str| match proto::SipMediaEncryption::try_from(v) {
        Ok(proto::SipMediaEncryption::SipMediaEncryptDisable) => Ok(MediaEncryption::Disable),
        Ok(proto::SipMediaEncryption::SipMediaEncryptAllow) => Ok(MediaEncryption::Allow),
        Ok(proto::SipMediaEncryption::SipMediaEncryptRequire) => Ok(MediaEncryption::Require),
        Err(_) => Err(TwirpError::new(
            "invalid_argument",
            format!("{field}: {v} is not a SIPMediaEncryption value"),
        )),
    };
    if let Some(e) = r.media.as_ref().and_then(|m| m.encryption) {
        return from_enum(e, "media.encryption").map(Some);
    }
    match r.media_encryption {
        0 => Ok(None),
        v => from_enum(v, "media_encryption").map(Some),
    }
}

/// Validates a CreateSIPParticipant request against the configuration.
#[allow(deprecated)] // play_ringtone is still sent by older SDKs
pub fn to_outbound(
    r: &proto::CreateSipParticipantRequest,
    cfg: &crate::config::Config,
) -> Result<ParticipantDial, TwirpError> {
    let unsupported = |field: &str, why: &str| {
        TwirpError::new(
            "invalid_argument",
            format!("{field} is not supported by Roomline: {why}"),
        )
    };
    if r.trunk.is_some() {
        return Err(unsupported(
            "trunk",
            "trunks come from trunks/*.yaml; use sip_trunk_id",
        ));
    }
    if r.sip_request_uri.is_some() || r.sip_to_header.is_some() || r.sip_from_header.is_some() {
        return Err(unsupported(
            "sip_request_uri/sip_to_header/sip_from_header",
            "use sip_call_to and sip_number",
        ));
    }
    if !r.to_user_override.is_empty() {
        return Err(unsupported("to_user_override", "not implemented"));
    }
    let include_headers = match proto::SipHeaderOptions::try_from(r.include_headers) {
        Ok(proto::SipHeaderOptions::SipNoHeaders) => None,
        Ok(proto::SipHeaderOptions::SipXHeaders) => Some(IncludeHeaders::XHeaders),
        Ok(proto::SipHeaderOptions::SipAllHeaders) => Some(IncludeHeaders::All),
        Err(_) => {
            return Err(TwirpError::new(
                "invalid_argument",
                format!(
                    "include_headers: unknown value {}; expected SIP_NO_HEADERS, SIP_X_HEADERS or SIP_ALL_HEADERS",
                    r.include_headers
                ),
            ));
        }
    };
    if r.krisp_enabled {
        return Err(unsupported("krisp_enabled", "no noise cancellation here"));
    }
    let requested = requested_media_encryption(r)?;
    if let Some(m) = &r.media
        && (m.only_listed_codecs || !m.codecs.is_empty() || m.media_timeout.is_some())
    {
        return Err(unsupported(
            "media.codecs/media.media_timeout",
            "codecs and the media timeout come from the configuration",
        ));
    }
    if r.destination.is_some() {
        return Err(unsupported(
            "destination",
            "there is one region: this daemon",
        ));
    }
    if r.sip_trunk_id.is_empty() {
        return Err(TwirpError::new(
            "invalid_argument",
            "sip_trunk_id is required (a trunk name)",
        ));
    }
    let trunk = cfg.trunk(&r.sip_trunk_id).ok_or_else(|| {
        TwirpError::new(
            "not_found",
            format!("no trunk named {:?} in the configuration", r.sip_trunk_id),
        )
    })?;
    if trunk.outbound.is_none() {
        return Err(TwirpError::new(
            "failed_precondition",
            format!("trunk {:?} has no outbound side", r.sip_trunk_id),
        ));
    }
    let call_to = r.sip_call_to.trim();
    let number_ok = !call_to.is_empty()
        && call_to.len() <= 64
        && call_to
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.*#_".contains(c));
    if !number_ok {
        return Err(TwirpError::new(
            "invalid_argument",
            "sip_call_to must be a number or SIP user (digits, +, letters, * and #)",
        ));
    }
    if r.room_name.trim().is_empty() {
        return Err(TwirpError::new("invalid_argument", "room_name is required"));
    }
    if let Some(bad) = r
        .dtmf
        .chars()
        .find(|c| !matches!(c, '0'..='9' | '*' | '#' | 'A'..='D' | 'a'..='d' | 'w' | 'W'))
    {
        return Err(TwirpError::new(
            "invalid_argument",
            format!("dtmf: {bad:?} is not a DTMF digit or 'w'"),
        ));
    }
    let ringing = duration(r.ringing_timeout.as_ref().map(|d| (d.seconds, d.nanos)))?
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_RINGING_TIMEOUT);
    let max_duration = duration(r.max_call_duration.as_ref().map(|d| (d.seconds, d.nanos)))?
        .filter(|d| !d.is_zero());
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let media_encryption =
        requested.map_or(trunk.media_encryption, |m| m.max(trunk.media_encryption));
    let call = OutboundRequest {
        trunk: r.sip_trunk_id.clone(),
        call_to: call_to.to_string(),
        from_number: opt(&r.sip_number),
        room: r.room_name.clone(),
        identity: opt(&r.participant_identity),
        name: opt(&r.participant_name),
        metadata: r.participant_metadata.clone(),
        attributes: r.participant_attributes.clone(),
        dtmf: r.dtmf.clone(),
        play_dialtone: r.play_dialtone || r.play_ringtone,
        wait_until_answered: r.wait_until_answered,
        ringing_timeout: ringing,
        max_call_duration: max_duration,
        headers: check_headers(&r.headers)?,
        display_name: r.display_name.clone(),
        include_headers,
        hide_phone_number: r.hide_phone_number,
        media_encryption: requested,
    };
    Ok(ParticipantDial {
        call,
        media_encryption,
    })
}

/// The Twirp error for a failed dial.
pub fn dial_error(e: &DialError) -> TwirpError {
    match e {
        DialError::Sip { status, reason } => TwirpError::from_sip(*status, reason),
        DialError::NoAnswer => TwirpError::from_sip(408, "no answer"),
        DialError::LiveKit(m) => {
            TwirpError::new("unavailable", format!("cannot join the room: {m}"))
        }
        DialError::NoPorts => TwirpError::new("resource_exhausted", "no RTP ports free"),
        DialError::Unreachable(m) => {
            let mut t = TwirpError::from_sip(503, "trunk unreachable");
            t.msg = format!("trunk unreachable: {m}");
            t
        }
        DialError::Ended(m) => TwirpError::new("aborted", m.clone()),
    }
}

/// The Twirp error of a failed transfer, as LiveKit's SIP service reports it: the status
/// that refused it (the REFER's answer or the target's, from the sipfrag) in
/// `sip_status_code`/`sip_status`, LiveKit's SIPTransferReason in `sip_transfer_reason`.
pub fn transfer_error(f: &Failure) -> TwirpError {
    let mut e = match (&f.sip, f.reason) {
        (Some((status, reason)), _) => TwirpError::from_sip(*status, reason),
        (None, FailReason::Timeout) => TwirpError::new("deadline_exceeded", ""),
        (None, _) => TwirpError::new("failed_precondition", ""),
    };
    e.msg = f.message.clone();
    let reason = match f.reason {
        FailReason::Rejected => Some(proto::SipTransferReason::StrRejected),
        FailReason::Timeout => Some(proto::SipTransferReason::StrRingingTimeout),
        FailReason::SubscriptionTerminated => {
            Some(proto::SipTransferReason::StrSubscriptionTerminated)
        }
        FailReason::Other => None,
    };
    if let Some(r) = reason {
        e.meta
            .push(("sip_transfer_reason".into(), r.as_str_name().into()));
    }
    e
}

pub async fn create_sip_participant(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (protobuf, req): (bool, proto::CreateSipParticipantRequest) =
        match accept(&s, &headers, &body) {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
    if *s.draining.borrow() {
        return TwirpError::new("unavailable", "draining: not placing new calls").into_response();
    }
    let cfg = s.config.borrow().clone();
    let dial = match to_outbound(&req, &cfg) {
        Ok(o) => o,
        Err(e) => return e.into_response(),
    };
    let out = dial.call;
    let Some(calls) = s.calls.clone() else {
        return TwirpError::new("unavailable", "calls are not running").into_response();
    };
    match calls.dial(cfg, out).await {
        Ok(started) => respond(
            protobuf,
            &proto::SipParticipantInfo {
                participant_id: started.participant_sid,
                participant_identity: started.identity,
                room_name: started.room,
                sip_call_id: started.call_id,
            },
        ),
        Err(e) => dial_error(&e).into_response(),
    }
}

pub async fn transfer_sip_participant(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (protobuf, req): (bool, proto::TransferSipParticipantRequest) =
        match accept(&s, &headers, &body) {
            Ok(x) => x,
            Err(e) => return e.into_response(),
        };
    if req.transfer_to.trim().is_empty() {
        return TwirpError::new("invalid_argument", "transfer_to is required").into_response();
    }
    let headers = match check_headers(&req.headers) {
        Ok(h) => h,
        Err(e) => return e.into_response(),
    };
    let Some(calls) = s.calls.clone() else {
        return TwirpError::new("unavailable", "calls are not running").into_response();
    };
    let Some(ctl) = calls.find(&req.room_name, &req.participant_identity).await else {
        return TwirpError::new(
            "not_found",
            format!(
                "no call for participant {:?} in room {:?}",
                req.participant_identity, req.room_name
            ),
        )
        .into_response();
    };
    let (reply, rx) = tokio::sync::oneshot::channel();
    let to = req.transfer_to.trim().to_string();
    if ctl
        .send(CallControl::Transfer { to, headers, reply })
        .await
        .is_err()
    {
        return TwirpError::new("not_found", "the call ended").into_response();
    }
    match rx.await {
        // an empty response reads as STS_TRANSFER_ONGOING: say it completed
        Ok(Ok(())) => respond(
            protobuf,
            &proto::TransferSipParticipantResponse {
                status: proto::SipTransferStatus::StsTransferSuccessful as i32,
                reason: proto::SipTransferReason::StrCompleted as i32,
                ..Default::default()
            },
        ),
        Ok(Err(f)) => transfer_error(&f).into_response(),
        Err(_) => {
            let mut e = TwirpError::new("aborted", "the call ended during the transfer");
            e.meta.push((
                "sip_transfer_reason".into(),
                proto::SipTransferReason::StrCallEnded.as_str_name().into(),
            ));
            e.into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twirp_json_uses_proto_field_names() {
        let v = serde_json::to_value(proto::SipParticipantInfo {
            participant_id: "PA_1".into(),
            participant_identity: "sip_1".into(),
            room_name: "r".into(),
            sip_call_id: "c".into(),
        })
        .unwrap();
        let v = proto_names(v);
        assert_eq!(v["participant_identity"], "sip_1");
        assert_eq!(v["sip_call_id"], "c");
        assert!(v.get("participantIdentity").is_none());
    }

    #[test]
    fn twirp_codes_follow_livekit() {
        assert_eq!(sip_status_code(486), "resource_exhausted");
        assert_eq!(sip_status_code(480), "resource_exhausted");
        assert_eq!(sip_status_code(404), "not_found");
        assert_eq!(sip_status_code(403), "permission_denied");
        assert_eq!(sip_status_code(408), "deadline_exceeded");
        assert_eq!(sip_status_code(487), "aborted");
        assert_eq!(sip_status_code(503), "failed_precondition");
        assert_eq!(sip_status_code(603), "permission_denied");
        assert_eq!(sip_status_code(488), "invalid_argument");
        let e = TwirpError::from_sip(486, "Busy Here");
        assert_eq!(e.http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(e.meta.contains(&("sip_status_code".into(), "486".into())));
        assert_eq!(e.msg, "sip status 486: Busy Here");
    }

    #[test]
    fn twirp_transfer_errors_carry_the_sip_status_and_reason() {
        let f = Failure {
            message: "the transfer target answered 486 Busy Here".into(),
            reason: FailReason::Rejected,
            sip: Some((486, "Busy Here".into())),
        };
        let e = transfer_error(&f);
        assert_eq!(e.code, "resource_exhausted");
        assert_eq!(e.msg, f.message);
        assert!(e.meta.contains(&("sip_status_code".into(), "486".into())));
        assert!(e.meta.contains(&("sip_status".into(), "Busy Here".into())));
        assert!(
            e.meta
                .contains(&("sip_transfer_reason".into(), "STR_REJECTED".into()))
        );
        let e = transfer_error(&Failure::from("the call is not up"));
        assert_eq!(e.code, "failed_precondition");
        assert!(e.meta.is_empty());
    }

    #[test]
    fn twirp_request_validation() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("roomline.yaml");
        let cfg = crate::config::load_with_env(&path, &|_| None).unwrap();
        let mut r = proto::CreateSipParticipantRequest {
            sip_trunk_id: "carrier".into(),
            sip_call_to: "+15551234567".into(),
            room_name: "r".into(),
            dtmf: "12w#".into(),
            ..Default::default()
        };
        let o = to_outbound(&r, &cfg).unwrap();
        assert_eq!(o.call.ringing_timeout, DEFAULT_RINGING_TIMEOUT);
        assert_eq!(o.call.dtmf, "12w#");
        assert_eq!(o.media_encryption, MediaEncryption::Disable);
        r.krisp_enabled = true;
        let e = to_outbound(&r, &cfg).unwrap_err();
        assert!(e.msg.contains("krisp_enabled"), "{e:?}");
        r.krisp_enabled = false;
        r.sip_trunk_id = "nope".into();
        assert_eq!(to_outbound(&r, &cfg).unwrap_err().code, "not_found");
        r.sip_trunk_id = "office-pbx".into();
        assert_eq!(
            to_outbound(&r, &cfg).unwrap_err().code,
            "failed_precondition"
        );
        r.sip_trunk_id = "carrier".into();
        r.headers.insert("Via".into(), "x".into());
        assert!(to_outbound(&r, &cfg).unwrap_err().msg.contains("Via"));
        r.headers.clear();
        r.headers.insert("X-Bad".into(), "a\r\nb".into());
        assert!(to_outbound(&r, &cfg).is_err());
        r.headers.clear();
        r.dtmf = "12x".into();
        assert!(to_outbound(&r, &cfg).is_err());
        r.dtmf.clear();
        // LiveKit's header options are accepted; the number of headers is bounded
        r.include_headers = proto::SipHeaderOptions::SipXHeaders as i32;
        r.hide_phone_number = true;
        let o = to_outbound(&r, &cfg).unwrap();
        assert_eq!(o.call.include_headers, Some(IncludeHeaders::XHeaders));
        assert!(o.call.hide_phone_number);
        r.include_headers = 7;
        let e = to_outbound(&r, &cfg).unwrap_err();
        assert!(e.msg.contains("include_headers"), "{e:?}");
        r.include_headers = 0;
        for i in 0..100 {
            r.headers.insert(format!("X-H{i}"), "v".into());
        }
        let e = to_outbound(&r, &cfg).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.msg.contains("100 headers, at most 32"), "{e:?}");
        r.headers.clear();
        r.headers.insert("X-Big".into(), "v".repeat(1025));
        assert!(to_outbound(&r, &cfg).unwrap_err().msg.contains("X-Big"));
        r.headers.insert("X-Big".into(), "v".repeat(1024));
        assert_eq!(to_outbound(&r, &cfg).unwrap().call.headers.len(), 1);
    }

    #[test]
    #[allow(deprecated)]
    fn media_encryption_is_accepted_and_never_weakens_the_trunk() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("roomline.yaml");
        let mut cfg = crate::config::load_with_env(&path, &|_| None).unwrap();
        let mut r = proto::CreateSipParticipantRequest {
            sip_trunk_id: "carrier".into(),
            sip_call_to: "+15551234567".into(),
            room_name: "r".into(),
            ..Default::default()
        };
        let enc = |r: &proto::CreateSipParticipantRequest, cfg: &crate::config::Config| {
            to_outbound(r, cfg).map(|d| d.media_encryption)
        };
        // the deprecated top-level field
        r.media_encryption = proto::SipMediaEncryption::SipMediaEncryptRequire as i32;
        assert_eq!(enc(&r, &cfg).unwrap(), MediaEncryption::Require);
        r.media_encryption = proto::SipMediaEncryption::SipMediaEncryptAllow as i32;
        assert_eq!(enc(&r, &cfg).unwrap(), MediaEncryption::Allow);
        r.media_encryption = 7;
        let e = to_outbound(&r, &cfg).unwrap_err();
        assert_eq!(e.code, "invalid_argument");
        assert!(e.msg.contains("media_encryption: 7"), "{e:?}");
        // media.encryption wins over it
        r.media = Some(proto::SipMediaConfig {
            encryption: Some(proto::SipMediaEncryption::SipMediaEncryptRequire as i32),
            ..Default::default()
        });
        assert_eq!(enc(&r, &cfg).unwrap(), MediaEncryption::Require);
        // codecs in media are still refused by name
        r.media.as_mut().unwrap().only_listed_codecs = true;
        assert!(
            to_outbound(&r, &cfg)
                .unwrap_err()
                .msg
                .contains("media.codecs")
        );
        // a trunk that requires SRTP cannot be talked down by the API
        let i = cfg.trunks.iter().position(|t| t.name == "carrier").unwrap();
        cfg.trunks[i].media_encryption = MediaEncryption::Require;
        r.media = Some(proto::SipMediaConfig {
            encryption: Some(proto::SipMediaEncryption::SipMediaEncryptDisable as i32),
            ..Default::default()
        });
        assert_eq!(enc(&r, &cfg).unwrap(), MediaEncryption::Require);
        r.media = None;
        r.media_encryption = 0;
        assert_eq!(enc(&r, &cfg).unwrap(), MediaEncryption::Require);
    }
}
