#!/usr/bin/env bash
# Sourced by scripts/demo.sh and scripts/test.sh: installs what pi-agent needs on a
# fresh Debian / Raspberry Pi OS machine, then creates .venv with the package in it.
#   PROFILE=demo  -> what building and running the package needs
#   PROFILE=test  -> plus the virtual-audio, browser and systemd tools the tests use
# A second run installs nothing and asks for no password: every check is local.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PI_AGENT_VENV:-$ROOT/.venv}"
PROFILE="${PROFILE:-demo}"

# PyAudio builds from source on Linux: PortAudio's headers (which pull in ALSA's), a C
# compiler and Python's headers. The ALSA runtime comes with them (libasound2 on
# Debian 12, libasound2t64 on Debian 13), so it is not named here.
debs=(portaudio19-dev python3-venv python3-dev gcc)
if [ "$PROFILE" = test ]; then
    # chromium: the kiosk page and the official JavaScript client are tested in a real browser.
    debs+=(alsa-utils pulseaudio pulseaudio-utils libasound2-plugins espeak-ng sox systemd iproute2 shellcheck
           chromium)
    # procps: /bin/kill, which the unit's ExecReload names and `systemd-analyze verify`
    # looks for. Every standard install has it; a minimal one (debootstrap minbase) does not.
    debs+=(procps)
    # prometheus: promtool checks contrib/prometheus/ and the fleet test runs a Prometheus
    # server of its own (loopback port, storage in its tmp dir). The package also enables
    # a system prometheus.service (port 9090): nothing of the tests uses it or its port.
    debs+=(prometheus)
    # pipewire, pipewire-pulse, wireplumber: the Pi OS Desktop way (docs/platforms.md) is tested on a
    # private PipeWire with WirePlumber and its pulse server, which need a D-Bus session bus of their
    # own (dbus-daemon). Not pipewire-alsa: it conflicts with pulseaudio; ALSA reaches PipeWire through
    # libasound2-plugins' pulse plugin, as on a desktop without it. Installing them starts nothing: the
    # packages only enable user units, for users who log in.
    debs+=(pipewire pipewire-pulse wireplumber dbus-daemon)
fi

missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "pi-agent: installing Debian packages: ${missing[*]}" >&2
    SUDO=()
    [ "$(id -u)" -ne 0 ] && SUDO=(sudo)
    # `env` inside sudo: sudo drops DEBIAN_FRONTEND, and apt then talks through debconf.
    apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -o Dpkg::Use-Pty=0)
    log="$(mktemp)"
    if ! { "${apt[@]}" update -qq && "${apt[@]}" install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "pi-agent: could not install the Debian packages above (see apt's output)" >&2
        exit 1
    fi
    rm -f "$log"
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "pi-agent needs Python >= 3.11 (found $("$PY" --version 2>&1))" >&2
    exit 1
fi

stamp="$VENV/.pi-agent-$PROFILE-$(sha1sum < "$ROOT/pyproject.toml" | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    extra=""; [ "$PROFILE" = test ] && extra="[test]"
    log="$VENV/pip-install.log"
    echo "pi-agent: installing the package into $VENV (pip's output: $log)" >&2
    if ! { "$VENV/bin/python" -m pip install --upgrade pip \
           && "$VENV/bin/python" -m pip install -e "$ROOT$extra"; } >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "pi-agent: pip could not install the package (the whole log: $log)" >&2
        exit 1
    fi
    rm -f "$VENV"/.pi-agent-"$PROFILE"-*
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
