#!/usr/bin/env python3
"""agent_worker: a real LiveKit Agents worker (PyPI livekit-agents) for Roomline's tests.

It registers with a livekit-server under an agent name (explicit dispatch), so a dialplan
rule with `agents: [{name: ...}]` (or AgentDispatchService.CreateDispatch) sends it a job.
Each job does what a voice agent on a phone call does, steered by the dispatch metadata
(JSON):

  {"mode": "inbound"}      wait for the SIP participant the call brought
  {"mode": "outbound", "api_url": "http://127.0.0.1:PORT", "request": {...}}
                           place the call first with CreateSIPParticipant (the request in
                           protobuf's JSON mapping; room_name is filled in) through that
                           API, waiting until answered
  common keys: "tone_hz" (440), "tone_seconds" (6), "expect_dtmf" ("" = none),
               "dtmf_timeout" (15)

then: wait until the SIP participant's sip.callStatus is active, record its identity,
kind and attributes, publish a sine tone at tone_hz (the phone must hear it), collect the
phone's DTMF (SipDTMF packets), and once expect_dtmf has arrived (or the tone has ended
when none is expected) remove the SIP participant (RoomService.RemoveParticipant), which
must make Roomline hang up with BYE. The job's report (one JSON object) is written to
REPORTS/<room>.json.

  agent_worker.py --url ws://127.0.0.1:7880 --api-key K --api-secret S \
      --agent-name roomline-test-agent --reports DIR

stdout: {"registered": "<worker id>"} once registered. Logs go to stderr, each line with
the PID of the process that wrote it (the worker or a job's process; a job logs its room
and PID when it starts). Stops on SIGTERM/SIGINT.

Each job runs in a process of its own (JobExecutorType.PROCESS, the framework's default on
Linux and what operators run), never in a thread of the worker: livekit 1.1.21, which
livekit-agents 1.8.9 pins, creates its process-wide FFI client lazily without a lock, so
two jobs that first touch it at the same moment in one process each build a client and
the events of one of them go to the other's queue, which nobody reads (the room's
ConnectCallback is lost, the FFI panics with "timed out waiting for
ReadyForRoomEventRequest"; or the room's events are lost). livekit 1.2.1 takes a lock
there. Warm processes, one per job the tests run at once, are ready before the worker
registers.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
import os
import sys
import time
import warnings
from typing import Any

# the test server's key is short; at module level so that job processes (which import this
# module to find the entrypoint) have the filter too
warnings.filterwarnings("ignore", message=".*HMAC key.*")


def write_report(reports: str, room: str, report: dict[str, Any]) -> None:
    path = os.path.join(reports, f"{room}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f)
    os.replace(tmp, path)


async def play_tone(ctx: Any, hz: float, seconds: float) -> float:
    """Publishes a track and sends `seconds` of a sine at `hz` in 10 ms frames."""
    import numpy as np
    from livekit import rtc

    rate = 48000
    source = rtc.AudioSource(rate, 1)
    track = rtc.LocalAudioTrack.create_audio_track("agent-tone", source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await ctx.room.local_participant.publish_track(track, opts)
    n = rate // 100
    t = np.arange(int(seconds * rate)) / rate
    pcm = (12000 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    for i in range(0, len(pcm) - n + 1, n):
        frame = rtc.AudioFrame(pcm[i:i + n].tobytes(), rate, 1, n)
        await source.capture_frame(frame)
    return seconds


async def entrypoint(reports: str, ctx: Any) -> None:
    """The job. Module level (bound to `reports` with functools.partial): the worker hands
    it to the job's process by pickling."""
    from google.protobuf import json_format
    from livekit import api, rtc
    from livekit.agents import AutoSubscribe
    from livekit.protocol.sip import CreateSIPParticipantRequest

    meta = json.loads(ctx.job.metadata or "{}")
    room_name = ctx.room.name
    report: dict[str, Any] = {
        "room": room_name,
        "job_id": ctx.job.id,
        "agent_name": ctx.job.agent_name,
        "mode": meta.get("mode", "inbound"),
        "pid": os.getpid(),
        "dtmf": "",
        "errors": [],
    }
    started = time.monotonic()
    logging.getLogger("agent_worker").info("job %s for room %s in process %d", ctx.job.id,
                                           room_name, os.getpid())

    def note(k: str, v: Any) -> None:
        report[k] = v
        write_report(reports, room_name, report)

    def stage(what: str) -> None:
        """Where the job is: a failed job's report says where it stopped."""
        report["stage"] = what
        note("stage_at_s", round(time.monotonic() - started, 3))

    try:
        stage("connecting to the room")
        await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        dtmf_event = asyncio.Event()
        expect = meta.get("expect_dtmf", "")

        @ctx.room.on("sip_dtmf_received")
        def _on_dtmf(d: Any) -> None:
            report["dtmf"] += d.digit
            if expect and report["dtmf"].endswith(expect):
                dtmf_event.set()

        if report["mode"] == "outbound":
            stage("placing the call (CreateSIPParticipant)")
            req_json = dict(meta["request"])
            req_json["room_name"] = room_name
            req = json_format.ParseDict(req_json, CreateSIPParticipantRequest())
            lk = api.LiveKitAPI(meta["api_url"], os.environ["LIVEKIT_API_KEY"],
                                os.environ["LIVEKIT_API_SECRET"])
            try:
                info = await lk.sip.create_sip_participant(req, timeout=60)
                note("created", json_format.MessageToDict(info, preserving_proto_field_name=True))
            finally:
                await lk.aclose()

        stage("waiting for the SIP participant")
        p = await asyncio.wait_for(
            ctx.wait_for_participant(kind=rtc.ParticipantKind.PARTICIPANT_KIND_SIP), 30)
        # publish at once: a rule answering on the first track answers now
        tone = asyncio.ensure_future(play_tone(ctx, float(meta.get("tone_hz", 440)),
                                               float(meta.get("tone_seconds", 6))))
        stage("waiting for sip.callStatus active")
        deadline = time.monotonic() + 30
        while p.attributes.get("sip.callStatus") != "active":
            if time.monotonic() > deadline:
                raise TimeoutError(f"sip.callStatus stayed {p.attributes.get('sip.callStatus')}")
            await asyncio.sleep(0.05)
        report["participant"] = {
            "identity": p.identity,
            "name": p.name,
            "kind": int(p.kind),
            "attributes": dict(p.attributes),
        }
        note("active_after_s", round(time.monotonic() - started, 3))
        stage("playing the tone")
        note("tone_sent_s", await tone)
        if expect:
            stage(f"waiting for DTMF {expect!r}")
            try:
                await asyncio.wait_for(dtmf_event.wait(), float(meta.get("dtmf_timeout", 15)))
            except asyncio.TimeoutError:
                report["errors"].append(f"DTMF {expect!r} not received (got {report['dtmf']!r})")
        # hang up the way agents do: remove the SIP participant
        stage("removing the SIP participant")
        await ctx.api.room.remove_participant(
            api.RoomParticipantIdentity(room=room_name, identity=p.identity))
        note("removed", True)
        stage("done")
    except BaseException as e:  # the report says what went wrong (also a cancelled job)
        report["errors"].append(f"{type(e).__name__}: {e}")
        report["elapsed_s"] = round(time.monotonic() - started, 3)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
    finally:
        report["done"] = True
        write_report(reports, room_name, report)
        ctx.shutdown("job done")


def main() -> int:
    p = argparse.ArgumentParser(prog="agent_worker")
    p.add_argument("--url", required=True)
    p.add_argument("--api-key", required=True)
    p.add_argument("--api-secret", required=True)
    p.add_argument("--agent-name", required=True)
    p.add_argument("--reports", required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")
    os.environ["LIVEKIT_URL"] = args.url
    os.environ["LIVEKIT_API_KEY"] = args.api_key
    os.environ["LIVEKIT_API_SECRET"] = args.api_secret
    # no VAD or end-of-turn model in these jobs: do not load them (~250 MB) into the
    # process that job processes fork from
    os.environ.setdefault("LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE", "0")

    from livekit.agents import AgentServer, JobExecutorType

    server = AgentServer(
        ws_url=args.url,
        api_key=args.api_key,
        api_secret=args.api_secret,
        # a process per job, never a thread: see the module's docstring
        job_executor_type=JobExecutorType.PROCESS,
        # one warm process per job the tests run at the same time (tests/agents.rs has two)
        num_idle_processes=2,
        port=0,
        # livekit-server offers jobs only to workers below its target load (0.7); the
        # default load is the machine's CPU use, high on a shared test machine
        load_fnc=lambda: 0.0,
    )
    server.rtc_session(functools.partial(entrypoint, args.reports), agent_name=args.agent_name)

    @server.on("worker_registered")
    def _registered(worker_id: str, _info: Any) -> None:
        print(json.dumps({"registered": worker_id}), flush=True)

    async def run() -> None:
        import signal

        task = asyncio.ensure_future(server.run(devmode=True))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        done, _ = await asyncio.wait([task, asyncio.ensure_future(stop.wait())],
                                     return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            await asyncio.wait_for(server.aclose(), 10)
        else:
            task.result()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
