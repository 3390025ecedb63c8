//! The real `roomline run` daemon for integration tests, and the SIP-side peers around it:
//! [`Roomline`] writes a configuration (trunks and dialplans given by the test, SIP and
//! HTTP on free ports of 127.0.0.1 or another loopback address, its own RTP range),
//! starts the binary, waits for `/health`, and stops it by PID when dropped (printing its
//! log tail when the test failed).
//! [`sipp`] runs the Debian `sipp` with a scenario and keeps its message trace;
//! [`RtpPeer`] is a phone's RTP socket in the test: it sends tones and records what the
//! daemon sends. `room_service` calls LiveKit's RoomService (DeleteRoom, RemoveParticipant,
//! ListParticipants) with an admin token.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::livekit::LiveKitServer;
use super::{stop_child, tail_file, wait_timeout};

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
/// Where the next `rtp_range` starts looking (spread further by the process id).
static NEXT_RTP: AtomicU16 = AtomicU16::new(0);

/// A port free for both UDP and TCP on 127.0.0.1, not handed out before in this process.
pub fn free_port() -> u16 {
    let mut used = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if !used.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
}

/// A base port P for sipp's `-mp`, with P..=P+3 free on 127.0.0.1 and none handed out
/// before in this process. sipp binds its audio socket on P and its video socket on P+2,
/// and exits at once ("Unable to bind video RTP socket") when either is taken, so the
/// phone never calls: `free_port` checks P alone, and P+2 may belong to anything on the
/// machine.
pub fn free_media_port() -> u16 {
    let mut used = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let base = u.local_addr().unwrap().port();
        drop(u);
        let Some(ports) = (0..4)
            .map(|i| base.checked_add(i))
            .collect::<Option<Vec<u16>>>()
        else {
            continue;
        };
        let free = ports.iter().all(|&p| {
            !used.contains(&p)
                && UdpSocket::bind(("127.0.0.1", p)).is_ok()
                && TcpListener::bind(("127.0.0.1", p)).is_ok()
        });
        if free {
            used.extend(ports);
            return base;
        }
    }
}

/// RTP range slots: 200 ports each from 20000 up, below Linux's ephemeral ports.
const RTP_SLOTS: u32 = 60;

/// An RTP range for one daemon, with its slot's lock held (a lock file in the temp
/// directory, `File::try_lock`): no two daemons of the test harness on this machine share
/// a range while both run, whatever binary or worktree started them. (Ranges picked from
/// a per-process counter collided between test processes; a daemon then found the other's
/// pairs taken and, after 8 in a row, refused the call for want of RTP ports.) The lock
/// goes with the file: when the `Roomline` drops, or the test process dies.
fn rtp_range() -> ((u16, u16), File) {
    let dir = std::env::temp_dir().join("roomline-test-rtp-slots");
    std::fs::create_dir_all(&dir).expect("RTP slot lock directory");
    let first = u32::from(NEXT_RTP.fetch_add(1, Ordering::Relaxed)) + std::process::id();
    for i in 0..RTP_SLOTS {
        let slot = (first + i) % RTP_SLOTS;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(format!("{slot}.lock")))
            .expect("RTP slot lock file");
        if file.try_lock().is_ok() {
            let start = 20000 + slot as u16 * 200;
            return ((start, start + 198), file);
        }
    }
    panic!("all {RTP_SLOTS} RTP port ranges are held by running test daemons");
}

/// The daemon binary: `$ROOMLINE_BIN` if set, else the one cargo built for this test
/// (`CARGO_BIN_EXE_roomline`). Worktrees sharing one target directory overwrite each
/// other's `target/debug/roomline`; the variable pins the binary a run exercises.
pub fn daemon_binary() -> PathBuf {
    std::env::var_os("ROOMLINE_BIN")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_roomline")))
}

/// What the daemon under test is configured with.
pub struct Setup {
    pub livekit_url: String,
    pub api_key: String,
    pub api_secret: String,
    /// `trunks/<name>.yaml` contents.
    pub trunks: Vec<(String, String)>,
    /// `dialplans/<name>.yaml` contents.
    pub dialplans: Vec<(String, String)>,
    /// Extra lines of the `sip:` section (indented two spaces), e.g. a TLS listener.
    pub sip_extra: String,
    /// Extra lines of the `rtp:` section.
    pub rtp_extra: String,
    /// Extra lines of the `livekit:` section (indented two spaces).
    pub livekit_extra: String,
    /// Lines of the `limits:` section.
    pub limits: String,
    /// `LOG_LEVEL` for the daemon.
    pub log_level: String,
    /// Lines of the `logging:` section, e.g. `  format: json\n`.
    pub logging: String,
    /// The loopback address the SIP and HTTP listeners bind (default 127.0.0.1); give
    /// each of several daemons its own (127.0.0.2, 127.0.0.3, ...) to tell them apart.
    pub bind_ip: String,
    /// Extra environment of the daemon (e.g. `NOTIFY_SOCKET` for a test's socket).
    pub env: Vec<(String, String)>,
}

impl Setup {
    /// A daemon against `lk` with one trunk `local` accepting 127.0.0.1 and the given rules.
    pub fn new(lk: &LiveKitServer) -> Setup {
        Setup {
            livekit_url: lk.url(),
            api_key: lk.api_key().into(),
            api_secret: lk.api_secret().into(),
            trunks: vec![(
                "local".into(),
                "inbound:\n  allowed_addresses: [127.0.0.1/32]\n".into(),
            )],
            dialplans: Vec::new(),
            sip_extra: String::new(),
            rtp_extra: String::new(),
            livekit_extra: String::new(),
            limits: String::new(),
            log_level: "info,roomline=debug".into(),
            logging: String::new(),
            bind_ip: "127.0.0.1".into(),
            env: Vec::new(),
        }
    }

    /// Binds SIP and HTTP on `ip` (a 127.0.0.0/8 address) instead of 127.0.0.1.
    pub fn bind_ip(mut self, ip: &str) -> Setup {
        self.bind_ip = ip.into();
        self
    }

    /// Sets an environment variable for the daemon.
    pub fn env(mut self, key: &str, value: &str) -> Setup {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn trunk(mut self, name: &str, yaml: &str) -> Setup {
        self.trunks.retain(|(n, _)| n != name);
        self.trunks.push((name.into(), yaml.into()));
        self
    }

    pub fn dialplan(mut self, name: &str, yaml: &str) -> Setup {
        self.dialplans.push((name.into(), yaml.into()));
        self
    }

    pub fn sip_extra(mut self, lines: &str) -> Setup {
        self.sip_extra.push_str(lines);
        self
    }

    pub fn livekit_extra(mut self, lines: &str) -> Setup {
        self.livekit_extra.push_str(lines);
        self
    }

    pub fn rtp_extra(mut self, lines: &str) -> Setup {
        self.rtp_extra.push_str(lines);
        self
    }

    pub fn limits(mut self, lines: &str) -> Setup {
        self.limits.push_str(lines);
        self
    }

    pub fn logging(mut self, lines: &str) -> Setup {
        self.logging.push_str(lines);
        self
    }

    /// `LOG_LEVEL` for the daemon (default `info,roomline=debug`, which shows numbers
    /// in full: `info` masks them).
    pub fn log_level(mut self, level: &str) -> Setup {
        self.log_level = level.into();
        self
    }
}

/// A running `roomline run`.
pub struct Roomline {
    child: Child,
    dir: tempfile::TempDir,
    /// The address SIP and HTTP listen on (`Setup::bind_ip`).
    pub ip: String,
    pub sip_port: u16,
    pub http_port: u16,
    pub rtp_ports: (u16, u16),
    /// The lock of the RTP range's slot, held while this daemon may run (`rtp_range`).
    _rtp_slot: File,
    log: PathBuf,
    config: PathBuf,
    log_level: String,
    env: Vec<(String, String)>,
}

/// Starts `roomline run` on `config`, its stderr to `log` (appended to with `append`).
fn spawn_daemon(
    config: &Path,
    log: &Path,
    log_level: &str,
    env: &[(String, String)],
    append: bool,
) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(append)
        .write(true)
        .truncate(!append)
        .open(log)
        .unwrap();
    Command::new(daemon_binary())
        .args(["run", "--config"])
        .arg(config)
        .env_remove("LIVEKIT_URL")
        .env_remove("LIVEKIT_API_KEY")
        .env_remove("LIVEKIT_API_SECRET")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("STATE_DIRECTORY")
        .env("LOG_LEVEL", log_level)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start roomline")
}

impl Roomline {
    pub fn start(setup: Setup) -> Roomline {
        let dir = tempfile::tempdir().expect("tempdir");
        let sip_port = free_port();
        let http_port = free_port();
        let (rtp_ports, rtp_slot) = rtp_range();
        for sub in ["trunks", "dialplans"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        for (name, yaml) in &setup.trunks {
            std::fs::write(dir.path().join("trunks").join(format!("{name}.yaml")), yaml).unwrap();
        }
        for (name, yaml) in &setup.dialplans {
            std::fs::write(
                dir.path().join("dialplans").join(format!("{name}.yaml")),
                yaml,
            )
            .unwrap();
        }
        let ip = &setup.bind_ip;
        let limits = if setup.limits.is_empty() {
            String::new()
        } else {
            format!("limits:\n{}", setup.limits)
        };
        let logging = if setup.logging.is_empty() {
            String::new()
        } else {
            format!("logging:\n{}", setup.logging)
        };
        let yaml = format!(
            "livekit:\n  url: {}\n  api_key: {}\n  api_secret: {}\n{}\
             sip:\n  listeners:\n    - transport: udp\n      address: {ip}:{sip_port}\n\
             \x20   - transport: tcp\n      address: {ip}:{sip_port}\n{}\
             rtp:\n  port_range: {}-{}\n{}\
             http:\n  listen: {ip}:{http_port}\n{limits}{logging}",
            setup.livekit_url,
            setup.api_key,
            setup.api_secret,
            setup.livekit_extra,
            setup.sip_extra,
            rtp_ports.0,
            rtp_ports.1,
            setup.rtp_extra,
        );
        let config = dir.path().join("roomline.yaml");
        std::fs::write(&config, &yaml).unwrap();
        let ip = setup.bind_ip.clone();
        let log = dir.path().join("roomline.log");
        let child = spawn_daemon(&config, &log, &setup.log_level, &setup.env, false);
        let mut r = Roomline {
            child,
            log_level: setup.log_level.clone(),
            env: setup.env.clone(),
            dir,
            ip,
            sip_port,
            http_port,
            rtp_ports,
            _rtp_slot: rtp_slot,
            log,
            config,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(st)) = r.child.try_wait() {
                panic!(
                    "roomline exited during start ({st}); config:\n{yaml}\nlog:\n{}",
                    r.log_tail(40)
                );
            }
            if r.get("/health").is_some_and(|(s, _)| s == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "roomline not ready in 20 s:\n{}",
                r.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `<ip>:<sip port>` (`127.0.0.1:<sip port>` unless `Setup::bind_ip` said otherwise).
    pub fn sip_addr(&self) -> String {
        format!("{}:{}", self.ip, self.sip_port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.config
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, n: usize) -> String {
        tail_file(&self.log, n)
    }

    /// GET on the HTTP listener: (status, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = TcpStream::connect((self.ip.as_str(), self.http_port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.ip
        )
        .ok()?;
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp.split_whitespace().nth(1)?.parse().ok()?;
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    }

    /// `calls` of /health/detailed: active, rtp_ports_in_use, participants, tasks.
    pub fn counts(&self) -> serde_json::Value {
        let (_, body) = self.get("/health/detailed").expect("/health/detailed");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        v["calls"].clone()
    }

    /// The value of one metric sample in /metrics (`name{labels}`), if present.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        let (_, text) = self.get("/metrics").expect("/metrics");
        text.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits until no call, RTP port or participant is held (every call task gone too);
    /// panics with the counts and the log otherwise.
    pub fn assert_no_leaks(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let c = self.counts();
            let zero = |k: &str| c[k].as_u64() == Some(0);
            if zero("active") && zero("rtp_ports_in_use") && zero("participants") && zero("tasks") {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "calls leaked resources after {within:?}: {c}\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for a log line containing `needle`; returns the line.
    pub fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.log().lines().find(|l| l.contains(needle)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} within {within:?}:\n{}",
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, sig: &str) {
        assert!(super::send_signal(self.child.id(), sig), "kill -{sig}");
    }

    /// SIGKILLs the daemon (a crash: nothing is cleaned up) and starts it again on the same
    /// configuration and ports, its log appended to the same file; returns once it is
    /// healthy again.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = spawn_daemon(&self.config, &self.log, &self.log_level, &self.env, true);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get("/health").is_none_or(|(s, _)| s != 200) {
            assert!(
                Instant::now() < deadline,
                "roomline not ready again in 20 s:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the process to exit; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        wait_timeout(&mut self.child, limit).and_then(|s| s.code())
    }
}

impl Drop for Roomline {
    fn drop(&mut self) {
        let running = matches!(self.child.try_wait(), Ok(None));
        if running {
            stop_child(&mut self.child, Duration::from_secs(10));
        }
        if std::thread::panicking() {
            eprintln!("---- roomline log (tail) ----\n{}", self.log_tail(80));
        }
        if std::env::var_os("ROOMLINE_KEEP_LOGS").is_some() {
            let keep = self.dir.path().to_path_buf();
            eprintln!("roomline logs kept in {}", keep.display());
            std::mem::forget(std::mem::replace(
                &mut self.dir,
                tempfile::tempdir().expect("tempdir"),
            ));
        }
    }
}

/// The result of one sipp run.
pub struct SippRun {
    /// None when killed on timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    /// The `-trace_msg` log: every message sent and received.
    pub messages: String,
    pub args: Vec<String>,
}

impl SippRun {
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Status codes of responses sipp received, in order.
    pub fn received_statuses(&self) -> Vec<u16> {
        received_messages(&self.messages)
            .iter()
            .filter_map(|m| {
                m.strip_prefix("SIP/2.0 ")
                    .and_then(|r| r.get(..3))
                    .and_then(|c| c.parse().ok())
            })
            .collect()
    }

    /// Messages sipp received (each as text).
    pub fn received(&self) -> Vec<String> {
        received_messages(&self.messages)
    }

    /// The final statuses (>= 200) in what sipp received.
    pub fn finals(&self) -> Vec<u16> {
        self.received_statuses()
            .into_iter()
            .filter(|s| *s >= 200)
            .collect()
    }

    /// The first message sipp received whose start line begins with `start` (e.g.
    /// `"BYE "`, `"SIP/2.0 503"`); panics with the run's description if there is none.
    pub fn first_received(&self, start: &str) -> String {
        self.received()
            .into_iter()
            .find(|m| m.starts_with(start))
            .unwrap_or_else(|| panic!("sipp received no {start:?}:\n{}", self.describe()))
    }

    pub fn describe(&self) -> String {
        format!(
            "sipp {:?}\nstatus: {:?}\nstdout (tail):\n{}\nstderr (tail):\n{}\nmessages (tail):\n{}",
            self.args,
            self.status,
            last(&self.stdout, 15),
            last(&self.stderr, 15),
            last(&self.messages, 80)
        )
    }

    pub fn expect_success(&self) {
        assert!(self.success(), "sipp failed:\n{}", self.describe());
    }
}

fn last(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// The received messages of a sipp `-trace_msg` file: each block starts with a line of
/// dashes and the date, then "UDP message received [N] bytes :".
fn received_messages(trace: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    let mut header_next = false;
    for line in trace.lines() {
        if line.starts_with("----------") {
            if let Some(m) = cur.take() {
                out.push(m.trim().to_string());
            }
            header_next = true;
            continue;
        }
        if header_next {
            header_next = false;
            if line.contains("message received") {
                cur = Some(String::new());
            }
            continue;
        }
        if let Some(m) = cur.as_mut() {
            m.push_str(line.trim_end_matches('\r'));
            m.push('\n');
        }
    }
    if let Some(m) = cur.take() {
        out.push(m.trim().to_string());
    }
    out.retain(|m| !m.is_empty());
    out
}

/// A sipp process started in the background.
pub struct Sipp {
    child: Child,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

impl Sipp {
    /// Starts `sipp ARGS` with `scenario` (XML text) as `-sf`, `-trace_msg`, `-nostdin`.
    pub fn spawn(scenario: Option<&str>, args: &[String]) -> Sipp {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut all: Vec<String> = Vec::new();
        if let Some(xml) = scenario {
            let sf = dir.path().join("scenario.xml");
            std::fs::write(&sf, xml).unwrap();
            all.push("-sf".into());
            all.push(sf.display().to_string());
        }
        all.extend(args.iter().cloned());
        all.extend(
            [
                "-nostdin",
                "-trace_msg",
                "-message_file",
                &dir.path().join("messages.log").display().to_string(),
                "-trace_err",
                "-error_file",
                &dir.path().join("errors.log").display().to_string(),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let child = Command::new("sipp")
            .args(&all)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).unwrap())
            .stderr(File::create(dir.path().join("stderr")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run sipp: {e}: {}", super::INSTALL_HINT));
        Sipp {
            child,
            dir,
            args: all,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for sipp to end (killing it after `timeout`).
    pub fn wait(mut self, timeout: Duration) -> SippRun {
        let status = wait_timeout(&mut self.child, timeout);
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        let mut stderr = read("stderr");
        let errors = read("errors.log");
        if !errors.is_empty() {
            stderr.push_str("\n-- errors.log --\n");
            stderr.push_str(&errors);
        }
        SippRun {
            status,
            stdout: read("stdout"),
            stderr,
            messages: read("messages.log"),
            args: self.args.clone(),
        }
    }

    /// The message log so far (to watch a call in progress).
    pub fn messages_so_far(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("messages.log")).unwrap_or_default()
    }

    /// The messages sipp received so far (each as text), to follow a call in progress.
    pub fn received_so_far(&self) -> Vec<String> {
        received_messages(&self.messages_so_far())
    }

    /// The directory sipp runs in (files given to scenarios go here).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs sipp to its end.
pub fn sipp(scenario: Option<&str>, args: &[String], timeout: Duration) -> SippRun {
    Sipp::spawn(scenario, args).wait(timeout)
}

/// Common sipp arguments: the target, our local address and port, one call.
pub fn sipp_args(target: &str, transport_tcp: bool) -> Vec<String> {
    let mut v: Vec<String> = vec![
        target.to_string(),
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        free_port().to_string(),
        "-m".into(),
        "1".into(),
        "-timeout".into(),
        "60s".into(),
        "-timeout_error".into(),
    ];
    if transport_tcp {
        v.push("-t".into());
        v.push("t1".into());
    }
    v
}

/// One received RTP packet.
#[derive(Debug, Clone)]
pub struct Rtp {
    pub at: Instant,
    pub from: SocketAddr,
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub ts: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// A phone's RTP socket in the test: records every packet it receives (on a thread) and
/// can send a stream of packets.
pub struct RtpPeer {
    sock: Arc<UdpSocket>,
    received: Arc<Mutex<Vec<Rtp>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    reader: Option<std::thread::JoinHandle<()>>,
}

pub fn parse_rtp(buf: &[u8], from: SocketAddr) -> Option<Rtp> {
    if buf.len() < 12 || buf[0] >> 6 != 2 {
        return None;
    }
    let cc = (buf[0] & 0x0f) as usize;
    let ext = buf[0] & 0x10 != 0;
    let pad = buf[0] & 0x20 != 0;
    let mut off = 12 + 4 * cc;
    if ext {
        if buf.len() < off + 4 {
            return None;
        }
        let words = u16::from_be_bytes([buf[off + 2], buf[off + 3]]) as usize;
        off += 4 + 4 * words;
    }
    let mut end = buf.len();
    if pad {
        end = end.checked_sub(*buf.last()? as usize)?;
    }
    if off > end {
        return None;
    }
    Some(Rtp {
        at: Instant::now(),
        from,
        pt: buf[1] & 0x7f,
        marker: buf[1] & 0x80 != 0,
        seq: u16::from_be_bytes([buf[2], buf[3]]),
        ts: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        payload: buf[off..end].to_vec(),
    })
}

impl RtpPeer {
    pub fn bind() -> RtpPeer {
        let sock = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reader = {
            let (sock, received, stop) = (sock.clone(), received.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = sock.recv_from(&mut buf)
                        && let Some(p) = parse_rtp(&buf[..n], from)
                        && (p.pt < 72 || p.pt > 76)
                    {
                        received.lock().unwrap().push(p);
                    }
                }
            })
        };
        RtpPeer {
            sock,
            received,
            stop,
            reader: Some(reader),
        }
    }

    pub fn port(&self) -> u16 {
        self.sock.local_addr().unwrap().port()
    }

    /// Every RTP packet received so far (RTCP excluded).
    pub fn received(&self) -> Vec<Rtp> {
        self.received.lock().unwrap().clone()
    }

    /// Waits until what this socket received satisfies `done`; returns it. Panics with
    /// `what` after `within`.
    pub fn wait_for(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Rtp]) -> bool,
    ) -> Vec<Rtp> {
        let deadline = Instant::now() + within;
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{what} not within {within:?} ({} packets received)",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one datagram from this socket (the address the daemon latches to).
    pub fn send_to(&self, to: SocketAddr, datagram: &[u8]) {
        let _ = self.sock.send_to(datagram, to);
    }

    /// Sends `payloads` (one per 20 ms) as RTP with payload type `pt` to `to`, paced in
    /// real time, on a thread. Returns the thread.
    pub fn send_stream(
        &self,
        to: SocketAddr,
        pt: u8,
        ts_step: u32,
        payloads: Vec<Vec<u8>>,
    ) -> std::thread::JoinHandle<()> {
        let sock = self.sock.clone();
        std::thread::spawn(move || {
            let ssrc: u32 = 0x1234_5678;
            let t0 = Instant::now();
            for (i, p) in payloads.into_iter().enumerate() {
                let due = t0 + Duration::from_millis(20 * i as u64);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
                let mut pkt = Vec::with_capacity(12 + p.len());
                pkt.push(0x80);
                pkt.push(if i == 0 { 0x80 | pt } else { pt });
                pkt.extend_from_slice(&(i as u16).to_be_bytes());
                pkt.extend_from_slice(&((i as u32) * ts_step).to_be_bytes());
                pkt.extend_from_slice(&ssrc.to_be_bytes());
                pkt.extend_from_slice(&p);
                let _ = sock.send_to(&pkt, to);
            }
        })
    }
}

impl Drop for RtpPeer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// One G.711 mu-law octet as linear PCM (ITU-T G.711, written out here so the tests do
/// not lean on Roomline's own codec).
pub fn ulaw_to_linear(octet: u8) -> i16 {
    let u = !octet;
    let exponent = (u >> 4) & 0x07;
    let magnitude = ((i16::from(u & 0x0f) << 3) + 0x84) << exponent;
    let sample = magnitude - 0x84;
    if u & 0x80 != 0 { -sample } else { sample }
}

/// Whether a PCMU payload is silence (below about -50 dBFS throughout).
pub fn ulaw_is_silent(payload: &[u8]) -> bool {
    payload
        .iter()
        .all(|&o| ulaw_to_linear(o).unsigned_abs() < 100)
}

/// Whether a PCMU stream (payload type `pt`) carried sound and has since carried at least
/// `after` packets of silence: what a phone got from a room whose tone has ended.
pub fn ulaw_sound_then_silence(pkts: &[Rtp], pt: u8, after: usize) -> bool {
    let audio: Vec<&Rtp> = pkts.iter().filter(|p| p.pt == pt).collect();
    audio
        .iter()
        .rposition(|p| !ulaw_is_silent(&p.payload))
        .is_some_and(|last| audio.len() - 1 - last >= after)
}

/// The bytes queued for reading on each UDP socket bound to local `port` (any address),
/// from /proc/net/udp and /proc/net/udp6.
pub fn udp_rx_queues(port: u16) -> Vec<u64> {
    let mut out = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(queues)) = (f.get(1), f.get(4)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            let rx = queues
                .split(':')
                .nth(1)
                .and_then(|q| u64::from_str_radix(q, 16).ok());
            if let (Some(lp), Some(rx)) = (local_port, rx)
                && lp == port
            {
                out.push(rx);
            }
        }
    }
    out
}

/// Waits until the process owning UDP `port` has read every datagram queued for it (the
/// daemon has taken in all the RTP a test sent); panics after `within`.
pub fn wait_udp_read(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let queues = udp_rx_queues(port);
        if !queues.is_empty() && queues.iter().all(|q| *q == 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "UDP port {port} still has {queues:?} bytes queued (or no socket) after {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Decodes a G.711 mu-law stream with sox (an independent decoder) and analyses it with
/// the room peer's oracle (`roompeer.py analyze-wav`): its JSON report.
pub fn analyze_ulaw(payload: &[u8]) -> serde_json::Value {
    analyze_raw(payload, &["-t", "ul", "-r", "8000", "-c", "1"])
}

/// The same for G.711 A-law.
pub fn analyze_alaw(payload: &[u8]) -> serde_json::Value {
    analyze_raw(payload, &["-t", "al", "-r", "8000", "-c", "1"])
}

fn analyze_raw(payload: &[u8], format: &[&str]) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("in.raw");
    let wav = dir.path().join("out.wav");
    std::fs::write(&raw, payload).unwrap();
    let st = Command::new("sox")
        .args(format)
        .arg(&raw)
        .args(["-b", "16", "-e", "signed-integer", "-r", "48000"])
        .arg(&wav)
        .status()
        .expect("sox");
    assert!(st.success(), "sox failed");
    let run = super::run_roompeer(
        ["analyze-wav".to_string(), wav.display().to_string()],
        Duration::from_secs(60),
    );
    run.expect_ok().clone()
}

/// A raw mu-law tone file made by sox (for sipp's rtp_stream): `seconds` of `hz`.
pub fn ulaw_tone_file(dir: &Path, hz: u32, seconds: u32) -> PathBuf {
    let path = dir.join(format!("tone{hz}.ul"));
    let st = Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw"])
        .arg(&path)
        .args([
            "synth",
            &seconds.to_string(),
            "sine",
            &hz.to_string(),
            "vol",
            "0.5",
        ])
        .status()
        .expect("sox");
    assert!(st.success(), "sox synth failed");
    path
}

/// Calls LiveKit's RoomService with an admin token: (HTTP status, body).
pub fn room_service(
    lk: &LiveKitServer,
    method: &str,
    room: &str,
    body: serde_json::Value,
) -> (u16, String) {
    use livekit_api::access_token::{AccessToken, VideoGrants};
    let token = AccessToken::with_api_key(lk.api_key(), lk.api_secret())
        .with_identity("test-admin")
        .with_ttl(Duration::from_secs(60))
        .with_grants(VideoGrants {
            room_admin: true,
            room_create: true,
            room_list: true,
            room: room.to_string(),
            ..Default::default()
        })
        .to_jwt()
        .expect("admin token");
    lk.twirp(
        &format!("livekit.RoomService/{method}"),
        &token,
        &body.to_string(),
    )
}

/// The participants of a room as LiveKit lists them (identity, kind, attributes JSON).
pub fn list_participants(lk: &LiveKitServer, room: &str) -> Vec<serde_json::Value> {
    let (status, body) = room_service(
        lk,
        "ListParticipants",
        room,
        serde_json::json!({ "room": room }),
    );
    if status != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["participants"].as_array().cloned().unwrap_or_default()
}

/// Waits until `pred` holds for the room's participant list.
pub fn wait_participants<F>(
    lk: &LiveKitServer,
    room: &str,
    within: Duration,
    mut pred: F,
) -> Vec<serde_json::Value>
where
    F: FnMut(&[serde_json::Value]) -> bool,
{
    let deadline = Instant::now() + within;
    loop {
        let ps = list_participants(lk, room);
        if pred(&ps) {
            return ps;
        }
        assert!(
            Instant::now() < deadline,
            "room {room}: participants did not reach the expected state within {within:?}: {ps:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of header `name` in a SIP message as text (first occurrence,
/// case-insensitive name).
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// `tests/peers/roompeer.py COMMAND` against `lk` with `args`, on a thread (150 s limit).
pub fn roompeer_bg(
    lk: &LiveKitServer,
    command: &str,
    args: &[&str],
) -> std::thread::JoinHandle<super::PeerRun> {
    let mut all = vec![command.to_string()];
    all.extend(lk.peer_args());
    all.extend(args.iter().map(|s| s.to_string()));
    std::thread::spawn(move || super::run_roompeer(all, Duration::from_secs(150)))
}

/// A Python SDK participant `listener` in `room` that records what `from_identity`
/// publishes for `seconds` (waiting up to 60 s for it), in the background.
pub fn listener_bg(
    lk: &LiveKitServer,
    room: &str,
    from_identity: &str,
    seconds: u32,
) -> std::thread::JoinHandle<super::PeerRun> {
    let seconds = seconds.to_string();
    roompeer_bg(
        lk,
        "listen",
        &[
            "--room",
            room,
            "--identity",
            "listener",
            "--seconds",
            &seconds,
            "--from-identity",
            from_identity,
            "--wait-timeout",
            "60",
        ],
    )
}

/// A Python SDK participant `identity` in `room` that publishes a tone of `hz` for
/// `seconds` in 20 ms frames (waiting up to 60 s for someone to hear it), in the
/// background.
pub fn tone_agent_bg(
    lk: &LiveKitServer,
    room: &str,
    identity: &str,
    hz: impl std::fmt::Display,
    seconds: u32,
) -> std::thread::JoinHandle<super::PeerRun> {
    let (hz, seconds) = (hz.to_string(), seconds.to_string());
    roompeer_bg(
        lk,
        "publish-tone",
        &[
            "--room",
            room,
            "--identity",
            identity,
            "--freq",
            &hz,
            "--seconds",
            &seconds,
            "--frame-ms",
            "20",
            "--wait-timeout",
            "60",
        ],
    )
}

/// Waits (30 s) until `identity` is in `room`; its ParticipantInfo as JSON.
pub fn wait_participant(lk: &LiveKitServer, room: &str, identity: &str) -> serde_json::Value {
    let ps = wait_participants(lk, room, Duration::from_secs(30), |ps| {
        ps.iter().any(|p| p["identity"] == identity)
    });
    ps.into_iter().find(|p| p["identity"] == identity).unwrap()
}

/// Waits (15 s) until `identity` is no longer in `room`.
pub fn wait_room_empty_of(lk: &LiveKitServer, room: &str, identity: &str) {
    wait_participants(lk, room, Duration::from_secs(15), |ps| {
        !ps.iter().any(|p| p["identity"] == identity)
    });
}
