#!/usr/bin/env bash
# build-grub.sh OUTDIR
#
# Builds GRUB for x86_64-efi from Debian's `grub2` source package with
# Outpost's module (outpost_select.c) compiled in-tree, and writes:
#
#   OUTDIR/BOOTX64.EFI   standalone image: every module stage 1 and stage 2
#                        need is embedded, plus early.cfg as the embedded
#                        config (it runs /EFI/BOOT/grub.cfg from the EFI
#                        partition GRUB was loaded from).
#   OUTDIR/grub.cfg      stage 1 (grub/stage1.cfg); the builder copies both to
#                        the EFI partition as /EFI/BOOT/BOOTX64.EFI and
#                        /EFI/BOOT/grub.cfg.
#   OUTDIR/grub-version  the Debian source version the image was built from.
#
# Why from source: the project's own module must be in the image, and
# Debian's tpm module (commands/efi/tpm.c) is what measures stage 1/2 into
# PCR 8/9, so we keep Debian's patched tree rather than upstream's.
#
# The result is cached under ${OUTPOST_CACHE:-/var/cache/outpost}/grub/<hash>/
# where <hash> is the sha256 of every input: this script, the module and its
# Makefile.core.def, early.cfg, stage1.cfg and the Debian source version.
# A second run with unchanged inputs only copies files.
#
# Needs root the first time (it adds a deb-src entry and installs build
# dependencies with apt-get); later cached runs need no privileges.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${OUTPOST_CACHE:-/var/cache/outpost}/grub"
SRC_LIST=/etc/apt/sources.list.d/outpost-src.sources
JOBS="${OUTPOST_JOBS:-$(nproc)}"

# Embedded modules. Stage 1: GPT + FAT + our selector + serial console.
# Stage 2: squashfs (with its decompressors), the Linux loader.
# tpm: Debian's GRUB measures every command / kernel cmdline into PCR 8 and
# every file it reads into PCR 9 once this verifier is registered; embedding
# it means it is active before the first config line runs.
MODULES=(
  part_gpt fat squash4 gzio xzio lzopio
  normal configfile echo test true sleep reboot halt
  search search_fs_uuid search_label search_fs_file
  serial terminal linux boot efi_gop
  tpm outpost_select
)

log() { echo "build-grub: $*"; }
die() { echo "build-grub: error: $*" >&2; exit 1; }

# --resolve-only: do the apt setup (deb-src entry, source version, update
# fallback), print "grub2 VERSION cache DIR [cached]" and stop; the fresh-machine
# test runs this against an isolated apt state.
RESOLVE_ONLY=0
if [ "${1:-}" = "--resolve-only" ]; then RESOLVE_ONLY=1; shift; fi
[ $# -eq 1 ] || die "usage: build-grub.sh [--resolve-only] OUTDIR"
OUTDIR="$1"
for f in build-grub.sh outpost_select.c Makefile.core.def early.cfg stage1.cfg; do
  [ -f "$HERE/$f" ] || die "missing input $HERE/$f"
done

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else die "needs root for: $* (run once as root)"; fi
}

# 1. A deb-src entry for bookworm, unless one exists already.
have_deb_src() {
  grep -Eqs '^[[:space:]]*deb-src[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    || grep -Eqs '^Types:.*deb-src' /etc/apt/sources.list.d/*.sources
}
if ! have_deb_src; then
  log "adding deb-src entry $SRC_LIST"
  as_root tee "$SRC_LIST" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi

# The newest grub2 source version apt knows (what `apt-get source` picks).
# apt-cache exits 100 while apt has no source lists yet (a fresh machine, or a
# deb-src entry added after the last update); that means "unknown", not failure.
src_version() {
  { apt-cache showsrc grub2 2>/dev/null || true; } | sed -n 's/^Version: //p' | {
    best=""
    while read -r v; do
      if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best="$v"; fi
    done
    echo "$best"
  }
}
VERSION="$(src_version)"
if [ -z "$VERSION" ]; then
  log "apt-get update (no grub2 source package known yet)"
  as_root apt-get update -qq >/dev/null || die "apt-get update failed; check /etc/apt/sources.list.d and the network"
  VERSION="$(src_version)"
  [ -n "$VERSION" ] || die "apt knows no grub2 source package even after apt-get update"
fi

HASH="$( { cd "$HERE" && sha256sum build-grub.sh outpost_select.c Makefile.core.def early.cfg stage1.cfg; \
           echo "debian-grub2 $VERSION"; } | sha256sum | cut -c1-64)"
CACHE_DIR="$CACHE_ROOT/$HASH"

publish() {
  mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
  cp "$CACHE_DIR/BOOTX64.EFI" "$CACHE_DIR/grub.cfg" "$CACHE_DIR/grub-version" "$OUTDIR/" \
    || die "cannot copy the result to $OUTDIR"
  log "wrote $OUTDIR/BOOTX64.EFI and $OUTDIR/grub.cfg (grub2 $VERSION, cache $CACHE_DIR)"
}

if [ "$RESOLVE_ONLY" = 1 ]; then
  state=""; [ -f "$CACHE_DIR/BOOTX64.EFI" ] && state=" cached"
  echo "grub2 $VERSION cache $CACHE_DIR$state"
  exit 0
fi

if [ -f "$CACHE_DIR/BOOTX64.EFI" ]; then
  log "cached: $CACHE_DIR"
  publish
  exit 0
fi

log "building GRUB x86_64-efi from Debian grub2 $VERSION (inputs $HASH)"
mkdir -p "$CACHE_ROOT" || die "cannot create $CACHE_ROOT"
WORK="$(mktemp -d "$CACHE_ROOT/work.XXXXXX")"
chmod 755 "$WORK"   # apt-get source downloads as _apt
LOG="$WORK/build.log"
STEP="start"
trap 'rc=$?; if [ $rc -ne 0 ]; then echo "build-grub: error: step \"$STEP\" failed (exit $rc); last lines of $LOG:" >&2; tail -n 5 "$LOG" 2>/dev/null | cut -c1-300 >&2; fi' EXIT
run() { "$@" >>"$LOG" 2>&1; }

# 2. Build tools, idempotently (apt-get install/build-dep do nothing when satisfied).
TOOLS=(dpkg-dev build-essential autoconf automake autopoint gettext python3 bison flex pkg-config)
missing=()
for p in "${TOOLS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
STEP="apt-get install build tools"
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >>"$LOG" 2>&1
fi
STEP="apt-get build-dep grub2"
if ! apt-get -s build-dep grub2 2>/dev/null | grep -q '^0 upgraded, 0 newly installed'; then
  log "installing grub2 build dependencies"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get build-dep -y grub2 >>"$LOG" 2>&1
fi

# 3. Debian's source, with Debian's patches applied by dpkg-source.
STEP="apt-get source grub2=$VERSION"
log "fetching and unpacking grub2 $VERSION"
(cd "$WORK" && run apt-get source --only-source "grub2=$VERSION")
SRC="$(find "$WORK" -maxdepth 1 -mindepth 1 -type d -name 'grub2-*' | head -n1)"
[ -n "$SRC" ] || die "apt-get source did not produce a grub2-* directory in $WORK"

# 4. Our module goes in through GRUB's GRUB_CONTRIB hook (autogen.sh reads
#    contrib/*/Makefile.core.def), the way Debian adds its grub-extras.
STEP="autogen"
log "adding contrib/outpost and regenerating the build system"
# autogen.sh symlinks contrib -> $GRUB_CONTRIB, so the module lives beside it.
mkdir -p "$SRC/outpost-contrib/outpost"
cp "$HERE/outpost_select.c" "$HERE/Makefile.core.def" "$SRC/outpost-contrib/outpost/"
(cd "$SRC" && GRUB_CONTRIB="$SRC/outpost-contrib" PYTHON=python3 run ./autogen.sh)

STEP="configure"
log "configuring (x86_64-efi only)"
(cd "$SRC" && run ./configure --with-platform=efi --target=x86_64 \
   --disable-werror --disable-nls --disable-grub-themes \
   --disable-grub-mount --disable-device-mapper --disable-libzfs --disable-liblzma)

STEP="make"
log "compiling modules and grub-mkimage with $JOBS jobs (takes a few minutes)"
# ascii.h / widthspec.h (generated from unifont at the top level) are needed
# by grub-core's font module; everything else at the top level is skipped.
(cd "$SRC" && run make -j"$JOBS" ascii.h widthspec.h \
   && run make -j"$JOBS" -C grub-core \
   && run make -j"$JOBS" -C grub-core/lib/gnulib && run make -j"$JOBS" grub-mkimage)
[ -f "$SRC/grub-core/outpost_select.mod" ] || die "outpost_select.mod was not built (see $LOG)"

# 5. The standalone image. Comment lines are dropped from the embedded
#    config because GRUB runs it with the rescue parser, which has no
#    comment syntax. The prefix has no device: GRUB fills in the device it
#    was loaded from.
STEP="grub-mkimage"
log "grub-mkimage: ${MODULES[*]}"
grep -Ev '^[[:space:]]*(#|$)' "$HERE/early.cfg" >"$WORK/early.cfg"
run "$SRC/grub-mkimage" -d "$SRC/grub-core" -O x86_64-efi -p /EFI/BOOT \
  -c "$WORK/early.cfg" -o "$WORK/BOOTX64.EFI" "${MODULES[@]}"

STEP="store"
mkdir -p "$WORK/out"
mv "$WORK/BOOTX64.EFI" "$WORK/out/BOOTX64.EFI"
cp "$HERE/stage1.cfg" "$WORK/out/grub.cfg"
echo "$VERSION" >"$WORK/out/grub-version"
cp "$WORK/early.cfg" "$WORK/out/early.cfg"
printf '%s\n' "${MODULES[@]}" >"$WORK/out/modules"
cp "$LOG" "$WORK/out/build.log"
# Publish atomically: a concurrent or interrupted run never sees half a result.
rm -rf "$CACHE_DIR"
mv "$WORK/out" "$CACHE_DIR"
rm -rf "$WORK"
trap - EXIT
log "built in ${SECONDS}s"
publish
