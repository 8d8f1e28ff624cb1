#!/usr/bin/env bash
# One command: set up (Debian packages, .venv, the package) and run the demo.
set -euo pipefail
PROFILE=demo source "$(dirname "$0")/bootstrap.sh"
exec pi-agent demo "$@"
