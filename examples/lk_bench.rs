//! Resource use of N pure-Rust LiveKit participants (`roomline::livekit`), for
//! `scripts/bench/participants`. Not a test: it prints one JSON line of figures.
//!
//! ```text
//! lk_bench --url ws://127.0.0.1:7880 [--key devkey --secret secret] --n 5
//!          [--mode idle|stream] [--rooms separate|shared] [--seconds 10] [--settle 3]
//! ```
//! * `idle`: joined, publishing nothing (no frames pushed).
//! * `stream`: every participant pushes a 1 kHz tone, 20 ms frames at 16 kHz, in real
//!   time (Opus encode + RTP/SRTP). With `--rooms shared` all N are in one room and each
//!   subscribes to and decodes the N-1 others (N*(N-1) decoded streams); with `separate`
//!   (default) each is alone in its own room (encode only), like N calls each bridged
//!   into its own room.
//!
//! CPU seconds (user+system, whole process, from /proc/self/stat in clock ticks of
//! 10 ms) are measured over the `--seconds` window after joining and a `--settle`
//! period; RSS is VmRSS at the end of the window and VmHWM (peak) for the whole run.

use std::time::{Duration, Instant};

use roomline::livekit::{
    JoinOptions, LeaveReason, Participant, ParticipantEvent, ParticipantHandle, SampleRate,
};

struct Args {
    url: String,
    key: String,
    secret: String,
    n: usize,
    stream: bool,
    shared: bool,
    seconds: f64,
    settle: f64,
}

fn usage() -> ! {
    eprintln!(
        "usage: lk_bench --url URL [--key K --secret S] --n N [--mode idle|stream] \
         [--rooms separate|shared] [--seconds S] [--settle S]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        url: String::new(),
        key: "devkey".into(),
        secret: "secret".into(),
        n: 1,
        stream: false,
        shared: false,
        seconds: 10.0,
        settle: 3.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => a.url = value(),
            "--key" => a.key = value(),
            "--secret" => a.secret = value(),
            "--n" => a.n = value().parse().unwrap_or_else(|_| usage()),
            "--mode" => {
                a.stream = match value().as_str() {
                    "idle" => false,
                    "stream" => true,
                    _ => usage(),
                }
            }
            "--rooms" => {
                a.shared = match value().as_str() {
                    "separate" => false,
                    "shared" => true,
                    _ => usage(),
                }
            }
            "--seconds" => a.seconds = value().parse().unwrap_or_else(|_| usage()),
            "--settle" => a.settle = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    if a.url.is_empty() || a.n == 0 {
        usage()
    }
    a
}

/// user + system CPU time of the whole process, seconds (clock ticks of 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // fields after the ")" that ends the command name: state is field 3; utime 14, stime 15
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// A field of /proc/self/status in MiB (`VmRSS`, `VmHWM`).
fn status_mib(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn tone_frame(n: &mut u64) -> Vec<i16> {
    let rate = 16000.0;
    let frame: Vec<i16> = (0..320)
        .map(|i| {
            let t = (*n + i) as f64 / rate;
            (0.3 * 32767.0 * (2.0 * std::f64::consts::PI * 1000.0 * t).sin()) as i16
        })
        .collect();
    *n += 320;
    frame
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let run = format!("bench-{}-{}", std::process::id(), args.n);
    let t0 = Instant::now();
    let mut handles: Vec<ParticipantHandle> = Vec::new();
    let mut counters = Vec::new();
    for i in 0..args.n {
        let room = if args.shared {
            run.clone()
        } else {
            format!("{run}-{i}")
        };
        let mut o = JoinOptions::sip(
            &args.url,
            &args.key,
            &args.secret,
            room,
            format!("bench_{i}"),
        );
        o.sample_rate = SampleRate::Hz16000;
        o.attributes
            .insert("sip.callStatus".into(), "active".into());
        let (handle, mut events) = match Participant::join(o).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("lk_bench: participant {i} could not join: {e}");
                std::process::exit(1);
            }
        };
        // drain events; count decoded frames
        let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r = received.clone();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let ParticipantEvent::AudioFrame(_) = ev {
                    r.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        counters.push(received);
        if args.stream {
            let h = handle.clone();
            tokio::spawn(async move {
                let mut ticker = tokio::time::interval(Duration::from_millis(20));
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut n = 0u64;
                loop {
                    ticker.tick().await;
                    if let Err(roomline::livekit::HandleError::Gone) =
                        h.push_audio(&tone_frame(&mut n))
                    {
                        break;
                    }
                }
            });
        }
        handles.push(handle);
    }
    let join_s = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;

    let count = |c: &[std::sync::Arc<std::sync::atomic::AtomicU64>]| -> u64 {
        c.iter()
            .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let cpu0 = cpu_seconds();
    let frames0 = count(&counters);
    let w0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let wall = w0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let frames = count(&counters) - frames0;
    let rss = status_mib("VmRSS:");
    let peak = status_mib("VmHWM:");
    for h in &handles {
        let _ = h.leave(LeaveReason::ClientInitiated).await;
    }
    let n = args.n as f64;
    println!(
        "{{\"n\":{},\"mode\":\"{}\",\"rooms\":\"{}\",\"window_s\":{:.2},\"join_s\":{:.2},\
         \"cpu_s\":{:.2},\"cpu_pct\":{:.1},\"cpu_ms_per_participant_s\":{:.2},\
         \"rss_mib\":{:.1},\"peak_rss_mib\":{:.1},\"decoded_frames_per_s\":{:.0}}}",
        args.n,
        if args.stream { "stream" } else { "idle" },
        if args.shared { "shared" } else { "separate" },
        wall,
        join_s,
        cpu,
        100.0 * cpu / wall,
        1000.0 * cpu / wall / n,
        rss,
        peak,
        frames as f64 / wall,
    );
}
