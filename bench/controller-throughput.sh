#!/usr/bin/env bash
# Controller throughput: simulated devices on keep-alive mutual TLS polling
# config with an unchanged hash (each poll answered 304), with DEVICES devices
# registered in the store. The baseline, measured in the same run with the
# same clients and connections, is `ping`: the same TLS, HTTP and identity
# lookup with no body to decode and nothing to compare, so the ratio
# config/ping is what the config path itself costs. Goal: >= 2,000 polls/s.
#
#   bench/controller-throughput.sh          DEVICES=10000 CLIENTS=64 DURATION=15  (seconds per measurement)
#
# The controller and the load generator (`outpost-controller bench poll`, one
# AsyncHTTPClient per simulated device, each with its own certificate) share
# this machine's cores; both are release builds.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-10000}
CLIENTS=${CLIENTS:-64}
SECONDS_PER=${DURATION:-15}
SCRATCH=(${OUTPOST_SCRATCH:+--scratch-path "$OUTPOST_SCRATCH"})
WORK=$(mktemp -d /tmp/outpost-ctl-bench.XXXXXX)
SERVE_PID=
cleanup() {
    # Stop only the controller this script started.
    if [ -n "$SERVE_PID" ] && kill -0 "$SERVE_PID" 2>/dev/null; then kill -TERM "$SERVE_PID"; wait "$SERVE_PID" || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "==> building outpost-controller (release)" >&2
swift build "${SCRATCH[@]}" -c release --product outpost-controller >&2
BIN=$(swift build "${SCRATCH[@]}" -c release --product outpost-controller --show-bin-path)/outpost-controller

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$BIN" init "$WORK/data" --host 127.0.0.1 --port "$PORT" >/dev/null
echo "==> seeding $DEVICES devices" >&2
"$BIN" bench seed --data "$WORK/data" --count "$((DEVICES - CLIENTS))" >&2
"$BIN" serve --data "$WORK/data" --listen "127.0.0.1:$PORT" --log-level warning &
SERVE_PID=$!
for _ in $(seq 1 100); do [ -S "$WORK/data/admin.sock" ] && break; sleep 0.1; done
[ -S "$WORK/data/admin.sock" ] || { echo "controller did not start" >&2; exit 1; }

echo "==> $CLIENTS clients register, then ping and config for ${SECONDS_PER}s each" >&2
"$BIN" bench poll --data "$WORK/data" --clients "$CLIENTS" --seconds "$SECONDS_PER" --json > "$WORK/result.json"
REGISTERED=$("$BIN" device list --data "$WORK/data" --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
python3 - "$WORK/result.json" "$REGISTERED" <<'PY'
import json, sys
r = {x["mode"]: x for x in json.load(open(sys.argv[1]))}
print(f"devices registered: {sys.argv[2]}, concurrent clients: {r['config']['clients']}")
for m in ("ping", "config"):
    x = r[m]
    label = "baseline ping" if m == "ping" else "config (304)"
    print(f"{label:14} {x['perSecond']:8.0f} req/s   p50 {x['p50ms']:6.2f} ms   p99 {x['p99ms']:6.2f} ms"
          f"   ({x['requests']} requests, {x['errors']} errors, {x['seconds']:.1f} s)")
print(f"config/ping ratio: {r['config']['perSecond'] / r['ping']['perSecond']:.2f}   goal: >= 2000 polls/s "
      f"({'met' if r['config']['perSecond'] >= 2000 else 'NOT met'})")
PY
