"""What the examples share: where they work ($VMCRYPT_HOME or a fresh temp directory)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def workdir(what: str) -> Path:
    """``$VMCRYPT_HOME`` when set (the examples' management home and datastores go there), else a new temp dir."""
    chosen = os.environ.get("VMCRYPT_HOME")
    path = Path(chosen) if chosen else Path(tempfile.mkdtemp(prefix=f"vmcrypt-{what}-"))
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path
