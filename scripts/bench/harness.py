#!/usr/bin/env python3
"""harness: what Roomline's load tools share: `scripts/bench/bench.py` (the benchmark) and
`scripts/bench/soak.py` (the soak test, `scripts/soak`). Both run inside a private network
namespace their shell script creates (`scripts/bench/common.sh`), on fixed ports.

Here: child processes stopped by PID, /proc figures, livekit-server (and Redis), the
Roomline daemon, the room side (examples/lk_bench in `rooms` mode), the sipp phone that
calls in, the pcap reader and the tone analysis of PCMU audio, machine facts, CSV files.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
import rtp_phone  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
PY = sys.executable
ROOMPEER = REPO / "tests" / "peers" / "roompeer.py"

# Fixed ports: this runs in a private network namespace of its own.
LK_PORT, LK_TCP, LK_UDP = 7880, 7881, 7882
REDIS_PORT = 6379
RL_SIP, RL_HTTP, RL_RTP = 5060, 8080, (20000, 29999)
SIPP_SIP, SIPP_MEDIA = 5080, 40000
API_KEY, API_SECRET = "devkey", "secret"

LOG_TAG = "bench"


def log(msg: str) -> None:
    print(f"[{LOG_TAG} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- processes ------------------------------------------------------------------------

class Procs:
    """Every child process, so that all of them are stopped by PID at the end."""

    def __init__(self) -> None:
        self.live: list[subprocess.Popen] = []

    def start(self, argv: list[str], log_path: Optional[Path] = None, cwd: Optional[Path] = None,
              env: Optional[dict] = None, stdin: Any = subprocess.DEVNULL,
              stdout: Any = None) -> subprocess.Popen:
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        p = subprocess.Popen(
            argv, cwd=cwd, env=env, stdin=stdin,
            stdout=stdout if stdout is not None else out, stderr=out,
        )
        self.live.append(p)
        return p

    def stop(self, p: Optional[subprocess.Popen], sig: int = signal.SIGTERM,
             timeout: float = 15.0) -> Optional[int]:
        if p is None:
            return None
        if p.poll() is None:
            try:
                os.kill(p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=5)
        if p in self.live:
            self.live.remove(p)
        return p.returncode

    def stop_all(self) -> None:
        for p in reversed(list(self.live)):
            self.stop(p, timeout=5)


PROCS = Procs()


def on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


# ---- /proc ------------------------------------------------------------------------------

def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a process (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    f = stat.rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK


def proc_rss(pid: int) -> float:
    """VmRSS in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def proc_rss_parts(pid: int) -> tuple[float, float]:
    """(RssAnon, RssFile) in MiB: the heap and stacks, and the mapped files' pages (the
    binary's code as it gets touched); NaN if gone."""
    parts = {"RssAnon:": float("nan"), "RssFile:": float("nan")}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k = line.split(":", 1)[0] + ":"
            if k in parts:
                parts[k] = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return parts["RssAnon:"], parts["RssFile:"]


def proc_wait(pid: int) -> float:
    """Seconds the threads of a process spent runnable but waiting for a CPU (the run
    queue, /proc/PID/task/*/schedstat), summed over its live threads; NaN if it is gone.
    On a busy machine this is what a process lost to the others."""
    total, seen = 0.0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for tid in tids:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[1]) / 1e9
            seen = True
        except (OSError, IndexError, ValueError):
            continue
    return total if seen else float("nan")


def machine_cpu() -> tuple[float, float, float]:
    """(busy, steal, total) CPU seconds of the whole machine since boot, all cores: busy is
    user + nice + system + irq + softirq; steal is time the hypervisor gave elsewhere."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    busy = f[0] + f[1] + f[2] + f[5] + f[6]
    return busy / CLK, f[7] / CLK, sum(f[:8]) / CLK


def proc_fds(pid: int) -> int:
    """Open file descriptors of a process (-1 if it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def proc_threads(pid: int) -> int:
    """Threads of a process (-1 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def loadavg() -> tuple[float, float, float]:
    """The machine's 1, 5 and 15 minute load averages."""
    f = Path("/proc/loadavg").read_text().split()
    return float(f[0]), float(f[1]), float(f[2])


# ---- small helpers ----------------------------------------------------------------------

def http_status(url: str, timeout: float = 2.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception:
        return 0


def wait_until(pred, timeout: float, what: str, step: float = 0.05) -> float:
    t0 = time.monotonic()
    while True:
        if pred():
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(step)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def fmt(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def descendants(pid: int) -> list[int]:
    """pid and every process below it."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def http_json(url: str, timeout: float = 2.0) -> Optional[dict]:
    """GET url as JSON; None on any failure."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return json.load(r)
    except Exception:
        return None


# ---- LiveKit server and Redis -----------------------------------------------------------

class Infra:
    """livekit-server (dev mode, fixed ports in the namespace) and, for livekit-sip, Redis:
    livekit-server uses Redis once `start_redis` ran, else keeps its state in memory."""

    def __init__(self, a: argparse.Namespace, raw: Path) -> None:
        self.a, self.raw = a, raw
        self.redis: Optional[subprocess.Popen] = None
        self.lk: Optional[subprocess.Popen] = None

    def start_redis(self) -> None:
        self.redis = PROCS.start(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(REDIS_PORT), "--save", "",
             "--appendonly", "no", "--protected-mode", "yes"],
            log_path=self.raw / "redis.log",
        )
        wait_until(lambda: _tcp_open(REDIS_PORT), 10, "redis")

    def start_livekit(self, tag: str, log_level: str = "info") -> None:
        ips = ["127.0.0.1/32"] + ([f"{self.a.netns_ip}/32"] if self.a.netns_ip else [])
        ifs = ["lo"] + ([self.a.netns_if] if self.a.netns_if else [])
        body = (
            f"port: {LK_PORT}\nrtc:\n  tcp_port: {LK_TCP}\n  udp_port: {LK_UDP}\n"
            "  enable_loopback_candidate: true\n"
            f"  interfaces:\n    includes: [{', '.join(ifs)}]\n"
            f"  ips:\n    includes: [{', '.join(ips)}]\n"
            + (f"redis:\n  address: 127.0.0.1:{REDIS_PORT}\n" if self.redis else "")
            + f"logging:\n  level: {log_level}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
        self.lk = PROCS.start(
            [self.a.livekit_server, "--dev", "--bind", "127.0.0.1", "--node-ip", "127.0.0.1",
             "--config-body", body],
            log_path=self.raw / f"livekit-server-{tag}.log", env=env,
        )
        wait_until(lambda: http_status(f"http://127.0.0.1:{LK_PORT}/") == 200, 30, "livekit-server")
        time.sleep(0.5)

    def stop_livekit(self) -> None:
        PROCS.stop(self.lk)
        self.lk = None


def _tcp_open(port: int) -> bool:
    s = socket.socket()
    s.settimeout(0.2)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# ---- Roomline -------------------------------------------------------------------------------

class Roomline:
    name = "roomline"
    sip_port = RL_SIP
    rtp = RL_RTP

    def __init__(self, a: argparse.Namespace, raw: Path) -> None:
        self.a, self.raw = a, raw
        self.dir = raw / "roomline-config"
        self.p: Optional[subprocess.Popen] = None
        self.version = subprocess.run([a.roomline, "--version"], capture_output=True,
                                      text=True).stdout.strip()

    def write_config(self, d: Path, trunks: dict[str, str], plans: dict[str, str],
                     extra: str = "") -> Path:
        if d.exists():
            shutil.rmtree(d)
        (d / "trunks").mkdir(parents=True)
        (d / "dialplans").mkdir()
        for n, y in trunks.items():
            (d / "trunks" / f"{n}.yaml").write_text(y)
        for n, y in plans.items():
            (d / "dialplans" / f"{n}.yaml").write_text(y)
        cfg = d / "roomline.yaml"
        cfg.write_text(
            f"livekit:\n  url: ws://127.0.0.1:{LK_PORT}\n  api_key: {API_KEY}\n  api_secret: {API_SECRET}\n"
            f"sip:\n  listeners:\n    - transport: udp\n      address: 127.0.0.1:{RL_SIP}\n"
            f"rtp:\n  port_range: {RL_RTP[0]}-{RL_RTP[1]}\n"
            f"http:\n  listen: 127.0.0.1:{RL_HTTP}\n{extra}"
        )
        return cfg

    def bench_config(self) -> Path:
        return self.write_config(
            self.dir,
            {"local": "inbound:\n  allowed_addresses: [127.0.0.1/32]\n"},
            {"bench": "rules:\n  - name: bench\n    room: bench_{called}\n"},
        )

    def ensure(self) -> None:
        pass

    def start(self, tag: str, config: Optional[Path] = None, env: Optional[dict] = None,
              wait_ready: bool = True) -> subprocess.Popen:
        cfg = config or self.bench_config()
        e = {k: v for k, v in os.environ.items()
             if not k.startswith("LIVEKIT_") and k != "NOTIFY_SOCKET"}
        e["LOG_LEVEL"] = "info"
        e.update(env or {})
        self.p = PROCS.start([self.a.roomline, "run", "--config", str(cfg)],
                             log_path=self.raw / f"roomline-{tag}.log", env=e)
        if wait_ready:
            wait_until(lambda: http_status(f"http://127.0.0.1:{RL_HTTP}/health/ready") == 200
                       or self.p.poll() is not None, 30, "roomline /health/ready")
            if self.p.poll() is not None:
                raise RuntimeError(f"roomline exited ({self.p.returncode}); see {self.raw}/roomline-{tag}.log")
        return self.p

    def pids(self) -> list[int]:
        return [self.p.pid] if self.p else []

    def stop(self) -> None:
        PROCS.stop(self.p, timeout=20)
        self.p = None


# ---- the room side ------------------------------------------------------------------------

class RoomSide:
    """examples/lk_bench in `rooms` mode: one participant per room, in one process.

    `a.lk_bench` is its binary. The rooms listed are joined before this returns; `join` and
    `close` add and leave rooms later. Events the caller waits for (`ready`, `window`,
    `report`, `error`) are kept for `wait_event`; every other event (`joined`, `left`,
    `closed`, `participant_joined`, ...) goes to `on_event` (called on the reader thread),
    or is dropped."""

    WAITED = ("ready", "window", "report", "error")

    def __init__(self, a: argparse.Namespace, rooms: list[str], work: Path, echo: bool = False,
                 tag: str = "rooms", on_event: Optional[Callable[[dict], None]] = None) -> None:
        lst = work / f"{tag}.txt"
        lst.write_text("\n".join(rooms) + "\n")
        argv = [a.lk_bench, "--url", f"ws://127.0.0.1:{LK_PORT}", "--mode", "rooms",
                "--room-list", str(lst), "--tone-hz", "440", "--expect-hz", "1000"]
        if echo:
            argv.append("--echo")
        self.p = PROCS.start(argv, log_path=work / f"{tag}.err", stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE)
        self.lines: list[dict] = []
        self.on_event = on_event
        self.cv = threading.Condition()
        self.wlock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.ready = self.wait_event("ready", timeout=60 + 0.5 * len(rooms))

    def _read(self) -> None:
        for raw in self.p.stdout:
            try:
                ev = json.loads(raw)
            except ValueError:
                continue
            if ev.get("event") not in self.WAITED:
                if self.on_event:
                    self.on_event(ev)
                continue
            with self.cv:
                self.lines.append(ev)
                self.cv.notify_all()

    def wait_event(self, name: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self.cv:
            while True:
                for i, ev in enumerate(self.lines):
                    if ev.get("event") == name:
                        return self.lines.pop(i)
                    if ev.get("event") == "error":
                        raise RuntimeError(f"room side: {ev.get('error')}")
                left = deadline - time.monotonic()
                if left <= 0 or self.p.poll() is not None:
                    raise RuntimeError(f"room side: no {name!r} event")
                self.cv.wait(left)

    def command(self, cmd: str, answer: Optional[str] = None, timeout: float = 30) -> Optional[dict]:
        with self.wlock:
            self.p.stdin.write((cmd + "\n").encode())
            self.p.stdin.flush()
        return self.wait_event(answer, timeout) if answer else None

    def join(self, room: str) -> None:
        """Joins a room; `joined` or `join_failed` arrives as an event."""
        self.command(f"join {room}")

    def close(self, room: str) -> None:
        """Leaves a room; `closed` (what each sender still there sent) arrives as an event."""
        self.command(f"close {room}")

    def stop(self) -> None:
        try:
            self.command("quit")
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except Exception:
            pass
        PROCS.stop(self.p)


# ---- the sipp phone that calls in ---------------------------------------------------------

# Final responses the phone expects besides 200 (each one ACKed and logged as REJECTED);
# anything else sipp calls an unexpected message (its error log has it).
FAILURE_STATUSES = (400, 401, 403, 404, 407, 408, 410, 415, 420, 480, 481, 482, 483, 484, 485,
                    486, 487, 488, 491, 493, 500, 501, 502, 503, 504, 513, 580, 600, 603, 604, 606)


def phone_uac_scenario(tone: Path, setup_timeout_ms: int = 30000) -> str:
    """A sipp phone that calls in: one call per line of the injection file (field0 the
    number called, field1 the caller, field2 how long to stay on the call, ms). It offers
    PCMU, streams `tone` (8 kHz mu-law, looped) from the answer to its hang-up, then sends
    BYE. With `-trace_logs` it writes one line per step to its `_logs.log`, each ending
    with sipp's `[timestamp]` (date, time, Unix time):

      START <call> <caller> <Call-ID> ...        the INVITE goes out
      ANSWERED <call> m=audio <bridge port> ...  200 OK (ACK sent, tone starts)
      HANGUP <call> ...                          BYE goes out;  END <call> ...  its 200
      REJECTED <call> SIP/2.0 <status> ...       a final failure response (ACKed)
      SETUP_TIMEOUT <call> ...                   no final response in setup_timeout_ms

    A BYE from the bridge during the call is answered 200 by sipp itself and written to
    its error log ("Aborting call on an unexpected BYE for call: <Call-ID>"), as is any
    other unexpected message. REJECTED and SETUP_TIMEOUT calls count as failed calls in
    sipp's statistics; a completed call counts as successful."""
    def uac(method: str, cseq: str, tag: bool) -> str:
        return (f"      {method} sip:[field0]@[remote_ip]:[remote_port] SIP/2.0\n"
                "      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n"
                "      From: <sip:[field1]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\n"
                "      To: <sip:[field0]@[remote_ip]:[remote_port]>" + ("[peer_tag_param]" if tag else "") + "\n"
                "      Call-ID: [call_id]\n"
                f"      CSeq: {cseq}\n"
                "      Contact: <sip:[field1]@[local_ip]:[local_port];transport=[transport]>\n"
                "      Max-Forwards: 70\n")
    failures = "".join(
        f'  <recv response="{code}" optional="true" next="rejected">\n'
        '    <action><ereg regexp="^SIP/2.0 [0-9]+" search_in="msg" assign_to="status"/></action>\n'
        '  </recv>\n' for code in FAILURE_STATUSES)
    return f"""<?xml version="1.0" encoding="ISO-8859-1" ?>
<!-- scripts/bench/harness.py: a phone calling in (fields: called;caller;hold ms) -->
<scenario name="roomline-phone">
  <nop hide="true">
    <action>
      <assignstr assign_to="hold_ms" value="[field2]"/>
      <todouble assign_to="hold" variable="hold_ms"/>
      <log message="START [call_number] [field1] [call_id] [timestamp]"/>
    </action>
  </nop>
  <send retrans="500">
    <![CDATA[
{uac("INVITE", "1 INVITE", False)}      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]
      s=-
      c=IN IP[media_ip_type] [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
      a=sendrecv
    ]]>
  </send>
  <recv response="100" optional="true"/>
  <recv response="180" optional="true"/>
  <recv response="183" optional="true"/>
{failures}  <recv response="200" rtd="true" timeout="{setup_timeout_ms}" ontimeout="setup_timeout">
    <action><ereg regexp="m=audio [0-9]+" search_in="body" assign_to="bport"/></action>
  </recv>
  <send>
    <![CDATA[
{uac("ACK", "1 ACK", True)}      Content-Length: 0
    ]]>
  </send>
  <nop>
    <action>
      <exec rtp_stream="{tone},-1,0"/>
      <log message="ANSWERED [call_number] [$bport] [timestamp]"/>
    </action>
  </nop>
  <pause variable="hold"/>
  <nop>
    <action>
      <exec rtp_stream="pause"/>
      <log message="HANGUP [call_number] [timestamp]"/>
    </action>
  </nop>
  <send retrans="500">
    <![CDATA[
{uac("BYE", "2 BYE", True)}      Content-Length: 0
    ]]>
  </send>
  <recv response="200" crlf="true">
    <action><log message="END [call_number] [timestamp]"/></action>
  </recv>
  <nop hide="true" next="done"/>
  <label id="rejected"/>
  <send>
    <![CDATA[
      ACK sip:[field0]@[remote_ip]:[remote_port] SIP/2.0
      [last_Via:]
      From: <sip:[field1]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]
      [last_To:]
      Call-ID: [call_id]
      CSeq: 1 ACK
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <nop><action><log message="REJECTED [call_number] [$status] [timestamp]"/></action></nop>
  <nop hide="true" next="failed"/>
  <label id="setup_timeout"/>
  <nop><action><log message="SETUP_TIMEOUT [call_number] [timestamp]"/></action></nop>
  <label id="failed"/>
  <!-- nothing answers this: the call ends as failed in sipp's statistics -->
  <recv request="NEVER" timeout="10"/>
  <label id="done"/>
</scenario>
"""


def tone_file(path: Path, hz: float, seconds: float = 10) -> Path:
    """A raw 8 kHz mu-law tone (sox), for sipp's rtp_stream."""
    subprocess.run(["sox", "-n", "-r", "8000", "-c", "1", "-e", "mu-law", "-t", "raw", str(path),
                    "synth", str(seconds), "sine", str(hz), "vol", "0.5"], check=True)
    return path


# ---- pcap and tones ------------------------------------------------------------------------

def read_pcap(path: Path):
    """Yields (time, src_port, dst_port, udp_payload) of the IPv4/UDP packets of a pcap
    written by tcpdump on `lo` (Ethernet framing) or any (Linux cooked)."""
    with open(path, "rb") as f:
        yield from read_pcap_stream(f)


def read_pcap_stream(f: BinaryIO):
    """read_pcap on an open stream (a file, or tcpdump's `-w -` on a pipe, read as it comes)."""
    gh = f.read(24)
    if len(gh) < 24:
        return
    magic = struct.unpack("<I", gh[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    linktype = struct.unpack(endian + "I", gh[20:24])[0]
    l2 = {1: 14, 113: 16, 276: 20}.get(linktype, 14)
    while True:
        ph = f.read(16)
        if len(ph) < 16:
            return
        sec, frac, incl, _orig = struct.unpack(endian + "IIII", ph)
        data = f.read(incl)
        t = sec + frac / (1e9 if nano else 1e6)
        ip = data[l2:]
        if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
            continue
        ihl = (ip[0] & 0x0F) * 4
        sp, dp = struct.unpack("!HH", ip[ihl:ihl + 4])
        yield t, sp, dp, ip[ihl + 8:]


def goertzel_fraction(x: np.ndarray, rate: float, hz: float) -> np.ndarray:
    """Per row of x (frames), the fraction of the energy at hz."""
    n = x.shape[1]
    k = np.arange(n)
    w = 2 * np.pi * hz / rate
    c, s = np.cos(w * k), np.sin(w * k)
    re_, im_ = x @ c, x @ s
    energy = np.sum(x * x, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = (re_ * re_ + im_ * im_) / (n / 2 * energy)
    return np.nan_to_num(np.minimum(frac, 1.0))


def rtp_parse(pl: bytes) -> Optional[tuple[int, int, int, int, bytes]]:
    """(payload type, sequence number, timestamp, SSRC, payload) of an RTP packet (CSRCs and
    a header extension skipped), or None if it is not RTP version 2."""
    if len(pl) < 12 or pl[0] >> 6 != 2:
        return None
    cc = pl[0] & 0x0F
    off = 12 + 4 * cc
    if pl[0] & 0x10 and len(pl) >= off + 4:
        off += 4 + 4 * struct.unpack("!H", pl[off + 2:off + 4])[0]
    seq, ts, ssrc = struct.unpack("!HII", pl[2:12])
    return pl[1] & 0x7F, seq, ts, ssrc, pl[off:]


def pcmu_tone_frames(audio: bytes, hz: float) -> np.ndarray:
    """For each 20 ms frame (160 bytes) of PCMU audio, whether it carries a tone at `hz`:
    audible (RMS above 0.01 full scale) and with most of its energy at `hz` (Goertzel)."""
    frames = len(audio) // 160
    if not frames:
        return np.zeros(0, dtype=bool)
    x = rtp_phone.ulaw_decode(audio[: frames * 160]).reshape(frames, 160)
    rms = np.sqrt(np.mean(x * x, axis=1))
    return (rms > 0.01) & (goertzel_fraction(x, 8000, hz) > 0.5)


# ---- machine and files ---------------------------------------------------------------------

def machine_info(livekit_server: str, bridges: dict[str, str]) -> dict:
    """The machine and the versions of what runs on it; `bridges`: name -> version."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    lk_ver = subprocess.run([livekit_server, "--version"], capture_output=True, text=True).stdout.strip()
    sipp_ver = subprocess.run(["sipp", "-v"], capture_output=True, text=True).stdout
    sipp_ver = (re.search(r"SIPp v[\w.\-]+", sipp_ver) or re.search(r".*", "")).group(0).rstrip(".")
    try:
        redis_ver = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    except OSError:
        redis_ver = []
    return {
        "cpu_model": model, "cores": os.cpu_count(), "mem_gib": round(mem, 1),
        "kernel": platform.release(), "os": _os_release(),
        "livekit_server": lk_ver.split()[-1] if lk_ver else "?",
        "sipp": sipp_ver, "redis": next((x for x in redis_ver if x.startswith("v=")), "?")[2:],
        "bridges": dict(bridges),
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def _os_release() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.platform()


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()})


def read_csv_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            d: dict[str, Any] = {}
            for k, v in r.items():
                for conv in (int, float):
                    try:
                        d[k] = conv(v)
                        break
                    except (TypeError, ValueError):
                        continue
                else:
                    d[k] = v
            rows.append(d)
    return rows
