#!/usr/bin/env bash
# The operator session with nothing but grpcurl and a default server: start
# streamwatch-server with no tenants file, discover its services through
# reflection (no .proto files), describe the watch service, start a watch,
# ingest one S3 notification, follow the watch until it completes and read it
# back with GetWatch.
#
#   GRPCURL                  grpcurl binary (default: `grpcurl` on PATH)
#   STREAMWATCH_SERVER_BIN   server binary (default: target/debug/streamwatch-server)
#
# Exits non-zero on any failed step; always stops the server it started.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
GRPCURL="${GRPCURL:-grpcurl}"
SERVER_BIN="${STREAMWATCH_SERVER_BIN:-$repo/target/debug/streamwatch-server}"

step() { printf '\n==> %s\n' "$*"; }
fail() {
    printf 'FAIL: %s\n' "$*" >&2
    if [[ -n "${work:-}" && -f "$work/server.log" ]]; then
        printf -- '--- server log (tail) ---\n' >&2
        tail -n 30 "$work/server.log" >&2 || true
    fi
    exit 1
}

command -v "$GRPCURL" >/dev/null 2>&1 || fail "grpcurl not found: $GRPCURL (set GRPCURL)"
[[ -x "$SERVER_BIN" ]] || fail "server binary not found: $SERVER_BIN (cargo build -p streamwatch-server)"
command -v python3 >/dev/null 2>&1 || fail "python3 is required"

work="$(mktemp -d "${TMPDIR:-/tmp}/streamwatch-grpcurl.XXXXXX")"
server_pid=""

cleanup() {
    local rc=$?
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$server_pid" 2>/dev/null; then
            kill -KILL "$server_pid" 2>/dev/null || true
        fi
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
addr="127.0.0.1:$port"

step "start $SERVER_BIN on $addr (no tenants file)"
# Only --data and --listen: keep configuration from the environment out, too.
env -u STREAMWATCH_TENANTS -u STREAMWATCH_LISTEN -u STREAMWATCH_DATA \
    "$SERVER_BIN" --data "$work/streamwatch.db" --listen "$addr" >"$work/server.log" 2>&1 &
server_pid=$!

step "wait for grpc.health.v1.Health/Check"
deadline=$((SECONDS + 10))
until health="$("$GRPCURL" -plaintext -max-time 1 "$addr" grpc.health.v1.Health/Check 2>&1)"; do
    kill -0 "$server_pid" 2>/dev/null || fail "server exited during startup"
    ((SECONDS < deadline)) || fail "server not healthy within 10s: $health"
    sleep 0.1
done
echo "$health"
grep -q '"SERVING"' <<<"$health" || fail "health is not SERVING: $health"

rpc() { # rpc METHOD JSON [extra grpcurl flags...]
    local method="$1" data="$2"
    shift 2
    "$GRPCURL" -plaintext -max-time 10 "$@" -d "$data" "$addr" "$method"
}

step "list services (reflection)"
services="$("$GRPCURL" -plaintext -max-time 5 "$addr" list)" || fail "grpcurl list failed"
echo "$services"
for svc in streamwatch.v1.WatchService streamwatch.v1.IngestService; do
    grep -qx "$svc" <<<"$services" || fail "reflection does not list $svc"
done

step "describe streamwatch.v1.WatchService (reflection)"
described="$("$GRPCURL" -plaintext -max-time 5 "$addr" describe streamwatch.v1.WatchService)" \
    || fail "grpcurl describe failed"
echo "$described"
grep -q '^streamwatch.v1.WatchService is a service:' <<<"$described" \
    || fail "describe does not say WatchService is a service"
for rpc in StartWatch GetWatch ListWatches CancelWatch StreamWatchEvents; do
    grep -q "rpc $rpc (" <<<"$described" || fail "describe does not list rpc $rpc"
done
grep -q 'returns ( stream .streamwatch.v1.WatchEvent )' <<<"$described" \
    || fail "describe does not show StreamWatchEvents as server streaming"

step "StartWatch lake/day=1/ (quiet period 5s)"
started="$(rpc streamwatch.v1.WatchService/StartWatch \
    '{"bucket": "lake", "prefix": "day=1/", "policy": {"quietPeriod": {"window": "5s"}}}')" \
    || fail "StartWatch failed"
echo "$started"
watch_id="$(python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
assert r.get("created") is True, r
assert r["watch"]["state"] == "WATCH_STATE_ACTIVE", r
print(r["watch"]["watchId"])
' <<<"$started")" || fail "unexpected StartWatch response"
echo "watch id: $watch_id"

step "IngestS3Events with one S3 record"
request="$(python3 -c '
import json
record = {
    "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
    "eventTime": "2024-05-01T12:00:00.000Z", "eventName": "ObjectCreated:Put",
    "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
    "requestParameters": {"sourceIPAddress": "203.0.113.10"},
    "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S"},
    "s3": {
        "s3SchemaVersion": "1.0", "configurationId": "streamwatch",
        "bucket": {"name": "lake", "ownerIdentity": {"principalId": "A3NL1KOZZKEXAMPLE"}, "arn": "arn:aws:s3:::lake"},
        "object": {"key": "day%3D1/part+0.json", "size": 1024, "eTag": "d41d8cd98f00b204e9800998ecf8427e", "sequencer": "0065F1A2B3C4D5E600"},
    },
}
print(json.dumps({"documents": [json.dumps({"Records": [record]})]}))
')"
ingested="$(rpc streamwatch.v1.IngestService/IngestS3Events "$request")" || fail "IngestS3Events failed"
echo "$ingested"
python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
assert r.get("records") == "1" and r.get("matched") == "1" and r.get("counted") == "1", r
assert not r.get("rejected"), r
' <<<"$ingested" || fail "unexpected IngestS3Events response"

step "StreamWatchEvents from the start until the watch completes"
events="$(rpc streamwatch.v1.WatchService/StreamWatchEvents \
    "{\"watchId\": \"$watch_id\", \"afterSeq\": \"0\"}" -max-time 30)" \
    || fail "StreamWatchEvents did not end OK: $events"
echo "$events"
python3 -c '
import json, sys
text, pos, events = sys.stdin.read(), 0, []
decoder = json.JSONDecoder()
while True:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    if pos >= len(text):
        break
    event, pos = decoder.raw_decode(text, pos)
    events.append(event)
assert events, "no events"
seqs = [int(e["seq"]) for e in events]
assert seqs == list(range(1, len(events) + 1)), seqs
assert "started" in events[0], events[0]
last = events[-1]
assert "completed" in last, last
assert last["completed"].get("objectCount") == "1", last
print(len(events), "events; completed with objectCount", last["completed"]["objectCount"])
' <<<"$events" || fail "the stream did not end with completed objectCount 1"

step "GetWatch reads the completed watch"
got="$(rpc streamwatch.v1.WatchService/GetWatch "{\"watchId\": \"$watch_id\"}")" || fail "GetWatch failed"
echo "$got"
python3 -c '
import json, sys
watch = json.loads(sys.stdin.read())["watch"]
assert watch["watchId"] == sys.argv[1], watch
assert watch["state"] == "WATCH_STATE_COMPLETED", watch
assert watch["objectCount"] == "1" and watch["bucket"] == "lake" and watch["prefix"] == "day=1/", watch
assert watch["policy"]["quietPeriod"]["window"] == "5s", watch
assert "completedAt" in watch, watch
' "$watch_id" <<<"$got" || fail "unexpected GetWatch response"

step "OK: operator session passed"
