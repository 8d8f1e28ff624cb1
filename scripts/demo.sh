#!/usr/bin/env bash
# One command: set up (Debian packages, .venv, the package) and run the demo.
# Arguments go to `pi-agent demo`: ./scripts/demo.sh --out reply.wav
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
PROFILE="demo" source "$(dirname "$0")/bootstrap.sh"
exec pi-agent demo "$@"
