"""The API reference builds with pdoc, without warnings, and documents the public surface."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import vmcrypt
import vtpm


def test_pdoc_builds_the_reference_without_warnings(tmp_path: Path) -> None:
    out = tmp_path / "api"
    done = subprocess.run([sys.executable, "-m", "pdoc", "vmcrypt", "vtpm", "-o", str(out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "", done.stderr  # pdoc prints "Warn: ..." on stderr for what it cannot render
    assert (out / "index.html").is_file()
    for package in (vmcrypt, vtpm):
        page = (out / f"{package.__name__}.html").read_text()
        missing = [name for name in package.__all__ if f'id="{name}"' not in page]
        assert missing == []
