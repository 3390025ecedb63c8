//! Every default value of the configuration, in one place. The README's configuration
//! reference lists the same values.

use std::time::Duration;

pub const CONFIG_PATH: &str = "/etc/roomline/roomline.yaml";
pub const TRUNKS_DIR: &str = "trunks";
pub const DIALPLANS_DIR: &str = "dialplans";
/// Where `state_dir` comes from when the file does not set it: systemd's
/// `StateDirectory=roomline` sets this variable (to /var/lib/roomline).
pub const STATE_DIRECTORY_ENV: &str = "STATE_DIRECTORY";

pub const SIP_LISTENERS: &[(&str, &str)] = &[("udp", "0.0.0.0:5060"), ("tcp", "0.0.0.0:5060")];
pub const SIP_USER_AGENT: &str = concat!("Roomline/", env!("CARGO_PKG_VERSION"));
pub const UNMATCHED_INBOUND: &str = "reject";
/// Digest algorithms an inbound trunk is challenged with, preferred first (RFC 8760).
pub const AUTH_ALGORITHMS: &[&str] = &["sha-256", "md5"];
/// The realm of our digest challenges.
pub const SIP_REALM: &str = "roomline";
/// The flood limit: INVITE/OPTIONS/REGISTER per source address (token bucket).
pub const SOURCE_REQUESTS_PER_SECOND: u32 = 100;
pub const SOURCE_REQUESTS_BURST: u32 = 200;
/// How long a digest nonce we issue stays good (`sip.auth_nonce_ttl`).
pub const AUTH_NONCE_TTL: Duration = Duration::from_secs(300);

pub const RTP_PORT_RANGE: &str = "10000-20000";
pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(15);
pub const MEDIA_TIMEOUT_INITIAL: Duration = Duration::from_secs(30);

pub const HTTP_LISTEN: &str = "127.0.0.1:8080";

pub const MAX_CONCURRENT_CALLS: u32 = 1000;
pub const MAX_CALLS_PER_SECOND: u32 = 50;
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

pub const LOG_LEVEL: &str = "info";
pub const LOG_FORMAT: &str = "human";

pub const REGISTER_EXPIRES: Duration = Duration::from_secs(3600);
/// RFC 4028 session timers on a trunk's calls: on, asking for 30 minutes (the RFC's
/// recommendation), accepting down to the RFC's minimum of 90 s.
pub const SESSION_TIMERS_ENABLED: bool = true;
pub const SESSION_EXPIRES: Duration = Duration::from_secs(1800);
pub const SESSION_MIN_SE: Duration = Duration::from_secs(90);
pub const OUTBOUND_EARLY_MEDIA: bool = true;
/// SRTP on a trunk's calls (`media_encryption`), LiveKit's default.
pub const MEDIA_ENCRYPTION: &str = "disable";

pub const RULE_IDENTITY: &str = "sip_{caller}";
pub const RULE_NAME: &str = "Phone {caller}";
pub const RULE_ANSWER: &str = "on_join";
pub const RULE_RINGING_TIMEOUT: Duration = Duration::from_secs(30);
pub const RULE_EARLY_MEDIA: bool = false;
