#!/usr/bin/env bash
# Installs what is needed, runs the benchmarks and the openssl side-by-side ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pytest benchmarks -q --benchmark-columns=min,median,mean,ops "$@"
.venv/bin/python benchmarks/xts_vs_openssl.py
.venv/bin/python benchmarks/journal_latency.py
.venv/bin/python benchmarks/attestation_rate.py
