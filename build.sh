#!/usr/bin/env bash
# Outpost's one entry point.
#   ./build.sh          install what is missing, build the host CLI, outpostd and out/outpost.img (+ .qcow2)
#   ./build.sh run      the above, then boot out/outpost.img in QEMU (serial console on this terminal)
#   ./build.sh test     the above, then every test
#   ./build.sh controller  build the reference fleet controller into out/bin/outpost-controller
#   ./build.sh test-inputs  build what the tests need without running them (then: swift test --filter SUITE)
#   ./build.sh deps     only install the Debian packages
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
OUT=${OUTPOST_OUT:-$ROOT/out}
# A second build tree (e.g. .build-mine) lets two checkouts' builds run side by side.
SWIFT_FLAGS=(${OUTPOST_SCRATCH:+--scratch-path "$OUTPOST_SCRATCH"})
# The device's binaries (release, static Swift runtime) build in a tree of their own
# (.build-device), so that `./build.sh test` can build them beside the host's debug build:
# SwiftPM lets one build at a time use a tree, and the two configurations share no
# compiled module anyway.
DEVICE_FLAGS=(--scratch-path "${OUTPOST_SCRATCH:-$ROOT/.build}-device")
export PATH=$PATH:/usr/sbin:/sbin
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export OUTPOST_CACHE=${OUTPOST_CACHE:-/var/cache/outpost}

# Every log line carries the time since the start; the steps' durations are
# summed up at the end, so a slow CI run says where its time went.
TIMINGS=()
log() {
    TIMINGS+=("$SECONDS $*")
    printf '==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2
}
print_timings() {
    [ "${#TIMINGS[@]}" -gt 1 ] || return 0
    printf 'build.sh: where the time went (%dm%02ds in all):\n' $((SECONDS / 60)) $((SECONDS % 60)) >&2
    local i start next what
    for i in "${!TIMINGS[@]}"; do
        start=${TIMINGS[$i]%% *}
        what=${TIMINGS[$i]#* }
        next=$SECONDS
        [ $((i + 1)) -lt "${#TIMINGS[@]}" ] && next=${TIMINGS[$((i + 1))]%% *}
        printf '  %5ds  %s\n' $((next - start)) "${what:0:90}" >&2
    done
    if ((${#TEST_TIMES[@]})); then
        printf 'build.sh: the QEMU tests, one by one (the two lanes ran side by side):\n' >&2
        printf '%s\n' "${TEST_TIMES[@]}" >&2
    fi
}
die() { printf 'build.sh: error: %s\n' "$*" >&2; STEP=""; exit 1; }

# Every step names itself in STEP; whatever ends the script early (set -e, a
# failed pipeline, a tool's exit) is reported as one line naming that step.
STEP=""
on_exit() {
    local rc=$?
    # A background fresh-machine test or device build outlives nothing it was started beside.
    if [ -n "${FRESH_PID:-}" ] && kill -0 "$FRESH_PID" 2>/dev/null; then kill "$FRESH_PID" 2>/dev/null || true; fi
    if [ -n "${DEVICE_PID:-}" ] && kill -0 "$DEVICE_PID" 2>/dev/null; then kill "$DEVICE_PID" 2>/dev/null || true; fi
    print_timings
    if [ "$rc" -ne 0 ] && [ -n "$STEP" ]; then
        printf 'build.sh: error: step "%s" failed (exit %d); the lines above say why\n' "$STEP" "$rc" >&2
    fi
}
trap on_exit EXIT

# Debian packages the build and the tests use. Installed only when missing,
# with one `apt-get update` first, so a second run does nothing.
PACKAGES=(
    gdisk cgpt dosfstools mtools e2fsprogs fdisk util-linux
    qemu-utils qemu-system-x86 ovmf swtpm swtpm-tools tpm2-tools
    cryptsetup-bin squashfs-tools cpio gzip xz-utils zstd kmod
    libblkid-dev libnl-3-dev libnl-route-3-dev libtss2-dev libssl-dev pkg-config
    dpkg-dev openssl iproute2 dnsmasq nftables busybox-static binutils zlib1g-dev libsqlite3-dev postgresql
)
# Python modules the tests' independent clients use (the controller's wire-format client).
PYTHON_MODULES=(cryptography)

# apt's package lists exist once `apt-get update` has run; the slot build
# resolves and downloads root packages through them even when every host
# package is already installed.
apt_lists_ready() {
    compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null
}

apt_update() {
    [ "$(id -u)" = 0 ] || die "apt-get update needs root ($1)"
    log "apt-get update ($1)"
    apt-get update -q >&2 || die "apt-get update failed ($1); check /etc/apt/sources.list.d and the network"
}

deps() {
    STEP="install Debian packages"
    local missing=()
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing Debian packages: ${missing[*]}"
        [ "$(id -u)" = 0 ] || die "installing packages needs root (missing: ${missing[*]})"
        apt_update "${#missing[@]} packages missing"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
            || die "apt-get install failed for: ${missing[*]}"
    elif ! apt_lists_ready; then
        apt_update "no package lists yet; the slot build resolves Debian packages through them"
    fi
    local m
    for m in "${PYTHON_MODULES[@]}"; do
        python3 -c "import $m" 2>/dev/null && continue
        log "installing the Python module $m (pip)"
        python3 -m pip install -q "$m" >&2 || die "pip install $m failed"
    done
}

build_host() {
    STEP="build the host CLI"
    log "building the host CLI (outpost)"
    swift build "${SWIFT_FLAGS[@]}" --product outpost >&2
    mkdir -p "$OUT/bin"
    cp "$(swift build "${SWIFT_FLAGS[@]}" --product outpost --show-bin-path)/outpost" "$OUT/bin/outpost"
}

VERSION=${OUTPOST_VERSION:-$(cat VERSION)}

# The reference fleet controller (host side; its first build compiles
# Hummingbird, SwiftNIO and GRDB, which takes several minutes).
build_controller() {
    STEP="build outpost-controller"
    log "building outpost-controller"
    swift build "${SWIFT_FLAGS[@]}" --product outpost-controller >&2
    copy_controller
}

# The debug tree's outpost-controller into out/bin.
copy_controller() {
    mkdir -p "$OUT/bin"
    cp "$(swift build "${SWIFT_FLAGS[@]}" --show-bin-path)/outpost-controller" "$OUT/bin/outpost-controller"
}

# Stage-1 GRUB for the EFI partition (cached by grub/build-grub.sh).
build_grub() {
    STEP="build GRUB"
    log "GRUB (x86_64-efi, with outpost_select)"
    grub/build-grub.sh "$OUT/grub" >&2
    mkdir -p "$OUT/efi/EFI/BOOT"
    cp "$OUT/grub/BOOTX64.EFI" "$OUT/efi/EFI/BOOT/BOOTX64.EFI"
    cp "$OUT/grub/grub.cfg" "$OUT/efi/EFI/BOOT/grub.cfg"
}

# The device agent: release, static Swift runtime, FoundationEssentials only.
build_outpostd() {
    STEP="build outpostd"
    log "building outpostd (release, --static-swift-stdlib)"
    swift build "${DEVICE_FLAGS[@]}" -c release --static-swift-stdlib --product outpostd >&2
    local bin
    bin="$(swift build "${DEVICE_FLAGS[@]}" -c release --static-swift-stdlib --product outpostd --show-bin-path)/outpostd"
    # Early boot's own binary, the initramfs's /init: shares every module it has with outpostd.
    swift build "${DEVICE_FLAGS[@]}" -c release --static-swift-stdlib --product outpost-init >&2
    if grep -q -m1 'Foundation' <(nm "$(dirname "$bin")/outpost-init"); then
        die "outpost-init links Foundation (nm shows Foundation symbols); early boot uses the standard library only"
    fi
    # Static (Package.swift's -static-executable): no dynamic loader, no libraries in the initramfs.
    if grep -q -m1 'INTERP' <(readelf -l "$(dirname "$bin")/outpost-init"); then
        die "outpost-init is not a static executable (readelf shows a program interpreter)"
    fi
    strip -o "$OUT/bin/outpost-init" "$(dirname "$bin")/outpost-init"
    # FoundationEssentials only: one call that binds to full Foundation's overload
    # (e.g. String.contains when a dependency makes Foundation visible) links ICU, +47 MB.
    # grep reads nm through a process substitution: in a pipeline, grep's early exit on the
    # first match ends nm with SIGPIPE, and pipefail would turn the match into "no match".
    if grep -q -m1 '10Foundation\|FoundationInternationalization\|_FoundationICU' <(nm "$bin"); then
        die "outpostd links full Foundation (nm shows Foundation symbols); use FoundationEssentials or stdlib API"
    fi
    # Stripped: the slot carries no debug symbols (24 MB instead of 57 MB).
    strip -o "$OUT/bin/outpostd" "$bin"
}

# The development signing key, created on first use; its public half is the
# image's trust anchor unless OUTPOST_TRUST_DIR names production anchors.
dev_key() {
    if [ ! -f "$OUT/keys/dev.key.pem" ]; then
        log "creating a development signing key in out/keys (never use it in production)"
        "$OUT/bin/outpost" keys generate --out "$OUT/keys" --name dev >&2
    fi
}

build_slot() {
    STEP="build the slot image"
    dev_key
    log "building the slot image (version $VERSION)"
    "$OUT/bin/outpost" slot build --outpostd "$OUT/bin/outpostd" --init "$OUT/bin/outpost-init" --image-version "$VERSION" \
        --trust "${OUTPOST_TRUST_DIR:-$OUT/keys}" \
        --output "$OUT/slot.img" --work "$OUT/slot-work" --quiet
}

# CONFIG gets vault.json: the vault's approved policies for both slots, signed
# with the release key that signs the bundles, for the same security version.
build_image() {
    STEP="build the disk image"
    mkdir -p "$OUT"
    dev_key
    [ -d "$OUT/dev-config" ] || log "creating a development CONFIG directory in out/dev-config"
    scripts/dev-config.sh "$OUT/dev-config"
    log "building out/outpost.img"
    "$OUT/bin/outpost" image build --layout partitions/layout.json --config "$OUT/dev-config" \
        --slot "$OUT/slot.img" --efi "$OUT/efi" --measurements "$OUT/measurements.json" \
        --vault-key "${OUTPOST_SIGNING_KEY:-$OUT/keys/dev.key.pem}" --security-version "${OUTPOST_SECURITY_VERSION:-1}" \
        --output "$OUT/outpost.img" --qcow2 "$OUT/outpost.qcow2"
}

# A variant for the fault-injection tests: the same release outpostd with the
# package trait FaultInjection, which recompiles only OutpostAgent and outpostd
# (every other module is shared with the release build), in its own slot and
# image. Release images never contain the fault code. The next plain release
# build recompiles those two modules back (about a minute).
build_outpostd_fault() {
    STEP="build outpostd with fault injection"
    log "building outpostd with fault injection (tests only)"
    local f=("${DEVICE_FLAGS[@]}" -c release --static-swift-stdlib --traits FaultInjection --product outpostd)
    swift build "${f[@]}" >&2
    strip -o "$OUT/bin/outpostd-fault" "$(swift build "${f[@]}" --show-bin-path)/outpostd"
}

build_fault_image() {
    STEP="build the fault-injection image"
    log "building out/outpost-fault.img (fault injection; tests only)"
    "$OUT/bin/outpost" slot build --outpostd "$OUT/bin/outpostd-fault" --init "$OUT/bin/outpost-init" --image-version "$VERSION" \
        --trust "${OUTPOST_TRUST_DIR:-$OUT/keys}" \
        --output "$OUT/slot-fault.img" --work "$OUT/slot-work-fault" --quiet
    "$OUT/bin/outpost" image build --layout partitions/layout.json --config "$OUT/dev-config" \
        --slot "$OUT/slot-fault.img" --efi "$OUT/efi" --measurements "$OUT/measurements-fault.json" \
        --vault-key "${OUTPOST_SIGNING_KEY:-$OUT/keys/dev.key.pem}" --security-version "${OUTPOST_SECURITY_VERSION:-1}" \
        --output "$OUT/outpost-fault.img" --quiet
}

# out/update.bundle for the image just built, signed with a development key
# created on first use (production keys come from OUTPOST_SIGNING_KEY).
build_bundle() {
    STEP="build the update bundle"
    dev_key
    log "building out/update.bundle"
    "$OUT/bin/outpost" bundle create --quiet --key "${OUTPOST_SIGNING_KEY:-$OUT/keys/dev.key.pem}" \
        --image-version "$VERSION" --slot "$OUT/slot.img" --manifest "$OUT/slot.json" \
        --measurements "$OUT/measurements.json" --security-version "${OUTPOST_SECURITY_VERSION:-1}" \
        --output "$OUT/update.bundle"
    "$OUT/bin/outpost" bundle verify --quiet --trust "$OUT/keys" "$OUT/update.bundle" >&2
}

build_all() {
    deps
    build_host
    build_grub
    build_outpostd
    build_images
}

# The slot, the disk image and the update bundle, from out/bin.
build_images() {
    build_slot
    build_image
    build_bundle
}

# The device's binaries for the tests (outpostd and outpost-init, then the
# fault-injection outpostd) build in the background, in their own tree, while
# the controller and the test suites build in the debug tree: the release
# build's whole-module steps keep one core busy for long stretches, and the
# debug build fills the other. Its lines go to a log, printed when it is waited for.
DEVICE_PID=
DEVICE_LOG=
start_device_build() {
    log "building outpostd, outpost-init and the fault-injection outpostd (release) in the background"
    DEVICE_LOG=$(mktemp /tmp/outpost-device-build.XXXXXX)
    (
        started=$SECONDS
        build_outpostd
        build_outpostd_fault
        echo "build.sh: the device build took $((SECONDS - started)) s"
    ) >"$DEVICE_LOG" 2>&1 &
    DEVICE_PID=$!
}

wait_device_build() {
    wait_background "the device build" "$DEVICE_PID" "$DEVICE_LOG"
    DEVICE_PID=
}

# Waits for a job started in the background and prints its log (without the
# compiler's progress lines); a failure ends the run, naming the job.
wait_background() { # WHAT PID LOG
    STEP=$1
    log "waiting for $1"
    local status=0
    wait "$2" || status=$?
    grep -v '^\[[0-9]*/[0-9]*\] \(Compiling\|Write\|Emitting\)' "$3" >&2 || true
    rm -f "$3"
    [ "$status" = 0 ] || die "$1 failed (exit $status; its lines are above)"
}

# Everything the tests boot or run: the image, the controller, the test
# suites and the fault-injection image (`./build.sh test-inputs`, then one
# suite with `swift test --filter SUITE`). The controller and the test suites
# are one debug build (`swift build --build-tests`, which also links
# outpost-controller): one plan, both cores busy to the end, where two builds
# one after the other each waited on its own last module and link. The
# device's release build runs beside it.
build_test_inputs() {
    deps
    build_host
    build_grub
    start_device_build
    build_controller_and_tests
    wait_device_build
    # The fresh-machine test needs out/bin's outpost and outpostd; it runs beside the images.
    [ "${1:-}" = with-fresh-path ] && start_fresh_path_test
    build_images
    build_fault_image
}

build_controller_and_tests() {
    STEP="build outpost-controller and the test suites"
    log "building outpost-controller and the Swift test suites (one debug build)"
    swift build "${SWIFT_FLAGS[@]}" --build-tests >&2
    copy_controller
}

# The QEMU tests, each in a nested suite of OutpostSystemTests' `QEMU`, run in
# two lanes side by side, each lane one test at a time. Every assertion there is
# about order and content, with generous timeouts (the watchdog test asserts
# that the reset came after the hang and before any orderly reboot, not when),
# and two TCG guests on two cores get one core each. The lanes are balanced by
# the tests' measured times (README: "where the time went"); `check_lanes`
# fails the run if a QEMU test is in no lane or in both.
QEMU_LANE_A=(QEMU/FleetTests/registersReports QEMU/FleetTests/aStagedRollout QEMU/SupervisorTests QEMU/TerminalTests)
QEMU_LANE_B=(QEMU/UpdateTests QEMU/VaultTests QEMU/BootTests QEMU/FleetTests/theTPMStays QEMU/AppTests
             QEMU/AttestationTests QEMU/NetworkTests QEMU/FleetTests/anImageWithoutAController)
# Every QEMU test's time, from swift-testing's "Test ... passed after N seconds" lines.
TEST_TIMES=()

# One `swift test` process with ARGS (filters, skips); its lines appear as they
# come, each prefixed with [NAME] (two lanes interleave), and are kept in LOG.
test_lane() { # NAME LOG ARGS...
    local name=$1 log=$2
    shift 2
    # --ignore-lock: test runs of one build read it side by side (--skip-build writes nothing).
    # stdbuf: line-buffered through the pipe, so each lane's lines appear as they are printed.
    # LANE_NICE: the lane's CPU priority (nice value; 0 unless set).
    OUTPOST_OUT=$OUT nice -n "${LANE_NICE:-0}" stdbuf -oL -eL swift test "${SWIFT_FLAGS[@]}" --skip-build --ignore-lock \
        --no-parallel "$@" 2>&1 | tee "$log" | sed -u "s/^/[$name] /"
}

# Every QEMU test in exactly one lane, or the run stops here naming it.
check_lanes() {
    STEP="check the QEMU lanes"
    local tests test a b f
    tests=$(swift test "${SWIFT_FLAGS[@]}" list --skip-build 2>/dev/null | grep '^OutpostSystemTests\.QEMU/') \
        || die "swift test list found no QEMU tests"
    LANE_A_COUNT=0 LANE_B_COUNT=0
    while IFS= read -r test; do
        a=0 b=0
        for f in "${QEMU_LANE_A[@]}"; do [[ $test =~ $f ]] && a=1; done
        for f in "${QEMU_LANE_B[@]}"; do [[ $test =~ $f ]] && b=1; done
        [ $((a + b)) = 1 ] || die "QEMU test $test is in $((a + b)) lanes (QEMU_LANE_A/QEMU_LANE_B in build.sh)"
        LANE_A_COUNT=$((LANE_A_COUNT + a)) LANE_B_COUNT=$((LANE_B_COUNT + b))
    done <<<"$tests"
    log "QEMU lanes: $(wc -l <<<"$tests") tests, $LANE_A_COUNT in lane a and $LANE_B_COUNT in lane b"
}

# Until LOG shows swift-testing's "Test run started" or PID has ended; at most 300 s.
wait_for_tests_started() { # LOG PID
    local i
    for ((i = 0; i < 300; i++)); do
        grep -q "Test run started" "$1" 2>/dev/null && return 0
        kill -0 "$2" 2>/dev/null || return 0
        sleep 1
    done
}

# A lane passed only if its log says it ran every test it was given.
lane_ran_all() { # LOG COUNT
    grep -q "Test run with $2 tests\? in .* passed" "$1"
}

# --filter F for each F.
filters() { local f; for f in "$@"; do printf -- '--filter\n%s\n' "$f"; done; }

# Adds each test's time in LOG (one lane's) to TEST_TIMES: "  669s  [lane a] registersReports…() (passed)".
collect_test_times() { # LANE LOG
    local line
    while IFS= read -r line; do
        TEST_TIMES+=("$line")
    done < <(sed -n 's/^[^ ]* Test \(.*\) \(passed\|failed\) after \([0-9]*\)\.[0-9]* seconds.*/\3 \1 (\2)/p' "$2" \
             | grep -v '^[0-9]* run with ' | awk -v lane="$1" '{t=$1; $1=""; printf "  %5ds  [%s]%s\n", t, lane, substr($0, 1, 100)}')
}

# The fresh-machine test waits mostly on apt and dpkg: it runs beside the
# image builds (it needs out/bin's outpost and outpostd) and its output is
# printed whole once it ends.
FRESH_PID=
FRESH_LOG=
start_fresh_path_test() {
    log "fresh-machine setup test (isolated apt state, empty cache), beside the next builds"
    FRESH_LOG=$(mktemp /tmp/outpost-fresh-log.XXXXXX)
    Tests/fresh-path/fresh-path.sh >"$FRESH_LOG" 2>&1 &
    FRESH_PID=$!
}

wait_fresh_path_test() {
    wait_background "the fresh-machine setup test" "$FRESH_PID" "$FRESH_LOG"
    FRESH_PID=
}

run_tests() {
    STEP="run the tests"
    local failed=() logs status
    logs=$(mktemp -d /tmp/outpost-test-logs.XXXXXX)
    check_lanes
    # The host suites run one test at a time: on two cores, the suites that start
    # swtpm, PostgreSQL and hundreds of simulated devices starved each other when run
    # all at once (trivial tests took 257 s and clients timed out); alone they take
    # about 4 minutes. They run beside the QEMU lanes at a lower priority (nice 5):
    # the two TCG guests left a third of both cores idle (vmstat, 54 samples over the
    # lanes: 31 % idle on average), waiting on test windows, timeouts and each other,
    # and the host suites take that time instead of a slot of their own, while the
    # guests keep first claim on the CPU.
    log "host test suites (one test at a time, nice 5) beside the QEMU tests in two lanes:" \
        "${QEMU_LANE_A[*]} | ${QEMU_LANE_B[*]}"
    local pid_host pid_a pid_b status_a=0 status_b=0 args_a args_b
    LANE_NICE=5 test_lane host "$logs/host.log" --skip OutpostNetworkTests --skip 'OutpostSystemTests\.QEMU' & pid_host=$!
    # One after the other: each `swift test` plans the build first, and two plans at
    # once fail on the build database's lock ("no tests found"). A lane's tests started
    # means its plan is done (or it ended).
    wait_for_tests_started "$logs/host.log" "$pid_host"
    mapfile -t args_a < <(filters "${QEMU_LANE_A[@]}")
    mapfile -t args_b < <(filters "${QEMU_LANE_B[@]}")
    test_lane "lane a" "$logs/lane-a.log" "${args_a[@]}" & pid_a=$!
    wait_for_tests_started "$logs/lane-a.log" "$pid_a"
    test_lane "lane b" "$logs/lane-b.log" "${args_b[@]}" & pid_b=$!
    status=0
    wait "$pid_host" || status=$?
    [ "$status" = 0 ] || failed+=("host suites")
    log "host suites done; waiting for the QEMU lanes"
    wait "$pid_a" || status_a=$?
    wait "$pid_b" || status_b=$?
    lane_ran_all "$logs/lane-a.log" "$LANE_A_COUNT" || status_a=${status_a/#0/1}
    lane_ran_all "$logs/lane-b.log" "$LANE_B_COUNT" || status_b=${status_b/#0/1}
    collect_test_times "lane a" "$logs/lane-a.log"
    collect_test_times "lane b" "$logs/lane-b.log"
    [ "$status_a" = 0 ] || failed+=("QEMU lane a (exit $status_a; expected $LANE_A_COUNT tests to pass)")
    [ "$status_b" = 0 ] || failed+=("QEMU lane b (exit $status_b; expected $LANE_B_COUNT tests to pass)")

    # The network-namespace tests measure failover latency; they run on their
    # own so that QEMU guests booting in parallel do not skew the kernel's
    # link-event timing.
    log "network namespace tests"
    status=0
    test_lane netns "$logs/netns.log" --filter OutpostNetworkTests || status=$?
    [ "$status" = 0 ] || failed+=("network namespace suites")
    rm -rf "$logs"
    ((${#failed[@]} == 0)) || die "failed: ${failed[*]} (their lines are above)"
}

case "${1:-build}" in
    build) build_all ;;
    deps) deps ;;
    run)
        build_all
        log "booting out/outpost.img in QEMU (TCG); quit with Ctrl-A X"
        # exec, not a child: outpost stays this shell's foreground job, and QEMU,
        # started in outpost's own process group, may therefore use the terminal.
        exec "$OUT/bin/outpost" run "$OUT/outpost.img"
        ;;
    test)
        build_test_inputs with-fresh-path
        wait_fresh_path_test
        run_tests
        ;;
    test-inputs)
        build_test_inputs
        ;;
    controller)
        deps
        build_controller
        ;;
    -h|--help|help)
        sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
        ;;
    *) die "unknown command '$1' (use: build, run, test, controller, deps)" ;;
esac
