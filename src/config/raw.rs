//! Raw configuration as it appears in the YAML files: the only module that derives
//! `Deserialize`. Values that need checking beyond their YAML type are kept as
//! `Spanned<String>` so validation can point at the exact line and column.

use serde::Deserialize;
pub use serde_saphyr::Spanned;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A file that parsed into raw type `T`, with its path for error locations.
pub struct Parsed<T> {
    pub file: PathBuf,
    pub value: T,
}

/// `roomline.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemon {
    pub livekit: Option<Spanned<LiveKit>>,
    pub sip: Option<Spanned<Sip>>,
    pub rtp: Option<Spanned<Rtp>>,
    pub http: Option<Spanned<Http>>,
    pub limits: Option<Spanned<Limits>>,
    pub logging: Option<Spanned<Logging>>,
    pub trunks_dir: Option<Spanned<String>>,
    pub state_dir: Option<Spanned<String>>,
    pub dialplans_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveKit {
    pub url: Option<Spanned<String>>,
    pub api_key: Option<Spanned<String>>,
    pub api_secret: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sip {
    pub listeners: Option<Spanned<Vec<Spanned<Listener>>>>,
    pub public_ip: Option<Spanned<String>>,
    pub user_agent: Option<Spanned<String>>,
    pub unmatched_inbound: Option<Spanned<String>>,
    pub auth_nonce_ttl: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub transport: Spanned<String>,
    pub address: Spanned<String>,
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// PEM file of the CAs whose client certificates a TLS listener accepts (mutual TLS).
    pub client_ca: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rtp {
    pub port_range: Option<Spanned<String>>,
    pub public_ip: Option<Spanned<String>>,
    pub media_timeout: Option<Spanned<String>>,
    pub media_timeout_initial: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_concurrent_calls: Option<Spanned<u32>>,
    pub max_calls_per_second: Option<Spanned<u32>>,
    pub max_calls_per_second_per_source: Option<Spanned<u32>>,
    pub drain_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    pub level: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
}

/// `trunks/<name>.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trunk {
    pub name: Option<Spanned<String>>,
    pub inbound: Option<Spanned<Inbound>>,
    pub outbound: Option<Spanned<Outbound>>,
    pub backup: Option<Spanned<String>>,
    pub media_encryption: Option<Spanned<String>>,
    pub session_timers: Option<Spanned<SessionTimers>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionTimers {
    pub enabled: Option<Spanned<bool>>,
    pub expires: Option<Spanned<String>>,
    pub min_se: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    #[serde(default)]
    pub numbers: Vec<Spanned<String>>,
    #[serde(default)]
    pub allowed_addresses: Vec<Spanned<String>>,
    #[serde(default)]
    pub allowed_numbers: Vec<Spanned<String>>,
    pub auth: Option<Spanned<Auth>>,
    pub include_headers: Option<Spanned<String>>,
    #[serde(default)]
    pub headers_to_attributes: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub attributes_to_headers: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    pub address: Spanned<String>,
    pub transport: Option<Spanned<String>>,
    pub from_number: Option<Spanned<String>>,
    pub auth: Option<Spanned<Auth>>,
    #[serde(default)]
    pub headers: BTreeMap<String, Spanned<String>>,
    pub register: Option<Spanned<Register>>,
    pub options_interval: Option<Spanned<String>>,
    pub early_media: Option<Spanned<bool>>,
    pub include_headers: Option<Spanned<String>>,
    #[serde(default)]
    pub headers_to_attributes: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub attributes_to_headers: BTreeMap<String, Spanned<String>>,
    /// PEM file of the CAs that sign the carrier's TLS certificate (default: system roots).
    pub ca_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub username: Spanned<String>,
    pub password: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub expires: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
}

/// `dialplans/<name>.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialplan {
    pub rules: Vec<Spanned<Rule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<Match>>,
    pub room: Option<Spanned<String>>,
    pub reject: Option<Spanned<Reject>>,
    pub pin: Option<Spanned<String>>,
    pub participant: Option<Spanned<Participant>>,
    #[serde(default)]
    pub agents: Vec<Spanned<Agent>>,
    pub answer: Option<Spanned<String>>,
    pub ringing_timeout: Option<Spanned<String>>,
    pub early_media: Option<Spanned<bool>>,
    pub hide_phone_number: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub trunks: Vec<Spanned<String>>,
    pub called: Option<Spanned<String>>,
    pub caller: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    pub status: Spanned<u16>,
    pub reason: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    pub identity: Option<Spanned<String>>,
    pub name: Option<Spanned<String>>,
    pub metadata: Option<Spanned<String>>,
    #[serde(default)]
    pub attributes: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: Spanned<String>,
    pub metadata: Option<Spanned<String>>,
}
