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
//!
//! Two more modes serve `scripts/bench/run` as the room side of a load test:
//!
//! ```text
//! lk_bench --url URL --mode rooms --room-list FILE [--tone-hz 440] [--expect-hz 1000]
//!          [--echo] [--concurrency 8]
//! lk_bench --url URL --mode probe --room R --pattern FILE --out PREFIX [--seconds S]
//! ```
//! * `rooms`: one participant (identity `room-side`, kind standard, 16 kHz) in each room
//!   named in FILE (one a line), all in this process. Each publishes a `--tone-hz` tone
//!   while anyone else is in its room (one 20 ms ticker for all, catching up on missed
//!   ticks) and decodes every remote
//!   audio track; per room it counts the samples received and the 20 ms frames whose
//!   energy is mostly at `--expect-hz` (Goertzel). With `--echo` it publishes what it
//!   hears instead of a tone (the far end of a latency loop). Prints
//!   `{"event":"ready",...}` once all have joined, then reads commands on stdin:
//!   `window` (zero the counters), `report` (one JSON line: per-room counters since
//!   `window`, this process's CPU and RSS), `quit` (or end of input: leave and exit).
//!   For `scripts/soak` (calls that come and go) also `join ROOM` (event `joined` or
//!   `join_failed`) and `close ROOM` (event `closed`: leave it, with who is still there
//!   and what each sender that did not leave sent); the list FILE may be empty. Event
//!   `publish_lag` (at most once a second): the tone ticker ran late (`late_ms`, worst in
//!   that second) or participants' queues refused frames (`refused`). Each remote participant is also
//!   counted on its own, from the first frame heard: event `participant_joined` when one
//!   arrives, `left` when it goes (samples, frames, 1 kHz frames, first/last arrival as
//!   Unix time).
//! * `probe`: one participant that plays a 16 kHz mono s16le PATTERN (20 ms frames, in
//!   real time) and records what the room sends back; writes `PREFIX.sent.s16` and
//!   `PREFIX.recv.s16`, 16 kHz timelines from one start instant: each sent frame placed
//!   at the instant its first sample was "spoken" (push time - 20 ms), each received
//!   frame at its arrival. `scripts/bench` cross-correlates them (LiveKit's own loop,
//!   the baseline for the bridge's added latency). It records for `--seconds` or the
//!   pattern's length plus 1 s, whichever is longer.

#![allow(clippy::disallowed_methods, reason = "benchmarks measure real time")]

use std::time::{Duration, Instant};

use roomline::livekit::{
    JoinOptions, LeaveReason, Participant, ParticipantEvent, ParticipantHandle, SampleRate,
};

#[derive(Clone)]
struct Args {
    url: String,
    key: String,
    secret: String,
    n: usize,
    stream: bool,
    shared: bool,
    seconds: f64,
    settle: f64,
    /// `rooms` or `probe` (the load-test room side); None: the idle/stream benchmark.
    special: Option<String>,
    room_list: String,
    room: String,
    tone_hz: f64,
    expect_hz: f64,
    echo: bool,
    concurrency: usize,
    pattern: String,
    out: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: lk_bench --url URL [--key K --secret S] --n N [--mode idle|stream] \
         [--rooms separate|shared] [--seconds S] [--settle S]\n\
         \x20      lk_bench --url URL --mode rooms --room-list FILE [--tone-hz HZ] \
         [--expect-hz HZ] [--echo] [--concurrency K]\n\
         \x20      lk_bench --url URL --mode probe --room R --pattern FILE --out PREFIX \
         [--seconds S]"
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
        special: None,
        room_list: String::new(),
        room: String::new(),
        tone_hz: 440.0,
        expect_hz: 1000.0,
        echo: false,
        concurrency: 8,
        pattern: String::new(),
        out: String::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--url" => a.url = value(),
            "--key" => a.key = value(),
            "--secret" => a.secret = value(),
            "--n" => a.n = value().parse().unwrap_or_else(|_| usage()),
            "--mode" => match value().as_str() {
                "idle" => a.stream = false,
                "stream" => a.stream = true,
                m @ ("rooms" | "probe") => a.special = Some(m.to_string()),
                _ => usage(),
            },
            "--room-list" => a.room_list = value(),
            "--room" => a.room = value(),
            "--tone-hz" => a.tone_hz = value().parse().unwrap_or_else(|_| usage()),
            "--expect-hz" => a.expect_hz = value().parse().unwrap_or_else(|_| usage()),
            "--echo" => a.echo = true,
            "--concurrency" => a.concurrency = value().parse().unwrap_or_else(|_| usage()),
            "--pattern" => a.pattern = value(),
            "--out" => a.out = value(),
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
    let bad = match a.special.as_deref() {
        Some("rooms") => a.room_list.is_empty() || a.concurrency == 0,
        Some(_) => a.room.is_empty() || a.pattern.is_empty() || a.out.is_empty(),
        None => a.n == 0,
    };
    if a.url.is_empty() || bad {
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
    match args.special.as_deref() {
        Some("rooms") => return rooms_mode(&args).await,
        Some("probe") => return probe_mode(&args).await,
        _ => {}
    }
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

// ---- the room side of scripts/bench/run and scripts/soak ------------------------------

/// Rate of the room-side participants (PCM pushed and remote audio decoded).
const ROOM_RATE: SampleRate = SampleRate::Hz16000;

/// Per-room counters, zeroed by `window`.
#[derive(Default)]
struct RoomCounters {
    samples: u64,
    frames: u64,
    tone_frames: u64,
    /// Identities whose audio arrived since the window opened.
    from: std::collections::BTreeSet<String>,
}

/// What one remote participant sent, since it was first heard (never zeroed): reported
/// when it leaves the room (`left`) or when the room is closed (`closed`). Times are Unix
/// seconds of arrival.
#[derive(Default, Clone)]
struct SenderCounters {
    samples: u64,
    frames: u64,
    tone_frames: u64,
    tone_samples: u64,
    first_unix: f64,
    last_unix: f64,
    first_tone_unix: f64,
    last_tone_unix: f64,
    /// Samples of the frames without the tone since the last tone frame, and when the
    /// first of them arrived: a hole once a tone frame follows them.
    pending_miss: u64,
    pending_at: f64,
    /// Holes in the tone (frames without it between two frames with it): (Unix time of
    /// the first missing frame, samples missing), at most `MAX_HOLES`, then only counted.
    holes: Vec<(f64, u64)>,
    holes_dropped: u64,
    /// Samples that did not arrive: once a second from the first tone frame, the lowest
    /// deficit (wall time since the first tone frame times the rate, minus the samples
    /// received since) seen in that second, as (Unix time, samples). Late frames that
    /// arrive in a burst pull it back; frames that never came keep it up.
    deficit: Vec<(f64, i64)>,
    deficit_second: Option<(f64, i64)>,
    received_since_tone: u64,
}

/// The room side's tone ticker reports a second in which it ran this late (or a
/// participant's queue refused a frame): event `publish_lag`.
const PUBLISH_LATE: Duration = Duration::from_millis(60);

/// Holes kept per sender (a soak call is minutes long; more is a broken call anyway).
const MAX_HOLES: usize = 500;

impl SenderCounters {
    /// After the first tone frame: counts `n` samples that arrived at `now` into the
    /// per-second lowest deficit (at most `MAX_HOLES` seconds kept).
    fn track_deficit(&mut self, now: f64, n: u64) {
        let rate = f64::from(ROOM_RATE.hz());
        // the deficit before this frame: it covers the time up to its arrival
        let d = ((now - self.first_tone_unix) * rate) as i64 - self.received_since_tone as i64;
        self.received_since_tone += n;
        match &mut self.deficit_second {
            Some((start, low)) if now - *start < 1.0 => *low = (*low).min(d),
            slot => {
                if let Some(done) = slot.take()
                    && self.deficit.len() < MAX_HOLES
                {
                    self.deficit.push(done);
                }
                *slot = Some((now, d));
            }
        }
    }

    /// Counts one decoded frame of `n` samples that arrived at `now`.
    fn frame(&mut self, now: f64, n: u64, tone: bool) {
        if self.frames == 0 {
            self.first_unix = now;
        }
        self.samples += n;
        self.frames += 1;
        self.last_unix = now;
        if !tone {
            if self.tone_frames > 0 {
                self.track_deficit(now, n);
                if self.pending_miss == 0 {
                    self.pending_at = now;
                }
                self.pending_miss += n;
            }
            return;
        }
        if self.tone_frames == 0 {
            self.first_tone_unix = now;
        }
        self.track_deficit(now, n);
        if self.pending_miss > 0 {
            if self.holes.len() < MAX_HOLES {
                self.holes.push((self.pending_at, self.pending_miss));
            } else {
                self.holes_dropped += 1;
            }
            self.pending_miss = 0;
        }
        self.tone_frames += 1;
        self.tone_samples += n;
        self.last_tone_unix = now;
    }

    fn json(&self, room: &str, identity: &str) -> serde_json::Value {
        serde_json::json!({
            "room": room,
            "identity": identity,
            "rate": ROOM_RATE.hz(),
            "samples": self.samples,
            "frames": self.frames,
            "tone_frames": self.tone_frames,
            "tone_samples": self.tone_samples,
            "first_unix": self.first_unix,
            "last_unix": self.last_unix,
            "first_tone_unix": self.first_tone_unix,
            "last_tone_unix": self.last_tone_unix,
            "holes": self.holes.iter().map(|(t, n)| serde_json::json!([t, n])).collect::<Vec<_>>(),
            "holes_dropped": self.holes_dropped,
            "deficit": self.deficit.iter().chain(self.deficit_second.iter())
                .map(|(t, d)| serde_json::json!([t, d])).collect::<Vec<_>>(),
        })
    }
}

/// Who is in a room besides us, and what each sender sent (until it leaves).
#[derive(Default)]
struct Senders {
    counters: std::collections::BTreeMap<String, SenderCounters>,
    present: std::collections::BTreeSet<String>,
}

/// One room the room side is in: the participant, the window counters and the
/// per-sender counters.
struct RoomSlot {
    room: String,
    handle: ParticipantHandle,
    counters: std::sync::Arc<std::sync::Mutex<RoomCounters>>,
    senders: std::sync::Arc<std::sync::Mutex<Senders>>,
}

/// The rooms joined so far, in join order (the tone ticker pushes to all of them).
type Slots = std::sync::Arc<std::sync::Mutex<Vec<RoomSlot>>>;

/// One JSON event line on stdout (the protocol scripts/bench reads).
fn emit(v: serde_json::Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Goertzel: the fraction of a frame's energy at `hz` (1.0 for a pure tone there), and
/// the frame's RMS in full-scale units.
fn tone_fraction(samples: &[i16], rate: f64, hz: f64) -> (f64, f64) {
    let n = samples.len() as f64;
    if n == 0.0 {
        return (0.0, 0.0);
    }
    let w = 2.0 * std::f64::consts::PI * hz / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2, mut energy) = (0.0f64, 0.0f64, 0.0f64);
    for &x in samples {
        let x = f64::from(x) / 32768.0;
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let rms = (energy / n).sqrt();
    if energy <= 0.0 {
        return (0.0, rms);
    }
    ((power / (n / 2.0 * energy)).min(1.0), rms)
}

fn tone_frame_at(hz: f64, rate: f64, n: &mut u64, len: usize) -> Vec<i16> {
    let frame = (0..len as u64)
        .map(|i| {
            let t = (*n + i) as f64 / rate;
            (0.3 * 32767.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
        })
        .collect();
    *n += len as u64;
    frame
}

/// Server URL, API key and secret.
#[derive(Clone)]
struct Server {
    url: String,
    key: String,
    secret: String,
}

impl Server {
    fn of(args: &Args) -> Server {
        Server {
            url: args.url.clone(),
            key: args.key.clone(),
            secret: args.secret.clone(),
        }
    }
}

/// A joined participant: its handle and its events.
type Joined = (
    ParticipantHandle,
    tokio::sync::mpsc::Receiver<ParticipantEvent>,
);

async fn join_room_side(server: &Server, room: String, identity: &str) -> Result<Joined, String> {
    let mut o = JoinOptions::sip(
        &server.url,
        &server.key,
        &server.secret,
        room.clone(),
        identity,
    );
    o.kind = roomline::livekit::ParticipantKind::Standard;
    o.sample_rate = ROOM_RATE;
    o.track_name = "room-side".into();
    o.join_timeout = Duration::from_secs(60);
    // a few attempts: at the start of a large run the server may be busy
    let mut last = String::new();
    for attempt in 0..3 {
        match Participant::join(o.clone()).await {
            Ok(x) => return Ok(x),
            Err(e) => {
                last = format!("{room}: {e}");
                tokio::time::sleep(Duration::from_millis(500 * (attempt + 1))).await;
            }
        }
    }
    Err(last)
}

/// Joins `room` and starts counting what arrives there; the slot is added to `slots`.
async fn open_room(args: &Args, server: Server, room: String, slots: Slots) -> Result<(), String> {
    use std::sync::{Arc, Mutex};
    let (handle, mut events) = join_room_side(&server, room.clone(), "room-side").await?;
    let counters = Arc::new(Mutex::new(RoomCounters::default()));
    let senders: Arc<Mutex<Senders>> = Arc::default();
    let (cc, ss) = (counters.clone(), senders.clone());
    let echo = args.echo.then(|| handle.clone());
    let expect = args.expect_hz;
    let name = room.clone();
    tokio::spawn(async move {
        let rate = f64::from(ROOM_RATE.hz());
        let per = ROOM_RATE.samples_per_20ms();
        let mut pending: Vec<i16> = Vec::new();
        while let Some(ev) = events.recv().await {
            match ev {
                ParticipantEvent::AudioFrame(f) => {
                    let (frac, rms) = tone_fraction(&f.samples, rate, expect);
                    let tone = rms > 0.01 && frac > 0.5;
                    let n = f.samples.len() as u64;
                    {
                        let mut c = cc.lock().unwrap();
                        c.samples += n;
                        c.frames += 1;
                        c.tone_frames += u64::from(tone);
                        if !c.from.contains(&f.participant_identity) {
                            c.from.insert(f.participant_identity.clone());
                        }
                    }
                    {
                        let now = unix_now();
                        let mut s = ss.lock().unwrap();
                        let e = s
                            .counters
                            .entry(f.participant_identity.clone())
                            .or_default();
                        e.frame(now, n, tone);
                    }
                    if let Some(h) = &echo {
                        pending.extend_from_slice(&f.samples);
                        while pending.len() >= per {
                            let _ = h.push_audio(&pending[..per]);
                            pending.drain(..per);
                        }
                    }
                }
                ParticipantEvent::ParticipantJoined(p) => {
                    ss.lock().unwrap().present.insert(p.identity.clone());
                    emit(serde_json::json!({
                        "event": "participant_joined",
                        "room": name,
                        "identity": p.identity,
                        "kind": format!("{:?}", p.kind),
                        "unix": unix_now(),
                    }))
                }
                ParticipantEvent::ParticipantLeft { identity, .. } => {
                    let c = {
                        let mut s = ss.lock().unwrap();
                        s.present.remove(&identity);
                        s.counters.remove(&identity).unwrap_or_default()
                    };
                    let mut v = c.json(&name, &identity);
                    v["event"] = "left".into();
                    v["unix"] = unix_now().into();
                    emit(v);
                }
                ParticipantEvent::Disconnected(r) => {
                    eprintln!("lk_bench: a room-side participant left: {r}");
                    emit(serde_json::json!({
                        "event": "room_lost",
                        "room": name,
                        "reason": r.to_string(),
                    }));
                    break;
                }
                _ => {}
            }
        }
    });
    slots.lock().unwrap().push(RoomSlot {
        room,
        handle,
        counters,
        senders,
    });
    Ok(())
}

/// `--mode rooms`: the rooms of `--room-list` are joined before `ready`; then commands on
/// stdin. `window`/`report` (scripts/bench/run's load windows) work on per-room counters;
/// `join ROOM` and `close ROOM` (scripts/soak's churn) add a room (event `joined` or
/// `join_failed`) and leave one (event `closed`, with the counters of every sender still
/// there). Whenever a remote participant joins a room: event `participant_joined`; leaves:
/// event `left` with what it sent (`SenderCounters`).
async fn rooms_mode(args: &Args) {
    use std::sync::Arc;

    let rooms: Vec<String> = std::fs::read_to_string(&args.room_list)
        .unwrap_or_else(|e| {
            eprintln!("lk_bench: cannot read {}: {e}", args.room_list);
            std::process::exit(2)
        })
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let args = Arc::new(args.clone());
    let slots: Slots = Arc::default();
    let t0 = Instant::now();
    // join with bounded concurrency, keeping the room order
    let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
    let mut joins = Vec::new();
    for room in &rooms {
        let sem = sem.clone();
        let room = room.clone();
        let args = args.clone();
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let server = Server::of(&args);
            let tmp: Slots = Arc::default();
            open_room(&args, server, room, tmp.clone())
                .await
                .map(|()| tmp.lock().unwrap().pop().expect("joined slot"))
        }));
    }
    for (room, j) in rooms.iter().zip(joins) {
        match j.await.expect("join task") {
            Ok(slot) => slots.lock().unwrap().push(slot),
            Err(e) => {
                println!("{{\"event\":\"error\",\"error\":{:?}}}", e);
                eprintln!("lk_bench: could not join {room}: {e}");
                std::process::exit(1);
            }
        }
    }
    let join_s = t0.elapsed().as_secs_f64();
    if !args.echo {
        let slots = slots.clone();
        let hz = args.tone_hz;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_millis(20));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut n = 0u64;
            // how the publishing keeps up, reported once a second when it did not: the
            // ticker's worst lateness and the frames a participant's queue refused
            let (mut late_max, mut refused, mut since) = (Duration::ZERO, 0u64, Instant::now());
            loop {
                let due = ticker.tick().await;
                late_max = late_max.max(tokio::time::Instant::now().saturating_duration_since(due));
                let frame = tone_frame_at(
                    hz,
                    f64::from(ROOM_RATE.hz()),
                    &mut n,
                    ROOM_RATE.samples_per_20ms(),
                );
                // only where someone else is in the room: a room joined ahead of its call
                // costs no encoding until the call's participant arrives
                for s in slots.lock().unwrap().iter() {
                    if !s.senders.lock().unwrap().present.is_empty()
                        && s.handle.push_audio(&frame).is_err()
                    {
                        refused += 1;
                    }
                }
                if since.elapsed() >= Duration::from_secs(1) {
                    if late_max >= PUBLISH_LATE || refused > 0 {
                        emit(serde_json::json!({
                            "event": "publish_lag",
                            "unix": unix_now(),
                            "late_ms": late_max.as_millis() as u64,
                            "refused": refused,
                        }));
                    }
                    (late_max, refused, since) = (Duration::ZERO, 0, Instant::now());
                }
            }
        });
    }
    println!(
        "{{\"event\":\"ready\",\"rooms\":{},\"join_s\":{:.2},\"rss_mib\":{:.1}}}",
        rooms.len(),
        join_s,
        status_mib("VmRSS:")
    );
    let mut window_start = Instant::now();
    let mut window_cpu = cpu_seconds();
    // commands on stdin, read by a plain thread (tokio's io-std feature is not enabled)
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let line = line.trim();
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        match cmd {
            "window" => {
                for s in slots.lock().unwrap().iter() {
                    *s.counters.lock().unwrap() = RoomCounters::default();
                }
                window_start = Instant::now();
                window_cpu = cpu_seconds();
                println!("{{\"event\":\"window\"}}");
            }
            "report" => {
                let wall = window_start.elapsed().as_secs_f64();
                let per_room: Vec<String> = slots
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        let c = s.counters.lock().unwrap();
                        let from: Vec<String> = c.from.iter().map(|s| format!("{s:?}")).collect();
                        format!(
                            "{{\"room\":{:?},\"samples\":{},\"frames\":{},\"tone_frames\":{},\"from\":[{}]}}",
                            s.room,
                            c.samples,
                            c.frames,
                            c.tone_frames,
                            from.join(",")
                        )
                    })
                    .collect();
                println!(
                    "{{\"event\":\"report\",\"window_s\":{wall:.3},\"rate\":{},\"cpu_s\":{:.2},\"rss_mib\":{:.1},\"rooms\":[{}]}}",
                    ROOM_RATE.hz(),
                    cpu_seconds() - window_cpu,
                    status_mib("VmRSS:"),
                    per_room.join(",")
                );
            }
            "join" if !arg.is_empty() => {
                let (args, slots, sem) = (args.clone(), slots.clone(), sem.clone());
                let room = arg.to_string();
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    let t = Instant::now();
                    let server = Server::of(&args);
                    match open_room(&args, server, room.clone(), slots).await {
                        Ok(()) => emit(serde_json::json!({
                            "event": "joined",
                            "room": room,
                            "join_s": t.elapsed().as_secs_f64(),
                        })),
                        Err(e) => emit(serde_json::json!({
                            "event": "join_failed",
                            "room": room,
                            "error": e,
                        })),
                    }
                });
            }
            "close" if !arg.is_empty() => {
                let slot = {
                    let mut all = slots.lock().unwrap();
                    all.iter()
                        .position(|s| s.room == arg)
                        .map(|i| all.remove(i))
                };
                let (senders, present): (Vec<serde_json::Value>, Vec<String>) = slot
                    .as_ref()
                    .map(|s| {
                        let s = s.senders.lock().unwrap();
                        (
                            s.counters.iter().map(|(id, c)| c.json(arg, id)).collect(),
                            s.present.iter().cloned().collect(),
                        )
                    })
                    .unwrap_or_default();
                emit(serde_json::json!({
                    "event": "closed",
                    "room": arg,
                    "known": slot.is_some(),
                    "senders": senders,
                    "present": present,
                }));
                if let Some(s) = slot {
                    tokio::spawn(async move { s.handle.leave(LeaveReason::ClientInitiated).await });
                }
            }
            "quit" => break,
            _ => {}
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
    let handles: Vec<ParticipantHandle> =
        slots.lock().unwrap().drain(..).map(|s| s.handle).collect();
    let leaves: Vec<_> = handles
        .into_iter()
        .map(|h| tokio::spawn(async move { h.leave(LeaveReason::ClientInitiated).await }))
        .collect();
    for l in leaves {
        let _ = l.await;
    }
}

/// Writes `frame` into `timeline` at `at` seconds from its start (16 kHz), growing it.
fn place(timeline: &mut Vec<i16>, at: f64, frame: &[i16]) {
    let start = (at * f64::from(ROOM_RATE.hz())).round().max(0.0) as usize;
    if timeline.len() < start + frame.len() {
        timeline.resize(start + frame.len(), 0);
    }
    timeline[start..start + frame.len()].copy_from_slice(frame);
}

fn write_s16(path: &str, samples: &[i16]) {
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    if let Err(e) = std::fs::write(path, bytes) {
        eprintln!("lk_bench: cannot write {path}: {e}");
        std::process::exit(1);
    }
}

async fn probe_mode(args: &Args) {
    let raw = std::fs::read(&args.pattern).unwrap_or_else(|e| {
        eprintln!("lk_bench: cannot read {}: {e}", args.pattern);
        std::process::exit(2)
    });
    let pattern: Vec<i16> = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let (handle, mut events) =
        match join_room_side(&Server::of(args), args.room.clone(), "probe").await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("lk_bench: probe could not join: {e}");
                std::process::exit(1)
            }
        };
    // wait until our track is published and the far end's audio arrives (up to 20 s)
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut published, mut hearing) = (false, false);
    while !(published && hearing) && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), events.recv()).await {
            Ok(Some(ParticipantEvent::PublisherConnected)) => published = true,
            Ok(Some(ParticipantEvent::TrackSubscribed { .. })) => hearing = true,
            Ok(Some(ParticipantEvent::Disconnected(r))) => {
                eprintln!("lk_bench: probe disconnected: {r}");
                std::process::exit(1)
            }
            Ok(None) => std::process::exit(1),
            _ => {}
        }
    }
    if !(published && hearing) {
        eprintln!(
            "lk_bench: probe: no echo participant in {} (published={published})",
            args.room
        );
        std::process::exit(1)
    }
    // let the echo's first frames settle
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per = ROOM_RATE.samples_per_20ms();
    let frame_s = per as f64 / f64::from(ROOM_RATE.hz());
    let t0 = Instant::now();
    let mut sent: Vec<i16> = Vec::new();
    let mut recv: Vec<i16> = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let frames = pattern.len() / per;
    let mut k = 0usize;
    let end = t0 + Duration::from_secs_f64(args.seconds.max(frames as f64 * frame_s + 1.0));
    loop {
        tokio::select! {
            _ = ticker.tick(), if k < frames => {
                let frame = &pattern[k * per..(k + 1) * per];
                let _ = handle.push_audio(frame);
                let at = t0.elapsed().as_secs_f64() - frame_s;
                place(&mut sent, at, frame);
                k += 1;
            }
            ev = events.recv() => match ev {
                Some(ParticipantEvent::AudioFrame(f)) => {
                    let at = t0.elapsed().as_secs_f64();
                    place(&mut recv, at, &f.samples);
                }
                Some(ParticipantEvent::Disconnected(r)) => {
                    eprintln!("lk_bench: probe disconnected: {r}");
                    break;
                }
                None => break,
                _ => {}
            },
            _ = tokio::time::sleep_until(end.into()) => break,
        }
    }
    let _ = handle.leave(LeaveReason::ClientInitiated).await;
    write_s16(&format!("{}.sent.s16", args.out), &sent);
    write_s16(&format!("{}.recv.s16", args.out), &recv);
    println!(
        "{{\"event\":\"done\",\"frames_sent\":{k},\"seconds\":{:.2},\"rate\":{}}}",
        t0.elapsed().as_secs_f64(),
        ROOM_RATE.hz()
    );
}
