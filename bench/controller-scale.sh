#!/usr/bin/env bash
# Controller scale: config polls (304) per second and latency with DEVICES
# devices registered, and the store's writes (info, metrics, logs) per second,
# on three stores in one run:
#   1. SQLite, one controller (the baseline the ratios are against);
#   2. PostgreSQL, one replica;
#   3. PostgreSQL, two replicas (the simulated devices register at the first
#      and are spread over both, so half of them poll a replica they did not
#      register with).
# PostgreSQL is Debian's, a private cluster in a temporary directory on a UNIX
# socket only, with its default durability (fsync on). Everything — the
# database, the replicas and the load generator — shares this machine's two
# cores, so a second replica here measures coordination cost, not added
# capacity; docs/scale.md reads the figures.
#
#   bench/controller-scale.sh        DEVICES=100000 CLIENTS=64 DURATION=15 (seconds per measurement)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICES=${DEVICES:-100000}
CLIENTS=${CLIENTS:-64}
SECONDS_PER=${DURATION:-15}
SCRATCH=(${OUTPOST_SCRATCH:+--scratch-path "$OUTPOST_SCRATCH"})
WORK=$(mktemp -d /tmp/outpost-scale.XXXXXX)
chmod 755 "$WORK"  # the postgres user must reach its cluster under it
PIDS=()
PG_BIN=
cleanup() {
    # Stop only what this script started: the controllers by PID, PostgreSQL by its pid file.
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    if [ -n "$PG_BIN" ] && [ -f "$WORK/pg/data/postmaster.pid" ]; then
        runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m fast -w -t 30 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PG_BIN/initdb" ] || { echo "PostgreSQL is not installed: run ./build.sh (it installs Debian's postgresql)" >&2; exit 1; }

echo "==> building outpost-controller (release)" >&2
swift build "${SCRATCH[@]}" -c release --product outpost-controller >&2
BIN=$(swift build "${SCRATCH[@]}" -c release --product outpost-controller --show-bin-path)/outpost-controller

echo "==> a private PostgreSQL in $WORK/pg" >&2
mkdir -p "$WORK/pg" && chown postgres: "$WORK/pg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/server.log" -w -t 60 \
    -o "-k $WORK/pg -c listen_addresses='' -c max_connections=200" start >/dev/null
runuser -u postgres -- "$PG_BIN/createdb" -h "$WORK/pg" -U postgres fleet
DB="postgres://postgres@/fleet?host=$WORK/pg"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# serve NAME PORT [serve options...]: starts a controller, waits (bounded) for its admin socket.
serve() {
    local name=$1 port=$2; shift 2
    "$BIN" serve --data "$WORK/data" --listen "127.0.0.1:$port" --admin-socket "$WORK/$name.sock" --log-level warning "$@" &
    PIDS+=($!)
    for _ in $(seq 1 300); do [ -S "$WORK/$name.sock" ] && return 0; sleep 0.1; done
    echo "controller $name did not start" >&2; exit 1
}
stop_all() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null && wait "$p" 2>/dev/null || true; done
    PIDS=()
}

P1=$(free_port); P2=$(free_port)
"$BIN" init "$WORK/data" --host 127.0.0.1 --port "$P1" >/dev/null
echo "==> seeding $DEVICES devices into SQLite and into PostgreSQL" >&2
"$BIN" bench seed --data "$WORK/data" --count "$DEVICES" >&2
"$BIN" bench seed --data "$WORK/data" --count "$DEVICES" --database "$DB" >&2
# Settle PostgreSQL after the bulk insert (statistics, dirty pages) so that its background
# work does not run during the measurements, the SQLite ones included.
runuser -u postgres -- "$PG_BIN/psql" -h "$WORK/pg" -U postgres -d fleet -q -c "VACUUM ANALYZE" -c "CHECKPOINT" >&2

poll() {
    "$BIN" bench poll --data "$WORK/data" --clients "$CLIENTS" --seconds "$SECONDS_PER" --json \
        --mode ping --mode handshake --mode config --mode info --mode metrics --mode logs "$@"
}

echo "==> SQLite, one controller" >&2
serve sqlite "$P1"
rss() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
echo "{\"devices\": $DEVICES, \"rssMiB\": $(rss "${PIDS[0]}")}" > "$WORK/memory.json"
poll --url "https://127.0.0.1:$P1" > "$WORK/sqlite.json"
stop_all

echo "==> PostgreSQL, one replica" >&2
serve pg1 "$P1" --database "$DB"
# `init` allowed the onboarding certificate in the SQLite file only; allow it in PostgreSQL too.
"$BIN" onboard allow --data "$WORK/data" --admin-socket "$WORK/pg1.sock" \
    --cert "$WORK/data/config/onboard.cert.pem" --serial '*' >/dev/null
poll --url "https://127.0.0.1:$P1" > "$WORK/pg1.json"

echo "==> PostgreSQL, two replicas" >&2
serve pg2 "$P2" --database "$DB"
poll --url "https://127.0.0.1:$P1" --url "https://127.0.0.1:$P2" > "$WORK/pg2.json"
stop_all

python3 - "$WORK" "$DEVICES" <<'PY'
import json, sys
work, devices = sys.argv[1], int(sys.argv[2])
runs = [("SQLite, 1 controller", "sqlite"), ("PostgreSQL, 1 replica", "pg1"), ("PostgreSQL, 2 replicas", "pg2")]
res = {key: {x["mode"]: x for x in json.load(open(f"{work}/{key}.json"))} for _, key in runs}
base = res["sqlite"]["config"]["perSecond"]
print(f"devices registered: {devices:,}; concurrent clients: {res['sqlite']['config']['clients']}; config polls answered 304")
memory = json.load(open(f"{work}/memory.json"))
print(f"controller RSS with {memory['devices']:,} devices loaded (SQLite, before the load): {memory['rssMiB']} MiB")
for label, key in runs:
    c, p = res[key]["config"], res[key]["ping"]
    print(f"{label:24} {c['perSecond']:7.0f} polls/s  p50 {c['p50ms']:6.2f} ms  p99 {c['p99ms']:6.2f} ms"
          f"  ({c['errors']} errors)  ratio to SQLite {c['perSecond'] / base:4.2f}  (ping {p['perSecond']:.0f}/s)")
print("a new mutual-TLS connection per call (ping with Connection: close), as outpostd's client does:")
for label, key in runs:
    h = res[key]["handshake"]
    print(f"{label:24} {h['perSecond']:7.0f} calls/s  p99 {h['p99ms']:6.2f} ms  ({h['errors']} errors)"
          f"  {res[key]['ping']['perSecond'] / max(h['perSecond'], 1):5.1f}x fewer than on kept-alive connections")
print("store writes per second (p99 ms), ratio to the same write on SQLite:")
for label, key in runs:
    cells = []
    for mode, what in [("info", "info"), ("metrics", "metrics"), ("logs", "log batches of 10")]:
        w = res[key][mode]
        cells.append(f"{what} {w['perSecond']:6.0f}/s ({w['p99ms']:6.2f}) x{w['perSecond'] / res['sqlite'][mode]['perSecond']:4.2f}"
                     + (f" [{w['errors']} errors]" if w['errors'] else ""))
    print(f"{label:24} " + "  ".join(cells))
PY
