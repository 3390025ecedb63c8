//! Configuration: `roomline.yaml`, `trunks/*.yaml` and `dialplans/*.yaml`, parsed strictly
//! (`raw`), validated into the domain types below (`validate`), loaded from disk with
//! environment overrides (`loader`). A `Config` is an immutable, fully validated snapshot.

pub mod defaults;
pub mod error;
mod loader;
pub mod raw;
pub mod types;
mod validate;

pub use error::{ConfigError, ConfigErrors, Origin};
pub use loader::{load, load_with_env};
pub use types::{
    IncludeHeaders, MediaEncryption, NumberPattern, PortRange, Secret, SipTarget, Template,
    TemplateValues, TemplateVar, Transport,
};

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// A validated configuration snapshot.
#[derive(Debug, Clone)]
pub struct Config {
    pub livekit: LiveKitConfig,
    pub sip: SipConfig,
    pub rtp: RtpConfig,
    pub http: HttpConfig,
    pub limits: LimitsConfig,
    pub logging: LoggingConfig,
    /// Trunks sorted by name.
    pub trunks: Vec<Trunk>,
    /// Dialplan rules in match order: files by name, rules in file order.
    pub rules: Vec<Rule>,
    pub files: SourceFiles,
    /// What is valid but probably not meant (e.g. SRTP keys in cleartext SDP), located like
    /// errors; `roomline check` prints them, the daemon logs them at each load.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    pub fn trunk(&self, name: &str) -> Option<&Trunk> {
        self.trunks.iter().find(|t| t.name == name)
    }
}

/// The files a snapshot was read from.
#[derive(Debug, Clone)]
pub struct SourceFiles {
    pub config: PathBuf,
    pub trunks_dir: PathBuf,
    pub dialplans_dir: PathBuf,
    /// Where the journal of active calls lives (`state_dir`, else systemd's
    /// `STATE_DIRECTORY`); None: no journal.
    pub state_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LiveKitConfig {
    /// `ws://`, `wss://`, `http://` or `https://` URL of the LiveKit server.
    pub url: String,
    pub api_key: String,
    pub api_secret: Secret,
}

#[derive(Debug, Clone)]
pub struct SipConfig {
    pub listeners: Vec<Listener>,
    /// Address written in Contact and SDP when behind 1:1 NAT.
    pub public_ip: Option<IpAddr>,
    pub user_agent: String,
    pub unmatched_inbound: UnmatchedInbound,
    /// How long a digest nonce we issue stays good (`sip.auth_nonce_ttl`); an answer
    /// to an older one gets a new challenge with `stale=true`. Whole seconds.
    pub auth_nonce_ttl: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub transport: Transport,
    pub address: SocketAddr,
    pub tls: Option<TlsFiles>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Mutual TLS: clients must present a certificate signed by a CA in this PEM file.
    pub client_ca: Option<PathBuf>,
}

/// What to do with an INVITE that matches no trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnmatchedInbound {
    /// Answer 403 Forbidden.
    Reject,
    /// Send nothing (scanners learn less).
    Drop,
}

#[derive(Debug, Clone)]
pub struct RtpConfig {
    pub ports: PortRange,
    pub public_ip: Option<IpAddr>,
    pub media_timeout: Duration,
    pub media_timeout_initial: Duration,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct LimitsConfig {
    pub max_concurrent_calls: u32,
    pub max_calls_per_second: u32,
    /// Admitted calls per second from one source address: at most `max_calls_per_second`
    /// (its default).
    pub max_calls_per_second_per_source: u32,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// A tracing filter: a level (`info`) or directives (`info,roomline::sip=debug`).
    pub level: String,
    pub format: LogFormat,
}

/// Digest credentials.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
    /// Digest algorithms we challenge with, in preference order (inbound only).
    pub algorithms: Vec<DigestAlgorithm>,
}

/// Digest algorithms (RFC 7616, RFC 8760).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    Md5,
    Sha256,
}

/// One trunk: a carrier connection, inbound and/or outbound.
#[derive(Debug, Clone)]
pub struct Trunk {
    pub name: String,
    pub file: PathBuf,
    pub inbound: Option<InboundTrunk>,
    pub outbound: Option<OutboundTrunk>,
    /// Name of the trunk to fail over to.
    pub backup: Option<String>,
    /// SRTP policy of this trunk's calls, both directions.
    pub media_encryption: MediaEncryption,
    /// RFC 4028 session timers on this trunk's calls, both directions.
    pub session_timers: SessionTimers,
}

/// Session timers (RFC 4028) of a trunk's calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimers {
    /// Off: no `Supported: timer`, no timer run, `Require: timer` refused with 420.
    pub enabled: bool,
    /// The interval we ask for (Session-Expires) and the most we grant a peer.
    pub expires: Duration,
    /// The smallest interval we accept (Min-SE; a smaller one gets 422).
    pub min_se: Duration,
}

impl Default for SessionTimers {
    fn default() -> Self {
        SessionTimers {
            enabled: defaults::SESSION_TIMERS_ENABLED,
            expires: defaults::SESSION_EXPIRES,
            min_se: defaults::SESSION_MIN_SE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InboundTrunk {
    /// Numbers this trunk delivers, as written (compare with `types::normalize_number`).
    /// Empty: any number.
    pub numbers: Vec<String>,
    /// Source addresses allowed to send calls. Empty: any address.
    pub allowed_addresses: Vec<IpNet>,
    /// Caller numbers allowed. Empty: any caller.
    pub allowed_numbers: Vec<NumberPattern>,
    /// Digest credentials callers must present.
    pub auth: Option<Credentials>,
    /// INVITE headers to attributes; attributes to the 200 OK's headers.
    pub mapping: HeaderMapping,
}

/// LiveKit's header options of a trunk side: which headers of the INVITE (inbound) or
/// the 200 OK (outbound) become attributes, and which attributes become headers.
#[derive(Debug, Clone, Default)]
pub struct HeaderMapping {
    pub include: IncludeHeaders,
    /// Header name -> attribute name (`headers_to_attributes`), sorted by header.
    pub to_attributes: Vec<(String, String)>,
    /// Attribute name -> header name (`attributes_to_headers`), sorted by attribute.
    pub attributes_to_headers: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct OutboundTrunk {
    pub target: SipTarget,
    pub transport: Transport,
    pub from_number: Option<String>,
    pub auth: Option<Credentials>,
    /// Extra headers on outbound INVITEs, by name.
    pub headers: Vec<(String, String)>,
    pub register: Option<RegisterConfig>,
    /// How often to send OPTIONS pings (trunk health, failover); None: no pings.
    pub options_interval: Option<Duration>,
    /// Forward early media (a 183's audio: ringback, announcements) to the room.
    pub early_media: bool,
    /// 200 OK headers to attributes; attributes to the INVITE's headers.
    pub mapping: HeaderMapping,
    /// CAs that sign the carrier's certificate (TLS); None: the system's roots.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct RegisterConfig {
    pub expires: Duration,
    /// The user of the address-of-record (default: the auth username, else from_number).
    pub user: Option<String>,
}

/// One dialplan rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub file: PathBuf,
    /// Trunks this rule applies to. Empty: any trunk.
    pub trunks: Vec<String>,
    pub called: Option<NumberPattern>,
    pub caller: Option<NumberPattern>,
    pub action: RuleAction,
}

#[derive(Debug, Clone)]
pub enum RuleAction {
    Join(Box<JoinRoom>),
    Reject { status: u16, reason: Option<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerMode {
    /// 200 OK once the participant has joined the room.
    OnJoin,
    /// 200 OK once the first remote audio track is subscribed.
    OnFirstTrack,
}

#[derive(Debug, Clone)]
pub struct JoinRoom {
    pub room: Template,
    pub pin: Option<String>,
    pub identity: Template,
    pub name: Template,
    pub metadata: Option<String>,
    pub attributes: Vec<(String, Template)>,
    pub agents: Vec<AgentDispatch>,
    pub answer: AnswerMode,
    pub ringing_timeout: Duration,
    pub early_media: bool,
    /// Keep the caller's number out of the room (LiveKit's `hide_phone_number`).
    pub hide_phone_number: bool,
}

#[derive(Debug, Clone)]
pub struct AgentDispatch {
    pub name: String,
    pub metadata: Option<String>,
}
