//! A real `livekit-server` (v1.13.5) for integration tests.
//!
//! Each [`LiveKitServer`] runs its own process in `--dev` mode (keys `devkey` / `secret`)
//! on free loopback ports, so tests can run in parallel. Dropping it stops the process by
//! its PID (SIGTERM, again after 1 s, SIGKILL after 5 s) and reaps it; Drop also runs when
//! a test panics, and then prints the tail of the server log.
//!
//! Ports: v1.13.5 accepts `--port`, `--rtc.tcp_port` (generated flags, shown only by
//! `server help-verbose`) and `--udp-port`, but the loopback-only ICE settings
//! (`rtc.interfaces`, `rtc.ips`: lists) have no flags, so everything goes in one
//! `--config-body` YAML: `port` (HTTP + WebSocket signalling), `rtc.tcp_port` (ICE/TCP),
//! `rtc.udp_port` (single ICE/UDP mux port). (The `server ports` subcommand ignores the
//! port flags and prints defaults; the running server honours them.) `rtc.interfaces` /
//! `rtc.ips` restrict ICE to loopback, so the UDP socket binds 127.0.0.1 only (without
//! them it binds every non-loopback interface address). The ICE/TCP listener always binds
//! the wildcard address (livekit's code passes no IP), but clients only reach it via
//! 127.0.0.1, the only candidate advertised (`--node-ip 127.0.0.1`).
//!
//! Env: `ROOMLINE_LIVEKIT_SERVER` (binary), `ROOMLINE_KEEP_LOGS=1` keeps the temp dir
//! with the server log after the test.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{send_signal, tail_file, tool_path, tools_dir};

pub const DEV_API_KEY: &str = "devkey";
pub const DEV_API_SECRET: &str = "secret";
pub const EXPECTED_VERSION: &str = "1.13.5";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_GRACE: Duration = Duration::from_secs(5);
/// livekit-server v1.13.5 answers HTTP ~100 ms before it marks itself running, and a
/// SIGTERM in that window is swallowed (`Stop` returns early when not yet running). So
/// readiness waits this long after the first HTTP 200, and `stop` re-sends SIGTERM once
/// after [`RESEND_TERM_AFTER`] (the second signal means "force" to livekit-server).
const SETTLE_AFTER_READY: Duration = Duration::from_millis(200);
const RESEND_TERM_AFTER: Duration = Duration::from_secs(1);
const START_ATTEMPTS: usize = 5;

/// Ports handed out in this test process, so parallel tests never get the same one.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// The livekit-server binary: `$ROOMLINE_LIVEKIT_SERVER`, else
/// `$ROOMLINE_TOOLS/bin/livekit-server`. Panics with install instructions if missing.
pub fn server_binary() -> PathBuf {
    tool_path(
        "ROOMLINE_LIVEKIT_SERVER",
        tools_dir().join("bin").join("livekit-server"),
        "livekit-server",
    )
}

/// Three distinct free loopback ports: (HTTP/WS TCP, ICE/TCP, ICE/UDP). All sockets are
/// held until the three are chosen; ports already handed out in this process are skipped.
fn free_ports() -> (u16, u16, u16) {
    let mut used = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let mut held_tcp = Vec::new();
    let mut held_udp = Vec::new();
    let mut pick_tcp = |used: &BTreeSet<u16>| loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0/tcp");
        let port = l.local_addr().unwrap().port();
        held_tcp.push(l);
        if !used.contains(&port) {
            return port;
        }
    };
    let http = pick_tcp(&used);
    used.insert(http);
    let tcp = pick_tcp(&used);
    used.insert(tcp);
    let udp = loop {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0/udp");
        let port = s.local_addr().unwrap().port();
        held_udp.push(s);
        if !used.contains(&port) {
            break port;
        }
    };
    used.insert(udp);
    (http, tcp, udp)
}

/// A running livekit-server process, stopped on drop.
pub struct LiveKitServer {
    child: Child,
    pid: u32,
    port: u16,
    rtc_tcp_port: u16,
    rtc_udp_port: u16,
    log_path: PathBuf,
    /// Temp dir holding the log (and cwd of the server). `None` once kept.
    dir: Option<tempfile::TempDir>,
    /// The `--config-body` it runs with (a restart uses it again).
    config: String,
    /// Where this process's part of the (appended) log starts.
    log_start: usize,
    stopped: bool,
}

enum StartError {
    AddrInUse,
}

impl LiveKitServer {
    /// Starts a dev-mode server on free loopback ports and waits until it serves HTTP.
    pub fn start() -> Self {
        Self::start_with_config("")
    }

    /// Like [`start`](Self::start), with extra top-level YAML config appended (any key but
    /// `port` and `rtc`, which the harness sets), e.g. `"room:\n  empty_timeout: 5\n"`.
    pub fn start_with_config(extra_yaml: &str) -> Self {
        let bin = server_binary();
        for attempt in 1..=START_ATTEMPTS {
            match Self::try_start(&bin, extra_yaml) {
                Ok(server) => return server,
                Err(StartError::AddrInUse) => {
                    eprintln!("livekit-server: a port was taken (attempt {attempt}); retrying");
                }
            }
        }
        panic!("livekit-server: no free ports after {START_ATTEMPTS} attempts");
    }

    fn try_start(bin: &Path, extra_yaml: &str) -> Result<Self, StartError> {
        let (port, rtc_tcp_port, rtc_udp_port) = free_ports();
        let config = format!(
            "port: {port}\n\
             rtc:\n  \
               tcp_port: {rtc_tcp_port}\n  \
               udp_port: {rtc_udp_port}\n  \
               enable_loopback_candidate: true\n  \
               interfaces:\n    includes: [lo]\n  \
               ips:\n    includes: [127.0.0.1/32]\n\
             {extra_yaml}"
        );
        let dir = tempfile::Builder::new()
            .prefix("roomline-livekit-")
            .tempdir()
            .expect("create temp dir for livekit-server");
        let log_path = dir.path().join("livekit-server.log");
        let child = spawn(bin, &config, dir.path(), &log_path);
        // From here on, Drop stops the process, also if waiting panics.
        let mut server = LiveKitServer {
            pid: child.id(),
            child,
            port,
            rtc_tcp_port,
            rtc_udp_port,
            log_path,
            dir: Some(dir),
            config,
            log_start: 0,
            stopped: false,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<(), StartError> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.stopped = true;
                let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
                if log
                    .get(self.log_start..)
                    .is_some_and(|l| l.contains("address already in use"))
                {
                    return Err(StartError::AddrInUse);
                }
                panic!(
                    "livekit-server (pid {}) exited with {status} before it was ready; \
                     log tail:\n{}",
                    self.pid,
                    self.log_tail(40)
                );
            }
            if http_get_ok(self.port) {
                std::thread::sleep(SETTLE_AFTER_READY);
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                panic!(
                    "livekit-server (pid {}) did not answer HTTP 200 on 127.0.0.1:{} within \
                     {READY_TIMEOUT:?}; log tail:\n{}",
                    self.pid,
                    self.port,
                    self.log_tail(40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Signalling URL for clients, `ws://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Base URL of the HTTP API (Twirp room/SIP services), `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn api_key(&self) -> &'static str {
        DEV_API_KEY
    }

    pub fn api_secret(&self) -> &'static str {
        DEV_API_SECRET
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// HTTP / WebSocket port.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn rtc_tcp_port(&self) -> u16 {
        self.rtc_tcp_port
    }

    pub fn rtc_udp_port(&self) -> u16 {
        self.rtc_udp_port
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_file(&self.log_path, lines)
    }

    /// `--url/--api-key/--api-secret` arguments for `roompeer.py`.
    /// POSTs a Twirp JSON request (`service_method` such as `livekit.RoomService/ListRooms`)
    /// with `Authorization: Bearer token`; returns the HTTP status and the body.
    pub fn twirp(&self, service_method: &str, token: &str, body: &str) -> (u16, String) {
        let mut s =
            TcpStream::connect(("127.0.0.1", self.port())).expect("connect to livekit-server");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /twirp/{service_method} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    pub fn peer_args(&self) -> Vec<String> {
        vec![
            "--url".into(),
            self.url(),
            "--api-key".into(),
            self.api_key().into(),
            "--api-secret".into(),
            self.api_secret().into(),
        ]
    }

    /// Stops the server now, by its PID, and reaps it: SIGTERM, SIGTERM again after 1 s
    /// (livekit-server waits for participants to leave on the first one, and may have
    /// swallowed it, see [`SETTLE_AFTER_READY`]), SIGKILL after 5 s. Returns true if it
    /// exited on SIGTERM. Idempotent; Drop calls it too.
    pub fn stop(&mut self) -> bool {
        if self.stopped {
            return true;
        }
        self.stopped = true;
        if let Ok(Some(_)) = self.child.try_wait() {
            return true;
        }
        let start = Instant::now();
        send_signal(self.pid, "TERM");
        let mut resent = false;
        while start.elapsed() < STOP_GRACE {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if !resent && start.elapsed() >= RESEND_TERM_AFTER {
                send_signal(self.pid, "TERM");
                resent = true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        false
    }
}

impl LiveKitServer {
    /// Kills the server now (SIGKILL, as a crash or an OOM kill would) and reaps it.
    pub fn kill(&mut self) {
        if !self.stopped {
            self.stopped = true;
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Starts the stopped (or killed) server again: same ports, keys and config, the
    /// log appended; returns when it is ready (as [`start`](Self::start) waits). The
    /// new process knows no rooms.
    pub fn start_again(&mut self) -> Instant {
        assert!(self.stopped, "start_again: the server is still running");
        let bin = server_binary();
        let dir = self
            .dir
            .as_ref()
            .expect("the server's temp dir")
            .path()
            .to_path_buf();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.log_start = std::fs::metadata(&self.log_path).map_or(0, |m| m.len() as usize);
            self.child = spawn(&bin, &self.config, &dir, &self.log_path);
            self.pid = self.child.id();
            self.stopped = false;
            match self.wait_ready() {
                Ok(()) => return Instant::now(),
                // a port of the old process not free yet: try again shortly
                Err(StartError::AddrInUse) if Instant::now() < deadline => {
                    eprintln!("livekit-server: a port is still taken; starting again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(StartError::AddrInUse) => panic!("livekit-server: ports taken on restart"),
            }
        }
    }
}

impl Drop for LiveKitServer {
    fn drop(&mut self) {
        let graceful = self.stop();
        if !graceful {
            eprintln!(
                "livekit-server (pid {}) ignored SIGTERM for {STOP_GRACE:?}; killed",
                self.pid
            );
        }
        if std::thread::panicking() {
            eprintln!(
                "---- livekit-server (pid {}, http port {}) log tail ----\n{}\n----",
                self.pid,
                self.port,
                self.log_tail(60)
            );
        }
        if std::env::var_os("ROOMLINE_KEEP_LOGS").is_some_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!("livekit-server log kept in {}", dir.keep().display());
        }
    }
}

/// Starts livekit-server with `config` in `dir`, its output appended to `log_path`.
fn spawn(bin: &Path, config: &str, dir: &Path, log_path: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path)
        .expect("open livekit-server log");
    let log_err = log.try_clone().expect("clone log file handle");
    let mut cmd = Command::new(bin);
    cmd.args(["--dev", "--bind", "127.0.0.1", "--node-ip", "127.0.0.1"])
        .arg("--config-body")
        .arg(config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err);
    // the server reads these from the environment; don't let the caller's leak in
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("LIVEKIT_")
            || matches!(
                &*key,
                "NODE_IP" | "UDP_PORT" | "REDIS_HOST" | "REDIS_PASSWORD"
            )
        {
            cmd.env_remove(&*key);
        }
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()))
}

/// One plain HTTP/1.0 `GET /` to 127.0.0.1:port; true on status 200.
fn http_get_ok(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < head.len() {
        match stream.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
        if head[..n].contains(&b'\n') {
            break;
        }
    }
    let status_line = String::from_utf8_lossy(&head[..n]);
    let mut parts = status_line.split_whitespace();
    matches!(
        (parts.next(), parts.next()),
        (Some(v), Some("200")) if v.starts_with("HTTP/1.")
    )
}
