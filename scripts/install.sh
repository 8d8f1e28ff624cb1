#!/usr/bin/env bash
# Install pi-agent as a systemd service on Raspberry Pi OS Bookworm (or later) / Debian.
#
#   sudo scripts/install.sh                       install, or upgrade in place
#   sudo scripts/install.sh --uninstall           remove service, venv and user; keep /etc/pi-agent
#   sudo scripts/install.sh --uninstall --purge   remove /etc/pi-agent and /var/lib/pi-agent too
#
# Running it again changes nothing that is already right: an edited config.toml and
# the API key are never touched. It never asks for the API key (see the next steps).
#
# Options:
#   --source SPEC    what pip installs into the venv (default: this checkout)
#   --root DIR       install into DIR instead of / (also PI_AGENT_INSTALL_ROOT=DIR):
#                    apt runs in a chroot, useradd/groupadd get --root, systemctl only
#                    enables (--root); for images and tests
#   --no-apt         do not install Debian packages
#   --no-systemctl   do not run systemctl (the unit file is still installed)
# Raspberry Pi OS Desktop, where the desktop user's PipeWire takes every sound card (docs/platforms.md):
#   --own-card CARD  keep CARD (its id or name in /proc/asound/cards) out of the desktop's PipeWire:
#                    WirePlumber rules in /etc/wireplumber (0.4's main.lua.d, 0.5's
#                    wireplumber.conf.d), so that the system service opens it without "busy"
#   --desktop-user USER  run pi-agent as a systemd user service of USER instead, through USER's
#                    PipeWire (the card stays shared with the desktop); the system service is
#                    disabled. Kept by later runs until --system-service
#   --system-service back from --desktop-user to the system service
#   --uninstall, --purge, -h/--help
# Command overrides (tests, packaging): APT_GET, SYSTEMCTL, USERADD, USERMOD, USERDEL,
# GROUPADD, GROUPDEL (each a command line), PYTHON (creates the venv, default
# /usr/bin/python3), PI_AGENT_PIP (installs into the venv, default "<venv>/bin/python -m pip").
set -euo pipefail

NAME=pi-agent
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Debian packages: runtime libraries and what pip needs to build PyAudio and webrtcvad.
# libopenblas0: numpy's wheels for 32-bit Raspberry Pi OS (piwheels) link against it.
# procps: /bin/kill, which the unit's ExecReload (systemctl reload) runs; a minimal Debian lacks it.
DEBS=(python3-venv python3-dev build-essential portaudio19-dev libasound2-plugins alsa-utils libopenblas0 procps)
# Only in Raspberry Pi OS's archive: gpiozero with the lgpio pin factory (needed on a Pi 5).
PI_DEBS=(python3-gpiozero python3-lgpio)

say() { printf '%s install: %s\n' "$NAME" "$*" >&2; }
die() { printf '%s install: error: %s\n' "$NAME" "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

uninstall=0 purge=0 use_apt=1 use_systemctl=1 own_card="" desktop_user="" system_service=0
ROOT="${PI_AGENT_INSTALL_ROOT:-}"
SOURCE="$REPO"
while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --no-apt) use_apt=0 ;;
        --no-systemctl) use_systemctl=0 ;;
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT="$2"; shift ;;
        --root=*) ROOT="${1#*=}" ;;
        --source) [ $# -ge 2 ] || die "--source needs a value"; SOURCE="$2"; shift ;;
        --source=*) SOURCE="${1#*=}" ;;
        --own-card) [ $# -ge 2 ] || die "--own-card needs a card's id or name"; own_card="$2"; shift ;;
        --own-card=*) own_card="${1#*=}" ;;
        --desktop-user) [ $# -ge 2 ] || die "--desktop-user needs a user name"; desktop_user="$2"; shift ;;
        --desktop-user=*) desktop_user="${1#*=}" ;;
        --system-service) system_service=1 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
    shift
done
[ "$purge" = 1 ] && [ "$uninstall" = 0 ] && die "--purge goes with --uninstall"
if [ -n "$own_card" ] && ! [[ "$own_card" =~ ^[A-Za-z0-9_.:\ -]+$ ]]; then
    die "--own-card '$own_card': a card's id or name as /proc/asound/cards shows it (letters, digits, space, _ . : -)"
fi
if [ -n "$desktop_user" ] && ! [[ "$desktop_user" =~ ^[a-z_][a-z0-9_.-]*$ ]]; then
    die "--desktop-user '$desktop_user' is not a user name"
fi
[ -n "$desktop_user" ] && [ -n "$own_card" ] &&
    die "--own-card keeps a card from the desktop's PipeWire, through which --desktop-user plays: choose one"
[ -n "$desktop_user" ] && [ "$system_service" = 1 ] && die "--desktop-user and --system-service: choose one"
ROOT="${ROOT%/}"
if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT is not a directory"
    ROOT="$(cd "$ROOT" && pwd)"
elif [ "$(id -u)" -ne 0 ]; then
    die "run it as root (sudo $0)"
fi

ETC_DIR="$ROOT/etc/$NAME"
CONFIG="$ETC_DIR/config.toml"
API_KEY="$ETC_DIR/api_key"
OPT_DIR="$ROOT/opt/$NAME"
VENV="$OPT_DIR/venv"
UNIT="$ROOT/etc/systemd/system/$NAME.service"
STATE_DIR="$ROOT/var/lib/$NAME"
USER_UNIT="$ROOT/etc/systemd/user/$NAME.service"
USER_DROPIN="$ROOT/etc/systemd/user/$NAME.service.d/user.conf"
WP_RULES=("$ROOT/etc/wireplumber/main.lua.d/51-$NAME-card.lua" "$ROOT/etc/wireplumber/wireplumber.conf.d/51-$NAME-card.conf")
WP_SOURCES=("$REPO/contrib/wireplumber/51-$NAME-card.lua" "$REPO/contrib/wireplumber/51-$NAME-card.conf")

# Commands, overridable as whole command lines; with --root they act inside the root.
root_opt=()
if [ -n "$ROOT" ]; then root_opt=(--root "$ROOT"); fi
if [ -n "${APT_GET:-}" ]; then read -r -a APT <<<"$APT_GET"
elif [ -n "$ROOT" ]; then APT=(chroot "$ROOT" apt-get)
else APT=(apt-get)
fi
read -r -a SYSTEMCTL_CMD <<<"${SYSTEMCTL:-systemctl}"
read -r -a USERADD_CMD <<<"${USERADD:-useradd}"
read -r -a USERMOD_CMD <<<"${USERMOD:-usermod}"
read -r -a USERDEL_CMD <<<"${USERDEL:-userdel}"
read -r -a GROUPADD_CMD <<<"${GROUPADD:-groupadd}"
read -r -a GROUPDEL_CMD <<<"${GROUPDEL:-groupdel}"
read -r -a PYTHON_CMD <<<"${PYTHON:-/usr/bin/python3}"
if [ -n "${PI_AGENT_PIP:-}" ]; then read -r -a PIP <<<"$PI_AGENT_PIP"
else PIP=("$VENV/bin/python" -m pip)
fi

# --- users and groups (read from the root's own files when installing into a root) ---
group_db() { if [ -n "$ROOT" ]; then cat "$ROOT/etc/group" 2>/dev/null || true; else getent group || true; fi; }
passwd_db() { if [ -n "$ROOT" ]; then cat "$ROOT/etc/passwd" 2>/dev/null || true; else getent passwd || true; fi; }
group_exists() { group_db | awk -F: -v g="$1" '$1 == g { found = 1 } END { exit !found }'; }
user_exists() { passwd_db | awk -F: -v u="$1" '$1 == u { found = 1 } END { exit !found }'; }
gid_of() { group_db | awk -F: -v g="$1" '$1 == g { print $3; exit }'; }
user_in_group() {
    group_db | awk -F: -v u="$1" -v g="$2" \
        '$1 == g { n = split($4, m, ","); for (i = 1; i <= n; i++) if (m[i] == u) found = 1 } END { exit !found }'
}

# chown root:GROUP, skipped when an unprivileged run installs into a test root.
chown_group() {
    local group="$1" path="$2" gid
    gid="$(gid_of "$group")"
    [ -n "$gid" ] || die "group $group does not exist"
    if [ "$(id -u)" -eq 0 ]; then chown "0:$gid" "$path"; fi
}

# install SRC DEST MODE unless DEST already has that content; prints 1 if it changed.
install_file() {
    local src="$1" dest="$2" mode="$3"
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        chmod "$mode" "$dest"
        echo 0
    else
        install -m "$mode" "$src" "$dest"
        echo 1
    fi
}

deb_installed() {
    dpkg-query --admindir="$ROOT/var/lib/dpkg" -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

install_debs() {
    local missing=() pi_missing=() p
    for p in "${DEBS[@]}"; do deb_installed "$p" || missing+=("$p"); done
    for p in "${PI_DEBS[@]}"; do deb_installed "$p" || pi_missing+=("$p"); done
    if [ ${#missing[@]} -eq 0 ] && [ ${#pi_missing[@]} -eq 0 ]; then
        say "Debian packages: all present"
        return
    fi
    say "Debian packages: installing ${missing[*]} ${pi_missing[*]}"
    DEBIAN_FRONTEND=noninteractive "${APT[@]}" update -qq
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}"
    fi
    for p in "${pi_missing[@]}"; do
        DEBIAN_FRONTEND=noninteractive "${APT[@]}" install -y -qq --no-install-recommends "$p" ||
            say "warning: $p is not available (it comes with Raspberry Pi OS); GPIO will not work without it"
    done
}

# The time-sync.target the unit starts after waits for the clock only when
# systemd-time-wait-sync.service is enabled (systemd-timesyncd's; TLS needs a set clock).
# Its wait is unbounded: a drop-in bounds it, so that an offline Pi still starts pi-agent
# (which then says the clock is not set). The drop-in's marker line tells --uninstall
# whether this installer was the one that enabled the service.
TIME_WAIT=systemd-time-wait-sync.service
TIME_WAIT_DROPIN="$ROOT/etc/systemd/system/$TIME_WAIT.d/$NAME.conf"
TIME_WAIT_MARKER="# enabled by the $NAME installer"
unit_file_exists() {
    local d
    for d in etc/systemd/system usr/lib/systemd/system lib/systemd/system; do
        [ -e "$ROOT/$d/$1" ] && return 0
    done
    return 1
}

enable_time_wait_sync() {
    if ! unit_file_exists systemd-timesyncd.service || ! unit_file_exists "$TIME_WAIT"; then
        say "clock: no systemd-timesyncd here, so time-sync.target does not wait for the clock;" \
            "with another NTP client enable its wait unit (chrony: chrony-wait.service)"
        return
    fi
    local root_arg=() enabled=0 marker="" tmp
    if [ -n "$ROOT" ]; then root_arg=(--root="$ROOT"); fi
    if [ -f "$TIME_WAIT_DROPIN" ] && grep -qxF "$TIME_WAIT_MARKER" "$TIME_WAIT_DROPIN"; then marker="$TIME_WAIT_MARKER"; fi
    if [ "$use_systemctl" = 1 ] && "${SYSTEMCTL_CMD[@]}" "${root_arg[@]}" --quiet is-enabled "$TIME_WAIT" 2>/dev/null; then
        enabled=1
    fi
    if [ "$use_systemctl" = 1 ] && [ "$enabled" = 0 ]; then marker="$TIME_WAIT_MARKER"; fi
    install -d -m 0755 "$(dirname "$TIME_WAIT_DROPIN")"
    tmp="$(mktemp)"
    {
        echo "# Installed by $NAME's install.sh: wait for the clock at boot, but at most 90 s,"
        echo "# so that units after time-sync.target still start on a Pi with no network."
        if [ -n "$marker" ]; then echo "$marker"; fi
        echo "[Service]"
        echo "TimeoutStartSec=90s"
    } >"$tmp"
    install_file "$tmp" "$TIME_WAIT_DROPIN" 0644 >/dev/null
    rm -f "$tmp"
    if [ "$use_systemctl" = 0 ]; then
        say "clock: not enabling $TIME_WAIT (--no-systemctl): pi-agent may start before the clock is set"
    elif [ "$enabled" = 1 ]; then
        say "clock: $TIME_WAIT is enabled: pi-agent starts once the clock is synchronised (at most 90 s)"
    else
        "${SYSTEMCTL_CMD[@]}" "${root_arg[@]}" --quiet enable "$TIME_WAIT"
        say "clock: enabled $TIME_WAIT: from the next boot pi-agent starts once the clock is" \
            "synchronised (at most 90 s)"
    fi
}

# --own-card: WirePlumber rules (both formats: each version reads only its own) that disable the card.
install_card_rules() {
    local i tmp changed=0
    for i in 0 1; do
        [ -f "${WP_SOURCES[$i]}" ] || die "${WP_SOURCES[$i]} is missing: run this from a pi-agent checkout"
        install -d -m 0755 "$(dirname "${WP_RULES[$i]}")"
        tmp="$(mktemp)"
        sed "s/@CARD@/$own_card/g" "${WP_SOURCES[$i]}" >"$tmp"
        if [ "$(install_file "$tmp" "${WP_RULES[$i]}" 0644)" = 1 ]; then changed=1; fi
        rm -f "$tmp"
    done
    say "desktop: WirePlumber keeps card '$own_card' for pi-agent (${WP_RULES[0]#"$ROOT"}, ${WP_RULES[1]#"$ROOT"})"
    if [ "$changed" = 1 ]; then
        say "desktop: the desktop's PipeWire lets go of the card after its next login (or, as the desktop user:" \
            "systemctl --user restart wireplumber); then name it in [audio] input_device/output_device"
    fi
}

remove_card_rules() {
    local f
    for f in "${WP_RULES[@]}"; do
        if [ -e "$f" ]; then rm -f "$f"; say "removed $f"; fi
    done
}

# --desktop-user: the user unit, for that user only; the system service off.
install_user_service() {
    user_exists "$desktop_user" || die "--desktop-user: there is no user '$desktop_user'"
    user_in_group "$desktop_user" "$NAME" || {
        say "adding $desktop_user to $NAME (the settings and the event API's socket)"
        "${USERMOD_CMD[@]}" "${root_opt[@]}" --append --groups "$NAME" "$desktop_user"
    }
    install -d -m 0755 "$(dirname "$USER_UNIT")" "$(dirname "$USER_DROPIN")"
    if [ "$(install_file "$REPO/systemd/$NAME-user.service" "$USER_UNIT" 0644)" = 1 ]; then say "installed $USER_UNIT"; fi
    local tmp
    tmp="$(mktemp)"
    printf '# Written by %s install.sh --desktop-user: only this user'"'"'s session runs pi-agent.\n[Unit]\nConditionUser=%s\n' \
        "$NAME" "$desktop_user" >"$tmp"
    install_file "$tmp" "$USER_DROPIN" 0644 >/dev/null
    rm -f "$tmp"
    if [ "$use_systemctl" = 1 ]; then
        if [ -n "$ROOT" ]; then
            "${SYSTEMCTL_CMD[@]}" --root="$ROOT" --quiet disable "$NAME.service" 2>/dev/null || true
            "${SYSTEMCTL_CMD[@]}" --root="$ROOT" --global --quiet enable "$NAME.service"
        else
            "${SYSTEMCTL_CMD[@]}" daemon-reload
            "${SYSTEMCTL_CMD[@]}" --quiet disable --now "$NAME.service" 2>/dev/null || true
            "${SYSTEMCTL_CMD[@]}" --global --quiet enable "$NAME.service"
        fi
    fi
    say "desktop: pi-agent runs as a user service of $desktop_user through its PipeWire (the system service is off);" \
        "it starts at $desktop_user's next login, or now as $desktop_user: systemctl --user daemon-reload &&" \
        "systemctl --user start pi-agent"
}

remove_user_service() {
    [ -e "$USER_UNIT" ] || [ -e "$USER_DROPIN" ] || return 0
    if [ "$use_systemctl" = 1 ]; then
        if [ -n "$ROOT" ]; then
            "${SYSTEMCTL_CMD[@]}" --root="$ROOT" --global --quiet disable "$NAME.service" || true
        else
            "${SYSTEMCTL_CMD[@]}" --global --quiet disable "$NAME.service" || true
        fi
    fi
    rm -f "$USER_UNIT" "$USER_DROPIN"
    rmdir "$(dirname "$USER_DROPIN")" 2>/dev/null || true
    say "removed the user service $USER_UNIT"
}

do_install() {
    [ -f "$REPO/systemd/$NAME.service" ] || die "$REPO/systemd/$NAME.service is missing: run this from a pi-agent checkout"
    if [ "$use_apt" = 1 ]; then install_debs; fi

    "${PYTHON_CMD[@]}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "pi-agent needs Python >= 3.11 (${PYTHON_CMD[*]} is older): use Raspberry Pi OS Bookworm or later"

    # The service user: a system account without login, in audio (/dev/snd), gpio and spi
    # (/dev/spidev*: a voice HAT's APA102 LEDs).
    local g
    for g in audio gpio spi; do
        group_exists "$g" || { say "creating group $g"; "${GROUPADD_CMD[@]}" "${root_opt[@]}" --system "$g"; }
    done
    if user_exists "$NAME"; then
        for g in audio gpio spi; do
            user_in_group "$NAME" "$g" || { say "adding $NAME to $g"; "${USERMOD_CMD[@]}" "${root_opt[@]}" --append --groups "$g" "$NAME"; }
        done
    else
        say "creating system user $NAME"
        "${USERADD_CMD[@]}" "${root_opt[@]}" --system --user-group --no-create-home \
            --home-dir "/var/lib/$NAME" --shell /usr/sbin/nologin --comment "pi-agent voice assistant" \
            --groups audio,gpio,spi "$NAME"
    fi

    # Raspberry Pi OS Desktop: the user service (kept from an earlier run) or the card's rules.
    if [ -z "$desktop_user" ] && [ "$system_service" = 0 ] && [ -f "$USER_DROPIN" ]; then
        desktop_user="$(sed -n 's/^ConditionUser=//p' "$USER_DROPIN" | head -n 1)"
        [ -n "$desktop_user" ] && say "keeping the user service of $desktop_user (--system-service goes back)"
    fi
    if [ -n "$own_card" ]; then install_card_rules; fi

    # The venv sees the system's gpiozero and lgpio (from apt) next to its own packages.
    install -d -m 0755 "$OPT_DIR"
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating the virtual environment $VENV"
        "${PYTHON_CMD[@]}" -m venv --system-site-packages "$VENV"
    fi
    say "installing pi-agent into $VENV from $SOURCE"
    "${PIP[@]}" install --quiet --disable-pip-version-check --upgrade "$SOURCE"
    if [ -f "$REPO/README.md" ]; then
        install_file "$REPO/README.md" "$OPT_DIR/README.md" 0644 >/dev/null
    fi
    if [ -f "$REPO/docs/troubleshooting.md" ]; then
        install_file "$REPO/docs/troubleshooting.md" "$OPT_DIR/troubleshooting.md" 0644 >/dev/null
    fi
    # Every setting of the installed version, commented: generated from its settings model.
    local example="$OPT_DIR/config.toml.example" tmp
    tmp="$(mktemp)"
    if ! "$VENV/bin/python" -m pi_agent.reference --template >"$tmp"; then
        rm -f "$tmp"
        die "$VENV/bin/python -m pi_agent.reference --template failed: is pi-agent installed in $VENV?"
    fi
    install_file "$tmp" "$example" 0644 >/dev/null
    rm -f "$tmp"

    # Settings: readable by the service's group only; never overwritten.
    install -d -m 0750 "$ETC_DIR"
    chown_group "$NAME" "$ETC_DIR"
    if [ -e "$CONFIG" ]; then
        say "keeping $CONFIG (every setting of this version, commented: $example)"
    else
        install -m 0640 "$example" "$CONFIG"
        chown_group "$NAME" "$CONFIG"
        say "wrote $CONFIG (every setting, commented)"
    fi
    # The API key: root only (systemd reads it for LoadCredential=). An empty file means
    # a public agent that needs no key, and lets the service start before it is set.
    if [ ! -e "$API_KEY" ]; then
        install -m 0600 /dev/null "$API_KEY"
    fi
    chmod 0600 "$API_KEY"
    if [ "$(id -u)" -eq 0 ]; then chown 0:0 "$API_KEY"; fi

    install -d -m 0755 "$(dirname "$UNIT")"
    local unit_changed
    unit_changed="$(install_file "$REPO/systemd/$NAME.service" "$UNIT" 0644)"
    if [ "$unit_changed" = 1 ]; then say "installed $UNIT"; fi

    enable_time_wait_sync

    if [ -n "$desktop_user" ]; then
        install_user_service
    else
        remove_user_service
    fi
    if [ "$use_systemctl" = 1 ] && [ -z "$desktop_user" ]; then
        if [ -n "$ROOT" ]; then
            "${SYSTEMCTL_CMD[@]}" --root="$ROOT" --quiet enable "$NAME.service"
        else
            "${SYSTEMCTL_CMD[@]}" daemon-reload
            "${SYSTEMCTL_CMD[@]}" --quiet enable "$NAME.service"
            # An upgrade: a running service picks up the new code; a stopped one stays stopped.
            "${SYSTEMCTL_CMD[@]}" try-restart "$NAME.service"
        fi
    fi

    if ! "$VENV/bin/python" -c 'import lgpio' 2>/dev/null; then
        say "note: lgpio is not importable in the venv; GPIO needs python3-lgpio (Raspberry Pi OS)"
    fi

    local started="pi-agent is installed and enabled (it starts at boot)."
    if [ -n "$desktop_user" ]; then
        started="pi-agent is installed as a user service of $desktop_user (it starts with $desktop_user's session;
the system service is disabled, and the steps below that use it do not apply: see docs/platforms.md,
\"Raspberry Pi OS Desktop\", way 2)."
    fi
    cat <<EOF

$started

Next steps:
  1. Set your agent (agent_id is required):
       sudo nano /etc/$NAME/config.toml
  2. Private agents only: store the ElevenLabs API key (never on a command line):
       sudo sh -c 'umask 077; systemd-ask-password "ElevenLabs API key:" > /etc/$NAME/api_key'
  3. Find your microphone and speaker names for [audio]:
       sudo -u $NAME /opt/$NAME/venv/bin/pi-agent devices
  4. Start it and follow its log:
       sudo systemctl restart $NAME && journalctl -u $NAME -f
  5. To use pi-agent status and pi-agent say (the event API's socket is for the $NAME group),
     join the group, then log in again:
       sudo adduser \$USER $NAME
Apply a changed config.toml with: sudo systemctl reload $NAME
When something does not work: /opt/$NAME/troubleshooting.md (symptom, check, fix)
Remove it with: sudo $0 --uninstall
EOF
}

do_uninstall() {
    if [ "$use_systemctl" = 1 ] && [ -e "$UNIT" ]; then
        if [ -n "$ROOT" ]; then
            "${SYSTEMCTL_CMD[@]}" --root="$ROOT" --quiet disable "$NAME.service" || true
        else
            "${SYSTEMCTL_CMD[@]}" --quiet disable --now "$NAME.service" || true
        fi
    fi
    if [ -e "$UNIT" ]; then
        rm -f "$UNIT"
        say "removed $UNIT"
        if [ "$use_systemctl" = 1 ] && [ -z "$ROOT" ]; then
            "${SYSTEMCTL_CMD[@]}" daemon-reload
            "${SYSTEMCTL_CMD[@]}" reset-failed "$NAME.service" 2>/dev/null || true
        fi
    fi
    if [ -e "$TIME_WAIT_DROPIN" ]; then
        if grep -qxF "$TIME_WAIT_MARKER" "$TIME_WAIT_DROPIN" && [ "$use_systemctl" = 1 ]; then
            if [ -n "$ROOT" ]; then
                "${SYSTEMCTL_CMD[@]}" --root="$ROOT" --quiet disable "$TIME_WAIT" || true
            else
                "${SYSTEMCTL_CMD[@]}" --quiet disable "$TIME_WAIT" || true
            fi
            say "disabled $TIME_WAIT (the installer had enabled it)"
        fi
        rm -f "$TIME_WAIT_DROPIN"
        rmdir "$(dirname "$TIME_WAIT_DROPIN")" 2>/dev/null || true
        if [ "$use_systemctl" = 1 ] && [ -z "$ROOT" ]; then "${SYSTEMCTL_CMD[@]}" daemon-reload; fi
    fi
    remove_user_service
    remove_card_rules
    if [ -e "$OPT_DIR" ]; then
        rm -rf "$OPT_DIR"
        say "removed $OPT_DIR"
    fi
    if user_exists "$NAME"; then
        "${USERDEL_CMD[@]}" "${root_opt[@]}" "$NAME"
        say "removed user $NAME"
    fi
    if group_exists "$NAME"; then
        "${GROUPDEL_CMD[@]}" "${root_opt[@]}" "$NAME"
    fi
    if [ "$purge" = 1 ]; then
        rm -rf "$ETC_DIR" "$STATE_DIR"
        say "removed $ETC_DIR and $STATE_DIR"
    elif [ -e "$ETC_DIR" ] || [ -e "$STATE_DIR" ]; then
        say "kept $ETC_DIR and $STATE_DIR (remove them with --uninstall --purge)"
    fi
    say "pi-agent is uninstalled (Debian packages and the audio/gpio groups stay)"
}

if [ "$uninstall" = 1 ]; then do_uninstall; else do_install; fi
