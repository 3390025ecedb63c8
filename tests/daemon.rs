//! `roomline run` as systemd and an operator see it: READY=1 on the notify socket once the
//! HTTP listener answers, an invalid config refused on SIGHUP or on a file change while the
//! daemon keeps serving (and says so in /health/detailed and /metrics), a valid one
//! applied, readiness that follows a real LiveKit server, STOPPING=1 and exit 0 on
//! SIGTERM, exit 64 on a config that does not validate. The unit file passes
//! `systemd-analyze verify`.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both).
fn free_sip_port() -> u16 {
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Copies the example configuration into `dir`, listening for HTTP on `port`.
fn example_config(dir: &Path, port: u16) -> PathBuf {
    example_config_with(dir, port, "ws://127.0.0.1:7880")
}

/// The same, with the LiveKit server at `livekit_url`.
fn example_config_with(dir: &Path, port: u16, livekit_url: &str) -> PathBuf {
    for sub in ["trunks", "dialplans"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(repo().join(sub)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, dir.join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    let text = std::fs::read_to_string(repo().join("roomline.yaml")).unwrap();
    let text = text
        .replace(
            "listen: 127.0.0.1:8080",
            &format!("listen: 127.0.0.1:{port}"),
        )
        .replace("url: ws://127.0.0.1:7880", &format!("url: {livekit_url}"))
        .replace(
            "address: 0.0.0.0:5060",
            &format!("address: 127.0.0.1:{}", free_sip_port()),
        );
    assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains(livekit_url));
    let path = dir.join("roomline.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

struct Daemon {
    child: Child,
    notify: UnixDatagram,
    stderr: PathBuf,
}

impl Daemon {
    fn start(config: &Path, dir: &Path) -> Daemon {
        Daemon::start_with(config, dir, &[])
    }

    fn start_with(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Daemon {
        let sock = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&sock).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let stderr = dir.join("stderr.log");
        let child = Command::new(env!("CARGO_BIN_EXE_roomline"))
            .args(["run", "--config"])
            .arg(config)
            .env("NOTIFY_SOCKET", &sock)
            .env_remove("LIVEKIT_URL")
            .env_remove("LOG_LEVEL")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child,
            notify,
            stderr,
        }
    }

    /// The next notify message, or None after the timeout.
    fn next_notify(&self) -> Option<String> {
        let mut buf = [0u8; 4096];
        let n = self.notify.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn notifies_systemd_reloads_safely_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = example_config(dir.path(), port);
    let mut d = Daemon::start(&config, dir.path());

    let ready = d
        .next_notify()
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", d.log()));
    assert!(ready.contains("READY=1"), "{ready}");
    // READY means bound: the health endpoint answers at once.
    assert_eq!(http_get(port, "/health"), Some((200, "ok\n".to_string())));
    assert_eq!(http_get(port, "/nope").map(|r| r.0), Some(404));

    // A broken dialplan is refused, with its location, and the daemon keeps serving.
    let plan = dir.path().join("dialplans/20-support.yaml");
    let good = std::fs::read_to_string(&plan).unwrap();
    std::fs::write(
        &plan,
        good.replace("answer: on_first_track", "answer: whenever"),
    )
    .unwrap();
    d.signal("-HUP");
    let reloading = d.next_notify().expect("RELOADING=1");
    assert!(reloading.contains("RELOADING=1"), "{reloading}");
    assert!(
        d.next_notify()
            .expect("READY=1 after reload")
            .contains("READY=1")
    );
    let log = d.log();
    assert!(log.contains("configuration reload refused"), "{log}");
    assert!(
        log.contains("20-support.yaml:13:13: invalid answer \"whenever\""),
        "{log}"
    );
    assert_eq!(http_get(port, "/health").map(|r| r.0), Some(200));

    // A valid one is applied.
    std::fs::write(&plan, good).unwrap();
    d.signal("-HUP");
    assert!(d.next_notify().unwrap().contains("RELOADING=1"));
    assert!(d.next_notify().unwrap().contains("READY=1"));
    assert!(d.log().contains("configuration reloaded"), "{}", d.log());

    d.signal("-TERM");
    let stopping = d.next_notify().expect("STOPPING=1");
    assert!(stopping.contains("STOPPING=1"), "{stopping}");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{}", d.log());
    assert!(
        http_get(port, "/health").is_none(),
        "listener closed after exit"
    );
}

/// With WatchdogSec set (systemd passes WATCHDOG_USEC), the daemon sends WATCHDOG=1
/// regularly, each after a round trip through its SIP endpoint.
#[test]
fn pings_the_systemd_watchdog_when_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = example_config(dir.path(), port);
    let mut d = Daemon::start_with(&config, dir.path(), &[("WATCHDOG_USEC", "400000")]);
    let ready = d
        .next_notify()
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", d.log()));
    assert!(ready.contains("READY=1"), "{ready}");
    let mut pings = 0;
    while pings < 3 {
        let m = d
            .next_notify()
            .unwrap_or_else(|| panic!("no WATCHDOG=1 after {pings} pings; log:\n{}", d.log()));
        if m.contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    d.signal("-TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0), "{}", d.log());
}

#[test]
fn run_refuses_an_invalid_config_with_exit_64() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_roomline"))
        .current_dir(repo())
        .args(["run", "--config", "tests/broken/unknown-key/roomline.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("roomline.yaml:5:3: invalid YAML: unknown field `region`"),
        "{stderr}"
    );
    drop(dir);
}

#[test]
fn run_reports_a_port_in_use_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let config = example_config(dir.path(), port);
    let mut d = Daemon::start(&config, dir.path());
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(1), "{}", d.log());
    assert!(
        d.log().contains("cannot bind the HTTP listener"),
        "{}",
        d.log()
    );
}

#[test]
fn systemd_unit_verifies() {
    // systemd-analyze checks the ExecStart binary exists: point it at the one just built.
    let unit = std::fs::read_to_string(repo().join("systemd/roomline.service")).unwrap();
    for needed in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartPreventExitStatus=64",
        "User=roomline",
    ] {
        assert!(unit.lines().any(|l| l == needed), "unit lacks {needed}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("roomline.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/roomline", env!("CARGO_BIN_EXE_roomline")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect(
            "systemd-analyze (Debian package systemd) must be installed: scripts/install-test-deps",
        );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn json_get(port: u16, path: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_get(port, path).unwrap_or_else(|| panic!("GET {path} failed"));
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body:?}"));
    (status, v)
}

/// Waits for the next reload to be announced on the notify socket.
fn expect_reload(d: &Daemon) {
    let m = d
        .next_notify()
        .unwrap_or_else(|| panic!("no RELOADING=1; log:\n{}", d.log()));
    assert!(m.contains("RELOADING=1"), "{m}");
    assert!(
        d.next_notify()
            .expect("READY=1 after reload")
            .contains("READY=1")
    );
}

#[test]
fn changed_files_are_reloaded_without_a_signal_and_failures_are_visible() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = example_config(dir.path(), port);
    let d = Daemon::start(&config, dir.path());
    assert!(d.next_notify().expect("READY=1").contains("READY=1"));
    let (_, v) = json_get(port, "/health/detailed");
    assert_eq!(v["last_reload"]["ok"], true);
    assert_eq!(v["last_reload"]["trigger"], "start");
    // the runtime's tasks (endpoint, API server, watchers...): what the soak test follows
    assert!(v["runtime"]["alive_tasks"].as_u64().unwrap() > 0, "{v}");
    assert!(v["runtime"]["workers"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(v["config"]["rules"].as_array().unwrap().len(), 4);

    // Break a trunk file: the watcher notices, refuses it, and says where.
    let trunk = dir.path().join("trunks/office-pbx.yaml");
    let good = std::fs::read_to_string(&trunk).unwrap();
    std::fs::write(&trunk, good.replace("10.20.0.0/16", "10.20.0.0/33")).unwrap();
    expect_reload(&d);
    let (_, v) = json_get(port, "/health/detailed");
    assert_eq!(v["last_reload"]["ok"], false, "{v}");
    assert_eq!(v["last_reload"]["trigger"], "file");
    let errors = v["last_reload"]["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{v}");
    assert!(errors[0].as_str().unwrap().ends_with("trunks/office-pbx.yaml:6:7: invalid address \"10.20.0.0/33\": expected an IP address or CIDR such as 192.0.2.10 or 192.0.2.0/24"), "{v}");
    // The old configuration still serves.
    assert_eq!(v["config"]["trunks"].as_array().unwrap().len(), 4);
    let metrics = http_get(port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("roomline_config_reloads_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("roomline_config_last_reload_success 0"),
        "{metrics}"
    );

    // Mend it and add a rule: the new snapshot is in force.
    std::fs::write(&trunk, &good).unwrap();
    std::fs::write(
        dir.path().join("dialplans/30-extra.yaml"),
        "rules:\n  - name: extra\n    match:\n      called: \"+15550199\"\n    room: extra\n",
    )
    .unwrap();
    expect_reload(&d);
    let (_, v) = json_get(port, "/health/detailed");
    assert_eq!(v["last_reload"]["ok"], true, "{v}");
    let rules: Vec<&str> = v["config"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    assert_eq!(rules.last(), Some(&"extra"), "{v}");
    let metrics = http_get(port, "/metrics").unwrap().1;
    assert!(
        metrics.contains("roomline_config_reloads_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("roomline_config_rules 5"), "{metrics}");
    assert!(
        metrics.contains("roomline_build_info{version=\""),
        "{metrics}"
    );
}

#[test]
fn readiness_follows_a_real_livekit_server() {
    let server = common::livekit::LiveKitServer::start();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = example_config_with(dir.path(), port, &server.url());
    let d = Daemon::start(&config, dir.path());
    assert!(d.next_notify().expect("READY=1").contains("READY=1"));
    assert_eq!(
        http_get(port, "/health/ready"),
        Some((200, "ready\n".to_string()))
    );
    let (status, v) = json_get(port, "/health/livekit");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["ok"], true);
    assert!(v["rtt_ms"].as_f64().unwrap() >= 0.0);
    drop(server); // stopped by PID
    let (status, body) = http_get(port, "/health/ready").unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("not ready: LiveKit unreachable: cannot reach http://127.0.0.1:"),
        "{body}"
    );
    let (status, v) = json_get(port, "/health/livekit");
    assert_eq!(
        (status, v["ok"].clone()),
        (503, serde_json::Value::Bool(false)),
        "{v}"
    );
    // Liveness does not depend on LiveKit.
    assert_eq!(http_get(port, "/health").map(|r| r.0), Some(200));
}
