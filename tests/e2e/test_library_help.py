"""``python -c "import vmcrypt, vtpm; help(vmcrypt)"`` shows the library surface, as a new user would see it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import vmcrypt
import vtpm


@pytest.mark.parametrize("package", [vmcrypt, vtpm], ids=lambda p: p.__name__)
def test_help_lists_every_public_name(package: object, tmp_path: Path) -> None:
    name = package.__name__  # type: ignore[attr-defined]
    done = subprocess.run([sys.executable, "-c", f"import vmcrypt, vtpm; help({name})"], cwd=tmp_path,
                          env={**os.environ, "PAGER": "cat", "TERM": "dumb"},
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    out = done.stdout
    assert out.startswith(f"Help on package {name}:")
    # the classes and functions sections are pydoc's own, built from the loaded names
    for section in ("CLASSES", "FUNCTIONS"):
        assert f"\n{section}\n" in out
    # pydoc documents each loaded class and function after the description (which lists them by name only)
    documented = out[out.index("\nCLASSES\n"):]
    missing = [n for n in package.__all__  # type: ignore[attr-defined]
               if not re.search(rf"\n {{4}}(class )?{re.escape(n)}\b", documented)]
    assert missing == []
    assert ("class UserSession" if name == "vmcrypt" else "class Tpm") in documented
