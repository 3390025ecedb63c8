#!/usr/bin/env node
// sdk-node: LiveKit's Node server SDK (npm livekit-server-sdk) as the caller of a SIP API.
// Roomline's tests point it at Roomline's HTTP listener to show that an unchanged Node
// client places and transfers calls there. Same interface and output as
// tests/peers/sipclient.py (Python SDK) and tests/peers/sdk-go (Go SDK):
//
//   client.cjs create   --url URL --api-key K --api-secret S --request JSON
//   client.cjs transfer --url URL --api-key K --api-secret S --request JSON
//
// --request is the request message in protobuf's JSON mapping (proto field names); it is
// turned into the SDK's call arguments. stdout: one JSON object, {"ok": true,
// "response": {...}} or {"ok": false, "code", "message", "status", "metadata",
// "sip_status_code"} (exit status 1). The SDK is loaded from --sdk-dir, else
// $ROOMLINE_SDK_NODE, else $HOME/.cache/roomline/sdk-node (where install-test-deps puts it).
'use strict';

const path = require('node:path');
const os = require('node:os');
const { createRequire } = require('node:module');

function args(argv) {
  const out = { command: argv[0] };
  for (let i = 1; i < argv.length; i += 2) {
    out[argv[i].replace(/^--/, '').replace(/-/g, '_')] = argv[i + 1];
  }
  return out;
}

// SIPHeaderOptions (the SDK does not export the enum)
const HEADER_OPTIONS = { SIP_NO_HEADERS: 0, SIP_X_HEADERS: 1, SIP_ALL_HEADERS: 2 };

function seconds(d) {
  // protobuf JSON durations are "30s"
  if (d === undefined || d === null) return undefined;
  return Math.round(parseFloat(String(d)));
}

async function run(a) {
  const dir = a.sdk_dir || process.env.ROOMLINE_SDK_NODE || path.join(os.homedir(), '.cache', 'roomline', 'sdk-node');
  const sdk = createRequire(path.join(dir, 'package.json'))('livekit-server-sdk');
  const cli = new sdk.SipClient(a.url, a.api_key, a.api_secret);
  const r = JSON.parse(a.request || '{}');
  try {
    if (a.command === 'create') {
      const info = await cli.createSipParticipant(r.sip_trunk_id, r.sip_call_to, r.room_name, {
        participantIdentity: r.participant_identity,
        participantName: r.participant_name,
        participantMetadata: r.participant_metadata,
        participantAttributes: r.participant_attributes,
        fromNumber: r.sip_number,
        dtmf: r.dtmf,
        headers: r.headers,
        includeHeaders: HEADER_OPTIONS[r.include_headers],
        hidePhoneNumber: r.hide_phone_number,
        waitUntilAnswered: r.wait_until_answered,
        ringingTimeout: seconds(r.ringing_timeout),
        timeout: 90,
      });
      return {
        ok: true,
        response: {
          participant_id: info.participantId,
          participant_identity: info.participantIdentity,
          room_name: info.roomName,
          sip_call_id: info.sipCallId,
        },
      };
    }
    if (a.command === 'transfer') {
      await cli.transferSipParticipant(r.room_name, r.participant_identity, r.transfer_to, {
        headers: r.headers,
        playDialtone: r.play_dialtone,
        timeout: 90,
      });
      return { ok: true, response: {} };
    }
    return { ok: false, error_type: 'usage', message: `unknown command ${a.command}` };
  } catch (e) {
    return {
      ok: false,
      error_type: e && e.name,
      code: e && e.code,
      message: e && e.message,
      status: e && e.status,
      metadata: (e && e.metadata) || {},
      sip_status_code: e && e.sipStatusCode,
    };
  }
}

run(args(process.argv.slice(2)))
  .catch((e) => ({ ok: false, error_type: e && e.name, message: String(e) }))
  .then((out) => {
    process.stdout.write(JSON.stringify(out) + '\n');
    process.exitCode = out.ok ? 0 : 1;
  });
