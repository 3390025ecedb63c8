#!/usr/bin/env python3
"""bench.py: the measurements behind `scripts/bench/run` (which installs and builds what
is needed, creates the private network namespace this runs in, and calls this).

Nothing here asserts anything about speed: it measures, prints and writes a report.

  bench.py OUTDIR --roomline BIN --lk-bench BIN --livekit-server BIN [--livekit-sip BIN]
           [--ns "10 25 50 75 100 150 200 300 400"] [--seconds 30] [--rate 20]
           [--bridges "roomline livekit-sip"] [--profile-n 50] [--media-bench FILE]
           [--skip "load profile latency daemon"]
  bench.py OUTDIR --report-only      # rebuild report.md and cpu_mem.png from OUTDIR's files

Topology of one load run (bridge B, N calls), all on this machine:

  sipp (UAC, N calls at R/s, PCMU 1 kHz via rtp_stream) --SIP/RTP--> B
  B --WebRTC--> livekit-server (dev mode, Redis) <--WebRTC-- lk_bench `rooms`
  (one process, one participant per call's room, publishing 440 Hz and counting the
  1 kHz it hears) + two Python SDK listeners (tests/peers/roompeer.py) in sampled rooms.

Every process started here is stopped here, by PID (also on SIGTERM/SIGINT). What this
shares with the soak test (scripts/soak) lives in harness.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import latency  # noqa: E402
import rtp_phone  # noqa: E402
from harness import (  # noqa: E402
    API_KEY, API_SECRET, LK_PORT, PROCS, PY, REDIS_PORT, RL_HTTP, RL_SIP, ROOMPEER, SIPP_MEDIA,
    SIPP_SIP, Infra, RoomSide, Roomline, descendants, fmt, http_status, log, machine_cpu,
    machine_info, on_signal, pcmu_tone_frames, pct, phone_uac_scenario, proc_cpu, proc_rss,
    read_csv_rows, read_pcap, rtp_parse, tone_file, wait_until, write_csv,
)

warnings.filterwarnings("ignore", message=".*HMAC key.*")

# Fixed ports of livekit-sip and the registrar (harness has the others).
LS_SIP, LS_HEALTH, LS_PROM, LS_RTP = 5062, 8081, 8082, (30000, 39999)
REGISTRAR = 5090

CALLED_BASE = 15550000000  # call i (1-based) dials 1555000000i and comes from 1444000000i
CALLER_BASE = 14440000000


# ---- /proc ------------------------------------------------------------------------------

class Snapshot:
    """CPU seconds and RSS of named processes (a name may stand for several PIDs)."""

    def __init__(self, roles: dict[str, list[int]], everything: bool = False) -> None:
        self.at = time.time()
        self.cpu = {r: sum(proc_cpu(p) for p in pids) for r, pids in roles.items()}
        self.rss = {r: sum(proc_rss(p) for p in pids) for r, pids in roles.items()}
        self.busy, self.steal, self.total = machine_cpu()
        # every process on the machine (kernel threads too), for what else ran
        self.all: dict[int, float] = {}
        if everything:
            for d in Path("/proc").iterdir():
                if d.name.isdigit():
                    c = proc_cpu(int(d.name))
                    if not math.isnan(c):
                        self.all[int(d.name)] = c


def other_cpu(a: Snapshot, b: Snapshot, roles: dict[str, list[int]]) -> float:
    """Cores used between two snapshots by processes outside the roles."""
    ours = {p for pids in roles.values() for p in pids}
    used = sum(c - a.all.get(pid, 0.0) for pid, c in b.all.items() if pid not in ours)
    return used / (b.at - a.at)


def cpu_frac(a: Snapshot, b: Snapshot, role: str) -> float:
    """Fraction of one core the role used between two snapshots."""
    dt = b.at - a.at
    return (b.cpu[role] - a.cpu[role]) / dt if dt > 0 else float("nan")


class Sampler(threading.Thread):
    """Samples the roles every second into a list of rows (samples.csv)."""

    def __init__(self, run: str, roles: dict[str, list[int]], rows: list[dict]) -> None:
        super().__init__(daemon=True)
        self.run_id, self.roles, self.rows = run, roles, rows
        self.halt = threading.Event()
        self.phase = "start"

    def run(self) -> None:
        t0 = time.time()
        prev = Snapshot(self.roles)
        while not self.halt.wait(1.0):
            cur = Snapshot(self.roles)
            row: dict[str, Any] = {"run": self.run_id, "t_s": round(cur.at - t0, 2), "phase": self.phase}
            for r in self.roles:
                row[f"{r}_cpu"] = round(cpu_frac(prev, cur, r), 4)
                row[f"{r}_rss_mib"] = round(cur.rss[r], 2)
            dt = cur.total - prev.total
            row["machine_busy_cores"] = round((cur.busy - prev.busy) / (cur.at - prev.at), 3) if dt > 0 else ""
            self.rows.append(row)
            prev = cur


# ---- small helpers ----------------------------------------------------------------------

# ---- the bridges --------------------------------------------------------------------------

class LiveKitSip:
    name = "livekit-sip"
    sip_port = LS_SIP
    rtp = LS_RTP

    def __init__(self, a: argparse.Namespace, raw: Path) -> None:
        self.a, self.raw = a, raw
        self.p: Optional[subprocess.Popen] = None
        self.version = a.livekit_sip_version

    def config_body(self) -> str:
        # every key checked against pkg/config/config.go of the version built
        return (
            f"api_key: {API_KEY}\napi_secret: {API_SECRET}\nws_url: ws://127.0.0.1:{LK_PORT}\n"
            f"redis:\n  address: 127.0.0.1:{REDIS_PORT}\n"
            f"sip_port: {LS_SIP}\nrtp_port: {LS_RTP[0]}-{LS_RTP[1]}\n"
            "use_external_ip: false\nnat_1_to_1_ip: 127.0.0.1\nlisten_ip: 127.0.0.1\n"
            f"health_port: {LS_HEALTH}\nprometheus_port: {LS_PROM}\n"
            # its admission check reads the machine-wide CPU; off, so that it is measured,
            # not throttled (1.0 = refuse only above 100 %)
            "max_cpu_utilization: 1.0\n"
            "logging:\n  level: info\n"
        )

    def ensure(self) -> None:
        """The inbound trunk (127.0.0.1, any number) and the dispatch rule (a room per
        called number: bench_<called>), through LiveKit's API; idempotent."""
        import asyncio
        from livekit import api

        async def go() -> None:
            lk = api.LiveKitAPI(f"http://127.0.0.1:{LK_PORT}", API_KEY, API_SECRET)
            try:
                trunks = (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items
                if not any(t.name == "bench" for t in trunks):
                    await lk.sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(
                        trunk=api.SIPInboundTrunkInfo(name="bench", allowed_addresses=["127.0.0.1/32"])))
                rules = (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items
                if not any(r.name == "bench" for r in rules):
                    await lk.sip.create_dispatch_rule(api.CreateSIPDispatchRuleRequest(
                        name="bench",
                        rule=api.SIPDispatchRule(
                            dispatch_rule_callee=api.SIPDispatchRuleCallee(room_prefix="bench"))))
            finally:
                await lk.aclose()

        asyncio.run(go())

    def start(self, tag: str, **_: Any) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
        self.p = PROCS.start([self.a.livekit_sip, "--config-body", self.config_body()],
                             log_path=self.raw / f"livekit-sip-{tag}.log", env=env)
        wait_until(lambda: http_status(f"http://127.0.0.1:{LS_HEALTH}/") == 200
                   or self.p.poll() is not None, 30, "livekit-sip health")
        if self.p.poll() is not None:
            raise RuntimeError(f"livekit-sip exited ({self.p.returncode}); see {self.raw}/livekit-sip-{tag}.log")
        time.sleep(0.5)
        return self.p

    def pids(self) -> list[int]:
        return descendants(self.p.pid) if self.p else []

    def stop(self) -> None:
        PROCS.stop(self.p, timeout=20)
        self.p = None


# ---- sipp ---------------------------------------------------------------------------------

REGISTRAR_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="bench-registrar">
  <recv request="REGISTER"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      [last_Contact:];expires=3600
      Content-Length: 0
    ]]>
  </send>
</scenario>
"""


def sipp_stat_last(path: Path) -> dict[str, str]:
    """The last row of sipp's -trace_stat CSV as {column: value}."""
    try:
        rows = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return {}
    if len(rows) < 2:
        return {}
    head = rows[0].split(";")
    return dict(zip(head, rows[-1].split(";")))


def sipp_rtts(path: Path) -> list[float]:
    """INVITE -> 200 OK times (ms) from sipp's -trace_rtt CSV (rtd 1)."""
    out = []
    try:
        for line in path.read_text().splitlines()[1:]:
            f = line.split(";")
            if len(f) >= 3 and f[2].strip() == "1":
                out.append(float(f[1]))
    except OSError:
        pass
    return out


def sipp_rtt_times(path: Path) -> list[float]:
    """When (s since sipp started) each INVITE was answered, from -trace_rtt."""
    out = []
    try:
        for line in path.read_text().splitlines()[1:]:
            f = line.split(";")
            if len(f) >= 3 and f[2].strip() == "1":
                out.append(float(f[0]) / 1000.0)
    except (OSError, ValueError):
        pass
    return out


# ---- pcap ------------------------------------------------------------------------------

def analyse_pcap(path: Path, t0: float, t1: float, bridge_rtp: tuple[int, int]) -> dict:
    """RTP between sipp's media port and the bridge within [t0, t1]."""
    lo, hi = bridge_rtp
    down: dict[int, list[tuple[int, bytes]]] = {}  # bridge port -> [(seq, payload)] to phone
    up: dict[int, int] = {}  # bridge port -> packets from phone
    for t, sp, dp, pl in read_pcap(path):
        rtp = rtp_parse(pl) if t0 <= t < t1 else None
        if rtp is None:
            continue
        pt, seq, _ts, _ssrc, payload = rtp
        if dp == SIPP_MEDIA and lo <= sp <= hi:
            if pt != 0:
                continue
            down.setdefault(sp, []).append((seq, payload))
        elif sp == SIPP_MEDIA and lo <= dp <= hi and pt == 0:
            up[dp] = up.get(dp, 0) + 1
    w = t1 - t0
    flows = []
    for port, pkts in down.items():
        # extended sequence numbers
        ext, last, wraps = [], None, 0
        for s, _ in pkts:
            if last is not None and s < last and last - s > 30000:
                wraps += 1
            ext.append(s + 65536 * wraps)
            last = s
        expected = max(ext) - min(ext) + 1
        tone = int(np.sum(pcmu_tone_frames(b"".join(p for _, p in pkts), 440)))
        flows.append({"port": port, "packets": len(pkts), "expected_seq": expected,
                      "tone_frames": tone, "up_packets": up.get(port, 0)})
    return {"window_s": w, "flows": flows, "up_only_ports": len(set(up) - set(down))}


# ---- one load run -------------------------------------------------------------------------

def run_load(a: argparse.Namespace, infra: Infra, bridge: Any, n: int, out: Path,
             samples: list[dict], profile: bool = False) -> dict:
    tag = f"{bridge.name}-n{n}" + ("-profile" if profile else "")
    work = out / "raw" / tag
    work.mkdir(parents=True, exist_ok=True)
    log(f"{tag}: starting livekit-server and {bridge.name}")
    infra.start_livekit(tag)
    row: dict[str, Any] = {"bridge": bridge.name, "n": n, "rate_cps": a.rate, "window_s": a.seconds}
    room_side = None
    listeners: list[tuple[subprocess.Popen, Path]] = []
    sipp = tcpdump = None
    try:
        bridge.ensure()
        bridge.start(tag)
        time.sleep(2)
        rss_idle = sum(proc_rss(p) for p in bridge.pids())
        calls = [(CALLED_BASE + i, CALLER_BASE + i) for i in range(1, n + 1)]
        rooms = [f"bench_{c}" for c, _ in calls]
        ramp = n / a.rate
        hold = ramp + 3 + a.seconds + 8
        # every call stays up `hold` seconds (the injection file's third field, ms)
        (work / "calls.csv").write_text("SEQUENTIAL\n" + "".join(f"{c};{k};{int(hold * 1000)}\n"
                                                                  for c, k in calls))
        t_rs = time.monotonic()
        room_side = RoomSide(a, rooms, work)
        log(f"{tag}: room side joined {n} rooms in {time.monotonic() - t_rs:.1f}s")
        # Python SDK listeners in two sampled rooms (independent check of the 1 kHz)
        sample = sorted({0, n // 2})
        for i in sample:
            called, caller = calls[i]
            rep = work / f"listener-{i + 1}.json"
            p = PROCS.start(
                [PY, str(ROOMPEER), "listen", "--url", f"ws://127.0.0.1:{LK_PORT}",
                 "--api-key", API_KEY, "--api-secret", API_SECRET, "--room", f"bench_{called}",
                 "--identity", "listener", "--from-identity", f"sip_{caller}",
                 "--seconds", "3600", "--wait-timeout", str(60 + 2 * n / a.rate)],
                log_path=work / f"listener-{i + 1}.log", stdout=open(rep, "wb"),
            )
            listeners.append((p, rep))
        # listeners connect; meanwhile the bridge's idle CPU (no calls yet)
        idle0 = Snapshot({"bridge": bridge.pids()})
        time.sleep(4)
        idle1 = Snapshot({"bridge": bridge.pids()})
        row["cpu_bridge_idle"] = cpu_frac(idle0, idle1, "bridge")
        tone = tone_file(work / "tone1k.ul", 1000)
        (work / "uac.xml").write_text(phone_uac_scenario(tone))
        roles = {"bridge": bridge.pids(), "livekit-server": [infra.lk.pid], "redis": [infra.redis.pid],
                 "room-side": [room_side.p.pid], "listeners": [p.pid for p, _ in listeners],
                 "sipp": [], "tcpdump": []}
        sampler = Sampler(tag, roles, samples)
        sampler.start()
        pre = Snapshot(roles)
        sipp = PROCS.start(
            ["sipp", f"127.0.0.1:{bridge.sip_port}", "-sf", str(work / "uac.xml"),
             "-inf", str(work / "calls.csv"), "-i", "127.0.0.1", "-p", str(SIPP_SIP),
             "-mi", "127.0.0.1", "-mp", str(SIPP_MEDIA), "-r", str(a.rate), "-rp", "1000",
             "-m", str(n), "-l", str(n), "-max_socket", "1000",
             "-trace_rtt", "-rtt_freq", "1", "-trace_stat", "-fd", "1", "-trace_err",
             "-timeout", f"{int(hold + 2 * ramp + 60)}s", "-nostdin"],
            log_path=work / "sipp.log", cwd=work,
        )
        roles["sipp"].append(sipp.pid)
        sampler.phase = "ramp"
        t_start = time.time()
        # the capture starts a little before the window
        time.sleep(max(0.0, ramp + 2))
        tcpdump = PROCS.start(
            ["tcpdump", "-i", "lo", "-n", "-s", "256", "-B", "32768", "-Z", "root", "-w",
             str(work / "rtp.pcap"), "udp", "port", str(SIPP_MEDIA)],
            log_path=work / "tcpdump.log",
        )
        roles["tcpdump"].append(tcpdump.pid)
        time.sleep(1)
        # the window: all calls up
        sampler.phase = "window"
        w0 = Snapshot(roles, everything=True)
        room_side.command("window", "window")
        t_w0 = time.time()
        if profile:
            # sampled profile of the bridge over the window (perf's cpu-clock, 499 Hz)
            subprocess.run(["perf", "record", "-q", "-F", "499", "-p", ",".join(map(str, bridge.pids())),
                            "-o", str(work / "perf.data"), "--", "sleep", str(a.seconds)],
                           stdout=subprocess.DEVNULL, stderr=open(work / "perf.log", "wb"), timeout=a.seconds + 60)
        else:
            time.sleep(a.seconds)
        t_w1 = time.time()
        w1 = Snapshot(roles, everything=True)
        report = room_side.command("report", "report")
        sampler.phase = "teardown"
        # libpcap hands packets over in blocks retired by a timeout (up to 1 s): keep the
        # capture running until the window's last packets are surely written
        time.sleep(2)
        PROCS.stop(tcpdump, sig=signal.SIGINT)
        for p, _ in listeners:
            PROCS.stop(p, sig=signal.SIGTERM, timeout=20)
        log(f"{tag}: window done; waiting for sipp to end the calls")
        try:
            sipp.wait(timeout=hold + 2 * ramp + 90)
        except subprocess.TimeoutExpired:
            log(f"{tag}: sipp did not finish; stopping it")
        row["sipp_exit"] = PROCS.stop(sipp)
        time.sleep(2)
        post = Snapshot(roles)
        sampler.halt.set()
        sampler.join()
        rss_after = sum(proc_rss(p) for p in bridge.pids())
    finally:
        if room_side:
            room_side.stop()
        for p, _ in listeners:
            PROCS.stop(p)
        PROCS.stop(tcpdump, sig=signal.SIGINT)
        PROCS.stop(sipp)
        bridge.stop()
        infra.stop_livekit()

    # ---- figures
    W = t_w1 - t_w0
    for role in ["bridge", "livekit-server", "redis", "room-side", "sipp", "tcpdump", "listeners"]:
        row[f"cpu_{role}"] = cpu_frac(w0, w1, role)
    row["cpu_machine_cores"] = (w1.busy - w0.busy) / W  # /proc/stat: tick-sampled
    row["cpu_steal_cores"] = (w1.steal - w0.steal) / W
    row["cpu_other_cores"] = other_cpu(w0, w1, roles)
    row["cpu_bridge_pct_per_call"] = 100 * row["cpu_bridge"] / n
    row["cpu_s_per_call_lifecycle"] = (post.cpu["bridge"] - pre.cpu["bridge"]) / n
    row["cpu_s_lk_per_call_lifecycle"] = (post.cpu["livekit-server"] - pre.cpu["livekit-server"]) / n
    row["call_hold_s"] = hold
    row["rss_idle_mib"] = rss_idle
    row["rss_window_mib"] = w1.rss["bridge"]
    row["rss_after_mib"] = rss_after
    row["rss_per_call_kib"] = 1024 * (w1.rss["bridge"] - rss_idle) / n
    row["rss_livekit_server_mib"] = w1.rss["livekit-server"]
    row["rss_room_side_mib"] = w1.rss["room-side"]
    stat = sipp_stat_last(next(iter(work.glob("uac_*_.csv")), work / "none"))
    row["calls_ok"] = int(stat.get("SuccessfulCall(C)", "0") or 0)
    row["calls_failed"] = int(stat.get("FailedCall(C)", "0") or 0)
    rtt_file = next(iter(work.glob("uac_*_rtt.csv")), work / "none")
    rtts = sipp_rtts(rtt_file)
    # calls answered before the window opened (the rtt file's first column: ms since start)
    row["established_at_window"] = sum(1 for t in sipp_rtt_times(rtt_file) if t < t_w0 - t_start)
    row["setup_n"] = len(rtts)
    row["setup_p50_ms"] = pct(rtts, 50)
    row["setup_p95_ms"] = pct(rtts, 95)
    row["setup_max_ms"] = max(rtts) if rtts else float("nan")
    (work / "setup_ms.txt").write_text("\n".join(str(x) for x in rtts) + "\n")
    # phone -> room: what the room side decoded in the window
    rate = report["rate"]
    rs = report["rooms"]
    deliv = [r["samples"] / (rate * report["window_s"]) for r in rs]
    tone_ok = [r["tone_frames"] / r["frames"] if r["frames"] else 0.0 for r in rs]
    row["up_delivered_mean"] = float(np.mean(deliv)) if deliv else float("nan")
    row["up_delivered_min"] = float(np.min(deliv)) if deliv else float("nan")
    row["up_tone_frac_mean"] = float(np.mean(tone_ok)) if tone_ok else float("nan")
    row["up_rooms_hearing"] = sum(1 for r in rs if r["frames"] > 0)
    # room -> phone and phone -> bridge: the capture
    pc = analyse_pcap(work / "rtp.pcap", t_w0, t_w1, bridge.rtp)
    fl = pc["flows"]
    row["down_flows"] = len(fl)
    exp_pk = 50 * W
    row["down_delivered_mean"] = float(np.mean([f["packets"] / exp_pk for f in fl])) if fl else 0.0
    row["down_seq_loss"] = (1 - sum(f["packets"] for f in fl) / sum(f["expected_seq"] for f in fl)) if fl else float("nan")
    row["down_tone_frac_mean"] = float(np.mean([f["tone_frames"] / exp_pk for f in fl])) if fl else 0.0
    row["down_tone_frac_min"] = float(np.min([f["tone_frames"] / exp_pk for f in fl])) if fl else 0.0
    row["up_sent_pps_per_call"] = float(np.mean([f["up_packets"] / W for f in fl])) if fl else 0.0
    # the Python SDK listeners
    heard = []
    for (p, rep), i in zip(listeners, sample):
        try:
            j = json.loads(rep.read_text().strip().splitlines()[-1])
        except (OSError, ValueError, IndexError):
            j = {"ok": False}
        ok = bool(j.get("ok")) and j.get("dominant_hz") is not None \
            and abs(j["dominant_hz"] - 1000) <= 20 and j.get("frames_10ms", 0) > 0 \
            and j["frames_nonsilent"] / j["frames_10ms"] >= 0.9
        heard.append({"call": i + 1, "ok": ok, "hz": j.get("dominant_hz"),
                      "nonsilent": (j["frames_nonsilent"] / j["frames_10ms"]) if j.get("frames_10ms") else None})
    row["listeners"] = json.dumps(heard)
    row["listeners_ok"] = sum(1 for h in heard if h["ok"])
    row["listeners_n"] = len(heard)
    row["notes"] = json.dumps(failure_notes(work, bridge, tag))
    if profile:
        row["profile"] = perf_breakdown(work / "perf.data")
    return row


def failure_notes(work: Path, bridge: Any, tag: str) -> dict:
    """What the logs say about how calls ended: sipp's errors, the bridge's call-end
    reasons, room-side participants that left early (counted by kind)."""
    from collections import Counter

    def top(c: Counter) -> list[list]:
        return [[k, v] for k, v in c.most_common(4)]

    notes: dict[str, Any] = {}
    errs = Counter()
    for f in work.glob("uac_*_errors.log"):
        text = f.read_text(errors="replace")
        for m in re.finditer(r"\d{10}\.\d{6}: (.*?)(?= for call|\d{4}-\d{2}-\d{2}\t|\n|$)", text):
            errs[m.group(1).strip()[:120]] += 1
    notes["sipp_errors"] = top(errs)
    ends = Counter()
    blog = work.parent / f"{bridge.name}-{tag}.log"
    try:
        text = blog.read_text(errors="replace")
    except OSError:
        text = ""
    if bridge.name == "roomline":
        for m in re.finditer(r"call ended .*? outcome=(.*?) status=", text):
            ends[m.group(1)[:140]] += 1
    else:
        for m in re.finditer(r"SIP call ended\t.*?\"reason\": \"([^\"]*)\"", text):
            ends[m.group(1)] += 1
    notes["bridge_call_ends"] = top(ends)
    left = Counter()
    try:
        for line in (work / "rooms.err").read_text(errors="replace").splitlines():
            m = re.search(r"a room-side participant left: (.*)$", line)
            if m and m.group(1) != "left":
                left[m.group(1)[:140]] += 1
    except OSError:
        pass
    notes["room_side_lost"] = top(left)
    return notes


OPUS_C = re.compile(r"^(silk_|celt_|opus_|ec_|clt_|quant_|unquant_|alg_|op_pvq|compute_|tonality|"
                    r"run_analysis|downmix|deemphasis|comb_filter|pitch_|remove_doubling|spreading_|"
                    r"transient_|encode_pulses|decode_pulses|anti_collapse|denormalise|normalise|"
                    r"stereo_|tf_|dynalloc|amp2Log2|haar1|cwrs|icwrs|xcorr|kf_|mlp_|gru|dense|"
                    r"interp_bits|renormalise|exp_rotation|intensity|patch_|hysteresis|celt|silk)")


def perf_category(dso: str, sym: str) -> str:
    d = dso.lower()
    if "kernel" in d or sym.startswith("[k]"):
        return "kernel (syscalls, UDP/loopback, scheduling)"
    if "libopus" in d or ("::" not in sym and OPUS_C.match(sym)):
        return "Opus codec (libopus)"
    if "soxr" in d:
        return "resampling (libsoxr)"
    if d.startswith("libc") or "ld-linux" in d:
        return "libc (memcpy/memset, malloc)"
    if sym.startswith("runtime.") or sym.startswith("runtime/"):
        return "Go runtime (scheduler, GC)"
    if "pion/" in sym or "str0m" in sym or "sctp_proto" in sym or "dimpl" in sym:
        return "WebRTC stack (RTP, SRTP, ICE, SCTP)"
    if "aws_lc" in sym or sym.startswith("crypto/") or "x/crypto" in sym or "aes" in sym.lower()[:8]:
        return "crypto (SRTP/DTLS ciphers)"
    if "tokio" in sym or "mio::" in sym:
        return "async runtime (tokio)"
    if sym.startswith("roomline::") or "github.com/livekit/" in sym:
        return "the bridge's own code"
    return "other"


def perf_breakdown(data: Path) -> dict:
    """Share of the profile's samples per category, and the top symbols."""
    if not data.exists():
        return {}
    r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym",
                        "-F", "overhead,dso,sym", "--percent-limit", "0"],
                       capture_output=True, text=True, timeout=300)
    cats: dict[str, float] = {}
    top: list[tuple[float, str]] = []
    for line in r.stdout.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
        if not m:
            continue
        share, dso, kind, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        if kind == "k":
            dso = "[kernel]"
        cat = perf_category(dso, sym)
        cats[cat] = cats.get(cat, 0.0) + share
        top.append((share, f"{sym} ({dso})"))
    top.sort(reverse=True)
    return {"categories": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
            "top": [{"share": round(x, 2), "symbol": y[:90]} for x, y in top[:12]]}


ROLES = ["bridge", "livekit-server", "redis", "room-side", "sipp", "tcpdump", "listeners"]


def cpu_all(row: dict) -> float:
    """Cores used by every process on the machine in the window (per-process counters)."""
    return sum(row[f"cpu_{r}"] for r in ROLES) + row["cpu_other_cores"]


def limit_reason(row: dict) -> Optional[str]:
    """Why this N is past what the run can carry (None: it carried it)."""
    n = row["n"]
    if row["calls_failed"] > 0.01 * n:
        return f"{row['calls_failed']} of {n} calls failed"
    if row["established_at_window"] < n:
        return f"only {row['established_at_window']} of {n} calls were up in the window"
    if row["up_delivered_mean"] < 0.9:
        return f"phone->room delivered {100 * row['up_delivered_mean']:.0f} % of the audio"
    if row["down_tone_frac_mean"] < 0.9:
        return f"room->phone tone in {100 * row['down_tone_frac_mean']:.0f} % of the 20 ms slots"
    return None


# ---- latency --------------------------------------------------------------------------------

def run_latency(a: argparse.Namespace, infra: Infra, bridges: list, out: Path,
                lat_rows: list[dict]) -> dict:
    work = out / "raw" / "latency"
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {}
    clicks = 30
    # LiveKit's own loop: probe -> server -> echo -> server -> probe (Rust participants)
    infra.start_livekit("latency-lk")
    try:
        sig16, starts16 = latency.click_train(16000, clicks=clicks)
        pat = work / "pattern16.s16"
        (np.clip(sig16, -1, 1) * 32767).astype("<i2").tofile(pat)
        delays = []
        for rep in range(2):
            echo = RoomSide(a, ["lk-loop"], work, echo=True, tag=f"lk-echo-{rep}")
            try:
                subprocess.run([a.lk_bench, "--url", f"ws://127.0.0.1:{LK_PORT}", "--mode", "probe",
                                "--room", "lk-loop", "--pattern", str(pat), "--out",
                                str(work / f"probe-{rep}")], check=True, timeout=120,
                               stdout=subprocess.DEVNULL, stderr=open(work / f"probe-{rep}.err", "wb"))
            finally:
                echo.stop()
            sent = np.fromfile(work / f"probe-{rep}.sent.s16", dtype="<i2") / 32768.0
            recv = np.fromfile(work / f"probe-{rep}.recv.s16", dtype="<i2") / 32768.0
            m = max(len(sent), len(recv))
            d = latency.loop_delays(np.pad(sent, (0, m - len(sent))), np.pad(recv, (0, m - len(recv))),
                                    16000, starts16)
            delays += d
            lat_rows += [{"loop": "livekit-only", "call": rep + 1, "click": k + 1, "round_trip_ms": round(x, 2)}
                         for k, x in enumerate(d)]
        res["livekit-only"] = {"n": len(delays), "of": 2 * clicks, "p50": pct(delays, 50),
                               "p95": pct(delays, 95)}
        log(f"latency: LiveKit-only loop p50 {pct(delays, 50):.1f} ms")
    finally:
        infra.stop_livekit()
    sig8, starts8 = latency.click_train(8000, clicks=clicks)
    for b in bridges:
        infra.start_livekit(f"latency-{b.name}")
        try:
            b.ensure()
            b.start(f"latency-{b.name}")
            delays, setups = [], []
            for rep in range(2):
                called, caller = CALLED_BASE + 9000 + rep, CALLER_BASE + 9000 + rep
                echo = RoomSide(a, [f"bench_{called}"], work, echo=True, tag=f"echo-{b.name}-{rep}")
                try:
                    r = rtp_phone.call(f"127.0.0.1:{b.sip_port}", str(called), str(caller), sig8)
                finally:
                    echo.stop()
                d = latency.loop_delays(r["sent"], r["recv"], 8000, starts8)
                delays += d
                setups.append(r["setup_ms"])
                lat_rows += [{"loop": b.name, "call": rep + 1, "click": k + 1, "round_trip_ms": round(x, 2)}
                             for k, x in enumerate(d)]
                time.sleep(1)
            res[b.name] = {"n": len(delays), "of": 2 * clicks, "p50": pct(delays, 50),
                           "p95": pct(delays, 95), "setup_ms": setups}
            log(f"latency: {b.name} loop p50 {pct(delays, 50):.1f} ms")
        finally:
            b.stop()
            infra.stop_livekit()
    return res


# ---- Roomline's daemon figures ---------------------------------------------------------------

class NotifySocket:
    """A systemd notify socket: records (monotonic time, message) of what arrives."""

    def __init__(self, path: Path) -> None:
        if path.exists():
            path.unlink()
        self.path = path
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(str(path))
        self.s.settimeout(0.05)

    def wait_for(self, text: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.s.recv(4096).decode(errors="replace")
            except socket.timeout:
                continue
            if text in msg.split("\n"):
                return time.monotonic()
        raise RuntimeError(f"no {text} on the notify socket")

    def close(self) -> None:
        self.s.close()
        self.path.unlink(missing_ok=True)


def big_config(rl: Roomline, d: Path, trunks: int = 100, rules: int = 1000) -> Path:
    """100 trunks (inbound numbers of their own, outbound side) and 1000 rules in 10 files."""
    ts = {}
    for i in range(trunks):
        ts[f"carrier-{i:03d}"] = (
            f"inbound:\n  numbers: [\"+1555{i:03d}0000\", \"+1555{i:03d}0001\"]\n"
            "  allowed_addresses: [127.0.0.1/32, 10.0.0.0/8]\n"
            f"outbound:\n  address: 127.0.0.1:{6000 + i}\n  from_number: \"+1555{i:03d}0000\"\n"
        )
    plans = {}
    per = rules // 10
    k = 0
    for f in range(10):
        lines = ["rules:"]
        for _ in range(per):
            t = k % trunks
            lines += [f"  - name: rule-{k:04d}",
                      "    match:",
                      f"      trunks: [carrier-{t:03d}]",
                      f"      called: \"+1555{t:03d}000{k % 2}\"",
                      f"      caller: \"/^\\\\+44{k:04d}/\"" if k % 3 == 0 else f"      caller: \"+1{k:04d}*\"",
                      f"    room: room-{k:04d}-{{caller}}"]
            k += 1
        plans[f"{f:02d}-plan"] = "\n".join(lines) + "\n"
    cfg = rl.write_config(d, ts, plans)
    chk = subprocess.run([rl.a.roomline, "check", "--config", str(cfg)], capture_output=True, text=True)
    if chk.returncode != 0:
        raise RuntimeError(f"the 100-trunk config does not validate:\n{chk.stdout}{chk.stderr}")
    return cfg


def run_daemon_figures(a: argparse.Namespace, infra: Infra, rl: Roomline,
                       ls: Optional[LiveKitSip], out: Path) -> dict:
    work = out / "raw" / "daemon"
    work.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {}
    infra.start_livekit("daemon")
    try:
        ns = NotifySocket(work / "notify.sock")
        # start-up: exec -> READY=1 and exec -> /health 200
        for label, cfg in [("bench", rl.bench_config()), ("100 trunks, 1000 rules", big_config(rl, work / "big"))]:
            ready, health = [], []
            for i in range(5):
                t0 = time.monotonic()
                p = rl.start(f"startup-{i}", config=cfg, env={"NOTIFY_SOCKET": str(ns.path)},
                             wait_ready=False)
                ready.append(1000 * (ns.wait_for("READY=1", 30) - t0))
                wait_until(lambda: http_status(f"http://127.0.0.1:{RL_HTTP}/health", 0.5) == 200, 30,
                           "/health", step=0.002)
                health.append(1000 * (time.monotonic() - t0))
                if label != "bench" and i == 4:
                    # reload: SIGHUP -> READY=1 (after RELOADING=1), five times
                    time.sleep(1)
                    rel = []
                    for _ in range(5):
                        t1 = time.monotonic()
                        os.kill(p.pid, signal.SIGHUP)
                        ns.wait_for("RELOADING=1", 10)
                        rel.append(1000 * (ns.wait_for("READY=1", 30) - t1))
                        time.sleep(0.5)
                    res["reload_ms"] = rel
                    res["rss_big_config_mib"] = proc_rss(p.pid)
                rl.stop()
            res[f"startup_ready_ms[{label}]"] = ready
            res[f"startup_health_ms[{label}]"] = health
        ns.close()
        # idle memory, then memory per idle registration
        rl.start("idle")
        time.sleep(3)
        res["rss_idle_mib"] = proc_rss(rl.p.pid)
        rl.stop()
        for m in a.registrations:
            reg_dir = work / f"reg-{m}"
            reg_dir.mkdir(exist_ok=True)
            (reg_dir / "registrar.xml").write_text(REGISTRAR_XML)
            registrar = PROCS.start(["sipp", "-sf", str(reg_dir / "registrar.xml"), "-i", "127.0.0.1",
                                     "-p", str(REGISTRAR), "-nostdin", "-trace_err",
                                     "-max_socket", "100"], log_path=reg_dir / "sipp.log", cwd=reg_dir)
            try:
                trunks = {"local": "inbound:\n  allowed_addresses: [127.0.0.1/32]\n"}
                for i in range(m):
                    trunks[f"reg-{i:04d}"] = (
                        f"outbound:\n  address: 127.0.0.1:{REGISTRAR}\n  from_number: \"+1666{i:07d}\"\n"
                        f"  register:\n    expires: 3600s\n    user: \"1666{i:07d}\"\n")
                cfg = rl.write_config(reg_dir / "config", trunks,
                                      {"bench": "rules:\n  - name: bench\n    room: bench_{called}\n"})
                rl.start(f"reg-{m}", config=cfg)

                def registered() -> int:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{RL_HTTP}/health/detailed", timeout=2) as r:
                            d = json.load(r)
                    except Exception:
                        return 0
                    return sum(1 for t in d.get("config", {}).get("trunks", [])
                               if (t.get("registration") or {}).get("state") == "registered")

                t0 = time.monotonic()
                wait_until(lambda: registered() >= m, 120, f"{m} registrations", step=0.5)
                res[f"register_all_s[{m}]"] = time.monotonic() - t0
                time.sleep(3)
                res[f"rss_registered_mib[{m}]"] = proc_rss(rl.p.pid)
                res[f"rss_per_registration_kib[{m}]"] = 1024 * (proc_rss(rl.p.pid) - res["rss_idle_mib"]) / m
                rl.stop()
            finally:
                PROCS.stop(registrar)
        # livekit-sip's start-up (exec -> health 200), for comparison
        if ls:
            ls.ensure()
            st = []
            for i in range(3):
                t0 = time.monotonic()
                ls.start(f"startup-{i}")
                st.append(1000 * (time.monotonic() - t0) - 500)  # start() sleeps 0.5 s after health
                if i == 0:
                    time.sleep(2)
                    res["livekit_sip_rss_idle_mib"] = proc_rss(ls.p.pid)
                ls.stop()
            res["livekit_sip_startup_health_ms"] = st
    finally:
        rl.stop()
        if ls:
            ls.stop()
        infra.stop_livekit()
    return res


# ---- report --------------------------------------------------------------------------------

def plot(rows: list[dict], limits: dict, path: Path, versions: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12.5, 4.8))
    colors = {"roomline": "tab:blue", "livekit-sip": "tab:orange"}
    saturated = sorted({r["n"] for r in rows if cpu_all(r) >= 1.9})
    for ax in (ax1, ax2):
        if saturated:
            ax.axvspan(saturated[0] - 2, max(r["n"] for r in rows) + 2, color="0.9", zorder=0)
    for b in ["roomline", "livekit-sip"]:
        rs = sorted([r for r in rows if r["bridge"] == b], key=lambda r: r["n"])
        if not rs:
            continue
        label = f"{b} {versions.get(b, '')}" if b == "livekit-sip" else b
        ns = [r["n"] for r in rs]
        ax1.plot(ns, [100 * r["cpu_bridge"] for r in rs], "o-", color=colors[b], label=f"{label} (bridge process)")
        ax1.plot(ns, [100 * r["cpu_livekit-server"] for r in rs], "s--", color=colors[b], alpha=0.6,
                 label=f"livekit-server during the {b} runs")
        if b == "livekit-sip":
            ax1.plot(ns, [100 * r["cpu_redis"] for r in rs], "^:", color=colors[b], alpha=0.6,
                     label="redis during the livekit-sip runs")
        ax2.plot(ns, [r["rss_window_mib"] for r in rs], "o-", color=colors[b], label=f"{label} RSS")
        lim = [r for r in rs if limits.get((b, r["n"]))]
        for ax, key, k in ((ax1, "cpu_bridge", 100), (ax2, "rss_window_mib", 1)):
            if lim:
                first = not any(h.get_label().startswith("limit") for h in ax.get_lines())
                ax.plot([r["n"] for r in lim], [k * r[key] for r in lim], "o", ms=11, mfc="none",
                        color="red", label="limit run (calls failed or audio lost)" if first else "_nolegend_")
    for ax, yl, title in ((ax1, "CPU, % of one core", "CPU with N calls up (window average)"),
                          (ax2, "RSS, MiB", "Bridge process memory with N calls up")):
        ax.set_xlabel("concurrent calls")
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7.5, loc="upper left")
    if saturated:
        fig.text(0.5, 0.005, "grey: both cores of the machine saturated (bridge + livekit-server + room side + sipp)",
                 ha="center", fontsize=8, color="0.35")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)


def write_report(a: argparse.Namespace, out: Path, info: dict, rows: list[dict], limits: dict,
                 lat: dict, dm: dict, media: str, runtime_s: float, profiles: dict) -> None:
    L: list[str] = []
    by = {(r["bridge"], r["n"]): r for r in rows}
    bridges = [b for b in ["roomline", "livekit-sip"] if any(r["bridge"] == b for r in rows)]
    ns_all = sorted({r["n"] for r in rows})
    L.append(f"# Roomline benchmark, {info['date']}\n")
    L.append(f"Produced by `scripts/bench/run` in {runtime_s / 60:.0f} minutes "
             f"(`--ns \"{' '.join(map(str, a.ns))}\" --seconds {a.seconds} --rate {a.rate}"
             f" --bridges \"{' '.join(a.bridges)}\"`). Figures are measurements of one run on "
             "one machine; nothing in them is asserted.\n")
    L.append("## Machine and versions\n")
    L.append(f"- {info['cores']} cores, {info['cpu_model']} (`/proc/cpuinfo`), {info['mem_gib']} GiB, "
             f"{info['os']}, Linux {info['kernel']}")
    L.append(f"- Roomline: `{info['bridges'].get('roomline', '-')}` (release build)")
    if "livekit-sip" in info["bridges"]:
        L.append(f"- LiveKit SIP: livekit-sip {info['bridges']['livekit-sip']} (built with the Go module "
                 "proxy at bench time)" + (f"; {a.livekit_sip_note}" if a.livekit_sip_note else ""))
    L.append(f"- livekit-server {info['livekit_server']} (`--dev`, with Redis {info['redis']}), "
             f"{info['sipp']}, Python SDK `livekit` (listeners)")
    L.append("")

    # ---- summary against the targets
    L.append("## Targets (from the issue) against this run\n")
    rl_rows = sorted([r for r in rows if r["bridge"] == "roomline" and not limits.get(("roomline", r["n"]))],
                     key=lambda r: r["n"])

    def per_n(key: str, scale: float, unit: str, nd: int) -> str:
        return ", ".join(f"{r[key] * scale:.{nd}f}{unit} (N={r['n']})" for r in rl_rows)

    def verdict(ok: list[bool]) -> str:
        if all(ok):
            return "met"
        if not any(ok):
            return "missed"
        good = [r["n"] for r, k in zip(rl_rows, ok) if k]
        return f"met for N = {', '.join(map(str, good))}; missed otherwise"

    L.append("Judged on the N every bridge carried (the limit runs below are left out). At N where "
             "the machine's two cores are saturated (see *all processes* below), CPU figures are what the "
             "bridge got, and setup times include waiting for a core.\n")
    L.append("| target | measured (Roomline) | verdict |")
    L.append("|---|---|---|")
    if rl_rows:
        L.append(f"| < 0.3 % of a core per active call (bridge process) | "
                 f"{per_n('cpu_bridge_pct_per_call', 1, ' %', 2)} | "
                 f"{verdict([r['cpu_bridge_pct_per_call'] < 0.3 for r in rl_rows])} |")
        L.append(f"| < 1 MB per call | {per_n('rss_per_call_kib', 1 / 1024, ' MiB', 2)} (RSS growth / N) | "
                 f"{verdict([r['rss_per_call_kib'] * 1024 < 1e6 for r in rl_rows])} |")
        L.append(f"| setup p50 < 100 ms on loopback, room exists | {per_n('setup_p50_ms', 1, ' ms', 0)} | "
                 f"{verdict([r['setup_p50_ms'] < 100 for r in rl_rows])} |")
    if "roomline" in lat and "livekit-only" in lat:
        added = (lat["roomline"]["p50"] - lat["livekit-only"]["p50"]) / 2
        L.append(f"| added one-way latency < 40 ms | {added:.1f} ms ((bridge loop p50 - LiveKit loop p50) / 2, "
                 "one call, no other load) | "
                 f"{'met' if added < 40 else 'missed'} |")
    both = [n for n in ns_all if ("roomline", n) in by and ("livekit-sip", n) in by
            and not limits.get(("roomline", n)) and not limits.get(("livekit-sip", n))]
    if both:
        ratios = [by[("livekit-sip", n)]["cpu_s_per_call_lifecycle"] / by[("roomline", n)]["cpu_s_per_call_lifecycle"]
                  for n in both]
        L.append("| >= 3x fewer CPU-seconds per call than livekit-sip | livekit-sip / Roomline: "
                 + ", ".join(f"{x:.1f}x (N={n})" for x, n in zip(ratios, both)) + " | "
                 f"{'met' if min(ratios) >= 3 else 'missed'} |")
    L.append("")

    # ---- reading: what the data says about the targets (data-driven, no opinion)
    R: list[str] = []
    sat = sorted(r["n"] for r in rows if cpu_all(r) >= 1.9)
    if sat:
        r0 = min((r for r in rows if r["n"] == sat[0]), key=lambda r: r["bridge"])
        R.append(f"- **The machine, not only the bridge, sets the ceiling.** From N={sat[0]} on, all "
                 f"processes together use {cpu_all(r0):.2f} of the 2 cores; livekit-server and the "
                 "room side take about as much CPU as the bridge (table below). Figures at and "
                 "beyond that N carry queueing for a core.")
    m = re.search(r"PCMU -> Opus \(8 kHz\)\s+([\d.]+)", media or "")
    prof_rl = (profiles or {}).get("roomline", {}).get("categories", {})
    if m:
        enc = float(m.group(1))
        R.append(f"- **Opus encoding alone is {enc:.0f} us per 20 ms frame** (`cargo bench --bench media`, "
                 f"PCMU -> Opus at 8 kHz, at the complexity Roomline uses there), i.e. {enc / 200:.2f} % of a core per "
                 f"call before any RTP, SRTP, socket or scheduling work: the 0.3 %/call target leaves "
                 f"{max(0.0, 60 - enc):.0f} us per frame for everything else.")
    if prof_rl:
        op = prof_rl.get("Opus codec (libopus)", 0.0)
        kern = prof_rl.get("kernel (syscalls, UDP/loopback, scheduling)", 0.0)
        ls_op = (profiles or {}).get("livekit-sip", {}).get("categories", {}).get("Opus codec (libopus)")
        R.append(f"- **Where Roomline's CPU goes** (perf, N={profiles['roomline']['n']}): {op:.0f} % of its samples "
                 f"are in libopus, {kern:.0f} % in the kernel (a sendto/recvfrom per packet on two legs, "
                 "wake-ups)" + (f"; livekit-sip spends {ls_op:.0f} % in the same library" if ls_op else "")
                 + (". libopus is the largest share of both: the same C library (Roomline bundles it with "
                    "the `opus` crate, livekit-sip links Debian's), not code written in Rust or Go."
                    if ls_op and op >= max(prof_rl.values())
                    and ls_op >= max(profiles["livekit-sip"]["categories"].values()) else ".")
                 )
    fails = [r for r in rows if r["bridge"] == "roomline" and r["calls_failed"]]
    for r in fails:
        nt = json.loads(r.get("notes") or "{}")
        ends = [k for k, _ in nt.get("bridge_call_ends", []) if "peer connection failed" in k]
        if ends:
            R.append(f"- **Roomline's failure mode at N={r['n']}:** calls were ended by the bridge itself "
                     f"(`{ends[0]}`): str0m refuses a write once 512 payloads wait unsent (about 10 s of "
                     "20 ms frames, `MAX_PENDING_PAYLOADS` in str0m 0.25) and the participant task treats that as "
                     "a failed peer connection, so the call gets a BYE instead of losing frames.")
    if R:
        L.append("## Reading the figures\n")
        L += R
        L.append("")

    # ---- load table
    L.append("## Load test\n")
    L.append("Each N: a fresh livekit-server and bridge; N calls placed by sipp at "
             f"{a.rate} calls/s; all N up together for a {a.seconds} s window, on which CPU, "
             "memory and media are measured; then sipp hangs up. CPU is utime+stime from "
             "`/proc/<pid>/stat` over the window, as a fraction of one core; RSS is VmRSS at "
             "the window's end.\n")
    for b in bridges:
        L.append(f"### {b}\n")
        L.append("| N | calls ok / failed | setup p50 / p95 ms | bridge CPU % core (idle) | per call % | "
                 "CPU-s per call (whole call) | livekit-server CPU % | redis CPU % | RSS idle / loaded MiB | "
                 "KiB per call | phone->room delivered / 1 kHz | room->phone delivered / 440 Hz | "
                 "seq loss room->phone | Python listeners 1 kHz |")
        L.append("|" + "---|" * 14)
        for n in ns_all:
            r = by.get((b, n))
            if not r:
                continue
            L.append(
                f"| {n} | {r['calls_ok']} / {r['calls_failed']} | {fmt(r['setup_p50_ms'], 0)} / {fmt(r['setup_p95_ms'], 0)} | "
                f"{100 * r['cpu_bridge']:.1f} ({100 * r.get('cpu_bridge_idle', float('nan')):.1f}) | "
                f"{r['cpu_bridge_pct_per_call']:.3f} | {r['cpu_s_per_call_lifecycle']:.3f} | "
                f"{100 * r['cpu_livekit-server']:.1f} | {100 * r['cpu_redis']:.2f} | "
                f"{r['rss_idle_mib']:.1f} / {r['rss_window_mib']:.1f} | {r['rss_per_call_kib']:.0f} | "
                f"{100 * r['up_delivered_mean']:.1f} % / {100 * r['up_tone_frac_mean']:.1f} % | "
                f"{100 * r['down_delivered_mean']:.1f} % / {100 * r['down_tone_frac_mean']:.1f} % | "
                f"{100 * r['down_seq_loss']:.2f} % | {r['listeners_ok']}/{r['listeners_n']} |")
        for n in ns_all:
            r = by.get((b, n))
            if not r or not (limits.get((b, n)) or r["calls_failed"]):
                continue
            nt = json.loads(r.get("notes") or "{}")
            parts = []
            if nt.get("sipp_errors"):
                parts.append("sipp: " + "; ".join(f"{v} x {k}" for k, v in nt["sipp_errors"]))
            if nt.get("bridge_call_ends"):
                parts.append(f"{b}'s call ends: " + "; ".join(f"{v} x {k}" for k, v in nt["bridge_call_ends"]))
            if nt.get("room_side_lost"):
                parts.append("room side (lk_bench) participants lost: "
                             + "; ".join(f"{v} x {k}" for k, v in nt["room_side_lost"]))
            if parts:
                L.append(f"\nN={n}, from the logs: " + ". ".join(parts) + ".")
        lim = sorted((n, why) for (bb, n), why in limits.items() if bb == b)
        if lim:
            n0, why = lim[0]
            L.append(f"\nLimit: at N={n0} {why}; larger N were not run for {b}.")
        elif any(bb == b for (bb, _) in by):
            L.append(f"\nNo limit reached up to N={max(n for (bb, n) in by if bb == b)} "
                     f"(the ceiling of this run).")
        L.append("")
    # ---- ratios
    if len(bridges) == 2:
        L.append("### livekit-sip / Roomline, same run\n")
        L.append("| N | bridge CPU | CPU-s per call | bridge RSS (loaded) | livekit-server CPU | setup p50 |")
        L.append("|---|---|---|---|---|---|")
        for n in ns_all:
            r, s = by.get(("roomline", n)), by.get(("livekit-sip", n))
            if not (r and s):
                continue
            L.append(f"| {n} | {s['cpu_bridge'] / r['cpu_bridge']:.1f}x | "
                     f"{s['cpu_s_per_call_lifecycle'] / r['cpu_s_per_call_lifecycle']:.1f}x | "
                     f"{s['rss_window_mib'] / r['rss_window_mib']:.1f}x | "
                     f"{s['cpu_livekit-server'] / r['cpu_livekit-server']:.2f}x | "
                     f"{s['setup_p50_ms'] / r['setup_p50_ms']:.1f}x |")
        L.append("")
    # ---- CPU attribution
    L.append("### Where the CPU went (cores, window average)\n")
    L.append("The bridge, LiveKit's server (and Redis) are measured separately; the room side, "
             "sipp, the capture and the Python listeners are the test's own load on the same "
             "two cores. `other` is every other process on the machine (kernel threads "
             "included); `all processes` is the sum (2.00 = both cores saturated). All from the "
             "per-process counters (the scheduler's exact runtimes; `/proc/stat`'s tick-sampled "
             "totals read low on this VM at light load and are in load.csv as "
             "`cpu_machine_cores`). `steal` is time the hypervisor ran something else.\n")
    L.append("| bridge | N | bridge | livekit-server | redis | room side | sipp | tcpdump | listeners | other | all processes | steal |")
    L.append("|" + "---|" * 12)
    for b in bridges:
        for n in ns_all:
            r = by.get((b, n))
            if not r:
                continue
            L.append(f"| {b} | {n} | {r['cpu_bridge']:.2f} | {r['cpu_livekit-server']:.2f} | {r['cpu_redis']:.3f} | "
                     f"{r['cpu_room-side']:.2f} | {r['cpu_sipp']:.2f} | {r['cpu_tcpdump']:.3f} | "
                     f"{r['cpu_listeners']:.2f} | {r['cpu_other_cores']:.2f} | {cpu_all(r):.2f} | "
                     f"{r.get('cpu_steal_cores', float('nan')):.2f} |")
    L.append("")
    L.append("![CPU and memory against concurrent calls](cpu_mem.png)\n")

    # ---- profile
    if profiles:
        n = next(iter(profiles.values()))["n"]
        L.append(f"### Where the bridge's own CPU goes (perf, N={n})\n")
        L.append(f"A separate run at N={n} with `perf record -F 499` on the bridge process over the "
                 "window (software cpu-clock sampling; no call graphs). Share of the bridge's samples "
                 "by where the sampled instruction is:\n")
        cats = []
        for v in profiles.values():
            for c in v.get("categories", {}):
                if c not in cats:
                    cats.append(c)
        names = list(profiles)
        L.append("| | " + " | ".join(names) + " |")
        L.append("|---|" + "---|" * len(names))
        L.append("| bridge CPU in that run, % of a core | " +
                 " | ".join(f"{100 * profiles[k]['cpu']:.0f}" for k in names) + " |")
        for c in cats:
            L.append(f"| {c} | " + " | ".join(f"{profiles[k].get('categories', {}).get(c, 0.0):.1f} %"
                                             for k in names) + " |")
        L.append("")
        for k in names:
            top = profiles[k].get("top", [])[:8]
            if top:
                L.append(f"Top symbols, {k}: " + "; ".join(f"`{t['symbol']}` {t['share']:.1f} %" for t in top) + "\n")
        L.append("")

    # ---- latency
    if lat:
        L.append("## Mouth-to-ear latency through the bridge\n")
        L.append("A phone (`scripts/bench/rtp_phone.py`: SIP over UDP, PCMU) sends 30 chirps "
                 "(20 ms, 300-3400 Hz) 0.6 s apart; in the call's room a Rust participant "
                 "(`lk_bench --mode rooms --echo`) publishes back what it hears; the phone records "
                 "what returns. Each chirp's delay is the peak of the normalised cross-correlation "
                 "between the sent and received timelines (a sent frame placed at the instant its "
                 "first sample was spoken, a received one at its arrival: the phone has no jitter "
                 "buffer). LiveKit's own loop is the same measurement with a Rust participant in "
                 "place of phone and bridge (`lk_bench --mode probe`). Two calls each, no other load.\n")
        L.append("| loop | chirps back | round trip p50 ms | p95 ms | added one way by the bridge, p50 (p95) ms |")
        L.append("|---|---|---|---|---|")
        base = lat.get("livekit-only")
        for k in ["livekit-only", "roomline", "livekit-sip"]:
            if k not in lat:
                continue
            v = lat[k]
            add = "-" if k == "livekit-only" or not base else \
                f"{(v['p50'] - base['p50']) / 2:.1f} ({(v['p95'] - base['p50']) / 2:.1f})"
            L.append(f"| {k} | {v['n']}/{v['of']} | {fmt(v['p50'])} | {fmt(v['p95'])} | {add} |")
        L.append("")

    # ---- daemon figures
    if dm:
        L.append("## Roomline: memory, start-up, reload\n")
        L.append("| figure | value | how |")
        L.append("|---|---|---|")
        for label in ["bench", "100 trunks, 1000 rules"]:
            rd, hl = dm.get(f"startup_ready_ms[{label}]"), dm.get(f"startup_health_ms[{label}]")
            if rd:
                L.append(f"| start-up, {label} | READY {statistics.median(rd):.0f} ms, /health 200 "
                         f"{statistics.median(hl):.0f} ms (median of 5; max {max(rd):.0f} / {max(hl):.0f}) | "
                         "exec to `READY=1` on a notify socket; exec to the first 200 of `/health` |")
        if dm.get("reload_ms"):
            r = dm["reload_ms"]
            L.append(f"| reload, 100 trunks + 1000 rules | {statistics.median(r):.1f} ms median of 5 "
                     f"(max {max(r):.1f}) | SIGHUP to `READY=1` after `RELOADING=1` (load, validate, swap) |")
        if "rss_idle_mib" in dm:
            L.append(f"| RSS idle (bench config) | {dm['rss_idle_mib']:.1f} MiB | VmRSS 3 s after start |")
        if "rss_big_config_mib" in dm:
            L.append(f"| RSS with 100 trunks + 1000 rules | {dm['rss_big_config_mib']:.1f} MiB | VmRSS after the reloads |")
        for m in a.registrations:
            if f"rss_per_registration_kib[{m}]" in dm:
                L.append(f"| memory per idle registration, M={m} | {dm[f'rss_per_registration_kib[{m}]']:.1f} KiB "
                         f"(all {m} registered {dm[f'register_all_s[{m}]']:.1f} s after /health/ready) | "
                         f"(RSS with M registered trunks - idle RSS) / M; a sipp registrar answers 200 |")
        if dm.get("livekit_sip_startup_health_ms"):
            st = dm["livekit_sip_startup_health_ms"]
            L.append(f"| livekit-sip start-up (comparison) | {statistics.median(st):.0f} ms median of 3 | "
                     "exec to the first 200 of its health port |")
        if "livekit_sip_rss_idle_mib" in dm:
            L.append(f"| livekit-sip RSS idle (comparison) | {dm['livekit_sip_rss_idle_mib']:.1f} MiB | VmRSS 2 s after start |")
        L.append("")
    if media:
        L.append("## Media cost per frame (`cargo bench --bench media`, release)\n")
        L.append("```\n" + media.strip() + "\n```\n")

    # ---- method
    L.append("## Topology and method\n")
    L.append(
        "Everything runs on the one machine, inside a private network namespace that "
        "`scripts/bench/run` creates (loopback, plus one veth pair whose both ends are in the "
        "namespace, address 10.213.0.1/32, no route anywhere: livekit-sip's WebRTC stack (pion) "
        "never offers loopback ICE candidates, so it needs one non-loopback address to reach the "
        "server; no packet can leave the namespace).\n")
    L.append("```\n"
             "sipp UAC  --SIP/UDP-->  bridge (Roomline | livekit-sip)  --WebRTC-->  livekit-server --dev (+ Redis)\n"
             "  1 kHz PCMU (rtp_stream)   <--RTP-->    one participant per call          ^\n"
             "  port 40000 for all calls                                                  | WebRTC\n"
             "                                   lk_bench --mode rooms: 1 process, 1 participant per room,\n"
             "                                   publishes 440 Hz, counts the 1 kHz it hears;\n"
             "                                   + 2 Python SDK listeners (roompeer.py listen) in sampled rooms\n"
             "```\n")
    L.append(
        "- **Routing.** Call i dials `1555000000i` from `1444000000i`; both bridges put it in room "
        "`bench_<called>` (Roomline: a dialplan rule `room: bench_{called}`; livekit-sip: an inbound "
        "trunk allowing 127.0.0.1 with any number and a callee dispatch rule with prefix `bench`, "
        "created through LiveKit's API). The room side joins every room before the calls, so the "
        "room exists when the INVITE arrives.\n"
        "- **Setup time** is sipp's response time from the INVITE to the 200 OK (`-trace_rtt`); "
        "**completed / failed** are sipp's SuccessfulCall / FailedCall counters.\n"
        "- **phone->room** `delivered` is the audio the room side decoded in the window over what "
        "50 packets/s per call would carry; `1 kHz` is the share of those 20 ms frames whose energy "
        "is mostly at 1 kHz (Goertzel), i.e. the caller's tone. Loss anywhere (sipp, bridge, server, "
        "room side) lowers it.\n"
        "- **room->phone** comes from a packet capture on sipp's media port (tcpdump on `lo`, from "
        "one second before the window): `delivered` is PCMU packets per call over 50/s; `440 Hz` the "
        "share of the window's 20 ms slots whose packet carries the room's tone (decoded here from "
        "G.711); `seq loss` counts gaps in the bridge's RTP sequence numbers.\n"
        "- **Audio verified**: every call in both directions (the two columns above), and on two "
        "sampled calls per run an independent Python SDK listener measures the caller's tone "
        "(dominant frequency within 2 % of 1 kHz in at least 90 % of its 10 ms frames).\n"
        "- **CPU-s per call (whole call)** is the bridge's CPU from before the first INVITE to "
        "after the last BYE, over N: setup, media and teardown of calls of equal length "
        "(the `call_hold_s` column of load.csv). The ratio target is judged on it.\n"
        "- **Memory per call** is (RSS with N calls up - RSS idle) / N.\n"
        "- **Limit.** A bridge stops at the first N where more than 1 % of calls fail, not all "
        "calls are up in the window, or either direction delivers less than 90 % of its audio; the "
        "machine's 2 cores carry the server, the room side and sipp too, so a limit is this "
        "machine's, not the bridge's alone (see the CPU table).\n")
    L.append("Data: `load.csv` (one row per bridge and N; every figure above and more), `samples.csv` "
             "(1 s samples of every process's CPU and RSS), `latency.csv` (every chirp), `daemon.json`, "
             "`profile.json`, `run.json` (arguments, machine, limits), `media_bench.txt`. The per-run logs, "
             "sipp files and packet captures stay in the output directory's `raw/`. "
             "`scripts/bench/bench.py OUTDIR --report-only` rebuilds this page and the plot from those files.\n")
    (out / "report.md").write_text("\n".join(L))


# ---- main ----------------------------------------------------------------------------------

def report_only(out: Path) -> int:
    """Rebuilds report.md and cpu_mem.png from a finished run's files."""
    run = json.loads((out / "run.json").read_text())
    a = argparse.Namespace(**run["args"])
    rows = read_csv_rows(out / "load.csv") if (out / "load.csv").exists() else []
    limits = {(b, n): why for b, n, why in run["limits"]}

    def js(name: str) -> dict:
        return json.loads((out / name).read_text()) if (out / name).exists() else {}

    media = (out / "media_bench.txt").read_text() if (out / "media_bench.txt").exists() else ""
    if rows:
        plot(rows, limits, out / "cpu_mem.png", run["info"]["bridges"])
    write_report(a, out, run["info"], rows, limits, js("latency.json"), js("daemon.json"), media,
                 run["runtime_s"], js("profile.json"))
    log(f"rebuilt {out / 'report.md'}")
    return 0


def run_srtp(a: argparse.Namespace, infra: Infra, rl: "Roomline", n: int, out: Path) -> dict:
    """CPU of Roomline per call with SRTP on the phone leg next to plain RTP, same daemon,
    same N: examples/srtp_phones places N calls (plain, then SDES-SRTP with
    AES_CM_128_HMAC_SHA1_80, twice each, alternating), each sending a 1 kHz PCMU tone;
    Roomline answers, joins one room per call (nobody else in it: Opus encode, no decode)
    and sends its own RTP/SRTP back. The CPU is Roomline's over the window once all calls
    are up. sipp cannot speak SRTP, hence our own release-built sender."""
    tag = f"srtp-n{n}"
    work = out / "raw" / tag
    work.mkdir(parents=True, exist_ok=True)
    phones = Path(a.srtp_phones)
    res: dict[str, Any] = {"n": n, "window_s": a.seconds, "rate_cps": a.rate, "rounds": []}
    infra.start_livekit(tag)
    try:
        cfg = rl.write_config(
            rl.dir.parent / "roomline-srtp-config",
            {"local": "inbound:\n  allowed_addresses: [127.0.0.1/32]\nmedia_encryption: allow\n"},
            {"bench": "rules:\n  - name: bench\n    room: bench_{called}\n"},
        )
        rl.start(tag, config=cfg)
        ramp = n / a.rate
        for k, mode in enumerate(["plain", "srtp", "plain", "srtp"]):
            argv = [str(phones), "--target", f"127.0.0.1:{RL_SIP}", "--calls", str(n),
                    "--rate", str(a.rate), "--hold", str(a.seconds + 6)]
            if mode == "srtp":
                argv.append("--srtp")
            report = work / f"{mode}-{k}.json"
            p = PROCS.start(argv, log_path=work / f"{mode}-{k}.log", stdout=open(report, "wb"))
            time.sleep(ramp + 3)
            pid = rl.pids()[0]
            c0, t0 = proc_cpu(pid), time.time()
            time.sleep(a.seconds)
            c1, t1 = proc_cpu(pid), time.time()
            try:
                p.wait(timeout=a.seconds + ramp + 60)
            except subprocess.TimeoutExpired:
                log(f"{tag}: srtp_phones did not finish")
            PROCS.stop(p)
            try:
                j = json.loads(report.read_text().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                j = {}
            cores = (c1 - c0) / (t1 - t0)
            row = {"mode": mode, "cpu_cores": cores, "cpu_pct_per_call": 100 * cores / n, **j}
            res["rounds"].append(row)
            log(f"{tag} {mode}: {100 * cores:.1f} % of a core, {row['cpu_pct_per_call']:.3f} %/call; {j}")
            time.sleep(3)
    finally:
        rl.stop()
        infra.stop_livekit()
    for mode in ("plain", "srtp"):
        xs = [r["cpu_pct_per_call"] for r in res["rounds"] if r["mode"] == mode]
        res[f"{mode}_pct_per_call"] = float(np.mean(xs)) if xs else float("nan")
    res["srtp_extra_pct_per_call"] = res["srtp_pct_per_call"] - res["plain_pct_per_call"]
    return res


def srtp_report(res: dict, micro: str) -> str:
    """The report's section on SRTP."""
    if not res:
        return ""
    lines = [
        "",
        "## SRTP on the phone leg",
        "",
        f"N = {res['n']} calls into Roomline, {res['window_s']:.0f} s window, rounds alternating "
        "(same daemon, trunk `media_encryption: allow`). Sender: `examples/srtp_phones` "
        "(release build; SDES `AES_CM_128_HMAC_SHA1_80`, Roomline's own `media::srtp` on the "
        "phone side too), one PCMU 1 kHz stream per call both ways; nobody else in the rooms.",
        "",
        "| round | mode | Roomline CPU (% of a core) | % of a core per call | answered | RTP sent | received | SRTP failures |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(res["rounds"], 1):
        lines.append(f"| {i} | {r['mode']} | {100 * r['cpu_cores']:.2f} | {r['cpu_pct_per_call']:.4f} | "
                     f"{r.get('answered', '?')} | {r.get('rtp_sent', '?')} | {r.get('rtp_received', '?')} | "
                     f"{r.get('srtp_failed', '?')} |")
    lines += [
        "",
        f"Mean per call: plain {res['plain_pct_per_call']:.4f} %, SRTP {res['srtp_pct_per_call']:.4f} % "
        f"of a core; SRTP adds {res['srtp_extra_pct_per_call']:+.4f} % of a core per call "
        "(the difference of two whole-process figures: it is within their noise when small).",
    ]
    if micro.strip():
        lines += ["", "`cargo bench --bench srtp` (protect/unprotect of one 20 ms PCMU packet):", "",
                  "```", micro.strip(), "```"]
    return "\n".join(lines) + "\n"

def media_frames(text: str) -> dict[str, float]:
    """roomline_media_frames_total by `direction/path` from a /metrics page."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("roomline_media_frames_total{"):
            continue
        d = re.search(r'direction="([^"]+)"', line)
        pth = re.search(r'path="([^"]+)"', line)
        try:
            v = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        if d and pth:
            out[f"{d.group(1)}/{pth.group(1)}"] = out.get(f"{d.group(1)}/{pth.group(1)}", 0.0) + v
    return out


def roomline_metrics() -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{RL_HTTP}/metrics", timeout=5) as r:
            return r.read().decode()
    except OSError:
        return ""


def run_opus(a: argparse.Namespace, infra: Infra, rl: "Roomline", n: int, out: Path) -> dict:
    """CPU of Roomline per call for Opus phones (passthrough both ways) next to PCMU phones
    (transcoding), same daemon, same N, same rooms: examples/srtp_phones places N calls
    (PCMU, then Opus only with `--opus`, twice each, alternating), each sending a 1 kHz
    tone; examples/lk_bench (`rooms`) is in every call's room and talks (440 Hz), so
    each call has exactly one audible remote track, the case passthrough serves.
    Roomline's `roomline_media_frames_total` shows which path the frames took in each
    round. The CPU is Roomline's over the window once all calls are up."""
    tag = f"opus-n{n}"
    work = out / "raw" / tag
    work.mkdir(parents=True, exist_ok=True)
    phones = Path(a.srtp_phones)
    res: dict[str, Any] = {"n": n, "window_s": a.seconds, "rate_cps": a.rate, "rounds": []}
    infra.start_livekit(tag)
    room_side = None
    try:
        cfg = rl.write_config(
            rl.dir.parent / "roomline-opus-config",
            {"local": "inbound:\n  allowed_addresses: [127.0.0.1/32]\ncodecs: [opus, pcmu]\n"},
            {"bench": "rules:\n  - name: bench\n    room: bench_{called}\n"},
        )
        rl.start(tag, config=cfg)
        rooms = [f"bench_{CALLED_BASE + i}" for i in range(1, n + 1)]
        room_side = RoomSide(a, rooms, work)
        ramp = n / a.rate
        for k, mode in enumerate(["pcmu", "opus", "pcmu", "opus"]):
            argv = [str(phones), "--target", f"127.0.0.1:{RL_SIP}", "--calls", str(n),
                    "--rate", str(a.rate), "--hold", str(a.seconds + 6),
                    "--called-base", str(CALLED_BASE + 1)]
            if mode == "opus":
                argv.append("--opus")
            report = work / f"{mode}-{k}.json"
            p = PROCS.start(argv, log_path=work / f"{mode}-{k}.log", stdout=open(report, "wb"))
            time.sleep(ramp + 3)
            pid = rl.pids()[0]
            f0 = media_frames(roomline_metrics())
            c0, t0 = proc_cpu(pid), time.time()
            time.sleep(a.seconds)
            c1, t1 = proc_cpu(pid), time.time()
            f1 = media_frames(roomline_metrics())
            try:
                p.wait(timeout=a.seconds + ramp + 60)
            except subprocess.TimeoutExpired:
                log(f"{tag}: srtp_phones did not finish")
            PROCS.stop(p)
            try:
                j = json.loads(report.read_text().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                j = {}
            cores = (c1 - c0) / (t1 - t0)
            frames = {key: f1.get(key, 0.0) - f0.get(key, 0.0) for key in sorted(set(f0) | set(f1))}
            row = {"mode": mode, "cpu_cores": cores, "cpu_pct_per_call": 100 * cores / n,
                   "frames": frames, **j}
            res["rounds"].append(row)
            log(f"{tag} {mode}: {100 * cores:.1f} % of a core, {row['cpu_pct_per_call']:.3f} %/call; "
                f"frames {frames}; {j}")
            time.sleep(3)
    finally:
        if room_side:
            room_side.stop()
        rl.stop()
        infra.stop_livekit()
    for mode in ("pcmu", "opus"):
        xs = [r["cpu_pct_per_call"] for r in res["rounds"] if r["mode"] == mode]
        res[f"{mode}_pct_per_call"] = float(np.mean(xs)) if xs else float("nan")
    return res


def opus_report(res: dict, media: str = "") -> str:
    """The report's section on Opus passthrough (with the media micro-benchmark's Opus
    phone lines if `media` has them)."""
    if not res:
        return ""
    def share(r: dict, direction: str) -> str:
        f = r.get("frames", {})
        pas, tr = f.get(f"{direction}/passthrough", 0.0), f.get(f"{direction}/transcoded", 0.0)
        return f"{100 * pas / (pas + tr):.1f} %" if pas + tr else "-"
    lines = [
        "",
        "## Opus phones: passthrough next to PCMU transcoding",
        "",
        f"N = {res['n']} calls into Roomline, {res['window_s']:.0f} s window, rounds alternating "
        "(same daemon and rooms, trunk `codecs: [opus, pcmu]`). Phones: `examples/srtp_phones` "
        "(release build), a 1 kHz tone per call, PCMU or `--opus` (Opus only, 20 ms, in-band "
        "FEC, packets encoded once before the run); in every room `examples/lk_bench` talks "
        "(440 Hz), one audible remote track per call. Frames by path: Roomline's "
        "`roomline_media_frames_total` over the window (share passed through).",
        "",
        "| round | phones | Roomline CPU (% of a core) | % of a core per call | to the room passed | to the phone passed | answered | RTP sent | received |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(res["rounds"], 1):
        lines.append(f"| {i} | {r['mode']} | {100 * r['cpu_cores']:.2f} | {r['cpu_pct_per_call']:.4f} | "
                     f"{share(r, 'to_room')} | {share(r, 'to_phone')} | {r.get('answered', '?')} | "
                     f"{r.get('rtp_sent', '?')} | {r.get('rtp_received', '?')} |")
    lines += [
        "",
        f"Mean per call: PCMU (transcoding) {res['pcmu_pct_per_call']:.4f} %, Opus (passthrough) "
        f"{res['opus_pct_per_call']:.4f} % of a core (goal for passthrough: at most 0.1 %). "
        "Both are whole-process figures: RTP, the WebRTC side (str0m, SRTP), sockets and "
        "tasks are the same for both phones; the codec work is what differs.",
    ]
    micro = [line for line in media.splitlines() if "Opus phone" in line or "PCMU with 1" in line]
    if micro:
        lines += ["", "The media work alone, per call and 20 ms frame (`cargo bench --bench media`: "
                  "the phone leg with one room track, both ways; transcoded = the same Opus call "
                  "with its frames encoded at 16 kHz, which passthrough saves):", "", "```",
                  *[m.strip() for m in micro], "```"]
    return "\n".join(lines) + "\n"



def main() -> int:
    p = argparse.ArgumentParser(prog="bench.py")
    p.add_argument("outdir")
    p.add_argument("--roomline", default="")
    p.add_argument("--lk-bench", default="")
    p.add_argument("--livekit-server", default="")
    p.add_argument("--livekit-sip", default="")
    p.add_argument("--livekit-sip-version", default="?")
    p.add_argument("--livekit-sip-note", default="")
    p.add_argument("--ns", default="10 25 50 75 100 150 200 300 400")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rate", type=float, default=20)
    p.add_argument("--bridges", default="roomline livekit-sip")
    p.add_argument("--registrations", default="100 1000")
    p.add_argument("--skip", default="", help="any of: load profile latency daemon srtp opus")
    p.add_argument("--media-bench", default="")
    p.add_argument("--srtp-bench", default="", help="cargo bench --bench srtp output")
    p.add_argument("--srtp-phones", default="", help="examples/srtp_phones (release)")
    p.add_argument("--srtp-n", type=int, default=20, help="calls of the SRTP figure (0: none)")
    p.add_argument("--opus-n", type=int, default=20, help="calls of the Opus passthrough figure (0: none)")
    p.add_argument("--profile-n", type=int, default=50,
                   help="N of the extra run profiled with perf (0: none)")
    p.add_argument("--netns-ip", default="")
    p.add_argument("--netns-if", default="")
    p.add_argument("--started-at", type=float, default=0.0,
                   help="when scripts/bench/run started (Unix time), for the total runtime")
    p.add_argument("--report-only", action="store_true",
                   help="rebuild report.md and cpu_mem.png from OUTDIR's data files")
    a = p.parse_args()
    if a.report_only:
        return report_only(Path(a.outdir).resolve())
    if not (a.roomline and a.lk_bench and a.livekit_server):
        p.error("--roomline, --lk-bench and --livekit-server are required (unless --report-only)")
    a.ns = [int(x) for x in a.ns.split()]
    a.bridges = a.bridges.split()
    a.registrations = [int(x) for x in a.registrations.split()]
    skip = set(a.skip.split())
    out = Path(a.outdir).resolve()
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t_begin = time.monotonic()
    infra = Infra(a, raw)
    rl = Roomline(a, raw)
    ls = LiveKitSip(a, raw) if ("livekit-sip" in a.bridges and a.livekit_sip) else None
    bridges = [b for b in (rl if "roomline" in a.bridges else None, ls) if b]
    rows: list[dict] = []
    samples: list[dict] = []
    lat_rows: list[dict] = []
    limits: dict = {}
    lat: dict = {}
    dm: dict = {}
    profiles: dict = {}
    srtp: dict = {}
    opus: dict = {}
    media = Path(a.media_bench).read_text() if a.media_bench and Path(a.media_bench).exists() else ""
    info = machine_info(a.livekit_server, {b.name: b.version for b in bridges})
    log(f"machine: {info['cores']} x {info['cpu_model']}; bridges: {info['bridges']}")
    try:
        infra.start_redis()
        if "load" not in skip:
            stopped: set[str] = set()
            for i, n in enumerate(a.ns):
                order = bridges if i % 2 == 0 else list(reversed(bridges))
                for b in order:
                    if b.name in stopped:
                        continue
                    try:
                        row = run_load(a, infra, b, n, out, samples)
                    except Exception as e:  # noqa: BLE001 - a broken run is a result too
                        import traceback
                        traceback.print_exc()
                        log(f"{b.name} N={n}: {e}")
                        limits[(b.name, n)] = f"the run broke: {e}"
                        stopped.add(b.name)
                        continue
                    rows.append(row)
                    why = limit_reason(row)
                    log(f"{b.name} N={n}: ok {row['calls_ok']} failed {row['calls_failed']} "
                        f"setup p50 {row['setup_p50_ms']:.0f} ms, CPU {100 * row['cpu_bridge']:.1f} % "
                        f"({row['cpu_bridge_pct_per_call']:.3f} %/call), RSS {row['rss_window_mib']:.1f} MiB, "
                        f"up {100 * row['up_delivered_mean']:.1f} %, down {100 * row['down_tone_frac_mean']:.1f} %"
                        + (f"; LIMIT: {why}" if why else ""))
                    if why:
                        limits[(b.name, n)] = why
                        stopped.add(b.name)
                    write_csv(out / "load.csv", rows)
                    write_csv(out / "samples.csv", samples)
        if "profile" not in skip and a.profile_n > 0 and shutil.which("perf"):
            for b in bridges:
                try:
                    r = run_load(a, infra, b, a.profile_n, out, [], profile=True)
                    profiles[b.name] = {"n": a.profile_n, "cpu": r["cpu_bridge"], **r.get("profile", {})}
                    log(f"profile {b.name} N={a.profile_n}: {profiles[b.name].get('categories')}")
                except Exception as e:  # noqa: BLE001
                    log(f"profile {b.name}: {e}")
            (out / "profile.json").write_text(json.dumps(profiles, indent=1))
        if "latency" not in skip:
            lat = run_latency(a, infra, bridges, out, lat_rows)
            write_csv(out / "latency.csv", lat_rows)
        if "daemon" not in skip and "roomline" in a.bridges:
            dm = run_daemon_figures(a, infra, rl, ls, out)
            (out / "daemon.json").write_text(json.dumps(dm, indent=1))
        if "srtp" not in skip and a.srtp_phones and a.srtp_n > 0 and "roomline" in a.bridges:
            try:
                srtp = run_srtp(a, infra, rl, a.srtp_n, out)
                (out / "srtp.json").write_text(json.dumps(srtp, indent=1))
            except Exception as e:  # noqa: BLE001 - a broken run is a result too
                log(f"srtp: {e}")
        if "opus" not in skip and a.srtp_phones and a.opus_n > 0 and "roomline" in a.bridges:
            try:
                opus = run_opus(a, infra, rl, a.opus_n, out)
                (out / "opus.json").write_text(json.dumps(opus, indent=1))
            except Exception as e:  # noqa: BLE001 - a broken run is a result too
                import traceback
                traceback.print_exc()
                log(f"opus: {e}")
    finally:
        PROCS.stop_all()
    runtime = time.time() - a.started_at if a.started_at else time.monotonic() - t_begin
    (out / "latency.json").write_text(json.dumps(lat, indent=1))
    write_csv(out / "load.csv", rows)
    write_csv(out / "samples.csv", samples)
    if rows:
        plot(rows, limits, out / "cpu_mem.png", info["bridges"])
    (out / "run.json").write_text(json.dumps({
        "args": {k: getattr(a, k) for k in ("ns", "seconds", "rate", "bridges", "registrations",
                                            "livekit_sip_note", "profile_n")},
        "info": info, "runtime_s": runtime,
        "limits": [[b, n, why] for (b, n), why in limits.items()],
    }, indent=1))
    write_report(a, out, info, rows, limits, lat, dm, media, runtime, profiles)
    micro = Path(a.srtp_bench).read_text() if a.srtp_bench and Path(a.srtp_bench).exists() else ""
    if srtp:
        with open(out / "report.md", "a") as f:
            f.write(srtp_report(srtp, micro))
    if opus:
        with open(out / "report.md", "a") as f:
            f.write(opus_report(opus, media))
    log(f"done in {runtime / 60:.1f} min: {out / 'report.md'}")
    print((out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
