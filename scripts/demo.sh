#!/usr/bin/env bash
# Installs what is needed, then creates and encrypts a VM on the embedded defaults.
# The demo writes into --out DIR (relative to where this is run) or a new temporary
# directory, never into the checkout; $VMCRYPT_HOME, when set, is its management home.
set -euo pipefail
here=$PWD
repo=$(cd "$(dirname "$0")/.." && pwd)
(cd "$repo" && bash scripts/bootstrap.sh)
cd "$here"
exec "$repo/.venv/bin/python" -m vmcrypt.demo "$@"
