#!/usr/bin/env python3
"""sipclient: LiveKit's own Python server SDK (`livekit-api`) as the caller of a SIP API.

Roomline's tests point it at Roomline's HTTP listener to show that an unchanged LiveKit
client places and transfers calls there. The SDK speaks Twirp with protobuf bodies.

  sipclient.py create   --url URL (--api-key K --api-secret S | --token JWT) --request JSON
  sipclient.py transfer --url URL (--api-key K --api-secret S | --token JWT) --request JSON

--request is the request message in protobuf's JSON mapping (CreateSIPParticipantRequest
or TransferSIPParticipantRequest), e.g. '{"sip_trunk_id": "t", "sip_call_to": "+1555"}'.

stdout: exactly one JSON object.
  success: {"ok": true, "response": {... the response message, proto field names ...}}
  failure: {"ok": false, "error_type": "SipCallError", "code": "resource_exhausted",
            "message": "...", "status": 429, "metadata": {...}}   (exit status 1)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import warnings


async def run(args: argparse.Namespace) -> dict:
    from google.protobuf import json_format
    from livekit import api
    from livekit.protocol.sip import CreateSIPParticipantRequest, TransferSIPParticipantRequest

    if args.token:
        lk = api.LiveKitAPI.with_token(args.token, url=args.url)
    else:
        lk = api.LiveKitAPI(args.url, args.api_key, args.api_secret)
    try:
        body = json.loads(args.request)
        if args.command == "create":
            req = json_format.ParseDict(body, CreateSIPParticipantRequest())
            resp = await lk.sip.create_sip_participant(req, timeout=args.timeout)
        else:
            req = json_format.ParseDict(body, TransferSIPParticipantRequest())
            resp = await lk.sip.transfer_sip_participant(req, timeout=args.timeout)
        return {
            "ok": True,
            "response": json_format.MessageToDict(
                resp,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=True,
            ),
        }
    except api.TwirpError as e:  # ServerError; SipCallError for SIP failures
        return {
            "ok": False,
            "error_type": type(e).__name__,
            "code": e.code,
            "message": e.message,
            "status": e.status,
            "metadata": dict(e.metadata or {}),
        }
    finally:
        await lk.aclose()


def main() -> int:
    p = argparse.ArgumentParser(prog="sipclient")
    p.add_argument("command", choices=["create", "transfer"])
    p.add_argument("--url", required=True)
    p.add_argument("--api-key", default=None)
    p.add_argument("--api-secret", default=None)
    p.add_argument("--token", default=None)
    p.add_argument("--request", required=True)
    p.add_argument("--timeout", type=float, default=None, help="request timeout (s)")
    args = p.parse_args()
    # PyJWT warns about the 6-byte dev secret ("secret") on every token
    warnings.filterwarnings("ignore", message=".*HMAC key.*")
    try:
        result = asyncio.run(run(args))
    except Exception as e:  # transport errors and the like: report, never hang
        result = {"ok": False, "error_type": type(e).__name__, "message": str(e)}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
