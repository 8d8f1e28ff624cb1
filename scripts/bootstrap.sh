#!/usr/bin/env bash
# Sourced by scripts/demo.sh and scripts/test.sh: installs what pi-agent needs on a
# fresh Debian / Raspberry Pi OS machine, then creates .venv with the package in it.
#   PROFILE=demo  -> runtime build deps only
#   PROFILE=test  -> plus the virtual-audio and systemd tools the tests use
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PI_AGENT_VENV:-$ROOT/.venv}"
PROFILE="${PROFILE:-demo}"

debs=(portaudio19-dev python3-venv python3-dev gcc libasound2)
if [ "$PROFILE" = test ]; then
    debs+=(alsa-utils pulseaudio pulseaudio-utils libasound2-plugins espeak-ng sox systemd iproute2 shellcheck)
fi

missing=()
for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "pi-agent: installing Debian packages: ${missing[*]}" >&2
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "pi-agent needs Python >= 3.11 (found $("$PY" --version 2>&1))" >&2
    exit 1
fi

stamp="$VENV/.pi-agent-$PROFILE-$(cat "$ROOT/pyproject.toml" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
    extra=""; [ "$PROFILE" = test ] && extra="[test]"
    echo "pi-agent: installing the package into $VENV" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e "$ROOT$extra"
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
