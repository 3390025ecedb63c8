//! `roomline call`: a test phone made of Roomline's own SIP and media code. It places a
//! call (`dial`) to a SIP URI or through a configured trunk, or answers calls (`answer`,
//! `--listen`), sends a tone, a WAV file or silence, records and analyses what it hears,
//! sends DTMF, hangs up after a duration (`talk`), and reports the SIP exchange, the RTP
//! figures and the tone it heard (`report`).
//!
//! Nothing here is a second SIP stack: the phone runs the daemon's endpoint task
//! (`sip::endpoint`, with a configuration made here: one trunk, "call", that is the
//! target and, when listening, admits callers from anywhere, with digest auth if asked),
//! its calls are `call::shell::Shell`s with the shared dialog leg (`call::leg`) and media
//! leg (`call::bridge::MediaLeg`: SDP, RTP, codecs, jitter buffer, RFC 4733), and the
//! INVITE is the outbound call's (`call::outbound::attempt`). Where a daemon call has a
//! LiveKit participant, the phone has a `audio::Player` and a `audio::Recording`.

mod answer;
pub mod audio;
pub mod cli;
mod dial;
pub mod report;
mod talk;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::call::CallContext;
use crate::call::outbound::attempt::Target;
use crate::config::{
    self, AnswerMode, Config, Credentials, DigestAlgorithm, HeaderMapping, InboundTrunk, JoinRoom,
    Listener, OutboundTrunk, PortRange, Rule, RuleAction, Secret, SessionTimers, SipTarget,
    Transport, Trunk, defaults,
};
use crate::media::ports::PortPool;
use crate::sip::endpoint::{Endpoint, EndpointHandle, InboundInvite};
use crate::sip::transaction::Timers;
use crate::sip::uri::{Scheme, Uri};

pub use report::{CallReport, Verdict};

/// The trunk name the phone's endpoint configuration uses for its one trunk.
pub const PHONE_TRUNK: &str = "call";
/// The identity of the phone's own audio in its mixer (never a remote's).
const SOURCE_OWNER: &str = "\u{0}roomline-call-source";

/// What `roomline call` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub mode: Mode,
    /// The caller number (user part of From) when dialling.
    pub from: String,
    /// Digest credentials: answered when dialling, challenged with when listening.
    pub auth: Option<(String, String)>,
    /// Local address to bind (dial: port 0 picks one).
    pub bind: IpAddr,
    pub source: audio::Source,
    pub record: Option<PathBuf>,
    pub dtmf: String,
    /// How long the call lasts once answered (then we hang up).
    pub duration: Duration,
    /// Dial: how long the callee has to answer. Listen: how long to wait for a call.
    pub timeout: Duration,
    /// Listen: how long to ring before answering.
    pub answer_after: Duration,
    pub expect_tone: Option<f64>,
    pub rtp_ports: PortRange,
    /// CA file for TLS to the target (else the system's roots).
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub(crate) enum Mode {
    /// Call `number` at the target.
    Dial { target: Target, number: String },
    /// Answer `calls` calls (0: until stopped) on `address`, UDP and TCP (and TLS on
    /// `tls` if given).
    Listen {
        address: SocketAddr,
        calls: u32,
        tls: Option<(SocketAddr, config::TlsFiles)>,
    },
}

/// `--to`: a SIP URI (`sip:+15550100@host:port;transport=tcp`, `sips:` for TLS), or with
/// a trunk, a number. Returns the target and the number (user part).
pub(crate) fn parse_to(to: &str, trunk: Option<&Trunk>) -> Result<(Target, String), String> {
    if let Some(t) = trunk {
        if to.contains(':') || to.contains('@') {
            return Err(format!(
                "--to {to:?}: with --trunk, give the number only (the trunk names the host)"
            ));
        }
        let target =
            Target::of(t).ok_or_else(|| format!("trunk {:?} has no outbound side", t.name))?;
        return Ok((target, to.to_string()));
    }
    let expected = "expected a SIP URI such as sip:+15550100@127.0.0.1:5060 (or --trunk NAME)";
    let uri = Uri::parse(to).map_err(|e| format!("--to {to:?}: {e}; {expected}"))?;
    let number = uri
        .user
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| format!("--to {to:?}: no user part (the number to call); {expected}"))?;
    if uri.host.is_empty() {
        return Err(format!("--to {to:?}: no host; {expected}"));
    }
    let mut transport = if uri.scheme == Scheme::Sips {
        Transport::Tls
    } else {
        Transport::Udp
    };
    if let Some(t) = uri.transport() {
        transport = config::types::parse_transport(&t).map_err(|e| format!("--to {to:?}: {e}"))?;
    }
    if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips) {
        return Err(format!("--to {to:?}: {expected}"));
    }
    let target = Target {
        trunk: PHONE_TRUNK.into(),
        host: uri.host.clone(),
        port: uri.port.unwrap_or(transport.default_port()),
        transport,
        from_number: None,
        auth: None,
        headers: Vec::new(),
        early_media: true,
        mapping: HeaderMapping::default(),
        codecs: config::defaults::CODECS.to_vec(),
        encryption: Default::default(),
    };
    Ok((target, number))
}

/// The endpoint configuration of the phone: its listeners and its one trunk.
fn phone_config(opts: &Options, listeners: Vec<Listener>) -> Config {
    let credentials = opts.auth.as_ref().map(|(u, p)| Credentials {
        username: u.clone(),
        password: Secret::new(p.clone()),
        algorithms: vec![DigestAlgorithm::Sha256, DigestAlgorithm::Md5],
    });
    let (inbound, outbound) = match &opts.mode {
        Mode::Listen { .. } => (
            Some(InboundTrunk {
                numbers: Vec::new(),
                allowed_addresses: Vec::new(),
                allowed_numbers: Vec::new(),
                auth: credentials,
                mapping: HeaderMapping::default(),
            }),
            None,
        ),
        Mode::Dial { target, .. } => (
            None,
            Some(OutboundTrunk {
                target: SipTarget {
                    host: target.host.clone(),
                    port: Some(target.port),
                    transport: Some(target.transport),
                },
                transport: target.transport,
                from_number: Some(opts.from.clone()),
                auth: credentials,
                headers: target.headers.clone(),
                register: None,
                options_interval: None,
                early_media: true,
                mapping: target.mapping.clone(),
                ca_file: opts.ca_file.clone(),
            }),
        ),
    };
    Config {
        livekit: config::LiveKitConfig {
            url: String::new(),
            api_key: String::new(),
            api_secret: Secret::new(String::new()),
            reconnect_window: defaults::RECONNECT_WINDOW,
            hold_tone: defaults::HOLD_TONE,
        },
        sip: config::SipConfig {
            listeners,
            public_ip: None,
            user_agent: format!("roomline-call/{}", env!("CARGO_PKG_VERSION")),
            unmatched_inbound: config::UnmatchedInbound::Reject,
            auth_nonce_ttl: defaults::AUTH_NONCE_TTL,
        },
        rtp: config::RtpConfig {
            ports: opts.rtp_ports,
            public_ip: None,
            media_timeout: defaults::MEDIA_TIMEOUT,
            media_timeout_initial: defaults::MEDIA_TIMEOUT_INITIAL,
        },
        http: config::HttpConfig {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        },
        limits: config::LimitsConfig {
            max_concurrent_calls: 1,
            max_calls_per_second: defaults::MAX_CALLS_PER_SECOND,
            max_calls_per_second_per_source: defaults::MAX_CALLS_PER_SECOND,
            drain_timeout: defaults::DRAIN_TIMEOUT,
        },
        logging: config::LoggingConfig {
            level: "warn".into(),
            format: config::LogFormat::Human,
        },
        trunks: vec![Trunk {
            name: PHONE_TRUNK.into(),
            file: PathBuf::new(),
            inbound,
            outbound,
            backup: None,
            media_encryption: Default::default(),
            session_timers: SessionTimers::default(),
            codecs: defaults::CODECS.to_vec(),
        }],
        rules: vec![answer_everything()],
        files: config::SourceFiles {
            config: PathBuf::new(),
            trunks_dir: PathBuf::new(),
            dialplans_dir: PathBuf::new(),
            state_dir: None,
        },
        warnings: Vec::new(),
    }
}

/// The phone's one dialplan rule: every call its trunk admits is the phone's to answer
/// (the endpoint answers the dialplan's refusals itself; no room is joined).
fn answer_everything() -> Rule {
    let template = |s: &str| config::types::parse_template(s).expect("a fixed template");
    Rule {
        name: PHONE_TRUNK.into(),
        file: PathBuf::new(),
        trunks: vec![PHONE_TRUNK.into()],
        called: None,
        caller: None,
        action: RuleAction::Join(Box::new(JoinRoom {
            room: template(PHONE_TRUNK),
            pin: None,
            identity: template(defaults::RULE_IDENTITY),
            name: template(defaults::RULE_NAME),
            metadata: None,
            attributes: Vec::new(),
            agents: Vec::new(),
            answer: AnswerMode::OnJoin,
            ringing_timeout: defaults::RULE_RINGING_TIMEOUT,
            early_media: false,
            hide_phone_number: false,
        })),
    }
}

/// The running phone: its endpoint and what its calls share.
pub(crate) struct Phone {
    pub ctx: Arc<CallContext>,
    pub cfg: Arc<Config>,
    pub invites: mpsc::Receiver<InboundInvite>,
    /// Set on SIGINT or SIGTERM: the call in progress hangs up, listening stops.
    pub shutdown: watch::Receiver<bool>,
    pub opts: Options,
}

impl Phone {
    async fn start(opts: Options) -> Result<Phone, String> {
        let mut listeners = Vec::new();
        match &opts.mode {
            Mode::Dial { .. } => listeners.push(Listener {
                transport: Transport::Udp,
                address: SocketAddr::new(opts.bind, 0),
                tls: None,
            }),
            Mode::Listen { address, tls, .. } => {
                for transport in [Transport::Udp, Transport::Tcp] {
                    listeners.push(Listener {
                        transport,
                        address: *address,
                        tls: None,
                    });
                }
                if let Some((addr, files)) = tls {
                    listeners.push(Listener {
                        transport: Transport::Tls,
                        address: *addr,
                        tls: Some(files.clone()),
                    });
                }
            }
        }
        let cfg = Arc::new(phone_config(&opts, listeners));
        let (_cfg_tx, cfg_rx) = watch::channel(cfg.clone());
        let (endpoint, handle, invites): (Endpoint, EndpointHandle, _) =
            Endpoint::bind(cfg_rx, Timers::default())
                .await
                .map_err(|e| e.to_string())?;
        handle.transports.reload_tls(&cfg);
        tokio::spawn(endpoint.run());
        let (shutdown_tx, shutdown) = watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            let terminated = async {
                match term.as_mut() {
                    Some(t) => {
                        t.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminated => {}
            }
            let _ = shutdown_tx.send(true);
        });
        let ctx = Arc::new(CallContext {
            endpoint: handle,
            ports: Arc::new(std::sync::Mutex::new(PortPool::new(
                opts.rtp_ports,
                Duration::ZERO,
            ))),
            timers: Timers::default(),
            rtp_public_ip: None,
            participants: Arc::new(AtomicUsize::new(0)),
            trunk_states: None,
            srtp_calls: Arc::default(),
            journal: None,
        });
        Ok(Phone {
            ctx,
            cfg,
            invites,
            shutdown,
            opts,
        })
    }
}

/// Runs `roomline call`, handing each call's report to `done` as the call ends (one when
/// dialling). Err: the phone could not start, or (listening) no call came in time.
pub(crate) async fn run(opts: Options, mut done: impl FnMut(CallReport)) -> Result<(), String> {
    let mut phone = Phone::start(opts).await?;
    match phone.opts.mode.clone() {
        Mode::Dial { target, number } => {
            done(dial::place(&phone, target, &number).await);
            Ok(())
        }
        Mode::Listen { calls, .. } => {
            let addrs: Vec<String> = phone
                .ctx
                .endpoint
                .transports
                .local_addrs()
                .iter()
                .map(|(t, a)| format!("{} {a}", t.as_str()))
                .collect();
            println!("listening: {}", addrs.join(", "));
            answer::serve(&mut phone, calls, done).await.map(|_| ())
        }
    }
}
