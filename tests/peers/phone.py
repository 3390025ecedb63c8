#!/usr/bin/env python3
"""phone: a real SIP phone (pjsip's pjsua2, PyPI pjsua2-python) for Roomline's tests.

It places one call, plays a WAV file into it, records what it hears to a WAV file,
optionally sends RFC 4733 DTMF, hangs up after a time, and prints ONE JSON object on
stdout: {"ok": true, "status": <final SIP status>, "codec": "G722/16000", "connected_s":
..., "recorded": path, "dtmf_received": "..."} or {"ok": false, "error": ...}.
Logs go to stderr. No sound device is used (pjsua2's null device); every run has a hard
time limit.

  phone.py call sip:+15550100@127.0.0.1:5060 --codec G722 --play tone.wav \
      --record heard.wav --seconds 6 [--dtmf 12#] [--dtmf-after 1] [--local-port 0] \
      [--header "X-Customer-Tier: gold"]...
  phone.py answer --local-port 5070 --record heard.wav --seconds 20 [--dtmf 1#] \
      [--header "X-Callee-Ref: r-77"]...   (answers one call with 200 and these headers;
      the report adds "invite": the INVITE as received)

Secure calls (both commands): --transport tls [--ca ca.pem] [--cert c.pem --key c.key]
(TLS signalling; the peer's certificate is verified against --ca; our own certificate for
the listener of `answer`), --srtp off|optional|mandatory (SDES-SRTP, pjsua's srtpUse) and
--srtp-suite NAME (repeatable: only these suites, in this order). The report adds
"local_sdp" and "remote_sdp" (our first SDP, the peer's last)
and "reinvite_sdp" when --reinvite-after S sends a re-INVITE (pjsua makes new keys).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main() -> int:
    p = argparse.ArgumentParser(prog="phone")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("call")
    c.add_argument("uri")
    c.add_argument("--codec", default="G722", help="the only codec offered: G722, PCMU or PCMA")
    c.add_argument("--play", default=None, help="WAV file played into the call (looped)")
    c.add_argument("--record", default=None, help="WAV file recording what the phone hears")
    c.add_argument("--seconds", type=float, default=5.0, help="time connected before hanging up")
    c.add_argument("--dtmf", default="", help="RFC 4733 digits sent once connected")
    c.add_argument("--from-user", default="+15551230000")
    c.add_argument("--timeout", type=float, default=40.0)
    c.add_argument("--local-port", type=int, default=0)
    c.add_argument("--dtmf-after", type=float, default=1.0, help="seconds connected before the DTMF")
    c.add_argument("--header", action="append", default=[], help="'Name: value' on the INVITE")
    a = sub.add_parser("answer")
    a.add_argument("--codec", default="PCMU")
    a.add_argument("--play", default=None)
    a.add_argument("--record", default=None)
    a.add_argument("--seconds", type=float, default=5.0)
    a.add_argument("--dtmf", default="")
    a.add_argument("--dtmf-after", type=float, default=1.0)
    a.add_argument("--timeout", type=float, default=40.0, help="for the call to arrive and end")
    a.add_argument("--local-port", type=int, required=True)
    a.add_argument("--header", action="append", default=[], help="'Name: value' on the 200 OK")
    a.add_argument("--from-user", default="callee")
    for sp in (c, a):
        sp.add_argument("--transport", default="udp", choices=["udp", "tls"])
        sp.add_argument("--ca", default=None, help="CA file the peer's TLS certificate is checked against")
        sp.add_argument("--cert", default=None, help="our TLS certificate (answer: the listener's)")
        sp.add_argument("--key", default=None)
        sp.add_argument("--srtp", default="off", choices=["off", "optional", "mandatory"])
        sp.add_argument("--srtp-suite", action="append", default=[])
        sp.add_argument("--reinvite-after", type=float, default=0.0,
                        help="seconds connected before a re-INVITE (new SRTP keys)")
    args = p.parse_args()

    import pjsua2 as pj

    result: dict = {"ok": False, "command": args.command}
    ep = pj.Endpoint()
    ep.libCreate()
    cfg = pj.EpConfig()
    cfg.logConfig.level = 3
    cfg.logConfig.consoleLevel = 3
    cfg.uaConfig.maxCalls = 4
    cfg.medConfig.clockRate = 16000
    cfg.medConfig.sndClockRate = 16000
    cfg.medConfig.noVad = True
    ep.libInit(cfg)
    tcfg = pj.TransportConfig()
    tcfg.port = args.local_port
    tcfg.boundAddress = "127.0.0.1"
    if args.transport == "tls":
        tls = tcfg.tlsConfig
        tls.method = pj.PJSIP_TLSV1_2_METHOD
        if args.ca:
            tls.CaListFile = args.ca
            tls.verifyServer = True
        if args.cert:
            tls.certFile = args.cert
            tls.privKeyFile = args.key
        ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
    else:
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, tcfg)
    ep.audDevManager().setNullDev()
    ep.libStart()
    # only the requested codec (plus telephone-event, which pjsip always offers)
    wanted = {"G722": "G722/16000", "PCMU": "PCMU/8000", "PCMA": "PCMA/8000"}[args.codec.upper()]
    for ci in ep.codecEnum2():
        ep.codecSetPriority(ci.codecId, 255 if ci.codecId.startswith(wanted) else 0)

    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{args.from_user}@127.0.0.1"
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    acfg.mediaConfig.srtpUse = {"off": pj.PJMEDIA_SRTP_DISABLED, "optional": pj.PJMEDIA_SRTP_OPTIONAL,
                                "mandatory": pj.PJMEDIA_SRTP_MANDATORY}[args.srtp]
    # SRTP keys in SDP over UDP too (the tests choose the transport)
    acfg.mediaConfig.srtpSecureSignaling = 0
    if args.srtp_suite:
        cryptos = pj.SrtpCryptoVector()
        for name in args.srtp_suite:
            sc = pj.SrtpCrypto()
            sc.name = name
            cryptos.append(sc)
        acfg.mediaConfig.srtpOpt.cryptos = cryptos
        keyings = pj.IntVector()
        keyings.append(pj.PJMEDIA_SRTP_KEYING_SDES)
        acfg.mediaConfig.srtpOpt.keyings = keyings
    acc = pj.Account()
    acc.create(acfg)

    state = {"confirmed": None, "disconnected": False, "status": 0, "reason": "", "codec": None,
             "dtmf": "", "invite": None, "local_sdp": None, "remote_sdp": None,
             "reinvite_sdp": None, "reinvited": False}

    def headers(specs: list) -> "pj.SipHeaderVector":
        v = pj.SipHeaderVector()
        for spec in specs:
            name, _, value = spec.partition(":")
            h = pj.SipHeader()
            h.hName = name.strip()
            h.hValue = value.strip()
            v.append(h)
        return v
    player = None
    recorder = None

    class Call(pj.Call):
        def onCallState(self, prm):  # noqa: N802 (pjsua2 names)
            ci = self.getInfo()
            state["status"] = ci.lastStatusCode
            state["reason"] = ci.lastReason
            if ci.state == pj.PJSIP_INV_STATE_CONFIRMED and state["confirmed"] is None:
                state["confirmed"] = time.monotonic()
            if ci.state == pj.PJSIP_INV_STATE_DISCONNECTED:
                state["disconnected"] = True

        def onCallMediaState(self, prm):  # noqa: N802
            nonlocal player, recorder
            ci = self.getInfo()
            for i, mi in enumerate(ci.media):
                if mi.type == pj.PJMEDIA_TYPE_AUDIO and mi.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                    am = self.getAudioMedia(i)
                    try:
                        si = self.getStreamInfo(i)
                        state["codec"] = f"{si.codecName}/{si.codecClockRate}"
                    except Exception as e:  # pragma: no cover - diagnostic only
                        state["codec"] = f"unknown ({e})"
                    # (again after a re-INVITE that re-creates the media: a new port)
                    if args.play:
                        if player is None:
                            player = pj.AudioMediaPlayer()
                            player.createPlayer(args.play, 0)
                        player.startTransmit(am)
                    if args.record:
                        if recorder is None:
                            recorder = pj.AudioMediaRecorder()
                            recorder.createRecorder(args.record)
                        am.startTransmit(recorder)

        def onDtmfDigit(self, prm):  # noqa: N802
            state["dtmf"] += prm.digit

        def onCallSdpCreated(self, prm):  # noqa: N802
            if state["local_sdp"] is None:
                state["local_sdp"] = prm.sdp.wholeSdp
            if prm.remSdp.wholeSdp:
                state["remote_sdp"] = prm.remSdp.wholeSdp
            if state["reinvited"]:
                state["reinvite_sdp"] = prm.sdp.wholeSdp

        def onCallTsxState(self, prm):  # noqa: N802
            # the remote SDP of an answer to our offer
            try:
                msg = prm.e.body.tsxState.src.rdata.wholeMsg
            except Exception:
                return
            if msg.startswith("SIP/2.0 200") and "\r\n\r\nv=0" in msg:
                state["remote_sdp"] = msg.split("\r\n\r\n", 1)[1]

    deadline = time.monotonic() + args.timeout
    incoming: list = []
    if args.command == "answer":
        class Answering(pj.Account):
            def onIncomingCall(self, prm):  # noqa: N802
                c = Call(self, prm.callId)
                state["invite"] = prm.rdata.wholeMsg
                op = pj.CallOpParam()
                op.statusCode = 200
                op.txOption.headers = headers(args.header)
                c.answer(op)
                incoming.append(c)

        acc.shutdown()
        acc = Answering()
        acfg.idUri = f"sip:{args.from_user}@127.0.0.1:{args.local_port}"
        acc.create(acfg)
        call = None
    else:
        call = Call(acc)
    try:
        if call is not None:
            op = pj.CallOpParam(True)
            op.txOption.headers = headers(args.header)
            call.makeCall(args.uri, op)
        else:
            print(json.dumps({"listening": args.local_port}), flush=True)
            while time.monotonic() < deadline and not incoming:
                ep.libHandleEvents(20)
            if incoming:
                call = incoming[0]
        sent_dtmf = False
        while call is not None and time.monotonic() < deadline and not state["disconnected"]:
            ep.libHandleEvents(20)
            if state["confirmed"] is not None:
                up = time.monotonic() - state["confirmed"]
                if args.dtmf and not sent_dtmf and up > args.dtmf_after:
                    sent_dtmf = True
                    call.dialDtmf(args.dtmf)
                if args.reinvite_after and not state["reinvited"] and up > args.reinvite_after:
                    state["reinvited"] = True
                    rp = pj.CallOpParam(True)
                    rp.opt.flag = pj.PJSUA_CALL_UNHOLD | pj.PJSUA_CALL_REINIT_MEDIA
                    call.reinvite(rp)
                if up >= args.seconds:
                    break
        if call is None:
            result["error"] = "no call arrived"
        elif state["confirmed"] is None:
            result["error"] = f"not connected: {state['status']} {state['reason']}"
            result["status"] = state["status"]
        else:
            connected = time.monotonic() - state["confirmed"]
            if not state["disconnected"]:
                call.hangup(pj.CallOpParam(True))
                end = time.monotonic() + 5
                while time.monotonic() < end and not state["disconnected"]:
                    ep.libHandleEvents(20)
            result.update({
                "ok": True,
                "status": 200,
                "codec": state["codec"],
                "connected_s": round(connected, 3),
                "ended_by_remote": state["disconnected"] and connected < args.seconds - 0.1,
                "recorded": args.record,
                "dtmf_received": state["dtmf"],
                "invite": state["invite"],
                "local_sdp": state["local_sdp"],
                "remote_sdp": state["remote_sdp"],
                "reinvite_sdp": state["reinvite_sdp"],
            })
    except Exception as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        # pjsua2 wants its objects gone before libDestroy
        recorder = None
        player = None
        call = None
        incoming.clear()
        try:
            acc.shutdown()
        except Exception:
            pass
        ep.libDestroy()
    print(json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
