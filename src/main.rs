//! The `roomline` command: parse the CLI, load and validate the configuration, then run the
//! daemon, check the configuration, or mint a token.

use clap::{Parser, Subcommand};
use roomline::config::{self, defaults};
use roomline::daemon::{EXIT_CONFIG, EXIT_RUNTIME};
use roomline::token::{self, TokenRequest};
use std::path::PathBuf;
use std::process::ExitCode;

/// Roomline bridges SIP phone calls into LiveKit rooms: calls from SIP trunks are routed
/// by a dialplan into rooms, where they join as SIP participants; rooms dial out through
/// the same trunks.
#[derive(Parser)]
#[command(name = "roomline", version, about, long_about = None)]
#[command(
    after_help = "Configuration: roomline.yaml, plus trunks/*.yaml and dialplans/*.yaml beside it.\n\
LIVEKIT_URL, LIVEKIT_API_KEY and LIVEKIT_API_SECRET override the file; LOG_LEVEL overrides logging.level.\n\
Exit status: 0 success, 64 invalid configuration, 1 other failure."
)]
struct Cli {
    /// Path of roomline.yaml
    #[arg(long, short, global = true, env = "ROOMLINE_CONFIG", default_value = defaults::CONFIG_PATH)]
    config: PathBuf,

    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Run the daemon (what the systemd unit starts)
    Run,
    /// Validate the whole configuration, print every error, and exit (0 valid, 64 invalid)
    Check,
    /// Mint a LiveKit access token signed with the configured API key and secret
    Token(TokenArgs),
    /// Place an outbound call through the running daemon's SIP API (CreateSIPParticipant)
    Dial(DialArgs),
    /// Check what calls need: configuration, LiveKit reachability and credentials, SIP
    /// ports, RTP range, trunk OPTIONS; one verdict per item (exit 0 if none failed)
    Diagnose(DiagnoseArgs),
    /// A test phone: place a call (--to) or answer calls (--listen), send a tone, a WAV
    /// file or DTMF, record what is heard, hang up after --duration; prints the SIP
    /// exchange, RTP figures and the tone heard. Exit 0 ok, 1 the call failed, 3 the
    /// audio failed (no RTP, or --expect-tone not heard for 1 s), 2 bad arguments.
    Call(Box<roomline::phone::cli::CallArgs>),
    /// SIP diagnostics
    #[command(subcommand)]
    Sip(SipCommand),
}

#[derive(Subcommand)]
enum SipCommand {
    /// Check a SIP message (e.g. pasted from a trace) as the daemon does on receipt: exit 0
    /// and print its key fields if accepted, exit 1 with the reason and the daemon's answer
    /// if not. FILE may be - for standard input.
    Parse {
        /// File holding one SIP message
        file: PathBuf,
    },
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Participant identity (the token subject)
    #[arg(long)]
    identity: String,
    /// Display name
    #[arg(long)]
    name: Option<String>,
    /// Grant joining this room, with publish, subscribe and data
    #[arg(long)]
    room: Option<String>,
    /// Participant kind claim, e.g. sip or agent
    #[arg(long)]
    kind: Option<String>,
    /// Grant room administration (create, list, admin)
    #[arg(long)]
    room_admin: bool,
    /// Grant placing calls through the SIP API (sip.call)
    #[arg(long)]
    sip_call: bool,
    /// Grant SIP administration (sip.admin)
    #[arg(long)]
    sip_admin: bool,
    /// Lifetime, e.g. 10m or 6h
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    ttl: std::time::Duration,
}

#[derive(clap::Args)]
struct DiagnoseArgs {
    /// Also place a test call to this number through the daemon's own SIP listener (the
    /// dialplan routes it like any call) and check that RTP flows both ways
    #[arg(long, value_name = "NUMBER")]
    call: Option<String>,
    /// With --call: digest credentials, as USER:PASSWORD (else the first inbound trunk
    /// with credentials that admits 127.0.0.1)
    #[arg(long, value_name = "USER:PASSWORD", requires = "call")]
    call_auth: Option<String>,
}

#[derive(clap::Args)]
struct DialArgs {
    /// Trunk to call through (its name in trunks/)
    #[arg(long)]
    trunk: String,
    /// Number (or SIP user) to call
    #[arg(long)]
    to: String,
    /// Room the call joins
    #[arg(long)]
    room: String,
    /// From number (default: the trunk's from_number)
    #[arg(long)]
    from: Option<String>,
    /// Participant identity (default sip_<to>)
    #[arg(long)]
    identity: Option<String>,
    /// Participant name (default Phone <to>)
    #[arg(long)]
    name: Option<String>,
    /// DTMF digits to send once answered ('w' pauses 0.5 s)
    #[arg(long, default_value = "")]
    dtmf: String,
    /// Wait until the callee answers (else return once the participant joined)
    #[arg(long)]
    wait: bool,
    /// Time the callee has to answer, e.g. 30s
    #[arg(long, value_parser = parse_ttl)]
    ringing_timeout: Option<std::time::Duration>,
    /// Hang up after this long, e.g. 1h
    #[arg(long, value_parser = parse_ttl)]
    max_duration: Option<std::time::Duration>,
    /// Play a ringing tone into the room while the phone rings
    #[arg(long)]
    dialtone: bool,
    /// The daemon's HTTP address (default: http.listen of the configuration)
    #[arg(long)]
    api: Option<String>,
}

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    config::types::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let CliCommand::Sip(SipCommand::Parse { file }) = &cli.command {
        return sip_parse(file);
    }
    if let CliCommand::Call(a) = &cli.command
        && a.trunk.is_none()
    {
        return roomline::phone::cli::run(a, None);
    }
    let cfg = match config::load(&cli.config) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        CliCommand::Check => {
            for w in &cfg.warnings {
                eprintln!("{}: warning: {}", w.origin, w.message);
            }
            println!(
                "{}: configuration is valid ({} trunk{}, {} dialplan rule{})",
                cli.config.display(),
                cfg.trunks.len(),
                if cfg.trunks.len() == 1 { "" } else { "s" },
                cfg.rules.len(),
                if cfg.rules.len() == 1 { "" } else { "s" },
            );
            ExitCode::SUCCESS
        }
        CliCommand::Token(a) => {
            let req = TokenRequest {
                identity: a.identity,
                name: a.name,
                kind: a.kind,
                room: a.room,
                room_admin: a.room_admin,
                sip_call: a.sip_call,
                sip_admin: a.sip_admin,
                ttl: a.ttl,
            };
            match token::mint(&cfg.livekit, &req) {
                Ok(jwt) => {
                    println!("{jwt}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("roomline token: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        CliCommand::Dial(a) => dial(&cfg, a),
        CliCommand::Call(a) => roomline::phone::cli::run(&a, Some(&cfg)),
        CliCommand::Diagnose(d) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("roomline diagnose: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            let mut checks = rt.block_on(roomline::diagnose::run(&cfg));
            if let Some(number) = &d.call {
                checks.push(rt.block_on(roomline::diagnose::test_call(
                    &cfg,
                    number,
                    d.call_auth.as_deref(),
                )));
            }
            if roomline::diagnose::print(&checks) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_RUNTIME)
            }
        }
        CliCommand::Sip(_) => unreachable!("handled before loading the configuration"),
        CliCommand::Run => {
            if let Err(e) = roomline::logging::init(&cfg.logging.level, cfg.logging.format) {
                eprintln!("roomline: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("roomline: cannot start the runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            rt.block_on(roomline::daemon::run(&cli.config, cfg))
        }
    }
}

/// `roomline dial`: one CreateSIPParticipant request to the daemon, with a token minted
/// from the configured key and secret (sip.call grant).
fn dial(cfg: &config::Config, a: DialArgs) -> ExitCode {
    let jwt = match token::mint(
        &cfg.livekit,
        &TokenRequest {
            identity: "roomline-dial".into(),
            name: None,
            kind: None,
            room: None,
            room_admin: false,
            sip_call: true,
            sip_admin: false,
            ttl: std::time::Duration::from_secs(600),
        },
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("roomline dial: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let base = a
        .api
        .clone()
        .unwrap_or_else(|| format!("http://{}", cfg.http.listen));
    let dur = |d: Option<std::time::Duration>| d.map(|d| format!("{}s", d.as_secs_f64()));
    let body = serde_json::json!({
        "sip_trunk_id": a.trunk,
        "sip_call_to": a.to,
        "room_name": a.room,
        "sip_number": a.from.unwrap_or_default(),
        "participant_identity": a.identity.unwrap_or_default(),
        "participant_name": a.name.unwrap_or_default(),
        "dtmf": a.dtmf,
        "wait_until_answered": a.wait,
        "play_dialtone": a.dialtone,
        "ringing_timeout": dur(a.ringing_timeout),
        "max_call_duration": dur(a.max_duration),
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomline dial: {e}");
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    let url = format!(
        "{}/twirp/livekit.SIP/CreateSIPParticipant",
        base.trim_end_matches('/')
    );
    let result = rt.block_on(async {
        let resp = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&jwt)
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| format!("cannot reach {url}: {e}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        Ok::<_, String>((status, text))
    });
    match result {
        Ok((status, text)) if status.is_success() => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!("roomline dial: {status}: {text}");
            ExitCode::from(EXIT_RUNTIME)
        }
        Err(e) => {
            eprintln!("roomline dial: {e}");
            ExitCode::from(EXIT_RUNTIME)
        }
    }
}

fn sip_parse(file: &std::path::Path) -> ExitCode {
    use roomline::sip::message::{self, StartLine};
    let read = if file.as_os_str() == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map(|_| buf)
    } else {
        std::fs::read(file)
    };
    let mut data = match read {
        Ok(d) => d,
        Err(e) => {
            eprintln!("roomline sip parse: cannot read {}: {e}", file.display());
            return ExitCode::from(EXIT_RUNTIME);
        }
    };
    // Text copied out of a trace often loses its CRs; SIP needs CRLF.
    if !data.contains(&b'\r') && data.contains(&b'\n') {
        let mut fixed = Vec::with_capacity(data.len() + data.len() / 20);
        for b in data {
            if b == b'\n' {
                fixed.push(b'\r');
            }
            fixed.push(b);
        }
        data = fixed;
        println!("note: the file had LF line endings; read as CRLF");
    }
    match message::parse(&data) {
        Ok(m) => {
            match &m.start {
                StartLine::Request { method, uri } => println!("accepted: request {method} {uri}"),
                StartLine::Response { status, reason } => {
                    println!("accepted: response {status} {reason}")
                }
            }
            for name in [
                "Call-ID",
                "CSeq",
                "From",
                "To",
                "Contact",
                "Max-Forwards",
                "Content-Type",
            ] {
                if let Some(v) = m.header(name) {
                    println!("{name}: {v}");
                }
            }
            for v in m.headers_named("Via") {
                println!("Via: {v}");
            }
            println!("headers: {}, body: {} bytes", m.headers.len(), m.body.len());
            if m.trailing > 0 {
                println!(
                    "note: {} bytes after the message were ignored (Content-Length)",
                    m.trailing
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("rejected: {}", e.invalid.reason());
            match e.status() {
                Some(400) => println!("the daemon answers: 400 Bad Request"),
                Some(505) => println!("the daemon answers: 505 Version Not Supported"),
                Some(s) => println!("the daemon answers: {s}"),
                None if e.is_response => {
                    println!("the daemon drops it (a response is never answered)")
                }
                None if e.is_ack => println!("the daemon drops it (an ACK is never answered)"),
                None => println!("the daemon drops it (no answerable request line)"),
            }
            ExitCode::from(1)
        }
    }
}
