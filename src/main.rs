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
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (what the systemd unit starts)
    Run,
    /// Validate the whole configuration, print every error, and exit (0 valid, 64 invalid)
    Check,
    /// Mint a LiveKit access token signed with the configured API key and secret
    Token(TokenArgs),
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

fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    config::types::parse_duration(s)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match config::load(&cli.config) {
        Ok(c) => c,
        Err(errs) => {
            eprintln!("{errs}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match cli.command {
        Command::Check => {
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
        Command::Token(a) => {
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
        Command::Run => {
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
