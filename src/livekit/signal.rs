//! LiveKit signalling over WebSocket: URL and token, the handshake (with the reason from
//! `/rtc/validate` when it fails), and protobuf framing of SignalRequest/SignalResponse.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use livekit_api::access_token::{AccessToken, VideoGrants};
use livekit_protocol as proto;
use prost::Message as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest, http};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::JoinOptions;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Signalling protocol version we speak (reference section 1).
pub(crate) const PROTOCOL_VERSION: u32 = 16;
/// tungstenite's read buffer: signalling messages are small and rare.
const WS_READ_BUFFER: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("invalid join options: {0}")]
    Invalid(String),
    #[error("cannot reach LiveKit at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The server refused the WebSocket handshake; `reason` is what `/rtc/validate` (or
    /// the refusal itself) said, e.g. "invalid token: ... signature is invalid".
    #[error("LiveKit refused the join (HTTP {status}): {reason}")]
    Rejected { status: u16, reason: String },
    /// The server answered the join with a LeaveRequest.
    #[error("LiveKit sent leave instead of join: {reason}")]
    LeftImmediately { reason: String },
    #[error("signalling failed during join: {0}")]
    Signal(String),
    #[error("no UDP socket for media: {0}")]
    Socket(String),
    #[error("WebRTC setup failed: {0}")]
    Rtc(String),
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

/// Mints the participant's access token (reference section 2).
pub(crate) fn mint_token(opts: &JoinOptions) -> Result<String, JoinError> {
    if opts.identity.trim().is_empty() {
        return Err(JoinError::Invalid("identity must not be empty".into()));
    }
    if opts.room.trim().is_empty() {
        return Err(JoinError::Invalid("room must not be empty".into()));
    }
    let grants = VideoGrants {
        room_join: true,
        room: opts.room.clone(),
        can_publish: Some(true),
        can_subscribe: Some(true),
        can_publish_data: Some(true),
        can_update_own_metadata: Some(true),
        ..Default::default()
    };
    let mut token = AccessToken::with_api_key(&opts.api_key, &opts.api_secret)
        .with_identity(&opts.identity)
        .with_name(&opts.name)
        .with_kind(opts.kind.claim())
        .with_ttl(opts.token_ttl)
        .with_grants(grants);
    if !opts.metadata.is_empty() {
        token = token.with_metadata(&opts.metadata);
    }
    if !opts.attributes.is_empty() {
        token = token.with_attributes(opts.attributes.clone());
    }
    if !opts.agents.is_empty() {
        token = token.with_room_config(proto::RoomConfiguration {
            agents: opts
                .agents
                .iter()
                .map(|(name, metadata)| proto::RoomAgentDispatch {
                    agent_name: name.clone(),
                    metadata: metadata.clone().unwrap_or_default(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
    token
        .to_jwt()
        .map_err(|e| JoinError::Invalid(format!("cannot sign token: {e}")))
}

/// `ws(s)://host[:port][/base]/rtc?...` for a base URL given as ws/wss/http/https.
pub(crate) fn rtc_url(base: &str, path: &str) -> Result<String, JoinError> {
    rtc_url_with(base, path, None)
}

/// What a resume (reconnect=1) adds to the join query (reference section 3.11).
#[derive(Debug, Clone)]
pub(crate) struct Resume {
    /// Our participant sid (`PA_...`).
    pub(crate) sid: String,
    /// `ReconnectReason` value.
    pub(crate) reason: i32,
}

/// The first message of a signalling connection.
#[derive(Debug)]
pub(crate) enum First {
    Join(Box<proto::JoinResponse>),
    /// The answer to a resume.
    Reconnect(proto::ReconnectResponse),
    /// The server refused the session (or, for a resume, asks for a full reconnect).
    Leave(proto::LeaveRequest),
}

fn rtc_url_with(base: &str, path: &str, resume: Option<&Resume>) -> Result<String, JoinError> {
    let base = base.trim().trim_end_matches('/');
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| JoinError::Invalid(format!("LiveKit URL {base:?} has no scheme")))?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(JoinError::Invalid(format!(
                "LiveKit URL scheme {other:?} is not ws, wss, http or https"
            )));
        }
    };
    if rest.is_empty() {
        return Err(JoinError::Invalid(format!(
            "LiveKit URL {base:?} has no host"
        )));
    }
    let mut query = format!(
        "protocol={PROTOCOL_VERSION}&auto_subscribe=0&adaptive_stream=0&sdk=rust&version={}&os=linux&client_protocol=0",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(r) = resume {
        query.push_str(&format!(
            "&reconnect=1&sid={}&reconnect_reason={}",
            r.sid, r.reason
        ));
    }
    Ok(format!("{scheme}://{rest}{path}?{query}"))
}

/// Connects the signalling WebSocket and reads the first message (JoinResponse).
pub(crate) async fn connect(
    opts: &JoinOptions,
    token: &str,
) -> Result<(Ws, proto::JoinResponse), JoinError> {
    match connect_with(opts, token, None).await? {
        (ws, First::Join(join)) => Ok((ws, *join)),
        (_, First::Leave(leave)) => Err(JoinError::LeftImmediately {
            reason: disconnect_reason_name(leave.reason),
        }),
        (_, First::Reconnect(_)) => Err(JoinError::Signal(
            "expected JoinResponse first, got reconnect".into(),
        )),
    }
}

/// Connects the signalling WebSocket, for a join or (with `resume`) a resume, and reads
/// the first message.
pub(crate) async fn connect_with(
    opts: &JoinOptions,
    token: &str,
    resume: Option<&Resume>,
) -> Result<(Ws, First), JoinError> {
    let url = rtc_url_with(&opts.url, "/rtc", resume)?;
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| JoinError::Invalid(format!("bad LiveKit URL {url}: {e}")))?;
    request.headers_mut().insert(
        http::header::AUTHORIZATION,
        http::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| JoinError::Invalid(format!("token not usable as a header: {e}")))?,
    );
    // tungstenite zeroes its free read buffer (128 KiB by default) on every poll that
    // finds no data; the participant's loop polls the socket on every media frame, so a
    // small buffer saves a memset per frame (larger messages reserve their own length)
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER);
    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), false),
    )
    .await;
    let mut ws = match connected {
        Err(_) => {
            return Err(JoinError::Timeout(
                CONNECT_TIMEOUT,
                "the signalling handshake",
            ));
        }
        Ok(Ok((ws, _response))) => ws,
        Ok(Err(tungstenite::Error::Http(response))) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_string())
                .unwrap_or_default();
            let reason = match validate(opts, token).await {
                Some(r) if !r.is_empty() => r,
                _ if !body.is_empty() => body,
                _ => response
                    .status()
                    .canonical_reason()
                    .unwrap_or("no reason given")
                    .to_string(),
            };
            // the server echoes the token in its reason: keep it out of errors and logs
            let reason = reason.replace(token, "<token>");
            return Err(JoinError::Rejected { status, reason });
        }
        Ok(Err(e)) => {
            return Err(JoinError::Unreachable {
                url: redact_query(&url),
                detail: e.to_string(),
            });
        }
    };
    let first = tokio::time::timeout(CONNECT_TIMEOUT, recv(&mut ws))
        .await
        .map_err(|_| JoinError::Timeout(CONNECT_TIMEOUT, "the JoinResponse"))?
        .map_err(JoinError::Signal)?;
    use proto::signal_response::Message as R;
    match first {
        Some(R::Join(join)) => Ok((ws, First::Join(Box::new(join)))),
        Some(R::Reconnect(r)) if resume.is_some() => Ok((ws, First::Reconnect(r))),
        Some(R::Leave(leave)) => Ok((ws, First::Leave(leave))),
        Some(other) => Err(JoinError::Signal(format!(
            "expected {} first, got {}",
            if resume.is_some() {
                "ReconnectResponse"
            } else {
                "JoinResponse"
            },
            response_name(&other)
        ))),
        None => Err(JoinError::Signal(
            "signalling closed before the JoinResponse".into(),
        )),
    }
}

/// GET `/rtc/validate` with the same query and token: the server's reason for refusing
/// the handshake (plain text). Only over plain HTTP (ws://); over TLS the handshake's own
/// response body is used instead.
async fn validate(opts: &JoinOptions, token: &str) -> Option<String> {
    let url = rtc_url(&opts.url, "/rtc/validate").ok()?;
    let rest = url.strip_prefix("ws://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let fut = async {
        let mut stream = TcpStream::connect(&addr).await.ok()?;
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\n\
             Connection: close\r\nUser-Agent: roomline\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let chunked = head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("transfer-encoding: chunked")
        });
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_string()
        };
        Some(body.trim().to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn redact_query(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_string()
}

/// Sends one SignalRequest (binary protobuf frame).
pub(crate) async fn send<S>(ws: &mut S, msg: proto::signal_request::Message) -> Result<(), String>
where
    S: futures_util::Sink<Message, Error = tungstenite::Error> + Unpin,
{
    let req = proto::SignalRequest { message: Some(msg) };
    ws.send(Message::Binary(req.encode_to_vec().into()))
        .await
        .map_err(|e| format!("signalling send failed: {e}"))
}

/// Reads the next SignalResponse; `Ok(None)` when the socket closed. Unknown oneofs
/// decode as a response without message and are skipped.
pub(crate) async fn recv<S>(ws: &mut S) -> Result<Option<proto::signal_response::Message>, String>
where
    S: futures_util::Stream<Item = Result<Message, tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await {
            None => return Ok(None),
            Some(Err(e)) => return Err(format!("signalling read failed: {e}")),
            Some(Ok(Message::Binary(b))) => match decode(&b)? {
                Some(m) => return Ok(Some(m)),
                None => continue,
            },
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "signalling closed by server{}",
                    frame
                        .map(|f| format!(": {} {}", f.code, f.reason))
                        .unwrap_or_default()
                ));
            }
            Some(Ok(_)) => continue, // ping/pong/text
        }
    }
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Option<proto::signal_response::Message>, String> {
    proto::SignalResponse::decode(bytes)
        .map(|r| r.message)
        .map_err(|e| format!("undecodable SignalResponse: {e}"))
}

/// LiveKit's name for a DisconnectReason value.
pub(crate) fn disconnect_reason_name(reason: i32) -> String {
    proto::DisconnectReason::try_from(reason)
        .map(|r| r.as_str_name().to_string())
        .unwrap_or_else(|_| format!("REASON_{reason}"))
}

pub(crate) fn leave_action_name(action: i32) -> String {
    proto::leave_request::Action::try_from(action)
        .map(|a| a.as_str_name().to_string())
        .unwrap_or_else(|_| format!("ACTION_{action}"))
}

pub(crate) fn response_name(m: &proto::signal_response::Message) -> &'static str {
    use proto::signal_response::Message as R;
    match m {
        R::Join(_) => "join",
        R::Answer(_) => "answer",
        R::Offer(_) => "offer",
        R::Trickle(_) => "trickle",
        R::Update(_) => "update",
        R::TrackPublished(_) => "track_published",
        R::Leave(_) => "leave",
        R::Mute(_) => "mute",
        R::SpeakersChanged(_) => "speakers_changed",
        R::RoomUpdate(_) => "room_update",
        R::ConnectionQuality(_) => "connection_quality",
        R::StreamStateUpdate(_) => "stream_state_update",
        R::SubscribedQualityUpdate(_) => "subscribed_quality_update",
        R::SubscriptionPermissionUpdate(_) => "subscription_permission_update",
        R::RefreshToken(_) => "refresh_token",
        R::TrackUnpublished(_) => "track_unpublished",
        R::Pong(_) => "pong",
        R::Reconnect(_) => "reconnect",
        R::PongResp(_) => "pong_resp",
        R::SubscriptionResponse(_) => "subscription_response",
        R::RequestResponse(_) => "request_response",
        R::TrackSubscribed(_) => "track_subscribed",
        R::RoomMoved(_) => "room_moved",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtc_url_maps_schemes_and_keeps_base_path() {
        let u = rtc_url("http://127.0.0.1:7880/", "/rtc").unwrap();
        assert!(
            u.starts_with("ws://127.0.0.1:7880/rtc?protocol=16&auto_subscribe=0"),
            "{u}"
        );
        let u = rtc_url("https://lk.example.com/base", "/rtc/validate").unwrap();
        assert!(
            u.starts_with("wss://lk.example.com/base/rtc/validate?"),
            "{u}"
        );
        assert!(rtc_url("ftp://x", "/rtc").is_err());
        let resume = Resume {
            sid: "PA_abc".into(),
            reason: 1,
        };
        let u = rtc_url_with("ws://h:1", "/rtc", Some(&resume)).unwrap();
        assert!(
            u.ends_with("&reconnect=1&sid=PA_abc&reconnect_reason=1"),
            "{u}"
        );
        assert!(rtc_url("x", "/rtc").is_err());
    }

    #[test]
    fn dechunk_joins_chunks() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
    }
}
