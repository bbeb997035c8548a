#!/usr/bin/env bash
# fresh-path.sh: proves that the setup steps work on a machine that has never
# run them, without needing such a machine. Each case runs in a private mount
# namespace (unshare -m) where tmpfs hides apt's state, so apt sees no package
# lists, no deb-src entry and no cache, and OUTPOST_CACHE is an empty
# directory. The host's apt state is untouched: the mounts vanish with the
# namespace.
#
#   1. build.sh deps with every package installed but no package lists runs
#      apt-get update (the slot build resolves packages through the lists);
#   2. build-grub.sh adds its deb-src entry, finds `apt-cache showsrc` empty
#      (exit 100 on a fresh machine), falls back to apt-get update and resolves
#      the same grub2 version the host resolves;
#   3. with those lists and an empty OUTPOST_CACHE, `outpost slot build`
#      downloads and unpacks the root's Debian packages (needs out/bin from
#      ./build.sh);
#   4. a failing apt-get update ends each script with one line naming the step.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUTPOST_OUT:-$ROOT/out}
passed=0 failed=0
ok()   { echo "fresh-path: ok: $*"; passed=$((passed + 1)); }
fail() { echo "fresh-path: FAILED: $*"; failed=$((failed + 1)); }

[ "$(id -u)" = 0 ] || { echo "fresh-path: error: needs root (unshare -m, mounts over /etc/apt and /var/lib/apt)"; exit 1; }

WORK=$(mktemp -d /tmp/outpost-fresh.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"   # apt downloads as _apt
# The host's binary sources only: no deb-src entry, as on a new machine.
mkdir -p "$WORK/sources"
for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    case "$(basename "$f")" in outpost-src.sources) continue ;; esac
    if grep -q '^Types:.*deb-src' "$f" || grep -q '^[[:space:]]*deb-src' "$f"; then continue; fi
    cp "$f" "$WORK/sources/"
done
# A source apt cannot read, for the failure case (a file: URI: no traffic).
mkdir -p "$WORK/broken-sources"
cat >"$WORK/broken-sources/broken.sources" <<'SRC'
Types: deb deb-src
URIs: file:///nonexistent-outpost-mirror
Suites: bookworm
Components: main
Trusted: yes
SRC

# isolated SOURCES_DIR CMD...: runs CMD with apt's lists, caches and
# sources.list.d replaced by empty tmpfs (sources.list.d seeded from SOURCES_DIR).
isolated() {
    local sources=$1; shift
    unshare -m --propagation private -- bash -euo pipefail -c '
        sources=$1; shift
        mount -t tmpfs outpost-fresh /etc/apt/sources.list.d
        cp "$sources"/* /etc/apt/sources.list.d/ 2>/dev/null || true
        [ ! -e /etc/apt/sources.list ] || mount --bind /dev/null /etc/apt/sources.list
        mount -t tmpfs outpost-fresh /var/lib/apt/lists && mkdir -p /var/lib/apt/lists/partial
        mount -t tmpfs outpost-fresh /var/cache/apt && mkdir -p /var/cache/apt/archives/partial
        "$@"' isolated "$sources" "$@"
}

# 1. deps: every package present, no lists.
out=$(isolated "$WORK/sources" bash -c './build.sh deps 2>&1; echo "exit=$?"; ls /var/lib/apt/lists | grep -c _Packages' 2>&1) || true
if grep -q 'apt-get update (no package lists yet' <<<"$out" && grep -q '^exit=0$' <<<"$out" \
   && [ "$(tail -n1 <<<"$out")" -gt 0 ]; then
    ok "build.sh deps ran apt-get update when apt had no package lists"
else
    fail "build.sh deps without package lists: $out"
fi

# 2. GRUB's setup: deb-src entry, showsrc exits 100, update fallback.
host_line=$(OUTPOST_CACHE="$WORK/cache" grub/build-grub.sh --resolve-only "$WORK/grub" 2>/dev/null | tail -n1)
out=$(isolated "$WORK/sources" bash -c '
    apt-cache showsrc grub2 >/dev/null 2>&1 && echo "precondition: showsrc answered" || echo "showsrc-exit=$?"
    OUTPOST_CACHE='"$WORK/cache"' grub/build-grub.sh --resolve-only '"$WORK/grub"' 2>&1; echo "exit=$?"
    ls /etc/apt/sources.list.d' 2>&1) || true
fresh_line=$(grep '^grub2 ' <<<"$out" || true)
if grep -q '^showsrc-exit=100$' <<<"$out" && grep -q 'adding deb-src entry' <<<"$out" \
   && grep -q 'apt-get update (no grub2 source package known yet)' <<<"$out" && grep -q '^exit=0$' <<<"$out" \
   && grep -q '^outpost-src.sources$' <<<"$out" && [ -n "$fresh_line" ] && [ "$fresh_line" = "$host_line" ]; then
    ok "build-grub.sh on fresh apt state: $fresh_line"
else
    fail "build-grub.sh on fresh apt state (host: '$host_line'): $out"
fi
case "$fresh_line" in *" cached") fail "OUTPOST_CACHE was not empty: $fresh_line" ;; esac

# 3. The slot's Debian packages into an empty cache.
if [ -x "$OUT/bin/outpost" ] && [ -x "$OUT/bin/outpostd" ] && [ -d "$OUT/keys" ]; then
    out=$(isolated "$WORK/sources" bash -c '
        apt-get update -qq >/dev/null
        OUTPOST_CACHE='"$WORK/cache"' "$1"/bin/outpost slot build --outpostd "$1"/bin/outpostd --image-version 0.0.0-fresh \
            --trust "$1"/keys --output '"$WORK/slot.img"' --work '"$WORK/slot-work"' --quiet 2>&1; echo "exit=$?"' _ "$OUT" 2>&1) || true
    debs=$(find "$WORK/cache/debs" -name '*.deb' 2>/dev/null | wc -l)
    if grep -q '^exit=0$' <<<"$out" && [ -s "$WORK/slot.img" ] && [ "$debs" -gt 0 ]; then
        ok "slot build with an empty OUTPOST_CACHE fetched $debs packages"
    else
        fail "slot build with an empty OUTPOST_CACHE ($debs packages): $out"
    fi
else
    fail "out/bin/outpost, out/bin/outpostd or out/keys missing: run ./build.sh first"
fi

# 4. A failing apt-get update is one line naming what failed.
out=$(isolated "$WORK/broken-sources" bash -c './build.sh deps 2>&1 >/dev/null; echo "exit=$?"' 2>&1) || true
if grep -q '^exit=1$' <<<"$out" && grep -q '^build.sh: error: apt-get update failed' <<<"$out" \
   && [ "$(grep -c '^build.sh: error:' <<<"$out")" = 1 ]; then
    ok "build.sh deps: $(grep '^build.sh: error:' <<<"$out")"
else
    fail "build.sh deps with a broken source: $out"
fi
out=$(isolated "$WORK/broken-sources" bash -c 'OUTPOST_CACHE='"$WORK/cache"' grub/build-grub.sh --resolve-only '"$WORK/grub"' 2>&1 >/dev/null; echo "exit=$?"' 2>&1) || true
if grep -q '^exit=1$' <<<"$out" && grep -q '^build-grub: error: apt-get update failed' <<<"$out"; then
    ok "build-grub.sh: $(grep '^build-grub: error:' <<<"$out")"
else
    fail "build-grub.sh with a broken source: $out"
fi

echo "fresh-path: $passed passed, $failed failed"
[ "$failed" = 0 ]
