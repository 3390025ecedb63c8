#!/usr/bin/env python3
"""soak.py: the soak test behind `scripts/soak` (which installs and builds what is needed,
creates the private network namespace this runs in, and calls this). It measures and
reports; it asserts nothing.

  soak.py OUTDIR --roomline BIN --lk-bench BIN --livekit-server BIN [--calls 40]
          [--minutes 60] [--hold 20-60] [--outbound-share 0.25] [--room-ends 0.3]
          [--sample-every 5] [--warmup S] [--idle 20] [--after 30] [--listen-every 50]
          [--rate R] [--seed 1]
  soak.py OUTDIR --report-only      # rebuild report.md and soak.png from OUTDIR's files

N calls stay up for T minutes while calls start and end all the time:

  sipp phones (UAC, `-l` keeps N_in up) --SIP/RTP 1 kHz--> Roomline --WebRTC--> livekit-server
  sipp carrier (UAS) <--SIP/RTP 1 kHz-- Roomline <-- CreateSIPParticipant (N_out API loops,
                                                     LiveKit's Python SDK, livekit-api)
  room side: examples/lk_bench --mode rooms, one participant per call's room (joined
  before the call, left after it), publishing 440 Hz, counting the 1 kHz of each sender;
  tcpdump: the bridge's RTP to the phones, checked for 440 Hz packet by packet;
  every few seconds: Roomline's RSS, fds, threads, /health/detailed, LiveKit's rooms and
  participants (ListRooms / ListParticipants).

Each call's length is drawn uniformly from --hold; a share of the calls (--room-ends) is
hung up by the room (RemoveParticipant) instead of the phone. Every process started here
is stopped here, by PID (also on SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
import soak_report as R  # noqa: E402
from harness import (  # noqa: E402
    API_KEY, API_SECRET, LK_PORT, PROCS, PY, RL_HTTP, RL_RTP, RL_SIP, ROOMPEER, SIPP_MEDIA,
    SIPP_SIP, Infra, RoomSide, Roomline, http_json, loadavg, log, machine_cpu, machine_info, on_signal,
    pcmu_tone_frames, phone_uac_scenario, proc_cpu, proc_fds, proc_rss, proc_threads, proc_wait,
    proc_rss_parts,
    read_csv_rows, read_pcap_stream, rtp_parse, tone_file, write_csv,
)

harness.LOG_TAG = "soak"
warnings.filterwarnings("ignore", message=".*HMAC key.*")

UAS_SIP, UAS_MEDIA = 5070, 41000
ROOM_HZ, PHONE_HZ = 440, 1000
FROM_NUMBER = "+15550100"
# how long the phone of a call the room hangs up stays on beyond the room's hang-up (the
# room's hang-up must come first)
ROOM_END_SLACK_S = 60

UAS_XML = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<!-- scripts/bench/soak.py: the carrier answering outbound calls. It stays on for the
     X-Soak-Hold header's milliseconds, streaming a tone, then sends BYE; a BYE from the
     bridge first is answered by sipp itself (its error log says so). -->
<scenario name="roomline-carrier">
  <recv request="INVITE">
    <action>
      <ereg regexp="sip:[^>;]*" search_in="hdr" header="Contact:" assign_to="contact_uri"/>
      <ereg regexp=".*" search_in="hdr" header="From:" assign_to="peer_from"/>
      <ereg regexp="sip:[^@>;]+" search_in="hdr" header="To:" assign_to="callee"/>
      <ereg regexp="[0-9]+" search_in="hdr" header="X-Soak-Hold:" assign_to="hold_ms"/>
      <ereg regexp="m=audio [0-9]+" search_in="body" assign_to="bport"/>
      <log message="INVITED [$callee] [call_id] [timestamp]"/>
    </action>
  </recv>
  <send>
    <![CDATA[
      SIP/2.0 180 Ringing
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Length: 0
    ]]>
  </send>
  <send retrans="500">
    <![CDATA[
      SIP/2.0 200 OK
      [last_Via:]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      [last_CSeq:]
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Type: application/sdp
      Content-Length: [len]

      v=0
      o=carrier 1 1 IN IP4 [media_ip]
      s=-
      c=IN IP4 [media_ip]
      t=0 0
      m=audio [media_port] RTP/AVP 0
      a=rtpmap:0 PCMU/8000
      a=ptime:20
      a=sendrecv
    ]]>
  </send>
  <recv request="ACK">
    <action><todouble assign_to="hold" variable="hold_ms"/></action>
  </recv>
  <nop>
    <action>
      <exec rtp_stream="{tone},-1,0"/>
      <log message="ANSWERED [$callee] [$bport] [timestamp]"/>
    </action>
  </nop>
  <pause variable="hold"/>
  <nop>
    <action>
      <exec rtp_stream="pause"/>
      <log message="HANGUP [$callee] [timestamp]"/>
    </action>
  </nop>
  <send retrans="500">
    <![CDATA[
      BYE [$contact_uri] SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      Max-Forwards: 70
      From: <sip:callee@[local_ip]:[local_port]>;tag=[pid]SIPpTag01[call_number]
      To:[$peer_from]
      Call-ID: [call_id]
      CSeq: 1 BYE
      Contact: <sip:callee@[local_ip]:[local_port]>
      Content-Length: 0
    ]]>
  </send>
  <recv response="200">
    <action><log message="END [$callee] [timestamp]"/></action>
  </recv>
</scenario>
"""


def inbound_numbers(k: int) -> tuple[str, str, str]:
    """(called, caller, room) of inbound call k (the k-th line of the injection file)."""
    called, caller = f"1555{k:07d}", f"1444{k:07d}"
    return called, caller, f"soak_{called}"


def outbound_numbers(j: int) -> tuple[str, str, str]:
    """(number dialled, room, identity) of outbound call j."""
    return f"+1777{j:07d}", f"soak_out_{j}", f"out_{j}"


class Tail:
    """New lines of a file that another process appends to."""

    def __init__(self, path: Path) -> None:
        self.path, self.pos, self.partial = path, 0, ""

    def lines(self) -> list[str]:
        try:
            with open(self.path, "r", errors="replace") as f:
                f.seek(self.pos)
                data = f.read()
                self.pos = f.tell()
        except OSError:
            return []
        data = self.partial + data
        parts = data.split("\n")
        self.partial = parts.pop()
        return parts


class Capture(threading.Thread):
    """tcpdump on `lo`, `-w -` into a pipe: the bridge's RTP to the phones (from its RTP
    range to the phones' media ports), each PCMU packet checked for the room's tone, into
    DownFlows segments."""

    def __init__(self, raw: Path) -> None:
        super().__init__(daemon=True)
        flt = (f"udp and src portrange {RL_RTP[0]}-{RL_RTP[1]} and "
               f"(dst port {SIPP_MEDIA} or dst port {UAS_MEDIA})")
        self.p = PROCS.start(["tcpdump", "-i", "lo", "-n", "-s", "256", "-B", "32768", "-U", "-Z", "root",
                              "-w", "-", flt], log_path=raw / "tcpdump.log", stdout=subprocess.PIPE)
        self.flows = R.DownFlows()
        self.lock = threading.Lock()
        self.packets = 0

    def run(self) -> None:
        batch: list[tuple[float, int, int, int, int, bytes]] = []
        last_flush = time.monotonic()
        for t, sp, dp, pl in read_pcap_stream(self.p.stdout):
            rtp = rtp_parse(pl)
            if rtp is None or rtp[0] != 0:
                continue
            _pt, seq, ts, ssrc, payload = rtp
            batch.append((t, sp, dp, ssrc, seq, payload, ts))
            if len(batch) >= 200 or time.monotonic() - last_flush > 0.5:
                self._flush(batch)
                batch = []
                last_flush = time.monotonic()
        self._flush(batch)

    def _flush(self, batch: list) -> None:
        if not batch:
            return
        full = [b for b in batch if len(b[5]) == 160]
        tones = dict(zip((id(b) for b in full), pcmu_tone_frames(b"".join(b[5] for b in full), ROOM_HZ)))
        with self.lock:
            for b in batch:
                tone = bool(tones[id(b)]) if id(b) in tones else bool(pcmu_tone_frames(b[5], ROOM_HZ).any())
                self.flows.add(b[0], b[1], b[2], b[3], b[4], tone, b[6])
            self.packets += len(batch)
            self.flows.expire(batch[-1][0])

    def segments(self) -> list[dict]:
        with self.lock:
            return self.flows.segments()


class Soak:
    def __init__(self, a: argparse.Namespace, out: Path) -> None:
        self.a, self.out = a, out
        self.raw = out / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(a.seed)
        self.calls_out = int(round(a.calls * a.outbound_share))
        self.calls_in = a.calls - self.calls_out
        self.samples: list[dict] = []
        self.phase = "start"
        self.t0 = time.time()
        self.stopping = False
        # inbound plan: one line per call (hold ms, who hangs up, when the room does)
        self.plan: list[dict] = []
        # rooms: state of each call's room on the room side
        self.rooms: dict[str, dict] = {}
        self.waiters: dict[tuple, asyncio.Future] = {}
        self.senders: dict[str, dict] = {}          # room -> the SIP sender's counters
        self.sip_identity: dict[str, str] = {}      # room -> identity of its SIP participant
        self.lingered: set[str] = set()
        self.room_ended: dict[str, float] = {}      # room -> when the room hung up
        self.listeners: dict[str, tuple[subprocess.Popen, Path, str]] = {}
        self.in_live: dict[int, dict] = {}          # sipp call number -> live state
        self.out_recs: dict[int, dict] = {}
        self.out_live_answered: dict[str, float] = {}  # callee -> answered (UAS log)
        self.out_live_ended: set[str] = set()
        self.joined_upto = 0
        self.max_started = 0
        self.next_out = 0
        self.cpu_prev: Optional[tuple[float, dict]] = None
        self.sipp_pids: list[int] = []
        self.phases: dict[str, float] = {}
        self.listener_results: list[dict] = []
        self.room_lag: list[dict] = []              # the room side's publish_lag events
        self.capture: Optional[Capture] = None
        self.rl: Optional[Roomline] = None
        self.room_side: Optional[RoomSide] = None
        self.tasks: set[asyncio.Task] = set()

    # ---- room side events (called on the loop thread) ------------------------------------
    def on_room_event(self, ev: dict) -> None:
        kind, room = ev.get("event"), ev.get("room", "")
        st = self.rooms.get(room)
        if kind in ("joined", "join_failed"):
            if st is not None:
                st["joined"] = kind == "joined"
                st["join_error"] = ev.get("error")
                if kind == "joined":
                    self._maybe_listen(room)
            self._resolve(("joined", room), kind == "joined")
        elif kind == "participant_joined":
            if "sip" in str(ev.get("kind", "")).lower():
                self.sip_identity.setdefault(room, ev["identity"])
        elif kind == "left":
            ident = ev.get("identity", "")
            if ident == self.sip_identity.get(room) or ident.startswith(("sip_", "out_")):
                self.senders.setdefault(room, ev)
                if st is not None:
                    st["left_at"] = ev.get("unix", time.time())
                self._resolve(("left", room), True)
        elif kind == "closed":
            def sip(ident: str) -> bool:
                return ident == self.sip_identity.get(room) or ident.startswith(("sip_", "out_"))
            for s in ev.get("senders", []):
                if sip(s.get("identity", "")):
                    self.senders.setdefault(room, s)
            if any(sip(i) for i in ev.get("present", [])):
                self.lingered.add(room)
        elif kind == "publish_lag":
            self.room_lag.append({"unix": ev.get("unix", time.time()), "late_ms": ev.get("late_ms", 0),
                                  "refused": ev.get("refused", 0)})
        elif kind == "room_lost" and not (st and st["closing"]):
            log(f"room side lost {room}: {ev.get('reason')}")

    def _resolve(self, key: tuple, value: Any) -> None:
        fut = self.waiters.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(value)

    def _wait(self, key: tuple) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiters[key] = fut
        return fut

    def open_room(self, room: str, call: Any) -> None:
        self.rooms[room] = {"call": call, "joined": None, "closing": False}
        self.room_side.join(room)

    def close_room(self, room: str) -> None:
        st = self.rooms.get(room)
        if st is None or st["closing"]:
            return
        st["closing"] = True
        lst = self.listeners.get(room)
        if lst:
            threading.Thread(target=PROCS.stop, args=(lst[0],), kwargs={"sig": signal.SIGTERM, "timeout": 20},
                             daemon=True).start()
        self.room_side.close(room)

    def _maybe_listen(self, room: str) -> None:
        """An independent listener (LiveKit's Python SDK) in sampled calls' rooms."""
        st = self.rooms[room]
        every = self.a.listen_every
        if every <= 0:
            return
        direction, n = st["call"]
        if n % every:
            return
        ident = f"sip_{inbound_numbers(n)[1]}" if direction == "in" else outbound_numbers(n)[2]
        d = self.raw / "listeners"
        d.mkdir(exist_ok=True)
        rep = d / f"{room}.json"
        p = PROCS.start([PY, str(ROOMPEER), "listen", "--url", f"ws://127.0.0.1:{LK_PORT}",
                         "--api-key", API_KEY, "--api-secret", API_SECRET, "--room", room,
                         "--identity", "listener", "--from-identity", ident, "--seconds", "3600",
                         "--wait-timeout", "120"],
                        log_path=d / f"{room}.log", stdout=open(rep, "wb"))
        self.listeners[room] = (p, rep, ident)

    # ---- inbound: sipp's logs, live ----------------------------------------------------------
    def inbound_tick(self, now: float) -> None:
        for line in self.uac_tail.lines():
            for e in R.parse_step_log(line):
                k = e.get("call")
                if k is None:
                    continue
                c = self.in_live.setdefault(k, {})
                if e["ev"] == "START":
                    c["line"] = int(e["caller"][4:]) if e.get("caller", "")[4:].isdigit() else k
                    c["call_id"] = e.get("call_id")
                    self.by_cid[c["call_id"]] = k
                    self.max_started = max(self.max_started, c["line"])
                elif e["ev"] == "ANSWERED":
                    c["answered"] = e["unix"]
                    line = self.plan[c.get("line", k) - 1]
                    if line["ender"] == "room":
                        _called, caller, room = inbound_numbers(c.get("line", k))
                        task = asyncio.get_running_loop().create_task(
                            self.room_hangup(room, e["unix"] + line["room_end_s"], f"sip_{caller}"))
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                elif e["ev"] in ("END", "REJECTED", "SETUP_TIMEOUT"):
                    c.setdefault("ended", e["unix"])
        # the bridge hung up: sipp's error log (small: only what went unexpectedly)
        try:
            size = self.uac_err.stat().st_size
        except OSError:
            size = 0
        if size != self.uac_err_size:
            self.uac_err_size = size
            for r in R.parse_error_log(self.uac_err.read_text(errors="replace")):
                k = self.by_cid.get(r["call_id"])
                if k is not None:
                    self.in_live.setdefault(k, {}).setdefault("ended", r["unix"])
        # the room side stays ahead of sipp
        want = min(len(self.plan), self.max_started + self.lookahead)
        while self.joined_upto < want and not self.stopping:
            self.joined_upto += 1
            self.open_room(inbound_numbers(self.joined_upto)[2], ("in", self.joined_upto))
        # rooms of calls that ended: leave once the SIP participant left, or LINGER_S later
        for k, c in self.in_live.items():
            if "ended" in c and not c.get("closed"):
                room = inbound_numbers(c.get("line", k))[2]
                st = self.rooms.get(room, {})
                if st.get("left_at") or now - c["ended"] > R.LINGER_S or \
                        (c.get("answered") is None and now - c["ended"] > 2):
                    c["closed"] = True
                    self.close_room(room)

    async def room_hangup(self, room: str, at: float, fallback_identity: str) -> None:
        """The room ends the call: RemoveParticipant at `at` (Unix time)."""
        await asyncio.sleep(max(0.0, at - time.time()))
        ident = self.sip_identity.get(room, fallback_identity)
        self.room_ended[room] = time.time()
        try:
            await self.lk_api.room.remove_participant(self.api.RoomParticipantIdentity(room=room, identity=ident))
        except Exception as e:  # noqa: BLE001 - recorded with the call
            self.rooms.setdefault(room, {})["remove_error"] = str(e)[:160]

    # ---- outbound: one API loop per slot -----------------------------------------------------
    async def outbound_slot(self, slot: int) -> None:
        api = self.api
        await asyncio.sleep(self.rng.uniform(0, min(self.a.hold_min, 10.0)))
        while not self.stopping:
            self.next_out += 1
            j = self.next_out
            number, room, ident = outbound_numbers(j)
            hold = self.rng.uniform(self.a.hold_min, self.a.hold_max)
            ender = "room" if self.rng.random() < self.a.room_ends else "phone"
            rec: dict[str, Any] = {"id": j, "room": room, "number": number, "identity": ident,
                                   "ender": ender, "hold_s": hold, "slot": slot}
            self.out_recs[j] = rec
            fut = self._wait(("joined", room))
            self.open_room(room, ("out", j))
            try:
                joined = await asyncio.wait_for(fut, 60)
            except asyncio.TimeoutError:
                joined = False
            if not joined:
                rec["api_error"] = "the room side could not join the room"
                self.close_room(room)
                await asyncio.sleep(1)
                continue
            phone_hold = hold if ender == "phone" else hold + ROOM_END_SLACK_S
            req = api.CreateSIPParticipantRequest(
                sip_trunk_id="carrier", sip_call_to=number, room_name=room, participant_identity=ident,
                wait_until_answered=True, headers={"X-Soak-Hold": str(int(phone_hold * 1000))})
            left = self._wait(("left", room))
            t = time.time()
            rec["requested"] = t
            try:
                await self.rl_api.sip.create_sip_participant(req, timeout=60)
                rec["setup_s"] = time.time() - t
                rec["api_answered"] = time.time()
            except api.TwirpError as e:
                meta = dict(e.metadata or {})
                st = meta.get("sip_status_code")
                rec["api_error"] = f"{e.code}" + (f" (SIP {st})" if st else "")
            except Exception as e:  # noqa: BLE001 - a failed call is a result
                rec["api_error"] = f"{type(e).__name__} {str(e)[:80]}"
            if "api_error" not in rec:
                if ender == "room":
                    await self.room_hangup(room, rec["api_answered"] + hold, ident)
                try:
                    await asyncio.wait_for(left, phone_hold + R.LINGER_S + 10)
                except asyncio.TimeoutError:
                    pass
            self.waiters.pop(("left", room), None)
            self.close_room(room)
            await asyncio.sleep(self.rng.uniform(0.2, 1.0))

    def outbound_tick(self) -> None:
        for line in self.uas_tail.lines():
            for e in R.parse_step_log(line):
                callee = e.get("callee")
                if callee and e["ev"] == "ANSWERED":
                    self.out_live_answered[callee] = e["unix"]
                elif callee and e["ev"] == "END":
                    self.out_live_ended.add(callee)
                elif callee and e["ev"] == "INVITED" and e.get("call_id"):
                    self.out_by_cid[e["call_id"]] = callee
        try:
            size = self.uas_err.stat().st_size
        except OSError:
            size = 0
        if size != self.uas_err_size:
            self.uas_err_size = size
            for r in R.parse_error_log(self.uas_err.read_text(errors="replace")):
                callee = self.out_by_cid.get(r["call_id"])
                if callee:
                    self.out_live_ended.add(callee)

    def phones_up(self) -> int:
        n = sum(1 for c in self.in_live.values() if c.get("answered") and "ended" not in c)
        n += sum(1 for c in self.out_live_answered if c not in self.out_live_ended)
        return n

    # ---- sampling ------------------------------------------------------------------------------
    def cpu_row(self, now: float) -> dict:
        """CPU of each process (% of one core) and of the machine (cores busy, stolen)
        since the previous sample."""
        roles = {"cpu_pct": [self.rl.p.pid], "lk_cpu_pct": [self.infra.lk.pid],
                 "room_side_cpu_pct": [self.room_side.p.pid], "sipp_cpu_pct": self.sipp_pids,
                 "tcpdump_cpu_pct": [self.capture.p.pid], "self_cpu_pct": [os.getpid()],
                 "listeners_cpu_pct": [p.pid for p, _, _ in self.listeners.values() if p.poll() is None]}
        cur = {k: sum(c for c in (proc_cpu(p) for p in pids) if c == c) for k, pids in roles.items()}
        busy, steal, _total = machine_cpu()
        # CPU seconds / 100: the difference below comes out in cores, not % of one
        cur["machine_busy_cores"], cur["steal_cores"] = busy / 100, steal / 100
        # run-queue waits, seconds / 10: the difference comes out in ms per second
        for k, role in (("wait_ms_per_s", "cpu_pct"), ("lk_wait_ms_per_s", "lk_cpu_pct"),
                        ("room_side_wait_ms_per_s", "room_side_cpu_pct")):
            w = [proc_wait(p) for p in roles[role]]
            cur[k] = sum(x for x in w if x == x) / 10
        row: dict[str, Any] = {}
        if self.cpu_prev:
            t_prev, prev = self.cpu_prev
            dt = now - t_prev
            for k, v in cur.items():
                # listeners and threads come and go: a negative difference is one that ended
                row[k] = round(max(0.0, 100 * (v - prev.get(k, v)) / dt), 2) if dt > 0 else ""
        self.cpu_prev = (now, cur)
        return row

    async def sample(self) -> dict:
        now = time.time()
        pid = self.rl.p.pid
        cpu = self.cpu_row(now)
        loop = asyncio.get_running_loop()
        det = await loop.run_in_executor(None, http_json, f"http://127.0.0.1:{RL_HTTP}/health/detailed")
        calls = (det or {}).get("calls") or {}
        runtime = (det or {}).get("runtime") or {}
        metrics = await loop.run_in_executor(None, http_text, f"http://127.0.0.1:{RL_HTTP}/metrics")
        txs = re.search(r"^roomline_sip_endpoint_transactions (\S+)$", metrics or "", re.M)
        row: dict[str, Any] = {
            "t_s": round(now - self.t0, 2), "unix": round(now, 3), "phase": self.phase,
            "phones_up": self.phones_up(),
            "rss_mib": round(proc_rss(pid), 2), "rss_anon_mib": round(proc_rss_parts(pid)[0], 2),
            "rss_file_mib": round(proc_rss_parts(pid)[1], 2), "fds": proc_fds(pid), "threads": proc_threads(pid),
            **cpu,
            "active": calls.get("active", ""), "rtp_ports": calls.get("rtp_ports_in_use", ""),
            "participants": calls.get("participants", ""), "tasks": calls.get("tasks", ""),
            # every task alive in the runtime (not only the call tasks)
            "alive_tasks": runtime.get("alive_tasks", ""),
            "endpoint_txs": float(txs.group(1)) if txs else "",
        }
        try:
            rooms = (await asyncio.wait_for(self.lk_api.room.list_rooms(self.api.ListRoomsRequest()), 5)).rooms
            lists = await asyncio.wait_for(asyncio.gather(*[
                self.lk_api.room.list_participants(self.api.ListParticipantsRequest(room=r.name)) for r in rooms],
                return_exceptions=True), 10)
            sip = side = other = 0
            for r in lists:
                if isinstance(r, BaseException):
                    continue
                for p in r.participants:
                    if p.kind == 3:  # ParticipantInfo.Kind.SIP
                        sip += 1
                    elif p.identity == "room-side":
                        side += 1
                    else:
                        other += 1
            row.update(lk_rooms=len(rooms), lk_sip=sip, lk_room_side=side, lk_other=other)
        except Exception as e:  # noqa: BLE001 - a missed sample is blank
            log(f"LiveKit listing failed: {type(e).__name__} {e}")
        row["load1"] = loadavg()[0]
        row["lk_rss_mib"] = round(proc_rss(self.infra.lk.pid), 1)
        row["room_side_rss_mib"] = round(proc_rss(self.room_side.p.pid), 1)
        row["inbound_started"] = self.max_started
        row["outbound_started"] = self.next_out
        return row

    async def sampler(self) -> None:
        nxt = time.time()
        while True:
            self.samples.append(await self.sample())
            nxt += self.a.sample_every
            await asyncio.sleep(max(0.05, nxt - time.time()))

    # ---- the run ---------------------------------------------------------------------------------
    async def run(self) -> dict:
        from livekit import api
        self.api = api
        a = self.a
        self.by_cid: dict[str, int] = {}
        self.out_by_cid: dict[str, str] = {}
        self.lookahead = max(8, self.calls_in // 2)
        loop = asyncio.get_running_loop()
        phases: dict[str, float] = {}

        self.infra = Infra(a, self.raw)
        # warn: at info, livekit-server writes about 3 MB a minute at 40 calls with churn
        self.infra.start_livekit("soak", log_level="warn")
        self.rl = Roomline(a, self.raw)
        cfg = self.rl.write_config(
            self.raw / "roomline-config",
            {"phones": "inbound:\n  allowed_addresses: [127.0.0.1/32]\n",
             "carrier": f"outbound:\n  address: 127.0.0.1:{UAS_SIP}\n  from_number: \"{FROM_NUMBER}\"\n"},
            {"soak": "rules:\n  - name: soak\n    room: soak_{called}\n"},
        )
        self.rl.start("soak", config=cfg)
        self.lk_api = api.LiveKitAPI(f"http://127.0.0.1:{LK_PORT}", API_KEY, API_SECRET)
        self.rl_api = api.LiveKitAPI(f"http://127.0.0.1:{RL_HTTP}", API_KEY, API_SECRET)
        self.room_side = RoomSide(a, [], self.raw, tag="rooms0",
                                  on_event=lambda ev: loop.call_soon_threadsafe(self.on_room_event, ev))
        self.capture = Capture(self.raw)
        self.capture.start()
        tone = tone_file(self.raw / "tone1k.ul", PHONE_HZ)
        (self.raw / "uas.xml").write_text(UAS_XML.replace("{tone}", str(tone)))
        uas = PROCS.start(["sipp", "-sf", str(self.raw / "uas.xml"), "-i", "127.0.0.1", "-p", str(UAS_SIP),
                           "-mi", "127.0.0.1", "-mp", str(UAS_MEDIA), "-max_socket", "1000",
                           "-trace_logs", "-trace_err", "-nostdin"],
                          log_path=self.raw / "sipp-uas.out", cwd=self.raw)
        self.sipp_pids.append(uas.pid)
        self.uas_tail = Tail(self.raw / f"uas_{uas.pid}_logs.log")
        self.uas_err, self.uas_err_size = self.raw / f"uas_{uas.pid}_errors.log", 0

        # the inbound plan: enough lines for the whole run at the shortest calls
        lines = int(a.minutes * 60 / a.hold_min * self.calls_in * 1.3) + 2 * self.calls_in + 10
        for _ in range(lines):
            hold = self.rng.uniform(a.hold_min, a.hold_max)
            ender = "room" if self.rng.random() < a.room_ends else "phone"
            self.plan.append({"hold_s": hold, "ender": ender, "room_end_s": hold,
                              "phone_hold_s": hold if ender == "phone" else hold + ROOM_END_SLACK_S})
        (self.raw / "calls.csv").write_text("SEQUENTIAL\n" + "".join(
            f"{inbound_numbers(k)[0]};{inbound_numbers(k)[1]};{int(p['phone_hold_s'] * 1000)}\n"
            for k, p in enumerate(self.plan, 1)))
        (self.raw / "uac.xml").write_text(phone_uac_scenario(tone))

        # idle baseline
        self.t0 = time.time()
        self.phase = "idle"
        sampler = loop.create_task(self.sampler())
        log(f"idle baseline {a.idle:g} s; then {self.calls_in} inbound + {self.calls_out} outbound calls "
            f"for {a.minutes:g} min")
        await asyncio.sleep(a.idle)

        # rooms for the first calls, then the phones
        self.phase = "calls"
        want = min(len(self.plan), self.calls_in + self.lookahead)
        futs = []
        while self.joined_upto < want:
            self.joined_upto += 1
            room = inbound_numbers(self.joined_upto)[2]
            futs.append(self._wait(("joined", room)))
            self.open_room(room, ("in", self.joined_upto))
        await asyncio.wait_for(asyncio.gather(*futs), 120)
        phases["calls_t0"] = time.time() - self.t0
        rate = a.rate or max(1.0, a.calls / 10)
        uac = PROCS.start(["sipp", f"127.0.0.1:{RL_SIP}", "-sf", str(self.raw / "uac.xml"),
                           "-inf", str(self.raw / "calls.csv"), "-i", "127.0.0.1", "-p", str(SIPP_SIP),
                           "-mi", "127.0.0.1", "-mp", str(SIPP_MEDIA), "-r", f"{rate:g}", "-rp", "1000",
                           "-l", str(self.calls_in), "-m", str(len(self.plan)), "-max_socket", "1000",
                           "-trace_logs", "-trace_err", "-trace_stat", "-fd", "5", "-nostdin"],
                          log_path=self.raw / "sipp-uac.out", cwd=self.raw) if self.calls_in else None
        if uac:
            self.sipp_pids.append(uac.pid)
            self.uac_tail = Tail(self.raw / f"uac_{uac.pid}_logs.log")
            self.uac_err, self.uac_err_size = self.raw / f"uac_{uac.pid}_errors.log", 0
        slots = [loop.create_task(self.outbound_slot(i)) for i in range(self.calls_out)]
        stop_at = time.time() + a.minutes * 60
        next_log = time.time() + 30
        drained_by = None
        while True:
            now = time.time()
            if uac:
                self.inbound_tick(now)
            self.outbound_tick()
            if not self.stopping and now >= stop_at:
                self.stopping = True
                phases["stop_t"] = now - self.t0
                self.phase = "drain"
                log("no new calls from now on; waiting for the calls to end")
                if uac and uac.poll() is None:
                    os.kill(uac.pid, signal.SIGUSR1)
                drained_by = now + a.hold_max + ROOM_END_SLACK_S + 60
            if self.stopping:
                uac_done = uac is None or uac.poll() is not None
                if uac_done and all(s.done() for s in slots):
                    break
                if now > drained_by:
                    log("calls still up long after the end; stopping the phones")
                    PROCS.stop(uac)
                    for s in slots:
                        s.cancel()
                    break
            if now >= next_log:
                next_log += 30
                last = self.samples[-1] if self.samples else {}
                log(f"{(now - self.t0) / 60:.1f} min: {self.phones_up()} calls up at the phones "
                    f"(daemon {last.get('active', '?')} active, {last.get('participants', '?')} participants, "
                    f"LiveKit {last.get('lk_sip', '?')} SIP participants); placed {self.max_started} in, "
                    f"{self.next_out} out; RSS {last.get('rss_mib', '?')} MiB, fds {last.get('fds', '?')}, "
                    f"load {last.get('load1', '?')}")
            await asyncio.sleep(0.25)
        if uac:
            self.inbound_tick(time.time())
        self.outbound_tick()
        phases["drained_t"] = time.time() - self.t0
        log("the phones have hung up; waiting for the daemon to report no calls")
        t_end = time.time()
        while time.time() - t_end < 60:
            d = await loop.run_in_executor(None, http_json, f"http://127.0.0.1:{RL_HTTP}/health/detailed")
            c = (d or {}).get("calls") or {}
            if c and not any(c.get(k) for k in ("active", "participants", "tasks", "rtp_ports_in_use")):
                break
            if uac:
                self.inbound_tick(time.time())
            await asyncio.sleep(0.5)
        phases["settle_s"] = time.time() - t_end
        # leave every room still open (calls that never started, stragglers)
        await asyncio.sleep(2)
        if uac:
            self.inbound_tick(time.time() + R.LINGER_S + 1)
        for room, st in list(self.rooms.items()):
            if not st["closing"]:
                self.close_room(room)
        self.phase = "after"
        phases["after_t0"] = time.time() - self.t0
        await asyncio.sleep(a.after)
        phases["after_s"] = time.time() - t_end
        sampler.cancel()
        self.phases = phases
        for t in list(self.tasks):
            t.cancel()
        await self.lk_api.aclose()
        await self.rl_api.aclose()
        return {"uac": uac.pid if uac else None, "uas": uas.pid}

    # ---- results -------------------------------------------------------------------------------
    def collect(self, pids: dict) -> list[dict]:
        """Every call's record, from the phones' files and what was seen live."""
        segments = self.capture.segments()
        calls: list[dict] = []
        if pids.get("uac"):
            steps = R.parse_step_log(_read(self.raw / f"uac_{pids['uac']}_logs.log"))
            errs = R.parse_error_log(_read(self.raw / f"uac_{pids['uac']}_errors.log"))
            for k, c in sorted(R.inbound_calls(steps, errs).items()):
                line = int(c["caller"][4:]) if str(c.get("caller", ""))[4:].isdigit() else k
                called, caller, room = inbound_numbers(line)
                p = self.plan[line - 1]
                rec = {"direction": "inbound", "id": line, "room": room, "ender": p["ender"],
                       "hold_s": round(p["hold_s"], 2), **c}
                rec["identity"] = self.sip_identity.get(room, "")
                if rec.get("answered") is not None:
                    rec["setup_s"] = rec["answered"] - rec["started"]
                self._finish(rec, segments, SIPP_MEDIA)
                calls.append(rec)
        uas = {}
        if pids.get("uas"):
            steps = R.parse_step_log(_read(self.raw / f"uas_{pids['uas']}_logs.log"))
            errs = R.parse_error_log(_read(self.raw / f"uas_{pids['uas']}_errors.log"))
            uas = R.outbound_calls(steps, errs)
        for j, o in sorted(self.out_recs.items()):
            rec = {"direction": "outbound", **{k: v for k, v in o.items() if k != "number"},
                   **{k: v for k, v in uas.get(o["number"], {}).items() if k != "callee"}}
            rec["hold_s"] = round(rec["hold_s"], 2)
            self._finish(rec, segments, UAS_MEDIA)
            calls.append(rec)
        # the Python SDK listeners
        self.listener_results = []
        by_room = {c["room"]: c for c in calls}
        for room, (p, rep, ident) in self.listeners.items():
            PROCS.stop(p, timeout=20)
            try:
                j = json.loads(rep.read_text().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                j = {"ok": False}
            c = by_room.get(room, {})
            if c.get("answered") is None:
                continue  # a room joined ahead of a call that was never placed (the run ended)
            media = c.get("media_s") or 0
            hz = j.get("dominant_hz")
            ok = bool(j.get("ok")) and hz is not None and abs(hz - PHONE_HZ) <= 0.02 * PHONE_HZ \
                and (j.get("nonsilent_seconds") or 0) >= 0.5 * media and media > 0
            self.listener_results.append({"room": room, "identity": ident, "ok": ok, "hz": hz,
                                          "nonsilent_s": j.get("nonsilent_seconds"), "media_s": media})
        return calls

    def _finish(self, rec: dict, segments: list[dict], dport: int) -> None:
        room = rec["room"]
        st = self.rooms.get(room, {})
        rec["room_ended"] = self.room_ended.get(room)
        if st.get("remove_error"):
            rec["remove_error"] = st["remove_error"]
        rec["lingered"] = room in self.lingered
        if rec.get("answered") is not None:
            end = rec.get("hangup") or rec.get("remote_bye") or rec.get("ended")
            rec["media_s"] = (end - rec["answered"]) if end else None
        rec.update(R.up_audio(self.senders.get(room)))
        rec.update(R.down_audio(rec, segments, dport))
        rec.update(R.audio_figures(rec))
        rec["reason"] = R.outcome(rec) or ""


def _cell(v: Any) -> Any:
    """A calls.csv cell: floats rounded, booleans as 1/0, None as empty."""
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, float):
        return round(v, 4)
    return "" if v is None else v


def http_text(url: str, timeout: float = 2.0) -> Optional[str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.read().decode(errors="replace")
    except Exception:
        return None


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except OSError:
        return ""


# ---- the report -------------------------------------------------------------------------------

CPU_COLUMNS = ["cpu_pct", "lk_cpu_pct", "room_side_cpu_pct", "sipp_cpu_pct", "tcpdump_cpu_pct", "self_cpu_pct",
               "listeners_cpu_pct", "machine_busy_cores", "steal_cores", "wait_ms_per_s", "lk_wait_ms_per_s",
               "room_side_wait_ms_per_s"]

CALL_COLUMNS = ["direction", "id", "room", "identity", "ender", "hold_s", "started", "requested", "invited",
                "answered", "setup_s", "hangup", "remote_bye", "room_ended", "ended", "media_s", "bport",
                "rejected", "setup_timeout", "api_error", "aborted", "remove_error", "lingered",
                "up_delivered", "up_loss", "up_delay_s", "up_tone_s", "down_delivered", "down_loss",
                "down_delay_s", "down_seq_loss", "down_packets", "down_tone_frames", "reason"]


def build_report(out: Path, run: dict, samples: list[dict], calls: list[dict], with_plot: bool = True) -> str:
    """Verdicts, end check and report.md (+ soak.png) from the run's data."""
    ph, args = run["phases"], run["args"]
    steady_t0 = ph["calls_t0"] + args["warmup"]
    steady_t1 = ph.get("stop_t", steady_t0)
    ph.update(steady_t0=steady_t0, steady_t1=steady_t1, steady_s=max(0.0, steady_t1 - steady_t0))
    verdicts = R.resource_verdicts(samples, steady_t0, steady_t1)
    idle = [s for s in samples if s["phase"] == "idle"]
    after = [s for s in samples if s["phase"] == "after"]
    steady = [s for s in samples if steady_t0 <= s["t_s"] <= steady_t1]
    end = R.end_check(samples, idle, after, steady)
    loads = [s["load1"] for s in samples if s["phase"] in ("calls", "drain")]
    up = [s["phones_up"] for s in steady]
    extra = dict(run.get("extra", {}))
    extra.update(
        loadavg={"start": samples[0]["load1"] if samples else None, "end": samples[-1]["load1"] if samples else None,
                 "mean": sum(loads) / len(loads) if loads else None, "max": max(loads) if loads else None},
        concurrency_mean=sum(up) / len(up) if up else None, concurrency_min=min(up) if up else None,
        concurrency_max=max(up) if up else None, t0_unix=run.get("t0_unix", 0.0),
        cpu={k: (sum(v) / len(v)) for k in CPU_COLUMNS
             for v in [[float(s[k]) for s in steady if s.get(k) not in (None, "")]] if v})
    text = R.write_report(run["info"], args, calls, samples, verdicts, end, ph, extra)
    (out / "report.md").write_text(text)
    run.update(verdicts=verdicts, end=end)
    (out / "run.json").write_text(json.dumps(run, indent=1, default=str))
    if with_plot and samples:
        R.plot(samples, ph, str(out / "soak.png"), calls, run.get("t0_unix", 0.0))
    return text


def report_only(out: Path) -> int:
    run = json.loads((out / "run.json").read_text())
    samples = read_csv_rows(out / "samples.csv")
    calls = [{k: v for k, v in c.items() if v != ""} for c in read_csv_rows(out / "calls.csv")]
    holes_csv = out / "holes.csv"
    if holes_csv.exists():
        by_call = {(c["direction"], str(c["id"])): c for c in calls}
        for h in read_csv_rows(holes_csv):
            c = by_call.get((h["call_direction"], str(h["id"])))
            if c is not None:
                c.setdefault(f"{h['audio']}_holes", []).append(
                    (float(h["unix"]), float(h["missing_s"]), h.get("kind") or "silence"))
    lag_csv = out / "room_side_lag.csv"
    run.setdefault("extra", {})["room_lag"] = read_csv_rows(lag_csv) if lag_csv.exists() else []
    for c in calls:  # the outcome again, with the rules of this version
        c["reason"] = R.outcome(c) or ""
    build_report(out, run, samples, calls)
    log(f"rebuilt {out / 'report.md'}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="soak.py")
    p.add_argument("outdir")
    p.add_argument("--roomline", default="")
    p.add_argument("--lk-bench", default="")
    p.add_argument("--livekit-server", default="")
    p.add_argument("--calls", type=int, default=40, help="concurrent calls (inbound + outbound)")
    p.add_argument("--minutes", type=float, default=60, help="how long new calls are placed")
    p.add_argument("--hold", default="20-60", help="call length range, seconds (uniform)")
    p.add_argument("--outbound-share", type=float, default=0.25, help="share of N placed through the API")
    p.add_argument("--room-ends", type=float, default=0.3, help="share of calls the room hangs up")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds after the first call before the steady part (default: the longest call)")
    p.add_argument("--idle", type=float, default=20.0, help="idle baseline before the first call, s")
    p.add_argument("--after", type=float, default=30.0, help="sampling after the last call, s")
    p.add_argument("--listen-every", type=int, default=50,
                   help="a Python SDK listener in every K-th call's room of each direction (0: none)")
    p.add_argument("--rate", type=float, default=0.0, help="new inbound calls per second at most (default N/10)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cmdline", default="", help="the scripts/soak arguments, for the report")
    p.add_argument("--netns-ip", default="")
    p.add_argument("--netns-if", default="")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    out = Path(a.outdir).resolve()
    if a.report_only:
        return report_only(out)
    if not (a.roomline and a.lk_bench and a.livekit_server):
        p.error("--roomline, --lk-bench and --livekit-server are required (unless --report-only)")
    m = re.fullmatch(r"(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?)", a.hold)
    if not m or float(m.group(1)) <= 0 or float(m.group(1)) > float(m.group(2)):
        p.error("--hold is MIN-MAX seconds, 0 < MIN <= MAX")
    a.hold_min, a.hold_max = float(m.group(1)), float(m.group(2))
    if a.warmup is None:
        a.warmup = min(a.hold_max, a.minutes * 60 / 3)
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    s = Soak(a, out)
    t_begin = time.time()
    info = machine_info(a.livekit_server, {})
    pids: dict = {}
    calls: list[dict] = []
    try:
        pids = asyncio.run(s.run())
        if s.room_side:
            s.room_side.stop()
        calls = s.collect(pids)
    finally:
        if s.rl:
            info["bridges"] = {"roomline": s.rl.version}
        PROCS.stop_all()
        write_csv(out / "samples.csv", s.samples)
    if s.capture:
        s.capture.join(timeout=10)
    dropped = re.search(r"(\d+) packets dropped by kernel", _read(s.raw / "tcpdump.log"))
    write_csv(out / "calls.csv", [{k: _cell(c.get(k)) for k in CALL_COLUMNS} for c in calls])
    write_csv(out / "holes.csv", [{"call_direction": c["direction"], "id": c["id"], "audio": d,
                                   "unix": round(t, 3), "missing_s": round(m, 3), "kind": k}
                                  for c in calls for d in ("up", "down") for t, m, k in c.get(f"{d}_holes") or []])
    write_csv(out / "room_side_lag.csv", s.room_lag)
    run = {
        "args": {**{k: getattr(a, k) for k in ("calls", "minutes", "hold_min", "hold_max", "outbound_share",
                                               "room_ends", "sample_every", "warmup", "idle", "after",
                                               "listen_every", "rate", "seed", "cmdline")},
                 "calls_in": s.calls_in, "calls_out": s.calls_out},
        "info": info, "phases": s.phases, "t0_unix": s.t0,
        "extra": {"runtime_s": time.time() - t_begin, "listeners": s.listener_results, "room_lag": s.room_lag,
                  "pcap_dropped": int(dropped.group(1)) if dropped else 0,
                  "pcap_packets": s.capture.packets if s.capture else 0},
    }
    text = build_report(out, run, s.samples, calls)
    log(f"done in {(time.time() - t_begin) / 60:.1f} min: {out / 'report.md'}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
