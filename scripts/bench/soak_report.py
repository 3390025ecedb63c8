#!/usr/bin/env python3
"""soak_report: the analysis behind `scripts/soak` (see soak.py), as functions of the run's
data only, so that `soak.py OUTDIR --report-only` rebuilds the report and test_soak.py can
check them on made-up data:

* sipp's files: the phones' step logs (`-trace_logs`) and error logs;
* the RTP the bridge sent to the phones (segments of packets, from a live capture);
* each call's record, its outcome (ok, or the first reason it failed) and its audio figures;
* the resource samples: a linear fit over the steady part (slope, and whether it grew), the
  levels after the last call (back to 0 / near the start);
* report.md, and the plot (matplotlib, only when asked for).
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Optional

import numpy as np

# Audio: a direction has "no audio" when less than NO_AUDIO_SHARE of the call's media time
# (or less than NO_AUDIO_MIN_S) carried the tone, "poor audio" when less than POOR_SHARE.
NO_AUDIO_SHARE = 0.1
NO_AUDIO_MIN_S = 1.0
POOR_SHARE = 0.5
# A call whose participant is still in its room this long after the phone hung up.
LINGER_S = 20.0
# A new RTP segment starts after this much silence on one flow (or a new SSRC).
SEGMENT_GAP_S = 2.0
FRAME_S = 0.02
FRAME_TS = 160  # RTP timestamp units of a 20 ms PCMU frame
# Holes (stretches without the tone between two tone frames) kept per call and direction.
MAX_HOLES = 500
# Hole sizes the report counts apart, seconds: one or two frames (a late or lost packet),
# up to 100 ms, up to 500 ms, longer (an outage).
HOLE_CLASSES = [(0.045, "<= 40 ms"), (0.105, "<= 100 ms"), (0.505, "<= 500 ms"), (float("inf"), "> 500 ms")]

# ---- sipp's files -------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^(?P<ev>[A-Z_]+) ?(?P<rest>.*?)\s*\d{4}-\d\d-\d\d\s+[\d:.]+\s+(?P<unix>\d+\.\d+)\s*$")


def parse_step_log(text: str) -> list[dict]:
    """The phones' step lines (see harness.phone_uac_scenario and soak.UAS_XML): each line
    is EVENT, its fields, then sipp's [timestamp] (date, time, Unix time). Returns
    [{"ev", "unix", ...fields}] in file order; lines that do not parse are skipped."""
    out = []
    for line in text.splitlines():
        m = _LOG_LINE.match(line.strip())
        if not m:
            continue
        ev, rest, unix = m.group("ev"), m.group("rest").split(), float(m.group("unix"))
        d: dict[str, Any] = {"ev": ev, "unix": unix}
        key = rest[0] if rest else ""
        # the phone calling in names its calls by sipp's call number, the carrier by the
        # number dialled (To user)
        if key.isdigit():
            d["call"] = int(key)
        else:
            d["callee"] = key[4:] if key.startswith("sip:") else key
        if ev == "START" and len(rest) >= 3:
            d["caller"], d["call_id"] = rest[1], rest[2]
        elif ev == "INVITED" and len(rest) >= 2:
            d["call_id"] = rest[1]
        elif ev == "ANSWERED":
            port = re.search(r"m=audio (\d+)", " ".join(rest))
            d["bport"] = int(port.group(1)) if port else None
        elif ev == "REJECTED":
            st = re.search(r"SIP/2\.0 (\d{3})", " ".join(rest))
            d["status"] = int(st.group(1)) if st else None
        out.append(d)
    return out


_ERR_RECORD = re.compile(r"(\d{4}-\d\d-\d\d)\t([\d:.]+)\t(\d+\.\d+): ")


def parse_error_log(text: str) -> list[dict]:
    """sipp's error log (`-trace_err`): records start with its timestamp (sipp writes some
    without a line break in between). Returns the records that concern a call:
    [{"unix", "call_id", "kind", "what"}] where kind is `remote_bye` (the bridge hung up:
    sipp answered 200 and ended the call), `unexpected` (what = the message received),
    `timeout` (no answer to a request or no message in time) or `other`."""
    marks = list(_ERR_RECORD.finditer(text))
    out = []
    for i, m in enumerate(marks):
        body = text[m.end(): marks[i + 1].start() if i + 1 < len(marks) else len(text)].strip()
        cid = re.search(r"unexpected BYE for call: (\S+)", body)
        if cid:
            out.append({"unix": float(m.group(3)), "call_id": cid.group(1), "kind": "remote_bye",
                        "what": "BYE"})
            continue
        cid = re.search(r"Call-I[dD][:=]? '?([^'\s,]+)", body)
        if not cid:
            continue  # overload warnings and the like
        if "unexpected" in body:
            got = re.search(r"received '(SIP/2\.0 \d{3}|[A-Z]+)", body)
            kind, what = "unexpected", (got.group(1) if got else body[:80])
        elif "timeout" in body.lower() or "retrans" in body:
            kind, what = "timeout", body[:120]
        else:
            kind, what = "other", body[:120]
        out.append({"unix": float(m.group(3)), "call_id": cid.group(1), "kind": kind, "what": what})
    return out


# ---- the RTP the bridge sent to the phones ------------------------------------------------

class DownFlows:
    """Segments of the RTP the bridge sent to a phone: one per (bridge port, phone port,
    SSRC), cut where the flow paused for more than SEGMENT_GAP_S. Packets come in with
    whether their 20 ms carried the room's tone (`tone`)."""

    def __init__(self) -> None:
        self.open: dict[tuple[int, int, int], dict] = {}
        self.done: list[dict] = []

    def add(self, t: float, bport: int, dport: int, ssrc: int, seq: int, tone: bool,
            ts: Optional[int] = None) -> None:
        key = (bport, dport, ssrc)
        s = self.open.get(key)
        if s is not None and t - s["last"] > SEGMENT_GAP_S:
            self.done.append(self._close(s))
            s = None
        if s is None:
            s = {"bport": bport, "dport": dport, "ssrc": ssrc, "first": t, "last": t, "packets": 0,
                 "seq0": seq, "seq_last": seq, "seq_ext": 0, "tone": 0, "first_tone": None,
                 "last_tone": None, "pending": {}, "pending_at": None, "holes": [], "ts_last": ts}
            self.open[key] = s
        # extended sequence numbers (wrap-around at 65536)
        delta = (seq - s["seq_last"]) & 0xFFFF
        if delta < 0x8000:
            s["seq_ext"] += delta
            s["seq_last"] = seq
            if delta > 1 and s["tone"]:
                # packets the bridge never sent (or the capture dropped): missing frames
                self._miss(s, t, delta - 1, "lost")
            if ts is not None and s["ts_last"] is not None and delta > 0:
                # the bridge skips send ticks when it runs late (the RTP timestamp jumps by
                # more than a frame per packet): time the phone got no audio for
                step = (ts - s["ts_last"]) & 0xFFFFFFFF
                skipped = round(step / FRAME_TS) - delta
                if 0 < skipped < 50 * 60 and s["tone"]:
                    self._miss(s, t, skipped, "skipped")
            if ts is not None:
                s["ts_last"] = ts
        s["last"] = t
        s["packets"] += 1
        if tone:
            s["tone"] += 1
            if s["first_tone"] is None:
                s["first_tone"] = t
            s["last_tone"] = t
            if s["pending"]:
                if len(s["holes"]) < MAX_HOLES:
                    # a hole's kind is what most of it was
                    kind = max(s["pending"], key=s["pending"].get)
                    s["holes"].append((s["pending_at"], sum(s["pending"].values()) * FRAME_S, kind))
                s["pending"], s["pending_at"] = {}, None
        elif s["tone"]:
            self._miss(s, t, 1, "silence")

    @staticmethod
    def _miss(s: dict, t: float, frames: int, kind: str) -> None:
        """Frames without the tone after the first one with it: a hole once the tone
        comes back (what follows the last tone frame is the call's end, not a hole).
        kind: `silence` (packets sent without the room's tone: its audio did not reach
        the bridge in time), `lost` (sequence numbers missing), `skipped` (send ticks the
        bridge skipped: it ran late)."""
        if not s["pending"]:
            s["pending_at"] = t
        s["pending"][kind] = s["pending"].get(kind, 0) + frames

    @staticmethod
    def _close(s: dict) -> dict:
        d = {k: v for k, v in s.items() if k not in ("seq0", "seq_last", "seq_ext", "pending", "pending_at", "ts_last")}
        d["seq_span"] = s["seq_ext"] + 1
        return d

    def expire(self, now: float) -> None:
        """Closes the segments idle for more than SEGMENT_GAP_S."""
        for key in [k for k, s in self.open.items() if now - s["last"] > SEGMENT_GAP_S]:
            self.done.append(self._close(self.open.pop(key)))

    def segments(self) -> list[dict]:
        return self.done + [self._close(s) for s in self.open.values()]


def down_audio(call: dict, segments: list[dict], dport: int) -> dict:
    """What the phone of `call` received from the bridge: the segments from its bridge port
    to `dport` that began within the call ([answer - 1 s, end + 2 s])."""
    if call.get("bport") is None or call.get("answered") is None:
        return {}
    t0, t1 = call["answered"] - 1.0, (call.get("ended") or call["answered"]) + 2.0
    mine = [s for s in segments if s["bport"] == call["bport"] and s["dport"] == dport
            and t0 <= s["first"] <= t1]
    if not mine:
        return {"down_packets": 0, "down_tone_frames": 0}
    tones = [s for s in mine if s["tone"]]
    return {
        "down_packets": sum(s["packets"] for s in mine),
        "down_seq_span": sum(s["seq_span"] for s in mine),
        "down_tone_frames": sum(s["tone"] for s in mine),
        "down_first_tone": min(s["first_tone"] for s in tones) if tones else None,
        "down_last_tone": max(s["last_tone"] for s in tones) if tones else None,
        "down_holes": sorted(h for s in mine for h in s.get("holes", [])),
    }


# ---- calls ----------------------------------------------------------------------------------

def inbound_calls(steps: list[dict], errors: list[dict]) -> dict[int, dict]:
    """Calls of the phone that calls in, by sipp call number, from its step log and error
    log: caller, Call-ID, started / answered / hangup / ended (Unix times), bridge RTP
    port, the failure status, `remote_bye` (when the bridge hung up), `aborted` (another
    message sipp did not expect)."""
    calls: dict[int, dict] = {}
    by_cid: dict[str, dict] = {}
    for e in steps:
        if "call" not in e:
            continue
        c = calls.setdefault(e["call"], {"call": e["call"]})
        ev = e["ev"]
        if ev == "START":
            c.update(started=e["unix"], caller=e.get("caller"), call_id=e.get("call_id"))
            if e.get("call_id"):
                by_cid[e["call_id"]] = c
        elif ev == "ANSWERED":
            c.update(answered=e["unix"], bport=e.get("bport"))
        elif ev == "HANGUP":
            c["hangup"] = e["unix"]
        elif ev == "END":
            c["ended"] = e["unix"]
        elif ev == "REJECTED":
            c.update(rejected=e.get("status"), ended=e["unix"])
        elif ev == "SETUP_TIMEOUT":
            c.update(setup_timeout=True, ended=e["unix"])
    _apply_errors(by_cid, errors)
    return calls


def outbound_calls(steps: list[dict], errors: list[dict]) -> dict[str, dict]:
    """What the carrier (sipp UAS) saw, by the number dialled: invited / answered / hangup
    / ended, bridge RTP port, `remote_bye`, `aborted`."""
    calls: dict[str, dict] = {}
    by_cid: dict[str, dict] = {}
    for e in steps:
        if "callee" not in e:
            continue
        c = calls.setdefault(e["callee"], {"callee": e["callee"]})
        ev = e["ev"]
        if ev == "INVITED":
            c.update(invited=e["unix"], call_id=e.get("call_id"))
            if e.get("call_id"):
                by_cid[e["call_id"]] = c
        elif ev == "ANSWERED":
            c.update(answered=e["unix"], bport=e.get("bport"))
        elif ev == "HANGUP":
            c["hangup"] = e["unix"]
        elif ev == "END":
            c["ended"] = e["unix"]
    _apply_errors(by_cid, errors)
    return calls


def _apply_errors(by_cid: dict[str, dict], errors: list[dict]) -> None:
    for r in errors:
        c = by_cid.get(r["call_id"])
        if c is None:
            continue
        if r["kind"] == "remote_bye":
            c.setdefault("remote_bye", r["unix"])
            c.setdefault("ended", r["unix"])
        else:
            c.setdefault("aborted", f"{r['kind']}: {r['what']}")
            c.setdefault("ended", r["unix"])


def up_audio(sender: Optional[dict]) -> dict:
    """What the room side heard from the call's participant (lk_bench's sender counters)."""
    if not sender:
        return {"up_tone_s": 0.0}
    rate = sender.get("rate") or 16000
    return {
        "up_tone_s": sender["tone_samples"] / rate,
        "up_samples_s": sender["samples"] / rate,
        "up_first_tone": sender["first_tone_unix"] if sender["tone_frames"] else None,
        "up_last_tone": sender["last_tone_unix"] if sender["tone_frames"] else None,
        "up_frame_s": (sender["samples"] / sender["frames"] / rate) if sender["frames"] else FRAME_S,
        "up_holes": sorted([(float(t), n / rate, "silence") for t, n in sender.get("holes", [])]
                           + not_received(sender.get("deficit", []), rate)),
    }


def not_received(deficit: list, rate: float) -> list[tuple[float, float, str]]:
    """Holes of audio that never arrived, from lk_bench's per-second lowest deficit
    ((Unix time, samples short of wall time since the first tone frame)): what stays
    missing is the lower envelope seen from the end (a later burst of late frames pulls the
    deficit back down, lost frames keep it up); each rise of that envelope by more than
    10 ms is a hole of kind `not received`."""
    pts = [(float(t), float(d)) for t, d in deficit]
    env, low = [], float("inf")
    for t, d in reversed(pts):
        low = min(low, d)
        env.append((t, low))
    env.reverse()
    out, prev = [], 0.0
    for t, e in env:
        if e - prev > 0.01 * rate:
            out.append((t, (e - prev) / rate, "not received"))
        prev = max(prev, e)
    return out


def audio_figures(c: dict) -> dict:
    """Per direction: delivered (share of the call's media time that carried the tone),
    loss within the span from the first to the last tone frame, delay from the answer to
    the first tone frame; room->phone also the RTP sequence loss."""
    out: dict[str, Any] = {}
    media_s = c.get("media_s") or 0.0
    if media_s <= 0:
        return out
    if c.get("up_first_tone") is not None:
        span = c["up_last_tone"] - c["up_first_tone"] + c["up_frame_s"]
        out["up_delivered"] = min(1.0, c["up_tone_s"] / media_s)
        out["up_loss"] = max(0.0, 1 - c["up_tone_s"] / span) if span > 0 else 0.0
        out["up_delay_s"] = c["up_first_tone"] - c["answered"]
    else:
        out["up_delivered"] = 0.0
    if c.get("down_first_tone") is not None:
        span = c["down_last_tone"] - c["down_first_tone"] + FRAME_S
        got = c["down_tone_frames"] * FRAME_S
        out["down_delivered"] = min(1.0, got / media_s)
        out["down_loss"] = max(0.0, 1 - got / span) if span > 0 else 0.0
        out["down_delay_s"] = c["down_first_tone"] - c["answered"]
        if c.get("down_seq_span"):
            out["down_seq_loss"] = max(0.0, 1 - c["down_packets"] / c["down_seq_span"])
    else:
        out["down_delivered"] = 0.0
    return out


def outcome(c: dict) -> Optional[str]:
    """Why a call failed (the first reason, in the order a user meets them), or None.

    `c` has: direction; api_error (outbound: the API's error), rejected (a SIP status),
    setup_timeout, answered, aborted, ender (who was meant to hang up: phone or room),
    remote_bye / room_ended (when the bridge hung up / the room removed the participant),
    lingered (the participant outlived the call), the audio figures."""
    if c.get("api_error"):
        return f"API error: {c['api_error']}"
    if c.get("rejected"):
        return f"SIP {c['rejected']}"
    if c.get("setup_timeout"):
        return "setup timeout"
    if c.get("answered") is None:
        if c.get("aborted"):
            return f"phone: {c['aborted']}"
        return "never answered" if c.get("direction") == "inbound" else "no INVITE reached the phone"
    if c.get("aborted"):
        return f"phone: {c['aborted']}"
    if c.get("ended") is None:
        return "never ended"
    rb, room = c.get("remote_bye"), c.get("room_ended")
    if c.get("ender") == "room":
        # the room removes the participant at room_ended; the bridge's BYE must follow it
        if rb is not None and (room is None or rb < room - 0.5):
            return "ended early by the bridge"
        if rb is None:
            return "the room's hang-up did not end the call"
    elif rb is not None:
        return "ended early by the bridge"
    media_s = c.get("media_s") or 0.0
    need = max(NO_AUDIO_MIN_S, NO_AUDIO_SHARE * media_s)
    if media_s >= 2 * NO_AUDIO_MIN_S:
        for d, label in (("up", "phone->room"), ("down", "room->phone")):
            if c.get(f"{d}_delivered", 0.0) * media_s < need:
                return f"no audio {label}"
        for d, label in (("up", "phone->room"), ("down", "room->phone")):
            if c.get(f"{d}_delivered", 0.0) < POOR_SHARE:
                return f"poor audio {label} (tone in less than {100 * POOR_SHARE:.0f} % of the call)"
    if c.get("lingered"):
        return f"participant still in the room {LINGER_S:.0f} s after the call"
    return None


# ---- audio loss over time -------------------------------------------------------------------

def media_span(c: dict) -> Optional[tuple[float, float]]:
    """(answer, hang-up) of a call in Unix time, or None."""
    if c.get("answered") is None:
        return None
    end = c.get("hangup") or c.get("remote_bye") or c.get("ended")
    return (float(c["answered"]), float(end)) if end else None


# Run-queue waits sampled (ms per second, all threads of the process): Roomline,
# livekit-server, the room side.
WAIT_COLUMNS = ["wait_ms_per_s", "lk_wait_ms_per_s", "room_side_wait_ms_per_s"]


def loss_timeline(calls: list[dict], samples: list[dict], t0_unix: float, bucket_s: float = 60.0) -> list[dict]:
    """Audio loss per `bucket_s` of the run, both directions: the call media time in the
    bucket, the tone missing in holes that began in it (share of that media time), the
    holes longer than 100 ms, and over the bucket's samples the machine's mean 1-minute load
    average and busy cores and the processes' run-queue waits (WAIT_COLUMNS). Buckets
    without call media are left out."""
    rows: dict[int, dict] = {}

    def row(i: int) -> dict:
        return rows.setdefault(i, {"t0_min": i * bucket_s / 60, "media_s": 0.0, "up_missing_s": 0.0,
                                   "down_missing_s": 0.0, "up_long": 0, "down_long": 0})
    for c in calls:
        span = media_span(c)
        if span is None:
            continue
        a, b = span[0] - t0_unix, span[1] - t0_unix
        i = int(a // bucket_s)
        while i * bucket_s < b:
            lo, hi = max(a, i * bucket_s), min(b, (i + 1) * bucket_s)
            if hi > lo:
                row(i)["media_s"] += hi - lo
            i += 1
        for d in ("up", "down"):
            for t, miss, *_kind in c.get(f"{d}_holes") or []:
                r = row(int((float(t) - t0_unix) // bucket_s))
                r[f"{d}_missing_s"] += float(miss)
                r[f"{d}_long"] += int(float(miss) > 0.105)
    for i, r in rows.items():
        inside = [s for s in samples if i * bucket_s <= float(s["t_s"]) < (i + 1) * bucket_s]
        loads = [float(s["load1"]) for s in inside if _num(s.get("load1")) is not None]
        busy = [float(s["machine_busy_cores"]) for s in inside if _num(s.get("machine_busy_cores")) is not None]
        r["load1"] = float(np.mean(loads)) if loads else float("nan")
        r["busy_cores"] = float(np.mean(busy)) if busy else float("nan")
        for k in WAIT_COLUMNS:
            w = [float(s[k]) for s in inside if _num(s.get(k)) is not None]
            r[k] = float(np.mean(w)) if w else float("nan")
        for d in ("up", "down"):
            r[f"{d}_loss"] = r[f"{d}_missing_s"] / r["media_s"] if r["media_s"] > 0 else float("nan")
    return [rows[i] for i in sorted(rows) if rows[i]["media_s"] > 0]


def correlation(xs: list[float], ys: list[float]) -> float:
    """Pearson's r of the pairs where both are numbers (NaN with fewer than 4, or no spread)."""
    pts = [(x, y) for x, y in zip(xs, ys) if not (math.isnan(x) or math.isnan(y))]
    if len(pts) < 4:
        return float("nan")
    a = np.asarray(pts, dtype=float)
    if np.ptp(a[:, 0]) == 0 or np.ptp(a[:, 1]) == 0:
        return float("nan")
    return float(np.corrcoef(a[:, 0], a[:, 1])[0, 1])


def hole_classes(calls: list[dict], d: str) -> list[tuple[str, int, float]]:
    """(size class, holes, tone missing in them, s) of one direction over all calls."""
    out = [[label, 0, 0.0] for _, label in HOLE_CLASSES]
    for c in calls:
        for _t, miss, *_kind in c.get(f"{d}_holes") or []:
            for k, (limit, _label) in enumerate(HOLE_CLASSES):
                if float(miss) <= limit:
                    out[k][1] += 1
                    out[k][2] += float(miss)
                    break
    return [(a, b, c) for a, b, c in out]


# ---- resources ------------------------------------------------------------------------------

# (column, label, tolerance on the fitted rise over the steady part as a function of the
# steady mean). Every resource is fitted against time *and* the calls the phones had up at
# each sample: counts and file descriptors follow the load, so the drift judged is the one
# at constant load.
RESOURCES: list[tuple[str, str, Any]] = [
    ("rss_mib", "RSS, MiB", lambda m: max(2.0, 0.02 * m)),
    ("rss_anon_mib", "of which anonymous (heap, stacks), MiB", lambda m: max(2.0, 0.02 * m)),
    ("rss_file_mib", "of which file pages (the binary's code as it is touched), MiB", lambda m: max(2.0, 0.02 * m)),
    ("fds", "open file descriptors", lambda m: max(3.0, 0.02 * m)),
    ("threads", "threads", lambda m: 2.0),
    ("tasks", "call tasks (/health/detailed)", lambda m: 1.0),
    ("active", "active calls (/health/detailed)", lambda m: 1.0),
    ("rtp_ports", "RTP ports in use (/health/detailed)", lambda m: 2.0),
    ("participants", "participants (/health/detailed)", lambda m: 1.0),
    ("lk_sip", "SIP participants in LiveKit rooms (ListParticipants)", lambda m: 1.0),
    ("alive_tasks", "tokio tasks, whole runtime (/health/detailed `runtime.alive_tasks`)",
     lambda m: max(3.0, 0.02 * m)),
    ("endpoint_txs", "endpoint transactions (/metrics `roomline_sip_endpoint_transactions`)", lambda m: 2.0),
]

# What must be back to 0 after the last call, and what must be back near the start.
ZERO_AFTER = ["active", "rtp_ports", "participants", "tasks", "lk_sip"]
_END_NAMES = {"active": "active calls", "rtp_ports": "RTP ports in use", "participants": "participants (daemon)",
              "tasks": "call tasks", "lk_sip": "SIP participants in LiveKit", "fds": "file descriptors",
              "rss_mib": "RSS, MiB", "threads": "threads"}


def linfit(t: Iterable[float], y: Iterable[float], load: Optional[Iterable[float]] = None) -> dict:
    """Least squares y = a + b t (+ c load, when `load` is given and varies): the slope b
    with its standard error, the load coefficient c, the residual SD."""
    t = np.asarray(list(t), dtype=float)
    y = np.asarray(list(y), dtype=float)
    x = np.asarray(list(load), dtype=float) if load is not None else None
    ok = ~(np.isnan(t) | np.isnan(y) | (np.isnan(x) if x is not None else False))
    t, y = t[ok], y[ok]
    x = x[ok] if x is not None else None
    cols = [np.ones_like(t), t]
    if x is not None and len(x) and np.ptp(x) > 0:
        cols.append(x)
    n, k = len(t), len(cols)
    nan = {"n": n, "slope": float("nan"), "se": float("nan"), "intercept": float("nan"),
           "per_load": float("nan"), "resid_sd": float("nan")}
    if n < k + 2 or np.ptp(t) == 0:
        return nan
    X = np.column_stack(cols)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ coef
    sd = float(np.sqrt(np.sum(resid ** 2) / (n - k)))
    try:
        cov = np.linalg.inv(X.T @ X) * sd ** 2
    except np.linalg.LinAlgError:
        return nan
    return {"n": n, "slope": float(coef[1]), "se": float(math.sqrt(max(cov[1, 1], 0.0))),
            "intercept": float(coef[0]), "per_load": float(coef[2]) if k == 3 else float("nan"),
            "resid_sd": sd}


def resource_verdicts(samples: list[dict], t0: float, t1: float) -> list[dict]:
    """For each resource, the fit of its samples in [t0, t1] (seconds of the run) against
    time and the calls up: drift per hour at constant load and the drift over the steady
    part. Verdict: `GREW` when that drift is above the resource's tolerance, the slope is
    more than 3 standard errors above 0, and the second half of the steady part still rises
    by more than half the tolerance (a leak keeps growing); `rose, then flat` when only the
    first rises (warm-up: pools and allocator caches filling); else `no growth`."""
    steady = [s for s in samples if t0 <= s["t_s"] <= t1]
    out = []
    for col, label, tol_f in RESOURCES:
        pts = [s for s in steady if _num(s.get(col)) is not None and _num(s.get("phones_up")) is not None]
        if not pts and not any(_num(s.get(col)) is not None for s in samples):
            out.append({"resource": col, "label": label, "n": 0, "verdict": "not reported"})
            continue
        fit = _fit(pts, col)
        if fit is None:
            out.append({"resource": col, "label": label, "n": len(pts), "verdict": "no data"})
            continue
        mean_level = float(np.mean([float(s[col]) for s in pts]))
        ts = [float(s["t_s"]) for s in pts]
        span = max(ts) - min(ts)
        rise = fit["slope"] * span
        tol = tol_f(mean_level)
        mid = min(ts) + span / 2
        late = _fit([s for s in pts if float(s["t_s"]) >= mid], col)
        late_rise = late["slope"] * (max(ts) - mid) if late else float("nan")
        verdict = "no growth"
        if rise > tol and fit["slope"] > 3 * fit["se"]:
            verdict = "GREW" if (late is None or late_rise > tol / 2) else "rose, then flat"
        out.append({
            "resource": col, "label": label, "n": fit["n"], "mean": mean_level,
            "per_call": fit["per_load"], "slope_per_h": fit["slope"] * 3600, "se_per_h": fit["se"] * 3600,
            "rise": rise, "late_rise": late_rise, "span_s": span, "tolerance": tol, "verdict": verdict,
        })
    return out


def _fit(pts: list[dict], col: str) -> Optional[dict]:
    if len(pts) < 5:
        return None
    fit = linfit([float(s["t_s"]) for s in pts], [float(s[col]) for s in pts],
                 [float(s["phones_up"]) for s in pts])
    return None if math.isnan(fit["slope"]) else fit


def end_check(samples: list[dict], idle: list[dict], after: list[dict],
              steady: Optional[list[dict]] = None) -> dict:
    """After the last call: the `after` samples (those taken once the phones had hung up
    and the daemon had settled). Their last one must show 0 for each ZERO_AFTER column;
    open file descriptors and threads must be back near the `idle` level before the first
    call (within 2). RSS is `back` within max(10 MiB, 25 %) of the idle level, `kept` when
    above that but not above its highest level during the steady part (+1 MiB: memory the
    allocator keeps for reuse rather than returning it to the system; growth while calls
    run is what the steady-part fit judges), else `above` (not ok)."""
    res: dict[str, Any] = {"checks": [], "ok": True}
    if not after:
        res["ok"] = False
        res["checks"].append({"what": "samples after the last call", "ok": False, "value": "none"})
        return res
    last = after[-1]
    for col in ZERO_AFTER:
        v = _num(last.get(col))
        ok = v == 0
        res["checks"].append({"what": col, "value": v, "want": 0, "ok": ok})
        res["ok"] &= ok
    base = {c: float(np.median([float(s[c]) for s in idle if _num(s.get(c)) is not None]))
            for c in ("fds", "rss_mib", "threads") if any(_num(s.get(c)) is not None for s in idle)}
    peak = {c: max((float(s[c]) for s in samples if _num(s.get(c)) is not None), default=float("nan"))
            for c in ("fds", "rss_mib", "threads")}
    steady_max = max((float(s["rss_mib"]) for s in steady or [] if _num(s.get("rss_mib")) is not None),
                     default=float("nan"))
    for col, tol in (("fds", lambda b: 2.0), ("rss_mib", lambda b: max(10.0, 0.25 * b)),
                     ("threads", lambda b: 2.0)):
        v = _num(last.get(col))
        if v is None or col not in base:
            continue
        state = "back" if v - base[col] <= tol(base[col]) else "above"
        if state == "above" and col == "rss_mib" and v <= steady_max + 1.0:
            state = "kept"
        ok = state != "above"
        res["checks"].append({"what": col, "value": v, "start": base[col], "peak": peak[col],
                              "tolerance": tol(base[col]), "state": state, "ok": ok,
                              "steady_max": steady_max if col == "rss_mib" else None})
        res["ok"] &= ok
    return res


def _num(v: Any) -> Optional[float]:
    if v is None or v == "":
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


# ---- the report --------------------------------------------------------------------------------

def pctl(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if xs else float("nan")


def _f(x: Any, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _signed(x: float) -> str:
    """+1.23 / -1.23, and +0.00 for what rounds to zero (never -0.00)."""
    return f"{round(x, 2) + 0.0:+.2f}"


def failure_table(calls: list[dict]) -> list[tuple[str, int, int]]:
    """(reason, inbound count, outbound count), most frequent first."""
    cnt: dict[str, list[int]] = {}
    for c in calls:
        if c.get("reason"):
            k = cnt.setdefault(c["reason"], [0, 0])
            k[0 if c["direction"] == "inbound" else 1] += 1
    return sorted(((r, a, b) for r, (a, b) in cnt.items()), key=lambda x: -(x[1] + x[2]))


def audio_table(calls: list[dict]) -> list[str]:
    rows = []
    for d, label in (("up", "phone -> room (1 kHz, heard by the room side)"),
                     ("down", "room -> phone (440 Hz, captured at the phone)")):
        got = [c for c in calls if c.get("answered") is not None and f"{d}_delivered" in c]
        deliv = [c[f"{d}_delivered"] for c in got]
        loss = [c[f"{d}_loss"] for c in got if f"{d}_loss" in c]
        delay = [1000 * c[f"{d}_delay_s"] for c in got if f"{d}_delay_s" in c]
        extra = ""
        if d == "down":
            seq = [c["down_seq_loss"] for c in got if "down_seq_loss" in c]
            extra = f" | {_f(100 * float(np.mean(seq)) if seq else float('nan'), 3)} %"
        else:
            extra = " | -"
        rows.append(
            f"| {label} | {len(got)} | {_f(100 * pctl(deliv, 50))} % / {_f(100 * pctl(deliv, 5))} % / "
            f"{_f(100 * min(deliv) if deliv else float('nan'))} % | "
            f"{_f(100 * float(np.mean(loss)) if loss else float('nan'), 2)} % / {_f(100 * pctl(loss, 95), 2)} % / "
            f"{_f(100 * max(loss) if loss else float('nan'), 2)} % | "
            f"{_f(pctl(delay, 50), 0)} / {_f(pctl(delay, 95), 0)} ms{extra} |")
    return rows


def write_report(info: dict, args: dict, calls: list[dict], samples: list[dict], verdicts: list[dict],
                 end: dict, phases: dict, extra: dict) -> str:
    """report.md as text."""
    L: list[str] = []
    n_in = sum(1 for c in calls if c["direction"] == "inbound")
    n_out = len(calls) - n_in
    failed = [c for c in calls if c.get("reason")]
    grew = [v for v in verdicts if v["verdict"] == "GREW"]
    la = extra.get("loadavg", {})
    L.append(f"# Roomline soak test, {info.get('date', '')}\n")
    L.append(f"`scripts/soak {args.get('cmdline', '')}`: {args['calls']} concurrent calls for "
             f"{args['minutes']:g} minutes, calls of {args['hold_min']:g}-{args['hold_max']:g} s "
             f"({100 * args['outbound_share']:.0f} % outbound through the API, "
             f"{100 * args['room_ends']:.0f} % hung up by the room).\n")
    L.append(f"**Machine load** (1-minute load average, {info.get('cores', '?')} cores): "
             f"{_f(la.get('start'), 2)} at the start, mean {_f(la.get('mean'), 2)}, max {_f(la.get('max'), 2)} "
             f"during the calls, {_f(la.get('end'), 2)} at the end"
             + (" (the machine was shared with other work: figures are noisy)" if (la.get("mean") or 0) >
                0.75 * (info.get("cores") or 2) else "") + ".\n")
    L.append("## Verdict\n")
    L.append(f"- **Calls:** {len(calls)} placed ({n_in} inbound, {n_out} outbound), "
             f"{len(calls) - len(failed)} completed with audio both ways, **{len(failed)} failed**"
             + (" (" + ", ".join(f"{r}: {a + b}" for r, a, b in failure_table(calls)) + ")" if failed else "")
             + ".")
    flat = [v for v in verdicts if v["verdict"] == "rose, then flat"]
    L.append("- **Resources over the steady part:** "
             + ("no growth" if not grew else "GREW: " + ", ".join(v["label"] for v in grew))
             + ("" if not flat else "; rose, then flat (warm-up): " + ", ".join(v["label"] for v in flat))
             + f" (linear fit over {_f(phases.get('steady_s', 0) / 60, 1)} min).")
    checks = {c["what"]: c for c in end.get("checks", [])}
    zero_ok = bool(checks) and all(checks[c]["ok"] for c in ZERO_AFTER if c in checks)
    near = [c for c in ("fds", "threads") if c in checks]
    rss = checks.get("rss_mib")
    L.append("- **After the last call:** "
             + ("calls, RTP ports, participants, call tasks and SIP participants in LiveKit all back to 0"
                if zero_ok else "NOT everything back to 0 (see below)")
             + "; " + (" and ".join(_END_NAMES[c] for c in near) + " back to the start level"
                       if near and all(checks[c]["ok"] for c in near)
                       else "file descriptors or threads NOT back to the start level")
             + ("" if not rss else
                f"; RSS {rss['value']:.1f} MiB (start {rss['start']:.1f}, peak {rss['peak']:.1f}): "
                + {"back": "back near the start level.",
                   "kept": "not back to the start level but not above its level during the calls "
                           "(memory the allocator keeps for reuse).",
                   "above": "**above its level during the calls.**"}[rss["state"]]))
    L.append("")

    L.append("## Resources, steady part\n")
    L.append(f"Samples every {args['sample_every']:g} s; the steady part runs from {_f(phases.get('steady_t0', 0) / 60, 1)} "
             f"to {_f(phases.get('steady_t1', 0) / 60, 1)} min (from the start of the calls plus a warm-up of "
             f"{args['warmup']:g} s, to the last new call). Each resource is fitted by least squares against time "
             "and the calls the phones had up at that sample (counts and file descriptors follow the load): the "
             "slope is the drift at constant load. A resource **grew** when that slope times the steady part's "
             "length is above its tolerance, the slope is more than 3 standard errors above 0, and the second "
             "half of the steady part alone still rises by more than half the tolerance (a leak keeps growing); "
             "when only the first half rose, it is *rose, then flat* (warm-up: pools and allocator caches "
             "filling; a longer run tells).\n")
    L.append("| resource | steady mean | per call up | drift per hour (± SE) | drift over the steady part "
             "| over its second half | tolerance | verdict |")
    L.append("|---|---|---|---|---|---|---|---|")
    for v in verdicts:
        if v["verdict"] in ("no data", "not reported"):
            L.append(f"| {v['label']} | - | - | - | - | - | - | {v['verdict']} |")
            continue
        L.append(f"| {v['label']} | {_f(v['mean'], 1)} | {_f(v['per_call'], 2)} | "
                 f"{_signed(v['slope_per_h'])} (± {v['se_per_h']:.2f}) | "
                 f"{_signed(v['rise'])} | {_signed(v['late_rise']) if not math.isnan(v['late_rise']) else '-'} | "
                 f"{v['tolerance']:.1f} | {'**GREW**' if v['verdict'] == 'GREW' else v['verdict']} |")
    L.append("")
    L.append("![resources over time](soak.png)\n")

    L.append("## After the last call\n")
    L.append(f"Last sample {_f(phases.get('after_s', 0), 0)} s after the phones' last hang-up "
             f"(daemon idle after {_f(phases.get('settle_s'), 1)} s).\n")
    L.append("| figure | at the end | start (before the first call) | peak | wanted | ok |")
    L.append("|---|---|---|---|---|---|")
    for c in end.get("checks", []):
        want = "0" if "want" in c else f"<= start + {c['tolerance']:.0f}"
        if c["what"] == "rss_mib":
            want += f", or kept: <= the steady part's highest ({_f(c.get('steady_max'), 1)}) + 1"
        ok = "**NO**" if not c["ok"] else ("kept" if c.get("state") == "kept" else "yes")
        L.append(f"| {_END_NAMES.get(c['what'], c['what'])} | {_f(c.get('value'), 1)} | {_f(c.get('start'), 1)} | "
                 f"{_f(c.get('peak'), 1)} | {want} | {ok} |")
    L.append("")

    L.append("## Calls\n")
    L.append("| | inbound | outbound |")
    L.append("|---|---|---|")
    for label, pred in (("placed", lambda c: True), ("answered", lambda c: c.get("answered") is not None),
                        ("failed", lambda c: bool(c.get("reason")))):
        L.append(f"| {label} | {sum(1 for c in calls if c['direction'] == 'inbound' and pred(c))} | "
                 f"{sum(1 for c in calls if c['direction'] == 'outbound' and pred(c))} |")
    def setup(d: str) -> str:
        st = [1000 * c["setup_s"] for c in calls if c["direction"] == d and c.get("setup_s") is not None]
        return f"{_f(pctl(st, 50), 0)} / {_f(pctl(st, 95), 0)} / {_f(max(st) if st else float('nan'), 0)}"
    L.append(f"| setup p50 / p95 / max, ms | {setup('inbound')} (INVITE to 200 OK at the phone) | "
             f"{setup('outbound')} (CreateSIPParticipant until answered) |")
    durs = [c["media_s"] for c in calls if c.get("media_s")]
    L.append(f"\nCall length (answer to hang-up): median {_f(pctl(durs, 50))} s, {_f(min(durs) if durs else float('nan'))}-"
             f"{_f(max(durs) if durs else float('nan'))} s. Concurrency (calls the phones had up, steady part): "
             f"mean {_f(extra.get('concurrency_mean'))}, min {_f(extra.get('concurrency_min'), 0)}, "
             f"max {_f(extra.get('concurrency_max'), 0)}.\n")
    if failed:
        L.append("### Failed calls by reason\n")
        L.append("| reason | inbound | outbound |")
        L.append("|---|---|---|")
        for r, a, b in failure_table(calls):
            L.append(f"| {r} | {a} | {b} |")
        L.append("\nThe first 20 (all in `calls.csv`):\n")
        L.append("| direction | call | room | answered at (min) | reason |")
        L.append("|---|---|---|---|---|")
        t_base = extra.get("t0_unix", 0.0)
        for c in failed[:20]:
            at = (c["answered"] - t_base) / 60 if c.get("answered") else None
            L.append(f"| {c['direction']} | {c['id']} | {c.get('room', '')} | {_f(at, 2)} | {c['reason']} |")
        L.append("")

    L.append("## Audio\n")
    L.append("Every answered call, both ways. *delivered*: share of the call's media time (answer to hang-up) "
             "that carried the other side's tone; *loss*: tone frames missing between the first and the last "
             "one heard (drop-outs in the call); *delay*: answer to the first tone frame (includes joining the "
             "room and subscribing); *seq loss*: gaps in the bridge's RTP sequence numbers.\n")
    L.append("| direction | calls | delivered p50 / p5 / min | loss mean / p95 / max | delay p50 / p95 | seq loss |")
    L.append("|---|---|---|---|---|---|")
    L += audio_table(calls)
    li = extra.get("listeners", [])
    if li:
        ok = sum(1 for x in li if x.get("ok"))
        L.append(f"\nIndependent check with LiveKit's Python SDK (`tests/peers/roompeer.py listen` in sampled calls' "
                 f"rooms): {ok} of {len(li)} heard the phone's 1 kHz (dominant frequency within 2 %, for at "
                 "least half the call).")
    if extra.get("pcap_dropped"):
        L.append(f"\nThe capture dropped {extra['pcap_dropped']} packets (tcpdump's count): room->phone loss "
                 "includes them.")
    L.append("")
    L += loss_section(calls, samples, extra.get("t0_unix", 0.0), extra.get("room_lag") or [])

    L.append("## Machine and versions\n")
    L.append(f"- {info.get('cores', '?')} cores, {info.get('cpu_model', '?')}, {info.get('mem_gib', '?')} GiB, "
             f"{info.get('os', '?')}, Linux {info.get('kernel', '?')}")
    L.append(f"- Roomline `{info.get('bridges', {}).get('roomline', '?')}` (release build), livekit-server "
             f"{info.get('livekit_server', '?')} (`--dev`), {info.get('sipp', '?')}, LiveKit Python SDK "
             "(`livekit-api` for the API and ListParticipants, `livekit` for the listeners)")
    cpu = extra.get("cpu") or {}
    if cpu:
        L.append("- CPU during the steady part, mean % of one core: Roomline "
                 f"{_f(cpu.get('cpu_pct'))}, livekit-server {_f(cpu.get('lk_cpu_pct'))}, room side "
                 f"{_f(cpu.get('room_side_cpu_pct'))}, sipp (both) {_f(cpu.get('sipp_cpu_pct'))}, tcpdump "
                 f"{_f(cpu.get('tcpdump_cpu_pct'))}, this tool {_f(cpu.get('self_cpu_pct'))}, Python SDK listeners "
                 f"{_f(cpu.get('listeners_cpu_pct'))}; the whole machine {_f(cpu.get('machine_busy_cores'), 2)} of "
                 f"{info.get('cores', '?')} cores busy (steal {_f(cpu.get('steal_cores'), 2)}): what is left is other "
                 "work on the machine. Time runnable but waiting for a CPU (run queue), ms per second, all threads: "
                 f"Roomline {_f(cpu.get('wait_ms_per_s'), 0)}, livekit-server {_f(cpu.get('lk_wait_ms_per_s'), 0)}, "
                 f"room side {_f(cpu.get('room_side_wait_ms_per_s'), 0)}")
    L.append(f"- Run: {_f(extra.get('runtime_s', 0) / 60, 1)} min in all (idle baseline, calls, drain, after)\n")

    L.append("## Method\n")
    L.append(
        "Everything runs on one machine in a private network namespace (`scripts/soak`): livekit-server "
        "(dev mode), the Roomline daemon (release build, as an operator runs it), the room side "
        "(`examples/lk_bench --mode rooms`: one participant per call's room, publishing 440 Hz and counting the "
        "1 kHz it hears from each sender), sipp as the phones calling in (one process, `-l` keeps "
        f"{args.get('calls_in', '?')} calls up, each call's length drawn uniformly from the range, 1 kHz PCMU) and "
        f"as the carrier answering outbound calls ({args.get('calls_out', '?')} kept up by as many API loops, "
        "CreateSIPParticipant through LiveKit's Python SDK to Roomline's API, 1 kHz back). A share of the calls "
        "is hung up by the room (RoomService RemoveParticipant) instead of the phone. The bridge's RTP to the "
        "phones is captured (tcpdump) and each 20 ms packet checked for 440 Hz. Each call has a room of its own, "
        "joined by the room side before the call and left after it.\n")
    L.append(
        f"Every {args['sample_every']:g} s: the daemon's RSS, open file descriptors and threads (`/proc`), "
        "`/health/detailed` (`calls`: active, RTP ports, participants, call tasks), and LiveKit's view "
        "(ListRooms, ListParticipants per room: SIP participants, the room side). The run starts with an idle "
        f"baseline ({args['idle']:g} s), stops placing calls after {args['minutes']:g} min, waits for every call "
        f"to end and the daemon to report 0 calls, then samples {args['after']:g} s more.\n")
    L.append("Data: `samples.csv` (every sample), `calls.csv` (every call: times, bridge port, outcome, audio "
             "figures), `run.json` (arguments, machine, phases, verdicts); raw logs in `raw/`. "
             "`scripts/bench/soak.py OUTDIR --report-only` rebuilds this page and the plot.\n")
    return "\n".join(L)


def hole_kinds(calls: list[dict], d: str) -> dict[str, float]:
    """Seconds of tone missing in one direction's holes, by kind."""
    out: dict[str, float] = {}
    for c in calls:
        for _t, miss, *kind in c.get(f"{d}_holes") or []:
            k = kind[0] if kind else "silence"
            out[k] = out.get(k, 0.0) + float(miss)
    return out


def near_lag(calls: list[dict], d: str, lags: list[dict], min_s: float = 0.105, within_s: float = 2.0) -> tuple[int, int]:
    """(holes longer than min_s, how many began within within_s of a second in which the
    room side's publishing lagged)."""
    times = sorted(float(x["unix"]) for x in lags)
    n = near = 0
    for c in calls:
        for t, miss, *_k in c.get(f"{d}_holes") or []:
            if float(miss) <= min_s:
                continue
            n += 1
            i = int(np.searchsorted(times, float(t) - within_s))
            if i < len(times) and times[i] <= float(t) + within_s:
                near += 1
    return n, near


def loss_section(calls: list[dict], samples: list[dict], t0_unix: float, lags: list[dict]) -> list[str]:
    """report.md's "Where the audio was lost": hole sizes and kinds, the room side's own
    lag, and loss against the machine's load over the run."""
    L = ["### Where the audio was lost\n",
         "A *hole* is a stretch without the tone between two frames with it, inside one call (room -> phone: "
         "packets without 440 Hz or missing sequence numbers; phone -> room: decoded frames without 1 kHz). "
         "Short holes are single late or lost packets (jitter buffer concealment); holes over 500 ms are "
         "outages.\n",
         "| direction | " + " | ".join(f"holes {label}" for _, label in HOLE_CLASSES) + " | tone missing in holes |",
         "|---|" + "---|" * len(HOLE_CLASSES) + "---|"]
    for d, label in (("up", "phone -> room"), ("down", "room -> phone")):
        cl = hole_classes(calls, d)
        L.append(f"| {label} | " + " | ".join(f"{n} ({_f(miss, 1)} s)" for _, n, miss in cl)
                 + f" | {_f(sum(m for _, _, m in cl), 1)} s |")
    up_kinds = hole_kinds(calls, "up")
    L.append(f"\nPhone -> room by cause: {_f(up_kinds.get('silence', 0.0), 1)} s in frames the room side decoded "
             f"without the phone's tone, {_f(up_kinds.get('not received', 0.0), 1)} s of frames that never reached the "
             "room side (published late or lost: the lower envelope of its arrival deficit).")
    kinds = hole_kinds(calls, "down")
    L.append(f"\nRoom -> phone by cause: {_f(kinds.get('silence', 0.0), 1)} s in packets the bridge sent on time "
             f"without the room's tone (the room's audio had not reached it), {_f(kinds.get('skipped', 0.0), 1)} s in "
             f"send ticks the bridge skipped (it ran late: the RTP timestamp jumps), {_f(kinds.get('lost', 0.0), 1)} s "
             "in missing sequence numbers (not sent, or dropped by the capture).")
    late = [x for x in lags if float(x.get("late_ms") or 0) > 0]
    refused = sum(int(x.get("refused") or 0) for x in lags)
    n_dn, near_dn = near_lag(calls, "down", lags)
    n_up, near_up = near_lag(calls, "up", lags)
    L.append(f"\nThe room side itself (one process publishing the 440 Hz into every room from one 20 ms ticker) "
             f"ran 60 ms or more late in {len(late)} seconds of the run (worst "
             f"{max((int(x['late_ms']) for x in late), default=0)} ms), and its participants' queues refused "
             f"{refused} frames. Of the holes over 100 ms, {near_dn} of {n_dn} room -> phone and {near_up} of {n_up} "
             "phone -> room began within 2 s of such a second (their cause is then on the room side's machine, "
             "not in the bridge).")
    tl = loss_timeline(calls, samples, t0_unix)
    lag_by_min: dict[int, list[float]] = {}
    for x in lags:
        m = lag_by_min.setdefault(int((float(x["unix"]) - t0_unix) // 60), [0, 0])
        m[0] += 1 if float(x.get("late_ms") or 0) >= 60 else 0
        m[1] += int(x.get("refused") or 0)
    if len(tl) >= 2:
        load = [r["load1"] for r in tl]
        wait = [r["wait_ms_per_s"] for r in tl]
        r_up = correlation(load, [r["up_loss"] for r in tl])
        r_down = correlation(load, [r["down_loss"] for r in tl])
        w_up = correlation(wait, [r["up_loss"] for r in tl])
        w_down = correlation(wait, [r["down_loss"] for r in tl])
        L.append(f"\nPer minute of the run (plot, last panel), Pearson r of the loss against the machine's 1-minute "
                 f"load average: {_f(r_up, 2)} (phone -> room), {_f(r_down, 2)} (room -> phone); against the time "
                 f"Roomline's threads waited for a CPU (run queue, `/proc/PID/task/*/schedstat`): {_f(w_up, 2)}, "
                 f"{_f(w_down, 2)}; over {len(tl)} minutes with calls. The minutes with the most loss, and the "
                 "quietest:\n")
        L.append("| minute | call media, s | loss phone -> room | loss room -> phone | holes > 100 ms (up / down) "
                 "| load average | busy cores | waited for a CPU, ms/s: Roomline / livekit-server / room side "
                 "| room side late, s / refused frames |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        worst = sorted(tl, key=lambda r: -(r["up_missing_s"] + r["down_missing_s"]))[:8]
        best = [r for r in sorted(tl, key=lambda r: r["up_missing_s"] + r["down_missing_s"])
                if r not in worst and r["media_s"] >= 0.5 * max(x["media_s"] for x in tl)][:3]
        for r in sorted(worst + best, key=lambda r: r["t0_min"]):
            L.append(f"| {r['t0_min']:.0f} | {r['media_s']:.0f} | {_f(100 * r['up_loss'], 3)} % | "
                     f"{_f(100 * r['down_loss'], 3)} % | {r['up_long']} / {r['down_long']} | {_f(r['load1'], 2)} | "
                     f"{_f(r['busy_cores'], 2)} | {_f(r['wait_ms_per_s'], 0)} / {_f(r['lk_wait_ms_per_s'], 0)} / "
                     f"{_f(r['room_side_wait_ms_per_s'], 0)} | "
                     f"{lag_by_min.get(round(r['t0_min']), [0, 0])[0]} / {lag_by_min.get(round(r['t0_min']), [0, 0])[1]} |")
        quiet = [r for r in tl if r["load1"] <= np.nanmedian(load)]
        busy = [r for r in tl if r["load1"] > np.nanmedian(load)]
        if quiet and busy:
            def share(rs: list[dict], d: str) -> float:
                m = sum(r["media_s"] for r in rs)
                return 100 * sum(r[f"{d}_missing_s"] for r in rs) / m if m else float("nan")
            L.append(f"\nMinutes with the load average at or below its median ({_f(float(np.nanmedian(load)), 2)}): "
                     f"loss {_f(share(quiet, 'up'), 3)} % phone -> room, {_f(share(quiet, 'down'), 3)} % room -> phone; "
                     f"above it: {_f(share(busy, 'up'), 3)} %, {_f(share(busy, 'down'), 3)} %.")
    L.append("")
    return L


def plot(samples: list[dict], phases: dict, path: str, calls: Optional[list[dict]] = None,
         t0_unix: float = 0.0) -> None:
    """soak.png: calls and counts, RSS, fds and threads, load, over the run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]

    def col(k: str) -> list[float]:
        return [(_num(s.get(k)) if _num(s.get(k)) is not None else float("nan")) for s in samples]

    fig, axes = plt.subplots(5, 1, figsize=(11, 13.5), sharex=True)
    for ax in axes:
        if phases.get("steady_t1"):
            ax.axvspan(phases["steady_t0"] / 60, phases["steady_t1"] / 60, color="0.93", zorder=0)
        for k in ("calls_t0", "stop_t", "drained_t"):
            if phases.get(k):
                ax.axvline(phases[k] / 60, color="0.6", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    a = axes[0]
    for k, label, style in (("phones_up", "calls up at the phones", "k-"), ("active", "active calls (daemon)", "C0-"),
                            ("participants", "participants (daemon)", "C1--"),
                            ("lk_sip", "SIP participants in LiveKit", "C2:"), ("tasks", "call tasks (daemon)", "C3-."),
                            ("rtp_ports", "RTP ports in use (daemon)", "C4-")):
        a.plot(t, col(k), style, lw=1, label=label)
    a.set_ylabel("count")
    a.set_title("Calls (grey: the steady part the fit uses)")
    a.legend(fontsize=7.5, loc="upper right", ncol=2)
    axes[1].plot(t, col("rss_mib"), "C0-", lw=1, label="RSS")
    axes[1].plot(t, col("rss_anon_mib"), "C1-", lw=1, label="anonymous (heap, stacks)")
    axes[1].plot(t, col("rss_file_mib"), "C2-", lw=1, label="file pages (code)")
    axes[1].legend(fontsize=7.5, loc="upper left")
    axes[1].set_ylabel("RSS, MiB")
    axes[1].set_title("Roomline memory")
    axes[2].plot(t, col("fds"), "C0-", lw=1, label="open file descriptors")
    axes[2].plot(t, col("threads"), "C1-", lw=1, label="threads")
    axes[2].legend(fontsize=7.5, loc="upper right")
    axes[2].set_title("Roomline file descriptors and threads")
    axes[3].plot(t, col("cpu_pct"), "C0-", lw=1, label="Roomline CPU, % of one core")
    ax2 = axes[3].twinx()
    ax2.plot(t, col("load1"), "C3-", lw=1, label="machine load average (1 min)")
    ax2.set_ylabel("load average")
    axes[3].set_ylabel("CPU %")
    axes[3].legend(fontsize=7.5, loc="upper left")
    ax2.legend(fontsize=7.5, loc="upper right")
    axes[3].set_title("CPU and machine load")
    tl = loss_timeline(calls or [], samples, t0_unix)
    if tl:
        tm = [r["t0_min"] + 0.5 for r in tl]
        axes[4].step(tm, [100 * r["up_loss"] for r in tl], "C0-", where="mid", lw=1, label="phone -> room")
        axes[4].step(tm, [100 * r["down_loss"] for r in tl], "C1-", where="mid", lw=1, label="room -> phone")
        ax4 = axes[4].twinx()
        ax4.plot(t, col("load1"), "C3-", lw=0.8, alpha=0.6, label="machine load average (1 min)")
        ax4.set_ylabel("load average")
        ax4.legend(fontsize=7.5, loc="upper right")
    axes[4].set_ylabel("tone missing, %")
    axes[4].legend(fontsize=7.5, loc="upper left")
    axes[4].set_title("Audio loss per minute (holes in the tone, share of the call media time)")
    axes[4].set_xlabel("minutes since the start (dotted: first call, last new call, last call ended)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
