#!/usr/bin/env bash
# One command: set up (Debian packages, .venv, the package with test extras) and run the tests.
# Arguments go to pytest: ./scripts/test.sh -k session -x
# The tests run on two workers (pytest-xdist) on a machine with two cores or more; an -n of
# your own chooses instead (-n 0: one process, -n auto: one worker per core).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR
PROFILE="test" source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"
parallel=(-n 2 --dist worksteal)
[ "$(nproc 2>/dev/null || echo 1)" -ge 2 ] || parallel=()
for arg in "$@"; do
    case "$arg" in
        -n|-n*|--numprocesses|--numprocesses=*|no:xdist|-pno:xdist) parallel=() ;;
    esac
done
exec python -m pytest "${parallel[@]}" "$@"
