#!/usr/bin/env bash
# outpostd's steady-state footprint in the booted image: RSS (VmRSS) and CPU
# (utime+stime over the last minute), as outpostd itself reads them from
# /proc. The guest idles IDLE seconds after the ready line, then the QEMU
# monitor presses the power button; on the way down outpostd writes its final
# status to /persist/status/last-status.json, which this script reads from
# the stopped disk. Goals: RSS <= 25 MB, CPU <= 1 %.
#
#   bench/agent-footprint.sh [IMAGE]     (default: $OUTPOST_OUT/outpost.img)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUTPOST_OUT:-$PWD/out}
IMAGE=${1:-$OUT/outpost.img}
IDLE=${IDLE:-70}
export PATH=$PATH:/usr/sbin:/sbin
WORK=$(mktemp -d /tmp/outpost-footprint.XXXXXX)
RUN_PID=
cleanup() {
    # Stop only the `outpost run` this script started (it stops its QEMU).
    if [ -n "$RUN_PID" ] && kill -0 "$RUN_PID" 2>/dev/null; then kill "$RUN_PID"; wait "$RUN_PID" || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

cp --sparse=always "$IMAGE" "$WORK/disk.img"
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
"$OUT/bin/outpost" run --headless --timeout 240 --console-log "$WORK/first.log" "$WORK/disk.img" >/dev/null
"$OUT/bin/outpost" run --headless --timeout $((IDLE + 300)) --console-log "$WORK/console.log" \
    --monitor "$WORK/mon.sock" --until never-printed-marker "$WORK/disk.img" >/dev/null 2>&1 &
RUN_PID=$!
wait_for "outpost: ready " 240
echo "agent-footprint: ready; idling ${IDLE} s" >&2
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
print(f"outpostd rss={rss_mb:.1f} MiB threads={a['threads']} cpu-last-minute={cpu:.2f}% "
      f"(idle {sys.argv[2]} s, uptime {s['uptimeSeconds']:.0f} s, watchdog {s['watchdog'].get('identity')})")
ok = rss_mb <= 25 and cpu <= 1.0
print("goals: RSS <= 25 MB, CPU <= 1 %:", "met" if ok else "MISSED")
sys.exit(0 if ok else 1)
PY
