#!/usr/bin/env bash
# Prepares a machine to run vmcrypt: system packages (when root and missing),
# a virtual environment in .venv, the project installed with its extras.
# Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(gcc libc6-dev libssl-dev openssl pkg-config python3-dev python3-venv swtpm swtpm-tools tpm2-tools libtss2-dev qemu-system-x86 ovmf busybox-static chromium postgresql)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "bootstrap: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    else
        echo "bootstrap: missing system packages: ${missing[*]} (install them, or run as root)" >&2
    fi
fi

# The guest kernel of the QEMU boot tests (tests/e2e/test_qemu.py), unpacked once into .cache/guest-kernel.
if command -v apt-get >/dev/null; then
    bash scripts/guest_kernel.sh || echo "bootstrap: no guest kernel for the QEMU boot tests" >&2
fi

# The interpreter the packages above belong to (python3-venv, python3-dev): Debian's /usr/bin/python3,
# which Debian builds with profile-guided and link-time optimization. A python3 found earlier on PATH
# (pyenv, a build by hand) serves only where there is none; PYTHON=... chooses another. An existing
# .venv is kept whatever made it.
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.vmcrypt-installed
want=$(cat setup.cfg setup.py pyproject.toml vmcrypt/_xts.c vtpm/_measure.c | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log=.venv/install.log
    if ! { .venv/bin/python -m pip install --upgrade pip && .venv/bin/python -m pip install -e ".[test,bench,kmip,postgres]"; } >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        echo "bootstrap: installing the project failed; full log in $log" >&2
        exit 1
    fi
    echo "$want" >"$stamp"
fi
