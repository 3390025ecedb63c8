#!/usr/bin/env python3
"""roompeer: a real LiveKit room-side peer and audio oracle for Roomline's tests.

It joins LiveKit rooms with the official Python SDK (`livekit` rtc + `livekit-api` for
tokens), publishes test tones and records/analyses what it hears. Rust integration tests
run it as a subprocess (see tests/common/) and parse its report.

Output contract
---------------
* stdout: exactly ONE JSON object, printed when the command ends.
  Success: {"ok": true, "command": ..., ...}, exit status 0.
  Failure: {"ok": false, "command": ..., "error": "..."}, exit status 1
  (argparse usage errors exit with status 2 and print nothing on stdout).
* stderr: logs (level from env ROOMPEER_LOG, default INFO; SDK logs at WARNING unless
  ROOMPEER_LOG=DEBUG).
* Every command has a hard time limit (`--timeout`, default derived from the other
  options) and disconnects cleanly from the room on success, failure or signal.
* SIGTERM/SIGINT: `listen` and `session` stop recording and report what they got
  ("ended_by": "signal", exit 0); `publish-tone` stops the tone and reports likewise. For the other
  commands, or on a second signal, the command is cancelled: "error": "interrupted".

Audio conventions
-----------------
* 48 kHz, mono, 16-bit PCM on the wire to/from the SDK; analysed as float in [-1, 1].
* Every frame count in a report is in units of 10 ms (480 samples at 48 kHz), whatever the
  size of the frames the SDK delivered or the publisher sent (`--frame-ms`): received
  audio is concatenated and re-cut into 10 ms frames. Raw SDK frame counts are reported
  separately as `sdk_frames`.
* A 10 ms frame is "non-silent" when its RMS >= SILENCE_RMS (0.01 full scale, -40 dBFS).
  Default tone amplitude is 0.3 full scale (RMS ~0.21), far above that threshold.

Subcommands
-----------
  tone-pair     two participants in one process: A publishes a tone, B records it.
  publish-tone  one participant publishes a tone (e.g. for the daemon to carry to SIP).
  tone-sequence room tracks that replace one another: participants that play a tone one
                after another (a handover), each joining while the previous one plays
                (overlap), one participant unpublishing and publishing again, or one
                identity joining again on a new connection that takes over from the
                previous one (an agent that restarts).
  listen        one participant records subscribed audio (e.g. what the daemon publishes).
  session       one participant observes the room: the participants it sees (kind,
                attributes and their changes), SIP DTMF received; it can send DTMF with
                publish_dtmf, announce readiness with an attribute, and record every
                audio track of a participant (also across re-publishing).
  analyze-wav   analyse a 16-bit PCM WAV file (lets tests cross-check the oracle with an
                independent generator such as sox); with --tones, in which 20 ms steps
                each of several frequencies is present.
  selftest      run the analysis functions on synthetic signals and assert the results.

Definition of frames_expected (tone-pair)
-----------------------------------------
An rtc.AudioStream yields (silent) frames as soon as the track is subscribed, even before
any packet arrives, so "B got a frame" proves nothing. Instead:
  1. warm-up: A sends the tone until B has received its first NON-SILENT frame, i.e. until
     audio demonstrably went A -> server -> B;
  2. gap: A sends `--gap` seconds (default 0.5) of silence, so that warm-up audio still in
     flight has arrived before the measurement starts;
  3. measurement: at time T (same monotonic clock in both peers, they share a process) A
     sends the tone for exactly `--seconds`, then `--tail` seconds of silence so that the
     last tone frames drain through the jitter buffer before B stops recording.
  frames_expected = number of 10 ms tone frames A sent in step 3 (= seconds * 100); all of
                    them were sent after B's first non-silent frame arrived.
  frames_received = number of non-silent 10 ms frames in the audio B received at or after T
                    (warm-up audio would need > gap latency to leak in; the report gives
                    first_tone_latency_ms so that can be checked).
dominant_hz and rms are computed over those same non-silent frames. A lossless path gives
frames_received ~= frames_expected (+-2 for the codec's edge ringing). Lost packets are
concealed by the decoder (PLC), which keeps some of them "non-silent", so a shortfall is a
lower bound on the damage, not an exact loss count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import signal
import sys
import time
import warnings
import wave
from typing import Any, Optional

import numpy as np

SAMPLE_RATE = 48000
NUM_CHANNELS = 1
FRAME_10MS = SAMPLE_RATE // 100  # 480 samples
SILENCE_RMS = 0.01  # -40 dBFS
DEFAULT_AMPLITUDE = 0.3

log = logging.getLogger("roompeer")


# --------------------------------------------------------------------------------------
# Analysis (plain functions, no SDK needed; exercised by `selftest`)
# --------------------------------------------------------------------------------------


def pcm16_to_float(data: Any, num_channels: int = 1) -> np.ndarray:
    """Interleaved little-endian int16 PCM -> mono float64 in [-1, 1] (channels averaged)."""
    x = np.frombuffer(bytes(data), dtype="<i2").astype(np.float64) / 32768.0
    if num_channels > 1:
        x = x[: len(x) - len(x) % num_channels].reshape(-1, num_channels).mean(axis=1)
    return x


def float_to_pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1.0, 32767.0 / 32768.0) * 32768.0).astype("<i2").tobytes()


def rms(x: np.ndarray) -> float:
    """Root mean square of a signal (0.0 for an empty one)."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return 0.0
    return float(np.sqrt(np.mean(np.square(x))))


def frame_rms(x: np.ndarray, frame_len: int = FRAME_10MS) -> np.ndarray:
    """RMS of each complete frame of `frame_len` samples (a trailing partial frame is dropped)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x) // frame_len
    if n == 0:
        return np.zeros(0)
    return np.sqrt(np.mean(np.square(x[: n * frame_len].reshape(n, frame_len)), axis=1))


def nonsilent_mask(
    x: np.ndarray, frame_len: int = FRAME_10MS, threshold: float = SILENCE_RMS
) -> np.ndarray:
    """Boolean array, one entry per complete frame: True where the frame RMS >= threshold."""
    return frame_rms(x, frame_len) >= threshold


def dominant_frequency(
    x: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    min_hz: float = 20.0,
    max_hz: Optional[float] = None,
) -> Optional[float]:
    """Frequency (Hz) of the strongest spectral peak, or None for silence/too short input.

    DC is removed, a Hann window applied, the FFT zero-padded to at least 2x the signal
    length (power of two, >= 16384 points), and the peak refined by parabolic
    interpolation of the log magnitude (near-exact for a Hann-windowed sinusoid). Accuracy
    is far better than 0.1% for >= 100 ms of a clean tone.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size < 64:
        return None
    x = x - x.mean()
    if rms(x) < 1e-4:  # -80 dBFS: nothing there
        return None
    nfft = max(16384, 1 << int(math.ceil(math.log2(2 * x.size))))
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size), nfft))
    lo = max(1, int(math.floor(min_hz * nfft / sample_rate)))
    hi_hz = sample_rate / 2 if max_hz is None else min(max_hz, sample_rate / 2)
    hi = min(len(spec) - 1, int(math.ceil(hi_hz * nfft / sample_rate)))
    if hi <= lo:
        return None
    k = lo + int(np.argmax(spec[lo:hi]))
    offset = 0.0
    if 0 < k < len(spec) - 1:
        a, b, c = np.log(spec[k - 1 : k + 2] + 1e-300)
        denom = a - 2.0 * b + c
        if denom < 0:
            offset = float(np.clip(0.5 * (a - c) / denom, -0.5, 0.5))
    return float((k + offset) * sample_rate / nfft)


def summarize(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict[str, Any]:
    """Report on a recording: non-silent 10 ms frames, and the dominant frequency and RMS
    of the non-silent portion only (silent frames are left out of the analysis)."""
    x = np.asarray(x, dtype=np.float64)
    frame_len = sample_rate // 100
    mask = nonsilent_mask(x, frame_len)
    n = len(mask)
    idx = np.flatnonzero(mask)
    if idx.size:
        voiced = x[: n * frame_len].reshape(n, frame_len)[mask].reshape(-1)
    else:
        voiced = np.zeros(0)
    return {
        "sample_rate": sample_rate,
        "samples": int(x.size),
        "frames_10ms": int(n),
        "frames_nonsilent": int(idx.size),
        "nonsilent_seconds": round(idx.size * 0.01, 3),
        "first_nonsilent_s": round(float(idx[0]) * 0.01, 3) if idx.size else None,
        "last_nonsilent_s": round(float(idx[-1] + 1) * 0.01, 3) if idx.size else None,
        "dominant_hz": dominant_frequency(voiced, sample_rate) if idx.size else None,
        "rms": round(rms(voiced), 6),
        "peak": round(float(np.max(np.abs(x))), 6) if x.size else 0.0,
    }


def read_wav(path: str) -> tuple[np.ndarray, int]:
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (got {8 * w.getsampwidth()}-bit)")
        data = w.readframes(w.getnframes())
        return pcm16_to_float(data, w.getnchannels()), w.getframerate()


def write_wav(path: str, x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(float_to_pcm16(x))


# --------------------------------------------------------------------------------------
# SDK helpers (imported lazily so that `selftest`/`analyze-wav` work without the SDK)
# --------------------------------------------------------------------------------------


class PeerError(Exception):
    """An expected failure, reported as {"ok": false, "error": ...}."""


def make_token(args: argparse.Namespace, identity: str) -> str:
    from livekit import api

    return (
        api.AccessToken(args.api_key, args.api_secret)
        .with_identity(identity)
        .with_name(identity)
        .with_grants(
            api.VideoGrants(
                room_join=True, room=args.room, can_publish=True, can_subscribe=True,
                can_update_own_metadata=True,
            )
        )
        .to_jwt()
    )


async def connect(args: argparse.Namespace, room: Any, identity: str) -> None:
    from livekit import rtc

    opts = rtc.RoomOptions(auto_subscribe=True, connect_timeout=args.connect_timeout)
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(
            room.connect(args.url, make_token(args, identity), opts),
            timeout=args.connect_timeout * 3 + 5,
        )
    except asyncio.TimeoutError:
        raise PeerError(f"{identity}: timed out connecting to {args.url}") from None
    except Exception as e:  # rtc.ConnectError and friends
        raise PeerError(f"{identity}: cannot connect to {args.url}: {e}") from e
    log.info("%s connected to room %s in %.2fs", identity, args.room, time.monotonic() - t0)


async def disconnect(room: Any, identity: str) -> None:
    try:
        if room.isconnected():
            await asyncio.wait_for(room.disconnect(), timeout=5)
            log.info("%s disconnected", identity)
    except Exception as e:  # never mask the real result with a teardown problem
        log.warning("%s: disconnect failed: %r", identity, e)


class Recorder:
    """Records one subscribed audio track through rtc.AudioStream."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.chunks: list[np.ndarray] = []
        self.arrivals: list[float] = []  # time.monotonic() at which each chunk arrived
        self.sdk_frames = 0
        self.sdk_frame_sizes: set[int] = set()
        self.started_at: Optional[float] = None
        self.first_frame_at: Optional[float] = None
        self.first_nonsilent_at: Optional[float] = None
        self.first_frame = asyncio.Event()
        self.first_nonsilent = asyncio.Event()
        self.ended = asyncio.Event()
        self.track_sid: Optional[str] = None
        self.participant: Optional[str] = None
        self._stream: Any = None
        self._task: Optional[asyncio.Task[None]] = None
        self._stopped = False

    @property
    def active(self) -> bool:
        return self._stream is not None

    def start(self, track: Any, participant: str, track_sid: str) -> None:
        from livekit import rtc

        self.track_sid, self.participant = track_sid, participant
        self.started_at = time.monotonic()
        self._stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=NUM_CHANNELS)
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("%s: recording track %s of %s", self.label, track_sid, participant)

    async def _run(self) -> None:
        try:
            async for ev in self._stream:
                f = ev.frame
                x = pcm16_to_float(f.data, f.num_channels)
                now = time.monotonic()
                self.sdk_frames += 1
                self.sdk_frame_sizes.add(int(f.samples_per_channel))
                self.chunks.append(x)
                self.arrivals.append(now)
                if self.first_frame_at is None:
                    self.first_frame_at = now
                    self.first_frame.set()
                if self.first_nonsilent_at is None and rms(x) >= SILENCE_RMS:
                    self.first_nonsilent_at = now
                    self.first_nonsilent.set()
        finally:
            self.ended.set()

    async def stop(self) -> None:
        stream, task = self._stream, self._task
        if stream is None or self._stopped:
            return
        self._stopped = True
        try:
            await asyncio.wait_for(stream.aclose(), timeout=5)
        except Exception as e:
            log.warning("%s: closing audio stream: %r", self.label, e)
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except BaseException:
                pass

    def samples(self, since: Optional[float] = None) -> np.ndarray:
        """All recorded audio, or only the chunks that arrived at or after `since`."""
        chunks = [
            c for c, t in zip(self.chunks, self.arrivals) if since is None or t >= since
        ]
        return np.concatenate(chunks) if chunks else np.zeros(0)

    def report(self, since: Optional[float] = None) -> dict[str, Any]:
        out = summarize(self.samples(since))
        out["sdk_frames"] = self.sdk_frames
        out["sdk_frame_samples"] = sorted(self.sdk_frame_sizes)
        out["track_sid"] = self.track_sid
        out["from_identity"] = self.participant
        return out


class TonePlayer:
    """Feeds an rtc.AudioSource in real time (deadline-paced, phase-continuous)."""

    def __init__(self, source: Any, freq: float, amplitude: float, frame_ms: int) -> None:
        self.source = source
        self.freq = freq
        self.amplitude = amplitude
        self.frame_len = SAMPLE_RATE * frame_ms // 1000
        self.frame_dur = frame_ms / 1000.0
        self.n = 0  # samples sent so far (phase reference)
        self.frames_sent = 0
        self.tone_frames_sent = 0
        self._next: Optional[float] = None

    async def _send(self, tone: bool) -> None:
        from livekit import rtc

        now = time.monotonic()
        if self._next is None:
            self._next = now
        elif self._next > now:
            await asyncio.sleep(self._next - now)
        elif now - self._next > 0.2:
            # the event loop stalled; don't burst-send more than 200 ms to catch up
            log.warning("tone player %.0f ms behind schedule; resyncing", (now - self._next) * 1e3)
            self._next = now
        self._next += self.frame_dur
        frame = rtc.AudioFrame.create(SAMPLE_RATE, NUM_CHANNELS, self.frame_len)
        if tone:
            t = (self.n + np.arange(self.frame_len)) / SAMPLE_RATE
            x = self.amplitude * np.sin(2.0 * np.pi * self.freq * t)
            np.frombuffer(frame.data.cast("B"), dtype="<i2")[:] = np.frombuffer(
                float_to_pcm16(x), dtype="<i2"
            )
            self.tone_frames_sent += 1
        # else: AudioFrame.create() is zero-filled
        self.n += self.frame_len
        await self.source.capture_frame(frame)
        self.frames_sent += 1

    async def silence(self, seconds: float) -> None:
        for _ in range(int(round(seconds / self.frame_dur))):
            await self._send(False)

    async def until(self, event: asyncio.Event, timeout: float, tone: bool, what: str) -> float:
        """Send tone (or silence) until `event` is set; returns the time it took.
        Raises PeerError("<what> within <timeout>s") on timeout."""
        t0 = time.monotonic()
        while not event.is_set():
            if GRACEFUL_STOP.is_set():
                raise PeerError(f"interrupted: {what} before the signal")
            if time.monotonic() - t0 > timeout:
                raise PeerError(f"{what} within {timeout:.0f}s")
            await self._send(tone)
        return time.monotonic() - t0

    async def tone(self, seconds: float, stop: Optional[asyncio.Event] = None) -> bool:
        """Send the tone for `seconds`; returns False if `stop` cut it short."""
        for _ in range(int(round(seconds / self.frame_dur))):
            if stop is not None and stop.is_set():
                return False
            await self._send(True)
        return True


async def publish_audio(room: Any, name: str = "roompeer-tone") -> tuple[Any, Any]:
    from livekit import rtc

    source = rtc.AudioSource(SAMPLE_RATE, NUM_CHANNELS, queue_size_ms=200)
    track = rtc.LocalAudioTrack.create_audio_track(name, source)
    opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE, dtx=False)
    publication = await asyncio.wait_for(room.local_participant.publish_track(track, opts), 15)
    log.info("%s published audio track %s", room.local_participant.identity, publication.sid)
    return source, publication


def check_tone_args(args: argparse.Namespace) -> None:
    if not (0 < args.freq < SAMPLE_RATE / 2):
        raise PeerError(f"--freq must be in (0, {SAMPLE_RATE // 2}) Hz")
    if not (0 < args.amplitude <= 1):
        raise PeerError("--amplitude must be in (0, 1]")
    if args.frame_ms not in (10, 20):
        raise PeerError("--frame-ms must be 10 or 20")


# --------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------


async def cmd_tone_pair(args: argparse.Namespace) -> dict[str, Any]:
    from livekit import rtc

    check_tone_args(args)
    pub_id, sub_id = f"{args.identity_prefix}-pub", f"{args.identity_prefix}-sub"
    pub_room, sub_room = rtc.Room(), rtc.Room()
    rec = Recorder(sub_id)

    @sub_room.on("track_subscribed")
    def _on_sub(track: Any, publication: Any, participant: Any) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and participant.identity == pub_id and not rec.active:
            rec.start(track, participant.identity, publication.sid)

    try:
        await connect(args, sub_room, sub_id)
        await connect(args, pub_room, pub_id)
        source, publication = await publish_audio(pub_room)
        player = TonePlayer(source, args.freq, args.amplitude, args.frame_ms)
        warmup = await player.until(
            rec.first_nonsilent, args.wait_timeout, tone=True,
            what=f"{sub_id} heard no audio from {pub_id}",
        )
        log.info("media path up after %.2fs of warm-up tone", warmup)
        await player.silence(args.gap)
        warmup_frames = player.tone_frames_sent
        log.info("sending %.1fs measured tone", args.seconds)
        tone_start = time.monotonic()
        await player.tone(args.seconds)
        tone_end = time.monotonic()
        await player.silence(args.tail)
        await rec.stop()
        r = rec.report(since=tone_start)
        latency = None
        for c, t in zip(rec.chunks, rec.arrivals):
            if t >= tone_start and rms(c) >= SILENCE_RMS:
                latency = (t - tone_start) * 1e3
                break
        return {
            "room": args.room,
            "freq": args.freq,
            "dominant_hz": r["dominant_hz"],
            "frames_received": r["frames_nonsilent"],
            "frames_expected": (player.tone_frames_sent - warmup_frames) * args.frame_ms // 10,
            "rms": r["rms"],
            "first_tone_latency_ms": round(latency, 1) if latency is not None else None,
            "warmup_s": round(warmup, 3),
            "gap_s": args.gap,
            "tone_send_seconds": round(tone_end - tone_start, 3),
            "publisher_frames_sent": player.frames_sent,
            "publisher_frame_ms": args.frame_ms,
            "publisher_track_sid": publication.sid,
            "receiver": r,
        }
    finally:
        await rec.stop()
        await disconnect(pub_room, pub_id)
        await disconnect(sub_room, sub_id)


async def cmd_publish_tone(args: argparse.Namespace) -> dict[str, Any]:
    from livekit import rtc

    check_tone_args(args)
    room = rtc.Room()
    subscribed = asyncio.Event()
    room.on("local_track_subscribed", lambda track: subscribed.set())
    try:
        await connect(args, room, args.identity)
        t0 = time.monotonic()
        source, publication = await publish_audio(room)
        player = TonePlayer(source, args.freq, args.amplitude, args.frame_ms)
        subscribed_after = None
        if args.wait_subscriber:
            # keep RTP flowing (silence) while waiting for someone to subscribe
            await player.until(subscribed, args.wait_timeout, tone=False,
                               what="nobody subscribed to the track")
            subscribed_after = time.monotonic() - t0
            log.info("track subscribed after %.2fs", subscribed_after)
        await player.silence(args.lead_silence)
        tone_start_unix = time.time()
        tone_start = time.monotonic()
        completed = await player.tone(args.seconds, stop=GRACEFUL_STOP)
        tone_seconds = time.monotonic() - tone_start
        if completed:
            await player.silence(args.tail)
        return {
            "room": args.room,
            "identity": args.identity,
            "track_sid": publication.sid,
            "freq": args.freq,
            "amplitude": args.amplitude,
            "subscribed_after_s": round(subscribed_after, 3) if subscribed_after is not None else None,
            "tone_start_unix": round(tone_start_unix, 3),
            "tone_send_seconds": round(tone_seconds, 3),
            "tone_frames_10ms": player.tone_frames_sent * args.frame_ms // 10,
            "frames_sent": player.frames_sent,
            "frame_ms": args.frame_ms,
            "ended_by": "duration" if completed else "signal",
        }
    finally:
        await disconnect(room, args.identity)


async def cmd_listen(args: argparse.Namespace) -> dict[str, Any]:
    from livekit import rtc

    room = rtc.Room()
    rec = Recorder(args.identity)
    seen: list[str] = []

    def wanted(participant: Any) -> bool:
        return args.from_identity is None or participant.identity == args.from_identity

    def maybe_record(track: Any, publication: Any, participant: Any) -> None:
        if track is None or track.kind != rtc.TrackKind.KIND_AUDIO or rec.active:
            return
        if wanted(participant):
            rec.start(track, participant.identity, publication.sid)

    @room.on("participant_connected")
    def _on_join(participant: Any) -> None:
        seen.append(participant.identity)

    @room.on("track_subscribed")
    def _on_sub(track: Any, publication: Any, participant: Any) -> None:
        maybe_record(track, publication, participant)

    @room.on("track_unsubscribed")
    def _on_unsub(track: Any, publication: Any, participant: Any) -> None:
        if publication.sid == rec.track_sid:
            log.info("track %s unsubscribed", publication.sid)
            rec.ended.set()

    try:
        t0 = time.monotonic()
        await connect(args, room, args.identity)
        for p in room.remote_participants.values():  # already there before we joined
            seen.append(p.identity)
            for pub in p.track_publications.values():
                maybe_record(pub.track, pub, p)
        while not rec.active:
            if GRACEFUL_STOP.is_set():
                raise PeerError("interrupted before any audio track was subscribed")
            if time.monotonic() - t0 > args.wait_timeout:
                who = f"from {args.from_identity!r} " if args.from_identity else ""
                raise PeerError(
                    f"no audio track {who}subscribed within {args.wait_timeout:.0f}s "
                    f"(participants seen: {sorted(set(seen))})"
                )
            await asyncio.sleep(0.02)
        subscribed_after = time.monotonic() - t0
        ended = asyncio.ensure_future(rec.ended.wait())
        stopped = asyncio.ensure_future(GRACEFUL_STOP.wait())
        try:
            await asyncio.wait({ended, stopped}, timeout=args.seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            ended.cancel()
            stopped.cancel()
        ended_by = (
            "track_ended" if rec.ended.is_set()
            else "signal" if GRACEFUL_STOP.is_set()
            else "duration"
        )
        recorded = time.monotonic() - (rec.started_at or t0)
        await rec.stop()
        samples = rec.samples()
        if args.wav:
            write_wav(args.wav, samples)
        out = rec.report()
        out.update(
            {
                "room": args.room,
                "identity": args.identity,
                "subscribed_after_s": round(subscribed_after, 3),
                "recorded_seconds": round(recorded, 3),
                "ended_by": ended_by,
                "participants_seen": sorted(set(seen)),
                "wav": args.wav,
            }
        )
        return out
    finally:
        await rec.stop()
        await disconnect(room, args.identity)


KIND_PREFIX = "PARTICIPANT_KIND_"


def kind_name(kind: int) -> str:
    """`SIP`, `STANDARD`, `AGENT`, ... for a ParticipantKind value (`KIND_<n>` if unknown)."""
    from livekit.rtc._proto import participant_pb2

    try:
        name = participant_pb2.ParticipantKind.Name(kind)
    except ValueError:
        return f"KIND_{kind}"
    return name[len(KIND_PREFIX):] if name.startswith(KIND_PREFIX) else name


# DTMF digit -> RFC 4733 event code (what LiveKit's SipDTMF carries)
DTMF_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11, "A": 12, "B": 13, "C": 14, "D": 15}


def parse_until_attribute(spec: str) -> tuple[str, str, str]:
    """`IDENTITY:KEY=VALUE` -> (identity, key, value)."""
    who, sep, kv = spec.partition(":")
    key, sep2, value = kv.partition("=")
    if not (sep and sep2 and who and key):
        raise PeerError(f"--until-attribute {spec!r} is not IDENTITY:KEY=VALUE")
    return who, key, value


async def cmd_session(args: argparse.Namespace) -> dict[str, Any]:
    """Observe the room as one participant (see the module docstring)."""
    from livekit import rtc

    digits = [d.upper() for d in (args.send_dtmf or "")]
    bad = [d for d in digits if d not in DTMF_CODES]
    if bad:
        raise PeerError(f"--send-dtmf: invalid digits {bad!r} (0-9, *, #, A-D)")
    until_attrs = [parse_until_attribute(s) for s in args.until_attribute]

    room = rtc.Room()
    t0 = time.monotonic()
    changed = asyncio.Event()  # set on every observation that may satisfy a condition
    participants: dict[str, dict[str, Any]] = {}
    left: list[str] = []
    attribute_changes: list[dict[str, Any]] = []
    dtmf_received: list[dict[str, Any]] = []
    dtmf_sent: list[dict[str, Any]] = []
    data_received: list[dict[str, Any]] = []
    recorders: dict[str, Recorder] = {}

    def since() -> float:
        return round(time.monotonic() - t0, 3)

    def observe(p: Any) -> None:
        entry = participants.setdefault(p.identity, {"first_seen_s": since()})
        entry.update(
            {
                "sid": p.sid,
                "name": p.name,
                "kind": kind_name(p.kind),
                "kind_value": int(p.kind),
                "attributes": dict(p.attributes),
                "metadata": p.metadata,
            }
        )
        changed.set()

    def maybe_record(track: Any, publication: Any, participant: Any) -> None:
        if not args.record or track is None or track.kind != rtc.TrackKind.KIND_AUDIO:
            return
        if args.from_identity is not None and participant.identity != args.from_identity:
            return
        if publication.sid in recorders:
            return
        rec = Recorder(f"{args.identity}/{publication.sid}")
        recorders[publication.sid] = rec
        rec.start(track, participant.identity, publication.sid)

    @room.on("participant_connected")
    def _on_join(p: Any) -> None:
        observe(p)

    @room.on("participant_disconnected")
    def _on_leave(p: Any) -> None:
        left.append(p.identity)
        changed.set()

    @room.on("participant_attributes_changed")
    def _on_attrs(changed_attrs: dict[str, str], p: Any) -> None:
        attribute_changes.append(
            {"identity": p.identity, "changed": dict(changed_attrs), "t": since()}
        )
        observe(p)

    @room.on("sip_dtmf_received")
    def _on_dtmf(d: Any) -> None:
        who = d.participant.identity if d.participant is not None else None
        log.info("DTMF %r (code %d) from %s", d.digit, d.code, who)
        dtmf_received.append({"code": d.code, "digit": d.digit, "from_identity": who, "t": since()})
        changed.set()

    @room.on("data_received")
    def _on_data(packet: Any) -> None:
        who = packet.participant.identity if packet.participant is not None else None
        data_received.append(
            {"from_identity": who, "topic": packet.topic, "size": len(packet.data), "t": since()}
        )

    @room.on("track_subscribed")
    def _on_sub(track: Any, publication: Any, participant: Any) -> None:
        maybe_record(track, publication, participant)

    def conditions_met() -> bool:
        if args.until_dtmf is not None and len(dtmf_received) < args.until_dtmf:
            return False
        for who, key, value in until_attrs:
            if participants.get(who, {}).get("attributes", {}).get(key) != value:
                return False
        if args.until_left is not None and args.until_left not in left:
            return False
        return True

    has_conditions = args.until_dtmf is not None or bool(until_attrs) or args.until_left is not None

    async def wait_changed(deadline: float) -> bool:
        """Waits for the next observation or a signal; False once `deadline` has passed."""
        left_s = deadline - time.monotonic()
        if left_s <= 0 or GRACEFUL_STOP.is_set():
            return False
        changed.clear()
        waiters = {
            asyncio.ensure_future(changed.wait()),
            asyncio.ensure_future(GRACEFUL_STOP.wait()),
        }
        try:
            await asyncio.wait(waiters, timeout=min(left_s, 0.25), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return True

    try:
        await connect(args, room, args.identity)
        for p in room.remote_participants.values():  # already there before we joined
            observe(p)
            for pub in p.track_publications.values():
                maybe_record(pub.track, pub, p)
        if args.wait_for_identity:
            deadline = time.monotonic() + args.wait_timeout
            while args.wait_for_identity not in participants:
                if not await wait_changed(deadline):
                    if GRACEFUL_STOP.is_set():
                        raise PeerError("interrupted before the awaited participant joined")
                    raise PeerError(
                        f"{args.wait_for_identity!r} did not join within {args.wait_timeout:.0f}s "
                        f"(participants seen: {sorted(participants)})"
                    )
        if args.announce_ready:
            await asyncio.wait_for(
                room.local_participant.set_attributes({"roompeer.ready": "1"}), 10
            )
            log.info("%s announced readiness", args.identity)
        for i, digit in enumerate(digits):
            if i:
                await asyncio.sleep(args.dtmf_interval)
            code = DTMF_CODES[digit]
            await asyncio.wait_for(room.local_participant.publish_dtmf(code=code, digit=digit), 10)
            dtmf_sent.append({"code": code, "digit": digit, "t": since()})
            log.info("sent DTMF %r (code %d)", digit, code)
        deadline = t0 + args.seconds
        ended_by = "duration"
        while True:
            if has_conditions and conditions_met():
                ended_by = "conditions"
                break
            if GRACEFUL_STOP.is_set():
                ended_by = "signal"
                break
            if not await wait_changed(deadline):
                break
        tracks = []
        for rec in recorders.values():
            await rec.stop()
            tracks.append(rec.report())
        return {
            "room": args.room,
            "identity": args.identity,
            "participants": participants,
            "participants_left": left,
            "attribute_changes": attribute_changes,
            "dtmf_received": dtmf_received,
            "dtmf_sent": dtmf_sent,
            "data_received": data_received,
            "tracks": tracks,
            "conditions_met": conditions_met() if has_conditions else None,
            "ended_by": ended_by,
            "elapsed_s": since(),
        }
    finally:
        for rec in recorders.values():
            await rec.stop()
        await disconnect(room, args.identity)


def parse_steps(specs: list[str]) -> list[tuple[str, float, float]]:
    """`IDENTITY:FREQ:SECONDS` -> (identity, freq, seconds), one per --step."""
    steps = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 3:
            raise PeerError(f"--step {spec!r} is not IDENTITY:FREQ:SECONDS")
        try:
            steps.append((parts[0], float(parts[1]), float(parts[2])))
        except ValueError:
            raise PeerError(f"--step {spec!r}: FREQ and SECONDS must be numbers") from None
    if not steps:
        raise PeerError("at least one --step is needed")
    return steps


async def cmd_tone_sequence(args: argparse.Namespace) -> dict[str, Any]:
    """Room tracks replacing one another, as an agent handover or a re-published track
    does (see the subcommand help for the three modes). Each step waits until someone
    (the listener under test) has subscribed to its track before its tone starts, so the
    whole tone is expected on the other side; the report gives each step's track sid and
    when its tone was sent (Unix time)."""
    from livekit import rtc

    steps = parse_steps(args.step)
    for _, freq, _ in steps:
        if not (0 < freq < SAMPLE_RATE / 2):
            raise PeerError(f"--step frequency {freq} is out of range")
    report: list[dict[str, Any]] = []
    rooms: dict[str, Any] = {}

    async def join(identity: str, key: Optional[str] = None) -> Any:
        room = rtc.Room()
        await connect(args, room, identity)
        rooms[key or identity] = room
        if args.wait_for_identity:
            t0 = time.monotonic()
            while not any(
                p.identity == args.wait_for_identity for p in room.remote_participants.values()
            ):
                if time.monotonic() - t0 > args.wait_timeout:
                    raise PeerError(f"{args.wait_for_identity!r} did not join within {args.wait_timeout:.0f}s")
                await asyncio.sleep(0.02)
        return room

    async def play(room: Any, identity: str, freq: float, seconds: float,
                   started: Optional[asyncio.Event] = None) -> Any:
        """Publishes a track, waits for a subscriber, plays the tone, unpublishes."""
        subscribed = asyncio.Event()
        source, publication = await publish_audio(room, name=f"tone-{freq:.0f}")

        def on_subscribed(track: Any) -> None:
            if getattr(track, "sid", publication.sid) == publication.sid:
                subscribed.set()

        room.on("local_track_subscribed", on_subscribed)
        player = TonePlayer(source, freq, args.amplitude, 20)
        await player.until(subscribed, args.wait_timeout, tone=False,
                           what=f"nobody subscribed to {identity}'s {freq:.0f} Hz track")
        await player.silence(args.lead_silence)
        entry = {"identity": identity, "freq": freq, "track_sid": publication.sid,
                 "tone_start_unix": round(time.time(), 3)}
        if started is not None:
            started.set()
        await player.tone(seconds)
        entry["tone_end_unix"] = round(time.time(), 3)
        entry["tone_frames_20ms"] = player.tone_frames_sent
        await player.silence(args.tail)
        report.append(entry)
        return publication

    try:
        if args.mode == "sequential":
            for identity, freq, seconds in steps:
                room = await join(identity)
                await play(room, identity, freq, seconds)
                await disconnect(rooms.pop(identity), identity)
        elif args.mode == "restart":
            # one identity, a new connection per step that joins while the previous one
            # is still there and never leaves (an agent whose process died and came back
            # at once): the server closes the old session as a duplicate identity
            identity = steps[0][0]
            for i, (_, freq, seconds) in enumerate(steps):
                room = await join(identity, key=f"{identity}#{i}")
                await play(room, identity, freq, seconds)
        elif args.mode == "republish":
            identity = steps[0][0]
            room = await join(identity)
            for _, freq, seconds in steps:
                publication = await play(room, identity, freq, seconds)
                await asyncio.wait_for(room.local_participant.unpublish_track(publication.sid), 10)
                log.info("%s unpublished %s", identity, publication.sid)
        else:  # overlap: each step starts once the previous one's tone is half way
            tasks = []
            for identity, freq, seconds in steps:
                room = await join(identity)
                started = asyncio.Event()
                tasks.append(asyncio.ensure_future(play(room, identity, freq, seconds, started)))
                await asyncio.wait_for(started.wait(), args.wait_timeout)
                await asyncio.sleep(seconds / 2)
            await asyncio.gather(*tasks)
        report.sort(key=lambda e: e["tone_start_unix"])
        return {"room": args.room, "mode": args.mode, "steps": report}
    finally:
        for identity, room in list(rooms.items()):
            await disconnect(room, identity)


def onset_levels(x: np.ndarray, sr: int) -> dict[str, Any]:
    """Level of a recording from its first non-silent 10 ms frame: the first second
    against the steady part (from 2 s after the onset to 1 s before the end of the
    non-silent audio). The steady level is the median RMS of its 100 ms chunks (a
    dropout or a glitch does not move it); the first second is given as its RMS and as
    its loudest 100 ms chunk, in dB against the steady level. Also the peak of each
    100 ms of the first two seconds."""
    frame = sr // 100
    chunk = sr // 10
    mask = nonsilent_mask(x, frame)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return {"onset_s": None}
    start = int(idx[0]) * frame
    end = (int(idx[-1]) + 1) * frame
    first = x[start: start + sr]
    steady = x[start + 2 * sr: end - sr]
    if steady.size < sr // 2:
        return {"onset_s": round(start / sr, 3), "error": "too short for a steady level"}

    def chunks(y: np.ndarray) -> np.ndarray:
        n = len(y) // chunk
        return y[: n * chunk].reshape(n, chunk)

    steady_level = float(np.median(np.sqrt(np.mean(np.square(chunks(steady)), axis=1))))
    first_chunks = np.sqrt(np.mean(np.square(chunks(first)), axis=1))
    db = lambda a, b: round(20.0 * math.log10(max(a, 1e-9) / max(b, 1e-9)), 2)  # noqa: E731
    peaks = [round(float(np.max(np.abs(x[start + k * chunk: start + (k + 1) * chunk]))), 3)
             for k in range(20) if start + (k + 1) * chunk <= len(x)]
    return {
        "onset_s": round(start / sr, 3),
        "steady_rms": round(steady_level, 4),
        "steady_peak": round(float(np.median(np.max(np.abs(chunks(steady)), axis=1))), 4),
        "first_second_rms": round(rms(first), 4),
        "first_second_rms_db": db(rms(first), steady_level),
        "first_second_loudest_100ms_db": db(float(np.max(first_chunks)), steady_level),
        # the second highest 100 ms peak of the first second against the steady peaks:
        # a loud start lasts several hundred ms, a single glitch does not count
        "first_second_peak_db": db(float(np.sort(np.max(np.abs(chunks(first)), axis=1))[-2]),
                                   float(np.median(np.max(np.abs(chunks(steady)), axis=1)))),
        "first_second_peak": round(float(np.max(np.abs(first))), 4),
        "peaks_100ms": peaks,
    }


def tone_presence(x: np.ndarray, sr: int, freqs: list[float], threshold: float) -> dict[str, Any]:
    """For each frequency, the 20 ms steps (40 ms Hann windows) in which a tone of that
    frequency has an amplitude of at least `threshold` (full scale = 1), and the steps in
    which all of them are present at once."""
    hop, win = sr // 50, sr // 25
    n = max(0, (len(x) - win) // hop + 1)
    w = np.hanning(win)
    t = np.arange(win) / sr
    present = np.zeros((len(freqs), n), dtype=bool)
    for i, f in enumerate(freqs):
        c = w * np.exp(-2j * np.pi * f * t)
        for k in range(n):
            seg = x[k * hop: k * hop + win]
            amp = 2.0 * abs(np.dot(seg, c)) / w.sum()
            present[i, k] = amp >= threshold
    out: dict[str, Any] = {"steps_20ms": int(n), "tones": {}}
    for i, f in enumerate(freqs):
        idx = np.flatnonzero(present[i])
        out["tones"][f"{f:g}"] = {
            "present_20ms": int(idx.size),
            "first_s": round(float(idx[0]) * 0.02, 3) if idx.size else None,
            "last_s": round(float(idx[-1] + 1) * 0.02, 3) if idx.size else None,
        }
    out["all_present_20ms"] = int(np.all(present, axis=0).sum()) if n else 0
    return out


async def cmd_analyze_wav(args: argparse.Namespace) -> dict[str, Any]:
    try:
        x, sr = read_wav(args.path)
    except (OSError, wave.Error, ValueError) as e:
        raise PeerError(f"cannot read {args.path}: {e}") from e
    out = summarize(x, sr)
    out["path"] = args.path
    if args.tones:
        freqs = [float(f) for f in args.tones.split(",")]
        out["presence"] = tone_presence(x, sr, freqs, args.presence_threshold)
    if args.levels:
        out["levels"] = onset_levels(x, sr)
    return out


async def cmd_selftest(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(12345)
    checks: list[dict[str, Any]] = []

    def tone(freq: float, seconds: float, amp: float = DEFAULT_AMPLITUDE) -> np.ndarray:
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        return amp * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi))

    def check(name: str, ok: bool, **detail: Any) -> None:
        checks.append({"name": name, "ok": bool(ok), **detail})

    for f in (440.0, 1000.0, 3000.0):
        x = tone(f, 1.0) + rng.normal(0, 0.01, SAMPLE_RATE)  # ~27 dB SNR
        got = dominant_frequency(x)
        check(f"tone_{f:.0f}", got is not None and abs(got - f) / f < 0.002, expected=f, got=got)
        # quantised to 16 bits like real audio
        got16 = summarize(pcm16_to_float(float_to_pcm16(tone(f, 0.5))))["dominant_hz"]
        check(f"tone_{f:.0f}_pcm16", got16 is not None and abs(got16 - f) / f < 0.002, expected=f, got=got16)
    # a short (100 ms) tone at an off-bin frequency still resolves within 2%
    got = dominant_frequency(tone(1234.5, 0.1))
    check("short_tone", got is not None and abs(got - 1234.5) / 1234.5 < 0.02, expected=1234.5, got=got)
    # the stronger of two tones wins
    got = dominant_frequency(tone(1000, 1.0, 0.3) + tone(440, 1.0, 0.1))
    check("two_tones", got is not None and abs(got - 1000) / 1000 < 0.002, expected=1000.0, got=got)
    # 440 Hz must not be mistaken for 1000 Hz (what the Rust smoke test asserts against)
    got = dominant_frequency(tone(440, 1.0))
    check("440_is_not_1000", got is not None and abs(got - 1000) / 1000 > 0.02, got=got)
    # silence and near-silence yield no frequency and no non-silent frames
    s = summarize(np.zeros(SAMPLE_RATE))
    check("silence", s["dominant_hz"] is None and s["frames_nonsilent"] == 0, got=s)
    s = summarize(rng.normal(0, 0.001, SAMPLE_RATE))  # -60 dBFS noise
    check("quiet_noise_is_silent", s["frames_nonsilent"] == 0, got=s["frames_nonsilent"])
    # frame counting across a gap: 1 s tone, 0.5 s silence, 0.5 s tone -> 150 non-silent frames
    x = np.concatenate([tone(1000, 1.0), np.zeros(SAMPLE_RATE // 2), tone(1000, 0.5)])
    s = summarize(x)
    check(
        "gap_counting",
        s["frames_nonsilent"] == 150
        and s["first_nonsilent_s"] == 0.0
        and s["last_nonsilent_s"] == 2.0
        and abs(s["dominant_hz"] - 1000) < 2,
        got={k: s[k] for k in ("frames_nonsilent", "first_nonsilent_s", "last_nonsilent_s", "dominant_hz")},
    )
    # rms of a sine is amplitude / sqrt(2)
    r = rms(tone(1000, 1.0, 0.5))
    check("rms_sine", abs(r - 0.5 / math.sqrt(2)) < 1e-3, got=r)
    # WAV round trip
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "t.wav")
        write_wav(p, tone(3000, 0.3))
        x, sr = read_wav(p)
        got = dominant_frequency(x, sr)
        check("wav_roundtrip", sr == SAMPLE_RATE and got is not None and abs(got - 3000) < 6, got=got)

    failed = [c for c in checks if not c["ok"]]
    if failed:
        raise PeerError(f"selftest failed: {json.dumps(failed, default=_json_default)}")
    return {"checks": checks, "passed": len(checks)}


# --------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roompeer", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def room_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--url", default=os.environ.get("LIVEKIT_URL", "ws://127.0.0.1:7880"))
        sp.add_argument("--api-key", default=os.environ.get("LIVEKIT_API_KEY", "devkey"))
        sp.add_argument("--api-secret", default=os.environ.get("LIVEKIT_API_SECRET", "secret"))
        sp.add_argument("--room", required=True)
        sp.add_argument("--connect-timeout", type=float, default=10.0, help="per signal attempt (s)")
        sp.add_argument("--wait-timeout", type=float, default=30.0,
                        help="max wait for the other side's media/subscription (s)")
        sp.add_argument("--timeout", type=float, default=None,
                        help="hard limit for the whole command (s); default derived from the others")

    def tone_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--freq", type=float, default=1000.0)
        sp.add_argument("--seconds", type=float, default=3.0, help="tone duration")
        sp.add_argument("--amplitude", type=float, default=DEFAULT_AMPLITUDE, help="peak, full scale = 1")
        sp.add_argument("--frame-ms", type=int, default=10, choices=(10, 20))
        sp.add_argument("--tail", type=float, default=0.5, help="silence sent after the tone (s)")

    sp = sub.add_parser("tone-pair", help="publish a tone from A, record it at B, in one room")
    room_args(sp)
    tone_args(sp)
    sp.add_argument("--identity-prefix", default="tone")
    sp.add_argument("--gap", type=float, default=0.5,
                    help="silence between the warm-up tone and the measured tone (s)")

    sp = sub.add_parser("publish-tone", help="publish a tone as one participant")
    room_args(sp)
    tone_args(sp)
    sp.add_argument("--identity", required=True)
    sp.add_argument("--no-wait-subscriber", dest="wait_subscriber", action="store_false",
                    help="start the tone without waiting for someone to subscribe")
    sp.add_argument("--lead-silence", type=float, default=0.5,
                    help="silence sent after subscription, before the tone (s)")

    sp = sub.add_parser("listen", help="record subscribed audio and analyse it")
    room_args(sp)
    sp.add_argument("--identity", required=True)
    sp.add_argument("--seconds", type=float, required=True,
                    help="record this long after subscribing (stops early if the track ends)")
    sp.add_argument("--from-identity", default=None, help="only record this participant's audio")
    sp.add_argument("--wav", default=None, help="also write the recording to this WAV file")

    sp = sub.add_parser("session", help="observe the room; optionally send DTMF and record audio")
    room_args(sp)
    sp.add_argument("--identity", required=True)
    sp.add_argument("--seconds", type=float, required=True,
                    help="stay at most this long after joining (ends early once every --until-* "
                         "condition holds)")
    sp.add_argument("--wait-for-identity", default=None,
                    help="before sending anything, wait (--wait-timeout) until this participant is seen")
    sp.add_argument("--announce-ready", action="store_true",
                    help="then set own attribute roompeer.ready=1 (tells the other side we are up)")
    sp.add_argument("--send-dtmf", default=None, help="then send these digits with publish_dtmf")
    sp.add_argument("--dtmf-interval", type=float, default=0.3, help="between digits (s)")
    sp.add_argument("--until-dtmf", type=int, default=None,
                    help="condition: at least this many sip_dtmf_received events")
    sp.add_argument("--until-attribute", action="append", default=[], metavar="IDENTITY:KEY=VALUE",
                    help="condition: that participant has that attribute value (repeatable)")
    sp.add_argument("--until-left", default=None, metavar="IDENTITY",
                    help="condition: that participant has left the room (a sender that must not "
                         "leave before what it sent has arrived: the server drops data from a "
                         "participant that has left)")
    sp.add_argument("--record", action="store_true",
                    help="record every subscribed audio track (one report per track sid)")
    sp.add_argument("--from-identity", default=None, help="only record this participant's audio")

    sp = sub.add_parser(
        "tone-sequence",
        help="room tracks replacing one another: sequential (each step a participant that "
             "joins, plays and leaves), overlap (each step joins while the previous one plays), "
             "republish (the first step's participant unpublishes and publishes again per step), "
             "restart (the first step's identity joins again per step on a new connection while "
             "the previous one, which never leaves, is still there: an agent that restarts)",
    )
    room_args(sp)
    sp.add_argument("--mode", choices=("sequential", "overlap", "republish", "restart"),
                    default="sequential")
    sp.add_argument("--step", action="append", default=[], metavar="IDENTITY:FREQ:SECONDS",
                    help="one participant (or, for republish, one track) and its tone (repeatable)")
    sp.add_argument("--wait-for-identity", default=None,
                    help="each participant waits until it sees this one in the room before publishing")
    sp.add_argument("--amplitude", type=float, default=DEFAULT_AMPLITUDE, help="peak, full scale = 1")
    sp.add_argument("--lead-silence", type=float, default=0.2,
                    help="silence sent after subscription, before the tone (s)")
    sp.add_argument("--tail", type=float, default=0.3, help="silence sent after each tone (s)")

    sp = sub.add_parser("analyze-wav", help="analyse a 16-bit PCM WAV file")
    sp.add_argument("path")
    sp.add_argument("--tones", default=None,
                    help="comma-separated frequencies: report in which 20 ms steps each is present")
    sp.add_argument("--presence-threshold", type=float, default=0.05,
                    help="amplitude (full scale = 1) from which a tone counts as present")
    sp.add_argument("--levels", action="store_true",
                    help="level of the first second from the onset against the steady level")

    sub.add_parser("selftest", help="check the analysis functions on synthetic signals")
    return p


COMMANDS = {
    "tone-pair": cmd_tone_pair,
    "tone-sequence": cmd_tone_sequence,
    "publish-tone": cmd_publish_tone,
    "listen": cmd_listen,
    "session": cmd_session,
    "analyze-wav": cmd_analyze_wav,
    "selftest": cmd_selftest,
}


def hard_timeout(args: argparse.Namespace) -> Optional[float]:
    if args.command in ("analyze-wav", "selftest"):
        return None
    if args.timeout is not None:
        return args.timeout
    media = sum(getattr(args, k, 0.0) for k in ("seconds", "tail", "lead_silence", "gap"))
    if args.command == "tone-sequence":
        media += sum(float(s.split(":")[-1]) + 2 * args.connect_timeout + args.wait_timeout
                     for s in args.step if s.count(":") == 2 and s.split(":")[-1].replace(".", "", 1).isdigit())
    return 2 * (args.connect_timeout * 3 + 5) + args.wait_timeout + media + 20


# Set by the first SIGTERM/SIGINT: `listen` and `session` stop recording and report what
# they have ("ended_by": "signal"), `publish-tone` stops the tone and reports. Other commands, and
# a second signal, cancel the command ({"ok": false, "error": "interrupted"}).
GRACEFUL_STOP: asyncio.Event


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    global GRACEFUL_STOP
    GRACEFUL_STOP = asyncio.Event()
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    graceful = args.command in ("listen", "publish-tone", "session")

    def on_signal() -> None:
        if graceful and not GRACEFUL_STOP.is_set():
            log.info("signal received: finishing early")
            GRACEFUL_STOP.set()
        else:
            task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    limit = hard_timeout(args)
    try:
        return await asyncio.wait_for(COMMANDS[args.command](args), timeout=limit)
    except asyncio.TimeoutError:
        raise PeerError(f"{args.command} did not finish within {limit:.0f}s") from None


def main() -> int:
    args = build_parser().parse_args()
    level = os.environ.get("ROOMPEER_LOG", "INFO").upper()
    logging.basicConfig(
        stream=sys.stderr, level=level,
        format="%(asctime)s.%(msecs)03d roompeer %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    if level != "DEBUG":
        logging.getLogger("livekit").setLevel(logging.WARNING)
    # PyJWT warns about the 6-byte dev secret ("secret") on every token
    warnings.filterwarnings("ignore", message=".*HMAC key.*")
    result: dict[str, Any]
    code = 0
    try:
        result = {"ok": True, "command": args.command, **asyncio.run(amain(args))}
    except PeerError as e:
        result, code = {"ok": False, "command": args.command, "error": str(e)}, 1
    except (asyncio.CancelledError, KeyboardInterrupt):
        result, code = {"ok": False, "command": args.command, "error": "interrupted"}, 1
    except Exception as e:
        log.exception("unexpected failure")
        result, code = {"ok": False, "command": args.command, "error": f"{type(e).__name__}: {e}"}, 1
    sys.stdout.write(json.dumps(result, default=_json_default) + "\n")
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    exit_code = main()
    sys.stderr.flush()
    # liblivekit_ffi can abort (SIGABRT) while the interpreter tears down after a clean
    # disconnect; the result is already written and flushed, so skip that teardown.
    os._exit(exit_code)
