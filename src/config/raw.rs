//! Raw configuration as it appears in the YAML files: the only module that derives
//! `Deserialize`. Values that need checking beyond their YAML type are kept as
//! `Spanned<String>` so validation can point at the exact line and column.

use serde::Deserialize;
use serde_saphyr::Spanned;
use std::collections::BTreeMap;

pub type S<T> = Spanned<T>;

/// `roomline.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Daemon {
    pub livekit: Option<S<LiveKit>>,
    pub sip: Option<S<Sip>>,
    pub rtp: Option<S<Rtp>>,
    pub http: Option<S<Http>>,
    pub limits: Option<S<Limits>>,
    pub logging: Option<S<Logging>>,
    pub trunks_dir: Option<S<String>>,
    pub dialplans_dir: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiveKit {
    pub url: Option<S<String>>,
    pub api_key: Option<S<String>>,
    pub api_secret: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sip {
    pub listeners: Option<S<Vec<S<Listener>>>>,
    pub public_ip: Option<S<String>>,
    pub user_agent: Option<S<String>>,
    pub unmatched_inbound: Option<S<String>>,
    pub auth_nonce_ttl: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub transport: S<String>,
    pub address: S<String>,
    pub cert: Option<S<String>>,
    pub key: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rtp {
    pub port_range: Option<S<String>>,
    pub public_ip: Option<S<String>>,
    pub media_timeout: Option<S<String>>,
    pub media_timeout_initial: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    pub listen: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_concurrent_calls: Option<S<u32>>,
    pub max_calls_per_second: Option<S<u32>>,
    pub drain_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logging {
    pub level: Option<S<String>>,
    pub format: Option<S<String>>,
}

/// `trunks/<name>.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trunk {
    pub name: Option<S<String>>,
    pub inbound: Option<S<Inbound>>,
    pub outbound: Option<S<Outbound>>,
    pub backup: Option<S<String>>,
    pub session_timers: Option<S<SessionTimers>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionTimers {
    pub enabled: Option<S<bool>>,
    pub expires: Option<S<String>>,
    pub min_se: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inbound {
    #[serde(default)]
    pub numbers: Vec<S<String>>,
    #[serde(default)]
    pub allowed_addresses: Vec<S<String>>,
    #[serde(default)]
    pub allowed_numbers: Vec<S<String>>,
    pub auth: Option<S<Auth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outbound {
    pub address: S<String>,
    pub transport: Option<S<String>>,
    pub from_number: Option<S<String>>,
    pub auth: Option<S<Auth>>,
    #[serde(default)]
    pub headers: BTreeMap<String, S<String>>,
    pub register: Option<S<Register>>,
    pub options_interval: Option<S<String>>,
    pub early_media: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub username: S<String>,
    pub password: Option<S<String>>,
    pub password_env: Option<S<String>>,
    pub algorithms: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Register {
    pub expires: Option<S<String>>,
    pub user: Option<S<String>>,
}

/// `dialplans/<name>.yaml`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dialplan {
    pub rules: Vec<S<Rule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub name: S<String>,
    #[serde(rename = "match")]
    pub matcher: Option<S<Match>>,
    pub room: Option<S<String>>,
    pub reject: Option<S<Reject>>,
    pub pin: Option<S<String>>,
    pub participant: Option<S<Participant>>,
    #[serde(default)]
    pub agents: Vec<S<Agent>>,
    pub answer: Option<S<String>>,
    pub ringing_timeout: Option<S<String>>,
    pub early_media: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub trunks: Vec<S<String>>,
    pub called: Option<S<String>>,
    pub caller: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reject {
    pub status: S<u16>,
    pub reason: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Participant {
    pub identity: Option<S<String>>,
    pub name: Option<S<String>>,
    pub metadata: Option<S<String>>,
    #[serde(default)]
    pub attributes: BTreeMap<String, S<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: S<String>,
    pub metadata: Option<S<String>>,
}
