#!/usr/bin/env bash
# Installs what is needed, then creates and encrypts a VM on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m vmcrypt.demo "$@"
