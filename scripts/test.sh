#!/usr/bin/env bash
# Installs what is needed, then runs the whole test suite: the three lanes of tests/, slow tests included.
# Arguments go to pytest: `tests/unit` runs the in-process lane alone, `-m "not slow"` leaves out the long tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -q "$@"
