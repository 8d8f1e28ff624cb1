#!/usr/bin/env bash
# One command: set up (Debian packages, .venv, the package with test extras) and run the tests.
# Arguments go to pytest: ./scripts/test.sh -k session -x
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
PROFILE="test" source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"
exec python -m pytest "$@"
