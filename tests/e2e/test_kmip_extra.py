"""PyKMIP is the optional ``kmip`` extra: vmcrypt imports without it, a KMIP provider used
without it says how to install it, and its deprecation warnings stay out of user output.

Each case runs a fresh interpreter (``-W default`` shows every warning that is not
filtered), so what PyKMIP's import and its first connection print is seen as a user sees it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from vmcrypt.providers.kmip import INSTALL_HINT

PROVIDER = """
from vmcrypt.errors import KeyProviderError
from vmcrypt.providers.kmip import KmipKeyProvider, KmipSettings
settings = KmipSettings(("127.0.0.1:{port}",), "{d}/ca.pem", "{d}/c.pem", "{d}/k.pem", timeout=1.0)
provider = KmipKeyProvider("id", "kmip", settings)
try:
    provider.create_key()
except KeyProviderError as exc:
    print("ERROR", exc)
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-W", "default", "-c", textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=False)


def test_vmcrypt_imports_without_loading_pykmip(tmp_path: Path) -> None:
    done = run("import sys, vmcrypt, vmcrypt.providers.registry, vmcrypt.management\n"
               "print(sorted(m for m in sys.modules if m == 'kmip' or m.startswith('kmip.')))", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_missing_pykmip_gives_the_install_hint(tmp_path: Path) -> None:
    # sys.modules[name] = None is how Python itself marks a module as not importable
    code = "import sys\nsys.modules['kmip'] = None\n" + PROVIDER.format(port=closed_port(), d=tmp_path)
    done = run(code, tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"ERROR {INSTALL_HINT}"
    assert "Traceback" not in done.stderr


def test_pykmip_warnings_are_kept_out_of_user_output(tmp_path: Path) -> None:
    done = run(PROVIDER.format(port=closed_port(), d=tmp_path), tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ERROR no KMIP server of provider 'kmip' answered")  # it really tried to connect
    for noise in ("MovedIn20Warning", "PROTOCOL_TLS", "DeprecationWarning"):
        assert noise not in done.stderr, done.stderr
