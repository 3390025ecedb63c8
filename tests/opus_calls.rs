//! Calls with a real SIP program that speaks Opus: Debian's baresip with its `opus`
//! module (libopus, its own jitter buffer and RTP stack), offering Opus only. Audio both
//! ways is checked by frequency with wideband tones above 4 kHz that no G.711 leg could
//! carry: at the phone in baresip's own recording of what it decoded (`sndfile`) or in
//! what its player played (an ALSA `file` device, see `PlayerTap`), in the room with the
//! LiveKit Python SDK. A trunk whose codec list leaves Opus out refuses the
//! same offer with 488 and a Warning (sipp, which shows the response on the wire).

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::livekit::LiveKitServer;
use common::roomline::{
    Roomline, Setup, free_media_port, free_port, header, listener_bg, roompeer_bg, sipp, sipp_args,
    tone_agent_bg, wait_participants,
};
use common::{run_roompeer, uac, wait_timeout, within};

const CALLER: &str = "+15551230000";
const CALLED: &str = "+15550100";

/// Audio tests take the CPU they measure with; one at a time.
static MEDIA: Mutex<()> = Mutex::new(());

/// baresip's sample rate toward its player (`auplay_srate`, mono S16LE).
const PLAYER_RATE: u32 = 48_000;

/// `O_NONBLOCK` (Linux, asm-generic/fcntl.h), which std does not name.
const O_NONBLOCK: i32 = 0o4000;

/// What baresip's audio player played, paced like a sound card. The machine has none, and
/// ALSA's `null` device never blocks, so a player writing to it spins a core and is no
/// clock. Instead the player is ALSA's `file` device (`null` as its slave, raw S16LE)
/// writing into a FIFO that this reader drains at `PLAYER_RATE`: a full pipe blocks the
/// player's writes, as a sound card's buffer would. What it read is what baresip played:
/// its decoded audio, or silence when it had none.
struct PlayerTap {
    fifo: PathBuf,
    stop: Arc<AtomicBool>,
    reader: Option<std::thread::JoinHandle<Vec<u8>>>,
}

impl PlayerTap {
    fn start(fifo: &Path) -> PlayerTap {
        let st = Command::new("mkfifo").arg(fifo).status().expect("mkfifo");
        assert!(st.success(), "mkfifo {}", fifo.display());
        // read and write: the open does not wait for a writer, and the player may close
        // and reopen (baresip restarts it on hold) without an end of file here; not
        // blocking: an empty pipe (no player, or baresip gone) never holds the reader
        let mut pipe = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(O_NONBLOCK)
            .open(fifo)
            .expect("open the player's FIFO");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let reader = std::thread::spawn(move || {
            const BYTES_PER_SECOND: f64 = PLAYER_RATE as f64 * 2.0;
            // at most 100 ms of credit: a reader that was blocked does not burst
            const MAX_CREDIT: f64 = BYTES_PER_SECOND / 10.0;
            let mut played = Vec::new();
            let mut buf = [0u8; 9600];
            let mut credit = 0.0;
            let mut last = Instant::now();
            while !stopped.load(Ordering::Relaxed) {
                let now = Instant::now();
                credit = (credit + now.duration_since(last).as_secs_f64() * BYTES_PER_SECOND)
                    .min(MAX_CREDIT);
                last = now;
                let want = (credit as usize).min(buf.len()) & !1;
                if want < 960 {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                match pipe.read(&mut buf[..want]) {
                    Ok(n) => {
                        played.extend_from_slice(&buf[..n]);
                        credit -= n as f64;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(e) => panic!("reading the player's FIFO: {e}"),
                }
            }
            played
        });
        PlayerTap {
            fifo: fifo.to_path_buf(),
            stop,
            reader: Some(reader),
        }
    }

    /// Stops reading; what was read.
    fn stop(&mut self) -> Vec<u8> {
        let Some(reader) = self.reader.take() else {
            return Vec::new();
        };
        self.stop.store(true, Ordering::Relaxed);
        reader.join().expect("player reader")
    }

    /// Stops reading; what was played, as a 48 kHz mono WAV at `wav`.
    fn finish(&mut self, wav: &Path) {
        let played = self.stop();
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: PLAYER_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = hound::WavWriter::create(wav, spec).expect("player WAV");
        for s in played.chunks_exact(2) {
            out.write_sample(i16::from_le_bytes([s[0], s[1]])).unwrap();
        }
        out.finalize().unwrap();
    }
}

impl Drop for PlayerTap {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One baresip process (Debian `baresip-core`): no sound card (its player writes to a
/// `PlayerTap`), `aufile` as the microphone, `sndfile` recording what it encodes and
/// decodes.
struct Baresip {
    child: Child,
    /// (dropped before `dir`, which holds its FIFO)
    player: PlayerTap,
    dir: tempfile::TempDir,
    sip_port: u16,
    /// Its `ctrl_tcp` port (JSON commands in netstrings).
    ctrl_port: u16,
}

impl Baresip {
    /// Starts baresip with one account, `user`, offering only `codecs` (baresip's names,
    /// e.g. `opus/48000/2`), playing `source` (48 kHz mono WAV) and answering calls to
    /// it; it quits after `seconds`. `dial`: a URI to call at start.
    fn start(user: &str, codecs: &str, source: &Path, seconds: u32, dial: Option<&str>) -> Baresip {
        let dir = tempfile::tempdir().expect("tempdir");
        let sip_port = free_port();
        let ctrl_port = free_port();
        let rtp = free_media_port();
        let rec = dir.path().join("rec");
        std::fs::create_dir_all(&rec).unwrap();
        let player = PlayerTap::start(&dir.path().join("player.pipe"));
        let config = format!(
            "poll_method epoll\n\
             sip_listen 127.0.0.1:{sip_port}\n\
             call_local_timeout 120\n\
             audio_player alsa,file:{pipe}\n\
             audio_alert alsa,null\n\
             audio_source aufile,{source}\n\
             ausrc_srate 48000\n\
             auplay_srate 48000\n\
             ausrc_channels 1\n\
             auplay_channels 1\n\
             audio_buffer 100\n\
             rtp_ports {rtp}-{rtp_end}\n\
             jitter_buffer_delay 2-10\n\
             module_path /usr/lib/baresip/modules\n\
             module opus.so\n\
             module g711.so\n\
             module aufile.so\n\
             module alsa.so\n\
             module sndfile.so\n\
             module_tmp account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n\
             snd_path {rec}\n\
             opus_bitrate 32000\n\
             opus_inbandfec yes\n",
            source = source.display(),
            pipe = player.fifo.display(),
            rtp_end = rtp + 3,
            rec = rec.display(),
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(
            dir.path().join("accounts"),
            format!(
                "<sip:{user}@127.0.0.1:{sip_port}>;regint=0;audio_codecs={codecs};answermode=auto\n"
            ),
        )
        .unwrap();
        let mut cmd = Command::new("baresip");
        cmd.arg("-f")
            .arg(dir.path())
            .args(["-n", "127.0.0.1", "-t", &seconds.to_string()]);
        if let Some(uri) = dial {
            cmd.args(["-e", &format!("/dial {uri}")]);
        }
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = cmd
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run baresip ({e}): scripts/install-test-deps installs baresip-core")
            });
        Baresip {
            child,
            player,
            dir,
            sip_port,
            ctrl_port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// Waits until baresip's log shows `needle` (30 s).
    fn wait_log(&self, needle: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !self.log().contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "baresip never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One `ctrl_tcp` command (e.g. `sndcode 5`); its JSON response.
    fn command(&self, command: &str, params: &str) -> serde_json::Value {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.ctrl_port)).expect("ctrl_tcp");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = serde_json::json!({"command": command, "params": params, "token": "t"});
        let body = body.to_string();
        s.write_all(format!("{}:{body},", body.len()).as_bytes())
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).unwrap_or(0);
        let text = String::from_utf8_lossy(&buf[..n]).to_string();
        // the first netstring (LEN ":" JSON ","); events may follow
        let json = text
            .split_once(':')
            .and_then(|(len, rest)| rest.get(..len.parse::<usize>().ok()?))
            .unwrap_or("");
        serde_json::from_str(json).unwrap_or_else(|_| panic!("ctrl_tcp said {text:?}"))
    }

    /// Waits for baresip to quit by itself.
    fn wait(&mut self, limit: Duration) {
        let status = wait_timeout(&mut self.child, limit);
        assert!(status.is_some(), "baresip did not quit:\n{}", self.log());
    }

    /// What its player played during the whole call (after `wait`): a WAV.
    fn played(&mut self) -> PathBuf {
        let wav = self.dir.path().join("played.wav");
        self.player.finish(&wav);
        wav
    }

    /// The digits baresip reported receiving as RFC 4733 telephone-events, in order (its
    /// `received event: 'D' (end=0)` at the start of each event; read after `wait`, its
    /// log is flushed at exit).
    fn received_digits(&self) -> String {
        self.log()
            .split(['\r', '\n'])
            .filter_map(|l| l.strip_prefix("received event: '"))
            .filter_map(|l| l.strip_suffix("' (end=0)"))
            .collect()
    }

    /// baresip's recording of the audio it decoded (what its user heard): the last one
    /// (`sndfile` starts a new file when its filter is set up again). Not after a hold:
    /// see `opus_phone_holds_and_resumes`, which reads `played` instead.
    fn heard(&self) -> PathBuf {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path().join("rec"))
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
            .collect();
        files.sort();
        files
            .pop()
            .unwrap_or_else(|| panic!("baresip recorded nothing:\n{}", self.log()))
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The dominant frequency and tone seconds of a WAV (roompeer's analysis).
fn analyze(wav: &Path) -> (f64, f64, serde_json::Value) {
    let run = run_roompeer(
        ["analyze-wav".to_string(), wav.display().to_string()],
        Duration::from_secs(60),
    );
    let report = run.expect_ok().clone();
    (run.f64("dominant_hz"), run.f64("nonsilent_seconds"), report)
}

/// RTP packets Roomline counted for `codec` and `direction` (ended calls).
fn rtp_packets(rl: &Roomline, codec: &str, direction: &str) -> f64 {
    let (_, text) = rl.get("/metrics").expect("/metrics");
    text.lines()
        .filter(|l| l.starts_with("roomline_rtp_packets_total{"))
        .filter(|l| {
            l.contains(&format!("codec=\"{codec}\""))
                && l.contains(&format!("direction=\"{direction}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The room side of a call: a listener recording `identity` and an agent publishing
/// `room_hz` from when someone subscribes.
struct RoomSide {
    listener: std::thread::JoinHandle<common::PeerRun>,
    publisher: std::thread::JoinHandle<common::PeerRun>,
}

impl RoomSide {
    fn start(lk: &LiveKitServer, room: &str, identity: &str, room_hz: u32) -> RoomSide {
        let listener = roompeer_bg(
            lk,
            "listen",
            &[
                "--room",
                room,
                "--identity",
                "listener",
                "--seconds",
                "30",
                "--from-identity",
                identity,
                "--wait-timeout",
                "60",
            ],
        );
        let publisher = roompeer_bg(
            lk,
            "publish-tone",
            &[
                "--room",
                room,
                "--identity",
                "agent",
                "--freq",
                &room_hz.to_string(),
                "--seconds",
                "8",
                "--frame-ms",
                "20",
                "--wait-timeout",
                "60",
            ],
        );
        wait_participants(lk, room, Duration::from_secs(30), |ps| {
            ps.iter().any(|p| p["identity"] == "listener")
                && ps.iter().any(|p| p["identity"] == "agent")
        });
        RoomSide {
            listener,
            publisher,
        }
    }

    /// Both directions after the call: the phone heard `room_hz`, the room `phone_hz`.
    fn check(self, phone: &Baresip, phone_hz: u32, room_hz: u32) {
        let log = phone.log();
        assert!(
            log.contains("Call established") && log.contains("Set audio decoder: opus"),
            "baresip did not talk Opus:\n{log}"
        );
        // the phone heard the room's tone (baresip's Opus decoder and recorder)
        let (hz, seconds, a) = analyze(&phone.heard());
        println!("the phone heard {hz} Hz for {seconds} s");
        assert!(
            within(hz, f64::from(room_hz), 0.02),
            "the phone heard {hz} Hz: {a}"
        );
        assert!(seconds >= 4.0, "the phone heard too little: {a}");
        // the room heard the phone's tone
        let heard_room = self.listener.join().unwrap();
        let r = heard_room.expect_ok().clone();
        let hz = heard_room.f64("dominant_hz");
        let seconds = heard_room.f64("nonsilent_seconds");
        println!("the room heard {hz} Hz for {seconds} s");
        assert!(
            within(hz, f64::from(phone_hz), 0.02),
            "the room heard {hz} Hz: {r}"
        );
        assert!(seconds >= 5.0, "the room heard too little: {r}");
        let _ = self.publisher.join();
    }
}

/// Roomline counted Opus RTP both ways (ended calls).
fn assert_opus_rtp(rl: &Roomline) {
    assert!(
        rtp_packets(rl, "opus", "rx") > 200.0 && rtp_packets(rl, "opus", "tx") > 200.0,
        "Roomline counted no Opus RTP:\n{}",
        rl.get("/metrics").map(|(_, t)| t).unwrap_or_default()
    );
}

/// `roomline_media_frames_total` for `direction` and `path` (reported about once a
/// second during a call, and at its end).
fn media_frames(rl: &Roomline, direction: &str, path: &str) -> f64 {
    let (_, text) = rl.get("/metrics").expect("/metrics");
    text.lines()
        .filter(|l| l.starts_with("roomline_media_frames_total{"))
        .filter(|l| {
            l.contains(&format!("direction=\"{direction}\""))
                && l.contains(&format!("path=\"{path}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits (30 s) until `media_frames` for `direction` and `path` reaches `at_least`.
fn wait_media_frames(rl: &Roomline, direction: &str, path: &str, at_least: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let n = media_frames(rl, direction, path);
        if n >= at_least {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{direction} {path}: {n} frames, waited for {at_least}:\n{}",
            rl.get("/metrics").map(|(_, t)| t).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Passthrough (issue 19 part 2): baresip calls in with Opus only while one agent
/// talks: the phone's packets reach the room as they came and the agent's reach the
/// phone as they came (the metric says so, and the tones arrive at their frequencies
/// both ways); then a second agent talks and the phone hears both at once, mixed and
/// encoded by Roomline (the metric's transcoded frames toward the phone grow).
#[test]
fn opus_passthrough_switches_to_mixing_when_a_second_voice_talks() {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let (phone_hz, room_hz, second_hz) = (5000, 6000, 3000);
    let room = "opus-pass";
    let lk = LiveKitServer::start();
    let plan = format!(
        "rules:\n  - name: phone\n    match:\n      called: \"{CALLED}\"\n    room: {room}\n"
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let dir = tempfile::tempdir().unwrap();
    let play = common::tone_wav(dir.path(), phone_hz, 48_000, 40);
    let identity = format!("sip_{CALLER}");
    let listener = listener_bg(&lk, room, &identity, 30);
    let agent = tone_agent_bg(&lk, room, "agent", room_hz, 24);
    wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "listener")
            && ps.iter().any(|p| p["identity"] == "agent")
    });
    let target = format!("sip:{CALLED}@{}", rl.sip_addr());
    let mut phone = Baresip::start(CALLER, "opus/48000/2", &play, 24, Some(&target));
    phone.wait_log("Call established");
    // one voice: passthrough both ways (2 s of frames each way)
    wait_media_frames(&rl, "to_phone", "passthrough", 100.0);
    wait_media_frames(&rl, "to_room", "passthrough", 100.0);
    let transcoded_before = media_frames(&rl, "to_phone", "transcoded");
    // a second voice: the phone gets the mix
    let second = tone_agent_bg(&lk, room, "agent2", second_hz, 6);
    wait_media_frames(&rl, "to_phone", "transcoded", transcoded_before + 100.0);
    phone.wait(Duration::from_secs(90));
    let second = second.join().unwrap();
    second.expect_ok();
    // the phone heard the agent alone, then both at once
    let heard = phone.heard();
    let (hz, seconds, a) = analyze(&heard);
    println!("the phone heard {hz} Hz for {seconds} s");
    assert!(
        within(hz, f64::from(room_hz), 0.02),
        "the phone heard {hz} Hz: {a}"
    );
    let both = run_roompeer(
        [
            "analyze-wav".to_string(),
            heard.display().to_string(),
            "--tones".into(),
            format!("{room_hz},{second_hz}"),
        ],
        Duration::from_secs(60),
    );
    let presence = &both.expect_ok()["presence"];
    println!("the phone heard: {presence}");
    let together = presence["all_present_20ms"].as_u64().unwrap_or(0);
    assert!(
        together >= 100,
        "both voices at once for {together} steps of 20 ms: {presence}"
    );
    // the room heard the phone's tone, passed through
    let heard_room = listener.join().unwrap();
    let r = heard_room.expect_ok().clone();
    let hz = heard_room.f64("dominant_hz");
    println!(
        "the room heard {hz} Hz for {} s",
        heard_room.f64("nonsilent_seconds")
    );
    assert!(
        within(hz, f64::from(phone_hz), 0.02),
        "the room heard {hz} Hz: {r}"
    );
    let _ = agent.join();
    rl.assert_no_leaks(Duration::from_secs(20));
    let to_room = media_frames(&rl, "to_room", "passthrough");
    assert!(
        to_room > 500.0,
        "{to_room} frames of the phone passed to the room"
    );
}

/// A trunk `phone` toward `phone` (baresip) whose codecs are `[opus, pcmu]`.
fn trunk_to(phone: &Baresip) -> String {
    format!(
        "outbound:\n  address: 127.0.0.1:{}\n  from_number: \"{CALLER}\"\ncodecs: [opus, pcmu]\n",
        phone.sip_port
    )
}

/// Roomline calls `CALLED` through trunk `phone` into `room` as `identity`, placed with
/// CreateSIPParticipant by LiveKit's Python server SDK; returns once it is answered.
fn call_out(lk: &LiveKitServer, rl: &Roomline, room: &str, identity: &str) {
    let req = serde_json::json!({
        "sip_trunk_id": "phone",
        "sip_call_to": CALLED,
        "room_name": room,
        "participant_identity": identity,
        "wait_until_answered": true,
    });
    let script = common::repo_root().join("tests/peers/sipclient.py");
    let args = [
        "create".to_string(),
        "--url".into(),
        format!("http://127.0.0.1:{}", rl.http_port),
        "--api-key".into(),
        lk.api_key().into(),
        "--api-secret".into(),
        lk.api_secret().into(),
        "--request".into(),
        req.to_string(),
    ];
    let run = common::run_peer(
        &common::python(),
        &[script.as_os_str()],
        &args,
        Duration::from_secs(60),
    );
    assert_eq!(run.json["ok"], true, "{}", run.describe());
}

/// baresip calls in offering Opus only (the default trunk codecs include Opus): 5 kHz
/// from the phone reaches the room, 6 kHz from the room reaches the phone (both beyond
/// G.711's 4 kHz), over Opus both ways.
#[test]
fn opus_phone_calls_in_with_wideband_audio_both_ways() {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let (phone_hz, room_hz) = (5000, 6000);
    let room = "opus-in";
    let lk = LiveKitServer::start();
    let plan = format!(
        "rules:\n  - name: phone\n    match:\n      called: \"{CALLED}\"\n    room: {room}\n"
    );
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let dir = tempfile::tempdir().unwrap();
    let play = common::tone_wav(dir.path(), phone_hz, 48_000, 20);
    let side = RoomSide::start(&lk, room, &format!("sip_{CALLER}"), room_hz);
    let target = format!("sip:{CALLED}@{}", rl.sip_addr());
    let mut phone = Baresip::start(CALLER, "opus/48000/2", &play, 10, Some(&target));
    phone.wait(Duration::from_secs(60));
    side.check(&phone, phone_hz, room_hz);
    rl.assert_no_leaks(Duration::from_secs(20));
    assert_opus_rtp(&rl);
}

/// Roomline calls baresip (Opus only) through a trunk whose codecs are `[opus, pcmu]`,
/// placed with CreateSIPParticipant by LiveKit's Python server SDK: wideband audio both
/// ways over Opus, as inbound.
#[test]
fn opus_phone_is_called_out_with_wideband_audio_both_ways() {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let (phone_hz, room_hz) = (5000, 6000);
    let room = "opus-out";
    let lk = LiveKitServer::start();
    let dir = tempfile::tempdir().unwrap();
    let play = common::tone_wav(dir.path(), phone_hz, 48_000, 30);
    let mut phone = Baresip::start(CALLED, "opus/48000/2", &play, 18, None);
    let rl = Roomline::start(Setup::new(&lk).trunk("phone", &trunk_to(&phone)));
    let side = RoomSide::start(&lk, room, "opus-phone", room_hz);
    call_out(&lk, &rl, room, "opus-phone");
    phone.wait(Duration::from_secs(60));
    side.check(&phone, phone_hz, room_hz);
    rl.assert_no_leaks(Duration::from_secs(20));
    assert_opus_rtp(&rl);
}

/// DTMF from an Opus phone: baresip offers `telephone-event/8000` next to Opus (as many
/// PBXs do), which Roomline takes. Digits pressed on the phone (ctrl_tcp `sndcode`)
/// reach the room as `sip_dtmf_received`, in order. (Room -> phone:
/// `opus_phone_receives_dtmf_from_the_room`.)
#[test]
fn opus_phone_dtmf_reaches_the_room() {
    let room = "opus-dtmf";
    let lk = LiveKitServer::start();
    let plan = format!("rules:\n  - name: phone\n    room: {room}\n");
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let dir = tempfile::tempdir().unwrap();
    let play = common::tone_wav(dir.path(), 1000, 48_000, 30);
    let identity = format!("sip_{CALLER}");
    let observer = roompeer_bg(
        &lk,
        "session",
        &[
            "--room",
            room,
            "--identity",
            "observer",
            "--seconds",
            "60",
            "--until-dtmf",
            "3",
        ],
    );
    wait_participants(&lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == "observer")
    });
    let target = format!("sip:{CALLED}@{}", rl.sip_addr());
    let mut phone = Baresip::start(CALLER, "opus/48000/2", &play, 16, Some(&target));
    phone.wait_log("Call established");
    std::thread::sleep(Duration::from_millis(1500));
    for digit in ["1", "5", "9"] {
        let r = phone.command("sndcode", digit);
        assert_eq!(r["ok"], true, "{r}");
        std::thread::sleep(Duration::from_millis(600));
    }
    phone.wait(Duration::from_secs(60));
    let seen = observer.join().unwrap();
    let report = seen.expect_ok();
    let digits: Vec<&str> = report["dtmf_received"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| d["from_identity"] == identity.as_str())
                .filter_map(|d| d["digit"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(digits, ["1", "5", "9"], "{report}");
    rl.assert_no_leaks(Duration::from_secs(20));
}

/// Digits a room participant sends (`publish_dtmf`) while the room's tone plays reach
/// an Opus phone as RFC 4733 telephone-events (on `telephone-event/8000`, which baresip
/// offers or answers next to Opus): baresip reports each, in order. Both call directions:
/// baresip's offer and its answer to Roomline's offer negotiate the event payload type
/// differently.
#[test]
fn opus_phone_receives_dtmf_from_the_room() {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    for outbound in [false, true] {
        let room = if outbound {
            "opus-dtmf-out"
        } else {
            "opus-dtmf-in"
        };
        let lk = LiveKitServer::start();
        let dir = tempfile::tempdir().unwrap();
        let play = common::tone_wav(dir.path(), 1000, 48_000, 30);
        let (mut phone, rl, identity) = if outbound {
            let phone = Baresip::start(CALLED, "opus/48000/2", &play, 20, None);
            let rl = Roomline::start(Setup::new(&lk).trunk("phone", &trunk_to(&phone)));
            (phone, rl, "opus-phone".to_string())
        } else {
            let plan = format!("rules:\n  - name: phone\n    room: {room}\n");
            let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
            let target = format!("sip:{CALLED}@{}", rl.sip_addr());
            let phone = Baresip::start(CALLER, "opus/48000/2", &play, 20, Some(&target));
            (phone, rl, format!("sip_{CALLER}"))
        };
        // the room's voice toward the phone: the events take the place of its audio
        let voice = tone_agent_bg(&lk, room, "agent", 6000, 12);
        let keypad = roompeer_bg(
            &lk,
            "session",
            &[
                "--room",
                room,
                "--identity",
                "keypad",
                "--seconds",
                "60",
                "--wait-for-identity",
                &identity,
                "--send-dtmf",
                "159#",
                "--dtmf-interval",
                "0.5",
                // stays until the call's participant is gone: leaving right after the
                // last publish_dtmf may take that digit along
                "--until-left",
                &identity,
            ],
        );
        if outbound {
            call_out(&lk, &rl, room, &identity);
        }
        phone.wait(Duration::from_secs(60));
        let sent = keypad.join().unwrap();
        assert_eq!(
            sent.expect_ok()["dtmf_sent"].as_array().map(Vec::len),
            Some(4),
            "{}",
            sent.describe()
        );
        let _ = voice.join();
        assert_eq!(
            phone.received_digits(),
            "159#",
            "baresip's digits (outbound {outbound}):\n{}\n{}",
            phone.log(),
            rl.log_tail(40)
        );
        rl.assert_no_leaks(Duration::from_secs(20));
    }
}

/// Hold and resume from an Opus phone (baresip's re-INVITEs: `a=sendonly`, answered
/// `a=recvonly`, then `a=sendrecv`), Opus kept throughout. The room side (its listener
/// and the agent publishing `room_hz`) joins only after the resume, so the tone each side
/// hears went through the resumed call: the room hears the phone, and the phone's player
/// plays the room's tone.
///
/// The phone's side is read from its player (`PlayerTap`), not from `sndfile`: in baresip
/// 1.0.0 `sndfile`'s decode recording ends at the hold for the rest of the call. The hold's
/// answer makes the stream sendonly, so `audio_decoder_set` resets the receive side
/// (src/audio.c:1828 `reset |= sdp_media_dir(m)!=SDP_SENDRECV`), which flushes the
/// decode filter chain (1857 `list_flush(&rx->filtl)`) and calls `audio_start`, whose
/// `aufilt_setup` adds no filter while the encode chain is non-empty (1348
/// `if (!list_isempty(&tx->filtl) || !list_isempty(&rx->filtl)) return 0;`), and the
/// encode chain is flushed only when the call stops. The resume's answer (sendrecv, same
/// codec) resets nothing (no "player started" after it), and the player started at the
/// hold goes on playing what is decoded. Fixed upstream in baresip 2.0.0 (commit 0669c841
/// "audio: fix aufilt_setup update handling").
#[test]
fn opus_phone_holds_and_resumes() {
    let _media = MEDIA.lock().unwrap_or_else(|e| e.into_inner());
    let (phone_hz, room_hz) = (5000, 6000);
    let room = "opus-hold";
    let lk = LiveKitServer::start();
    let plan = format!("rules:\n  - name: phone\n    room: {room}\n");
    let rl = Roomline::start(Setup::new(&lk).dialplan("main", &plan));
    let dir = tempfile::tempdir().unwrap();
    let play = common::tone_wav(dir.path(), phone_hz, 48_000, 40);
    let target = format!("sip:{CALLED}@{}", rl.sip_addr());
    let mut phone = Baresip::start(CALLER, "opus/48000/2", &play, 24, Some(&target));
    phone.wait_log("Call established");
    let r = phone.command("hold", "");
    assert_eq!(r["ok"], true, "{r}");
    // our answers to its re-INVITEs (the first answer was sendrecv too)
    let answered = |direction: &str, count: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while rl
            .log()
            .lines()
            .filter(|l| l.contains("SDP offer answered") && l.contains(direction))
            .count()
            < count
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no {direction} answer:\n{}\n{}",
                rl.log_tail(40),
                phone.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    answered("direction=RecvOnly", 1);
    let r = phone.command("resume", "");
    assert_eq!(r["ok"], true, "{r}");
    answered("direction=SendRecv", 2);
    let side = RoomSide::start(&lk, room, &format!("sip_{CALLER}"), room_hz);
    phone.wait(Duration::from_secs(60));
    // the room heard the phone through the resumed call (its listener joined after it)
    let heard_room = side.listener.join().unwrap();
    let r = heard_room.expect_ok().clone();
    let hz = heard_room.f64("dominant_hz");
    assert!(
        within(hz, f64::from(phone_hz), 0.02),
        "the room heard {hz} Hz: {r}"
    );
    assert!(
        heard_room.f64("nonsilent_seconds") >= 5.0,
        "the room heard too little: {r}"
    );
    let _ = side.publisher.join();
    // the phone played the room's tone, which the room sent only after the resume
    let (hz, seconds, a) = analyze(&phone.played());
    println!("the phone played {hz} Hz for {seconds} s");
    assert!(
        within(hz, f64::from(room_hz), 0.02),
        "the phone played {hz} Hz: {a}\n{}",
        phone.log()
    );
    assert!(seconds >= 4.0, "the phone played too little: {a}");
    rl.assert_no_leaks(Duration::from_secs(20));
    assert_opus_rtp(&rl);
}

/// A trunk whose `codecs` leave Opus out answers an Opus-only offer with 488 and a
/// Warning naming what it takes; the same offer to a trunk listing Opus is not refused.
#[test]
fn a_trunk_without_opus_refuses_an_opus_only_offer_with_488() {
    let lk = LiveKitServer::start();
    let plan = "rules:\n  - name: phone\n    room: opus-refused\n";
    let rl = Roomline::start(
        Setup::new(&lk)
            .trunk(
                "local",
                "inbound:\n  allowed_addresses: [127.0.0.1/32]\ncodecs: [pcmu, pcma]\n",
            )
            .dialplan("main", plan),
    );
    let opus_only = uac::uac_refused(CALLER, 488).replace(
        "m=audio [media_port] RTP/AVP 0 101\n      a=rtpmap:0 PCMU/8000\n      a=rtpmap:101 telephone-event/8000",
        "m=audio [media_port] RTP/AVP 111 101\n      a=rtpmap:111 opus/48000/2\n      a=fmtp:111 useinbandfec=1;stereo=1\n      a=rtpmap:101 telephone-event/48000",
    );
    assert!(opus_only.contains("opus/48000/2"), "{opus_only}");
    let mut args = sipp_args(&rl.sip_addr(), false);
    args.extend(["-s".into(), CALLED.into(), "-mi".into(), "127.0.0.1".into()]);
    args.extend(["-mp".into(), free_media_port().to_string()]);
    let run = sipp(Some(&opus_only), &args, Duration::from_secs(60));
    run.expect_success();
    let refusal = run.first_received("SIP/2.0 488");
    let warning = header(&refusal, "Warning").unwrap_or_else(|| panic!("no Warning:\n{refusal}"));
    assert!(
        warning.starts_with("305 ") && warning.contains("pcmu, pcma"),
        "{warning}"
    );
    rl.assert_no_leaks(Duration::from_secs(20));
}
