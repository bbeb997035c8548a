#!/usr/bin/env bash
# outpostd's steady-state footprint in the booted image: RSS (VmRSS) and CPU
# (utime+stime over the last minute), as outpostd itself reads them from
# /proc. The guest idles IDLE seconds after the ready line, then the QEMU
# monitor presses the power button; on the way down outpostd writes its final
# status to /persist/status/last-status.json, which this script reads from
# the stopped disk. Goals: RSS <= 20 MiB, CPU <= 1 %.
#
#   bench/agent-footprint.sh [IMAGE]     (default: $OUTPOST_OUT/outpost.img)
#   bench/agent-footprint.sh --managed   the same, with the controller client running: a
#       controller (`outpost-controller init` + `serve`) on the host's loopback, reached by
#       the guest at 10.0.2.2, and an image built from its CONFIG and out/slot.img.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUTPOST_OUT:-$PWD/out}
MANAGED=
if [ "${1:-}" = "--managed" ]; then MANAGED=1; shift; fi
IMAGE=${1:-$OUT/outpost.img}
IDLE=${IDLE:-70}
export PATH=$PATH:/usr/sbin:/sbin
WORK=$(mktemp -d /tmp/outpost-footprint.XXXXXX)
RUN_PID=
CONTROLLER_PID=
cleanup() {
    # Stop only what this script started: `outpost run` (it stops its QEMU) and the controller.
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then kill "$RUN_PID"; wait "$RUN_PID" || true; fi
    if [ -n "$CONTROLLER_PID" ] && kill -0 "$CONTROLLER_PID" 2>/dev/null; then kill "$CONTROLLER_PID"; wait "$CONTROLLER_PID" || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "$MANAGED" ]; then
    [ -x "$OUT/bin/outpost-controller" ] || { echo "agent-footprint: no $OUT/bin/outpost-controller; run ./build.sh controller" >&2; exit 1; }
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    "$OUT/bin/outpost-controller" init "$WORK/fleet" --host 10.0.2.2 --port "$PORT" >/dev/null
    "$OUT/bin/outpost" image build --quiet --config "$WORK/fleet/config" --slot "$OUT/slot.img" --efi "$OUT/efi" \
        --output "$WORK/disk.img"
    "$OUT/bin/outpost-controller" serve --data "$WORK/fleet" --listen "127.0.0.1:$PORT" --log-level warning \
        >"$WORK/controller.log" 2>&1 &
    CONTROLLER_PID=$!
else
    cp --sparse=always "$IMAGE" "$WORK/disk.img"
fi
monitor() {
    python3 - "$WORK/mon.sock" "$1" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.send((sys.argv[2] + "\n").encode()); time.sleep(0.5)
PY
}
wait_for() { # text timeout
    local deadline=$((SECONDS + $2))
    until grep -aq "$1" "$WORK/console.log" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { echo "agent-footprint: no '$1' within $2 s" >&2; tail -20 "$WORK/console.log" >&2; exit 1; }
        sleep 1
    done
}

# First boot formats PERSIST; the measured boot is the second one.
"$OUT/bin/outpost" run --headless --timeout 240 --console-log "$WORK/first.log" "$WORK/disk.img" >/dev/null \
    || { tail -20 "$WORK/first.log" >&2; exit 1; }
"$OUT/bin/outpost" run --headless --timeout $((IDLE + 300)) --console-log "$WORK/console.log" \
    --monitor "$WORK/mon.sock" --until never-printed-marker "$WORK/disk.img" >/dev/null 2>&1 &
RUN_PID=$!
wait_for "outpost: ready " 240
if [ -n "$MANAGED" ]; then
    wait_for "fleet: registered with" 240
    "$OUT/bin/outpost-controller" device list --data "$WORK/fleet" >&2
fi
echo "agent-footprint: ready${MANAGED:+ and registered}; idling ${IDLE} s" >&2
sleep "$IDLE"
monitor system_powerdown
wait_for "outpost: halt: powering off" 90
wait "$RUN_PID" || true
RUN_PID=

# Read the final status from PERSIST (journal replayed on a copy).
read -r FIRST COUNT < <(sgdisk -i 5 "$WORK/disk.img" | awk '/First sector/ {f=$3} /Last sector/ {l=$3} END {print f, l-f+1}')
dd if="$WORK/disk.img" of="$WORK/persist.fs" bs=512 skip="$FIRST" count="$COUNT" conv=sparse status=none
e2fsck -fy "$WORK/persist.fs" >/dev/null 2>&1 || true
debugfs -R "cat /status/last-status.json" "$WORK/persist.fs" 2>/dev/null > "$WORK/status.json"
python3 - "$WORK/status.json" "$IDLE" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
a = s["agent"]
rss_mb = a["rssKiB"] / 1024
cpu = a["cpuPercentLastMinute"]
print(("managed: " if s.get("fleet", {}).get("registered") else "") + f"outpostd rss={rss_mb:.1f} MiB threads={a['threads']} cpu-last-minute={cpu:.2f}% "
      f"(idle {sys.argv[2]} s, uptime {s['uptimeSeconds']:.0f} s, watchdog {s['watchdog'].get('identity')})")
if a.get("rssAnonKiB") is not None:
    print(f"  of which anonymous (heap, stacks) {a['rssAnonKiB'] / 1024:.1f} MiB, "
          f"file pages (code and data from the root) {a['rssFileKiB'] / 1024:.1f} MiB, "
          f"shared memory (files in RAM, the initramfs) {(a.get('rssShmemKiB') or 0) / 1024:.1f} MiB")
by_thread = a.get("cpuPercentLastMinuteByThread") or {}
if by_thread:
    print("  cpu-last-minute by thread: " + ", ".join(f"{n} {p:.2f}%" for n, p in sorted(by_thread.items(), key=lambda kv: -kv[1])))
ok = rss_mb <= 20 and cpu <= 1.0
print("goals: RSS <= 20 MiB, CPU <= 1 %:", "met" if ok else "MISSED")
sys.exit(0 if ok else 1)
PY
