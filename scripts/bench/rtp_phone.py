#!/usr/bin/env python3
"""rtp_phone: a minimal SIP phone over UDP for scripts/bench (the latency loop).

It places one call (INVITE with a PCMU offer, ACK, later BYE), sends a given 8 kHz
signal as PCMU RTP in real time (20 ms packets) and records every RTP packet it
receives with its arrival time. Both are kept as 8 kHz timelines that start at one
instant: a sent packet's audio is placed at the instant its first sample was "spoken"
(send time - 20 ms, the packetization a real phone has), a received packet's at its
arrival (playout would start then: this phone has no jitter buffer).

Used as a module by bench.py (`call()`), or on its own:
  rtp_phone.py --target 127.0.0.1:5060 --called 15550000001 --signal sig.s16 --out PREFIX
which writes PREFIX.sent.s16 and PREFIX.recv.s16 (8 kHz mono s16le) and prints JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import socket
import struct
import sys
import threading
import time

import numpy as np

RATE = 8000
FRAME = 160  # 20 ms


def ulaw_encode(x: np.ndarray) -> bytes:
    """G.711 mu-law of float samples in [-1, 1] (the classic segment encoder)."""
    pcm = np.clip(np.round(x * 32767), -32768, 32767).astype(np.int32)
    sign = (pcm < 0).astype(np.int32)
    mag = np.minimum(np.abs(pcm), 32635) + 0x84
    exp = np.floor(np.log2(mag)).astype(np.int32) - 7
    exp = np.clip(exp, 0, 7)
    mant = (mag >> (exp + 3)) & 0x0F
    out = ~((sign << 7) | (exp << 4) | mant) & 0xFF
    return out.astype(np.uint8).tobytes()


def ulaw_decode(b: bytes) -> np.ndarray:
    """G.711 mu-law bytes -> float samples in [-1, 1]."""
    u = ~np.frombuffer(b, dtype=np.uint8).astype(np.int32) & 0xFF
    sign = u & 0x80
    exp = (u >> 4) & 0x07
    mant = u & 0x0F
    mag = ((mant << 3) + 0x84) << exp
    pcm = np.where(sign != 0, 0x84 - mag, mag - 0x84)
    return pcm.astype(np.float64) / 32768.0


class SipError(Exception):
    pass


def _headers(msg: str) -> dict[str, str]:
    head = msg.split("\r\n\r\n", 1)[0]
    out: dict[str, str] = {}
    for line in head.split("\r\n")[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), v.strip())
    return out


def call(target: str, called: str, caller: str, signal: np.ndarray, tail_s: float = 1.5,
         timeout: float = 20.0) -> dict:
    """Places a call to `target` (host:port), plays `signal` (8 kHz float), hangs up.

    Returns {"setup_ms", "sent": timeline, "recv": timeline, "packets_received", ...}.
    """
    host, port = target.rsplit(":", 1)
    dst = (host, int(port))
    sip = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sip.bind(("127.0.0.1", 0))
    sip.settimeout(0.2)
    rtp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rtp.bind(("127.0.0.1", 0))
    rtp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    lport, rport = sip.getsockname()[1], rtp.getsockname()[1]
    call_id = f"{random.getrandbits(64):x}@rtp-phone"
    tag = f"{random.getrandbits(32):x}"
    uri = f"sip:{called}@{host}:{port}"
    sdp = (
        "v=0\r\n"
        f"o=- {random.getrandbits(31)} 1 IN IP4 127.0.0.1\r\n"
        "s=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {rport} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=ptime:20\r\na=sendrecv\r\n"
    )

    def request(method: str, cseq: int, req_uri: str, to: str, body: str = "") -> str:
        branch = f"z9hG4bK{random.getrandbits(48):x}"
        lines = [
            f"{method} {req_uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{lport};branch={branch};rport",
            "Max-Forwards: 70",
            f"From: <sip:{caller}@127.0.0.1:{lport}>;tag={tag}",
            f"To: {to}",
            f"Call-ID: {call_id}",
            f"CSeq: {cseq} {method}",
            f"Contact: <sip:{caller}@127.0.0.1:{lport}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {len(body.encode())}")
        return "\r\n".join(lines) + "\r\n\r\n" + body

    def answer_request(msg: str) -> None:
        # a request from the bridge inside the dialog (BYE, re-INVITE, OPTIONS...): 200
        h = _headers(msg)
        resp = "\r\n".join([
            "SIP/2.0 200 OK",
            f"Via: {h.get('via', '')}",
            f"From: {h.get('from', '')}",
            f"To: {h.get('to', '')}",
            f"Call-ID: {h.get('call-id', '')}",
            f"CSeq: {h.get('cseq', '')}",
            "Content-Length: 0",
        ]) + "\r\n\r\n"
        sip.sendto(resp.encode(), dst)

    to_hdr = f"<{uri}>"
    invite = request("INVITE", 1, uri, to_hdr, sdp)
    t_invite = time.monotonic()
    sip.sendto(invite.encode(), dst)
    last_tx = t_invite
    ok = None
    while ok is None:
        if time.monotonic() - t_invite > timeout:
            raise SipError("no final answer to the INVITE")
        try:
            data, _ = sip.recvfrom(65535)
        except socket.timeout:
            if time.monotonic() - last_tx > 0.5:
                sip.sendto(invite.encode(), dst)
                last_tx = time.monotonic()
            continue
        msg = data.decode(errors="replace")
        if not msg.startswith("SIP/2.0 "):
            answer_request(msg)
            continue
        code = int(msg[8:11])
        if code < 200:
            continue
        if code >= 300:
            raise SipError(f"INVITE answered {code}")
        ok = msg
    setup_ms = (time.monotonic() - t_invite) * 1000
    h = _headers(ok)
    to_hdr = h.get("to", to_hdr)
    contact = re.search(r"<([^>]+)>", h.get("contact", "")) or re.search(r"(sip:\S+)", h.get("contact", ""))
    remote_uri = contact.group(1) if contact else uri
    body = ok.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in ok else ""
    c_ip = re.search(r"c=IN IP4 (\S+)", body)
    m_port = re.search(r"m=audio (\d+)", body)
    if not (c_ip and m_port):
        raise SipError("200 OK without a usable SDP answer")
    media = (c_ip.group(1), int(m_port.group(1)))
    ack = request("ACK", 1, remote_uri, to_hdr)
    sip.sendto(ack.encode(), dst)

    # receive RTP (and answer SIP) on threads
    stop = threading.Event()
    received: list[tuple[float, int, int, bytes]] = []

    def rtp_reader() -> None:
        rtp.settimeout(0.1)
        while not stop.is_set():
            try:
                data, _ = rtp.recvfrom(2048)
            except socket.timeout:
                continue
            at = time.monotonic()
            if len(data) < 12 or data[0] >> 6 != 2 or (data[1] & 0x7F) != 0:
                continue
            cc = data[0] & 0x0F
            off = 12 + 4 * cc
            if data[0] & 0x10 and len(data) >= off + 4:
                off += 4 + 4 * struct.unpack("!H", data[off + 2:off + 4])[0]
            seq, ts = struct.unpack("!HI", data[2:8])
            received.append((at, seq, ts, data[off:]))

    def sip_reader() -> None:
        while not stop.is_set():
            try:
                data, _ = sip.recvfrom(65535)
            except socket.timeout:
                continue
            msg = data.decode(errors="replace")
            if msg.startswith("SIP/2.0 200") and "INVITE" in _headers(msg).get("cseq", ""):
                sip.sendto(ack.encode(), dst)  # retransmitted 200: ACK again
            elif not msg.startswith("SIP/2.0 "):
                answer_request(msg)

    readers = [threading.Thread(target=rtp_reader, daemon=True),
               threading.Thread(target=sip_reader, daemon=True)]
    for t in readers:
        t.start()

    # send the signal in real time
    payload = ulaw_encode(signal)
    frames = len(payload) // FRAME
    ssrc = random.getrandbits(32)
    seq0, ts0 = random.getrandbits(16), random.getrandbits(32)
    t0 = time.monotonic()
    sent_at: list[float] = []
    for k in range(frames):
        due = t0 + 0.02 * (k + 1)
        while True:
            d = due - time.monotonic()
            if d <= 0:
                break
            time.sleep(min(d, 0.005) if d > 0.002 else 0)
        hdr = struct.pack("!BBHII", 0x80, (0x80 if k == 0 else 0) | 0,
                          (seq0 + k) & 0xFFFF, (ts0 + FRAME * k) & 0xFFFFFFFF, ssrc)
        rtp.sendto(hdr + payload[k * FRAME:(k + 1) * FRAME], media)
        sent_at.append(time.monotonic())
    time.sleep(tail_s)
    stop.set()
    for t in readers:
        t.join(timeout=1)
    sip.settimeout(0.5)
    bye = request("BYE", 2, remote_uri, to_hdr)
    for _ in range(4):
        sip.sendto(bye.encode(), dst)
        try:
            data, _ = sip.recvfrom(65535)
            if data.startswith(b"SIP/2.0 200"):
                break
        except socket.timeout:
            pass
    sip.close()
    rtp.close()

    # timelines from t0
    n = int((time.monotonic() - t0 + 1) * RATE)
    sent = np.zeros(n)
    recv = np.zeros(n)
    x = ulaw_decode(payload)
    for k, at in enumerate(sent_at):
        i = int(round((at - 0.02 - t0) * RATE))
        if 0 <= i and i + FRAME <= n:
            sent[i:i + FRAME] = x[k * FRAME:(k + 1) * FRAME]
    for at, _, _, p in received:
        i = int(round((at - t0) * RATE))
        y = ulaw_decode(p)
        if 0 <= i and i + len(y) <= n:
            recv[i:i + len(y)] = y
    return {
        "setup_ms": setup_ms,
        "frames_sent": frames,
        "packets_received": len(received),
        "rate": RATE,
        "sent": sent,
        "recv": recv,
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="rtp_phone")
    p.add_argument("--target", required=True)
    p.add_argument("--called", required=True)
    p.add_argument("--caller", default="14440009999")
    p.add_argument("--signal", required=True, help="8 kHz mono s16le")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    sig = np.fromfile(a.signal, dtype="<i2").astype(np.float64) / 32768.0
    r = call(a.target, a.called, a.caller, sig)
    for k in ("sent", "recv"):
        (np.clip(r[k], -1, 1) * 32767).astype("<i2").tofile(f"{a.out}.{k}.s16")
        del r[k]
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
