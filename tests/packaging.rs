//! The Debian package as an operator meets it. cargo-deb packages the binary this test
//! build already made (`--no-build --profile dev`, stripped: no second, release build),
//! `dpkg -i` installs it on this machine, and then: the files are where the README says,
//! /etc/roomline holds conffiles readable by the service user and by nobody else,
//! `roomline check` passes on the installed configuration, `systemd-analyze verify` on
//! the installed unit, nothing was started or enabled; a reinstall keeps an edited
//! conffile; `dpkg --purge` leaves none of the package's files (the system user stays, as
//! Debian does with system users). A guard purges the package, and removes the user if
//! the test created it, however the test ends; a lock keeps two runs on one machine apart.
//!
//! Needs root (dpkg), as CI has; cargo-deb comes from `scripts/install-test-deps`.

#![allow(
    clippy::disallowed_methods,
    reason = "integration tests drive real processes on the wall clock"
)]

mod common;

use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PKG: &str = "roomline";
/// Ends the version of the package this test builds: an installed package with it is a
/// leftover of an interrupted run, anything else an operator's installation.
const TEST_VERSION_SUFFIX: &str = "~packagingtest";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir("/")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn describe(what: &str, out: &Output) -> String {
    format!(
        "{what}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// dpkg with ARGS; waits (up to 5 minutes) while another dpkg or apt on the machine holds
/// dpkg's lock, as apt's own lock timeout does.
fn dpkg(args: &[&str]) -> Output {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = run("dpkg", args);
        let err = text(&out.stderr);
        let locked = !out.status.success() && err.contains("lock") && err.contains("dpkg");
        if !locked || Instant::now() >= deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The installed version of the package, if it is installed (in any state but purged).
fn installed_version() -> Option<String> {
    let out = run(
        "dpkg-query",
        &["-W", "-f", "${db:Status-Abbrev}|${Version}", PKG],
    );
    if !out.status.success() {
        return None;
    }
    let s = text(&out.stdout);
    let (status, version) = s.split_once('|')?;
    // "ii ", "iU ", "rc " ... "un " / "pn " mean nothing is left of it
    (!status.starts_with("un") && !status.starts_with("pn")).then(|| version.trim().to_string())
}

fn user_exists(name: &str) -> bool {
    run("getent", &["passwd", name]).status.success()
}

fn group_exists(name: &str) -> bool {
    run("getent", &["group", name]).status.success()
}

/// Purges the package and undoes the user it created, whatever state the test left.
struct Installed {
    user_existed: bool,
    group_existed: bool,
}

impl Installed {
    fn cleanup(&self) {
        if installed_version().is_some() {
            let out = dpkg(&["--purge", PKG]);
            if !out.status.success() {
                eprintln!("{}", describe("cleanup: dpkg --purge roomline", &out));
            }
        }
        // Debian keeps a package's system user on purge; this test removes the one it
        // made, so the machine is as it found it.
        if !self.user_existed && user_exists(PKG) {
            let _ = run("userdel", &[PKG]);
        }
        if !self.group_existed && group_exists(PKG) {
            let _ = run("groupdel", &[PKG]);
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Builds the .deb from the binary of this test build into `out_dir`.
fn build_deb(out_dir: &Path, version: &str) -> PathBuf {
    let cargo_deb = common::tool_path(
        "ROOMLINE_CARGO_DEB",
        common::tools_dir().join("bin").join("cargo-deb"),
        "cargo-deb",
    );
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_roomline"));
    assert!(bin.is_file(), "no binary at {}", bin.display());
    let manifest = common::repo_root().join("Cargo.toml");
    let out = Command::new(&cargo_deb)
        .args(["--no-build", "--profile", "dev", "--strip", "--fast"])
        .args(["--deb-version", version, "--manifest-path"])
        .arg(&manifest)
        .arg("--output")
        .arg(out_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run cargo-deb");
    assert!(
        out.status.success(),
        "{}",
        describe("cargo-deb --no-build --profile dev", &out)
    );
    let deb = out_dir.join(format!("{PKG}_{version}_{}.deb", deb_arch()));
    assert!(
        deb.is_file(),
        "cargo-deb made no {}:\n{}",
        deb.display(),
        describe("cargo-deb", &out)
    );
    deb
}

fn deb_arch() -> String {
    let out = run("dpkg", &["--print-architecture"]);
    text(&out.stdout).trim().to_string()
}

/// What the package must install, relative to the repository's files.
fn expected_conffiles() -> Vec<String> {
    let repo = common::repo_root();
    let mut v = vec![
        "/etc/roomline/roomline.yaml".to_string(),
        "/etc/roomline/roomline.env".to_string(),
    ];
    for dir in ["trunks", "dialplans"] {
        for e in std::fs::read_dir(repo.join(dir)).unwrap() {
            let name = e.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") {
                v.push(format!("/etc/roomline/{dir}/{name}"));
            }
        }
    }
    v.sort();
    v
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

fn id_of(kind: &str, name: &str) -> u32 {
    let out = run("getent", &[kind, name]);
    assert!(out.status.success(), "no {kind} entry for {name}");
    text(&out.stdout)
        .split(':')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap()
}

/// PIDs of processes running /usr/bin/roomline.
fn installed_daemons() -> Vec<String> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(exe) = std::fs::read_link(e.path().join("exe"))
            && exe == Path::new("/usr/bin/roomline")
        {
            pids.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    pids
}

/// `roomline check` with the default configuration path, run as root or as `user`.
fn check_as(user: Option<&str>) -> Output {
    let mut cmd = match user {
        Some(u) => {
            let mut c = Command::new("runuser");
            c.args(["-u", u, "--", "/usr/bin/roomline", "check"]);
            c
        }
        None => {
            let mut c = Command::new("/usr/bin/roomline");
            c.arg("check");
            c
        }
    };
    for var in [
        "LIVEKIT_URL",
        "LIVEKIT_API_KEY",
        "LIVEKIT_API_SECRET",
        "ROOMLINE_CONFIG",
        "LOG_LEVEL",
    ] {
        cmd.env_remove(var);
    }
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/roomline check")
}

#[test]
fn deb_installs_validates_and_purges_cleanly() {
    let uid = run("id", &["-u"]);
    assert_eq!(
        text(&uid.stdout).trim(),
        "0",
        "tests/packaging.rs installs a package with dpkg: run the suite as root (CI does)"
    );
    // one run at a time on this machine (other worktrees, parallel CI jobs)
    let lock =
        File::create(std::env::temp_dir().join("roomline-packaging-test.lock")).expect("lock file");
    lock.lock().expect("lock");

    // Never touch an operator's installation; clear a leftover of an interrupted run.
    match installed_version() {
        Some(v) if v.ends_with(TEST_VERSION_SUFFIX) => {
            let out = dpkg(&["--purge", PKG]);
            assert!(
                out.status.success(),
                "{}",
                describe("purging a leftover test package", &out)
            );
        }
        Some(v) => panic!(
            "package {PKG} {v} is installed on this machine: this test installs and purges \
             its own build of it, so it refuses to run here"
        ),
        None => {}
    }
    for path in ["/usr/bin/roomline", "/etc/roomline"] {
        assert!(
            !Path::new(path).exists(),
            "{path} exists but no {PKG} package is installed (a manual installation?): \
             this test would overwrite and then delete it, so it refuses to run here"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let version = format!("{}{TEST_VERSION_SUFFIX}", env!("CARGO_PKG_VERSION"));
    let deb = build_deb(dir.path(), &version);
    let deb = deb.to_str().unwrap();

    let guard = Installed {
        user_existed: user_exists(PKG),
        group_existed: group_exists(PKG),
    };

    // --- install ---
    let out = dpkg(&["-i", deb]);
    assert!(out.status.success(), "{}", describe("dpkg -i", &out));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(
        said.contains("installed but not started") && said.contains("systemctl enable --now"),
        "postinst should say how to start the service:\n{said}"
    );
    assert_eq!(installed_version().as_deref(), Some(version.as_str()));
    let status = run("dpkg-query", &["-W", "-f", "${Status}", PKG]);
    assert_eq!(text(&status.stdout), "install ok installed");

    // files where the README says, with their modes
    for (path, want) in [
        ("/usr/bin/roomline", 0o755),
        ("/lib/systemd/system/roomline.service", 0o644),
        ("/usr/lib/sysusers.d/roomline.conf", 0o644),
        ("/usr/lib/tmpfiles.d/roomline.conf", 0o644),
        ("/etc/roomline/roomline.yaml", 0o644),
        ("/etc/roomline/roomline.env", 0o600),
        ("/usr/share/doc/roomline/ops/roomline-alerts.yaml", 0o644),
        ("/usr/share/doc/roomline/ops/roomline-dashboard.json", 0o644),
    ] {
        assert_eq!(mode(path), want, "mode of {path}");
    }
    let version_out = run("/usr/bin/roomline", &["--version"]);
    assert!(
        text(&version_out.stdout).contains(env!("CARGO_PKG_VERSION")),
        "{}",
        describe("roomline --version", &version_out)
    );

    // the example configuration, every file of it a conffile
    let conffiles = run("dpkg-query", &["-W", "-f", "${Conffiles}", PKG]);
    let mut listed: Vec<String> = text(&conffiles.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    listed.sort();
    assert_eq!(listed, expected_conffiles(), "conffiles");
    for f in &listed {
        let shipped = f
            .strip_prefix("/etc/roomline/")
            .map(|r| match r {
                "roomline.env" => "packaging/roomline.env",
                r => r,
            })
            .unwrap();
        assert_eq!(
            std::fs::read(f).unwrap(),
            std::fs::read(common::repo_root().join(shipped)).unwrap(),
            "{f} is not the repository's {shipped}"
        );
    }

    // the service user, and a configuration directory only it (and root) can read
    assert!(user_exists(PKG), "postinst did not create the user");
    let uid = id_of("passwd", PKG);
    assert!(uid < 1000, "{PKG} should be a system user, has uid {uid}");
    let etc = std::fs::metadata("/etc/roomline").unwrap();
    assert_eq!(etc.uid(), 0, "/etc/roomline owner");
    assert_eq!(etc.gid(), id_of("group", PKG), "/etc/roomline group");
    assert_eq!(mode("/etc/roomline"), 0o750, "/etc/roomline mode");

    // roomline check on the installed configuration: root, the service user, not others
    for user in [None, Some(PKG)] {
        let out = check_as(user);
        assert!(
            out.status.success()
                && text(&out.stdout).contains(
                    "/etc/roomline/roomline.yaml: configuration is valid (4 trunks, 4 dialplan rules)"
                ),
            "{}",
            describe(&format!("roomline check as {}", user.unwrap_or("root")), &out)
        );
    }
    let out = check_as(Some("nobody"));
    assert!(
        !out.status.success() && text(&out.stderr).contains("ermission denied"),
        "user nobody must not read /etc/roomline (it holds the secrets): {}",
        describe("roomline check as nobody", &out)
    );

    // the installed unit verifies against the installed binary
    let out = run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/roomline.service"],
    );
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        describe("systemd-analyze verify", &out)
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/roomline.service").unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/usr/bin/roomline run --config /etc/roomline/roomline.yaml"),
        "the installed unit must start the installed binary:\n{unit}"
    );

    // installed, not enabled, not started: the example secrets are still in place
    assert!(
        !Path::new("/etc/systemd/system/multi-user.target.wants/roomline.service").exists(),
        "the package must not enable the service"
    );
    assert_eq!(
        installed_daemons(),
        Vec::<String>::new(),
        "no daemon may run after install"
    );

    // an operator's edit of a conffile survives a reinstall
    let yaml = "/etc/roomline/roomline.yaml";
    let mut edited = std::fs::read_to_string(yaml).unwrap();
    edited.push_str("# edited by the operator\n");
    std::fs::write(yaml, &edited).unwrap();
    let out = dpkg(&["-i", deb]);
    assert!(
        out.status.success(),
        "{}",
        describe("dpkg -i (again)", &out)
    );
    assert_eq!(
        std::fs::read_to_string(yaml).unwrap(),
        edited,
        "a reinstall replaced an edited conffile"
    );
    assert_eq!(
        mode("/etc/roomline"),
        0o750,
        "/etc/roomline mode after reinstall"
    );

    // --- purge: nothing of the package is left ---
    let files = run("dpkg", &["-L", PKG]);
    let files: Vec<String> = text(&files.stdout)
        .lines()
        .filter(|p| Path::new(p).is_file())
        .map(str::to_string)
        .collect();
    assert!(files.len() >= 12, "dpkg -L lists too few files: {files:?}");
    let out = dpkg(&["--purge", PKG]);
    assert!(out.status.success(), "{}", describe("dpkg --purge", &out));
    assert_eq!(installed_version(), None, "dpkg still knows the package");
    let left: Vec<&String> = files.iter().filter(|p| Path::new(p).exists()).collect();
    assert!(left.is_empty(), "files left after purge: {left:?}");
    for d in ["/etc/roomline", "/usr/share/doc/roomline"] {
        assert!(!Path::new(d).exists(), "{d} left after purge");
    }
    // Debian keeps system users on purge (files they owned may remain elsewhere)
    assert!(user_exists(PKG), "the purge removed the system user");
    let user_existed = guard.user_existed;
    drop(guard);
    assert_eq!(
        user_exists(PKG),
        user_existed,
        "the machine's users are not as the test found them"
    );
}
