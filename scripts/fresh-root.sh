#!/usr/bin/env bash
# Runs the README's two set-up commands on a fresh, minimal Debian, as a stranger would:
# builds a root with debootstrap (minbase plus sudo, git, ca-certificates, python3), adds a
# normal user with passwordless sudo, clones this repository's current commit (committed
# work only) into that user's home, and runs as that user, with CI=true,
#   ./scripts/demo.sh, then ./scripts/test.sh      (each must pass), then
#   ./scripts/demo.sh, then ./scripts/test.sh      again, with the user's sudo taken away:
#                                                 each must pass, say nothing about
#                                                 installing, and change no package.
# At the end: one line per command with pass/fail and wall time; exit 1 if any failed.
#
#   sudo scripts/fresh-root.sh SUITE ARCH [--tests "PYTEST ARGS"] [--keep] [--dir DIR]
#   sudo scripts/fresh-root.sh bookworm amd64
#   sudo scripts/fresh-root.sh trixie arm64             # emulated: the demo and a test subset
#   sudo scripts/fresh-root.sh bookworm amd64 --tests "-k session -x"
#
# SUITE: a Debian suite (bookworm, trixie). ARCH: a Debian architecture; one the machine
# cannot run itself (arm64 and armhf on a PC) runs through qemu-user-static and binfmt_misc.
# --tests   arguments for ./scripts/test.sh (pytest), for both of its runs. Default: none (the
#           whole suite) natively; emulated, the pure core's test files (DEFAULT_EMULATED_TESTS
#           below says which and why; the summary says that a subset ran).
# --keep    keep the root (and its mounts are still removed) for a look around:
#           sudo chroot DIR/root runuser -l pi
# --dir     where the root and the logs go (default /var/tmp/pi-agent-fresh-root/SUITE-ARCH);
#           the root is deleted at the end, the logs (DIR/logs) are kept.
#
# Needs root (debootstrap, chroot, mounts). Installs the host tools it lacks with apt-get
# (debootstrap; for an emulated ARCH also qemu-user-static and binfmt-support) and says so.
# debootstrap's output is cached as /var/cache/pi-agent-fresh-root/SUITE-ARCH.tar (delete it
# to build anew); every run starts from a pristine copy of it. Whatever happens, the mounts
# in the root are removed and processes left in it are ended on exit.
set -euo pipefail
# The whole script is one block, read before any of it runs: a run takes an hour, and bash
# would otherwise read an edited (or checked-out) file mid-run from the old offsets.
{

# Emulated, Python runs about ten times slower and every timing-based test is at the mercy
# of the emulator, so by default only the pure core's tests run (protocol, states, backoff,
# capture gate, formats and resampling, config, LEDs, button, WAV devices, logging, spec,
# README, unit file, installer): 370 tests that take about 25 s natively and reach numpy,
# soxr, webrtcvad, pydantic-core, jsonschema/rpds and gpiozero's mock pins. Not run: the
# whole-daemon and SDK tests (test_daemon, test_session, test_fake_agent*, ...: processes
# held to deadlines of a few seconds), the real-audio tests (PulseAudio) and the fault suite.
# The demo, which does run, is the whole daemon end to end.
DEFAULT_EMULATED_TESTS='-m "not audio and not faults and not slow"'
for f in protocol states backoff gate formats config leds button files_audio logging alarms \
         spec_copy readme systemd_unit install; do
    DEFAULT_EMULATED_TESTS+=" tests/test_$f.py"
done
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
CACHE_DIR=/var/cache/pi-agent-fresh-root
USER_NAME=pi
DEMO_LIMIT=1800      # seconds; generous for an emulated first run (apt, pip, a C build)
TESTS_LIMIT=10800

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
say() { echo "fresh-root: $*" >&2; }
die() { say "$*"; exit 2; }

SUITE="" ARCH="" TESTS="" TESTS_SET=0 KEEP=0 WORK=""
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --tests) [ $# -ge 2 ] || die "--tests needs an argument"; TESTS="$2"; TESTS_SET=1; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --dir) [ $# -ge 2 ] || die "--dir needs an argument"; WORK="$2"; shift 2 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) if [ -z "$SUITE" ]; then SUITE="$1"; elif [ -z "$ARCH" ]; then ARCH="$1"; else die "too many arguments (see --help)"; fi; shift ;;
    esac
done
if [ -z "$SUITE" ] || [ -z "$ARCH" ]; then usage >&2; exit 2; fi
[[ "$SUITE$ARCH" =~ ^[a-z0-9]+$ ]] || die "SUITE and ARCH are plain names such as bookworm amd64"
[ "$(id -u)" -eq 0 ] || die "run it as root (debootstrap, chroot and mounts need it): sudo $0 $*"
for tool in dpkg apt-get chroot git; do
    command -v "$tool" >/dev/null || die "needs a Debian-based host with $tool"
done

# ---------------------------------------------------------------- host tools and emulation
HOST_ARCH="$(dpkg --print-architecture)"
QEMU=""   # qemu's name for ARCH when the host cannot run ARCH's programs itself
case "$HOST_ARCH:$ARCH" in
    amd64:amd64|amd64:i386|arm64:arm64|arm64:armhf|armhf:armhf|i386:i386) ;;
    *:arm64) QEMU=aarch64 ;;
    *:armhf|*:armel) QEMU=arm ;;
    *:amd64) QEMU=x86_64 ;;
    *:i386) QEMU=i386 ;;
    *:riscv64) QEMU=riscv64 ;;
    *:ppc64el) QEMU=ppc64le ;;
    *:s390x) QEMU=s390x ;;
    *) die "do not know how to run $ARCH programs on $HOST_ARCH" ;;
esac

need=(debootstrap)
[ -n "$QEMU" ] && need+=(qemu-user-static binfmt-support)
missing=()
for p in "${need[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing host packages: ${missing[*]}"
    log="$(mktemp)"
    if ! { apt-get -q update && DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"; die "could not install ${missing[*]}"
    fi
    rm -f "$log"
fi
[ -e "/usr/share/debootstrap/scripts/$SUITE" ] || die "this debootstrap does not know $SUITE (a newer debootstrap may)"

if [ -n "$QEMU" ]; then
    # binfmt_misc is the kernel's hook that hands foreign executables to qemu. In a container
    # it may be missing (no such file system), unmounted, or mounted but not writable.
    bm=/proc/sys/fs/binfmt_misc
    if [ ! -e "$bm/status" ]; then
        grep -qw binfmt_misc /proc/filesystems \
            || die "this kernel has no binfmt_misc: $ARCH programs cannot be run here (use a native $ARCH machine)"
        say "mounting binfmt_misc on $bm"
        mount -t binfmt_misc binfmt_misc "$bm" \
            || die "binfmt_misc cannot be mounted in this container (it needs CAP_SYS_ADMIN on the host's kernel): $ARCH programs cannot be run here"
    fi
    if [ ! -e "$bm/qemu-$QEMU" ]; then
        say "registering qemu-$QEMU with binfmt_misc"
        update-binfmts --enable "qemu-$QEMU" >/dev/null 2>&1 || update-binfmts --import "qemu-$QEMU" >/dev/null 2>&1 || true
    fi
    grep -qx enabled "$bm/qemu-$QEMU" 2>/dev/null \
        || die "qemu-$QEMU is not registered with binfmt_misc (update-binfmts --enable qemu-$QEMU failed): $ARCH programs cannot be run here"
    # Without the C flag the kernel takes the credentials of qemu, not of the program it
    # runs, so setuid programs lose their privilege: sudo in the root says "effective uid
    # is not 0" (Debian 12's qemu-user-static registers without it). Register it again
    # with C added, and say so: it stays that way on this machine until the next boot or
    # update-binfmts.
    entry="$bm/qemu-$QEMU"
    if ! grep -q '^flags:.*C' "$entry"; then
        say "re-registering qemu-$QEMU with binfmt_misc's C flag (setuid programs such as sudo work only with it)"
        field() { sed -n "s/^$1 //p" "$entry"; }
        interp="$(field interpreter)" flags="$(field flags:)" offset="$(field offset)"
        magic="$(field magic | sed 's/../\\x&/g')" mask="$(field mask | sed 's/../\\x&/g')"
        echo -1 >"$entry"
        printf ':qemu-%s:M:%s:%s:%s:%s:%sC\n' "$QEMU" "$offset" "$magic" "$mask" "$interp" "$flags" >"$bm/register" \
            || die "could not register qemu-$QEMU again with the C flag (update-binfmts --enable qemu-$QEMU restores it)"
        grep -q '^flags:.*C' "$entry" || die "qemu-$QEMU has no C flag: sudo cannot work in an emulated root"
    fi
    # Without the F flag the kernel looks the interpreter up inside the root: copy it in.
    QEMU_IN_ROOT=0
    grep -q '^flags:.*F' "$bm/qemu-$QEMU" || QEMU_IN_ROOT=1
fi

# ---------------------------------------------------------------- directories, lock, cleanup
WORK="${WORK:-/var/tmp/pi-agent-fresh-root/$SUITE-$ARCH}"
[[ "$WORK" != *[[:space:]]* ]] || die "--dir must not contain white space"
mkdir -p "$WORK" "$CACHE_DIR"
WORK="$(cd "$WORK" && pwd -P)"
ROOT="$WORK/root"
LOGS="$WORK/logs"
CACHE="$CACHE_DIR/$SUITE-$ARCH.tar"
REPO="$(cd "$(dirname "$0")/.." && pwd -P)"
COMMIT="$(git -C "$REPO" rev-parse HEAD)"
SHORT="$(git -C "$REPO" rev-parse --short "$COMMIT")"   # HEAD may move during the run
exec 9>"$WORK/.lock"
flock -n 9 || die "another fresh-root run is using $WORK"

# Mount points under the root, deepest first (mount prints them in /proc/mounts order).
mounts_in_root() { awk -v r="$ROOT" '$2 == r || index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r; }

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local rc=$? pid p m tries
    set +e
    trap - EXIT INT TERM HUP
    # Processes still in the root (a sound server a test left, a hung run) hold its mounts.
    for sig in TERM KILL; do
        for p in /proc/[0-9]*; do
            pid="${p#/proc/}"
            [ "$(readlink "$p/root" 2>/dev/null)" = "$ROOT" ] && kill "-$sig" "$pid" 2>/dev/null
        done
        sleep 1
    done
    for tries in 1 2 3; do
        m="$(mounts_in_root)"
        [ -z "$m" ] && break
        while read -r p; do
            umount "$p" 2>/dev/null || { [ "$tries" -eq 3 ] && umount -l "$p"; }
        done <<<"$m"
    done
    if [ -n "$(mounts_in_root)" ]; then
        say "could not unmount everything under $ROOT; left it in place:"; mounts_in_root >&2
        rc=1
    elif [ "$KEEP" -eq 0 ]; then
        rm -rf --one-file-system "$ROOT"
    else
        say "kept the root: $ROOT (sudo chroot $ROOT runuser -l $USER_NAME)"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# A root left by an interrupted run: its mounts go first, then the root itself.
if [ -e "$ROOT" ]; then
    if [ -n "$(mounts_in_root)" ]; then
        say "unmounting what an earlier run left in $ROOT"
        mounts_in_root | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
    fi
    [ -z "$(mounts_in_root)" ] || die "$ROOT still has mounts; remove them by hand"
    rm -rf --one-file-system "$ROOT"
fi
rm -rf "$LOGS"
mkdir -p "$LOGS"

# ---------------------------------------------------------------- the root
if [ ! -f "$CACHE" ]; then
    say "debootstrap $SUITE $ARCH (minbase + sudo git ca-certificates python3): once, then cached as $CACHE"
    build="$WORK/debootstrap"
    rm -rf --one-file-system "$build"
    started=$SECONDS
    if ! debootstrap --variant=minbase --arch="$ARCH" --include=sudo,git,ca-certificates,python3 \
            "$SUITE" "$build" "$MIRROR" >"$LOGS/debootstrap.log" 2>&1; then
        tail -n 30 "$LOGS/debootstrap.log" >&2
        # debootstrap may leave its own mounts (proc, sys) behind after a failure.
        awk -v r="$build" 'index($2, r "/") == 1 { print $2 }' /proc/mounts | sort -r | xargs -r umount -l
        die "debootstrap failed (the whole log: $LOGS/debootstrap.log)"
    fi
    tar -C "$build" --numeric-owner -cf "$CACHE.part" .
    mv "$CACHE.part" "$CACHE"
    rm -rf --one-file-system "$build"
    say "debootstrap took $((SECONDS - started)) s"
else
    say "using the cached debootstrap output $CACHE (from $(date -u -r "$CACHE" +%F))"
fi

mkdir -p "$ROOT"
tar -C "$ROOT" --numeric-owner -xpf "$CACHE"
if [ -n "$QEMU" ] && [ "$QEMU_IN_ROOT" -eq 1 ]; then
    cp "/usr/bin/qemu-$QEMU-static" "$ROOT/usr/bin/"
fi

# What a freshly installed machine has and debootstrap does not set up: the suite's
# updates and security updates, a name server, localhost.
cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
rm -f "$ROOT/etc/resolv.conf"
cp -L /etc/resolv.conf "$ROOT/etc/resolv.conf"
grep -qw localhost "$ROOT/etc/hosts" 2>/dev/null || printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >>"$ROOT/etc/hosts"
# Nothing apt installs in the root may start a daemon on this machine (the chroot way of
# saying "no init system here"); the tests start what they need themselves.
printf '#!/bin/sh\nexit 101\n' >"$ROOT/usr/sbin/policy-rc.d"
chmod 755 "$ROOT/usr/sbin/policy-rc.d"

mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys" 2>/dev/null || { mount --bind /sys "$ROOT/sys" && mount --make-slave "$ROOT/sys"; }
# Bind mounts are made slaves: where the host's mounts are shared (systemd's default), a
# mount made under the root's /dev would otherwise appear under the host's /dev as well.
mount --bind /dev "$ROOT/dev" && mount --make-slave "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts" && mount --make-slave "$ROOT/dev/pts"
# Shared memory and /run: the root's own (empty, like after a boot), not the host's.
mkdir -p "$ROOT/dev/shm"
mount -t tmpfs -o mode=1777,nosuid,nodev shm "$ROOT/dev/shm"
mount -t tmpfs -o mode=755,nosuid,nodev run "$ROOT/run"
mkdir -p "$ROOT/run/lock" && chmod 1777 "$ROOT/run/lock"
[ -e "$ROOT/run/shm" ] || ln -s /dev/shm "$ROOT/run/shm"

in_root() { chroot "$ROOT" "$@"; }

# On a network that intercepts TLS with its own authority (some companies do; so does the
# sandbox this was written in), the host trusts that authority through a certificate added
# to /usr/local/share/ca-certificates. The root is given the same ones, and pip is told to
# use the system's list (pip < 24.2, as in Debian 12's venv, uses only its own copy).
# Nothing is added where the host has no such certificate.
local_cas=(/usr/local/share/ca-certificates/*.crt)
if [ -e "${local_cas[0]}" ]; then
    say "the root trusts the host's local certificate authorities: ${local_cas[*]##*/}"
    cp "${local_cas[@]}" "$ROOT/usr/local/share/ca-certificates/"
    in_root update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates failed in the root"
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$ROOT/etc/pip.conf"
fi
in_root useradd --create-home --shell /bin/bash "$USER_NAME"
SUDOERS="$ROOT/etc/sudoers.d/90-$USER_NAME"
printf '%s ALL=(ALL) NOPASSWD: ALL\n' "$USER_NAME" >"$SUDOERS"
chmod 440 "$SUDOERS"
home="$ROOT/home/$USER_NAME"
git clone --quiet --no-hardlinks "$REPO" "$home/pi-agent"
git -C "$home/pi-agent" checkout --quiet --detach "$COMMIT"
in_root chown -R "$USER_NAME:$USER_NAME" "/home/$USER_NAME"

PYVER="$(in_root python3 -c 'import platform; print(platform.python_version())')"
MACHINE="$(in_root uname -m)"
DEBVER="$(cat "$ROOT/etc/debian_version")"
EMULATED=""
[ -n "$QEMU" ] && EMULATED=" (emulated by qemu-$QEMU-static)"
if [ "$TESTS_SET" -eq 0 ] && [ -n "$QEMU" ]; then TESTS="$DEFAULT_EMULATED_TESTS"; fi
say "root: Debian $SUITE ($DEBVER) $ARCH, $MACHINE$EMULATED, Python $PYVER; commit $SHORT in /home/$USER_NAME/pi-agent"
[ -n "$TESTS" ] && say "test runs: ./scripts/test.sh $TESTS"

# ---------------------------------------------------------------- the runs
NAMES=() RESULTS=() TIMES=() NOTES=() FAILED=0

fmt_time() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

# run NAME LIMIT COMMAND: as the user, in the clone, with CI=true and no terminal (so a
# password prompt cannot wait for anyone); output to the screen and to LOGS/NAME.log.
run() {
    local name="$1" limit="$2" cmd="$3" log="$LOGS/$1.log" start rc
    say "---- $name: $cmd"
    start=$SECONDS
    set +e
    timeout --kill-after=30 "$limit" chroot "$ROOT" /usr/sbin/runuser -l "$USER_NAME" \
        -c "cd ~/pi-agent && CI=true $cmd" </dev/null 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    NAMES+=("$name")
    TIMES+=("$(fmt_time $((SECONDS - start)))")
    if [ "$rc" -eq 0 ]; then RESULTS+=(pass); else RESULTS+=("FAIL"); FAILED=1; fi
    local note=""
    case "$rc" in
        0) ;;
        124|137) note="timed out after $limit s; " ;;
        *) note="exit $rc; " ;;
    esac
    # pytest's closing line: "N passed, N skipped, ... in 512.3s"
    local counts
    counts="$(grep -Eo '[0-9]+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected)([, ]+[0-9]+ (passed|failed|skipped|errors?|xfailed|xpassed|deselected|warnings?))*' "$log" | tail -n 1 || true)"
    [ -n "$counts" ] && note+="$counts; "
    NOTES+=("$note")
}

# A second run must find everything in place: it may not say it is installing, may not
# need sudo (the user has none now), and may not change a Debian package or the venv.
check_second() {
    local i=$((${#NAMES[@]} - 1)) log="$LOGS/${NAMES[-1]}.log" setup bad="" changed
    # The set-up's part of the output: everything before pytest's header (all of the demo's).
    setup="$(sed '/^=* test session starts =*$/,$d' "$log")"
    if grep -qi 'installing' <<<"$setup"; then bad+="said: $(grep -i -m1 'installing' <<<"$setup"); "; fi
    if grep -Eqi '^sudo: |password' <<<"$setup"; then bad+="wanted sudo: $(grep -Ei -m1 '^sudo: |password' <<<"$setup"); "; fi
    if ! cmp -s "$ROOT/var/lib/dpkg/status" "$WORK/dpkg-status.before"; then bad+="the Debian packages changed; "; fi
    changed="$(find "$home/pi-agent/.venv" -type f -newer "$WORK/marker" -not -name '*.pyc' 2>/dev/null | head -n 3 || true)"
    [ -n "$changed" ] && bad+="the venv changed: $(tr '\n' ' ' <<<"$changed"); "
    if [ -n "$bad" ]; then
        RESULTS[i]=FAIL; FAILED=1; NOTES[i]+="NOT a no-op: $bad"
    else
        NOTES[i]+="installed nothing, no sudo"
    fi
}

run demo-1 "$DEMO_LIMIT" "./scripts/demo.sh"
run tests-1 "$TESTS_LIMIT" "./scripts/test.sh${TESTS:+ $TESTS}"

# Second runs: no sudo at all, so a set-up that wanted to install would fail, not ask.
rm -f "$SUDOERS"
cp "$ROOT/var/lib/dpkg/status" "$WORK/dpkg-status.before"
touch "$WORK/marker"
sleep 1
run demo-2 "$DEMO_LIMIT" "./scripts/demo.sh"
check_second
run tests-2 "$TESTS_LIMIT" "./scripts/test.sh${TESTS:+ $TESTS}"
check_second

# ---------------------------------------------------------------- summary
{
    echo
    echo "== fresh-root: Debian $SUITE ($DEBVER) $ARCH$EMULATED, Python $PYVER, commit $SHORT, $(date -u '+%F %H:%M UTC')"
    [ -n "$TESTS" ] && echo "   tests run: ./scripts/test.sh $TESTS$([ "$TESTS_SET" -eq 0 ] && [ -n "$QEMU" ] && echo ' (the emulated default subset, not the whole suite)')"
    for i in "${!NAMES[@]}"; do
        printf '   %-8s %-5s %8s  %s\n' "${NAMES[i]}" "${RESULTS[i]}" "${TIMES[i]}" "${NOTES[i]%; }"
    done
    echo "   logs: $LOGS"
} | tee "$LOGS/summary.txt"
exit "$FAILED"
}
