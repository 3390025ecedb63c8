#!/usr/bin/env python3
"""Unit tests of the soak tool's parsing and report logic (soak_report.py) and of the shared
harness pieces it builds on (the sipp phone scenario, the PCMU tone check). Made-up data
only, no peers: run by tests/harness_smoke.rs (`scripts/test`), or alone:

  python3 -m unittest discover -s scripts/bench -p 'test_*.py'
"""

from __future__ import annotations

import math
import sys
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
import rtp_phone  # noqa: E402
import soak_report as R  # noqa: E402

# what sipp 3.6.1 writes (timestamps: date TAB time TAB Unix time)
UAC_LOG = """\
START 1 14440000001 1-27402@127.0.0.1 2026-12-03\t12:58:20.865473\t1796302700.865473
ANSWERED 1 m=audio 20004 2026-12-03\t12:58:20.968037\t1796302700.968037
START 2 14440000002 2-27402@127.0.0.1 2026-12-03\t12:58:21.065199\t1796302701.065199
REJECTED 2 SIP/2.0 503 2026-12-03\t12:58:21.067671\t1796302701.067671
START 3 14440000003 3-27402@127.0.0.1 2026-12-03\t12:58:22.000000\t1796302702.000000
ANSWERED 3 m=audio 20008 2026-12-03\t12:58:22.100000\t1796302702.100000
HANGUP 1 2026-12-03\t12:58:40.877439\t1796302720.877439
END 1 2026-12-03\t12:58:40.878906\t1796302720.878906
START 4 14440000004 4-27402@127.0.0.1 2026-12-03\t12:58:41.000000\t1796302721.000000
SETUP_TIMEOUT 4 2026-12-03\t12:59:11.000000\t1796302751.000000
garbage line
"""
# sipp writes some error records without a line break in between
UAC_ERR = ("The following events occurred:\n"
           "2026-12-03\t12:58:26.509381\t1796302706.509381: Overload warning: the minor watchdog "
           "timer 500ms has been tripped (592), 119 trips remaining."
           "2026-12-03\t12:58:42.473583\t1796302722.473583: Aborting call on an unexpected BYE for "
           "call: 3-27402@127.0.0.1"
           "2026-12-03\t12:58:43.000000\t1796302723.000000: Aborting call on unexpected message for "
           "Call-Id '9-27402@127.0.0.1': while expecting '200' (index 5), received 'SIP/2.0 480 "
           "Temporarily Unavailable\n")
UAS_LOG = """\
INVITED sip:+17770000001 5-1@127.0.0.1 2026-12-03\t12:58:20.000000\t1796302700.000000
ANSWERED sip:+17770000001 m=audio 20100 2026-12-03\t12:58:20.100000\t1796302700.100000
HANGUP sip:+17770000001 2026-12-03\t12:58:50.100000\t1796302730.100000
END sip:+17770000001 2026-12-03\t12:58:50.110000\t1796302730.110000
"""


def tone_payload(hz: float, n: int = 160, phase: int = 0) -> bytes:
    t = (np.arange(n) + phase) / 8000.0
    return rtp_phone.ulaw_encode(0.5 * np.sin(2 * np.pi * hz * t))


class SippFiles(unittest.TestCase):
    def test_step_log(self) -> None:
        ev = R.parse_step_log(UAC_LOG)
        self.assertEqual(len(ev), 10)
        self.assertEqual(ev[0], {"ev": "START", "unix": 1796302700.865473, "call": 1,
                                 "caller": "14440000001", "call_id": "1-27402@127.0.0.1"})
        self.assertEqual(ev[1]["bport"], 20004)
        self.assertEqual(ev[3]["status"], 503)
        uas = R.parse_step_log(UAS_LOG)
        self.assertEqual(uas[0]["callee"], "+17770000001")
        self.assertEqual(uas[0]["call_id"], "5-1@127.0.0.1")
        self.assertEqual(uas[1]["bport"], 20100)

    def test_error_log(self) -> None:
        recs = R.parse_error_log(UAC_ERR)
        self.assertEqual([r["kind"] for r in recs], ["remote_bye", "unexpected"])
        self.assertEqual(recs[0]["call_id"], "3-27402@127.0.0.1")
        self.assertAlmostEqual(recs[0]["unix"], 1796302722.473583)
        self.assertEqual(recs[1]["call_id"], "9-27402@127.0.0.1")
        self.assertEqual(recs[1]["what"], "SIP/2.0 480")

    def test_inbound_calls(self) -> None:
        calls = R.inbound_calls(R.parse_step_log(UAC_LOG), R.parse_error_log(UAC_ERR))
        self.assertEqual(sorted(calls), [1, 2, 3, 4])
        self.assertEqual(calls[1]["ended"], 1796302720.878906)
        self.assertEqual(calls[2]["rejected"], 503)
        self.assertEqual(calls[3]["remote_bye"], 1796302722.473583)
        self.assertEqual(calls[3]["ended"], 1796302722.473583)
        self.assertTrue(calls[4]["setup_timeout"])

    def test_outbound_calls(self) -> None:
        calls = R.outbound_calls(R.parse_step_log(UAS_LOG), [
            {"unix": 1796302731.0, "call_id": "5-1@127.0.0.1", "kind": "remote_bye", "what": "BYE"}])
        c = calls["+17770000001"]
        self.assertEqual((c["answered"], c["hangup"], c["ended"]), (1796302700.1, 1796302730.1, 1796302730.11))
        self.assertEqual(c["remote_bye"], 1796302731.0)


class Audio(unittest.TestCase):
    def test_pcmu_tone_frames(self) -> None:
        audio = tone_payload(440) + tone_payload(1000) + bytes([0xFF]) * 160 + tone_payload(440, phase=160)
        self.assertEqual(list(harness.pcmu_tone_frames(audio, 440)), [True, False, False, True])
        self.assertEqual(list(harness.pcmu_tone_frames(audio, 1000)), [False, True, False, False])

    def test_rtp_parse(self) -> None:
        pkt = bytes([0x90, 0x00, 0x12, 0x34, 0, 0, 0, 1, 0xDE, 0xAD, 0xBE, 0xEF,
                     0xBE, 0xDE, 0x00, 0x01, 1, 2, 3, 4]) + b"x" * 160
        pt, seq, ts, ssrc, payload = harness.rtp_parse(pkt)
        self.assertEqual((pt, seq, ts, ssrc, len(payload)), (0, 0x1234, 1, 0xDEADBEEF, 160))
        self.assertIsNone(harness.rtp_parse(b"\x00" * 20))

    def test_flows_segments_and_wrap(self) -> None:
        f = R.DownFlows()
        t = 100.0
        for i in range(100):  # a call: sequence numbers wrap, two packets lost, 10 without tone
            if i in (40, 41):
                continue
            f.add(t + 0.02 * i, 20004, 40000, 7, (65500 + i) & 0xFFFF, i >= 10)
        # the same port again, 5 s later (the next call, new SSRC)
        for i in range(50):
            f.add(t + 10 + 0.02 * i, 20004, 40000, 8, i, True)
        segs = sorted(f.segments(), key=lambda s: s["first"])
        self.assertEqual(len(segs), 2)
        self.assertEqual((segs[0]["packets"], segs[0]["seq_span"], segs[0]["tone"]), (98, 100, 88))
        self.assertAlmostEqual(segs[0]["first_tone"], t + 0.2)
        call = {"bport": 20004, "answered": t, "ended": t + 2.1}
        d = R.down_audio(call, segs, 40000)
        self.assertEqual((d["down_packets"], d["down_seq_span"], d["down_tone_frames"]), (98, 100, 88))
        self.assertEqual(R.down_audio(call, segs, 41000)["down_packets"], 0)

    def test_flow_holes(self) -> None:
        f = R.DownFlows()
        t = 100.0
        # silence before the first tone frame and after the last is no hole; inside: three
        # frames without the tone, then two lost packets, then one frame without it
        tone = [False] * 5 + [True] * 20 + [False] * 3 + [True] * 20 + [None, None] + [True] * 10 \
            + [False] + [True] * 5 + [False] * 10
        for i, x in enumerate(tone):
            if x is not None:
                f.add(t + 0.02 * i, 20004, 40000, 7, i, x)
        (seg,) = f.segments()
        holes = seg["holes"]
        self.assertEqual(len(holes), 3)
        self.assertAlmostEqual(holes[0][0], t + 0.02 * 25)
        self.assertAlmostEqual(holes[0][1], 0.06)
        self.assertEqual(holes[0][2], "silence")
        self.assertAlmostEqual(holes[1][0], t + 0.02 * 50)  # the packet after the lost ones
        self.assertAlmostEqual(holes[1][1], 0.04)
        self.assertEqual(holes[1][2], "lost")
        self.assertAlmostEqual(holes[2][1], 0.02)
        d = R.down_audio({"bport": 20004, "answered": t, "ended": t + 2}, [seg], 40000)
        self.assertEqual(len(d["down_holes"]), 3)

    def test_skipped_ticks(self) -> None:
        # the bridge ran late once: 5 ticks skipped (timestamp +6 frames, sequence +1)
        f = R.DownFlows()
        ts = 1000
        for i in range(40):
            if i == 20:
                ts += 5 * R.FRAME_TS
            f.add(100.0 + 0.02 * i, 20004, 40000, 7, i, True, ts)
            ts += R.FRAME_TS
        (seg,) = f.segments()
        self.assertEqual(len(seg["holes"]), 1)
        self.assertAlmostEqual(seg["holes"][0][1], 0.1)
        self.assertEqual(seg["holes"][0][2], "skipped")
        self.assertEqual(R.hole_kinds([{"down_holes": seg["holes"]}], "down"), {"skipped": 0.1})

    def test_near_lag(self) -> None:
        calls = [{"down_holes": [(100.0, 0.5, "silence"), (200.0, 0.5, "silence"), (300.0, 0.02, "silence")]}]
        self.assertEqual(R.near_lag(calls, "down", [{"unix": 101.5, "late_ms": 300, "refused": 0}]), (2, 1))
        self.assertEqual(R.near_lag(calls, "down", []), (2, 0))

    def test_up_holes(self) -> None:
        u = R.up_audio({"rate": 16000, "samples": 1600, "frames": 10, "tone_frames": 8, "tone_samples": 1280,
                        "first_tone_unix": 1.0, "last_tone_unix": 2.0, "holes": [[1.5, 320]]})
        self.assertEqual(u["up_holes"], [(1.5, 0.02, "silence")])

    def test_not_received(self) -> None:
        # 1 s points: late frames at 3 s (back by 4 s), 0.5 s lost at 6 s, then steady
        rate = 16000
        d = [(1.0, 0), (2.0, 160), (3.0, 8000), (4.0, 160), (5.0, 0), (6.0, 8000), (7.0, 8160), (8.0, 8000)]
        holes = R.not_received(d, rate)
        self.assertEqual(len(holes), 1)
        self.assertEqual(holes[0][0], 6.0)
        self.assertAlmostEqual(holes[0][1], 0.5)
        self.assertEqual(holes[0][2], "not received")
        self.assertEqual(R.not_received([], rate), [])
        u = R.up_audio({"rate": rate, "samples": 1600, "frames": 10, "tone_frames": 8, "tone_samples": 1280,
                        "first_tone_unix": 1.0, "last_tone_unix": 9.0, "holes": [[1.5, 320]], "deficit": d})
        self.assertEqual([h[2] for h in u["up_holes"]], ["silence", "not received"])

    def test_loss_timeline(self) -> None:
        t0 = 1000.0
        calls = [
            # minute 0 (from 30 s) and 1 (to 90 s): 60 s of media; a 0.6 s hole at 70 s
            {"answered": t0 + 30, "hangup": t0 + 90, "up_holes": [(t0 + 70, 0.6, "silence")],
             "down_holes": [(t0 + 40, 0.02, "silence"), (t0 + 41, 0.02, "lost")]},
            # minute 1 only, no holes
            {"answered": t0 + 60, "remote_bye": t0 + 120},
            {"reason": "SIP 503"},  # never answered: no media
        ]
        smp = [{"t_s": float(t), "load1": 1.0 if t < 60 else 3.0, "machine_busy_cores": 1.0}
               for t in range(0, 120, 5)]
        tl = R.loss_timeline(calls, smp, t0)
        self.assertEqual([r["t0_min"] for r in tl], [0, 1])
        self.assertAlmostEqual(tl[0]["media_s"], 30)
        self.assertAlmostEqual(tl[1]["media_s"], 90)
        self.assertAlmostEqual(tl[0]["down_loss"], 0.04 / 30)
        self.assertAlmostEqual(tl[1]["up_loss"], 0.6 / 90)
        self.assertEqual((tl[1]["up_long"], tl[0]["down_long"]), (1, 0))
        self.assertEqual((tl[0]["load1"], tl[1]["load1"]), (1.0, 3.0))
        self.assertEqual([(n, round(m, 2)) for _, n, m in R.hole_classes(calls, "down")],
                         [(2, 0.04), (0, 0), (0, 0), (0, 0)])
        self.assertEqual([n for _, n, _ in R.hole_classes(calls, "up")], [0, 0, 0, 1])

    def test_correlation(self) -> None:
        self.assertAlmostEqual(R.correlation([1, 2, 3, 4], [2, 4, 6, 8]), 1.0)
        self.assertAlmostEqual(R.correlation([1, 2, 3, 4, float("nan")], [4, 3, 2, 1, 9]), -1.0)
        self.assertTrue(math.isnan(R.correlation([1, 2, 3], [1, 2, 3])))
        self.assertTrue(math.isnan(R.correlation([1, 1, 1, 1], [1, 2, 3, 4])))

    def test_figures(self) -> None:
        c = {"answered": 100.0, "media_s": 10.0,
             "down_first_tone": 100.5, "down_last_tone": 109.98, "down_tone_frames": 450,
             "down_packets": 490, "down_seq_span": 500}
        c.update(R.up_audio({"rate": 16000, "samples": 16000 * 9, "frames": 450, "tone_frames": 445,
                             "tone_samples": 16000 * 9, "first_tone_unix": 100.4, "last_tone_unix": 109.38}))
        f = R.audio_figures(c)
        self.assertAlmostEqual(f["up_delivered"], 0.9)
        self.assertAlmostEqual(f["up_loss"], 0.0, places=6)
        self.assertAlmostEqual(f["up_delay_s"], 0.4)
        self.assertAlmostEqual(f["down_delivered"], 0.9)
        self.assertAlmostEqual(f["down_loss"], 1 - 9.0 / 9.5)
        self.assertAlmostEqual(f["down_seq_loss"], 0.02)
        self.assertEqual(R.audio_figures({"answered": 1.0, "media_s": 5.0, "up_tone_s": 0.0}),
                         {"up_delivered": 0.0, "down_delivered": 0.0})


class Outcomes(unittest.TestCase):
    def good(self, **kw) -> dict:
        c = {"direction": "inbound", "ender": "phone", "answered": 10.0, "ended": 40.0, "media_s": 30.0,
             "up_delivered": 0.97, "down_delivered": 0.98}
        c.update(kw)
        return c

    def test_reasons(self) -> None:
        self.assertIsNone(R.outcome(self.good()))
        self.assertEqual(R.outcome({"direction": "inbound", "rejected": 503}), "SIP 503")
        self.assertEqual(R.outcome({"direction": "inbound", "setup_timeout": True}), "setup timeout")
        self.assertEqual(R.outcome({"direction": "outbound", "api_error": "unavailable (SIP 503)"}),
                         "API error: unavailable (SIP 503)")
        self.assertEqual(R.outcome({"direction": "outbound"}), "no INVITE reached the phone")
        self.assertEqual(R.outcome(self.good(remote_bye=20.0)), "ended early by the bridge")
        self.assertIsNone(R.outcome(self.good(ender="room", room_ended=39.0, remote_bye=39.1)))
        self.assertEqual(R.outcome(self.good(ender="room", room_ended=39.0, remote_bye=30.0)),
                         "ended early by the bridge")
        self.assertEqual(R.outcome(self.good(ender="room", room_ended=39.0)),
                         "the room's hang-up did not end the call")
        self.assertEqual(R.outcome(self.good(up_delivered=0.02)), "no audio phone->room")
        self.assertEqual(R.outcome(self.good(down_delivered=0.0)), "no audio room->phone")
        self.assertTrue(R.outcome(self.good(down_delivered=0.4)).startswith("poor audio room->phone"))
        self.assertTrue(R.outcome(self.good(lingered=True)).startswith("participant still in the room"))
        self.assertEqual(R.outcome(self.good(aborted="unexpected: SIP/2.0 481")), "phone: unexpected: SIP/2.0 481")


def samples(minutes: float, every: float, f) -> list[dict]:
    out = []
    for i in range(int(minutes * 60 / every)):
        t = i * every
        out.append({"t_s": t, "phase": "calls", "phones_up": 40 + (i % 3) - 1, **f(t, i)})
    return out


class Resources(unittest.TestCase):
    def test_linfit(self) -> None:
        fit = R.linfit([0, 1, 2, 3, 4], [1, 3, 5, 7, 9])
        self.assertAlmostEqual(fit["slope"], 2.0)
        self.assertAlmostEqual(fit["intercept"], 1.0)
        self.assertAlmostEqual(fit["se"], 0.0)
        self.assertTrue(math.isnan(R.linfit([1, 1, 1, 1], [1, 2, 3, 4])["slope"]))
        # y follows the load (3 per call) and drifts 0.5 per second: both recovered
        t = np.arange(20.0)
        load = np.array([40, 41, 39, 40, 42] * 4, dtype=float)
        fit = R.linfit(t, 10 + 0.5 * t + 3 * load, load)
        self.assertAlmostEqual(fit["slope"], 0.5)
        self.assertAlmostEqual(fit["per_load"], 3.0)
        # a constant load adds nothing to fit
        self.assertAlmostEqual(R.linfit(t, 2 * t, np.full(20, 40.0))["slope"], 2.0)

    def test_flat_and_leaking(self) -> None:
        rng = np.random.default_rng(3)

        def flat(t: float, i: int) -> dict:
            up = 40 + (i % 3) - 1
            anon, code = 45 + rng.normal(0, 0.5), 15 + rng.normal(0, 0.1)
            return {"rss_mib": anon + code, "rss_anon_mib": anon, "rss_file_mib": code,
                    "fds": 200 + 3 * up, "threads": 6,
                    "tasks": up, "active": up, "rtp_ports": 2 * up, "participants": up, "lk_sip": up,
                    "endpoint_txs": 0}

        v = {x["resource"]: x for x in R.resource_verdicts(samples(10, 5, flat), 60, 600)}
        self.assertEqual(v.pop("alive_tasks")["verdict"], "not reported")
        self.assertTrue(all(x["verdict"] == "no growth" for x in v.values()), v)

        def leaky(t: float, i: int) -> dict:
            d = flat(t, i)
            d["rss_mib"] += t / 60  # 1 MiB a minute, on the heap
            d["rss_anon_mib"] += t / 60
            d["participants"] += int(t // 120)  # one more every 2 minutes
            return d

        v = {x["resource"]: x for x in R.resource_verdicts(samples(10, 5, leaky), 60, 600)}
        self.assertEqual(v["rss_mib"]["verdict"], "GREW")
        self.assertAlmostEqual(v["rss_mib"]["slope_per_h"], 60, delta=3)
        self.assertEqual(v["rss_anon_mib"]["verdict"], "GREW")
        self.assertEqual(v["rss_file_mib"]["verdict"], "no growth")
        self.assertEqual(v["participants"]["verdict"], "GREW")
        self.assertEqual(v["active"]["verdict"], "no growth")
        self.assertEqual(v["fds"]["verdict"], "no growth")

        def warming(t: float, i: int) -> dict:
            d = flat(t, i)
            d["rss_mib"] += min(t, 300) / 50  # 6 MiB over the first 5 minutes, then flat
            return d

        v = {x["resource"]: x for x in R.resource_verdicts(samples(10, 5, warming), 60, 600)}
        self.assertEqual(v["rss_mib"]["verdict"], "rose, then flat")

    def test_end_check(self) -> None:
        idle = [{"t_s": 0, "phase": "idle", "fds": 30, "rss_mib": 20.0, "threads": 6}]
        zero = {"active": 0, "rtp_ports": 0, "participants": 0, "tasks": 0, "lk_sip": 0}
        good = [{"t_s": 900, "phase": "after", "fds": 31, "rss_mib": 26.0, "threads": 6, **zero}]
        self.assertTrue(R.end_check(idle + good, idle, good)["ok"])
        bad = [{**good[0], "participants": 1, "fds": 40}]
        res = R.end_check(idle + bad, idle, bad)
        self.assertFalse(res["ok"])
        self.assertEqual(sorted(c["what"] for c in res["checks"] if not c["ok"]), ["fds", "participants"])
        self.assertFalse(R.end_check(idle, idle, [])["ok"])
        # RSS above the start but not above the steady part's level: kept, ok; above it: not ok
        steady = [{"t_s": 300, "phase": "calls", "rss_mib": 50.0}]
        kept = [{**good[0], "rss_mib": 45.0}]
        res = R.end_check(idle + steady + kept, idle, kept, steady)
        self.assertTrue(res["ok"])
        self.assertEqual([c["state"] for c in res["checks"] if c["what"] == "rss_mib"], ["kept"])
        above = [{**good[0], "rss_mib": 60.0}]
        res = R.end_check(idle + steady + above, idle, above, steady)
        self.assertFalse(res["ok"])
        self.assertEqual([c["state"] for c in res["checks"] if c["what"] == "rss_mib"], ["above"])


class Report(unittest.TestCase):
    def test_report_text(self) -> None:
        calls = [
            {"direction": "inbound", "id": 1, "room": "soak_1", "answered": 1.0, "media_s": 30.0, "setup_s": 0.2,
             "up_delivered": 0.97, "up_loss": 0.0, "up_delay_s": 0.3, "down_delivered": 0.98,
             "down_loss": 0.001, "down_delay_s": 0.2, "down_seq_loss": 0.0, "reason": ""},
            {"direction": "inbound", "id": 2, "room": "soak_2", "reason": "SIP 503"},
            {"direction": "outbound", "id": 1, "room": "soak_out_1", "answered": 2.0, "media_s": 20.0,
             "setup_s": 0.5, "up_delivered": 0.96, "down_delivered": 0.0, "reason": "no audio room->phone"},
        ]
        smp = samples(2, 5, lambda t, i: {"rss_mib": 50.0, "fds": 100, "threads": 6, "tasks": 40, "active": 40,
                                          "rtp_ports": 80, "participants": 40, "lk_sip": 40, "load1": 3.0})
        verdicts = R.resource_verdicts(smp, 0, 120)
        end = {"ok": True, "checks": [{"what": "active", "value": 0, "want": 0, "ok": True}]}
        args = {"calls": 40, "minutes": 2, "hold_min": 20, "hold_max": 60, "outbound_share": 0.25,
                "room_ends": 0.3, "sample_every": 5, "warmup": 20, "idle": 20, "after": 30}
        text = R.write_report({"cores": 2, "date": "today"}, args, calls, smp, verdicts, end,
                              {"steady_t0": 0, "steady_t1": 120, "steady_s": 120}, {"loadavg": {"mean": 3.0}})
        self.assertIn("**2 failed** (SIP 503: 1, no audio room->phone: 1)", text)
        self.assertIn("noisy", text)
        self.assertIn("| SIP 503 | 1 | 0 |", text)
        self.assertIn("Resources over the steady part:** no growth", text)
        self.assertIn("### Where the audio was lost", text)


class Scenario(unittest.TestCase):
    def test_phone_scenario_is_xml_with_every_failure(self) -> None:
        root = ET.fromstring(harness.phone_uac_scenario(Path("/tmp/t.ul")))
        codes = {int(r.get("response")) for r in root.iter("recv") if r.get("next") == "rejected"}
        self.assertEqual(codes, set(harness.FAILURE_STATUSES))
        labels = {x.get("id") for x in root.iter("label")}
        jumps = {x.get("next") for x in root.iter() if x.get("next")} | \
            {x.get("ontimeout") for x in root.iter() if x.get("ontimeout")}
        self.assertTrue(jumps <= labels, jumps - labels)


if __name__ == "__main__":
    unittest.main()
