//! `roomline call`'s arguments: checked into `Options` (every mistake a clear message and
//! exit status 2, as clap's own), the phone run on a small runtime, each report printed,
//! and the exit status from the worst verdict.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::audio::Source;
use super::report::EXIT_CALL_FAILED;
use super::{Mode, Options, Verdict, parse_to};
use crate::config::{self, Config, PortRange, TlsFiles};
use crate::media::dtmf::DtmfDigit;

/// Exit status for bad arguments (clap's).
pub const EXIT_USAGE: u8 = 2;

#[derive(clap::Args, Debug, Clone)]
pub struct CallArgs {
    /// Whom to call: a SIP URI (sip:+15550100@127.0.0.1:5060, ;transport=tcp, sips: for
    /// TLS), or with --trunk a number
    #[arg(long, value_name = "URI|NUMBER", conflicts_with = "listen")]
    pub to: Option<String>,
    /// Call through this configured trunk (its address, transport, credentials, headers
    /// and from_number)
    #[arg(long, value_name = "NAME", requires = "to")]
    pub trunk: Option<String>,
    /// Answer calls on this address (UDP and TCP) instead of calling
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// With --listen: also answer over TLS on this address (needs --cert and --key)
    #[arg(long, value_name = "ADDR", requires_all = ["listen", "cert", "key"])]
    pub tls_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM) for --tls-listen
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM) for --tls-listen
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// With --listen: calls to answer before exiting (0: until stopped)
    #[arg(long, default_value_t = 1, requires = "listen")]
    pub calls: u32,
    /// With --listen: ring this long before answering, e.g. 2s
    #[arg(long, value_parser = parse_dur, default_value = "0s", requires = "listen")]
    pub answer_after: Duration,
    /// The caller number in From (default: the trunk's from_number, else roomline-call)
    #[arg(long)]
    pub from: Option<String>,
    /// Digest user: answers a 401/407 when calling, challenges callers with --listen
    #[arg(long, requires = "password")]
    pub user: Option<String>,
    /// Digest password (or ROOMLINE_CALL_PASSWORD)
    #[arg(
        long,
        env = "ROOMLINE_CALL_PASSWORD",
        hide_env_values = true,
        requires = "user"
    )]
    pub password: Option<String>,
    /// Local IP to send from (default: any)
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Send a tone of this frequency, in Hz
    #[arg(long, value_name = "HZ", conflicts_with = "wav")]
    pub tone: Option<f64>,
    /// Send this WAV file (16-bit PCM) once, then silence
    #[arg(long, value_name = "FILE")]
    pub wav: Option<PathBuf>,
    /// Record what is heard to this WAV file (mono, the call's rate)
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// DTMF to send once answered (RFC 4733): 0-9 * # A-D, 'w' pauses 0.5 s
    #[arg(long, default_value = "")]
    pub dtmf: String,
    /// Hang up this long after the answer, e.g. 5s
    #[arg(long, value_parser = parse_dur, default_value = "5s")]
    pub duration: Duration,
    /// Calling: time to be answered; listening: time to wait for the first call
    #[arg(long, value_parser = parse_dur, default_value = "30s")]
    pub timeout: Duration,
    /// Fail (exit 3) unless this tone (Hz, within 2 %) is heard for at least 1 s
    #[arg(long, value_name = "HZ")]
    pub expect_tone: Option<f64>,
    /// RTP ports the phone uses
    #[arg(long, value_name = "RANGE", default_value = "40000-40999", value_parser = config::types::parse_port_range)]
    pub rtp_ports: PortRange,
    /// CA certificates (PEM) that sign the target's TLS certificate (default: the trunk's
    /// ca_file, else the system's roots)
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

fn parse_dur(s: &str) -> Result<Duration, String> {
    config::types::parse_duration(s)
}

fn check_hz(what: &str, hz: f64, max: f64) -> Result<f64, String> {
    if hz.is_finite() && (20.0..=max).contains(&hz) {
        Ok(hz)
    } else {
        Err(format!(
            "{what} {hz}: expected a frequency from 20 to {max} Hz"
        ))
    }
}

/// Checks the arguments into the phone's options (`cfg`: the loaded configuration, with
/// --trunk).
pub(crate) fn options(a: &CallArgs, cfg: Option<&Config>) -> Result<Options, String> {
    let trunk = match (&a.trunk, cfg) {
        (Some(name), Some(cfg)) => Some(cfg.trunk(name).ok_or_else(|| {
            let names: Vec<&str> = cfg.trunks.iter().map(|t| t.name.as_str()).collect();
            format!(
                "--trunk {name:?}: no such trunk (configured: {})",
                names.join(", ")
            )
        })?),
        (Some(_), None) => return Err("--trunk needs the configuration (--config)".into()),
        _ => None,
    };
    let mode = match (&a.to, a.listen) {
        (Some(to), None) => {
            let (target, number) = parse_to(to, trunk)?;
            Mode::Dial { target, number }
        }
        (None, Some(address)) => Mode::Listen {
            address,
            calls: a.calls,
            tls: match (a.tls_listen, &a.cert, &a.key) {
                (Some(addr), Some(cert), Some(key)) => Some((
                    addr,
                    TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                        client_ca: None,
                    },
                )),
                _ => None,
            },
        },
        _ => return Err("give --to (to place a call) or --listen (to answer calls)".into()),
    };
    let source = match (a.tone, &a.wav) {
        (Some(hz), _) => Source::Tone {
            hz: check_hz("--tone", hz, 7000.0)?,
        },
        (None, Some(path)) => Source::wav(path)?,
        (None, None) => Source::Silence,
    };
    if let Some(hz) = a.expect_tone {
        check_hz("--expect-tone", hz, 7000.0)?;
    }
    if let Some(bad) = a
        .dtmf
        .chars()
        .find(|&c| !matches!(c, 'w' | 'W') && DtmfDigit::from_char(c).is_none())
    {
        return Err(format!(
            "--dtmf {:?}: {bad:?} is not a key (0-9, *, #, A-D, or w for a pause)",
            a.dtmf
        ));
    }
    if a.duration.is_zero() || a.timeout.is_zero() {
        return Err("--duration and --timeout must be longer than 0".into());
    }
    let trunk_out = trunk.and_then(|t| t.outbound.as_ref());
    let from = a
        .from
        .clone()
        .or_else(|| trunk_out.and_then(|o| o.from_number.clone()))
        .unwrap_or_else(|| "roomline-call".into());
    if from.is_empty()
        || from
            .chars()
            .any(|c| c.is_whitespace() || "<>@;\"".contains(c))
    {
        return Err(format!("--from {from:?}: expected a number or SIP user"));
    }
    Ok(Options {
        mode,
        from,
        auth: a.user.clone().zip(a.password.clone()),
        bind: a.bind,
        source,
        record: a.record.clone(),
        dtmf: a.dtmf.clone(),
        duration: a.duration,
        timeout: a.timeout,
        answer_after: a.answer_after,
        expect_tone: a.expect_tone,
        rtp_ports: a.rtp_ports,
        ca_file: a
            .ca
            .clone()
            .or_else(|| trunk_out.and_then(|o| o.ca_file.clone())),
    })
}

/// `roomline call`: runs the phone, prints each call's report, exits with the worst
/// verdict.
pub fn run(a: &CallArgs, cfg: Option<&Config>) -> ExitCode {
    let opts = match options(a, cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("roomline call: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomline call: {e}");
            return ExitCode::from(EXIT_CALL_FAILED);
        }
    };
    let mut worst = Verdict::Ok;
    let result = rt.block_on(super::run(opts, |report| {
        print!("{}", report.render());
        // a failed call is worse than failed audio
        let rank = |v: Verdict| match v {
            Verdict::Ok => 0,
            Verdict::AudioFailed => 1,
            Verdict::CallFailed => 2,
        };
        let v = report.verdict();
        if rank(v) > rank(worst) {
            worst = v;
        }
    }));
    if let Err(e) = result {
        println!("result: call failed: {e}");
        return ExitCode::from(EXIT_CALL_FAILED);
    }
    ExitCode::from(worst.exit_code())
}
