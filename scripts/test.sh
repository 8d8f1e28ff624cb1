#!/usr/bin/env bash
# One command: set up (Debian packages, .venv, the package with test extras) and run the tests.
set -euo pipefail
PROFILE=test source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"
exec python -m pytest "$@"
