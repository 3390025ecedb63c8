// sdk-go: LiveKit's Go server SDK (github.com/livekit/server-sdk-go/v2) as the caller of
// a SIP API. Roomline's tests point it at Roomline's HTTP listener to show that an
// unchanged Go client places and transfers calls there. Same interface and output as
// tests/peers/sipclient.py (the Python SDK) and tests/peers/sdk-node/client.cjs:
//
//	sdk-go create   --url URL --api-key K --api-secret S --request JSON
//	sdk-go transfer --url URL --api-key K --api-secret S --request JSON
//
// --request is the request message in protobuf's JSON mapping. stdout: one JSON object,
// {"ok": true, "response": {...}} or {"ok": false, "code": ..., "message": ...,
// "metadata": {"sip_status_code": ..., "sip_status": ...}} (exit status 1).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/livekit/protocol/livekit"
	lksdk "github.com/livekit/server-sdk-go/v2"
	"github.com/twitchtv/twirp"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: sdk-go create|transfer --url URL --api-key K --api-secret S --request JSON")
		os.Exit(2)
	}
	command := os.Args[1]
	fs := flag.NewFlagSet(command, flag.ExitOnError)
	url := fs.String("url", "", "Roomline's HTTP API")
	key := fs.String("api-key", "", "")
	secret := fs.String("api-secret", "", "")
	request := fs.String("request", "{}", "the request in protobuf's JSON mapping")
	timeout := fs.Duration("timeout", 90*time.Second, "")
	_ = fs.Parse(os.Args[2:])
	out := run(command, *url, *key, *secret, *request, *timeout)
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
	if out["ok"] != true {
		os.Exit(1)
	}
}

func run(command, url, key, secret, request string, timeout time.Duration) map[string]any {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cli := lksdk.NewSIPClient(url, key, secret)
	var (
		resp proto.Message
		err  error
	)
	switch command {
	case "create":
		req := &livekit.CreateSIPParticipantRequest{}
		if err := protojson.Unmarshal([]byte(request), req); err != nil {
			return map[string]any{"ok": false, "error_type": "bad request", "message": err.Error()}
		}
		resp, err = cli.CreateSIPParticipant(ctx, req)
	case "transfer":
		req := &livekit.TransferSIPParticipantRequest{}
		if err := protojson.Unmarshal([]byte(request), req); err != nil {
			return map[string]any{"ok": false, "error_type": "bad request", "message": err.Error()}
		}
		resp, err = cli.TransferSIPParticipant(ctx, req)
	default:
		return map[string]any{"ok": false, "error_type": "usage", "message": "unknown command " + command}
	}
	if err != nil {
		var te twirp.Error
		if errors.As(err, &te) {
			return map[string]any{
				"ok":         false,
				"error_type": "twirp.Error",
				"code":       string(te.Code()),
				"message":    te.Msg(),
				"metadata":   te.MetaMap(),
			}
		}
		return map[string]any{"ok": false, "error_type": fmt.Sprintf("%T", err), "message": err.Error()}
	}
	body, _ := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(resp)
	var v any
	_ = json.Unmarshal(body, &v)
	return map[string]any{"ok": true, "response": v}
}
